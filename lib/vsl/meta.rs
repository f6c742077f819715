//! The superblock and the metadata log records.
//!
//! The metadata area is the first two good erase blocks of die 0, used as a
//! ping-pong log of one-page records. Every record carries a record sequence;
//! the newest intact record says whether the last detach was clean (a
//! [`CleanMark`] naming the checkpoint) or not (a `DirtyMark`, or a superblock
//! alone after a crash in the middle of rotating the log).
//!
//! Page layout (little endian): magic `VSLM` (4), record type (2), format
//! version (2), record sequence (8), payload length (4), crc32c over bytes
//! 0..20 and the payload (4), payload.

use serde::Serialize;

use super::codec::{Reader, Truncated, Writer};
use crate::card::Geometry;

const MAGIC: u32 = u32::from_le_bytes(*b"VSLM");
const HEADER_LEN: usize = 24;

/// On-flash format version written by this code. Version 2: per-sector data
/// CRCs in the OOB records (see `oob.rs`); version 1 cards must be
/// reformatted.
pub const FORMAT_VERSION: u16 = 2;

const TYPE_SUPERBLOCK: u16 = 1;
const TYPE_CLEAN: u16 = 2;
const TYPE_DIRTY: u16 = 3;

/// The formatted device's identity and shape.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Superblock {
    /// Sector size in bytes (512 or 4096).
    pub sector_size: u32,
    /// User capacity in sectors.
    pub num_sectors: u64,
    /// Geometry of the card at format time (attach refuses another shape).
    pub geometry: Geometry,
    /// Format UUID.
    pub uuid: [u8; 16],
    /// Seconds since the Unix epoch at format time.
    pub created_unix: u64,
    /// The two metadata blocks (block numbers on die 0).
    pub meta_blocks: [u32; 2],
    /// Largest atomic write, in pages.
    pub max_atomic_pages: u32,
}

impl Superblock {
    /// The UUID in its usual 8-4-4-4-12 text form.
    pub fn uuid_string(&self) -> String {
        let h: String = self.uuid.iter().map(|b| format!("{b:02x}")).collect();
        format!("{}-{}-{}-{}-{}", &h[0..8], &h[8..12], &h[12..16], &h[16..20], &h[20..32])
    }

    fn encode(&self, w: &mut Writer) {
        let g = &self.geometry;
        w.u32(self.sector_size)
            .u64(self.num_sectors)
            .u16(g.channels)
            .u16(g.dies_per_channel)
            .u32(g.blocks_per_die)
            .u32(g.pages_per_block)
            .u32(g.page_size)
            .u32(g.oob_size)
            .bytes(&self.uuid)
            .u64(self.created_unix)
            .u32(self.meta_blocks[0])
            .u32(self.meta_blocks[1])
            .u32(self.max_atomic_pages);
    }

    fn decode(r: &mut Reader<'_>) -> Result<Self, Truncated> {
        let sector_size = r.u32()?;
        let num_sectors = r.u64()?;
        let geometry = Geometry {
            channels: r.u16()?,
            dies_per_channel: r.u16()?,
            blocks_per_die: r.u32()?,
            pages_per_block: r.u32()?,
            page_size: r.u32()?,
            oob_size: r.u32()?,
        };
        let mut uuid = [0u8; 16];
        uuid.copy_from_slice(r.bytes(16)?);
        Ok(Self {
            sector_size,
            num_sectors,
            geometry,
            uuid,
            created_unix: r.u64()?,
            meta_blocks: [r.u32()?, r.u32()?],
            max_atomic_pages: r.u32()?,
        })
    }
}

/// Written by a clean detach: where the checkpoint lives and how to check it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CleanMark {
    /// Version sequence the checkpoint was taken at (next seq to assign).
    pub next_seq: u64,
    /// Checkpoint length in bytes (0 = freshly formatted, nothing written).
    pub bytes: u64,
    /// crc32c of the checkpoint bytes.
    pub crc: u32,
    /// Linear block numbers (`die * blocks_per_die + block`) holding the
    /// checkpoint, in order.
    pub blocks: Vec<u32>,
}

