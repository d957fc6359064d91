//! The kvarray guest on damaged disks and with several committers (issue
//! 16): each case here lost acknowledged commits silently before, and must
//! now be refused, untouched, with its place named, or recover every
//! commit.
//!
//! - a zeroed log block or sector with acknowledged commits after it was
//!   taken for the end of the log (`found 16` of 32, exit 0);
//! - a store whose first blocks were zeroed was formatted anew ("fresh
//!   disk: formatting", found 0);
//! - an older valid copy of a data page put back after a checkpoint was
//!   served (found 16 of 32);
//! - commits of several committers at once (group commit) under power
//!   cuts: every acknowledged one is found;
//! - the guest's own usage errors exit 2.

mod common;

use common::{acked, config, require_kvm, run, scratch};
use dbos_hypervisor::disk::{CutAt, DiskConfig, PowerCutPlan};
use dbos_hypervisor::{GuestExit, RunReport, VmConfig};
use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

/// The README's disk for the kvarray guest is 64M; this one is as small as
/// its layout allows with room to spare (the backup control block goes in
/// the last block), so the power-cut model loads it quickly.
const DISK_BYTES: u64 = 2 << 20;
/// Device block of data page 0: 2 control blocks, 256 log blocks.
const PAGE0_BLOCK: usize = 258;

fn disk(path: &Path, power_cut: Option<PowerCutPlan>) -> DiskConfig {
    DiskConfig {
        // Longer than the emulated guest's gap between I/Os.
        poll_spin: Duration::from_millis(200),
        power_cut,
        ..DiskConfig::new(path, Some(DISK_BYTES))
    }
}

fn kvstore_on(path: &Path, vcpus: u32, args: &[&str], cut: Option<PowerCutPlan>) -> RunReport {
    run(
        "kvarray",
        VmConfig {
            vcpus,
            disk: Some(disk(path, cut)),
            ..config(args)
        },
    )
}

fn kvarray(path: &Path, args: &[&str]) -> RunReport {
    kvstore_on(path, 1, args, None)
}

/// The line starting with `prefix` (after the vCPU tag), if any.
fn line<'a>(r: &'a RunReport, prefix: &str) -> Option<&'a str> {
    r.console
        .iter()
        .find_map(|l| l.strip_prefix("[vcpu0] ")?.strip_prefix(prefix))
}

/// The transactions any vCPU acknowledged (`[vcpuN] acked T`).
fn acked_any(r: &RunReport) -> Vec<u64> {
    r.console
        .iter()
        .filter_map(|l| {
            l.strip_prefix("[vcpu")?
                .split_once("] acked ")?
                .1
                .parse()
                .ok()
        })
        .collect()
}

/// The transactions the run found after recovery (`transactions found:
/// [1-5,7-9]`).
fn found_set(r: &RunReport) -> BTreeSet<u64> {
    let list = line(r, "transactions found: [")
        .and_then(|l| l.strip_suffix(']'))
        .unwrap_or_else(|| panic!("no list of transactions found: {:#?}", r.console));
    let mut set = BTreeSet::new();
    for range in list.split(',').filter(|s| !s.is_empty()) {
        let (a, b) = range.split_once('-').unwrap();
        set.extend(a.parse::<u64>().unwrap()..=b.parse().unwrap());
    }
    set
}

/// A disk holding a store with 32 transactions, from two runs of 16.
fn store_of_32(path: &Path) {
    for _ in 0..2 {
        let r = kvarray(path, &["16"]);
        assert_eq!(r.exit.process_status(), 0, "{:#?}", r.console);
    }
}

/// Runs `-- 0` on `path` holding `image`: the store must be refused with
/// a line containing `says`, and the disk left byte for byte as it was.
#[track_caller]
fn refused_untouched(path: &Path, image: &[u8], says: &str) -> String {
    std::fs::write(path, image).unwrap();
    let r = kvarray(path, &["0"]);
    let refusal = line(&r, "cannot open the store: ")
        .unwrap_or_else(|| panic!("not refused: {}\n{:#?}", r.exit, r.console))
        .to_string();
    assert_eq!(r.exit.process_status(), 1, "{:#?}", r.console);
    assert!(refusal.contains(says), "expected {says:?} in: {refusal}");
    assert!(acked(&r).is_empty());
    assert!(
        std::fs::read(path).unwrap() == image,
        "a refused store must be left exactly as it was"
    );
    refusal
}

