//! vhost-user-blk exports: a socket a VMM (QEMU, cloud-hypervisor) connects
//! to, served by `vhost-user-backend` for the control plane and by the
//! reactors for the data plane.

pub mod backend;
pub mod blk;
pub mod queue;

use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use vhost::vhost_user::Listener;
use vhost_user_backend::VhostUserDaemon;
use vm_memory::{GuestMemoryAtomic, GuestMemoryMmap};

use super::wait::{wait_readable, Waker};
use super::{ExportRt, ServiceCore};
use backend::BlkBackend;

/// A running vhost-user-blk export.
pub struct VhostExport {
    stop: Arc<AtomicBool>,
    waker: Arc<Waker>,
    shutdown: Arc<Mutex<Option<vhost_user_backend::ShutdownHandle>>>,
    thread: Option<JoinHandle<()>>,
    socket: PathBuf,
}

impl VhostExport {
    /// Listens on `socket` and serves VMMs one at a time (a VMM that
    /// disconnects can reconnect).
    pub fn start(export: Arc<ExportRt>, socket: &Path, queues: usize, core: &Arc<ServiceCore>) -> Result<VhostExport, String> {
        if queues == 0 || queues > 64 {
            return Err(format!("vhost-user-blk: {queues} queues requested; use 1 to 64"));
        }
        if socket.exists() {
            if std::os::unix::net::UnixStream::connect(socket).is_ok() {
                return Err(format!("vhost-user-blk: {} is in use by another server", socket.display()));
            }
            let _ = std::fs::remove_file(socket);
        }
        if let Some(dir) = socket.parent() {
            if !dir.as_os_str().is_empty() {
                let _ = std::fs::create_dir_all(dir);
            }
        }
        let listener = Listener::new(socket, true).map_err(|e| format!("vhost-user-blk: cannot listen on {}: {e}", socket.display()))?;
        let backend = BlkBackend::new(export, queues, core);
        let stop = Arc::new(AtomicBool::new(false));
        let waker = Arc::new(Waker::new().map_err(|e| e.to_string())?);
        let shutdown = Arc::new(Mutex::new(None));
        let (s, w, sh) = (stop.clone(), waker.clone(), shutdown.clone());
        let thread = std::thread::Builder::new()
            .name("iomem-vhost".into())
            .spawn(move || serve(listener, backend, s, w, sh))
            .map_err(|e| format!("vhost-user-blk thread: {e}"))?;
        Ok(VhostExport { stop, waker, shutdown, thread: Some(thread), socket: socket.to_path_buf() })
    }

    /// Disconnects the VMM (after in-flight requests) and stops listening.
    pub fn stop(mut self) {
        self.stop.store(true, Ordering::SeqCst);
        self.waker.wake();
        if let Some(h) = self.shutdown.lock().ok().and_then(|mut s| s.take()) {
            h.shutdown();
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_file(&self.socket);
    }
}

fn serve(
    mut listener: Listener,
    backend: Arc<BlkBackend>,
    stop: Arc<AtomicBool>,
    waker: Arc<Waker>,
    shutdown: Arc<Mutex<Option<vhost_user_backend::ShutdownHandle>>>,
) {
    let name = backend.export.name.clone();
    while !stop.load(Ordering::SeqCst) {
        if wait_readable(&[listener.as_raw_fd(), waker.raw_fd()], Duration::from_millis(500)).unwrap_or(0) == 0 {
            continue;
        }
        if stop.load(Ordering::SeqCst) {
            break;
        }
        let mem = GuestMemoryAtomic::new(GuestMemoryMmap::new());
        let mut daemon = match VhostUserDaemon::new(format!("iomem-vhost-{name}"), backend.clone(), mem) {
            Ok(d) => d,
            Err(e) => {
                eprintln!("iomem serve: vhost export {name}: {e}");
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
        };
        if let Err(e) = daemon.start(&mut listener) {
            eprintln!("iomem serve: vhost export {name}: accepting a VMM: {e}");
            continue;
        }
        if let Ok(mut s) = shutdown.lock() {
            *s = daemon.shutdown_handle();
        }
        if stop.load(Ordering::SeqCst) {
            daemon.request_shutdown();
        }
        backend.export.stats.connections.fetch_add(1, Ordering::Relaxed);
        eprintln!("iomem serve: vhost export {name}: VMM connected");
        if let Err(e) = daemon.wait() {
            eprintln!("iomem serve: vhost export {name}: connection ended: {e}");
        }
        if let Ok(mut s) = shutdown.lock() {
            *s = None;
        }
        // Stop this connection's vring worker threads first (dropping the
        // daemon joins them), so no late kick of the old connection can hand
        // a stale vring to a reactor after the queues were stopped.
        drop(daemon);
        backend.stop_all();
        backend.export.stats.connections.fetch_sub(1, Ordering::Relaxed);
        eprintln!("iomem serve: vhost export {name}: VMM disconnected");
    }
}
