//! Known PCI ids: which functions are ioMemory cards, which generation they
//! belong to, who sold them, and whether our command protocol drives them.

use serde::ser::SerializeStruct;
use serde::{Serialize, Serializer};

/// PCI vendor id of Fusion-io (now SanDisk/Western Digital).
pub const FUSION_IO_VENDOR: u16 = 0x1aed;
/// Vendor id carried by pre-production ioDrive boards.
pub const PREPRODUCTION_VENDOR: u16 = 0xfafa;
/// Device id of the pre-production ioDrive.
pub const PREPRODUCTION_DEVICE: u16 = 0xe003;
/// PCI class code of an NVMe controller (mass storage, non-volatile memory,
/// NVM Express programming interface).
pub const NVME_CLASS: u32 = 0x01_08_02;

/// Subsystem vendor id of HP.
pub const HP_SUBSYSTEM_VENDOR: u16 = 0x103c;
/// Subsystem vendor id of Dell.
pub const DELL_SUBSYSTEM_VENDOR: u16 = 0x1028;
/// Subsystem vendor id of IBM.
pub const IBM_SUBSYSTEM_VENDOR: u16 = 0x1014;

/// Why no real card is driven: the text reports and errors carry.
pub const UNSUPPORTED_PROTOCOL_REASON: &str =
    "command protocol not supported: the ioDrive's command set is undocumented; identify and BAR mapping only";

/// Hardware generation of an ioMemory card, from its PCI device id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Generation {
    /// Pre-production ioDrive (vendor 0xfafa, device 0xe003).
    PreProduction,
    /// First generation: ioDrive, ioDrive Duo, ioXtreme family
    /// (1aed:1000, 1aed:1001, 1aed:1003..=1aed:1008).
    Gen1,
    /// ioDrive2 (1aed:2001).
    #[serde(rename = "iodrive2")]
    IoDrive2,
    /// ioScale / ioDrive3-class cards (1aed:3000 and later).
    Later,
    /// A Fusion-io vendor id with a device id this table does not know. Still
    /// reported, so no card is ever hidden.
    Unrecognised,
}

impl Generation {
    /// Human-readable generation name.
    pub fn name(self) -> &'static str {
        match self {
            Self::PreProduction => "ioDrive (pre-production)",
            Self::Gen1 => "ioDrive (VSL gen 1)",
            Self::IoDrive2 => "ioDrive2",
            Self::Later => "ioScale/ioDrive3-class (later generation)",
            Self::Unrecognised => "unrecognised Fusion-io device",
        }
    }
}

/// The OEM that rebadged a card, from its PCI subsystem vendor id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Oem {
    /// HP "IO Accelerator" (subsystem vendor 0x103c).
    Hp,
    /// Dell "ioDrive" (subsystem vendor 0x1028).
    Dell,
    /// IBM "High IOPS" adapter (subsystem vendor 0x1014).
    Ibm,
}

impl Oem {
    /// The OEM's product-line name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Hp => "HP IO Accelerator",
            Self::Dell => "Dell ioDrive",
            Self::Ibm => "IBM High IOPS",
        }
    }

    /// The OEM for a subsystem vendor id, if it is one we know.
    pub fn from_subsystem_vendor(subsystem_vendor: u16) -> Option<Self> {
        match subsystem_vendor {
            HP_SUBSYSTEM_VENDOR => Some(Self::Hp),
            DELL_SUBSYSTEM_VENDOR => Some(Self::Dell),
            IBM_SUBSYSTEM_VENDOR => Some(Self::Ibm),
            _ => None,
        }
    }
}

/// Whether this stack's card command protocol can drive a model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProtocolSupport {
    /// The card speaks the protocol `card` defines; it can be attached.
    Supported,
    /// The card can be identified and its BARs mapped, nothing more.
    IdentifyOnly {
        /// Why the protocol does not apply.
        reason: &'static str,
    },
}

/// What an ioMemory PCI function is: its device id, generation and OEM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct IoMemoryModel {
    /// PCI device id.
    pub device_id: u16,
    /// Hardware generation.
    pub generation: Generation,
    /// OEM that sold it, if rebadged.
    pub oem: Option<Oem>,
}

impl IoMemoryModel {
    /// Recognises an ioMemory card from its ids; `None` for anything else.
    pub fn identify(vendor: u16, device: u16, subsystem_vendor: u16) -> Option<Self> {
        let generation = match (vendor, device) {
            (PREPRODUCTION_VENDOR, PREPRODUCTION_DEVICE) => Generation::PreProduction,
            (FUSION_IO_VENDOR, 0x1000 | 0x1001 | 0x1003..=0x1008) => Generation::Gen1,
            (FUSION_IO_VENDOR, 0x2001) => Generation::IoDrive2,
            (FUSION_IO_VENDOR, 0x3000..) => Generation::Later,
            (FUSION_IO_VENDOR, _) => Generation::Unrecognised,
            _ => return None,
        };
        Some(Self {
            device_id: device,
            generation,
            oem: Oem::from_subsystem_vendor(subsystem_vendor),
        })
    }

