//! B+tree point lookups on the buffer pools side by side: the vmcache-style
//! pool, the hash-table pool and (in memory) std's `BTreeMap` and the
//! reference vmcache binary, 8-byte big-endian keys with 120-byte values in
//! 4 KiB pages, uniform random keys, 1 and 2 threads.
//!
//! - `in-memory`: `--keys` keys, pools larger than the data. Targets: the
//!   vmcache-style pool's lookups/s per thread at least 1.5x the hash
//!   pool's, and at least 1.0x (goal 1.2x) the reference vmcache's in the
//!   same shape. The reference is an optional peer: vmcache
//!   (github.com/viktorleis/vmcache) built by hand, its binary given with
//!   `--vmcache PATH` or `DBOS_VMCACHE=PATH`; it runs as a child process
//!   with `RNDREAD=1 DATASIZE=<keys> PHYSGB VIRTGB THREADS RUNFOR` and
//!   `BLOCK` a sparse file beside `--file`, and its rate is the mean of its
//!   per-second `tx` column after the first second. Without it, its column
//!   says "not installed".
//! - `out-of-memory`: `--ooo-data-mib` of tree over a pool of
//!   `--ooo-pool-mib` on `--file`, with QD1 random 4 KiB reads of the same
//!   pages through the same kind of device measured in alternating rounds.
//!   `--io` picks the device: `direct` (default, as the pools run in process
//!   mode: each thread's own `pread`) or `qp` (queue pairs over the NVMe
//!   poller thread, the guest's path).
//!   Reports lookups/s, page reads/writes/evictions per second and TLB
//!   shootdowns (the `TLB:` line of /proc/interrupts, all CPUs, whole
//!   machine) per evicted page, and the reference vmcache at the same shape
//!   (its `PHYSGB` the pool, so `--ooo-pool-mib` a multiple of 1024, 1
//!   thread, measured once it has read as many pages as its pool holds).
//!   Targets, 1 thread: page reads/s (lookups/s x page reads per lookup)
//!   >= 90% of QD1 IOPS, and lookups/s >= 1.2x the reference's quiet,
//!   >= 1.0x with a background load.
//! - `read-path`: what reading into a vmcache window costs each way, with
//!   io_uring directly at QD1: READ_FIXED into a registered bounce buffer
//!   plus a copy, vs. a non-fixed READ straight into the window page (each
//!   read page is then released with DONTNEED, as eviction would).
//!
//! The disk of a virtual machine moves 10-30% between runs, so everything
//! runs in `--rounds` rounds in rotated order; medians of rounds and
//! per-round ratios are reported. `--background-load N[,M...]` runs every
//! comparison once per listed level with that many threads of pure
//! computation started by the benchmark beside it (0: quiet), so a quiet
//! and a loaded comparison come from one command.
//!
//! `dbos bench --only pools` runs this comparison through the same library
//! code (`dbos_benches`) and writes it into the one report with the others
//! (`target/dbos-report/`).

use clap::Parser;
use dbos_benches::load::BackgroundLoad;
use dbos_benches::pools::{
    build, config, direct, lookups, ooo_measure, qd1_reads, timed_lookups, value_of, warm, OooRun,
    Rate, Rng, KEYS_PER_LEAF,
};
use dbos_benches::vmcache::{self, RefRun, Reference};
use dbos_benches::{median, poller_config, require_direct_io};
use dbos_bufferpool::btree::BTree;
use dbos_bufferpool::device::{BlockDevice, DmaBytes};
use dbos_bufferpool::host::{block_device, tlb_shootdowns, ProcessBlockDevice};
use dbos_bufferpool::pool::hash::HashPool;
use dbos_bufferpool::pool::vmcache::VmCache;
use dbos_bufferpool::pool::BufferManager;
use dbos_bufferpool::PAGE_SIZE;
use dbos_nvme::host::{BackingFile, Device, UringConfig};
use io_uring::{opcode, types, IoUring};
use std::collections::BTreeMap;
use std::os::unix::io::AsRawFd;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Part {
    InMemory,
    OutOfMemory,
    ReadPath,
}

