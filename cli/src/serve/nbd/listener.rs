//! NBD listeners: accept on TCP or a Unix socket, run the handshake on a
//! short-lived thread (bounded in number and time), then hand the socket to
//! a reactor.

use std::collections::BTreeSet;
use std::net::TcpListener;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixListener;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use super::handshake::{serve_handshake, Catalog, ExportInfo, HandshakeError};
use super::{NbdSession, Stream, MAX_PAYLOAD};
use crate::serve::config::ListenAddr;
use crate::serve::wait::{wait_readable, Waker};
use crate::serve::{ExportRt, ServiceCore};

/// Most handshakes in progress at once per listener; more are closed.
const MAX_HANDSHAKES: usize = 64;
/// A client has this long for each handshake read or write.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);

/// A running listener.
pub struct Listener {
    /// Export names it serves.
    pub names: Arc<Mutex<BTreeSet<String>>>,
    stop: Arc<AtomicBool>,
    waker: Arc<Waker>,
    thread: Option<JoinHandle<()>>,
    addr: ListenAddr,
}

enum Socket {
    Tcp(TcpListener),
    Unix(UnixListener),
}

impl Listener {
    /// Binds `addr` and starts accepting.
    pub fn start(addr: &ListenAddr, core: Arc<ServiceCore>) -> Result<Listener, String> {
        let socket = match addr {
            ListenAddr::Tcp(a) => Socket::Tcp(TcpListener::bind(a).map_err(|e| format!("NBD: cannot listen on {a}: {e}"))?),
            ListenAddr::Unix(p) => {
                if p.exists() {
                    // A stale socket from a killed server; a live one refuses
                    // connections no longer, so check before removing.
                    if std::os::unix::net::UnixStream::connect(p).is_ok() {
                        return Err(format!("NBD: {} is in use by another server", p.display()));
                    }
                    let _ = std::fs::remove_file(p);
                }
                if let Some(dir) = p.parent() {
                    let _ = std::fs::create_dir_all(dir);
                }
                Socket::Unix(UnixListener::bind(p).map_err(|e| format!("NBD: cannot listen on {}: {e}", p.display()))?)
            }
        };
        let names = Arc::new(Mutex::new(BTreeSet::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let waker = Arc::new(Waker::new().map_err(|e| format!("NBD listener: {e}"))?);
        let (n, s, w) = (names.clone(), stop.clone(), waker.clone());
        let thread = std::thread::Builder::new()
            .name(format!("iomem-nbd-{addr}"))
            .spawn(move || accept_loop(socket, n, s, w, core))
            .map_err(|e| format!("NBD listener thread: {e}"))?;
        Ok(Listener { names, stop, waker, thread: Some(thread), addr: addr.clone() })
    }

    /// Stops accepting (handshakes in progress finish or time out).
    pub fn stop(mut self) {
        self.stop.store(true, Ordering::SeqCst);
        self.waker.wake();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        if let ListenAddr::Unix(p) = &self.addr {
            let _ = std::fs::remove_file(p);
        }
    }
}

fn accept_loop(socket: Socket, names: Arc<Mutex<BTreeSet<String>>>, stop: Arc<AtomicBool>, waker: Arc<Waker>, core: Arc<ServiceCore>) {
    let in_progress = Arc::new(AtomicUsize::new(0));
    let fd = match &socket {
        Socket::Tcp(l) => l.as_raw_fd(),
        Socket::Unix(l) => l.as_raw_fd(),
    };
    while !stop.load(Ordering::SeqCst) {
        if wait_readable(&[fd, waker.raw_fd()], Duration::from_millis(500)).unwrap_or(0) == 0 {
            continue;
        }
        if stop.load(Ordering::SeqCst) {
            break;
        }
        let stream = match &socket {
            Socket::Tcp(l) => l.accept().map(|(s, _)| {
                let _ = s.set_nodelay(true);
                Stream::Tcp(s)
            }),
            Socket::Unix(l) => l.accept().map(|(s, _)| Stream::Unix(s)),
        };
        let Ok(stream) = stream else { continue };
        if in_progress.load(Ordering::SeqCst) >= MAX_HANDSHAKES {
            continue; // dropping the stream closes it
        }
        in_progress.fetch_add(1, Ordering::SeqCst);
        let catalog = ListenerCatalog { names: names.clone(), core: core.clone() };
        let counter = in_progress.clone();
        let spawned = std::thread::Builder::new().name("iomem-nbd-handshake".into()).spawn(move || {
            handshake_and_dispatch(stream, &catalog);
            counter.fetch_sub(1, Ordering::SeqCst);
        });
        if spawned.is_err() {
            in_progress.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

fn handshake_and_dispatch(mut stream: Stream, catalog: &ListenerCatalog) {
    if stream.set_timeouts(Some(HANDSHAKE_TIMEOUT)).is_err() {
        return;
    }
    match serve_handshake(&mut stream, catalog) {
        Ok(n) => {
            if stream.set_timeouts(None).is_err() {
                return;
            }
            catalog.core.dispatch_nbd(NbdSession {
                stream,
                export: n.export,
                structured: n.structured,
                base_allocation: n.base_allocation,
            });
        }
        Err(HandshakeError::Aborted | HandshakeError::Io(_)) => {}
        Err(e) => eprintln!("iomem serve: {e}"),
    }
}

struct ListenerCatalog {
    names: Arc<Mutex<BTreeSet<String>>>,
    core: Arc<ServiceCore>,
}

impl Catalog for ListenerCatalog {
    type Export = Arc<ExportRt>;

    fn find(&self, name: &str) -> Option<(ExportInfo, Arc<ExportRt>)> {
        let names = self.names.lock().ok()?;
        let name = if name.is_empty() && names.len() == 1 { names.iter().next()?.clone() } else { name.to_string() };
        if !names.contains(&name) {
            return None;
        }
        drop(names);
        let ex = self.core.export(&name)?;
        let info = ExportInfo {
            name: ex.name.clone(),
            description: ex.description.clone(),
            size: ex.card.dev.num_blocks() * u64::from(ex.card.dev.block_size()),
            block_size: ex.card.dev.block_size(),
            max_payload: MAX_PAYLOAD,
            read_only: ex.read_only,
        };
        Some((info, ex))
    }

    fn list(&self) -> Vec<(String, String)> {
        let names: Vec<String> = self.names.lock().map(|n| n.iter().cloned().collect()).unwrap_or_default();
        names
            .into_iter()
            .filter_map(|n| self.core.export(&n).map(|e| (n, e.description.clone())))
            .collect()
    }

    fn shutting_down(&self) -> bool {
        self.core.shared.draining.load(Ordering::SeqCst)
    }
}
