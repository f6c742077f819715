//! The opaque-handle C ABI the shim (`csrc/bdev_iomemory.c`) calls,
//! declared for C in `csrc/iomemory_rs.h`. Handles are raw pointers to
//! boxed Rust objects: a device handle (`struct iomem_rs_dev`) owns one
//! `Arc<BdevDevice>`, a channel handle (`struct iomem_rs_chan`) one
//! [`BdevChannel`]. Nothing here knows SPDK's structures; the shim passes
//! plain integers, strings and iovecs.
//!
//! A panic in any of these functions aborts the process (Rust's behaviour
//! for `extern "C"`); none is expected on any input.

use std::ffi::{c_char, c_void, CString};
use std::sync::Arc;

use crate::channel::{BdevChannel, Submitted};
use crate::device::{BdevDevice, Detached};
use crate::io::{BdevIoType, IoDesc};
use crate::lifecycle::RemoveReason;
use crate::log::{set_logger, LogFn};
use crate::params::{CreateParams, DeleteParams, ParamError, PowerCutParams};

/// Version of this ABI; the shim refuses to run against another.
pub const ABI_VERSION: u32 = 1;

/// Completion callback: `(arg, token, status)`, status an [`IoStatus`].
pub type CompleteFn = extern "C" fn(arg: *mut c_void, token: u64, status: i32);

/// Opaque device handle.
pub struct RsDev(Arc<BdevDevice>);

/// Writes `msg` NUL-terminated into `buf` (truncated to fit).
///
/// # Safety
/// `buf` must be null or point to `len` writable bytes.
unsafe fn write_err(buf: *mut c_char, len: usize, msg: &str) {
    if buf.is_null() || len == 0 {
        return;
    }
    let n = msg.len().min(len - 1);
    // SAFETY: `buf` has `len` bytes (caller) and `n + 1 <= len`.
    unsafe {
        std::ptr::copy_nonoverlapping(msg.as_ptr(), buf.cast::<u8>(), n);
        *buf.add(n) = 0;
    }
}

fn into_c_string(s: String) -> *mut c_char {
    CString::new(s.replace('\0', " "))
        .unwrap_or_default()
        .into_raw()
}

/// The ABI version this library implements.
#[no_mangle]
pub extern "C" fn iomem_rs_abi_version() -> u32 {
    ABI_VERSION
}

/// Installs the shim's logger (null removes it).
#[no_mangle]
pub extern "C" fn iomem_rs_set_logger(f: Option<LogFn>) {
    set_logger(f);
}

/// Whether an `enum spdk_bdev_io_type` value is served.
#[no_mangle]
pub extern "C" fn iomem_rs_io_type_supported(io_type: u32) -> bool {
    BdevIoType::supported(io_type)
}

/// Copies `len` bytes at `params` into a string (`None`: null or not UTF-8).
///
/// # Safety
/// `params` must be null or point to `len` readable bytes.
unsafe fn params_text(params: *const c_char, len: usize) -> Option<String> {
    if params.is_null() {
        return None;
    }
    // SAFETY: `params` points to `len` readable bytes (contract).
    let bytes = unsafe { std::slice::from_raw_parts(params.cast::<u8>(), len) };
    std::str::from_utf8(bytes).ok().map(str::to_owned)
}

/// Reports a parsed bdev name: 0 with the NUL-terminated name in
/// `name_out`, or a JSON-RPC error code with the message in `err` (a parse
/// error, or a name that does not fit `name_out`).
///
/// # Safety
/// `name_out` must point to `name_len` and `err` to `err_len` writable bytes
/// (or be null).
unsafe fn report_name(
    parsed: Result<&str, &ParamError>,
    name_out: *mut c_char,
    name_len: usize,
    err: *mut c_char,
    err_len: usize,
) -> i32 {
    match parsed {
        Ok(name) if name.len() < name_len => {
            // SAFETY: `name_out` has `name_len` writable bytes (contract).
            unsafe { write_err(name_out, name_len, name) };
            0
        }
        Ok(name) => {
            // SAFETY: forwarded from the contract.
            unsafe { write_err(err, err_len, &format!("bdev name {name:?} is too long")) };
            crate::params::JSONRPC_INVALID_PARAMS
        }
        Err(e) => {
            // SAFETY: forwarded from the contract.
            unsafe { write_err(err, err_len, &e.to_string()) };
            e.rpc_code()
        }
    }
}

