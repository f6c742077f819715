//! DMA reachability of SPDK's memory.
//!
//! SPDK's I/O buffers live in SPDK's own hugepage memory (and, for vhost,
//! in the guest memory the vhost target maps); the card may only DMA into
//! ranges registered in its [`IovaSpace`]. SPDK announces every range it
//! registers for DMA (`spdk_mem_register`, DPDK heap growth, vhost guest
//! regions) to each `spdk_mem_map` with a notify callback; the shim
//! forwards those notifications here and this registry mirrors them into
//! the card's IOVA space, IOVA = virtual address.
//!
//! Adjacent and overlapping ranges are coalesced, so a buffer that spans
//! two separately registered hugepages still lies in one registered range,
//! and SPDK's many 2 MiB registrations take few of the IOVA space's slots.
//! An unregistration may cut a coalesced range; the remaining pieces are
//! registered before the old range is dropped, so memory that stays
//! registered never becomes unreachable in between. When the IOVA space is
//! full a range stays unregistered and requests touching it are bounced
//! through the channel's own DMA buffers (counted in `refused`).

use std::collections::BTreeMap;
use std::sync::Arc;

use iomemory::dma::{IovaHandle, IovaSpace, IovaTranslate};
use parking_lot::Mutex;
use serde::Serialize;

/// Counters shown in the bdev's driver-specific info.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct DmaStats {
    /// Coalesced ranges currently registered with the card.
    pub regions: usize,
    /// Bytes currently registered.
    pub bytes: u64,
    /// Register notifications received.
    pub registrations: u64,
    /// Unregister notifications received.
    pub unregistrations: u64,
    /// Ranges the card's IOVA space had no room for (their I/O is bounced).
    pub refused: u64,
}

struct Range {
    end: u64,
    handle: IovaHandle,
}

struct Inner {
    /// start -> range, non-overlapping and non-adjacent.
    ranges: BTreeMap<u64, Range>,
    stats: DmaStats,
}

/// Mirrors SPDK's DMA-registered memory into a card's IOVA space.
pub struct DmaRegistry {
    space: Arc<IovaSpace>,
    inner: Mutex<Inner>,
}

impl std::fmt::Debug for DmaRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DmaRegistry")
            .field("stats", &self.stats())
            .finish()
    }
}

/// A range `[start, end)` is invalid if empty or wrapping.
fn bounds(vaddr: *mut u8, len: usize) -> Option<(u64, u64)> {
    let start = vaddr as u64;
    if vaddr.is_null() || len == 0 {
        return None;
    }
    Some((start, start.checked_add(len as u64)?))
}

impl DmaRegistry {
    /// A registry feeding `space` (the card's `card.dma()`).
    pub fn new(space: Arc<IovaSpace>) -> Self {
        Self {
            space,
            inner: Mutex::new(Inner {
                ranges: BTreeMap::new(),
                stats: DmaStats::default(),
            }),
        }
    }

    /// The card's IOVA space.
    pub fn space(&self) -> &Arc<IovaSpace> {
        &self.space
    }

    /// Whether the card can reach `[ptr, ptr + len)` by DMA.
    #[inline]
    pub fn reachable(&self, ptr: *const u8, len: usize) -> bool {
        self.space.translate(ptr as u64, len).is_some()
    }

    fn register_raw(&self, inner: &mut Inner, start: u64, end: u64) -> Option<IovaHandle> {
        match self
            .space
            .register(start as usize as *mut u8, (end - start) as usize)
        {
            Ok(h) => Some(h),
            Err(_) => {
                inner.stats.refused += 1;
                None
            }
        }
    }

