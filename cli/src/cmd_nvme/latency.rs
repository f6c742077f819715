//! Latency percentiles without allocating while recording: a log-linear
//! histogram, 32 sub-buckets per power of two (about 3% resolution).

const SUB_BITS: u32 = 5;
const SUB: usize = 1 << SUB_BITS;
const POWERS: usize = 64 - SUB_BITS as usize;

/// Latencies in nanoseconds.
#[derive(Clone)]
pub struct Latency {
    counts: Box<[u64]>,
    total: u64,
    sum: u128,
    max: u64,
}

impl Default for Latency {
    fn default() -> Self {
        Self {
            counts: vec![0; SUB * (POWERS + 1)].into_boxed_slice(),
            total: 0,
            sum: 0,
            max: 0,
        }
    }
}

fn bucket(ns: u64) -> usize {
    if ns < SUB as u64 {
        return ns as usize;
    }
    let power = 63 - ns.leading_zeros(); // >= SUB_BITS
    let shift = power - SUB_BITS;
    let sub = ((ns >> shift) as usize) & (SUB - 1);
    (shift as usize + 1) * SUB + sub
}

/// The largest value that falls in bucket `index`.
fn bucket_ceiling(index: usize) -> u64 {
    if index < SUB {
        return index as u64;
    }
    let shift = (index / SUB - 1) as u32;
    let sub = (index % SUB) as u64;
    let floor = ((SUB as u64) | sub) << shift;
    floor + ((1u64 << shift) - 1)
}

impl Latency {
    /// Records one sample.
    #[inline]
    pub fn record(&mut self, ns: u64) {
        self.counts[bucket(ns)] += 1;
        self.total += 1;
        self.sum += u128::from(ns);
        self.max = self.max.max(ns);
    }

    /// Adds another recorder's samples.
    pub fn merge(&mut self, other: &Latency) {
        for (a, b) in self.counts.iter_mut().zip(other.counts.iter()) {
            *a += b;
        }
        self.total += other.total;
        self.sum += other.sum;
        self.max = self.max.max(other.max);
    }

    /// Samples recorded.
    pub fn count(&self) -> u64 {
        self.total
    }

    /// Mean in nanoseconds (0 without samples).
    pub fn mean(&self) -> u64 {
        if self.total == 0 {
            0
        } else {
            (self.sum / u128::from(self.total)) as u64
        }
    }

    /// Largest sample.
    pub fn max(&self) -> u64 {
        self.max
    }

    /// The value at quantile `q` (0..=1): the ceiling of the bucket holding
    /// it, capped at the largest sample. 0 without samples.
    pub fn quantile(&self, q: f64) -> u64 {
        if self.total == 0 {
            return 0;
        }
        let rank = ((q.clamp(0.0, 1.0) * self.total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, &c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return bucket_ceiling(i).min(self.max);
            }
        }
        self.max
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_contiguous_and_tight() {
        let mut prev = 0;
        for ns in [0u64, 1, 31, 32, 33, 63, 64, 1000, 25_000, 1 << 40, u64::MAX] {
            let b = bucket(ns);
            assert!(b >= prev, "bucket order at {ns}");
            prev = b;
            assert!(bucket_ceiling(b) >= ns, "ceiling of {ns}");
            // Within ~3%: the bucket's width is at most 1/32 of its floor.
            assert!(bucket_ceiling(b) - ns <= ns / 32 + 1, "resolution at {ns}");
        }
    }

    #[test]
    fn percentiles_of_a_known_distribution() {
        let mut l = Latency::default();
        for ns in 1..=10_000u64 {
            l.record(ns * 1000);
        }
        assert_eq!(l.count(), 10_000);
        assert_eq!(l.mean(), 5_000_500);
        let p50 = l.quantile(0.5);
        assert!((5_000_000..=5_160_000).contains(&p50), "{p50}");
        let p99 = l.quantile(0.99);
        assert!((9_900_000..=10_000_000).contains(&p99), "{p99}");
        assert_eq!(l.quantile(1.0), 10_000_000);
        let mut other = Latency::default();
        other.record(50_000_000);
        l.merge(&other);
        assert_eq!(l.max(), 50_000_000);
        assert_eq!(l.quantile(1.0), 50_000_000);
        assert_eq!(Latency::default().quantile(0.5), 0);
    }
}
