//! Process snapshot baselines side by side: `fork()` (the child holds the
//! view, as Redis's BGSAVE does) against userfaultfd write-protection, under
//! an in-memory key-value workload: an open-addressing hash table of 100-byte
//! values filling the snapshotted heap (half its 128-byte slots hold a key),
//! updated by 1 and 2 writer threads (each owning the keys `key % writers ==
//! id`), while a snapshot thread takes a snapshot every interval and releases
//! the previous one (so one or two are alive). The table's layout, hashing
//! and the writers' keys are `dbos_snapshot::kv`, which the guest's `kv`
//! event report (`examples/src/bin/snappy.rs`) runs too.
//!
//! Reported per heap, writer count and method: snapshot creation time
//! (median, max), the writers' update latency p50/p99/p99.9/max and total
//! throughput, and memory copied per snapshot: for userfaultfd the pages its
//! handler copied (exact); for fork the parent's minor faults during the run
//! times 4 KiB (an upper bound: every copy-on-write is a fault, but a write
//! to a page whose child already exited also faults, without copying).
//! "none" is the same workload on the same kind of heap without snapshots.

use clap::Parser;
use dbos_snapshot::fork::ForkHeap;
use dbos_snapshot::kv::{self, Table, Writer};
use dbos_snapshot::uffd::UffdHeap;
use dbos_snapshot::Snapshotter;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

#[derive(Parser)]
#[command(about = "fork() vs userfaultfd snapshots under a key-value workload")]
struct Args {
    /// Heap sizes in MiB (the full shape: 256,1024).
    #[arg(long, value_delimiter = ',', default_value = "256")]
    heaps_mib: Vec<usize>,
    /// Writer thread counts.
    #[arg(long, value_delimiter = ',', default_value = "1,2")]
    writers: Vec<usize>,
    /// Snapshot intervals in milliseconds.
    #[arg(long, value_delimiter = ',', default_value = "10,100")]
    intervals_ms: Vec<u64>,
    /// Seconds per run.
    #[arg(long, default_value_t = 2.0)]
    seconds: f64,
}

struct Outcome {
    takes: Vec<Duration>,
    lat_ns: Vec<u64>,
    ops: u64,
    elapsed: f64,
    copied_bytes: u64,
}

fn minflt() -> u64 {
    // SAFETY: `usage` is a valid out-pointer; zeroed is a valid rusage.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage(RUSAGE_SELF) fills `usage`.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    usage.ru_minflt as u64
}

fn run<S: Snapshotter>(
    heap: &S,
    writers: usize,
    interval: Option<Duration>,
    seconds: f64,
    copied: impl Fn() -> u64,
) -> Outcome {
    // SAFETY: the Snapshotter contract makes `heap()` valid, page-aligned
    // and writable for `heap_len()` bytes while `heap` lives (longer than
    // the table); only this workload writes it.
    let table = unsafe { Table::new(heap.heap(), heap.heap_len() / kv::SLOT) };
    let keys = table.keys();
    table.fill();
    let stop = AtomicBool::new(false);
    let copied0 = copied();
    let start = Instant::now();
    let (takes, per_writer) = thread::scope(|scope| {
        let handles: Vec<_> = (0..writers)
            .map(|id| {
                let (table, stop) = (&table, &stop);
                scope.spawn(move || {
                    let mut writer = Writer::new(id, writers, keys);
                    let mut lat = Vec::with_capacity(1 << 22);
                    while !stop.load(Ordering::Relaxed) {
                        let key = writer.next_key();
                        let value = kv::value(writer.n);
                        let t = Instant::now();
                        table.put(key, &value);
                        lat.push(t.elapsed().as_nanos() as u64);
                        writer.n += 1;
                    }
                    lat
                })
            })
            .collect();
        let mut takes = Vec::new();
        let end = start + Duration::from_secs_f64(seconds);
        let mut prev = None;
        while Instant::now() < end {
            match interval {
                Some(i) => {
                    thread::sleep(i);
                    let t = Instant::now();
                    let snap = heap.take().expect("take a snapshot");
                    takes.push(t.elapsed());
                    if let Some(p) = prev.replace(snap) {
                        heap.release(p).expect("release a snapshot");
                    }
                }
                None => thread::sleep(Duration::from_millis(10)),
            }
        }
        stop.store(true, Ordering::Relaxed);
        let lat: Vec<Vec<u64>> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        if let Some(p) = prev {
            heap.release(p).expect("release a snapshot");
        }
        (takes, lat)
    });
    let elapsed = start.elapsed().as_secs_f64();
    let mut lat_ns: Vec<u64> = per_writer.into_iter().flatten().collect();
    let ops = lat_ns.len() as u64;
    lat_ns.sort_unstable();
    Outcome {
        takes,
        lat_ns,
        ops,
        elapsed,
        copied_bytes: copied() - copied0,
    }
}

