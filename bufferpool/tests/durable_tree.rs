//! The logged B+tree on the engine: a model test against `BTreeMap` with
//! eviction forced by a small pool, and power cuts at seeded device writes
//! during concurrent tree changes (splits and merges included). Both run on
//! every process pool: the hash pool, the vmcache-style pool and Tabby
//! (`Eviction::Tabby`, on libdbos's process platform).
//!
//! After every cut, recovery must give a tree that passes the full
//! structural check (`BTree::check`: order, fences, links, every page of
//! the tree's area reachable exactly once or free) and holds exactly the
//! changes whose log unit ends at or before the recovered end, applied in
//! log order; that end must cover every acknowledged change.
//!
//! Values are sometimes large enough for overflow chains, so cuts fall
//! between a chain's units and its leaf's, and the pending chains must be
//! freed at open.
//!
//! `DBOS_TREE_SEEDS=N` runs N power-cut seeds in all, split evenly over the
//! three pools (each runs N/3 rounded up, seeds of its own: the hash pool
//! `0..N/3`, vmcache the next N/3, Tabby the rest). The default is 600: 200
//! seeds per pool.

mod common;

use common::*;
use dbos_bufferpool::btree::{Applied, BTree, Change, TreeError, TreeLog};
use dbos_bufferpool::{BufferManager, CommitMode, Layout, Lsn, PageId};
use dbos_nvme::host::powercut::Rng;
use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Instant;

const LAYOUT: Layout = Layout {
    log_blocks: 48,
    data_pages: 96,
};

fn key(k: u64) -> Vec<u8> {
    format!("key{:05}", k).into_bytes()
}

/// A value unique to `tag`, of a length between 8 and 300 bytes.
fn value(tag: u64, rng: &mut Rng) -> Vec<u8> {
    let len = 8 + rng.below(293) as usize;
    let mut v = tag.to_le_bytes().to_vec();
    v.resize(len, (tag % 251) as u8);
    v
}

/// Like [`value`], but one in 8 is 1 to 3 overflow pages long.
fn value_or_large(tag: u64, rng: &mut Rng) -> Vec<u8> {
    if rng.below(8) != 0 {
        return value(tag, rng);
    }
    let len = 1100 + rng.below(11_000) as usize;
    let mut v = tag.to_le_bytes().to_vec();
    v.extend((8..len).map(|i| (i as u64 ^ tag) as u8));
    v
}

fn contents<B: BufferManager>(t: &BTree<'_, B>) -> BTreeMap<Vec<u8>, Vec<u8>> {
    let mut m = BTreeMap::new();
    t.scan_forward(None, |k, v| {
        m.insert(k.to_vec(), v.to_vec());
        true
    })
    .unwrap();
    m
}

fn apply_to(model: &mut BTreeMap<Vec<u8>, Vec<u8>>, changes: &[(Vec<u8>, Option<Vec<u8>>)]) {
    for (k, v) in changes {
        match v {
            Some(v) => model.insert(k.clone(), v.clone()),
            None => model.remove(k),
        };
    }
}

/// While alive, names what runs (pool, seed) on stderr if it panics, so
/// that a failure without a message of its own (an `unwrap`, a panic in a
/// thread of the test) still says where it happened.
struct Running(String);

impl Drop for Running {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("failed: {}", self.0);
        }
    }
}

fn as_changes(c: &[(Vec<u8>, Option<Vec<u8>>)]) -> Vec<Change<'_>> {
    c.iter()
        .map(|(k, v)| match v {
            Some(v) => Change::Upsert { key: k, val: v },
            None => Change::Delete { key: k },
        })
        .collect()
}

#[test]
fn logged_tree_matches_a_map_through_eviction_and_restarts() {
    tree_matches_a_map("hash", hash_pool);
    tree_matches_a_map("vmcache", vmcache_pool);
    tree_matches_a_map("tabby", tabby_pool);
}

