//! Submission-entry encoding of the NVM and ZNS commands, and PRPs.
//!
//! Every function here is pure (or writes only a command's own DMA
//! scratch), so the layouts are tested against the specification's figures
//! without a device.

use super::{opcode, NvmError};
use crate::nvme::spec::SubmissionEntry;
use crate::nvme::{Scratch, SCRATCH_PER_COMMAND};

/// Memory page size the controller is configured for (CC.MPS = 0).
pub const PAGE_SIZE: u64 = 4096;

/// PRP list entries one command's scratch holds. The scratch slot is 1 KiB
/// inside one 4 KiB page, so the list never crosses a page and needs no
/// chaining.
pub const MAX_PRP_LIST_ENTRIES: usize = SCRATCH_PER_COMMAND / 8;

/// Largest transfer the PRP construction here can describe: the rest of
/// the first page plus one page per list entry (a page-aligned buffer gets
/// exactly this many bytes).
pub const MAX_PRP_TRANSFER: u64 = MAX_PRP_LIST_ENTRIES as u64 * PAGE_SIZE;

/// Dataset Management ranges one command's scratch holds (16 bytes each).
pub const MAX_DSM_RANGES: usize = SCRATCH_PER_COMMAND / 16;

/// A range of logical blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LbaRange {
    /// First LBA.
    pub slba: u64,
    /// Number of blocks (1-based).
    pub blocks: u32,
}

/// Zone Send Action values (ZNS Figure 39).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum ZoneAction {
    /// Close Zone.
    Close = 0x01,
    /// Finish Zone.
    Finish = 0x02,
    /// Open Zone.
    Open = 0x03,
    /// Reset Zone: write pointer back to the zone start, zone empty.
    Reset = 0x04,
    /// Offline Zone.
    Offline = 0x05,
}

/// The PRP entries for a buffer of `len` bytes at `iova` (Base
/// Specification 4.1.1): PRP1 is the buffer address (any dword offset);
/// PRP2 is the second page, or, for more than two pages, the address of a
/// PRP list written into `scratch`.
pub fn build_prps(iova: u64, len: u64, scratch: &Scratch) -> Result<(u64, u64), NvmError> {
    if len == 0 {
        return Err(NvmError::Empty);
    }
    if !iova.is_multiple_of(4) {
        return Err(NvmError::Misaligned { iova });
    }
    let first = PAGE_SIZE - iova % PAGE_SIZE;
    if len <= first {
        return Ok((iova, 0));
    }
    let next = iova - iova % PAGE_SIZE + PAGE_SIZE;
    let pages = (len - first).div_ceil(PAGE_SIZE);
    if pages == 1 {
        return Ok((iova, next));
    }
    if pages > MAX_PRP_LIST_ENTRIES as u64 {
        return Err(NvmError::TransferTooLarge {
            bytes: len,
            max: first + MAX_PRP_TRANSFER,
        });
    }
    let mut list = [0u64; MAX_PRP_LIST_ENTRIES];
    for (i, entry) in list.iter_mut().take(pages as usize).enumerate() {
        *entry = next + i as u64 * PAGE_SIZE;
    }
    let list_iova =
        scratch
            .write_u64_list(&list[..pages as usize], 0)
            .ok_or(NvmError::TransferTooLarge {
                bytes: len,
                max: first + MAX_PRP_TRANSFER,
            })?;
    Ok((iova, list_iova))
}

/// The 0-based NLB field for `blocks` (1..=65536).
fn nlb(blocks: u64) -> Result<u32, NvmError> {
    if blocks == 0 || blocks > 1 << 16 {
        return Err(NvmError::BlockCount { blocks });
    }
    Ok((blocks - 1) as u32)
}

/// Read or Write (NVM Figures 66 and 70): SLBA in CDW10-11, NLB (0-based)
/// in CDW12 bits 15:0, data pointer in PRP1/PRP2.
pub fn read_write(
    op: u8,
    nsid: u32,
    slba: u64,
    blocks: u64,
    prps: (u64, u64),
) -> Result<SubmissionEntry, NvmError> {
    let mut sqe = SubmissionEntry::new(op, 0);
    sqe.nsid = nsid;
    sqe.set_cdw10_11(slba);
    sqe.cdw12 = nlb(blocks)?;
    sqe.prp1 = prps.0;
    sqe.prp2 = prps.1;
    Ok(sqe)
}

