//! `iomem status`: what `fio-status` shows, read from the card over its
//! admin queue (identify and health log), never from the image directly.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use std::sync::Arc;

use iomemory::card::{Card, HealthLog, IdentifyData};
use iomemory::vsl::{Vsl, VslStatus};
use iomemory::units::{gbytes, with_commas};
use serde_json::json;

use crate::open::open_image;

/// Options of `iomem status`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Show everything (`fio-status -a`).
    #[arg(short = 'a', long = "all")]
    pub all: bool,
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
    /// Cards to show: emulated card image paths, or PCI addresses of real
    /// cards (identity from sysfs; their command protocol is not supported).
    #[arg(required = true)]
    pub cards: Vec<PathBuf>,
    /// Control socket of a running `iomem serve`, asked about cards it holds.
    #[arg(long, default_value = crate::serve::config::DEFAULT_RPC_SOCKET)]
    pub rpc_socket: PathBuf,
    /// sysfs root for PCI addresses (for recorded trees).
    #[arg(long, default_value = "/sys", hide = true)]
    pub sysfs: PathBuf,
}

/// Status of a card a running `iomem serve` holds (its image is locked):
/// asked over the control socket, with live counters.
fn served_card_status(path: &std::path::Path, socket: &std::path::Path) -> Result<serde_json::Value, String> {
    use crate::serve::rpc::call_socket;
    let timeout = std::time::Duration::from_secs(5);
    let wanted = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    let list = call_socket(socket, "card_list", json!({}), timeout)?;
    let name = list
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| {
            c["path"].as_str().is_some_and(|p| {
                std::fs::canonicalize(p).unwrap_or_else(|_| PathBuf::from(p)) == wanted
            })
        })
        .and_then(|c| c["name"].as_str().map(str::to_string))
        .ok_or_else(|| format!("the service at {} does not hold {}", socket.display(), path.display()))?;
    call_socket(socket, "card_status", json!({ "name": name }), timeout)
}

fn render_served(index: usize, path: &std::path::Path, st: &serde_json::Value) -> String {
    let mut s = String::new();
    let v = &st["vsl"];
    let _ = writeln!(s, "fct{index}\tAttached (served by `iomem serve` as {}; live figures from its control socket)", st["name"].as_str().unwrap_or("?"));
    let _ = writeln!(s, "\tLocated at {}", path.display());
    let _ = writeln!(s, "\t{} GBytes device size", gbytes(st["capacity_bytes"].as_u64().unwrap_or(0)));
    let _ = writeln!(
        s,
        "\tFormat: v{}, {} sectors of {} bytes",
        iomemory::vsl::FORMAT_VERSION,
        st["num_blocks"].as_u64().unwrap_or(0),
        st["block_size"].as_u64().unwrap_or(0)
    );
    let _ = writeln!(
        s,
        "\tReserve space status: {}; Reserves: {:.2}%, warn at 10.00%",
        v["reserve"]["state"].as_str().unwrap_or("?"),
        v["reserve"]["percent"].as_f64().unwrap_or(0.0)
    );
    let _ = writeln!(s, "\tWrite amplification: {:.2}", v["write_amplification"].as_f64().unwrap_or(0.0));
    let _ = writeln!(s, "\tRAM usage:");
    let _ = writeln!(s, "\t   Current: {} bytes", with_commas(v["ram_usage"]["total"].as_u64().unwrap_or(0)));
    for e in st["export_stats"].as_array().into_iter().flatten() {
        let _ = writeln!(s, "\tExport {}: {}", e["name"].as_str().unwrap_or("?"), e["stats"]);
    }
    s
}

/// What is known of a real card at a PCI address: its identity and BARs
/// from sysfs, and that its command protocol is not supported.
fn pci_card_report(root: &iomemory::pci::SysfsRoot, address: iomemory::pci::PciAddress) -> Result<String, String> {
    use iomemory::pci::DeviceKind;
    let dev = iomemory::pci::read_device(root, address).map_err(|e| e.to_string())?;
    let mut s = String::new();
    let _ = writeln!(s, "{address}\t{}", dev.name());
    let _ = writeln!(
        s,
        "\tVendor:{:04x}, Device:{:04x}, Sub vendor:{:04x}, Sub device:{:04x}",
        dev.vendor, dev.device, dev.subsystem_vendor, dev.subsystem_device
    );
    let _ = writeln!(s, "\tDriver: {}", dev.driver.as_deref().unwrap_or("none"));
    if let Ok(bars) = iomemory::vfio::sysfs_bars(root, address) {
        for line in iomemory::vfio::render_bars(&bars).lines() {
            let _ = writeln!(s, "\t{line}");
        }
    }
    match &dev.kind {
        DeviceKind::IoMemory(_) => {
            let _ = writeln!(s, "\tState: Detached: {}", iomemory::pci::UNSUPPORTED_PROTOCOL_REASON);
        }
        _ => {
            let _ = writeln!(s, "\tNot an ioMemory card (`iomem nvme identify {address}` for NVMe controllers)");
        }
    }
    Ok(s)
}

