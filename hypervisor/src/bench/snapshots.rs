//! Snapshots: `fork()` and userfaultfd write protection against no
//! snapshot, in process mode (`dbos_benches::snapshots`, the code behind
//! `snapshot-compare`), over a few heap sizes; and the guest's Snappy
//! against the fork-like snapshot in counted events per snapshot, from
//! `dbos run .../snappy -- bench MAX_MIB` run as a child process; and
//! Redis's own BGSAVE fork stall at the same heap sizes
//! (`dbos_benches::redis`, a `redis-server` child), where it is installed.

use super::plot::{self, Axis, Series};
use super::report::{Cell, Figure, Kind, Section, Table, Value};
use super::Ctx;
use dbos_benches::redis::fork_stalls;
use dbos_benches::redis::ForkStalls;
use dbos_benches::snapshots::{minflt, run as run_workload, Outcome};
use dbos_snapshot::fork::ForkHeap;
use dbos_snapshot::uffd::UffdHeap;
use std::sync::atomic::Ordering;
use std::time::Duration;

const METHODS: [&str; 3] = ["none", "fork", "uffd"];

/// One process run's figures.
struct Row {
    heap_mib: usize,
    writers: usize,
    method: &'static str,
    /// The measurement, or why there is none.
    outcome: Result<Outcome, Value>,
}

/// Runs the section.
pub fn run(ctx: &Ctx) -> Section {
    let (heaps, writers, seconds, interval_ms, guest_max_mib) = if ctx.quick {
        (vec![16usize, 64], vec![1usize], 0.3, 10u64, 64u64)
    } else {
        (vec![64, 256, 1024], vec![1, 2], 2.0, 10, 1024)
    };
    // Redis's fork stall: at the smallest heap and 3 BGSAVEs when quick,
    // else at every heap and 5.
    let (redis_heaps, saves) = if ctx.quick {
        (heaps[..1].to_vec(), 3)
    } else {
        (heaps.clone(), 5)
    };
    let mut s = Section::new(
        "snapshots",
        "Snapshots: fork and userfaultfd against none and Redis's fork; Snappy in the guest",
        &format!(
            "Process mode: a hash table of 100-byte values fills the heap ({heaps:?} MiB), \
             updated by {writers:?} writer thread(s) for {seconds} s while a snapshot is taken \
             every {interval_ms} ms and the previous one released; \"none\" is the same \
             workload without snapshots. Bytes copied: userfaultfd's handler counts its \
             copies exactly; for fork it is this process's minor faults times 4 KiB (an upper \
             bound). Guest: Snappy against a snapshot taken the way fork() takes one, 3 \
             snapshots per heap from 16 MiB to {guest_max_mib} MiB, 16 random pages written \
             after each, in events the guest counts. Redis: redis-server (no persistence of \
             its own) filled with 100-byte values (DEBUG POPULATE) to about {} MiB of \
             used_memory, then BGSAVE {} times; its stall is latest_fork_usec after each, \
             beside our snapshot creation time at that heap size.",
            join(&redis_heaps),
            saves
        ),
    );
    let command = format!(
        "{} (building block: snapshot-compare --heaps-mib {} --writers {} --intervals-ms \
         {interval_ms} --seconds {seconds})",
        ctx.command("snapshots"),
        join(&heaps),
        join(&writers)
    );
    let mut rows = Vec::new();
    for &mib in &heaps {
        for &w in &writers {
            for method in METHODS {
                ctx.progress(
                    "snapshots",
                    &format!("{mib} MiB heap, {w} writer(s), {method}"),
                );
                let outcome = process_run(mib << 20, w, method, seconds, interval_ms);
                if let Ok(o) = &outcome {
                    ctx.progress(
                        "snapshots",
                        &format!(
                            "  {} snapshots, writers' max {:.0} us, {:.2} Mops/s",
                            o.takes.len(),
                            pct(&o.lat_ns, 1.0),
                            o.ops as f64 / o.elapsed / 1e6
                        ),
                    );
                }
                rows.push(Row {
                    heap_mib: mib,
                    writers: w,
                    method,
                    outcome,
                });
            }
        }
    }
    s.tables.push(process_table(&rows, &command));
    s.tables.push(copied_table(&rows, &command));
    process_plots(ctx, &mut s, &rows, &heaps, writers[0]);

    ctx.progress(
        "snapshots",
        &format!("guest: snappy -- bench {guest_max_mib} (KVM, counted events)"),
    );
    let guest = guest_bench(guest_max_mib, ctx.quick);
    let guest_command = format!(
        "{} (building block: dbos run --vcpus 2 --time-limit {} {} -- bench {guest_max_mib})",
        ctx.command("snapshots"),
        guest_time_limit(ctx.quick),
        dbos_hypervisor_guest("snappy")
    );
    match &guest {
        Ok(g) => {
            s.tables.push(guest_table(g, &guest_command));
            guest_plot(ctx, &mut s, g);
        }
        Err(v) => s.notes.push(format!("guest events: {}", v.text())),
    }
    s.figures = guest_figures(&guest);

    let redis = redis_runs(ctx, &redis_heaps, saves);
    s.tables
        .push(redis_table(&redis, &rows, writers[0], ctx, saves));
    s.notes
        .push("Not measured yet: the process baselines at a 100 ms interval.".into());
    s
}

