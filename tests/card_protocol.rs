//! The card command set end to end: host queue pairs in DMA memory,
//! doorbells, the emulated controller, and the NAND behind it. Every admin
//! and I/O command goes through real queue pairs; data is checked byte for
//! byte.

use std::sync::Arc;

use iomemory::card::{protocol, BlockStateCode, Card, CardQueue, CardStatus, Column, Completion, Ppa, SubmitError};
use iomemory::dma::{DmaRegion, IovaSpace};
use iomemory::emu::{small_test_config, Backing, EmuOptions, NandArray};
use iomemory::nvme::spec::SubmissionEntry;

const PAGE: usize = 4096;
const OOB: usize = 128;

fn card_with(plp: bool) -> (Arc<NandArray>, Arc<Card>) {
    let nand = NandArray::create(&small_test_config(7), Backing::Memory).unwrap();
    nand.set_powerloss_protection(plp);
    let card = Card::open_emulated(nand.clone(), EmuOptions::default()).unwrap();
    (nand, card)
}

/// DMA buffers for `pages` pages of data and OOB.
struct Buffers {
    data: DmaRegion,
    oob: DmaRegion,
}

impl Buffers {
    fn new(card: &Card, pages: usize) -> Self {
        Self {
            data: DmaRegion::allocate_small(card.dma(), pages * PAGE).unwrap(),
            oob: DmaRegion::allocate_small(card.dma(), pages * OOB).unwrap(),
        }
    }
    fn data_iovas(&self, n: usize) -> Vec<u64> {
        (0..n).map(|i| self.data.iova() + (i * PAGE) as u64).collect()
    }
    fn page(&self, i: usize) -> Vec<u8> {
        let mut out = vec![0u8; PAGE];
        self.data.copy_out(i * PAGE, &mut out).unwrap();
        out
    }
    fn oob(&self, i: usize) -> Vec<u8> {
        let mut out = vec![0u8; OOB];
        self.oob.copy_out(i * OOB, &mut out).unwrap();
        out
    }
}

fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Rings, then polls until `n` completions arrived; returns them.
fn complete(q: &mut CardQueue, n: usize) -> Vec<Completion> {
    q.ring();
    let mut out = Vec::new();
    for _ in 0..1_000_000 {
        q.poll(64, |c| out.push(c));
        if out.len() >= n {
            return out;
        }
    }
    panic!("only {} of {n} completions arrived", out.len());
}

/// Powers the NAND back on after a cut and brings up a new controller and
/// queue over it (what a restart after power loss does).
fn power_back_on(nand: Arc<NandArray>) -> (Arc<Card>, CardQueue) {
    nand.power_on();
    let card = Card::open_emulated(nand, EmuOptions::default()).unwrap();
    let q = card.create_io_queue(8).unwrap();
    (card, q)
}

fn one(q: &mut CardQueue) -> Completion {
    complete(q, 1)[0]
}

fn program_pattern(q: &mut CardQueue, bufs: &mut Buffers, ppas: &[Ppa], seed: u64) -> Completion {
    for (i, _) in ppas.iter().enumerate() {
        bufs.data.fill(i * PAGE, &pattern(seed + i as u64, PAGE)).unwrap();
        bufs.oob.fill(i * OOB, &pattern(!(seed + i as u64), OOB)).unwrap();
    }
    q.program(ppas, &bufs.data_iovas(ppas.len()), Some(bufs.oob.iova()), 1).unwrap();
    one(q)
}

#[test]
fn identify_reports_the_iodrive2_identity_and_geometry() {
    let (nand, card) = card_with(true);
    let id = card.identify();
    assert_eq!(id.identity.model, "ioDrive2");
    assert_eq!((id.identity.pci_vendor, id.identity.pci_device), (0x1aed, 0x2001));
    assert_eq!(id.geometry, nand.config().geometry);
    assert_eq!(id.max_pages_per_command, 64);
    assert!(id.sector_sizes.contains(&512) && id.sector_sizes.contains(&4096));
}

