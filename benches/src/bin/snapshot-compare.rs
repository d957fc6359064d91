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
//!
//! `dbos bench --only snapshots` runs this comparison through the same library
//! code (`dbos_benches`) and writes it into the one report with the others
//! (`target/dbos-report/`).

use clap::Parser;
use dbos_benches::snapshots::{minflt, run, Outcome};
use dbos_snapshot::fork::ForkHeap;
use dbos_snapshot::uffd::UffdHeap;
use std::sync::atomic::Ordering;
use std::time::Duration;

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
