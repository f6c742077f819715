//! `iomem nvme`: NVMe controllers driven from userspace over VFIO.
//!
//! - `iomem nvme identify PCI_ADDR`: the controller and its namespaces (for
//!   a real ioMemory card: its identity and BARs, then plainly "command
//!   protocol not supported").
//! - `iomem nvme bench PCI_ADDR[/NSID]`: a poll-mode load (IOPS, MB/s,
//!   latency percentiles, CPU per I/O).
//! - `iomem nvme selftest PCI_ADDR --destructive`: write/read/deallocate/
//!   zone/IOMMU checks against a scratch controller (the QEMU guest test).

mod bench;
mod latency;
mod selftest;

use std::io::Write;
use std::process::ExitCode;

use iomemory::nvme::nvm::Namespace;
use iomemory::pci::{self, DeviceKind, PciAddress, PciDevice, ProtocolSupport, SysfsRoot};
use iomemory::vfio::{self, NvmeOverVfio, NvmeVfioOptions, VfioPciDevice};
use serde_json::json;

pub use bench::BenchArgs;
pub use selftest::SelftestArgs;

/// `iomem nvme` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum NvmeCommand {
    /// Identify a controller over VFIO: model, serial, namespaces, BARs.
    Identify(IdentifyArgs),
    /// Poll-mode benchmark of one namespace over VFIO.
    Bench(BenchArgs),
    /// Destructive self-test of a scratch controller (overwrites data).
    Selftest(SelftestArgs),
}

/// Options of `iomem nvme identify`.
#[derive(Debug, Clone, clap::Args)]
pub struct IdentifyArgs {
    /// PCI address of the controller (bound to vfio-pci), e.g. 0000:00:03.0.
    pub address: String,
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
    /// sysfs root to read (for recorded trees).
    #[arg(long, default_value = "/sys", hide = true)]
    pub sysfs: std::path::PathBuf,
}

/// Runs an `iomem nvme` subcommand.
pub fn run(command: NvmeCommand) -> Result<ExitCode, String> {
    match command {
        NvmeCommand::Identify(args) => identify(args),
        NvmeCommand::Bench(args) => run_bench(args),
        NvmeCommand::Selftest(args) => selftest::run(args),
    }
}

/// Runs `iomem nvme bench` (also what `iomem bench --nvme ADDR[/NSID]`
/// calls, with its own options copied into [`BenchArgs`]).
pub fn run_bench(args: BenchArgs) -> Result<ExitCode, String> {
    bench::run(args)
}

/// `PCI_ADDR[/NSID]` as given on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Target {
    /// The controller.
    pub address: PciAddress,
    /// The namespace, if named.
    pub nsid: Option<u32>,
}

/// Parses `PCI_ADDR[/NSID]`.
pub fn parse_target(text: &str) -> Result<Target, String> {
    let (addr, nsid) = match text.split_once('/') {
        Some((a, n)) => {
            let nsid: u32 = n
                .parse()
                .ok()
                .filter(|&n| n != 0 && n != u32::MAX)
                .ok_or_else(|| {
                    format!("{text:?}: namespace id {n:?} is not a number in 1..=4294967294")
                })?;
            (a, Some(nsid))
        }
        None => (text, None),
    };
    let address = addr.parse().map_err(|e: pci::PciError| e.to_string())?;
    Ok(Target { address, nsid })
}

/// Opens the controller at `address`, refusing ioMemory cards with their
/// identity first.
pub fn open_controller(address: PciAddress) -> Result<NvmeOverVfio, String> {
    NvmeOverVfio::open(address, NvmeVfioOptions::default()).map_err(|e| e.to_string())
}

/// The BARs of a device that is not driven: when it is on vfio-pci, from
/// VFIO with bus mastering left off, and each memory BAR mapped (never
/// read) to show it is reachable; otherwise from sysfs.
fn inspect_bars(
    device: &PciDevice,
    root: &SysfsRoot,
) -> Result<(Vec<vfio::BarInfo>, String), String> {
    if device.driver.as_deref() == Some(pci::VFIO_PCI_DRIVER) {
        let opened = VfioPciDevice::open_inspect(device.address).map_err(|e| e.to_string())?;
        let bars = opened.bars().map_err(|e| e.to_string())?;
        let mut mapped = Vec::new();
        for bar in bars.iter().filter(|b| b.mmap) {
            let map = opened.map_bar(bar.index).map_err(|e| e.to_string())?;
            mapped.push(format!("BAR{} ({} bytes)", bar.index, map.len()));
        }
        let note = if mapped.is_empty() {
            "no BAR can be mmapped through VFIO".to_owned()
        } else {
            format!(
                "mapped through VFIO (bus mastering off): {}",
                mapped.join(", ")
            )
        };
        return Ok((bars, note));
    }
    match vfio::sysfs_bars(root, device.address) {
        Ok(bars) => Ok((
            bars,
            format!(
                "BARs from sysfs; `iomem bind {}` lets them be mapped through VFIO",
                device.address
            ),
        )),
        Err(e) => Ok((Vec::new(), format!("BAR layout unknown: {e}"))),
    }
}

