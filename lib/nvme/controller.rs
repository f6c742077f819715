//! Host side of controller bring-up (NVMe base spec section 3.5.1:
//! "Memory-based Controller Initialization") and the admin queue.

use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use super::mmio::Mmio;
use super::qpair::{QueuePair, Scratch, SubmitFailure};
use super::spec::*;
use super::NvmeError;
use crate::dma::IovaSpace;

/// How long an admin command may take before we call the device hung.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(10);

/// State shared by a controller handle and the I/O queue pairs it created
/// (so a dropped queue pair can delete itself on the device).
pub struct ControllerShared {
    mmio: Mmio,
    cap: Capabilities,
    admin: Mutex<QueuePair>,
    queue_ids: Mutex<Vec<bool>>,
}

impl std::fmt::Debug for ControllerShared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControllerShared")
            .field("cap", &self.cap)
            .finish()
    }
}

impl ControllerShared {
    /// Runs one admin command to completion. `build` fills the entry and may
    /// use the command's DMA scratch area.
    pub fn admin_with(
        &self,
        build: impl FnOnce(Scratch) -> SubmissionEntry,
    ) -> Result<CompletionEntry, NvmeError> {
        let mut admin = self.admin.lock();
        let cid = admin
            .submit_with::<std::convert::Infallible>(0, |_, scratch| Ok(build(scratch)))
            .map_err(|e| match e {
                SubmitFailure::Full | SubmitFailure::Build(_) => NvmeError::AdminQueueFull,
            })?;
        admin.ring();
        let deadline = Instant::now() + ADMIN_TIMEOUT;
        let mut result = None;
        loop {
            admin.poll(1, |_, cqe| result = Some(*cqe));
            if let Some(cqe) = result {
                if cqe.cid != cid {
                    return Err(NvmeError::Protocol("admin completion for another command id"));
                }
                return Ok(cqe);
            }
            if self.mmio.read32(REG_CSTS) & CSTS_FATAL != 0 {
                return Err(NvmeError::ControllerFatal);
            }
            if Instant::now() > deadline {
                return Err(NvmeError::Timeout("admin command"));
            }
            std::hint::spin_loop();
        }
    }

    /// Runs an admin command and turns a failed status into an error.
    pub fn admin_checked(
        &self,
        what: &'static str,
        build: impl FnOnce(Scratch) -> SubmissionEntry,
    ) -> Result<CompletionEntry, NvmeError> {
        let cqe = self.admin_with(build)?;
        if cqe.is_success() {
            Ok(cqe)
        } else {
            Err(NvmeError::CommandFailed {
                what,
                status: cqe.status_code(),
            })
        }
    }

    pub(crate) fn delete_io_queues(&self, qid: u16) {
        // Errors are ignored on purpose: after a power cut or a controller
        // reset there is nothing left to delete, and a drop cannot fail.
        let _ = self.admin_with(|_| {
            let mut sqe = SubmissionEntry::new(admin_opcode::DELETE_IO_SQ, 0);
            sqe.cdw10 = qid as u32;
            sqe
        });
        let _ = self.admin_with(|_| {
            let mut sqe = SubmissionEntry::new(admin_opcode::DELETE_IO_CQ, 0);
            sqe.cdw10 = qid as u32;
            sqe
        });
        if let Some(slot) = self.queue_ids.lock().get_mut(qid as usize) {
            *slot = false;
        }
    }
}

/// An enabled controller with its admin queue.
#[derive(Debug, Clone)]
pub struct Controller {
    shared: Arc<ControllerShared>,
    space: Arc<IovaSpace>,
}

impl Controller {
    /// Resets and enables the controller behind `mmio`, with an admin queue
    /// of `admin_depth` entries in memory from `space`.
    pub fn enable(mmio: Mmio, space: Arc<IovaSpace>, admin_depth: u16) -> Result<Self, NvmeError> {
        let cap = Capabilities(mmio.read64(REG_CAP));
        let timeout = Duration::from_millis(cap.timeout_ms().max(500));
        // 1. Disable and wait for CSTS.RDY = 0 (section 3.5.1, step 1).
        if mmio.read32(REG_CC) & CC_ENABLE != 0 {
            mmio.write32(REG_CC, 0);
        }
        wait_for(&mmio, timeout, "controller disable", |csts| csts & CSTS_READY == 0)?;
        // 2. Admin queue attributes and base addresses (step 2).
        let admin_depth = admin_depth.clamp(2, cap.max_queue_entries().min(4096) as u16);
        let admin = QueuePair::allocate(0, admin_depth, mmio.clone(), cap.doorbell_stride(), &space)?;
        let depth0 = admin_depth as u32 - 1;
        mmio.write32(REG_AQA, depth0 | (depth0 << 16));
        mmio.write64(REG_ASQ, admin.sq_iova());
        mmio.write64(REG_ACQ, admin.cq_iova());
        // 3. Configure and enable (steps 3-4), then wait for ready. A
        // controller with I/O command sets beyond NVM (CAP.CSS bit 6, e.g.
        // zoned namespaces) gets CC.CSS = 110b so all of them are enabled.
        let css = if cap.0 & (1 << 43) != 0 { 0b110 << 4 } else { 0 };
        mmio.write32(REG_CC, CC_ENABLE | CC_IOSQES_64 | CC_IOCQES_16 | css);
        wait_for(&mmio, timeout, "controller enable", |csts| {
            csts & (CSTS_READY | CSTS_FATAL) != 0
        })?;
        if mmio.read32(REG_CSTS) & CSTS_FATAL != 0 {
            return Err(NvmeError::ControllerFatal);
        }
        let max_queues = 1024;
        let mut ids = vec![false; max_queues];
        ids[0] = true;
        Ok(Self {
            shared: Arc::new(ControllerShared {
                mmio,
                cap,
                admin: Mutex::new(admin),
                queue_ids: Mutex::new(ids),
            }),
            space,
        })
    }

