//! iomemory: a userspace, poll-mode driver stack for Fusion-io ioMemory cards.
//!
//! Layers, top to bottom (see `DESIGN.md`): block API (`blk`), host flash
//! translation layer (`vsl`), NVMe-style queue pairs (`nvme`), the raw-flash
//! card command set (`card`), DMA memory (`dma`), and the emulated card
//! (`emu`) that is the embedded default.

pub mod blk;
pub mod card;
pub mod dma;
pub mod emu;
pub mod nvme;
pub mod pci;
pub mod units;
pub mod vfio;
pub mod vsl;
