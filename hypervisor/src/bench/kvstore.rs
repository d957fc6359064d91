//! kvstore: the load generator's YCSB workload A (`dbos-kv bench --json`)
//! against `dbos-kv serve` with the btree engine (every write logged and
//! durable before its reply) and with the memory engine, and against
//! Redis with `appendfsync always` and `everysec` where `redis-server` is
//! installed; every server a child process on its own port, the same load
//! generator for all, in rotated order.

use super::plot::{self, Axis, Series};
use super::report::{Cell, Figure, Kind, Section, Table, Value};
use super::{installed, Ctx};
use dbos_benches::median;
use std::io::Write as _;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A server under test.
struct Server {
    name: &'static str,
    /// Running, or why not.
    state: Result<Running, Value>,
}

struct Running {
    child: Child,
    port: u16,
    /// SHUTDOWN's arguments for this server.
    shutdown: &'static [&'static str],
}

/// One run phase's figures (the `total` row of `dbos-kv bench --json`).
#[derive(Clone, Debug)]
struct Phase {
    ops_per_s: f64,
    p50_us: f64,
    p99_us: f64,
    p99_9_us: f64,
    max_us: f64,
    problems: f64,
}

/// Where `dbos-kv` is: beside this dbos (both are built into one target
/// directory).
fn dbos_kv() -> Result<PathBuf, Value> {
    let exe = std::env::current_exe()
        .map_err(|e| Value::not_available(format!("the path of this dbos: {e}")))?;
    let dir = exe.parent().map(Path::to_path_buf).unwrap_or_default();
    for candidate in [dir.join("dbos-kv"), dir.join("..").join("dbos-kv")] {
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    Err(Value::not_available(format!(
        "dbos-kv is not built beside this dbos in {} (cargo build -p dbos-kvstore)",
        dir.display()
    )))
}

/// A port free now (bound and released).
fn free_port() -> Result<u16, Value> {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| Value::not_available(format!("no free port: {e}")))
}

/// Starts `program args` with its output in `log`, and waits until it
/// accepts connections on `port`.
fn start(
    program: &Path,
    args: &[String],
    port: u16,
    log: &Path,
    shutdown: &'static [&'static str],
) -> Result<Running, Value> {
    let out = std::fs::File::create(log)
        .map_err(|e| Value::not_available(format!("{}: {e}", log.display())))?;
    let err = out
        .try_clone()
        .map_err(|e| Value::not_available(e.to_string()))?;
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .map_err(|e| Value::not_available(format!("starting {}: {e}", program.display())))?;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(Running {
                child,
                port,
                shutdown,
            });
        }
        if let Ok(Some(status)) = child.try_wait() {
            let last = std::fs::read_to_string(log)
                .ok()
                .and_then(|t| t.lines().last().map(str::to_string))
                .unwrap_or_default();
            return Err(Value::not_available(format!(
                "{} exited ({status}) before serving: {last}",
                program.display()
            )));
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(Value::not_available(format!(
                "{} did not listen on port {port} within 30 s",
                program.display()
            )));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Asks the server to shut down, then ends it (it is our child) if it has
/// not within 10 s.
fn stop(mut r: Running) {
    if let Ok(mut s) = TcpStream::connect(("127.0.0.1", r.port)) {
        let mut req = format!("*{}\r\n", r.shutdown.len());
        for a in r.shutdown {
            req += &format!("${}\r\n{a}\r\n", a.len());
        }
        let _ = s.write_all(req.as_bytes());
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = r.child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = r.child.kill();
    let _ = r.child.wait();
}

/// Runs `dbos-kv bench --json ARGS` against `port`; the `total` row of
/// phase `phase`.
fn bench(kv: &Path, port: u16, args: &[String], phase: &str) -> Result<Phase, Value> {
    let out = Command::new(kv)
        .args(["bench", "--json", "--port", &port.to_string()])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| Value::not_available(format!("running dbos-kv bench: {e}")))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        return Err(Value::not_available(format!(
            "dbos-kv bench failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
                .lines()
                .last()
                .unwrap_or("")
        )));
    }
    parse(&stdout, phase)
        .ok_or_else(|| Value::not_available(format!("dbos-kv bench printed no {phase} phase")))
}

