//! `DmaPool`: fixed-size DMA buffers carved from one [`DmaRegion`], in the
//! style of ixy's mempool and SPDK's `spdk_mempool`.
//!
//! The shared free list is a lock-free `ArrayQueue` of buffer indices; a
//! buffer's address and IOVA are `base + index * buf_size`, computed, never
//! looked up. The data path goes through a per-channel [`DmaBufCache`] that
//! touches the shared queue only once per batch.

use std::cell::Cell;
use std::marker::PhantomData;
use std::ptr;
use std::sync::Arc;

use crossbeam_queue::ArrayQueue;

use super::region::PAGE_SIZE;
use super::{DmaError, DmaRegion, IovaSpace};

/// Marks a `DmaBuf` whose index was handed back to a cache, so Drop skips it.
const RELEASED: u32 = u32::MAX;

/// A pool of equal-size DMA buffers.
///
/// Alignment guarantee: every buffer starts on a 4 KiB boundary (the region
/// is page aligned and `buf_size` is rounded up to a multiple of 4096), so a
/// buffer is never split across a page in a way a device cannot address, and
/// any buffer can carry whole 4 KiB flash pages.
pub struct DmaPool {
    region: DmaRegion,
    buf_size: usize,
    count: u32,
    free: ArrayQueue<u32>,
}

impl std::fmt::Debug for DmaPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DmaPool")
            .field("buf_size", &self.buf_size)
            .field("capacity", &self.count)
            .field("available", &self.free.len())
            .field("region", &self.region)
            .finish()
    }
}

impl DmaPool {
    /// Creates `count` buffers of `buf_size` bytes (rounded up to a multiple
    /// of 4 KiB) in one freshly allocated region (hugepages when reserved).
    pub fn new(
        space: &Arc<IovaSpace>,
        buf_size: usize,
        count: usize,
    ) -> Result<Arc<DmaPool>, DmaError> {
        let (buf_size, total) = Self::geometry(buf_size, count)?;
        Self::carve(DmaRegion::allocate(space, total)?, buf_size, count)
    }

    /// Carves as many `buf_size` buffers (rounded up to 4 KiB) as fit into
    /// an existing region, e.g. one from [`DmaRegion::allocate_shared`] so the
    /// buffers can be shared with another process.
    pub fn from_region(region: DmaRegion, buf_size: usize) -> Result<Arc<DmaPool>, DmaError> {
        let (buf_size, _) = Self::geometry(buf_size, 1)?;
        let count = region.len() / buf_size;
        Self::geometry(buf_size, count)?;
        Self::carve(region, buf_size, count)
    }

    /// Validates geometry; returns the rounded buffer size and total length.
    fn geometry(buf_size: usize, count: usize) -> Result<(usize, usize), DmaError> {
        let invalid = DmaError::InvalidPool { buf_size, count };
        if buf_size == 0 || count == 0 || count >= RELEASED as usize {
            return Err(invalid);
        }
        let rounded = buf_size
            .checked_next_multiple_of(PAGE_SIZE)
            .ok_or(DmaError::InvalidPool { buf_size, count })?;
        let total = rounded.checked_mul(count).ok_or(invalid)?;
        Ok((rounded, total))
    }

    fn carve(region: DmaRegion, buf_size: usize, count: usize) -> Result<Arc<DmaPool>, DmaError> {
        let free = ArrayQueue::new(count);
        for index in 0..count as u32 {
            // Cannot fail: the queue holds exactly `count` entries.
            let _ = free.push(index);
        }
        Ok(Arc::new(DmaPool {
            region,
            buf_size,
            count: count as u32,
            free,
        }))
    }

    /// Takes a buffer from the shared free list, or `None` when every buffer
    /// is in use (retryable: buffers come back as they are dropped).
    pub fn alloc(self: &Arc<Self>) -> Option<DmaBuf> {
        self.free.pop().map(|index| DmaBuf {
            pool: Arc::clone(self),
            index,
        })
    }

    /// Buffers currently on the shared free list (buffers parked in a
    /// [`DmaBufCache`] are not counted).
    pub fn available(&self) -> usize {
        self.free.len()
    }

    /// Total number of buffers.
    pub fn capacity(&self) -> usize {
        self.count as usize
    }

    /// Size of every buffer in bytes (a multiple of 4096).
    pub fn buf_size(&self) -> usize {
        self.buf_size
    }