/// Case 1: zeroing a log block, or one sector, with acknowledged commits
/// in the log after it. It was "torn tail at log sector 16, which holds
/// zeros", found 16 of 32, exit 0. No log sector is ever all zeros now:
/// refused at that sector, with the commits a truncation would lose.
#[test]
fn a_zeroed_log_block_or_sector_is_refused_not_taken_for_the_end() {
    if !require_kvm() {
        return;
    }
    let dir = scratch();
    let path = dir.path().join("kv.img");
    store_of_32(&path);
    let clean = std::fs::read(&path).unwrap();
    // `dd bs=4096 seek=4 count=1` (device block 4: log block 2) and `dd
    // bs=512 seek=38 count=1` (device block 4, its sector 6).
    for (from, len, block, sector_in_block) in
        [(4 * 4096, 4096, 4, None), (38 * 512, 512, 4, Some(6))]
    {
        let mut img = clean.clone();
        img[from..from + len].fill(0);
        let refusal = refused_untouched(&path, &img, "the log is corrupt: log sector ");
        let place = match sector_in_block {
            Some(s) => format!("(device block {block}, sector {s} of it,"),
            None => format!("(device block {block}, sector "),
        };
        assert!(refusal.contains(&place), "{place}: {refusal}");
        assert!(refusal.contains("holds zeros"), "{refusal}");
        assert!(refusal.contains("committed transactions"), "{refusal}");
    }
}

/// Case 2: zeroing the device's first blocks (5 of them, or the first
/// MiB). It was "fresh disk: formatting", found 0. The backup control
/// block in the last block names the store: refused; `format --force` is
/// the explicit way to reuse the disk.
#[test]
fn a_store_with_its_first_blocks_zeroed_is_refused_never_reformatted() {
    if !require_kvm() {
        return;
    }
    let dir = scratch();
    let path = dir.path().join("kv.img");
    store_of_32(&path);
    let clean = std::fs::read(&path).unwrap();
    let last = clean.len() / 4096 - 1;
    for blocks in [5, 256] {
        let mut img = clean.clone();
        img[..blocks * 4096].fill(0);
        let refusal = refused_untouched(&path, &img, "no valid control block");
        assert!(
            refusal.contains(&format!(
                "block {last}, the device's last, holds the backup control block of a store \
                 formatted here"
            )),
            "{refusal}"
        );
    }
    // The guest says what to do, and format without --force is a usage
    // error that writes nothing.
    let r = kvarray(&path, &["0"]);
    assert!(
        line(
            &r,
            "to discard whatever the disk holds and start a new store, run with: -- format --force"
        )
        .is_some(),
        "{:#?}",
        r.console
    );
    let damaged = std::fs::read(&path).unwrap();
    let r = kvarray(&path, &["format"]);
    assert_eq!(r.exit.process_status(), 2, "{:#?}", r.console);
    assert!(std::fs::read(&path).unwrap() == damaged);
    let r = kvarray(&path, &["format", "--force"]);
    assert_eq!(r.exit.process_status(), 0, "{:#?}", r.console);
    let r = kvarray(&path, &["2"]);
    assert_eq!(r.exit.process_status(), 0, "{:#?}", r.console);
    assert_eq!(
        line(&r, "found "),
        Some("0 committed transactions, 0 wrong")
    );
    assert_eq!(acked(&r), vec![1, 2]);
}

