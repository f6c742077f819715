//! The attached VSL: shared state every channel and the groomer work on,
//! and the forward-map transitions they all go through.
//!
//! Invariants the transitions keep (each a single atomic map operation plus
//! counter updates that never let a block look emptier than it is):
//! - a block's `valid` counts the map entries pointing at its data sectors,
//!   `note_refs` the entries pointing at its trim notes;
//! - counts are raised *before* an entry is pointed at a block and lowered
//!   after it moved away, so the groomer never erases a referenced block;
//! - the current target of every LBA carries the highest version sequence
//!   of all its copies on flash, so recovery picks the same one.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use crossbeam_queue::ArrayQueue;
use parking_lot::Mutex;
use serde::Serialize;

use super::alloc::AppendPoint;
use super::blocks::{BlockState, BlockTable, BLOCK_RAM_BYTES};
use super::counters::Counters;
use super::groomer::Groomer;
use super::map::{ForwardMap, Layout, PageBits, UNMAPPED};
use super::meta::Superblock;
use super::metalog::MetaLog;
use super::options::AttachOptions;
use super::syncio::SlotIo;
use crate::card::Card;

/// One buffer of a request: host memory the card can reach by DMA.
///
/// Built with [`IoVec::new`] (unsafe: the caller vouches for the memory).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IoVec {
    ptr: *mut u8,
    iova: u64,
    len: usize,
}

// SAFETY: an IoVec is a plain description of DMA memory (address, IOVA,
// length); the creator of the IoVec promised in `IoVec::new` that the memory
// stays valid until the request completes, whichever thread handles it.
unsafe impl Send for IoVec {}
// SAFETY: as above; shared references only read the three fields.
unsafe impl Sync for IoVec {}

impl IoVec {
    /// Describes `len` bytes at host address `ptr`, which the card reaches
    /// at `iova`.
    ///
    /// # Safety
    /// `ptr..ptr+len` must be DMA memory registered with the card's
    /// [`crate::dma::IovaSpace`] at `iova`, valid until every request using
    /// this IoVec completed; the host must not access it while a read into
    /// it is in flight, nor change it while a write from it is in flight.
    pub unsafe fn new(ptr: *mut u8, iova: u64, len: usize) -> Self {
        Self { ptr, iova, len }
    }

    /// Describes `len` bytes of `region` at `offset` (`None` if out of range).
    ///
    /// # Safety
    /// As for [`IoVec::new`]: `region` must outlive every request using the
    /// IoVec and not be accessed while the card may be using it.
    pub unsafe fn from_region(region: &crate::dma::DmaRegion, offset: usize, len: usize) -> Option<Self> {
        if offset.checked_add(len)? > region.len() {
            return None;
        }
        Some(Self {
            ptr: region.ptr_at(offset)?,
            iova: region.iova_of(offset)?,
            len,
        })
    }

    /// Host address.
    pub fn ptr(&self) -> *mut u8 {
        self.ptr
    }

    /// Device address.
    pub fn iova(&self) -> u64 {
        self.iova
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the buffer is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// Derived tunables of one attach.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Tuning {
    /// Open blocks per channel.
    pub stripe: u32,
    /// Blocks only the groomer may take.
    pub gc_reserve: u32,
    /// Free blocks below which grooming starts.
    pub gc_low: u32,
    /// Free blocks at which grooming stops.
    pub gc_high: u32,
    /// P/E spread that triggers wear levelling.
    pub wear_spread: u32,
    /// Channels allowed at once.
    pub max_channels: usize,
    /// Largest atomic write in pages.
    pub max_atomic_pages: u32,
    /// Blocks the user capacity occupies when full.
    pub needed_blocks: u64,
    /// Spare blocks over the minimum the format started with.
    pub initial_reserve: u64,
}

/// How the last attach found the card.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum AttachKind {
    /// Freshly formatted: nothing to load.
    Fresh,
    /// Clean detach: the checkpoint was loaded.
    Clean,
    /// Crash or power loss: the card was scanned.
    Scan,
}

/// What attach did and how long it took.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct AttachReport {
    /// How state was rebuilt.
    pub kind: AttachKind,
    /// Wall time of the whole attach, milliseconds.
    pub millis: u64,
    /// Pages whose OOB was read (scan) or checkpoint pages read (clean).
    pub pages_read: u64,
    /// Pages discarded by the scan (torn, unreadable, bad checksum).
    pub pages_discarded: u64,
    /// Atomic groups discarded because members were missing.
    pub torn_atomic_groups: u64,
    /// Whether a clean checkpoint was unusable and a scan replaced it.
    pub checkpoint_fallback: bool,
}

/// The metadata log and the queue it is written through.
pub(crate) struct MetaState {
    pub log: MetaLog,
    pub io: SlotIo,
}

