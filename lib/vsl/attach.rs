//! Attach (load the checkpoint after a clean detach, or scan after a crash)
//! and detach (checkpoint plus clean mark).

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_queue::ArrayQueue;
use parking_lot::Mutex;

use crate::card::{BlockStateCode, BadBlockReason, Card};

use super::blocks::{BlockState, BlockTable};
use super::checkpoint::{self, CheckpointHeader};
use super::counters::Counters;
use super::device::{min_spare_blocks, AttachKind, AttachReport, MetaState, Tuning, Vsl};
use super::error::VslError;
use super::format::{all_block_info, attach_stripe, GC_RESERVE_BLOCKS};
use super::groomer::Groomer;
use super::map::{ForwardMap, Layout, PageBits};
use super::meta::{CleanMark, MetaRecord};
use super::metalog::{locate_meta_blocks, MetaLog};
use super::options::AttachOptions;
use super::recovery::{rebuild_counts, scan, ScanTarget};
use super::syncio::SlotIo;

impl Vsl {
    /// Attaches the VSL on a formatted card: loads the checkpoint after a
    /// clean detach, otherwise scans every written page (reporting
    /// `progress(done, total)`), then marks the card dirty before any write
    /// is accepted.
    pub fn attach(card: Arc<Card>, opts: &AttachOptions, progress: &mut dyn FnMut(u64, u64)) -> Result<Arc<Vsl>, VslError> {
        let start = Instant::now();
        let id = card.identify().clone();
        let g = id.geometry;
        let infos = all_block_info(&card)?;
        let die0 = &infos[..g.blocks_per_die as usize];
        let meta_blocks = locate_meta_blocks(die0).ok_or(VslError::NotFormatted)?;
        let plp = card.health()?.powerloss_protection;
        let mut io = SlotIo::new(&card, 32, true)?;
        let wps = [
            die0[meta_blocks[0] as usize].write_pointer,
            die0[meta_blocks[1] as usize].write_pointer,
        ];
        let (log, metascan) = MetaLog::load(&mut io, meta_blocks, wps, g.page_size as usize, g.pages_per_block, plp)?
            .ok_or(VslError::NotFormatted)?;
        let sb = metascan.superblock.clone();
        if sb.geometry != g {
            return Err(VslError::GeometryMismatch(format!(
                "formatted for {:?}, card has {:?}",
                sb.geometry, g
            )));
        }
        if sb.meta_blocks != meta_blocks {
            return Err(VslError::Corrupt(format!(
                "superblock names metadata blocks {:?} but the first good blocks of die 0 are {:?}",
                sb.meta_blocks, meta_blocks
            )));
        }
        let layout = Layout::new(g, sb.sector_size)
            .ok_or_else(|| VslError::Corrupt(format!("superblock sector size {} does not fit the card", sb.sector_size)))?;
        if sb.num_sectors == 0 || sb.num_sectors >= u32::MAX as u64 {
            return Err(VslError::Corrupt(format!("superblock capacity of {} sectors is impossible", sb.num_sectors)));
        }

        // Tunables.
        let dies = g.dies();
        let gc_reserve = GC_RESERVE_BLOCKS;
        let spb = layout.sectors_per_page as u64 * g.pages_per_block as u64;
        let needed_blocks = sb.num_sectors.div_ceil(spb);
        let usable = infos.iter().filter(|e| e.state != BlockStateCode::Bad).count() as u64 - 2;
        let spare_blocks = usable.saturating_sub(needed_blocks + gc_reserve as u64 + 2);
        let stripe =
            if opts.stripe_width == 0 { attach_stripe(dies, spare_blocks) } else { opts.stripe_width.clamp(1, 64) };
        let gc_low = if opts.gc_low_blocks == 0 { gc_reserve + stripe + 1 } else { opts.gc_low_blocks.max(gc_reserve + 1) };
        let gc_high = if opts.gc_high_blocks == 0 { gc_low + 2 } else { opts.gc_high_blocks.max(gc_low + 1) };
        let wear_spread = if opts.wear_spread == 0 {
            (id.identity.rated_pe_cycles / 20).max(8)
        } else {
            opts.wear_spread
        };
        let min_spare = min_spare_blocks(gc_reserve, stripe);
        let factory_bad = infos.iter().filter(|e| e.bad_reason == Some(BadBlockReason::Factory)).count() as u64;
        let initial_reserve = g.total_blocks().saturating_sub(factory_bad + 2 + needed_blocks + min_spare);
        let max_channels = opts.max_channels.clamp(1, ((spare_blocks / stripe as u64).max(1)) as usize);
        let tune = Tuning {
            stripe,
            gc_reserve,
            gc_low,
            gc_high,
            wear_spread,
            max_channels,
            max_atomic_pages: sb.max_atomic_pages.clamp(1, 32),
            needed_blocks,
            initial_reserve,
        };

        // Tables.
        let blocks = BlockTable::new(dies, g.blocks_per_die);
        for (b, e) in infos.iter().enumerate() {
            let m = blocks.get(b as u32);
            m.pe.store(e.pe_cycles, Ordering::Relaxed);
            let on_die0 = (b as u32) < g.blocks_per_die;
            let unreadable = matches!(e.bad_reason, None | Some(BadBlockReason::Factory) | Some(BadBlockReason::DieFailure));
            if on_die0 && meta_blocks.contains(&(b as u32)) {
                m.set_state(BlockState::Meta);
            } else if e.state == BlockStateCode::Bad && (unreadable || e.write_pointer == 0) {
                m.set_state(BlockState::Bad);
            } else if e.state == BlockStateCode::Bad {
                // A block that failed a program or erase still reads: it may
                // hold the only copy of data the groomer had not moved out
                // yet. Scan it like any written block; classified below.
                m.set_state(BlockState::Full);
                m.written.store(e.write_pointer.min(g.pages_per_block), Ordering::Relaxed);
            } else {
                // Written blocks are full (appends resume in fresh blocks);
                // erased ones join the pools below.
                m.set_state(BlockState::Full);
                m.written.store(e.write_pointer.min(g.pages_per_block), Ordering::Relaxed);
            }
        }
        let map = ForwardMap::new(sb.num_sectors);
        let trim_pages = PageBits::new(g.total_pages());
        let counters = Counters::default();
        let mut report = AttachReport {
            kind: AttachKind::Scan,
            millis: 0,
            pages_read: 0,
            pages_discarded: 0,
            torn_atomic_groups: 0,
            checkpoint_fallback: false,
        };
        let mut next_seq = 1u64;
        let clean = match &metascan.latest.1 {
            MetaRecord::Clean(mark) if !opts.force_scan => Some(mark.clone()),
            _ => None,
        };
        let mut scanned = true;
        if let Some(mark) = &clean {
            next_seq = next_seq.max(mark.next_seq);
            if mark.bytes == 0 {
                report.kind = AttachKind::Fresh;
                scanned = false;
            } else {
                match load_checkpoint(&mut io, &layout, mark, &map, &trim_pages, &blocks, progress) {
                    Ok((h, pages)) => {
                        next_seq = next_seq.max(h.next_seq);
                        counters.restore(&h.counters);
                        report.kind = AttachKind::Clean;
                        report.pages_read = pages;
                        scanned = false;
                    }
                    Err(_) => {
                        report.checkpoint_fallback = true;
                        // Start the scan from clean tables.
                        for l in 0..map.len() {
                            map.store(l, super::map::UNMAPPED);
                        }
                        for i in 0..trim_pages.word_count() {
                            trim_pages.set_word(i, 0);
                        }
                    }
                }
            }
        }
        if scanned {
            let target = ScanTarget {
                layout,
                map: &map,
                trim_pages: &trim_pages,
                blocks: &blocks,
            };
            let out = scan(&mut io, &target, progress)?;
            next_seq = next_seq.max(out.max_seq + 1);
            report.kind = AttachKind::Scan;
            report.pages_read = out.pages_read;
            report.pages_discarded = out.discarded;
            report.torn_atomic_groups = out.torn_groups;
        }
        // Erased blocks join the pools.
        for (b, e) in infos.iter().enumerate() {
            let m = blocks.get(b as u32);
            if m.state() == BlockState::Full && e.write_pointer == 0 && e.state != BlockStateCode::Bad {
                blocks.push_free(b as u32);
            }
        }
        rebuild_counts(&layout, &map, &trim_pages, &blocks);
        // Failed blocks: live data is moved out by the groomer, then they
        // are never used again.
        let mut retiring = false;
        for (b, e) in infos.iter().enumerate() {
            let m = blocks.get(b as u32);
            if e.state == BlockStateCode::Bad && m.state() == BlockState::Full {
                if m.is_empty() {
                    m.set_state(BlockState::Bad);
                } else {
                    m.set_state(BlockState::Retiring);
                    retiring = true;
                }
            }
        }
        let groomer = Groomer::new(&card, layout, opts.queue_depth)?;
        // Any crash from here on must scan: mark dirty before accepting writes.
        let (mut log, mut io) = (log, io);
        log.append(&mut io, &MetaRecord::Dirty)?;
        report.millis = start.elapsed().as_millis() as u64;
        let vsl = Arc::new(Vsl {
            card: card.clone(),
            sb,
            layout,
            map,
            blocks,
            trim_pages,
            seq: AtomicU64::new(next_seq),
            ctr: counters,
            opts: opts.clone(),
            read_gates: super::readgate::ReadGates::new(tune.max_channels),
            plp,
            tune,
            read_only: AtomicBool::new(false),
            offline: AtomicBool::new(false),
            detached: AtomicBool::new(false),
            channels: AtomicUsize::new(0),
            channel_ids: AtomicUsize::new(0),
            orphans: ArrayQueue::new(256),
            gc_active: AtomicBool::new(retiring),
            groomer: Mutex::new(groomer),
            meta: Mutex::new(MetaState { log, io }),
            report,
        });
        vsl.update_reserve();
        Ok(vsl)
    }

