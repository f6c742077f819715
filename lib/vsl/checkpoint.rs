//! The clean-detach checkpoint: the forward map, trim-note page bits, block
//! ages, counters and the next version sequence, serialized into free
//! blocks so the next attach can skip the scan.
//!
//! Layout (little endian): magic `VSLC` (4), version (2), reserved (2),
//! user sectors (8), blocks (4), pages (4), next sequence (8), counter count
//! (4), counters (8 each), block ages (8 each), trim words count (8), trim
//! words (8 each), map entries (4 each). Its crc32c is kept in the
//! [`super::meta::CleanMark`] that names the blocks.

use crate::card::{CardStatus, Ppa};

use super::blocks::BlockTable;
use super::codec::{Reader, Truncated, Writer};
use super::counters::CounterSnapshot;
use super::error::VslError;
use super::map::{ForwardMap, Layout, PageBits};
use super::oob::{OobRecord, PageKind};
use super::syncio::{SlotIo, SLOT_PAGES};

const MAGIC: u32 = u32::from_le_bytes(*b"VSLC");
const VERSION: u16 = 1;

/// What a checkpoint restores besides the map, bits and ages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CheckpointHeader {
    /// Next version sequence.
    pub next_seq: u64,
    /// Counters at detach.
    pub counters: CounterSnapshot,
}

/// Serializes the state.
pub fn encode(map: &ForwardMap, trim: &PageBits, blocks: &BlockTable, layout: &Layout, header: &CheckpointHeader) -> Vec<u8> {
    let counters = header.counters.to_vec();
    let mut w = Writer::with_capacity(64 + counters.len() * 8 + blocks.len() as usize * 8 + trim.word_count() * 8 + map.len() as usize * 4);
    w.u32(MAGIC)
        .u16(VERSION)
        .u16(0)
        .u64(map.len())
        .u32(layout.total_blocks())
        .u32(layout.total_pages())
        .u64(header.next_seq)
        .u32(counters.len() as u32);
    for c in counters {
        w.u64(c);
    }
    for (_, m) in blocks.iter() {
        w.u64(m.age.load(std::sync::atomic::Ordering::Acquire));
    }
    w.u64(trim.word_count() as u64);
    for word in trim.words() {
        w.u64(word);
    }
    for e in map.iter() {
        w.u32(e);
    }
    w.finish()
}

/// Restores a checkpoint into fresh tables. Errors name what is wrong.
pub fn decode(
    bytes: &[u8],
    map: &ForwardMap,
    trim: &PageBits,
    blocks: &BlockTable,
    layout: &Layout,
) -> Result<CheckpointHeader, String> {
    let mut r = Reader::new(bytes);
    let t = |_: Truncated| "checkpoint is truncated".to_string();
    if r.u32().map_err(t)? != MAGIC {
        return Err("checkpoint has no VSLC signature".into());
    }
    let version = r.u16().map_err(t)?;
    if version != VERSION {
        return Err(format!("checkpoint version {version} is not supported"));
    }
    r.u16().map_err(t)?;
    let sectors = r.u64().map_err(t)?;
    let nblocks = r.u32().map_err(t)?;
    let npages = r.u32().map_err(t)?;
    if sectors != map.len() || nblocks != layout.total_blocks() || npages != layout.total_pages() {
        return Err(format!(
            "checkpoint describes {sectors} sectors / {nblocks} blocks / {npages} pages, the format has {} / {} / {}",
            map.len(),
            layout.total_blocks(),
            layout.total_pages()
        ));
    }
    let next_seq = r.u64().map_err(t)?;
    let ncounters = r.u32().map_err(t)? as usize;
    if ncounters > 4096 {
        return Err("checkpoint counter table is implausibly large".into());
    }
    let counters: Vec<u64> = (0..ncounters).map(|_| r.u64()).collect::<Result<_, _>>().map_err(t)?;
    for b in 0..nblocks {
        blocks.get(b).age.store(r.u64().map_err(t)?, std::sync::atomic::Ordering::Release);
    }
    let words = r.u64().map_err(t)? as usize;
    if words != trim.word_count() {
        return Err("checkpoint trim bitmap has the wrong size".into());
    }
    for i in 0..words {
        trim.set_word(i, r.u64().map_err(t)?);
    }
    let limit = layout.total_phys_sectors();
    for l in 0..sectors {
        let e = r.u32().map_err(t)?;
        if e != super::map::UNMAPPED && e as u64 >= limit {
            return Err(format!("checkpoint maps LBA {l} to physical sector {e}, beyond the card"));
        }
        map.store(l, e);
    }
    Ok(CheckpointHeader {
        next_seq,
        counters: CounterSnapshot::from_slice(&counters),
    })
}

