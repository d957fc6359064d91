//! The `dbos` command line, run as a user would.

mod common;

use common::{image, require_kvm};
use std::process::Command;

fn dbos(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_dbos"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().expect("dbos exited by a signal"),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn run_hello_returns_the_guest_status() {
    if !require_kvm() {
        return;
    }
    let (code, stdout, _) = dbos(&["run", &image("hello"), "--memory", "32M", "--", "42"]);
    assert_eq!(code, 42);
    assert_eq!(
        stdout,
        "[vcpu0] hello from dbos guest: 1 vCPU(s), 32 MiB RAM\n[vcpu0] INFO  hello: exiting with status 42\n"
    );
}

#[test]
fn stats_report_the_exit_count() {
    if !require_kvm() {
        return;
    }
    let (code, _, stderr) = dbos(&["run", &image("hello"), "--stats"]);
    assert_eq!(code, 0);
    assert!(stderr.contains("dbos: 3 VM exits in "), "{stderr}");
}

#[test]
fn guest_panic_is_non_zero_with_the_message() {
    if !require_kvm() {
        return;
    }
    let (code, _, stderr) = dbos(&["run", &image("scenarios"), "--", "panic"]);
    assert_eq!(code, 101);
    assert!(
        stderr.contains("guest panicked on vCPU 0 at src/bin/scenarios.rs:"),
        "{stderr}"
    );
    assert!(stderr.contains("scenario panic with value 42"), "{stderr}");
}

#[test]
fn unhandled_fault_report_names_vector_rip_and_cr2() {
    if !require_kvm() {
        return;
    }
    let (code, stdout, stderr) = dbos(&["run", &image("scenarios"), "--", "unhandled-fault"]);
    assert_eq!(code, 102);
    let rip = common::hex_field(&stdout, "load-fn");
    let cr2 = common::hex_field(&stdout, "addr");
    assert!(
        stderr.contains("unhandled exception #PF page fault (vector 14)"),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!("RIP {rip:#x}, CR2 {cr2:#x}")),
        "{stderr}"
    );
}

#[test]
fn setup_errors_are_clear() {
    let (code, _, stderr) = dbos(&["run", "/nonexistent/guest.elf"]);
    assert_eq!(code, 1);
    assert!(
        stderr.contains("cannot read guest image /nonexistent/guest.elf"),
        "{stderr}"
    );

    let bogus = std::env::temp_dir().join(format!("dbos-not-elf-{}", std::process::id()));
    std::fs::write(&bogus, b"not an elf").unwrap();
    let (code, _, stderr) = dbos(&["run", bogus.to_str().unwrap()]);
    std::fs::remove_file(&bogus).unwrap();
    assert_eq!(code, 1);
    assert!(stderr.contains("not an ELF file"), "{stderr}");

    let (code, _, stderr) = dbos(&["run", &image("hello"), "--kvm-device", "/nonexistent/kvm"]);
    assert_eq!(code, 1);
    assert!(
        stderr.contains("/nonexistent/kvm does not exist"),
        "{stderr}"
    );

    let (code, _, stderr) = dbos(&["run", &image("hello"), "--memory", "8M", "--vcpus", "64"]);
    assert_eq!(code, 1);
    assert!(stderr.contains("guest memory too small"), "{stderr}");

    let (code, _, stderr) = dbos(&["run", &image("hello"), "--memory", "lots"]);
    assert_eq!(code, 2, "usage error");
    assert!(stderr.contains("is not a size"), "{stderr}");
}

#[test]
fn help_explains_the_options() {
    let (code, stdout, _) = dbos(&["run", "--help"]);
    assert_eq!(code, 0);
    for option in [
        "--vcpus",
        "--memory",
        "--kvm-device",
        "--stats",
        "GUEST ARGS",
    ] {
        assert!(stdout.contains(option), "{option} missing from:\n{stdout}");
    }
}
