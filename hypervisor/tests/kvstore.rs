//! The key-value database guest (`examples/src/bin/kvstore.rs`): its job
//! end to end on 2 vCPUs, its disk opened as a process store (one format),
//! and power cuts at seeded writes while 2 vCPUs load and update: after
//! each cut the store opens, passes the tree's full check, and holds every
//! write the guest acknowledged (`acks 1` prints `acked RECORD VERSION`
//! once a write is durable); and large values on overflow pages growing
//! the store to the disk's end, where writes are refused as disk full.

mod common;

use common::{config, require_kvm, run, scratch};
use dbos_bufferpool::direct::DirectDevice;
use dbos_bufferpool::host::env;
use dbos_bufferpool::pool::vmcache::VmCache;
use dbos_bufferpool::{Config, PoolConfig};
use dbos_hypervisor::disk::{CutAt, DiskConfig, PowerCutPlan};
use dbos_hypervisor::{GuestExit, RunReport, VmConfig};
use dbos_kvstore::workload::{check_value, key_bytes};
use dbos_kvstore::Store;
use dbos_nvme::host::powercut::Rng;
use dbos_nvme::host::BackingFile;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// The guest's layout on this disk: 64 log blocks, about 190 data pages.
const DISK_BYTES: u64 = 1 << 20;
const VALUE_SIZE: usize = 100;

fn disk(path: &Path, create: Option<u64>, power_cut: Option<PowerCutPlan>) -> DiskConfig {
    DiskConfig {
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
            vcpus: 2,
            ..config(args)
        },
    )
}

/// The newest version acknowledged per record (`acked R V` lines).
fn acks(console: &[String]) -> BTreeMap<u64, u64> {
    let mut m = BTreeMap::new();
    for l in console {
        let Some((_, rest)) = l.split_once("] acked ") else {
            continue;
        };
        let (rec, ver) = rest.split_once(' ').expect("acked R V");
        let (rec, ver): (u64, u64) = (rec.parse().unwrap(), ver.parse().unwrap());
        let e = m.entry(rec).or_insert(0);
        *e = ver.max(*e);
    }
    m
}

/// Opens the disk image as a process store (recovering it), checks the
/// whole tree, and checks every acknowledged write; returns the entries.
#[track_caller]
fn check_as_process(path: &Path, acked: &BTreeMap<u64, u64>, what: &str) -> usize {
    check_as_process_sized(path, acked, VALUE_SIZE, what)
}

/// [`check_as_process`] for values of `value_size` bytes.
#[track_caller]
fn check_as_process_sized(
    path: &Path,
    acked: &BTreeMap<u64, u64>,
    value_size: usize,
    what: &str,
) -> usize {
    let file = Arc::new(BackingFile::open(path).unwrap());
    let f = file.clone();
    let make_pool = move |setup: dbos_bufferpool::PoolSetup| {
        VmCache::new(
            vec![DirectDevice::new(f.clone())],
            PoolConfig {
                relax: env().relax,
                ..setup.config(64)
            },
        )
    };
    let dev = DirectDevice::new(file.clone());
    let (store, _) = match Store::open(dev.another(), dev, Config::new(env()), make_pool) {
        Ok(s) => s,
        Err(e) => panic!("{what}: the store does not open: {e}"),
    };
    let n = match store.check() {
        Ok(n) => n,
        Err(e) => panic!("{what}: the tree fails its check: {e}"),
    };
    let (mut key, mut value) = (Vec::new(), Vec::new());
    for (&rec, &ver) in acked {
        key_bytes(rec, false, &mut key);
        assert!(
            store.get(&key, &mut value).unwrap(),
            "{what}: record {rec} (acknowledged at version {ver}) is missing"
        );
        let (r, v) = check_value(&value, value_size).expect("a well-formed value");
        assert!(
            r == rec && v >= ver,
            "{what}: record {rec} acknowledged at version {ver}, holds record {r} version {v}"
        );
    }
    n
}