/// Writes `bytes` into `blocks` (linear block numbers, erased), one page
/// after another, with Checkpoint OOB records. Returns pages written.
pub fn write(io: &mut SlotIo, layout: &Layout, blocks: &[u32], bytes: &[u8], seq: u64, plp: bool) -> Result<u64, VslError> {
    let page_size = layout.geometry.page_size as usize;
    let ppb = layout.pages_per_block() as usize;
    let pages = bytes.len().div_ceil(page_size);
    let mut page = vec![0u8; page_size];
    let mut oob = vec![0u8; layout.geometry.oob_size as usize];
    let mut done = 0usize;
    while done < pages {
        let bi = done / ppb;
        let in_block = done % ppb;
        let n = (pages - done).min(ppb - in_block).min(SLOT_PAGES);
        let b = blocks[bi];
        let mut ppas = Vec::with_capacity(n);
        for i in 0..n {
            let p = done + i;
            let chunk = &bytes[p * page_size..((p + 1) * page_size).min(bytes.len())];
            page.fill(0);
            page[..chunk.len()].copy_from_slice(chunk);
            let mut rec = OobRecord::new(PageKind::Checkpoint, seq);
            rec.count = chunk.len().min(u16::MAX as usize) as u16;
            rec.member_index = p as u16;
            rec.encode(&page, &mut oob);
            io.fill_data(0, i, &page);
            io.fill_oob(0, i, &oob);
            ppas.push(Ppa::new(layout.die_of_block(b), b % layout.geometry.blocks_per_die, (in_block + i) as u32));
        }
        let c = io.program_sync(&ppas)?;
        if c.status != CardStatus::Success {
            return Err(VslError::Media {
                what: "writing the checkpoint",
                location: format!("block {b}"),
                status: c.status,
            });
        }
        done += n;
    }
    if !plp {
        io.flush_sync()?;
    }
    Ok(pages as u64)
}

/// Reads `len` checkpoint bytes back from `blocks`.
pub fn read(
    io: &mut SlotIo,
    layout: &Layout,
    blocks: &[u32],
    len: u64,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<Vec<u8>, VslError> {
    let page_size = layout.geometry.page_size as usize;
    let ppb = layout.pages_per_block() as usize;
    let pages = (len as usize).div_ceil(page_size);
    if pages > blocks.len() * ppb {
        return Err(VslError::Corrupt(format!(
            "clean mark names {} checkpoint blocks for {len} bytes",
            blocks.len()
        )));
    }
    let mut out = Vec::with_capacity(pages * page_size);
    let mut page = vec![0u8; page_size];
    let mut done = 0usize;
    progress(0, pages as u64);
    while done < pages {
        let bi = done / ppb;
        let in_block = done % ppb;
        let n = (pages - done).min(ppb - in_block).min(SLOT_PAGES);
        let b = blocks[bi];
        let ppas: Vec<Ppa> = (0..n)
            .map(|i| Ppa::new(layout.die_of_block(b), b % layout.geometry.blocks_per_die, (in_block + i) as u32))
            .collect();
        let c = io.read_sync(&ppas, true)?;
        if !c.status.is_ok() {
            return Err(VslError::Media {
                what: "reading the checkpoint",
                location: format!("block {b}"),
                status: c.status,
            });
        }
        for i in 0..n {
            io.copy_data(0, i, &mut page);
            out.extend_from_slice(&page);
        }
        done += n;
        progress(done as u64, pages as u64);
    }
    out.truncate(len as usize);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::card::Geometry;

    #[test]
    fn checkpoint_round_trips_and_rejects_damage() {
        let g = Geometry {
            channels: 1,
            dies_per_channel: 2,
            blocks_per_die: 4,
            pages_per_block: 8,
            page_size: 4096,
            oob_size: 128,
        };
        let layout = Layout::new(g, 512).unwrap();
        let map = ForwardMap::new(100);
        map.store(3, 77);
        map.store(99, 5);
        let trim = PageBits::new(layout.total_pages() as u64);
        trim.set(9, true);
        let blocks = BlockTable::new(2, 4);
        blocks.get(5).age.store(1234, std::sync::atomic::Ordering::Relaxed);
        let header = CheckpointHeader {
            next_seq: 4242,
            counters: CounterSnapshot {
                user_pages: 17,
                ..Default::default()
            },
        };
        let bytes = encode(&map, &trim, &blocks, &layout, &header);

        let map2 = ForwardMap::new(100);
        let trim2 = PageBits::new(layout.total_pages() as u64);
        let blocks2 = BlockTable::new(2, 4);
        let h = decode(&bytes, &map2, &trim2, &blocks2, &layout).unwrap();
        assert_eq!(h, header);
        assert_eq!(map2.get(3), 77);
        assert_eq!(map2.get(99), 5);
        assert_eq!(map2.get(0), super::super::map::UNMAPPED);
        assert!(trim2.get(9));
        assert_eq!(blocks2.get(5).age.load(std::sync::atomic::Ordering::Relaxed), 1234);

        assert!(decode(&bytes[..bytes.len() - 1], &map2, &trim2, &blocks2, &layout).is_err());
        let other = ForwardMap::new(101);
        assert!(decode(&bytes, &other, &trim2, &blocks2, &layout).is_err());
        let mut bad = bytes.clone();
        let at = bad.len() - 4;
        bad[at..].copy_from_slice(&u32::MAX.wrapping_sub(5).to_le_bytes());
        assert!(decode(&bad, &map2, &trim2, &blocks2, &layout).is_err(), "out-of-card entry refused");
    }
}
