//! Poll groups and reactor threads: one thread runs many pollers (I/O
//! channels, frontend queues, background work) in a loop, SPDK-style.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

/// What one poller call did, like SPDK's `SPDK_POLLER_BUSY`/`IDLE`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PollStatus {
    /// Work was done.
    Busy,
    /// Nothing to do.
    Idle,
}

/// A function the poll group calls on every iteration.
pub type Poller = Box<dyn FnMut() -> PollStatus + Send>;

/// Pollers run together on one thread.
#[derive(Default)]
pub struct PollGroup {
    pollers: Vec<Poller>,
    busy_iterations: u64,
    idle_iterations: u64,
}

impl std::fmt::Debug for PollGroup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PollGroup")
            .field("pollers", &self.pollers.len())
            .field("busy_iterations", &self.busy_iterations)
            .field("idle_iterations", &self.idle_iterations)
            .finish()
    }
}

impl PollGroup {
    /// An empty group.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a poller.
    pub fn add(&mut self, poller: Poller) {
        self.pollers.push(poller);
    }

    /// Runs every poller once; busy if any was.
    pub fn poll_once(&mut self) -> PollStatus {
        let mut status = PollStatus::Idle;
        for p in &mut self.pollers {
            if p() == PollStatus::Busy {
                status = PollStatus::Busy;
            }
        }
        match status {
            PollStatus::Busy => self.busy_iterations += 1,
            PollStatus::Idle => self.idle_iterations += 1,
        }
        status
    }

    /// Polls until `stop` is set.
    pub fn run(&mut self, stop: &AtomicBool) {
        while !stop.load(Ordering::Relaxed) {
            if self.poll_once() == PollStatus::Idle {
                std::hint::spin_loop();
            }
        }
    }

    /// Iterations that found work / found none.
    pub fn iterations(&self) -> (u64, u64) {
        (self.busy_iterations, self.idle_iterations)
    }
}

/// Pins the calling thread to `core` (best effort; returns whether it took).
pub fn pin_to_core(core: usize) -> bool {
    // SAFETY: `cpu_set_t` is plain data; zeroed is the empty set, CPU_SET
    // writes inside it, and sched_setaffinity(0, ...) only reads it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(core, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) == 0
    }
}

/// Starts `threads` reactor threads, thread `i` pinned to core
/// `i % available cores`. `setup(i)` runs on the new thread and returns
/// its poll group (so per-thread state such as I/O channels is created on
/// the thread that uses it). They run until `stop` is set.
pub fn spawn_reactors<F>(threads: usize, stop: Arc<AtomicBool>, setup: F) -> Vec<JoinHandle<PollGroup>>
where
    F: Fn(usize) -> PollGroup + Send + Sync + 'static,
{
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let setup = Arc::new(setup);
    (0..threads)
        .map(|i| {
            let stop = stop.clone();
            let setup = setup.clone();
            std::thread::Builder::new()
                .name(format!("iomem-reactor-{i}"))
                .spawn(move || {
                    pin_to_core(i % cores);
                    let mut group = setup(i);
                    group.run(&stop);
                    group
                })
                .expect("spawning a reactor thread")
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU64;

    #[test]
    fn group_reports_busy_when_any_poller_works() {
        let mut g = PollGroup::new();
        let n = Arc::new(AtomicU64::new(0));
        let m = n.clone();
        g.add(Box::new(move || {
            if m.fetch_add(1, Ordering::Relaxed) < 3 {
                PollStatus::Busy
            } else {
                PollStatus::Idle
            }
        }));
        g.add(Box::new(|| PollStatus::Idle));
        let statuses: Vec<_> = (0..5).map(|_| g.poll_once()).collect();
        assert_eq!(statuses, [PollStatus::Busy, PollStatus::Busy, PollStatus::Busy, PollStatus::Idle, PollStatus::Idle]);
        assert_eq!(g.iterations(), (3, 2));
    }

    #[test]
    fn reactors_run_their_pollers_until_stopped() {
        let stop = Arc::new(AtomicBool::new(false));
        let counters: Arc<Vec<AtomicU64>> = Arc::new((0..2).map(|_| AtomicU64::new(0)).collect());
        let c = counters.clone();
        let handles = spawn_reactors(2, stop.clone(), move |i| {
            let c = c.clone();
            let mut g = PollGroup::new();
            g.add(Box::new(move || {
                c[i].fetch_add(1, Ordering::Relaxed);
                PollStatus::Busy
            }));
            g
        });
        // Every reactor must get going (bounded wait: the machine may be busy).
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while counters.iter().any(|c| c.load(Ordering::Relaxed) < 100) {
            assert!(std::time::Instant::now() < deadline, "a reactor never ran its poller");
            std::thread::yield_now();
        }
        stop.store(true, Ordering::Relaxed);
        for h in handles {
            let g = h.join().unwrap();
            assert!(g.iterations().0 >= 100);
            assert_eq!(g.iterations().1, 0);
        }
    }
}
