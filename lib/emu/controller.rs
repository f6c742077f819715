//! The emulated card's controller: the device side of the NVMe-style
//! register block and queues, and the raw-flash command set on top.
//!
//! It fetches submission entries from host memory, moves data by "DMA"
//! through the IOVA translation (so an address nobody mapped fails like an
//! IOMMU fault would), executes commands on the [`NandArray`], and posts
//! phase-tagged completions. It runs on the host thread that rings a
//! doorbell (as a trapped MMIO write would), so each queue pair's device
//! work happens on the thread that owns that queue pair.

use std::collections::BinaryHeap;
use std::cmp::Reverse;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use crossbeam_utils::CachePadded;
use parking_lot::Mutex;

use super::nand::{BlockState, NandArray, PageRead};
use super::timing::{DieClocks, NandOp, TimingProfile};
use super::{EmuError, NandError};
use crate::card::protocol::{
    log_page, opcode, BadBlockReason, BlockInfoEntry, BlockStateCode, CardStatus, HealthLog,
    IdentifyData, BLOCK_INFO_ENTRY_BYTES, MAX_PAGES_PER_COMMAND,
};
use crate::card::{Column, Ppa};
use crate::dma::{IovaSpace, IovaTranslate};
use crate::nvme::spec::*;
use crate::nvme::{DeviceNotify, Mmio};

/// BAR size: registers page plus doorbells for every queue.
const BAR_BYTES: usize = 16 * 1024;
/// Most I/O queue pairs the emulated controller offers.
pub const MAX_IO_QUEUES: u16 = 64;
/// Most entries per queue.
pub const MAX_QUEUE_ENTRIES: u32 = 4096;
/// CAP.DSTRD: doorbells 64 bytes apart, so each queue's doorbells sit on
/// cache lines of their own and threads ringing different queues do not
/// bounce one line between their cores (the host reads the stride from CAP).
const DSTRD: u8 = 4;
/// Doorbell stride in bytes.
const STRIDE: usize = 4 << DSTRD;
const _: () = assert!(REG_DOORBELL_BASE + (2 * MAX_IO_QUEUES as usize + 2) * STRIDE <= BAR_BYTES);

/// How an emulated controller behaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct EmuOptions {
    /// NAND timing model; `None` uses the one the card was created with.
    pub timing: Option<TimingProfile>,
}

/// The register page, aligned for 64-bit registers.
struct BarMemory {
    words: Box<[u64]>,
}

/// Device view of one submission queue.
#[derive(Debug, Clone, Copy)]
struct DeviceSq {
    base: u64,
    size: u32,
    head: u32,
    cqid: u16,
}

/// Device view of one completion queue, with completions that are not due
/// yet (timed NAND operations).
#[derive(Debug)]
struct DeviceCq {
    base: u64,
    size: u32,
    tail: u32,
    phase: bool,
    pending: BinaryHeap<Reverse<(u64, u64, [u32; 4])>>,
    sequence: u64,
}

/// Device-side state of an emulated ioMemory controller.
pub struct EmuController {
    nand: Arc<NandArray>,
    dma: Arc<IovaSpace>,
    options: EmuOptions,
    regs: Mmio,
    bar: Arc<BarMemory>,
    identify: IdentifyData,
    enabled: AtomicBool,
    /// Per queue id; padded so the queues of two threads share no line.
    sqs: Box<[CachePadded<Mutex<Option<DeviceSq>>>]>,
    cqs: Box<[CachePadded<Mutex<Option<DeviceCq>>>]>,
    clocks: DieClocks,
    started: Instant,
    /// I/O commands executed while a power cut was armed (`cut_at` set).
    commands: AtomicU64,
    /// Per submission queue, I/O commands executed while no cut was armed;
    /// written only under that queue's lock, so no line is shared.
    queue_commands: Box<[CachePadded<AtomicU64>]>,
    /// Value of `commands` after which power is cut; `u64::MAX`: no cut.
    cut_at: AtomicU64,
    powered_off: AtomicBool,
    temperature_max_mc: AtomicI32,
}

impl std::fmt::Debug for EmuController {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmuController")
            .field("options", &self.options)
            .field("commands", &self.commands_processed())
            .field("powered_off", &self.powered_off.load(Ordering::Relaxed))
            .finish()
    }
}

