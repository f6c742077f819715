//! End of life and wear levelling on emulated cards with tiny ratings:
//! blocks fail and retire, the reserve shrinks, the device goes read-only,
//! and every acknowledged byte stays readable; cold data is moved so wear
//! stays level.

use std::sync::Arc;

use iomemory::card::{Card, Geometry};
use iomemory::emu::{small_test_config, Backing, EmuOptions, NandArray, NandConfig};
use iomemory::vsl::pattern::{check_sector, fill, SectorContent};
use iomemory::vsl::{
    AttachOptions, BlockingChannel, BlockingError, CapacitySpec, FormatOptions, IoError, ReserveState, SubmitError, Vsl,
};

fn tiny_config(seed: u64, rated: u32, grown_bad_rate: f64) -> NandConfig {
    let mut c = small_test_config(seed);
    c.geometry = Geometry {
        channels: 1,
        dies_per_channel: 2,
        blocks_per_die: 16,
        pages_per_block: 32,
        page_size: 4096,
        oob_size: 128,
    };
    c.physics.rated_pe_cycles = rated;
    c.physics.wear_bit_errors = 0.5;
    c.physics.grown_bad_rate = grown_bad_rate;
    c.identity.rated_pe_cycles = rated;
    c.identity.advertised_bytes = 0;
    c
}

fn attach(config: &NandConfig, capacity_pct: f64, opts: &AttachOptions) -> (Arc<NandArray>, Arc<Vsl>) {
    let nand = NandArray::create(config, Backing::Memory).unwrap();
    let card = Card::open_emulated(nand.clone(), EmuOptions::default()).unwrap();
    let fo = FormatOptions {
        capacity: Some(CapacitySpec::Percent(capacity_pct)),
        ..FormatOptions::default()
    };
    Vsl::format(card.clone(), &fo, &mut |_, _| {}).unwrap();
    let vsl = Vsl::attach(card, opts, &mut |_, _| {}).unwrap();
    (nand, vsl)
}

#[test]
fn worn_out_card_retires_blocks_then_goes_read_only_keeping_data() {
    let (_nand, vsl) = attach(&tiny_config(21, 4, 1.0), 50.0, &AttachOptions::default());
    let sectors = vsl.num_sectors();
    let initial_reserve = vsl.status().reserve.remaining_blocks;
    assert!(initial_reserve > 0);
    let mut ch = BlockingChannel::new(vsl.channel().unwrap()).unwrap();
    let mut gen = vec![0u64; sectors as usize];
    let mut x = 99u64;
    let mut buf = vec![0u8; 4096];
    let mut read_only = false;
    for i in 1..200_000u64 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let lba = x % sectors;
        fill(&mut buf, 4096, lba, i, 5);
        match ch.write(lba, &buf) {
            Ok(()) => gen[lba as usize] = i,
            Err(BlockingError::Submit(SubmitError::ReadOnly)) | Err(BlockingError::Io(IoError::ReadOnly)) => {
                read_only = true;
                break;
            }
            Err(e) => panic!("write {i} failed: {e}"),
        }
    }
    assert!(read_only, "the card wore out within the test");
    let st = vsl.status();
    assert!(st.read_only);
    assert_eq!(st.reserve.state, ReserveState::ReadOnly);
    assert!(st.counters.retired_blocks > 0 && st.counters.erase_failures + st.counters.program_failures > 0);
    assert!(st.reserve.remaining_blocks < initial_reserve);
    // Reads still work and return every acknowledged write.
    for lba in 0..sectors {
        let data = ch.read(lba, 1).unwrap();
        let want = if gen[lba as usize] == 0 {
            SectorContent::Zero
        } else {
            SectorContent::Data { generation: gen[lba as usize] }
        };
        assert_eq!(check_sector(&data, lba, 5), want, "lba {lba}");
    }
    assert!(matches!(ch.unmap(0, 1), Err(BlockingError::Submit(SubmitError::ReadOnly))));
}

#[test]
fn wear_levelling_moves_cold_data() {
    let opts = AttachOptions {
        wear_spread: 3,
        ..AttachOptions::default()
    };
    let (_nand, vsl) = attach(&tiny_config(22, 100_000, 0.0), 60.0, &opts);
    let sectors = vsl.num_sectors();
    let mut ch = BlockingChannel::new(vsl.channel().unwrap()).unwrap();
    let mut buf = vec![0u8; 4096];
    // Cold data everywhere, then a small hot set rewritten over and over.
    for lba in 0..sectors {
        fill(&mut buf, 4096, lba, 1, 3);
        ch.write(lba, &buf).unwrap();
    }
    for i in 0..30_000u64 {
        let lba = i % 16;
        fill(&mut buf, 4096, lba, i + 2, 3);
        ch.write(lba, &buf).unwrap();
    }
    let st = vsl.status();
    assert!(st.counters.wear_level_moves > 0, "{:?}", st.counters);
    assert!(st.pe_max - st.pe_min <= 3 + 6, "wear spread {}..{}", st.pe_min, st.pe_max);
    for lba in 16..sectors {
        let data = ch.read(lba, 1).unwrap();
        assert_eq!(check_sector(&data, lba, 3), SectorContent::Data { generation: 1 }, "lba {lba}");
    }
}
