//! The guest server's counted events per request: the kvstore guest image
//! serving RESP from ring 0 under this same dbos (`dbos run --listen
//! 127.0.0.1:0 ... kvstore -- serve`), both engines, at the default
//! `--net-poll-spin` and at `1s`, driven by `dbos-kv bench`; `INFO dbos`
//! read before and after gives exits to the VMM and network doorbells per
//! request and completions per poller wake-up.

use super::super::report::{Cell, Figure, Kind, Table, Value};
use super::super::Ctx;
use super::servers::{bench, bench_args, info_fields, request, wait_or_kill};
use dbos_benches::child::dies_with_parent;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Where the figures' targets are stated.
const SOURCE: &str = "README, section 'The server in ring 0'";

/// The `INFO dbos` counters this part reads.
const FIELDS: [&str; 5] = [
    "requests",
    "vm_exits",
    "net_doorbells",
    "net_poller_wakeups",
    "net_completions",
];

/// The counters' values in an `INFO dbos` reply: requests, vm_exits,
/// net_doorbells, net_poller_wakeups, net_completions, in that order.
pub fn counters(info: &str) -> Result<[u64; 5], String> {
    let fields = info_fields(info);
    let mut v = [0; 5];
    for (i, name) in FIELDS.iter().enumerate() {
        let (_, text) = fields
            .iter()
            .find(|(k, _)| k == name)
            .ok_or_else(|| format!("INFO dbos has no {name}"))?;
        v[i] = text
            .parse()
            .map_err(|_| format!("INFO dbos: {name} is {text:?}, not a count"))?;
    }
    Ok(v)
}

/// Events per request between two readings of the counters: exits to the
/// VMM / request, doorbells / request, completions / poller wake-up (none
/// when the poller never parked), and the requests.
pub fn per_request(before: [u64; 5], after: [u64; 5]) -> [Value; 4] {
    let d: Vec<f64> = (0..5)
        .map(|i| after[i].saturating_sub(before[i]) as f64)
        .collect();
    let requests = d[0];
    if requests == 0.0 {
        let none = Value::not_available("no request was counted");
        return [none.clone(), none.clone(), none, Value::num(0.0)];
    }
    let per_wake = if d[3] == 0.0 {
        Value::not_available("the poller never parked (no wake-up)")
    } else {
        Value::num(d[4] / d[3])
    };
    [
        Value::num(d[1] / requests),
        Value::num(d[2] / requests),
        per_wake,
        Value::num(requests),
    ]
}

/// A running guest server.
struct Guest {
    child: Child,
    port: u16,
}

/// Starts `dbos run ARGS kvstore -- GUEST_ARGS` and waits until the VMM
/// says where it listens and the guest says it serves.
fn start(run_args: &[String], guest_args: &[&str]) -> Result<Guest, Value> {
    if !Path::new("/dev/kvm").exists() {
        return Err(Value::not_available("no /dev/kvm"));
    }
    let image = crate::guest_image("kvstore");
    if !image.exists() {
        return Err(Value::not_available(format!(
            "the guest image {} is not built",
            image.display()
        )));
    }
    let exe = std::env::current_exe()
        .map_err(|e| Value::not_available(format!("the path of this dbos: {e}")))?;
    let mut child = dies_with_parent(&mut Command::new(exe))
        .arg("run")
        .args(run_args)
        .args(["--listen", "127.0.0.1:0"])
        .arg(&image)
        .arg("--")
        .args(guest_args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| Value::not_available(format!("running the guest: {e}")))?;
    let (tx, rx) = mpsc::channel::<Result<u16, String>>();
    if let Some(err) = child.stderr.take() {
        let tx = tx.clone();
        std::thread::spawn(move || {
            let mut last = String::new();
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                if let Some(rest) = line.strip_prefix("dbos: listening on ") {
                    let port = rest
                        .split_whitespace()
                        .next()
                        .and_then(|a| a.rsplit(':').next())
                        .and_then(|p| p.parse().ok());
                    if let Some(p) = port {
                        let _ = tx.send(Ok(p));
                    }
                }
                last = line;
            }
            let _ = tx.send(Err(format!("dbos run ended: {last}")));
        });
    }
    let (stx, srx) = mpsc::channel::<()>();
    if let Some(out) = child.stdout.take() {
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if line.contains("serving RESP on port") {
                    let _ = stx.send(());
                }
            }
        });
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    let fail = |mut child: Child, why: String| {
        let _ = child.kill();
        let _ = child.wait();
        Err(Value::not_available(format!("the guest server: {why}")))
    };
    let port = match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
        Ok(Ok(p)) => p,
        Ok(Err(why)) => return fail(child, why),
        Err(_) => return fail(child, "no 'dbos: listening on' line within 120 s".into()),
    };
    if srx
        .recv_timeout(deadline.saturating_duration_since(Instant::now()))
        .is_err()
    {
        return fail(child, "the guest never said it serves".into());
    }
    Ok(Guest { child, port })
}

