//! Durability of the key-value store guest on `dbos run --disk`: power cuts
//! injected by the VMM (`DiskConfig::power_cut`, `--power-cut-after`),
//! damaged stores that must be refused rather than "recovered" or
//! reformatted, and one disk file never used by two VMs at once.
//!
//! The kvstore guest prints `acked T` when the commit of transaction T has
//! returned, and `found N committed transactions, M wrong` after recovery
//! (see examples/src/bin/kvstore.rs).

mod common;

use common::{config, require_kvm, run};
use dbos_bufferpool::control::Control;
use dbos_bufferpool::log::{SECTOR, SECTORS_PER_BLOCK};
use dbos_hypervisor::disk::{DiskConfig, PowerCutPlan};
use dbos_hypervisor::{GuestExit, RunReport, VmConfig};
use dbos_nvme::host::powercut::Rng;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Big enough for kvstore's layout (2 control blocks, 256 log blocks, 64
/// pages) and small enough to load and store quickly on the power-cut model.
const DISK_BYTES: u64 = 2 << 20;

/// A scratch directory on a file system with O_DIRECT (not tmpfs).
fn scratch() -> tempfile::TempDir {
    tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap()
}

fn disk(path: &Path, create: Option<u64>, power_cut: Option<PowerCutPlan>) -> DiskConfig {
    DiskConfig {
        // Longer than the emulated guest's gap between I/Os.
        poll_spin: Duration::from_millis(200),
        power_cut,
        ..DiskConfig::new(path, create)
    }
}

fn kvstore(args: &[&str], disk: DiskConfig) -> RunReport {
    run(
        "kvstore",
        VmConfig {
            disk: Some(disk),
            ..config(args)
        },
    )
}

/// The `acked T` numbers of a run.
fn acked(report: &RunReport) -> Vec<u64> {
    report
        .console
        .iter()
        .filter_map(|l| l.strip_prefix("[vcpu0] acked "))
        .map(|n| n.parse().unwrap())
        .collect()
}

/// `(found, wrong)` from the check after recovery, if the run got there.
fn found(report: &RunReport) -> Option<(u64, u64)> {
    report.console.iter().find_map(|l| {
        let rest = l.strip_prefix("[vcpu0] found ")?;
        let (n, rest) = rest.split_once(" committed transactions, ")?;
        let wrong = rest.strip_suffix(" wrong")?;
        Some((n.parse().unwrap(), wrong.parse().unwrap()))
    })
}