#[test]
fn vector_program_read_and_erase_move_every_byte() {
    let (_nand, card) = card_with(true);
    let mut q = card.create_io_queue(64).unwrap();
    let mut bufs = Buffers::new(&card, 64);
    // 64 pages in one command (PRP list + address list), across two dies.
    let ppas: Vec<Ppa> = (0..64).map(|i| Ppa::new(i % 2, 3, i / 2)).collect();
    let c = program_pattern(&mut q, &mut bufs, &ppas, 100);
    assert_eq!(c.status, CardStatus::Success, "{c:?}");

    let mut out = Buffers::new(&card, 64);
    q.read(&ppas, &out.data_iovas(64), Some(out.oob.iova()), 2).unwrap();
    let c = one(&mut q);
    assert!(c.status.is_ok(), "{c:?}");
    assert_eq!(c.tag, 2);
    for i in 0..64 {
        assert_eq!(out.page(i), pattern(100 + i as u64, PAGE), "page {i} data");
        assert_eq!(out.oob(i), pattern(!(100 + i as u64), OOB), "page {i} oob");
    }

    // OOB-only read (what recovery scans use): OOB arrives, data untouched.
    out.data.fill(0, &vec![0x5a; PAGE]).unwrap();
    q.read(&ppas[..1], &[], Some(out.oob.iova()), 3).unwrap();
    assert!(one(&mut q).status.is_ok());
    assert_eq!(out.oob(0), pattern(!100, OOB));
    assert_eq!(out.page(0), vec![0x5a; PAGE]);

    // Two-page command (PRP1 + PRP2, no list).
    q.read(&ppas[..2], &out.data_iovas(2), None, 4).unwrap();
    assert!(one(&mut q).status.is_ok());
    assert_eq!(out.page(1), pattern(101, PAGE));

    // Erase: every page reads back erased.
    q.erase(0, 3, 5).unwrap();
    assert_eq!(one(&mut q).status, CardStatus::Success);
    q.read(&[Ppa::new(0, 3, 0)], &out.data_iovas(1), Some(out.oob.iova()), 6).unwrap();
    let c = one(&mut q);
    assert_eq!(c.status, CardStatus::Erased);
    assert_eq!(c.failed_mask, 1);
    assert_eq!(out.page(0), vec![0xff; PAGE]);
    // The other die's block is untouched.
    q.read(&[Ppa::new(1, 3, 0)], &out.data_iovas(1), None, 7).unwrap();
    assert!(one(&mut q).status.is_ok());
    assert_eq!(out.page(0), pattern(101, PAGE));

    // Flush completes.
    q.flush(8).unwrap();
    assert_eq!(one(&mut q).status, CardStatus::Success);
}

#[test]
fn nand_rule_violations_return_their_status_and_change_nothing() {
    let (_nand, card) = card_with(true);
    let mut q = card.create_io_queue(16).unwrap();
    let mut bufs = Buffers::new(&card, 4);
    let c = program_pattern(&mut q, &mut bufs, &[Ppa::new(0, 1, 0), Ppa::new(0, 1, 1)], 7);
    assert_eq!(c.status, CardStatus::Success);

    // Out of order: page 5 while the write pointer is at 2.
    let c = program_pattern(&mut q, &mut bufs, &[Ppa::new(0, 1, 5)], 99);
    assert_eq!(c.status, CardStatus::ProgramOrder);
    // Rewrite of a programmed page.
    let c = program_pattern(&mut q, &mut bufs, &[Ppa::new(0, 1, 0)], 98);
    assert_eq!(c.status, CardStatus::NotErased);
    // Address outside the geometry is refused at submit by the host...
    assert!(matches!(
        q.program(&[Ppa::new(99, 0, 0)], &bufs.data_iovas(1), None, 1),
        Err(SubmitError::Invalid(_))
    ));
    // ...and by the device when a raw command names it (bypassing the
    // host-side check through a bare queue pair).
    let mut raw = card.controller().create_io_queue_pair(4).unwrap();
    let mut sqe = SubmissionEntry::new(protocol::opcode::VECTOR_PROGRAM, 0);
    sqe.nsid = 1;
    sqe.set_cdw10_11(Ppa::new(99, 0, 0).to_wire());
    sqe.prp1 = bufs.data.iova();
    raw.submit(sqe, 77).unwrap();
    raw.ring();
    let mut got = None;
    while got.is_none() {
        raw.poll(1, |tag, cqe| got = Some((tag, CardStatus::from_status(cqe.status_code()))));
    }
    assert_eq!(got, Some((77, CardStatus::InvalidAddress)));
    // An unknown opcode is refused too.
    raw.submit(SubmissionEntry::new(0x7f, 0), 78).unwrap();
    raw.ring();
    let mut got = None;
    while got.is_none() {
        raw.poll(1, |_, cqe| got = Some(CardStatus::from_status(cqe.status_code())));
    }
    assert_eq!(got, Some(CardStatus::InvalidField));
    drop(raw);
    let info = card.block_info(0, 1, 1).unwrap()[0];
    assert_eq!(info.write_pointer, 2);
    assert_eq!(info.state, BlockStateCode::Open);

    // Original data intact.
    let out = Buffers::new(&card, 2);
    q.read(&[Ppa::new(0, 1, 0), Ppa::new(0, 1, 1)], &out.data_iovas(2), Some(out.oob.iova()), 1)
        .unwrap();
    assert!(one(&mut q).status.is_ok());
    assert_eq!(out.page(0), pattern(7, PAGE));
    assert_eq!(out.page(1), pattern(8, PAGE));
    assert_eq!(out.oob(1), pattern(!8, OOB));

    // A program that fails part way reports which pages did not land.
    let c = program_pattern(&mut q, &mut bufs, &[Ppa::new(0, 1, 2), Ppa::new(0, 1, 9)], 5);
    assert_eq!(c.status, CardStatus::ProgramOrder);
    assert_eq!(c.failed_mask, 0b10);
    assert_eq!(card.block_info(0, 1, 1).unwrap()[0].write_pointer, 3);
}

