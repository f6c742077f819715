//! Host side of the card command set: a [`Card`] (admin commands, shared)
//! and per-thread [`CardQueue`]s (I/O commands, lock-free).

use std::sync::Arc;

use super::protocol::{
    log_page, opcode, BlockInfoEntry, CardStatus, Column, HealthLog, IdentifyData, BLOCK_INFO_ENTRY_BYTES,
    HEALTH_BYTES, IDENTIFY_BYTES, MAX_PAGES_PER_COMMAND,
};
use super::{Geometry, Ppa};
use crate::dma::{DmaError, DmaRegion, IovaSpace};
use crate::emu::{EmuController, EmuError, EmuOptions, NandArray};
use crate::nvme::spec::{admin_opcode, SubmissionEntry, CNS_CONTROLLER};
use crate::nvme::{Controller, Mmio, NvmeError, QueuePair, SubmitFailure};

/// Admin queue depth: admin commands are rare and synchronous.
const ADMIN_QUEUE_DEPTH: u16 = 16;
/// Namespace id the card's I/O commands carry (the card has one flash array).
const NSID: u32 = 1;

/// Errors opening or managing a card.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CardError {
    /// The queue/controller layer failed.
    #[error(transparent)]
    Nvme(#[from] NvmeError),
    /// The emulated card could not be built.
    #[error(transparent)]
    Emu(#[from] EmuError),
    /// DMA memory could not be had.
    #[error(transparent)]
    Dma(#[from] DmaError),
    /// The device answered with something that is not this protocol.
    #[error("device does not speak the ioMemory raw-flash protocol: {0}")]
    Protocol(String),
    /// A caller passed something impossible.
    #[error("invalid request: {0}")]
    InvalidArgument(String),
}

/// An attached card: identity, geometry, admin commands, and the factory
/// for per-thread I/O queues. Share it as `Arc<Card>`.
pub struct Card {
    controller: Controller,
    identify: IdentifyData,
    emulator: Option<Arc<EmuController>>,
}

impl std::fmt::Debug for Card {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Card")
            .field("model", &self.identify.identity.model)
            .field("serial", &self.identify.identity.serial)
            .field("emulated", &self.emulator.is_some())
            .finish()
    }
}

impl Card {
    /// Powers up an emulated controller over `nand` and brings it up
    /// through the same register and queue path a real card uses.
    pub fn open_emulated(nand: Arc<NandArray>, opts: EmuOptions) -> Result<Arc<Card>, CardError> {
        let space = Arc::new(IovaSpace::new());
        let emulator = EmuController::new(nand, space.clone(), opts)?;
        let mmio = emulator.host_mmio();
        let mut card = Self::open(mmio, space)?;
        card.emulator = Some(emulator);
        Ok(Arc::new(card))
    }

    /// Brings up a controller behind `mmio` whose DMA goes through `space`,
    /// and checks that it speaks this protocol (identify signature).
    pub fn open(mmio: Mmio, space: Arc<IovaSpace>) -> Result<Card, CardError> {
        let controller = Controller::enable(mmio, space, ADMIN_QUEUE_DEPTH)?;
        let buf = DmaRegion::allocate_small(controller.dma_space(), IDENTIFY_BYTES)?;
        let iova = buf.iova();
        controller.admin_checked("identify", |_| {
            let mut sqe = SubmissionEntry::new(admin_opcode::IDENTIFY, 0);
            sqe.prp1 = iova;
            sqe.cdw10 = CNS_CONTROLLER;
            sqe
        })?;
        let mut raw = vec![0u8; IDENTIFY_BYTES];
        buf.copy_out(0, &mut raw)?;
        let identify = IdentifyData::decode(&raw).map_err(CardError::Protocol)?;
        Ok(Card {
            controller,
            identify,
            emulator: None,
        })
    }

    /// The flash geometry.
    pub fn geometry(&self) -> Geometry {
        self.identify.geometry
    }

    /// Identify data as read at open time.
    pub fn identify(&self) -> &IdentifyData {
        &self.identify
    }

    /// Reads the health log (sensors and lifetime counters).
    pub fn health(&self) -> Result<HealthLog, CardError> {
        let raw = self.get_log_page(log_page::HEALTH, 0, HEALTH_BYTES)?;
        HealthLog::decode(&raw).map_err(CardError::Protocol)
    }

    /// Reads block information for `count` blocks of `die` starting at
    /// `first_block`.
    pub fn block_info(
        &self,
        die: u32,
        first_block: u32,
        count: u32,
    ) -> Result<Vec<BlockInfoEntry>, CardError> {
        let g = self.geometry();
        if die >= g.dies() || first_block as u64 + count as u64 > g.blocks_per_die as u64 {
            return Err(CardError::InvalidArgument(format!(
                "blocks {first_block}..{} of die {die} are outside the card ({} dies x {} blocks)",
                first_block as u64 + count as u64,
                g.dies(),
                g.blocks_per_die
            )));
        }
        let per_call = 4096 / BLOCK_INFO_ENTRY_BYTES as u32;
        let mut out = Vec::with_capacity(count as usize);
        let mut next = first_block;
        while next < first_block + count {
            let n = per_call.min(first_block + count - next);
            let linear = die as u64 * g.blocks_per_die as u64 + next as u64;
            let raw = self.get_log_page(
                log_page::BLOCK_INFO,
                linear * BLOCK_INFO_ENTRY_BYTES as u64,
                n as usize * BLOCK_INFO_ENTRY_BYTES,
            )?;
            for chunk in raw.chunks_exact(BLOCK_INFO_ENTRY_BYTES) {
                out.push(BlockInfoEntry::decode(chunk).map_err(CardError::Protocol)?);
            }
            next += n;
        }
        Ok(out)
    }

    fn get_log_page(&self, lid: u8, offset: u64, len: usize) -> Result<Vec<u8>, CardError> {
        if len == 0 || len > 4096 || len % 4 != 0 {
            return Err(CardError::InvalidArgument(format!("log page read of {len} bytes")));
        }
        let buf = DmaRegion::allocate_small(self.controller.dma_space(), 4096)?;
        let iova = buf.iova();
        let dwords0 = (len / 4 - 1) as u32;
        self.controller.admin_checked("get log page", |_| {
            let mut sqe = SubmissionEntry::new(admin_opcode::GET_LOG_PAGE, 0);
            sqe.nsid = u32::MAX;
            sqe.prp1 = iova;
            sqe.cdw10 = lid as u32 | ((dwords0 & 0xffff) << 16);
            sqe.cdw11 = dwords0 >> 16;
            sqe.cdw12 = offset as u32;
            sqe.cdw13 = (offset >> 32) as u32;
            sqe
        })?;
        let mut raw = vec![0u8; len];
        buf.copy_out(0, &mut raw)?;
        Ok(raw)
    }

    /// Creates an I/O queue pair of `depth` entries for the calling thread.
    pub fn create_io_queue(&self, depth: u16) -> Result<CardQueue, CardError> {
        let qp = self.controller.create_io_queue_pair(depth)?;
        Ok(CardQueue {
            qp,
            geometry: self.geometry(),
        })
    }

    /// The DMA space the card may touch: allocate buffers from it.
    pub fn dma(&self) -> &Arc<IovaSpace> {
        self.controller.dma_space()
    }

    /// The emulated controller behind this card, for fault injection.
    pub fn emulator(&self) -> Option<&Arc<EmuController>> {
        self.emulator.as_ref()
    }

    /// The controller (register access, admin commands).
    pub fn controller(&self) -> &Controller {
        &self.controller
    }
}

impl Drop for Card {
    fn drop(&mut self) {
        // Normal shutdown: the card finishes what it accepted and persists
        // its state. Failure (device already gone) leaves nothing to do.
        let _ = self.controller.shutdown();
    }
}

/// A completed I/O command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Completion {
    /// The caller's tag from submission.
    pub tag: u64,
    /// Outcome (for vector commands, the worst page's).
    pub status: CardStatus,
    /// Bits ECC corrected across the command's pages (reads).
    pub corrected_bits: u32,
    /// Bit i set: page i of the command failed.
    pub failed_mask: u64,
}

