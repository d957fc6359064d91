//! Engine behaviour on the real queue pair: commit, reopen, torn pages,
//! torn log tails, failures, a full log, the write-ahead rule.

mod common;

use common::*;
use dbos_bufferpool::device::{DeviceError, IoFailure};
use dbos_bufferpool::log::{
    lsn_advance, lsn_of_payload, payload_index, ScanStop, LOG_BLOCK, SECTOR,
};
use dbos_bufferpool::page::PageCheck;
use dbos_bufferpool::record::RecordError;
use dbos_bufferpool::{
    CommitMode, Damage, Error, KvTable, Layout, Lsn, PageId, SectorState, TruncateRequest, WalError,
};
use dbos_nvme::host::backend::IoKind;
use dbos_nvme::host::testing::OpMatch;
use dbos_nvme::host::BackingFile;

const LAYOUT: Layout = Layout {
    log_blocks: 64,
    data_pages: 4,
};

#[test]
fn commits_survive_a_clean_restart_on_an_odirect_file() {
    let dir = direct_io_dir();
    let path = dir.path().join("db.img");
    let file = BackingFile::create(&path, LAYOUT.blocks() * 4096).unwrap();
    {
        let dev = file_device(&file);
        let e = format(&dev, LAYOUT, CommitMode::Fua);
        let kv = KvTable::new(&e, PageId(0), 4);
        for i in 0..100u64 {
            kv.put(&[(i, i + 1000), (i + 1000, i + 2000)]).unwrap();
        }
        assert_eq!(e.stats().transactions, 100);
        // First change of each touched page after the format: one image each.
        assert_eq!(e.stats().page_images, 3);
        assert_eq!(kv.get(5).unwrap(), 1005);
    }
    let dev = file_device(&file);
    let (e, report) = open(&dev, CommitMode::Fua).unwrap();
    assert_eq!(report.transactions, 100);
    assert_eq!(report.records, 100 * 3 + 3);
    assert_eq!(report.writes_applied, 200);
    assert_eq!(report.writes_skipped, 0);
    assert_eq!(report.page_images, 3);
    assert_eq!(report.pages_repaired, []);
    assert_eq!(report.writes_discarded, 0);
    assert_eq!(report.stop, ScanStop::PartialSector);
    assert_eq!(report.epoch, 2);
    assert_eq!(report.pages_written, 3);
    let kv = KvTable::new(&e, PageId(0), 4);
    for i in 0..100u64 {
        assert_eq!(kv.get(i).unwrap(), i + 1000);
        assert_eq!(kv.get(i + 1000).unwrap(), i + 2000);
    }
    assert_eq!(kv.get(100).unwrap(), 0);
    // The end-of-recovery checkpoint bounds the next recovery: nothing to
    // replay.
    kv.put(&[(7, 7)]).unwrap();
    drop(e);
    let (e, report) = open(&dev, CommitMode::Fua).unwrap();
    assert_eq!(report.transactions, 1);
    assert_eq!(report.page_images, 1);
    assert_eq!(report.epoch, 3);
    assert_eq!(KvTable::new(&e, PageId(0), 4).get(7).unwrap(), 7);
}

/// Keys whose slots cover all eight sectors of page 0.
fn spread_keys() -> Vec<u64> {
    (0..8).map(|s| s * 64 + 3).collect()
}