/// Sends one raw vector command through a bare queue pair (bypassing the
/// host-side checks of `CardQueue`) and returns its status.
fn raw_status(card: &Card, sqe: SubmissionEntry) -> CardStatus {
    let mut raw = card.controller().create_io_queue_pair(4).unwrap();
    raw.submit(sqe, 1).unwrap();
    raw.ring();
    let mut got = None;
    while got.is_none() {
        raw.poll(1, |_, cqe| got = Some(CardStatus::from_status(cqe.status_code())));
    }
    got.unwrap_or(CardStatus::Internal)
}

#[test]
fn column_reads_move_only_their_sectors_of_each_page() {
    const SENTINEL: u8 = 0x5a;
    let (_nand, card) = card_with(true);
    let mut q = card.create_io_queue(16).unwrap();
    let mut bufs = Buffers::new(&card, 3);
    let ppas = [Ppa::new(0, 2, 0), Ppa::new(1, 2, 0), Ppa::new(0, 2, 1)];
    assert_eq!(program_pattern(&mut q, &mut bufs, &ppas, 40).status, CardStatus::Success);
    let units = PAGE / protocol::COLUMN_UNIT;

    // Every column of every width, on one, two (PRP2) and three (PRP list)
    // pages; the pages land packed side by side at 512-byte (not page)
    // aligned addresses inside a sentinel-filled region.
    let mut dst = DmaRegion::allocate_small(card.dma(), 4 * PAGE).unwrap();
    let mut oob = DmaRegion::allocate_small(card.dma(), 3 * OOB).unwrap();
    for n in 1..=3usize {
        for first in 0..units {
            for count in 1..=units - first {
                let col = Column::new(first as u16, count as u16);
                let len = count * protocol::COLUMN_UNIT;
                let base = 512 * (1 + first % 3);
                dst.fill(0, &vec![SENTINEL; 4 * PAGE]).unwrap();
                oob.fill(0, &vec![0u8; 3 * OOB]).unwrap();
                let iovas: Vec<u64> = (0..n).map(|i| dst.iova() + (base + i * len) as u64).collect();
                q.read_column(&ppas[..n], &iovas, col, Some(oob.iova()), 9).unwrap();
                let c = one(&mut q);
                assert_eq!(c.status, CardStatus::Success, "{col:?} x{n}: {c:?}");
                let mut got = vec![0u8; 4 * PAGE];
                dst.copy_out(0, &mut got).unwrap();
                let mut want = vec![SENTINEL; 4 * PAGE];
                for i in 0..n {
                    let page = pattern(40 + i as u64, PAGE);
                    let off = first * protocol::COLUMN_UNIT;
                    want[base + i * len..base + (i + 1) * len].copy_from_slice(&page[off..off + len]);
                }
                assert!(got == want, "{col:?} x{n}: bytes differ at {:?}", got.iter().zip(&want).position(|(a, b)| a != b));
                for i in 0..n {
                    let mut o = vec![0u8; OOB];
                    oob.copy_out(i * OOB, &mut o).unwrap();
                    assert_eq!(o, pattern(!(40 + i as u64), OOB), "{col:?} page {i}: OOB whole");
                }
            }
        }
    }

    // A column needs only its own bytes of DMA memory: the last sector of
    // a one-page region, where a whole page would not fit.
    let mut tail = DmaRegion::allocate_small(card.dma(), PAGE).unwrap();
    tail.fill(0, &vec![SENTINEL; PAGE]).unwrap();
    q.read_column(&ppas[1..2], &[tail.iova() + (PAGE - 512) as u64], Column::new(5, 1), None, 10).unwrap();
    assert_eq!(one(&mut q).status, CardStatus::Success);
    let mut got = vec![0u8; PAGE];
    tail.copy_out(0, &mut got).unwrap();
    assert_eq!(got[..PAGE - 512], vec![SENTINEL; PAGE - 512]);
    assert_eq!(got[PAGE - 512..], pattern(41, PAGE)[5 * 512..6 * 512]);
    q.read(&ppas[1..2], &[tail.iova() + (PAGE - 512) as u64], None, 11).unwrap();
    assert_eq!(one(&mut q).status, CardStatus::DataTransfer, "a whole page does not fit there");

    // An erased page: the column reads as 0xff, nothing else is written.
    dst.fill(0, &vec![SENTINEL; 4 * PAGE]).unwrap();
    q.read_column(&[Ppa::new(0, 2, 5)], &[dst.iova() + 512], Column::new(2, 3), None, 12).unwrap();
    let c = one(&mut q);
    assert_eq!((c.status, c.failed_mask), (CardStatus::Erased, 1));
    let mut got = vec![0u8; 4 * PAGE];
    dst.copy_out(0, &mut got).unwrap();
    assert_eq!(got[..512], vec![SENTINEL; 512]);
    assert_eq!(got[512..2048], vec![0xff; 1536]);
    assert!(got[2048..].iter().all(|&b| b == SENTINEL));
}