/// Case 6: data page 0 put back to an older valid copy after a checkpoint
/// had written a newer one. It was served (found 16 of 32). The
/// checkpoint's page-LSN table in the log says which LSN the page held:
/// refused, naming the page, its block and both LSNs.
#[test]
fn an_older_copy_of_a_data_page_is_refused() {
    if !require_kvm() {
        return;
    }
    let dir = scratch();
    let path = dir.path().join("kv.img");
    let r = kvarray(&path, &["16"]);
    assert_eq!(r.exit.process_status(), 0, "{:#?}", r.console);
    // The second run's recovery ends with a checkpoint: page 0 on storage
    // holds the first 16 transactions.
    let r = kvarray(&path, &["16"]);
    assert_eq!(r.exit.process_status(), 0, "{:#?}", r.console);
    let older = std::fs::read(&path).unwrap()[PAGE0_BLOCK * 4096..][..4096].to_vec();
    // The third run's checkpoint writes page 0 with all 32 and logs it.
    let r = kvarray(&path, &["0"]);
    assert_eq!(
        line(&r, "found "),
        Some("32 committed transactions, 0 wrong")
    );
    let mut img = std::fs::read(&path).unwrap();
    assert!(img[PAGE0_BLOCK * 4096..][..4096] != older[..]);
    img[PAGE0_BLOCK * 4096..][..4096].copy_from_slice(&older);
    refused_untouched(
        &path,
        &img,
        &format!("page 0 (device block {PAGE0_BLOCK}) is older on storage than the log says"),
    );
}

/// Several committers (one per vCPU, so commits meet in group commit)
/// under power cuts at seeded writes: every commit a run acknowledged is
/// found by the next, with every key right.
#[test]
fn two_committers_survive_power_cuts() {
    if !require_kvm() {
        return;
    }
    let dir = scratch();
    let path = dir.path().join("kv.img");
    let r = kvstore_on(&path, 2, &["8"], None);
    assert_eq!(r.exit.process_status(), 0, "{:#?}", r.console);
    let mut acked_all: BTreeSet<u64> = acked_any(&r).into_iter().collect();
    assert_eq!(acked_all, (1..=8).collect());
    let (mut lost, mut gaps) = (0, 0);
    for seed in 0..6u64 {
        let cut = PowerCutPlan {
            at: CutAt::Write(8 + seed * 5),
            seed,
        };
        let r = kvstore_on(&path, 2, &["15000"], Some(cut));
        assert!(
            matches!(r.exit, GuestExit::PowerCut { .. }),
            "seed {seed}: {}\n{:#?}",
            r.exit,
            r.console
        );
        let found = found_set(&r);
        assert!(
            acked_all.is_subset(&found),
            "seed {seed}: acknowledged {:?} not found",
            acked_all.difference(&found).collect::<Vec<_>>()
        );
        assert_eq!(
            line(&r, "found ").map(|l| l.ends_with(", 0 wrong")),
            Some(true)
        );
        if let GuestExit::PowerCut { cut, .. } = &r.exit {
            lost += cut.lost + cut.torn;
        }
        let max = found.iter().max().copied().unwrap_or(0);
        gaps += max - found.len() as u64;
        acked_all.extend(acked_any(&r));
    }
    let r = kvstore_on(&path, 2, &["0"], None);
    assert_eq!(r.exit.process_status(), 0, "{:#?}", r.console);
    assert!(acked_all.is_subset(&found_set(&r)));
    eprintln!(
        "two committers: {} acknowledged in all, {lost} writes lost or torn at the cuts, {gaps} \
         gaps left by cuts between two committers' commits",
        acked_all.len()
    );
    assert!(lost > 0, "no cut lost or tore a write");
}

/// The guest's usage errors exit 2 and write nothing.
#[test]
fn kvstore_usage_errors_exit_2() {
    if !require_kvm() {
        return;
    }
    let dir = scratch();
    let path = dir.path().join("kv.img");
    let r = kvarray(&path, &["1"]);
    assert_eq!(r.exit.process_status(), 0, "{:#?}", r.console);
    let image = std::fs::read(&path).unwrap();
    for args in [
        &["abc"][..],
        &["-5"],
        &["16", "fua", "extra"],
        &["16", "fsync"],
        &["16", "fua", "truncate", "1"],
        &["16", "fua", "truncate", "1", "2", "3"],
        &["format"],
        &["format", "--forc"],
        &["format", "--force", "now"],
        &["20000"],
    ] {
        let r = kvarray(&path, args);
        assert_eq!(r.exit.process_status(), 2, "{args:?}: {:#?}", r.console);
        assert!(acked(&r).is_empty(), "{args:?}");
        assert!(
            r.console.iter().any(|l| l.contains("usage: kvarray")),
            "{args:?}: {:#?}",
            r.console
        );
        assert!(std::fs::read(&path).unwrap() == image, "{args:?} wrote");
    }
}
