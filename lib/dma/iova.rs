//! IOVA translation: the one place that turns a device-visible address into
//! a host pointer.
//!
//! A real card reaches host memory through the IOMMU, which only lets it touch
//! what was mapped with `VFIO_IOMMU_MAP_DMA`. The emulated card goes through
//! the same gate: every DMA it performs is translated by an [`IovaTranslate`],
//! so a command that names an address nobody registered fails with an
//! invalid-address status instead of scribbling over the process.
//!
//! We use IOVA = virtual address (SPDK's `iova=va` mode), so registering is
//! just recording which ranges are DMA-able.

use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, AtomicU8, AtomicUsize, Ordering};

use super::{DmaError, IommuMap};

/// Maps an I/O virtual address range to host memory.
///
/// Implementations must be lock-free on `translate`: it runs for every DMA
/// transfer of every command.
pub trait IovaTranslate: Send + Sync {
    /// Returns the host address of `iova` if the whole range
    /// `[iova, iova + len)` lies inside one registered region.
    fn translate(&self, iova: u64, len: usize) -> Option<NonNull<u8>>;
}

/// Slot states of the registration table.
const SLOT_FREE: u8 = 0;
const SLOT_BUSY: u8 = 1;
const SLOT_LIVE: u8 = 2;

/// How many distinct regions one space can hold. Pools register one large
/// region each, so this is plenty; registration beyond it is an error.
pub const MAX_IOVA_REGIONS: usize = 256;

struct Slot {
    state: AtomicU8,
    iova: AtomicU64,
    len: AtomicU64,
}

/// A registry of DMA-able memory ranges: what the emulated IOMMU lets the
/// card touch. Registration is rare (pool creation); translation is
/// lock-free and allocation-free.
pub struct IovaSpace {
    slots: Box<[Slot]>,
    /// One past the highest slot ever used, so lookups scan only that far.
    high_water: AtomicUsize,
    /// A hardware IOMMU that mirrors every registration (VFIO), if any.
    iommu: Option<std::sync::Arc<dyn IommuMap>>,
}

impl Default for IovaSpace {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for IovaSpace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IovaSpace")
            .field("regions", &self.region_count())
            .finish()
    }
}

/// Proof of a registration; pass it back to [`IovaSpace::unregister`].
#[derive(Debug)]
pub struct IovaHandle {
    slot: usize,
}

impl IovaSpace {
    /// An empty space: nothing is DMA-able until registered.
    pub fn new() -> Self {
        Self::build(None)
    }

    /// An empty space whose registrations are also mapped into `iommu`
    /// (a VFIO container): what a real device behind an IOMMU needs.
    pub fn with_iommu(iommu: std::sync::Arc<dyn IommuMap>) -> Self {
        Self::build(Some(iommu))
    }

    /// Whether registrations are mirrored into a hardware IOMMU.
    pub fn has_iommu(&self) -> bool {
        self.iommu.is_some()
    }

    fn build(iommu: Option<std::sync::Arc<dyn IommuMap>>) -> Self {
        let slots = (0..MAX_IOVA_REGIONS)
            .map(|_| Slot {
                state: AtomicU8::new(SLOT_FREE),
                iova: AtomicU64::new(0),
                len: AtomicU64::new(0),
            })
            .collect();
        Self {
            slots,
            high_water: AtomicUsize::new(0),
            iommu,
        }
    }

    /// Records `[vaddr, vaddr + len)` as DMA-able with IOVA = virtual address.
    ///
    /// The caller keeps the memory mapped until it calls [`Self::unregister`].
    /// In a space built [`with_iommu`](Self::with_iommu) the range is also
    /// mapped into the hardware IOMMU, so a device may write it at any time:
    /// it must be DMA memory that has no Rust references into it.
    // The pointer is never dereferenced here; it is recorded (and given to
    // the IOMMU) as an address, under the contract above.
    #[allow(clippy::not_unsafe_ptr_arg_deref)]
    pub fn register(&self, vaddr: *mut u8, len: usize) -> Result<IovaHandle, DmaError> {
        if vaddr.is_null() || len == 0 {
            return Err(DmaError::InvalidRegion {
                iova: vaddr as u64,
                len,
            });
        }
        for (index, slot) in self.slots.iter().enumerate() {
            if slot
                .state
                .compare_exchange(SLOT_FREE, SLOT_BUSY, Ordering::Acquire, Ordering::Relaxed)
                .is_ok()
            {
                if let Some(iommu) = &self.iommu {
                    // SAFETY: registering is the promise `IommuMap::map`
                    // needs: the caller keeps the range mapped until it
                    // unregisters it (which unmaps it from the IOMMU first)
                    // and treats it as DMA memory, never lending a Rust
                    // reference into it (DmaRegion, the registering type).
                    if let Err(source) = unsafe { iommu.map(vaddr as u64, vaddr, len) } {
                        slot.state.store(SLOT_FREE, Ordering::Release);
                        return Err(DmaError::Map { len, source });
                    }
                }
                slot.iova.store(vaddr as u64, Ordering::Relaxed);
                slot.len.store(len as u64, Ordering::Relaxed);
                self.high_water.fetch_max(index + 1, Ordering::AcqRel);
                slot.state.store(SLOT_LIVE, Ordering::Release);
                return Ok(IovaHandle { slot: index });
            }
        }
        Err(DmaError::TooManyRegions {
            max: MAX_IOVA_REGIONS,
        })
    }

