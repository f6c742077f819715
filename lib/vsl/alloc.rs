//! Append points: the open erase blocks a writer (a channel or the groomer)
//! fills, pages in order, round-robin across blocks on different dies so
//! consecutive commands land on different dies and run in parallel.
//!
//! Blocks come from the shared free pools. A writer first makes sure it has
//! room for a whole request ([`Ring::ensure_room`]): if the pools cannot
//! supply it, the blocks it took for this request go back and the request is
//! refused before anything was submitted.

use super::blocks::BlockTable;

/// Most blocks one writer keeps open at once.
pub const RING_CAP: usize = 64;

/// One open block and the next page to hand out in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppendPoint {
    /// Linear block.
    pub block: u32,
    /// Next page (within the block) to allocate.
    pub next: u32,
}

/// Why room could not be made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoRoom {
    /// The free pools are at the floor this writer may not go below.
    Pools,
    /// The request needs more open blocks than a writer may hold.
    TooLarge,
}

/// A contiguous run of pages handed out in one block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    /// Linear block.
    pub block: u32,
    /// First page within the block.
    pub first: u32,
    /// Pages.
    pub count: u32,
}

/// The open blocks of one writer.
#[derive(Debug)]
pub struct Ring {
    points: [AppendPoint; RING_CAP],
    len: usize,
    cursor: usize,
    next_die: u32,
    width: usize,
    pages_per_block: u32,
}

impl Ring {
    /// An empty ring that aims for `width` open blocks, taking blocks from
    /// dies starting at `home_die`.
    pub fn new(width: usize, home_die: u32, pages_per_block: u32) -> Self {
        Self {
            points: [AppendPoint { block: 0, next: 0 }; RING_CAP],
            len: 0,
            cursor: 0,
            next_die: home_die,
            width: width.clamp(1, RING_CAP),
            pages_per_block,
        }
    }

