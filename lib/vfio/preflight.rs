//! Checks made before opening a device through VFIO.
//!
//! The kernel's own refusals are terse (`ENOENT`, `EPERM`, "group not
//! viable"); each check here looks at sysfs and `/dev/vfio` first so the
//! error says which condition failed and what to run. The paths are
//! injectable, so the checks are tested against recorded trees.

use std::fs;
use std::io::ErrorKind;
use std::path::PathBuf;

use super::VfioError;
use crate::pci::{read_device, PciAddress, PciDevice, SysfsRoot, VFIO_PCI_DRIVER};

/// Drivers that may hold other members of a device's IOMMU group.
const GROUP_SAFE_DRIVERS: [&str; 2] = [VFIO_PCI_DRIVER, "pci-stub"];

/// PCI class of PCI-to-PCI bridges (base 0x06, subclass 0x04): the kernel's
/// viability check accepts bridges whatever their driver.
const PCI_BRIDGE_CLASS: u32 = 0x06_04;

/// Where sysfs and the VFIO device nodes are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VfioEnv {
    /// The sysfs tree (and mount table).
    pub sysfs: SysfsRoot,
    /// The VFIO device node directory (`/dev/vfio`).
    pub dev_vfio: PathBuf,
}

impl Default for VfioEnv {
    fn default() -> Self {
        Self {
            sysfs: SysfsRoot::default(),
            dev_vfio: PathBuf::from("/dev/vfio"),
        }
    }
}

impl VfioEnv {
    /// Whether this is the host's real environment (the only one the
    /// kernel's VFIO ioctls can act on).
    pub fn is_host(&self) -> bool {
        *self == Self::default()
    }
}

/// What the checks found: the device is on vfio-pci and its group is usable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Preflight {
    /// The device as sysfs describes it.
    pub device: PciDevice,
    /// Its IOMMU group.
    pub group: u32,
    /// The group's device node.
    pub group_node: PathBuf,
}

/// Checks, in order, that `address` exists, has an IOMMU group, is bound to
/// vfio-pci, that the VFIO nodes exist, and that no other member of its
/// group is bound to a host driver.
pub fn preflight(env: &VfioEnv, address: PciAddress) -> Result<Preflight, VfioError> {
    let device = read_device(&env.sysfs, address)?;
    let group = device.iommu_group.ok_or(VfioError::NoIommu { address })?;
    if device.driver.as_deref() != Some(VFIO_PCI_DRIVER) {
        return Err(VfioError::NotBoundToVfio {
            address,
            driver: device.driver.clone(),
        });
    }
    let container = env.dev_vfio.join("vfio");
    if !container.exists() {
        return Err(VfioError::NoVfio { path: container });
    }
    let group_node = env.dev_vfio.join(group.to_string());
    if !group_node.exists() {
        return Err(VfioError::GroupNodeMissing {
            address,
            path: group_node,
        });
    }
    check_group_peers(env, address, group)?;
    Ok(Preflight {
        device,
        group,
        group_node,
    })
}

