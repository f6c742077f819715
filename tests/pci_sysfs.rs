//! PCI discovery and vfio-pci binding against the recorded sysfs tree in
//! `tests/fixtures/sysfs` (see its README). Tests that write work on a copy.

use std::cell::RefCell;
use std::collections::HashMap;
use std::fs;
use std::io;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};

use iomemory::pci::{
    bind_to_vfio, bind_to_vfio_with, discover, read_device, render_list, unbind, unbind_with,
    BindOutcome, DeviceKind, Generation, KernelSysfs, Oem, PciAddress, PciError, SysfsRoot,
    SysfsWrite, SysfsWriter, UNSUPPORTED_PROTOCOL_REASON,
};

const NVME: &str = "0000:01:00.0";
const IODRIVE2: &str = "0000:03:00.0";
const HP: &str = "0000:04:00.0";
const GEN1: &str = "0000:05:00.0";
const NIC: &str = "0000:05:00.1";

fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/sysfs")
}

fn fixture_root() -> SysfsRoot {
    SysfsRoot::new(fixture_dir().join("sys"), fixture_dir().join("mounts"))
}

fn addr(s: &str) -> PciAddress {
    s.parse().unwrap()
}

/// Copies a tree, recreating symlinks as symlinks (relative targets stay
/// inside the copy).
fn copy_tree(src: &Path, dst: &Path) {
    fs::create_dir_all(dst).unwrap();
    for entry in fs::read_dir(src).unwrap() {
        let entry = entry.unwrap();
        let to = dst.join(entry.file_name());
        let file_type = entry.file_type().unwrap();
        if file_type.is_symlink() {
            symlink(fs::read_link(entry.path()).unwrap(), &to).unwrap();
        } else if file_type.is_dir() {
            copy_tree(&entry.path(), &to);
        } else {
            fs::copy(entry.path(), &to).unwrap();
        }
    }
}

/// A writable copy of the fixture.
struct Tree {
    _dir: tempfile::TempDir,
    root: SysfsRoot,
}

impl Tree {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        copy_tree(&fixture_dir(), dir.path());
        let root = SysfsRoot::new(dir.path().join("sys"), dir.path().join("mounts"));
        Self { _dir: dir, root }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.root.sys.join(rel)
    }

    fn dev(&self, a: &str) -> PathBuf {
        self.path(&format!("bus/pci/devices/{a}"))
    }

    fn read(&self, rel: &str) -> String {
        fs::read_to_string(self.path(rel)).unwrap()
    }

    fn device_override(&self, a: &str) -> String {
        fs::read_to_string(self.dev(a).join("driver_override")).unwrap()
    }

    fn driver(&self, a: &str) -> Option<String> {
        read_device(&self.root, addr(a)).unwrap().driver
    }
}

/// Emulates the kernel's reaction to sysfs writes on a copied tree: `unbind`
/// drops the driver link; `drivers_probe` links the device to its
/// `driver_override`, or to its default driver when no override is set;
/// `drivers/<d>/bind` links it to `<d>` unless an override names another
/// driver. Drivers whose directory is absent (module not loaded) never bind.
/// Records every write in order.
struct FakeKernel {
    sys: PathBuf,
    defaults: HashMap<String, String>,
    log: RefCell<Vec<SysfsWrite>>,
}

impl FakeKernel {
    fn new(tree: &Tree) -> Self {
        let defaults = [
            (NVME, "nvme"),
            (IODRIVE2, "iomemory-vsl"),
            (HP, "iomemory-vsl"),
            (NIC, "igb"),
        ]
        .iter()
        .map(|(a, d)| (a.to_string(), d.to_string()))
        .collect();
        Self {
            sys: tree.root.sys.clone(),
            defaults,
            log: RefCell::new(Vec::new()),
        }
    }

