//! A format cut by a power failure at any of its writes: the device holds
//! what it held before (blank, or the old store with its data), the marker
//! of an unfinished format, or the new store, and never something the next
//! open refuses as damaged. An open that formats blank devices formats the
//! unfinished one again.

mod common;

use common::*;
use dbos_bufferpool::control::ControlError;
use dbos_bufferpool::{CommitMode, Engine, Error, KvTable, Layout, PageId};

const LAYOUT: Layout = Layout {
    log_blocks: 16,
    data_pages: 8,
};

/// Key and value the old store holds.
const OLD: (u64, u64) = (3, 0x0dd_ba11);

/// Writes of a whole format of `LAYOUT` on a blank device.
fn format_writes() -> u64 {
    let (dev, pc) = memory_device(vec![0; disk_bytes(LAYOUT)]);
    drop(format(&dev, LAYOUT, CommitMode::Fua));
    pc.stats().write_commands
}

/// A device holding a store with `OLD` committed, checkpointed and closed.
fn old_store() -> Vec<u8> {
    let (dev, pc) = memory_device(vec![0; disk_bytes(LAYOUT)]);
    let e = format(&dev, LAYOUT, CommitMode::Fua);
    KvTable::new(&e, PageId(0), 4).put(&[OLD]).unwrap();
    e.checkpoint().unwrap();
    drop(e);
    pc.current()
}

#[test]
fn a_format_cut_at_any_write_leaves_a_device_the_next_open_formats_or_opens() {
    let total = format_writes();
    // Markers (2), log area, pages, flush, backup, log tail, control,
    // the marker's clear: at least 8.
    assert!(total >= 8, "a format wrote {total} times");
    let mut seen = std::collections::BTreeMap::<&str, u32>::new();
    for (start, image) in [
        ("blank", vec![0; disk_bytes(LAYOUT)]),
        ("store", old_store()),
    ] {
        for n in 1..=total {
            for seed in 0..3u64 {
                let ctx = format!("{start} device, cut at write {n} of {total}, seed {seed}");
                let (dev, pc) = memory_device(image.clone());
                pc.cut_at_write(n, seed);
                let (l, d) = devices(&dev);
                let formatted = Engine::format(l, d, LAYOUT, config(CommitMode::Fua), |s| {
                    hash_pool(&dev, FRAMES, s)
                });
                assert!(formatted.is_err(), "{ctx}: a format finished across a cut");
                drop(formatted);
                let (img, _) = pc.image().expect("cut");
                drop(dev);
                // Open, which never formats: the old store, the new one,
                // or "no store", never a refusal.
                let (dev, _) = memory_device(img.clone());
                let what = match open(&dev, CommitMode::Fua) {
                    Ok((e, _)) => {
                        let v = KvTable::new(&e, PageId(0), 4).get(OLD.0).unwrap();
                        if v == OLD.1 {
                            assert_eq!(start, "store", "{ctx}");
                            "the old store, with its data"
                        } else {
                            assert_eq!(v, 0, "{ctx}");
                            // Only the last writes (the control block, the
                            // marker's clear) make the new store.
                            assert!(n + 1 >= total, "{ctx}: a new store before its last writes");
                            "the new, empty store"
                        }
                    }
                    Err(Error::NotFormatted) => {
                        assert_eq!(start, "blank", "{ctx}");
                        assert_eq!(n, 1, "{ctx}: blank after the first marker's write");
                        "blank"
                    }
                    Err(e @ Error::FormatUnfinished { slots }) => {
                        assert!(
                            slots
                                .iter()
                                .any(|s| matches!(s, ControlError::Unfinished { .. })),
                            "{ctx}: {slots:?}"
                        );
                        let msg = e.to_string();
                        assert!(
                            msg.contains("interrupted") && msg.contains("formatting it again"),
                            "{msg}"
                        );
                        assert!(e.holds_no_store());
                        "an unfinished format"
                    }
                    Err(e) => panic!("{ctx}: refused: {e}"),
                };
                *seen.entry(what).or_default() += 1;
                drop(dev);
                // The open that formats blank devices: a store, whatever
                // the cut left, that keeps what is committed to it.
                let (dev, pc) = memory_device(img);
                let (l, d) = devices(&dev);
                let (e, _) = Engine::open_or_format(l, d, LAYOUT, config(CommitMode::Fua), |s| {
                    hash_pool(&dev, FRAMES, s)
                })
                .unwrap_or_else(|e| panic!("{ctx}: open_or_format: {e}"));
                KvTable::new(&e, PageId(0), 4).put(&[(5, 55)]).unwrap();
                drop(e);
                let (dev, _) = memory_device(pc.current());
                let (e, _) = open(&dev, CommitMode::Fua).unwrap();
                assert_eq!(KvTable::new(&e, PageId(0), 4).get(5).unwrap(), 55, "{ctx}");
            }
        }
    }
    // Every kind of outcome was met.
    assert_eq!(seen.len(), 4, "{seen:?}");
}