/// Validates create params and opens the card: a device handle, or a
/// JSON-RPC error code and message.
fn open_text(text: Option<String>) -> Result<*mut RsDev, (i32, String)> {
    let Some(text) = text else {
        return Err((
            crate::params::JSONRPC_INVALID_PARAMS,
            "parameters are missing or not UTF-8".into(),
        ));
    };
    let parsed = CreateParams::from_json(&text).map_err(|e| (e.rpc_code(), e.to_string()))?;
    let dev = BdevDevice::open(parsed).map_err(|e| (e.rpc_code(), e.to_string()))?;
    Ok(Box::into_raw(Box::new(RsDev(dev))))
}

/// Validates `bdev_iomemory_create` params (JSON text, `len` bytes) and
/// opens the card, blocking the caller (a format or a recovery scan can
/// take seconds; the shim uses [`iomem_rs_dev_open_async`]). On failure
/// returns null, writes a message into `err` and a JSON-RPC error code into
/// `*err_code`.
///
/// # Safety
/// `params` must point to `len` readable bytes; `err` to `err_len` writable
/// bytes (or be null); `err_code` must be null or writable.
#[no_mangle]
pub unsafe extern "C" fn iomem_rs_dev_open(
    params: *const c_char,
    len: usize,
    err: *mut c_char,
    err_len: usize,
    err_code: *mut i32,
) -> *mut RsDev {
    // SAFETY: forwarded from this function's contract.
    match open_text(unsafe { params_text(params, len) }) {
        Ok(dev) => dev,
        Err((code, msg)) => {
            // SAFETY: forwarded from this function's contract.
            unsafe { write_err(err, err_len, &msg) };
            if !err_code.is_null() {
                // SAFETY: non-null and writable by contract.
                unsafe { *err_code = code };
            }
            std::ptr::null_mut()
        }
    }
}

/// A caller's context pointer carried to a worker thread and back.
struct CallerCtx(*mut c_void);

// SAFETY: the pointer is never dereferenced by Rust; it is only handed back
// to the caller's callback, whose contract (see the `_async` functions) is
// to be callable from any thread.
unsafe impl Send for CallerCtx {}

impl CallerCtx {
    /// Moves the whole wrapper into a closure (not just its field).
    fn get(self) -> *mut c_void {
        self.0
    }
}

/// Completion of [`iomem_rs_dev_open_async`]: `(arg, dev, code, msg)`;
/// `dev` non-null on success, else `code`/`msg` say why (`msg` valid only
/// during the call).
pub type OpenDoneFn =
    extern "C" fn(arg: *mut c_void, dev: *mut RsDev, code: i32, msg: *const c_char);

/// Like [`iomem_rs_dev_open`], but on a worker thread, so the SPDK thread
/// that received the RPC keeps polling during a format or recovery scan.
/// `done` is called exactly once, from the worker thread. Returns 0, or
/// -EAGAIN if no thread could be started (`done` is then not called).
///
/// # Safety
/// `params` must point to `len` readable bytes (copied before returning);
/// `done` must be callable from any thread with `arg`.
#[no_mangle]
pub unsafe extern "C" fn iomem_rs_dev_open_async(
    params: *const c_char,
    len: usize,
    done: OpenDoneFn,
    arg: *mut c_void,
) -> i32 {
    // SAFETY: forwarded from this function's contract.
    let text = unsafe { params_text(params, len) };
    let ctx = CallerCtx(arg);
    let spawned = std::thread::Builder::new()
        .name("iomem-open".into())
        .spawn(move || {
            let arg = ctx.get();
            match open_text(text) {
                Ok(dev) => done(arg, dev, 0, std::ptr::null()),
                Err((code, msg)) => {
                    let msg = CString::new(msg.replace('\0', " ")).unwrap_or_default();
                    done(arg, std::ptr::null_mut(), code, msg.as_ptr());
                }
            }
        });
    match spawned {
        Ok(_) => 0,
        Err(_) => -libc::EAGAIN,
    }
}

/// Releases a device handle (after detach, or after a failed register).
///
/// # Safety
/// `dev` must come from [`iomem_rs_dev_open`] and not be used afterwards.
#[no_mangle]
pub unsafe extern "C" fn iomem_rs_dev_free(dev: *mut RsDev) {
    if !dev.is_null() {
        // SAFETY: `dev` was created by Box::into_raw and is freed once.
        drop(unsafe { Box::from_raw(dev) });
    }
}