    fn probe(&self, address: &str, only: Option<&str>) -> io::Result<()> {
        let dev = self.sys.join("bus/pci/devices").join(address);
        if fs::symlink_metadata(dev.join("driver")).is_ok() {
            return Ok(());
        }
        let over = fs::read_to_string(dev.join("driver_override"))?;
        let over = over.trim();
        let wanted = if over.is_empty() || over == "(null)" {
            // An explicit bind names the driver; a probe picks the default.
            match only
                .map(str::to_owned)
                .or_else(|| self.defaults.get(address).cloned())
            {
                Some(d) => d,
                None => return Ok(()),
            }
        } else {
            over.to_owned()
        };
        if only.is_some_and(|o| o != wanted) {
            return Err(io::Error::from_raw_os_error(libc::ENODEV));
        }
        let driver_dir = self.sys.join("bus/pci/drivers").join(&wanted);
        if driver_dir.is_dir() {
            symlink(driver_dir, dev.join("driver"))?;
        }
        Ok(())
    }
}

impl SysfsWriter for FakeKernel {
    fn write(&self, path: &Path, value: &str) -> io::Result<()> {
        KernelSysfs.write(path, value)?;
        self.log.borrow_mut().push(SysfsWrite {
            path: path.to_owned(),
            value: value.to_owned(),
        });
        match path.file_name().and_then(|n| n.to_str()) {
            Some("unbind") => {
                fs::remove_file(self.sys.join("bus/pci/devices").join(value).join("driver"))
            }
            Some("drivers_probe") => self.probe(value, None),
            Some("bind") => {
                let driver = path
                    .parent()
                    .and_then(Path::file_name)
                    .and_then(|n| n.to_str())
                    .map(str::to_owned);
                self.probe(value, driver.as_deref())
            }
            _ => Ok(()),
        }
    }
}

fn write(path: PathBuf, value: &str) -> SysfsWrite {
    SysfsWrite {
        path,
        value: value.to_owned(),
    }
}

#[test]
fn discovers_every_fixture_device() {
    let devices = discover(&fixture_root()).unwrap();
    let addrs: Vec<String> = devices.iter().map(|d| d.address.to_string()).collect();
    assert_eq!(addrs, ["0000:00:00.0", NVME, IODRIVE2, HP, GEN1, NIC]);
    let by = |a: &str| devices.iter().find(|d| d.address == addr(a)).unwrap();

    let d = by(IODRIVE2);
    assert_eq!(
        (d.vendor, d.device, d.subsystem_vendor, d.subsystem_device),
        (0x1aed, 0x2001, 0x1aed, 0x2001)
    );
    assert_eq!(d.class, 0x018000);
    assert_eq!(d.driver.as_deref(), Some("iomemory-vsl"));
    assert_eq!(d.driver_override, None);
    assert_eq!((d.iommu_group, d.numa_node), (Some(13), Some(0)));
    let DeviceKind::IoMemory(model) = d.kind else {
        panic!("{IODRIVE2} is a card: {:?}", d.kind)
    };
    assert_eq!((model.generation, model.oem), (Generation::IoDrive2, None));
    assert_eq!(d.name(), "ioDrive2");

    let d = by(HP);
    assert_eq!((d.subsystem_vendor, d.subsystem_device), (0x103c, 0x176f));
    assert_eq!((d.iommu_group, d.numa_node), (Some(14), Some(1)));
    let DeviceKind::IoMemory(model) = d.kind else {
        panic!("{HP} is a card")
    };
    assert_eq!(
        (model.generation, model.oem),
        (Generation::IoDrive2, Some(Oem::Hp))
    );
    assert_eq!(d.name(), "HP IO Accelerator (ioDrive2)");

    let d = by(GEN1);
    assert_eq!(d.device, 0x1005);
    assert_eq!(d.name(), "ioDrive (VSL gen 1)");
    assert_eq!(
        (d.driver.as_deref(), d.iommu_group, d.numa_node),
        (None, Some(15), None)
    );

    let d = by(NVME);
    assert_eq!((d.vendor, d.device, d.class), (0x1b36, 0x0010, 0x010802));
    assert_eq!(d.kind, DeviceKind::Nvme);
    assert_eq!(
        (d.driver.as_deref(), d.iommu_group),
        (Some("nvme"), Some(12))
    );

    let d = by(NIC);
    assert_eq!(d.kind, DeviceKind::Other);
    assert_eq!(
        (d.driver.as_deref(), d.iommu_group),
        (Some("igb"), Some(15))
    );
    assert!(!d.is_listed());
    assert_eq!(by("0000:00:00.0").driver, None);
}

