//! The opaque-handle C ABI, called exactly as the SPDK shim calls it:
//! create from RPC JSON, info/config JSON, DMA notifications, channels,
//! submit/poll/close with a C completion callback, delete and detach.

mod common;

use std::ffi::{c_char, c_void, CStr};

use common::*;
use iomemory_bdev::ffi::*;
use iomemory_bdev::io::spdk_io_type;
use iomemory_bdev::params::JSONRPC_INVALID_PARAMS;

extern "C" fn record(arg: *mut c_void, token: u64, status: i32) {
    // SAFETY: every caller passes a `*mut Vec<(u64, i32)>` it owns.
    let v = unsafe { &mut *arg.cast::<Vec<(u64, i32)>>() };
    v.push((token, status));
}

fn open(json: &str) -> Result<*mut RsDev, (i32, String)> {
    let mut err = [0 as c_char; 512];
    let mut code = 0i32;
    // SAFETY: valid buffers of the stated lengths.
    let dev = unsafe {
        iomem_rs_dev_open(
            json.as_ptr().cast(),
            json.len(),
            err.as_mut_ptr(),
            err.len(),
            &mut code,
        )
    };
    if dev.is_null() {
        Err((code, err_text(&err)))
    } else {
        Ok(dev)
    }
}

fn take_string(p: *mut c_char) -> String {
    assert!(!p.is_null());
    // SAFETY: a NUL-terminated string from the library, freed once below.
    let s = unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned();
    // SAFETY: returned by the library; not used afterwards.
    unsafe { iomem_rs_string_free(p) };
    s
}

