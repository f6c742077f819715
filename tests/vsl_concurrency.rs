//! Several channels on several threads against one VSL, file-backed cards
//! that survive reopening, and clean versus dirty attach giving the same
//! data.

use std::sync::Arc;

use iomemory::card::Card;
use iomemory::emu::{small_test_config, Backing, EmuOptions, NandArray};
use iomemory::vsl::pattern::{check_sector, fill, SectorContent};
use iomemory::vsl::torture::Rng;
use iomemory::vsl::{AttachKind, AttachOptions, BlockingChannel, FormatOptions, Vsl, VslChannel};

fn assert_send_sync<T: Send + Sync>() {}
fn assert_send<T: Send>() {}

#[test]
fn vsl_is_shareable_and_channels_are_sendable() {
    assert_send_sync::<Vsl>();
    assert_send::<VslChannel>();
}

fn attach(card: &Arc<Card>, opts: &AttachOptions) -> Arc<Vsl> {
    Vsl::attach(card.clone(), opts, &mut |_, _| {}).unwrap()
}

#[test]
fn writers_and_a_reader_on_separate_threads_keep_every_byte() {
    let nand = NandArray::create(&small_test_config(41), Backing::Memory).unwrap();
    let card = Card::open_emulated(nand, EmuOptions::default()).unwrap();
    Vsl::format(card.clone(), &FormatOptions::default(), &mut |_, _| {}).unwrap();
    let vsl = attach(&card, &AttachOptions::default());
    let sectors = vsl.num_sectors();
    let half = sectors / 2;
    let writers: Vec<_> = (0..2u64)
        .map(|t| {
            let vsl = vsl.clone();
            std::thread::spawn(move || {
                let mut ch = BlockingChannel::new(vsl.channel().unwrap()).unwrap();
                let mut rng = Rng::new(t + 1);
                let base = t * half;
                let mut gen = vec![0u64; half as usize];
                let mut buf = vec![0u8; 4096 * 4];
                for i in 1..=(half * 3 / 2) {
                    let n = rng.range(1, 4);
                    let off = rng.range(0, half - n);
                    fill(&mut buf[..n as usize * 4096], 4096, base + off, i, 77);
                    ch.write(base + off, &buf[..n as usize * 4096]).unwrap();
                    for s in off..off + n {
                        gen[s as usize] = i;
                    }
                }
                (base, gen)
            })
        })
        .collect();
    let reader = {
        let vsl = vsl.clone();
        std::thread::spawn(move || {
            let mut ch = BlockingChannel::new(vsl.channel().unwrap()).unwrap();
            let mut rng = Rng::new(99);
            let mut checked = 0;
            for _ in 0..3000 {
                let lba = rng.range(0, sectors - 8);
                let data = ch.read(lba, 8).unwrap();
                for k in 0..8u64 {
                    let s = check_sector(&data[k as usize * 4096..(k as usize + 1) * 4096], lba + k, 77);
                    assert!(matches!(s, SectorContent::Zero | SectorContent::Data { .. }), "lba {}: {s:?}", lba + k);
                    checked += 1;
                }
            }
            checked
        })
    };
    let results: Vec<_> = writers.into_iter().map(|h| h.join().unwrap()).collect();
    assert!(reader.join().unwrap() > 0);
    assert!(vsl.status().counters.erases > 0, "the groomer ran under concurrent load");
    let mut ch = BlockingChannel::new(vsl.channel().unwrap()).unwrap();
    for (base, gen) in results {
        for (i, &g) in gen.iter().enumerate() {
            let lba = base + i as u64;
            let want = if g == 0 { SectorContent::Zero } else { SectorContent::Data { generation: g } };
            assert_eq!(check_sector(&ch.read(lba, 1).unwrap(), lba, 77), want, "lba {lba}");
        }
    }
}

#[test]
fn file_backed_card_keeps_data_across_reopen_and_clean_equals_dirty() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("card.img");
    let mut expected = Vec::new();
    {
        let nand = NandArray::create(&small_test_config(42), Backing::File(path.clone())).unwrap();
        let card = Card::open_emulated(nand, EmuOptions::default()).unwrap();
        let fo = FormatOptions {
            sector_size: 512,
            ..FormatOptions::default()
        };
        Vsl::format(card.clone(), &fo, &mut |_, _| {}).unwrap();
        let vsl = attach(&card, &AttachOptions::default());
        let mut ch = BlockingChannel::new(vsl.channel().unwrap()).unwrap();
        let mut rng = Rng::new(5);
        let sectors = vsl.num_sectors();
        let mut buf = vec![0u8; 512 * 16];
        for i in 1..4000u64 {
            let n = rng.range(1, 16);
            let lba = rng.range(0, sectors - n);
            fill(&mut buf[..n as usize * 512], 512, lba, i, 3);
            ch.write(lba, &buf[..n as usize * 512]).unwrap();
            if i % 97 == 0 {
                ch.unmap(rng.range(0, sectors - 100), 100).unwrap();
            }
        }
        for lba in 0..sectors {
            expected.push(ch.read(lba, 1).unwrap());
        }
        drop(ch);
        vsl.detach().unwrap();
    }
    let nand = NandArray::open(&path).unwrap();
    let card = Card::open_emulated(nand.clone(), EmuOptions::default()).unwrap();
    let clean = attach(&card, &AttachOptions::default());
    assert_eq!(clean.attach_report().kind, AttachKind::Clean);
    let read_all = |vsl: &Arc<Vsl>| {
        let mut ch = BlockingChannel::new(vsl.channel().unwrap()).unwrap();
        (0..vsl.num_sectors()).map(|l| ch.read(l, 1).unwrap()).collect::<Vec<_>>()
    };
    assert!(read_all(&clean) == expected, "clean attach returns what was written");
    drop(clean);
    drop(card);
    let card = Card::open_emulated(nand, EmuOptions::default()).unwrap();
    let scanned = attach(
        &card,
        &AttachOptions {
            force_scan: true,
            ..AttachOptions::default()
        },
    );
    assert_eq!(scanned.attach_report().kind, AttachKind::Scan);
    assert!(scanned.attach_report().pages_read > 0);
    assert!(read_all(&scanned) == expected, "a scan rebuilds the same map as the checkpoint");
}