/// How the pools read and write pages in process mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum IoMethod {
    /// Each thread's own `pread`/`pwrite` on the O_DIRECT file
    /// (`DirectDevice`): a miss costs one system call, no thread switch.
    Direct,
    /// A queue pair per thread served by the NVMe poller thread (the
    /// guest's path, run as a process).
    Qp,
}

#[derive(Parser)]
#[command(about = "B+tree lookups on the vmcache-style and hash-table pools")]
struct Args {
    /// The data file (O_DIRECT; created or resized as needed).
    #[arg(long, default_value_os_t = std::env::temp_dir().join("btree-bench.img"))]
    file: PathBuf,
    /// Parts to run (default: all).
    #[arg(long, value_enum, value_delimiter = ',')]
    parts: Vec<Part>,
    /// Seconds per measurement.
    #[arg(long, default_value_t = 3.0)]
    seconds: f64,
    /// Rounds (each method once per round, rotated).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Keys of the in-memory tree.
    #[arg(long, default_value_t = 1_000_000)]
    keys: u64,
    /// Thread counts.
    #[arg(long, value_delimiter = ',', default_values_t = vec![1, 2])]
    threads: Vec<usize>,
    /// Tree size of the out-of-memory part in MiB (keys are added until the
    /// tree has about this many pages).
    #[arg(long, default_value_t = 1024)]
    ooo_data_mib: u64,
    /// Pool size of the out-of-memory part in MiB.
    #[arg(long, default_value_t = 256)]
    ooo_pool_mib: u64,
    /// How the pools (and the QD1 baseline) read pages: `direct` (the
    /// process-mode default) or `qp` (queue pairs over the poller).
    #[arg(long, value_enum, default_value_t = IoMethod::Direct)]
    io: IoMethod,
    /// The poller's spin before parking, in microseconds (`--io qp`).
    #[arg(long)]
    spin_us: Option<u64>,
    /// Threads of pure computation run beside every measurement; a list
    /// runs each comparison once per level (e.g. `0,2`: quiet, then 2 busy
    /// threads).
    #[arg(long, value_delimiter = ',', default_values_t = vec![0])]
    background_load: Vec<usize>,
    /// The reference vmcache binary (github viktorleis/vmcache, built by
    /// hand); default: $DBOS_VMCACHE. Without one, its column says "not
    /// installed".
    #[arg(long)]
    vmcache: Option<PathBuf>,
    /// The reference vmcache's PHYSGB (its pool, GiB).
    #[arg(long, default_value_t = 1)]
    vmcache_physgb: u64,
    /// The reference vmcache's VIRTGB (its window and the sparse BLOCK
    /// file, GiB).
    #[arg(long, default_value_t = 4)]
    vmcache_virtgb: u64,
}

/// The reference vmcache of `--vmcache` or `$DBOS_VMCACHE` with its
/// sparse file beside `--file`, if one is named; exits if it cannot run.
fn find_reference(args: &Args, physgb: u64, virtgb: u64) -> Option<Reference> {
    let bin = vmcache::named(args.vmcache.clone())?;
    let mut block = args.file.clone().into_os_string();
    block.push(".vmcache-block");
    Reference::new(bin, PathBuf::from(block), physgb, virtgb)
        .map_err(|e| {
            eprintln!("{e}");
            std::process::exit(1);
        })
        .ok()
}

fn queues(dev: &Device, n: usize) -> Vec<ProcessBlockDevice> {
    (0..n)
        .map(|_| block_device(dev, 64).expect("queue pair"))
        .collect()
}

/// Runs `part` with pools on devices of `args.io`'s kind over `file`.
fn with_devices(args: &Args, file: BackingFile, part: Part) {
    match args.io {
        IoMethod::Direct => {
            let file = Arc::new(file);
            let make = |n| direct(&file, n);
            match part {
                Part::InMemory => in_memory(args, &make),
                _ => out_of_memory(args, &make),
            }
        }
        IoMethod::Qp => {
            let dev = device(&file, args);
            let make = |n| queues(&dev, n);
            match part {
                Part::InMemory => in_memory(args, &make),
                _ => out_of_memory(args, &make),
            }
        }
    }
}

