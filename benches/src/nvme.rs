//! Storage I/O side by side: one pattern through `pread`/`pwrite`, through
//! io_uring used directly (registered file and buffers), through the dbos
//! queue pair and poller in process mode, and through fio, on one file.
//!
//! Each runner keeps `depth` requests outstanding until its [`Budget`] is
//! used up and reports a [`Summary`] (IOPS and per-request latency from
//! submission to completion as the submitter sees it).

use crate::child::dies_with_parent;
use dbos_bufferpool::device::QueueAccess;
use dbos_nvme::host::{
    BackingFile, Device, DmaBuf, InlineDevice, PollerConfig, ProcessMemory, UringConfig,
};
use dbos_nvme::{Command, CommandId, Completion, DataPtr, Lba, BLOCK_SIZE};
use io_uring::{opcode, types, IoUring};
use std::io;
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::Path;
use std::process::Command as Process;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The access pattern.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pattern {
    /// Reads at uniformly random block-aligned offsets.
    RandRead,
    /// Writes at consecutive offsets, wrapping at the end of the file.
    SeqWrite,
}

/// One pattern at one block size and queue depth.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Workload {
    pub pattern: Pattern,
    /// Bytes per request (a multiple of 4 KiB).
    pub block: usize,
    /// Requests kept outstanding.
    pub depth: usize,
}

impl Workload {
    /// A short name such as `randread 4k qd32`.
    pub fn name(&self) -> String {
        let p = match self.pattern {
            Pattern::RandRead => "randread",
            Pattern::SeqWrite => "seqwrite",
        };
        format!("{p} {}k qd{}", self.block / 1024, self.depth)
    }

    /// The workloads of the comparison report.
    pub fn all() -> Vec<Workload> {
        let mut v = Vec::new();
        for depth in [1, 32] {
            v.push(Workload {
                pattern: Pattern::RandRead,
                block: 4096,
                depth,
            });
            v.push(Workload {
                pattern: Pattern::SeqWrite,
                block: 4096,
                depth,
            });
            v.push(Workload {
                pattern: Pattern::SeqWrite,
                block: 65536,
                depth,
            });
        }
        v
    }
}

/// When a run stops: after `time` or `ops` requests, whichever is first.
#[derive(Clone, Copy, Debug)]
pub struct Budget {
    pub time: Duration,
    pub ops: u64,
}

impl Budget {
    /// Run for a time.
    pub fn time(time: Duration) -> Budget {
        Budget {
            time,
            ops: u64::MAX,
        }
    }
    /// Run for a number of requests.
    pub fn ops(ops: u64) -> Budget {
        Budget {
            time: Duration::from_secs(3600),
            ops,
        }
    }
}

/// What a run measured.
#[derive(Clone, Debug, Default)]
pub struct Summary {
    pub ops: u64,
    /// Time from the first submission to the last completion.
    pub elapsed: Duration,
    pub iops: f64,
    pub mean_us: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    /// The latency distribution: (percentile, microseconds) pairs in
    /// increasing order, at [`CDF_PERCENTILES`] (fio: at the percentiles
    /// its report gives).
    pub cdf: Vec<(f64, f64)>,
    /// Real doorbells the driver rang (queue pair only).
    pub doorbells: Option<u64>,
    /// The poller thread's work (queue pair only).
    pub poller: Option<PollerUse>,
}

/// What the poller thread spent on a run: CPU time on its own thread CPU
/// clock, and the operations it issued with fixed and with plain buffers.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct PollerUse {
    pub cpu: Duration,
    pub fixed_ios: u64,
    pub plain_ios: u64,
}

impl PollerUse {
    /// Operations issued (fixed and plain).
    pub fn ios(&self) -> u64 {
        self.fixed_ios + self.plain_ios
    }

    /// Poller CPU time per operation, microseconds.
    pub fn cpu_us_per_io(&self) -> f64 {
        self.cpu.as_secs_f64() * 1e6 / self.ios().max(1) as f64
    }

    /// Operations per second of poller CPU time (per poller core-second).
    pub fn ios_per_core_second(&self) -> f64 {
        self.ios() as f64 / self.cpu.as_secs_f64().max(1e-9)
    }
}

/// The percentiles at which a run's latency distribution is kept
/// ([`Summary::cdf`]); 100 is the maximum.
pub const CDF_PERCENTILES: [f64; 17] = [
    0.0, 1.0, 5.0, 10.0, 20.0, 30.0, 40.0, 50.0, 60.0, 70.0, 80.0, 90.0, 95.0, 99.0, 99.5, 99.9,
    100.0,
];

