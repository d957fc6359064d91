//! Side-by-side durability benchmark on one disk:
//!
//! - the physical limit: a loop of 8 KiB `O_DIRECT|O_DSYNC` `pwrite`s;
//! - single-committer commit latency and commits per second at 1, 4, 16
//!   and 64 concurrent committers, through the engine (key-value
//!   transactions of 2 keys), the WAL's group commit, the NVMe queue pair,
//!   the poller and io_uring on an `O_DIRECT` file, with FUA log writes and
//!   with log writes plus one flush per batch;
//! - write amplification: bytes written to the log per committed byte.
//!
//! Usage: `cargo run --release -p dbos-bufferpool --example wal_bench --
//! [DIR] [SECONDS] [ROUNDS]` (DIR defaults to the system temp dir, which
//! must support O_DIRECT; SECONDS per configuration, default 2). After the
//! table it runs ROUNDS (default 5) rounds of the raw loop, 1 and then 16
//! FUA committers, and prints each round's ratios and their medians: the
//! disk's speed drifts between runs seconds apart, and both targets are
//! ratios. With `WAL_BENCH_SPIN=1` waits spin instead of yielding the CPU.

use dbos_bufferpool::host::{block_device, env};
use dbos_bufferpool::pool::hash::HashPool;
use dbos_bufferpool::{CommitMode, Config, Engine, Error, KvTable, Layout, PageId, WalError};
use dbos_nvme::host::{BackingFile, Device, PollerConfig, UringConfig};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::io::AsRawFd;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

const LAYOUT: Layout = Layout {
    log_blocks: 8192,
    data_pages: 64,
};
/// Bytes a transaction commits (2 keys of 8-byte values).
const TXN_BYTES: u64 = 16;

struct Row {
    label: String,
    committers: usize,
    commits: u64,
    secs: f64,
    mean_latency_us: f64,
    p99_latency_us: f64,
    log_bytes: u64,
    batches: u64,
}

fn raw_dsync_loop(dir: &Path, secs: f64) -> (u64, f64, f64) {
    let path = dir.join("raw-dsync.img");
    let _ = std::fs::remove_file(&path);
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .custom_flags(libc::O_DIRECT | libc::O_DSYNC)
        .open(&path)
        .expect("open raw file");
    let area: u64 = 16 << 20;
    file.set_len(area).unwrap();
    // SAFETY: an anonymous mapping is page aligned, as O_DIRECT needs.
    let buf = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            8192,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    assert_ne!(buf, libc::MAP_FAILED);
    overwrite_once(&path, area);
    let start = Instant::now();
    let mut n = 0u64;
    let mut lat = Vec::new();
    while start.elapsed().as_secs_f64() < secs {
        let t = Instant::now();
        // SAFETY: buf is 8 KiB of mapped memory.
        let rc = unsafe { libc::pwrite(file.as_raw_fd(), buf, 8192, ((n * 8192) % area) as i64) };
        assert_eq!(rc, 8192);
        lat.push(t.elapsed().as_secs_f64() * 1e6);
        n += 1;
    }
    let el = start.elapsed().as_secs_f64();
    let _ = std::fs::remove_file(&path);
    lat.sort_by(|a, b| a.partial_cmp(b).unwrap());
    (n, el, lat[lat.len() * 99 / 100])
}

/// Writes every block of the (fallocated) file once, so that the runs
/// measure overwrites, like a recycled log and like the raw loop: the first
/// durable write into an unwritten extent also commits the file system's
/// journal (about 10x slower here).
fn overwrite_once(path: &Path, bytes: u64) {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .expect("open for the first pass");
    let zeros = vec![0u8; 1 << 20];
    let mut left = bytes;
    while left > 0 {
        let n = left.min(zeros.len() as u64) as usize;
        f.write_all(&zeros[..n]).expect("first pass");
        left -= n as u64;
    }
    f.sync_all().expect("first pass sync");
}

