//! Formatting a card: choose sector size and capacity, skip bad blocks,
//! erase everything, write the superblock and an empty clean mark.

use std::sync::Arc;

use crate::card::{BlockInfoEntry, BlockStateCode, Card, CardStatus};

use super::device::{min_spare_blocks, Vsl};
use super::error::VslError;
use super::map::Layout;
use super::meta::{CleanMark, MetaRecord, Superblock};
use super::metalog::{locate_meta_blocks, MetaLog};
use super::oob::OOB_RECORD_LEN;
use super::options::{CapacitySpec, FormatOptions};
use super::syncio::SlotIo;

/// Blocks only the groomer may take (the user-write wall).
pub(crate) const GC_RESERVE_BLOCKS: u32 = 2;

/// Stripe width the format reserves spare blocks for: open blocks per
/// channel on a small card, and the least a channel gets by default.
pub(crate) fn default_stripe(dies: u32) -> u32 {
    dies.clamp(1, 4)
}

/// Widest stripe chosen by default: one open block on each of up to this
/// many dies per channel.
pub(crate) const MAX_DEFAULT_STRIPE: u32 = 32;

/// Default stripe at attach: every die up to [`MAX_DEFAULT_STRIPE`], so one
/// channel's writes (and later its reads) run on all dies in parallel under
/// NAND timings, as long as the card's spare blocks hold at least eight
/// channels' open blocks; never narrower than [`default_stripe`].
pub(crate) fn attach_stripe(dies: u32, spare_blocks: u64) -> u32 {
    let wide = dies.min(MAX_DEFAULT_STRIPE).min((spare_blocks / 8).min(u32::MAX as u64) as u32);
    default_stripe(dies).max(wide)
}

/// Block info of every block, in linear order.
pub(crate) fn all_block_info(card: &Card) -> Result<Vec<BlockInfoEntry>, VslError> {
    let g = card.geometry();
    let mut out = Vec::with_capacity(g.total_blocks() as usize);
    for die in 0..g.dies() {
        out.extend(card.block_info(die, 0, g.blocks_per_die)?);
    }
    Ok(out)
}

/// What a format will produce, computed before anything is erased.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FormatPlan {
    /// User sectors.
    pub num_sectors: u64,
    /// Blocks the capacity needs.
    pub needed_blocks: u64,
    /// Good blocks available for data (excluding the metadata blocks).
    pub usable_blocks: u64,
    /// Blocks the VSL needs beyond the capacity to operate.
    pub min_spare: u64,
}

/// Computes the user capacity for `opts` on a card of `layout` with
/// `usable_blocks` good data blocks and `advertised` bytes.
pub fn plan_capacity(
    layout: &Layout,
    usable_blocks: u64,
    advertised: u64,
    opts: &FormatOptions,
) -> Result<FormatPlan, VslError> {
    let g = layout.geometry;
    let ss = layout.sector_size as u64;
    let bytes = match opts.capacity {
        None => advertised,
        Some(CapacitySpec::Bytes(b)) => b,
        Some(CapacitySpec::Percent(p)) => (g.raw_bytes() as f64 * p / 100.0) as u64,
    };
    let num_sectors = bytes / ss;
    let min_spare = min_spare_blocks(GC_RESERVE_BLOCKS, default_stripe(g.dies()));
    let sectors_per_block = layout.sectors_per_page as u64 * g.pages_per_block as u64;
    let max_blocks = usable_blocks.saturating_sub(min_spare);
    let max_sectors = (max_blocks * sectors_per_block).min(u32::MAX as u64 - 1);
    if num_sectors == 0 {
        return Err(VslError::InvalidOptions(format!(
            "capacity of {bytes} bytes holds no {ss}-byte sector"
        )));
    }
    if num_sectors > max_sectors {
        return Err(VslError::InvalidOptions(format!(
            "capacity of {} bytes exceeds the {} bytes this card can hold while keeping {} spare blocks for the groomer \
             ({} good data blocks); choose a smaller --capacity (e.g. {}%)",
            num_sectors * ss,
            max_sectors * ss,
            min_spare,
            usable_blocks,
            ((max_sectors * ss) as f64 * 100.0 / g.raw_bytes() as f64).floor()
        )));
    }
    Ok(FormatPlan {
        num_sectors,
        needed_blocks: num_sectors.div_ceil(sectors_per_block),
        usable_blocks,
        min_spare,
    })
}

