//! What a phase counted, per kind of operation, and the table that shows
//! it.
//!
//! ```text
//! operation              count        ops/s   p50 us   p99 us p99.9 us   max us   errors    wrong  missing
//! read                    1512       6049.2     95.2    410.1    930.3    951.3        0        0        0
//! update                  1488       5953.2    120.5    480.1    995.3   1003.5        0        0        0
//! total                   3000      12002.4    104.3    460.0    995.3   1003.5        0        0        0
//! ```
//!
//! - `count`: operations done, whatever their outcome; `ops/s`: the count
//!   over the phase's wall-clock time (all clients together).
//! - Latencies are per operation in microseconds, from the moment its
//!   request was sent to its reply (a read-modify-write: from its GET to
//!   its SET's reply), with 3 significant digits (`hdrhistogram`).
//! - `errors`: error replies and replies of the wrong type; `wrong`: a
//!   value that failed its check (another record's, malformed, older than
//!   acknowledged, a version never written, scan entries out of order);
//!   `missing`: a record that exists was absent.

use std::fmt::{self, Write as _};
use std::string::String;
use std::vec::Vec;

use hdrhistogram::Histogram;

use crate::workload::{OpKind, Spec};

/// The counts and latencies of one kind of operation.
#[derive(Clone, Debug)]
pub struct OpStats {
    /// Operations done.
    pub count: u64,
    /// Error replies (and replies of the wrong type).
    pub errors: u64,
    /// Values that failed their check.
    pub wrong: u64,
    /// Records that exist but were absent.
    pub missing: u64,
    /// Latency of each operation, nanoseconds.
    pub latency: Histogram<u64>,
}

impl Default for OpStats {
    fn default() -> Self {
        OpStats {
            count: 0,
            errors: 0,
            wrong: 0,
            missing: 0,
            // 3 significant digits, auto-resizing: cannot fail.
            latency: Histogram::new(3).expect("3 significant digits are valid"),
        }
    }
}

impl OpStats {
    /// Adds `other`'s counts and latencies.
    pub fn merge(&mut self, other: &OpStats) {
        self.count += other.count;
        self.errors += other.errors;
        self.wrong += other.wrong;
        self.missing += other.missing;
        if let Err(e) = self.latency.add(&other.latency) {
            log::warn!("merging latency histograms: {e}");
        }
    }
}

/// What one client did in a phase (merged: all of them).
#[derive(Clone, Debug, Default)]
pub struct PhaseStats {
    /// Per kind of operation, indexed by [`OpKind::index`].
    pub ops: [OpStats; OpKind::COUNT],
    /// Entries the scans delivered.
    pub scanned: u64,
    /// Of those, entries of records past the loaded ones that this bench
    /// has not written (left by an earlier bench).
    pub scanned_foreign: u64,
    /// The first problem seen (an error reply, a wrong or missing
    /// value), with its operation and record.
    pub first_problem: Option<String>,
}

impl PhaseStats {
    /// Counts one operation of `kind` that took `ns`.
    pub fn done(&mut self, kind: OpKind, ns: u64) {
        let op = &mut self.ops[kind.index()];
        op.count += 1;
        // Auto-resizing: fails only above 2^62 ns.
        if let Err(e) = op.latency.record(ns) {
            log::warn!("latency of {ns} ns not recorded: {e}");
        }
    }

    fn note(&mut self, problem: impl FnOnce() -> String) {
        if self.first_problem.is_none() {
            self.first_problem = Some(problem());
        }
    }

    /// Counts an error reply to an operation of `kind` on `record`.
    pub fn error(&mut self, kind: OpKind, record: u64, what: &dyn fmt::Display) {
        self.ops[kind.index()].errors += 1;
        self.note(|| std::format!("{} of record {record}: {what}", kind.name()));
    }

    /// Counts a wrong value.
    pub fn wrong(&mut self, kind: OpKind, record: u64, what: &dyn fmt::Display) {
        self.ops[kind.index()].wrong += 1;
        self.note(|| std::format!("{} of record {record}: {what}", kind.name()));
    }

    /// Counts a missing record.
    pub fn missing(&mut self, kind: OpKind, record: u64) {
        self.ops[kind.index()].missing += 1;
        self.note(|| std::format!("{} of record {record}: missing", kind.name()));
    }

    /// Operations of every kind.
    pub fn total(&self) -> u64 {
        self.ops.iter().map(|o| o.count).sum()
    }