/// Fails with [`VfioError::GroupNotViable`] naming the first other member
/// of `group` that a host driver holds.
fn check_group_peers(env: &VfioEnv, address: PciAddress, group: u32) -> Result<(), VfioError> {
    let dir = env.sysfs.iommu_group_devices_dir(group);
    let entries = match fs::read_dir(&dir) {
        Ok(entries) => entries,
        // Without the group directory the kernel decides; nothing to name.
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
        Err(e) => {
            return Err(VfioError::Pci(crate::pci::PciError::Read {
                path: dir,
                source: e,
            }))
        }
    };
    let mut peers: Vec<PciAddress> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse().ok()))
        .filter(|peer| *peer != address)
        .collect();
    peers.sort();
    for peer in peers {
        let info = read_device(&env.sysfs, peer)?;
        let Some(driver) = info.driver else { continue };
        if GROUP_SAFE_DRIVERS.contains(&driver.as_str()) || info.class >> 8 == PCI_BRIDGE_CLASS {
            continue;
        }
        return Err(VfioError::GroupNotViable {
            address,
            group,
            peer,
            driver,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    /// A minimal sysfs device entry; `driver` and `group` as recorded trees
    /// store links (a file holding the target).
    fn add_device(sys: &Path, addr: &str, class: &str, driver: Option<&str>, group: Option<u32>) {
        let dir = sys.join("bus/pci/devices").join(addr);
        fs::create_dir_all(&dir).unwrap();
        for (name, value) in [
            ("vendor", "0x1b36"),
            ("device", "0x0010"),
            ("subsystem_vendor", "0x1af4"),
            ("subsystem_device", "0x1100"),
            ("class", class),
        ] {
            fs::write(dir.join(name), format!("{value}\n")).unwrap();
        }
        if let Some(driver) = driver {
            fs::write(
                dir.join("driver"),
                format!("../../../bus/pci/drivers/{driver}\n"),
            )
            .unwrap();
        }
        if let Some(group) = group {
            fs::write(
                dir.join("iommu_group"),
                format!("../../../kernel/iommu_groups/{group}\n"),
            )
            .unwrap();
            let members = sys.join(format!("kernel/iommu_groups/{group}/devices"));
            fs::create_dir_all(&members).unwrap();
            fs::write(members.join(addr), "").unwrap();
        }
    }

    struct Fixture {
        _dir: tempfile::TempDir,
        env: VfioEnv,
    }

    fn fixture(with_dev_nodes: bool) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let sys = dir.path().join("sys");
        let dev = dir.path().join("dev-vfio");
        if with_dev_nodes {
            fs::create_dir_all(&dev).unwrap();
            fs::write(dev.join("vfio"), "").unwrap();
            fs::write(dev.join("7"), "").unwrap();
        }
        add_device(&sys, "0000:00:03.0", "0x010802", Some("vfio-pci"), Some(7));
        add_device(&sys, "0000:00:04.0", "0x010802", Some("nvme"), Some(8));
        add_device(&sys, "0000:00:05.0", "0x010802", None, None);
        let env = VfioEnv {
            sysfs: SysfsRoot::new(sys, dir.path().join("mounts")),
            dev_vfio: dev,
        };
        Fixture { _dir: dir, env }
    }

    fn addr(s: &str) -> PciAddress {
        s.parse().unwrap()
    }

    #[test]
    fn a_bound_device_with_nodes_passes() {
        let f = fixture(true);
        let ok = preflight(&f.env, addr("0000:00:03.0")).unwrap();
        assert_eq!(ok.group, 7);
        assert_eq!(ok.group_node, f.env.dev_vfio.join("7"));
        assert_eq!(ok.device.driver.as_deref(), Some("vfio-pci"));
        assert!(!f.env.is_host());
        assert!(VfioEnv::default().is_host());
    }

    #[test]
    fn without_dev_vfio_the_error_says_to_load_the_module() {
        let f = fixture(false);
        let err = preflight(&f.env, addr("0000:00:03.0")).unwrap_err();
        assert!(matches!(err, VfioError::NoVfio { .. }), "{err}");
        let text = err.to_string();
        assert!(text.contains("dev-vfio/vfio does not exist"), "{text}");
        assert!(text.contains("modprobe vfio-pci"), "{text}");
    }

    #[test]
    fn a_device_on_its_host_driver_names_iomem_bind() {
        let f = fixture(true);
        let err = preflight(&f.env, addr("0000:00:04.0")).unwrap_err();
        assert!(
            err.to_string()
                .contains("bound to nvme, not vfio-pci; run `iomem bind 0000:00:04.0`"),
            "{err}"
        );
    }

    #[test]
    fn no_iommu_group_means_the_iommu_is_off() {
        let f = fixture(true);
        let err = preflight(&f.env, addr("0000:00:05.0")).unwrap_err();
        assert!(matches!(err, VfioError::NoIommu { .. }), "{err}");
        assert!(err.to_string().contains("intel_iommu=on"), "{err}");
    }

    #[test]
    fn an_absent_device_is_reported_by_address() {
        let f = fixture(true);
        let err = preflight(&f.env, addr("0000:00:09.0")).unwrap_err();
        assert!(
            err.to_string().contains("no PCI device 0000:00:09.0"),
            "{err}"
        );
    }

    #[test]
    fn a_missing_group_node_is_named() {
        let f = fixture(true);
        fs::remove_file(f.env.dev_vfio.join("7")).unwrap();
        let err = preflight(&f.env, addr("0000:00:03.0")).unwrap_err();
        assert!(matches!(err, VfioError::GroupNodeMissing { .. }), "{err}");
        assert!(
            err.to_string().contains("dev-vfio/7 does not exist"),
            "{err}"
        );
    }

    #[test]
    fn a_group_peer_on_a_host_driver_makes_the_group_not_viable() {
        let f = fixture(true);
        let sys = f.env.sysfs.sys.clone();
        add_device(&sys, "0000:00:03.1", "0x020000", Some("igb"), Some(7));
        let err = preflight(&f.env, addr("0000:00:03.0")).unwrap_err();
        match &err {
            VfioError::GroupNotViable {
                peer,
                driver,
                group,
                ..
            } => {
                assert_eq!(*peer, addr("0000:00:03.1"));
                assert_eq!(driver, "igb");
                assert_eq!(*group, 7);
            }
            other => panic!("expected GroupNotViable, got {other}"),
        }
        // Peers that are bridges, on pci-stub, or unbound are fine.
        fs::write(
            sys.join("bus/pci/devices/0000:00:03.1/driver"),
            "../../../bus/pci/drivers/pci-stub\n",
        )
        .unwrap();
        add_device(&sys, "0000:00:03.2", "0x060400", Some("pcieport"), Some(7));
        add_device(&sys, "0000:00:03.3", "0x020000", None, Some(7));
        preflight(&f.env, addr("0000:00:03.0")).unwrap();
    }
}
