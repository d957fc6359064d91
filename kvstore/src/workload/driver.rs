//! The load, run and verify phases over any [`Kv`], per thread, and the
//! statistics they return.
//!
//! Each phase function does one thread's share of the work and returns
//! its own [`Stats`] (or [`Verification`]); the caller starts the
//! threads, merges the results and formats a [`Report`]. Time comes from
//! the caller's `now_ns` (a monotonic clock in nanoseconds), progress goes
//! to the caller's `progress` (about every 1% of the thread's share, and
//! once at the end, with the operations this thread has done).

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;

use super::acked::{Acked, PendingWrite};
use super::histogram::Histogram;
use super::keys::{key_bytes, KEY_LEN};
use super::rng::Rng;
use super::spec::{OpKind, Spec, MAX_LOAD_BATCH, MAX_SCAN};
use super::value::{check_value, encode_value};
use crate::{Kv, Op};

/// Up to [`Offenders::KEPT`] record numbers, the first ones found.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Offenders {
    len: usize,
    records: [u64; Offenders::KEPT],
}

impl Offenders {
    /// How many record numbers are kept.
    pub const KEPT: usize = 8;

    /// Keeps `record` if there is room.
    pub fn push(&mut self, record: u64) {
        if self.len < Self::KEPT {
            self.records[self.len] = record;
            self.len += 1;
        }
    }

    /// The records kept, in the order found.
    pub fn as_slice(&self) -> &[u64] {
        &self.records[..self.len]
    }

    /// Keeps `other`'s records after these, while there is room.
    pub fn merge(&mut self, other: &Offenders) {
        for &r in other.as_slice() {
            self.push(r);
        }
    }
}

impl fmt::Display for Offenders {
    /// "5, 7, 12".
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, r) in self.as_slice().iter().enumerate() {
            write!(f, "{}{r}", if i == 0 { "" } else { ", " })?;
        }
        Ok(())
    }
}

/// The counts and latencies of one kind of operation.
#[derive(Clone, Debug, Default)]
pub struct OpStats {
    /// Operations done (all of them, whatever their outcome).
    pub count: u64,
    /// Operations the store returned an error for.
    pub failed: u64,
    /// Operations that did not find a record that exists (a read or
    /// scan that found no value, an update whose put created the key).
    pub not_found: u64,
    /// Operations that saw a wrong value: another record's, malformed,
    /// older than acknowledged, a version never written, scan entries out
    /// of order, an insert of a key that existed.
    pub wrong: u64,
    /// The latency of every operation, in nanoseconds (load batches: the
    /// batch's latency for each record in it).
    pub latency: Histogram,
}

impl OpStats {
    /// Adds `other`'s counts and latencies.
    pub fn merge(&mut self, other: &OpStats) {
        self.count += other.count;
        self.failed += other.failed;
        self.not_found += other.not_found;
        self.wrong += other.wrong;
        self.latency.merge(&other.latency);
    }
}

/// What one thread's load or run did; [`Stats::merge`] the threads'.
#[derive(Clone, Debug, Default)]
pub struct Stats {
    /// Per kind of operation, indexed by [`OpKind::index`].
    pub ops: [OpStats; OpKind::COUNT],
    /// Entries the scans delivered.
    pub scanned: u64,
    /// The thread's time from its first operation to its last (merged:
    /// the longest).
    pub elapsed_ns: u64,
    /// The first records found wrong.
    pub wrong_records: Offenders,
    /// The first records found missing.
    pub missing_records: Offenders,
    /// The first error the store returned, with its operation and record.
    pub first_failure: Option<String>,
}

impl Stats {
    /// The stats of one kind of operation.
    pub fn op(&self, kind: OpKind) -> &OpStats {
        &self.ops[kind.index()]
    }

    /// Operations of every kind.
    pub fn total(&self) -> u64 {
        self.ops.iter().map(|o| o.count).sum()
    }