    /// Errors, wrong and missing values of every kind.
    pub fn problems(&self) -> u64 {
        self.ops
            .iter()
            .map(|o| o.errors + o.wrong + o.missing)
            .sum()
    }

    /// Adds another client's stats.
    pub fn merge(&mut self, other: &PhaseStats) {
        for (a, b) in self.ops.iter_mut().zip(other.ops.iter()) {
            a.merge(b);
        }
        self.scanned += other.scanned;
        self.scanned_foreign += other.scanned_foreign;
        if self.first_problem.is_none() {
            self.first_problem.clone_from(&other.first_problem);
        }
    }

    /// All of `parts` added together.
    pub fn merged(parts: &[PhaseStats]) -> PhaseStats {
        let mut all = PhaseStats::default();
        for p in parts {
            all.merge(p);
        }
        all
    }
}

/// "workload a (50% read, 50% update), zipfian keys, 1000 records, 3000
/// operations, 100-byte values, 4 clients, seed 1".
pub fn describe(spec: &Spec, distribution: &str) -> String {
    let mut mix = String::new();
    for (kind, percent) in OpKind::ALL.into_iter().zip(spec.workload.mix()) {
        if percent > 0 {
            let sep = if mix.is_empty() { "" } else { ", " };
            let _ = write!(mix, "{sep}{percent}% {}", kind.name());
        }
    }
    std::format!(
        "workload {} ({mix}), {distribution} keys, {} records, {} operations, {}-byte values, \
         {} client{}, seed {}",
        spec.workload,
        spec.records,
        spec.operations,
        spec.value_size,
        spec.threads,
        if spec.threads == 1 { "" } else { "s" },
        spec.seed
    )
}

/// The table of a phase: a summary line, then one row per kind of
/// operation that ran and the total (see the module documentation).
pub fn table(stats: &PhaseStats, elapsed_ns: u64) -> String {
    let mut out = String::new();
    let per_s = if elapsed_ns == 0 {
        0.0
    } else {
        1e9 / elapsed_ns as f64
    };
    let total = stats.total();
    let sum = |f: fn(&OpStats) -> u64| stats.ops.iter().map(f).sum::<u64>();
    let _ = writeln!(
        out,
        "{total} operations in {:.3} s: {:.1} ops/s; {} errors, {} wrong, {} missing",
        elapsed_ns as f64 / 1e9,
        total as f64 * per_s,
        sum(|o| o.errors),
        sum(|o| o.wrong),
        sum(|o| o.missing),
    );
    let _ = writeln!(
        out,
        "{:<18} {:>10} {:>12} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8}",
        "operation",
        "count",
        "ops/s",
        "p50 us",
        "p99 us",
        "p99.9 us",
        "max us",
        "errors",
        "wrong",
        "missing"
    );
    let mut all = OpStats::default();
    let mut rows: Vec<(&str, &OpStats)> = Vec::new();
    for kind in OpKind::ALL {
        let op = &stats.ops[kind.index()];
        if op.count > 0 {
            rows.push((kind.name(), op));
            all.merge(op);
        }
    }
    rows.push(("total", &all));
    for (name, op) in rows {
        let us = |q: f64| op.latency.value_at_quantile(q) as f64 / 1000.0;
        let _ = writeln!(
            out,
            "{name:<18} {:>10} {:>12.1} {:>8.1} {:>8.1} {:>8.1} {:>8.1} {:>8} {:>8} {:>8}",
            op.count,
            op.count as f64 * per_s,
            us(0.5),
            us(0.99),
            us(0.999),
            op.latency.max() as f64 / 1000.0,
            op.errors,
            op.wrong,
            op.missing
        );
    }
    if stats.ops[OpKind::Scan.index()].count > 0 {
        let _ = write!(out, "scans delivered {} entries", stats.scanned);
        if stats.scanned_foreign > 0 {
            let _ = write!(
                out,
                " ({} of records an earlier bench inserted: versions not checked)",
                stats.scanned_foreign
            );
        }
        let _ = writeln!(out);
    }
    if let Some(p) = &stats.first_problem {
        let _ = writeln!(out, "first problem: {p}");
    }
    out
}

