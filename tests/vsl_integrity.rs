//! Silent corruption on NAND (a flipped data bit that ECC did not catch)
//! is caught by the per-sector data CRCs on every read path of a 512-byte
//! format: the zero-copy column read of the sector alone, a whole-page
//! read, and a staged (unaligned) read; the other sectors of the same page
//! still read back intact.

mod common;

use std::sync::Arc;

use iomemory::blk::{BlockDevice, IoBuffer};
use iomemory::card::Ppa;
use iomemory::emu::{small_test_config, Backing, NandArray};
use iomemory::vsl::{IoError, OobRecord, PageKind, VslChannel};

const SS: usize = 512;

fn pattern(lba: u64) -> Vec<u8> {
    (0..SS).map(|i| (lba as usize * 131 + i * 7 + (i >> 5)) as u8).collect()
}

fn device(nand: &Arc<NandArray>) -> Arc<BlockDevice> {
    common::block_device(nand, SS as u32)
}

/// Reads `count` sectors from `lba` into `buf` at `offset`; returns the
/// result and the bytes.
fn read(ch: &mut VslChannel, buf: &mut IoBuffer, offset: usize, lba: u64, count: usize) -> (Result<(), IoError>, Vec<u8>) {
    // SAFETY: `buf` outlives the request and is not touched until it completed.
    let iov = [unsafe { buf.iovec_at(offset, count * SS) }.unwrap()];
    ch.read(lba, &iov, 7).unwrap();
    let mut out = None;
    while out.is_none() {
        ch.poll(&mut |_, r| out = Some(r));
    }
    let mut back = vec![0u8; count * SS];
    buf.copy_out(offset, &mut back).unwrap();
    (out.unwrap(), back)
}

/// The page and slot that hold `lba`, found by reading every programmed
/// page's OOB record straight from the NAND.
fn locate(nand: &NandArray, lba: u64) -> (Ppa, usize) {
    let g = *nand.geometry();
    let mut oob = vec![0u8; g.oob_size as usize];
    for die in 0..g.dies() {
        for block in 0..g.blocks_per_die {
            let wp = nand.block_info(die, block).map(|b| b.write_pointer).unwrap_or(0);
            for page in 0..wp {
                let ppa = Ppa::new(die, block, page);
                // SAFETY: `oob` holds oob_size writable bytes; no data is read.
                unsafe { nand.read_page(ppa, std::ptr::null_mut(), oob.as_mut_ptr()) };
                let Some(d) = OobRecord::decode(&oob) else { continue };
                if d.record.kind != PageKind::Data {
                    continue;
                }
                if let Some(k) = d.record.lbas[..d.record.count as usize].iter().position(|&l| l as u64 == lba) {
                    return (ppa, k);
                }
            }
        }
    }
    panic!("lba {lba} is on no page");
}

#[test]
fn a_flipped_bit_fails_only_its_sector_on_every_read_path() {
    let nand = NandArray::create(&small_test_config(41), Backing::Memory).unwrap();
    let dev = device(&nand);
    let mut ch = dev.channel().unwrap();
    let mut buf = dev.alloc_buffer(4 * 4096).unwrap();
    // 16 sectors in one request: two full pages of 8.
    let data: Vec<u8> = (0..16).flat_map(pattern).collect();
    buf.fill(0, &data).unwrap();
    // SAFETY: as in `read`.
    let iov = [unsafe { buf.iovec_at(0, data.len()) }.unwrap()];
    ch.write(0, &iov, 1).unwrap();
    let mut done = None;
    while done.is_none() {
        ch.poll(&mut |_, r| done = Some(r));
    }
    done.unwrap().unwrap();

    let victim = 5u64;
    let (ppa, slot) = locate(&nand, victim);
    nand.corrupt_data(ppa, slot * SS + 100, 0x08).unwrap();
    let before = dev.status().counters.checksum_errors;

    // The sector alone (zero-copy column read): refused as corrupt.
    let (r, _) = read(&mut ch, &mut buf, 0, victim, 1);
    assert!(matches!(r, Err(IoError::Corrupt { lba }) if lba == victim), "{r:?}");
    // Unaligned destination (staged whole-page read, copy out): refused.
    let (r, _) = read(&mut ch, &mut buf, 4096 + 4, victim, 1);
    assert!(matches!(r, Err(IoError::Corrupt { lba }) if lba == victim), "{r:?}");
    // The whole page the sector sits in (zero-copy full page): refused.
    let first = victim - slot as u64;
    let (r, _) = read(&mut ch, &mut buf, 0, first, 8);
    assert!(matches!(r, Err(IoError::Corrupt { .. })), "{r:?}");
    assert!(dev.status().counters.checksum_errors >= before + 3);

    // Every other sector of both pages reads back intact, alone, in runs
    // around the victim, aligned and not.
    for lba in (0..16u64).filter(|&l| l != victim) {
        for offset in [0, 4096 + 4] {
            let (r, back) = read(&mut ch, &mut buf, offset, lba, 1);
            r.unwrap();
            assert_eq!(back, pattern(lba), "lba {lba} at buffer offset {offset}");
        }
    }
    let (r, back) = read(&mut ch, &mut buf, 0, victim + 1, 3.min(15 - victim as usize));
    r.unwrap();
    assert_eq!(back, (victim + 1..victim + 4).flat_map(pattern).collect::<Vec<u8>>());
    let (r, back) = read(&mut ch, &mut buf, SS, first, slot);
    r.unwrap();
    assert_eq!(back, (first..victim).flat_map(pattern).collect::<Vec<u8>>());

    // Out-of-page corruption requests are refused.
    assert!(nand.corrupt_data(ppa, 4096, 1).is_err());
}
