//! DMA memory: hugepage-backed regions, their IOVAs, and buffer pools.
//!
//! Everything a card reads or writes lives here. Device-visible memory is
//! only touched through raw pointers (never Rust references) because the
//! device may write it at any time.

mod iova;

pub use iova::{IdentityTranslate, IovaHandle, IovaSpace, IovaTranslate, MAX_IOVA_REGIONS};

/// Errors of the DMA layer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DmaError {
    /// A registration named an empty or null range.
    #[error("invalid DMA region: iova {iova:#x}, length {len} (a region needs a non-null address and a non-zero length)")]
    InvalidRegion { iova: u64, len: usize },
    /// The IOVA registry is full.
    #[error("too many DMA regions registered (limit {max}); free unused pools or allocate larger ones")]
    TooManyRegions { max: usize },
}
