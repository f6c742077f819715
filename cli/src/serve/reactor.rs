//! Reactor threads: each owns one I/O channel per card it serves, the
//! frontend connections and queues handed to it, and the requests in flight.
//!
//! A reactor is one poller in a [`PollGroup`] started by
//! [`iomemory::blk::spawn_reactors`]. Per iteration it takes new work from
//! its inbox, reads requests from its connections, submits, polls its
//! channels, and writes replies. It never blocks while I/O is in flight; once
//! idle for [`IDLE_SPIN`] it sleeps in `poll(2)` on its connections and
//! waker, waking at least every [`IDLE_TICK`] so the VSL's background work
//! still runs.

use std::collections::{HashMap, VecDeque};
use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant};

use iomemory::blk::{IoChannel, IoError, IoVec, PollGroup, PollStatus, SubmitError};
use iomemory::dma::{DmaBuf, DmaPool};

use super::nbd::conn::NbdConn;
use super::nbd::NbdSession;
use super::vhost::backend::{BlkBackend, RegisteredMem};
use super::vhost::queue::VhostQueue;
use super::wait::{wait_readable, Waker};
use super::CardRt;

/// Bytes per DMA buffer a request is carved into.
pub const CHUNK: usize = 128 * 1024;
/// DMA buffers per (reactor, card): 32 MiB.
pub const POOL_CHUNKS: usize = 256;
/// Largest unmap/write-zeroes range submitted at once, in blocks.
pub const MAX_UNMAP_BLOCKS: u64 = 1 << 16;
/// How long a reactor spins with nothing to do before it sleeps.
pub const IDLE_SPIN: Duration = Duration::from_micros(500);
/// An idle reactor yields its core once every this many empty polls.
pub const YIELD_EVERY: u64 = 16;
/// Longest sleep of an idle reactor.
pub const IDLE_TICK: Duration = Duration::from_millis(10);

/// Work handed to a reactor.
pub enum Msg {
    /// A negotiated NBD connection.
    Nbd(NbdSession),
    /// Close every connection of this export (after its in-flight requests).
    CloseExport(u64),
    /// Drop the channel of this card once nothing uses it, then acknowledge.
    ReleaseCard(u64, Sender<()>),
    /// Start polling a virtqueue.
    VhostStart {
        /// The export's backend.
        backend: Arc<BlkBackend>,
        /// Queue index.
        queue: u16,
        /// The vring.
        vring: vhost_user_backend::VringRwLock,
    },
    /// Stop polling a virtqueue once its requests completed, then acknowledge.
    VhostStop {
        /// Export id.
        export: u64,
        /// Queue index.
        queue: u16,
        /// Acknowledgement.
        ack: Sender<()>,
    },
}

/// The service's handle on one reactor.
pub struct ReactorHandle {
    inbox: std::sync::Mutex<Sender<Msg>>,
    waker: Arc<Waker>,
    /// Requests in flight plus open connections, for draining.
    pub busy: Arc<AtomicUsize>,
    /// Messages sent and not yet taken (checked before touching the inbox).
    pending: Arc<AtomicUsize>,
}

impl ReactorHandle {
    /// Sends work and wakes the reactor. A reactor that has exited drops it.
    pub fn send(&self, msg: Msg) {
        if let Ok(tx) = self.inbox.lock() {
            // A closed inbox means the reactor has stopped; the work is dropped
            // with it (sockets close, acknowledgements' senders drop).
            // Counted before it is queued, so the reactor never takes a
            // message it has not been told about.
            self.pending.fetch_add(1, Ordering::AcqRel);
            if tx.send(msg).is_err() {
                self.pending.fetch_sub(1, Ordering::AcqRel);
            }
        }
        self.waker.wake();
    }

    /// Wakes the reactor without sending anything.
    pub fn send_wake(&self) {
        self.waker.wake();
    }
}

/// Flags shared by the service and every reactor.
#[derive(Debug, Default)]
pub struct Shared {
    /// Stop reading new requests, finish those in flight, close connections.
    pub draining: AtomicBool,
}

