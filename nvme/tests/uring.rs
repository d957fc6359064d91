//! The io_uring backend's submission policy: unrelated operations reach
//! the kernel in pairs as they are pushed (no block-layer plug), a run of
//! adjacent ones together (so it can be merged), and a
//! `defer_taskrun` ring belongs to the thread that first used it.

mod common;

use common::{backing_file, direct_io_dir, pattern};
use dbos_nvme::host::{
    Backend, DmaBuf, DmaMemory, HostBuf, IoKind, IoOp, ProcessMemory, UringBackend, UringConfig,
};
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::time::{Duration, Instant};

const B: usize = 4096;

/// Reaps for up to `wait`, returning the (tag, result) pairs seen.
fn reap_for(backend: &mut UringBackend, wait: Duration, want: usize) -> Vec<(u64, i32)> {
    let mut got = Vec::new();
    let end = Instant::now() + wait;
    while got.len() < want && Instant::now() < end {
        backend.reap(|tag, res| got.push((tag, res)));
        std::thread::sleep(Duration::from_millis(1));
    }
    got
}

struct Setup {
    _dir: tempfile::TempDir,
    buf: DmaBuf,
    dma: Arc<DmaMemory>,
    file: dbos_nvme::host::BackingFile,
}

fn setup() -> Setup {
    let dir = direct_io_dir();
    let file = backing_file(dir.path(), 8);
    // Through the page cache (the backend's descriptor is O_DIRECT).
    let plain = std::fs::OpenOptions::new()
        .write(true)
        .open(dir.path().join("disk.img"))
        .unwrap();
    for lba in 0..8u64 {
        plain
            .write_all_at(&pattern(lba, 0, B), lba * B as u64)
            .unwrap();
    }
    plain.sync_all().unwrap();
    let mem = Arc::new(ProcessMemory::new(8 * B).unwrap());
    let buf = mem.alloc(8 * B).unwrap();
    let dma = Arc::new(DmaMemory::from_process(mem).unwrap());
    Setup {
        _dir: dir,
        buf,
        dma,
        file,
    }
}

fn read_op(s: &Setup, page: usize, lba: u64) -> IoOp {
    let mut bufs: Vec<HostBuf> = Vec::new();
    assert!(s.dma.map_range(s.buf.page(page), B as u32, &mut bufs));
    IoOp {
        kind: IoKind::Read,
        offset: lba * B as u64,
        buf: bufs[0],
    }
}

#[test]
fn unrelated_operations_go_out_in_pairs_and_adjacent_ones_together() {
    let s = setup();
    let config = UringConfig {
        submit_batch: 2,
        ..UringConfig::default()
    };
    let nothing = |b: &mut UringBackend| reap_for(b, Duration::from_millis(200), 1);
    let sorted = |mut v: Vec<(u64, i32)>| {
        v.sort();
        v
    };
    // (Every check for "nothing submitted" runs with no completion
    // pending: reaping one enters the kernel, which submits the queue.)
    // Reads of blocks 0..5 into pages 0..5: one adjacent run, queued past
    // the batch size...
    let mut backend = UringBackend::new(&s.file, &s.dma, config).unwrap();
    for lba in 0..5u64 {
        assert!(backend.push(&read_op(&s, lba as usize, lba), lba));
    }
    assert_eq!(
        nothing(&mut backend),
        vec![],
        "an adjacent run stays together"
    );
    // ...until an operation that does not continue it pushes it out,
    // with no submit() call.
    assert!(backend.push(&read_op(&s, 5, 7), 7));
    let mut got = reap_for(&mut backend, Duration::from_secs(5), 5);
    assert!(
        (0..5).all(|l| got.contains(&(l, B as i32))),
        "the run completed without submit(): {got:?}"
    );
    // (Reaping enters the kernel, which may already have taken the 7.)
    backend.submit().unwrap();
    got.extend(reap_for(
        &mut backend,
        Duration::from_secs(5),
        6 - got.len(),
    ));
    assert_eq!(
        sorted(got),
        vec![0, 1, 2, 3, 4, 7]
            .into_iter()
            .map(|l| (l, B as i32))
            .collect::<Vec<_>>()
    );
    let page = |i: usize| {
        let mut v = vec![0u8; B];
        assert!(s.buf.read(i * B, &mut v));
        v
    };
    for (page_no, lba) in [(0, 0), (4, 4), (5, 7)] {
        assert_eq!(page(page_no), pattern(lba, 0, B), "page {page_no}");
    }

    // Two unrelated reads wait in the ring; a third pushes them out.
    let mut backend = UringBackend::new(&s.file, &s.dma, config).unwrap();
    assert!(backend.push(&read_op(&s, 6, 3), 3));
    assert!(backend.push(&read_op(&s, 7, 5), 5));
    assert_eq!(nothing(&mut backend), vec![], "a pair waits for a third");
    assert!(backend.push(&read_op(&s, 0, 1), 1));
    let mut got = reap_for(&mut backend, Duration::from_secs(5), 2);
    assert!(
        got.contains(&(3, B as i32)) && got.contains(&(5, B as i32)),
        "the pair completed without submit(): {got:?}"
    );
    backend.submit().unwrap();
    got.extend(reap_for(
        &mut backend,
        Duration::from_secs(5),
        3 - got.len(),
    ));
    assert_eq!(
        sorted(got),
        vec![(1, B as i32), (3, B as i32), (5, B as i32)]
    );
    assert_eq!((page(6), page(7)), (pattern(3, 0, B), pattern(5, 0, B)));
    assert_eq!(backend.in_flight(), 0);

    // With no limit nothing is submitted until submit().
    let config = UringConfig {
        submit_batch: 0,
        ..UringConfig::default()
    };
    let mut backend = UringBackend::new(&s.file, &s.dma, config).unwrap();
    for (i, lba) in [(2, 1), (3, 6), (4, 7)] {
        assert!(backend.push(&read_op(&s, i, lba), lba));
    }
    assert_eq!(nothing(&mut backend), vec![]);
    backend.submit().unwrap();
    assert_eq!(
        sorted(reap_for(&mut backend, Duration::from_secs(5), 3)),
        vec![(1, B as i32), (6, B as i32), (7, B as i32)]
    );
}

