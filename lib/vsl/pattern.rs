//! Self-describing sector contents for the verify and torture tools: every
//! sector carries a header (magic, LBA, generation, seed) and a body derived
//! from them, closed by a crc32c, so any sector read back can be checked on
//! its own and attributed to the write that produced it.
//!
//! Layout: magic `IOMV` (4), crc32c of everything after it (4), LBA (8),
//! generation (8), seed (8), body.

const MAGIC: u32 = u32::from_le_bytes(*b"IOMV");
const HEADER: usize = 32;

/// What a sector read back holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SectorContent {
    /// All zeros: never written or unmapped.
    Zero,
    /// Intact data of `generation` for the expected LBA and seed.
    Data {
        /// Generation (write tag) of the write that produced it.
        generation: u64,
    },
    /// Intact data, but written for another LBA (misdirected write/read).
    WrongLba {
        /// LBA named in the header.
        lba: u64,
    },
    /// Intact data from another run (seed differs).
    WrongSeed,
    /// Anything else: torn, corrupt, foreign.
    Garbage,
}

fn body_byte(state: &mut u64) -> u8 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    (*state >> 24) as u8
}

/// Fills one sector for (`lba`, `generation`, `seed`). `sector.len() >= 32`.
pub fn fill_sector(sector: &mut [u8], lba: u64, generation: u64, seed: u64) {
    if sector.len() < HEADER {
        sector.fill(0xa5);
        return;
    }
    sector[8..16].copy_from_slice(&lba.to_le_bytes());
    sector[16..24].copy_from_slice(&generation.to_le_bytes());
    sector[24..32].copy_from_slice(&seed.to_le_bytes());
    let mut st = lba.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ generation.rotate_left(17) ^ seed.rotate_left(41) ^ 0x1234_5678;
    if st == 0 {
        st = 1;
    }
    for b in &mut sector[HEADER..] {
        *b = body_byte(&mut st);
    }
    let crc = crc32c::crc32c(&sector[8..]);
    sector[0..4].copy_from_slice(&MAGIC.to_le_bytes());
    sector[4..8].copy_from_slice(&crc.to_le_bytes());
}

/// Fills consecutive sectors of `buf` starting at `lba`.
pub fn fill(buf: &mut [u8], sector_size: usize, lba: u64, generation: u64, seed: u64) {
    for (i, s) in buf.chunks_mut(sector_size).enumerate() {
        fill_sector(s, lba + i as u64, generation, seed);
    }
}

/// Classifies one sector read back from `lba`.
pub fn check_sector(sector: &[u8], lba: u64, seed: u64) -> SectorContent {
    if sector.iter().all(|&b| b == 0) {
        return SectorContent::Zero;
    }
    if sector.len() < HEADER
        || u32::from_le_bytes([sector[0], sector[1], sector[2], sector[3]]) != MAGIC
        || u32::from_le_bytes([sector[4], sector[5], sector[6], sector[7]]) != crc32c::crc32c(&sector[8..])
    {
        return SectorContent::Garbage;
    }
    let word = |o: usize| {
        let mut a = [0u8; 8];
        a.copy_from_slice(&sector[o..o + 8]);
        u64::from_le_bytes(a)
    };
    let (l, generation, s) = (word(8), word(16), word(24));
    if s != seed {
        return SectorContent::WrongSeed;
    }
    if l != lba {
        return SectorContent::WrongLba { lba: l };
    }
    SectorContent::Data { generation }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sectors_identify_themselves_and_detect_damage() {
        let mut buf = vec![0u8; 4096];
        fill(&mut buf, 512, 100, 7, 99);
        for i in 0..8 {
            assert_eq!(
                check_sector(&buf[i * 512..(i + 1) * 512], 100 + i as u64, 99),
                SectorContent::Data { generation: 7 }
            );
        }
        assert_eq!(check_sector(&buf[..512], 101, 99), SectorContent::WrongLba { lba: 100 });
        assert_eq!(check_sector(&buf[..512], 100, 98), SectorContent::WrongSeed);
        buf[300] ^= 1;
        assert_eq!(check_sector(&buf[..512], 100, 99), SectorContent::Garbage);
        assert_eq!(check_sector(&[0u8; 512], 5, 99), SectorContent::Zero);
    }
}
