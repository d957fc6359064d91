//! The YCSB workloads over the Redis protocol: workload A at several
//! client counts and workloads B-F at one, `dbos-kv bench --json` against
//! every server in rotated order, medians of rounds; their tables, the
//! figures dbos-kv / Redis `appendfsync always` (and the memory engine /
//! `everysec`), and the bad-reply counts.

use super::super::report::{Cell, Figure, Kind, Table, Value};
use super::super::Ctx;
use super::servers::{bench, bench_args, median_round, Phase, Running};
use super::TARGET_SOURCE;
use std::path::Path;

/// The servers of the YCSB runs, by name, each running or why not.
pub struct Servers<'a> {
    pub names: &'a [&'static str],
    pub state: &'a [Result<Running, Value>],
}

/// Runs `workload` at each of `clients` against every server, `rounds`
/// rounds in rotated order; the median round per server and client count
/// (`[server][clients]`). A server whose run fails keeps its failure.
#[allow(clippy::too_many_arguments)]
pub fn measure(
    ctx: &Ctx,
    kv: &Path,
    sv: &Servers,
    loaded: &[Result<(), Value>],
    workload: &str,
    records: u64,
    operations: u64,
    clients: &[usize],
    rounds: usize,
    skip: impl Fn(&str) -> Option<Value>,
) -> Vec<Vec<Result<Phase, Value>>> {
    let n = sv.names.len();
    let mut results: Vec<Vec<Result<Vec<Phase>, Value>>> = (0..n)
        .map(|si| {
            clients
                .iter()
                .map(|_| match (&loaded[si], skip(sv.names[si])) {
                    (Err(v), _) => Err(v.clone()),
                    (Ok(()), Some(v)) => Err(v),
                    (Ok(()), None) => Ok(Vec::new()),
                })
                .collect()
        })
        .collect();
    for round in 0..rounds {
        for (ci, &c) in clients.iter().enumerate() {
            for k in 0..n {
                let si = (k + round + ci) % n;
                let Ok(r) = &sv.state[si] else { continue };
                if results[si][ci].is_err() {
                    continue;
                }
                let args = bench_args(workload, "zipfian", records, operations, c, "run");
                match bench(kv, r.port, &args, "run") {
                    Ok(p) => {
                        ctx.progress(
                            "kvstore",
                            &format!(
                                "workload {workload} round {}: {} {c} client(s): {:.0} ops/s, \
                                 p99 {:.0} us{}",
                                round + 1,
                                sv.names[si],
                                p.ops_per_s,
                                p.p99_us,
                                if p.problems > 0.0 {
                                    format!(", {} BAD REPLIES", p.problems)
                                } else {
                                    String::new()
                                }
                            ),
                        );
                        if let Ok(v) = &mut results[si][ci] {
                            v.push(p);
                        }
                    }
                    Err(v) => {
                        ctx.progress(
                            "kvstore",
                            &format!("workload {workload}: {}: {}", sv.names[si], v.text()),
                        );
                        results[si][ci] = Err(v);
                    }
                }
            }
        }
    }
    results
        .into_iter()
        .map(|per| per.into_iter().map(median_round).collect())
        .collect()
}

fn cell(p: &Result<Phase, Value>, f: impl Fn(&Phase) -> f64) -> Cell {
    match p {
        Ok(p) => Value::num(f(p)).into(),
        Err(v) => v.clone().into(),
    }
}

