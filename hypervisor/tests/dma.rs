//! DMA regions end to end: the guest declares the memory it does disk I/O
//! from (`scenarios -- dma MODE`), the VMM registers it with io_uring as
//! fixed buffers, serves I/O inside it with the fixed opcodes and any other
//! with the plain ones, refuses hostile declarations with their status,
//! names the pinning limit when a declaration exceeds it, and gives
//! regions back, leaving nothing pinned beyond what stays declared.

mod common;

use common::{config, image, require_kvm, run_test_build, scratch};
use dbos_hypervisor::disk::DiskConfig;
use dbos_hypervisor::VmConfig;
use std::os::unix::process::CommandExt;
use std::process::Command;

fn with_disk(dir: &tempfile::TempDir, args: &[&str]) -> VmConfig {
    VmConfig {
        disk: Some(DiskConfig::new(dir.path().join("dma.img"), Some(4 << 20))),
        ..config(args)
    }
}

#[test]
fn a_declared_region_is_served_with_fixed_buffers_and_the_heap_with_plain_ones() {
    if !require_kvm() {
        return;
    }
    let dir = scratch();
    let report = run_test_build("scenarios", with_disk(&dir, &["dma", "io"]));
    assert_eq!(report.exit.process_status(), 0, "{}", report.exit);
    // One write from DMA memory (the arena of the queue pair's rings, 2
    // MiB), one read of the same blocks into the heap.
    assert_eq!(
        report.console,
        [
            "[vcpu0] dma io: fixed 1 plain 1 same=true; regions 1 bytes 2097152",
            "[vcpu0] dma io: declared 1 refused 0",
        ]
    );
    let disk = report.disk.expect("poller counters");
    assert_eq!((disk.fixed_ios, disk.plain_ios), (1, 1));
    assert_eq!((disk.dma_regions, disk.dma_bytes), (1, 2 << 20));
}

#[test]
fn hostile_declarations_are_refused_with_their_status() {
    if !require_kvm() {
        return;
    }
    let dir = scratch();
    let report = run_test_build("scenarios", with_disk(&dir, &["dma", "hostile"]));
    assert_eq!(report.exit.process_status(), 0, "{}", report.exit);
    let (efault, einval, eexist, enoent) =
        (-libc::EFAULT, -libc::EINVAL, -libc::EEXIST, -libc::ENOENT);
    let expected: Vec<String> = [
        ("past RAM's end", efault),
        ("at RAM's end", efault),
        ("wrapping", efault),
        ("empty", einval),
        ("misaligned", einval),
        ("too large", einval),
        ("valid", 0),
        ("overlapping its end", eexist),
        ("inside it", eexist),
        ("release of a part", enoent),
        ("release", 0),
        ("release again", enoent),
    ]
    .iter()
    .map(|(what, status)| format!("[vcpu0] dma hostile: {what}: {status}"))
    .chain(["[vcpu0] dma hostile: regions 0 bytes 0".to_string()])
    .collect();
    assert_eq!(report.console, expected);
    let disk = report.disk.expect("poller counters");
    assert_eq!((disk.dma_regions, disk.dma_bytes), (0, 0));
}