fn identity_line(device: &PciDevice) -> String {
    format!(
        "{}  {}  {:04x}:{:04x} (subsystem {:04x}:{:04x})  driver {}  IOMMU group {}",
        device.address,
        device.name(),
        device.vendor,
        device.device,
        device.subsystem_vendor,
        device.subsystem_device,
        device.driver.as_deref().unwrap_or("none"),
        device
            .iommu_group
            .map_or("none".to_owned(), |g| g.to_string()),
    )
}

/// Runs `iomem nvme identify`.
pub fn identify(args: IdentifyArgs) -> Result<ExitCode, String> {
    let mut out = std::io::stdout().lock();
    identify_to(args, &mut out)
}

/// `iomem nvme identify`, writing to `out`.
pub fn identify_to(args: IdentifyArgs, out: &mut dyn Write) -> Result<ExitCode, String> {
    let address: PciAddress = args
        .address
        .parse()
        .map_err(|e: pci::PciError| e.to_string())?;
    let root = SysfsRoot::new(args.sysfs.clone(), "/proc/self/mounts");
    let device = pci::read_device(&root, address).map_err(|e| e.to_string())?;
    if let DeviceKind::IoMemory(model) = &device.kind {
        // A real card: say what it is and what its BARs are, then plainly
        // that its protocol is not spoken. No command is ever sent.
        let (bars, bar_note) = inspect_bars(&device, &root)?;
        let reason = match model.protocol_support() {
            ProtocolSupport::IdentifyOnly { reason } => reason,
            _ => pci::UNSUPPORTED_PROTOCOL_REASON,
        };
        if args.json {
            let v = json!({
                "device": device,
                "bars": bars,
                "bar_access": bar_note,
                "protocol_supported": false,
                "note": reason,
            });
            writeln!(
                out,
                "{}",
                serde_json::to_string_pretty(&v).map_err(|e| e.to_string())?
            )
            .map_err(io_err)?;
        } else {
            writeln!(out, "{}", identity_line(&device)).map_err(io_err)?;
            write!(out, "{}", vfio::render_bars(&bars)).map_err(io_err)?;
            writeln!(out, "{bar_note}").map_err(io_err)?;
            writeln!(out, "{reason}").map_err(io_err)?;
        }
        return Ok(ExitCode::SUCCESS);
    }
    if root != SysfsRoot::default() {
        return Err(format!(
            "{address} is an NVMe controller in a recorded sysfs tree; only a live device can be identified over VFIO"
        ));
    }
    let nvme = open_controller(address)?;
    let id = nvme.identity().clone();
    let bars = nvme.device().bars().map_err(|e| e.to_string())?;
    let nsids = nvme.namespaces().map_err(|e| e.to_string())?;
    let namespaces: Vec<Namespace> = nsids
        .iter()
        .map(|&n| nvme.namespace(n))
        .collect::<Result<_, _>>()
        .map_err(|e| e.to_string())?;
    if args.json {
        let v = json!({
            "device": device,
            "bars": bars,
            "controller": id,
            "namespaces": namespaces,
        });
        writeln!(
            out,
            "{}",
            serde_json::to_string_pretty(&v).map_err(|e| e.to_string())?
        )
        .map_err(io_err)?;
        return Ok(ExitCode::SUCCESS);
    }
    writeln!(out, "{}", identity_line(nvme.device().pci())).map_err(io_err)?;
    write!(out, "{}", vfio::render_bars(&bars)).map_err(io_err)?;
    writeln!(out, "Model: {}", id.model).map_err(io_err)?;
    writeln!(out, "Serial: {}", id.serial).map_err(io_err)?;
    writeln!(out, "Firmware: {}", id.firmware).map_err(io_err)?;
    writeln!(
        out,
        "NVMe {}, controller id {}, max transfer {}, volatile write cache {}",
        id.version_string(),
        id.cntlid,
        id.max_transfer()
            .map_or("unlimited".to_owned(), |b| format!("{} KiB", b / 1024)),
        if id.volatile_write_cache { "yes" } else { "no" }
    )
    .map_err(io_err)?;
    writeln!(out, "Subsystem NQN: {}", id.subnqn).map_err(io_err)?;
    for ns in &namespaces {
        writeln!(out, "{}", describe_namespace(ns)).map_err(io_err)?;
    }
    Ok(ExitCode::SUCCESS)
}

