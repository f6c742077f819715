//! `Vsl::status`: everything `iomem status` prints about the VSL, as a
//! serializable snapshot.

use std::sync::atomic::Ordering;

use serde::Serialize;

use super::blocks::BlockCensus;
use super::counters::CounterSnapshot;
use super::device::{AttachReport, RamUsage, Tuning, Vsl};
use super::options::GcPolicy;

/// Health of the flash reserve.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum ReserveState {
    /// More than 10% of the original reserve left.
    Healthy,
    /// 10% or less left: plan to replace the card.
    Warning,
    /// Nothing left: writes are refused, reads work.
    ReadOnly,
}

/// The reserve: spare blocks beyond capacity and the groomer's minimum.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct ReserveStatus {
    /// Healthy, warning or read-only.
    pub state: ReserveState,
    /// Spare blocks left (negative: capacity no longer fits).
    pub remaining_blocks: i64,
    /// Spare blocks of the card when it had only factory bad blocks.
    pub initial_blocks: u64,
    /// `remaining / initial`, in percent.
    pub percent: f64,
}

/// Snapshot of an attached VSL.
#[derive(Debug, Clone, Serialize)]
pub struct VslStatus {
    /// Format UUID.
    pub uuid: String,
    /// Sector size in bytes.
    pub sector_size: u32,
    /// User capacity in sectors.
    pub num_sectors: u64,
    /// User capacity in bytes.
    pub capacity_bytes: u64,
    /// Largest atomic write in sectors.
    pub max_atomic_sectors: u32,
    /// Host RAM of the VSL's tables.
    pub ram_usage: RamUsage,
    /// Forward-map RAM per TiB of user capacity at this sector size.
    pub map_bytes_per_tib: u64,
    /// Pages programmed per page users wrote.
    pub write_amplification: f64,
    /// Lifetime counters (since format for clean attaches).
    pub counters: CounterSnapshot,
    /// Flash reserve.
    pub reserve: ReserveStatus,
    /// Writes refused.
    pub read_only: bool,
    /// Detached or card lost.
    pub offline: bool,
    /// Whether the card buffers writes safely through power loss.
    pub powerloss_protection: bool,
    /// How attach went.
    pub attach: AttachReport,
    /// Blocks per state.
    pub blocks: BlockCensus,
    /// Lowest P/E count of a usable block.
    pub pe_min: u32,
    /// Highest P/E count of a usable block.
    pub pe_max: u32,
    /// Groomer victim policy.
    pub gc_policy: GcPolicy,
    /// Derived tunables.
    pub tuning: Tuning,
    /// Channels open now.
    pub channels_open: usize,
}

impl Vsl {
    /// A snapshot of the VSL's state and counters.
    pub fn status(&self) -> VslStatus {
        let counters = self.ctr.snapshot();
        let remaining = self.reserve_blocks();
        let initial = self.tune.initial_reserve;
        let percent = if initial == 0 {
            0.0
        } else {
            (remaining.max(0) as f64 * 100.0 / initial as f64).min(100.0)
        };
        let state = if self.is_read_only() || remaining <= 0 {
            ReserveState::ReadOnly
        } else if percent <= 10.0 {
            ReserveState::Warning
        } else {
            ReserveState::Healthy
        };
        let (pe_min, pe_max) = self.blocks.pe_range();
        VslStatus {
            uuid: self.sb.uuid_string(),
            sector_size: self.sb.sector_size,
            num_sectors: self.sb.num_sectors,
            capacity_bytes: self.sb.num_sectors * self.sb.sector_size as u64,
            max_atomic_sectors: self.max_atomic_sectors(),
            ram_usage: self.ram_usage(),
            map_bytes_per_tib: (1u64 << 40) / self.sb.sector_size as u64 * 4,
            write_amplification: counters.write_amplification(),
            counters,
            reserve: ReserveStatus {
                state,
                remaining_blocks: remaining,
                initial_blocks: initial,
                percent,
            },
            read_only: self.is_read_only(),
            offline: self.is_offline(),
            powerloss_protection: self.plp,
            attach: self.report,
            blocks: self.blocks.census(),
            pe_min,
            pe_max,
            gc_policy: self.opts.gc_policy,
            tuning: self.tune,
            channels_open: self.channels.load(Ordering::Acquire),
        }
    }
}
