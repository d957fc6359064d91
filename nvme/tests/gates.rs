//! The poller's gates between valid commands and the backend: a backing
//! file deleted while in use (flushes and FUA writes are not acknowledged,
//! later writes refused) and an injected error (the N-th command of a kind
//! fails and is not carried out).
// The test hands the driver memory it allocates and owns.
#![allow(clippy::undocumented_unsafe_blocks)]

mod common;

use common::{backing_file, direct_io_dir};
use dbos_nvme::host::testing::{InspectBackend, Recorded};
use dbos_nvme::host::{
    Device, DmaMemory, ErrorInjection, FailedCommand, IoKind, OpMatch, Poller, PollerConfig,
    ProcessMemory, SyncBackend, UringConfig,
};
use dbos_nvme::{Command, DataPtr, DriverError, Lba, NvmeError, QueueMemory, QueuePair};
use std::sync::Arc;

/// Each kind of injection fails exactly the N-th command of its kind
/// (reads, writes with and without FUA, flushes counted apart, over all
/// queue pairs), with a failing disk's status, and the failed command never
/// reaches the backend; the commands around it complete normally.
#[test]
fn an_injected_error_fails_the_nth_command_of_its_kind_and_nothing_else() {
    for (kind, nth) in [
        (OpMatch::Write, 3),
        (OpMatch::Read, 2),
        (OpMatch::Flush, 2),
        (OpMatch::Write, 99),
    ] {
        let dir = direct_io_dir();
        let file = backing_file(dir.path(), 16);
        let pm = Arc::new(ProcessMemory::new(1 << 20).unwrap());
        let dma = Arc::new(DmaMemory::from_process(pm.clone()).unwrap());
        let (backend, inspector) = InspectBackend::new(SyncBackend::new(&file).unwrap());
        let mut poller = Poller::new(dma, backend, PollerConfig::default()).unwrap();
        poller.inject_error(ErrorInjection { kind, nth });
        let layout = dbos_nvme::QueueLayout::new(8).unwrap();
        let mut queues: Vec<QueuePair<_>> = (0..2)
            .map(|_| {
                let qmem = pm.alloc(layout.size() as usize).unwrap();
                let qp = unsafe {
                    QueuePair::new(
                        QueueMemory {
                            virt: qmem.ptr,
                            dma: qmem.addr,
                        },
                        8,
                        || {},
                    )
                }
                .unwrap();
                poller.add_queue(qp.config()).unwrap();
                qp
            })
            .collect();
        let buf = pm.alloc(4096).unwrap();
        let data = DataPtr::Contiguous(buf.addr);
        // Alternating queue pairs: the count runs over both.
        let script = [
            Command::write(Lba(1), 1, data),
            Command::read(Lba(1), 1, data),
            Command::write_fua(Lba(2), 1, data),
            Command::flush(),
            Command::write(Lba(3), 1, data),
            Command::read(Lba(3), 1, data),
            Command::flush(),
            Command::write_fua(Lba(4), 1, data),
        ];
        let mut results = Vec::new();
        for (i, cmd) in script.iter().enumerate() {
            let qp = &mut queues[i % 2];
            let cid = qp.submit(cmd).unwrap();
            poller.run_until_idle();
            let c = qp.wait().unwrap();
            assert_eq!(c.cid, cid);
            results.push(c.result());
        }
        // Which script entry is the nth of its kind, and what the
        // inspector should have seen: everything else.
        let mut seen = 0;
        let target = script.iter().position(|cmd| {
            use dbos_nvme::queue::Opcode;
            let matches = matches!(
                (kind, cmd.opcode),
                (OpMatch::Read, Opcode::Read)
                    | (OpMatch::Write, Opcode::Write)
                    | (OpMatch::Flush, Opcode::Flush)
            );
            seen += u64::from(matches);
            matches && seen == nth
        });
        let error = match kind {
            OpMatch::Read => NvmeError::UnrecoveredReadError,
            _ => NvmeError::WriteFault,
        };
        for (i, r) in results.iter().enumerate() {
            if Some(i) == target {
                assert_eq!(*r, Err(error), "{kind:?} {nth}: command {i}");
            } else {
                assert_eq!(*r, Ok(()), "{kind:?} {nth}: command {i}");
            }
        }
        let recorded: Vec<Recorded> = inspector.take();
        assert_eq!(
            recorded.len(),
            script.len() - usize::from(target.is_some()),
            "{kind:?} {nth}: the failed command reached the backend: {recorded:?}"
        );
        let stats = poller.stats();
        assert_eq!(
            (
                stats.read_commands,
                stats.write_commands,
                stats.flush_commands
            ),
            (2, 4, 2)
        );
        let failed = poller.injected_failure();
        match target {
            None => assert_eq!(failed, None, "{kind:?} {nth}"),
            Some(i) => {
                let f = failed.expect("the failed command is reported");
                let (kind_of, slba, blocks) = match i {
                    0 => (IoKind::Write { fua: false }, 1, 1),
                    1 => (IoKind::Read, 1, 1),
                    2 => (IoKind::Write { fua: true }, 2, 1),
                    4 => (IoKind::Write { fua: false }, 3, 1),
                    5 => (IoKind::Read, 3, 1),
                    3 | 6 => (IoKind::Flush, 0, 0),
                    _ => (IoKind::Write { fua: true }, 4, 1),
                };
                assert_eq!(
                    f,
                    FailedCommand {
                        kind: kind_of,
                        slba,
                        blocks,
                        queue: (i % 2) as u16,
                        cid: f.cid,
                        error,
                    }
                );
            }
        }
    }
}

