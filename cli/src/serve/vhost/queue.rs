//! The vhost-user-blk data plane on a reactor: pop descriptor chains from
//! the avail ring, turn them into card operations (zero-copy into guest
//! memory when every buffer is a whole number of blocks, else through DMA
//! bounce buffers), write status bytes and used entries, and notify the
//! guest (event-idx aware) once per poll.

use std::sync::atomic::Ordering;
use std::sync::mpsc::Sender;
use std::sync::Arc;

use iomemory::dma::DmaBuf;
use vhost_user_backend::{VringRwLock, VringT};
use virtio_bindings::virtio_blk::{VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK};
use virtio_queue::QueueT;
use vm_memory::{Bytes, GuestAddress};

use super::backend::{BlkBackend, GuestMem};
use super::blk::{self, Desc, GuestSeg, Kind, Parsed, SECTOR};
use crate::serve::reactor::{Op, OpKind, Owner, Part, Reactor, Seg, CHUNK, MAX_UNMAP_BLOCKS};

/// Chains taken from one queue per poll.
const BUDGET: usize = 64;
/// Largest single card submission (the VSL's request limit).
const MAX_PART: usize = 2 << 20;

/// A virtqueue served by this reactor.
pub struct VhostQueue {
    backend: Arc<BlkBackend>,
    queue: u16,
    vring: VringRwLock,
    mem: Option<GuestMem>,
    inflight: usize,
    stopping: Vec<Sender<()>>,
    signal: bool,
    /// Requests parsed but waiting for bounce buffers.
    stalled: Vec<(u16, blk::Request)>,
}

impl Reactor {
    /// Starts serving a virtqueue.
    pub(crate) fn vhost_start(&mut self, backend: Arc<BlkBackend>, queue: u16, vring: VringRwLock) {
        if let Err(e) = self.card_slot(&backend.export.card) {
            eprintln!("iomem serve: vhost export {}: {e}; queue {queue} not served", backend.export.name);
            return;
        }
        let q = VhostQueue { backend, queue, vring, mem: None, inflight: 0, stopping: Vec::new(), signal: false, stalled: Vec::new() };
        match self.vhost.iter().position(Option::is_none) {
            Some(i) => self.vhost[i] = Some(q),
            None => self.vhost.push(Some(q)),
        }
    }

    /// Stops serving a virtqueue once its in-flight requests are done.
    pub(crate) fn vhost_stop(&mut self, export: u64, queue: u16, ack: Sender<()>) {
        let found = self.vhost.iter_mut().flatten().find(|q| q.backend.export.id == export && q.queue == queue);
        match found {
            Some(q) => q.stopping.push(ack),
            None => {
                let _ = ack.send(());
            }
        }
    }

    /// Whether any queue uses `card`.
    pub(crate) fn vhost_uses_card(&self, card: u64) -> bool {
        self.vhost.iter().flatten().any(|q| q.backend.export.card.id == card)
    }

    /// Pops and starts requests on every queue; retires stopped queues.
    pub(crate) fn vhost_poll_queues(&mut self) -> bool {
        let draining = self.shared.draining.load(Ordering::Relaxed);
        let mut busy = false;
        for i in 0..self.vhost.len() {
            let Some(mut q) = self.vhost[i].take() else { continue };
            if !q.stopping.is_empty() {
                // Requests already taken from the ring are finished before
                // the queue is handed back (GET_VRING_BASE reports them as
                // consumed), including those still waiting for buffers.
                if !q.stalled.is_empty() {
                    busy |= self.vhost_take_requests(&mut q, i, false);
                }
                if q.inflight == 0 && q.stalled.is_empty() {
                    for a in q.stopping.drain(..) {
                        let _ = a.send(());
                    }
                    busy = true;
                    continue; // slot stays empty
                }
                self.vhost[i] = Some(q);
                continue;
            }
            let generation = q.backend.mem_generation.load(Ordering::Acquire);
            if q.mem.as_ref().map(|m| m.generation) != Some(generation) {
                q.mem = q.backend.memory();
            }
            if q.mem.is_some() {
                busy |= self.vhost_take_requests(&mut q, i, !draining);
            }
            self.vhost[i] = Some(q);
        }
        busy
    }

