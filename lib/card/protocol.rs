//! The raw-flash command set on the wire: opcodes, status codes, and the
//! byte layouts of the identify, health and block-info structures.
//!
//! Modelled on Open-Channel SSD 2.0 (vector chunk read/write/reset with
//! physical addresses and per-sector metadata through MPTR), carried in
//! NVMe submission entries. Layouts are little-endian at fixed offsets so a
//! card written in another language can implement the same protocol.

use super::{CardIdentity, Geometry};
use crate::nvme::spec::{generic, Status};

/// I/O command opcodes (OCSSD 2.0 vector commands plus NVM flush).
pub mod opcode {
    /// Flush (NVM command set 0x00): make every completed program durable.
    pub const FLUSH: u8 = 0x00;
    /// Vector erase ("chunk reset", OCSSD 0x90).
    pub const VECTOR_ERASE: u8 = 0x90;
    /// Vector program ("vector chunk write", OCSSD 0x91).
    pub const VECTOR_PROGRAM: u8 = 0x91;
    /// Vector read ("vector chunk read", OCSSD 0x92).
    pub const VECTOR_READ: u8 = 0x92;
}

/// Log page identifiers.
pub mod log_page {
    /// ioMemory health log (vendor specific range).
    pub const HEALTH: u8 = 0xc0;
    /// Erase-block ("chunk") information, OCSSD 2.0 LID 0xCA.
    pub const BLOCK_INFO: u8 = 0xca;
}

/// Most pages one vector command may name (OCSSD: 64, NLB is 6 bits).
pub const MAX_PAGES_PER_COMMAND: usize = 64;

/// Bytes in one column unit of a column read.
pub const COLUMN_UNIT: usize = 512;

/// The part of every page a vector read transfers: `count` units of
/// [`COLUMN_UNIT`] bytes from unit `first` of the page ("column read", like
/// a NAND change-read-column). The OOB is always delivered whole.
///
/// Wire: command dword 13 of [`opcode::VECTOR_READ`], `first` in bits 0..16
/// and `count` in bits 16..32; 0 (the default of every other command) means
/// the whole page. Each data address of the command then receives
/// `count * 512` bytes (the page bytes `first * 512 ..`), so it may point
/// straight at a sector of the caller's buffer, and nothing outside that
/// range is written. A column with `count == 0` but `first != 0`, or one
/// that reaches past the page, or one on a read without data addresses, or
/// dword 13 set on any other vector command, fails the whole command with
/// [`CardStatus::InvalidField`] before any NAND access.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Column {
    /// First unit of the page transferred.
    pub first: u16,
    /// Units transferred (0: the whole page).
    pub count: u16,
}

impl Column {
    /// The whole page (what a read without a column transfers).
    pub const WHOLE_PAGE: Column = Column { first: 0, count: 0 };

    /// `count` units from unit `first`.
    pub const fn new(first: u16, count: u16) -> Self {
        Self { first, count }
    }

    /// Whether this is the whole page.
    pub const fn is_whole_page(self) -> bool {
        self.first == 0 && self.count == 0
    }

    /// Command dword 13.
    pub const fn to_wire(self) -> u32 {
        self.first as u32 | ((self.count as u32) << 16)
    }

    /// Decodes command dword 13.
    pub const fn from_wire(cdw13: u32) -> Self {
        Self {
            first: cdw13 as u16,
            count: (cdw13 >> 16) as u16,
        }
    }

    /// The byte range `(offset, len)` of a `page_size`-byte page this
    /// column transfers, or `None` when it is not a valid column of such a
    /// page.
    pub const fn byte_range(self, page_size: usize) -> Option<(usize, usize)> {
        if self.count == 0 {
            return if self.first == 0 { Some((0, page_size)) } else { None };
        }
        let off = self.first as usize * COLUMN_UNIT;
        let len = self.count as usize * COLUMN_UNIT;
        if off + len > page_size {
            None
        } else {
            Some((off, len))
        }
    }
}

