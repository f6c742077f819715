//! The NBD transmission phase on a reactor: a non-blocking connection
//! state machine (header, payload, discard), requests turned into card
//! operations, and replies (simple or structured) written back.
//!
//! A hostile client cannot make the server write the wrong place or crash:
//! every request is range- and alignment-checked before anything is
//! submitted; a bad magic or an oversized write payload closes the
//! connection; a client that vanishes mid-request has its partial request
//! dropped (nothing was submitted for it) and its in-flight requests
//! completed into the void before the connection slot is freed.

use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use iomemory::blk::SubmitError;

use super::proto::{self, cflag, chunk, cmd, errno, Request, REQUEST_LEN};
use super::{NbdSession, Stream, MAX_PAYLOAD};
use crate::serve::reactor::{Failure, Op, OpKind, Owner, Part, Reactor, Seg, CHUNK, MAX_UNMAP_BLOCKS};
use crate::serve::ExportRt;

/// Receive buffer per connection.
const RX_BUF: usize = 256 * 1024;
/// Most requests in flight per connection; more are left unread.
const MAX_CONN_INFLIGHT: usize = 256;
/// Unsent reply bytes above which a connection stops reading requests.
const TX_BACKLOG: usize = 16 * 1024 * 1024;
/// Command flags this server understands.
const KNOWN_FLAGS: u16 = cflag::FUA | cflag::NO_HOLE | cflag::DF | cflag::REQ_ONE | cflag::FAST_ZERO;

enum RxState {
    Header,
    /// A write's payload is arriving into the op's buffers.
    Payload { op: Op, length: usize, done: usize },
    /// A refused write's payload is being skipped; then `error` is replied.
    Discard { req: Request, remaining: usize, error: u32 },
    /// A request waits for DMA buffers.
    Stalled(Request),
}

/// One client connection in the transmission phase.
pub struct NbdConn {
    stream: Stream,
    /// The export it uses.
    pub export: Arc<ExportRt>,
    structured: bool,
    base_allocation: bool,
    rx: Vec<u8>,
    rx_start: usize,
    rx_end: usize,
    state: RxState,
    tx: Vec<u8>,
    tx_pos: usize,
    inflight: usize,
    /// No more requests are read; close once replies are out.
    closing: bool,
    /// The socket is unusable: drop replies, close once nothing is in flight.
    dead: bool,
}

impl NbdConn {
    /// Descriptor to sleep on, if the connection still reads.
    pub fn wait_fd(&self) -> Option<RawFd> {
        (!self.closing && !self.dead).then(|| self.stream.as_raw_fd())
    }

    fn tx_backlog(&self) -> usize {
        self.tx.len() - self.tx_pos
    }
}

enum Step {
    Next,
    Stall,
    Stop,
}

impl Reactor {
    /// Takes a negotiated connection.
    pub(crate) fn nbd_add(&mut self, s: NbdSession) {
        if let Err(e) = s.stream.set_nonblocking(true) {
            eprintln!("iomem serve: NBD export {}: {e}; connection dropped", s.export.name);
            return;
        }
        if let Err(e) = self.card_slot(&s.export.card) {
            eprintln!("iomem serve: NBD export {}: {e}; connection dropped", s.export.name);
            return;
        }
        s.export.stats.connections.fetch_add(1, Ordering::Relaxed);
        let conn = NbdConn {
            stream: s.stream,
            export: s.export,
            structured: s.structured,
            base_allocation: s.base_allocation,
            rx: vec![0u8; RX_BUF],
            rx_start: 0,
            rx_end: 0,
            state: RxState::Header,
            tx: Vec::with_capacity(64 * 1024),
            tx_pos: 0,
            inflight: 0,
            closing: false,
            dead: false,
        };
        match self.nbd.iter().position(|c| c.is_none()) {
            Some(i) => self.nbd[i] = Some(conn),
            None => self.nbd.push(Some(conn)),
        }
    }

    /// Closes (after in-flight requests) every connection of an export.
    pub(crate) fn nbd_close_export(&mut self, export: u64) {
        for c in self.nbd.iter_mut().flatten() {
            if c.export.id == export {
                c.closing = true;
                c.state = RxState::Header;
            }
        }
    }

