//! VFIO: a PCI function's registers, config space and DMA, from userspace.
//!
//! The kernel's `vfio-pci` driver hands a device to one process: its BARs
//! are mapped into our address space, config space is read and written
//! through the device file, and DMA reaches only what we map into the
//! IOMMU. Built on the rust-vmm `vfio-ioctls` crate (legacy container/group
//! interface, type1v2 IOMMU).
//!
//! - [`preflight`]: the checks made before any ioctl, so every refusal
//!   names its cause and its fix (no IOMMU, not bound to vfio-pci, group
//!   shared with a device in use, ...).
//! - [`config`]: PCI config-space layout (command register, BARs).
//! - [`container`]: the IOMMU container, which is also the
//!   [`IommuMap`](crate::dma::IommuMap) that DMA memory registers through.
//! - [`device`]: an opened device: reset, config access, bus mastering,
//!   region info, BAR mapping.
//! - [`bar`]: a mapped BAR as an [`nvme::Mmio`](crate::nvme::Mmio).
//! - [`nvme`]: an NVMe controller brought up over VFIO.
//!
//! IOVA = virtual address throughout (SPDK's `iova=va`), so a buffer's
//! device address is its pointer.

pub mod bar;
pub mod config;
pub mod container;
pub mod device;
pub mod nvme;
pub mod preflight;

use std::path::PathBuf;

pub use bar::{render_bars, sysfs_bars, BarInfo, BarMapping};
pub use config::BarType;
pub use container::IommuContainer;
pub use device::{RegionInfo, VfioPciDevice};
pub use nvme::{NvmeOverVfio, NvmeVfioOptions};
pub use preflight::{preflight, Preflight, VfioEnv};

use crate::pci::{PciAddress, PciError};

