//! `iomem format CARD`: lay a fresh VSL format on a card (destroys its data).

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use iomemory::vsl::{CapacitySpec, FormatOptions, Vsl};

use crate::open::open_image;
use crate::progress;

/// Options of `iomem format`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Card image to format.
    pub card: PathBuf,
    /// Sector size in bytes.
    #[arg(long, default_value_t = 4096, value_parser = parse_sector_size)]
    pub sector_size: u32,
    /// User capacity: a size (800GB, 512MiB) or a percentage of the raw
    /// flash (70%); less capacity leaves more reserve for the groomer and
    /// for worn-out blocks. Default: the card's advertised capacity.
    #[arg(long)]
    pub capacity: Option<String>,
    /// Format even if the card already holds a format (its data is lost).
    #[arg(long)]
    pub yes: bool,
    /// Largest atomic write, in pages (1..=32).
    #[arg(long, default_value_t = iomemory::vsl::DEFAULT_MAX_ATOMIC_PAGES)]
    pub max_atomic_pages: u32,
}

/// Accepts 512 or 4096.
pub fn parse_sector_size(text: &str) -> Result<u32, String> {
    match text {
        "512" => Ok(512),
        "4096" | "4k" | "4K" => Ok(4096),
        other => Err(format!("sector size {other:?} is not supported: use 512 or 4096")),
    }
}

/// Runs `iomem format`.
pub fn run(args: Args) -> ExitCode {
    match format(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            progress::done();
            eprintln!("iomem format: {e}");
            ExitCode::FAILURE
        }
    }
}

fn format(args: &Args) -> Result<(), String> {
    let capacity = match &args.capacity {
        Some(text) => Some(text.parse::<CapacitySpec>()?),
        None => None,
    };
    let card = open_image(&args.card)?;
    let mut yes = args.yes;
    if !yes {
        if let Some(sb) = Vsl::read_superblock(&card).map_err(|e| e.to_string())? {
            // A card holding data: ask, when someone is there to answer.
            if !std::io::stdin().is_terminal() {
                return Err(format!(
                    "the card holds a VSL format ({} sectors of {} bytes, UUID {}); formatting destroys all its data — pass --yes to proceed",
                    sb.num_sectors,
                    sb.sector_size,
                    sb.uuid_string()
                ));
            }
            eprint!(
                "{} holds a VSL format ({} sectors of {} bytes, UUID {}). Formatting destroys all its data. Type 'yes' to continue: ",
                args.card.display(),
                sb.num_sectors,
                sb.sector_size,
                sb.uuid_string()
            );
            let mut answer = String::new();
            std::io::stdin().read_line(&mut answer).map_err(|e| e.to_string())?;
            if answer.trim() != "yes" {
                return Err("not confirmed; the card is unchanged".into());
            }
            yes = true;
        }
    }
    let opts = FormatOptions {
        sector_size: args.sector_size,
        capacity,
        yes,
        seed: None,
        max_atomic_pages: args.max_atomic_pages,
    };
    let started = std::time::Instant::now();
    Vsl::format(card.clone(), &opts, &mut |done, total| progress::bar("Formatting (erasing blocks)", done, total))
        .map_err(|e| e.to_string())?;
    progress::done();
    let sb = Vsl::read_superblock(&card)
        .map_err(|e| e.to_string())?
        .ok_or("the format did not leave a readable superblock")?;
    let bytes = sb.num_sectors * sb.sector_size as u64;
    println!(
        "Formatted {}: {} sectors of {} bytes ({:.2} GB, {:.2} GiB), UUID {}, in {:.1} s",
        args.card.display(),
        sb.num_sectors,
        sb.sector_size,
        bytes as f64 / 1e9,
        bytes as f64 / (1u64 << 30) as f64,
        sb.uuid_string(),
        started.elapsed().as_secs_f64()
    );
    let raw = sb.geometry.raw_bytes();
    println!(
        "  raw flash {:.2} GB, user capacity {:.1}% of raw; forward map will use {} MiB of host RAM",
        raw as f64 / 1e9,
        bytes as f64 * 100.0 / raw as f64,
        (sb.num_sectors * 4).div_ceil(1 << 20)
    );
    Ok(())
}