#[test]
fn create_errors_carry_json_rpc_codes_and_advice() {
    let (code, msg) = open(r#"{"name":"x"}"#).unwrap_err();
    assert_eq!(code, JSONRPC_INVALID_PARAMS);
    assert!(msg.contains("path"), "{msg}");
    let (code, msg) = open(r#"{"name":"x","path":"/nonexistent/card.img"}"#).unwrap_err();
    assert_eq!(code, JSONRPC_INVALID_PARAMS);
    assert!(msg.contains("iomem sim create"), "{msg}");
    let (code, msg) = open("{not json").unwrap_err();
    assert_eq!(code, JSONRPC_INVALID_PARAMS);
    assert!(msg.starts_with("invalid parameters"), "{msg}");
    let (code, msg) = open(r#"{"name":"x","pci_address":"ffff:ff:1f.7"}"#).unwrap_err();
    assert_eq!(code, -libc::ENODEV);
    assert!(msg.contains("ffff:ff:1f.7"), "{msg}");
    // A blank card without format_if_blank: the error says how to format.
    let dir0 = tempfile::tempdir().unwrap();
    let blank = image(dir0.path(), 14);
    let (code, msg) = open(&format!(r#"{{"name":"x","path":"{}"}}"#, blank.display())).unwrap_err();
    assert_eq!(code, -libc::ENODEV);
    assert!(msg.contains("format_if_blank"), "{msg}");
    // A file that is not a card image.
    let dir = tempfile::tempdir().unwrap();
    let junk = dir.path().join("junk.img");
    std::fs::write(&junk, vec![0u8; 8192]).unwrap();
    let (code, msg) = open(&format!(r#"{{"name":"x","path":"{}"}}"#, junk.display())).unwrap_err();
    assert_eq!(code, -libc::EIO);
    assert!(msg.starts_with("cannot open the card"), "{msg}");
}

#[test]
fn delete_params_parse_through_the_abi() {
    let mut name = [0 as c_char; 16];
    let mut err = [0 as c_char; 256];
    let ok = r#"{"name":"iom0"}"#;
    // SAFETY: valid buffers of the stated lengths.
    let rc = unsafe {
        iomem_rs_delete_params(
            ok.as_ptr().cast(),
            ok.len(),
            name.as_mut_ptr(),
            name.len(),
            err.as_mut_ptr(),
            err.len(),
        )
    };
    assert_eq!(rc, 0);
    assert_eq!(err_text(&name), "iom0");
    let long = format!(r#"{{"name":"{}"}}"#, "n".repeat(40));
    // SAFETY: as above.
    let rc = unsafe {
        iomem_rs_delete_params(
            long.as_ptr().cast(),
            long.len(),
            name.as_mut_ptr(),
            name.len(),
            err.as_mut_ptr(),
            err.len(),
        )
    };
    assert_eq!(rc, JSONRPC_INVALID_PARAMS);
    assert!(err_text(&err).contains("too long"));
    // SAFETY: a null params pointer with length 0 is accepted.
    let rc = unsafe {
        iomem_rs_delete_params(
            std::ptr::null(),
            0,
            name.as_mut_ptr(),
            name.len(),
            err.as_mut_ptr(),
            err.len(),
        )
    };
    assert_eq!(rc, JSONRPC_INVALID_PARAMS);
}

#[test]
fn full_lifecycle_through_the_abi() {
    assert_eq!(iomem_rs_abi_version(), ABI_VERSION);
    for t in [
        spdk_io_type::READ,
        spdk_io_type::WRITE,
        spdk_io_type::UNMAP,
        spdk_io_type::FLUSH,
        spdk_io_type::RESET,
        spdk_io_type::WRITE_ZEROES,
    ] {
        assert!(iomem_rs_io_type_supported(t));
    }
    assert!(!iomem_rs_io_type_supported(14), "COMPARE is not served");

    let dir = tempfile::tempdir().unwrap();
    let path = image(dir.path(), 11);
    let json = format!(
        r#"{{"name":"iom0","path":"{}","format_if_blank":true}}"#,
        path.display()
    );
    let dev = open(&json).unwrap();
    let mut uuid = [0u8; 16];
    // SAFETY: `dev` is live for the whole test; buffers are valid.
    unsafe {
        assert_eq!(
            CStr::from_ptr(iomem_rs_dev_name(dev)).to_str().unwrap(),
            "iom0"
        );
        assert_eq!(iomem_rs_dev_block_size(dev), 4096);
        assert!(iomem_rs_dev_num_blocks(dev) > 1000);
        assert_eq!(iomem_rs_dev_max_rw_blocks(dev), (2 << 20) / 4096);
        iomem_rs_dev_uuid(dev, uuid.as_mut_ptr());
    }
    assert_ne!(uuid, [0u8; 16]);

    // SAFETY: live handle.
    let cfg: serde_json::Value =
        serde_json::from_str(&take_string(unsafe { iomem_rs_dev_config_json(dev) })).unwrap();
    assert_eq!(cfg["name"], "iom0");
    assert_eq!(
        cfg["path"],
        std::fs::canonicalize(&path).unwrap().to_str().unwrap()
    );
    assert_eq!(cfg["format_if_blank"], true);

    // DMA: SPDK announces its memory; I/O on it is zero-copy.
    let mut buf = HostBuf::new(4 * 4096);
    // SAFETY: live handle; `buf` outlives the registration (unregistered below).
    let reachable = unsafe { iomem_rs_dev_dma_register(dev, buf.ptr().cast(), buf.len()) };
    assert_eq!(reachable, 1);
    let data = pattern(5, 9, 4 * 4096);
    buf.fill(&data);

    let mut err = [0 as c_char; 256];
    // SAFETY: live handle, valid buffer.
    let ch = unsafe { iomem_rs_chan_open(dev, err.as_mut_ptr(), err.len()) };
    assert!(!ch.is_null(), "{}", err_text(&err));
    let mut done: Vec<(u64, i32)> = Vec::new();
    let iov = [buf.iov(0, 4 * 4096)];
    let w = desc(spdk_io_type::WRITE, 5, 4, &iov, 0xabc);
    let mut status = -1;
    // SAFETY: live channel on this thread; `iov`/`buf` outlive the request.
    assert_eq!(unsafe { iomem_rs_chan_submit(ch, &w, &mut status) }, 0);
    let mut hot = true;
    while done.is_empty() {
        // SAFETY: live channel; `done` outlives the call.
        unsafe {
            iomem_rs_chan_poll(
                ch,
                record,
                (&mut done as *mut Vec<(u64, i32)>).cast(),
                &mut hot,
            )
        };
        assert!(!hot);
    }
    assert_eq!(done, vec![(0xabc, 0)]);
    // An out-of-range read finishes at once, FAILED.
    let r = desc(spdk_io_type::READ, u64::MAX - 1, 1, &iov[..], 0xdef);
    // SAFETY: as above.
    assert_eq!(unsafe { iomem_rs_chan_submit(ch, &r, &mut status) }, 1);
    assert_eq!(status, 1);

    // SAFETY: live handle.
    let info: serde_json::Value =
        serde_json::from_str(&take_string(unsafe { iomem_rs_dev_info_json(dev) })).unwrap();
    assert!(info["card"]["identity"]["model"].is_string(), "{info}");
    assert!(info["card"]["identity"]["serial"].is_string());
    assert!(info["vsl"]["ram_usage"]["total"].as_u64().unwrap() > 0);
    assert!(info["vsl"]["write_amplification"].is_number());
    assert!(info["vsl"]["reserve"].is_object());
    assert!(info["health"].is_object());
    assert_eq!(info["dma"]["regions"], 1);
    assert_eq!(info["io"]["writes"], 1);
    assert_eq!(info["io"]["bounced"], 0);
    assert_eq!(info["lifecycle"]["state"], "active");
    assert_eq!(info["lifecycle"]["channels"], 1);

    // Delete: the first caller wins, a second is told it is under way.
    // SAFETY: live handle, valid buffer.
    unsafe {
        assert_eq!(
            iomem_rs_dev_begin_delete(dev, err.as_mut_ptr(), err.len()),
            0
        );
        assert_eq!(
            iomem_rs_dev_begin_delete(dev, err.as_mut_ptr(), err.len()),
            -libc::EBUSY
        );
    }
    assert!(err_text(&err).contains("already being removed"));
    // SAFETY: live handle and channel; `done` outlives the call.
    unsafe {
        assert_eq!(iomem_rs_dev_begin_destruct(dev), 0);
        assert_eq!(iomem_rs_dev_begin_destruct(dev), -libc::EALREADY);
        assert!(
            iomem_rs_dev_detach(dev, err.as_mut_ptr(), err.len()) < 0,
            "channel still open"
        );
        assert_eq!(
            iomem_rs_chan_close(ch, record, (&mut done as *mut Vec<(u64, i32)>).cast()),
            0
        );
        iomem_rs_dev_dma_unregister(dev, buf.ptr().cast(), buf.len());
        assert_eq!(
            iomem_rs_dev_detach(dev, err.as_mut_ptr(), err.len()),
            0,
            "{}",
            err_text(&err)
        );
        iomem_rs_dev_free(dev);
    }

    // Recreate from the saved config: same UUID, data there.
    let dev = open(&cfg.to_string()).unwrap();
    let mut uuid2 = [0u8; 16];
    // SAFETY: live handle.
    unsafe { iomem_rs_dev_uuid(dev, uuid2.as_mut_ptr()) };
    assert_eq!(uuid, uuid2, "the bdev UUID is stable across restarts");
    let out = HostBuf::new(4 * 4096);
    // SAFETY: live handle, valid buffer.
    let ch = unsafe { iomem_rs_chan_open(dev, err.as_mut_ptr(), err.len()) };
    let oiov = [out.iov(0, 4 * 4096)];
    let r = desc(spdk_io_type::READ, 5, 4, &oiov, 1);
    done.clear();
    // SAFETY: live channel; `out` outlives the request.
    assert_eq!(unsafe { iomem_rs_chan_submit(ch, &r, &mut status) }, 0);
    while done.is_empty() {
        // SAFETY: as above.
        unsafe {
            iomem_rs_chan_poll(
                ch,
                record,
                (&mut done as *mut Vec<(u64, i32)>).cast(),
                &mut hot,
            )
        };
    }
    assert_eq!(done, vec![(1, 0)]);
    assert_eq!(out.bytes(4 * 4096), data);
    // SAFETY: live handles, closed in order.
    unsafe {
        iomem_rs_chan_close(ch, record, (&mut done as *mut Vec<(u64, i32)>).cast());
        iomem_rs_dev_begin_destruct(dev);
        assert_eq!(iomem_rs_dev_detach(dev, err.as_mut_ptr(), err.len()), 0);
        iomem_rs_dev_free(dev);
    }
}

type OpenResult = std::sync::mpsc::Sender<(usize, i32, String)>;

extern "C" fn open_done(arg: *mut c_void, dev: *mut RsDev, code: i32, msg: *const c_char) {
    let text = if msg.is_null() {
        String::new()
    } else {
        // SAFETY: the library passes a valid string for the duration of the call.
        unsafe { CStr::from_ptr(msg) }
            .to_string_lossy()
            .into_owned()
    };
    // SAFETY: the test passes a leaked (never freed) `*const OpenResult`.
    let tx = unsafe { &*arg.cast::<OpenResult>() };
    tx.send((dev as usize, code, text)).unwrap();
}

extern "C" fn detach_done(arg: *mut c_void, rc: i32, msg: *const c_char) {
    assert!(rc != 0 || msg.is_null(), "success carries no message");
    // SAFETY: the test passes a leaked (never freed) `*const OpenResult`.
    let tx = unsafe { &*arg.cast::<OpenResult>() };
    tx.send((0, rc, String::new())).unwrap();
}

#[test]
fn open_and_detach_run_on_worker_threads() {
    let (tx, rx) = std::sync::mpsc::channel::<(usize, i32, String)>();
    // The worker thread may still be inside `send` (waking the receiver)
    // after the test has its message and returns: the sender must outlive
    // the callback's return, not just its message, so it is never freed.
    let tx: &'static OpenResult = Box::leak(Box::new(tx));
    let arg = (tx as *const OpenResult).cast_mut().cast::<c_void>();
    let bad = r#"{"name":"a","path":"/nonexistent/card.img"}"#;
    // SAFETY: valid params; `tx` outlives the callback (we wait for it).
    let rc = unsafe { iomem_rs_dev_open_async(bad.as_ptr().cast(), bad.len(), open_done, arg) };
    assert_eq!(rc, 0);
    let (dev, code, msg) = rx.recv_timeout(std::time::Duration::from_secs(10)).unwrap();
    assert_eq!((dev, code), (0, JSONRPC_INVALID_PARAMS));
    assert!(msg.contains("iomem sim create"), "{msg}");

    let dir = tempfile::tempdir().unwrap();
    let path = image(dir.path(), 12);
    let json = format!(
        r#"{{"name":"iomA","path":"{}","format_if_blank":true}}"#,
        path.display()
    );
    // SAFETY: as above.
    let rc = unsafe { iomem_rs_dev_open_async(json.as_ptr().cast(), json.len(), open_done, arg) };
    assert_eq!(rc, 0);
    let (dev, code, msg) = rx.recv_timeout(std::time::Duration::from_secs(30)).unwrap();
    assert_eq!(code, 0, "{msg}");
    let dev = dev as *mut RsDev;
    assert!(!dev.is_null());
    // SAFETY: `dev` is live until freed below; `tx` outlives the callback.
    unsafe {
        assert_eq!(
            CStr::from_ptr(iomem_rs_dev_name(dev)).to_str().unwrap(),
            "iomA"
        );
        assert_eq!(iomem_rs_dev_begin_destruct(dev), 0);
        assert_eq!(iomem_rs_dev_detach_async(dev, detach_done, arg), 0);
    }
    let (_, rc, _) = rx.recv_timeout(std::time::Duration::from_secs(30)).unwrap();
    assert_eq!(rc, 0, "clean detach");
    // A second detach is refused (already detached).
    let mut err = [0 as c_char; 256];
    // SAFETY: live handle, valid buffer; freed once afterwards.
    unsafe {
        assert!(iomem_rs_dev_detach(dev, err.as_mut_ptr(), err.len()) < 0);
        iomem_rs_dev_free(dev);
    }
    assert!(
        err_text(&err).contains("cannot detach"),
        "{}",
        err_text(&err)
    );
}

#[test]
fn create_params_are_validated_without_opening_the_card() {
    let dir = tempfile::tempdir().unwrap();
    let path = image(dir.path(), 13);
    let json = format!(
        r#"{{"name":"iomB","path":"{}","format_if_blank":true}}"#,
        path.display()
    );
    let mut name = [0 as c_char; 64];
    let mut err = [0 as c_char; 256];
    // SAFETY: valid buffers of the stated lengths.
    let rc = unsafe {
        iomem_rs_create_params(
            json.as_ptr().cast(),
            json.len(),
            name.as_mut_ptr(),
            name.len(),
            err.as_mut_ptr(),
            err.len(),
        )
    };
    assert_eq!(rc, 0, "{}", err_text(&err));
    assert_eq!(err_text(&name), "iomB");
    // The card was not opened: it can be opened (and locked) right away.
    let dev = open(&json).unwrap();
    // SAFETY: live handle, destructed, detached and freed once.
    unsafe {
        iomem_rs_dev_begin_destruct(dev);
        assert!(iomem_rs_dev_detach(dev, err.as_mut_ptr(), err.len()) <= 1);
        iomem_rs_dev_free(dev);
    }
    let bad = r#"{"name":"x y","path":"/x"}"#;
    // SAFETY: as above.
    let rc = unsafe {
        iomem_rs_create_params(
            bad.as_ptr().cast(),
            bad.len(),
            name.as_mut_ptr(),
            name.len(),
            err.as_mut_ptr(),
            err.len(),
        )
    };
    assert_eq!(rc, JSONRPC_INVALID_PARAMS);
    assert!(err_text(&err).contains("whitespace"), "{}", err_text(&err));
}

/// What the resubmitting callback needs.
struct Chain {
    ch: *mut iomemory_bdev::BdevChannel,
    iov: [libc::iovec; 1],
    remaining: u64,
    completed: u64,
    failed: u64,
}

extern "C" fn resubmit(arg: *mut c_void, _token: u64, status: i32) {
    // SAFETY: the test passes a `*mut Chain` that outlives every poll.
    let chain = unsafe { &mut *arg.cast::<Chain>() };
    chain.completed += 1;
    chain.failed += (status != 0) as u64;
    if chain.remaining > 0 {
        chain.remaining -= 1;
        let d = desc(
            spdk_io_type::WRITE,
            chain.remaining,
            1,
            &chain.iov,
            chain.remaining,
        );
        let mut st = 0;
        // SAFETY: the channel is live and used by this thread only; the
        // buffer behind `iov` outlives the request. This is the SPDK
        // pattern: the completion submits the next I/O on the same channel.
        if unsafe { iomem_rs_chan_submit(chain.ch, &d, &mut st) } != 0 {
            chain.failed += 1;
        }
    }
}

#[test]
fn completions_may_resubmit_on_the_same_channel() {
    let dev = memory_device(15, 4096);
    let buf = HostBuf::new(4096);
    // SAFETY: `buf` outlives the device's use of it.
    unsafe { dev.dma().register(buf.ptr(), buf.len()) };
    let ch = Box::into_raw(Box::new(dev.open_channel().unwrap()));
    // Only ever accessed through this raw pointer (the callback mutates it).
    let chain = Box::into_raw(Box::new(Chain {
        ch,
        iov: [buf.iov(0, 4096)],
        remaining: 2000,
        completed: 0,
        failed: 0,
    }));
    let arg = chain.cast::<c_void>();
    let iov = [buf.iov(0, 4096)];
    // Prime QD 8, then let the callbacks keep it full.
    for i in 0..8u64 {
        let d = desc(spdk_io_type::WRITE, 3000 + i, 1, &iov, 3000 + i);
        let mut st = 0;
        // SAFETY: live channel on this thread; `buf` outlives the request.
        assert_eq!(unsafe { iomem_rs_chan_submit(ch, &d, &mut st) }, 0);
    }
    let mut hot = false;
    let start = std::time::Instant::now();
    loop {
        // SAFETY: `chain` is live until freed below; no reference to it is
        // held across the polls that mutate it.
        if unsafe { (*chain).completed } >= 2008 {
            break;
        }
        // SAFETY: live channel; `chain` outlives the call.
        unsafe { iomem_rs_chan_poll(ch, resubmit, arg, &mut hot) };
        assert!(start.elapsed().as_secs() < 20, "stalled");
    }
    // SAFETY: as above; then closed and freed once, nothing in flight.
    unsafe {
        assert_eq!((*chain).failed, 0);
        assert_eq!(iomem_rs_chan_close(ch, resubmit, arg), 0);
        drop(Box::from_raw(chain));
    }
    assert_eq!(dev.counters().total().writes, 2008);
}
