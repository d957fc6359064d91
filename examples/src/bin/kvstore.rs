//! The key-value database in ring 0: the durable B+tree store
//! (`dbos_kvstore::store`) on Tabby (the buffer pool on the guest's own
//! page tables) and the engine's write-ahead log, on the VM's NVMe disk,
//! driven by the in-process YCSB workload driver on every vCPU.
//!
//! ```text
//! dbos run [--vcpus N] --disk DISK --disk-size 64M kvstore -- [OPTION VALUE]...
//!   records N     records loaded (default 400: more than the pool holds)
//!   ops N         operations of the run phase (default 200)
//!   workload X    a..f (default a: 50% reads, 50% updates)
//!   dist X        uniform or zipfian (default zipfian)
//!   value N       bytes per value (default 100)
//!   pool N        frames of the buffer pool, 4 KiB each (default 16)
//!   batch N       records per load transaction (default 8; a transaction
//!                 may hold at most half the pool's frames)
//!   seed N        the workload's seed (default 1)
//!   acks 1        print `acked RECORD VERSION` for every write the store
//!                 acknowledged (durable), for crash tests
//! dbos run --disk DISK kvstore -- check
//! dbos run --disk DISK kvstore -- format --force
//! dbos run --disk DISK --listen 127.0.0.1:PORT [--vcpus N] kvstore -- serve [pool FRAMES]
//! dbos run --listen 127.0.0.1:PORT [--file dump=PATH] [--vcpus N] \
//!     kvstore -- serve engine memory [heap KIB] [save-every SECONDS]
//! dbos run [--vcpus N] kvstore -- memory [records N] [ops N] [workload X]
//!                                       [dist X] [value N] [heap KIB] [seed N]
//! ```
//!
//! `serve` serves the Redis protocol on the ports given with `--listen`
//! (see `serve.rs`) until a client says SHUTDOWN, over the btree engine
//! on the disk or, with `engine memory`, over the memory engine on Snappy
//! persisted by snapshots to a host file (see `snapengine.rs`).
//!
//! `memory` runs the memory engine on Snappy instead (see `memory.rs`): no
//! disk, snapshots instead of a log.
//!
//! The default job: on a blank disk it formats a store (the log an eighth
//! of the disk, the rest data pages), otherwise it recovers the store on
//! it. Then it loads the records (more data than the pool holds, so pages
//! are evicted and read back), runs the workload on every vCPU (group
//! commit across them), verifies every acknowledged write, shuts the store
//! down without a checkpoint, opens it again (recovery replays the log),
//! verifies again, and prints a summary per phase with the platform's
//! events per operation (VM exits, IPIs, invalidations, page-table
//! writes). Exit status 0 only if both verifications passed; 2 for a usage
//! error. A disk that holds something other than a store is refused unless
//! `format --force`.
//!
//! The same data file opens as a process: `dbos-kv check --dir DIR` with
//! the disk image as `DIR/kv.db`.
#![no_std]
#![no_main]

extern crate alloc;

use alloc::string::String;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicU64, Ordering};
use dbos_bufferpool::engine::PoolSetup;
use dbos_bufferpool::pool::tabby::Tabby;
use dbos_bufferpool::{Config, Env, Layout, PoolError};
use dbos_kvstore::workload::{
    self, Acked, Distribution, Report, Spec, Stats, Verification, Workload,
};
use dbos_kvstore::{Error, Kv, Store, StoreStats};
use libdbos::nvme;
use libdbos::platform::{EventCounts, Platform};
use libdbos::println;

libdbos::entry!(main);

#[path = "kvstore/memory.rs"]
mod memory;
#[path = "kvstore/serve.rs"]
mod serve;
#[path = "kvstore/snapengine.rs"]
mod snapengine;

type Device = dbos_bufferpool::guest::GuestDevice;
type Pool = Tabby<libdbos::GuestPlatform, Device>;
type KvStore = Store<Device, Pool>;

const QUEUE_DEPTH: u16 = 32;
const STATUS_USAGE: u8 = 2;
const USAGE: &str = "usage: kvstore -- [records N] [ops N] [workload a..f] [dist uniform|zipfian] \
                     [value N] [pool FRAMES] [batch N] [seed N] [acks 0|1] | check | format --force \
                     | memory [OPTION VALUE]... | serve [engine btree|memory] [OPTION VALUE]...";

/// Nanoseconds per TSC tick, as a 32.32 fixed-point number (calibrated at
/// start against the VMM's clock, so that timing an operation costs no VM
/// exit).
static NS_PER_TICK: AtomicU64 = AtomicU64::new(1 << 32);

fn tsc() -> u64 {
    // SAFETY: rdtsc reads the time-stamp counter; it has no preconditions
    // and works in the guest.
    unsafe { core::arch::x86_64::_rdtsc() }
}

