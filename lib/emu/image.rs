//! The emulated card's persistent image: one memory mapping (a sparse file,
//! or anonymous memory) laid out as a header and page-aligned regions.
//!
//! ```text
//! 0        header (4 KiB): magic "IOMEMIMG", version, header length,
//!          config length, crc32c of the header, layout size, config JSON
//! state    PLP flag, per-die failure flags                  (u32 words)
//! counters lifetime counters: totals, then per-thread shards (u64 words)
//! blocks   per erase block: P/E, write pointer, state, bad reason (16 B)
//! pages    per page: program generation, flags | program day    (8 B)
//! oob      per page: oob_size bytes
//! data     per page: page_size bytes
//! ```
//!
//! The file is created with `set_len` and never filled, so an image costs
//! only the pages written to it. Only one process may hold an image: opening
//! takes an exclusive `flock`-style lock for the lifetime of the mapping.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use memmap2::{MmapOptions, MmapRaw, UncheckedAdvice};

use super::nand::NandConfig;
use crate::card::Geometry;

/// First eight bytes of every image.
pub const IMAGE_MAGIC: &[u8; 8] = b"IOMEMIMG";
/// Image format version this build reads and writes.
pub const IMAGE_VERSION: u32 = 1;
/// Bytes reserved for the header at offset 0.
pub const HEADER_LEN: usize = 4096;

/// Alignment of every region (the host page size the mapping is advised in).
const REGION_ALIGN: u64 = 4096;
/// Where the config JSON starts inside the header.
const CONFIG_OFFSET: usize = 64;
/// Bytes per erase-block record.
pub(crate) const BLOCK_RECORD_LEN: u64 = 16;
/// Bytes per page record.
pub(crate) const PAGE_RECORD_LEN: u64 = 8;
/// u64 slots per counter shard (room to grow without a new version).
const COUNTER_SLOTS: u64 = 64;
/// Shards of the counters region. Shard 0 holds the persisted totals; the
/// others take the increments of the I/O path, one shard per thread, so
/// two cores never bounce one counter line between them. A counter's value
/// is the sum over its shards; [`Image::fold_counter_shards`] moves the
/// shards into the totals. All shards fit the counters region's one page,
/// so the layout is the same as with totals alone.
pub(crate) const COUNTER_SHARDS: usize = 8;
const _: () = assert!(COUNTER_SHARDS as u64 * COUNTER_SLOTS * 8 <= REGION_ALIGN);
/// Offset of the first per-die flag word in the state region.
const DIE_FLAGS_OFFSET: u64 = 64;

/// Errors creating or opening a card image.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EmuError {
    /// A system call on the image failed.
    #[error("I/O error on card image {path}: {source}")]
    Io {
        /// Image path (or `(memory)`).
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The file does not start with the image magic.
    #[error("{path} is not an iomemory card image (bad magic); pass an image made by `iomem create`")]
    NotAnImage {
        /// The file.
        path: PathBuf,
    },
    /// The header or its contents fail validation.
    #[error("card image {path} is corrupt: {what}; restore it from a backup or create a new image")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        what: String,
    },
    /// The file is shorter than its layout needs.
    #[error("card image {path} is truncated: {actual} bytes, its layout needs {expected}; was it copied without sparse support or cut short?")]
    Truncated {
        /// The file.
        path: PathBuf,
        /// Bytes the layout needs.
        expected: u64,
        /// Bytes the file has.
        actual: u64,
    },
    /// The image was written by a different format version.
    #[error("card image {path} has format version {found}, this build supports version {supported}; use a matching iomemory release")]
    UnsupportedVersion {
        /// The file.
        path: PathBuf,
        /// Version found in the header.
        found: u32,
        /// Version this build supports.
        supported: u32,
    },
    /// Another process (or another handle in this one) holds the image.
    #[error("card image {path} is in use by another process; detach it there first")]
    Locked {
        /// The file.
        path: PathBuf,
    },
    /// The requested card configuration is impossible.
    #[error("invalid card configuration: {0}")]
    InvalidConfig(String),
    /// Creating an image over a file that already has contents.
    #[error("{path} already exists and is not empty; refusing to overwrite it (remove it or choose another path)")]
    Exists {
        /// The file.
        path: PathBuf,
    },
}

