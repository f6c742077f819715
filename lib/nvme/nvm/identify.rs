//! Identify data structures (Base Specification 5.17.2, NVM Command Set
//! 4.1.5, ZNS 4.1.5) and the admin calls that fetch them.

use super::command::identify;
use super::{cns, csi, NvmError};
use crate::dma::DmaRegion;
use crate::nvme::Controller;

/// Size of every identify data structure.
pub const IDENTIFY_LEN: usize = 4096;

fn need(data: &[u8], len: usize) -> Result<(), NvmError> {
    if data.len() < len {
        return Err(NvmError::ShortData {
            len: data.len(),
            need: len,
        });
    }
    Ok(())
}

fn u16_at(d: &[u8], o: usize) -> u16 {
    u16::from_le_bytes([d[o], d[o + 1]])
}

fn u32_at(d: &[u8], o: usize) -> u32 {
    u32::from_le_bytes([d[o], d[o + 1], d[o + 2], d[o + 3]])
}

fn u64_at(d: &[u8], o: usize) -> u64 {
    u64::from_le_bytes(d[o..o + 8].try_into().expect("8 bytes"))
}

/// An ASCII field, space padded, as the identify data holds it.
fn ascii(d: &[u8]) -> String {
    String::from_utf8_lossy(d)
        .trim_end_matches([' ', '\0'])
        .to_owned()
}

/// Identify Controller (CNS 01h, Base Figure 275), the fields this stack
/// uses.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct IdentifyController {
    /// PCI vendor id.
    pub vid: u16,
    /// PCI subsystem vendor id.
    pub ssvid: u16,
    /// Serial number.
    pub serial: String,
    /// Model number.
    pub model: String,
    /// Firmware revision.
    pub firmware: String,
    /// Maximum data transfer size: 2^mdts pages, 0 = no limit.
    pub mdts: u8,
    /// Controller id.
    pub cntlid: u16,
    /// Version (major in bits 31:16, minor 15:8, tertiary 7:0).
    pub version: u32,
    /// Optional NVM command support (ONCS).
    pub oncs: u16,
    /// Number of namespaces (highest namespace id).
    pub nn: u32,
    /// Volatile write cache present.
    pub volatile_write_cache: bool,
    /// NVM subsystem NQN.
    pub subnqn: String,
}

impl IdentifyController {
    /// Parses the 4096-byte structure.
    pub fn parse(d: &[u8]) -> Result<Self, NvmError> {
        need(d, IDENTIFY_LEN)?;
        Ok(Self {
            vid: u16_at(d, 0),
            ssvid: u16_at(d, 2),
            serial: ascii(&d[4..24]),
            model: ascii(&d[24..64]),
            firmware: ascii(&d[64..72]),
            mdts: d[77],
            cntlid: u16_at(d, 78),
            version: u32_at(d, 80),
            oncs: u16_at(d, 520),
            nn: u32_at(d, 516),
            volatile_write_cache: d[525] & 1 != 0,
            subnqn: ascii(&d[768..1024]),
        })
    }

    /// Largest transfer in bytes with 4 KiB pages, `None` if unlimited.
    pub fn max_transfer(&self) -> Option<u64> {
        (self.mdts != 0).then(|| 4096u64 << self.mdts.min(32))
    }

    /// Whether Dataset Management is supported (ONCS bit 2).
    pub fn supports_dsm(&self) -> bool {
        self.oncs & (1 << 2) != 0
    }

    /// "major.minor.tertiary".
    pub fn version_string(&self) -> String {
        format!(
            "{}.{}.{}",
            self.version >> 16,
            (self.version >> 8) & 0xff,
            self.version & 0xff
        )
    }
}

/// An LBA format (NVM Figure 98).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct LbaFormat {
    /// Metadata bytes per block.
    pub metadata_size: u16,
    /// Block size in bytes (2^LBADS).
    pub block_size: u32,
    /// Relative performance (0 best).
    pub relative_performance: u8,
}

