//! The servers the kvstore section measures and the load generator it
//! drives them with: where `dbos-kv` is, starting `dbos-kv serve` and
//! `redis-server` as children on free ports, stopping them (SHUTDOWN, then
//! a kill after a deadline), a RESP request of our own (`INFO`), and
//! `dbos-kv bench --json` with its output parsed.

use super::super::installed;
use super::super::report::Value;
use super::super::Ctx;
use dbos_benches::child::dies_with_parent;
use std::io::{BufRead, BufReader, Read, Write as _};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A kind of server under test.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// `dbos-kv serve --engine btree`, with this buffer pool.
    DbosBtree { pool: &'static str },
    /// `dbos-kv serve --engine memory`.
    DbosMemory,
    /// `redis-server --appendonly yes --appendfsync FSYNC`.
    RedisAof { fsync: &'static str },
    /// `redis-server --save "" --appendonly no`.
    RedisNone,
}

impl Kind {
    /// Whether the server is Redis (it needs `redis-server`).
    pub fn redis(self) -> bool {
        matches!(self, Kind::RedisAof { .. } | Kind::RedisNone)
    }
}

/// A running server.
pub struct Running {
    child: Child,
    pub port: u16,
    /// SHUTDOWN's arguments for this server.
    shutdown: &'static [&'static str],
}

/// One run phase's figures (the `total` row of `dbos-kv bench --json`).
#[derive(Clone, Debug)]
pub struct Phase {
    pub ops_per_s: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub p99_9_us: f64,
    pub max_us: f64,
    /// Error replies, wrong values and missing records.
    pub problems: f64,
}

/// Where `dbos-kv` is: beside this dbos (both are built into one target
/// directory).
pub fn dbos_kv() -> Result<PathBuf, Value> {
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
pub fn free_port() -> Result<u16, Value> {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| Value::not_available(format!("no free port: {e}")))
}

