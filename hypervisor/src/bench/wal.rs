//! WAL: commit latency through the engine and its group commit against
//! one raw durable 8 KiB write (`O_DIRECT|O_DSYNC`), and commits per
//! second over 1..N committers, with FUA log writes and with plain log
//! writes plus one flush per batch, on the queue pair (process mode) and on the
//! direct device (`dbos_benches::wal`, the code behind `wal-bench`), in
//! alternating rounds with medians of the per-round ratios.

use super::plot::{self, Axis, Series};
use super::report::{Cell, Figure, Kind, Section, Table, Value};
use super::{disk_problem, Ctx};
use dbos_benches::load::BackgroundLoad;
use dbos_benches::median;
use dbos_benches::wal::{engine_run, raw_dsync_loop, Dev, Row, TXN_BYTES};
use dbos_bufferpool::CommitMode;

const DEVICES: [Dev; 2] = [Dev::Qp, Dev::Direct];
/// FUA log writes, and plain log writes with one flush per batch.
const MODES: [CommitMode; 2] = [CommitMode::Fua, CommitMode::WriteFlush];

/// A mode's name in tables and plots.
fn mode_name(mode: CommitMode) -> &'static str {
    match mode {
        CommitMode::Fua => "FUA",
        CommitMode::WriteFlush => "write+flush",
    }
}

/// One round's measurements: the raw write's mean latency (us) and, per
/// device, commit mode and committer count, the engine's row.
struct Round {
    raw_us: Result<f64, Value>,
    /// The raw write's p99 latency (us).
    raw_p99_us: Result<f64, Value>,
    runs: Vec<(Dev, CommitMode, usize, Result<Row, Value>)>,
}

/// Runs the section.
pub fn run(ctx: &Ctx) -> Section {
    let (committers, secs, rounds): (Vec<usize>, f64, usize) = if ctx.quick {
        (vec![1, 4, 16], 0.2, 1)
    } else {
        (vec![1, 4, 16, 64], 2.0, 3)
    };
    let mut s = Section::new(
        "wal",
        "WAL: commit latency against the raw durable write, group commit",
        &format!(
            "Each round: a loop of 8 KiB O_DIRECT|O_DSYNC pwrites (the raw durable write), \
             then {committers:?} committer threads, each committing 2-key transactions \
             through a fresh engine (WAL with group commit) for {secs} s, with FUA log \
             writes and with plain log writes plus one flush per batch (write+flush), on \
             the queue pair (its poller thread issuing with io_uring) and on the direct \
             device (the committers' own system calls); {rounds} round(s), figures are \
             medians of per-round ratios. Each round runs again with {LOAD} threads of pure \
             computation beside it, at 1 and {} committers.",
            many_of(&committers)
        ),
    );
    let command = format!(
        "{} (building block: wal-bench --seconds {secs} --rounds {rounds} --device both)",
        ctx.command("wal")
    );
    if let Some(problem) = disk_problem(&ctx.work) {
        s.notes.push(format!("not available here: {problem}"));
        s.figures = figures(&[], &committers, &Value::not_available(problem), "");
        return s;
    }
    let dir = ctx.work.clone();
    // Quiet, every committer count; with LOAD busy threads beside, 1 and
    // the many the scaling target is about. Interleaved round by round.
    let many = many_of(&committers);
    let loaded_committers = vec![1, many];
    let mut done: Vec<Round> = Vec::new();
    let mut done_loaded: Vec<Round> = Vec::new();
    for round in 1..=rounds {
        for load in [0, LOAD] {
            let _busy = BackgroundLoad::start(load);
            let (committers, tag) = if load == 0 {
                (&committers, String::new())
            } else {
                (&loaded_committers, format!(" +{load} busy threads"))
            };
            ctx.progress(
                "wal",
                &format!("round {round}{tag}: raw 8 KiB O_DSYNC writes"),
            );
            // A workload that fails panics: the section fails (mod.rs).
            let raw: Result<_, Value> = Ok(raw_dsync_loop(&dir, secs));
            let raw_us = raw.clone().map(|(n, el, _)| el / n as f64 * 1e6);
            let raw_p99_us = raw.map(|(_, _, p99)| p99);
            if let Ok(us) = &raw_us {
                ctx.progress("wal", &format!("  raw write mean {us:.1} us"));
            }
            let mut runs = Vec::new();
            for dev in DEVICES {
                for mode in MODES {
                    for &c in committers.iter() {
                        ctx.progress(
                            "wal",
                            &format!(
                                "round {round}{tag}: {} {}, {c} committer(s)",
                                dev.name(),
                                mode_name(mode)
                            ),
                        );
                        let r: Result<Row, Value> =
                            Ok(engine_run(&dir, dev, mode, c, secs, false, false));
                        if let Ok(row) = &r {
                            ctx.progress(
                                "wal",
                                &format!(
                                    "  {:.0} commits/s, mean {:.1} us",
                                    row.rate(),
                                    row.mean_latency_us
                                ),
                            );
                        }
                        runs.push((dev, mode, c, r));
                    }
                }
            }
            let r = Round {
                raw_us,
                raw_p99_us,
                runs,
            };
            if load == 0 {
                done.push(r);
            } else {
                done_loaded.push(r);
            }
        }
    }
    let none = Value::not_available("no round ran");
    s.figures = figures(&done, &committers, &none, "");
    let beside = format!(", {LOAD} busy threads beside");
    s.figures
        .extend(figures(&done_loaded, &loaded_committers, &none, &beside));
    s.tables.push(table(&done, &command, &committers, ""));
    s.tables
        .push(table(&done_loaded, &command, &loaded_committers, &beside));
    s.tables.push(counted_table(&done, &command, &committers));
    plots(ctx, &mut s, &done, &committers);
    s
}

