//! A host-side queue pair: submission ring, completion ring, doorbells,
//! and the pre-allocated tracker table that owns every command id.
//!
//! One queue pair belongs to one thread: no locks, no atomics, no
//! allocation after construction (SPDK `nvme_qpair` style). The submission
//! doorbell is written once per [`QueuePair::ring`], the completion doorbell
//! once per [`QueuePair::poll`] that reaped anything.

use std::sync::Arc;

use super::controller::ControllerShared;
use super::mmio::Mmio;
use super::spec::{cq_head_doorbell, sq_tail_doorbell, CompletionEntry, SubmissionEntry};
use super::NvmeError;
use crate::dma::{DmaRegion, IovaSpace};

/// DMA scratch bytes reserved for each command id: room for a 64-entry PRP
/// list and a 64-entry address list (8 bytes each).
pub const SCRATCH_PER_COMMAND: usize = 1024;

/// Per-command DMA scratch space (PRP lists, address lists).
#[derive(Debug, Clone, Copy)]
pub struct Scratch {
    /// Host address of the scratch area.
    pub ptr: *mut u8,
    /// Device address of the scratch area.
    pub iova: u64,
}

impl Scratch {
    /// Writes little-endian u64 entries at the start of the area and returns
    /// their IOVA. Fails if they do not fit.
    pub fn write_u64_list(&self, entries: &[u64], at: usize) -> Option<u64> {
        let bytes = entries.len() * 8;
        if at + bytes > SCRATCH_PER_COMMAND {
            return None;
        }
        for (i, e) in entries.iter().enumerate() {
            // SAFETY: `at + bytes <= SCRATCH_PER_COMMAND` (checked above) keeps
            // every store inside this command's scratch slot, which the queue
            // pair owns; the device only reads it after the doorbell, and the
            // slot is not reused until this command completed.
            unsafe {
                self.ptr
                    .add(at + i * 8)
                    .cast::<u64>()
                    .write_unaligned(e.to_le());
            }
        }
        Some(self.iova + at as u64)
    }
}

/// Why a submission was not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum QueueFull {
    /// Every command id is in flight: poll for completions, then retry.
    #[error("queue full: every command slot is in flight; poll completions and retry")]
    Full,
}

#[derive(Debug, Clone, Copy, Default)]
struct Tracker {
    tag: u64,
    busy: bool,
}

/// One submission/completion queue pair.
pub struct QueuePair {
    qid: u16,
    depth: u16,
    mmio: Mmio,
    /// One region: submission ring, completion ring, per-command scratch.
    memory: DmaRegion,
    sq_offset: usize,
    cq_offset: usize,
    scratch_offset: usize,
    sq_tail: u16,
    cq_head: u16,
    phase: bool,
    unrung: u16,
    sq_doorbell: usize,
    cq_doorbell: usize,
    trackers: Box<[Tracker]>,
    free_cids: Vec<u16>,
    /// Completions naming a command id that was not in flight (a device bug).
    spurious_completions: u64,
    /// For I/O queues: how to delete them on the device when dropped.
    owner: Option<Arc<ControllerShared>>,
}

// SAFETY: the raw pointers inside (DMA regions, scratch) refer to memory this
// queue pair owns exclusively; moving the whole pair to another thread moves
// that ownership with it. `QueuePair` is deliberately not `Sync`.
unsafe impl Send for QueuePair {}

impl std::fmt::Debug for QueuePair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QueuePair")
            .field("qid", &self.qid)
            .field("depth", &self.depth)
            .field("outstanding", &self.outstanding())
            .finish()
    }
}