/// [`logged_tree_matches_a_map_through_eviction_and_restarts`] on the pool
/// named `pool` that `make` builds.
fn tree_matches_a_map<B: BufferManager>(pool: &str, make: MakePool<B>) {
    let _running = Running(format!("{pool}: model test"));
    let started = Instant::now();
    let (dev, pc) = memory_device(vec![0; disk_bytes(LAYOUT)]);
    let engine = format_on(&dev, LAYOUT, CommitMode::Fua, make);
    let (t, created) = BTree::create_logged(engine.pool(), &engine, PageId(0)).unwrap();
    engine.wait_durable(created).unwrap();
    let meta = t.meta();
    let mut model = BTreeMap::new();
    let mut rng = Rng::new(7);
    let mut outcomes = 0;
    for i in 0..3000u64 {
        let k = key(rng.below(400));
        let c: Vec<(Vec<u8>, Option<Vec<u8>>)> = if rng.below(10) < 6 {
            vec![(k, Some(value(i, &mut rng)))]
        } else if rng.below(3) == 0 {
            // A transaction of three changes.
            (0..3)
                .map(|j| {
                    let k = key(rng.below(400));
                    if j == 1 {
                        (k, None)
                    } else {
                        (k, Some(value(i * 8 + j, &mut rng)))
                    }
                })
                .collect()
        } else {
            vec![(k, None)]
        };
        let before = model.len();
        let Applied { outcomes: o, lsn } = t.apply(&as_changes(&c)).unwrap();
        apply_to(&mut model, &c);
        if c.len() == 1 {
            // Upsert: the key was new; delete: it was there.
            let changed = if c[0].1.is_some() {
                model.len() > before
            } else {
                model.len() < before
            };
            assert_eq!(o, vec![changed], "{pool}: change {i}");
            outcomes += 1;
        }
        if let Some(lsn) = lsn {
            engine.wait_durable(lsn).unwrap();
        }
        if i % 500 == 499 {
            assert_eq!(t.check().unwrap(), model.len(), "{pool}: change {i}");
            assert_eq!(contents(&t), model, "{pool}: change {i}");
        }
    }
    assert!(outcomes > 1000, "{pool}");
    let (next, free) = t.space().unwrap();
    assert!(next > 20, "{pool}: the tree grew over {next} pages");
    let s = engine.pool().stats();
    assert!(
        s.evictions > 0 && s.reads > 0,
        "{pool}: the pool evicted: {s:?}"
    );
    assert!(
        engine.stats().checkpoints > 0,
        "{pool}: the log filled and checkpointed"
    );
    eprintln!(
        "{pool}: {next} pages, {free} free, {s:?}, {:?}",
        engine.stats()
    );
    let _ = t;
    drop(engine);
    // Without a clean shutdown: the disk as it is (everything acknowledged
    // is durable), recovered.
    let image = pc.current();
    drop(dev);
    let (dev, _pc) = memory_device(image);
    let (engine, report) = open_on(&dev, CommitMode::Fua, make).unwrap();
    assert!(report.transactions > 0, "{pool}");
    let t = BTree::open_logged(engine.pool(), &engine, meta).unwrap();
    assert_eq!(t.check().unwrap(), model.len(), "{pool}: after the restart");
    assert_eq!(contents(&t), model, "{pool}: after the restart");
    // Freed pages are reused after the restart: delete everything, then
    // fill again; the area does not grow.
    let keys: Vec<Vec<u8>> = model.keys().cloned().collect();
    for k in &keys {
        let a = t.apply(&[Change::Delete { key: k }]).unwrap();
        engine.wait_durable(a.lsn.unwrap()).unwrap();
    }
    assert_eq!(t.check().unwrap(), 0, "{pool}");
    let (next_empty, free_empty) = t.space().unwrap();
    assert!(free_empty > 5, "{pool}: merges freed pages: {free_empty}");
    for k in &keys {
        t.upsert(k, &[1; 200]).unwrap();
    }
    assert_eq!(
        t.space().unwrap().0,
        next_empty,
        "{pool}: freed pages reused"
    );
    assert_eq!(t.check().unwrap(), keys.len(), "{pool}");
    eprintln!("{pool}: model test in {:.1?}", started.elapsed());
}

