//! Messages for SPDK's log. The shim installs a function that forwards to
//! `SPDK_ERRLOG`/`SPDK_WARNLOG`/`SPDK_NOTICELOG`; without it (tests, other
//! embedders) messages go to stderr.

use std::ffi::{c_char, CString};
use std::sync::atomic::{AtomicUsize, Ordering};

/// Severity, as the shim's logger receives it.
#[repr(i32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    /// `SPDK_ERRLOG`.
    Error = 0,
    /// `SPDK_WARNLOG`.
    Warn = 1,
    /// `SPDK_NOTICELOG`.
    Notice = 2,
}

/// The shim's logging function.
pub type LogFn = extern "C" fn(level: i32, msg: *const c_char);

static LOGGER: AtomicUsize = AtomicUsize::new(0);

/// Installs (or with `None`, removes) the logging function.
pub fn set_logger(f: Option<LogFn>) {
    LOGGER.store(f.map_or(0, |f| f as usize), Ordering::Release);
}

/// Logs one message.
pub fn log(level: Level, msg: &str) {
    let raw = LOGGER.load(Ordering::Acquire);
    if raw == 0 {
        eprintln!("iomemory_bdev: {level:?}: {msg}");
        return;
    }
    // SAFETY: `raw` was stored from a valid `LogFn` by `set_logger`; function
    // pointers round-trip through usize on every platform Rust supports.
    let f: LogFn = unsafe { std::mem::transmute::<usize, LogFn>(raw) };
    let text = CString::new(msg.replace('\0', " ")).unwrap_or_default();
    f(level as i32, text.as_ptr());
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::CStr;
    use std::sync::Mutex;

    static SEEN: Mutex<Vec<(i32, String)>> = Mutex::new(Vec::new());

    extern "C" fn capture(level: i32, msg: *const c_char) {
        // SAFETY: `log` passes a valid NUL-terminated string for the call.
        let text = unsafe { CStr::from_ptr(msg) }
            .to_string_lossy()
            .into_owned();
        SEEN.lock().unwrap().push((level, text));
    }

    #[test]
    fn messages_reach_the_installed_logger_with_nuls_replaced() {
        set_logger(Some(capture));
        log(Level::Warn, "unit-test-marker a\0b");
        set_logger(None);
        log(
            Level::Error,
            "unit-test-marker after removal goes to stderr",
        );
        let seen = SEEN.lock().unwrap();
        let mine: Vec<_> = seen
            .iter()
            .filter(|(_, m)| m.starts_with("unit-test-marker"))
            .collect();
        assert_eq!(mine.len(), 1);
        assert_eq!(*mine[0], (1, "unit-test-marker a b".to_string()));
    }
}
