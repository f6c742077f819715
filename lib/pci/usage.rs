//! Is a PCI device in use by the host? Finds the block devices (disks and
//! partitions) under a device's sysfs directory and checks them against the
//! mount table and their `holders` (device-mapper, LVM, md RAID).
//!
//! Block devices appear in two layouts: under a `block/` glue directory
//! (`<dev>/block/fioa`, as drivers that register disks directly on the PCI
//! device do) and directly under a class device
//! (`<dev>/nvme/nvme0/nvme0n1`, recognised by its `subsystem` link naming
//! `block`). Partitions are subdirectories of their disk with a `partition`
//! file. Symlinks are never followed, so the walk stays inside the device.

use std::fs;
use std::path::{Path, PathBuf};

use super::sysfs::{link_name, read_optional};
use super::{read_error, PciAddress, PciError, SysfsRoot};

/// How deep below the device directory block devices are looked for
/// (`nvme/nvme0/nvme0n1/nvme0n1p1` is four levels).
const MAX_DEPTH: usize = 8;

/// A disk or partition backed by a PCI device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockDevice {
    /// Kernel name, e.g. "fioa", "nvme0n1p2".
    pub name: String,
    /// Names in its `holders` directory, e.g. "dm-0".
    pub holders: Vec<String>,
}

/// One line of a mount table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountEntry {
    /// What is mounted, e.g. "/dev/fioa1".
    pub source: String,
    /// Where, with `\040`-style escapes decoded.
    pub target: String,
    /// Filesystem type.
    pub fstype: String,
}

/// The block devices under `device_dir`, in walk order (sorted per level).
pub fn block_devices(device_dir: &Path) -> Result<Vec<BlockDevice>, PciError> {
    let mut out = Vec::new();
    walk(device_dir, false, 0, &mut out)?;
    Ok(out)
}

fn walk(
    dir: &Path,
    in_glue_dir: bool,
    depth: usize,
    out: &mut Vec<BlockDevice>,
) -> Result<(), PciError> {
    let mut subdirs: Vec<(String, PathBuf)> = Vec::new();
    for entry in fs::read_dir(dir).map_err(|e| read_error(dir, e))? {
        let entry = entry.map_err(|e| read_error(dir, e))?;
        let file_type = entry
            .file_type()
            .map_err(|e| read_error(&entry.path(), e))?;
        if file_type.is_dir() {
            subdirs.push((
                entry.file_name().to_string_lossy().into_owned(),
                entry.path(),
            ));
        }
    }
    subdirs.sort();
    for (name, path) in subdirs {
        let is_block = in_glue_dir
            || link_name(&path.join("subsystem"))?.as_deref() == Some("block")
            || path.join("partition").is_file();
        if is_block {
            out.push(BlockDevice {
                holders: holders(&path.join("holders"))?,
                name: name.clone(),
            });
        }
        if depth + 1 < MAX_DEPTH {
            walk(&path, name == "block" && !is_block, depth + 1, out)?;
        }
    }
    Ok(())
}

fn holders(dir: &Path) -> Result<Vec<String>, PciError> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(read_error(dir, e)),
    };
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| read_error(dir, e))?;
        names.push(entry.file_name().to_string_lossy().into_owned());
    }
    names.sort();
    Ok(names)
}

/// Parses a `/proc/self/mounts`-format table; lines with fewer than three
/// fields are skipped.
pub fn parse_mounts(text: &str) -> Vec<MountEntry> {
    text.lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let source = fields.next()?;
            let target = fields.next()?;
            let fstype = fields.next()?;
            Some(MountEntry {
                source: unescape(source),
                target: unescape(target),
                fstype: unescape(fstype),
            })
        })
        .collect()
}

