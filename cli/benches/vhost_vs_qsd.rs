//! vhost-user-blk throughput, side by side: `iomem serve` against
//! `qemu-storage-daemon`'s vhost-user-blk export of a file in tmpfs, the
//! same client (the test virtqueue driver, 4 KiB random reads and writes at
//! queue depth 32 on one queue; two interleaved rounds, best kept). A
//! benchmark, not a test: `cargo bench -p iomem --bench vhost_vs_qsd`
//! (~45 s, needs qemu-storage-daemon); `ci/serve/run.sh` runs it.
//! `IOMEM_BENCH_SECS` sets the seconds per run (default 5);
//! `IOMEM_BENCH_SOCKET=PATH` only drives an already running server there
//! (for profiling one side).

#[path = "../tests/serve_common/mod.rs"]
mod serve_common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serve_common::vhost::*;
use serve_common::*;

const QD: usize = 32;
const BS: u32 = 4096;

/// Runs 4 KiB random I/O at QD 32 for `secs`; returns IOPS.
fn run(sock: &Path, write: bool, secs: f64, span_blocks: u64) -> f64 {
    let mut d = Driver::connect(sock, 1, 256);
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let kind = if write { T_OUT } else { T_IN };
    let submit = |d: &mut Driver, slot: usize, lba: u64| {
        let at = Driver::scratch(0, slot);
        d.header(at, kind, lba * u64::from(BS / 512));
        let data = DATA + slot as u64 * u64::from(BS);
        d.submit_at(0, (slot * 3) as u16, &[(at, 16, false), (data, BS, !write), (at + 16, 1, true)]);
    };
    for slot in 0..QD {
        d.write_mem(DATA + slot as u64 * u64::from(BS), &pattern(slot as u64, BS as usize, 1));
        submit(&mut d, slot, next() % span_blocks);
    }
    let start = Instant::now();
    let limit = Duration::from_secs_f64(secs);
    let mut done = 0u64;
    while start.elapsed() < limit {
        let (head, _) = d.wait(0);
        let slot = usize::from(head) / 3;
        assert_eq!(d.read_mem(Driver::scratch(0, slot) + 16, 1)[0], S_OK, "I/O error during the benchmark");
        done += 1;
        submit(&mut d, slot, next() % span_blocks);
    }
    let iops = done as f64 / start.elapsed().as_secs_f64();
    for _ in 0..QD {
        d.wait(0);
    }
    iops
}

fn wait_socket(p: &Path, child: &mut Child) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !p.exists() {
        assert!(child.try_wait().unwrap().is_none(), "qemu-storage-daemon exited");
        assert!(Instant::now() < deadline, "no socket {}", p.display());
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn main() {
    let secs: f64 = std::env::var("IOMEM_BENCH_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(5.0);
    let dir = tempfile::tempdir().unwrap();
    let span: u64 = (256 << 20) / u64::from(BS);
    if let Ok(sock) = std::env::var("IOMEM_BENCH_SOCKET") {
        let p = std::path::PathBuf::from(sock);
        let w = run(&p, true, secs, span);
        let r = run(&p, false, secs, span);
        println!("vhost-user-blk 4k QD32 at {}: randwrite {w:.0} IOPS, randread {r:.0} IOPS", p.display());
        assert!(w > 0.0 && r > 0.0);
        return;
    }

    // Ours; the card image lives in tmpfs like qemu-storage-daemon's file.
    let shm = tempfile::tempdir_in("/dev/shm").unwrap();
    let card = make_card(shm.path(), "card0.img", "1GiB");
    let ours = dir.path().join("ours.sock");
    let mut srv = Server::start(
        dir.path(),
        &["--format-if-blank", card.to_str().unwrap(), "--vhost-user-blk", ours.to_str().unwrap(), "--queues", "1"],
    );

    // qemu-storage-daemon on a tmpfs file, running beside it (each side
    // sleeps while the other is measured).
    let img = shm.path().join("disk.raw");
    std::fs::File::create(&img).unwrap().set_len(1 << 30).unwrap();
    let qsock = dir.path().join("qsd.sock");
    let mut qsd = Command::new("qemu-storage-daemon")
        .arg("--blockdev")
        .arg(format!("driver=file,node-name=file0,filename={}", img.display()))
        .args(["--blockdev", "driver=raw,node-name=disk0,file=file0"])
        .arg("--export")
        .arg(format!("type=vhost-user-blk,id=exp0,node-name=disk0,addr.type=unix,addr.path={},writable=on,num-queues=1", qsock.display()))
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("qemu-storage-daemon");
    wait_socket(&qsock, &mut qsd);

    // Fill the span on both so reads hit written blocks, then two
    // interleaved rounds; the best of each is kept (the machine may be
    // running other work).
    let _ = run(&ours, true, secs.min(3.0), span);
    let _ = run(&qsock, true, secs.min(3.0), span);
    let (mut our_w, mut our_r, mut q_w, mut q_r) = (0f64, 0f64, 0f64, 0f64);
    for _ in 0..2 {
        our_w = our_w.max(run(&ours, true, secs, span));
        q_w = q_w.max(run(&qsock, true, secs, span));
        our_r = our_r.max(run(&ours, false, secs, span));
        q_r = q_r.max(run(&qsock, false, secs, span));
    }
    let _ = qsd.kill();
    let _ = qsd.wait();
    assert!(srv.signal_and_wait(libc::SIGTERM).success());

    println!("vhost-user-blk 4k randread  QD32: iomem {our_r:.0} IOPS, qemu-storage-daemon {q_r:.0} IOPS, ratio {:.2}", our_r / q_r);
    println!("vhost-user-blk 4k randwrite QD32: iomem {our_w:.0} IOPS, qemu-storage-daemon {q_w:.0} IOPS, ratio {:.2}", our_w / q_w);
    assert!(our_r > 0.0 && our_w > 0.0 && q_r > 0.0 && q_w > 0.0);
}
