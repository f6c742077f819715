//! The NVM command set (NVM Express NVM Command Set Specification 1.0) and
//! the Zoned Namespace command set (ZNS Command Set Specification 1.1) on
//! the host queue pairs of this module: what a real NVMe controller (QEMU's,
//! or silicon behind VFIO) speaks.
//!
//! - [`command`]: submission-entry encoding and PRP construction (pure).
//! - [`identify`]: identify data structures and the admin calls that fetch
//!   them (controller, namespace, namespace list, zoned extensions).
//! - [`io`]: [`Namespace`] and submitting validated commands on a
//!   [`QueuePair`](super::QueuePair).

pub mod command;
pub mod identify;
pub mod io;

pub use command::{LbaRange, ZoneAction, MAX_DSM_RANGES, MAX_PRP_LIST_ENTRIES};
pub use identify::{
    IdentifyController, IdentifyNamespace, LbaFormat, ZoneDescriptor, ZoneReport, ZoneState,
    ZonedController, ZonedNamespace,
};
pub use io::{execute, submit, Namespace, NvmCommand, ZoneGeometry};

use super::spec::Status;
use super::NvmeError;
use crate::dma::DmaError;

/// NVM and ZNS I/O opcodes (NVM Command Set Figure 16, ZNS Figure 28).
pub mod opcode {
    /// Flush.
    pub const FLUSH: u8 = 0x00;
    /// Write.
    pub const WRITE: u8 = 0x01;
    /// Read.
    pub const READ: u8 = 0x02;
    /// Dataset Management.
    pub const DATASET_MANAGEMENT: u8 = 0x09;
    /// Zone Management Send.
    pub const ZONE_MGMT_SEND: u8 = 0x79;
    /// Zone Management Receive.
    pub const ZONE_MGMT_RECV: u8 = 0x7a;
    /// Zone Append.
    pub const ZONE_APPEND: u8 = 0x7d;
}

/// Identify CNS values (Base Specification Figure 274).
pub mod cns {
    /// Identify Namespace (NVM command set).
    pub const NAMESPACE: u8 = 0x00;
    /// Identify Controller.
    pub const CONTROLLER: u8 = 0x01;
    /// Active Namespace ID list.
    pub const ACTIVE_NAMESPACES: u8 = 0x02;
    /// Namespace Identification Descriptor list.
    pub const NS_DESCRIPTORS: u8 = 0x03;
    /// I/O command set specific Identify Namespace.
    pub const CSI_NAMESPACE: u8 = 0x05;
    /// I/O command set specific Identify Controller.
    pub const CSI_CONTROLLER: u8 = 0x06;
}

/// Command Set Identifiers (Base Specification Figure 285).
pub mod csi {
    /// NVM command set.
    pub const NVM: u8 = 0x00;
    /// Zoned Namespace command set.
    pub const ZONED: u8 = 0x02;
}

