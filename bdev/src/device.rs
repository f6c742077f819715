//! One iomemory bdev on the Rust side: the card opened as a block device,
//! its lifecycle, its DMA registry, its counters and its bounce buffers.

use std::ffi::CString;
use std::sync::Arc;

use iomemory::blk::{BlkError, BlockDevice};
use iomemory::dma::{DmaError, DmaPool, DmaRegion};
use iomemory::vsl::VslError;
use serde_json::json;

use crate::channel::{BdevChannel, ChannelError};
use crate::dma::DmaRegistry;
use crate::lifecycle::{Lifecycle, LifecycleError};
use crate::params::{CardSource, CreateParams, ParamError};
use crate::stats::DeviceCounters;

/// Bytes per bounce buffer: the largest request bounced without a
/// dedicated allocation (SPDK's NVMe-oF and vhost targets split I/O at
/// 128 KiB by default).
pub const BOUNCE_BUF_SIZE: usize = 128 << 10;

/// Bounce buffers per device.
pub const BOUNCE_BUFS: usize = 64;

/// Why a bdev could not be created.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OpenError {
    /// Bad RPC parameters.
    #[error(transparent)]
    Params(#[from] ParamError),
    /// A real card was named; no real ioMemory card speaks our protocol.
    #[error("cannot use the card at {address}: {reason}")]
    RealCard {
        /// The PCI address given.
        address: String,
        /// Why not.
        reason: String,
    },
    /// The card holds no VSL format and formatting was not asked for.
    #[error("the card image {path} holds no VSL format; pass \"format_if_blank\": true (rpc.py: -f) to format it (this erases nothing: the card is blank)")]
    NotFormatted {
        /// The card image.
        path: String,
    },
    /// The card could not be opened or attached.
    #[error("cannot open the card: {0}")]
    Blk(#[from] BlkError),
    /// The bounce buffers could not be allocated.
    #[error("cannot allocate bounce buffers: {0}")]
    Dma(#[from] DmaError),
}

impl OpenError {
    /// The JSON-RPC error code to answer with (invalid params, or a
    /// negative errno as SPDK's own RPCs use).
    pub fn rpc_code(&self) -> i32 {
        match self {
            OpenError::Params(p) => p.rpc_code(),
            OpenError::RealCard { .. } | OpenError::NotFormatted { .. } => -libc::ENODEV,
            OpenError::Blk(_) => -libc::EIO,
            OpenError::Dma(_) => -libc::ENOMEM,
        }
    }
}

/// Why a detach failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DetachError {
    /// Detach came too early.
    #[error(transparent)]
    Lifecycle(#[from] LifecycleError),
    /// The checkpoint could not be written.
    #[error("the card could not be checkpointed: {0}; it will be recovered by a scan at the next attach")]
    Blk(#[from] BlkError),
}

/// Fault injection asked of a card that is not emulated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("power-cut injection needs an emulated card; this bdev drives real hardware")]
pub struct NotEmulated;

/// What detach did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Detached {
    /// Checkpoint written, card marked clean.
    Clean,
    /// The card was offline: nothing could be written; the next attach
    /// recovers by scanning.
    CardLost,
}

/// An iomemory bdev's state on the Rust side. Shared (`Arc`) by the shim's
/// bdev and every channel.
pub struct BdevDevice {
    params: CreateParams,
    name_c: CString,
    blk: Arc<BlockDevice>,
    dma: DmaRegistry,
    life: Lifecycle,
    counters: DeviceCounters,
    bounce: Arc<DmaPool>,
}

impl std::fmt::Debug for BdevDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BdevDevice")
            .field("name", &self.params.name)
            .field("blk", &self.blk)
            .field("state", &self.life.state())
            .finish()
    }
}

impl BdevDevice {
    /// Opens the card the parameters name (formatting it if asked and
    /// blank) and attaches its VSL.
    pub fn open(params: CreateParams) -> Result<Arc<Self>, OpenError> {
        let blk = match &params.source {
            CardSource::Image(path) => {
                match BlockDevice::open(path, &params.open_options(), &mut |_, _| {}) {
                    Ok(blk) => blk,
                    Err(BlkError::Vsl(VslError::NotFormatted)) => {
                        return Err(OpenError::NotFormatted {
                            path: path.display().to_string(),
                        })
                    }
                    Err(e) => return Err(e.into()),
                }
            }
            CardSource::Pci(address) => {
                return Err(OpenError::RealCard {
                    address: address.to_string(),
                    reason: real_card_reason(*address),
                })
            }
        };
        Self::with_block_device(params, blk)
    }

    /// Wraps an already attached block device (e.g. an in-memory card).
    pub fn with_block_device(
        params: CreateParams,
        blk: Arc<BlockDevice>,
    ) -> Result<Arc<Self>, OpenError> {
        crate::params::validate_name(&params.name)?;
        let name_c = CString::new(params.name.clone()).map_err(|_| ParamError::BadName {
            name: params.name.clone(),
            reason: "it contains a NUL byte",
        })?;
        let space = blk.card().dma().clone();
        let region = DmaRegion::allocate_small(&space, BOUNCE_BUF_SIZE * BOUNCE_BUFS)?;
        let bounce = DmaPool::from_region(region, BOUNCE_BUF_SIZE)?;
        Ok(Arc::new(Self {
            params,
            name_c,
            dma: DmaRegistry::new(space),
            blk,
            life: Lifecycle::new(),
            counters: DeviceCounters::default(),
            bounce,
        }))
    }