/// Media status codes (SCT 2) of the card command set.
pub mod media {
    use crate::nvme::spec::Status;
    /// Program failure (NVMe "Write Fault").
    pub const PROGRAM_FAILED: Status = Status::new(2, 0x80);
    /// Uncorrectable read (NVMe "Unrecovered Read Error").
    pub const UNCORRECTABLE: Status = Status::new(2, 0x81);
    /// Erase failure.
    pub const ERASE_FAILED: Status = Status::new(2, 0xc0);
    /// Program not at the block's write pointer.
    pub const PROGRAM_ORDER: Status = Status::new(2, 0xc1);
    /// Program of a page that is not erased.
    pub const NOT_ERASED: Status = Status::new(2, 0xc2);
    /// The block is bad (offline chunk).
    pub const BAD_BLOCK: Status = Status::new(2, 0xc3);
    /// The die has failed.
    pub const DIE_FAILED: Status = Status::new(2, 0xc4);
    /// Read of a page that was never programmed since its last erase.
    pub const ERASED_PAGE: Status = Status::new(2, 0xc5);
    /// Read succeeded after ECC correction (dw0 holds the corrected bits).
    pub const ECC_CORRECTED: Status = Status::new(2, 0xd0);
}

/// Outcome of a card command as the host sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
pub enum CardStatus {
    /// Done.
    Success,
    /// Read done, but ECC had to correct bits.
    EccCorrected,
    /// Read of a page that holds no data.
    Erased,
    /// Read failed: data could not be corrected.
    Uncorrectable,
    /// Program failed; the block should be retired.
    ProgramFailed,
    /// Erase failed; the block should be retired.
    EraseFailed,
    /// A physical address outside the geometry.
    InvalidAddress,
    /// Program not at the block's next page.
    ProgramOrder,
    /// Program of an already programmed page.
    NotErased,
    /// Operation on a bad block.
    BadBlock,
    /// Operation on a failed die.
    DieFailed,
    /// The card lost power; nothing after the cut was executed.
    PowerCut,
    /// A malformed command field.
    InvalidField,
    /// DMA to or from host memory failed (unmapped address).
    DataTransfer,
    /// The card failed internally.
    Internal,
    /// A status this host does not know (raw SCT/SC).
    Other(u16),
}

impl CardStatus {
    /// Decodes a completion status.
    pub fn from_status(status: Status) -> Self {
        match status {
            s if s == generic::SUCCESS => Self::Success,
            s if s == media::ECC_CORRECTED => Self::EccCorrected,
            s if s == media::ERASED_PAGE => Self::Erased,
            s if s == media::UNCORRECTABLE => Self::Uncorrectable,
            s if s == media::PROGRAM_FAILED => Self::ProgramFailed,
            s if s == media::ERASE_FAILED => Self::EraseFailed,
            s if s == media::PROGRAM_ORDER => Self::ProgramOrder,
            s if s == media::NOT_ERASED => Self::NotErased,
            s if s == media::BAD_BLOCK => Self::BadBlock,
            s if s == media::DIE_FAILED => Self::DieFailed,
            s if s == generic::LBA_OUT_OF_RANGE => Self::InvalidAddress,
            s if s == generic::ABORTED_POWER_LOSS => Self::PowerCut,
            s if s == generic::INVALID_FIELD => Self::InvalidField,
            s if s == generic::INVALID_OPCODE => Self::InvalidField,
            s if s == generic::DATA_TRANSFER_ERROR => Self::DataTransfer,
            s if s == generic::INTERNAL_ERROR => Self::Internal,
            s => Self::Other(s.0),
        }
    }

    /// Encodes the status a device reports.
    pub fn to_status(self) -> Status {
        match self {
            Self::Success => generic::SUCCESS,
            Self::EccCorrected => media::ECC_CORRECTED,
            Self::Erased => media::ERASED_PAGE,
            Self::Uncorrectable => media::UNCORRECTABLE,
            Self::ProgramFailed => media::PROGRAM_FAILED,
            Self::EraseFailed => media::ERASE_FAILED,
            Self::InvalidAddress => generic::LBA_OUT_OF_RANGE,
            Self::ProgramOrder => media::PROGRAM_ORDER,
            Self::NotErased => media::NOT_ERASED,
            Self::BadBlock => media::BAD_BLOCK,
            Self::DieFailed => media::DIE_FAILED,
            Self::PowerCut => generic::ABORTED_POWER_LOSS,
            Self::InvalidField => generic::INVALID_FIELD,
            Self::DataTransfer => generic::DATA_TRANSFER_ERROR,
            Self::Internal => generic::INTERNAL_ERROR,
            Self::Other(raw) => Status(raw),
        }
    }

