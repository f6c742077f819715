//! NAND physics of the emulated card: raw bit errors that grow with wear and
//! retention time, grown bad blocks (erase and program failures) whose odds
//! rise sharply near the rated P/E count, and factory bad blocks.
//!
//! Everything here is a pure function of the card's seed and the address, so
//! a card with the same seed and the same history behaves identically on
//! every run: the emulator's failures are reproducible bugs, not flakes.

use std::cell::Cell;

use serde::{Deserialize, Serialize};

/// Tunables of the NAND physics model. The defaults describe 2x-nm MLC as
/// used in the ioDrive2: 10 000 rated P/E cycles, 40-bit-per-page ECC.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct PhysicsParams {
    /// Program/erase cycles a block is rated for.
    pub rated_pe_cycles: u32,
    /// Mean raw bit errors in one page read on a fresh block.
    pub base_bit_errors: f64,
    /// Extra mean raw bit errors per page read at exactly the rated P/E
    /// count; the wear term scales as `(pe / rated) ^ wear_exponent`.
    pub wear_bit_errors: f64,
    /// Steepness of the wear term (4 = errors grow with the 4th power of
    /// relative wear).
    pub wear_exponent: f64,
    /// Bit errors per page the ECC corrects; more make the read uncorrectable.
    pub ecc_correctable_bits: u32,
    /// Mean raw bit errors gained per day since the page was programmed, on a
    /// fresh block; worn blocks leak faster (`x (1 + 4 * pe / rated)`).
    pub retention_bit_errors_per_day: f64,
    /// Scale on the grown-bad-block odds (erase and program failures);
    /// 0 disables grown bad blocks, 1 is the MLC-like default.
    pub grown_bad_rate: f64,
}

impl Default for PhysicsParams {
    fn default() -> Self {
        Self {
            rated_pe_cycles: 10_000,
            base_bit_errors: 0.05,
            wear_bit_errors: 12.0,
            wear_exponent: 4.0,
            ecc_correctable_bits: 40,
            retention_bit_errors_per_day: 0.02,
            grown_bad_rate: 1.0,
        }
    }
}

/// Hash domains, so that e.g. the erase-failure draw of a block is unrelated
/// to the bit-error draw of its pages.
const TAG_BIT_ERRORS: u64 = 0x6269_7465_7272_6f72;
const TAG_ERASE: u64 = 0x6572_6173_6566_6169;
const TAG_PROGRAM: u64 = 0x7072_6f67_6661_696c;
const TAG_FACTORY: u64 = 0x6661_6374_6f72_7962;

/// Erase failure probability per erase at exactly the rated P/E count (with
/// `grown_bad_rate` 1); it falls by `e^8` per rated lifetime below that and
/// rises by as much above it.
const ERASE_FAIL_AT_RATED: f64 = 1e-5;
/// Program failure probability per page program at the rated P/E count.
const PROGRAM_FAIL_AT_RATED: f64 = 1e-7;
/// Exponential steepness of the grown-bad odds in units of relative wear.
const FAIL_STEEPNESS: f64 = 8.0;
/// Above this mean the Poisson draw is replaced by its (rounded) mean: such
/// a page is far beyond any ECC anyway.
const POISSON_EXACT_LIMIT: f64 = 600.0;

/// SplitMix64 finalizer: a fast, well-mixed 64-bit hash step.
pub const fn mix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// Hashes a sequence of words under `seed` (order-sensitive).
fn hash(seed: u64, words: &[u64]) -> u64 {
    words.iter().fold(mix64(seed), |h, &w| mix64(h ^ w))
}

/// Maps a hash to a uniform number in `[0, 1)`.
fn unit(h: u64) -> f64 {
    (h >> 11) as f64 / (1u64 << 53) as f64
}

/// Inverse-CDF Poisson draw: the smallest `k` with `P(X <= k) > u`. For a
/// fixed `u` it never decreases as `mean` grows, so a page's error count only
/// rises as the page ages or its block wears.
fn poisson_inverse(mean: f64, u: f64, cap: u32) -> u32 {
    if mean.is_nan() || mean <= 0.0 {
        return 0;
    }
    if mean > POISSON_EXACT_LIMIT {
        return (mean.round() as u64).min(cap as u64) as u32;
    }
    let mut p = (-mean).exp();
    let mut cdf = p;
    let mut k = 0u32;
    while u >= cdf && k < cap {
        k += 1;
        p *= mean / k as f64;
        cdf += p;
        if p == 0.0 && cdf < u {
            // The tail underflowed: u is above everything representable.
            break;
        }
    }
    k
}