/// Everything the report needs about one card.
pub struct CardFacts {
    /// Where it is.
    pub location: String,
    /// Identify data.
    pub identify: IdentifyData,
    /// Health log.
    pub health: HealthLog,
    /// The attached VSL's status, when this process has it attached.
    pub vsl: Option<VslStatus>,
    /// User capacity in bytes (formatted size, or advertised).
    pub user_bytes: u64,
    /// The VSL format on the card, read from its superblock.
    pub format: Option<(u64, u32)>,
}

impl CardFacts {
    /// Reads identify and health from an open card.
    pub fn gather(location: String, card: &Card, vsl: Option<&Arc<Vsl>>) -> Result<Self, String> {
        let health = card.health().map_err(|e| format!("{location}: reading the health log: {e}"))?;
        let identify = card.identify().clone();
        let vsl = vsl.map(|v| v.status());
        let format = match &vsl {
            Some(v) => Some((v.num_sectors, v.sector_size)),
            None => Vsl::read_superblock(card)
                .map_err(|e| format!("{location}: reading the VSL superblock: {e}"))?
                .map(|sb| (sb.num_sectors, sb.sector_size)),
        };
        let user_bytes = format.map_or(identify.identity.advertised_bytes, |(n, size)| n * size as u64);
        Ok(Self {
            location,
            identify,
            health,
            vsl,
            user_bytes,
            format,
        })
    }

    /// Whether a VSL instance has the card attached.
    pub fn attached(&self) -> bool {
        self.vsl.is_some()
    }

    /// Reserve blocks left, as a percentage of what the card started with
    /// (good blocks beyond what user capacity needs).
    pub fn reserve_percent(&self) -> f64 {
        if let Some(v) = &self.vsl {
            return v.reserve.percent;
        }
        let g = &self.identify.geometry;
        let needed = self.user_bytes.div_ceil(g.block_bytes());
        let initial = g.total_blocks().saturating_sub(needed);
        if initial == 0 {
            return 0.0;
        }
        let now = self.health.good_blocks.saturating_sub(needed);
        (now as f64 / initial as f64 * 100.0).min(100.0)
    }

    /// Rated PBW left, as a percentage.
    pub fn pbw_remaining_percent(&self) -> f64 {
        let rated = self.identify.identity.rated_pbw_bytes.max(1) as f64;
        (100.0 * (1.0 - self.health.physical_bytes_written as f64 / rated)).max(0.0)
    }

    fn reserve_status(&self) -> &'static str {
        if self.vsl.as_ref().is_some_and(|v| v.read_only) {
            return "Out of reserve: read-only";
        }
        let r = self.reserve_percent();
        if r <= 0.0 {
            "Out of reserve: read-only"
        } else if r <= 10.0 {
            "Warning: reserves low"
        } else {
            "Healthy"
        }
    }

    fn json(&self, index: usize) -> serde_json::Value {
        let id = &self.identify.identity;
        json!({
            "name": format!("fct{index}"),
            "location": self.location,
            "state": if self.attached() { "Attached" } else { "Detached" },
            "vsl": self.vsl,
            "model": id.model,
            "product_number": id.product_number,
            "serial": id.serial,
            "fio_serial": id.fio_serial,
            "firmware_version": id.firmware_version,
            "firmware_revision": id.firmware_revision,
            "pci": {
                "vendor": format!("{:04x}", id.pci_vendor),
                "device": format!("{:04x}", id.pci_device),
                "subsystem_vendor": format!("{:04x}", id.pci_subsystem_vendor),
                "subsystem_device": format!("{:04x}", id.pci_subsystem_device),
            },
            "device_size_bytes": self.user_bytes,
            "format": self.format.map(|(sectors, size)| json!({"sectors": sectors, "sector_size": size})),
            "geometry": self.identify.geometry,
            "timing_profile": self.identify.timing_profile,
            "powerloss_protection": self.health.powerloss_protection,
            "reserve_percent": self.reserve_percent(),
            "reserve_status": self.reserve_status(),
            "rated_pbw_bytes": id.rated_pbw_bytes,
            "pbw_remaining_percent": self.pbw_remaining_percent(),
            "health": self.health,
        })
    }
}

