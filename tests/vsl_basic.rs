//! VSL basics on a real emulated card: format, attach, write and read back
//! every byte, overwrite, trim, atomic writes, clean and dirty restarts.

use std::sync::Arc;

use iomemory::card::Card;
use iomemory::emu::{small_test_config, Backing, EmuOptions, NandArray};
use iomemory::vsl::{AttachKind, AttachOptions, BlockingChannel, FormatOptions, Vsl, VslError};

fn card(seed: u64) -> (Arc<NandArray>, Arc<Card>) {
    let nand = NandArray::create(&small_test_config(seed), Backing::Memory).unwrap();
    let card = Card::open_emulated(nand.clone(), EmuOptions::default()).unwrap();
    (nand, card)
}

fn pattern(lba: u64, gen: u64, len: usize) -> Vec<u8> {
    let mut x = lba.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ gen.wrapping_mul(0xdead_beef) ^ 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

#[test]
fn format_attach_write_read_4k() {
    let (_nand, card) = card(1);
    let mut steps = 0;
    Vsl::format(card.clone(), &FormatOptions::default(), &mut |_, _| steps += 1).unwrap();
    assert!(steps > 1, "format reports progress");
    let vsl = Vsl::attach(card.clone(), &AttachOptions::default(), &mut |_, _| {}).unwrap();
    assert_eq!(vsl.attach_report().kind, AttachKind::Fresh);
    assert_eq!(vsl.sector_size(), 4096);
    let mut ch = BlockingChannel::new(vsl.channel().unwrap()).unwrap();
    assert_eq!(ch.read(5, 2).unwrap(), vec![0u8; 8192], "never-written sectors read as zeros");
    for lba in 0..50u64 {
        ch.write(lba * 3, &pattern(lba * 3, 0, 4096 * 2)).unwrap();
    }
    for lba in 0..50u64 {
        assert_eq!(ch.read(lba * 3, 2).unwrap(), pattern(lba * 3, 0, 8192), "lba {}", lba * 3);
    }
    drop(ch);
    vsl.detach().unwrap();
}

#[test]
fn refuses_to_reformat_without_yes() {
    let (_nand, card) = card(2);
    Vsl::format(card.clone(), &FormatOptions::default(), &mut |_, _| {}).unwrap();
    let err = Vsl::format(card.clone(), &FormatOptions::default(), &mut |_, _| {}).unwrap_err();
    assert!(matches!(err, VslError::AlreadyFormatted { .. }), "{err}");
    Vsl::format(card, &FormatOptions { yes: true, ..FormatOptions::default() }, &mut |_, _| {}).unwrap();
}

fn setup(seed: u64, sector_size: u32) -> (Arc<NandArray>, Arc<Card>, Arc<Vsl>) {
    let (nand, card) = card(seed);
    let opts = FormatOptions {
        sector_size,
        ..FormatOptions::default()
    };
    Vsl::format(card.clone(), &opts, &mut |_, _| {}).unwrap();
    let vsl = Vsl::attach(card.clone(), &AttachOptions::default(), &mut |_, _| {}).unwrap();
    (nand, card, vsl)
}

fn reopen(nand: &Arc<NandArray>, card: Arc<Card>) -> (Arc<Card>, Arc<Vsl>) {
    drop(card);
    let card = Card::open_emulated(nand.clone(), EmuOptions::default()).unwrap();
    let vsl = Vsl::attach(card.clone(), &AttachOptions::default(), &mut |_, _| {}).unwrap();
    (card, vsl)
}

#[test]
fn sub_page_sectors_overwrite_and_read_back() {
    let (_nand, _card, vsl) = setup(3, 512);
    assert_eq!(vsl.sector_size(), 512);
    let mut ch = BlockingChannel::new(vsl.channel().unwrap()).unwrap();
    // Odd offsets and lengths so pages hold sectors of different writes.
    let mut expect = std::collections::HashMap::new();
    for i in 0..200u64 {
        let lba = (i * 37) % 3000;
        let n = 1 + (i % 11) as usize;
        let data = pattern(lba, i, n * 512);
        ch.write(lba, &data).unwrap();
        for s in 0..n {
            expect.insert(lba + s as u64, data[s * 512..(s + 1) * 512].to_vec());
        }
    }
    for (lba, want) in &expect {
        assert_eq!(&ch.read(*lba, 1).unwrap(), want, "lba {lba}");
    }
}

#[test]
fn sustained_overwrite_grooms_and_keeps_every_byte() {
    let (_nand, _card, vsl) = setup(4, 4096);
    let sectors = vsl.num_sectors();
    let mut ch = BlockingChannel::new(vsl.channel().unwrap()).unwrap();
    let mut gen = vec![0u64; sectors as usize];
    let mut x = 12345u64;
    // Write three times the capacity in 16 KiB chunks at random places.
    let chunks = sectors * 3 / 4;
    for i in 0..chunks {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let lba = (x % (sectors - 4)) & !3;
        let mut data = Vec::with_capacity(4 * 4096);
        for s in 0..4 {
            gen[(lba + s) as usize] = i + 1;
            data.extend(pattern(lba + s, i + 1, 4096));
        }
        ch.write(lba, &data).unwrap();
    }
    let st = vsl.status();
    assert!(st.counters.erases > 50, "the groomer reclaimed blocks: {:?}", st.counters);
    assert!(st.write_amplification > 1.0);
    for lba in 0..sectors {
        let want = if gen[lba as usize] == 0 { vec![0u8; 4096] } else { pattern(lba, gen[lba as usize], 4096) };
        assert_eq!(ch.read(lba, 1).unwrap(), want, "lba {lba}");
    }
}

#[test]
fn trims_read_zero_and_persist_across_clean_and_dirty_restarts() {
    let (nand, card, vsl) = setup(5, 4096);
    {
        let mut ch = BlockingChannel::new(vsl.channel().unwrap()).unwrap();
        for lba in 0..64u64 {
            ch.write(lba, &pattern(lba, 1, 4096)).unwrap();
        }
        ch.unmap(10, 20).unwrap();
        ch.write(15, &pattern(15, 2, 4096)).unwrap();
        assert_eq!(ch.read(10, 1).unwrap(), vec![0u8; 4096]);
        assert_eq!(ch.read(15, 1).unwrap(), pattern(15, 2, 4096));
        ch.flush().unwrap();
    }
    vsl.detach().unwrap();
    drop(vsl);
    let (card, vsl) = reopen(&nand, card);
    assert_eq!(vsl.attach_report().kind, AttachKind::Clean);
    let check = |vsl: &Arc<Vsl>| {
        let mut ch = BlockingChannel::new(vsl.channel().unwrap()).unwrap();
        for lba in 0..64u64 {
            let want = if lba == 15 {
                pattern(15, 2, 4096)
            } else if (10..30).contains(&lba) {
                vec![0u8; 4096]
            } else {
                pattern(lba, 1, 4096)
            };
            assert_eq!(ch.read(lba, 1).unwrap(), want, "lba {lba}");
        }
    };
    check(&vsl);
    // Crash (no detach): the next attach scans and must agree.
    drop(vsl);
    let (_card, vsl) = reopen(&nand, card);
    assert_eq!(vsl.attach_report().kind, AttachKind::Scan);
    check(&vsl);
}

#[test]
fn atomic_writes_land_whole() {
    let (nand, card, vsl) = setup(6, 4096);
    {
        let mut ch = BlockingChannel::new(vsl.channel().unwrap()).unwrap();
        ch.write(0, &pattern(0, 1, 4096 * 3)).unwrap();
        let a = pattern(100, 7, 4096 * 2);
        let b = pattern(500, 7, 4096 * 3);
        ch.atomic_write(&[(100, &a), (500, &b)]).unwrap();
        assert_eq!(ch.read(100, 2).unwrap(), a);
        assert_eq!(ch.read(500, 3).unwrap(), b);
        let too_big = vec![0u8; 4096 * 33];
        assert!(ch.atomic_write(&[(0, &too_big)]).is_err());
        let overlap = vec![0u8; 4096 * 2];
        assert!(ch.atomic_write(&[(0, &overlap), (1, &overlap)]).is_err());
    }
    drop(vsl);
    let (_card, vsl) = reopen(&nand, card);
    let mut ch = BlockingChannel::new(vsl.channel().unwrap()).unwrap();
    assert_eq!(ch.read(100, 2).unwrap(), pattern(100, 7, 4096 * 2));
    assert_eq!(ch.read(500, 3).unwrap(), pattern(500, 7, 4096 * 3));
    assert_eq!(ch.read(0, 3).unwrap(), pattern(0, 1, 4096 * 3));
}

#[test]
fn bad_input_is_refused_and_changes_nothing() {
    use iomemory::vsl::SubmitError;
    let (_nand, _card, vsl) = setup(7, 512);
    let mut ch = BlockingChannel::new(vsl.channel().unwrap()).unwrap();
    let n = vsl.num_sectors();
    let e = ch.write(n, &[0u8; 512]).unwrap_err();
    assert!(matches!(e, iomemory::vsl::BlockingError::Submit(SubmitError::OutOfRange { .. })), "{e}");
    let e = ch.write(0, &[0u8; 100]).unwrap_err();
    assert!(matches!(e, iomemory::vsl::BlockingError::Submit(SubmitError::Misaligned { .. })), "{e}");
    assert!(ch.unmap(n - 1, 2).is_err());
    assert!(ch.read(n - 1, 2).is_err());
    assert_eq!(vsl.status().counters.user_pages, 0);
}
