//! The metadata log on the card: two erase blocks of die 0 used as a
//! ping-pong log of one-page [`MetaRecord`]s. When the current block fills,
//! the other is erased and the superblock is rewritten there first, so each
//! block always starts with a superblock and the newest intact record is
//! always findable.

use crate::card::{BlockInfoEntry, BlockStateCode, CardStatus, Ppa};

use super::error::VslError;
use super::meta::{MetaDecodeError, MetaRecord, Superblock};
use super::syncio::{SlotIo, SLOT_PAGES};

/// The two metadata blocks: the first two good blocks of die 0.
pub fn locate_meta_blocks(die0: &[BlockInfoEntry]) -> Option<[u32; 2]> {
    let mut good = die0
        .iter()
        .enumerate()
        .filter(|(_, e)| e.state != BlockStateCode::Bad)
        .map(|(i, _)| i as u32);
    Some([good.next()?, good.next()?])
}

/// What reading the metadata blocks found.
#[derive(Debug, Clone)]
pub struct MetaScan {
    /// Newest superblock.
    pub superblock: Superblock,
    /// Newest record of any kind (sequence, record).
    pub latest: (u64, MetaRecord),
}

/// The open metadata log.
#[derive(Debug, Clone)]
pub struct MetaLog {
    blocks: [u32; 2],
    current: usize,
    next_page: u32,
    next_seq: u64,
    pages_per_block: u32,
    page_size: usize,
    superblock: Superblock,
    plp: bool,
}

impl MetaLog {
    /// Reads every written page of both metadata blocks. `Ok(None)` if no
    /// record exists (the card is not formatted); `write_pointers` are the
    /// blocks' write pointers from block info.
    pub fn load(
        io: &mut SlotIo,
        blocks: [u32; 2],
        write_pointers: [u32; 2],
        page_size: usize,
        pages_per_block: u32,
        plp: bool,
    ) -> Result<Option<(MetaLog, MetaScan)>, VslError> {
        let mut newest_sb: Option<(u64, Superblock)> = None;
        let mut latest: Option<(u64, MetaRecord, usize)> = None;
                let mut page = vec![0u8; page_size];
        for (bi, &block) in blocks.iter().enumerate() {
            let wp = write_pointers[bi].min(pages_per_block);
            let mut first = 0u32;
            while first < wp {
                let n = (wp - first).min(SLOT_PAGES as u32);
                let ppas: Vec<Ppa> = (first..first + n).map(|p| Ppa::new(0, block, p)).collect();
                let c = io.read_sync(&ppas, true)?;
                for i in 0..n as usize {
                    if c.failed_mask & (1 << i) != 0 {
                        continue;
                    }
                    io.copy_data(0, i, &mut page);
                    match MetaRecord::decode(&page) {
                        Ok((seq, rec)) => {
                            if let MetaRecord::Superblock(sb) = &rec {
                                if newest_sb.as_ref().is_none_or(|(s, _)| seq > *s) {
                                    newest_sb = Some((seq, sb.clone()));
                                }
                            }
                            if latest.as_ref().is_none_or(|(s, _, _)| seq > *s) {
                                latest = Some((seq, rec, bi));
                            }
                        }
                        Err(MetaDecodeError::UnsupportedVersion(v)) => return Err(VslError::UnsupportedVersion(v)),
                        Err(MetaDecodeError::OutdatedVersion(v)) => return Err(VslError::OutdatedFormat(v)),
                        Err(_) => {}
                    }
                }
                first += n;
            }
        }
        let (Some((_, superblock)), Some((seq, record, bi))) = (newest_sb, latest) else {
            return Ok(None);
        };
        let log = MetaLog {
            blocks,
            current: bi,
            next_page: write_pointers[bi],
            next_seq: seq + 1,
            pages_per_block,
            page_size,
            superblock: superblock.clone(),
            plp,
        };
        Ok(Some((
            log,
            MetaScan {
                superblock,
                latest: (seq, record),
            },
        )))
    }

    /// Starts a log on freshly erased metadata blocks: writes the superblock
    /// and then `first` into `blocks[0]`.
    pub fn create(
        io: &mut SlotIo,
        blocks: [u32; 2],
        superblock: Superblock,
        first: MetaRecord,
        page_size: usize,
        pages_per_block: u32,
        plp: bool,
    ) -> Result<MetaLog, VslError> {
        let mut log = MetaLog {
            blocks,
            current: 0,
            next_page: 0,
            next_seq: 1,
            pages_per_block,
            page_size,
            superblock: superblock.clone(),
            plp,
        };
        log.write_page(io, &MetaRecord::Superblock(superblock))?;
        log.append(io, &first)?;
        Ok(log)
    }

    /// Appends a record, rotating to the other block when this one is full,
    /// and makes it durable.
    pub fn append(&mut self, io: &mut SlotIo, record: &MetaRecord) -> Result<(), VslError> {
        if self.next_page >= self.pages_per_block {
            let other = 1 - self.current;
            let c = io.erase_sync(0, self.blocks[other])?;
            if !c.status.is_ok() {
                return Err(VslError::Media {
                    what: "erasing a metadata block",
                    location: format!("die 0 block {}", self.blocks[other]),
                    status: c.status,
                });
            }
            self.current = other;
            self.next_page = 0;
            let sb = MetaRecord::Superblock(self.superblock.clone());
            self.write_page(io, &sb)?;
        }
        self.write_page(io, record)
    }

    fn write_page(&mut self, io: &mut SlotIo, record: &MetaRecord) -> Result<(), VslError> {
        let page = record
            .encode(self.next_seq, self.page_size)
            .ok_or_else(|| VslError::Corrupt("metadata record does not fit in one page".into()))?;
        io.fill_data(0, 0, &page);
        io.fill_oob(0, 0, &[]);
        let ppa = Ppa::new(0, self.blocks[self.current], self.next_page);
        let c = io.program_sync(&[ppa])?;
        if c.status != CardStatus::Success {
            return Err(VslError::Media {
                what: "writing the metadata log",
                location: ppa.to_string(),
                status: c.status,
            });
        }
        self.next_page += 1;
        self.next_seq += 1;
        if !self.plp {
            io.flush_sync()?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(state: BlockStateCode) -> BlockInfoEntry {
        BlockInfoEntry {
            state,
            bad_reason: None,
            write_pointer: 0,
            pe_cycles: 0,
        }
    }

    #[test]
    fn meta_blocks_skip_bad_blocks() {
        let die0 = [
            entry(BlockStateCode::Free),
            entry(BlockStateCode::Bad),
            entry(BlockStateCode::Full),
            entry(BlockStateCode::Free),
        ];
        assert_eq!(locate_meta_blocks(&die0), Some([0, 2]));
        assert_eq!(locate_meta_blocks(&die0[..2]), None);
    }
}
