//! The engine on a buffer pool much smaller than its data (issue 11): random
//! transactions model-checked through eviction, checkpoints and a power cut,
//! recovery redoing through the small pool; the write-ahead rule for pages
//! written by eviction, checked on the device; a checkpoint that meets a
//! latched dirty page waits for it. For the vmcache-style pool, the hash
//! pool and Tabby (on libdbos's process platform).

mod common;

use common::*;
use dbos_bufferpool::control::{Control, Layout};
use dbos_bufferpool::device::{BlockDevice, DeviceError, DmaBytes, Io, IoBuf, IoKind, IoTag};
use dbos_bufferpool::engine::PoolSetup;
use dbos_bufferpool::fuzzing::{self, MemDisk};
use dbos_bufferpool::host::{block_device, ProcessBlockDevice};
use dbos_bufferpool::log::scan;
use dbos_bufferpool::page::{self, PAGE_CONTENTS, PAGE_HEADER};
use dbos_bufferpool::pool::hash::HashPool;
use dbos_bufferpool::pool::tabby::{Tabby, TabbyConfig};
use dbos_bufferpool::pool::vmcache::VmCache;
use dbos_bufferpool::pool::{BufferManager, Pool, PoolConfig};
use dbos_bufferpool::{
    CommitMode, Config, Engine, KvTable, Lsn, PageId, PageWrite, PoolError, PAGE_SIZE,
};
use dbos_nvme::host::powercut::Fate;
use dbos_nvme::host::Device;
use libdbos::process::ProcessPlatform;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// 256 data pages; the pools below hold 8 of them.
const BIG: Layout = Layout {
    log_blocks: 128,
    data_pages: 256,
};
const FRAMES_SMALL: usize = 8;

/// A deterministic generator (xorshift).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Builds a pool of `FRAMES_SMALL` frames on queues of a process device.
type MakePool<B> = fn(&Device, PoolSetup) -> Result<B, PoolError>;

fn small_config(setup: PoolSetup) -> PoolConfig {
    PoolConfig {
        evict_batch: 2,
        ..setup.config(FRAMES_SMALL)
    }
}

fn queues(dev: &Device) -> Vec<ProcessBlockDevice> {
    vec![
        block_device(dev, 64).unwrap(),
        block_device(dev, 64).unwrap(),
    ]
}

fn vmcache(dev: &Device, setup: PoolSetup) -> Result<VmCache<ProcessBlockDevice>, PoolError> {
    VmCache::new(queues(dev), small_config(setup))
}

fn hash(dev: &Device, setup: PoolSetup) -> Result<HashPool<ProcessBlockDevice>, PoolError> {
    HashPool::new(queues(dev), small_config(setup))
}

/// Tabby's configuration for an engine's `setup`, from a process pool's.
fn tabby_config(cfg: PoolConfig) -> TabbyConfig {
    TabbyConfig::of(PoolConfig { pages: None, ..cfg })
}

fn tabby(
    dev: &Device,
    setup: PoolSetup,
) -> Result<Tabby<ProcessPlatform, ProcessBlockDevice>, PoolError> {
    Tabby::new(
        tabby_platform(),
        queues(dev),
        tabby_config(small_config(setup)),
    )
}

fn tabby_mem<D: BlockDevice>(
    devs: Vec<D>,
    cfg: PoolConfig,
) -> Result<Tabby<ProcessPlatform, D>, PoolError> {
    Tabby::new(tabby_platform(), devs, tabby_config(cfg))
}

/// One random transaction: 1 to 3 writes of 1 to 64 random bytes at random
/// places of random pages.
fn random_txn(rng: &mut Rng) -> Vec<(PageId, usize, Vec<u8>)> {
    (0..1 + rng.below(3))
        .map(|_| {
            let page = PageId(rng.below(BIG.data_pages));
            let len = 1 + rng.below(64) as usize;
            let offset = PAGE_HEADER + rng.below((PAGE_CONTENTS - len) as u64) as usize;
            let data = (0..len).map(|_| rng.next() as u8).collect();
            (page, offset, data)
        })
        .collect()
}

fn as_writes(txn: &[(PageId, usize, Vec<u8>)]) -> Vec<PageWrite<'_>> {
    txn.iter()
        .map(|(page, offset, data)| PageWrite {
            page: *page,
            offset: *offset,
            data,
        })
        .collect()
}

