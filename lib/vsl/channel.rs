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

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::card::{CardQueue, CardStatus, Completion, Ppa};
use crate::dma::DmaRegion;

use super::alloc::{NoRoom, Ring};
use super::device::{IoVec, Vsl};
use super::error::{IoError, SubmitError, VslError};
use super::map::{Layout, UNMAPPED};
use super::oob::{
    encode_trim_ranges, OobRecord, PageKind, TrimRange, FLAG_ATOMIC, FLAG_ATOMIC_COMMIT, NO_LBA,
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
}

impl Cmd {
    fn new() -> Self {
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
            cmds: (0..ncmds).map(|_| Cmd::new()).collect(),
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

    // ---- helpers ------------------------------------------------------

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

    /// Fills page `i` of command `c` for the sectors `sectors` (indexes into
    /// the request) of `data` and writes its OOB record. Zero-copy when the
    /// page is one page-aligned sector.
    #[allow(clippy::too_many_arguments)]
    fn fill_page(
        &mut self,
        c: usize,
        i: usize,
        data: &[IoVec],
        first_sector: u64,
        nsec: u32,
        lbas: &dyn Fn(u64) -> u64,
        mut rec: OobRecord,
    ) {
        let ss = self.sector_size;
        let (vi, off) = Self::locate(data, first_sector as usize * ss);
        let v = data[vi];
        let zero_copy = self.spp == 1 && (v.iova() + off as u64).is_multiple_of(self.page_size as u64);
        rec.count = nsec as u16;
        for k in 0..nsec as usize {
            rec.lbas[k] = lbas(first_sector + k as u64) as u32;
        }
        let crc;
        if zero_copy {
            self.cmds[c].data[i] = v.iova() + off as u64;
            self.cmds[c].staging[i] = NO_STAGE;
            // SAFETY: the caller of IoVec::new promised `len` readable bytes
            // at `ptr` that the card does not write during a write request;
            // `off + page_size <= len` because the sector lies in this iovec.
            let page = unsafe { std::slice::from_raw_parts(v.ptr().add(off), self.page_size) };
            crc = rec.data_crc(page);
        } else {
            let s = self.staging_free.pop().unwrap_or(0);
            let dst = self.stage_ptr(s);
            for k in 0..self.spp as usize {
                let sector = first_sector + k as u64;
                // SAFETY: staging page `s` is ours (popped from the free
                // list) and holds `spp * ss` bytes; the user buffer promised
                // readable sectors; the regions are distinct allocations.
                unsafe {
                    if k < nsec as usize {
                        let (svi, soff) = Self::locate(data, sector as usize * ss);
                        std::ptr::copy_nonoverlapping(data[svi].ptr().add(soff), dst.add(k * ss), ss);
                    } else {
                        std::ptr::write_bytes(dst.add(k * ss), 0, ss);
                    }
                }
            }
            self.cmds[c].data[i] = self.stage_iova(s);
            self.cmds[c].staging[i] = s;
            // SAFETY: the staging page is host-owned until submission.
            let page = unsafe { std::slice::from_raw_parts(dst, self.page_size) };
            crc = rec.data_crc(page);
        }
        let mut raw = [0u8; 128];
        let n = self.oob_size.min(raw.len()).max(OOB_RECORD_LEN);
        rec.encode_with_crc(crc, &mut raw[..n]);
        // SAFETY: the OOB slot (cmd c, page i) lies in our OOB region and
        // the card does not touch it until the command is submitted.
        unsafe { std::ptr::copy_nonoverlapping(raw.as_ptr(), self.oob_ptr(c, i), n.min(self.oob_size)) };
    }

    /// Submits the in-flight part `[off, off+cnt)` of program command `c`.
    fn submit_program(&mut self, c: usize) -> Result<(), SubmitError> {
        let cmd = &self.cmds[c];
        let mut ppas = [Ppa::new(0, 0, 0); CMD_PAGES];
        let die = self.layout.die_of_block(cmd.block);
        let blk = cmd.block % self.layout.geometry.blocks_per_die;
        for (k, p) in ppas.iter_mut().enumerate().take(cmd.cnt as usize) {
            *p = Ppa::new(die, blk, cmd.first + k as u32);
        }
        let off = cmd.off as usize;
        let cnt = cmd.cnt as usize;
        let data = cmd.data;
        self.q
            .program(&ppas[..cnt], &data[off..off + cnt], Some(self.oob_iova(c, off)), c as u64)
            .map_err(|_| SubmitError::QueueFull)
    }

    // ---- writes -------------------------------------------------------

    /// Writes the sectors in `data` starting at `lba`. Completion comes
    /// through [`Self::poll`] with `ctx`. `QueueFull`/`Busy` are retryable.
    pub fn write(&mut self, lba: u64, data: &[IoVec], ctx: u64) -> Result<(), SubmitError> {
        self.writes_allowed()?;
        let count = self.check_buffers(lba, data)?;
        let spp = self.spp as u64;
        let pages = count.div_ceil(spp);
        let stage = if self.spp == 1 {
            data.iter()
                .map(|v| {
                    (0..v.len())
                        .step_by(self.sector_size)
                        .filter(|o| !(v.iova() + *o as u64).is_multiple_of(self.page_size as u64))
                        .count()
                })
                .sum()
        } else {
            pages as usize
        };
        let ppb = self.layout.pages_per_block() as u64;
        let cmds_bound =
            (pages.div_ceil(CMD_PAGES as u64) + pages.div_ceil(ppb) + self.vsl.tune.stripe as u64 + 1).min(pages) as usize;
        if !self.have_room(cmds_bound, stage) || self.cur_epoch - self.oldest_epoch >= EPOCHS as u64 - 1 {
            return Err(SubmitError::QueueFull);
        }
        let floor = self.floor();
        self.ring
            .ensure_room(&self.vsl.blocks, pages, floor)
            .map_err(|e| self.room_error(e))?;
        let seq = self.vsl.next_seq();
        let r = self.alloc_req(ctx, ReqKind::Write);
        self.reqs[r as usize].count = count;
        self.begin_write_epoch(r)?;
        let mut placed = 0u64;
        while placed < pages {
            let Some(ext) = self.ring.take((pages - placed).min(CMD_PAGES as u64) as u32) else {
                // ensure_room guaranteed the room; failing here is a bug.
                self.reqs[r as usize].error = Some(IoError::Media {
                    lba,
                    status: CardStatus::Internal,
                });
                break;
            };
            let c = self.cmd_free.pop().unwrap_or(0) as usize;
            {
                let cmd = &mut self.cmds[c];
                cmd.kind = CmdKind::Write;
                cmd.req = r;
                cmd.n = ext.count;
                cmd.off = 0;
                cmd.cnt = ext.count;
                cmd.block = ext.block;
                cmd.first = ext.first;
                cmd.seq = seq;
                cmd.stalled = false;
            }
            for i in 0..ext.count as usize {
                let page = placed + i as u64;
                let first_sector = page * spp;
                let nsec = (count - first_sector).min(spp) as u32;
                let rec = OobRecord::new(PageKind::Data, seq);
                self.fill_page(c, i, data, first_sector, nsec, &|s| lba + s, rec);
            }
            if self.submit_program(c).is_err() {
                // Slots were checked above; a refusal here means a bug.
                self.reqs[r as usize].error = Some(IoError::Media {
                    lba,
                    status: CardStatus::Internal,
                });
                self.release_cmd(c);
            } else {
                self.reqs[r as usize].pending += 1;
            }
            placed += ext.count as u64;
        }
        if self.reqs[r as usize].pending == 0 {
            let _ = self.ready.push(r);
        }
        Ok(())
    }

    /// Writes several (possibly non-contiguous) ranges as one atomic unit:
    /// after any crash either every sector of every range reads the new data
    /// or none does. At most [`Vsl::max_atomic_sectors`] sectors in total.
    pub fn atomic_write(&mut self, ranges: &[(u64, &[IoVec])], ctx: u64) -> Result<(), SubmitError> {
        self.writes_allowed()?;
        if ranges.is_empty() {
            return Err(SubmitError::Invalid("an atomic write needs at least one range"));
        }
        let mut total = 0u64;
        let mut spans = [(0u64, 0u64); 64];
        if ranges.len() > spans.len() {
            return Err(SubmitError::TooManyBuffers {
                given: ranges.len(),
                max: spans.len(),
            });
        }
        for (i, (lba, data)) in ranges.iter().enumerate() {
            let n = self.check_buffers(*lba, data)?;
            spans[i] = (*lba, n);
            total += n;
        }
        let max = self.vsl.max_atomic_sectors();
        if total > max as u64 {
            return Err(SubmitError::AtomicTooLarge { sectors: total, max });
        }
        for i in 0..ranges.len() {
            for j in i + 1..ranges.len() {
                let (a, an) = spans[i];
                let (b, bn) = spans[j];
                if a < b + bn && b < a + an {
                    return Err(SubmitError::Invalid("atomic write ranges overlap"));
                }
            }
        }
        let spp = self.spp as u64;
        let pages = total.div_ceil(spp) as u32;
        let ppb = self.layout.pages_per_block();
        let pad_cmds = (ppb as usize).div_ceil(CMD_PAGES);
        let stage = pages as usize; // upper bound
        if !self.have_room(1 + pad_cmds, stage) || self.cur_epoch - self.oldest_epoch >= EPOCHS as u64 - 1 {
            return Err(SubmitError::QueueFull);
        }
        let floor = self.floor();
        let (pad, ext) = self
            .ring
            .take_contiguous(&self.vsl.blocks, pages, floor)
            .map_err(|e| self.room_error(e))?;
        let seq = self.vsl.next_seq();
        let r = self.alloc_req(ctx, ReqKind::Atomic);
        self.reqs[r as usize].count = total;
        self.begin_write_epoch(r)?;
        if let Some(pad) = pad {
            self.submit_pad(r, pad.block, pad.first, pad.count);
        }
        let c = self.cmd_free.pop().unwrap_or(0) as usize;
        {
            let cmd = &mut self.cmds[c];
            cmd.kind = CmdKind::Atomic;
            cmd.req = r;
            cmd.n = pages;
            cmd.off = 0;
            cmd.cnt = pages;
            cmd.block = ext.block;
            cmd.first = ext.first;
            cmd.seq = seq;
            cmd.stalled = false;
        }
        // Sector k of the group is sector `k - start` of the range holding it.
        let nranges = ranges.len();
        let lba_of = |k: u64| -> u64 {
            let mut k = k;
            for &(lba, n) in spans.iter().take(nranges) {
                if k < n {
                    return lba + k;
                }
                k -= n;
            }
            u64::MAX
        };
        for i in 0..pages as usize {
            let first_sector = i as u64 * spp;
            let nsec = (total - first_sector).min(spp) as u32;
            let mut rec = OobRecord::new(PageKind::Data, seq);
            rec.flags = FLAG_ATOMIC | if i as u32 + 1 == pages { FLAG_ATOMIC_COMMIT } else { 0 };
            rec.group = seq;
            rec.member_index = i as u16;
            rec.member_count = pages as u16;
            // Locate the sector's buffer within its range.
            let (ri, within) = {
                let mut k = first_sector;
                let mut found = (0usize, 0u64);
                for (idx, &(_, n)) in spans.iter().take(nranges).enumerate() {
                    if k < n {
                        found = (idx, k);
                        break;
                    }
                    k -= n;
                }
                found
            };
            if spp == 1 {
                self.fill_page(c, i, ranges[ri].1, within, nsec, &|s| lba_of(first_sector + (s - within)), rec);
            } else {
                self.fill_atomic_page(c, i, ranges, &spans[..nranges], first_sector, nsec, &lba_of, rec);
            }
        }
        if self.submit_program(c).is_ok() {
            self.reqs[r as usize].pending += 1;
        } else {
            self.reqs[r as usize].error = Some(IoError::Media {
                lba: spans[0].0,
                status: CardStatus::Internal,
            });
            self.release_cmd(c);
        }
        if self.reqs[r as usize].pending == 0 {
            let _ = self.ready.push(r);
        }
        Ok(())
    }

    /// Fills a staged page of an atomic group whose sectors may come from
    /// several ranges (sub-page sectors).
    #[allow(clippy::too_many_arguments)]
    fn fill_atomic_page(
        &mut self,
        c: usize,
        i: usize,
        ranges: &[(u64, &[IoVec])],
        spans: &[(u64, u64)],
        first_sector: u64,
        nsec: u32,
        lba_of: &dyn Fn(u64) -> u64,
        mut rec: OobRecord,
    ) {
        let ss = self.sector_size;
        let s = self.staging_free.pop().unwrap_or(0);
        let dst = self.stage_ptr(s);
        rec.count = nsec as u16;
        for k in 0..self.spp as usize {
            let g = first_sector + k as u64;
            // SAFETY: as in `fill_page`: our staging page, the caller's
            // promised-readable sectors, distinct regions.
            unsafe {
                if k < nsec as usize {
                    let mut rem = g;
                    let mut src = std::ptr::null_mut::<u8>();
                    for (idx, &(_, n)) in spans.iter().enumerate() {
                        if rem < n {
                            let (vi, off) = Self::locate(ranges[idx].1, rem as usize * ss);
                            src = ranges[idx].1[vi].ptr().add(off);
                            break;
                        }
                        rem -= n;
                    }
                    std::ptr::copy_nonoverlapping(src, dst.add(k * ss), ss);
                    rec.lbas[k] = lba_of(g) as u32;
                } else {
                    std::ptr::write_bytes(dst.add(k * ss), 0, ss);
                }
            }
        }
        self.cmds[c].data[i] = self.stage_iova(s);
        self.cmds[c].staging[i] = s;
        // SAFETY: the staging page is host-owned until submission.
        let page = unsafe { std::slice::from_raw_parts(dst, self.page_size) };
        let crc = rec.data_crc(page);
        let mut raw = [0u8; 128];
        let n = self.oob_size.min(raw.len()).max(OOB_RECORD_LEN);
        rec.encode_with_crc(crc, &mut raw[..n]);
        // SAFETY: our OOB slot, not yet handed to the card.
        unsafe { std::ptr::copy_nonoverlapping(raw.as_ptr(), self.oob_ptr(c, i), n.min(self.oob_size)) };
    }

    /// Programs pad pages `[first, first+count)` of `block` for request `r`.
    fn submit_pad(&mut self, r: u16, block: u32, first: u32, count: u32) {
        let zero_iova = self.zero_page.iova();
        // SAFETY: the zero page is ours and never written after creation.
        let zeros = unsafe { std::slice::from_raw_parts(self.zero_page.as_ptr(), self.page_size) };
        let rec = OobRecord::new(PageKind::Pad, 0);
        let crc = rec.data_crc(zeros);
        let mut raw = [0u8; 128];
        let n = self.oob_size.min(raw.len()).max(OOB_RECORD_LEN);
        rec.encode_with_crc(crc, &mut raw[..n]);
        let mut done = 0;
        while done < count {
            let k = (count - done).min(CMD_PAGES as u32);
            let slot = if self.q.free_slots() > 0 { self.cmd_free.pop() } else { None };
            let Some(c) = slot else {
                // No command slot: keep the rest of the block as an append
                // point instead of leaving it unwritten forever.
                self.ring.adopt(super::alloc::AppendPoint {
                    block,
                    next: first + done,
                });
                break;
            };
            let c = c as usize;
            {
                let cmd = &mut self.cmds[c];
                cmd.kind = CmdKind::Pad;
                cmd.req = r;
                cmd.n = k;
                cmd.off = 0;
                cmd.cnt = k;
                cmd.block = block;
                cmd.first = first + done;
                cmd.seq = 0;
                cmd.stalled = false;
                for i in 0..k as usize {
                    cmd.data[i] = zero_iova;
                    cmd.staging[i] = NO_STAGE;
                }
            }
            for i in 0..k as usize {
                // SAFETY: our OOB slot, not yet handed to the card.
                unsafe { std::ptr::copy_nonoverlapping(raw.as_ptr(), self.oob_ptr(c, i), n.min(self.oob_size)) };
            }
            if self.submit_program(c).is_ok() {
                self.reqs[r as usize].pending += 1;
            } else {
                self.release_cmd(c);
            }
            done += k;
        }
    }

    // ---- trims ---------------------------------------------------------

    /// Unmaps `count` sectors from `lba`: they read as zeros from now on,
    /// and stay so across power loss once the request completed.
    pub fn unmap(&mut self, lba: u64, count: u64, ctx: u64) -> Result<(), SubmitError> {
        self.writes_allowed()?;
        self.check_range(lba, count)?;
        if !self.have_room(2, 1) {
            return Err(SubmitError::QueueFull);
        }
        let floor = self.floor();
        self.ring
            .ensure_room(&self.vsl.blocks, 1, floor)
            .map_err(|e| self.room_error(e))?;
        let Some(ext) = self.ring.take(1) else {
            return Err(SubmitError::Busy);
        };
        let seq = self.vsl.next_seq();
        let r = self.alloc_req(ctx, ReqKind::Trim);
        self.reqs[r as usize].lba = lba;
        self.reqs[r as usize].count = count;
        let c = self.cmd_free.pop().unwrap_or(0) as usize;
        let s = self.staging_free.pop().unwrap_or(0);
        let dst = self.stage_ptr(s);
        // Ranges of at most u32::MAX sectors; LBAs fit in u32 (Layout checks).
        let mut ranges = [TrimRange { lba: 0, count: 0 }; 4];
        let mut n = 0;
        let mut at = lba;
        let end = lba + count;
        while at < end && n < ranges.len() {
            let k = (end - at).min(u32::MAX as u64);
            ranges[n] = TrimRange {
                lba: at as u32,
                count: k as u32,
            };
            n += 1;
            at += k;
        }
        {
            self.page_buf.fill(0);
            encode_trim_ranges(&ranges[..n], &mut self.page_buf);
            // SAFETY: staging page `s` is ours; page_buf is host memory.
            unsafe { std::ptr::copy_nonoverlapping(self.page_buf.as_ptr(), dst, self.page_size) };
        }
        let mut rec = OobRecord::new(PageKind::Trim, seq);
        rec.count = n as u16;
        let crc = rec.data_crc(&self.page_buf);
        let mut raw = [0u8; 128];
        let on = self.oob_size.min(raw.len()).max(OOB_RECORD_LEN);
        rec.encode_with_crc(crc, &mut raw[..on]);
        // SAFETY: our OOB slot, not yet handed to the card.
        unsafe { std::ptr::copy_nonoverlapping(raw.as_ptr(), self.oob_ptr(c, 0), on.min(self.oob_size)) };
        {
            let cmd = &mut self.cmds[c];
            cmd.kind = CmdKind::Note;
            cmd.req = r;
            cmd.n = 1;
            cmd.off = 0;
            cmd.cnt = 1;
            cmd.block = ext.block;
            cmd.first = ext.first;
            cmd.seq = seq;
            cmd.stalled = false;
            cmd.data[0] = self.staging.iova() + (s as usize * self.page_size) as u64;
            cmd.staging[0] = s;
        }
        if self.submit_program(c).is_ok() {
            self.reqs[r as usize].pending += 1;
        } else {
            self.release_cmd(c);
            self.reqs[r as usize].error = Some(IoError::Media {
                lba,
                status: CardStatus::Internal,
            });
            let _ = self.ready.push(r);
        }
        Ok(())
    }

    /// Same as [`Self::unmap`]: unmapped sectors read as zeros.
    pub fn write_zeroes(&mut self, lba: u64, count: u64, ctx: u64) -> Result<(), SubmitError> {
        self.unmap(lba, count, ctx)
    }

    // ---- flush -----------------------------------------------------------

    /// Completes once every write acknowledged before it is durable.
    pub fn flush(&mut self, ctx: u64) -> Result<(), SubmitError> {
        if self.vsl.is_offline() {
            return Err(SubmitError::Offline);
        }
        if self.req_free.is_empty() || self.cur_epoch - self.oldest_epoch >= EPOCHS as u64 - 1 {
            return Err(SubmitError::QueueFull);
        }
        let r = self.alloc_req(ctx, ReqKind::Flush);
        self.reqs[r as usize].epoch = self.cur_epoch;
        self.cur_epoch += 1;
        let _ = self.flush_wait.push(r);
        Ok(())
    }

    // ---- reads -----------------------------------------------------------

    /// Reads sectors from `lba` into `data`. Never-written and unmapped
    /// sectors read as zeros.
    pub fn read(&mut self, lba: u64, data: &[IoVec], ctx: u64) -> Result<(), SubmitError> {
        if self.vsl.is_offline() {
            return Err(SubmitError::Offline);
        }
        let count = self.check_buffers(lba, data)?;
        if self.req_free.is_empty() {
            return Err(SubmitError::QueueFull);
        }
        let ss = self.sector_size;
        self.runs.clear();
        let vsl = self.vsl.clone();
        let layout = self.layout;
        let mut vi = 0usize;
        let mut voff = 0usize;
        let mut data_runs = 0usize;
        let mut staged = 0usize;
        for s in 0..count {
            while voff >= data[vi].len() {
                vi += 1;
                voff = 0;
            }
            let v = data[vi];
            let dst = v.ptr() as usize + voff;
            let dst_iova = v.iova() + voff as u64;
            voff += ss;
            let l = lba + s;
            let phys = loop {
                let phys = vsl.map.get(l);
                if phys == UNMAPPED || vsl.is_trim(phys) {
                    break UNMAPPED;
                }
                let b = layout.block_of(phys);
                vsl.blocks.get(b).readers.fetch_add(1, Ordering::SeqCst);
                if vsl.map.get(l) == phys {
                    break phys;
                }
                vsl.blocks.get(b).readers.fetch_sub(1, Ordering::SeqCst);
            };
            let zero = phys == UNMAPPED;
            let page = if zero { u32::MAX } else { layout.page_of(phys) };
            let slot = if zero { 0 } else { layout.slot_of(phys) as u8 };
            if let Some(last) = self.runs.last_mut() {
                let contiguous_dst = last.dst + last.nslots as usize * ss == dst;
                if contiguous_dst
                    && last.zero == zero
                    && (zero || (last.page == page && last.slot as u32 + last.nslots as u32 == slot as u32))
                    && (last.nslots as u32) < u8::MAX as u32
                {
                    last.nslots += 1;
                    continue;
                }
            }
            let zero_copy = !zero && self.spp == 1 && dst_iova.is_multiple_of(self.page_size as u64);
            if !zero {
                data_runs += 1;
                if !zero_copy {
                    staged += 1;
                }
            }
            self.runs.push(Run {
                lba: l,
                dst,
                dst_iova: if zero_copy { dst_iova } else { 0 },
                page,
                slot,
                nslots: 1,
                zero,
            });
        }
        let cmds = data_runs.div_ceil(CMD_PAGES);
        if !self.have_room(cmds, staged) {
            for run in self.runs.iter().filter(|r| !r.zero) {
                vsl.blocks
                    .get(layout.block_of_page(run.page))
                    .readers
                    .fetch_sub(run.nslots as u32, Ordering::SeqCst);
            }
            return Err(SubmitError::QueueFull);
        }
        let r = self.alloc_req(ctx, ReqKind::Read);
        self.reqs[r as usize].lba = lba;
        self.reqs[r as usize].count = count;
        let mut c = usize::MAX;
        let mut n = 0usize;
        let mut ppas = [Ppa::new(0, 0, 0); CMD_PAGES];
        for ri in 0..self.runs.len() {
            let run = self.runs[ri];
            if run.zero {
                // SAFETY: the caller promised `nslots * ss` writable bytes at
                // `dst` for this read.
                unsafe { std::ptr::write_bytes(run.dst as *mut u8, 0, run.nslots as usize * ss) };
                continue;
            }
            if c == usize::MAX {
                c = self.cmd_free.pop().unwrap_or(0) as usize;
                let cmd = &mut self.cmds[c];
                cmd.kind = CmdKind::Read;
                cmd.req = r;
                cmd.n = 0;
                cmd.stalled = false;
                n = 0;
            }
            let (iova, stage) = if run.dst_iova != 0 {
                (run.dst_iova, NO_STAGE)
            } else {
                let s = self.staging_free.pop().unwrap_or(0);
                (self.stage_iova(s), s)
            };
            ppas[n] = layout.ppa(run.page);
            let cmd = &mut self.cmds[c];
            cmd.data[n] = iova;
            cmd.staging[n] = stage;
            cmd.runs[n] = run;
            n += 1;
            cmd.n = n as u32;
            if n == CMD_PAGES {
                self.submit_read(c, &ppas[..n], r);
                c = usize::MAX;
            }
        }
        if c != usize::MAX {
            self.submit_read(c, &ppas[..n], r);
        }
        if self.reqs[r as usize].pending == 0 {
            let _ = self.ready.push(r);
        }
        Ok(())
    }

    fn submit_read(&mut self, c: usize, ppas: &[Ppa], r: u16) {
        let data = self.cmds[c].data;
        let res = self.q.read(ppas, &data[..ppas.len()], Some(self.oob_iova(c, 0)), c as u64);
        if res.is_ok() {
            self.reqs[r as usize].pending += 1;
        } else {
            self.fail_read_cmd(c, IoError::Media {
                lba: self.cmds[c].runs[0].lba,
                status: CardStatus::Internal,
            });
        }
    }

    fn fail_read_cmd(&mut self, c: usize, e: IoError) {
        let r = self.cmds[c].req as usize;
        self.reqs[r].error.get_or_insert(e);
        self.release_cmd(c);
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
        if self.cmds[c].kind == CmdKind::Read {
            for i in 0..n {
                let run = self.cmds[c].runs[i];
                self.vsl
                    .blocks
                    .get(self.layout.block_of_page(run.page))
                    .readers
                    .fetch_sub(run.nslots as u32, Ordering::SeqCst);
            }
        }
        self.cmds[c].n = 0;
        self.cmd_free.push(c as u16);
    }

    // ---- completion ------------------------------------------------------

    /// Rings the doorbell for everything submitted, reaps completions,
    /// completes requests through `f(ctx, result)`, and runs groomer work.
    /// Returns the number of requests completed.
    pub fn poll(&mut self, f: &mut dyn FnMut(u64, Result<(), IoError>)) -> usize {
        let mut done = 0;
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
        self.q.ring();
        if self.vsl.needs_grooming() {
            self.vsl.groom();
        }
        done
    }

    fn on_completion(&mut self, comp: Completion, f: &mut dyn FnMut(u64, Result<(), IoError>)) -> usize {
        let c = comp.tag as usize;
        if c >= self.cmds.len() {
            return 0;
        }
        if comp.status == CardStatus::PowerCut {
            self.vsl.mark_power_lost();
        }
        match self.cmds[c].kind {
            CmdKind::Read => self.on_read(c, comp, f),
            CmdKind::Flush => {
                let r = self.cmds[c].req;
                if !comp.status.is_ok() {
                    let e = if comp.status == CardStatus::PowerCut {
                        IoError::PowerLost
                    } else {
                        IoError::Media {
                            lba: 0,
                            status: comp.status,
                        }
                    };
                    self.reqs[r as usize].error.get_or_insert(e);
                }
                self.release_cmd(c);
                self.cmd_done(r, f)
            }
            _ => self.on_program(c, comp, f),
        }
    }

    /// Installs program pages `[from, to)` of command `c` (already on flash).
    fn install_pages(&mut self, c: usize, from: u32, to: u32, block: u32, first: u32) {
        let cmd_kind = self.cmds[c].kind;
        let base = self.layout.first_page(block) + first;
        let mut raw = [0u8; OOB_RECORD_LEN];
        for i in from..to {
            let page = base + (i - from);
            if cmd_kind == CmdKind::Write || cmd_kind == CmdKind::Atomic {
                // SAFETY: our OOB slot; the card finished reading it.
                unsafe { std::ptr::copy_nonoverlapping(self.oob_ptr(c, i as usize), raw.as_mut_ptr(), OOB_RECORD_LEN) };
                if let Some(d) = OobRecord::decode(&raw) {
                    for (slot, &l) in d.record.lbas.iter().enumerate().take(d.record.count as usize) {
                        if l != NO_LBA {
                            self.vsl.install_data(l as u64, self.layout.phys(page, slot as u32));
                        }
                    }
                }
            }
        }
        if to > from {
            match cmd_kind {
                CmdKind::Write | CmdKind::Atomic => {
                    self.vsl.ctr.user_pages.fetch_add((to - from) as u64, Ordering::Relaxed);
                }
                CmdKind::Pad => {
                    self.vsl.ctr.pad_pages.fetch_add((to - from) as u64, Ordering::Relaxed);
                }
                _ => {}
            }
        }
    }

    fn on_program(&mut self, c: usize, comp: Completion, f: &mut dyn FnMut(u64, Result<(), IoError>)) -> usize {
        let (kind, r, off, cnt, block, first, seq, n) = {
            let cmd = &self.cmds[c];
            (cmd.kind, cmd.req, cmd.off, cmd.cnt, cmd.block, cmd.first, cmd.seq, cmd.n)
        };
        let ok_pages = if comp.status.is_ok() {
            cnt
        } else if comp.failed_mask == 0 {
            0
        } else {
            comp.failed_mask.trailing_zeros().min(cnt)
        };
        // Pages that made it: install (atomic groups wait for all members).
        if kind == CmdKind::Note {
            if ok_pages == 1 {
                let page = self.layout.first_page(block) + first;
                let note = self.layout.phys(page, 0);
                self.vsl.trim_pages.set(page, true);
                // Pin the note so the groomer keeps it until installed.
                self.vsl.blocks.get(block).note_refs.fetch_add(1, Ordering::AcqRel);
                self.vsl.note_programmed(block, 1, seq);
                self.vsl.ctr.note_pages.fetch_add(1, Ordering::Relaxed);
                self.reqs[r as usize].note = note;
            }
        } else if kind == CmdKind::Atomic {
            if ok_pages == cnt {
                self.install_pages(c, off, off + cnt, block, first);
                self.vsl.note_programmed(block, cnt, seq);
            } else if ok_pages > 0 {
                // Members that landed in the failed block are orphans there.
                self.vsl.note_programmed(block, ok_pages, seq);
            }
        } else {
            self.install_pages(c, off, off + ok_pages, block, first);
            if ok_pages > 0 {
                self.vsl.note_programmed(block, ok_pages, seq);
            }
        }
        if ok_pages == cnt {
            let next = off + cnt;
            if next < n && kind != CmdKind::Atomic {
                self.cmds[c].off = next;
                self.cmds[c].cnt = 0;
                return self.continue_program(c, f);
            }
            return self.finish_program(c, f);
        }
        // Failure.
        match comp.status {
            CardStatus::PowerCut => {
                self.reqs[r as usize].error.get_or_insert(IoError::PowerLost);
                self.release_cmd(c);
                self.cmd_done(r, f)
            }
            CardStatus::ProgramFailed
            | CardStatus::BadBlock
            | CardStatus::DieFailed
            | CardStatus::ProgramOrder
            | CardStatus::NotErased => {
                if comp.status == CardStatus::ProgramFailed {
                    self.vsl.ctr.program_failures.fetch_add(1, Ordering::Relaxed);
                }
                self.ring.drop_block(block);
                self.vsl.retire_block(block);
                if kind == CmdKind::Pad {
                    // Padding only closed the block; it is retired anyway.
                    self.release_cmd(c);
                    return self.cmd_done(r, f);
                }
                if kind == CmdKind::Atomic {
                    self.cmds[c].off = 0;
                } else {
                    self.cmds[c].off = off + ok_pages;
                }
                self.cmds[c].cnt = 0;
                self.continue_program(c, f)
            }
            status => {
                let lba = self.reqs[r as usize].lba;
                self.reqs[r as usize].error.get_or_insert(IoError::Media { lba, status });
                self.release_cmd(c);
                self.cmd_done(r, f)
            }
        }
    }

    /// Places the unplaced pages `[off, n)` of program command `c` in new
    /// blocks (after a failure or a split). Parks the command when no space
    /// is free; it is retried on later polls.
    fn continue_program(&mut self, c: usize, f: &mut dyn FnMut(u64, Result<(), IoError>)) -> usize {
        let (kind, off, n) = (self.cmds[c].kind, self.cmds[c].off, self.cmds[c].n);
        let left = n - off;
        // Take an extent only when it can be submitted at once: pages of a
        // block must reach the card in order.
        let pad_cmds = if kind == CmdKind::Atomic {
            (self.layout.pages_per_block() as usize).div_ceil(CMD_PAGES)
        } else {
            0
        };
        if self.q.free_slots() <= pad_cmds || self.cmd_free.len() < pad_cmds {
            self.cmds[c].cnt = 0;
            self.cmds[c].stalled = true;
            let _ = self.stalled.push(c as u16);
            return 0;
        }
        let ext = if kind == CmdKind::Atomic {
            match self.ring.take_contiguous(&self.vsl.blocks, left, 0) {
                Ok((pad, e)) => {
                    if let Some(p) = pad {
                        let r = self.cmds[c].req;
                        self.submit_pad(r, p.block, p.first, p.count);
                    }
                    Some(e)
                }
                Err(_) => None,
            }
        } else if self.ring.ensure_room(&self.vsl.blocks, 1, 0).is_ok() {
            self.ring.take(left)
        } else {
            None
        };
        let Some(ext) = ext else {
            if self.vsl.is_read_only() || self.vsl.is_offline() {
                let r = self.cmds[c].req;
                let e = if self.vsl.is_offline() { IoError::PowerLost } else { IoError::ReadOnly };
                self.reqs[r as usize].error.get_or_insert(e);
                self.release_cmd(c);
                return self.cmd_done(r, f);
            }
            self.cmds[c].stalled = true;
            let _ = self.stalled.push(c as u16);
            self.vsl.gc_active.store(true, Ordering::Release);
            return 0;
        };
        {
            let cmd = &mut self.cmds[c];
            cmd.block = ext.block;
            cmd.first = ext.first;
            cmd.cnt = ext.count;
            cmd.stalled = false;
        }
        if self.submit_program(c).is_err() {
            self.cmds[c].stalled = true;
            let _ = self.stalled.push(c as u16);
        }
        0
    }

    fn retry_stalled(&mut self, f: &mut dyn FnMut(u64, Result<(), IoError>)) -> usize {
        let mut done = 0;
        for _ in 0..self.stalled.len() {
            let Some(c) = self.stalled.pop() else { break };
            let c = c as usize;
            if self.cmds[c].stalled {
                if self.cmds[c].cnt > 0 && self.q.free_slots() > 0 {
                    // Extent already taken, queue was full: resubmit.
                    if self.submit_program(c).is_ok() {
                        self.cmds[c].stalled = false;
                    } else {
                        let _ = self.stalled.push(c as u16);
                    }
                } else {
                    done += self.continue_program(c, f);
                }
            }
        }
        done
    }

    fn finish_program(&mut self, c: usize, f: &mut dyn FnMut(u64, Result<(), IoError>)) -> usize {
        let r = self.cmds[c].req;
        let kind = self.cmds[c].kind;
        self.release_cmd(c);
        if kind == CmdKind::Note {
            if !self.vsl.plp && self.cmd_free.last().is_some() && self.q.free_slots() > 0 {
                // Make the note durable before any LBA points at it.
                let fc = self.cmd_free.pop().unwrap_or(0) as usize;
                self.cmds[fc].kind = CmdKind::Flush;
                self.cmds[fc].req = r;
                self.cmds[fc].n = 0;
                if self.q.flush(fc as u64).is_ok() {
                    self.reqs[r as usize].queued_flush = true;
                    return 0;
                }
                self.cmd_free.push(fc as u16);
            }
            if !self.vsl.plp && !self.reqs[r as usize].queued_flush {
                // No slot for the flush now: the flush path issues it later.
                let req = &mut self.reqs[r as usize];
                req.queued_flush = true;
                req.pending = req.pending.saturating_sub(1);
                let _ = self.flush_wait.push(r);
                return 0;
            }
        }
        self.cmd_done(r, f)
    }

    fn on_read(&mut self, c: usize, comp: Completion, f: &mut dyn FnMut(u64, Result<(), IoError>)) -> usize {
        let r = self.cmds[c].req;
        let n = self.cmds[c].n as usize;
        let ss = self.sector_size;
        if comp.corrected_bits > 0 {
            self.vsl.ctr.ecc_corrected_bits.fetch_add(comp.corrected_bits as u64, Ordering::Relaxed);
            self.vsl.ctr.ecc_corrected_reads.fetch_add(1, Ordering::Relaxed);
        }
        let mut raw = [0u8; OOB_RECORD_LEN];
        for i in 0..n {
            let run = self.cmds[c].runs[i];
            if comp.status == CardStatus::PowerCut {
                self.reqs[r as usize].error.get_or_insert(IoError::PowerLost);
                break;
            }
            if comp.failed_mask & (1 << i) != 0 || (!comp.status.is_ok() && comp.failed_mask == 0) {
                let e = if comp.status == CardStatus::Uncorrectable {
                    self.vsl.ctr.uncorrectable_reads.fetch_add(1, Ordering::Relaxed);
                    IoError::Uncorrectable { lba: run.lba }
                } else {
                    IoError::Media {
                        lba: run.lba,
                        status: comp.status,
                    }
                };
                self.reqs[r as usize].error.get_or_insert(e);
                continue;
            }
            let stage = self.cmds[c].staging[i];
            let page_ptr = if stage == NO_STAGE {
                run.dst as *const u8
            } else {
                self.stage_ptr(stage) as *const u8
            };
            // SAFETY: the read completed, so the card no longer writes the
            // page (staging page or the caller's zero-copy buffer, which is
            // page_size long there); the OOB slot is ours.
            let (page, ok) = unsafe {
                std::ptr::copy_nonoverlapping(self.oob_ptr(c, i), raw.as_mut_ptr(), OOB_RECORD_LEN);
                let page = std::slice::from_raw_parts(page_ptr, self.page_size);
                let ok = match OobRecord::decode(&raw) {
                    Some(d) => {
                        d.record.kind == PageKind::Data
                            && (0..run.nslots as usize)
                                .all(|k| d.record.lbas[run.slot as usize + k] as u64 == run.lba + k as u64)
                            && d.data_matches(page)
                    }
                    None => false,
                };
                (page.as_ptr(), ok)
            };
            if !ok {
                self.vsl.ctr.checksum_errors.fetch_add(1, Ordering::Relaxed);
                self.reqs[r as usize].error.get_or_insert(IoError::Corrupt { lba: run.lba });
                continue;
            }
            if stage != NO_STAGE {
                // SAFETY: source is our staging page; destination is the
                // caller's buffer promised writable for this read.
                unsafe {
                    std::ptr::copy_nonoverlapping(
                        page.add(run.slot as usize * ss),
                        run.dst as *mut u8,
                        run.nslots as usize * ss,
                    )
                };
            }
        }
        self.release_cmd(c);
        self.cmd_done(r, f)
    }

    /// One command of request `r` finished.
    fn cmd_done(&mut self, r: u16, f: &mut dyn FnMut(u64, Result<(), IoError>)) -> usize {
        let req = &mut self.reqs[r as usize];
        req.pending = req.pending.saturating_sub(1);
        if req.pending > 0 {
            return 0;
        }
        self.finish(r, f)
    }

    /// Completes request `r`: map work for trims, counters, callback.
    fn finish(&mut self, r: u16, f: &mut dyn FnMut(u64, Result<(), IoError>)) -> usize {
        let req = self.reqs[r as usize];
        if req.pending > 0 {
            return 0;
        }
        let vsl = self.vsl.clone();
        match req.kind {
            ReqKind::Trim => {
                if req.note != UNMAPPED {
                    if req.error.is_none() {
                        for l in req.lba..req.lba + req.count {
                            vsl.install_trim(l, req.note);
                        }
                        vsl.ctr.trims.fetch_add(1, Ordering::Relaxed);
                        vsl.ctr.trimmed_sectors.fetch_add(req.count, Ordering::Relaxed);
                    }
                    // Unpin (see on_program).
                    vsl.blocks.get(self.layout.block_of(req.note)).note_refs.fetch_sub(1, Ordering::AcqRel);
                }
            }
            ReqKind::Write | ReqKind::Atomic => {
                let idx = (req.epoch % EPOCHS as u64) as usize;
                self.epochs[idx] = self.epochs[idx].saturating_sub(1);
                if req.error.is_none() {
                    vsl.ctr.user_sectors_written.fetch_add(req.count, Ordering::Relaxed);
                    if req.kind == ReqKind::Atomic {
                        vsl.ctr.atomic_writes.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            ReqKind::Read => {
                if req.error.is_none() {
                    vsl.ctr.user_sectors_read.fetch_add(req.count, Ordering::Relaxed);
                }
            }
            ReqKind::Flush => {
                if req.error.is_none() {
                    vsl.ctr.flushes.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        self.req_free.push(r);
        self.outstanding = self.outstanding.saturating_sub(1);
        f(req.ctx, req.error.map_or(Ok(()), Err));
        1
    }

    /// Starts card flushes for flush requests whose earlier writes are done.
    fn start_flushes(&mut self) {
        while self.oldest_epoch < self.cur_epoch && self.epochs[(self.oldest_epoch % EPOCHS as u64) as usize] == 0 {
            self.oldest_epoch += 1;
        }
        while let Some(r) = self.flush_wait.front() {
            let req = self.reqs[r as usize];
            let ready = req.kind == ReqKind::Trim || req.epoch < self.oldest_epoch;
            if !ready || self.cmd_free.is_empty() || self.q.free_slots() == 0 {
                break;
            }
            self.flush_wait.pop();
            let c = self.cmd_free.pop().unwrap_or(0) as usize;
            self.cmds[c].kind = CmdKind::Flush;
            self.cmds[c].req = r;
            self.cmds[c].n = 0;
            if self.q.flush(c as u64).is_ok() {
                self.reqs[r as usize].pending += 1;
            } else {
                // Slots were checked above; a refusal here is a bug.
                self.cmd_free.push(c as u16);
                self.reqs[r as usize].error.get_or_insert(IoError::Media {
                    lba: 0,
                    status: CardStatus::Internal,
                });
                let _ = self.ready.push(r);
            }
        }
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
        self.vsl.channels.fetch_sub(1, Ordering::AcqRel);
    }
}
