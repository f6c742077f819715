//! virtio-blk device model: feature bits, the config space, and parsing a
//! descriptor chain into a request, with every address and length checked
//! against guest memory and the device before anything is submitted.
//!
//! A malformed chain (out-of-range address, wrong direction, oversized or
//! misaligned request, bad discard segment) becomes [`Parsed::Fail`] with
//! `VIRTIO_BLK_S_IOERR` (or `UNSUPP` for an unknown type) for that request
//! only; a chain with no device-writable status byte cannot be answered at
//! all and is returned to the guest with zero length.

use virtio_bindings::virtio_blk::*;
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

/// Largest data transfer of one request (larger ones are refused).
pub const MAX_TRANSFER: u64 = 32 * 1024 * 1024;
/// Segments advertised per request (`seg_max`).
pub const SEG_MAX: u32 = 254;
/// Largest segment advertised (`size_max`).
pub const SIZE_MAX: u32 = 1024 * 1024;
/// Ranges per discard / write-zeroes request.
pub const MAX_DISCARD_SEG: u32 = 16;
/// Sectors per discard / write-zeroes range.
pub const MAX_DISCARD_SECTORS: u32 = 1 << 22;
/// virtio-blk sector.
pub const SECTOR: u64 = 512;
/// Length of the serial number (`GET_ID`).
pub const ID_BYTES: usize = VIRTIO_BLK_ID_BYTES as usize;
/// The vhost-user "protocol features" feature bit.
pub const VHOST_USER_F_PROTOCOL_FEATURES: u64 = 1 << 30;

/// The device as the guest sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlkDevice {
    /// Capacity in 512-byte sectors.
    pub capacity: u64,
    /// Logical block size in bytes.
    pub blk_size: u32,
    /// Virtqueues.
    pub num_queues: u16,
    /// Writes refused.
    pub read_only: bool,
}

impl BlkDevice {
    /// virtio feature bits offered.
    pub fn features(&self) -> u64 {
        let mut f = (1u64 << VIRTIO_F_VERSION_1)
            | (1 << VIRTIO_RING_F_EVENT_IDX)
            | (1 << VIRTIO_RING_F_INDIRECT_DESC)
            | VHOST_USER_F_PROTOCOL_FEATURES
            | (1 << VIRTIO_BLK_F_SIZE_MAX)
            | (1 << VIRTIO_BLK_F_SEG_MAX)
            | (1 << VIRTIO_BLK_F_BLK_SIZE)
            | (1 << VIRTIO_BLK_F_TOPOLOGY)
            | (1 << VIRTIO_BLK_F_FLUSH)
            | (1 << VIRTIO_BLK_F_MQ);
        if self.read_only {
            f |= 1 << VIRTIO_BLK_F_RO;
        } else {
            f |= (1 << VIRTIO_BLK_F_DISCARD) | (1 << VIRTIO_BLK_F_WRITE_ZEROES);
        }
        f
    }

    /// `struct virtio_blk_config` (60 bytes, little endian).
    pub fn config_space(&self) -> Vec<u8> {
        let mut c = vec![0u8; 60];
        let bs_sectors = (self.blk_size as u64 / SECTOR).max(1) as u32;
        c[0..8].copy_from_slice(&self.capacity.to_le_bytes());
        c[8..12].copy_from_slice(&SIZE_MAX.to_le_bytes());
        c[12..16].copy_from_slice(&SEG_MAX.to_le_bytes());
        // geometry (16..20) left zero.
        c[20..24].copy_from_slice(&self.blk_size.to_le_bytes());
        // topology: physical_block_exp, alignment_offset, min_io_size (in
        // logical blocks), opt_io_size.
        c[24] = 0;
        c[25] = 0;
        c[26..28].copy_from_slice(&1u16.to_le_bytes());
        c[28..32].copy_from_slice(&32u32.to_le_bytes());
        c[32] = 1; // writeback: the card may hold acknowledged writes until a flush
        c[34..36].copy_from_slice(&self.num_queues.to_le_bytes());
        c[36..40].copy_from_slice(&MAX_DISCARD_SECTORS.to_le_bytes());
        c[40..44].copy_from_slice(&MAX_DISCARD_SEG.to_le_bytes());
        c[44..48].copy_from_slice(&bs_sectors.to_le_bytes());
        c[48..52].copy_from_slice(&MAX_DISCARD_SECTORS.to_le_bytes());
        c[52..56].copy_from_slice(&MAX_DISCARD_SEG.to_le_bytes());
        c[56] = 1; // write_zeroes_may_unmap
        c
    }
}

