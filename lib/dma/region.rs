//! `DmaRegion`: one contiguous, page-aligned mapping a card may DMA into.
//!
//! Regions prefer 2 MiB hugepages (fewer IOMMU/TLB entries, memory that the
//! kernel never migrates) and fall back to pinned 4 KiB pages when none are
//! reserved, saying so once per process. A region registers itself in an
//! [`IovaSpace`] for its whole life, so the emulated card can reach it, and
//! unregisters before it is unmapped.

use std::ffi::CStr;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, FromRawFd, OwnedFd};
use std::ptr::{self, NonNull};
use std::sync::Arc;
use std::sync::Once;

use parking_lot::Mutex;

use super::{DmaError, IovaHandle, IovaSpace};

/// Size of the hugepages regions use: 2 MiB.
pub const HUGEPAGE_SIZE: usize = 2 << 20;
/// Size of ordinary pages: 4 KiB.
pub const PAGE_SIZE: usize = 4096;

/// Sysfs directory of the 2 MiB hugepage pool (the size `MAP_HUGE_2MB` asks for).
const HUGEPAGE_SYSFS: &str = "/sys/kernel/mm/hugepages/hugepages-2048kB";

static FALLBACK_NOTICE: Once = Once::new();

/// Tells the operator, once per process, that DMA memory is on 4 KiB pages.
fn note_fallback() {
    FALLBACK_NOTICE.call_once(|| {
        eprintln!(
            "iomemory: no 2 MiB hugepages reserved (echo N > {HUGEPAGE_SYSFS}/nr_hugepages); \
             using 4 KiB pages for DMA memory"
        );
    });
}

/// Which pages a region may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pages {
    /// Hugepages if reserved, else 4 KiB pages.
    PreferHuge,
    /// 4 KiB pages only.
    Small,
}

/// One contiguous, page-aligned, populated mapping registered for DMA.
///
/// The IOVA of every byte is its virtual address (see [`IovaSpace`]). The
/// memory is never exposed as a Rust reference: a device may write it at any
/// time, so host code copies in and out through raw pointers.
pub struct DmaRegion {
    ptr: NonNull<u8>,
    len: usize,
    hugepage: bool,
    space: Arc<IovaSpace>,
    handle: Option<IovaHandle>,
    memfd: Option<OwnedFd>,
}

// SAFETY: a `DmaRegion` exclusively owns its mapping (nobody else unmaps it)
// and holds only the raw base pointer; it never hands out Rust references
// into the memory. Reads and writes through `&self` (`copy_out`, and the raw
// pointers callers obtain) copy through raw pointers, and writes through the
// safe API need `&mut self`, so moving the region to another thread or
// sharing `&DmaRegion` between threads cannot create aliasing references or
// unsynchronised safe writes. `IovaSpace` and `OwnedFd` are themselves
// `Send + Sync`.
unsafe impl Send for DmaRegion {}
// SAFETY: see the `Send` argument above; `&DmaRegion` only exposes
// read-only copies, addresses and the memfd.
unsafe impl Sync for DmaRegion {}

impl std::fmt::Debug for DmaRegion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DmaRegion")
            .field("iova", &format_args!("{:#x}", self.iova()))
            .field("len", &self.len)
            .field("hugepage", &self.hugepage)
            .field("shared", &self.memfd.is_some())
            .finish()
    }
}

/// Rounds `len` up to a multiple of `align` (a power of two), refusing zero
/// and lengths that would overflow or exceed `isize::MAX`.
fn round_len(len: usize, align: usize) -> Result<usize, DmaError> {
    if len == 0 {
        return Err(DmaError::InvalidLength { len });
    }
    let rounded = len
        .checked_add(align - 1)
        .map(|l| l & !(align - 1))
        .ok_or(DmaError::InvalidLength { len })?;
    if rounded > isize::MAX as usize {
        return Err(DmaError::InvalidLength { len });
    }
    Ok(rounded)
}