#[test]
fn list_shows_cards_first_then_nvme() {
    let devices = discover(&fixture_root()).unwrap();
    let text = render_list(&devices);
    let expected = format!(
        "\
ADDRESS       IDS        SUBSYSTEM  NAME                          DRIVER        IOMMU  NUMA
0000:03:00.0  1aed:2001  1aed:2001  ioDrive2                      iomemory-vsl  13     0
0000:04:00.0  1aed:2001  103c:176f  HP IO Accelerator (ioDrive2)  iomemory-vsl  14     1
0000:05:00.0  1aed:1005  1aed:1005  ioDrive (VSL gen 1)           -             15     -
0000:01:00.0  1b36:0010  1af4:1100  NVMe controller               nvme          12     0
note: ioMemory cards: {UNSUPPORTED_PROTOCOL_REASON}
"
    );
    assert_eq!(text, expected);
}

#[test]
fn json_carries_ids_names_and_links() {
    let devices = discover(&fixture_root()).unwrap();
    let json = serde_json::to_value(&devices).unwrap();
    let hp = &json[3];
    assert_eq!(hp["address"], HP);
    assert_eq!(hp["vendor"], "1aed");
    assert_eq!(hp["subsystem_vendor"], "103c");
    assert_eq!(hp["class"], "018000");
    assert_eq!(hp["driver"], "iomemory-vsl");
    assert_eq!(hp["iommu_group"], 14);
    assert_eq!(hp["kind"]["type"], "iomemory");
    assert_eq!(hp["kind"]["model"]["name"], "HP IO Accelerator (ioDrive2)");
    assert_eq!(hp["kind"]["model"]["protocol_supported"], false);
    assert_eq!(json[1]["kind"]["type"], "nvme");
    assert_eq!(json[4]["numa_node"], serde_json::Value::Null);
}

#[test]
fn malformed_and_missing_files_are_named() {
    let tree = Tree::new();
    let vendor = tree.dev(IODRIVE2).join("vendor");
    fs::write(&vendor, "0xfusion\n").unwrap();
    let err = discover(&tree.root).unwrap_err();
    let PciError::Malformed { path, found, .. } = &err else {
        panic!("{err}")
    };
    assert_eq!(path, &vendor);
    assert_eq!(found, "0xfusion");
    assert!(err.to_string().contains("0000:03:00.0/vendor"), "{err}");

    fs::remove_file(&vendor).unwrap();
    let err = discover(&tree.root).unwrap_err();
    assert!(
        matches!(&err, PciError::Read { path, .. } if path == &vendor),
        "{err}"
    );

    fs::write(&vendor, "0x1aed\n").unwrap();
    fs::write(tree.dev(HP).join("class"), "0x01080200\n").unwrap();
    let err = discover(&tree.root).unwrap_err();
    assert!(err.to_string().contains("0000:04:00.0/class"), "{err}");

    fs::write(tree.dev(HP).join("class"), "0x018000\n").unwrap();
    fs::create_dir(tree.path("bus/pci/devices/not-an-address")).unwrap();
    let err = discover(&tree.root).unwrap_err();
    assert!(err.to_string().contains("not-an-address"), "{err}");
}

#[test]
fn links_recorded_as_files_read_like_symlinks() {
    let tree = Tree::new();
    let dev = tree.dev(HP);
    fs::remove_file(dev.join("driver")).unwrap();
    fs::write(
        dev.join("driver"),
        "../../../bus/pci/drivers/iomemory-vsl\n",
    )
    .unwrap();
    fs::remove_file(dev.join("iommu_group")).unwrap();
    fs::write(dev.join("iommu_group"), "../../../kernel/iommu_groups/14\n").unwrap();
    let d = read_device(&tree.root, addr(HP)).unwrap();
    assert_eq!(
        (d.driver.as_deref(), d.iommu_group),
        (Some("iomemory-vsl"), Some(14))
    );

    // Binding unbinds through the driver's own directory, as there is no link to follow.
    let kernel = FakeKernel::new(&tree);
    let outcome = bind_to_vfio_with(&tree.root, addr(HP), &kernel).unwrap();
    assert!(matches!(outcome, BindOutcome::Bound { .. }));
    assert_eq!(tree.read("bus/pci/drivers/iomemory-vsl/unbind"), HP);
    assert_eq!(tree.driver(HP).as_deref(), Some("vfio-pci"));
}

