//! A controller's register BAR, accessed only through volatile loads and
//! stores (never Rust references: the device changes it underneath us).

use std::ptr::NonNull;
use std::sync::Arc;

/// What sits behind a BAR when the device is not silicon.
///
/// Real hardware watches its own registers; an emulated controller is told
/// about every register write the host makes, exactly as a trapping
/// hypervisor would deliver an MMIO exit. It is also given the chance to run
/// when the host polls an empty completion queue, so completions that are
/// due later (emulated NAND timings) can be posted.
pub trait DeviceNotify: Send + Sync {
    /// The host stored to the register at `offset`.
    fn mmio_written(&self, offset: usize);
    /// The host polled completion queue `qid` and found it empty.
    fn idle_poll(&self, qid: u16);
}

/// A mapped register region (a PCI BAR, or the emulated card's register page).
#[derive(Clone)]
pub struct Mmio {
    base: NonNull<u8>,
    len: usize,
    notify: Option<Arc<dyn DeviceNotify>>,
    /// Keeps whatever owns the mapping alive as long as any handle exists.
    _owner: Option<Arc<dyn Send + Sync>>,
}

impl std::fmt::Debug for Mmio {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mmio")
            .field("base", &self.base)
            .field("len", &self.len)
            .field("emulated", &self.notify.is_some())
            .finish()
    }
}

// SAFETY: `Mmio` is a pointer to device registers plus Arc'd owner/notifier.
// All accesses are single volatile loads/stores of naturally aligned u32/u64,
// which are atomic on the platforms we support (x86-64, aarch64) and are how
// every driver shares registers with a device. The owner keeps the mapping
// alive, so the pointer is valid from any thread.
unsafe impl Send for Mmio {}
// SAFETY: see `Send`: concurrent volatile register accesses are the normal
// mode of operation for MMIO (e.g. two threads ringing different doorbells).
unsafe impl Sync for Mmio {}

impl Mmio {
    /// Wraps a register region.
    ///
    /// # Safety
    /// `base` must point to `len` bytes that stay mapped, readable and
    /// writable while `owner` (or, if `None`, the caller) keeps them alive,
    /// and be at least 8-byte aligned.
    pub unsafe fn new(
        base: NonNull<u8>,
        len: usize,
        notify: Option<Arc<dyn DeviceNotify>>,
        owner: Option<Arc<dyn Send + Sync>>,
    ) -> Self {
        Self {
            base,
            len,
            notify,
            _owner: owner,
        }
    }

    /// Size of the region in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the region is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    #[inline]
    fn checked<T>(&self, offset: usize) -> *mut T {
        let size = std::mem::size_of::<T>();
        assert!(
            offset % size == 0 && offset + size <= self.len,
            "register offset {offset:#x} outside BAR of {} bytes or misaligned",
            self.len
        );
        // Offset is in bounds (checked above), so the add stays in the mapping.
        self.base.as_ptr().wrapping_add(offset).cast()
    }

    /// Loads a 32-bit register.
    #[inline]
    pub fn read32(&self, offset: usize) -> u32 {
        let ptr = self.checked::<u32>(offset);
        // SAFETY: `checked` bounds- and alignment-checked the offset inside
        // the mapping that `new`'s contract keeps alive.
        unsafe { ptr.read_volatile() }
    }

    /// Loads a 64-bit register.
    #[inline]
    pub fn read64(&self, offset: usize) -> u64 {
        let ptr = self.checked::<u64>(offset);
        // SAFETY: as in `read32`.
        unsafe { ptr.read_volatile() }
    }

    /// Stores a 32-bit register (and tells an emulated device about it).
    #[inline]
    pub fn write32(&self, offset: usize, value: u32) {
        self.store32(offset, value);
        if let Some(notify) = &self.notify {
            notify.mmio_written(offset);
        }
    }

    /// Stores a 64-bit register (and tells an emulated device about it).
    #[inline]
    pub fn write64(&self, offset: usize, value: u64) {
        let ptr = self.checked::<u64>(offset);
        // SAFETY: as in `read32`.
        unsafe { ptr.write_volatile(value) };
        if let Some(notify) = &self.notify {
            notify.mmio_written(offset);
        }
    }

    /// Stores a 32-bit register without notifying anyone: for the device
    /// side of an emulated controller updating its own status registers.
    #[inline]
    pub fn store32(&self, offset: usize, value: u32) {
        let ptr = self.checked::<u32>(offset);
        // SAFETY: as in `read32`.
        unsafe { ptr.write_volatile(value) };
    }

    /// Stores a 64-bit register without notifying anyone (device side).
    #[inline]
    pub fn store64(&self, offset: usize, value: u64) {
        let ptr = self.checked::<u64>(offset);
        // SAFETY: as in `read32`.
        unsafe { ptr.write_volatile(value) };
    }

    /// Gives an emulated device the chance to post due completions for `qid`.
    #[inline]
    pub fn idle_poll(&self, qid: u16) {
        if let Some(notify) = &self.notify {
            notify.idle_poll(qid);
        }
    }
}
