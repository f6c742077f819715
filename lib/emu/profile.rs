//! Ready-made card configurations: an ioDrive2 of a given capacity, and a
//! small array for tests.

use super::nand::NandConfig;
use super::physics::{mix64, PhysicsParams};
use super::TimingProfile;
use crate::card::{CardIdentity, Geometry};

/// ioDrive2 page size.
const PAGE_SIZE: u32 = 4096;
/// ioDrive2 out-of-band bytes per page exposed to the host.
const OOB_SIZE: u32 = 128;
/// Pages per erase block (1 MiB blocks).
const PAGES_PER_BLOCK: u32 = 256;
/// Smallest number of blocks a die may have.
const MIN_BLOCKS_PER_DIE: u64 = 8;
/// Raw NAND over advertised capacity, as a fraction 32/25 = 1.28: the
/// reserve the default format keeps for the groomer and bad blocks.
const OVERPROVISION_NUM: u128 = 32;
const OVERPROVISION_DEN: u128 = 25;
/// The 1.2 TB ioDrive2 is rated for 17 PB written; other sizes scale.
const PBW_REFERENCE_BYTES: u128 = 17_000_000_000_000_000;
const PBW_REFERENCE_CAPACITY: u128 = 1_200_000_000_000;
/// Share of blocks a factory marks bad on MLC parts.
const IODRIVE2_FACTORY_BAD_FRACTION: f64 = 0.004;

/// Capacity code in an ioDrive2 product number: "1T20" for 1.2 TB,
/// "785G" for 785 GB.
fn capacity_code(bytes: u64) -> String {
    const TB: u64 = 1_000_000_000_000;
    const GB: u64 = 1_000_000_000;
    if bytes >= TB {
        let hundredths = (bytes + TB / 200) / (TB / 100);
        format!("{}T{:02}", hundredths / 100, hundredths % 100)
    } else {
        format!("{}G", (bytes + GB / 2) / GB)
    }
}

/// An ioDrive2 identity for `advertised_bytes`, serials derived from `seed`.
fn iodrive2_identity(advertised_bytes: u64, seed: u64) -> CardIdentity {
    let h = mix64(seed ^ 0x696f_4472_6976_6532);
    // Fusion-io serials: two-digit year, week, 'D', four-digit unit number.
    let base = format!("{:02}{:02}D{:04}", 11 + h % 4, 1 + (h >> 8) % 52, (h >> 16) % 10_000);
    let rated_pbw = PBW_REFERENCE_BYTES * advertised_bytes as u128 / PBW_REFERENCE_CAPACITY;
    CardIdentity {
        model: "ioDrive2".into(),
        product_number: format!("F00-001-{}-CS-0001", capacity_code(advertised_bytes)),
        serial: base.clone(),
        fio_serial: format!("{base}-{:04}", 1000 + (h >> 32) % 9000),
        firmware_version: "7.1.15".into(),
        firmware_revision: 110_356,
        pci_vendor: 0x1aed,
        pci_device: 0x2001,
        pci_subsystem_vendor: 0x1aed,
        pci_subsystem_device: 0x2001,
        advertised_bytes,
        rated_pe_cycles: PhysicsParams::default().rated_pe_cycles,
        rated_pbw_bytes: rated_pbw.min(u64::MAX as u128) as u64,
        powerloss_protection: true,
    }
}