impl Summary {
    fn from_latencies(mut lat_ns: Vec<u64>, elapsed: Duration, doorbells: Option<u64>) -> Summary {
        lat_ns.sort_unstable();
        let n = lat_ns.len();
        let pct = |p: usize| {
            if n == 0 {
                0.0
            } else {
                lat_ns[(n * p / 100).min(n - 1)] as f64 / 1000.0
            }
        };
        Summary {
            ops: n as u64,
            elapsed,
            iops: n as f64 / elapsed.as_secs_f64().max(1e-9),
            mean_us: if n == 0 {
                0.0
            } else {
                lat_ns.iter().sum::<u64>() as f64 / n as f64 / 1000.0
            },
            p50_us: pct(50),
            p99_us: pct(99),
            cdf: if n == 0 {
                Vec::new()
            } else {
                CDF_PERCENTILES
                    .iter()
                    .map(|&p| {
                        let i = ((n as f64 * p / 100.0) as usize).min(n - 1);
                        (p, lat_ns[i] as f64 / 1000.0)
                    })
                    .collect()
            },
            doorbells,
            poller: None,
        }
    }
}

/// Offsets of successive requests.
struct Offsets {
    pattern: Pattern,
    block: u64,
    slots: u64,
    state: u64,
}

impl Offsets {
    fn new(w: Workload, file_bytes: u64, seed: u64) -> Offsets {
        let block = w.block as u64;
        Offsets {
            pattern: w.pattern,
            block,
            slots: file_bytes / block,
            state: seed | 1,
        }
    }

    /// The offset of the next request; `seq` numbers sequential requests
    /// across threads.
    fn next(&mut self, seq: u64) -> u64 {
        match self.pattern {
            Pattern::RandRead => {
                self.state ^= self.state << 13;
                self.state ^= self.state >> 7;
                self.state ^= self.state << 17;
                (self.state % self.slots) * self.block
            }
            Pattern::SeqWrite => (seq % self.slots) * self.block,
        }
    }
}

/// Opens the benchmark file, creating and filling it (so that reads hit
/// real blocks) if it does not exist with this size.
pub fn prepare_file(path: &Path, bytes: u64) -> io::Result<BackingFile> {
    if let Ok(f) = BackingFile::open(path) {
        if f.blocks() * BLOCK_SIZE == bytes {
            return Ok(f);
        }
        std::fs::remove_file(path)?;
    }
    let tmp = path.with_extension("filling");
    let _ = std::fs::remove_file(&tmp);
    let file = BackingFile::create(&tmp, bytes).map_err(io::Error::other)?;
    let chunk = 1 << 20;
    let mem = ProcessMemory::new(chunk)?;
    let buf = mem.alloc(chunk).expect("fresh region");
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let mut data = vec![0u8; chunk];
    let mut off = 0;
    while off < bytes {
        for b in data.chunks_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            b.copy_from_slice(&x.to_le_bytes()[..b.len()]);
        }
        buf.write(0, &data);
        let len = chunk.min((bytes - off) as usize);
        // SAFETY: `buf` holds `chunk` bytes of mapped memory.
        let slice = unsafe { std::slice::from_raw_parts(buf.ptr, len) };
        file.file().write_all_at(slice, off)?;
        off += len as u64;
    }
    file.file().sync_all()?;
    drop(file);
    std::fs::rename(&tmp, path)?;
    BackingFile::open(path).map_err(io::Error::other)
}

fn check(res: isize, block: usize) {
    assert_eq!(
        res,
        block as isize,
        "I/O failed: {}",
        io::Error::last_os_error()
    );
}

