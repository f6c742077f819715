//! Power-cut torture: a random mixed workload (writes of mixed sizes,
//! overwrites, trims, atomic groups, flushes) with a power cut at a random
//! command count each round, then a dirty attach and a check of every
//! touched LBA against a shadow model of what the durability contract
//! allows.
//!
//! The model keeps, per LBA, the history of states since the last durable
//! one: the durable state and everything issued after it are acceptable
//! after a cut. A write becomes durable when acknowledged (power-loss
//! protection on) or when a flush submitted after its acknowledgement
//! completes (off); a trim is durable when acknowledged. Violations are
//! classified: lost writes (an older value than the durable one), resurrected
//! trims (data a completed trim removed), torn atomic groups (some sectors of
//! a group new, others older), corrupt sectors (garbage or misplaced data).

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use serde::Serialize;

use crate::card::Card;
use crate::dma::DmaRegion;
use crate::emu::{EmuOptions, NandArray};

use super::blocking::BlockingChannel;
use super::device::{AttachKind, IoVec, Vsl};
use super::error::{IoError, SubmitError, VslError};
use super::options::{AttachOptions, FormatOptions};
use super::pattern::{check_sector, fill, SectorContent};

/// Options of a torture run.
#[derive(Debug, Clone, Serialize)]
pub struct TortureOptions {
    /// Power cuts to perform (clean detach rounds come on top).
    pub cuts: u64,
    /// Seed of the workload and cut points.
    pub seed: u64,
    /// Power-loss protection of the card during the run.
    pub powerloss_protection: bool,
    /// Most operations per round.
    pub max_ops_per_round: u32,
    /// Operations in flight at once.
    pub queue_depth: usize,
    /// Sector size to format with.
    pub sector_size: u32,
    /// Every this many rounds, detach cleanly instead of cutting power
    /// (0 or 1: never).
    pub clean_every: u64,
    /// Every this many rounds, check every LBA (otherwise touched ones).
    pub full_check_every: u64,
}

impl Default for TortureOptions {
    fn default() -> Self {
        Self {
            cuts: 100,
            seed: 1,
            powerloss_protection: true,
            max_ops_per_round: 300,
            queue_depth: 8,
            sector_size: 4096,
            clean_every: 10,
            full_check_every: 50,
        }
    }
}

/// What a torture run found.
#[derive(Debug, Clone, Default, Serialize)]
pub struct TortureReport {
    /// Rounds completed.
    pub rounds: u64,
    /// Power cuts performed.
    pub cuts: u64,
    /// Clean detach/attach cycles.
    pub clean_cycles: u64,
    /// Cuts that hit a recovery (attach) in progress.
    pub cuts_in_attach: u64,
    /// Cuts that hit a clean detach (checkpoint) in progress.
    pub cuts_in_detach: u64,
    /// Cut points (commands after attach), first 64 rounds.
    pub cut_points: Vec<u64>,
    /// Operations acknowledged.
    pub ops_acked: u64,
    /// Operations in flight when the power went.
    pub ops_interrupted: u64,
    /// Sectors checked after recovery.
    pub sectors_checked: u64,
    /// Sectors holding an older value than the last durable one.
    pub lost_writes: u64,
    /// Atomic groups found partly applied.
    pub torn_atomics: u64,
    /// Sectors holding data a completed trim had removed.
    pub resurrected_trims: u64,
    /// Sectors holding garbage or another LBA's data.
    pub corrupt_sectors: u64,
    /// Read errors while checking.
    pub read_errors: u64,
    /// Whether the card wore out and went read-only during the run.
    pub read_only: bool,
    /// First violations, described.
    pub violations: Vec<String>,
    /// Total attach time of scans, milliseconds.
    pub scan_millis_total: u64,
    /// Longest scan, milliseconds.
    pub scan_millis_max: u64,
    /// Wall time, milliseconds.
    pub elapsed_millis: u64,
}