impl EmuController {
    /// Builds a controller over `nand` whose DMA is checked against `dma`.
    pub fn new(
        nand: Arc<NandArray>,
        dma: Arc<IovaSpace>,
        options: EmuOptions,
    ) -> Result<Arc<Self>, EmuError> {
        if !nand.is_powered() {
            return Err(EmuError::InvalidConfig(
                "the NAND array is powered off (after a power cut): call power_on() before opening the card".into(),
            ));
        }
        let config = nand.config();
        let geometry = config.geometry;
        let timing = options.timing.unwrap_or(config.timing);
        let bar = Arc::new(BarMemory {
            words: vec![0u64; BAR_BYTES / 8].into_boxed_slice(),
        });
        let base = NonNull::new(bar.words.as_ptr() as *mut u8)
            .ok_or_else(|| EmuError::InvalidConfig("BAR allocation failed".into()))?;
        // SAFETY: `bar.words` is a live, 8-byte aligned allocation of
        // BAR_BYTES that the Arc passed as owner keeps alive; it is only
        // accessed through volatile u32/u64 operations.
        let regs = unsafe { Mmio::new(base, BAR_BYTES, None, Some(bar.clone())) };
        regs.store64(REG_CAP, Capabilities::build(MAX_QUEUE_ENTRIES, 20, DSTRD).0);
        regs.store32(REG_VS, 0x0001_0400); // NVMe 1.4 register layout
        let identify = IdentifyData {
            identity: config.identity.clone(),
            geometry,
            max_pages_per_command: MAX_PAGES_PER_COMMAND as u32,
            max_queue_entries: MAX_QUEUE_ENTRIES,
            max_io_queues: MAX_IO_QUEUES as u32,
            sector_sizes: vec![512, 4096],
            timing_profile: timing.name().into(),
        };
        let queues = MAX_IO_QUEUES as usize + 1;
        Ok(Arc::new(Self {
            clocks: DieClocks::new(timing, geometry.dies()),
            nand,
            dma,
            options,
            regs,
            bar,
            identify,
            enabled: AtomicBool::new(false),
            sqs: (0..queues).map(|_| CachePadded::new(Mutex::new(None))).collect(),
            cqs: (0..queues).map(|_| CachePadded::new(Mutex::new(None))).collect(),
            started: Instant::now(),
            commands: AtomicU64::new(0),
            queue_commands: (0..queues).map(|_| CachePadded::new(AtomicU64::new(0))).collect(),
            cut_at: AtomicU64::new(u64::MAX),
            powered_off: AtomicBool::new(false),
            temperature_max_mc: AtomicI32::new(0),
        }))
    }

    /// The register region as the host driver sees it: stores are delivered
    /// to this controller.
    pub fn host_mmio(self: &Arc<Self>) -> Mmio {
        let base = NonNull::new(self.bar.words.as_ptr() as *mut u8)
            .unwrap_or(NonNull::dangling());
        let notify: Arc<dyn DeviceNotify> = self.clone();
        // SAFETY: as in `new`: the owner Arc keeps the aligned BAR memory
        // alive for as long as this handle exists.
        unsafe { Mmio::new(base, BAR_BYTES, Some(notify), Some(self.bar.clone())) }
    }

    /// The NAND array behind the controller.
    pub fn nand(&self) -> &Arc<NandArray> {
        &self.nand
    }

    /// The options it was built with.
    pub fn options(&self) -> EmuOptions {
        self.options
    }

    /// I/O commands processed so far.
    pub fn commands_processed(&self) -> u64 {
        let unarmed: u64 = self.queue_commands.iter().map(|c| c.load(Ordering::Relaxed)).sum();
        unarmed + self.commands.load(Ordering::Relaxed)
    }

    /// Cuts power when `n` more I/O commands have been processed: those `n`
    /// execute, everything after completes with a power-loss status and
    /// does nothing. `u64::MAX` calls an armed cut off. While a cut is
    /// armed, every queue counts on one shared counter, so the cut lands
    /// after exactly `n` commands whichever queues they came from.
    pub fn power_cut_after(&self, n: u64) {
        let now = self.commands.load(Ordering::Relaxed);
        self.cut_at.store(now.saturating_add(n), Ordering::Relaxed);
    }

    /// Cuts power now.
    pub fn power_cut_now(&self) {
        self.cut();
    }

    /// Whether power has been cut.
    pub fn is_powered_off(&self) -> bool {
        self.powered_off.load(Ordering::Acquire)
    }

    fn cut(&self) {
        if !self.powered_off.swap(true, Ordering::AcqRel) {
            self.nand.power_cut();
        }
    }

    /// Nanoseconds since the controller started, or 0 without a timing
    /// model: then every completion is due at once, and reading the clock
    /// (a `clock_gettime` per doorbell) would be pure overhead.
    fn now_ns(&self) -> u64 {
        if !self.clocks.enabled() {
            return 0;
        }
        self.started.elapsed().as_nanos() as u64
    }

    /// Translates a DMA address or reports the transfer error.
    #[inline]
    fn dma_ptr(&self, iova: u64, len: usize) -> Result<*mut u8, CardStatus> {
        self.dma
            .translate(iova, len)
            .map(|p| p.as_ptr())
            .ok_or(CardStatus::DataTransfer)
    }

