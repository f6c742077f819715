//! What a bench job drives: the whole stack through an I/O channel, or the
//! memcpy baseline (a plain in-memory array behind the same interface).

use std::collections::VecDeque;

use iomemory::blk::{IoChannel, IoVec, SubmitError};

use super::workload::Op;

/// One job's I/O buffer: DMA memory the card can reach.
#[derive(Debug, Clone, Copy)]
pub struct SlotBuf {
    /// Host address.
    pub ptr: *mut u8,
    /// Device address.
    pub iova: u64,
    /// Bytes.
    pub len: usize,
}

/// Why a submission did not go through.
pub enum Refused {
    /// Queue full or throttled: poll and retry.
    Retry,
    /// Anything else: the bench stops with this message.
    Fatal(String),
}

/// A block target a job drives.
pub trait Target {
    /// Starts `op` of `buf.len` bytes at block `lba`; `ctx` comes back from
    /// [`Target::poll`].
    fn submit(&mut self, op: Op, lba: u64, buf: SlotBuf, ctx: u64) -> Result<(), Refused>;
    /// Delivers completions.
    fn poll(&mut self, done: &mut dyn FnMut(u64, Result<(), String>)) -> usize;
}

impl Target for IoChannel {
    #[inline]
    fn submit(&mut self, op: Op, lba: u64, buf: SlotBuf, ctx: u64) -> Result<(), Refused> {
        // SAFETY: `buf` is a slice of the job's DmaRegion, registered with
        // the card's IOVA space, alive for the whole run, and the job does
        // not touch a slot while its I/O is in flight.
        let iov = [unsafe { IoVec::new(buf.ptr, buf.iova, buf.len) }];
        let result = match op {
            Op::Read => self.read(lba, &iov, ctx),
            Op::Write => self.write(lba, &iov, ctx),
        };
        result.map_err(|e: SubmitError| {
            if e.is_retryable() {
                Refused::Retry
            } else {
                Refused::Fatal(e.to_string())
            }
        })
    }

    #[inline]
    fn poll(&mut self, done: &mut dyn FnMut(u64, Result<(), String>)) -> usize {
        IoChannel::poll(self, &mut |ctx, result| done(ctx, result.map_err(|e| e.to_string())))
    }
}

/// The ceiling: the same workload against a plain array in memory. A
/// submission copies immediately; its completion is delivered by the next
/// poll, like a queue pair's.
pub struct MemTarget {
    array: *mut u8,
    array_len: usize,
    block: usize,
    completed: VecDeque<u64>,
}

// SAFETY: each job gets its own MemTarget over a disjoint range of the
// shared array (the runner assigns non-overlapping LBA ranges), so no two
// threads write the same bytes; the array outlives every job.
unsafe impl Send for MemTarget {}

impl MemTarget {
    /// A target over `array_len` bytes at `array` with `block`-byte blocks.
    ///
    /// # Safety
    /// `array` must be valid for `array_len` bytes for the target's life,
    /// and the caller must only submit LBAs no other thread uses.
    pub unsafe fn new(array: *mut u8, array_len: usize, block: usize, depth: usize) -> Self {
        Self {
            array,
            array_len,
            block,
            completed: VecDeque::with_capacity(depth),
        }
    }
}

impl Target for MemTarget {
    #[inline]
    fn submit(&mut self, op: Op, lba: u64, buf: SlotBuf, ctx: u64) -> Result<(), Refused> {
        let offset = lba as usize * self.block;
        if offset + buf.len > self.array_len {
            return Err(Refused::Fatal(format!("LBA {lba} outside the baseline array")));
        }
        // SAFETY: bounds checked above; `buf` is the job's own slot and the
        // range belongs to this job only (see `new`).
        unsafe {
            match op {
                Op::Read => std::ptr::copy_nonoverlapping(self.array.add(offset), buf.ptr, buf.len),
                Op::Write => std::ptr::copy_nonoverlapping(buf.ptr, self.array.add(offset), buf.len),
            }
        }
        self.completed.push_back(ctx);
        Ok(())
    }

    #[inline]
    fn poll(&mut self, done: &mut dyn FnMut(u64, Result<(), String>)) -> usize {
        let n = self.completed.len();
        for _ in 0..n {
            if let Some(ctx) = self.completed.pop_front() {
                done(ctx, Ok(()));
            }
        }
        n
    }
}
