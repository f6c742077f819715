//! A card queue with its own DMA buffers for the VSL's management paths
//! (format, metadata log, checkpoints, recovery scans): command slots that
//! each own room for a full vector command's data and OOB, with batched
//! submission and a blocking wait.
//!
//! The data path (channels, groomer) does not use this; it is for work
//! where simplicity beats the last microsecond.

use std::time::{Duration, Instant};

use crate::card::{Card, CardQueue, CardStatus, Completion, Ppa, SubmitError};
use crate::dma::DmaRegion;

use super::error::VslError;

/// Pages per command slot.
pub const SLOT_PAGES: usize = CardQueue::MAX_PAGES;

/// How long a management command may take before the card is declared hung.
const WAIT_LIMIT: Duration = Duration::from_secs(60);

/// A card queue plus per-slot DMA buffers.
pub struct SlotIo {
    q: CardQueue,
    data: Option<DmaRegion>,
    oob: DmaRegion,
    page_size: usize,
    oob_size: usize,
    slots: usize,
}

impl std::fmt::Debug for SlotIo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SlotIo").field("slots", &self.slots).finish()
    }
}

impl SlotIo {
    /// A queue with `slots` command slots; with `with_data`, each slot also
    /// has room for [`SLOT_PAGES`] pages of data.
    pub fn new(card: &Card, slots: usize, with_data: bool) -> Result<Self, VslError> {
        let g = card.geometry();
        let page_size = g.page_size as usize;
        let oob_size = g.oob_size as usize;
        let depth = u16::try_from((slots + 1).max(2)).unwrap_or(u16::MAX);
        let q = card.create_io_queue(depth)?;
        let data = if with_data {
            Some(DmaRegion::allocate(card.dma(), slots * SLOT_PAGES * page_size)?)
        } else {
            None
        };
        let oob = DmaRegion::allocate(card.dma(), slots * SLOT_PAGES * oob_size)?;
        Ok(Self {
            q,
            data,
            oob,
            page_size,
            oob_size,
            slots,
        })
    }

    /// Number of command slots.
    pub fn slots(&self) -> usize {
        self.slots
    }

    /// IOVA of page `i` of `slot`'s data area (needs `with_data`).
    fn data_iova(&self, slot: usize, i: usize) -> Option<u64> {
        self.data
            .as_ref()
            .and_then(|d| d.iova_of((slot * SLOT_PAGES + i) * self.page_size))
    }

    fn oob_iova(&self, slot: usize) -> u64 {
        self.oob.iova() + (slot * SLOT_PAGES * self.oob_size) as u64
    }

    /// Copies page `i` of `slot`'s data area into `out` (`out.len() <= page_size`).
    pub fn copy_data(&self, slot: usize, i: usize, out: &mut [u8]) {
        if let Some(d) = &self.data {
            let n = out.len().min(self.page_size);
            let _ = d.copy_out((slot * SLOT_PAGES + i) * self.page_size, &mut out[..n]);
        }
    }

    /// Copies the OOB of page `i` of `slot` into `out`.
    pub fn copy_oob(&self, slot: usize, i: usize, out: &mut [u8]) {
        let n = out.len().min(self.oob_size);
        let _ = self.oob.copy_out((slot * SLOT_PAGES + i) * self.oob_size, &mut out[..n]);
    }

    /// Fills page `i` of `slot`'s data area (zero-padded to a page).
    pub fn fill_data(&mut self, slot: usize, i: usize, bytes: &[u8]) {
        let page_size = self.page_size;
        if let Some(d) = &mut self.data {
            let at = (slot * SLOT_PAGES + i) * page_size;
            let n = bytes.len().min(page_size);
            let _ = d.fill(at, &bytes[..n]);
            if n < page_size {
                let _ = d.fill(at + n, &vec![0u8; page_size - n]);
            }
        }
    }

    /// Fills the OOB of page `i` of `slot` (zero-padded).
    pub fn fill_oob(&mut self, slot: usize, i: usize, bytes: &[u8]) {
        let at = (slot * SLOT_PAGES + i) * self.oob_size;
        let mut padded = vec![0u8; self.oob_size];
        let n = bytes.len().min(self.oob_size);
        padded[..n].copy_from_slice(&bytes[..n]);
        let _ = self.oob.fill(at, &padded);
    }

