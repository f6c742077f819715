//! The forward map (LBA -> physical sector) and physical addressing.
//!
//! A physical sector address is `page_index * P + slot`, where `P` is the
//! number of sectors per page and `page_index` is the card's linear page
//! number (die-major, see [`Geometry::page_index`]). Each map entry is one
//! `AtomicU32`, so the map costs 4 bytes per user sector, mapped or not;
//! [`UNMAPPED`] marks a sector never written (it reads as zeros).
//!
//! Every change is a single atomic operation: user writes `swap` in their new
//! location (and learn the old one to invalidate), the groomer moves data
//! with `compare_exchange` so a relocation never overwrites a newer write.

use std::sync::atomic::{AtomicU32, Ordering};

use crate::card::{Geometry, Ppa};

/// Map entry of a sector that was never written (or whose copies are gone).
pub const UNMAPPED: u32 = u32::MAX;

/// Sector/page/block arithmetic for one format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    /// Card geometry.
    pub geometry: Geometry,
    /// Sector size in bytes.
    pub sector_size: u32,
    /// Sectors per page (`P`).
    pub sectors_per_page: u32,
}

impl Layout {
    /// Layout for `sector_size`-byte sectors on `geometry`; `None` if the
    /// page size is not a multiple of the sector size, a page would hold more
    /// than 8 sectors, or physical sector addresses would not fit in 32 bits.
    pub fn new(geometry: Geometry, sector_size: u32) -> Option<Self> {
        if sector_size == 0 || !geometry.page_size.is_multiple_of(sector_size) {
            return None;
        }
        let per_page = geometry.page_size / sector_size;
        if per_page == 0 || per_page as usize > super::oob::MAX_SECTORS_PER_PAGE {
            return None;
        }
        let total = geometry.total_pages().checked_mul(per_page as u64)?;
        if total >= UNMAPPED as u64 {
            return None;
        }
        Some(Self {
            geometry,
            sector_size,
            sectors_per_page: per_page,
        })
    }

    /// Total physical sectors on the card.
    pub fn total_phys_sectors(&self) -> u64 {
        self.geometry.total_pages() * self.sectors_per_page as u64
    }

    /// Total pages on the card.
    pub fn total_pages(&self) -> u32 {
        self.geometry.total_pages() as u32
    }

    /// Total erase blocks on the card.
    pub fn total_blocks(&self) -> u32 {
        self.geometry.total_blocks() as u32
    }

    /// Pages per erase block.
    pub fn pages_per_block(&self) -> u32 {
        self.geometry.pages_per_block
    }

    /// Physical sector address of `slot` in linear page `page`.
    #[inline]
    pub fn phys(&self, page: u32, slot: u32) -> u32 {
        page * self.sectors_per_page + slot
    }

    /// Linear page of a physical sector address.
    #[inline]
    pub fn page_of(&self, phys: u32) -> u32 {
        phys / self.sectors_per_page
    }

    /// Sector slot within its page.
    #[inline]
    pub fn slot_of(&self, phys: u32) -> u32 {
        phys % self.sectors_per_page
    }

    /// Linear block (`die * blocks_per_die + block`) of a linear page.
    #[inline]
    pub fn block_of_page(&self, page: u32) -> u32 {
        page / self.geometry.pages_per_block
    }

    /// Linear block of a physical sector address.
    #[inline]
    pub fn block_of(&self, phys: u32) -> u32 {
        self.block_of_page(self.page_of(phys))
    }

    /// First linear page of a linear block.
    #[inline]
    pub fn first_page(&self, block: u32) -> u32 {
        block * self.geometry.pages_per_block
    }

    /// Linear block of (die, block).
    #[inline]
    pub fn linear_block(&self, die: u32, block: u32) -> u32 {
        die * self.geometry.blocks_per_die + block
    }

    /// Die of a linear block.
    #[inline]
    pub fn die_of_block(&self, block: u32) -> u32 {
        block / self.geometry.blocks_per_die
    }

    /// Physical address of a linear page.
    #[inline]
    pub fn ppa(&self, page: u32) -> Ppa {
        self.geometry.ppa_of_index(page as u64)
    }

    /// Linear page of a physical address.
    #[inline]
    pub fn page_index(&self, ppa: Ppa) -> u32 {
        self.geometry.page_index(ppa) as u32
    }
}

/// LBA -> physical sector address, one atomic word per user sector.
pub struct ForwardMap {
    entries: Box<[AtomicU32]>,
}

impl std::fmt::Debug for ForwardMap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ForwardMap").field("sectors", &self.entries.len()).finish()
    }
}

impl ForwardMap {
    /// A map of `sectors` entries, all [`UNMAPPED`].
    pub fn new(sectors: u64) -> Self {
        Self {
            entries: (0..sectors).map(|_| AtomicU32::new(UNMAPPED)).collect(),
        }
    }

    /// Number of user sectors.
    #[inline]
    pub fn len(&self) -> u64 {
        self.entries.len() as u64
    }

    /// Whether the map has no sectors.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Bytes of RAM the map occupies.
    pub fn ram_bytes(&self) -> u64 {
        self.entries.len() as u64 * 4
    }

    /// Current location of `lba` (caller checks `lba < len()`).
    #[inline]
    pub fn get(&self, lba: u64) -> u32 {
        self.entries[lba as usize].load(Ordering::Acquire)
    }

    /// Points `lba` at `phys` and returns where it pointed before.
    #[inline]
    pub fn swap(&self, lba: u64, phys: u32) -> u32 {
        self.entries[lba as usize].swap(phys, Ordering::AcqRel)
    }

