//! How long attach takes on a card full of data: an emulated ioDrive2
//! (memory-backed, default 4 GiB) is formatted and filled end to end, then
//! timed through a clean attach (after a detach: the checkpoint is loaded)
//! and a dirty attach (after a power cut: every page's OOB is scanned). Both
//! attaches are checked to rebuild the same map by reading samples back.
//!
//! `cargo run --release --example attach_times [-- SIZE]`, SIZE like 4GiB
//! or 256MiB.

use std::error::Error;
use std::sync::Arc;
use std::time::Instant;

use iomemory::blk::{BlockDevice, OpenOptions};
use iomemory::card::Card;
use iomemory::emu::{iodrive2_config, Backing, EmuOptions, NandArray};
use iomemory::units::parse_size;
use iomemory::vsl::AttachKind;

/// Bytes per fill write, and writes in flight.
const IO_BYTES: usize = 256 * 1024;
const DEPTH: usize = 8;

fn main() -> Result<(), Box<dyn Error>> {
    let size = parse_size(&std::env::args().nth(1).unwrap_or_else(|| "4GiB".into()))?;
    let mut config = iodrive2_config(size, 11);
    config.factory_bad_fraction = 0.0;
    let nand = NandArray::create(&config, Backing::Memory)?;
    let opts = OpenOptions { format_if_blank: true, ..Default::default() };

    let dev = attach(&nand, &opts)?;
    let t = Instant::now();
    let blocks = fill(&dev)?;
    let fill_secs = t.elapsed().as_secs_f64();
    println!(
        "filled {} GB in {:.2} s ({:.0} MB/s), {} blocks of {} B",
        iomemory::units::gbytes(blocks * dev.block_size() as u64),
        fill_secs,
        (blocks * dev.block_size() as u64) as f64 / fill_secs / 1e6,
        blocks,
        dev.block_size()
    );
    let samples = sample(&dev, blocks)?;
    let t = Instant::now();
    dev.detach()?;
    println!("clean detach (checkpoint written): {:.1} ms", t.elapsed().as_secs_f64() * 1e3);
    drop(dev);

    let t = Instant::now();
    let dev = attach(&nand, &opts)?;
    let wall = t.elapsed().as_secs_f64() * 1e3;
    let report = dev.vsl().attach_report();
    if report.kind != AttachKind::Clean {
        return Err(format!("expected a clean attach after detach, got {:?}", report.kind).into());
    }
    println!("clean attach (checkpoint load): {wall:.1} ms wall, {} ms in attach, {} pages read", report.millis, report.pages_read);
    check(&dev, &samples)?;

    // Power cut with the device attached: the next attach must scan.
    if let Some(emu) = dev.card().emulator() {
        emu.power_cut_now();
    }
    drop(dev);
    nand.power_on();
    let t = Instant::now();
    let dev = attach(&nand, &opts)?;
    let wall = t.elapsed().as_secs_f64() * 1e3;
    let report = dev.vsl().attach_report();
    if report.kind != AttachKind::Scan {
        return Err(format!("expected a scan after a power cut, got {:?}", report.kind).into());
    }
    println!(
        "dirty attach (full scan after power cut): {wall:.1} ms wall, {} ms in attach, {} pages read, {} discarded",
        report.millis, report.pages_read, report.pages_discarded
    );
    check(&dev, &samples)?;
    dev.detach()?;
    Ok(())
}

fn attach(nand: &Arc<NandArray>, opts: &OpenOptions) -> Result<Arc<BlockDevice>, Box<dyn Error>> {
    let card = Card::open_emulated(nand.clone(), EmuOptions::default())?;
    Ok(BlockDevice::attach(card, opts, &mut |_, _| {})?)
}

/// The byte every block of `lba` holds.
fn pattern(lba: u64) -> u8 {
    (lba.wrapping_mul(0x9e37_79b9) >> 7) as u8 | 1
}

/// Writes every block once, `DEPTH` writes of `IO_BYTES` in flight.
fn fill(dev: &BlockDevice) -> Result<u64, Box<dyn Error>> {
    let block = dev.block_size() as usize;
    let per_io = (IO_BYTES / block) as u64;
    let total = dev.num_blocks() / per_io * per_io;
    let mut ch = dev.channel()?;
    let mut buf = dev.alloc_buffer(DEPTH * IO_BYTES)?;
    let mut free: Vec<usize> = (0..DEPTH).collect();
    let (mut next, mut done) = (0u64, 0u64);
    while done < total {
        while let (Some(&slot), true) = (free.last(), next < total) {
            let mut data = vec![0u8; IO_BYTES];
            for (i, chunk) in data.chunks_mut(block).enumerate() {
                chunk.fill(pattern(next + i as u64));
            }
            buf.fill(slot * IO_BYTES, &data)?;
            // SAFETY: slot `slot` is idle until its completion arrives.
            let iov = [unsafe { buf.iovec_at(slot * IO_BYTES, IO_BYTES).ok_or("slot outside buffer")? }];
            match ch.write(next, &iov, slot as u64) {
                Ok(()) => {
                    free.pop();
                    next += per_io;
                }
                Err(e) if e.is_retryable() => break,
                Err(e) => return Err(e.into()),
            }
        }
        let mut failure = None;
        ch.poll(&mut |ctx, result| {
            free.push(ctx as usize);
            done += per_io;
            if let Err(e) = result {
                failure = Some(e.to_string());
            }
        });
        if let Some(f) = failure {
            return Err(f.into());
        }
    }
    Ok(total)
}

/// LBAs spread over the card, to read back after each attach.
fn sample(_dev: &BlockDevice, blocks: u64) -> Result<Vec<u64>, Box<dyn Error>> {
    Ok((0..64u64).map(|i| i * (blocks / 64) + i % 7).filter(|&l| l < blocks).collect())
}

/// Reads the sampled blocks back and checks their pattern.
fn check(dev: &BlockDevice, lbas: &[u64]) -> Result<(), Box<dyn Error>> {
    let block = dev.block_size() as usize;
    let mut ch = dev.channel()?;
    let buf = dev.alloc_buffer(block)?;
    for &lba in lbas {
        // SAFETY: the buffer is idle: one read at a time, reaped below.
        let iov = [unsafe { buf.iovec_at(0, block).ok_or("buffer too small")? }];
        ch.read(lba, &iov, 0)?;
        let mut result = None;
        while result.is_none() {
            ch.poll(&mut |_, r| result = Some(r.map_err(|e| e.to_string())));
        }
        result.unwrap_or(Ok(()))?;
        let mut got = vec![0u8; block];
        buf.copy_out(0, &mut got)?;
        if got.iter().any(|&b| b != pattern(lba)) {
            return Err(format!("LBA {lba} read back wrong data after attach").into());
        }
    }
    Ok(())
}