    /// Whether the data moved (success, possibly after ECC correction).
    pub fn is_ok(self) -> bool {
        matches!(self, Self::Success | Self::EccCorrected)
    }

    /// How bad a page outcome is, for picking the status a vector command
    /// reports (the worst of its pages).
    pub fn severity(self) -> u8 {
        match self {
            Self::Success => 0,
            Self::EccCorrected => 1,
            Self::Erased => 2,
            _ => 3,
        }
    }
}

impl std::fmt::Display for CardStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let text = match self {
            Self::Success => "success",
            Self::EccCorrected => "success after ECC correction",
            Self::Erased => "page is erased",
            Self::Uncorrectable => "uncorrectable read error",
            Self::ProgramFailed => "program failure",
            Self::EraseFailed => "erase failure",
            Self::InvalidAddress => "invalid physical address",
            Self::ProgramOrder => "program-order violation (not at the block's write pointer)",
            Self::NotErased => "write to an unerased page",
            Self::BadBlock => "block is bad",
            Self::DieFailed => "die has failed",
            Self::PowerCut => "device lost power",
            Self::InvalidField => "invalid command field",
            Self::DataTransfer => "DMA transfer error (address not mapped for the device)",
            Self::Internal => "internal device error",
            Self::Other(raw) => return write!(f, "unknown status {raw:#x}"),
        };
        f.write_str(text)
    }
}

/// Size of the identify data structure.
pub const IDENTIFY_BYTES: usize = 4096;
/// Size of the health log.
pub const HEALTH_BYTES: usize = 512;
/// Size of one block-info entry.
pub const BLOCK_INFO_ENTRY_BYTES: usize = 16;

const IDENTIFY_MAGIC: &[u8; 4] = b"IOMC";
const IDENTIFY_VERSION: u16 = 1;

/// What the identify command returns.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct IdentifyData {
    /// Who the card is.
    pub identity: CardIdentity,
    /// Flash shape.
    pub geometry: Geometry,
    /// Most pages per vector command.
    pub max_pages_per_command: u32,
    /// Most entries per queue.
    pub max_queue_entries: u32,
    /// Most I/O queue pairs.
    pub max_io_queues: u32,
    /// Sector sizes a format may choose.
    pub sector_sizes: Vec<u32>,
    /// NAND timing model of an emulated card ("none", "iodrive2"); empty for hardware.
    pub timing_profile: String,
}

/// Little-endian field writer over a fixed buffer.
struct Put<'a>(&'a mut [u8]);

impl Put<'_> {
    fn u16(&mut self, at: usize, v: u16) {
        self.0[at..at + 2].copy_from_slice(&v.to_le_bytes());
    }
    fn u32(&mut self, at: usize, v: u32) {
        self.0[at..at + 4].copy_from_slice(&v.to_le_bytes());
    }
    fn i32(&mut self, at: usize, v: i32) {
        self.0[at..at + 4].copy_from_slice(&v.to_le_bytes());
    }
    fn u64(&mut self, at: usize, v: u64) {
        self.0[at..at + 8].copy_from_slice(&v.to_le_bytes());
    }
    fn str(&mut self, at: usize, width: usize, v: &str) {
        let field = &mut self.0[at..at + width];
        field.fill(0);
        let bytes = v.as_bytes();
        let n = bytes.len().min(width);
        field[..n].copy_from_slice(&bytes[..n]);
    }
}

/// Little-endian field reader over a fixed buffer.
struct Get<'a>(&'a [u8]);

