//! `iomem sim create`: make an emulated card image.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand};
use iomemory::emu::{iodrive2_config, Backing, NandArray, TimingProfile};
use iomemory::units::{gbytes, parse_size};

/// `iomem sim ...`
#[derive(Debug, Subcommand)]
pub enum SimCommand {
    /// Create an emulated card backed by a sparse image file.
    Create(CreateArgs),
}

/// Options of `iomem sim create`.
#[derive(Debug, Args)]
pub struct CreateArgs {
    /// Image file to create (sparse: it costs only what is written).
    pub path: PathBuf,
    /// Advertised capacity (the default format's size), e.g. 2GiB, 1.2TB.
    #[arg(long, default_value = "1GiB")]
    pub capacity: String,
    /// Card model to emulate.
    #[arg(long, default_value = "iodrive2", value_parser = ["iodrive2"])]
    pub model: String,
    /// Power-loss protection (capacitors that flush the write buffer).
    #[arg(long, default_value = "on", value_parser = ["on", "off"])]
    pub powerloss_protection: String,
    /// NAND timing model: none (as fast as the host), iodrive2 (datasheet-like).
    #[arg(long, default_value = "none", value_parser = ["none", "iodrive2"])]
    pub timing: String,
    /// Fraction of factory bad blocks, e.g. 0.5%.
    #[arg(long, default_value = "0.5%")]
    pub bad_blocks: String,
    /// Seed for serial numbers, bad blocks and bit errors.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
}

fn parse_percent(text: &str) -> Result<f64, String> {
    let t = text.trim();
    let (number, scale) = match t.strip_suffix('%') {
        Some(n) => (n, 100.0),
        None => (t, 1.0),
    };
    let v: f64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a fraction (examples: 0.5%, 0.005)"))?;
    let fraction = v / scale;
    if !(0.0..0.5).contains(&fraction) {
        return Err(format!("bad-block fraction {text} must be between 0% and 50%"));
    }
    Ok(fraction)
}

/// Runs `iomem sim ...`.
pub fn run(cmd: SimCommand) -> Result<ExitCode, String> {
    match cmd {
        SimCommand::Create(args) => create(args),
    }
}

fn create(args: CreateArgs) -> Result<ExitCode, String> {
    let capacity = parse_size(&args.capacity)?;
    if capacity < (64 << 20) {
        return Err(format!("capacity {} is too small: an emulated card needs at least 64MiB", args.capacity));
    }
    let mut config = iodrive2_config(capacity, args.seed);
    config.factory_bad_fraction = parse_percent(&args.bad_blocks)?;
    config.timing = TimingProfile::parse(&args.timing)?;
    config.identity.powerloss_protection = args.powerloss_protection == "on";
    let nand = NandArray::create(&config, Backing::File(args.path.clone())).map_err(|e| e.to_string())?;
    nand.set_powerloss_protection(args.powerloss_protection == "on");
    let g = config.geometry;
    let counters = nand.counters();
    nand.sync().map_err(|e| e.to_string())?;
    println!(
        "Created emulated {} at {}: {} GBytes advertised, {} GBytes raw NAND",
        config.identity.model,
        args.path.display(),
        gbytes(config.identity.advertised_bytes),
        gbytes(g.raw_bytes())
    );
    println!(
        "  geometry: {} channels x {} dies, {} blocks/die of {} x {} B pages (+{} B OOB); {} factory bad blocks",
        g.channels,
        g.dies_per_channel,
        g.blocks_per_die,
        g.pages_per_block,
        g.page_size,
        g.oob_size,
        counters.factory_bad_blocks
    );
    println!(
        "  SN:{}, powerloss protection {}, timing {}, seed {}",
        config.identity.serial, args.powerloss_protection, args.timing, args.seed
    );
    Ok(ExitCode::SUCCESS)
}