#[test]
fn a_deferred_taskrun_ring_refuses_a_second_thread_with_a_clear_error() {
    let s = setup();
    let config = UringConfig {
        submit_batch: 0,
        ..UringConfig::default()
    };
    assert!(config.defer_taskrun, "the default");
    let mut backend = UringBackend::new(&s.file, &s.dma, config).unwrap();
    // Created here, first used on another thread: that thread owns it.
    let op = read_op(&s, 0, 1);
    let mut backend = std::thread::spawn(move || {
        assert!(backend.push(&op, 1));
        backend.submit().unwrap();
        assert_eq!(
            reap_for(&mut backend, Duration::from_secs(5), 1),
            vec![(1, B as i32)]
        );
        backend
    })
    .join()
    .unwrap();
    // Back on the creating thread, which never used it.
    assert!(backend.push(&read_op(&s, 1, 2), 2));
    let err = backend.submit().unwrap_err();
    assert!(
        err.to_string().contains("single issuer"),
        "unexpected error: {err}"
    );
}

/// Without fixed buffers (the VMM's guest RAM): nothing is registered, and
/// plain reads, writes (FUA too) and flushes move the same bytes.
#[test]
fn unregistered_memory_reads_and_writes_with_plain_operations() {
    let s = setup();
    let config = UringConfig {
        fixed_buffers: false,
        submit_batch: 0,
        ..UringConfig::default()
    };
    let mut backend = UringBackend::new(&s.file, &s.dma, config).unwrap();
    // Read LBA 3 into page 0, write it to LBA 5 (FUA) and LBA 6, flush,
    // read LBA 5 back into page 1.
    let write = |fua, lba| IoOp {
        kind: IoKind::Write { fua },
        offset: lba * B as u64,
        ..read_op(&s, 0, 0)
    };
    let ops = [
        (read_op(&s, 0, 3), 1),
        (write(true, 5), 2),
        (write(false, 6), 3),
        (
            IoOp {
                kind: IoKind::Flush,
                offset: 0,
                ..read_op(&s, 0, 0)
            },
            4,
        ),
        (read_op(&s, 1, 5), 5),
    ];
    for (op, tag) in ops {
        assert!(backend.push(&op, tag));
        backend.submit().unwrap();
        let got = reap_for(&mut backend, Duration::from_secs(5), 1);
        let expected = if op.kind == IoKind::Flush {
            0
        } else {
            B as i32
        };
        assert_eq!(got, vec![(tag, expected)], "{op:?}");
    }
    let mut page1 = vec![0u8; B];
    assert!(s.buf.read(B, &mut page1));
    assert_eq!(page1, pattern(3, 0, B));
    let mut back = vec![0u8; B];
    let plain = std::fs::File::open(s.file.path()).unwrap();
    plain.read_exact_at(&mut back, 6 * B as u64).unwrap();
    assert_eq!(back, pattern(3, 0, B));
}