/// The device path without the WAL: 4 KiB FUA writes through a
/// process-mode queue pair, the poller and io_uring, one at a time.
fn queue_pair_fua_loop(dir: &Path, secs: f64) -> (u64, f64) {
    use dbos_nvme::{Command, DataPtr, Lba};
    let path = dir.join("qp-bench.img");
    let _ = std::fs::remove_file(&path);
    let file = BackingFile::create(&path, 4096 * 4096).expect("backing file");
    let dev = Device::open(
        &file,
        1 << 20,
        PollerConfig::default(),
        UringConfig::default(),
    )
    .expect("device");
    let mut qp = dev.queue_pair(64).unwrap();
    let buf = dev.alloc(4096).unwrap();
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed().as_secs_f64() < secs {
        let cmd = Command::write_fua(Lba(n % 4096), 1, DataPtr::Contiguous(buf.addr));
        qp.submit(&cmd).unwrap();
        loop {
            if let Some(c) = qp.poll() {
                c.result().unwrap();
                break;
            }
            std::thread::yield_now();
        }
        n += 1;
    }
    let el = start.elapsed().as_secs_f64();
    drop(qp);
    drop(dev);
    let _ = std::fs::remove_file(&path);
    (n, el)
}

fn engine_run(dir: &Path, mode: CommitMode, committers: usize, secs: f64) -> Row {
    let path = dir.join("wal-bench.img");
    let _ = std::fs::remove_file(&path);
    let file = BackingFile::create(&path, LAYOUT.blocks() * 4096).expect("backing file");
    overwrite_once(&path, LAYOUT.blocks() * 4096);
    let dev = Device::open(
        &file,
        8 << 20,
        PollerConfig::default(),
        UringConfig::default(),
    )
    .expect("device");
    let mut platform = env();
    if std::env::var("WAL_BENCH_SPIN").is_ok() {
        platform.relax = std::hint::spin_loop;
    }
    let config = Config {
        mode,
        log_buffer_blocks: 256,
        ..Config::new(platform)
    };
    let engine = Engine::format(
        block_device(&dev, 64).unwrap(),
        block_device(&dev, 64).unwrap(),
        LAYOUT,
        config,
        |setup| {
            // Every page resident: the benchmark measures the log.
            HashPool::new(
                vec![block_device(&dev, 64).unwrap()],
                setup.config(LAYOUT.data_pages as usize),
            )
        },
    )
    .expect("format");
    let kv = KvTable::new(&engine, PageId(0), LAYOUT.data_pages);
    // Warm up: log the page images of every page now, not during the run.
    for p in 0..LAYOUT.data_pages {
        let k = p * dbos_bufferpool::kv::SLOTS_PER_PAGE;
        kv.put(&[(k, 1)]).unwrap();
    }
    let before = engine.wal().stats();
    let stop = AtomicBool::new(false);
    let commits = AtomicU64::new(0);
    let lat_all = std::sync::Mutex::new(Vec::new());
    let start = Instant::now();
    std::thread::scope(|s| {
        for t in 0..committers {
            let (kv, stop, commits, lat_all, engine) = (&kv, &stop, &commits, &lat_all, &engine);
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
                            engine.checkpoint().unwrap();
                            continue;
                        }
                        Err(e) => panic!("commit failed: {e}"),
                    }
                    lat.push(t0.elapsed().as_secs_f64() * 1e6);
                    i += 1;
                }
                commits.fetch_add(i, Ordering::Relaxed);
                lat_all.lock().unwrap().extend(lat);
            });
        }
        std::thread::sleep(Duration::from_secs_f64(secs));
        stop.store(true, Ordering::Relaxed);
    });
    let el = start.elapsed().as_secs_f64();
    let after = engine.wal().stats();
    let mut lat = lat_all.into_inner().unwrap();
    lat.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let mean = lat.iter().sum::<f64>() / lat.len() as f64;
    let row = Row {
        label: format!("{mode:?}"),
        committers,
        commits: commits.load(Ordering::Relaxed),
        secs: el,
        mean_latency_us: mean,
        p99_latency_us: lat[lat.len() * 99 / 100],
        log_bytes: (after.blocks_written - before.blocks_written) * 4096,
        batches: after.batches - before.batches,
    };
    drop(engine);
    drop(dev);
    let _ = std::fs::remove_file(&path);
    row
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let dir = args
        .get(1)
        .map(std::path::PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let secs: f64 = args.get(2).map(|s| s.parse().unwrap()).unwrap_or(2.0);
    let rounds: usize = args.get(3).map(|s| s.parse().unwrap()).unwrap_or(5);
    assert!(
        BackingFile::direct_io_supported(&dir),
        "{} does not support O_DIRECT",
        dir.display()
    );
    println!("disk: {} ({secs} s per configuration)", dir.display());
    let (n, el, p99) = raw_dsync_loop(&dir, secs);
    let raw_lat = el / n as f64 * 1e6;
    println!(
        "raw 8 KiB O_DIRECT|O_DSYNC pwrite loop: {n} writes, {:.1} us mean, {:.1} us p99, {:.0}/s",
        raw_lat,
        p99,
        n as f64 / el
    );
    let (n, el) = queue_pair_fua_loop(&dir, secs);
    println!(
        "queue pair 4 KiB FUA write loop (no WAL): {n} writes, {:.1} us mean, {:.0}/s",
        el / n as f64 * 1e6,
        n as f64 / el
    );
    println!();
    println!(
        "{:<11} {:>10} {:>9} {:>10} {:>10} {:>9} {:>10} {:>9} {:>12} {:>9}",
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
        let mut single = 0.0;
        for committers in [1, 4, 16, 64] {
            let r = engine_run(&dir, mode, committers, secs);
            let rate = r.commits as f64 / r.secs;
            if committers == 1 {
                single = rate;
            }
            println!(
                "{:<11} {:>10} {:>9} {:>10.0} {:>10.1} {:>9.1} {:>9.2}x {:>8.2}x {:>12.1} {:>9.1}",
                r.label,
                r.committers,
                r.commits,
                rate,
                r.mean_latency_us,
                r.p99_latency_us,
                r.mean_latency_us / raw_lat,
                rate / single,
                r.commits as f64 / r.batches as f64,
                r.log_bytes as f64 / (r.commits * TXN_BYTES) as f64,
            );
        }
    }
    if rounds > 0 {
        println!();
        let (mut latency, mut scaling) = (Vec::new(), Vec::new());
        for round in 1..=rounds {
            let (n, el, _) = raw_dsync_loop(&dir, secs);
            let raw_us = el / n as f64 * 1e6;
            let one = engine_run(&dir, CommitMode::Fua, 1, secs);
            let sixteen = engine_run(&dir, CommitMode::Fua, 16, secs);
            let rate = |r: &Row| r.commits as f64 / r.secs;
            latency.push(one.mean_latency_us / raw_us);
            scaling.push(rate(&sixteen) / rate(&one));
            println!(
                "round {round}: raw write {raw_us:.1} us; Fua 1 committer {:.1} us = {:.2}x raw, \
                 {:.0}/s; 16 committers {:.0}/s = {:.2}x",
                one.mean_latency_us,
                one.mean_latency_us / raw_us,
                rate(&one),
                rate(&sixteen),
                rate(&sixteen) / rate(&one)
            );
        }
        let summary = |mut v: Vec<f64>| {
            v.sort_by(f64::total_cmp);
            format!(
                "median {:.2}x, range {:.2}-{:.2}x",
                v[(v.len() - 1) / 2],
                v[0],
                v[v.len() - 1]
            )
        };
        println!(
            "over {rounds} rounds: FUA commit latency / raw write: {} (target <= 1.2x); \
             16 vs 1 committers: {} (target >= 6x)",
            summary(latency),
            summary(scaling)
        );
    }
    println!();
    println!(
        "vs raw: mean commit latency / mean raw write latency; x 1-thr: commits/s over the \
         1-committer rate; WA: log bytes written per committed byte ({TXN_BYTES} bytes of \
         values per transaction; its log records take 91 bytes)"
    );
}
