//! The NBD handshake (newstyle fixed), run on a blocking socket before the
//! connection is handed to a reactor.
//!
//! Hostile input never panics: bad magics and unknown client flags close
//! the connection, malformed option data gets `NBD_REP_ERR_INVALID`, option
//! data over [`MAX_OPTION_LEN`] is refused, and the number of options one
//! client may send is bounded.

use std::io::{self, Read, Write};

use super::proto::{self, info, opt, rep, tflag};

/// Longest option data we read (names are at most 4096 bytes by the spec).
pub const MAX_OPTION_LEN: u32 = 64 * 1024;
/// Option data beyond this is not even read: the connection is closed.
pub const MAX_DISCARD_LEN: u32 = 1024 * 1024;
/// Most options one client may send before we give up on it.
pub const MAX_OPTIONS: usize = 1024;

/// What the handshake needs to know about an export.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportInfo {
    /// Name clients select it by.
    pub name: String,
    /// Free text shown by `nbdinfo`.
    pub description: String,
    /// Size in bytes.
    pub size: u64,
    /// Device block size (the minimum and preferred block size).
    pub block_size: u32,
    /// Largest request payload served.
    pub max_payload: u32,
    /// Writes are refused.
    pub read_only: bool,
}

impl ExportInfo {
    /// Transmission flags for this export.
    pub fn transmission_flags(&self, structured: bool) -> u16 {
        let mut f = tflag::HAS_FLAGS | tflag::SEND_FLUSH | tflag::CAN_MULTI_CONN;
        if self.read_only {
            f |= tflag::READ_ONLY;
        } else {
            f |= tflag::SEND_FUA | tflag::SEND_TRIM | tflag::SEND_WRITE_ZEROES | tflag::SEND_FAST_ZERO;
        }
        if structured {
            f |= tflag::SEND_DF;
        }
        f
    }
}

/// The exports a listener offers.
pub trait Catalog {
    /// The export handle passed on to the transmission phase.
    type Export;
    /// Looks up an export by name; the empty name selects the default export
    /// (the only one, when a listener serves exactly one).
    fn find(&self, name: &str) -> Option<(ExportInfo, Self::Export)>;
    /// Every export: (name, description).
    fn list(&self) -> Vec<(String, String)>;
    /// Whether the server is shutting down (new sessions are refused).
    fn shutting_down(&self) -> bool;
}

/// A successful handshake: the client is in the transmission phase.
#[derive(Debug)]
pub struct Negotiated<E> {
    /// The export chosen.
    pub export: E,
    /// Structured replies were negotiated.
    pub structured: bool,
    /// `base:allocation` was selected (id [`proto::BASE_ALLOCATION_ID`]).
    pub base_allocation: bool,
}

/// How a handshake ended without entering transmission.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    /// The socket failed or the client went away.
    #[error("NBD handshake I/O: {0}")]
    Io(#[from] io::Error),
    /// The client broke the protocol; the connection is closed.
    #[error("NBD client broke the handshake protocol: {0}")]
    Protocol(String),
    /// The client sent NBD_OPT_ABORT.
    #[error("the NBD client aborted the handshake")]
    Aborted,
    /// The client asked for an export that does not exist (NBD_OPT_EXPORT_NAME).
    #[error("the NBD client asked for unknown export {0:?}")]
    UnknownExport(String),
}

