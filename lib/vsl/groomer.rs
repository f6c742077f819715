//! The groomer: reclaims erase blocks by moving their live pages elsewhere
//! and erasing them, retires failed blocks, and levels wear.
//!
//! One groomer exists per attached VSL, behind a mutex that channels only
//! `try_lock` from their poll, so grooming runs on whichever I/O thread is
//! free and never blocks one. It has its own card queue, buffers and append
//! points. For each victim it reads every written page (data and OOB),
//! keeps the pages that still hold a live sector or a referenced trim note,
//! programs them with their original OOB (same version sequence, atomic
//! flags cleared: the group is known committed), and moves the map entries
//! by compare-and-swap, so a user write that lands meanwhile wins. Without
//! power-loss protection it flushes the card before erasing, so the moved
//! copies are durable before the originals disappear. Reads that may have
//! found the victim in the map are waited for (the channels' read gates,
//! `readgate.rs`) before the erase.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;

use crate::card::{Card, CardQueue, CardStatus, Completion, Ppa};
use crate::dma::DmaRegion;

use super::alloc::Ring;
use super::blocks::BlockState;
use super::device::Vsl;
use super::error::VslError;
use super::map::{Layout, UNMAPPED};
use super::oob::{decode_trim_ranges, OobRecord, PageKind, OOB_RECORD_LEN};
use super::victim::{Candidate, VictimPicker};

/// Page buffers of the groomer.
const GBUFS: usize = 256;
/// Pages per command.
const CMD_PAGES: usize = CardQueue::MAX_PAGES;
/// Passes over one victim before giving up on it for now.
const MAX_PASSES: u32 = 16;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum GKind {
    Read,
    Program,
    Flush,
    Erase,
}

#[derive(Debug, Clone, Copy)]
struct GCmd {
    kind: GKind,
    n: u32,
    block: u32,
    first: u32,
    bufs: [u16; CMD_PAGES],
}

/// What a buffer holds: a page read from a victim, or a page being built
/// (live sectors packed together, or a trim note copied whole).
#[derive(Debug, Clone, Copy)]
struct BufMeta {
    /// Victim page the buffer was read from (trim notes: the old note).
    src_page: u32,
    kind: PageKind,
    /// Ranges in a trim note.
    count: u16,
    /// Sectors packed so far.
    n: u8,
    lbas: [u32; 8],
    seqs: [u64; 8],
    /// Where each packed sector lives now (the CAS's expected value).
    src: [u32; 8],
    oob: [u8; OOB_RECORD_LEN],
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Relocate,
    NeedFlush,
    Flushing,
    NeedErase,
    Erasing,
}

#[derive(Debug, Clone, Copy)]
struct Victim {
    block: u32,
    pages: u32,
    next_read: u32,
    reads: u32,
    progs: u32,
    phase: Phase,
    retiring: bool,
    wear: bool,
    lost: bool,
    passes: u32,
    /// The read gates were snapshot for the erase (`Groomer::erase_snap`).
    gates_snapped: bool,
}

/// Groomer state (lives inside `Vsl::groomer`).
pub struct Groomer {
    q: CardQueue,
    ring: Ring,
    layout: Layout,
    page_size: usize,
    oob_size: usize,
    bufs: DmaRegion,
    oob: DmaRegion,
    buf_free: Vec<u16>,
    meta: Box<[BufMeta]>,
    cmds: Box<[GCmd]>,
    cmd_free: Vec<u16>,
    to_program: VecDeque<u16>,
    /// The page being packed with live sectors.
    pack: Option<u16>,
    cq_buf: Vec<Completion>,
    victim: Option<Victim>,
    wear_due: bool,
    /// Retiring blocks given up on until the next erase.
    stuck: Vec<u32>,
    /// Read-gate counts taken when the victim became ready to erase.
    erase_snap: Vec<u64>,
}

impl std::fmt::Debug for Groomer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Groomer").field("victim", &self.victim.map(|v| v.block)).finish()
    }
}

