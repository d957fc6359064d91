//! The VMM under bad input: usage errors, images that are not files, memory
//! the host cannot provide, vCPUs in small memory, setup that fails, the
//! exit-status and `--stats` reports, and the README against `--help`.

mod common;

use common::{image, require_kvm};
use dbos_hypervisor::{guest_image, Vm, VmError};
use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Runs `dbos` with `args`; kills it after 60 s (an image read that blocks
/// must fail the test, not hang it).
#[track_caller]
fn dbos(args: &[&str]) -> (i32, String, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_dbos"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > Duration::from_secs(60) {
            child.kill().unwrap();
            child.wait().unwrap();
            panic!("dbos {args:?} did not finish in 60 s");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let mut stdout = String::new();
    let mut stderr = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut stdout)
        .unwrap();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    (
        status.code().expect("dbos exited by a signal"),
        stdout,
        stderr,
    )
}

#[test]
fn usage_errors_exit_2_and_name_the_valid_range() {
    let hello = image("hello");
    for vcpus in ["0", "65", "4294967296"] {
        let (code, _, stderr) = dbos(&["run", &hello, "--vcpus", vcpus]);
        assert_eq!(code, 2, "--vcpus {vcpus}: {stderr}");
        assert!(stderr.contains("1..=64"), "--vcpus {vcpus}: {stderr}");
    }
    let (code, _, stderr) = dbos(&["run", &hello, "--memory", "1K"]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("not a multiple of 4 KiB"), "{stderr}");
    let (code, _, stderr) = dbos(&["run", &hello, "--memory", "2M"]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("any guest needs"), "{stderr}");

    let dir = tempfile::tempdir().unwrap();
    let f1 = dir.path().join("f1");
    let f2 = dir.path().join("f2");
    let (code, _, stderr) = dbos(&[
        "run",
        &hello,
        "--file",
        &format!("a={}", f1.display()),
        "--file",
        &format!("a={}", f2.display()),
    ]);
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("--file name \"a\" is given more than once"),
        "{stderr}"
    );
    assert!(
        !f1.exists() && !f2.exists(),
        "a refused setup created files"
    );

    let long = "x".repeat(dbos_abi::MAX_ARGS_BYTES);
    let (code, _, stderr) = dbos(&["run", &hello, "--", &long]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("-byte limit"), "{stderr}");
}

#[test]
fn a_failed_setup_leaves_no_new_file() {
    if !require_kvm() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let f1 = dir.path().join("f1");
    let sub = dir.path().join("sub");
    std::fs::create_dir(&sub).unwrap();
    let (code, _, stderr) = dbos(&[
        "run",
        &image("hello"),
        "--memory",
        "32M",
        "--file",
        &format!("a={}", f1.display()),
        "--file",
        &format!("b={}", sub.display()),
    ]);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("cannot open file \"b\""), "{stderr}");
    assert_eq!(
        stderr.matches(sub.to_str().unwrap()).count(),
        1,
        "the path once: {stderr}"
    );
    assert!(
        !f1.exists(),
        "the failed setup left {} behind",
        f1.display()
    );
    // A disk the run would create, and a --file that cannot be opened: the
    // new disk file goes too. An existing disk file stays.
    let disk = dir.path().join("new.img");
    let args = |disk: &std::path::Path| {
        [
            "run".to_string(),
            image("hello"),
            "--memory".into(),
            "32M".into(),
            "--disk".into(),
            disk.display().to_string(),
            "--disk-size".into(),
            "1M".into(),
            "--file".into(),
            format!("b={}", sub.display()),
        ]
    };
    let new = args(&disk);
    let (code, _, stderr) = dbos(&new.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(code, 1, "{stderr}");
    assert!(
        !disk.exists(),
        "the failed setup left {} behind",
        disk.display()
    );
    std::fs::write(&disk, vec![7u8; 1 << 20]).unwrap();
    let (code, _, stderr) = dbos(&new.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(code, 1, "{stderr}");
    assert_eq!(std::fs::read(&disk).unwrap(), vec![7u8; 1 << 20]);
}

#[test]
fn images_that_are_not_regular_files_are_refused_unread() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("fifo");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: mkfifo with a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    for (path, kind) in [
        ("/dev/zero", "a character device"),
        (fifo.to_str().unwrap(), "a FIFO"),
        (dir.path().to_str().unwrap(), "a directory"),
    ] {
        let (code, _, stderr) = dbos(&["run", path]);
        assert_eq!(code, 1, "{path}: {stderr}");
        assert!(
            stderr.contains(&format!(
                "cannot use guest image {path}: it is {kind}, not a regular file"
            )),
            "{stderr}"
        );
    }
    // Larger than guest memory: refused by its size, before it is read.
    let big = dir.path().join("big");
    std::fs::File::create(&big)
        .unwrap()
        .set_len(65 << 20)
        .unwrap();
    let (code, _, stderr) = dbos(&["run", big.to_str().unwrap(), "--memory", "64M"]);
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains(&format!(
            "is {} bytes, larger than the {} bytes an image may have",
            65 << 20,
            64 << 20
        )),
        "{stderr}"
    );
    match Vm::from_file(
        &big,
        dbos_hypervisor::VmConfig {
            memory: 64 << 20,
            ..Default::default()
        },
    ) {
        Err(VmError::ImageTooLarge { size, limit, .. }) => {
            assert_eq!((size, limit), (65 << 20, 64 << 20))
        }
        Err(e) => panic!("unexpected error: {e}"),
        Ok(_) => panic!("accepted"),
    }
}

