//! The out-of-band record the VSL writes beside every page it programs.
//!
//! Recovery after a power cut rebuilds the whole forward map from these
//! records alone, so each one says what the page is (user data, a trim note,
//! a checkpoint chunk, padding), which LBAs it holds, and the global version
//! sequence that orders it against every other copy of those LBAs.
//!
//! Layout (little endian, [`OOB_RECORD_LEN`] bytes, the rest of the OOB area
//! is zero):
//!
//! | offset | size | field |
//! |-------:|-----:|-------|
//! | 0      | 4    | magic `VSL2` |
//! | 4      | 1    | kind |
//! | 5      | 1    | bits 0-3: flags (`ATOMIC`, `ATOMIC_COMMIT`); bits 4-7: log2 of the CRC slots (0..=3) |
//! | 6      | 2    | count (sectors for data, ranges for trim notes, bytes for checkpoints) |
//! | 8      | 8    | version sequence |
//! | 16     | 8    | atomic group id (0 = none) |
//! | 24     | 2    | member index |
//! | 26     | 2    | member count |
//! | 28     | 32   | LBAs of the sectors in the page (`u32` each, up to 8) |
//! | 60     | 32   | per-sector version offsets (`u32` each): sector `i` has version `seq + delta[i]` |
//! | 92     | 32   | data CRCs (`u32` each, up to 8): crc32c of each sector slot's data |
//! | 124    | 4    | crc32c over bytes 0..124 (checked by OOB-only scans) |
//!
//! Data CRCs: a page is cut into `slots` equal CRC slots. Data pages of a
//! format with several sectors per page have one slot per sector, so any run
//! of sectors can be read and checked without the rest of the page (a column
//! read); only the slots that hold sectors (`count`) carry a CRC, the rest
//! are 0. Every other page (one sector per page, trim notes, checkpoints,
//! padding) has one slot: a single CRC over the whole page.
//!
//! The header CRC covers the data CRCs and the LBAs, so a data CRC that
//! matches binds the sector to the LBA the header names.
//!
//! User writes give every sector of a page the same version (offsets 0).
//! The groomer packs live sectors of several pages into one page when
//! sectors are smaller than pages, keeping each sector's own version.
//!
//! Version history: `VSL1` (format version 1) had one CRC over the header
//! and the whole page at offset 92 and the header CRC at 96; it is not read
//! any more (the superblock's format version refuses such cards).

/// Bytes of the OOB area the record uses.
pub const OOB_RECORD_LEN: usize = 128;
/// Most sectors (LBAs) one page can hold: a 4 KiB page of 512-byte sectors.
pub const MAX_SECTORS_PER_PAGE: usize = 8;

const MAGIC: u32 = u32::from_le_bytes(*b"VSL2");
/// Bytes before the data CRCs.
const HEADER_LEN: usize = 92;
/// Offset of the header CRC (after the data CRCs).
const HCRC_AT: usize = HEADER_LEN + 4 * MAX_SECTORS_PER_PAGE;
/// Bits of byte 5 that hold log2 of the CRC slot count.
const SLOTS_SHIFT: u32 = 4;

/// LBA slot value for a sector slot that holds nothing (padding).
pub const NO_LBA: u32 = u32::MAX;

/// What a page holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PageKind {
    /// User data sectors.
    Data,
    /// A trim note: `(lba, count)` ranges that read as zeros from `seq` on.
    Trim,
    /// A chunk of a clean-detach checkpoint.
    Checkpoint,
    /// Filler written to close an erase block early (atomic group alignment).
    Pad,
}

impl PageKind {
    const fn code(self) -> u8 {
        match self {
            PageKind::Data => 1,
            PageKind::Trim => 2,
            PageKind::Checkpoint => 3,
            PageKind::Pad => 4,
        }
    }

    const fn from_code(code: u8) -> Option<Self> {
        match code {
            1 => Some(PageKind::Data),
            2 => Some(PageKind::Trim),
            3 => Some(PageKind::Checkpoint),
            4 => Some(PageKind::Pad),
            _ => None,
        }
    }
}