/// Runs the server side of the handshake on `s`.
pub fn serve_handshake<S: Read + Write, C: Catalog>(
    s: &mut S,
    catalog: &C,
) -> Result<Negotiated<C::Export>, HandshakeError> {
    let mut hello = Vec::with_capacity(18);
    hello.extend_from_slice(&proto::NBD_MAGIC.to_be_bytes());
    hello.extend_from_slice(&proto::IHAVEOPT.to_be_bytes());
    hello.extend_from_slice(&(proto::FLAG_FIXED_NEWSTYLE | proto::FLAG_NO_ZEROES).to_be_bytes());
    s.write_all(&hello)?;
    s.flush()?;

    let mut b4 = [0u8; 4];
    s.read_exact(&mut b4)?;
    let client_flags = u32::from_be_bytes(b4);
    if client_flags & !(proto::CLIENT_FIXED_NEWSTYLE | proto::CLIENT_NO_ZEROES) != 0 {
        return Err(HandshakeError::Protocol(format!("unknown client flags {client_flags:#x}")));
    }
    if client_flags & proto::CLIENT_FIXED_NEWSTYLE == 0 {
        return Err(HandshakeError::Protocol("client does not speak fixed newstyle".into()));
    }
    let no_zeroes = client_flags & proto::CLIENT_NO_ZEROES != 0;

    let mut structured = false;
    // Meta context selection is tied to the export it was made for.
    let mut meta: Option<(String, bool)> = None;
    let mut out = Vec::with_capacity(256);

    for _ in 0..MAX_OPTIONS {
        let mut h = [0u8; proto::OPTION_HEADER_LEN];
        s.read_exact(&mut h)?;
        let magic = proto::be64(&h[0..8]);
        if magic != proto::IHAVEOPT {
            return Err(HandshakeError::Protocol(format!("bad option magic {magic:#x}")));
        }
        let option = proto::be32(&h[8..12]);
        let len = proto::be32(&h[12..16]);
        if len > MAX_OPTION_LEN {
            if len > MAX_DISCARD_LEN || option == opt::EXPORT_NAME {
                return Err(HandshakeError::Protocol(format!("option {option} carries {len} bytes")));
            }
            io::copy(&mut Read::by_ref(s).take(u64::from(len)), &mut io::sink())?;
            reply_error(s, &mut out, option, rep::ERR_TOO_BIG, "option data too large")?;
            continue;
        }
        let mut data = vec![0u8; len as usize];
        s.read_exact(&mut data)?;
        out.clear();

        if catalog.shutting_down() && option != opt::ABORT {
            reply_error(s, &mut out, option, rep::ERR_SHUTDOWN, "server is shutting down")?;
            continue;
        }
        match option {
            opt::EXPORT_NAME => {
                let name = String::from_utf8(data).map_err(|_| HandshakeError::Protocol("export name is not UTF-8".into()))?;
                let Some((info, export)) = catalog.find(&name) else {
                    return Err(HandshakeError::UnknownExport(name));
                };
                let base_allocation = selected_for(&meta, &info.name);
                out.extend_from_slice(&info.size.to_be_bytes());
                out.extend_from_slice(&info.transmission_flags(structured).to_be_bytes());
                if !no_zeroes {
                    out.extend_from_slice(&[0u8; 124]);
                }
                s.write_all(&out)?;
                s.flush()?;
                return Ok(Negotiated { export, structured, base_allocation });
            }
            opt::ABORT => {
                proto::option_reply(&mut out, option, rep::ACK, 0);
                // The client may already have closed; its loss.
                let _ = s.write_all(&out).and_then(|()| s.flush());
                return Err(HandshakeError::Aborted);
            }
            opt::LIST => {
                if !data.is_empty() {
                    reply_error(s, &mut out, option, rep::ERR_INVALID, "NBD_OPT_LIST takes no data")?;
                    continue;
                }
                for (name, _) in catalog.list() {
                    proto::option_reply(&mut out, option, rep::SERVER, 4 + name.len() as u32);
                    out.extend_from_slice(&(name.len() as u32).to_be_bytes());
                    out.extend_from_slice(name.as_bytes());
                }
                proto::option_reply(&mut out, option, rep::ACK, 0);
                s.write_all(&out)?;
            }
            opt::STARTTLS => reply_error(s, &mut out, option, rep::ERR_POLICY, "TLS is not offered; use a Unix socket or loopback")?,
            opt::STRUCTURED_REPLY => {
                if !data.is_empty() {
                    reply_error(s, &mut out, option, rep::ERR_INVALID, "NBD_OPT_STRUCTURED_REPLY takes no data")?;
                } else if structured {
                    reply_error(s, &mut out, option, rep::ERR_INVALID, "structured replies already negotiated")?;
                } else {
                    structured = true;
                    proto::option_reply(&mut out, option, rep::ACK, 0);
                    s.write_all(&out)?;
                }
            }
            opt::INFO | opt::GO => {
                let req = match proto::InfoRequest::decode(&data) {
                    Ok(r) => r,
                    Err(e) => {
                        reply_error(s, &mut out, option, rep::ERR_INVALID, &e.to_string())?;
                        continue;
                    }
                };
                let Some((info, export)) = catalog.find(&req.name) else {
                    reply_error(s, &mut out, option, rep::ERR_UNKNOWN, &format!("no export named {:?}", req.name))?;
                    continue;
                };
                push_info_export(&mut out, option, &info, structured);
                push_info_block_size(&mut out, option, &info);
                if req.requests.contains(&info::NAME) {
                    let n = info.name.as_bytes();
                    proto::option_reply(&mut out, option, rep::INFO, 2 + n.len() as u32);
                    out.extend_from_slice(&info::NAME.to_be_bytes());
                    out.extend_from_slice(n);
                }
                if req.requests.contains(&info::DESCRIPTION) && !info.description.is_empty() {
                    let d = &info.description.as_bytes()[..info.description.len().min(4096)];
                    proto::option_reply(&mut out, option, rep::INFO, 2 + d.len() as u32);
                    out.extend_from_slice(&info::DESCRIPTION.to_be_bytes());
                    out.extend_from_slice(d);
                }
                proto::option_reply(&mut out, option, rep::ACK, 0);
                s.write_all(&out)?;
                if option == opt::GO {
                    s.flush()?;
                    let base_allocation = selected_for(&meta, &info.name);
                    return Ok(Negotiated { export, structured, base_allocation });
                }
            }
            opt::LIST_META_CONTEXT | opt::SET_META_CONTEXT => {
                let setting = option == opt::SET_META_CONTEXT;
                if !structured {
                    reply_error(s, &mut out, option, rep::ERR_INVALID, "negotiate structured replies before metadata contexts")?;
                    continue;
                }
                let req = match proto::MetaRequest::decode(&data) {
                    Ok(r) => r,
                    Err(e) => {
                        reply_error(s, &mut out, option, rep::ERR_INVALID, &e.to_string())?;
                        continue;
                    }
                };
                let Some((info, _)) = catalog.find(&req.name) else {
                    reply_error(s, &mut out, option, rep::ERR_UNKNOWN, &format!("no export named {:?}", req.name))?;
                    continue;
                };
                let chosen = proto::selects_base_allocation(&req.queries, !setting);
                if chosen {
                    let name = proto::BASE_ALLOCATION.as_bytes();
                    proto::option_reply(&mut out, option, rep::META_CONTEXT, 4 + name.len() as u32);
                    out.extend_from_slice(&proto::BASE_ALLOCATION_ID.to_be_bytes());
                    out.extend_from_slice(name);
                }
                if setting {
                    meta = Some((info.name.clone(), chosen));
                }
                proto::option_reply(&mut out, option, rep::ACK, 0);
                s.write_all(&out)?;
            }
            _ => reply_error(s, &mut out, option, rep::ERR_UNSUP, "option not supported")?,
        }
        s.flush()?;
    }
    Err(HandshakeError::Protocol(format!("more than {MAX_OPTIONS} options")))
}