/// Identify Namespace for the NVM command set (CNS 00h, NVM Figure 97).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct IdentifyNamespace {
    /// Namespace size in blocks.
    pub nsze: u64,
    /// Namespace capacity in blocks.
    pub ncap: u64,
    /// Blocks in use.
    pub nuse: u64,
    /// The LBA format in use.
    pub format: LbaFormat,
    /// Index of the format in use (FLBAS).
    pub format_index: u8,
    /// All formats (NLBAF + 1).
    pub formats: Vec<LbaFormat>,
    /// Deallocated blocks read as zeroes (DLFEAT bits 2:0 = 001b).
    pub deallocate_reads_zeroes: bool,
}

impl IdentifyNamespace {
    /// Parses the 4096-byte structure.
    pub fn parse(d: &[u8]) -> Result<Self, NvmError> {
        need(d, IDENTIFY_LEN)?;
        let nlbaf = d[25] as usize + 1;
        let flbas = d[26];
        let format_index = (flbas & 0xf) | ((flbas >> 5) & 0x3) << 4;
        let formats: Vec<LbaFormat> = (0..nlbaf.min(64))
            .map(|i| {
                let o = 128 + 4 * i;
                LbaFormat {
                    metadata_size: u16_at(d, o),
                    block_size: 1u32.checked_shl(u32::from(d[o + 2])).unwrap_or(0),
                    relative_performance: d[o + 3] & 0x3,
                }
            })
            .collect();
        let format = formats
            .get(format_index as usize)
            .copied()
            .ok_or(NvmError::Nvme(crate::nvme::NvmeError::Protocol(
                "FLBAS names an LBA format the namespace does not list",
            )))?;
        Ok(Self {
            nsze: u64_at(d, 0),
            ncap: u64_at(d, 8),
            nuse: u64_at(d, 16),
            format,
            format_index,
            formats,
            deallocate_reads_zeroes: d[33] & 0x7 == 0x1,
        })
    }
}

/// ZNS Identify Namespace (CNS 05h, CSI 02h; ZNS Figure 48).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ZonedNamespace {
    /// Zone operation characteristics.
    pub zoc: u16,
    /// Optional zoned command support.
    pub ozcs: u16,
    /// Maximum active resources (0-based; 0xffffffff = no limit).
    pub mar: u32,
    /// Maximum open resources (0-based; 0xffffffff = no limit).
    pub mor: u32,
    /// Zone size in blocks for each LBA format (LBAFE.ZSZE).
    pub zone_sizes: Vec<u64>,
}

impl ZonedNamespace {
    /// Parses the 4096-byte structure; `formats` is NLBAF + 1 from the NVM
    /// identify namespace.
    pub fn parse(d: &[u8], formats: usize) -> Result<Self, NvmError> {
        need(d, IDENTIFY_LEN)?;
        let zone_sizes = (0..formats.min(64))
            .map(|i| u64_at(d, 2816 + 16 * i))
            .collect();
        Ok(Self {
            zoc: u16_at(d, 0),
            ozcs: u16_at(d, 2),
            mar: u32_at(d, 4),
            mor: u32_at(d, 8),
            zone_sizes,
        })
    }
}

/// ZNS Identify Controller (CNS 06h, CSI 02h; ZNS Figure 47).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct ZonedController {
    /// Zone append size limit: 2^zasl pages; 0 = the MDTS limit.
    pub zasl: u8,
}

impl ZonedController {
    /// Parses the 4096-byte structure.
    pub fn parse(d: &[u8]) -> Result<Self, NvmError> {
        need(d, IDENTIFY_LEN)?;
        Ok(Self { zasl: d[0] })
    }
}

/// Zone states (ZNS Figure 33, ZS field).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ZoneState {
    /// ZSE.
    Empty,
    /// ZSIO.
    ImplicitlyOpened,
    /// ZSEO.
    ExplicitlyOpened,
    /// ZSC.
    Closed,
    /// ZSRO.
    ReadOnly,
    /// ZSF.
    Full,
    /// ZSO.
    Offline,
    /// A reserved value.
    Reserved(u8),
}

