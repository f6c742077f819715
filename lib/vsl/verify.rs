//! Data-integrity verification (`iomem verify`): write self-describing
//! sectors (LBA, generation, seed, checksum) with a set of block sizes and
//! access patterns, read everything back, and report every sector that does
//! not hold exactly what was written last.

use std::sync::Arc;
use std::time::Instant;

use serde::Serialize;

use super::blocking::BlockingChannel;
use super::device::Vsl;
use super::error::VslError;
use super::pattern::{check_sector, fill, SectorContent};
use super::torture::Rng;

/// Access pattern.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Rw {
    /// Sequential writes, then sequential reads.
    Write,
    /// Writes in random order, then sequential reads.
    RandWrite,
    /// Random writes and reads of already-written blocks, mixed.
    RandRw,
}

impl std::str::FromStr for Rw {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "write" => Ok(Rw::Write),
            "randwrite" => Ok(Rw::RandWrite),
            "randrw" => Ok(Rw::RandRw),
            other => Err(format!("unknown pattern {other:?}: use write, randwrite or randrw")),
        }
    }
}

/// Options of a verify run.
#[derive(Debug, Clone, Serialize)]
pub struct VerifyOptions {
    /// Block sizes in bytes, each a multiple of the sector size.
    pub block_sizes: Vec<usize>,
    /// Access pattern.
    pub rw: Rw,
    /// Bytes of the device to cover (from LBA 0); 0 = whole device.
    pub size: u64,
    /// Seed of data and order.
    pub seed: u64,
}

/// One mismatch.
#[derive(Debug, Clone, Serialize)]
pub struct Mismatch {
    /// The LBA.
    pub lba: u64,
    /// What was expected.
    pub expected: String,
    /// What was found.
    pub found: String,
}

/// Result of one block size.
#[derive(Debug, Clone, Serialize)]
pub struct PassReport {
    /// Block size.
    pub block_size: usize,
    /// Bytes written.
    pub bytes_written: u64,
    /// Bytes read and checked.
    pub bytes_read: u64,
    /// Write throughput, MiB/s.
    pub write_mib_s: f64,
    /// Read throughput, MiB/s.
    pub read_mib_s: f64,
}

/// Result of a verify run.
#[derive(Debug, Clone, Serialize)]
pub struct VerifyReport {
    /// Per block size.
    pub passes: Vec<PassReport>,
    /// Sectors checked.
    pub sectors_checked: u64,
    /// Mismatches (first 100).
    pub mismatches: Vec<Mismatch>,
    /// Total mismatching sectors.
    pub mismatch_count: u64,
    /// I/O errors.
    pub io_errors: Vec<String>,
}

impl VerifyReport {
    /// Whether every sector verified.
    pub fn passed(&self) -> bool {
        self.mismatch_count == 0 && self.io_errors.is_empty()
    }
}

/// Runs the verification; `progress(done, total)` counts bytes moved.
pub fn run(vsl: &Arc<Vsl>, opts: &VerifyOptions, progress: &mut dyn FnMut(u64, u64)) -> Result<VerifyReport, VslError> {
    let ss = vsl.sector_size() as usize;
    let cap = vsl.num_sectors() * ss as u64;
    let size = if opts.size == 0 { cap } else { opts.size.min(cap) };
    for &bs in &opts.block_sizes {
        if bs == 0 || bs % ss != 0 || bs > super::channel::MAX_REQUEST_BYTES {
            return Err(VslError::InvalidOptions(format!(
                "block size {bs} must be a non-zero multiple of the {ss}-byte sector size, at most {} bytes",
                super::channel::MAX_REQUEST_BYTES
            )));
        }
    }
    let mut ch = BlockingChannel::new(vsl.channel()?)?;
    let mut report = VerifyReport {
        passes: Vec::new(),
        sectors_checked: 0,
        mismatches: Vec::new(),
        mismatch_count: 0,
        io_errors: Vec::new(),
    };
    let mut rng = Rng::new(opts.seed);
    let total: u64 = opts.block_sizes.iter().map(|&bs| (size / bs as u64) * bs as u64 * 2).sum();
    let mut moved = 0u64;
    progress(0, total);
    let mut buf = Vec::new();
    for (pass, &bs) in opts.block_sizes.iter().enumerate() {
        let gen = pass as u64 + 1;
        let nblocks = size / bs as u64;
        let spb = (bs / ss) as u64;
        buf.resize(bs, 0);
        let mut order: Vec<u64> = (0..nblocks).collect();
        if opts.rw != Rw::Write {
            for i in (1..order.len()).rev() {
                let j = rng.range(0, i as u64) as usize;
                order.swap(i, j);
            }
        }
        let mut written = vec![false; nblocks as usize];
        let mut p = PassReport {
            block_size: bs,
            bytes_written: 0,
            bytes_read: 0,
            write_mib_s: 0.0,
            read_mib_s: 0.0,
        };
        let t = Instant::now();
        let mut read_time = 0.0f64;
        for (i, &blk) in order.iter().enumerate() {
            let lba = blk * spb;
            fill(&mut buf, ss, lba, gen, opts.seed);
            if let Err(e) = ch.write(lba, &buf) {
                report.io_errors.push(format!("write of LBA {lba} (+{spb}) failed: {e}"));
                continue;
            }
            written[blk as usize] = true;
            p.bytes_written += bs as u64;
            moved += bs as u64;
            progress(moved, total);
            if opts.rw == Rw::RandRw && i % 2 == 1 {
                // Read back a random block already written in this pass.
                let pick = order[rng.range(0, i as u64) as usize];
                let rt = Instant::now();
                check_block(&mut ch, pick * spb, spb, ss, gen, opts.seed, &mut report);
                read_time += rt.elapsed().as_secs_f64();
            }
        }
        let wt = t.elapsed().as_secs_f64() - read_time;
        let t = Instant::now();
        for blk in 0..nblocks {
            if !written[blk as usize] {
                continue;
            }
            check_block(&mut ch, blk * spb, spb, ss, gen, opts.seed, &mut report);
            p.bytes_read += bs as u64;
            moved += bs as u64;
            progress(moved, total);
        }
        let rt = t.elapsed().as_secs_f64() + read_time;
        p.write_mib_s = p.bytes_written as f64 / (1 << 20) as f64 / wt.max(1e-9);
        p.read_mib_s = p.bytes_read as f64 / (1 << 20) as f64 / rt.max(1e-9);
        report.passes.push(p);
    }
    Ok(report)
}

fn check_block(ch: &mut BlockingChannel, lba: u64, n: u64, ss: usize, gen: u64, seed: u64, report: &mut VerifyReport) {
    match ch.read(lba, n as usize) {
        Ok(data) => {
            for i in 0..n {
                let l = lba + i;
                let got = check_sector(&data[i as usize * ss..(i as usize + 1) * ss], l, seed);
                report.sectors_checked += 1;
                if got != (SectorContent::Data { generation: gen }) {
                    report.mismatch_count += 1;
                    if report.mismatches.len() < 100 {
                        report.mismatches.push(Mismatch {
                            lba: l,
                            expected: format!("generation {gen}"),
                            found: format!("{got:?}"),
                        });
                    }
                }
            }
        }
        Err(e) => report.io_errors.push(format!("read of LBA {lba} (+{n}) failed: {e}")),
    }
}