impl Get<'_> {
    fn u16(&self, at: usize) -> u16 {
        u16::from_le_bytes([self.0[at], self.0[at + 1]])
    }
    fn u32(&self, at: usize) -> u32 {
        u32::from_le_bytes(self.0[at..at + 4].try_into().unwrap_or([0; 4]))
    }
    fn i32(&self, at: usize) -> i32 {
        i32::from_le_bytes(self.0[at..at + 4].try_into().unwrap_or([0; 4]))
    }
    fn u64(&self, at: usize) -> u64 {
        u64::from_le_bytes(self.0[at..at + 8].try_into().unwrap_or([0; 8]))
    }
    fn str(&self, at: usize, width: usize) -> String {
        let field = &self.0[at..at + width];
        let end = field.iter().position(|&b| b == 0).unwrap_or(width);
        String::from_utf8_lossy(&field[..end]).into_owned()
    }
}

impl IdentifyData {
    /// Serializes to the 4 KiB wire layout.
    pub fn encode(&self) -> [u8; IDENTIFY_BYTES] {
        let mut buf = [0u8; IDENTIFY_BYTES];
        let mut p = Put(&mut buf);
        let id = &self.identity;
        let g = &self.geometry;
        p.0[0..4].copy_from_slice(IDENTIFY_MAGIC);
        p.u16(4, IDENTIFY_VERSION);
        p.str(8, 40, &id.model);
        p.str(48, 32, &id.product_number);
        p.str(80, 24, &id.serial);
        p.str(104, 24, &id.fio_serial);
        p.str(128, 16, &id.firmware_version);
        p.u32(144, id.firmware_revision);
        p.u16(148, id.pci_vendor);
        p.u16(150, id.pci_device);
        p.u16(152, id.pci_subsystem_vendor);
        p.u16(154, id.pci_subsystem_device);
        p.u16(156, g.channels);
        p.u16(158, g.dies_per_channel);
        p.u32(160, g.blocks_per_die);
        p.u32(164, g.pages_per_block);
        p.u32(168, g.page_size);
        p.u32(172, g.oob_size);
        p.u64(176, id.advertised_bytes);
        p.u32(184, id.rated_pe_cycles);
        p.u32(188, id.powerloss_protection as u32);
        p.u64(192, id.rated_pbw_bytes);
        p.u32(200, self.max_pages_per_command);
        p.u32(204, self.max_queue_entries);
        p.u32(208, self.max_io_queues);
        let formats = self.sector_sizes.iter().fold(0u32, |acc, s| match s {
            512 => acc | 1,
            4096 => acc | 2,
            _ => acc,
        });
        p.u32(212, formats);
        p.str(216, 16, &self.timing_profile);
        buf
    }

    /// Parses the 4 KiB wire layout, refusing what is not one.
    pub fn decode(buf: &[u8]) -> Result<Self, String> {
        if buf.len() < IDENTIFY_BYTES {
            return Err(format!("identify data is {} bytes, expected {IDENTIFY_BYTES}", buf.len()));
        }
        if &buf[0..4] != IDENTIFY_MAGIC {
            return Err("identify data has no IOMC signature: not an ioMemory raw-flash controller".into());
        }
        let g = Get(buf);
        let version = g.u16(4);
        if version != IDENTIFY_VERSION {
            return Err(format!("identify structure version {version} is not supported (expected {IDENTIFY_VERSION})"));
        }
        let geometry = Geometry {
            channels: g.u16(156),
            dies_per_channel: g.u16(158),
            blocks_per_die: g.u32(160),
            pages_per_block: g.u32(164),
            page_size: g.u32(168),
            oob_size: g.u32(172),
        };
        geometry.validate().map_err(|e| format!("card reports an invalid geometry: {e}"))?;
        let formats = g.u32(212);
        let mut sector_sizes = Vec::new();
        if formats & 1 != 0 {
            sector_sizes.push(512);
        }
        if formats & 2 != 0 {
            sector_sizes.push(4096);
        }
        Ok(Self {
            identity: CardIdentity {
                model: g.str(8, 40),
                product_number: g.str(48, 32),
                serial: g.str(80, 24),
                fio_serial: g.str(104, 24),
                firmware_version: g.str(128, 16),
                firmware_revision: g.u32(144),
                pci_vendor: g.u16(148),
                pci_device: g.u16(150),
                pci_subsystem_vendor: g.u16(152),
                pci_subsystem_device: g.u16(154),
                advertised_bytes: g.u64(176),
                rated_pe_cycles: g.u32(184),
                powerloss_protection: g.u32(188) & 1 != 0,
                rated_pbw_bytes: g.u64(192),
            },
            geometry,
            max_pages_per_command: g.u32(200),
            max_queue_entries: g.u32(204),
            max_io_queues: g.u32(208),
            sector_sizes,
            timing_profile: g.str(216, 16),
        })
    }
}

