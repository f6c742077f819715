//! Binding a PCI function to `vfio-pci` and releasing it, one device at a
//! time, with the checks SPDK's `setup.sh` leaves to the operator.
//!
//! Binding follows the kernel's protocol (Documentation/ABI/testing/
//! sysfs-bus-pci, `driver_override`):
//! 1. write `vfio-pci` to `<dev>/driver_override`, so no other driver can
//!    claim the device while it is unbound;
//! 2. if a driver holds it, write the address to `<dev>/driver/unbind`;
//! 3. write the address to `<sys>/bus/pci/drivers_probe` (or, on kernels
//!    without it, to `<sys>/bus/pci/drivers/vfio-pci/bind`);
//! 4. read `<dev>/driver` back: the kernel probes synchronously, so it must
//!    now be `vfio-pci`. If not, the override is cleared and the device
//!    probed again, so the host driver gets it back.
//!
//! Writes go through a [`SysfsWriter`], so the sequence can be observed and
//! the kernel's reaction emulated in tests.

use std::fs::OpenOptions;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use super::sysfs::{link_name, read_device, PciDevice};
use super::usage::check_not_in_use;
use super::{read_error, PciAddress, PciError, SysfsRoot, VFIO_PCI_DRIVER};

/// Drivers that may hold other members of an IOMMU group while one member
/// is given to VFIO (besides no driver at all).
const GROUP_SAFE_DRIVERS: [&str; 2] = [VFIO_PCI_DRIVER, "pci-stub"];

/// PCI class of PCI-to-PCI bridges (base 0x06, subclass 0x04). The kernel's
/// VFIO viability check accepts bridges whatever their driver (`pcieport`).
const PCI_BRIDGE_CLASS: u32 = 0x06_04;

/// Where sysfs writes go.
pub trait SysfsWriter {
    /// Writes `value` to the existing attribute file at `path` in one write.
    fn write(&self, path: &Path, value: &str) -> std::io::Result<()>;
}

/// The real kernel: writes the attribute file.
#[derive(Debug, Clone, Copy, Default)]
pub struct KernelSysfs;

impl SysfsWriter for KernelSysfs {
    fn write(&self, path: &Path, value: &str) -> std::io::Result<()> {
        // No `create`: a missing attribute is an error, never a new file.
        let mut file = OpenOptions::new().write(true).truncate(true).open(path)?;
        // sysfs takes an attribute value in a single write(2).
        let written = file.write(value.as_bytes())?;
        if written != value.len() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::WriteZero,
                "short write to a sysfs attribute",
            ));
        }
        Ok(())
    }
}

/// One sysfs write performed, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SysfsWrite {
    /// The attribute file.
    pub path: PathBuf,
    /// What was written.
    pub value: String,
}

/// What [`bind_to_vfio`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BindOutcome {
    /// The device was already bound to vfio-pci; nothing was written.
    AlreadyBound,
    /// The device is now bound to vfio-pci.
    Bound {
        /// The driver it was taken from, to restore on release
        /// ([`unbind_restoring`]).
        previous_driver: Option<String>,
        /// The writes, in order.
        writes: Vec<SysfsWrite>,
    },
}

/// What [`unbind`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnbindOutcome {
    /// The driver the kernel bound after release, if any.
    pub driver_after: Option<String>,
    /// The writes, in order.
    pub writes: Vec<SysfsWrite>,
}

/// Records writes as they are made.
struct Recorder<'a> {
    writer: &'a dyn SysfsWriter,
    writes: Vec<SysfsWrite>,
}

impl Recorder<'_> {
    fn write(&mut self, path: PathBuf, value: &str) -> Result<(), PciError> {
        self.writer
            .write(&path, value)
            .map_err(|source| PciError::Write {
                path: path.clone(),
                value: value.to_owned(),
                source,
            })?;
        self.writes.push(SysfsWrite {
            path,
            value: value.to_owned(),
        });
        Ok(())
    }

    /// Asks the kernel to probe drivers for `address`; `fallback_driver` is
    /// bound directly when the kernel has no `drivers_probe`.
    fn probe(
        &mut self,
        root: &SysfsRoot,
        address: PciAddress,
        fallback_driver: Option<&str>,
    ) -> Result<(), PciError> {
        let probe = root.drivers_probe();
        if probe.exists() {
            return self.write(probe, &address.to_string());
        }
        match fallback_driver {
            Some(driver) => self.write(root.driver_dir(driver).join("bind"), &address.to_string()),
            None => Err(read_error(&probe, std::io::ErrorKind::NotFound.into())),
        }
    }
}