fn now_ns() -> u64 {
    ((tsc() as u128 * NS_PER_TICK.load(Ordering::Relaxed) as u128) >> 32) as u64
}

/// The wall clock at [`calibrate_unix`], in milliseconds since the Unix
/// epoch, and [`now_ns`] then.
static UNIX_BASE: spin::Once<(u64, u64)> = spin::Once::new();

/// Reads the host's wall clock once (one VM exit), so that [`unix_ms`]
/// costs none.
fn calibrate_unix() {
    UNIX_BASE.call_once(|| (libdbos::hypercall::unix_time_nanos() / 1_000_000, now_ns()));
}

/// Milliseconds since the Unix epoch, from the TSC since [`calibrate_unix`].
fn unix_ms() -> u64 {
    let (base_ms, base_ns) = *UNIX_BASE.get().expect("calibrate_unix ran");
    base_ms + now_ns().saturating_sub(base_ns) / 1_000_000
}

/// Measures the TSC against the VMM's clock over about 20 ms.
fn calibrate() {
    let (n0, t0) = (libdbos::hypercall::clock_nanos(), tsc());
    while libdbos::hypercall::clock_nanos() - n0 < 20_000_000 {
        core::hint::spin_loop();
    }
    let (n1, t1) = (libdbos::hypercall::clock_nanos(), tsc());
    if t1 > t0 {
        let scale = (((n1 - n0) as u128) << 32) / (t1 - t0) as u128;
        NS_PER_TICK.store(scale.max(1) as u64, Ordering::Relaxed);
    }
}

fn env() -> Env {
    Env {
        relax: core::hint::spin_loop,
        now_ns,
        sleep: None,
    }
}

fn device(blocks: u64) -> Device {
    dbos_bufferpool::guest::device(QUEUE_DEPTH, blocks)
        .expect("an NVMe queue pair (run with --disk)")
}

/// The store's pool: `frames` frames of Tabby, a queue pair per vCPU.
fn pool(blocks: u64, frames: usize) -> impl FnOnce(PoolSetup) -> Result<Pool, PoolError> {
    move |setup| {
        let devices = (0..libdbos::platform().cpu_count())
            .map(|_| device(blocks))
            .collect();
        let mut cfg = setup.tabby_config(frames);
        cfg.pool.evict_batch = 4;
        cfg.pool.relax = env().relax;
        Tabby::new(libdbos::platform(), devices, cfg)
    }
}

/// Data pages of a new store at most: it grows from there up to the
/// disk's size as it fills (`dbos_bufferpool::growth`). Recovery reads and
/// checks every page of the data area, which costs seconds per thousand
/// pages where guest code is emulated, so a store starts small.
const MAX_DATA_PAGES: u64 = 256;

/// The layout for a disk of `blocks`: a quarter of it log (64 to 512
/// blocks), then up to [`MAX_DATA_PAGES`] data pages.
fn layout(blocks: u64) -> Layout {
    let log_blocks = (blocks / 4).clamp(64, 512);
    let overhead = Layout {
        log_blocks,
        data_pages: 0,
    }
    .blocks();
    Layout {
        log_blocks,
        data_pages: blocks.saturating_sub(overhead).min(MAX_DATA_PAGES),
    }
}

struct Args {
    spec: Spec,
    frames: usize,
    /// Print `acked RECORD VERSION` for every acknowledged write.
    acks: bool,
}

enum Request {
    Run(Args),
    Check(usize),
    Format,
}

