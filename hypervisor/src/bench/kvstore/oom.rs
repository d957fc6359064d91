//! Out of memory over the protocol: workload C, uniform, on a btree store
//! about 5x its buffer pool, read by `dbos-kv bench` through `dbos-kv
//! serve --pool SMALL` and by the in-process driver `dbos-kv workload
//! --no-load` on the same store and pool, alternating, at 1, 4 and 16
//! clients; the protocol / in-process ratio of reads per second.

use super::super::report::{Cell, Figure, Kind, Table, Value};
use super::super::{disk_problem, Ctx};
use super::servers::{bench, bench_args, launch, stop, ycsb_args, Kind as ServerKind};
use dbos_benches::child::dies_with_parent;
use std::path::Path;
use std::process::{Command, Stdio};

/// The target's source in the repository.
const TARGET: &str = ">= 0.8 (README, section 'The Redis-protocol server')";

/// What `dbos-kv workload` printed about its run phase and the store.
#[derive(Clone, Debug, PartialEq)]
pub struct Driver {
    pub ops_per_s: f64,
    /// Failed operations, records not found, wrong values.
    pub problems: f64,
}

/// The run phase's line `N operations in T s: R ops/s; F failed, M not
/// found, W wrong` after the `run: ...` header, in `dbos-kv workload`
/// output.
pub fn parse_driver(out: &str) -> Option<Driver> {
    let mut lines = out.lines().skip_while(|l| !l.starts_with("run: "));
    lines.next()?;
    let line = lines.next()?;
    let (_, rest) = line.split_once(" s: ")?;
    let (rate, rest) = rest.split_once(" ops/s; ")?;
    let mut problems = 0.0;
    for part in rest.split(", ") {
        let n: f64 = part.split_whitespace().next()?.parse().ok()?;
        problems += n;
    }
    Some(Driver {
        ops_per_s: rate.trim().parse().ok()?,
        problems,
    })
}

/// The store's size in MiB from the line `store: N pages of tree (M MiB)`.
pub fn parse_store_mib(out: &str) -> Option<f64> {
    let line = out.lines().find(|l| l.starts_with("store: "))?;
    let pages: f64 = line
        .trim_start_matches("store: ")
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    Some(pages * 4096.0 / f64::from(1 << 20))
}

/// Runs `dbos-kv workload ARGS`; its output, or why it failed.
pub fn workload(kv: &Path, args: &[String]) -> Result<String, Value> {
    let out = dies_with_parent(&mut Command::new(kv))
        .arg("workload")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| Value::not_available(format!("running dbos-kv workload: {e}")))?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        return Err(Value::not_available(format!(
            "dbos-kv workload FAILED ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
                .lines()
                .chain(stdout.lines())
                .last()
                .unwrap_or("")
        )));
    }
    Ok(stdout)
}

/// The arguments of a `dbos-kv workload` run on the store in `dir`.
pub fn workload_args(
    dir: &Path,
    workload: &str,
    distribution: &str,
    records: u64,
    operations: u64,
    threads: usize,
    pool: &str,
) -> Vec<String> {
    let mut a = vec!["--dir".to_string(), dir.display().to_string()];
    a.extend(ycsb_args(workload, distribution, records, operations));
    a.extend(["--threads", &threads.to_string(), "--pool", pool].map(String::from));
    a
}

/// Runs `dbos-kv workload ARGS` and checks its run phase: what it printed
/// of it and its whole output; failed, missing or wrong operations fail
/// it.
pub fn checked_workload(kv: &Path, args: &[String]) -> Result<(Driver, String), Value> {
    let out = workload(kv, args)?;
    match parse_driver(&out) {
        Some(d) if d.problems == 0.0 => Ok((d, out)),
        Some(d) => Err(Value::not_available(format!(
            "dbos-kv workload FAILED: {} failed, missing or wrong operations",
            d.problems
        ))),
        None => Err(Value::not_available(
            "dbos-kv workload printed no run phase",
        )),
    }
}

/// What this part adds to the section.
pub struct Part {
    pub figures: Vec<Figure>,
    pub table: Table,
    pub note: Option<String>,
}

