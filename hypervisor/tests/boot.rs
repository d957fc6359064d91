//! Boots real guest images under KVM and checks what they do and what the
//! host observes.

mod common;

use common::{config, hex_field, require_kvm, run, scenario};
use dbos_abi::{Hypercall, ABI_VERSION};
use dbos_hypervisor::hypercall::HypercallError;
use dbos_hypervisor::report::{STATUS_CRASH, STATUS_PANIC};
use dbos_hypervisor::{GuestExit, VmConfig};

#[test]
fn hello_prints_and_exits_with_chosen_status() {
    if !require_kvm() {
        return;
    }
    let report = run("hello", config(&["7"]));
    assert_eq!(
        report.console,
        vec![
            "[vcpu0] hello from dbos guest: 1 vCPU(s), 64 MiB RAM",
            "[vcpu0] INFO  hello: exiting with status 7",
        ]
    );
    assert!(
        matches!(report.exit, GuestExit::Exited { vcpu: 0, status: 7 }),
        "{}",
        report.exit
    );
    assert_eq!(report.exit.process_status(), 7);
    // Two console lines and the exit: nothing else leaves the guest.
    assert_eq!(report.vmm_exits.total, 3);
    assert_eq!(report.vmm_exits.hypercall(Hypercall::Console), 2);
    assert_eq!(report.vmm_exits.hypercall(Hypercall::Exit), 1);
}

#[test]
fn guest_arguments_arrive_in_order() {
    if !require_kvm() {
        return;
    }
    let report = run("scenarios", config(&["args", "one", "two words", "ünï"]));
    assert_eq!(report.console, vec!["[vcpu0] args: one|two words|ünï"]);
    assert_eq!(report.exit.process_status(), 0);
}

#[test]
fn page_fault_hook_maps_the_page_and_the_access_is_retried() {
    if !require_kvm() {
        return;
    }
    let report = scenario("page-fault-hook");
    assert_eq!(
        report.console,
        vec![
            // CR2 is the exact faulting address; error code 0x2 = write to a
            // non-present page from ring 0; RIP is the store instruction.
            "[vcpu0] fault cr2=0x100000005238 error=0x2 rip-is-store=true faults=1 \
             value=0xdeadbeefcafef00d phys-mapped=true",
            "[vcpu0] faults after second access=1",
        ]
    );
    assert_eq!(report.exit.process_status(), 0, "{}", report.exit);
}

#[test]
fn unhooked_fault_stops_the_guest_with_vector_rip_and_cr2() {
    if !require_kvm() {
        return;
    }
    let report = scenario("unhandled-fault");
    let line = &report.console[0];
    let (load_fn, addr) = (hex_field(line, "load-fn"), hex_field(line, "addr"));
    match &report.exit {
        GuestExit::UnhandledException {
            vcpu: 0,
            vector: 14,
            error_code: 0,
            rip,
            cr2,
            reason,
            ..
        } => {
            assert_eq!(*rip, load_fn);
            assert_eq!(*cr2, addr);
            assert_eq!(reason, "no page-fault hook registered");
        }
        other => panic!("unexpected exit: {other}"),
    }
    let text = report.exit.to_string();
    assert!(text.contains("vector 14"), "{text}");
    assert!(text.contains(&format!("RIP {load_fn:#x}")), "{text}");
    assert!(text.contains(&format!("CR2 {addr:#x}")), "{text}");
    assert_eq!(report.exit.process_status(), STATUS_CRASH);
    assert_eq!(report.console.len(), 1, "nothing runs after the fault");
}

#[test]
fn vector_hook_sees_and_restores_the_full_register_state() {
    if !require_kvm() {
        return;
    }
    let report = scenario("vector-hook");
    assert_eq!(
        report.console,
        vec!["[vcpu0] rax=0x12345678 preserved=true"]
    );
    // The second ud2 comes after the hook was cleared: vector 6 is reported.
    assert!(
        matches!(&report.exit, GuestExit::UnhandledException { vector: 6, reason, .. } if reason == "no hook registered"),
        "{}",
        report.exit
    );
}

#[test]
fn a_hook_that_declines_stops_the_guest() {
    if !require_kvm() {
        return;
    }
    let report = scenario("hook-declines");
    let addr = hex_field(&report.console[0], "addr");
    match &report.exit {
        GuestExit::UnhandledException {
            vector: 14,
            cr2,
            reason,
            ..
        } => {
            assert_eq!(*cr2, addr);
            assert_eq!(reason, "the page-fault hook did not resolve it");
        }
        other => panic!("unexpected exit: {other}"),
    }
}