// SAFETY: the groomer owns its queue pair and DMA regions; it is only ever
// used under the VSL's mutex, one thread at a time.
unsafe impl Send for Groomer {}

impl Groomer {
    /// A groomer with its own queue of `depth` entries.
    pub fn new(card: &Card, layout: Layout, depth: u16) -> Result<Self, VslError> {
        let g = card.geometry();
        let q = card.create_io_queue(depth.clamp(4, 1024))?;
        let ncmds = (depth.clamp(4, 1024) as usize - 1).max(1);
        let page_size = g.page_size as usize;
        let oob_size = g.oob_size as usize;
        let bufs = DmaRegion::allocate(card.dma(), GBUFS * page_size)?;
        let oob = DmaRegion::allocate(card.dma(), ncmds * CMD_PAGES * oob_size)?;
        let empty = BufMeta {
            src_page: 0,
            kind: PageKind::Pad,
            count: 0,
            n: 0,
            lbas: [0; 8],
            seqs: [0; 8],
            src: [0; 8],
            oob: [0; OOB_RECORD_LEN],
        };
        Ok(Self {
            q,
            ring: Ring::new(1, 0, layout.pages_per_block()),
            layout,
            page_size,
            oob_size,
            bufs,
            oob,
            buf_free: (0..GBUFS as u16).rev().collect(),
            meta: vec![empty; GBUFS].into_boxed_slice(),
            cmds: vec![
                GCmd {
                    kind: GKind::Read,
                    n: 0,
                    block: 0,
                    first: 0,
                    bufs: [0; CMD_PAGES],
                };
                ncmds
            ]
            .into_boxed_slice(),
            cmd_free: (0..ncmds as u16).rev().collect(),
            to_program: VecDeque::with_capacity(GBUFS),
            pack: None,
            cq_buf: Vec::with_capacity(ncmds + 1),
            victim: None,
            wear_due: true,
            stuck: Vec::with_capacity(64),
            erase_snap: Vec::with_capacity(64),
        })
    }

    /// Stops grooming for a detach: lets the commands in flight complete
    /// (applying what they finished), then abandons the victim in progress
    /// (its live data simply stays where it is) and drops queued work.
    /// Returns false if the card did not complete within `limit`.
    pub fn quiesce(&mut self, vsl: &Vsl, limit: std::time::Duration) -> bool {
        let start = std::time::Instant::now();
        while self.q.outstanding() > 0 {
            let reaped = self.reap(vsl);
            if start.elapsed() > limit {
                return false;
            }
            if reaped == 0 {
                std::thread::yield_now();
            }
        }
        if let Some(v) = self.victim.take() {
            let m = vsl.blocks.get(v.block);
            m.transition(BlockState::Victim, BlockState::Full);
        }
        while let Some(b) = self.to_program.pop_front() {
            self.buf_free.push(b);
        }
        if let Some(p) = self.pack.take() {
            self.buf_free.push(p);
        }
        true
    }

    /// Rings the doorbell for what is queued, reaps the completions and
    /// applies them; returns how many there were.
    fn reap(&mut self, vsl: &Vsl) -> usize {
        self.q.ring();
        self.cq_buf.clear();
        let cap = self.cq_buf.capacity();
        let buf = &mut self.cq_buf;
        let reaped = self.q.poll(cap, |c| buf.push(c));
        for i in 0..reaped {
            let c = self.cq_buf[i];
            self.on_completion(vsl, c);
        }
        reaped
    }

    fn buf_ptr(&self, b: u16) -> *mut u8 {
        self.bufs.as_ptr().wrapping_add(b as usize * self.page_size)
    }

    fn buf_iova(&self, b: u16) -> u64 {
        self.bufs.iova() + (b as usize * self.page_size) as u64
    }

    fn oob_ptr(&self, c: usize, i: usize) -> *mut u8 {
        self.oob.as_ptr().wrapping_add((c * CMD_PAGES + i) * self.oob_size)
    }