/// An ioDrive2 of `advertised_bytes` (e.g. 1.2e12): 4 KiB pages with 128 B
/// OOB, 1 MiB erase blocks, 8 channels x 4 dies (fewer dies for tiny cards,
/// so every die has at least 8 blocks), raw NAND 1.28 x the advertised
/// capacity rounded up to whole blocks per die, MLC physics.
///
/// Cards beyond about 10 TB exceed the 32-bit page address space; creating
/// an array from such a configuration fails with `InvalidConfig`.
pub fn iodrive2_config(advertised_bytes: u64, seed: u64) -> NandConfig {
    let block_bytes = (PAGES_PER_BLOCK * PAGE_SIZE) as u128;
    let raw = advertised_bytes as u128 * OVERPROVISION_NUM / OVERPROVISION_DEN;
    let blocks = raw.div_ceil(block_bytes).max(MIN_BLOCKS_PER_DIE as u128) as u64;
    let (channels, dies_per_channel) = [(8u16, 4u16), (8, 2), (8, 1), (4, 1), (2, 1), (1, 1)]
        .into_iter()
        .find(|&(c, d)| blocks / (c as u64 * d as u64) >= MIN_BLOCKS_PER_DIE)
        .unwrap_or((1, 1));
    let dies = channels as u64 * dies_per_channel as u64;
    let blocks_per_die = blocks.div_ceil(dies).min(u32::MAX as u64) as u32;
    NandConfig {
        geometry: Geometry {
            channels,
            dies_per_channel,
            blocks_per_die,
            pages_per_block: PAGES_PER_BLOCK,
            page_size: PAGE_SIZE,
            oob_size: OOB_SIZE,
        },
        identity: iodrive2_identity(advertised_bytes, seed),
        seed,
        factory_bad_fraction: IODRIVE2_FACTORY_BAD_FRACTION,
        physics: PhysicsParams::default(),
        timing: TimingProfile::None,
    }
}

/// A small array for tests: 2 channels x 2 dies x 32 blocks x 64 pages of
/// 4 KiB (32 MiB raw), 128 B OOB, default MLC physics and **no** factory bad
/// blocks, so tests may address any block.
pub fn small_test_config(seed: u64) -> NandConfig {
    let geometry = Geometry {
        channels: 2,
        dies_per_channel: 2,
        blocks_per_die: 32,
        pages_per_block: 64,
        page_size: PAGE_SIZE,
        oob_size: OOB_SIZE,
    };
    let advertised = (geometry.raw_bytes() as u128 * OVERPROVISION_DEN / OVERPROVISION_NUM) as u64;
    NandConfig {
        geometry,
        identity: iodrive2_identity(advertised, seed),
        seed,
        factory_bad_fraction: 0.0,
        physics: PhysicsParams::default(),
        timing: TimingProfile::None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iodrive2_1t2_has_full_geometry_and_reserve() {
        let c = iodrive2_config(1_200_000_000_000, 5);
        let g = c.geometry;
        assert_eq!((g.channels, g.dies_per_channel), (8, 4));
        assert_eq!((g.page_size, g.oob_size, g.pages_per_block), (4096, 128, 256));
        assert!(g.raw_bytes() >= 1_200_000_000_000 * 128 / 100);
        assert!(g.raw_bytes() < 1_200_000_000_000 * 128 / 100 + g.dies() as u64 * g.block_bytes());
        assert!(g.validate().is_ok());
        assert!(c.validate().is_ok());
        let id = &c.identity;
        assert_eq!(id.product_number, "F00-001-1T20-CS-0001");
        assert_eq!(id.rated_pbw_bytes, 17_000_000_000_000_000);
        assert_eq!((id.pci_vendor, id.pci_device), (0x1aed, 0x2001));
        assert_eq!((id.firmware_version.as_str(), id.firmware_revision), ("7.1.15", 110_356));
        assert!(id.powerloss_protection);
    }

    #[test]
    fn small_cards_get_fewer_dies_with_enough_blocks() {
        for size in [1u64 << 20, 50 << 20, 200 << 20, 1 << 30, 365_000_000_000] {
            let g = iodrive2_config(size, 1).geometry;
            assert!(g.blocks_per_die as u64 >= MIN_BLOCKS_PER_DIE, "{size}: {g:?}");
            assert!(g.raw_bytes() as u128 >= size as u128 * 128 / 100, "{size}: {g:?}");
        }
        assert_eq!(iodrive2_config(50 << 20, 1).geometry.dies(), 8);
        assert_eq!(capacity_code(785_000_000_000), "785G");
        assert_eq!(capacity_code(2_410_000_000_000), "2T41");
    }

    #[test]
    fn serials_follow_the_seed() {
        let a = iodrive2_config(1 << 30, 1).identity;
        assert_eq!(a, iodrive2_config(1 << 30, 1).identity);
        assert_ne!(a.serial, iodrive2_config(1 << 30, 2).identity.serial);
        assert!(a.fio_serial.starts_with(&a.serial));
        assert!(small_test_config(3).validate().is_ok());
    }
}
