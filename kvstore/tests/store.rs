//! The store as a library and the `dbos-kv` binary: the model against
//! `BTreeMap` with transactions and scans on a store 4x its pool, format
//! versions, refusals, and SIGKILL of the binary mid-workload.

use dbos_bufferpool::direct::DirectDevice;
use dbos_bufferpool::host::env;
use dbos_bufferpool::page::PAGE_HEADER;
use dbos_bufferpool::pool::vmcache::VmCache;
use dbos_bufferpool::{Config, Engine, Layout, PageId, PageWrite, PoolConfig};
use dbos_kvstore::{Error, Op, Store, FORMAT_VERSION};
use dbos_nvme::host::BackingFile;
use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

type TestStore = Store<DirectDevice, VmCache<DirectDevice>>;

const LAYOUT: Layout = Layout {
    log_blocks: 256,
    data_pages: 512,
};
const FRAMES: usize = 16;

/// A directory where O_DIRECT works (not tmpfs).
fn dir() -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    if BackingFile::direct_io_supported(d.path()) {
        return d;
    }
    tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap()
}

fn file(dir: &Path) -> Arc<BackingFile> {
    let path = dir.join("kv.db");
    Arc::new(if path.exists() {
        BackingFile::open(&path).unwrap()
    } else {
        BackingFile::create(&path, LAYOUT.blocks() * 4096).unwrap()
    })
}

fn pool(
    f: &Arc<BackingFile>,
) -> impl FnOnce(dbos_bufferpool::PoolSetup) -> Result<VmCache<DirectDevice>, dbos_bufferpool::PoolError>
{
    let f = f.clone();
    move |setup| {
        VmCache::new(
            (0..2).map(|_| DirectDevice::new(f.clone())).collect(),
            PoolConfig {
                relax: env().relax,
                ..setup.config(FRAMES)
            },
        )
    }
}

fn format(dir: &Path) -> TestStore {
    let f = file(dir);
    let d = DirectDevice::new(f.clone());
    Store::format(d.another(), d, LAYOUT, Config::new(env()), pool(&f)).unwrap()
}

fn open(dir: &Path) -> Result<TestStore, Error> {
    let f = file(dir);
    let d = DirectDevice::new(f.clone());
    Store::open(d.another(), d, Config::new(env()), pool(&f)).map(|(s, _)| s)
}

fn key(i: u64) -> Vec<u8> {
    format!("k{:08}", (i * 7919) % 100_000).into_bytes()
}

fn all(s: &TestStore) -> BTreeMap<Vec<u8>, Vec<u8>> {
    let mut m = BTreeMap::new();
    s.scan(b"", usize::MAX, &mut |k, v| {
        m.insert(k.to_vec(), v.to_vec());
    })
    .unwrap();
    m
}

#[test]
fn a_store_four_times_its_pool_matches_a_map_across_restarts() {
    let d = dir();
    let s = format(d.path());
    let mut model = BTreeMap::new();
    for i in 0..1500u64 {
        let v = vec![(i % 200) as u8; 150];
        if i % 10 == 9 {
            // A transaction: two puts and a delete, atomically.
            let (a, b, c) = (key(i), key(i + 1), key(i / 2));
            s.transaction(&[
                Op::Put { key: &a, value: &v },
                Op::Put { key: &b, value: &v },
                Op::Delete { key: &c },
            ])
            .unwrap();
            model.insert(a, v.clone());
            model.insert(b, v.clone());
            model.remove(&c);
        } else {
            assert_eq!(s.put(&key(i), &v).unwrap(), !model.contains_key(&key(i)));
            model.insert(key(i), v);
        }
    }
    let (pages, _) = s.space().unwrap();
    assert!(
        pages >= 4 * FRAMES as u64,
        "the store ({pages} pages) is 4x the pool ({FRAMES} frames)"
    );
    assert!(s.stats().pool.evictions > 0);
    assert_eq!(s.check().unwrap(), model.len());
    assert_eq!(all(&s), model);
    // A scan from the middle, limited.
    let start = model.keys().nth(100).unwrap().clone();
    let mut got = Vec::new();
    assert_eq!(
        s.scan(&start, 10, &mut |k, _| got.push(k.to_vec()))
            .unwrap(),
        10
    );
    let want: Vec<Vec<u8>> = model
        .range(start..)
        .take(10)
        .map(|(k, _)| k.clone())
        .collect();
    assert_eq!(got, want);
    // Deletes.
    let gone: Vec<Vec<u8>> = model.keys().step_by(3).cloned().collect();
    for k in &gone {
        assert!(s.delete(k).unwrap());
        model.remove(k);
    }
    assert!(!s.delete(b"absent").unwrap());
    drop(s);
    // Reopened (recovered from the log: no checkpoint at shutdown).
    let s = open(d.path()).unwrap();
    assert_eq!(s.check().unwrap(), model.len());
    assert_eq!(all(&s), model);
    let mut v = Vec::new();
    assert!(s.get(model.keys().next().unwrap(), &mut v).unwrap());
}

