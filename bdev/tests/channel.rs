//! Bdev channels on real emulated cards: zero-copy and bounced data paths,
//! every served request type, NOMEM on a full queue, resets as barriers,
//! delete with I/O in flight, hot remove on a power cut, two threads.

mod common;

use std::collections::HashMap;

use common::*;
use iomemory_bdev::io::spdk_io_type;
use iomemory_bdev::{
    BdevDevice, ChannelError, CreateParams, Detached, IoStatus, LifecycleError, RemoveReason,
    State, Submitted,
};

const BS: usize = 4096;

#[test]
fn registered_memory_goes_zero_copy_and_round_trips() {
    let dev = memory_device(1, 4096);
    let mut src = HostBuf::new(8 * BS);
    let dst = HostBuf::new(8 * BS);
    // SAFETY: both buffers outlive the device's use of them.
    unsafe {
        assert!(dev.dma().register(src.ptr(), src.len()));
        assert!(dev.dma().register(dst.ptr(), dst.len()));
    }
    let data = pattern(10, 0, 8 * BS);
    src.fill(&data);
    let mut ch = dev.open_channel().unwrap();
    assert_eq!(
        write(
            &mut ch,
            10,
            8,
            &[src.iov(0, 3 * BS), src.iov(3 * BS, 5 * BS)]
        ),
        IoStatus::Success
    );
    assert_eq!(
        read(&mut ch, 10, 8, &[dst.iov(0, 8 * BS)]),
        IoStatus::Success
    );
    assert_eq!(dst.bytes(8 * BS), data);
    let c = dev.counters().total();
    assert_eq!(
        (c.writes, c.reads, c.bytes_written, c.bytes_read),
        (1, 1, 8 * BS as u64, 8 * BS as u64)
    );
    assert_eq!(c.bounced, 0, "registered memory must not be bounced");
    assert_eq!(ch.outstanding(), 0);
}

#[test]
fn unregistered_and_sub_sector_buffers_are_bounced_and_round_trip() {
    let dev = memory_device(2, 4096);
    let mut src = HostBuf::new(4 * BS);
    let dst = HostBuf::new(4 * BS);
    let data = pattern(3, 1, 4 * BS);
    src.fill(&data);
    let mut ch = dev.open_channel().unwrap();
    // Memory the card cannot reach: bounced both ways.
    assert_eq!(
        write(&mut ch, 3, 4, &[src.iov(0, 4 * BS)]),
        IoStatus::Success
    );
    assert_eq!(
        read(&mut ch, 3, 4, &[dst.iov(0, 4 * BS)]),
        IoStatus::Success
    );
    assert_eq!(dst.bytes(4 * BS), data);
    assert_eq!(dev.counters().total().bounced, 2);
    // Registered, but split into pieces that are not whole sectors.
    // SAFETY: both buffers outlive the device's use of them.
    unsafe {
        dev.dma().register(src.ptr(), src.len());
        dev.dma().register(dst.ptr(), dst.len());
    }
    let data = pattern(20, 2, 2 * BS);
    src.fill(&data);
    let iovs = [src.iov(0, 1000), src.iov(1000, 3096), src.iov(4096, BS)];
    assert_eq!(write(&mut ch, 20, 2, &iovs), IoStatus::Success);
    let iovs = [dst.iov(0, 100), dst.iov(100, 2 * BS - 100)];
    assert_eq!(read(&mut ch, 20, 2, &iovs), IoStatus::Success);
    assert_eq!(dst.bytes(2 * BS), data);
    assert_eq!(dev.counters().total().bounced, 4);
}

