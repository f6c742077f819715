//! A blocking convenience wrapper over [`VslChannel`] for tools and tests:
//! it owns a DMA buffer, copies data in and out of it, retries `QueueFull`
//! and `Busy` by polling, and waits for each request.
//!
//! It is not the fast path (one request at a time); the verify, torture and
//! WA tools use it where simplicity matters more than queue depth.

use std::time::{Duration, Instant};

use crate::dma::DmaRegion;

use super::channel::{VslChannel, MAX_REQUEST_BYTES};
use super::device::IoVec;
use super::error::{IoError, SubmitError, VslError};

/// Why a blocking operation failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BlockingError {
    /// The request was refused at submission.
    #[error("{0}")]
    Submit(#[from] SubmitError),
    /// The request failed.
    #[error("{0}")]
    Io(#[from] IoError),
    /// No completion arrived in time.
    #[error("request did not complete within {0:?}")]
    Timeout(Duration),
}

/// A channel plus a DMA buffer of [`MAX_REQUEST_BYTES`].
pub struct BlockingChannel {
    ch: VslChannel,
    buf: DmaRegion,
    sector: usize,
    timeout: Duration,
}

impl std::fmt::Debug for BlockingChannel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlockingChannel").finish_non_exhaustive()
    }
}

impl BlockingChannel {
    /// Wraps `ch`, allocating its buffer from the card's DMA space.
    pub fn new(ch: VslChannel) -> Result<Self, VslError> {
        let buf = DmaRegion::allocate(ch.vsl().card().dma(), MAX_REQUEST_BYTES)?;
        let sector = ch.vsl().sector_size() as usize;
        Ok(Self {
            ch,
            buf,
            sector,
            timeout: Duration::from_secs(60),
        })
    }

    /// The channel.
    pub fn channel(&mut self) -> &mut VslChannel {
        &mut self.ch
    }

    fn iovec(&self, offset: usize, len: usize) -> IoVec {
        // SAFETY: the region lives as long as `self`, and every request
        // using it completes (or times out, after which `self` is unusable
        // only through &mut) before the next one reuses the buffer.
        unsafe { IoVec::from_region(&self.buf, offset, len) }.unwrap_or_else(|| {
            // Length is bounded by MAX_REQUEST_BYTES at every call site.
            // SAFETY: an empty IoVec at the region start is always valid.
            unsafe { IoVec::new(self.buf.as_ptr(), self.buf.iova(), 0) }
        })
    }

    /// Submits with `submit`, retrying retryable refusals, and waits.
    fn run(&mut self, mut submit: impl FnMut(&mut VslChannel, IoVec) -> Result<(), SubmitError>, len: usize) -> Result<(), BlockingError> {
        let iov = self.iovec(0, len);
        let start = Instant::now();
        loop {
            match submit(&mut self.ch, iov) {
                Ok(()) => break,
                Err(e) if e.is_retryable() => {
                    self.ch.poll(&mut |_, _| {});
                    if start.elapsed() > self.timeout {
                        return Err(BlockingError::Timeout(self.timeout));
                    }
                    std::thread::yield_now();
                }
                Err(e) => return Err(e.into()),
            }
        }
        let mut result = None;
        while result.is_none() {
            self.ch.poll(&mut |_, r| result = Some(r));
            if result.is_none() {
                if start.elapsed() > self.timeout {
                    return Err(BlockingError::Timeout(self.timeout));
                }
                std::thread::yield_now();
            }
        }
        result.unwrap_or(Ok(())).map_err(BlockingError::Io)
    }

    /// Writes `data` (whole sectors) at `lba`.
    pub fn write(&mut self, lba: u64, data: &[u8]) -> Result<(), BlockingError> {
        if data.len() > self.buf.len() {
            return Err(SubmitError::TooLarge {
                bytes: data.len(),
                max: MAX_REQUEST_BYTES,
            }
            .into());
        }
        self.buf.fill(0, data).map_err(|_| SubmitError::Invalid("buffer copy failed"))?;
        self.run(|ch, iov| ch.write(lba, &[iov], 0), data.len())
    }

    /// Reads `sectors` sectors at `lba`.
    pub fn read(&mut self, lba: u64, sectors: usize) -> Result<Vec<u8>, BlockingError> {
        let len = sectors * self.sector;
        if len > self.buf.len() {
            return Err(SubmitError::TooLarge {
                bytes: len,
                max: MAX_REQUEST_BYTES,
            }
            .into());
        }
        self.run(|ch, iov| ch.read(lba, &[iov], 0), len)?;
        let mut out = vec![0u8; len];
        self.buf.copy_out(0, &mut out).map_err(|_| SubmitError::Invalid("buffer copy failed"))?;
        Ok(out)
    }

    /// Unmaps sectors.
    pub fn unmap(&mut self, lba: u64, count: u64) -> Result<(), BlockingError> {
        self.run(|ch, _| ch.unmap(lba, count, 0), 0)
    }

    /// Flushes.
    pub fn flush(&mut self) -> Result<(), BlockingError> {
        self.run(|ch, _| ch.flush(0), 0)
    }

    /// Writes `ranges` (LBA, data) atomically.
    pub fn atomic_write(&mut self, ranges: &[(u64, &[u8])]) -> Result<(), BlockingError> {
        let total: usize = ranges.iter().map(|(_, d)| d.len()).sum();
        if total > self.buf.len() || ranges.len() > 64 {
            return Err(SubmitError::TooLarge {
                bytes: total,
                max: MAX_REQUEST_BYTES,
            }
            .into());
        }
        let mut iovs = [self.iovec(0, 0); 64];
        let mut off = 0;
        for (i, (_, d)) in ranges.iter().enumerate() {
            self.buf.fill(off, d).map_err(|_| SubmitError::Invalid("buffer copy failed"))?;
            iovs[i] = self.iovec(off, d.len());
            off += d.len();
        }
        let n = ranges.len();
        let lbas: Vec<u64> = ranges.iter().map(|(l, _)| *l).collect();
        self.run(
            |ch, _| {
                let mut spec: [(u64, &[IoVec]); 64] = [(0, &[]); 64];
                for i in 0..n {
                    spec[i] = (lbas[i], std::slice::from_ref(&iovs[i]));
                }
                ch.atomic_write(&spec[..n], 0)
            },
            0,
        )
    }
}