impl QueuePair {
    /// Allocates rings and trackers for queue `qid` with `depth` entries.
    /// The device is not told: the caller creates the queues (admin commands
    /// or AQA/ASQ/ACQ registers).
    pub(crate) fn allocate(
        qid: u16,
        depth: u16,
        mmio: Mmio,
        stride: usize,
        space: &Arc<IovaSpace>,
    ) -> Result<Self, NvmeError> {
        if depth < 2 {
            return Err(NvmeError::InvalidQueueDepth { depth, max: u16::MAX });
        }
        let slots = depth as usize - 1;
        let page = |n: usize| n.div_ceil(4096) * 4096;
        let sq_offset = 0;
        let cq_offset = page(depth as usize * 64);
        let scratch_offset = cq_offset + page(depth as usize * 16);
        let memory = DmaRegion::allocate_small(space, scratch_offset + slots * SCRATCH_PER_COMMAND)?;
        // Zero the rings so no stale phase bit looks valid.
        // SAFETY: the region was just allocated with at least
        // `scratch_offset` bytes and no device knows its address yet.
        unsafe { std::ptr::write_bytes(memory.as_ptr(), 0, scratch_offset) };
        Ok(Self {
            qid,
            depth,
            mmio,
            memory,
            sq_offset,
            cq_offset,
            scratch_offset,
            sq_tail: 0,
            cq_head: 0,
            phase: true,
            unrung: 0,
            sq_doorbell: sq_tail_doorbell(qid, stride),
            cq_doorbell: cq_head_doorbell(qid, stride),
            trackers: vec![Tracker::default(); slots].into_boxed_slice(),
            free_cids: (0..slots as u16).rev().collect(),
            spurious_completions: 0,
            owner: None,
        })
    }

    pub(crate) fn set_owner(&mut self, owner: Arc<ControllerShared>) {
        self.owner = Some(owner);
    }

    /// Queue id.
    pub fn qid(&self) -> u16 {
        self.qid
    }

    /// Ring size in entries (one fewer can be outstanding).
    pub fn depth(&self) -> u16 {
        self.depth
    }

    /// IOVA of the submission ring.
    pub fn sq_iova(&self) -> u64 {
        self.memory.iova() + self.sq_offset as u64
    }

    /// IOVA of the completion ring.
    pub fn cq_iova(&self) -> u64 {
        self.memory.iova() + self.cq_offset as u64
    }

    /// Commands submitted and not yet completed.
    pub fn outstanding(&self) -> usize {
        self.trackers.len() - self.free_cids.len()
    }

    /// Command slots free right now.
    pub fn free_slots(&self) -> usize {
        self.free_cids.len()
    }

    /// Places a command in the submission ring without ringing the doorbell.
    ///
    /// `build` receives the command id and its DMA scratch area and returns
    /// the entry (its cid field is overwritten with the allocated id).
    /// `tag` comes back with the completion. A full queue is an error the
    /// caller retries after polling; nothing is dropped.
    #[inline]
    pub fn submit_with<E>(
        &mut self,
        tag: u64,
        build: impl FnOnce(u16, Scratch) -> Result<SubmissionEntry, E>,
    ) -> Result<u16, SubmitFailure<E>> {
        let cid = *self.free_cids.last().ok_or(SubmitFailure::Full)?;
        let scratch = Scratch {
            ptr: self
                .memory
                .as_ptr()
                .wrapping_add(self.scratch_offset + cid as usize * SCRATCH_PER_COMMAND),
            iova: self.memory.iova()
                + (self.scratch_offset + cid as usize * SCRATCH_PER_COMMAND) as u64,
        };
        let mut sqe = build(cid, scratch).map_err(SubmitFailure::Build)?;
        self.free_cids.pop();
        sqe.set_cid(cid);
        self.trackers[cid as usize] = Tracker { tag, busy: true };
        let slot = self.memory.as_ptr().wrapping_add(self.sq_offset + self.sq_tail as usize * 64);
        // SAFETY: `sq_tail < depth` so the slot lies inside the ring; at most
        // depth-1 commands are outstanding, so the device is not reading this
        // slot. The ring is 64-byte aligned (page aligned region).
        unsafe { slot.cast::<SubmissionEntry>().write_volatile(sqe) };
        self.sq_tail = (self.sq_tail + 1) % self.depth;
        self.unrung += 1;
        Ok(cid)
    }