impl ZoneState {
    fn from_bits(v: u8) -> Self {
        match v {
            0x1 => Self::Empty,
            0x2 => Self::ImplicitlyOpened,
            0x3 => Self::ExplicitlyOpened,
            0x4 => Self::Closed,
            0xd => Self::ReadOnly,
            0xe => Self::Full,
            0xf => Self::Offline,
            other => Self::Reserved(other),
        }
    }
}

/// One Zone Descriptor (ZNS Figure 43, 64 bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct ZoneDescriptor {
    /// Zone type (2 = sequential write required).
    pub zone_type: u8,
    /// Zone state.
    pub state: ZoneState,
    /// Zone attributes.
    pub attributes: u8,
    /// Writable blocks in the zone.
    pub capacity: u64,
    /// First LBA.
    pub start: u64,
    /// Write pointer.
    pub write_pointer: u64,
}

/// A Report Zones result (ZNS Figure 42).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ZoneReport {
    /// Zones the header counts.
    pub zones: u64,
    /// The descriptors returned.
    pub descriptors: Vec<ZoneDescriptor>,
}

impl ZoneReport {
    /// Parses a Report Zones buffer (64-byte header, then 64-byte
    /// descriptors), reading no more descriptors than fit in `d`.
    pub fn parse(d: &[u8]) -> Result<Self, NvmError> {
        need(d, 64)?;
        let zones = u64_at(d, 0);
        let fit = (d.len() - 64) / 64;
        let descriptors = (0..(zones.min(fit as u64) as usize))
            .map(|i| {
                let z = &d[64 + 64 * i..128 + 64 * i];
                ZoneDescriptor {
                    zone_type: z[0] & 0xf,
                    state: ZoneState::from_bits(z[1] >> 4),
                    attributes: z[2],
                    capacity: u64_at(z, 8),
                    start: u64_at(z, 16),
                    write_pointer: u64_at(z, 24),
                }
            })
            .collect();
        Ok(Self { zones, descriptors })
    }
}

/// Parses an Active Namespace ID list (ids until the first zero).
pub fn parse_namespace_list(d: &[u8]) -> Vec<u32> {
    d.chunks_exact(4)
        .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .take_while(|&id| id != 0)
        .collect()
}

/// The Command Set Identifier in a Namespace Identification Descriptor
/// list (Base Figure 281, NIDT 04h), if listed.
pub fn parse_csi_descriptor(d: &[u8]) -> Option<u8> {
    let mut o = 0;
    while o + 4 <= d.len() {
        let (nidt, nidl) = (d[o], d[o + 1] as usize);
        if nidt == 0 || nidl == 0 {
            return None;
        }
        if nidt == 0x04 && nidl >= 1 && o + 4 < d.len() {
            return Some(d[o + 4]);
        }
        o += 4 + nidl;
    }
    None
}

/// Runs one Identify into a fresh 4 KiB DMA buffer and returns its bytes.
pub fn identify_raw(
    ctrl: &Controller,
    what: &'static str,
    cns: u8,
    nsid: u32,
    csi: u8,
) -> Result<Vec<u8>, NvmError> {
    let region = DmaRegion::allocate_small(ctrl.dma_space(), IDENTIFY_LEN)?;
    let iova = region.iova();
    let cqe = ctrl.admin_with(|_| identify(cns, nsid, csi, iova))?;
    if !cqe.is_success() {
        return Err(NvmError::CommandFailed {
            what,
            status: cqe.status_code(),
        });
    }
    let mut out = vec![0u8; IDENTIFY_LEN];
    region.copy_out(0, &mut out)?;
    Ok(out)
}

/// Identify Controller.
pub fn identify_controller(ctrl: &Controller) -> Result<IdentifyController, NvmError> {
    IdentifyController::parse(&identify_raw(
        ctrl,
        "identify controller",
        cns::CONTROLLER,
        0,
        0,
    )?)
}

