//! `iomem serve` NBD export, end to end: a real server process on real
//! sockets, driven by an independent NBD client (and qemu-io when the
//! machine has it).

mod serve_common;

use std::io::{Read, Write};
use std::process::Command;
use std::time::Duration;

use serve_common::*;

fn server_with_disk(dir: &std::path::Path) -> (Server, String) {
    let card = make_card(dir, "card0.img", "128MiB");
    let sock = format!("unix:{}", dir.join("nbd.sock").display());
    let s = Server::start(dir, &["--reactors", "2", "--format-if-blank", card.to_str().unwrap(), "--nbd", &sock, "--export", "disk0"]);
    (s, sock)
}

#[test]
fn pattern_io_trim_zeroes_fua_and_block_status() {
    let dir = tempfile::tempdir().unwrap();
    let (mut srv, sock) = server_with_disk(dir.path());
    let mut c = Client::open(&sock, "disk0", true).unwrap();
    assert!(c.size >= 64 << 20, "size {}", c.size);
    let bs = c.block.0;
    assert!(bs == 512 || bs == 4096);
    assert_eq!(c.block.2, 8 << 20);
    assert_ne!(c.flags & (1 << 8), 0, "multi-conn advertised");
    assert_eq!(c.meta_id, Some(1));

    // Writes of several sizes (one spanning many DMA chunks), read back.
    for (i, len) in [4096usize, 65536, 1 << 20, 3 << 20].into_iter().enumerate() {
        let off = (i as u64) * (4 << 20);
        let data = pattern(off, len, 1);
        assert_eq!(c.write(off, &data, if i % 2 == 0 { FLAG_FUA } else { 0 }), 0);
        let r = c.read(off, len as u32);
        assert_eq!(r.error, 0);
        assert!(r.data == data, "read back differs at offset {off}");
    }
    assert_eq!(c.call(CMD_FLUSH, 0, 0, 0, &[]).error, 0);

    // Trim and write-zeroes read back as zeroes; neighbours are untouched.
    assert_eq!(c.call(CMD_TRIM, 0, 4 << 20, 16384, &[]).error, 0);
    let r = c.read(4 << 20, 65536);
    assert!(r.data[..16384].iter().all(|&b| b == 0));
    assert_eq!(&r.data[16384..], &pattern(4 << 20, 65536, 1)[16384..]);
    assert_eq!(c.call(CMD_WRITE_ZEROES, FLAG_FAST_ZERO, 8 << 20, 8192, &[]).error, 0);
    assert_eq!(c.call(CMD_WRITE_ZEROES, FLAG_NO_HOLE | FLAG_FUA, 8 << 20, 300 * 1024, &[]).error, 0);
    assert!(c.read(8 << 20, 300 * 1024).data.iter().all(|&b| b == 0));
    assert_eq!(c.call(CMD_WRITE_ZEROES, FLAG_NO_HOLE | FLAG_FAST_ZERO, 0, 4096, &[]).error, ENOTSUP);

    // Block status answers for the selected context.
    let r = c.call(CMD_BLOCK_STATUS, 0, 0, 1 << 20, &[]);
    assert_eq!(r.error, 0);
    assert_eq!(r.extents.len(), 1);
    assert_eq!(r.extents[0].0, 1);
    let total: u64 = r.extents[0].1.iter().map(|e| u64::from(e.0)).sum();
    assert_eq!(total, 1 << 20);
    // From the forward map: the trimmed 16 KiB at 4 MiB is a hole that
    // reads as zeros (flags HOLE|ZERO), the written rest of that 64 KiB is data.
    let r = c.call(CMD_BLOCK_STATUS, 0, 4 << 20, 65536, &[]);
    assert_eq!(r.error, 0);
    assert_eq!(r.extents[0].1, vec![(16384, 3), (65536 - 16384, 0)]);

    // Bad requests get errors and change nothing.
    let before = c.read(0, 8192).data;
    assert_eq!(c.write(1, &[7u8; 4096], 0), EINVAL);
    assert_eq!(c.write(c.size - 4096, &[7u8; 8192], 0), ENOSPC);
    assert_eq!(c.read(c.size, 4096).error, EINVAL);
    assert_eq!(c.read(0, 16 << 20).error, EOVERFLOW);
    assert_eq!(c.call(CMD_TRIM, 0, c.size - 4096, 8192, &[]).error, ENOSPC);
    assert_eq!(c.call(99, 0, 0, 4096, &[]).error, EINVAL);
    assert_eq!(c.read(0, 0).error, EINVAL);
    assert_eq!(c.read(0, 8192).data, before);

    // Several requests in flight, replies matched by cookie.
    let mut cookies = Vec::new();
    for i in 0..32u64 {
        cookies.push((c.send(CMD_WRITE, 0, (16 << 20) + i * 8192, 8192, &pattern(i, 8192, 9)), i));
    }
    for _ in 0..32 {
        let (cookie, r) = c.recv(0);
        assert_eq!(r.error, 0);
        assert!(cookies.iter().any(|(ck, _)| *ck == cookie));
    }
    for i in 0..32u64 {
        assert_eq!(c.read((16 << 20) + i * 8192, 8192).data, pattern(i, 8192, 9));
    }

    // Simple replies (no structured negotiation) work too.
    let mut s = Client::open(&sock, "disk0", false).unwrap();
    assert_eq!(s.read(0, 4096).data, pattern(0, 4096, 1));
    assert_eq!(s.read(c.size, 4096).error, EINVAL);
    // Block status without the context is refused.
    assert_eq!(s.call(CMD_BLOCK_STATUS, 0, 0, 4096, &[]).error, EINVAL);

    c.send(CMD_DISC, 0, 0, 0, &[]);
    assert!(srv.signal_and_wait(libc::SIGTERM).success());
    let log = srv.log.lock().unwrap().join("\n");
    assert!(log.contains("detached (checkpoint written)"), "{log}");
}

