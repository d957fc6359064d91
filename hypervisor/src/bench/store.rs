//! store: the durable B+tree store in process (`dbos-kv workload`, the
//! in-process driver) against what its disk and its log can do on the same
//! disk in the same run, the two targets of the store itself:
//!
//! - out of memory (data 4x the pool), workload C uniform, 1 thread: the
//!   store's page reads per second (lookups/s x page reads per lookup)
//!   against the disk's QD1 random 4 KiB reads of the store's own pages
//!   (`pread` on `O_DIRECT`, [`dbos_benches::pools::qd1_reads`]);
//! - durable updates, workload A zipfian, 1 and 16 threads: the store's
//!   updates per second (each one durable commit of a tree change) against
//!   the bare WAL's commits per second with as many committers
//!   ([`dbos_benches::wal::engine_run`], the code behind `wal-bench`), on
//!   the same store both out of memory and with a pool that holds it.
//!
//! Every measurement of a round runs alone, in an order rotated each round;
//! the figures are medians of per-round ratios.

use super::kvstore::oom::{checked_workload, parse_store_mib, workload, workload_args};
use super::kvstore::servers::dbos_kv;
use super::plot::{self, Axis, Series};
use super::report::{Cell, Figure, Kind, Section, Table, Value};
use super::{disk_problem, Ctx};
use dbos_benches::pools::{direct, qd1_reads};
use dbos_bufferpool::device::{BlockDevice, DmaBytes};
use dbos_bufferpool::direct::DirectDevice;
use dbos_bufferpool::CommitMode;
use dbos_nvme::host::BackingFile;
use std::path::Path;
use std::sync::Arc;

/// Where the targets are stated in the repository.
const TARGET_SOURCE: &str = "kvstore/docs/store.md, section 'Targets'";

/// The store's log (`dbos-kv workload --log`, MiB): four times the
/// default, so that checkpoints (one per 40% of the log, and a page's
/// first change after each logs its whole image) are as rare against the
/// 18 MiB store as on a store many times the default log's size: with
/// the default 64 MiB, the images of the store's pages make most of the
/// log in a steady state (kvstore/docs/store.md says how much).
const LOG_MIB: u64 = 256;
/// The store's file when formatted (MiB): the log and 64 MiB of data pages.
const SIZE_MIB: u64 = LOG_MIB + 64;
/// The log in 4 KiB blocks: tree page `n` is at block `2 + LOG_BLOCKS + n`
/// of `kv.db`.
const LOG_BLOCKS: u64 = (LOG_MIB << 20) / 4096;

/// One measurement of a round.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Item {
    /// Workload C uniform, 1 thread, the small pool.
    Reads,
    /// QD1 random reads of the store's pages.
    Disk,
    /// Workload A zipfian, `threads`, the small pool (`in_pool`: false) or
    /// one that holds the store.
    Updates { threads: usize, in_pool: bool },
    /// The bare WAL with `committers`.
    Wal { committers: usize },
}

impl Item {
    fn name(self) -> String {
        match self {
            Item::Reads => "store: workload C uniform, 1 thread, 4x the pool: reads/s".into(),
            Item::Disk => "disk: QD1 random 4 KiB reads of the store's pages: IOPS".into(),
            Item::Updates { threads, in_pool } => format!(
                "store: workload A zipfian, {threads} thread(s), {}: updates/s",
                if in_pool {
                    "in a pool that holds it"
                } else {
                    "4x the pool"
                }
            ),
            Item::Wal { committers } => {
                format!("bare WAL (wal-bench, direct, FUA): {committers} committer(s): commits/s")
            }
        }
    }
}

/// One round: the rate of each item (`None`: not measured), and the page
/// reads per lookup of its workload C run.
struct Round {
    rates: Vec<Option<f64>>,
    reads_per_op: Option<f64>,
}

/// What `dbos-kv workload` printed for its run phase: the `update` row's
/// operations per second, or the whole phase's; and a counter of the
/// phase's table (`page reads / op`).
fn run_phase(out: &str) -> Option<&str> {
    out.split_once("\nrun: ").map(|(_, run)| run)
}

