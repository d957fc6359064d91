//! Storage: the dbos queue pair in process mode, served by the poller
//! thread (poller + io_uring) and by the driver thread itself (`inline`,
//! no poller thread), against `pread`/`pwrite`, io_uring used directly and
//! fio, on one `O_DIRECT` file, in alternating rounds with medians
//! (`dbos_benches::nvme`, the code behind `nvme-compare`).

use super::plot::{self, Axis, Series};
use super::report::{Cell, Figure, Kind, Section, Table, Value};
use super::{disk_problem, installed, Ctx};
use dbos_benches::load::BackgroundLoad;
use dbos_benches::nvme::{
    prepare_file, run_fio, run_inline_queue_pair, run_pread, run_queue_pair, run_uring, Budget,
    Pattern, Summary, Workload,
};
use dbos_benches::{median_by, poller_config};
use dbos_nvme::host::UringConfig;
use std::time::Duration;

const METHODS: [&str; 5] = ["pread", "io_uring", "queue pair", "qp inline", "fio"];
/// Indexes into [`METHODS`].
const PREAD: usize = 0;
const QP: usize = 2;
const INLINE: usize = 3;
const FIO: usize = 4;
/// The two kinds of queue pair with the targets, and their names there.
const QUEUE_PAIRS: [(usize, &str); 2] = [(QP, "queue pair"), (INLINE, "queue pair (inline host)")];

/// Random-read queue depths (the IOPS-against-depth plot); QD1 and QD32
/// carry the targets.
const READ_DEPTHS: [usize; 3] = [1, 8, 32];
const WRITE_DEPTHS: [usize; 2] = [1, 32];

/// Busy threads beside the loaded runs (the queue pair's targets hold
/// quiet and with 2: `nvme/docs/benchmarks.md`, "Sharing the CPU").
const LOAD: usize = 2;

/// A workload's name, with the background load if any.
fn label(w: &Workload, load: usize) -> String {
    if load == 0 {
        w.name()
    } else {
        format!("{} +{load} busy threads", w.name())
    }
}

/// The workloads and the busy threads beside each: every one quiet, and
/// the random reads that carry targets at QD1 and QD32 also loaded.
fn workloads() -> Vec<(Workload, usize)> {
    let mut v: Vec<Workload> = READ_DEPTHS
        .iter()
        .map(|&depth| Workload {
            pattern: Pattern::RandRead,
            block: 4096,
            depth,
        })
        .collect();
    v.extend(WRITE_DEPTHS.iter().map(|&depth| Workload {
        pattern: Pattern::SeqWrite,
        block: 4096,
        depth,
    }));
    let mut all: Vec<(Workload, usize)> = v.iter().map(|&w| (w, 0)).collect();
    all.extend(
        v.iter()
            .filter(|w| w.pattern == Pattern::RandRead && (w.depth == 1 || w.depth == 32))
            .map(|&w| (w, LOAD)),
    );
    all
}

/// One method's median round on one workload, or why there is none.
type Outcome = Result<Summary, Value>;

