//! `iomem list`, `iomem bind`, `iomem unbind`: PCI devices in sysfs.

use std::path::PathBuf;
use std::process::ExitCode;

use iomemory::pci::{self, PciAddress, SysfsRoot};

/// Options of `iomem list`.
#[derive(Debug, clap::Args)]
pub struct ListArgs {
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
    /// sysfs root to read (for recorded trees).
    #[arg(long, default_value = "/sys", hide = true)]
    pub sysfs: PathBuf,
}

/// Options of `iomem bind` / `iomem unbind`.
#[derive(Debug, clap::Args)]
pub struct BindArgs {
    /// PCI address, e.g. 0000:03:00.0 or 03:00.0.
    pub address: String,
    /// sysfs root (for recorded trees).
    #[arg(long, default_value = "/sys", hide = true)]
    pub sysfs: PathBuf,
    /// Mount table to check for mounted filesystems.
    #[arg(long, default_value = "/proc/self/mounts", hide = true)]
    pub mounts: PathBuf,
}

/// Runs `iomem list`.
pub fn list(args: ListArgs) -> Result<ExitCode, String> {
    let root = SysfsRoot::new(args.sysfs, "/proc/self/mounts");
    let devices = pci::discover(&root).map_err(|e| e.to_string())?;
    if args.json {
        let listed: Vec<_> = devices.iter().filter(|d| d.is_listed()).collect();
        println!("{}", serde_json::to_string_pretty(&listed).map_err(|e| e.to_string())?);
    } else {
        print!("{}", pci::render_list(&devices));
    }
    Ok(ExitCode::SUCCESS)
}

fn parse(args: &BindArgs) -> Result<(SysfsRoot, PciAddress), String> {
    let address: PciAddress = args.address.parse().map_err(|e: pci::PciError| e.to_string())?;
    Ok((SysfsRoot::new(args.sysfs.clone(), args.mounts.clone()), address))
}

/// Runs `iomem bind`.
pub fn bind(args: BindArgs) -> Result<ExitCode, String> {
    let (root, address) = parse(&args)?;
    match pci::bind_to_vfio(&root, address).map_err(|e| e.to_string())? {
        pci::BindOutcome::AlreadyBound => println!("{address}: already bound to vfio-pci"),
        pci::BindOutcome::Bound { previous_driver, .. } => println!(
            "{address}: bound to vfio-pci (was {}); `iomem unbind {address}` gives it back",
            previous_driver.as_deref().unwrap_or("unbound")
        ),
    }
    Ok(ExitCode::SUCCESS)
}

/// Runs `iomem unbind`.
pub fn unbind(args: BindArgs) -> Result<ExitCode, String> {
    let (root, address) = parse(&args)?;
    let outcome = pci::unbind(&root, address).map_err(|e| e.to_string())?;
    println!(
        "{address}: released from vfio-pci; now {}",
        outcome.driver_after.as_deref().map_or("unbound".to_string(), |d| format!("bound to {d}"))
    );
    Ok(ExitCode::SUCCESS)
}
