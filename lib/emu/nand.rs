//! The emulated card's NAND array: erase blocks of pages with out-of-band
//! bytes, the rules of raw flash (erase before program, pages in order),
//! wear and its physics, bad blocks, die failure, a volatile write buffer
//! when power-loss protection is off, and power cuts.
//!
//! The controller calls this from one thread per queue pair. There is no
//! global lock: each erase block has its own lock, which programs and
//! erases take (page reads take none: they check the block's sequence word
//! instead, see [`BlockSeqs`]), the write buffer has one lock per die
//! (taken only with power-loss protection off), and counters are atomics in
//! the image, sharded per thread (see [`thread_shard`]).

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use super::image::{Counter, EmuError, Image, BLOCK_RECORD_LEN, COUNTER_SHARDS, PAGE_RECORD_LEN};
use super::physics::{is_factory_bad, PhysicsParams};
use super::seqlock::BlockSeqs;
use crate::card::{CardIdentity, Geometry, Ppa};

/// Pages per die that a card without power-loss protection holds in its
/// volatile write buffer before they drain to flash and become durable.
pub const WRITE_BUFFER_PAGES_PER_DIE: usize = 8;

/// Page flag: the page was in the volatile write buffer when power was cut.
const PAGE_TORN: u32 = 1;
/// Shift of the program day (days since the Unix epoch) in a page
/// record's meta word; the bits below it are flags.
const PAGE_DAY_SHIFT: u32 = 16;

/// Everything that defines an emulated NAND array; stored in the image header.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NandConfig {
    /// Shape of the array.
    pub geometry: Geometry,
    /// What the card reports as its identity.
    pub identity: CardIdentity,
    /// Seed of every random decision (bad blocks, bit errors, failures).
    pub seed: u64,
    /// Fraction of blocks the factory marks bad (block 0 of each die is
    /// always good).
    pub factory_bad_fraction: f64,
    /// Physics tunables.
    pub physics: PhysicsParams,
    /// NAND timing model the card's controller applies (kept with the card
    /// so an image made with `--timing iodrive2` stays that slow).
    #[serde(default)]
    pub timing: super::TimingProfile,
}

impl NandConfig {
    /// Checks that the configuration describes a card that can exist.
    pub fn validate(&self) -> Result<(), String> {
        self.geometry.validate()?;
        if !(0.0..1.0).contains(&self.factory_bad_fraction) {
            return Err(format!("factory bad fraction {} is outside [0, 1)", self.factory_bad_fraction));
        }
        let p = &self.physics;
        if p.rated_pe_cycles == 0 {
            return Err("rated P/E cycles must be at least 1".into());
        }
        let rates = [
            ("base_bit_errors", p.base_bit_errors),
            ("wear_bit_errors", p.wear_bit_errors),
            ("wear_exponent", p.wear_exponent),
            ("retention_bit_errors_per_day", p.retention_bit_errors_per_day),
            ("grown_bad_rate", p.grown_bad_rate),
        ];
        for (name, v) in rates {
            if !v.is_finite() || v < 0.0 {
                return Err(format!("physics parameter {name} = {v} must be finite and not negative"));
            }
        }
        Ok(())
    }
}

/// Where the array's contents live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Backing {
    /// Anonymous memory: lost when the array is dropped.
    Memory,
    /// A sparse image file that survives the process.
    File(PathBuf),
}

/// Why a block is bad.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum BadReason {
    /// Marked bad by the factory.
    Factory,
    /// An erase failed.
    EraseFailure,
    /// A program failed.
    ProgramFailure,
    /// The whole die failed.
    DieFailure,
}

impl BadReason {
    fn code(self) -> u32 {
        match self {
            Self::Factory => 1,
            Self::EraseFailure => 2,
            Self::ProgramFailure => 3,
            Self::DieFailure => 4,
        }
    }

    fn from_code(code: u32) -> Option<Self> {
        match code {
            1 => Some(Self::Factory),
            2 => Some(Self::EraseFailure),
            3 => Some(Self::ProgramFailure),
            4 => Some(Self::DieFailure),
            _ => None,
        }
    }
}

/// State of an erase block.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum BlockState {
    /// Erased: no page programmed.
    Free,
    /// Partly programmed.
    Open,
    /// Every page programmed.
    Full,
    /// Retired; see [`BlockInfo::bad_reason`].
    Bad,
}

impl BlockState {
    fn code(self) -> u32 {
        match self {
            Self::Free => 0,
            Self::Open => 1,
            Self::Full => 2,
            Self::Bad => 3,
        }
    }
}