#[test]
fn hostile_clients_never_crash_or_write_wrong_data() {
    let dir = tempfile::tempdir().unwrap();
    let (mut srv, sock) = server_with_disk(dir.path());
    let mut good = Client::open(&sock, "disk0", true).unwrap();
    let data = pattern(0, 65536, 3);
    assert_eq!(good.write(0, &data, 0), 0);

    // Bad request magic: the connection is closed.
    let mut bad = Client::open(&sock, "disk0", true).unwrap();
    bad.s.write_all(&[0xffu8; 28]).unwrap();
    let mut b = [0u8; 1];
    assert_eq!(bad.s.read(&mut b).unwrap_or(0), 0);

    // A write larger than the maximum payload: closed, nothing written.
    let mut big = Client::open(&sock, "disk0", true).unwrap();
    big.send(CMD_WRITE, 0, 0, 64 << 20, &[0x55u8; 4096]);
    assert_eq!(big.s.read(&mut b).unwrap_or(0), 0);

    // A client that disconnects half-way through a write payload: the
    // partial write is never submitted.
    let mut half = Client::open(&sock, "disk0", true).unwrap();
    half.send(CMD_WRITE, 0, 0, 65536, &[0xeeu8; 30000]);
    drop(half);

    // Garbage before the handshake ends and option floods.
    let mut raw = connect(&sock);
    let mut hello = [0u8; 18];
    raw.read_exact(&mut hello).unwrap();
    raw.write_all(&[0xde, 0xad, 0xbe, 0xef, 1, 2, 3]).unwrap();
    drop(raw);
    let mut raw = connect(&sock);
    raw.read_exact(&mut hello).unwrap();
    raw.write_all(&3u32.to_be_bytes()).unwrap();
    let mut opt = Vec::new();
    opt.extend_from_slice(b"IHAVEOPT");
    opt.extend_from_slice(&7u32.to_be_bytes());
    opt.extend_from_slice(&u32::MAX.to_be_bytes());
    raw.write_all(&opt).unwrap();
    assert_eq!(raw.read(&mut b).unwrap_or(0), 0, "an absurd option length closes the connection");

    // Unknown export via GO: an error, not a session.
    assert!(Client::open(&sock, "nope", false).is_err());

    std::thread::sleep(Duration::from_millis(100));
    let r = good.read(0, 65536);
    assert_eq!(r.error, 0);
    assert!(r.data == data, "hostile clients changed the data");
    assert!(srv.child.try_wait().unwrap().is_none(), "server died");
    assert!(srv.signal_and_wait(libc::SIGINT).success());
}