    /// Failed, not-found and wrong operations of every kind.
    pub fn problems(&self) -> (u64, u64, u64) {
        self.ops.iter().fold((0, 0, 0), |(f, n, w), o| {
            (f + o.failed, n + o.not_found, w + o.wrong)
        })
    }

    /// Every thread's stats added together (`parts` not empty).
    pub fn merged(parts: &[Stats]) -> Stats {
        let mut all = parts[0].clone();
        for p in &parts[1..] {
            all.merge(p);
        }
        all
    }

    /// Adds another thread's stats.
    pub fn merge(&mut self, other: &Stats) {
        for (a, b) in self.ops.iter_mut().zip(other.ops.iter()) {
            a.merge(b);
        }
        self.scanned += other.scanned;
        self.elapsed_ns = self.elapsed_ns.max(other.elapsed_ns);
        self.wrong_records.merge(&other.wrong_records);
        self.missing_records.merge(&other.missing_records);
        if self.first_failure.is_none() {
            self.first_failure.clone_from(&other.first_failure);
        }
    }

    fn failure(&mut self, kind: OpKind, record: u64, error: &dyn fmt::Display) {
        self.ops[kind.index()].failed += 1;
        if self.first_failure.is_none() {
            self.first_failure = Some(format!("{} of record {record}: {error}", kind.name()));
        }
    }

    fn wrong(&mut self, kind: OpKind, record: u64) {
        self.ops[kind.index()].wrong += 1;
        self.wrong_records.push(record);
    }

    fn missing(&mut self, kind: OpKind, record: u64) {
        self.ops[kind.index()].not_found += 1;
        self.missing_records.push(record);
    }
}

/// Calls `progress` about every 1% of `share` operations.
struct Progress<'a> {
    every: u64,
    next: u64,
    f: &'a dyn Fn(u64),
}

impl<'a> Progress<'a> {
    fn new(share: u64, f: &'a dyn Fn(u64)) -> Self {
        let every = (share / 100).max(1);
        Progress {
            every,
            next: every,
            f,
        }
    }

    fn tick(&mut self, done: u64) {
        if done >= self.next {
            (self.f)(done);
            self.next = done + self.every;
        }
    }

    /// Reports the end, unless the last tick already did.
    fn finish(&mut self, done: u64) {
        if done + self.every != self.next {
            (self.f)(done);
        }
    }
}

fn checked_spec(spec: &Spec, thread: usize) {
    if let Err(e) = spec.validate() {
        panic!("invalid workload spec: {e}");
    }
    assert!(thread < spec.threads, "thread {thread} of {}", spec.threads);
}

/// Loads thread `thread`'s share of records `0..spec.records` (see
/// [`Spec::share`]): record `i` under [`key_bytes`]`(i)` with its version
/// 1 value ([`encode_value`]). With `spec.load_batch` above 1 the puts go
/// in transactions of that many records. Every acknowledged record is
/// noted in `acked`. The stats count the puts as inserts.
pub fn load<K: Kv + ?Sized>(
    kv: &K,
    spec: &Spec,
    acked: &Acked,
    thread: usize,
    now_ns: fn() -> u64,
    progress: &dyn Fn(u64),
) -> Stats {
    checked_spec(spec, thread);
    let share = spec.share(spec.records, thread);
    let (batch, size) = (spec.load_batch as u64, spec.value_size);
    let mut progress = Progress::new(share.end - share.start, progress);
    let mut stats = Stats::default();
    let (mut key, mut value) = (Vec::with_capacity(KEY_LEN), Vec::with_capacity(size));
    let mut keys = Vec::with_capacity(KEY_LEN * spec.load_batch);
    let mut values = Vec::with_capacity(size * spec.load_batch);
    let mut writes: Vec<PendingWrite> = Vec::with_capacity(spec.load_batch);
    let start = now_ns();
    let mut first = share.start;
    while first < share.end {
        let n = batch.min(share.end - first);
        keys.clear();
        values.clear();
        writes.clear();
        for record in first..first + n {
            key_bytes(record, spec.ordered_keys, &mut key);
            let w = acked.begin_write(record);
            encode_value(record, w.version, size, &mut value);
            keys.extend_from_slice(&key);
            values.extend_from_slice(&value);
            writes.push(w);
        }
        let t0 = now_ns();
        let result = if n == 1 {
            kv.put(&keys, &values).map(drop)
        } else {
            let mut ops = [Op::Delete { key: &[] }; MAX_LOAD_BATCH];
            for (op, (key, value)) in ops
                .iter_mut()
                .zip(keys.chunks(KEY_LEN).zip(values.chunks(size)))
            {
                *op = Op::Put { key, value };
            }
            kv.transaction(&ops[..n as usize])
        };
        let ns = now_ns().saturating_sub(t0);
        let op = &mut stats.ops[OpKind::Insert.index()];
        op.count += n;
        op.latency.record_n(ns, n);
        match &result {
            Ok(()) => writes.iter().for_each(|&w| acked.end_write(w, true)),
            Err(e) => {
                for &w in &writes {
                    stats.failure(OpKind::Insert, w.record, e);
                    acked.end_write(w, false);
                }
            }
        }
        first += n;
        progress.tick(first - share.start);
    }
    stats.elapsed_ns = now_ns().saturating_sub(start);
    progress.finish(share.end - share.start);
    stats
}

