//! The emulated NAND array against its rules: addressing and program order,
//! erase, bad blocks, die failure, persistence of the image byte for byte,
//! refusal of bad images, power cuts with and without power-loss
//! protection, wear physics, and concurrent use from several threads.

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::Arc;

use iomemory::card::Ppa;
use iomemory::emu::{
    small_test_config, Backing, BadReason, BlockState, EmuError, NandArray, NandConfig, NandCounters, NandError,
    PageRead, PhysicsParams, WRITE_BUFFER_PAGES_PER_DIE,
};

const PAGE: usize = 4096;
const OOB: usize = 128;

/// Deterministic page contents for (`ppa`, `salt`): data and OOB.
fn pattern(ppa: Ppa, salt: u64) -> (Vec<u8>, Vec<u8>) {
    let mut x = (ppa.die as u64) << 48 ^ (ppa.block as u64) << 24 ^ ppa.page as u64 ^ salt.wrapping_mul(0x9e37_79b9);
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x.wrapping_add(0x5555) as u8
    };
    let data = (0..PAGE).map(|_| next()).collect();
    let oob = (0..OOB).map(|_| next()).collect();
    (data, oob)
}

fn program(nand: &NandArray, ppa: Ppa, salt: u64) -> Result<(), NandError> {
    let (data, oob) = pattern(ppa, salt);
    // SAFETY: both buffers are exactly one page and one OOB long.
    unsafe { nand.program_page(ppa, data.as_ptr(), oob.as_ptr()) }
}

fn read(nand: &NandArray, ppa: Ppa) -> (PageRead, Vec<u8>, Vec<u8>) {
    let mut data = vec![0u8; PAGE];
    let mut oob = vec![0u8; OOB];
    // SAFETY: both buffers are exactly one page and one OOB long.
    let status = unsafe { nand.read_page(ppa, data.as_mut_ptr(), oob.as_mut_ptr()) };
    (status, data, oob)
}

fn assert_page(nand: &NandArray, ppa: Ppa, salt: u64) {
    let (status, data, oob) = read(nand, ppa);
    assert!(matches!(status, PageRead::Ok { .. }), "{ppa}: {status:?}");
    let (want_data, want_oob) = pattern(ppa, salt);
    assert!(data == want_data, "{ppa}: data differs");
    assert!(oob == want_oob, "{ppa}: OOB differs");
}

fn assert_erased(nand: &NandArray, ppa: Ppa) {
    let (status, data, oob) = read(nand, ppa);
    assert_eq!(status, PageRead::Erased, "{ppa}");
    assert!(data.iter().all(|&b| b == 0xff) && oob.iter().all(|&b| b == 0xff), "{ppa}: erased page not 0xFF");
}

fn quiet_config(seed: u64) -> NandConfig {
    // No retention term: page results cannot change if a test crosses midnight.
    let mut c = small_test_config(seed);
    c.physics.retention_bit_errors_per_day = 0.0;
    c
}

fn memory(config: &NandConfig) -> Arc<NandArray> {
    NandArray::create(config, Backing::Memory).expect("memory array")
}

#[test]
fn rule_violations_return_errors_and_change_nothing() {
    let nand = memory(&quiet_config(1));
    for page in 0..4 {
        program(&nand, Ppa::new(0, 1, page), 7).unwrap();
    }
    let before = nand.counters();
    let info = nand.block_info(0, 1).unwrap();
    assert_eq!((info.state, info.write_pointer, info.pe_cycles), (BlockState::Open, 4, 0));

    let p2 = Ppa::new(0, 1, 2);
    assert_eq!(program(&nand, p2, 99), Err(NandError::NotErased(p2)));
    let p5 = Ppa::new(0, 1, 5);
    assert_eq!(program(&nand, p5, 99), Err(NandError::ProgramOrder { ppa: p5, expected_page: 4 }));
    for bad in [Ppa::new(0, 1, 64), Ppa::new(0, 32, 0), Ppa::new(4, 0, 0)] {
        assert_eq!(program(&nand, bad, 99), Err(NandError::InvalidAddress(bad)));
        assert!(matches!(read(&nand, bad).0, PageRead::Failed(NandError::InvalidAddress(p)) if p == bad));
    }
    assert_eq!(nand.erase_block(0, 32), Err(NandError::InvalidBlock { die: 0, block: 32 }));
    assert_eq!(nand.erase_block(9, 0), Err(NandError::InvalidBlock { die: 9, block: 0 }));
    assert!(nand.block_info(4, 0).is_err());
    assert!(nand.fail_die(4).is_err());

    assert_eq!(nand.block_info(0, 1).unwrap(), info);
    assert_eq!(nand.counters().pages_programmed, before.pages_programmed);
    assert_eq!(nand.counters().bytes_written, before.bytes_written);
    for page in 0..4 {
        assert_page(&nand, Ppa::new(0, 1, page), 7);
    }
    assert_erased(&nand, Ppa::new(0, 1, 4));
    assert_erased(&nand, Ppa::new(0, 1, 5));
    // The block still accepts its next page.
    program(&nand, Ppa::new(0, 1, 4), 7).unwrap();
    assert_page(&nand, Ppa::new(0, 1, 4), 7);
}

