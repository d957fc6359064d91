//! Group commit's waits (`Wal::wait_durable`): where the platform can sleep
//! (the process `host::env`), followers of a slow batch sleep instead of
//! spinning on, every one wakes with its commit durable, and a failed batch
//! wakes them with the error; where it cannot (no `Env::sleep`, as in the
//! guest), nobody sleeps.

use dbos_bufferpool::device::{BlockDevice, DeviceError, Io, IoBuf, IoKind, IoTag};
use dbos_bufferpool::fuzzing::{MemDevice, MemDisk};
use dbos_bufferpool::log::{LogGeometry, Tail, FIRST_LSN, LOG_BLOCK};
use dbos_bufferpool::record::Record;
use dbos_bufferpool::{host, CommitMode, Env, Lsn, PageId, Wal, WalError};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

const LOG_BLOCKS: u64 = 256;
const THREADS: usize = 8;
const COMMITS: usize = 20;

/// A memory device whose writes take `delay` each and fail once `writes`
/// writes have been carried out, when `fail_after` says so.
struct SlowDevice {
    inner: MemDevice,
    delay: Duration,
    writes: Arc<AtomicUsize>,
    fail_after: Option<usize>,
    failed: Vec<IoTag>,
}

// SAFETY: every buffer is the inner device's (handed out by its `alloc`),
// and requests reach it unchanged; this wrapper only delays them and
// replaces the results of failed ones.
unsafe impl BlockDevice for SlowDevice {
    fn block_count(&self) -> u64 {
        self.inner.block_count()
    }
    fn alloc(&mut self, blocks: usize) -> Result<IoBuf, DeviceError> {
        self.inner.alloc(blocks)
    }
    fn submit(&mut self, io: &Io) -> Result<IoTag, DeviceError> {
        if matches!(io.kind, IoKind::Write | IoKind::WriteFua) {
            std::thread::sleep(self.delay);
            let n = self.writes.fetch_add(1, Ordering::SeqCst);
            if self.fail_after.is_some_and(|f| n >= f) {
                let tag = self.inner.submit(&Io::flush())?;
                self.failed.push(tag);
                return Ok(tag);
            }
        }
        self.inner.submit(io)
    }
    fn poll(&mut self) -> Option<(IoTag, Result<(), DeviceError>)> {
        let (tag, result) = self.inner.poll()?;
        if let Some(i) = self.failed.iter().position(|&t| t == tag) {
            self.failed.swap_remove(i);
            return Some((tag, Err(DeviceError::WriteFault)));
        }
        Some((tag, result))
    }
    fn in_flight(&self) -> usize {
        self.inner.in_flight()
    }
}

fn wal(
    env: Env,
    delay: Duration,
    fail_after: Option<usize>,
) -> (Wal<SlowDevice>, Arc<AtomicUsize>) {
    let disk = MemDisk::new(vec![0; (LOG_BLOCKS * LOG_BLOCK) as usize]);
    let writes = Arc::new(AtomicUsize::new(0));
    let dev = SlowDevice {
        inner: MemDevice::new(&disk),
        delay,
        writes: writes.clone(),
        fail_after,
        failed: Vec::new(),
    };
    let geo = LogGeometry {
        start_lba: 0,
        blocks: LOG_BLOCKS,
        format_id: 7,
        epoch: 1,
    };
    let tail = Tail {
        end: FIRST_LSN,
        block: vec![0; LOG_BLOCK as usize],
    };
    let wal = Wal::new(dev, geo, CommitMode::Fua, env, 8, FIRST_LSN, tail).expect("log");
    (wal, writes)
}

/// `THREADS` committers of `COMMITS` commits each: the LSNs they were told
/// are durable, or the first error each met.
fn commit_from_threads(wal: &Wal<SlowDevice>) -> Vec<Result<Vec<Lsn>, WalError>> {
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..THREADS)
            .map(|t| {
                s.spawn(move || {
                    let mut acked = Vec::new();
                    for i in 0..COMMITS {
                        let data = [t as u8, i as u8, 0xab, 0xcd];
                        let recs = [
                            Record::PageWrite {
                                page: PageId(t as u64),
                                offset: (i * 4) as u16,
                                data: &data,
                            },
                            Record::Commit { writes: 1 },
                        ];
                        let end = wal.append(&recs)?;
                        wal.wait_durable(end)?;
                        acked.push(end);
                    }
                    Ok(acked)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("committer"))
            .collect()
    })
}