/// `depth` threads, each issuing one `pread`/`pwrite` at a time.
pub fn run_pread(file: &BackingFile, w: Workload, budget: Budget) -> Summary {
    let bytes = file.blocks() * BLOCK_SIZE;
    let seq = Arc::new(AtomicU64::new(0));
    let issued = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let deadline = start + budget.time;
    let results: Vec<(Vec<u64>, Instant)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..w.depth)
            .map(|t| {
                let (seq, issued) = (seq.clone(), issued.clone());
                s.spawn(move || {
                    let mem = ProcessMemory::new(w.block).expect("buffer");
                    let buf = mem.alloc(w.block).expect("buffer");
                    buf.fill(0x5a);
                    let fd = file.file().as_raw_fd();
                    let mut offs = Offsets::new(w, bytes, 0x1234_5678 + t as u64 * 7919);
                    let mut lat = Vec::new();
                    let mut last = Instant::now();
                    while issued.fetch_add(1, Ordering::Relaxed) < budget.ops {
                        let off = offs.next(seq.fetch_add(1, Ordering::Relaxed)) as libc::off_t;
                        let t0 = Instant::now();
                        if t0 >= deadline {
                            break;
                        }
                        // SAFETY: `buf` is w.block bytes of mapped memory.
                        let res = unsafe {
                            match w.pattern {
                                Pattern::RandRead => libc::pread(fd, buf.ptr.cast(), w.block, off),
                                Pattern::SeqWrite => libc::pwrite(fd, buf.ptr.cast(), w.block, off),
                            }
                        };
                        check(res, w.block);
                        last = Instant::now();
                        lat.push((last - t0).as_nanos() as u64);
                    }
                    (lat, last)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("pread thread"))
            .collect()
    });
    let end = results.iter().map(|r| r.1).max().unwrap_or(start);
    let lat = results.into_iter().flat_map(|r| r.0).collect();
    Summary::from_latencies(lat, end - start, None)
}

/// One thread driving io_uring directly: registered file and buffers,
/// `depth` requests outstanding, `submit_and_wait(1)` between batches.
pub fn run_uring(file: &BackingFile, w: Workload, budget: Budget) -> Summary {
    run_uring_submitting(file, w, budget, 0)
}

/// [`run_uring`], but with `submit_every` > 0 each refill is handed to the
/// kernel `submit_every` entries per `io_uring_enter` (an enter after every
/// `submit_every` entries pushed, the rest with the wait): the experiment
/// behind the poller's pairwise submission (`nvme-compare
/// --uring-submit-every N`, figures in `nvme/docs/benchmarks.md`).
pub fn run_uring_submitting(
    file: &BackingFile,
    w: Workload,
    budget: Budget,
    submit_every: usize,
) -> Summary {
    let bytes = file.blocks() * BLOCK_SIZE;
    let mut ring = IoUring::new((w.depth as u32 * 2).next_power_of_two().max(8)).expect("io_uring");
    ring.submitter()
        .register_files(&[file.file().as_raw_fd()])
        .expect("register file");
    let mem = ProcessMemory::new(w.depth * w.block).expect("buffers");
    let bufs = mem.alloc(w.depth * w.block).expect("buffers");
    bufs.fill(0x5a);
    let iov = [libc::iovec {
        iov_base: bufs.ptr.cast(),
        iov_len: bufs.len,
    }];
    // SAFETY: `mem` outlives the ring (declared before it is dropped below).
    unsafe { ring.submitter().register_buffers(&iov) }.expect("register buffers");
    let mut offs = Offsets::new(w, bytes, 0x1234_5678);
    let mut started = vec![Instant::now(); w.depth];
    let mut free: Vec<usize> = (0..w.depth).collect();
    let mut lat = Vec::new();
    let (mut issued, mut seq) = (0u64, 0u64);
    let start = Instant::now();
    let deadline = start + budget.time;
    let mut end = start;
    loop {
        let now = Instant::now();
        let open = issued < budget.ops && now < deadline;
        while open && issued < budget.ops && !free.is_empty() {
            let slot = free.pop().expect("checked");
            let off = offs.next(seq);
            seq += 1;
            let ptr = bufs.ptr.wrapping_add(slot * w.block);
            let entry = match w.pattern {
                Pattern::RandRead => {
                    opcode::ReadFixed::new(types::Fixed(0), ptr, w.block as u32, 0)
                        .offset(off)
                        .build()
                }
                Pattern::SeqWrite => {
                    opcode::WriteFixed::new(types::Fixed(0), ptr, w.block as u32, 0)
                        .offset(off)
                        .build()
                }
            };
            started[slot] = Instant::now();
            // SAFETY: the buffer is registered and stays alive until reaped.
            unsafe { ring.submission().push(&entry.user_data(slot as u64)) }
                .expect("ring has room");
            issued += 1;
            if submit_every > 0 && ring.submission().len() >= submit_every {
                ring.submit().expect("io_uring_enter");
            }
        }
        if free.len() == w.depth {
            break;
        }
        ring.submit_and_wait(1).expect("io_uring_enter");
        for cqe in ring.completion() {
            end = Instant::now();
            let slot = cqe.user_data() as usize;
            check(cqe.result() as isize, w.block);
            lat.push((end - started[slot]).as_nanos() as u64);
            free.push(slot);
        }
    }
    drop(ring);
    drop(mem);
    Summary::from_latencies(lat, end - start, None)
}