    /// Detaches cleanly: stops the groomer, writes a checkpoint of the
    /// map into free blocks and a clean mark, and takes the VSL offline.
    /// Fails while channels are open. If no room is left for the checkpoint
    /// the card stays marked dirty (the next attach scans) and detach still
    /// succeeds.
    pub fn detach(&self) -> Result<(), VslError> {
        let open = self.channels.load(Ordering::Acquire);
        if open > 0 {
            return Err(VslError::ChannelsOpen(open));
        }
        if self.detached.swap(true, Ordering::AcqRel) {
            return Err(VslError::Detached);
        }
        if self.is_offline() {
            return Err(VslError::PowerLost { what: "detach" });
        }
        if !self.groomer.lock().quiesce(self, Duration::from_secs(60)) {
            return Err(VslError::Timeout {
                what: "the groomer's commands to complete before detach",
                secs: 60,
            });
        }
        let header = CheckpointHeader {
            next_seq: self.seq.load(Ordering::Acquire),
            counters: self.ctr.snapshot(),
        };
        let bytes = checkpoint::encode(&self.map, &self.trim_pages, &self.blocks, &self.layout, &header);
        let crc = crc32c::crc32c(&bytes);
        let g = self.layout.geometry;
        let block_bytes = g.pages_per_block as usize * g.page_size as usize;
        let nblocks = bytes.len().div_ceil(block_bytes);
        let mut meta = self.meta.lock();
        let MetaState { log, io } = &mut *meta;
        if nblocks > MetaRecord::max_clean_blocks(g.page_size as usize) || (self.blocks.free_count() as usize) < nblocks {
            // Stay dirty: the next attach scans.
            self.offline.store(true, Ordering::Release);
            return Ok(());
        }
        let mut chosen = Vec::with_capacity(nblocks);
        let mut die = 0;
        while chosen.len() < nblocks {
            match self.blocks.pop_free_near(die) {
                Some(b) => {
                    self.blocks.get(b).set_state(BlockState::Checkpoint);
                    chosen.push(b);
                }
                None => break,
            }
            die = (die + 1) % g.dies();
        }
        if chosen.len() < nblocks {
            self.offline.store(true, Ordering::Release);
            return Ok(());
        }
        let pages = checkpoint::write(io, &self.layout, &chosen, &bytes, header.next_seq, self.plp)?;
        self.ctr.checkpoint_pages.fetch_add(pages, Ordering::Relaxed);
        io.flush_sync()?;
        log.append(
            io,
            &MetaRecord::Clean(CleanMark {
                next_seq: header.next_seq,
                bytes: bytes.len() as u64,
                crc,
                blocks: chosen,
            }),
        )?;
        self.offline.store(true, Ordering::Release);
        Ok(())
    }
}

/// Reads and applies a checkpoint; returns its header and pages read.
fn load_checkpoint(
    io: &mut SlotIo,
    layout: &Layout,
    mark: &CleanMark,
    map: &ForwardMap,
    trim: &PageBits,
    blocks: &BlockTable,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<(CheckpointHeader, u64), VslError> {
    let bytes = checkpoint::read(io, layout, &mark.blocks, mark.bytes, progress)?;
    if crc32c::crc32c(&bytes) != mark.crc {
        return Err(VslError::Corrupt("checkpoint checksum mismatch".into()));
    }
    let h = checkpoint::decode(&bytes, map, trim, blocks, layout).map_err(VslError::Corrupt)?;
    let pages = bytes.len().div_ceil(layout.geometry.page_size as usize) as u64;
    Ok((h, pages))
}
