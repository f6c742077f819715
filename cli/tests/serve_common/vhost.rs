//! A minimal virtio-blk driver for tests: the rust-vmm `vhost` crate's
//! `Frontend` speaks the vhost-user protocol, and this module plays the
//! guest: split virtqueues in a shared memfd, descriptor chains, avail/used
//! rings. It stands in for libblkio's `virtio-blk-vhost-user` driver, which
//! Debian bookworm does not package (no `libblkio-dev` in bookworm or
//! bookworm-backports), so the `blkio` crate cannot be built here.

use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd};
use std::path::Path;
use std::sync::atomic::{fence, Ordering};
use std::time::{Duration, Instant};

use vhost::vhost_user::message::{VhostUserConfigFlags, VhostUserProtocolFeatures};
use vhost::vhost_user::{Frontend, VhostUserFrontend};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use vmm_sys_util::eventfd::EventFd;

pub const T_IN: u32 = 0;
pub const T_OUT: u32 = 1;
pub const T_FLUSH: u32 = 4;
pub const T_GET_ID: u32 = 8;
pub const T_DISCARD: u32 = 11;
pub const T_WRITE_ZEROES: u32 = 13;
pub const S_OK: u8 = 0;
pub const S_IOERR: u8 = 1;
pub const S_UNSUPP: u8 = 2;

const F_VERSION_1: u64 = 1 << 32;
const F_EVENT_IDX: u64 = 1 << 29;
const F_PROTOCOL_FEATURES: u64 = 1 << 30;
const DESC_F_NEXT: u16 = 1;
const DESC_F_WRITE: u16 = 2;

/// Guest memory layout (guest physical = offset in the memfd).
pub const MEM_SIZE: usize = 256 << 20;
/// Rings of queue q live at q * RING_STRIDE.
const RING_STRIDE: u64 = 64 << 10;
/// Per-queue scratch (headers, status bytes) at SCRATCH + q * RING_STRIDE.
const SCRATCH: u64 = 1 << 20;
/// Data area of queue q: DATA + q * DATA_STRIDE.
pub const DATA: u64 = 8 << 20;
pub const DATA_STRIDE: u64 = 48 << 20;

struct Vq {
    size: u16,
    desc: u64,
    avail: u64,
    used: u64,
    avail_idx: u16,
    last_used: u16,
    next_desc: u16,
    kick: EventFd,
    _call: EventFd,
}

/// The "guest" side of a vhost-user-blk device.
pub struct Driver {
    fe: Frontend,
    base: *mut u8,
    _memfd: File,
    qs: Vec<Vq>,
    /// Device config space.
    pub config: Vec<u8>,
    /// Features acknowledged.
    pub features: u64,
}

impl Drop for Driver {
    fn drop(&mut self) {
        // SAFETY: unmaps the mapping made in `connect`, which nothing uses
        // after the driver is gone (the backend maps its own copy).
        unsafe {
            libc::munmap(self.base.cast(), MEM_SIZE);
        }
    }
}