fn parse(args: &[&'static str]) -> Result<Request, String> {
    match args {
        ["format", "--force"] => return Ok(Request::Format),
        ["format", ..] => return Err("format discards the store: say `format --force`".into()),
        ["check"] => return Ok(Request::Check(16)),
        _ => {}
    }
    let mut spec = Spec {
        workload: Workload::A,
        distribution: Distribution::Zipfian,
        records: 400,
        operations: 200,
        value_size: 100,
        threads: libdbos::platform().cpu_count(),
        seed: 1,
        ordered_keys: false,
        load_batch: 8,
    };
    let mut frames = 16;
    let mut acks = false;
    if !args.len().is_multiple_of(2) {
        return Err(alloc::format!("'{}' has no value", args[args.len() - 1]));
    }
    for pair in args.chunks_exact(2) {
        let (name, value) = (pair[0], pair[1]);
        let number = || {
            value
                .parse::<u64>()
                .map_err(|_| alloc::format!("{name} takes a whole number, not '{value}'"))
        };
        match name {
            "records" => spec.records = number()?,
            "ops" => spec.operations = number()?,
            "value" => spec.value_size = number()? as usize,
            "pool" => frames = number()? as usize,
            "seed" => spec.seed = number()?,
            "batch" => spec.load_batch = number()? as usize,
            "acks" => acks = number()? != 0,
            "workload" => {
                spec.workload = value
                    .parse()
                    .map_err(|e: workload::ParseError| alloc::format!("{e}"))?
            }
            "dist" => {
                spec.distribution = value
                    .parse()
                    .map_err(|e: workload::ParseError| alloc::format!("{e}"))?
            }
            _ => return Err(alloc::format!("unknown option '{name}'")),
        }
    }
    spec.validate().map_err(|e| alloc::format!("{e}"))?;
    if spec.value_size > dbos_bufferpool::btree::MAX_VALUE {
        return Err(alloc::format!(
            "value {} is too large (at most {})",
            spec.value_size,
            dbos_bufferpool::btree::MAX_VALUE
        ));
    }
    if frames < 16 {
        return Err("pool takes at least 16 frames".into());
    }
    Ok(Request::Run(Args { spec, frames, acks }))
}

/// Opens the store on the disk, formatting a blank disk or one whose
/// format was interrupted.
fn open(blocks: u64, frames: usize) -> Result<KvStore, Error> {
    let config = Config::new(env());
    match Store::open(device(blocks), device(blocks), config, pool(blocks, frames)) {
        Ok((store, r)) => {
            println!(
                "recovered: {} log units replayed from LSN {} to {}, {} page writes applied, {} \
                 pages repaired",
                r.transactions,
                r.redo.0,
                r.end.0,
                r.writes_applied,
                r.pages_repaired.len()
            );
            Ok(store)
        }
        Err(Error::Engine(e)) if e.holds_no_store() => {
            let l = layout(blocks);
            if e != dbos_bufferpool::Error::NotFormatted {
                println!("{e}");
            }
            println!(
                "blank disk: formatting a store of {} data pages, {} log blocks",
                l.data_pages, l.log_blocks
            );
            Store::format(
                device(blocks),
                device(blocks),
                l,
                config,
                pool(blocks, frames),
            )
        }
        Err(e) => Err(e),
    }
}

/// Runs `phase` on every vCPU; returns each vCPU's result and the time.
fn on_all<T: Send>(phase: impl Fn(usize) -> T + Sync) -> (Vec<T>, u64) {
    let cpus = libdbos::platform().cpu_count();
    let slots: Vec<spin::Mutex<Option<T>>> = (0..cpus).map(|_| spin::Mutex::new(None)).collect();
    let t0 = now_ns();
    libdbos::platform().run_on_all(&|cpu| {
        let r = phase(cpu);
        *slots[cpu].lock() = Some(r);
    });
    let ns = now_ns() - t0;
    (
        slots
            .into_iter()
            .map(|s| s.into_inner().expect("every vCPU ran"))
            .collect(),
        ns,
    )
}

/// Plain progress lines from vCPU 0 (every 10% of its share).
fn progress(phase: &'static str, cpu: usize, share: u64) -> impl Fn(u64) {
    let step = (share / 10).max(1);
    let last = AtomicU64::new(0);
    move |done| {
        if cpu == 0 && done / step != last.load(Ordering::Relaxed) {
            last.store(done / step, Ordering::Relaxed);
            println!("{phase}: vCPU 0 {done}/{share}");
        }
    }
}

/// The counters of a phase of `ops` operations: the store's (see
/// `StoreStats::per_op`), then the platform's events per operation.
fn counters(
    before: &(StoreStats, EventCounts),
    after: &(StoreStats, EventCounts),
    ops: u64,
) -> Vec<(&'static str, f64)> {
    let per = |n: u64| n as f64 / ops.max(1) as f64;
    let e = after.1.since(&before.1);
    let mut c = after.0.per_op(&before.0, ops);
    c.extend([
        ("VM exits to the VMM / op", per(e.vmm_exits)),
        ("IPIs / op", per(e.ipis_sent)),
        ("remote invalidations / op", per(e.remote_invalidations)),
        ("local invalidations / op", per(e.local_invalidations)),
        ("page-table writes / op", per(e.pte_writes)),
    ]);
    if let Some(k) = e.kvm_exits {
        c.push(("KVM exits / op", per(k)));
    }
    c
}

fn snapshot(store: &KvStore) -> (StoreStats, EventCounts) {
    (store.stats(), libdbos::platform().counters())
}

/// Runs phase `name` of `total` operations on every vCPU (`f(cpu,
/// progress)` does one vCPU's share) and prints its report.
fn phase(
    store: &KvStore,
    spec: &Spec,
    name: &'static str,
    total: u64,
    f: impl Fn(usize, &dyn Fn(u64)) -> Stats + Sync,
) {
    let before = snapshot(store);
    let (stats, ns) = on_all(|cpu| {
        let share = spec.share(total, cpu);
        f(cpu, &progress(name, cpu, share.end - share.start))
    });
    let c = counters(&before, &snapshot(store), total);
    report(name, spec, &stats, ns, &c);
}

fn report(phase: &str, spec: &Spec, stats: &[Stats], ns: u64, c: &[(&str, f64)]) {
    let r = Report {
        phase,
        spec,
        stats: &Stats::merged(stats),
        elapsed_ns: ns,
        counters: c,
    };
    print_lines(&alloc::format!("{r}"));
}

/// Prints `text` a line at a time (a console line holds at most
/// `libdbos::console::LINE_MAX` bytes).
fn print_lines(text: &str) {
    for line in text.lines() {
        println!("{line}");
    }
}

fn verify(store: &KvStore, spec: &Spec, acked: &Acked, when: &'static str) -> bool {
    let (v, _) = on_all(|cpu| {
        let share = spec.share(acked.claimed(), cpu);
        let p = progress(when, cpu, share.end - share.start);
        workload::verify(store, spec, acked, cpu, now_ns, &p)
    });
    let all = Verification::merged(&v);
    print_lines(&alloc::format!("verify {when}: {all}"));
    all.passed()
}

fn main() -> u8 {
    let args: Vec<&'static str> = libdbos::args().collect();
    if args.first() == Some(&"memory") {
        calibrate();
        return memory::run(&args[1..]);
    }
    if args.first() == Some(&"serve") {
        calibrate();
        return serve::run(&args[1..], nvme::info().map(|d| d.blocks));
    }
    let request = match parse(&args) {
        Ok(r) => r,
        Err(e) => {
            println!("{e}\n{USAGE}");
            return STATUS_USAGE;
        }
    };
    let disk =
        nvme::info().expect("kvstore needs a disk: dbos run --disk PATH --disk-size 64M ...");
    calibrate();
    let a = match request {
        Request::Format => {
            let l = layout(disk.blocks);
            return match Store::format(
                device(disk.blocks),
                device(disk.blocks),
                l,
                Config::new(env()),
                pool(disk.blocks, 16),
            ) {
                Ok(_) => {
                    println!(
                        "formatted: {} data pages, {} log blocks; the disk's earlier contents \
                         are gone",
                        l.data_pages, l.log_blocks
                    );
                    0
                }
                Err(e) => {
                    println!("cannot format the disk: {e}");
                    1
                }
            };
        }
        Request::Check(frames) => {
            return match open(disk.blocks, frames).and_then(|s| Ok((s.check()?, s.space()?))) {
                Ok((n, (next, free))) => {
                    println!("check passed: {n} entries, {next} pages of tree, {free} free");
                    0
                }
                Err(e) => {
                    println!("check failed: {e}");
                    1
                }
            };
        }
        Request::Run(a) => a,
    };
    let spec = a.spec;
    let store = match open(disk.blocks, a.frames) {
        Ok(s) => s,
        Err(e) => {
            println!("cannot open the store: {e}");
            if let Error::Engine(dbos_bufferpool::Error::NoControlBlock { .. }) | Error::NotAStore =
                e
            {
                println!("to discard what the disk holds, run with: -- format --force");
            }
            return 1;
        }
    };
    println!("{spec}; pool {} frames ({} KiB)", a.frames, a.frames * 4);
    let mut acked = Acked::new(&spec);
    if a.acks {
        // The acknowledged writes that raised their record's bound (a
        // write that overlapped another of its record is not printed: the
        // two may land in either order).
        acked.report_acks(alloc::boxed::Box::new(|r, v| println!("acked {r} {v}")));
    }
    let kv: &dyn Kv<Error = Error> = &store;
    phase(&store, &spec, "load", spec.records, |cpu, p| {
        workload::load(kv, &spec, &acked, cpu, now_ns, p)
    });
    phase(&store, &spec, "run", spec.operations, |cpu, p| {
        workload::run(kv, &spec, &acked, cpu, now_ns, p)
    });
    match store.space() {
        Ok((next, free)) => println!(
            "store: {next} pages of tree ({} KiB, {:.1}x the pool), {free} free",
            next * 4,
            next as f64 / a.frames as f64
        ),
        Err(e) => println!("store: {e}"),
    }
    let mut ok = verify(&store, &spec, &acked, "before restart");
    // Shut down without a checkpoint; opening again recovers from the log.
    drop(store);
    println!("restarting: the store is dropped and opened again from the disk");
    let store = match open(disk.blocks, a.frames) {
        Ok(s) => s,
        Err(e) => {
            println!("cannot reopen the store: {e}");
            return 1;
        }
    };
    ok &= verify(&store, &spec, &acked, "after restart");
    println!("{}", if ok { "PASSED" } else { "FAILED" });
    if ok {
        0
    } else {
        1
    }
}