/// The model: every page's contents.
fn apply(model: &mut [Vec<u8>], txn: &[(PageId, usize, Vec<u8>)]) {
    for (page, offset, data) in txn {
        let at = offset - PAGE_HEADER;
        model[page.0 as usize][at..at + data.len()].copy_from_slice(data);
    }
}

fn page_contents<B: BufferManager>(e: &Engine<ProcessBlockDevice, B>, p: u64) -> Vec<u8> {
    let mut got = vec![0u8; PAGE_CONTENTS];
    e.read(PageId(p), PAGE_HEADER, &mut got).unwrap();
    got
}

/// Seeds of [`random_commits_survive_a_power_cut`]: enough that the
/// transaction in flight at the cut is both kept and lost.
const CUT_SEEDS: u64 = 6;

/// 400 random transactions on 256 pages through an 8-frame pool, with
/// checkpoints; then one more, whose log write is in flight when the power
/// is cut (FUA log writes that completed are durable; page writes since the
/// last flush, and the write in flight, are each kept, lost or torn, as the
/// seed decides). Recovery, through an 8-frame pool too, must find exactly
/// the acknowledged transactions, plus the last one entirely or not at all;
/// over the seeds, both must happen (the last transaction kept, and lost),
/// and it must never survive a cut that lost its log write.
fn random_commits_survive_a_power_cut<B: BufferManager>(name: &str, make: MakePool<B>) {
    let mut outcomes = [0; 2];
    for seed in 0..CUT_SEEDS {
        let (dev, pc) = memory_device(vec![0; disk_bytes(BIG)]);
        let (l, d) = devices(&dev);
        let e = Engine::format(l, d, BIG, config(CommitMode::Fua), |s| make(&dev, s)).unwrap();
        let mut model = vec![vec![0u8; PAGE_CONTENTS]; BIG.data_pages as usize];
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let mut written_before_checkpoint = None;
        for t in 0..400 {
            if t % 150 == 149 {
                if written_before_checkpoint.is_none() {
                    written_before_checkpoint = Some(e.pool().stats().writes);
                }
                e.checkpoint().unwrap();
            }
            let txn = random_txn(&mut rng);
            e.commit(&as_writes(&txn)).unwrap();
            apply(&mut model, &txn);
            // Reads through the pool see the model, whatever was evicted.
            if t % 20 == 0 {
                let p = txn[0].0 .0;
                assert_eq!(page_contents(&e, p), model[p as usize], "{name}: page {p}");
            }
        }
        let stats = e.pool().stats();
        assert_eq!(e.pool().capacity(), FRAMES_SMALL);
        assert!(stats.evictions > 300, "{name}: {stats:?}");
        assert!(
            written_before_checkpoint.unwrap() > 0,
            "{name}: eviction wrote no page before the first checkpoint"
        );
        assert!(e.stats().checkpoints >= 2, "{name}: {:?}", e.stats());
        let last = random_txn(&mut rng);
        let end = e.append_commit(&as_writes(&last)).unwrap();
        let mut with_last = model.clone();
        apply(&mut with_last, &last);
        // Appending wrote nothing to the log yet: its write is the next one
        // to reach the disk. Cut the power with it in flight.
        pc.cut_at_write(pc.stats().write_commands + 1, seed);
        assert!(
            e.wait_durable(end).is_err(),
            "{name} seed {seed}: a commit acknowledged across a power cut"
        );
        let (img, cut) = pc.image().expect("the power was cut at the log write");
        let fate = cut.in_flight.expect("the log write was in flight").fate;
        drop(e);
        let (dev2, _) = memory_device(img);
        let (l, d) = devices(&dev2);
        let (e2, report) = Engine::open(l, d, config(CommitMode::Fua), |s| make(&dev2, s))
            .unwrap_or_else(|err| panic!("{name} seed {seed}: {err}"));
        // The redo touched many more pages than the pool holds (each image
        // is a page), so recovery itself evicted.
        assert!(report.transactions > 10, "{name}: {report:?}");
        assert!(
            report.page_images > 2 * FRAMES_SMALL as u64,
            "{name}: {report:?}"
        );
        assert!(e2.pool().stats().evictions > 0, "{name}");
        let touched: Vec<u64> = last.iter().map(|w| w.0 .0).collect();
        let has_last = touched
            .iter()
            .all(|&p| page_contents(&e2, p) == with_last[p as usize]);
        for p in 0..BIG.data_pages {
            let want = if has_last { &with_last } else { &model };
            assert_eq!(
                page_contents(&e2, p),
                want[p as usize],
                "{name} seed {seed}: page {p} (last transaction {})",
                if has_last { "kept" } else { "lost" }
            );
        }
        assert!(
            !(has_last && fate == Fate::Lost),
            "{name} seed {seed}: the last transaction survived the loss of its log write"
        );
        outcomes[has_last as usize] += 1;
        // Recovery and the checks went through 8 frames for 256 pages.
        assert!(e2.pool().stats().evictions > 200, "{name}");
    }
    assert!(
        outcomes[0] > 0 && outcomes[1] > 0,
        "{name}: over {CUT_SEEDS} cuts the last transaction was lost {} times and kept {} times",
        outcomes[0],
        outcomes[1]
    );
}