#[test]
fn full_block_rejects_more_and_erase_resets_it() {
    let nand = memory(&quiet_config(2));
    for page in 0..64 {
        program(&nand, Ppa::new(1, 3, page), 1).unwrap();
    }
    assert_eq!(nand.block_info(1, 3).unwrap().state, BlockState::Full);
    assert_eq!(program(&nand, Ppa::new(1, 3, 0), 1), Err(NandError::NotErased(Ppa::new(1, 3, 0))));

    nand.erase_block(1, 3).unwrap();
    let info = nand.block_info(1, 3).unwrap();
    assert_eq!((info.state, info.write_pointer, info.pe_cycles, info.bad_reason), (BlockState::Free, 0, 1, None));
    for page in [0, 31, 63] {
        assert_erased(&nand, Ppa::new(1, 3, page));
    }
    program(&nand, Ppa::new(1, 3, 0), 2).unwrap();
    assert_page(&nand, Ppa::new(1, 3, 0), 2);
    let c = nand.counters();
    assert_eq!((c.pages_programmed, c.blocks_erased), (65, 1));
    assert_eq!(c.bytes_written, 65 * PAGE as u64);
}

#[test]
fn null_oob_programs_and_reads_as_erased_bytes() {
    let nand = memory(&quiet_config(3));
    let ppa = Ppa::new(2, 0, 0);
    let (data, _) = pattern(ppa, 5);
    // SAFETY: `data` is one page; a null OOB is allowed.
    unsafe { nand.program_page(ppa, data.as_ptr(), std::ptr::null()) }.unwrap();
    let (status, back, oob) = read(&nand, ppa);
    assert!(matches!(status, PageRead::Ok { .. }));
    assert_eq!(back, data);
    assert!(oob.iter().all(|&b| b == 0xff));
    let mut only_data = vec![0u8; PAGE];
    // SAFETY: `only_data` is one page; a null OOB is allowed.
    let status = unsafe { nand.read_page(ppa, only_data.as_mut_ptr(), std::ptr::null_mut()) };
    assert!(matches!(status, PageRead::Ok { .. }));
    assert_eq!(only_data, data);
}

#[test]
fn factory_bad_blocks_follow_the_seed_and_refuse_everything() {
    let mut config = quiet_config(4);
    config.factory_bad_fraction = 0.2;
    let a = memory(&config);
    let b = memory(&config);
    let g = config.geometry;
    let mut bad = Vec::new();
    for die in 0..g.dies() {
        for block in 0..g.blocks_per_die {
            let info = a.block_info(die, block).unwrap();
            assert_eq!(info, b.block_info(die, block).unwrap());
            if info.state == BlockState::Bad {
                assert_eq!(info.bad_reason, Some(BadReason::Factory));
                bad.push((die, block));
            }
        }
        assert_eq!(a.block_info(die, 0).unwrap().state, BlockState::Free, "block 0 is always good");
    }
    assert!(bad.len() > 5 && bad.len() < 60, "{} factory bad blocks at 20%", bad.len());
    assert_eq!(a.counters().factory_bad_blocks, bad.len() as u64);
    let (die, block) = bad[0];
    let ppa = Ppa::new(die, block, 0);
    assert_eq!(program(&a, ppa, 0), Err(NandError::BadBlock { die, block }));
    assert_eq!(a.erase_block(die, block), Err(NandError::BadBlock { die, block }));
    assert_eq!(read(&a, ppa).0, PageRead::Failed(NandError::BadBlock { die, block }));
    let info = a.block_info(die, block).unwrap();
    assert_eq!((info.write_pointer, info.pe_cycles), (0, 0));
}

