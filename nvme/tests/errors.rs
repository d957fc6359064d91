//! Error statuses for every bad input, and flush/FUA issued as the right
//! syscalls.

mod common;

use common::{backing_file, direct_io_dir, inspected_device, pattern};
use dbos_nvme::host::testing::{OpMatch, Recorded};
use dbos_nvme::host::uring::entry_for;
use dbos_nvme::host::{HostBuf, IoKind, IoOp};
use dbos_nvme::queue::Opcode;
use dbos_nvme::{Command, DataPtr, DmaAddr, DriverError, Lba, NvmeError, Sqe, BLOCK_SIZE, NSID};

const B: usize = BLOCK_SIZE as usize;

/// The raw bytes of an io_uring submission entry.
fn sqe_bytes(e: &io_uring::squeue::Entry) -> [u8; 64] {
    assert_eq!(std::mem::size_of::<io_uring::squeue::Entry>(), 64);
    // SAFETY: squeue::Entry is a repr(C) wrapper of the kernel's 64-byte SQE.
    unsafe { std::mem::transmute_copy(e) }
}

#[test]
fn uring_entries_are_the_right_syscalls() {
    let buf = HostBuf {
        ptr: 0x7000_0000_1000 as *mut u8,
        len: 8192,
        fixed: Some(3),
    };
    let u32_at = |b: &[u8; 64], o: usize| u32::from_le_bytes(b[o..o + 4].try_into().unwrap());
    let u64_at = |b: &[u8; 64], o: usize| u64::from_le_bytes(b[o..o + 8].try_into().unwrap());
    // Layout of struct io_uring_sqe: opcode 0, fd 4, off 8, addr 16, len 24,
    // rw_flags/fsync_flags 28, user_data 32, buf_index 40.
    let e = sqe_bytes(&entry_for(
        &IoOp {
            kind: IoKind::Read,
            offset: 40960,
            buf,
        },
        77,
    ));
    assert_eq!(e[0], io_uring::opcode::ReadFixed::CODE);
    assert_eq!(e[1] & 1, 1, "IOSQE_FIXED_FILE");
    assert_eq!(
        (u64_at(&e, 8), u64_at(&e, 16), u32_at(&e, 24)),
        (40960, 0x7000_0000_1000, 8192)
    );
    assert_eq!(
        (
            u32_at(&e, 28),
            u64_at(&e, 32),
            u16::from_le_bytes([e[40], e[41]])
        ),
        (0, 77, 3)
    );
    let e = sqe_bytes(&entry_for(
        &IoOp {
            kind: IoKind::Write { fua: false },
            offset: 4096,
            buf,
        },
        1,
    ));
    assert_eq!(e[0], io_uring::opcode::WriteFixed::CODE);
    assert_eq!(u32_at(&e, 28), 0, "plain write has no RWF flags");
    let e = sqe_bytes(&entry_for(
        &IoOp {
            kind: IoKind::Write { fua: true },
            offset: 4096,
            buf,
        },
        1,
    ));
    assert_eq!(e[0], io_uring::opcode::WriteFixed::CODE);
    assert_eq!(
        u32_at(&e, 28),
        libc::RWF_DSYNC as u32,
        "FUA is a RWF_DSYNC write"
    );
    // Outside every registered buffer: the plain opcodes, no buffer index.
    let plain = HostBuf { fixed: None, ..buf };
    for (kind, code) in [
        (IoKind::Read, io_uring::opcode::Read::CODE),
        (IoKind::Write { fua: true }, io_uring::opcode::Write::CODE),
    ] {
        let e = sqe_bytes(&entry_for(
            &IoOp {
                kind,
                offset: 4096,
                buf: plain,
            },
            5,
        ));
        assert_eq!(e[0], code);
        assert_eq!(
            (
                u64_at(&e, 16),
                u32_at(&e, 24),
                u16::from_le_bytes([e[40], e[41]])
            ),
            (0x7000_0000_1000, 8192, 0)
        );
    }
    let none = HostBuf {
        ptr: std::ptr::null_mut(),
        len: 0,
        fixed: None,
    };
    let e = sqe_bytes(&entry_for(
        &IoOp {
            kind: IoKind::Flush,
            offset: 0,
            buf: none,
        },
        1,
    ));
    assert_eq!(e[0], io_uring::opcode::Fsync::CODE);
    assert_eq!(
        u32_at(&e, 28),
        io_uring::types::FsyncFlags::DATASYNC.bits(),
        "flush is fdatasync"
    );
}