/// How one request failed.
#[derive(Debug, Clone, Copy)]
pub enum Failure {
    /// Refused at submission.
    Submit(SubmitError),
    /// Failed on the device.
    Io(IoError),
}

/// What a request does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpKind {
    /// Read into the segments.
    Read,
    /// Write from the segments.
    Write,
    /// Flush.
    Flush,
    /// Unmap (discard).
    Unmap,
    /// Write zeroes (as an unmap).
    WriteZeroes,
}

/// One submission of a request: LBA, block count (unmap) and the segments
/// it carries.
#[derive(Debug, Clone)]
pub struct Part {
    /// First LBA.
    pub lba: u64,
    /// Blocks (unmap and write-zeroes only).
    pub blocks: u64,
    /// Segments of [`Op::segs`].
    pub segs: Range<usize>,
}

/// A memory segment: host address, IOVA, length.
#[derive(Debug, Clone, Copy)]
pub struct Seg {
    /// Host address.
    pub addr: usize,
    /// Device address.
    pub iova: u64,
    /// Bytes.
    pub len: usize,
}

/// Who gets the completion.
#[derive(Debug, Clone, Copy)]
pub enum Owner {
    /// An NBD request on a connection slot.
    Nbd {
        /// Connection slot.
        conn: usize,
        /// Client cookie.
        cookie: u64,
        /// Byte offset.
        offset: u64,
        /// Byte length.
        length: u32,
        /// NBD command.
        cmd: u16,
    },
    /// A virtio-blk request on a queue slot.
    Vhost {
        /// Queue slot in the reactor.
        slot: usize,
        /// Descriptor chain head.
        head: u16,
        /// Guest address of the status byte.
        status: u64,
        /// Used length to report on success.
        used_len: u32,
    },
}

/// A request in flight.
#[derive(Debug)]
pub struct Op {
    /// Card id.
    pub card: u64,
    /// What it does.
    pub kind: OpKind,
    /// Submissions.
    pub parts: Vec<Part>,
    /// Memory.
    pub segs: Vec<Seg>,
    /// Buffers owned by the request (returned to the pool when it ends).
    pub bufs: Vec<DmaBuf>,
    /// Flush after the main parts.
    pub fua: bool,
    /// Completion target.
    pub owner: Owner,
    /// First failure.
    pub failure: Option<Failure>,
    /// Guest ranges a bounced read is copied back to.
    pub bounce: Vec<(u64, usize)>,
    /// Guest memory registration the op's segments point into.
    pub keep: Option<Arc<RegisteredMem>>,
    next: usize,
    pending: u32,
    flushing: bool,
}

impl Op {
    fn new(card: u64, kind: OpKind, owner: Owner) -> Self {
        Self {
            card,
            kind,
            parts: Vec::new(),
            segs: Vec::new(),
            bufs: Vec::new(),
            fua: false,
            owner,
            failure: None,
            bounce: Vec::new(),
            keep: None,
            next: 0,
            pending: 0,
            flushing: false,
        }
    }
}

/// A card as one reactor sees it: its channel and DMA buffers.
pub struct CardSlot {
    /// This thread's channel.
    pub ch: IoChannel,
    /// DMA buffers for requests.
    pub pool: Arc<DmaPool>,
    /// One zero-filled buffer (writes of real zeroes).
    pub zero: DmaBuf,
    /// Requests in flight on this card.
    pub inflight: usize,
    /// Release requested: acknowledge once idle.
    pub release: Vec<Sender<()>>,
}

/// One reactor's state; lives on its thread.
pub struct Reactor {
    inbox: Receiver<Msg>,
    waker: Arc<Waker>,
    busy: Arc<AtomicUsize>,
    /// Shared service flags.
    pub shared: Arc<Shared>,
    /// Cards by id.
    pub cards: HashMap<u64, CardSlot>,
    /// Requests in flight (slot = completion context).
    pub ops: Vec<Option<Op>>,
    free_ops: Vec<usize>,
    spare: Vec<Op>,
    retry: VecDeque<usize>,
    completions: Vec<(u64, Result<(), IoError>)>,
    /// NBD connections.
    pub nbd: Vec<Option<NbdConn>>,
    /// Virtqueues.
    pub vhost: Vec<Option<VhostQueue>>,
    idle_since: Option<Instant>,
    idle_polls: u64,
    pending: Arc<AtomicUsize>,
    fds: Vec<i32>,
}

