//! Micro-benchmarks of the data path, each beside a baseline in the same
//! group so the ratio is what matters on a noisy machine:
//! - forward map lookup and compare-and-swap update vs a plain `Vec<u32>`;
//! - one 4 KiB read and one 4 KiB write through the whole stack (VSL
//!   channel, card queue, emulated controller, NAND; QD1 submit + poll)
//!   vs a bare 4 KiB memcpy.
//!
//! `cargo bench --bench stack`

use std::hint::black_box;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use iomemory::blk::{BlockDevice, IoBuffer, IoChannel, OpenOptions};
use iomemory::card::Card;
use iomemory::emu::{iodrive2_config, Backing, EmuOptions, NandArray};
use iomemory::vsl::ForwardMap;

const SECTORS: u64 = 1 << 20;

fn forward_map(c: &mut Criterion) {
    let map = ForwardMap::new(SECTORS);
    let plain: Vec<u32> = (0..SECTORS as u32).collect();
    for lba in 0..SECTORS {
        map.store(lba, lba as u32);
    }
    let mut group = c.benchmark_group("forward_map");
    let mut x = 1u64;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x % SECTORS
    };
    group.bench_function("lookup", |b| b.iter(|| black_box(map.get(black_box(next())))));
    let mut y = 7u64;
    group.bench_function("lookup_baseline_vec", |b| {
        b.iter(|| {
            y = y.wrapping_mul(6364136223846793005).wrapping_add(1);
            black_box(plain[((y >> 33) % SECTORS) as usize])
        })
    });
    let mut z = 3u64;
    group.bench_function("update_cas", |b| {
        b.iter(|| {
            z = z.wrapping_mul(6364136223846793005).wrapping_add(1);
            let lba = (z >> 33) % SECTORS;
            let old = map.get(lba);
            black_box(map.compare_and_set(lba, old, old ^ 1))
        })
    });
    let mut plain_mut = plain.clone();
    let mut w = 5u64;
    group.bench_function("update_baseline_vec", |b| {
        b.iter(|| {
            w = w.wrapping_mul(6364136223846793005).wrapping_add(1);
            let i = ((w >> 33) % SECTORS) as usize;
            plain_mut[i] ^= 1;
            black_box(plain_mut[i])
        })
    });
    group.finish();
}

fn device() -> Arc<BlockDevice> {
    let mut config = iodrive2_config(256 << 20, 1);
    config.factory_bad_fraction = 0.0;
    let nand = NandArray::create(&config, Backing::Memory).expect("memory card");
    let card = Card::open_emulated(nand, EmuOptions::default()).expect("card");
    let opts = OpenOptions { format_if_blank: true, ..Default::default() };
    BlockDevice::attach(card, &opts, &mut |_, _| {}).expect("attach")
}

fn wait(ch: &mut IoChannel) {
    let mut done = false;
    while !done {
        ch.poll(&mut |_, r| {
            r.expect("I/O failed");
            done = true;
        });
    }
}

fn full_stack(c: &mut Criterion) {
    let dev = device();
    let mut ch = dev.channel().expect("channel");
    let mut buf: IoBuffer = dev.alloc_buffer(4096).expect("buffer");
    buf.fill(0, &[0xa5; 4096]).expect("fill");
    let blocks = dev.num_blocks();
    // Write the first 16 Ki blocks once so reads find data.
    // SAFETY: `buf` outlives every request below and is not touched by the
    // host while one is in flight (each is waited for).
    let iov = [unsafe { buf.iovec() }];
    for lba in 0..16_384.min(blocks) {
        ch.write(lba, &iov, 0).expect("prefill");
        wait(&mut ch);
    }
    let mut group = c.benchmark_group("full_stack_4k");
    group.throughput(Throughput::Bytes(4096));
    let mut lba = 0u64;
    group.bench_function("read_qd1", |b| {
        b.iter(|| {
            lba = (lba + 7919) % 16_384;
            ch.read(lba, &iov, 1).expect("read");
            wait(&mut ch);
        })
    });
    group.bench_function("write_qd1", |b| {
        b.iter(|| {
            lba = (lba + 7919) % 16_384;
            ch.write(lba, &iov, 2).expect("write");
            wait(&mut ch);
        })
    });
    let src = vec![0x5au8; 4096];
    group.bench_function("memcpy_baseline", |b| {
        b.iter_batched_ref(|| vec![0u8; 4096], |dst| dst.copy_from_slice(black_box(&src)), BatchSize::SmallInput)
    });
    group.finish();
}

criterion_group!(benches, forward_map, full_stack);
criterion_main!(benches);