/// Counters stored in the image, by slot.
#[derive(Debug, Clone, Copy)]
#[repr(u64)]
pub(crate) enum Counter {
    BytesWritten = 0,
    BytesRead,
    PagesProgrammed,
    PagesRead,
    BlocksErased,
    EccCorrectedBits,
    EccCorrectedReads,
    UncorrectableReads,
    ProgramFailures,
    EraseFailures,
    FactoryBadBlocks,
    GrownBadBlocks,
    PowerCycles,
    PowerOnSeconds,
    TornPages,
    /// Program sequence number: source of per-page program generations.
    ProgramSequence,
}

/// Byte offsets of the regions of an image for one geometry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Layout {
    pub state_off: u64,
    pub counters_off: u64,
    pub blocks_off: u64,
    pub pages_off: u64,
    pub oob_off: u64,
    pub data_off: u64,
    pub total_len: u64,
}

fn align_up(x: u64) -> Option<u64> {
    x.checked_add(REGION_ALIGN - 1).map(|v| v & !(REGION_ALIGN - 1))
}

impl Layout {
    /// Computes the layout, failing if it overflows this machine's address space.
    pub fn for_geometry(g: &Geometry) -> Result<Self, EmuError> {
        let overflow = || EmuError::InvalidConfig("the card is too large to map on this machine".into());
        let region = |start: u64, len: Option<u64>| -> Result<u64, EmuError> {
            len.and_then(|l| start.checked_add(l)).and_then(align_up).ok_or_else(overflow)
        };
        let pages = g.total_pages();
        let state_off = HEADER_LEN as u64;
        let counters_off = region(state_off, Some(DIE_FLAGS_OFFSET + 4 * g.dies() as u64))?;
        let blocks_off = region(counters_off, Some(COUNTER_SHARDS as u64 * COUNTER_SLOTS * 8))?;
        let pages_off = region(blocks_off, g.total_blocks().checked_mul(BLOCK_RECORD_LEN))?;
        let oob_off = region(pages_off, pages.checked_mul(PAGE_RECORD_LEN))?;
        let data_off = region(oob_off, pages.checked_mul(g.oob_size as u64))?;
        let total_len = region(data_off, pages.checked_mul(g.page_size as u64))?;
        if usize::try_from(total_len).is_err() || total_len > i64::MAX as u64 {
            return Err(overflow());
        }
        Ok(Self { state_off, counters_off, blocks_off, pages_off, oob_off, data_off, total_len })
    }
}

fn read_u32(b: &[u8], off: usize) -> u32 {
    let mut w = [0u8; 4];
    w.copy_from_slice(&b[off..off + 4]);
    u32::from_le_bytes(w)
}

/// Builds the header for `config` (layout size `total_len`).
fn encode_header(config: &NandConfig, total_len: u64) -> Result<Vec<u8>, EmuError> {
    let json = serde_json::to_vec(config)
        .map_err(|e| EmuError::InvalidConfig(format!("cannot serialize the configuration: {e}")))?;
    if json.len() > HEADER_LEN - CONFIG_OFFSET {
        return Err(EmuError::InvalidConfig(format!(
            "the configuration takes {} bytes, the image header holds {}; shorten the identity strings",
            json.len(),
            HEADER_LEN - CONFIG_OFFSET
        )));
    }
    let mut h = vec![0u8; HEADER_LEN];
    h[0..8].copy_from_slice(IMAGE_MAGIC);
    h[8..12].copy_from_slice(&IMAGE_VERSION.to_le_bytes());
    h[12..16].copy_from_slice(&(HEADER_LEN as u32).to_le_bytes());
    h[16..20].copy_from_slice(&(json.len() as u32).to_le_bytes());
    h[24..32].copy_from_slice(&total_len.to_le_bytes());
    h[CONFIG_OFFSET..CONFIG_OFFSET + json.len()].copy_from_slice(&json);
    let crc = crc32c::crc32c(&h);
    h[20..24].copy_from_slice(&crc.to_le_bytes());
    Ok(h)
}

