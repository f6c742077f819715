//! The library side of `iomem verify` and `iomem wa-bench`.

use iomemory::card::Card;
use iomemory::emu::{small_test_config, Backing, EmuOptions, NandArray};
use iomemory::vsl::verify::{run as verify, Rw, VerifyOptions};
use iomemory::vsl::wabench::{run as wa_bench, WaBenchOptions};
use iomemory::vsl::{AttachOptions, FormatOptions, GcPolicy, Vsl};

#[test]
fn verify_passes_on_a_healthy_card_for_every_pattern() {
    let nand = NandArray::create(&small_test_config(31), Backing::Memory).unwrap();
    let card = Card::open_emulated(nand, EmuOptions::default()).unwrap();
    let fo = FormatOptions {
        sector_size: 512,
        ..FormatOptions::default()
    };
    Vsl::format(card.clone(), &fo, &mut |_, _| {}).unwrap();
    let vsl = Vsl::attach(card, &AttachOptions::default(), &mut |_, _| {}).unwrap();
    for rw in [Rw::Write, Rw::RandWrite, Rw::RandRw] {
        let opts = VerifyOptions {
            block_sizes: vec![512, 4096, 65536, 1 << 20],
            rw,
            size: 4 << 20,
            seed: 9,
        };
        let mut calls = 0;
        let r = verify(&vsl, &opts, &mut |_, _| calls += 1).unwrap();
        assert!(r.passed(), "{rw:?}: {:?} {:?}", r.mismatches, r.io_errors);
        assert_eq!(r.passes.len(), 4);
        assert!(r.sectors_checked >= 4 * (4 << 20) / 512);
        assert!(calls > 4);
    }
    let bad = VerifyOptions {
        block_sizes: vec![1000],
        rw: Rw::Write,
        size: 1 << 20,
        seed: 1,
    };
    assert!(verify(&vsl, &bad, &mut |_, _| {}).is_err());
}

#[test]
fn wa_bench_tracks_the_greedy_model() {
    let opts = WaBenchOptions {
        ops: vec![0.28],
        policies: vec![GcPolicy::Greedy, GcPolicy::CostBenefit],
        warmup_passes: 1.0,
        passes: 1.0,
        blocks_per_die: 32,
        seed: 3,
    };
    let res = wa_bench(&opts, &mut |_, _| {}).unwrap();
    assert_eq!(res.len(), 2);
    for r in &res {
        assert!((r.analytic_greedy - 2.46).abs() < 0.1);
        assert!(r.measured > 1.2 && r.measured < 4.0, "{r:?}");
        assert!(r.erases > 0);
    }
    let greedy = &res[0];
    assert!(
        (greedy.measured - greedy.analytic_greedy).abs() / greedy.analytic_greedy < 0.25,
        "greedy WA {} is within 25% of the model's {}",
        greedy.measured,
        greedy.analytic_greedy
    );
}