#[test]
fn bad_input_is_refused_with_what_was_wrong() {
    let d = dir();
    let s = format(d.path());
    let long = vec![b'k'; 600];
    assert_eq!(
        s.put(&long, b"v"),
        Err(Error::KeyTooLong { len: 600, max: 512 })
    );
    assert_eq!(
        s.put(b"k", &[0; 1100]),
        Err(Error::ValueTooLarge {
            len: 1101,
            max: 1024
        })
    );
    assert!(s
        .put(b"k", &[0; 1100])
        .unwrap_err()
        .to_string()
        .contains("at most 1024"));
    let keys: Vec<Vec<u8>> = (0..65).map(key).collect();
    let ops: Vec<Op<'_>> = keys.iter().map(|k| Op::Delete { key: k }).collect();
    assert!(matches!(
        s.transaction(&ops),
        Err(Error::Tree(
            dbos_bufferpool::btree::TreeError::TooManyChanges { changes: 65 }
        ))
    ));
    assert!(s.check().is_ok());
}

#[test]
fn another_format_version_and_another_store_are_refused() {
    let d = dir();
    let s = format(d.path());
    s.put(b"a", b"1").unwrap();
    // The header as a future version would write it.
    let mut h = [0u8; 12];
    h[..8].copy_from_slice(b"DBOS-KV\0");
    h[8..].copy_from_slice(&(FORMAT_VERSION + 1).to_le_bytes());
    s.engine()
        .commit(&[PageWrite {
            page: PageId(0),
            offset: PAGE_HEADER,
            data: &h,
        }])
        .unwrap();
    drop(s);
    let e = open(d.path()).err().expect("refused");
    assert_eq!(
        e,
        Error::Version {
            found: FORMAT_VERSION + 1,
            supported: FORMAT_VERSION
        }
    );
    let msg = e.to_string();
    assert!(
        msg.contains("version 2") && msg.contains("version 1"),
        "{msg}"
    );
    // An engine store that is not a key-value store.
    let d = dir();
    let f = file(d.path());
    let dev = DirectDevice::new(f.clone());
    drop(Engine::format(dev.another(), dev, LAYOUT, Config::new(env()), pool(&f)).unwrap());
    drop(f);
    assert_eq!(open(d.path()).err(), Some(Error::NotAStore));
}

fn dbos_kv(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_dbos-kv"))
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn the_binary_refuses_to_overwrite_a_store_and_rejects_bad_flags() {
    let d = dir();
    let p = d.path().to_str().unwrap();
    let out = dbos_kv(&["format", "--dir", p, "--size", "8M", "--log", "1M"]);
    assert!(out.status.success(), "{out:?}");
    let out = dbos_kv(&["format", "--dir", p, "--size", "8M", "--log", "1M"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("refusing to overwrite"));
    let out = dbos_kv(&[
        "format", "--dir", p, "--size", "8M", "--log", "1M", "--force",
    ]);
    assert!(out.status.success(), "{out:?}");
    for bad in [
        &["workload", "--dir", p, "--workload", "g"][..],
        &["workload", "--dir", p, "--distribution", "normal"],
        &["workload", "--dir", p, "--value-size", "2000"],
        &["format", "--dir", p, "--size", "12Q"],
    ] {
        let out = dbos_kv(bad);
        assert!(!out.status.success(), "{bad:?} accepted");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!err.contains("panicked"), "{bad:?}: {err}");
    }
}

#[test]
fn every_acknowledged_write_survives_a_sigkill_of_the_binary() {
    let mut total_acks = 0;
    for (round, ms) in [300u64, 700, 1200].into_iter().enumerate() {
        let d = dir();
        let p = d.path().to_str().unwrap();
        let acks = d.path().join("acks");
        let mut child = Command::new(env!("CARGO_BIN_EXE_dbos-kv"))
            .args([
                "workload",
                "--dir",
                p,
                "--size",
                "16M",
                "--log",
                "2M",
                "--records",
                "100000",
                "--operations",
                "100000",
                "--threads",
                "4",
                "--pool",
                "256K",
                "--workload",
                "a",
                "--acks",
                acks.to_str().unwrap(),
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(ms));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        let n = std::fs::read_to_string(&acks)
            .unwrap_or_default()
            .lines()
            .count();
        let out = dbos_kv(&[
            "verify-acks",
            "--dir",
            p,
            "--acks",
            acks.to_str().unwrap(),
            "--value-size",
            "100",
        ]);
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "round {round}: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(text.contains("0 missing, 0 wrong"), "{text}");
        total_acks += n;
    }
    assert!(
        total_acks > 100,
        "the kills came after some acknowledgements: {total_acks}"
    );
}