#[test]
fn random_commits_on_a_small_vmcache_survive_a_power_cut() {
    random_commits_survive_a_power_cut("vmcache", vmcache);
}

#[test]
fn random_commits_on_a_small_hash_pool_survive_a_power_cut() {
    random_commits_survive_a_power_cut("hash pool", hash);
}

#[test]
fn random_commits_on_a_small_tabby_survive_a_power_cut() {
    random_commits_survive_a_power_cut("tabby", tabby);
}

// ---- the write-ahead rule, checked on the device ----

/// A page write that reached the device before the log on the device
/// covered its page LSN.
struct Violation {
    page: PageId,
    lsn: Lsn,
    log_end: Lsn,
}

/// The pool's device: before every page write reaches the disk, it scans
/// the log on the disk (as recovery would) and records a violation if the
/// log does not reach the page's LSN.
struct CheckingDevice {
    disk: Arc<MemDisk>,
    inner: fuzzing::MemDevice,
    scanner: fuzzing::MemDevice,
    buf: DmaBytes,
    first_block: u64,
    checked: Arc<AtomicU64>,
    violations: Arc<Mutex<Vec<Violation>>>,
}

impl CheckingDevice {
    fn log_end(&mut self) -> Lsn {
        let control = self
            .disk
            .with(|d| Control::newest(&d[..4096], &d[4096..8192]))
            .expect("a control block");
        let s = scan(
            &mut self.scanner,
            &control.log_geometry(),
            control.redo,
            control.epoch_start,
            &mut self.buf,
            fuzzing::env(),
            |_, _| Ok::<(), ()>(()),
        )
        .expect("scan");
        assert_eq!(s.damage, None);
        s.end
    }
}

// SAFETY: every request goes to the inner device, which keeps the
// contract; the check only reads a write's buffer at submission.
unsafe impl BlockDevice for CheckingDevice {
    fn block_count(&self) -> u64 {
        self.inner.block_count()
    }

    fn alloc(&mut self, blocks: usize) -> Result<IoBuf, DeviceError> {
        self.inner.alloc(blocks)
    }

    fn submit(&mut self, io: &Io) -> Result<IoTag, DeviceError> {
        if matches!(io.kind, IoKind::Write | IoKind::WriteFua) {
            // SAFETY: io.addr is a live buffer from `alloc` (device
            // addresses are host addresses) of `blocks` pages.
            let buf = unsafe {
                std::slice::from_raw_parts(io.addr.0 as *const u8, io.blocks as usize * PAGE_SIZE)
            };
            let log_end = self.log_end();
            for (i, img) in buf.chunks(PAGE_SIZE).enumerate() {
                let lsn = page::page_lsn(img);
                self.checked.fetch_add(1, Ordering::Relaxed);
                if lsn > log_end {
                    self.violations.lock().unwrap().push(Violation {
                        page: PageId(io.lba - self.first_block + i as u64),
                        lsn,
                        log_end,
                    });
                }
            }
        }
        self.inner.submit(io)
    }

    fn poll(&mut self) -> Option<(IoTag, Result<(), DeviceError>)> {
        self.inner.poll()
    }

    fn in_flight(&self) -> usize {
        self.inner.in_flight()
    }
}

struct Checks {
    checked: Arc<AtomicU64>,
    violations: Arc<Mutex<Vec<Violation>>>,
}

fn checking_devices(
    disk: &Arc<MemDisk>,
    setup: &PoolSetup,
    checks: &Checks,
) -> Vec<CheckingDevice> {
    (0..2)
        .map(|_| {
            let mut scanner = fuzzing::MemDevice::new(disk);
            let buf = DmaBytes::new(scanner.alloc(64).unwrap());
            CheckingDevice {
                disk: disk.clone(),
                inner: fuzzing::MemDevice::new(disk),
                scanner,
                buf,
                first_block: setup.first_block,
                checked: checks.checked.clone(),
                violations: checks.violations.clone(),
            }
        })
        .collect()
}

