//! An opened VFIO PCI device: reset, config space, bus mastering, regions.
//!
//! Opening resets the function (FLR or whatever reset `vfio-pci` has for
//! it) so no DMA or state from a previous owner survives, then enables
//! memory decoding and bus mastering. Closing (dropping the last handle,
//! including every BAR mapping and queue) clears bus mastering and resets
//! the function again before the group leaves the container.

use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::Arc;

use vfio_bindings::bindings::vfio::{
    VFIO_BASE, VFIO_PCI_CONFIG_REGION_INDEX, VFIO_REGION_INFO_FLAG_MMAP,
    VFIO_REGION_INFO_FLAG_READ, VFIO_REGION_INFO_FLAG_WRITE, VFIO_TYPE,
};
use vfio_ioctls::{VfioContainer, VfioDevice, VfioOps};

use super::bar::{BarInfo, BarMapping};
use super::config::{self, decode_bar, BarType};
use super::container::IommuContainer;
use super::preflight::{preflight, VfioEnv};
use super::VfioError;
use crate::dma::IovaSpace;
use crate::pci::{PciAddress, PciDevice};

/// `VFIO_DEVICE_RESET` = `_IO(VFIO_TYPE, VFIO_BASE + 11)` (linux/vfio.h).
const VFIO_DEVICE_RESET: libc::c_ulong =
    ((VFIO_TYPE as libc::c_ulong) << 8) | (VFIO_BASE as libc::c_ulong + 11);

/// Number of BAR regions of a PCI device (VFIO region indices 0..=5).
pub const BAR_COUNT: u32 = 6;

/// A VFIO region as the kernel reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct RegionInfo {
    /// VFIO region index: 0-5 BARs, 6 expansion ROM, 7 config space.
    pub index: u32,
    /// Size in bytes (0: the region is not implemented).
    pub size: u64,
    /// Offset of the region in the device file.
    pub offset: u64,
    /// Readable through the device file.
    pub readable: bool,
    /// Writable through the device file.
    pub writable: bool,
    /// Can be mmapped.
    pub mmap: bool,
}

/// Shared state of an opened device; BAR mappings keep it alive.
pub(crate) struct DeviceInner {
    address: PciAddress,
    info: PciDevice,
    group: u32,
    iommu: Arc<IommuContainer>,
    config: RegionInfo,
    reset_supported: bool,
    /// Declared last: dropped after `Drop::drop` quiesced the device.
    device: VfioDevice,
}

impl DeviceInner {
    pub(crate) fn address(&self) -> PciAddress {
        self.address
    }

    pub(crate) fn raw_fd(&self) -> libc::c_int {
        self.device.as_raw_fd()
    }

    pub(crate) fn region(&self, index: u32) -> RegionInfo {
        let flags = self.device.get_region_flags(index);
        RegionInfo {
            index,
            size: self.device.get_region_size(index),
            offset: self.device.get_region_offset(index),
            readable: flags & VFIO_REGION_INFO_FLAG_READ != 0,
            writable: flags & VFIO_REGION_INFO_FLAG_WRITE != 0,
            mmap: flags & VFIO_REGION_INFO_FLAG_MMAP != 0,
        }
    }

    pub(crate) fn sparse_areas(&self, index: u32) -> Vec<(u64, u64)> {
        self.device
            .get_region_caps(index)
            .into_iter()
            .filter_map(|cap| match cap {
                vfio_ioctls::VfioRegionInfoCap::SparseMmap(s) => Some(s.areas),
                _ => None,
            })
            .flatten()
            .map(|a| (a.offset, a.size))
            .collect()
    }

    fn check_config(&self, offset: u64, len: usize) -> Result<u64, VfioError> {
        match offset.checked_add(len as u64) {
            Some(end) if end <= self.config.size => Ok(self.config.offset + offset),
            _ => Err(VfioError::ConfigRange {
                offset,
                len,
                size: self.config.size,
            }),
        }
    }

