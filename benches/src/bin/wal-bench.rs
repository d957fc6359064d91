//! The WAL's durability side by side on one disk:
//!
//! - the physical limit: a loop of 8 KiB `O_DIRECT|O_DSYNC` `pwrite`s;
//! - the device path without the WAL: 4 KiB FUA writes one at a time
//!   through each device measured;
//! - commit latency and commits per second at 1, 4, 16 and 64 concurrent
//!   committers through the engine (key-value transactions of 2 keys) and
//!   the WAL's group commit, with FUA log writes and with log writes plus
//!   one flush per batch, on each device: the NVMe queue pair with its
//!   poller and io_uring (process mode, `qp`), and the direct device, whose
//!   callers make the system calls themselves (`direct`,
//!   `dbos_bufferpool::direct`); both on an `O_DIRECT` file;
//! - write amplification: bytes written to the log per committed byte.
//!
//! Then `--rounds` rounds of the raw loop, 1 and then 16 FUA committers on
//! each device (raw, qp 1, direct 1, qp 16, direct 16 with both), printing
//! each round's ratios and their medians: the disk's speed drifts between
//! runs seconds apart, and the targets are ratios (FUA commit latency /
//! raw write <= 1.2x; 16 committers >= 6x the commits/s of 1).
//!
//! `--background-load N` runs N busy threads beside every measurement (the
//! same comparison on a machine whose cores are taken); `--spin` makes the
//! WAL's waits spin instead of yielding the CPU; `--no-sleep` keeps group
//! commit's followers from sleeping (they yield until the batch ends, as
//! before adaptive waits).
//!
//! Usage: `cargo run --release -p dbos-benches --bin wal-bench -- --dir DIR
//! --seconds 2 --rounds 5 --device both --background-load 0` (DIR defaults
//! to the system temp dir, which must support O_DIRECT).

use clap::Parser;
use dbos_benches::load::BackgroundLoad;
use dbos_benches::median;
use dbos_bufferpool::device::{BlockDevice, Io};
use dbos_bufferpool::direct::DirectDevice;
use dbos_bufferpool::host::{block_device, env};
use dbos_bufferpool::pool::hash::HashPool;
use dbos_bufferpool::{CommitMode, Config, Engine, Error, KvTable, Layout, PageId, WalError};
use dbos_nvme::host::{BackingFile, Device, PollerConfig, UringConfig};
use std::fmt::Display;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const LAYOUT: Layout = Layout {
    log_blocks: 8192,
    data_pages: 64,
};
/// Bytes a transaction commits (2 keys of 8-byte values).
const TXN_BYTES: u64 = 16;

#[derive(Parser)]
#[command(
    about = "WAL commits side by side with the raw durable write, on the queue pair \
                   and on the direct device"
)]
struct Args {
    /// Directory for the benchmark files (must support O_DIRECT).
    #[arg(long, default_value_os_t = std::env::temp_dir())]
    dir: PathBuf,
    /// Seconds per configuration.
    #[arg(long, default_value_t = 2.0)]
    seconds: f64,
    /// Rounds of raw / 1 / 16 FUA committers after the table (0: none).
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// Busy threads of pure computation to run beside every measurement
    /// (0: none).
    #[arg(long, default_value_t = 0, value_name = "N")]
    background_load: usize,
    /// The WAL's waits spin instead of yielding the CPU.
    #[arg(long)]
    spin: bool,
    /// Group commit's followers never sleep (they spin on, yielding, until
    /// the batch ends: the behaviour before adaptive waits, for an A/B).
    #[arg(long)]
    no_sleep: bool,
    /// The device(s) under the engine.
    #[arg(long, value_enum, default_value_t = DeviceArg::Both)]
    device: DeviceArg,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum DeviceArg {
    Qp,
    Direct,
    Both,
}

/// A device the engine runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Dev {
    /// The queue pair over the poller and io_uring (process mode).
    Qp,
    /// `DirectDevice`: the caller's own system calls.
    Direct,
}

impl Dev {
    fn name(self) -> &'static str {
        match self {
            Dev::Qp => "qp",
            Dev::Direct => "direct",
        }
    }
}