/// Binds the device at `address` to `vfio-pci` through the real kernel.
/// See [`bind_to_vfio_with`].
pub fn bind_to_vfio(root: &SysfsRoot, address: PciAddress) -> Result<BindOutcome, PciError> {
    bind_to_vfio_with(root, address, &KernelSysfs)
}

/// Binds the device at `address` to `vfio-pci`, writing through `writer`.
///
/// Already bound to vfio-pci is a no-op. Refuses, before writing anything,
/// when the device does not exist, vfio-pci is not loaded, the device has no
/// IOMMU group, another member of its group is bound to a host driver, or
/// one of its block devices is mounted or held. If a write fails part-way,
/// or the kernel does not bind it, the override is cleared and the device
/// re-probed so the host driver takes it back; the write error, or
/// [`PciError::BindDidNotTake`] with what the rollback achieved, is returned.
pub fn bind_to_vfio_with(
    root: &SysfsRoot,
    address: PciAddress,
    writer: &dyn SysfsWriter,
) -> Result<BindOutcome, PciError> {
    let dev = read_device(root, address)?;
    if dev.driver.as_deref() == Some(VFIO_PCI_DRIVER) {
        return Ok(BindOutcome::AlreadyBound);
    }
    let vfio_dir = root.driver_dir(VFIO_PCI_DRIVER);
    if !vfio_dir.is_dir() {
        return Err(PciError::VfioDriverMissing { path: vfio_dir });
    }
    let group = dev.iommu_group.ok_or(PciError::NoIommuGroup { address })?;
    check_group_peers(root, address, group)?;
    check_not_in_use(root, address)?;
    let dev_dir = root.device_dir(address);
    let override_path = dev_dir.join("driver_override");
    if !override_path.is_file() {
        return Err(PciError::DriverOverrideUnsupported {
            path: override_path,
        });
    }

    let mut rec = Recorder {
        writer,
        writes: Vec::new(),
    };
    rec.write(override_path.clone(), VFIO_PCI_DRIVER)?;
    let attempt = hand_over(&mut rec, root, &dev);
    match attempt {
        Ok(Some(driver)) if driver == VFIO_PCI_DRIVER => Ok(BindOutcome::Bound {
            previous_driver: dev.driver,
            writes: rec.writes,
        }),
        Ok(now) => {
            let rollback = roll_back(&mut rec, root, &dev);
            Err(PciError::BindDidNotTake {
                address,
                driver: now.unwrap_or_else(|| "none".to_owned()),
                rollback,
            })
        }
        Err(e) => {
            roll_back(&mut rec, root, &dev);
            Err(e)
        }
    }
}

/// Steps 2 to 4: unbind from the current driver, probe, read the driver back.
fn hand_over(
    rec: &mut Recorder<'_>,
    root: &SysfsRoot,
    dev: &PciDevice,
) -> Result<Option<String>, PciError> {
    let dev_dir = root.device_dir(dev.address);
    if let Some(driver) = &dev.driver {
        rec.write(
            unbind_path(root, &dev_dir, driver),
            &dev.address.to_string(),
        )?;
    }
    rec.probe(root, dev.address, Some(VFIO_PCI_DRIVER))?;
    link_name(&dev_dir.join("driver"))
}

/// The `unbind` file of the driver bound to the device at `dev_dir`:
/// `<dev>/driver/unbind` through the kernel's symlink, or the driver's own
/// directory when the tree records the link as a file.
fn unbind_path(root: &SysfsRoot, dev_dir: &Path, driver: &str) -> PathBuf {
    let link = dev_dir.join("driver");
    match std::fs::symlink_metadata(&link) {
        Ok(meta) if meta.file_type().is_symlink() => link.join("unbind"),
        _ => root.driver_dir(driver).join("unbind"),
    }
}