#[test]
fn memory_beyond_what_the_host_can_provide_is_refused() {
    let host = dbos_hypervisor::memory::HostMemory::read()
        .provides()
        .expect("/proc/meminfo has MemTotal");
    let gib = (host >> 30) + 2;
    let (code, _, stderr) = dbos(&["run", &image("hello"), "--memory", &format!("{gib}G")]);
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains(&format!(
            "guest memory of {} bytes is more than this host can provide: {host} bytes",
            gib << 30
        )),
        "{stderr}"
    );
}

#[test]
fn a_device_that_is_not_kvm_is_named_as_such() {
    let (code, _, stderr) = dbos(&["run", &image("hello"), "--kvm-device", "/dev/null"]);
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("/dev/null is not a KVM device: KVM_GET_API_VERSION failed"),
        "{stderr}"
    );
    assert!(!stderr.contains("-1"), "{stderr}");
}

#[test]
fn many_vcpus_boot_in_small_memory() {
    if !require_kvm() {
        return;
    }
    let (code, stdout, stderr) =
        dbos(&["run", &image("hello"), "--vcpus", "16", "--memory", "16M"]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(stdout.contains("16 vCPU(s), 16 MiB RAM"), "{stdout}");

    let (code, _, stderr) = dbos(&["run", &image("hello"), "--vcpus", "64", "--memory", "16M"]);
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("guest memory too small for 64 vCPU(s) (need "),
        "{stderr}"
    );
    // The least memory dbos accepts for 64 vCPUs is enough to boot them.
    let hello = std::fs::read(guest_image("hello")).unwrap();
    let mut config = common::config(&[]);
    config.vcpus = 64;
    config.memory = 16 << 20;
    let need = match Vm::new(&hello, config.clone()) {
        Err(VmError::MemoryTooSmall(e)) => e.required.next_multiple_of(4096),
        Err(e) => panic!("unexpected error: {e}"),
        Ok(_) => panic!("64 vCPUs accepted in 16 MiB"),
    };
    config.memory = need;
    let report = Vm::new(&hello, config).unwrap().run().unwrap();
    assert_eq!(report.exit.process_status(), 0, "{}", report.exit);
    assert!(
        report.console[0].contains("64 vCPU(s)"),
        "{:?}",
        report.console
    );
}

#[test]
fn a_guest_status_dbos_also_uses_is_attributed_to_the_guest() {
    if !require_kvm() {
        return;
    }
    for status in [1, 2, 101, 104] {
        let (code, _, stderr) = dbos(&[
            "run",
            &image("hello"),
            "--memory",
            "32M",
            "--",
            &status.to_string(),
        ]);
        assert_eq!(code, status, "{stderr}");
        assert_eq!(
            stderr
                .lines()
                .filter(|l| l.starts_with(&format!(
                    "dbos: exit status {status} was chosen by the guest"
                )))
                .count(),
            1,
            "{stderr}"
        );
    }
    let (code, _, stderr) = dbos(&["run", &image("hello"), "--memory", "32M", "--", "42"]);
    assert_eq!(code, 42);
    assert!(!stderr.contains("chosen by the guest"), "{stderr}");
}

