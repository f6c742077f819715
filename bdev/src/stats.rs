//! I/O counters. Each channel counts into its own cache line (one writer,
//! no contention on the data path); the device sums live channels and the
//! totals of closed ones when asked.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};

use parking_lot::Mutex;
use serde::Serialize;

/// A snapshot of the counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct IoCounts {
    /// Reads completed successfully.
    pub reads: u64,
    /// Writes completed successfully.
    pub writes: u64,
    /// Unmaps completed successfully.
    pub unmaps: u64,
    /// Write-zeroes completed successfully.
    pub write_zeroes: u64,
    /// Flushes completed successfully.
    pub flushes: u64,
    /// Resets completed.
    pub resets: u64,
    /// Bytes read.
    pub bytes_read: u64,
    /// Bytes written.
    pub bytes_written: u64,
    /// Requests completed FAILED.
    pub failed: u64,
    /// Requests answered NOMEM (SPDK retries them).
    pub nomem: u64,
    /// Requests whose data went through a bounce buffer.
    pub bounced: u64,
}

impl IoCounts {
    fn add(&mut self, o: &IoCounts) {
        self.reads += o.reads;
        self.writes += o.writes;
        self.unmaps += o.unmaps;
        self.write_zeroes += o.write_zeroes;
        self.flushes += o.flushes;
        self.resets += o.resets;
        self.bytes_read += o.bytes_read;
        self.bytes_written += o.bytes_written;
        self.failed += o.failed;
        self.nomem += o.nomem;
        self.bounced += o.bounced;
    }
}

/// Which counter to bump.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Counter {
    /// A read of that many bytes.
    Read(u64),
    /// A write of that many bytes.
    Write(u64),
    /// An unmap.
    Unmap,
    /// A write-zeroes.
    WriteZeroes,
    /// A flush.
    Flush,
    /// A reset.
    Reset,
    /// A failure.
    Failed,
    /// A NOMEM answer.
    NoMem,
    /// A bounced request.
    Bounced,
}

/// One channel's counters; written only by the channel's thread.
#[repr(align(64))]
#[derive(Debug, Default)]
pub struct ChannelCounters {
    c: [AtomicU64; 11],
}

impl ChannelCounters {
    /// Bumps a counter (single writer: a relaxed load and store, no RMW).
    #[inline]
    pub fn bump(&self, what: Counter) {
        let (i, by) = match what {
            Counter::Read(bytes) => {
                self.add(6, bytes);
                (0, 1)
            }
            Counter::Write(bytes) => {
                self.add(7, bytes);
                (1, 1)
            }
            Counter::Unmap => (2, 1),
            Counter::WriteZeroes => (3, 1),
            Counter::Flush => (4, 1),
            Counter::Reset => (5, 1),
            Counter::Failed => (8, 1),
            Counter::NoMem => (9, 1),
            Counter::Bounced => (10, 1),
        };
        self.add(i, by);
    }

    #[inline]
    fn add(&self, i: usize, by: u64) {
        let v = self.c[i].load(Ordering::Relaxed);
        self.c[i].store(v.wrapping_add(by), Ordering::Relaxed);
    }

    /// A snapshot.
    pub fn snapshot(&self) -> IoCounts {
        let g = |i: usize| self.c[i].load(Ordering::Relaxed);
        IoCounts {
            reads: g(0),
            writes: g(1),
            unmaps: g(2),
            write_zeroes: g(3),
            flushes: g(4),
            resets: g(5),
            bytes_read: g(6),
            bytes_written: g(7),
            failed: g(8),
            nomem: g(9),
            bounced: g(10),
        }
    }
}

/// The device's view: live channels plus the totals of closed ones.
#[derive(Debug, Default)]
pub struct DeviceCounters {
    inner: Mutex<(Vec<Weak<ChannelCounters>>, IoCounts)>,
}

impl DeviceCounters {
    /// Counters for a new channel.
    pub fn channel(&self) -> Arc<ChannelCounters> {
        let c = Arc::new(ChannelCounters::default());
        let mut g = self.inner.lock();
        g.0.retain(|w| w.strong_count() > 0);
        g.0.push(Arc::downgrade(&c));
        c
    }

    /// A channel closed: fold its counts into the totals.
    pub fn retire(&self, c: &Arc<ChannelCounters>) {
        let mut g = self.inner.lock();
        let snap = c.snapshot();
        g.1.add(&snap);
        g.0.retain(|w| !std::ptr::eq(w.as_ptr(), Arc::as_ptr(c)) && w.strong_count() > 0);
    }

    /// Everything counted so far.
    pub fn total(&self) -> IoCounts {
        let g = self.inner.lock();
        let mut t = g.1;
        for c in g.0.iter().filter_map(Weak::upgrade) {
            t.add(&c.snapshot());
        }
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn live_and_retired_channels_sum() {
        let d = DeviceCounters::default();
        let a = d.channel();
        let b = d.channel();
        a.bump(Counter::Read(4096));
        a.bump(Counter::Read(8192));
        b.bump(Counter::Write(512));
        b.bump(Counter::NoMem);
        b.bump(Counter::Bounced);
        let t = d.total();
        assert_eq!(
            (t.reads, t.bytes_read, t.writes, t.bytes_written),
            (2, 12288, 1, 512)
        );
        assert_eq!((t.nomem, t.bounced, t.failed), (1, 1, 0));
        d.retire(&b);
        drop(b);
        a.bump(Counter::Failed);
        let t = d.total();
        assert_eq!((t.reads, t.writes, t.failed, t.nomem), (2, 1, 1, 1));
        assert_eq!(std::mem::align_of::<ChannelCounters>(), 64);
    }

    #[test]
    fn counters_from_other_threads_are_seen() {
        let d = Arc::new(DeviceCounters::default());
        std::thread::scope(|s| {
            for _ in 0..2 {
                let d = d.clone();
                s.spawn(move || {
                    let c = d.channel();
                    for _ in 0..1000 {
                        c.bump(Counter::Unmap);
                    }
                    d.retire(&c);
                });
            }
        });
        assert_eq!(d.total().unmaps, 2000);
    }
}