/// Redis's fork stalls at one heap size, or why there are none.
struct RedisRow {
    heap_mib: usize,
    stalls: Result<ForkStalls, Value>,
}

/// `redis-server` filled to each of `heaps` MiB, `saves` BGSAVEs each.
fn redis_runs(ctx: &Ctx, heaps: &[usize], saves: usize) -> Vec<RedisRow> {
    const BIN: &str = "redis-server";
    heaps
        .iter()
        .map(|&mib| {
            let stalls = if !super::installed(BIN) {
                Err(Value::not_installed(BIN))
            } else {
                ctx.progress(
                    "snapshots",
                    &format!("redis-server filled to {mib} MiB: {saves} BGSAVEs"),
                );
                fork_stalls(BIN, &ctx.work, (mib as u64) << 20, saves)
                    .map_err(|e| Value::not_available(format!("redis-server: {e}")))
            };
            if let Ok(r) = &stalls {
                ctx.progress(
                    "snapshots",
                    &format!(
                        "  {} keys, used_memory {:.1} MiB, latest_fork_usec {:?}",
                        r.keys,
                        r.used_memory as f64 / (1 << 20) as f64,
                        r.fork_usec
                    ),
                );
            }
            RedisRow {
                heap_mib: mib,
                stalls,
            }
        })
        .collect()
}