/// An attached VSL. Share it as `Arc<Vsl>`; open one [`super::VslChannel`]
/// per I/O thread.
pub struct Vsl {
    pub(crate) card: Arc<Card>,
    pub(crate) sb: Superblock,
    pub(crate) layout: Layout,
    pub(crate) map: ForwardMap,
    pub(crate) blocks: BlockTable,
    pub(crate) trim_pages: PageBits,
    pub(crate) seq: AtomicU64,
    pub(crate) ctr: Counters,
    pub(crate) opts: AttachOptions,
    pub(crate) plp: bool,
    pub(crate) tune: Tuning,
    pub(crate) read_only: AtomicBool,
    pub(crate) offline: AtomicBool,
    pub(crate) detached: AtomicBool,
    pub(crate) channels: AtomicUsize,
    pub(crate) channel_ids: AtomicUsize,
    pub(crate) orphans: ArrayQueue<AppendPoint>,
    /// One per channel: what the groomer waits on before an erase.
    pub(crate) read_gates: super::readgate::ReadGates,
    pub(crate) gc_active: AtomicBool,
    pub(crate) groomer: Mutex<Groomer>,
    pub(crate) meta: Mutex<MetaState>,
    pub(crate) report: AttachReport,
}

impl std::fmt::Debug for Vsl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vsl")
            .field("uuid", &self.sb.uuid_string())
            .field("sector_size", &self.sb.sector_size)
            .field("sectors", &self.sb.num_sectors)
            .finish()
    }
}

impl Vsl {
    /// Sector size in bytes.
    pub fn sector_size(&self) -> u32 {
        self.sb.sector_size
    }

    /// User capacity in sectors.
    pub fn num_sectors(&self) -> u64 {
        self.sb.num_sectors
    }

    /// Largest atomic write in sectors.
    pub fn max_atomic_sectors(&self) -> u32 {
        self.tune.max_atomic_pages * self.layout.sectors_per_page
    }

    /// The superblock of the format.
    pub fn superblock(&self) -> &Superblock {
        &self.sb
    }

    /// The card underneath.
    pub fn card(&self) -> &Arc<Card> {
        &self.card
    }

    /// Whether writes are refused because the reserve is exhausted.
    pub fn is_read_only(&self) -> bool {
        self.read_only.load(Ordering::Acquire)
    }

    /// Whether the card failed (power lost) or the VSL was detached.
    pub fn is_offline(&self) -> bool {
        self.offline.load(Ordering::Acquire)
    }

    /// How the attach went.
    pub fn attach_report(&self) -> AttachReport {
        self.report
    }

    /// Bytes of host RAM the VSL's tables use.
    pub fn ram_usage(&self) -> RamUsage {
        let map = self.map.ram_bytes();
        let blocks = self.blocks.len() as u64 * BLOCK_RAM_BYTES;
        let trim_bits = self.trim_pages.ram_bytes();
        RamUsage {
            total: map + blocks + trim_bits,
            forward_map: map,
            block_table: blocks,
            trim_bits,
        }
    }

    // ---- forward map transitions -------------------------------------

    /// Drops one reference to whatever `phys` is (data sector or trim note).
    #[inline]
    pub(crate) fn release(&self, phys: u32) {
        if phys == UNMAPPED {
            return;
        }
        let page = self.layout.page_of(phys);
        let m = self.blocks.get(self.layout.block_of_page(page));
        if self.trim_pages.get(page) {
            m.note_refs.fetch_sub(1, Ordering::AcqRel);
        } else {
            m.valid.fetch_sub(1, Ordering::AcqRel);
        }
    }

    /// Points `lba` at freshly written data sector `new` (a user write).
    #[inline]
    pub(crate) fn install_data(&self, lba: u64, new: u32) {
        self.blocks.get(self.layout.block_of(new)).valid.fetch_add(1, Ordering::AcqRel);
        let old = self.map.swap(lba, new);
        self.release(old);
    }

    /// Moves `lba` from data sector `old` to its relocated copy `new`, unless
    /// a newer write got there first.
    #[inline]
    pub(crate) fn relocate_data(&self, lba: u64, old: u32, new: u32) -> bool {
        let nb = self.blocks.get(self.layout.block_of(new));
        nb.valid.fetch_add(1, Ordering::AcqRel);
        if self.map.compare_and_set(lba, old, new) {
            self.release(old);
            true
        } else {
            nb.valid.fetch_sub(1, Ordering::AcqRel);
            false
        }
    }

    /// Points `lba` at trim note `note` (sector 0 of a page whose trim bit is
    /// set). Never-written LBAs stay unmapped: they have no copy to hide.
    pub(crate) fn install_trim(&self, lba: u64, note: u32) -> bool {
        let nb = self.blocks.get(self.layout.block_of(note));
        loop {
            let cur = self.map.get(lba);
            if cur == UNMAPPED || cur == note {
                return false;
            }
            nb.note_refs.fetch_add(1, Ordering::AcqRel);
            if self.map.compare_and_set(lba, cur, note) {
                self.release(cur);
                return true;
            }
            nb.note_refs.fetch_sub(1, Ordering::AcqRel);
        }
    }

