//! `iomem bench`: fio-like load on the whole stack, with the memcpy
//! baseline through the same harness.

mod hist;
mod target;
pub mod workload;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use iomemory::blk::{pin_to_core, BlockDevice, OpenOptions};
use iomemory::card::Card;
use iomemory::dma::DmaRegion;
use iomemory::emu::{iodrive2_config, Backing, EmuOptions, NandArray, TimingProfile};
use iomemory::units::parse_size;
use iomemory::vsl::{FormatOptions, VslStatus};

use crate::progress;
use serde_json::json;

pub use hist::Histogram;
use target::{MemTarget, Refused, SlotBuf, Target};
use workload::{check_pattern, fill_pattern, Generator, Op, RwMode};

/// Options of `iomem bench`.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// I/O pattern: read, write, randread, randwrite, randrw.
    #[arg(long, default_value = "randread")]
    pub rw: String,
    /// Percentage of reads in randrw.
    #[arg(long, default_value_t = 50)]
    pub rwmixread: u64,
    /// Bytes per I/O (512, 4k, 64k, 1m, ...).
    #[arg(long, default_value = "4k")]
    pub bs: String,
    /// I/Os in flight per job.
    #[arg(long, default_value_t = 32)]
    pub iodepth: usize,
    /// Jobs (threads, each with its own channel, pinned to a core).
    #[arg(long, default_value_t = 1)]
    pub numjobs: usize,
    /// Seconds to run (ignored with --size).
    #[arg(long, default_value_t = 10.0)]
    pub runtime: f64,
    /// Bytes each job moves, instead of a runtime.
    #[arg(long)]
    pub size: Option<String>,
    /// Check every byte read against what was written.
    #[arg(long)]
    pub verify: bool,
    /// Machine-readable result.
    #[arg(long)]
    pub json: bool,
    /// An emulated card image to run on (formatted if blank).
    #[arg(long, conflicts_with = "new_card")]
    pub card: Option<PathBuf>,
    /// Run on a fresh memory-backed emulated card of this size.
    #[arg(long, default_value = "1GiB")]
    pub new_card: String,
    /// NAND timing model of the fresh card: none or iodrive2.
    #[arg(long, default_value = "none")]
    pub timing: String,
    /// Sector size of the fresh card's format: 512 or 4096.
    #[arg(long, default_value_t = 4096)]
    pub sector_size: u32,
    /// Also run the same workload against a plain memory array: memcpy.
    #[arg(long, value_parser = ["memcpy"])]
    pub baseline: Option<String>,
    /// Write the working set before measuring reads: auto (fresh cards), always, never.
    #[arg(long, default_value = "auto", value_parser = ["auto", "always", "never"])]
    pub prefill: String,
    /// Seed of the I/O pattern.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Benchmark a real NVMe controller over VFIO instead: PCI_ADDR[/NSID]
    /// (see `iomem nvme bench`; --rw, --bs, --iodepth, --numjobs,
    /// --runtime, --size and --json apply).
    #[arg(long, conflicts_with_all = ["card", "baseline", "verify"])]
    pub nvme: Option<String>,
}

/// What a job drives: its target, its I/O buffers, and whatever must stay
/// alive while they are in use (the DMA region behind the buffers).
type JobTarget = (Box<dyn Target>, Vec<SlotBuf>, Box<dyn std::any::Any>);

/// Everything a job needs to know.
#[derive(Debug, Clone)]
struct JobPlan {
    mode: RwMode,
    read_percent: u64,
    bs: usize,
    block: usize,
    iodepth: usize,
    first_lba: u64,
    units: u64,
    deadline: Option<Duration>,
    bytes: Option<u64>,
    verify: bool,
    /// With verify: blocks not yet written in this run read as zeros (a
    /// fresh card). When false, a read of such a block becomes a write.
    unwritten_is_zero: bool,
    seed: u64,
}

/// What a job measured.
#[derive(Clone, Default)]
struct JobResult {
    reads: u64,
    writes: u64,
    read_lat: Histogram,
    write_lat: Histogram,
    cpu_ns: u64,
    elapsed: Duration,
    error: Option<String>,
    /// With verify: the generation last acknowledged per I/O unit (0 = none).
    gens: Vec<u32>,
    /// With verify: writes in flight when the job stopped (unit, generation).
    in_flight_writes: Vec<(usize, u32)>,
}