#[test]
fn guest_panic_reaches_the_host() {
    if !require_kvm() {
        return;
    }
    let report = scenario("panic");
    match &report.exit {
        GuestExit::Panicked {
            vcpu: 0,
            message,
            file,
            line,
            ..
        } => {
            assert_eq!(message, "scenario panic with value 42");
            assert_eq!(file, "src/bin/scenarios.rs");
            assert!(*line > 0);
        }
        other => panic!("unexpected exit: {other}"),
    }
    assert_eq!(report.exit.process_status(), STATUS_PANIC);
}

#[test]
fn wild_console_pointer_stops_the_guest_and_the_host_stays_healthy() {
    if !require_kvm() {
        return;
    }
    let report = scenario("bad-pointer");
    match &report.exit {
        GuestExit::BadHypercall {
            vcpu: 0,
            error,
            regs,
        } => {
            assert_eq!(
                *error,
                HypercallError::BadBuffer {
                    call: Hypercall::Console,
                    what: "text",
                    addr: dbos_abi::GuestPhysAddr(1 << 40),
                    len: 16
                }
            );
            assert!(regs.is_some(), "a register dump comes with the report");
        }
        other => panic!("unexpected exit: {other}"),
    }
    assert!(report.exit.to_string().contains("hypercall Console"));
    assert!(!report.console.iter().any(|l| l.contains("still running")));
    assert_eq!(report.exit.process_status(), STATUS_CRASH);

    let report = scenario("bad-length");
    assert!(
        matches!(
            &report.exit,
            GuestExit::BadHypercall {
                error: HypercallError::TooLong {
                    call: Hypercall::Console,
                    ..
                },
                ..
            }
        ),
        "{}",
        report.exit
    );

    // The same host process boots and runs another guest normally.
    let again = run("hello", config(&[]));
    assert_eq!(again.exit.process_status(), 0);
    assert_eq!(again.console.len(), 2);
}

#[test]
fn abi_version_mismatch_is_detected_by_the_guest() {
    if !require_kvm() {
        return;
    }
    let cfg = VmConfig {
        abi_version: ABI_VERSION + 1,
        ..config(&[])
    };
    let report = run("hello", cfg);
    match &report.exit {
        GuestExit::Panicked { message, .. } => assert_eq!(
            *message,
            format!(
                "dbos ABI version mismatch: guest built for version {ABI_VERSION}, \
                 hypervisor provides version {}",
                ABI_VERSION + 1
            )
        ),
        other => panic!("unexpected exit: {other}"),
    }
    assert!(
        report.console.is_empty(),
        "the guest stops before running main"
    );
}

#[test]
fn clock_is_monotonic() {
    if !require_kvm() {
        return;
    }
    let report = scenario("clock");
    assert!(
        report.console[0].ends_with("monotonic=true"),
        "{}",
        report.console[0]
    );
    assert_eq!(report.vmm_exits.hypercall(Hypercall::Clock), 2);
}

#[test]
fn secondary_vcpus_boot_and_are_stopped_with_the_guest() {
    if !require_kvm() {
        return;
    }
    let cfg = VmConfig {
        vcpus: 4,
        ..config(&["3"])
    };
    let report = run("hello", cfg);
    assert_eq!(
        report.console[0],
        "[vcpu0] hello from dbos guest: 4 vCPU(s), 64 MiB RAM"
    );
    assert!(
        matches!(report.exit, GuestExit::Exited { vcpu: 0, status: 3 }),
        "{}",
        report.exit
    );
    assert_eq!(report.vmm_exits_per_vcpu.len(), 4);
    // Parked vCPUs sit in `hlt` inside KVM and never exit to the VMM.
    for counts in &report.vmm_exits_per_vcpu[1..] {
        assert_eq!(counts.total, 0);
    }
}

/// Runs a scenario expected to crash and returns the report text.
fn crash(name: &str) -> String {
    let report = scenario(name);
    assert_eq!(
        report.exit.process_status(),
        STATUS_CRASH,
        "{}",
        report.exit
    );
    let GuestExit::Crashed {
        vcpu: 0,
        regs: Some(regs),
        ..
    } = &report.exit
    else {
        panic!(
            "expected a crash with a register dump, got: {}",
            report.exit
        )
    };
    let text = report.exit.to_string();
    assert!(text.contains(&format!("RIP {:#018x}", regs.rip)), "{text}");
    assert!(
        regs.rip >= dbos_abi::IMAGE_BASE,
        "RIP is in the image: {text}"
    );
    text
}

