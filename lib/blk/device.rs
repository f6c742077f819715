//! Opening a card as a block device.

use std::path::Path;
use std::sync::Arc;

use super::buffer::IoBuffer;
use crate::card::{Card, CardError};
use crate::dma::{DmaError, DmaPool, DmaRegion};
use crate::emu::{EmuError, EmuOptions, NandArray};
use crate::vsl::{AttachOptions, FormatOptions, Vsl, VslChannel, VslError, VslStatus};

/// Errors opening or managing a block device.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BlkError {
    /// The card image could not be opened.
    #[error(transparent)]
    Emu(#[from] EmuError),
    /// The card did not come up.
    #[error(transparent)]
    Card(#[from] CardError),
    /// The flash translation layer refused.
    #[error(transparent)]
    Vsl(#[from] VslError),
    /// DMA memory could not be had.
    #[error(transparent)]
    Dma(#[from] DmaError),
}

/// How to open a device.
#[derive(Debug, Clone, Default)]
pub struct OpenOptions {
    /// Format the card first if it holds no VSL superblock.
    pub format_if_blank: bool,
    /// Format options used when formatting.
    pub format: FormatOptions,
    /// Attach options.
    pub attach: AttachOptions,
    /// Emulated controller options.
    pub emu: EmuOptions,
}

/// What a device can do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Capabilities {
    /// Unmap (TRIM/discard) is supported and persists across power loss.
    pub unmap: bool,
    /// Write-zeroes is supported (as an unmap: zeroed blocks cost no flash).
    pub write_zeroes: bool,
    /// Flush is meaningful (the card may buffer acknowledged writes).
    pub flush: bool,
    /// Most blocks one atomic write may carry.
    pub atomic_write_max_blocks: u32,
}

/// A card as a block device. Share as `Arc<BlockDevice>`; each thread takes
/// its own [`VslChannel`] with [`BlockDevice::channel`].
pub struct BlockDevice {
    card: Arc<Card>,
    vsl: Arc<Vsl>,
}

impl std::fmt::Debug for BlockDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlockDevice")
            .field("block_size", &self.block_size())
            .field("num_blocks", &self.num_blocks())
            .finish()
    }
}

impl BlockDevice {
    /// Opens the emulated card image at `path` and attaches its VSL
    /// (`progress(done, total)` reports a dirty-attach scan or a format).
    pub fn open(
        path: &Path,
        opts: &OpenOptions,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<Arc<Self>, BlkError> {
        let nand = NandArray::open(path)?;
        let card = Card::open_emulated(nand, opts.emu)?;
        Self::attach(card, opts, progress)
    }

    /// Attaches the VSL on an open card.
    pub fn attach(
        card: Arc<Card>,
        opts: &OpenOptions,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<Arc<Self>, BlkError> {
        let vsl = match Vsl::attach(card.clone(), &opts.attach, progress) {
            Err(VslError::NotFormatted) if opts.format_if_blank => {
                Vsl::format(card.clone(), &opts.format, progress)?;
                Vsl::attach(card.clone(), &opts.attach, progress)?
            }
            other => other?,
        };
        Ok(Arc::new(Self { card, vsl }))
    }

    /// Bytes per block.
    pub fn block_size(&self) -> u32 {
        self.vsl.sector_size()
    }

    /// Number of blocks.
    pub fn num_blocks(&self) -> u64 {
        self.vsl.num_sectors()
    }

    /// Whether block `lba` holds data (written and not unmapped since):
    /// what NBD's `base:allocation` and SEEK_HOLE-style queries report.
    pub fn is_mapped(&self, lba: u64) -> bool {
        self.vsl.is_mapped(lba)
    }

    /// What the device supports.
    pub fn capabilities(&self) -> Capabilities {
        Capabilities {
            unmap: true,
            write_zeroes: true,
            flush: true,
            atomic_write_max_blocks: self.vsl.max_atomic_sectors(),
        }
    }

    /// A new I/O channel for the calling thread.
    pub fn channel(&self) -> Result<VslChannel, BlkError> {
        Ok(self.vsl.channel()?)
    }

    /// Flash translation layer status (RAM usage, write amplification,
    /// reserves, counters).
    pub fn status(&self) -> VslStatus {
        self.vsl.status()
    }

    /// The card underneath.
    pub fn card(&self) -> &Arc<Card> {
        &self.card
    }

    /// The flash translation layer.
    pub fn vsl(&self) -> &Arc<Vsl> {
        &self.vsl
    }

    /// A DMA buffer of `len` bytes the card can reach.
    pub fn alloc_buffer(&self, len: usize) -> Result<IoBuffer, BlkError> {
        let region = DmaRegion::allocate_small(self.card.dma(), len)?;
        Ok(IoBuffer::new(region, len))
    }

    /// A pool of `count` DMA buffers of `size` bytes the card can reach.
    pub fn buffer_pool(&self, size: usize, count: usize) -> Result<Arc<DmaPool>, BlkError> {
        Ok(DmaPool::new(self.card.dma(), size, count)?)
    }

    /// Writes a checkpoint and marks the card clean. Channels must be
    /// closed (dropped) first.
    pub fn detach(&self) -> Result<(), BlkError> {
        Ok(self.vsl.detach()?)
    }
}