impl TortureReport {
    /// Whether no violation was found.
    pub fn passed(&self) -> bool {
        self.lost_writes == 0
            && self.torn_atomics == 0
            && self.resurrected_trims == 0
            && self.corrupt_sectors == 0
            && self.read_errors == 0
    }

    fn violation(&mut self, s: String) {
        if self.violations.len() < 20 {
            self.violations.push(s);
        }
    }
}

/// Small deterministic PRNG (xorshift64*).
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// Seeded generator.
    pub fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }
    /// Next value.
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    /// Uniform in `[lo, hi]`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        if hi <= lo {
            return lo;
        }
        lo + self.next_u64() % (hi - lo + 1)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Entry {
    tag: u64,
    trim: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OpKind {
    Write,
    Trim,
    Atomic,
    Flush,
}

#[derive(Debug, Clone)]
struct Op {
    kind: OpKind,
    tag: u64,
    ranges: Vec<(u64, u64)>,
    slot: usize,
    flush_mark: u64,
}

/// The shadow model.
struct Model {
    hist: Vec<Vec<Entry>>,
    trimmed: Vec<u64>,
    touched: Vec<bool>,
    /// Acknowledged, not yet durable writes: (ack number, op).
    log: Vec<(u64, Op)>,
    acks: u64,
    groups: Vec<Op>,
}

impl Model {
    fn new(sectors: u64) -> Self {
        Self {
            hist: (0..sectors).map(|_| vec![Entry { tag: 0, trim: true }]).collect(),
            trimmed: vec![0; sectors as usize],
            touched: vec![false; sectors as usize],
            log: Vec::new(),
            acks: 0,
            groups: Vec::new(),
        }
    }

    fn issue(&mut self, op: &Op) {
        for &(lba, n) in &op.ranges {
            for l in lba..lba + n {
                self.hist[l as usize].push(Entry {
                    tag: op.tag,
                    trim: op.kind == OpKind::Trim,
                });
                self.touched[l as usize] = true;
            }
        }
        if op.kind == OpKind::Atomic {
            self.groups.push(op.clone());
        }
    }

    fn make_durable(&mut self, op: &Op) {
        for &(lba, n) in &op.ranges {
            for l in lba..lba + n {
                let h = &mut self.hist[l as usize];
                if let Some(p) = h.iter().position(|e| e.tag == op.tag) {
                    if op.kind == OpKind::Trim {
                        if let Some(last) = h[..p].iter().rev().find(|e| !e.trim) {
                            self.trimmed[l as usize] = self.trimmed[l as usize].max(last.tag);
                        }
                    }
                    h.drain(..p);
                }
            }
        }
    }

    fn acked(&mut self, op: Op, plp: bool) {
        self.acks += 1;
        match op.kind {
            OpKind::Trim => self.make_durable(&op),
            OpKind::Write | OpKind::Atomic if plp => self.make_durable(&op),
            OpKind::Write | OpKind::Atomic => self.log.push((self.acks, op)),
            OpKind::Flush => {
                let mark = op.flush_mark;
                let (done, keep): (Vec<_>, Vec<_>) = std::mem::take(&mut self.log).into_iter().partition(|(a, _)| *a <= mark);
                self.log = keep;
                for (_, w) in done {
                    self.make_durable(&w);
                }
            }
        }
    }

    /// Index in `lba`'s history matching an observation (latest match).
    fn matching(&self, lba: u64, seen: SectorContent) -> Option<usize> {
        let h = &self.hist[lba as usize];
        match seen {
            SectorContent::Zero => h.iter().rposition(|e| e.trim),
            SectorContent::Data { generation } => h.iter().rposition(|e| !e.trim && e.tag == generation),
            _ => None,
        }
    }
}

/// Runs `opts.cuts` power-cut rounds on `nand` (formatting it first).
/// `progress(cuts done, report)` is called after each round.
pub fn run(
    nand: &Arc<NandArray>,
    opts: &TortureOptions,
    progress: &mut dyn FnMut(u64, &TortureReport),
) -> Result<TortureReport, VslError> {
    let start = Instant::now();
    nand.power_on();
    nand.set_powerloss_protection(opts.powerloss_protection);
    let mut rng = Rng::new(opts.seed);
    let seed = opts.seed;
    let mut report = TortureReport::default();
    {
        let card = Card::open_emulated(nand.clone(), EmuOptions::default())?;
        let fo = FormatOptions {
            sector_size: opts.sector_size,
            yes: true,
            seed: Some(seed),
            ..FormatOptions::default()
        };
        Vsl::format(card, &fo, &mut |_, _| {})?;
    }
    let mut model: Option<Model> = None;
    let mut next_tag = 1u64;
    let attach_opts = AttachOptions {
        max_channels: 2,
        ..AttachOptions::default()
    };
    let mut round = 0u64;
    while report.cuts < opts.cuts {
        nand.power_on();
        let card = Card::open_emulated(nand.clone(), EmuOptions::default())?;
        let emu = card.emulator().cloned();
        // Now and then the power goes during recovery itself.
        let cut_in_attach = round > 0 && rng.range(0, 9) == 0;
        if cut_in_attach {
            if let Some(e) = &emu {
                e.power_cut_after(rng.range(1, 40));
            }
        }
        let vsl = match Vsl::attach(card.clone(), &attach_opts, &mut |_, _| {}) {
            Ok(v) => v,
            Err(_) if cut_in_attach && emu.as_ref().is_some_and(|e| e.is_powered_off()) => {
                report.cuts += 1;
                report.cuts_in_attach += 1;
                round += 1;
                report.rounds = round;
                progress(report.cuts, &report);
                continue;
            }
            Err(e) => return Err(e),
        };
        if cut_in_attach {
            // Recovery finished before the cut point: call the cut off and
            // run an ordinary round.
            if let Some(e) = &emu {
                e.power_cut_after(u64::MAX);
            }
        }
        let rep = vsl.attach_report();
        if rep.kind == AttachKind::Scan {
            report.scan_millis_total += rep.millis;
            report.scan_millis_max = report.scan_millis_max.max(rep.millis);
        }
        let sectors = vsl.num_sectors();
        let ss = vsl.sector_size() as usize;
        let m = model.get_or_insert_with(|| Model::new(sectors));
        // Check what recovery returned.
        let full = opts.full_check_every > 0 && round.is_multiple_of(opts.full_check_every);
        verify(&vsl, m, seed, full, &mut report)?;
        m.touched.iter_mut().for_each(|t| *t = false);
        m.groups.clear();
        m.log.clear();

        let clean = opts.clean_every > 1 && round % opts.clean_every == opts.clean_every - 1;
        let budget = rng.range(opts.max_ops_per_round as u64 / 2 + 1, opts.max_ops_per_round.max(2) as u64);
        let cut = rng.range(1, budget * 2);
        if !clean {
            if let Some(e) = &emu {
                e.power_cut_after(cut);
            }
            if report.cut_points.len() < 64 {
                report.cut_points.push(cut);
            }
        }
        workload(&vsl, m, &mut rng, &mut next_tag, budget, opts, ss, seed, &mut report)?;
        if clean {
            // Half the clean detaches lose power while checkpointing.
            let cut_in_detach = rng.range(0, 1) == 0;
            if cut_in_detach {
                if let Some(e) = &emu {
                    e.power_cut_after(rng.range(1, 4));
                }
            }
            if vsl.is_offline() {
                report.cuts += 1;
            } else {
                match vsl.detach() {
                    Ok(()) if !emu.as_ref().is_some_and(|e| e.is_powered_off()) => {
                        report.clean_cycles += 1;
                        // A clean detach made everything durable.
                        let log = std::mem::take(&mut m.log);
                        for (_, w) in log {
                            m.make_durable(&w);
                        }
                    }
                    Ok(()) => {
                        report.cuts += 1;
                        report.cuts_in_detach += 1;
                    }
                    Err(_) if cut_in_detach && emu.as_ref().is_some_and(|e| e.is_powered_off()) => {
                        report.cuts += 1;
                        report.cuts_in_detach += 1;
                    }
                    Err(e) => return Err(e),
                }
            }
        } else {
            if let Some(e) = &emu {
                e.power_cut_now();
            }
            report.cuts += 1;
        }
        drop(vsl);
        drop(card);
        round += 1;
        report.rounds = round;
        report.elapsed_millis = start.elapsed().as_millis() as u64;
        progress(report.cuts, &report);
    }
    // Final check after the last cut.
    nand.power_on();
    let card = Card::open_emulated(nand.clone(), EmuOptions::default())?;
    let vsl = Vsl::attach(card, &attach_opts, &mut |_, _| {})?;
    if let Some(m) = model.as_mut() {
        verify(&vsl, m, seed, true, &mut report)?;
    }
    report.elapsed_millis = start.elapsed().as_millis() as u64;
    Ok(report)
}

/// Issues `budget` random operations with up to `queue_depth` in flight,
/// never two overlapping ones at once, until done or the power is cut.
#[allow(clippy::too_many_arguments)]
fn workload(
    vsl: &Arc<Vsl>,
    m: &mut Model,
    rng: &mut Rng,
    next_tag: &mut u64,
    budget: u64,
    opts: &TortureOptions,
    ss: usize,
    seed: u64,
    report: &mut TortureReport,
) -> Result<(), VslError> {
    let sectors = vsl.num_sectors();
    let qd = opts.queue_depth.clamp(1, 32);
    let slot_bytes = 64 * 1024;
    let region = DmaRegion::allocate(vsl.card().dma(), qd * slot_bytes)?;
    let mut ch = vsl.channel()?;
    let mut busy = vec![false; sectors as usize];
    let mut inflight: HashMap<u64, Op> = HashMap::new();
    let mut free_slots: Vec<usize> = (0..qd).collect();
    let mut issued = 0u64;
    let plp = opts.powerloss_protection;
    let max_atomic = vsl.max_atomic_sectors() as u64;
    let sector_cap = (slot_bytes / ss) as u64;
    let hot = (sectors / 16).max(8);
    let mut buf = vec![0u8; slot_bytes];
    let mut done: Vec<(u64, Result<(), IoError>)> = Vec::with_capacity(64);
    loop {
        done.clear();
        ch.poll(&mut |ctx, r| done.push((ctx, r)));
        for &(ctx, r) in &done {
            let Some(op) = inflight.remove(&ctx) else { continue };
            for &(lba, n) in &op.ranges {
                for l in lba..lba + n {
                    busy[l as usize] = false;
                }
            }
            free_slots.push(op.slot);
            match r {
                Ok(()) => {
                    report.ops_acked += 1;
                    m.acked(op, plp);
                }
                Err(_) => report.ops_interrupted += 1,
            }
        }
        if vsl.is_offline() {
            if inflight.is_empty() {
                break;
            }
            continue;
        }
        if issued >= budget {
            if inflight.is_empty() {
                break;
            }
            std::thread::yield_now();
            continue;
        }
        let Some(&slot) = free_slots.last() else {
            std::thread::yield_now();
            continue;
        };
        // Pick an operation that does not overlap anything in flight.
        let dice = rng.range(0, 99);
        let kind = match dice {
            0..=54 => OpKind::Write,
            55..=67 => OpKind::Trim,
            68..=84 => OpKind::Atomic,
            _ => OpKind::Flush,
        };
        let pick = |rng: &mut Rng, n: u64| -> u64 {
            if rng.range(0, 2) == 0 {
                rng.range(0, hot.saturating_sub(n))
            } else {
                rng.range(0, sectors - n)
            }
        };
        let ranges: Vec<(u64, u64)> = match kind {
            OpKind::Write => {
                let n = rng.range(1, 16.min(sector_cap));
                vec![(pick(rng, n), n)]
            }
            OpKind::Trim => {
                let n = rng.range(1, 64);
                vec![(pick(rng, n), n)]
            }
            OpKind::Atomic => {
                let parts = rng.range(2, 3);
                let mut v: Vec<(u64, u64)> = Vec::new();
                let per = (max_atomic / parts).clamp(1, 4).min(sector_cap / parts);
                for _ in 0..parts {
                    let n = rng.range(1, per);
                    let l = pick(rng, n);
                    if v.iter().all(|&(a, an)| l + n <= a || a + an <= l) {
                        v.push((l, n));
                    }
                }
                v
            }
            OpKind::Flush => Vec::new(),
        };
        if ranges.iter().any(|&(l, n)| (l..l + n).any(|x| busy[x as usize])) {
            std::thread::yield_now();
            continue;
        }
        let tag = *next_tag;
        let op = Op {
            kind,
            tag,
            ranges: ranges.clone(),
            slot,
            flush_mark: m.acks,
        };
        let base = slot * slot_bytes;
        let res = match kind {
            OpKind::Write => {
                let (l, n) = ranges[0];
                let len = n as usize * ss;
                fill(&mut buf[..len], ss, l, tag, seed);
                let _ = region_fill(&region, base, &buf[..len]);
                // SAFETY: slot `slot` of the region is reserved for this op
                // until it completes, and the region outlives the channel.
                let iov = unsafe { IoVec::from_region(&region, base, len) };
                match iov {
                    Some(iov) => ch.write(l, &[iov], tag),
                    None => Err(SubmitError::Invalid("buffer")),
                }
            }
            OpKind::Trim => ch.unmap(ranges[0].0, ranges[0].1, tag),
            OpKind::Flush => ch.flush(tag),
            OpKind::Atomic => {
                let mut iovs = Vec::with_capacity(ranges.len());
                let mut off = base;
                for &(l, n) in &ranges {
                    let len = n as usize * ss;
                    fill(&mut buf[..len], ss, l, tag, seed);
                    let _ = region_fill(&region, off, &buf[..len]);
                    // SAFETY: as for writes: reserved slot, live region.
                    match unsafe { IoVec::from_region(&region, off, len) } {
                        Some(v) => iovs.push(v),
                        None => break,
                    }
                    off += len;
                }
                let spec: Vec<(u64, &[IoVec])> =
                    ranges.iter().zip(iovs.iter()).map(|(&(l, _), v)| (l, std::slice::from_ref(v))).collect();
                ch.atomic_write(&spec, tag)
            }
        };
        match res {
            Ok(()) => {
                *next_tag += 1;
                issued += 1;
                free_slots.pop();
                for &(l, n) in &ranges {
                    for x in l..l + n {
                        busy[x as usize] = true;
                    }
                }
                m.issue(&op);
                inflight.insert(tag, op);
            }
            Err(e) if e.is_retryable() => std::thread::yield_now(),
            Err(SubmitError::Offline) => {}
            Err(SubmitError::ReadOnly) => {
                // Worn out: nothing more can be written; keep checking.
                report.read_only = true;
                issued = budget;
            }
            Err(e) => {
                report.violation(format!("submission refused unexpectedly: {e}"));
                issued += 1;
            }
        }
    }
    drop(ch);
    let _ = vsl.ctr.user_pages.load(Ordering::Relaxed);
    Ok(())
}

fn region_fill(region: &DmaRegion, off: usize, data: &[u8]) -> Option<()> {
    let dst = region.ptr_at(off)?;
    if off + data.len() > region.len() {
        return None;
    }
    // SAFETY: bounds checked; the slot is not in use by the card (its
    // previous op completed before the slot was freed).
    unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), dst, data.len()) };
    Some(())
}