fn thread_cpu_ns() -> u64 {
    // SAFETY: getrusage fills the zeroed struct it is given; RUSAGE_THREAD
    // is the calling thread.
    let usage = unsafe {
        let mut u: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_THREAD, &mut u);
        u
    };
    let tv = |t: libc::timeval| t.tv_sec as u64 * 1_000_000_000 + t.tv_usec as u64 * 1_000;
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

/// After a power cut the card completes nothing more: a job that failed
/// with a power-loss error stops waiting for its other I/Os.
fn abandon(result: &JobResult) -> bool {
    result.error.as_deref().is_some_and(|e| e.contains("power"))
}

struct Slot {
    busy: bool,
    op: Op,
    lba: u64,
    gen: u32,
    started: Instant,
}

/// Runs one job to its deadline or byte count.
fn run_job(target: &mut dyn Target, bufs: &[SlotBuf], plan: &JobPlan, progress: &AtomicU64) -> JobResult {
    let mut gen_of = if plan.verify { vec![0u32; plan.units as usize] } else { Vec::new() };
    let mut result = JobResult::default();
    let mut generator = Generator::new(plan.mode, plan.read_percent, plan.first_lba, plan.units, (plan.bs / plan.block) as u64, plan.seed);
    let now = Instant::now();
    let mut slots: Vec<Slot> = (0..plan.iodepth)
        .map(|_| Slot { busy: false, op: Op::Read, lba: 0, gen: 0, started: now })
        .collect();
    let mut scratch = vec![0u8; plan.bs];
    let mut next_gen = 1u32;
    let seed32 = plan.seed as u32;
    let start = Instant::now();
    let cpu_start = thread_cpu_ns();
    let mut submitted_bytes = 0u64;
    let mut in_flight = 0usize;
    let mut stopping = false;
    let blocks_per_io = (plan.bs / plan.block) as u64;
    // Time stamps are shared: one per submission burst (taken before the
    // first submit of the burst, so latencies are never understated) and one
    // per poll that completes something (taken at its first completion,
    // after the card posted it). The deadline is checked against the last
    // stamp. Two clock reads per I/O otherwise cost as much as the copy.
    let mut last_stamp = start;
    loop {
        if !stopping {
            let over_time = plan.deadline.is_some_and(|d| last_stamp.duration_since(start) >= d);
            let over_size = plan.bytes.is_some_and(|b| submitted_bytes >= b);
            stopping = over_time || over_size;
        }
        if !stopping {
            let mut burst_stamp: Option<Instant> = None;
            for i in 0..slots.len() {
                if slots[i].busy {
                    continue;
                }
                let (mut op, lba) = generator.next();
                let unit = ((lba - plan.first_lba) / blocks_per_io) as usize;
                if plan.verify && op == Op::Read && gen_of[unit] == 0 && !plan.unwritten_is_zero {
                    op = Op::Write;
                }
                // With verification, never two I/Os on one unit at once:
                // the expected generation must be known when a read lands.
                if plan.verify && slots.iter().any(|s| s.busy && s.lba == lba) {
                    continue;
                }
                let gen = if plan.verify {
                    match op {
                        Op::Write => {
                            let g = next_gen;
                            next_gen = next_gen.wrapping_add(1).max(1);
                            // SAFETY: the slot is idle: no I/O uses its buffer.
                            let buf = unsafe { std::slice::from_raw_parts_mut(bufs[i].ptr, plan.bs) };
                            fill_pattern(buf, plan.block, lba, g, seed32);
                            g
                        }
                        Op::Read => gen_of[unit],
                    }
                } else {
                    0
                };
                let stamp = *burst_stamp.get_or_insert_with(Instant::now);
                match target.submit(op, lba, bufs[i], i as u64) {
                    Ok(()) => {
                        slots[i] = Slot { busy: true, op, lba, gen, started: stamp };
                        in_flight += 1;
                        submitted_bytes += plan.bs as u64;
                    }
                    Err(Refused::Retry) => break,
                    Err(Refused::Fatal(message)) => {
                        result.error = Some(message);
                        stopping = true;
                        break;
                    }
                }
            }
        }
        if stopping && (in_flight == 0 || abandon(&result)) {
            break;
        }
        let mut completed = 0u64;
        let mut poll_stamp: Option<Instant> = None;
        target.poll(&mut |ctx, outcome| {
            let slot = &mut slots[ctx as usize];
            slot.busy = false;
            in_flight -= 1;
            completed += 1;
            let now = *poll_stamp.get_or_insert_with(Instant::now);
            let ns = now.saturating_duration_since(slot.started).as_nanos() as u64;
            if let Err(message) = outcome {
                if plan.verify && slot.op == Op::Write {
                    // Not acknowledged, but parts of it may have landed.
                    let unit = ((slot.lba - plan.first_lba) / blocks_per_io) as usize;
                    result.in_flight_writes.push((unit, slot.gen));
                }
                if result.error.is_none() {
                    result.error = Some(format!("{:?} of LBA {} failed: {message}", slot.op, slot.lba));
                }
                return;
            }
            let unit = ((slot.lba - plan.first_lba) / blocks_per_io) as usize;
            match slot.op {
                Op::Read => {
                    result.reads += 1;
                    result.read_lat.record(ns);
                    if plan.verify && result.error.is_none() {
                        // SAFETY: the read into this slot has completed.
                        let buf = unsafe { std::slice::from_raw_parts(bufs[ctx as usize].ptr, plan.bs) };
                        if let Err(e) = check_pattern(buf, plan.block, slot.lba, slot.gen, seed32, &mut scratch) {
                            result.error = Some(format!("verify failed: {e}"));
                        }
                    }
                }
                Op::Write => {
                    result.writes += 1;
                    result.write_lat.record(ns);
                    if plan.verify {
                        gen_of[unit] = slot.gen;
                    }
                }
            }
        });
        if completed > 0 {
            progress.fetch_add(completed, Ordering::Relaxed);
        }
        last_stamp = match poll_stamp {
            Some(t) => t,
            // Nothing completed (e.g. a timed card still busy): the clock
            // must still move for the deadline.
            None if plan.deadline.is_some() => Instant::now(),
            None => last_stamp,
        };
        if result.error.is_some() {
            stopping = true;
        }
    }
    result.elapsed = start.elapsed();
    result.cpu_ns = thread_cpu_ns() - cpu_start;
    let still_busy: Vec<(usize, u32)> = slots
        .iter()
        .filter(|s| s.busy && s.op == Op::Write)
        .map(|s| (((s.lba - plan.first_lba) / blocks_per_io) as usize, s.gen))
        .collect();
    result.in_flight_writes.extend(still_busy);
    result.gens = gen_of;
    result
}

