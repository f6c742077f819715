//! Layouts from the NVM Express Base Specification 2.0: controller
//! registers (section 3.1), submission and completion queue entries
//! (sections 4.2 and 4.6), and the admin opcodes this stack uses (5.x).

/// Controller Capabilities (CAP), 64-bit, offset 0x00.
pub const REG_CAP: usize = 0x00;
/// Version (VS), offset 0x08.
pub const REG_VS: usize = 0x08;
/// Controller Configuration (CC), offset 0x14.
pub const REG_CC: usize = 0x14;
/// Controller Status (CSTS), offset 0x1c.
pub const REG_CSTS: usize = 0x1c;
/// Admin Queue Attributes (AQA), offset 0x24.
pub const REG_AQA: usize = 0x24;
/// Admin Submission Queue base address (ASQ), 64-bit, offset 0x28.
pub const REG_ASQ: usize = 0x28;
/// Admin Completion Queue base address (ACQ), 64-bit, offset 0x30.
pub const REG_ACQ: usize = 0x30;
/// First doorbell register (section 3.1.24).
pub const REG_DOORBELL_BASE: usize = 0x1000;

/// CC.EN: enable.
pub const CC_ENABLE: u32 = 1 << 0;
/// CC.IOSQES = 6 (64-byte submission entries), bits 19:16.
pub const CC_IOSQES_64: u32 = 6 << 16;
/// CC.IOCQES = 4 (16-byte completion entries), bits 23:20.
pub const CC_IOCQES_16: u32 = 4 << 20;
/// CC.SHN: normal shutdown notification, bits 15:14 = 01b.
pub const CC_SHN_NORMAL: u32 = 1 << 14;
/// CC.SHN field mask.
pub const CC_SHN_MASK: u32 = 3 << 14;
/// CSTS.RDY: ready.
pub const CSTS_READY: u32 = 1 << 0;
/// CSTS.CFS: controller fatal status.
pub const CSTS_FATAL: u32 = 1 << 1;
/// CSTS.SHST = 10b: shutdown processing complete.
pub const CSTS_SHST_COMPLETE: u32 = 2 << 2;
/// CSTS.SHST field mask.
pub const CSTS_SHST_MASK: u32 = 3 << 2;

/// Fields of the CAP register.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capabilities(pub u64);

impl Capabilities {
    /// Maximum queue entries supported (CAP.MQES is 0-based).
    pub const fn max_queue_entries(self) -> u32 {
        (self.0 & 0xffff) as u32 + 1
    }
    /// Worst-case time to become ready, in milliseconds (CAP.TO, 500 ms units).
    pub const fn timeout_ms(self) -> u64 {
        ((self.0 >> 24) & 0xff) * 500
    }
    /// Doorbell stride in bytes (4 << CAP.DSTRD).
    pub const fn doorbell_stride(self) -> usize {
        4 << ((self.0 >> 32) & 0xf)
    }
    /// Builds a CAP value (used by device implementations).
    pub const fn build(max_entries: u32, timeout_500ms: u8, dstrd: u8) -> Self {
        Self(
            ((max_entries - 1) as u64 & 0xffff)
                | (1 << 16) // CQR: queues must be physically contiguous
                | ((timeout_500ms as u64) << 24)
                | (((dstrd & 0xf) as u64) << 32)
                | (1 << 37), // CSS: NVM command set
        )
    }
}

/// Offset of submission queue `qid`'s tail doorbell.
pub const fn sq_tail_doorbell(qid: u16, stride: usize) -> usize {
    REG_DOORBELL_BASE + (2 * qid as usize) * stride
}

/// Offset of completion queue `qid`'s head doorbell.
pub const fn cq_head_doorbell(qid: u16, stride: usize) -> usize {
    REG_DOORBELL_BASE + (2 * qid as usize + 1) * stride
}

/// A 64-byte submission queue entry (Figure 88 of the base spec).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SubmissionEntry {
    /// Opcode (bits 7:0), fused (9:8), PSDT (15:14), command id (31:16).
    pub cdw0: u32,
    /// Namespace id.
    pub nsid: u32,
    /// Command dword 2.
    pub cdw2: u32,
    /// Command dword 3.
    pub cdw3: u32,
    /// Metadata pointer.
    pub mptr: u64,
    /// PRP entry 1.
    pub prp1: u64,
    /// PRP entry 2 (or PRP list pointer).
    pub prp2: u64,
    /// Command dwords 10..=15.
    pub cdw10: u32,
    pub cdw11: u32,
    pub cdw12: u32,
    pub cdw13: u32,
    pub cdw14: u32,
    pub cdw15: u32,
}

const _: () = assert!(std::mem::size_of::<SubmissionEntry>() == 64);

impl SubmissionEntry {
    /// A zeroed entry with `opcode` and command id set.
    pub const fn new(opcode: u8, cid: u16) -> Self {
        Self {
            cdw0: opcode as u32 | ((cid as u32) << 16),
            nsid: 0,
            cdw2: 0,
            cdw3: 0,
            mptr: 0,
            prp1: 0,
            prp2: 0,
            cdw10: 0,
            cdw11: 0,
            cdw12: 0,
            cdw13: 0,
            cdw14: 0,
            cdw15: 0,
        }
    }
    /// The opcode.
    pub const fn opcode(&self) -> u8 {
        (self.cdw0 & 0xff) as u8
    }
    /// The command id.
    pub const fn cid(&self) -> u16 {
        (self.cdw0 >> 16) as u16
    }
    /// Replaces the command id.
    pub fn set_cid(&mut self, cid: u16) {
        self.cdw0 = (self.cdw0 & 0xffff) | ((cid as u32) << 16);
    }
    /// cdw10 and cdw11 as one 64-bit value (an address or a PPA).
    pub const fn cdw10_11(&self) -> u64 {
        self.cdw10 as u64 | ((self.cdw11 as u64) << 32)
    }
    /// Sets cdw10 and cdw11 from one 64-bit value.
    pub fn set_cdw10_11(&mut self, value: u64) {
        self.cdw10 = value as u32;
        self.cdw11 = (value >> 32) as u32;
    }
}

