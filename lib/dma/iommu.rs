//! The hook that mirrors DMA registrations into a hardware IOMMU.
//!
//! An [`IovaSpace`](super::IovaSpace) records which memory a device may
//! reach. For the emulated card that record *is* the IOMMU. For a real
//! device behind VFIO the kernel's IOMMU must be told as well: a space made
//! with [`IovaSpace::with_iommu`](super::IovaSpace::with_iommu) calls
//! [`IommuMap::map`] for every region it registers (before the region
//! becomes visible) and [`IommuMap::unmap`] when it is unregistered (before
//! the memory is unmapped from the process). IOVA = virtual address, so
//! `iova == vaddr` in every call.

/// Something that can make host memory reachable by a device, such as a VFIO
/// type1 container.
///
/// Implementations are called rarely (pool and queue creation), never on
/// the data path.
pub trait IommuMap: Send + Sync {
    /// Maps `[vaddr, vaddr + len)` for device reads and writes at `iova`.
    ///
    /// # Safety
    /// From this call until [`Self::unmap`] with the same `iova` and `len`,
    /// the device may read and write the range at any time. The caller
    /// keeps it mapped in this process for that whole time and touches it
    /// only through raw pointers, never a Rust reference (it is DMA memory,
    /// as [`DmaRegion`](super::DmaRegion) keeps it).
    unsafe fn map(&self, iova: u64, vaddr: *mut u8, len: usize) -> std::io::Result<()>;

    /// Removes the mapping made by [`Self::map`] for the same `iova` and
    /// `len`. Cannot fail from the caller's point of view (it runs from
    /// `Drop`): an implementation reports a failure itself.
    fn unmap(&self, iova: u64, len: usize);
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use parking_lot::Mutex;

    use super::IommuMap;
    use crate::dma::{DmaError, DmaRegion, IovaSpace, IovaTranslate};

    /// Records every call; refuses maps once `fail` is set.
    #[derive(Default)]
    struct Recorder {
        calls: Mutex<Vec<(&'static str, u64, usize)>>,
        fail: Mutex<bool>,
    }

    impl IommuMap for Recorder {
        unsafe fn map(&self, iova: u64, vaddr: *mut u8, len: usize) -> std::io::Result<()> {
            assert_eq!(iova, vaddr as u64, "IOVA must equal the virtual address");
            if *self.fail.lock() {
                return Err(std::io::Error::from_raw_os_error(libc::ENOMEM));
            }
            self.calls.lock().push(("map", iova, len));
            Ok(())
        }
        fn unmap(&self, iova: u64, len: usize) {
            self.calls.lock().push(("unmap", iova, len));
        }
    }

    #[test]
    fn regions_are_mapped_while_registered_and_unmapped_on_drop() {
        let rec = Arc::new(Recorder::default());
        let space = Arc::new(IovaSpace::with_iommu(rec.clone()));
        let region = DmaRegion::allocate_small(&space, 10_000).unwrap();
        let (iova, len) = (region.iova(), region.len());
        assert_eq!(*rec.calls.lock(), vec![("map", iova, len)]);
        assert!(space.translate(iova, len).is_some());
        drop(region);
        assert_eq!(
            *rec.calls.lock(),
            vec![("map", iova, len), ("unmap", iova, len)]
        );
        assert!(space.translate(iova, 1).is_none());
        assert_eq!(space.region_count(), 0);
    }

    #[test]
    fn a_refused_mapping_fails_the_allocation_and_frees_the_slot() {
        let rec = Arc::new(Recorder::default());
        *rec.fail.lock() = true;
        let space = Arc::new(IovaSpace::with_iommu(rec.clone()));
        let err = DmaRegion::allocate_small(&space, 4096).unwrap_err();
        match &err {
            DmaError::Map { len, source } => {
                assert_eq!(*len, 4096);
                assert_eq!(source.raw_os_error(), Some(libc::ENOMEM));
            }
            other => panic!("expected a Map error, got {other:?}"),
        }
        assert!(err.to_string().contains("ulimit -l"), "{err}");
        assert_eq!(space.region_count(), 0);
        assert!(rec.calls.lock().is_empty());
        // The space still works once the IOMMU accepts mappings again.
        *rec.fail.lock() = false;
        let region = DmaRegion::allocate_small(&space, 4096).unwrap();
        assert_eq!(space.region_count(), 1);
        assert_eq!(rec.calls.lock().len(), 1);
        drop(region);
    }

    #[test]
    fn a_space_without_iommu_calls_nothing() {
        let space = Arc::new(IovaSpace::new());
        let region = DmaRegion::allocate_small(&space, 4096).unwrap();
        assert!(space.translate(region.iova(), 4096).is_some());
        assert!(!space.has_iommu());
    }
}