fn map_lookups(m: &BTreeMap<[u8; 8], Vec<u8>>, keys: u64, threads: usize, secs: f64) -> Rate {
    timed_lookups(keys, threads, secs, |k, out| {
        let v = m.get(&k.to_be_bytes()).expect("present");
        out.clear();
        out.extend_from_slice(v);
        assert_eq!(out[..8], k.to_be_bytes());
    })
}

fn open_file(path: &PathBuf, bytes: u64) -> BackingFile {
    if let Ok(f) = BackingFile::open(path) {
        if f.blocks() * PAGE_SIZE as u64 >= bytes {
            return f;
        }
        drop(f);
        let _ = std::fs::remove_file(path);
    }
    BackingFile::create(path, bytes).unwrap_or_else(|e| {
        eprintln!("cannot create {}: {e}", path.display());
        std::process::exit(1);
    })
}

fn device(file: &BackingFile, args: &Args) -> Device {
    Device::open(
        file,
        32 << 20,
        poller_config(args.spin_us),
        UringConfig::default(),
    )
    .expect("process device")
}

/// Pages of the in-memory part's file and pools.
fn in_memory_pages(args: &Args) -> u64 {
    args.keys / KEYS_PER_LEAF * 11 / 10 + 4096
}

fn in_memory<D: BlockDevice>(args: &Args, devices: &dyn Fn(usize) -> Vec<D>) {
    let keys = args.keys;
    let pages = in_memory_pages(args);
    let nq = args.threads.iter().copied().max().unwrap_or(1) + 1;
    let cap = pages as usize;
    let vm = VmCache::new(devices(nq), config(cap, 0)).expect("vmcache");
    let meta = build(&vm, keys);
    let used = vm.page_count();
    let hash = HashPool::new(devices(nq), config(cap, used)).expect("hash pool");
    let tv = BTree::open(&vm, meta).expect("open");
    let th = BTree::open(&hash, meta).expect("open");
    // Warm the hash pool: every page resident.
    let mut n = 0;
    th.scan_forward(None, |_, _| {
        n += 1;
        true
    })
    .expect("scan");
    assert_eq!(n, keys);
    lookups(&th, keys, 1, 0.5);
    let map: BTreeMap<[u8; 8], Vec<u8>> = (0..keys)
        .map(|k| (k.to_be_bytes(), value_of(k).to_vec()))
        .collect();
    println!(
        "in memory: {keys} keys, {used} pages ({:.0} MiB), pools of {cap} pages, {:.1} s per run",
        (used * PAGE_SIZE as u64) as f64 / (1 << 20) as f64,
        args.seconds
    );
    let reference = find_reference(args, args.vmcache_physgb, args.vmcache_virtgb);
    if reference.is_none() {
        println!("  vmcache (reference): not installed (--vmcache PATH or DBOS_VMCACHE=PATH)");
    }
    let names = ["vm pool", "hash pool", "BTreeMap", "vmcache (ref)"];
    let methods = if reference.is_some() { 4 } else { 3 };
    for &threads in &args.threads {
        for &load in &args.background_load {
            let _load = BackgroundLoad::start(load);
            let what = format!("{threads} thread(s), background load {load}");
            // Per method: lookups/s per thread, and per CPU-second.
            let mut res: Vec<Vec<f64>> = vec![Vec::new(); 4];
            let mut cpu: Vec<Vec<f64>> = vec![Vec::new(); 4];
            for round in 0..args.rounds {
                for k in 0..methods {
                    let m = (k + round) % methods;
                    let r = match m {
                        0 => lookups(&tv, keys, threads, args.seconds),
                        1 => lookups(&th, keys, threads, args.seconds),
                        2 => map_lookups(&map, keys, threads, args.seconds),
                        _ => reference
                            .as_ref()
                            .expect("installed")
                            .lookups(keys, threads, args.seconds)
                            .unwrap_or_else(|e| panic!("{e}")),
                    };
                    res[m].push(r.wall / threads as f64);
                    cpu[m].push(r.cpu);
                }
                let rates = |v: &[Vec<f64>]| {
                    (0..methods)
                        .map(|m| format!("{} {:.0}", names[m], v[m][round]))
                        .collect::<Vec<_>>()
                        .join(", ")
                };
                let vs_ref = if methods == 4 {
                    format!(
                        ", vm pool/ref {:.2}, hash pool/ref {:.2}",
                        res[0][round] / res[3][round],
                        res[1][round] / res[3][round]
                    )
                } else {
                    String::new()
                };
                println!(
                    "  {what}, round {}: per thread {} lookups/s; vm pool/hash pool {:.2}{vs_ref}; \
                     per CPU-second {}",
                    round + 1,
                    rates(&res),
                    res[0][round] / res[1][round],
                    rates(&cpu),
                );
            }
            let ratio = |v: &[Vec<f64>], a: usize, b: usize| -> Vec<f64> {
                v[a].iter().zip(&v[b]).map(|(x, y)| x / y).collect()
            };
            let list = |v: &[f64]| {
                v.iter()
                    .map(|x| format!("{x:.2}"))
                    .collect::<Vec<_>>()
                    .join(" ")
            };
            let medians = (0..methods)
                .map(|m| format!("{} {:.0}", names[m], median(&res[m])))
                .collect::<Vec<_>>()
                .join(", ");
            let vh = ratio(&res, 0, 1);
            println!(
                "  {what}: medians per thread {medians} lookups/s; vm pool/hash pool median per-round \
                 ratio {:.2} (rounds {}; target >= 1.5: {}), vm pool/BTreeMap {:.2}",
                median(&vh),
                list(&vh),
                if median(&vh) >= 1.5 { "met" } else { "NOT met" },
                median(&res[0]) / median(&res[2]),
            );
            if methods == 4 {
                for (m, name) in [(0, "vm pool"), (1, "hash pool")] {
                    let r = ratio(&res, m, 3);
                    let c = ratio(&cpu, m, 3);
                    let x = median(&r);
                    println!(
                        "  {what}: {name}/vmcache (ref) median per-round ratio {x:.2} (rounds {}; \
                         target >= 1.0: {}, goal 1.2: {}); per CPU-second {:.2} (rounds {})",
                        list(&r),
                        if x >= 1.0 { "met" } else { "NOT met" },
                        if x >= 1.2 { "met" } else { "not met" },
                        median(&c),
                        list(&c),
                    );
                }
            } else {
                println!("  {what}: vmcache (ref) not installed");
            }
        }
    }
    let s = vm.stats();
    assert_eq!(s.evictions, 0, "the in-memory pool evicted");
}

