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
    assert!(stderr.contains("dbos: 3 exits to the VMM in "), "{stderr}");
}

/// `dbos run --memory MEMORY --disk ... --stats hello` plus `extra`: the
/// process's (peak resident, locked, pinned) memory in KiB, from the
/// `--stats` line.
fn startup_memory(memory: &str, extra: &[&str]) -> (u64, u64, u64) {
    let dir = common::scratch();
    let disk = dir.path().join("start.img");
    let mut args = vec![
        "run",
        "--memory",
        memory,
        "--disk",
        disk.to_str().unwrap(),
        "--disk-size",
        "4M",
        "--stats",
    ];
    args.extend(extra);
    let guest = image("hello");
    args.push(&guest);
    let (code, _, stderr) = dbos(&args);
    assert_eq!(code, 0, "{stderr}");
    let line = stderr
        .lines()
        .find(|l| l.starts_with("dbos: VM set up in "))
        .unwrap_or_else(|| panic!("no memory line in {stderr}"));
    let kib = |what: &str| -> u64 {
        let at = line
            .find(&format!(" kB ({what})"))
            .unwrap_or_else(|| panic!("no {what} in {line}"));
        line[..at].rsplit(' ').next().unwrap().parse().unwrap()
    };
    (kib("VmHWM"), kib("VmLck"), kib("VmPin"))
}

/// A 4 GiB guest with a disk starts without faulting in, locking or
/// pinning its RAM: guest RAM is not registered with io_uring (each I/O
/// pins its pages only while it runs), so the process stays small. The
/// memory is read when the guest has stopped, before the disk's ring is
/// torn down (registered buffers still count as pinned then: the
/// `--disk-fixed-buffers` experiment, which registers them, shows it on a
/// smaller guest).
#[test]
fn a_4_gib_guest_with_a_disk_locks_and_pins_nothing() {
    if !require_kvm() {
        return;
    }
    let (peak, locked, pinned) = startup_memory("4G", &[]);
    assert_eq!((locked, pinned), (0, 0), "peak {peak} KiB");
    // Far below the guest's 4 GiB (registering it faulted all of it in).
    assert!(peak < 64 << 10, "peak resident {peak} KiB");
    let (peak, _, pinned) = startup_memory("256M", &["--disk-fixed-buffers"]);
    assert!(pinned >= 256 << 10, "registered: {pinned} KiB pinned");
    assert!(peak >= 256 << 10, "registered: peak resident {peak} KiB");
}

/// The number after `prefix` on the first line of `text` where one follows
/// it.
fn number_after(text: &str, prefix: &str) -> Option<u64> {
    text.lines()
        .filter_map(|l| l.strip_prefix(prefix))
        .find_map(|rest| rest.split([' ', ';']).next()?.parse().ok())
}