#[test]
fn invalid_columns_are_refused_by_host_and_device_and_touch_nothing() {
    const SENTINEL: u8 = 0xa7;
    let (_nand, card) = card_with(true);
    let mut q = card.create_io_queue(16).unwrap();
    let mut bufs = Buffers::new(&card, 1);
    let ppa = Ppa::new(0, 4, 0);
    assert_eq!(program_pattern(&mut q, &mut bufs, &[ppa], 60).status, CardStatus::Success);
    let mut dst = DmaRegion::allocate_small(card.dma(), 2 * PAGE).unwrap();
    dst.fill(0, &vec![SENTINEL; 2 * PAGE]).unwrap();

    // Host side: past the page, empty-but-offset, data count mismatch.
    for col in [Column::new(7, 2), Column::new(8, 1), Column::new(3, 0), Column::new(u16::MAX, 1)] {
        assert!(
            matches!(q.read_column(&[ppa], &[dst.iova()], col, None, 1), Err(SubmitError::Invalid(_))),
            "{col:?}"
        );
    }
    assert!(matches!(q.read_column(&[ppa], &[], Column::new(0, 1), None, 1), Err(SubmitError::Invalid(_))));

    // Device side, through a bare queue pair.
    let read = |cdw13: u32, prp1: u64| {
        let mut sqe = SubmissionEntry::new(protocol::opcode::VECTOR_READ, 0);
        sqe.nsid = 1;
        sqe.set_cdw10_11(ppa.to_wire());
        sqe.prp1 = prp1;
        sqe.mptr = bufs.oob.iova();
        sqe.cdw13 = cdw13;
        sqe
    };
    for col in [Column::new(7, 2), Column::new(8, 1), Column::new(3, 0), Column::new(0, 9)] {
        assert_eq!(raw_status(&card, read(col.to_wire(), dst.iova())), CardStatus::InvalidField, "{col:?}");
    }
    assert_eq!(raw_status(&card, read(Column::new(0, 1).to_wire(), 0)), CardStatus::InvalidField, "column without data");
    let mut got = vec![0u8; 2 * PAGE];
    dst.copy_out(0, &mut got).unwrap();
    assert!(got.iter().all(|&b| b == SENTINEL), "refused reads wrote nothing");
    // Dword 13 is reserved on programs: refused, the block is unchanged.
    let mut sqe = SubmissionEntry::new(protocol::opcode::VECTOR_PROGRAM, 0);
    sqe.nsid = 1;
    sqe.set_cdw10_11(Ppa::new(0, 4, 1).to_wire());
    sqe.prp1 = bufs.data.iova();
    sqe.cdw13 = Column::new(0, 1).to_wire();
    assert_eq!(raw_status(&card, sqe), CardStatus::InvalidField);
    assert_eq!(card.block_info(0, 4, 1).unwrap()[0].write_pointer, 1);
    // A valid raw column read works through the same path.
    assert_eq!(raw_status(&card, read(Column::new(6, 2).to_wire(), dst.iova())), CardStatus::Success);
    dst.copy_out(0, &mut got).unwrap();
    assert_eq!(got[..1024], pattern(60, PAGE)[6 * 512..]);
    assert!(got[1024..].iter().all(|&b| b == SENTINEL));
}