/// Errors of opening and driving a device through VFIO.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum VfioError {
    /// Reading the device's description from sysfs failed.
    #[error(transparent)]
    Pci(#[from] PciError),
    /// The device has no IOMMU group: the IOMMU is off.
    #[error("{address} has no IOMMU group, so VFIO cannot reach it; enable the IOMMU (intel_iommu=on or amd_iommu=on on the kernel command line, VT-d/AMD-Vi in firmware) and reboot")]
    NoIommu {
        /// The device.
        address: PciAddress,
    },
    /// The device is not bound to `vfio-pci`.
    #[error("{address} is {}, not vfio-pci; run `iomem bind {address}` first", match driver { Some(d) => format!("bound to {d}"), None => "not bound to any driver".to_owned() })]
    NotBoundToVfio {
        /// The device.
        address: PciAddress,
        /// The driver it is bound to, if any.
        driver: Option<String>,
    },
    /// `/dev/vfio/vfio` is missing.
    #[error("{} does not exist: the vfio modules are not loaded; run `modprobe vfio-pci` (and boot with the IOMMU on)", path.display())]
    NoVfio {
        /// The container node looked for.
        path: PathBuf,
    },
    /// `/dev/vfio/<group>` is missing although the device is on vfio-pci.
    #[error("{} does not exist although {address} is bound to vfio-pci; is /dev populated (devtmpfs/udev)? Re-run `iomem bind {address}`", path.display())]
    GroupNodeMissing {
        /// The device.
        address: PciAddress,
        /// The group node.
        path: PathBuf,
    },
    /// The caller may not open a VFIO node.
    #[error("permission denied opening {}: run as root, or give your user the group node (chown/udev rule) and raise `ulimit -l` for DMA memory", path.display())]
    Permission {
        /// The node.
        path: PathBuf,
    },
    /// Another device of the IOMMU group is bound to a host driver.
    #[error("IOMMU group {group} of {address} is not viable: {peer} in the same group is bound to {driver}; release it (`iomem bind {peer}` or unbind it) or move the card to a slot with its own group")]
    GroupNotViable {
        /// The device.
        address: PciAddress,
        /// The group.
        group: u32,
        /// The peer in use.
        peer: PciAddress,
        /// Its driver.
        driver: String,
    },
    /// The kernel reports the group not viable and no peer explains it.
    #[error("IOMMU group {group} of {address} is not viable (the kernel refuses it); check `ls /sys/kernel/iommu_groups/{group}/devices` and bind every member to vfio-pci")]
    GroupNotViableUnexplained {
        /// The device.
        address: PciAddress,
        /// The group.
        group: u32,
    },
    /// The group or device is held by another process.
    #[error("{address} is busy: another process (QEMU, SPDK, another iomem) has its VFIO group or device open; stop it first")]
    DeviceBusy {
        /// The device.
        address: PciAddress,
    },
    /// The container lacks the type1v2 IOMMU.
    #[error("the VFIO container does not support the type1v2 IOMMU: this kernel has no usable IOMMU driver for VFIO (enable intel_iommu/amd_iommu, load vfio_iommu_type1)")]
    UnsupportedIommu,
    /// A VFIO operation failed for a reason not listed above.
    #[error("VFIO {what} failed for {address}: {source}")]
    Vfio {
        /// The device.
        address: PciAddress,
        /// What was being done.
        what: &'static str,
        /// The crate's error.
        #[source]
        source: vfio_ioctls::VfioError,
    },
    /// An ioctl or pread/pwrite on the device file failed.
    #[error("{what} on {address} failed: {source}")]
    Io {
        /// The device.
        address: PciAddress,
        /// What was being done.
        what: &'static str,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A region index the device does not have or cannot be used that way.
    #[error("{address}: region {index} {reason}")]
    Region {
        /// The device.
        address: PciAddress,
        /// The VFIO region index (0-5 BARs, 6 ROM, 7 config).
        index: u32,
        /// What is wrong.
        reason: &'static str,
    },
    /// A config-space access outside the 4 KiB config space.
    #[error("config-space access of {len} bytes at {offset:#x} is outside the device's {size}-byte config space")]
    ConfigRange {
        /// Offset asked for.
        offset: u64,
        /// Length asked for.
        len: usize,
        /// Config space size.
        size: u64,
    },
    /// The device is not an NVMe controller.
    #[error("{address} is not an NVMe controller (class {class:06x}); `iomem list` shows the controllers")]
    NotNvme {
        /// The device.
        address: PciAddress,
        /// Its class code.
        class: u32,
    },
    /// A real ioMemory card: identified, but its protocol is unknown.
    #[error("{address} is a {model}: {reason}")]
    UnsupportedCard {
        /// The device.
        address: PciAddress,
        /// Its model name.
        model: String,
        /// Why nothing is attempted.
        reason: &'static str,
    },
    /// An NVM command (identify) failed.
    #[error("{address}: {source}")]
    Command {
        /// The device.
        address: PciAddress,
        /// The command error.
        #[source]
        source: crate::nvme::nvm::NvmError,
    },
    /// Controller bring-up or an admin command failed.
    #[error("{address}: {source}")]
    Nvme {
        /// The device.
        address: PciAddress,
        /// The controller error.
        #[source]
        source: crate::nvme::NvmeError,
    },
}

impl VfioError {
    /// Wraps an error of `vfio-ioctls`, turning the causes a user can fix
    /// into their own variants.
    pub(crate) fn from_crate(
        address: PciAddress,
        group: u32,
        what: &'static str,
        source: vfio_ioctls::VfioError,
    ) -> Self {
        use vfio_ioctls::VfioError as E;
        let io_kind = |e: &std::io::Error| (e.kind(), e.raw_os_error());
        match &source {
            E::OpenContainer(e) => match io_kind(e) {
                (std::io::ErrorKind::NotFound, _) => Self::NoVfio {
                    path: PathBuf::from("/dev/vfio/vfio"),
                },
                (std::io::ErrorKind::PermissionDenied, _) => Self::Permission {
                    path: PathBuf::from("/dev/vfio/vfio"),
                },
                _ => Self::Vfio {
                    address,
                    what,
                    source,
                },
            },
            E::OpenGroup(e, _) => {
                let path = PathBuf::from(format!("/dev/vfio/{group}"));
                match io_kind(e) {
                    (std::io::ErrorKind::NotFound, _) => Self::GroupNodeMissing { address, path },
                    (std::io::ErrorKind::PermissionDenied, _) => Self::Permission { path },
                    (_, Some(libc::EBUSY)) => Self::DeviceBusy { address },
                    _ => Self::Vfio {
                        address,
                        what,
                        source,
                    },
                }
            }
            E::GroupViable => Self::GroupNotViableUnexplained { address, group },
            E::VfioExtension | E::VfioInvalidType | E::ContainerSetIOMMU(_) => {
                Self::UnsupportedIommu
            }
            E::GroupGetDeviceFD(e) if e.errno() == libc::EBUSY => Self::DeviceBusy { address },
            _ => Self::Vfio {
                address,
                what,
                source,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr() -> PciAddress {
        "0000:00:03.0".parse().unwrap()
    }

    #[test]
    fn crate_errors_become_actionable_variants() {
        let nf = || std::io::Error::from(std::io::ErrorKind::NotFound);
        let e = VfioError::from_crate(
            addr(),
            5,
            "open",
            vfio_ioctls::VfioError::OpenContainer(nf()),
        );
        assert!(matches!(e, VfioError::NoVfio { .. }), "{e}");
        assert!(e.to_string().contains("modprobe vfio-pci"), "{e}");

        let denied = std::io::Error::from(std::io::ErrorKind::PermissionDenied);
        let e = VfioError::from_crate(
            addr(),
            5,
            "open",
            vfio_ioctls::VfioError::OpenGroup(denied, "5".into()),
        );
        assert!(e.to_string().contains("/dev/vfio/5"), "{e}");
        assert!(e.to_string().contains("run as root"), "{e}");

        let busy = std::io::Error::from_raw_os_error(libc::EBUSY);
        let e = VfioError::from_crate(
            addr(),
            5,
            "open",
            vfio_ioctls::VfioError::OpenGroup(busy, "5".into()),
        );
        assert!(matches!(e, VfioError::DeviceBusy { .. }), "{e}");
        assert!(e.to_string().contains("another process"), "{e}");

        let e = VfioError::from_crate(addr(), 5, "open", vfio_ioctls::VfioError::GroupViable);
        assert!(
            e.to_string().contains("/sys/kernel/iommu_groups/5/devices"),
            "{e}"
        );

        let e = VfioError::from_crate(addr(), 5, "open", vfio_ioctls::VfioError::VfioExtension);
        assert!(matches!(e, VfioError::UnsupportedIommu), "{e}");
    }

    #[test]
    fn not_bound_names_the_bind_command() {
        let e = VfioError::NotBoundToVfio {
            address: addr(),
            driver: Some("nvme".into()),
        };
        assert_eq!(
            e.to_string(),
            "0000:00:03.0 is bound to nvme, not vfio-pci; run `iomem bind 0000:00:03.0` first"
        );
        let e = VfioError::NotBoundToVfio {
            address: addr(),
            driver: None,
        };
        assert!(e.to_string().contains("not bound to any driver"), "{e}");
    }
}
