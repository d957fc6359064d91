//! Crash torture: concurrent transactions, a power cut at a random point,
//! recovery, and an exact check of what survived.
//!
//! Each seed runs three rounds on one disk. A round opens the engine (which
//! recovers), checks it holds exactly the expected table, then runs three
//! committer threads and a checkpointer while the power-cut disk cuts the
//! power after a random number of operations (or at the end). Every
//! transaction writes 2-4 keys of a 240-key table (on 3 pages) with values unique to
//! it, and records its commit LSN and whether its commit was acknowledged.
//! After the cut a fresh engine recovers the crash image, and the table
//! must equal exactly the result of applying, in log order, every
//! transaction whose commit record ends at or before the recovered end —
//! and that end must cover every acknowledged commit. So every acknowledged
//! transaction is present in full, and no other transaction is partly
//! visible.
//!
//! The cuts must have done what they are there for: over the seeds, writes
//! not yet durable were lost and others torn, and logged transactions whose
//! commit was never acknowledged were lost with them (as `crash.rs`
//! requires of the guest's cuts); a run whose cuts only ever fell between
//! durable writes would prove nothing.
//!
//! `DBOS_TORTURE_SEEDS=N` runs N seeds (default 500, about 15 s; those
//! requirements are checked from 50 seeds up); `DBOS_TORTURE_FIRST` the
//! first seed (default 0).

mod common;

use common::*;
use dbos_bufferpool::engine::Error;
use dbos_bufferpool::{CommitMode, KvTable, Layout, Lsn, PageId, WalError};
use dbos_nvme::host::powercut::Rng;
use std::sync::Mutex;

const KEYS: u64 = 240;
const PAGES: u64 = 3;
const THREADS: u64 = 3;
const TXNS_PER_THREAD: u64 = 60;
const ROUNDS: u64 = 3;
const LAYOUT: Layout = Layout {
    log_blocks: 24,
    data_pages: PAGES,
};

/// The table key of test key `k`: keys are spread over the pages.
fn slot(k: u64) -> u64 {
    (k % PAGES) * dbos_bufferpool::kv::SLOTS_PER_PAGE + k / PAGES
}

struct Txn {
    end: Lsn,
    puts: Vec<(u64, u64)>,
    acked: bool,
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .map(|v| v.parse().expect("a number"))
        .unwrap_or(default)
}

#[test]
fn crash_torture() {
    let seeds = env_u64("DBOS_TORTURE_SEEDS", 500);
    let first = env_u64("DBOS_TORTURE_FIRST", 0);
    let mut totals = [0u64; 7];
    for seed in first..first + seeds {
        let t = run_seed(seed);
        for (a, b) in totals.iter_mut().zip(t) {
            *a += b;
        }
    }
    let [logged, acked, recovered, repaired, lost, torn, lost_txns] = totals;
    eprintln!(
        "torture: {seeds} seeds x {ROUNDS} rounds: {logged} transactions logged, {acked} \
         acknowledged, {recovered} recovered, {repaired} pages repaired; the cuts lost \
         {lost} and tore {torn} writes not yet durable, and {lost_txns} logged transactions \
         with them"
    );
    assert!(acked > 0);
    if seeds >= 50 {
        assert!(lost > 0, "no cut lost a write");
        assert!(torn > 0, "no cut tore a write");
        assert!(
            lost_txns > 0,
            "no cut lost a logged, unacknowledged transaction"
        );
    }
}