/// Flag: the page is a member of an atomic group.
pub const FLAG_ATOMIC: u8 = 1 << 0;
/// Flag: the page is the last member of its atomic group.
pub const FLAG_ATOMIC_COMMIT: u8 = 1 << 1;

/// The decoded OOB record of one page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OobRecord {
    /// What the page holds.
    pub kind: PageKind,
    /// `FLAG_*` bits.
    pub flags: u8,
    /// Sectors (data), ranges (trim) or payload bytes (checkpoint).
    pub count: u16,
    /// Global version sequence of the write that produced the content.
    pub seq: u64,
    /// Atomic group id (0 when not atomic).
    pub group: u64,
    /// Index of this page in its atomic group.
    pub member_index: u16,
    /// Pages in the atomic group.
    pub member_count: u16,
    /// LBA of each sector slot; [`NO_LBA`] for unused slots.
    pub lbas: [u32; MAX_SECTORS_PER_PAGE],
    /// Version offset of each sector slot over `seq`.
    pub seq_delta: [u32; MAX_SECTORS_PER_PAGE],
    /// CRC slots the page is cut into: 1 (one CRC over the whole page, the
    /// default) or the format's sectors per page for data pages (1, 2, 4 or
    /// 8; anything else counts as 1).
    pub slots: u8,
}

/// The data CRCs of one page, as [`OobRecord::data_crc`] computes them and
/// [`OobRecord::encode_with_crc`] stores them: one crc32c per CRC slot that
/// holds data, 0 for the others.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DataCrc(pub [u32; MAX_SECTORS_PER_PAGE]);

impl OobRecord {
    /// A record for `kind` with version `seq` and nothing else set (one CRC
    /// slot).
    pub const fn new(kind: PageKind, seq: u64) -> Self {
        Self {
            kind,
            flags: 0,
            count: 0,
            seq,
            group: 0,
            member_index: 0,
            member_count: 0,
            lbas: [NO_LBA; MAX_SECTORS_PER_PAGE],
            seq_delta: [0; MAX_SECTORS_PER_PAGE],
            slots: 1,
        }
    }

    /// Version of the sector in `slot`.
    pub const fn slot_seq(&self, slot: usize) -> u64 {
        self.seq + self.seq_delta[slot] as u64
    }

    /// Whether the page belongs to a not-yet-relocated atomic group.
    pub const fn is_atomic(&self) -> bool {
        self.flags & FLAG_ATOMIC != 0
    }

    /// log2 of the CRC slot count (0 for anything but 2, 4 or 8 slots).
    const fn slots_log2(&self) -> u32 {
        match self.slots {
            2 | 4 | 8 => self.slots.trailing_zeros(),
            _ => 0,
        }
    }

    /// CRC slots that carry a CRC: all of a one-slot page, the sector slots
    /// `0..count` of a data page cut into sectors.
    pub const fn crc_slots(&self) -> usize {
        let slots = 1usize << self.slots_log2();
        if slots > 1 && matches!(self.kind, PageKind::Data) {
            if (self.count as usize) < slots {
                self.count as usize
            } else {
                slots
            }
        } else {
            slots
        }
    }

    fn header(&self) -> [u8; HEADER_LEN] {
        let mut h = [0u8; HEADER_LEN];
        h[0..4].copy_from_slice(&MAGIC.to_le_bytes());
        h[4] = self.kind.code();
        h[5] = (self.flags & 0x0f) | ((self.slots_log2() as u8) << SLOTS_SHIFT);
        h[6..8].copy_from_slice(&self.count.to_le_bytes());
        h[8..16].copy_from_slice(&self.seq.to_le_bytes());
        h[16..24].copy_from_slice(&self.group.to_le_bytes());
        h[24..26].copy_from_slice(&self.member_index.to_le_bytes());
        h[26..28].copy_from_slice(&self.member_count.to_le_bytes());
        for (i, lba) in self.lbas.iter().enumerate() {
            h[28 + 4 * i..32 + 4 * i].copy_from_slice(&lba.to_le_bytes());
        }
        for (i, d) in self.seq_delta.iter().enumerate() {
            h[60 + 4 * i..64 + 4 * i].copy_from_slice(&d.to_le_bytes());
        }
        h
    }