/// Redis's median fork stall beside our fork and userfaultfd creation
/// times at the same heap size (`writers` writer(s)).
fn redis_table(redis: &[RedisRow], rows: &[Row], writers: usize, ctx: &Ctx, saves: usize) -> Table {
    let ours = |mib: usize, method: &str| -> Value {
        match rows
            .iter()
            .find(|r| r.heap_mib == mib && r.writers == writers && r.method == method)
            .map(|r| &r.outcome)
        {
            Some(Ok(o)) => {
                takes_ms(o).map_or_else(|| Value::not_available("no snapshot was taken"), |t| t.0)
            }
            Some(Err(v)) => v.clone(),
            None => Value::not_available("not run"),
        }
    };
    let out = redis
        .iter()
        .map(|r| {
            let (keys, used, stall) = match &r.stalls {
                Ok(x) => {
                    let ms: Vec<f64> = x.fork_usec.iter().map(|u| *u as f64 / 1e3).collect();
                    (
                        Value::num(x.keys as f64),
                        Value::num(x.used_memory as f64 / (1 << 20) as f64),
                        Value::num(dbos_benches::median(&ms)),
                    )
                }
                Err(v) => (v.clone(), v.clone(), v.clone()),
            };
            let (fork, uffd) = (ours(r.heap_mib, "fork"), ours(r.heap_mib, "uffd"));
            let ratio = |a: &Value| match (a.number(), stall.number()) {
                (Some(a), Some(b)) if b > 0.0 => Value::num(a / b),
                (Some(_), Some(_)) => Value::not_available("Redis's fork took 0 us"),
                (None, _) => a.clone(),
                (Some(_), None) => stall.clone(),
            };
            vec![
                Cell::from(r.heap_mib.to_string()),
                keys.into(),
                used.into(),
                stall.clone().into(),
                fork.clone().into(),
                uffd.clone().into(),
                ratio(&fork).into(),
                ratio(&uffd).into(),
            ]
        })
        .collect();
    Table {
        title: format!(
            "Redis's BGSAVE fork stall against our snapshot creation at the same heap size \
             (median of {saves} BGSAVEs; ours: {writers} writer(s))"
        ),
        command: format!(
            "{} (building block: redis-server --save \"\" --appendonly no \
             --enable-debug-command yes; DEBUG POPULATE N key 100; BGSAVE; INFO stats \
             latest_fork_usec)",
            ctx.command("snapshots")
        ),
        kind: Kind::WallClock,
        columns: [
            "heap MiB",
            "Redis keys",
            "Redis used_memory MiB",
            "Redis fork stall median ms",
            "our fork take median ms",
            "our uffd take median ms",
            "our fork / Redis fork",
            "our uffd / Redis fork",
        ]
        .map(String::from)
        .to_vec(),
        rows: out,
    }
}

fn join(v: &[usize]) -> String {
    v.iter()
        .map(|x| x.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

fn dbos_hypervisor_guest(name: &str) -> String {
    crate::guest_image(name).display().to_string()
}

fn process_run(
    len: usize,
    writers: usize,
    method: &str,
    seconds: f64,
    interval_ms: u64,
) -> Result<Outcome, Value> {
    let interval = Some(Duration::from_millis(interval_ms));
    match method {
        "none" => {
            let heap = ForkHeap::new(len).map_err(|e| Value::not_available(e.to_string()))?;
            Ok(run_workload(&heap, writers, None, seconds, || 0))
        }
        "fork" => {
            let heap = ForkHeap::new(len).map_err(|e| Value::not_available(e.to_string()))?;
            Ok(run_workload(&heap, writers, interval, seconds, || {
                minflt() * 4096
            }))
        }
        _ => {
            let heap = UffdHeap::new(len)
                .map_err(|e| Value::not_available(format!("userfaultfd: {e}")))?;
            Ok(run_workload(&heap, writers, interval, seconds, || {
                heap.stats().pages_copied.load(Ordering::Relaxed) * 4096
            }))
        }
    }
}

/// The `p` quantile (0..=1) of sorted nanoseconds, in microseconds.
fn pct(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 * p) as usize).min(sorted.len() - 1);
    sorted[i] as f64 / 1000.0
}

/// The median and the largest creation time, ms; none without snapshots.
fn takes_ms(o: &Outcome) -> Option<(Value, Value)> {
    let mut t: Vec<f64> = o.takes.iter().map(|d| d.as_secs_f64() * 1e3).collect();
    if t.is_empty() {
        return None;
    }
    t.sort_by(f64::total_cmp);
    Some((
        Value::num(dbos_benches::median(&t)),
        Value::num(t[t.len() - 1]),
    ))
}

fn process_table(rows: &[Row], command: &str) -> Table {
    let rows = rows
        .iter()
        .map(|r| {
            let mut row: Vec<Cell> = vec![
                r.heap_mib.to_string().into(),
                r.writers.to_string().into(),
                r.method.into(),
            ];
            match &r.outcome {
                Ok(o) => {
                    row.push(Value::num(o.takes.len() as f64).into());
                    match takes_ms(o) {
                        Some((med, max)) => {
                            row.push(med.into());
                            row.push(max.into());
                        }
                        None => row.extend(["- (no snapshots)".into(), "-".into()]),
                    }
                    for p in [0.5, 0.99, 0.999, 1.0] {
                        row.push(Value::num(pct(&o.lat_ns, p)).into());
                    }
                    row.push(Value::num(o.ops as f64 / o.elapsed / 1e6).into());
                }
                Err(v) => row.extend((0..8).map(|_| Cell::from(v.clone()))),
            }
            row
        })
        .collect();
    Table {
        title: "Process snapshots: creation time and the writers' latency".into(),
        command: command.into(),
        kind: Kind::WallClock,
        columns: [
            "heap MiB",
            "writers",
            "method",
            "snapshots",
            "take median ms",
            "take max ms",
            "p50 us",
            "p99 us",
            "p99.9 us",
            "max us",
            "Mops/s",
        ]
        .map(String::from)
        .to_vec(),
        rows,
    }
}

