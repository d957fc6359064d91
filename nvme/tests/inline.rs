//! Owner-driven queue pairs (`host::inline`): data round trips at depth,
//! the blocking calls that run the host, a bad command's error completion,
//! the deletion gate, and queue pairs on several threads at once, with no
//! poller thread anywhere.

mod common;

use common::{backing_file, direct_io_dir, pattern, Rng};
use dbos_nvme::host::{InlineDevice, PollerConfig, UringConfig};
use dbos_nvme::{Command, CommandId, Completion, DataPtr, DriverError, Lba, NvmeError, BLOCK_SIZE};

const B: usize = BLOCK_SIZE as usize;

fn device(file: &dbos_nvme::host::BackingFile) -> InlineDevice {
    InlineDevice::open(
        file,
        4 << 20,
        PollerConfig::default(),
        UringConfig::default(),
    )
    .expect("inline device")
}

/// Poller threads of this process (an inline device starts none; no test
/// here starts a `process::Device`).
fn pollers() -> usize {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter(|t| {
            let comm = t.as_ref().unwrap().path().join("comm");
            std::fs::read_to_string(comm).is_ok_and(|c| c.trim() == "nvme-poller")
        })
        .count()
}

#[test]
fn data_round_trips_at_depth_with_one_doorbell_per_batch_and_no_thread() {
    let dir = direct_io_dir();
    let file = backing_file(dir.path(), 512);
    let dev = device(&file);
    let mut qp = dev.queue_pair(32).unwrap();
    assert_eq!(pollers(), 0, "an inline device runs no poller thread");
    let bufs = dev.alloc(16 * B).unwrap();
    // Write 16 blocks at scattered LBAs in one batch of 16 commands.
    let lbas: Vec<u64> = (0..16).map(|i| 7 + i * 29).collect();
    for (i, &lba) in lbas.iter().enumerate() {
        bufs.write(i * B, &pattern(lba, 1, B));
    }
    let cmds: Vec<Command> = lbas
        .iter()
        .enumerate()
        .map(|(i, &lba)| {
            Command::write(
                Lba(lba),
                1,
                DataPtr::Contiguous(bufs.addr.offset((i * B) as u64)),
            )
        })
        .collect();
    let mut ids = vec![CommandId(0); 16];
    let bells0 = qp.stats().doorbells;
    assert_eq!(qp.submit_batch(&cmds, &mut ids).unwrap(), 16);
    assert_eq!(
        qp.stats().doorbells - bells0,
        1,
        "one doorbell for the batch"
    );
    let mut done = Vec::new();
    while done.len() < 16 {
        let c = qp.wait().expect("outstanding");
        assert_eq!(c.result(), Ok(()));
        done.push(c.cid);
    }
    done.sort_by_key(|c| c.0);
    let mut want = ids.clone();
    want.sort_by_key(|c| c.0);
    assert_eq!(done, want, "each command completes exactly once");
    assert_eq!(qp.wait(), None);
    // Read them back into a zeroed buffer, one batch, reaped in bulk.
    bufs.fill(0);
    let reads: Vec<Command> = lbas
        .iter()
        .enumerate()
        .map(|(i, &lba)| {
            Command::read(
                Lba(lba),
                1,
                DataPtr::Contiguous(bufs.addr.offset((i * B) as u64)),
            )
        })
        .collect();
    assert_eq!(qp.submit_batch(&reads, &mut ids).unwrap(), 16);
    let mut out = [Completion::default(); 16];
    let mut n = 0;
    while n < 16 {
        let got = qp.reap(&mut out[n..]);
        if got == 0 {
            qp.wait_for_completion();
        }
        n += got;
    }
    for (i, &lba) in lbas.iter().enumerate() {
        let mut got = vec![0u8; B];
        bufs.read(i * B, &mut got);
        assert!(got == pattern(lba, 1, B), "block {lba}");
    }
    let s = qp.host_stats();
    assert_eq!(s.commands, 32, "{s:?}");
    assert_eq!(s.errors, 0, "{s:?}");
    // A flush and a FUA write through execute.
    bufs.write(0, &pattern(500, 2, B));
    qp.execute(&Command::write_fua(
        Lba(500),
        1,
        DataPtr::Contiguous(bufs.addr),
    ))
    .unwrap();
    qp.execute(&Command::flush()).unwrap();
    assert_eq!(pollers(), 0);
}

#[test]
fn a_command_past_the_end_gets_an_error_completion_and_the_queue_goes_on() {
    let dir = direct_io_dir();
    let file = backing_file(dir.path(), 64);
    let dev = device(&file);
    let mut qp = dev.queue_pair(8).unwrap();
    let buf = dev.alloc(2 * B).unwrap();
    assert_eq!(
        qp.execute(&Command::read(Lba(63), 2, DataPtr::Contiguous(buf.addr))),
        Err(DriverError::Device(NvmeError::LbaOutOfRange))
    );
    assert_eq!(
        qp.execute(&Command::read(
            Lba(u64::MAX),
            1,
            DataPtr::Contiguous(buf.addr)
        )),
        Err(DriverError::Device(NvmeError::LbaOutOfRange))
    );
    // A second execute with one outstanding is refused, not a hang.
    qp.submit(&Command::read(Lba(1), 1, DataPtr::Contiguous(buf.addr)))
        .unwrap();
    assert_eq!(
        qp.execute(&Command::flush()),
        Err(DriverError::CommandsOutstanding)
    );
    assert_eq!(qp.wait().map(|c| c.result()), Some(Ok(())));
    qp.execute(&Command::read(Lba(62), 2, DataPtr::Contiguous(buf.addr)))
        .unwrap();
    assert_eq!(qp.host_stats().errors, 2);
}