/// The operations per second of row `kind` (`read`, `update`, ...) in the
/// run phase's table.
pub fn parse_row_rate(out: &str, kind: &str) -> Option<f64> {
    let line = run_phase(out)?
        .lines()
        .find(|l| l.split_whitespace().next() == Some(kind))?;
    line.split_whitespace().nth(2)?.parse().ok()
}

/// The value of counter `label` (`page reads / op`) in the run phase.
pub fn parse_counter(out: &str, label: &str) -> Option<f64> {
    let line = run_phase(out)?.lines().find(|l| l.starts_with(label))?;
    line[label.len()..].trim().parse().ok()
}

/// Runs the section.
pub fn run(ctx: &Ctx) -> Section {
    let (pool, pool_bytes, big_pool, reads, ops1, ops16, secs, rounds) = if ctx.quick {
        (
            "256K",
            256u64 << 10,
            "4M",
            500u64,
            200u64,
            800u64,
            0.3,
            1usize,
        )
    } else {
        ("4M", 4 << 20, "64M", 20_000, 20_000, 64_000, 2.0, 5)
    };
    // About 184 bytes of store per 100-byte record (measured): 4x the pool.
    let records = pool_bytes * 4 / 184;
    let mut s = Section::new(
        "store",
        "store: the durable B+tree store in process against its disk and the bare WAL",
        &format!(
            "dbos-kv workload (the in-process driver: the durable B+tree store on the \
             vmcache-style pool, each thread's own pread/pwrite on the O_DIRECT file kv.db) \
             on one store of {records} records (100-byte values; a {LOG_MIB}M log, so that \
             checkpoints are as rare against the store as on one many times the default \
             log), against the same disk in the same run: workload C uniform, 1 thread, \
             {reads} reads with a {pool} pool (the store about 4x it), its page reads per \
             second against QD1 random 4 KiB \
             reads of the store's own pages for {secs} s; workload A zipfian at 1 and 16 \
             threads ({ops1} and {ops16} operations), with the {pool} pool and with a \
             {big_pool} pool that holds the store (brought to a steady state before the \
             timed run: --warm-up reads it whole and runs the workload once untimed), its \
             updates per second (each a durable commit, group commit across threads) against \
             the bare WAL (wal-bench's engine on the direct device, FUA commits of 2 keys on \
             64 resident pages) with as many \
             committers for {secs} s. {rounds} round(s), each measurement alone, the order \
             rotated every round (each store update measurement next to its WAL \
             measurement); medians of the per-round ratios."
        ),
    );
    let command = format!(
        "{} (building blocks: dbos-kv workload --dir DIR --records {records} --no-load \
         --no-verify --workload c --distribution uniform --threads 1 --pool {pool} \
         --operations {reads}, and --workload a --distribution zipfian --threads 1|16 --pool \
         {pool}|{big_pool} (the latter with --warm-up) --operations {ops1}|{ops16}; QD1 \
         pread of kv.db's tree pages; wal-bench --device direct --seconds {secs})",
        ctx.command("store")
    );
    let dir = ctx.work.join("store");
    let loaded = load(ctx, &dir, records, pool);
    // In a cycle, the order rotated every round: each store update
    // measurement beside the bare WAL it is divided by (the disk drifts
    // within a round), the reads beside the disk's QD1 reads.
    let items = [
        Item::Reads,
        Item::Disk,
        Item::Updates {
            threads: 1,
            in_pool: false,
        },
        Item::Wal { committers: 1 },
        Item::Updates {
            threads: 1,
            in_pool: true,
        },
        Item::Updates {
            threads: 16,
            in_pool: true,
        },
        Item::Wal { committers: 16 },
        Item::Updates {
            threads: 16,
            in_pool: false,
        },
    ];
    let mut rounds_done: Vec<Round> = Vec::new();
    // Per item: the first error, if any (the item is not measured again).
    let mut errors: Vec<Option<Value>> = vec![None; items.len()];
    if let Err(v) = &loaded {
        errors.iter_mut().for_each(|e| *e = Some(v.clone()));
    }
    for round in 0..rounds {
        if loaded.is_err() {
            break;
        }
        let (kv, pages) = loaded.as_ref().map(|l| (&l.0, l.1)).expect("loaded");
        let mut this = Round {
            rates: vec![None; items.len()],
            reads_per_op: None,
        };
        for k in 0..items.len() {
            let i = (k + round) % items.len();
            if errors[i].is_some() {
                continue;
            }
            let item = items[i];
            let args = |workload, distribution, ops, threads, pool| {
                let mut a =
                    workload_args(&dir, workload, distribution, records, ops, threads, pool);
                a.extend(["--no-load", "--no-verify"].map(String::from));
                a
            };
            let r: Result<f64, Value> = match item {
                Item::Reads => {
                    driver(kv, &args("c", "uniform", reads, 1, pool), "read").map(|(rate, out)| {
                        this.reads_per_op = parse_counter(&out, "page reads / op");
                        rate
                    })
                }
                Item::Disk => disk_reads(&dir, pages, secs),
                Item::Updates { threads, in_pool } => {
                    let ops = if threads == 1 { ops1 } else { ops16 };
                    let pool = if in_pool { big_pool } else { pool };
                    let mut a = args("a", "zipfian", ops, threads, pool);
                    if in_pool {
                        // The commit path alone: no first-touch reads, no
                        // page images of a fresh checkpoint's first changes.
                        a.push("--warm-up".into());
                    }
                    driver(kv, &a, "update").map(|(rate, _)| rate)
                }
                Item::Wal { committers } => wal(&ctx.work, committers, secs),
            };
            match r {
                Ok(x) => {
                    ctx.progress(
                        "store",
                        &format!("round {}: {}: {x:.0}", round + 1, item.name()),
                    );
                    this.rates[i] = Some(x);
                }
                Err(v) => {
                    ctx.progress("store", &format!("{}: {}", item.name(), v.text()));
                    errors[i] = Some(v);
                }
            }
        }
        rounds_done.push(this);
    }
    let _ = std::fs::remove_dir_all(&dir);

    let at = |i: usize| -> Vec<f64> { rounds_done.iter().filter_map(|r| r.rates[i]).collect() };
    let median_of = |v: &[f64], i: Option<usize>| -> Value {
        match i.and_then(|i| errors[i].clone()) {
            Some(e) => e,
            None if v.is_empty() => Value::not_available("no round finished"),
            None => Value::num(dbos_benches::median(v)),
        }
    };
    // Per-round ratio of items a / b, scaled by `scale(round)`.
    let ratio = |a: usize, b: usize, scale: &dyn Fn(&Round) -> Option<f64>| -> Value {
        if let Some(e) = errors[a].clone().or_else(|| errors[b].clone()) {
            return e;
        }
        let v: Vec<f64> = rounds_done
            .iter()
            .filter_map(|r| Some(r.rates[a]? * scale(r)? / r.rates[b]?))
            .collect();
        median_of(&v, None)
    };
    let read_ratio = ratio(0, 1, &|r| r.reads_per_op);
    let mut figures = vec![Figure {
        name: "store out of memory (4x the pool), workload C uniform, 1 thread: page reads/s \
               (lookups/s x page reads per lookup) / the disk's QD1 random reads/s"
            .into(),
        met: read_ratio.number().map(|r| r >= 0.85),
        value: read_ratio,
        unit: "x".into(),
        baseline: "QD1 random 4 KiB reads (pread, O_DIRECT) of the store's pages (IOPS)".into(),
        baseline_value: median_of(&at(1), Some(1)),
        target: format!(">= 0.85 ({TARGET_SOURCE})"),
        kind: Kind::WallClock,
    }];
    let mut out_of_memory = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let Item::Updates { threads, in_pool } = *item else {
            continue;
        };
        let wal_i = items
            .iter()
            .position(|w| {
                *w == Item::Wal {
                    committers: threads,
                }
            })
            .expect("a WAL item per thread count");
        let r = ratio(i, wal_i, &|_| Some(1.0));
        if !in_pool {
            // The target is the commit path's (a pool that holds
            // the store); out of memory each update also reads its leaf and
            // writes dirty victims first, which the bare WAL does not do.
            out_of_memory.push(match r.number() {
                Some(x) => format!("{threads} thread(s) {x:.3}x"),
                None => format!("{threads} thread(s) {}", r.text()),
            });
            continue;
        }
        figures.push(Figure {
            name: format!(
                "durable updates, workload A zipfian, {threads} thread(s), store in a pool \
                 that holds it: updates/s / the bare WAL's commits/s, {threads} committer(s)"
            ),
            met: r.number().map(|r| r >= 0.8),
            value: r,
            unit: "x".into(),
            baseline: format!(
                "wal-bench's engine on the direct device, FUA, {threads} committer(s) (commits/s)"
            ),
            baseline_value: median_of(&at(wal_i), Some(wal_i)),
            target: format!(">= 0.8 ({TARGET_SOURCE})"),
            kind: Kind::WallClock,
        });
    }
    s.figures = figures;
    let rows = items
        .iter()
        .enumerate()
        .map(|(i, item)| {
            let per_round = at(i)
                .iter()
                .map(|x| format!("{x:.0}"))
                .collect::<Vec<_>>()
                .join(", ");
            vec![
                Cell::from(item.name()),
                median_of(&at(i), Some(i)).into(),
                Cell::from(per_round),
            ]
        })
        .collect();
    let size = match &loaded {
        Ok((_, pages)) => format!(
            "{records} records, {pages} pages of tree ({:.1} MiB)",
            *pages as f64 * 4096.0 / f64::from(1 << 20)
        ),
        Err(v) => format!("no store ({})", v.text()),
    };
    s.tables.push(Table {
        title: format!("The store and its disk and log, {size}: medians of {rounds} round(s)"),
        command,
        kind: Kind::WallClock,
        columns: ["measurement", "median", "per round"]
            .map(String::from)
            .to_vec(),
        rows,
    });
    // Durable commits per second against threads: the store in and out
    // of its pool, and the bare WAL.
    let point = |item: Item, x: f64| {
        let i = items.iter().position(|it| *it == item)?;
        let v = at(i);
        (!v.is_empty()).then(|| (x, dbos_benches::median(&v)))
    };
    let series: Vec<Series> = [
        ("store, 4x the pool", Some(false)),
        ("store, in a pool that holds it", Some(true)),
        ("bare WAL", None),
    ]
    .into_iter()
    .map(|(name, in_pool)| Series {
        name: name.into(),
        points: [1usize, 16]
            .into_iter()
            .filter_map(|t| {
                let item = match in_pool {
                    Some(in_pool) => Item::Updates {
                        threads: t,
                        in_pool,
                    },
                    None => Item::Wal { committers: t },
                };
                point(item, t as f64)
            })
            .collect(),
    })
    .collect();
    plot::add(
        &mut s,
        &ctx.out,
        "store-updates-threads.svg",
        "Durable updates (store) and commits (bare WAL) per second against threads",
        Axis {
            label: "threads (log scale)",
            log: true,
        },
        Axis {
            label: "durable commits per second",
            log: false,
        },
        &series,
    );
    s.notes.push(format!(
        "Durable updates with the store 4x the pool (no target: an update first reads its \
         leaf and evicts dirty pages in its own thread, which the bare WAL does not do): \
         updates/s / the bare WAL's commits/s, medians of the per-round ratios: {}.",
        out_of_memory.join(", ")
    ));
    let reads_per_op: Vec<f64> = rounds_done.iter().filter_map(|r| r.reads_per_op).collect();
    if !reads_per_op.is_empty() {
        s.notes.push(format!(
            "Workload C, out of memory: {:.3} page reads per lookup (median of the rounds).",
            dbos_benches::median(&reads_per_op)
        ));
    }
    let stopped: Vec<String> = errors
        .iter()
        .flatten()
        .map(Value::text)
        .filter(|t| t.contains("FAILED"))
        .collect();
    if !stopped.is_empty() {
        let why = stopped.join("; ");
        s.notes.push(format!("failed: {why}"));
        s.failed = Some(why);
    }
    s
}