/// A format UUID from `seed`, or from the clock and process id.
fn make_uuid(seed: Option<u64>) -> [u8; 16] {
    let base = seed.unwrap_or_else(|| {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        t ^ ((std::process::id() as u64) << 32)
    });
    let mix = |mut x: u64| {
        x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
        x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        x ^ (x >> 31)
    };
    let a = mix(base);
    let b = mix(a ^ 0x5555);
    let mut u = [0u8; 16];
    u[..8].copy_from_slice(&a.to_le_bytes());
    u[8..].copy_from_slice(&b.to_le_bytes());
    u[6] = (u[6] & 0x0f) | 0x40; // version 4
    u[8] = (u[8] & 0x3f) | 0x80; // RFC 4122 variant
    u
}

impl Vsl {
    /// Reads the superblock of a formatted card without attaching
    /// (`Ok(None)` if the card holds no format).
    pub fn read_superblock(card: &Card) -> Result<Option<Superblock>, VslError> {
        let g = card.geometry();
        let infos = all_block_info(card)?;
        let die0 = &infos[..g.blocks_per_die as usize];
        let Some(meta) = locate_meta_blocks(die0) else { return Ok(None) };
        let plp = card.health()?.powerloss_protection;
        let mut io = SlotIo::new(card, 1, true)?;
        let wps = [die0[meta[0] as usize].write_pointer, die0[meta[1] as usize].write_pointer];
        Ok(MetaLog::load(&mut io, meta, wps, g.page_size as usize, g.pages_per_block, plp)?.map(|(_, scan)| scan.superblock))
    }