/// Runs the section.
pub fn run(ctx: &Ctx) -> Section {
    let (size_mib, seconds, rounds) = if ctx.quick {
        (64u64, 0.2, 1usize)
    } else {
        (1024, 3.0, 3)
    };
    let mut s = Section::new(
        "storage",
        "Storage: the queue pair against pread, io_uring and fio",
        &format!(
            "4 KiB random reads at queue depth {READ_DEPTHS:?} and 4 KiB sequential writes at \
             {WRITE_DEPTHS:?} on one {size_mib} MiB O_DIRECT file, {seconds} s per run, \
             {rounds} round(s), each round running every method once in a rotated order; \
             each figure is a method's median round. pread: one thread per outstanding \
             request. io_uring: one thread, registered file and buffers. Queue pair: the dbos \
             NVMe queue pair in process mode, its poller thread issuing with io_uring. qp \
             inline: the same queue pair with its host run by the driver thread (its own \
             io_uring, no poller thread; nvme::host::inline). fio: \
             io_uring engine, fixed buffers (where installed). The random reads at QD1 and \
             QD32 run again with {LOAD} threads of pure computation beside them (the machine \
             shared), as the queue pair's targets ask (nvme/docs/benchmarks.md)."
        ),
    );
    let command = format!(
        "{} (building block: nvme-compare --size-mib {size_mib} --seconds {seconds} \
         --rounds {rounds})",
        ctx.command("storage")
    );
    if let Some(problem) = disk_problem(&ctx.work) {
        s.notes.push(format!("not available here: {problem}"));
        s.figures = targets(&[], &Value::not_available(problem));
        return s;
    }
    let path = ctx.work.join("storage.img");
    ctx.progress("storage", &format!("preparing a {size_mib} MiB file"));
    let file = match prepare_file(&path, size_mib << 20) {
        Ok(f) => f,
        Err(e) => {
            let why = format!("cannot prepare {}: {e}", path.display());
            s.notes.push(format!("not available here: {why}"));
            s.figures = targets(&[], &Value::not_available(why));
            return s;
        }
    };
    let have_fio = installed("fio");
    let budget = Budget::time(Duration::from_secs_f64(seconds));
    let poller = poller_config(None);
    let uring = UringConfig::default();
    // results[workload][method]
    let mut results: Vec<(Workload, usize, Vec<Outcome>)> = Vec::new();
    for (w, load) in workloads() {
        // Started before the rounds, stopped (dropped) after them.
        let _busy = BackgroundLoad::start(load);
        let mut runs: Vec<Vec<Summary>> = vec![Vec::new(); METHODS.len()];
        let mut failed: Vec<Option<Value>> = vec![None; METHODS.len()];
        if !have_fio {
            failed[FIO] = Some(Value::not_installed("fio"));
        }
        for round in 0..rounds {
            for k in 0..METHODS.len() {
                let m = (k + round) % METHODS.len();
                if failed[m].is_some() {
                    continue;
                }
                let r = match m {
                    PREAD => Ok(run_pread(&file, w, budget)),
                    QP => Ok(run_queue_pair(&file, w, budget, poller, uring)),
                    INLINE => Ok(run_inline_queue_pair(&file, w, budget, poller, uring)),
                    FIO => run_fio(&path, w, budget.time),
                    _ => Ok(run_uring(&file, w, budget)),
                };
                match r {
                    Ok(sum) => {
                        ctx.progress(
                            "storage",
                            &format!(
                                "{} round {}: {:<10} {:>8.0} IOPS, mean {:.1} us",
                                label(&w, load),
                                round + 1,
                                METHODS[m],
                                sum.iops,
                                sum.mean_us
                            ),
                        );
                        runs[m].push(sum);
                    }
                    Err(e) => {
                        ctx.progress(
                            "storage",
                            &format!("{}: {}: {e}", label(&w, load), METHODS[m]),
                        );
                        failed[m] = Some(Value::not_available(e));
                    }
                }
            }
        }
        let med = runs
            .iter()
            .zip(failed)
            .map(|(r, f)| match f {
                Some(v) => Err(v),
                None => Ok(median_by(r, |s| s.iops)),
            })
            .collect();
        results.push((w, load, med));
    }
    drop(file);
    let _ = std::fs::remove_file(&path);

    s.figures = targets(&results, &Value::not_installed("fio"));
    s.tables.push(results_table(&results, &command));
    s.tables.push(doorbells_table(&results, &command));
    plots(ctx, &mut s, &results);
    if !have_fio {
        s.notes.push(
            "fio is not installed (apt-get install fio): its rows and the QD32 target say so."
                .into(),
        );
    }
    let guest_reads: u64 = if ctx.quick { 2000 } else { 20_000 };
    let mut guest = Vec::new();
    for spin in GUEST_SPINS_US {
        for depth in [1usize, 32] {
            ctx.progress(
                "storage",
                &format!(
                    "guest: iobench fixed {guest_reads} {depth}, poller spin {spin} us (KVM, \
                     counted events)"
                ),
            );
            guest.push((depth, spin, guest_io(ctx, guest_reads, depth, spin)));
        }
    }
    let guest_command = format!(
        "{} (building block: dbos run --stats --disk DISK --disk-size 64M --disk-spin-us \
         SPIN {} -- fixed {guest_reads} DEPTH)",
        ctx.command("storage"),
        crate::guest_image("iobench").display()
    );
    s.figures.extend(guest_figures(&guest));
    s.tables.push(guest_table(&guest, &guest_command));
    s
}

/// The poller's spins before it parks (`--disk-spin-us`) the guest runs
/// with: the default, and long enough that it keeps polling between the
/// submissions of an emulated ring 0 (as the README's guest commands do
/// on such hosts).
const GUEST_SPINS_US: [u64; 2] = [200, 200_000];