    /// Submits a ready-made entry (see [`Self::submit_with`]).
    pub fn submit(&mut self, sqe: SubmissionEntry, tag: u64) -> Result<u16, QueueFull> {
        self.submit_with::<std::convert::Infallible>(tag, |_, _| Ok(sqe))
            .map_err(|_| QueueFull::Full)
    }

    /// Completions the device posted for command ids not in flight.
    pub fn spurious_completions(&self) -> u64 {
        self.spurious_completions
    }

    /// Commands placed since the last doorbell.
    pub fn unrung(&self) -> u16 {
        self.unrung
    }

    /// Writes the submission doorbell once for everything placed since the
    /// last call. Does nothing when nothing is pending.
    #[inline]
    pub fn ring(&mut self) {
        if self.unrung == 0 {
            return;
        }
        self.unrung = 0;
        // Make the entries visible before the device sees the new tail.
        std::sync::atomic::fence(std::sync::atomic::Ordering::Release);
        self.mmio.write32(self.sq_doorbell, self.sq_tail as u32);
    }

    /// Reaps up to `max` completions, calling `f(tag, entry)` for each, then
    /// writes the completion doorbell once. Returns how many were reaped.
    #[inline]
    pub fn poll(&mut self, max: usize, mut f: impl FnMut(u64, &CompletionEntry)) -> usize {
        let mut reaped = self.reap(max, &mut f);
        if reaped == 0 && self.outstanding() > 0 {
            self.mmio.idle_poll(self.qid);
            reaped = self.reap(max, &mut f);
        }
        reaped
    }

    fn reap(&mut self, max: usize, f: &mut impl FnMut(u64, &CompletionEntry)) -> usize {
        let mut reaped = 0;
        while reaped < max {
            let slot = self.memory.as_ptr().wrapping_add(self.cq_offset + self.cq_head as usize * 16);
            // The dword holding the command id and the phase-tagged status is
            // read first, in one load, and the rest only after the phase
            // matched: a whole-struct volatile read is done field by field in
            // any order, so it could pair a new phase with a stale command id
            // while the device is still writing the entry.
            // SAFETY: `cq_head < depth` keeps the 16-byte slot inside the
            // completion ring (16-byte aligned); the device writes it, so it
            // is read with volatile loads.
            let dw3 = unsafe { slot.add(12).cast::<u32>().read_volatile() };
            if (dw3 >> 16) & 1 != u32::from(self.phase) {
                break;
            }
            std::sync::atomic::fence(std::sync::atomic::Ordering::Acquire);
            // SAFETY: as above; the entry is complete once its phase matched.
            let (dw0, dw1, dw2) = unsafe {
                let words = slot.cast::<u32>();
                (words.read_volatile(), words.add(1).read_volatile(), words.add(2).read_volatile())
            };
            let cqe = CompletionEntry {
                dw0,
                dw1,
                sq_head: dw2 as u16,
                sq_id: (dw2 >> 16) as u16,
                cid: dw3 as u16,
                status: (dw3 >> 16) as u16,
            };
            self.cq_head += 1;
            if self.cq_head == self.depth {
                self.cq_head = 0;
                self.phase = !self.phase;
            }
            reaped += 1;
            let cid = cqe.cid as usize;
            match self.trackers.get_mut(cid) {
                Some(tracker) if tracker.busy => {
                    tracker.busy = false;
                    let tag = tracker.tag;
                    self.free_cids.push(cid as u16);
                    f(tag, &cqe);
                }
                // A completion for a command id we never issued: a device
                // bug. It cannot be delivered to anyone; count it so status
                // output shows it.
                _ => self.spurious_completions += 1,
            }
        }
        if reaped > 0 {
            self.mmio.write32(self.cq_doorbell, self.cq_head as u32);
        }
        reaped
    }
}

/// Why [`QueuePair::submit_with`] did not place a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubmitFailure<E> {
    /// No free command slot.
    Full,
    /// The builder refused the command.
    Build(E),
}

impl Drop for QueuePair {
    fn drop(&mut self) {
        if let Some(owner) = self.owner.take() {
            owner.delete_io_queues(self.qid);
        }
    }
}