#[test]
fn dma_to_memory_the_card_was_not_given_fails_without_touching_nand() {
    let (_nand, card) = card_with(true);
    let mut q = card.create_io_queue(8).unwrap();
    // A buffer registered in another IOVA space: invisible to this card.
    let stranger = DmaRegion::allocate_small(&Arc::new(IovaSpace::new()), PAGE).unwrap();
    q.program(&[Ppa::new(0, 2, 0)], &[stranger.iova()], None, 1).unwrap();
    assert_eq!(one(&mut q).status, CardStatus::DataTransfer);
    assert_eq!(card.block_info(0, 2, 1).unwrap()[0].write_pointer, 0);
    let heap = vec![0u8; PAGE];
    q.read(&[Ppa::new(0, 2, 0)], &[heap.as_ptr() as u64], None, 2).unwrap();
    assert_eq!(one(&mut q).status, CardStatus::DataTransfer);
}

#[test]
fn full_queue_is_a_retryable_error_and_wraparound_keeps_order() {
    let (_nand, card) = card_with(true);
    let mut q = card.create_io_queue(4).unwrap(); // 3 slots
    let out = Buffers::new(&card, 1);
    for tag in 0..3 {
        q.read(&[Ppa::new(0, 0, 0)], &out.data_iovas(1), None, tag).unwrap();
    }
    assert_eq!(
        q.read(&[Ppa::new(0, 0, 0)], &out.data_iovas(1), None, 9),
        Err(SubmitError::QueueFull)
    );
    assert_eq!(q.outstanding(), 3);
    let done = complete(&mut q, 3);
    assert_eq!(done.iter().map(|c| c.tag).collect::<Vec<_>>(), vec![0, 1, 2]);
    // Many laps around a 4-entry ring: every tag comes back exactly once.
    let mut seen = Vec::new();
    let mut next = 0u64;
    while seen.len() < 1000 {
        while next < 1000 && q.free_slots() > 0 {
            q.read(&[Ppa::new(1, 0, 0)], &out.data_iovas(1), None, next).unwrap();
            next += 1;
        }
        q.ring();
        q.poll(8, |c| {
            assert_eq!(c.status, CardStatus::Erased);
            seen.push(c.tag)
        });
    }
    assert_eq!(seen, (0..1000).collect::<Vec<_>>());
}