fn volts(mv: u32) -> String {
    format!("{:.2}V", mv as f64 / 1000.0)
}

fn degc(mc: i32) -> String {
    format!("{:.2} degC", mc as f64 / 1000.0)
}

/// Renders the `fio-status` text for `cards`.
pub fn render(cards: &[CardFacts], all: bool) -> String {
    let mut s = String::new();
    let n = cards.len();
    let _ = writeln!(
        s,
        "Found {n} ioMemory device{} in this system",
        if n == 1 { "" } else { "s" }
    );
    let _ = writeln!(
        s,
        "Driver version: iomemory {} (userspace, poll mode)",
        env!("CARGO_PKG_VERSION")
    );
    for (i, c) in cards.iter().enumerate() {
        let id = &c.identify.identity;
        let h = &c.health;
        let _ = writeln!(s);
        let _ = writeln!(s, "Adapter: Single Controller Adapter");
        let size = if c.user_bytes >= 1_000_000_000_000 {
            format!("{:.3}TB", c.user_bytes as f64 / 1e12)
        } else {
            format!("{:.2}GB", c.user_bytes as f64 / 1e9)
        };
        let _ = writeln!(
            s,
            "\tFusion-io {} {size}, Product Number:{}, SN:{}, FIO SN:{}",
            id.model,
            id.product_number,
            id.serial,
            id.fio_serial
        );
        let _ = writeln!(s, "\tExternal Power: NOT connected");
        let _ = writeln!(s, "\tPCIe Bus voltage: avg {}", volts(h.pcie_mv));
        let _ = writeln!(s, "\tPCIe Bus current: avg {:.2}A", h.pcie_ma as f64 / 1000.0);
        let _ = writeln!(s, "\tPCIe Bus power: avg {:.2}W", h.pcie_mw as f64 / 1000.0);
        if all {
            let _ = writeln!(s, "\tConnected ioMemory modules:");
            let _ = writeln!(s, "\t  fct{i}:\tProduct Number:{}, SN:{}", id.product_number, id.serial);
        }
        let _ = writeln!(s);
        let _ = writeln!(s, "fct{i}\t{}", if c.attached() { "Attached" } else { "Detached" });
        if all {
            let _ = writeln!(s, "\tSN:{}", id.serial);
            let _ = writeln!(s, "\tLocated at {}", c.location);
            let _ = writeln!(
                s,
                "\tPowerloss protection: {}",
                if h.powerloss_protection { "protected" } else { "not protected (write-back: flush required)" }
            );
            let _ = writeln!(
                s,
                "\tVendor:{:04x}, Device:{:04x}, Sub vendor:{:04x}, Sub device:{:04x}",
                id.pci_vendor, id.pci_device, id.pci_subsystem_vendor, id.pci_subsystem_device
            );
        }
        let _ = writeln!(s, "\tFirmware v{}, rev {} Public", id.firmware_version, id.firmware_revision);
        let _ = writeln!(s, "\t{} GBytes device size", gbytes(c.user_bytes));
        match c.format {
            Some((sectors, size)) => {
                let _ = writeln!(s, "\tFormat: v{}, {} sectors of {} bytes", iomemory::vsl::FORMAT_VERSION, sectors, size);
            }
            None => {
                let _ = writeln!(s, "\tFormat: none (run `iomem format` before attaching)");
            }
        }
        if all {
            let g = &c.identify.geometry;
            let _ = writeln!(
                s,
                "\tNAND: {} channels x {} dies, {} blocks/die, {} pages of {} B; {} GBytes raw; timing {}",
                g.channels,
                g.dies_per_channel,
                g.blocks_per_die,
                g.pages_per_block,
                g.page_size,
                gbytes(g.raw_bytes()),
                c.identify.timing_profile
            );
        }
        let _ = writeln!(
            s,
            "\tInternal temperature: {}, max {}",
            degc(h.temperature_mc),
            degc(h.temperature_max_mc)
        );
        if all {
            let _ = writeln!(s, "\tInternal voltage: avg {}, max {}", volts(h.internal_mv_avg), volts(h.internal_mv_max));
            let _ = writeln!(s, "\tAux voltage: avg {}, max {}", volts(h.aux_mv_avg), volts(h.aux_mv_max));
        }
        let _ = writeln!(
            s,
            "\tReserve space status: {}; Reserves: {:.2}%, warn at 10.00%",
            c.reserve_status(),
            c.reserve_percent()
        );
        if all {
            let active = if h.good_blocks == 0 {
                0.0
            } else {
                100.0 * (1.0 - h.failed_dies as f64 / c.identify.geometry.dies() as f64)
            };
            let _ = writeln!(s, "\tActive media: {active:.2}%");
        }
        let _ = writeln!(
            s,
            "\tRated PBW: {:.2} PB, {:.2}% remaining",
            id.rated_pbw_bytes as f64 / 1e15,
            c.pbw_remaining_percent()
        );
        if all {
            let _ = writeln!(s, "\tLifetime data volumes:");
            let _ = writeln!(s, "\t   Physical bytes written: {}", with_commas(h.physical_bytes_written));
            let _ = writeln!(s, "\t   Physical bytes read   : {}", with_commas(h.physical_bytes_read));
            let _ = writeln!(
                s,
                "\tWear: P/E cycles avg {:.1}, max {}, min {} of {} rated; bad blocks {} factory, {} grown",
                h.total_pe_cycles as f64 / c.identify.geometry.total_blocks().max(1) as f64,
                h.max_pe_cycles,
                h.min_pe_cycles,
                id.rated_pe_cycles,
                h.factory_bad_blocks,
                h.grown_bad_blocks
            );
            let _ = writeln!(
                s,
                "\tMedia errors: {} corrected bits in {} reads, {} uncorrectable reads, {} program / {} erase failures",
                h.ecc_corrected_bits, h.ecc_corrected_reads, h.uncorrectable_reads, h.program_failures, h.erase_failures
            );
            let _ = writeln!(s, "\tPower cycles: {}", h.power_cycles);
            let _ = writeln!(s, "\tRAM usage:");
            match &c.vsl {
                Some(v) => {
                    let _ = writeln!(s, "\t   Current: {} bytes", with_commas(v.ram_usage.total));
                    let _ = writeln!(
                        s,
                        "\t   Forward map: {} bytes ({} per TiB of user capacity)",
                        with_commas(v.ram_usage.forward_map),
                        with_commas(v.map_bytes_per_tib)
                    );
                    let _ = writeln!(s, "\tWrite amplification: {:.2}", v.write_amplification);
                    let _ = writeln!(s, "\tLast attach: {:?} in {} ms", v.attach.kind, v.attach.millis);
                }
                None => {
                    let _ = writeln!(s, "\t   Current: 0 bytes (detached: no flash map loaded)");
                }
            }
        }
    }
    s
}

