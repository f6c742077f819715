//! Lifetime counters of an attached VSL (atomics, bumped from any thread)
//! and their serializable snapshot, which also serves as a thread's private
//! tally: an I/O thread counts into a [`CounterSnapshot`] of its own and
//! adds it to the shared counters now and then ([`Counters::add`]), so the
//! shared lines are not written, and bounced between cores, on every I/O.

use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;

macro_rules! counters {
    ($( $(#[$doc:meta])* $name:ident ),* $(,)?) => {
        /// Live counters; each is a relaxed atomic.
        #[derive(Debug, Default)]
        pub struct Counters {
            $( $(#[$doc])* pub $name: AtomicU64, )*
        }

        /// A point-in-time copy of [`Counters`].
        #[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
        pub struct CounterSnapshot {
            $( $(#[$doc])* pub $name: u64, )*
        }

        impl Counters {
            /// Copies every counter.
            pub fn snapshot(&self) -> CounterSnapshot {
                CounterSnapshot { $( $name: self.$name.load(Ordering::Relaxed), )* }
            }

            /// Sets every counter from a snapshot (checkpoint load).
            pub fn restore(&self, s: &CounterSnapshot) {
                $( self.$name.store(s.$name, Ordering::Relaxed); )*
            }

            /// Adds a thread's private tally (the counts it kept since its
            /// last `add`); counters it did not move are not written.
            pub fn add(&self, tally: &CounterSnapshot) {
                $( if tally.$name != 0 { self.$name.fetch_add(tally.$name, Ordering::Relaxed); } )*
            }
        }

        impl CounterSnapshot {
            /// The counters in declaration order (checkpoint encoding).
            pub fn to_vec(&self) -> Vec<u64> {
                vec![ $( self.$name, )* ]
            }

            /// Inverse of [`Self::to_vec`]; missing trailing values are zero.
            pub fn from_slice(v: &[u64]) -> Self {
                let mut it = v.iter().copied();
                Self { $( $name: it.next().unwrap_or(0), )* }
            }

            /// Whether every count is zero (a tally with nothing to add).
            pub fn is_zero(&self) -> bool {
                true $( && self.$name == 0 )*
            }
        }
    };
}

counters! {
    /// Pages programmed for user writes (data pages of writes and atomic writes).
    user_pages,
    /// Sectors written by users.
    user_sectors_written,
    /// Sectors read by users.
    user_sectors_read,
    /// Pages the groomer programmed while relocating.
    groomer_pages,
    /// Padding pages (closing a block early for an atomic group).
    pad_pages,
    /// Trim note pages programmed.
    note_pages,
    /// Checkpoint pages programmed.
    checkpoint_pages,
    /// Blocks erased by the groomer.
    erases,
    /// Flush requests completed.
    flushes,
    /// Unmap / write-zeroes requests completed.
    trims,
    /// Sectors unmapped.
    trimmed_sectors,
    /// Atomic writes completed.
    atomic_writes,
    /// Bits the card's ECC corrected on reads the VSL issued.
    ecc_corrected_bits,
    /// Page reads that needed ECC correction.
    ecc_corrected_reads,
    /// Page reads that were uncorrectable.
    uncorrectable_reads,
    /// Page reads whose data did not match its checksum.
    checksum_errors,
    /// Program failures handled (block retired, data rewritten elsewhere).
    program_failures,
    /// Erase failures handled (block retired).
    erase_failures,
    /// Blocks retired after failures.
    retired_blocks,
    /// Writes refused with `Busy` while the groomer caught up.
    busy_rejections,
    /// Blocks the groomer reclaimed.
    gc_victims,
    /// Blocks relocated by wear levelling.
    wear_level_moves,
    /// Sectors whose only copy became unreadable during relocation.
    lost_sectors,
}

impl CounterSnapshot {
    /// Pages programmed in total over pages users asked for: `(user + groomer
    /// + padding + notes) / user`; 1.0 when nothing was written yet.
    pub fn write_amplification(&self) -> f64 {
        if self.user_pages == 0 {
            return 1.0;
        }
        (self.user_pages + self.groomer_pages + self.pad_pages + self.note_pages) as f64 / self.user_pages as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tallies_of_several_threads_add_up_exactly() {
        let c = Counters::default();
        c.user_sectors_read.store(5, Ordering::Relaxed);
        std::thread::scope(|s| {
            for t in 1..=4u64 {
                let c = &c;
                s.spawn(move || {
                    // Each thread tallies privately and adds every 64 I/Os,
                    // then once more for the rest.
                    let mut tally = CounterSnapshot::default();
                    for i in 0..1000u64 {
                        tally.user_sectors_read += t;
                        tally.ecc_corrected_bits += i % 2;
                        if i % 64 == 63 {
                            c.add(&tally);
                            tally = CounterSnapshot::default();
                        }
                    }
                    assert!(!tally.is_zero());
                    c.add(&tally);
                });
            }
        });
        let s = c.snapshot();
        assert_eq!(s.user_sectors_read, 5 + 1000 * (1 + 2 + 3 + 4));
        assert_eq!(s.ecc_corrected_bits, 4 * 500);
        assert_eq!(s.user_pages, 0);
        assert!(CounterSnapshot::default().is_zero());
    }

    #[test]
    fn snapshot_round_trips_and_computes_wa() {
        let c = Counters::default();
        c.user_pages.store(100, Ordering::Relaxed);
        c.groomer_pages.store(150, Ordering::Relaxed);
        c.pad_pages.store(10, Ordering::Relaxed);
        let s = c.snapshot();
        assert!((s.write_amplification() - 2.6).abs() < 1e-9);
        let back = CounterSnapshot::from_slice(&s.to_vec());
        assert_eq!(back, s);
        let d = Counters::default();
        d.restore(&s);
        assert_eq!(d.snapshot(), s);
        assert_eq!(CounterSnapshot::default().write_amplification(), 1.0);
    }
}