impl PhysicsParams {
    /// Relative wear: P/E cycles over the rated count (1.0 = end of rated life).
    pub fn wear(&self, pe_cycles: u32) -> f64 {
        pe_cycles as f64 / self.rated_pe_cycles.max(1) as f64
    }

    /// Mean raw bit errors of one page read for a block at `pe_cycles`
    /// whose data has been stored for `age_days`.
    pub fn mean_bit_errors(&self, pe_cycles: u32, age_days: u32) -> f64 {
        let w = self.wear(pe_cycles);
        self.base_bit_errors
            + self.wear_bit_errors * w.powf(self.wear_exponent)
            + self.retention_bit_errors_per_day * age_days as f64 * (1.0 + 4.0 * w)
    }

    /// Raw bit errors seen when reading page (`die`, `block`, `page`)
    /// programmed at `pe_cycles` as program number `generation`, `age_days`
    /// after it was programmed; at most `page_bits`. Deterministic in all
    /// arguments.
    #[allow(clippy::too_many_arguments)]
    pub fn raw_bit_errors(
        &self,
        seed: u64,
        die: u32,
        block: u32,
        page: u32,
        pe_cycles: u32,
        generation: u32,
        age_days: u32,
        page_bits: u32,
    ) -> u32 {
        let h =
            hash(seed, &[TAG_BIT_ERRORS, die as u64, block as u64, page as u64, pe_cycles as u64, generation as u64]);
        let (mean, p0) = self.mean_and_p0(pe_cycles, age_days);
        let u = unit(h);
        if u < p0 {
            // The common case on a healthy card: P(X = 0) already exceeds u.
            return 0;
        }
        poisson_inverse(mean, u, page_bits)
    }

    /// The mean bit errors for (`pe_cycles`, `age_days`) and the Poisson
    /// probability of zero errors, `exp(-mean)`, memoized per thread: reads
    /// of one card see few distinct pairs, and `powf`/`exp` per page read
    /// showed in profiles. The values are exactly those computed afresh.
    fn mean_and_p0(&self, pe_cycles: u32, age_days: u32) -> (f64, f64) {
        type Memo = Cell<Option<(PhysicsParams, u32, u32, f64, f64)>>;
        thread_local! {
            static LAST: Memo = const { Cell::new(None) };
        }
        LAST.with(|last| {
            if let Some((params, pe, age, mean, p0)) = last.get() {
                if pe == pe_cycles && age == age_days && params == *self {
                    return (mean, p0);
                }
            }
            let mean = self.mean_bit_errors(pe_cycles, age_days);
            let p0 = if mean.is_nan() || mean <= 0.0 || mean > POISSON_EXACT_LIMIT { 0.0 } else { (-mean).exp() };
            last.set(Some((*self, pe_cycles, age_days, mean, p0)));
            (mean, p0)
        })
    }

    /// Whether a read with `bit_errors` raw errors is beyond the ECC.
    pub fn is_uncorrectable(&self, bit_errors: u32) -> bool {
        bit_errors > self.ecc_correctable_bits
    }

    fn failure_probability(&self, at_rated: f64, pe_cycles: u32) -> f64 {
        let w = self.wear(pe_cycles);
        (self.grown_bad_rate * at_rated * (FAIL_STEEPNESS * (w - 1.0)).exp()).clamp(0.0, 1.0)
    }

    /// Probability that erasing a block that has `pe_cycles` behind it fails.
    pub fn erase_failure_probability(&self, pe_cycles: u32) -> f64 {
        self.failure_probability(ERASE_FAIL_AT_RATED, pe_cycles)
    }

    /// Probability that programming one page of a block at `pe_cycles` fails.
    pub fn program_failure_probability(&self, pe_cycles: u32) -> f64 {
        self.failure_probability(PROGRAM_FAIL_AT_RATED, pe_cycles)
    }

    /// Whether the erase of (`die`, `block`) with `pe_cycles` behind it fails.
    pub fn erase_fails(&self, seed: u64, die: u32, block: u32, pe_cycles: u32) -> bool {
        let p = self.erase_failure_probability(pe_cycles);
        p > 0.0 && unit(hash(seed, &[TAG_ERASE, die as u64, block as u64, pe_cycles as u64])) < p
    }

    /// Whether programming page (`die`, `block`, `page`) at `pe_cycles` fails.
    pub fn program_fails(&self, seed: u64, die: u32, block: u32, page: u32, pe_cycles: u32) -> bool {
        let p = self.program_failure_probability(pe_cycles);
        p > 0.0 && unit(hash(seed, &[TAG_PROGRAM, die as u64, block as u64, page as u64, pe_cycles as u64])) < p
    }
}

