//! `libiomemory_bdev.so`: the SPDK bdev module for ioMemory cards.
//!
//! A stock SPDK target (`spdk_tgt`, `nvmf_tgt`, `vhost`) built with
//! `--with-shared` loads this library (`LD_PRELOAD`, or
//! `--env-context "-d /path/libiomemory_bdev.so"`); its constructors
//! register the `iomemory` bdev module and the `bdev_iomemory_create` /
//! `bdev_iomemory_delete` RPCs, and the card becomes a bdev that SPDK's
//! NVMe-oF, vhost-user and iSCSI targets export.
//!
//! Two halves:
//! - a thin C shim (`csrc/bdev_iomemory.c`), compiled only when `SPDK_DIR`
//!   points at an SPDK v26.05 tree: module and RPC registration, `struct
//!   spdk_bdev` filling, the io_device/poller plumbing and SPDK's inline
//!   helpers;
//! - this crate, behind an opaque-handle C ABI ([`ffi`]): parameter
//!   validation ([`params`]), request translation ([`io`]), the per-thread
//!   channel and poller logic ([`channel`]), DMA registration of SPDK's
//!   memory ([`dma`]), the bdev lifecycle ([`lifecycle`]) and the device
//!   ([`device`]). All of it is tested without SPDK.

pub mod channel;
pub mod device;
pub mod dma;
pub mod ffi;
pub mod io;
pub mod lifecycle;
pub mod log;
pub mod params;
pub mod stats;

pub use channel::{BdevChannel, ChannelError, PollResult, Submitted};
pub use device::{BdevDevice, DetachError, Detached, NotEmulated, OpenError};
pub use io::{BdevIoType, IoDesc, IoStatus, Op, TranslateError};
pub use lifecycle::{Lifecycle, LifecycleError, RemoveReason, State};
pub use params::{CardSource, CreateParams, DeleteParams, ParamError, PowerCutParams};
