//! Integration tests of the DMA layer on real mappings: 4 KiB pages always,
//! 2 MiB hugepages when running as root (reserved for the test and given back).

use std::sync::Arc;

use iomemory::dma::{
    hugepages_available, DmaBuf, DmaBufCache, DmaPool, DmaRegion, HugepageReservation, IovaSpace,
    IovaTranslate, HUGEPAGE_SIZE, PAGE_SIZE,
};
use parking_lot::Mutex;

/// Held by every test here: the ones that count on the hugepage pool's
/// size, and the ones that allocate DMA memory (which takes hugepages when
/// any are free, so running beside the counting test would take pages it
/// reserved for itself).
static HUGEPAGE_POOL: Mutex<()> = Mutex::new(());

const NR_HUGEPAGES: &str = "/sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages";

fn nr_hugepages() -> Option<u64> {
    std::fs::read_to_string(NR_HUGEPAGES)
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// A deterministic byte pattern distinct for every `seed`.
fn pattern(seed: u64, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| {
            (seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 56) as u8 ^ (i as u8).wrapping_mul(31)
        })
        .collect()
}

fn write_and_verify_region(region: &mut DmaRegion) {
    let data = pattern(region.iova(), region.len());
    region.fill(0, &data).unwrap();
    let mut back = vec![0u8; region.len()];
    region.copy_out(0, &mut back).unwrap();
    assert!(back == data, "region contents differ from what was written");
}

#[test]
fn hugepage_region_pool_and_shared_memfd() {
    let _pool_size = HUGEPAGE_POOL.lock();
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        println!("skipping: hugepage test needs root to reserve 2 MiB hugepages");
        return;
    }
    let before = nr_hugepages();
    let reservation = match HugepageReservation::reserve(8) {
        Ok(r) => r,
        Err(e) => {
            println!("skipping: could not reserve hugepages: {e}");
            return;
        }
    };
    assert_eq!(reservation.pages(), 8);
    assert!(
        hugepages_available() >= 8,
        "available {}",
        hugepages_available()
    );

    let space = Arc::new(IovaSpace::new());
    let mut region = DmaRegion::allocate(&space, 3 << 20).unwrap();
    assert!(region.is_hugepage());
    assert_eq!(region.len(), 4 << 20, "rounded up to 2 MiB");
    assert_eq!(region.as_ptr() as usize % HUGEPAGE_SIZE, 0);
    write_and_verify_region(&mut region);
    assert_eq!(
        space
            .translate(region.iova(), region.len())
            .unwrap()
            .as_ptr(),
        region.as_ptr()
    );

    let mut shared = DmaRegion::allocate_shared(&space, 1).unwrap();
    assert!(shared.is_hugepage());
    assert!(shared.memfd().is_some());
    assert_eq!(shared.len(), HUGEPAGE_SIZE);
    write_and_verify_region(&mut shared);

    let pool = DmaPool::new(&space, 4096, 512).unwrap();
    assert!(pool.region().is_hugepage());
    let mut buf = pool.alloc().unwrap();
    buf.write_at(0, &pattern(7, 4096)).unwrap();
    let mut back = vec![0u8; 4096];
    buf.read_at(0, &mut back).unwrap();
    assert_eq!(back, pattern(7, 4096));

    drop((buf, pool, region, shared));
    assert_eq!(space.region_count(), 0);
    drop(reservation);
    assert_eq!(nr_hugepages(), before, "nr_hugepages restored");
}

#[test]
fn without_hugepages_allocate_falls_back_to_4k_pages() {
    let _pool_size = HUGEPAGE_POOL.lock();
    if hugepages_available() > 0 {
        println!(
            "skipping: hugepages are reserved on this machine, the fallback path is not taken"
        );
        return;
    }
    let space = Arc::new(IovaSpace::new());
    let mut region = DmaRegion::allocate(&space, 10_000).unwrap();
    assert!(!region.is_hugepage());
    assert_eq!(region.len(), 12_288, "rounded up to 4 KiB");
    write_and_verify_region(&mut region);

    let mut shared = DmaRegion::allocate_shared(&space, 5000).unwrap();
    assert!(!shared.is_hugepage());
    assert_eq!(shared.len(), 8192);
    write_and_verify_region(&mut shared);
}

#[test]
fn buffers_translate_exactly_and_one_past_the_end_fails() {
    let _pool_size = HUGEPAGE_POOL.lock();
    let space = Arc::new(IovaSpace::new());
    let region = DmaRegion::allocate_small(&space, 16 * 8192).unwrap();
    let pool = DmaPool::from_region(region, 5000).unwrap();
    assert_eq!(pool.buf_size(), 8192);
    assert_eq!(pool.capacity(), 16);
    let bufs: Vec<DmaBuf> = std::iter::from_fn(|| pool.alloc()).collect();
    assert_eq!(bufs.len(), 16);
    for buf in &bufs {
        assert_eq!(buf.as_ptr() as usize % PAGE_SIZE, 0, "4 KiB alignment");
        assert_eq!(
            space.translate(buf.iova(), buf.len()).unwrap().as_ptr(),
            buf.as_ptr()
        );
    }
    let last = bufs.iter().max_by_key(|b| b.iova()).unwrap();
    assert!(space.translate(last.iova(), last.len() + 1).is_none());
    assert!(space
        .translate(last.iova() + last.len() as u64, 1)
        .is_none());
    let first = bufs.iter().min_by_key(|b| b.iova()).unwrap();
    assert!(space.translate(first.iova() - 1, 1).is_none());
}