#[test]
fn unmap_write_zeroes_flush_and_reset() {
    let dev = memory_device(3, 4096);
    let mut buf = HostBuf::new(8 * BS);
    // SAFETY: the buffer outlives the device's use of it.
    unsafe { dev.dma().register(buf.ptr(), buf.len()) };
    let mut ch = dev.open_channel().unwrap();
    buf.fill(&pattern(0, 3, 8 * BS));
    assert_eq!(
        write(&mut ch, 0, 8, &[buf.iov(0, 8 * BS)]),
        IoStatus::Success
    );
    assert_eq!(
        run(&mut ch, &desc(spdk_io_type::UNMAP, 0, 2, &[], 7)),
        IoStatus::Success
    );
    assert_eq!(
        run(&mut ch, &desc(spdk_io_type::WRITE_ZEROES, 6, 2, &[], 8)),
        IoStatus::Success
    );
    assert_eq!(
        run(&mut ch, &desc(spdk_io_type::FLUSH, 0, 8, &[], 9)),
        IoStatus::Success
    );
    assert_eq!(
        run(&mut ch, &desc(spdk_io_type::RESET, 0, 0, &[], 10)),
        IoStatus::Success
    );
    buf.fill(&[0xff; 8 * BS]);
    assert_eq!(
        read(&mut ch, 0, 8, &[buf.iov(0, 8 * BS)]),
        IoStatus::Success
    );
    let got = buf.bytes(8 * BS);
    let want = pattern(0, 3, 8 * BS);
    assert_eq!(
        &got[..2 * BS],
        &[0u8; 2 * BS][..],
        "unmapped blocks read as zeroes"
    );
    assert_eq!(&got[2 * BS..6 * BS], &want[2 * BS..6 * BS]);
    assert_eq!(
        &got[6 * BS..],
        &[0u8; 2 * BS][..],
        "zeroed blocks read as zeroes"
    );
    let c = dev.counters().total();
    assert_eq!(
        (c.unmaps, c.write_zeroes, c.flushes, c.resets),
        (1, 1, 1, 1)
    );
}

#[test]
fn bad_requests_fail_at_submit_and_change_nothing() {
    let dev = memory_device(4, 4096);
    let buf = HostBuf::new(2 * BS);
    let mut ch = dev.open_channel().unwrap();
    let n = dev.num_blocks();
    let cases = [
        desc(spdk_io_type::WRITE, n - 1, 2, &[buf.iov(0, 2 * BS)], 1),
        desc(spdk_io_type::WRITE, 0, 1, &[buf.iov(0, 2 * BS)], 2),
        desc(spdk_io_type::READ, 0, 1, &[], 3),
        desc(16, 0, 1, &[], 4),
        desc(spdk_io_type::UNMAP, n, 1, &[], 5),
    ];
    for d in &cases {
        assert_eq!(
            submit(&mut ch, d),
            Submitted::Done(IoStatus::Failed),
            "token {}",
            d.token
        );
    }
    assert_eq!(ch.outstanding(), 0);
    let mut polled = 0;
    ch.poll(&mut |_, _| polled += 1);
    assert_eq!(polled, 0);
    assert_eq!(dev.counters().total().failed, cases.len() as u64);
    assert_eq!(dev.counters().total().writes, 0);
}

#[test]
fn a_full_queue_answers_nomem_and_retries_succeed() {
    let dev = memory_device(5, 4096);
    const N: usize = 600;
    let mut src = HostBuf::new(N * BS);
    // SAFETY: the buffer outlives the device's use of it.
    unsafe { dev.dma().register(src.ptr(), src.len()) };
    let mut all = Vec::with_capacity(N * BS);
    for i in 0..N as u64 {
        all.extend(pattern(i, 4, BS));
    }
    src.fill(&all);
    let mut ch = dev.open_channel().unwrap();
    let iovs: Vec<[libc::iovec; 1]> = (0..N).map(|i| [src.iov(i * BS, BS)]).collect();
    let mut retry = Vec::new();
    for (i, iov) in iovs.iter().enumerate() {
        match submit(
            &mut ch,
            &desc(spdk_io_type::WRITE, i as u64, 1, iov, i as u64),
        ) {
            Submitted::Queued => {}
            Submitted::Done(IoStatus::NoMem) => retry.push(i),
            other => panic!("write {i}: {other:?}"),
        }
    }
    assert!(
        !retry.is_empty(),
        "{N} unpolled writes must fill the channel"
    );
    assert_eq!(ch.outstanding(), N - retry.len());
    let mut done: HashMap<u64, IoStatus> = HashMap::new();
    let mut pending = retry;
    let start = std::time::Instant::now();
    while done.len() < N {
        ch.poll(&mut |t, s| {
            assert!(done.insert(t, s).is_none(), "request {t} completed twice");
        });
        pending.retain(|&i| {
            match submit(
                &mut ch,
                &desc(spdk_io_type::WRITE, i as u64, 1, &iovs[i], i as u64),
            ) {
                Submitted::Queued => false,
                Submitted::Done(IoStatus::NoMem) => true,
                other => panic!("retry {i}: {other:?}"),
            }
        });
        assert!(start.elapsed().as_secs() < 20, "writes never drained");
    }
    assert!(done.values().all(|s| *s == IoStatus::Success));
    let dst = HostBuf::new(N * BS);
    // SAFETY: the buffer outlives the device's use of it.
    unsafe { dev.dma().register(dst.ptr(), dst.len()) };
    for chunk in 0..(N / 100) {
        let off = chunk * 100;
        assert_eq!(
            read(&mut ch, off as u64, 100, &[dst.iov(off * BS, 100 * BS)]),
            IoStatus::Success
        );
    }
    assert!(
        dst.bytes(N * BS) == all,
        "data written under NOMEM pressure reads back"
    );
    assert!(dev.counters().total().nomem > 0);
}

