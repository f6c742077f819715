//! `iomem nvme selftest`: the checks that prove the transport against a
//! controller nobody here wrote (QEMU's NVMe, in the CI guest). It
//! overwrites data, so it insists on `--destructive`.
//!
//! Steps, each printed as `selftest: STEP: ok|FAILED - detail`:
//! identify (model/serial as expected), pattern write/read-back across
//! several queue pairs in parallel threads (reads on a different queue than
//! the writes, transfers from one block to a PRP list, offset buffers),
//! flush, deallocate reads back zeroes, zone append/report/reset on a zoned
//! namespace, and an IOMMU probe: a command naming memory that was never
//! mapped must not reach it (the guest kernel logs the DMAR fault).

use std::process::ExitCode;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use iomemory::dma::{DmaBuf, DmaPool};
use iomemory::nvme::nvm::{
    io::appended_lba, submit, LbaRange, Namespace, NvmCommand, NvmError, ZoneAction, ZoneReport,
    ZoneState,
};
use iomemory::nvme::spec::CompletionEntry;
use iomemory::nvme::QueuePair;
use iomemory::vfio::NvmeOverVfio;

use super::{describe_namespace, open_controller};

/// How long any one batch may take (TCG guests are slow, not this slow).
const BATCH_TIMEOUT: Duration = Duration::from_secs(30);
/// Bytes of the largest transfer (needs a PRP list).
const BIG_IO: usize = 64 * 1024;

/// Options of `iomem nvme selftest`.
#[derive(Debug, Clone, clap::Args)]
pub struct SelftestArgs {
    /// PCI address of a scratch controller bound to vfio-pci.
    pub address: String,
    /// Confirms that the controller's data may be overwritten.
    #[arg(long)]
    pub destructive: bool,
    /// Fail unless the controller reports this model.
    #[arg(long)]
    pub expect_model: Option<String>,
    /// Fail unless the controller reports this serial.
    #[arg(long)]
    pub expect_serial: Option<String>,
    /// I/O queue pairs for the pattern test (one thread each).
    #[arg(long, default_value_t = 4)]
    pub queues: usize,
}

/// Step results, printed as they happen.
#[derive(Default)]
struct Report {
    passed: usize,
    failed: usize,
}

impl Report {
    fn step(&mut self, name: &str, result: Result<String, String>) {
        match result {
            Ok(detail) => {
                self.passed += 1;
                println!("selftest: {name}: ok - {detail}");
            }
            Err(detail) => {
                self.failed += 1;
                println!("selftest: {name}: FAILED - {detail}");
            }
        }
    }
}

