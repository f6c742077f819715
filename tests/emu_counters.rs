//! The emulated card's lifetime counters and command count under two I/O
//! threads, each on its own queue pair: the per-thread counter shards and
//! per-queue command counts add up exactly (in `counters()`, the health
//! log and `commands_processed`), survive a reopen of the image, and a
//! power cut armed at command N still lands after exactly N commands
//! whichever queues they came from.

use std::sync::{Arc, Barrier};

use iomemory::card::{Card, CardQueue, CardStatus, Completion, Ppa};
use iomemory::dma::DmaRegion;
use iomemory::emu::{small_test_config, Backing, EmuOptions, NandArray, NandCounters};

const PAGE: usize = 4096;
/// Pages each thread programs (two blocks of its own die).
const PROGRAMMED: u32 = 128;
/// Pages programmed per program command.
const PER_PROGRAM: u32 = 8;
/// Single-page reads each thread issues.
const READS: u32 = 3000;
/// Commands each thread keeps in flight.
const DEPTH: usize = 16;

/// Rings and polls until every outstanding command of `q` completed.
fn drain(q: &mut CardQueue, mut f: impl FnMut(Completion)) {
    q.ring();
    for _ in 0..10_000_000 {
        if q.outstanding() == 0 {
            return;
        }
        q.poll(64, &mut f);
    }
    panic!("{} commands never completed", q.outstanding());
}

/// Submits with `submit` (tag = command number) `n` times, keeping at most
/// DEPTH in flight; returns the statuses of all completions.
fn run(q: &mut CardQueue, n: u32, mut submit: impl FnMut(&mut CardQueue, u32)) -> Vec<CardStatus> {
    let mut statuses = Vec::with_capacity(n as usize);
    for i in 0..n {
        while q.outstanding() >= DEPTH {
            q.ring();
            q.poll(64, |c| statuses.push(c.status));
        }
        submit(q, i);
    }
    drain(q, |c| statuses.push(c.status));
    statuses
}

/// One I/O thread's work on die `die`: programs PROGRAMMED pages, then
/// reads them back READS times in single-page commands. Returns the number
/// of commands it issued.
fn io_thread(card: &Card, die: u32) -> u32 {
    let mut q = card.create_io_queue(64).unwrap();
    let mut buf = DmaRegion::allocate_small(card.dma(), PER_PROGRAM as usize * PAGE).unwrap();
    buf.fill(0, &vec![die as u8 ^ 0x5a; PER_PROGRAM as usize * PAGE]).unwrap();
    let iovas: Vec<u64> = (0..PER_PROGRAM as u64).map(|i| buf.iova() + i * PAGE as u64).collect();
    let ppa = |n: u32| Ppa::new(die, 1 + n / 64, n % 64);
    let programs = PROGRAMMED / PER_PROGRAM;
    for i in 0..programs {
        // One program command at a time keeps each block's pages in order.
        let ppas: Vec<Ppa> = (0..PER_PROGRAM).map(|k| ppa(i * PER_PROGRAM + k)).collect();
        q.program(&ppas, &iovas, None, i as u64).unwrap();
        drain(&mut q, |c| assert_eq!(c.status, CardStatus::Success, "program {i}: {c:?}"));
    }
    let statuses = run(&mut q, READS, |q, i| {
        let slot = iovas[i as usize % DEPTH % PER_PROGRAM as usize];
        q.read(&[ppa(i.wrapping_mul(37) % PROGRAMMED)], &[slot], None, i as u64).unwrap();
    });
    assert_eq!(statuses.len(), READS as usize);
    // Fresh pages: the ECC may correct a few bits, nothing worse.
    assert!(statuses.iter().all(|s| s.is_ok()), "every read succeeds: {:?}", statuses.iter().find(|s| !s.is_ok()));
    programs + READS
}

/// `after - before` for the counters two I/O threads move.
fn io_delta(before: &NandCounters, after: &NandCounters) -> [u64; 4] {
    [
        after.pages_programmed - before.pages_programmed,
        after.bytes_written - before.bytes_written,
        after.pages_read - before.pages_read,
        after.bytes_read - before.bytes_read,
    ]
}