/// SHUTDOWN, then waits for the child (killing it after 60 s).
fn shutdown(mut g: Guest) {
    let _ = request(g.port, &["SHUTDOWN"], Duration::from_secs(30));
    wait_or_kill(&mut g.child, Duration::from_secs(60));
}

/// One configuration's figures: exits / request, doorbells / request,
/// completions / wake-up, requests.
fn measure(
    ctx: &Ctx,
    kv: &Result<std::path::PathBuf, Value>,
    engine: &str,
    spin: Option<&str>,
    records: u64,
    operations: u64,
) -> Result<[Value; 4], Value> {
    let kv = kv.clone()?;
    let mut run_args: Vec<String> = Vec::new();
    let guest_args: Vec<&str> = if engine == "btree" {
        let disk = ctx
            .work
            .join(format!("guest-{}.img", spin.unwrap_or("default")));
        let _ = std::fs::remove_file(&disk);
        run_args.extend([
            "--disk".into(),
            disk.display().to_string(),
            "--disk-size".into(),
            "64M".into(),
            "--disk-spin-us".into(),
            "200000".into(),
        ]);
        vec!["serve"]
    } else {
        vec!["serve", "engine", "memory", "heap", "8192"]
    };
    if let Some(s) = spin {
        run_args.extend(["--net-poll-spin".into(), s.into()]);
    }
    let g = start(&run_args, &guest_args)?;
    let info = |port| -> Result<[u64; 5], Value> {
        request(port, &["INFO", "dbos"], Duration::from_secs(60))
            .and_then(|t| counters(&t))
            .map_err(|e| Value::not_available(format!("the guest server FAILED: {e}")))
    };
    let result = (|| {
        let before = info(g.port)?;
        let mut args = bench_args("a", "zipfian", records, operations, 1, "both");
        args.extend(["--timeout".into(), "60".into()]);
        let p = bench(&kv, g.port, &args, "run")?;
        if p.problems > 0.0 {
            return Err(Value::not_available(format!(
                "dbos-kv bench FAILED against the guest: {} bad replies",
                p.problems
            )));
        }
        let after = info(g.port)?;
        ctx.progress(
            "kvstore",
            &format!(
                "guest {engine}, --net-poll-spin {}: {} requests, {} exits",
                spin.unwrap_or("default"),
                after[0].saturating_sub(before[0]),
                after[1].saturating_sub(before[1])
            ),
        );
        Ok(per_request(before, after))
    })();
    shutdown(g);
    result
}

/// What this part adds to the section.
pub struct Part {
    pub figures: Vec<Figure>,
    pub table: Table,
}

