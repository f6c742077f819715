//! An NVMe controller driven from userspace over VFIO: the queue machinery
//! of [`crate::nvme`] pointed at a real BAR0.
//!
//! Opening refuses anything that is not an NVMe controller, and in
//! particular real ioMemory cards, whose command protocol is not
//! implemented: they are identified and described, never sent a command.

use std::sync::Arc;

use super::bar::BarMapping;
use super::device::VfioPciDevice;
use super::preflight::VfioEnv;
use super::VfioError;
use crate::dma::IovaSpace;
use crate::nvme::nvm::identify::identify_controller;
use crate::nvme::nvm::{IdentifyController, Namespace, NvmError};
use crate::nvme::Controller;
use crate::pci::{read_device, DeviceKind, PciAddress, PciDevice, ProtocolSupport};

/// Options of [`NvmeOverVfio::open`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NvmeVfioOptions {
    /// Admin queue entries.
    pub admin_depth: u16,
}

impl Default for NvmeVfioOptions {
    fn default() -> Self {
        Self { admin_depth: 32 }
    }
}

/// An enabled NVMe controller behind VFIO.
///
/// The device stays open while this value, the controller, or any queue
/// pair made from it lives; when the last goes, bus mastering is cleared
/// and the function reset (see [`VfioPciDevice`]).
pub struct NvmeOverVfio {
    device: VfioPciDevice,
    bar0: Arc<BarMapping>,
    space: Arc<IovaSpace>,
    controller: Controller,
    identity: IdentifyController,
}

impl std::fmt::Debug for NvmeOverVfio {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NvmeOverVfio")
            .field("device", &self.device)
            .field("model", &self.identity.model)
            .field("serial", &self.identity.serial)
            .finish()
    }
}

/// Refuses devices this transport must not drive: ioMemory cards (their
/// protocol is unknown) and anything that is not an NVMe controller.
pub fn check_drivable(device: &PciDevice) -> Result<(), VfioError> {
    match &device.kind {
        DeviceKind::IoMemory(model) => {
            let reason = match model.protocol_support() {
                ProtocolSupport::IdentifyOnly { reason } => reason,
                _ => crate::pci::UNSUPPORTED_PROTOCOL_REASON,
            };
            Err(VfioError::UnsupportedCard {
                address: device.address,
                model: model.name(),
                reason,
            })
        }
        DeviceKind::Nvme => Ok(()),
        DeviceKind::Other => Err(VfioError::NotNvme {
            address: device.address,
            class: device.class,
        }),
    }
}

impl NvmeOverVfio {
    /// Opens the NVMe controller at `address`: VFIO device (reset, bus
    /// master), BAR0 mapped, controller reset and enabled with its admin
    /// queue in IOMMU-mapped memory, then Identify Controller.
    pub fn open(address: PciAddress, options: NvmeVfioOptions) -> Result<Self, VfioError> {
        check_drivable(&read_device(&VfioEnv::default().sysfs, address)?)?;
        let device = VfioPciDevice::open(address)?;
        let bar0 = device.map_bar(0)?;
        let space = device.dma_space();
        let nvme_err = |source| VfioError::Nvme { address, source };
        let controller = Controller::enable(bar0.mmio(), Arc::clone(&space), options.admin_depth)
            .map_err(nvme_err)?;
        let identity = identify_controller(&controller).map_err(|e| match e {
            NvmError::Nvme(source) => VfioError::Nvme { address, source },
            source => VfioError::Command { address, source },
        })?;
        Ok(Self {
            device,
            bar0,
            space,
            controller,
            identity,
        })
    }

    /// The enabled controller (admin commands, I/O queue creation).
    pub fn controller(&self) -> &Controller {
        &self.controller
    }

    /// Identify Controller data read at open.
    pub fn identity(&self) -> &IdentifyController {
        &self.identity
    }

    /// The VFIO device.
    pub fn device(&self) -> &VfioPciDevice {
        &self.device
    }

    /// The mapped BAR0.
    pub fn bar0(&self) -> &Arc<BarMapping> {
        &self.bar0
    }

    /// The DMA space whose memory the controller can reach (IOMMU-mapped).
    /// Allocate I/O buffers here.
    pub fn dma_space(&self) -> &Arc<IovaSpace> {
        &self.space
    }

    /// Identifies namespace `nsid`.
    pub fn namespace(&self, nsid: u32) -> Result<Namespace, NvmError> {
        Namespace::probe(&self.controller, &self.identity, nsid)
    }

    /// Active namespace ids.
    pub fn namespaces(&self) -> Result<Vec<u32>, NvmError> {
        crate::nvme::nvm::identify::active_namespaces(&self.controller)
    }

    /// Orderly shutdown (CC.SHN): the controller finishes and persists what
    /// it accepted. Drop every I/O queue pair first.
    pub fn shutdown(&self) -> Result<(), VfioError> {
        self.controller
            .shutdown()
            .map_err(|source| VfioError::Nvme {
                address: self.device.address(),
                source,
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pci::{IoMemoryModel, SysfsRoot};

    fn device(vendor: u16, device: u16, class: u32) -> PciDevice {
        PciDevice {
            address: "0000:03:00.0".parse().unwrap(),
            vendor,
            device,
            subsystem_vendor: 0x103c,
            subsystem_device: 0x176f,
            class,
            driver: Some("vfio-pci".into()),
            driver_override: None,
            iommu_group: Some(3),
            numa_node: None,
            kind: match IoMemoryModel::identify(vendor, device, 0x103c) {
                Some(m) => DeviceKind::IoMemory(m),
                None if class == 0x010802 => DeviceKind::Nvme,
                None => DeviceKind::Other,
            },
        }
    }

    #[test]
    fn iomemory_cards_are_refused_with_the_protocol_reason() {
        let err = check_drivable(&device(0x1aed, 0x2001, 0x018000)).unwrap_err();
        let text = err.to_string();
        assert!(matches!(err, VfioError::UnsupportedCard { .. }), "{text}");
        assert!(text.contains("HP IO Accelerator (ioDrive2)"), "{text}");
        assert!(text.contains("command protocol not supported"), "{text}");
    }

    #[test]
    fn only_nvme_controllers_are_driven() {
        check_drivable(&device(0x1b36, 0x0010, 0x010802)).unwrap();
        let err = check_drivable(&device(0x8086, 0x1521, 0x020000)).unwrap_err();
        assert!(
            err.to_string()
                .contains("not an NVMe controller (class 020000)"),
            "{err}"
        );
    }

    #[test]
    fn opening_without_vfio_fails_before_any_ioctl() {
        // The recorded fixture's ioDrive2 is on iomemory-vsl: opening must
        // stop at the identity check, naming the protocol.
        let root = SysfsRoot::new(
            concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/sysfs/sys"),
            "/nonexistent",
        );
        let dev = read_device(&root, "0000:03:00.0".parse().unwrap()).unwrap();
        let err = check_drivable(&dev).unwrap_err();
        assert!(
            err.to_string().contains("command protocol not supported"),
            "{err}"
        );
        // An address no host has: a clear not-found error.
        let err = NvmeOverVfio::open("7ffe:1f:1f.7".parse().unwrap(), NvmeVfioOptions::default())
            .unwrap_err();
        assert!(
            err.to_string().contains("no PCI device 7ffe:1f:1f.7"),
            "{err}"
        );
    }
}