impl Driver {
    /// Connects and sets up `queues` virtqueues of `size` entries.
    pub fn connect(socket: &Path, queues: usize, size: u16) -> Driver {
        let fe = Frontend::connect(socket, queues as u64).expect("connect to the vhost-user socket");
        // SAFETY: memfd_create with a valid NUL-terminated name.
        let fd = unsafe { libc::memfd_create(c"guest".as_ptr(), libc::MFD_CLOEXEC) };
        assert!(fd >= 0);
        // SAFETY: fd was just created and is owned by nobody else.
        let memfd = unsafe { File::from_raw_fd(fd) };
        memfd.set_len(MEM_SIZE as u64).unwrap();
        // SAFETY: a fresh shared mapping of our own memfd, checked below.
        let base = unsafe {
            libc::mmap(std::ptr::null_mut(), MEM_SIZE, libc::PROT_READ | libc::PROT_WRITE, libc::MAP_SHARED, fd, 0)
        };
        assert_ne!(base, libc::MAP_FAILED);
        let base = base.cast::<u8>();
        let mut fe = fe;
        fe.set_owner().unwrap();
        let offered = fe.get_features().unwrap();
        let features = offered & (F_VERSION_1 | F_EVENT_IDX | F_PROTOCOL_FEATURES | (1 << 12) | (1 << 13) | (1 << 14) | (1 << 9) | (1 << 6) | (1 << 2) | (1 << 1));
        assert_ne!(features & F_PROTOCOL_FEATURES, 0, "backend must offer protocol features");
        let pf = fe.get_protocol_features().unwrap();
        fe.set_protocol_features(pf & (VhostUserProtocolFeatures::CONFIG | VhostUserProtocolFeatures::MQ)).unwrap();
        assert!(fe.get_queue_num().unwrap() >= queues as u64);
        fe.set_features(features).unwrap();
        let (_, config) = fe.get_config(0, 60, VhostUserConfigFlags::WRITABLE, &[0u8; 60]).unwrap();
        let region = VhostUserMemoryRegionInfo {
            guest_phys_addr: 0,
            memory_size: MEM_SIZE as u64,
            userspace_addr: base as u64,
            mmap_offset: 0,
            mmap_handle: memfd.as_raw_fd(),
        };
        fe.set_mem_table(&[region]).unwrap();
        let mut qs = Vec::new();
        for q in 0..queues {
            let desc = q as u64 * RING_STRIDE;
            let avail = desc + 16 * u64::from(size);
            let used = (avail + 6 + 2 * u64::from(size) + 3) & !3;
            let kick = EventFd::new(libc::EFD_NONBLOCK).unwrap();
            let call = EventFd::new(libc::EFD_NONBLOCK).unwrap();
            fe.set_vring_num(q, size).unwrap();
            let cfg = VringConfigData {
                queue_max_size: size,
                queue_size: size,
                flags: 0,
                desc_table_addr: base as u64 + desc,
                used_ring_addr: base as u64 + used,
                avail_ring_addr: base as u64 + avail,
                log_addr: None,
            };
            fe.set_vring_addr(q, &cfg).unwrap();
            fe.set_vring_base(q, 0).unwrap();
            fe.set_vring_call(q, &call).unwrap();
            fe.set_vring_kick(q, &kick).unwrap();
            fe.set_vring_enable(q, true).unwrap();
            qs.push(Vq { size, desc, avail, used, avail_idx: 0, last_used: 0, next_desc: 0, kick, _call: call });
        }
        Driver { fe, base, _memfd: memfd, qs, config: config.to_vec(), features }
    }