/// Runs the four configurations.
pub fn run(ctx: &Ctx, kv: &Result<std::path::PathBuf, Value>) -> Part {
    // A load of `records` SETs, then workload A: about 2x records + ops
    // requests.
    let (records, operations) = if ctx.quick { (20, 30) } else { (100, 200) };
    let command = format!(
        "{} (building block: dbos run --disk DISK --disk-size 64M --disk-spin-us 200000 \
         --net-poll-spin SPIN --listen 127.0.0.1:0 kvstore -- serve, the btree engine with a \
         disk and the memory engine as serve engine memory heap 8192 without one, SPIN the \
         default or 1s; dbos-kv bench --workload a --records {records} --operations \
         {operations} --clients 1 --phase both; INFO dbos before and after)",
        ctx.command("kvstore")
    );
    let mut rows = Vec::new();
    let mut figures = Vec::new();
    let mut unavailable: Option<Value> = None;
    for engine in ["btree", "memory"] {
        for spin in [None, Some("1s")] {
            let spin_name = spin.unwrap_or("default (0.0002)");
            let r = match &unavailable {
                Some(v) => Err(v.clone()),
                None => {
                    ctx.progress(
                        "kvstore",
                        &format!("guest {engine}, --net-poll-spin {spin_name}: starting"),
                    );
                    measure(ctx, kv, engine, spin, records, operations)
                }
            };
            let vals = match r {
                Ok(v) => v,
                Err(v) => {
                    if matches!(&v, Value::NotAvailable { reason } if reason == "no /dev/kvm"
                        || reason.contains("is not built"))
                    {
                        unavailable = Some(v.clone());
                    }
                    [v.clone(), v.clone(), v.clone(), v]
                }
            };
            rows.push(vec![
                Cell::from(engine),
                Cell::from(spin_name),
                vals[3].clone().into(),
                vals[0].clone().into(),
                vals[1].clone().into(),
                vals[2].clone().into(),
            ]);
            let (what, value, target, met): (&str, &Value, &str, fn(f64) -> bool) =
                if spin.is_some() {
                    (
                        "exits to the VMM per request",
                        &vals[0],
                        "< 0.05: with a polling network poller a request costs no exit",
                        |x| x < 0.05,
                    )
                } else {
                    (
                        "network doorbells per request",
                        &vals[1],
                        "<= 1.2: with a parked poller, one doorbell wakes it per request (the \
                         bench's connecting and closing add a few)",
                        |x| x <= 1.2,
                    )
                };
            figures.push(Figure {
                name: format!("guest server, {engine} engine, --net-poll-spin {spin_name}: {what}"),
                met: value.number().map(met),
                value: value.clone(),
                unit: "per request".into(),
                baseline: "the README's table measured by hand, same engine and \
                           --net-poll-spin"
                    .into(),
                baseline_value: Value::num(if spin.is_some() {
                    if engine == "btree" {
                        0.005
                    } else {
                        0.0002
                    }
                } else if engine == "btree" {
                    1.01
                } else {
                    1.0
                }),
                target: format!("{target} ({SOURCE})"),
                kind: Kind::Counted,
            });
        }
    }
    Part {
        figures,
        table: Table {
            title: format!(
                "The guest server in ring 0: counted events per request (dbos-kv bench, 1 \
                 client, {records} records loaded then {operations} operations of workload A)"
            ),
            command,
            kind: Kind::Counted,
            columns: [
                "engine",
                "--net-poll-spin",
                "requests",
                "exits to the VMM / request",
                "network doorbells / request",
                "completions / poller wake-up",
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
    fn counters_give_events_per_request() {
        let info = "# Dbos\r\nrequests:10\r\nvm_exits:400\r\nnet_doorbells:2\r\n\
                    net_poller_wakeups:4\r\nnet_completions:8\r\n";
        let before = counters(info).unwrap();
        assert_eq!(before, [10, 400, 2, 4, 8]);
        let after = [110, 402, 102, 54, 108];
        let v = per_request(before, after);
        assert_eq!(v[0], Value::num(0.02));
        assert_eq!(v[1], Value::num(1.0));
        assert_eq!(v[2], Value::num(2.0));
        assert_eq!(v[3], Value::num(100.0));
        // A poller that never parked has no completions per wake-up.
        let v = per_request(before, [110, 400, 2, 4, 108]);
        assert!(matches!(v[2], Value::NotAvailable { .. }));
        assert!(counters("requests:x\r\n").is_err());
        assert!(counters("requests:1\r\n").is_err());
    }
}
