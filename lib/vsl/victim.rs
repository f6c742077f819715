//! Groomer victim choice: greedy (fewest valid sectors) or cost-benefit
//! (Rosenblum and Ousterhout's LFS cleaner: free space gained times age,
//! over the cost of reading and rewriting the live data).

use serde::{Deserialize, Serialize};

/// How the groomer picks the block to reclaim.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum GcPolicy {
    /// The block with the fewest valid sectors; ties go to the older block,
    /// then to the less worn one.
    #[default]
    Greedy,
    /// The block maximising `(1 - u) * age / (1 + u)`, with `u` its valid
    /// fraction and `age` how many writes ago it was last written.
    CostBenefit,
}

impl std::str::FromStr for GcPolicy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "greedy" => Ok(Self::Greedy),
            "cost-benefit" | "costbenefit" | "cb" => Ok(Self::CostBenefit),
            other => Err(format!("unknown GC policy {other:?}: use greedy or cost-benefit")),
        }
    }
}

/// What the policy knows about one candidate block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Candidate {
    /// Linear block number.
    pub block: u32,
    /// Live sectors (data sectors plus one per live trim note page).
    pub valid: u32,
    /// Sectors the block can hold.
    pub capacity: u32,
    /// Version sequence of the newest write in the block.
    pub age_seq: u64,
    /// Program/erase cycles.
    pub pe: u32,
}

/// Incremental best-candidate search: feed candidates, read the winner.
#[derive(Debug, Clone, Copy)]
pub struct VictimPicker {
    policy: GcPolicy,
    now_seq: u64,
    best: Option<(Candidate, f64)>,
}

impl VictimPicker {
    /// A search under `policy`, with `now_seq` the current version sequence
    /// (the clock ages are measured against).
    pub fn new(policy: GcPolicy, now_seq: u64) -> Self {
        Self {
            policy,
            now_seq,
            best: None,
        }
    }

    fn score(&self, c: &Candidate) -> f64 {
        let cap = c.capacity.max(1) as f64;
        let u = (c.valid as f64 / cap).min(1.0);
        match self.policy {
            // Lower valid is better; among equals, older then less worn.
            GcPolicy::Greedy => -(c.valid as f64),
            GcPolicy::CostBenefit => {
                let age = self.now_seq.saturating_sub(c.age_seq) as f64 + 1.0;
                (1.0 - u) * age / (1.0 + u)
            }
        }
    }

    /// Considers one block. Full blocks (`valid >= capacity`) are never
    /// chosen: moving them frees nothing.
    pub fn offer(&mut self, c: Candidate) {
        if c.valid >= c.capacity {
            return;
        }
        let s = self.score(&c);
        let better = match &self.best {
            None => true,
            Some((b, bs)) => {
                if s != *bs {
                    s > *bs
                } else {
                    (c.age_seq, c.pe) < (b.age_seq, b.pe)
                }
            }
        };
        if better {
            self.best = Some((c, s));
        }
    }

    /// The chosen block, if any candidate qualified.
    pub fn best(&self) -> Option<Candidate> {
        self.best.map(|(c, _)| c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(block: u32, valid: u32, age_seq: u64, pe: u32) -> Candidate {
        Candidate {
            block,
            valid,
            capacity: 64,
            age_seq,
            pe,
        }
    }

    #[test]
    fn greedy_takes_fewest_valid_then_oldest_then_least_worn() {
        let mut p = VictimPicker::new(GcPolicy::Greedy, 1000);
        for cand in [c(1, 40, 10, 0), c(2, 12, 900, 5), c(3, 12, 100, 9), c(4, 12, 100, 3), c(5, 64, 1, 0)] {
            p.offer(cand);
        }
        assert_eq!(p.best().unwrap().block, 4);
    }

    #[test]
    fn cost_benefit_prefers_old_cold_blocks_over_slightly_emptier_hot_ones() {
        let mut p = VictimPicker::new(GcPolicy::CostBenefit, 100_000);
        p.offer(c(1, 20, 99_990, 0)); // hot: 31% valid, written just now
        p.offer(c(2, 32, 1_000, 0)); // cold: 50% valid, written long ago
        assert_eq!(p.best().unwrap().block, 2);
        let mut g = VictimPicker::new(GcPolicy::Greedy, 100_000);
        g.offer(c(1, 20, 99_990, 0));
        g.offer(c(2, 32, 1_000, 0));
        assert_eq!(g.best().unwrap().block, 1);
    }

    #[test]
    fn full_blocks_are_never_victims_and_policies_parse() {
        let mut p = VictimPicker::new(GcPolicy::Greedy, 5);
        p.offer(c(1, 64, 0, 0));
        assert!(p.best().is_none());
        assert_eq!("cost-benefit".parse::<GcPolicy>(), Ok(GcPolicy::CostBenefit));
        assert_eq!("Greedy".parse::<GcPolicy>(), Ok(GcPolicy::Greedy));
        assert!("lru".parse::<GcPolicy>().is_err());
    }
}