#[test]
fn kvstore_guest_runs_its_job_and_its_disk_opens_as_a_process() {
    if !require_kvm() {
        return;
    }
    let dir = scratch();
    let path = dir.path().join("kv.db");
    let r = kvstore(
        &["records", "40", "ops", "20", "batch", "4", "acks", "1"],
        disk(&path, Some(DISK_BYTES), None),
    );
    assert_eq!(r.exit.process_status(), 0, "{:#?}", r.console);
    let text = r.console.join("\n");
    assert!(text.contains("[vcpu0] PASSED"), "{text}");
    assert_eq!(
        text.matches("40 records checked (40 acknowledged)").count(),
        2,
        "verified before and after the restart: {text}"
    );
    assert!(text.contains("0 missing, 0 wrong, 0 failed"), "{text}");
    // Tabby evicts without shootdowns: the counters say so per operation.
    assert!(
        text.contains("remote invalidations / op              0"),
        "{text}"
    );
    let acked = acks(&r.console);
    assert_eq!(acked.len(), 40, "every record acknowledged: {acked:?}");
    // Acknowledged by both vCPUs.
    assert!(text.contains("[vcpu1] acked "), "{text}");
    assert_eq!(check_as_process(&path, &acked, "the guest's disk"), 40);

    // Usage errors exit 2.
    for bad in [
        &["records"][..],
        &["workload", "z"],
        &["pool", "4"],
        &["bogus", "1"],
    ] {
        let r = kvstore(bad, disk(&path, None, None));
        assert_eq!(r.exit.process_status(), 2, "{bad:?}: {:#?}", r.console);
    }
}

#[test]
fn kvstore_guest_store_grows_to_the_disk_then_refuses_as_disk_full() {
    if !require_kvm() {
        return;
    }
    let dir = scratch();
    let path = dir.path().join("kv.db");
    // A disk of 384 blocks: 96 log blocks and 256 data pages at format,
    // room for 285. Each 12000-byte value takes 3 overflow pages (on
    // Tabby, from 2 vCPUs): 110 of them grow the store to the disk's end,
    // and the last are refused.
    let r = kvstore(
        &[
            "records", "110", "ops", "4", "batch", "1", "value", "12000", "acks", "1",
        ],
        disk(&path, Some(384 * 4096), None),
    );
    let text = r.console.join("\n");
    assert!(
        text.contains("formatting a store of 256 data pages"),
        "{text}"
    );
    assert!(text.contains("grew from 256 to 285 pages"), "{text}");
    assert!(
        text.contains("disk full") && text.contains("nothing acknowledged is lost"),
        "{text}"
    );
    let acked = acks(&r.console);
    assert!(
        acked.len() > 256 / 3 && acked.len() < 110,
        "{} acknowledged: {text}",
        acked.len()
    );
    let n = check_as_process_sized(&path, &acked, 12000, "the full guest disk");
    assert_eq!(n, acked.len(), "exactly the acknowledged records");
}

#[test]
fn kvstore_guest_keeps_every_acknowledged_write_through_power_cuts() {
    if !require_kvm() {
        return;
    }
    const SEEDS: u64 = 20;
    let dir = scratch();
    let base = dir.path().join("base.db");
    let path = dir.path().join("kv.db");
    // A formatted store holding 10 records.
    let r = kvstore(
        &["records", "10", "ops", "10"],
        disk(&base, Some(DISK_BYTES), None),
    );
    assert_eq!(r.exit.process_status(), 0, "{:#?}", r.console);
    let job = [
        "records", "30", "ops", "30", "batch", "4", "acks", "1", "pool", "16",
    ];
    // The writes of a whole run, on the model (armed with a cut that never
    // comes): the cuts fall among them.
    std::fs::copy(&base, &path).unwrap();
    let never = PowerCutPlan {
        at: CutAt::Write(u64::MAX),
        seed: 0,
    };
    let r = kvstore(&job, disk(&path, None, Some(never)));
    assert_eq!(r.exit.process_status(), 0, "{:#?}", r.console);
    let writes = r.power_cut_model.unwrap().write_commands;
    assert!(writes > 20, "{writes} writes");
    let (mut cut_acking, mut lost, mut cuts) = (0, 0, 0);
    for seed in 0..SEEDS {
        let mut rng = Rng::new(seed);
        std::fs::copy(&base, &path).unwrap();
        // Within the first three quarters of the calibration run's writes:
        // with 2 vCPUs a run's writes vary (commits meet in group commit
        // or not), and a run that makes fewer ends before its cut.
        let plan = PowerCutPlan {
            at: CutAt::Write(1 + rng.below(writes * 3 / 4)),
            seed: rng.next_u64(),
        };
        let r = kvstore(&job, disk(&path, None, Some(plan)));
        match &r.exit {
            GuestExit::PowerCut { cut, .. } => {
                cuts += 1;
                lost += cut.lost + cut.torn;
            }
            // The run ended before its cut: its store is checked all the
            // same.
            e if e.process_status() == 0 => {}
            e => panic!("seed {seed}: neither cut nor done: {e}\n{:#?}", r.console),
        }
        let acked = acks(&r.console);
        if !acked.is_empty() {
            cut_acking += 1;
        }
        check_as_process(&path, &acked, &format!("seed {seed}"));
    }
    assert!(
        cut_acking >= SEEDS / 2,
        "most cuts came after writes were acknowledged ({cut_acking} of {SEEDS})"
    );
    assert!(lost > 0, "the cuts lost or tore writes not yet durable");
    assert!(cuts >= SEEDS * 3 / 4, "{cuts} of {SEEDS} runs were cut");
}