    /// Formats `card`: erases every good block (reporting `progress(done,
    /// total)`), then writes the superblock. Refuses a card that already
    /// holds a format unless `opts.yes`.
    pub fn format(card: Arc<Card>, opts: &FormatOptions, progress: &mut dyn FnMut(u64, u64)) -> Result<(), VslError> {
        let id = card.identify().clone();
        let g = id.geometry;
        if opts.sector_size != 512 && opts.sector_size != 4096 {
            return Err(VslError::InvalidOptions(format!(
                "sector size {} is not supported: use 512 or 4096",
                opts.sector_size
            )));
        }
        if !id.sector_sizes.contains(&opts.sector_size) {
            return Err(VslError::InvalidOptions(format!(
                "the card does not offer {}-byte sectors (it offers {:?})",
                opts.sector_size, id.sector_sizes
            )));
        }
        if (g.oob_size as usize) < OOB_RECORD_LEN {
            return Err(VslError::InvalidOptions(format!(
                "the card's {}-byte OOB area is smaller than the {OOB_RECORD_LEN} bytes the VSL records need",
                g.oob_size
            )));
        }
        let layout = Layout::new(g, opts.sector_size).ok_or_else(|| {
            VslError::InvalidOptions(format!(
                "{}-byte sectors on {}-byte pages would exceed 32-bit physical sector addresses; use 4096-byte sectors",
                opts.sector_size, g.page_size
            ))
        })?;
        if opts.max_atomic_pages == 0 || opts.max_atomic_pages > 32 || opts.max_atomic_pages > g.pages_per_block {
            return Err(VslError::InvalidOptions(format!(
                "atomic write limit of {} pages must be 1..=32 and fit in one {}-page erase block",
                opts.max_atomic_pages, g.pages_per_block
            )));
        }
        let infos = all_block_info(&card)?;
        let die0 = &infos[..g.blocks_per_die as usize];
        let meta = locate_meta_blocks(die0)
            .ok_or_else(|| VslError::NoSpace("die 0 has fewer than two good blocks for the metadata log".into()))?;
        let plp = card.health()?.powerloss_protection;
        let mut io = SlotIo::new(&card, 32, true)?;
        let wps = [die0[meta[0] as usize].write_pointer, die0[meta[1] as usize].write_pointer];
        match MetaLog::load(&mut io, meta, wps, g.page_size as usize, g.pages_per_block, plp) {
            Ok(Some((_, scan))) if !opts.yes => {
                let sb = scan.superblock;
                return Err(VslError::AlreadyFormatted {
                    sectors: sb.num_sectors,
                    sector_size: sb.sector_size,
                    uuid: sb.uuid_string(),
                });
            }
            Err(VslError::UnsupportedVersion(v)) if !opts.yes => return Err(VslError::UnsupportedVersion(v)),
            Err(VslError::OutdatedFormat(v)) if !opts.yes => return Err(VslError::OutdatedFormat(v)),
            Err(VslError::PowerLost { what }) => return Err(VslError::PowerLost { what }),
            _ => {}
        }
        let good = infos.iter().filter(|e| e.state != BlockStateCode::Bad).count() as u64;
        plan_capacity(&layout, good.saturating_sub(2), id.identity.advertised_bytes, opts)?;

        // Erase every good block, many in flight.
        let targets: Vec<u32> = infos
            .iter()
            .enumerate()
            .filter(|(_, e)| e.state != BlockStateCode::Bad)
            .map(|(i, _)| i as u32)
            .collect();
        let total = targets.len() as u64;
        let mut done = 0u64;
        let mut next = 0usize;
        let mut free_slots: Vec<usize> = (0..io.slots()).collect();
        let mut power_lost = false;
        progress(0, total);
        while done < total {
            while next < targets.len() {
                let Some(slot) = free_slots.pop() else { break };
                let b = targets[next];
                let (die, blk) = (b / g.blocks_per_die, b % g.blocks_per_die);
                if io.submit_erase(slot, die, blk).is_err() {
                    free_slots.push(slot);
                    break;
                }
                next += 1;
            }
            io.ring();
            io.wait_some("erase during format", |c| {
                if c.status == CardStatus::PowerCut {
                    power_lost = true;
                }
                free_slots.push(c.tag as usize);
                done += 1;
            })?;
            progress(done, total);
        }
        if power_lost {
            return Err(VslError::PowerLost { what: "format" });
        }
        // Erase failures turned blocks bad: plan again on what is left.
        let infos = all_block_info(&card)?;
        let die0 = &infos[..g.blocks_per_die as usize];
        let meta = locate_meta_blocks(die0)
            .ok_or_else(|| VslError::NoSpace("die 0 has fewer than two good blocks for the metadata log".into()))?;
        let good = infos.iter().filter(|e| e.state != BlockStateCode::Bad).count() as u64;
        let plan = plan_capacity(&layout, good.saturating_sub(2), id.identity.advertised_bytes, opts)?;
        let sb = Superblock {
            sector_size: opts.sector_size,
            num_sectors: plan.num_sectors,
            geometry: g,
            uuid: make_uuid(opts.seed),
            created_unix: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            meta_blocks: meta,
            max_atomic_pages: opts.max_atomic_pages,
        };
        let fresh = MetaRecord::Clean(CleanMark {
            next_seq: 1,
            bytes: 0,
            crc: 0,
            blocks: Vec::new(),
        });
        MetaLog::create(&mut io, meta, sb, fresh, g.page_size as usize, g.pages_per_block, plp)?;
        io.flush_sync()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::card::Geometry;

    fn layout() -> Layout {
        Layout::new(
            Geometry {
                channels: 2,
                dies_per_channel: 2,
                blocks_per_die: 32,
                pages_per_block: 64,
                page_size: 4096,
                oob_size: 128,
            },
            4096,
        )
        .unwrap()
    }

    #[test]
    fn capacity_defaults_to_advertised_and_respects_the_spare() {
        let l = layout();
        let opts = FormatOptions::default();
        let p = plan_capacity(&l, 126, 25 << 20, &opts).unwrap();
        assert_eq!(p.num_sectors, (25 << 20) / 4096);
        assert_eq!(p.needed_blocks, 100);
        let too_big = FormatOptions {
            capacity: Some(CapacitySpec::Percent(99.0)),
            ..opts.clone()
        };
        let e = plan_capacity(&l, 126, 25 << 20, &too_big).unwrap_err().to_string();
        assert!(e.contains("exceeds"), "{e}");
        let small = FormatOptions {
            capacity: Some(CapacitySpec::Percent(50.0)),
            ..opts
        };
        assert_eq!(plan_capacity(&l, 126, 0, &small).unwrap().needed_blocks, 64);
    }

    #[test]
    fn uuids_are_version_4_and_seeded() {
        let a = make_uuid(Some(7));
        assert_eq!(a, make_uuid(Some(7)));
        assert_ne!(a, make_uuid(Some(8)));
        assert_eq!(a[6] >> 4, 4);
        assert_eq!(a[8] >> 6, 2);
    }
}

#[cfg(test)]
mod stripe_tests {
    use super::*;

    #[test]
    fn attach_stripe_spans_all_dies_when_spare_allows_and_never_narrows() {
        assert_eq!(attach_stripe(32, 300), 32);
        assert_eq!(attach_stripe(64, 10_000), MAX_DEFAULT_STRIPE);
        assert_eq!(attach_stripe(32, 80), 10);
        // A small card keeps the format's stripe.
        assert_eq!(attach_stripe(8, 16), 4);
        assert_eq!(attach_stripe(2, 0), 2);
        assert_eq!(attach_stripe(1, 1000), 1);
    }
}
