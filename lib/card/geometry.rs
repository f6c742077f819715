//! NAND geometry and physical page addresses, modelled on Open-Channel SSD
//! 2.0's geometry (groups = channels, parallel units = dies, chunks = erase
//! blocks, sectors = pages here).

use serde::{Deserialize, Serialize};

/// Shape of the flash array behind a card.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Geometry {
    /// Independent channels (OCSSD "groups").
    pub channels: u16,
    /// Dies on each channel (OCSSD "parallel units").
    pub dies_per_channel: u16,
    /// Erase blocks on each die (OCSSD "chunks").
    pub blocks_per_die: u32,
    /// Pages in each erase block, programmed strictly in order.
    pub pages_per_block: u32,
    /// Data bytes per page: the unit of read and program.
    pub page_size: u32,
    /// Out-of-band (spare) bytes per page available to the host.
    pub oob_size: u32,
}

impl Geometry {
    /// Total dies (parallel units) on the card.
    pub const fn dies(&self) -> u32 {
        self.channels as u32 * self.dies_per_channel as u32
    }

    /// Total erase blocks on the card.
    pub const fn total_blocks(&self) -> u64 {
        self.dies() as u64 * self.blocks_per_die as u64
    }

    /// Total pages on the card.
    pub const fn total_pages(&self) -> u64 {
        self.total_blocks() * self.pages_per_block as u64
    }

    /// Bytes in one erase block (data only).
    pub const fn block_bytes(&self) -> u64 {
        self.pages_per_block as u64 * self.page_size as u64
    }

    /// Raw data capacity in bytes (all blocks, good or bad).
    pub const fn raw_bytes(&self) -> u64 {
        self.total_pages() * self.page_size as u64
    }

    /// Checks that the geometry is one a card can have: every dimension
    /// non-zero, pages a power of two between 512 B and 64 KiB, and the page
    /// count addressable by 32-bit page numbers.
    pub fn validate(&self) -> Result<(), String> {
        if self.channels == 0 || self.dies_per_channel == 0 {
            return Err("geometry needs at least one channel and one die".into());
        }
        if self.blocks_per_die == 0 || self.pages_per_block == 0 {
            return Err("geometry needs at least one block per die and one page per block".into());
        }
        if !self.page_size.is_power_of_two() || !(512..=65536).contains(&self.page_size) {
            return Err(format!(
                "page size {} is not a power of two between 512 and 65536",
                self.page_size
            ));
        }
        if self.oob_size < 16 || self.oob_size > 4096 {
            return Err(format!("OOB size {} is outside 16..=4096 bytes", self.oob_size));
        }
        if self.pages_per_block > 1 << 16 {
            return Err(format!("{} pages per block exceeds 65536", self.pages_per_block));
        }
        if self.total_pages() >= u32::MAX as u64 {
            return Err(format!(
                "{} pages exceed the 32-bit page address space",
                self.total_pages()
            ));
        }
        Ok(())
    }

    /// Linear page number of `ppa` (die-major, then block, then page).
    pub const fn page_index(&self, ppa: Ppa) -> u64 {
        (ppa.die as u64 * self.blocks_per_die as u64 + ppa.block as u64)
            * self.pages_per_block as u64
            + ppa.page as u64
    }

    /// Inverse of [`Self::page_index`].
    pub const fn ppa_of_index(&self, index: u64) -> Ppa {
        let page = (index % self.pages_per_block as u64) as u32;
        let block_linear = index / self.pages_per_block as u64;
        Ppa {
            die: (block_linear / self.blocks_per_die as u64) as u32,
            block: (block_linear % self.blocks_per_die as u64) as u32,
            page,
        }
    }

    /// Whether `ppa` names a page that exists.
    pub const fn contains(&self, ppa: Ppa) -> bool {
        ppa.die < self.dies() && ppa.block < self.blocks_per_die && ppa.page < self.pages_per_block
    }
}

/// Physical page address: die (global index `channel * dies_per_channel +
/// die_in_channel`), erase block within the die, page within the block.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Ppa {
    /// Global die index.
    pub die: u32,
    /// Erase block within the die.
    pub block: u32,
    /// Page within the erase block.
    pub page: u32,
}

impl Ppa {
    /// Builds an address.
    pub const fn new(die: u32, block: u32, page: u32) -> Self {
        Self { die, block, page }
    }

    /// Wire encoding used in command PPA lists: die in bits 40..56, block in
    /// bits 16..40, page in bits 0..16.
    pub const fn to_wire(self) -> u64 {
        ((self.die as u64 & 0xffff) << 40) | ((self.block as u64 & 0xff_ffff) << 16) | (self.page as u64 & 0xffff)
    }

    /// Decodes [`Self::to_wire`].
    pub const fn from_wire(raw: u64) -> Self {
        Self {
            die: ((raw >> 40) & 0xffff) as u32,
            block: ((raw >> 16) & 0xff_ffff) as u32,
            page: (raw & 0xffff) as u32,
        }
    }
}

impl std::fmt::Display for Ppa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "die {} block {} page {}", self.die, self.block, self.page)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small() -> Geometry {
        Geometry {
            channels: 2,
            dies_per_channel: 2,
            blocks_per_die: 8,
            pages_per_block: 16,
            page_size: 4096,
            oob_size: 64,
        }
    }

    #[test]
    fn page_index_round_trips() {
        let g = small();
        for i in 0..g.total_pages() {
            let ppa = g.ppa_of_index(i);
            assert!(g.contains(ppa));
            assert_eq!(g.page_index(ppa), i);
        }
    }

    #[test]
    fn wire_encoding_round_trips() {
        let p = Ppa::new(31, 70_000, 255);
        assert_eq!(Ppa::from_wire(p.to_wire()), p);
    }

    #[test]
    fn validation_rejects_bad_shapes() {
        assert!(small().validate().is_ok());
        assert!(Geometry { page_size: 3000, ..small() }.validate().is_err());
        assert!(Geometry { channels: 0, ..small() }.validate().is_err());
        assert!(Geometry { blocks_per_die: u32::MAX, ..small() }.validate().is_err());
    }
}
