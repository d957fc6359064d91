//! Growth of the data area (`dbos_bufferpool::growth`): a store formatted
//! small on a larger device grows as its tree needs pages, keeps its size
//! across restarts, recovers whole after power cuts during growth (every
//! acknowledged change found), and at the limit refuses the change, losing
//! nothing: "disk full" at the device's end, "store full" with the reason
//! where the log bounds the page-LSN table.

mod common;

use common::*;
use dbos_bufferpool::btree::{BTree, TreeError};
use dbos_bufferpool::growth::{max_pages, Limit};
use dbos_bufferpool::{CommitMode, Error, Layout, PageId};
use dbos_nvme::host::powercut::Rng;
use std::collections::BTreeMap;

const SMALL: Layout = Layout {
    log_blocks: 64,
    data_pages: 16,
};
/// Blocks of the device: the control blocks, the log, 600 data pages and
/// the backup control block.
const DEVICE_BLOCKS: u64 = 2 + 64 + 600 + 1;

fn key(k: u64) -> Vec<u8> {
    format!("key{:06}", k).into_bytes()
}

fn value(k: u64) -> Vec<u8> {
    vec![(k % 251) as u8; 300]
}

fn contents(t: &BTree<'_, TestPool>) -> BTreeMap<Vec<u8>, Vec<u8>> {
    let mut m = BTreeMap::new();
    t.scan_forward(None, |k, v| {
        m.insert(k.to_vec(), v.to_vec());
        true
    })
    .unwrap();
    m
}

#[test]
fn the_limit_is_the_devices_end_or_the_page_lsn_tables_bound() {
    // 600 pages fit after the log; their table fits a quarter of 64 blocks.
    assert_eq!(max_pages(DEVICE_BLOCKS, &SMALL), (600, Limit::Device));
    // A device smaller than the layout: no growth (format refuses it).
    assert_eq!(max_pages(10, &SMALL), (16, Limit::Device));
    // A log of 16 blocks keeps a table of at most 4 blocks: the store
    // stops growing where a larger one's table would need more.
    let small_log = Layout {
        log_blocks: 16,
        data_pages: 16,
    };
    let (max, why) = max_pages(1 << 20, &small_log);
    assert_eq!(why, Limit::Log);
    assert!(dbos_bufferpool::lsntable::enabled(&Layout {
        data_pages: max,
        ..small_log
    }));
    assert!(!dbos_bufferpool::lsntable::enabled(&Layout {
        data_pages: max + 1,
        ..small_log
    }));
    // A store whose table is off already (its log too small for it) grows
    // to the device's end.
    let no_table = Layout {
        log_blocks: 16,
        data_pages: 100_000,
    };
    assert!(!dbos_bufferpool::lsntable::enabled(&no_table));
    assert_eq!(
        max_pages(1 << 20, &no_table),
        ((1 << 20) - 2 - 16 - 1, Limit::Device)
    );
}

#[test]
fn a_small_store_grows_on_a_larger_device_and_keeps_its_size_across_restarts() {
    let (dev, pc) = memory_device(vec![0; DEVICE_BLOCKS as usize * 4096]);
    let engine = format(&dev, SMALL, CommitMode::Fua);
    assert_eq!(engine.layout().data_pages, 16);
    assert_eq!(engine.max_data_pages(), 600);
    let (t, lsn) = BTree::create_logged(engine.pool(), &engine, PageId(0)).unwrap();
    engine.wait_durable(lsn).unwrap();
    let meta = t.meta();
    let mut model = BTreeMap::new();
    for k in 0..400 {
        let a = t.apply(&[dbos_bufferpool::btree::Change::Upsert {
            key: &key(k),
            val: &value(k),
        }]);
        engine.wait_durable(a.unwrap().lsn.unwrap()).unwrap();
        model.insert(key(k), value(k));
    }
    let grown = engine.layout().data_pages;
    assert!(grown > 16, "the area grew: {grown} pages");
    assert!(engine.stats().growths >= 1);
    assert!(
        t.space().unwrap().0 > 16,
        "the tree uses pages past the first 16"
    );
    assert_eq!(t.check().unwrap(), model.len());
    let _ = t;
    drop(engine);
    // Without a clean shutdown: recovery finds the grown size.
    let (dev, _pc) = memory_device(pc.current());
    let (engine, _) = open(&dev, CommitMode::Fua).unwrap();
    assert_eq!(engine.layout().data_pages, grown);
    let t = BTree::open_logged(engine.pool(), &engine, meta).unwrap();
    assert_eq!(t.check().unwrap(), model.len());
    assert_eq!(contents(&t), model);
    // To the device's end: then "disk full", and nothing changed.
    let mut k = 400;
    let err = loop {
        match t.upsert(&key(k), &value(k)) {
            Ok(_) => model.insert(key(k), value(k)),
            Err(e) => break e,
        };
        k += 1;
    };
    assert_eq!(err, TreeError::Full { pages: 600 });
    assert!(err.to_string().contains("disk full"), "{err}");
    assert_eq!(engine.layout().data_pages, 600);
    assert_eq!(t.check().unwrap(), model.len());
    assert_eq!(contents(&t), model);
}

