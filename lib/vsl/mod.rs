//! The VSL: the host-side flash translation layer.
//!
//! It turns the card's raw flash (pages programmed in order inside erase
//! blocks, erase before rewrite, wear, failures) into a block device of
//! 512-byte or 4 KiB sectors: a lock-free forward map in host RAM, a
//! log-structured writer per channel, a groomer that reclaims space, wear
//! levelling, TRIM that survives power loss, atomic multi-range writes, and
//! recovery by scanning the out-of-band records after a crash.
//!
//! Durability contract: a write completes only after the card reports it
//! programmed; a flush completes only after every write completed before it
//! is durable (with power-loss protection off, after a card flush); after
//! any power cut the next attach returns, for every LBA, the last durable
//! write or a later one, never a torn atomic write, and never data trimmed
//! before the cut once the trim completed.
//!
//! RAM: the forward map costs 4 bytes per user sector (1 GiB per TiB at
//! 4 KiB sectors, 8 GiB per TiB at 512 B), plus about 40 bytes per erase
//! block and one bit per page; [`Vsl::status`] reports it. A dirty attach
//! temporarily needs 8 more bytes per user sector for the scan.

mod alloc;
mod attach;
mod blocking;
mod blocks;
mod channel;
mod checkpoint;
mod codec;
mod counters;
mod device;
mod error;
mod format;
mod groomer;
mod map;
mod meta;
mod metalog;
mod oob;
mod options;
pub(crate) mod readgate;
pub mod pattern;
mod recovery;
mod status;
mod syncio;
pub mod torture;
pub mod verify;
mod victim;
pub mod wa_model;
pub mod wabench;

pub use blocking::{BlockingChannel, BlockingError};
pub use blocks::{BlockCensus, BlockState};
pub use channel::{VslChannel, MAX_REQUEST_BYTES};
pub use counters::CounterSnapshot;
pub use device::{AttachKind, AttachReport, IoVec, RamUsage, Tuning, Vsl};
pub use error::{IoError, SubmitError, VslError};
pub use format::{plan_capacity, FormatPlan};
pub use map::{ForwardMap, Layout, UNMAPPED};
pub use meta::{Superblock, FORMAT_VERSION};
pub use oob::{OobRecord, PageKind, OOB_RECORD_LEN};
pub use options::{parse_size, AttachOptions, CapacitySpec, FormatOptions, GcPolicy, DEFAULT_MAX_ATOMIC_PAGES};
pub use status::{ReserveState, ReserveStatus, VslStatus};
