//! Read gates: how the groomer knows that no read still in flight may
//! touch an erase block it is about to erase, without a counter on the
//! block that every read of every thread writes.
//!
//! Each I/O channel owns a gate on cache lines of its own. Before a read
//! looks up the forward map, the channel announces it (`issued`, then a
//! full fence); once reads complete it publishes `retired`: every read
//! numbered below it has finished. The groomer, once nothing in the map
//! points into its victim any more, snapshots every gate's `issued` (after
//! a full fence) and erases only when every gate's `retired` has reached
//! its snapshot.
//!
//! Why that is enough: a read that found a victim address loaded the map
//! before the groomer's last change away from the victim. With the two
//! fences, either the read's announcement is visible to the snapshot (and
//! the groomer waits for that read), or the groomer's changes are visible
//! to the read's lookup (and it never saw the victim) — the same
//! store-then-load argument the old per-block reader pins relied on, with
//! the writes now on the reading thread's own line.

use std::sync::atomic::{fence, AtomicBool, AtomicU64, Ordering};

use crossbeam_utils::CachePadded;

#[derive(Debug, Default)]
struct Gate {
    /// Reads announced by the channel holding the gate (a count).
    issued: AtomicU64,
    /// Every read numbered below this has completed.
    retired: AtomicU64,
    /// A channel holds the gate.
    taken: AtomicBool,
}

/// One gate per possible channel.
#[derive(Debug)]
pub(crate) struct ReadGates {
    gates: Box<[CachePadded<Gate>]>,
}

impl ReadGates {
    /// Gates for up to `channels` channels at once.
    pub fn new(channels: usize) -> Self {
        Self {
            gates: (0..channels.max(1)).map(|_| CachePadded::new(Gate::default())).collect(),
        }
    }

    /// Gates (the most channels at once).
    pub fn len(&self) -> usize {
        self.gates.len()
    }

    /// Claims a free gate for a new channel: its index and the read number
    /// to continue from (numbers never go back, so a snapshot taken while
    /// an earlier channel held the gate stays meaningful).
    pub fn claim(&self) -> Option<(usize, u64)> {
        self.gates.iter().enumerate().find_map(|(i, g)| {
            g.taken
                .compare_exchange(false, true, Ordering::AcqRel, Ordering::Relaxed)
                .ok()
                .map(|_| (i, g.issued.load(Ordering::Relaxed)))
        })
    }

    /// Gives gate `i` back; the channel has no read in flight.
    pub fn release(&self, i: usize) {
        let g = &self.gates[i];
        g.retired.store(g.issued.load(Ordering::Relaxed), Ordering::Release);
        g.taken.store(false, Ordering::Release);
    }

    /// Announces reads up to `issued` (a count) on gate `i`; the map
    /// lookups of the newest may start after this returns.
    #[inline]
    pub fn announce(&self, i: usize, issued: u64) {
        self.gates[i].issued.store(issued, Ordering::Relaxed);
        fence(Ordering::SeqCst);
    }

    /// Publishes that every read of gate `i` numbered below `retired` has
    /// completed.
    #[inline]
    pub fn retire(&self, i: usize, retired: u64) {
        self.gates[i].retired.store(retired, Ordering::Release);
    }

    /// Fills `out` with every gate's announced count. Call after the last
    /// map change away from the block to be erased.
    pub fn snapshot(&self, out: &mut Vec<u64>) {
        fence(Ordering::SeqCst);
        out.clear();
        out.extend(self.gates.iter().map(|g| g.issued.load(Ordering::Relaxed)));
    }

    /// Whether every read announced before `snap` was taken has completed.
    pub fn passed(&self, snap: &[u64]) -> bool {
        self.gates
            .iter()
            .zip(snap)
            .all(|(g, &s)| g.retired.load(Ordering::Acquire) >= s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_groomer_waits_for_reads_announced_before_its_snapshot_only() {
        let gates = ReadGates::new(2);
        let (a, start) = gates.claim().unwrap();
        assert_eq!(start, 0);
        gates.announce(a, 3); // reads 0, 1, 2 in flight
        let mut snap = Vec::new();
        gates.snapshot(&mut snap);
        assert!(!gates.passed(&snap), "reads 0..3 are still in flight");
        gates.announce(a, 5); // later reads do not hold the groomer up...
        gates.retire(a, 3); // ...once the earlier ones completed
        assert!(gates.passed(&snap));
    }

    #[test]
    fn released_gates_are_reused_with_their_numbers_and_never_block() {
        let gates = ReadGates::new(1);
        let (a, _) = gates.claim().unwrap();
        assert!(gates.claim().is_none(), "one gate, one channel");
        gates.announce(a, 7);
        gates.release(a);
        let mut snap = Vec::new();
        gates.snapshot(&mut snap);
        assert!(gates.passed(&snap), "a released gate has nothing in flight");
        let (b, start) = gates.claim().unwrap();
        assert_eq!((b, start), (a, 7));
    }
}