#[test]
fn a_page_torn_at_any_sector_boundary_is_repaired_from_its_image() {
    let (dev, pc) = memory_device(vec![0; disk_bytes(LAYOUT)]);
    let e = format(&dev, LAYOUT, CommitMode::Fua);
    let kv = KvTable::new(&e, PageId(0), 4);
    let keys = spread_keys();
    let puts: Vec<(u64, u64)> = keys.iter().map(|&k| (k, k + 1)).collect();
    kv.put(&puts).unwrap();
    e.checkpoint().unwrap();
    // Changed after the checkpoint: the first change logs page 0's image.
    let puts2: Vec<(u64, u64)> = keys.iter().map(|&k| (k, k + 2)).collect();
    kv.put(&puts2).unwrap();
    let before = pc.current();
    // A second checkpoint writes page 0 in its new version.
    e.checkpoint().unwrap();
    let after = pc.current();
    drop(e);
    drop(dev);
    let page0 = LAYOUT.page_lba(PageId(0)) as usize * 4096;
    for k in 1..8 {
        for new_first in [true, false] {
            // The crash hit the checkpoint's page write: the control block
            // still names the first checkpoint's redo point.
            let mut img = before.clone();
            for s in 0..8 {
                let src = if (s < k) == new_first {
                    &after
                } else {
                    &before
                };
                let at = page0 + s * 512;
                img[at..at + 512].copy_from_slice(&src[at..at + 512]);
            }
            let (dev, _) = memory_device(img);
            let (e, report) = open(&dev, CommitMode::Fua).unwrap();
            assert_eq!(report.pages_repaired, [PageId(0)], "tear at sector {k}");
            assert_eq!(report.page_images, 1);
            assert_eq!(report.transactions, 1);
            let kv = KvTable::new(&e, PageId(0), 4);
            for &k in &keys {
                assert_eq!(kv.get(k).unwrap(), k + 2);
            }
        }
    }
    // Torn after the second checkpoint completed, the log has no image:
    // recovery refuses rather than invent the page.
    let mut img = after.clone();
    let at = page0 + 512;
    img[at..at + 512].copy_from_slice(&before[at..at + 512]);
    let (dev, _) = memory_device(img);
    let err = open(&dev, CommitMode::Fua).err();
    let lba = LAYOUT.page_lba(PageId(0));
    assert_eq!(
        err,
        Some(Error::UnrepairablePage {
            page: PageId(0),
            lba,
            check: PageCheck::BadChecksum
        })
    );
    assert_eq!(
        err.unwrap().to_string(),
        format!(
            "page 0 (device block {lba}, bytes {}..{}) is damaged on storage (its checksum \
             does not hold) and the log holds no image of it to restore it from. Recovery \
             refused and wrote nothing; the page's contents are lost unless it is put back \
             from a copy of the store",
            lba * 4096,
            lba * 4096 + 4096
        )
    );
}