    /// Moves `lba` from trim note `old` to its relocated copy `new`.
    pub(crate) fn relocate_trim(&self, lba: u64, old: u32, new: u32) -> bool {
        let nb = self.blocks.get(self.layout.block_of(new));
        nb.note_refs.fetch_add(1, Ordering::AcqRel);
        if self.map.compare_and_set(lba, old, new) {
            self.release(old);
            true
        } else {
            nb.note_refs.fetch_sub(1, Ordering::AcqRel);
            false
        }
    }

    /// Whether sector `lba` holds data: written and not trimmed since. An
    /// unmapped sector reads as zeros and costs no flash. Lock-free (one map
    /// load); out-of-range sectors are reported unmapped.
    pub fn is_mapped(&self, lba: u64) -> bool {
        if lba >= self.num_sectors() {
            return false;
        }
        let phys = self.map.get(lba);
        phys != UNMAPPED && !self.is_trim(phys)
    }

    /// Whether `phys` is a trim note (reads as zeros).
    #[inline]
    pub(crate) fn is_trim(&self, phys: u32) -> bool {
        self.trim_pages.get(self.layout.page_of(phys))
    }

    /// Next version sequence.
    #[inline]
    pub(crate) fn next_seq(&self) -> u64 {
        self.seq.fetch_add(1, Ordering::AcqRel)
    }

    /// Records that a program of `pages` pages into `block` completed.
    pub(crate) fn note_programmed(&self, block: u32, pages: u32, seq: u64) {
        let m = self.blocks.get(block);
        m.age.fetch_max(seq, Ordering::AcqRel);
        let done = m.written.fetch_add(pages, Ordering::AcqRel) + pages;
        if done >= self.layout.pages_per_block() {
            m.transition(BlockState::Open, BlockState::Full);
        }
    }

    /// A program or erase on `block` failed: it will never be written again.
    /// Blocks holding live data become `Retiring` (the groomer moves the data
    /// out), others `Bad` at once.
    pub(crate) fn retire_block(&self, block: u32) {
        let m = self.blocks.get(block);
        let prev = m.state();
        if matches!(prev, BlockState::Bad | BlockState::Retiring | BlockState::Meta) {
            return;
        }
        m.set_state(BlockState::Retiring);
        self.ctr.retired_blocks.fetch_add(1, Ordering::Relaxed);
        self.update_reserve();
        // The groomer moves the block's data out even when space is ample.
        self.gc_active.store(true, Ordering::Release);
    }

    /// Spare blocks left beyond what the capacity and the groomer need;
    /// negative when the card can no longer hold its capacity.
    pub(crate) fn reserve_blocks(&self) -> i64 {
        let usable = self
            .blocks
            .iter()
            .filter(|(_, m)| !matches!(m.state(), BlockState::Bad | BlockState::Meta | BlockState::Retiring))
            .count() as i64;
        usable - self.tune.needed_blocks as i64 - self.min_spare() as i64
    }

    /// Blocks beyond the user capacity the VSL needs to operate: the
    /// groomer's reserve, one channel's stripe and the groomer's open block.
    pub(crate) fn min_spare(&self) -> u64 {
        min_spare_blocks(self.tune.gc_reserve, self.tune.stripe)
    }

    /// Re-evaluates the reserve; goes read-only when it is exhausted.
    pub(crate) fn update_reserve(&self) {
        if self.reserve_blocks() <= 0 {
            self.read_only.store(true, Ordering::Release);
        }
    }

    /// Whether the groomer should run now.
    #[inline]
    pub(crate) fn needs_grooming(&self) -> bool {
        let free = self.blocks.free_count();
        if free < self.tune.gc_low as u64 {
            self.gc_active.store(true, Ordering::Release);
        }
        self.gc_active.load(Ordering::Acquire)
    }

    /// Runs one step of the groomer if no other thread is doing so.
    pub(crate) fn groom(&self) -> bool {
        match self.groomer.try_lock() {
            Some(mut g) => g.step(self),
            None => false,
        }
    }

    /// The card lost power (a command completed with `PowerCut`).
    pub(crate) fn mark_power_lost(&self) {
        self.offline.store(true, Ordering::Release);
    }
}

/// Blocks beyond the user capacity a format must leave.
pub(crate) fn min_spare_blocks(gc_reserve: u32, stripe: u32) -> u64 {
    gc_reserve as u64 + stripe as u64 + 2
}

/// Host RAM used by the VSL's tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct RamUsage {
    /// Everything below.
    pub total: u64,
    /// The forward map (4 bytes per user sector).
    pub forward_map: u64,
    /// Per-block bookkeeping and free pools.
    pub block_table: u64,
    /// Trim-note bit per page.
    pub trim_bits: u64,
}