    /// Display name: the generation, prefixed by the OEM product line for
    /// rebadged cards, e.g. "HP IO Accelerator (ioDrive2)".
    pub fn name(&self) -> String {
        match self.oem {
            Some(oem) => format!("{} ({})", oem.name(), self.generation.name()),
            None => self.generation.name().to_owned(),
        }
    }

    /// Whether our command protocol drives this model. No real ioMemory card
    /// does: its command set lives in the vendor's closed driver core.
    pub fn protocol_support(&self) -> ProtocolSupport {
        ProtocolSupport::IdentifyOnly {
            reason: UNSUPPORTED_PROTOCOL_REASON,
        }
    }
}

impl Serialize for IoMemoryModel {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut s = serializer.serialize_struct("IoMemoryModel", 5)?;
        s.serialize_field("name", &self.name())?;
        s.serialize_field("generation", &self.generation)?;
        s.serialize_field("oem", &self.oem)?;
        let (supported, note) = match self.protocol_support() {
            ProtocolSupport::Supported => (true, None),
            ProtocolSupport::IdentifyOnly { reason } => (false, Some(reason)),
        };
        s.serialize_field("protocol_supported", &supported)?;
        s.serialize_field("protocol_note", &note)?;
        s.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn generation(vendor: u16, device: u16) -> Option<Generation> {
        IoMemoryModel::identify(vendor, device, vendor).map(|m| m.generation)
    }

    #[test]
    fn recognises_generations_by_device_id() {
        for dev in [
            0x1000, 0x1001, 0x1003, 0x1004, 0x1005, 0x1006, 0x1007, 0x1008,
        ] {
            assert_eq!(generation(0x1aed, dev), Some(Generation::Gen1), "{dev:#x}");
        }
        assert_eq!(generation(0x1aed, 0x2001), Some(Generation::IoDrive2));
        assert_eq!(generation(0x1aed, 0x3000), Some(Generation::Later));
        assert_eq!(generation(0x1aed, 0x3002), Some(Generation::Later));
        assert_eq!(generation(0xfafa, 0xe003), Some(Generation::PreProduction));
        assert_eq!(generation(0x1aed, 0x1002), Some(Generation::Unrecognised));
        assert_eq!(generation(0x1aed, 0x2000), Some(Generation::Unrecognised));
        assert_eq!(generation(0xfafa, 0xe004), None);
        assert_eq!(generation(0x144d, 0xa808), None);
    }

    #[test]
    fn names_generations_and_oems() {
        let plain = IoMemoryModel::identify(0x1aed, 0x2001, 0x1aed).unwrap();
        assert_eq!(plain.name(), "ioDrive2");
        assert_eq!(plain.oem, None);
        let gen1 = IoMemoryModel::identify(0x1aed, 0x1005, 0x1aed).unwrap();
        assert_eq!(gen1.name(), "ioDrive (VSL gen 1)");
        let hp = IoMemoryModel::identify(0x1aed, 0x2001, 0x103c).unwrap();
        assert_eq!(hp.name(), "HP IO Accelerator (ioDrive2)");
        let dell = IoMemoryModel::identify(0x1aed, 0x1008, 0x1028).unwrap();
        assert_eq!(dell.name(), "Dell ioDrive (ioDrive (VSL gen 1))");
        let ibm = IoMemoryModel::identify(0x1aed, 0x3001, 0x1014).unwrap();
        assert_eq!(
            ibm.name(),
            "IBM High IOPS (ioScale/ioDrive3-class (later generation))"
        );
    }

    #[test]
    fn no_real_model_is_driven_by_the_protocol() {
        for (v, d) in [
            (0x1aed, 0x1005),
            (0x1aed, 0x2001),
            (0x1aed, 0x3000),
            (0xfafa, 0xe003),
            (0x1aed, 0x4444),
        ] {
            let model = IoMemoryModel::identify(v, d, v).unwrap();
            assert_eq!(
                model.protocol_support(),
                ProtocolSupport::IdentifyOnly {
                    reason: UNSUPPORTED_PROTOCOL_REASON
                }
            );
        }
        assert!(UNSUPPORTED_PROTOCOL_REASON.starts_with("command protocol not supported"));
    }

    #[test]
    fn serializes_name_and_support() {
        let hp = IoMemoryModel::identify(0x1aed, 0x2001, 0x103c).unwrap();
        let v = serde_json::to_value(hp).unwrap();
        assert_eq!(v["name"], "HP IO Accelerator (ioDrive2)");
        assert_eq!(v["generation"], "iodrive2");
        assert_eq!(v["oem"], "hp");
        assert_eq!(v["protocol_supported"], false);
        assert_eq!(v["protocol_note"], UNSUPPORTED_PROTOCOL_REASON);
    }
}
