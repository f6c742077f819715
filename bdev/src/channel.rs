//! One bdev I/O channel: the library channel of one SPDK thread, the
//! requests it has in flight, and the poller that completes them.
//!
//! Every request gets a slot (its index is the library's `ctx`), so a
//! completion finds its `spdk_bdev_io` token and, for a bounced request, its
//! bounce buffer. Slots are recycled through a free list; the table only
//! grows when more requests are in flight than ever before.

use std::sync::Arc;
use std::time::{Duration, Instant};

use iomemory::blk::{BlkError, IoChannel, IoError, IoVec, SubmitError};
use iomemory::dma::{DmaBuf, DmaRegion};

use crate::device::BdevDevice;
use crate::io::{translate, IoDesc, IoStatus, Op};
use crate::lifecycle::LifecycleError;
use crate::log::{log, Level};
use crate::stats::{ChannelCounters, Counter};

/// How long closing a channel waits for in-flight requests.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a channel could not be opened.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ChannelError {
    /// The bdev is being destroyed.
    #[error(transparent)]
    Lifecycle(#[from] LifecycleError),
    /// The library refused a channel (too many, card offline).
    #[error("cannot open an I/O channel on the card: {0}")]
    Blk(#[from] BlkError),
}

/// What became of a submission.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Submitted {
    /// Accepted; its completion comes from [`BdevChannel::poll`].
    Queued,
    /// Finished at once with this status (bad request, NOMEM, failure).
    Done(IoStatus),
}

/// What one poll did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PollResult {
    /// Requests completed.
    pub completed: usize,
    /// The card went offline and this caller must start the hot remove
    /// (`spdk_bdev_unregister`); true at most once per device.
    pub hot_remove: bool,
}

/// A bounce buffer: one of the device's pooled buffers, or a dedicated
/// region for a request larger than a pooled buffer.
enum BounceBuf {
    Pooled(DmaBuf),
    Dedicated(DmaRegion),
}

impl BounceBuf {
    fn ptr(&self) -> *mut u8 {
        match self {
            BounceBuf::Pooled(b) => b.as_ptr(),
            BounceBuf::Dedicated(r) => r.as_ptr(),
        }
    }

    fn iova(&self) -> u64 {
        match self {
            BounceBuf::Pooled(b) => b.iova(),
            BounceBuf::Dedicated(r) => r.iova(),
        }
    }

    /// Copies the user's buffers in, back to back.
    ///
    /// # Safety
    /// Each iovec must be readable memory; no request may be using the
    /// bounce buffer.
    unsafe fn gather(&mut self, iovs: &[libc::iovec]) {
        let mut off = 0usize;
        for v in iovs {
            // SAFETY: the caller guarantees `v` is readable for its length;
            // the bounce buffer holds the request's total length.
            let src = unsafe { std::slice::from_raw_parts(v.iov_base as *const u8, v.iov_len) };
            let _ = match self {
                BounceBuf::Pooled(b) => b.write_at(off, src),
                BounceBuf::Dedicated(r) => r.fill(off, src),
            };
            off += v.iov_len;
        }
    }

    /// Copies the buffer out into the user's buffers.
    ///
    /// # Safety
    /// Each iovec must be writable memory the caller owns; the card must be
    /// done with the bounce buffer.
    unsafe fn scatter(&self, iovs: &[libc::iovec]) {
        let mut off = 0usize;
        for v in iovs {
            // SAFETY: the caller guarantees `v` is writable and exclusively
            // ours (SPDK lends the buffers to the module until completion).
            let dst = unsafe { std::slice::from_raw_parts_mut(v.iov_base as *mut u8, v.iov_len) };
            let _ = match self {
                BounceBuf::Pooled(b) => b.read_at(off, dst),
                BounceBuf::Dedicated(r) => r.copy_out(off, dst),
            };
            off += v.iov_len;
        }
    }
}

/// What a completion must do besides reporting.
enum Pending {
    /// Nothing more.
    Plain,
    /// A bounced write: the buffer is released when the slot is.
    BouncedWrite { _buf: BounceBuf },
    /// A bounced read: copy into the user's buffers, then release.
    BouncedRead(BounceBuf, Vec<libc::iovec>),
}

struct Slot {
    token: u64,
    counter: Counter,
    pending: Pending,
}

