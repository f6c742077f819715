//! Per-erase-block sequence words that let page reads run without writing
//! to shared memory (a sequence lock): a read never takes the block's lock,
//! so two cores reading random blocks never pull a lock's cache line back
//! and forth; it instead checks that no change of the block's contents
//! overlapped it, and runs again if one did.
//!
//! Writers still serialize among themselves on the block lock; only the
//! changes a reader could observe half done (an erase, which takes pages
//! below the write pointer away, and fault injection that rewrites
//! programmed data) run inside [`BlockSeqs::write`]. A program needs none:
//! it fills the page at the write pointer, which readers treat as erased,
//! and then publishes the page by storing the new write pointer with
//! release ordering.

use std::sync::atomic::{fence, AtomicU32, Ordering};

/// One sequence word per erase block: even when the block is stable, odd
/// while a change is under way.
pub(crate) struct BlockSeqs {
    seqs: Box<[AtomicU32]>,
}

impl BlockSeqs {
    /// Sequence words for `blocks` erase blocks.
    pub fn new(blocks: usize) -> Self {
        Self { seqs: (0..blocks).map(|_| AtomicU32::new(0)).collect() }
    }

    /// Runs `change` on block `bi` so that no read of the block overlapping
    /// it is accepted. The caller holds the block's lock: writers of one
    /// block never run `write` at the same time.
    pub fn write<R>(&self, bi: usize, change: impl FnOnce() -> R) -> R {
        let seq = &self.seqs[bi];
        let s = seq.load(Ordering::Relaxed);
        seq.store(s.wrapping_add(1), Ordering::Relaxed);
        // Orders the odd value before every store of the change: a reader
        // that sees any of them sees the odd (or a later) value after its
        // acquire fence.
        fence(Ordering::Release);
        let r = change();
        seq.store(s.wrapping_add(2), Ordering::Release);
        r
    }

    /// Runs `read` on block `bi` until a run overlapped no [`Self::write`]
    /// of it, and returns that run's result. `read` must tolerate being run
    /// again, and a run that overlaps a change may see it half done: its
    /// result is discarded.
    pub fn read<R>(&self, bi: usize, mut read: impl FnMut() -> R) -> R {
        let seq = &self.seqs[bi];
        loop {
            let before = seq.load(Ordering::Acquire);
            if before & 1 == 0 {
                let r = read();
                // Orders the run's loads before the second look at the
                // sequence word.
                fence(Ordering::Acquire);
                if seq.load(Ordering::Relaxed) == before {
                    return r;
                }
            }
            std::hint::spin_loop();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU64;

    #[test]
    fn a_read_that_overlaps_a_write_runs_again() {
        let seqs = BlockSeqs::new(2);
        let mut runs = 0;
        let r = seqs.read(1, || {
            runs += 1;
            if runs == 1 {
                // A write of the block lands in the middle of the first run.
                seqs.write(1, || ());
            }
            runs
        });
        assert_eq!((r, runs), (2, 2));
        // Writes of another block do not disturb a read.
        let mut runs = 0;
        seqs.read(0, || {
            runs += 1;
            seqs.write(1, || ());
        });
        assert_eq!(runs, 1);
    }

    #[test]
    fn readers_never_accept_a_half_done_change() {
        // Two words that a writer always changes together: a reader must
        // never return them unequal.
        let seqs = BlockSeqs::new(1);
        let (a, b) = (AtomicU64::new(0), AtomicU64::new(0));
        std::thread::scope(|s| {
            s.spawn(|| {
                for i in 1..=20_000u64 {
                    seqs.write(0, || {
                        a.store(i, Ordering::Relaxed);
                        b.store(i, Ordering::Relaxed);
                    });
                }
            });
            for _ in 0..20_000 {
                let (x, y) = seqs.read(0, || (a.load(Ordering::Relaxed), b.load(Ordering::Relaxed)));
                assert_eq!(x, y);
            }
        });
    }
}