/// The two cases of damage below used to be taken for a torn tail and the
/// acknowledged commits after them silently dropped. They are corruption:
/// recovery refuses, naming the place, and writes nothing; the operator's
/// explicit truncation request then recovers what precedes the damage.
#[test]
fn a_corrupt_log_is_refused_and_truncated_only_on_request() {
    let (dev, pc) = memory_device(vec![0; disk_bytes(LAYOUT)]);
    let e = format(&dev, LAYOUT, CommitMode::Fua);
    let kv = KvTable::new(&e, PageId(0), 4);
    let ends: Vec<Lsn> = (0..40u64).map(|i| kv.put(&[(i, i + 1)]).unwrap()).collect();
    let clean = pc.current();
    drop(e);
    drop(dev);
    let log_byte = |lsn: u64| (LAYOUT.log_start() * LOG_BLOCK + lsn) as usize;
    // 1. A sector in the middle of the log does not hold: corruption
    //    (intact log follows it).
    let bad_sector = ends[20].0 / SECTOR + 1;
    let mut img = clean.clone();
    img[log_byte(bad_sector * SECTOR + 100)] ^= 0xff;
    let (dev, pc) = memory_device(img.clone());
    let kept = ends
        .iter()
        .filter(|e| e.0 <= bad_sector * SECTOR + 24)
        .count();
    let Some(Error::LogCorrupt(d)) = open(&dev, CommitMode::Fua).err() else {
        panic!("not refused")
    };
    assert_eq!(d.what, Damage::Sector(SectorState::BadChecksum));
    assert_eq!(d.sector, bad_sector);
    assert_eq!(d.lba, LAYOUT.log_start() + bad_sector / 8);
    assert_eq!(d.keep_end, ends[kept - 1]);
    let (from, to) = d.beyond.unwrap();
    assert_eq!(from, Lsn((bad_sector + 1) * SECTOR));
    assert_eq!(to, ends[39]);
    assert_eq!(d.lost_end(), ends[39]);
    assert_eq!(pc.current(), img, "a refusing recovery writes nothing");
    let msg = Error::LogCorrupt(d).to_string();
    assert!(
        msg.contains(&format!("log sector {bad_sector} (device block {}", d.lba)),
        "{msg}"
    );
    // A request naming another loss is refused too.
    let wrong = TruncateRequest {
        at: d.keep_end,
        discard_to: ends[30],
    };
    assert_eq!(
        open_truncating(&dev, wrong).err(),
        Some(Error::TruncateMismatch {
            requested: wrong,
            found: Some(d)
        })
    );
    let (e, report) = open_truncating_reported(&dev, &d).unwrap();
    assert_eq!(report.stop, ScanStop::Damaged);
    assert_eq!(report.truncated, Some(d));
    assert_eq!(report.transactions, kept as u64);
    assert_eq!(report.end, ends[kept - 1]);
    assert!(report.writes_discarded <= 1);
    let kv = KvTable::new(&e, PageId(0), 4);
    for i in 0..40u64 {
        let want = if (i as usize) < kept { i + 1 } else { 0 };
        assert_eq!(kv.get(i).unwrap(), want, "key {i}");
    }
    // The log continues at the recovered end, in a new epoch.
    let next = kv.put(&[(500, 1)]).unwrap();
    assert!(next > ends[kept - 1]);
    drop(e);
    let (e, report) = open(&dev, CommitMode::Fua).unwrap();
    assert_eq!(report.transactions, 1);
    let kv = KvTable::new(&e, PageId(0), 4);
    assert_eq!(kv.get(500).unwrap(), 1);
    assert_eq!(kv.get(kept as u64).unwrap(), 0);
    drop(e);
    drop(dev);
    // 2. The last record's bytes are damaged (sector CRC recomputed, as if
    //    a torn record had been sealed): the record's own CRC catches it.
    let mut img = clean.clone();
    // The commit record is 21 bytes, its page write 35.
    let back = |lsn: Lsn, n: u64| lsn_of_payload(payload_index(lsn) - n);
    let last_commit = back(ends[39], 21);
    let damaged = lsn_advance(last_commit, 18);
    img[log_byte(damaged.0)] ^= 0x01;
    let s0 = log_byte(damaged.0 / SECTOR * SECTOR);
    let crc = dbos_bufferpool::checksum::crc32c(&img[s0 + 4..s0 + 512]);
    img[s0..s0 + 4].copy_from_slice(&crc.to_le_bytes());
    let (dev, _) = memory_device(img);
    let Some(Error::LogCorrupt(d)) = open(&dev, CommitMode::Fua).err() else {
        panic!("not refused")
    };
    assert_eq!(
        d.what,
        Damage::Record {
            lsn: last_commit,
            error: RecordError::BadChecksum
        }
    );
    assert_eq!(d.sector, last_commit.0 / SECTOR);
    assert_eq!(d.keep_end, ends[38]);
    let (_, report) = open_truncating_reported(&dev, &d).unwrap();
    assert_eq!(report.stop, ScanStop::Damaged);
    assert_eq!(report.transactions, 39);
    assert_eq!(report.writes_discarded, 1);
    assert_eq!(report.end, ends[38]);
    assert_eq!(report.log_end, last_commit);
    // The orphaned page write was erased: a new transaction after it
    // recovers cleanly.
    let (e2, _) = open(&dev, CommitMode::Fua).unwrap();
    let kv = KvTable::new(&e2, PageId(0), 4);
    assert_eq!(kv.get(39).unwrap(), 0);
    kv.put(&[(39, 99)]).unwrap();
    drop(e2);
    let (e3, report) = open(&dev, CommitMode::Fua).unwrap();
    assert_eq!(report.transactions, 1);
    assert_eq!(report.writes_discarded, 0);
    assert_eq!(KvTable::new(&e3, PageId(0), 4).get(39).unwrap(), 99);
}