impl Reactor {
    /// Makes a reactor and the handle the service keeps.
    pub fn new(shared: Arc<Shared>) -> std::io::Result<(Reactor, ReactorHandle)> {
        let (tx, rx) = std::sync::mpsc::channel();
        let waker = Arc::new(Waker::new()?);
        let busy = Arc::new(AtomicUsize::new(0));
        let pending = Arc::new(AtomicUsize::new(0));
        let handle = ReactorHandle {
            inbox: std::sync::Mutex::new(tx),
            waker: waker.clone(),
            busy: busy.clone(),
            pending: pending.clone(),
        };
        let r = Reactor {
            inbox: rx,
            waker,
            busy,
            shared,
            cards: HashMap::new(),
            ops: Vec::new(),
            free_ops: Vec::new(),
            spare: Vec::new(),
            retry: VecDeque::new(),
            completions: Vec::with_capacity(256),
            nbd: Vec::new(),
            vhost: Vec::new(),
            idle_since: None,
            idle_polls: 0,
            pending,
            fds: Vec::new(),
        };
        Ok((r, handle))
    }

    /// Wraps the reactor as the one poller of a poll group.
    pub fn into_group(mut self) -> PollGroup {
        let mut g = PollGroup::new();
        g.add(Box::new(move || self.poll()));
        g
    }

    /// One iteration.
    pub fn poll(&mut self) -> PollStatus {
        let mut busy = self.take_messages();
        busy |= self.nbd_poll_connections();
        busy |= self.vhost_poll_queues();
        busy |= self.run_retry();
        busy |= self.poll_cards();
        self.vhost_signal();
        busy |= self.nbd_flush_and_reap();
        self.release_idle_cards();
        let load = self.ops.len() - self.free_ops.len() + self.nbd.iter().filter(|c| c.is_some()).count();
        self.busy.store(load, Ordering::Relaxed);
        if busy {
            self.idle_since = None;
            self.idle_polls = 0;
            return PollStatus::Busy;
        }
        self.idle_polls += 1;
        if self.idle_polls.is_multiple_of(YIELD_EVERY) {
            // On a machine with more runnable threads than cores (the
            // client on the same box, other services), let them run: a
            // spinning reactor would otherwise take the CPU its client
            // needs to produce the next request. Costs one syscall when
            // the core is free.
            std::thread::yield_now();
        }
        let in_flight = self.ops.len() > self.free_ops.len();
        if in_flight {
            return PollStatus::Idle;
        }
        // Read the clock only every 64 idle polls: it is most of an idle
        // poll's cost.
        if !self.idle_polls.is_multiple_of(64) {
            return PollStatus::Idle;
        }
        let since = *self.idle_since.get_or_insert_with(Instant::now);
        if since.elapsed() >= IDLE_SPIN {
            if self.vhost_arm() {
                self.vhost_disarm();
                return PollStatus::Busy;
            }
            self.sleep();
            self.vhost_disarm();
            self.idle_since = None;
        }
        PollStatus::Idle
    }

    fn sleep(&mut self) {
        self.fds.clear();
        self.fds.push(self.waker.raw_fd());
        for c in self.nbd.iter().flatten() {
            if let Some(fd) = c.wait_fd() {
                self.fds.push(fd);
            }
        }
        // An error here (EINTR is already 0) only shortens the sleep.
        let _ = wait_readable(&self.fds, IDLE_TICK);
        self.waker.clear();
    }