    /// Submits stalled requests, then (if `pop_new`) new chains.
    fn vhost_take_requests(&mut self, q: &mut VhostQueue, slot: usize, pop_new: bool) -> bool {
        let Some(mem) = q.mem.clone() else { return false };
        let mut busy = false;
        // Retry requests that waited for bounce buffers first.
        while let Some((head, req)) = q.stalled.pop() {
            if !self.vhost_submit(q, slot, &mem, head, req.clone()) {
                q.stalled.push((head, req));
                return busy;
            }
            busy = true;
        }
        if !pop_new {
            return busy;
        }
        let mut chains: Vec<(u16, Vec<Desc>)> = Vec::new();
        {
            let mut st = q.vring.get_mut();
            if !st.get_queue().ready() || !st.is_enabled() {
                return false;
            }
            let queue = st.get_queue_mut();
            while chains.len() < BUDGET {
                let Some(chain) = queue.pop_descriptor_chain(&*mem.reg.mem) else { break };
                let head = chain.head_index();
                let descs: Vec<Desc> = chain.map(|d| (d.addr().0, d.len(), d.is_write_only())).collect();
                chains.push((head, descs));
            }
        }
        for (head, descs) in chains {
            busy = true;
            match blk::parse(&mem.reg.mem, &descs, &q.backend.dev) {
                Parsed::Ok(req) => {
                    if !self.vhost_submit(q, slot, &mem, head, req.clone()) {
                        q.stalled.insert(0, (head, req));
                    }
                }
                Parsed::Fail { at, status, why } => {
                    q.backend.export.stats.errors.fetch_add(1, Ordering::Relaxed);
                    eprintln!("iomem serve: vhost export {}: request failed: {why}", q.backend.export.name);
                    let _ = mem.reg.mem.write_obj(status, GuestAddress(at));
                    used(q, head, 1);
                }
                Parsed::Unanswerable(why) => {
                    q.backend.export.stats.errors.fetch_add(1, Ordering::Relaxed);
                    eprintln!("iomem serve: vhost export {}: malformed chain dropped: {why}", q.backend.export.name);
                    used(q, head, 0);
                }
            }
        }
        busy
    }