/// The key-value guest under power cuts at 20 seeded moments while it
/// commits, on one disk: each run recovers what the previous run's cut
/// left, checks every earlier transaction, and commits until its own cut.
/// Every acknowledged commit must be found by the next recovery, with the
/// right contents; at most the one commit in flight at the cut may come on
/// top. Even seeds commit with FUA log writes, odd seeds with plain writes
/// and a flush (so that writes not yet durable exist at some cuts).
#[test]
fn kvstore_survives_power_cuts_at_seeded_moments() {
    if !require_kvm() {
        return;
    }
    const SEEDS: u64 = 20;
    /// The window after recovery in which the cut falls (~100 ms/commit).
    const WINDOW_MS: u64 = 1500;
    let dir = scratch();
    let path = dir.path().join("kv.img");
    let started = Instant::now();
    let first = kvstore(&["4"], disk(&path, Some(DISK_BYTES), None));
    assert_eq!(first.exit.process_status(), 0, "{:#?}", first.console);
    assert_eq!(acked(&first), [1, 2, 3, 4]);

    // How long a run takes to boot, load the disk model and recover: the
    // cuts fall after that, while the guest commits.
    let far = PowerCutPlan {
        after: Duration::from_secs(600),
        seed: 0,
    };
    let calibrate = kvstore(&["0"], disk(&path, None, Some(far)));
    assert_eq!(calibrate.exit.process_status(), 0, "{}", calibrate.exit);
    assert_eq!(found(&calibrate), Some((4, 0)), "{:#?}", calibrate.console);
    let recovery = calibrate.elapsed;

    let mut acked_max = 4;
    let mut known = 4;
    let (mut cut_while_committing, mut volatile, mut torn) = (0, 0, 0);
    for seed in 0..SEEDS {
        let mut rng = Rng::new(seed);
        let after = recovery + Duration::from_millis(50 + rng.below(WINDOW_MS));
        let mode = if seed % 2 == 0 { "fua" } else { "flush" };
        let plan = PowerCutPlan {
            after,
            seed: rng.next_u64(),
        };
        let r = kvstore(&["100000", mode], disk(&path, None, Some(plan)));
        let GuestExit::PowerCut { cut, .. } = &r.exit else {
            panic!(
                "seed {seed}: not stopped by the power cut: {}\n{:#?}",
                r.exit, r.console
            );
        };
        volatile += cut.volatile;
        torn += cut.torn;
        if let Some((n, wrong)) = found(&r) {
            assert_eq!(wrong, 0, "seed {seed}: {:#?}", r.console);
            assert!(
                n >= acked_max,
                "seed {seed}: recovery found {n} transactions, {acked_max} were acknowledged\n{:#?}",
                r.console
            );
            assert!(
                n <= known + 1,
                "seed {seed}: found {n}, at most {} committed",
                known + 1
            );
            known = known.max(n);
        }
        let a = acked(&r);
        if !a.is_empty() {
            cut_while_committing += 1;
            acked_max = acked_max.max(*a.iter().max().unwrap());
            known = known.max(acked_max);
        }
        eprintln!(
            "seed {seed} ({mode}): cut at {:.3} s, found {:?}, acked {} (up to {acked_max}), {cut:?}",
            after.as_secs_f64(),
            found(&r),
            a.len()
        );
    }
    let last = kvstore(&["0"], disk(&path, None, None));
    assert_eq!(
        last.exit.process_status(),
        0,
        "{}\n{:#?}",
        last.exit,
        last.console
    );
    let (n, wrong) = found(&last).expect("a clean check");
    assert_eq!(wrong, 0);
    assert!(
        n >= acked_max && n <= known + 1,
        "found {n}, acked {acked_max}"
    );
    eprintln!(
        "power-cut torture: {SEEDS} cuts, {cut_while_committing} while committing, \
         {acked_max} transactions acknowledged, {n} found at the end; {volatile} writes not \
         durable at the cuts, {torn} torn; {:.1} s",
        started.elapsed().as_secs_f64()
    );
    assert!(
        cut_while_committing >= SEEDS / 2,
        "only {cut_while_committing} of {SEEDS} cuts fell while the guest committed: the \
         cut window missed (recovery took {recovery:?} in calibration)"
    );
}

/// The disk file's control block (the newer valid copy).
fn control(image: &[u8]) -> Control {
    Control::newest(&image[..4096], &image[4096..8192]).expect("a valid control block")
}

/// Byte offset in the disk of log sector `n` (LSNs `[512 n, 512 n + 512)`).
fn sector_offset(c: &Control, n: u64) -> usize {
    let block = c.layout.log_start() + (n / SECTORS_PER_BLOCK) % c.layout.log_blocks;
    (block * 4096 + (n % SECTORS_PER_BLOCK) * SECTOR) as usize
}

/// Whether log sector `n` on the disk carries its own number and the
/// format's id (the header: number at byte 16, format id low half at 12).
fn sector_written(image: &[u8], c: &Control, n: u64) -> bool {
    let at = sector_offset(c, n);
    let s = &image[at..at + SECTOR as usize];
    u64::from_le_bytes(s[16..24].try_into().unwrap()) == n
        && u32::from_le_bytes(s[12..16].try_into().unwrap()) == c.format_id as u32
}

