//! A poll loop on several threads: each reactor thread owns its own I/O
//! channel (its own queue pair and append points) and keeps 16 writes in
//! flight over its own range of blocks, then reads them back and checks
//! them. No locks are shared between the threads' data paths.
//!
//! `cargo run --release --example poll_threads`

use std::error::Error;
use std::sync::Arc;

use iomemory::blk::{pin_to_core, BlockDevice, OpenOptions};
use iomemory::card::Card;
use iomemory::emu::{small_test_config, Backing, EmuOptions, NandArray};

const DEPTH: usize = 16;
const BLOCKS_PER_THREAD: u64 = 512;

fn main() -> Result<(), Box<dyn Error>> {
    let nand = NandArray::create(&small_test_config(7), Backing::Memory)?;
    let card = Card::open_emulated(nand, EmuOptions::default())?;
    let opts = OpenOptions { format_if_blank: true, ..Default::default() };
    let dev = BlockDevice::attach(card, &opts, &mut |_, _| {})?;
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let dev = Arc::clone(&dev);
            std::thread::spawn(move || -> Result<u64, String> {
                pin_to_core(t);
                run_thread(&dev, t as u64).map_err(|e| e.to_string())
            })
        })
        .collect();
    let mut total = 0;
    for h in handles {
        total += h.join().map_err(|_| "thread panicked")??;
    }
    println!("{threads} threads wrote and verified {total} blocks");
    Ok(())
}

fn run_thread(dev: &Arc<BlockDevice>, t: u64) -> Result<u64, Box<dyn Error>> {
    let block = dev.block_size() as usize;
    let mut ch = dev.channel()?;
    let mut buf = dev.alloc_buffer(DEPTH * block)?;
    let first = t * BLOCKS_PER_THREAD;
    for phase in ["write", "read"] {
        let mut next = 0u64;
        let mut free: Vec<usize> = (0..DEPTH).collect();
        let mut lba_of = [0u64; DEPTH];
        let mut done = 0u64;
        while done < BLOCKS_PER_THREAD {
            // Submit while there are free slots and blocks left.
            while let (Some(&slot), true) = (free.last(), next < BLOCKS_PER_THREAD) {
                let lba = first + next;
                if phase == "write" {
                    buf.fill(slot * block, &vec![(lba % 251) as u8; block])?;
                }
                // SAFETY: slot `slot` is idle until its completion arrives.
                let iov = [unsafe { buf.iovec_at(slot * block, block).ok_or("slot outside buffer")? }];
                let submitted = if phase == "write" { ch.write(lba, &iov, slot as u64) } else { ch.read(lba, &iov, slot as u64) };
                match submitted {
                    Ok(()) => {
                        free.pop();
                        lba_of[slot] = lba;
                        next += 1;
                    }
                    Err(e) if e.is_retryable() => break,
                    Err(e) => return Err(e.into()),
                }
            }
            // Reap completions; in the read phase check each block.
            let mut failure = None;
            ch.poll(&mut |ctx, result| {
                let slot = ctx as usize;
                free.push(slot);
                done += 1;
                if let Err(e) = result {
                    failure = Some(e.to_string());
                } else if phase == "read" {
                    let mut got = vec![0u8; block];
                    if buf.copy_out(slot * block, &mut got).is_err() || got.iter().any(|&b| b != (lba_of[slot] % 251) as u8) {
                        failure = Some(format!("LBA {} read back wrong data", lba_of[slot]));
                    }
                }
            });
            if let Some(f) = failure {
                return Err(f.into());
            }
        }
    }
    Ok(BLOCKS_PER_THREAD)
}
