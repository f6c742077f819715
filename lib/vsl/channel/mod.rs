//! `VslChannel`: one thread's I/O path. It owns a card queue, DMA memory
//! (OOB records, a bounce staging area, a page of zeros), pre-allocated
//! request and command trackers, and its own append points. Submission
//! builds card commands and queues them; [`VslChannel::poll`] rings the
//! doorbell once, reaps completions, updates the forward map, completes
//! requests, and runs groomer work. No locks, no allocation after creation.
//!
//! Write placement: every page of a write gets OOB metadata (LBAs, version
//! sequence, CRC); pages go round-robin over the channel's open blocks on
//! different dies, up to 64 consecutive pages per command. The map changes
//! only when the card reports a page programmed. A program that fails
//! retires its block and the rest of the command is placed elsewhere with
//! the same OOB, so the request still succeeds.

mod coalesce;
mod complete;
mod read;
mod submit;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::card::{CardQueue, CardStatus, Completion, Ppa};
use crate::dma::DmaRegion;

use super::alloc::{NoRoom, Ring};
use super::counters::CounterSnapshot;
use super::device::{IoVec, Vsl};
use super::error::{IoError, SubmitError, VslError};
use super::map::{Layout, UNMAPPED};
use super::oob::{
    encode_trim_ranges, DataCrc, OobRecord, PageKind, TrimRange, FLAG_ATOMIC, FLAG_ATOMIC_COMMIT, NO_LBA,
    OOB_RECORD_LEN,
};

/// Largest request, in bytes.
pub const MAX_REQUEST_BYTES: usize = 2 << 20;
/// Requests one channel may have in flight.
const MAX_REQS: usize = 256;
/// Bounce pages per channel (room for two maximal unaligned requests).
const STAGING_PAGES: usize = 1024;
/// Flush epochs tracked (flushes in flight at once, plus one).
const EPOCHS: usize = 64;
/// Pages per card command.
const CMD_PAGES: usize = CardQueue::MAX_PAGES;
/// Marker: page not staged.
const NO_STAGE: u16 = u16::MAX;
/// Reads one channel may have announced and not yet retired (the oldest
/// still in flight holds back the ones after it).
const READ_RING: usize = 4096;
/// Marker: a command serving several requests (listed in `Cmd::members`).
const NO_REQ: u16 = u16::MAX;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ReqKind {
    Write,
    Atomic,
    Read,
    Trim,
    Flush,
}

#[derive(Debug, Clone, Copy)]
struct Req {
    ctx: u64,
    kind: ReqKind,
    pending: u32,
    error: Option<IoError>,
    epoch: u64,
    lba: u64,
    count: u64,
    note: u32,
    queued_flush: bool,
    /// Reads: the number announced on the channel's read gate.
    read_no: u64,
}

