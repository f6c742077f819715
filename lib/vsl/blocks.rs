//! Per-erase-block bookkeeping and the free-block pools.
//!
//! Everything here is atomics: channels, the groomer and readers on other
//! threads update it concurrently without locks. Free (erased) blocks sit in
//! one lock-free queue per die so each channel can pick blocks on the dies it
//! stripes across.

use std::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, Ordering};

use crossbeam_queue::ArrayQueue;
use serde::Serialize;

/// Life-cycle state of an erase block.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[repr(u8)]
pub enum BlockState {
    /// Erased, in a free pool.
    Free = 0,
    /// An append point of a channel or of the groomer.
    Open = 1,
    /// Written (completely or until its writer moved on).
    Full = 2,
    /// Chosen by the groomer; its valid data is being moved out.
    Victim = 3,
    /// One of the two metadata blocks.
    Meta = 4,
    /// Bad from the factory or retired after a failure; never used again.
    Bad = 5,
    /// Failed a program or erase but still holds valid data the groomer
    /// must move out before it becomes `Bad`.
    Retiring = 6,
    /// Holds the clean-detach checkpoint (erased after the next attach).
    Checkpoint = 7,
}

impl BlockState {
    /// Decodes a stored state byte.
    pub const fn from_u8(v: u8) -> Self {
        match v {
            0 => BlockState::Free,
            1 => BlockState::Open,
            2 => BlockState::Full,
            3 => BlockState::Victim,
            4 => BlockState::Meta,
            6 => BlockState::Retiring,
            7 => BlockState::Checkpoint,
            _ => BlockState::Bad,
        }
    }
}

/// Bookkeeping of one erase block.
#[derive(Debug)]
pub struct BlockMeta {
    state: AtomicU8,
    /// Valid user sectors (map entries pointing into the block).
    pub valid: AtomicU32,
    /// Map entries pointing at trim notes in the block.
    pub note_refs: AtomicU32,
    /// Program/erase cycles.
    pub pe: AtomicU32,
    /// Pages programmed since the last erase (the write pointer).
    pub written: AtomicU32,
    /// Highest version sequence written into the block (its age).
    pub age: AtomicU64,
}

impl BlockMeta {
    fn new() -> Self {
        Self {
            state: AtomicU8::new(BlockState::Bad as u8),
            valid: AtomicU32::new(0),
            note_refs: AtomicU32::new(0),
            pe: AtomicU32::new(0),
            written: AtomicU32::new(0),
            age: AtomicU64::new(0),
        }
    }

    /// Current state.
    #[inline]
    pub fn state(&self) -> BlockState {
        BlockState::from_u8(self.state.load(Ordering::Acquire))
    }

    /// Sets the state.
    #[inline]
    pub fn set_state(&self, s: BlockState) {
        self.state.store(s as u8, Ordering::Release);
    }

    /// Moves `from` -> `to` only if the block is in `from`.
    #[inline]
    pub fn transition(&self, from: BlockState, to: BlockState) -> bool {
        self.state
            .compare_exchange(from as u8, to as u8, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    /// Whether nothing live remains in the block.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.valid.load(Ordering::Acquire) == 0 && self.note_refs.load(Ordering::Acquire) == 0
    }
}

/// The table of every block on the card plus the free pools.
#[derive(Debug)]
pub struct BlockTable {
    blocks: Box<[BlockMeta]>,
    pools: Box<[ArrayQueue<u32>]>,
    blocks_per_die: u32,
    free: AtomicU64,
}

/// Approximate RAM bytes per block of bookkeeping (table entry + pool slot).
pub const BLOCK_RAM_BYTES: u64 = std::mem::size_of::<BlockMeta>() as u64 + 4;

impl BlockTable {
    /// A table for `dies * blocks_per_die` blocks, every block `Bad` until
    /// attach classifies it.
    pub fn new(dies: u32, blocks_per_die: u32) -> Self {
        let total = dies as usize * blocks_per_die as usize;
        Self {
            blocks: (0..total).map(|_| BlockMeta::new()).collect(),
            pools: (0..dies)
                .map(|_| ArrayQueue::new(blocks_per_die.max(1) as usize))
                .collect(),
            blocks_per_die,
            free: AtomicU64::new(0),
        }
    }

    /// Number of blocks.
    pub fn len(&self) -> u32 {
        self.blocks.len() as u32
    }

    /// Bookkeeping of linear block `b`.
    #[inline]
    pub fn get(&self, b: u32) -> &BlockMeta {
        &self.blocks[b as usize]
    }

    /// All blocks in linear order.
    pub fn iter(&self) -> impl Iterator<Item = (u32, &BlockMeta)> {
        self.blocks.iter().enumerate().map(|(i, m)| (i as u32, m))
    }