/// Commits from `THREADS` threads on a log of 2 ms writes under `env`,
/// checking that every commit succeeded and was durable when acknowledged.
fn commit_all_durable(env: Env) -> Wal<SlowDevice> {
    let (wal, _) = wal(env, Duration::from_millis(2), None);
    let results = commit_from_threads(&wal);
    let durable = wal.durable_lsn();
    for r in &results {
        let acked = r.as_ref().expect("every commit succeeds");
        assert_eq!(acked.len(), COMMITS);
        assert!(acked.iter().all(|&l| l <= durable));
    }
    wal
}

#[test]
fn followers_of_a_slow_batch_sleep_and_all_wake_durable() {
    // Writes of 2 ms, far past the 100 us a follower spins at most.
    let wal = commit_all_durable(host::env());
    let s = wal.stats();
    assert_eq!(s.appends, (THREADS * COMMITS) as u64);
    assert!(s.follower_sleeps > 0, "no follower slept: {s:?}");
    // Group commit still groups: fewer batches than commits.
    assert!(s.batches < s.appends, "{s:?}");
}

#[test]
fn without_a_way_to_sleep_followers_spin() {
    let env = Env {
        sleep: None,
        ..host::env()
    };
    let wal = commit_all_durable(env);
    assert_eq!(wal.stats().follower_sleeps, 0);
}

#[test]
fn a_failed_batch_wakes_sleeping_followers_with_the_error() {
    // The 10th write fails: the log fails, and every committer, asleep or
    // not, returns an error instead of hanging; nothing is acknowledged
    // past the durable LSN.
    let (wal, writes) = wal(host::env(), Duration::from_millis(2), Some(9));
    let results = commit_from_threads(&wal);
    let durable = wal.durable_lsn();
    let mut failed = 0;
    for r in &results {
        match r {
            Ok(acked) => assert!(acked.iter().all(|&l| l <= durable)),
            Err(WalError::Device(_) | WalError::Failed(_)) => failed += 1,
            Err(e) => panic!("unexpected error {e}"),
        }
    }
    assert_eq!(failed, THREADS, "every committer meets the failure");
    assert!(wal.failure().is_some());
    // The failure stopped the writes: no write after the failed one.
    assert_eq!(writes.load(Ordering::SeqCst), 10);
}

static SLOW_RELAXES: AtomicUsize = AtomicUsize::new(0);

/// A spin step that gives the CPU away for 2 ms, as a yield does when
/// other work takes the CPUs (the yielder waits out its time slice).
fn relax_to_busy_neighbours() {
    SLOW_RELAXES.fetch_add(1, Ordering::SeqCst);
    std::thread::sleep(Duration::from_millis(2));
}

#[test]
fn followers_sleep_without_spinning_once_a_spin_gave_the_cpu_away() {
    let env = Env {
        relax: relax_to_busy_neighbours,
        ..host::env()
    };
    let start = std::time::Instant::now();
    let wal = commit_all_durable(env);
    let elapsed_ms = start.elapsed().as_millis() as u64;
    let s = wal.stats();
    let relaxes = SLOW_RELAXES.load(Ordering::SeqCst) as u64;
    // Every follower's spin step was slow and counted as such (the log's
    // spin locks relax too, uncounted); after each, followers slept
    // without spinning for 10 ms, so there were about as many as there
    // were 10 ms periods (the followers spinning when one ends may each
    // take a step), not a spin budget's worth per wait.
    assert!(s.slow_relaxes > 0, "{s:?}");
    assert!(s.slow_relaxes <= relaxes, "{relaxes}: {s:?}");
    assert!(
        relaxes <= (elapsed_ms / 10 + 1) * THREADS as u64,
        "{relaxes} slow spin steps in {elapsed_ms} ms: {s:?}"
    );
    assert!(s.follower_sleeps > 0, "{s:?}");
}

#[test]
fn quick_spin_steps_are_not_counted_as_slow() {
    let env = Env {
        relax: core::hint::spin_loop,
        ..host::env()
    };
    let wal = commit_all_durable(env);
    assert_eq!(wal.stats().slow_relaxes, 0, "{:?}", wal.stats());
}
