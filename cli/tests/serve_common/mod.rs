//! Shared helpers of the `iomem serve` integration tests: a real `iomem
//! serve` process on real sockets, and a small independent NBD client
//! written from the protocol document (not from the server's code).

#![allow(dead_code)]

pub mod vhost;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{channel, Receiver};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_iomem");

/// Creates an emulated card image.
pub fn make_card(dir: &Path, name: &str, capacity: &str) -> PathBuf {
    let p = dir.join(name);
    let out = Command::new(BIN).args(["sim", "create"]).arg(&p).args(["--capacity", capacity]).output().unwrap();
    assert!(out.status.success(), "sim create: {}", String::from_utf8_lossy(&out.stderr));
    p
}

/// A running `iomem serve`.
pub struct Server {
    pub child: Child,
    pub rpc: PathBuf,
    pub log: Arc<Mutex<Vec<String>>>,
    lines: Receiver<String>,
}

impl Server {
    /// Starts `iomem serve --rpc-socket DIR/rpc.sock ARGS...` and waits for "ready".
    pub fn start(dir: &Path, args: &[&str]) -> Server {
        let rpc = dir.join("rpc.sock");
        let mut child = Command::new(BIN)
            .arg("serve")
            .arg("--rpc-socket")
            .arg(&rpc)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = channel();
        let l2 = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                l2.lock().unwrap().push(line.clone());
                let _ = tx.send(line);
            }
        });
        let mut s = Server { child, rpc, log, lines: rx };
        s.wait_for("ready", Duration::from_secs(30));
        s
    }

    /// Waits for a stderr line containing `what`.
    pub fn wait_for(&mut self, what: &str, limit: Duration) -> String {
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) if l.contains(what) => return l,
                Ok(_) => {}
                Err(_) => panic!("iomem serve did not print {what:?}; log: {:#?}", self.log.lock().unwrap()),
            }
        }
    }

    /// Sends a signal and waits (bounded) for the exit status.
    pub fn signal_and_wait(&mut self, sig: i32) -> ExitStatus {
        let pid = self.child.id() as i32;
        // SAFETY: plain kill(2) on our own child's pid.
        assert_eq!(unsafe { libc::kill(pid, sig) }, 0);
        self.wait(Duration::from_secs(30))
    }

    /// Waits (bounded) for the process to exit.
    pub fn wait(&mut self, limit: Duration) -> ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return st;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("iomem serve did not exit; log: {:#?}", self.log.lock().unwrap());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `iomem rpc -s SOCKET METHOD [PARAMS]`: (success, stdout, stderr).
    pub fn rpc(&self, method: &str, params: Option<&str>) -> (bool, String, String) {
        let mut c = Command::new(BIN);
        c.arg("rpc").arg("-s").arg(&self.rpc).arg(method);
        if let Some(p) = params {
            c.arg(p);
        }
        let out = c.output().unwrap();
        (out.status.success(), String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("iomem serve log:\n{}", self.log.lock().map(|l| l.join("\n")).unwrap_or_default());
        }
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

// ---- a minimal NBD client ------------------------------------------------

pub const CMD_READ: u16 = 0;
pub const CMD_WRITE: u16 = 1;
pub const CMD_DISC: u16 = 2;
pub const CMD_FLUSH: u16 = 3;
pub const CMD_TRIM: u16 = 4;
pub const CMD_WRITE_ZEROES: u16 = 6;
pub const CMD_BLOCK_STATUS: u16 = 7;
pub const FLAG_FUA: u16 = 1;
pub const FLAG_NO_HOLE: u16 = 2;
pub const FLAG_REQ_ONE: u16 = 8;
pub const FLAG_FAST_ZERO: u16 = 16;
pub const EPERM: u32 = 1;
pub const EINVAL: u32 = 22;
pub const ENOSPC: u32 = 28;
pub const EOVERFLOW: u32 = 75;
pub const ENOTSUP: u32 = 95;

pub trait Sock: Read + Write + Send {}
impl Sock for UnixStream {}
impl Sock for TcpStream {}

/// One reply.
#[derive(Debug, Default)]
pub struct Reply {
    pub error: u32,
    pub data: Vec<u8>,
    /// (context id, [(length, flags)]).
    pub extents: Vec<(u32, Vec<(u32, u32)>)>,
}

/// An NBD client after GO.
pub struct Client {
    pub s: Box<dyn Sock>,
    pub size: u64,
    pub flags: u16,
    pub block: (u32, u32, u32),
    pub structured: bool,
    pub meta_id: Option<u32>,
    cookie: u64,
}

fn be16(b: &[u8]) -> u16 {
    u16::from_be_bytes([b[0], b[1]])
}
fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes(b[..4].try_into().unwrap())
}
fn be64(b: &[u8]) -> u64 {
    u64::from_be_bytes(b[..8].try_into().unwrap())
}