    /// The data CRCs of a page holding `data` (the whole page) that
    /// [`Self::encode_with_crc`] stores: one per CRC slot that holds data.
    pub fn data_crc(&self, data: &[u8]) -> DataCrc {
        let mut crcs = [0u32; MAX_SECTORS_PER_PAGE];
        let slots = 1usize << self.slots_log2();
        if slots == 1 {
            crcs[0] = crc32c_append_wide(0, data);
        } else {
            let ss = data.len() / slots;
            for (k, crc) in crcs.iter_mut().enumerate().take(self.crc_slots()) {
                *crc = sector_crc(&data[k * ss..(k + 1) * ss]);
            }
        }
        DataCrc(crcs)
    }

    /// Encodes the record for a page holding `data` into `out`
    /// (`out.len() >= OOB_RECORD_LEN`; bytes past the record are zeroed).
    /// Returns `false` (writing nothing) if `out` is too short.
    pub fn encode(&self, data: &[u8], out: &mut [u8]) -> bool {
        self.encode_with_crc(self.data_crc(data), out)
    }

    /// Like [`Self::encode`] with data CRCs computed by the caller through
    /// [`Self::data_crc`] (e.g. from memory only reachable through raw
    /// pointers).
    pub fn encode_with_crc(&self, crc: DataCrc, out: &mut [u8]) -> bool {
        if out.len() < OOB_RECORD_LEN {
            return false;
        }
        out[..HEADER_LEN].copy_from_slice(&self.header());
        for (i, c) in crc.0.iter().enumerate() {
            out[HEADER_LEN + 4 * i..HEADER_LEN + 4 * i + 4].copy_from_slice(&c.to_le_bytes());
        }
        let hcrc = crc32c::crc32c(&out[..HCRC_AT]);
        out[HCRC_AT..HCRC_AT + 4].copy_from_slice(&hcrc.to_le_bytes());
        out[OOB_RECORD_LEN..].fill(0);
        true
    }

    /// Decodes an OOB area, checking magic, kind and the header CRC (but not
    /// the data CRCs: see [`DecodedOob::data_matches`] and
    /// [`DecodedOob::sectors_match`]). `None` for anything that is not an
    /// intact record (erased, torn, foreign, or written by format version 1).
    pub fn decode(raw: &[u8]) -> Option<DecodedOob> {
        if raw.len() < OOB_RECORD_LEN {
            return None;
        }
        let u16_at = |o: usize| u16::from_le_bytes([raw[o], raw[o + 1]]);
        let u32_at = |o: usize| u32::from_le_bytes(raw[o..o + 4].try_into().unwrap_or([0; 4]));
        let u64_at = |o: usize| u64::from_le_bytes(raw[o..o + 8].try_into().unwrap_or([0; 8]));
        if u32_at(0) != MAGIC || crc32c::crc32c(&raw[..HCRC_AT]) != u32_at(HCRC_AT) {
            return None;
        }
        let kind = PageKind::from_code(raw[4])?;
        let slots_log2 = raw[5] >> SLOTS_SHIFT;
        if slots_log2 > MAX_SECTORS_PER_PAGE.trailing_zeros() as u8 {
            return None;
        }
        let mut lbas = [NO_LBA; MAX_SECTORS_PER_PAGE];
        let mut seq_delta = [0u32; MAX_SECTORS_PER_PAGE];
        let mut crcs = [0u32; MAX_SECTORS_PER_PAGE];
        for i in 0..MAX_SECTORS_PER_PAGE {
            lbas[i] = u32_at(28 + 4 * i);
            seq_delta[i] = u32_at(60 + 4 * i);
            crcs[i] = u32_at(HEADER_LEN + 4 * i);
        }
        let record = OobRecord {
            kind,
            flags: raw[5] & 0x0f,
            count: u16_at(6),
            seq: u64_at(8),
            group: u64_at(16),
            member_index: u16_at(24),
            member_count: u16_at(26),
            lbas,
            seq_delta,
            slots: 1 << slots_log2,
        };
        if record.kind == PageKind::Data && record.count as usize > MAX_SECTORS_PER_PAGE {
            return None;
        }
        if record.is_atomic() && (record.member_count == 0 || record.member_index >= record.member_count) {
            return None;
        }
        Some(DecodedOob {
            record,
            crc: DataCrc(crcs),
        })
    }
}

