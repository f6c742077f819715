//! Dirty attach: rebuild the forward map by scanning the OOB record of every
//! written page.
//!
//! Blocks are read a window at a time with every page's OOB in flight at
//! once (OOB-only vector reads). Unreadable pages (torn by a power cut,
//! uncorrectable) and records with a bad header CRC are discarded; atomic
//! group members count only if every member of the group is present and
//! readable in the same block. Replay keeps, for every LBA, the copy with
//! the highest version sequence; a trim note with a higher sequence than any
//! data unmaps it. The scan keeps one `u64` sequence per user sector while
//! it runs (freed afterwards).

use std::collections::HashMap;

use crate::card::{CardStatus, Ppa};

use super::blocks::{BlockState, BlockTable};
use super::error::VslError;
use super::map::{ForwardMap, Layout, PageBits, UNMAPPED};
use super::oob::{decode_trim_ranges, OobRecord, PageKind, OOB_RECORD_LEN};
use super::syncio::{SlotIo, SLOT_PAGES};

/// What the scan found.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ScanOutcome {
    /// Highest version sequence seen.
    pub max_seq: u64,
    /// Pages whose OOB was read.
    pub pages_read: u64,
    /// Pages discarded (unreadable or not an intact record).
    pub discarded: u64,
    /// Atomic groups discarded because members were missing.
    pub torn_groups: u64,
}

/// The state the scan fills in.
pub struct ScanTarget<'a> {
    /// Addressing.
    pub layout: Layout,
    /// The map to fill (all `UNMAPPED` on entry).
    pub map: &'a ForwardMap,
    /// Trim-note page bits to set.
    pub trim_pages: &'a PageBits,
    /// Blocks: those in state `Full` with `written > 0` are scanned; their
    /// ages are set from the records.
    pub blocks: &'a BlockTable,
}

struct PageRec {
    rec: Option<OobRecord>,
}

