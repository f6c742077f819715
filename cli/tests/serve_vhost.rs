//! `iomem serve` vhost-user-blk export, end to end: a real server process,
//! driven through the vhost-user protocol by the rust-vmm `Frontend` and a
//! minimal test virtqueue driver (see `serve_common/vhost.rs` for why not
//! libblkio).

mod serve_common;

use serve_common::vhost::*;
use serve_common::*;
use ::vhost::vhost_user::message::VhostUserConfigFlags;
use ::vhost::vhost_user::VhostUserFrontend;
use ::vhost::VhostBackend;

fn start(dir: &std::path::Path, queues: &str) -> (Server, std::path::PathBuf) {
    let card = make_card(dir, "card0.img", "128MiB");
    let sock = dir.join("vhost.sock");
    let s = Server::start(
        dir,
        &["--reactors", "2", "--format-if-blank", card.to_str().unwrap(), "--vhost-user-blk", sock.to_str().unwrap(), "--queues", queues],
    );
    (s, sock)
}

fn cfg_u32(c: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(c[at..at + 4].try_into().unwrap())
}

#[test]
fn every_request_type_on_several_queues() {
    let dir = tempfile::tempdir().unwrap();
    let (mut srv, sock) = start(dir.path(), "2");
    let mut d = Driver::connect(&sock, 2, 256);
    let capacity = u64::from_le_bytes(d.config[0..8].try_into().unwrap());
    assert!(capacity * 512 >= 64 << 20);
    let bs = cfg_u32(&d.config, 20);
    assert!(bs == 512 || bs == 4096);
    assert_eq!(u16::from_le_bytes([d.config[34], d.config[35]]), 2);
    assert!(cfg_u32(&d.config, 40) >= 1, "max_discard_seg");
    assert_ne!(d.features & (1 << 29), 0, "event-idx negotiated");
    let spb = u64::from(bs / 512);

    for q in 0..2usize {
        let buf = DATA + q as u64 * DATA_STRIDE;
        // Writes of one, several and many segments; read back.
        for (i, (segs, seg_len)) in [(1u32, 4096u32), (4, 65536), (3, 1 << 20)].into_iter().enumerate() {
            let len = (segs * seg_len) as usize;
            let sector = (q as u64 * 64 + i as u64 * 8) * 2048;
            let data = pattern(sector, len, q as u64);
            d.write_mem(buf, &data);
            let bufs: Vec<(u64, u32)> = (0..segs).map(|k| (buf + u64::from(k * seg_len), seg_len)).collect();
            assert_eq!(d.request(q, T_OUT, sector, &bufs), (S_OK, 1));
            d.write_mem(buf, &vec![0u8; len]);
            assert_eq!(d.request(q, T_IN, sector, &bufs), (S_OK, len as u32 + 1));
            assert!(d.read_mem(buf, len) == data, "queue {q} pattern {i} differs");
        }
        assert_eq!(d.request(q, T_FLUSH, 0, &[]).0, S_OK);
        let (st, n) = d.request(q, T_GET_ID, 0, &[(buf, 20)]);
        assert_eq!((st, n), (S_OK, 21));
        assert!(d.read_mem(buf, 20).starts_with(b"card0-vhost"));
    }

    // Discard and write-zeroes read back as zeroes, neighbours intact.
    let buf = DATA;
    let data = pattern(0, 65536, 7);
    d.write_mem(buf, &data);
    assert_eq!(d.request(0, T_OUT, 0, &[(buf, 65536)]).0, S_OK);
    let mut seg = [0u8; 32];
    seg[0..8].copy_from_slice(&0u64.to_le_bytes());
    seg[8..12].copy_from_slice(&(spb as u32).to_le_bytes());
    seg[16..24].copy_from_slice(&(4 * spb).to_le_bytes());
    seg[24..28].copy_from_slice(&(2 * spb as u32).to_le_bytes());
    d.write_mem(buf + (1 << 20), &seg);
    assert_eq!(d.request(0, T_DISCARD, 0, &[(buf + (1 << 20), 32)]).0, S_OK);
    seg[12..16].copy_from_slice(&1u32.to_le_bytes());
    seg[0..8].copy_from_slice(&(8 * spb).to_le_bytes());
    d.write_mem(buf + (1 << 20), &seg[..16]);
    assert_eq!(d.request(0, T_WRITE_ZEROES, 0, &[(buf + (1 << 20), 16)]).0, S_OK);
    assert_eq!(d.request(0, T_IN, 0, &[(buf, 65536)]).0, S_OK);
    let back = d.read_mem(buf, 65536);
    let b = bs as usize;
    let zero = |r: std::ops::Range<usize>| back[r].iter().all(|&x| x == 0);
    assert!(zero(0..b) && zero(4 * b..6 * b) && zero(8 * b..9 * b));
    assert_eq!(&back[b..4 * b], &data[b..4 * b]);
    assert_eq!(&back[9 * b..], &data[9 * b..]);

    // Buffers that are not whole blocks go through bounce buffers.
    let data = pattern(99, 2 * b, 3);
    d.write_mem(buf, &data[..b / 2]);
    d.write_mem(buf + 4096 * 16, &data[b / 2..]);
    let bufs = [(buf, (b / 2) as u32), (buf + 4096 * 16, (b + b / 2) as u32)];
    assert_eq!(d.request(1, T_OUT, 16 * spb, &bufs).0, S_OK);
    assert_eq!(d.request(1, T_IN, 16 * spb, &[(buf + (2 << 20), 2 * b as u32)]).0, S_OK);
    assert_eq!(d.read_mem(buf + (2 << 20), 2 * b), data);

    // Many requests in flight on one queue.
    let n = 64;
    let mut heads = Vec::new();
    for i in 0..n {
        let at = Driver::scratch(0, i + 1);
        d.header(at, T_OUT, 4096 * spb + i as u64 * spb);
        let data_at = buf + (i as u64) * u64::from(bs);
        d.write_mem(data_at, &pattern(i as u64, b, 11));
        heads.push(d.submit(0, &[(at, 16, false), (data_at, bs, false), (at + 16, 1, true)]));
    }
    for _ in 0..n {
        let (h, len) = d.wait(0);
        assert!(heads.contains(&h));
        assert_eq!(len, 1);
    }
    for i in 0..n {
        assert_eq!(d.read_mem(Driver::scratch(0, i + 1) + 16, 1)[0], S_OK);
        assert_eq!(d.request(0, T_IN, 4096 * spb + i as u64 * spb, &[(buf + (8 << 20), bs)]).0, S_OK);
        assert_eq!(d.read_mem(buf + (8 << 20), b), pattern(i as u64, b, 11));
    }

    let (ok, out, _) = srv.rpc("export_list", None);
    assert!(ok && out.contains("vhost-user-blk"), "{out}");
    // GET_VRING_BASE stops each queue after its requests completed and
    // reports how far the device consumed the avail ring.
    for q in 0..2 {
        let n = d.submitted(q);
        assert_eq!(d.frontend().get_vring_base(q).unwrap(), u32::from(n), "queue {q}");
    }
    drop(d);
    assert!(srv.signal_and_wait(libc::SIGTERM).success());
}

