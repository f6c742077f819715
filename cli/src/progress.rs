//! One-line progress bars on stderr for long operations.

use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

static LAST_DRAW_MS: AtomicU64 = AtomicU64::new(0);

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// Draws `what: [#####-----] 52% (done/total)`, at most 10 times a second;
/// when stderr is not a terminal (a log, a pipe), only the finished line.
pub fn bar(what: &str, done: u64, total: u64) {
    let now = now_ms();
    if done < total && now.saturating_sub(LAST_DRAW_MS.load(Ordering::Relaxed)) < 100 {
        return;
    }
    if done < total && !std::io::stderr().is_terminal() {
        return;
    }
    LAST_DRAW_MS.store(now, Ordering::Relaxed);
    let pct = if total == 0 { 100.0 } else { done as f64 * 100.0 / total as f64 };
    let filled = (pct / 5.0) as usize;
    let mut err = std::io::stderr().lock();
    let _ = write!(
        err,
        "\r{what}: [{}{}] {pct:5.1}% ({done}/{total})",
        "#".repeat(filled.min(20)),
        "-".repeat(20 - filled.min(20))
    );
    let _ = err.flush();
}

/// Ends a progress line (if one was drawn).
pub fn done() {
    if LAST_DRAW_MS.swap(0, Ordering::Relaxed) != 0 {
        eprintln!();
    }
}