/// The device a bench runs on, and how it was made.
pub struct BenchDevice {
    /// The block device.
    pub dev: Arc<BlockDevice>,
    /// "new 1GiB memory card (timing none)" or the image path.
    pub description: String,
    /// Whether it was created for this run (so reads need a prefill).
    pub fresh: bool,
}

/// Opens `--card` or creates the `--new-card`.
pub fn open_device(args: &Args) -> Result<BenchDevice, String> {
    let mut progress = |done: u64, total: u64| crate::progress::bar("attach", done, total);
    if let Some(path) = &args.card {
        let opts = OpenOptions { format_if_blank: true, ..Default::default() };
        let dev = BlockDevice::open(path, &opts, &mut progress).map_err(|e| format!("{}: {e}", path.display()))?;
        crate::progress::done();
        return Ok(BenchDevice { dev, description: path.display().to_string(), fresh: false });
    }
    let size = parse_size(&args.new_card)?;
    let mut config = iodrive2_config(size, args.seed);
    config.timing = TimingProfile::parse(&args.timing)?;
    config.factory_bad_fraction = 0.0;
    let nand = NandArray::create(&config, Backing::Memory).map_err(|e| e.to_string())?;
    let card = Card::open_emulated(nand, EmuOptions::default()).map_err(|e| e.to_string())?;
    let opts = OpenOptions {
        format_if_blank: true,
        format: FormatOptions { sector_size: args.sector_size, yes: true, ..Default::default() },
        ..Default::default()
    };
    let dev = BlockDevice::attach(card, &opts, &mut progress).map_err(|e| e.to_string())?;
    crate::progress::done();
    Ok(BenchDevice {
        dev,
        description: format!("new {} memory-backed ioDrive2 (timing {})", args.new_card, args.timing),
        fresh: true,
    })
}