    /// SPDK registered `[vaddr, vaddr + len)` for DMA. Returns whether the
    /// card can now reach it (false: the IOVA space is full; I/O on it will
    /// be bounced). Never fails SPDK's registration.
    ///
    /// # Safety
    /// The range must be mapped memory that stays mapped until it is passed
    /// to [`Self::unregister`] (SPDK's contract for registered memory).
    pub unsafe fn register(&self, vaddr: *mut u8, len: usize) -> bool {
        let Some((mut start, mut end)) = bounds(vaddr, len) else {
            return false;
        };
        let mut inner = self.inner.lock();
        inner.stats.registrations += 1;
        // Every range touching [start, end) (overlapping or adjacent).
        let touching: Vec<u64> = inner
            .ranges
            .range(..=end)
            .rev()
            .take_while(|(_, r)| r.end >= start)
            .map(|(&s, _)| s)
            .collect();
        for s in &touching {
            start = start.min(*s);
            end = end.max(inner.ranges[s].end);
        }
        let Some(handle) = self.register_raw(&mut inner, start, end) else {
            return false;
        };
        // The union is live; now drop the pieces it replaces.
        for s in touching {
            if let Some(old) = inner.ranges.remove(&s) {
                self.space.unregister(old.handle);
            }
        }
        inner.ranges.insert(start, Range { end, handle });
        true
    }

    /// SPDK unregistered `[vaddr, vaddr + len)`: the card may no longer
    /// reach it. Parts of coalesced ranges outside it stay reachable.
    pub fn unregister(&self, vaddr: *mut u8, len: usize) {
        let Some((start, end)) = bounds(vaddr, len) else {
            return;
        };
        let mut inner = self.inner.lock();
        inner.stats.unregistrations += 1;
        let overlapping: Vec<u64> = inner
            .ranges
            .range(..end)
            .rev()
            .take_while(|(_, r)| r.end > start)
            .map(|(&s, _)| s)
            .collect();
        for s in overlapping {
            let Some(old) = inner.ranges.remove(&s) else {
                continue;
            };
            let old_end = old.end;
            let mut keep = Vec::new();
            if s < start {
                keep.push((s, start));
            }
            if old_end > end {
                keep.push((end, old_end));
            }
            let mut new = Vec::new();
            for (a, b) in keep {
                if let Some(handle) = self.register_raw(&mut inner, a, b) {
                    new.push((a, Range { end: b, handle }));
                }
            }
            self.space.unregister(old.handle);
            inner.ranges.extend(new);
        }
    }

    /// Drops every registration (the bdev is going away).
    pub fn clear(&self) {
        let mut inner = self.inner.lock();
        let ranges = std::mem::take(&mut inner.ranges);
        for (_, r) in ranges {
            self.space.unregister(r.handle);
        }
    }

    /// Current counters.
    pub fn stats(&self) -> DmaStats {
        let inner = self.inner.lock();
        DmaStats {
            regions: inner.ranges.len(),
            bytes: inner.ranges.iter().map(|(s, r)| r.end - s).sum(),
            ..inner.stats
        }
    }
}

