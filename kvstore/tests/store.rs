//! The store as a library and the `dbos-kv` binary: the model against
//! `BTreeMap` with transactions and scans on a store 4x its pool, format
//! versions, refusals, and SIGKILL of the binary mid-workload.

use dbos_bufferpool::direct::DirectDevice;
use dbos_bufferpool::host::env;
use dbos_bufferpool::page::PAGE_HEADER;
use dbos_bufferpool::pool::vmcache::VmCache;
use dbos_bufferpool::pool::{BeginRead, PendingRead};
use dbos_bufferpool::{BufferManager, Config, Engine, Layout, PageId, PageWrite, PoolConfig};
use dbos_kvstore::net::wall_clock;
use dbos_kvstore::server::btree::BtreeEngine;
use dbos_kvstore::server::engine::{Ticket, Write};
use dbos_kvstore::server::session::Blocked;
use dbos_kvstore::server::{Config as ServerConfig, KvEngine, Session, Shared};
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

/// A value of `len` bytes unique to `tag`.
fn large(tag: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31) ^ (i >> 8) as u8 ^ tag)
        .collect()
}

#[test]
fn values_up_to_a_mebibyte_go_to_overflow_pages_that_are_freed_and_reused() {
    let d = dir();
    let s = format(d.path());
    let mut model = BTreeMap::new();
    // Around every boundary: the largest value a leaf takes with a 4-byte
    // key (1020), one chain page (4032 bytes) and two, and the largest.
    let sizes = [1020, 1021, 4032, 4033, 8064, 8065, 50_000, 1 << 20];
    for (i, &len) in sizes.iter().enumerate() {
        let k = format!("big{i}").into_bytes();
        let v = large(i as u8, len);
        assert!(s.put(&k, &v).unwrap());
        model.insert(k, v);
    }
    for i in 0..100u64 {
        s.put(&key(i), b"small").unwrap();
        model.insert(key(i), b"small".to_vec());
    }
    let check = |s: &TestStore, model: &BTreeMap<Vec<u8>, Vec<u8>>| {
        assert_eq!(s.check().unwrap(), model.len());
        assert_eq!(&all(s), model);
        let mut out = Vec::new();
        for (k, v) in model {
            assert!(s.get(k, &mut out).unwrap());
            assert!(out == *v, "value of {}", String::from_utf8_lossy(k));
        }
    };
    check(&s, &model);
    // A 1 MiB value is 261 chain pages.
    let (_, free) = s.space().unwrap();
    assert!(s.delete(b"big7").unwrap());
    model.remove(&b"big7"[..]);
    assert_eq!(s.space().unwrap().1, free + 261, "freed in one change");
    let (next, _) = s.space().unwrap();
    let v = large(99, 1 << 20);
    assert!(s.put(b"again", &v).unwrap());
    model.insert(b"again".to_vec(), v);
    assert_eq!(s.space().unwrap().0, next, "its pages were reused");
    // Large replaced by small, small by large, large by large, and a
    // transaction of large values that also replaces one twice.
    let (a, b, c) = (large(1, 3000), large(2, 9000), large(3, 20_000));
    s.put(b"big2", b"now small").unwrap();
    s.put(&key(5), &a).unwrap();
    s.put(b"big3", &b).unwrap();
    s.transaction(&[
        Op::Put {
            key: b"big4",
            value: &c,
        },
        Op::Put {
            key: b"t1",
            value: &b,
        },
        Op::Put {
            key: b"big4",
            value: &a,
        },
        Op::Delete { key: b"big5" },
    ])
    .unwrap();
    for (k, v) in [
        (&b"big2"[..], &b"now small"[..]),
        (&key(5), &a),
        (b"big3", &b),
        (b"big4", &a),
        (b"t1", &b),
    ] {
        model.insert(k.to_vec(), v.to_vec());
    }
    model.remove(&b"big5"[..]);
    check(&s, &model);
    // No room for a second 1 MiB value: refused, the part written freed,
    // nothing else changed.
    let space = s.space().unwrap();
    let e = s.put(b"no room", &large(5, 1 << 20)).unwrap_err();
    assert!(e.to_string().contains("disk full"), "{e}");
    let (next, free) = s.space().unwrap();
    assert_eq!(next - free, space.0 - space.1, "pages in use unchanged");
    check(&s, &model);
    drop(s);
    // Reopened (recovered from the log: no checkpoint at shutdown).
    let s = open(d.path()).unwrap();
    check(&s, &model);
}