#[test]
fn flush_and_fua_reach_the_backend_as_such() {
    let dir = direct_io_dir();
    let file = backing_file(dir.path(), 16);
    let (dev, inspector) = inspected_device(&file, 1 << 20, 200);
    let mut qp = dev.queue_pair(8).unwrap();
    let buf = dev.alloc(B).unwrap();
    buf.write(0, &pattern(1, 1, B));
    qp.execute(&Command::write(Lba(1), 1, DataPtr::Contiguous(buf.addr)))
        .unwrap();
    qp.execute(&Command::flush()).unwrap();
    qp.execute(&Command::write_fua(
        Lba(2),
        1,
        DataPtr::Contiguous(buf.addr),
    ))
    .unwrap();
    let r = |kind, offset, len| Recorded {
        kind,
        offset,
        len,
        failed_with: None,
    };
    assert_eq!(
        inspector.take(),
        [
            r(IoKind::Write { fua: false }, 4096, 4096),
            r(IoKind::Flush, 0, 0),
            r(IoKind::Write { fua: true }, 8192, 4096),
        ]
    );
}

#[test]
fn bad_commands_get_their_status_and_touch_nothing() {
    let dir = direct_io_dir();
    let file = backing_file(dir.path(), 16);
    let (dev, inspector) = inspected_device(&file, 1 << 20, 200);
    let mut qp = dev.queue_pair(8).unwrap();
    let buf = dev.alloc(2 * B).unwrap();
    let err = |e| Err(DriverError::Device(e));
    let contig = DataPtr::Contiguous(buf.addr);

    // LBA range outside the 16-block namespace (a write past the end).
    assert_eq!(
        qp.execute(&Command::write(Lba(16), 1, contig)),
        err(NvmeError::LbaOutOfRange)
    );
    assert_eq!(
        qp.execute(&Command::write(Lba(15), 2, contig)),
        err(NvmeError::LbaOutOfRange)
    );
    assert_eq!(
        qp.execute(&Command::read(Lba(u64::MAX), 1, contig)),
        err(NvmeError::LbaOutOfRange)
    );
    // Misaligned data pointers.
    let mis = DataPtr::Contiguous(buf.addr.offset(512));
    assert_eq!(
        qp.execute(&Command::read(Lba(0), 1, mis)),
        err(NvmeError::InvalidField)
    );
    let mis = DataPtr::Prp {
        prp1: buf.addr.offset(8),
        prp2: DmaAddr(0),
    };
    assert_eq!(
        qp.execute(&Command::write(Lba(0), 1, mis)),
        err(NvmeError::InvalidField)
    );
    // Data pointers outside the registered region, or running past its end.
    let region = dev.memory().region();
    let outside = DataPtr::Contiguous(DmaAddr(region.addr + region.len));
    assert_eq!(
        qp.execute(&Command::read(Lba(0), 1, outside)),
        err(NvmeError::InvalidField)
    );
    let below = DataPtr::Prp {
        prp1: DmaAddr(region.addr - 4096),
        prp2: DmaAddr(0),
    };
    assert_eq!(
        qp.execute(&Command::write(Lba(0), 1, below)),
        err(NvmeError::InvalidField)
    );
    let straddle = DataPtr::Contiguous(DmaAddr(region.addr + region.len - 4096));
    assert_eq!(
        qp.execute(&Command::read(Lba(0), 2, straddle)),
        err(NvmeError::InvalidField)
    );
    let second = DataPtr::Prp {
        prp1: buf.addr,
        prp2: DmaAddr(region.addr + region.len),
    };
    assert_eq!(
        qp.execute(&Command::read(Lba(0), 2, second)),
        err(NvmeError::InvalidField)
    );
    // Namespace and opcode.
    let mut s = Command::read(Lba(0), 1, contig).to_sqe(dbos_nvme::CommandId(0));
    s.nsid = 2;
    qp.submit_raw(s).unwrap();
    assert_eq!(
        qp.wait().unwrap().result(),
        Err(NvmeError::InvalidNamespace)
    );
    let mut s = Sqe::new(Opcode::Read, dbos_nvme::CommandId(0), NSID);
    s.cdw0 = (s.cdw0 & !0xff) | 0x09; // Dataset management: not served.
    qp.submit_raw(s).unwrap();
    assert_eq!(qp.wait().unwrap().result(), Err(NvmeError::InvalidOpcode));
    // Transfer larger than 256 blocks.
    let mut s = Command::read(Lba(0), 1, contig).to_sqe(dbos_nvme::CommandId(0));
    s.set_range(Lba(0), 257);
    qp.submit_raw(s).unwrap();
    assert_eq!(qp.wait().unwrap().result(), Err(NvmeError::InvalidField));

    // None of that reached the file.
    assert_eq!(inspector.take(), []);
    assert_eq!(
        std::fs::metadata(file.path()).unwrap().len(),
        16 * BLOCK_SIZE
    );
    let stats = dev.poller().stats();
    assert_eq!((stats.commands, stats.errors, stats.io_ops), (12, 12, 0));
}