/// One thread's working state in the run phase.
struct Runner<'a, K: Kv + ?Sized> {
    kv: &'a K,
    spec: &'a Spec,
    acked: &'a Acked,
    now_ns: fn() -> u64,
    stats: Stats,
    key: Vec<u8>,
    value: Vec<u8>,
    out: Vec<u8>,
    scratch: Vec<u8>,
}

impl<K: Kv + ?Sized> Runner<'_, K> {
    /// Counts one operation of `kind` that took `ns`.
    fn done(&mut self, kind: OpKind, ns: u64) {
        let op = &mut self.stats.ops[kind.index()];
        op.count += 1;
        op.latency.record(ns);
    }

    /// Checks the value just read into `out` for `record`, read when its
    /// acknowledged version was `floor`.
    fn check_read(&mut self, kind: OpKind, record: u64, floor: u64) {
        let ok = match check_value(&self.out, self.spec.value_size) {
            Ok((r, version)) => {
                r == record && version >= floor && version <= self.acked.issued(record)
            }
            Err(_) => false,
        };
        if !ok {
            self.stats.wrong(kind, record);
        }
    }

    fn read(&mut self, record: u64) {
        key_bytes(record, self.spec.ordered_keys, &mut self.key);
        let floor = self.acked.acked(record);
        let t0 = (self.now_ns)();
        let result = self.kv.get(&self.key, &mut self.out);
        self.done(OpKind::Read, (self.now_ns)().saturating_sub(t0));
        match result {
            Ok(true) => self.check_read(OpKind::Read, record, floor),
            Ok(false) => self.stats.missing(OpKind::Read, record),
            Err(e) => self.stats.failure(OpKind::Read, record, &e),
        }
    }

    /// Writes the next version of `record` under the key in `self.key`
    /// (an update, or the write half of a read-modify-write) and counts
    /// its outcome.
    fn write(&mut self, kind: OpKind, record: u64) {
        let w = self.acked.begin_write(record);
        encode_value(record, w.version, self.spec.value_size, &mut self.value);
        match self.kv.put(&self.key, &self.value) {
            Ok(new) => {
                self.acked.end_write(w, true);
                if new {
                    self.stats.missing(kind, record);
                }
            }
            Err(e) => {
                self.acked.end_write(w, false);
                self.stats.failure(kind, record, &e);
            }
        }
    }

    fn update(&mut self, record: u64) {
        key_bytes(record, self.spec.ordered_keys, &mut self.key);
        let t0 = (self.now_ns)();
        self.write(OpKind::Update, record);
        self.done(OpKind::Update, (self.now_ns)().saturating_sub(t0));
    }

    fn read_modify_write(&mut self, record: u64) {
        let kind = OpKind::ReadModifyWrite;
        key_bytes(record, self.spec.ordered_keys, &mut self.key);
        let floor = self.acked.acked(record);
        let t0 = (self.now_ns)();
        match self.kv.get(&self.key, &mut self.out) {
            Ok(found) => {
                if found {
                    self.check_read(kind, record, floor);
                } else {
                    self.stats.missing(kind, record);
                }
                self.write(kind, record);
            }
            Err(e) => self.stats.failure(kind, record, &e),
        }
        self.done(kind, (self.now_ns)().saturating_sub(t0));
    }

    fn insert(&mut self) {
        let kind = OpKind::Insert;
        let Some(record) = self.acked.claim_insert() else {
            self.done(kind, 0);
            self.stats
                .failure(kind, self.acked.capacity(), &"insert capacity used up");
            return;
        };
        key_bytes(record, self.spec.ordered_keys, &mut self.key);
        let w = self.acked.begin_write(record);
        encode_value(record, w.version, self.spec.value_size, &mut self.value);
        let t0 = (self.now_ns)();
        let result = self.kv.put(&self.key, &self.value);
        self.done(kind, (self.now_ns)().saturating_sub(t0));
        self.acked.end_write(w, result.is_ok());
        match result {
            Ok(true) => {}
            Ok(false) => self.stats.wrong(kind, record),
            Err(e) => self.stats.failure(kind, record, &e),
        }
    }

    /// Scans `len` entries from `record`'s key. The first entry must be
    /// that record (it exists), every entry must hold the record its key
    /// names, and keys must ascend.
    fn scan(&mut self, record: u64, len: usize) {
        let kind = OpKind::Scan;
        let (ordered, size) = (self.spec.ordered_keys, self.spec.value_size);
        key_bytes(record, ordered, &mut self.key);
        let floor = self.acked.acked(record);
        let issued = |r: u64| (r < self.acked.capacity()).then(|| self.acked.issued(r));
        let (start, prev, expect) = (&self.key, &mut self.out, &mut self.scratch);
        prev.clear();
        let mut delivered = 0u64;
        let mut first_found = false;
        let mut bad: Option<u64> = None;
        let t0 = (self.now_ns)();
        let result = self.kv.scan(start, len, &mut |k, v| {
            // The entry's record if it is wrong (the scan's own record if
            // the value is too damaged to name one).
            let wrong = match check_value(v, size) {
                Ok((r, version)) => {
                    key_bytes(r, ordered, expect);
                    let newest = if delivered == 0 && k == start.as_slice() {
                        first_found = true;
                        version >= floor
                    } else {
                        true
                    };
                    let good = k == expect.as_slice()
                        && newest
                        && issued(r).is_some_and(|n| version <= n)
                        && k >= start.as_slice()
                        && (delivered == 0 || k > prev.as_slice());
                    (!good).then_some(r)
                }
                Err(_) => Some(record),
            };
            if bad.is_none() {
                bad = wrong;
            }
            prev.clear();
            prev.extend_from_slice(k);
            delivered += 1;
        });
        self.done(kind, (self.now_ns)().saturating_sub(t0));
        match result {
            Ok(n) => {
                self.stats.scanned += delivered;
                if n as u64 != delivered || n > len {
                    bad.get_or_insert(record);
                }
                if let Some(r) = bad {
                    self.stats.wrong(kind, r);
                } else if !first_found {
                    self.stats.missing(kind, record);
                }
            }
            Err(e) => self.stats.failure(kind, record, &e),
        }
    }
}