/// `--stats` of the key-value guest states exits at both levels: the exits
/// that reached the VMM, and every VM exit as KVM counted it (its per-vCPU
/// statistics, those it handled in the kernel included), which can never
/// be fewer. Where this KVM offers no statistics the line says so instead
/// of a number; which of the two this host is, the test asks KVM itself.
#[test]
fn stats_report_exits_to_the_vmm_and_all_exits_counted_by_kvm() {
    if !require_kvm() {
        return;
    }
    let kvm = kvm_ioctls::Kvm::new().expect("/dev/kvm opens");
    let available = dbos_hypervisor::kvmstats::available(&kvm);
    let dir = common::scratch();
    let disk = dir.path().join("kv.img");
    let (code, stdout, stderr) = dbos(&[
        "run",
        "--vcpus",
        "2",
        "--stats",
        "--disk",
        disk.to_str().unwrap(),
        "--disk-size",
        "64M",
        "--disk-spin-us",
        "200000",
        &image("kvarray"),
        "--",
        "4",
    ]);
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    assert!(stdout.contains("committed 4 more: 4 in all"), "{stdout}");
    let vmm = number_after(&stderr, "dbos: ").expect("exits to the VMM");
    assert!(
        stderr.contains(&format!("dbos: {vmm} exits to the VMM in ")),
        "{stderr}"
    );
    // At least the console lines, the queue pairs' set-up and the exit.
    assert!(vmm > 10, "{stderr}");
    let kvm_line = stderr
        .lines()
        .find_map(|l| l.strip_prefix("dbos: all VM exits (KVM): "))
        .unwrap_or_else(|| panic!("no KVM line in {stderr}"));
    if available {
        let all = number_after(&stderr, "dbos: all VM exits (KVM): ")
            .unwrap_or_else(|| panic!("KVM offers statistics, but: {kvm_line}"));
        assert!(
            all >= vmm,
            "KVM counted {all} exits, fewer than the {vmm} that reached the VMM"
        );
    } else {
        assert!(
            kvm_line.starts_with("not available here ("),
            "no statistics on this KVM, yet: {kvm_line}"
        );
    }
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

/// An option, the arguments it needs, the values refused and the values
/// accepted.
type OptionCase<'a> = (&'a str, Vec<&'a str>, Vec<&'a str>, Vec<&'a str>);

/// Every `dbos run` option under hostile values: each out-of-range or
/// malformed value (zero, negative, too large, garbage, wrong units,
/// NaN, infinity) is a usage error, exit status 2, with a message naming
/// the option (in `--opt=value` form and, for numbers, `--opt value` too),
/// and nothing is created on the disk. Each value in range is accepted:
/// not a usage error (with KVM, the hello guest boots and exits 0; the
/// few values that ask for more than a VM can have fail at setup, status
/// 1, or stop the guest, status 104).
#[test]
fn every_run_option_refuses_hostile_values_and_accepts_its_range() {
    let dir = common::scratch();
    let disk = dir.path().join("hostile.img");
    let disk_arg = disk.to_str().unwrap().to_string();
    let file_arg = format!("f={}", dir.path().join("granted").display());
    let long_name = format!("{}=x", "n".repeat(257));
    let with_disk: Vec<&str> = vec!["--disk", &disk_arg, "--disk-size", "1M"];
    let with_cut: Vec<&str> = vec![
        "--disk",
        &disk_arg,
        "--disk-size",
        "1M",
        "--power-cut-at-write",
        "1000000",
    ];
    let with_io_error: Vec<&str> = vec![
        "--disk",
        &disk_arg,
        "--disk-size",
        "1M",
        "--io-error-at",
        "1000000",
    ];
    let durations = [
        "-1",
        "-0.5",
        "-0",
        "-5ms",
        "inf",
        "-inf",
        "infinity",
        "NaN",
        "nan",
        "1e10",
        "1e300",
        "1000000001",
        "5m",
        "5h",
        "5 min",
        "1,5",
        "soon",
        "",
        "0x10",
    ];
    let u64_refused = [
        "0",
        "-1",
        "18446744073709551616",
        "99999999999999999999999",
        "1.5",
        "1e3",
        "ten",
        "",
        "0x10",
        "5K",
    ];
    let cases: Vec<OptionCase> = vec![
        (
            "--vcpus",
            vec![],
            vec![
                "0",
                "-1",
                "65",
                "4294967296",
                "18446744073709551616",
                "1.5",
                "two",
                "",
                "0x2",
            ],
            vec!["1", "64"],
        ),
        (
            "--memory",
            vec![],
            vec![
                "0",
                "-1",
                "-4096",
                "1",
                "1K",
                "4095",
                "4604K",
                "1025G",
                "1048577M",
                "99999999999G",
                "64MB",
                "64MiB",
                "64 M",
                "1T",
                "lots",
                "",
                "NaN",
                "inf",
                "1.5G",
            ],
            vec!["4608K", "64M", "4718592"],
        ),
        (
            "--disk-size",
            vec!["--disk", &disk_arg],
            vec![
                "0",
                "1",
                "4095",
                "4097",
                "5000",
                "-4096",
                "-1",
                "99999999999G",
                "8589934592G",
                "8M8",
                "1T",
                "lots",
                "",
                "NaN",
                "inf",
                "1.5M",
            ],
            vec!["4096", "4K", "1M"],
        ),
        (
            "--disk-spin-us",
            with_disk.clone(),
            vec![
                "-1",
                "60000001",
                "18446744073709551616",
                "1.5",
                "200us",
                "lots",
                "",
                "inf",
                "NaN",
            ],
            vec!["0", "200", "60000000"],
        ),
        (
            "--time-limit",
            vec![],
            durations.to_vec(),
            vec!["10", "1.5", "2s", "3000ms", "1e9", "0"],
        ),
        (
            "--power-cut-after",
            with_disk.clone(),
            durations.to_vec(),
            vec!["100", "100s", "100000ms", "1e9"],
        ),
        (
            "--power-cut-at-write",
            with_disk.clone(),
            u64_refused.to_vec(),
            vec!["1", "18446744073709551615"],
        ),
        (
            "--seed",
            with_cut.clone(),
            vec!["-1", "18446744073709551616", "1.5", "seven", "", "0x10"],
            vec!["0", "18446744073709551615"],
        ),
        (
            "--file",
            vec![],
            vec!["noequals", "=path", "name=", "", &long_name],
            vec![&file_arg],
        ),
        (
            "--io-error-at",
            with_disk.clone(),
            u64_refused.to_vec(),
            vec!["1", "18446744073709551615"],
        ),
        (
            "--io-error-kind",
            with_io_error.clone(),
            vec!["trim", "WRITE", "Read", "writes", "fua", "", "1"],
            vec!["read", "write", "flush"],
        ),
    ];
    let hello = image("hello");
    let kvm = std::path::Path::new("/dev/kvm").exists();
    for (option, extra, refused, accepted) in &cases {
        for value in refused {
            let mut forms = vec![vec![format!("{option}={value}")]];
            // The separate form, where a value could not be taken for
            // another option: numbers (negative ones too) and words.
            if !value.is_empty() {
                forms.push(vec![option.to_string(), value.to_string()]);
            }
            for form in forms {
                let mut args = vec!["run".to_string()];
                args.extend(extra.iter().map(|s| s.to_string()));
                args.extend(form.iter().cloned());
                args.push(hello.clone());
                let args: Vec<&str> = args.iter().map(String::as_str).collect();
                let (code, stdout, stderr) = dbos(&args);
                assert_eq!(code, 2, "{args:?} is a usage error: {stderr}");
                assert!(stdout.is_empty(), "{args:?}: {stdout}");
                assert!(
                    stderr.contains(&format!("'{option} <")),
                    "{args:?}: the message names {option}: {stderr}"
                );
                assert!(!disk.exists(), "{args:?} created the disk");
            }
        }
        for value in accepted {
            let mut args = vec!["run".to_string()];
            args.extend(extra.iter().map(|s| s.to_string()));
            args.push(format!("{option}={value}"));
            args.push(hello.clone());
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let (code, _, stderr) = dbos(&args);
            assert_ne!(code, 2, "{args:?} is in range: {stderr}");
            assert!(!stderr.contains("invalid value"), "{args:?}: {stderr}");
            if kvm {
                // 0 s stops the guest at once (104); everything else boots
                // hello to its exit.
                let want = if *option == "--time-limit" && *value == "0" {
                    104
                } else {
                    0
                };
                assert_eq!(code, want, "{args:?}: {stderr}");
            }
            let _ = std::fs::remove_file(&disk);
        }
    }
    // Options that need another one: usage errors naming what is missing.
    for (args, missing) in [
        (vec!["--disk-size", "1M"], "--disk <PATH>"),
        (vec!["--disk-spin-us", "5"], "--disk <PATH>"),
        (vec!["--power-cut-after", "1s"], "--disk <PATH>"),
        (vec!["--power-cut-at-write", "1"], "--disk <PATH>"),
        (vec!["--io-error-at", "1"], "--disk <PATH>"),
        (
            vec!["--disk", &disk_arg, "--disk-size", "1M", "--seed", "1"],
            "--power-cut",
        ),
        (
            vec!["--disk", &disk_arg, "--io-error-kind", "read"],
            "--io-error-at <N>",
        ),
    ] {
        let mut all = vec!["run"];
        all.extend(&args);
        all.push(&hello);
        let (code, _, stderr) = dbos(&all);
        assert_eq!(code, 2, "{all:?}: {stderr}");
        assert!(stderr.contains(missing), "{all:?}: {stderr}");
        assert!(!disk.exists(), "{all:?} created the disk");
    }
}

/// The least `--memory` the README and `--help` give boots the hello guest;
/// one page less is a usage error naming the minimum.
#[test]
fn the_documented_minimum_memory_boots_hello() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).unwrap();
    let bullet = readme
        .split("\n- ")
        .find(|b| b.starts_with("`--memory SIZE`"))
        .expect("the README's --memory bullet")
        .replace('\n', " ");
    let documented = |text: &str| -> u64 {
        let rest = &text[text.find("at least ").expect("'at least' in the text") + 9..];
        let figure: String = rest.chars().take_while(char::is_ascii_digit).collect();
        assert!(rest[figure.len()..].starts_with('K'), "{rest}");
        figure.parse::<u64>().unwrap() << 10
    };
    let min = documented(&bullet);
    let (_, help, _) = dbos(&["run", "--help"]);
    let help = help.split_whitespace().collect::<Vec<_>>().join(" ");
    let memory_help = &help[help.find("--memory <SIZE>").unwrap()..];
    assert_eq!(documented(memory_help), min, "--help and the README agree");

    let (code, _, stderr) = dbos(&[
        "run",
        &image("hello"),
        "--memory",
        &(min - 4096).to_string(),
    ]);
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains(&format!("less than the {min} bytes")),
        "{stderr}"
    );
    if !require_kvm() {
        return;
    }
    let (code, stdout, stderr) = dbos(&[
        "run",
        &image("hello"),
        "--memory",
        &min.to_string(),
        "--",
        "9",
    ]);
    assert_eq!(code, 9, "hello in {min} bytes: {stdout}{stderr}");
    assert!(
        stdout.contains("hello from dbos guest: 1 vCPU(s)"),
        "{stdout}"
    );
}

