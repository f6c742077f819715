//! The VFIO container: one IOMMU domain, and the [`IommuMap`] that DMA
//! memory registers through.
//!
//! A container with the device's group attached owns the IOMMU page tables.
//! Every [`DmaRegion`](crate::dma::DmaRegion) allocated in an
//! [`IovaSpace`](crate::dma::IovaSpace) built on it is mapped with
//! `VFIO_IOMMU_MAP_DMA` at IOVA = its virtual address, and unmapped before
//! it is freed. Memory never registered stays unreachable: the IOMMU blocks
//! (and the kernel logs) any DMA to it.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use vfio_ioctls::VfioContainer;

use crate::dma::IommuMap;

/// A VFIO type1v2 container as an IOMMU mapper.
pub struct IommuContainer {
    container: Arc<VfioContainer>,
    /// False once the device's group left the container: the kernel tore
    /// down the domain and every mapping with it.
    attached: AtomicBool,
    mapped_bytes: AtomicU64,
    unmap_failures: AtomicU64,
}

impl std::fmt::Debug for IommuContainer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IommuContainer")
            .field("attached", &self.attached.load(Ordering::Relaxed))
            .field("mapped_bytes", &self.mapped_bytes())
            .field("unmap_failures", &self.unmap_failures())
            .finish()
    }
}

impl IommuContainer {
    /// Wraps an opened container.
    pub(crate) fn new(container: Arc<VfioContainer>) -> Self {
        Self {
            container,
            attached: AtomicBool::new(true),
            mapped_bytes: AtomicU64::new(0),
            unmap_failures: AtomicU64::new(0),
        }
    }

    /// Marks the domain gone (the device closed): later unmaps are no-ops,
    /// later maps fail.
    pub(crate) fn detach(&self) {
        self.attached.store(false, Ordering::Release);
    }

    /// Bytes currently mapped for DMA.
    pub fn mapped_bytes(&self) -> u64 {
        self.mapped_bytes.load(Ordering::Relaxed)
    }

    /// Unmaps the kernel refused (each also reported on stderr).
    pub fn unmap_failures(&self) -> u64 {
        self.unmap_failures.load(Ordering::Relaxed)
    }
}

/// The OS error inside a `vfio-ioctls` error, if it carries one.
fn os_error(e: &vfio_ioctls::VfioError) -> std::io::Error {
    use vfio_ioctls::VfioError as E;
    match e {
        E::IommuDmaMap(sys) | E::IommuDmaUnmap(sys) => {
            std::io::Error::from_raw_os_error(sys.errno())
        }
        other => std::io::Error::other(other.to_string()),
    }
}

impl IommuMap for IommuContainer {
    unsafe fn map(&self, iova: u64, vaddr: *mut u8, len: usize) -> std::io::Result<()> {
        if !self.attached.load(Ordering::Acquire) {
            return Err(std::io::Error::new(
                std::io::ErrorKind::NotConnected,
                "the VFIO device was closed; its IOMMU domain is gone",
            ));
        }
        // SAFETY: our caller upholds `IommuMap::map`'s contract (the range
        // stays mapped until `unmap`, and is reached only through raw
        // pointers), which is exactly what `vfio_dma_map` requires.
        unsafe { self.container.vfio_dma_map(iova, len, vaddr) }.map_err(|e| os_error(&e))?;
        self.mapped_bytes.fetch_add(len as u64, Ordering::Relaxed);
        Ok(())
    }

    fn unmap(&self, iova: u64, len: usize) {
        if !self.attached.load(Ordering::Acquire) {
            return;
        }
        match self.container.vfio_dma_unmap(iova, len) {
            Ok(()) => {
                self.mapped_bytes.fetch_sub(len as u64, Ordering::Relaxed);
            }
            Err(e) => {
                self.unmap_failures.fetch_add(1, Ordering::Relaxed);
                eprintln!(
                    "iomemory: VFIO could not unmap DMA range {iova:#x}+{len:#x}: {}; \
                     the device may still reach it until it is closed",
                    os_error(&e)
                );
            }
        }
    }
}