/// What the array knows about one erase block.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockInfo {
    /// Current state.
    pub state: BlockState,
    /// Next page to program (pages below it are programmed).
    pub write_pointer: u32,
    /// Completed erases.
    pub pe_cycles: u32,
    /// Why the block is bad, if it is.
    pub bad_reason: Option<BadReason>,
}

/// Outcome of a page read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PageRead {
    /// Data returned; the ECC corrected this many bit errors.
    Ok {
        /// Raw bit errors corrected.
        corrected_bits: u32,
    },
    /// The page is erased: data and OOB were filled with 0xFF.
    Erased,
    /// The stored data was copied out but has more errors than the ECC can
    /// correct (or was torn by a power cut): do not trust it.
    Uncorrectable,
    /// The read could not be performed.
    Failed(NandError),
}

/// Errors of NAND operations. Each one leaves the array unchanged unless
/// its description says otherwise.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NandError {
    /// The page address is outside the geometry.
    #[error("page address ({0}) is outside the card's geometry")]
    InvalidAddress(Ppa),
    /// The block address is outside the geometry.
    #[error("block address (die {die} block {block}) is outside the card's geometry")]
    InvalidBlock {
        /// Die index.
        die: u32,
        /// Block index.
        block: u32,
    },
    /// Pages of a block must be programmed in order.
    #[error("program of {ppa} is out of order: the block's next page is {expected_page}")]
    ProgramOrder {
        /// The rejected address.
        ppa: Ppa,
        /// The block's write pointer.
        expected_page: u32,
    },
    /// The page was already programmed since the last erase.
    #[error("{0} is already programmed; erase its block before programming it again")]
    NotErased(Ppa),
    /// The block is retired.
    #[error("die {die} block {block} is a bad block; choose another block")]
    BadBlock {
        /// Die index.
        die: u32,
        /// Block index.
        block: u32,
    },
    /// The program failed; the block is now marked bad (pages programmed
    /// before stay readable).
    #[error("program of {0} failed; its block is now bad, rewrite the data elsewhere")]
    ProgramFailed(Ppa),
    /// The erase failed; the block is now marked bad.
    #[error("erase of die {die} block {block} failed; the block is now bad")]
    EraseFailed {
        /// Die index.
        die: u32,
        /// Block index.
        block: u32,
    },
    /// The die has failed; nothing on it can be accessed.
    #[error("die {0} has failed; rebuild its data from parity")]
    DieFailed(u32),
    /// The card has no power.
    #[error("the card has lost power; power it on before issuing commands")]
    PowerCut,
}

/// Lifetime counters of the array (persisted in the image).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NandCounters {
    /// Data bytes programmed to flash.
    pub bytes_written: u64,
    /// Data bytes read from flash.
    pub bytes_read: u64,
    /// Pages programmed.
    pub pages_programmed: u64,
    /// Pages read (including erased pages).
    pub pages_read: u64,
    /// Successful block erases.
    pub blocks_erased: u64,
    /// Bit errors corrected by the ECC.
    pub ecc_corrected_bits: u64,
    /// Reads that needed correction.
    pub ecc_corrected_reads: u64,
    /// Reads beyond the ECC (including torn pages).
    pub uncorrectable_reads: u64,
    /// Failed programs.
    pub program_failures: u64,
    /// Failed erases.
    pub erase_failures: u64,
    /// Blocks the factory marked bad.
    pub factory_bad_blocks: u64,
    /// Blocks retired after a failed erase or program.
    pub grown_bad_blocks: u64,
    /// Times the card was powered on (creation, each open, each power-on).
    pub power_cycles: u64,
    /// Seconds the card has been powered.
    pub power_on_seconds: u64,
    /// Pages torn by power cuts while in the volatile write buffer.
    pub torn_pages: u64,
    /// Dies that have failed.
    pub failed_dies: u64,
}

/// Days since the Unix epoch (capped to 16 bits), from the coarse realtime
/// clock: one is read per page read and program, and day resolution needs
/// none of the precise clock's cost.
fn today() -> u32 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid, writable timespec for the call's duration.
    let secs = if unsafe { libc::clock_gettime(libc::CLOCK_REALTIME_COARSE, &mut ts) } == 0 {
        ts.tv_sec.max(0) as u64
    } else {
        SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
    };
    (secs / 86_400).min(0xffff) as u32
}

/// Prefetches the cache lines of `len` bytes at `ptr` into L2 (a hint: it
/// never faults, whatever the address).
#[inline]
fn prefetch_lines(ptr: *const u8, len: usize) {
    #[cfg(target_arch = "x86_64")]
    for off in (0..len).step_by(64) {
        // SAFETY: a prefetch hint does not access memory architecturally and
        // cannot fault; `wrapping_add` keeps the pointer arithmetic defined.
        unsafe { std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T1 }>(ptr.wrapping_add(off).cast()) };
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (ptr, len);
}