#[test]
fn bind_writes_override_unbind_probe_in_order() {
    let tree = Tree::new();
    let kernel = FakeKernel::new(&tree);
    let dev = tree.dev(HP);
    let outcome = bind_to_vfio_with(&tree.root, addr(HP), &kernel).unwrap();
    let expected = vec![
        write(dev.join("driver_override"), "vfio-pci"),
        write(dev.join("driver/unbind"), HP),
        write(tree.path("bus/pci/drivers_probe"), HP),
    ];
    assert_eq!(
        outcome,
        BindOutcome::Bound {
            previous_driver: Some("iomemory-vsl".into()),
            writes: expected.clone()
        }
    );
    assert_eq!(*kernel.log.borrow(), expected);
    assert_eq!(tree.device_override(HP), "vfio-pci");
    assert_eq!(tree.read("bus/pci/drivers/iomemory-vsl/unbind"), HP);
    assert_eq!(tree.read("bus/pci/drivers_probe"), HP);
    assert_eq!(tree.driver(HP).as_deref(), Some("vfio-pci"));

    // Binding again is a no-op.
    assert_eq!(
        bind_to_vfio_with(&tree.root, addr(HP), &kernel).unwrap(),
        BindOutcome::AlreadyBound
    );
    assert_eq!(kernel.log.borrow().len(), 3);
}

#[test]
fn bind_falls_back_to_vfio_bind_without_drivers_probe() {
    let tree = Tree::new();
    fs::remove_file(tree.path("bus/pci/drivers_probe")).unwrap();
    let kernel = FakeKernel::new(&tree);
    bind_to_vfio_with(&tree.root, addr(HP), &kernel).unwrap();
    let log = kernel.log.borrow();
    assert_eq!(
        log.last().unwrap(),
        &write(tree.path("bus/pci/drivers/vfio-pci/bind"), HP)
    );
    assert_eq!(tree.read("bus/pci/drivers/vfio-pci/bind"), HP);
    assert_eq!(tree.driver(HP).as_deref(), Some("vfio-pci"));
}

#[test]
fn unbind_round_trip_restores_previous_driver() {
    let tree = Tree::new();
    let kernel = FakeKernel::new(&tree);
    let BindOutcome::Bound {
        previous_driver, ..
    } = bind_to_vfio_with(&tree.root, addr(HP), &kernel).unwrap()
    else {
        panic!("expected a bind")
    };
    kernel.log.borrow_mut().clear();

    let dev = tree.dev(HP);
    let outcome = unbind_with(&tree.root, addr(HP), previous_driver.as_deref(), &kernel).unwrap();
    let expected = vec![
        write(dev.join("driver/unbind"), HP),
        write(dev.join("driver_override"), "\n"),
        write(tree.path("bus/pci/drivers_probe"), HP),
    ];
    assert_eq!(outcome.writes, expected);
    assert_eq!(*kernel.log.borrow(), expected);
    assert_eq!(outcome.driver_after.as_deref(), Some("iomemory-vsl"));
    assert_eq!(tree.read("bus/pci/drivers/vfio-pci/unbind"), HP);
    let d = read_device(&tree.root, addr(HP)).unwrap();
    assert_eq!(
        (d.driver.as_deref(), d.driver_override),
        (Some("iomemory-vsl"), None)
    );
}

#[test]
fn unbind_binds_the_recorded_driver_when_probe_does_not() {
    let tree = Tree::new();
    let mut kernel = FakeKernel::new(&tree);
    bind_to_vfio_with(&tree.root, addr(HP), &kernel).unwrap();
    // The kernel would not pick iomemory-vsl by itself (e.g. bound by new_id).
    kernel.defaults.remove(HP);
    kernel.log.borrow_mut().clear();
    let outcome = unbind_with(&tree.root, addr(HP), Some("iomemory-vsl"), &kernel).unwrap();
    assert_eq!(
        outcome.writes.last().unwrap(),
        &write(tree.path("bus/pci/drivers/iomemory-vsl/bind"), HP)
    );
    assert_eq!(outcome.driver_after.as_deref(), Some("iomemory-vsl"));

    // With the module gone, release works but restoring is reported.
    bind_to_vfio_with(&tree.root, addr(HP), &kernel).unwrap();
    fs::remove_dir_all(tree.path("bus/pci/drivers/iomemory-vsl")).unwrap();
    let err = unbind_with(&tree.root, addr(HP), Some("iomemory-vsl"), &kernel).unwrap_err();
    assert!(
        matches!(&err, PciError::RestoreFailed { driver, .. } if driver == "none"),
        "{err}"
    );
    assert!(err.to_string().contains("modprobe iomemory-vsl"), "{err}");
    assert_eq!(tree.driver(HP), None);
}