/// What `dbos run --stats ... iobench` counted.
struct GuestIo {
    ios: f64,
    vmm_exits: f64,
    doorbells: f64,
    /// Every VM exit as KVM counted it (none where KVM keeps no
    /// statistics).
    kvm_exits: Option<f64>,
}

/// Runs the guest's random 4 KiB reads (`iobench fixed N DEPTH`, buffers
/// in declared DMA memory) under this dbos with `--stats`, and reads its
/// counts from the stats lines.
fn guest_io(ctx: &Ctx, reads: u64, depth: usize, spin_us: u64) -> Result<GuestIo, Value> {
    let disk = ctx.work.join("iobench.img");
    let (path, spin) = (disk.to_string_lossy(), spin_us.to_string());
    let run = [
        "--stats",
        "--time-limit",
        "300",
        "--disk",
        &path,
        "--disk-size",
        "64M",
        "--disk-spin-us",
        &spin,
    ];
    let ran = super::run_guest(
        "iobench",
        &run,
        &["fixed", &reads.to_string(), &depth.to_string()],
    );
    let _ = std::fs::remove_file(&disk);
    let (_, stderr) = ran?;
    parse_stats(&stderr).ok_or_else(|| Value::not_available("dbos --stats printed no counts"))
}

/// The counts in `dbos run --stats` output: "N exits to the VMM in ...:
/// ..., NvmeDoorbell D, ...", "all VM exits (KVM): K" and "disk: I I/Os
/// with fixed buffers, P with plain buffers".
fn parse_stats(stderr: &str) -> Option<GuestIo> {
    let num = |s: &str| s.trim_end_matches([',', ';', ':']).parse::<f64>().ok();
    let mut io = GuestIo {
        ios: f64::NAN,
        vmm_exits: f64::NAN,
        doorbells: 0.0,
        kvm_exits: None,
    };
    for line in stderr.lines() {
        let l = line.trim_start_matches("dbos: ");
        if let Some((n, rest)) = l.split_once(" exits to the VMM in ") {
            io.vmm_exits = num(n)?;
            let words: Vec<&str> = rest.split_whitespace().collect();
            if let Some(i) = words.iter().position(|w| *w == "NvmeDoorbell") {
                io.doorbells = num(words.get(i + 1)?)?;
            }
        } else if let Some(rest) = l.strip_prefix("all VM exits (KVM): ") {
            io.kvm_exits = rest.split_whitespace().next().and_then(num);
        } else if let Some(rest) = l.strip_prefix("disk: ") {
            let words: Vec<&str> = rest.split_whitespace().collect();
            let fixed = num(words.first()?)?;
            let plain = words
                .iter()
                .position(|w| *w == "with")
                .and_then(|_| {
                    let i = words.iter().position(|w| w.starts_with("buffers"))?;
                    num(words.get(i + 1)?)
                })
                .unwrap_or(0.0);
            io.ios = fixed + plain;
        }
    }
    (io.ios.is_finite() && io.vmm_exits.is_finite() && io.ios > 0.0).then_some(io)
}

fn guest_figures(guest: &[(usize, u64, Result<GuestIo, Value>)]) -> Vec<Figure> {
    let polling = GUEST_SPINS_US[GUEST_SPINS_US.len() - 1];
    guest
        .iter()
        .filter(|g| g.1 == polling)
        .map(|(depth, spin, g)| {
            let (value, base) = match g {
                Ok(g) => (
                    Value::num(g.doorbells / g.ios),
                    Value::num(g.vmm_exits / g.ios),
                ),
                Err(v) => (v.clone(), v.clone()),
            };
            Figure {
                name: format!(
                    "guest: doorbell exits per I/O, 4 KiB random reads QD{depth}, poller spin \
                     {spin} us"
                ),
                met: value.number().map(|x| x < 0.01),
                value,
                unit: "per I/O".into(),
                baseline: "every exit to the VMM in the run, set-up included, per I/O".into(),
                baseline_value: base,
                target: "< 0.01: no exit per I/O while the poller polls".into(),
                kind: Kind::Counted,
            }
        })
        .collect()
}