/// Reads back touched (or all) LBAs and checks them against the model,
/// then collapses each history to what was found.
fn verify(vsl: &Arc<Vsl>, m: &mut Model, seed: u64, full: bool, report: &mut TortureReport) -> Result<(), VslError> {
    let sectors = vsl.num_sectors();
    let ss = vsl.sector_size() as usize;
    let mut ch = BlockingChannel::new(vsl.channel()?)?;
    let mut seen: HashMap<u64, SectorContent> = HashMap::new();
    let mut lba = 0u64;
    while lba < sectors {
        if !full && !m.touched[lba as usize] {
            lba += 1;
            continue;
        }
        let mut n = 1u64;
        while lba + n < sectors && n < 64 && (full || m.touched[(lba + n) as usize]) {
            n += 1;
        }
        match ch.read(lba, n as usize) {
            Ok(data) => {
                for i in 0..n {
                    let s = &data[i as usize * ss..(i as usize + 1) * ss];
                    seen.insert(lba + i, check_sector(s, lba + i, seed));
                }
            }
            Err(e) => {
                report.read_errors += 1;
                report.violation(format!("read of LBAs {lba}..{} failed after recovery: {e}", lba + n));
            }
        }
        lba += n;
    }
    // Atomic groups: all or nothing.
    for g in &m.groups {
        let lbas: Vec<u64> = g.ranges.iter().flat_map(|&(l, n)| l..l + n).collect();
        let applied = lbas
            .iter()
            .filter(|&&l| seen.get(&l) == Some(&SectorContent::Data { generation: g.tag }))
            .count();
        if applied > 0 && applied < lbas.len() {
            let torn = lbas.iter().any(|&l| {
                let Some(&s) = seen.get(&l) else { return false };
                if s == (SectorContent::Data { generation: g.tag }) {
                    return false;
                }
                let gi = m.hist[l as usize].iter().position(|e| e.tag == g.tag);
                // Without the group in the history a later durable state
                // superseded it; an unmatched value is reported as lost.
                match (gi, m.matching(l, s)) {
                    (Some(gi), Some(si)) => si < gi,
                    _ => false,
                }
            });
            if torn {
                report.torn_atomics += 1;
                let detail: Vec<String> = lbas
                    .iter()
                    .map(|&l| format!("{l}:{:?}/{:?}", seen.get(&l), m.hist[l as usize].iter().map(|e| (e.tag, e.trim)).collect::<Vec<_>>()))
                    .collect();
                report.violation(format!(
                    "atomic group {} torn: {applied} of {} sectors applied: {}",
                    g.tag,
                    lbas.len(),
                    detail.join(", ")
                ));
            }
        }
    }
    let mut keys: Vec<u64> = seen.keys().copied().collect();
    keys.sort_unstable();
    for l in keys {
        let s = seen[&l];
        report.sectors_checked += 1;
        match m.matching(l, s) {
            Some(i) => {
                let e = m.hist[l as usize][i];
                m.hist[l as usize] = vec![e];
            }
            None => {
                match s {
                    SectorContent::Data { generation } if generation != 0 && generation <= m.trimmed[l as usize] => {
                        report.resurrected_trims += 1;
                        report.violation(format!("LBA {l}: data of write {generation} came back after a completed trim"));
                    }
                    SectorContent::Data { .. } | SectorContent::Zero => {
                        report.lost_writes += 1;
                        report.violation(format!(
                            "LBA {l}: found {s:?}, expected one of {:?}",
                            m.hist[l as usize].iter().map(|e| if e.trim { 0 } else { e.tag }).collect::<Vec<_>>()
                        ));
                    }
                    _ => {
                        report.corrupt_sectors += 1;
                        report.violation(format!("LBA {l}: {s:?}"));
                    }
                }
                let e = match s {
                    SectorContent::Data { generation } => Entry { tag: generation, trim: false },
                    _ => Entry { tag: 0, trim: true },
                };
                m.hist[l as usize] = vec![e];
            }
        }
    }
    Ok(())
}