const IHAVEOPT: u64 = 0x4948_4156_454f_5054;

fn send_opt(s: &mut dyn Sock, opt: u32, data: &[u8]) {
    let mut b = Vec::new();
    b.extend_from_slice(&IHAVEOPT.to_be_bytes());
    b.extend_from_slice(&opt.to_be_bytes());
    b.extend_from_slice(&(data.len() as u32).to_be_bytes());
    b.extend_from_slice(data);
    s.write_all(&b).unwrap();
}

fn read_opt_reply(s: &mut dyn Sock) -> (u32, Vec<u8>) {
    let mut h = [0u8; 20];
    s.read_exact(&mut h).unwrap();
    assert_eq!(be64(&h), 0x0003_e889_0455_65a9, "option reply magic");
    let mut d = vec![0u8; be32(&h[16..]) as usize];
    s.read_exact(&mut d).unwrap();
    (be32(&h[12..]), d)
}

/// Connects to `unix:PATH` or `HOST:PORT`.
pub fn connect(addr: &str) -> Box<dyn Sock> {
    let s: Box<dyn Sock> = match addr.strip_prefix("unix:") {
        Some(p) => Box::new(UnixStream::connect(p).unwrap()),
        None => Box::new(TcpStream::connect(addr).unwrap()),
    };
    s
}

impl Client {
    /// Handshake: fixed newstyle, optionally structured replies and base:allocation, then GO.
    pub fn open(addr: &str, export: &str, structured: bool) -> Result<Client, u32> {
        let mut s = connect(addr);
        let mut hello = [0u8; 18];
        s.read_exact(&mut hello).unwrap();
        assert_eq!(&hello[..8], b"NBDMAGIC");
        assert_eq!(&hello[8..16], b"IHAVEOPT");
        s.write_all(&3u32.to_be_bytes()).unwrap();
        let mut meta_id = None;
        if structured {
            send_opt(&mut *s, 8, &[]);
            assert_eq!(read_opt_reply(&mut *s).0, 1);
            let mut d = Vec::new();
            d.extend_from_slice(&(export.len() as u32).to_be_bytes());
            d.extend_from_slice(export.as_bytes());
            d.extend_from_slice(&1u32.to_be_bytes());
            d.extend_from_slice(&15u32.to_be_bytes());
            d.extend_from_slice(b"base:allocation");
            send_opt(&mut *s, 10, &d);
            loop {
                let (t, data) = read_opt_reply(&mut *s);
                match t {
                    4 => meta_id = Some(be32(&data)),
                    1 => break,
                    e => return Err(e),
                }
            }
        }
        let mut d = Vec::new();
        d.extend_from_slice(&(export.len() as u32).to_be_bytes());
        d.extend_from_slice(export.as_bytes());
        d.extend_from_slice(&1u16.to_be_bytes());
        d.extend_from_slice(&3u16.to_be_bytes());
        send_opt(&mut *s, 7, &d);
        let (mut size, mut flags, mut block) = (0, 0, (0, 0, 0));
        loop {
            let (t, data) = read_opt_reply(&mut *s);
            match t {
                3 if be16(&data) == 0 => {
                    size = be64(&data[2..]);
                    flags = be16(&data[10..]);
                }
                3 if be16(&data) == 3 => block = (be32(&data[2..]), be32(&data[6..]), be32(&data[10..])),
                3 => {}
                1 => break,
                e => return Err(e),
            }
        }
        Ok(Client { s, size, flags, block, structured, meta_id, cookie: 0 })
    }