fn pct(sorted: &[u64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 * p) as usize).min(sorted.len() - 1);
    sorted[i] as f64 / 1000.0
}

fn report(heap_mib: usize, writers: usize, method: &str, interval: Option<u64>, o: &Outcome) {
    let mut takes: Vec<f64> = o.takes.iter().map(|d| d.as_secs_f64() * 1000.0).collect();
    takes.sort_by(f64::total_cmp);
    let (take_med, take_max) = if takes.is_empty() {
        ("-".to_string(), "-".to_string())
    } else {
        (
            format!("{:.3}", dbos_benches::median(&takes)),
            format!("{:.3}", takes[takes.len() - 1]),
        )
    };
    let per_snap = if o.takes.is_empty() {
        "-".to_string()
    } else {
        format!(
            "{:.0}",
            o.copied_bytes as f64 / o.takes.len() as f64 / 1024.0
        )
    };
    println!(
        "{heap_mib:>5} {writers:>2} {method:<5} {:>6} {:>5} {take_med:>8} {take_max:>8} {:>7.2} {:>8.2} {:>8.2} {:>9.1} {:>9.2} {per_snap:>10}",
        interval.map_or("-".to_string(), |i| format!("{i}")),
        o.takes.len(),
        pct(&o.lat_ns, 0.5),
        pct(&o.lat_ns, 0.99),
        pct(&o.lat_ns, 0.999),
        o.lat_ns[o.lat_ns.len() - 1] as f64 / 1000.0,
        o.ops as f64 / o.elapsed / 1e6,
    );
}

fn main() {
    let args = Args::parse();
    println!(
        "{:>5} {:>2} {:<5} {:>6} {:>5} {:>8} {:>8} {:>7} {:>8} {:>8} {:>9} {:>9} {:>10}",
        "MiB",
        "w",
        "meth",
        "ms",
        "snaps",
        "take p50",
        "take max",
        "p50 us",
        "p99 us",
        "p99.9 us",
        "max us",
        "Mops/s",
        "KiB/snap"
    );
    for &mib in &args.heaps_mib {
        let len = mib << 20;
        for &w in &args.writers {
            let heap = ForkHeap::new(len).expect("fork heap");
            report(
                mib,
                w,
                "none",
                None,
                &run(&heap, w, None, args.seconds, || 0),
            );
            for &i in &args.intervals_ms {
                let o = run(
                    &heap,
                    w,
                    Some(Duration::from_millis(i)),
                    args.seconds,
                    || minflt() * 4096,
                );
                report(mib, w, "fork", Some(i), &o);
            }
            drop(heap);
            match UffdHeap::new(len) {
                Ok(heap) => {
                    for &i in &args.intervals_ms {
                        let o = run(
                            &heap,
                            w,
                            Some(Duration::from_millis(i)),
                            args.seconds,
                            || heap.stats().pages_copied.load(Ordering::Relaxed) * 4096,
                        );
                        report(mib, w, "uffd", Some(i), &o);
                    }
                }
                Err(e) => println!("{mib:>5} {w:>2} uffd  unavailable: {e}"),
            }
        }
    }
}
