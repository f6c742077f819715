//! The smallest complete program: make an emulated card in memory, format
//! and attach it, write a pattern through an I/O channel, read it back and
//! check every byte.
//!
//! `cargo run --release --example write_read`

use std::error::Error;

use iomemory::blk::{BlockDevice, OpenOptions};
use iomemory::card::Card;
use iomemory::emu::{small_test_config, Backing, EmuOptions, NandArray};

fn main() -> Result<(), Box<dyn Error>> {
    // 1. An emulated ioDrive2 in memory (use Backing::File for one that persists).
    let nand = NandArray::create(&small_test_config(42), Backing::Memory)?;
    let card = Card::open_emulated(nand, EmuOptions::default())?;
    // 2. Format it (4 KiB sectors) and attach the VSL.
    let opts = OpenOptions { format_if_blank: true, ..Default::default() };
    let dev = BlockDevice::attach(card, &opts, &mut |_, _| {})?;
    println!("{} blocks of {} bytes", dev.num_blocks(), dev.block_size());

    // 3. One channel for this thread, one DMA buffer of 8 blocks.
    let mut ch = dev.channel()?;
    let len = 8 * dev.block_size() as usize;
    let mut buf = dev.alloc_buffer(len)?;
    let pattern: Vec<u8> = (0..len).map(|i| (i * 7 + 3) as u8).collect();
    buf.fill(0, &pattern)?;

    // 4. Write at LBA 100, then poll until it completes.
    // SAFETY: `buf` outlives the request and is not touched until it completes.
    let iov = [unsafe { buf.iovec() }];
    ch.write(100, &iov, 1)?;
    wait(&mut ch, 1)?;

    // 5. Read it back into a cleared buffer and compare every byte.
    buf.fill(0, &vec![0; len])?;
    ch.read(100, &iov, 2)?;
    wait(&mut ch, 2)?;
    let mut back = vec![0u8; len];
    buf.copy_out(0, &mut back)?;
    assert_eq!(back, pattern, "read-back differs");
    println!("wrote and read back {len} bytes at LBA 100: every byte matches");
    Ok(())
}

/// Polls the channel until the request tagged `ctx` completes.
fn wait(ch: &mut iomemory::blk::IoChannel, ctx: u64) -> Result<(), Box<dyn Error>> {
    let mut outcome = None;
    while outcome.is_none() {
        ch.poll(&mut |done, result| {
            if done == ctx {
                outcome = Some(result);
            }
        });
    }
    Ok(outcome.expect("loop exits only with an outcome")?)
}
