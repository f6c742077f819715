//! `iomem serve`: a long-running service that attaches cards and exports
//! them over NBD and vhost-user-blk, with a JSON-RPC control socket.
//!
//! Threads: reactors (one per core, [`iomemory::blk::spawn_reactors`]) own
//! the I/O channels and do all data-path work; listener threads accept and
//! run NBD handshakes; vhost-user threads run the vhost-user control
//! protocol; one thread serves the control socket. The main thread waits for
//! SIGINT/SIGTERM, then [`ServiceCore::shutdown`] stops accepting, drains,
//! and detaches every card with a checkpoint.

pub mod config;
pub mod nbd;
pub mod reactor;
pub mod rpc;
pub mod vhost;
pub mod wait;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use iomemory::blk::{spawn_reactors, BlockDevice, OpenOptions, PollGroup};
use serde_json::{json, Value};

use config::{parse_listen, CardSpec, ExportSpec, ListenAddr};
use nbd::listener::Listener;
use nbd::NbdSession;
use reactor::{Msg, Reactor, ReactorHandle, Shared};
use vhost::VhostExport;

/// How long shutdown waits for in-flight I/O before it stops anyway.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// An attached card.
pub struct CardRt {
    /// Unique id within this service.
    pub id: u64,
    /// Name exports and RPCs use.
    pub name: String,
    /// Image path.
    pub path: PathBuf,
    /// The block device.
    pub dev: Arc<BlockDevice>,
}

/// Live counters of one export.
#[derive(Debug, Default)]
pub struct ExportStats {
    /// Open connections (NBD) or 1 while a VMM is connected (vhost).
    pub connections: AtomicU64,
    /// Reads completed.
    pub reads: AtomicU64,
    /// Writes completed.
    pub writes: AtomicU64,
    /// Bytes read.
    pub read_bytes: AtomicU64,
    /// Bytes written.
    pub write_bytes: AtomicU64,
    /// Flushes completed.
    pub flushes: AtomicU64,
    /// Trims and write-zeroes completed.
    pub unmaps: AtomicU64,
    /// Requests failed or refused.
    pub errors: AtomicU64,
}

impl ExportStats {
    fn to_json(&self) -> Value {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        json!({
            "connections": g(&self.connections), "reads": g(&self.reads), "writes": g(&self.writes),
            "read_bytes": g(&self.read_bytes), "write_bytes": g(&self.write_bytes),
            "flushes": g(&self.flushes), "unmaps": g(&self.unmaps), "errors": g(&self.errors),
        })
    }
}

/// Where an export is served.
#[derive(Debug, Clone)]
pub enum ExportKind {
    /// NBD on a listener.
    Nbd(ListenAddr),
    /// vhost-user-blk on a Unix socket.
    VhostUserBlk {
        /// Socket path.
        socket: PathBuf,
        /// Virtqueues.
        queues: usize,
    },
}

/// A live export.
pub struct ExportRt {
    /// Unique id within this service.
    pub id: u64,
    /// Name.
    pub name: String,
    /// The card.
    pub card: Arc<CardRt>,
    /// Writes refused.
    pub read_only: bool,
    /// Shown to NBD clients.
    pub description: String,
    /// Where it is served.
    pub kind: ExportKind,
    /// Counters.
    pub stats: ExportStats,
}

#[derive(Default)]
struct State {
    cards: BTreeMap<String, Arc<CardRt>>,
    exports: BTreeMap<String, Arc<ExportRt>>,
    listeners: BTreeMap<ListenAddr, Listener>,
    vhost: BTreeMap<String, VhostExport>,
}

/// The service: cards, exports, reactors.
pub struct ServiceCore {
    /// Flags every reactor sees.
    pub shared: Arc<Shared>,
    reactors: Vec<ReactorHandle>,
    rr: AtomicUsize,
    next_id: AtomicU64,
    state: Mutex<State>,
    stop: Arc<AtomicBool>,
    threads: Mutex<Vec<JoinHandle<PollGroup>>>,
    /// Set by the `shutdown` RPC or a signal.
    pub shutdown_requested: AtomicBool,
}