#[test]
fn transactions_of_many_large_values_from_many_threads_do_not_deadlock() {
    let d = dir();
    let s = format(d.path());
    // More large values than the meta page has slots for chains being
    // written: refused, nothing stored.
    let keys: Vec<Vec<u8>> = (0..33).map(|i| format!("many{i}").into_bytes()).collect();
    let v = large(7, 1100);
    let ops: Vec<Op<'_>> = keys.iter().map(|k| Op::Put { key: k, value: &v }).collect();
    let e = s.transaction(&ops).unwrap_err();
    assert_eq!(
        e.to_string(),
        "a transaction of 33 values larger than a quarter page (at most 32)"
    );
    assert_eq!(s.check().unwrap(), 0);
    // 4 threads, each committing transactions of 12 large values: 48
    // chains wanted at once from 32 slots. Each change claims all of its
    // slots or none, so all of them finish.
    std::thread::scope(|sc| {
        for t in 0..4u8 {
            let s = &s;
            sc.spawn(move || {
                for round in 0..4u8 {
                    let keys: Vec<Vec<u8>> = (0..12)
                        .map(|i| format!("t{t}r{round}k{i:02}").into_bytes())
                        .collect();
                    let v = large(t * 16 + round, 1500);
                    let ops: Vec<Op<'_>> =
                        keys.iter().map(|k| Op::Put { key: k, value: &v }).collect();
                    s.transaction(&ops).unwrap();
                }
            });
        }
    });
    assert_eq!(s.check().unwrap(), 4 * 4 * 12);
    let mut out = Vec::new();
    assert!(s.get(b"t3r3k11", &mut out).unwrap());
    assert!(out == large(3 * 16 + 3, 1500));
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
    let huge = vec![0; (1 << 20) + 1];
    assert_eq!(
        s.put(b"k", &huge),
        Err(Error::ValueTooLarge {
            len: 1_048_577,
            max: 1_048_576
        })
    );
    assert_eq!(
        s.put(b"k", &huge).unwrap_err().to_string(),
        "value of 1048577 bytes (at most 1048576)"
    );
    let mut out = Vec::new();
    assert!(!s.get(b"k", &mut out).unwrap(), "nothing was stored");
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
        msg.contains("version 3") && msg.contains("version 2"),
        "{msg}"
    );
    // An engine store that is not a key-value store (another program
    // committed to it), whether page 0 or another page holds its data.
    for page in [0, 7] {
        let d = dir();
        let f = file(d.path());
        let dev = DirectDevice::new(f.clone());
        let e = Engine::format(dev.another(), dev, LAYOUT, Config::new(env()), pool(&f)).unwrap();
        e.commit(&[PageWrite {
            page: PageId(page),
            offset: PAGE_HEADER + 100,
            data: b"another program's data",
        }])
        .unwrap();
        drop(e);
        drop(f);
        assert_eq!(open(d.path()).err(), Some(Error::NotAStore), "page {page}");
    }
    // An engine store that never committed anything is what a crash
    // between the engine's format and the store's leaves: the store's
    // format is finished.
    let d = dir();
    let f = file(d.path());
    let dev = DirectDevice::new(f.clone());
    drop(Engine::format(dev.another(), dev, LAYOUT, Config::new(env()), pool(&f)).unwrap());
    drop(f);
    let s = open(d.path()).expect("finished");
    s.put(b"k", b"v").unwrap();
    drop(s);
    let s = open(d.path()).unwrap();
    let mut v = Vec::new();
    assert!(s.get(b"k", &mut v).unwrap());
    assert_eq!(v, b"v");
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
        &["workload", "--dir", p, "--value-size", "2000000"],
        &["format", "--dir", p, "--size", "12Q"],
    ] {
        let out = dbos_kv(bad);
        assert!(!out.status.success(), "{bad:?} accepted");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!err.contains("panicked"), "{bad:?}: {err}");
    }
}