    fn on_cc_write(&self) {
        let cc = self.regs.read32(REG_CC);
        let csts = self.regs.read32(REG_CSTS);
        if cc & CC_SHN_MASK != 0 && csts & CSTS_SHST_MASK != CSTS_SHST_COMPLETE {
            // Normal or abrupt shutdown: persist what the NAND holds.
            if !self.is_powered_off() {
                self.nand.flush();
                let _ = self.nand.sync();
            }
            self.regs
                .store32(REG_CSTS, (csts & !CSTS_SHST_MASK) | CSTS_SHST_COMPLETE);
            return;
        }
        let enable = cc & CC_ENABLE != 0;
        if enable && !self.enabled.load(Ordering::Acquire) {
            let aqa = self.regs.read32(REG_AQA);
            let sq_size = (aqa & 0xfff) + 1;
            let cq_size = ((aqa >> 16) & 0xfff) + 1;
            let asq = self.regs.read64(REG_ASQ);
            let acq = self.regs.read64(REG_ACQ);
            let iosqes = (cc >> 16) & 0xf;
            let iocqes = (cc >> 20) & 0xf;
            let valid = sq_size >= 2
                && cq_size >= 2
                && iosqes == 6
                && iocqes == 4
                && self.dma.translate(asq, sq_size as usize * 64).is_some()
                && self.dma.translate(acq, cq_size as usize * 16).is_some();
            if !valid {
                self.regs.store32(REG_CSTS, CSTS_FATAL);
                return;
            }
            *self.sqs[0].lock() = Some(DeviceSq {
                base: asq,
                size: sq_size,
                head: 0,
                cqid: 0,
            });
            *self.cqs[0].lock() = Some(DeviceCq::new(acq, cq_size));
            self.enabled.store(true, Ordering::Release);
            self.regs.store32(REG_CSTS, CSTS_READY);
        } else if !enable && self.enabled.load(Ordering::Acquire) {
            self.reset();
        } else if !enable {
            self.regs.store32(REG_CSTS, 0);
        }
    }

    /// Controller reset: every queue is gone, registers back to idle.
    fn reset(&self) {
        for q in self.sqs.iter() {
            *q.lock() = None;
        }
        for q in self.cqs.iter() {
            *q.lock() = None;
        }
        for qid in 0..=MAX_IO_QUEUES {
            self.regs.store32(sq_tail_doorbell(qid, STRIDE), 0);
            self.regs.store32(cq_head_doorbell(qid, STRIDE), 0);
        }
        self.enabled.store(false, Ordering::Release);
        self.regs.store32(REG_CSTS, 0);
    }

    /// Fetches and executes everything the host placed in submission queue
    /// `qid`, posting completions (now, or when due under timings).
    fn process_sq(&self, qid: u16) {
        let Some(sq_slot) = self.sqs.get(qid as usize) else { return };
        let mut sq_guard = sq_slot.lock();
        let Some(sq) = sq_guard.as_mut() else { return };
        let Some(cq_slot) = self.cqs.get(sq.cqid as usize) else { return };
        let mut cq_guard = cq_slot.lock();
        let Some(cq) = cq_guard.as_mut() else { return };
        let tail = self.regs.read32(sq_tail_doorbell(qid, STRIDE));
        if tail >= sq.size {
            // An invalid doorbell value: NVMe reports this as an
            // asynchronous error; we refuse to run off the ring.
            return;
        }
        let cq_head_db = cq_head_doorbell(sq.cqid, STRIDE);
        let now = self.now_ns();
        cq.post_due(&self.dma, now, self.regs.read32(cq_head_db));
        let mut started = false;
        while sq.head != tail {
            if cq.slots_free(self.regs.read32(cq_head_db)) == 0 {
                break; // host must reap first; resumed on its CQ doorbell
            }
            let Ok(entry_ptr) = self.dma_ptr(sq.base + sq.head as u64 * 64, 64) else {
                self.regs.store32(REG_CSTS, self.regs.read32(REG_CSTS) | CSTS_FATAL);
                return;
            };
            // SAFETY: the translation guarantees 64 readable bytes of
            // registered DMA memory; the host does not modify an entry
            // between ringing the doorbell and seeing its completion.
            let sqe = unsafe { entry_ptr.cast::<SubmissionEntry>().read_volatile() };
            sq.head = (sq.head + 1) % sq.size;
            if qid != 0 {
                // Keep PREFETCH_AHEAD commands' pages on their way from
                // memory (the first command of a burst starts them all).
                let first = if started { PREFETCH_AHEAD - 1 } else { 0 };
                started = true;
                for k in first..PREFETCH_AHEAD {
                    let e = (sq.head + k) % sq.size;
                    if (e + sq.size - sq.head) % sq.size >= (tail + sq.size - sq.head) % sq.size {
                        break;
                    }
                    self.prefetch_next(sq.base + e as u64 * 64);
                }
            }
            let (status, dw0, dw1, due) = if qid == 0 {
                let (status, dw0) = self.execute_admin(&sqe);
                (status, dw0, 0, now)
            } else {
                self.execute_io(qid, &sqe, now)
            };
            let cqe = [
                dw0,
                dw1,
                sq.head | ((qid as u32) << 16),
                sqe.cid() as u32 | ((status.to_field() as u32) << 16),
            ];
            cq.schedule(due, cqe);
            cq.post_due(&self.dma, now, self.regs.read32(cq_head_db));
        }
    }