/// Workload A's table: every server at every client count.
pub fn a_table(
    names: &[&str],
    clients: &[usize],
    med: &[Vec<Result<Phase, Value>>],
    command: &str,
) -> Table {
    let mut rows = Vec::new();
    for (ci, c) in clients.iter().enumerate() {
        for (n, per) in names.iter().zip(med) {
            let p = &per[ci];
            rows.push(vec![
                Cell::from(*n),
                c.to_string().into(),
                cell(p, |p| p.ops_per_s),
                cell(p, |p| p.p50_us),
                cell(p, |p| p.p99_us),
                cell(p, |p| p.p99_9_us),
                cell(p, |p| p.max_us),
            ]);
        }
    }
    Table {
        title: "Workload A over the Redis protocol (the median round)".into(),
        command: command.into(),
        kind: Kind::WallClock,
        columns: [
            "server", "clients", "ops/s", "p50 us", "p99 us", "p99.9 us", "max us",
        ]
        .map(String::from)
        .to_vec(),
        rows,
    }
}

/// Workload A's bad replies: every server at every client count.
pub fn a_problems_table(
    names: &[&str],
    clients: &[usize],
    med: &[Vec<Result<Phase, Value>>],
    command: &str,
) -> Table {
    let mut rows = Vec::new();
    for (ci, c) in clients.iter().enumerate() {
        for (n, per) in names.iter().zip(med) {
            rows.push(vec![
                Cell::from(*n),
                c.to_string().into(),
                cell(&per[ci], |p| p.problems),
            ]);
        }
    }
    Table {
        title: "Workload A: replies that were errors, wrong values or missing records".into(),
        command: command.into(),
        kind: Kind::Counted,
        columns: ["server", "clients", "bad replies"]
            .map(String::from)
            .to_vec(),
        rows,
    }
}

/// `ours` ops/s / `theirs` ops/s, and `theirs`.
fn ratio(a: &Result<Phase, Value>, b: &Result<Phase, Value>) -> (Value, Value) {
    match (a, b) {
        (Ok(a), Ok(b)) => (
            Value::num(a.ops_per_s / b.ops_per_s),
            Value::num(b.ops_per_s),
        ),
        (_, Err(v)) | (Err(v), _) => (v.clone(), v.clone()),
    }
}

/// Workload A's figures: the btree engine against Redis `appendfsync
/// always` at every client count, the memory engine against `everysec` at
/// the largest, and the bad replies of both engines.
pub fn a_figures(
    names: &[&str],
    clients: &[usize],
    med: &[Vec<Result<Phase, Value>>],
) -> Vec<Figure> {
    let at =
        |name: &str, i: usize| &med[names.iter().position(|n| *n == name).expect("a server")][i];
    // `ours` / `theirs` at client count `i`, target >= 1.
    let versus =
        |ours: &str, theirs: &str, i: usize, what: &str, baseline: &str, target: String| {
            let (value, base) = ratio(at(ours, i), at(theirs, i));
            Figure {
                name: format!("{what}, workload A, {} clients", clients[i]),
                met: value.number().map(|r| r >= 1.0),
                value,
                unit: "x".into(),
                baseline: baseline.into(),
                baseline_value: base,
                target,
                kind: Kind::WallClock,
            }
        };
    let mut v: Vec<Figure> = (0..clients.len())
        .map(|i| {
            versus(
                "dbos-kv btree",
                "redis always",
                i,
                "btree engine ops/s / Redis appendfsync always",
                "Redis, appendonly yes, appendfsync always (ops/s)",
                format!(">= 1 ({TARGET_SOURCE})"),
            )
        })
        .collect();
    v.push(versus(
        "dbos-kv memory",
        "redis everysec",
        clients.len() - 1,
        "memory engine ops/s / Redis appendfsync everysec",
        "Redis, appendonly yes, appendfsync everysec (ops/s)",
        format!(
            ">= 1 ({TARGET_SOURCE} states it against Redis without persistence under \
             redis-benchmark; this is workload A)"
        ),
    ));
    for name in ["dbos-kv btree", "dbos-kv memory"] {
        let k = names.iter().position(|n| *n == name).expect("a server");
        let total = (0..clients.len())
            .map(|i| med[k][i].as_ref().map(|p| p.problems).map_err(Clone::clone))
            .sum::<Result<f64, Value>>();
        let value = total.map_or_else(|v| v, Value::num);
        v.push(Figure {
            name: format!("{name}: bad replies in workload A over every client count"),
            met: value.number().map(|x| x == 0.0),
            value,
            unit: "replies".into(),
            baseline: "the load generator's checks of every reply".into(),
            baseline_value: Value::num(0.0),
            target: "= 0".into(),
            kind: Kind::Counted,
        });
    }
    v
}

