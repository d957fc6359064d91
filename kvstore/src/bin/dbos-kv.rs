//! `dbos-kv`: the key-value database as a Linux process: the durable
//! B+tree store (`dbos_kvstore::store`) on the vmcache-style pool, its I/O
//! done by the calling threads (`pread`/`pwrite` on an `O_DIRECT` file),
//! the same data-file format as the guest image `kvstore`.
//!
//! ```text
//! dbos-kv format   --dir DIR [--size 1G] [--log 64M] [--force]
//! dbos-kv workload --dir DIR [--workload a..f] [--distribution uniform|zipfian]
//!                  [--records N] [--operations N] [--threads N] [--value-size N]
//!                  [--pool 64M] [--load-batch N] [--no-load] [--seed N]
//! dbos-kv serve    --dir DIR [--listen 127.0.0.1:6379] [--engine btree|memory]
//!                  [--threads N] [--pool 64M] [--size 128M] [--max-size 16G]
//!                  [--memory 256M] [--snapshot fork|uffd] [--save-every SECONDS]
//! dbos-kv check    --dir DIR [--pool 64M]
//! dbos-kv verify-acks --dir DIR --acks FILE --value-size N
//! dbos-kv bench    [--host H] [--port P] [--workload a..f] [--clients N] ...
//! ```
//!
//! The store is the file `DIR/kv.db`. `workload` formats it if it does not
//! exist (`--size`, `--log`), else opens it (recovering from the log),
//! then: loads `--records` records (unless `--no-load`), runs the
//! workload, verifies every acknowledged write, shuts the store down
//! (without a checkpoint: the next open recovers from the log, as after a
//! crash), opens it again and verifies again. It prints a table per phase
//! and exits 0 only if both verifications passed. `format` refuses an
//! existing store unless `--force`.
//!
//! Crash checks: `workload --acks FILE` appends a line `RECORD VERSION` to
//! FILE for every write the store acknowledged (after it returned, so
//! durable), flushed at once; kill the process at any moment, and
//! `verify-acks` opens the store (recovering it) and checks that every
//! record in FILE holds that version or a newer one.

use clap::{Parser, Subcommand};
use dbos_bufferpool::direct::DirectDevice;
use dbos_bufferpool::engine::PoolSetup;
use dbos_bufferpool::host::{env, tlb_shootdowns};
use dbos_bufferpool::pool::vmcache::VmCache;
use dbos_bufferpool::{Config, Layout, PoolError};
use dbos_kvstore::memory::host::{MemoryConfig, MemoryEngine, PeriodicSaves, SnapshotKind};
use dbos_kvstore::server::btree::{Backup, BtreeEngine};
use dbos_kvstore::workload::{
    self, Acked, Distribution, Report, Spec, Stats, Verification, Workload,
};
use dbos_kvstore::{backup, loadgen, net, server, Store};
use dbos_nvme::host::{BackingFile, FileError};
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

type KvStore = Store<DirectDevice, VmCache<DirectDevice>>;

#[derive(Parser)]
#[command(name = "dbos-kv", about = "The dbos key-value database as a process")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Creates (or with --force, re-creates) an empty store.
    Format {
        #[command(flatten)]
        file: FileArgs,
        /// Discard an existing store.
        #[arg(long)]
        force: bool,
    },
    /// Loads, runs a YCSB workload, verifies, restarts, verifies again.
    Workload(WorkloadArgs),
    /// Opens the store (recovering it) and checks every write a killed
    /// `workload --acks FILE` acknowledged.
    VerifyAcks {
        #[arg(long)]
        dir: PathBuf,
        /// The acknowledgement file.
        #[arg(long)]
        acks: PathBuf,
        /// The value size the workload wrote.
        #[arg(long)]
        value_size: usize,
    },
    /// Serves the store over the Redis protocol (RESP2) until SHUTDOWN;
    /// formats a new store in --dir if it holds none.
    Serve(ServeArgs),
    /// Drives a RESP server (dbos-kv serve, Redis) over TCP with a YCSB
    /// workload, one connection per client; or, with --verify, checks it
    /// against the writes an earlier bench --acks FILE acknowledged.
    Bench(BenchArgs),
    /// Opens the store (recovering it) and checks the whole tree.
    Check {
        #[arg(long)]
        dir: PathBuf,
        /// Buffer pool size.
        #[arg(long, default_value = "64M", value_parser = parse_size)]
        pool: u64,
    },
}

