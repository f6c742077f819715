//! Discovery: read PCI functions from `<sys>/bus/pci/devices/*`.
//!
//! Real sysfs makes `driver` and `iommu_group` symlinks; a recorded tree may
//! instead hold a plain file containing the link target. Both are read the
//! same way: the name is the target's last path component.

use std::fs;
use std::io::ErrorKind;
use std::path::Path;

use serde::{Serialize, Serializer};

use super::ids::{IoMemoryModel, NVME_CLASS};
use super::{read_error, PciAddress, PciError, SysfsRoot};

/// What a PCI function is, as far as this stack cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(tag = "type", content = "model", rename_all = "snake_case")]
pub enum DeviceKind {
    /// An ioMemory card.
    #[serde(rename = "iomemory")]
    IoMemory(IoMemoryModel),
    /// An NVMe controller (class 0x010802).
    Nvme,
    /// Anything else.
    Other,
}

/// One PCI function as sysfs describes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PciDevice {
    /// Its address.
    pub address: PciAddress,
    /// Vendor id.
    #[serde(serialize_with = "hex4")]
    pub vendor: u16,
    /// Device id.
    #[serde(serialize_with = "hex4")]
    pub device: u16,
    /// Subsystem vendor id.
    #[serde(serialize_with = "hex4")]
    pub subsystem_vendor: u16,
    /// Subsystem device id.
    #[serde(serialize_with = "hex4")]
    pub subsystem_device: u16,
    /// Class code: base class, subclass, programming interface.
    #[serde(serialize_with = "hex6")]
    pub class: u32,
    /// Bound driver's name, if any.
    pub driver: Option<String>,
    /// `driver_override`, if set.
    pub driver_override: Option<String>,
    /// IOMMU group number, if the IOMMU is on.
    pub iommu_group: Option<u32>,
    /// NUMA node, if the platform reports one.
    pub numa_node: Option<i32>,
    /// What it is.
    pub kind: DeviceKind,
}

fn hex4<S: Serializer>(v: &u16, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&format_args!("{v:04x}"))
}

fn hex6<S: Serializer>(v: &u32, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&format_args!("{v:06x}"))
}

impl PciDevice {
    /// Display name: the card model, "NVMe controller", or "PCI device".
    pub fn name(&self) -> String {
        match &self.kind {
            DeviceKind::IoMemory(model) => model.name(),
            DeviceKind::Nvme => "NVMe controller".to_owned(),
            DeviceKind::Other => "PCI device".to_owned(),
        }
    }

    /// Whether `iomem list` shows it (ioMemory cards and NVMe controllers).
    pub fn is_listed(&self) -> bool {
        !matches!(self.kind, DeviceKind::Other)
    }
}

/// Every PCI function under `<sys>/bus/pci/devices`, sorted by address.
///
/// Fails on the first entry that is not a PCI address or whose files are
/// malformed, naming the file.
pub fn discover(root: &SysfsRoot) -> Result<Vec<PciDevice>, PciError> {
    let dir = root.devices_dir();
    let entries = fs::read_dir(&dir).map_err(|e| read_error(&dir, e))?;
    let mut devices = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| read_error(&dir, e))?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let address: PciAddress = name.parse().map_err(|_| PciError::Malformed {
            path: entry.path(),
            found: name.to_string(),
            expected: "a directory named by a PCI address like 0000:03:00.0",
        })?;
        devices.push(read_device(root, address)?);
    }
    devices.sort_by_key(|d| d.address);
    Ok(devices)
}

