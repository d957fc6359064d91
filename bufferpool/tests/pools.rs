//! The buffer pools (vmcache-style, hash table, and Tabby on the process
//! platform in both eviction modes) and the B+tree on them:
//! model-based tests against `BTreeMap` with eviction forced by small
//! pools, concurrent readers and writers, dirty pages surviving eviction,
//! page identity checks, and the write-ahead rule.

mod common;

use dbos_bufferpool::btree::{BTree, TreeError, MAX_ENTRY};
use dbos_bufferpool::device::{BlockDevice, DeviceError, Io, IoBuf, IoKind, IoTag};
use dbos_bufferpool::fuzzing::{self, MemDisk};
use dbos_bufferpool::page::{self, PageCheck};
use dbos_bufferpool::pool::hash::HashPool;
use dbos_bufferpool::pool::tabby::{self, Eviction, Tabby, TabbyConfig};
use dbos_bufferpool::pool::vmcache::{PoolConfig, VmCache};
use dbos_bufferpool::pool::{
    BufferManager, Durability, DurabilityError, PageRead, Pool, PoolError, Stale,
};
use dbos_bufferpool::{Lsn, PageId, PAGE_SIZE};
use libdbos::platform::Platform;
use libdbos::process::{Config as PlatformConfig, ProcessPlatform};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

// ---- an in-memory device that records writes ----

/// One write as the device saw it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct WriteRecord {
    page: PageId,
    /// The page LSN in the written image.
    lsn: Lsn,
    /// How far the log was durable when the write was submitted.
    durable: Lsn,
}

struct Disk {
    mem: Arc<MemDisk>,
    writes: Mutex<Vec<WriteRecord>>,
    log: Arc<RecordingLog>,
}

impl Disk {
    fn new(pages: usize, log: Arc<RecordingLog>) -> Arc<Disk> {
        Arc::new(Disk {
            mem: MemDisk::new(vec![0; pages * PAGE_SIZE]),
            writes: Mutex::new(Vec::new()),
            log,
        })
    }
    fn page(&self, id: u64) -> Vec<u8> {
        let at = id as usize * PAGE_SIZE;
        self.mem.with(|b| b[at..at + PAGE_SIZE].to_vec())
    }
    fn set_page(&self, id: u64, img: &[u8]) {
        let at = id as usize * PAGE_SIZE;
        self.mem
            .with(|b| b[at..at + PAGE_SIZE].copy_from_slice(img));
    }
}

/// The in-memory device on a `Disk` that also records every page write
/// with the log's durable LSN at submission.
struct MemDevice {
    disk: Arc<Disk>,
    inner: fuzzing::MemDevice,
}

impl MemDevice {
    fn new(disk: &Arc<Disk>) -> MemDevice {
        MemDevice {
            disk: disk.clone(),
            inner: fuzzing::MemDevice::new(&disk.mem),
        }
    }
}

// SAFETY: every request goes to the inner device, which keeps the
// contract; the recording only reads a write's buffer at submission.
unsafe impl BlockDevice for MemDevice {
    fn block_count(&self) -> u64 {
        self.inner.block_count()
    }

    fn alloc(&mut self, blocks: usize) -> Result<IoBuf, DeviceError> {
        self.inner.alloc(blocks)
    }