    fn take_messages(&mut self) -> bool {
        if self.pending.load(Ordering::Acquire) == 0 {
            return false;
        }
        let mut any = false;
        while let Ok(msg) = self.inbox.try_recv() {
            self.pending.fetch_sub(1, Ordering::AcqRel);
            any = true;
            match msg {
                Msg::Nbd(session) => self.nbd_add(session),
                Msg::CloseExport(id) => self.nbd_close_export(id),
                Msg::VhostStart { backend, queue, vring } => self.vhost_start(backend, queue, vring),
                Msg::VhostStop { export, queue, ack } => self.vhost_stop(export, queue, ack),
                Msg::ReleaseCard(id, ack) => {
                    self.nbd_close_card(id);
                    match self.cards.get_mut(&id) {
                        Some(slot) => slot.release.push(ack),
                        None => {
                            let _ = ack.send(());
                        }
                    }
                }
            }
        }
        any
    }

    /// The card slot for `card`, opening this thread's channel on first use.
    pub fn card_slot(&mut self, card: &Arc<CardRt>) -> Result<&mut CardSlot, String> {
        use std::collections::hash_map::Entry;
        match self.cards.entry(card.id) {
            Entry::Occupied(e) => Ok(e.into_mut()),
            Entry::Vacant(v) => {
                let ch = card.dev.channel().map_err(|e| format!("opening an I/O channel on card {}: {e}", card.name))?;
                let pool = card
                    .dev
                    .buffer_pool(CHUNK, POOL_CHUNKS)
                    .map_err(|e| format!("allocating DMA buffers for card {}: {e}", card.name))?;
                let mut zero = pool.alloc().ok_or_else(|| format!("card {}: empty DMA pool", card.name))?;
                zero.write_at(0, &vec![0u8; CHUNK]).map_err(|e| e.to_string())?;
                Ok(v.insert(CardSlot { ch, pool, zero, inflight: 0, release: Vec::new() }))
            }
        }
    }

    /// An empty op (vectors reused).
    pub fn new_op(&mut self, card: u64, kind: OpKind, owner: Owner) -> Op {
        match self.spare.pop() {
            Some(mut op) => {
                op.card = card;
                op.kind = kind;
                op.owner = owner;
                op
            }
            None => Op::new(card, kind, owner),
        }
    }

    /// Starts an op: queues it for submission.
    pub fn start(&mut self, op: Op) {
        if let Some(slot) = self.cards.get_mut(&op.card) {
            slot.inflight += 1;
        }
        let idx = match self.free_ops.pop() {
            Some(i) => {
                self.ops[i] = Some(op);
                i
            }
            None => {
                self.ops.push(Some(op));
                self.ops.len() - 1
            }
        };
        self.retry.push_back(idx);
    }

    fn run_retry(&mut self) -> bool {
        let mut any = false;
        while let Some(&idx) = self.retry.front() {
            match self.submit(idx) {
                Submitted::Blocked => break,
                Submitted::Done => {
                    any = true;
                    self.retry.pop_front();
                    self.maybe_finish(idx);
                }
            }
        }
        any
    }

    fn submit(&mut self, idx: usize) -> Submitted {
        let Some(op) = self.ops[idx].as_mut() else { return Submitted::Done };
        let Some(slot) = self.cards.get_mut(&op.card) else {
            op.failure.get_or_insert(Failure::Submit(SubmitError::Offline));
            op.next = op.parts.len();
            return Submitted::Done;
        };
        let ctx = idx as u64;
        while op.next < op.parts.len() {
            let part = &op.parts[op.next];
            let r = if op.flushing || op.kind == OpKind::Flush {
                slot.ch.flush(ctx)
            } else {
                match op.kind {
                    OpKind::Unmap => slot.ch.unmap(part.lba, part.blocks, ctx),
                    OpKind::WriteZeroes => slot.ch.write_zeroes(part.lba, part.blocks, ctx),
                    OpKind::Read | OpKind::Write => {
                        let segs = &op.segs[part.segs.clone()];
                        let one;
                        let many: Vec<IoVec>;
                        let iovs: &[IoVec] = if segs.len() == 1 {
                            one = [to_iovec(segs[0])];
                            &one
                        } else {
                            many = segs.iter().map(|s| to_iovec(*s)).collect();
                            &many
                        };
                        if op.kind == OpKind::Read {
                            slot.ch.read(part.lba, iovs, ctx)
                        } else {
                            slot.ch.write(part.lba, iovs, ctx)
                        }
                    }
                    OpKind::Flush => unreachable_flush(),
                }
            };
            match r {
                Ok(()) => {
                    op.next += 1;
                    op.pending += 1;
                }
                Err(e) if e.is_retryable() => return Submitted::Blocked,
                Err(e) => {
                    op.failure.get_or_insert(Failure::Submit(e));
                    op.next = op.parts.len();
                }
            }
        }
        Submitted::Done
    }

