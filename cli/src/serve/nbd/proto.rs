//! NBD wire format: magics, option and command codes, flags, and the
//! encoders/decoders for the handshake and transmission phases
//! (the "newstyle fixed" protocol of the NBD specification, `proto.md`).
//!
//! Everything here is pure byte work, so it is tested without sockets.

/// `NBDMAGIC`, the first thing a newstyle server sends.
pub const NBD_MAGIC: u64 = 0x4e42_444d_4147_4943;
/// `IHAVEOPT`: the newstyle magic, and the prefix of every option request.
pub const IHAVEOPT: u64 = 0x4948_4156_454f_5054;
/// Prefix of every option reply.
pub const OPT_REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
/// Prefix of every transmission request.
pub const REQUEST_MAGIC: u32 = 0x2560_9513;
/// Prefix of a simple reply.
pub const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;
/// Prefix of a structured reply chunk.
pub const STRUCTURED_REPLY_MAGIC: u32 = 0x668e_33ef;

/// Handshake flag: fixed newstyle.
pub const FLAG_FIXED_NEWSTYLE: u16 = 1 << 0;
/// Handshake flag: no 124 zero bytes after NBD_OPT_EXPORT_NAME.
pub const FLAG_NO_ZEROES: u16 = 1 << 1;
/// Client flag: fixed newstyle understood.
pub const CLIENT_FIXED_NEWSTYLE: u32 = 1 << 0;
/// Client flag: no zeroes.
pub const CLIENT_NO_ZEROES: u32 = 1 << 1;

/// Options.
pub mod opt {
    /// Select an export, old style (no reply on failure: the server closes).
    pub const EXPORT_NAME: u32 = 1;
    /// Abort the handshake.
    pub const ABORT: u32 = 2;
    /// List exports.
    pub const LIST: u32 = 3;
    /// Upgrade to TLS.
    pub const STARTTLS: u32 = 5;
    /// Ask for export information.
    pub const INFO: u32 = 6;
    /// Ask for export information and enter transmission.
    pub const GO: u32 = 7;
    /// Use structured replies.
    pub const STRUCTURED_REPLY: u32 = 8;
    /// List metadata contexts.
    pub const LIST_META_CONTEXT: u32 = 9;
    /// Select metadata contexts.
    pub const SET_META_CONTEXT: u32 = 10;
}

/// Option reply types.
pub mod rep {
    /// Success, end of a reply sequence.
    pub const ACK: u32 = 1;
    /// One export, in reply to LIST.
    pub const SERVER: u32 = 2;
    /// One piece of export information, in reply to INFO/GO.
    pub const INFO: u32 = 3;
    /// One metadata context.
    pub const META_CONTEXT: u32 = 4;
    /// Option not supported.
    pub const ERR_UNSUP: u32 = 0x8000_0001;
    /// Refused by policy.
    pub const ERR_POLICY: u32 = 0x8000_0002;
    /// Syntactically or semantically invalid.
    pub const ERR_INVALID: u32 = 0x8000_0003;
    /// No such export.
    pub const ERR_UNKNOWN: u32 = 0x8000_0006;
    /// The server is shutting down.
    pub const ERR_SHUTDOWN: u32 = 0x8000_0007;
    /// The option's data is too large.
    pub const ERR_TOO_BIG: u32 = 0x8000_0009;
}

/// Information types in NBD_REP_INFO.
pub mod info {
    /// Size and transmission flags.
    pub const EXPORT: u16 = 0;
    /// Export name.
    pub const NAME: u16 = 1;
    /// Description.
    pub const DESCRIPTION: u16 = 2;
    /// Block size constraints.
    pub const BLOCK_SIZE: u16 = 3;
}

/// Transmission flags (per export).
pub mod tflag {
    /// Always set.
    pub const HAS_FLAGS: u16 = 1 << 0;
    /// Writes are refused.
    pub const READ_ONLY: u16 = 1 << 1;
    /// FLUSH is supported.
    pub const SEND_FLUSH: u16 = 1 << 2;
    /// The FUA command flag is supported.
    pub const SEND_FUA: u16 = 1 << 3;
    /// TRIM is supported.
    pub const SEND_TRIM: u16 = 1 << 5;
    /// WRITE_ZEROES is supported.
    pub const SEND_WRITE_ZEROES: u16 = 1 << 6;
    /// The DF (don't fragment) command flag is supported.
    pub const SEND_DF: u16 = 1 << 7;
    /// Several connections see one consistent device; a flush on one covers all.
    pub const CAN_MULTI_CONN: u16 = 1 << 8;
    /// The FAST_ZERO command flag is supported.
    pub const SEND_FAST_ZERO: u16 = 1 << 11;
}

