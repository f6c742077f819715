//! `iomem wa-bench`: measured write amplification of sustained uniform
//! random 4 KiB overwrites at chosen over-provisioning levels, for each
//! groomer policy, next to greedy GC's analytic value (Desnoyers:
//! `A = a / (a + W0(-a e^-a))`, `a = 1 + OP`).

use std::process::ExitCode;

use iomemory::vsl::wabench::{run as bench, WaBenchOptions, WaResult};
use iomemory::vsl::GcPolicy;

use crate::progress;

/// Options of `iomem wa-bench`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Over-provisioning levels in percent, comma separated.
    #[arg(long, default_value = "7,28")]
    pub op: String,
    /// Groomer policies to compare: greedy, cost-benefit (comma separated).
    #[arg(long, default_value = "greedy,cost-benefit")]
    pub policy: String,
    /// Measured overwrite passes over the whole capacity.
    #[arg(long, default_value_t = 3.0)]
    pub passes: f64,
    /// Warm-up overwrite passes before measuring.
    #[arg(long, default_value_t = 1.0)]
    pub warmup: f64,
    /// Erase blocks per die of the benchmark card (4 dies of 64-page blocks).
    #[arg(long, default_value_t = 128)]
    pub blocks_per_die: u32,
    /// Seed.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Print results as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Runs `iomem wa-bench`.
pub fn run(args: Args) -> ExitCode {
    match run_bench(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            progress::done();
            eprintln!("iomem wa-bench: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run_bench(args: &Args) -> Result<(), String> {
    let ops = args
        .op
        .split(',')
        .map(|s| {
            s.trim()
                .trim_end_matches('%')
                .parse::<f64>()
                .map(|p| p / 100.0)
                .map_err(|_| format!("{s:?} is not an over-provisioning percentage like 7 or 28"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let policies = args
        .policy
        .split(',')
        .map(|s| s.trim().parse::<GcPolicy>())
        .collect::<Result<Vec<_>, _>>()?;
    let opts = WaBenchOptions {
        ops,
        policies,
        warmup_passes: args.warmup,
        passes: args.passes,
        blocks_per_die: args.blocks_per_die,
        seed: args.seed,
    };
    let results = bench(&opts, &mut |d, t| progress::bar("Benchmarking", d, t));
    progress::done();
    let results = results.map_err(|e| e.to_string())?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&results).map_err(|e| e.to_string())?);
        return Ok(());
    }
    println!(
        "{:>6}  {:<13} {:>11} {:>13} {:>10} {:>8} {:>8}",
        "OP", "policy", "measured WA", "greedy model", "user pages", "erases", "seconds"
    );
    for r in &results {
        println!(
            "{:>5.1}%  {:<13} {:>11.2} {:>13.2} {:>10} {:>8} {:>8.2}",
            r.op * 100.0,
            format!("{:?}", r.policy),
            r.measured,
            r.analytic_greedy,
            r.user_pages,
            r.erases,
            r.seconds
        );
    }
    for op in opts.ops.iter() {
        let at: Vec<&WaResult> = results.iter().filter(|r| r.op == *op).collect();
        if let Some(best) = at.iter().min_by(|a, b| a.measured.total_cmp(&b.measured)) {
            if at.len() > 1 {
                println!("At {:.0}% OP the lower WA is {:?} ({:.2}).", op * 100.0, best.policy, best.measured);
            }
        }
    }
    Ok(())
}