#[test]
fn failed_die_refuses_operations_and_spares_the_others() {
    let nand = memory(&quiet_config(5));
    program(&nand, Ppa::new(3, 2, 0), 1).unwrap();
    program(&nand, Ppa::new(2, 2, 0), 1).unwrap();
    nand.fail_die(3).unwrap();
    assert_eq!(program(&nand, Ppa::new(3, 2, 1), 1), Err(NandError::DieFailed(3)));
    assert_eq!(nand.erase_block(3, 2), Err(NandError::DieFailed(3)));
    assert_eq!(read(&nand, Ppa::new(3, 2, 0)).0, PageRead::Failed(NandError::DieFailed(3)));
    let info = nand.block_info(3, 2).unwrap();
    assert_eq!((info.state, info.bad_reason, info.write_pointer), (BlockState::Bad, Some(BadReason::DieFailure), 1));
    assert_page(&nand, Ppa::new(2, 2, 0), 1);
    program(&nand, Ppa::new(2, 2, 1), 1).unwrap();
    assert_eq!(nand.counters().failed_dies, 1);
}

/// Everything observable about an array: every block's info and every
/// page's read result, data and OOB.
#[derive(PartialEq)]
struct Snapshot {
    blocks: Vec<Result<iomemory::emu::BlockInfo, NandError>>,
    pages: Vec<(PageRead, Vec<u8>, Vec<u8>)>,
}

fn snapshot(nand: &NandArray) -> Snapshot {
    let g = *nand.geometry();
    let mut blocks = Vec::new();
    let mut pages = Vec::new();
    for die in 0..g.dies() {
        for block in 0..g.blocks_per_die {
            blocks.push(nand.block_info(die, block));
            for page in 0..g.pages_per_block {
                pages.push(read(nand, Ppa::new(die, block, page)));
            }
        }
    }
    Snapshot { blocks, pages }
}

fn same_lifetime_counters(before: &NandCounters, after: &NandCounters) {
    let strip = |c: &NandCounters| NandCounters { power_cycles: 0, power_on_seconds: 0, ..*c };
    assert_eq!(strip(before), strip(after));
    assert_eq!(after.power_cycles, before.power_cycles + 1);
    assert!(after.power_on_seconds >= before.power_on_seconds);
}

#[test]
fn image_reopens_byte_for_byte() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("card.img");
    let mut config = quiet_config(6);
    config.factory_bad_fraction = 0.05;
    let nand = NandArray::create(&config, Backing::File(path.clone())).unwrap();
    let g = config.geometry;
    for die in 0..g.dies() {
        for block in 0..6 {
            if nand.block_info(die, block).unwrap().state == BlockState::Bad {
                continue;
            }
            let cycles = block % 3;
            for cycle in 0..=cycles {
                for page in 0..(block * 11 + die * 3) % 64 + 1 {
                    program(&nand, Ppa::new(die, block, page), cycle as u64).unwrap();
                }
                if cycle < cycles {
                    nand.erase_block(die, block).unwrap();
                }
            }
        }
    }
    nand.fail_die(2).unwrap();
    nand.set_powerloss_protection(false);
    let before = snapshot(&nand);
    let counters = nand.counters();
    assert!(counters.pages_programmed > 300 && counters.blocks_erased > 10);
    drop(nand);

    let meta = std::fs::metadata(&path).unwrap();
    assert!(
        meta.blocks() * 512 < meta.len() / 4,
        "image is not sparse: {} of {} bytes",
        meta.blocks() * 512,
        meta.len()
    );

    let nand = NandArray::open(&path).unwrap();
    assert_eq!(nand.config(), &config);
    assert!(!nand.powerloss_protection());
    same_lifetime_counters(&counters, &nand.counters());
    let after = snapshot(&nand);
    assert!(before.blocks == after.blocks, "block infos differ after reopen");
    for (i, (b, a)) in before.pages.iter().zip(&after.pages).enumerate() {
        assert!(b == a, "page {} differs after reopen", g.ppa_of_index(i as u64));
    }
    // The data read back is the pattern, not merely the same thing twice.
    assert_page(&nand, Ppa::new(0, 2, 0), 2);
    assert_eq!(nand.block_info(0, 2).unwrap().pe_cycles, 2);
}