    fn oob_iova(&self, c: usize) -> u64 {
        self.oob.iova() + (c * CMD_PAGES * self.oob_size) as u64
    }

    fn ppa_of_block(&self, block: u32, page: u32) -> Ppa {
        Ppa::new(
            self.layout.die_of_block(block),
            block % self.layout.geometry.blocks_per_die,
            page,
        )
    }

    /// One round of work: reap, choose or advance the victim, submit.
    /// Returns whether anything happened.
    pub fn step(&mut self, vsl: &Vsl) -> bool {
        let reaped = self.reap(vsl);
        if vsl.is_offline() {
            return reaped > 0;
        }
        if self.victim.is_none() {
            self.victim = self.pick(vsl);
            if self.victim.is_none() {
                if self.q.outstanding() == 0 {
                    vsl.gc_active.store(false, Ordering::Release);
                }
                return reaped > 0;
            }
        }
        self.advance(vsl);
        self.q.ring();
        true
    }

    fn pick(&mut self, vsl: &Vsl) -> Option<Victim> {
        let ppb = self.layout.pages_per_block();
        let mk = |block: u32, retiring: bool, wear: bool| Victim {
            block,
            pages: vsl.blocks.get(block).written.load(Ordering::Acquire).min(ppb),
            next_read: 0,
            reads: 0,
            progs: 0,
            phase: Phase::Relocate,
            retiring,
            wear,
            lost: false,
            passes: 0,
            gates_snapped: false,
        };
        // 1. Failed blocks: move their data out first (skipping ones that
        // could not be emptied lately, so they cannot starve reclamation).
        if let Some((b, _)) = vsl
            .blocks
            .iter()
            .find(|(b, m)| m.state() == BlockState::Retiring && !self.stuck.contains(b))
        {
            return Some(mk(b, true, false));
        }
        let free = vsl.blocks.free_count();
        // 2. Wear levelling, only when space is not tight.
        if self.wear_due && free > vsl.tune.gc_low as u64 {
            self.wear_due = false;
            let (_, hi) = vsl.blocks.pe_range();
            let coldest = vsl
                .blocks
                .iter()
                .filter(|(_, m)| m.state() == BlockState::Full)
                .min_by_key(|(_, m)| m.pe.load(Ordering::Relaxed));
            if let Some((b, m)) = coldest {
                if hi.saturating_sub(m.pe.load(Ordering::Relaxed)) > vsl.tune.wear_spread
                    && m.transition(BlockState::Full, BlockState::Victim)
                {
                    return Some(mk(b, false, true));
                }
            }
        }
        // 3. Space reclamation.
        if !vsl.gc_active.load(Ordering::Acquire) {
            return None;
        }
        if free >= vsl.tune.gc_high as u64 {
            vsl.gc_active.store(false, Ordering::Release);
            return None;
        }
        let capacity = ppb * self.layout.sectors_per_page;
        let mut picker = VictimPicker::new(vsl.opts.gc_policy, vsl.seq.load(Ordering::Acquire));
        for (b, m) in vsl.blocks.iter() {
            if m.state() != BlockState::Full {
                continue;
            }
            let notes = m.note_refs.load(Ordering::Acquire).min(1);
            picker.offer(Candidate {
                block: b,
                valid: m.valid.load(Ordering::Acquire) + notes,
                capacity,
                age_seq: m.age.load(Ordering::Acquire),
                pe: m.pe.load(Ordering::Relaxed),
            });
        }
        let best = picker.best()?;
        if !vsl.blocks.get(best.block).transition(BlockState::Full, BlockState::Victim) {
            return None;
        }
        Some(mk(best.block, false, false))
    }

