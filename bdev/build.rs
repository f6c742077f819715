//! Builds the SPDK C shim (csrc/bdev_iomemory.c) into libiomemory_bdev.so
//! when SPDK_DIR points at an SPDK v26.05 source tree (built with
//! `--with-shared`). Without SPDK_DIR only the Rust half is built, and the
//! build says so: the library then cannot be loaded by SPDK.

use std::env;
use std::fs;
use std::path::PathBuf;

/// The SPDK release whose bdev ABI the shim is written for.
const SUPPORTED: (u32, u32) = (26, 5);

/// SPDK libraries the shim calls into (recorded as DT_NEEDED so the
/// dynamic loader initialises them before the module's constructors).
const SPDK_LIBS: &[&str] = &[
    "spdk_bdev",
    "spdk_thread",
    "spdk_json",
    "spdk_jsonrpc",
    "spdk_rpc",
    "spdk_log",
    "spdk_env_dpdk",
    "spdk_util",
];

fn version_field(header: &str, name: &str) -> Option<u32> {
    header.lines().find_map(|l| {
        let mut it = l.split_whitespace();
        match (it.next(), it.next(), it.next()) {
            (Some("#define"), Some(n), Some(v)) if n == name => v.parse().ok(),
            _ => None,
        }
    })
}

fn main() {
    println!("cargo:rerun-if-env-changed=SPDK_DIR");
    println!("cargo:rerun-if-changed=csrc/bdev_iomemory.c");
    println!("cargo:rerun-if-changed=csrc/iomemory_rs.h");
    println!("cargo::rustc-check-cfg=cfg(spdk_shim)");

    let Some(spdk_dir) = env::var_os("SPDK_DIR").filter(|v| !v.is_empty()) else {
        println!(
            "cargo:warning=SPDK_DIR is not set: the SPDK shim was NOT built; libiomemory_bdev.so holds only the Rust half and SPDK cannot load it. Set SPDK_DIR to an SPDK v26.05 tree built with --with-shared (see bdev/README.md)."
        );
        return;
    };
    let spdk_dir = PathBuf::from(spdk_dir);
    let include = spdk_dir.join("include");
    let version_h = include.join("spdk").join("version.h");
    let header = fs::read_to_string(&version_h).unwrap_or_else(|e| {
        panic!(
            "SPDK_DIR={} has no readable include/spdk/version.h ({e}); point SPDK_DIR at an SPDK v26.05 source tree",
            spdk_dir.display()
        )
    });
    println!("cargo:rerun-if-changed={}", version_h.display());
    let major = version_field(&header, "SPDK_VERSION_MAJOR");
    let minor = version_field(&header, "SPDK_VERSION_MINOR");
    if (major, minor) != (Some(SUPPORTED.0), Some(SUPPORTED.1)) {
        panic!(
            "SPDK_DIR={} is SPDK {}.{:02}, but libiomemory_bdev supports SPDK v{}.{:02} only (the bdev module ABI changes with every release); check out tag v26.05 there",
            spdk_dir.display(),
            major.map_or("?".into(), |v| v.to_string()),
            minor.unwrap_or(0),
            SUPPORTED.0,
            SUPPORTED.1
        );
    }

    let mut build = cc::Build::new();
    build
        .file("csrc/bdev_iomemory.c")
        .include("csrc")
        .include(&include)
        .define("_GNU_SOURCE", None)
        .flag("-std=gnu11")
        .flag_if_supported("-Wno-unused-parameter")
        .warnings(true)
        .extra_warnings(true)
        .pic(true)
        .cargo_metadata(false);
    build.compile("iomemory_bdev_shim");

    // Link the shim's archive whole into the cdylib only (its constructors
    // are referenced by nothing, so a plain static link would drop them;
    // test binaries and rlib users never see SPDK symbols).
    let out = PathBuf::from(env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    let archive = out.join("libiomemory_bdev_shim.a");
    println!("cargo:rustc-link-arg-cdylib=-Wl,--whole-archive");
    println!("cargo:rustc-link-arg-cdylib={}", archive.display());
    println!("cargo:rustc-link-arg-cdylib=-Wl,--no-whole-archive");

    let lib_dir = spdk_dir.join("build").join("lib");
    if lib_dir.join("libspdk_bdev.so").exists() {
        println!("cargo:rustc-link-arg-cdylib=-L{}", lib_dir.display());
        println!(
            "cargo:rustc-link-arg-cdylib=-Wl,-rpath,{}",
            lib_dir.display()
        );
        println!("cargo:rustc-link-arg-cdylib=-Wl,--no-as-needed");
        for lib in SPDK_LIBS {
            println!("cargo:rustc-link-arg-cdylib=-l{lib}");
        }
        println!("cargo:rustc-link-arg-cdylib=-Wl,--as-needed");
    } else {
        println!(
            "cargo:warning={} has no libspdk_bdev.so: the shim's SPDK symbols stay unresolved until the target loads the module (build SPDK with --with-shared)",
            lib_dir.display()
        );
    }
    println!("cargo:rustc-cfg=spdk_shim");
}
