//! The VSL: the host-side flash translation layer.
//!
//! It turns the card's raw flash (pages programmed in order inside erase
//! blocks, erase before rewrite, wear, failures) into a block device of
//! 512-byte or 4 KiB sectors: a lock-free forward map in host RAM, a
//! log-structured writer per channel, a groomer that reclaims space, wear
//! levelling, TRIM that survives power loss, atomic multi-range writes, and
//! recovery by scanning the out-of-band records after a crash.

mod blocks;
mod codec;
mod error;
mod map;
mod meta;
mod metalog;
mod oob;
mod options;
mod syncio;
mod victim;
pub mod wa_model;

pub use blocks::{BlockCensus, BlockState};
pub use error::{IoError, SubmitError, VslError};
pub use map::{Layout, UNMAPPED};
pub use meta::{Superblock, FORMAT_VERSION};
pub use oob::{OobRecord, PageKind, OOB_RECORD_LEN};
pub use options::{parse_size, AttachOptions, CapacitySpec, FormatOptions, GcPolicy, DEFAULT_MAX_ATOMIC_PAGES};