/// A 16-byte completion queue entry (Figure 92 of the base spec).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CompletionEntry {
    /// Command specific dword 0.
    pub dw0: u32,
    /// Command specific dword 1.
    pub dw1: u32,
    /// Submission queue head pointer at the time of completion.
    pub sq_head: u16,
    /// Submission queue the command came from.
    pub sq_id: u16,
    /// Command id.
    pub cid: u16,
    /// Phase tag (bit 0) and status field (bits 15:1).
    pub status: u16,
}

const _: () = assert!(std::mem::size_of::<CompletionEntry>() == 16);

impl CompletionEntry {
    /// Phase tag.
    pub const fn phase(&self) -> bool {
        self.status & 1 == 1
    }
    /// Status without the phase bit: SC in bits 7:0, SCT in bits 10:8.
    pub const fn status_code(&self) -> Status {
        Status((self.status >> 1) & 0x7ff)
    }
    /// Whether the command succeeded (SCT 0, SC 0).
    pub const fn is_success(&self) -> bool {
        self.status_code().0 == 0
    }
}

/// A status field value: status code type (bits 10:8) and status code (bits 7:0).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Status(pub u16);

impl Status {
    /// Builds a status from its type and code.
    pub const fn new(sct: u8, sc: u8) -> Self {
        Self(((sct as u16 & 0x7) << 8) | sc as u16)
    }
    /// Status code type.
    pub const fn sct(self) -> u8 {
        (self.0 >> 8) as u8 & 0x7
    }
    /// Status code.
    pub const fn sc(self) -> u8 {
        self.0 as u8
    }
    /// The CQE status field (without phase) for this status.
    pub const fn to_field(self) -> u16 {
        self.0 << 1
    }
}

/// Status code types.
pub mod sct {
    /// Generic command status.
    pub const GENERIC: u8 = 0;
    /// Command specific status.
    pub const COMMAND_SPECIFIC: u8 = 1;
    /// Media and data integrity errors.
    pub const MEDIA: u8 = 2;
}

/// Generic status codes (SCT 0), Figure 94.
pub mod generic {
    use super::Status;
    pub const SUCCESS: Status = Status::new(0, 0x00);
    pub const INVALID_OPCODE: Status = Status::new(0, 0x01);
    pub const INVALID_FIELD: Status = Status::new(0, 0x02);
    pub const DATA_TRANSFER_ERROR: Status = Status::new(0, 0x04);
    pub const ABORTED_POWER_LOSS: Status = Status::new(0, 0x05);
    pub const INTERNAL_ERROR: Status = Status::new(0, 0x06);
    pub const LBA_OUT_OF_RANGE: Status = Status::new(0, 0x80);
}

/// Command specific status codes (SCT 1), Figure 95.
pub mod command_specific {
    use super::Status;
    pub const INVALID_QUEUE_ID: Status = Status::new(1, 0x01);
    pub const INVALID_QUEUE_SIZE: Status = Status::new(1, 0x02);
    pub const INVALID_LOG_PAGE: Status = Status::new(1, 0x09);
}

/// Admin command opcodes (Figure 139).
pub mod admin_opcode {
    pub const DELETE_IO_SQ: u8 = 0x00;
    pub const CREATE_IO_SQ: u8 = 0x01;
    pub const GET_LOG_PAGE: u8 = 0x02;
    pub const DELETE_IO_CQ: u8 = 0x04;
    pub const CREATE_IO_CQ: u8 = 0x05;
    pub const IDENTIFY: u8 = 0x06;
}

/// Identify CNS value for the controller data structure.
pub const CNS_CONTROLLER: u32 = 0x01;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cap_fields_round_trip() {
        let cap = Capabilities::build(1024, 20, 0);
        assert_eq!(cap.max_queue_entries(), 1024);
        assert_eq!(cap.timeout_ms(), 10_000);
        assert_eq!(cap.doorbell_stride(), 4);
        assert_eq!(sq_tail_doorbell(1, 4), 0x1008);
        assert_eq!(cq_head_doorbell(1, 4), 0x100c);
    }

    #[test]
    fn status_field_layout_matches_spec() {
        let cqe = CompletionEntry {
            status: command_specific::INVALID_QUEUE_SIZE.to_field() | 1,
            ..Default::default()
        };
        assert!(cqe.phase());
        assert_eq!(cqe.status_code().sct(), sct::COMMAND_SPECIFIC);
        assert_eq!(cqe.status_code().sc(), 0x02);
        assert!(!cqe.is_success());
    }

    #[test]
    fn sqe_cid_and_dwords() {
        let mut sqe = SubmissionEntry::new(0x92, 7);
        assert_eq!(sqe.opcode(), 0x92);
        assert_eq!(sqe.cid(), 7);
        sqe.set_cid(0xbeef);
        assert_eq!(sqe.cid(), 0xbeef);
        assert_eq!(sqe.opcode(), 0x92);
        sqe.set_cdw10_11(0x1122_3344_5566_7788);
        assert_eq!(sqe.cdw10_11(), 0x1122_3344_5566_7788);
    }
}
