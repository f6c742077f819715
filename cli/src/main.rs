//! `iomem`: create, inspect, format, attach and benchmark ioMemory cards.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod bench;
mod cmd_demo;
mod cmd_format;
mod cmd_nvme;
mod cmd_pci;
mod cmd_rpc;
mod cmd_serve;
mod cmd_sim;
mod cmd_status;
mod cmd_torture;
mod cmd_verify;
mod cmd_wa;
mod open;
mod progress;
mod serve;

/// Userspace driver tools for Fusion-io ioMemory cards (and the emulated card).
#[derive(Debug, Parser)]
#[command(name = "iomem", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// The main job: emulated card, verified load on every core, power cut, recovery, status.
    Demo(cmd_demo::Args),
    /// fio-like benchmark of the whole stack (with --baseline memcpy for the ceiling).
    Bench(bench::Args),
    /// Low-level format: sector size, capacity (over-provisioning), superblock.
    Format(cmd_format::Args),
    /// Write, read back and check every block (fio-verify style).
    Verify(cmd_verify::Args),
    /// Random workload with a power cut each round, checked against the durability contract.
    Torture(cmd_torture::Args),
    /// Sustained random overwrite: measured write amplification vs the greedy-GC model.
    WaBench(cmd_wa::Args),
    /// NVMe controllers over VFIO: identify, bench, selftest.
    #[command(subcommand)]
    Nvme(cmd_nvme::NvmeCommand),
    /// Serve cards over vhost-user-blk and NBD, with a JSON-RPC control socket.
    Serve(cmd_serve::Args),
    /// Call a method on a running `iomem serve` control socket.
    Rpc(cmd_rpc::Args),
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
        Command::Demo(args) => cmd_demo::run(args),
        Command::Bench(args) => match args.nvme.clone() {
            Some(target) => cmd_nvme::run_bench(cmd_nvme::BenchArgs {
                target,
                rw: args.rw.clone(),
                bs: args.bs.clone(),
                iodepth: args.iodepth.min(u16::MAX as usize) as u16,
                jobs: args.numjobs,
                runtime: args.runtime,
                size: args.size.clone(),
                json: args.json,
            }),
            None => bench::run(args),
        },
        Command::Nvme(cmd) => cmd_nvme::run(cmd),
        Command::Format(args) => Ok(cmd_format::run(args)),
        Command::Verify(args) => Ok(cmd_verify::run(args)),
        Command::Torture(args) => Ok(cmd_torture::run(args)),
        Command::WaBench(args) => Ok(cmd_wa::run(args)),
        Command::Serve(args) => cmd_serve::run(args),
        Command::Rpc(args) => cmd_rpc::run(args),
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
