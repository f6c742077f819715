//! Options of format and attach, and the capacity syntax of `--capacity`.

use serde::Serialize;

pub use super::victim::GcPolicy;

/// How much of the card the user sees.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub enum CapacitySpec {
    /// Exactly this many bytes (rounded down to whole sectors).
    Bytes(u64),
    /// This percentage of the card's raw flash (e.g. 78.0); the rest is
    /// reserve for the groomer, wear levelling and bad blocks.
    Percent(f64),
}

impl std::str::FromStr for CapacitySpec {
    type Err = String;

    /// Parses `SIZE` (`1000000`, `64K`, `512MiB`, `1.2T`, `800GB`: K/M/G/T
    /// and KiB.. are powers of 1024, KB/MB/GB/TB powers of 1000) or `PCT`
    /// (`78%`).
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if let Some(pct) = s.strip_suffix('%') {
            let v: f64 = pct
                .trim()
                .parse()
                .map_err(|_| format!("{s:?} is not a percentage like 78%"))?;
            if !(v > 0.0 && v < 100.0) {
                return Err(format!("capacity {v}% must be between 0% and 100% (exclusive)"));
            }
            return Ok(CapacitySpec::Percent(v));
        }
        parse_size(s).map(CapacitySpec::Bytes)
    }
}

pub use crate::units::parse_size;

/// Options of [`super::Vsl::format`].
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FormatOptions {
    /// Sector size: 512 or 4096.
    pub sector_size: u32,
    /// User capacity; `None` = the card's advertised capacity.
    pub capacity: Option<CapacitySpec>,
    /// Destroy an existing format.
    pub yes: bool,
    /// Seed of the format UUID; `None` mixes in the time and process id.
    pub seed: Option<u64>,
    /// Largest atomic write in pages (1..=32).
    pub max_atomic_pages: u32,
}

impl Default for FormatOptions {
    fn default() -> Self {
        Self {
            sector_size: 4096,
            capacity: None,
            yes: false,
            seed: None,
            max_atomic_pages: DEFAULT_MAX_ATOMIC_PAGES,
        }
    }
}

/// Default (and largest) atomic write, in pages.
pub const DEFAULT_MAX_ATOMIC_PAGES: u32 = 32;

/// Options of [`super::Vsl::attach`].
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AttachOptions {
    /// Groomer victim policy.
    pub gc_policy: GcPolicy,
    /// Most channels open at once.
    pub max_channels: usize,
    /// Card queue depth of each channel (and of the groomer).
    pub queue_depth: u16,
    /// Blocks of each channel's stripe (append points on distinct dies);
    /// 0 = every die up to 32 when the spare blocks hold eight channels'
    /// open blocks, else min(4, dies).
    pub stripe_width: u32,
    /// Free blocks below which the groomer starts; 0 = automatic.
    pub gc_low_blocks: u32,
    /// Free blocks at which the groomer stops; 0 = automatic.
    pub gc_high_blocks: u32,
    /// P/E spread (max - min) that triggers wear levelling; 0 = automatic
    /// (5% of the rated cycles, at least 8).
    pub wear_spread: u32,
    /// Force a full scan even after a clean detach (for testing recovery).
    pub force_scan: bool,
}

impl Default for AttachOptions {
    fn default() -> Self {
        Self {
            gc_policy: GcPolicy::Greedy,
            max_channels: 16,
            queue_depth: 128,
            stripe_width: 0,
            gc_low_blocks: 0,
            gc_high_blocks: 0,
            wear_spread: 0,
            force_scan: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_binary_and_decimal_suffixes() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("64K"), Ok(65536));
        assert_eq!(parse_size("512MiB"), Ok(512 << 20));
        assert_eq!(parse_size("800GB"), Ok(800_000_000_000));
        assert_eq!(parse_size("1.5g"), Ok(3 << 29));
        assert!(parse_size("12Q").is_err());
        assert!(parse_size("").is_err());
        assert!(parse_size("x1").is_err());
    }

    #[test]
    fn capacity_accepts_sizes_and_percentages() {
        assert_eq!("78%".parse::<CapacitySpec>(), Ok(CapacitySpec::Percent(78.0)));
        assert_eq!("16M".parse::<CapacitySpec>(), Ok(CapacitySpec::Bytes(16 << 20)));
        assert!("0%".parse::<CapacitySpec>().is_err());
        assert!("100%".parse::<CapacitySpec>().is_err());
        assert!("abc%".parse::<CapacitySpec>().is_err());
    }
}
