//! DMA memory: hugepage-backed regions, their IOVAs, and buffer pools.
//!
//! Everything a card reads or writes lives here. Device-visible memory is
//! only touched through raw pointers (never Rust references) because the
//! device may write it at any time.

mod iommu;
mod iova;
mod pool;
mod region;

pub use iommu::IommuMap;
pub use iova::{IdentityTranslate, IovaHandle, IovaSpace, IovaTranslate, MAX_IOVA_REGIONS};
pub use pool::{DmaBuf, DmaBufCache, DmaPool};
pub use region::{hugepages_available, DmaRegion, HugepageReservation, HUGEPAGE_SIZE, PAGE_SIZE};

/// Errors of the DMA layer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DmaError {
    /// A registration named an empty or null range.
    #[error("invalid DMA region: iova {iova:#x}, length {len} (a region needs a non-null address and a non-zero length)")]
    InvalidRegion { iova: u64, len: usize },
    /// The IOVA registry is full.
    #[error(
        "too many DMA regions registered (limit {max}); free unused pools or allocate larger ones"
    )]
    TooManyRegions { max: usize },
    /// A region length of zero, or one too large to map.
    #[error(
        "cannot allocate a DMA region of {len} bytes (the length must be between 1 and isize::MAX)"
    )]
    InvalidLength { len: usize },
    /// `mmap`/`memfd_create` refused the memory.
    #[error("mapping {len} bytes of DMA memory failed: {source} (check free memory and `ulimit -l`, or allocate less)")]
    Map {
        len: usize,
        #[source]
        source: std::io::Error,
    },
    /// An access outside a region or buffer.
    #[error("access of {len} bytes at offset {offset} is outside the {size}-byte DMA area; keep offset + length within the buffer")]
    OutOfBounds {
        offset: usize,
        len: usize,
        size: usize,
    },
    /// Pool geometry that cannot be built.
    #[error("invalid DMA pool: {count} buffers of {buf_size} bytes (need buf_size >= 1, 1 <= count < 2^32, and a total that fits in memory)")]
    InvalidPool { buf_size: usize, count: usize },
    /// The hugepage pool size could not be read or changed.
    #[error("cannot change the hugepage pool through {path}: {source} (this needs root and a kernel with hugetlbfs)")]
    HugepageSysctl {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// The kernel granted fewer hugepages than asked for.
    #[error("asked the kernel for {requested} more 2 MiB hugepages but it found only {granted} (memory is fragmented; reserve at boot with hugepages=N)")]
    HugepagesUnavailable { requested: u64, granted: u64 },
}