    fn advance(&mut self, vsl: &Vsl) {
        let Some(mut v) = self.victim else { return };
        match v.phase {
            Phase::Relocate => {
                let m = vsl.blocks.get(v.block);
                if v.next_read == 0 && m.is_empty() {
                    // Nothing live: no need to read anything.
                    v.next_read = v.pages;
                }
                // Keep buffers back for packing what the reads bring in.
                let spare = 2 + CMD_PAGES / 4;
                while v.next_read < v.pages && self.buf_free.len() > spare && !self.cmd_free.is_empty() && self.q.free_slots() > 0 {
                    let k = (v.pages - v.next_read).min(CMD_PAGES as u32).min((self.buf_free.len() - spare) as u32);
                    let c = self.cmd_free.pop().unwrap_or(0) as usize;
                    let mut ppas = [Ppa::new(0, 0, 0); CMD_PAGES];
                    let mut data = [0u64; CMD_PAGES];
                    let base = self.layout.first_page(v.block);
                    for i in 0..k as usize {
                        let b = self.buf_free.pop().unwrap_or(0);
                        self.cmds[c].bufs[i] = b;
                        self.meta[b as usize].src_page = base + v.next_read + i as u32;
                        ppas[i] = self.ppa_of_block(v.block, v.next_read + i as u32);
                        data[i] = self.buf_iova(b);
                    }
                    self.cmds[c].kind = GKind::Read;
                    self.cmds[c].n = k;
                    if self.q.read(&ppas[..k as usize], &data[..k as usize], Some(self.oob_iova(c)), c as u64).is_ok() {
                        v.reads += 1;
                        v.next_read += k;
                    } else {
                        for i in 0..k as usize {
                            self.buf_free.push(self.cmds[c].bufs[i]);
                        }
                        self.cmd_free.push(c as u16);
                        break;
                    }
                }
                if v.next_read >= v.pages && v.reads == 0 {
                    // Everything read: the last partly packed page goes too.
                    self.close_pack();
                }
                v.progs += self.submit_programs(vsl);
                if v.next_read >= v.pages && v.reads == 0 && v.progs == 0 && self.to_program.is_empty() {
                    if m.is_empty() {
                        if v.retiring {
                            m.set_state(BlockState::Bad);
                            vsl.update_reserve();
                            self.victim = None;
                            return;
                        }
                        v.phase = if vsl.plp { Phase::NeedErase } else { Phase::NeedFlush };
                        v.gates_snapped = false;
                    } else if v.lost {
                        // Live sectors whose page cannot be read: keep the
                        // block (reads of them fail) and never reuse it.
                        m.set_state(BlockState::Bad);
                        vsl.ctr.retired_blocks.fetch_add(1, Ordering::Relaxed);
                        vsl.update_reserve();
                        self.victim = None;
                        return;
                    } else {
                        v.passes += 1;
                        if v.passes > MAX_PASSES {
                            if v.retiring {
                                if self.stuck.len() < 64 {
                                    self.stuck.push(v.block);
                                }
                            } else {
                                m.set_state(BlockState::Full);
                            }
                            self.victim = None;
                            return;
                        }
                        v.next_read = 0;
                    }
                }
            }
            Phase::NeedFlush => {
                if let Some(c) = self.take_cmd() {
                    self.cmds[c].kind = GKind::Flush;
                    self.cmds[c].n = 0;
                    if self.q.flush(c as u64).is_ok() {
                        v.phase = Phase::Flushing;
                    } else {
                        self.cmd_free.push(c as u16);
                    }
                }
            }
            Phase::NeedErase => {
                // Nothing in the map points into the victim any more: wait
                // for the reads that may have looked it up before that.
                if !v.gates_snapped {
                    vsl.read_gates.snapshot(&mut self.erase_snap);
                    v.gates_snapped = true;
                }
                if vsl.read_gates.passed(&self.erase_snap) {
                    if let Some(c) = self.take_cmd() {
                        self.cmds[c].kind = GKind::Erase;
                        self.cmds[c].n = 0;
                        self.cmds[c].block = v.block;
                        let p = self.ppa_of_block(v.block, 0);
                        if self.q.erase(p.die, p.block, c as u64).is_ok() {
                            v.phase = Phase::Erasing;
                        } else {
                            self.cmd_free.push(c as u16);
                        }
                    }
                }
            }
            Phase::Flushing | Phase::Erasing => {}
        }
        self.victim = Some(v);
    }