    fn config_read(&self, offset: u64, buf: &mut [u8]) -> Result<(), VfioError> {
        let pos = self.check_config(offset, buf.len())?;
        let io = |source| VfioError::Io {
            address: self.address,
            what: "config-space read",
            source,
        };
        std::os::unix::fs::FileExt::read_exact_at(&*fd_file(self.raw_fd()), buf, pos).map_err(io)
    }

    fn config_write(&self, offset: u64, data: &[u8]) -> Result<(), VfioError> {
        let pos = self.check_config(offset, data.len())?;
        let io = |source| VfioError::Io {
            address: self.address,
            what: "config-space write",
            source,
        };
        std::os::unix::fs::FileExt::write_all_at(&*fd_file(self.raw_fd()), data, pos).map_err(io)
    }

    fn read_u16(&self, offset: u64) -> Result<u16, VfioError> {
        let mut b = [0u8; 2];
        self.config_read(offset, &mut b)?;
        Ok(u16::from_le_bytes(b))
    }

    fn update_command(&self, set: u16, clear: u16) -> Result<u16, VfioError> {
        let cmd = (self.read_u16(config::COMMAND)? | set) & !clear;
        self.config_write(config::COMMAND, &cmd.to_le_bytes())?;
        Ok(cmd)
    }

    /// `Ok(true)` after a reset, `Ok(false)` when vfio-pci has no reset
    /// method for this function.
    fn reset(&self) -> Result<bool, VfioError> {
        // SAFETY: VFIO_DEVICE_RESET takes no argument; the fd is this
        // device's open VFIO device file, owned by `self.device`.
        let rc = unsafe { libc::ioctl(self.raw_fd(), VFIO_DEVICE_RESET as _) };
        if rc == 0 {
            return Ok(true);
        }
        let err = std::io::Error::last_os_error();
        match err.raw_os_error() {
            Some(libc::EINVAL) | Some(libc::ENOTTY) => Ok(false),
            _ => Err(VfioError::Io {
                address: self.address,
                what: "device reset (VFIO_DEVICE_RESET)",
                source: err,
            }),
        }
    }
}

/// A non-owning `File` view of a descriptor, for positioned I/O.
fn fd_file(fd: libc::c_int) -> std::mem::ManuallyDrop<std::fs::File> {
    use std::os::fd::FromRawFd;
    // SAFETY: `fd` is the open device file owned by `DeviceInner`, which
    // outlives this temporary; ManuallyDrop keeps the view from closing it.
    std::mem::ManuallyDrop::new(unsafe { std::fs::File::from_raw_fd(fd) })
}

impl Drop for DeviceInner {
    fn drop(&mut self) {
        // Stop DMA, then reset so the next owner starts clean. Failures can
        // only be reported: the group is released either way.
        if let Err(e) = self.update_command(0, config::COMMAND_BUS_MASTER) {
            eprintln!("iomemory: closing {}: {e}", self.address);
        }
        if self.reset_supported {
            if let Err(e) = self.reset() {
                eprintln!("iomemory: closing {}: {e}", self.address);
            }
        }
        // The group leaves the container when `device` drops below; the
        // kernel then tears the IOMMU domain down with every mapping.
        self.iommu.detach();
    }
}

/// An opened VFIO PCI device. Cheap to clone; the device closes when the
/// last handle (and the last BAR mapping made from it) is dropped.
#[derive(Clone)]
pub struct VfioPciDevice {
    inner: Arc<DeviceInner>,
}

impl std::fmt::Debug for VfioPciDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VfioPciDevice")
            .field("address", &self.inner.address)
            .field("group", &self.inner.group)
            .field("reset_supported", &self.inner.reset_supported)
            .finish()
    }
}

impl VfioPciDevice {
    /// Opens the device at `address` on this host: checks (see
    /// [`preflight`]), container with the type1v2 IOMMU, group, device;
    /// resets it and enables memory decoding and bus mastering.
    pub fn open(address: PciAddress) -> Result<Self, VfioError> {
        Self::open_with(address, true)
    }

