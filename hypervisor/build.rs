//! Builds the guest programs in `examples/` for `x86_64-unknown-none` as part
//! of the normal build, so that `cargo build` and `cargo test` always have
//! current guest images, twice:
//!
//! - the measured programs (`hello`, `kvstore`, `kvarray`, `tabby`, `snappy`,
//!   `iobench`), without
//!   any test machinery on their paths, into
//!   `<target dir>/guest/x86_64-unknown-none/release/` (`DBOS_GUEST_DIR`);
//! - every program with feature `conformance` (libdbos's conformance suite
//!   and deferred views, the pool's test knobs: the test programs
//!   `platform` and `scenarios` and the test subcommands of `tabby` and
//!   `snappy`), into `<target dir>/guest-test/x86_64-unknown-none/release/`
//!   (`DBOS_GUEST_TEST_DIR`).
//!
//! The nested cargo uses its own target directory, so it never waits on the
//! lock of the outer build.

use std::path::PathBuf;
use std::process::Command;

const GUEST_TARGET: &str = "x86_64-unknown-none";

fn main() {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap());
    let root = manifest.parent().unwrap().to_path_buf();
    for input in [
        "examples/src",
        "examples/Cargo.toml",
        "examples/Cargo.lock",
        "examples/build.rs",
        "libdbos/src",
        "libdbos/Cargo.toml",
        "abi/src",
        "abi/Cargo.toml",
        "libdbos/guest.ld",
        "nvme/src",
        "nvme/Cargo.toml",
        "bufferpool/src",
        "bufferpool/Cargo.toml",
        "kvstore/src",
        "kvstore/Cargo.toml",
        "snapshot/src",
        "snapshot/Cargo.toml",
        "libdbos-build/src",
        "libdbos-build/Cargo.toml",
        "libdbos/build.rs",
    ] {
        println!("cargo:rerun-if-changed={}", root.join(input).display());
    }
    println!("cargo:rerun-if-env-changed=CARGO_TARGET_DIR");

    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .map(|d| if d.is_absolute() { d } else { root.join(d) })
        .unwrap_or_else(|| root.join("target"));
    let guests = build(&root, &target.join("guest"), None);
    println!("cargo:rustc-env=DBOS_GUEST_DIR={}", guests.display());
    let tests = build(&root, &target.join("guest-test"), Some("conformance"));
    println!("cargo:rustc-env=DBOS_GUEST_TEST_DIR={}", tests.display());
}

/// Builds the guest workspace into `target_dir` with `features`; returns
/// the directory of the images.
fn build(root: &std::path::Path, target_dir: &std::path::Path, features: Option<&str>) -> PathBuf {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(root.join("examples"))
        .args([
            "build",
            "--release",
            "--target",
            GUEST_TARGET,
            "--target-dir",
        ])
        .arg(target_dir);
    if let Some(f) = features {
        cmd.args(["--features", f]);
    }
    // The outer build's settings (flags for the host target, wrappers such as
    // clippy-driver, its target dir) must not leak into the guest build.
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy().into_owned();
        let keep = key == "CARGO_HOME" || key == "CARGO_MAKEFLAGS" || key == "CARGO_NET_OFFLINE";
        if !keep
            && (key.starts_with("CARGO_")
                || key.starts_with("RUSTC")
                || key.starts_with("RUSTFLAGS")
                || key == "RUSTDOCFLAGS"
                || key == "TARGET"
                || key == "HOST"
                || key == "OUT_DIR")
        {
            cmd.env_remove(&key);
        }
    }
    let out = cmd
        .output()
        .expect("failed to run cargo to build the guest images");
    if !out.status.success() {
        panic!(
            "building the guest images (examples/, target {GUEST_TARGET}, features {features:?}) \
             failed; is the target installed? (rustup target add {GUEST_TARGET})\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    target_dir.join(GUEST_TARGET).join("release")
}