/// Runs thread `thread`'s share of `spec.operations` (see
/// [`Spec::share`]): each operation's kind drawn from the workload's mix,
/// its record from the spec's key chooser over the records that exist,
/// with the thread's own random stream ([`Rng::for_thread`]). Reads check
/// every value; updates, inserts and read-modify-writes write the
/// record's next version and note acknowledgements in `acked`, which
/// every thread of the run (and the load before it) shares.
pub fn run<K: Kv + ?Sized>(
    kv: &K,
    spec: &Spec,
    acked: &Acked,
    thread: usize,
    now_ns: fn() -> u64,
    progress: &dyn Fn(u64),
) -> Stats {
    checked_spec(spec, thread);
    let share = spec.share(spec.operations, thread);
    let n = share.end - share.start;
    let mut rng = Rng::for_thread(spec.seed, thread);
    let mut chooser = spec.chooser();
    let mut progress = Progress::new(n, progress);
    let mut r = Runner {
        kv,
        spec,
        acked,
        now_ns,
        stats: Stats::default(),
        key: Vec::with_capacity(KEY_LEN),
        value: Vec::with_capacity(spec.value_size),
        out: Vec::with_capacity(spec.value_size),
        scratch: Vec::with_capacity(KEY_LEN),
    };
    let start = now_ns();
    for done in 1..=n {
        match spec.workload.choose(rng.below(100)) {
            OpKind::Read => r.read(chooser.next(&mut rng, acked.available())),
            OpKind::Update => r.update(chooser.next(&mut rng, acked.available())),
            OpKind::Insert => r.insert(),
            OpKind::Scan => {
                let record = chooser.next(&mut rng, acked.available());
                r.scan(record, rng.between(1, MAX_SCAN) as usize);
            }
            OpKind::ReadModifyWrite => {
                r.read_modify_write(chooser.next(&mut rng, acked.available()));
            }
        }
        progress.tick(done);
    }
    r.stats.elapsed_ns = now_ns().saturating_sub(start);
    progress.finish(n);
    r.stats
}