/// Commands.
pub mod cmd {
    /// Read.
    pub const READ: u16 = 0;
    /// Write.
    pub const WRITE: u16 = 1;
    /// Disconnect.
    pub const DISC: u16 = 2;
    /// Flush.
    pub const FLUSH: u16 = 3;
    /// Trim (discard).
    pub const TRIM: u16 = 4;
    /// Write zeroes.
    pub const WRITE_ZEROES: u16 = 6;
    /// Block status.
    pub const BLOCK_STATUS: u16 = 7;
}

/// Command flags.
pub mod cflag {
    /// Force unit access: durable before the reply.
    pub const FUA: u16 = 1 << 0;
    /// WRITE_ZEROES must not leave a hole.
    pub const NO_HOLE: u16 = 1 << 1;
    /// READ reply must not be fragmented.
    pub const DF: u16 = 1 << 2;
    /// BLOCK_STATUS wants one extent only.
    pub const REQ_ONE: u16 = 1 << 3;
    /// WRITE_ZEROES must fail rather than be slow.
    pub const FAST_ZERO: u16 = 1 << 4;
}

/// Structured reply chunk types.
pub mod chunk {
    /// Nothing (only with the DONE flag).
    pub const NONE: u16 = 0;
    /// Data at an offset.
    pub const OFFSET_DATA: u16 = 1;
    /// Block status extents.
    pub const BLOCK_STATUS: u16 = 5;
    /// An error.
    pub const ERROR: u16 = (1 << 15) + 1;
    /// Reply flag: last chunk of this reply.
    pub const FLAG_DONE: u16 = 1;
}

/// Error values on the wire (Linux errno numbers, as the spec fixes them).
pub mod errno {
    /// Operation not permitted (write to a read-only export).
    pub const EPERM: u32 = 1;
    /// Input/output error.
    pub const EIO: u32 = 5;
    /// Invalid argument.
    pub const EINVAL: u32 = 22;
    /// No space left (write past the end).
    pub const ENOSPC: u32 = 28;
    /// Value too large (request over the maximum payload).
    pub const EOVERFLOW: u32 = 75;
    /// Operation not supported.
    pub const ENOTSUP: u32 = 95;
    /// Server shutting down.
    pub const ESHUTDOWN: u32 = 108;
}

/// The only metadata context this server offers.
pub const BASE_ALLOCATION: &str = "base:allocation";
/// The id we give `base:allocation` when a client selects it.
pub const BASE_ALLOCATION_ID: u32 = 1;
/// base:allocation extent flag: the range is a hole (not allocated).
pub const STATE_HOLE: u32 = 1 << 0;
/// base:allocation extent flag: the range reads as zeros.
pub const STATE_ZERO: u32 = 1 << 1;

/// Size of a transmission request header.
pub const REQUEST_LEN: usize = 28;
/// Size of an option request header (magic, option, length).
pub const OPTION_HEADER_LEN: usize = 16;

/// A transmission-phase request header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    /// Command flags.
    pub flags: u16,
    /// Command type.
    pub kind: u16,
    /// Opaque cookie echoed in the reply.
    pub cookie: u64,
    /// Byte offset.
    pub offset: u64,
    /// Byte length.
    pub length: u32,
}

/// A request header that is not a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("bad NBD request magic {0:#010x} (expected 0x25609513); the client is not speaking NBD transmission")]
pub struct BadMagic(pub u32);

impl Request {
    /// Decodes a 28-byte request header.
    pub fn decode(b: &[u8; REQUEST_LEN]) -> Result<Self, BadMagic> {
        let magic = be32(&b[0..4]);
        if magic != REQUEST_MAGIC {
            return Err(BadMagic(magic));
        }
        Ok(Self {
            flags: be16(&b[4..6]),
            kind: be16(&b[6..8]),
            cookie: be64(&b[8..16]),
            offset: be64(&b[16..24]),
            length: be32(&b[24..28]),
        })
    }

    /// Encodes the header (for tests and clients).
    #[cfg(test)]
    pub fn encode(&self) -> [u8; REQUEST_LEN] {
        let mut b = [0u8; REQUEST_LEN];
        b[0..4].copy_from_slice(&REQUEST_MAGIC.to_be_bytes());
        b[4..6].copy_from_slice(&self.flags.to_be_bytes());
        b[6..8].copy_from_slice(&self.kind.to_be_bytes());
        b[8..16].copy_from_slice(&self.cookie.to_be_bytes());
        b[16..24].copy_from_slice(&self.offset.to_be_bytes());
        b[24..28].copy_from_slice(&self.length.to_be_bytes());
        b
    }
}

