//! Helpers shared by the hypervisor's integration tests.
#![allow(dead_code)]

use dbos_hypervisor::{guest_image, RunReport, Vm, VmConfig};
use std::path::Path;

/// Whether KVM tests can run. With `CI=true` a missing `/dev/kvm` fails the
/// test instead of skipping it, so that a green CI run always booted guests.
pub fn require_kvm() -> bool {
    if Path::new("/dev/kvm").exists() {
        return true;
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("/dev/kvm is missing and CI=true: the KVM tests must run in CI");
    }
    eprintln!("skipping: /dev/kvm is missing (set CI=true to make this a failure)");
    false
}

/// A scratch directory on a file system with O_DIRECT (not tmpfs).
pub fn scratch() -> tempfile::TempDir {
    tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap()
}

/// The path of guest image `name`, as a command-line argument.
pub fn image(name: &str) -> String {
    guest_image(name).to_string_lossy().into_owned()
}

/// The `acked T` numbers of a kvstore run.
pub fn acked(report: &RunReport) -> Vec<u64> {
    report
        .console
        .iter()
        .filter_map(|l| l.strip_prefix("[vcpu0] acked "))
        .map(|n| n.parse().unwrap())
        .collect()
}

/// A configuration that captures the console instead of printing it.
pub fn config(args: &[&str]) -> VmConfig {
    VmConfig {
        args: args.iter().map(|s| s.to_string()).collect(),
        echo_console: false,
        capture_console: true,
        memory: 64 << 20,
        ..VmConfig::default()
    }
}

/// Boots guest `name` with `config` and runs it to the end. A failure is
/// reported at the calling test's line.
#[track_caller]
pub fn run(name: &str, config: VmConfig) -> RunReport {
    // `match`, not `unwrap_or_else`: a panic in a closure would name the
    // closure's line, not the caller's.
    let vm = match Vm::from_file(&guest_image(name), config) {
        Ok(vm) => vm,
        Err(e) => panic!("creating the VM for {name}: {e}"),
    };
    match vm.run() {
        Ok(report) => report,
        Err(e) => panic!("running {name}: {e}"),
    }
}

/// Runs the `scenarios` guest with one scenario.
#[track_caller]
pub fn scenario(name: &str) -> RunReport {
    run("scenarios", config(&[name]))
}

/// Parses `key=0x...` out of a console line.
#[track_caller]
pub fn hex_field(line: &str, key: &str) -> u64 {
    let Some(at) = line.find(&format!("{key}=0x")) else {
        panic!("no {key}= in {line:?}");
    };
    let start = at + key.len() + 3;
    let digits: String = line[start..]
        .chars()
        .take_while(|c| c.is_ascii_hexdigit())
        .collect();
    u64::from_str_radix(&digits, 16).unwrap()
}