/// Validates a header read from `path` (`file_len` bytes long) and returns
/// its configuration and layout.
fn decode_header(h: &[u8], file_len: u64, path: &Path) -> Result<(NandConfig, Layout), EmuError> {
    let corrupt = |what: String| EmuError::Corrupt { path: path.to_owned(), what };
    if h.len() < 8 || &h[0..8] != IMAGE_MAGIC {
        return Err(EmuError::NotAnImage { path: path.to_owned() });
    }
    if h.len() < HEADER_LEN {
        return Err(EmuError::Truncated { path: path.to_owned(), expected: HEADER_LEN as u64, actual: file_len });
    }
    let version = read_u32(h, 8);
    if version != IMAGE_VERSION {
        return Err(EmuError::UnsupportedVersion { path: path.to_owned(), found: version, supported: IMAGE_VERSION });
    }
    let mut zeroed = h[..HEADER_LEN].to_vec();
    zeroed[20..24].fill(0);
    let stored = read_u32(h, 20);
    let actual = crc32c::crc32c(&zeroed);
    if stored != actual {
        return Err(corrupt(format!("header checksum {stored:#010x} does not match its contents ({actual:#010x})")));
    }
    let header_len = read_u32(h, 12);
    if header_len as usize != HEADER_LEN {
        return Err(corrupt(format!("header length {header_len} is not {HEADER_LEN}")));
    }
    let config_len = read_u32(h, 16) as usize;
    if config_len > HEADER_LEN - CONFIG_OFFSET {
        return Err(corrupt(format!("configuration length {config_len} exceeds the header")));
    }
    let config: NandConfig = serde_json::from_slice(&h[CONFIG_OFFSET..CONFIG_OFFSET + config_len])
        .map_err(|e| corrupt(format!("configuration does not parse: {e}")))?;
    config.validate().map_err(|e| corrupt(format!("configuration is invalid: {e}")))?;
    let layout = Layout::for_geometry(&config.geometry).map_err(|e| corrupt(e.to_string()))?;
    let mut w = [0u8; 8];
    w.copy_from_slice(&h[24..32]);
    let recorded = u64::from_le_bytes(w);
    if recorded != layout.total_len {
        return Err(corrupt(format!(
            "recorded layout size {recorded} differs from the {} bytes its geometry needs",
            layout.total_len
        )));
    }
    if file_len < layout.total_len {
        return Err(EmuError::Truncated { path: path.to_owned(), expected: layout.total_len, actual: file_len });
    }
    Ok((config, layout))
}

/// Path used in errors about a memory-backed image.
fn memory_path() -> PathBuf {
    PathBuf::from("(memory)")
}

/// A mapped image: the raw bytes behind a `NandArray`.
///
/// All access to the mapped bytes goes through raw pointers or atomics; no
/// Rust reference to a byte range is ever created, so concurrent access to
/// disjoint pages from several threads is sound.
pub(crate) struct Image {
    map: MmapRaw,
    /// The locked image file; `None` for memory backing. Holding it keeps
    /// the exclusive lock.
    file: Option<File>,
    path: PathBuf,
    layout: Layout,
}

impl Image {
    /// Maps anonymous memory for `config` and writes its header.
    pub fn create_memory(config: &NandConfig) -> Result<Self, EmuError> {
        let layout = Layout::for_geometry(&config.geometry)?;
        let header = encode_header(config, layout.total_len)?;
        let map = MmapOptions::new()
            .len(layout.total_len as usize)
            .no_reserve_swap()
            .map_anon()
            .map_err(|source| EmuError::Io { path: memory_path(), source })?;
        let image = Self { map: MmapRaw::from(map), file: None, path: memory_path(), layout };
        image.write_header(&header);
        Ok(image)
    }

