//! Write coalescing on a real emulated card: small writes submitted
//! together share pages (and card commands), every byte reads back, the
//! newest of two writes to one LBA in one page wins at run time and after
//! clean and dirty restarts, and a power cut under a shared command fails
//! its requests without leaving garbage behind.

use std::collections::HashMap;
mod common;

use std::sync::Arc;

use iomemory::blk::{BlockDevice, IoBuffer};
use iomemory::emu::{small_test_config, Backing, NandArray};
use iomemory::vsl::{AttachKind, IoError, VslChannel};

const SS: usize = 512;

fn pattern(lba: u64, gen: u64) -> Vec<u8> {
    let mut x = lba.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ gen.wrapping_mul(0xdead_beef) ^ 1;
    (0..SS)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn device(nand: &Arc<NandArray>) -> Arc<BlockDevice> {
    common::block_device(nand, SS as u32)
}

/// Submits one single-sector write per `(lba, data)` — all before any poll
/// — and polls until every one completed; returns the results by index.
fn write_burst(ch: &mut VslChannel, buf: &mut IoBuffer, writes: &[(u64, Vec<u8>)]) -> Vec<Result<(), IoError>> {
    for (i, (_, data)) in writes.iter().enumerate() {
        buf.fill(i * SS, data).unwrap();
    }
    for (i, (lba, _)) in writes.iter().enumerate() {
        // SAFETY: `buf` outlives the burst and is not touched until every
        // request completed (we poll to the end below).
        let iov = [unsafe { buf.iovec_at(i * SS, SS) }.unwrap()];
        ch.write(*lba, &iov, i as u64).unwrap();
    }
    let mut results: Vec<Option<Result<(), IoError>>> = vec![None; writes.len()];
    let mut polls = 0;
    while results.iter().any(Option::is_none) {
        ch.poll(&mut |ctx, r| results[ctx as usize] = Some(r));
        polls += 1;
        assert!(polls < 1_000_000, "burst never completed");
    }
    results.into_iter().map(Option::unwrap).collect()
}

fn read_sector(ch: &mut VslChannel, buf: &mut IoBuffer, lba: u64) -> Vec<u8> {
    // SAFETY: as above; one request at a time.
    let iov = [unsafe { buf.iovec_at(0, SS) }.unwrap()];
    ch.read(lba, &iov, 1).unwrap();
    let mut out = None;
    while out.is_none() {
        ch.poll(&mut |_, r| out = Some(r));
    }
    out.unwrap().unwrap();
    let mut back = vec![0u8; SS];
    buf.copy_out(0, &mut back).unwrap();
    back
}

#[test]
fn small_writes_submitted_together_share_pages_and_read_back() {
    let nand = NandArray::create(&small_test_config(31), Backing::Memory).unwrap();
    let dev = device(&nand);
    assert_eq!(dev.block_size() as usize, SS);
    let mut ch = dev.channel().unwrap();
    let mut buf = dev.alloc_buffer(64 * SS).unwrap();
    let n = dev.num_blocks();

    // 64 single-sector writes at scattered LBAs: 8 pages of 8 sectors.
    let before = dev.status().counters.user_pages;
    let writes: Vec<(u64, Vec<u8>)> = (0..64u64).map(|i| ((i * 997) % n, pattern((i * 997) % n, 1))).collect();
    assert!(write_burst(&mut ch, &mut buf, &writes).iter().all(Result::is_ok));
    let pages = dev.status().counters.user_pages - before;
    assert_eq!(pages, 8, "64 sectors of 512 B were coalesced into 8 pages, not one page each");

    // A lone write is not held back for company: it is sent on the next
    // poll and completes without further submissions.
    let lone = vec![((n - 1), pattern(n - 1, 2))];
    assert!(write_burst(&mut ch, &mut buf, &lone)[0].is_ok());

    let mut expect: HashMap<u64, Vec<u8>> = writes.into_iter().collect();
    expect.insert(n - 1, pattern(n - 1, 2));
    for (lba, want) in &expect {
        assert_eq!(&read_sector(&mut ch, &mut buf, *lba), want, "lba {lba}");
    }
}

#[test]
fn newest_of_two_writes_in_one_page_wins_across_clean_and_dirty_restarts() {
    let nand = NandArray::create(&small_test_config(32), Backing::Memory).unwrap();
    let check = |dev: &Arc<BlockDevice>, want: &HashMap<u64, Vec<u8>>| {
        let mut ch = dev.channel().unwrap();
        let mut buf = dev.alloc_buffer(SS).unwrap();
        for (lba, w) in want {
            assert_eq!(&read_sector(&mut ch, &mut buf, *lba), w, "lba {lba}");
        }
    };
    let mut want = HashMap::new();
    {
        let dev = device(&nand);
        let mut ch = dev.channel().unwrap();
        let mut buf = dev.alloc_buffer(8 * SS).unwrap();
        // LBA 7 twice and LBA 9 three times in one page.
        let writes = vec![
            (7, pattern(7, 1)),
            (8, pattern(8, 1)),
            (7, pattern(7, 2)),
            (9, pattern(9, 1)),
            (9, pattern(9, 2)),
            (9, pattern(9, 3)),
        ];
        assert!(write_burst(&mut ch, &mut buf, &writes).iter().all(Result::is_ok));
        want.insert(7, pattern(7, 2));
        want.insert(8, pattern(8, 1));
        want.insert(9, pattern(9, 3));
        drop(ch);
        check(&dev, &want);
        dev.detach().unwrap();
    }
    {
        let dev = device(&nand);
        assert_eq!(dev.vsl().attach_report().kind, AttachKind::Clean);
        check(&dev, &want);
        let mut ch = dev.channel().unwrap();
        let mut buf = dev.alloc_buffer(8 * SS).unwrap();
        let writes = vec![(7, pattern(7, 3)), (7, pattern(7, 4)), (8, pattern(8, 2)), (7, pattern(7, 5))];
        assert!(write_burst(&mut ch, &mut buf, &writes).iter().all(Result::is_ok));
        want.insert(7, pattern(7, 5));
        want.insert(8, pattern(8, 2));
        // Crash: no detach. The next attach scans the OOB records, where
        // each sector of the page carries its own version.
    }
    let dev = device(&nand);
    assert_eq!(dev.vsl().attach_report().kind, AttachKind::Scan);
    check(&dev, &want);
}

#[test]
fn power_cut_under_a_shared_command_fails_its_requests_and_leaves_no_garbage() {
    let nand = NandArray::create(&small_test_config(33), Backing::Memory).unwrap();
    let mut acked = HashMap::new();
    let mut attempted = HashMap::new();
    {
        let dev = device(&nand);
        let mut ch = dev.channel().unwrap();
        let mut buf = dev.alloc_buffer(40 * SS).unwrap();
        let first: Vec<(u64, Vec<u8>)> = (0..40u64).map(|l| (l * 3, pattern(l * 3, 1))).collect();
        assert!(write_burst(&mut ch, &mut buf, &first).iter().all(Result::is_ok));
        acked.extend(first);
        // The next burst shares one command; the power goes before the
        // card sees it.
        let second: Vec<(u64, Vec<u8>)> = (0..40u64).map(|l| (l * 3, pattern(l * 3, 2))).collect();
        dev.card().emulator().unwrap().power_cut_now();
        let results = write_burst(&mut ch, &mut buf, &second);
        assert!(
            results.iter().all(Result::is_err),
            "no member of a command the card never programmed is acknowledged: {results:?}"
        );
        attempted.extend(second);
    }
    nand.power_on();
    let dev = device(&nand);
    assert_eq!(dev.vsl().attach_report().kind, AttachKind::Scan);
    let mut ch = dev.channel().unwrap();
    let mut buf = dev.alloc_buffer(SS).unwrap();
    for (lba, old) in &acked {
        let got = read_sector(&mut ch, &mut buf, *lba);
        assert!(
            &got == old || Some(&got) == attempted.get(lba),
            "lba {lba}: neither the acknowledged data nor the later attempt"
        );
    }
}