fn io_err(e: std::io::Error) -> String {
    format!("cannot write the report: {e}")
}

/// One line describing a namespace.
pub fn describe_namespace(ns: &Namespace) -> String {
    let kind = match ns.zones {
        Some(z) => format!(
            "zoned: {} zones of {} blocks, zone append up to {} KiB",
            z.zone_count,
            z.zone_size,
            z.max_append / 1024
        ),
        None => "NVM".to_owned(),
    };
    format!(
        "Namespace {}: {}, {} blocks of {} B ({} MiB){}",
        ns.nsid,
        kind,
        ns.blocks,
        ns.block_size,
        ns.capacity_bytes() >> 20,
        if ns.deallocate_reads_zeroes {
            ", deallocated blocks read as zeroes"
        } else {
            ""
        }
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_parse_with_and_without_namespace() {
        let t = parse_target("0000:00:03.0/2").unwrap();
        assert_eq!(t.address.to_string(), "0000:00:03.0");
        assert_eq!(t.nsid, Some(2));
        let t = parse_target("00:03.0").unwrap();
        assert_eq!(t.nsid, None);
        assert!(parse_target("00:03.0/0")
            .unwrap_err()
            .contains("namespace id"));
        assert!(parse_target("00:03.0/x").is_err());
        assert!(parse_target("nonsense")
            .unwrap_err()
            .contains("invalid PCI address"));
    }

    #[test]
    fn identify_of_an_absent_device_is_a_clear_error() {
        let err = identify(IdentifyArgs {
            address: "7ffe:1f:1f.7".into(),
            json: false,
            sysfs: "/sys".into(),
        })
        .unwrap_err();
        assert!(err.contains("no PCI device 7ffe:1f:1f.7"), "{err}");
    }

    fn fixture() -> std::path::PathBuf {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/sysfs/sys")
    }

    #[test]
    fn a_real_card_is_identified_then_plainly_not_driven() {
        let mut out = Vec::new();
        let code = identify_to(
            IdentifyArgs {
                address: "0000:04:00.0".into(),
                json: false,
                sysfs: fixture(),
            },
            &mut out,
        )
        .unwrap();
        assert_eq!(code, ExitCode::SUCCESS);
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains("HP IO Accelerator (ioDrive2)"), "{text}");
        assert!(text.contains("1aed:2001 (subsystem 103c:176f)"), "{text}");
        assert!(text.contains("driver iomemory-vsl"), "{text}");
        assert!(
            text.contains("BAR layout unknown") || text.contains("BAR0"),
            "{text}"
        );
        let last = text.lines().last().unwrap();
        assert!(last.starts_with("command protocol not supported"), "{text}");

        let mut out = Vec::new();
        identify_to(
            IdentifyArgs {
                address: "0000:04:00.0".into(),
                json: true,
                sysfs: fixture(),
            },
            &mut out,
        )
        .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["protocol_supported"], false);
        assert_eq!(v["device"]["vendor"], "1aed");
    }

    #[test]
    fn a_recorded_nvme_controller_is_not_opened() {
        let err = identify_to(
            IdentifyArgs {
                address: "0000:01:00.0".into(),
                json: false,
                sysfs: fixture(),
            },
            &mut Vec::new(),
        )
        .unwrap_err();
        assert!(err.contains("recorded sysfs tree"), "{err}");
    }

    #[test]
    fn namespaces_describe_their_kind() {
        let ns = Namespace {
            nsid: 2,
            csi: 2,
            block_size: 4096,
            blocks: 16384,
            metadata_size: 0,
            deallocate_reads_zeroes: false,
            max_transfer: 512 * 1024,
            zones: Some(iomemory::nvme::nvm::ZoneGeometry {
                zone_size: 1024,
                zone_count: 16,
                max_append: 512 * 1024,
            }),
        };
        assert_eq!(
            describe_namespace(&ns),
            "Namespace 2: zoned: 16 zones of 1024 blocks, zone append up to 512 KiB, 16384 blocks of 4096 B (64 MiB)"
        );
    }
}