/// Identify Namespace `nsid` (NVM command set fields).
pub fn identify_namespace(ctrl: &Controller, nsid: u32) -> Result<IdentifyNamespace, NvmError> {
    IdentifyNamespace::parse(&identify_raw(
        ctrl,
        "identify namespace",
        cns::NAMESPACE,
        nsid,
        0,
    )?)
}

/// Active namespace ids, ascending.
pub fn active_namespaces(ctrl: &Controller) -> Result<Vec<u32>, NvmError> {
    Ok(parse_namespace_list(&identify_raw(
        ctrl,
        "identify active namespace list",
        cns::ACTIVE_NAMESPACES,
        0,
        0,
    )?))
}

/// The command set of namespace `nsid` (NVM when the controller lists none).
pub fn namespace_csi(ctrl: &Controller, nsid: u32) -> Result<u8, NvmError> {
    match identify_raw(
        ctrl,
        "identify namespace descriptors",
        cns::NS_DESCRIPTORS,
        nsid,
        0,
    ) {
        Ok(d) => Ok(parse_csi_descriptor(&d).unwrap_or(csi::NVM)),
        // Controllers before NVMe 1.3 do not have the list: NVM.
        Err(NvmError::CommandFailed { .. }) => Ok(csi::NVM),
        Err(e) => Err(e),
    }
}

/// ZNS Identify Namespace of `nsid`.
pub fn identify_zoned_namespace(
    ctrl: &Controller,
    nsid: u32,
    formats: usize,
) -> Result<ZonedNamespace, NvmError> {
    let d = identify_raw(
        ctrl,
        "identify zoned namespace",
        cns::CSI_NAMESPACE,
        nsid,
        csi::ZONED,
    )?;
    ZonedNamespace::parse(&d, formats)
}

