//! kvstore: `dbos-kv serve` against Redis over the Redis protocol, and the
//! guest server in ring 0. This module runs the parts in order and puts
//! the section together:
//!
//! - [`ycsb`]: YCSB workload A at several client counts and B-F at one,
//!   `dbos-kv bench --json` against the btree and memory engines and
//!   Redis with `appendfsync always` and `everysec`, in rotated order;
//! - [`redis_benchmark`]: `redis-benchmark -t set,get` against the memory
//!   engine and Redis without persistence;
//! - [`oom`]: workload C out of memory, over the protocol against the
//!   in-process driver;
//! - [`guest`]: the guest server's counted events per request;
//! - [`servers`]: starting and stopping the servers, `dbos-kv bench`.

pub mod guest;
pub mod oom;
pub mod redis_benchmark;
pub mod servers;
pub mod ycsb;

use super::plot::{self, Axis, Series};
use super::report::{Cell, Section, Value};
use super::{installed, Ctx};
use servers::{bench, bench_args, launch, stop, Kind as ServerKind, Running};

/// Where the targets against Redis are stated in the repository.
pub const TARGET_SOURCE: &str = "README, section 'The Redis-protocol server'";

/// The YCSB servers, in rotation order.
const SERVERS: [(&str, ServerKind); 4] = [
    ("dbos-kv btree", ServerKind::DbosBtree { pool: "64M" }),
    ("dbos-kv memory", ServerKind::DbosMemory),
    ("redis always", ServerKind::RedisAof { fsync: "always" }),
    ("redis everysec", ServerKind::RedisAof { fsync: "everysec" }),
];

/// Workloads B-F.
const OTHERS: [&str; 5] = ["b", "c", "d", "e", "f"];