#[test]
fn queue_pairs_on_different_threads_run_concurrently() {
    let (_nand, card) = card_with(true);
    let threads: Vec<_> = (0..4u32)
        .map(|t| {
            let card = card.clone();
            std::thread::spawn(move || {
                let mut q = card.create_io_queue(32).unwrap();
                let mut bufs = Buffers::new(&card, 8);
                let die = t; // one die per thread
                for block in 4..8u32 {
                    for chunk in 0..8u32 {
                        let ppas: Vec<Ppa> = (0..8).map(|p| Ppa::new(die, block, chunk * 8 + p)).collect();
                        let seed = (t as u64) << 32 | (block as u64) << 16 | chunk as u64;
                        assert_eq!(program_pattern(&mut q, &mut bufs, &ppas, seed * 8).status, CardStatus::Success);
                    }
                }
                let out = Buffers::new(&card, 8);
                for block in 4..8u32 {
                    for chunk in 0..8u32 {
                        let ppas: Vec<Ppa> = (0..8).map(|p| Ppa::new(die, block, chunk * 8 + p)).collect();
                        q.read(&ppas, &out.data_iovas(8), None, 0).unwrap();
                        assert!(one(&mut q).status.is_ok());
                        let seed = (t as u64) << 32 | (block as u64) << 16 | chunk as u64;
                        for p in 0..8 {
                            assert_eq!(out.page(p), pattern(seed * 8 + p as u64, PAGE));
                        }
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
}

#[test]
fn health_log_and_block_info_come_over_the_admin_queue() {
    let (_nand, card) = card_with(true);
    let mut q = card.create_io_queue(8).unwrap();
    let mut bufs = Buffers::new(&card, 4);
    let ppas: Vec<Ppa> = (0..4).map(|p| Ppa::new(2, 0, p)).collect();
    assert_eq!(program_pattern(&mut q, &mut bufs, &ppas, 1).status, CardStatus::Success);
    q.erase(3, 5, 0).unwrap();
    assert_eq!(one(&mut q).status, CardStatus::Success);
    let h = card.health().unwrap();
    assert_eq!(h.physical_bytes_written, 4 * PAGE as u64);
    assert_eq!(h.pages_programmed, 4);
    assert_eq!(h.blocks_erased, 1);
    assert!(h.powerloss_protection);
    assert!(h.temperature_mc > 30_000 && h.temperature_mc < 90_000);
    let g = card.geometry();
    assert_eq!(h.good_blocks, g.total_blocks());
    let blocks = card.block_info(3, 0, g.blocks_per_die).unwrap();
    assert_eq!(blocks.len(), g.blocks_per_die as usize);
    assert_eq!(blocks[5].pe_cycles, 1);
    assert_eq!(card.block_info(2, 0, 1).unwrap()[0].write_pointer, 4);
    assert!(card.block_info(99, 0, 1).is_err());
}

#[test]
fn power_cut_with_protection_keeps_every_completed_program() {
    let (nand, card) = card_with(true);
    let mut q = card.create_io_queue(16).unwrap();
    let mut bufs = Buffers::new(&card, 1);
    card.emulator().unwrap().power_cut_after(5);
    let mut statuses = Vec::new();
    for p in 0..8 {
        statuses.push(program_pattern(&mut q, &mut bufs, &[Ppa::new(0, 6, p)], 50 + p as u64).status);
    }
    assert_eq!(&statuses[..5], &[CardStatus::Success; 5]);
    assert_eq!(&statuses[5..], &[CardStatus::PowerCut; 3]);
    drop((q, card));
    let (card, mut q) = power_back_on(nand);
    let out = Buffers::new(&card, 1);
    for p in 0..5u32 {
        q.read(&[Ppa::new(0, 6, p)], &out.data_iovas(1), None, 0).unwrap();
        assert!(one(&mut q).status.is_ok());
        assert_eq!(out.page(0), pattern(50 + p as u64, PAGE));
    }
    q.read(&[Ppa::new(0, 6, 5)], &out.data_iovas(1), None, 0).unwrap();
    assert_eq!(one(&mut q).status, CardStatus::Erased);
}

#[test]
fn power_cut_without_protection_tears_unflushed_programs_only() {
    let (nand, card) = card_with(false);
    let mut q = card.create_io_queue(16).unwrap();
    let mut bufs = Buffers::new(&card, 1);
    for p in 0..4 {
        assert_eq!(program_pattern(&mut q, &mut bufs, &[Ppa::new(1, 6, p)], p as u64).status, CardStatus::Success);
    }
    q.flush(0).unwrap();
    assert_eq!(one(&mut q).status, CardStatus::Success);
    for p in 4..6 {
        assert_eq!(program_pattern(&mut q, &mut bufs, &[Ppa::new(1, 6, p)], p as u64).status, CardStatus::Success);
    }
    card.emulator().unwrap().power_cut_now();
    q.read(&[Ppa::new(1, 6, 0)], &bufs.data_iovas(1), None, 0).unwrap();
    assert_eq!(one(&mut q).status, CardStatus::PowerCut);
    drop((q, card));
    let (card, mut q) = power_back_on(nand);
    let out = Buffers::new(&card, 1);
    for p in 0..4u32 {
        q.read(&[Ppa::new(1, 6, p)], &out.data_iovas(1), None, 0).unwrap();
        assert!(one(&mut q).status.is_ok(), "flushed page {p}");
        assert_eq!(out.page(0), pattern(p as u64, PAGE));
    }
    for p in 4..6u32 {
        q.read(&[Ppa::new(1, 6, p)], &out.data_iovas(1), None, 0).unwrap();
        assert_eq!(one(&mut q).status, CardStatus::Uncorrectable, "unflushed page {p} is torn");
    }
}