    /// Turns a parsed request into an op; false if bounce buffers ran out.
    fn vhost_submit(&mut self, q: &mut VhostQueue, slot: usize, mem: &GuestMem, head: u16, req: blk::Request) -> bool {
        let card = q.backend.export.card.clone();
        let bs = u64::from(card.dev.block_size());
        let data_len: usize = req.segs.iter().map(|s| s.len).sum();
        let mut owner = Owner::Vhost { slot, head, status: req.status, used_len: 1 };
        match &req.kind {
            Kind::GetId => {
                let mut id = [0u8; blk::ID_BYTES];
                let name = q.backend.export.name.as_bytes();
                let n = name.len().min(blk::ID_BYTES);
                id[..n].copy_from_slice(&name[..n]);
                let mut at = 0;
                for s in &req.segs {
                    let _ = mem.reg.mem.write_slice(&id[at..at + s.len], GuestAddress(s.gpa));
                    at += s.len;
                }
                let _ = mem.reg.mem.write_obj(VIRTIO_BLK_S_OK as u8, GuestAddress(req.status));
                used(q, head, at as u32 + 1);
                return true;
            }
            Kind::Flush => {
                let mut op = self.new_op(card.id, OpKind::Flush, owner);
                op.parts.push(Part { lba: 0, blocks: 0, segs: 0..0 });
                op.keep = Some(mem.reg.clone());
                q.inflight += 1;
                self.start(op);
            }
            Kind::Discard(ranges) | Kind::WriteZeroes(ranges) => {
                let kind = if matches!(req.kind, Kind::Discard(_)) { OpKind::Unmap } else { OpKind::WriteZeroes };
                let mut op = self.new_op(card.id, kind, owner);
                for r in ranges {
                    let (mut lba, end) = (r.sector * SECTOR / bs, (r.sector * SECTOR + u64::from(r.sectors) * SECTOR) / bs);
                    while lba < end {
                        let n = MAX_UNMAP_BLOCKS.min(end - lba);
                        op.parts.push(Part { lba, blocks: n, segs: 0..0 });
                        lba += n;
                    }
                }
                op.keep = Some(mem.reg.clone());
                q.inflight += 1;
                self.start(op);
            }
            Kind::Read | Kind::Write => {
                let read = req.kind == Kind::Read;
                if let Owner::Vhost { used_len, .. } = &mut owner {
                    *used_len = if read { data_len as u32 + 1 } else { 1 };
                }
                let lba = req.sector * SECTOR / bs;
                let kind = if read { OpKind::Read } else { OpKind::Write };
                let zero_copy = req.segs.iter().all(|s| (s.len as u64).is_multiple_of(bs));
                let mut op = self.new_op(card.id, kind, owner);
                if zero_copy {
                    // The card reaches guest memory directly: it is registered
                    // with the card's IOVA space (IOVA = host address).
                    for s in &req.segs {
                        let mut off = 0;
                        while off < s.len {
                            let n = (s.len - off).min(MAX_PART);
                            op.segs.push(Seg { addr: s.host + off, iova: (s.host + off) as u64, len: n });
                            off += n;
                        }
                    }
                } else {
                    let Some(mut bufs) = self.bounce_bufs(card.id, data_len) else {
                        self.recycle(op);
                        return false;
                    };
                    if !read && !copy_guest_to_bufs(mem, &req.segs, &mut bufs) {
                        let _ = mem.reg.mem.write_obj(VIRTIO_BLK_S_IOERR as u8, GuestAddress(req.status));
                        self.recycle(op);
                        used(q, head, 1);
                        return true;
                    }
                    for (i, b) in bufs.iter().enumerate() {
                        let n = CHUNK.min(data_len - i * CHUNK);
                        op.segs.push(Seg { addr: b.as_ptr() as usize, iova: b.iova(), len: n });
                    }
                    op.bufs = bufs;
                    if read {
                        op.bounce = req.segs.iter().map(|s| (s.gpa, s.len)).collect();
                    }
                }
                // Group segments into submissions of at most MAX_PART bytes.
                let mut at = lba;
                let mut start = 0;
                let mut bytes = 0;
                for i in 0..op.segs.len() {
                    if bytes + op.segs[i].len > MAX_PART {
                        op.parts.push(Part { lba: at, blocks: bytes as u64 / bs, segs: start..i });
                        at += bytes as u64 / bs;
                        start = i;
                        bytes = 0;
                    }
                    bytes += op.segs[i].len;
                }
                op.parts.push(Part { lba: at, blocks: bytes as u64 / bs, segs: start..op.segs.len() });
                op.keep = Some(mem.reg.clone());
                q.inflight += 1;
                self.start(op);
            }
        }
        true
    }

    fn bounce_bufs(&mut self, card: u64, len: usize) -> Option<Vec<DmaBuf>> {
        let slot = self.cards.get(&card)?;
        let n = len.div_ceil(CHUNK);
        if slot.pool.available() < n {
            return None;
        }
        let mut v = Vec::with_capacity(n);
        for _ in 0..n {
            v.push(slot.pool.alloc()?);
        }
        Some(v)
    }