/// Scans every `Full` block of `target`, reporting `progress(done, total)`
/// in blocks.
pub fn scan(io: &mut SlotIo, target: &ScanTarget<'_>, progress: &mut dyn FnMut(u64, u64)) -> Result<ScanOutcome, VslError> {
    let layout = target.layout;
    let ppb = layout.pages_per_block() as usize;
    let num_sectors = target.map.len();
    let mut seqs = vec![0u64; num_sectors as usize];
    let mut out = ScanOutcome::default();
    let todo: Vec<u32> = target
        .blocks
        .iter()
        .filter(|(_, m)| m.state() == BlockState::Full && m.written.load(std::sync::atomic::Ordering::Acquire) > 0)
        .map(|(b, _)| b)
        .collect();
    let total = todo.len() as u64;
    let cmds_per_block = ppb.div_ceil(SLOT_PAGES).max(1);
    let window = (io.slots() / cmds_per_block).max(1);
    let mut recs: Vec<Vec<PageRec>> = (0..window).map(|_| Vec::with_capacity(ppb)).collect();
    let mut raw = [0u8; OOB_RECORD_LEN];
    let mut page_buf = vec![0u8; layout.geometry.page_size as usize];
    progress(0, total);
    for (wi, chunk) in todo.chunks(window).enumerate() {
        // Submit every page's OOB read of the window.
        let mut slot_of = Vec::with_capacity(chunk.len() * cmds_per_block);
        for (bi, &b) in chunk.iter().enumerate() {
            let written = target.blocks.get(b).written.load(std::sync::atomic::Ordering::Acquire) as usize;
            recs[bi].clear();
            recs[bi].extend((0..written.min(ppb)).map(|_| PageRec { rec: None }));
            let mut first = 0;
            while first < written.min(ppb) {
                let n = (written.min(ppb) - first).min(SLOT_PAGES);
                let slot = bi * cmds_per_block + first / SLOT_PAGES;
                let ppas: Vec<Ppa> = (first..first + n)
                    .map(|p| Ppa::new(layout.die_of_block(b), b % layout.geometry.blocks_per_die, p as u32))
                    .collect();
                io.submit_read(slot, &ppas, false).map_err(|_| VslError::Media {
                    what: "recovery scan",
                    location: format!("block {b}"),
                    status: CardStatus::InvalidField,
                })?;
                slot_of.push((slot, bi, first, n));
                first += n;
            }
        }
        let mut results: Vec<(usize, u64, CardStatus)> = Vec::with_capacity(slot_of.len());
        io.drain("recovery scan", |c| results.push((c.tag as usize, c.failed_mask, c.status)))?;
        for (slot, mask, status) in results {
            if status == CardStatus::PowerCut {
                return Err(VslError::PowerLost { what: "recovery scan" });
            }
            let Some(&(_, bi, first, n)) = slot_of.iter().find(|s| s.0 == slot) else { continue };
            for i in 0..n {
                out.pages_read += 1;
                let failed = mask & (1 << i) != 0 || (!status.is_ok() && mask == 0);
                if failed {
                    if status != CardStatus::Erased {
                        out.discarded += 1;
                    }
                    continue;
                }
                io.copy_oob(slot, i, &mut raw);
                match OobRecord::decode(&raw) {
                    Some(d) => recs[bi][first + i].rec = Some(d.record),
                    None => out.discarded += 1,
                }
            }
        }
        // Replay the window.
        for (bi, &b) in chunk.iter().enumerate() {
            let first_page = layout.first_page(b);
            let mut groups: HashMap<u64, (u16, u64)> = HashMap::new();
            for pr in recs[bi].iter() {
                if let Some(r) = pr.rec.filter(|r| r.is_atomic()) {
                    let e = groups.entry(r.group).or_insert((r.member_count, 0));
                    if e.0 == r.member_count && r.member_index < 64 {
                        e.1 |= 1 << r.member_index;
                    }
                }
            }
            let complete = |r: &OobRecord| -> bool {
                groups.get(&r.group).is_some_and(|&(count, mask)| {
                    count as u32 <= 64 && mask.count_ones() == count as u32
                })
            };
            let mut torn: Vec<u64> = Vec::new();
            let mut notes: Vec<(u32, OobRecord)> = Vec::new();
            let mut age = 0u64;
            for (p, pr) in recs[bi].iter().enumerate() {
                let Some(r) = pr.rec else { continue };
                out.max_seq = out.max_seq.max((0..r.count.min(8) as usize).map(|i| r.slot_seq(i)).fold(r.seq, u64::max));
                let page = first_page + p as u32;
                match r.kind {
                    PageKind::Data => {
                        if r.is_atomic() && !complete(&r) {
                            if !torn.contains(&r.group) {
                                torn.push(r.group);
                            }
                            continue;
                        }
                        for (slot, &l) in r.lbas.iter().enumerate().take(r.count as usize) {
                            let l = l as u64;
                            let seq = r.slot_seq(slot);
                            age = age.max(seq);
                            if l < num_sectors && seq > seqs[l as usize] {
                                seqs[l as usize] = seq;
                                target.map.store(l, layout.phys(page, slot as u32));
                            }
                        }
                    }
                    PageKind::Trim => {
                        age = age.max(r.seq);
                        notes.push((page, r));
                    }
                    PageKind::Pad | PageKind::Checkpoint => {}
                }
            }
            out.torn_groups += torn.len() as u64;
            // Trim notes need their page data (the ranges).
            for (page, r) in notes {
                let c = io.read_sync(&[layout.ppa(page)], true)?;
                if !c.status.is_ok() {
                    out.discarded += 1;
                    continue;
                }
                io.copy_data(0, 0, &mut page_buf);
                io.copy_oob(0, 0, &mut raw);
                let intact = OobRecord::decode(&raw).is_some_and(|d| d.data_matches(&page_buf));
                if !intact {
                    out.discarded += 1;
                    continue;
                }
                target.trim_pages.set(page, true);
                let note = layout.phys(page, 0);
                for range in decode_trim_ranges(&page_buf, r.count as usize) {
                    let end = (range.lba as u64 + range.count as u64).min(num_sectors);
                    for l in range.lba as u64..end {
                        if r.seq > seqs[l as usize] {
                            seqs[l as usize] = r.seq;
                            target.map.store(l, note);
                        }
                    }
                }
            }
            target.blocks.get(b).age.store(age, std::sync::atomic::Ordering::Release);
            progress((wi * window + bi + 1) as u64, total);
        }
    }
    Ok(out)
}

/// Recomputes every block's valid and note-reference counts from the map.
pub fn rebuild_counts(layout: &Layout, map: &ForwardMap, trim_pages: &PageBits, blocks: &BlockTable) {
    use std::sync::atomic::Ordering;
    for (_, m) in blocks.iter() {
        m.valid.store(0, Ordering::Relaxed);
        m.note_refs.store(0, Ordering::Relaxed);
    }
    for phys in map.iter() {
        if phys == UNMAPPED {
            continue;
        }
        let page = layout.page_of(phys);
        let m = blocks.get(layout.block_of_page(page));
        if trim_pages.get(page) {
            m.note_refs.fetch_add(1, Ordering::Relaxed);
        } else {
            m.valid.fetch_add(1, Ordering::Relaxed);
        }
    }
}