    /// The region the buffers live in (for IOMMU mapping or sharing).
    pub fn region(&self) -> &DmaRegion {
        &self.region
    }

    /// IOVA of buffer `index` (no bounds check; callers hold a valid index).
    #[inline]
    fn iova_of(&self, index: u32) -> u64 {
        self.region.iova() + index as u64 * self.buf_size as u64
    }

    /// Host address of buffer `index`.
    #[inline]
    fn ptr_of(&self, index: u32) -> *mut u8 {
        self.region
            .as_ptr()
            .wrapping_add(index as usize * self.buf_size)
    }

    /// Returns an index to the shared free list.
    #[inline]
    fn release(&self, index: u32) {
        let pushed = self.free.push(index);
        // Every index is unique and the queue holds `count` of them.
        debug_assert!(
            pushed.is_ok(),
            "DMA pool free list overflow: index {index} freed twice"
        );
    }
}

/// One buffer of a [`DmaPool`]; dropping it returns it to the pool.
///
/// The memory is reached through raw pointers only: `write_at`/`read_at`
/// copy with bounds checks, and the slice views are `unsafe` because a device
/// may be writing the buffer.
pub struct DmaBuf {
    pool: Arc<DmaPool>,
    index: u32,
}

impl std::fmt::Debug for DmaBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DmaBuf")
            .field("index", &self.index)
            .field("iova", &format_args!("{:#x}", self.iova()))
            .field("len", &self.len())
            .finish()
    }
}

impl DmaBuf {
    /// IOVA of the first byte: what goes into a command's data pointer.
    #[inline]
    pub fn iova(&self) -> u64 {
        self.pool.iova_of(self.index)
    }

    /// Host address of the first byte (4 KiB aligned).
    #[inline]
    pub fn as_ptr(&self) -> *mut u8 {
        self.pool.ptr_of(self.index)
    }

    /// Length in bytes (the pool's `buf_size`).
    #[inline]
    pub fn len(&self) -> usize {
        self.pool.buf_size
    }

    /// Always false: buffers are at least 4 KiB.
    #[inline]
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Position of the buffer in its pool.
    #[inline]
    pub fn index(&self) -> u32 {
        self.index
    }

    /// The pool this buffer returns to.
    #[inline]
    pub fn pool(&self) -> &Arc<DmaPool> {
        &self.pool
    }

    fn check(&self, offset: usize, len: usize) -> Result<(), DmaError> {
        match offset.checked_add(len) {
            Some(end) if end <= self.len() => Ok(()),
            _ => Err(DmaError::OutOfBounds {
                offset,
                len,
                size: self.len(),
            }),
        }
    }

    /// Copies `data` into the buffer at `offset`.
    pub fn write_at(&mut self, offset: usize, data: &[u8]) -> Result<(), DmaError> {
        self.check(offset, data.len())?;
        // SAFETY: bounds checked above; the buffer is ours alone (`&mut self`,
        // unique index) and lies in the pool's live region; `data` is host
        // memory that no reference into the region can alias.
        unsafe { ptr::copy_nonoverlapping(data.as_ptr(), self.as_ptr().add(offset), data.len()) };
        Ok(())
    }

    /// Copies `out.len()` bytes from the buffer at `offset` into `out`.
    pub fn read_at(&self, offset: usize, out: &mut [u8]) -> Result<(), DmaError> {
        self.check(offset, out.len())?;
        // SAFETY: bounds checked above; the source lies in the pool's live
        // region and `out` is distinct host memory.
        unsafe { ptr::copy_nonoverlapping(self.as_ptr().add(offset), out.as_mut_ptr(), out.len()) };
        Ok(())
    }

    /// The buffer as a byte slice.
    ///
    /// # Safety
    /// No device DMA into this buffer may be in flight or start while the
    /// slice lives (a device write under a shared reference is undefined
    /// behaviour).
    pub unsafe fn as_slice(&self) -> &[u8] {
        // SAFETY: pointer and length describe this buffer inside the live
        // region; the caller guarantees no concurrent device writes, and no
        // host `&mut` can exist while `&self` is borrowed.
        unsafe { std::slice::from_raw_parts(self.as_ptr(), self.len()) }
    }