#[test]
fn counters_from_two_threads_on_two_queues_add_up_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("card.img");
    let nand = NandArray::create(&small_test_config(3), Backing::File(path.clone())).unwrap();
    let card = Card::open_emulated(nand.clone(), EmuOptions::default()).unwrap();
    let emu = card.emulator().unwrap().clone();
    let before = nand.counters();
    let commands_before = emu.commands_processed();

    let start = Arc::new(Barrier::new(2));
    let commands: u32 = std::thread::scope(|s| {
        let threads: Vec<_> = (0..2)
            .map(|die| {
                let (card, start) = (&card, start.clone());
                s.spawn(move || {
                    start.wait();
                    io_thread(card, die)
                })
            })
            .collect();
        threads.into_iter().map(|t| t.join().unwrap()).sum()
    });

    let pages_programmed = 2 * PROGRAMMED as u64;
    let pages_read = 2 * READS as u64;
    let expected = [pages_programmed, pages_programmed * PAGE as u64, pages_read, pages_read * PAGE as u64];
    let after = nand.counters();
    assert_eq!(io_delta(&before, &after), expected);
    assert_eq!(emu.commands_processed() - commands_before, commands as u64);
    let health = card.health().unwrap();
    assert_eq!(health.pages_read, after.pages_read);
    assert_eq!(health.pages_programmed, after.pages_programmed);
    assert_eq!(health.physical_bytes_read, after.bytes_read);
    assert_eq!(health.physical_bytes_written, after.bytes_written);

    // Closing folds the shards into the persisted totals: a reopen sees
    // the same counts.
    drop((emu, card));
    let closed = nand.counters();
    drop(nand);
    let nand = NandArray::open(&path).unwrap();
    let reopened = nand.counters();
    assert_eq!(io_delta(&before, &reopened), expected);
    assert_eq!(NandCounters { power_cycles: 0, power_on_seconds: 0, ..reopened }, NandCounters {
        power_cycles: 0,
        power_on_seconds: 0,
        ..closed
    });
    assert_eq!(reopened.power_cycles, closed.power_cycles + 1);
}

#[test]
fn armed_power_cut_lands_after_exactly_n_commands_of_two_queues() {
    const ARMED: u64 = 1234;
    const PER_THREAD: u32 = 1000;
    let nand = NandArray::create(&small_test_config(4), Backing::Memory).unwrap();
    let card = Card::open_emulated(nand, EmuOptions::default()).unwrap();
    let emu = card.emulator().unwrap().clone();
    // Something to read: block 1 of dies 0 and 1, page 0.
    let mut q = card.create_io_queue(8).unwrap();
    let buf = DmaRegion::allocate_small(card.dma(), PAGE).unwrap();
    for die in 0..2 {
        q.program(&[Ppa::new(die, 1, 0)], &[buf.iova()], None, 0).unwrap();
        drain(&mut q, |c| assert_eq!(c.status, CardStatus::Success));
    }
    let commands_before = emu.commands_processed();
    emu.power_cut_after(ARMED);

    let start = Arc::new(Barrier::new(2));
    let statuses: Vec<CardStatus> = std::thread::scope(|s| {
        let threads: Vec<_> = (0..2u32)
            .map(|die| {
                let (card, start) = (&card, start.clone());
                s.spawn(move || {
                    let mut q = card.create_io_queue(64).unwrap();
                    let buf = DmaRegion::allocate_small(card.dma(), DEPTH * PAGE).unwrap();
                    start.wait();
                    run(&mut q, PER_THREAD, |q, i| {
                        let dst = buf.iova() + (i as usize % DEPTH * PAGE) as u64;
                        q.read(&[Ppa::new(die, 1, 0)], &[dst], None, i as u64).unwrap();
                    })
                })
            })
            .collect();
        threads.into_iter().flat_map(|t| t.join().unwrap()).collect()
    });

    assert_eq!(statuses.len(), 2 * PER_THREAD as usize);
    let ok = statuses.iter().filter(|s| s.is_ok()).count() as u64;
    let cut = statuses.iter().filter(|s| **s == CardStatus::PowerCut).count() as u64;
    assert_eq!(ok, ARMED, "exactly the armed number of commands executed");
    assert_eq!(ok + cut, 2 * PER_THREAD as u64, "every other command reports the power loss");
    assert!(emu.is_powered_off());
    // The command that crossed the cut point counts (and, at most, one the
    // other queue had already let past the powered-off check); the ones
    // after the cut never reach the counter.
    let counted = emu.commands_processed() - commands_before;
    assert!((ARMED + 1..=ARMED + 2).contains(&counted), "{counted} commands counted");
}
