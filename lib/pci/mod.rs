//! PCI plumbing for real cards: find ioMemory cards and NVMe controllers in
//! sysfs, describe them, and bind or release them to `vfio-pci`, one device
//! at a time (what SPDK's `scripts/setup.sh` does, made explicit and safe).
//!
//! Everything takes a [`SysfsRoot`], so tests and dry runs work against a
//! recorded tree instead of the host's `/sys`.
//!
//! - [`address`]: PCI address parsing (`0000:03:00.0`, `03:00.0`).
//! - [`ids`]: which ids are ioMemory cards, their generation and OEM.
//! - [`sysfs`]: discovery, [`PciDevice`].
//! - [`list`]: the `iomem list` text.
//! - [`usage`]: whether a device backs a mounted or held block device.
//! - [`bind`]: bind to / release from `vfio-pci`.

pub mod address;
pub mod bind;
pub mod ids;
pub mod list;
pub mod sysfs;
pub mod usage;

use std::path::{Path, PathBuf};

pub use address::PciAddress;
pub use bind::{
    bind_to_vfio, bind_to_vfio_with, unbind, unbind_restoring, unbind_with, BindOutcome,
    KernelSysfs, SysfsWrite, SysfsWriter, UnbindOutcome,
};
pub use ids::{Generation, IoMemoryModel, Oem, ProtocolSupport, UNSUPPORTED_PROTOCOL_REASON};
pub use list::render_list;
pub use sysfs::{discover, read_device, DeviceKind, PciDevice};

/// Name of the kernel's VFIO PCI driver.
pub const VFIO_PCI_DRIVER: &str = "vfio-pci";

/// Where the sysfs tree and the mount table live.
///
/// The default is the host's (`/sys`, `/proc/self/mounts`); tests point both
/// at a recorded fixture.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SysfsRoot {
    /// Root of the sysfs tree (`/sys`).
    pub sys: PathBuf,
    /// The mount table to check block devices against (`/proc/self/mounts`).
    pub mounts: PathBuf,
}

impl Default for SysfsRoot {
    fn default() -> Self {
        Self {
            sys: PathBuf::from("/sys"),
            mounts: PathBuf::from("/proc/self/mounts"),
        }
    }
}

impl SysfsRoot {
    /// A root at `sys` with the mount table at `mounts`.
    pub fn new(sys: impl Into<PathBuf>, mounts: impl Into<PathBuf>) -> Self {
        Self {
            sys: sys.into(),
            mounts: mounts.into(),
        }
    }

    /// `<sys>/bus/pci/devices`: one entry per PCI function.
    pub fn devices_dir(&self) -> PathBuf {
        self.sys.join("bus/pci/devices")
    }

    /// `<sys>/bus/pci/devices/<addr>`.
    pub fn device_dir(&self, addr: PciAddress) -> PathBuf {
        self.devices_dir().join(addr.to_string())
    }

    /// `<sys>/bus/pci/drivers/<name>`.
    pub fn driver_dir(&self, name: &str) -> PathBuf {
        self.sys.join("bus/pci/drivers").join(name)
    }

    /// `<sys>/bus/pci/drivers_probe`: writing an address here makes the
    /// kernel probe drivers for that device (honouring `driver_override`).
    pub fn drivers_probe(&self) -> PathBuf {
        self.sys.join("bus/pci/drivers_probe")
    }

    /// `<sys>/kernel/iommu_groups/<group>/devices`: the group's members.
    pub fn iommu_group_devices_dir(&self, group: u32) -> PathBuf {
        self.sys
            .join("kernel/iommu_groups")
            .join(group.to_string())
            .join("devices")
    }
}