/// Keeps `w.depth` commands outstanding on `qp` (refilling with one batch
/// after each reap) from buffers in `bufs` until `budget` is used up;
/// returns the latencies, the time from the first submission to the last
/// completion, and the real doorbells rung.
fn drive<Q: QueueAccess>(
    qp: &mut Q,
    bufs: &DmaBuf,
    w: Workload,
    budget: Budget,
    bytes: u64,
) -> (Vec<u64>, Duration, u64) {
    let depth = qp.queue().depth();
    let blocks = (w.block as u64 / BLOCK_SIZE) as u32;
    let mut offs = Offsets::new(w, bytes, 0x1234_5678);
    let mut started = vec![Instant::now(); depth as usize];
    let mut lat = Vec::new();
    let mut done = vec![Completion::default(); depth as usize];
    let (mut issued, mut seq) = (0u64, 0u64);
    let doorbells0 = qp.queue().stats().doorbells;
    let start = Instant::now();
    let deadline = start + budget.time;
    let mut end = start;
    // Buffer slots are ours; each submitted command id remembers its slot.
    let mut free_slots: Vec<usize> = (0..w.depth).collect();
    let mut slot_of = vec![0usize; depth as usize];
    let (mut cmds, mut slots) = (Vec::with_capacity(w.depth), Vec::with_capacity(w.depth));
    let mut ids = vec![CommandId(0); w.depth];
    loop {
        // Refill to `depth` outstanding with one batch (one doorbell update).
        let now = Instant::now();
        cmds.clear();
        slots.clear();
        while now < deadline && issued + (cmds.len() as u64) < budget.ops && !free_slots.is_empty()
        {
            let slot = free_slots.pop().expect("checked");
            let off = offs.next(seq);
            seq += 1;
            let lba = Lba(off / BLOCK_SIZE);
            let data = DataPtr::Contiguous(bufs.addr.offset((slot * w.block) as u64));
            cmds.push(match w.pattern {
                Pattern::RandRead => Command::read(lba, blocks, data),
                Pattern::SeqWrite => Command::write(lba, blocks, data),
            });
            slots.push(slot);
        }
        if !cmds.is_empty() {
            let t0 = Instant::now();
            let n = qp.queue().submit_batch(&cmds, &mut ids).expect("submit");
            assert_eq!(n, cmds.len(), "the queue pair has room for depth commands");
            for (id, &slot) in ids[..n].iter().zip(&slots) {
                started[id.0 as usize] = t0;
                slot_of[id.0 as usize] = slot;
            }
            issued += n as u64;
        }
        if qp.queue().in_flight() == 0 {
            break;
        }
        let n = qp.queue().reap(&mut done);
        if n > 0 {
            end = Instant::now();
            for c in &done[..n] {
                assert_eq!(c.result(), Ok(()), "queue pair I/O failed");
                lat.push((end - started[c.cid.0 as usize]).as_nanos() as u64);
                free_slots.push(slot_of[c.cid.0 as usize]);
            }
        } else {
            qp.wait_for_completion(std::thread::yield_now);
        }
    }
    let doorbells = qp.queue().stats().doorbells - doorbells0;
    (lat, end - start, doorbells)
}

/// The registered region (the buffers and room for the queues) and the
/// queue depth (one entry more than the workload keeps outstanding) of a
/// queue-pair run of `w`.
fn queue_shape(w: Workload) -> (usize, u16) {
    (w.depth * w.block + (1 << 20), (w.depth + 1).max(2) as u16)
}

