//! The NVMe disk end to end: a guest driving a queue pair in guest RAM, the
//! VMM's poller serving it with io_uring on an O_DIRECT file.

mod common;

use common::{acked, config, require_kvm, run, run_test_build, scratch};
use dbos_hypervisor::disk::DiskConfig;
use dbos_hypervisor::{GuestExit, Vm, VmConfig, VmError};
use std::time::Duration;

#[test]
fn guest_reads_and_writes_through_the_queue_pair_without_exits() {
    if !require_kvm() {
        return;
    }
    let dir = scratch();
    let path = dir.path().join("disk.img");
    let disk = DiskConfig {
        // Longer than the emulated guest's gap between I/Os (milliseconds on
        // hosts without VT-x), so the poller never parks in steady state.
        poll_spin: Duration::from_millis(200),
        ..DiskConfig::new(&path, Some(64 << 20))
    };
    let report = run(
        "scenarios",
        VmConfig {
            disk: Some(disk),
            ..config(&["nvme"])
        },
    );
    assert_eq!(
        report.console[..3],
        [
            "[vcpu0] disk: 16384 blocks of 4096 bytes",
            "[vcpu0] write, write FUA, flush, read back: same=true",
            "[vcpu0] read past the end: lba-out-of-range=true",
        ]
    );
    // No exit to the VMM in steady state. KVM's own count of all VM exits
    // over the same reads is stated beside it: exits it handles in the
    // kernel (interrupts, for one) are not the VMM's, and this host's KVM
    // emulates ring 0, so that count is not claimed to be 0. It is a
    // number wherever KVM offers its statistics, and never more than KVM
    // counted in the whole run.
    assert_eq!(report.console.len(), 4, "{:#?}", report.console);
    let steady = report.console[3]
        .strip_prefix("[vcpu0] steady state: 64 reads, 0 exits to the VMM, ")
        .and_then(|rest| rest.strip_suffix(" VM exits (KVM)"))
        .unwrap_or_else(|| panic!("{}", report.console[3]));
    match report.kvm.exits() {
        Some(total) => {
            let steady: u64 = steady.parse().unwrap();
            assert!(steady <= total, "{steady} > {total}");
        }
        None => assert_eq!(steady, "n/a"),
    }
    assert_eq!(report.exit.process_status(), 0, "{}", report.exit);
    let stats = report.disk.expect("poller counters");
    // 2 writes + flush + read + bad read + 8 warm-up + 64 reads.
    assert_eq!(stats.commands, 77);
    assert_eq!(stats.errors, 1);
    // The bytes are in the file, at blocks 3 and 4.
    let file = std::fs::read(&path).unwrap();
    assert_eq!(file.len(), 64 << 20);
    let expected: Vec<u8> = (0..8192).map(|i| (i % 251) as u8).collect();
    assert_eq!(&file[3 * 4096..5 * 4096], &expected[..]);
}