/// Transactions appended without waiting for the log: every page the pool
/// evicts carries an LSN the log has not made durable yet, so each
/// eviction must make the log durable first; the device sees the log
/// reach the page's LSN before every page write.
fn eviction_writes_no_page_before_its_log<B: BufferManager>(
    name: &str,
    make: fn(Vec<CheckingDevice>, PoolConfig) -> Result<B, PoolError>,
) {
    let layout = Layout {
        log_blocks: 256,
        data_pages: 64,
    };
    let disk = MemDisk::new(vec![0; layout.blocks() as usize * 4096]);
    let checks = Checks {
        checked: Arc::new(AtomicU64::new(0)),
        violations: Arc::new(Mutex::new(Vec::new())),
    };
    let e = Engine::format(
        fuzzing::MemDevice::new(&disk),
        fuzzing::MemDevice::new(&disk),
        layout,
        Config {
            checkpoint_percent: 0,
            ..fuzzing::config()
        },
        |setup| {
            let devs = checking_devices(&disk, &setup, &checks);
            make(
                devs,
                PoolConfig {
                    evict_batch: 2,
                    relax: fuzzing::env().relax,
                    ..setup.config(FRAMES_SMALL)
                },
            )
        },
    )
    .unwrap();
    let kv = KvTable::new(&e, PageId(0), layout.data_pages);
    let per_page = dbos_bufferpool::kv::SLOTS_PER_PAGE;
    let mut last = Lsn::ZERO;
    for i in 0..300u64 {
        // Keys on pages in a stride, so the 8 frames keep evicting.
        let key = (i * 7 % layout.data_pages) * per_page + i % per_page;
        last = kv.put_async(&[(key, i + 1)]).unwrap();
    }
    assert!(e.wal().durable_lsn() < last, "{name}: nothing waited");
    let evicted = e.pool().stats().writes;
    assert!(evicted > 100, "{name}: {:?}", e.pool().stats());
    assert!(checks.checked.load(Ordering::Relaxed) >= evicted);
    let no_violations = |when: &str| {
        let v = checks.violations.lock().unwrap();
        if let Some(first) = v.first() {
            panic!(
                "{name} ({when}): {} page writes ahead of the log; the first: page {} with \
                 LSN {} written while the log on the device ended at {}",
                v.len(),
                first.page.0,
                first.lsn.0,
                first.log_end.0
            );
        }
    };
    no_violations("eviction");
    // Eviction made the log durable, in batches.
    assert!(
        e.wal().stats().batches > 10,
        "{name}: {:?}",
        e.wal().stats()
    );
    e.checkpoint().unwrap();
    no_violations("checkpoint");
    for i in 0..300u64 {
        let key = (i * 7 % layout.data_pages) * per_page + i % per_page;
        assert_eq!(kv.get(key).unwrap(), i + 1);
    }
}

#[test]
fn eviction_writes_no_page_before_its_log_vmcache() {
    eviction_writes_no_page_before_its_log("vmcache", VmCache::new);
}

#[test]
fn eviction_writes_no_page_before_its_log_hash_pool() {
    eviction_writes_no_page_before_its_log("hash pool", HashPool::new);
}

#[test]
fn eviction_writes_no_page_before_its_log_tabby() {
    eviction_writes_no_page_before_its_log("tabby", tabby_mem);
}

// ---- a checkpoint and a latched dirty page ----