    /// Starts loading the NAND page of the single-page read queued at
    /// `entry_iova` (the next one of the burst being executed), so its copy
    /// overlaps the current command's instead of waiting on memory after it.
    fn prefetch_next(&self, entry_iova: u64) {
        let Ok(entry_ptr) = self.dma_ptr(entry_iova, 64) else { return };
        // SAFETY: as for the entry being executed: 64 translated bytes of
        // the submission ring, not modified by the host until completion.
        let next = unsafe { entry_ptr.cast::<SubmissionEntry>().read_volatile() };
        if next.opcode() == opcode::VECTOR_READ && next.cdw12 & 0x3f == 0 {
            let page_size = self.identify.geometry.page_size as usize;
            if let Some((off, len)) = Column::from_wire(next.cdw13).byte_range(page_size) {
                self.nand.prefetch_page(Ppa::from_wire(next.cdw10_11()), off, len);
            }
        }
    }

    fn post_due(&self, cqid: u16) {
        let Some(slot) = self.cqs.get(cqid as usize) else { return };
        let mut guard = slot.lock();
        if let Some(cq) = guard.as_mut() {
            if !cq.pending.is_empty() {
                let head = self.regs.read32(cq_head_doorbell(cqid, STRIDE));
                cq.post_due(&self.dma, self.now_ns(), head);
            }
        }
    }

    fn execute_admin(&self, sqe: &SubmissionEntry) -> (Status, u32) {
        if self.is_powered_off() {
            return (generic::ABORTED_POWER_LOSS, 0);
        }
        match sqe.opcode() {
            admin_opcode::IDENTIFY => {
                if sqe.cdw10 & 0xff != CNS_CONTROLLER {
                    return (generic::INVALID_FIELD, 0);
                }
                let data = self.identify.encode();
                (self.write_host(sqe.prp1, &data), 0)
            }
            admin_opcode::GET_LOG_PAGE => self.get_log_page(sqe),
            admin_opcode::CREATE_IO_CQ => (self.create_cq(sqe), 0),
            admin_opcode::CREATE_IO_SQ => (self.create_sq(sqe), 0),
            admin_opcode::DELETE_IO_SQ => {
                let qid = (sqe.cdw10 & 0xffff) as usize;
                if qid == 0 || qid >= self.sqs.len() || self.sqs[qid].lock().take().is_none() {
                    return (command_specific::INVALID_QUEUE_ID, 0);
                }
                self.regs.store32(sq_tail_doorbell(qid as u16, STRIDE), 0);
                (generic::SUCCESS, 0)
            }
            admin_opcode::DELETE_IO_CQ => {
                let qid = (sqe.cdw10 & 0xffff) as usize;
                if qid == 0 || qid >= self.cqs.len() {
                    return (command_specific::INVALID_QUEUE_ID, 0);
                }
                let in_use = self
                    .sqs
                    .iter()
                    .skip(1)
                    .any(|s| s.lock().is_some_and(|s| s.cqid as usize == qid));
                if in_use {
                    // Spec: "Invalid Queue Deletion" (0x0C) when an SQ uses it.
                    return (Status::new(1, 0x0c), 0);
                }
                if self.cqs[qid].lock().take().is_none() {
                    return (command_specific::INVALID_QUEUE_ID, 0);
                }
                self.regs.store32(cq_head_doorbell(qid as u16, STRIDE), 0);
                (generic::SUCCESS, 0)
            }
            _ => (generic::INVALID_OPCODE, 0),
        }
    }

    fn create_cq(&self, sqe: &SubmissionEntry) -> Status {
        let qid = (sqe.cdw10 & 0xffff) as usize;
        let size = (sqe.cdw10 >> 16) + 1;
        if qid == 0 || qid > MAX_IO_QUEUES as usize {
            return command_specific::INVALID_QUEUE_ID;
        }
        if !(2..=MAX_QUEUE_ENTRIES).contains(&size) {
            return command_specific::INVALID_QUEUE_SIZE;
        }
        if sqe.cdw11 & 1 == 0 {
            return generic::INVALID_FIELD; // only contiguous queues (CAP.CQR)
        }
        if self.dma.translate(sqe.prp1, size as usize * 16).is_none() {
            return generic::DATA_TRANSFER_ERROR;
        }
        let mut slot = self.cqs[qid].lock();
        if slot.is_some() {
            return command_specific::INVALID_QUEUE_ID;
        }
        *slot = Some(DeviceCq::new(sqe.prp1, size));
        self.regs.store32(cq_head_doorbell(qid as u16, STRIDE), 0);
        generic::SUCCESS
    }