    fn take_cmd(&mut self) -> Option<usize> {
        if self.q.free_slots() == 0 {
            return None;
        }
        self.cmd_free.pop().map(|c| c as usize)
    }

    /// Programs queued relocations into the groomer's open blocks.
    fn submit_programs(&mut self, vsl: &Vsl) -> u32 {
        let mut submitted = 0;
        while !self.to_program.is_empty() && !self.cmd_free.is_empty() && self.q.free_slots() > 0 {
            if self.ring.ensure_room(&vsl.blocks, 1, 0).is_err() {
                break;
            }
            let want = self.to_program.len().min(CMD_PAGES) as u32;
            let Some(ext) = self.ring.take(want) else { break };
            let c = self.cmd_free.pop().unwrap_or(0) as usize;
            let mut ppas = [Ppa::new(0, 0, 0); CMD_PAGES];
            let mut data = [0u64; CMD_PAGES];
            for i in 0..ext.count as usize {
                let b = self.to_program.pop_front().unwrap_or(0);
                self.cmds[c].bufs[i] = b;
                ppas[i] = self.ppa_of_block(ext.block, ext.first + i as u32);
                data[i] = self.buf_iova(b);
                let oob = self.meta[b as usize].oob;
                // SAFETY: the command's OOB slot is ours and idle.
                unsafe { std::ptr::copy_nonoverlapping(oob.as_ptr(), self.oob_ptr(c, i), OOB_RECORD_LEN) };
                // SAFETY: zero the rest of the slot (the record is shorter).
                unsafe { std::ptr::write_bytes(self.oob_ptr(c, i).add(OOB_RECORD_LEN), 0, self.oob_size - OOB_RECORD_LEN) };
            }
            self.cmds[c].kind = GKind::Program;
            self.cmds[c].n = ext.count;
            self.cmds[c].block = ext.block;
            self.cmds[c].first = ext.first;
            let n = ext.count as usize;
            if self.q.program(&ppas[..n], &data[..n], Some(self.oob_iova(c)), c as u64).is_ok() {
                submitted += 1;
            } else {
                for i in (0..n).rev() {
                    self.to_program.push_front(self.cmds[c].bufs[i]);
                }
                self.cmd_free.push(c as u16);
                break;
            }
        }
        submitted
    }