#[test]
fn malformed_chains_fail_only_their_request() {
    let dir = tempfile::tempdir().unwrap();
    let (mut srv, sock) = start(dir.path(), "1");
    let mut d = Driver::connect(&sock, 1, 256);
    let buf = DATA;
    let data = pattern(5, 8192, 5);
    d.write_mem(buf, &data);
    assert_eq!(d.request(0, T_OUT, 0, &[(buf, 8192)]).0, S_OK);

    // Data buffer outside guest memory.
    assert_eq!(d.request(0, T_IN, 0, &[((MEM_SIZE as u64) - 4096, 8192)]).0, S_IOERR);
    assert_eq!(d.request(0, T_OUT, 0, &[(u64::MAX - 4095, 4096)]).0, S_IOERR);
    // Wrong direction: a read whose data buffer is device-readable.
    let at = Driver::scratch(0, 3);
    d.header(at, T_IN, 0);
    let h = d.submit(0, &[(at, 16, false), (buf, 4096, false), (at + 16, 1, true)]);
    assert_eq!(d.wait(0).0, h);
    assert_eq!(d.read_mem(at + 16, 1)[0], S_IOERR);
    // A write with a device-writable data buffer: must not be written.
    d.header(at, T_OUT, 0);
    d.write_mem(buf + (1 << 20), &[0xeeu8; 4096]);
    let h = d.submit(0, &[(at, 16, false), (buf + (1 << 20), 4096, true), (at + 16, 1, true)]);
    assert_eq!(d.wait(0).0, h);
    assert_eq!(d.read_mem(at + 16, 1)[0], S_IOERR);
    // Oversized (64 MiB), beyond the end, misaligned, unknown type.
    assert_eq!(d.request(0, T_IN, 0, &[(buf, 64 << 20)]).0, S_IOERR);
    let capacity = u64::from_le_bytes(d.config[0..8].try_into().unwrap());
    assert_eq!(d.request(0, T_IN, capacity, &[(buf, 4096)]).0, S_IOERR);
    assert_eq!(d.request(0, T_IN, 0, &[(buf, 100)]).0, S_IOERR);
    assert_eq!(d.request(0, 77, 0, &[]).0, S_UNSUPP);
    // Header too short; no status byte at all (returned with length 0).
    let h = d.submit(0, &[(at, 8, false), (at + 16, 1, true)]);
    assert_eq!(d.wait(0), (h, 1));
    let h = d.submit(0, &[(at, 16, false)]);
    assert_eq!(d.wait(0), (h, 0));
    // Discard with the unmap flag (not allowed for discard): UNSUPP.
    let mut seg = [0u8; 16];
    seg[8..12].copy_from_slice(&8u32.to_le_bytes());
    seg[12..16].copy_from_slice(&1u32.to_le_bytes());
    d.write_mem(buf + (2 << 20), &seg);
    assert_eq!(d.request(0, T_DISCARD, 0, &[(buf + (2 << 20), 16)]).0, S_UNSUPP);

    // Nothing above changed the data, and the device still works.
    assert_eq!(d.request(0, T_IN, 0, &[(buf + (4 << 20), 8192)]).0, S_OK);
    assert_eq!(d.read_mem(buf + (4 << 20), 8192), data);
    assert!(srv.child.try_wait().unwrap().is_none(), "server died");
    let (_, out, _) = srv.rpc("export_list", None);
    assert!(out.contains("\"errors\""), "{out}");

    // A VMM that goes away and comes back finds its data.
    drop(d);
    let mut d = Driver::connect(&sock, 1, 128);
    assert_eq!(d.request(0, T_IN, 0, &[(buf, 8192)]).0, S_OK);
    assert_eq!(d.read_mem(buf, 8192), data);
    assert!(srv.signal_and_wait(libc::SIGTERM).success(), "clean exit with a VMM connected");
}