    /// Opens the device for inspection only: reset and memory decoding,
    /// but bus mastering stays off, so the device cannot DMA. For devices
    /// whose protocol is not driven (real ioMemory cards).
    pub fn open_inspect(address: PciAddress) -> Result<Self, VfioError> {
        Self::open_with(address, false)
    }

    fn open_with(address: PciAddress, bus_master: bool) -> Result<Self, VfioError> {
        let env = VfioEnv::default();
        let pre = preflight(&env, address)?;
        let group = pre.group;
        let container = VfioContainer::new(None)
            .map_err(|e| VfioError::from_crate(address, group, "opening the container", e))?;
        let container = Arc::new(container);
        let iommu = Arc::new(IommuContainer::new(Arc::clone(&container)));
        let ops: Arc<dyn VfioOps> = container;
        let sysfs_path = env.sysfs.device_dir(address);
        let device = VfioDevice::new(Path::new(&sysfs_path), ops, false)
            .map_err(|e| VfioError::from_crate(address, group, "opening the device", e))?;
        let config_index = VFIO_PCI_CONFIG_REGION_INDEX;
        let mut inner = DeviceInner {
            address,
            info: pre.device,
            group,
            iommu,
            config: RegionInfo {
                index: config_index,
                size: 0,
                offset: 0,
                readable: false,
                writable: false,
                mmap: false,
            },
            reset_supported: false,
            device,
        };
        inner.config = inner.region(config_index);
        if inner.config.size == 0 || !inner.config.readable {
            return Err(VfioError::Region {
                address,
                index: config_index,
                reason: "(config space) is not readable through VFIO",
            });
        }
        inner.reset_supported = inner.reset()?;
        if bus_master {
            inner.update_command(config::COMMAND_MEMORY | config::COMMAND_BUS_MASTER, 0)?;
        } else {
            inner.update_command(config::COMMAND_MEMORY, config::COMMAND_BUS_MASTER)?;
        }
        Ok(Self {
            inner: Arc::new(inner),
        })
    }

    /// The device's address.
    pub fn address(&self) -> PciAddress {
        self.inner.address
    }

    /// The device as sysfs described it at open time.
    pub fn pci(&self) -> &PciDevice {
        &self.inner.info
    }

    /// Its IOMMU group.
    pub fn iommu_group(&self) -> u32 {
        self.inner.group
    }

    /// Whether vfio-pci can reset this function (FLR, PM or bus reset).
    pub fn reset_supported(&self) -> bool {
        self.inner.reset_supported
    }

    /// Resets the function. `Ok(false)` if it has no reset method. Memory
    /// decoding and bus mastering are restored to what they were.
    pub fn reset(&self) -> Result<bool, VfioError> {
        let before = self.inner.read_u16(config::COMMAND)?;
        let done = self.inner.reset()?;
        let keep = config::COMMAND_MEMORY | config::COMMAND_BUS_MASTER;
        self.inner.update_command(before & keep, !before & keep)?;
        Ok(done)
    }

    /// The VFIO region `index` (0-5 BARs, 6 ROM, 7 config space).
    pub fn region(&self, index: u32) -> RegionInfo {
        self.inner.region(index)
    }

    /// Reads `buf.len()` bytes of config space at `offset`.
    pub fn config_read(&self, offset: u64, buf: &mut [u8]) -> Result<(), VfioError> {
        self.inner.config_read(offset, buf)
    }

    /// Writes `data` to config space at `offset`.
    pub fn config_write(&self, offset: u64, data: &[u8]) -> Result<(), VfioError> {
        self.inner.config_write(offset, data)
    }

    /// Reads a 16-bit config register.
    pub fn config_read_u16(&self, offset: u64) -> Result<u16, VfioError> {
        self.inner.read_u16(offset)
    }

    /// Reads a 32-bit config register.
    pub fn config_read_u32(&self, offset: u64) -> Result<u32, VfioError> {
        let mut b = [0u8; 4];
        self.inner.config_read(offset, &mut b)?;
        Ok(u32::from_le_bytes(b))
    }