fn expect_err(result: Result<Arc<NandArray>, EmuError>) -> EmuError {
    match result {
        Ok(_) => panic!("opening should have failed"),
        Err(e) => e,
    }
}

fn make_image(path: &Path) -> Vec<u8> {
    let nand = NandArray::create(&quiet_config(7), Backing::File(path.to_owned())).unwrap();
    program(&nand, Ppa::new(0, 0, 0), 1).unwrap();
    drop(nand);
    std::fs::read(path).unwrap()
}

#[test]
fn foreign_empty_and_corrupt_files_are_refused_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let foreign = dir.path().join("notes.txt");
    std::fs::write(&foreign, b"hello world, not a card\n".repeat(400)).unwrap();
    let original = std::fs::read(&foreign).unwrap();
    assert!(matches!(expect_err(NandArray::open(&foreign)), EmuError::NotAnImage { .. }));
    let err = expect_err(NandArray::create(&quiet_config(7), Backing::File(foreign.clone())));
    assert!(matches!(err, EmuError::Exists { .. }), "{err}");
    assert_eq!(std::fs::read(&foreign).unwrap(), original);

    let empty = dir.path().join("empty.img");
    std::fs::write(&empty, b"").unwrap();
    assert!(matches!(expect_err(NandArray::open(&empty)), EmuError::NotAnImage { .. }));
    // An empty file is a valid place to create an image.
    drop(NandArray::create(&quiet_config(7), Backing::File(empty.clone())).unwrap());
    assert!(NandArray::open(&empty).is_ok());
    assert!(matches!(expect_err(NandArray::open(&dir.path().join("missing.img"))), EmuError::Io { .. }));

    let path = dir.path().join("card.img");
    let good = make_image(&path);
    let mut corrupt = good.clone();
    corrupt[200] ^= 0x20;
    std::fs::write(&path, &corrupt).unwrap();
    let err = expect_err(NandArray::open(&path));
    assert!(matches!(err, EmuError::Corrupt { .. }), "{err}");
    assert!(err.to_string().contains("checksum"), "{err}");
    assert!(std::fs::read(&path).unwrap() == corrupt, "refused image was modified");

    let mut future = good.clone();
    future[8..12].copy_from_slice(&2u32.to_le_bytes());
    std::fs::write(&path, &future).unwrap();
    let err = expect_err(NandArray::open(&path));
    assert!(matches!(err, EmuError::UnsupportedVersion { found: 2, supported: 1, .. }), "{err}");

    std::fs::write(&path, &good).unwrap();
    let len = good.len() as u64;
    std::fs::OpenOptions::new().write(true).open(&path).unwrap().set_len(len - 4096).unwrap();
    let err = expect_err(NandArray::open(&path));
    assert!(matches!(err, EmuError::Truncated { expected, actual, .. } if expected == len && actual == len - 4096));
    assert_eq!(std::fs::metadata(&path).unwrap().len(), len - 4096);

    std::fs::write(&path, &good[..100]).unwrap();
    assert!(matches!(expect_err(NandArray::open(&path)), EmuError::Truncated { .. }));

    std::fs::write(&path, &good).unwrap();
    let nand = NandArray::open(&path).unwrap();
    assert_page(&nand, Ppa::new(0, 0, 0), 1);
}