#[derive(clap::Args)]
struct FileArgs {
    /// Directory of the store (its file is DIR/kv.db).
    #[arg(long)]
    dir: PathBuf,
    /// Size of a new store when formatted: its log and first data pages.
    /// It grows from there as it fills, up to --max-size.
    #[arg(long, default_value = "128M", value_parser = parse_size)]
    size: u64,
    /// Most a new store may grow to: the length of its file, whose blocks
    /// are allocated on disk only as the store grows into them. (The log
    /// also bounds it: a store's page-LSN table must fit a quarter of the
    /// log, about 8G of data for a 64M log.)
    #[arg(long, default_value = "16G", value_parser = parse_size)]
    max_size: u64,
    /// Size of a new store's log.
    #[arg(long, default_value = "64M", value_parser = parse_size)]
    log: u64,
}

#[derive(clap::Args)]
struct ServeArgs {
    #[command(flatten)]
    file: FileArgs,
    /// Address to listen on (port 0: any free port; the address bound is
    /// printed).
    #[arg(long, default_value = "127.0.0.1:6379")]
    listen: String,
    /// The storage engine.
    #[arg(long, value_enum, default_value_t = EngineKind::Btree)]
    engine: EngineKind,
    /// Event loops serving connections (beside them, one thread waits for
    /// the log on their behalf); each new connection goes to the loop
    /// serving the fewest. Default: 1 with the memory engine (measured
    /// fastest on 2 cores), one per CPU with the btree engine (its loops
    /// read pages without blocking, so the loop count need not cover the
    /// clients reading at once; 2 loops measured fastest on 2 cores).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=256))]
    threads: Option<u64>,
    /// Buffer pool size (btree engine).
    #[arg(long, default_value = "64M", value_parser = parse_size)]
    pool: u64,
    /// Heap size (memory engine): every key, value and the index live in
    /// it, allocated at start; the engine refuses writes (OOM) when full.
    #[arg(long, default_value = "256M", value_parser = parse_size)]
    memory: u64,
    /// How the memory engine takes snapshots: fork() or userfaultfd.
    #[arg(long, default_value = "fork")]
    snapshot: SnapshotKind,
    /// Take a background save every this many seconds when keys changed
    /// (0: only on BGSAVE, SAVE and SHUTDOWN SAVE).
    #[arg(long, default_value_t = 0)]
    save_every: u64,
    /// Microseconds an event loop keeps polling, without sleeping, after a
    /// round that served requests (0: it sleeps at once). Default: 50 with
    /// the memory engine, 0 with the btree engine (whose requests wait for
    /// the disk: a polling loop takes a core from the I/O, measured slower).
    #[arg(long)]
    busy_poll: Option<u64>,
    /// How an event loop's lookups read pages that are not in the pool
    /// (btree engine): `async`, with an io_uring of the loop's own while
    /// the loop serves other clients; `blocking`, waiting in the loop (the
    /// compared method).
    #[arg(long, value_enum, default_value_t = ReadsKind::Async)]
    reads: ReadsKind,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum ReadsKind {
    Async,
    Blocking,
}

impl ServeArgs {
    /// The event loops to run (`--threads`, or the engine's default).
    fn loops(&self) -> usize {
        match (self.threads, self.engine) {
            (Some(n), _) => n as usize,
            (None, EngineKind::Memory) => 1,
            (None, EngineKind::Btree) => {
                std::thread::available_parallelism().map_or(2, |n| n.get())
            }
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum EngineKind {
    /// The durable B+tree on the buffer pool: every write logged before it
    /// is acknowledged.
    Btree,
    /// An in-memory hash table persisted by snapshots (BGSAVE).
    Memory,
}

#[derive(clap::Args)]
struct WorkloadArgs {
    #[command(flatten)]
    file: FileArgs,
    /// YCSB core workload: a (50% reads, 50% updates), b (95/5), c (reads
    /// only), d (read latest, 5% inserts), e (short scans, 5% inserts), f
    /// (50% read-modify-write).
    #[arg(long, default_value = "a", value_parser = parse_workload)]
    workload: Workload,
    /// How records are chosen (workload d always reads the latest).
    #[arg(long, default_value = "zipfian", value_parser = parse_distribution)]
    distribution: Distribution,
    /// Records loaded.
    #[arg(long, default_value_t = 100_000)]
    records: u64,
    /// Operations of the run phase (all threads together).
    #[arg(long, default_value_t = 100_000)]
    operations: u64,
    /// Threads.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Bytes per value (at most 1000 with the 24-byte keys: an entry fits
    /// a quarter page).
    #[arg(long, default_value_t = 100)]
    value_size: usize,
    /// Buffer pool size (the store may be larger: pages are evicted).
    #[arg(long, default_value = "64M", value_parser = parse_size)]
    pool: u64,
    /// Records per load transaction (1: one put each).
    #[arg(long, default_value_t = 1)]
    load_batch: usize,
    /// Skip the load (the records are in the store already).
    #[arg(long)]
    no_load: bool,
    /// Before the run phase, bring the store to a steady state, untimed:
    /// read it whole in key order (a pool that holds the store starts the
    /// run full), then run the workload once with another seed, reported
    /// as the `warm-up` phase and verified like the run. Without it, the
    /// run starts from a cold pool and from the checkpoint that ends every
    /// open, after which each page's first change logs its whole image.
    #[arg(long)]
    warm_up: bool,
    /// Seed of the workload's choices.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Append `RECORD VERSION` to this file for every acknowledged write.
    #[arg(long)]
    acks: Option<PathBuf>,
    /// Skip the verifications and the restart (a benchmark run on a store
    /// loaded before, with --no-load).
    #[arg(long)]
    no_verify: bool,
}

#[derive(clap::Args)]
struct BenchArgs {
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    #[arg(long, default_value_t = 6379)]
    port: u16,
    /// YCSB core workload a..f (e needs the server's DBOS.RANGE).
    #[arg(long, default_value = "a", value_parser = parse_workload)]
    workload: Workload,
    /// uniform, zipfian or latest (workload d always reads the latest).
    #[arg(long, default_value = "zipfian", value_parser = loadgen::parse_distribution)]
    distribution: (Distribution, bool),
    /// Records loaded (and, for --phase run, loaded before).
    #[arg(long, default_value_t = 100_000)]
    records: u64,
    /// Operations of the run phase (all clients together).
    #[arg(long, default_value_t = 100_000)]
    operations: u64,
    /// Clients: each a thread with its own connection.
    #[arg(long, default_value_t = 1)]
    clients: usize,
    #[arg(long, default_value_t = 100)]
    value_size: usize,
    /// load, run or both.
    #[arg(long, default_value = "both")]
    phase: loadgen::Phase,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Record acknowledged writes in FILE (replacing it); with --verify,
    /// the file to check.
    #[arg(long)]
    acks: Option<PathBuf>,
    /// Check every write FILE lists instead of running a workload.
    #[arg(long, requires = "acks", conflicts_with = "phase")]
    verify: bool,
    /// Requests each client sends before reading their replies.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=4096))]
    pipeline: u32,
    /// Seconds to wait for a connection or a reply before giving up on the
    /// server.
    #[arg(long, default_value_t = 30)]
    timeout: u64,
    /// Print each phase as one line of JSON (operations, rates, latency
    /// percentiles, errors) instead of the tables.
    #[arg(long)]
    json: bool,
}

impl BenchArgs {
    fn run(self) -> ExitCode {
        let spec = Spec {
            workload: self.workload,
            distribution: self.distribution.0,
            records: self.records,
            operations: self.operations,
            value_size: self.value_size,
            threads: self.clients,
            seed: self.seed,
            ..Spec::default()
        };
        ExitCode::from(loadgen::bench(&loadgen::Options {
            host: self.host,
            port: self.port,
            spec,
            latest: self.distribution.1,
            phase: self.phase,
            pipeline: self.pipeline as usize,
            acks: self.acks,
            verify: self.verify,
            timeout: Duration::from_secs(self.timeout.max(1)),
            json: self.json,
        }))
    }
}

/// Checks every write `acks` lists against the store at `dir`.
fn verify_acks(dir: &Path, acks: &Path, value_size: usize) -> Result<bool, String> {
    let text = std::fs::read_to_string(acks).map_err(|e| format!("{}: {e}", acks.display()))?;
    let mut newest = std::collections::BTreeMap::new();
    for line in text.lines() {
        let mut w = line.split(' ');
        // A line cut by the kill (the last) is not an acknowledgement.
        let (Some(r), Some(v), None) = (w.next(), w.next(), w.next()) else {
            continue;
        };
        if let (Ok(r), Ok(v)) = (r.parse::<u64>(), v.parse::<u64>()) {
            let e = newest.entry(r).or_insert(0);
            *e = v.max(*e);
        }
    }
    let store = open(dir, 64 << 20, QUEUES)?;
    let (mut missing, mut wrong) = (0, 0);
    let (mut key, mut value) = (Vec::new(), Vec::new());
    for (&record, &version) in &newest {
        workload::key_bytes(record, false, &mut key);
        if !store.get(&key, &mut value).map_err(|e| e.to_string())? {
            println!("record {record}: acknowledged at version {version}, missing");
            missing += 1;
            continue;
        }
        match workload::check_value(&value, value_size) {
            Ok((r, v)) if r == record && v >= version => {}
            got => {
                println!("record {record}: acknowledged at version {version}, holds {got:?}");
                wrong += 1;
            }
        }
    }
    let n = store.check().map_err(|e| e.to_string())?;
    println!(
        "{} acknowledged records checked: {missing} missing, {wrong} wrong; the tree checks \
         out ({n} entries)",
        newest.len()
    );
    Ok(missing == 0 && wrong == 0)
}

fn parse_workload(s: &str) -> Result<Workload, String> {
    s.parse().map_err(|e: workload::ParseError| e.to_string())
}

fn parse_distribution(s: &str) -> Result<Distribution, String> {
    s.parse().map_err(|e: workload::ParseError| e.to_string())
}

fn parse_size(s: &str) -> Result<u64, String> {
    let (num, mult) = match s.as_bytes().last() {
        Some(b'K' | b'k') => (&s[..s.len() - 1], 1u64 << 10),
        Some(b'M' | b'm') => (&s[..s.len() - 1], 1 << 20),
        Some(b'G' | b'g') => (&s[..s.len() - 1], 1 << 30),
        Some(b'T' | b't') => (&s[..s.len() - 1], 1 << 40),
        _ => (s, 1),
    };
    num.parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(mult))
        .filter(|&n| n > 0)
        .ok_or_else(|| format!("'{s}' is not a size (a number with K, M, G or T)"))
}

fn store_path(dir: &Path) -> PathBuf {
    dir.join("kv.db")
}

fn config() -> Config {
    Config::new(env())
}

/// I/O queues of a pool for a program whose other threads hardly touch
/// the store (`format`, `check`, `verify-acks`).
const QUEUES: usize = 4;

/// At most this many I/O queues (each has a bounce buffer of an eviction
/// batch, 256 KiB): more threads than this share them.
const MAX_QUEUES: usize = 64;

/// The I/O queues for `threads` threads using the store.
fn queues_for(threads: usize) -> usize {
    threads.clamp(QUEUES, MAX_QUEUES)
}

/// A vmcache-style pool of `bytes` over `file` with `queues` I/O queues.
/// Every thread that may miss or evict at once needs a queue of its own:
/// a thread that finds all queues taken waits by yielding, which on a
/// machine with fewer cores than threads takes CPU from the threads doing
/// I/O (measured: workload A with 16 threads out of memory spent 15% of
/// its samples there with 4 queues, and did 19% more updates per second
/// with 16).
fn pool(
    file: &Arc<BackingFile>,
    bytes: u64,
    queues: usize,
) -> impl FnOnce(PoolSetup) -> Result<VmCache<DirectDevice>, PoolError> {
    let file = file.clone();
    move |setup| {
        let frames = (bytes / dbos_bufferpool::PAGE_SIZE as u64).max(16) as usize;
        let devs = (0..queues.max(1))
            .map(|_| DirectDevice::new(file.clone()))
            .collect();
        VmCache::new(
            devs,
            dbos_bufferpool::PoolConfig {
                relax: env().relax,
                ..setup.config(frames)
            },
        )
    }
}

/// Formats a new store file at `args.dir` (which must not hold one unless
/// `force`).
/// Formats a store in `args.dir`. It is built as `kv.db.new` and takes
/// the name `kv.db` only once complete, so a kill while formatting leaves
/// no half-made store (and, with `--force`, the old one in place). The old
/// store is locked first: one in use is not replaced.
fn format(args: &FileArgs, force: bool) -> Result<KvStore, String> {
    let path = store_path(&args.dir);
    let new = args.dir.join("kv.db.new");
    std::fs::create_dir_all(&args.dir)
        .map_err(|e| format!("{}: cannot create the directory: {e}", args.dir.display()))?;
    let mut _old = None;
    if path.exists() {
        if !force {
            return Err(format!(
                "{} exists: refusing to overwrite a store (`dbos-kv format --force` discards it)",
                path.display()
            ));
        }
        _old = Some(BackingFile::open(&path).map_err(|e| e.to_string())?);
    }
    if new.exists() {
        // Left by a format that was killed; one still running holds it.
        if let Err(e @ FileError::Locked { .. }) = BackingFile::open(&new) {
            return Err(e.to_string());
        }
        std::fs::remove_file(&new).map_err(|e| format!("{}: {e}", new.display()))?;
    }
    let blocks = args.size / 4096;
    let log_blocks = args.log / 4096;
    let overhead = Layout {
        log_blocks,
        data_pages: 0,
    }
    .blocks();
    if log_blocks < 16 || blocks <= overhead + 64 {
        return Err(format!(
            "a store of {} bytes with a log of {} bytes leaves no room for data (the log needs \
             at least 64K, the data at least 256K)",
            args.size, args.log
        ));
    }
    let layout = Layout {
        log_blocks,
        data_pages: blocks - overhead,
    };
    if args.max_size < args.size {
        return Err(format!(
            "--max-size {} is less than --size {}",
            args.max_size, args.size
        ));
    }
    // The file is as long as the store may grow; what it does not use yet
    // is a hole (the backup control block is its last block).
    let file_blocks = (args.max_size / 4096).max(layout.blocks());
    let in_use = (layout.blocks() - 1) * 4096;
    let file = Arc::new(
        BackingFile::create_growable(&new, file_blocks * 4096, in_use)
            .map_err(|e| e.to_string())?,
    );
    let dev = DirectDevice::new(file.clone());
    let store = Store::format(
        dev.another(),
        dev,
        layout,
        config(),
        pool(&file, 64 << 20, QUEUES),
    )
    .map_err(|e| format!("{}: {e}", new.display()))?;
    // Complete and durable: it takes the name (without --force, only if
    // no store appeared there meanwhile).
    let named = if force {
        std::fs::rename(&new, &path)
    } else {
        std::fs::hard_link(&new, &path).and_then(|()| std::fs::remove_file(&new))
    };
    named
        .and_then(|()| std::fs::File::open(&args.dir)?.sync_all())
        .map_err(|e| format!("{}: naming the new store: {e}", path.display()))?;
    Ok(store)
}

/// Opens the store in `dir` with a pool of `pool_bytes` and `queues` I/O
/// queues (see [`pool`]).
fn open(dir: &Path, pool_bytes: u64, queues: usize) -> Result<KvStore, String> {
    open_with_file(dir, pool_bytes, queues).map(|(store, _)| store)
}

/// Opens the store, returning the file it is on too.
fn open_with_file(
    dir: &Path,
    pool_bytes: u64,
    queues: usize,
) -> Result<(KvStore, Arc<BackingFile>), String> {
    let path = store_path(dir);
    let file = Arc::new(BackingFile::open(&path).map_err(|e| e.to_string())?);
    let dev = DirectDevice::new(file.clone());
    let (store, report) = Store::open(
        dev.another(),
        dev,
        config(),
        pool(&file, pool_bytes, queues),
    )
    .map_err(|e| format!("{}: {e}", path.display()))?;
    println!(
        "opened {}: recovery replayed {} log units ({} page writes applied, {} pages repaired) \
         from LSN {} to {}",
        path.display(),
        report.transactions,
        report.writes_applied,
        report.pages_repaired.len(),
        report.redo.0,
        report.end.0
    );
    Ok((store, file))
}

/// Progress of a phase: a bar on a terminal, a line every 5 s otherwise.
struct Progress {
    done: AtomicU64,
    total: u64,
    stop: AtomicBool,
}

impl Progress {
    fn show(&self, phase: &str, start: Instant) {
        let tty = std::io::stderr().is_terminal();
        let mut last_line = Instant::now();
        while !self.stop.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(200));
            let done = self.done.load(Ordering::Relaxed).min(self.total);
            let pct = done as f64 * 100.0 / self.total.max(1) as f64;
            let rate = done as f64 / start.elapsed().as_secs_f64().max(1e-9);
            if tty {
                let w = (pct / 2.5) as usize;
                eprint!(
                    "\r{phase:>8} [{}{}] {pct:5.1}% {done}/{} {rate:>9.0}/s ",
                    "#".repeat(w),
                    " ".repeat(40 - w.min(40)),
                    self.total
                );
            } else if last_line.elapsed() >= Duration::from_secs(5) {
                eprintln!("{phase}: {pct:.1}% ({done}/{}), {rate:.0}/s", self.total);
                last_line = Instant::now();
            }
        }
        if tty {
            eprint!("\r{}\r", " ".repeat(78));
        }
        let _ = std::io::stderr().flush();
    }
}

/// Runs `phase` on `spec.threads` threads with a progress display.
fn threads<T: Send>(
    name: &str,
    total: u64,
    spec: &Spec,
    phase: impl Fn(usize, &dyn Fn(u64)) -> T + Sync,
) -> (Vec<T>, u64) {
    let progress = Progress {
        done: AtomicU64::new(0),
        total,
        stop: AtomicBool::new(false),
    };
    let start = Instant::now();
    let results = std::thread::scope(|s| {
        let shower = s.spawn(|| progress.show(name, start));
        let workers: Vec<_> = (0..spec.threads)
            .map(|t| {
                let (phase, progress) = (&phase, &progress);
                s.spawn(move || {
                    let last = AtomicU64::new(0);
                    phase(t, &|done| {
                        let prev = last.swap(done, Ordering::Relaxed);
                        progress.done.fetch_add(done - prev, Ordering::Relaxed);
                    })
                })
            })
            .collect();
        let r: Vec<T> = workers
            .into_iter()
            .map(|w| w.join().expect("worker"))
            .collect();
        // The phase's time, before the progress display's last sleep.
        let ns = start.elapsed().as_nanos() as u64;
        progress.stop.store(true, Ordering::Relaxed);
        shower.join().expect("progress");
        (r, ns)
    });
    results
}

/// Runs phase `name` of `total` operations on the spec's threads and
/// prints its report with the store's counters per operation.
fn phase(
    store: &KvStore,
    spec: &Spec,
    name: &str,
    total: u64,
    f: impl Fn(usize, &dyn Fn(u64)) -> Stats + Sync,
) {
    let before = store.stats();
    let tlb = tlb_shootdowns();
    let (stats, ns) = threads(name, total, spec, f);
    let mut counters = store.stats().per_op(&before, total);
    // A process has no VM exits; the IPIs it causes are the kernel's TLB
    // shootdowns (the vmcache pool's evictions unmap pages), counted for
    // the whole machine: other processes' count too.
    if let (Some(a), Some(b)) = (tlb, tlb_shootdowns()) {
        counters.push((
            "TLB shootdowns / op (machine)",
            b.saturating_sub(a) as f64 / total.max(1) as f64,
        ));
    }
    let r = Report {
        phase: name,
        spec,
        stats: &Stats::merged(&stats),
        elapsed_ns: ns,
        counters: &counters,
    };
    println!("{r}");
}

fn verify(store: &KvStore, spec: &Spec, acked: &Acked, when: &str) -> bool {
    let (v, ns) = threads(when, acked.claimed(), spec, |t, p| {
        workload::verify(store, spec, acked, t, env().now_ns, p)
    });
    let all = Verification::merged(&v);
    println!("verify {when} ({:.1} s): {all}", ns as f64 / 1e9);
    all.passed()
}

/// Background checkpoints (the server's and the workload driver's): every
/// `CHECKPOINT_EVERY`, a checkpoint if the log since the last one is
/// `CHECKPOINT_PERCENT` full, before a writer finds it past the engine's own
/// threshold (50%) and takes the checkpoint in its own path.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(20);
const CHECKPOINT_PERCENT: u64 = 40;

/// Takes the background checkpoints of `store` until `stop` says so or
/// one fails (a failed checkpoint has stopped the engine: its writers fail
/// from then on).
fn checkpoint_until(store: &KvStore, stop: &dyn Fn() -> bool) {
    while !stop() {
        std::thread::sleep(CHECKPOINT_EVERY);
        if let Err(e) = store.checkpoint_if_over(CHECKPOINT_PERCENT) {
            log::error!("background checkpoint: {e}");
            return;
        }
    }
}

/// Runs `work` with background checkpoints beside it, as the server takes
/// them.
fn with_checkpointer<T>(store: &KvStore, work: impl FnOnce() -> T) -> T {
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        let background = s.spawn(|| checkpoint_until(store, &|| stop.load(Ordering::Relaxed)));
        let result = work();
        stop.store(true, Ordering::Relaxed);
        background.join().expect("checkpointer");
        result
    })
}

