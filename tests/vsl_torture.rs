//! Power-cut torture through the library harness, both power-loss
//! protection settings (the 1,000-cut runs go through the CLI in CI).

use iomemory::emu::{small_test_config, Backing, NandArray};
use iomemory::vsl::torture::{run, TortureOptions};

fn torture(plp: bool, cuts: u64, seed: u64, sector_size: u32) {
    let nand = NandArray::create(&small_test_config(seed), Backing::Memory).unwrap();
    let opts = TortureOptions {
        cuts,
        seed,
        powerloss_protection: plp,
        sector_size,
        ..TortureOptions::default()
    };
    let report = run(&nand, &opts, &mut |_, _| {}).unwrap();
    assert!(report.passed(), "violations: {:#?}", report);
    assert_eq!(report.cuts, cuts);
    assert!(report.rounds > cuts && report.clean_cycles > 0, "clean detach rounds come on top");
    assert!(report.ops_acked > 0);
    assert!(report.cuts_in_attach + report.cuts_in_detach > 0, "cuts also hit recovery or checkpointing: {report:?}");
    assert!(report.sectors_checked > 0);
}

#[test]
fn torture_with_powerloss_protection() {
    torture(true, 60, 11, 4096);
}

#[test]
fn torture_without_powerloss_protection() {
    torture(false, 60, 12, 4096);
}

#[test]
fn torture_512_byte_sectors_without_powerloss_protection() {
    torture(false, 40, 13, 512);
}

#[test]
fn torture_a_wearing_card_with_failing_blocks() {
    use iomemory::card::Geometry;
    for plp in [true, false] {
        let mut config = small_test_config(14);
        config.geometry = Geometry {
            channels: 1,
            dies_per_channel: 2,
            blocks_per_die: 24,
            pages_per_block: 32,
            page_size: 4096,
            oob_size: 128,
        };
        config.physics.rated_pe_cycles = 6;
        config.physics.wear_bit_errors = 0.5;
        config.identity.rated_pe_cycles = 6;
        config.identity.advertised_bytes = config.geometry.raw_bytes() / 2;
        let nand = NandArray::create(&config, Backing::Memory).unwrap();
        let opts = TortureOptions {
            cuts: 60,
            seed: 15,
            powerloss_protection: plp,
            ..TortureOptions::default()
        };
        let report = run(&nand, &opts, &mut |_, _| {}).unwrap();
        assert!(report.passed(), "plp {plp}: {:#?}", report);
        let c = nand.counters();
        assert!(c.erase_failures + c.program_failures > 0, "blocks failed during the run: {c:?}");
    }
}