/// One record of the metadata log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MetaRecord {
    /// The superblock (first record of each metadata block).
    Superblock(Superblock),
    /// Clean detach: the checkpoint is valid.
    Clean(CleanMark),
    /// Attached: writes may have happened since the last checkpoint.
    Dirty,
}

/// Why a metadata page did not decode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetaDecodeError {
    /// Not a metadata record (erased or foreign page).
    NotARecord,
    /// Magic present but the CRC or length is wrong (torn write).
    Corrupt,
    /// Written by a newer format version.
    UnsupportedVersion(u16),
    /// Written by an older format version this code no longer reads.
    OutdatedVersion(u16),
}

impl MetaRecord {
    /// Most checkpoint blocks a [`CleanMark`] can list in a page of
    /// `page_size` bytes.
    pub const fn max_clean_blocks(page_size: usize) -> usize {
        (page_size - HEADER_LEN - 24) / 4
    }

    /// Encodes the record with record sequence `seq` into a `page_size`
    /// page. `None` if it does not fit.
    pub fn encode(&self, seq: u64, page_size: usize) -> Option<Vec<u8>> {
        let mut payload = Writer::new();
        let kind = match self {
            MetaRecord::Superblock(sb) => {
                sb.encode(&mut payload);
                TYPE_SUPERBLOCK
            }
            MetaRecord::Clean(mark) => {
                payload
                    .u64(mark.next_seq)
                    .u64(mark.bytes)
                    .u32(mark.crc)
                    .u32(u32::try_from(mark.blocks.len()).ok()?);
                for b in &mark.blocks {
                    payload.u32(*b);
                }
                TYPE_CLEAN
            }
            MetaRecord::Dirty => TYPE_DIRTY,
        };
        let payload = payload.finish();
        if HEADER_LEN + payload.len() > page_size {
            return None;
        }
        let mut page = vec![0u8; page_size];
        page[0..4].copy_from_slice(&MAGIC.to_le_bytes());
        page[4..6].copy_from_slice(&kind.to_le_bytes());
        page[6..8].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
        page[8..16].copy_from_slice(&seq.to_le_bytes());
        page[16..20].copy_from_slice(&(payload.len() as u32).to_le_bytes());
        page[HEADER_LEN..HEADER_LEN + payload.len()].copy_from_slice(&payload);
        let crc = crc32c::crc32c_append(crc32c::crc32c(&page[..20]), &payload);
        page[20..24].copy_from_slice(&crc.to_le_bytes());
        Some(page)
    }

