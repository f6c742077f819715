//! Optional NAND timings: per-die busy time for reads, programs and erases,
//! so the emulated card's throughput and latency can be held against the
//! ioDrive2 datasheet. With [`TimingProfile::None`] commands complete as
//! soon as they are processed.

use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

/// Which timing model an emulated card uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TimingProfile {
    /// No modelled delay: the card is as fast as the host can drive it.
    #[default]
    None,
    /// 2x-nm MLC as in the ioDrive2: 4 KiB page read 50 µs, program 80 µs
    /// (per 4 KiB of a multi-plane page), erase 3 ms, 10 µs channel
    /// transfer per page; programs are acknowledged from the power-safe
    /// write buffer while the die backlog stays under 2 ms.
    Iodrive2,
}

impl TimingProfile {
    /// Parses "none" or "iodrive2".
    pub fn parse(text: &str) -> Result<Self, String> {
        match text {
            "none" => Ok(Self::None),
            "iodrive2" => Ok(Self::Iodrive2),
            other => Err(format!("unknown timing profile {other:?}: use none or iodrive2")),
        }
    }

    /// The profile's name.
    pub fn name(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Iodrive2 => "iodrive2",
        }
    }

    fn params(self) -> Option<TimingParams> {
        match self {
            Self::None => None,
            Self::Iodrive2 => Some(TimingParams {
                read_ns: 50_000,
                program_ns: 80_000,
                erase_ns: 3_000_000,
                transfer_ns: 10_000,
                buffer_window_ns: 2_000_000,
            }),
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct TimingParams {
    read_ns: u64,
    program_ns: u64,
    erase_ns: u64,
    transfer_ns: u64,
    buffer_window_ns: u64,
}

/// Kind of NAND operation being timed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NandOp {
    /// Page read.
    Read,
    /// Page program.
    Program,
    /// Block erase.
    Erase,
}

/// Per-die busy-until clocks (nanoseconds since the controller started).
#[derive(Debug)]
pub struct DieClocks {
    params: Option<TimingParams>,
    busy_until: Box<[AtomicU64]>,
}

impl DieClocks {
    /// Clocks for `dies` dies under `profile`.
    pub fn new(profile: TimingProfile, dies: u32) -> Self {
        Self {
            params: profile.params(),
            busy_until: (0..dies).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    /// Whether any delay is modelled.
    pub fn enabled(&self) -> bool {
        self.params.is_some()
    }

    /// Books `pages` operations of kind `op` on `die` starting no earlier
    /// than `now`, and returns when the command's completion is due.
    pub fn book(&self, die: u32, op: NandOp, pages: u32, now: u64) -> u64 {
        let Some(p) = self.params else { return now };
        let Some(clock) = self.busy_until.get(die as usize) else {
            return now;
        };
        let cost = match op {
            NandOp::Read => (p.read_ns + p.transfer_ns) * pages as u64,
            NandOp::Program => p.program_ns * pages as u64,
            NandOp::Erase => p.erase_ns,
        };
        let mut current = clock.load(Ordering::Relaxed);
        let finish = loop {
            let finish = current.max(now) + cost;
            match clock.compare_exchange_weak(current, finish, Ordering::AcqRel, Ordering::Relaxed) {
                Ok(_) => break finish,
                Err(seen) => current = seen,
            }
        };
        match op {
            // Programs are acknowledged once in the power-safe buffer, as
            // long as the die's backlog fits the buffer window.
            NandOp::Program => {
                let buffered = now + p.transfer_ns * pages as u64 + 5_000;
                buffered.max(finish.saturating_sub(p.buffer_window_ns))
            }
            NandOp::Read | NandOp::Erase => finish,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn none_completes_immediately() {
        let c = DieClocks::new(TimingProfile::None, 4);
        assert_eq!(c.book(0, NandOp::Erase, 1, 1234), 1234);
        assert!(!c.enabled());
    }

    #[test]
    fn reads_on_one_die_serialize_and_dies_run_in_parallel() {
        let c = DieClocks::new(TimingProfile::Iodrive2, 2);
        let a = c.book(0, NandOp::Read, 1, 0);
        let b = c.book(0, NandOp::Read, 1, 0);
        let other = c.book(1, NandOp::Read, 1, 0);
        assert_eq!(a, 60_000);
        assert_eq!(b, 120_000);
        assert_eq!(other, 60_000);
    }

    #[test]
    fn programs_are_buffered_until_the_backlog_exceeds_the_window() {
        let c = DieClocks::new(TimingProfile::Iodrive2, 1);
        assert_eq!(c.book(0, NandOp::Program, 1, 0), 15_000);
        // Fill the die's backlog well past the 2 ms window.
        let mut last = 0;
        for _ in 0..100 {
            last = c.book(0, NandOp::Program, 1, 0);
        }
        assert!(last > 2_000_000, "backlogged program acknowledged at {last} ns");
    }
}