/// The PCI function at `address`.
pub fn read_device(root: &SysfsRoot, address: PciAddress) -> Result<PciDevice, PciError> {
    let dir = root.device_dir(address);
    if !dir.is_dir() {
        return Err(PciError::DeviceNotFound {
            address,
            devices_dir: root.devices_dir(),
        });
    }
    let vendor = read_hex(&dir.join("vendor"), 4, "a 16-bit hex id like 0x1aed")? as u16;
    let device = read_hex(&dir.join("device"), 4, "a 16-bit hex id like 0x2001")? as u16;
    let subsystem_vendor = read_hex(
        &dir.join("subsystem_vendor"),
        4,
        "a 16-bit hex id like 0x103c",
    )? as u16;
    let subsystem_device = read_hex(
        &dir.join("subsystem_device"),
        4,
        "a 16-bit hex id like 0x176f",
    )? as u16;
    let class = read_hex(
        &dir.join("class"),
        6,
        "a 24-bit hex class code like 0x010802",
    )?;
    let driver = link_name(&dir.join("driver"))?;
    let driver_override = read_driver_override(&dir.join("driver_override"))?;
    let iommu_group = read_iommu_group(&dir.join("iommu_group"))?;
    let numa_node = read_numa_node(&dir.join("numa_node"))?;
    let kind = match IoMemoryModel::identify(vendor, device, subsystem_vendor) {
        Some(model) => DeviceKind::IoMemory(model),
        None if class == NVME_CLASS => DeviceKind::Nvme,
        None => DeviceKind::Other,
    };
    Ok(PciDevice {
        address,
        vendor,
        device,
        subsystem_vendor,
        subsystem_device,
        class,
        driver,
        driver_override,
        iommu_group,
        numa_node,
        kind,
    })
}

/// A file's content, trimmed; `None` if it does not exist.
pub(crate) fn read_optional(path: &Path) -> Result<Option<String>, PciError> {
    match fs::read(path) {
        Ok(bytes) => match String::from_utf8(bytes) {
            Ok(s) => Ok(Some(s.trim().to_owned())),
            Err(e) => Err(PciError::Malformed {
                path: path.to_owned(),
                found: String::from_utf8_lossy(e.as_bytes()).trim().to_owned(),
                expected: "UTF-8 text",
            }),
        },
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
        Err(e) => Err(read_error(path, e)),
    }
}

/// A required file's content, trimmed.
fn read_required(path: &Path) -> Result<String, PciError> {
    read_optional(path)?.ok_or_else(|| read_error(path, ErrorKind::NotFound.into()))
}

/// A hex number of at most `max_digits` digits, with or without `0x`.
fn read_hex(path: &Path, max_digits: usize, expected: &'static str) -> Result<u32, PciError> {
    let text = read_required(path)?;
    let digits = text
        .strip_prefix("0x")
        .or_else(|| text.strip_prefix("0X"))
        .unwrap_or(&text);
    let malformed = || PciError::Malformed {
        path: path.to_owned(),
        found: text.clone(),
        expected,
    };
    if digits.is_empty()
        || digits.len() > max_digits
        || !digits.bytes().all(|b| b.is_ascii_hexdigit())
    {
        return Err(malformed());
    }
    u32::from_str_radix(digits, 16).map_err(|_| malformed())
}

/// The name a sysfs link points at (its target's last component), or `None`
/// if the link is absent. A plain file holding the target path is read the
/// same way, as recorded trees store links.
pub(crate) fn link_name(path: &Path) -> Result<Option<String>, PciError> {
    let meta = match fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(read_error(path, e)),
    };
    let target = if meta.file_type().is_symlink() {
        let target = fs::read_link(path).map_err(|e| read_error(path, e))?;
        target.to_string_lossy().into_owned()
    } else if meta.is_file() {
        read_required(path)?
    } else {
        return Err(PciError::Malformed {
            path: path.to_owned(),
            found: "a directory".to_owned(),
            expected: "a symlink, or a file holding the link target",
        });
    };
    let name = Path::new(target.trim())
        .file_name()
        .map(|n| n.to_string_lossy().into_owned());
    match name {
        Some(name) if !name.is_empty() && name != ".." && name != "." => Ok(Some(name)),
        _ if target.trim().is_empty() => Ok(None),
        _ => Err(PciError::Malformed {
            path: path.to_owned(),
            found: target,
            expected: "a link target ending in a name",
        }),
    }
}

/// `driver_override`: `None` when unset ("(null)" or empty) or when the
/// kernel has no such file.
pub(crate) fn read_driver_override(path: &Path) -> Result<Option<String>, PciError> {
    Ok(read_optional(path)?.filter(|s| !s.is_empty() && s != "(null)"))
}