/// Appends a simple reply header (16 bytes).
pub fn simple_reply(out: &mut Vec<u8>, error: u32, cookie: u64) {
    out.extend_from_slice(&SIMPLE_REPLY_MAGIC.to_be_bytes());
    out.extend_from_slice(&error.to_be_bytes());
    out.extend_from_slice(&cookie.to_be_bytes());
}

/// Appends a structured reply chunk header (20 bytes); `length` is the
/// payload that follows.
pub fn structured_header(out: &mut Vec<u8>, flags: u16, kind: u16, cookie: u64, length: u32) {
    out.extend_from_slice(&STRUCTURED_REPLY_MAGIC.to_be_bytes());
    out.extend_from_slice(&flags.to_be_bytes());
    out.extend_from_slice(&kind.to_be_bytes());
    out.extend_from_slice(&cookie.to_be_bytes());
    out.extend_from_slice(&length.to_be_bytes());
}

/// Appends a structured error chunk (with DONE) carrying `message`.
pub fn structured_error(out: &mut Vec<u8>, cookie: u64, error: u32, message: &str) {
    let msg = &message.as_bytes()[..message.len().min(4096)];
    structured_header(out, chunk::FLAG_DONE, chunk::ERROR, cookie, 6 + msg.len() as u32);
    out.extend_from_slice(&error.to_be_bytes());
    out.extend_from_slice(&(msg.len() as u16).to_be_bytes());
    out.extend_from_slice(msg);
}

/// Appends an option reply header; `length` bytes of data follow.
pub fn option_reply(out: &mut Vec<u8>, option: u32, kind: u32, length: u32) {
    out.extend_from_slice(&OPT_REPLY_MAGIC.to_be_bytes());
    out.extend_from_slice(&option.to_be_bytes());
    out.extend_from_slice(&kind.to_be_bytes());
    out.extend_from_slice(&length.to_be_bytes());
}

/// The data of NBD_OPT_INFO / NBD_OPT_GO.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InfoRequest {
    /// Export name (empty = the default export).
    pub name: String,
    /// Information types requested.
    pub requests: Vec<u16>,
}

/// The data of NBD_OPT_LIST_META_CONTEXT / NBD_OPT_SET_META_CONTEXT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetaRequest {
    /// Export name.
    pub name: String,
    /// Context queries.
    pub queries: Vec<String>,
}

/// Why option data could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OptionDataError {
    /// Lengths inside the data run past its end or leave bytes over.
    #[error("option data is malformed: {0}")]
    Malformed(&'static str),
    /// A name is not UTF-8.
    #[error("a name in the option data is not UTF-8")]
    NotUtf8,
}

struct Cursor<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], OptionDataError> {
        let end = self.pos.checked_add(n).ok_or(OptionDataError::Malformed(what))?;
        let s = self.data.get(self.pos..end).ok_or(OptionDataError::Malformed(what))?;
        self.pos = end;
        Ok(s)
    }
    fn u16(&mut self, what: &'static str) -> Result<u16, OptionDataError> {
        Ok(be16(self.take(2, what)?))
    }
    fn u32(&mut self, what: &'static str) -> Result<u32, OptionDataError> {
        Ok(be32(self.take(4, what)?))
    }
    fn string(&mut self, what: &'static str) -> Result<String, OptionDataError> {
        let n = self.u32(what)? as usize;
        let s = self.take(n, what)?;
        String::from_utf8(s.to_vec()).map_err(|_| OptionDataError::NotUtf8)
    }
    fn finish(&self, what: &'static str) -> Result<(), OptionDataError> {
        if self.pos == self.data.len() {
            Ok(())
        } else {
            Err(OptionDataError::Malformed(what))
        }
    }
}

impl InfoRequest {
    /// Decodes INFO/GO option data.
    pub fn decode(data: &[u8]) -> Result<Self, OptionDataError> {
        let mut c = Cursor { data, pos: 0 };
        let name = c.string("export name length")?;
        let n = c.u16("information request count")?;
        let mut requests = Vec::with_capacity(usize::from(n).min(64));
        for _ in 0..n {
            requests.push(c.u16("information request")?);
        }
        c.finish("trailing bytes after the information requests")?;
        Ok(Self { name, requests })
    }
}

impl MetaRequest {
    /// Decodes LIST/SET_META_CONTEXT option data.
    pub fn decode(data: &[u8]) -> Result<Self, OptionDataError> {
        let mut c = Cursor { data, pos: 0 };
        let name = c.string("export name length")?;
        let n = c.u32("query count")?;
        let mut queries = Vec::new();
        for _ in 0..n {
            queries.push(c.string("query length")?);
        }
        c.finish("trailing bytes after the queries")?;
        Ok(Self { name, queries })
    }
}

