//! What a bench job does: the op mix, block size, and where the next I/O goes.

/// fio's `--rw` modes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RwMode {
    /// Sequential reads.
    Read,
    /// Sequential writes.
    Write,
    /// Uniform random reads.
    RandRead,
    /// Uniform random writes.
    RandWrite,
    /// Uniform random mix of reads and writes.
    RandRw,
}

impl RwMode {
    /// Parses a fio mode name.
    pub fn parse(text: &str) -> Result<Self, String> {
        Ok(match text {
            "read" => Self::Read,
            "write" => Self::Write,
            "randread" => Self::RandRead,
            "randwrite" => Self::RandWrite,
            "randrw" => Self::RandRw,
            other => return Err(format!("unknown --rw {other:?}: use read, write, randread, randwrite or randrw")),
        })
    }

    /// The fio name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Read => "read",
            Self::Write => "write",
            Self::RandRead => "randread",
            Self::RandWrite => "randwrite",
            Self::RandRw => "randrw",
        }
    }

    /// Whether this mode reads anything (reads want prefilled data).
    pub fn reads(self) -> bool {
        matches!(self, Self::Read | Self::RandRead | Self::RandRw)
    }
}

/// Read or write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// Read.
    Read,
    /// Write.
    Write,
}

/// xorshift64*: tiny, fast, deterministic per job.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// Seeded generator (a zero seed is replaced).
    pub fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }

    /// Next 64 random bits.
    #[inline]
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in `0..n` (n > 0).
    #[inline]
    pub fn below(&mut self, n: u64) -> u64 {
        ((self.next() as u128 * n as u128) >> 64) as u64
    }
}

/// Picks the next op and position for one job over its LBA range.
#[derive(Debug, Clone)]
pub struct Generator {
    mode: RwMode,
    read_percent: u64,
    /// First block of the job's range.
    first: u64,
    /// I/O units (of `blocks_per_io` blocks) in the range.
    units: u64,
    blocks_per_io: u64,
    next_seq: u64,
    rng: Rng,
}

impl Generator {
    /// A generator over blocks `first .. first + units * blocks_per_io`.
    pub fn new(mode: RwMode, read_percent: u64, first: u64, units: u64, blocks_per_io: u64, seed: u64) -> Self {
        Self {
            mode,
            read_percent: read_percent.min(100),
            first,
            units: units.max(1),
            blocks_per_io,
            next_seq: 0,
            rng: Rng::new(seed),
        }
    }

    /// Next (op, first block).
    #[inline]
    pub fn next(&mut self) -> (Op, u64) {
        let (op, unit) = match self.mode {
            RwMode::Read | RwMode::Write => {
                let unit = self.next_seq;
                self.next_seq = (self.next_seq + 1) % self.units;
                (if self.mode == RwMode::Read { Op::Read } else { Op::Write }, unit)
            }
            RwMode::RandRead => (Op::Read, self.rng.below(self.units)),
            RwMode::RandWrite => (Op::Write, self.rng.below(self.units)),
            RwMode::RandRw => {
                let op = if self.rng.below(100) < self.read_percent { Op::Read } else { Op::Write };
                (op, self.rng.below(self.units))
            }
        };
        (op, self.first + unit * self.blocks_per_io)
    }
}

/// Fills `buf` (a whole number of `block`-byte blocks starting at `lba`)
/// with the verify pattern of generation `gen`: each block starts with its
/// LBA, the generation and the seed, then pseudo-random bytes derived from
/// all three.
pub fn fill_pattern(buf: &mut [u8], block: usize, lba: u64, gen: u32, seed: u32) {
    for (i, chunk) in buf.chunks_mut(block).enumerate() {
        let this = lba + i as u64;
        chunk[0..8].copy_from_slice(&this.to_le_bytes());
        chunk[8..12].copy_from_slice(&gen.to_le_bytes());
        chunk[12..16].copy_from_slice(&seed.to_le_bytes());
        let mut rng = Rng::new(this ^ ((gen as u64) << 40) ^ ((seed as u64) << 20));
        for word in chunk[16..].chunks_mut(8) {
            let v = rng.next().to_le_bytes();
            word.copy_from_slice(&v[..word.len()]);
        }
    }
}

/// Checks `buf` against the pattern of `gen` (0 = never written: zeros).
/// Returns the first bad LBA and what was found there.
pub fn check_pattern(buf: &[u8], block: usize, lba: u64, gen: u32, seed: u32, scratch: &mut [u8]) -> Result<(), String> {
    for (i, chunk) in buf.chunks(block).enumerate() {
        let this = lba + i as u64;
        if gen == 0 {
            if chunk.iter().any(|&b| b != 0) {
                return Err(format!("LBA {this}: never written, but reads back non-zero data"));
            }
            continue;
        }
        let expect = &mut scratch[..chunk.len()];
        fill_pattern(expect, block, this, gen, seed);
        if chunk != &expect[..] {
            let found_lba = u64::from_le_bytes(chunk[0..8].try_into().unwrap_or([0; 8]));
            let found_gen = u32::from_le_bytes(chunk[8..12].try_into().unwrap_or([0; 4]));
            return Err(format!(
                "LBA {this}: expected generation {gen}, found a block claiming LBA {found_lba} generation {found_gen}"
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequential_wraps_and_random_stays_in_range() {
        let mut g = Generator::new(RwMode::Write, 0, 100, 3, 8, 1);
        let lbas: Vec<u64> = (0..4).map(|_| g.next().1).collect();
        assert_eq!(lbas, [100, 108, 116, 100]);
        let mut g = Generator::new(RwMode::RandRw, 70, 0, 1000, 1, 2);
        let mut reads = 0;
        for _ in 0..10_000 {
            let (op, lba) = g.next();
            assert!(lba < 1000);
            reads += (op == Op::Read) as u32;
        }
        assert!((6_500..7_500).contains(&reads), "{reads}");
    }

    #[test]
    fn patterns_detect_wrong_block_generation_and_garbage() {
        let mut buf = vec![0u8; 8192];
        let mut scratch = vec![0u8; 8192];
        fill_pattern(&mut buf, 4096, 40, 3, 9);
        assert!(check_pattern(&buf, 4096, 40, 3, 9, &mut scratch).is_ok());
        assert!(check_pattern(&buf, 4096, 40, 2, 9, &mut scratch).unwrap_err().contains("generation 3"));
        assert!(check_pattern(&buf, 4096, 41, 3, 9, &mut scratch).is_err());
        buf[5000] ^= 1;
        assert!(check_pattern(&buf, 4096, 40, 3, 9, &mut scratch).unwrap_err().contains("LBA 41"));
        let zeros = vec![0u8; 4096];
        assert!(check_pattern(&zeros, 4096, 7, 0, 9, &mut scratch).is_ok());
    }
}
