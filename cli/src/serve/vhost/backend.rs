//! The vhost-user-blk backend: the control plane (features, config space,
//! guest memory, queue start/stop) for `vhost-user-backend`, with the data
//! plane handed to the reactors.
//!
//! Each virtqueue `q` is served by reactor `q % reactors`, which polls its
//! avail ring directly (SPDK-style poll mode). The library's worker thread
//! only receives kicks: the first kick of a started queue hands the vring to
//! its reactor, later kicks just wake that reactor if it went to sleep with
//! notifications enabled. Guest memory is registered with the card's IOVA
//! space so the card moves data straight to and from guest buffers.

use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use iomemory::dma::{IovaHandle, IovaSpace};
use vhost::vhost_user::message::VhostUserProtocolFeatures;
use vhost_user_backend::{VhostUserBackend, VringRwLock};
use vm_memory::{GuestAddressSpace, GuestMemoryAtomic, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};
use vmm_sys_util::event::{new_event_consumer_and_notifier, EventConsumer, EventFlag, EventNotifier};

use super::blk::BlkDevice;
use crate::serve::reactor::Msg;
use crate::serve::{ExportRt, ServiceCore};

/// Descriptors per virtqueue we accept.
pub const MAX_QUEUE_SIZE: usize = 1024;
/// How long stopping a queue waits for its in-flight requests.
const STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// Guest memory registered with the card for DMA; unregistered when the
/// last request using it has finished and a newer table replaced it.
pub struct RegisteredMem {
    space: Arc<IovaSpace>,
    handles: Mutex<Vec<IovaHandle>>,
    /// Keeps the mappings alive as long as the registration.
    pub mem: Arc<GuestMemoryMmap>,
}

impl std::fmt::Debug for RegisteredMem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegisteredMem").field("regions", &self.mem.num_regions()).finish()
    }
}

impl Drop for RegisteredMem {
    fn drop(&mut self) {
        let handles = std::mem::take(&mut *self.handles.lock().unwrap_or_else(|p| p.into_inner()));
        for h in handles {
            self.space.unregister(h);
        }
    }
}

/// The current guest memory table.
#[derive(Clone)]
pub struct GuestMem {
    /// Generation (changes with every memory table).
    pub generation: u64,
    /// Mappings plus their DMA registration.
    pub reg: Arc<RegisteredMem>,
}

/// The backend of one vhost-user-blk export.
pub struct BlkBackend {
    /// The export.
    pub export: Arc<ExportRt>,
    /// Device shape.
    pub dev: BlkDevice,
    core: Weak<ServiceCore>,
    me: Weak<BlkBackend>,
    mem: Mutex<Option<GuestMem>>,
    /// Generation of `mem`, read lock-free by reactors.
    pub mem_generation: AtomicU64,
    attached: Vec<AtomicBool>,
}

impl BlkBackend {
    /// A backend for `export` with `queues` virtqueues.
    pub fn new(export: Arc<ExportRt>, queues: usize, core: &Arc<ServiceCore>) -> Arc<BlkBackend> {
        let d = &export.card.dev;
        let dev = BlkDevice {
            capacity: d.num_blocks() * u64::from(d.block_size()) / super::blk::SECTOR,
            blk_size: d.block_size(),
            num_queues: queues as u16,
            read_only: export.read_only,
        };
        Arc::new_cyclic(|me| BlkBackend {
            export,
            dev,
            core: Arc::downgrade(core),
            me: me.clone(),
            mem: Mutex::new(None),
            mem_generation: AtomicU64::new(0),
            attached: (0..queues).map(|_| AtomicBool::new(false)).collect(),
        })
    }

    /// The current guest memory, if a table was set.
    pub fn memory(&self) -> Option<GuestMem> {
        self.mem.lock().ok().and_then(|m| m.clone())
    }

    fn reactor_of(&self, q: usize) -> usize {
        self.core.upgrade().map_or(0, |c| q % c.reactor_count())
    }