/// `mmap` of `len` bytes with `flags`, backed by `fd` (or anonymous with -1).
fn map(len: usize, flags: libc::c_int, fd: libc::c_int) -> io::Result<NonNull<u8>> {
    // SAFETY: asking the kernel for a fresh mapping at an address of its
    // choice (null hint, no MAP_FIXED) cannot affect existing memory; `fd` is
    // either -1 with MAP_ANONYMOUS or an open memfd at least `len` long.
    let addr = unsafe {
        libc::mmap(
            ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            flags | libc::MAP_POPULATE,
            fd,
            0,
        )
    };
    if addr == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    NonNull::new(addr.cast()).ok_or_else(|| io::Error::other("mmap returned a null mapping"))
}

/// Pins 4 KiB-page memory so it is never swapped out under a DMA. Best
/// effort: without `CAP_IPC_LOCK` or a large enough `ulimit -l` the memory
/// stays populated but unpinned, which is fine for the emulated card.
fn pin(ptr: NonNull<u8>, len: usize) {
    // SAFETY: `[ptr, ptr + len)` is a mapping we just created; mlock only
    // changes its residency, never its contents. The result is ignored on
    // purpose (best effort, see above).
    let _ = unsafe { libc::mlock(ptr.as_ptr().cast(), len) };
}

