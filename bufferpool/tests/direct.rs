//! The direct device (`dbos_bufferpool::direct`): requests carried out by
//! the calling thread on the `O_DIRECT` file, checked like the poller checks
//! them; the engine and a pool on it.

mod common;

use common::*;
use dbos_bufferpool::btree::BTree;
use dbos_bufferpool::device::{run_all, BlockDevice, DeviceError, Io, BLOCK_SIZE};
use dbos_bufferpool::direct::DirectDevice;
use dbos_bufferpool::host::env;
use dbos_bufferpool::pool::hash::HashPool;
use dbos_bufferpool::pool::vmcache::VmCache;
use dbos_bufferpool::pool::PoolConfig;
use dbos_bufferpool::{BufferManager, CommitMode, Engine, KvTable, Layout, PageId};
use dbos_nvme::host::BackingFile;
use dbos_nvme::DmaAddr;
use std::sync::Arc;

fn file(blocks: u64) -> (tempfile::TempDir, Arc<BackingFile>) {
    let dir = direct_io_dir();
    let f = BackingFile::create(dir.path().join("d.img"), blocks * BLOCK_SIZE as u64).unwrap();
    (dir, Arc::new(f))
}

fn one(dev: &mut DirectDevice, io: Io) -> Result<(), DeviceError> {
    run_all(dev, &[io], std::thread::yield_now)
}

#[test]
fn writes_read_back_and_bad_requests_are_refused() {
    let (_dir, f) = file(16);
    let mut dev = DirectDevice::new(f.clone());
    assert_eq!(dev.block_count(), 16);
    let a = dev.alloc(2).unwrap();
    let b = dev.alloc(2).unwrap();
    // SAFETY: two blocks of each buffer, owned by the test between requests.
    let (wa, rb) = unsafe {
        (
            std::slice::from_raw_parts_mut(a.ptr, 2 * BLOCK_SIZE),
            std::slice::from_raw_parts_mut(b.ptr, 2 * BLOCK_SIZE),
        )
    };
    for (i, x) in wa.iter_mut().enumerate() {
        *x = (i * 7 % 251) as u8;
    }
    one(&mut dev, Io::write(3, 2, a.addr, false)).unwrap();
    one(&mut dev, Io::flush()).unwrap();
    one(&mut dev, Io::read(3, 2, b.addr)).unwrap();
    assert_eq!(rb, wa);
    wa.fill(0x5a);
    one(&mut dev, Io::write(14, 2, a.addr, true)).unwrap();
    // Another device on the file (another thread's) sees it.
    let mut other = dev.another();
    let c = other.alloc(2).unwrap();
    one(&mut other, Io::read(14, 2, c.addr)).unwrap();
    // SAFETY: as above.
    assert!(unsafe { std::slice::from_raw_parts(c.ptr, 2 * BLOCK_SIZE) }
        .iter()
        .all(|&x| x == 0x5a));
    // Past the end, no blocks, and a buffer of another device or none.
    assert_eq!(
        one(&mut dev, Io::read(15, 2, b.addr)),
        Err(DeviceError::LbaOutOfRange)
    );
    assert_eq!(
        one(&mut dev, Io::read(u64::MAX, 2, b.addr)),
        Err(DeviceError::LbaOutOfRange)
    );
    assert_eq!(
        one(&mut dev, Io::read(0, 0, b.addr)),
        Err(DeviceError::LbaOutOfRange)
    );
    assert_eq!(
        one(&mut dev, Io::read(0, 1, c.addr)),
        Err(DeviceError::InvalidRequest)
    );
    assert_eq!(
        one(&mut dev, Io::read(0, 3, a.addr)),
        Err(DeviceError::InvalidRequest),
        "a transfer past the buffer's end"
    );
    let stack = [0u8; 64];
    assert_eq!(
        one(
            &mut dev,
            Io::write(0, 1, DmaAddr(stack.as_ptr() as u64), false)
        ),
        Err(DeviceError::InvalidRequest)
    );
    assert_eq!(dev.in_flight(), 0);
}