#[test]
fn a_store_whose_log_bounds_its_table_stops_growing_with_the_reason() {
    let layout = Layout {
        log_blocks: 16,
        data_pages: 16,
    };
    let (max, why) = max_pages(2 + 16 + 3000 + 1, &layout);
    assert_eq!(why, Limit::Log);
    assert!(max < 3000);
    let (dev, _pc) = memory_device(vec![0; (2 + 16 + 3000 + 1) * 4096]);
    let engine = format(&dev, layout, CommitMode::Fua);
    let (t, _) = BTree::create_logged(engine.pool(), &engine, PageId(0)).unwrap();
    let mut model = BTreeMap::new();
    let mut k = 0;
    let err = loop {
        match t.upsert(&key(k), &value(k)) {
            Ok(_) => model.insert(key(k), value(k)),
            Err(e) => break e,
        };
        k += 1;
    };
    assert_eq!(
        err,
        TreeError::Engine(Error::StoreFull {
            pages: max,
            max,
            why: Limit::Log
        })
    );
    let msg = err.to_string();
    assert!(
        msg.contains("store full") && msg.contains("larger log"),
        "{msg}"
    );
    assert_eq!(t.check().unwrap(), model.len());
    assert_eq!(contents(&t), model);
}

#[test]
fn power_cuts_while_the_store_grows_lose_nothing_acknowledged() {
    let (mut grown, mut small) = (0, 0);
    for seed in 0..40u64 {
        let mut rng = Rng::new(seed ^ 0x6700);
        let (dev, pc) = memory_device(vec![0; DEVICE_BLOCKS as usize * 4096]);
        let engine = format(&dev, SMALL, CommitMode::Fua);
        let (t, lsn) = BTree::create_logged(engine.pool(), &engine, PageId(0)).unwrap();
        engine.wait_durable(lsn).unwrap();
        let meta = t.meta();
        // Growth writes hundreds of blank pages: cut anywhere in the
        // first ~1500 writes, before, during or after it.
        pc.cut_after(1 + rng.below(1500), rng.next_u64());
        let mut acked = Vec::new();
        for k in 0..400 {
            let Ok(a) = t.upsert(&key(k), &value(k)) else {
                break;
            };
            let _ = a;
            if engine
                .wal()
                .wait_durable(engine.wal().insert_lsn())
                .is_err()
            {
                break;
            }
            acked.push(k);
        }
        pc.cut(rng.next_u64());
        let (crash, _) = pc.image().unwrap();
        let _ = t;
        drop(engine);
        drop(dev);
        let (dev, _pc) = memory_device(crash);
        let (engine, _) = open(&dev, CommitMode::Fua)
            .unwrap_or_else(|e| panic!("seed {seed}: the store does not open: {e}"));
        let pages = engine.layout().data_pages;
        if pages > 16 {
            grown += 1;
        } else {
            small += 1;
        }
        let t = BTree::open_logged(engine.pool(), &engine, meta).unwrap();
        let n = t
            .check()
            .unwrap_or_else(|e| panic!("seed {seed} ({pages} pages): {e}"));
        let got = contents(&t);
        for k in &acked {
            assert_eq!(
                got.get(&key(*k)),
                Some(&value(*k)),
                "seed {seed}: acknowledged key {k} lost ({pages} pages)"
            );
        }
        assert!(n >= acked.len());
        // The recovered store goes on growing.
        for k in 1000..1400 {
            t.upsert(&key(k), &value(k))
                .unwrap_or_else(|e| panic!("seed {seed}: after recovery: {e}"));
        }
        assert!(engine.layout().data_pages > 16);
        assert_eq!(t.check().unwrap(), n + 400);
    }
    eprintln!("{grown} cuts after the growth was durable, {small} before");
    assert!(grown > 0 && small > 0, "{grown} grown, {small} not");
}
