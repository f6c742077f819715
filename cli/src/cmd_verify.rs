//! `iomem verify CARD`: write self-checking data through the VSL and read it
//! back; any sector that does not hold what was written is reported by LBA.

use std::path::PathBuf;
use std::process::ExitCode;

use iomemory::vsl::verify::{run as verify, Rw, VerifyOptions};
use iomemory::vsl::{parse_size, AttachOptions, Vsl};

use crate::open::open_image;
use crate::progress;

/// Options of `iomem verify`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Formatted card image (its data in the tested range is overwritten).
    pub card: PathBuf,
    /// Block sizes, comma separated (each a multiple of the sector size).
    #[arg(long, default_value = "512,4k,64k,1m")]
    pub bs: String,
    /// Access pattern: write, randwrite or randrw.
    #[arg(long, default_value = "write")]
    pub rw: String,
    /// Bytes to cover from LBA 0 (0 = the whole device).
    #[arg(long, default_value = "64MiB")]
    pub size: String,
    /// Seed of data and access order.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Runs `iomem verify`.
pub fn run(args: Args) -> ExitCode {
    match verify_card(&args) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            progress::done();
            eprintln!("iomem verify: {e}");
            ExitCode::FAILURE
        }
    }
}

fn verify_card(args: &Args) -> Result<bool, String> {
    let block_sizes = args
        .bs
        .split(',')
        .map(|s| parse_size(s).map(|v| v as usize))
        .collect::<Result<Vec<_>, _>>()?;
    let rw: Rw = args.rw.parse()?;
    let size = parse_size(&args.size)?;
    let card = open_image(&args.card)?;
    let vsl = Vsl::attach(card, &AttachOptions::default(), &mut |d, t| progress::bar("Attaching", d, t))
        .map_err(|e| e.to_string())?;
    progress::done();
    let ss = vsl.sector_size() as usize;
    let (block_sizes, skipped): (Vec<usize>, Vec<usize>) = block_sizes.into_iter().partition(|b| b % ss == 0);
    if !skipped.is_empty() {
        eprintln!("iomem verify: skipping block sizes {skipped:?}: not multiples of the {ss}-byte sector size");
    }
    if block_sizes.is_empty() {
        return Err(format!("no block size is a multiple of the {ss}-byte sector size"));
    }
    let opts = VerifyOptions {
        block_sizes,
        rw,
        size,
        seed: args.seed,
    };
    let report = verify(&vsl, &opts, &mut |d, t| progress::bar("Verifying", d >> 20, t >> 20));
    progress::done();
    let report = report.map_err(|e| e.to_string())?;
    vsl.detach().map_err(|e| e.to_string())?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report).map_err(|e| e.to_string())?);
    } else {
        for p in &report.passes {
            println!(
                "bs {:>8}: wrote {:>6} MiB at {:>8.1} MiB/s, read+checked {:>6} MiB at {:>8.1} MiB/s",
                p.block_size,
                p.bytes_written >> 20,
                p.write_mib_s,
                p.bytes_read >> 20,
                p.read_mib_s
            );
        }
        for m in &report.mismatches {
            println!("MISMATCH at LBA {}: expected {}, found {}", m.lba, m.expected, m.found);
        }
        for e in &report.io_errors {
            println!("I/O ERROR: {e}");
        }
        println!(
            "{}: {} sectors checked, {} mismatching, {} I/O errors",
            if report.passed() { "PASS" } else { "FAIL" },
            report.sectors_checked,
            report.mismatch_count,
            report.io_errors.len()
        );
    }
    Ok(report.passed())
}
