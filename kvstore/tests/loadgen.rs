//! `dbos-kv bench` against a real Redis (an optional peer: without
//! `redis-server` on the PATH each test says "redis-server not installed"
//! and returns).
//!
//! - Load and run of workloads A and C: the counts of every table row are
//!   exactly what the clients' seeded choices give, nothing is wrong,
//!   exit status 0.
//! - Workload E against Redis stops with the DBOS.RANGE message (exit 4).
//! - The crash check: Redis with `appendfsync always` is killed (SIGKILL)
//!   in the middle of a run with `--acks`; the bench stops with exit 3 and
//!   a complete acks file; Redis restarted on the same directory holds
//!   every acknowledged write (`--verify` exits 0). Without an
//!   append-only file, the same kill loses them, and `--verify` says so
//!   (exit 1).
//!
//! And against a fake ordered server (SET, GET, DBOS.RANGE on a
//! `BTreeMap`, in this test; no Redis needed): workloads B, D, E and F,
//! pipelined, one after the other on the same server, with exact totals
//! (E's scans meet the records D inserted); and a server that drops
//! updates, whose stale values the bench counts as wrong (exit 1).

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::{self, sleep};
use std::time::{Duration, Instant};

use dbos_kvstore::loadgen::client::{parse_reply, Reply};
use dbos_kvstore::workload::{Rng, Spec, Workload};

const BIN: &str = env!("CARGO_BIN_EXE_dbos-kv");

fn redis_installed() -> bool {
    let found = Command::new("redis-server")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok();
    if !found {
        println!("redis-server not installed");
    }
    found
}

/// A free port: bind port 0, take the port, let it go.
fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// A redis-server in `dir`, killed when dropped.
struct Redis {
    child: Child,
    port: u16,
}

impl Redis {
    fn start(dir: &Path, port: u16, aof: bool) -> Redis {
        let mut cmd = Command::new("redis-server");
        cmd.args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
        ])
        .arg("--dir")
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
        if aof {
            cmd.args(["--appendonly", "yes", "--appendfsync", "always"]);
        } else {
            cmd.args(["--appendonly", "no"]);
        }
        let child = cmd.spawn().expect("starting redis-server");
        let r = Redis { child, port };
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not start");
            sleep(Duration::from_millis(20));
        }
        // Loading an append-only file answers -LOADING meanwhile; a PING
        // answered +PONG means it is done.
        while !ping(port) {
            assert!(Instant::now() < deadline, "redis-server did not get ready");
            sleep(Duration::from_millis(20));
        }
        r
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}

fn ping(port: u16) -> bool {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let mut buf = [0; 64];
    s.write_all(b"PING\r\n").is_ok() && s.read(&mut buf).is_ok_and(|n| buf[..n] == *b"+PONG\r\n")
}

fn bench(port: u16, args: &[&str]) -> Output {
    let out = Command::new(BIN)
        .args(["bench", "--port", &port.to_string()])
        .args(args)
        .output()
        .unwrap();
    println!("{}", String::from_utf8_lossy(&out.stdout));
    eprintln!("{}", String::from_utf8_lossy(&out.stderr));
    out
}

/// The table rows of phase `phase` ("load:", "run:"): name -> columns.
fn table(stdout: &str, phase: &str) -> BTreeMap<String, Vec<String>> {
    let mut rows = BTreeMap::new();
    let mut lines = stdout.lines().skip_while(|l| *l != phase).skip(1);
    let summary = lines.next().expect("summary line");
    assert!(summary.contains(" operations in "), "{summary}");
    let header = lines.next().expect("header");
    assert!(header.starts_with("operation"), "{header}");
    for l in lines {
        let cols: Vec<String> = l.split_whitespace().map(String::from).collect();
        let Some(name) = cols.first() else { break };
        let done = name == "total";
        rows.insert(name.clone(), cols);
        if done {
            break;
        }
    }
    rows
}

/// Checks a row: its count, and no errors, wrong or missing values.
fn row(rows: &BTreeMap<String, Vec<String>>, name: &str, count: u64) {
    let r = rows
        .get(name)
        .unwrap_or_else(|| panic!("no {name} row in {rows:?}"));
    assert_eq!(r.len(), 10, "{r:?}");
    assert_eq!(r[1], count.to_string(), "{name} count: {r:?}");
    assert_eq!(
        r[7..],
        ["0", "0", "0"],
        "{name} errors, wrong, missing: {r:?}"
    );
}

/// The operation kinds the clients of `spec` choose, counted: the same
/// draws as the bench and the in-process driver make (records do not
/// change the kinds, but they use up draws).
fn expected_mix(spec: &Spec) -> [u64; 5] {
    assert!(!spec.workload.inserts());
    let mut counts = [0; 5];
    for client in 0..spec.threads {
        let mut rng = Rng::for_thread(spec.seed, client);
        let mut chooser = spec.chooser();
        for _ in spec.share(spec.operations, client) {
            let kind = spec.workload.choose(rng.below(100));
            counts[kind.index()] += 1;
            chooser.next(&mut rng, spec.records);
        }
    }
    counts
}

