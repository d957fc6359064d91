//! `redis-benchmark -t set,get` (with and without `-P 16`) against
//! `dbos-kv serve --engine memory` and Redis without persistence, in
//! alternating rounds; the medians of the per-round SET and GET ratios,
//! and `redis-benchmark --csv` parsed.

use super::super::report::{Cell, Figure, Kind, Table, Value};
use super::super::{installed, Ctx};
use super::servers::{launch, stop, wait_or_kill, Kind as ServerKind};
use super::TARGET_SOURCE;
use dbos_benches::child::dies_with_parent;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

/// Requests per second of SET and GET in one run.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Rates {
    pub set: f64,
    pub get: f64,
}

/// SET's and GET's requests per second in `redis-benchmark --csv` output
/// (a header line `"test","rps",...`, then a line per test).
pub fn parse_csv(out: &str) -> Option<Rates> {
    let (mut set, mut get) = (None, None);
    for line in out.lines() {
        let cols: Vec<&str> = line
            .split(',')
            .map(|c| c.trim().trim_matches('"'))
            .collect();
        let (Some(test), Some(rps)) = (cols.first(), cols.get(1)) else {
            continue;
        };
        let Ok(rps) = rps.parse::<f64>() else {
            continue;
        };
        match *test {
            "SET" => set = Some(rps),
            "GET" => get = Some(rps),
            _ => {}
        }
    }
    Some(Rates {
        set: set?,
        get: get?,
    })
}

/// One run: its rates, and how busy redis-benchmark itself was.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Run {
    pub rates: Rates,
    /// redis-benchmark's CPU time over its run's wall time, in cores (it
    /// is one thread: near 1, the client, not the server, set the pace).
    pub client_cores: f64,
}

/// CPU seconds (user + system) of this process's children that have
/// been waited for.
fn waited_children_cpu_s() -> f64 {
    // SAFETY: getrusage writes one `rusage` into the zeroed value it is
    // given and keeps no pointer to it.
    let ru = unsafe {
        let mut ru: libc::rusage = std::mem::zeroed();
        if libc::getrusage(libc::RUSAGE_CHILDREN, &mut ru) != 0 {
            return 0.0;
        }
        ru
    };
    let s = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    s(ru.ru_utime) + s(ru.ru_stime)
}

/// Which tool the rows of each side need, if one is missing: the whole
/// comparison needs redis-benchmark; the Redis side needs redis-server.
pub fn missing(have_benchmark: bool, have_server: bool) -> (Option<Value>, Option<Value>) {
    if !have_benchmark {
        let v = Value::not_installed("redis-benchmark");
        return (Some(v.clone()), Some(v));
    }
    (
        None,
        (!have_server).then(|| Value::not_installed("redis-server")),
    )
}

/// One `redis-benchmark` run against `port`, killed if it has not ended
/// within `limit` (it retries a refused connection forever).
fn run_once(port: u16, n: u64, pipeline: u32, limit: Duration) -> Result<Run, Value> {
    let mut args: Vec<String> = [
        "-p",
        &port.to_string(),
        "-t",
        "set,get",
        "-n",
        &n.to_string(),
        "-c",
        "50",
        "-r",
        "100000",
        "-d",
        "100",
        "--csv",
    ]
    .map(String::from)
    .to_vec();
    if pipeline > 1 {
        args.extend(["-P".into(), pipeline.to_string()]);
    }
    let cpu0 = waited_children_cpu_s();
    let mut child = dies_with_parent(&mut Command::new("redis-benchmark"))
        .args(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| Value::not_available(format!("running redis-benchmark: {e}")))?;
    // Read its output on threads so that a full pipe never stalls it.
    let mut stdout = child.stdout.take();
    let mut stderr = child.stderr.take();
    let out = std::thread::spawn(move || {
        let mut s = String::new();
        if let Some(o) = stdout.as_mut() {
            let _ = std::io::Read::read_to_string(o, &mut s);
        }
        s
    });
    let err = std::thread::spawn(move || {
        let mut s = String::new();
        if let Some(o) = stderr.as_mut() {
            let _ = std::io::Read::read_to_string(o, &mut s);
        }
        s
    });
    let start = std::time::Instant::now();
    wait_or_kill(&mut child, limit);
    let status = child.wait().ok();
    let wall = start.elapsed().as_secs_f64();
    let client_cores = (waited_children_cpu_s() - cpu0) / wall.max(1e-9);
    let (out, err) = (
        out.join().unwrap_or_default(),
        err.join().unwrap_or_default(),
    );
    if start.elapsed() >= limit {
        return Err(Value::not_available(format!(
            "redis-benchmark FAILED: no result within {} s",
            limit.as_secs()
        )));
    }
    match (status.is_some_and(|s| s.success()), parse_csv(&out)) {
        (true, Some(rates)) => Ok(Run {
            rates,
            client_cores,
        }),
        _ => Err(Value::not_available(format!(
            "redis-benchmark FAILED ({}): {}",
            status.map_or("no status".into(), |s| s.to_string()),
            err.lines().chain(out.lines()).last().unwrap_or("no output")
        ))),
    }
}