    /// Decodes a metadata page into `(record sequence, record)`.
    pub fn decode(page: &[u8]) -> Result<(u64, MetaRecord), MetaDecodeError> {
        let mut r = Reader::new(page);
        let header = (|| -> Result<_, Truncated> {
            Ok((r.u32()?, r.u16()?, r.u16()?, r.u64()?, r.u32()?, r.u32()?))
        })();
        let (magic, kind, version, seq, len, crc) = header.map_err(|_| MetaDecodeError::NotARecord)?;
        if magic != MAGIC {
            return Err(MetaDecodeError::NotARecord);
        }
        let payload = r.bytes(len as usize).map_err(|_| MetaDecodeError::Corrupt)?;
        if crc32c::crc32c_append(crc32c::crc32c(&page[..20]), payload) != crc {
            return Err(MetaDecodeError::Corrupt);
        }
        if version > FORMAT_VERSION {
            return Err(MetaDecodeError::UnsupportedVersion(version));
        }
        if version < FORMAT_VERSION {
            return Err(MetaDecodeError::OutdatedVersion(version));
        }
        let mut p = Reader::new(payload);
        let record = match kind {
            TYPE_SUPERBLOCK => MetaRecord::Superblock(Superblock::decode(&mut p).map_err(|_| MetaDecodeError::Corrupt)?),
            TYPE_CLEAN => {
                let mark = (|| -> Result<CleanMark, Truncated> {
                    let next_seq = p.u64()?;
                    let bytes = p.u64()?;
                    let crc = p.u32()?;
                    let n = p.u32()? as usize;
                    if n > p.remaining() / 4 {
                        return Err(Truncated);
                    }
                    let blocks = (0..n).map(|_| p.u32()).collect::<Result<_, _>>()?;
                    Ok(CleanMark {
                        next_seq,
                        bytes,
                        crc,
                        blocks,
                    })
                })()
                .map_err(|_| MetaDecodeError::Corrupt)?;
                MetaRecord::Clean(mark)
            }
            TYPE_DIRTY => MetaRecord::Dirty,
            _ => return Err(MetaDecodeError::Corrupt),
        };
        Ok((seq, record))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sb() -> Superblock {
        Superblock {
            sector_size: 512,
            num_sectors: 123_456,
            geometry: Geometry {
                channels: 2,
                dies_per_channel: 4,
                blocks_per_die: 64,
                pages_per_block: 32,
                page_size: 4096,
                oob_size: 128,
            },
            uuid: *b"0123456789abcdef",
            created_unix: 1_700_000_000,
            meta_blocks: [0, 2],
            max_atomic_pages: 32,
        }
    }

    #[test]
    fn records_round_trip() {
        let records = [
            MetaRecord::Superblock(sb()),
            MetaRecord::Dirty,
            MetaRecord::Clean(CleanMark {
                next_seq: 99,
                bytes: 1 << 20,
                crc: 0xabcd,
                blocks: vec![5, 9, 300],
            }),
        ];
        for (i, rec) in records.iter().enumerate() {
            let page = rec.encode(i as u64 + 10, 4096).expect("fits");
            assert_eq!(page.len(), 4096);
            assert_eq!(MetaRecord::decode(&page), Ok((i as u64 + 10, rec.clone())));
        }
    }

    #[test]
    fn corruption_and_foreign_pages_are_detected() {
        let page = MetaRecord::Superblock(sb()).encode(1, 4096).unwrap();
        let mut bad = page.clone();
        bad[30] ^= 0x10;
        assert_eq!(MetaRecord::decode(&bad), Err(MetaDecodeError::Corrupt));
        assert_eq!(MetaRecord::decode(&vec![0xffu8; 4096]), Err(MetaDecodeError::NotARecord));
        assert_eq!(MetaRecord::decode(&[1, 2, 3]), Err(MetaDecodeError::NotARecord));
        let mut newer = page;
        newer[6] = 9;
        let len = u32::from_le_bytes(newer[16..20].try_into().unwrap()) as usize;
        let crc = crc32c::crc32c_append(crc32c::crc32c(&newer[..20]), &newer[24..24 + len]);
        newer[20..24].copy_from_slice(&crc.to_le_bytes());
        assert_eq!(MetaRecord::decode(&newer), Err(MetaDecodeError::UnsupportedVersion(9)));
        let mut older = newer;
        older[6..8].copy_from_slice(&1u16.to_le_bytes());
        let crc = crc32c::crc32c_append(crc32c::crc32c(&older[..20]), &older[24..24 + len]);
        older[20..24].copy_from_slice(&crc.to_le_bytes());
        assert_eq!(MetaRecord::decode(&older), Err(MetaDecodeError::OutdatedVersion(1)));
    }

    #[test]
    fn oversized_clean_marks_are_refused() {
        let n = MetaRecord::max_clean_blocks(4096);
        let fits = MetaRecord::Clean(CleanMark {
            next_seq: 1,
            bytes: 1,
            crc: 1,
            blocks: vec![7; n],
        });
        assert!(fits.encode(1, 4096).is_some());
        let too_many = MetaRecord::Clean(CleanMark {
            next_seq: 1,
            bytes: 1,
            crc: 1,
            blocks: vec![7; n + 1],
        });
        assert!(too_many.encode(1, 4096).is_none());
    }

    #[test]
    fn uuid_prints_in_canonical_form() {
        let mut s = sb();
        s.uuid = [0x12; 16];
        assert_eq!(s.uuid_string(), "12121212-1212-1212-1212-121212121212");
    }
}
