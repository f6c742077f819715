//! Page reads take no lock (they check a per-block sequence word and run
//! again when an erase overlapped them): a stress test where a read racing
//! erases and programs of its own block must return a whole page of one
//! program, or an erased page, never a mix, with exact read counters. (The
//! retry itself is tested deterministically in `emu::seqlock`.)

use std::sync::atomic::{AtomicBool, Ordering};

use iomemory::card::Ppa;
use iomemory::emu::{small_test_config, Backing, NandArray, NandConfig, PageRead};

const PAGE: usize = 4096;
const OOB: usize = 128;
/// Pages programmed per round (the reader reads the ones being rewritten).
const PAGES: u32 = 2;
/// Erase-and-program rounds the writer runs.
const ROUNDS: u32 = 5_000;

/// A card whose physics adds no bit errors and no failures, so every
/// programmed page reads back `Ok` with its exact contents.
fn quiet_config() -> NandConfig {
    let mut config = small_test_config(11);
    let p = &mut config.physics;
    p.base_bit_errors = 0.0;
    p.wear_bit_errors = 0.0;
    p.retention_bit_errors_per_day = 0.0;
    p.grown_bad_rate = 0.0;
    config
}

fn race(backing: Backing) {
    let nand = NandArray::create(&quiet_config(), backing).unwrap();
    let block = |page| Ppa::new(0, 1, page);
    let done = AtomicBool::new(false);
    let reads_before = nand.counters().pages_read;
    let mut reads = 0u64;
    let (mut whole, mut erased) = (0u64, 0u64);
    std::thread::scope(|s| {
        s.spawn(|| {
            for round in 0..ROUNDS {
                nand.erase_block(0, 1).unwrap();
                // Every byte of data and OOB carries the round: a mix of two
                // programs (or of a program and the erased state) shows.
                let fill = (round % 250) as u8 + 1;
                let (data, oob) = (vec![fill; PAGE], vec![fill; OOB]);
                for page in 0..PAGES {
                    // SAFETY: the buffers are one page and one OOB long.
                    unsafe { nand.program_page(block(page), data.as_ptr(), oob.as_ptr()) }.unwrap();
                }
            }
            done.store(true, Ordering::Release);
        });
        let (mut data, mut oob) = (vec![0u8; PAGE], vec![0u8; OOB]);
        // Until the writer is done, and at least a few reads more (the last
        // round's pages stay programmed) should the writer have finished
        // before this thread got going.
        while !done.load(Ordering::Acquire) || whole < 100 {
            // SAFETY: the buffers are one page and one OOB long.
            let status = unsafe { nand.read_page(block(reads as u32 % PAGES), data.as_mut_ptr(), oob.as_mut_ptr()) };
            reads += 1;
            let fill = data[0];
            match status {
                PageRead::Ok { corrected_bits: 0 } => {
                    assert!(fill != 0xff, "a programmed page reads as erased");
                    whole += 1;
                }
                PageRead::Erased => {
                    assert_eq!(fill, 0xff);
                    erased += 1;
                }
                other => panic!("read {reads}: unexpected {other:?}"),
            }
            assert!(data.iter().all(|&b| b == fill), "read {reads}: data mixes two states of the page");
            assert!(oob.iter().all(|&b| b == fill), "read {reads}: OOB does not match its data");
        }
    });
    assert!(whole >= 100 && reads == whole + erased);
    assert_eq!(nand.counters().pages_read - reads_before, reads, "each read counted once");
}

/// One test runs both backings in turn, so the reader and the writer have
/// the two cores to themselves and really overlap.
#[test]
fn reads_racing_erase_and_program_of_their_block_see_whole_pages() {
    race(Backing::Memory);
    // A file image gives erased blocks' pages back to the system (the
    // range reads as zeros while it is released).
    let dir = tempfile::tempdir().unwrap();
    race(Backing::File(dir.path().join("card.img")));
}