#[test]
fn unbind_refuses_a_device_owned_by_another_driver() {
    let tree = Tree::new();
    let err = unbind(&tree.root, addr(IODRIVE2)).unwrap_err();
    assert!(
        matches!(&err, PciError::NotBoundToVfio { driver, .. } if driver == "iomemory-vsl"),
        "{err}"
    );
    assert_eq!(tree.read("bus/pci/drivers/iomemory-vsl/unbind"), "");
    assert_eq!(tree.read("bus/pci/drivers_probe"), "");
}

#[test]
fn kernel_writer_rolls_back_when_the_bind_does_not_take() {
    // The recorded tree has no kernel behind it: the driver link never
    // changes, so the bind is seen not to take and is undone.
    let tree = Tree::new();
    let err = bind_to_vfio(&tree.root, addr(HP)).unwrap_err();
    let PciError::BindDidNotTake { driver, .. } = &err else {
        panic!("{err}")
    };
    assert_eq!(driver, "iomemory-vsl");
    assert!(err.to_string().contains("dmesg"), "{err}");
    assert_eq!(tree.read("bus/pci/drivers/iomemory-vsl/unbind"), HP);
    assert_eq!(tree.read("bus/pci/drivers_probe"), HP);
    assert_eq!(tree.device_override(HP), "\n");
}

/// Asserts a refusal wrote nothing.
fn assert_untouched(tree: &Tree, a: &str) {
    assert_eq!(tree.device_override(a), "(null)\n");
    assert_eq!(tree.read("bus/pci/drivers_probe"), "");
}

#[test]
fn refuses_when_vfio_pci_is_not_loaded() {
    let tree = Tree::new();
    fs::remove_dir_all(tree.path("bus/pci/drivers/vfio-pci")).unwrap();
    let kernel = FakeKernel::new(&tree);
    let err = bind_to_vfio_with(&tree.root, addr(HP), &kernel).unwrap_err();
    assert!(matches!(err, PciError::VfioDriverMissing { .. }), "{err}");
    assert!(err.to_string().contains("modprobe vfio-pci"), "{err}");
    assert!(kernel.log.borrow().is_empty());
    assert_untouched(&tree, HP);
}

#[test]
fn refuses_without_iommu_group() {
    let tree = Tree::new();
    fs::remove_file(tree.dev(HP).join("iommu_group")).unwrap();
    let kernel = FakeKernel::new(&tree);
    let err = bind_to_vfio_with(&tree.root, addr(HP), &kernel).unwrap_err();
    assert!(matches!(err, PciError::NoIommuGroup { .. }), "{err}");
    assert!(
        err.to_string().contains("intel_iommu=on / amd_iommu=on"),
        "{err}"
    );
    assert!(kernel.log.borrow().is_empty());
    assert_untouched(&tree, HP);
}

#[test]
fn refuses_when_a_group_peer_has_a_host_driver() {
    let tree = Tree::new();
    let kernel = FakeKernel::new(&tree);
    let err = bind_to_vfio_with(&tree.root, addr(GEN1), &kernel).unwrap_err();
    let PciError::GroupPeerBound {
        group,
        peer,
        driver,
        ..
    } = &err
    else {
        panic!("{err}")
    };
    assert_eq!(
        (*group, peer.to_string(), driver.as_str()),
        (15, NIC.to_owned(), "igb")
    );
    assert!(
        err.to_string().contains("0000:05:00.1") && err.to_string().contains("igb"),
        "{err}"
    );
    assert!(kernel.log.borrow().is_empty());
    assert_untouched(&tree, GEN1);

    // A peer on pci-stub is fine; the card has no driver, so there is no unbind step.
    fs::remove_file(tree.dev(NIC).join("driver")).unwrap();
    symlink(
        "../../../bus/pci/drivers/pci-stub",
        tree.dev(NIC).join("driver"),
    )
    .unwrap();
    let outcome = bind_to_vfio_with(&tree.root, addr(GEN1), &kernel).unwrap();
    let dev = tree.dev(GEN1);
    assert_eq!(
        outcome,
        BindOutcome::Bound {
            previous_driver: None,
            writes: vec![
                write(dev.join("driver_override"), "vfio-pci"),
                write(tree.path("bus/pci/drivers_probe"), GEN1),
            ],
        }
    );
}