/// Whether (`die`, `block`) leaves the factory bad, for a card with `seed`
/// whose factory marks `fraction` of its blocks bad. Block 0 of every die is
/// always good (it holds the die's metadata on real parts).
pub fn is_factory_bad(seed: u64, fraction: f64, die: u32, block: u32) -> bool {
    block != 0 && fraction > 0.0 && unit(hash(seed, &[TAG_FACTORY, die as u64, block as u64])) < fraction
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bit_errors_are_repeatable_and_vary_by_address() {
        let p = PhysicsParams::default();
        let a = p.raw_bit_errors(7, 1, 2, 3, 9000, 11, 0, 32768);
        assert_eq!(a, p.raw_bit_errors(7, 1, 2, 3, 9000, 11, 0, 32768));
        let spread: std::collections::HashSet<u32> =
            (0..64).map(|page| p.raw_bit_errors(7, 1, 2, page, 9000, 11, 0, 32768)).collect();
        assert!(spread.len() > 3, "error counts should vary between pages: {spread:?}");
    }

    #[test]
    fn reads_within_rated_life_are_correctable_and_well_past_it_are_not() {
        let p = PhysicsParams::default();
        let rated = p.rated_pe_cycles;
        let count_unc = |pe: u32| {
            (0..2000u32)
                .filter(|&page| p.is_uncorrectable(p.raw_bit_errors(1, 0, page / 64, page % 64, pe, page, 0, 32768)))
                .count()
        };
        assert_eq!(count_unc(rated / 2), 0);
        assert_eq!(count_unc(rated), 0);
        assert!(count_unc(rated * 3 / 2) > 1000, "1.5x rated wear should mostly be uncorrectable");
    }

    #[test]
    fn errors_grow_with_wear_and_age() {
        let p = PhysicsParams::default();
        assert!(p.mean_bit_errors(0, 0) < 1.0);
        assert!(p.mean_bit_errors(10_000, 0) > p.mean_bit_errors(5_000, 0));
        assert!(p.mean_bit_errors(5_000, 365) > p.mean_bit_errors(5_000, 0));
        // Fixed draw, growing mean: the count never goes down.
        let mut last = 0;
        for days in [0, 10, 100, 1000] {
            let n = p.raw_bit_errors(3, 0, 5, 6, 8000, 1, days, 32768);
            assert!(n >= last);
            last = n;
        }
    }

    #[test]
    fn failure_odds_are_tiny_early_and_certain_far_past_rating() {
        let p = PhysicsParams::default();
        assert!(p.erase_failure_probability(0) < 1e-8);
        assert!(p.program_failure_probability(5_000) < 1e-8);
        assert!(p.erase_failure_probability(10_000) < 1e-4);
        assert_eq!(p.erase_failure_probability(30_000), 1.0);
        assert!(p.erase_fails(1, 0, 0, 30_000));
        let off = PhysicsParams { grown_bad_rate: 0.0, ..p };
        assert!(!off.erase_fails(1, 0, 0, 30_000));
    }

    #[test]
    fn factory_bad_blocks_follow_the_fraction_and_spare_block_zero() {
        let bad = (0..10_000u32).filter(|&b| is_factory_bad(42, 0.05, 0, b)).count();
        assert!((300..700).contains(&bad), "{bad} bad of 10000 at 5%");
        assert!((0..64).all(|die| !is_factory_bad(42, 1.0, die, 0)));
        assert!(!is_factory_bad(42, 0.0, 3, 3));
    }

    #[test]
    fn poisson_draw_is_capped_and_monotone() {
        assert_eq!(poisson_inverse(0.0, 0.99, 100), 0);
        assert_eq!(poisson_inverse(5000.0, 0.5, 100), 100);
        assert!(poisson_inverse(10.0, 0.5, 1000) <= poisson_inverse(20.0, 0.5, 1000));
    }

    #[test]
    fn memoized_draw_equals_the_direct_inverse_cdf() {
        let p = PhysicsParams::default();
        let other = PhysicsParams { wear_exponent: 2.0, ..p };
        for (params, pe, days) in [(p, 0, 0), (p, 9_000, 30), (other, 9_000, 30), (p, 9_000, 30), (p, 40_000, 0)] {
            for page in 0..200u32 {
                let h = hash(5, &[TAG_BIT_ERRORS, 1, 2, page as u64, pe as u64, 7]);
                let direct = poisson_inverse(params.mean_bit_errors(pe, days), unit(h), 32768);
                assert_eq!(params.raw_bit_errors(5, 1, 2, page, pe, 7, days, 32768), direct);
            }
        }
    }
}