#[test]
fn multi_conn_tcp_read_only_exports_and_restart_keeps_data() {
    let dir = tempfile::tempdir().unwrap();
    let card = make_card(dir.path(), "card0.img", "128MiB");
    let port = free_port();
    let tcp = format!("127.0.0.1:{port}");
    let ro = format!("unix:{}", dir.path().join("ro.sock").display());
    let args = ["--format-if-blank", card.to_str().unwrap(), "--nbd", tcp.as_str(), "--export", "rw", "--nbd", ro.as_str(), "--export", "ro", "--read-only"];
    let mut srv = Server::start(dir.path(), &args);
    let mut a = Client::open(&tcp, "rw", true).unwrap();
    let mut b = Client::open(&tcp, "rw", true).unwrap();
    let data = pattern(7, 1 << 20, 5);
    assert_eq!(a.write(1 << 20, &data, 0), 0);
    assert_eq!(a.call(CMD_FLUSH, 0, 0, 0, &[]).error, 0);
    assert!(b.read(1 << 20, 1 << 20).data == data, "a second connection sees the first one's writes");

    let mut r = Client::open(&ro, "ro", true).unwrap();
    assert_ne!(r.flags & 2, 0, "read-only flag");
    assert!(r.read(1 << 20, 1 << 20).data == data);
    assert_eq!(r.write(0, &[1u8; 4096], 0), EPERM);
    assert_eq!(r.call(CMD_TRIM, 0, 0, 4096, &[]).error, EPERM);
    assert_eq!(r.read(1 << 20, 4096).error, 0, "the connection survives a refused write");

    drop((a, b, r));
    assert!(srv.signal_and_wait(libc::SIGTERM).success());
    // Restart without formatting: the data is still there.
    let mut srv = Server::start(dir.path(), &[card.to_str().unwrap(), "--nbd", tcp.as_str(), "--export", "rw"]);
    let mut a = Client::open(&tcp, "rw", false).unwrap();
    assert!(a.read(1 << 20, 1 << 20).data == data, "data lost across a clean restart");
    drop(a);
    assert!(srv.signal_and_wait(libc::SIGTERM).success());
}

#[test]
fn qemu_io_patterns_against_the_export() {
    if Command::new("qemu-io").arg("--version").output().is_err() {
        eprintln!("qemu-io not installed: covered by ci/serve/run.sh instead");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (mut srv, sock) = server_with_disk(dir.path());
    let path = sock.trim_start_matches("unix:");
    let uri = format!("nbd+unix:///disk0?socket={path}");
    let out = Command::new("qemu-io")
        .args(["-f", "raw", &uri])
        .args(["-c", "write -P 0xa5 0 1M", "-c", "write -z 64k 64k", "-c", "discard 256k 128k", "-c", "flush"])
        .args(["-c", "read -P 0xa5 0 64k", "-c", "read -P 0 64k 64k", "-c", "read -P 0xa5 128k 128k", "-c", "read -P 0 256k 128k", "-c", "read -P 0xa5 384k 640k"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    assert!(!text.contains("Pattern verification failed") && !text.contains("error"), "{text}");
    assert_eq!(text.matches("read ").count(), 5, "{text}");
    assert!(srv.signal_and_wait(libc::SIGTERM).success());
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}