/// Write amplification of what happened between two status snapshots:
/// NAND pages programmed (user, groomer, padding, trim notes) per user page.
fn write_amplification(before: &VslStatus, after: &VslStatus) -> Option<f64> {
    let (b, a) = (&before.counters, &after.counters);
    let user = a.user_pages - b.user_pages;
    if user == 0 {
        return None;
    }
    let all = user + (a.groomer_pages - b.groomer_pages) + (a.pad_pages - b.pad_pages) + (a.note_pages - b.note_pages);
    Some(all as f64 / user as f64)
}

/// Aggregated result of one run.
struct Summary {
    label: String,
    result: JobResult,
    elapsed: f64,
    bs: usize,
}

impl Summary {
    fn ios(&self) -> u64 {
        self.result.reads + self.result.writes
    }
    fn iops(&self) -> f64 {
        self.ios() as f64 / self.elapsed
    }
    fn mbps(&self) -> f64 {
        self.iops() * self.bs as f64 / 1e6
    }
    fn cpu_ns_per_io(&self) -> f64 {
        self.result.cpu_ns as f64 / self.ios().max(1) as f64
    }
    fn lat_json(h: &Histogram) -> serde_json::Value {
        json!({
            "count": h.count(), "min_ns": h.min(), "avg_ns": h.mean(), "p50_ns": h.percentile(50.0),
            "p99_ns": h.percentile(99.0), "p99_9_ns": h.percentile(99.9), "max_ns": h.max(),
        })
    }
    fn json(&self) -> serde_json::Value {
        json!({
            "label": self.label,
            "iops": self.iops(),
            "mb_per_s": self.mbps(),
            "reads": self.result.reads,
            "writes": self.result.writes,
            "seconds": self.elapsed,
            "cpu_ns_per_io": self.cpu_ns_per_io(),
            "read_latency": Self::lat_json(&self.result.read_lat),
            "write_latency": Self::lat_json(&self.result.write_lat),
        })
    }
    fn print(&self) {
        println!("{}:", self.label);
        println!(
            "  IOPS={}, BW={:.1}MB/s, {} ios in {:.2}s, CPU {:.0} ns/IO",
            human(self.iops()),
            self.mbps(),
            self.ios(),
            self.elapsed,
            self.cpu_ns_per_io()
        );
        for (name, h) in [("read", &self.result.read_lat), ("write", &self.result.write_lat)] {
            if h.count() == 0 {
                continue;
            }
            println!(
                "  {name:5} lat (us): min={:.2} avg={:.2} p50={:.2} p99={:.2} p99.9={:.2} max={:.2}",
                h.min() as f64 / 1e3,
                h.mean() / 1e3,
                h.percentile(50.0) as f64 / 1e3,
                h.percentile(99.0) as f64 / 1e3,
                h.percentile(99.9) as f64 / 1e3,
                h.max() as f64 / 1e3
            );
        }
    }
}

fn human(v: f64) -> String {
    if v >= 1e6 {
        format!("{:.2}M", v / 1e6)
    } else if v >= 1e3 {
        format!("{:.1}k", v / 1e3)
    } else {
        format!("{v:.0}")
    }
}

fn plans(args: &Args, block: usize, blocks: u64) -> Result<Vec<JobPlan>, String> {
    let mode = RwMode::parse(&args.rw)?;
    let bs = parse_size(&args.bs)? as usize;
    if bs == 0 || bs % block != 0 {
        return Err(format!("--bs {} is not a multiple of the {block}-byte block size", args.bs));
    }
    if args.numjobs == 0 || args.iodepth == 0 {
        return Err("--numjobs and --iodepth must be at least 1".into());
    }
    let per_job_blocks = blocks / args.numjobs as u64;
    let units = per_job_blocks / (bs / block) as u64;
    if units < args.iodepth as u64 {
        return Err(format!("the device is too small for {} jobs of iodepth {} at bs {}", args.numjobs, args.iodepth, args.bs));
    }
    let bytes = args.size.as_deref().map(parse_size).transpose()?;
    Ok((0..args.numjobs)
        .map(|j| JobPlan {
            mode,
            read_percent: args.rwmixread,
            bs,
            block,
            iodepth: args.iodepth,
            first_lba: j as u64 * per_job_blocks,
            units,
            deadline: if bytes.is_some() { None } else { Some(Duration::from_secs_f64(args.runtime)) },
            bytes,
            verify: args.verify,
            unwritten_is_zero: true,
            seed: args.seed.wrapping_add(j as u64 * 7919),
        })
        .collect())
}