    /// Sets or clears the bus-master bit (whether the device may DMA).
    pub fn set_bus_master(&self, enabled: bool) -> Result<(), VfioError> {
        let bit = config::COMMAND_BUS_MASTER;
        let (set, clear) = if enabled { (bit, 0) } else { (0, bit) };
        self.inner.update_command(set, clear).map(|_| ())
    }

    /// Whether the bus-master bit is set.
    pub fn bus_master(&self) -> Result<bool, VfioError> {
        Ok(self.inner.read_u16(config::COMMAND)? & config::COMMAND_BUS_MASTER != 0)
    }

    /// The implemented BARs: type from config space, size from VFIO.
    pub fn bars(&self) -> Result<Vec<BarInfo>, VfioError> {
        let mut bars = Vec::new();
        let mut index = 0;
        while index < BAR_COUNT {
            let region = self.region(index);
            let low = self.config_read_u32(config::BAR0 + 4 * index as u64)?;
            let kind = decode_bar(low);
            let step = if matches!(kind, Some(BarType::Memory64 { .. })) {
                2
            } else {
                1
            };
            if region.size > 0 {
                let mut start = u64::from(low & if low & 1 == 1 { !0x3 } else { !0xf });
                if step == 2 && index + 1 < BAR_COUNT {
                    let high = self.config_read_u32(config::BAR0 + 4 * (index as u64 + 1))?;
                    start |= u64::from(high) << 32;
                }
                bars.push(BarInfo {
                    index,
                    kind,
                    start,
                    size: region.size,
                    mmap: region.mmap,
                });
            }
            index += step;
        }
        Ok(bars)
    }

    /// Maps BAR `index` for MMIO (see [`BarMapping`]).
    pub fn map_bar(&self, index: u32) -> Result<Arc<BarMapping>, VfioError> {
        BarMapping::map(Arc::clone(&self.inner), index).map(Arc::new)
    }

    /// The IOMMU container of this device.
    pub fn iommu(&self) -> &Arc<IommuContainer> {
        &self.inner.iommu
    }

    /// A new DMA space whose regions are mapped into this device's IOMMU
    /// domain (IOVA = virtual address). Queue and buffer memory for the
    /// device must come from such a space; anything else is unreachable.
    pub fn dma_space(&self) -> Arc<IovaSpace> {
        let iommu: Arc<dyn crate::dma::IommuMap> = self.inner.iommu.clone();
        Arc::new(IovaSpace::with_iommu(iommu))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reset_ioctl_number_matches_linux_vfio_h() {
        // _IO(';', 100 + 11)
        assert_eq!(VFIO_DEVICE_RESET, 0x3b6f);
    }

    #[test]
    fn opening_an_absent_device_names_it() {
        // Address 00:1f.7 on a high domain exists on no machine we run on.
        let address: PciAddress = "7ffe:1f:1f.7".parse().unwrap();
        let err = VfioPciDevice::open(address).unwrap_err();
        assert!(
            err.to_string().contains("no PCI device 7ffe:1f:1f.7"),
            "{err}"
        );
    }

    #[test]
    fn opening_a_host_device_without_vfio_gives_a_clear_error() {
        // Whatever the first PCI function of this machine is, opening it
        // here must fail with a refusal that names its fix, never panic or
        // report a bare errno.
        let Some(address) = std::fs::read_dir("/sys/bus/pci/devices")
            .ok()
            .and_then(|mut d| d.next())
            .and_then(|e| e.ok())
            .and_then(|e| {
                e.file_name()
                    .to_str()
                    .and_then(|n| n.parse::<PciAddress>().ok())
            })
        else {
            return;
        };
        if Path::new("/dev/vfio/vfio").exists() {
            return; // a VFIO host: the guest test covers it
        }
        let err = VfioPciDevice::open(address).unwrap_err();
        let text = err.to_string();
        assert!(
            matches!(
                err,
                VfioError::NoIommu { .. }
                    | VfioError::NotBoundToVfio { .. }
                    | VfioError::NoVfio { .. }
            ),
            "{text}"
        );
        assert!(
            text.contains("intel_iommu=on")
                || text.contains("iomem bind")
                || text.contains("modprobe"),
            "{text}"
        );
    }
}