#[test]
fn the_binary_grows_its_store_and_reports_counters_per_operation() {
    let d = dir();
    let p = d.path().to_str().unwrap();
    // A store that starts at 2M (1M of log) and must grow: 3000 records of
    // 1500 bytes (each on an overflow page) are 12M.
    let out = dbos_kv(&[
        "workload",
        "--dir",
        p,
        "--size",
        "2M",
        "--log",
        "1M",
        "--max-size",
        "64M",
        "--records",
        "3000",
        "--value-size",
        "1500",
        "--operations",
        "1000",
        "--threads",
        "2",
        "--pool",
        "1M",
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("PASSED"), "{text}");
    let line = |name: &str| -> f64 {
        let l = text
            .lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_else(|| panic!("no '{name}' line: {text}"));
        l[name.len()..].trim().parse().unwrap()
    };
    assert!(line("store growths") >= 1.0, "{text}");
    // Each operation visits at least the root; a pool of 1M over a store
    // of 12M misses some of them.
    assert!(line("page visits / op") >= 1.0, "{text}");
    let hits = line("hit ratio");
    assert!(hits > 0.0 && hits < 1.0, "{text}");
    assert!(line("page reads / op") > 0.0);
    if std::path::Path::new("/proc/interrupts").exists() {
        assert!(line("TLB shootdowns / op (machine)") >= 0.0);
    }
    // The file is as long as the store may grow; on disk, what it uses.
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(d.path().join("kv.db")).unwrap();
    assert_eq!(m.len(), 64 << 20);
    let on_disk = m.blocks() * 512;
    assert!(
        on_disk > 12 << 20 && on_disk < 40 << 20,
        "{on_disk} bytes on disk"
    );
}

#[test]
fn the_binary_warms_up_before_its_timed_run_and_verifies_both() {
    let d = dir();
    let p = d.path().to_str().unwrap();
    // A 1M log over 2,000 updates of 200-byte values in each phase:
    // checkpoints come during the phases (taken in the background).
    let args = format!(
        "workload --dir {p} --size 8M --log 1M --records 2000 --value-size 200 \
         --operations 4000 --threads 2 --workload a --distribution uniform --warm-up"
    );
    let out = dbos_kv(&args.split_whitespace().collect::<Vec<_>>());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("warm-up: 2000 entries read in key order"),
        "{text}"
    );
    // The warm-up phase, then the run, each with its own table of 4000
    // operations and none failed; the warm-up's writes are verified with
    // the run's, before and after the restart.
    let warm = text.find("\nwarm-up: workload a").expect("a warm-up phase");
    let run = text.find("\nrun: workload a").expect("a run phase");
    assert!(warm < run, "{text}");
    assert_eq!(text.matches("4000 operations in ").count(), 2, "{text}");
    // The load, the warm-up and the run.
    assert_eq!(
        text.matches("; 0 failed, 0 not found, 0 wrong").count(),
        3,
        "{text}"
    );
    let checkpoints: f64 = text
        .lines()
        .filter_map(|l| l.strip_prefix("checkpoints"))
        .map(|v| v.trim().parse::<f64>().unwrap())
        .sum();
    assert!(checkpoints >= 1.0, "{text}");
    assert!(text.contains("PASSED"), "{text}");
}