    /// Removes a registration; later translations of that range fail.
    pub fn unregister(&self, handle: IovaHandle) {
        let slot = &self.slots[handle.slot];
        slot.state.store(SLOT_BUSY, Ordering::Release);
        if let Some(iommu) = &self.iommu {
            let len = slot.len.load(Ordering::Relaxed) as usize;
            iommu.unmap(slot.iova.load(Ordering::Relaxed), len);
        }
        slot.len.store(0, Ordering::Relaxed);
        slot.state.store(SLOT_FREE, Ordering::Release);
    }

    /// Number of live registrations.
    pub fn region_count(&self) -> usize {
        let high = self.high_water.load(Ordering::Acquire);
        self.slots[..high]
            .iter()
            .filter(|s| s.state.load(Ordering::Acquire) == SLOT_LIVE)
            .count()
    }
}

impl IovaTranslate for IovaSpace {
    #[inline]
    fn translate(&self, iova: u64, len: usize) -> Option<NonNull<u8>> {
        let end = iova.checked_add(len as u64)?;
        let high = self.high_water.load(Ordering::Acquire);
        for slot in &self.slots[..high] {
            if slot.state.load(Ordering::Acquire) != SLOT_LIVE {
                continue;
            }
            let base = slot.iova.load(Ordering::Relaxed);
            let region_end = base + slot.len.load(Ordering::Relaxed);
            if iova >= base && end <= region_end {
                // IOVA = VA: the address is the pointer.
                return NonNull::new(iova as usize as *mut u8);
            }
        }
        None
    }
}

/// Translation for memory registered by an embedding environment that does
/// its own IOMMU bookkeeping (SPDK's memory maps): every address is accepted
/// as its own virtual address. Only for callers that already guarantee the
/// memory is mapped for DMA.
#[derive(Debug, Default, Clone, Copy)]
pub struct IdentityTranslate;

impl IovaTranslate for IdentityTranslate {
    #[inline]
    fn translate(&self, iova: u64, _len: usize) -> Option<NonNull<u8>> {
        NonNull::new(iova as usize as *mut u8)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unregistered_addresses_do_not_translate() {
        let space = IovaSpace::new();
        let mut buf = vec![0u8; 4096];
        assert!(space.translate(buf.as_mut_ptr() as u64, 16).is_none());
    }

    #[test]
    fn registered_ranges_translate_and_bounds_are_enforced() {
        let space = IovaSpace::new();
        let mut buf = vec![0u8; 8192];
        let base = buf.as_mut_ptr();
        let handle = space.register(base, 8192).unwrap();
        assert_eq!(space.translate(base as u64, 8192).unwrap().as_ptr(), base);
        assert_eq!(
            space.translate(base as u64 + 4096, 4096).unwrap().as_ptr() as usize,
            base as usize + 4096
        );
        assert!(space.translate(base as u64 + 4096, 4097).is_none());
        assert!(space.translate(base as u64 - 1, 2).is_none());
        assert!(space.translate(u64::MAX - 1, 8).is_none());
        assert_eq!(space.region_count(), 1);
        space.unregister(handle);
        assert!(space.translate(base as u64, 1).is_none());
        assert_eq!(space.region_count(), 0);
    }

    #[test]
    fn slots_are_reused_after_unregister() {
        let space = IovaSpace::new();
        let mut buf = vec![0u8; 64];
        for _ in 0..(MAX_IOVA_REGIONS * 2) {
            let h = space.register(buf.as_mut_ptr(), 64).unwrap();
            space.unregister(h);
        }
        assert_eq!(space.region_count(), 0);
    }
}