/// Runs `cmds` on `qp`, keeping as many in flight as the queue allows;
/// fails on the first error status. Returns the completions in order.
fn run_all(
    qp: &mut QueuePair,
    ns: &Namespace,
    cmds: &[NvmCommand<'_>],
) -> Result<Vec<CompletionEntry>, String> {
    let mut done: Vec<Option<CompletionEntry>> = vec![None; cmds.len()];
    let (mut next, mut completed) = (0, 0);
    let deadline = Instant::now() + BATCH_TIMEOUT;
    while completed < cmds.len() {
        while next < cmds.len() {
            match submit(qp, ns, &cmds[next], next as u64) {
                Ok(_) => next += 1,
                Err(NvmError::QueueFull) => break,
                Err(e) => return Err(format!("{} #{next}: {e}", cmds[next].name())),
            }
        }
        qp.ring();
        qp.poll(usize::MAX, |tag, cqe| {
            if let Some(slot) = done.get_mut(tag as usize) {
                *slot = Some(*cqe);
                completed += 1;
            }
        });
        if Instant::now() > deadline {
            return Err(format!(
                "{} of {} commands still in flight after {BATCH_TIMEOUT:?}",
                cmds.len() - completed,
                cmds.len()
            ));
        }
    }
    let mut out = Vec::with_capacity(cmds.len());
    for (i, cqe) in done.into_iter().enumerate() {
        let cqe = cqe.unwrap_or_default();
        if !cqe.is_success() {
            let status = cqe.status_code();
            return Err(format!(
                "{} #{i} completed with status type {:#x} code {:#04x}",
                cmds[i].name(),
                status.sct(),
                status.sc()
            ));
        }
        out.push(cqe);
    }
    Ok(out)
}

/// The bytes block `lba` holds in the pattern test: its LBA, the seed, then
/// a hash stream of both, so a misplaced or stale block is recognised.
fn pattern_block(lba: u64, seed: u64, block: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(block);
    out.extend_from_slice(&lba.to_le_bytes());
    out.extend_from_slice(&seed.to_le_bytes());
    let mut x = lba.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ seed;
    while out.len() < block {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(block);
    out
}

fn pattern_range(slba: u64, blocks: u64, seed: u64, block: usize) -> Vec<u8> {
    (slba..slba + blocks)
        .flat_map(|lba| pattern_block(lba, seed, block))
        .collect()
}

/// One I/O of the pattern test: where, how many blocks, and at which
/// offset in its buffer.
#[derive(Debug, Clone, Copy)]
struct Io {
    slba: u64,
    blocks: u64,
    offset: usize,
}

/// The I/Os covering `[base, base + span)`: single blocks, page-sized,
/// PRP-list-sized, and one that starts mid-page (PRP1 with an offset, PRP2
/// for the rest).
fn plan_ios(base: u64, span: u64, block: usize) -> Vec<Io> {
    let b = block as u64;
    let sizes = [1u64, (4096 / b).max(1), (BIG_IO as u64 / b).max(1), 1, 2];
    let mut ios = Vec::new();
    let mut lba = base;
    let mut i = 0;
    while lba < base + span {
        let blocks = sizes[i % sizes.len()].min(base + span - lba);
        let offset = if i % sizes.len() == 3 {
            4096 - (block / 2).min(2048)
        } else {
            0
        };
        ios.push(Io {
            slba: lba,
            blocks,
            offset,
        });
        lba += blocks;
        i += 1;
    }
    ios
}

fn check_identity(nvme: &NvmeOverVfio, args: &SelftestArgs) -> Result<String, String> {
    let id = nvme.identity();
    if let Some(model) = &args.expect_model {
        if &id.model != model {
            return Err(format!("model {:?}, expected {model:?}", id.model));
        }
    }
    if let Some(serial) = &args.expect_serial {
        if &id.serial != serial {
            return Err(format!("serial {:?}, expected {serial:?}", id.serial));
        }
    }
    Ok(format!(
        "model {:?}, serial {:?}, firmware {:?}, vendor {:04x}",
        id.model, id.serial, id.firmware, id.vid
    ))
}

/// Writes on queue q the region q, then (after all writes) reads region
/// q+1 on queue q, one thread per queue, and compares every byte.
fn pattern_test(
    nvme: &NvmeOverVfio,
    ns: &Namespace,
    pool: &Arc<DmaPool>,
    queues: usize,
) -> Result<String, String> {
    let block = ns.block_size as usize;
    let span = (256 * 1024 / block as u64).min(ns.blocks / queues as u64);
    if span == 0 {
        return Err(format!(
            "namespace {} is too small for {queues} regions",
            ns.nsid
        ));
    }
    let seed = 0x5e1f_7e57;
    let qps: Vec<QueuePair> = (0..queues)
        .map(|_| nvme.controller().create_io_queue_pair(16))
        .collect::<Result<_, _>>()
        .map_err(|e| format!("creating {queues} I/O queue pairs: {e}"))?;
    let qids: Vec<u16> = qps.iter().map(|q| q.qid()).collect();
    let barrier = Barrier::new(queues);
    let results: Vec<Result<u64, String>> = std::thread::scope(|s| {
        let handles: Vec<_> = qps
            .into_iter()
            .enumerate()
            .map(|(q, mut qp)| {
                let barrier = &barrier;
                s.spawn(move || {
                    let write_ios = plan_ios(q as u64 * span, span, block);
                    let read_ios = plan_ios(((q + 1) % queues) as u64 * span, span, block);
                    // Every thread reaches the barrier, even after an error.
                    let written = (|| -> Result<(), String> {
                        let mut bufs: Vec<DmaBuf> = Vec::new();
                        for io in &write_ios {
                            let mut buf = pool.alloc().ok_or("DMA buffer pool exhausted")?;
                            let data = pattern_range(io.slba, io.blocks, seed, block);
                            buf.write_at(io.offset, &data).map_err(|e| e.to_string())?;
                            bufs.push(buf);
                        }
                        let cmds: Vec<NvmCommand> = write_ios
                            .iter()
                            .zip(&bufs)
                            .map(|(io, buf)| NvmCommand::Write {
                                slba: io.slba,
                                blocks: io.blocks,
                                iova: buf.iova() + io.offset as u64,
                            })
                            .collect();
                        run_all(&mut qp, ns, &cmds).map(|_| ())
                    })();
                    barrier.wait();
                    written?;
                    let mut bufs: Vec<DmaBuf> = Vec::new();
                    for _ in &read_ios {
                        let mut buf = pool.alloc().ok_or("DMA buffer pool exhausted")?;
                        buf.write_at(0, &vec![0xee; buf.len()])
                            .map_err(|e| e.to_string())?;
                        bufs.push(buf);
                    }
                    let cmds: Vec<NvmCommand> = read_ios
                        .iter()
                        .zip(&bufs)
                        .map(|(io, buf)| NvmCommand::Read {
                            slba: io.slba,
                            blocks: io.blocks,
                            iova: buf.iova() + io.offset as u64,
                        })
                        .collect();
                    run_all(&mut qp, ns, &cmds)?;
                    let mut bytes = 0;
                    for (io, buf) in read_ios.iter().zip(&bufs) {
                        let want = pattern_range(io.slba, io.blocks, seed, block);
                        let mut got = vec![0u8; want.len()];
                        buf.read_at(io.offset, &mut got)
                            .map_err(|e| e.to_string())?;
                        if let Some(i) = got.iter().zip(&want).position(|(a, b)| a != b) {
                            return Err(format!(
                                "queue {}: LBA {} byte {} reads {:#04x}, wrote {:#04x}",
                                qp.qid(),
                                io.slba + (i / block) as u64,
                                i % block,
                                got[i],
                                want[i]
                            ));
                        }
                        bytes += want.len() as u64;
                    }
                    Ok(bytes)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err("a queue thread panicked".into()))
            })
            .collect()
    });
    let mut total = 0;
    for r in results {
        total += r?;
    }
    Ok(format!(
        "{} KiB written and read back over I/O queues {:?} (reads on the neighbour's queue; 1-block to {} KiB transfers, offset buffers)",
        total / 1024,
        qids,
        BIG_IO / 1024
    ))
}

fn one(qp: &mut QueuePair, ns: &Namespace, cmd: NvmCommand<'_>) -> Result<CompletionEntry, String> {
    run_all(qp, ns, &[cmd]).map(|mut v| v.remove(0))
}

fn read_back(
    qp: &mut QueuePair,
    ns: &Namespace,
    buf: &DmaBuf,
    slba: u64,
    blocks: u64,
) -> Result<Vec<u8>, String> {
    one(
        qp,
        ns,
        NvmCommand::Read {
            slba,
            blocks,
            iova: buf.iova(),
        },
    )?;
    let mut out = vec![0u8; blocks as usize * ns.block_size as usize];
    buf.read_at(0, &mut out).map_err(|e| e.to_string())?;
    Ok(out)
}

fn deallocate_test(
    qp: &mut QueuePair,
    ns: &Namespace,
    pool: &Arc<DmaPool>,
) -> Result<String, String> {
    if !ns.deallocate_reads_zeroes {
        return Err(format!(
            "namespace {} does not report that deallocated blocks read as zeroes (DLFEAT)",
            ns.nsid
        ));
    }
    let block = ns.block_size as usize;
    let blocks = (32 * 1024 / block as u64).max(2);
    let slba = ns.blocks - blocks;
    let mut buf = pool.alloc().ok_or("DMA buffer pool exhausted")?;
    buf.write_at(0, &pattern_range(slba, blocks, 7, block))
        .map_err(|e| e.to_string())?;
    one(
        qp,
        ns,
        NvmCommand::Write {
            slba,
            blocks,
            iova: buf.iova(),
        },
    )?;
    if read_back(qp, ns, &buf, slba, blocks)?
        .iter()
        .all(|&b| b == 0)
    {
        return Err("the written pattern read back as zeroes before deallocation".into());
    }
    let half = (blocks / 2) as u32;
    let ranges = [
        LbaRange { slba, blocks: half },
        LbaRange {
            slba: slba + u64::from(half),
            blocks: blocks as u32 - half,
        },
    ];
    one(qp, ns, NvmCommand::Deallocate { ranges: &ranges })?;
    buf.write_at(0, &vec![0xee; buf.len()])
        .map_err(|e| e.to_string())?;
    let after = read_back(qp, ns, &buf, slba, blocks)?;
    match after.iter().position(|&b| b != 0) {
        None => Ok(format!(
            "LBAs {slba}..{} deallocated in 2 ranges and read back as zeroes",
            slba + blocks
        )),
        Some(i) => Err(format!(
            "LBA {} byte {} reads {:#04x} after deallocation",
            slba + (i / block) as u64,
            i % block,
            after[i]
        )),
    }
}

fn report(
    qp: &mut QueuePair,
    ns: &Namespace,
    buf: &DmaBuf,
    slba: u64,
) -> Result<ZoneReport, String> {
    one(
        qp,
        ns,
        NvmCommand::ReportZones {
            slba,
            iova: buf.iova(),
            len: 4096,
        },
    )?;
    let mut raw = vec![0u8; 4096];
    buf.read_at(0, &mut raw).map_err(|e| e.to_string())?;
    ZoneReport::parse(&raw).map_err(|e| e.to_string())
}

fn zone_test(qp: &mut QueuePair, ns: &Namespace, pool: &Arc<DmaPool>) -> Result<String, String> {
    let zones = ns.zones.ok_or("no zone geometry")?;
    let block = ns.block_size as usize;
    let zslba = if zones.zone_count > 1 {
        zones.zone_size
    } else {
        0
    };
    let rep_buf = pool.alloc().ok_or("DMA buffer pool exhausted")?;
    one(
        qp,
        ns,
        NvmCommand::ZoneSend {
            zslba: 0,
            action: ZoneAction::Reset,
            all: true,
        },
    )?;
    let z = report(qp, ns, &rep_buf, zslba)?;
    let first = z
        .descriptors
        .first()
        .ok_or("report zones returned no zone")?;
    if first.start != zslba || first.state != ZoneState::Empty || first.write_pointer != zslba {
        return Err(format!("after reset all, zone {zslba} reports {first:?}"));
    }
    // One at a time: the device must place them back to back.
    let sizes = [1u64, 4, 2];
    let mut expect = zslba;
    let mut written = Vec::new();
    for (i, &blocks) in sizes.iter().enumerate() {
        let mut buf = pool.alloc().ok_or("DMA buffer pool exhausted")?;
        let data: Vec<u8> = (0..blocks)
            .flat_map(|k| pattern_block(k, 100 + i as u64, block))
            .collect();
        buf.write_at(0, &data).map_err(|e| e.to_string())?;
        let cqe = one(
            qp,
            ns,
            NvmCommand::ZoneAppend {
                zslba,
                blocks,
                iova: buf.iova(),
            },
        )?;
        let lba = appended_lba(&cqe);
        if lba != expect {
            return Err(format!(
                "append #{i} of {blocks} blocks landed at LBA {lba}, expected {expect}"
            ));
        }
        written.push((lba, blocks, data));
        expect += blocks;
    }
    // Eight in flight at once: any order, but they must tile the range.
    let mut bufs = Vec::new();
    for i in 0..8u64 {
        let mut buf = pool.alloc().ok_or("DMA buffer pool exhausted")?;
        buf.write_at(0, &pattern_block(i, 200, block))
            .map_err(|e| e.to_string())?;
        bufs.push(buf);
    }
    let cmds: Vec<NvmCommand> = bufs
        .iter()
        .map(|b| NvmCommand::ZoneAppend {
            zslba,
            blocks: 1,
            iova: b.iova(),
        })
        .collect();
    let cqes = run_all(qp, ns, &cmds)?;
    let mut lbas: Vec<u64> = cqes.iter().map(appended_lba).collect();
    for (i, lba) in lbas.iter().enumerate() {
        written.push((*lba, 1, pattern_block(i as u64, 200, block)));
    }
    lbas.sort_unstable();
    if lbas != (expect..expect + 8).collect::<Vec<_>>() {
        return Err(format!(
            "8 concurrent appends landed at {lbas:?}, expected {expect}..{}",
            expect + 8
        ));
    }
    expect += 8;
    let check = pool.alloc().ok_or("DMA buffer pool exhausted")?;
    for (lba, blocks, data) in &written {
        if read_back(qp, ns, &check, *lba, *blocks)? != *data {
            return Err(format!("appended data at LBA {lba} does not read back"));
        }
    }
    let z = report(qp, ns, &rep_buf, zslba)?;
    let zone = z
        .descriptors
        .first()
        .ok_or("report zones returned no zone")?;
    if zone.write_pointer != expect {
        return Err(format!(
            "write pointer {} after appends, expected {expect}",
            zone.write_pointer
        ));
    }
    let state_after_appends = zone.state;
    one(
        qp,
        ns,
        NvmCommand::ZoneSend {
            zslba,
            action: ZoneAction::Reset,
            all: false,
        },
    )?;
    let z = report(qp, ns, &rep_buf, zslba)?;
    let zone = z
        .descriptors
        .first()
        .ok_or("report zones returned no zone")?;
    if zone.state != ZoneState::Empty || zone.write_pointer != zslba {
        return Err(format!("after reset, zone {zslba} reports {zone:?}"));
    }
    Ok(format!(
        "zone at LBA {zslba} (size {} blocks): 3 sequential + 8 concurrent appends landed at {zslba}..{expect} and read back; write pointer {expect} ({state_after_appends:?}); reset -> empty, write pointer {zslba}",
        zones.zone_size
    ))
}

/// A page of ordinary memory, never registered for DMA.
struct UnmappedPage {
    ptr: std::ptr::NonNull<u8>,
}

impl UnmappedPage {
    fn new(fill: u8) -> Result<Self, String> {
        // SAFETY: a fresh anonymous private mapping at an address of the
        // kernel's choosing; nothing else is affected.
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                4096,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_POPULATE,
                -1,
                0,
            )
        };
        if addr == libc::MAP_FAILED {
            return Err(format!("mmap: {}", std::io::Error::last_os_error()));
        }
        let ptr = std::ptr::NonNull::new(addr.cast::<u8>()).ok_or("mmap returned null")?;
        // SAFETY: the page was just mapped, 4096 bytes, owned by us.
        unsafe { std::ptr::write_bytes(ptr.as_ptr(), fill, 4096) };
        Ok(Self { ptr })
    }

    fn iova(&self) -> u64 {
        self.ptr.as_ptr() as u64
    }

    /// Whether every byte still holds `fill` (volatile: a device could
    /// have written it behind the compiler's back).
    fn all(&self, fill: u8) -> bool {
        (0..4096).all(|i| {
            // SAFETY: `i < 4096` stays inside our mapping.
            unsafe { self.ptr.as_ptr().add(i).read_volatile() == fill }
        })
    }
}

impl Drop for UnmappedPage {
    fn drop(&mut self) {
        // SAFETY: exactly the page mapped in `new`, owned by this value.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), 4096) };
    }
}

fn status_text(cqe: &CompletionEntry) -> String {
    if cqe.is_success() {
        "success".into()
    } else {
        format!(
            "status {:#x}/{:#04x}",
            cqe.status_code().sct(),
            cqe.status_code().sc()
        )
    }
}

/// Sends a read into, and a write from, a page the IOMMU was never told
/// about. Neither may touch it; completions are not trusted (QEMU reports
/// success even when its DMA was refused).
fn iommu_test(qp: &mut QueuePair, ns: &Namespace, pool: &Arc<DmaPool>) -> Result<String, String> {
    let block = ns.block_size as usize;
    let blocks = (4096 / block as u64).max(1);
    let (src, dst) = (0u64, blocks * 4);
    let mut buf = pool.alloc().ok_or("DMA buffer pool exhausted")?;
    buf.write_at(0, &pattern_range(src, blocks, 9, block))
        .map_err(|e| e.to_string())?;
    one(
        qp,
        ns,
        NvmCommand::Write {
            slba: src,
            blocks,
            iova: buf.iova(),
        },
    )?;
    buf.write_at(0, &vec![0x11; 4096])
        .map_err(|e| e.to_string())?;
    one(
        qp,
        ns,
        NvmCommand::Write {
            slba: dst,
            blocks,
            iova: buf.iova(),
        },
    )?;

    let page = UnmappedPage::new(0xa5)?;
    let read_into = exec_raw(
        qp,
        ns,
        NvmCommand::Read {
            slba: src,
            blocks,
            iova: page.iova(),
        },
    )?;
    if !page.all(0xa5) {
        return Err(format!(
            "a read into unmapped IOVA {:#x} changed host memory: the IOMMU did not block it",
            page.iova()
        ));
    }
    let write_from = exec_raw(
        qp,
        ns,
        NvmCommand::Write {
            slba: dst,
            blocks,
            iova: page.iova(),
        },
    )?;
    let back = read_back(qp, ns, &buf, dst, blocks)?;
    if back.iter().take(4096).all(|&b| b == 0xa5) {
        return Err(format!(
            "a write from unmapped IOVA {:#x} stored its contents: the IOMMU did not block it",
            page.iova()
        ));
    }
    println!(
        "selftest: iommu-probe: unmapped IOVA {:#x} (expect a DMAR fault for it in the kernel log)",
        page.iova()
    );
    Ok(format!(
        "read into / write from unmapped IOVA {:#x} did not reach host memory (device reported {} / {})",
        page.iova(),
        status_text(&read_into),
        status_text(&write_from)
    ))
}

/// Runs one command and returns its completion whatever the status.
fn exec_raw(
    qp: &mut QueuePair,
    ns: &Namespace,
    cmd: NvmCommand<'_>,
) -> Result<CompletionEntry, String> {
    submit(qp, ns, &cmd, 0).map_err(|e| e.to_string())?;
    qp.ring();
    let deadline = Instant::now() + BATCH_TIMEOUT;
    let mut out = None;
    while out.is_none() {
        qp.poll(1, |_, cqe| out = Some(*cqe));
        if out.is_none() && Instant::now() > deadline {
            return Err(format!(
                "{} to an unmapped address never completed",
                cmd.name()
            ));
        }
    }
    Ok(out.unwrap_or_default())
}

/// Runs `iomem nvme selftest`.
pub fn run(args: SelftestArgs) -> Result<ExitCode, String> {
    if !args.destructive {
        return Err(format!(
            "selftest overwrites data on {}; pass --destructive if it is a scratch controller",
            args.address
        ));
    }
    if !(2..=64).contains(&args.queues) {
        return Err(format!("--queues {} must be in 2..=64", args.queues));
    }
    let address = args
        .address
        .parse()
        .map_err(|e: iomemory::pci::PciError| e.to_string())?;
    let mut rep = Report::default();
    let nvme = open_controller(address)?;
    rep.step("identify", check_identity(&nvme, &args));
    let nsids = nvme.namespaces().map_err(|e| e.to_string())?;
    let mut conventional = None;
    let mut zoned = None;
    for nsid in nsids {
        let ns = nvme.namespace(nsid).map_err(|e| e.to_string())?;
        println!("selftest: found {}", describe_namespace(&ns));
        match ns.zones {
            Some(_) if zoned.is_none() => zoned = Some(ns),
            None if conventional.is_none() => conventional = Some(ns),
            _ => {}
        }
    }
    let pool = DmaPool::new(nvme.dma_space(), BIG_IO + 4096, 256).map_err(|e| e.to_string())?;
    match &conventional {
        None => rep.step(
            "pattern",
            Err("the controller has no NVM (conventional) namespace".into()),
        ),
        Some(ns) => {
            rep.step("pattern", pattern_test(&nvme, ns, &pool, args.queues));
            let mut qp = nvme
                .controller()
                .create_io_queue_pair(16)
                .map_err(|e| e.to_string())?;
            rep.step(
                "flush",
                one(&mut qp, ns, NvmCommand::Flush)
                    .map(|_| format!("namespace {} flushed", ns.nsid)),
            );
            rep.step("deallocate", deallocate_test(&mut qp, ns, &pool));
            rep.step("iommu", iommu_test(&mut qp, ns, &pool));
        }
    }
    match &zoned {
        None => rep.step("zones", Err("the controller has no zoned namespace".into())),
        Some(ns) => {
            let mut qp = nvme
                .controller()
                .create_io_queue_pair(16)
                .map_err(|e| e.to_string())?;
            rep.step("zones", zone_test(&mut qp, ns, &pool));
        }
    }
    println!("selftest: {} passed, {} failed", rep.passed, rep.failed);
    Ok(if rep.failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pattern_blocks_differ_by_lba_and_seed() {
        let a = pattern_block(5, 1, 512);
        assert_eq!(a.len(), 512);
        assert_eq!(&a[..8], &5u64.to_le_bytes());
        assert_ne!(a, pattern_block(6, 1, 512));
        assert_ne!(a, pattern_block(5, 2, 512));
        assert_eq!(a, pattern_block(5, 1, 512));
        assert_eq!(pattern_range(10, 3, 1, 512).len(), 1536);
    }

    #[test]
    fn planned_ios_tile_the_span_with_every_shape() {
        let ios = plan_ios(1000, 600, 512);
        let mut lba = 1000;
        for io in &ios {
            assert_eq!(io.slba, lba);
            lba += io.blocks;
            assert!(io.offset + io.blocks as usize * 512 <= BIG_IO + 4096);
        }
        assert_eq!(lba, 1600);
        assert!(ios.iter().any(|io| io.blocks as usize * 512 == BIG_IO));
        assert!(ios
            .iter()
            .any(|io| io.offset != 0 && io.offset + 512 > 4096 - 256));
        let ios = plan_ios(0, 64, 4096);
        assert_eq!(ios.iter().map(|io| io.blocks).sum::<u64>(), 64);
        assert!(ios
            .iter()
            .all(|io| io.offset + io.blocks as usize * 4096 <= BIG_IO + 4096));
    }

    #[test]
    fn selftest_refuses_without_destructive() {
        let err = run(SelftestArgs {
            address: "0000:00:03.0".into(),
            destructive: false,
            expect_model: None,
            expect_serial: None,
            queues: 4,
        })
        .unwrap_err();
        assert!(err.contains("--destructive"), "{err}");
    }

    #[test]
    fn an_unmapped_page_is_filled_and_checked() {
        let page = UnmappedPage::new(0xa5).unwrap();
        assert!(page.all(0xa5));
        assert!(!page.all(0));
        assert_eq!(page.iova() % 4096, 0);
    }
}