fn selected_for(meta: &Option<(String, bool)>, export: &str) -> bool {
    matches!(meta, Some((name, true)) if name == export)
}

fn push_info_export(out: &mut Vec<u8>, option: u32, info: &ExportInfo, structured: bool) {
    proto::option_reply(out, option, rep::INFO, 12);
    out.extend_from_slice(&info::EXPORT.to_be_bytes());
    out.extend_from_slice(&info.size.to_be_bytes());
    out.extend_from_slice(&info.transmission_flags(structured).to_be_bytes());
}

fn push_info_block_size(out: &mut Vec<u8>, option: u32, info: &ExportInfo) {
    proto::option_reply(out, option, rep::INFO, 14);
    out.extend_from_slice(&info::BLOCK_SIZE.to_be_bytes());
    out.extend_from_slice(&info.block_size.to_be_bytes());
    out.extend_from_slice(&info.block_size.max(4096).to_be_bytes());
    out.extend_from_slice(&info.max_payload.to_be_bytes());
}

fn reply_error<S: Write>(s: &mut S, out: &mut Vec<u8>, option: u32, kind: u32, message: &str) -> io::Result<()> {
    out.clear();
    let m = &message.as_bytes()[..message.len().min(4096)];
    proto::option_reply(out, option, kind, m.len() as u32);
    out.extend_from_slice(m);
    s.write_all(out)?;
    s.flush()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixStream;

    struct OneExport;
    impl Catalog for OneExport {
        type Export = u32;
        fn find(&self, name: &str) -> Option<(ExportInfo, u32)> {
            (name.is_empty() || name == "disk").then(|| {
                (
                    ExportInfo {
                        name: "disk".into(),
                        description: "test disk".into(),
                        size: 1 << 20,
                        block_size: 512,
                        max_payload: 1 << 22,
                        read_only: false,
                    },
                    7,
                )
            })
        }
        fn list(&self) -> Vec<(String, String)> {
            vec![("disk".into(), "test disk".into())]
        }
        fn shutting_down(&self) -> bool {
            false
        }
    }

    fn option(c: &mut UnixStream, code: u32, data: &[u8]) {
        let mut b = Vec::new();
        b.extend_from_slice(&proto::IHAVEOPT.to_be_bytes());
        b.extend_from_slice(&code.to_be_bytes());
        b.extend_from_slice(&(data.len() as u32).to_be_bytes());
        b.extend_from_slice(data);
        c.write_all(&b).unwrap();
    }

    /// Reads one option reply: (option, type, data).
    fn reply(c: &mut UnixStream) -> (u32, u32, Vec<u8>) {
        let mut h = [0u8; 20];
        c.read_exact(&mut h).unwrap();
        assert_eq!(proto::be64(&h[0..8]), proto::OPT_REPLY_MAGIC);
        let mut d = vec![0u8; proto::be32(&h[16..20]) as usize];
        c.read_exact(&mut d).unwrap();
        (proto::be32(&h[8..12]), proto::be32(&h[12..16]), d)
    }

    fn start(c: &mut UnixStream) {
        let mut hello = [0u8; 18];
        c.read_exact(&mut hello).unwrap();
        assert_eq!(proto::be64(&hello[0..8]), proto::NBD_MAGIC);
        assert_eq!(proto::be64(&hello[8..16]), proto::IHAVEOPT);
        assert_eq!(proto::be16(&hello[16..18]), 3);
        c.write_all(&3u32.to_be_bytes()).unwrap();
    }

    #[test]
    fn go_with_structured_replies_and_base_allocation() {
        let (mut server, mut c) = UnixStream::pair().unwrap();
        let t = std::thread::spawn(move || serve_handshake(&mut server, &OneExport));
        start(&mut c);
        option(&mut c, 42, &[]);
        assert_eq!(reply(&mut c).1, rep::ERR_UNSUP);
        // Meta contexts before structured replies are refused.
        let mut meta = Vec::new();
        meta.extend_from_slice(&4u32.to_be_bytes());
        meta.extend_from_slice(b"disk");
        meta.extend_from_slice(&1u32.to_be_bytes());
        meta.extend_from_slice(&15u32.to_be_bytes());
        meta.extend_from_slice(b"base:allocation");
        option(&mut c, opt::SET_META_CONTEXT, &meta);
        assert_eq!(reply(&mut c).1, rep::ERR_INVALID);
        option(&mut c, opt::STRUCTURED_REPLY, &[]);
        assert_eq!(reply(&mut c).1, rep::ACK);
        option(&mut c, opt::SET_META_CONTEXT, &meta);
        let (_, kind, data) = reply(&mut c);
        assert_eq!(kind, rep::META_CONTEXT);
        assert_eq!(proto::be32(&data[0..4]), proto::BASE_ALLOCATION_ID);
        assert_eq!(&data[4..], b"base:allocation");
        assert_eq!(reply(&mut c).1, rep::ACK);
        // Malformed GO data: error, handshake continues.
        option(&mut c, opt::GO, &[0, 0, 0, 9, b'x']);
        assert_eq!(reply(&mut c).1, rep::ERR_INVALID);
        let mut go = Vec::new();
        go.extend_from_slice(&4u32.to_be_bytes());
        go.extend_from_slice(b"disk");
        go.extend_from_slice(&1u16.to_be_bytes());
        go.extend_from_slice(&info::DESCRIPTION.to_be_bytes());
        option(&mut c, opt::GO, &go);
        let mut seen = Vec::new();
        loop {
            let (o, kind, data) = reply(&mut c);
            assert_eq!(o, opt::GO);
            if kind == rep::ACK {
                break;
            }
            assert_eq!(kind, rep::INFO);
            let t = proto::be16(&data[0..2]);
            match t {
                info::EXPORT => {
                    assert_eq!(proto::be64(&data[2..10]), 1 << 20);
                    let f = proto::be16(&data[10..12]);
                    assert_ne!(f & tflag::SEND_DF, 0);
                    assert_ne!(f & tflag::CAN_MULTI_CONN, 0);
                    assert_eq!(f & tflag::READ_ONLY, 0);
                }
                info::BLOCK_SIZE => {
                    assert_eq!(proto::be32(&data[2..6]), 512);
                    assert_eq!(proto::be32(&data[6..10]), 4096);
                    assert_eq!(proto::be32(&data[10..14]), 1 << 22);
                }
                info::DESCRIPTION => assert_eq!(&data[2..], b"test disk"),
                other => panic!("unexpected info {other}"),
            }
            seen.push(t);
        }
        seen.sort_unstable();
        assert_eq!(seen, [info::EXPORT, info::DESCRIPTION, info::BLOCK_SIZE]);
        let n = t.join().unwrap().unwrap();
        assert_eq!(n.export, 7);
        assert!(n.structured && n.base_allocation);
    }

    #[test]
    fn unknown_export_bad_magic_and_oversized_options_are_handled() {
        let (mut server, mut c) = UnixStream::pair().unwrap();
        let t = std::thread::spawn(move || serve_handshake(&mut server, &OneExport));
        start(&mut c);
        let mut go = Vec::new();
        go.extend_from_slice(&3u32.to_be_bytes());
        go.extend_from_slice(b"nop");
        go.extend_from_slice(&0u16.to_be_bytes());
        option(&mut c, opt::GO, &go);
        assert_eq!(reply(&mut c).1, rep::ERR_UNKNOWN);
        option(&mut c, opt::LIST, &[]);
        let (_, kind, data) = reply(&mut c);
        assert_eq!(kind, rep::SERVER);
        assert_eq!(&data[4..], b"disk");
        assert_eq!(reply(&mut c).1, rep::ACK);
        option(&mut c, 99, &vec![0u8; (MAX_OPTION_LEN + 1) as usize]);
        assert_eq!(reply(&mut c).1, rep::ERR_TOO_BIG);
        c.write_all(&[0u8; 16]).unwrap();
        assert!(matches!(t.join().unwrap(), Err(HandshakeError::Protocol(_))));
    }

    #[test]
    fn export_name_option_enters_transmission_and_unknown_flags_close() {
        let (mut server, mut c) = UnixStream::pair().unwrap();
        let t = std::thread::spawn(move || serve_handshake(&mut server, &OneExport));
        start(&mut c);
        option(&mut c, opt::EXPORT_NAME, b"disk");
        let mut r = [0u8; 10];
        c.read_exact(&mut r).unwrap();
        assert_eq!(proto::be64(&r[0..8]), 1 << 20);
        assert_eq!(proto::be16(&r[8..10]) & tflag::SEND_DF, 0, "no DF without structured replies");
        assert!(t.join().unwrap().is_ok());

        let (mut server, mut c) = UnixStream::pair().unwrap();
        let t = std::thread::spawn(move || serve_handshake(&mut server, &OneExport));
        let mut hello = [0u8; 18];
        c.read_exact(&mut hello).unwrap();
        c.write_all(&0x80u32.to_be_bytes()).unwrap();
        assert!(matches!(t.join().unwrap(), Err(HandshakeError::Protocol(_))));
    }
}