    /// Open blocks.
    pub fn open_blocks(&self) -> impl Iterator<Item = AppendPoint> + '_ {
        self.points[..self.len].iter().copied()
    }

    /// Pages left in the open blocks.
    pub fn remaining(&self) -> u64 {
        self.points[..self.len]
            .iter()
            .map(|p| (self.pages_per_block - p.next) as u64)
            .sum()
    }

    /// Adopts an already open block (handed over from a closed channel).
    pub fn adopt(&mut self, p: AppendPoint) -> bool {
        if self.len == RING_CAP || p.next >= self.pages_per_block {
            return false;
        }
        self.points[self.len] = p;
        self.len += 1;
        true
    }

    /// Removes and returns every open block (channel close).
    pub fn take_all(&mut self) -> impl Iterator<Item = AppendPoint> + '_ {
        let n = self.len;
        self.len = 0;
        self.cursor = 0;
        self.points[..n].iter().copied()
    }

    /// Forgets `block` (it failed); its remaining pages are never used.
    pub fn drop_block(&mut self, block: u32) {
        if let Some(i) = self.points[..self.len].iter().position(|p| p.block == block) {
            self.remove(i);
        }
    }

    fn remove(&mut self, i: usize) {
        self.points.copy_within(i + 1..self.len, i);
        self.len -= 1;
        if self.cursor >= self.len {
            self.cursor = 0;
        }
    }

    fn pop_block(&mut self, blocks: &BlockTable, floor: u64) -> Option<u32> {
        if blocks.free_count() <= floor {
            return None;
        }
        let b = blocks.pop_free_near(self.next_die % blocks.dies().max(1))?;
        self.next_die = self.next_die.wrapping_add(1);
        Some(b)
    }

    /// Makes sure `pages` pages can be handed out, opening blocks from the
    /// pools while more than `floor` blocks are free. Also tops the ring up
    /// to its width when blocks are plentiful. On failure nothing changed.
    pub fn ensure_room(&mut self, blocks: &BlockTable, pages: u64, floor: u64) -> Result<(), NoRoom> {
        let start_len = self.len;
        while self.remaining() < pages {
            if self.len == RING_CAP {
                self.give_back(blocks, start_len);
                return Err(NoRoom::TooLarge);
            }
            match self.pop_block(blocks, floor) {
                Some(b) => self.adopt_fresh(b),
                None => {
                    self.give_back(blocks, start_len);
                    return Err(NoRoom::Pools);
                }
            }
        }
        while self.len < self.width {
            match self.pop_block(blocks, floor.saturating_add(self.width as u64)) {
                Some(b) => self.adopt_fresh(b),
                None => break,
            }
        }
        Ok(())
    }

    fn adopt_fresh(&mut self, b: u32) {
        self.points[self.len] = AppendPoint { block: b, next: 0 };
        self.len += 1;
    }

    /// Returns blocks opened since the ring had `keep` entries (all fresh:
    /// nothing was allocated in them yet).
    fn give_back(&mut self, blocks: &BlockTable, keep: usize) {
        while self.len > keep {
            self.len -= 1;
            blocks.push_free(self.points[self.len].block);
        }
        if self.cursor >= self.len {
            self.cursor = 0;
        }
    }

    /// Hands out up to `max` consecutive pages from the next open block in
    /// round-robin order. `None` if the ring is empty.
    pub fn take(&mut self, max: u32) -> Option<Extent> {
        if self.len == 0 || max == 0 {
            return None;
        }
        let i = self.cursor % self.len;
        let p = &mut self.points[i];
        let count = max.min(self.pages_per_block - p.next);
        let e = Extent {
            block: p.block,
            first: p.next,
            count,
        };
        p.next += count;
        if p.next >= self.pages_per_block {
            self.remove(i);
        } else {
            self.cursor = (i + 1) % self.len;
        }
        Some(e)
    }

    /// Hands out `count` consecutive pages inside one block (an atomic
    /// group). If no open block has room, the fullest one is closed with
    /// padding (returned as the first extent, to be programmed with pad
    /// pages) when the ring is at its width, and a fresh block is opened.
    /// On `Err` nothing changed.
    pub fn take_contiguous(
        &mut self,
        blocks: &BlockTable,
        count: u32,
        floor: u64,
    ) -> Result<(Option<Extent>, Extent), NoRoom> {
        if count > self.pages_per_block {
            return Err(NoRoom::TooLarge);
        }
        if let Some(i) = (0..self.len).find(|&i| self.pages_per_block - self.points[i].next >= count) {
            let p = &mut self.points[i];
            let e = Extent {
                block: p.block,
                first: p.next,
                count,
            };
            p.next += count;
            if p.next >= self.pages_per_block {
                self.remove(i);
            }
            return Ok((None, e));
        }
        if self.len == RING_CAP {
            return Err(NoRoom::TooLarge);
        }
        let fresh = self.pop_block(blocks, floor).ok_or(NoRoom::Pools)?;
        let mut pad = None;
        if self.len >= self.width && self.len > 0 {
            // Close the block with the least room left.
            let (i, _) = self.points[..self.len]
                .iter()
                .enumerate()
                .max_by_key(|(_, p)| p.next)
                .unwrap_or((0, &self.points[0]));
            let p = self.points[i];
            pad = Some(Extent {
                block: p.block,
                first: p.next,
                count: self.pages_per_block - p.next,
            });
            self.remove(i);
        }
        self.adopt_fresh(fresh);
        let last = self.len - 1;
        let p = &mut self.points[last];
        let e = Extent {
            block: fresh,
            first: 0,
            count,
        };
        p.next = count;
        if p.next >= self.pages_per_block {
            self.remove(last);
        }
        Ok((pad, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(dies: u32, per_die: u32) -> BlockTable {
        let t = BlockTable::new(dies, per_die);
        for b in 0..dies * per_die {
            t.push_free(b);
        }
        t
    }

    #[test]
    fn round_robin_across_dies_and_blocks_fill_in_order() {
        let t = table(4, 4);
        let mut r = Ring::new(4, 0, 8);
        r.ensure_room(&t, 1, 0).unwrap();
        assert_eq!(r.open_blocks().count(), 4, "topped up to the stripe width");
        let dies: Vec<u32> = (0..4).map(|_| r.take(1).unwrap().block / 4).collect();
        let mut sorted = dies.clone();
        sorted.sort();
        assert_eq!(sorted, vec![0, 1, 2, 3], "one block per die");
        let e = r.take(100).unwrap();
        assert_eq!((e.first, e.count), (1, 7));
        assert_eq!(r.open_blocks().count(), 3, "a filled block leaves the ring");
    }

    #[test]
    fn ensure_room_respects_the_floor_and_changes_nothing_on_failure() {
        let t = table(1, 4);
        let mut r = Ring::new(1, 0, 8);
        assert_eq!(r.ensure_room(&t, 17, 2), Err(NoRoom::Pools));
        assert_eq!(t.free_count(), 4);
        assert_eq!(r.remaining(), 0);
        r.ensure_room(&t, 16, 2).unwrap();
        assert_eq!(t.free_count(), 2);
        assert_eq!(r.remaining(), 16);
    }

    #[test]
    fn contiguous_groups_never_straddle_blocks() {
        let t = table(2, 4);
        let mut r = Ring::new(1, 0, 8);
        r.ensure_room(&t, 1, 0).unwrap();
        r.take(5).unwrap();
        let (pad, e) = r.take_contiguous(&t, 4, 0).unwrap();
        let pad = pad.expect("the open block had only 3 pages left");
        assert_eq!((pad.first, pad.count), (5, 3));
        assert_eq!((e.first, e.count), (0, 4));
        assert_ne!(pad.block, e.block);
        let (pad2, e2) = r.take_contiguous(&t, 4, 0).unwrap();
        assert!(pad2.is_none());
        assert_eq!((e2.block, e2.first), (e.block, 4));
        assert_eq!(r.take_contiguous(&t, 9, 0), Err(NoRoom::TooLarge));
    }

    #[test]
    fn dropped_blocks_are_never_handed_out_again() {
        let t = table(2, 2);
        let mut r = Ring::new(2, 0, 4);
        r.ensure_room(&t, 1, 0).unwrap();
        let first = r.take(1).unwrap().block;
        r.drop_block(first);
        for _ in 0..5 {
            if let Some(e) = r.take(1) {
                assert_ne!(e.block, first);
            }
        }
    }
}
