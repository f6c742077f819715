//! `iomem`: create, inspect, format, attach and benchmark ioMemory cards.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod cmd_pci;
mod cmd_sim;
mod cmd_status;
mod open;

/// Userspace driver tools for Fusion-io ioMemory cards (and the emulated card).
#[derive(Debug, Parser)]
#[command(name = "iomem", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Emulated cards: create one backed by a sparse image file.
    #[command(subcommand)]
    Sim(cmd_sim::SimCommand),
    /// Card status, in the shape of `fio-status` (`-a` for everything).
    Status(cmd_status::Args),
    /// PCI devices: ioMemory cards and NVMe controllers found in sysfs.
    List(cmd_pci::ListArgs),
    /// Unbind a PCI device from its driver and bind it to vfio-pci.
    Bind(cmd_pci::BindArgs),
    /// Release a PCI device from vfio-pci back to a kernel driver.
    Unbind(cmd_pci::BindArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Sim(cmd) => cmd_sim::run(cmd),
        Command::Status(args) => cmd_status::run(args),
        Command::List(args) => cmd_pci::list(args),
        Command::Bind(args) => cmd_pci::bind(args),
        Command::Unbind(args) => cmd_pci::unbind(args),
    };
    match result {
        Ok(code) => code,
        Err(message) => {
            eprintln!("iomem: {message}");
            ExitCode::FAILURE
        }
    }
}