/// The counter shard (1..[`COUNTER_SHARDS`]) the calling thread adds to.
/// Threads take shards round-robin on first use, so the few I/O threads of
/// a run each own one and their counter increments stay in their own
/// core's cache; shard 0 is the totals, which only folds write.
fn thread_shard() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static SHARD: Cell<usize> = const { Cell::new(0) };
    }
    SHARD.with(|shard| {
        if shard.get() == 0 {
            shard.set(1 + NEXT.fetch_add(1, Ordering::Relaxed) % (COUNTER_SHARDS - 1));
        }
        shard.get()
    })
}

/// The NAND flash of an emulated card, shared between controller threads.
pub struct NandArray {
    image: Image,
    config: NandConfig,
    /// One lock per erase block, serializing the changes of its record,
    /// page records, OOB and data.
    block_locks: Box<[Mutex<()>]>,
    /// One sequence word per erase block: page reads run without the lock
    /// and retry if an erase (or data fault injection) overlapped them.
    block_seqs: BlockSeqs,
    /// Per die, linear page indices acknowledged but not yet durable.
    write_buffers: Box<[Mutex<VecDeque<u64>>]>,
    powered: AtomicBool,
    /// When power-on time was last folded into the persisted counter.
    powered_since: Mutex<Option<Instant>>,
    /// Serializes reading the counters with folding their shards, so a
    /// reader never sees a count on its way from a shard to its total.
    counters_fold: Mutex<()>,
}

impl std::fmt::Debug for NandArray {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NandArray")
            .field("path", &self.image.path())
            .field("geometry", &self.config.geometry)
            .field("powered", &self.is_powered())
            .finish_non_exhaustive()
    }
}

impl NandArray {
    /// Creates a fresh array (all blocks erased, factory bad blocks chosen
    /// by the seed). A file backing must not exist or be empty.
    pub fn create(config: &NandConfig, backing: Backing) -> Result<Arc<NandArray>, EmuError> {
        config.validate().map_err(EmuError::InvalidConfig)?;
        let image = match &backing {
            Backing::Memory => Image::create_memory(config)?,
            Backing::File(path) => Image::create_file(config, path)?,
        };
        let array = Self::assemble(image, config.clone());
        let g = &config.geometry;
        let mut factory_bad = 0;
        for die in 0..g.dies() {
            for block in 0..g.blocks_per_die {
                if is_factory_bad(config.seed, config.factory_bad_fraction, die, block) {
                    array.set_bad(die, block, BadReason::Factory);
                    factory_bad += 1;
                }
            }
        }
        array.counter(Counter::FactoryBadBlocks).store(factory_bad, Ordering::Relaxed);
        array.counter(Counter::PowerCycles).store(1, Ordering::Relaxed);
        array.image.plp_word().store(config.identity.powerloss_protection as u32, Ordering::Relaxed);
        array.image.sync()?;
        Ok(Arc::new(array))
    }

    /// Opens an existing image file: validates its header and takes an
    /// exclusive lock on it for the lifetime of the array. Counts a power cycle.
    pub fn open(path: &Path) -> Result<Arc<NandArray>, EmuError> {
        let (image, config) = Image::open_file(path)?;
        // Shards left by a process that died without closing the image.
        image.fold_counter_shards();
        let array = Self::assemble(image, config);
        array.counter(Counter::PowerCycles).fetch_add(1, Ordering::Relaxed);
        Ok(Arc::new(array))
    }

    fn assemble(image: Image, config: NandConfig) -> Self {
        let g = &config.geometry;
        let block_locks = (0..g.total_blocks()).map(|_| Mutex::new(())).collect();
        let block_seqs = BlockSeqs::new(g.total_blocks() as usize);
        let write_buffers = (0..g.dies()).map(|_| Mutex::new(VecDeque::new())).collect();
        Self {
            image,
            config,
            block_locks,
            block_seqs,
            write_buffers,
            powered: AtomicBool::new(true),
            powered_since: Mutex::new(Some(Instant::now())),
            counters_fold: Mutex::new(()),
        }
    }

    /// The configuration the array was created with.
    pub fn config(&self) -> &NandConfig {
        &self.config
    }

    /// The array's geometry.
    pub fn geometry(&self) -> &Geometry {
        &self.config.geometry
    }

    /// The image file, or `None` for memory backing.
    pub fn path(&self) -> Option<&Path> {
        self.image.is_file().then(|| self.image.path())
    }