/// `dbos run` killed with SIGKILL while the guest loads and updates (after
/// 5, 20 and 40 acknowledged writes): the disk holds every acknowledged
/// write and a whole tree.
#[test]
fn kvstore_guest_keeps_every_acknowledged_write_when_the_vmm_is_killed() {
    if !require_kvm() {
        return;
    }
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};
    for kill_after in [5usize, 20, 40] {
        let dir = scratch();
        let path = dir.path().join("kv.db");
        let mut child = Command::new(env!("CARGO_BIN_EXE_dbos"))
            .args([
                "run",
                "--vcpus",
                "2",
                "--disk",
                path.to_str().unwrap(),
                "--disk-size",
                "1M",
                "--disk-spin-us",
                "200000",
                &common::image("kvstore"),
                "--",
                "records",
                "100",
                "ops",
                "100",
                "batch",
                "2",
                "acks",
                "1",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut lines = Vec::new();
        let mut acked = 0;
        for line in BufReader::new(child.stdout.take().unwrap()).lines() {
            let line = line.unwrap();
            if line.contains("] acked ") {
                acked += 1;
            }
            lines.push(line);
            if acked == kill_after {
                child.kill().unwrap(); // SIGKILL
                break;
            }
        }
        child.wait().unwrap();
        assert_eq!(acked, kill_after, "the run ended early: {lines:#?}");
        let acks = acks(&lines);
        check_as_process(&path, &acks, &format!("killed after {kill_after} acks"));
    }
}

#[test]
fn kvstore_guest_memory_engine_snapshots_with_snappy_through_the_workload_driver() {
    if !require_kvm() {
        return;
    }
    let r = run(
        "kvstore",
        VmConfig {
            vcpus: 2,
            ..config(&["memory", "records", "120", "ops", "60", "heap", "1024"])
        },
    );
    assert_eq!(r.exit.process_status(), 0, "{:#?}", r.console);
    let text = r.console.join("\n");
    assert!(text.contains("[vcpu0] PASSED"), "{text}");
    // Both snapshots' files hold exactly the table at their snapshot.
    assert_eq!(
        text.matches("read back: 120 records, exactly the table at the snapshot")
            .count(),
        2,
        "{text}"
    );
    assert!(
        text.contains("verify the live table: verify: 120 records checked (120 acknowledged)"),
        "{text}"
    );
    // Taking a snapshot writes 2 page-table entries, before and after the
    // run alike (Snappy's take is constant in the data).
    assert_eq!(
        text.matches("2 page-table writes, 0 local invalidations")
            .count(),
        2,
        "{text}"
    );
    // The run wrote to pages the first snapshot shares: they were copied.
    assert!(
        !text.contains("while the snapshot lived: 0 copy-on-write faults"),
        "{text}"
    );
    // Usage errors exit 2: a scan workload, a bad option.
    for bad in [
        &["memory", "workload", "e"][..],
        &["memory", "heap"],
        &["memory", "x", "1"],
    ] {
        let r = run("kvstore", config(bad));
        assert_eq!(r.exit.process_status(), 2, "{bad:?}: {:#?}", r.console);
    }
}