/// QD1 random 4 KiB reads of pages 0..pages through one queue pair: IOPS.
fn ooo_row(name: &str, r: &OooRun) {
    let per = |x: u64| x as f64 / r.secs;
    println!(
        "    {name:<18} {:>9.0} lookups/s  reads {:>8.0}/s  writes {:>6.0}/s  evictions {:>8.0}/s  \
         madvise {:>7.0}/s  TLB shootdowns {:>8.0}/s = {:.3} per evicted page",
        r.rate,
        per(r.stats.reads),
        per(r.stats.writes),
        per(r.stats.evictions),
        per(r.stats.dontneed_calls),
        per(r.tlb),
        r.tlb as f64 / r.stats.evictions.max(1) as f64
    );
}

/// Pages of the out-of-memory part's file.
fn out_of_memory_pages(args: &Args) -> u64 {
    (args.ooo_data_mib << 20) / PAGE_SIZE as u64 * 11 / 10 + 4096
}

fn out_of_memory<D: BlockDevice>(args: &Args, devices: &dyn Fn(usize) -> Vec<D>) {
    let data_pages = (args.ooo_data_mib << 20) / PAGE_SIZE as u64;
    let keys = data_pages * KEYS_PER_LEAF * 98 / 100;
    let cap = ((args.ooo_pool_mib << 20) / PAGE_SIZE as u64) as usize;
    let nq = args.threads.iter().copied().max().unwrap_or(1) + 1;
    let (meta, used) = {
        let builder = VmCache::new(devices(2), config(cap, 0)).expect("vmcache");
        let meta = build(&builder, keys);
        (meta, builder.page_count())
    };
    let vm = VmCache::new(devices(nq), config(cap, used)).expect("vmcache");
    let hash = HashPool::new(devices(nq), config(cap, used)).expect("hash pool");
    let tv = BTree::open(&vm, meta).expect("open");
    let th = BTree::open(&hash, meta).expect("open");
    warm(&tv, keys, "vmcache", 1.0);
    warm(&th, keys, "hash", 1.0);
    let mut qdev = devices(1).pop().expect("a device");
    let buf = DmaBytes::new(qdev.alloc(1).expect("buffer"));
    println!(
        "out of memory: {keys} keys, {used} pages ({:.0} MiB) of tree over pools of {cap} pages ({} MiB), \
         file {}, I/O {}, {:.1} s per run",
        (used * PAGE_SIZE as u64) as f64 / (1 << 20) as f64,
        args.ooo_pool_mib,
        args.file.display(),
        match args.io {
            IoMethod::Direct => "direct (each thread's own pread/pwrite)",
            IoMethod::Qp => "queue pairs over the poller",
        },
        args.seconds
    );
    // The reference at the same shape: its pool is a whole number of GiB.
    let named = vmcache::named(args.vmcache.clone()).is_some();
    let reference = if !named || args.ooo_pool_mib.is_multiple_of(1024) {
        let virtgb = (args.ooo_data_mib * 2).div_ceil(1024) + 1;
        let r = find_reference(args, args.ooo_pool_mib / 1024, virtgb);
        if r.is_none() {
            println!("  vmcache (reference): not installed (--vmcache PATH or DBOS_VMCACHE=PATH)");
        }
        r
    } else {
        println!(
            "  vmcache (reference): not run, its pool is a whole number of GiB \
             (--ooo-pool-mib a multiple of 1024)"
        );
        None
    };
    for &load in &args.background_load {
        let _load = BackgroundLoad::start(load);
        println!("  background load {load}:");
        // Methods: 0 QD1 reads, then (vm pool, hash pool) per thread
        // count, then the reference (1 thread) if there is one.
        let pools = 2 * args.threads.len();
        let methods = 1 + pools + usize::from(reference.is_some());
        let mut qd1 = Vec::new();
        let mut runs: Vec<Vec<OooRun>> = (0..pools).map(|_| Vec::new()).collect();
        let mut refs: Vec<RefRun> = Vec::new();
        for round in 0..args.rounds {
            println!("  round {}:", round + 1);
            for k in 0..methods {
                let m = (k + round) % methods;
                if m == 0 {
                    let tlb0 = tlb_shootdowns().unwrap_or(0);
                    let t0 = Instant::now();
                    let iops = qd1_reads(&mut qdev, &buf, 0..used, args.seconds);
                    let tlb =
                        (tlb_shootdowns().unwrap_or(0) - tlb0) as f64 / t0.elapsed().as_secs_f64();
                    println!(
                        "    {:<18} {iops:>9.0} IOPS (TLB shootdowns {tlb:.0}/s, no evictions)",
                        "QD1 reads"
                    );
                    qd1.push(iops);
                    continue;
                }
                if m == 1 + pools {
                    let r = reference
                        .as_ref()
                        .expect("present")
                        .run(keys, 1, args.seconds, Some(cap as u64))
                        .unwrap_or_else(|e| panic!("{e}"));
                    println!(
                        "    {:<18} {:>9.0} lookups/s  {:.2} page reads per lookup (after {} s of warm-up)",
                        "vmcache (ref) 1T", r.rate.wall, r.reads_per_lookup, r.warm_secs
                    );
                    refs.push(r);
                    continue;
                }
                let threads = args.threads[(m - 1) / 2];
                let vm_pool = (m - 1).is_multiple_of(2);
                let r = if vm_pool {
                    ooo_measure(&tv, keys, threads, args.seconds)
                } else {
                    ooo_measure(&th, keys, threads, args.seconds)
                };
                let name = format!(
                    "{} {threads}T",
                    if vm_pool { "vm pool" } else { "hash pool" }
                );
                ooo_row(&name, &r);
                runs[m - 1].push(r);
            }
        }
        let q = median(&qd1);
        println!("  medians: QD1 reads {q:.0} IOPS");
        let list = |v: &[f64], pct: bool| {
            v.iter()
                .map(|x| {
                    if pct {
                        format!("{:.0}%", x * 100.0)
                    } else {
                        format!("{x:.2}")
                    }
                })
                .collect::<Vec<_>>()
                .join(" ")
        };
        for (i, r) in runs.iter().enumerate() {
            let threads = args.threads[i / 2];
            let name = if i.is_multiple_of(2) {
                "vm pool"
            } else {
                "hash pool"
            };
            let rates: Vec<f64> = r.iter().map(|x| x.rate).collect();
            let ratios: Vec<f64> = rates.iter().zip(&qd1).map(|(a, b)| a / b).collect();
            let reads_per: Vec<f64> = r
                .iter()
                .map(|x| x.stats.reads as f64 / (x.rate * x.secs))
                .collect();
            // Lookups per read are what QD1 reads allow at this hit rate.
            let adjusted: Vec<f64> = ratios.iter().zip(&reads_per).map(|(a, p)| a * p).collect();
            let tlb_per: Vec<f64> = r
                .iter()
                .map(|x| x.tlb as f64 / x.stats.evictions.max(1) as f64)
                .collect();
            let verdict = if threads == 1 {
                format!(
                    "; target >= 90%: {}",
                    if median(&adjusted) >= 0.9 {
                        "met"
                    } else {
                        "NOT met"
                    }
                )
            } else {
                String::new()
            };
            println!(
                "  {name} {threads}T: {:.0} lookups/s = {:.0}% of QD1 IOPS (per round {}); \
                 {:.2} page reads per lookup, so reads at {:.0}% of QD1 IOPS (per round {}{verdict}); \
                 {:.3} TLB shootdowns per evicted page",
                median(&rates),
                median(&ratios) * 100.0,
                list(&ratios, true),
                median(&reads_per),
                median(&adjusted) * 100.0,
                list(&adjusted, true),
                median(&tlb_per)
            );
            if threads == 1 && !refs.is_empty() {
                let vs: Vec<f64> = rates
                    .iter()
                    .zip(&refs)
                    .map(|(a, b)| a / b.rate.wall)
                    .collect();
                let x = median(&vs);
                let target = if load == 0 { 1.2 } else { 1.0 };
                println!(
                    "  {name} 1T/vmcache (ref) 1T: median per-round ratio {x:.2} (rounds {}; \
                     target >= {target:.1} {}: {}); vmcache (ref) {:.0} lookups/s, {:.2} page reads per lookup",
                    list(&vs, false),
                    if load == 0 { "quiet" } else { "loaded" },
                    if x >= target { "met" } else { "NOT met" },
                    median(&refs.iter().map(|r| r.rate.wall).collect::<Vec<_>>()),
                    median(&refs.iter().map(|r| r.reads_per_lookup).collect::<Vec<_>>()),
                );
            }
        }
    }
}