    /// The buffer as a mutable byte slice.
    ///
    /// # Safety
    /// No device DMA from or into this buffer may be in flight or start while
    /// the slice lives.
    pub unsafe fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as for `as_slice`; `&mut self` makes the host borrow unique.
        unsafe { std::slice::from_raw_parts_mut(self.as_ptr(), self.len()) }
    }

    /// Gives up the index without returning it to the shared list.
    #[inline]
    fn take_index(mut self) -> u32 {
        std::mem::replace(&mut self.index, RELEASED)
    }
}

impl Drop for DmaBuf {
    #[inline]
    fn drop(&mut self) {
        if self.index != RELEASED {
            self.pool.release(self.index);
        }
    }
}

/// A per-channel stack of free buffer indices in front of a [`DmaPool`].
///
/// `alloc` refills `batch` indices at a time from the shared queue; `free`
/// parks buffers locally and spills half back once more than `2 * batch` are
/// parked. Owned by one thread: it is `Send` but not `Sync`. Dropping it
/// returns every parked buffer to the pool.
pub struct DmaBufCache {
    pool: Arc<DmaPool>,
    stack: Vec<u32>,
    batch: usize,
    _not_sync: PhantomData<Cell<()>>,
}

impl std::fmt::Debug for DmaBufCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DmaBufCache")
            .field("cached", &self.stack.len())
            .field("batch", &self.batch)
            .finish()
    }
}

impl DmaBufCache {
    /// Default refill batch.
    pub const DEFAULT_BATCH: usize = 32;

    /// A cache refilling [`Self::DEFAULT_BATCH`] buffers at a time.
    pub fn new(pool: &Arc<DmaPool>) -> DmaBufCache {
        Self::with_batch(pool, Self::DEFAULT_BATCH)
    }

    /// A cache refilling `batch` (at least 1) buffers at a time.
    pub fn with_batch(pool: &Arc<DmaPool>, batch: usize) -> DmaBufCache {
        let batch = batch.max(1);
        DmaBufCache {
            pool: Arc::clone(pool),
            stack: Vec::with_capacity(2 * batch + 1),
            batch,
            _not_sync: PhantomData,
        }
    }

    /// A buffer from the local stack, refilling a batch from the pool when
    /// empty; `None` when the pool is exhausted too (retryable).
    #[inline]
    pub fn alloc(&mut self) -> Option<DmaBuf> {
        if self.stack.is_empty() {
            self.refill();
        }
        self.stack.pop().map(|index| DmaBuf {
            pool: Arc::clone(&self.pool),
            index,
        })
    }

    /// Parks `buf` locally. A buffer of another pool is simply dropped
    /// (returned to its own pool).
    #[inline]
    pub fn free(&mut self, buf: DmaBuf) {
        if !Arc::ptr_eq(&buf.pool, &self.pool) {
            return;
        }
        self.stack.push(buf.take_index());
        if self.stack.len() > 2 * self.batch {
            self.spill(self.stack.len() / 2);
        }
    }

    /// Number of buffers parked in this cache.
    pub fn cached(&self) -> usize {
        self.stack.len()
    }

    /// The pool behind this cache.
    pub fn pool(&self) -> &Arc<DmaPool> {
        &self.pool
    }

    fn refill(&mut self) {
        for _ in 0..self.batch {
            match self.pool.free.pop() {
                Some(index) => self.stack.push(index),
                None => break,
            }
        }
    }

    fn spill(&mut self, n: usize) {
        let keep = self.stack.len() - n;
        for index in self.stack.drain(keep..) {
            self.pool.release(index);
        }
    }
}