impl Req {
    const fn empty() -> Self {
        Self {
            ctx: 0,
            kind: ReqKind::Read,
            pending: 0,
            error: None,
            epoch: 0,
            lba: 0,
            count: 0,
            note: UNMAPPED,
            queued_flush: false,
            read_no: 0,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CmdKind {
    /// User data pages (installed page by page as they complete).
    Write,
    /// An atomic group: installed all at once, re-placed whole on failure.
    Atomic,
    /// Padding that closes a block before an atomic group.
    Pad,
    /// A trim note page.
    Note,
    /// Page reads for a user read.
    Read,
    /// A card flush for a flush or trim request.
    Flush,
}

/// One sector run of a read: consecutive sectors of one page copied to one
/// contiguous destination.
#[derive(Debug, Clone, Copy, Default)]
struct Run {
    lba: u64,
    /// Host address to copy to (0 for zero-copy runs, which land in place).
    dst: usize,
    /// Destination IOVA (zero-copy runs).
    dst_iova: u64,
    page: u32,
    slot: u8,
    nslots: u8,
    zero: bool,
}

#[derive(Debug)]
struct Cmd {
    kind: CmdKind,
    req: u16,
    /// Pages (program) or runs (read) in the command.
    n: u32,
    /// Program progress: pages `[0, off)` are placed and installed; the
    /// in-flight submission covers `[off, off + cnt)` at `block`/`first`.
    off: u32,
    cnt: u32,
    block: u32,
    first: u32,
    seq: u64,
    stalled: bool,
    data: [u64; CMD_PAGES],
    staging: [u16; CMD_PAGES],
    runs: [Run; CMD_PAGES],
    /// Coalesced write commands spread their pages over the open blocks
    /// of every die (a vector program with one address per page): page
    /// `off + k` goes to linear page `ppn[off + k]`. Other commands use
    /// one extent, `block`/`first`.
    scattered: bool,
    ppn: [u32; CMD_PAGES],
    /// Requests with sectors in a coalesced write command (`req` is
    /// [`NO_REQ`] then); each counted once in its request's `pending`.
    members: Vec<u16>,
}

impl Cmd {
    fn new(max_members: usize) -> Self {
        Self {
            kind: CmdKind::Read,
            req: 0,
            n: 0,
            off: 0,
            cnt: 0,
            block: 0,
            first: 0,
            seq: 0,
            stalled: false,
            data: [0; CMD_PAGES],
            staging: [NO_STAGE; CMD_PAGES],
            runs: [Run::default(); CMD_PAGES],
            scattered: false,
            ppn: [0; CMD_PAGES],
            members: Vec::with_capacity(max_members),
        }
    }
}

/// Fixed-capacity FIFO of small indexes (never allocates after creation).
#[derive(Debug)]
struct Fifo {
    buf: Vec<u16>,
    head: usize,
    len: usize,
}

impl Fifo {
    fn new(cap: usize) -> Self {
        Self {
            buf: vec![0; cap.max(1)],
            head: 0,
            len: 0,
        }
    }
    fn push(&mut self, v: u16) -> bool {
        if self.len == self.buf.len() {
            return false;
        }
        let i = (self.head + self.len) % self.buf.len();
        self.buf[i] = v;
        self.len += 1;
        true
    }
    fn front(&self) -> Option<u16> {
        (self.len > 0).then(|| self.buf[self.head])
    }
    fn pop(&mut self) -> Option<u16> {
        let v = self.front()?;
        self.head = (self.head + 1) % self.buf.len();
        self.len -= 1;
        Some(v)
    }
    fn len(&self) -> usize {
        self.len
    }
}

/// One thread's handle for I/O on an attached VSL. `Send`, not `Sync`.
pub struct VslChannel {
    vsl: Arc<Vsl>,
    q: CardQueue,
    layout: Layout,
    page_size: usize,
    oob_size: usize,
    sector_size: usize,
    spp: u32,
    ring: Ring,
    oob: DmaRegion,
    staging: DmaRegion,
    zero_page: DmaRegion,
    staging_free: Vec<u16>,
    cmds: Box<[Cmd]>,
    cmd_free: Vec<u16>,
    reqs: Box<[Req]>,
    req_free: Vec<u16>,
    ready: Fifo,
    flush_wait: Fifo,
    stalled: Fifo,
    epochs: [u32; EPOCHS],
    cur_epoch: u64,
    oldest_epoch: u64,
    cq_buf: Vec<Completion>,
    runs: Vec<Run>,
    outstanding: usize,
    /// Scratch page for CRCs over memory only reachable by raw pointer.
    page_buf: Vec<u8>,
    /// The coalescing write command being filled (not yet placed or sent).
    open: Option<usize>,
    /// Sectors in the open command's partly filled page (0: none).
    open_fill: u32,
    /// OOB record of the partly filled page.
    open_rec: OobRecord,
    /// Counts of this channel's I/O since the last poll, added to the
    /// shared counters once per poll (no shared line written per I/O).
    tally: CounterSnapshot,
    /// This channel's gate in `Vsl::read_gates`, the reads announced on it,
    /// the number below which all have completed, and which completed
    /// (indexed by read number modulo READ_RING).
    gate: usize,
    reads_issued: u64,
    reads_retired: u64,
    read_done: Box<[bool]>,
}

// SAFETY: the channel owns its queue pair and DMA regions exclusively; the
// raw pointers it holds (in `Run::dst` as integers, and inside DmaRegion)
// refer to memory that is valid from any thread. It is deliberately not
// Sync: one thread drives it.
unsafe impl Send for VslChannel {}

impl std::fmt::Debug for VslChannel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VslChannel")
            .field("outstanding", &self.outstanding)
            .finish()
    }
}

impl Vsl {
    /// Opens an I/O channel for the calling thread.
    pub fn channel(self: &Arc<Self>) -> Result<VslChannel, VslError> {
        if self.detached.load(Ordering::Acquire) || self.is_offline() {
            return Err(VslError::Detached);
        }
        let max = self.tune.max_channels;
        if self
            .channels
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < max).then_some(n + 1))
            .is_err()
        {
            return Err(VslError::TooManyChannels(max));
        }
        match VslChannel::new(self.clone()) {
            Ok(c) => Ok(c),
            Err(e) => {
                self.channels.fetch_sub(1, Ordering::AcqRel);
                Err(e)
            }
        }
    }
}