/// The health log: sensors and lifetime counters (what `fio-status -a` shows).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct HealthLog {
    /// Current internal temperature, milli-degrees Celsius.
    pub temperature_mc: i32,
    /// Highest temperature seen, milli-degrees Celsius.
    pub temperature_max_mc: i32,
    /// Internal (core) voltage average, millivolts.
    pub internal_mv_avg: u32,
    /// Internal voltage maximum, millivolts.
    pub internal_mv_max: u32,
    /// Auxiliary voltage average, millivolts.
    pub aux_mv_avg: u32,
    /// Auxiliary voltage maximum, millivolts.
    pub aux_mv_max: u32,
    /// PCIe slot (12 V rail) voltage, millivolts.
    pub pcie_mv: u32,
    /// PCIe slot current, milliamps.
    pub pcie_ma: u32,
    /// PCIe slot power, milliwatts.
    pub pcie_mw: u32,
    /// Power-loss protection armed.
    pub powerloss_protection: bool,
    /// Bytes programmed to NAND over the card's life.
    pub physical_bytes_written: u64,
    /// Bytes read from NAND over the card's life.
    pub physical_bytes_read: u64,
    /// Pages programmed.
    pub pages_programmed: u64,
    /// Pages read.
    pub pages_read: u64,
    /// Blocks erased.
    pub blocks_erased: u64,
    /// Bits corrected by ECC.
    pub ecc_corrected_bits: u64,
    /// Reads that needed correction.
    pub ecc_corrected_reads: u64,
    /// Reads that could not be corrected.
    pub uncorrectable_reads: u64,
    /// Program failures.
    pub program_failures: u64,
    /// Erase failures.
    pub erase_failures: u64,
    /// Blocks bad from the factory.
    pub factory_bad_blocks: u64,
    /// Blocks gone bad in service.
    pub grown_bad_blocks: u64,
    /// Power cycles.
    pub power_cycles: u64,
    /// Seconds powered on.
    pub power_on_seconds: u64,
    /// Sum of P/E cycles over all blocks.
    pub total_pe_cycles: u64,
    /// Highest P/E count of any block.
    pub max_pe_cycles: u32,
    /// Lowest P/E count of any good block.
    pub min_pe_cycles: u32,
    /// Blocks that are not bad.
    pub good_blocks: u64,
    /// Dies that have failed.
    pub failed_dies: u32,
}

impl HealthLog {
    /// Serializes to the 512-byte wire layout.
    pub fn encode(&self) -> [u8; HEALTH_BYTES] {
        let mut buf = [0u8; HEALTH_BYTES];
        let mut p = Put(&mut buf);
        p.i32(0, self.temperature_mc);
        p.i32(4, self.temperature_max_mc);
        p.u32(8, self.internal_mv_avg);
        p.u32(12, self.internal_mv_max);
        p.u32(16, self.aux_mv_avg);
        p.u32(20, self.aux_mv_max);
        p.u32(24, self.pcie_mv);
        p.u32(28, self.pcie_ma);
        p.u32(32, self.pcie_mw);
        p.u32(36, self.powerloss_protection as u32);
        let counters = [
            self.physical_bytes_written,
            self.physical_bytes_read,
            self.pages_programmed,
            self.pages_read,
            self.blocks_erased,
            self.ecc_corrected_bits,
            self.ecc_corrected_reads,
            self.uncorrectable_reads,
            self.program_failures,
            self.erase_failures,
            self.factory_bad_blocks,
            self.grown_bad_blocks,
            self.power_cycles,
            self.power_on_seconds,
            self.total_pe_cycles,
        ];
        for (i, v) in counters.iter().enumerate() {
            p.u64(40 + i * 8, *v);
        }
        p.u32(160, self.max_pe_cycles);
        p.u32(164, self.min_pe_cycles);
        p.u64(168, self.good_blocks);
        p.u32(176, self.failed_dies);
        buf
    }

