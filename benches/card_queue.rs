//! Submit + complete of one 4 KiB page read on the emulated card (no NAND
//! timings) through a real queue pair, beside a bare 4 KiB memcpy as the
//! baseline in the same group: the ratio is the protocol's per-command cost.
//!
//! `cargo bench --bench card_queue`

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use iomemory::card::{Card, Ppa};
use iomemory::dma::DmaRegion;
use iomemory::emu::{small_test_config, Backing, EmuOptions, NandArray};

fn read_4k(c: &mut Criterion) {
    let nand = NandArray::create(&small_test_config(1), Backing::Memory).expect("memory card");
    let card = Card::open_emulated(nand, EmuOptions::default()).expect("card");
    let mut queue = card.create_io_queue(64).expect("queue");
    let buf = DmaRegion::allocate_small(card.dma(), 8192).expect("dma");
    let ppa = Ppa::new(0, 1, 0);
    // Program the page once so reads move real data.
    queue.program(&[ppa], &[buf.iova()], None, 0).expect("program");
    queue.ring();
    while queue.poll(1, |c| assert!(c.status.is_ok())) == 0 {}

    let mut group = c.benchmark_group("read_4k");
    group.throughput(Throughput::Bytes(4096));
    group.bench_function("card_queue_submit_complete", |b| {
        b.iter(|| {
            queue
                .read(&[ppa], &[buf.iova() + 4096], None, 7)
                .expect("submit");
            queue.ring();
            let mut done = 0;
            while done == 0 {
                done = queue.poll(1, |c| {
                    black_box(c);
                });
            }
        })
    });
    let src = vec![0x5au8; 4096];
    let mut dst = vec![0u8; 4096];
    group.bench_function("memcpy_baseline", |b| {
        b.iter(|| {
            dst.copy_from_slice(black_box(&src));
            black_box(&mut dst);
        })
    });
    group.finish();
}

criterion_group!(benches, read_4k);
criterion_main!(benches);
