//! I/O errors injected systematically (`dbos run --io-error-at N
//! --io-error-kind KIND`), as SQLite's anomaly tests do: the key-value
//! guest is run again and again with its N-th write, flush or read failed,
//! N swept over the commands of a run that formats the store, and of one
//! that recovers (writing a checkpoint: a page, a log record, the control
//! blocks) and commits.
//!
//! The rule for writes and flushes (the fsync gate): once a write or flush
//! has failed, no later commit is acknowledged, nothing is retried
//! silently (a retry that succeeded would let the guest go on), the guest
//! stops with an error naming the failure, and the next normal run finds
//! every commit acknowledged before it (and at most the one that failed,
//! whose log write may have reached the file before its flush failed).
//! For reads: the guest stops with a clear error or goes on correctly;
//! it never reports data that is not what was committed.

mod common;

use common::{require_kvm, scratch};
use std::path::Path;
use std::process::Command;

/// Committers of the kvarray guest in the full sweep: one, whose order of
/// acknowledgements is exact. `two_committers_*` sweeps with two (one per
/// vCPU), where [`check_gate`] checks what holds with several: every
/// acknowledged commit found, the run stopped with an error.
const COMMITTERS: u32 = 1;

/// A kvarray run: its vCPUs (one committer each) and its arguments.
#[derive(Debug)]
struct Guest {
    vcpus: u32,
    args: Vec<String>,
}

/// The kvarray guest's arguments: `txns` commits in `mode` by `committers`.
fn guest_args(txns: u64, mode: &str, committers: u32) -> Guest {
    Guest {
        vcpus: committers,
        args: vec![txns.to_string(), mode.to_string()],
    }
}

/// The text after `] ` + `what` on a console line of any vCPU.
fn any_vcpu<'a>(line: &'a str, what: &str) -> Option<&'a str> {
    line.strip_prefix("[vcpu")?
        .split_once("] ")?
        .1
        .strip_prefix(what)
}

/// What one run printed.
struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Run {
    fn acked(&self) -> Vec<u64> {
        self.stdout
            .lines()
            .filter_map(|l| any_vcpu(l, "acked "))
            .map(|n| n.parse().unwrap())
            .collect()
    }

    /// `(found, wrong)` from the check after recovery.
    fn found(&self) -> Option<(u64, u64)> {
        self.stdout.lines().find_map(|l| {
            let rest = l.strip_prefix("[vcpu0] found ")?;
            let (n, rest) = rest.split_once(" committed transactions, ")?;
            Some((n.parse().ok()?, rest.strip_suffix(" wrong")?.parse().ok()?))
        })
    }

    /// The transactions the check after recovery found
    /// (`transactions found: [1-5,7-9]`).
    fn found_set(&self) -> std::collections::BTreeSet<u64> {
        let list = self
            .stdout
            .lines()
            .find_map(|l| {
                l.strip_prefix("[vcpu0] transactions found: [")?
                    .strip_suffix(']')
            })
            .unwrap_or_else(|| panic!("no list of transactions found: {}", self.stdout));
        let mut set = std::collections::BTreeSet::new();
        for range in list.split(',').filter(|s| !s.is_empty()) {
            let (a, b) = range.split_once('-').unwrap();
            set.extend(a.parse::<u64>().unwrap()..=b.parse().unwrap());
        }
        set
    }

    /// The commit that failed, and the error, if one did.
    fn failed_commit(&self) -> Option<(u64, String)> {
        self.stdout.lines().find_map(|l| {
            let (t, e) = any_vcpu(l, "commit ")?.split_once(" failed: ")?;
            Some((t.parse().ok()?, e.to_string()))
        })
    }

    /// Why the store could not be opened, or read for its check.
    fn refused(&self) -> Option<&str> {
        self.stdout.lines().find_map(|l| {
            l.strip_prefix("[vcpu0] cannot open the store: ")
                .or_else(|| l.strip_prefix("[vcpu0] cannot read the store: "))
        })
    }
}

