//! Write-amplification benchmark (`iomem wa-bench`): sustained uniform
//! random 4 KiB overwrites of the whole user capacity on a small emulated
//! card at chosen over-provisioning levels, under each groomer policy,
//! measured against the analytic WA of greedy GC under uniform random
//! writes ([`super::wa_model::greedy_uniform_wa`]).
//!
//! Over-provisioning is `physical / logical - 1`, with "physical" the
//! blocks that can hold data in steady state: every block but the two
//! metadata blocks and the FTL's fixed working set (the free blocks the
//! groomer keeps at its low watermark, one user and one groomer append
//! point), which the analytic model does not have. The benchmark runs with
//! one append point per writer and tight watermarks so that working set is
//! small, as the model assumes a single write frontier.

use serde::Serialize;

use crate::card::{Card, Geometry};
use crate::emu::{small_test_config, Backing, EmuOptions, NandArray};

use super::blocking::BlockingChannel;
use super::device::Vsl;
use super::error::VslError;
use super::options::{AttachOptions, CapacitySpec, FormatOptions, GcPolicy};
use super::torture::Rng;
use super::wa_model::greedy_uniform_wa;

/// Options of the benchmark.
#[derive(Debug, Clone, Serialize)]
pub struct WaBenchOptions {
    /// Over-provisioning levels (0.07 = 7%).
    pub ops: Vec<f64>,
    /// Policies to compare.
    pub policies: Vec<GcPolicy>,
    /// Random overwrite passes over the capacity before measuring.
    pub warmup_passes: f64,
    /// Measured random overwrite passes.
    pub passes: f64,
    /// Erase blocks per die of the benchmark card (4 dies, 64 pages each).
    pub blocks_per_die: u32,
    /// Seed.
    pub seed: u64,
}

impl Default for WaBenchOptions {
    fn default() -> Self {
        Self {
            ops: vec![0.07, 0.28],
            policies: vec![GcPolicy::Greedy, GcPolicy::CostBenefit],
            warmup_passes: 1.0,
            passes: 3.0,
            blocks_per_die: 128,
            seed: 1,
        }
    }
}

/// One measurement.
#[derive(Debug, Clone, Serialize)]
pub struct WaResult {
    /// Requested over-provisioning.
    pub op: f64,
    /// Groomer policy.
    pub policy: GcPolicy,
    /// Measured WA over the measured passes.
    pub measured: f64,
    /// Greedy GC's analytic WA for uniform random writes at this OP.
    pub analytic_greedy: f64,
    /// User sectors (4 KiB).
    pub capacity_sectors: u64,
    /// Blocks that hold data in steady state (see the module docs).
    pub physical_blocks: u64,
    /// Over-provisioning counting every non-metadata block as physical.
    pub raw_op: f64,
    /// Pages written by users in the measured phase.
    pub user_pages: u64,
    /// Pages the groomer moved in the measured phase.
    pub groomer_pages: u64,
    /// Blocks erased in the measured phase.
    pub erases: u64,
    /// Wall time of the measured phase, seconds.
    pub seconds: f64,
}

/// Runs every (OP, policy) combination; `progress(done, total)` counts runs.
pub fn run(opts: &WaBenchOptions, progress: &mut dyn FnMut(u64, u64)) -> Result<Vec<WaResult>, VslError> {
    let total = (opts.ops.len() * opts.policies.len()) as u64;
    let mut out = Vec::new();
    progress(0, total);
    for &op in &opts.ops {
        if !(op > 0.0 && op < 10.0) {
            return Err(VslError::InvalidOptions(format!("over-provisioning {op} must be between 0 and 10 (0.07 = 7%)")));
        }
        for &policy in &opts.policies {
            out.push(one(opts, op, policy)?);
            progress(out.len() as u64, total);
        }
    }
    Ok(out)
}

fn one(opts: &WaBenchOptions, op: f64, policy: GcPolicy) -> Result<WaResult, VslError> {
    let mut config = small_test_config(opts.seed);
    config.geometry = Geometry {
        channels: 2,
        dies_per_channel: 2,
        blocks_per_die: opts.blocks_per_die.max(16),
        pages_per_block: 64,
        page_size: 4096,
        oob_size: 128,
    };
    config.physics.grown_bad_rate = 0.0;
    config.physics.rated_pe_cycles = 1_000_000;
    config.identity.rated_pe_cycles = 1_000_000;
    let nand = NandArray::create(&config, Backing::Memory).map_err(|e| VslError::InvalidOptions(e.to_string()))?;
    let card = Card::open_emulated(nand, EmuOptions::default())?;
    let ao = AttachOptions {
        gc_policy: policy,
        stripe_width: 1,
        gc_low_blocks: 3,
        gc_high_blocks: 4,
        ..AttachOptions::default()
    };
    let working_set = ao.gc_low_blocks as u64 + 2;
    let physical_blocks = config.geometry.total_blocks() - 2 - working_set;
    let ppb = config.geometry.pages_per_block as u64;
    let capacity_sectors = ((physical_blocks * ppb) as f64 / (1.0 + op)).floor() as u64;
    let fo = FormatOptions {
        capacity: Some(CapacitySpec::Bytes(capacity_sectors * 4096)),
        yes: true,
        seed: Some(opts.seed),
        ..FormatOptions::default()
    };
    Vsl::format(card.clone(), &fo, &mut |_, _| {})?;
    let vsl = Vsl::attach(card, &ao, &mut |_, _| {})?;
    let sectors = vsl.num_sectors();
    let mut ch = BlockingChannel::new(vsl.channel()?)?;
    let page = vec![0x5au8; 4096];
    let io = |e| VslError::InvalidOptions(format!("benchmark write failed: {e}"));
    for lba in 0..sectors {
        ch.write(lba, &page).map_err(io)?;
    }
    let mut rng = Rng::new(opts.seed ^ 0x77);
    let warm = (sectors as f64 * opts.warmup_passes) as u64;
    for _ in 0..warm {
        ch.write(rng.next_u64() % sectors, &page).map_err(io)?;
    }
    let before = vsl.status().counters;
    let t = std::time::Instant::now();
    let n = (sectors as f64 * opts.passes) as u64;
    for _ in 0..n {
        ch.write(rng.next_u64() % sectors, &page).map_err(io)?;
    }
    let seconds = t.elapsed().as_secs_f64();
    let after = vsl.status().counters;
    let user = after.user_pages - before.user_pages;
    let groomer = after.groomer_pages - before.groomer_pages;
    let extra = (after.pad_pages - before.pad_pages) + (after.note_pages - before.note_pages);
    Ok(WaResult {
        op,
        policy,
        measured: (user + groomer + extra) as f64 / user.max(1) as f64,
        analytic_greedy: greedy_uniform_wa(op).unwrap_or(f64::NAN),
        capacity_sectors: sectors,
        physical_blocks,
        raw_op: ((config.geometry.total_blocks() - 2) * ppb) as f64 / sectors as f64 - 1.0,
        user_pages: user,
        groomer_pages: groomer,
        erases: after.erases - before.erases,
        seconds,
    })
}
