//! The WAL's durability workloads behind `wal-bench` and `dbos bench
//! --only wal`: the raw durable write, the device path without the WAL,
//! and commits through the engine and its group commit from N committers,
//! on the queue pair (process mode) or the direct device.
//!
//! A failure (a file that cannot be made, a refused or failed write)
//! panics with what failed: these are benchmarks, not a service.

use dbos_bufferpool::device::{BlockDevice, Io};
use dbos_bufferpool::direct::DirectDevice;
use dbos_bufferpool::host::{block_device, env, inline_block_device};
use dbos_bufferpool::pool::hash::HashPool;
use dbos_bufferpool::{CommitMode, Config, Engine, Error, KvTable, Layout, PageId, WalError};
use dbos_nvme::host::{BackingFile, Device, InlineDevice, PollerConfig, UringConfig};
use std::fmt::Display;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The engine's layout: a log of 8192 blocks, 64 data pages.
pub const LAYOUT: Layout = Layout {
    log_blocks: 8192,
    data_pages: 64,
};
/// Bytes a transaction commits (2 keys of 8-byte values).
pub const TXN_BYTES: u64 = 16;

/// A device the engine runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dev {
    /// The queue pair over the poller and io_uring (process mode).
    Qp,
    /// `DirectDevice`: the caller's own system calls.
    Direct,
    /// The queue pair with its host run by the thread using it (no poller
    /// thread: `dbos_nvme::host::inline`).
    Inline,
}

impl Dev {
    /// Its short name.
    pub fn name(self) -> &'static str {
        match self {
            Dev::Qp => "qp",
            Dev::Direct => "direct",
            Dev::Inline => "qp-inline",
        }
    }
}

/// Panics saying what failed: the benchmark cannot go on.
fn fail(what: impl Display) -> ! {
    panic!("wal-bench: {what}");
}

/// The value of `r`, or panic saying what failed.
fn or_fail<T, E: Display>(r: Result<T, E>, what: impl Display) -> T {
    r.unwrap_or_else(|e| fail(format!("{what}: {e}")))
}

/// One engine configuration's result.
pub struct Row {
    pub device: Dev,
    pub mode: CommitMode,
    pub committers: usize,
    pub commits: u64,
    pub secs: f64,
    pub mean_latency_us: f64,
    pub p99_latency_us: f64,
    /// Bytes written to the log during the run.
    pub log_bytes: u64,
    /// Group-commit batches during the run.
    pub batches: u64,
}

impl Row {
    /// Commits per second.
    pub fn rate(&self) -> f64 {
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
pub fn raw_dsync_loop(dir: &Path, secs: f64) -> (u64, f64, f64) {
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

fn open_inline(file: &BackingFile, dma_bytes: usize) -> InlineDevice {
    or_fail(
        InlineDevice::open(
            file,
            dma_bytes,
            PollerConfig::default(),
            UringConfig::default(),
        ),
        "cannot open the inline queue-pair device",
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

/// The device path without the WAL on a fresh 16 MiB file: (writes,
/// seconds).
pub fn device_fua_loop(dir: &Path, device: Dev, secs: f64) -> (u64, f64) {
    let path = dir.join("fua-loop.img");
    let file = backing_file(&path, 4096 * 4096);
    let result = match device {
        Dev::Qp => {
            let dev = open_device(&file, 1 << 20);
            let mut qp = or_fail(block_device(&dev, 64), "no queue pair");
            fua_write_loop(&mut qp, secs)
        }
        Dev::Direct => fua_write_loop(&mut DirectDevice::new(Arc::new(file)), secs),
        Dev::Inline => {
            let dev = open_inline(&file, 1 << 20);
            let mut qp = or_fail(inline_block_device(&dev, 64), "no queue pair");
            fua_write_loop(&mut qp, secs)
        }
    };
    let _ = std::fs::remove_file(&path);
    result
}

/// One configuration: a fresh engine on `device`, `committers` threads
/// committing for `secs` seconds.
pub fn engine_run(
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
        Dev::Inline => {
            let dev = open_inline(&file, 8 << 20);
            let qp = || or_fail(inline_block_device(&dev, 64), "no queue pair");
            let engine = Engine::format(qp(), qp(), LAYOUT, config, |setup| {
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
