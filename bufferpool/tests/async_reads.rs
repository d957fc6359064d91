//! Reads a caller carries out itself (`BufferManager::begin_read` /
//! `finish_read`, `BTree::lookup_resident`): what an event loop uses to
//! serve other clients while a page is read. The reads here are plain
//! `pread`s into the page's memory, as the loop's io_uring does them.

mod common;

use common::direct_io_dir;
use dbos_bufferpool::btree::BTree;
use dbos_bufferpool::device::{DeviceError, BLOCK_SIZE};
use dbos_bufferpool::direct::DirectDevice;
use dbos_bufferpool::host::env;
use dbos_bufferpool::pool::vmcache::VmCache;
use dbos_bufferpool::pool::{BeginRead, PendingRead, PoolConfig, Resident};
use dbos_bufferpool::{BufferManager, PageId, Pool, PoolError};
use dbos_nvme::host::BackingFile;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

fn pool(frames: usize) -> (tempfile::TempDir, VmCache<DirectDevice>) {
    let dir = direct_io_dir();
    let f =
        Arc::new(BackingFile::create(dir.path().join("d.img"), 4096 * BLOCK_SIZE as u64).unwrap());
    let pool = VmCache::new(
        vec![DirectDevice::new(f.clone()), DirectDevice::new(f)],
        PoolConfig {
            relax: env().relax,
            ..PoolConfig::new(frames)
        },
    )
    .unwrap();
    (dir, pool)
}

/// Carries out `read` as the caller's own I/O would: `pread` into its
/// destination.
fn pread(read: &PendingRead) -> Result<(), DeviceError> {
    // SAFETY: `dest` is `LEN` writable bytes of the pool's window that
    // nothing else writes while the read is pending; `pread` writes at
    // most `LEN` bytes there during the call.
    let n = unsafe {
        libc::pread(
            read.fd,
            read.dest().cast(),
            PendingRead::LEN,
            read.offset as libc::off_t,
        )
    };
    if n == PendingRead::LEN as isize {
        Ok(())
    } else {
        Err(DeviceError::UnrecoveredRead)
    }
}

fn key(i: u64) -> [u8; 8] {
    (i * 7919 % 100_003).to_be_bytes()
}

fn value(i: u64) -> Vec<u8> {
    vec![(i % 251) as u8; 100]
}

/// A tree of 3,000 keys in `pool` (16 frames: most of it on disk), every
/// page written back and evicted.
fn evicted_tree(pool: &VmCache<DirectDevice>) -> BTree<'_, VmCache<DirectDevice>> {
    let tree = BTree::create(pool).unwrap();
    for i in 0..3000 {
        assert!(tree.insert(&key(i), &value(i)).unwrap());
    }
    pool.flush().unwrap();
    pool.evict(16).unwrap();
    tree
}

/// A tree larger than its pool, looked up without waiting: each lookup
/// names the pages it misses, the test reads each in, and the lookup then
/// finds exactly what the waiting lookup finds.
#[test]
fn lookups_through_resident_pages_name_each_page_they_miss() {
    let (_dir, pool) = pool(16);
    let tree = evicted_tree(&pool);
    let reads_before = pool.stats().reads;
    let (mut missed, mut finished) = (0u64, 0u64);
    let mut out = Vec::new();
    for i in (0..3000).step_by(7).chain([5000, 5001]) {
        let mut tries = 0;
        let found = loop {
            tries += 1;
            assert!(tries < 10, "key {i}: no progress");
            match tree.lookup_resident(&key(i), &mut out).unwrap() {
                Resident::Done(found) => break found,
                Resident::Missing(page) => {
                    missed += 1;
                    match pool.begin_read(page).unwrap() {
                        BeginRead::Started(read) => {
                            let done = pread(&read);
                            pool.finish_read(read, done).unwrap();
                            finished += 1;
                        }
                        BeginRead::Resident => {}
                        other => panic!("page {page:?}: {other:?}"),
                    }
                }
                Resident::WouldBlock => panic!("key {i}: no overflow values here"),
            }
        };
        assert_eq!(found, i < 3000, "key {i}");
        if found {
            assert_eq!(out, value(i), "key {i}");
        }
    }
    assert!(missed > 100, "{missed} pages missed");
    assert_eq!(pool.stats().reads - reads_before, finished);
}