#[test]
fn unexpected_exits_are_reported_with_registers() {
    if !require_kvm() {
        return;
    }
    let text = crash("unknown-port");
    assert!(
        text.contains("write of 1 byte(s) to unknown I/O port 0x80"),
        "{text}"
    );
    let text = crash("triple-fault");
    assert!(text.contains("triple fault (KVM_EXIT_SHUTDOWN)"), "{text}");
    // Only hosts without hardware virtualization emulate ring 0 (and fail on
    // SSE); with VT-x/AMD-V the instruction simply runs.
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let hardware = cpuinfo
        .lines()
        .any(|l| l.starts_with("flags") && l.split_whitespace().any(|f| f == "vmx" || f == "svm"));
    if hardware {
        assert_eq!(scenario("emulation-failure").exit.process_status(), 0);
    } else {
        let text = crash("emulation-failure");
        assert!(
            text.contains("KVM_EXIT_INTERNAL_ERROR, suberror 1"),
            "{text}"
        );
    }
}

#[test]
fn smp_run_on_all_ipis_and_timer() {
    if !require_kvm() {
        return;
    }
    let report = run(
        "scenarios",
        VmConfig {
            vcpus: 2,
            ..config(&["smp"])
        },
    );
    assert_eq!(
        report.console,
        vec![
            "[vcpu0] barrier: missed=0",
            // cpu 0 adds 1 and cpu 1 adds 2; both bits seen.
            "[vcpu0] run_on_all: sum=3 seen=0b11",
            "[vcpu0] ipi ran on cpu 1",
            "[vcpu0] timer ticks>=3: true",
        ]
    );
    assert_eq!(report.exit.process_status(), 0, "{}", report.exit);
    // IPIs and timer interrupts go through KVM's in-kernel APIC: vCPU 1 never
    // exits to the VMM.
    assert_eq!(report.vmm_exits_per_vcpu[1].total, 0);
}

#[test]
fn authorised_host_files_by_name() {
    if !require_kvm() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("data.bin");
    std::fs::write(&path, b"hello").unwrap();
    let grant = format!("data={}", path.display()).parse().unwrap();
    let report = run(
        "scenarios",
        VmConfig {
            files: vec![grant],
            ..config(&["files"])
        },
    );
    assert_eq!(
        report.console,
        vec![
            "[vcpu0] open unknown: Err(Errno(2))",
            "[vcpu0] size=5 read=5 head=\"hello\"",
            "[vcpu0] size after write=14",
            "[vcpu0] window round trip=true",
            "[vcpu0] bad handle: true",
        ]
    );
    assert_eq!(report.exit.process_status(), 0, "{}", report.exit);
    let on_disk = std::fs::read(&path).unwrap();
    assert_eq!(&on_disk[..14], b"hello and more");
    assert_eq!(&on_disk[100..112], b"across pages");
}

#[test]
fn hypercall_argument_block_above_4_gib() {
    if !require_kvm() {
        return;
    }
    let report = run(
        "scenarios",
        VmConfig {
            memory: 5 << 30,
            ..config(&["high-args"])
        },
    );
    assert_eq!(report.exit.process_status(), 0, "{}", report.exit);
    assert_eq!(report.console.len(), 2, "{:?}", report.console);
    let block = hex_field(&report.console[0], "addr");
    assert!(block >= dbos_abi::HIGH_RAM_START, "{block:#x}");
    assert_eq!(report.console[1], "[vcpu0] hello from above 4 GiB");
    // One exit per console call and one for the exit call, as always.
    assert_eq!(report.vmm_exits.hypercall(Hypercall::Console), 2);
    assert_eq!(report.vmm_exits.hypercall(Hypercall::Exit), 1);
}

#[test]
fn hypercalls_from_a_stack_in_a_window() {
    if !require_kvm() {
        return;
    }
    let report = scenario("window-stack");
    assert_eq!(
        report.console,
        vec!["[vcpu0] hypercalls from a window stack: clock>0=true open errno=2"]
    );
    // The console buffer spans two frames that are not adjacent: the guest
    // library refuses to describe it, and the host stops the guest.
    assert!(
        matches!(
            &report.exit,
            GuestExit::BadHypercall {
                error: HypercallError::BadBuffer {
                    call: Hypercall::Console,
                    addr: dbos_abi::GuestPhysAddr(u64::MAX),
                    len: 12,
                    ..
                },
                ..
            }
        ),
        "{}",
        report.exit
    );
}