impl Drop for DmaBufCache {
    fn drop(&mut self) {
        self.spill(self.stack.len());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dma::IovaTranslate;

    fn small_pool(buf_size: usize, count: usize) -> (Arc<IovaSpace>, Arc<DmaPool>) {
        let space = Arc::new(IovaSpace::new());
        let region =
            DmaRegion::allocate_small(&space, buf_size.next_multiple_of(PAGE_SIZE) * count)
                .unwrap();
        let pool = DmaPool::from_region(region, buf_size).unwrap();
        (space, pool)
    }

    #[test]
    fn buffers_are_aligned_distinct_and_translate() {
        let (space, pool) = small_pool(100, 8);
        assert_eq!(pool.buf_size(), 4096);
        assert_eq!(pool.capacity(), 8);
        let bufs: Vec<DmaBuf> = (0..8).map(|_| pool.alloc().unwrap()).collect();
        let mut iovas: Vec<u64> = bufs.iter().map(DmaBuf::iova).collect();
        iovas.sort_unstable();
        iovas.dedup();
        assert_eq!(iovas.len(), 8);
        for buf in &bufs {
            assert_eq!(buf.as_ptr() as usize % 4096, 0);
            assert_eq!(buf.iova(), buf.as_ptr() as u64);
            assert_eq!(
                space.translate(buf.iova(), buf.len()).unwrap().as_ptr(),
                buf.as_ptr()
            );
        }
    }

    #[test]
    fn exhaustion_returns_none_and_recovers() {
        let (_space, pool) = small_pool(4096, 3);
        let a = pool.alloc().unwrap();
        let b = pool.alloc().unwrap();
        let c = pool.alloc().unwrap();
        assert!(pool.alloc().is_none());
        assert_eq!(pool.available(), 0);
        drop(b);
        assert_eq!(pool.available(), 1);
        let again = pool.alloc().unwrap();
        assert!(pool.alloc().is_none());
        drop((a, c, again));
        assert_eq!(pool.available(), 3);
    }

    #[test]
    fn bounded_copies_round_trip() {
        let (_space, pool) = small_pool(4096, 1);
        let mut buf = pool.alloc().unwrap();
        buf.write_at(4090, b"abcdef").unwrap();
        let mut out = [0u8; 6];
        buf.read_at(4090, &mut out).unwrap();
        assert_eq!(&out, b"abcdef");
        assert!(matches!(
            buf.write_at(4091, b"abcdef"),
            Err(DmaError::OutOfBounds {
                offset: 4091,
                len: 6,
                size: 4096
            })
        ));
        assert!(buf.read_at(usize::MAX, &mut out).is_err());
        // SAFETY: no device exists in this test, so nothing DMAs into the buffer.
        unsafe { buf.as_mut_slice()[0] = 0x5a };
        // SAFETY: as above.
        assert_eq!(unsafe { buf.as_slice() }[0], 0x5a);
    }

    #[test]
    fn invalid_geometry_is_refused() {
        let space = Arc::new(IovaSpace::new());
        assert!(matches!(
            DmaPool::new(&space, 0, 4),
            Err(DmaError::InvalidPool { .. })
        ));
        assert!(matches!(
            DmaPool::new(&space, 4096, 0),
            Err(DmaError::InvalidPool { .. })
        ));
        assert!(matches!(
            DmaPool::new(&space, usize::MAX, 2),
            Err(DmaError::InvalidPool { .. })
        ));
        let region = DmaRegion::allocate_small(&space, 4096).unwrap();
        assert!(matches!(
            DmaPool::from_region(region, 8192),
            Err(DmaError::InvalidPool { .. })
        ));
        assert_eq!(
            space.region_count(),
            0,
            "failed pools must not leak registrations"
        );
    }

    #[test]
    fn cache_refills_in_batches_and_spills_half() {
        let (_space, pool) = small_pool(4096, 64);
        let mut cache = DmaBufCache::with_batch(&pool, 8);
        let first = cache.alloc().unwrap();
        assert_eq!(cache.cached(), 7);
        assert_eq!(pool.available(), 56);

        let mut held = vec![first];
        held.extend((0..20).map(|_| cache.alloc().unwrap()));
        // 21 allocated: three refills of 8, three left parked.
        assert_eq!(cache.cached(), 3);
        assert_eq!(pool.available(), 40);

        for buf in held.drain(..) {
            cache.free(buf);
        }
        // Parked count never exceeds 2 * batch; the rest went back.
        assert!(cache.cached() <= 16, "cached {}", cache.cached());
        assert_eq!(cache.cached() + pool.available(), 64);

        // A buffer of another pool goes home, not into this cache.
        let (_other_space, other) = small_pool(4096, 1);
        let before = cache.cached();
        cache.free(other.alloc().unwrap());
        assert_eq!(cache.cached(), before);
        assert_eq!(other.available(), 1);

        drop(cache);
        assert_eq!(pool.available(), 64);
    }

    #[test]
    fn pool_new_uses_a_registered_region() {
        let space = Arc::new(IovaSpace::new());
        let pool = DmaPool::new(&space, 8192, 4).unwrap();
        assert_eq!(pool.buf_size(), 8192);
        assert!(pool.region().len() >= 4 * 8192);
        let buf = pool.alloc().unwrap();
        assert!(space.translate(buf.iova(), 8192).is_some());
        drop(buf);
        drop(pool);
        assert_eq!(space.region_count(), 0);
    }
}