#[test]
fn protocol_edge_cases_close_only_that_connection() {
    let dir = tempfile::tempdir().unwrap();
    let (mut srv, sock) = start(dir.path(), "2");
    let mut d = Driver::connect(&sock, 2, 64);
    // A config read at an offset returns that slice (seg_max at 12).
    let (_, part) = d.frontend().get_config(12, 4, VhostUserConfigFlags::WRITABLE, &[0u8; 4]).unwrap();
    assert_eq!(part.to_vec(), d.config[12..16].to_vec());
    // A queue index beyond the device: the backend refuses the message and
    // drops this connection; the service survives and takes a new one.
    let _ = d.frontend().set_vring_num(7, 64);
    drop(d);
    let mut d = Driver::connect(&sock, 2, 64);
    let data = pattern(1, 4096, 1);
    d.write_mem(DATA, &data);
    assert_eq!(d.request(1, T_OUT, 0, &[(DATA, 4096)]).0, S_OK);
    assert_eq!(d.request(0, T_IN, 0, &[(DATA + 4096, 4096)]).0, S_OK);
    assert_eq!(d.read_mem(DATA + 4096, 4096), data);
    // A VMM that vanishes with requests in flight: nothing breaks.
    for i in 0..16 {
        let at = Driver::scratch(0, i + 1);
        d.header(at, T_OUT, 8 * (i as u64 + 1));
        d.submit(0, &[(at, 16, false), (DATA, 4096, false), (at + 16, 1, true)]);
    }
    drop(d);
    let mut d = Driver::connect(&sock, 1, 64);
    assert_eq!(d.request(0, T_IN, 0, &[(DATA + 8192, 4096)]).0, S_OK);
    assert_eq!(d.read_mem(DATA + 8192, 4096), data);
    drop(d);
    assert!(srv.child.try_wait().unwrap().is_none(), "server died");
    assert!(srv.signal_and_wait(libc::SIGTERM).success());
}

#[test]
fn export_removed_and_card_detached_while_a_vmm_is_connected() {
    let dir = tempfile::tempdir().unwrap();
    let (mut srv, sock) = start(dir.path(), "2");
    let mut d = Driver::connect(&sock, 2, 64);
    let data = pattern(3, 8192, 3);
    d.write_mem(DATA, &data);
    assert_eq!(d.request(0, T_OUT, 0, &[(DATA, 8192)]).0, S_OK);
    assert_eq!(d.request(1, T_FLUSH, 0, &[]).0, S_OK);
    let (ok, _, err) = srv.rpc("card_detach", Some(r#"{"name":"card0"}"#));
    assert!(!ok && err.contains("remove those exports first"), "{err}");
    // Forced: the export goes (the VMM is disconnected after its requests),
    // then the card is checkpointed and detached.
    let (ok, _, err) = srv.rpc("card_detach", Some(r#"{"name":"card0","force":true}"#));
    assert!(ok, "{err}");
    assert!(!sock.exists(), "the vhost-user socket is removed with its export");
    let (_, out, _) = srv.rpc("card_list", None);
    assert_eq!(out.trim(), "[]");
    drop(d);
    // Attach it again and export it on a new socket: the data is there.
    let img = dir.path().join("card0.img");
    let (ok, _, err) = srv.rpc("card_attach", Some(&format!(r#"{{"name":"c","path":"{}"}}"#, img.display())));
    assert!(ok, "{err}");
    let sock2 = dir.path().join("v2.sock");
    let p = format!(r#"{{"type":"vhost-user-blk","name":"v2","card":"c","socket":"{}","queues":1}}"#, sock2.display());
    let (ok, _, err) = srv.rpc("export_add", Some(&p));
    assert!(ok, "{err}");
    let mut d = Driver::connect(&sock2, 1, 64);
    assert_eq!(d.request(0, T_IN, 0, &[(DATA + 65536, 8192)]).0, S_OK);
    assert_eq!(d.read_mem(DATA + 65536, 8192), data);
    drop(d);
    assert!(srv.signal_and_wait(libc::SIGTERM).success());
}
