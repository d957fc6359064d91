//! Tests of the driver over an in-memory store.

use super::*;
use crate::workload::spec::{Distribution, Workload};
use alloc::collections::BTreeMap;
use alloc::string::ToString;
use alloc::vec;
use core::cell::RefCell;
use core::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Mutex, OnceLock};
use std::time::Instant;

/// A `Kv` over a locked `BTreeMap`, with faults to inject.
#[derive(Default)]
struct MemKv {
    map: Mutex<BTreeMap<Vec<u8>, Vec<u8>>>,
    /// Puts (alone or in a transaction) of this key fail.
    fail_put: Option<Vec<u8>>,
    /// Scans deliver their entries in descending order.
    reverse_scans: bool,
    /// Scans return one more than they delivered.
    miscount_scans: bool,
    puts: AtomicU64,
    transactions: AtomicU64,
}

const INJECTED: &str = "injected failure";

impl Kv for MemKv {
    type Error = &'static str;

    fn get(&self, key: &[u8], out: &mut Vec<u8>) -> Result<bool, Self::Error> {
        out.clear();
        match self.map.lock().unwrap().get(key) {
            Some(v) => {
                out.extend_from_slice(v);
                Ok(true)
            }
            None => Ok(false),
        }
    }

    fn put(&self, key: &[u8], value: &[u8]) -> Result<bool, Self::Error> {
        self.puts.fetch_add(1, Relaxed);
        if self.fail_put.as_deref() == Some(key) {
            return Err(INJECTED);
        }
        Ok(self
            .map
            .lock()
            .unwrap()
            .insert(key.to_vec(), value.to_vec())
            .is_none())
    }

    fn delete(&self, key: &[u8]) -> Result<bool, Self::Error> {
        Ok(self.map.lock().unwrap().remove(key).is_some())
    }

    fn transaction(&self, ops: &[Op<'_>]) -> Result<(), Self::Error> {
        self.transactions.fetch_add(1, Relaxed);
        let mut map = self.map.lock().unwrap();
        for op in ops {
            if let Op::Put { key, .. } = op {
                if self.fail_put.as_deref() == Some(*key) {
                    return Err(INJECTED);
                }
            }
        }
        for op in ops {
            match *op {
                Op::Put { key, value } => {
                    map.insert(key.to_vec(), value.to_vec());
                }
                Op::Delete { key } => {
                    map.remove(key);
                }
            }
        }
        Ok(())
    }

    fn scan(
        &self,
        start: &[u8],
        limit: usize,
        f: &mut dyn FnMut(&[u8], &[u8]),
    ) -> Result<usize, Self::Error> {
        let map = self.map.lock().unwrap();
        let mut entries: Vec<(&Vec<u8>, &Vec<u8>)> =
            map.range(start.to_vec()..).take(limit).collect();
        if self.reverse_scans {
            entries.reverse();
        }
        for (k, v) in &entries {
            f(k, v);
        }
        Ok(entries.len() + usize::from(self.miscount_scans))
    }
}

impl MemKv {
    fn set(&self, record: u64, ordered: bool, value: Vec<u8>) {
        let mut key = Vec::new();
        key_bytes(record, ordered, &mut key);
        self.map.lock().unwrap().insert(key, value);
    }

    fn value(&self, record: u64, ordered: bool) -> Option<Vec<u8>> {
        let mut key = Vec::new();
        key_bytes(record, ordered, &mut key);
        self.map.lock().unwrap().get(&key).cloned()
    }