/// Prints `what` and exits: the benchmark cannot go on.
fn fail(what: impl Display) -> ! {
    eprintln!("wal-bench: {what}");
    std::process::exit(1);
}

/// The value of `r`, or exit saying what failed.
fn or_fail<T, E: Display>(r: Result<T, E>, what: impl Display) -> T {
    r.unwrap_or_else(|e| fail(format!("{what}: {e}")))
}

/// The load average (1, 5, 15 minutes), as `uptime` shows it.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg").map_or("unknown".into(), |s| {
        s.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
    })
}

struct Row {
    device: Dev,
    mode: CommitMode,
    committers: usize,
    commits: u64,
    secs: f64,
    mean_latency_us: f64,
    p99_latency_us: f64,
    log_bytes: u64,
    batches: u64,
}

impl Row {
    fn rate(&self) -> f64 {
        self.commits as f64 / self.secs
    }
}

/// The 99th percentile of sorted `v` (NaN if empty).
fn p99(v: &[f64]) -> f64 {
    v.get(v.len() * 99 / 100).copied().unwrap_or(f64::NAN)
}

/// 8 KiB, aligned as O_DIRECT needs.
#[repr(C, align(4096))]
struct Aligned([u8; 8192]);

/// The raw durable write: (writes, seconds, p99 latency in us).
fn raw_dsync_loop(dir: &Path, secs: f64) -> (u64, f64, f64) {
    let path = dir.join("raw-dsync.img");
    let _ = std::fs::remove_file(&path);
    let file = or_fail(
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .custom_flags(libc::O_DIRECT | libc::O_DSYNC)
            .open(&path),
        format!("cannot open {}", path.display()),
    );
    let area: u64 = 16 << 20;
    or_fail(
        file.set_len(area),
        format!("cannot size {}", path.display()),
    );
    let buf = Box::new(Aligned([0; 8192]));
    overwrite_once(&path, area);
    let start = Instant::now();
    let mut n = 0u64;
    let mut lat = Vec::new();
    while start.elapsed().as_secs_f64() < secs {
        let t = Instant::now();
        match file.write_at(&buf.0, (n * 8192) % area) {
            Ok(8192) => {}
            Ok(k) => fail(format!("a short write to {}: {k} bytes", path.display())),
            Err(e) => fail(format!("cannot write {}: {e}", path.display())),
        }
        lat.push(t.elapsed().as_secs_f64() * 1e6);
        n += 1;
    }
    let el = start.elapsed().as_secs_f64();
    let _ = std::fs::remove_file(&path);
    lat.sort_by(f64::total_cmp);
    (n, el, p99(&lat))
}

/// Writes every block of the (fallocated) file once, so that the runs
/// measure overwrites, like a recycled log and like the raw loop: the first
/// durable write into an unwritten extent also commits the file system's
/// journal (about 10x slower here).
fn overwrite_once(path: &Path, bytes: u64) {
    use std::io::Write;
    let what = || format!("first pass over {}", path.display());
    let mut f = or_fail(std::fs::OpenOptions::new().write(true).open(path), what());
    let zeros = vec![0u8; 1 << 20];
    let mut left = bytes;
    while left > 0 {
        let n = left.min(zeros.len() as u64) as usize;
        or_fail(f.write_all(&zeros[..n]), what());
        left -= n as u64;
    }
    or_fail(f.sync_all(), what());
}

/// A fresh O_DIRECT file of `bytes` at `path`, each block written once.
fn backing_file(path: &Path, bytes: u64) -> BackingFile {
    let _ = std::fs::remove_file(path);
    let file = or_fail(
        BackingFile::create(path, bytes),
        format!("cannot create {}", path.display()),
    );
    overwrite_once(path, bytes);
    file
}

fn open_device(file: &BackingFile, dma_bytes: usize) -> Device {
    or_fail(
        Device::open(
            file,
            dma_bytes,
            PollerConfig::default(),
            UringConfig::default(),
        ),
        "cannot start the queue-pair device",
    )
}