/// A guest buffer: guest address, length, host address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GuestSeg {
    /// Guest physical address.
    pub gpa: u64,
    /// Bytes.
    pub len: usize,
    /// Host virtual address (inside one mapped guest region).
    pub host: usize,
}

/// One descriptor of a chain: (guest address, length, device-writable).
pub type Desc = (u64, u32, bool);

/// A discard or write-zeroes range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Range {
    /// First 512-byte sector.
    pub sector: u64,
    /// Sectors.
    pub sectors: u32,
    /// Flags (bit 0: unmap allowed).
    pub flags: u32,
}

/// What a request asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// Read into `segs`.
    Read,
    /// Write from `segs`.
    Write,
    /// Flush.
    Flush,
    /// Serial number into `segs`.
    GetId,
    /// Discard ranges.
    Discard(Vec<Range>),
    /// Write-zeroes ranges.
    WriteZeroes(Vec<Range>),
}

/// A valid request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// Its kind.
    pub kind: Kind,
    /// First sector (read/write).
    pub sector: u64,
    /// Data buffers (read/write/get-id).
    pub segs: Vec<GuestSeg>,
    /// Where the status byte goes.
    pub status: u64,
}

/// The outcome of parsing a chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed {
    /// A request to carry out.
    Ok(Request),
    /// Answer at once with `status` (IOERR/UNSUPP) written at `at`.
    Fail {
        /// Status byte address.
        at: u64,
        /// Status.
        status: u8,
        /// Why (for the log).
        why: &'static str,
    },
    /// No status byte to write: return the chain with zero length.
    Unanswerable(&'static str),
}

fn host_of(mem: &GuestMemoryMmap, gpa: u64, len: usize) -> Option<usize> {
    let s = mem.get_slice(GuestAddress(gpa), len).ok()?;
    Some(s.ptr_guard_mut().as_ptr() as usize)
}

/// Splits `descs` at `skip` bytes and returns the rest as checked segments.
fn segments(mem: &GuestMemoryMmap, descs: &[Desc], mut skip: u64, mut take: u64) -> Option<Vec<GuestSeg>> {
    let mut out = Vec::new();
    for &(addr, len, _) in descs {
        let len = u64::from(len);
        if skip >= len {
            skip -= len;
            continue;
        }
        let start = addr.checked_add(skip)?;
        let n = (len - skip).min(take);
        skip = 0;
        if n > 0 {
            let host = host_of(mem, start, n as usize)?;
            out.push(GuestSeg { gpa: start, len: n as usize, host });
            take -= n;
        }
        if take == 0 {
            break;
        }
    }
    Some(out)
}

fn read_bytes(mem: &GuestMemoryMmap, segs: &[GuestSeg], out: &mut [u8]) -> bool {
    let mut at = 0;
    for s in segs {
        let n = s.len.min(out.len() - at);
        if mem.read_slice(&mut out[at..at + n], GuestAddress(s.gpa)).is_err() {
            return false;
        }
        at += n;
        if at == out.len() {
            break;
        }
    }
    at == out.len()
}