    /// Whether completed programs are durable at once (persisted setting).
    pub fn powerloss_protection(&self) -> bool {
        self.image.plp_word().load(Ordering::Acquire) != 0
    }

    /// Turns power-loss protection on or off (persisted). Turning it on
    /// first makes every buffered program durable.
    pub fn set_powerloss_protection(&self, on: bool) {
        if on {
            self.flush();
        }
        self.image.plp_word().store(on as u32, Ordering::Release);
    }

    fn counter(&self, c: Counter) -> &std::sync::atomic::AtomicU64 {
        self.image.counter(c)
    }

    /// Adds to counter `c` in the calling thread's shard (no cache line
    /// shared with other I/O threads).
    fn bump(&self, c: Counter, by: u64) {
        self.image.counter_shard(thread_shard(), c).fetch_add(by, Ordering::Relaxed);
    }

    /// Folds the per-thread counter shards into the persisted totals.
    fn fold_counters(&self) {
        let _fold = self.counters_fold.lock();
        self.image.fold_counter_shards();
    }

    fn block_index(&self, die: u32, block: u32) -> u64 {
        die as u64 * self.config.geometry.blocks_per_die as u64 + block as u64
    }

    fn check_block(&self, die: u32, block: u32) -> Result<u64, NandError> {
        let g = &self.config.geometry;
        if die >= g.dies() || block >= g.blocks_per_die {
            return Err(NandError::InvalidBlock { die, block });
        }
        Ok(self.block_index(die, block))
    }

    /// Word `word` (0 = P/E, 1 = write pointer, 2 = state | reason << 8) of
    /// block record `bi`.
    fn block_word(&self, bi: u64, word: u64) -> &AtomicU32 {
        debug_assert!(bi < self.config.geometry.total_blocks() && word < 4);
        // SAFETY: `bi` names an existing block, so its 16-byte record lies in
        // the page-aligned blocks region; `word < 4` keeps the access inside
        // the record and 4-byte aligned.
        unsafe { self.image.u32_at(self.image.layout().blocks_off + bi * BLOCK_RECORD_LEN + word * 4) }
    }

    /// Word 0 (program generation) or 1 (flags | program day << 16) of the
    /// record of linear page `pi`.
    fn page_word(&self, pi: u64, word: u64) -> &AtomicU32 {
        debug_assert!(pi < self.config.geometry.total_pages() && word < 2);
        // SAFETY: `pi` names an existing page, so its 8-byte record lies in
        // the page-aligned pages region; `word < 2` keeps it inside and aligned.
        unsafe { self.image.u32_at(self.image.layout().pages_off + pi * PAGE_RECORD_LEN + word * 4) }
    }

    fn bad_reason_of(&self, bi: u64) -> Option<BadReason> {
        BadReason::from_code((self.block_word(bi, 2).load(Ordering::Relaxed) >> 8) & 0xff)
    }

    fn die_failed(&self, die: u32) -> bool {
        self.image.die_word(die).load(Ordering::Acquire) != 0
    }

    fn set_bad(&self, die: u32, block: u32, reason: BadReason) {
        let bi = self.block_index(die, block);
        self.block_word(bi, 2).store(BlockState::Bad.code() | reason.code() << 8, Ordering::Relaxed);
    }

    fn store_state(&self, bi: u64, wp: u32) {
        let ppb = self.config.geometry.pages_per_block;
        let state = match wp {
            0 => BlockState::Free,
            w if w >= ppb => BlockState::Full,
            _ => BlockState::Open,
        };
        self.block_word(bi, 2).store(state.code(), Ordering::Relaxed);
    }

    fn oob_off(&self, pi: u64) -> u64 {
        self.image.layout().oob_off + pi * self.config.geometry.oob_size as u64
    }

    fn data_off(&self, pi: u64) -> u64 {
        self.image.layout().data_off + pi * self.config.geometry.page_size as u64
    }

    /// Hints the CPU to start loading page `ppa`'s data and OOB into its
    /// caches, so a read of it issued shortly after (the next command of a
    /// submission burst) copies from cache instead of waiting on memory.
    /// Does nothing for an address outside the array; never faults.
    pub fn prefetch_page(&self, ppa: Ppa, offset: usize, len: usize) {
        let g = self.config.geometry;
        if !g.contains(ppa) || offset.saturating_add(len) > g.page_size as usize {
            return;
        }
        let pi = g.page_index(ppa);
        // SAFETY: `pi` is an existing page and `offset + len` lies in it, so
        // both addresses lie inside the mapping; only addresses are computed.
        let (data, oob) = unsafe { (self.image.ptr(self.data_off(pi) + offset as u64), self.image.ptr(self.oob_off(pi))) };
        prefetch_lines(data, len);
        prefetch_lines(oob, g.oob_size as usize);
    }