/// A record read back from flash with the data CRCs it carried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodedOob {
    /// The record.
    pub record: OobRecord,
    /// The stored data CRCs.
    pub crc: DataCrc,
}

/// `crc32c::crc32c_append(crc, data)`, computed with carry-less multiply
/// folding (AVX-512 VPCLMULQDQ where the CPU has it): about twice as fast on
/// a 4 KiB page as the CRC32 instruction, and the CRC of every page read is
/// on the read path. Bit-for-bit the same CRC-32C.
pub fn crc32c_append_wide(crc: u32, data: &[u8]) -> u32 {
    // The running state of a reflected CRC-32C is the finished CRC with the
    // final xor (0xffffffff) undone.
    let mut digest = crc_fast::Digest::new_with_init_state(crc_fast::CrcAlgorithm::Crc32Iscsi, (crc ^ 0xffff_ffff) as u64);
    digest.update(data);
    digest.finalize() as u32
}

/// The crc32c of one sector slot (512 B to 32 KiB): the CRC32 instruction
/// for short slots, where folding does not pay for its setup.
pub fn sector_crc(data: &[u8]) -> u32 {
    if data.len() <= 1024 {
        crc32c::crc32c(data)
    } else {
        crc32c_append_wide(0, data)
    }
}

impl DecodedOob {
    /// Whether `data` (the whole page) is the content the record was
    /// written with, in every CRC slot that holds data.
    pub fn data_matches(&self, data: &[u8]) -> bool {
        self.record.data_crc(data) == self.crc
    }

    /// Whether `data`, the sectors in slots `first..first + data.len() /
    /// sector_size` of a page cut into one CRC slot per sector, is what the
    /// record was written with. False when the page is not cut into sector
    /// slots of that size (then only the whole page can be checked, with
    /// [`Self::data_matches`]), or the run reaches past the sectors the page
    /// holds.
    pub fn sectors_match(&self, first: usize, sector_size: usize, data: &[u8]) -> bool {
        if sector_size == 0 || !data.len().is_multiple_of(sector_size) {
            return false;
        }
        let n = data.len() / sector_size;
        let slots = self.record.slots as usize;
        if slots == 1 {
            // One CRC over the whole page: only a whole-page run checks.
            return first == 0 && n == 1 && crc32c_append_wide(0, data) == self.crc.0[0];
        }
        if n == 0 || first + n > self.record.crc_slots() {
            return false;
        }
        data.chunks_exact(sector_size)
            .zip(&self.crc.0[first..first + n])
            .all(|(sector, &crc)| sector_crc(sector) == crc)
    }
}

/// One trimmed range in a trim note.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TrimRange {
    /// First LBA.
    pub lba: u32,
    /// Number of sectors.
    pub count: u32,
}

/// Ranges one trim note page of `page_size` bytes can carry.
pub const fn trim_ranges_per_page(page_size: usize) -> usize {
    page_size / 8
}