/// A value alone on its (pair of) cache line(s).
#[repr(align(128))]
struct CachePadded<T>(T);

impl<T> CachePadded<T> {
    fn new(value: T) -> Self {
        Self(value)
    }
}

impl<T> std::ops::Deref for CachePadded<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

/// Runs `plans` on threads, each making its target with `make(job)`, with
/// a live progress line; returns the merged result.
/// How running jobs report on stderr: every `every`, `line(seconds,
/// total I/Os, I/Os per second over the last interval)` is drawn over the
/// previous one; `end` is printed once the jobs are done.
struct ProgressLine<'a> {
    every: Duration,
    line: &'a (dyn Fn(f64, u64, f64) -> String + Sync),
    end: &'a str,
}

/// Runs `plans` on threads pinned to cores, each making its target with
/// `make(job)`, with a live progress line unless `progress` is `None`;
/// returns each job's result.
fn spawn_jobs<F>(plans: &[JobPlan], progress_line: Option<ProgressLine<'_>>, make: F) -> Vec<Result<JobResult, String>>
where
    F: Fn(usize, &JobPlan) -> Result<JobTarget, String> + Sync,
{
    // One counter per job on its own cache line: a shared one would bounce
    // between the cores on every poll.
    let progress: Vec<CachePadded<AtomicU64>> = plans.iter().map(|_| CachePadded::new(AtomicU64::new(0))).collect();
    let finished = AtomicBool::new(false);
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let started = Instant::now();
    let results = std::thread::scope(|s| {
        let handles: Vec<_> = plans
            .iter()
            .enumerate()
            .map(|(j, plan)| {
                let make = &make;
                let progress = &*progress[j];
                s.spawn(move || {
                    pin_to_core(j % cores);
                    let (mut target, bufs, _keep) = make(j, plan)?;
                    Ok(run_job(target.as_mut(), &bufs, plan, progress))
                })
            })
            .collect();
        let reporter = s.spawn(|| {
            let Some(p) = &progress_line else { return };
            let mut last = 0;
            let mut tick = Instant::now();
            while !finished.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(50));
                if tick.elapsed() >= p.every {
                    let now: u64 = progress.iter().map(|c| c.load(Ordering::Relaxed)).sum();
                    let rate = (now - last) as f64 / tick.elapsed().as_secs_f64();
                    eprint!("{}", (p.line)(started.elapsed().as_secs_f64(), now, rate));
                    last = now;
                    tick = Instant::now();
                }
            }
            eprint!("{}", p.end);
        });
        let results = handles.into_iter().map(|h| h.join().unwrap_or_else(|_| Err("a bench job panicked".into()))).collect();
        finished.store(true, Ordering::Relaxed);
        let _ = reporter.join();
        results
    });
    results
}

/// Runs `plans` (see [`spawn_jobs`]) and merges their results.
fn run_jobs<F>(label: &str, plans: &[JobPlan], quiet: bool, make: F) -> Result<Summary, String>
where
    F: Fn(usize, &JobPlan) -> Result<JobTarget, String> + Sync,
{
    let line = |t: f64, _total: u64, rate: f64| format!("\r[{label}] {t:5.1}s  {} IOPS   ", human(rate));
    let clear = format!("\r{:60}\r", "");
    let progress = (!quiet).then(|| ProgressLine { every: Duration::from_secs(1), line: &line, end: &clear });
    let results = spawn_jobs(plans, progress, make);
    let mut merged = JobResult::default();
    let mut elapsed = 0f64;
    for r in results {
        let r = r?;
        merged.reads += r.reads;
        merged.writes += r.writes;
        merged.read_lat.merge(&r.read_lat);
        merged.write_lat.merge(&r.write_lat);
        merged.cpu_ns += r.cpu_ns;
        elapsed = elapsed.max(r.elapsed.as_secs_f64());
        if merged.error.is_none() {
            merged.error = r.error;
        }
    }
    Ok(Summary { label: label.to_string(), result: merged, elapsed: elapsed.max(1e-9), bs: plans[0].bs })
}