    /// Parses the 512-byte wire layout.
    pub fn decode(buf: &[u8]) -> Result<Self, String> {
        if buf.len() < HEALTH_BYTES {
            return Err(format!("health log is {} bytes, expected {HEALTH_BYTES}", buf.len()));
        }
        let g = Get(buf);
        let c = |i: usize| g.u64(40 + i * 8);
        Ok(Self {
            temperature_mc: g.i32(0),
            temperature_max_mc: g.i32(4),
            internal_mv_avg: g.u32(8),
            internal_mv_max: g.u32(12),
            aux_mv_avg: g.u32(16),
            aux_mv_max: g.u32(20),
            pcie_mv: g.u32(24),
            pcie_ma: g.u32(28),
            pcie_mw: g.u32(32),
            powerloss_protection: g.u32(36) & 1 != 0,
            physical_bytes_written: c(0),
            physical_bytes_read: c(1),
            pages_programmed: c(2),
            pages_read: c(3),
            blocks_erased: c(4),
            ecc_corrected_bits: c(5),
            ecc_corrected_reads: c(6),
            uncorrectable_reads: c(7),
            program_failures: c(8),
            erase_failures: c(9),
            factory_bad_blocks: c(10),
            grown_bad_blocks: c(11),
            power_cycles: c(12),
            power_on_seconds: c(13),
            total_pe_cycles: c(14),
            max_pe_cycles: g.u32(160),
            min_pe_cycles: g.u32(164),
            good_blocks: g.u64(168),
            failed_dies: g.u32(176),
        })
    }
}

/// State of an erase block as the card reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum BlockStateCode {
    /// Erased, ready for programming.
    Free,
    /// Partly programmed.
    Open,
    /// Every page programmed.
    Full,
    /// Bad: never to be used.
    Bad,
}

/// Why a block is bad.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum BadBlockReason {
    /// Marked bad at the factory.
    Factory,
    /// An erase failed.
    EraseFailure,
    /// A program failed.
    ProgramFailure,
    /// Its die failed.
    DieFailure,
}

/// One erase block's information (block-info log entry).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct BlockInfoEntry {
    /// State.
    pub state: BlockStateCode,
    /// Why it is bad, if it is.
    pub bad_reason: Option<BadBlockReason>,
    /// Next page to program.
    pub write_pointer: u32,
    /// Program/erase cycles so far.
    pub pe_cycles: u32,
}

impl BlockInfoEntry {
    /// Serializes to the 16-byte wire layout.
    pub fn encode(&self) -> [u8; BLOCK_INFO_ENTRY_BYTES] {
        let mut buf = [0u8; BLOCK_INFO_ENTRY_BYTES];
        buf[0] = match self.state {
            BlockStateCode::Free => 1,
            BlockStateCode::Open => 2,
            BlockStateCode::Full => 3,
            BlockStateCode::Bad => 4,
        };
        buf[1] = match self.bad_reason {
            None => 0,
            Some(BadBlockReason::Factory) => 1,
            Some(BadBlockReason::EraseFailure) => 2,
            Some(BadBlockReason::ProgramFailure) => 3,
            Some(BadBlockReason::DieFailure) => 4,
        };
        buf[4..8].copy_from_slice(&self.write_pointer.to_le_bytes());
        buf[8..12].copy_from_slice(&self.pe_cycles.to_le_bytes());
        buf
    }