    /// The bdev name.
    pub fn name(&self) -> &str {
        &self.params.name
    }

    /// The bdev name as a C string.
    pub fn name_c(&self) -> &CString {
        &self.name_c
    }

    /// The parameters it was created with.
    pub fn params(&self) -> &CreateParams {
        &self.params
    }

    /// Bytes per block.
    pub fn block_size(&self) -> u32 {
        self.blk.block_size()
    }

    /// Blocks.
    pub fn num_blocks(&self) -> u64 {
        self.blk.num_blocks()
    }

    /// Most blocks one read or write may carry (SPDK splits larger ones).
    pub fn max_rw_blocks(&self) -> u32 {
        (iomemory::vsl::MAX_REQUEST_BYTES / self.block_size().max(1) as usize) as u32
    }

    /// The VSL format's UUID: the bdev's UUID, stable across restarts.
    pub fn uuid(&self) -> [u8; 16] {
        self.blk.vsl().superblock().uuid
    }

    /// The block device underneath.
    pub fn block_device(&self) -> &Arc<BlockDevice> {
        &self.blk
    }

    /// SPDK memory registered for the card's DMA.
    pub fn dma(&self) -> &DmaRegistry {
        &self.dma
    }

    /// The lifecycle.
    pub fn lifecycle(&self) -> &Lifecycle {
        &self.life
    }

    /// I/O counters.
    pub fn counters(&self) -> &DeviceCounters {
        &self.counters
    }

    /// Shared bounce buffers (for SPDK memory the card cannot reach).
    pub fn bounce_pool(&self) -> &Arc<DmaPool> {
        &self.bounce
    }

    /// Whether acknowledged writes may be lost at power loss until a flush
    /// (the card has no power-loss protection).
    pub fn volatile_cache(&self) -> bool {
        !self.blk.status().powerloss_protection
    }

    /// Whether the card has gone offline.
    pub fn card_offline(&self) -> bool {
        self.blk.vsl().is_offline()
    }

    /// Opens an I/O channel for the calling thread.
    pub fn open_channel(self: &Arc<Self>) -> Result<BdevChannel, ChannelError> {
        BdevChannel::open(self.clone())
    }

    /// The `params` object of `bdev_iomemory_create` that recreates it.
    pub fn config_json(&self) -> serde_json::Value {
        self.params.to_json()
    }

    /// Driver-specific information for `bdev_get_bdevs`: card identity and
    /// health, the VSL's status (RAM usage, write amplification, reserves,
    /// wear), DMA registrations, I/O counters and lifecycle.
    pub fn info_json(&self) -> serde_json::Value {
        let card = self.blk.card();
        let identify = card.identify();
        let health = match card.health() {
            Ok(h) => serde_json::to_value(h).unwrap_or_default(),
            Err(e) => json!({ "error": e.to_string() }),
        };
        let source = match &self.params.source {
            CardSource::Image(p) => json!({ "image": p }),
            CardSource::Pci(a) => json!({ "pci_address": a.to_string() }),
        };
        json!({
            "source": source,
            "card": {
                "identity": identify.identity,
                "geometry": identify.geometry,
                "timing_profile": identify.timing_profile,
            },
            "health": health,
            "vsl": self.blk.status(),
            "capabilities": self.blk.capabilities(),
            "dma": self.dma.stats(),
            "bounce_buffers": {
                "size": self.bounce.buf_size(),
                "count": self.bounce.capacity(),
                "available": self.bounce.available(),
            },
            "io": self.counters.total(),
            "lifecycle": {
                "state": self.life.state(),
                "remove_reason": self.life.reason(),
                "channels": self.life.channels(),
                "card_lost": self.life.card_lost() || self.card_offline(),
            },
        })
    }

    /// Fault injection on an emulated card: power goes after `after`
    /// more card commands (0: now). In-flight and later requests then fail,
    /// the pollers see the card offline and the bdev is hot-removed.
    pub fn inject_power_cut(&self, after: u64) -> Result<(), NotEmulated> {
        let emu = self.blk.card().emulator().ok_or(NotEmulated)?;
        if after == 0 {
            emu.power_cut_now();
        } else {
            emu.power_cut_after(after);
        }
        Ok(())
    }

    /// Detaches the card: checkpoint and clean mark. Only once SPDK
    /// destructed the bdev and every channel closed.
    pub fn detach(&self) -> Result<Detached, DetachError> {
        self.life.ready_to_detach()?;
        self.dma.clear();
        let outcome = if self.card_offline() {
            Detached::CardLost
        } else {
            self.blk.detach()?;
            Detached::Clean
        };
        self.life.finish_detach()?;
        Ok(outcome)
    }
}

/// Why a real card cannot be driven, from what sysfs says about it.
fn real_card_reason(address: iomemory::pci::PciAddress) -> String {
    use iomemory::pci::{read_device, DeviceKind, ProtocolSupport, SysfsRoot};
    match read_device(&SysfsRoot::default(), address) {
        Ok(dev) => match &dev.kind {
            DeviceKind::IoMemory(model) => match model.protocol_support() {
                ProtocolSupport::IdentifyOnly { reason } => {
                    format!("it is a {}, but {reason}", model.name())
                }
                ProtocolSupport::Supported => format!(
                    "it is a {}, and its protocol is known, but this bdev module drives emulated card images only; open it with `path`",
                    model.name()
                ),
            },
            _ => format!("it is a {}, not an ioMemory card", dev.name()),
        },
        Err(e) => e.to_string(),
    }
}