#[test]
fn a_full_store_refuses_the_change_and_keeps_everything() {
    let layout = Layout {
        log_blocks: 48,
        data_pages: 12,
    };
    let (dev, _pc) = memory_device(vec![0; disk_bytes(layout)]);
    let engine = format(&dev, layout, CommitMode::Fua);
    let (t, _) = BTree::create_logged(engine.pool(), &engine, PageId(0)).unwrap();
    let mut model = BTreeMap::new();
    let mut full = None;
    for i in 0..1000u64 {
        let k = key(i);
        match t.upsert(&k, &[7; 500]) {
            Ok(_) => {
                model.insert(k, vec![7; 500]);
            }
            Err(e) => {
                full = Some(e);
                break;
            }
        }
    }
    assert_eq!(full, Some(TreeError::Full { pages: 12 }));
    assert!(full.unwrap().to_string().contains("disk full"));
    assert_eq!(t.check().unwrap(), model.len());
    assert_eq!(contents(&t), model);
    // Deleting still works on a full store, and makes room again.
    for i in 0..10 {
        assert!(t.delete(&key(i)).unwrap());
        model.remove(&key(i));
    }
    assert_eq!(contents(&t), model);
}

/// A unit of several values that do not fit one leaf together (here 6 of
/// 1000 bytes, into an empty tree and then into its leaves): the split that
/// makes room divides the unit's keys between two leaves. It once split the
/// empty leaf the undone unit left into two empty leaves, forever, growing
/// the store to its end (the load of `dbos-kv workload --load-batch 16
/// --value-size 1000` failed with "store full" after writing gigabytes).
#[test]
fn a_unit_too_large_for_one_leaf_is_divided_between_leaves() {
    let layout = Layout {
        log_blocks: 256,
        data_pages: 400,
    };
    let (dev, _pc) = memory_device(vec![0; disk_bytes(layout)]);
    let engine = format(&dev, layout, CommitMode::Fua);
    let (t, _) = BTree::create_logged(engine.pool(), &engine, PageId(0)).unwrap();
    let mut model = BTreeMap::new();
    let mut rng = Rng::new(7);
    for batch in 0..80u64 {
        let changes: Vec<(Vec<u8>, Option<Vec<u8>>)> = (0..6)
            .map(|i| {
                let k = key(rng.below(1 << 40) * 64 + i + batch * 6);
                (k, Some(vec![(batch + i) as u8; 1000]))
            })
            .collect();
        t.apply(&as_changes(&changes)).unwrap();
        apply_to(&mut model, &changes);
    }
    assert_eq!(t.check().unwrap(), 480);
    assert_eq!(contents(&t), model);
    // 480 values of ~1 KiB: about 3 per 4 KiB leaf when full, 1 or 2 when
    // just split; far below the 400 pages the unit loop once consumed.
    let (next, free) = t.space().unwrap();
    assert!(next - free < 300, "{next} pages of tree, {free} free");
}

struct Unit {
    end: Lsn,
    changes: Vec<(Vec<u8>, Option<Vec<u8>>)>,
    acked: bool,
}

const THREADS: u64 = 3;
const UNITS_PER_THREAD: u64 = 40;
const KEYS: u64 = 150;

#[test]
fn power_cuts_during_tree_changes_keep_the_tree_whole_and_exact() {
    let seeds: u64 = std::env::var("DBOS_TREE_SEEDS")
        .map(|v| v.parse().expect("a number"))
        .unwrap_or(600);
    let per_pool = seeds.div_ceil(3);
    let runs = [
        power_cuts_on("hash", 0..per_pool, hash_pool),
        power_cuts_on("vmcache", per_pool..2 * per_pool, vmcache_pool),
        power_cuts_on("tabby", 2 * per_pool..3 * per_pool, tabby_pool),
    ];
    let mut totals = [0u64; 5];
    for t in runs {
        for (a, b) in totals.iter_mut().zip(t) {
            *a += b;
        }
    }
    report_and_check("all pools", 3 * per_pool, totals);
}