/// Runs the section.
pub fn run(ctx: &Ctx) -> Section {
    let (records, operations, clients, rounds): (u64, u64, Vec<usize>, usize) = if ctx.quick {
        (1000, 2000, vec![1, 4], 1)
    } else {
        (100_000, 100_000, vec![1, 16, 64], 3)
    };
    let (other_ops, other_clients) = if ctx.quick { (500, 4) } else { (100_000, 16) };
    let mut s = Section::new(
        "kvstore",
        "kvstore: dbos-kv serve against Redis over the Redis protocol, and in ring 0",
        &format!(
            "YCSB workloads from dbos-kv bench (100-byte values, zipfian; each client a \
             thread with its own connection): {records} records loaded once per server, then \
             workload A (50% reads, 50% updates) for {operations} operations per run at \
             {clients:?} clients, and workloads B (95/5 reads/updates), C (reads), D (read \
             latest, 5% inserts), E (short scans, 5% inserts) and F (read-modify-write) for \
             {other_ops} operations at {other_clients} clients; {rounds} round(s) with the \
             servers in rotated order, medians. Servers, each a child process on 127.0.0.1: \
             dbos-kv serve with the btree engine (every write durable before its reply, group \
             commit) and with the memory engine (snapshots only, on BGSAVE); Redis 7 with \
             appendonly yes and appendfsync always, and everysec, where redis-server is \
             installed. Then redis-benchmark -t set,get against the memory engine and Redis \
             without persistence; workload C out of memory (a btree store about 5x its pool) \
             over the protocol against the in-process driver; and the guest server in ring 0 \
             under this dbos, its exits, doorbells and poller wake-ups counted per request."
        ),
    );
    let kv = servers::dbos_kv();
    let have_redis = installed("redis-server");
    let names: Vec<&'static str> = SERVERS.iter().map(|s| s.0).collect();
    let mut state: Vec<Result<Running, Value>> = Vec::new();
    for (name, kind) in SERVERS {
        ctx.progress("kvstore", &format!("starting {name}"));
        let r = launch(ctx, &kv, kind, &name.replace(' ', "-"));
        if let Err(v) = &r {
            ctx.progress("kvstore", &format!("  {name}: {}", v.text()));
        }
        state.push(r);
    }
    // Load once per server.
    let loaded: Vec<Result<(), Value>> = state
        .iter()
        .zip(&names)
        .map(|(st, name)| match (st, &kv) {
            (Ok(r), Ok(kv)) => {
                ctx.progress("kvstore", &format!("{name}: loading {records} records"));
                let args = bench_args("a", "zipfian", records, 1, 4, "load");
                bench(kv, r.port, &args, "load").and_then(|p| {
                    if p.problems > 0.0 {
                        Err(Value::not_available(format!(
                            "the load FAILED: {} bad replies",
                            p.problems
                        )))
                    } else {
                        Ok(())
                    }
                })
            }
            (Err(v), _) | (_, Err(v)) => Err(v.clone()),
        })
        .collect();
    let sv = ycsb::Servers {
        names: &names,
        state: &state,
    };
    let a_command = format!(
        "{} (building block: dbos-kv bench --json --port PORT --workload a --records \
         {records} --phase load, then --operations {operations} --clients N --phase run)",
        ctx.command("kvstore")
    );
    let others_command = format!(
        "{} (building block: dbos-kv bench --json --port PORT --workload W --records \
         {records} --operations {other_ops} --clients {other_clients} --phase run, after \
         workload A's load)",
        ctx.command("kvstore")
    );
    let (med_a, med_others) = match &kv {
        Ok(kvp) => {
            let a = ycsb::measure(
                ctx,
                kvp,
                &sv,
                &loaded,
                "a",
                records,
                operations,
                &clients,
                rounds,
                |_| None,
            );
            let others: Vec<_> = OTHERS
                .iter()
                .map(|w| {
                    let per = ycsb::measure(
                        ctx,
                        kvp,
                        &sv,
                        &loaded,
                        w,
                        records,
                        other_ops,
                        &[other_clients],
                        rounds,
                        |server| ycsb::unsupported(w, server),
                    );
                    per.into_iter().map(|mut v| v.remove(0)).collect::<Vec<_>>()
                })
                .collect();
            (a, others)
        }
        Err(v) => (
            names
                .iter()
                .map(|_| clients.iter().map(|_| Err(v.clone())).collect())
                .collect(),
            OTHERS
                .iter()
                .map(|_| names.iter().map(|_| Err(v.clone())).collect())
                .collect(),
        ),
    };
    for r in state.into_iter().flatten() {
        stop(r);
    }
    s.figures = ycsb::a_figures(&names, &clients, &med_a);
    s.tables
        .push(ycsb::a_table(&names, &clients, &med_a, &a_command));
    s.tables
        .push(ycsb::a_problems_table(&names, &clients, &med_a, &a_command));
    s.figures.extend(ycsb::others_figures(
        &OTHERS,
        &names,
        other_clients,
        &med_others,
    ));
    s.tables.push(ycsb::others_table(
        &OTHERS,
        &names,
        other_clients,
        &med_others,
        &others_command,
    ));
    let series: Vec<Series> = names
        .iter()
        .zip(&med_a)
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

    let rb = redis_benchmark::run(ctx, &kv);
    s.figures.extend(rb.figures);
    s.tables.push(rb.table);

    let oom = oom::run(ctx, &kv);
    s.figures.extend(oom.figures);
    s.tables.push(oom.table);
    s.notes.extend(oom.note);

    let g = guest::run(ctx, &kv);
    s.figures.extend(g.figures);
    s.tables.push(g.table);

    if !have_redis {
        s.notes.push(
            "redis-server is not installed (apt-get install redis-server): its rows and the \
             targets against it say so."
                .into(),
        );
    }
    s.notes.push(
        "The guest server's figures are counted events: ring 0 is emulated where KVM has no \
         VT-x or AMD-V, so its requests per second say nothing about the same code on hardware."
            .into(),
    );
    // A run that stopped or gave bad results (not a missing tool or
    // device) fails the section.
    let mut stopped: Vec<String> = Vec::new();
    for cell in s.tables.iter().flat_map(|t| t.rows.iter().flatten()) {
        if let Cell::Value(Value::NotAvailable { reason }) = cell {
            if reason.contains("FAILED") && !stopped.contains(reason) {
                stopped.push(reason.clone());
            }
        }
    }
    if !stopped.is_empty() {
        let why = stopped.join("; ");
        s.notes.push(format!("failed: {why}"));
        s.failed = Some(why);
    }
    s
}