    fn create_sq(&self, sqe: &SubmissionEntry) -> Status {
        let qid = (sqe.cdw10 & 0xffff) as usize;
        let size = (sqe.cdw10 >> 16) + 1;
        let cqid = (sqe.cdw11 >> 16) as u16;
        if qid == 0 || qid > MAX_IO_QUEUES as usize {
            return command_specific::INVALID_QUEUE_ID;
        }
        if !(2..=MAX_QUEUE_ENTRIES).contains(&size) {
            return command_specific::INVALID_QUEUE_SIZE;
        }
        if sqe.cdw11 & 1 == 0 {
            return generic::INVALID_FIELD;
        }
        if cqid == 0 || self.cqs.get(cqid as usize).is_none_or(|c| c.lock().is_none()) {
            // "Completion Queue Invalid" (0x00 in SCT 1).
            return Status::new(1, 0x00);
        }
        if self.dma.translate(sqe.prp1, size as usize * 64).is_none() {
            return generic::DATA_TRANSFER_ERROR;
        }
        let mut slot = self.sqs[qid].lock();
        if slot.is_some() {
            return command_specific::INVALID_QUEUE_ID;
        }
        *slot = Some(DeviceSq {
            base: sqe.prp1,
            size,
            head: 0,
            cqid,
        });
        self.regs.store32(sq_tail_doorbell(qid as u16, STRIDE), 0);
        generic::SUCCESS
    }

    fn get_log_page(&self, sqe: &SubmissionEntry) -> (Status, u32) {
        let lid = (sqe.cdw10 & 0xff) as u8;
        let dwords = ((sqe.cdw10 >> 16) | ((sqe.cdw11 & 0xffff) << 16)) as usize + 1;
        let len = dwords * 4;
        let offset = sqe.cdw12 as u64 | ((sqe.cdw13 as u64) << 32);
        if len > 4096 {
            return (generic::INVALID_FIELD, 0);
        }
        match lid {
            log_page::HEALTH => {
                let raw = self.health_log().encode();
                let start = (offset as usize).min(raw.len());
                let end = (start + len).min(raw.len());
                let mut out = vec![0u8; len];
                out[..end - start].copy_from_slice(&raw[start..end]);
                (self.write_host(sqe.prp1, &out), 0)
            }
            log_page::BLOCK_INFO => {
                let g = self.identify.geometry;
                if offset % BLOCK_INFO_ENTRY_BYTES as u64 != 0 || len % BLOCK_INFO_ENTRY_BYTES != 0 {
                    return (generic::INVALID_FIELD, 0);
                }
                let first = offset / BLOCK_INFO_ENTRY_BYTES as u64;
                let count = (len / BLOCK_INFO_ENTRY_BYTES) as u64;
                if first + count > g.total_blocks() {
                    return (generic::INVALID_FIELD, 0);
                }
                let mut out = vec![0u8; len];
                for i in 0..count {
                    let linear = first + i;
                    let die = (linear / g.blocks_per_die as u64) as u32;
                    let block = (linear % g.blocks_per_die as u64) as u32;
                    let entry = match self.nand.block_info(die, block) {
                        Ok(info) => block_info_entry(&info),
                        Err(_) => return (generic::INTERNAL_ERROR, 0),
                    };
                    let at = i as usize * BLOCK_INFO_ENTRY_BYTES;
                    out[at..at + BLOCK_INFO_ENTRY_BYTES].copy_from_slice(&entry.encode());
                }
                (self.write_host(sqe.prp1, &out), 0)
            }
            _ => (command_specific::INVALID_LOG_PAGE, 0),
        }
    }