#[test]
fn a_reset_completes_after_the_requests_before_it() {
    let dev = memory_device(6, 4096);
    let buf = HostBuf::new(4 * BS);
    let mut ch = dev.open_channel().unwrap();
    let iovs: Vec<[libc::iovec; 1]> = (0..4).map(|i| [buf.iov(i * BS, BS)]).collect();
    for (i, iov) in iovs.iter().enumerate() {
        assert_eq!(
            submit(
                &mut ch,
                &desc(spdk_io_type::WRITE, i as u64, 1, iov, i as u64)
            ),
            Submitted::Queued
        );
    }
    assert_eq!(
        submit(&mut ch, &desc(spdk_io_type::RESET, 0, 0, &[], 99)),
        Submitted::Queued
    );
    assert_eq!(ch.outstanding(), 5);
    let mut order = Vec::new();
    while order.len() < 5 {
        ch.poll(&mut |t, s| {
            assert_eq!(s, IoStatus::Success);
            order.push(t);
        });
    }
    assert_eq!(
        *order.last().unwrap(),
        99,
        "reset completes last: {order:?}"
    );
}

#[test]
fn delete_with_io_in_flight_drains_detaches_clean_and_data_survives() {
    let dir = tempfile::tempdir().unwrap();
    let path = image(dir.path(), 7);
    let text = format!(
        r#"{{"name":"iom0","path":"{}","format_if_blank":true}}"#,
        path.display()
    );
    let dev = BdevDevice::open(CreateParams::from_json(&text).unwrap()).unwrap();
    let mut src = HostBuf::new(16 * BS);
    let mut all = Vec::new();
    for i in 0..16u64 {
        all.extend(pattern(i * 7, 5, BS));
    }
    src.fill(&all);
    let mut ch = dev.open_channel().unwrap();
    let iovs: Vec<[libc::iovec; 1]> = (0..16).map(|i| [src.iov(i * BS, BS)]).collect();
    for (i, iov) in iovs.iter().enumerate() {
        let r = submit(
            &mut ch,
            &desc(spdk_io_type::WRITE, i as u64 * 7, 1, iov, i as u64),
        );
        assert_eq!(r, Submitted::Queued);
    }
    // The delete RPC, then SPDK's destruct, while 16 writes are in flight.
    dev.lifecycle().begin_remove(RemoveReason::Delete).unwrap();
    assert_eq!(
        dev.lifecycle().begin_remove(RemoveReason::Delete),
        Err(LifecycleError::AlreadyRemoving(RemoveReason::Delete))
    );
    dev.lifecycle().begin_destruct().unwrap();
    assert!(matches!(
        dev.open_channel(),
        Err(ChannelError::Lifecycle(LifecycleError::Closed(
            State::Destructing
        )))
    ));
    assert!(dev.detach().is_err(), "detach must wait for the channel");
    let mut drained = Vec::new();
    assert_eq!(ch.close(&mut |t, s| drained.push((t, s))), 16);
    drained.sort_by_key(|(t, _)| *t);
    assert_eq!(
        drained,
        (0..16).map(|t| (t, IoStatus::Success)).collect::<Vec<_>>()
    );
    assert_eq!(dev.detach().unwrap(), Detached::Clean);
    assert_eq!(dev.lifecycle().state(), State::Detached);
    drop(dev);

    // Reattach (a restart with the saved config): clean, data intact.
    let dev = BdevDevice::open(CreateParams::from_json(&text).unwrap()).unwrap();
    assert_eq!(dev.info_json()["vsl"]["attach"]["kind"], "Clean");
    let dst = HostBuf::new(BS);
    let mut ch = dev.open_channel().unwrap();
    for i in 0..16u64 {
        assert_eq!(
            read(&mut ch, i * 7, 1, &[dst.iov(0, BS)]),
            IoStatus::Success
        );
        assert_eq!(dst.bytes(BS), pattern(i * 7, 5, BS), "lba {}", i * 7);
    }
    ch.close(&mut |_, _| {});
    dev.lifecycle().begin_destruct().unwrap();
    assert_eq!(dev.detach().unwrap(), Detached::Clean);
}