/// Carves `iodepth` buffers of `bs` bytes out of one DMA region.
fn slot_bufs(region: &DmaRegion, iodepth: usize, bs: usize) -> Vec<SlotBuf> {
    (0..iodepth)
        .map(|i| SlotBuf { ptr: region.as_ptr().wrapping_add(i * bs), iova: region.iova() + (i * bs) as u64, len: bs })
        .collect()
}

/// Writes every job's range once (sequential, large I/Os) so reads hit data.
fn prefill(dev: &Arc<BlockDevice>, plans: &[JobPlan], quiet: bool) -> Result<(), String> {
    let fill_bs = (128 * 1024).max(plans[0].bs);
    let fills: Vec<JobPlan> = plans
        .iter()
        .map(|p| {
            let blocks = p.units * (p.bs / p.block) as u64;
            JobPlan {
                mode: RwMode::Write,
                bs: fill_bs,
                iodepth: 8,
                units: blocks / (fill_bs / p.block) as u64,
                deadline: None,
                bytes: Some(blocks * p.block as u64),
                verify: false,
                ..p.clone()
            }
        })
        .collect();
    let summary = run_jobs("prefill", &fills, quiet, |_, plan| channel_target(dev, plan))?;
    match summary.result.error {
        Some(e) => Err(format!("prefill failed: {e}")),
        None => Ok(()),
    }
}

fn channel_target(dev: &Arc<BlockDevice>, plan: &JobPlan) -> Result<JobTarget, String> {
    let ch = dev.channel().map_err(|e| e.to_string())?;
    let region = DmaRegion::allocate_small(dev.card().dma(), plan.iodepth * plan.bs).map_err(|e| e.to_string())?;
    let bufs = slot_bufs(&region, plan.iodepth, plan.bs);
    Ok((Box::new(ch), bufs, Box::new(region)))
}

/// The baseline array's address, handed to the job threads.
#[derive(Clone, Copy)]
struct SharedArray(*mut u8);

impl SharedArray {
    fn ptr(self) -> *mut u8 {
        self.0
    }
}

// SAFETY: the jobs only touch disjoint LBA ranges of the array (each plan
// has its own `first_lba..first_lba+units`), and the array outlives the
// scoped threads that use the pointer.
unsafe impl Sync for SharedArray {}
// SAFETY: as for Sync.
unsafe impl Send for SharedArray {}