    fn on_completion(&mut self, vsl: &Vsl, comp: Completion) {
        let c = comp.tag as usize;
        if c >= self.cmds.len() {
            return;
        }
        if comp.status == CardStatus::PowerCut {
            vsl.mark_power_lost();
        }
        let cmd = self.cmds[c];
        match cmd.kind {
            GKind::Read => {
                if let Some(v) = self.victim.as_mut() {
                    v.reads = v.reads.saturating_sub(1);
                }
                for i in 0..cmd.n as usize {
                    let b = cmd.bufs[i];
                    let failed = comp.failed_mask & (1 << i) != 0 || (!comp.status.is_ok() && comp.failed_mask == 0);
                    if failed {
                        if comp.status != CardStatus::Erased && comp.status != CardStatus::PowerCut {
                            vsl.ctr.uncorrectable_reads.fetch_add(1, Ordering::Relaxed);
                            self.unreadable(vsl, self.meta[b as usize].src_page);
                        }
                        self.buf_free.push(b);
                        continue;
                    }
                    if comp.corrected_bits > 0 && i == 0 {
                        vsl.ctr.ecc_corrected_bits.fetch_add(comp.corrected_bits as u64, Ordering::Relaxed);
                        vsl.ctr.ecc_corrected_reads.fetch_add(1, Ordering::Relaxed);
                    }
                    let mut raw = [0u8; OOB_RECORD_LEN];
                    // SAFETY: the read completed; the OOB slot is ours.
                    unsafe { std::ptr::copy_nonoverlapping(self.oob_ptr(c, i), raw.as_mut_ptr(), OOB_RECORD_LEN) };
                    if self.analyze(vsl, b, &raw) {
                        self.to_program.push_back(b);
                    } else {
                        self.buf_free.push(b);
                    }
                }
            }
            GKind::Program => {
                if let Some(v) = self.victim.as_mut() {
                    v.progs = v.progs.saturating_sub(1);
                }
                let ok = if comp.status.is_ok() {
                    cmd.n
                } else if comp.failed_mask == 0 {
                    0
                } else {
                    comp.failed_mask.trailing_zeros().min(cmd.n)
                };
                let base = self.layout.first_page(cmd.block) + cmd.first;
                let mut max_seq = 0;
                for i in 0..ok as usize {
                    let b = cmd.bufs[i];
                    let m = &self.meta[b as usize];
                    max_seq = m.seqs[..(m.n as usize).max(1)].iter().fold(max_seq, |a, &s| a.max(s));
                    self.apply(vsl, b, base + i as u32);
                    self.buf_free.push(b);
                }
                if ok > 0 {
                    vsl.note_programmed(cmd.block, ok, max_seq);
                    vsl.ctr.groomer_pages.fetch_add(ok as u64, Ordering::Relaxed);
                }
                if ok < cmd.n {
                    if comp.status == CardStatus::PowerCut {
                        for i in ok as usize..cmd.n as usize {
                            self.buf_free.push(cmd.bufs[i]);
                        }
                    } else {
                        if comp.status == CardStatus::ProgramFailed {
                            vsl.ctr.program_failures.fetch_add(1, Ordering::Relaxed);
                        }
                        self.ring.drop_block(cmd.block);
                        vsl.retire_block(cmd.block);
                        for i in (ok as usize..cmd.n as usize).rev() {
                            self.to_program.push_front(cmd.bufs[i]);
                        }
                    }
                }
            }
            GKind::Flush => {
                if let Some(v) = self.victim.as_mut() {
                    v.phase = if comp.status.is_ok() { Phase::NeedErase } else { Phase::NeedFlush };
                    v.gates_snapped = false;
                }
            }
            GKind::Erase => {
                let m = vsl.blocks.get(cmd.block);
                match comp.status {
                    CardStatus::Success => {
                        let first = self.layout.first_page(cmd.block);
                        for p in first..first + self.layout.pages_per_block() {
                            vsl.trim_pages.set(p, false);
                        }
                        m.pe.fetch_add(1, Ordering::Relaxed);
                        m.age.store(0, Ordering::Release);
                        vsl.ctr.erases.fetch_add(1, Ordering::Relaxed);
                        if self.victim.is_some_and(|v| v.wear) {
                            vsl.ctr.wear_level_moves.fetch_add(1, Ordering::Relaxed);
                        } else {
                            vsl.ctr.gc_victims.fetch_add(1, Ordering::Relaxed);
                        }
                        vsl.blocks.push_free(cmd.block);
                        // Space moved: blocks that could not be emptied
                        // before get another chance.
                        self.stuck.clear();
                        let (lo, hi) = vsl.blocks.pe_range();
                        if hi.saturating_sub(lo) > vsl.tune.wear_spread {
                            self.wear_due = true;
                        }
                    }
                    CardStatus::PowerCut => {}
                    _ => {
                        vsl.ctr.erase_failures.fetch_add(1, Ordering::Relaxed);
                        m.set_state(BlockState::Bad);
                        vsl.ctr.retired_blocks.fetch_add(1, Ordering::Relaxed);
                        vsl.update_reserve();
                    }
                }
                self.victim = None;
                if vsl.blocks.free_count() >= vsl.tune.gc_high as u64 && !self.wear_due {
                    vsl.gc_active.store(false, Ordering::Release);
                }
            }
        }
        self.cmd_free.push(c as u16);
    }