#[test]
fn a_power_cut_fails_io_and_starts_one_hot_remove() {
    let dev = memory_device(8, 4096);
    let buf = HostBuf::new(BS);
    let mut a = dev.open_channel().unwrap();
    let mut b = dev.open_channel().unwrap();
    assert_eq!(write(&mut a, 0, 1, &[buf.iov(0, BS)]), IoStatus::Success);
    dev.inject_power_cut(0).unwrap();
    // The first request after the cut fails (at submit or at completion),
    // and the pollers notice the card is gone.
    let iov = [buf.iov(0, BS)];
    let mut removes = 0;
    let mut status = None;
    match submit(&mut a, &desc(spdk_io_type::WRITE, 1, 1, &iov, 42)) {
        Submitted::Done(s) => status = Some(s),
        Submitted::Queued => {}
    }
    for _ in 0..10 {
        removes += a
            .poll(&mut |t, s| {
                assert_eq!(t, 42);
                status = Some(s);
            })
            .hot_remove as usize;
        removes += b.poll(&mut |_, _| {}).hot_remove as usize;
    }
    assert_eq!(status, Some(IoStatus::Failed));
    assert_eq!(removes, 1, "exactly one poller starts the hot remove");
    assert_eq!(dev.lifecycle().state(), State::Removing);
    assert_eq!(dev.lifecycle().reason(), RemoveReason::HotRemove);
    assert_eq!(dev.info_json()["lifecycle"]["card_lost"], true);
    dev.lifecycle().begin_destruct().unwrap();
    a.close(&mut |_, _| {});
    b.close(&mut |_, _| {});
    assert_eq!(dev.detach().unwrap(), Detached::CardLost);
}

#[test]
fn two_threads_each_with_a_channel() {
    let dev = memory_device(9, 512);
    assert_eq!(dev.block_size(), 512);
    std::thread::scope(|s| {
        for t in 0..2u64 {
            let dev = dev.clone();
            s.spawn(move || {
                let mut ch = dev.open_channel().unwrap();
                let mut buf = HostBuf::new(8 * 512);
                // SAFETY: the buffer outlives the device's use of it.
                unsafe { dev.dma().register(buf.ptr(), buf.len()) };
                for i in 0..50u64 {
                    let lba = t * 1000 + i * 8;
                    buf.fill(&pattern(lba, t, 8 * 512));
                    assert_eq!(
                        write(&mut ch, lba, 8, &[buf.iov(0, 8 * 512)]),
                        IoStatus::Success
                    );
                }
                for i in 0..50u64 {
                    let lba = t * 1000 + i * 8;
                    assert_eq!(
                        read(&mut ch, lba, 8, &[buf.iov(0, 8 * 512)]),
                        IoStatus::Success
                    );
                    assert_eq!(buf.bytes(8 * 512), pattern(lba, t, 8 * 512));
                }
                ch.close(&mut |_, _| {});
            });
        }
    });
    let c = dev.counters().total();
    assert_eq!((c.writes, c.reads, c.failed), (100, 100, 0));
    assert_eq!(dev.lifecycle().channels(), 0);
}