    /// Copies `data` to host memory at `iova` (admin data, at most a page).
    fn write_host(&self, iova: u64, data: &[u8]) -> Status {
        match self.dma_ptr(iova, data.len()) {
            Ok(ptr) => {
                // SAFETY: translation guarantees `data.len()` bytes of
                // registered DMA memory at `ptr`; it cannot overlap `data`,
                // which lives in this controller's own heap.
                unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), ptr, data.len()) };
                generic::SUCCESS
            }
            Err(_) => generic::DATA_TRANSFER_ERROR,
        }
    }

    /// The health log from NAND counters and the board's sensors.
    pub fn health_log(&self) -> HealthLog {
        let c = self.nand.counters();
        let g = self.identify.geometry;
        let (mut total_pe, mut max_pe, mut min_pe, mut good) = (0u64, 0u32, u32::MAX, 0u64);
        let mut failed_dies = 0u32;
        for die in 0..g.dies() {
            let mut die_ok = false;
            for block in 0..g.blocks_per_die {
                if let Ok(info) = self.nand.block_info(die, block) {
                    total_pe += info.pe_cycles as u64;
                    max_pe = max_pe.max(info.pe_cycles);
                    if info.state != BlockState::Bad {
                        good += 1;
                        die_ok = true;
                        min_pe = min_pe.min(info.pe_cycles);
                    }
                }
            }
            if !die_ok {
                failed_dies += 1;
            }
        }
        if min_pe == u32::MAX {
            min_pe = 0;
        }
        // Board sensors: a 45 °C idle card warming with recent activity,
        // with a small deterministic ripple; the ioDrive2 rails.
        let activity = (c.pages_programmed + c.pages_read) as f64;
        let seconds = self.started.elapsed().as_secs_f64().max(1.0);
        let load = (activity / seconds / 200_000.0).min(1.0);
        let ripple = ((self.nand.config().seed % 97) as i32) * 10;
        let temperature = 45_000 + (load * 19_000.0) as i32 + ripple;
        let max = self
            .temperature_max_mc
            .fetch_max(temperature, Ordering::Relaxed)
            .max(temperature);
        let pcie_ma = 600 + (load * 1_500.0) as u32;
        HealthLog {
            temperature_mc: temperature,
            temperature_max_mc: max,
            internal_mv_avg: 1_010,
            internal_mv_max: 1_018,
            aux_mv_avg: 2_489,
            aux_mv_max: 2_501,
            pcie_mv: 12_020,
            pcie_ma,
            pcie_mw: 12_020 * pcie_ma / 1_000,
            powerloss_protection: self.nand.powerloss_protection(),
            physical_bytes_written: c.bytes_written,
            physical_bytes_read: c.bytes_read,
            pages_programmed: c.pages_programmed,
            pages_read: c.pages_read,
            blocks_erased: c.blocks_erased,
            ecc_corrected_bits: c.ecc_corrected_bits,
            ecc_corrected_reads: c.ecc_corrected_reads,
            uncorrectable_reads: c.uncorrectable_reads,
            program_failures: c.program_failures,
            erase_failures: c.erase_failures,
            factory_bad_blocks: c.factory_bad_blocks,
            grown_bad_blocks: c.grown_bad_blocks,
            power_cycles: c.power_cycles,
            power_on_seconds: c.power_on_seconds,
            total_pe_cycles: total_pe,
            max_pe_cycles: max_pe,
            min_pe_cycles: min_pe,
            good_blocks: good,
            failed_dies,
        }
    }

    /// Executes one I/O command; returns status, dw0, dw1 and when the
    /// completion is due.
    fn execute_io(&self, qid: u16, sqe: &SubmissionEntry, now: u64) -> (Status, u32, u32, u64) {
        if self.is_powered_off() {
            return (generic::ABORTED_POWER_LOSS, 0, 0, now);
        }
        if !self.count_command(qid) {
            self.cut();
            return (generic::ABORTED_POWER_LOSS, 0, 0, now);
        }
        let result = match sqe.opcode() {
            opcode::FLUSH => {
                self.nand.flush();
                Ok((CardStatus::Success, 0, 0, now))
            }
            opcode::VECTOR_READ | opcode::VECTOR_PROGRAM | opcode::VECTOR_ERASE => {
                self.execute_vector(sqe, now)
            }
            _ => return (generic::INVALID_OPCODE, 0, 0, now),
        };
        match result {
            Ok((status, dw0, dw1, due)) => (status.to_status(), dw0, dw1, due),
            Err(status) => (status.to_status(), 0, 0, now),
        }
    }

    /// Counts an I/O command of submission queue `qid` (whose lock the
    /// caller holds); false if it is past an armed power cut. Without a
    /// cut armed the count stays in the queue's own line.
    #[inline]
    fn count_command(&self, qid: u16) -> bool {
        let cut_at = self.cut_at.load(Ordering::Relaxed);
        if cut_at == u64::MAX {
            if let Some(count) = self.queue_commands.get(qid as usize) {
                // Only this queue's lock holder writes it: no lost update.
                count.store(count.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
            }
            return true;
        }
        self.commands.fetch_add(1, Ordering::Relaxed) < cut_at
    }

    fn execute_vector(
        &self,
        sqe: &SubmissionEntry,
        now: u64,
    ) -> Result<(CardStatus, u32, u32, u64), CardStatus> {
        let geometry = self.identify.geometry;
        let n = (sqe.cdw12 & 0x3f) as usize + 1;
        let mut ppas = [Ppa::new(0, 0, 0); MAX_PAGES_PER_COMMAND];
        if n == 1 {
            ppas[0] = Ppa::from_wire(sqe.cdw10_11());
        } else {
            let list = self.dma_ptr(sqe.cdw10_11(), n * 8)?;
            for (i, ppa) in ppas.iter_mut().take(n).enumerate() {
                // SAFETY: `list` covers n*8 translated bytes; unaligned read
                // because the host may place the list anywhere.
                let raw = unsafe { list.add(i * 8).cast::<u64>().read_unaligned() };
                *ppa = Ppa::from_wire(u64::from_le(raw));
            }
        }
        let ppas = &ppas[..n];
        if ppas.iter().any(|p| !geometry.contains(*p)) {
            return Err(CardStatus::InvalidAddress);
        }
        let page_size = geometry.page_size as usize;
        let oob_size = geometry.oob_size as usize;
        let op = sqe.opcode();
        // The column of a read (dword 13, 0 = whole page; reserved, so 0,
        // on every other command), refused before anything is touched.
        let (col_off, col_len) = if sqe.cdw13 == 0 {
            (0, page_size)
        } else if op == opcode::VECTOR_READ && sqe.prp1 != 0 {
            Column::from_wire(sqe.cdw13).byte_range(page_size).ok_or(CardStatus::InvalidField)?
        } else {
            return Err(CardStatus::InvalidField);
        };
        // Data page addresses from PRP1/PRP2 (or the PRP list in PRP2).
        let needs_data = op == opcode::VECTOR_PROGRAM || (op == opcode::VECTOR_READ && sqe.prp1 != 0);
        let mut data = [0u64; MAX_PAGES_PER_COMMAND];
        if needs_data {
            data[0] = sqe.prp1;
            if n == 2 {
                data[1] = sqe.prp2;
            } else if n > 2 {
                let list = self.dma_ptr(sqe.prp2, (n - 1) * 8)?;
                for (i, d) in data.iter_mut().take(n).skip(1).enumerate() {
                    // SAFETY: `list` covers (n-1)*8 translated bytes.
                    let raw = unsafe { list.add(i * 8).cast::<u64>().read_unaligned() };
                    *d = u64::from_le(raw);
                }
            }
        }
        // Translate every buffer before touching NAND, so a bad address
        // fails the whole command and changes nothing.
        let mut data_ptrs = [std::ptr::null_mut::<u8>(); MAX_PAGES_PER_COMMAND];
        if needs_data {
            for i in 0..n {
                data_ptrs[i] = self.dma_ptr(data[i], col_len)?;
            }
        }
        let oob_base = if sqe.mptr != 0 && op != opcode::VECTOR_ERASE {
            Some(self.dma_ptr(sqe.mptr, n * oob_size)?)
        } else {
            None
        };
        if op == opcode::VECTOR_READ && !needs_data && oob_base.is_none() {
            return Err(CardStatus::InvalidField);
        }
        let oob_ptr = |i: usize| oob_base.map_or(std::ptr::null_mut(), |b| b.wrapping_add(i * oob_size));
        let mut worst = CardStatus::Success;
        let mut failed: u64 = 0;
        let mut corrected: u32 = 0;
        let mut due = now;
        match op {
            opcode::VECTOR_READ => {
                for i in 0..n {
                    // OOB-only reads still need somewhere to put page data
                    // the NAND reads; the array accepts a null data pointer.
                    // SAFETY: data_ptrs[i] (or null for OOB-only reads) and
                    // oob_ptr(i) were translated for col_len / oob_size
                    // bytes of registered DMA memory above.
                    let outcome = unsafe { self.nand.read_page_column(ppas[i], data_ptrs[i], col_off, col_len, oob_ptr(i)) };
                    let status = match outcome {
                        PageRead::Ok { corrected_bits } => {
                            corrected = corrected.saturating_add(corrected_bits);
                            if corrected_bits > 0 {
                                CardStatus::EccCorrected
                            } else {
                                CardStatus::Success
                            }
                        }
                        PageRead::Erased => CardStatus::Erased,
                        PageRead::Uncorrectable => CardStatus::Uncorrectable,
                        PageRead::Failed(e) => nand_status(&e),
                    };
                    if !status.is_ok() {
                        failed |= 1 << i;
                    }
                    if status.severity() > worst.severity() {
                        worst = status;
                    }
                    due = due.max(self.clocks.book(ppas[i].die, NandOp::Read, 1, now));
                }
            }
            opcode::VECTOR_PROGRAM => {
                for i in 0..n {
                    // SAFETY: as for reads: both pointers were translated
                    // for the full page and OOB sizes.
                    let outcome = unsafe { self.nand.program_page(ppas[i], data_ptrs[i], oob_ptr(i)) };
                    due = due.max(self.clocks.book(ppas[i].die, NandOp::Program, 1, now));
                    // Like OCSSD's per-address completion bits: a failed
                    // page does not stop the pages of other blocks (later
                    // pages of its own block fail on their own, the block
                    // being bad), so no block is left with a gap.
                    if let Err(e) = outcome {
                        let status = nand_status(&e);
                        failed |= 1 << i;
                        if status.severity() > worst.severity() {
                            worst = status;
                        }
                    }
                }
            }
            _ => {
                for (i, ppa) in ppas.iter().enumerate() {
                    due = due.max(self.clocks.book(ppa.die, NandOp::Erase, 1, now));
                    if let Err(e) = self.nand.erase_block(ppa.die, ppa.block) {
                        worst = nand_status(&e);
                        failed = mask_from(i, n);
                        break;
                    }
                }
            }
        }
        if worst.is_ok() {
            Ok((worst, corrected, 0, due))
        } else {
            Ok((worst, failed as u32, (failed >> 32) as u32, due))
        }
    }
}