    fn poll_cards(&mut self) -> bool {
        let mut done = std::mem::take(&mut self.completions);
        for slot in self.cards.values_mut() {
            slot.ch.poll(&mut |ctx, result| done.push((ctx, result)));
        }
        let any = !done.is_empty();
        for (ctx, result) in done.drain(..) {
            let idx = ctx as usize;
            let Some(op) = self.ops.get_mut(idx).and_then(|o| o.as_mut()) else { continue };
            op.pending = op.pending.saturating_sub(1);
            if let Err(e) = result {
                op.failure.get_or_insert(Failure::Io(e));
            }
            self.maybe_finish(idx);
        }
        self.completions = done;
        any
    }

    /// Ends the op at `idx` if everything it submitted has completed, or
    /// moves it on to its FUA flush.
    fn maybe_finish(&mut self, idx: usize) {
        let Some(op) = self.ops[idx].as_mut() else { return };
        if op.pending > 0 || op.next < op.parts.len() {
            return;
        }
        if op.fua && !op.flushing && op.failure.is_none() {
            op.flushing = true;
            op.parts.truncate(1);
            op.next = 0;
            self.retry.push_back(idx);
            return;
        }
        let Some(op) = self.ops[idx].take() else { return };
        self.free_ops.push(idx);
        if let Some(slot) = self.cards.get_mut(&op.card) {
            slot.inflight = slot.inflight.saturating_sub(1);
        }
        match op.owner {
            Owner::Nbd { .. } => self.nbd_complete(&op),
            Owner::Vhost { .. } => self.vhost_complete(&op),
        }
        self.recycle(op);
    }

    /// Returns an op's vectors for reuse (and its buffers to their pool).
    pub fn recycle(&mut self, mut op: Op) {
        op.parts.clear();
        op.segs.clear();
        op.bufs.clear();
        op.failure = None;
        op.fua = false;
        op.next = 0;
        op.pending = 0;
        op.flushing = false;
        op.bounce.clear();
        op.keep = None;
        self.spare.push(op);
    }

    fn release_idle_cards(&mut self) {
        let idle: Vec<u64> = self
            .cards
            .iter()
            .filter(|(id, s)| !s.release.is_empty() && s.inflight == 0 && !self.nbd_uses_card(**id) && !self.vhost_uses_card(**id))
            .map(|(id, _)| *id)
            .collect();
        for id in idle {
            if let Some(slot) = self.cards.remove(&id) {
                let acks = slot.release;
                drop(slot.zero);
                drop(slot.ch);
                for a in acks {
                    let _ = a.send(());
                }
            }
        }
    }
}

enum Submitted {
    Done,
    Blocked,
}

fn unreachable_flush() -> Result<(), SubmitError> {
    // Flush ops are dispatched before this match; reaching here would be a
    // logic error, reported as an invalid request rather than a panic.
    Err(SubmitError::Invalid("flush dispatched as data"))
}

fn to_iovec(s: Seg) -> IoVec {
    // SAFETY: every Seg is built from memory registered with the card's IOVA
    // space that outlives the op: a DmaBuf the op owns (`Op::bufs`), the
    // card slot's zero buffer (dropped only after the slot has no op in
    // flight), or a guest memory region kept registered and mapped until
    // the queue using it is stopped. The host does not touch a buffer while
    // its op is in flight.
    unsafe { IoVec::new(s.addr as *mut u8, s.iova, s.len) }
}