/// Why an I/O command was not submitted. Nothing was queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SubmitError {
    /// Every slot is in flight: poll, then retry.
    #[error("card queue full: poll for completions and retry")]
    QueueFull,
    /// More pages than one command carries.
    #[error("{given} pages in one command; the card takes at most {max}")]
    TooManyPages {
        /// Requested.
        given: usize,
        /// Limit.
        max: usize,
    },
    /// Malformed request.
    #[error("invalid card command: {0}")]
    Invalid(&'static str),
}

/// One I/O queue pair for one thread: vector read, program, erase, flush.
/// No locks, no allocation; one doorbell per [`CardQueue::ring`].
#[derive(Debug)]
pub struct CardQueue {
    qp: QueuePair,
    geometry: Geometry,
}

impl CardQueue {
    /// Most pages one command may carry.
    pub const MAX_PAGES: usize = MAX_PAGES_PER_COMMAND;

    /// Queues a vector read of `ppas` into `data` (one IOVA per page; empty
    /// for an OOB-only read) with OOB into `oob` (n × oob_size bytes).
    pub fn read(
        &mut self,
        ppas: &[Ppa],
        data: &[u64],
        oob: Option<u64>,
        tag: u64,
    ) -> Result<(), SubmitError> {
        if !data.is_empty() && data.len() != ppas.len() {
            return Err(SubmitError::Invalid("read needs one data address per page, or none"));
        }
        if data.is_empty() && oob.is_none() {
            return Err(SubmitError::Invalid("read with neither data nor OOB buffer"));
        }
        self.vector(opcode::VECTOR_READ, ppas, data, oob, 0, tag)
    }