/// Mixed into `--seed` for the warm-up's choices (`--warm-up`), so that
/// the run's own choices are those of a run without one.
const WARM_UP_SEED: u64 = 0x5741_524d_2d55_5021;

fn run_workload(a: &WorkloadArgs) -> Result<bool, String> {
    let spec = Spec {
        workload: a.workload,
        distribution: a.distribution,
        records: a.records,
        operations: a.operations,
        value_size: a.value_size,
        threads: a.threads,
        seed: a.seed,
        ordered_keys: false,
        load_batch: a.load_batch,
    };
    spec.validate().map_err(|e| e.to_string())?;
    if a.value_size > dbos_bufferpool::btree::MAX_VALUE {
        return Err(format!(
            "--value-size {} is too large (at most {})",
            a.value_size,
            dbos_bufferpool::btree::MAX_VALUE
        ));
    }
    let store = if store_path(&a.file.dir).exists() {
        open(&a.file.dir, a.pool, queues_for(a.threads))?
    } else {
        println!("formatting {}", store_path(&a.file.dir).display());
        drop(format(&a.file, false)?);
        open(&a.file.dir, a.pool, queues_for(a.threads))?
    };
    println!("{spec}");
    // The warm-up's inserts need room too.
    let mut acked = if a.warm_up && spec.workload.inserts() {
        Acked::with_capacity(spec.records, spec.capacity() + spec.operations)
    } else {
        Acked::new(&spec)
    };
    if a.no_load {
        // Written by an earlier run, versions unknown: reads check the
        // record and the fill, and no version above this run's own.
        acked.history_unknown();
    }
    let now = env().now_ns;
    if let Some(path) = &a.acks {
        let file = std::sync::Mutex::new(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|e| format!("{}: {e}", path.display()))?,
        );
        // The sound lower bounds only (see `Acked::report_acks`), one write
        // per line: a kill leaves whole lines and at most one cut at the end.
        acked.report_acks(Box::new(move |r: u64, v: u64| {
            let _ = file
                .lock()
                .expect("ack file")
                .write_all(format!("{r} {v}\n").as_bytes());
        }));
    }
    let kv: &dyn dbos_kvstore::Kv<Error = dbos_kvstore::Error> = &store;
    with_checkpointer(&store, || -> Result<(), String> {
        if !a.no_load {
            phase(&store, &spec, "load", spec.records, |t, p| {
                workload::load(kv, &spec, &acked, t, now, p)
            });
        }
        if a.warm_up {
            let start = std::time::Instant::now();
            let entries = store
                .scan(b"", usize::MAX, &mut |_, _| {})
                .map_err(|e| format!("warming the pool: {e}"))?;
            println!(
                "warm-up: {entries} entries read in key order in {:.2} s",
                start.elapsed().as_secs_f64()
            );
            let warm = Spec {
                seed: spec.seed ^ WARM_UP_SEED,
                ..spec
            };
            phase(&store, &warm, "warm-up", warm.operations, |t, p| {
                workload::run(kv, &warm, &acked, t, now, p)
            });
        }
        phase(&store, &spec, "run", spec.operations, |t, p| {
            workload::run(kv, &spec, &acked, t, now, p)
        });
        Ok(())
    })?;
    let (next, free) = store.space().map_err(|e| e.to_string())?;
    println!(
        "store: {} pages of tree ({} MiB), {free} free; pool {} MiB",
        next,
        (next * 4096) >> 20,
        a.pool >> 20
    );
    if a.no_verify {
        return Ok(true);
    }
    let mut ok = verify(&store, &spec, &acked, "before restart");
    // Shut down without a checkpoint: the next open recovers from the log.
    drop(store);
    let store = open(&a.file.dir, a.pool, queues_for(a.threads))?;
    ok &= verify(&store, &spec, &acked, "after restart");
    println!("{}", if ok { "PASSED" } else { "FAILED" });
    Ok(ok)
}