#[test]
fn second_opener_is_refused_with_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("card.img");
    let first = NandArray::create(&quiet_config(8), Backing::File(path.clone())).unwrap();
    let err = expect_err(NandArray::open(&path));
    assert!(matches!(err, EmuError::Locked { .. }), "{err}");
    let message = err.to_string();
    assert!(message.contains("card.img") && message.contains("in use by another process"), "{message}");
    let err = expect_err(NandArray::create(&quiet_config(8), Backing::File(path.clone())));
    assert!(matches!(err, EmuError::Locked { .. } | EmuError::Exists { .. }), "{err}");
    program(&first, Ppa::new(0, 0, 0), 3).unwrap();
    drop(first);
    let second = NandArray::open(&path).unwrap();
    assert_page(&second, Ppa::new(0, 0, 0), 3);
}

#[test]
fn power_cut_with_protection_loses_nothing() {
    let nand = memory(&quiet_config(9));
    assert!(nand.powerloss_protection());
    for page in 0..20 {
        program(&nand, Ppa::new(0, 4, page), 1).unwrap();
    }
    let cycles = nand.counters().power_cycles;
    nand.power_cut();
    assert!(!nand.is_powered());
    assert_eq!(program(&nand, Ppa::new(0, 4, 20), 1), Err(NandError::PowerCut));
    assert_eq!(nand.erase_block(0, 5), Err(NandError::PowerCut));
    assert_eq!(read(&nand, Ppa::new(0, 4, 0)).0, PageRead::Failed(NandError::PowerCut));
    assert_eq!(nand.fail_die(0), Err(NandError::PowerCut));
    nand.power_on();
    assert!(nand.is_powered());
    assert_eq!(nand.counters().power_cycles, cycles + 1);
    for page in 0..20 {
        assert_page(&nand, Ppa::new(0, 4, page), 1);
    }
    assert_eq!(nand.counters().torn_pages, 0);
    program(&nand, Ppa::new(0, 4, 20), 1).unwrap();
}

#[test]
fn power_cut_without_protection_tears_only_buffered_pages() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("card.img");
    let nand = NandArray::create(&quiet_config(10), Backing::File(path.clone())).unwrap();
    nand.set_powerloss_protection(false);
    let n = WRITE_BUFFER_PAGES_PER_DIE as u32;
    // Die 1: 5 pages flushed, then 3 more buffered.
    for page in 0..5 {
        program(&nand, Ppa::new(1, 1, page), 1).unwrap();
    }
    nand.flush();
    assert_eq!(nand.buffered_pages(), 0);
    // Die 0: 20 pages; the last N are still in the buffer.
    for page in 0..20 {
        program(&nand, Ppa::new(0, 1, page), 1).unwrap();
    }
    for page in 5..8 {
        program(&nand, Ppa::new(1, 1, page), 1).unwrap();
    }
    assert_eq!(nand.buffered_pages(), n as usize + 3);
    nand.power_cut();
    nand.power_on();

    let check = |nand: &NandArray| {
        for page in 0..20 - n {
            assert_page(nand, Ppa::new(0, 1, page), 1);
        }
        for page in 20 - n..20 {
            let (status, data, _) = read(nand, Ppa::new(0, 1, page));
            assert_eq!(status, PageRead::Uncorrectable, "buffered page {page} must read torn");
            assert_eq!(data, pattern(Ppa::new(0, 1, page), 1).0, "torn page still returns stored data");
        }
        for page in 0..5 {
            assert_page(nand, Ppa::new(1, 1, page), 1);
        }
        for page in 5..8 {
            assert_eq!(read(nand, Ppa::new(1, 1, page)).0, PageRead::Uncorrectable);
        }
        assert_eq!(nand.block_info(0, 1).unwrap().write_pointer, 20);
        assert_eq!(nand.block_info(1, 1).unwrap().write_pointer, 8);
        assert_eq!(nand.counters().torn_pages, n as u64 + 3);
    };
    check(&nand);
    drop(nand);
    let nand = NandArray::open(&path).unwrap();
    check(&nand);
    // The block goes on from its write pointer; erase clears the torn marks.
    program(&nand, Ppa::new(0, 1, 20), 2).unwrap();
    nand.erase_block(1, 1).unwrap();
    program(&nand, Ppa::new(1, 1, 0), 3).unwrap();
    nand.flush();
    assert_page(&nand, Ppa::new(1, 1, 0), 3);
    assert_erased(&nand, Ppa::new(1, 1, 5));
}