#[test]
fn listen_prints_the_bound_ports_and_stats_count_the_network() {
    if !require_kvm() {
        return;
    }
    let (code, _, stderr) = dbos(&[
        "run",
        &image("hello"),
        "--listen",
        "127.0.0.1:0",
        "--listen",
        "127.0.0.1:0",
        "--net-poll-spin",
        "1ms",
        "--max-connections",
        "4",
        "--stats",
    ]);
    assert_eq!(code, 0, "{stderr}");
    let ports: Vec<(String, u16)> = stderr
        .lines()
        .filter_map(|l| {
            let rest = l.strip_prefix("dbos: listening on ")?;
            let (addr, listener) = rest.split_once(" (listener ")?;
            let addr: std::net::SocketAddr = addr.parse().ok()?;
            Some((listener.trim_end_matches(')').to_string(), addr.port()))
        })
        .collect();
    assert_eq!(ports.len(), 2, "{stderr}");
    assert_eq!((ports[0].0.as_str(), ports[1].0.as_str()), ("0", "1"));
    assert!(ports.iter().all(|&(_, p)| p != 0) && ports[0].1 != ports[1].1);
    // hello uses no network: nothing counted, and stopping is no wake-up.
    assert!(
        stderr.contains(
            "dbos: net: 0 commands, 0 completions (0 invalid); 0 clients accepted, 0 refused; \
             0 bytes received, 0 sent; poller woken 0 times"
        ),
        "{stderr}"
    );
}

#[test]
fn listen_refuses_other_than_loopback_without_listen_any() {
    let (code, _, stderr) = dbos(&["run", &image("hello"), "--listen", "0.0.0.0:6379"]);
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("--listen 0.0.0.0:6379: not a loopback address; give --listen-any"),
        "{stderr}"
    );
    let many: Vec<String> = (0..9).map(|_| "--listen=127.0.0.1:0".to_string()).collect();
    let mut args = vec!["run".to_string(), image("hello")];
    args.extend(many);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (code, _, stderr) = dbos(&args);
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("9 addresses to listen on; at most 8"),
        "{stderr}"
    );
    let (code, _, stderr) = dbos(&["run", &image("hello"), "--net-poll-spin", "1ms"]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("--listen"), "{stderr}");
}