/// One SPDK thread's channel on an iomemory bdev. `Send` (an SPDK thread
/// may move between reactors) but used by one thread at a time.
pub struct BdevChannel {
    dev: Arc<BdevDevice>,
    ch: Option<IoChannel>,
    slots: Vec<Option<Slot>>,
    free: Vec<u32>,
    inflight: usize,
    resets: Vec<u64>,
    iovecs: Vec<IoVec>,
    done: Vec<(u64, IoStatus)>,
    counters: Arc<ChannelCounters>,
    block_size: u32,
    num_blocks: u64,
    closed: bool,
}

impl std::fmt::Debug for BdevChannel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BdevChannel")
            .field("bdev", &self.dev.name())
            .field("inflight", &self.inflight)
            .field("resets", &self.resets.len())
            .finish()
    }
}

impl BdevChannel {
    pub(crate) fn open(dev: Arc<BdevDevice>) -> Result<Self, ChannelError> {
        dev.lifecycle().open_channel()?;
        let ch = match dev.block_device().channel() {
            Ok(ch) => ch,
            Err(e) => {
                dev.lifecycle().close_channel();
                return Err(e.into());
            }
        };
        let counters = dev.counters().channel();
        Ok(Self {
            block_size: dev.block_size(),
            num_blocks: dev.num_blocks(),
            dev,
            ch: Some(ch),
            slots: Vec::new(),
            free: Vec::new(),
            inflight: 0,
            resets: Vec::new(),
            iovecs: Vec::new(),
            done: Vec::new(),
            counters,
            closed: false,
        })
    }

    /// Requests accepted and not yet completed (resets included).
    pub fn outstanding(&self) -> usize {
        self.inflight + self.resets.len()
    }

    fn take_slot(&mut self, token: u64, counter: Counter, pending: Pending) -> u32 {
        let slot = Slot {
            token,
            counter,
            pending,
        };
        match self.free.pop() {
            Some(i) => {
                self.slots[i as usize] = Some(slot);
                i
            }
            None => {
                self.slots.push(Some(slot));
                (self.slots.len() - 1) as u32
            }
        }
    }

    fn release_slot(&mut self, i: u32) -> Option<Slot> {
        let s = self.slots.get_mut(i as usize)?.take();
        if s.is_some() {
            self.free.push(i);
        }
        s
    }

    fn fail(&self, status: IoStatus) -> Submitted {
        self.counters.bump(match status {
            IoStatus::NoMem => Counter::NoMem,
            _ => Counter::Failed,
        });
        Submitted::Done(status)
    }

    /// Submits one bdev I/O; `desc.token` comes back with its completion.
    ///
    /// # Safety
    /// `desc.iovs` must point to `desc.iovcnt` iovecs describing memory that
    /// stays valid, and that nobody else touches, until the completion for
    /// `desc.token` was delivered by [`Self::poll`] (or `Done` was returned).
    pub unsafe fn submit(&mut self, desc: &IoDesc) -> Submitted {
        if self.closed {
            return self.fail(IoStatus::Failed);
        }
        // SAFETY: forwarded from this function's contract.
        let op = match unsafe { translate(desc, self.block_size, self.num_blocks) } {
            Ok(op) => op,
            Err(e) => {
                log(
                    Level::Error,
                    &format!("bdev {}: request refused: {e}", self.dev.name()),
                );
                return self.fail(IoStatus::Failed);
            }
        };
        let token = desc.token;
        let (counter, bytes) = match op {
            Op::Reset => {
                self.resets.push(token);
                return Submitted::Queued;
            }
            Op::Read { count, .. } => (Counter::Read(count * self.block_size as u64), true),
            Op::Write { count, .. } => (Counter::Write(count * self.block_size as u64), true),
            Op::Unmap { .. } => (Counter::Unmap, false),
            Op::WriteZeroes { .. } => (Counter::WriteZeroes, false),
            Op::Flush => (Counter::Flush, false),
        };
        if !bytes {
            let slot = self.take_slot(token, counter, Pending::Plain);
            let ch = self.ch.as_mut().expect("channel open until closed");
            let r = match op {
                Op::Unmap { lba, count } => ch.unmap(lba, count, slot as u64),
                Op::WriteZeroes { lba, count } => ch.write_zeroes(lba, count, slot as u64),
                _ => ch.flush(slot as u64),
            };
            return self.finish_submit(slot, r);
        }
        let (is_read, lba, iovs) = match op {
            Op::Read { lba, iovs, .. } => (true, lba, iovs),
            Op::Write { lba, iovs, .. } => (false, lba, iovs),
            _ => unreachable!("non-data ops returned above"),
        };
        // Zero-copy when the card can reach every buffer.
        let reachable = iovs
            .iter()
            .all(|v| self.dev.dma().reachable(v.iov_base as *const u8, v.iov_len));
        if reachable {
            self.iovecs.clear();
            for v in iovs {
                // SAFETY: the range is registered in the card's IOVA space at
                // IOVA = VA (checked just above) and, by this function's
                // contract, stays valid and untouched until completion.
                self.iovecs.push(unsafe {
                    IoVec::new(v.iov_base as *mut u8, v.iov_base as u64, v.iov_len)
                });
            }
            let slot = self.take_slot(token, counter, Pending::Plain);
            let ch = self.ch.as_mut().expect("channel open until closed");
            let r = if is_read {
                ch.read(lba, &self.iovecs, slot as u64)
            } else {
                ch.write(lba, &self.iovecs, slot as u64)
            };
            match r {
                // Shapes the library cannot take directly (too many or
                // sub-sector buffers) go through one contiguous bounce buffer.
                Err(SubmitError::TooManyBuffers { .. } | SubmitError::Misaligned { .. }) => {
                    self.release_slot(slot);
                }
                r => return self.finish_submit(slot, r),
            }
        }
        // SAFETY: forwarded from this function's contract.
        unsafe { self.submit_bounced(token, counter, is_read, lba, iovs) }
    }