fn copied_table(rows: &[Row], command: &str) -> Table {
    let rows = rows
        .iter()
        .filter(|r| r.method != "none")
        .map(|r| {
            let v = match &r.outcome {
                Ok(o) if o.takes.is_empty() => Value::not_available("no snapshot was taken"),
                Ok(o) => Value::num(o.copied_bytes as f64 / o.takes.len() as f64 / 1024.0),
                Err(v) => v.clone(),
            };
            vec![
                r.heap_mib.to_string().into(),
                r.writers.to_string().into(),
                r.method.into(),
                v.into(),
            ]
        })
        .collect();
    Table {
        title: "Process snapshots: memory copied per snapshot (uffd exact, fork an upper bound)"
            .into(),
        command: command.into(),
        kind: Kind::Counted,
        columns: ["heap MiB", "writers", "method", "KiB copied per snapshot"]
            .map(String::from)
            .to_vec(),
        rows,
    }
}

fn process_plots(ctx: &Ctx, s: &mut Section, rows: &[Row], heaps: &[usize], writers: usize) {
    let series = |f: &dyn Fn(&Outcome) -> f64, methods: &[&str]| -> Vec<Series> {
        methods
            .iter()
            .map(|m| Series {
                name: m.to_string(),
                points: heaps
                    .iter()
                    .filter_map(|&h| {
                        let r = rows
                            .iter()
                            .find(|r| r.heap_mib == h && r.writers == writers && r.method == *m)?;
                        Some((h as f64, f(r.outcome.as_ref().ok()?)))
                    })
                    .collect(),
            })
            .collect()
    };
    let stall = series(&|o| pct(&o.lat_ns, 1.0), &METHODS);
    let file = "snapshots-stall-heap.svg";
    let title = format!("Writers' worst stall against heap size ({writers} writer(s))");
    plot::add(
        s,
        &ctx.out,
        file,
        &title,
        Axis {
            label: "heap (MiB, log scale)",
            log: true,
        },
        Axis {
            label: "max update latency (us, log scale)",
            log: true,
        },
        &stall,
    );
    let take = series(
        &|o| takes_ms(o).and_then(|t| t.0.number()).unwrap_or(f64::NAN),
        &["fork", "uffd"],
    );
    let file = "snapshots-take-heap.svg";
    let title = format!("Snapshot creation time against heap size ({writers} writer(s))");
    plot::add(
        s,
        &ctx.out,
        file,
        &title,
        Axis {
            label: "heap (MiB, log scale)",
            log: true,
        },
        Axis {
            label: "median creation time (ms, log scale)",
            log: true,
        },
        &take,
    );
}

/// The columns of the guest's `bench` rows after mechanism and heap.
const GUEST_COLUMNS: [&str; 10] = [
    "mapped",
    "snapshot",
    "take_pte_writes",
    "take_ipis",
    "cow_faults",
    "bytes_copied",
    "fault_ipis",
    "fault_pte_writes",
    "vmm_exits",
    "kvm_exits",
];

/// One guest row: mechanism, heap MiB, and [`GUEST_COLUMNS`] (`None` for
/// "n/a").
struct GuestRow {
    mechanism: String,
    heap_mib: u64,
    values: Vec<Option<f64>>,
}

fn guest_time_limit(quick: bool) -> u64 {
    if quick {
        120
    } else {
        600
    }
}