#[test]
fn workloads_a_and_c_against_redis() {
    if !redis_installed() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let redis = Redis::start(dir.path(), free_port(), false);
    for (w, clients) in [(Workload::A, 4), (Workload::C, 3)] {
        let spec = Spec {
            workload: w,
            records: 1500,
            operations: 4000,
            threads: clients,
            seed: 7,
            ..Spec::default()
        };
        let out = bench(
            redis.port,
            &[
                "--workload",
                &w.to_string(),
                "--records",
                "1500",
                "--operations",
                "4000",
                "--clients",
                &clients.to_string(),
                "--seed",
                "7",
                "--value-size",
                "1000",
            ],
        );
        assert_eq!(out.status.code(), Some(0));
        let stdout = String::from_utf8(out.stdout).unwrap();
        let load = table(&stdout, "load:");
        row(&load, "insert", 1500);
        row(&load, "total", 1500);
        assert_eq!(load.len(), 2, "{load:?}");
        let run = table(&stdout, "run:");
        let [reads, updates, ..] = expected_mix(&spec);
        assert_eq!(reads + updates, 4000);
        row(&run, "read", reads);
        if w == Workload::A {
            assert!(updates > 1500, "{updates}");
            row(&run, "update", updates);
        } else {
            assert!(!run.contains_key("update"));
        }
        row(&run, "total", 4000);
    }
}

#[test]
fn workload_e_needs_dbos_range() {
    if !redis_installed() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let redis = Redis::start(dir.path(), free_port(), false);
    let out = bench(redis.port, &["--workload", "e", "--records", "10"]);
    assert_eq!(out.status.code(), Some(4));
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(
        stderr.contains("workload E needs an ordered engine (DBOS.RANGE)"),
        "{stderr}"
    );
    assert!(!String::from_utf8(out.stdout).unwrap().contains("load:"));
}

/// Runs a bench with `--acks`, kills Redis once the run phase is under
/// way, restarts it on the same directory and verifies; returns the
/// verification's output.
fn kill_mid_run(aof: bool) -> Output {
    let dir = tempfile::tempdir().unwrap();
    let acks = dir.path().join("acks");
    let port = free_port();
    let mut redis = Redis::start(dir.path(), port, aof);
    let child = Command::new(BIN)
        .args(["bench", "--port", &port.to_string()])
        .args(["--workload", "a", "--records", "500", "--operations"])
        .args(["100000000", "--clients", "4", "--distribution", "uniform"])
        .arg("--acks")
        .arg(&acks)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Wait for updates to be acknowledged in the run phase (versions
    // above 1 in the acks file).
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let text = std::fs::read_to_string(&acks).unwrap_or_default();
        let updates = text
            .lines()
            .filter(|l| l.split(' ').nth(1).is_some_and(|v| v != "1"))
            .count();
        if updates >= 200 {
            break;
        }
        assert!(Instant::now() < deadline, "no updates acknowledged");
        sleep(Duration::from_millis(20));
    }
    redis.kill();
    let out = child.wait_with_output().unwrap();
    println!("{}", String::from_utf8_lossy(&out.stdout));
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("{stderr}");
    assert_eq!(out.status.code(), Some(3), "bench exit status");
    assert!(stderr.contains("lost the server"), "{stderr}");
    let text = std::fs::read_to_string(&acks).unwrap();
    assert!(text.ends_with("end\n"), "acks file not finished");
    assert!(text.starts_with("# dbos-kv bench acks: value-size 100\n"));
    let redis = Redis::start(dir.path(), port, aof);
    let out = bench(
        redis.port,
        &[
            "--verify",
            "--acks",
            acks.to_str().unwrap(),
            "--clients",
            "2",
        ],
    );
    drop(redis);
    out
}

#[test]
fn acknowledged_writes_survive_a_kill_with_appendfsync_always() {
    if !redis_installed() {
        return;
    }
    let out = kill_mid_run(true);
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert!(stdout.contains(" 0 missing, 0 wrong, 0 errors"), "{stdout}");
    assert!(stdout.contains("verify: PASSED"), "{stdout}");
}

#[test]
fn verify_finds_the_writes_a_kill_lost_without_persistence() {
    if !redis_installed() {
        return;
    }
    let out = kill_mid_run(false);
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains("500 records checked (500 acknowledged)"),
        "{stdout}"
    );
    assert!(stdout.contains(" 500 missing, 0 wrong"), "{stdout}");
    assert!(stdout.contains("acknowledged at version"), "{stdout}");
}

/// A key-value map behind a RESP server on a free port: `SET` (always
/// `+OK`; stored only if the key is new when `drop_updates`), `GET`,
/// `DBOS.RANGE FROM TO LIMIT N` (keys `>= FROM` and `< TO`, flat array of
/// keys and values). It runs until the test process ends.
fn fake_server(drop_updates: bool) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let map = Arc::new(Mutex::new(BTreeMap::<Vec<u8>, Vec<u8>>::new()));
    thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { return };
            let map = map.clone();
            thread::spawn(move || serve(conn, &map, drop_updates));
        }
    });
    port
}