    /// Reads one page and its OOB.
    ///
    /// # Safety
    /// `data`, unless null (an OOB-only read), must be valid for writes of
    /// `page_size` bytes and `oob`, unless null, for writes of `oob_size`
    /// bytes; neither may overlap the array.
    /// They may be device-visible memory: they are only written through raw
    /// pointers.
    pub unsafe fn read_page(&self, ppa: Ppa, data: *mut u8, oob: *mut u8) -> PageRead {
        // SAFETY: the caller's guarantees are this function's, for the whole page.
        unsafe { self.read_page_column(ppa, data, 0, self.config.geometry.page_size as usize, oob) }
    }

    /// Like [`Self::read_page`], but only the page bytes `offset..offset +
    /// len` are transferred, to `data` (a column read). The whole page is
    /// still sensed (ECC and wear act on it) and the whole OOB delivered.
    /// A range outside the page fails with `InvalidAddress`, touching nothing.
    ///
    /// # Safety
    /// `data`, unless null, must be valid for writes of `len` bytes and
    /// `oob`, unless null, for writes of `oob_size` bytes; neither may
    /// overlap the array. They are only written through raw pointers.
    pub unsafe fn read_page_column(&self, ppa: Ppa, data: *mut u8, offset: usize, len: usize, oob: *mut u8) -> PageRead {
        let g = self.config.geometry;
        if !self.is_powered() {
            return PageRead::Failed(NandError::PowerCut);
        }
        if !g.contains(ppa) || offset.checked_add(len).is_none_or(|end| end > g.page_size as usize) {
            return PageRead::Failed(NandError::InvalidAddress(ppa));
        }
        let bi = self.block_index(ppa.die, ppa.block);
        // SAFETY: the caller's guarantees are `sense`'s; a run that an erase
        // overlapped is discarded and run again.
        let outcome = self.block_seqs.read(bi as usize, || unsafe { self.sense(ppa, bi, data, offset, len, oob) });
        match outcome {
            PageRead::Failed(_) => return outcome,
            PageRead::Uncorrectable => self.bump(Counter::UncorrectableReads, 1),
            PageRead::Ok { corrected_bits } if corrected_bits > 0 => {
                self.bump(Counter::EccCorrectedReads, 1);
                self.bump(Counter::EccCorrectedBits, corrected_bits as u64);
            }
            PageRead::Ok { .. } | PageRead::Erased => {}
        }
        self.bump(Counter::PagesRead, 1);
        self.bump(Counter::BytesRead, g.page_size as u64);
        outcome
    }

    /// The body of a page read of block `bi` (the caller checked the address
    /// and the column): copies the column and OOB out and draws the ECC
    /// outcome, counting nothing, so [`BlockSeqs::read`] may run it again.
    ///
    /// # Safety
    /// As for [`Self::read_page_column`].
    unsafe fn sense(&self, ppa: Ppa, bi: u64, data: *mut u8, offset: usize, len: usize, oob: *mut u8) -> PageRead {
        let g = self.config.geometry;
        if self.die_failed(ppa.die) {
            return PageRead::Failed(NandError::DieFailed(ppa.die));
        }
        if self.bad_reason_of(bi) == Some(BadReason::Factory) {
            return PageRead::Failed(NandError::BadBlock { die: ppa.die, block: ppa.block });
        }
        // Pairs with the release store of a program: the page's data, OOB
        // and records are complete below the write pointer read here.
        let wp = self.block_word(bi, 1).load(Ordering::Acquire);
        if ppa.page >= wp {
            // SAFETY: the caller guarantees `data` (and `oob` when non-null)
            // are writable for the column and an OOB.
            unsafe {
                if !data.is_null() {
                    std::ptr::write_bytes(data, 0xff, len);
                }
                if !oob.is_null() {
                    std::ptr::write_bytes(oob, 0xff, g.oob_size as usize);
                }
            }
            return PageRead::Erased;
        }
        let pi = g.page_index(ppa);
        // SAFETY: `pi` is an existing page and the column lies in it
        // (checked by the caller), so its data and OOB lie inside the
        // mapping; the caller guarantees the destinations. Programs only
        // write pages at or past the write pointer read above; only an
        // erase (inside `BlockSeqs::write`) can change these bytes while
        // they are copied, and then this run's result is discarded and the
        // copy made again. The bytes are plain data, valid whatever mix of
        // old and new a discarded run copied.
        unsafe {
            if !data.is_null() {
                std::ptr::copy_nonoverlapping(self.image.ptr(self.data_off(pi) + offset as u64), data, len);
            }
            if !oob.is_null() {
                std::ptr::copy_nonoverlapping(self.image.ptr(self.oob_off(pi)), oob, g.oob_size as usize);
            }
        }
        let generation = self.page_word(pi, 0).load(Ordering::Relaxed);
        let meta = self.page_word(pi, 1).load(Ordering::Acquire);
        if meta & PAGE_TORN != 0 {
            return PageRead::Uncorrectable;
        }
        let pe = self.block_word(bi, 0).load(Ordering::Relaxed);
        let age_days = today().saturating_sub(meta >> PAGE_DAY_SHIFT);
        let physics = &self.config.physics;
        let bits = physics.raw_bit_errors(
            self.config.seed,
            ppa.die,
            ppa.block,
            ppa.page,
            pe,
            generation,
            age_days,
            g.page_size * 8,
        );
        if physics.is_uncorrectable(bits) {
            return PageRead::Uncorrectable;
        }
        PageRead::Ok { corrected_bits: bits }
    }