/// The other workloads' table: per workload and server, ops/s, p99 and
/// bad replies (`med[workload][server]`).
pub fn others_table(
    workloads: &[&str],
    names: &[&str],
    clients: usize,
    med: &[Vec<Result<Phase, Value>>],
    command: &str,
) -> Table {
    let mut rows = Vec::new();
    for (w, per) in workloads.iter().zip(med) {
        for (n, p) in names.iter().zip(per) {
            rows.push(vec![
                Cell::from(w.to_uppercase()),
                Cell::from(*n),
                cell(p, |p| p.ops_per_s),
                cell(p, |p| p.p99_us),
                cell(p, |p| p.problems),
            ]);
        }
    }
    Table {
        title: format!(
            "Workloads B-F over the Redis protocol, {clients} clients (the median round; bad \
             replies: errors, wrong values, missing records)"
        ),
        command: command.into(),
        kind: Kind::WallClock,
        columns: ["workload", "server", "ops/s", "p99 us", "bad replies"]
            .map(String::from)
            .to_vec(),
        rows,
    }
}

/// The other workloads' figures: the btree engine against Redis
/// `appendfsync always` where both ran (not E: Redis has no ordered
/// range), and the bad replies of both engines over every workload.
pub fn others_figures(
    workloads: &[&str],
    names: &[&str],
    clients: usize,
    med: &[Vec<Result<Phase, Value>>],
) -> Vec<Figure> {
    let k = |name: &str| names.iter().position(|n| *n == name).expect("a server");
    let mut v = Vec::new();
    for (w, per) in workloads.iter().zip(med) {
        if *w == "e" {
            continue;
        }
        let (value, base) = ratio(&per[k("dbos-kv btree")], &per[k("redis always")]);
        v.push(Figure {
            name: format!(
                "btree engine ops/s / Redis appendfsync always, workload {}, {clients} clients",
                w.to_uppercase()
            ),
            met: value.number().map(|r| r >= 1.0),
            value,
            unit: "x".into(),
            baseline: "Redis, appendonly yes, appendfsync always (ops/s)".into(),
            baseline_value: base,
            target: format!(">= 1 ({TARGET_SOURCE})"),
            kind: Kind::WallClock,
        });
    }
    for name in ["dbos-kv btree", "dbos-kv memory"] {
        // Only the runs that ran: E on the memory engine is not one.
        let mut total = Ok(0.0);
        for per in med {
            match (&per[k(name)], &mut total) {
                (Ok(p), Ok(t)) => *t += p.problems,
                (Err(e @ Value::NotAvailable { reason }), t) if !reason.contains("DBOS.RANGE") => {
                    *t = Err(e.clone())
                }
                _ => {}
            }
        }
        let value = total.map_or_else(|v: Value| v, Value::num);
        v.push(Figure {
            name: format!("{name}: bad replies in workloads B-F"),
            met: value.number().map(|x| x == 0.0),
            value,
            unit: "replies".into(),
            baseline: "the load generator's checks of every reply".into(),
            baseline_value: Value::num(0.0),
            target: "= 0".into(),
            kind: Kind::Counted,
        });
    }
    v
}

/// Why a server does not run workload `w`, if it does not: E's scans
/// need an ordered engine (`DBOS.RANGE`), which only the btree engine is.
pub fn unsupported(w: &str, server: &str) -> Option<Value> {
    (w == "e" && server != "dbos-kv btree")
        .then(|| Value::not_available("no DBOS.RANGE (workload E's scans need an ordered engine)"))
}