/// Errors of PCI discovery and driver binding.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PciError {
    /// A PCI address did not parse.
    #[error("invalid PCI address {input:?}: {reason}; expected DDDD:BB:DD.F or BB:DD.F, e.g. 0000:03:00.0")]
    InvalidAddress {
        /// What was given.
        input: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A sysfs or mounts file could not be read.
    #[error("cannot read {path}: {source}; check that the sysfs root is a sysfs tree and that you may read it")]
    Read {
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A sysfs file held something the kernel never writes there.
    #[error("malformed sysfs file {path}: found {found:?}, expected {expected}; is the sysfs root a real or recorded sysfs tree?")]
    Malformed {
        /// The file.
        path: PathBuf,
        /// Its content (or entry name), trimmed.
        found: String,
        /// What the file should hold.
        expected: &'static str,
    },
    /// No such PCI device.
    #[error("no PCI device {address} under {devices_dir}; run `iomem list` (or `lspci -D`) to see the addresses present")]
    DeviceNotFound {
        /// The address asked for.
        address: PciAddress,
        /// Where it was looked for.
        devices_dir: PathBuf,
    },
    /// The `vfio-pci` driver is not loaded.
    #[error("the vfio-pci driver is not loaded ({path} does not exist); run `modprobe vfio-pci` and retry")]
    VfioDriverMissing {
        /// The driver directory that is missing.
        path: PathBuf,
    },
    /// The device has no IOMMU group, so VFIO cannot isolate it.
    #[error("{address} has no IOMMU group, so VFIO cannot isolate it; enable the IOMMU: intel_iommu=on / amd_iommu=on on the kernel command line (and VT-d / AMD-Vi in firmware), then reboot")]
    NoIommuGroup {
        /// The device.
        address: PciAddress,
    },
    /// Another device in the IOMMU group is bound to a host driver.
    #[error("cannot bind {address} to vfio-pci: {peer}, in the same IOMMU group {group}, is bound to {driver}; VFIO needs every device of the group unbound or on vfio-pci/pci-stub: release {peer} from {driver} first, or move the card to a slot with its own IOMMU group")]
    GroupPeerBound {
        /// The device to bind.
        address: PciAddress,
        /// The shared IOMMU group.
        group: u32,
        /// The other device.
        peer: PciAddress,
        /// The driver it is bound to.
        driver: String,
    },
    /// A block device of the device is mounted.
    #[error("refusing to bind {address} to vfio-pci: its block device {block_device} is mounted on {mount_point} ({source_name}); unmount it first")]
    Mounted {
        /// The device to bind.
        address: PciAddress,
        /// The block device (disk or partition) name, e.g. "fioa1".
        block_device: String,
        /// The mount source as the mount table shows it.
        source_name: String,
        /// Where it is mounted.
        mount_point: String,
    },
    /// A block device of the device is held by another block device
    /// (device-mapper, LVM, md RAID).
    #[error("refusing to bind {address} to vfio-pci: its block device {block_device} is in use by {holder} (device-mapper, LVM or md RAID); stop that first")]
    Held {
        /// The device to bind.
        address: PciAddress,
        /// The held block device.
        block_device: String,
        /// The holder, e.g. "dm-0".
        holder: String,
    },
    /// The kernel has no `driver_override` for PCI devices.
    #[error("{path} does not exist: this kernel cannot override PCI drivers (needs Linux 3.16 or later)")]
    DriverOverrideUnsupported {
        /// The missing file.
        path: PathBuf,
    },
    /// A sysfs write failed.
    #[error("cannot write {value:?} to {path}: {source}; binding drivers needs root")]
    Write {
        /// The file.
        path: PathBuf,
        /// What was written.
        value: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The kernel did not bind the device to vfio-pci.
    #[error("{address} is not bound to vfio-pci after probing (driver now: {driver}); check `dmesg` for vfio-pci errors; {rollback}")]
    BindDidNotTake {
        /// The device.
        address: PciAddress,
        /// The driver it ended on, or "none".
        driver: String,
        /// What was done to undo the attempt.
        rollback: &'static str,
    },
    /// Release was asked for a device another driver owns.
    #[error("{address} is bound to {driver}, not vfio-pci; there is nothing to release")]
    NotBoundToVfio {
        /// The device.
        address: PciAddress,
        /// Its driver.
        driver: String,
    },
    /// The previous driver did not take the device back.
    #[error("{address} was released from vfio-pci but {wanted} did not take it back (driver now: {driver}); load it (`modprobe {wanted}`) and write {address} to /sys/bus/pci/drivers/{wanted}/bind")]
    RestoreFailed {
        /// The device.
        address: PciAddress,
        /// The driver that should own it again.
        wanted: String,
        /// The driver it ended on, or "none".
        driver: String,
    },
}

/// `Read` error for `path`.
pub(crate) fn read_error(path: &Path, source: std::io::Error) -> PciError {
    PciError::Read {
        path: path.to_owned(),
        source,
    }
}