#[test]
fn every_acknowledged_write_survives_a_sigkill_of_the_binary() {
    let mut total_acks = 0;
    for (round, ms) in [5u64, 300, 700, 1200].into_iter().enumerate() {
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
        if ms < 100 {
            // Round 0: a kill while the store is being made.
            std::thread::sleep(Duration::from_millis(ms));
        } else {
            // Later rounds: once some writes were acknowledged (however
            // loaded the machine), more the later the round.
            let deadline = std::time::Instant::now() + Duration::from_secs(120);
            while std::fs::read_to_string(&acks)
                .map(|t| t.lines().count() as u64)
                .unwrap_or(0)
                < ms / 10
                && std::time::Instant::now() < deadline
            {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        if !d.path().join("kv.db").exists() {
            // Killed while formatting (a loaded machine): no store was
            // named, and nothing was acknowledged.
            assert!(!acks.exists() || std::fs::read(&acks).unwrap().is_empty());
            eprintln!("round {round}: killed before the store was made");
            continue;
        }
        if !acks.exists() {
            // Killed before the workload opened its acknowledgement file.
            std::fs::write(&acks, "").unwrap();
        }
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

/// Runs `input` through `session.process_async(.., may_wait)` on `shared`,
/// reading in (with `pread`, as the server's io_uring would) every page a
/// lookup stops for; returns the output and the progress of the last call.
fn process_reading(
    shared: &Shared<BtreeEngine<DirectDevice, VmCache<DirectDevice>>>,
    session: &mut Session,
    input: &[u8],
    may_wait: bool,
) -> (Vec<u8>, usize, Option<Blocked>, u32) {
    let (mut out, mut consumed, mut reads) = (Vec::new(), 0, 0);
    loop {
        let p = session.process_async(shared, &input[consumed..], &mut out, may_wait);
        consumed += p.consumed;
        let Some(Blocked::Read(page)) = p.blocked else {
            return (out, consumed, p.blocked, reads);
        };
        if let BeginRead::Started(read) = shared.engine.begin_read(page).unwrap() {
            let f = std::mem::ManuallyDrop::new(
                // SAFETY: the descriptor is the store's open file, owned by
                // its device; ManuallyDrop keeps this from closing it.
                unsafe { <std::fs::File as std::os::fd::FromRawFd>::from_raw_fd(read.fd) },
            );
            // SAFETY: `dest` is the page's LEN bytes (4 KiB aligned, as
            // O_DIRECT needs), which nothing else writes while the read is
            // pending; the slice lives for this statement only.
            let dest = unsafe { std::slice::from_raw_parts_mut(read.dest(), PendingRead::LEN) };
            use std::os::unix::fs::FileExt;
            f.read_exact_at(dest, read.offset).unwrap();
            shared.engine.finish_read(read, Ok(())).unwrap();
            reads += 1;
        }
        assert!(reads < 64, "no progress");
    }
}

/// The session of the server's event loops on a store larger than its
/// pool: a GET that misses stops before it (nothing replied) and answers
/// once its pages are in; while the caller may not wait, a write and an
/// EXEC stop before they run, what only queues or touches no data runs,
/// and every reply comes once, in order.
#[test]
fn a_session_stops_before_what_would_wait_and_resumes_where_it_stopped() {
    let d = dir();
    let engine = BtreeEngine::new(format(d.path()), wall_clock);
    let mut ticket = Ticket(0);
    for i in 0..2000u64 {
        let v = vec![b'a' + (i % 26) as u8; 100];
        let w = [Write::Put {
            key: &key(i),
            value: &v,
            expires: None,
        }];
        ticket = engine.write(&w).unwrap();
    }
    engine.wait(ticket).unwrap();
    let pool = engine.store().engine().pool();
    pool.flush().unwrap();
    pool.evict(FRAMES).unwrap();
    let shared = Shared::new(engine, ServerConfig::default(), wall_clock);
    let mut s = shared.session();
    let get = |i: u64| {
        let k = key(i);
        let mut r = format!("*2\r\n$3\r\nGET\r\n${}\r\n", k.len()).into_bytes();
        r.extend_from_slice(&k);
        r.extend_from_slice(b"\r\n");
        r
    };
    let ping = b"*1\r\n$4\r\nPING\r\n".to_vec();
    let set = b"*3\r\n$3\r\nSET\r\n$1\r\nx\r\n$1\r\n1\r\n".to_vec();
    let getx = b"*2\r\n$3\r\nGET\r\n$1\r\nx\r\n".to_vec();
    let bulk100 = |i: u64| {
        let mut r = b"$100\r\n".to_vec();
        r.extend(vec![b'a' + (i % 26) as u8; 100]);
        r.extend_from_slice(b"\r\n");
        r
    };

    // PING, then a GET that needs pages read in.
    let input = [ping.clone(), get(1234)].concat();
    let p = s.process_async(&shared, &input, &mut Vec::new(), true);
    assert_eq!(p.consumed, ping.len());
    assert!(matches!(p.blocked, Some(Blocked::Read(_))), "{p:?}");
    let (out, consumed, blocked, reads) = process_reading(&shared, &mut s, &input, true);
    assert_eq!(out, [b"+PONG\r\n".to_vec(), bulk100(1234)].concat());
    assert_eq!((consumed, blocked), (input.len(), None));
    assert!(reads >= 1);

    // Reads in flight (may not wait): the GET answers, the SET stops
    // before it; then with waiting allowed the rest runs.
    let input = [get(1235), set.clone(), getx.clone()].concat();
    let (out, consumed, blocked, _) = process_reading(&shared, &mut s, &input, false);
    assert_eq!(out, bulk100(1235));
    assert_eq!(
        (consumed, blocked),
        (get(1235).len(), Some(Blocked::Storage))
    );
    let (out, consumed, blocked, _) = process_reading(&shared, &mut s, &input[consumed..], true);
    assert_eq!(out, b"+OK\r\n$1\r\n1\r\n".to_vec());
    assert_eq!((consumed, blocked), (set.len() + getx.len(), None));

    // Inside MULTI, commands only queue; EXEC waits.
    let multi = b"*1\r\n$5\r\nMULTI\r\n".to_vec();
    let exec = b"*1\r\n$4\r\nEXEC\r\n".to_vec();
    let input = [multi.clone(), set.clone(), exec.clone()].concat();
    let (out, consumed, blocked, _) = process_reading(&shared, &mut s, &input, false);
    assert_eq!(out, b"+OK\r\n+QUEUED\r\n".to_vec());
    assert_eq!(
        (consumed, blocked),
        (multi.len() + set.len(), Some(Blocked::Storage))
    );
    let (out, _, blocked, _) = process_reading(&shared, &mut s, &exec, true);
    assert_eq!((out, blocked), (b"*1\r\n+OK\r\n".to_vec(), None));
}