#[test]
fn a_bridge_peer_on_pcieport_does_not_block() {
    let tree = Tree::new();
    fs::write(tree.dev(NIC).join("class"), "0x060400\n").unwrap();
    fs::remove_file(tree.dev(NIC).join("driver")).unwrap();
    symlink(
        "../../../bus/pci/drivers/pcieport",
        tree.dev(NIC).join("driver"),
    )
    .unwrap();
    let kernel = FakeKernel::new(&tree);
    bind_to_vfio_with(&tree.root, addr(GEN1), &kernel).unwrap();
    assert_eq!(tree.driver(GEN1).as_deref(), Some("vfio-pci"));
}

#[test]
fn refuses_when_a_block_device_is_mounted() {
    let tree = Tree::new();
    let kernel = FakeKernel::new(&tree);
    let err = bind_to_vfio_with(&tree.root, addr(IODRIVE2), &kernel).unwrap_err();
    let PciError::Mounted {
        block_device,
        mount_point,
        ..
    } = &err
    else {
        panic!("{err}")
    };
    assert_eq!(
        (block_device.as_str(), mount_point.as_str()),
        ("fioa1", "/srv/fio data")
    );
    assert!(err.to_string().contains("unmount"), "{err}");
    assert_untouched(&tree, IODRIVE2);

    let err = bind_to_vfio_with(&tree.root, addr(NVME), &kernel).unwrap_err();
    let PciError::Mounted {
        block_device,
        mount_point,
        ..
    } = &err
    else {
        panic!("{err}")
    };
    assert_eq!(
        (block_device.as_str(), mount_point.as_str()),
        ("nvme0n1p2", "/")
    );
    assert!(kernel.log.borrow().is_empty());
    assert_untouched(&tree, NVME);

    // Once unmounted, the card binds.
    let mounts = fs::read_to_string(&tree.root.mounts).unwrap();
    let kept: String = mounts
        .lines()
        .filter(|l| !l.starts_with("/dev/fioa1"))
        .map(|l| format!("{l}\n"))
        .collect();
    fs::write(&tree.root.mounts, kept).unwrap();
    bind_to_vfio_with(&tree.root, addr(IODRIVE2), &kernel).unwrap();
    assert_eq!(tree.driver(IODRIVE2).as_deref(), Some("vfio-pci"));
}

#[test]
fn refuses_when_a_block_device_is_held() {
    let tree = Tree::new();
    fs::create_dir_all(tree.dev(HP).join("block/fiob/holders")).unwrap();
    symlink(
        "../../../../../virtual/block/dm-0",
        tree.dev(HP).join("block/fiob/holders/dm-0"),
    )
    .unwrap();
    let kernel = FakeKernel::new(&tree);
    let err = bind_to_vfio_with(&tree.root, addr(HP), &kernel).unwrap_err();
    let PciError::Held {
        block_device,
        holder,
        ..
    } = &err
    else {
        panic!("{err}")
    };
    assert_eq!((block_device.as_str(), holder.as_str()), ("fiob", "dm-0"));
    assert!(kernel.log.borrow().is_empty());
    assert_untouched(&tree, HP);
}

#[test]
fn refuses_an_unknown_address() {
    let tree = Tree::new();
    let err = bind_to_vfio(&tree.root, addr("0000:09:00.0")).unwrap_err();
    assert!(matches!(err, PciError::DeviceNotFound { .. }), "{err}");
    assert!(err.to_string().contains("0000:09:00.0"), "{err}");
    let err = unbind(&tree.root, addr("0000:09:00.0")).unwrap_err();
    assert!(matches!(err, PciError::DeviceNotFound { .. }), "{err}");
    assert_eq!(tree.read("bus/pci/drivers_probe"), "");
}