    /// Sorts the page just read into buffer `b`: live data sectors are
    /// packed into the page being built, a referenced trim note is queued
    /// whole. Returns whether `b` itself must be programmed (notes).
    fn analyze(&mut self, vsl: &Vsl, b: u16, raw: &[u8]) -> bool {
        let Some(d) = OobRecord::decode(raw) else { return false };
        let src = self.meta[b as usize].src_page;
        let layout = self.layout;
        match d.record.kind {
            PageKind::Data => {
                let ss = self.page_size / layout.sectors_per_page as usize;
                // SAFETY: the read into buffer b completed; it is ours.
                let page = unsafe { std::slice::from_raw_parts(self.buf_ptr(b), self.page_size) };
                // One CRC over the whole page: checked once, if anything is live.
                let mut whole: Option<bool> = None;
                for (slot, &l) in d.record.lbas.iter().enumerate().take(d.record.count as usize) {
                    let phys = layout.phys(src, slot as u32);
                    if (l as u64) < vsl.num_sectors() && vsl.map.get(l as u64) == phys {
                        // A live sector is checked before it moves, so a
                        // corrupt one is never rewritten under a fresh CRC.
                        let intact = if d.record.slots > 1 {
                            d.sectors_match(slot, ss, &page[slot * ss..(slot + 1) * ss])
                        } else {
                            *whole.get_or_insert_with(|| d.data_matches(page))
                        };
                        if intact {
                            self.pack_sector(b, slot, l, d.record.slot_seq(slot), phys);
                        } else {
                            self.corrupt_sector(vsl);
                        }
                    }
                }
                false
            }
            PageKind::Trim => {
                let note = layout.phys(src, 0);
                // SAFETY: the read into buffer b completed; it is ours.
                let page = unsafe { std::slice::from_raw_parts(self.buf_ptr(b), self.page_size) };
                let live = decode_trim_ranges(page, d.record.count as usize).any(|r| {
                    (r.lba as u64..r.lba as u64 + r.count as u64)
                        .take_while(|&l| l < vsl.num_sectors())
                        .any(|l| vsl.map.get(l) == note)
                });
                if live {
                    let m = &mut self.meta[b as usize];
                    m.kind = PageKind::Trim;
                    m.count = d.record.count;
                    m.n = 1;
                    m.seqs[0] = d.record.seq;
                    m.oob.copy_from_slice(&raw[..OOB_RECORD_LEN]);
                }
                live
            }
            PageKind::Pad | PageKind::Checkpoint => false,
        }
    }

    /// Copies sector `slot` of buffer `from` into the page being packed.
    fn pack_sector(&mut self, from: u16, slot: usize, lba: u32, seq: u64, src: u32) {
        let spp = self.layout.sectors_per_page as usize;
        let ss = self.page_size / spp;
        // Versions in one page must lie within 2^32 of the lowest.
        if let Some(p) = self.pack {
            let m = &self.meta[p as usize];
            let lo = m.seqs[..m.n as usize].iter().copied().min().unwrap_or(seq).min(seq);
            let hi = m.seqs[..m.n as usize].iter().copied().max().unwrap_or(seq).max(seq);
            if hi - lo > u32::MAX as u64 {
                self.close_pack();
            }
        }
        let p = match self.pack {
            Some(p) => p,
            None => {
                // Reads leave spare buffers for this (see `advance`).
                let Some(p) = self.buf_free.pop() else { return };
                let m = &mut self.meta[p as usize];
                m.kind = PageKind::Data;
                m.n = 0;
                self.pack = Some(p);
                p
            }
        };
        let k = self.meta[p as usize].n as usize;
        // SAFETY: both buffers are ours and idle (the read completed, the
        // pack page is not yet submitted); the ranges lie inside them.
        unsafe { std::ptr::copy_nonoverlapping(self.buf_ptr(from).add(slot * ss), self.buf_ptr(p).add(k * ss), ss) };
        let m = &mut self.meta[p as usize];
        m.lbas[k] = lba;
        m.seqs[k] = seq;
        m.src[k] = src;
        m.n += 1;
        if m.n as usize == spp {
            self.close_pack();
        }
    }