/// A guest CPU that waits for a completion sleeps in `hlt` until the
/// poller's completion interrupt (the poller parks between reads here: a
/// short spin), instead of spinning: every read is right, the CPU slept,
/// and the poller sent at most one interrupt per sleep. (The guest reads
/// on until it has slept: on a loaded host a read can complete before the
/// emulated guest looks, every time for 32 reads.)
#[test]
fn a_waiting_guest_cpu_sleeps_until_the_completion_interrupt() {
    if !require_kvm() {
        return;
    }
    let dir = scratch();
    let path = dir.path().join("disk.img");
    let disk = DiskConfig {
        poll_spin: Duration::from_micros(50),
        ..DiskConfig::new(&path, Some(1 << 20))
    };
    let report = run(
        "scenarios",
        VmConfig {
            disk: Some(disk),
            // A lost interrupt would leave the CPU halted: stopped here.
            time_limit: Some(Duration::from_secs(120)),
            ..config(&["nvme-sleep"])
        },
    );
    assert_eq!(report.exit.process_status(), 0, "{}", report.exit);
    // At least 32 reads, more until the CPU has slept (see the scenario).
    let reads: u64 = report.console[0]
        .strip_prefix("[vcpu0] sleeping reads: ")
        .and_then(|r| r.strip_suffix(" reads, 0 wrong, slept true"))
        .unwrap_or_else(|| panic!("{:#?}", report.console))
        .parse()
        .unwrap();
    assert!((32..=4096).contains(&reads), "{reads}");
    let sleeps: u64 = report.console[1]
        .strip_prefix("[vcpu0] sleeps ")
        .unwrap()
        .parse()
        .unwrap();
    // A sleep costs no exit to the VMM: every one of them is a doorbell.
    let exits = report.console[2]
        .strip_prefix("[vcpu0] exits: ")
        .unwrap_or_else(|| panic!("{}", report.console[2]));
    let (vmm, rest) = exits.split_once(" to the VMM for ").unwrap();
    let (doorbells, kvm) = rest.split_once(" doorbells, ").unwrap();
    assert_eq!(vmm, doorbells, "{exits}");
    match report.kvm.exits() {
        Some(total) => {
            let kvm: u64 = kvm
                .strip_suffix(" VM exits (KVM)")
                .unwrap()
                .parse()
                .unwrap();
            assert!(kvm <= total, "{kvm} > {total}");
            eprintln!("{sleeps} sleeps: {exits}");
        }
        None => assert_eq!(kvm, "n/a VM exits (KVM)"),
    }
    let stats = report.disk.expect("poller counters");
    assert!(
        stats.interrupts >= 1 && stats.interrupts <= sleeps,
        "{} interrupts for {sleeps} sleeps",
        stats.interrupts
    );
}

#[test]
fn a_guest_without_a_disk_is_told_so() {
    if !require_kvm() {
        return;
    }
    let report = run("scenarios", config(&["nvme"]));
    assert!(
        matches!(&report.exit, GuestExit::Panicked { message, .. } if message.contains("the VM has a disk")),
        "{}",
        report.exit
    );
}

#[test]
fn disk_files_are_never_resized_or_invented() {
    if !require_kvm() {
        return;
    }
    let dir = scratch();
    let hello = std::fs::read(dbos_hypervisor::guest_image("hello")).unwrap();
    let vm = |disk: DiskConfig| {
        Vm::new(
            &hello,
            VmConfig {
                disk: Some(disk),
                ..config(&[])
            },
        )
    };

    let missing = dir.path().join("missing.img");
    let err = vm(DiskConfig::new(&missing, None)).err().unwrap();
    assert!(matches!(err, VmError::Disk(_)), "{err}");
    assert!(
        err.to_string().contains("give --disk-size to create it"),
        "{err}"
    );
    assert!(!missing.exists());

    let path = dir.path().join("disk.img");
    drop(vm(DiskConfig::new(&path, Some(1 << 20))).unwrap());
    assert_eq!(std::fs::metadata(&path).unwrap().len(), 1 << 20);
    let err = vm(DiskConfig::new(&path, Some(2 << 20))).err().unwrap();
    assert!(err.to_string().contains("it is never resized"), "{err}");
    assert_eq!(std::fs::metadata(&path).unwrap().len(), 1 << 20);
    // Opening it again at its own size works.
    drop(vm(DiskConfig::new(&path, None)).unwrap());
}