/// Busy threads beside the loaded runs (every comparison runs quiet and
/// with 2, as in the other sections).
const LOAD: usize = 2;

/// The committer count the scaling target is about: 16, or the largest
/// run.
fn many_of(committers: &[usize]) -> usize {
    if committers.contains(&16) {
        16
    } else {
        *committers.last().unwrap_or(&1)
    }
}

fn find(round: &Round, dev: Dev, mode: CommitMode, c: usize) -> Result<&Row, Value> {
    match round
        .runs
        .iter()
        .find(|r| r.0 == dev && r.1 == mode && r.2 == c)
    {
        Some((_, _, _, Ok(row))) => Ok(row),
        Some((_, _, _, Err(v))) => Err(v.clone()),
        None => Err(Value::not_available(format!("{c} committers not run"))),
    }
}

/// The median over rounds of `f`, or the first reason a round had none.
fn median_of(rounds: &[Round], none: &Value, f: impl Fn(&Round) -> Result<f64, Value>) -> Value {
    let mut v = Vec::new();
    for r in rounds {
        match f(r) {
            Ok(x) => v.push(x),
            Err(e) => return e,
        }
    }
    if v.is_empty() {
        none.clone()
    } else {
        Value::num(median(&v))
    }
}

/// Per device: FUA 1-committer commit latency <= 1.2x the raw write;
/// 16 committers >= 6x the commits/s of 1 (the targets `wal-bench` checks).
fn figures(rounds: &[Round], committers: &[usize], none: &Value, beside: &str) -> Vec<Figure> {
    let many = many_of(committers);
    let mut v = Vec::new();
    for dev in DEVICES {
        let lat = median_of(rounds, none, |r| {
            let raw = r.raw_us.clone()?;
            Ok(find(r, dev, CommitMode::Fua, 1)?.mean_latency_us / raw)
        });
        v.push(Figure {
            name: format!(
                "{}: commit latency, 1 committer / raw 8 KiB O_DSYNC write{beside}",
                dev.name()
            ),
            met: lat.number().map(|x| x <= 1.2),
            value: lat,
            unit: "x".into(),
            baseline: "one raw 8 KiB O_DIRECT|O_DSYNC pwrite (mean us, median round)".into(),
            baseline_value: median_of(rounds, none, |r| r.raw_us.clone()),
            target: "<= 1.2 (benches/src/bin/wal-bench.rs)".into(),
            kind: Kind::WallClock,
        });
        let scale = median_of(rounds, none, |r| {
            Ok(find(r, dev, CommitMode::Fua, many)?.rate()
                / find(r, dev, CommitMode::Fua, 1)?.rate())
        });
        v.push(Figure {
            name: format!(
                "{}: commits/s, {many} committers / 1 committer{beside}",
                dev.name()
            ),
            met: scale.number().map(|x| x >= 6.0),
            value: scale,
            unit: "x".into(),
            baseline: "1 committer on the same device (commits/s, median round)".into(),
            baseline_value: median_of(rounds, none, |r| {
                Ok(find(r, dev, CommitMode::Fua, 1)?.rate())
            }),
            target: ">= 6 (benches/src/bin/wal-bench.rs)".into(),
            kind: Kind::WallClock,
        });
    }
    v
}

/// The round whose 1-committer qp latency is the median (the table shows
/// one whole round, so that its ratios are side by side).
fn shown(rounds: &[Round]) -> Option<&Round> {
    let mut idx: Vec<usize> = (0..rounds.len()).collect();
    let key = |i: &usize| {
        find(&rounds[*i], Dev::Qp, CommitMode::Fua, 1).map_or(f64::INFINITY, |r| r.mean_latency_us)
    };
    idx.sort_by(|a, b| key(a).total_cmp(&key(b)));
    idx.get(idx.len().saturating_sub(1) / 2)
        .map(|&i| &rounds[i])
}

