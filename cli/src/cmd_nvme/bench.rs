//! `iomem nvme bench`: fio-style load on one namespace, poll mode, one
//! queue pair per job thread.
//!
//! Each job keeps `iodepth` commands in flight on its own queue pair,
//! submits a batch and rings the doorbell once, polls, and records every
//! command's latency. CPU time per I/O is the jobs' thread CPU time over
//! the I/Os done (a poll-mode driver spends its whole core, so this is the
//! cost an application pays per I/O).

use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use iomemory::dma::DmaPool;
use iomemory::nvme::nvm::{submit, Namespace, NvmCommand, NvmError};
use iomemory::nvme::QueuePair;
use iomemory::units::parse_size;
use serde_json::json;

use super::latency::Latency;
use super::{open_controller, parse_target};

/// Options of `iomem nvme bench`.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// Controller and namespace: PCI_ADDR[/NSID] (namespace 1 if omitted).
    pub target: String,
    /// I/O pattern: randread, randwrite, read, write.
    #[arg(long, default_value = "randread")]
    pub rw: String,
    /// Bytes per I/O (a multiple of the block size): 512, 4k, 64k, ...
    #[arg(long, default_value = "4k")]
    pub bs: String,
    /// Commands in flight per job.
    #[arg(long, default_value_t = 32)]
    pub iodepth: u16,
    /// Jobs: threads, each with its own I/O queue pair.
    #[arg(long, default_value_t = 1)]
    pub jobs: usize,
    /// Seconds to run.
    #[arg(long, default_value_t = 10.0)]
    pub runtime: f64,
    /// Limit I/O to the first SIZE bytes of the namespace.
    #[arg(long)]
    pub size: Option<String>,
    /// Machine-readable result.
    #[arg(long)]
    pub json: bool,
}

/// The access pattern.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pattern {
    /// Random reads.
    RandRead,
    /// Random writes.
    RandWrite,
    /// Sequential reads.
    Read,
    /// Sequential writes.
    Write,
}

impl Pattern {
    /// Parses fio's names.
    pub fn parse(text: &str) -> Result<Self, String> {
        match text {
            "randread" => Ok(Self::RandRead),
            "randwrite" => Ok(Self::RandWrite),
            "read" => Ok(Self::Read),
            "write" => Ok(Self::Write),
            other => Err(format!(
                "--rw {other:?} is not a pattern; use randread, randwrite, read or write"
            )),
        }
    }

    fn is_write(self) -> bool {
        matches!(self, Self::RandWrite | Self::Write)
    }

    fn is_random(self) -> bool {
        matches!(self, Self::RandRead | Self::RandWrite)
    }

    fn name(self) -> &'static str {
        match self {
            Self::RandRead => "randread",
            Self::RandWrite => "randwrite",
            Self::Read => "read",
            Self::Write => "write",
        }
    }
}

/// A validated plan: blocks per I/O and the LBA span.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Plan {
    /// Pattern.
    pub pattern: Pattern,
    /// Blocks per I/O.
    pub blocks: u64,
    /// Number of I/O-sized slots in the span.
    pub slots: u64,
    /// Commands in flight per job.
    pub iodepth: u16,
}

/// Checks the options against the namespace.
pub fn plan(args: &BenchArgs, ns: &Namespace) -> Result<Plan, String> {
    let pattern = Pattern::parse(&args.rw)?;
    let bs = parse_size(&args.bs)?;
    let block = u64::from(ns.block_size);
    if bs == 0 || bs % block != 0 {
        return Err(format!(
            "--bs {} is not a multiple of namespace {}'s {}-byte blocks",
            args.bs, ns.nsid, block
        ));
    }
    if bs > ns.max_transfer {
        return Err(format!(
            "--bs {} exceeds the {}-byte transfer limit of one command",
            args.bs, ns.max_transfer
        ));
    }
    if ns.zones.is_some() && pattern.is_write() {
        return Err(format!(
            "namespace {} is zoned: writes must go in order to each zone's write pointer; bench a conventional namespace",
            ns.nsid
        ));
    }
    let span_blocks = match &args.size {
        Some(s) => (parse_size(s)? / block).min(ns.blocks),
        None => ns.blocks,
    };
    let blocks = bs / block;
    let slots = span_blocks / blocks;
    if slots == 0 {
        return Err(format!("the I/O span holds no {bs}-byte I/O; raise --size"));
    }
    if args.iodepth == 0 || args.iodepth > 1023 {
        return Err(format!("--iodepth {} must be in 1..=1023", args.iodepth));
    }
    if !(args.runtime > 0.0 && args.runtime <= 86_400.0) {
        return Err(format!(
            "--runtime {} must be in (0, 86400] seconds",
            args.runtime
        ));
    }
    if args.jobs == 0 || args.jobs > 64 {
        return Err(format!("--jobs {} must be in 1..=64", args.jobs));
    }
    Ok(Plan {
        pattern,
        blocks,
        slots,
        iodepth: args.iodepth,
    })
}

/// xorshift64*: cheap, good enough to spread LBAs.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