fn serve(a: &ServeArgs) -> Result<bool, String> {
    let dir = &a.file.dir;
    let listener = || {
        std::net::TcpListener::bind(&a.listen)
            .map_err(|e| format!("listening on {}: {e}", a.listen))
    };
    match a.engine {
        EngineKind::Btree => {
            if !store_path(dir).exists() {
                drop(format(&a.file, false)?);
            }
            // The event loops, the flusher, active expiry and BGSAVE.
            let (store, file) = open_with_file(dir, a.pool, queues_for(a.loops() + QUEUES))?;
            // BGSAVE and SAVE copy the store to DIR/backup/kv.db, online.
            let dest = dir.join("backup");
            let copy: Backup<_, _> =
                Arc::new(move |s: &KvStore| backup::copy_store(s, &file, &dest));
            let engine = BtreeEngine::new(store, net::wall_clock).with_backup(copy, backup::spawn);
            let what = format!("{} (btree engine", store_path(dir).display());
            run_server(engine, a, listener()?, &what, None, Some(checkpointer))
        }
        EngineKind::Memory => {
            std::fs::create_dir_all(dir)
                .map_err(|e| format!("{}: cannot create the directory: {e}", dir.display()))?;
            // One server per directory: a second would overwrite the
            // first's snapshots.
            let _lock = lock_dir(dir)?;
            let config = MemoryConfig::new(dir, a.memory as usize, a.snapshot);
            let engine = MemoryEngine::open(config).map_err(|e| e.to_string())?;
            let periodic = (a.save_every > 0)
                .then(|| engine.start_periodic_saves(Duration::from_secs(a.save_every)));
            let what = format!(
                "{} (memory engine, {} MiB heap, {} snapshots",
                dir.join("dump.dbkv").display(),
                a.memory >> 20,
                a.snapshot
            );
            run_server(engine, a, listener()?, &what, periodic, None)
        }
    }
}