    /// Creates a sparse image file at `path` (new, or existing and empty),
    /// locks it, maps it and writes its header.
    pub fn create_file(config: &NandConfig, path: &Path) -> Result<Self, EmuError> {
        let layout = Layout::for_geometry(&config.geometry)?;
        let header = encode_header(config, layout.total_len)?;
        let io = |source| EmuError::Io { path: path.to_owned(), source };
        let (file, created) = match OpenOptions::new().read(true).write(true).create_new(true).open(path) {
            Ok(f) => (f, true),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                (OpenOptions::new().read(true).write(true).open(path).map_err(io)?, false)
            }
            Err(e) => return Err(io(e)),
        };
        let result = Self::init_file(file, path, layout, &header);
        if result.is_err() && created {
            // Best effort: do not leave an empty file behind. A failure here
            // leaves only that empty file, which a later create accepts.
            let _ = std::fs::remove_file(path);
        }
        result
    }

    fn init_file(file: File, path: &Path, layout: Layout, header: &[u8]) -> Result<Self, EmuError> {
        let io = |source| EmuError::Io { path: path.to_owned(), source };
        lock(&file, path)?;
        if file.metadata().map_err(io)?.len() != 0 {
            return Err(EmuError::Exists { path: path.to_owned() });
        }
        file.set_len(layout.total_len).map_err(io)?;
        let map = MmapOptions::new().len(layout.total_len as usize).map_raw(&file).map_err(io)?;
        let image = Self { map, file: Some(file), path: path.to_owned(), layout };
        image.write_header(header);
        image.map.flush_range(0, HEADER_LEN).map_err(io)?;
        Ok(image)
    }

    /// Opens, validates, locks and maps an existing image file.
    pub fn open_file(path: &Path) -> Result<(Self, NandConfig), EmuError> {
        let io = |source| EmuError::Io { path: path.to_owned(), source };
        let file = OpenOptions::new().read(true).write(true).open(path).map_err(io)?;
        lock(&file, path)?;
        let file_len = file.metadata().map_err(io)?.len();
        let mut header = Vec::with_capacity(HEADER_LEN);
        (&file).take(HEADER_LEN as u64).read_to_end(&mut header).map_err(io)?;
        let (config, layout) = decode_header(&header, file_len, path)?;
        let map = MmapOptions::new().len(layout.total_len as usize).map_raw(&file).map_err(io)?;
        Ok((Self { map, file: Some(file), path: path.to_owned(), layout }, config))
    }

    fn write_header(&self, header: &[u8]) {
        debug_assert_eq!(header.len(), HEADER_LEN);
        // SAFETY: the mapping is at least HEADER_LEN bytes (the layout starts
        // its first region there) and nothing else references it yet.
        unsafe { std::ptr::copy_nonoverlapping(header.as_ptr(), self.map.as_mut_ptr(), HEADER_LEN) };
    }

    /// The region offsets.
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// Path of the image file, or `(memory)`.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether the image lives in a file.
    pub fn is_file(&self) -> bool {
        self.file.is_some()
    }

    /// Pointer to byte `off` of the mapping.
    ///
    /// # Safety
    /// `off` must be within the mapping.
    pub unsafe fn ptr(&self, off: u64) -> *mut u8 {
        debug_assert!(off <= self.layout.total_len);
        // SAFETY: the caller keeps `off` inside the mapping, whose length
        // fits in usize (checked by `Layout::for_geometry`).
        unsafe { self.map.as_mut_ptr().add(off as usize) }
    }

    /// The 4-byte-aligned word at `off`.
    ///
    /// # Safety
    /// `off` must be 4-byte aligned and `off + 4` within the mapping.
    pub unsafe fn u32_at(&self, off: u64) -> &AtomicU32 {
        // SAFETY: the caller guarantees alignment and bounds; the mapping
        // lives as long as `self`, and every access to this word goes
        // through atomics.
        unsafe { AtomicU32::from_ptr(self.ptr(off).cast()) }
    }

    /// The 8-byte-aligned word at `off`.
    ///
    /// # Safety
    /// `off` must be 8-byte aligned and `off + 8` within the mapping.
    pub unsafe fn u64_at(&self, off: u64) -> &AtomicU64 {
        // SAFETY: as for `u32_at`.
        unsafe { AtomicU64::from_ptr(self.ptr(off).cast()) }
    }

    /// The persisted total of lifetime counter `c` (shard 0): stores and
    /// sequence numbers go here; increments on the I/O path go to
    /// [`Self::counter_shard`].
    pub fn counter(&self, c: Counter) -> &AtomicU64 {
        self.slot(0, c as u64)
    }

    /// Shard `shard` (taken modulo [`COUNTER_SHARDS`]) of counter `c`.
    pub fn counter_shard(&self, shard: usize, c: Counter) -> &AtomicU64 {
        self.slot(shard % COUNTER_SHARDS, c as u64)
    }

    /// The value of counter `c`: its total plus every shard. Exact when no
    /// fold runs at the same time (the caller serializes the two).
    pub fn counter_sum(&self, c: Counter) -> u64 {
        (0..COUNTER_SHARDS).map(|s| self.slot(s, c as u64).load(Ordering::Relaxed)).fold(0, u64::wrapping_add)
    }

    /// Moves every shard's counts into the totals (after this the image at
    /// rest holds each value in one word, as older builds expect). Counts
    /// added concurrently are never lost: each shard is emptied by an
    /// atomic swap before its value is added to the total.
    pub fn fold_counter_shards(&self) {
        for slot in 0..COUNTER_SLOTS {
            for shard in 1..COUNTER_SHARDS {
                let v = self.slot(shard, slot).swap(0, Ordering::Relaxed);
                if v != 0 {
                    self.slot(0, slot).fetch_add(v, Ordering::Relaxed);
                }
            }
        }
    }

    /// Counter word `slot` of shard `shard`.
    fn slot(&self, shard: usize, slot: u64) -> &AtomicU64 {
        debug_assert!(shard < COUNTER_SHARDS && slot < COUNTER_SLOTS);
        let index = (shard as u64 % COUNTER_SHARDS as u64) * COUNTER_SLOTS + slot % COUNTER_SLOTS;
        // SAFETY: `index` < COUNTER_SHARDS * COUNTER_SLOTS, so the word lies
        // inside the counters region (sized for every shard in
        // `Layout::for_geometry`), 8-aligned because the region is
        // page-aligned.
        unsafe { self.u64_at(self.layout.counters_off + index * 8) }
    }

    /// The persisted power-loss-protection flag word.
    pub fn plp_word(&self) -> &AtomicU32 {
        // SAFETY: word 0 of the page-aligned state region.
        unsafe { self.u32_at(self.layout.state_off) }
    }

    /// The persisted failure flag of `die`, which must exist.
    pub fn die_word(&self, die: u32) -> &AtomicU32 {
        // SAFETY: the state region holds one word per die after
        // DIE_FLAGS_OFFSET (see `Layout::for_geometry`); callers check `die`.
        unsafe { self.u32_at(self.layout.state_off + DIE_FLAGS_OFFSET + 4 * die as u64) }
    }

    /// Gives the pages of `[off, off + len)` back to the system (the range
    /// reads as zeros afterwards). Only whole host pages are released; an
    /// unaligned range is left as is.
    ///
    /// # Safety
    /// The range must lie inside the mapping and nothing may access it
    /// concurrently.
    pub unsafe fn release(&self, off: u64, len: u64) {
        // Memory-backed arrays keep their pages: handing them back to the
        // kernel made every program after an erase fault in a freshly
        // zeroed page (most of the CPU time of a random-write benchmark).
        if !self.is_file() || !off.is_multiple_of(REGION_ALIGN) || !len.is_multiple_of(REGION_ALIGN) || len == 0 {
            return;
        }
        let advice = UncheckedAdvice::Remove;
        // SAFETY: the caller owns the range exclusively; the emulator treats
        // its contents as meaningless (an erased block) and never reads it
        // before writing it again. A failure just leaves the pages in place.
        let _ = unsafe { self.map.unchecked_advise_range(advice, off as usize, len as usize) };
    }

    /// Writes every dirty page of a file image back to the file (msync).
    pub fn sync(&self) -> Result<(), EmuError> {
        if self.is_file() {
            self.map.flush().map_err(|source| EmuError::Io { path: self.path.clone(), source })?;
        }
        Ok(())
    }
}