    /// # Safety
    /// As for [`Self::submit`].
    unsafe fn submit_bounced(
        &mut self,
        token: u64,
        counter: Counter,
        is_read: bool,
        lba: u64,
        iovs: &[libc::iovec],
    ) -> Submitted {
        let len: usize = iovs.iter().map(|v| v.iov_len).sum();
        let pool = self.dev.bounce_pool();
        let mut buf = if len <= pool.buf_size() {
            match pool.alloc() {
                Some(b) => BounceBuf::Pooled(b),
                None => return self.fail(IoStatus::NoMem),
            }
        } else {
            match DmaRegion::allocate_small(self.dev.block_device().card().dma(), len) {
                Ok(r) => BounceBuf::Dedicated(r),
                Err(e) => {
                    log(
                        Level::Error,
                        &format!(
                            "bdev {}: no bounce memory for a {len}-byte request: {e}",
                            self.dev.name()
                        ),
                    );
                    return self.fail(IoStatus::Failed);
                }
            }
        };
        if !is_read {
            // SAFETY: the request's buffers are readable (contract); the
            // bounce buffer is not in use yet.
            unsafe { buf.gather(iovs) };
        }
        // SAFETY: the bounce buffer is registered DMA memory (pool or
        // region of the card's IOVA space) of at least `len` bytes; it is
        // kept in the slot until the completion.
        let one = [unsafe { IoVec::new(buf.ptr(), buf.iova(), len) }];
        let pending = if is_read {
            Pending::BouncedRead(buf, iovs.to_vec())
        } else {
            Pending::BouncedWrite { _buf: buf }
        };
        let slot = self.take_slot(token, counter, pending);
        let ch = self.ch.as_mut().expect("channel open until closed");
        let r = if is_read {
            ch.read(lba, &one, slot as u64)
        } else {
            ch.write(lba, &one, slot as u64)
        };
        if r.is_ok() {
            self.counters.bump(Counter::Bounced);
        }
        self.finish_submit(slot, r)
    }

    fn finish_submit(&mut self, slot: u32, r: Result<(), SubmitError>) -> Submitted {
        match r {
            Ok(()) => {
                self.inflight += 1;
                Submitted::Queued
            }
            Err(e) => {
                self.release_slot(slot);
                let status = IoStatus::from_submit_error(&e);
                if status == IoStatus::Failed {
                    log(
                        Level::Error,
                        &format!("bdev {}: request refused: {e}", self.dev.name()),
                    );
                }
                self.fail(status)
            }
        }
    }