    /// Programs one page and its OOB at the block's write pointer.
    ///
    /// # Safety
    /// `data` must be valid for reads of `page_size` bytes and `oob`, unless
    /// null (OOB left all 0xFF), for reads of `oob_size` bytes; neither may
    /// overlap the array.
    pub unsafe fn program_page(&self, ppa: Ppa, data: *const u8, oob: *const u8) -> Result<(), NandError> {
        let g = self.config.geometry;
        if !self.is_powered() {
            return Err(NandError::PowerCut);
        }
        if !g.contains(ppa) {
            return Err(NandError::InvalidAddress(ppa));
        }
        let bi = self.block_index(ppa.die, ppa.block);
        let _guard = self.block_locks[bi as usize].lock();
        if self.die_failed(ppa.die) {
            return Err(NandError::DieFailed(ppa.die));
        }
        if self.bad_reason_of(bi).is_some() {
            return Err(NandError::BadBlock { die: ppa.die, block: ppa.block });
        }
        let wp = self.block_word(bi, 1).load(Ordering::Relaxed);
        if ppa.page < wp {
            return Err(NandError::NotErased(ppa));
        }
        if ppa.page != wp {
            return Err(NandError::ProgramOrder { ppa, expected_page: wp });
        }
        let pe = self.block_word(bi, 0).load(Ordering::Relaxed);
        if self.config.physics.program_fails(self.config.seed, ppa.die, ppa.block, ppa.page, pe) {
            self.set_bad(ppa.die, ppa.block, BadReason::ProgramFailure);
            self.bump(Counter::ProgramFailures, 1);
            self.bump(Counter::GrownBadBlocks, 1);
            return Err(NandError::ProgramFailed(ppa));
        }
        let pi = g.page_index(ppa);
        // SAFETY: `pi` is an existing page, so its data and OOB lie inside
        // the mapping; the block lock keeps other readers and writers out;
        // the caller guarantees the sources.
        unsafe {
            std::ptr::copy_nonoverlapping(data, self.image.ptr(self.data_off(pi)), g.page_size as usize);
            let oob_dst = self.image.ptr(self.oob_off(pi));
            if oob.is_null() {
                std::ptr::write_bytes(oob_dst, 0xff, g.oob_size as usize);
            } else {
                std::ptr::copy_nonoverlapping(oob, oob_dst, g.oob_size as usize);
            }
        }
        let generation = self.counter(Counter::ProgramSequence).fetch_add(1, Ordering::Relaxed) + 1;
        self.page_word(pi, 0).store(generation as u32, Ordering::Relaxed);
        self.page_word(pi, 1).store(today() << PAGE_DAY_SHIFT, Ordering::Release);
        // Publishes the page to lock-free readers (see `sense`).
        self.block_word(bi, 1).store(wp + 1, Ordering::Release);
        self.store_state(bi, wp + 1);
        self.bump(Counter::PagesProgrammed, 1);
        self.bump(Counter::BytesWritten, g.page_size as u64);
        if !self.powerloss_protection() {
            return self.buffer_program(ppa.die, pi);
        }
        Ok(())
    }

    /// Records a program acknowledged from the volatile write buffer. The
    /// oldest buffered page drains (becomes durable) when the buffer is full.
    fn buffer_program(&self, die: u32, pi: u64) -> Result<(), NandError> {
        let mut buffer = self.write_buffers[die as usize].lock();
        buffer.push_back(pi);
        if buffer.len() > WRITE_BUFFER_PAGES_PER_DIE {
            buffer.pop_front();
        }
        // `power_cut` clears `powered` before tearing the buffers under their
        // locks: if power is still on here it will find this entry.
        if !self.is_powered() {
            buffer.retain(|&p| p != pi);
            self.tear(pi);
            return Err(NandError::PowerCut);
        }
        Ok(())
    }