/// The device path without the WAL: 4 KiB FUA writes, one at a time,
/// yielding the CPU while one is in flight: (writes, seconds).
fn fua_write_loop<D: BlockDevice>(dev: &mut D, secs: f64) -> (u64, f64) {
    let blocks = dev.block_count();
    let buf = or_fail(dev.alloc(1), "no I/O buffer");
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed().as_secs_f64() < secs {
        or_fail(
            dev.submit(&Io::write(n % blocks, 1, buf.addr, true)),
            "a FUA write was refused",
        );
        loop {
            if let Some((_, r)) = dev.poll() {
                or_fail(r, "a FUA write failed");
                break;
            }
            std::thread::yield_now();
        }
        n += 1;
    }
    (n, start.elapsed().as_secs_f64())
}

fn device_fua_loop(dir: &Path, device: Dev, secs: f64) -> (u64, f64) {
    let path = dir.join("fua-loop.img");
    let file = backing_file(&path, 4096 * 4096);
    let result = match device {
        Dev::Qp => {
            let dev = open_device(&file, 1 << 20);
            let mut qp = or_fail(block_device(&dev, 64), "no queue pair");
            fua_write_loop(&mut qp, secs)
        }
        Dev::Direct => fua_write_loop(&mut DirectDevice::new(Arc::new(file)), secs),
    };
    let _ = std::fs::remove_file(&path);
    result
}

/// One configuration: a fresh engine on `device`, `committers` threads
/// committing for `secs` seconds.
fn engine_run(
    dir: &Path,
    device: Dev,
    mode: CommitMode,
    committers: usize,
    secs: f64,
    spin: bool,
    no_sleep: bool,
) -> Row {
    let path = dir.join("wal-bench.img");
    let file = backing_file(&path, LAYOUT.blocks() * 4096);
    let mut platform = env();
    if spin {
        platform.relax = std::hint::spin_loop;
    }
    if no_sleep {
        platform.sleep = None;
    }
    let config = Config {
        mode,
        log_buffer_blocks: 256,
        ..Config::new(platform)
    };
    let row = match device {
        Dev::Qp => {
            let dev = open_device(&file, 8 << 20);
            let qp = || or_fail(block_device(&dev, 64), "no queue pair");
            let engine = Engine::format(qp(), qp(), LAYOUT, config, |setup| {
                // Every page resident: the benchmark measures the log.
                HashPool::new(vec![qp()], setup.config(LAYOUT.data_pages as usize))
            });
            let engine = or_fail(engine, "cannot format the engine");
            commit_for(&engine, device, mode, committers, secs)
        }
        Dev::Direct => {
            // The log, the control block and the pool: a device each.
            let dev = DirectDevice::new(Arc::new(file));
            let engine = Engine::format(dev.another(), dev.another(), LAYOUT, config, |setup| {
                HashPool::new(
                    vec![dev.another()],
                    setup.config(LAYOUT.data_pages as usize),
                )
            });
            let engine = or_fail(engine, "cannot format the engine");
            commit_for(&engine, device, mode, committers, secs)
        }
    };
    let _ = std::fs::remove_file(&path);
    row
}

