//! `iomem serve`: attach cards and export them over NBD and vhost-user-blk
//! until SIGINT/SIGTERM, with a JSON-RPC control socket.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use crate::serve::config::{Config, DEFAULT_RPC_SOCKET};
use crate::serve::rpc::RpcServer;
use crate::serve::wait::{wait_readable, Waker};
use crate::serve::ServiceCore;

/// Options of `iomem serve`.
#[derive(Debug, clap::Args)]
#[command(after_help = "Export specs: CARD [--nbd ADDR:PORT|PORT|unix:PATH [--export NAME]] \
[--vhost-user-blk SOCKET [--queues N]] [--read-only] ...\n\
NBD listens on 127.0.0.1 unless an address is given. Example:\n  \
iomem serve --rpc-socket /tmp/iomem.sock card0.img --nbd 10809 --export disk0")]
pub struct Args {
    /// JSON configuration file (cards, exports, rpc_socket, reactors).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Control socket path [default: /run/iomem/iomem.sock].
    #[arg(long)]
    pub rpc_socket: Option<PathBuf>,
    /// Reactor (poll) threads [default: one per core].
    #[arg(long)]
    pub reactors: Option<usize>,
    /// Format cards named on the command line that hold no VSL format.
    #[arg(long)]
    pub format_if_blank: bool,
    /// Export specs: CARD followed by its exports.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, value_name = "SPEC")]
    pub specs: Vec<String>,
}

/// Runs the service until a signal or the `service_shutdown` RPC.
pub fn run(args: Args) -> Result<ExitCode, String> {
    // Block the stop signals before any thread starts, so every thread
    // inherits the mask and only the main thread receives them (below).
    let signals = block_stop_signals()?;

    let mut cfg = match &args.config {
        Some(p) => Config::load(p)?,
        None => Config::default(),
    };
    let first_cli_card = cfg.cards.len();
    cfg.add_cli_specs(&args.specs)?;
    if args.format_if_blank {
        for c in &mut cfg.cards[first_cli_card..] {
            c.format_if_blank = true;
        }
    }
    if cfg.cards.is_empty() && args.config.is_none() {
        eprintln!("iomem serve: no cards given; waiting for card_attach on the control socket");
    }
    let rpc_path = args.rpc_socket.or(cfg.rpc_socket.clone()).unwrap_or_else(|| PathBuf::from(DEFAULT_RPC_SOCKET));
    let reactors = args
        .reactors
        .or(cfg.reactors)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));

    let core = ServiceCore::start(reactors)?;
    let wake = Arc::new(Waker::new().map_err(|e| e.to_string())?);
    let setup = (|| -> Result<RpcServer, String> {
        for c in &cfg.cards {
            core.attach_card(c)?;
        }
        for e in &cfg.exports {
            core.add_export(e)?;
        }
        RpcServer::start(&rpc_path, core.clone(), wake.clone())
    })();
    let rpc = match setup {
        Ok(r) => r,
        Err(e) => {
            for p in core.shutdown() {
                eprintln!("iomem serve: {p}");
            }
            return Err(e);
        }
    };
    eprintln!(
        "iomem serve: ready: {} card(s), {} export(s), {} reactor(s), control socket {}",
        cfg.cards.len(),
        cfg.exports.len(),
        core.reactor_count(),
        rpc_path.display()
    );

    let why = loop {
        if let Some(sig) = wait_signal(&signals, Duration::from_millis(200)) {
            break format!("signal {sig}");
        }
        if core.shutdown_requested.load(Ordering::SeqCst) {
            break "service_shutdown request".to_string();
        }
        // Also sleeps on the waker so the RPC can end the wait early.
        let _ = wait_readable(&[wake.raw_fd()], Duration::from_millis(1));
    };
    eprintln!("iomem serve: {why}: stopping, draining in-flight I/O and detaching");
    rpc.stop();
    let problems = core.shutdown();
    if problems.is_empty() {
        eprintln!("iomem serve: stopped cleanly");
        Ok(ExitCode::SUCCESS)
    } else {
        for p in &problems {
            eprintln!("iomem serve: {p}");
        }
        Ok(ExitCode::FAILURE)
    }
}

/// Blocks SIGINT, SIGTERM and SIGHUP in the calling thread (and the threads
/// it starts); returns the set for [`wait_signal`].
fn block_stop_signals() -> Result<libc::sigset_t, String> {
    // SAFETY: `set` is a local sigset_t initialised by sigemptyset before
    // use; pthread_sigmask only reads it.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGHUP);
        let rc = libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        if rc != 0 {
            return Err(format!("blocking signals: {}", std::io::Error::from_raw_os_error(rc)));
        }
        Ok(set)
    }
}

/// Waits up to `timeout` for one of the blocked signals.
fn wait_signal(set: &libc::sigset_t, timeout: Duration) -> Option<i32> {
    let ts = libc::timespec { tv_sec: timeout.as_secs() as libc::time_t, tv_nsec: timeout.subsec_nanos() as libc::c_long };
    // SAFETY: `set` and `ts` are live for the call; the siginfo pointer may
    // be null.
    let sig = unsafe { libc::sigtimedwait(set, std::ptr::null_mut(), &ts) };
    (sig > 0).then_some(sig)
}