/// What [`verify`] found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Verification {
    /// Records read.
    pub checked: u64,
    /// Of those, records with an acknowledged version (these must be
    /// present).
    pub acknowledged: u64,
    /// Acknowledged records that are absent.
    pub missing: u64,
    /// Records present with a wrong value: malformed, another record's,
    /// older than acknowledged, or a version never written.
    pub wrong: u64,
    /// Reads the store returned an error for.
    pub failed: u64,
    /// The first missing records.
    pub missing_records: Offenders,
    /// The first wrong records.
    pub wrong_records: Offenders,
    /// The first error the store returned.
    pub first_failure: Option<String>,
    /// The thread's time (merged: the longest).
    pub elapsed_ns: u64,
}

impl Verification {
    /// True if nothing was missing, wrong or failed.
    pub fn passed(&self) -> bool {
        self.missing == 0 && self.wrong == 0 && self.failed == 0
    }

    /// Every thread's findings added together (`parts` not empty).
    pub fn merged(parts: &[Verification]) -> Verification {
        let mut all = parts[0].clone();
        for p in &parts[1..] {
            all.merge(p);
        }
        all
    }

    /// Adds another thread's findings.
    pub fn merge(&mut self, other: &Verification) {
        self.checked += other.checked;
        self.acknowledged += other.acknowledged;
        self.missing += other.missing;
        self.wrong += other.wrong;
        self.failed += other.failed;
        self.missing_records.merge(&other.missing_records);
        self.wrong_records.merge(&other.wrong_records);
        if self.first_failure.is_none() {
            self.first_failure.clone_from(&other.first_failure);
        }
        self.elapsed_ns = self.elapsed_ns.max(other.elapsed_ns);
    }
}

impl fmt::Display for Verification {
    /// One line of counts, then a line for each kind of offender found:
    ///
    /// ```text
    /// verify: 1050 records checked (1048 acknowledged) in 0.012 s: 1 missing, 1 wrong, 0 failed
    ///   missing records: 5
    ///   wrong records: 7
    /// ```
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "verify: {} records checked ({} acknowledged) in {:.3} s: {} missing, {} wrong, {} failed",
            self.checked,
            self.acknowledged,
            self.elapsed_ns as f64 / 1e9,
            self.missing,
            self.wrong,
            self.failed
        )?;
        if self.missing > 0 {
            writeln!(f, "  missing records: {}", self.missing_records)?;
        }
        if self.wrong > 0 {
            writeln!(f, "  wrong records: {}", self.wrong_records)?;
        }
        if let Some(e) = &self.first_failure {
            writeln!(f, "  first failure: {e}")?;
        }
        Ok(())
    }
}