/// Commits on `engine` (on `device`, in `mode`) from `committers` threads
/// for `secs` seconds.
fn commit_for<D: BlockDevice + Send + 'static>(
    engine: &Engine<D, HashPool<D>>,
    device: Dev,
    mode: CommitMode,
    committers: usize,
    secs: f64,
) -> Row {
    let kv = KvTable::new(engine, PageId(0), LAYOUT.data_pages);
    // Warm up: log the page images of every page now, not during the run.
    for p in 0..LAYOUT.data_pages {
        let k = p * dbos_bufferpool::kv::SLOTS_PER_PAGE;
        if let Err(e) = kv.put(&[(k, 1)]) {
            fail(format!("warm-up commit failed: {e}"));
        }
    }
    let before = engine.wal().stats();
    let stop = AtomicBool::new(false);
    let commits = AtomicU64::new(0);
    let lat_all = Mutex::new(Vec::new());
    let start = Instant::now();
    std::thread::scope(|s| {
        for t in 0..committers {
            let (kv, stop, commits, lat_all) = (&kv, &stop, &commits, &lat_all);
            s.spawn(move || {
                let mut lat = Vec::new();
                let mut i = 0u64;
                // Each committer owns keys on its own page.
                let base = (t as u64 % LAYOUT.data_pages) * dbos_bufferpool::kv::SLOTS_PER_PAGE
                    + (t as u64 / LAYOUT.data_pages) * 2;
                while !stop.load(Ordering::Relaxed) {
                    let t0 = Instant::now();
                    match kv.put(&[(base, i + 1), (base + 1, i + 2)]) {
                        Ok(_) => {}
                        Err(Error::Log(WalError::LogFull { .. })) => {
                            if let Err(e) = engine.checkpoint() {
                                fail(format!("checkpoint failed: {e}"));
                            }
                            continue;
                        }
                        Err(e) => fail(format!("commit failed: {e}")),
                    }
                    lat.push(t0.elapsed().as_secs_f64() * 1e6);
                    i += 1;
                }
                commits.fetch_add(i, Ordering::Relaxed);
                lat_all.lock().expect("a committer panicked").extend(lat);
            });
        }
        std::thread::sleep(Duration::from_secs_f64(secs));
        stop.store(true, Ordering::Relaxed);
    });
    let el = start.elapsed().as_secs_f64();
    let after = engine.wal().stats();
    let mut lat = lat_all.into_inner().expect("a committer panicked");
    lat.sort_by(f64::total_cmp);
    Row {
        device,
        mode,
        committers,
        commits: commits.load(Ordering::Relaxed),
        secs: el,
        mean_latency_us: lat.iter().sum::<f64>() / lat.len() as f64,
        p99_latency_us: p99(&lat),
        log_bytes: (after.blocks_written - before.blocks_written) * 4096,
        batches: after.batches - before.batches,
    }
}

/// "median M, range A-B" of ratios.
fn summary(v: &[f64]) -> String {
    let (lo, hi) = v
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &x| {
            (lo.min(x), hi.max(x))
        });
    format!("median {:.2}x, range {lo:.2}-{hi:.2}x", median(v))
}

