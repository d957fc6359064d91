//! The engine on owner-driven queue pairs (`dbos_nvme::host::inline`,
//! `host::inline_block_device`): the log's queue pair is driven by
//! whichever committing thread leads a group commit, so it moves between
//! threads; every commit acknowledged is found after a reopen.

mod common;

use common::*;
use dbos_bufferpool::host::{inline_block_device, InlineBlockDevice};
use dbos_bufferpool::pool::hash::HashPool;
use dbos_bufferpool::{CommitMode, Engine, KvTable, Layout, PageId};
use dbos_nvme::host::{BackingFile, InlineDevice, PollerConfig, UringConfig};

const LAYOUT: Layout = Layout {
    log_blocks: 64,
    data_pages: 8,
};

type InlineEngine = Engine<InlineBlockDevice, HashPool<InlineBlockDevice>>;

fn device(file: &BackingFile) -> InlineDevice {
    InlineDevice::open(
        file,
        REGION,
        PollerConfig::default(),
        UringConfig::default(),
    )
    .unwrap()
}

fn queue(dev: &InlineDevice) -> InlineBlockDevice {
    inline_block_device(dev, 64).unwrap()
}

fn pool(
    dev: &InlineDevice,
) -> impl FnOnce(
    dbos_bufferpool::PoolSetup,
) -> Result<HashPool<InlineBlockDevice>, dbos_bufferpool::PoolError>
       + '_ {
    move |s| HashPool::new(vec![queue(dev), queue(dev)], s.config(FRAMES))
}

#[test]
fn group_commits_through_inline_queue_pairs_survive_a_reopen() {
    let dir = direct_io_dir();
    let path = dir.path().join("inline.img");
    let file = BackingFile::create(&path, LAYOUT.blocks() * 4096).unwrap();
    let dev = device(&file);
    let e: InlineEngine = Engine::format(
        queue(&dev),
        queue(&dev),
        LAYOUT,
        config(CommitMode::Fua),
        pool(&dev),
    )
    .unwrap();
    let kv = KvTable::new(&e, PageId(0), LAYOUT.data_pages);
    std::thread::scope(|s| {
        for t in 0..4u64 {
            let kv = &kv;
            s.spawn(move || {
                for i in 0..60u64 {
                    kv.put(&[(t * 100 + i, t << 32 | i), (500 + t, i + 1)])
                        .unwrap();
                }
            });
        }
    });
    assert_eq!(e.stats().transactions, 240);
    let log = e.wal().stats();
    assert!(log.batches > 0 && log.batches <= 240, "{log:?}");
    drop(e);
    drop(dev);
    drop(file);
    let file = BackingFile::open(&path).unwrap();
    let dev = device(&file);
    let (e, _): (InlineEngine, _) = Engine::open(
        queue(&dev),
        queue(&dev),
        config(CommitMode::Fua),
        pool(&dev),
    )
    .unwrap();
    let kv = KvTable::new(&e, PageId(0), LAYOUT.data_pages);
    for t in 0..4u64 {
        for i in 0..60u64 {
            assert_eq!(kv.get(t * 100 + i).unwrap(), t << 32 | i);
        }
        assert_eq!(kv.get(500 + t).unwrap(), 60);
    }
}

/// A loop that polls and yields (allowed by the `BlockDevice` contract,
/// which only asks callers to poll) completes on an owner-driven queue
/// pair: its poll runs a turn of the host. It used to spin forever
/// (`wal-bench`'s FUA loop did).
#[test]
fn polling_alone_completes_requests() {
    use dbos_bufferpool::device::{BlockDevice, Io};
    let dir = direct_io_dir();
    let file = BackingFile::create(dir.path().join("poll.img"), 64 * 4096).unwrap();
    let dev = device(&file);
    let mut q = queue(&dev);
    let buf = q.alloc(1).unwrap();
    for n in 0..50u64 {
        q.submit(&Io::write(n % 64, 1, buf.addr, n % 2 == 0))
            .unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            if let Some((_, r)) = q.poll() {
                r.unwrap();
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "write {n} never completed"
            );
            std::thread::yield_now();
        }
    }
    assert_eq!(q.in_flight(), 0);
}