/// Reads thread `thread`'s share of every record numbered so far
/// (`0..acked.claimed()`) and checks it against `acked`: a record with an
/// acknowledged version must be present, with that version or a higher
/// one that was issued; any record present must be well-formed and hold
/// its own record number. A record never acknowledged may be absent (its
/// write may not have survived a crash).
pub fn verify<K: Kv + ?Sized>(
    kv: &K,
    spec: &Spec,
    acked: &Acked,
    thread: usize,
    now_ns: fn() -> u64,
    progress: &dyn Fn(u64),
) -> Verification {
    checked_spec(spec, thread);
    let share = spec.share(acked.claimed(), thread);
    let mut progress = Progress::new(share.end - share.start, progress);
    let mut v = Verification::default();
    let (mut key, mut out) = (
        Vec::with_capacity(KEY_LEN),
        Vec::with_capacity(spec.value_size),
    );
    let start = now_ns();
    for record in share.clone() {
        key_bytes(record, spec.ordered_keys, &mut key);
        let floor = acked.acked(record);
        v.checked += 1;
        v.acknowledged += u64::from(floor > 0);
        match kv.get(&key, &mut out) {
            Ok(true) => {
                let good = check_value(&out, spec.value_size).is_ok_and(|(r, version)| {
                    r == record && version >= floor && version <= acked.issued(record)
                });
                if !good {
                    v.wrong += 1;
                    v.wrong_records.push(record);
                }
            }
            Ok(false) if floor > 0 => {
                v.missing += 1;
                v.missing_records.push(record);
            }
            Ok(false) => {}
            Err(e) => {
                v.failed += 1;
                if v.first_failure.is_none() {
                    v.first_failure = Some(format!("read of record {record}: {e}"));
                }
            }
        }
        progress.tick(record + 1 - share.start);
    }
    v.elapsed_ns = now_ns().saturating_sub(start);
    progress.finish(share.end - share.start);
    v
}

/// A plain-text report of a phase: what ran, throughput and latency per
/// kind of operation, problems found, and the caller's own counters. For
/// example (a run of 4 operations, one failed):
///
/// ```text
/// run: workload a (50% read, 50% update), zipfian keys, 1000 records, 1000 operations, 1000-byte values, 2 threads, seed 1
/// 4 operations in 2.000 s: 2.0 ops/s; 1 failed, 0 not found, 0 wrong
///
/// operation               count       ops/s  failed  notfound   wrong |     mean      p50      p90      p99    p99.9      max
/// read                        3         1.5       0         0       0 |      2.0      2.0      3.0      3.0      3.0      3.0
/// update                      1         0.5       1         0       0 |      5.0      5.0      5.0      5.0      5.0      5.0
/// total                       4         2.0       1         0       0 |      2.8      2.0      5.0      5.0      5.0      5.0
/// latency in microseconds (mean, percentiles, max); scans delivered 0 entries
/// first failure: update of record 12: disk on fire
///
/// page reads                        12345
/// hit ratio                        0.9877
/// ```
///
/// - One row per kind of operation that ran, then the total. `count`
///   includes failed operations; `ops/s` is the count over `elapsed_ns`,
///   the caller's wall-clock time of the phase (all threads together).
/// - `failed`: the store returned an error; `notfound`: a record that
///   exists was absent; `wrong`: a value failed its check (see
///   [`OpStats`]). Lines naming the first wrong and missing records and
///   the first error follow the table when there are any.
/// - Latencies are per operation, in microseconds: the exact mean, the
///   p50, p90, p99 and p99.9 within 0.8% ([`Histogram`]), the exact
///   maximum.
/// - The caller's counters follow, one per line, in the order given,
///   without decimals when whole, else with four.
pub struct Report<'a> {
    /// The phase: "load", "run".
    pub phase: &'a str,
    /// What ran.
    pub spec: &'a Spec,
    /// The merged stats of every thread.
    pub stats: &'a Stats,
    /// Wall-clock time of the phase.
    pub elapsed_ns: u64,
    /// Named counters the caller measured (page reads, hit ratio, VM exits
    /// per operation, ...), printed in order after the table.
    pub counters: &'a [(&'a str, f64)],
}

