//! `iomem sim create` and `iomem status` as a user runs them: a real image
//! file, the real binary, the output checked line by line.

use std::path::Path;
use std::process::Command;

fn iomem(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_iomem")).args(args).output().expect("run iomem");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn created_card_shows_fio_status_fields_and_parses_as_json() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("c.img");
    let img = img.to_str().unwrap();
    let (ok, out, err) = iomem(&["sim", "create", img, "--capacity", "256MiB", "--seed", "9"]);
    assert!(ok, "{err}");
    assert!(out.contains("Created emulated ioDrive2"), "{out}");
    // Sparse: a 256 MiB card costs far less on disk.
    let meta = std::fs::metadata(img).unwrap();
    use std::os::unix::fs::MetadataExt;
    assert!(meta.blocks() * 512 < meta.len() / 4, "image is not sparse");

    let (ok, out, err) = iomem(&["status", "-a", img]);
    assert!(ok, "{err}");
    for needle in [
        "Found 1 ioMemory device in this system",
        "Fusion-io ioDrive2",
        "fct0\tDetached",
        "Powerloss protection: protected",
        "Vendor:1aed, Device:2001",
        "Firmware v7.1.15, rev 110356 Public",
        "GBytes device size",
        "Internal temperature:",
        "Reserve space status: Healthy",
        "Rated PBW:",
        "Physical bytes written: 0",
        "RAM usage:",
    ] {
        assert!(out.contains(needle), "missing {needle:?} in:\n{out}");
    }

    let (ok, out, _) = iomem(&["status", "--json", img]);
    assert!(ok);
    let doc: serde_json::Value = serde_json::from_str(&out).expect("status --json is JSON");
    let dev = &doc["devices"][0];
    assert_eq!(dev["model"], "ioDrive2");
    assert_eq!(dev["pci"]["device"], "2001");
    assert_eq!(dev["state"], "Detached");
    assert!(dev["health"]["temperature_mc"].as_i64().unwrap() > 0);
}

#[test]
fn bad_cards_are_refused_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let junk = dir.path().join("junk.img");
    std::fs::write(&junk, vec![7u8; 8192]).unwrap();
    let (ok, _, err) = iomem(&["status", junk.to_str().unwrap()]);
    assert!(!ok);
    assert!(err.contains("not an iomemory card image"), "{err}");
    let (ok, _, err) = iomem(&["status", dir.path().join("missing.img").to_str().unwrap()]);
    assert!(!ok);
    assert!(err.contains("iomem sim create"), "{err}");
    // Creating over a file with contents is refused and leaves it alone.
    let (ok, _, err) = iomem(&["sim", "create", junk.to_str().unwrap()]);
    assert!(!ok, "{err}");
    assert_eq!(std::fs::read(&junk).unwrap(), vec![7u8; 8192]);
}

#[test]
fn a_real_card_at_a_pci_address_is_described_but_not_driven() {
    let sysfs = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/sysfs/sys");
    let (ok, out, err) = iomem(&["status", "--sysfs", sysfs.to_str().unwrap(), "0000:03:00.0"]);
    assert!(ok, "{err}");
    assert!(out.contains("ioDrive2"), "{out}");
    assert!(out.contains("command protocol not supported"), "{out}");
}