#[test]
fn writes_fail_once_the_file_is_deleted() {
    let dir = direct_io_dir();
    let file = backing_file(dir.path(), 64);
    let dev = device(&file);
    let mut qp = dev.queue_pair(8).unwrap();
    let buf = dev.alloc(B).unwrap();
    qp.execute(&Command::write_fua(
        Lba(1),
        1,
        DataPtr::Contiguous(buf.addr),
    ))
    .unwrap();
    std::fs::remove_file(dir.path().join("disk.img")).unwrap();
    assert_eq!(
        qp.execute(&Command::flush()),
        Err(DriverError::Device(NvmeError::InternalError))
    );
    assert_eq!(
        qp.execute(&Command::write(Lba(2), 1, DataPtr::Contiguous(buf.addr))),
        Err(DriverError::Device(NvmeError::InternalError))
    );
    // Reads go on.
    qp.execute(&Command::read(Lba(1), 1, DataPtr::Contiguous(buf.addr)))
        .unwrap();
}

#[test]
fn queue_pairs_on_several_threads_each_drive_their_own() {
    let dir = direct_io_dir();
    let file = backing_file(dir.path(), 1024);
    let dev = device(&file);
    std::thread::scope(|s| {
        for t in 0..4u64 {
            let dev = &dev;
            s.spawn(move || {
                let mut qp = dev.queue_pair(16).unwrap();
                let buf = dev.alloc(8 * B).unwrap();
                let mut rng = Rng(0x1234 + t);
                // Each thread owns LBAs t, t + 4, t + 8, ...
                for round in 1..=20u64 {
                    let lbas: Vec<u64> = (0..8).map(|_| (rng.next() % 256) * 4 + t).collect();
                    let mut lbas = lbas;
                    lbas.sort();
                    lbas.dedup();
                    for (i, &lba) in lbas.iter().enumerate() {
                        buf.write(i * B, &pattern(lba, round, B));
                        qp.submit(&Command::write(
                            Lba(lba),
                            1,
                            DataPtr::Contiguous(buf.addr.offset((i * B) as u64)),
                        ))
                        .unwrap();
                    }
                    while let Some(c) = qp.wait() {
                        assert_eq!(c.result(), Ok(()));
                    }
                    buf.fill(0);
                    for (i, &lba) in lbas.iter().enumerate() {
                        qp.submit(&Command::read(
                            Lba(lba),
                            1,
                            DataPtr::Contiguous(buf.addr.offset((i * B) as u64)),
                        ))
                        .unwrap();
                    }
                    while let Some(c) = qp.wait() {
                        assert_eq!(c.result(), Ok(()));
                    }
                    for (i, &lba) in lbas.iter().enumerate() {
                        let mut got = vec![0u8; B];
                        buf.read(i * B, &mut got);
                        assert!(got == pattern(lba, round, B), "thread {t} block {lba}");
                    }
                }
            });
        }
    });
}

#[test]
fn a_queue_pair_moved_to_another_thread_goes_on_working() {
    let dir = direct_io_dir();
    let file = backing_file(dir.path(), 64);
    let dev = device(&file);
    let mut qp = dev.queue_pair(8).unwrap();
    let buf = dev.alloc(B).unwrap();
    buf.write(0, &pattern(3, 1, B));
    qp.execute(&Command::write(Lba(3), 1, DataPtr::Contiguous(buf.addr)))
        .unwrap();
    let qp = std::thread::scope(|s| {
        s.spawn(move || {
            buf.fill(0);
            qp.execute(&Command::read(Lba(3), 1, DataPtr::Contiguous(buf.addr)))
                .unwrap();
            let mut got = vec![0u8; B];
            buf.read(0, &mut got);
            assert!(got == pattern(3, 1, B));
            qp
        })
        .join()
        .unwrap()
    });
    drop(qp);
}

#[test]
fn polling_the_inline_queue_pair_runs_its_host() {
    let dir = direct_io_dir();
    let file = backing_file(dir.path(), 64);
    let dev = device(&file);
    let mut qp = dev.queue_pair(8).unwrap();
    let buf = dev.alloc(4 * B).unwrap();
    for round in 0..20u64 {
        for i in 0..4u64 {
            qp.submit(&Command::read(
                Lba(i * 3),
                1,
                DataPtr::Contiguous(buf.addr.offset(i * BLOCK_SIZE)),
            ))
            .unwrap();
        }
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let mut got = 0;
        let mut out = [Completion::default(); 4];
        while got < 4 {
            // Alternate the two: each runs the host when the ring is empty.
            if round % 2 == 0 {
                if let Some(c) = qp.poll() {
                    assert_eq!(c.result(), Ok(()));
                    got += 1;
                }
            } else {
                got += qp.reap(&mut out[got..]);
            }
            assert!(
                std::time::Instant::now() < deadline,
                "round {round}: {got} of 4"
            );
            std::thread::yield_now();
        }
    }
}