/// The `--stats` line's total and the sum of its parts.
fn stats(stderr: &str) -> (u64, u64, String) {
    let line = stderr
        .lines()
        .find(|l| l.contains(" exits to the VMM in "))
        .unwrap_or_else(|| panic!("no stats line in {stderr}"));
    let total: u64 = line["dbos: ".len()..]
        .split(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let (_, parts) = line.split_once(" ms: ").unwrap();
    let sum = parts
        .split(", ")
        .map(|part| part.rsplit_once(' ').unwrap().1.parse::<u64>().unwrap())
        .sum();
    (total, sum, line.to_string())
}

#[test]
fn stats_break_down_every_exit() {
    if !require_kvm() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let file = format!("data={}", dir.path().join("data").display());
    for (args, expect) in [
        (vec!["hello"], vec!["Console 2", "Exit 1"]),
        (
            vec!["scenarios", "--file", &file, "--", "files"],
            vec!["FileOpen "],
        ),
        (
            vec!["scenarios", "--", "triple-fault"],
            vec!["triple fault 1"],
        ),
        (
            vec!["scenarios", "--", "unknown-port"],
            vec!["unknown-port out 1"],
        ),
    ] {
        let mut cmd = vec!["run", "--stats", "--memory", "32M"];
        let guest = image(args[0]);
        cmd.push(&guest);
        cmd.extend(&args[1..]);
        let (_, _, stderr) = dbos(&cmd);
        let (total, sum, line) = stats(&stderr);
        assert_eq!(total, sum, "{line}");
        for part in expect {
            assert!(line.contains(part), "{part} missing: {line}");
        }
    }
}

#[test]
fn an_unhandled_exception_report_has_the_register_dump() {
    if !require_kvm() {
        return;
    }
    let (code, stdout, stderr) = dbos(&["run", &image("scenarios"), "--", "unhandled-fault"]);
    assert_eq!(code, 102);
    let rip = common::hex_field(&stdout, "load-fn");
    let cr2 = common::hex_field(&stdout, "addr");
    assert!(
        stderr.contains(&format!("  RIP {rip:#018x}  RSP 0x")),
        "{stderr}"
    );
    assert!(stderr.contains("  rax 0x"), "{stderr}");
    assert!(stderr.contains(" r15 0x"), "{stderr}");
    assert!(
        stderr.contains(&format!("CR2 {cr2:#x}  CR3 0x")),
        "{stderr}"
    );
    // The faulting load's address register holds the address it loaded from.
    let gprs: Vec<u64> = stderr
        .split_whitespace()
        .collect::<Vec<_>>()
        .windows(2)
        .filter(|w| dbos_abi::FAULT_GPR_NAMES.contains(&w[0]))
        .map(|w| u64::from_str_radix(w[1].trim_start_matches("0x"), 16).unwrap())
        .collect();
    assert_eq!(gprs.len(), 15, "{stderr}");
    assert!(gprs.contains(&cr2), "no register holds {cr2:#x}: {stderr}");
}

/// The long options `dbos run --help` lists.
fn help_options() -> Vec<String> {
    let (code, help, _) = dbos(&["run", "--help"]);
    assert_eq!(code, 0);
    let mut options: Vec<String> = help
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '-'))
        .filter(|w| w.starts_with("--") && w.len() > 2)
        .filter(|w| *w != "--help" && *w != "--version")
        .map(str::to_string)
        .collect();
    options.sort();
    options.dedup();
    options
}

#[test]
fn readme_and_help_list_every_option_and_status() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).unwrap();
    let usage = readme
        .lines()
        .find(|l| l.starts_with("dbos run <guest.elf>"))
        .expect("the README's usage line");
    let options = help_options();
    for option in [
        "--vcpus",
        "--memory",
        "--file",
        "--disk",
        "--time-limit",
        "--stats",
    ] {
        assert!(
            options.contains(&option.to_string()),
            "{option} not in --help"
        );
    }
    for option in &options {
        assert!(
            usage.contains(option.as_str()),
            "{option} not in the README usage line: {usage}"
        );
        assert!(
            readme
                .lines()
                .any(|l| l.starts_with("- `--") && l.contains(option.as_str())),
            "{option} has no README bullet"
        );
    }
    let (_, help, _) = dbos(&["run", "--help"]);
    let status_para = &readme[readme.find("Exit status:").expect("README exit statuses")..];
    let status_para = &status_para[..status_para.find("\n\n").unwrap()];
    for (code, _) in dbos_hypervisor::report::DBOS_STATUSES {
        assert!(
            status_para.contains(&code.to_string()),
            "{code} missing from the README: {status_para}"
        );
        assert!(
            help.contains(&format!("{code} ")),
            "{code} missing from --help"
        );
    }
}

/// Everything the README and the code refer to lives in the repository.
#[test]
fn no_reference_to_files_outside_the_repository() {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    let out = Command::new("git")
        .args([
            "grep",
            "-n",
            "-e",
            "shared/",
            "-e",
            "DESIGN.md",
            "-e",
            "ENVIRONMENT.md",
            "--",
            ".",
            ":!hypervisor/tests/hardening.rs",
        ])
        .current_dir(root)
        .output()
        .unwrap();
    let hits = String::from_utf8_lossy(&out.stdout);
    assert!(
        hits.trim().is_empty(),
        "references outside the repository:\n{hits}"
    );
    // `git grep` exits 1 when nothing matched; 0 is a match (above), and
    // anything else an error (no repository, no git, a bad pattern), which
    // would otherwise pass with empty output.
    assert_eq!(
        out.status.code(),
        Some(1),
        "git grep failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let readme = std::fs::read_to_string(format!("{root}/README.md")).unwrap();
    assert!(
        readme.contains("(docs/architecture.md)"),
        "the README links docs/architecture.md"
    );
}