/// The key-value store guest (bufferpool's WAL and engine on a hash pool in ring 0):
/// format, stop it mid-run at the time limit (a clean stop: every I/O in
/// flight completes; power cuts are in tests/crash.rs), recover.
#[test]
fn kvstore_guest_recovers_after_being_stopped_mid_run() {
    if !require_kvm() {
        return;
    }
    let dir = scratch();
    let path = dir.path().join("kv.img");
    let disk = |create| DiskConfig {
        poll_spin: Duration::from_millis(200),
        ..DiskConfig::new(&path, create)
    };
    let kv = |args: &[&str], create, limit| {
        run(
            "kvarray",
            VmConfig {
                disk: Some(disk(create)),
                time_limit: limit,
                ..config(args)
            },
        )
    };

    let mut first = kv(&["4"], Some(64 << 20), None);
    // Every disk I/O of the store is from declared DMA memory: none plain.
    let dma = first.console.pop().unwrap();
    let fixed = dma
        .strip_prefix("[vcpu0] dma: ")
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse::<u64>().ok())
        .unwrap_or_else(|| panic!("{dma}"));
    // The rings, the log's buffers and the pool's frames fit in one
    // 2 MiB arena.
    assert!(
        dma.ends_with(
            " I/Os with fixed buffers, 0 with plain buffers; 1 regions declared, 0 refused"
        ),
        "{dma}"
    );
    assert!(fixed > 0, "{dma}");
    let disk = first.disk.expect("poller counters");
    assert_eq!((disk.plain_ios, disk.fixed_ios), (0, fixed), "{dma}");
    assert_eq!(
        first.console,
        vec![
            "[vcpu0] INFO  dbos_bufferpool::recovery: engine: blank device, formatting",
            "[vcpu0] INFO  dbos_bufferpool::engine: engine: formatted 256 log blocks, 64 pages",
            "[vcpu0] fresh disk: formatted",
            "[vcpu0] found 0 committed transactions, 0 wrong",
            "[vcpu0] transactions found: []",
            "[vcpu0] acked 1",
            "[vcpu0] acked 2",
            "[vcpu0] acked 3",
            "[vcpu0] acked 4",
            "[vcpu0] committed 4 more: 4 in all",
        ]
    );
    assert_eq!(first.exit.process_status(), 0, "{}", first.exit);

    // Far more transactions than fit in the time limit: the VM is stopped
    // in the middle of committing. How long boot and recovery take before
    // the first commit depends on the machine's load (ring 0 is emulated
    // here), so the limit doubles until a run acknowledged some commits.
    let mut acknowledged = None;
    for secs in [4, 8, 16, 32] {
        let cut = kv(&["15000"], None, Some(Duration::from_secs(secs)));
        assert!(
            matches!(cut.exit, GuestExit::TimedOut { .. }),
            "{}",
            cut.exit
        );
        acknowledged = acked(&cut).into_iter().max();
        if acknowledged.is_some() {
            break;
        }
    }
    let acknowledged =
        acknowledged.expect("some commits were acknowledged before the stop, within 32 s");

    let after = kv(&["0"], None, None);
    assert_eq!(
        after.exit.process_status(),
        0,
        "{}\n{:#?}",
        after.exit,
        after.console
    );
    let found = after
        .console
        .iter()
        .find_map(|l| l.strip_prefix("[vcpu0] found "))
        .and_then(|l| l.strip_suffix(" committed transactions, 0 wrong"))
        .unwrap_or_else(|| panic!("no clean check in {:#?}", after.console))
        .parse::<u64>()
        .unwrap();
    // Every acknowledged commit survived (and at most the one in flight
    // when the VM stopped came on top).
    assert!(
        found == acknowledged || found == acknowledged + 1,
        "found {found}, acknowledged {acknowledged}"
    );
    assert!(
        after
            .console
            .iter()
            .any(|l| l.starts_with("[vcpu0] recovered: ")),
        "{:#?}",
        after.console
    );
}

/// Disk queue pairs are given back when dropped (`NvmeDestroyQueue`): 300
/// of them in turn, more than the host serves at once (256), each used for
/// a read, and their rings freed (the DMA pages in use are as before).
#[test]
fn disk_queue_pairs_are_given_back_when_dropped() {
    if !require_kvm() {
        return;
    }
    let dir = scratch();
    let disk = DiskConfig::new(dir.path().join("disk.img"), Some(1 << 20));
    let report = run_test_build(
        "scenarios",
        VmConfig {
            disk: Some(disk),
            ..config(&["nvme-give-back"])
        },
    );
    assert_eq!(report.exit.process_status(), 0, "{:#?}", report.console);
    assert!(
        report.console[0].starts_with("[vcpu0] 300 queue pairs made, used and given back"),
        "{:#?}",
        report.console
    );
    let pages = report.console[1]
        .strip_prefix("[vcpu0] dma pages in use before ")
        .unwrap_or_else(|| panic!("{:#?}", report.console));
    let (before, after) = pages.split_once(" after ").unwrap();
    assert_eq!(before, after, "ring pages leaked: {pages}");
}