/// Clears the override and re-probes so the host driver can take the device
/// back; says how that went.
fn roll_back(rec: &mut Recorder<'_>, root: &SysfsRoot, dev: &PciDevice) -> &'static str {
    let override_path = root.device_dir(dev.address).join("driver_override");
    let cleared = rec.write(override_path, "\n").is_ok();
    let probed = cleared && rec.probe(root, dev.address, dev.driver.as_deref()).is_ok();
    match (cleared, probed) {
        (true, true) => "the driver override was cleared and the device re-probed for its host driver",
        (true, false) => "the driver override was cleared but re-probing failed; write the address to /sys/bus/pci/drivers_probe",
        _ => "clearing the driver override failed too; write a newline to its driver_override, then the address to /sys/bus/pci/drivers_probe",
    }
}

/// Refuses when another member of IOMMU group `group` is bound to a driver
/// other than vfio-pci or pci-stub (bridges excepted, as in the kernel).
fn check_group_peers(root: &SysfsRoot, address: PciAddress, group: u32) -> Result<(), PciError> {
    let dir = root.iommu_group_devices_dir(group);
    let mut peers = Vec::new();
    for entry in std::fs::read_dir(&dir).map_err(|e| read_error(&dir, e))? {
        let entry = entry.map_err(|e| read_error(&dir, e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let peer: PciAddress = name.parse().map_err(|_| PciError::Malformed {
            path: entry.path(),
            found: name.clone(),
            expected: "an IOMMU group member named by a PCI address",
        })?;
        if peer != address {
            peers.push(peer);
        }
    }
    peers.sort();
    for peer in peers {
        let dev = read_device(root, peer)?;
        let Some(driver) = dev.driver else { continue };
        if GROUP_SAFE_DRIVERS.contains(&driver.as_str()) || dev.class >> 8 == PCI_BRIDGE_CLASS {
            continue;
        }
        return Err(PciError::GroupPeerBound {
            address,
            group,
            peer,
            driver,
        });
    }
    Ok(())
}

/// Releases the device at `address` from `vfio-pci` through the real kernel
/// and lets the kernel bind its default driver. See [`unbind_with`].
pub fn unbind(root: &SysfsRoot, address: PciAddress) -> Result<UnbindOutcome, PciError> {
    unbind_with(root, address, None, &KernelSysfs)
}

/// Releases the device from `vfio-pci` and makes sure `previous_driver`
/// (as recorded by [`BindOutcome::Bound`]) takes it back.
pub fn unbind_restoring(
    root: &SysfsRoot,
    address: PciAddress,
    previous_driver: &str,
) -> Result<UnbindOutcome, PciError> {
    unbind_with(root, address, Some(previous_driver), &KernelSysfs)
}

/// Releases the device at `address` from `vfio-pci`, writing through
/// `writer`: unbind it if vfio-pci holds it, clear `driver_override`, and
/// write the address to `drivers_probe` so the kernel binds its default
/// driver. With `previous_driver`, if the probe did not give the device to
/// that driver, the address is written to that driver's `bind` file, and
/// [`PciError::RestoreFailed`] is returned if it still does not own it.
///
/// A device bound to another driver is refused ([`PciError::NotBoundToVfio`]):
/// this only undoes what [`bind_to_vfio`] did.
pub fn unbind_with(
    root: &SysfsRoot,
    address: PciAddress,
    previous_driver: Option<&str>,
    writer: &dyn SysfsWriter,
) -> Result<UnbindOutcome, PciError> {
    let dev = read_device(root, address)?;
    match dev.driver.as_deref() {
        None | Some(VFIO_PCI_DRIVER) => {}
        Some(other) => {
            return Err(PciError::NotBoundToVfio {
                address,
                driver: other.to_owned(),
            })
        }
    }
    let dev_dir = root.device_dir(address);
    let mut rec = Recorder {
        writer,
        writes: Vec::new(),
    };
    if let Some(driver) = &dev.driver {
        rec.write(unbind_path(root, &dev_dir, driver), &address.to_string())?;
    }
    if dev.driver_override.is_some() {
        rec.write(dev_dir.join("driver_override"), "\n")?;
    }
    rec.probe(root, address, previous_driver)?;
    let mut driver_after = link_name(&dev_dir.join("driver"))?;
    if let Some(wanted) = previous_driver {
        if driver_after.as_deref() != Some(wanted) {
            let bind = root.driver_dir(wanted).join("bind");
            if driver_after.is_none() && bind.is_file() {
                rec.write(bind, &address.to_string())?;
                driver_after = link_name(&dev_dir.join("driver"))?;
            }
            if driver_after.as_deref() != Some(wanted) {
                return Err(PciError::RestoreFailed {
                    address,
                    wanted: wanted.to_owned(),
                    driver: driver_after.unwrap_or_else(|| "none".to_owned()),
                });
            }
        }
    }
    Ok(UnbindOutcome {
        driver_after,
        writes: rec.writes,
    })
}