/// Parses one descriptor chain for a device of `dev`'s shape.
pub fn parse(mem: &GuestMemoryMmap, descs: &[Desc], dev: &BlkDevice) -> Parsed {
    // The status byte is the last byte of the last descriptor, which must be
    // device-writable and inside guest memory.
    let Some(&(last_addr, last_len, last_w)) = descs.last() else {
        return Parsed::Unanswerable("empty chain");
    };
    if !last_w || last_len == 0 {
        return Parsed::Unanswerable("the last descriptor is not a writable status byte");
    }
    let Some(at) = last_addr.checked_add(u64::from(last_len) - 1) else {
        return Parsed::Unanswerable("status address overflows");
    };
    if host_of(mem, at, 1).is_none() {
        return Parsed::Unanswerable("status byte outside guest memory");
    }
    let fail = |why| Parsed::Fail { at, status: VIRTIO_BLK_S_IOERR as u8, why };

    // Device-readable descriptors come first, then device-writable ones.
    let split = descs.iter().position(|d| d.2).unwrap_or(descs.len());
    if descs[split..].iter().any(|d| !d.2) {
        return fail("a device-readable descriptor follows a writable one");
    }
    let (readable, writable) = descs.split_at(split);
    let r_total: u64 = readable.iter().map(|d| u64::from(d.1)).sum();
    let w_total: u64 = writable.iter().map(|d| u64::from(d.1)).sum::<u64>() - 1; // minus status
    if r_total < 16 {
        return fail("no 16-byte request header");
    }
    let Some(hdr_segs) = segments(mem, readable, 0, 16) else {
        return fail("request header outside guest memory");
    };
    let mut hdr = [0u8; 16];
    if !read_bytes(mem, &hdr_segs, &mut hdr) {
        return fail("request header unreadable");
    }
    let kind = u32::from_le_bytes([hdr[0], hdr[1], hdr[2], hdr[3]]);
    let sector = u64::from_le_bytes(hdr[8..16].try_into().unwrap_or([0; 8]));
    let r_data = r_total - 16;
    let bs = u64::from(dev.blk_size);
    let writes = matches!(kind, VIRTIO_BLK_T_OUT | VIRTIO_BLK_T_DISCARD | VIRTIO_BLK_T_WRITE_ZEROES);
    if writes && dev.read_only {
        return fail("the device is read-only");
    }
    match kind {
        VIRTIO_BLK_T_IN | VIRTIO_BLK_T_OUT => {
            let (len, segs) = if kind == VIRTIO_BLK_T_IN {
                if r_data != 0 {
                    return fail("a read carries device-readable data");
                }
                (w_total, segments(mem, writable, 0, w_total))
            } else {
                if w_total != 0 {
                    return fail("a write carries device-writable data");
                }
                (r_data, segments(mem, readable, 16, r_data))
            };
            if len == 0 || len > MAX_TRANSFER {
                return fail("transfer is empty or larger than the maximum");
            }
            let Some(segs) = segs else { return fail("data buffer outside guest memory") };
            let Some(start) = sector.checked_mul(SECTOR) else { return fail("sector overflows") };
            if !start.is_multiple_of(bs) || !len.is_multiple_of(bs) {
                return fail("request not aligned to the block size");
            }
            match start.checked_add(len) {
                Some(end) if end <= dev.capacity * SECTOR => {}
                _ => return fail("request beyond the end of the device"),
            }
            let kind = if kind == VIRTIO_BLK_T_IN { Kind::Read } else { Kind::Write };
            Parsed::Ok(Request { kind, sector, segs, status: at })
        }
        VIRTIO_BLK_T_FLUSH => Parsed::Ok(Request { kind: Kind::Flush, sector: 0, segs: Vec::new(), status: at }),
        VIRTIO_BLK_T_GET_ID => {
            let n = w_total.min(ID_BYTES as u64);
            let Some(segs) = segments(mem, writable, 0, n) else { return fail("id buffer outside guest memory") };
            Parsed::Ok(Request { kind: Kind::GetId, sector: 0, segs, status: at })
        }
        VIRTIO_BLK_T_DISCARD | VIRTIO_BLK_T_WRITE_ZEROES => {
            if r_data == 0 || !r_data.is_multiple_of(16) || r_data / 16 > u64::from(MAX_DISCARD_SEG) {
                return fail("bad discard/write-zeroes segment list");
            }
            let Some(segs) = segments(mem, readable, 16, r_data) else {
                return fail("segment list outside guest memory");
            };
            let mut raw = vec![0u8; r_data as usize];
            if !read_bytes(mem, &segs, &mut raw) {
                return fail("segment list unreadable");
            }
            let mut ranges = Vec::with_capacity(raw.len() / 16);
            for c in raw.chunks_exact(16) {
                let r = Range {
                    sector: u64::from_le_bytes(c[0..8].try_into().unwrap_or([0; 8])),
                    sectors: u32::from_le_bytes(c[8..12].try_into().unwrap_or([0; 4])),
                    flags: u32::from_le_bytes(c[12..16].try_into().unwrap_or([0; 4])),
                };
                let unmap_ok = kind == VIRTIO_BLK_T_WRITE_ZEROES;
                if r.flags & !(if unmap_ok { 1 } else { 0 }) != 0 {
                    return Parsed::Fail { at, status: VIRTIO_BLK_S_UNSUPP as u8, why: "unsupported range flags" };
                }
                if r.sectors == 0 || r.sectors > MAX_DISCARD_SECTORS {
                    return fail("range length out of bounds");
                }
                let (start, len) = (r.sector.saturating_mul(SECTOR), u64::from(r.sectors) * SECTOR);
                if !start.is_multiple_of(bs) || !len.is_multiple_of(bs) {
                    return fail("range not aligned to the block size");
                }
                match start.checked_add(len) {
                    Some(end) if end <= dev.capacity * SECTOR => {}
                    _ => return fail("range beyond the end of the device"),
                }
                ranges.push(r);
            }
            let kind = if kind == VIRTIO_BLK_T_DISCARD { Kind::Discard(ranges) } else { Kind::WriteZeroes(ranges) };
            Parsed::Ok(Request { kind, sector: 0, segs: Vec::new(), status: at })
        }
        _ => Parsed::Fail { at, status: VIRTIO_BLK_S_UNSUPP as u8, why: "unsupported request type" },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEV: BlkDevice = BlkDevice { capacity: 1 << 20, blk_size: 4096, num_queues: 2, read_only: false };

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20), (GuestAddress(1 << 21), 1 << 20)]).unwrap()
    }

    fn header(m: &GuestMemoryMmap, at: u64, kind: u32, sector: u64) {
        let mut h = [0u8; 16];
        h[0..4].copy_from_slice(&kind.to_le_bytes());
        h[8..16].copy_from_slice(&sector.to_le_bytes());
        m.write_slice(&h, GuestAddress(at)).unwrap();
    }

    #[test]
    fn features_and_config_space() {
        let f = DEV.features();
        assert_ne!(f & (1 << VIRTIO_BLK_F_DISCARD), 0);
        assert_ne!(f & (1 << VIRTIO_RING_F_EVENT_IDX), 0);
        assert_eq!(f & (1 << VIRTIO_BLK_F_RO), 0);
        let ro = BlkDevice { read_only: true, ..DEV };
        assert_ne!(ro.features() & (1 << VIRTIO_BLK_F_RO), 0);
        assert_eq!(ro.features() & (1 << VIRTIO_BLK_F_WRITE_ZEROES), 0);
        let c = DEV.config_space();
        assert_eq!(u64::from_le_bytes(c[0..8].try_into().unwrap()), 1 << 20);
        assert_eq!(u32::from_le_bytes(c[12..16].try_into().unwrap()), SEG_MAX);
        assert_eq!(u32::from_le_bytes(c[20..24].try_into().unwrap()), 4096);
        assert_eq!(u16::from_le_bytes(c[34..36].try_into().unwrap()), 2);
        assert_eq!(u32::from_le_bytes(c[44..48].try_into().unwrap()), 8);
        assert_eq!(c[56], 1);
    }

    #[test]
    fn reads_writes_and_combined_header_descriptors_parse() {
        let m = mem();
        header(&m, 0x100, VIRTIO_BLK_T_IN, 8);
        let p = parse(&m, &[(0x100, 16, false), (0x1000, 4096, true), (0x3000, 4096, true), (0x200, 1, true)], &DEV);
        let Parsed::Ok(r) = p else { panic!("{p:?}") };
        assert_eq!(r.kind, Kind::Read);
        assert_eq!(r.sector, 8);
        assert_eq!(r.status, 0x200);
        assert_eq!(r.segs.iter().map(|s| s.len).sum::<usize>(), 8192);
        // Header and data in one readable descriptor, status in the data's tail.
        header(&m, 0x4000, VIRTIO_BLK_T_OUT, 16);
        let p = parse(&m, &[(0x4000, 16 + 4096, false), (0x9000, 1, true)], &DEV);
        let Parsed::Ok(r) = p else { panic!("{p:?}") };
        assert_eq!(r.kind, Kind::Write);
        assert_eq!(r.segs, vec![GuestSeg { gpa: 0x4010, len: 4096, host: r.segs[0].host }]);
        // Read whose data and status share the last writable descriptor.
        header(&m, 0x100, VIRTIO_BLK_T_IN, 0);
        let Parsed::Ok(r) = parse(&m, &[(0x100, 16, false), (0x8000, 4097, true)], &DEV) else { panic!() };
        assert_eq!(r.segs[0].len, 4096);
        assert_eq!(r.status, 0x8000 + 4096);
    }

    #[test]
    fn malformed_chains_fail_that_request_only() {
        let m = mem();
        let ioerr = |p: Parsed| matches!(p, Parsed::Fail { status, at: 0x200, .. } if status == VIRTIO_BLK_S_IOERR as u8);
        header(&m, 0x100, VIRTIO_BLK_T_IN, 0);
        // Data buffer outside guest memory.
        assert!(ioerr(parse(&m, &[(0x100, 16, false), (0x10_0000 - 100, 4096, true), (0x200, 1, true)], &DEV)));
        // Buffer that straddles two guest regions' gap.
        assert!(ioerr(parse(&m, &[(0x100, 16, false), (0x1f_f000, 8192, true), (0x200, 1, true)], &DEV)));
        // Wrong direction: a read with device-readable data.
        assert!(ioerr(parse(&m, &[(0x100, 16, false), (0x1000, 4096, false), (0x200, 1, true)], &DEV)));
        // Readable after writable.
        assert!(ioerr(parse(&m, &[(0x100, 16, false), (0x1000, 4096, true), (0x3000, 16, false), (0x200, 1, true)], &DEV)));
        // Oversized, misaligned, beyond the end.
        assert!(ioerr(parse(&m, &[(0x100, 16, false), (0x1000, 4096, true), (0x200, 1, true)], &BlkDevice { capacity: 4, ..DEV })));
        header(&m, 0x100, VIRTIO_BLK_T_IN, 1);
        assert!(ioerr(parse(&m, &[(0x100, 16, false), (0x1000, 4096, true), (0x200, 1, true)], &DEV)));
        header(&m, 0x100, VIRTIO_BLK_T_IN, u64::MAX / 256);
        assert!(ioerr(parse(&m, &[(0x100, 16, false), (0x1000, 4096, true), (0x200, 1, true)], &DEV)));
        header(&m, 0x100, VIRTIO_BLK_T_OUT, 0);
        assert!(ioerr(parse(&m, &[(0x100, 16, false), (0x1000, 100, false), (0x200, 1, true)], &DEV)));
        // Short header.
        assert!(ioerr(parse(&m, &[(0x100, 8, false), (0x200, 1, true)], &DEV)));
        // Unknown type: UNSUPP.
        header(&m, 0x100, 77, 0);
        assert!(matches!(parse(&m, &[(0x100, 16, false), (0x200, 1, true)], &DEV), Parsed::Fail { status: 2, .. }));
        // No status byte at all.
        assert!(matches!(parse(&m, &[(0x100, 16, false)], &DEV), Parsed::Unanswerable(_)));
        assert!(matches!(parse(&m, &[(0x100, 16, false), (0x30_0000, 1, true)], &DEV), Parsed::Unanswerable(_)));
        assert!(matches!(parse(&m, &[], &DEV), Parsed::Unanswerable(_)));
        // Read-only devices refuse writes.
        header(&m, 0x100, VIRTIO_BLK_T_OUT, 0);
        let ro = BlkDevice { read_only: true, ..DEV };
        assert!(ioerr(parse(&m, &[(0x100, 16, false), (0x1000, 4096, false), (0x200, 1, true)], &ro)));
    }

    #[test]
    fn discard_and_write_zeroes_ranges_are_validated() {
        let m = mem();
        header(&m, 0x100, VIRTIO_BLK_T_WRITE_ZEROES, 0);
        let mut seg = [0u8; 32];
        seg[0..8].copy_from_slice(&8u64.to_le_bytes());
        seg[8..12].copy_from_slice(&16u32.to_le_bytes());
        seg[12..16].copy_from_slice(&1u32.to_le_bytes());
        seg[16..24].copy_from_slice(&64u64.to_le_bytes());
        seg[24..28].copy_from_slice(&8u32.to_le_bytes());
        m.write_slice(&seg, GuestAddress(0x110)).unwrap();
        let Parsed::Ok(r) = parse(&m, &[(0x100, 48, false), (0x200, 1, true)], &DEV) else { panic!() };
        assert_eq!(r.kind, Kind::WriteZeroes(vec![Range { sector: 8, sectors: 16, flags: 1 }, Range { sector: 64, sectors: 8, flags: 0 }]));
        // The unmap flag is not valid on discard.
        header(&m, 0x100, VIRTIO_BLK_T_DISCARD, 0);
        assert!(matches!(parse(&m, &[(0x100, 48, false), (0x200, 1, true)], &DEV), Parsed::Fail { status: 2, .. }));
        // Misaligned range, partial segment.
        seg[12..16].copy_from_slice(&0u32.to_le_bytes());
        seg[0..8].copy_from_slice(&9u64.to_le_bytes());
        m.write_slice(&seg, GuestAddress(0x110)).unwrap();
        assert!(matches!(parse(&m, &[(0x100, 48, false), (0x200, 1, true)], &DEV), Parsed::Fail { status: 1, .. }));
        assert!(matches!(parse(&m, &[(0x100, 40, false), (0x200, 1, true)], &DEV), Parsed::Fail { status: 1, .. }));
    }
}