    fn tear(&self, pi: u64) {
        self.page_word(pi, 1).fetch_or(PAGE_TORN, Ordering::AcqRel);
        self.bump(Counter::TornPages, 1);
    }

    /// Erases a block: resets its write pointer and adds a P/E cycle.
    pub fn erase_block(&self, die: u32, block: u32) -> Result<(), NandError> {
        if !self.is_powered() {
            return Err(NandError::PowerCut);
        }
        let bi = self.check_block(die, block)?;
        let _guard = self.block_locks[bi as usize].lock();
        if self.die_failed(die) {
            return Err(NandError::DieFailed(die));
        }
        if self.bad_reason_of(bi).is_some() {
            return Err(NandError::BadBlock { die, block });
        }
        let pe = self.block_word(bi, 0).load(Ordering::Relaxed);
        if self.config.physics.erase_fails(self.config.seed, die, block, pe) {
            self.set_bad(die, block, BadReason::EraseFailure);
            self.bump(Counter::EraseFailures, 1);
            self.bump(Counter::GrownBadBlocks, 1);
            return Err(NandError::EraseFailed { die, block });
        }
        let g = self.config.geometry;
        let first = bi * g.pages_per_block as u64;
        let pages = first..first + g.pages_per_block as u64;
        self.write_buffers[die as usize].lock().retain(|p| !pages.contains(p));
        // Reads of the block that overlap the erase are run again.
        self.block_seqs.write(bi as usize, || {
            for pi in pages {
                self.page_word(pi, 0).store(0, Ordering::Relaxed);
                self.page_word(pi, 1).store(0, Ordering::Relaxed);
            }
            // SAFETY: the block's data range lies inside the data region;
            // the block lock keeps other writers out and readers that copy
            // from it meanwhile discard what they copied (`BlockSeqs`); the
            // data of pages at or beyond the (now zero) write pointer is
            // never read.
            unsafe { self.image.release(self.data_off(first), g.block_bytes()) };
            self.block_word(bi, 1).store(0, Ordering::Relaxed);
            self.block_word(bi, 0).store(pe.saturating_add(1), Ordering::Relaxed);
            self.store_state(bi, 0);
        });
        self.bump(Counter::BlocksErased, 1);
        Ok(())
    }

    /// State, write pointer, wear and bad-block status of a block. Blocks of
    /// a failed die report `Bad` with [`BadReason::DieFailure`] unless they
    /// were bad before. Works without power (it reads the card's tables).
    pub fn block_info(&self, die: u32, block: u32) -> Result<BlockInfo, NandError> {
        let bi = self.check_block(die, block)?;
        let _guard = self.block_locks[bi as usize].lock();
        let pe_cycles = self.block_word(bi, 0).load(Ordering::Relaxed);
        let write_pointer = self.block_word(bi, 1).load(Ordering::Relaxed);
        let bad_reason = self.bad_reason_of(bi).or_else(|| self.die_failed(die).then_some(BadReason::DieFailure));
        let state = match (bad_reason, write_pointer) {
            (Some(_), _) => BlockState::Bad,
            (None, 0) => BlockState::Free,
            (None, w) if w >= self.config.geometry.pages_per_block => BlockState::Full,
            (None, _) => BlockState::Open,
        };
        Ok(BlockInfo { state, write_pointer, pe_cycles, bad_reason })
    }

    /// Makes every buffered (acknowledged, not yet durable) program durable.
    pub fn flush(&self) {
        for buffer in self.write_buffers.iter() {
            buffer.lock().clear();
        }
    }

    /// Pages currently in the volatile write buffer (0 with power-loss
    /// protection on).
    pub fn buffered_pages(&self) -> usize {
        self.write_buffers.iter().map(|b| b.lock().len()).sum()
    }

    /// Cuts the power. With power-loss protection off, every page still in
    /// the write buffer is torn: it reads back `Uncorrectable` from now on
    /// (its block's write pointer stays past it). Until [`Self::power_on`],
    /// every operation fails with [`NandError::PowerCut`].
    pub fn power_cut(&self) {
        if !self.powered.swap(false, Ordering::SeqCst) {
            return;
        }
        self.fold_power_on_time(false);
        for buffer in self.write_buffers.iter() {
            let mut buffer = buffer.lock();
            for pi in buffer.drain(..) {
                self.tear(pi);
            }
        }
        self.fold_counters();
    }