/// Runs `iomem status`.
pub fn run(args: Args) -> Result<ExitCode, String> {
    let mut cards = Vec::new();
    let mut real = Vec::new();
    let mut served = Vec::new();
    for path in &args.cards {
        let text = path.display().to_string();
        if !path.exists() {
            if let Ok(address) = text.parse::<iomemory::pci::PciAddress>() {
                let root = iomemory::pci::SysfsRoot::new(args.sysfs.clone(), "/proc/self/mounts");
                real.push(pci_card_report(&root, address)?);
                continue;
            }
        }
        let card = match open_image(path) {
            Ok(card) => card,
            Err(e) if e.contains("in use by another process") => {
                // Held by a running service: ask it instead.
                let st = served_card_status(path, &args.rpc_socket)
                    .map_err(|rpc| format!("{e}; asking `iomem serve` failed too: {rpc}"))?;
                served.push((path.clone(), st));
                continue;
            }
            Err(e) => return Err(e),
        };
        cards.push(CardFacts::gather(path.display().to_string(), &card, None)?);
    }
    if args.json {
        let mut list: Vec<_> = cards.iter().enumerate().map(|(i, c)| c.json(i)).collect();
        list.extend(served.iter().map(|(_, st)| st.clone()));
        let doc = json!({
            "driver_version": env!("CARGO_PKG_VERSION"),
            "devices": list,
        });
        println!("{}", serde_json::to_string_pretty(&doc).map_err(|e| e.to_string())?);
    } else {
        if !cards.is_empty() {
            print!("{}", render(&cards, args.all));
        }
        for (i, (path, st)) in served.iter().enumerate() {
            println!();
            print!("{}", render_served(cards.len() + i, path, st));
        }
        for r in &real {
            println!();
            print!("{r}");
        }
    }
    Ok(ExitCode::SUCCESS)
}
