//! A fixed-size log-linear latency histogram (no allocation while
//! recording): 16 sub-buckets per power of two, ~6% resolution.

const SUB: usize = 16;
const POWERS: usize = 48;

/// Latency histogram in nanoseconds.
#[derive(Clone)]
pub struct Histogram {
    counts: Box<[u64]>,
    total: u64,
    sum: u128,
    min: u64,
    max: u64,
}

impl Default for Histogram {
    fn default() -> Self {
        Self {
            counts: vec![0; SUB * POWERS].into_boxed_slice(),
            total: 0,
            sum: 0,
            min: u64::MAX,
            max: 0,
        }
    }
}

fn bucket(ns: u64) -> usize {
    if ns < SUB as u64 {
        return ns as usize;
    }
    let power = 63 - ns.leading_zeros() as usize; // >= 4
    let sub = ((ns >> (power - 4)) & (SUB as u64 - 1)) as usize;
    ((power - 3) * SUB + sub).min(SUB * POWERS - 1)
}

fn bucket_floor(index: usize) -> u64 {
    if index < SUB {
        return index as u64;
    }
    let power = index / SUB + 3;
    let sub = (index % SUB) as u64;
    (1u64 << power) | (sub << (power - 4))
}

impl Histogram {
    /// Records one latency.
    #[inline]
    pub fn record(&mut self, ns: u64) {
        self.counts[bucket(ns)] += 1;
        self.total += 1;
        self.sum += ns as u128;
        self.min = self.min.min(ns);
        self.max = self.max.max(ns);
    }

    /// Adds another histogram's samples.
    pub fn merge(&mut self, other: &Histogram) {
        for (a, b) in self.counts.iter_mut().zip(other.counts.iter()) {
            *a += b;
        }
        self.total += other.total;
        self.sum += other.sum;
        self.min = self.min.min(other.min);
        self.max = self.max.max(other.max);
    }

    /// Samples recorded.
    pub fn count(&self) -> u64 {
        self.total
    }

    /// Smallest sample (0 when empty).
    pub fn min(&self) -> u64 {
        if self.total == 0 { 0 } else { self.min }
    }

    /// Largest sample.
    pub fn max(&self) -> u64 {
        self.max
    }

    /// Mean.
    pub fn mean(&self) -> f64 {
        if self.total == 0 { 0.0 } else { self.sum as f64 / self.total as f64 }
    }

    /// The value at percentile `p` (0..=100): the lower edge of the bucket
    /// holding that rank, clamped to the observed range.
    pub fn percentile(&self, p: f64) -> u64 {
        if self.total == 0 {
            return 0;
        }
        let rank = ((p / 100.0) * self.total as f64).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return bucket_floor(i).clamp(self.min, self.max);
            }
        }
        self.max
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_monotonic_and_tight() {
        let mut last = 0;
        for ns in [0u64, 1, 15, 16, 17, 100, 1000, 65_536, 1_000_000, 123_456_789] {
            let b = bucket(ns);
            assert!(b >= last);
            last = b;
            let floor = bucket_floor(b);
            assert!(floor <= ns, "{ns}: floor {floor}");
            assert!(ns - floor <= ns / 16 + 1, "{ns}: floor {floor} too coarse");
        }
    }

    #[test]
    fn percentiles_of_a_uniform_ramp() {
        let mut h = Histogram::default();
        for ns in 1..=10_000u64 {
            h.record(ns * 100);
        }
        let p50 = h.percentile(50.0) as f64;
        assert!((p50 - 500_000.0).abs() / 500_000.0 < 0.07, "{p50}");
        let p99 = h.percentile(99.0) as f64;
        assert!((p99 - 990_000.0).abs() / 990_000.0 < 0.07, "{p99}");
        assert_eq!(h.min(), 100);
        assert_eq!(h.max(), 1_000_000);
        assert!((h.mean() - 500_050.0).abs() < 1.0);
    }
}