/// Runs `dbos run --vcpus 2 snappy -- bench MAX` (this same dbos binary) and
/// parses its rows, or says why it cannot run here.
fn guest_bench(max_mib: u64, quick: bool) -> Result<Vec<GuestRow>, Value> {
    let limit = guest_time_limit(quick).to_string();
    let max = max_mib.to_string();
    let (stdout, _) = super::run_guest(
        "snappy",
        &["--vcpus", "2", "--time-limit", &limit],
        &["bench", &max],
    )?;
    let rows = parse_guest(&stdout);
    if rows.is_empty() {
        return Err(Value::not_available("the guest printed no bench rows"));
    }
    Ok(rows)
}

/// The rows of `snappy -- bench` output (console lines `[vcpuN] ...`).
fn parse_guest(stdout: &str) -> Vec<GuestRow> {
    stdout
        .lines()
        .filter_map(|l| {
            let l = l.split_once("] ").map_or(l, |x| x.1);
            let f: Vec<&str> = l.split_whitespace().collect();
            if f.len() != 2 + GUEST_COLUMNS.len() || !["snappy", "forklike"].contains(&f[0]) {
                return None;
            }
            Some(GuestRow {
                mechanism: f[0].into(),
                heap_mib: f[1].parse().ok()?,
                values: f[2..].iter().map(|x| x.parse().ok()).collect(),
            })
        })
        .collect()
}

/// The median over a mechanism's snapshots at one heap of column `col`.
fn guest_median(rows: &[GuestRow], mech: &str, heap: u64, col: &str) -> Value {
    let i = GUEST_COLUMNS
        .iter()
        .position(|c| *c == col)
        .expect("a guest column");
    let v: Vec<f64> = rows
        .iter()
        .filter(|r| r.mechanism == mech && r.heap_mib == heap)
        .filter_map(|r| r.values[i])
        .collect();
    if v.is_empty() {
        Value::not_available(format!("the guest reported no {col} (n/a on this host)"))
    } else {
        Value::num(dbos_benches::median(&v))
    }
}

fn heaps_of(rows: &[GuestRow]) -> Vec<u64> {
    let mut h: Vec<u64> = rows.iter().map(|r| r.heap_mib).collect();
    h.sort_unstable();
    h.dedup();
    h
}

const GUEST_SHOWN: [&str; 7] = [
    "take_pte_writes",
    "take_ipis",
    "cow_faults",
    "bytes_copied",
    "fault_pte_writes",
    "vmm_exits",
    "kvm_exits",
];

fn guest_table(rows: &[GuestRow], command: &str) -> Table {
    let mut out = Vec::new();
    for heap in heaps_of(rows) {
        for mech in ["snappy", "forklike"] {
            let mut row: Vec<Cell> = vec![heap.to_string().into(), mech.into()];
            row.extend(
                GUEST_SHOWN
                    .iter()
                    .map(|c| Cell::from(guest_median(rows, mech, heap, c))),
            );
            out.push(row);
        }
    }
    let mut columns = vec!["heap MiB".to_string(), "mechanism".to_string()];
    columns.extend(GUEST_SHOWN.map(|c| c.replace('_', " ")));
    Table {
        title: "Guest: events per snapshot, Snappy against the fork-like snapshot (median of 3)"
            .into(),
        command: command.into(),
        kind: Kind::Counted,
        columns,
        rows: out,
    }
}

fn guest_plot(ctx: &Ctx, s: &mut Section, rows: &[GuestRow]) {
    let heaps = heaps_of(rows);
    let series: Vec<Series> = ["snappy", "forklike"]
        .iter()
        .map(|m| Series {
            name: m.to_string(),
            points: heaps
                .iter()
                .filter_map(|&h| {
                    Some((
                        h as f64,
                        guest_median(rows, m, h, "take_pte_writes").number()?,
                    ))
                })
                .collect(),
        })
        .collect();
    let file = "snapshots-guest-take-writes.svg";
    let title = "Guest: page-table writes to take a snapshot against heap size";
    plot::add(
        s,
        &ctx.out,
        file,
        title,
        Axis {
            label: "heap (MiB, log scale)",
            log: true,
        },
        Axis {
            label: "page-table writes per take (log scale)",
            log: true,
        },
        &series,
    );
}