    /// Closes every connection to a card.
    pub(crate) fn nbd_close_card(&mut self, card: u64) {
        for c in self.nbd.iter_mut().flatten() {
            if c.export.card.id == card {
                c.closing = true;
                c.state = RxState::Header;
            }
        }
    }

    /// Whether any open connection uses `card`.
    pub(crate) fn nbd_uses_card(&self, card: u64) -> bool {
        self.nbd.iter().flatten().any(|c| c.export.card.id == card)
    }

    /// Reads and starts requests on every connection.
    pub(crate) fn nbd_poll_connections(&mut self) -> bool {
        let draining = self.shared.draining.load(Ordering::Relaxed);
        let mut busy = false;
        for i in 0..self.nbd.len() {
            let Some(mut c) = self.nbd[i].take() else { continue };
            if draining && !c.closing {
                c.closing = true;
                c.state = RxState::Header;
            }
            busy |= self.nbd_receive(&mut c, i);
            self.nbd[i] = Some(c);
        }
        busy
    }

    fn nbd_receive(&mut self, c: &mut NbdConn, ci: usize) -> bool {
        if c.closing || c.dead {
            return false;
        }
        let mut busy = false;
        if c.rx_start == c.rx_end {
            c.rx_start = 0;
            c.rx_end = 0;
        } else if c.rx_end == c.rx.len() || c.rx.len() - c.rx_end < REQUEST_LEN {
            c.rx.copy_within(c.rx_start..c.rx_end, 0);
            c.rx_end -= c.rx_start;
            c.rx_start = 0;
        }
        if c.rx_end < c.rx.len() {
            match c.stream.read(&mut c.rx[c.rx_end..]) {
                Ok(0) => {
                    // The client went away; a half-received request is dropped
                    // (nothing of it was submitted).
                    c.dead = true;
                    c.state = RxState::Header;
                    return true;
                }
                Ok(n) => {
                    c.rx_end += n;
                    busy = true;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock || e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => {
                    c.dead = true;
                    c.state = RxState::Header;
                    return true;
                }
            }
        }
        loop {
            if c.closing || c.dead || c.inflight >= MAX_CONN_INFLIGHT || c.tx_backlog() > TX_BACKLOG {
                break;
            }
            let avail = c.rx_end - c.rx_start;
            match std::mem::replace(&mut c.state, RxState::Header) {
                RxState::Header => {
                    if avail < REQUEST_LEN {
                        break;
                    }
                    let mut h = [0u8; REQUEST_LEN];
                    h.copy_from_slice(&c.rx[c.rx_start..c.rx_start + REQUEST_LEN]);
                    c.rx_start += REQUEST_LEN;
                    let req = match Request::decode(&h) {
                        Ok(r) => r,
                        Err(e) => {
                            eprintln!("iomem serve: NBD export {}: {e}; closing the connection", c.export.name);
                            c.closing = true;
                            break;
                        }
                    };
                    busy = true;
                    match self.nbd_request(c, ci, req) {
                        Step::Next => {}
                        Step::Stall => {
                            c.state = RxState::Stalled(req);
                            break;
                        }
                        Step::Stop => break,
                    }
                }
                RxState::Stalled(req) => match self.nbd_request(c, ci, req) {
                    Step::Next => busy = true,
                    Step::Stall => {
                        c.state = RxState::Stalled(req);
                        break;
                    }
                    Step::Stop => break,
                },
                RxState::Payload { mut op, length, mut done } => {
                    let n = avail.min(length - done);
                    if !copy_into_bufs(&mut op, done, &c.rx[c.rx_start..c.rx_start + n]) {
                        eprintln!("iomem serve: NBD export {}: write payload does not fit its buffers; closing", c.export.name);
                        c.closing = true;
                        break;
                    }
                    c.rx_start += n;
                    done += n;
                    if done < length {
                        c.state = RxState::Payload { op, length, done };
                        break;
                    }
                    busy = true;
                    c.inflight += 1;
                    self.start(op);
                }
                RxState::Discard { req, remaining, error } => {
                    let n = avail.min(remaining);
                    c.rx_start += n;
                    if n < remaining {
                        c.state = RxState::Discard { req, remaining: remaining - n, error };
                        break;
                    }
                    reply_error(c, &req, error, "write refused");
                }
            }
        }
        busy
    }

    /// Acts on one request header. For writes the payload follows in `rx`.
    fn nbd_request(&mut self, c: &mut NbdConn, ci: usize, req: Request) -> Step {
        let ex = c.export.clone();
        let bs = u64::from(ex.card.dev.block_size());
        let size = ex.card.dev.num_blocks() * bs;
        let is_write = matches!(req.kind, cmd::WRITE | cmd::TRIM | cmd::WRITE_ZEROES);
        if req.kind == cmd::DISC {
            c.closing = true;
            return Step::Stop;
        }
        if req.kind == cmd::WRITE && req.length > MAX_PAYLOAD {
            eprintln!(
                "iomem serve: NBD export {}: write of {} bytes exceeds the {MAX_PAYLOAD}-byte maximum; closing the connection",
                ex.name, req.length
            );
            c.closing = true;
            return Step::Stop;
        }
        let refuse = |c: &mut NbdConn, error: u32, msg: &str| -> Step {
            ex.stats.errors.fetch_add(1, Ordering::Relaxed);
            if req.kind == cmd::WRITE {
                c.state = RxState::Discard { req, remaining: req.length as usize, error };
            } else {
                reply_error(c, &req, error, msg);
            }
            Step::Next
        };
        if req.flags & !KNOWN_FLAGS != 0 {
            return refuse(c, errno::EINVAL, "unknown command flags");
        }
        if is_write && ex.read_only {
            return refuse(c, errno::EPERM, "the export is read-only");
        }
        if !matches!(req.kind, cmd::READ | cmd::WRITE | cmd::FLUSH | cmd::TRIM | cmd::WRITE_ZEROES | cmd::BLOCK_STATUS) {
            return refuse(c, errno::EINVAL, "command not supported");
        }
        if req.kind != cmd::FLUSH {
            if let Err((e, msg)) = check_range(req.offset, u64::from(req.length), bs, size, is_write) {
                return refuse(c, e, msg);
            }
        }
        let fua = req.flags & cflag::FUA != 0;
        let owner = Owner::Nbd { conn: ci, cookie: req.cookie, offset: req.offset, length: req.length, cmd: req.kind };
        let lba = req.offset / bs;
        let card_id = ex.card.id;
        match req.kind {
            cmd::READ | cmd::WRITE => {
                if req.length > MAX_PAYLOAD {
                    return refuse(c, errno::EOVERFLOW, "read larger than the maximum block size");
                }
                let Ok(slot) = self.card_slot(&ex.card) else {
                    return refuse(c, errno::ESHUTDOWN, "card is detaching");
                };
                let len = req.length as usize;
                let n = len.div_ceil(CHUNK);
                if slot.pool.available() < n {
                    return Step::Stall;
                }
                let mut bufs = Vec::with_capacity(n);
                for _ in 0..n {
                    match slot.pool.alloc() {
                        Some(b) => bufs.push(b),
                        None => return Step::Stall,
                    }
                }
                let kind = if req.kind == cmd::READ { OpKind::Read } else { OpKind::Write };
                let mut op = self.new_op(card_id, kind, owner);
                for (i, b) in bufs.iter().enumerate() {
                    let seg_len = CHUNK.min(len - i * CHUNK);
                    op.segs.push(Seg { addr: b.as_ptr() as usize, iova: b.iova(), len: seg_len });
                    op.parts.push(Part { lba: lba + (i * CHUNK) as u64 / bs, blocks: seg_len as u64 / bs, segs: i..i + 1 });
                }
                op.bufs = bufs;
                op.fua = fua && kind == OpKind::Write;
                if kind == OpKind::Write {
                    c.state = RxState::Payload { op, length: len, done: 0 };
                } else {
                    c.inflight += 1;
                    self.start(op);
                }
                Step::Next
            }
            cmd::FLUSH => {
                let mut op = self.new_op(card_id, OpKind::Flush, owner);
                op.parts.push(Part { lba: 0, blocks: 0, segs: 0..0 });
                c.inflight += 1;
                self.start(op);
                Step::Next
            }
            cmd::TRIM | cmd::WRITE_ZEROES => {
                let no_hole = req.kind == cmd::WRITE_ZEROES && req.flags & cflag::NO_HOLE != 0;
                if no_hole && req.flags & cflag::FAST_ZERO != 0 {
                    return refuse(c, errno::ENOTSUP, "zeroes without a hole cannot be written fast");
                }
                let blocks = u64::from(req.length) / bs;
                let mut op;
                if no_hole {
                    let Ok(slot) = self.card_slot(&ex.card) else {
                        return refuse(c, errno::ESHUTDOWN, "card is detaching");
                    };
                    let (addr, iova) = (slot.zero.as_ptr() as usize, slot.zero.iova());
                    op = self.new_op(card_id, OpKind::Write, owner);
                    let mut done = 0usize;
                    let total = req.length as usize;
                    while done < total {
                        let n = CHUNK.min(total - done);
                        let i = op.segs.len();
                        op.segs.push(Seg { addr, iova, len: n });
                        op.parts.push(Part { lba: lba + done as u64 / bs, blocks: n as u64 / bs, segs: i..i + 1 });
                        done += n;
                    }
                } else {
                    let kind = if req.kind == cmd::TRIM { OpKind::Unmap } else { OpKind::WriteZeroes };
                    op = self.new_op(card_id, kind, owner);
                    let mut at = 0;
                    while at < blocks {
                        let n = MAX_UNMAP_BLOCKS.min(blocks - at);
                        op.parts.push(Part { lba: lba + at, blocks: n, segs: 0..0 });
                        at += n;
                    }
                }
                op.fua = fua;
                c.inflight += 1;
                self.start(op);
                Step::Next
            }
            cmd::BLOCK_STATUS => {
                if !c.structured || !c.base_allocation {
                    return refuse(c, errno::EINVAL, "block status needs structured replies and the base:allocation context");
                }
                // Extents from the forward map: runs of mapped blocks are
                // data, runs of unmapped (never written or trimmed) blocks
                // are holes that read as zeros. At most 256 extents per
                // reply (the client asks again for the rest, as allowed).
                let first = req.offset / bs;
                let blocks = u64::from(req.length) / bs;
                let mut extents: Vec<(u32, u32)> = Vec::new();
                let mut lba = first;
                while lba < first + blocks && extents.len() < 256 {
                    let mapped = ex.card.dev.is_mapped(lba);
                    let start = lba;
                    while lba < first + blocks && ex.card.dev.is_mapped(lba) == mapped && (lba - start) * bs < u64::from(u32::MAX) - bs {
                        lba += 1;
                    }
                    let flags = if mapped { 0 } else { proto::STATE_HOLE | proto::STATE_ZERO };
                    extents.push((((lba - start) * bs) as u32, flags));
                }
                let n = if req.flags & cflag::REQ_ONE != 0 { 1 } else { extents.len() };
                proto::structured_header(&mut c.tx, chunk::FLAG_DONE, chunk::BLOCK_STATUS, req.cookie, 4 + 8 * n as u32);
                c.tx.extend_from_slice(&proto::BASE_ALLOCATION_ID.to_be_bytes());
                for (len, flags) in &extents[..n] {
                    c.tx.extend_from_slice(&len.to_be_bytes());
                    c.tx.extend_from_slice(&flags.to_be_bytes());
                }
                Step::Next
            }
            _ => refuse(c, errno::EINVAL, "command not supported"),
        }
    }

    /// Builds the reply of a finished request.
    pub(crate) fn nbd_complete(&mut self, op: &Op) {
        let Owner::Nbd { conn, cookie, offset, length, cmd: kind } = op.owner else { return };
        let Some(c) = self.nbd.get_mut(conn).and_then(|c| c.as_mut()) else { return };
        c.inflight = c.inflight.saturating_sub(1);
        let st = &c.export.stats;
        match kind {
            cmd::READ => {
                st.reads.fetch_add(1, Ordering::Relaxed);
                st.read_bytes.fetch_add(u64::from(length), Ordering::Relaxed);
            }
            cmd::WRITE => {
                st.writes.fetch_add(1, Ordering::Relaxed);
                st.write_bytes.fetch_add(u64::from(length), Ordering::Relaxed);
            }
            cmd::FLUSH => {
                st.flushes.fetch_add(1, Ordering::Relaxed);
            }
            _ => {
                st.unmaps.fetch_add(1, Ordering::Relaxed);
            }
        }
        if c.dead {
            return;
        }
        let req = Request { flags: 0, kind, cookie, offset, length };
        if let Some(f) = op.failure {
            st.errors.fetch_add(1, Ordering::Relaxed);
            let (e, msg) = failure_errno(f, kind);
            reply_error(c, &req, e, &msg);
            return;
        }
        if kind == cmd::READ {
            let len = length as usize;
            if c.structured {
                proto::structured_header(&mut c.tx, chunk::FLAG_DONE, chunk::OFFSET_DATA, cookie, 8 + length);
                c.tx.extend_from_slice(&offset.to_be_bytes());
            } else {
                proto::simple_reply(&mut c.tx, 0, cookie);
            }
            let start = c.tx.len();
            c.tx.resize(start + len, 0);
            let mut at = start;
            for (b, s) in op.bufs.iter().zip(&op.segs) {
                if b.read_at(0, &mut c.tx[at..at + s.len]).is_err() {
                    // Cannot happen (segments lie inside their buffers); if it
                    // did, the client must not get wrong data.
                    c.dead = true;
                    return;
                }
                at += s.len;
            }
        } else if c.structured {
            proto::structured_header(&mut c.tx, chunk::FLAG_DONE, chunk::NONE, cookie, 0);
        } else {
            proto::simple_reply(&mut c.tx, 0, cookie);
        }
    }

    /// Writes pending replies and frees finished connections.
    pub(crate) fn nbd_flush_and_reap(&mut self) -> bool {
        let mut busy = false;
        for slot in self.nbd.iter_mut() {
            let Some(c) = slot.as_mut() else { continue };
            while !c.dead && c.tx_pos < c.tx.len() {
                match c.stream.write(&c.tx[c.tx_pos..]) {
                    Ok(0) => c.dead = true,
                    Ok(n) => {
                        c.tx_pos += n;
                        busy = true;
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(_) => c.dead = true,
                }
            }
            if c.tx_pos == c.tx.len() || c.dead {
                c.tx.clear();
                c.tx_pos = 0;
            }
            if (c.closing || c.dead) && c.inflight == 0 && c.tx.is_empty() {
                c.export.stats.connections.fetch_sub(1, Ordering::Relaxed);
                *slot = None;
                busy = true;
            }
        }
        busy
    }
}

/// Checks a request's range: non-empty, block aligned, inside the device.
fn check_range(offset: u64, len: u64, bs: u64, size: u64, write: bool) -> Result<(), (u32, &'static str)> {
    if len == 0 {
        return Err((errno::EINVAL, "zero-length request"));
    }
    if !offset.is_multiple_of(bs) || !len.is_multiple_of(bs) {
        return Err((errno::EINVAL, "offset or length is not a multiple of the block size"));
    }
    match offset.checked_add(len) {
        Some(end) if end <= size => Ok(()),
        _ if write => Err((errno::ENOSPC, "request extends past the end of the export")),
        _ => Err((errno::EINVAL, "request extends past the end of the export")),
    }
}

fn failure_errno(f: Failure, kind: u16) -> (u32, String) {
    let e = match f {
        Failure::Submit(SubmitError::OutOfRange { .. }) if kind == cmd::WRITE => errno::ENOSPC,
        Failure::Submit(SubmitError::OutOfRange { .. } | SubmitError::Misaligned { .. } | SubmitError::Invalid(_)) => {
            errno::EINVAL
        }
        Failure::Submit(SubmitError::ReadOnly) => errno::EPERM,
        Failure::Submit(SubmitError::Offline) => errno::ESHUTDOWN,
        Failure::Submit(_) | Failure::Io(_) => errno::EIO,
    };
    let msg = match f {
        Failure::Submit(s) => s.to_string(),
        Failure::Io(i) => i.to_string(),
    };
    (e, msg)
}

fn reply_error(c: &mut NbdConn, req: &Request, error: u32, msg: &str) {
    if c.structured {
        proto::structured_error(&mut c.tx, req.cookie, error, msg);
    } else {
        proto::simple_reply(&mut c.tx, error, req.cookie);
    }
}

/// Copies `data` into the op's buffers starting at byte `at` of the
/// request; false if it does not fit (the request must then not be
/// submitted).
fn copy_into_bufs(op: &mut Op, mut at: usize, mut data: &[u8]) -> bool {
    while !data.is_empty() {
        let i = at / CHUNK;
        let off = at % CHUNK;
        let n = data.len().min(CHUNK - off);
        let Some(b) = op.bufs.get_mut(i) else { return false };
        if b.write_at(off, &data[..n]).is_err() {
            return false;
        }
        data = &data[n..];
        at += n;
    }
    true
}