    /// Queues a read of `ppas` into `slot` (data too if the slot has room).
    pub fn submit_read(&mut self, slot: usize, ppas: &[Ppa], with_data: bool) -> Result<(), SubmitError> {
        let mut iovas = [0u64; SLOT_PAGES];
        let n = ppas.len().min(SLOT_PAGES);
        let data: &[u64] = if with_data {
            for (i, v) in iovas.iter_mut().enumerate().take(n) {
                *v = self.data_iova(slot, i).ok_or(SubmitError::Invalid("slot has no data area"))?;
            }
            &iovas[..n]
        } else {
            &[]
        };
        self.q.read(&ppas[..n], data, Some(self.oob_iova(slot)), slot as u64)
    }

    /// Queues a program of `ppas` from `slot`'s data and OOB areas.
    pub fn submit_program(&mut self, slot: usize, ppas: &[Ppa]) -> Result<(), SubmitError> {
        let mut iovas = [0u64; SLOT_PAGES];
        let n = ppas.len().min(SLOT_PAGES);
        for (i, v) in iovas.iter_mut().enumerate().take(n) {
            *v = self.data_iova(slot, i).ok_or(SubmitError::Invalid("slot has no data area"))?;
        }
        self.q.program(&ppas[..n], &iovas[..n], Some(self.oob_iova(slot)), slot as u64)
    }

    /// Queues an erase.
    pub fn submit_erase(&mut self, slot: usize, die: u32, block: u32) -> Result<(), SubmitError> {
        self.q.erase(die, block, slot as u64)
    }

    /// Queues a card flush.
    pub fn submit_flush(&mut self, slot: usize) -> Result<(), SubmitError> {
        self.q.flush(slot as u64)
    }

    /// Rings the doorbell.
    pub fn ring(&mut self) {
        self.q.ring();
    }

    /// Waits for at least one completion, handing each to `f`.
    pub fn wait_some(&mut self, what: &'static str, mut f: impl FnMut(Completion)) -> Result<(), VslError> {
        let start = Instant::now();
        let mut spins = 0u32;
        loop {
            if self.q.poll(usize::MAX, &mut f) > 0 {
                return Ok(());
            }
            if self.q.outstanding() == 0 {
                return Ok(());
            }
            spins += 1;
            if spins > 64 {
                std::thread::yield_now();
            }
            if start.elapsed() > WAIT_LIMIT {
                return Err(VslError::Timeout {
                    what,
                    secs: WAIT_LIMIT.as_secs(),
                });
            }
        }
    }

    /// Rings and waits until every command in flight completed, handing
    /// each completion to `f`.
    pub fn drain(&mut self, what: &'static str, mut f: impl FnMut(Completion)) -> Result<(), VslError> {
        self.q.ring();
        while self.q.outstanding() > 0 {
            self.wait_some(what, &mut f)?;
        }
        Ok(())
    }

    /// Runs one command on slot 0 and waits for it.
    fn run(&mut self, what: &'static str, submit: impl FnOnce(&mut Self) -> Result<(), SubmitError>) -> Result<Completion, VslError> {
        submit(self).map_err(|_| VslError::Media {
            what,
            location: "submission".into(),
            status: CardStatus::InvalidField,
        })?;
        let mut out = None;
        self.drain(what, |c| out = Some(c))?;
        let c = out.ok_or(VslError::Timeout { what, secs: 0 })?;
        if c.status == CardStatus::PowerCut {
            return Err(VslError::PowerLost { what });
        }
        Ok(c)
    }

    /// Reads `ppas` (data too with `with_data`) into slot 0 and waits.
    pub fn read_sync(&mut self, ppas: &[Ppa], with_data: bool) -> Result<Completion, VslError> {
        self.run("read", |s| s.submit_read(0, ppas, with_data))
    }

    /// Programs `ppas` from slot 0 and waits.
    pub fn program_sync(&mut self, ppas: &[Ppa]) -> Result<Completion, VslError> {
        self.run("program", |s| s.submit_program(0, ppas))
    }

    /// Erases a block and waits.
    pub fn erase_sync(&mut self, die: u32, block: u32) -> Result<Completion, VslError> {
        self.run("erase", |s| s.submit_erase(0, die, block))
    }

    /// Flushes the card and waits; an error unless it succeeded.
    pub fn flush_sync(&mut self) -> Result<(), VslError> {
        let c = self.run("flush", |s| s.submit_flush(0))?;
        if c.status.is_ok() {
            Ok(())
        } else {
            Err(VslError::Media {
                what: "flush",
                location: "card".into(),
                status: c.status,
            })
        }
    }
}
