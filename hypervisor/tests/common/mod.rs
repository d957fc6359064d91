//! Helpers shared by the hypervisor's integration tests.
#![allow(dead_code)]

use dbos_hypervisor::{guest_image, test_guest_image, RunReport, Vm, VmConfig};
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

/// The guest programs that exist only in the test build (they need feature
/// `conformance`; see `examples/Cargo.toml`).
pub const TEST_PROGRAMS: [&str; 2] = ["platform", "scenarios"];

/// The guest image `name`: the measured build, or for the test programs
/// the test build.
pub fn image_path(name: &str) -> std::path::PathBuf {
    if TEST_PROGRAMS.contains(&name) {
        test_guest_image(name)
    } else {
        guest_image(name)
    }
}

/// The path of guest image `name` (see [`image_path`]), as a command-line
/// argument.
pub fn image(name: &str) -> String {
    image_path(name).to_string_lossy().into_owned()
}

/// The `acked T` numbers of a kvarray run.
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

/// Boots guest image `name` (see [`image_path`]) with `config` and runs it
/// to the end. A failure is reported at the calling test's line.
#[track_caller]
pub fn run(name: &str, config: VmConfig) -> RunReport {
    run_image(name, &image_path(name), config)
}

/// Boots the test build of guest program `name` (feature `conformance`:
/// the conformance suite, deferred views, test knobs) with `config`.
#[track_caller]
pub fn run_test_build(name: &str, config: VmConfig) -> RunReport {
    run_image(name, &test_guest_image(name), config)
}

#[track_caller]
fn run_image(name: &str, path: &Path, config: VmConfig) -> RunReport {
    // `match`, not `unwrap_or_else`: a panic in a closure would name the
    // closure's line, not the caller's.
    let vm = match Vm::from_file(path, config) {
        Ok(vm) => vm,
        Err(e) => panic!("creating the VM for {name}: {e}"),
    };
    match vm.run() {
        Ok(report) => report,
        Err(e) => panic!("running {name}: {e}"),
    }
}

/// Runs the `scenarios` guest (a test program) with one scenario.
#[track_caller]
pub fn scenario(name: &str) -> RunReport {
    run_test_build("scenarios", config(&[name]))
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