    /// Takes queue `q` away from its reactor, waiting for its in-flight
    /// requests to complete.
    pub fn stop_queue(&self, q: usize) -> io::Result<()> {
        let Some(flag) = self.attached.get(q) else { return Ok(()) };
        if !flag.swap(false, Ordering::SeqCst) {
            return Ok(());
        }
        let Some(core) = self.core.upgrade() else { return Ok(()) };
        let (tx, rx) = std::sync::mpsc::channel();
        core.send_to_reactor(self.reactor_of(q), Msg::VhostStop { export: self.export.id, queue: q as u16, ack: tx });
        rx.recv_timeout(STOP_TIMEOUT)
            .map_err(|_| io::Error::other(format!("virtqueue {q} did not drain within {} s", STOP_TIMEOUT.as_secs())))
    }

    /// Stops every queue (VMM disconnected or export removed) and forgets
    /// the guest memory.
    pub fn stop_all(&self) {
        for q in 0..self.attached.len() {
            if let Err(e) = self.stop_queue(q) {
                eprintln!("iomem serve: vhost export {}: {e}", self.export.name);
            }
        }
        if let Ok(mut m) = self.mem.lock() {
            *m = None;
        }
        self.mem_generation.fetch_add(1, Ordering::SeqCst);
    }
}

impl VhostUserBackend for BlkBackend {
    type Bitmap = ();
    type Vring = VringRwLock;

    fn num_queues(&self) -> usize {
        self.attached.len()
    }

    fn max_queue_size(&self) -> usize {
        MAX_QUEUE_SIZE
    }

    fn features(&self) -> u64 {
        self.dev.features()
    }

    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        VhostUserProtocolFeatures::CONFIG | VhostUserProtocolFeatures::MQ | VhostUserProtocolFeatures::REPLY_ACK
    }

    fn set_event_idx(&self, _enabled: bool) {
        // The library sets event-idx on each vring itself; the reactor uses
        // the vring's notification helpers, which honour it.
    }

    fn get_config(&self, offset: u32, size: u32) -> Vec<u8> {
        let c = self.dev.config_space();
        let start = (offset as usize).min(c.len());
        let end = start.saturating_add(size as usize).min(c.len());
        let mut out = c[start..end].to_vec();
        out.resize(size as usize, 0);
        out
    }

    fn update_memory(&self, atomic: GuestMemoryAtomic<GuestMemoryMmap>) -> io::Result<()> {
        let mem: Arc<GuestMemoryMmap> = atomic.memory().into_inner();
        let space = self.export.card.dev.card().dma().clone();
        let mut handles = Vec::new();
        for r in mem.iter() {
            let len = r.len() as usize;
            match space.register(r.as_ptr(), len) {
                Ok(h) => handles.push(h),
                Err(e) => {
                    for h in handles {
                        space.unregister(h);
                    }
                    return Err(io::Error::other(format!("registering guest memory for DMA: {e}")));
                }
            }
        }
        let reg = Arc::new(RegisteredMem { space, handles: Mutex::new(handles), mem });
        let generation = self.mem_generation.load(Ordering::SeqCst) + 1;
        if let Ok(mut m) = self.mem.lock() {
            *m = Some(GuestMem { generation, reg });
        }
        self.mem_generation.store(generation, Ordering::SeqCst);
        Ok(())
    }

    fn exit_event(&self, _thread_index: usize) -> Option<(EventConsumer, EventNotifier)> {
        new_event_consumer_and_notifier(EventFlag::NONBLOCK | EventFlag::CLOEXEC).ok()
    }

    fn stop_vring(&self, queue_index: u32) -> io::Result<()> {
        self.stop_queue(queue_index as usize)
    }

    fn reset_device(&self) {
        for q in 0..self.attached.len() {
            let _ = self.stop_queue(q);
        }
    }

    fn handle_event(
        &self,
        device_event: u16,
        _evset: vmm_sys_util::epoll::EventSet,
        vrings: &[VringRwLock],
        _thread_id: usize,
    ) -> io::Result<()> {
        let q = device_event as usize;
        let (Some(vring), Some(flag)) = (vrings.get(q), self.attached.get(q)) else { return Ok(()) };
        let Some(core) = self.core.upgrade() else { return Ok(()) };
        let r = self.reactor_of(q);
        if !flag.swap(true, Ordering::SeqCst) {
            let Some(me) = self.me.upgrade() else { return Ok(()) };
            core.send_to_reactor(r, Msg::VhostStart { backend: me, queue: q as u16, vring: vring.clone() });
        } else {
            core.wake_reactor(r);
        }
        Ok(())
    }
}