#[test]
fn eio_on_flush_fails_the_engine_and_nothing_is_retried() {
    let (dev, pc) = memory_device(vec![0; disk_bytes(LAYOUT)]);
    let e = format(&dev, LAYOUT, CommitMode::WriteFlush);
    let kv = KvTable::new(&e, PageId(0), 4);
    kv.put(&[(1, 10), (2, 20)]).unwrap();
    pc.fail(OpMatch::Flush, libc::EIO);
    assert_eq!(
        kv.put(&[(1, 11), (2, 21)]),
        Err(Error::Log(WalError::Device(DeviceError::WriteFault)))
    );
    assert_eq!(e.failure(), Some(DeviceError::WriteFault));
    pc.clear_faults();
    let flushes = pc.stats().flushes;
    assert_eq!(
        kv.put(&[(3, 30)]),
        Err(Error::Log(WalError::Failed(DeviceError::WriteFault)))
    );
    assert_eq!(
        e.checkpoint(),
        Err(Error::Log(WalError::Failed(DeviceError::WriteFault)))
    );
    assert_eq!(pc.stats().flushes, flushes, "nothing retried");
    drop(e);
    // The next start recovers from what is durable: the failed transaction
    // is entirely there or entirely not.
    let mut outcomes = [0; 2];
    for seed in 0..8 {
        let (img, _) = pc.crash_image(seed);
        let (dev2, _) = memory_device(img);
        let (e2, _) = open(&dev2, CommitMode::WriteFlush).unwrap();
        let kv2 = KvTable::new(&e2, PageId(0), 4);
        let (a, b) = (kv2.get(1).unwrap(), kv2.get(2).unwrap());
        assert!(
            (a, b) == (10, 20) || (a, b) == (11, 21),
            "partly visible: {a} {b}"
        );
        assert_eq!(kv2.get(3).unwrap(), 0);
        outcomes[(a == 11) as usize] += 1;
    }
    // Both outcomes occur among these seeds: the model does lose and keep
    // unflushed writes.
    assert_eq!(
        outcomes.iter().filter(|&&n| n > 0).count(),
        2,
        "{outcomes:?}"
    );
}

#[test]
fn eio_on_a_fua_log_write_loses_exactly_that_commit() {
    let (dev, pc) = memory_device(vec![0; disk_bytes(LAYOUT)]);
    let e = format(&dev, LAYOUT, CommitMode::Fua);
    let kv = KvTable::new(&e, PageId(0), 4);
    kv.put(&[(1, 10)]).unwrap();
    pc.fail(OpMatch::Write, libc::EIO);
    assert_eq!(
        kv.put(&[(1, 11), (2, 21)]),
        Err(Error::Log(WalError::Device(DeviceError::WriteFault)))
    );
    pc.cut(1);
    let (img, report) = pc.image().unwrap();
    assert_eq!(
        report.volatile, 0,
        "FUA mode leaves nothing volatile in the log"
    );
    drop(e);
    let (dev2, _) = memory_device(img);
    let (e2, report) = open(&dev2, CommitMode::Fua).unwrap();
    assert_eq!(report.transactions, 1);
    let kv2 = KvTable::new(&e2, PageId(0), 4);
    assert_eq!((kv2.get(1).unwrap(), kv2.get(2).unwrap()), (10, 0));
}

#[test]
fn read_errors_and_a_full_disk_are_errors_not_crashes() {
    let (dev, pc) = memory_device(vec![0; disk_bytes(LAYOUT)]);
    let e = format(&dev, LAYOUT, CommitMode::Fua);
    let kv = KvTable::new(&e, PageId(0), 4);
    kv.put(&[(1, 10)]).unwrap();
    pc.fail(OpMatch::Write, libc::ENOSPC);
    assert_eq!(
        kv.put(&[(1, 11)]),
        Err(Error::Log(WalError::Device(DeviceError::CapacityExceeded)))
    );
    assert_eq!(
        kv.put(&[(1, 12)]),
        Err(Error::Log(WalError::Failed(DeviceError::CapacityExceeded)))
    );
    drop(e);
    pc.clear_faults();
    pc.fail(OpMatch::Read, libc::EIO);
    // The first read (the control blocks) fails, and says where.
    let err = open(&dev, CommitMode::Fua).err().unwrap();
    assert_eq!(
        err,
        Error::DeviceAt(IoFailure {
            error: DeviceError::UnrecoveredRead,
            kind: dbos_bufferpool::device::IoKind::Read,
            lba: 0,
            blocks: 2
        })
    );
    assert!(err.to_string().starts_with(
        "reading device blocks 0..2 (bytes 0..8192) failed: unrecovered read error; nothing more \
         was written"
    ));
    pc.clear_faults();
    let (e, report) = open(&dev, CommitMode::Fua).unwrap();
    assert_eq!(report.transactions, 1);
    assert_eq!(KvTable::new(&e, PageId(0), 4).get(1).unwrap(), 10);
    // An unformatted device.
    let (blank, _) = memory_device(vec![0; disk_bytes(LAYOUT)]);
    assert_eq!(
        open(&blank, CommitMode::Fua).err(),
        Some(Error::NotFormatted)
    );
}