#[test]
fn a_deleted_file_takes_no_more_writes_or_flushes() {
    let (dir, f) = file(8);
    let mut dev = DirectDevice::new(f);
    let a = dev.alloc(1).unwrap();
    one(&mut dev, Io::write(0, 1, a.addr, true)).unwrap();
    std::fs::remove_file(dir.path().join("d.img")).unwrap();
    assert_eq!(
        one(&mut dev, Io::write(1, 1, a.addr, true)),
        Err(DeviceError::WriteFault)
    );
    assert_eq!(
        one(&mut dev, Io::write(2, 1, a.addr, false)),
        Err(DeviceError::WriteFault),
        "no write after the deletion was found"
    );
    assert_eq!(one(&mut dev, Io::flush()), Err(DeviceError::WriteFault));
    // Reads go on.
    one(&mut dev, Io::read(0, 1, a.addr)).unwrap();
}

const LAYOUT: Layout = Layout {
    log_blocks: 64,
    data_pages: 32,
};

type DirectEngine = Engine<DirectDevice, HashPool<DirectDevice>>;

fn pool(
    f: &Arc<BackingFile>,
) -> impl FnOnce(
    dbos_bufferpool::PoolSetup,
) -> Result<HashPool<DirectDevice>, dbos_bufferpool::PoolError>
       + '_ {
    move |setup| {
        HashPool::new(
            vec![DirectDevice::new(f.clone()), DirectDevice::new(f.clone())],
            PoolConfig {
                evict_batch: 4,
                ..setup.config(8)
            },
        )
    }
}

/// The engine on direct devices: commits through an 8-frame pool over 32
/// pages (evicting), a clean restart finds every commit.
#[test]
fn the_engine_on_direct_devices_keeps_every_commit() {
    let (_dir, f) = file(LAYOUT.blocks() + 16);
    let dev = || DirectDevice::new(f.clone());
    let e: DirectEngine =
        Engine::format(dev(), dev(), LAYOUT, config(CommitMode::Fua), pool(&f)).unwrap();
    let kv = KvTable::new(&e, PageId(0), LAYOUT.data_pages);
    for i in 0..300u64 {
        kv.put(&[(i * 53 % 16000, i + 1)]).unwrap();
    }
    e.checkpoint().unwrap();
    for i in 300..400u64 {
        kv.put(&[(i * 53 % 16000, i + 1)]).unwrap();
    }
    drop(e);
    let (e, report): (DirectEngine, _) =
        Engine::open(dev(), dev(), config(CommitMode::WriteFlush), pool(&f)).unwrap();
    assert_eq!(report.transactions, 100);
    let kv = KvTable::new(&e, PageId(0), LAYOUT.data_pages);
    for i in 0..400u64 {
        assert_eq!(kv.get(i * 53 % 16000).unwrap(), i + 1);
    }
}

/// A B+tree on a vmcache-style pool of direct devices, one per thread,
/// smaller than the tree: two threads insert and look up their own keys.
#[test]
fn a_btree_on_direct_devices_evicts_and_reads_back() {
    let (_dir, f) = file(4096);
    let devs = (0..2).map(|_| DirectDevice::new(f.clone())).collect();
    let pool = VmCache::new(
        devs,
        PoolConfig {
            relax: env().relax,
            ..PoolConfig::new(16)
        },
    )
    .unwrap();
    let tree = BTree::create(&pool).unwrap();
    std::thread::scope(|s| {
        for t in 0..2u64 {
            let tree = &tree;
            s.spawn(move || {
                for i in 0..3000u64 {
                    let k = (i * 2 + t).to_be_bytes();
                    tree.insert(&k, &[t as u8; 100]).unwrap();
                }
                let mut v = Vec::new();
                for i in 0..3000u64 {
                    let k = (i * 2 + t).to_be_bytes();
                    assert!(tree.lookup(&k, &mut v).unwrap(), "key {}", i * 2 + t);
                    assert_eq!(v, vec![t as u8; 100], "key {}", i * 2 + t);
                }
            });
        }
    });
    assert!(pool.stats().evictions > 0, "{:?}", pool.stats());
}