/// Borrows the device behind a handle.
///
/// # Safety
/// `dev` must be a live handle from [`iomem_rs_dev_open`].
unsafe fn dev_ref<'a>(dev: *const RsDev) -> &'a Arc<BdevDevice> {
    // SAFETY: forwarded from the caller's contract.
    unsafe { &(*dev).0 }
}

/// The bdev name, valid as long as the handle.
///
/// # Safety
/// `dev` must be a live handle.
#[no_mangle]
pub unsafe extern "C" fn iomem_rs_dev_name(dev: *const RsDev) -> *const c_char {
    // SAFETY: live handle (contract).
    unsafe { dev_ref(dev) }.name_c().as_ptr()
}

/// Bytes per block.
///
/// # Safety
/// `dev` must be a live handle.
#[no_mangle]
pub unsafe extern "C" fn iomem_rs_dev_block_size(dev: *const RsDev) -> u32 {
    // SAFETY: live handle (contract).
    unsafe { dev_ref(dev) }.block_size()
}

/// Number of blocks.
///
/// # Safety
/// `dev` must be a live handle.
#[no_mangle]
pub unsafe extern "C" fn iomem_rs_dev_num_blocks(dev: *const RsDev) -> u64 {
    // SAFETY: live handle (contract).
    unsafe { dev_ref(dev) }.num_blocks()
}

/// Most blocks per read or write (`spdk_bdev.max_rw_size`).
///
/// # Safety
/// `dev` must be a live handle.
#[no_mangle]
pub unsafe extern "C" fn iomem_rs_dev_max_rw_blocks(dev: *const RsDev) -> u32 {
    // SAFETY: live handle (contract).
    unsafe { dev_ref(dev) }.max_rw_blocks()
}

/// Whether acknowledged writes may sit in a volatile cache (the card has no
/// power-loss protection): SPDK then sends FLUSH.
///
/// # Safety
/// `dev` must be a live handle.
#[no_mangle]
pub unsafe extern "C" fn iomem_rs_dev_volatile_cache(dev: *const RsDev) -> bool {
    // SAFETY: live handle (contract).
    unsafe { dev_ref(dev) }.volatile_cache()
}

/// Validates `bdev_iomemory_create` params without opening the card: 0 with
/// the NUL-terminated bdev name in `name_out` (so the shim can refuse a
/// taken name before a format), or a JSON-RPC error code with a message in
/// `err`.
///
/// # Safety
/// `params` must point to `len` readable bytes; `name_out` to `name_len`
/// and `err` to `err_len` writable bytes (or be null).
#[no_mangle]
pub unsafe extern "C" fn iomem_rs_create_params(
    params: *const c_char,
    len: usize,
    name_out: *mut c_char,
    name_len: usize,
    err: *mut c_char,
    err_len: usize,
) -> i32 {
    // SAFETY: forwarded from this function's contract.
    let text = unsafe { params_text(params, len) }.unwrap_or_default();
    let parsed = CreateParams::from_json(&text);
    // SAFETY: forwarded from this function's contract.
    unsafe {
        report_name(
            parsed.as_ref().map(|p| p.name.as_str()),
            name_out,
            name_len,
            err,
            err_len,
        )
    }
}

/// Parses `bdev_iomemory_inject_power_cut` params: 0 with the name in
/// `name_out` and the command count in `*after`, or a JSON-RPC error code
/// with a message in `err`.
///
/// # Safety
/// `params` must point to `len` readable bytes; `name_out` to `name_len`
/// and `err` to `err_len` writable bytes (or be null); `after` writable.
#[no_mangle]
pub unsafe extern "C" fn iomem_rs_power_cut_params(
    params: *const c_char,
    len: usize,
    name_out: *mut c_char,
    name_len: usize,
    after: *mut u64,
    err: *mut c_char,
    err_len: usize,
) -> i32 {
    // SAFETY: forwarded from this function's contract.
    let text = unsafe { params_text(params, len) }.unwrap_or_default();
    let parsed = PowerCutParams::from_json(&text);
    // SAFETY: forwarded from this function's contract.
    let rc = unsafe {
        report_name(
            parsed.as_ref().map(|p| p.name.as_str()),
            name_out,
            name_len,
            err,
            err_len,
        )
    };
    if let (0, Ok(p)) = (rc, &parsed) {
        // SAFETY: `after` is writable (contract).
        unsafe { *after = p.after_commands };
    }
    rc
}