/// A process-mode device on a file that is deleted while it runs: writes
/// and reads go on until the next flush or FUA write, which fails (internal
/// error), and so does every later write and flush; reads still work.
#[test]
fn a_deleted_backing_file_acknowledges_no_flush_or_fua_write() {
    let dir = direct_io_dir();
    let file = backing_file(dir.path(), 16);
    let path = file.path().to_path_buf();
    let dev = Device::open(
        &file,
        1 << 20,
        PollerConfig::default(),
        UringConfig::default(),
    )
    .unwrap();
    let mut qp = dev.queue_pair(8).unwrap();
    let buf = dev.alloc(4096).unwrap();
    let data = DataPtr::Contiguous(buf.addr);
    let refused = Err(DriverError::Device(NvmeError::InternalError));
    assert_eq!(qp.execute(&Command::write_fua(Lba(0), 1, data)), Ok(()));
    assert_eq!(qp.execute(&Command::flush()), Ok(()));
    std::fs::remove_file(&path).unwrap();
    assert!(file.is_deleted().unwrap());
    // Not durable, and not checked: a plain write completes.
    assert_eq!(qp.execute(&Command::write(Lba(1), 1, data)), Ok(()));
    assert_eq!(qp.execute(&Command::flush()), refused);
    assert_eq!(qp.execute(&Command::read(Lba(0), 1, data)), Ok(()));
    assert_eq!(qp.execute(&Command::write(Lba(2), 1, data)), refused);
    assert_eq!(qp.execute(&Command::write_fua(Lba(2), 1, data)), refused);
    assert_eq!(qp.execute(&Command::flush()), refused);
    assert_eq!(qp.execute(&Command::read(Lba(1), 1, data)), Ok(()));
    drop(qp);
    let stats = dev.shutdown();
    assert_eq!(stats.refused_deleted, 4);
    assert!(!path.exists(), "nothing recreated the file");

    // Without a deletion, flushes and FUA writes are acknowledged.
    let file = backing_file(dir.path(), 16);
    let dev = Device::open(
        &file,
        1 << 20,
        PollerConfig::default(),
        UringConfig::default(),
    )
    .unwrap();
    let mut qp = dev.queue_pair(8).unwrap();
    let buf = dev.alloc(4096).unwrap();
    let data = DataPtr::Contiguous(buf.addr);
    for _ in 0..3 {
        assert_eq!(qp.execute(&Command::write_fua(Lba(0), 1, data)), Ok(()));
        assert_eq!(qp.execute(&Command::flush()), Ok(()));
    }
    drop(qp);
    assert_eq!(dev.shutdown().refused_deleted, 0);
}