#[test]
fn orderly_close_without_protection_keeps_buffered_pages() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("card.img");
    let nand = NandArray::create(&quiet_config(11), Backing::File(path.clone())).unwrap();
    nand.set_powerloss_protection(false);
    for page in 0..4 {
        program(&nand, Ppa::new(3, 7, page), 4).unwrap();
    }
    assert_eq!(nand.buffered_pages(), 4);
    drop(nand);
    let nand = NandArray::open(&path).unwrap();
    for page in 0..4 {
        assert_page(&nand, Ppa::new(3, 7, page), 4);
    }
    // Turning protection back on drains the buffer first.
    program(&nand, Ppa::new(3, 7, 4), 4).unwrap();
    assert_eq!(nand.buffered_pages(), 1);
    nand.set_powerloss_protection(true);
    assert_eq!(nand.buffered_pages(), 0);
    nand.power_cut();
    nand.power_on();
    assert_page(&nand, Ppa::new(3, 7, 4), 4);
}

/// Per cycle: (mean corrected bits per good read, uncorrectable reads).
type WearLog = Vec<(f64, u32)>;

/// Erases and fully programs (die, block) until the block goes bad or
/// `max_cycles` pass, reading every page back each cycle.
fn cycle_block(nand: &NandArray, die: u32, block: u32, max_cycles: u32) -> (WearLog, Option<NandError>) {
    let mut log = Vec::new();
    for cycle in 0..max_cycles {
        if let Err(e) = nand.erase_block(die, block) {
            return (log, Some(e));
        }
        for page in 0..64 {
            if let Err(e) = program(nand, Ppa::new(die, block, page), cycle as u64) {
                // Pages programmed before the failure keep their data.
                for done in 0..page {
                    let (_, data, _) = read(nand, Ppa::new(die, block, done));
                    assert_eq!(data, pattern(Ppa::new(die, block, done), cycle as u64).0);
                }
                return (log, Some(e));
            }
        }
        let (mut bits, mut good, mut uncorrectable) = (0u64, 0u32, 0u32);
        for page in 0..64 {
            let ppa = Ppa::new(die, block, page);
            let (status, data, _) = read(nand, ppa);
            assert_eq!(data, pattern(ppa, cycle as u64).0, "stored data must come back even when status is bad");
            match status {
                PageRead::Ok { corrected_bits } => {
                    bits += corrected_bits as u64;
                    good += 1;
                }
                PageRead::Uncorrectable => uncorrectable += 1,
                other => panic!("{ppa}: unexpected {other:?}"),
            }
        }
        log.push((bits as f64 / good.max(1) as f64, uncorrectable));
    }
    (log, None)
}

#[test]
fn wear_raises_bit_errors_then_uncorrectables_then_bad_blocks() {
    let mut config = quiet_config(12);
    config.physics =
        PhysicsParams { rated_pe_cycles: 50, retention_bit_errors_per_day: 0.0, ..PhysicsParams::default() };
    let nand = memory(&config);
    let (log, failure) = cycle_block(&nand, 0, 1, 400);

    let early: f64 = log[..10].iter().map(|c| c.0).sum::<f64>() / 10.0;
    let rated: f64 = log[40..50].iter().map(|c| c.0).sum::<f64>() / 10.0;
    assert!(early < 1.0, "fresh block corrects {early} bits per read");
    assert!(rated > 5.0 && rated > early * 5.0, "errors at rated wear ({rated}) must grow from fresh ({early})");
    assert!(log[..50].iter().all(|c| c.1 == 0), "no uncorrectable reads within rated life");
    assert!(log.len() > 50, "block died early, after {} cycles", log.len());
    assert!(log.iter().skip(60).any(|c| c.1 > 0), "well past rated wear some reads must be uncorrectable");

    let failure = failure.expect("a block cycled far past its rating must go bad");
    let info = nand.block_info(0, 1).unwrap();
    assert_eq!(info.state, BlockState::Bad);
    match failure {
        NandError::EraseFailed { die: 0, block: 1 } => assert_eq!(info.bad_reason, Some(BadReason::EraseFailure)),
        NandError::ProgramFailed(p) if (p.die, p.block) == (0, 1) => {
            assert_eq!(info.bad_reason, Some(BadReason::ProgramFailure))
        }
        other => panic!("unexpected failure {other:?}"),
    }
    assert_eq!(nand.erase_block(0, 1), Err(NandError::BadBlock { die: 0, block: 1 }));
    let c = nand.counters();
    assert_eq!(c.grown_bad_blocks, 1);
    assert_eq!(c.erase_failures + c.program_failures, 1);
    assert!(c.ecc_corrected_bits > 0 && c.ecc_corrected_reads > 0 && c.uncorrectable_reads > 0);

    // Same seed, same history: same physics, read for read.
    let twin = memory(&config);
    let (twin_log, twin_failure) = cycle_block(&twin, 0, 1, 400);
    assert_eq!(twin_log, log);
    assert_eq!(twin_failure, Some(failure));
}