/// Cuts the emulated card's power after `after` more commands (0: now):
/// 0, or -ENOTSUP (message in `err`) for a card that is not emulated.
///
/// # Safety
/// `dev` must be a live handle; `err` null or `err_len` writable bytes.
#[no_mangle]
pub unsafe extern "C" fn iomem_rs_dev_power_cut(
    dev: *const RsDev,
    after: u64,
    err: *mut c_char,
    err_len: usize,
) -> i32 {
    // SAFETY: live handle (contract).
    match unsafe { dev_ref(dev) }.inject_power_cut(after) {
        Ok(()) => 0,
        Err(e) => {
            // SAFETY: forwarded from the contract.
            unsafe { write_err(err, err_len, &e.to_string()) };
            -libc::ENOTSUP
        }
    }
}

/// Parses `bdev_iomemory_delete` params: 0 with the NUL-terminated name in
/// `name_out`, or a JSON-RPC error code with a message in `err`.
///
/// # Safety
/// `params` must point to `len` readable bytes; `name_out` to `name_len`
/// and `err` to `err_len` writable bytes (or be null).
#[no_mangle]
pub unsafe extern "C" fn iomem_rs_delete_params(
    params: *const c_char,
    len: usize,
    name_out: *mut c_char,
    name_len: usize,
    err: *mut c_char,
    err_len: usize,
) -> i32 {
    // SAFETY: forwarded from this function's contract.
    let text = unsafe { params_text(params, len) }.unwrap_or_default();
    let parsed = DeleteParams::from_json(&text);
    // SAFETY: forwarded from this function's contract.
    unsafe {
        report_name(
            parsed.as_ref().map(|p| p.name.as_str()),
            name_out,
            name_len,
            err,
            err_len,
        )
    }
}

/// Writes the 16-byte UUID of the card's format into `out`.
///
/// # Safety
/// `dev` must be a live handle, `out` 16 writable bytes.
#[no_mangle]
pub unsafe extern "C" fn iomem_rs_dev_uuid(dev: *const RsDev, out: *mut u8) {
    // SAFETY: live handle (contract).
    let uuid = unsafe { dev_ref(dev) }.uuid();
    // SAFETY: `out` has 16 writable bytes (contract).
    unsafe { std::ptr::copy_nonoverlapping(uuid.as_ptr(), out, 16) };
}

/// Driver-specific info as JSON text; free with [`iomem_rs_string_free`].
///
/// # Safety
/// `dev` must be a live handle.
#[no_mangle]
pub unsafe extern "C" fn iomem_rs_dev_info_json(dev: *const RsDev) -> *mut c_char {
    // SAFETY: live handle (contract).
    into_c_string(unsafe { dev_ref(dev) }.info_json().to_string())
}

/// The `params` of the `bdev_iomemory_create` call that recreates this bdev,
/// as JSON text; free with [`iomem_rs_string_free`].
///
/// # Safety
/// `dev` must be a live handle.
#[no_mangle]
pub unsafe extern "C" fn iomem_rs_dev_config_json(dev: *const RsDev) -> *mut c_char {
    // SAFETY: live handle (contract).
    into_c_string(unsafe { dev_ref(dev) }.config_json().to_string())
}

/// Frees a string returned by this library.
///
/// # Safety
/// `s` must come from this library and not be used afterwards.
#[no_mangle]
pub unsafe extern "C" fn iomem_rs_string_free(s: *mut c_char) {
    if !s.is_null() {
        // SAFETY: `s` came from CString::into_raw and is freed once.
        drop(unsafe { CString::from_raw(s) });
    }
}

/// SPDK registered memory for DMA. Returns 1 if the card can reach it, 0 if
/// its requests will be bounced.
///
/// # Safety
/// `dev` must be a live handle; the range must stay mapped until passed to
/// [`iomem_rs_dev_dma_unregister`].
#[no_mangle]
pub unsafe extern "C" fn iomem_rs_dev_dma_register(
    dev: *const RsDev,
    vaddr: *mut c_void,
    len: usize,
) -> i32 {
    // SAFETY: live handle; range contract forwarded.
    unsafe { dev_ref(dev).dma().register(vaddr.cast(), len) as i32 }
}