    /// Number of dies.
    pub fn dies(&self) -> u32 {
        self.pools.len() as u32
    }

    /// Blocks in the free pools.
    #[inline]
    pub fn free_count(&self) -> u64 {
        self.free.load(Ordering::Acquire)
    }

    /// Returns an erased block to its die's pool (state becomes `Free`).
    pub fn push_free(&self, b: u32) {
        let m = self.get(b);
        m.set_state(BlockState::Free);
        m.written.store(0, Ordering::Release);
        m.valid.store(0, Ordering::Release);
        m.note_refs.store(0, Ordering::Release);
        let die = (b / self.blocks_per_die) as usize;
        // Each block is in at most one pool slot and a die's pool holds all
        // of its blocks, so the push cannot fail.
        if self.pools[die].push(b).is_ok() {
            self.free.fetch_add(1, Ordering::AcqRel);
        }
    }

    /// Takes a free block from `die`'s pool, marking it `Open`.
    pub fn pop_free(&self, die: u32) -> Option<u32> {
        let b = self.pools[die as usize].pop()?;
        self.free.fetch_sub(1, Ordering::AcqRel);
        let m = self.get(b);
        m.set_state(BlockState::Open);
        m.written.store(0, Ordering::Release);
        Some(b)
    }

    /// Takes a free block from `first_die` or the next die that has one.
    pub fn pop_free_near(&self, first_die: u32) -> Option<u32> {
        let dies = self.dies();
        (0..dies).find_map(|i| self.pop_free((first_die + i) % dies))
    }

    /// Counts blocks per state.
    pub fn census(&self) -> BlockCensus {
        let mut c = BlockCensus::default();
        for m in self.blocks.iter() {
            match m.state() {
                BlockState::Free => c.free += 1,
                BlockState::Open => c.open += 1,
                BlockState::Full | BlockState::Victim => c.full += 1,
                BlockState::Meta => c.meta += 1,
                BlockState::Bad => c.bad += 1,
                BlockState::Retiring => c.retiring += 1,
                BlockState::Checkpoint => c.checkpoint += 1,
            }
        }
        c
    }

    /// Lowest and highest P/E count over usable (not bad or metadata) blocks.
    pub fn pe_range(&self) -> (u32, u32) {
        let mut lo = u32::MAX;
        let mut hi = 0;
        for m in self.blocks.iter() {
            if matches!(m.state(), BlockState::Bad | BlockState::Meta | BlockState::Retiring) {
                continue;
            }
            let pe = m.pe.load(Ordering::Relaxed);
            lo = lo.min(pe);
            hi = hi.max(pe);
        }
        if lo == u32::MAX {
            (0, 0)
        } else {
            (lo, hi)
        }
    }
}

/// Blocks per state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct BlockCensus {
    /// Erased and pooled.
    pub free: u32,
    /// Append points.
    pub open: u32,
    /// Written (including a groomer victim in progress).
    pub full: u32,
    /// Metadata area.
    pub meta: u32,
    /// Bad or retired.
    pub bad: u32,
    /// Failed, data still being moved out.
    pub retiring: u32,
    /// Holding a checkpoint.
    pub checkpoint: u32,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pools_hand_out_blocks_per_die_and_count_them() {
        let t = BlockTable::new(2, 4);
        assert_eq!(t.census().bad, 8);
        for b in [1, 2, 5] {
            t.push_free(b);
        }
        assert_eq!(t.free_count(), 3);
        assert_eq!(t.pop_free(1), Some(5));
        assert_eq!(t.get(5).state(), BlockState::Open);
        assert_eq!(t.pop_free(1), None);
        // Falls through to the next die with a free block.
        assert_eq!(t.pop_free_near(1), Some(1));
        assert_eq!(t.free_count(), 1);
        let c = t.census();
        assert_eq!((c.free, c.open, c.bad), (1, 2, 5));
    }

    #[test]
    fn transitions_only_from_the_expected_state() {
        let t = BlockTable::new(1, 2);
        t.push_free(0);
        let m = t.get(0);
        assert!(!m.transition(BlockState::Full, BlockState::Victim));
        assert!(m.transition(BlockState::Free, BlockState::Open));
        assert_eq!(m.state(), BlockState::Open);
        assert!(m.is_empty());
        m.note_refs.store(2, Ordering::Relaxed);
        assert!(!m.is_empty());
    }

    #[test]
    fn pe_range_ignores_bad_blocks() {
        let t = BlockTable::new(1, 3);
        t.push_free(0);
        t.push_free(1);
        t.get(0).pe.store(5, Ordering::Relaxed);
        t.get(1).pe.store(9, Ordering::Relaxed);
        t.get(2).pe.store(1000, Ordering::Relaxed);
        assert_eq!(t.pe_range(), (5, 9));
    }
}
