//! The snapshot workload behind `snapshot-compare` and `dbos bench --only
//! snapshots`: an open-addressing hash table of 100-byte values filling the
//! snapshotted heap (`dbos_snapshot::kv`), updated by writer threads while
//! a snapshot thread takes a snapshot every interval and releases the
//! previous one.

use dbos_snapshot::kv::{self, Table, Writer};
use dbos_snapshot::Snapshotter;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

/// What one run measured.
pub struct Outcome {
    /// Time each snapshot took to create.
    pub takes: Vec<Duration>,
    /// The writers' update latencies, sorted, nanoseconds.
    pub lat_ns: Vec<u64>,
    /// Updates done.
    pub ops: u64,
    /// Seconds the run lasted.
    pub elapsed: f64,
    /// Bytes copied for the snapshots, as `copied` measured them.
    pub copied_bytes: u64,
}

/// This process's minor page faults so far.
pub fn minflt() -> u64 {
    // SAFETY: `usage` is a valid out-pointer; zeroed is a valid rusage.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage(RUSAGE_SELF) fills `usage`.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    usage.ru_minflt as u64
}

/// Fills `heap` with the table, runs `writers` writer threads for
/// `seconds` while taking a snapshot every `interval` (none: no
/// snapshots), and measures; `copied` is read before and after (bytes
/// copied so far).
pub fn run<S: Snapshotter>(
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