#[test]
fn buffers_keep_their_pool_alive_and_exhaustion_recovers() {
    let _pool_size = HUGEPAGE_POOL.lock();
    let space = Arc::new(IovaSpace::new());
    let region = DmaRegion::allocate_small(&space, 2 * PAGE_SIZE).unwrap();
    let pool = DmaPool::from_region(region, PAGE_SIZE).unwrap();
    let mut a = pool.alloc().unwrap();
    let b = pool.alloc().unwrap();
    assert!(pool.alloc().is_none(), "exhausted pool returns None");
    drop(b);
    let b = pool.alloc().expect("a dropped buffer is allocatable again");
    drop(b);

    let weak = Arc::downgrade(&pool);
    drop(pool);
    // `a` still owns a reference: the memory stays mapped and registered.
    a.write_at(0, b"still here").unwrap();
    assert!(space.translate(a.iova(), a.len()).is_some());
    assert_eq!(weak.upgrade().unwrap().available(), 1);
    drop(a);
    assert!(weak.upgrade().is_none());
    assert_eq!(space.region_count(), 0, "last buffer unmapped the region");
}

#[test]
fn shared_pool_buffers_are_visible_through_the_memfd() {
    let _pool_size = HUGEPAGE_POOL.lock();
    let space = Arc::new(IovaSpace::new());
    let region = DmaRegion::allocate_shared(&space, 4 * PAGE_SIZE).unwrap();
    let file = std::fs::File::from(region.memfd().unwrap().try_clone_to_owned().unwrap());
    let len = region.len();
    let pool = DmaPool::from_region(region, PAGE_SIZE).unwrap();
    let mut buf = pool.alloc().unwrap();
    let offset = (buf.iova() - pool.region().iova()) as usize;
    buf.write_at(100, b"peer process").unwrap();

    // SAFETY: a second, read-only view of the memfd, as a peer process
    // would map it; it is only read after the write above, from this thread.
    let peer = unsafe { memmap2::MmapOptions::new().len(len).map(&file) }.unwrap();
    assert_eq!(&peer[offset + 100..offset + 112], b"peer process");
}

#[test]
fn two_threads_alloc_and_free_with_every_byte_verified() {
    let _pool_size = HUGEPAGE_POOL.lock();
    const BUF: usize = 4096;
    let space = Arc::new(IovaSpace::new());
    let region = DmaRegion::allocate_small(&space, 48 * BUF).unwrap();
    let pool = DmaPool::from_region(region, BUF).unwrap();

    let workers: Vec<_> = (0..2u64)
        .map(|thread| {
            let pool = Arc::clone(&pool);
            std::thread::spawn(move || {
                let mut cache = DmaBufCache::with_batch(&pool, 4);
                let mut held: Vec<(DmaBuf, u64)> = Vec::new();
                let mut exhausted = 0u32;
                for iter in 0..400u64 {
                    // Keep up to 12 buffers live per thread, so the threads
                    // together hold most of the pool while writing.
                    for slot in 0..3u64 {
                        let buf = if (iter + slot) % 2 == 0 {
                            cache.alloc()
                        } else {
                            pool.alloc()
                        };
                        let Some(mut buf) = buf else {
                            exhausted += 1;
                            continue;
                        };
                        let seed = (thread << 40) | (iter << 8) | slot;
                        buf.write_at(0, &pattern(seed, BUF)).unwrap();
                        held.push((buf, seed));
                    }
                    while held.len() > 12 || (iter % 7 == 0 && !held.is_empty()) {
                        let (buf, seed) = held.remove(0);
                        let mut back = vec![0u8; BUF];
                        buf.read_at(0, &mut back).unwrap();
                        assert!(
                            back == pattern(seed, BUF),
                            "buffer {} corrupted",
                            buf.index()
                        );
                        if iter % 2 == 0 {
                            cache.free(buf);
                        } else {
                            drop(buf);
                        }
                    }
                }
                for (buf, seed) in held {
                    let mut back = vec![0u8; BUF];
                    buf.read_at(0, &mut back).unwrap();
                    assert!(
                        back == pattern(seed, BUF),
                        "buffer {} corrupted",
                        buf.index()
                    );
                }
                exhausted
            })
        })
        .collect();
    for worker in workers {
        worker.join().expect("worker found a corrupted buffer");
    }
    assert_eq!(pool.available(), pool.capacity(), "every buffer returned");
}