/// What one job measured.
struct JobResult {
    ios: u64,
    latency: Latency,
    cpu_ns: u64,
    error: Option<String>,
}

fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec to write; the clock id is a constant.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    if rc != 0 {
        return 0;
    }
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Runs one job on `qp` until `deadline`.
fn run_job(
    mut qp: QueuePair,
    ns: &Namespace,
    pool: &Arc<DmaPool>,
    plan: Plan,
    job: usize,
    deadline: Instant,
) -> JobResult {
    let depth = usize::from(plan.iodepth).min(qp.depth() as usize - 1);
    let bufs: Vec<_> = (0..depth).filter_map(|_| pool.alloc()).collect();
    let mut result = JobResult {
        ios: 0,
        latency: Latency::default(),
        cpu_ns: 0,
        error: None,
    };
    if bufs.len() < depth {
        result.error = Some("DMA buffer pool exhausted".into());
        return result;
    }
    let mut started = vec![Instant::now(); depth];
    let mut idle: Vec<usize> = (0..depth).rev().collect();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ (job as u64 + 1).wrapping_mul(0xff51_afd7_ed55_8ccd));
    let mut seq = (job as u64 * plan.slots / 8) % plan.slots;
    let cpu0 = thread_cpu_ns();
    let mut stopping = false;
    loop {
        if !stopping {
            while let Some(slot) = idle.pop() {
                let index = if plan.pattern.is_random() {
                    rng.next() % plan.slots
                } else {
                    seq = (seq + 1) % plan.slots;
                    seq
                };
                let (slba, blocks, iova) = (index * plan.blocks, plan.blocks, bufs[slot].iova());
                let cmd = if plan.pattern.is_write() {
                    NvmCommand::Write { slba, blocks, iova }
                } else {
                    NvmCommand::Read { slba, blocks, iova }
                };
                started[slot] = Instant::now();
                match submit(&mut qp, ns, &cmd, slot as u64) {
                    Ok(_) => {}
                    Err(NvmError::QueueFull) => {
                        idle.push(slot);
                        break;
                    }
                    Err(e) => {
                        result.error = Some(e.to_string());
                        idle.push(slot);
                        stopping = true;
                        break;
                    }
                }
            }
            qp.ring();
        }
        let mut failed = None;
        qp.poll(depth, |tag, cqe| {
            let slot = tag as usize;
            result
                .latency
                .record(started[slot].elapsed().as_nanos() as u64);
            if cqe.is_success() {
                result.ios += 1;
            } else if failed.is_none() {
                failed = Some(cqe.status_code());
            }
            idle.push(slot);
        });
        if let Some(status) = failed {
            result.error = Some(format!(
                "a {} completed with status type {:#x} code {:#04x}",
                plan.pattern.name(),
                status.sct(),
                status.sc()
            ));
            stopping = true;
        }
        if !stopping && Instant::now() >= deadline {
            stopping = true;
        }
        if stopping && qp.outstanding() == 0 {
            break;
        }
        if stopping && Instant::now() >= deadline + Duration::from_secs(10) {
            result.error.get_or_insert_with(|| {
                format!(
                    "{} commands did not complete within 10 s of the end",
                    qp.outstanding()
                )
            });
            break;
        }
    }
    result.cpu_ns = thread_cpu_ns().saturating_sub(cpu0);
    result
}