/// The `total` row of `phase` in `dbos-kv bench --json` output.
fn parse(stdout: &str, phase: &str) -> Option<Phase> {
    stdout.lines().find_map(|l| {
        let j: serde_json::Value = serde_json::from_str(l).ok()?;
        if j["phase"].as_str()? != phase {
            return None;
        }
        let t = j["ops"]
            .as_array()?
            .iter()
            .find(|o| o["operation"] == "total")?;
        let f = |k: &str| t[k].as_f64();
        Some(Phase {
            ops_per_s: f("ops_per_s")?,
            p50_us: f("p50_us")?,
            p99_us: f("p99_us")?,
            p99_9_us: f("p99_9_us")?,
            max_us: f("max_us")?,
            problems: f("errors")? + f("wrong")? + f("missing")?,
        })
    })
}

/// Runs the section.
pub fn run(ctx: &Ctx) -> Section {
    let (records, operations, clients, rounds): (u64, u64, Vec<usize>, usize) = if ctx.quick {
        (1000, 2000, vec![1, 4], 1)
    } else {
        (100_000, 100_000, vec![1, 16, 64], 3)
    };
    let mut s = Section::new(
        "kvstore",
        "kvstore: dbos-kv serve against Redis over the Redis protocol",
        &format!(
            "YCSB workload A (50% reads, 50% updates, zipfian, 100-byte values) from \
             dbos-kv bench: {records} records loaded once per server, then {operations} \
             operations per run at {clients:?} clients (each a thread with its own \
             connection), {rounds} round(s) with the servers in rotated order, medians. \
             Servers, each a child process on 127.0.0.1: dbos-kv serve with the btree engine \
             (every write durable before its reply, group commit) and with the memory \
             engine (snapshots only, on BGSAVE); Redis 7 with appendonly yes and \
             appendfsync always, and everysec, where redis-server is installed."
        ),
    );
    let run_args = |c: usize| {
        vec![
            "--workload".to_string(),
            "a".into(),
            "--records".into(),
            records.to_string(),
            "--operations".into(),
            operations.to_string(),
            "--clients".into(),
            c.to_string(),
            "--phase".into(),
            "run".into(),
        ]
    };
    let command = format!(
        "{} (building block: dbos-kv bench --json --port PORT --workload a --records \
         {records} --phase load, then --operations {operations} --clients N --phase run)",
        ctx.command("kvstore")
    );
    let kv = dbos_kv();
    let have_redis = installed("redis-server");
    let mut servers: Vec<Server> = Vec::new();
    for name in [
        "dbos-kv btree",
        "dbos-kv memory",
        "redis always",
        "redis everysec",
    ] {
        ctx.progress("kvstore", &format!("starting {name}"));
        let state = (|| {
            let port = free_port()?;
            let dir = ctx.work.join(name.replace(' ', "-"));
            std::fs::create_dir_all(&dir)
                .map_err(|e| Value::not_available(format!("{}: {e}", dir.display())))?;
            let log = dir.join("server.log");
            let listen = format!("127.0.0.1:{port}");
            match name {
                "dbos-kv btree" | "dbos-kv memory" => {
                    let kv = kv.clone()?;
                    let engine = if name.ends_with("btree") {
                        "btree"
                    } else {
                        "memory"
                    };
                    let args: Vec<String> = [
                        "serve",
                        "--dir",
                        &dir.display().to_string(),
                        "--listen",
                        &listen,
                        "--engine",
                        engine,
                        "--memory",
                        "128M",
                    ]
                    .map(String::from)
                    .to_vec();
                    start(&kv, &args, port, &log, &["SHUTDOWN"])
                }
                _ => {
                    if !have_redis {
                        return Err(Value::not_installed("redis-server"));
                    }
                    let fsync = name.trim_start_matches("redis ");
                    let args: Vec<String> = [
                        "--port",
                        &port.to_string(),
                        "--bind",
                        "127.0.0.1",
                        "--dir",
                        &dir.display().to_string(),
                        "--save",
                        "",
                        "--appendonly",
                        "yes",
                        "--appendfsync",
                        fsync,
                        "--daemonize",
                        "no",
                    ]
                    .map(String::from)
                    .to_vec();
                    start(
                        Path::new("redis-server"),
                        &args,
                        port,
                        &log,
                        &["SHUTDOWN", "NOSAVE"],
                    )
                }
            }
        })();
        if let Err(v) = &state {
            ctx.progress("kvstore", &format!("  {name}: {}", v.text()));
        }
        servers.push(Server { name, state });
    }
    // Load once per server.
    let mut loaded: Vec<Result<(), Value>> = Vec::new();
    for sv in &servers {
        loaded.push(match (&sv.state, &kv) {
            (Ok(r), Ok(kv)) => {
                ctx.progress(
                    "kvstore",
                    &format!("{}: loading {records} records", sv.name),
                );
                let args: Vec<String> = [
                    "--workload",
                    "a",
                    "--records",
                    &records.to_string(),
                    "--clients",
                    "4",
                    "--phase",
                    "load",
                ]
                .map(String::from)
                .to_vec();
                bench(kv, r.port, &args, "load").map(|_| ())
            }
            (Err(v), _) => Err(v.clone()),
            (_, Err(v)) => Err(v.clone()),
        });
    }
    // results[server][clients] = per-round phases
    let mut results: Vec<Vec<Result<Vec<Phase>, Value>>> = servers
        .iter()
        .zip(&loaded)
        .map(|(_, l)| {
            clients
                .iter()
                .map(|_| l.clone().map(|()| Vec::new()))
                .collect()
        })
        .collect();
    for round in 0..rounds {
        for (ci, &c) in clients.iter().enumerate() {
            for k in 0..servers.len() {
                let si = (k + round + ci) % servers.len();
                let (Ok(r), Ok(kv)) = (&servers[si].state, &kv) else {
                    continue;
                };
                if results[si][ci].is_err() {
                    continue;
                }
                let p = bench(kv, r.port, &run_args(c), "run");
                match p {
                    Ok(p) => {
                        ctx.progress(
                            "kvstore",
                            &format!(
                                "round {}: {} {c} client(s): {:.0} ops/s, p99 {:.0} us",
                                round + 1,
                                servers[si].name,
                                p.ops_per_s,
                                p.p99_us
                            ),
                        );
                        if let Ok(v) = &mut results[si][ci] {
                            v.push(p);
                        }
                    }
                    Err(v) => {
                        ctx.progress("kvstore", &format!("{}: {}", servers[si].name, v.text()));
                        results[si][ci] = Err(v);
                    }
                }
            }
        }
    }
    for sv in servers.iter_mut() {
        if let Ok(r) = std::mem::replace(&mut sv.state, Err(Value::not_available("stopped"))) {
            stop(r);
        }
    }
    // The median round of each server and client count.
    let med: Vec<Vec<Result<Phase, Value>>> = results
        .into_iter()
        .map(|per| {
            per.into_iter()
                .map(|r| {
                    let v = r?;
                    if v.is_empty() {
                        return Err(Value::not_available("no run finished"));
                    }
                    let m = median(&v.iter().map(|p| p.ops_per_s).collect::<Vec<_>>());
                    Ok(v.iter()
                        .find(|p| p.ops_per_s == m)
                        .cloned()
                        .unwrap_or_else(|| v[0].clone()))
                })
                .collect()
        })
        .collect();
    let names: Vec<&str> = servers.iter().map(|s| s.name).collect();
    s.figures = figures(&names, &clients, &med);
    s.tables.push(table(&names, &clients, &med, &command));
    s.tables
        .push(problems_table(&names, &clients, &med, &command));
    let series: Vec<Series> = names
        .iter()
        .zip(&med)
        .map(|(n, per)| Series {
            name: n.to_string(),
            points: clients
                .iter()
                .zip(per)
                .filter_map(|(&c, p)| Some((c as f64, p.as_ref().ok()?.ops_per_s)))
                .collect(),
        })
        .collect();
    plot::add(
        &mut s,
        &ctx.out,
        "kvstore-ops-clients.svg",
        "Workload A: operations per second against clients",
        Axis {
            label: "clients (log scale)",
            log: true,
        },
        Axis {
            label: "operations per second",
            log: false,
        },
        &series,
    );
    if !have_redis {
        s.notes.push(
            "redis-server is not installed (apt-get install redis-server): its rows and the \
             targets against it say so."
                .into(),
        );
    }
    s.notes.push(
        "Not measured yet here: the other YCSB workloads, redis-benchmark -t get,set against \
         the memory engine, out-of-memory workload C against the in-process driver, and the \
         guest server's events per request."
            .into(),
    );
    s
}