/// QD1 reads into a window page through io_uring directly, each way.
fn read_path(args: &Args) {
    let file = open_file(&args.file, 64 << 20);
    let pages = (file.blocks() * dbos_nvme::BLOCK_SIZE / PAGE_SIZE as u64).min(1 << 18);
    let window_pages = 16384usize;
    let len = window_pages * PAGE_SIZE;
    // SAFETY: a fresh private anonymous mapping.
    let window = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len + PAGE_SIZE,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    assert_ne!(window, libc::MAP_FAILED);
    let window = window.cast::<u8>();
    // The last page is the registered bounce buffer (never released).
    let bounce = window.wrapping_add(len);
    let mut ring = IoUring::new(8).expect("io_uring");
    ring.submitter()
        .register_files(&[file.file().as_raw_fd()])
        .expect("register file");
    let iov = [libc::iovec {
        iov_base: bounce.cast(),
        iov_len: PAGE_SIZE,
    }];
    // SAFETY: the bounce page stays mapped until after the ring is dropped.
    unsafe { ring.submitter().register_buffers(&iov) }.expect("register buffer");
    let mut run = |fixed: bool| -> (f64, f64) {
        let mut r = Rng(77);
        let start = Instant::now();
        let deadline = start + Duration::from_secs_f64(args.seconds);
        let mut n = 0u64;
        while Instant::now() < deadline {
            let off = r.below(pages) * PAGE_SIZE as u64;
            let w = window.wrapping_add(r.below(window_pages as u64) as usize * PAGE_SIZE);
            let e = if fixed {
                opcode::ReadFixed::new(types::Fixed(0), bounce, PAGE_SIZE as u32, 0)
                    .offset(off)
                    .build()
            } else {
                opcode::Read::new(types::Fixed(0), w, PAGE_SIZE as u32)
                    .offset(off)
                    .build()
            };
            // SAFETY: both targets are mapped for the whole run.
            unsafe { ring.submission().push(&e) }.expect("room");
            ring.submit_and_wait(1).expect("io_uring_enter");
            let c = ring.completion().next().expect("completion");
            assert_eq!(c.result(), PAGE_SIZE as i32);
            if fixed {
                // SAFETY: distinct pages of the mapping, no I/O in flight.
                unsafe { std::ptr::copy_nonoverlapping(bounce, w, PAGE_SIZE) };
            }
            // SAFETY: w is a window page; releasing it is what eviction does.
            unsafe { libc::madvise(w.cast(), PAGE_SIZE, libc::MADV_DONTNEED) };
            n += 1;
        }
        let secs = start.elapsed().as_secs_f64();
        (n as f64 / secs, secs * 1e6 / n as f64)
    };
    // The copy and the fault on a released page alone, without I/O.
    let copy_ns = {
        let t0 = Instant::now();
        let n = 200_000;
        for i in 0..n {
            let w = window.wrapping_add((i % window_pages) * PAGE_SIZE);
            // SAFETY: distinct pages of the mapping.
            unsafe { std::ptr::copy_nonoverlapping(bounce, w, PAGE_SIZE) };
            // SAFETY: a window page.
            unsafe { libc::madvise(w.cast(), PAGE_SIZE, libc::MADV_DONTNEED) };
        }
        t0.elapsed().as_nanos() as f64 / n as f64
    };
    println!(
        "read path (io_uring QD1 on {}, {pages} pages, {:.1} s per run): fault-in + 4 KiB copy + DONTNEED alone {copy_ns:.0} ns",
        args.file.display(),
        args.seconds
    );
    for &load in &args.background_load {
        let _load = BackgroundLoad::start(load);
        println!("  background load {load}:");
        let (mut fixed, mut direct) = (Vec::new(), Vec::new());
        for round in 0..args.rounds {
            for k in 0..2 {
                let is_fixed = (k + round) % 2 == 0;
                let (iops, us) = run(is_fixed);
                println!(
                    "  round {} {:<34} {iops:>9.0} IOPS {us:>7.1} us mean",
                    round + 1,
                    if is_fixed {
                        "READ_FIXED to bounce + copy"
                    } else {
                        "READ (not fixed) into the window"
                    }
                );
                if is_fixed { &mut fixed } else { &mut direct }.push(us);
            }
        }
        let (f, d) = (median(&fixed), median(&direct));
        println!(
            "  medians: bounce + copy {f:.1} us, straight into the window {d:.1} us per read (difference {:.2} us)",
            f - d
        );
    }
    drop(ring);
    // SAFETY: our mapping; the ring that referenced it is gone.
    unsafe { libc::munmap(window.cast(), len + PAGE_SIZE) };
}

fn main() {
    let args = Args::parse();
    require_direct_io(&args.file);
    let parts = if args.parts.is_empty() {
        vec![Part::InMemory, Part::OutOfMemory, Part::ReadPath]
    } else {
        args.parts.clone()
    };
    for p in parts {
        match p {
            Part::InMemory => {
                let file = open_file(&args.file, in_memory_pages(&args) * PAGE_SIZE as u64);
                with_devices(&args, file, p)
            }
            Part::OutOfMemory => {
                let file = open_file(&args.file, out_of_memory_pages(&args) * PAGE_SIZE as u64);
                with_devices(&args, file, p)
            }
            Part::ReadPath => read_path(&args),
        }
    }
}