/// Which of `queries` select `base:allocation` (for SET: exact name or the
/// namespace `base:`; for LIST an empty query list means everything).
pub fn selects_base_allocation(queries: &[String], listing: bool) -> bool {
    if listing && queries.is_empty() {
        return true;
    }
    queries.iter().any(|q| q == BASE_ALLOCATION || (listing && q == "base:"))
}

/// Reads a big-endian u16 from the first two bytes.
pub fn be16(b: &[u8]) -> u16 {
    u16::from_be_bytes([b[0], b[1]])
}

/// Reads a big-endian u32 from the first four bytes.
pub fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

/// Reads a big-endian u64 from the first eight bytes.
pub fn be64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_be_bytes(a)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_round_trips_and_bad_magic_is_refused() {
        let r = Request { flags: cflag::FUA, kind: cmd::WRITE, cookie: 0xdead_beef_0102_0304, offset: 1 << 40, length: 65536 };
        let b = r.encode();
        assert_eq!(&b[0..4], &[0x25, 0x60, 0x95, 0x13]);
        assert_eq!(Request::decode(&b).unwrap(), r);
        let mut bad = b;
        bad[0] = 0;
        assert_eq!(Request::decode(&bad), Err(BadMagic(0x0060_9513)));
    }

    #[test]
    fn replies_have_the_spec_layout() {
        let mut out = Vec::new();
        simple_reply(&mut out, errno::EIO, 7);
        assert_eq!(out, [0x67, 0x44, 0x66, 0x98, 0, 0, 0, 5, 0, 0, 0, 0, 0, 0, 0, 7]);
        out.clear();
        structured_error(&mut out, 9, errno::EINVAL, "no");
        assert_eq!(out.len(), 20 + 6 + 2);
        assert_eq!(be32(&out[0..4]), STRUCTURED_REPLY_MAGIC);
        assert_eq!(be16(&out[4..6]), chunk::FLAG_DONE);
        assert_eq!(be16(&out[6..8]), chunk::ERROR);
        assert_eq!(be64(&out[8..16]), 9);
        assert_eq!(be32(&out[16..20]), 8);
        assert_eq!(be32(&out[20..24]), errno::EINVAL);
        assert_eq!(be16(&out[24..26]), 2);
        assert_eq!(&out[26..], b"no");
        out.clear();
        option_reply(&mut out, opt::GO, rep::ACK, 0);
        assert_eq!(be64(&out[0..8]), OPT_REPLY_MAGIC);
        assert_eq!(be32(&out[8..12]), opt::GO);
        assert_eq!(be32(&out[12..16]), rep::ACK);
    }

    #[test]
    fn info_and_meta_requests_decode_and_reject_bad_lengths() {
        let mut d = Vec::new();
        d.extend_from_slice(&4u32.to_be_bytes());
        d.extend_from_slice(b"disk");
        d.extend_from_slice(&2u16.to_be_bytes());
        d.extend_from_slice(&info::BLOCK_SIZE.to_be_bytes());
        d.extend_from_slice(&info::NAME.to_be_bytes());
        let r = InfoRequest::decode(&d).unwrap();
        assert_eq!(r.name, "disk");
        assert_eq!(r.requests, vec![info::BLOCK_SIZE, info::NAME]);
        assert!(InfoRequest::decode(&d[..d.len() - 1]).is_err());
        let mut longer = d.clone();
        longer.push(0);
        assert!(InfoRequest::decode(&longer).is_err());
        let mut huge = Vec::new();
        huge.extend_from_slice(&u32::MAX.to_be_bytes());
        assert!(InfoRequest::decode(&huge).is_err());

        let mut m = Vec::new();
        m.extend_from_slice(&0u32.to_be_bytes());
        m.extend_from_slice(&1u32.to_be_bytes());
        m.extend_from_slice(&(BASE_ALLOCATION.len() as u32).to_be_bytes());
        m.extend_from_slice(BASE_ALLOCATION.as_bytes());
        let q = MetaRequest::decode(&m).unwrap();
        assert_eq!(q.name, "");
        assert!(selects_base_allocation(&q.queries, false));
        assert!(selects_base_allocation(&[], true));
        assert!(!selects_base_allocation(&[], false));
        assert!(!selects_base_allocation(&["qemu:dirty-bitmap:x".into()], true));
        let mut bad = m.clone();
        bad[7] = 3; // three queries announced, one present
        assert!(MetaRequest::decode(&bad).is_err());
    }
}