/// A checkpoint that finds a dirty page latched exclusively waits for it
/// (it may not skip it and advance the redo point past its change), then
/// writes it.
fn a_checkpoint_waits_for_a_latched_dirty_page<B: BufferManager>(
    name: &str,
    make: fn(Vec<fuzzing::MemDevice>, PoolConfig) -> Result<B, PoolError>,
) {
    let layout = Layout {
        log_blocks: 16,
        data_pages: 16,
    };
    let disk = MemDisk::new(vec![0; layout.blocks() as usize * 4096]);
    let e = Engine::format(
        fuzzing::MemDevice::new(&disk),
        fuzzing::MemDevice::new(&disk),
        layout,
        Config {
            checkpoint_percent: 0,
            ..fuzzing::config()
        },
        |setup| {
            make(
                vec![fuzzing::MemDevice::new(&disk)],
                PoolConfig {
                    relax: std::thread::yield_now,
                    ..setup.config(FRAMES_SMALL)
                },
            )
        },
    )
    .unwrap();
    let page3 = layout.page_lba(PageId(3)) as usize * 4096;
    let value = [0x5au8; 8];
    let lsn = e
        .commit(&[PageWrite {
            page: PageId(3),
            offset: 1000,
            data: &value,
        }])
        .unwrap();
    let redo_before = e.control().redo;
    let done = AtomicBool::new(false);
    std::thread::scope(|s| {
        let guard = e.pool().fix_exclusive(PageId(3)).unwrap();
        let ckpt = s.spawn(|| {
            let r = e.checkpoint();
            done.store(true, Ordering::SeqCst);
            r
        });
        std::thread::sleep(Duration::from_millis(300));
        assert!(
            !done.load(Ordering::SeqCst),
            "{name}: the checkpoint completed past a latched dirty page"
        );
        assert_eq!(e.control().redo, redo_before, "{name}");
        assert!(
            disk.with(|d| d[page3 + 1000..page3 + 1008] != value),
            "{name}: written under the latch"
        );
        drop(guard);
        let report = ckpt.join().unwrap().unwrap();
        assert!(report.redo >= lsn, "{name}");
        assert_eq!(report.pages_written, 1, "{name}");
    });
    assert!(done.load(Ordering::SeqCst));
    assert!(
        disk.with(|d| d[page3 + 1000..page3 + 1008] == value),
        "{name}: the checkpoint did not write the page"
    );
    assert_eq!(
        disk.with(|d| page::verify(&d[page3..page3 + PAGE_SIZE], PageId(3))),
        page::PageCheck::Valid
    );
}

#[test]
fn a_checkpoint_waits_for_a_latched_dirty_page_vmcache() {
    a_checkpoint_waits_for_a_latched_dirty_page("vmcache", VmCache::new);
}

#[test]
fn a_checkpoint_waits_for_a_latched_dirty_page_hash_pool() {
    a_checkpoint_waits_for_a_latched_dirty_page("hash pool", HashPool::new);
}

#[test]
fn a_checkpoint_waits_for_a_latched_dirty_page_tabby() {
    a_checkpoint_waits_for_a_latched_dirty_page("tabby", tabby_mem);
}

// ---- threads committing while the pool evicts and checkpoints run ----

/// Two committers (two keys per transaction, each its own keys) and a
/// checkpointing thread on 64 pages through an 8-frame pool (at most 4
/// pages fixed by the committers and 2 by the checkpoint's batch at once,
/// so a frame is always free); then a clean restart through an 8-frame
/// pool finds every key's last value.
fn threads_commit_through_a_small_pool<B: BufferManager>(name: &str, make: MakePool<B>) {
    committers_through_a_small_pool(name, make, 2, 2);
}

/// `threads` committers, `keys` keys per transaction (each on its own page,
/// each thread its own keys) and a checkpointing thread on 64 pages through
/// an 8-frame pool; then a clean restart through an 8-frame pool finds every
/// key's last value.
fn committers_through_a_small_pool<B: BufferManager>(
    name: &str,
    make: MakePool<B>,
    threads: u64,
    keys: u64,
) {
    let layout = Layout {
        log_blocks: 128,
        data_pages: 64,
    };
    let (dev, _pc) = memory_device(vec![0; disk_bytes(layout)]);
    let (l, d) = devices(&dev);
    let e = Engine::format(l, d, layout, config(CommitMode::Fua), |s| make(&dev, s)).unwrap();
    const PER_THREAD: u64 = 150;
    let per_page = dbos_bufferpool::kv::SLOTS_PER_PAGE;
    // Thread t's keys spread over every page.
    let key = |t: u64, i: u64| ((i * 13 + t * 5) % layout.data_pages) * per_page + t * 8 + i % 8;
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        let committers: Vec<_> = (0..threads)
            .map(|t| {
                let e = &e;
                s.spawn(move || {
                    let kv = KvTable::new(e, PageId(0), layout.data_pages);
                    for i in 0..PER_THREAD {
                        let puts: Vec<(u64, u64)> = (0..keys)
                            .map(|j| (key(t, i + j), t * 10_000 + i + 1))
                            .collect();
                        kv.put(&puts)
                            .unwrap_or_else(|err| panic!("{name}: thread {t} commit {i}: {err}"));
                    }
                })
            })
            .collect();
        s.spawn(|| {
            while !stop.load(Ordering::SeqCst) {
                e.checkpoint().unwrap();
                std::thread::sleep(Duration::from_millis(2));
            }
        });
        // Every committer joined and the checkpointer stopped before a
        // committer's panic is passed on (or the scope would wait forever
        // for the checkpointer).
        let results: Vec<_> = committers.into_iter().map(|c| c.join()).collect();
        stop.store(true, Ordering::SeqCst);
        for r in results {
            if let Err(panic) = r {
                std::panic::resume_unwind(panic);
            }
        }
    });
    assert!(
        e.pool().stats().evictions > 50,
        "{name}: {:?}",
        e.pool().stats()
    );
    assert!(e.stats().checkpoints > 1, "{name}");
    let want = |e: &Engine<ProcessBlockDevice, B>| {
        let kv = KvTable::new(e, PageId(0), layout.data_pages);
        let mut model = std::collections::BTreeMap::new();
        for t in 0..threads {
            for i in 0..PER_THREAD {
                for j in 0..keys {
                    model.insert(key(t, i + j), t * 10_000 + i + 1);
                }
            }
        }
        for (k, v) in model {
            assert_eq!(kv.get(k).unwrap(), v, "{name}: key {k}");
        }
    };
    want(&e);
    drop(e);
    let (l, d) = devices(&dev);
    let (e, _) = Engine::open(l, d, config(CommitMode::Fua), |s| make(&dev, s)).unwrap();
    want(&e);
}