fn read_iommu_group(path: &Path) -> Result<Option<u32>, PciError> {
    match link_name(path)? {
        None => Ok(None),
        Some(name) => name.parse().map(Some).map_err(|_| PciError::Malformed {
            path: path.to_owned(),
            found: name,
            expected: "a link to kernel/iommu_groups/<number>",
        }),
    }
}

/// `numa_node`: -1 (no affinity) and a missing file both mean `None`.
fn read_numa_node(path: &Path) -> Result<Option<i32>, PciError> {
    let Some(text) = read_optional(path)? else {
        return Ok(None);
    };
    match text.parse::<i32>() {
        Ok(n) if n >= 0 => Ok(Some(n)),
        Ok(-1) => Ok(None),
        _ => Err(PciError::Malformed {
            path: path.to_owned(),
            found: text,
            expected: "a NUMA node number, or -1",
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_name_reads_symlinks_and_files() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("drivers/nvme");
        fs::create_dir_all(&target).unwrap();
        std::os::unix::fs::symlink("../../drivers/nvme", dir.path().join("sym")).unwrap();
        fs::write(
            dir.path().join("file"),
            "../../../bus/pci/drivers/iomemory-vsl\n",
        )
        .unwrap();
        fs::write(dir.path().join("empty"), "\n").unwrap();
        fs::write(dir.path().join("dots"), "..\n").unwrap();
        fs::create_dir(dir.path().join("plaindir")).unwrap();
        assert_eq!(
            link_name(&dir.path().join("sym")).unwrap().as_deref(),
            Some("nvme")
        );
        assert_eq!(
            link_name(&dir.path().join("file")).unwrap().as_deref(),
            Some("iomemory-vsl")
        );
        assert_eq!(link_name(&dir.path().join("empty")).unwrap(), None);
        assert_eq!(link_name(&dir.path().join("absent")).unwrap(), None);
        let err = link_name(&dir.path().join("dots")).unwrap_err();
        assert!(matches!(err, PciError::Malformed { .. }), "{err}");
        let err = link_name(&dir.path().join("plaindir")).unwrap_err();
        assert!(err.to_string().contains("plaindir"), "{err}");
    }

    #[test]
    fn numa_node_and_override_conventions() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("numa_node");
        fs::write(&p, "-1\n").unwrap();
        assert_eq!(read_numa_node(&p).unwrap(), None);
        fs::write(&p, "1\n").unwrap();
        assert_eq!(read_numa_node(&p).unwrap(), Some(1));
        fs::write(&p, "-7\n").unwrap();
        assert!(read_numa_node(&p).is_err());
        fs::write(&p, "one\n").unwrap();
        assert!(read_numa_node(&p)
            .unwrap_err()
            .to_string()
            .contains("numa_node"));
        assert_eq!(read_numa_node(&dir.path().join("absent")).unwrap(), None);

        let o = dir.path().join("driver_override");
        fs::write(&o, "(null)\n").unwrap();
        assert_eq!(read_driver_override(&o).unwrap(), None);
        fs::write(&o, "\n").unwrap();
        assert_eq!(read_driver_override(&o).unwrap(), None);
        fs::write(&o, "vfio-pci\n").unwrap();
        assert_eq!(
            read_driver_override(&o).unwrap().as_deref(),
            Some("vfio-pci")
        );
    }

    #[test]
    fn hex_files_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("vendor");
        for (text, ok) in [
            ("0x1aed\n", Some(0x1aed)),
            ("1AED", Some(0x1aed)),
            ("0x11aed", None),
            ("0x", None),
            ("", None),
            ("0x+aed", None),
            ("vendor", None),
        ] {
            fs::write(&p, text).unwrap();
            let got = read_hex(&p, 4, "id");
            match ok {
                Some(v) => assert_eq!(got.unwrap(), v, "{text:?}"),
                None => assert!(matches!(got, Err(PciError::Malformed { .. })), "{text:?}"),
            }
        }
        fs::write(&p, [0xff, 0xfe]).unwrap();
        assert!(matches!(
            read_hex(&p, 4, "id"),
            Err(PciError::Malformed { .. })
        ));
    }
}
