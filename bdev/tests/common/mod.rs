//! Shared helpers: emulated cards, "SPDK memory" buffers, and a driver that
//! submits bdev I/O descriptors and polls them to completion the way the
//! shim's poller does.

#![allow(dead_code)]

use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use iomemory::blk::{BlockDevice, OpenOptions};
use iomemory::card::Card;
use iomemory::emu::{small_test_config, Backing, EmuOptions, NandArray};
use iomemory_bdev::io::spdk_io_type;
use iomemory_bdev::{
    BdevChannel, BdevDevice, CardSource, CreateParams, IoDesc, IoStatus, Submitted,
};

/// A page-aligned heap buffer standing in for SPDK's hugepage memory.
pub struct HostBuf {
    ptr: *mut u8,
    len: usize,
}

impl HostBuf {
    pub fn new(len: usize) -> Self {
        let layout = Layout::from_size_align(len, 4096).unwrap();
        // SAFETY: non-zero size, valid alignment.
        let ptr = unsafe { alloc_zeroed(layout) };
        assert!(!ptr.is_null());
        Self { ptr, len }
    }

    pub fn ptr(&self) -> *mut u8 {
        self.ptr
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn iov(&self, off: usize, len: usize) -> libc::iovec {
        assert!(off + len <= self.len);
        libc::iovec {
            iov_base: self.ptr.wrapping_add(off).cast(),
            iov_len: len,
        }
    }

    pub fn fill(&mut self, data: &[u8]) {
        assert!(data.len() <= self.len);
        // SAFETY: in bounds; no I/O in flight when tests call this.
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), self.ptr, data.len()) };
    }

    pub fn bytes(&self, len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        // SAFETY: in bounds; no I/O in flight when tests call this.
        unsafe { std::ptr::copy_nonoverlapping(self.ptr, v.as_mut_ptr(), len) };
        v
    }
}

impl Drop for HostBuf {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout.
        unsafe { dealloc(self.ptr, Layout::from_size_align(self.len, 4096).unwrap()) };
    }
}

/// Deterministic bytes for block `lba` of generation `gen`.
pub fn pattern(lba: u64, gen: u64, len: usize) -> Vec<u8> {
    let mut x = lba.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ gen.wrapping_mul(0xdead_beef) ^ 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

pub fn params(name: &str, path: &Path) -> CreateParams {
    CreateParams {
        name: name.into(),
        source: CardSource::Image(path.to_path_buf()),
        format_if_blank: true,
        sector_size: 4096,
        capacity: None,
        queue_depth: None,
        max_channels: None,
    }
}

/// A formatted in-memory card as a bdev device.
pub fn memory_device(seed: u64, sector_size: u32) -> Arc<BdevDevice> {
    let nand = NandArray::create(&small_test_config(seed), Backing::Memory).unwrap();
    let card = Card::open_emulated(nand, EmuOptions::default()).unwrap();
    let mut opts = OpenOptions {
        format_if_blank: true,
        ..Default::default()
    };
    opts.format.sector_size = sector_size;
    let blk = BlockDevice::attach(card, &opts, &mut |_, _| {}).unwrap();
    let mut p = params("mem0", Path::new("/memory"));
    p.sector_size = sector_size;
    BdevDevice::with_block_device(p, blk).unwrap()
}

/// A blank emulated card image file.
pub fn image(dir: &Path, seed: u64) -> PathBuf {
    let path = dir.join(format!("card{seed}.img"));
    let nand = NandArray::create(&small_test_config(seed), Backing::File(path.clone())).unwrap();
    drop(nand);
    path
}

pub fn desc(io_type: u32, lba: u64, blocks: u64, iovs: &[libc::iovec], token: u64) -> IoDesc {
    IoDesc {
        size: std::mem::size_of::<IoDesc>() as u32,
        io_type,
        offset_blocks: lba,
        num_blocks: blocks,
        iovs: if iovs.is_empty() {
            std::ptr::null()
        } else {
            iovs.as_ptr()
        },
        iovcnt: iovs.len() as u32,
        reserved: 0,
        token,
    }
}

/// Submits one request built by these tests.
pub fn submit(ch: &mut BdevChannel, d: &IoDesc) -> Submitted {
    // SAFETY: every test keeps the buffers behind `d` alive and untouched
    // until the request completes (it polls or closes the channel before
    // dropping them).
    unsafe { ch.submit(d) }
}

/// Submits one request and polls until it completed; returns its status.
pub fn run(ch: &mut BdevChannel, d: &IoDesc) -> IoStatus {
    match submit(ch, d) {
        Submitted::Done(s) => s,
        Submitted::Queued => {
            let mut got = None;
            let start = std::time::Instant::now();
            while got.is_none() {
                ch.poll(&mut |token, s| {
                    assert_eq!(token, d.token, "completion for another request");
                    got = Some(s);
                });
                assert!(start.elapsed().as_secs() < 10, "request never completed");
            }
            got.unwrap()
        }
    }
}

pub fn write(ch: &mut BdevChannel, lba: u64, blocks: u64, iovs: &[libc::iovec]) -> IoStatus {
    run(ch, &desc(spdk_io_type::WRITE, lba, blocks, iovs, lba + 1))
}

pub fn read(ch: &mut BdevChannel, lba: u64, blocks: u64, iovs: &[libc::iovec]) -> IoStatus {
    run(ch, &desc(spdk_io_type::READ, lba, blocks, iovs, lba + 1))
}