/// Returns (logged, acknowledged, recovered, pages repaired, writes the
/// cuts lost, writes they tore, logged transactions not recovered).
fn run_seed(seed: u64) -> [u64; 7] {
    let mut rng = Rng::new(seed);
    let mode = if seed.is_multiple_of(2) {
        CommitMode::Fua
    } else {
        CommitMode::WriteFlush
    };
    let mut image = {
        let (dev, pc) = memory_device(vec![0; disk_bytes(LAYOUT)]);
        drop(format(&dev, LAYOUT, mode));
        pc.current()
    };
    let mut expected = vec![0u64; KEYS as usize];
    let mut totals = [0u64; 7];
    for round in 0..ROUNDS {
        let (dev, pc) = memory_device(image);
        let (engine, _) = open(&dev, mode).unwrap();
        let kv = KvTable::new(&engine, PageId(0), PAGES);
        for k in 0..KEYS {
            assert_eq!(
                kv.get(slot(k)).unwrap(),
                expected[k as usize],
                "seed {seed} round {round} key {k}"
            );
        }
        pc.cut_after(1 + rng.below(300), rng.next_u64());
        let txns = Mutex::new(Vec::<Txn>::new());
        let done = std::sync::atomic::AtomicU64::new(0);
        std::thread::scope(|s| {
            for t in 0..THREADS {
                let mut rng = Rng::new(rng.next_u64());
                let (kv, txns, done, engine) = (&kv, &txns, &done, &engine);
                s.spawn(move || {
                    for i in 0..TXNS_PER_THREAD {
                        let n = 2 + rng.below(3);
                        let mut puts: Vec<(u64, u64)> = Vec::new();
                        while (puts.len() as u64) < n {
                            let k = rng.below(KEYS);
                            if puts.iter().all(|p| p.0 != k) {
                                let v = (seed << 32 | round << 24 | t << 16 | i) * 8
                                    + puts.len() as u64
                                    + 1;
                                puts.push((k, v));
                            }
                        }
                        let table_puts: Vec<(u64, u64)> =
                            puts.iter().map(|&(k, v)| (slot(k), v)).collect();
                        let end = loop {
                            match kv.put_async(&table_puts) {
                                Ok(end) => break Some(end),
                                Err(Error::Log(WalError::LogFull { .. })) => {
                                    if engine.checkpoint().is_err() {
                                        break None;
                                    }
                                }
                                Err(_) => break None,
                            }
                        };
                        let Some(end) = end else { break };
                        let acked = engine.wait_durable(end).is_ok();
                        txns.lock().unwrap().push(Txn { end, puts, acked });
                        if !acked {
                            break;
                        }
                    }
                    done.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                });
            }
            s.spawn(|| {
                while done.load(std::sync::atomic::Ordering::SeqCst) < THREADS {
                    if engine.checkpoint().is_err() {
                        break;
                    }
                    std::thread::sleep(std::time::Duration::from_micros(100));
                }
            });
        });
        let was_cut = pc.is_cut();
        pc.cut(rng.next_u64());
        let (crash, cut) = pc.image().unwrap();
        if std::env::var("DBOS_TORTURE_VERBOSE").is_ok() {
            eprintln!(
                "seed {seed} round {round}: cut by the disk {was_cut}, {:?}, {cut:?}",
                pc.stats()
            );
        }
        drop(engine);
        drop(dev);
        let mut txns = txns.into_inner().unwrap();
        txns.sort_by_key(|t| t.end);
        // Recover and check.
        let (dev, pc) = memory_device(crash);
        let (engine, report) = open(&dev, mode).unwrap();
        for t in txns.iter().filter(|t| t.acked) {
            assert!(
                t.end <= report.end,
                "seed {seed} round {round}: acknowledged commit at {:?} lost (recovered to {:?})",
                t.end,
                report.end
            );
        }
        for t in txns.iter().filter(|t| t.end <= report.end) {
            for &(k, v) in &t.puts {
                expected[k as usize] = v;
            }
            totals[2] += 1;
        }
        let kv = KvTable::new(&engine, PageId(0), PAGES);
        for k in 0..KEYS {
            assert_eq!(
                kv.get(slot(k)).unwrap(),
                expected[k as usize],
                "seed {seed} round {round} key {k}: report {report:?}"
            );
        }
        totals[0] += txns.len() as u64;
        totals[1] += txns.iter().filter(|t| t.acked).count() as u64;
        totals[3] += report.pages_repaired.len() as u64;
        totals[4] += cut.lost as u64;
        totals[5] += cut.torn as u64;
        totals[6] += txns.iter().filter(|t| t.end > report.end).count() as u64;
        drop(engine);
        image = pc.current();
    }
    totals
}