    fn len(&self) -> usize {
        self.map.lock().unwrap().len()
    }
}

fn now() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

fn quiet(_: u64) {}

/// Runs `phase` on `spec.threads` threads and merges their stats.
fn threads<T: Send>(
    spec: &Spec,
    phase: impl Fn(usize) -> T + Sync,
    merge: impl Fn(&mut T, &T),
) -> T {
    let results: Vec<T> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..spec.threads)
            .map(|t| {
                s.spawn({
                    let phase = &phase;
                    move || phase(t)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut results = results.into_iter();
    let mut all = results.next().unwrap();
    for r in results {
        merge(&mut all, &r);
    }
    all
}

fn load_all(kv: &MemKv, spec: &Spec, acked: &Acked) -> Stats {
    threads(
        spec,
        |t| load(kv, spec, acked, t, now, &quiet),
        Stats::merge,
    )
}

fn run_all(kv: &MemKv, spec: &Spec, acked: &Acked) -> Stats {
    threads(spec, |t| run(kv, spec, acked, t, now, &quiet), Stats::merge)
}

fn verify_all(kv: &MemKv, spec: &Spec, acked: &Acked) -> Verification {
    threads(
        spec,
        |t| verify(kv, spec, acked, t, now, &quiet),
        Verification::merge,
    )
}

fn assert_clean(stats: &Stats) {
    assert_eq!(stats.problems(), (0, 0, 0), "{stats:?}");
    assert!(stats.first_failure.is_none());
    assert!(stats.wrong_records.as_slice().is_empty());
    assert!(stats.missing_records.as_slice().is_empty());
}

#[test]
fn every_workload_on_two_threads() {
    for workload in Workload::ALL {
        for distribution in [Distribution::Uniform, Distribution::Zipfian] {
            let spec = Spec {
                workload,
                distribution,
                records: 500,
                operations: 4000,
                value_size: 64,
                threads: 2,
                seed: 7,
                ..Spec::default()
            };
            let what = std::format!("{spec}");
            let kv = MemKv::default();
            let acked = Acked::new(&spec);

            let loaded = load_all(&kv, &spec, &acked);
            assert_clean(&loaded);
            assert_eq!(loaded.total(), 500);
            assert_eq!(loaded.op(OpKind::Insert).count, 500);
            assert_eq!(loaded.op(OpKind::Insert).latency.count(), 500);
            assert_eq!(kv.len(), 500);

            let stats = run_all(&kv, &spec, &acked);
            assert_clean(&stats);
            assert_eq!(stats.total(), 4000, "{what}");
            for kind in OpKind::ALL {
                let op = stats.op(kind);
                assert_eq!(op.latency.count(), op.count, "{what} {kind:?}");
                // Within 5 standard deviations of the mix's proportion.
                let p = f64::from(workload.mix()[kind.index()]) / 100.0;
                let expect = 4000.0 * p;
                let sd = (expect * (1.0 - p)).sqrt();
                assert!(
                    (op.count as f64 - expect).abs() <= 5.0 * sd,
                    "{what}: {} {kind:?}, expected {expect}",
                    op.count
                );
            }

            // Every insert was acknowledged and became available.
            let inserts = stats.op(OpKind::Insert).count;
            assert_eq!(acked.claimed(), 500 + inserts, "{what}");
            assert_eq!(acked.available(), 500 + inserts, "{what}");
            assert_eq!(kv.len() as u64, 500 + inserts, "{what}");

            // Every write took one version: the load's, the updates',
            // the inserts' and the read-modify-writes'.
            let issued: u64 = (0..acked.claimed()).map(|r| acked.issued(r)).sum();
            let writes = 500
                + stats.op(OpKind::Update).count
                + inserts
                + stats.op(OpKind::ReadModifyWrite).count;
            assert_eq!(issued, writes, "{what}");

            if workload == Workload::E {
                let scans = stats.op(OpKind::Scan).count;
                // Lengths are uniform in 1..=100 (mean 50.5), less where
                // a scan starts near the end of the keys.
                let mean = stats.scanned as f64 / scans as f64;
                assert!((40.0..=52.0).contains(&mean), "{what}: {mean}");
            } else {
                assert_eq!(stats.scanned, 0);
            }

            let v = verify_all(&kv, &spec, &acked);
            assert!(v.passed(), "{what}: {v}");
            assert_eq!(v.checked, 500 + inserts);
            assert_eq!(v.acknowledged, 500 + inserts);
        }
    }
}

#[test]
fn a_seed_fixes_the_run() {
    let spec = Spec {
        workload: Workload::E,
        records: 200,
        operations: 1000,
        value_size: 40,
        seed: 99,
        ..Spec::default()
    };
    let once = || {
        let kv = MemKv::default();
        let acked = Acked::new(&spec);
        load_all(&kv, &spec, &acked);
        let stats = run_all(&kv, &spec, &acked);
        let counts: Vec<u64> = stats.ops.iter().map(|o| o.count).collect();
        (counts, stats.scanned, kv.map.into_inner().unwrap())
    };
    let (a, b) = (once(), once());
    assert_eq!(a, b);
    let other = Spec { seed: 100, ..spec };
    let kv = MemKv::default();
    let acked = Acked::new(&other);
    load_all(&kv, &other, &acked);
    let stats = run_all(&kv, &other, &acked);
    assert_ne!(stats.scanned, a.1);
}

#[test]
fn verify_finds_missing_and_wrong_records() {
    let spec = Spec {
        workload: Workload::D,
        records: 100,
        value_size: 32,
        threads: 2,
        ..Spec::default()
    };
    let kv = MemKv::default();
    let acked = Acked::new(&spec);
    load_all(&kv, &spec, &acked);
    assert!(verify_all(&kv, &spec, &acked).passed());

    let o = spec.ordered_keys;
    let mut key = Vec::new();
    // 5: deleted.
    key_bytes(5, o, &mut key);
    assert_eq!(kv.delete(&key), Ok(true));
    // 7: holds record 8's value.
    kv.set(7, o, kv.value(8, o).unwrap());
    // 9: acknowledged at version 2, holds version 1.
    let w = acked.begin_write(9);
    let mut v2 = Vec::new();
    encode_value(9, w.version, 32, &mut v2);
    kv.set(9, o, v2);
    acked.end_write(w, true);
    let mut v1 = Vec::new();
    encode_value(9, 1, 32, &mut v1);
    kv.set(9, o, v1);
    // 11: one byte of its fill flipped.
    let mut v = kv.value(11, o).unwrap();
    v[20] ^= 0x10;
    kv.set(11, o, v);
    // 13: a version never written.
    let mut v5 = Vec::new();
    encode_value(13, 5, 32, &mut v5);
    kv.set(13, o, v5);
    // 60: too short.
    kv.set(60, o, vec![0; 16]);
    // An insert claimed but never written: absent, and that is fine.
    assert_eq!(acked.claim_insert(), Some(100));

    let mut v = verify_all(&kv, &spec, &acked);
    assert!(!v.passed());
    assert_eq!((v.checked, v.acknowledged), (101, 100));
    assert_eq!((v.missing, v.wrong, v.failed), (1, 5, 0));
    assert_eq!(v.missing_records.as_slice(), [5]);
    assert_eq!(v.wrong_records.as_slice(), [7, 9, 11, 13, 60]);
    v.elapsed_ns = 12_000_000;
    assert_eq!(
        v.to_string(),
        "verify: 101 records checked (100 acknowledged) in 0.012 s: 1 missing, 5 wrong, 0 failed\n\
         \x20 missing records: 5\n\
         \x20 wrong records: 7, 9, 11, 13, 60\n"
    );

    // A higher version than acknowledged is fine (written, not yet
    // acknowledged when a crash came).
    let w = acked.begin_write(20);
    let mut v = Vec::new();
    encode_value(20, w.version, 32, &mut v);
    kv.set(20, o, v);
    let v = verify(&kv, &spec, &acked, 0, now, &quiet);
    assert_eq!(v.wrong_records.as_slice(), [7, 9, 11, 13]);
    acked.end_write(w, false);
}

#[test]
fn reads_catch_wrong_and_stale_values() {
    let spec = Spec {
        workload: Workload::C,
        distribution: Distribution::Uniform,
        records: 50,
        operations: 1000,
        value_size: 24,
        ..Spec::default()
    };
    let kv = MemKv::default();
    let acked = Acked::new(&spec);
    load_all(&kv, &spec, &acked);
    assert_clean(&run_all(&kv, &spec, &acked));

    // Every record holds the next record's value: every read is wrong.
    let values: Vec<Vec<u8>> = (0..50).map(|r| kv.value(r, false).unwrap()).collect();
    for r in 0..50 {
        kv.set(r, false, values[(r as usize + 1) % 50].clone());
    }
    let stats = run_all(&kv, &spec, &acked);
    assert_eq!(stats.op(OpKind::Read).count, 1000);
    assert_eq!(stats.op(OpKind::Read).wrong, 1000);
    assert_eq!(stats.wrong_records.as_slice().len(), Offenders::KEPT);

    // Every record acknowledged at version 2 but holding version 1: every
    // read is stale.
    for r in 0..50 {
        kv.set(r, false, values[r as usize].clone());
        let w = acked.begin_write(r);
        acked.end_write(w, true);
    }
    let stats = run_all(&kv, &spec, &acked);
    assert_eq!(stats.op(OpKind::Read).wrong, 1000);

    // With the records written at version 2, all is well again.
    for r in 0..50 {
        let mut v = Vec::new();
        encode_value(r, 2, 24, &mut v);
        kv.set(r, false, v);
    }
    assert_clean(&run_all(&kv, &spec, &acked));
}

/// A runner over `kv` for the scan tests: 20 records, ordered keys.
fn scan_once(kv: &MemKv, record: u64, len: usize) -> Stats {
    let spec = Spec {
        workload: Workload::E,
        records: 20,
        value_size: 16,
        ordered_keys: true,
        ..Spec::default()
    };
    let acked = Acked::new(&spec);
    if kv.len() == 0 {
        load(kv, &spec, &acked, 0, now, &quiet);
    } else {
        for r in 0..20 {
            let w = acked.begin_write(r);
            acked.end_write(w, true);
        }
    }
    let mut runner = Runner {
        kv,
        spec: &spec,
        acked: &acked,
        now_ns: now,
        stats: Stats::default(),
        key: Vec::new(),
        value: Vec::new(),
        out: Vec::new(),
        scratch: Vec::new(),
    };
    runner.scan(record, len);
    runner.stats
}

#[test]
fn scans_are_checked() {
    let kv = MemKv::default();
    let s = scan_once(&kv, 3, 5);
    assert_clean(&s);
    assert_eq!((s.op(OpKind::Scan).count, s.scanned), (1, 5));
    // Past the end: fewer entries, still fine.
    let s = scan_once(&kv, 17, 10);
    assert_clean(&s);
    assert_eq!(s.scanned, 3);

    // Descending order.
    let reversed = MemKv {
        reverse_scans: true,
        ..MemKv::default()
    };
    let s = scan_once(&reversed, 3, 5);
    assert_eq!(s.problems(), (0, 0, 1));
    assert_eq!(s.wrong_records.as_slice(), [6]);
    // One entry cannot be out of order.
    assert_clean(&scan_once(&reversed, 19, 5));
    assert_clean(&scan_once(&reversed, 3, 1));

    // A count that is not what was delivered.
    let miscounted = MemKv {
        miscount_scans: true,
        ..MemKv::default()
    };
    let s = scan_once(&miscounted, 3, 5);
    assert_eq!(s.problems(), (0, 0, 1));
    assert_eq!(s.wrong_records.as_slice(), [3]);

    // The start record missing: the scan begins at the next one.
    let mut key = Vec::new();
    key_bytes(3, true, &mut key);
    kv.delete(&key).unwrap();
    let s = scan_once(&kv, 3, 5);
    assert_eq!(s.problems(), (0, 1, 0));
    assert_eq!(s.missing_records.as_slice(), [3]);
    assert_eq!(s.scanned, 5);

    // An entry holding another record's value.
    kv.set(3, true, kv.value(4, true).unwrap());
    kv.set(5, true, kv.value(6, true).unwrap());
    let s = scan_once(&kv, 0, 10);
    assert_eq!(s.problems(), (0, 0, 1));
    assert_eq!(s.wrong_records.as_slice(), [4]);
}

#[test]
fn load_in_transactions() {
    let spec = Spec {
        records: 100,
        value_size: 50,
        threads: 2,
        load_batch: 16,
        ..Spec::default()
    };
    let kv = MemKv::default();
    let acked = Acked::new(&spec);
    let stats = load_all(&kv, &spec, &acked);
    assert_clean(&stats);
    // Each thread loads 50 records: three transactions of 16, then two
    // records in a fourth.
    assert_eq!(kv.transactions.load(Relaxed), 8);
    assert_eq!(kv.puts.load(Relaxed), 0);
    assert_eq!(stats.op(OpKind::Insert).count, 100);
    assert_eq!(stats.op(OpKind::Insert).latency.count(), 100);
    assert_eq!(kv.len(), 100);
    let v = verify_all(&kv, &spec, &acked);
    assert!(v.passed(), "{v}");
    assert_eq!(v.acknowledged, 100);

    // The same store content as one put per record.
    let one = MemKv::default();
    let single = Spec {
        load_batch: 1,
        ..spec
    };
    load_all(&one, &single, &Acked::new(&single));
    assert_eq!(one.puts.load(Relaxed), 100);
    assert_eq!(one.map.into_inner().unwrap(), kv.map.into_inner().unwrap());
}

#[test]
fn failures_are_counted_and_reported() {
    let mut fail = Vec::new();
    key_bytes(3, false, &mut fail);
    for batch in [1, 4] {
        let spec = Spec {
            records: 10,
            operations: 400,
            value_size: 16,
            distribution: Distribution::Uniform,
            load_batch: batch,
            ..Spec::default()
        };
        let kv = MemKv {
            fail_put: Some(fail.clone()),
            ..MemKv::default()
        };
        let acked = Acked::new(&spec);
        let loaded = load_all(&kv, &spec, &acked);
        // One put fails alone; a transaction fails with all its records
        // (0..4 hold record 3).
        let lost = if batch == 1 { 1 } else { 4 };
        assert_eq!(loaded.problems(), (lost, 0, 0));
        assert_eq!(
            loaded.first_failure.as_deref(),
            Some(if batch == 1 {
                "insert of record 3: injected failure"
            } else {
                "insert of record 0: injected failure"
            })
        );
        assert_eq!(acked.acked(3), 0);
        assert_eq!(kv.len() as u64, 10 - lost);
        // Records never acknowledged may be absent.
        let v = verify_all(&kv, &spec, &acked);
        assert!(v.passed(), "{v}");
        assert_eq!((v.checked, v.acknowledged), (10, 10 - lost));

        let stats = run_all(&kv, &spec, &acked);
        let (read, update) = (stats.op(OpKind::Read), stats.op(OpKind::Update));
        assert_eq!(read.count + update.count, 400);
        assert_eq!(read.wrong + update.wrong, 0);
        // Updates of record 3 keep failing.
        assert!(update.failed > 0);
        assert_eq!(
            stats.first_failure.as_deref(),
            Some("update of record 3: injected failure")
        );
        // Reads of lost records find nothing, and so do updates, which
        // then create them (but those of record 3 fail).
        assert!(read.not_found > 0);
        let lost_records = if batch == 1 { 3..4 } else { 0..4 };
        assert!(stats
            .missing_records
            .as_slice()
            .iter()
            .all(|r| lost_records.contains(r)));
        if batch == 1 {
            assert_eq!(update.not_found, 0);
        }
        let v = verify_all(&kv, &spec, &acked);
        assert!(v.passed(), "{v}");
    }
}

#[test]
fn progress_about_every_percent() {
    let spec = Spec {
        records: 1000,
        operations: 250,
        value_size: 16,
        ..Spec::default()
    };
    let kv = MemKv::default();
    let acked = Acked::new(&spec);
    let seen = RefCell::new(Vec::new());
    let note = |n: u64| seen.borrow_mut().push(n);
    load(&kv, &spec, &acked, 0, now, &note);
    assert_eq!(
        *seen.borrow(),
        (1..=100).map(|i| i * 10).collect::<Vec<u64>>()
    );
    seen.borrow_mut().clear();
    run(&kv, &spec, &acked, 0, now, &note);
    // Every 2 operations (250/100), up to 250 exactly once.
    assert_eq!(
        *seen.borrow(),
        (1..=125).map(|i| i * 2).collect::<Vec<u64>>()
    );
}

#[test]
fn stats_merge() {
    let mut a = Stats::default();
    let mut b = Stats::default();
    a.ops[0].count = 3;
    a.ops[0].latency.record_n(1000, 3);
    a.wrong(OpKind::Read, 4);
    b.ops[0].count = 2;
    b.ops[0].latency.record_n(3000, 2);
    b.missing(OpKind::Update, 9);
    b.failure(OpKind::Scan, 1, &"boom");
    b.scanned = 7;
    b.elapsed_ns = 5;
    a.elapsed_ns = 4;
    a.merge(&b);
    assert_eq!(a.total(), 5);
    assert_eq!(a.op(OpKind::Read).latency.mean(), 1800.0);
    assert_eq!(a.problems(), (1, 1, 1));
    assert_eq!((a.scanned, a.elapsed_ns), (7, 5));
    assert_eq!(a.wrong_records.as_slice(), [4]);
    assert_eq!(a.missing_records.as_slice(), [9]);
    assert_eq!(a.first_failure.as_deref(), Some("scan of record 1: boom"));

    let mut o = Offenders::default();
    for r in 0..20 {
        o.push(r);
    }
    assert_eq!(o.as_slice(), [0, 1, 2, 3, 4, 5, 6, 7]);
    assert_eq!(o.to_string(), "0, 1, 2, 3, 4, 5, 6, 7");
}

#[test]
fn report_layout() {
    let spec = Spec {
        threads: 2,
        ..Spec::default()
    };
    let mut stats = Stats::default();
    let read = &mut stats.ops[OpKind::Read.index()];
    read.count = 3;
    for ns in [1000, 2000, 3000] {
        read.latency.record(ns);
    }
    let update = &mut stats.ops[OpKind::Update.index()];
    update.count = 1;
    update.latency.record(5000);
    stats.failure(OpKind::Update, 12, &"disk on fire");
    let report = Report {
        phase: "run",
        spec: &spec,
        stats: &stats,
        elapsed_ns: 2_000_000_000,
        counters: &[("page reads", 12345.0), ("hit ratio", 0.98765)],
    };
    let text = report.to_string();
    std::println!("{text}");
    let mut via_write = String::new();
    report.write_to(&mut via_write).unwrap();
    assert_eq!(via_write, text);
    assert_eq!(
        text,
        "run: workload a (50% read, 50% update), zipfian keys, 1000 records, 1000 operations, \
         1000-byte values, 2 threads, seed 1\n\
         4 operations in 2.000 s: 2.0 ops/s; 1 failed, 0 not found, 0 wrong\n\
         \n\
         operation               count       ops/s  failed  notfound   wrong |     mean      p50      p90      p99    p99.9      max\n\
         read                        3         1.5       0         0       0 |      2.0      2.0      3.0      3.0      3.0      3.0\n\
         update                      1         0.5       1         0       0 |      5.0      5.0      5.0      5.0      5.0      5.0\n\
         total                       4         2.0       1         0       0 |      2.8      2.0      5.0      5.0      5.0      5.0\n\
         latency in microseconds (mean, percentiles, max); scans delivered 0 entries\n\
         first failure: update of record 12: disk on fire\n\
         \n\
         page reads                        12345\n\
         hit ratio                        0.9877\n"
    );
}