/// While a read is started its page is latched: another start is refused
/// as busy, a lookup through resident pages does not see it, and a thread
/// that fixes it waits until the read is finished, then sees the page.
#[test]
fn a_started_read_holds_its_page_until_it_is_finished() {
    let (_dir, pool) = pool(16);
    let _tree = evicted_tree(&pool);
    let page = PageId(3);
    let BeginRead::Started(read) = pool.begin_read(page).unwrap() else {
        panic!("page 3 was evicted");
    };
    assert!(matches!(pool.begin_read(page).unwrap(), BeginRead::Busy));
    assert!(pool.fix_optimistic_resident_frame(page).unwrap().is_none());
    let fixed = AtomicBool::new(false);
    std::thread::scope(|s| {
        let waiter = s.spawn(|| {
            let g = pool.fix_shared(page).unwrap();
            fixed.store(true, Ordering::SeqCst);
            g.id()
        });
        std::thread::sleep(Duration::from_millis(100));
        assert!(
            !fixed.load(Ordering::SeqCst),
            "a fix went through a started read"
        );
        let done = pread(&read);
        pool.finish_read(read, done).unwrap();
        assert_eq!(waiter.join().unwrap(), page);
    });
    assert!(fixed.load(Ordering::SeqCst));
    assert!(matches!(
        pool.begin_read(page).unwrap(),
        BeginRead::Resident
    ));
    assert!(pool.fix_optimistic_resident_frame(page).unwrap().is_some());
}

/// A read that failed, or that brought a damaged page (here: nothing read,
/// the page's memory still zero), is an error naming the page; the page
/// stays unread, and the next fix reads it the usual way.
#[test]
fn a_failed_or_damaged_read_leaves_the_page_unread() {
    let (_dir, pool) = pool(16);
    let tree = evicted_tree(&pool);
    let page = PageId(2);
    let reads = pool.stats().reads;
    let BeginRead::Started(read) = pool.begin_read(page).unwrap() else {
        panic!("page 2 was evicted");
    };
    let e = pool
        .finish_read(read, Err(DeviceError::UnrecoveredRead))
        .unwrap_err();
    assert!(
        matches!(e, PoolError::Device { id, error: DeviceError::UnrecoveredRead, .. } if id == page),
        "{e:?}"
    );
    let BeginRead::Started(read) = pool.begin_read(page).unwrap() else {
        panic!("page 2 is still evicted after a failed read");
    };
    let e = pool.finish_read(read, Ok(())).unwrap_err();
    assert!(
        matches!(e, PoolError::Corrupt { id, .. } if id == page),
        "{e:?}"
    );
    assert_eq!(pool.stats().reads, reads, "failed reads counted");
    // Read the usual way, and every key is there.
    assert_eq!(pool.fix_shared(page).unwrap().id(), page);
    let mut out = Vec::new();
    for i in 0..3000 {
        assert!(tree.lookup(&key(i), &mut out).unwrap(), "key {i}");
        assert_eq!(out, value(i));
    }
}

/// A read is finished by the pool that started it only.
#[test]
fn another_pools_read_is_refused() {
    let (_d1, a) = pool(16);
    let (_d2, b) = pool(16);
    let id = a.allocate().unwrap().id();
    a.flush().unwrap();
    a.evict(16).unwrap();
    let BeginRead::Started(read) = a.begin_read(id).unwrap() else {
        panic!("the page was evicted");
    };
    assert!(matches!(
        b.finish_read(read, Ok(())),
        Err(PoolError::Setup { .. })
    ));
}