/// Flush (NVM Figure 40): only the namespace id.
pub fn flush(nsid: u32) -> SubmissionEntry {
    let mut sqe = SubmissionEntry::new(opcode::FLUSH, 0);
    sqe.nsid = nsid;
    sqe
}

/// Writes Dataset Management ranges (NVM Figure 39: context attributes,
/// length in blocks, starting LBA; 16 bytes each) into `scratch` and
/// returns their IOVA.
pub fn write_dsm_ranges(scratch: &Scratch, ranges: &[LbaRange]) -> Result<u64, NvmError> {
    if ranges.is_empty() {
        return Err(NvmError::Empty);
    }
    if ranges.len() > MAX_DSM_RANGES {
        return Err(NvmError::TooManyRanges {
            count: ranges.len(),
            max: MAX_DSM_RANGES,
        });
    }
    let mut words = [0u64; MAX_DSM_RANGES * 2];
    for (i, r) in ranges.iter().enumerate() {
        if r.blocks == 0 {
            return Err(NvmError::Empty);
        }
        // Dword 0: context attributes (none); dword 1: length (1-based).
        words[2 * i] = u64::from(r.blocks) << 32;
        words[2 * i + 1] = r.slba;
    }
    scratch
        .write_u64_list(&words[..ranges.len() * 2], 0)
        .ok_or(NvmError::TooManyRanges {
            count: ranges.len(),
            max: MAX_DSM_RANGES,
        })
}

/// Dataset Management with the Attribute-Deallocate bit (NVM Figure 38):
/// NR (0-based) in CDW10 bits 7:0, AD = CDW11 bit 2; the range list is the
/// data buffer (PRP1; it lies in one page).
pub fn deallocate(nsid: u32, ranges_iova: u64, count: usize) -> Result<SubmissionEntry, NvmError> {
    if count == 0 || count > 256 {
        return Err(NvmError::TooManyRanges { count, max: 256 });
    }
    let mut sqe = SubmissionEntry::new(opcode::DATASET_MANAGEMENT, 0);
    sqe.nsid = nsid;
    sqe.prp1 = ranges_iova;
    sqe.cdw10 = (count - 1) as u32;
    sqe.cdw11 = 1 << 2;
    Ok(sqe)
}

/// Zone Management Send (ZNS Figure 37/38): SLBA in CDW10-11, Zone Send
/// Action in CDW13 bits 7:0, Select All in CDW13 bit 8.
pub fn zone_send(nsid: u32, zslba: u64, action: ZoneAction, select_all: bool) -> SubmissionEntry {
    let mut sqe = SubmissionEntry::new(opcode::ZONE_MGMT_SEND, 0);
    sqe.nsid = nsid;
    sqe.set_cdw10_11(zslba);
    sqe.cdw13 = action as u32 | (u32::from(select_all) << 8);
    sqe
}

/// Zone Management Receive, Report Zones (ZNS Figures 40-42): SLBA in
/// CDW10-11, NUMD (0-based dwords) in CDW12, Zone Receive Action 00h in
/// CDW13 bits 7:0, Reporting Options 0 (all zones) in bits 15:8, Partial
/// Report in bit 16 (the header then counts only the zones returned).
pub fn report_zones(
    nsid: u32,
    slba: u64,
    prps: (u64, u64),
    len: u64,
) -> Result<SubmissionEntry, NvmError> {
    if len < 64 || !len.is_multiple_of(4) {
        return Err(NvmError::Empty);
    }
    let mut sqe = SubmissionEntry::new(opcode::ZONE_MGMT_RECV, 0);
    sqe.nsid = nsid;
    sqe.set_cdw10_11(slba);
    sqe.cdw12 = (len / 4 - 1) as u32;
    sqe.cdw13 = 1 << 16;
    sqe.prp1 = prps.0;
    sqe.prp2 = prps.1;
    Ok(sqe)
}