/// Formats and loads the store: the path of `dbos-kv` and the store's tree
/// pages.
fn load(
    ctx: &Ctx,
    dir: &Path,
    records: u64,
    pool: &str,
) -> Result<(std::path::PathBuf, u64), Value> {
    let kv = dbos_kv()?;
    if let Some(p) = disk_problem(&ctx.work) {
        return Err(Value::not_available(p));
    }
    ctx.progress("store", &format!("loading {records} records (pool {pool})"));
    let d = dir.display().to_string();
    let args = [
        "--dir",
        &d,
        "--size",
        &format!("{SIZE_MIB}M"),
        "--log",
        &format!("{LOG_MIB}M"),
        "--records",
        &records.to_string(),
        "--operations",
        "1",
        "--threads",
        "4",
        "--pool",
        pool,
        "--load-batch",
        "16",
        "--no-verify",
    ]
    .map(String::from);
    let out = workload(&kv, &args)?;
    let mib = parse_store_mib(&out)
        .ok_or_else(|| Value::not_available("dbos-kv workload printed no 'store:' line"))?;
    Ok((kv, (mib * f64::from(1 << 20) / 4096.0).round() as u64))
}

/// Runs the driver with `args`: the run phase's operations per second of
/// row `kind`, and its output. Bad reads fail it.
fn driver(kv: &Path, args: &[String], kind: &str) -> Result<(f64, String), Value> {
    let (_, out) = checked_workload(kv, args)?;
    let rate = parse_row_rate(&out, kind)
        .ok_or_else(|| Value::not_available(format!("dbos-kv workload printed no '{kind}' row")))?;
    Ok((rate, out))
}