fn guest_table(guest: &[(usize, u64, Result<GuestIo, Value>)], command: &str) -> Table {
    let rows = guest
        .iter()
        .map(|(depth, spin, g)| {
            let mut row: Vec<Cell> = vec![
                format!("randread 4k qd{depth}").into(),
                spin.to_string().into(),
            ];
            match g {
                Ok(g) => {
                    row.push(Value::num(g.ios).into());
                    row.push(Value::num(g.doorbells / g.ios).into());
                    row.push(Value::num(g.vmm_exits / g.ios).into());
                    row.push(
                        g.kvm_exits
                            .map_or_else(
                                || Value::not_available("KVM keeps no exit statistics here"),
                                |k| Value::num(k / g.ios),
                            )
                            .into(),
                    );
                }
                Err(v) => row.extend((0..4).map(|_| Cell::from(v.clone()))),
            }
            row
        })
        .collect();
    Table {
        title: "Guest ring 0: exits per I/O through the queue pair (iobench, DMA buffers)".into(),
        command: command.into(),
        kind: Kind::Counted,
        columns: [
            "workload",
            "poller spin us",
            "I/Os",
            "doorbell exits per I/O",
            "exits to the VMM per I/O",
            "all VM exits (KVM) per I/O",
        ]
        .map(String::from)
        .to_vec(),
        rows,
    }
}

type Results = [(Workload, usize, Vec<Outcome>)];

fn find(results: &Results, p: Pattern, depth: usize, load: usize) -> Option<&Vec<Outcome>> {
    results
        .iter()
        .find(|(w, l, _)| w.pattern == p && w.depth == depth && w.block == 4096 && *l == load)
        .map(|r| &r.2)
}

/// The targets, for each kind of queue pair ([`QUEUE_PAIRS`]): QD32 random
/// reads >= 90% of fio's IOPS; QD1 mean latency
/// <= 1.2x pread's, for reads and for writes. `no_fio` is the value of a
/// figure that needs fio when fio gave none. The random-read targets also
/// with [`LOAD`] busy threads beside.
fn targets(results: &Results, no_fio: &Value) -> Vec<Figure> {
    let missing = |o: Option<&Outcome>, fallback: &Value| -> Value {
        match o {
            Some(Err(v)) => v.clone(),
            _ => fallback.clone(),
        }
    };
    let mut v = Vec::new();
    for (q, name) in QUEUE_PAIRS {
        for load in [0, LOAD] {
            let beside = if load == 0 {
                String::new()
            } else {
                format!(", {load} busy threads beside")
            };
            let reads32 = find(results, Pattern::RandRead, 32, load);
            let (qp, fio) = (
                reads32.and_then(|r| r[q].as_ref().ok()),
                reads32.and_then(|r| r[FIO].as_ref().ok()),
            );
            let (value, baseline_value) = match (qp, fio) {
                (Some(qp), Some(f)) => (Value::num(qp.iops / f.iops), Value::num(f.iops)),
                _ => (
                    missing(reads32.map(|r| &r[FIO]), no_fio),
                    missing(reads32.map(|r| &r[FIO]), no_fio),
                ),
            };
            v.push(ratio_figure(
                &format!("{name} IOPS / fio IOPS, 4 KiB random reads QD32{beside}"),
                value,
                "fio, io_uring engine, fixed buffers (IOPS)",
                baseline_value,
                ">= 0.90",
                |r| r >= 0.9,
            ));
            for (p, what) in [
                (Pattern::RandRead, "4 KiB random reads"),
                (Pattern::SeqWrite, "4 KiB sequential writes"),
            ] {
                if load > 0 && p == Pattern::SeqWrite {
                    continue;
                }
                let qd1 = find(results, p, 1, load);
                let (qp, pread) = (
                    qd1.and_then(|r| r[q].as_ref().ok()),
                    qd1.and_then(|r| r[PREAD].as_ref().ok()),
                );
                let (value, base) = match (qp, pread) {
                    (Some(qp), Some(b)) => {
                        (Value::num(qp.mean_us / b.mean_us), Value::num(b.mean_us))
                    }
                    _ => (
                        missing(qd1.map(|r| &r[q]), no_fio),
                        missing(qd1.map(|r| &r[PREAD]), no_fio),
                    ),
                };
                v.push(ratio_figure(
                    &format!("{name} mean latency / pread's, {what} QD1{beside}"),
                    value,
                    "pread/pwrite, one request at a time (mean latency, us)",
                    base,
                    "<= 1.2",
                    |r| r <= 1.2,
                ));
            }
        }
    }
    v
}

fn ratio_figure(
    name: &str,
    value: Value,
    baseline: &str,
    baseline_value: Value,
    target: &str,
    ok: impl Fn(f64) -> bool,
) -> Figure {
    Figure {
        name: name.into(),
        met: value.number().map(ok),
        value,
        unit: "x".into(),
        baseline: baseline.into(),
        baseline_value,
        target: target.into(),
        kind: Kind::WallClock,
    }
}