    /// Queues a column read: only `column` of each page of `ppas` is
    /// transferred, into `data` (one IOVA per page, each receiving the
    /// column's bytes and nothing more), with the whole OOB of each page
    /// into `oob` (n × oob_size bytes) if given. See [`Column`].
    pub fn read_column(
        &mut self,
        ppas: &[Ppa],
        data: &[u64],
        column: Column,
        oob: Option<u64>,
        tag: u64,
    ) -> Result<(), SubmitError> {
        if data.len() != ppas.len() {
            return Err(SubmitError::Invalid("a column read needs one data address per page"));
        }
        if column.byte_range(self.geometry.page_size as usize).is_none() {
            return Err(SubmitError::Invalid("column outside the card's page (or empty)"));
        }
        self.vector(opcode::VECTOR_READ, ppas, data, oob, column.to_wire(), tag)
    }

    /// Queues a vector program of `ppas` from `data` (one IOVA per page)
    /// with OOB from `oob`.
    pub fn program(
        &mut self,
        ppas: &[Ppa],
        data: &[u64],
        oob: Option<u64>,
        tag: u64,
    ) -> Result<(), SubmitError> {
        if data.len() != ppas.len() {
            return Err(SubmitError::Invalid("program needs one data address per page"));
        }
        self.vector(opcode::VECTOR_PROGRAM, ppas, data, oob, 0, tag)
    }

    /// Queues an erase of one block.
    pub fn erase(&mut self, die: u32, block: u32, tag: u64) -> Result<(), SubmitError> {
        self.vector(opcode::VECTOR_ERASE, &[Ppa::new(die, block, 0)], &[], None, 0, tag)
    }