fn mask_from(first: usize, n: usize) -> u64 {
    let all = if n >= 64 { u64::MAX } else { (1u64 << n) - 1 };
    all & !((1u64 << first) - 1)
}

fn nand_status(e: &NandError) -> CardStatus {
    match e {
        NandError::InvalidAddress(_) | NandError::InvalidBlock { .. } => CardStatus::InvalidAddress,
        NandError::ProgramOrder { .. } => CardStatus::ProgramOrder,
        NandError::NotErased(_) => CardStatus::NotErased,
        NandError::BadBlock { .. } => CardStatus::BadBlock,
        NandError::ProgramFailed(_) => CardStatus::ProgramFailed,
        NandError::EraseFailed { .. } => CardStatus::EraseFailed,
        NandError::DieFailed(_) => CardStatus::DieFailed,
        NandError::PowerCut => CardStatus::PowerCut,
        #[allow(unreachable_patterns)]
        _ => CardStatus::Internal,
    }
}

fn block_info_entry(info: &super::nand::BlockInfo) -> BlockInfoEntry {
    use super::nand::BadReason;
    BlockInfoEntry {
        state: match info.state {
            BlockState::Free => BlockStateCode::Free,
            BlockState::Open => BlockStateCode::Open,
            BlockState::Full => BlockStateCode::Full,
            BlockState::Bad => BlockStateCode::Bad,
        },
        bad_reason: info.bad_reason.map(|r| match r {
            BadReason::Factory => BadBlockReason::Factory,
            BadReason::EraseFailure => BadBlockReason::EraseFailure,
            BadReason::ProgramFailure => BadBlockReason::ProgramFailure,
            BadReason::DieFailure => BadBlockReason::DieFailure,
        }),
        write_pointer: info.write_pointer,
        pe_cycles: info.pe_cycles,
    }
}