/// Zone Append (ZNS Figure 44): ZSLBA in CDW10-11, NLB (0-based) in CDW12;
/// the LBA written is returned in completion dwords 0-1.
pub fn zone_append(
    nsid: u32,
    zslba: u64,
    blocks: u64,
    prps: (u64, u64),
) -> Result<SubmissionEntry, NvmError> {
    read_write(opcode::ZONE_APPEND, nsid, zslba, blocks, prps)
}

/// Identify (Base Figure 273): CNS in CDW10 bits 7:0, CNTID in bits 31:16,
/// CSI in CDW11 bits 31:24; 4 KiB of data to PRP1 (page aligned).
pub fn identify(cns: u8, nsid: u32, csi: u8, data_iova: u64) -> SubmissionEntry {
    let mut sqe = SubmissionEntry::new(crate::nvme::spec::admin_opcode::IDENTIFY, 0);
    sqe.nsid = nsid;
    sqe.cdw10 = u32::from(cns);
    sqe.cdw11 = u32::from(csi) << 24;
    sqe.prp1 = data_iova;
    sqe
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A scratch area over host memory, at a page-aligned fake IOVA.
    struct FakeScratch {
        mem: Box<[u64; SCRATCH_PER_COMMAND / 8]>,
    }

    impl FakeScratch {
        fn new() -> Self {
            Self {
                mem: Box::new([0; SCRATCH_PER_COMMAND / 8]),
            }
        }
        fn scratch(&mut self) -> Scratch {
            Scratch {
                ptr: self.mem.as_mut_ptr().cast(),
                iova: 0x7000_0000,
            }
        }
    }

    #[test]
    fn prps_for_one_two_and_many_pages() {
        let mut fake = FakeScratch::new();
        let s = fake.scratch();
        // Within one page: PRP2 unused.
        assert_eq!(build_prps(0x10_0000, 4096, &s).unwrap(), (0x10_0000, 0));
        assert_eq!(build_prps(0x10_0200, 512, &s).unwrap(), (0x10_0200, 0));
        // Two pages: PRP2 is the second page.
        assert_eq!(
            build_prps(0x10_0000, 8192, &s).unwrap(),
            (0x10_0000, 0x10_1000)
        );
        // An offset buffer spilling into a second page.
        assert_eq!(
            build_prps(0x10_0e00, 1024, &s).unwrap(),
            (0x10_0e00, 0x10_1000)
        );
        // Four pages: PRP2 points at a list of pages 2..4.
        let (p1, p2) = build_prps(0x20_0000, 16384, &s).unwrap();
        assert_eq!(p1, 0x20_0000);
        assert_eq!(p2, 0x7000_0000);
        assert_eq!(&fake.mem[..3], &[0x20_1000, 0x20_2000, 0x20_3000]);
        assert_eq!(fake.mem[3], 0);
    }

    #[test]
    fn prp_limits_and_alignment() {
        let mut fake = FakeScratch::new();
        let s = fake.scratch();
        let max = (MAX_PRP_LIST_ENTRIES as u64 + 1) * PAGE_SIZE;
        assert!(build_prps(0x40_0000, max, &s).is_ok());
        assert_eq!(
            fake.mem[MAX_PRP_LIST_ENTRIES - 1],
            0x40_0000 + max - PAGE_SIZE
        );
        assert!(matches!(
            build_prps(0x40_0000, max + 1, &s),
            Err(NvmError::TransferTooLarge { .. })
        ));
        assert!(matches!(
            build_prps(0x40_0002, 512, &s),
            Err(NvmError::Misaligned { .. })
        ));
        assert!(matches!(build_prps(0x40_0000, 0, &s), Err(NvmError::Empty)));
    }

    #[test]
    fn read_write_layout() {
        let sqe = read_write(opcode::READ, 1, 0x1_2345_6789, 8, (0xa000, 0xb000)).unwrap();
        assert_eq!(sqe.opcode(), 0x02);
        assert_eq!(sqe.nsid, 1);
        assert_eq!(sqe.cdw10, 0x2345_6789);
        assert_eq!(sqe.cdw11, 0x1);
        assert_eq!(sqe.cdw12, 7, "NLB is 0-based");
        assert_eq!((sqe.prp1, sqe.prp2), (0xa000, 0xb000));
        let sqe = read_write(opcode::WRITE, 2, 0, 65536, (0, 0)).unwrap();
        assert_eq!(sqe.opcode(), 0x01);
        assert_eq!(sqe.cdw12, 0xffff);
        assert!(matches!(
            read_write(opcode::WRITE, 2, 0, 65537, (0, 0)),
            Err(NvmError::BlockCount { blocks: 65537 })
        ));
        assert!(read_write(opcode::READ, 2, 0, 0, (0, 0)).is_err());
        assert_eq!(flush(3).opcode(), 0x00);
        assert_eq!(flush(3).nsid, 3);
    }

    #[test]
    fn dataset_management_deallocate_layout() {
        let mut fake = FakeScratch::new();
        let s = fake.scratch();
        let iova = write_dsm_ranges(
            &s,
            &[
                LbaRange {
                    slba: 0x10,
                    blocks: 8,
                },
                LbaRange {
                    slba: 0x1_0000_0000,
                    blocks: 1,
                },
            ],
        )
        .unwrap();
        assert_eq!(iova, 0x7000_0000);
        // Range 0: CATTR 0 | LEN 8 (little-endian dwords), SLBA 0x10.
        assert_eq!(fake.mem[0], 8 << 32);
        assert_eq!(fake.mem[1], 0x10);
        assert_eq!(fake.mem[2], 1 << 32);
        assert_eq!(fake.mem[3], 0x1_0000_0000);
        let sqe = deallocate(1, iova, 2).unwrap();
        assert_eq!(sqe.opcode(), 0x09);
        assert_eq!(sqe.cdw10, 1, "NR is 0-based");
        assert_eq!(sqe.cdw11, 0b100, "AD bit");
        assert_eq!(sqe.prp1, iova);
        let too_many = vec![LbaRange { slba: 0, blocks: 1 }; MAX_DSM_RANGES + 1];
        assert!(matches!(
            write_dsm_ranges(&s, &too_many),
            Err(NvmError::TooManyRanges { .. })
        ));
    }

    #[test]
    fn zns_layouts() {
        let sqe = zone_send(2, 0x4000, ZoneAction::Reset, false);
        assert_eq!(sqe.opcode(), 0x79);
        assert_eq!(sqe.cdw10_11(), 0x4000);
        assert_eq!(sqe.cdw13, 0x04);
        let sqe = zone_send(2, 0, ZoneAction::Reset, true);
        assert_eq!(sqe.cdw13, 0x104, "Select All is bit 8");
        let sqe = zone_append(2, 0x8000, 4, (0x1000, 0)).unwrap();
        assert_eq!(sqe.opcode(), 0x7d);
        assert_eq!(sqe.cdw10_11(), 0x8000);
        assert_eq!(sqe.cdw12, 3);
        let sqe = report_zones(2, 0, (0x2000, 0), 4096).unwrap();
        assert_eq!(sqe.opcode(), 0x7a);
        assert_eq!(sqe.cdw12, 1023, "NUMD is 0-based dwords");
        assert_eq!(sqe.cdw13, 1 << 16, "report all zones, partial report");
        assert!(report_zones(2, 0, (0x2000, 0), 32).is_err());
    }

    #[test]
    fn identify_layout() {
        let sqe = identify(0x05, 2, 0x02, 0x9000);
        assert_eq!(sqe.opcode(), 0x06);
        assert_eq!(sqe.nsid, 2);
        assert_eq!(sqe.cdw10, 0x05);
        assert_eq!(sqe.cdw11, 0x0200_0000, "CSI in bits 31:24");
        assert_eq!(sqe.prp1, 0x9000);
    }
}