    fn submit(&mut self, io: &Io) -> Result<IoTag, DeviceError> {
        if io.lba + io.blocks as u64 > self.block_count() {
            return Err(DeviceError::LbaOutOfRange);
        }
        if matches!(io.kind, IoKind::Write | IoKind::WriteFua) {
            // SAFETY: io.addr is a live buffer from `alloc` ("device
            // addresses" are host addresses) of at least `blocks` pages.
            let buf = unsafe {
                std::slice::from_raw_parts(io.addr.0 as *const u8, io.blocks as usize * PAGE_SIZE)
            };
            let durable = Lsn(self.disk.log.durable.load(Ordering::SeqCst));
            let mut w = self.disk.writes.lock().unwrap();
            for (i, img) in buf.chunks(PAGE_SIZE).enumerate() {
                w.push(WriteRecord {
                    page: PageId(io.lba + i as u64),
                    lsn: page::page_lsn(img),
                    durable,
                });
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

/// A [`Durability`] that records every request and how far it has made
/// the log durable: exactly as far as it is asked, unless told to fail.
#[derive(Default)]
struct RecordingLog {
    durable: AtomicU64,
    requests: Mutex<Vec<Lsn>>,
    fail: AtomicBool,
}

impl Durability for RecordingLog {
    fn ensure_durable(&self, lsn: Lsn) -> Result<(), DurabilityError> {
        self.requests.lock().unwrap().push(lsn);
        if self.fail.load(Ordering::SeqCst) {
            return Err(DurabilityError {
                durable: Lsn(self.durable.load(Ordering::SeqCst)),
            });
        }
        self.durable.fetch_max(lsn.0, Ordering::SeqCst);
        Ok(())
    }
}

#[derive(Clone, Copy, Debug)]
enum Kind {
    VmCache,
    Hash,
    /// Tabby on the process platform, evicting without shootdowns.
    Tabby,
    /// Tabby evicting the classic way (`invalidate_all` per page).
    TabbyInvalidateAll,
}

const KINDS: [Kind; 4] = [
    Kind::VmCache,
    Kind::Hash,
    Kind::Tabby,
    Kind::TabbyInvalidateAll,
];

/// The process platform the Tabby pools of this binary share (16 MiB of
/// frames, 2 CPUs).
fn platform() -> &'static ProcessPlatform {
    static P: OnceLock<&'static ProcessPlatform> = OnceLock::new();
    P.get_or_init(|| {
        ProcessPlatform::new(PlatformConfig {
            frames: 4096,
            cpus: 2,
            pin: false,
            ..PlatformConfig::default()
        })
        .expect("process platform")
    })
}

/// Tabby maps every page of its window at creation (2 mappings charged
/// each against `vm.max_map_count`, process-wide): its test devices are
/// capped so that the tests running at once stay far below the limit.
const TABBY_MAX_PAGES: usize = 2048;

fn tabby_config(cfg: PoolConfig, eviction: Eviction) -> TabbyConfig {
    TabbyConfig {
        eviction,
        ..TabbyConfig::of(cfg)
    }
}

fn config(capacity: usize, log: &Arc<RecordingLog>, batch: usize) -> PoolConfig {
    PoolConfig {
        capacity,
        allocated: 0,
        first_block: 0,
        pages: None,
        evict_batch: batch,
        durability: log.clone(),
        relax: std::thread::yield_now,
    }
}

/// A pool of `kind` with `capacity` frames over a disk of `disk_pages`,
/// `queues` device queues.
fn pool(
    kind: Kind,
    capacity: usize,
    disk_pages: usize,
    queues: usize,
) -> (Box<dyn BufferManager>, Arc<Disk>, Arc<RecordingLog>) {
    let log = Arc::new(RecordingLog::default());
    let disk_pages = match kind {
        Kind::Tabby | Kind::TabbyInvalidateAll => disk_pages.min(TABBY_MAX_PAGES),
        _ => disk_pages,
    };
    let disk = Disk::new(disk_pages, log.clone());
    let devs = (0..queues).map(|_| MemDevice::new(&disk)).collect();
    let cfg = config(capacity, &log, 8);
    let p: Box<dyn BufferManager> = match kind {
        Kind::VmCache => Box::new(VmCache::new(devs, cfg).unwrap()),
        Kind::Hash => Box::new(HashPool::new(devs, cfg).unwrap()),
        Kind::Tabby => {
            Box::new(Tabby::new(platform(), devs, tabby_config(cfg, Eviction::Tabby)).unwrap())
        }
        Kind::TabbyInvalidateAll => Box::new(
            Tabby::new(platform(), devs, tabby_config(cfg, Eviction::InvalidateAll)).unwrap(),
        ),
    };
    (p, disk, log)
}

fn fill(id: PageId, round: u8) -> Vec<u8> {
    (0..PAGE_SIZE - page::PAGE_HEADER)
        .map(|i| (id.0 as u8).wrapping_mul(31) ^ (i as u8) ^ round)
        .collect()
}

#[test]
fn dirty_pages_survive_eviction_and_reload() {
    for kind in KINDS {
        let (p, disk, _) = pool(kind, 8, 256, 1);
        let mut ids = Vec::new();
        for _ in 0..40 {
            let mut g = p.allocate().unwrap();
            let id = g.id();
            g.bytes_mut()[page::PAGE_HEADER..].copy_from_slice(&fill(id, 1));
            ids.push(id);
        }
        assert_eq!(ids, (0..40).map(PageId).collect::<Vec<_>>(), "{kind:?}");
        // Change every page once more after it was evicted.
        for &id in &ids {
            let mut g = p.fix_exclusive(id).unwrap();
            assert_eq!(
                &g.bytes()[page::PAGE_HEADER..],
                &fill(id, 1)[..],
                "{kind:?} {id:?}"
            );
            g.bytes_mut()[page::PAGE_HEADER..].copy_from_slice(&fill(id, 2));
        }
        for &id in ids.iter().rev() {
            let g = p.fix_shared(id).unwrap();
            assert_eq!(
                &g.bytes()[page::PAGE_HEADER..],
                &fill(id, 2)[..],
                "{kind:?} {id:?}"
            );
        }
        let s = p.stats();
        assert_eq!(s.allocations, 40);
        assert!(s.evictions >= 40 + 40 - 8, "{kind:?}: {s:?}");
        assert!(s.reads >= 40 + 40 - 8, "{kind:?}: {s:?}");
        // Every page was written at least once, sealed with its own id.
        p.flush().unwrap();
        for &id in &ids {
            let img = disk.page(id.0);
            assert_eq!(page::verify(&img, id), PageCheck::Valid, "{kind:?} {id:?}");
            assert_eq!(&img[page::PAGE_HEADER..], &fill(id, 2)[..]);
        }
        // Out of range.
        assert_eq!(
            p.fix_shared(PageId(40)).err(),
            Some(PoolError::OutOfRange {
                id: PageId(40),
                pages: 40
            })
        );
    }
}

#[test]
fn reads_check_the_page_identity() {
    for kind in KINDS {
        let (p, disk, _) = pool(kind, 4, 64, 1);
        for _ in 0..12 {
            let mut g = p.allocate().unwrap();
            let id = g.id();
            g.bytes_mut()[100] = id.0 as u8;
        }
        p.flush().unwrap();
        while p.evict(64).unwrap() > 0 {}
        // Page 5's slot holds page 3's image: a misdirected write.
        disk.set_page(5, &disk.page(3));
        assert_eq!(
            p.fix_shared(PageId(5)).err(),
            Some(PoolError::Corrupt {
                id: PageId(5),
                check: PageCheck::WrongId(PageId(3))
            }),
            "{kind:?}"
        );
        // A flipped bit.
        let mut img = disk.page(7);
        img[2000] ^= 4;
        disk.set_page(7, &img);
        assert_eq!(
            p.optimistic(PageId(7)).err(),
            Some(PoolError::Corrupt {
                id: PageId(7),
                check: PageCheck::BadChecksum
            }),
            "{kind:?}"
        );
        // A never-written slot (zeros) is not silently an empty page.
        disk.set_page(8, &[0; PAGE_SIZE]);
        assert_eq!(
            p.fix_exclusive(PageId(8)).err(),
            Some(PoolError::Corrupt {
                id: PageId(8),
                check: PageCheck::Empty
            })
        );
        // The pool still works, and a failed load left no trace.
        assert_eq!(p.fix_shared(PageId(3)).unwrap().bytes()[100], 3);
        disk.set_page(7, &{
            img[2000] ^= 4;
            img
        });
        assert_eq!(p.fix_shared(PageId(7)).unwrap().bytes()[100], 7);
    }
}

#[test]
fn write_ahead_rule_holds_on_eviction_and_flush() {
    for kind in KINDS {
        let (p, disk, log) = pool(kind, 4, 64, 1);
        // Pages with LSNs 100, 200, ..., 1600.
        for i in 0..16u64 {
            let mut g = p.allocate().unwrap();
            g.bytes_mut()[64] = i as u8;
            g.set_lsn(Lsn(100 * (i + 1)));
        }
        p.flush().unwrap();
        let writes = disk.writes.lock().unwrap().clone();
        assert_eq!(writes.len(), 16, "{kind:?}: every page written once");
        for w in &writes {
            assert_eq!(w.lsn, Lsn(100 * (w.page.0 + 1)));
            assert!(w.durable >= w.lsn, "{kind:?}: {w:?} written before its log");
        }
        // The log was asked exactly for each batch's largest LSN, never
        // beyond what the pages needed.
        let requests = log.requests.lock().unwrap().clone();
        assert_eq!(requests.iter().max(), Some(&Lsn(1600)));
        assert_eq!(log.durable.load(Ordering::SeqCst), 1600);

        // A failing log stops write-back: nothing is written, the page
        // stays resident, dirty and intact.
        let mut g = p.fix_exclusive(PageId(2)).unwrap();
        g.bytes_mut()[64] = 0xee;
        g.set_lsn(Lsn(5000));
        drop(g);
        log.fail.store(true, Ordering::SeqCst);
        let before = disk.writes.lock().unwrap().len();
        let mut errs = 0;
        for _ in 0..4 {
            match p.evict(4) {
                Err(PoolError::NotDurable { id, lsn }) => {
                    assert_eq!((id, lsn), (PageId(2), Lsn(5000)));
                    errs += 1;
                }
                Ok(_) => {}
                Err(e) => panic!("{kind:?}: {e}"),
            }
        }
        assert!(errs > 0, "{kind:?}: the dirty page was never picked");
        assert_eq!(disk.writes.lock().unwrap().len(), before, "{kind:?}");
        assert_eq!(p.fix_shared(PageId(2)).unwrap().bytes()[64], 0xee);
        log.fail.store(false, Ordering::SeqCst);
        assert_eq!(p.flush().unwrap(), 1);
        let last = *disk.writes.lock().unwrap().last().unwrap();
        assert_eq!(
            last,
            WriteRecord {
                page: PageId(2),
                lsn: Lsn(5000),
                durable: Lsn(5000)
            }
        );
    }
}

#[test]
fn optimistic_reads_of_evicted_pages_fail_validation_without_faulting() {
    for kind in KINDS {
        let (p, _, _) = pool(kind, 4, 64, 1);
        for _ in 0..4 {
            let mut g = p.allocate().unwrap();
            g.bytes_mut()[64] = 9;
        }
        let r = p.optimistic(PageId(1)).unwrap();
        assert_eq!(r.u8_at(64), Ok(9));
        assert_eq!(r.validate(), Ok(()));
        assert_eq!(r.u64_at(PAGE_SIZE - 4), Err(Stale), "bounds-checked");
        while p.evict(64).unwrap() > 0 {}
        // The memory is still readable (zero in vmcache, a frame in the
        // hash pool) and the read does not validate.
        let _ = r.u8_at(64).unwrap();
        assert_eq!(r.validate(), Err(Stale), "{kind:?}");
        assert!(r.clone().upgrade().is_err());
        let r2 = p.optimistic(PageId(1)).unwrap();
        assert_eq!(r2.u8_at(64), Ok(9));
        assert_eq!(r2.validate(), Ok(()));
        // A writer in between invalidates.
        let w = p.fix_exclusive(PageId(1)).unwrap();
        assert_eq!(r2.validate(), Err(Stale));
        drop(w);
        assert_eq!(r2.validate(), Err(Stale));
    }
}

#[test]
fn vmcache_window_stays_one_mapping() {
    let log = Arc::new(RecordingLog::default());
    let disk = Disk::new(4096, log.clone());
    let p = VmCache::new(vec![MemDevice::new(&disk)], config(16, &log, 8)).unwrap();
    for i in 0..600u64 {
        let mut g = p.allocate().unwrap();
        g.bytes_mut()[64] = i as u8;
    }
    // Random residency: touch pages all over.
    let mut x = 7u64;
    for _ in 0..2000 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let id = PageId(x % 600);
        assert_eq!(p.fix_shared(id).unwrap().bytes()[64], id.0 as u8);
    }
    assert!(p.stats().dontneed_calls > 50);
    let (base, len) = p.window();
    let (base, end) = (base as u64, base as u64 + len as u64);
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
    let covering: Vec<&str> = maps
        .lines()
        .filter(|l| {
            let r = l.split_whitespace().next().unwrap();
            let (a, b) = r.split_once('-').unwrap();
            let (a, b) = (
                u64::from_str_radix(a, 16).unwrap(),
                u64::from_str_radix(b, 16).unwrap(),
            );
            a < end && b > base
        })
        .collect();
    assert_eq!(covering.len(), 1, "{covering:?}");
}

// ---- the B+tree against a model ----

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

fn key(r: &mut Rng) -> Vec<u8> {
    // Mostly short keys from a small space (so updates and deletes hit),
    // some long ones.
    let k = r.below(3000);
    let mut v = format!("k{k:05}").into_bytes();
    if k.is_multiple_of(7) {
        v.extend(std::iter::repeat_n(b'x', (k % 200) as usize));
    }
    v
}

fn value(r: &mut Rng, k: &[u8]) -> Vec<u8> {
    let len = match r.below(10) {
        0 => r.below((MAX_ENTRY - k.len()) as u64 + 1) as usize,
        1 => 0,
        _ => r.below(150) as usize,
    };
    let b = r.next() as u8;
    (0..len).map(|i| b.wrapping_add(i as u8)).collect()
}

fn model_run(p: &dyn BufferManager, seed: u64, ops: usize) {
    model_run_checked(p, seed, ops, false)
}

fn model_run_checked(p: &dyn BufferManager, seed: u64, ops: usize, paranoid: bool) {
    let t = BTree::create(p).unwrap();
    let mut m: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
    let mut r = Rng(seed);
    let mut out = Vec::new();
    for op in 0..ops {
        let k = key(&mut r);
        let c = r.below(100);
        match c {
            0..=39 => {
                let v = value(&mut r, &k);
                let new = !m.contains_key(&k);
                assert_eq!(t.insert(&k, &v).unwrap(), new, "op {op}");
                m.entry(k).or_insert(v);
            }
            40..=49 => {
                let v = value(&mut r, &k);
                let had = m.contains_key(&k);
                assert_eq!(t.update(&k, &v).unwrap(), had, "op {op}");
                if had {
                    m.insert(k, v);
                }
            }
            50..=54 => {
                let v = value(&mut r, &k);
                assert_eq!(t.upsert(&k, &v).unwrap(), m.insert(k, v).is_none());
            }
            55..=79 => {
                assert_eq!(t.delete(&k).unwrap(), m.remove(&k).is_some(), "op {op}");
            }
            80..=91 => {
                let found = t.lookup(&k, &mut out).unwrap();
                assert_eq!(found.then_some(&out), m.get(&k), "op {op}");
            }
            92..=95 => {
                let n = r.below(60) as usize;
                let mut got = Vec::new();
                t.scan_forward(Some(&k), |k, v| {
                    got.push((k.to_vec(), v.to_vec()));
                    got.len() < n
                })
                .unwrap();
                let want: Vec<_> = m
                    .range(k.clone()..)
                    .take(n.max(1))
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect();
                assert_eq!(got, want, "op {op} forward from {k:?}");
            }
            _ => {
                let n = r.below(60) as usize;
                let mut got = Vec::new();
                t.scan_backward(Some(&k), |k, v| {
                    got.push((k.to_vec(), v.to_vec()));
                    got.len() < n
                })
                .unwrap();
                let want: Vec<_> = m
                    .range(..=k.clone())
                    .rev()
                    .take(n.max(1))
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect();
                assert_eq!(got, want, "op {op} backward from {k:?}");
            }
        }
        if op % 1000 == 999 || paranoid {
            assert_eq!(t.check().unwrap(), m.len(), "op {op}");
        }
        if paranoid {
            for (k, v) in &m {
                assert!(t.lookup(k, &mut out).unwrap(), "op {op} lost {k:?}");
                assert_eq!(&out, v, "op {op}");
            }
        }
    }
    // Whole scans both ways.
    let mut all = Vec::new();
    t.scan_forward(None, |k, v| {
        all.push((k.to_vec(), v.to_vec()));
        true
    })
    .unwrap();
    assert_eq!(
        all,
        m.iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect::<Vec<_>>()
    );
    let mut back = Vec::new();
    t.scan_backward(None, |k, _| {
        back.push(k.to_vec());
        true
    })
    .unwrap();
    assert_eq!(back, m.keys().rev().cloned().collect::<Vec<_>>());
    // Delete everything: merges all the way down to one leaf.
    for k in m.keys() {
        assert!(t.delete(k).unwrap());
    }
    assert_eq!(t.check().unwrap(), 0);
    assert!(!t.lookup(b"k00001", &mut out).unwrap());
    // Reopen from the meta page after all pages were written and evicted.
    p.flush().unwrap();
    while p.evict(64).unwrap() > 0 {}
    let t2 = BTree::open(p, t.meta()).unwrap();
    assert!(t2.insert(b"again", b"v").unwrap());
    assert!(t2.lookup(b"again", &mut out).unwrap());
    assert_eq!(out, b"v");
    assert_eq!(t2.check().unwrap(), 1);
}

#[test]
fn btree_matches_a_btreemap_with_eviction() {
    for kind in KINDS {
        for seed in [1u64, 0xdead_beef] {
            // 24 frames: the tree grows to a few hundred pages.
            let (p, _, _) = pool(kind, 24, 4096, 1);
            model_run(&*p, seed, 8000);
            let s = p.stats();
            assert!(s.evictions > 100 && s.reads > 100, "{kind:?}: {s:?}");
        }
    }
}

#[test]
fn btree_errors_on_oversized_entries() {
    let (p, _, _) = pool(Kind::VmCache, 16, 64, 1);
    let t = BTree::create(&*p).unwrap();
    assert_eq!(
        t.insert(&[1; 513], b""),
        Err(TreeError::KeyTooLong { len: 513 })
    );
    assert_eq!(
        t.insert(&[1; 10], &[0; 1015]),
        Err(TreeError::EntryTooLarge { len: 1025 })
    );
    assert_eq!(t.insert(&[1; 10], &[0; 1014]), Ok(true));
}

/// A self-checking value: 8 bytes of key hash then a pattern.
fn tagged(k: u64, gen: u64) -> Vec<u8> {
    let len = 16 + ((k + gen) % 100) as usize;
    let mut v = Vec::with_capacity(len);
    v.extend_from_slice(&k.to_be_bytes());
    v.extend_from_slice(&gen.to_le_bytes());
    while v.len() < len {
        v.push((k ^ gen) as u8 ^ v.len() as u8);
    }
    v
}

fn check_tagged(k: &[u8], v: &[u8]) -> u64 {
    assert!(v.len() >= 16);
    assert_eq!(&v[..8], k);
    let k = u64::from_be_bytes(k.try_into().unwrap());
    let gen = u64::from_le_bytes(v[8..16].try_into().unwrap());
    assert_eq!(v, &tagged(k, gen)[..]);
    gen
}

/// A writer, a reader and a background evictor on three threads.
#[test]
fn readers_and_writers_on_two_threads() {
    for kind in KINDS {
        let (p, _, _) = pool(kind, 32, 8192, 2);
        let t = BTree::create(&*p).unwrap();
        let stop = AtomicBool::new(false);
        let model = std::thread::scope(|s| {
            let writer = s.spawn(|| {
                let mut m = BTreeMap::new();
                let mut r = Rng(99);
                for gen in 0..12_000u64 {
                    let k = r.below(2000);
                    if r.below(3) == 0 {
                        assert_eq!(t.delete(&k.to_be_bytes()).unwrap(), m.remove(&k).is_some());
                    } else {
                        t.upsert(&k.to_be_bytes(), &tagged(k, gen)).unwrap();
                        m.insert(k, gen);
                    }
                }
                stop.store(true, Ordering::SeqCst);
                m
            });
            let reader = s.spawn(|| {
                let mut r = Rng(5);
                let mut out = Vec::new();
                let (mut found, mut scanned) = (0u64, 0u64);
                while !stop.load(Ordering::SeqCst) {
                    let k = r.below(2000);
                    if t.lookup(&k.to_be_bytes(), &mut out).unwrap() {
                        check_tagged(&k.to_be_bytes(), &out);
                        found += 1;
                    }
                    let mut last: Option<Vec<u8>> = None;
                    let fwd = r.below(2) == 0;
                    let f = |k: &[u8], v: &[u8]| {
                        check_tagged(k, v);
                        if let Some(l) = &last {
                            assert!(if fwd {
                                l.as_slice() < k
                            } else {
                                l.as_slice() > k
                            });
                        }
                        last = Some(k.to_vec());
                        scanned += 1;
                        true
                    };
                    let start = k.to_be_bytes();
                    if fwd {
                        t.scan_forward(Some(&start), f).unwrap();
                    } else {
                        t.scan_backward(Some(&start), f).unwrap();
                    }
                }
                (found, scanned)
            });
            // Eviction in the background too, racing the inline eviction
            // of both threads' misses.
            let evictor = s.spawn(|| {
                let mut evicted = 0;
                while !stop.load(Ordering::SeqCst) {
                    evicted += p.evict(4).unwrap();
                    std::thread::yield_now();
                }
                evicted
            });
            let m = writer.join().unwrap();
            let (found, scanned) = reader.join().unwrap();
            assert!(found > 0 && scanned > 0, "{kind:?}: the reader saw nothing");
            assert!(
                evictor.join().unwrap() > 0,
                "{kind:?}: nothing evicted in the background"
            );
            m
        });
        assert_eq!(t.check().unwrap(), model.len(), "{kind:?}");
        let mut out = Vec::new();
        for k in 0..2000u64 {
            let found = t.lookup(&k.to_be_bytes(), &mut out).unwrap();
            assert_eq!(found, model.contains_key(&k));
            if found {
                assert_eq!(check_tagged(&k.to_be_bytes(), &out), model[&k]);
            }
        }
        assert!(p.stats().evictions > 0, "{kind:?}");
    }
}

/// The pools on the real process device: NVMe queue pairs and the poller
/// over io_uring on an O_DIRECT file.
#[test]
fn btree_on_the_process_nvme_device() {
    use dbos_bufferpool::host::block_device;
    use dbos_nvme::host::BackingFile;
    let dir = common::direct_io_dir();
    for kind in KINDS {
        let path = dir.path().join(format!("{kind:?}.img"));
        let file = BackingFile::create(&path, 2048 * PAGE_SIZE as u64).unwrap();
        let dev = common::file_device(&file);
        let devs = vec![
            block_device(&dev, 16).unwrap(),
            block_device(&dev, 16).unwrap(),
        ];
        let log = Arc::new(RecordingLog::default());
        let cfg = config(24, &log, 8);
        match kind {
            Kind::VmCache => model_run(&VmCache::new(devs, cfg).unwrap(), 3, 3000),
            Kind::Hash => model_run(&HashPool::new(devs, cfg).unwrap(), 3, 3000),
            Kind::Tabby => model_run(
                &Tabby::new(platform(), devs, tabby_config(cfg, Eviction::Tabby)).unwrap(),
                3,
                3000,
            ),
            Kind::TabbyInvalidateAll => model_run(
                &Tabby::new(platform(), devs, tabby_config(cfg, Eviction::InvalidateAll)).unwrap(),
                3,
                3000,
            ),
        }
    }
}

/// A shorter run that checks the whole tree and every entry after every
/// operation (catches a bad operation where it happens).
#[test]
fn btree_every_entry_checked_after_every_op() {
    for kind in KINDS {
        let (p, _, _) = pool(kind, 24, 4096, 1);
        model_run_checked(&*p, 11, 600, true);
    }
}

// ---- Tabby's own mechanism, counted on a platform of its own ----

/// A platform for one test, so that its event counters see only that test.
fn own_platform() -> &'static ProcessPlatform {
    ProcessPlatform::new(PlatformConfig {
        frames: 256,
        cpus: 2,
        pin: false,
        ..PlatformConfig::default()
    })
    .expect("process platform")
}

/// A Tabby pool of `capacity` frames over 64 pages, batches of 1, with
/// pages `0..capacity` allocated; page `i` holds `i` at byte 64.
fn small_tabby(
    plat: &'static ProcessPlatform,
    capacity: usize,
    eviction: Eviction,
    repair: bool,
) -> Tabby<ProcessPlatform, MemDevice> {
    let log = Arc::new(RecordingLog::default());
    let disk = Disk::new(64, log.clone());
    let cfg = TabbyConfig {
        repair,
        ..tabby_config(config(capacity, &log, 1), eviction)
    };
    let p = Tabby::new(plat, vec![MemDevice::new(&disk)], cfg).unwrap();
    for i in 0..capacity as u64 {
        let mut g = p.allocate().unwrap();
        assert_eq!(g.id(), PageId(i));
        g.bytes_mut()[64] = i as u8;
    }
    p
}

/// Evicts until page `id` is no longer resident.
fn evict_page<P: Platform>(p: &Tabby<P, MemDevice>, id: PageId) {
    for _ in 0..64 {
        if p.resident_frame(id).is_none() {
            return;
        }
        p.evict(1).unwrap();
    }
    panic!("page {id:?} was never evicted");
}

#[test]
fn tabby_eviction_leaves_the_translation_and_writes_no_entry() {
    let plat = own_platform();
    let p = small_tabby(plat, 4, Eviction::Tabby, true);
    let va = p.page_addr(PageId(0));
    let f0 = p.resident_frame(PageId(0)).unwrap();
    assert_eq!(plat.translate(va), Some(f0));
    assert_eq!(p.frame_header(f0), 0, "the frame's header names its page");

    let c = plat.counters();
    evict_page(&p, PageId(0));
    let d = plat.counters().since(&c);
    assert_eq!(
        (
            d.pte_writes,
            d.local_invalidations,
            d.remote_invalidations,
            d.ipis_sent
        ),
        (0, 0, 0, 0),
        "Tabby eviction touches no entry and no TLB"
    );
    assert!(p.stats().evictions >= 1);
    // The entry still points at the old frame, whose header says INVALID.
    assert_eq!(plat.translate(va), Some(f0));
    assert_eq!(p.frame_header(f0), tabby::INVALID);

    // The reload: one entry written (and the local invalidation that goes
    // with replacing a present entry), nothing remote.
    let c = plat.counters();
    let g = p.fix_shared(PageId(0)).unwrap();
    let d = plat.counters().since(&c);
    assert_eq!(g.bytes()[64], 0);
    assert_eq!(g.bytes()[16..24], 0u64.to_le_bytes());
    assert_eq!(
        (
            d.pte_writes,
            d.local_invalidations,
            d.remote_invalidations,
            d.ipis_sent
        ),
        (1, 1, 0, 0)
    );
    let f = p.resident_frame(PageId(0)).unwrap();
    assert_eq!(plat.translate(va), Some(f));
    assert_eq!(p.frame_header(f), 0);
    assert_eq!(p.stats().remaps, 4 + 1, "4 allocations and 1 load");
    assert_eq!(p.stats().stale_repairs, 0);
}

#[test]
fn tabby_invalidate_all_mode_shoots_every_eviction_down() {
    let plat = own_platform();
    let p = small_tabby(plat, 4, Eviction::InvalidateAll, true);
    let va = p.page_addr(PageId(0));
    let c = plat.counters();
    evict_page(&p, PageId(0));
    let d = plat.counters().since(&c);
    let n = p.stats().evictions;
    assert!(n >= 1);
    // Per evicted page: one remap to the blank frame (1 entry, 1 local
    // invalidation) and one invalidate_all (1 local + 1 remote on 2 CPUs).
    assert_eq!(
        (d.pte_writes, d.local_invalidations, d.remote_invalidations),
        (n, 2 * n, n)
    );
    assert_eq!(p.stats().invalidate_alls, n);
    assert_eq!(plat.translate(va), Some(p.blank_frame()));
    assert_eq!(p.fix_shared(PageId(0)).unwrap().bytes()[64], 0);
}

#[test]
fn tabby_optimistic_read_through_a_reused_frame_fails_validation() {
    let plat = own_platform();
    let p = small_tabby(plat, 2, Eviction::Tabby, true);
    for _ in 0..2 {
        let mut g = p.allocate().unwrap();
        let id = g.id();
        g.bytes_mut()[64] = id.0 as u8;
    }
    // Pages 0..4 exist; two are resident. Read page 0 optimistically.
    let r = p.optimistic(PageId(0)).unwrap();
    assert_eq!(r.u8_at(64), Ok(0));
    let f0 = p.resident_frame(PageId(0)).unwrap();
    // Evict both and load pages 2 and 3: page 0's frame now holds one of
    // them, and page 0's entry still points at it (the page-table-level
    // stale translation Tabby leaves behind on purpose).
    evict_page(&p, PageId(0));
    evict_page(&p, PageId(1));
    let g2 = p.fix_shared(PageId(2)).unwrap();
    let g3 = p.fix_shared(PageId(3)).unwrap();
    assert_eq!(plat.translate(p.page_addr(PageId(0))), Some(f0));
    let other = p.frame_header(f0);
    assert!(other == 2 || other == 3, "frame reused: {other}");
    // The reader sees the other page through page 0's address...
    assert_eq!(r.u64_at(16), Ok(other));
    assert_eq!(r.u8_at(64), Ok(other as u8));
    // ...and validation refuses it.
    assert_eq!(r.validate(), Err(Stale));
    drop((g2, g3));
    // A new optimistic read of page 0 loads it back into a frame.
    let r = p.optimistic(PageId(0)).unwrap();
    assert_eq!(r.u8_at(64), Ok(0));
    assert_eq!(r.validate(), Ok(()));
}

/// Page 1's entry pointed at page 2's frame while page 1 is resident: what
/// a CPU with a stale translation would use. (The entry itself is wrong
/// here, so the local invalidation cannot repair it; the guest test with
/// forced per-CPU staleness covers the repair that succeeds.)
#[test]
fn tabby_header_check_refuses_a_translation_to_another_pages_frame() {
    let plat = own_platform();
    let small = libdbos::platform::PageSize::Small;
    let rw = libdbos::platform::Protection::ReadWrite;
    for repair in [true, false] {
        let p = small_tabby(plat, 4, Eviction::Tabby, repair);
        let (va1, f1) = (p.page_addr(PageId(1)), p.resident_frame(PageId(1)).unwrap());
        let f2 = p.resident_frame(PageId(2)).unwrap();
        plat.remap(va1, f2, small, rw).unwrap();
        let c = plat.counters();
        if repair {
            let stale = Some(PoolError::StaleTranslation {
                id: PageId(1),
                found: 2,
            });
            assert_eq!(p.fix_shared(PageId(1)).err(), stale);
            assert_eq!(p.fix_exclusive(PageId(1)).err(), stale);
            let d = plat.counters().since(&c);
            assert_eq!(
                (d.pte_writes, d.local_invalidations),
                (0, 2),
                "one local invalidation per check, no entry written"
            );
            assert_eq!(p.stats().stale_repairs, 2);
        } else {
            // Without the check the pool hands out page 2's bytes as page 1.
            assert_eq!(p.fix_shared(PageId(1)).unwrap().bytes()[64], 2);
            assert_eq!(p.stats().stale_repairs, 0);
        }
        // The latches were released: with the entry put right, page 1 is
        // page 1 again.
        plat.remap(va1, f1, small, rw).unwrap();
        assert_eq!(p.fix_exclusive(PageId(1)).unwrap().bytes()[64], 1);
    }
}

#[test]
fn tabby_setup_errors_come_at_creation() {
    let plat = own_platform();
    let log = Arc::new(RecordingLog::default());
    let disk = Disk::new(64, log.clone());
    let make = |capacity| {
        Tabby::new(
            plat,
            vec![MemDevice::new(&disk)],
            tabby_config(config(capacity, &log, 1), Eviction::Tabby),
        )
        .err()
    };
    assert!(matches!(make(0), Some(PoolError::Setup { .. })));
    assert!(matches!(make(256), Some(PoolError::Setup { .. })));
    // Frames are given back on drop.
    let free = plat.free_frames();
    drop(small_tabby(plat, 8, Eviction::Tabby, true));
    assert_eq!(plat.free_frames(), free);
}

/// What `fix_overwrite` leaves for page `id`: zeros, the id at 16..24.
fn overwritten_image(id: PageId) -> Vec<u8> {
    let mut img = vec![0u8; PAGE_SIZE];
    img[16..24].copy_from_slice(&id.0.to_le_bytes());
    img
}

#[test]
fn fix_overwrite_installs_a_page_without_reading_it() {
    for kind in KINDS {
        let (p, disk, _) = pool(kind, 4, 64, 1);
        for _ in 0..12 {
            let mut g = p.allocate().unwrap();
            let id = g.id();
            g.bytes_mut()[100] = id.0 as u8 + 1;
        }
        p.flush().unwrap();
        while p.evict(64).unwrap() > 0 {}
        // Page 7 torn on storage: a read refuses it.
        let mut img = disk.page(7);
        img[2000] ^= 4;
        disk.set_page(7, &img);
        let torn = Some(PoolError::Corrupt {
            id: PageId(7),
            check: PageCheck::BadChecksum,
        });
        assert_eq!(p.fix_exclusive(PageId(7)).err(), torn, "{kind:?}");
        // Installed without a read, in a frame that held another page
        // (frames are reused): zeros and its id, then the caller's bytes.
        let reads = p.stats().reads;
        {
            let mut g = p.fix_overwrite(PageId(7)).unwrap();
            assert!(g.bytes() == overwritten_image(PageId(7)), "{kind:?}");
            g.bytes_mut()[100] = 77;
        }
        assert_eq!(p.stats().reads, reads, "{kind:?}: read");
        // Unfixed dirty: written back sealed, read back valid.
        while p.evict(64).unwrap() > 0 {}
        assert_eq!(page::verify(&disk.page(7), PageId(7)), PageCheck::Valid);
        assert_eq!(p.fix_shared(PageId(7)).unwrap().bytes()[100], 77);
        // A resident page is cleared too, never left as it was.
        assert_eq!(p.fix_shared(PageId(3)).unwrap().bytes()[100], 4);
        let g = p.fix_overwrite(PageId(3)).unwrap();
        assert!(g.bytes() == overwritten_image(PageId(3)), "{kind:?}");
    }
}

#[test]
fn pages_start_at_the_first_block() {
    for kind in KINDS {
        let log = Arc::new(RecordingLog::default());
        let disk = Disk::new(40, log.clone());
        let build =
            |first_block: u64, pages: Option<u64>| -> Result<Box<dyn BufferManager>, PoolError> {
                let cfg = PoolConfig {
                    first_block,
                    pages,
                    ..config(4, &log, 2)
                };
                let devs = vec![MemDevice::new(&disk)];
                Ok(match kind {
                    Kind::VmCache => Box::new(VmCache::new(devs, cfg)?),
                    Kind::Hash => Box::new(HashPool::new(devs, cfg)?),
                    Kind::Tabby => Box::new(Tabby::new(
                        platform(),
                        devs,
                        tabby_config(cfg, Eviction::Tabby),
                    )?),
                    Kind::TabbyInvalidateAll => Box::new(Tabby::new(
                        platform(),
                        devs,
                        tabby_config(cfg, Eviction::InvalidateAll),
                    )?),
                })
            };
        let p = build(30, None).unwrap();
        // Ten pages fit from block 30 of 40.
        for i in 0..10 {
            p.allocate().unwrap().bytes_mut()[200] = i + 1;
        }
        assert_eq!(
            p.allocate().err(),
            Some(PoolError::DeviceFull { pages: 10 }),
            "{kind:?}"
        );
        p.flush().unwrap();
        for i in 0..10u64 {
            assert_eq!(
                page::verify(&disk.page(30 + i), PageId(i)),
                PageCheck::Valid
            );
            assert_eq!(disk.page(30 + i)[200], i as u8 + 1);
        }
        assert!((0..30).all(|b| disk.page(b).iter().all(|&x| x == 0)));
        drop(p);
        // A data area past the device's end is refused at setup.
        assert_eq!(
            build(41, None).err(),
            Some(PoolError::Setup {
                what: "the data area starts past the device's end",
                errno: 0
            }),
            "{kind:?}"
        );
        // A data area of 3 pages from block 30: page ids 0..3 only, on
        // the blocks after the pages written above.
        let p = build(30, Some(3)).unwrap();
        assert_eq!(p.page_count(), 0, "{kind:?}");
        for i in 0..3 {
            p.allocate().unwrap().bytes_mut()[200] = 0x40 + i;
        }
        assert_eq!(
            p.allocate().err(),
            Some(PoolError::DeviceFull { pages: 3 }),
            "{kind:?}"
        );
        p.flush().unwrap();
        assert_eq!(disk.page(32)[200], 0x42, "{kind:?}");
        assert_eq!(disk.page(33)[200], 4, "{kind:?}: page 3 is not the pool's");
        drop(p);
        // More pages than fit are refused at setup.
        assert_eq!(
            build(30, Some(11)).err(),
            Some(PoolError::Setup {
                what: "the data area extends past the device's end",
                errno: 0
            }),
            "{kind:?}"
        );
    }
}

/// Dropping a Tabby releases its window (a platform call that gives the
/// slot, the range and the mapping-limit charge back) and frees its frames:
/// more pools than the process may hold windows at once
/// (`libdbos::process::MAX_WINDOWS`), each with pages loaded, created and
/// dropped one after the other, leave free frames and the charge exactly
/// where they were.
#[test]
fn tabby_drop_gives_back_window_and_frames() {
    let plat = own_platform();
    let free = plat.free_frames();
    let charged = plat.map_count().charged;
    for _ in 0..libdbos::process::MAX_WINDOWS + 16 {
        let p = small_tabby(plat, 2, Eviction::Tabby, true);
        assert_eq!(plat.map_count().charged, charged + 3 + 64 * 2);
        drop(p);
    }
    assert_eq!(plat.free_frames(), free);
    assert_eq!(plat.map_count().charged, charged);
}

/// While another thread holds every frame (say across a slow page read), a
/// miss waits for a frame instead of failing; a thread that itself holds
/// every frame gets `NoFreeFrame` after a bounded wait, not a hang.
#[test]
fn a_miss_waits_while_another_thread_holds_every_frame() {
    for kind in KINDS {
        let (p, _, _) = pool(kind, 4, 64, 2);
        let ids: Vec<PageId> = (0..6)
            .map(|i| {
                let mut g = p.allocate().unwrap();
                g.bytes_mut()[page::PAGE_HEADER] = i as u8 + 1;
                g.id()
            })
            .collect();
        let held = AtomicBool::new(false);
        std::thread::scope(|s| {
            let holder = s.spawn(|| {
                let guards: Vec<_> = ids[..4]
                    .iter()
                    .map(|&id| p.fix_exclusive(id).unwrap())
                    .collect();
                held.store(true, Ordering::SeqCst);
                std::thread::sleep(std::time::Duration::from_millis(100));
                drop(guards);
            });
            while !held.load(Ordering::SeqCst) {
                std::thread::yield_now();
            }
            let started = std::time::Instant::now();
            let g = p
                .fix_shared(ids[5])
                .unwrap_or_else(|e| panic!("{kind:?}: {e}"));
            assert_eq!(g.bytes()[page::PAGE_HEADER], 6, "{kind:?}");
            assert!(
                started.elapsed() >= std::time::Duration::from_millis(50),
                "{kind:?}: the miss did not wait for the holder"
            );
            drop(g);
            holder.join().unwrap();
        });
        // One thread holding every frame and missing: refused, not hung.
        let guards: Vec<_> = ids[..4]
            .iter()
            .map(|&id| p.fix_exclusive(id).unwrap())
            .collect();
        assert_eq!(
            p.fix_shared(ids[5]).err(),
            Some(PoolError::NoFreeFrame { frames: 4 }),
            "{kind:?}"
        );
        drop(guards);
    }
}

/// The vmcache-style pool releases an eviction batch's scattered pages with
/// one system call (`process_madvise` on the pool's own process, this
/// machine's kernel takes it), not one `madvise` per page: each call
/// flushes the TLBs of the other CPUs running the process, so per-page
/// calls cost a shootdown per evicted page while other threads run
/// (`bufferpool/docs/pools.md`). The pages read back from storage intact.
#[test]
fn vmcache_releases_each_eviction_batch_with_one_call() {
    let log = Arc::new(RecordingLog::default());
    let disk = Disk::new(4096, log.clone());
    let p = VmCache::new(vec![MemDevice::new(&disk)], config(16, &log, 8)).unwrap();
    for i in 0..600u64 {
        let mut g = p.allocate().unwrap();
        g.bytes_mut()[64] = i as u8;
        g.bytes_mut()[4000] = (i >> 8) as u8;
    }
    let mut x = 11u64;
    for _ in 0..3000 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        // Every 7th page: no two victims of a batch are neighbours.
        let id = PageId((x % 85) * 7);
        let g = p.fix_shared(id).unwrap();
        assert_eq!(
            (g.bytes()[64], g.bytes()[4000]),
            (id.0 as u8, (id.0 >> 8) as u8)
        );
    }
    let s = p.stats();
    assert!(s.evict_batches > 100, "{s:?}");
    assert!(s.evictions >= 4 * s.evict_batches, "{s:?}");
    assert_eq!(
        s.dontneed_calls, s.evict_batches,
        "one release call per batch (a kernel without MADV_DONTNEED through \
         process_madvise on PIDFD_SELF makes one per page): {s:?}"
    );
}
