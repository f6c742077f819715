//! Errors of the VSL: management operations ([`VslError`]), refused
//! submissions ([`SubmitError`]) and failed I/O ([`IoError`]).

use crate::card::{CardError, CardStatus};
use crate::dma::DmaError;

/// Errors of format, attach, detach and channel creation.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum VslError {
    /// The card refused or failed an admin operation.
    #[error("card error: {0}")]
    Card(#[from] CardError),
    /// DMA memory for queues or buffers could not be had.
    #[error("cannot allocate DMA memory for the VSL: {0}")]
    Dma(#[from] DmaError),
    /// A flash command failed where the VSL cannot work around it.
    #[error("{what} failed at {location}: {status}; the card may be failing — check `iomem status`")]
    Media {
        /// The operation.
        what: &'static str,
        /// Where (physical address or block).
        location: String,
        /// The card's status.
        status: CardStatus,
    },
    /// The card stopped answering.
    #[error("the card did not complete {what} within {secs} s; it may be hung or powered off — reopen it")]
    Timeout {
        /// The operation.
        what: &'static str,
        /// Seconds waited.
        secs: u64,
    },
    /// The card lost power while the VSL was using it.
    #[error("the card lost power during {what}; power it on, reopen it and attach again (recovery will scan)")]
    PowerLost {
        /// The operation.
        what: &'static str,
    },
    /// Format options that cannot work on this card.
    #[error("invalid options: {0}")]
    InvalidOptions(String),
    /// Format would destroy an existing format.
    #[error("the card already holds a VSL format ({sectors} sectors of {sector_size} bytes, UUID {uuid}); formatting destroys all its data — pass --yes (FormatOptions::yes) to proceed")]
    AlreadyFormatted {
        /// Existing format's sector count.
        sectors: u64,
        /// Existing format's sector size.
        sector_size: u32,
        /// Existing format's UUID.
        uuid: String,
    },
    /// Attach found no VSL format.
    #[error("the card holds no VSL format (no superblock in the metadata blocks); run `iomem format` first")]
    NotFormatted,
    /// On-flash metadata is inconsistent.
    #[error("the VSL metadata on the card is corrupt: {0}; the data cannot be attached safely — reformat the card (destroys data)")]
    Corrupt(String),
    /// The card differs from the one the format was made for.
    #[error("the format was made for a different card shape ({0}); attach it to the card it was formatted on")]
    GeometryMismatch(String),
    /// The format is from a newer VSL.
    #[error("the card was formatted by a newer VSL (format version {0}); upgrade this software")]
    UnsupportedVersion(u16),
    /// The format is from an older VSL whose on-flash records this one
    /// does not read.
    #[error(
        "the card was formatted by an older VSL (format version {0}; this one writes version {v} with per-sector data CRCs and cannot read it); \
         reformat it with `iomem format --yes` (destroys its data) or attach it with the older release",
        v = super::meta::FORMAT_VERSION
    )]
    OutdatedFormat(u16),
    /// Detach refused while channels are open.
    #[error("{0} I/O channel(s) are still open; drop every VslChannel before detaching")]
    ChannelsOpen(usize),
    /// The VSL was detached, or the card failed.
    #[error("the VSL is detached or its card has failed; attach again")]
    Detached,
    /// Too many channels.
    #[error("at most {0} I/O channels may be open at once; drop one first")]
    TooManyChannels(usize),
    /// Not enough good blocks for the requested format or operation.
    #[error("not enough good erase blocks: {0}")]
    NoSpace(String),
}

/// Why a submission was refused. Nothing was queued and nothing changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SubmitError {
    /// The channel's command slots or staging memory are in use: poll, then retry.
    #[error("channel queue full: poll for completions and retry")]
    QueueFull,
    /// Free space is at the groomer's reserve: poll (which grooms), then retry.
    #[error("the groomer is reclaiming space: poll and retry")]
    Busy,
    /// The LBA range exceeds the device.
    #[error("LBA range {lba}+{count} is beyond the device's {capacity} sectors")]
    OutOfRange {
        /// First LBA.
        lba: u64,
        /// Sectors.
        count: u64,
        /// Device sectors.
        capacity: u64,
    },
    /// A buffer length is not a whole number of sectors.
    #[error("buffer of {len} bytes is not a multiple of the {sector_size}-byte sector size")]
    Misaligned {
        /// Offending length.
        len: usize,
        /// Sector size.
        sector_size: u32,
    },
    /// An atomic write larger than the limit.
    #[error("atomic write of {sectors} sectors exceeds the limit of {max}")]
    AtomicTooLarge {
        /// Requested.
        sectors: u64,
        /// Limit.
        max: u32,
    },
    /// A request larger than one request may be.
    #[error("request of {bytes} bytes exceeds the {max}-byte limit; split it")]
    TooLarge {
        /// Requested bytes.
        bytes: usize,
        /// Limit.
        max: usize,
    },
    /// A request with more buffers than a request can carry.
    #[error("{given} buffers in one request; at most {max} are accepted")]
    TooManyBuffers {
        /// Given.
        given: usize,
        /// Limit.
        max: usize,
    },
    /// Writes are refused: the reserve is exhausted (reads still work).
    #[error("the device is read-only: its flash reserve is exhausted; copy the data off and replace the card")]
    ReadOnly,
    /// The VSL is detached or the card has failed.
    #[error("the device is offline (detached, or the card lost power); reattach it")]
    Offline,
    /// Malformed request.
    #[error("invalid request: {0}")]
    Invalid(&'static str),
}

impl SubmitError {
    /// Whether polling and resubmitting may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, SubmitError::QueueFull | SubmitError::Busy)
    }
}

/// Why an accepted request failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IoError {
    /// The data of an LBA could not be read back.
    #[error("uncorrectable read error at LBA {lba}: the data of this sector is lost")]
    Uncorrectable {
        /// The failing LBA.
        lba: u64,
    },
    /// The data read back does not match its checksum (silent corruption).
    #[error("checksum mismatch at LBA {lba}: the sector read back corrupt")]
    Corrupt {
        /// The failing LBA.
        lba: u64,
    },
    /// The card reported a failure the VSL could not work around.
    #[error("media error at LBA {lba}: {status}")]
    Media {
        /// First LBA of the affected range.
        lba: u64,
        /// The card's status.
        status: CardStatus,
    },
    /// The card lost power before the request completed.
    #[error("the card lost power; the request may or may not have reached flash")]
    PowerLost,
    /// Writes were refused because the device went read-only.
    #[error("the device went read-only (reserve exhausted) before this write could be placed")]
    ReadOnly,
}