impl DeviceCq {
    fn new(base: u64, size: u32) -> Self {
        Self {
            base,
            size,
            tail: 0,
            phase: true,
            pending: BinaryHeap::with_capacity(size as usize),
            sequence: 0,
        }
    }

    /// Free completion slots given the host's head doorbell, minus what is
    /// already promised to pending completions.
    fn slots_free(&self, host_head: u32) -> u32 {
        let used = (self.tail + self.size - host_head.min(self.size - 1)) % self.size;
        (self.size - 1 - used).saturating_sub(self.pending.len() as u32)
    }

    fn schedule(&mut self, due: u64, cqe: [u32; 4]) {
        self.sequence += 1;
        self.pending.push(Reverse((due, self.sequence, cqe)));
    }

    /// Writes every completion whose time has come, while the ring has room.
    fn post_due(&mut self, dma: &IovaSpace, now: u64, host_head: u32) {
        while let Some(Reverse((due, _, _))) = self.pending.peek() {
            if *due > now {
                break;
            }
            let used = (self.tail + self.size - host_head.min(self.size - 1)) % self.size;
            if used + 1 >= self.size {
                break;
            }
            let Some(Reverse((_, _, mut cqe))) = self.pending.pop() else { break };
            cqe[3] = (cqe[3] & !0x1_0000) | ((self.phase as u32) << 16);
            let Some(slot) = dma.translate(self.base + self.tail as u64 * 16, 16) else {
                return;
            };
            let words = slot.as_ptr().cast::<u32>();
            // SAFETY: the slot was translated for 16 bytes of the host's
            // completion ring (registered DMA memory, 16-byte aligned). The
            // status dword carrying the phase tag is written last, after a
            // release fence, so the host never sees a half-written entry.
            unsafe {
                words.write_volatile(cqe[0]);
                words.add(1).write_volatile(cqe[1]);
                words.add(2).write_volatile(cqe[2]);
                std::sync::atomic::fence(Ordering::Release);
                words.add(3).write_volatile(cqe[3]);
            }
            self.tail += 1;
            if self.tail == self.size {
                self.tail = 0;
                self.phase = !self.phase;
            }
        }
    }
}

/// Commands of a submission burst whose NAND pages are prefetched ahead of
/// the one executing.
const PREFETCH_AHEAD: u32 = 4;

impl DeviceNotify for EmuController {
    fn mmio_written(&self, offset: usize) {
        if offset == REG_CC {
            self.on_cc_write();
            return;
        }
        if offset < REG_DOORBELL_BASE || !self.enabled.load(Ordering::Acquire) {
            return;
        }
        let index = (offset - REG_DOORBELL_BASE) / STRIDE;
        let qid = (index / 2) as u16;
        if index % 2 == 0 {
            self.process_sq(qid);
        } else {
            // The host freed completion slots: post what waited for room,
            // and resume a submission queue that stalled on a full ring.
            self.post_due(qid);
            if qid == 0 {
                self.process_sq(0);
            } else if let Some(slot) = self.sqs.get(qid as usize) {
                let stalled = slot.lock().is_some_and(|sq| {
                    sq.head != self.regs.read32(sq_tail_doorbell(qid, STRIDE))
                });
                if stalled {
                    self.process_sq(qid);
                }
            }
        }
    }

    fn idle_poll(&self, qid: u16) {
        if self.clocks.enabled() {
            // I/O queue pairs share their id between SQ and CQ.
            self.post_due(qid);
        }
    }
}
