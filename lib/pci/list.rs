//! The `iomem list` text: one line per ioMemory card and NVMe controller.

use std::collections::BTreeSet;
use std::fmt::Write as _;

use super::ids::ProtocolSupport;
use super::sysfs::{DeviceKind, PciDevice};

const HEADER: [&str; 7] = [
    "ADDRESS",
    "IDS",
    "SUBSYSTEM",
    "NAME",
    "DRIVER",
    "IOMMU",
    "NUMA",
];

/// Renders the device table `iomem list` prints.
///
/// Only ioMemory cards and NVMe controllers are shown, cards first, each
/// group in address order. Columns: address, vendor:device, subsystem
/// vendor:device, name, driver, IOMMU group, NUMA node ("-" when absent).
/// When any card is listed, a closing note says what the stack can do with
/// it. With nothing to show, a single line says so.
pub fn render_list(devices: &[PciDevice]) -> String {
    let mut shown: Vec<&PciDevice> = devices.iter().filter(|d| d.is_listed()).collect();
    if shown.is_empty() {
        return "no ioMemory cards or NVMe controllers found\n".to_owned();
    }
    shown.sort_by_key(|d| (!matches!(d.kind, DeviceKind::IoMemory(_)), d.address));

    let rows: Vec<[String; 7]> = shown
        .iter()
        .map(|d| {
            [
                d.address.to_string(),
                format!("{:04x}:{:04x}", d.vendor, d.device),
                format!("{:04x}:{:04x}", d.subsystem_vendor, d.subsystem_device),
                d.name(),
                d.driver.clone().unwrap_or_else(|| "-".to_owned()),
                d.iommu_group
                    .map_or_else(|| "-".to_owned(), |g| g.to_string()),
                d.numa_node
                    .map_or_else(|| "-".to_owned(), |n| n.to_string()),
            ]
        })
        .collect();

    let mut widths = HEADER.map(str::len);
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }

    let mut out = String::new();
    let header = HEADER.map(str::to_owned);
    for row in std::iter::once(&header).chain(&rows) {
        let mut line = String::new();
        for (i, (cell, w)) in row.iter().zip(widths).enumerate() {
            if i + 1 == row.len() {
                line.push_str(cell);
            } else {
                let _ = write!(line, "{cell:<w$}  ");
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    let reasons: BTreeSet<&str> = shown
        .iter()
        .filter_map(|d| match &d.kind {
            DeviceKind::IoMemory(model) => match model.protocol_support() {
                ProtocolSupport::IdentifyOnly { reason } => Some(reason),
                ProtocolSupport::Supported => None,
            },
            _ => None,
        })
        .collect();
    for reason in reasons {
        let _ = writeln!(out, "note: ioMemory cards: {reason}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_and_other_only_lists_say_nothing_found() {
        assert_eq!(
            render_list(&[]),
            "no ioMemory cards or NVMe controllers found\n"
        );
        let bridge = PciDevice {
            address: "0000:00:00.0".parse().unwrap(),
            vendor: 0x8086,
            device: 0x29c0,
            subsystem_vendor: 0x1af4,
            subsystem_device: 0x1100,
            class: 0x060000,
            driver: None,
            driver_override: None,
            iommu_group: Some(0),
            numa_node: None,
            kind: DeviceKind::Other,
        };
        assert_eq!(
            render_list(&[bridge]),
            "no ioMemory cards or NVMe controllers found\n"
        );
    }
}