/// Creates a memfd named for diagnostics (`/proc/<pid>/fd`).
fn memfd(flags: libc::c_uint) -> io::Result<OwnedFd> {
    const NAME: &CStr = c"iomemory-dma";
    // SAFETY: NAME is a valid NUL-terminated string; memfd_create only
    // returns a new descriptor.
    let fd = unsafe { libc::memfd_create(NAME.as_ptr(), flags | libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by memfd_create and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// A memfd of `len` bytes mapped shared.
fn map_memfd(len: usize, flags: libc::c_uint) -> io::Result<(NonNull<u8>, OwnedFd)> {
    use std::os::fd::AsRawFd;
    let fd = memfd(flags)?;
    let size = libc::off_t::try_from(len).map_err(|_| io::Error::from_raw_os_error(libc::EFBIG))?;
    // SAFETY: `fd` is an open memfd we own; ftruncate only sets its size.
    if unsafe { libc::ftruncate(fd.as_raw_fd(), size) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let ptr = map(len, libc::MAP_SHARED, fd.as_raw_fd())?;
    Ok((ptr, fd))
}

impl DmaRegion {
    /// Allocates at least `len` bytes of private DMA memory: 2 MiB hugepages
    /// when reserved (length rounded up to 2 MiB), else pinned 4 KiB pages
    /// (length rounded up to 4 KiB, one notice on stderr per process).
    pub fn allocate(space: &Arc<IovaSpace>, len: usize) -> Result<DmaRegion, DmaError> {
        Self::allocate_private(space, len, Pages::PreferHuge)
    }

    /// Allocates at least `len` bytes on 4 KiB pages only, rounded up to
    /// 4 KiB. For small areas (queue rings) where a 2 MiB page would waste
    /// memory.
    pub fn allocate_small(space: &Arc<IovaSpace>, len: usize) -> Result<DmaRegion, DmaError> {
        Self::allocate_private(space, len, Pages::Small)
    }

    /// Allocates at least `len` bytes of DMA memory that another process can
    /// map: a memfd (hugetlb when 2 MiB hugepages are reserved, else ordinary
    /// shmem pages, pinned best effort) mapped `MAP_SHARED`. The memfd is
    /// kept by the region; [`Self::memfd`] lends it out (e.g. to send over a
    /// vhost-user socket). Offset 0 of the memfd is [`Self::as_ptr`].
    pub fn allocate_shared(space: &Arc<IovaSpace>, len: usize) -> Result<DmaRegion, DmaError> {
        let huge_len = round_len(len, HUGEPAGE_SIZE)?;
        let (ptr, fd, len, hugepage) = match map_memfd(
            huge_len,
            libc::MFD_HUGETLB | libc::MFD_HUGE_2MB as libc::c_uint,
        ) {
            Ok((ptr, fd)) => (ptr, fd, huge_len, true),
            Err(_) => {
                note_fallback();
                let len = round_len(len, PAGE_SIZE)?;
                let (ptr, fd) =
                    map_memfd(len, 0).map_err(|source| DmaError::Map { len, source })?;
                pin(ptr, len);
                (ptr, fd, len, false)
            }
        };
        Self::register(space, ptr, len, hugepage, Some(fd))
    }

    fn allocate_private(
        space: &Arc<IovaSpace>,
        len: usize,
        pages: Pages,
    ) -> Result<DmaRegion, DmaError> {
        let anon = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS;
        if pages == Pages::PreferHuge {
            let huge_len = round_len(len, HUGEPAGE_SIZE)?;
            match map(huge_len, anon | libc::MAP_HUGETLB | libc::MAP_HUGE_2MB, -1) {
                Ok(ptr) => return Self::register(space, ptr, huge_len, true, None),
                Err(_) => note_fallback(),
            }
        }
        let len = round_len(len, PAGE_SIZE)?;
        let ptr = map(len, anon, -1).map_err(|source| DmaError::Map { len, source })?;
        pin(ptr, len);
        Self::register(space, ptr, len, false, None)
    }

    /// Wraps a fresh mapping, registering it; unmaps it if registration fails.
    fn register(
        space: &Arc<IovaSpace>,
        ptr: NonNull<u8>,
        len: usize,
        hugepage: bool,
        memfd: Option<OwnedFd>,
    ) -> Result<DmaRegion, DmaError> {
        // Build the region first so its Drop unmaps on the error path too.
        let mut region = DmaRegion {
            ptr,
            len,
            hugepage,
            space: Arc::clone(space),
            handle: None,
            memfd,
        };
        region.handle = Some(space.register(ptr.as_ptr(), len)?);
        Ok(region)
    }

    /// Host address of the first byte.
    #[inline]
    pub fn as_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    /// IOVA of the first byte (equal to its virtual address).
    #[inline]
    pub fn iova(&self) -> u64 {
        self.ptr.as_ptr() as u64
    }

    /// Length in bytes, after rounding to the page size.
    #[inline]
    pub fn len(&self) -> usize {
        self.len
    }

    /// Always false: regions are at least one page. Present for API symmetry.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether the region is backed by 2 MiB hugepages.
    #[inline]
    pub fn is_hugepage(&self) -> bool {
        self.hugepage
    }

    /// The memfd behind a region from [`Self::allocate_shared`].
    pub fn memfd(&self) -> Option<BorrowedFd<'_>> {
        self.memfd.as_ref().map(|fd| fd.as_fd())
    }

    /// IOVA of byte `offset`, or `None` if `offset >= len()`.
    #[inline]
    pub fn iova_of(&self, offset: usize) -> Option<u64> {
        (offset < self.len).then(|| self.iova() + offset as u64)
    }

    /// Host address of byte `offset`, or `None` if `offset >= len()`.
    #[inline]
    pub fn ptr_at(&self, offset: usize) -> Option<*mut u8> {
        // SAFETY: `offset < len`, so the result stays inside the mapping.
        (offset < self.len).then(|| unsafe { self.ptr.as_ptr().add(offset) })
    }

    /// Checks that `[offset, offset + len)` lies inside the region.
    fn check(&self, offset: usize, len: usize) -> Result<(), DmaError> {
        match offset.checked_add(len) {
            Some(end) if end <= self.len => Ok(()),
            _ => Err(DmaError::OutOfBounds {
                offset,
                len,
                size: self.len,
            }),
        }
    }

    /// Copies `data` into the region at `offset` (host-side fill before the
    /// memory is handed to a device).
    pub fn fill(&mut self, offset: usize, data: &[u8]) -> Result<(), DmaError> {
        self.check(offset, data.len())?;
        // SAFETY: the range was bounds-checked against our live mapping, and
        // `data` is ordinary host memory that cannot overlap a DMA mapping
        // we own exclusively.
        unsafe {
            ptr::copy_nonoverlapping(data.as_ptr(), self.ptr.as_ptr().add(offset), data.len())
        };
        Ok(())
    }

    /// Copies `out.len()` bytes from the region at `offset` into `out`.
    pub fn copy_out(&self, offset: usize, out: &mut [u8]) -> Result<(), DmaError> {
        self.check(offset, out.len())?;
        // SAFETY: the range was bounds-checked against our live mapping;
        // `out` is a distinct host buffer (a `&mut` cannot alias the mapping,
        // which never has references into it).
        unsafe {
            ptr::copy_nonoverlapping(self.ptr.as_ptr().add(offset), out.as_mut_ptr(), out.len())
        };
        Ok(())
    }
}

impl Drop for DmaRegion {
    fn drop(&mut self) {
        // Unregister first: from here on the card can no longer reach it.
        if let Some(handle) = self.handle.take() {
            self.space.unregister(handle);
        }
        // SAFETY: `ptr`/`len` are exactly the mapping created in `allocate*`,
        // owned by this region alone, and no reference into it exists.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

/// Reads one unsigned number from a sysfs/procfs file.
fn read_count(path: &str) -> io::Result<u64> {
    let text = std::fs::read_to_string(path)?;
    text.trim().parse().map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{path}: not a number: {text:?}"),
        )
    })
}

/// Number of 2 MiB hugepages free for new mappings (free minus reserved),
/// or 0 when the kernel has no hugepage support.
///
/// Reads the 2 MiB pool in sysfs; without it, `HugePages_Free - HugePages_Rsvd`
/// from `/proc/meminfo` when the default hugepage size is 2 MiB.
pub fn hugepages_available() -> u64 {
    let sysfs = |name: &str| read_count(&format!("{HUGEPAGE_SYSFS}/{name}"));
    if let (Ok(free), Ok(resv)) = (sysfs("free_hugepages"), sysfs("resv_hugepages")) {
        return free.saturating_sub(resv);
    }
    let Ok(meminfo) = std::fs::read_to_string("/proc/meminfo") else {
        return 0;
    };
    let field = |name: &str| {
        meminfo
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse::<u64>().ok())
    };
    match (
        field("Hugepagesize:"),
        field("HugePages_Free:"),
        field("HugePages_Rsvd:"),
    ) {
        (Some(2048), Some(free), resv) => free.saturating_sub(resv.unwrap_or(0)),
        _ => 0,
    }
}

/// Serialises read-modify-write of the pool size within this process.
static NR_HUGEPAGES_LOCK: Mutex<()> = Mutex::new(());

/// Raises the 2 MiB hugepage pool for as long as it lives (tests, benches).
///
/// Needs root. Drop gives back exactly the pages it added, so nested or
/// overlapping reservations in one process restore the original size.
#[derive(Debug)]
pub struct HugepageReservation {
    added: u64,
}

impl HugepageReservation {
    /// Adds `n` pages to the 2 MiB hugepage pool
    /// (`/sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages`). Fails,
    /// changing nothing, when not permitted or when the kernel cannot find
    /// `n` free 2 MiB blocks (memory too fragmented).
    pub fn reserve(n: u64) -> Result<HugepageReservation, DmaError> {
        let path = format!("{HUGEPAGE_SYSFS}/nr_hugepages");
        let sysctl = |source| DmaError::HugepageSysctl {
            path: path.clone(),
            source,
        };
        let _guard = NR_HUGEPAGES_LOCK.lock();
        let before = read_count(&path).map_err(sysctl)?;
        std::fs::write(&path, (before + n).to_string()).map_err(sysctl)?;
        let after = read_count(&path).map_err(sysctl)?;
        let added = after.saturating_sub(before);
        if added < n {
            // Give back the partial grant; the pool may not shrink below in-use pages,
            // which the kernel handles by making them surplus.
            let _ = std::fs::write(&path, before.to_string());
            return Err(DmaError::HugepagesUnavailable {
                requested: n,
                granted: added,
            });
        }
        Ok(HugepageReservation { added })
    }

    /// Pages this reservation added.
    pub fn pages(&self) -> u64 {
        self.added
    }
}

impl Drop for HugepageReservation {
    fn drop(&mut self) {
        let path = format!("{HUGEPAGE_SYSFS}/nr_hugepages");
        let _guard = NR_HUGEPAGES_LOCK.lock();
        if let Ok(now) = read_count(&path) {
            // Nothing useful to do if this fails in Drop: the pool just stays larger.
            let _ = std::fs::write(&path, now.saturating_sub(self.added).to_string());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dma::IovaTranslate;

    #[test]
    fn small_region_rounds_aligns_and_round_trips() {
        let space = Arc::new(IovaSpace::new());
        let mut region = DmaRegion::allocate_small(&space, 5000).unwrap();
        assert_eq!(region.len(), 8192);
        assert!(!region.is_hugepage());
        assert_eq!(region.as_ptr() as usize % PAGE_SIZE, 0);
        assert_eq!(region.iova(), region.as_ptr() as u64);
        assert!(region.memfd().is_none());

        let pattern: Vec<u8> = (0..region.len()).map(|i| (i * 7 + 3) as u8).collect();
        region.fill(0, &pattern).unwrap();
        let mut back = vec![0u8; region.len()];
        region.copy_out(0, &mut back).unwrap();
        assert_eq!(back, pattern);

        let mut tail = [0u8; 4];
        region.copy_out(8188, &mut tail).unwrap();
        assert_eq!(tail, pattern[8188..]);
    }

    #[test]
    fn out_of_range_accesses_are_refused() {
        let space = Arc::new(IovaSpace::new());
        let mut region = DmaRegion::allocate_small(&space, 4096).unwrap();
        assert!(matches!(
            region.fill(4095, &[1, 2]),
            Err(DmaError::OutOfBounds {
                offset: 4095,
                len: 2,
                size: 4096
            })
        ));
        assert!(region.copy_out(usize::MAX, &mut [0u8; 2]).is_err());
        assert_eq!(
            region.ptr_at(4095),
            Some(region.as_ptr().wrapping_add(4095))
        );
        assert_eq!(region.ptr_at(4096), None);
        assert_eq!(region.iova_of(100), Some(region.iova() + 100));
        assert_eq!(region.iova_of(4096), None);
        assert!(matches!(
            DmaRegion::allocate_small(&space, 0),
            Err(DmaError::InvalidLength { len: 0 })
        ));
        assert!(DmaRegion::allocate(&space, usize::MAX).is_err());
    }

    #[test]
    fn region_is_registered_for_its_lifetime() {
        let space = Arc::new(IovaSpace::new());
        let region = DmaRegion::allocate_small(&space, 4096).unwrap();
        let iova = region.iova();
        assert_eq!(
            space.translate(iova, 4096).unwrap().as_ptr(),
            region.as_ptr()
        );
        assert!(space.translate(iova, 4097).is_none());
        drop(region);
        assert!(space.translate(iova, 1).is_none());
        assert_eq!(space.region_count(), 0);
    }

    #[test]
    fn shared_region_is_visible_through_its_memfd() {
        use std::os::fd::AsRawFd;
        let space = Arc::new(IovaSpace::new());
        let mut region = DmaRegion::allocate_shared(&space, 4096).unwrap();
        region.fill(10, b"vhost").unwrap();
        let fd = region.memfd().expect("shared regions keep their memfd");
        // Map the memfd a second time, as a peer process would.
        let second = map(region.len(), libc::MAP_SHARED, fd.as_raw_fd()).unwrap();
        let mut seen = [0u8; 5];
        // SAFETY: `second` maps at least 15 bytes of the memfd; `seen` is a
        // distinct stack buffer.
        unsafe { ptr::copy_nonoverlapping(second.as_ptr().add(10), seen.as_mut_ptr(), 5) };
        // SAFETY: unmapping the second view we created above.
        unsafe { libc::munmap(second.as_ptr().cast(), region.len()) };
        assert_eq!(&seen, b"vhost");
        assert!(space.translate(region.iova(), region.len()).is_some());
    }
}