/// A phase as one line of JSON: `{"phase", "seconds", "ops": [{"operation",
/// "count", "ops_per_s", "p50_us", "p99_us", "p99_9_us", "max_us",
/// "errors", "wrong", "missing"}, ...]}`, one entry per kind of operation
/// done and a last one named `total`, as in [`table`].
pub fn json(phase: &str, stats: &PhaseStats, elapsed_ns: u64) -> String {
    let per_s = if elapsed_ns == 0 {
        0.0
    } else {
        1e9 / elapsed_ns as f64
    };
    let mut all = OpStats::default();
    let mut rows: Vec<(&str, &OpStats)> = Vec::new();
    for kind in OpKind::ALL {
        let op = &stats.ops[kind.index()];
        if op.count > 0 {
            rows.push((kind.name(), op));
            all.merge(op);
        }
    }
    rows.push(("total", &all));
    let ops: Vec<String> = rows
        .iter()
        .map(|(name, op)| {
            let us = |q: f64| op.latency.value_at_quantile(q) as f64 / 1000.0;
            std::format!(
                "{{\"operation\":\"{name}\",\"count\":{},\"ops_per_s\":{:.3},\"p50_us\":{:.3},\
                 \"p99_us\":{:.3},\"p99_9_us\":{:.3},\"max_us\":{:.3},\"errors\":{},\
                 \"wrong\":{},\"missing\":{}}}",
                op.count,
                op.count as f64 * per_s,
                us(0.5),
                us(0.99),
                us(0.999),
                op.latency.max() as f64 / 1000.0,
                op.errors,
                op.wrong,
                op.missing
            )
        })
        .collect();
    std::format!(
        "{{\"phase\":\"{phase}\",\"seconds\":{:.6},\"ops\":[{}]}}",
        elapsed_ns as f64 / 1e9,
        ops.join(",")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_has_a_row_per_kind_and_a_total() {
        let mut stats = PhaseStats::default();
        stats.done(OpKind::Read, 10_000);
        stats.done(OpKind::Read, 30_000);
        let j = json("run", &stats, 2_000_000_000);
        assert!(
            j.starts_with("{\"phase\":\"run\",\"seconds\":2.000000,\"ops\":["),
            "{j}"
        );
        assert!(
            j.contains("{\"operation\":\"read\",\"count\":2,\"ops_per_s\":1.000,"),
            "{j}"
        );
        assert!(j.contains("{\"operation\":\"total\",\"count\":2,"), "{j}");
        assert!(j.ends_with("}]}"), "{j}");
        assert!(!j.contains('\n'));
    }

    #[test]
    fn table_rows_and_totals() {
        let mut a = PhaseStats::default();
        a.done(OpKind::Read, 100_000);
        a.done(OpKind::Read, 300_000);
        a.done(OpKind::Update, 1_000_000);
        let mut b = PhaseStats::default();
        b.done(OpKind::Update, 2_000_000);
        b.wrong(OpKind::Update, 7, &"value of 3 bytes");
        let all = PhaseStats::merged(&[a, b]);
        assert_eq!((all.total(), all.problems()), (4, 1));
        let t = table(&all, 2_000_000_000);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(
            lines[0],
            "4 operations in 2.000 s: 2.0 ops/s; 0 errors, 1 wrong, 0 missing"
        );
        assert!(lines[1].starts_with("operation"));
        let cols = |l: &str| l.split_whitespace().map(String::from).collect::<Vec<_>>();
        assert_eq!(
            cols(lines[2]),
            ["read", "2", "1.0", "100.0", "300.0", "300.0", "300.0", "0", "0", "0"]
        );
        assert_eq!(cols(lines[3])[..3], ["update", "2", "1.0"]);
        assert_eq!(cols(lines[3])[7..], ["0", "1", "0"]);
        assert_eq!(cols(lines[4])[..2], ["total", "4"]);
        // Within hdrhistogram's 3 significant digits.
        let max: f64 = cols(lines[4])[6].parse().unwrap();
        assert!((2000.0..2002.0).contains(&max), "{max}");
        assert_eq!(
            lines[5],
            "first problem: update of record 7: value of 3 bytes"
        );
    }

    #[test]
    fn describes_the_run() {
        let spec = Spec {
            threads: 4,
            ..Spec::default()
        };
        assert_eq!(
            describe(&spec, "zipfian"),
            "workload a (50% read, 50% update), zipfian keys, 1000 records, 1000 operations, \
             1000-byte values, 4 clients, seed 1"
        );
    }
}