impl ServiceCore {
    /// Starts `reactors` reactor threads (at least one).
    pub fn start(reactors: usize) -> Result<Arc<ServiceCore>, String> {
        let n = reactors.max(1);
        let shared = Arc::new(Shared::default());
        let mut handles = Vec::with_capacity(n);
        let mut parked = Vec::with_capacity(n);
        for i in 0..n {
            let (r, h) = Reactor::new(shared.clone()).map_err(|e| format!("creating reactor {i}: {e}"))?;
            parked.push(Some(r));
            handles.push(h);
        }
        let parked = Mutex::new(parked);
        let stop = Arc::new(AtomicBool::new(false));
        let threads = spawn_reactors(n, stop.clone(), move |i| {
            let r = parked.lock().ok().and_then(|mut p| p.get_mut(i).and_then(Option::take));
            match r {
                Some(r) => r.into_group(),
                None => PollGroup::new(),
            }
        });
        Ok(Arc::new(ServiceCore {
            shared,
            reactors: handles,
            rr: AtomicUsize::new(0),
            next_id: AtomicU64::new(1),
            state: Mutex::new(State::default()),
            stop,
            threads: Mutex::new(threads),
            shutdown_requested: AtomicBool::new(false),
        }))
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves consistent maps (every update
        // is a single insert/remove), so a poisoned lock is still usable.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Number of reactors.
    pub fn reactor_count(&self) -> usize {
        self.reactors.len()
    }

    /// Sends work to reactor `i`.
    pub fn send_to_reactor(&self, i: usize, msg: Msg) {
        if let Some(r) = self.reactors.get(i) {
            r.send(msg);
        }
    }

    /// Wakes reactor `i` if it sleeps.
    pub fn wake_reactor(&self, i: usize) {
        if let Some(r) = self.reactors.get(i) {
            r.send_wake();
        }
    }

    /// Hands a negotiated NBD connection to the next reactor.
    pub fn dispatch_nbd(&self, s: NbdSession) {
        let i = self.rr.fetch_add(1, Ordering::Relaxed) % self.reactors.len();
        self.reactors[i].send(Msg::Nbd(s));
    }

    /// An export by name.
    pub fn export(&self, name: &str) -> Option<Arc<ExportRt>> {
        self.state().exports.get(name).cloned()
    }

    /// Attaches a card (a dirty card is recovered by the attach scan;
    /// progress goes to stderr).
    pub fn attach_card(&self, spec: &CardSpec) -> Result<Value, String> {
        if spec.name.is_empty() || spec.name.len() > 128 {
            return Err("a card name must be 1 to 128 characters".into());
        }
        if self.state().cards.contains_key(&spec.name) {
            return Err(format!("a card named {:?} is already attached", spec.name));
        }
        if !spec.path.exists() {
            return Err(format!(
                "{}: no such card image (create one with `iomem sim create {}`)",
                spec.path.display(),
                spec.path.display()
            ));
        }
        let opts = OpenOptions { format_if_blank: spec.format_if_blank, ..Default::default() };
        let started = Instant::now();
        let mut last = Instant::now();
        let name = spec.name.clone();
        let mut progress = |done: u64, total: u64| {
            if total > 0 && (done == total || last.elapsed() >= Duration::from_secs(1)) {
                last = Instant::now();
                eprintln!("iomem serve: card {name}: attach {:.0}% ({done}/{total})", done as f64 * 100.0 / total as f64);
            }
        };
        let dev = BlockDevice::open(&spec.path, &opts, &mut progress).map_err(|e| format!("{}: {e}", spec.path.display()))?;
        let card = Arc::new(CardRt { id: self.next_id.fetch_add(1, Ordering::Relaxed), name: spec.name.clone(), path: spec.path.clone(), dev });
        eprintln!(
            "iomem serve: card {} attached ({} blocks of {} bytes) in {:.1} s",
            card.name,
            card.dev.num_blocks(),
            card.dev.block_size(),
            started.elapsed().as_secs_f64()
        );
        let mut st = self.state();
        if st.cards.contains_key(&spec.name) {
            return Err(format!("a card named {:?} is already attached", spec.name));
        }
        st.cards.insert(card.name.clone(), card.clone());
        Ok(card_json(&card, &st))
    }

    /// Detaches a card with a checkpoint. Its exports must be removed first,
    /// unless `force`, which removes them.
    pub fn detach_card(&self, name: &str, force: bool) -> Result<(), String> {
        let users: Vec<String> = {
            let st = self.state();
            if !st.cards.contains_key(name) {
                return Err(format!("no card named {name:?} is attached (see card_list)"));
            }
            st.exports.values().filter(|e| e.card.name == name).map(|e| e.name.clone()).collect()
        };
        if !users.is_empty() && !force {
            return Err(format!("card {name:?} is exported as {users:?}; remove those exports first or pass \"force\": true"));
        }
        for e in users {
            self.remove_export(&e)?;
        }
        let card = self.state().cards.remove(name).ok_or_else(|| format!("card {name:?} vanished"))?;
        self.release_card(&card)?;
        card.dev.detach().map_err(|e| format!("detaching card {name}: {e}"))?;
        eprintln!("iomem serve: card {name} detached (checkpoint written)");
        Ok(())
    }

    /// Asks every reactor to drop its channel on `card` and waits.
    fn release_card(&self, card: &CardRt) -> Result<(), String> {
        let (tx, rx) = std::sync::mpsc::channel();
        for r in &self.reactors {
            r.send(Msg::ReleaseCard(card.id, tx.clone()));
        }
        drop(tx);
        let deadline = Instant::now() + DRAIN_TIMEOUT;
        for _ in 0..self.reactors.len() {
            let left = deadline.saturating_duration_since(Instant::now());
            rx.recv_timeout(left)
                .map_err(|_| format!("card {}: I/O did not drain within {} s", card.name, DRAIN_TIMEOUT.as_secs()))?;
        }
        Ok(())
    }

    /// Adds an export.
    pub fn add_export(self: &Arc<Self>, spec: &ExportSpec) -> Result<Value, String> {
        let name = spec.name().to_string();
        if name.is_empty() || name.len() > 4096 {
            return Err("an export name must be 1 to 4096 bytes".into());
        }
        let mut st = self.state();
        if st.exports.contains_key(&name) {
            return Err(format!("an export named {name:?} already exists"));
        }
        let card = st
            .cards
            .get(spec.card())
            .cloned()
            .ok_or_else(|| format!("no card named {:?} is attached (attach it with card_attach)", spec.card()))?;
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        match spec {
            ExportSpec::Nbd { listen, read_only, description, .. } => {
                let addr = parse_listen(listen.as_deref())?;
                if !st.listeners.contains_key(&addr) {
                    let l = Listener::start(&addr, self.clone())?;
                    st.listeners.insert(addr.clone(), l);
                }
                let ex = Arc::new(ExportRt {
                    id,
                    name: name.clone(),
                    card,
                    read_only: *read_only,
                    description: description.clone().unwrap_or_default(),
                    kind: ExportKind::Nbd(addr.clone()),
                    stats: ExportStats::default(),
                });
                st.exports.insert(name.clone(), ex.clone());
                if let Some(l) = st.listeners.get(&addr) {
                    if let Ok(mut n) = l.names.lock() {
                        n.insert(name.clone());
                    }
                }
                eprintln!("iomem serve: NBD export {name} of card {} on {addr}", ex.card.name);
                Ok(export_json(&ex))
            }
            ExportSpec::VhostUserBlk { socket, queues, read_only, .. } => {
                let queues = queues.unwrap_or(self.reactors.len());
                let ex = Arc::new(ExportRt {
                    id,
                    name: name.clone(),
                    card,
                    read_only: *read_only,
                    description: String::new(),
                    kind: ExportKind::VhostUserBlk { socket: socket.clone(), queues },
                    stats: ExportStats::default(),
                });
                let v = VhostExport::start(ex.clone(), socket, queues, self)?;
                st.vhost.insert(name.clone(), v);
                st.exports.insert(name.clone(), ex.clone());
                eprintln!("iomem serve: vhost-user-blk export {name} of card {} on {} ({queues} queues)", ex.card.name, socket.display());
                Ok(export_json(&ex))
            }
        }
    }

    /// Removes an export: stops serving it and closes its connections after
    /// their in-flight requests.
    pub fn remove_export(&self, name: &str) -> Result<(), String> {
        let mut st = self.state();
        let ex = st.exports.remove(name).ok_or_else(|| format!("no export named {name:?} (see export_list)"))?;
        if let ExportKind::Nbd(addr) = &ex.kind {
            let empty = st
                .listeners
                .get(addr)
                .map(|l| l.names.lock().map(|mut n| {
                    n.remove(name);
                    n.is_empty()
                }).unwrap_or(false))
                .unwrap_or(false);
            if empty {
                if let Some(l) = st.listeners.remove(addr) {
                    drop(st);
                    l.stop();
                    st = self.state();
                }
            }
        }
        let vhost = st.vhost.remove(name);
        drop(st);
        if let Some(v) = vhost {
            v.stop();
        }
        for r in &self.reactors {
            r.send(Msg::CloseExport(ex.id));
        }
        eprintln!("iomem serve: export {name} removed");
        Ok(())
    }

    /// `card_list`.
    pub fn card_list(&self) -> Value {
        let st = self.state();
        Value::Array(st.cards.values().map(|c| card_json(c, &st)).collect())
    }

    /// `card_status`: geometry, VSL status and live export counters.
    pub fn card_status(&self, name: &str) -> Result<Value, String> {
        let st = self.state();
        let card = st.cards.get(name).ok_or_else(|| format!("no card named {name:?} is attached (see card_list)"))?;
        let mut v = card_json(card, &st);
        v["state"] = json!("Attached");
        v["capabilities"] = serde_json::to_value(card.dev.capabilities()).unwrap_or(Value::Null);
        v["vsl"] = serde_json::to_value(card.dev.status()).unwrap_or(Value::Null);
        v["export_stats"] =
            Value::Array(st.exports.values().filter(|e| e.card.id == card.id).map(|e| export_json(e)).collect());
        Ok(v)
    }

    /// `export_list`.
    pub fn export_list(&self) -> Value {
        Value::Array(self.state().exports.values().map(|e| export_json(e)).collect())
    }

    /// Stops accepting, drains in-flight I/O, stops the reactors and
    /// detaches every card with a checkpoint. Returns the problems seen.
    pub fn shutdown(&self) -> Vec<String> {
        let mut problems = Vec::new();
        let listeners = std::mem::take(&mut self.state().listeners);
        for (_, l) in listeners {
            l.stop();
        }
        let vhost = std::mem::take(&mut self.state().vhost);
        for (_, v) in vhost {
            v.stop();
        }
        self.shared.draining.store(true, Ordering::SeqCst);
        let deadline = Instant::now() + DRAIN_TIMEOUT;
        loop {
            for r in &self.reactors {
                r.send_wake();
            }
            let busy: usize = self.reactors.iter().map(|r| r.busy.load(Ordering::Relaxed)).sum();
            if busy == 0 {
                break;
            }
            if Instant::now() >= deadline {
                problems.push(format!("{busy} requests/connections still open after {} s", DRAIN_TIMEOUT.as_secs()));
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        self.stop.store(true, Ordering::SeqCst);
        let threads = std::mem::take(&mut *self.threads.lock().unwrap_or_else(|p| p.into_inner()));
        for t in threads {
            // Joining drops each reactor's poll group and with it its channels.
            if t.join().is_err() {
                problems.push("a reactor thread panicked".into());
            }
        }
        let mut st = self.state();
        st.exports.clear();
        let cards = std::mem::take(&mut st.cards);
        drop(st);
        for (name, card) in cards {
            match card.dev.detach() {
                Ok(()) => eprintln!("iomem serve: card {name} detached (checkpoint written)"),
                Err(e) => problems.push(format!("detaching card {name}: {e}")),
            }
        }
        problems
    }
}

fn card_json(c: &CardRt, st: &State) -> Value {
    let exports: Vec<&str> = st.exports.values().filter(|e| e.card.id == c.id).map(|e| e.name.as_str()).collect();
    json!({
        "name": c.name,
        "path": c.path,
        "block_size": c.dev.block_size(),
        "num_blocks": c.dev.num_blocks(),
        "capacity_bytes": c.dev.num_blocks() * u64::from(c.dev.block_size()),
        "exports": exports,
    })
}

fn export_json(e: &ExportRt) -> Value {
    let mut v = json!({
        "name": e.name,
        "card": e.card.name,
        "read_only": e.read_only,
        "stats": e.stats.to_json(),
    });
    match &e.kind {
        ExportKind::Nbd(a) => {
            v["type"] = json!("nbd");
            v["listen"] = json!(a.to_string());
        }
        ExportKind::VhostUserBlk { socket, queues } => {
            v["type"] = json!("vhost-user-blk");
            v["socket"] = json!(socket);
            v["queues"] = json!(queues);
        }
    }
    v
}