/// QD1 random reads of the store's `pages` tree pages for `secs`: IOPS.
fn disk_reads(dir: &Path, pages: u64, secs: f64) -> Result<f64, Value> {
    let path = dir.join("kv.db");
    let file = BackingFile::open(&path)
        .map_err(|e| Value::not_available(format!("{}: {e}", path.display())))?;
    let mut dev: DirectDevice = direct(&Arc::new(file), 1)
        .pop()
        .ok_or_else(|| Value::not_available("no device"))?;
    let buf = DmaBytes::new(
        dev.alloc(1)
            .map_err(|e| Value::not_available(format!("no I/O buffer: {e}")))?,
    );
    let first = 2 + LOG_BLOCKS;
    Ok(qd1_reads(&mut dev, &buf, first..first + pages, secs))
}

/// The bare WAL with `committers` for `secs`: commits per second.
fn wal(work: &Path, committers: usize, secs: f64) -> Result<f64, Value> {
    let dir = work.join("store-wal");
    std::fs::create_dir_all(&dir)
        .map_err(|e| Value::not_available(format!("{}: {e}", dir.display())))?;
    let row = std::panic::catch_unwind(|| {
        dbos_benches::wal::engine_run(
            &dir,
            dbos_benches::wal::Dev::Direct,
            CommitMode::Fua,
            committers,
            secs,
            false,
            false,
        )
    })
    .map_err(|e| {
        Value::not_available(format!(
            "wal-bench FAILED: {}",
            super::panic_message(e.as_ref())
        ))
    })?;
    Ok(row.rate())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_run_phase_rows_and_counters_are_parsed() {
        let out = "load: x\ninsert 10 5.0 0 0 0 |\npage reads / op 9\n\nrun: workload a\n\
                   4000 operations in 1.137 s: 3516.7 ops/s; 0 failed, 0 not found, 0 wrong\n\n\
                   operation count ops/s failed notfound wrong | mean\n\
                   read                     1984      1744.3       0 |\n\
                   update                   2016      1772.4       0 |\n\n\
                   page reads / op                  0.6990\n";
        assert_eq!(parse_row_rate(out, "update"), Some(1772.4));
        assert_eq!(parse_row_rate(out, "read"), Some(1744.3));
        assert_eq!(parse_row_rate(out, "insert"), None);
        assert_eq!(parse_counter(out, "page reads / op"), Some(0.699));
        assert_eq!(
            super::super::kvstore::oom::parse_driver(out).map(|d| d.problems),
            Some(0.0)
        );
        assert_eq!(parse_counter("no run", "page reads / op"), None);
    }
}