    /// Completes a virtio request: copy-back for bounced reads, status byte,
    /// used entry.
    pub(crate) fn vhost_complete(&mut self, op: &Op) {
        let Owner::Vhost { slot, head, status, used_len } = op.owner else { return };
        let Some(q) = self.vhost.get_mut(slot).and_then(|q| q.as_mut()) else { return };
        q.inflight = q.inflight.saturating_sub(1);
        let Some(mem) = q.mem.as_ref().map(|m| m.reg.clone()) else { return };
        let st = &q.backend.export.stats;
        let bytes: u64 = op.segs.iter().map(|s| s.len as u64).sum();
        let mut ok = op.failure.is_none();
        match op.kind {
            OpKind::Read => {
                st.reads.fetch_add(1, Ordering::Relaxed);
                st.read_bytes.fetch_add(bytes, Ordering::Relaxed);
                if ok && !op.bounce.is_empty() {
                    ok = copy_bufs_to_guest(&mem.mem, &op.bufs, &op.bounce);
                }
            }
            OpKind::Write => {
                st.writes.fetch_add(1, Ordering::Relaxed);
                st.write_bytes.fetch_add(bytes, Ordering::Relaxed);
            }
            OpKind::Flush => {
                st.flushes.fetch_add(1, Ordering::Relaxed);
            }
            OpKind::Unmap | OpKind::WriteZeroes => {
                st.unmaps.fetch_add(1, Ordering::Relaxed);
            }
        }
        if !ok {
            st.errors.fetch_add(1, Ordering::Relaxed);
        }
        let s = if ok { VIRTIO_BLK_S_OK } else { VIRTIO_BLK_S_IOERR } as u8;
        let _ = mem.mem.write_obj(s, GuestAddress(status));
        used(q, head, if ok { used_len } else { 1 });
    }

    /// Notifies guests of used entries added this iteration.
    pub(crate) fn vhost_signal(&mut self) {
        for q in self.vhost.iter_mut().flatten() {
            if q.signal {
                q.signal = false;
                if q.vring.needs_notification().unwrap_or(true) {
                    let _ = q.vring.signal_used_queue();
                }
            }
        }
    }

    /// Before sleeping: asks for kicks again; true if a queue already has
    /// new requests (then do not sleep).
    pub(crate) fn vhost_arm(&mut self) -> bool {
        let mut pending = false;
        for q in self.vhost.iter_mut().flatten() {
            if q.stopping.is_empty() && q.mem.is_some() {
                pending |= q.vring.enable_notification().unwrap_or(false);
            }
        }
        pending
    }

    /// After waking: polling again, kicks are not needed.
    pub(crate) fn vhost_disarm(&mut self) {
        for q in self.vhost.iter_mut().flatten() {
            if q.mem.is_some() {
                let _ = q.vring.disable_notification();
            }
        }
    }
}

fn used(q: &mut VhostQueue, head: u16, len: u32) {
    if q.vring.add_used(head, len).is_ok() {
        q.signal = true;
    }
}

fn copy_guest_to_bufs(mem: &GuestMem, segs: &[GuestSeg], bufs: &mut [DmaBuf]) -> bool {
    let mut tmp = Vec::new();
    for s in segs {
        let start = tmp.len();
        tmp.resize(start + s.len, 0);
        if mem.reg.mem.read_slice(&mut tmp[start..], GuestAddress(s.gpa)).is_err() {
            return false;
        }
    }
    for (b, chunk) in bufs.iter_mut().zip(tmp.chunks(CHUNK)) {
        if b.write_at(0, chunk).is_err() {
            return false;
        }
    }
    true
}

fn copy_bufs_to_guest(mem: &vm_memory::GuestMemoryMmap, bufs: &[DmaBuf], ranges: &[(u64, usize)]) -> bool {
    let total: usize = ranges.iter().map(|r| r.1).sum();
    let mut tmp = vec![0u8; total];
    for (b, chunk) in bufs.iter().zip(tmp.chunks_mut(CHUNK)) {
        if b.read_at(0, chunk).is_err() {
            return false;
        }
    }
    let mut at = 0;
    for &(gpa, len) in ranges {
        if mem.write_slice(&tmp[at..at + len], GuestAddress(gpa)).is_err() {
            return false;
        }
        at += len;
    }
    true
}