/// Errors of the NVM command layer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NvmError {
    /// The controller or queue layer failed.
    #[error(transparent)]
    Nvme(#[from] NvmeError),
    /// DMA memory for a data structure could not be had.
    #[error(transparent)]
    Dma(#[from] DmaError),
    /// A command completed with an error status.
    #[error("{what} failed with status type {:#x} code {:#04x}{}", status.sct(), status.sc(), status_hint(*status))]
    CommandFailed {
        /// Which command.
        what: &'static str,
        /// The device's status.
        status: Status,
    },
    /// A transfer needs a non-zero length.
    #[error("a transfer of 0 blocks/bytes was asked for; give at least one")]
    Empty,
    /// A buffer address that PRPs cannot carry.
    #[error("buffer address {iova:#x} is not dword aligned; NVMe PRP entries need 4-byte alignment (use a DmaPool buffer)")]
    Misaligned {
        /// The address.
        iova: u64,
    },
    /// More data than one command may carry.
    #[error("a {bytes}-byte transfer exceeds the {max}-byte limit of one command (controller MDTS and PRP list size); split it")]
    TransferTooLarge {
        /// Asked for.
        bytes: u64,
        /// Allowed.
        max: u64,
    },
    /// More blocks than the 16-bit NLB field holds.
    #[error("{blocks} blocks in one command; NVMe allows 1..=65536")]
    BlockCount {
        /// Asked for.
        blocks: u64,
    },
    /// An LBA range beyond the namespace.
    #[error("LBAs {slba}..{} are outside namespace {nsid} of {capacity} blocks", slba.saturating_add(*blocks))]
    LbaOutOfRange {
        /// The namespace.
        nsid: u32,
        /// First LBA.
        slba: u64,
        /// Block count.
        blocks: u64,
        /// Namespace size in blocks.
        capacity: u64,
    },
    /// Too many ranges for one Dataset Management command.
    #[error("{count} ranges in one Dataset Management command; at most {max} fit its DMA scratch (send several)")]
    TooManyRanges {
        /// Asked for.
        count: usize,
        /// Allowed.
        max: usize,
    },
    /// A zone command on a namespace that is not zoned.
    #[error("namespace {nsid} is not a zoned namespace (command set {csi:#x}); zone commands need a ZNS namespace")]
    NotZoned {
        /// The namespace.
        nsid: u32,
        /// Its command set.
        csi: u8,
    },
    /// A zone start LBA that is not a zone boundary.
    #[error("LBA {slba} is not the start of a zone (zone size {zone_size} blocks)")]
    NotZoneStart {
        /// Given.
        slba: u64,
        /// Zone size.
        zone_size: u64,
    },
    /// Every command slot of the queue is in flight.
    #[error("queue full: every command slot is in flight; poll completions and retry")]
    QueueFull,
    /// A synchronous command was asked for on a queue with commands in flight.
    #[error(
        "queue {qid} has {outstanding} commands in flight; synchronous commands need an idle queue"
    )]
    QueueBusy {
        /// The queue.
        qid: u16,
        /// Commands in flight.
        outstanding: usize,
    },
    /// A namespace id the controller does not have.
    #[error("namespace {nsid} does not exist on this controller (active: {active:?})")]
    NoSuchNamespace {
        /// Asked for.
        nsid: u32,
        /// Active namespace ids.
        active: Vec<u32>,
    },
    /// An identify data structure shorter than the specification says.
    #[error("identify data of {len} bytes is too short (need {need})")]
    ShortData {
        /// Given.
        len: usize,
        /// Needed.
        need: usize,
    },
}

/// A short explanation of the statuses users meet.
fn status_hint(status: Status) -> &'static str {
    match (status.sct(), status.sc()) {
        (0, 0x01) => " (invalid opcode: the namespace's command set does not have this command)",
        (0, 0x02) => " (invalid field in command)",
        (0, 0x0b) => " (invalid namespace or format)",
        (0, 0x80) => " (LBA out of range)",
        (1, 0xb8) => " (zone boundary error)",
        (1, 0xb9) => " (zone is full)",
        (1, 0xba) => " (zone is read only)",
        (1, 0xbb) => " (zone is offline)",
        (1, 0xbc) => " (zone invalid write: not at the write pointer)",
        (1, 0xbd) => " (too many active zones)",
        (1, 0xbe) => " (too many open zones)",
        (1, 0xbf) => " (invalid zone state transition)",
        (2, _) => " (media error)",
        _ => "",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failed_statuses_explain_themselves() {
        let e = NvmError::CommandFailed {
            what: "zone append",
            status: Status::new(1, 0xb9),
        };
        assert_eq!(
            e.to_string(),
            "zone append failed with status type 0x1 code 0xb9 (zone is full)"
        );
        let e = NvmError::LbaOutOfRange {
            nsid: 1,
            slba: 10,
            blocks: 4,
            capacity: 12,
        };
        assert_eq!(
            e.to_string(),
            "LBAs 10..14 are outside namespace 1 of 12 blocks"
        );
    }
}