/// Four committers of three pages each want 12 of the 8 frames at once:
/// commits wait for frames instead of failing.
fn crowded_committers_wait<B: BufferManager>(name: &str, make: MakePool<B>) {
    committers_through_a_small_pool(name, make, 4, 3);
}

#[test]
fn crowded_committers_wait_on_vmcache() {
    crowded_committers_wait("vmcache", vmcache);
}

#[test]
fn crowded_committers_wait_on_a_hash_pool() {
    crowded_committers_wait("hash pool", hash);
}

#[test]
fn crowded_committers_wait_on_tabby() {
    crowded_committers_wait("tabby", tabby);
}

#[test]
fn threads_commit_through_a_small_vmcache() {
    threads_commit_through_a_small_pool("vmcache", vmcache);
}

#[test]
fn threads_commit_through_a_small_hash_pool() {
    threads_commit_through_a_small_pool("hash pool", hash);
}

#[test]
fn threads_commit_through_a_small_tabby() {
    threads_commit_through_a_small_pool("tabby", tabby);
}

/// A transaction changing more distinct pages than half the pool's frames
/// is refused before anything is logged, with the limit named; the engine
/// keeps working, and a transaction of exactly the limit commits.
#[test]
fn a_transaction_larger_than_half_the_pool_is_refused() {
    let layout = Layout {
        log_blocks: 128,
        data_pages: 64,
    };
    let (dev, _pc) = memory_device(vec![0; disk_bytes(layout)]);
    let (l, d) = devices(&dev);
    let e = Engine::format(l, d, layout, config(CommitMode::Fua), |s| vmcache(&dev, s)).unwrap();
    assert_eq!(e.commit_page_limit(), FRAMES_SMALL / 2);
    let data = [7u8; 8];
    let writes = |n: u64| -> Vec<PageWrite<'_>> {
        (0..n)
            .map(|p| PageWrite {
                page: PageId(p * 3),
                offset: PAGE_HEADER,
                data: &data,
            })
            .collect()
    };
    let before = (e.stats(), e.wal().insert_lsn());
    let err = e.commit(&writes(5)).unwrap_err();
    assert!(
        matches!(
            err,
            dbos_bufferpool::Error::TooManyPages { pages: 5, limit: 4 }
        ),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        "a transaction changes 5 pages, more than the 4 that commits may hold fixed at once \
         (half the buffer pool)"
    );
    assert_eq!((e.stats(), e.wal().insert_lsn()), before, "nothing logged");
    // Two writes to one page count once.
    let mut same = writes(4);
    same.push(PageWrite {
        page: PageId(0),
        offset: PAGE_HEADER + 8,
        data: &data,
    });
    e.commit(&same).unwrap();
    let mut out = [0u8; 16];
    e.read(PageId(9), PAGE_HEADER, &mut out[..8]).unwrap();
    assert_eq!(out[..8], data);
    e.read(PageId(0), PAGE_HEADER, &mut out).unwrap();
    assert_eq!(out, [7u8; 16]);
}