    /// Seals the page being packed (OOB with each sector's own version) and
    /// queues it for programming.
    fn close_pack(&mut self) {
        let Some(p) = self.pack.take() else { return };
        let spp = self.layout.sectors_per_page as usize;
        let ss = self.page_size / spp;
        let n = self.meta[p as usize].n as usize;
        if n == 0 {
            self.buf_free.push(p);
            return;
        }
        // SAFETY: the pack buffer is ours; zero the unused slots.
        unsafe { std::ptr::write_bytes(self.buf_ptr(p).add(n * ss), 0, (spp - n) * ss) };
        let m = self.meta[p as usize];
        let base = m.seqs[..n].iter().copied().min().unwrap_or(0);
        let mut rec = OobRecord::new(PageKind::Data, base);
        rec.count = n as u16;
        rec.slots = spp as u8;
        for k in 0..n {
            rec.lbas[k] = m.lbas[k];
            rec.seq_delta[k] = (m.seqs[k] - base) as u32;
        }
        // SAFETY: as above.
        let page = unsafe { std::slice::from_raw_parts(self.buf_ptr(p), self.page_size) };
        let crc = rec.data_crc(page);
        let mut oob = [0u8; OOB_RECORD_LEN];
        rec.encode_with_crc(crc, &mut oob);
        self.meta[p as usize].oob = oob;
        self.to_program.push_back(p);
    }

    /// Moves the map entries of buffer `b`'s page to `dst_page`.
    fn apply(&mut self, vsl: &Vsl, b: u16, dst_page: u32) {
        let meta = self.meta[b as usize];
        let layout = self.layout;
        match meta.kind {
            PageKind::Data => {
                for k in 0..meta.n as usize {
                    vsl.relocate_data(meta.lbas[k] as u64, meta.src[k], layout.phys(dst_page, k as u32));
                }
            }
            PageKind::Trim => {
                let old = layout.phys(meta.src_page, 0);
                let new = layout.phys(dst_page, 0);
                vsl.trim_pages.set(dst_page, true);
                // SAFETY: buffer b holds the note page (programmed, idle).
                let page = unsafe { std::slice::from_raw_parts(self.buf_ptr(b), self.page_size) };
                for r in decode_trim_ranges(page, meta.count as usize) {
                    for l in r.lba as u64..(r.lba as u64 + r.count as u64).min(vsl.num_sectors()) {
                        if vsl.map.get(l) == old {
                            vsl.relocate_trim(l, old, new);
                        }
                    }
                }
            }
            _ => {}
        }
    }

    /// A live sector of the victim failed its data CRC: it stays where it
    /// is (the block is kept), so reads of it keep failing loudly instead
    /// of returning the corrupt data under a fresh CRC.
    fn corrupt_sector(&mut self, vsl: &Vsl) {
        vsl.ctr.checksum_errors.fetch_add(1, Ordering::Relaxed);
        vsl.ctr.lost_sectors.fetch_add(1, Ordering::Relaxed);
        if let Some(v) = self.victim.as_mut() {
            v.lost = true;
        }
    }

    /// A victim page could not be read: any LBA still mapped there has lost
    /// its only copy. Keep the block so reads of those LBAs fail loudly.
    fn unreadable(&mut self, vsl: &Vsl, page: u32) {
        let lo = self.layout.phys(page, 0);
        let hi = lo + self.layout.sectors_per_page;
        let lost = vsl.map.iter().filter(|&p| p != UNMAPPED && p >= lo && p < hi).count() as u64;
        if lost > 0 {
            vsl.ctr.lost_sectors.fetch_add(lost, Ordering::Relaxed);
            if let Some(v) = self.victim.as_mut() {
                v.lost = true;
            }
        }
    }
}