    /// Restores power after [`Self::power_cut`]; counts a power cycle.
    pub fn power_on(&self) {
        if self.powered.swap(true, Ordering::SeqCst) {
            return;
        }
        *self.powered_since.lock() = Some(Instant::now());
        self.bump(Counter::PowerCycles, 1);
    }

    /// Whether the card has power.
    pub fn is_powered(&self) -> bool {
        self.powered.load(Ordering::SeqCst)
    }

    /// Flips the bits `xor` of data byte `offset` of page `ppa` in place:
    /// silent corruption that ECC did not catch (fault injection; the OOB
    /// and the page's ECC state are untouched). The host's data CRCs are
    /// what must notice it.
    pub fn corrupt_data(&self, ppa: Ppa, offset: usize, xor: u8) -> Result<(), NandError> {
        let g = self.config.geometry;
        if !g.contains(ppa) || offset >= g.page_size as usize {
            return Err(NandError::InvalidAddress(ppa));
        }
        let pi = g.page_index(ppa);
        let bi = self.block_index(ppa.die, ppa.block);
        let _guard = self.block_locks[bi as usize].lock();
        self.block_seqs.write(bi as usize, || {
            // SAFETY: `pi` is an existing page and `offset` lies in it, so
            // the byte is inside the mapping; the block lock keeps writers
            // out and readers overlapping the change read again.
            unsafe {
                let byte = self.image.ptr(self.data_off(pi) + offset as u64);
                byte.write(byte.read() ^ xor);
            }
        });
        Ok(())
    }

    /// Fails a whole die (fault injection; persisted). Every later operation
    /// on it fails with [`NandError::DieFailed`].
    pub fn fail_die(&self, die: u32) -> Result<(), NandError> {
        if !self.is_powered() {
            return Err(NandError::PowerCut);
        }
        if die >= self.config.geometry.dies() {
            return Err(NandError::InvalidBlock { die, block: 0 });
        }
        self.image.die_word(die).store(1, Ordering::Release);
        // The die's buffered pages are gone with it; nothing to make durable.
        self.write_buffers[die as usize].lock().clear();
        Ok(())
    }

    /// Adds the whole seconds powered since the last fold to the persisted
    /// counter; keeps counting when `still_powered`.
    fn fold_power_on_time(&self, still_powered: bool) {
        let mut since = self.powered_since.lock();
        if let Some(start) = *since {
            let secs = start.elapsed().as_secs();
            self.bump(Counter::PowerOnSeconds, secs);
            *since = still_powered.then(|| start + std::time::Duration::from_secs(secs));
        }
    }

    /// Lifetime counters.
    pub fn counters(&self) -> NandCounters {
        let _fold = self.counters_fold.lock();
        let c = |c: Counter| self.image.counter_sum(c);
        let running = self.powered_since.lock().map(|s| s.elapsed().as_secs()).unwrap_or(0);
        NandCounters {
            bytes_written: c(Counter::BytesWritten),
            bytes_read: c(Counter::BytesRead),
            pages_programmed: c(Counter::PagesProgrammed),
            pages_read: c(Counter::PagesRead),
            blocks_erased: c(Counter::BlocksErased),
            ecc_corrected_bits: c(Counter::EccCorrectedBits),
            ecc_corrected_reads: c(Counter::EccCorrectedReads),
            uncorrectable_reads: c(Counter::UncorrectableReads),
            program_failures: c(Counter::ProgramFailures),
            erase_failures: c(Counter::EraseFailures),
            factory_bad_blocks: c(Counter::FactoryBadBlocks),
            grown_bad_blocks: c(Counter::GrownBadBlocks),
            power_cycles: c(Counter::PowerCycles),
            power_on_seconds: c(Counter::PowerOnSeconds) + running,
            torn_pages: c(Counter::TornPages),
            failed_dies: (0..self.config.geometry.dies()).filter(|&d| self.die_failed(d)).count() as u64,
        }
    }

    /// Writes the image back to its file (msync); a no-op for memory backing.
    pub fn sync(&self) -> Result<(), EmuError> {
        if self.is_powered() {
            self.fold_power_on_time(true);
        }
        self.fold_counters();
        self.image.sync()
    }
}

impl Drop for NandArray {
    /// An orderly shutdown: the write buffer drains and the image is synced.
    fn drop(&mut self) {
        self.flush();
        if self.is_powered() {
            self.fold_power_on_time(false);
        }
        self.fold_counters();
        // Nothing to report to on drop; `sync()` is there for callers who
        // need to see the error.
        let _ = self.image.sync();
    }
}