/// The power-cut test's `seeds` on the pool named `pool` that `make`
/// builds, checked (as [`report_and_check`]) on their own; their totals.
fn power_cuts_on<B: BufferManager>(
    pool: &str,
    seeds: std::ops::Range<u64>,
    make: MakePool<B>,
) -> [u64; 5] {
    let started = Instant::now();
    let mut totals = [0u64; 5];
    for seed in seeds.clone() {
        let t = run_seed(pool, seed, make);
        for (a, b) in totals.iter_mut().zip(t) {
            *a += b;
        }
    }
    report_and_check(
        &format!("{pool} (seeds {seeds:?}, {:.1?})", started.elapsed()),
        seeds.end - seeds.start,
        totals,
    );
    totals
}

/// Prints the totals of `seeds` power-cut seeds and checks them: every
/// acknowledged unit recovered; over 50 seeds or more, some cut lost an
/// unacknowledged unit and some fell between a chain and its leaf.
fn report_and_check(what: &str, seeds: u64, totals: [u64; 5]) {
    let [logged, acked, recovered, lost, reclaimed] = totals;
    eprintln!(
        "durable tree, {what}: {seeds} seeds: {logged} units logged, {acked} acknowledged, \
         {recovered} recovered, {lost} logged but lost with the power, {reclaimed} overflow \
         pages of pending chains freed at open"
    );
    assert!(acked > 0 && recovered >= acked, "{what}");
    if seeds >= 50 {
        assert!(lost > 0, "{what}: no cut lost an unacknowledged unit");
        assert!(
            reclaimed > 0,
            "{what}: no cut fell between a chain and its leaf"
        );
    }
}