impl VslChannel {
    fn new(vsl: Arc<Vsl>) -> Result<Self, VslError> {
        let card = vsl.card.clone();
        let g = card.geometry();
        let depth = vsl.opts.queue_depth.clamp(4, 1024);
        let q = card.create_io_queue(depth)?;
        let ncmds = (depth as usize).saturating_sub(1).max(1);
        let page_size = g.page_size as usize;
        let oob_size = g.oob_size as usize;
        let oob = DmaRegion::allocate(card.dma(), ncmds * CMD_PAGES * oob_size)?;
        let staging = DmaRegion::allocate(card.dma(), STAGING_PAGES * page_size)?;
        let mut zero_page = DmaRegion::allocate_small(card.dma(), page_size)?;
        zero_page.fill(0, &vec![0u8; page_size])?;
        let id = vsl.channel_ids.fetch_add(1, Ordering::AcqRel) as u32;
        let layout = vsl.layout;
        let stripe = vsl.tune.stripe;
        let mut ring = Ring::new(stripe as usize, id.wrapping_mul(stripe), layout.pages_per_block());
        while let Some(p) = vsl.orphans.pop() {
            if !ring.adopt(p) {
                let _ = vsl.orphans.push(p);
                break;
            }
            if ring.open_blocks().count() >= stripe as usize {
                break;
            }
        }
        let spp = layout.sectors_per_page;
        let sector_size = vsl.sb.sector_size as usize;
        let Some((gate, first_read)) = vsl.read_gates.claim() else {
            return Err(VslError::TooManyChannels(vsl.read_gates.len()));
        };
        Ok(Self {
            q,
            layout,
            page_size,
            oob_size,
            sector_size,
            spp,
            ring,
            oob,
            staging,
            zero_page,
            staging_free: (0..STAGING_PAGES as u16).rev().collect(),
            cmds: (0..ncmds)
                .map(|_| Cmd::new(coalesce::OPEN_CMD_PAGES * spp as usize))
                .collect(),
            cmd_free: (0..ncmds as u16).rev().collect(),
            reqs: (0..MAX_REQS).map(|_| Req::empty()).collect(),
            req_free: (0..MAX_REQS as u16).rev().collect(),
            ready: Fifo::new(MAX_REQS),
            flush_wait: Fifo::new(MAX_REQS),
            stalled: Fifo::new(ncmds),
            epochs: [0; EPOCHS],
            cur_epoch: 0,
            oldest_epoch: 0,
            cq_buf: Vec::with_capacity(ncmds + 1),
            runs: Vec::with_capacity(MAX_REQUEST_BYTES / 512),
            outstanding: 0,
            page_buf: vec![0u8; page_size],
            open: None,
            open_fill: 0,
            open_rec: OobRecord::new(PageKind::Data, 0),
            tally: CounterSnapshot::default(),
            gate,
            reads_issued: first_read,
            reads_retired: first_read,
            read_done: vec![false; READ_RING].into_boxed_slice(),
            vsl,
        })
    }
    /// Requests accepted and not yet completed.
    pub fn outstanding(&self) -> usize {
        self.outstanding
    }
    /// The VSL this channel belongs to.
    pub fn vsl(&self) -> &Arc<Vsl> {
        &self.vsl
    }
    fn oob_ptr(&self, cmd: usize, i: usize) -> *mut u8 {
        self.oob.as_ptr().wrapping_add((cmd * CMD_PAGES + i) * self.oob_size)
    }
    fn oob_iova(&self, cmd: usize, i: usize) -> u64 {
        self.oob.iova() + ((cmd * CMD_PAGES + i) * self.oob_size) as u64
    }
    fn stage_ptr(&self, s: u16) -> *mut u8 {
        self.staging.as_ptr().wrapping_add(s as usize * self.page_size)
    }
    fn stage_iova(&self, s: u16) -> u64 {
        self.staging.iova() + (s as usize * self.page_size) as u64
    }
    /// Encodes `rec` with the page's data CRCs `crc` into the OOB slot of
    /// page `i` of command `c`. Called only before the command is handed
    /// to the card.
    fn store_oob(&self, c: usize, i: usize, rec: &OobRecord, crc: DataCrc) {
        let mut raw = [0u8; 128];
        let n = self.oob_size.min(raw.len()).max(OOB_RECORD_LEN);
        rec.encode_with_crc(crc, &mut raw[..n]);
        // SAFETY: the OOB slot (cmd c, page i) lies in our OOB region and
        // the card does not read it until the command is submitted.
        unsafe { std::ptr::copy_nonoverlapping(raw.as_ptr(), self.oob_ptr(c, i), n.min(self.oob_size)) };
    }
    /// Read `no` completed (or was refused after its announcement).
    fn read_done(&mut self, no: u64) {
        self.read_done[(no % READ_RING as u64) as usize] = true;
    }
    /// Publishes on the read gate how far reads have all completed.
    fn retire_reads(&mut self) {
        let before = self.reads_retired;
        while self.reads_retired < self.reads_issued {
            let i = (self.reads_retired % READ_RING as u64) as usize;
            if !self.read_done[i] {
                break;
            }
            self.read_done[i] = false;
            self.reads_retired += 1;
        }
        if self.reads_retired != before {
            self.vsl.read_gates.retire(self.gate, self.reads_retired);
        }
    }
    fn writes_allowed(&self) -> Result<(), SubmitError> {
        if self.vsl.is_offline() || self.vsl.detached.load(Ordering::Acquire) {
            return Err(SubmitError::Offline);
        }
        if self.vsl.is_read_only() {
            return Err(SubmitError::ReadOnly);
        }
        Ok(())
    }
    /// Checks a buffer list: whole sectors, within the request limit, inside
    /// the device. Returns the sector count.
    fn check_buffers(&self, lba: u64, data: &[IoVec]) -> Result<u64, SubmitError> {
        let mut bytes = 0usize;
        for v in data {
            if v.len() % self.sector_size != 0 {
                return Err(SubmitError::Misaligned {
                    len: v.len(),
                    sector_size: self.sector_size as u32,
                });
            }
            bytes = bytes.saturating_add(v.len());
        }
        if bytes == 0 {
            return Err(SubmitError::Invalid("a request needs at least one sector"));
        }
        if bytes > MAX_REQUEST_BYTES {
            return Err(SubmitError::TooLarge {
                bytes,
                max: MAX_REQUEST_BYTES,
            });
        }
        let count = (bytes / self.sector_size) as u64;
        self.check_range(lba, count)?;
        Ok(count)
    }
    fn check_range(&self, lba: u64, count: u64) -> Result<(), SubmitError> {
        let cap = self.vsl.num_sectors();
        if count == 0 || lba >= cap || count > cap - lba {
            return Err(SubmitError::OutOfRange {
                lba,
                count,
                capacity: cap,
            });
        }
        Ok(())
    }
    fn alloc_req(&mut self, ctx: u64, kind: ReqKind) -> u16 {
        // Callers check `req_free` first.
        let r = self.req_free.pop().unwrap_or(0);
        self.reqs[r as usize] = Req {
            ctx,
            kind,
            ..Req::empty()
        };
        self.outstanding += 1;
        r
    }
    /// Whether `cmds` commands, `stage` staging pages and one request fit.
    fn have_room(&self, cmds: usize, stage: usize) -> bool {
        !self.req_free.is_empty()
            && self.cmd_free.len() >= cmds
            && self.q.free_slots() >= cmds
            && self.staging_free.len() >= stage
    }
    fn begin_write_epoch(&mut self, r: u16) -> Result<(), SubmitError> {
        let idx = (self.cur_epoch % EPOCHS as u64) as usize;
        self.epochs[idx] += 1;
        self.reqs[r as usize].epoch = self.cur_epoch;
        Ok(())
    }
    fn floor(&self) -> u64 {
        self.vsl.tune.gc_reserve as u64
    }
    fn room_error(&self, e: NoRoom) -> SubmitError {
        match e {
            NoRoom::Pools => {
                self.vsl.ctr.busy_rejections.fetch_add(1, Ordering::Relaxed);
                self.vsl.gc_active.store(true, Ordering::Release);
                SubmitError::Busy
            }
            NoRoom::TooLarge => SubmitError::TooLarge {
                bytes: MAX_REQUEST_BYTES + 1,
                max: MAX_REQUEST_BYTES,
            },
        }
    }
    /// Locates sector `s` of a buffer list: (iovec index, byte offset).
    fn locate(data: &[IoVec], mut byte: usize) -> (usize, usize) {
        for (i, v) in data.iter().enumerate() {
            if byte < v.len() {
                return (i, byte);
            }
            byte -= v.len();
        }
        (data.len(), 0)
    }
    /// Frees a command's staging pages, reader pins and slot.
    fn release_cmd(&mut self, c: usize) {
        let n = self.cmds[c].n as usize;
        for i in 0..n {
            let s = self.cmds[c].staging[i];
            if s != NO_STAGE {
                self.staging_free.push(s);
                self.cmds[c].staging[i] = NO_STAGE;
            }
        }
        self.cmds[c].n = 0;
        self.cmds[c].scattered = false;
        self.cmd_free.push(c as u16);
    }
    /// Rings the doorbell for everything submitted, reaps completions,
    /// completes requests through `f(ctx, result)`, and runs groomer work.
    /// Returns the number of requests completed.
    pub fn poll(&mut self, f: &mut dyn FnMut(u64, Result<(), IoError>)) -> usize {
        let mut done = 0;
        self.submit_open();
        self.q.ring();
        self.cq_buf.clear();
        let cap = self.cq_buf.capacity();
        let buf = &mut self.cq_buf;
        self.q.poll(cap, |c| buf.push(c));
        for i in 0..self.cq_buf.len() {
            let c = self.cq_buf[i];
            done += self.on_completion(c, f);
        }
        done += self.retry_stalled(f);
        self.start_flushes();
        while let Some(r) = self.ready.pop() {
            done += self.finish(r, f);
        }
        self.submit_open();
        self.q.ring();
        self.retire_reads();
        if !self.tally.is_zero() {
            self.vsl.ctr.add(&self.tally);
            self.tally = CounterSnapshot::default();
        }
        if self.vsl.needs_grooming() {
            self.vsl.groom();
        }
        done
    }
    /// Polls until every request completed or `limit` passed, discarding
    /// results. Returns whether everything completed.
    pub fn drain(&mut self, limit: Duration) -> bool {
        let start = Instant::now();
        while self.outstanding > 0 {
            self.poll(&mut |_, _| {});
            if self.vsl.is_offline() && self.q.outstanding() == 0 && self.outstanding > 0 {
                // The card is gone: fail what remains.
                self.poll(&mut |_, _| {});
                if self.q.outstanding() == 0 {
                    break;
                }
            }
            if start.elapsed() > limit {
                return false;
            }
            std::thread::yield_now();
        }
        self.outstanding == 0
    }
}

impl Drop for VslChannel {
    fn drop(&mut self) {
        self.drain(Duration::from_secs(30));
        for p in self.ring.take_all().collect::<Vec<_>>() {
            if self.vsl.orphans.push(p).is_err() {
                // No room to hand it over: the block is simply closed early;
                // its unwritten pages are reclaimed when it is groomed.
                self.vsl.blocks.get(p.block).transition(
                    super::blocks::BlockState::Open,
                    super::blocks::BlockState::Full,
                );
            }
        }
        self.vsl.read_gates.release(self.gate);
        self.vsl.channels.fetch_sub(1, Ordering::AcqRel);
    }
}