/// Runs `iomem bench`.
pub fn run(args: Args) -> Result<ExitCode, String> {
    let device = open_device(&args)?;
    let dev = device.dev.clone();
    let block = dev.block_size() as usize;
    let plans = plans(&args, block, dev.num_blocks())?;
    let mode = plans[0].mode;
    let quiet = args.json;
    let wants_fill = match args.prefill.as_str() {
        "always" => true,
        "never" => false,
        _ => device.fresh && mode.reads() && !args.verify,
    };
    if wants_fill {
        prefill(&dev, &plans, quiet)?;
    }
    let before = dev.status();
    let stack = run_jobs("iomemory", &plans, quiet, |_, plan| channel_target(&dev, plan))?;
    let after = dev.status();
    let wa = write_amplification(&before, &after);
    let baseline = match args.baseline.as_deref() {
        Some("memcpy") => {
            let len = dev.num_blocks() as usize * block;
            let mut array = vec![0u8; len];
            // Touch every page with data, as the card's NAND holds data: an
            // untouched `vec![0; len]` reads from the kernel's single shared
            // zero page, always in cache, which is not the same workload.
            array.fill(0xa5);
            let shared = SharedArray(array.as_mut_ptr());
            let summary = run_jobs("memcpy baseline", &plans, quiet, |_, plan| {
                // SAFETY: `array` outlives the scoped jobs; each job's
                // plan covers a disjoint LBA range.
                let target = unsafe { MemTarget::new(shared.ptr(), len, block, plan.iodepth) };
                let mut region = vec![0u8; plan.iodepth * plan.bs];
                let bufs: Vec<SlotBuf> = (0..plan.iodepth)
                    .map(|i| SlotBuf { ptr: region.as_mut_ptr().wrapping_add(i * plan.bs), iova: 0, len: plan.bs })
                    .collect();
                Ok((Box::new(target), bufs, Box::new(region)))
            })?;
            drop(array);
            Some(summary)
        }
        _ => None,
    };
    let title = format!(
        "iomem bench: rw={} bs={} iodepth={} numjobs={} {} on {}",
        mode.name(),
        args.bs,
        args.iodepth,
        args.numjobs,
        match &args.size {
            Some(s) => format!("size={s}/job"),
            None => format!("runtime={}s", args.runtime),
        },
        device.description
    );
    if args.json {
        let mut doc = json!({
            "workload": title,
            "stack": stack.json(),
            "write_amplification": wa,
            "vsl_status": after,
        });
        if let Some(b) = &baseline {
            doc["baseline"] = b.json();
            doc["iops_ratio_vs_baseline"] = json!(stack.iops() / b.iops());
        }
        println!("{}", serde_json::to_string_pretty(&doc).map_err(|e| e.to_string())?);
    } else {
        println!("{title}");
        stack.print();
        println!("  write amplification (this run): {}", wa.map_or("n/a (no writes)".to_string(), |w| format!("{w:.2}")));
        if let Some(b) = &baseline {
            b.print();
            println!(
                "ratio iomemory / memcpy baseline: IOPS {:.2}x, CPU ns/IO {:.2}x",
                stack.iops() / b.iops(),
                stack.cpu_ns_per_io() / b.cpu_ns_per_io().max(1e-9)
            );
        }
    }
    drop(dev);
    if let Some(e) = stack.result.error {
        eprintln!("iomem bench: {e}");
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

/// The demo's workload parameters.
#[derive(Debug, Clone)]
pub struct DemoJob {
    /// Threads.
    pub jobs: usize,
    /// Seconds to run (the power cut ends it earlier).
    pub seconds: f64,
    /// Pattern seed (differs per run, so old data never passes for new).
    pub seed: u64,
}

/// What the demo workload did before the cut.
pub struct DemoLoad {
    /// Reads acknowledged (each verified).
    pub reads: u64,
    /// Writes acknowledged.
    pub writes: u64,
    /// Seconds run.
    pub seconds: f64,
    /// Acknowledged I/Os per second.
    pub iops: f64,
    /// Writes not acknowledged when power went.
    pub in_flight_at_cut: usize,
    jobs: Vec<JobOutcome>,
}

/// A job's plan, its acknowledged generations per unit, and the writes that
/// were in flight (unit, generation) when it stopped.
type JobOutcome = (JobPlan, Vec<u32>, Vec<(usize, u32)>);

/// Outcome of the post-recovery check.
#[derive(Debug, Default)]
pub struct DemoCheck {
    /// Blocks read back.
    pub checked: u64,
    /// Holding their last acknowledged write.
    pub acknowledged: u64,
    /// Holding a write that was in flight at the cut (allowed: "or later").
    pub newer: u64,
    /// Holding anything else: a durability violation.
    pub lost: u64,
}

fn demo_plans(dev: &BlockDevice, job: &DemoJob) -> Vec<JobPlan> {
    let block = dev.block_size() as usize;
    let per_job = dev.num_blocks() / job.jobs as u64;
    (0..job.jobs)
        .map(|j| JobPlan {
            mode: RwMode::RandRw,
            read_percent: 70,
            bs: block,
            block,
            iodepth: 16,
            first_lba: j as u64 * per_job,
            units: per_job,
            deadline: Some(Duration::from_secs_f64(job.seconds)),
            bytes: None,
            verify: true,
            unwritten_is_zero: false,
            seed: job.seed.wrapping_add(j as u64 * 104_729),
        })
        .collect()
}

/// Runs the demo workload until its deadline or the power cut.
pub fn run_demo_load(dev: &Arc<BlockDevice>, job: &DemoJob) -> Result<DemoLoad, String> {
    let plans = demo_plans(dev, job);
    let line = |t: f64, ios: u64, _rate: f64| {
        format!("\r  {t:5.1}s  {ios} I/Os verified/acknowledged ({}/s)   ", human(ios as f64 / t.max(1e-3)))
    };
    let progress = ProgressLine { every: Duration::from_millis(250), line: &line, end: "\n" };
    let results = spawn_jobs(&plans, Some(progress), |_, plan| channel_target(dev, plan));
    let mut load = DemoLoad { reads: 0, writes: 0, seconds: 0.0, iops: 0.0, in_flight_at_cut: 0, jobs: Vec::new() };
    for (plan, r) in plans.into_iter().zip(results) {
        let r = r?;
        if let Some(e) = &r.error {
            if e.starts_with("verify failed") {
                return Err(format!("data mismatch before the power cut: {e}"));
            }
        }
        load.reads += r.reads;
        load.writes += r.writes;
        load.seconds = load.seconds.max(r.elapsed.as_secs_f64());
        load.in_flight_at_cut += r.in_flight_writes.len();
        load.jobs.push((plan, r.gens, r.in_flight_writes));
    }
    load.iops = (load.reads + load.writes) as f64 / load.seconds.max(1e-9);
    Ok(load)
}

/// Reads back every block the demo wrote and checks it holds the last
/// acknowledged write or one that was in flight at the cut.
pub fn verify_demo_load(dev: &Arc<BlockDevice>, job: &DemoJob, load: &DemoLoad) -> Result<DemoCheck, String> {
    let _ = job;
    let block = dev.block_size() as usize;
    let mut ch = dev.channel().map_err(|e| e.to_string())?;
    let depth = 32usize;
    let region = DmaRegion::allocate_small(dev.card().dma(), depth * block).map_err(|e| e.to_string())?;
    let bufs = slot_bufs(&region, depth, block);
    let mut scratch = vec![0u8; block];
    let mut check = DemoCheck::default();
    let mut todo: Vec<(u64, u32, Vec<u32>, u32)> = Vec::new();
    for (plan, gens, in_flight) in &load.jobs {
        let mut newer: std::collections::HashMap<usize, Vec<u32>> = std::collections::HashMap::new();
        for (unit, gen) in in_flight {
            newer.entry(*unit).or_default().push(*gen);
        }
        for (unit, gen) in gens.iter().enumerate() {
            if *gen != 0 {
                let later = newer.remove(&unit).unwrap_or_default();
                todo.push((plan.first_lba + unit as u64, *gen, later, plan.seed as u32));
            }
        }
    }
    let total = todo.len() as u64;
    let mut next = 0usize;
    let mut slot_item: Vec<Option<usize>> = vec![None; depth];
    let mut outstanding = 0usize;
    let mut failure: Option<String> = None;
    while (next < todo.len() || outstanding > 0) && failure.is_none() {
        for (s, item) in slot_item.iter_mut().enumerate() {
            if item.is_some() || next >= todo.len() {
                continue;
            }
            // SAFETY: slot `s` is idle; its buffer lives in `region`.
            let iov = [unsafe { iomemory::blk::IoVec::new(bufs[s].ptr, bufs[s].iova, block) }];
            match ch.read(todo[next].0, &iov, s as u64) {
                Ok(()) => {
                    *item = Some(next);
                    next += 1;
                    outstanding += 1;
                }
                Err(e) if e.is_retryable() => break,
                Err(e) => return Err(format!("verify read of LBA {}: {e}", todo[next].0)),
            }
        }
        ch.poll(&mut |ctx, result| {
            let s = ctx as usize;
            let Some(i) = slot_item[s].take() else { return };
            outstanding -= 1;
            let (lba, gen, ref later, seed) = todo[i];
            if let Err(e) = result {
                failure = Some(format!("reading LBA {lba} after recovery failed: {e}"));
                return;
            }
            // SAFETY: the read into slot `s` completed.
            let data = unsafe { std::slice::from_raw_parts(bufs[s].ptr, block) };
            check.checked += 1;
            if check_pattern(data, block, lba, gen, seed, &mut scratch).is_ok() {
                check.acknowledged += 1;
            } else if later.iter().any(|g| check_pattern(data, block, lba, *g, seed, &mut scratch).is_ok()) {
                check.newer += 1;
            } else {
                check.lost += 1;
                eprintln!("  LOST: LBA {lba} does not hold acknowledged generation {gen} or any later write");
            }
        });
        progress::bar("  verify", check.checked, total);
    }
    progress::done();
    match failure {
        Some(e) => Err(e),
        None => Ok(check),
    }
}