#[test]
fn a_full_log_refuses_commits_until_a_checkpoint_and_then_wraps() {
    let small = SMALL_LOG;
    let (dev, _pc) = memory_device(vec![0; disk_bytes(small)]);
    // Automatic checkpoints off: the caller checkpoints.
    let e = format_with(&dev, small, manual_config(CommitMode::Fua));
    let kv = KvTable::new(&e, PageId(0), 4);
    let mut n = 0u64;
    let err = loop {
        match kv.put(&[(n % 2000, n + 1)]) {
            Ok(_) => n += 1,
            Err(e) => break e,
        }
    };
    assert_eq!(
        err,
        Error::Log(WalError::LogFull {
            needed_blocks: 9,
            log_blocks: 8
        })
    );
    // 8 blocks of 8 sectors of 488 bytes; one image of page 0 (4122
    // bytes) and 2-record transactions of 35 + 21 bytes.
    let payload = 8 * 8 * 488;
    assert_eq!(n, (payload - 4122) / 56);
    let insert = e.wal().insert_lsn();
    assert_eq!(kv.put(&[(1, 1)]), Err(err));
    assert_eq!(
        e.wal().insert_lsn(),
        insert,
        "a refused commit appends nothing"
    );
    assert_eq!(kv.get(1).unwrap(), 2);
    // Checkpoints free the log; it wraps around many times.
    for round in 0..20u64 {
        e.checkpoint().unwrap();
        for i in 0..100u64 {
            kv.put(&[(i, round * 1000 + i + 1)]).unwrap();
        }
    }
    assert!(e.wal().insert_lsn().0 > 5 * 8 * LOG_BLOCK);
    drop(e);
    let (e, report) = open(&dev, CommitMode::Fua).unwrap();
    assert_eq!(report.transactions, 100);
    let kv = KvTable::new(&e, PageId(0), 4);
    for i in 0..100u64 {
        assert_eq!(kv.get(i).unwrap(), 19 * 1000 + i + 1);
    }
}

#[test]
fn pages_are_written_only_after_the_log_covering_them() {
    let (dev, _pc, ins) = inspected_memory_device(vec![0; disk_bytes(LAYOUT)]);
    let e = format(&dev, LAYOUT, CommitMode::Fua);
    ins.take();
    let kv = KvTable::new(&e, PageId(0), 4);
    // Appended, not yet durable: the checkpoint must write the log first.
    let lsn = kv.put_async(&[(3, 4)]).unwrap();
    assert!(e.wal().durable_lsn() < lsn);
    e.checkpoint().unwrap();
    assert!(e.wal().durable_lsn() >= lsn);
    let ops = ins.take();
    let log_end = (LAYOUT.log_start() + LAYOUT.log_blocks) * 4096;
    let first_log = ops
        .iter()
        .position(|o| o.kind == IoKind::Write { fua: true } && o.offset < log_end)
        .unwrap();
    let first_page = ops
        .iter()
        .position(|o| matches!(o.kind, IoKind::Write { .. }) && o.offset >= log_end)
        .unwrap();
    assert!(first_log < first_page, "{ops:?}");
    // Then the pages, a flush, the page-LSN table (a FUA log write: the
    // store keeps one, see `dbos_bufferpool::lsntable`) and the control
    // block with FUA.
    assert!(dbos_bufferpool::lsntable::enabled(&LAYOUT));
    let n = ops.len();
    assert_eq!(ops[n - 3].kind, IoKind::Flush);
    assert_eq!(ops[n - 2].kind, IoKind::Write { fua: true });
    assert!((2 * 4096..log_end).contains(&ops[n - 2].offset));
    assert_eq!(ops[n - 1].kind, IoKind::Write { fua: true });
    assert!(ops[n - 1].offset < 2 * 4096);
}