    /// Writes guest memory.
    pub fn write_mem(&self, gpa: u64, data: &[u8]) {
        assert!(gpa as usize + data.len() <= MEM_SIZE);
        // SAFETY: in bounds of our mapping (checked above); the device only
        // reads buffers we hand it after this write, ordered by the fence in
        // `submit`.
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), self.base.add(gpa as usize), data.len()) }
    }

    /// Reads guest memory.
    pub fn read_mem(&self, gpa: u64, len: usize) -> Vec<u8> {
        assert!(gpa as usize + len <= MEM_SIZE);
        let mut v = vec![0u8; len];
        // SAFETY: in bounds of our mapping; called after the device
        // completed the request that wrote it (acquire fence in `wait`).
        unsafe { std::ptr::copy_nonoverlapping(self.base.add(gpa as usize), v.as_mut_ptr(), len) }
        v
    }

    fn put16(&self, gpa: u64, v: u16) {
        self.write_mem(gpa, &v.to_le_bytes());
    }

    fn get16(&self, gpa: u64) -> u16 {
        // SAFETY: an aligned u16 inside our mapping, read volatile because
        // the device updates it concurrently.
        unsafe { std::ptr::read_volatile(self.base.add(gpa as usize).cast::<u16>()) }
    }

    /// Places a descriptor chain on queue `q` and kicks: returns the head.
    /// Descriptors are taken round-robin from the table.
    pub fn submit(&mut self, q: usize, descs: &[(u64, u32, bool)]) -> u16 {
        let head = self.qs[q].next_desc;
        let size = self.qs[q].size;
        self.qs[q].next_desc = (head + descs.len() as u16) % size;
        self.submit_at(q, head, descs)
    }

    /// Places a chain using descriptors `first..first + descs.len()` (the
    /// caller owns them until the chain completes) and kicks when the
    /// device asks for it (event-idx) or always (without event-idx).
    pub fn submit_at(&mut self, q: usize, first: u16, descs: &[(u64, u32, bool)]) -> u16 {
        let vq = &self.qs[q];
        let size = vq.size;
        let (desc_base, avail, used) = (vq.desc, vq.avail, vq.used);
        for (i, &(addr, len, write)) in descs.iter().enumerate() {
            let idx = (first + i as u16) % size;
            let next = (idx + 1) % size;
            let mut flags = if write { DESC_F_WRITE } else { 0 };
            if i + 1 < descs.len() {
                flags |= DESC_F_NEXT;
            }
            let mut d = [0u8; 16];
            d[0..8].copy_from_slice(&addr.to_le_bytes());
            d[8..12].copy_from_slice(&len.to_le_bytes());
            d[12..14].copy_from_slice(&flags.to_le_bytes());
            d[14..16].copy_from_slice(&next.to_le_bytes());
            self.write_mem(desc_base + 16 * u64::from(idx), &d);
        }
        let vq = &mut self.qs[q];
        let old = vq.avail_idx;
        let slot = old % size;
        vq.avail_idx = old.wrapping_add(1);
        let new_idx = vq.avail_idx;
        self.put16(avail + 4 + 2 * u64::from(slot), first);
        fence(Ordering::Release);
        self.put16(avail + 2, new_idx);
        fence(Ordering::SeqCst);
        let kick = if self.features & F_EVENT_IDX != 0 {
            // virtio 1.x vring_need_event(avail_event, new, old).
            let event = self.get16(used + 4 + 8 * u64::from(size));
            new_idx.wrapping_sub(event).wrapping_sub(1) < new_idx.wrapping_sub(old)
        } else {
            true
        };
        if kick {
            self.qs[q].kick.write(1).unwrap();
        }
        first
    }

    /// Whether queue `q` has a used entry waiting.
    pub fn has_used(&self, q: usize) -> bool {
        self.get16(self.qs[q].used + 2) != self.qs[q].last_used
    }

    /// Waits (bounded) for the next used entry of queue `q`: (head, len).
    pub fn wait(&mut self, q: usize) -> (u16, u32) {
        let deadline = Instant::now() + Duration::from_secs(20);
        let used = self.qs[q].used;
        while self.get16(used + 2) == self.qs[q].last_used {
            assert!(Instant::now() < deadline, "no completion on queue {q}");
            std::hint::spin_loop();
        }
        fence(Ordering::Acquire);
        let vq = &mut self.qs[q];
        let slot = u64::from(vq.last_used % vq.size);
        vq.last_used = vq.last_used.wrapping_add(1);
        let e = self.read_mem(used + 4 + 8 * slot, 8);
        (u16::from_le_bytes([e[0], e[1]]), u32::from_le_bytes([e[4], e[5], e[6], e[7]]))
    }

    /// Scratch address for request `i` (header at +0, status at +16) of queue `q`.
    pub fn scratch(q: usize, i: usize) -> u64 {
        SCRATCH + q as u64 * RING_STRIDE + (i as u64 % 1024) * 32
    }

    /// Writes a request header at `at`.
    pub fn header(&self, at: u64, kind: u32, sector: u64) {
        let mut h = [0u8; 16];
        h[0..4].copy_from_slice(&kind.to_le_bytes());
        h[8..16].copy_from_slice(&sector.to_le_bytes());
        self.write_mem(at, &h);
    }

    /// One request with data buffers `bufs` (device-writable for reads and
    /// GET_ID): returns (status, used length).
    pub fn request(&mut self, q: usize, kind: u32, sector: u64, bufs: &[(u64, u32)]) -> (u8, u32) {
        let at = Self::scratch(q, 0);
        self.header(at, kind, sector);
        self.write_mem(at + 16, &[0xff]);
        let write = matches!(kind, T_IN | T_GET_ID);
        let mut d = vec![(at, 16, false)];
        d.extend(bufs.iter().map(|&(a, l)| (a, l, write)));
        d.push((at + 16, 1, true));
        let head = self.submit(q, &d);
        let (h, len) = self.wait(q);
        assert_eq!(h, head);
        (self.read_mem(at + 16, 1)[0], len)
    }

    /// Chains made available on queue `q` so far (the avail index).
    pub fn submitted(&self, q: usize) -> u16 {
        self.qs[q].avail_idx
    }

    /// Frontend access for protocol-level tests.
    pub fn frontend(&mut self) -> &mut Frontend {
        &mut self.fe
    }
}