/// Starts a server of `kind` with its files in `ctx.work/dir`, and waits
/// until it accepts connections.
pub fn launch(
    ctx: &Ctx,
    kv: &Result<PathBuf, Value>,
    kind: Kind,
    dir: &str,
) -> Result<Running, Value> {
    if kind.redis() && !installed("redis-server") {
        return Err(Value::not_installed("redis-server"));
    }
    let port = free_port()?;
    let dir = ctx.work.join(dir);
    std::fs::create_dir_all(&dir)
        .map_err(|e| Value::not_available(format!("{}: {e}", dir.display())))?;
    let log = dir.join("server.log");
    let listen = format!("127.0.0.1:{port}");
    let d = dir.display().to_string();
    let p = port.to_string();
    let strings = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<String>>();
    match kind {
        Kind::DbosBtree { pool } => {
            let args = strings(&[
                "serve", "--dir", &d, "--listen", &listen, "--engine", "btree", "--pool", pool,
            ]);
            start(&kv.clone()?, &args, port, &log, &["SHUTDOWN"])
        }
        Kind::DbosMemory => {
            let args = strings(&[
                "serve", "--dir", &d, "--listen", &listen, "--engine", "memory", "--memory", "256M",
            ]);
            start(&kv.clone()?, &args, port, &log, &["SHUTDOWN"])
        }
        Kind::RedisAof { .. } | Kind::RedisNone => {
            // One Redis on loopback in the foreground, no snapshots; the
            // kinds differ in the append-only file only.
            let mut args = strings(&[
                "--port",
                &p,
                "--bind",
                "127.0.0.1",
                "--dir",
                &d,
                "--save",
                "",
                "--daemonize",
                "no",
            ]);
            match kind {
                Kind::RedisAof { fsync } => {
                    args.extend(strings(&["--appendonly", "yes", "--appendfsync", fsync]))
                }
                _ => args.extend(strings(&["--appendonly", "no"])),
            }
            start(
                Path::new("redis-server"),
                &args,
                port,
                &log,
                &["SHUTDOWN", "NOSAVE"],
            )
        }
    }
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
    let mut child = dies_with_parent(&mut Command::new(program))
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
pub fn stop(r: Running) {
    let Running {
        mut child,
        port,
        shutdown,
    } = r;
    let _ = request(port, shutdown, Duration::from_secs(2));
    wait_or_kill(&mut child, Duration::from_secs(10));
}

/// Waits up to `limit` for `child` to exit, then kills it.
pub fn wait_or_kill(child: &mut Child, limit: Duration) {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// `args` as a RESP request.
fn encode(args: &[&str]) -> Vec<u8> {
    let mut req = format!("*{}\r\n", args.len());
    for a in args {
        req += &format!("${}\r\n{a}\r\n", a.len());
    }
    req.into_bytes()
}

/// Sends `args` on a new connection to `port` and returns the reply as
/// text: a simple string, an error (`Err`), an integer or a bulk string.
/// SHUTDOWN gets no reply (the connection closes): that is `Ok("")`.
pub fn request(port: u16, args: &[&str], timeout: Duration) -> Result<String, String> {
    let mut s = TcpStream::connect(("127.0.0.1", port))
        .map_err(|e| format!("connecting to port {port}: {e}"))?;
    s.set_read_timeout(Some(timeout))
        .and_then(|()| s.set_write_timeout(Some(timeout)))
        .map_err(|e| format!("port {port}: {e}"))?;
    s.write_all(&encode(args))
        .map_err(|e| format!("sending {} to port {port}: {e}", args[0]))?;
    let mut r = BufReader::new(s);
    let mut line = String::new();
    let n = r
        .read_line(&mut line)
        .map_err(|e| format!("the reply to {} on port {port}: {e}", args[0]))?;
    if n == 0 {
        return Ok(String::new());
    }
    let line = line.trim_end();
    match line.as_bytes().first() {
        Some(b'+' | b':') => Ok(line[1..].to_string()),
        Some(b'-') => Err(format!("{}: {}", args[0], &line[1..])),
        Some(b'$') => {
            let len: usize = line[1..]
                .parse()
                .map_err(|_| format!("{}: a bulk length {line:?}", args[0]))?;
            let mut body = vec![0; len + 2];
            r.read_exact(&mut body)
                .map_err(|e| format!("the reply to {} on port {port}: {e}", args[0]))?;
            body.truncate(len);
            Ok(String::from_utf8_lossy(&body).into_owned())
        }
        _ => Err(format!("{}: an unexpected reply {line:?}", args[0])),
    }
}

/// The `name:value` lines of an `INFO` reply.
pub fn info_fields(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

/// Runs `dbos-kv bench --json ARGS` against `port`; the `total` row of
/// phase `phase`. A run with error replies or wrong values still gives its
/// phase (its `problems` count them); one that stopped is an error.
pub fn bench(kv: &Path, port: u16, args: &[String], phase: &str) -> Result<Phase, Value> {
    let out = dies_with_parent(&mut Command::new(kv))
        .args(["bench", "--json", "--port", &port.to_string()])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| Value::not_available(format!("running dbos-kv bench: {e}")))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let parsed = parse(&stdout, phase);
    match (out.status.code(), parsed) {
        // 1: error replies, wrong or missing values, counted in the phase.
        (Some(0 | 1), Some(p)) => Ok(p),
        (_, _) => Err(Value::not_available(format!(
            "dbos-kv bench FAILED ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
                .lines()
                .last()
                .unwrap_or("no phase printed")
        ))),
    }
}

/// The `total` row of `phase` in `dbos-kv bench --json` output.
pub fn parse(stdout: &str, phase: &str) -> Option<Phase> {
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

/// The YCSB flags `dbos-kv bench` and `dbos-kv workload` share.
pub fn ycsb_args(workload: &str, distribution: &str, records: u64, operations: u64) -> Vec<String> {
    [
        "--workload",
        workload,
        "--distribution",
        distribution,
        "--records",
        &records.to_string(),
        "--operations",
        &operations.to_string(),
    ]
    .map(String::from)
    .to_vec()
}

/// `dbos-kv bench` arguments for `workload` on `records` records: the run
/// phase of `operations` operations at `clients` clients (`phase` "run"),
/// or the load (`phase` "load").
pub fn bench_args(
    workload: &str,
    distribution: &str,
    records: u64,
    operations: u64,
    clients: usize,
    phase: &str,
) -> Vec<String> {
    let mut a = ycsb_args(workload, distribution, records, operations);
    a.extend(["--clients", &clients.to_string(), "--phase", phase].map(String::from));
    a
}

/// The median of the finished rounds: the round whose ops/s is the median.
pub fn median_round(rounds: Result<Vec<Phase>, Value>) -> Result<Phase, Value> {
    let v = rounds?;
    if v.is_empty() {
        return Err(Value::not_available("no run finished"));
    }
    let m = dbos_benches::median(&v.iter().map(|p| p.ops_per_s).collect::<Vec<_>>());
    Ok(v.iter()
        .find(|p| p.ops_per_s == m)
        .cloned()
        .unwrap_or_else(|| v[0].clone()))
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

    #[test]
    fn info_lines_are_fields() {
        let f = info_fields("# dbos\r\nrequests:12\r\nvm_exits:3\r\n");
        assert_eq!(f[0], ("requests".into(), "12".into()));
        assert_eq!(f.len(), 2);
        assert_eq!(
            encode(&["INFO", "dbos"]),
            b"*2\r\n$4\r\nINFO\r\n$4\r\ndbos\r\n"
        );
    }
}