/// Runs `iomem nvme bench`.
pub fn run(args: BenchArgs) -> Result<ExitCode, String> {
    let target = parse_target(&args.target)?;
    let nvme = open_controller(target.address)?;
    let nsid = target.nsid.unwrap_or(1);
    let ns = nvme.namespace(nsid).map_err(|e| e.to_string())?;
    let plan = plan(&args, &ns)?;
    let bs = plan.blocks * u64::from(ns.block_size);
    let depth = plan.iodepth + 1;
    let pool = DmaPool::new(
        nvme.dma_space(),
        bs as usize,
        usize::from(plan.iodepth) * args.jobs,
    )
    .map_err(|e| e.to_string())?;
    if plan.pattern.is_write() {
        // Every written block carries its buffer number, not zeroes.
        let mut all: Vec<_> = std::iter::from_fn(|| pool.alloc()).collect();
        for (i, buf) in all.iter_mut().enumerate() {
            let fill: Vec<u8> = (0..bs as usize).map(|b| (b as u8) ^ (i as u8)).collect();
            buf.write_at(0, &fill).map_err(|e| e.to_string())?;
        }
    }
    let queues: Vec<QueuePair> = (0..args.jobs)
        .map(|_| nvme.controller().create_io_queue_pair(depth))
        .collect::<Result<_, _>>()
        .map_err(|e| e.to_string())?;
    if !args.json {
        eprintln!(
            "iomem nvme bench: {} {} on {}/{} ({} jobs x iodepth {}, {} s)",
            plan.pattern.name(),
            args.bs,
            target.address,
            nsid,
            args.jobs,
            plan.iodepth,
            args.runtime
        );
    }
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(args.runtime);
    let results: Vec<JobResult> = std::thread::scope(|s| {
        let handles: Vec<_> = queues
            .into_iter()
            .enumerate()
            .map(|(job, qp)| {
                let (ns, pool) = (&ns, &pool);
                s.spawn(move || run_job(qp, ns, pool, plan, job, deadline))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join().unwrap_or_else(|_| JobResult {
                    ios: 0,
                    latency: Latency::default(),
                    cpu_ns: 0,
                    error: Some("a job thread panicked".into()),
                })
            })
            .collect()
    });
    let elapsed = start.elapsed().as_secs_f64();
    let mut latency = Latency::default();
    let (mut ios, mut cpu_ns) = (0u64, 0u64);
    for r in &results {
        latency.merge(&r.latency);
        ios += r.ios;
        cpu_ns += r.cpu_ns;
    }
    if let Some(err) = results.iter().find_map(|r| r.error.clone()) {
        return Err(format!("bench stopped: {err}"));
    }
    let iops = ios as f64 / elapsed;
    let mbps = iops * bs as f64 / 1e6;
    let us = |ns: u64| ns as f64 / 1000.0;
    let cpu_per_io = cpu_ns.checked_div(ios).unwrap_or(0);
    if args.json {
        let v = json!({
            "target": format!("{}/{}", target.address, nsid),
            "rw": plan.pattern.name(),
            "bs": bs,
            "iodepth": plan.iodepth,
            "jobs": args.jobs,
            "runtime_s": elapsed,
            "ios": ios,
            "latency_samples": latency.count(),
            "iops": iops,
            "mb_per_s": mbps,
            "lat_us": {
                "mean": us(latency.mean()),
                "p50": us(latency.quantile(0.5)),
                "p99": us(latency.quantile(0.99)),
                "p99_9": us(latency.quantile(0.999)),
                "max": us(latency.max()),
            },
            "cpu_ns_per_io": cpu_per_io,
        });
        println!(
            "{}",
            serde_json::to_string_pretty(&v).map_err(|e| e.to_string())?
        );
    } else {
        println!(
            "{}: {:.0} IOPS, {:.1} MB/s, {} I/Os in {:.2} s",
            plan.pattern.name(),
            iops,
            mbps,
            ios,
            elapsed
        );
        println!(
            "latency (us): mean {:.1}, p50 {:.1}, p99 {:.1}, p99.9 {:.1}, max {:.1}",
            us(latency.mean()),
            us(latency.quantile(0.5)),
            us(latency.quantile(0.99)),
            us(latency.quantile(0.999)),
            us(latency.max())
        );
        println!("CPU: {cpu_per_io} ns per I/O");
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(rw: &str, bs: &str) -> BenchArgs {
        BenchArgs {
            target: "00:03.0/1".into(),
            rw: rw.into(),
            bs: bs.into(),
            iodepth: 32,
            jobs: 1,
            runtime: 1.0,
            size: None,
            json: false,
        }
    }

    fn ns(zoned: bool) -> Namespace {
        Namespace {
            nsid: 1,
            csi: if zoned { 2 } else { 0 },
            block_size: 512,
            blocks: 131_072,
            metadata_size: 0,
            deallocate_reads_zeroes: true,
            max_transfer: 512 * 1024,
            zones: zoned.then_some(iomemory::nvme::nvm::ZoneGeometry {
                zone_size: 8192,
                zone_count: 16,
                max_append: 512 * 1024,
            }),
        }
    }

    #[test]
    fn plans_follow_the_namespace() {
        let p = plan(&args("randread", "4k"), &ns(false)).unwrap();
        assert_eq!(p.blocks, 8);
        assert_eq!(p.slots, 16_384);
        assert_eq!(p.pattern, Pattern::RandRead);
        let mut small = args("write", "64k");
        small.size = Some("1m".into());
        let p = plan(&small, &ns(false)).unwrap();
        assert_eq!((p.blocks, p.slots), (128, 16));
    }

    #[test]
    fn bad_options_are_refused_with_the_reason() {
        let e = plan(&args("randrw", "4k"), &ns(false)).unwrap_err();
        assert!(e.contains("randread, randwrite, read or write"), "{e}");
        let e = plan(&args("read", "1000"), &ns(false)).unwrap_err();
        assert!(e.contains("not a multiple"), "{e}");
        let e = plan(&args("read", "1m"), &ns(false)).unwrap_err();
        assert!(e.contains("transfer limit"), "{e}");
        let e = plan(&args("randwrite", "4k"), &ns(true)).unwrap_err();
        assert!(e.contains("zoned"), "{e}");
        plan(&args("randread", "4k"), &ns(true)).unwrap();
        let mut a = args("read", "4k");
        a.iodepth = 0;
        assert!(plan(&a, &ns(false)).unwrap_err().contains("iodepth"));
        let mut a = args("read", "4k");
        a.runtime = f64::NAN;
        assert!(plan(&a, &ns(false)).unwrap_err().contains("runtime"));
    }

    #[test]
    fn random_lbas_cover_the_span() {
        let mut rng = Rng(12345);
        let mut seen = [false; 64];
        for _ in 0..2000 {
            seen[(rng.next() % 64) as usize] = true;
        }
        assert!(seen.iter().all(|&s| s));
    }
}
