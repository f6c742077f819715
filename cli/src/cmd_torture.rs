//! `iomem torture`: power-cut torture of the VSL on an emulated card.
//!
//! Each round runs a random mixed workload (writes of mixed sizes,
//! overwrites, trims, atomic groups, flushes), cuts the power at a random
//! command count, reattaches (recovery scan) and checks every touched LBA
//! against a shadow model of what the durability contract allows.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use iomemory::card::{Card, Geometry};
use iomemory::emu::{small_test_config, Backing, EmuOptions, NandArray};
use iomemory::vsl::torture::{run as torture, TortureOptions, TortureReport};
use iomemory::vsl::{parse_size, Vsl};

use crate::progress;

/// Options of `iomem torture`.
#[derive(Debug, clap::Args)]
#[command(after_long_help = "Examples:\n  \
    iomem torture --new-card 32MiB --cuts 1000 --powerloss-protection off\n  \
    iomem torture --new-card 32MiB --cuts 100000 --seed 7 --powerloss-protection off   # the long soak (about an hour)\n  \
    iomem torture card.img --yes --cuts 200")]
pub struct Args {
    /// Emulated card image to torture (it is reformatted: needs --yes if it
    /// holds a format).
    #[arg(conflicts_with = "new_card", required_unless_present = "new_card")]
    pub card: Option<PathBuf>,
    /// Torture a fresh in-memory card with this much raw flash instead.
    #[arg(long, value_name = "SIZE")]
    pub new_card: Option<String>,
    /// Power cuts to perform.
    #[arg(long, default_value_t = 100)]
    pub cuts: u64,
    /// Seed of workload and cut points.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Power-loss protection of the card during the run.
    #[arg(long, default_value = "on", value_parser = ["on", "off"])]
    pub powerloss_protection: String,
    /// Most operations per round.
    #[arg(long, default_value_t = 300)]
    pub ops: u32,
    /// Sector size to format with (512 or 4096).
    #[arg(long, default_value_t = 4096, value_parser = crate::cmd_format::parse_sector_size)]
    pub sector_size: u32,
    /// Reformat a card image that holds a format.
    #[arg(long)]
    pub yes: bool,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Runs `iomem torture`.
pub fn run(args: Args) -> ExitCode {
    match run_torture(&args) {
        Ok(report) if report.passed() => ExitCode::SUCCESS,
        Ok(_) => ExitCode::FAILURE,
        Err(e) => {
            progress::done();
            eprintln!("iomem torture: {e}");
            ExitCode::FAILURE
        }
    }
}

/// An in-memory card of about `raw` bytes with small (256 KiB) erase blocks,
/// so a short round already exercises the groomer.
fn new_card(raw: u64, seed: u64) -> Result<Arc<NandArray>, String> {
    let mut config = small_test_config(seed);
    let g = config.geometry;
    let per_die = raw / (g.dies() as u64 * g.block_bytes());
    if per_die < 16 {
        return Err(format!("--new-card {raw} is too small: use at least 16MiB"));
    }
    config.geometry = Geometry {
        blocks_per_die: per_die.min(1 << 20) as u32,
        ..g
    };
    config.identity.advertised_bytes = config.geometry.raw_bytes() * 25 / 32;
    NandArray::create(&config, Backing::Memory).map_err(|e| e.to_string())
}

fn run_torture(args: &Args) -> Result<TortureReport, String> {
    let nand = match (&args.card, &args.new_card) {
        (_, Some(size)) => new_card(parse_size(size)?, args.seed)?,
        (Some(path), None) => {
            let nand = NandArray::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
            let card = Card::open_emulated(nand.clone(), EmuOptions::default()).map_err(|e| e.to_string())?;
            if !args.yes {
                if let Some(sb) = Vsl::read_superblock(&card).map_err(|e| e.to_string())? {
                    return Err(format!(
                        "{} holds a VSL format (UUID {}); torture reformats it and destroys its data — pass --yes",
                        path.display(),
                        sb.uuid_string()
                    ));
                }
            }
            drop(card);
            nand
        }
        (None, None) => return Err("name a CARD image or --new-card SIZE".into()),
    };
    let opts = TortureOptions {
        cuts: args.cuts,
        seed: args.seed,
        powerloss_protection: args.powerloss_protection == "on",
        max_ops_per_round: args.ops.max(2),
        sector_size: args.sector_size,
        ..TortureOptions::default()
    };
    let report = torture(&nand, &opts, &mut |cuts, r| {
        progress::bar(
            &format!("Torture (violations {})", r.lost_writes + r.torn_atomics + r.resurrected_trims + r.corrupt_sectors + r.read_errors),
            cuts,
            args.cuts,
        )
    });
    progress::done();
    let report = report.map_err(|e| e.to_string())?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report).map_err(|e| e.to_string())?);
    } else {
        print_report(args, &report);
    }
    Ok(report)
}

fn print_report(args: &Args, r: &TortureReport) {
    let points: Vec<String> = r.cut_points.iter().take(12).map(|p| p.to_string()).collect();
    println!(
        "Rounds: {} ({} power cuts, {} clean detach/attach cycles), powerloss protection {}, seed {}",
        r.rounds, r.cuts, r.clean_cycles, args.powerloss_protection, args.seed
    );
    println!(
        "Cut points (commands into each round): {} ...; {} cuts hit a recovery, {} a clean detach",
        points.join(", "),
        r.cuts_in_attach,
        r.cuts_in_detach
    );
    println!(
        "Operations: {} acknowledged, {} interrupted by a cut; {} sectors checked after recovery",
        r.ops_acked, r.ops_interrupted, r.sectors_checked
    );
    println!(
        "Recovery scans: {:.1} ms average, {} ms longest; total run {:.1} s",
        r.scan_millis_total as f64 / r.cuts.max(1) as f64,
        r.scan_millis_max,
        r.elapsed_millis as f64 / 1000.0
    );
    println!("Lost writes:       {}", r.lost_writes);
    println!("Torn atomics:      {}", r.torn_atomics);
    println!("Resurrected trims: {}", r.resurrected_trims);
    println!("Corrupt sectors:   {}", r.corrupt_sectors);
    println!("Read errors:       {}", r.read_errors);
    for v in &r.violations {
        println!("  VIOLATION: {v}");
    }
    println!("{}", if r.passed() { "PASS" } else { "FAIL" });
}
