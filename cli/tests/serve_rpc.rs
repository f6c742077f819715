//! `iomem serve` control socket, end to end: `iomem rpc` and raw JSON-RPC
//! against a real server process.

mod serve_common;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use serde_json::Value;
use serve_common::*;

fn json(s: &str) -> Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("not JSON ({e}): {s}"))
}

#[test]
fn cards_and_exports_are_managed_over_rpc() {
    let dir = tempfile::tempdir().unwrap();
    let card = make_card(dir.path(), "card0.img", "128MiB");
    let card2 = make_card(dir.path(), "card1.img", "128MiB");
    let sock = format!("unix:{}", dir.path().join("a.sock").display());
    let mut srv = Server::start(dir.path(), &["--format-if-blank", card.to_str().unwrap(), "--nbd", &sock, "--export", "a"]);

    let (ok, out, _) = srv.rpc("rpc_get_methods", None);
    assert!(ok);
    for m in ["card_list", "card_status", "export_list", "export_add", "export_remove", "card_detach", "card_attach"] {
        assert!(json(&out).as_array().unwrap().iter().any(|v| v == m), "{m} missing");
    }
    let (ok, out, _) = srv.rpc("card_list", None);
    assert!(ok);
    let cards = json(&out);
    assert_eq!(cards[0]["name"], "card0");
    assert_eq!(cards[0]["exports"][0], "a");

    // Live counters move with I/O.
    let mut c = Client::open(&sock, "a", true).unwrap();
    assert_eq!(c.write(0, &pattern(0, 8192, 1), 0), 0);
    assert_eq!(c.read(0, 8192).error, 0);
    let (ok, out, err) = srv.rpc("card_status", Some(r#"{"name":"card0"}"#));
    assert!(ok, "{err}");
    let st = json(&out);
    assert_eq!(st["state"], "Attached");
    assert!(st["vsl"].is_object());
    let stats = &st["export_stats"][0]["stats"];
    assert_eq!(stats["writes"], 1);
    assert_eq!(stats["reads"], 1);
    assert_eq!(stats["write_bytes"], 8192);
    assert_eq!(stats["connections"], 1);

    // Add a second card and an export on it; use it; remove it.
    let p = format!(r#"{{"name":"second","path":"{}","format_if_blank":true}}"#, card2.display());
    let (ok, _, err) = srv.rpc("card_attach", Some(&p));
    assert!(ok, "{err}");
    let bsock = dir.path().join("b.sock");
    let p = format!(r#"{{"type":"nbd","name":"b","card":"second","listen":"unix:{}"}}"#, bsock.display());
    let (ok, _, err) = srv.rpc("export_add", Some(&p));
    assert!(ok, "{err}");
    let baddr = format!("unix:{}", bsock.display());
    let mut d = Client::open(&baddr, "b", false).unwrap();
    assert_eq!(d.write(4096, &[9u8; 4096], FLAG_FUA), 0);
    // A second export on the same listener: both names are served there.
    let p = format!(r#"{{"type":"nbd","name":"b2","card":"card0","listen":"unix:{}","read_only":true}}"#, bsock.display());
    let (ok, _, err) = srv.rpc("export_add", Some(&p));
    assert!(ok, "{err}");
    let mut e = Client::open(&baddr, "b2", true).unwrap();
    assert_eq!(e.read(0, 8192).data, pattern(0, 8192, 1));
    assert_eq!(e.write(0, &[1u8; 4096], 0), EPERM);
    assert!(Client::open(&baddr, "a", false).is_err(), "an export is only served on its own listener");
    let (ok, _, err) = srv.rpc("export_remove", Some(r#"{"name":"b2"}"#));
    assert!(ok, "{err}");
    drop(e);
    let (_, out, _) = srv.rpc("export_list", None);
    assert_eq!(json(&out).as_array().unwrap().len(), 2);

    // Detach refuses while exported; errors say what to do.
    let (ok, _, err) = srv.rpc("card_detach", Some(r#"{"name":"second"}"#));
    assert!(!ok && err.contains("remove those exports first"), "{err}");
    let (ok, _, err) = srv.rpc("export_remove", Some(r#"{"name":"b"}"#));
    assert!(ok, "{err}");
    // The removed export's connection is closed and its listener is gone.
    let mut b = [0u8; 1];
    d.s.flush().unwrap();
    assert_eq!(std::io::Read::read(&mut d.s, &mut b).unwrap_or(0), 0);
    assert!(UnixStream::connect(&bsock).is_err());
    let (ok, _, err) = srv.rpc("card_detach", Some(r#"{"name":"second"}"#));
    assert!(ok, "{err}");
    // Re-attach the same image: the lock was released by the detach.
    let p = format!(r#"{{"name":"again","path":"{}"}}"#, card2.display());
    let (ok, _, err) = srv.rpc("card_attach", Some(&p));
    assert!(ok, "{err}");

    // Bad requests: clear errors, the service keeps running.
    let (ok, _, err) = srv.rpc("card_status", Some(r#"{"name":"nope"}"#));
    assert!(!ok && err.contains("no card named"), "{err}");
    let (ok, _, err) = srv.rpc("export_add", Some(r#"{"type":"nbd","name":"x"}"#));
    assert!(!ok && err.contains("invalid params"), "{err}");
    let (ok, _, err) = srv.rpc("no_such_method", None);
    assert!(!ok && err.contains("-32601"), "{err}");
    let (ok, _, err) = srv.rpc("card_attach", Some(r#"{"name":"z","path":"/nonexistent/x.img"}"#));
    assert!(!ok && err.contains("no such card image"), "{err}");

    assert_eq!(c.read(0, 8192).data, pattern(0, 8192, 1));
    drop(c);
    assert!(srv.signal_and_wait(libc::SIGTERM).success());
    let log = srv.log.lock().unwrap().join("\n");
    assert!(log.contains("card card0 detached") && log.contains("card again detached"), "{log}");
}

#[test]
fn raw_json_rpc_malformed_input_batches_and_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    let mut srv = Server::start(dir.path(), &[]);
    let talk = |req: &[u8]| -> Vec<Value> {
        let mut s = UnixStream::connect(&srv.rpc).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(req).unwrap();
        s.shutdown(std::net::Shutdown::Write).unwrap();
        BufReader::new(s).lines().map(|l| json(&l.unwrap())).collect()
    };
    let r = talk(b"{\"jsonrpc\":\"2.0\",\"id\":5,\"method\":\"card_list\"}{\"jsonrpc\":\"2.0\",\"id\":6,\"method\":\"export_list\"}");
    assert_eq!(r.len(), 2);
    assert_eq!(r[0]["id"], 5);
    assert_eq!(r[0]["result"], Value::Array(vec![]));
    assert_eq!(r[1]["id"], 6);
    let r = talk(b"[{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"card_list\"},{\"jsonrpc\":\"2.0\",\"method\":\"card_list\"},7]");
    let batch = r[0].as_array().unwrap();
    assert_eq!(batch.len(), 2, "a notification gets no reply: {batch:?}");
    assert_eq!(batch[1]["error"]["code"], -32600);
    let r = talk(b"{\"jsonrpc\":\"1.0\",\"id\":1,\"method\":\"card_list\"}");
    assert_eq!(r[0]["error"]["code"], -32600);
    let r = talk(b"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"card_status\",\"params\":[1]}");
    assert_eq!(r[0]["error"]["code"], -32602);
    let r = talk(b"{not json");
    assert_eq!(r[0]["error"]["code"], -32700);
    let r = talk(b"[]");
    assert_eq!(r[0]["error"]["code"], -32600);

    let (ok, _, _) = srv.rpc("service_shutdown", None);
    assert!(ok);
    assert!(srv.wait(Duration::from_secs(30)).success());
    assert!(!srv.rpc.exists(), "control socket removed on exit");
}