/// Writes `ranges` into a trim note page body (`page.len()` bytes; the rest
/// is zeroed). Returns how many ranges fit.
pub fn encode_trim_ranges(ranges: &[TrimRange], page: &mut [u8]) -> usize {
    let n = ranges.len().min(trim_ranges_per_page(page.len()));
    page.fill(0);
    for (i, r) in ranges[..n].iter().enumerate() {
        page[8 * i..8 * i + 4].copy_from_slice(&r.lba.to_le_bytes());
        page[8 * i + 4..8 * i + 8].copy_from_slice(&r.count.to_le_bytes());
    }
    n
}

/// Reads the `count` ranges of a trim note page body.
pub fn decode_trim_ranges(page: &[u8], count: usize) -> impl Iterator<Item = TrimRange> + '_ {
    let n = count.min(trim_ranges_per_page(page.len()));
    (0..n).map(move |i| TrimRange {
        lba: u32::from_le_bytes(page[8 * i..8 * i + 4].try_into().unwrap_or([0; 4])),
        count: u32::from_le_bytes(page[8 * i + 4..8 * i + 8].try_into().unwrap_or([0; 4])),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> OobRecord {
        let mut r = OobRecord::new(PageKind::Data, 0x1234_5678_9abc);
        r.flags = FLAG_ATOMIC | FLAG_ATOMIC_COMMIT;
        r.count = 3;
        r.group = 77;
        r.member_index = 4;
        r.member_count = 5;
        r.lbas[..3].copy_from_slice(&[10, 11, 900]);
        r.seq_delta[..3].copy_from_slice(&[0, 5, 1 << 31]);
        r
    }

    #[test]
    fn wide_crc_equals_crc32c_append_for_every_length_and_start() {
        let data: Vec<u8> = (0..9000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
        for len in [0, 1, 7, 63, 64, 255, 256, 511, 512, 4095, 4096, 8192, 9000] {
            for start in [0u32, 0xffff_ffff, 0x1234_5678] {
                assert_eq!(crc32c_append_wide(start, &data[..len]), crc32c::crc32c_append(start, &data[..len]), "len {len}");
            }
        }
    }

    #[test]
    fn round_trips_and_checks_data() {
        let data = vec![0xa5u8; 4096];
        let mut oob = [0xffu8; 128];
        assert!(sample().encode(&data, &mut oob));
        assert!(oob[OOB_RECORD_LEN..].iter().all(|&b| b == 0));
        let decoded = OobRecord::decode(&oob).expect("intact record decodes");
        assert_eq!(decoded.record, sample());
        assert!(decoded.data_matches(&data));
        let mut torn = data.clone();
        torn[4000] ^= 1;
        assert!(!decoded.data_matches(&torn));
    }

    #[test]
    fn rejects_erased_torn_and_short_areas() {
        assert!(OobRecord::decode(&[0xffu8; 128]).is_none());
        assert!(OobRecord::decode(&[0u8; 128]).is_none());
        let mut oob = [0u8; 128];
        sample().encode(&[1, 2, 3], &mut oob);
        assert_eq!(sample().slot_seq(2), 0x1234_5678_9abc + (1 << 31));
        for bit in [0usize, 5 * 8, 5 * 8 + 6, 9 * 8 + 3, 30 * 8, 62 * 8, 70 * 8, 94 * 8, 98 * 8, 123 * 8 + 7, 126 * 8] {
            let mut bad = oob;
            bad[bit / 8] ^= 1 << (bit % 8);
            assert!(OobRecord::decode(&bad).is_none(), "bit {bit} flip detected");
        }
        assert!(OobRecord::decode(&oob[..40]).is_none());
        let mut short = [0u8; 40];
        assert!(!sample().encode(&[], &mut short));
    }

    fn sectors(n: usize) -> Vec<u8> {
        (0..n * 512).map(|i| (i / 512 * 31 + i % 251) as u8).collect()
    }

    #[test]
    fn sector_slots_round_trip_and_check_runs_alone() {
        let data = sectors(8);
        let mut r = sample();
        r.slots = 8;
        r.count = 6;
        let mut oob = [0u8; 128];
        assert!(r.encode(&data, &mut oob));
        let d = OobRecord::decode(&oob).expect("intact record decodes");
        assert_eq!(d.record, r);
        assert_eq!(d.record.crc_slots(), 6);
        for k in 0..6 {
            assert_eq!(d.crc.0[k], crc32c::crc32c(&data[k * 512..(k + 1) * 512]), "slot {k}");
        }
        assert_eq!(d.crc.0[6..], [0, 0]);
        assert!(d.data_matches(&data));
        for first in 0..6 {
            for n in 1..=6 - first {
                assert!(d.sectors_match(first, 512, &data[first * 512..(first + n) * 512]), "run {first}+{n}");
            }
        }
        // Past the sectors the page holds, a wrong slot, a flipped bit.
        assert!(!d.sectors_match(5, 512, &data[5 * 512..7 * 512]));
        assert!(!d.sectors_match(1, 512, &data[..512]));
        let mut bad = data.clone();
        bad[3 * 512 + 17] ^= 0x40;
        assert!(!d.sectors_match(3, 512, &bad[3 * 512..4 * 512]));
        assert!(d.sectors_match(2, 512, &bad[2 * 512..3 * 512]), "other sectors still check");
        assert!(!d.data_matches(&bad));
        // Padding slots past `count` are not covered.
        let mut pad = data.clone();
        pad[7 * 512] ^= 1;
        assert!(d.data_matches(&pad));
        assert!(!d.sectors_match(0, 500, &data[..1000]), "misaligned sector size");
    }

    #[test]
    fn one_slot_pages_check_only_whole() {
        let data = sectors(8);
        let r = sample();
        let mut oob = [0u8; 128];
        r.encode(&data, &mut oob);
        let d = OobRecord::decode(&oob).unwrap();
        assert_eq!(d.record.slots, 1);
        assert_eq!(d.crc.0[0], crc32c::crc32c(&data));
        assert_eq!(d.crc.0[1..], [0; 7]);
        assert!(d.sectors_match(0, 4096, &data));
        assert!(!d.sectors_match(0, 512, &data[..512]));
        // Slot counts other than 1, 2, 4, 8 store as one slot.
        let mut odd = sample();
        odd.slots = 3;
        odd.encode(&data, &mut oob);
        assert_eq!(OobRecord::decode(&oob).unwrap().record.slots, 1);
    }

    #[test]
    fn refuses_format_version_1_records() {
        // A VSL1 record: same header, data CRC at 92, header CRC at 96.
        let mut old = [0u8; 128];
        sample().encode(&[], &mut old);
        old[0..4].copy_from_slice(b"VSL1");
        old[92..128].fill(0);
        let hcrc = crc32c::crc32c(&old[..96]);
        old[96..100].copy_from_slice(&hcrc.to_le_bytes());
        assert!(OobRecord::decode(&old).is_none());
        // Reserved slot counts (log2 > 3) are refused too.
        let mut r = [0u8; 128];
        sample().encode(&[], &mut r);
        r[5] |= 4 << 4;
        let hcrc = crc32c::crc32c(&r[..124]);
        r[124..128].copy_from_slice(&hcrc.to_le_bytes());
        assert!(OobRecord::decode(&r).is_none());
    }

    #[test]
    fn rejects_inconsistent_atomic_members() {
        let mut r = sample();
        r.member_index = 5;
        let mut oob = [0u8; 128];
        r.encode(&[], &mut oob);
        assert!(OobRecord::decode(&oob).is_none());
    }

    #[test]
    fn trim_ranges_round_trip() {
        let ranges: Vec<TrimRange> = (0..600).map(|i| TrimRange { lba: i * 10, count: i + 1 }).collect();
        let mut page = vec![0xeeu8; 4096];
        let n = encode_trim_ranges(&ranges, &mut page);
        assert_eq!(n, 512);
        let back: Vec<TrimRange> = decode_trim_ranges(&page, n).collect();
        assert_eq!(back, ranges[..512]);
    }
}