/// One seed on the pool named `pool` that `make` builds: two rounds of
/// concurrent changes cut short by the power.
fn run_seed<B: BufferManager>(pool: &str, seed: u64, make: MakePool<B>) -> [u64; 5] {
    let _running = Running(format!("{pool}: seed {seed}"));
    let mut rng = Rng::new(seed ^ 0x7eee);
    let mode = if seed.is_multiple_of(2) {
        CommitMode::Fua
    } else {
        CommitMode::WriteFlush
    };
    let (mut image, meta) = {
        let (dev, pc) = memory_device(vec![0; disk_bytes(LAYOUT)]);
        let engine = format_on(&dev, LAYOUT, mode, make);
        let (t, lsn) = BTree::create_logged(engine.pool(), &engine, PageId(0)).unwrap();
        engine.wait_durable(lsn).unwrap();
        let meta = t.meta();
        let _ = t;
        drop(engine);
        (pc.current(), meta)
    };
    let mut model = BTreeMap::new();
    let mut totals = [0u64; 5];
    for round in 0..2 {
        let (dev, pc) = memory_device(image);
        let (engine, _) = open_on(&dev, mode, make).unwrap();
        let t = BTree::open_logged(engine.pool(), &engine, meta).unwrap();
        assert_eq!(contents(&t), model, "{pool}: seed {seed} round {round}");
        pc.cut_after(1 + rng.below(400), rng.next_u64());
        let units = Mutex::new(Vec::<Unit>::new());
        std::thread::scope(|s| {
            for th in 0..THREADS {
                let mut rng = Rng::new(rng.next_u64());
                let (t, units, engine) = (&t, &units, &engine);
                s.spawn(move || {
                    for i in 0..UNITS_PER_THREAD {
                        let n = 1 + rng.below(3);
                        let changes: Vec<(Vec<u8>, Option<Vec<u8>>)> = (0..n)
                            .map(|j| {
                                let k = key(rng.below(KEYS));
                                let tag = seed << 32 | round << 24 | th << 16 | i << 4 | j;
                                if rng.below(4) == 0 {
                                    (k, None)
                                } else {
                                    (k, Some(value_or_large(tag, &mut rng)))
                                }
                            })
                            .collect();
                        let Ok(a) = t.apply(&as_changes(&changes)) else {
                            break;
                        };
                        let Some(end) = a.lsn else { continue };
                        let acked = engine.wait_durable(end).is_ok();
                        units.lock().unwrap().push(Unit {
                            end,
                            changes,
                            acked,
                        });
                        if !acked {
                            break;
                        }
                    }
                });
            }
        });
        pc.cut(rng.next_u64());
        let (crash, _) = pc.image().unwrap();
        let _ = t;
        drop(engine);
        drop(dev);
        let mut units = units.into_inner().unwrap();
        units.sort_by_key(|u| u.end);
        let (dev, pc) = memory_device(crash);
        let (engine, report) = open_on(&dev, mode, make)
            .unwrap_or_else(|e| panic!("{pool}: seed {seed} round {round}: open: {e}"));
        let t = BTree::open_logged(engine.pool(), &engine, meta)
            .unwrap_or_else(|e| panic!("{pool}: seed {seed} round {round}: open tree: {e}"));
        totals[4] += t.reclaimed_at_open();
        for u in &units {
            totals[0] += 1;
            if u.acked {
                totals[1] += 1;
                assert!(
                    u.end <= report.end,
                    "{pool}: seed {seed} round {round}: acknowledged unit at {:?} lost \
                     (recovered to {:?})",
                    u.end,
                    report.end
                );
            }
            if u.end <= report.end {
                totals[2] += 1;
                apply_to(&mut model, &u.changes);
            } else {
                totals[3] += 1;
            }
        }
        let n = t
            .check()
            .unwrap_or_else(|e| panic!("{pool}: seed {seed} round {round}: {e}"));
        let got = contents(&t);
        if got != model {
            let extra: Vec<_> = got.keys().filter(|k| !model.contains_key(*k)).collect();
            let missing: Vec<_> = model.keys().filter(|k| !got.contains_key(*k)).collect();
            let differ: Vec<_> = got
                .iter()
                .filter(|(k, v)| model.get(*k).is_some_and(|m| m != *v))
                .map(|(k, _)| k)
                .collect();
            for k in extra.iter().chain(&missing).chain(&differ) {
                for u in units
                    .iter()
                    .filter(|u| u.changes.iter().any(|c| &c.0 == *k))
                {
                    let c: Vec<_> = u
                        .changes
                        .iter()
                        .map(|(k, v)| (String::from_utf8_lossy(k), v.as_ref().map(|v| v[0])))
                        .collect();
                    eprintln!("unit end {:?} acked {} {c:?}", u.end, u.acked);
                }
            }
            panic!(
                "{pool}: seed {seed} round {round}: recovered to {:?} ({report:?}); \
                 extra {extra:?}, missing {missing:?}, different values {differ:?}",
                report.end
            );
        }
        assert_eq!(n, model.len(), "{pool}: seed {seed} round {round}");
        let _ = t;
        drop(engine);
        image = pc.current();
    }
    totals
}