    /// Sends a request header (+ payload) without waiting.
    pub fn send(&mut self, kind: u16, flags: u16, offset: u64, len: u32, payload: &[u8]) -> u64 {
        self.cookie += 1;
        let mut b = Vec::with_capacity(28 + payload.len());
        b.extend_from_slice(&0x2560_9513u32.to_be_bytes());
        b.extend_from_slice(&flags.to_be_bytes());
        b.extend_from_slice(&kind.to_be_bytes());
        b.extend_from_slice(&self.cookie.to_be_bytes());
        b.extend_from_slice(&offset.to_be_bytes());
        b.extend_from_slice(&len.to_be_bytes());
        b.extend_from_slice(payload);
        self.s.write_all(&b).unwrap();
        self.cookie
    }

    /// Receives one complete reply: (cookie, reply).
    pub fn recv(&mut self, read_len: u32) -> (u64, Reply) {
        let mut r = Reply::default();
        let mut m = [0u8; 4];
        self.s.read_exact(&mut m).unwrap();
        match be32(&m) {
            0x6744_6698 => {
                let mut h = [0u8; 12];
                self.s.read_exact(&mut h).unwrap();
                r.error = be32(&h);
                let cookie = be64(&h[4..]);
                if r.error == 0 && read_len > 0 {
                    r.data = vec![0u8; read_len as usize];
                    self.s.read_exact(&mut r.data).unwrap();
                }
                (cookie, r)
            }
            0x668e_33ef => {
                let mut cookie;
                let mut first = true;
                loop {
                    if !first {
                        self.s.read_exact(&mut m).unwrap();
                        assert_eq!(be32(&m), 0x668e_33ef);
                    }
                    first = false;
                    let mut h = [0u8; 16];
                    self.s.read_exact(&mut h).unwrap();
                    let (flags, kind) = (be16(&h), be16(&h[2..]));
                    cookie = be64(&h[4..]);
                    let mut p = vec![0u8; be32(&h[12..]) as usize];
                    self.s.read_exact(&mut p).unwrap();
                    match kind {
                        0 => {}
                        1 => r.data.extend_from_slice(&p[8..]),
                        2 => r.data.extend(std::iter::repeat_n(0u8, be32(&p[8..]) as usize)),
                        5 => {
                            let ex = p[4..].chunks(8).map(|c| (be32(c), be32(&c[4..]))).collect();
                            r.extents.push((be32(&p), ex));
                        }
                        k if k & 0x8000 != 0 => r.error = be32(&p),
                        k => panic!("unknown structured chunk type {k}"),
                    }
                    if flags & 1 != 0 {
                        break;
                    }
                }
                (cookie, r)
            }
            other => panic!("bad reply magic {other:#x}"),
        }
    }

    /// One request, waiting for its reply.
    pub fn call(&mut self, kind: u16, flags: u16, offset: u64, len: u32, payload: &[u8]) -> Reply {
        let c = self.send(kind, flags, offset, len, payload);
        let (cookie, r) = self.recv(if kind == CMD_READ { len } else { 0 });
        assert_eq!(cookie, c);
        r
    }

    pub fn write(&mut self, offset: u64, data: &[u8], flags: u16) -> u32 {
        self.call(CMD_WRITE, flags, offset, data.len() as u32, data).error
    }

    pub fn read(&mut self, offset: u64, len: u32) -> Reply {
        self.call(CMD_READ, 0, offset, len, &[])
    }
}

/// A deterministic pattern for `len` bytes at `offset` with `seed`.
pub fn pattern(offset: u64, len: usize, seed: u64) -> Vec<u8> {
    let mut x = offset.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ seed;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}
