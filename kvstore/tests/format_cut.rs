//! A store's format cut by a power failure at any of its writes (the
//! engine's format, then the store's header and tree, each a commit): the
//! next open finds no store (blank, or the engine's marker of an
//! unfinished format; a format then succeeds), or a store that works,
//! finished by the open if the cut came after the engine's part. Never a
//! device refused as damaged or as another program's.

mod common;

use common::{config as config_with, device, queues};
use dbos_bufferpool::host::{block_device, ProcessBlockDevice};
use dbos_bufferpool::pool::hash::HashPool;
use dbos_bufferpool::{Config, Layout};
use dbos_kvstore::{Error, Store};
use dbos_nvme::host::powercut::PowerCut;
use dbos_nvme::host::Device;

const LAYOUT: Layout = Layout {
    log_blocks: 16,
    data_pages: 16,
};
const FRAMES: usize = 16;

type TestStore = Store<ProcessBlockDevice, HashPool<ProcessBlockDevice>>;

fn pool(
    dev: &Device,
) -> impl FnOnce(
    dbos_bufferpool::PoolSetup,
) -> Result<HashPool<ProcessBlockDevice>, dbos_bufferpool::PoolError>
       + '_ {
    move |s| {
        HashPool::new(
            vec![block_device(dev, 64).expect("queue")],
            s.config(FRAMES),
        )
    }
}

fn config() -> Config {
    config_with(8)
}

fn format(dev: &Device) -> Result<TestStore, Error> {
    let (l, d) = queues(dev);
    Store::format(l, d, LAYOUT, config(), pool(dev))
}

fn open(dev: &Device) -> Result<TestStore, Error> {
    let (l, d) = queues(dev);
    Store::open(l, d, config(), pool(dev)).map(|(s, _)| s)
}

/// Puts a key, reopens, and finds it.
fn works(dev: Device, pc: &PowerCut, s: TestStore, ctx: &str) {
    s.put(b"key", b"value").unwrap();
    drop(s);
    drop(dev);
    let (dev, _) = device(pc.current());
    let s = open(&dev).unwrap_or_else(|e| panic!("{ctx}: reopen: {e}"));
    let mut v = Vec::new();
    assert!(s.get(b"key", &mut v).unwrap(), "{ctx}");
    assert_eq!(v, b"value", "{ctx}");
}

#[test]
fn a_store_format_cut_at_any_write_is_formatted_or_finished_by_the_next_start() {
    let blank = vec![0u8; LAYOUT.blocks() as usize * 4096];
    let total = {
        let (dev, pc) = device(blank.clone());
        drop(format(&dev).unwrap());
        pc.stats().write_commands
    };
    let mut outcomes = [0u32; 2];
    for n in 1..=total {
        for seed in 0..2u64 {
            let ctx = format!("cut at write {n} of {total}, seed {seed}");
            let (dev, pc) = device(blank.clone());
            pc.cut_at_write(n, seed);
            assert!(
                format(&dev).is_err(),
                "{ctx}: a format finished across a cut"
            );
            drop(dev);
            let (img, _) = pc.image().expect("cut");
            let (dev, pc) = device(img);
            match open(&dev) {
                Ok(s) => {
                    outcomes[0] += 1;
                    assert!(s.check().is_ok(), "{ctx}");
                    works(dev, &pc, s, &ctx);
                }
                Err(Error::Engine(e)) if e.holds_no_store() => {
                    outcomes[1] += 1;
                    let s = format(&dev).unwrap_or_else(|e| panic!("{ctx}: format: {e}"));
                    works(dev, &pc, s, &ctx);
                }
                Err(e) => panic!("{ctx}: refused: {e}"),
            }
        }
    }
    // Both kinds of cut were met: before the engine's store existed, and
    // in the store's part.
    assert!(outcomes[0] > 0 && outcomes[1] > 0, "{outcomes:?}");
}