/// Takes the exclusive lock on an image file.
// `File::try_lock` (stable since Rust 1.89, the package's MSRV) takes an
// exclusive advisory lock that the kernel drops when the process dies.
fn lock(file: &File, path: &Path) -> Result<(), EmuError> {
    match file.try_lock() {
        Ok(()) => Ok(()),
        Err(TryLockError::WouldBlock) => Err(EmuError::Locked { path: path.to_owned() }),
        Err(TryLockError::Error(source)) => Err(EmuError::Io { path: path.to_owned(), source }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::emu::profile::small_test_config;

    #[test]
    fn layout_regions_are_aligned_and_ordered() {
        let c = small_test_config(1);
        let l = Layout::for_geometry(&c.geometry).unwrap();
        let offs = [l.state_off, l.counters_off, l.blocks_off, l.pages_off, l.oob_off, l.data_off, l.total_len];
        assert!(offs.windows(2).all(|w| w[0] < w[1]));
        assert!(offs.iter().all(|o| o % REGION_ALIGN == 0));
        assert!(l.total_len - l.data_off >= c.geometry.raw_bytes());
    }

    #[test]
    fn counter_shards_sum_and_fold_into_the_totals() {
        let c = small_test_config(2);
        let image = Image::create_memory(&c).unwrap();
        image.counter(Counter::PagesRead).store(10, Ordering::Relaxed);
        for shard in 0..COUNTER_SHARDS * 2 {
            image.counter_shard(shard, Counter::PagesRead).fetch_add(shard as u64 + 1, Ordering::Relaxed);
        }
        image.counter_shard(3, Counter::BytesRead).fetch_add(4096, Ordering::Relaxed);
        let pages = 10 + (1..=COUNTER_SHARDS as u64 * 2).sum::<u64>();
        assert_eq!(image.counter_sum(Counter::PagesRead), pages);
        image.fold_counter_shards();
        assert_eq!(image.counter(Counter::PagesRead).load(Ordering::Relaxed), pages);
        assert_eq!(image.counter(Counter::BytesRead).load(Ordering::Relaxed), 4096);
        assert_eq!(image.counter_sum(Counter::PagesRead), pages);
        for shard in 1..COUNTER_SHARDS {
            assert_eq!(image.counter_shard(shard, Counter::PagesRead).load(Ordering::Relaxed), 0);
        }
        // The shards live inside the counters region: the next region
        // (block records) is untouched.
        // SAFETY: blocks_off is a 4-aligned offset inside the mapping.
        assert_eq!(unsafe { image.u32_at(image.layout().blocks_off) }.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn header_round_trips_and_detects_damage() {
        let c = small_test_config(9);
        let l = Layout::for_geometry(&c.geometry).unwrap();
        let h = encode_header(&c, l.total_len).unwrap();
        let p = Path::new("x.img");
        let (back, layout) = decode_header(&h, l.total_len, p).unwrap();
        assert_eq!(back, c);
        assert_eq!(layout, l);
        let mut bad = h.clone();
        bad[100] ^= 1;
        assert!(matches!(decode_header(&bad, l.total_len, p), Err(EmuError::Corrupt { .. })));
        assert!(matches!(decode_header(&h, l.total_len - 1, p), Err(EmuError::Truncated { .. })));
        assert!(matches!(decode_header(b"ELF", 3, p), Err(EmuError::NotAnImage { .. })));
    }
}