#[test]
fn the_engine_logs_a_leaf_change_as_a_few_bytes_not_a_page() {
    let (dev, _pc) = memory_device(vec![0; disk_bytes(LAYOUT)]);
    let engine = format(&dev, LAYOUT, CommitMode::Fua);
    let (t, _) = BTree::create_logged(engine.pool(), &engine, PageId(0)).unwrap();
    for i in 0..20 {
        t.upsert(&key(i), &[1; 16]).unwrap();
    }
    // Past the first change of each page since the checkpoint (an image).
    let before = engine.stats();
    let a = t
        .apply(&[Change::Upsert {
            key: &key(25),
            val: &[2; 16],
        }])
        .unwrap();
    let after = engine.stats();
    assert_eq!(after.transactions - before.transactions, 1);
    assert_eq!(after.page_images, before.page_images);
    let logged = after.data_bytes - before.data_bytes;
    assert!(
        (24..600).contains(&logged),
        "an insert into a leaf of 20 entries logs {logged} bytes"
    );
    assert!(a.lsn.is_some());
    // A change that changes nothing logs nothing.
    let a = t.apply(&[Change::Delete { key: b"absent" }]).unwrap();
    assert_eq!(engine.stats().transactions, after.transactions);
    assert_eq!(a.outcomes, vec![false]);
    assert_eq!(a.lsn, None);
    let _: &dyn TreeLog<TestPool> = &engine;
}

/// A value for key number `k`, version `ver`, that says whose it is: its
/// length (small or 1 to 4 overflow pages) and every byte follow from both.
fn described(k: u64, ver: u64) -> Vec<u8> {
    let len = if ver % 4 == 3 {
        40
    } else {
        1100 + ((k * 7919 + ver * 104_729) % 14_000) as usize
    };
    let mut v = k.to_le_bytes().to_vec();
    v.extend(ver.to_le_bytes());
    v.extend((16..len).map(|i| (i as u64 ^ k ^ ver.rotate_left(8)) as u8));
    v
}

fn is_described(k: u64, v: &[u8]) -> bool {
    v.len() >= 16
        && v[..8] == k.to_le_bytes()
        && *v == described(k, u64::from_le_bytes(v[8..16].try_into().unwrap()))
}

#[test]
fn readers_see_whole_large_values_while_writers_replace_and_free_them() {
    let layout = Layout {
        log_blocks: 96,
        data_pages: 400,
    };
    let (dev, _pc) = memory_device(vec![0; disk_bytes(layout)]);
    let engine = format(&dev, layout, CommitMode::Fua);
    let (t, _) = BTree::create_logged(engine.pool(), &engine, PageId(0)).unwrap();
    const KEYS: u64 = 6;
    for k in 0..KEYS {
        t.upsert(&key(k), &described(k, 0)).unwrap();
    }
    let stop = std::sync::atomic::AtomicBool::new(false);
    let reads = std::sync::atomic::AtomicU64::new(0);
    std::thread::scope(|s| {
        let writers: Vec<_> = (0..2u64)
            .map(|th| {
                let t = &t;
                s.spawn(move || {
                    let mut rng = Rng::new(th + 1);
                    for i in 1..=150u64 {
                        let k = rng.below(KEYS);
                        if rng.below(6) == 0 {
                            t.delete(&key(k)).unwrap();
                        } else {
                            t.upsert(&key(k), &described(k, th << 32 | i)).unwrap();
                        }
                    }
                })
            })
            .collect();
        for th in 0..2u64 {
            let (t, stop, reads) = (&t, &stop, &reads);
            s.spawn(move || {
                let mut rng = Rng::new(th + 100);
                let mut out = Vec::new();
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let k = rng.below(KEYS);
                    if t.lookup(&key(k), &mut out).unwrap() {
                        assert!(is_described(k, &out), "a torn value of key {k}");
                    }
                    if rng.below(8) == 0 {
                        t.scan_forward(None, |kk, v| {
                            let k: u64 = std::str::from_utf8(&kk[3..]).unwrap().parse().unwrap();
                            assert!(is_described(k, v), "a torn value of key {k} in a scan");
                            true
                        })
                        .unwrap();
                    }
                    reads.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            });
        }
        for w in writers {
            w.join().unwrap();
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
    });
    let n = t.check().unwrap();
    let (next, free) = t.space().unwrap();
    eprintln!(
        "{} reads, {n} keys, {next} pages, {free} free, {:?}",
        reads.into_inner(),
        engine.pool().stats()
    );
    assert!(
        engine.pool().stats().evictions > 0,
        "chains were evicted and read back"
    );
}