/// ZNS Identify Controller.
pub fn identify_zoned_controller(ctrl: &Controller) -> Result<ZonedController, NvmError> {
    let d = identify_raw(
        ctrl,
        "identify zoned controller",
        cns::CSI_CONTROLLER,
        0,
        csi::ZONED,
    )?;
    ZonedController::parse(&d)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(d: &mut [u8], o: usize, bytes: &[u8]) {
        d[o..o + bytes.len()].copy_from_slice(bytes);
    }

    /// QEMU's NVMe identify controller, the fields we read, at the offsets
    /// of Base Specification Figure 275.
    fn qemu_controller() -> Vec<u8> {
        let mut d = vec![0u8; 4096];
        put(&mut d, 0, &0x1b36u16.to_le_bytes());
        put(&mut d, 2, &0x1af4u16.to_le_bytes());
        put(&mut d, 4, b"IOMEMCI0001         ");
        put(&mut d, 24, format!("{:<40}", "QEMU NVMe Ctrl").as_bytes());
        put(&mut d, 64, b"10.0.2  ");
        d[77] = 7;
        put(&mut d, 78, &0u16.to_le_bytes());
        put(&mut d, 80, &0x0002_0000u32.to_le_bytes());
        put(&mut d, 516, &256u32.to_le_bytes());
        put(&mut d, 520, &0x015du16.to_le_bytes());
        d[525] = 1;
        put(&mut d, 768, b"nqn.2019-08.org.qemu:IOMEMCI0001");
        d
    }

    #[test]
    fn controller_fields_at_spec_offsets() {
        let id = IdentifyController::parse(&qemu_controller()).unwrap();
        assert_eq!(id.vid, 0x1b36);
        assert_eq!(id.ssvid, 0x1af4);
        assert_eq!(id.serial, "IOMEMCI0001");
        assert_eq!(id.model, "QEMU NVMe Ctrl");
        assert_eq!(id.firmware, "10.0.2");
        assert_eq!(id.max_transfer(), Some(512 * 1024));
        assert_eq!(id.nn, 256);
        assert!(id.supports_dsm());
        assert!(id.volatile_write_cache);
        assert_eq!(id.version_string(), "2.0.0");
        assert_eq!(id.subnqn, "nqn.2019-08.org.qemu:IOMEMCI0001");
        assert!(matches!(
            IdentifyController::parse(&[0u8; 100]),
            Err(NvmError::ShortData {
                len: 100,
                need: 4096
            })
        ));
    }

    #[test]
    fn namespace_fields_and_current_format() {
        let mut d = vec![0u8; 4096];
        put(&mut d, 0, &131072u64.to_le_bytes());
        put(&mut d, 8, &131072u64.to_le_bytes());
        put(&mut d, 16, &100u64.to_le_bytes());
        d[25] = 1; // two formats
        d[26] = 1; // format 1 in use
        d[33] = 0x09; // DLFEAT: reads zeroes (bits 2:0 = 001b), bit 3 set
        put(&mut d, 128, &[0, 0, 9, 0]); // 512 B
        put(&mut d, 132, &[0, 0, 12, 0]); // 4 KiB
        let ns = IdentifyNamespace::parse(&d).unwrap();
        assert_eq!(ns.nsze, 131072);
        assert_eq!(ns.nuse, 100);
        assert_eq!(ns.formats.len(), 2);
        assert_eq!(ns.format_index, 1);
        assert_eq!(ns.format.block_size, 4096);
        assert!(ns.deallocate_reads_zeroes);
        d[26] = 5; // a format that does not exist
        assert!(IdentifyNamespace::parse(&d).is_err());
    }

    #[test]
    fn zoned_structures() {
        let mut d = vec![0u8; 4096];
        put(&mut d, 4, &0xffff_ffffu32.to_le_bytes());
        put(&mut d, 2816, &2048u64.to_le_bytes());
        put(&mut d, 2832, &512u64.to_le_bytes());
        let z = ZonedNamespace::parse(&d, 2).unwrap();
        assert_eq!(z.zone_sizes, vec![2048, 512]);
        assert_eq!(z.mar, u32::MAX);
        d[0] = 3;
        assert_eq!(ZonedController::parse(&d).unwrap().zasl, 3);

        let mut r = vec![0u8; 64 + 2 * 64];
        put(&mut r, 0, &2u64.to_le_bytes());
        r[64] = 0x2;
        r[65] = 0x1 << 4; // empty
        put(&mut r, 72, &2048u64.to_le_bytes());
        put(&mut r, 80, &0u64.to_le_bytes());
        put(&mut r, 88, &0u64.to_le_bytes());
        r[128] = 0x2;
        r[129] = 0x2 << 4; // implicitly opened
        put(&mut r, 136, &2048u64.to_le_bytes());
        put(&mut r, 144, &2048u64.to_le_bytes());
        put(&mut r, 152, &2052u64.to_le_bytes());
        let rep = ZoneReport::parse(&r).unwrap();
        assert_eq!(rep.zones, 2);
        assert_eq!(rep.descriptors[0].state, ZoneState::Empty);
        assert_eq!(rep.descriptors[1].state, ZoneState::ImplicitlyOpened);
        assert_eq!(rep.descriptors[1].start, 2048);
        assert_eq!(rep.descriptors[1].write_pointer, 2052);
        assert_eq!(rep.descriptors[1].zone_type, 2);
        // A header claiming more zones than the buffer holds is clipped.
        put(&mut r, 0, &100u64.to_le_bytes());
        assert_eq!(ZoneReport::parse(&r).unwrap().descriptors.len(), 2);
    }

    #[test]
    fn namespace_list_and_csi_descriptor() {
        let mut d = vec![0u8; 4096];
        put(&mut d, 0, &1u32.to_le_bytes());
        put(&mut d, 4, &2u32.to_le_bytes());
        assert_eq!(parse_namespace_list(&d), vec![1, 2]);
        // EUI64 (type 1, 8 bytes) then CSI (type 4, 1 byte) = zoned.
        let mut n = vec![0u8; 4096];
        n[0] = 1;
        n[1] = 8;
        n[12] = 4;
        n[13] = 1;
        n[16] = 2;
        assert_eq!(parse_csi_descriptor(&n), Some(2));
        assert_eq!(parse_csi_descriptor(&[0u8; 4096]), None);
    }
}