/// SPDK unregistered memory.
///
/// # Safety
/// `dev` must be a live handle.
#[no_mangle]
pub unsafe extern "C" fn iomem_rs_dev_dma_unregister(
    dev: *const RsDev,
    vaddr: *mut c_void,
    len: usize,
) {
    // SAFETY: live handle (contract).
    unsafe { dev_ref(dev) }.dma().unregister(vaddr.cast(), len);
}

/// Starts a delete. 0: the caller must now call `spdk_bdev_unregister`;
/// -EBUSY: removal already under way (message in `err`).
///
/// # Safety
/// `dev` must be a live handle; `err` null or `err_len` writable bytes.
#[no_mangle]
pub unsafe extern "C" fn iomem_rs_dev_begin_delete(
    dev: *const RsDev,
    err: *mut c_char,
    err_len: usize,
) -> i32 {
    // SAFETY: live handle (contract).
    match unsafe { dev_ref(dev) }
        .lifecycle()
        .begin_remove(RemoveReason::Delete)
    {
        Ok(()) => 0,
        Err(e) => {
            // SAFETY: forwarded from the contract.
            unsafe { write_err(err, err_len, &e.to_string()) };
            -libc::EBUSY
        }
    }
}

/// SPDK called `destruct`. 0, or -EALREADY if destruction already began.
///
/// # Safety
/// `dev` must be a live handle.
#[no_mangle]
pub unsafe extern "C" fn iomem_rs_dev_begin_destruct(dev: *const RsDev) -> i32 {
    // SAFETY: live handle (contract).
    match unsafe { dev_ref(dev) }.lifecycle().begin_destruct() {
        Ok(()) => 0,
        Err(_) => -libc::EALREADY,
    }
}

/// Detaches the card (after the last channel closed): 0 clean, 1 card was
/// lost (recovery scans at next attach), negative errno on failure with a
/// message in `err`.
///
/// # Safety
/// `dev` must be a live handle; `err` null or `err_len` writable bytes.
#[no_mangle]
pub unsafe extern "C" fn iomem_rs_dev_detach(
    dev: *const RsDev,
    err: *mut c_char,
    err_len: usize,
) -> i32 {
    // SAFETY: live handle (contract).
    match unsafe { dev_ref(dev) }.detach() {
        Ok(Detached::Clean) => 0,
        Ok(Detached::CardLost) => 1,
        Err(e) => {
            // SAFETY: forwarded from the contract.
            unsafe { write_err(err, err_len, &e.to_string()) };
            -libc::EIO
        }
    }
}

/// Completion of [`iomem_rs_dev_detach_async`]: `(arg, rc, msg)` with `rc`
/// as [`iomem_rs_dev_detach`] returns it; `msg` (null on success) valid only
/// during the call.
pub type DetachDoneFn = extern "C" fn(arg: *mut c_void, rc: i32, msg: *const c_char);

/// Like [`iomem_rs_dev_detach`] (checkpoint and clean mark), on a worker
/// thread so the SPDK thread keeps polling meanwhile. `done` is called
/// exactly once, from the worker. Returns 0, or -EAGAIN if no thread could
/// be started (`done` is then not called).
///
/// # Safety
/// `dev` must be a live handle that stays live until `done` ran; `done`
/// must be callable from any thread with `arg`.
#[no_mangle]
pub unsafe extern "C" fn iomem_rs_dev_detach_async(
    dev: *const RsDev,
    done: DetachDoneFn,
    arg: *mut c_void,
) -> i32 {
    // SAFETY: live handle (contract).
    let dev = Arc::clone(unsafe { dev_ref(dev) });
    let ctx = CallerCtx(arg);
    let spawned = std::thread::Builder::new()
        .name("iomem-detach".into())
        .spawn(move || {
            let arg = ctx.get();
            match dev.detach() {
                Ok(Detached::Clean) => done(arg, 0, std::ptr::null()),
                Ok(Detached::CardLost) => done(arg, 1, std::ptr::null()),
                Err(e) => {
                    let msg = CString::new(e.to_string().replace('\0', " ")).unwrap_or_default();
                    done(arg, -libc::EIO, msg.as_ptr());
                }
            }
        });
    match spawned {
        Ok(_) => 0,
        Err(_) => -libc::EAGAIN,
    }
}