/// Runs the comparison.
pub fn run(ctx: &Ctx, kv: &Result<std::path::PathBuf, Value>) -> Part {
    // About 184 bytes of store per 100-byte record (measured): 5x the pool.
    let (pool, pool_bytes, operations, rounds): (&'static str, u64, u64, usize) = if ctx.quick {
        ("256K", 256 << 10, 1000, 1)
    } else {
        ("4M", 4 << 20, 20_000, 3)
    };
    let records = pool_bytes * 5 / 184;
    let clients = [1usize, 4, 16];
    let dir = ctx.work.join("oom-driver");
    let command = format!(
        "{} (building block: dbos-kv workload --dir DIR --workload c --distribution uniform \
         --records {records} --pool {pool} --no-load --no-verify --operations {operations} \
         --threads N, against dbos-kv serve --dir DIR2 --engine btree --pool {pool} and \
         dbos-kv bench --workload c --distribution uniform --phase run --clients N; the same \
         records in both stores)",
        ctx.command("kvstore")
    );
    let common = |ops: u64, threads: usize| -> Vec<String> {
        workload_args(&dir, "c", "uniform", records, ops, threads, pool)
    };
    // Two stores of the same records: the server's values carry its own
    // header, so it cannot open the in-process driver's store. The driver's
    // is loaded in process (batched), the server's over the protocol.
    let loaded: Result<f64, Value> = (|| {
        let kv = kv.clone()?;
        if let Some(p) = disk_problem(&ctx.work) {
            return Err(Value::not_available(p));
        }
        ctx.progress(
            "kvstore",
            &format!("out of memory: loading {records} records in process (pool {pool})"),
        );
        let mut args = common(1, 4);
        args.extend(["--load-batch".into(), "16".into(), "--no-verify".into()]);
        let out = workload(&kv, &args)?;
        parse_store_mib(&out).ok_or_else(|| {
            Value::not_available("dbos-kv workload printed no 'store:' line".to_string())
        })
    })();
    let server = loaded.clone().and_then(|_| {
        let s = launch(ctx, kv, ServerKind::DbosBtree { pool }, "oom-server")?;
        ctx.progress(
            "kvstore",
            &format!("out of memory: loading {records} records over the protocol"),
        );
        let args = bench_args("c", "uniform", records, 1, 16, "load");
        let kvp = kv.clone()?;
        match bench(&kvp, s.port, &args, "load") {
            Ok(p) if p.problems == 0.0 => Ok(s),
            Ok(p) => {
                stop(s);
                Err(Value::not_available(format!(
                    "the load over the protocol FAILED: {} bad replies",
                    p.problems
                )))
            }
            Err(v) => {
                stop(s);
                Err(v)
            }
        }
    });
    // [clients] = (in-process, protocol) per-round rates, and per-round
    // ratios.
    let mut rates: Vec<[Result<Vec<f64>, Value>; 2]> = Vec::new();
    let mut ratios: Vec<Vec<f64>> = vec![Vec::new(); clients.len()];
    for _ in clients {
        rates.push([
            loaded.clone().map(|_| Vec::new()),
            server.as_ref().map(|_| Vec::new()).map_err(Clone::clone),
        ]);
    }
    for round in 0..rounds {
        for (ci, &c) in clients.iter().enumerate() {
            let mut this = [None, None];
            let order = if (round + ci) % 2 == 0 {
                [1, 0]
            } else {
                [0, 1]
            };
            for side in order {
                if rates[ci][side].is_err() {
                    continue;
                }
                let Ok(kvp) = kv else { continue };
                let r: Result<f64, Value> = match (side, &server) {
                    (0, _) => {
                        let mut args = common(operations, c);
                        args.extend(["--no-load".into(), "--no-verify".into()]);
                        checked_workload(kvp, &args).map(|(d, _)| d.ops_per_s)
                    }
                    (_, Ok(s)) => {
                        let args = bench_args("c", "uniform", records, operations, c, "run");
                        bench(kvp, s.port, &args, "run").and_then(|p| {
                            if p.problems == 0.0 {
                                Ok(p.ops_per_s)
                            } else {
                                Err(Value::not_available(format!(
                                    "dbos-kv bench FAILED: {} bad replies",
                                    p.problems
                                )))
                            }
                        })
                    }
                    (_, Err(v)) => Err(v.clone()),
                };
                match r {
                    Ok(x) => {
                        ctx.progress(
                            "kvstore",
                            &format!(
                                "out of memory round {}: {} {c} client(s): {x:.0} reads/s",
                                round + 1,
                                ["in-process", "protocol"][side]
                            ),
                        );
                        this[side] = Some(x);
                        if let Ok(v) = &mut rates[ci][side] {
                            v.push(x);
                        }
                    }
                    Err(v) => {
                        ctx.progress("kvstore", &format!("out of memory: {}", v.text()));
                        rates[ci][side] = Err(v);
                    }
                }
            }
            if let [Some(a), Some(b)] = this {
                ratios[ci].push(b / a);
            }
        }
    }
    if let Ok(s) = server {
        stop(s);
    }
    let med = |v: &[f64]| {
        if v.is_empty() {
            Value::not_available("no round finished")
        } else {
            Value::num(dbos_benches::median(v))
        }
    };
    let side = |r: &Result<Vec<f64>, Value>| r.as_ref().map_or_else(Clone::clone, |v| med(v));
    let mut rows = Vec::new();
    let mut figures = Vec::new();
    for (ci, &c) in clients.iter().enumerate() {
        let ratio = match &rates[ci] {
            [Err(e), _] | [_, Err(e)] => e.clone(),
            _ => med(&ratios[ci]),
        };
        let inproc = side(&rates[ci][0]);
        rows.push(vec![
            Cell::from(c.to_string()),
            side(&rates[ci][1]).into(),
            inproc.clone().into(),
            ratio.clone().into(),
        ]);
        figures.push(Figure {
            name: format!(
                "out of memory, workload C uniform: protocol / in-process reads per second, {c} \
                 client(s)"
            ),
            met: ratio.number().map(|r| r >= 0.8),
            value: ratio,
            unit: "x".into(),
            baseline: "dbos-kv workload, the in-process driver on the same store and pool \
                       (reads/s)"
                .into(),
            baseline_value: inproc,
            target: TARGET.into(),
            kind: Kind::WallClock,
        });
    }
    let size = match &loaded {
        Ok(mib) => format!(
            "{records} records (the in-process store {mib:.1} MiB, {:.1}x the {pool} pool; \
             the server's holds the same records, each value with its header)",
            mib * f64::from(1 << 20) / pool_bytes as f64
        ),
        Err(v) => format!("no store ({})", v.text()),
    };
    Part {
        figures,
        table: Table {
            title: format!(
                "Out of memory: workload C, uniform, {size}, {operations} reads per run, \
                 {rounds} alternating round(s), medians"
            ),
            command,
            kind: Kind::WallClock,
            columns: [
                "clients",
                "protocol reads/s",
                "in-process reads/s",
                "protocol / in-process",
            ]
            .map(String::from)
            .to_vec(),
            rows,
        },
        note: Some(match loaded {
            Ok(_) => "Out of memory: dbos-kv serve's btree engine runs one event loop per \
                      CPU, and a loop reads the pages its lookups miss with an io_uring of \
                      its own while it serves its other clients, so every waiting client's \
                      read is in flight at once. Each request over the protocol also pays \
                      two wake-ups (the server's epoll_wait and the client's recv; measured \
                      by hand at e602f4c with perf stat -a: 3.6 context switches per read \
                      over the protocol against 1.3 in process at 4 clients), and a profile \
                      of the server (perf record, 4 clients) puts 18% of its time in the \
                      reply's send, where loopback TCP delivers to the client and wakes it, \
                      and 16% in the disk's doorbell write of each read (a VM exit): on this \
                      2-core virtual machine, costs the in-process driver does not have."
                .to_string(),
            Err(v) => format!("out of memory: {}", v.text()),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_driver_output_is_parsed() {
        let out = "load: x\n20000 operations in 3.657 s: 5469.3 ops/s; 0 failed, 0 not found, \
                   0 wrong\n\nrun: workload c\n1000 operations in 0.252 s: 3973.8 ops/s; 1 \
                   failed, 2 not found, 0 wrong\ntotal 1000\nstore: 997 pages of tree (3 MiB), \
                   0 free; pool 1 MiB\n";
        assert_eq!(
            parse_driver(out),
            Some(Driver {
                ops_per_s: 3973.8,
                problems: 3.0
            })
        );
        let mib = parse_store_mib(out).unwrap();
        assert!((mib - 3.894).abs() < 0.01, "{mib}");
        assert_eq!(parse_driver("nothing"), None);
    }
}