/// What this part adds to the section.
pub struct Part {
    pub figures: Vec<Figure>,
    pub table: Table,
}

/// Runs the comparison: `rounds` alternating rounds of each pipeline depth.
pub fn run(ctx: &Ctx, kv: &Result<PathBuf, Value>) -> Part {
    let (n, rounds): (u64, usize) = if ctx.quick { (2000, 1) } else { (100_000, 3) };
    let limit = Duration::from_secs(if ctx.quick { 30 } else { 120 });
    let (all_missing, redis_missing) =
        missing(installed("redis-benchmark"), installed("redis-server"));
    let command = format!(
        "{} (building block: redis-benchmark -p PORT -t set,get -n {n} -c 50 -r 100000 -d 100 \
         --csv, and again with -P 16; against dbos-kv serve --engine memory and redis-server \
         --save \"\" --appendonly no)",
        ctx.command("kvstore")
    );
    // [pipeline][side] = per-round rates, or why there are none.
    let pipelines = [1u32, 16];
    let mut rates: Vec<[Result<Vec<Run>, Value>; 2]> = Vec::new();
    // Per pipeline, the per-round (SET, GET) ratios.
    let mut ratios: Vec<Vec<(f64, f64)>> = vec![Vec::new(); pipelines.len()];
    let start_side = |side: usize| -> Result<_, Value> {
        if let Some(v) = &all_missing {
            return Err(v.clone());
        }
        if side == 1 {
            if let Some(v) = &redis_missing {
                return Err(v.clone());
            }
        }
        let kind = [ServerKind::DbosMemory, ServerKind::RedisNone][side];
        launch(ctx, kv, kind, ["rb-dbos-kv-memory", "rb-redis-none"][side])
    };
    ctx.progress(
        "kvstore",
        "redis-benchmark: starting dbos-kv memory and redis none",
    );
    let servers = [start_side(0), start_side(1)];
    for _ in &pipelines {
        rates.push([0, 1].map(|i| {
            servers[i]
                .as_ref()
                .map(|_| Vec::new())
                .map_err(Clone::clone)
        }));
    }
    for round in 0..rounds {
        for (pi, &p) in pipelines.iter().enumerate() {
            let mut this: [Option<Rates>; 2] = [None, None];
            for k in 0..2 {
                let side = (k + round + pi) % 2;
                let Ok(sv) = &servers[side] else { continue };
                if rates[pi][side].is_err() {
                    continue;
                }
                match run_once(sv.port, n, p, limit) {
                    Ok(run) => {
                        let r = run.rates;
                        ctx.progress(
                            "kvstore",
                            &format!(
                                "redis-benchmark -P {p} round {}: {}: SET {:.0}/s, GET {:.0}/s \
                                 (redis-benchmark used {:.2} cores)",
                                round + 1,
                                ["dbos-kv memory", "redis none"][side],
                                r.set,
                                r.get,
                                run.client_cores
                            ),
                        );
                        this[side] = Some(r);
                        if let Ok(v) = &mut rates[pi][side] {
                            v.push(run);
                        }
                    }
                    Err(v) => {
                        ctx.progress("kvstore", &format!("redis-benchmark: {}", v.text()));
                        rates[pi][side] = Err(v);
                    }
                }
            }
            if let [Some(a), Some(b)] = this {
                ratios[pi].push((a.set / b.set, a.get / b.get));
            }
        }
    }
    for sv in servers.into_iter().flatten() {
        stop(sv);
    }
    let med = |v: &[f64]| -> Value {
        if v.is_empty() {
            Value::not_available("no round finished")
        } else {
            Value::num(dbos_benches::median(v))
        }
    };
    let side_value = |r: &Result<Vec<Run>, Value>, f: fn(&Run) -> f64| -> Value {
        match r {
            Ok(v) => med(&v.iter().map(f).collect::<Vec<_>>()),
            Err(e) => e.clone(),
        }
    };
    let mut rows = Vec::new();
    let mut figures = Vec::new();
    for (pi, &p) in pipelines.iter().enumerate() {
        for (what, f) in [
            ("SET", (|r: &Run| r.rates.set) as fn(&Run) -> f64),
            ("GET", |r: &Run| r.rates.get),
        ] {
            let ours = side_value(&rates[pi][0], f);
            let theirs = side_value(&rates[pi][1], f);
            let cores = |side: usize| side_value(&rates[pi][side], |r| r.client_cores);
            let ratio = match (&rates[pi][0], &rates[pi][1]) {
                (Err(e), _) | (_, Err(e)) => e.clone(),
                _ => med(&ratios[pi]
                    .iter()
                    .map(|r| if what == "SET" { r.0 } else { r.1 })
                    .collect::<Vec<_>>()),
            };
            rows.push(vec![
                Cell::from(what),
                Cell::from(if p > 1 {
                    format!("-P {p}")
                } else {
                    "none".into()
                }),
                ours.into(),
                theirs.clone().into(),
                ratio.clone().into(),
                cores(0).into(),
                cores(1).into(),
            ]);
            figures.push(Figure {
                name: format!(
                    "memory engine / Redis without persistence, redis-benchmark {what}{}",
                    if p > 1 {
                        format!(", -P {p}")
                    } else {
                        String::new()
                    }
                ),
                met: ratio.number().map(|r| r >= 1.0),
                value: ratio,
                unit: "x".into(),
                baseline: "redis-server --save \"\" --appendonly no (requests/s)".into(),
                baseline_value: theirs,
                target: format!(">= 1 ({TARGET_SOURCE})"),
                kind: Kind::WallClock,
            });
        }
    }
    Part {
        figures,
        table: Table {
            title: format!(
                "redis-benchmark -t set,get, 50 clients, 100-byte values, {rounds} alternating \
                 round(s): medians of requests/s and of the per-round ratios, and of the CPU \
                 redis-benchmark (one thread) used in each run of both tests, in cores: near 1, \
                 the client, not the server, set the pace"
            ),
            command,
            kind: Kind::WallClock,
            columns: [
                "test",
                "pipeline",
                "dbos-kv memory req/s",
                "Redis none req/s",
                "dbos-kv / Redis",
                "redis-benchmark cores, against dbos-kv",
                "redis-benchmark cores, against Redis",
            ]
            .map(String::from)
            .to_vec(),
            rows,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_output_is_parsed() {
        let out = "\"test\",\"rps\",\"avg_latency_ms\",\"min_latency_ms\"\n\
                   \"SET\",\"74074.07\",\"0.405\",\"0.064\"\n\
                   \"GET\",\"105263.16\",\"0.276\",\"0.064\"\n";
        assert_eq!(
            parse_csv(out),
            Some(Rates {
                set: 74074.07,
                get: 105263.16
            })
        );
        assert_eq!(parse_csv("\"SET\",\"1\"\n"), None);
        assert_eq!(parse_csv("garbage"), None);
    }

    #[test]
    fn a_missing_tool_names_itself() {
        let (a, b) = missing(false, true);
        assert_eq!(a, Some(Value::not_installed("redis-benchmark")));
        assert_eq!(
            b.map(|v| v.text()),
            Some("not installed (redis-benchmark)".into())
        );
        let (a, b) = missing(true, false);
        assert_eq!(a, None);
        assert_eq!(
            b.map(|v| v.text()),
            Some("not installed (redis-server)".into())
        );
        assert_eq!(missing(true, true), (None, None));
    }
}
