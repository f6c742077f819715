//! I/O buffers in DMA memory that a channel can hand to the card directly.

use crate::dma::{DmaError, DmaRegion};
use crate::vsl::IoVec;

/// A page-aligned buffer in DMA memory, for callers that do not run their
/// own pool.
#[derive(Debug)]
pub struct IoBuffer {
    region: DmaRegion,
    len: usize,
}

impl IoBuffer {
    pub(crate) fn new(region: DmaRegion, len: usize) -> Self {
        Self { region, len }
    }

    /// The whole buffer as one I/O vector.
    ///
    /// # Safety
    /// The buffer must outlive every request that uses the vector, and must
    /// not be read or written by the host while such a request is in flight.
    pub unsafe fn iovec(&self) -> IoVec {
        // SAFETY: the region is DMA memory registered with the card; the
        // caller upholds the lifetime and exclusivity contract above.
        unsafe { IoVec::new(self.region.as_ptr(), self.region.iova(), self.len) }
    }

    /// A slice of the buffer as an I/O vector, or `None` if out of range.
    ///
    /// # Safety
    /// As for [`Self::iovec`], for that slice.
    pub unsafe fn iovec_at(&self, offset: usize, len: usize) -> Option<IoVec> {
        if offset.checked_add(len)? > self.len {
            return None;
        }
        // SAFETY: the slice lies inside the registered region (checked
        // above); the caller upholds the contract of `iovec`.
        Some(unsafe { IoVec::new(self.region.as_ptr().wrapping_add(offset), self.region.iova() + offset as u64, len) })
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the buffer is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Copies `data` in at `offset` (no I/O may be in flight on this range).
    pub fn fill(&mut self, offset: usize, data: &[u8]) -> Result<(), DmaError> {
        if offset + data.len() > self.len {
            return Err(DmaError::OutOfBounds { offset, len: data.len(), size: self.len });
        }
        self.region.fill(offset, data)
    }

    /// Copies out from `offset` (no I/O may be in flight on this range).
    pub fn copy_out(&self, offset: usize, out: &mut [u8]) -> Result<(), DmaError> {
        if offset + out.len() > self.len {
            return Err(DmaError::OutOfBounds { offset, len: out.len(), size: self.len });
        }
        self.region.copy_out(offset, out)
    }
}