#[test]
fn io_errors_map_to_nvme_statuses() {
    let dir = direct_io_dir();
    let file = backing_file(dir.path(), 16);
    let (dev, inspector) = inspected_device(&file, 1 << 20, 200);
    let mut qp = dev.queue_pair(8).unwrap();
    let buf = dev.alloc(2 * B).unwrap();
    let contig = DataPtr::Contiguous(buf.addr);
    let err = |e| Err(DriverError::Device(e));

    inspector.fail(OpMatch::Read, libc::EIO);
    assert_eq!(
        qp.execute(&Command::read(Lba(0), 1, contig)),
        err(NvmeError::UnrecoveredReadError)
    );
    // A command split into several operations fails as a whole.
    let split = DataPtr::Prp {
        prp1: buf.page(1),
        prp2: buf.page(0),
    };
    assert_eq!(
        qp.execute(&Command::read(Lba(0), 2, split)),
        err(NvmeError::UnrecoveredReadError)
    );
    assert_eq!(qp.execute(&Command::write(Lba(0), 1, contig)), Ok(()));
    inspector.clear_faults();

    inspector.fail(OpMatch::Write, libc::EIO);
    assert_eq!(
        qp.execute(&Command::write(Lba(0), 1, contig)),
        err(NvmeError::WriteFault)
    );
    assert_eq!(
        qp.execute(&Command::write_fua(Lba(0), 1, contig)),
        err(NvmeError::WriteFault)
    );
    inspector.clear_faults();

    inspector.fail(OpMatch::Flush, libc::EIO);
    assert_eq!(qp.execute(&Command::flush()), err(NvmeError::WriteFault));
    inspector.clear_faults();

    inspector.fail(OpMatch::Write, libc::ENOSPC);
    assert_eq!(
        qp.execute(&Command::write(Lba(3), 1, contig)),
        err(NvmeError::CapacityExceeded)
    );
    inspector.clear_faults();
    inspector.fail(OpMatch::Flush, libc::ENOSPC);
    assert_eq!(
        qp.execute(&Command::flush()),
        err(NvmeError::CapacityExceeded)
    );
    inspector.clear_faults();

    assert_eq!(qp.execute(&Command::read(Lba(0), 1, contig)), Ok(()));
    let failed: Vec<Option<i32>> = inspector.take().iter().map(|r| r.failed_with).collect();
    let (eio, enospc) = (Some(libc::EIO), Some(libc::ENOSPC));
    assert_eq!(
        failed,
        [eio, eio, eio, None, eio, eio, eio, enospc, enospc, None]
    );
}