fn results_table(results: &Results, command: &str) -> Table {
    let mut rows = Vec::new();
    for (w, load, outcomes) in results {
        for (m, o) in METHODS.iter().zip(outcomes) {
            let mut row: Vec<Cell> = vec![label(w, *load).into(), (*m).into()];
            match o {
                Ok(s) => row.extend(
                    [s.iops, s.mean_us, s.p50_us, s.p99_us, s.ops as f64]
                        .map(|x| Cell::from(Value::num(x))),
                ),
                Err(v) => row.extend((0..5).map(|_| Cell::from(v.clone()))),
            }
            rows.push(row);
        }
    }
    Table {
        title: "IOPS and latency, each method's median round".into(),
        command: command.into(),
        kind: Kind::WallClock,
        columns: [
            "workload", "method", "IOPS", "mean us", "p50 us", "p99 us", "ops",
        ]
        .map(String::from)
        .to_vec(),
        rows,
    }
}

fn doorbells_table(results: &Results, command: &str) -> Table {
    let rows = results
        .iter()
        .map(|(w, load, o)| {
            let v = match &o[QP] {
                Ok(s) => match s.doorbells {
                    Some(d) => Value::num(d as f64 / s.ops.max(1) as f64),
                    None => Value::not_available("the queue pair counted no doorbells"),
                },
                Err(v) => v.clone(),
            };
            vec![label(w, *load).into(), v.into()]
        })
        .collect();
    Table {
        title: "Queue pair: doorbells rung per I/O (a doorbell wakes a parked poller)".into(),
        command: command.into(),
        kind: Kind::Counted,
        columns: vec!["workload".into(), "doorbells per I/O".into()],
        rows,
    }
}

fn plots(ctx: &Ctx, s: &mut Section, results: &Results) {
    for depth in [1, 32] {
        let Some(outcomes) = find(results, Pattern::RandRead, depth, 0) else {
            continue;
        };
        let series: Vec<Series> = METHODS
            .iter()
            .zip(outcomes)
            .filter_map(|(m, o)| {
                let sum = o.as_ref().ok()?;
                Some(Series {
                    name: m.to_string(),
                    points: sum.cdf.iter().map(|&(p, us)| (us, p / 100.0)).collect(),
                })
            })
            .collect();
        let file = format!("storage-cdf-randread-qd{depth}.svg");
        let title = format!("Latency CDF, 4 KiB random reads, QD{depth}");
        plot::add(
            s,
            &ctx.out,
            &file,
            &title,
            Axis {
                label: "latency (us, log scale)",
                log: true,
            },
            Axis {
                label: "fraction of requests at or below",
                log: false,
            },
            &series,
        );
    }
    let series: Vec<Series> = METHODS
        .iter()
        .enumerate()
        .map(|(i, m)| Series {
            name: m.to_string(),
            points: READ_DEPTHS
                .iter()
                .filter_map(|&d| {
                    let o = find(results, Pattern::RandRead, d, 0)?;
                    Some((d as f64, o[i].as_ref().ok()?.iops))
                })
                .collect(),
        })
        .collect();
    let file = "storage-iops-depth.svg";
    let title = "IOPS against queue depth, 4 KiB random reads";
    plot::add(
        s,
        &ctx.out,
        file,
        title,
        Axis {
            label: "queue depth (log scale)",
            log: true,
        },
        Axis {
            label: "IOPS",
            log: false,
        },
        &series,
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dbos_stats_lines_are_parsed() {
        let err = "dbos: guest exited with status 0 (from vCPU 0)\n\
            dbos: 11 exits to the VMM in 253.061 ms: Console 1, Exit 1, NvmeInfo 2, NvmeCreateQueue 1, NvmeDoorbell 2, DmaDeclare 1\n\
            dbos: all VM exits (KVM): 510; other KVM events: insn_emulation 511714\n\
            dbos: disk: 2000 I/Os with fixed buffers, 0 with plain buffers; 1 DMA regions\n";
        let g = parse_stats(err).unwrap();
        assert_eq!(g.ios, 2000.0);
        assert_eq!(g.vmm_exits, 11.0);
        assert_eq!(g.doorbells, 2.0);
        assert_eq!(g.kvm_exits, Some(510.0));
        let f = guest_figures(&[(1, 200_000, Ok(g))]);
        assert_eq!(f[0].value.number(), Some(0.001));
        assert_eq!(f[0].met, Some(true));
        assert!(parse_stats("dbos: guest exited").is_none());
    }
}
