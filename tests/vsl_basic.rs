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