fn cell(p: &Result<Phase, Value>, f: impl Fn(&Phase) -> f64) -> Cell {
    match p {
        Ok(p) => Value::num(f(p)).into(),
        Err(v) => v.clone().into(),
    }
}

fn table(
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

fn problems_table(
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
        title: "Replies that were errors, wrong values or missing records".into(),
        command: command.into(),
        kind: Kind::Counted,
        columns: ["server", "clients", "bad replies"]
            .map(String::from)
            .to_vec(),
        rows,
    }
}

fn figures(names: &[&str], clients: &[usize], med: &[Vec<Result<Phase, Value>>]) -> Vec<Figure> {
    let ci = clients.len() - 1;
    let c = clients[ci];
    let at = |name: &str| -> Result<&Phase, Value> {
        let i = names.iter().position(|n| *n == name).expect("a server");
        med[i][ci].as_ref().map_err(Clone::clone)
    };
    let ratio = |ours: &str, theirs: &str| match (at(ours), at(theirs)) {
        (Ok(a), Ok(b)) => (
            Value::num(a.ops_per_s / b.ops_per_s),
            Value::num(b.ops_per_s),
        ),
        (_, Err(v)) | (Err(v), _) => (v.clone(), v),
    };
    let mut v = Vec::new();
    let (value, base) = ratio("dbos-kv btree", "redis always");
    v.push(Figure {
        name: format!("btree engine ops/s / Redis appendfsync always, workload A, {c} clients"),
        met: value.number().map(|r| r >= 1.0),
        value,
        unit: "x".into(),
        baseline: "Redis, appendonly yes, appendfsync always (ops/s)".into(),
        baseline_value: base,
        target: ">= 1 (goal 2; issue 22)".into(),
        kind: Kind::WallClock,
    });
    let (value, base) = ratio("dbos-kv memory", "redis everysec");
    v.push(Figure {
        name: format!("memory engine ops/s / Redis appendfsync everysec, workload A, {c} clients"),
        met: value.number().map(|r| r >= 1.0),
        value,
        unit: "x".into(),
        baseline: "Redis, appendonly yes, appendfsync everysec (ops/s)".into(),
        baseline_value: base,
        target: ">= 1 (issue 22 asks it of redis-benchmark -t get,set; this is workload A)".into(),
        kind: Kind::WallClock,
    });
    for name in ["dbos-kv btree", "dbos-kv memory"] {
        let total = (0..clients.len())
            .map(|i| {
                let k = names.iter().position(|n| *n == name).expect("a server");
                med[k][i].as_ref().map(|p| p.problems).map_err(Clone::clone)
            })
            .sum::<Result<f64, Value>>();
        let value = total.map_or_else(|v| v, Value::num);
        v.push(Figure {
            name: format!("{name}: bad replies over every client count"),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_total_row_of_a_phase_is_parsed() {
        let out = r#"{"phase":"load","seconds":0.1,"ops":[{"operation":"total","count":1,"ops_per_s":9.0,"p50_us":1.0,"p99_us":2.0,"p99_9_us":3.0,"max_us":4.0,"errors":0,"wrong":0,"missing":0}]}
{"phase":"run","seconds":0.3,"ops":[{"operation":"read","count":1,"ops_per_s":1.0,"p50_us":1.0,"p99_us":1.0,"p99_9_us":1.0,"max_us":1.0,"errors":0,"wrong":0,"missing":0},{"operation":"total","count":2,"ops_per_s":6.5,"p50_us":30.0,"p99_us":130.0,"p99_9_us":260.0,"max_us":320.0,"errors":1,"wrong":2,"missing":0}]}"#;
        let p = parse(out, "run").unwrap();
        assert_eq!(p.ops_per_s, 6.5);
        assert_eq!(p.p99_9_us, 260.0);
        assert_eq!(p.problems, 3.0);
        assert_eq!(parse(out, "load").unwrap().ops_per_s, 9.0);
        assert!(parse(out, "other").is_none());
    }
}