/// Locks `DIR/dbos-kv.lock` for the life of the returned file.
fn lock_dir(dir: &Path) -> Result<std::fs::File, String> {
    use std::os::fd::AsRawFd;
    let path = dir.join("dbos-kv.lock");
    let f = std::fs::File::create(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    // SAFETY: flock on a descriptor this function owns; no memory is
    // passed.
    let rc = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc != 0 {
        return Err(format!(
            "{}: another dbos-kv serves this directory ({})",
            path.display(),
            std::io::Error::last_os_error()
        ));
    }
    Ok(f)
}

/// The btree engine's background checkpoints: a checkpoint whenever the
/// log since the last one passes 40% of it (the engine's own, in a
/// writer's path, comes at half).
fn checkpointer(shared: Arc<server::Shared<ServedBtree>>) {
    checkpoint_until(shared.engine.store(), &|| shared.shutting_down());
}

type ServedBtree = BtreeEngine<DirectDevice, VmCache<DirectDevice>>;

/// Active expiry: every 100 ms, slices of the keyspace for up to 5 ms
/// (at most 5% of a core; Redis's slow cycle takes up to 25%), none while
/// no key has an expiry (`server::expire::Sweeper`).
fn expire_keys<E: server::KvEngine>(shared: &server::Shared<E>) {
    let mut sweeper = server::expire::Sweeper::new();
    while !shared.shutting_down() {
        std::thread::sleep(Duration::from_millis(100));
        let start = Instant::now();
        // A resting sweeper's step does nothing and ends its pass.
        while start.elapsed() < Duration::from_millis(5) {
            if let Err(e) = sweeper.step(shared, 200) {
                log::error!("active expiry stopped: {e}");
                return;
            }
            if sweeper.pass_ended() {
                break;
            }
        }
    }
}

/// Serves `engine` until SHUTDOWN, with `background` running beside the
/// event loops.
fn run_server<E: server::KvEngine + Send + 'static>(
    engine: E,
    a: &ServeArgs,
    listener: std::net::TcpListener,
    what: &str,
    periodic: Option<PeriodicSaves>,
    background: Option<fn(Arc<server::Shared<E>>)>,
) -> Result<bool, String> {
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let config = server::Config {
        dir: a.file.dir.display().to_string(),
        ..server::Config::default()
    };
    config.port.store(u64::from(addr.port()), Ordering::Relaxed);
    config.save_every.store(a.save_every, Ordering::Relaxed);
    let shared = Arc::new(server::Shared::new(engine, config, net::wall_clock));
    let busy_poll = Duration::from_micros(a.busy_poll.unwrap_or(match a.engine {
        EngineKind::Memory => 50,
        EngineKind::Btree => 0,
    }));
    println!(
        "dbos-kv: serving {what}, {} event loops, busy poll {} us) on {addr}",
        a.loops(),
        busy_poll.as_micros()
    );
    let _ = std::io::stdout().flush();
    let beside = background.map(|f| {
        let shared = shared.clone();
        std::thread::spawn(move || f(shared))
    });
    let expiring = {
        let shared = shared.clone();
        std::thread::spawn(move || expire_keys(&shared))
    };
    let options = net::Options {
        threads: a.loops(),
        busy_poll,
        async_reads: a.reads == ReadsKind::Async,
    };
    let served = net::serve(shared, listener, options).map_err(|e| format!("serving: {e}"));
    if let Some(t) = beside {
        let _ = t.join();
    }
    let _ = expiring.join();
    drop(periodic);
    served?;
    println!("dbos-kv: shut down");
    Ok(true)
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Format { file, force } => format(&file, force).map(|s| {
            let l = s.engine().layout();
            let max = s.engine().max_data_pages();
            println!(
                "formatted {}: {} data pages, {} log blocks; it grows to at most {max} data \
                 pages ({} MiB{})",
                store_path(&file.dir).display(),
                l.data_pages,
                l.log_blocks,
                (max * 4096) >> 20,
                if (max + l.log_blocks + 3) * 4096 < file.max_size {
                    ": a larger store needs a larger --log"
                } else {
                    ""
                }
            );
            true
        }),
        Command::Workload(a) => run_workload(&a),
        Command::Serve(a) => serve(&a),
        Command::Bench(a) => return a.run(),
        Command::VerifyAcks {
            dir,
            acks,
            value_size,
        } => verify_acks(&dir, &acks, value_size),
        Command::Check { dir, pool } => open(&dir, pool, QUEUES).and_then(|s| {
            let n = s.check().map_err(|e| e.to_string())?;
            let (next, free) = s.space().map_err(|e| e.to_string())?;
            println!("check passed: {n} entries, {next} pages of tree, {free} free");
            Ok(true)
        }),
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("dbos-kv: {e}");
            ExitCode::FAILURE
        }
    }
}
