//! NVMe-style host interface: register block, controller bring-up, admin
//! and I/O queue pairs with phase-tagged completions and batched doorbells.
//!
//! The same code drives the emulated card (its registers are a memory page
//! whose writes are delivered to the emulator) and, through VFIO, a real
//! controller's BAR.

mod controller;
mod mmio;
pub mod nvm;
mod qpair;
pub mod spec;

pub use controller::{Controller, ControllerShared};
pub use mmio::{DeviceNotify, Mmio};
pub use qpair::{QueueFull, QueuePair, Scratch, SubmitFailure, SCRATCH_PER_COMMAND};

use crate::dma::DmaError;
use spec::Status;

/// Errors of the queue and controller layer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NvmeError {
    /// Allocating queue memory failed.
    #[error("cannot allocate queue memory: {0}")]
    Dma(#[from] DmaError),
    /// The controller did not respond in time.
    #[error("timed out waiting for {0}; the device may be hung or powered off — reset or re-attach it")]
    Timeout(&'static str),
    /// CSTS.CFS is set.
    #[error("controller reports a fatal error (CSTS.CFS); reset the controller")]
    ControllerFatal,
    /// An admin command failed.
    #[error("{what} failed with status type {:#x} code {:#04x}", status.sct(), status.sc())]
    CommandFailed {
        /// Which command.
        what: &'static str,
        /// The device's status.
        status: Status,
    },
    /// Another thread holds every admin slot.
    #[error("admin queue is full; retry")]
    AdminQueueFull,
    /// Queue depth outside what the controller supports.
    #[error("queue depth {depth} is not supported (use 2..={max})")]
    InvalidQueueDepth {
        /// Requested.
        depth: u16,
        /// Controller maximum.
        max: u16,
    },
    /// All queue ids are in use.
    #[error("no free I/O queue id: close an I/O channel first")]
    NoFreeQueueId,
    /// The device broke the protocol.
    #[error("protocol violation by the device: {0}")]
    Protocol(&'static str),
}