/// The guest targets (`snapshot/docs/snappy.md`): Snappy's take writes constant in the heap
/// size; bytes copied = 4 KiB per copy-on-write fault.
fn guest_figures(guest: &Result<Vec<GuestRow>, Value>) -> Vec<Figure> {
    let rows = match guest {
        Ok(r) => r,
        Err(v) => {
            return vec![
                Figure {
                    name: "Snappy: page-table writes to take a snapshot, largest heap".into(),
                    value: v.clone(),
                    unit: "writes".into(),
                    baseline: "the fork-like snapshot, same heap".into(),
                    baseline_value: v.clone(),
                    target: "the same as at the smallest heap (O(1) in the heap size)".into(),
                    met: None,
                    kind: Kind::Counted,
                },
                Figure {
                    name: "Snappy: bytes copied per copy-on-write fault".into(),
                    value: v.clone(),
                    unit: "bytes".into(),
                    baseline: "the fork-like snapshot".into(),
                    baseline_value: v.clone(),
                    target: "= 4096 (one page per fault)".into(),
                    met: None,
                    kind: Kind::Counted,
                },
            ]
        }
    };
    let heaps = heaps_of(rows);
    let (small, large) = (heaps[0], heaps[heaps.len() - 1]);
    let take_small = guest_median(rows, "snappy", small, "take_pte_writes");
    let take_large = guest_median(rows, "snappy", large, "take_pte_writes");
    let per_fault = |mech: &str| {
        let (mut bytes, mut faults) = (0.0, 0.0);
        for r in rows.iter().filter(|r| r.mechanism == mech) {
            bytes += r.values[5].unwrap_or(f64::NAN);
            faults += r.values[4].unwrap_or(f64::NAN);
        }
        Value::num(bytes / faults)
    };
    let snappy_per_fault = per_fault("snappy");
    vec![
        Figure {
            name: format!("Snappy: page-table writes to take a snapshot, {large} MiB heap"),
            met: match (take_large.number(), take_small.number()) {
                (Some(l), Some(s)) => Some(l == s),
                _ => None,
            },
            value: take_large,
            unit: "writes".into(),
            baseline: format!("the fork-like snapshot, {large} MiB heap"),
            baseline_value: guest_median(rows, "forklike", large, "take_pte_writes"),
            target: format!(
                "the same as at {small} MiB ({}): O(1) in the heap size",
                take_small.text()
            ),
            kind: Kind::Counted,
        },
        Figure {
            name: "Snappy: bytes copied per copy-on-write fault".into(),
            met: snappy_per_fault.number().map(|b| b == 4096.0),
            value: snappy_per_fault,
            unit: "bytes".into(),
            baseline: "the fork-like snapshot".into(),
            baseline_value: per_fault("forklike"),
            target: "= 4096 (one page per fault)".into(),
            kind: Kind::Counted,
        },
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guest_rows_are_parsed_and_headers_skipped() {
        let out = "[vcpu0] bench: 3 snapshots per heap\n\
                   [vcpu0] mechanism heap_mib mapped snapshot take_pte_writes take_ipis cow_faults bytes_copied fault_ipis fault_pte_writes vmm_exits kvm_exits\n\
                   [vcpu0] snappy 16 16 1 2 0 11 45056 0 82 0 129\n\
                   [vcpu0] forklike 16 16 1 41 0 11 45056 0 11 0 n/a\n";
        let rows = parse_guest(out);
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].values[2], Some(2.0));
        assert_eq!(rows[1].values[9], None);
        let figs = guest_figures(&Ok(rows));
        assert_eq!(figs[0].met, Some(true));
        assert_eq!(figs[1].value.number(), Some(4096.0));
        assert_eq!(figs[1].met, Some(true));
    }
}