    /// Capabilities register as read at enable time.
    pub fn capabilities(&self) -> Capabilities {
        self.shared.cap
    }

    /// The memory space queues and buffers are allocated in.
    pub fn dma_space(&self) -> &Arc<IovaSpace> {
        &self.space
    }

    /// The register region.
    pub fn mmio(&self) -> &Mmio {
        &self.shared.mmio
    }

    /// Runs one admin command (see [`ControllerShared::admin_with`]).
    pub fn admin_with(
        &self,
        build: impl FnOnce(Scratch) -> SubmissionEntry,
    ) -> Result<CompletionEntry, NvmeError> {
        self.shared.admin_with(build)
    }

    /// Runs one admin command, failing on a non-success status.
    pub fn admin_checked(
        &self,
        what: &'static str,
        build: impl FnOnce(Scratch) -> SubmissionEntry,
    ) -> Result<CompletionEntry, NvmeError> {
        self.shared.admin_checked(what, build)
    }

    /// Creates an I/O completion queue and submission queue pair of `depth`
    /// entries (Create I/O CQ, then Create I/O SQ bound to it). Dropping
    /// the returned pair deletes both on the device.
    pub fn create_io_queue_pair(&self, depth: u16) -> Result<QueuePair, NvmeError> {
        let max = self.shared.cap.max_queue_entries().min(u16::MAX as u32) as u16;
        if depth < 2 || depth > max {
            return Err(NvmeError::InvalidQueueDepth { depth, max });
        }
        let qid = {
            let mut ids = self.shared.queue_ids.lock();
            let qid = ids.iter().position(|used| !used).ok_or(NvmeError::NoFreeQueueId)?;
            ids[qid] = true;
            qid as u16
        };
        let release = |e: NvmeError| {
            self.shared.queue_ids.lock()[qid as usize] = false;
            e
        };
        let qp = QueuePair::allocate(
            qid,
            depth,
            self.shared.mmio.clone(),
            self.shared.cap.doorbell_stride(),
            &self.space,
        )
        .map_err(release)?;
        let (cq_iova, sq_iova) = (qp.cq_iova(), qp.sq_iova());
        let size0 = depth as u32 - 1;
        self.admin_checked("create I/O completion queue", |_| {
            let mut sqe = SubmissionEntry::new(admin_opcode::CREATE_IO_CQ, 0);
            sqe.prp1 = cq_iova;
            sqe.cdw10 = qid as u32 | (size0 << 16);
            sqe.cdw11 = 1; // physically contiguous, interrupts disabled
            sqe
        })
        .map_err(release)?;
        if let Err(e) = self.admin_checked("create I/O submission queue", |_| {
            let mut sqe = SubmissionEntry::new(admin_opcode::CREATE_IO_SQ, 0);
            sqe.prp1 = sq_iova;
            sqe.cdw10 = qid as u32 | (size0 << 16);
            sqe.cdw11 = 1 | ((qid as u32) << 16); // contiguous, CQ id
            sqe
        }) {
            let _ = self.shared.admin_with(|_| {
                let mut sqe = SubmissionEntry::new(admin_opcode::DELETE_IO_CQ, 0);
                sqe.cdw10 = qid as u32;
                sqe
            });
            return Err(release(e));
        }
        let mut qp = qp;
        qp.set_owner(self.shared.clone());
        Ok(qp)
    }

    /// Normal shutdown notification (section 3.6.1): the device finishes
    /// what it accepted and reports shutdown complete.
    pub fn shutdown(&self) -> Result<(), NvmeError> {
        let mmio = &self.shared.mmio;
        let cc = mmio.read32(REG_CC);
        mmio.write32(REG_CC, (cc & !CC_SHN_MASK) | CC_SHN_NORMAL);
        let timeout = Duration::from_millis(self.shared.cap.timeout_ms().max(500));
        wait_for(mmio, timeout, "controller shutdown", |csts| {
            csts & CSTS_SHST_MASK == CSTS_SHST_COMPLETE
        })
    }
}

fn wait_for(
    mmio: &Mmio,
    timeout: Duration,
    what: &'static str,
    done: impl Fn(u32) -> bool,
) -> Result<(), NvmeError> {
    let deadline = Instant::now() + timeout;
    loop {
        if done(mmio.read32(REG_CSTS)) {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(NvmeError::Timeout(what));
        }
        std::thread::sleep(Duration::from_micros(50));
    }
}