impl Report<'_> {
    fn row(&self, out: &mut dyn fmt::Write, name: &str, op: &OpStats, per_s: f64) -> fmt::Result {
        write!(
            out,
            "{name:<18} {:>10} {:>11.1} {:>7} {:>9} {:>7} |",
            op.count,
            op.count as f64 * per_s,
            op.failed,
            op.not_found,
            op.wrong
        )?;
        let us = |ns: u64| ns as f64 / 1000.0;
        let h = &op.latency;
        for v in [
            h.mean() / 1000.0,
            us(h.percentile(50.0)),
            us(h.percentile(90.0)),
            us(h.percentile(99.0)),
            us(h.percentile(99.9)),
            us(h.max()),
        ] {
            write!(out, " {v:>8.1}")?;
        }
        writeln!(out)
    }

    /// Writes the report to `out` (a `String` works).
    pub fn write_to(&self, out: &mut dyn fmt::Write) -> fmt::Result {
        let s = self.stats;
        let total = s.total();
        let per_s = if self.elapsed_ns == 0 {
            0.0
        } else {
            1e9 / self.elapsed_ns as f64
        };
        let (failed, not_found, wrong) = s.problems();
        writeln!(out, "{}: {}", self.phase, self.spec)?;
        writeln!(
            out,
            "{total} operations in {:.3} s: {:.1} ops/s; {failed} failed, {not_found} not found, {wrong} wrong",
            self.elapsed_ns as f64 / 1e9,
            total as f64 * per_s,
        )?;
        writeln!(out)?;
        writeln!(
            out,
            "{:<18} {:>10} {:>11} {:>7} {:>9} {:>7} | {:>8} {:>8} {:>8} {:>8} {:>8} {:>8}",
            "operation",
            "count",
            "ops/s",
            "failed",
            "notfound",
            "wrong",
            "mean",
            "p50",
            "p90",
            "p99",
            "p99.9",
            "max"
        )?;
        let mut all = OpStats::default();
        for kind in OpKind::ALL {
            let op = s.op(kind);
            if op.count > 0 {
                self.row(out, kind.name(), op, per_s)?;
                all.merge(op);
            }
        }
        self.row(out, "total", &all, per_s)?;
        writeln!(
            out,
            "latency in microseconds (mean, percentiles, max); scans delivered {} entries",
            s.scanned
        )?;
        if wrong > 0 {
            writeln!(
                out,
                "wrong records (first {}): {}",
                Offenders::KEPT,
                s.wrong_records
            )?;
        }
        if not_found > 0 {
            writeln!(
                out,
                "missing records (first {}): {}",
                Offenders::KEPT,
                s.missing_records
            )?;
        }
        if let Some(e) = &s.first_failure {
            writeln!(out, "first failure: {e}")?;
        }
        if !self.counters.is_empty() {
            writeln!(out)?;
            for (name, value) in self.counters {
                if *value == (*value as i64) as f64 {
                    writeln!(out, "{name:<24} {value:>14.0}")?;
                } else {
                    writeln!(out, "{name:<24} {value:>14.4}")?;
                }
            }
        }
        Ok(())
    }
}

impl fmt::Display for Report<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.write_to(f)
    }
}

#[cfg(test)]
#[path = "driver_tests.rs"]
mod tests;