/// Decodes the kernel's octal escapes (`\040` space, `\011` tab, `\012`
/// newline, `\134` backslash).
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|d| d.iter().all(|b| (b'0'..=b'7').contains(b)));
        match (bytes[i], octal) {
            (b'\\', Some(d)) => {
                let v = (u32::from(d[0] - b'0') << 6)
                    | (u32::from(d[1] - b'0') << 3)
                    | u32::from(d[2] - b'0');
                out.push(v as u8);
                i += 4;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The kernel block device name a mount source refers to, if it is a
/// `/dev` node. Symlinks such as `/dev/disk/by-uuid/...` or `/dev/mapper/x`
/// are resolved when they exist on this host.
fn source_device_name(source: &str) -> Option<String> {
    let rest = source.strip_prefix("/dev/")?;
    if rest.contains('/') {
        let resolved = fs::canonicalize(source).ok()?;
        return resolved
            .file_name()
            .map(|n| n.to_string_lossy().into_owned());
    }
    Some(rest.to_owned())
}

/// Refuses (with [`PciError::Mounted`] or [`PciError::Held`]) when a block
/// device backed by `address` is mounted or held by another block device.
pub fn check_not_in_use(root: &SysfsRoot, address: PciAddress) -> Result<(), PciError> {
    let devices = block_devices(&root.device_dir(address))?;
    if devices.is_empty() {
        return Ok(());
    }
    let mounts = match read_optional(&root.mounts)? {
        Some(text) => parse_mounts(&text),
        None => {
            return Err(read_error(
                &root.mounts,
                std::io::ErrorKind::NotFound.into(),
            ))
        }
    };
    for mount in &mounts {
        let Some(name) = source_device_name(&mount.source) else {
            continue;
        };
        if let Some(dev) = devices.iter().find(|d| d.name == name) {
            return Err(PciError::Mounted {
                address,
                block_device: dev.name.clone(),
                source_name: mount.source.clone(),
                mount_point: mount.target.clone(),
            });
        }
    }
    for dev in &devices {
        if let Some(holder) = dev.holders.first() {
            return Err(PciError::Held {
                address,
                block_device: dev.name.clone(),
                holder: holder.clone(),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_mount_lines_and_escapes() {
        let text = "/dev/fioa1 /mnt/my\\040data xfs rw,relatime 0 0\nproc /proc proc rw 0 0\n\nshort line\n";
        let mounts = parse_mounts(text);
        assert_eq!(mounts.len(), 2);
        assert_eq!(mounts[0].source, "/dev/fioa1");
        assert_eq!(mounts[0].target, "/mnt/my data");
        assert_eq!(mounts[0].fstype, "xfs");
        assert_eq!(mounts[1].source, "proc");
        assert_eq!(unescape("a\\134b\\01"), "a\\b\\01");
    }

    #[test]
    fn finds_block_devices_in_both_layouts_without_following_links() {
        let dir = tempfile::tempdir().unwrap();
        let dev = dir.path().join("0000:03:00.0");
        fs::create_dir_all(dev.join("block/fioa/fioa1")).unwrap();
        fs::write(dev.join("block/fioa/fioa1/partition"), "1\n").unwrap();
        fs::create_dir_all(dev.join("block/fioa/holders/dm-3")).unwrap();
        fs::create_dir_all(dev.join("block/fioa/queue")).unwrap();
        fs::create_dir_all(dev.join("nvme/nvme0/nvme0n1")).unwrap();
        fs::write(
            dev.join("nvme/nvme0/nvme0n1/subsystem"),
            "../../../../class/block\n",
        )
        .unwrap();
        fs::create_dir_all(dev.join("power")).unwrap();
        // A link back up the tree must not be followed (real sysfs has many).
        std::os::unix::fs::symlink("..", dev.join("subsystem")).unwrap();
        let found = block_devices(&dev).unwrap();
        let names: Vec<&str> = found.iter().map(|d| d.name.as_str()).collect();
        assert_eq!(names, ["fioa", "fioa1", "nvme0n1"]);
        assert_eq!(found[0].holders, ["dm-3"]);
        assert!(found[1].holders.is_empty());
    }
}