/// Opens an I/O channel for the calling SPDK thread; null on failure with a
/// message in `err`.
///
/// # Safety
/// `dev` must be a live handle; `err` null or `err_len` writable bytes.
#[no_mangle]
pub unsafe extern "C" fn iomem_rs_chan_open(
    dev: *const RsDev,
    err: *mut c_char,
    err_len: usize,
) -> *mut BdevChannel {
    // SAFETY: live handle (contract).
    match unsafe { dev_ref(dev) }.open_channel() {
        Ok(ch) => Box::into_raw(Box::new(ch)),
        Err(e) => {
            // SAFETY: forwarded from the contract.
            unsafe { write_err(err, err_len, &e.to_string()) };
            std::ptr::null_mut()
        }
    }
}

/// Submits a request. Returns 0 if queued (completion comes from
/// [`iomem_rs_chan_poll`]), or 1 with `*status` set if it finished at once.
///
/// # Safety
/// `ch` must be a live channel used only by the calling thread; `io` a
/// valid descriptor whose buffers stay valid until completion; `status`
/// writable.
#[no_mangle]
pub unsafe extern "C" fn iomem_rs_chan_submit(
    ch: *mut BdevChannel,
    io: *const IoDesc,
    status: *mut i32,
) -> i32 {
    // SAFETY: live channel, exclusive to this thread; `io` valid (contract).
    let outcome = unsafe { (*ch).submit(&*io) };
    match outcome {
        Submitted::Queued => 0,
        Submitted::Done(s) => {
            // SAFETY: writable (contract).
            unsafe { *status = s as i32 };
            1
        }
    }
}

/// Polls: completes finished requests through `cb(arg, token, status)`.
/// Returns the number completed; sets `*hot_remove` when the card went
/// offline and the caller must unregister the bdev (once per device).
///
/// The callbacks run after the library's poll returned and while no Rust
/// reference to the channel is live, so a callback may submit the next
/// request on this channel (SPDK completes bdev I/O synchronously and its
/// users resubmit from the completion).
///
/// # Safety
/// `ch` must be a live channel used only by the calling thread;
/// `hot_remove` writable.
#[no_mangle]
pub unsafe extern "C" fn iomem_rs_chan_poll(
    ch: *mut BdevChannel,
    cb: CompleteFn,
    arg: *mut c_void,
    hot_remove: *mut bool,
) -> i32 {
    // SAFETY: live channel, exclusive to this thread (contract); each
    // borrow below ends before the callbacks run.
    let (r, done) = unsafe { ((*ch).reap(), (*ch).take_completions()) };
    for &(token, status) in &done {
        cb(arg, token, status as i32);
    }
    // SAFETY: as above; the callbacks have returned.
    unsafe { (*ch).recycle_completions(done) };
    // SAFETY: writable (contract).
    unsafe { *hot_remove = r.hot_remove };
    r.completed.min(i32::MAX as usize) as i32
}

/// Closes a channel: drains in-flight requests, then completes them
/// through `cb` (after the channel is closed: a request submitted from a
/// callback fails at once) and frees it. Returns the number completed.
///
/// # Safety
/// `ch` must be a live channel, not used after this returns.
#[no_mangle]
pub unsafe extern "C" fn iomem_rs_chan_close(
    ch: *mut BdevChannel,
    cb: CompleteFn,
    arg: *mut c_void,
) -> i32 {
    // SAFETY: live channel (contract); the borrow ends before the callbacks.
    let done = unsafe { (*ch).finish() };
    for &(token, status) in &done {
        cb(arg, token, status as i32);
    }
    // SAFETY: created by Box::into_raw in iomem_rs_chan_open; freed once,
    // after the callbacks returned.
    drop(unsafe { Box::from_raw(ch) });
    done.len().min(i32::MAX as usize) as i32
}

/// Reads a NUL-terminated error buffer filled by this library (lossy;
/// stops at the first NUL or the end of the buffer).
pub fn err_text(buf: &[c_char]) -> String {
    let bytes: Vec<u8> = buf
        .iter()
        .map(|&c| c as u8)
        .take_while(|&b| b != 0)
        .collect();
    String::from_utf8_lossy(&bytes).into_owned()
}