#[test]
fn the_backing_file_is_sized_once() {
    let dir = direct_io_dir();
    let path = dir.path().join("f.img");
    let f = dbos_nvme::host::BackingFile::create(&path, 64 * BLOCK_SIZE).unwrap();
    assert_eq!(f.blocks(), 64);
    assert!(matches!(
        dbos_nvme::host::BackingFile::create(&path, 64 * BLOCK_SIZE),
        Err(dbos_nvme::host::FileError::Io { .. })
    ));
    assert!(matches!(
        dbos_nvme::host::BackingFile::create(dir.path().join("g.img"), 1000),
        Err(dbos_nvme::host::FileError::Size { len: 1000, .. })
    ));
    drop(f);
    assert_eq!(
        dbos_nvme::host::BackingFile::open(&path).unwrap().blocks(),
        64
    );
    std::fs::write(dir.path().join("odd.img"), [0u8; 100]).unwrap();
    assert!(matches!(
        dbos_nvme::host::BackingFile::open(dir.path().join("odd.img")),
        Err(dbos_nvme::host::FileError::Size { len: 100, .. })
    ));
    // Not a regular file: named as such before anything is opened.
    for (other, kind) in [
        ("/dev/null", "a character device"),
        (dir.path().to_str().unwrap(), "a directory"),
    ] {
        let err = dbos_nvme::host::BackingFile::open(other).err().unwrap();
        assert!(
            matches!(err, dbos_nvme::host::FileError::NotAFile { kind: k, .. } if k == kind),
            "{other}: {err}"
        );
        assert_eq!(
            err.to_string(),
            format!("{other} is {kind}, not a regular file")
        );
    }
    // Blocks are reserved at creation (fallocate), not on first write.
    let meta = std::fs::metadata(&path).unwrap();
    assert_eq!(
        std::os::unix::fs::MetadataExt::blocks(&meta) * 512,
        64 * BLOCK_SIZE
    );
}

/// Two opens of one file conflict, even in one process (`flock` locks
/// belong to the open file description); the refusal names the file and
/// the holder; the lock lasts as long as any descriptor of the holder's
/// open (a backend's duplicate included) and is released with the last.
#[test]
fn a_backing_file_has_one_opener_at_a_time() {
    use dbos_nvme::host::{BackingFile, FileError, LockHolder, PollerConfig, UringConfig};
    let dir = direct_io_dir();
    let path = dir.path().join("locked.img");
    let first = BackingFile::create(&path, 64 * BLOCK_SIZE).unwrap();
    let err = BackingFile::open(&path).unwrap_err();
    let FileError::Locked { path: p, holder } = &err else {
        panic!("not refused as locked: {err}");
    };
    assert_eq!(p, &path);
    let me = std::process::id();
    let comm = std::fs::read_to_string("/proc/self/comm").unwrap();
    assert_eq!(
        holder,
        &LockHolder::Process {
            pid: me,
            comm: Some(comm.trim_end().to_string()),
            this_process: true
        }
    );
    let text = err.to_string();
    assert!(text.contains(&path.display().to_string()), "{text}");
    assert!(text.contains(&format!("process {me} (")), "{text}");
    assert!(text.contains("is in use"), "{text}");

    // A device's backend keeps its own duplicate of the descriptor: the
    // file stays locked after the BackingFile itself is dropped, until the
    // device is gone.
    let dev = dbos_nvme::host::Device::open(
        &first,
        1 << 20,
        PollerConfig::default(),
        UringConfig::default(),
    )
    .unwrap();
    drop(first);
    assert!(matches!(
        BackingFile::open(&path),
        Err(FileError::Locked { .. })
    ));
    drop(dev);
    let second = BackingFile::open(&path).expect("free once the device is gone");
    assert!(matches!(
        BackingFile::open(&path),
        Err(FileError::Locked { .. })
    ));
    drop(second);
    BackingFile::open(&path).unwrap();
}