/// `dbos run` of kvarray on `disk` with `extra` options.
fn dbos(disk: &Path, extra: &[&str], guest: &Guest) -> Run {
    let image = dbos_hypervisor::guest_image("kvarray");
    let out = Command::new(env!("CARGO_BIN_EXE_dbos"))
        .args(["run", "--disk", disk.to_str().unwrap()])
        .args(["--disk-spin-us", "200000", "--time-limit", "120"])
        .args(["--vcpus", &guest.vcpus.to_string()])
        .args(extra)
        .arg(image)
        .arg("--")
        .args(&guest.args)
        .output()
        .unwrap();
    Run {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// How many reads, writes and flushes a run of `guest` on a copy of `start`
/// (or a new disk) makes: a run with an injection it never reaches.
fn count(dir: &Path, start: Option<&[u8]>, guest: &Guest) -> Counts {
    let disk = dir.join("count.img");
    let _ = std::fs::remove_file(&disk);
    let mut extra = vec!["--io-error-at", "1000000"];
    match start {
        Some(image) => std::fs::write(&disk, image).unwrap(),
        None => extra.extend(["--disk-size", "2M"]),
    }
    let r = dbos(&disk, &extra, guest);
    assert_eq!(r.code, Some(0), "{}{}", r.stdout, r.stderr);
    let all = r
        .stderr
        .lines()
        .find_map(|l| l.strip_prefix("dbos: --io-error-at 1000000 --io-error-kind write: "))
        .and_then(|l| l.split_once("(in all: "))
        .and_then(|(_, l)| l.strip_suffix(" flush commands)"))
        .unwrap_or_else(|| panic!("no injection report: {}", r.stderr));
    let n: Vec<u64> = all
        .split(|c: char| !c.is_ascii_digit())
        .filter(|w| !w.is_empty())
        .map(|w| w.parse().unwrap())
        .collect();
    assert_eq!(n.len(), 3, "{all}");
    Counts {
        reads: n[0],
        writes: n[1],
        flushes: n[2],
    }
}

/// Commands of a run, by kind.
#[derive(Debug)]
struct Counts {
    reads: u64,
    writes: u64,
    flushes: u64,
}

/// One case: the `n`-th command of `kind` failed in a run of `guest` on a
/// copy of `start` (a new disk if `None`) that holds `before` commits.
/// Checks the rule (see the module docs) and returns the injected run's
/// acknowledged commits.
fn case(
    dir: &Path,
    start: Option<&[u8]>,
    before: u64,
    kind: &str,
    n: u64,
    guest: &Guest,
) -> String {
    let disk = dir.join("case.img");
    let _ = std::fs::remove_file(&disk);
    let nth = n.to_string();
    let mut extra = vec!["--io-error-at", &nth, "--io-error-kind", kind];
    match start {
        Some(image) => std::fs::write(&disk, image).unwrap(),
        None => extra.extend(["--disk-size", "2M"]),
    }
    let what = format!("{kind} {n} ({guest:?}, {before} commits before)");
    let r = dbos(&disk, &extra, guest);
    let all = format!("{what}:\n{}{}", r.stdout, r.stderr);
    assert!(
        r.stderr.contains(&format!(
            "dbos: injected I/O error: {kind} command {n} of the run ("
        )),
        "the command was not failed: {all}"
    );
    let error = if kind == "read" {
        "unrecovered read error"
    } else {
        "write fault"
    };
    let acked = r.acked();
    // A disk the failed run did not change needs no second look: it is
    // the store the case started from.
    let unchanged = match start {
        Some(image) => std::fs::read(&disk).unwrap() == image,
        None => std::fs::read(&disk).unwrap().iter().all(|&b| b == 0),
    };
    let summary;
    if kind == "read" {
        // Correct, or stopped with the error; never wrong data.
        match (r.code, r.found()) {
            (Some(0), Some((found, wrong))) => {
                assert_eq!((found, wrong), (before, 0), "{all}");
                summary = "went on".to_string();
            }
            _ => {
                assert_ne!(r.code, Some(0), "{all}");
                let stop = r
                    .refused()
                    .map(str::to_string)
                    .or(r.failed_commit().map(|(_, e)| e))
                    .unwrap_or_else(|| panic!("no clear error: {all}"));
                assert!(stop.contains(error), "{all}");
                if let Some((found, wrong)) = r.found() {
                    assert_eq!((found, wrong), (before, 0), "wrong data served: {all}");
                }
                summary = format!("stopped: {stop}");
            }
        }
    } else {
        summary = check_gate(&r, before, error, guest.vcpus, &all);
    }
    if unchanged {
        assert!(acked.is_empty(), "{all}");
        return format!("{summary}; the disk is unchanged");
    }
    // The next normal run finds every acknowledged commit.
    let next = dbos(&disk, &[], &guest_args(0, "fua", guest.vcpus));
    let next_all = format!("{what}, the next run:\n{}{}", next.stdout, next.stderr);
    let acked_max = acked.iter().copied().max().unwrap_or(before);
    match (next.code, next.found()) {
        (Some(0), Some((found, 0))) if guest.vcpus > 1 => {
            // Every acknowledged commit is there; of the others, at most
            // the one each committer had in flight may have reached the
            // file (its log write went through, then the flush failed).
            let set = next.found_set();
            let missing: Vec<u64> = acked.iter().filter(|t| !set.contains(t)).copied().collect();
            assert!(
                missing.is_empty(),
                "acknowledged {missing:?} not found: {all}\n{next_all}"
            );
            assert!(
                found <= before + acked.len() as u64 + guest.vcpus as u64,
                "found {found}: {all}\n{next_all}"
            );
            format!("{summary}; acked {acked:?}; next run found {found}")
        }
        (Some(0), Some((found, 0))) => {
            // The failed commit may have reached the file (its log write
            // went through, then its flush failed), never more.
            let failed_landed = r
                .failed_commit()
                .is_some_and(|(t, _)| t == acked_max + 1 && found == t);
            assert!(
                found == acked_max || failed_landed,
                "found {found}, acknowledged up to {acked_max}: {all}\n{next_all}"
            );
            format!("{summary}; acked {acked:?}; next run found {found}")
        }
        _ if start.is_none() && acked.is_empty() && r.refused().is_some() => {
            // The format itself failed: nothing was ever acknowledged. The
            // half-formatted disk is refused as damaged or formatted anew.
            let next_refusal = next.refused();
            assert!(
                next.stdout.contains("fresh disk: formatting")
                    || next_refusal.is_some_and(|e| e.contains("not blank")),
                "{next_all}"
            );
            format!(
                "{summary}; the next run: {}",
                next_refusal.unwrap_or("formatted")
            )
        }
        _ => panic!("the next run did not find the acknowledged commits: {all}\n{next_all}"),
    }
}

/// The fsync gate for one injected write or flush failure: the guest
/// stopped with an error naming it, and no commit was acknowledged after
/// the failure (with one committer: the commit that failed is the one
/// after the last acknowledged, the acknowledgments run without a gap, and
/// none comes after the failure in the console).
fn check_gate(r: &Run, before: u64, error: &str, committers: u32, all: &str) -> String {
    assert_eq!(r.code, Some(1), "the guest must stop with an error: {all}");
    assert!(
        !r.stdout.contains(" more: "),
        "the guest finished its commits after a failed write: {all}"
    );
    let acked = r.acked();
    match (r.failed_commit(), r.refused()) {
        (Some((t, e)), _) => {
            assert!(e.contains(error), "{all}");
            if committers == 1 {
                let last = acked.last().copied().unwrap_or(before);
                assert_eq!(acked, (before + 1..=last).collect::<Vec<_>>(), "{all}");
                assert_eq!(
                    t,
                    last + 1,
                    "a commit acknowledged after the failure: {all}"
                );
                let failed_at = r.stdout.find(" failed: ").unwrap();
                assert!(!r.stdout[failed_at..].contains("] acked "), "{all}");
            }
            format!("commit {t} failed")
        }
        (None, Some(e)) => {
            assert!(e.contains(error), "{all}");
            assert!(acked.is_empty(), "{all}");
            format!("refused to open: {e}")
        }
        (None, None) => panic!("the guest stopped without saying why: {all}"),
    }
}

/// The sweep: a formatting run (its first writes: control blocks, log
/// zeroing; its last: the format's log record and control block, and the
/// first commits), and a recovering run in both commit modes (recovery's
/// checkpoint: a page write, a log record, control blocks, its flushes;
/// then each commit's log write, and in flush mode each commit's flush),
/// every read of a recovering run.
#[test]
fn kvstore_under_injected_io_errors_acknowledges_nothing_after_a_failure() {
    if !require_kvm() {
        return;
    }
    let dir = scratch();
    let started = std::time::Instant::now();
    let mut lines = Vec::new();

    // Formatting, then two FUA commits.
    let fresh = guest_args(2, "fua", COMMITTERS);
    let counts = count(dir.path(), None, &fresh);
    let writes = counts.writes;
    assert!(writes > 8, "{counts:?} to format and commit twice");
    // The first control block, the first log-zeroing write, the format's
    // log record and control block, the first commit.
    for n in [1, 3, writes - 3, writes - 2, writes - 1] {
        let s = case(dir.path(), None, 0, "write", n, &fresh);
        lines.push(format!("format, write {n}/{writes}: {s}"));
    }

    // A store with 4 commits, recovered, 3 more committed.
    let base_disk = dir.path().join("base.img");
    let r = dbos(
        &base_disk,
        &["--disk-size", "2M"],
        &guest_args(4, "fua", COMMITTERS),
    );
    assert_eq!(r.code, Some(0), "{}{}", r.stdout, r.stderr);
    let base = std::fs::read(&base_disk).unwrap();
    for mode in ["fua", "flush"] {
        let guest = guest_args(3, mode, COMMITTERS);
        let counts = count(dir.path(), Some(&base), &guest);
        let (writes, flushes) = (counts.writes, counts.flushes);
        assert!(writes >= 4 && flushes >= 1, "{counts:?}");
        // FUA mode: recovery's writes (control block, the checkpoint's
        // log record, page and control block), the first and last
        // commit's, every flush; flush mode: the last commit's write and
        // flush (its recovery is FUA mode's).
        let (write_ns, flush_ns): (Vec<u64>, Vec<u64>) = if mode == "fua" {
            let mut w: Vec<u64> = (1..=writes - 3).collect();
            w.extend([writes - 2, writes]);
            (w, (1..=flushes).collect())
        } else {
            (vec![writes], vec![flushes])
        };
        for n in write_ns {
            let s = case(dir.path(), Some(&base), 4, "write", n, &guest);
            lines.push(format!(
                "recovery + {mode} commits, write {n}/{writes}: {s}"
            ));
        }
        for n in flush_ns {
            let s = case(dir.path(), Some(&base), 4, "flush", n, &guest);
            lines.push(format!(
                "recovery + {mode} commits, flush {n}/{flushes}: {s}"
            ));
        }
        if mode == "fua" {
            // Every read of recovery (the control block, the page check, the
            // log); of the guest's check after it, which reads every data
            // page through the pool the same way, every 8th.
            for n in (1..=counts.reads).filter(|&n| n <= 12 || n % 8 == 0 || n == counts.reads) {
                let s = case(dir.path(), Some(&base), 4, "read", n, &guest);
                lines.push(format!("recovery, read {n}/{}: {s}", counts.reads));
            }
        }
    }
    eprintln!(
        "{} injected errors in {:.1} s:\n{}",
        lines.len(),
        started.elapsed().as_secs_f64(),
        lines.join("\n")
    );
}

/// The same rule with two committers (one per vCPU, so commits meet in
/// group commit): a write or flush failed in recovery or among the first
/// commits (the commands every run makes, however its commits are
/// batched), in both commit modes. The run stops with an error and every
/// commit it acknowledged is found by the next.
#[test]
fn two_committers_under_injected_io_errors_acknowledge_only_durable_commits() {
    if !require_kvm() {
        return;
    }
    let dir = scratch();
    let base_disk = dir.path().join("base.img");
    let r = dbos(&base_disk, &["--disk-size", "2M"], &guest_args(4, "fua", 1));
    assert_eq!(r.code, Some(0), "{}{}", r.stdout, r.stderr);
    let base = std::fs::read(&base_disk).unwrap();
    let mut lines = Vec::new();
    for mode in ["fua", "flush"] {
        // Recovery's own commands, then six commits by two committers:
        // at least three log writes (and, in flush mode, three flushes).
        let recovery = count(dir.path(), Some(&base), &guest_args(0, mode, 2));
        let guest = guest_args(6, mode, 2);
        for n in recovery.writes..=recovery.writes + 3 {
            let s = case(dir.path(), Some(&base), 4, "write", n, &guest);
            lines.push(format!("two committers, {mode}, write {n}: {s}"));
        }
        let flushes = recovery.flushes + if mode == "flush" { 3 } else { 0 };
        for n in recovery.flushes..=flushes {
            let s = case(dir.path(), Some(&base), 4, "flush", n, &guest);
            lines.push(format!("two committers, {mode}, flush {n}: {s}"));
        }
    }
    eprintln!("{}", lines.join("\n"));
}