#[test]
fn threads_on_different_blocks_all_verify() {
    let nand = memory(&quiet_config(13));
    std::thread::scope(|s| {
        for t in 0..2u32 {
            let nand = &nand;
            s.spawn(move || {
                // Thread 0 takes even blocks, thread 1 odd ones, on every die.
                for die in 0..4 {
                    for block in (t..12).step_by(2) {
                        for page in 0..16 {
                            program(nand, Ppa::new(die, block, page), t as u64 + 100).unwrap();
                        }
                        if block % 4 == t {
                            nand.erase_block(die, block).unwrap();
                            for page in 0..8 {
                                program(nand, Ppa::new(die, block, page), t as u64 + 200).unwrap();
                            }
                        }
                    }
                }
            });
        }
    });
    for die in 0..4 {
        for block in 0..12u32 {
            let t = block % 2;
            let (salt, pages) = if block % 4 == t { (t as u64 + 200, 8) } else { (t as u64 + 100, 16) };
            for page in 0..pages {
                assert_page(&nand, Ppa::new(die, block, page), salt);
            }
            assert_erased(&nand, Ppa::new(die, block, pages));
        }
    }
    let c = nand.counters();
    assert_eq!(c.pages_programmed, 4 * (12 * 16 + 6 * 8));
    assert_eq!(c.blocks_erased, 4 * 6);
}

#[test]
fn terabyte_class_image_costs_only_what_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("iodrive2.img");
    let config = iomemory::emu::iodrive2_config(1_200_000_000_000, 14);
    let nand = NandArray::create(&config, Backing::File(path.clone())).unwrap();
    let ppa = Ppa::new(31, config.geometry.blocks_per_die - 1, 0);
    if nand.block_info(ppa.die, ppa.block).unwrap().state == BlockState::Free {
        program(&nand, ppa, 1).unwrap();
    }
    program(&nand, Ppa::new(0, 0, 0), 1).unwrap();
    drop(nand);
    let meta = std::fs::metadata(&path).unwrap();
    assert!(meta.len() > config.geometry.raw_bytes());
    assert!(meta.blocks() * 512 < 64 << 20, "{} bytes allocated", meta.blocks() * 512);
    let nand = NandArray::open(&path).unwrap();
    assert_page(&nand, Ppa::new(0, 0, 0), 1);
    let bad = nand.counters().factory_bad_blocks as f64 / config.geometry.total_blocks() as f64;
    assert!((0.002..0.008).contains(&bad), "factory bad fraction {bad}");
}

#[test]
fn oob_only_reads_leave_data_alone() {
    let nand = memory(&quiet_config(15));
    let ppa = Ppa::new(1, 2, 0);
    program(&nand, ppa, 6).unwrap();
    let mut oob = vec![0u8; OOB];
    // SAFETY: `oob` is one OOB long; a null data pointer asks for the OOB only.
    let status = unsafe { nand.read_page(ppa, std::ptr::null_mut(), oob.as_mut_ptr()) };
    assert!(matches!(status, PageRead::Ok { .. }));
    assert_eq!(oob, pattern(ppa, 6).1);
    // SAFETY: as above, on an erased page.
    let status = unsafe { nand.read_page(Ppa::new(1, 2, 1), std::ptr::null_mut(), oob.as_mut_ptr()) };
    assert_eq!(status, PageRead::Erased);
    assert!(oob.iter().all(|&b| b == 0xff));
}