    /// Parses the 16-byte wire layout.
    pub fn decode(buf: &[u8]) -> Result<Self, String> {
        if buf.len() < BLOCK_INFO_ENTRY_BYTES {
            return Err("short block-info entry".into());
        }
        let state = match buf[0] {
            1 => BlockStateCode::Free,
            2 => BlockStateCode::Open,
            3 => BlockStateCode::Full,
            4 => BlockStateCode::Bad,
            other => return Err(format!("unknown block state code {other}")),
        };
        let bad_reason = match buf[1] {
            0 => None,
            1 => Some(BadBlockReason::Factory),
            2 => Some(BadBlockReason::EraseFailure),
            3 => Some(BadBlockReason::ProgramFailure),
            4 => Some(BadBlockReason::DieFailure),
            other => return Err(format!("unknown bad-block reason code {other}")),
        };
        let g = Get(buf);
        Ok(Self {
            state,
            bad_reason,
            write_pointer: g.u32(4),
            pe_cycles: g.u32(8),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identify() -> IdentifyData {
        IdentifyData {
            identity: CardIdentity {
                model: "ioDrive2".into(),
                product_number: "F00-001-1T20-CS-0001".into(),
                serial: "1149D0969".into(),
                fio_serial: "1149D0969-1121".into(),
                firmware_version: "7.1.15".into(),
                firmware_revision: 110356,
                pci_vendor: 0x1aed,
                pci_device: 0x2001,
                pci_subsystem_vendor: 0x1aed,
                pci_subsystem_device: 0x2001,
                advertised_bytes: 1_205_000_000_000,
                rated_pe_cycles: 10_000,
                rated_pbw_bytes: 17_000_000_000_000_000,
                powerloss_protection: true,
            },
            geometry: Geometry {
                channels: 8,
                dies_per_channel: 4,
                blocks_per_die: 4096,
                pages_per_block: 256,
                page_size: 4096,
                oob_size: 128,
            },
            max_pages_per_command: 64,
            max_queue_entries: 4096,
            max_io_queues: 64,
            sector_sizes: vec![512, 4096],
            timing_profile: "iodrive2".into(),
        }
    }

    #[test]
    fn identify_round_trips() {
        let id = identify();
        assert_eq!(IdentifyData::decode(&id.encode()).unwrap(), id);
    }

    #[test]
    fn identify_rejects_foreign_data() {
        let mut raw = identify().encode();
        raw[0] = b'X';
        assert!(IdentifyData::decode(&raw).unwrap_err().contains("not an ioMemory"));
        assert!(IdentifyData::decode(&raw[..100]).is_err());
    }

    #[test]
    fn health_round_trips() {
        let h = HealthLog {
            temperature_mc: 64_470,
            temperature_max_mc: 64_970,
            physical_bytes_written: 123_456_789,
            total_pe_cycles: 99,
            max_pe_cycles: 7,
            good_blocks: 1000,
            powerloss_protection: true,
            ..Default::default()
        };
        assert_eq!(HealthLog::decode(&h.encode()).unwrap(), h);
    }

    #[test]
    fn block_info_round_trips_and_rejects_garbage() {
        let e = BlockInfoEntry {
            state: BlockStateCode::Bad,
            bad_reason: Some(BadBlockReason::ProgramFailure),
            write_pointer: 17,
            pe_cycles: 3000,
        };
        assert_eq!(BlockInfoEntry::decode(&e.encode()).unwrap(), e);
        assert!(BlockInfoEntry::decode(&[9u8; 16]).is_err());
    }

    #[test]
    fn every_status_round_trips() {
        use CardStatus::*;
        for s in [
            Success, EccCorrected, Erased, Uncorrectable, ProgramFailed, EraseFailed, InvalidAddress,
            ProgramOrder, NotErased, BadBlock, DieFailed, PowerCut, InvalidField, DataTransfer, Internal,
        ] {
            assert_eq!(CardStatus::from_status(s.to_status()), s);
        }
    }

    #[test]
    fn columns_encode_and_validate_against_the_page() {
        assert_eq!(Column::from_wire(Column::new(3, 5).to_wire()), Column::new(3, 5));
        assert_eq!(Column::new(3, 5).to_wire(), 0x0005_0003);
        assert_eq!(Column::from_wire(0), Column::WHOLE_PAGE);
        assert_eq!(Column::WHOLE_PAGE.byte_range(4096), Some((0, 4096)));
        assert_eq!(Column::new(7, 1).byte_range(4096), Some((3584, 512)));
        assert_eq!(Column::new(0, 8).byte_range(4096), Some((0, 4096)));
        assert_eq!(Column::new(7, 2).byte_range(4096), None, "past the page");
        assert_eq!(Column::new(8, 1).byte_range(4096), None);
        assert_eq!(Column::new(1, 0).byte_range(4096), None, "empty column not at 0");
        assert_eq!(Column::new(u16::MAX, u16::MAX).byte_range(65536), None);
    }
}