    /// Moves `lba` from `old` to `new` only if it still points at `old`.
    #[inline]
    pub fn compare_and_set(&self, lba: u64, old: u32, new: u32) -> bool {
        self.entries[lba as usize]
            .compare_exchange(old, new, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    /// Sets `lba` unconditionally (recovery and checkpoint load, before any
    /// channel exists).
    #[inline]
    pub fn store(&self, lba: u64, phys: u32) {
        self.entries[lba as usize].store(phys, Ordering::Release);
    }

    /// Snapshot of every entry in LBA order (checkpoints).
    pub fn iter(&self) -> impl Iterator<Item = u32> + '_ {
        self.entries.iter().map(|e| e.load(Ordering::Acquire))
    }

    /// Number of entries that are not [`UNMAPPED`].
    pub fn mapped(&self) -> u64 {
        self.iter().filter(|&e| e != UNMAPPED).count() as u64
    }
}

/// One bit per page: set on pages that hold trim notes, so reads of LBAs
/// mapped to them return zeros.
pub struct PageBits {
    words: Box<[std::sync::atomic::AtomicU64]>,
}

impl std::fmt::Debug for PageBits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PageBits").field("words", &self.words.len()).finish()
    }
}

impl PageBits {
    /// `pages` clear bits.
    pub fn new(pages: u64) -> Self {
        Self {
            words: (0..pages.div_ceil(64))
                .map(|_| std::sync::atomic::AtomicU64::new(0))
                .collect(),
        }
    }

    /// Whether `page`'s bit is set.
    #[inline]
    pub fn get(&self, page: u32) -> bool {
        self.words[page as usize / 64].load(Ordering::Acquire) & (1 << (page % 64)) != 0
    }

    /// Sets or clears `page`'s bit.
    #[inline]
    pub fn set(&self, page: u32, on: bool) {
        let w = &self.words[page as usize / 64];
        if on {
            w.fetch_or(1 << (page % 64), Ordering::AcqRel);
        } else {
            w.fetch_and(!(1 << (page % 64)), Ordering::AcqRel);
        }
    }

    /// Bytes of RAM used.
    pub fn ram_bytes(&self) -> u64 {
        self.words.len() as u64 * 8
    }

    /// The raw words (checkpoints).
    pub fn words(&self) -> impl Iterator<Item = u64> + '_ {
        self.words.iter().map(|w| w.load(Ordering::Acquire))
    }

    /// Replaces word `i` (checkpoint load). Out-of-range indexes are ignored.
    pub fn set_word(&self, i: usize, value: u64) {
        if let Some(w) = self.words.get(i) {
            w.store(value, Ordering::Release);
        }
    }

    /// Number of words.
    pub fn word_count(&self) -> usize {
        self.words.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn geo() -> Geometry {
        Geometry {
            channels: 2,
            dies_per_channel: 2,
            blocks_per_die: 16,
            pages_per_block: 8,
            page_size: 4096,
            oob_size: 128,
        }
    }

    #[test]
    fn layout_addresses_round_trip() {
        let l = Layout::new(geo(), 512).unwrap();
        assert_eq!(l.sectors_per_page, 8);
        assert_eq!(l.total_phys_sectors(), 4 * 16 * 8 * 8);
        for page in [0u32, 7, 8, 100, l.total_pages() - 1] {
            for slot in 0..8 {
                let p = l.phys(page, slot);
                assert_eq!(l.page_of(p), page);
                assert_eq!(l.slot_of(p), slot);
                assert_eq!(l.block_of(p), page / 8);
            }
            assert_eq!(l.page_index(l.ppa(page)), page);
        }
        let b = l.linear_block(3, 5);
        assert_eq!(l.die_of_block(b), 3);
        assert_eq!(l.block_of_page(l.first_page(b)), b);
        assert_eq!(Layout::new(geo(), 4096).unwrap().sectors_per_page, 1);
    }

    #[test]
    fn layout_rejects_bad_sector_sizes_and_huge_cards() {
        assert!(Layout::new(geo(), 1000).is_none());
        assert!(Layout::new(geo(), 0).is_none());
        assert!(Layout::new(geo(), 256).is_none(), "16 sectors per page exceed the OOB's 8 LBAs");
        let huge = Geometry {
            blocks_per_die: 1 << 20,
            pages_per_block: 256,
            ..geo()
        };
        assert!(Layout::new(huge, 512).is_none());
    }

    #[test]
    fn map_swap_and_cas_follow_newest_writer() {
        let m = ForwardMap::new(10);
        assert_eq!(m.get(3), UNMAPPED);
        assert_eq!(m.swap(3, 100), UNMAPPED);
        // A groomer move from 100 to 200 succeeds while nothing newer exists.
        assert!(m.compare_and_set(3, 100, 200));
        // A user write lands, then a stale relocation must not clobber it.
        assert_eq!(m.swap(3, 300), 200);
        assert!(!m.compare_and_set(3, 200, 400));
        assert_eq!(m.get(3), 300);
        assert_eq!(m.mapped(), 1);
        assert_eq!(m.ram_bytes(), 40);
    }

    #[test]
    fn page_bits_set_and_clear() {
        let b = PageBits::new(130);
        assert_eq!(b.word_count(), 3);
        b.set(129, true);
        b.set(0, true);
        assert!(b.get(129) && b.get(0) && !b.get(64));
        b.set(0, false);
        assert!(!b.get(0));
        assert_eq!(b.words().collect::<Vec<_>>(), vec![0, 0, 2]);
    }
}