    /// Queues a flush: completes when every program completed before it is
    /// durable on NAND.
    pub fn flush(&mut self, tag: u64) -> Result<(), SubmitError> {
        let mut sqe = SubmissionEntry::new(opcode::FLUSH, 0);
        sqe.nsid = NSID;
        self.qp.submit(sqe, tag).map_err(|_| SubmitError::QueueFull)?;
        Ok(())
    }

    fn vector(
        &mut self,
        op: u8,
        ppas: &[Ppa],
        data: &[u64],
        oob: Option<u64>,
        cdw13: u32,
        tag: u64,
    ) -> Result<(), SubmitError> {
        let n = ppas.len();
        if n == 0 {
            return Err(SubmitError::Invalid("a vector command needs at least one address"));
        }
        if n > Self::MAX_PAGES {
            return Err(SubmitError::TooManyPages {
                given: n,
                max: Self::MAX_PAGES,
            });
        }
        if ppas.iter().any(|p| !self.geometry.contains(*p)) {
            return Err(SubmitError::Invalid("physical address outside the card's geometry"));
        }
        let result = self.qp.submit_with(tag, |_, scratch| {
            let mut sqe = SubmissionEntry::new(op, 0);
            sqe.nsid = NSID;
            sqe.cdw12 = (n - 1) as u32;
            sqe.cdw13 = cdw13;
            if n == 1 {
                sqe.set_cdw10_11(ppas[0].to_wire());
            } else {
                let mut wire = [0u64; MAX_PAGES_PER_COMMAND];
                for (w, p) in wire.iter_mut().zip(ppas) {
                    *w = p.to_wire();
                }
                let list = scratch
                    .write_u64_list(&wire[..n], 0)
                    .ok_or(SubmitError::Invalid("address list does not fit"))?;
                sqe.set_cdw10_11(list);
            }
            match data.len() {
                0 => {}
                1 => sqe.prp1 = data[0],
                2 => {
                    sqe.prp1 = data[0];
                    sqe.prp2 = data[1];
                }
                _ => {
                    sqe.prp1 = data[0];
                    sqe.prp2 = scratch
                        .write_u64_list(&data[1..], 8 * MAX_PAGES_PER_COMMAND)
                        .ok_or(SubmitError::Invalid("PRP list does not fit"))?;
                }
            }
            sqe.mptr = oob.unwrap_or(0);
            Ok(sqe)
        });
        match result {
            Ok(_) => Ok(()),
            Err(SubmitFailure::Full) => Err(SubmitError::QueueFull),
            Err(SubmitFailure::Build(e)) => Err(e),
        }
    }

    /// Rings the doorbell once for everything queued since the last ring.
    #[inline]
    pub fn ring(&mut self) {
        self.qp.ring();
    }

    /// Reaps up to `max` completions.
    #[inline]
    pub fn poll(&mut self, max: usize, mut f: impl FnMut(Completion)) -> usize {
        self.qp.poll(max, |tag, cqe| {
            let status = CardStatus::from_status(cqe.status_code());
            let (corrected_bits, failed_mask) = if status.is_ok() {
                (cqe.dw0, 0)
            } else {
                (0, cqe.dw0 as u64 | ((cqe.dw1 as u64) << 32))
            };
            f(Completion {
                tag,
                status,
                corrected_bits,
                failed_mask,
            })
        })
    }

    /// Free command slots.
    pub fn free_slots(&self) -> usize {
        self.qp.free_slots()
    }

    /// Commands in flight.
    pub fn outstanding(&self) -> usize {
        self.qp.outstanding()
    }

    /// Commands queued but not yet announced with [`Self::ring`].
    pub fn unrung(&self) -> u16 {
        self.qp.unrung()
    }

    /// The card geometry.
    pub fn geometry(&self) -> Geometry {
        self.geometry
    }

    /// The underlying queue pair (queue id, depth, spurious completions).
    pub fn queue_pair(&self) -> &QueuePair {
        &self.qp
    }
}