fn bulk(out: &mut Vec<u8>, b: &[u8]) {
    out.extend_from_slice(format!("${}\r\n", b.len()).as_bytes());
    out.extend_from_slice(b);
    out.extend_from_slice(b"\r\n");
}

fn serve(mut conn: TcpStream, map: &Mutex<BTreeMap<Vec<u8>, Vec<u8>>>, drop_updates: bool) {
    let (mut buf, mut out) = (Vec::new(), Vec::new());
    let mut chunk = [0; 16384];
    loop {
        let n = match conn.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        buf.extend_from_slice(&chunk[..n]);
        let mut used = 0;
        while let Ok(Some((req, n))) = parse_reply(&buf[used..]) {
            used += n;
            let Reply::Array(args) = req else { return };
            let args: Vec<Vec<u8>> = args
                .into_iter()
                .map(|a| match a {
                    Reply::Bulk(b) => b,
                    _ => Vec::new(),
                })
                .collect();
            let mut map = map.lock().unwrap();
            match (args[0].as_slice(), &args[1..]) {
                (b"SET", [k, v]) => {
                    if !(drop_updates && map.contains_key(k)) {
                        map.insert(k.clone(), v.clone());
                    }
                    out.extend_from_slice(b"+OK\r\n");
                }
                (b"GET", [k]) => match map.get(k) {
                    Some(v) => bulk(&mut out, v),
                    None => out.extend_from_slice(b"$-1\r\n"),
                },
                (b"DBOS.RANGE", [from, to, limit, n]) if limit == b"LIMIT" => {
                    let n: usize = std::str::from_utf8(n).unwrap().parse().unwrap();
                    let entries: Vec<_> = map.range(from.clone()..to.clone()).take(n).collect();
                    out.extend_from_slice(format!("*{}\r\n", 2 * entries.len()).as_bytes());
                    for (k, v) in entries {
                        bulk(&mut out, k);
                        bulk(&mut out, v);
                    }
                }
                _ => out.extend_from_slice(b"-ERR unknown command\r\n"),
            }
        }
        buf.drain(..used);
        if conn.write_all(&out).is_err() {
            return;
        }
        out.clear();
    }
}

#[test]
fn workloads_b_d_e_f_against_an_ordered_server() {
    let port = fake_server(false);
    for (w, pipeline, rows) in [
        ("b", "1", &["read", "update"][..]),
        ("d", "4", &["read", "insert"][..]),
        ("e", "3", &["insert", "scan"][..]),
        ("f", "5", &["read", "read-modify-write"][..]),
    ] {
        let out = bench(
            port,
            &[
                "--workload",
                w,
                "--records",
                "800",
                "--operations",
                "3000",
                "--clients",
                "3",
                "--pipeline",
                pipeline,
                "--seed",
                "3",
            ],
        );
        assert_eq!(out.status.code(), Some(0), "workload {w}");
        let stdout = String::from_utf8(out.stdout).unwrap();
        row(&table(&stdout, "load:"), "total", 800);
        let run = table(&stdout, "run:");
        row(&run, "total", 3000);
        let counts: Vec<u64> = rows
            .iter()
            .map(|name| {
                let r = run
                    .get(*name)
                    .unwrap_or_else(|| panic!("{w}: no {name} row"));
                row(&run, name, r[1].parse().unwrap());
                r[1].parse().unwrap()
            })
            .collect();
        assert_eq!(counts.iter().sum::<u64>(), 3000, "workload {w}");
        assert_eq!(run.len(), rows.len() + 1, "workload {w}: {run:?}");
        if w == "e" {
            let line = stdout
                .lines()
                .find(|l| l.starts_with("scans delivered"))
                .unwrap();
            let n: u64 = line.split(' ').nth(2).unwrap().parse().unwrap();
            // 1..=100 entries each (fewer near the end of the keys).
            assert!(n > counts[1] * 20 && n <= counts[1] * 100, "{line}");
            // Workload d's bench inserted records on this server before;
            // e's scans meet those it has not inserted again itself.
            assert!(
                line.contains("of records an earlier bench inserted"),
                "{line}"
            );
        }
    }
}

#[test]
fn stale_values_are_wrong() {
    let port = fake_server(true);
    let out = bench(
        port,
        &["--records", "100", "--operations", "2000", "--clients", "2"],
    );
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8(out.stdout).unwrap();
    let run = table(&stdout, "run:");
    let wrong: u64 = run["read"][8].parse().unwrap();
    assert!(wrong > 100, "{:?}", run["read"]);
    assert!(
        stdout.contains("first problem: read of record "),
        "{stdout}"
    );
    assert!(stdout.contains("(acknowledged "), "{stdout}");
}
