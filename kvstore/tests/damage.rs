//! Damage on disk under a store: a flipped byte in a tree page, in an
//! overflow page and in the log's durable history. Each is detected and reported with where it is
//! (the page, the LSN); nothing damaged is ever served as data.

use dbos_bufferpool::direct::DirectDevice;
use dbos_bufferpool::host::env;
use dbos_bufferpool::page::PAGE_HEADER;
use dbos_bufferpool::pool::vmcache::VmCache;
use dbos_bufferpool::{Config, Layout, PageId, PoolConfig};
use dbos_kvstore::{Error, Store};
use dbos_nvme::host::BackingFile;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;

type TestStore = Store<DirectDevice, VmCache<DirectDevice>>;

const LAYOUT: Layout = Layout {
    log_blocks: 256,
    data_pages: 256,
};

fn dir() -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    if BackingFile::direct_io_supported(d.path()) {
        return d;
    }
    tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap()
}

fn with_store<T>(dir: &Path, format: bool, f: impl FnOnce(Result<TestStore, Error>) -> T) -> T {
    let path = dir.join("kv.db");
    let file = Arc::new(if format {
        BackingFile::create(&path, LAYOUT.blocks() * 4096).unwrap()
    } else {
        BackingFile::open(&path).unwrap()
    });
    let fc = file.clone();
    let pool = move |setup: dbos_bufferpool::PoolSetup| {
        VmCache::new(
            vec![DirectDevice::new(fc.clone())],
            PoolConfig {
                relax: env().relax,
                ..setup.config(16)
            },
        )
    };
    let d = DirectDevice::new(file.clone());
    let store = if format {
        Store::format(d.another(), d, LAYOUT, Config::new(env()), pool)
    } else {
        Store::open(d.another(), d, Config::new(env()), pool).map(|(s, _)| s)
    };
    f(store)
}

fn key(i: u64) -> Vec<u8> {
    format!("key{:06}", i).into_bytes()
}

fn value(i: u64) -> Vec<u8> {
    vec![(i % 251) as u8; 120]
}

fn flip(dir: &Path, offset: u64) {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(dir.join("kv.db"))
        .unwrap();
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, offset).unwrap();
    b[0] ^= 0x20;
    f.write_all_at(&b, offset).unwrap();
    f.sync_all().unwrap();
}

/// Writes `data` to a new store and checkpoints it (every page on disk, the
/// log freed: damage cannot be repaired from the log), flips a byte in the
/// middle of `page`, and expects the damage reported naming the page: at
/// open, or when the page is read, and never a wrong value.
fn flipped_page_is_named_never_served(page: PageId, kind: u8, data: &[(Vec<u8>, Vec<u8>)]) {
    let d = dir();
    with_store(d.path(), true, |s| {
        let s = s.unwrap();
        for (k, v) in data {
            s.put(k, v).unwrap();
        }
        s.checkpoint().unwrap();
        assert!(s.space().unwrap().0 > page.0, "page {} is in use", page.0);
    });
    let at = LAYOUT.page_lba(page) * 4096;
    let mut k = [0u8];
    std::fs::File::open(d.path().join("kv.db"))
        .unwrap()
        .read_exact_at(&mut k, at + PAGE_HEADER as u64)
        .unwrap();
    assert_eq!(
        k[0], kind,
        "page {} is of the kind the test damages",
        page.0
    );
    flip(d.path(), at + 2000);
    let name = format!("page {}", page.0);
    with_store(d.path(), false, |s| match s {
        // Refused at open, naming the page.
        Err(e) => {
            let msg = e.to_string();
            eprintln!("refused at open: {msg}");
            assert!(msg.contains(&name), "{msg}");
        }
        Ok(s) => {
            // Or served until the page is needed: then an error naming it,
            // and never a wrong value.
            let mut errors = 0;
            let mut v = Vec::new();
            for (k, want) in data {
                match s.get(k, &mut v) {
                    Ok(true) => assert!(v == *want, "a wrong value served"),
                    Ok(false) => panic!("a key served as absent"),
                    Err(e) => {
                        assert!(e.to_string().contains(&name), "{e}");
                        errors += 1;
                    }
                }
            }
            eprintln!("{errors} reads failed naming {name}");
            assert!(errors > 0, "the damaged page was never read");
        }
    });
}

#[test]
fn a_flipped_byte_in_a_tree_page_is_reported_with_the_page_never_served() {
    let data: Vec<_> = (0..600).map(|i| (key(i), value(i))).collect();
    // Page 5 is a tree node (a leaf: kind 1).
    flipped_page_is_named_never_served(PageId(5), 1, &data);
}

#[test]
fn a_flipped_byte_in_an_overflow_page_is_reported_with_the_page_never_served() {
    // Values of 5 overflow pages each. In a new store page 0 is the
    // header, 1 the tree's meta page and 2 its root; the first value's
    // chain is written last page first, in units of 4, from page 3 on: page
    // 4 holds its fourth chunk.
    let data: Vec<_> = (0..3)
        .map(|i| {
            let v: Vec<u8> = (0..20_000u32).map(|j| (j * 7 + i) as u8).collect();
            (key(i as u64), v)
        })
        .collect();
    flipped_page_is_named_never_served(PageId(4), 5, &data);
}

#[test]
fn a_flipped_byte_in_the_logs_durable_history_is_refused_with_its_lsn() {
    let d = dir();
    with_store(d.path(), true, |s| {
        let s = s.unwrap();
        for i in 0..300 {
            s.put(&key(i), &value(i)).unwrap();
        }
        // No checkpoint: the log is all durable history recovery needs.
    });
    // Inside the log's second block (past the format's first records).
    flip(d.path(), (LAYOUT.log_start() + 1) * 4096 + 1000);
    with_store(d.path(), false, |s| {
        let e = s
            .err()
            .expect("a damaged log in durable history is refused");
        assert!(
            matches!(e, Error::Engine(dbos_bufferpool::Error::LogCorrupt(_))),
            "{e:?}"
        );
        let msg = e.to_string();
        eprintln!("{msg}");
        assert!(msg.contains("LSN"), "{msg}");
        assert!(msg.contains("refused and wrote nothing"), "{msg}");
    });
}