/// Data-loss case (a): a byte flipped in a log sector in the middle of
/// durable history (acknowledged commits after it). Recovery must not stop
/// there and report success with the later commits gone: it must refuse,
/// naming where the log is damaged, and leave the disk as it is.
///
/// DEPENDS ON the bufferpool engine's mid-log corruption detection (the
/// parallel bufferpool change of issue 10). Before it, recovery stops at
/// the damaged sector, "finds" fewer transactions than were acknowledged
/// and exits 0: the first assertion below fails.
#[test]
fn kvstore_refuses_a_log_damaged_in_the_middle_of_durable_history() {
    if !require_kvm() {
        return;
    }
    let dir = scratch();
    let path = dir.path().join("kv.img");
    let first = kvstore(&["24"], disk(&path, Some(DISK_BYTES), None));
    assert_eq!(first.exit.process_status(), 0, "{:#?}", first.console);
    assert_eq!(acked(&first).last(), Some(&24));

    let mut image = std::fs::read(&path).unwrap();
    let c = control(&image);
    let redo_sector = c.redo.0 / SECTOR;
    let mut end = redo_sector;
    while sector_written(&image, &c, end) {
        end += 1;
    }
    assert!(
        end - redo_sector >= 3,
        "the log from the redo point holds {} sectors",
        end - redo_sector
    );
    // A sector with durable, acknowledged history on both sides.
    let victim = (redo_sector + end) / 2;
    let at = sector_offset(&c, victim);
    image[at + 200] ^= 0x5a;
    std::fs::write(&path, &image).unwrap();

    let after = kvstore(&["0"], disk(&path, None, None));
    let refusal = after
        .console
        .iter()
        .find(|l| l.contains("cannot open the store"))
        .cloned();
    // Depends on the bufferpool fix (see above).
    assert!(
        after.exit.process_status() != 0 && refusal.is_some(),
        "a log damaged at sector {victim} (LSN {}, disk byte {at}) was not refused: {}\n{:#?}",
        victim * SECTOR,
        after.exit,
        after.console
    );
    let refusal = refusal.unwrap();
    // The message names the location: the damaged sector's LSN, its sector
    // number, its log block's LBA or its byte offset on the disk.
    let lba = at as u64 / 4096;
    let places = [
        (victim * SECTOR).to_string(),
        format!("{:#x}", victim * SECTOR),
        format!("sector {victim}"),
        format!("block {lba}"),
        format!("lba {lba}"),
        format!("LBA {lba}"),
        at.to_string(),
    ];
    assert!(
        places.iter().any(|p| refusal.contains(p.as_str())),
        "the refusal does not name the damaged sector ({places:?}): {refusal}"
    );
    assert!(
        std::fs::read(&path).unwrap() == image,
        "a refused store must be left exactly as it was"
    );
}

/// Data-loss case (b): both control blocks damaged. The store must be
/// refused, never reformatted (which would throw away every commit): the
/// guest exits non-zero and the disk is left exactly as it was.
#[test]
fn kvstore_refuses_a_store_with_both_control_blocks_damaged() {
    if !require_kvm() {
        return;
    }
    let dir = scratch();
    let path = dir.path().join("kv.img");
    let first = kvstore(&["8"], disk(&path, Some(DISK_BYTES), None));
    assert_eq!(first.exit.process_status(), 0, "{:#?}", first.console);
    let mut image = std::fs::read(&path).unwrap();
    control(&image);
    image[100] ^= 0xff;
    image[4096 + 100] ^= 0xff;
    assert!(Control::decode(&image[..4096]).is_err());
    assert!(Control::decode(&image[4096..8192]).is_err());
    std::fs::write(&path, &image).unwrap();

    let after = kvstore(&["4"], disk(&path, None, None));
    assert_ne!(after.exit.process_status(), 0, "{:#?}", after.console);
    assert!(
        !after.console.iter().any(|l| l.contains("formatting")),
        "{:#?}",
        after.console
    );
    assert!(
        after
            .console
            .iter()
            .any(|l| l.starts_with("[vcpu0] cannot open the store")),
        "{:#?}",
        after.console
    );
    assert!(
        std::fs::read(&path).unwrap() == image,
        "a refused store must be left exactly as it was"
    );
}