fn table(rounds: &[Round], command: &str, committers: &[usize], beside: &str) -> Table {
    let mut rows: Vec<Vec<Cell>> = Vec::new();
    if let Some(r) = shown(rounds) {
        rows.push(vec![
            "raw 8 KiB O_DSYNC pwrite".into(),
            "1".into(),
            match &r.raw_us {
                Ok(us) => Value::num(1e6 / us),
                Err(v) => v.clone(),
            }
            .into(),
            r.raw_us.clone().map_or_else(|v| v, Value::num).into(),
            r.raw_p99_us.clone().map_or_else(|v| v, Value::num).into(),
            Value::num(1.0).into(),
            Value::num(1.0).into(),
        ]);
        for (dev, mode) in DEVICES
            .iter()
            .flat_map(|&d| MODES.iter().map(move |&m| (d, m)))
        {
            let one = find(r, dev, mode, 1).map(|x| x.rate());
            for &c in committers {
                let mut row: Vec<Cell> = vec![
                    format!("{} {}", dev.name(), mode_name(mode)).into(),
                    c.to_string().into(),
                ];
                match find(r, dev, mode, c) {
                    Ok(x) => {
                        row.push(Value::num(x.rate()).into());
                        row.push(Value::num(x.mean_latency_us).into());
                        row.push(Value::num(x.p99_latency_us).into());
                        row.push(
                            r.raw_us
                                .clone()
                                .map_or_else(|v| v, |raw| Value::num(x.mean_latency_us / raw))
                                .into(),
                        );
                        row.push(
                            one.clone()
                                .map_or_else(|v| v, |o| Value::num(x.rate() / o))
                                .into(),
                        );
                    }
                    Err(v) => row.extend((0..5).map(|_| Cell::from(v.clone()))),
                }
                rows.push(row);
            }
        }
    }
    Table {
        title: format!("Commits against the raw durable write (the median round){beside}"),
        command: command.into(),
        kind: Kind::WallClock,
        columns: [
            "what",
            "committers",
            "commits/s",
            "mean us",
            "p99 us",
            "latency vs raw",
            "commits/s vs 1 committer",
        ]
        .map(String::from)
        .to_vec(),
        rows,
    }
}

fn counted_table(rounds: &[Round], command: &str, committers: &[usize]) -> Table {
    let mut rows: Vec<Vec<Cell>> = Vec::new();
    if let Some(r) = shown(rounds) {
        for (dev, mode) in DEVICES
            .iter()
            .flat_map(|&d| MODES.iter().map(move |&m| (d, m)))
        {
            for &c in committers {
                let mut row: Vec<Cell> = vec![
                    format!("{} {}", dev.name(), mode_name(mode)).into(),
                    c.to_string().into(),
                ];
                match find(r, dev, mode, c) {
                    Ok(x) => {
                        row.push(Value::num(x.commits as f64).into());
                        row.push(Value::num(x.commits as f64 / x.batches as f64).into());
                        row.push(
                            Value::num(x.log_bytes as f64 / (x.commits * TXN_BYTES) as f64).into(),
                        );
                    }
                    Err(v) => row.extend((0..3).map(|_| Cell::from(v.clone()))),
                }
                rows.push(row);
            }
        }
    }
    Table {
        title: "Group commit: commits per log batch and log bytes per committed byte".into(),
        command: command.into(),
        kind: Kind::Counted,
        columns: [
            "device and commit mode",
            "committers",
            "commits",
            "commits per batch",
            "log bytes per committed byte",
        ]
        .map(String::from)
        .to_vec(),
        rows,
    }
}

fn plots(ctx: &Ctx, s: &mut Section, rounds: &[Round], committers: &[usize]) {
    let Some(r) = shown(rounds) else {
        return;
    };
    let series = |f: &dyn Fn(&Row) -> f64| -> Vec<Series> {
        DEVICES
            .iter()
            .flat_map(|&d| MODES.iter().map(move |&m| (d, m)))
            .map(|(dev, mode)| Series {
                name: format!("{} {}", dev.name(), mode_name(mode)),
                points: committers
                    .iter()
                    .filter_map(|&c| Some((c as f64, f(find(r, dev, mode, c).ok()?))))
                    .collect(),
            })
            .collect()
    };
    let title = "Commits per second against committers (FUA and write+flush log writes)";
    plot::add(
        s,
        &ctx.out,
        "wal-commits-committers.svg",
        title,
        Axis {
            label: "committers (log scale)",
            log: true,
        },
        Axis {
            label: "commits per second",
            log: false,
        },
        &series(&|x| x.rate()),
    );
    let title = "Mean commit latency against committers (FUA and write+flush log writes)";
    plot::add(
        s,
        &ctx.out,
        "wal-latency-committers.svg",
        title,
        Axis {
            label: "committers (log scale)",
            log: true,
        },
        Axis {
            label: "mean commit latency (us)",
            log: false,
        },
        &series(&|x| x.mean_latency_us),
    );
}