    /// Reaps completions (and runs the library's background work) into the
    /// channel's completion list, without calling anyone: take them with
    /// [`Self::take_completions`]. Completion callbacks usually submit the
    /// next request on this same channel, so they must run after this
    /// returns, not inside the library's poll.
    pub fn reap(&mut self) -> PollResult {
        let before = self.done.len();
        if let Some(ch) = self.ch.as_mut() {
            let Self {
                slots,
                free,
                counters,
                dev,
                inflight,
                done,
                ..
            } = self;
            ch.poll(&mut |ctx, result: Result<(), IoError>| {
                let Some(slot) = slots.get_mut(ctx as usize).and_then(Option::take) else {
                    log(
                        Level::Error,
                        &format!("bdev {}: completion for unknown request {ctx}", dev.name()),
                    );
                    return;
                };
                free.push(ctx as u32);
                *inflight -= 1;
                if let Pending::BouncedRead(buf, iovs) = &slot.pending {
                    if result.is_ok() {
                        // SAFETY: the card completed the read into `buf`;
                        // `iovs` are the request's buffers, still lent to us
                        // until the request is completed.
                        unsafe { buf.scatter(iovs) };
                    }
                }
                match &result {
                    Ok(()) => counters.bump(slot.counter),
                    Err(e) => {
                        counters.bump(Counter::Failed);
                        log(
                            Level::Error,
                            &format!("bdev {}: I/O failed: {e}", dev.name()),
                        );
                    }
                }
                drop(slot.pending);
                done.push((slot.token, IoStatus::from_result(&result)));
            });
        }
        if self.inflight == 0 && !self.resets.is_empty() {
            for token in std::mem::take(&mut self.resets) {
                self.counters.bump(Counter::Reset);
                self.done.push((token, IoStatus::Success));
            }
        }
        let hot_remove = self.dev.card_offline() && self.dev.lifecycle().card_went_offline();
        if hot_remove {
            log(
                Level::Error,
                &format!(
                    "bdev {}: the card went offline; removing the bdev (hot remove)",
                    self.dev.name()
                ),
            );
        }
        PollResult {
            completed: self.done.len() - before,
            hot_remove,
        }
    }

    /// Takes the reaped completions `(token, status)`. Hand the (emptied)
    /// vector back with [`Self::recycle_completions`] to keep its capacity.
    pub fn take_completions(&mut self) -> Vec<(u64, IoStatus)> {
        std::mem::take(&mut self.done)
    }

    /// Returns a vector from [`Self::take_completions`] for reuse.
    pub fn recycle_completions(&mut self, mut v: Vec<(u64, IoStatus)>) {
        v.clear();
        if self.done.is_empty() {
            self.done = v;
        }
    }

    /// Reaps and then reports each completion through `complete`.
    pub fn poll(&mut self, complete: &mut dyn FnMut(u64, IoStatus)) -> PollResult {
        let r = self.reap();
        let done = self.take_completions();
        for &(token, status) in &done {
            complete(token, status);
        }
        self.recycle_completions(done);
        r
    }

    /// Closes the channel: waits (polling) up to [`DRAIN_TIMEOUT`] for
    /// requests in flight; requests the card never finished are FAILED.
    /// Returns every completion not yet reported, to be reported by the
    /// caller (the channel is closed by then: a request submitted from a
    /// completion callback fails at once).
    pub fn finish(&mut self) -> Vec<(u64, IoStatus)> {
        if self.closed {
            return Vec::new();
        }
        let start = Instant::now();
        while self.outstanding() > 0 && start.elapsed() < DRAIN_TIMEOUT {
            self.reap();
            if self.dev.card_offline() && self.inflight > 0 {
                // An offline card completes nothing more; stop waiting.
                break;
            }
        }
        let mut done = self.take_completions();
        let stuck: Vec<u64> = self.slots.iter().flatten().map(|s| s.token).collect();
        if !stuck.is_empty() {
            log(
                Level::Error,
                &format!(
                    "bdev {}: {} request(s) never completed by the card; failing them",
                    self.dev.name(),
                    stuck.len()
                ),
            );
        }
        for token in stuck {
            self.counters.bump(Counter::Failed);
            done.push((token, IoStatus::Failed));
        }
        for token in std::mem::take(&mut self.resets) {
            done.push((token, IoStatus::Success));
        }
        // Bounce buffers of stuck requests are leaked rather than reused:
        // the card might still write into them.
        for slot in self.slots.drain(..).flatten() {
            std::mem::forget(slot.pending);
        }
        self.inflight = 0;
        self.ch = None;
        self.closed = true;
        self.dev.counters().retire(&self.counters);
        self.dev.lifecycle().close_channel();
        done
    }

    /// Closes the channel ([`Self::finish`]) and reports what was still in
    /// flight through `complete`. Returns how many requests that was.
    pub fn close(mut self, complete: &mut dyn FnMut(u64, IoStatus)) -> usize {
        let done = self.finish();
        for &(token, status) in &done {
            complete(token, status);
        }
        done.len()
    }
}

impl Drop for BdevChannel {
    fn drop(&mut self) {
        if !self.closed {
            let lost = self.finish().len();
            if lost > 0 {
                log(
                    Level::Warn,
                    &format!(
                        "bdev {}: channel dropped with {lost} request(s) in flight",
                        self.dev.name()
                    ),
                );
            }
        }
    }
}
