//! The control socket: JSON-RPC 2.0 over a Unix socket, SPDK style
//! (`card_list`, `card_status`, `export_list`, `export_add`,
//! `export_remove`, `card_detach`, `card_attach`, plus `rpc_get_methods`
//! and `service_shutdown`).
//!
//! Requests are JSON objects (or batches) back to back on the stream, with
//! or without newlines; each response is one line. Malformed input gets a
//! JSON-RPC error, never a crash.

use std::io::{BufReader, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use serde::Deserialize;
use serde_json::{json, Value};

use super::config::{CardSpec, ExportSpec};
use super::wait::{wait_readable, Waker};
use super::ServiceCore;

/// Methods served.
pub const METHODS: &[&str] = &[
    "card_list",
    "card_status",
    "card_attach",
    "card_detach",
    "export_list",
    "export_add",
    "export_remove",
    "rpc_get_methods",
    "service_shutdown",
];

/// Most bytes one connection may send.
const MAX_CONN_BYTES: u64 = 16 * 1024 * 1024;
/// Most control connections at once.
const MAX_CONNS: usize = 16;

/// JSON-RPC error codes.
const PARSE_ERROR: i64 = -32700;
const INVALID_REQUEST: i64 = -32600;
const METHOD_NOT_FOUND: i64 = -32601;
const INVALID_PARAMS: i64 = -32602;
const SERVER_ERROR: i64 = -32000;

/// A running control socket.
pub struct RpcServer {
    stop: Arc<AtomicBool>,
    waker: Arc<Waker>,
    thread: Option<JoinHandle<()>>,
    path: PathBuf,
}

impl RpcServer {
    /// Listens on `path` (a stale socket file is replaced; a live one is an error).
    pub fn start(path: &Path, core: Arc<ServiceCore>, on_shutdown: Arc<Waker>) -> Result<RpcServer, String> {
        if path.exists() {
            if UnixStream::connect(path).is_ok() {
                return Err(format!("{}: another iomem serve is already listening there", path.display()));
            }
            std::fs::remove_file(path).map_err(|e| format!("{}: cannot remove stale socket: {e}", path.display()))?;
        }
        if let Some(dir) = path.parent() {
            if !dir.as_os_str().is_empty() {
                std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
            }
        }
        let listener = UnixListener::bind(path).map_err(|e| format!("control socket {}: {e}", path.display()))?;
        let stop = Arc::new(AtomicBool::new(false));
        let waker = Arc::new(Waker::new().map_err(|e| format!("control socket: {e}"))?);
        let (s, w) = (stop.clone(), waker.clone());
        let thread = std::thread::Builder::new()
            .name("iomem-rpc".into())
            .spawn(move || accept_loop(listener, core, s, w, on_shutdown))
            .map_err(|e| format!("control socket thread: {e}"))?;
        Ok(RpcServer { stop, waker, thread: Some(thread), path: path.to_path_buf() })
    }

    /// Stops the control socket and removes its file.
    pub fn stop(mut self) {
        self.stop.store(true, Ordering::SeqCst);
        self.waker.wake();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

fn accept_loop(l: UnixListener, core: Arc<ServiceCore>, stop: Arc<AtomicBool>, waker: Arc<Waker>, on_shutdown: Arc<Waker>) {
    let live = Arc::new(AtomicUsize::new(0));
    while !stop.load(Ordering::SeqCst) {
        if wait_readable(&[l.as_raw_fd(), waker.raw_fd()], Duration::from_millis(500)).unwrap_or(0) == 0 {
            continue;
        }
        if stop.load(Ordering::SeqCst) {
            break;
        }
        let Ok((s, _)) = l.accept() else { continue };
        if live.load(Ordering::SeqCst) >= MAX_CONNS {
            continue;
        }
        live.fetch_add(1, Ordering::SeqCst);
        let (core, live2, sd) = (core.clone(), live.clone(), on_shutdown.clone());
        let spawned = std::thread::Builder::new().name("iomem-rpc-conn".into()).spawn(move || {
            serve_conn(s, &core, &sd);
            live2.fetch_sub(1, Ordering::SeqCst);
        });
        if spawned.is_err() {
            live.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

fn serve_conn(s: UnixStream, core: &Arc<ServiceCore>, on_shutdown: &Waker) {
    let _ = s.set_read_timeout(Some(Duration::from_secs(60)));
    let Ok(mut w) = s.try_clone() else { return };
    let reader = BufReader::new(s.take(MAX_CONN_BYTES));
    let mut stream = serde_json::Deserializer::from_reader(reader).into_iter::<Value>();
    loop {
        let reply = match stream.next() {
            None => return,
            Some(Ok(v)) => handle_value(v, core, on_shutdown),
            Some(Err(e)) if e.is_io() || e.is_eof() => return,
            Some(Err(e)) => {
                let r = error_reply(Value::Null, PARSE_ERROR, &format!("parse error: {e}"));
                let _ = writeln!(w, "{r}");
                return; // the stream cannot be resynchronised
            }
        };
        if let Some(r) = reply {
            if writeln!(w, "{r}").is_err() {
                return;
            }
        }
    }
}

/// Handles one request or batch; `None` for notifications only.
pub fn handle_value(v: Value, core: &Arc<ServiceCore>, on_shutdown: &Waker) -> Option<Value> {
    match v {
        Value::Array(items) if items.is_empty() => Some(error_reply(Value::Null, INVALID_REQUEST, "empty batch")),
        Value::Array(items) => {
            let replies: Vec<Value> = items.into_iter().filter_map(|i| handle_one(i, core, on_shutdown)).collect();
            (!replies.is_empty()).then_some(Value::Array(replies))
        }
        other => handle_one(other, core, on_shutdown),
    }
}

fn handle_one(v: Value, core: &Arc<ServiceCore>, on_shutdown: &Waker) -> Option<Value> {
    let Value::Object(obj) = v else {
        return Some(error_reply(Value::Null, INVALID_REQUEST, "a request must be a JSON object"));
    };
    let id = obj.get("id").cloned();
    let reply_id = id.clone().unwrap_or(Value::Null);
    if obj.get("jsonrpc").and_then(Value::as_str) != Some("2.0") {
        return Some(error_reply(reply_id, INVALID_REQUEST, "\"jsonrpc\" must be \"2.0\""));
    }
    let Some(method) = obj.get("method").and_then(Value::as_str) else {
        return Some(error_reply(reply_id, INVALID_REQUEST, "\"method\" must be a string"));
    };
    let params = obj.get("params").cloned().unwrap_or(Value::Null);
    let result = call(method, params, core, on_shutdown);
    // A request without an id is a notification: no reply.
    id.as_ref()?;
    Some(match result {
        Ok(r) => json!({"jsonrpc": "2.0", "id": reply_id, "result": r}),
        Err((code, msg)) => error_reply(reply_id, code, &msg),
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NameParam {
    name: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DetachParam {
    name: String,
    #[serde(default)]
    force: bool,
}

fn params<T: for<'de> Deserialize<'de>>(p: Value) -> Result<T, (i64, String)> {
    serde_json::from_value(p).map_err(|e| (INVALID_PARAMS, format!("invalid params: {e}")))
}

fn call(method: &str, p: Value, core: &Arc<ServiceCore>, on_shutdown: &Waker) -> Result<Value, (i64, String)> {
    let app = |e: String| (SERVER_ERROR, e);
    match method {
        "card_list" => Ok(core.card_list()),
        "export_list" => Ok(core.export_list()),
        "rpc_get_methods" => Ok(json!(METHODS)),
        "card_status" => {
            let p: NameParam = params(p)?;
            core.card_status(&p.name).map_err(app)
        }
        "card_attach" => {
            let p: CardSpec = params(p)?;
            core.attach_card(&p).map_err(app)
        }
        "card_detach" => {
            let p: DetachParam = params(p)?;
            core.detach_card(&p.name, p.force).map(|()| json!(true)).map_err(app)
        }
        "export_add" => {
            let p: ExportSpec = params(p)?;
            core.add_export(&p).map_err(app)
        }
        "export_remove" => {
            let p: NameParam = params(p)?;
            core.remove_export(&p.name).map(|()| json!(true)).map_err(app)
        }
        "service_shutdown" => {
            core.shutdown_requested.store(true, Ordering::SeqCst);
            on_shutdown.wake();
            Ok(json!(true))
        }
        other => Err((METHOD_NOT_FOUND, format!("no method {other:?}; rpc_get_methods lists them"))),
    }
}

fn error_reply(id: Value, code: i64, message: &str) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "error": {"code": code, "message": message}})
}

/// Calls `method` on the control socket at `path` and returns its result.
pub fn call_socket(path: &Path, method: &str, params: Value, timeout: Duration) -> Result<Value, String> {
    let mut s = UnixStream::connect(path).map_err(|e| {
        format!("cannot reach the iomem serve control socket {}: {e}; is `iomem serve` running?", path.display())
    })?;
    s.set_read_timeout(Some(timeout)).map_err(|e| e.to_string())?;
    let mut req = json!({"jsonrpc": "2.0", "id": 1, "method": method});
    if !params.is_null() {
        req["params"] = params;
    }
    writeln!(s, "{req}").map_err(|e| format!("sending the request: {e}"))?;
    let mut stream = serde_json::Deserializer::from_reader(BufReader::new(&s)).into_iter::<Value>();
    let reply = match stream.next() {
        Some(Ok(v)) => v,
        Some(Err(e)) => return Err(format!("reading the reply: {e}")),
        None => return Err("the service closed the connection without replying".into()),
    };
    if let Some(err) = reply.get("error") {
        let msg = err.get("message").and_then(Value::as_str).unwrap_or("unknown error");
        let code = err.get("code").and_then(Value::as_i64).unwrap_or(0);
        return Err(format!("{method}: {msg} (code {code})"));
    }
    Ok(reply.get("result").cloned().unwrap_or(Value::Null))
}