fn main() {
    let args = Args::parse();
    if !(args.seconds.is_finite() && args.seconds > 0.0) {
        eprintln!("--seconds takes a positive number, not {}", args.seconds);
        std::process::exit(2);
    }
    dbos_benches::require_disk_dir(&args.dir);
    let (dir, secs, rounds, spin, no_sleep) = (
        &args.dir,
        args.seconds,
        args.rounds,
        args.spin,
        args.no_sleep,
    );
    let devices = match args.device {
        DeviceArg::Qp => vec![Dev::Qp],
        DeviceArg::Direct => vec![Dev::Direct],
        DeviceArg::Both => vec![Dev::Qp, Dev::Direct],
    };
    // Runs until the end of main: beside every measurement.
    let load = BackgroundLoad::start(args.background_load);
    println!(
        "disk: {} ({secs} s per configuration, {rounds} round(s)); device(s): {}; waits {}",
        dir.display(),
        devices
            .iter()
            .map(|d| d.name())
            .collect::<Vec<_>>()
            .join(", "),
        if spin { "spin" } else { "yield the CPU" },
    );
    println!(
        "group commit's followers: {}",
        if no_sleep {
            "never sleep (--no-sleep)"
        } else {
            "sleep once they have waited as long as a batch takes (at most 100 us)"
        }
    );
    println!(
        "background load: {} busy thread(s); load average at the start: {}; {} CPUs",
        load.threads(),
        load_average(),
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    let (n, el, p99) = raw_dsync_loop(dir, secs);
    let raw_lat = el / n as f64 * 1e6;
    println!(
        "raw 8 KiB O_DIRECT|O_DSYNC pwrite loop: {n} writes, {raw_lat:.1} us mean, \
         {p99:.1} us p99, {:.0}/s",
        n as f64 / el
    );
    for &d in &devices {
        let (n, el) = device_fua_loop(dir, d, secs);
        println!(
            "{} 4 KiB FUA write loop (no WAL): {n} writes, {:.1} us mean, {:.0}/s",
            d.name(),
            el / n as f64 * 1e6,
            n as f64 / el
        );
    }
    println!();
    println!(
        "{:<7} {:<11} {:>10} {:>9} {:>10} {:>10} {:>9} {:>10} {:>9} {:>12} {:>9}",
        "device",
        "mode",
        "committers",
        "commits",
        "commits/s",
        "mean us",
        "p99 us",
        "vs raw",
        "x 1-thr",
        "commits/batch",
        "WA"
    );
    for mode in [CommitMode::Fua, CommitMode::WriteFlush] {
        for &d in &devices {
            let mut single = 0.0;
            for committers in [1, 4, 16, 64] {
                let r = engine_run(dir, d, mode, committers, secs, spin, no_sleep);
                if committers == 1 {
                    single = r.rate();
                }
                println!(
                    "{:<7} {:<11} {:>10} {:>9} {:>10.0} {:>10.1} {:>9.1} {:>9.2}x {:>8.2}x \
                     {:>12.1} {:>9.1}",
                    r.device.name(),
                    format!("{:?}", r.mode),
                    r.committers,
                    r.commits,
                    r.rate(),
                    r.mean_latency_us,
                    r.p99_latency_us,
                    r.mean_latency_us / raw_lat,
                    r.rate() / single,
                    r.commits as f64 / r.batches as f64,
                    r.log_bytes as f64 / (r.commits * TXN_BYTES) as f64,
                );
            }
        }
    }
    if rounds > 0 {
        println!();
        // Per device: FUA 1-committer latency / raw, 16 vs 1 committers.
        let mut latency = vec![Vec::new(); devices.len()];
        let mut scaling = vec![Vec::new(); devices.len()];
        // With both devices: direct/qp 1-committer latency, 16-committer rate.
        let (mut direct_latency, mut direct_rate) = (Vec::new(), Vec::new());
        for round in 1..=rounds {
            let (n, el, _) = raw_dsync_loop(dir, secs);
            let raw_us = el / n as f64 * 1e6;
            let run = |d, c| engine_run(dir, d, CommitMode::Fua, c, secs, spin, no_sleep);
            let ones: Vec<Row> = devices.iter().map(|&d| run(d, 1)).collect();
            let sixteens: Vec<Row> = devices.iter().map(|&d| run(d, 16)).collect();
            println!("round {round}: raw write {raw_us:.1} us");
            for (i, (one, sixteen)) in ones.iter().zip(&sixteens).enumerate() {
                latency[i].push(one.mean_latency_us / raw_us);
                scaling[i].push(sixteen.rate() / one.rate());
                println!(
                    "  {:<7} Fua 1 committer {:.1} us = {:.2}x raw, {:.0}/s; \
                     16 committers {:.0}/s = {:.2}x",
                    one.device.name(),
                    one.mean_latency_us,
                    one.mean_latency_us / raw_us,
                    one.rate(),
                    sixteen.rate(),
                    sixteen.rate() / one.rate()
                );
            }
            if let ([qp1, direct1], [qp16, direct16]) = (&ones[..], &sixteens[..]) {
                direct_latency.push(direct1.mean_latency_us / qp1.mean_latency_us);
                direct_rate.push(direct16.rate() / qp16.rate());
                println!(
                    "  direct/qp: 1-committer latency {:.2}x, 16-committer commits/s {:.2}x",
                    direct_latency[round - 1],
                    direct_rate[round - 1]
                );
            }
        }
        println!("over {rounds} round(s):");
        for (i, d) in devices.iter().enumerate() {
            println!(
                "  {:<7} FUA commit latency / raw write: {} (target <= 1.2x); \
                 16 vs 1 committers: {} (target >= 6x)",
                d.name(),
                summary(&latency[i]),
                summary(&scaling[i])
            );
        }
        if !direct_latency.is_empty() {
            println!(
                "  direct/qp: 1-committer latency {}; 16-committer commits/s {}",
                summary(&direct_latency),
                summary(&direct_rate)
            );
        }
    }
    println!();
    println!(
        "vs raw: mean commit latency / mean raw write latency; x 1-thr: commits/s over the \
         same device's 1-committer rate; WA: log bytes written per committed byte \
         ({TXN_BYTES} bytes of values per transaction; its log records take 91 bytes)"
    );
    println!("load average at the end: {}", load_average());
}