/// `dbos` with `args`, run without `CAP_IPC_LOCK` and with `RLIMIT_MEMLOCK`
/// at `memlock` bytes (both set in the child before it runs `dbos`).
fn dbos_limited(args: &[&str], memlock: u64) -> (i32, String, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_dbos"));
    cmd.args(args);
    // SAFETY: the closure runs in the child between fork and exec and only
    // makes two system calls (async-signal-safe).
    unsafe {
        cmd.pre_exec(move || {
            let lim = libc::rlimit {
                rlim_cur: memlock,
                rlim_max: memlock,
            };
            if libc::setrlimit(libc::RLIMIT_MEMLOCK, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // As root, exec recomputes the capabilities from the bounding
            // set: without CAP_IPC_LOCK there, dbos runs without it. Not
            // root (EPERM): dbos has no CAP_IPC_LOCK anyway.
            const CAP_IPC_LOCK: libc::c_ulong = 14;
            libc::prctl(libc::PR_CAPBSET_DROP, CAP_IPC_LOCK, 0, 0, 0);
            Ok(())
        })
    };
    let out = cmd.output().unwrap();
    (
        out.status.code().expect("dbos exited by a signal"),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Under a 1 MiB `RLIMIT_MEMLOCK` without `CAP_IPC_LOCK`, a 512 KiB region
/// is registered and a further 2 MiB one is refused with `-ENOMEM` and an
/// error on stderr that names the limit; the guest runs on.
#[test]
fn a_region_beyond_the_memlock_limit_is_refused_with_a_clear_error() {
    if !require_kvm() {
        return;
    }
    let dir = scratch();
    let disk = dir.path().join("limit.img");
    let scenarios = image("scenarios");
    let (code, stdout, stderr) = dbos_limited(
        &[
            "run",
            "--disk",
            disk.to_str().unwrap(),
            "--disk-size",
            "4M",
            &scenarios,
            "--",
            "dma",
            "limit",
            "2097152",
        ],
        1 << 20,
    );
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    assert_eq!(
        stdout,
        format!(
            "[vcpu0] dma limit: 524288: 0; 2097152: {}; regions 1 bytes 524288\n",
            -libc::ENOMEM
        )
    );
    assert!(
        stderr.contains("DMA region not declared: DMA region at 0x")
            && stderr.contains(
                "(2097152 bytes) refused: registering it would pin 2621440 bytes of DMA regions \
             in all, more than RLIMIT_MEMLOCK allows (1048576 bytes) to a process without \
             CAP_IPC_LOCK; raise the limit (ulimit -l) or declare less"
            ),
        "{stderr}"
    );
}

/// The number of kB before `unit` (" kB (VmPin)") on the `--stats` line.
fn kb_before(stderr: &str, unit: &str) -> u64 {
    let line = stderr
        .lines()
        .find(|l| l.contains(unit))
        .unwrap_or_else(|| panic!("no {unit} in {stderr}"));
    let at = line.find(unit).unwrap();
    line[..at].rsplit(' ').next().unwrap().parse().unwrap()
}

/// A guest that allocates and frees a 2 MiB DMA buffer 20 times (each a new
/// arena, declared, then given back) ends the loop where it started: the
/// one region of its queue pair's rings declared (the guest's line). When
/// the queue pair is given back at the end, that region goes too: nothing
/// declared and nothing pinned (the kernel's count, `VmPin`, read before
/// the disk stops).
#[test]
fn regions_given_back_in_a_loop_return_to_the_baseline() {
    if !require_kvm() {
        return;
    }
    let dir = scratch();
    let disk = dir.path().join("loop.img");
    let scenarios = image("scenarios");
    let out = Command::new(env!("CARGO_BIN_EXE_dbos"))
        .args([
            "run",
            "--stats",
            "--disk",
            disk.to_str().unwrap(),
            "--disk-size",
            "4M",
            &scenarios,
            "--",
            "dma",
            "loop",
            "20",
        ])
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    assert_eq!(
        stdout,
        "[vcpu0] dma loop 20: regions 1 -> 1 (peak 2), bytes 2097152 -> 2097152, fixed 20 \
         plain 0, arenas 1, declared 21 refused 0\n"
    );
    // The queue pair's ring held the last arena; the scenario's end
    // dropped the queue pair, which gave it back to the host and freed its
    // ring, so the arena was released too: nothing is declared or pinned
    // at the end.
    assert!(
        stderr.contains(
            "dbos: disk: 20 I/Os with fixed buffers, 0 with plain buffers; 0 DMA regions \
             (0 bytes) declared at the end"
        ),
        "{stderr}"
    );
    assert_eq!(kb_before(&stderr, " kB (VmPin)"), 0, "{stderr}");
}