/// Data-loss case (c): two `dbos run --disk` on one file at once. The
/// second is refused (exit status 1) with a message naming the file and the
/// process holding it; once that process is gone, the file opens again.
#[test]
fn a_second_dbos_run_on_the_same_disk_is_refused() {
    if !require_kvm() {
        return;
    }
    let dir = scratch();
    let path = dir.path().join("kv.img");
    let disk_arg = path.to_str().unwrap();
    let image = dbos_hypervisor::guest_image("kvstore");
    let image = image.to_str().unwrap();
    let mut first = Command::new(env!("CARGO_BIN_EXE_dbos"))
        .args(["run", "--disk", disk_arg, "--disk-size", "2M"])
        .args(["--disk-spin-us", "200000", "--time-limit", "120", image])
        .args(["--", "100000"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // The guest's first line comes once the VM, disk included, is set up.
    let mut line = String::new();
    BufReader::new(first.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(line.starts_with("[vcpu0] "), "{line:?}");

    let second = Command::new(env!("CARGO_BIN_EXE_dbos"))
        .args(["run", "--disk", disk_arg, image, "--", "0"])
        .output()
        .unwrap();
    let still_running = first.try_wait().unwrap().is_none();
    first.kill().unwrap();
    first.wait().unwrap();
    assert!(still_running, "the first dbos stopped early");
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert_eq!(second.status.code(), Some(1), "{stderr}");
    assert!(second.stdout.is_empty(), "the second guest never ran");
    assert!(stderr.contains(disk_arg), "{stderr}");
    assert!(stderr.contains("is in use"), "{stderr}");
    assert!(
        stderr.contains(&format!("process {} (dbos)", first.id())),
        "{stderr}"
    );

    let third = Command::new(env!("CARGO_BIN_EXE_dbos"))
        .args(["run", "--disk", disk_arg, "--disk-spin-us", "200000", image])
        .args(["--", "0"])
        .output()
        .unwrap();
    assert_eq!(
        third.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&third.stderr)
    );
}

/// `dbos run --power-cut-after` end to end: exit status 105, the cut
/// reported on stderr, and the disk file left as the crash image that the
/// next run recovers from.
#[test]
fn power_cut_from_the_command_line() {
    if !require_kvm() {
        return;
    }
    let dir = scratch();
    let path = dir.path().join("kv.img");
    let disk_arg = path.to_str().unwrap();
    let image = dbos_hypervisor::guest_image("kvstore");
    let image = image.to_str().unwrap();
    let dbos = |extra: &[&str], guest: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_dbos"))
            .args(["run", "--disk", disk_arg, "--disk-size", "2M"])
            .args(["--disk-spin-us", "200000"])
            .args(extra)
            .arg(image)
            .arg("--")
            .args(guest)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    // Formatted first, so that the cut falls in recovery or committing even
    // on a loaded machine.
    let (code, _, stderr) = dbos(&[], &["4"]);
    assert_eq!(code, Some(0), "{stderr}");
    let (code, _, stderr) = dbos(
        &["--power-cut-after", "4s", "--seed", "9"],
        &["100000", "flush"],
    );
    assert_eq!(code, Some(105), "{stderr}");
    assert!(stderr.contains("power cut at 4.000 s (seed 9)"), "{stderr}");
    assert!(
        stderr.contains("the disk file holds the crash image"),
        "{stderr}"
    );
    let (code, stdout, stderr) = dbos(&[], &["0"]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stdout.contains("[vcpu0] recovered: "), "{stdout}");
    // A seed without a cut disk is a usage error.
    let out = Command::new(env!("CARGO_BIN_EXE_dbos"))
        .args(["run", "--seed", "3", image])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}