/// The dbos queue pair and poller in process mode: one driver thread keeps
/// `depth` commands outstanding (refilling with one batch after each reap)
/// and waits for completions (polls a moment, then sleeps until the poller
/// wakes it); the poller thread issues them with io_uring.
pub fn run_queue_pair(
    file: &BackingFile,
    w: Workload,
    budget: Budget,
    poller: PollerConfig,
    uring: UringConfig,
) -> Summary {
    let (region, depth) = queue_shape(w);
    let dev = Device::open(file, region, poller, uring).expect("process-mode device");
    let mut qp = dev.queue_pair(depth).expect("queue pair");
    let bufs: DmaBuf = dev.alloc(w.depth * w.block).expect("buffers");
    bufs.fill(0x5a);
    let cpu0 = dev.poller().cpu_time().expect("the poller's CPU clock");
    let stats0 = dev.poller().stats();
    let (lat, elapsed, doorbells) = drive(&mut qp, &bufs, w, budget, file.blocks() * BLOCK_SIZE);
    let stats = dev.poller().stats();
    let poller = PollerUse {
        cpu: dev.poller().cpu_time().expect("the poller's CPU clock") - cpu0,
        fixed_ios: stats.fixed_ios - stats0.fixed_ios,
        plain_ios: stats.plain_ios - stats0.plain_ios,
    };
    drop(qp);
    drop(dev);
    Summary {
        poller: Some(poller),
        ..Summary::from_latencies(lat, elapsed, Some(doorbells))
    }
}

/// The dbos queue pair in process mode with its host run by the driver
/// thread itself (`dbos_nvme::host::inline`): submitting hands the commands
/// to the queue pair's own io_uring at once, waiting blocks in
/// `io_uring_enter`; no poller thread.
pub fn run_inline_queue_pair(
    file: &BackingFile,
    w: Workload,
    budget: Budget,
    poller: PollerConfig,
    uring: UringConfig,
) -> Summary {
    let (region, depth) = queue_shape(w);
    let dev = InlineDevice::open(file, region, poller, uring).expect("inline device");
    let mut qp = dev.queue_pair(depth).expect("queue pair");
    let bufs: DmaBuf = dev.alloc(w.depth * w.block).expect("buffers");
    bufs.fill(0x5a);
    let (lat, elapsed, doorbells) = drive(&mut qp, &bufs, w, budget, file.blocks() * BLOCK_SIZE);
    drop(qp);
    drop(dev);
    Summary::from_latencies(lat, elapsed, Some(doorbells))
}

/// fio's figure for the same pattern (io_uring engine, registered file and
/// fixed buffers). Fails if fio cannot be run or its report not read.
pub fn run_fio(path: &Path, w: Workload, time: Duration) -> Result<Summary, String> {
    let rw = match w.pattern {
        Pattern::RandRead => "randread",
        Pattern::SeqWrite => "write",
    };
    let out = dies_with_parent(&mut Process::new("fio"))
        .args([
            "--name=dbos",
            &format!("--filename={}", path.display()),
            "--direct=1",
            "--ioengine=io_uring",
            "--fixedbufs",
            "--registerfiles",
            &format!("--rw={rw}"),
            &format!("--bs={}", w.block),
            &format!("--iodepth={}", w.depth),
            "--time_based",
            &format!("--runtime={}ms", time.as_millis().max(1000)),
            "--lat_percentiles=1",
            "--output-format=json",
        ])
        .output()
        .map_err(|e| format!("running fio: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "fio failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let json: serde_json::Value =
        serde_json::from_slice(&out.stdout).map_err(|e| format!("reading fio's report: {e}"))?;
    let job = &json["jobs"][0][if w.pattern == Pattern::RandRead {
        "read"
    } else {
        "write"
    }];
    let lat = &job["lat_ns"];
    let pct = |p: &str| lat["percentile"][p].as_f64().unwrap_or(0.0) / 1000.0;
    let runtime_ms = job["runtime"].as_f64().unwrap_or(0.0);
    Ok(Summary {
        ops: job["total_ios"]
            .as_u64()
            .ok_or("fio's report has no total_ios")?,
        elapsed: Duration::from_secs_f64(runtime_ms / 1000.0),
        iops: job["iops"].as_f64().ok_or("fio's report has no iops")?,
        mean_us: lat["mean"].as_f64().unwrap_or(0.0) / 1000.0,
        p50_us: pct("50.000000"),
        p99_us: pct("99.000000"),
        cdf: {
            let mut cdf: Vec<(f64, f64)> = lat["percentile"]
                .as_object()
                .map(|m| {
                    m.iter()
                        .filter_map(|(p, ns)| Some((p.parse().ok()?, ns.as_f64()? / 1000.0)))
                        .collect()
                })
                .unwrap_or_default();
            cdf.sort_by(|a, b| a.0.total_cmp(&b.0));
            cdf
        },
        doorbells: None,
        poller: None,
    })
}