impl Drop for DmaRegistry {
    fn drop(&mut self) {
        self.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use iomemory::dma::MAX_IOVA_REGIONS;

    const MB2: usize = 2 << 20;

    struct Mem(Vec<u8>);
    impl Mem {
        fn new(len: usize) -> Self {
            Mem(vec![0u8; len])
        }
        fn at(&mut self, off: usize) -> *mut u8 {
            self.0.as_mut_ptr().wrapping_add(off)
        }
    }

    #[test]
    fn adjacent_registrations_coalesce_and_spanning_buffers_are_reachable() {
        let space = Arc::new(IovaSpace::new());
        let reg = DmaRegistry::new(space.clone());
        let mut mem = Mem::new(4 * MB2);
        let base = mem.at(0);
        // SAFETY: `mem` outlives the registry's use of it in this test.
        unsafe {
            assert!(reg.register(mem.at(0), MB2));
            assert!(reg.register(mem.at(2 * MB2), MB2));
            assert_eq!(reg.stats().regions, 2);
            assert!(!reg.reachable(mem.at(MB2 - 4096), 8192));
            assert!(reg.register(mem.at(MB2), MB2));
        }
        let s = reg.stats();
        assert_eq!(
            (s.regions, s.bytes, s.registrations),
            (1, 3 * MB2 as u64, 3)
        );
        assert_eq!(space.region_count(), 1);
        assert!(reg.reachable(base.wrapping_add(MB2 - 4096), 8192));
        assert!(reg.reachable(base, 3 * MB2));
        assert!(!reg.reachable(base.wrapping_add(3 * MB2), 4096));
    }

    #[test]
    fn overlapping_registration_is_idempotent() {
        let space = Arc::new(IovaSpace::new());
        let reg = DmaRegistry::new(space.clone());
        let mut mem = Mem::new(2 * MB2);
        // SAFETY: `mem` outlives the registry's use of it.
        unsafe {
            assert!(reg.register(mem.at(0), 2 * MB2));
            assert!(reg.register(mem.at(4096), MB2));
        }
        assert_eq!(reg.stats().regions, 1);
        assert_eq!(reg.stats().bytes, 2 * MB2 as u64);
        assert_eq!(space.region_count(), 1);
    }

    #[test]
    fn unregistering_the_middle_keeps_both_ends_reachable() {
        let space = Arc::new(IovaSpace::new());
        let reg = DmaRegistry::new(space.clone());
        let mut mem = Mem::new(3 * MB2);
        let base = mem.at(0);
        // SAFETY: `mem` outlives the registry's use of it.
        unsafe { assert!(reg.register(base, 3 * MB2)) };
        reg.unregister(mem.at(MB2), MB2);
        let s = reg.stats();
        assert_eq!(
            (s.regions, s.bytes, s.unregistrations),
            (2, 2 * MB2 as u64, 1)
        );
        assert!(reg.reachable(base, MB2));
        assert!(reg.reachable(base.wrapping_add(2 * MB2), MB2));
        assert!(!reg.reachable(base.wrapping_add(MB2), 4096));
        assert!(!reg.reachable(base, MB2 + 4096));
        // Unregistering what is left, in one call spanning the hole.
        reg.unregister(base, 3 * MB2);
        assert_eq!(reg.stats().regions, 0);
        assert_eq!(space.region_count(), 0);
        assert!(!reg.reachable(base, 4096));
    }

    #[test]
    fn a_full_iova_space_refuses_without_failing_and_drop_cleans_up() {
        let space = Arc::new(IovaSpace::new());
        let mut filler = Mem::new(MAX_IOVA_REGIONS * 8192);
        let handles: Vec<_> = (0..MAX_IOVA_REGIONS)
            .map(|i| space.register(filler.at(i * 8192), 4096).unwrap())
            .collect();
        let reg = DmaRegistry::new(space.clone());
        let mut mem = Mem::new(MB2);
        // SAFETY: `mem` outlives the registry's use of it.
        assert!(!unsafe { reg.register(mem.at(0), MB2) });
        assert_eq!(reg.stats().refused, 1);
        assert!(!reg.reachable(mem.at(0), 4096));
        for h in handles {
            space.unregister(h);
        }
        // SAFETY: as above.
        assert!(unsafe { reg.register(mem.at(0), MB2) });
        assert_eq!(space.region_count(), 1);
        drop(reg);
        assert_eq!(space.region_count(), 0);
    }

    #[test]
    fn null_and_empty_ranges_are_ignored() {
        let space = Arc::new(IovaSpace::new());
        let reg = DmaRegistry::new(space.clone());
        let mut mem = Mem::new(4096);
        // SAFETY: nothing is registered by these calls.
        unsafe {
            assert!(!reg.register(std::ptr::null_mut(), 4096));
            assert!(!reg.register(mem.at(0), 0));
        }
        reg.unregister(std::ptr::null_mut(), 4096);
        assert_eq!(space.region_count(), 0);
        assert_eq!(reg.stats().regions, 0);
    }
}
