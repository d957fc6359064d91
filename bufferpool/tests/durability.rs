//! Durability at the boundaries (issue 10): damage in the middle of the log
//! against a torn tail, damaged control blocks against a blank device,
//! crafted control blocks, the log filling up, and what recovery says.
//!
//! Most cases run the engine on the in-memory device of
//! `dbos_bufferpool::fuzzing` (fast and exact); fault injection uses the
//! power-cut disk under the real queue pair.

mod common;

use common::*;
use dbos_bufferpool::control::{Control, ControlError};
use dbos_bufferpool::device::{DeviceError, IoFailure, IoKind, BLOCK_SIZE};
use dbos_bufferpool::engine::Backup;
use dbos_bufferpool::fuzzing::{config, pool, MemDevice, MemDisk};
use dbos_bufferpool::log::{lsn_of_payload, payload_index, LOG_BLOCK, SECTOR};
use dbos_bufferpool::pool::hash::HashPool;
use dbos_bufferpool::{
    CommitMode, Config, Damage, Engine, Error, KvTable, Layout, Lsn, PageId, RecoveryReport,
    ScanStop, SectorState, WalError,
};
use dbos_nvme::host::testing::OpMatch;
use std::sync::Arc;

const LAYOUT: Layout = Layout {
    log_blocks: 16,
    data_pages: 4,
};

type Mem = Engine<MemDevice, HashPool<MemDevice>>;

fn mem_format(disk: &Arc<MemDisk>, layout: Layout, config: Config) -> Mem {
    Engine::format(
        MemDevice::new(disk),
        MemDevice::new(disk),
        layout,
        config,
        pool(disk, FRAMES),
    )
    .unwrap()
}

fn mem_open(disk: &Arc<MemDisk>) -> Result<(Mem, RecoveryReport), Error> {
    Engine::open(
        MemDevice::new(disk),
        MemDevice::new(disk),
        config(),
        pool(disk, FRAMES),
    )
}

fn blank(layout: Layout) -> Arc<MemDisk> {
    MemDisk::new(vec![0; layout.blocks() as usize * BLOCK_SIZE])
}

/// A blank `LAYOUT` disk and an engine formatted on it that checkpoints
/// only when told to.
fn manual_store() -> (Arc<MemDisk>, Mem) {
    let disk = blank(LAYOUT);
    let e = mem_format(
        &disk,
        LAYOUT,
        Config {
            checkpoint_percent: 0,
            ..config()
        },
    );
    (disk, e)
}

/// Bytes of a commit record (frame and body).
const COMMIT_RECORD: u64 = 21;

fn value(i: u64) -> u64 {
    i * 1000 + 7
}

/// Commits `n` one-key transactions (key `i` = `value(i)`) with a
/// checkpoint after the first `n / 3`, so the redo point is inside the log.
fn committed_store(n: u64) -> (Arc<MemDisk>, Vec<Lsn>) {
    let (disk, e) = manual_store();
    let kv = KvTable::new(&e, PageId(0), 4);
    let mut ends = Vec::new();
    for i in 0..n {
        if i == n / 3 {
            e.checkpoint().unwrap();
        }
        ends.push(kv.put(&[(i * 37 % 2000, value(i))]).unwrap());
    }
    (disk, ends)
}

/// The backup control block in the device's last block, if it is one.
fn backup_of(img: &[u8]) -> Option<Backup> {
    Control::decode(&img[img.len() - BLOCK_SIZE..])
        .ok()
        .map(Into::into)
}

fn holds_all(e: &Mem, n: u64) -> bool {
    let kv = KvTable::new(e, PageId(0), 4);
    (0..n).all(|i| kv.get(i * 37 % 2000).unwrap() == value(i))
}

/// Item 1: flip one byte in every sector of the device, in turn (in the
/// header and in the payload): recovery either has all N acknowledged
/// commits or refuses, naming the place, and writes nothing. Never fewer
/// than N with success. Which of the two is exact: a flip in a log sector
/// holding any byte recovery needs (from the checkpoint's redo point to
/// the durable end) is refused, naming that sector; every other flip (in
/// either control block, the backup block, a data page, which the log's
/// page images restore, or a log sector wholly before the redo point or
/// wholly past the durable end) is recovered with every commit.
#[test]
fn every_flipped_byte_is_recovered_or_refused_never_lost() {
    const N: u64 = 120;
    let (disk, ends) = committed_store(N);
    let clean = disk.image();
    let log = LAYOUT.log_start() as usize * BLOCK_SIZE;
    let log_end = log + LAYOUT.log_blocks as usize * BLOCK_SIZE;
    let durable_end = ends[N as usize - 1].0;
    let redo = Control::newest(&clean[..BLOCK_SIZE], &clean[BLOCK_SIZE..2 * BLOCK_SIZE])
        .unwrap()
        .redo
        .0;
    // The checkpoint left the redo point inside the log, past its first
    // sectors (so flips before it exist), and the log did not wrap.
    assert!(redo > 4 * SECTOR && durable_end < (log_end - log) as u64);
    let (mut recovered, mut refused) = (0, 0);
    for sector in 0..clean.len() / SECTOR as usize {
        for offset in [5, 100] {
            let at = sector * SECTOR as usize + offset;
            let mut img = clean.clone();
            img[at] ^= 0x40;
            let disk = MemDisk::new(img.clone());
            // A log sector any byte of which lies in [redo, durable end).
            let needed = (log..log_end).contains(&at) && {
                let first = (at - log) as u64 / SECTOR * SECTOR;
                first < durable_end && first + SECTOR > redo
            };
            match mem_open(&disk) {
                Ok((e, _)) => {
                    assert!(holds_all(&e, N), "byte {at} flipped: commits lost");
                    assert!(
                        !needed,
                        "byte {at} flipped, in a log sector recovery needs: accepted"
                    );
                    recovered += 1;
                }
                Err(err) => {
                    assert!(disk.image() == img, "a refusing recovery wrote");
                    refused += 1;
                    // Only a flip in the log the checkpoint's redo point
                    // needs is refused, with that very sector.
                    assert!(needed, "byte {at} flipped, not needed: refused ({err})");
                    {
                        let Error::LogCorrupt(d) = err else {
                            panic!("byte {at}: {err}")
                        };
                        let s = ((at - log) / SECTOR as usize) as u64;
                        assert_eq!(d.sector, s, "{d}");
                        assert_eq!(d.lba, LAYOUT.log_start() + s / 8);
                        assert_eq!(d.lsns(), (Lsn(s * SECTOR), Lsn((s + 1) * SECTOR)));
                        let msg = err.to_string();
                        assert!(msg.contains(&format!("log sector {s} ")), "{msg}");
                        // Every commit whose record lies wholly past the
                        // damaged sector is counted as lost to a truncation.
                        let past = ends
                            .iter()
                            .filter(|&&end| {
                                lsn_of_payload(payload_index(end) - COMMIT_RECORD).0
                                    >= (s + 1) * SECTOR
                            })
                            .count() as u64;
                        assert_eq!(d.commits_beyond, past, "{d}");
                        assert!(
                            msg.contains(&format!("at least {past} committed transactions")),
                            "{msg}"
                        );
                    }
                }
            }
        }
    }
    // 2 flips in each of the sectors from the one holding the redo point
    // to the one holding the durable end; every other flip recovered.
    let sectors = (durable_end - 1) / SECTOR - redo / SECTOR + 1;
    assert_eq!(refused, 2 * sectors, "{recovered} recovered");
    assert_eq!(
        recovered + refused,
        2 * (clean.len() as u64 / SECTOR),
        "{recovered} {refused}"
    );
    eprintln!("flips: {recovered} recovered in full, {refused} refused");
}

/// Flips in every sector of one block at a time (every block of the
/// device): same property, several flips at once.
#[test]
fn every_damaged_block_is_recovered_or_refused_never_lost() {
    const N: u64 = 90;
    let (disk, _) = committed_store(N);
    let clean = disk.image();
    for block in 0..clean.len() / BLOCK_SIZE {
        let mut img = clean.clone();
        for s in 0..8 {
            img[block * BLOCK_SIZE + s * SECTOR as usize + 40 + s] ^= 0x11;
        }
        let disk = MemDisk::new(img.clone());
        match mem_open(&disk) {
            Ok((e, _)) => assert!(holds_all(&e, N), "block {block}: commits lost"),
            Err(_) => assert!(disk.image() == img, "block {block}: a refusal wrote"),
        }
    }
}

/// What a crash leaves of the batch in flight: any of its sectors old or
/// new. Every such image recovers (never refused), with every commit
/// before the batch; sectors left stale are not taken for corruption.
#[test]
fn a_torn_last_batch_is_a_torn_tail_whatever_lands() {
    let (disk, _) = committed_store(60);
    let (e, _) = mem_open(&disk).unwrap();
    KvTable::new(&e, PageId(0), 4).put(&[(1999, 5)]).unwrap();
    let before = disk.image();
    // One more commit, one batch: it rewrites the tail sector and writes
    // on (150 writes of key 2001: 5271 bytes of records, so that it spans
    // several sectors and two blocks).
    let batches = e.wal().stats().batches;
    let puts: Vec<(u64, u64)> = (0..150).map(|i| (2001, i + 1)).collect();
    KvTable::new(&e, PageId(0), 4).put(&puts).unwrap();
    assert_eq!(e.wal().stats().batches, batches + 1);
    let reopened = disk.image();
    drop(e);
    // The sectors that differ between the two images are what the last
    // run wrote; keep each one from either image.
    let changed: Vec<usize> = (0..before.len() / SECTOR as usize)
        .filter(|&s| {
            let r = s * SECTOR as usize..(s + 1) * SECTOR as usize;
            before[r.clone()] != reopened[r]
        })
        .collect();
    assert!(changed.len() >= 11, "{changed:?}");
    let log =
        LAYOUT.log_start() as usize * 8..(LAYOUT.log_start() + LAYOUT.log_blocks) as usize * 8;
    let log_changed: Vec<usize> = changed
        .iter()
        .copied()
        .filter(|s| log.contains(s))
        .collect();
    // Everything else (control block, pages) as after the run; log sectors
    // in every "prefix lost" and "single sector lost" pattern.
    let mut patterns: Vec<Vec<bool>> = Vec::new();
    for k in 0..log_changed.len() {
        patterns.push((0..log_changed.len()).map(|i| i != k).collect());
        patterns.push((0..log_changed.len()).map(|i| i >= k).collect());
        patterns.push((0..log_changed.len()).map(|i| i < k).collect());
    }
    for keep in patterns {
        let mut img = reopened.clone();
        for (&s, &new) in log_changed.iter().zip(&keep) {
            if !new {
                let r = s * SECTOR as usize..(s + 1) * SECTOR as usize;
                img[r.clone()].copy_from_slice(&before[r]);
            }
        }
        let disk = MemDisk::new(img);
        let (e, report) = mem_open(&disk).unwrap_or_else(|err| panic!("{keep:?}: {err}"));
        assert!(holds_all(&e, 60), "{keep:?}");
        assert_eq!(KvTable::new(&e, PageId(0), 4).get(1999).unwrap(), 5);
        assert!(
            matches!(
                report.stop,
                ScanStop::PartialSector | ScanStop::TornTail { .. }
            ),
            "{:?}",
            report.stop
        );
    }
}

/// Damage no byte flip makes, caught by the batch markers: a sector of
/// durable history reverted to an older intact version (or zeroed) while
/// later batches exist is not a torn tail.
#[test]
fn an_older_sector_inside_durable_history_is_corruption() {
    let disk = blank(LAYOUT);
    let e = mem_format(&disk, LAYOUT, config());
    let kv = KvTable::new(&e, PageId(0), 4);
    let mut snapshots = Vec::new();
    let mut ends = Vec::new();
    for i in 0..40u64 {
        ends.push(kv.put(&[(i, value(i))]).unwrap());
        snapshots.push(disk.image());
    }
    drop(e);
    let last = disk.image();
    let log = LAYOUT.log_start() as usize * BLOCK_SIZE;
    // The log's end sector after the 10th commit, as it was then (not
    // full), in the final image: later batches were written after it was
    // durable.
    let s = ends[9].0 / SECTOR;
    assert!(s < ends[39].0 / SECTOR);
    let r = log + s as usize * 512..log + (s as usize + 1) * 512;
    let mut img = last.clone();
    img[r.clone()].copy_from_slice(&snapshots[9][r.clone()]);
    assert!(img != last);
    // Refused as corrupt at sector `s`.
    let refused = |disk: &Arc<MemDisk>| {
        let Err(Error::LogCorrupt(d)) = mem_open(disk) else {
            panic!("accepted")
        };
        assert_eq!(d.sector, s);
        d
    };
    let disk2 = MemDisk::new(img.clone());
    let d = refused(&disk2);
    assert!(
        matches!(
            d.what,
            Damage::Overtaken {
                found: SectorState::Valid { .. },
                ..
            }
        ),
        "{d}"
    );
    assert!(disk2.image() == img, "a refusal wrote");
    // Zeroed instead: no log sector is ever all zeros.
    let mut img = last.clone();
    img[r].fill(0);
    let d = refused(&MemDisk::new(img));
    assert_eq!(d.what, Damage::Sector(SectorState::Zeros), "{d}");
}

/// Item 2: no valid control block means "fresh disk" only when the device
/// is blank; anything else is refused, saying what was found, and nothing
/// formats it but an explicit format.
#[test]
fn damaged_control_blocks_are_refused_never_reformatted() {
    let (disk, _) = committed_store(10);
    let mut img = disk.image();
    img[100] ^= 1;
    img[BLOCK_SIZE + 100] ^= 1;
    let disk = MemDisk::new(img.clone());
    let backup = backup_of(&img);
    assert_eq!(backup.map(|c| c.layout), Some(LAYOUT));
    let want = Error::NoControlBlock {
        slots: [ControlError::BadChecksum, ControlError::BadChecksum],
        data_at: 0,
        backup,
        backup_lba: LAYOUT.blocks() - 1,
    };
    assert_eq!(mem_open(&disk).err(), Some(want));
    let r = Engine::open_or_format(
        MemDevice::new(&disk),
        MemDevice::new(&disk),
        LAYOUT,
        config(),
        pool(&disk, FRAMES),
    );
    assert_eq!(r.err(), Some(want));
    assert!(disk.image() == img, "nothing written");
    let msg = want.to_string();
    assert!(
        msg.contains("block 0 holds a control block failing its checksum")
            && msg.contains("not blank"),
        "{msg}"
    );
    // Control blocks zeroed, data further on.
    let mut img2 = img.clone();
    img2[..2 * BLOCK_SIZE].fill(0);
    let disk2 = MemDisk::new(img2);
    assert_eq!(
        mem_open(&disk2).err(),
        Some(Error::NoControlBlock {
            slots: [ControlError::Zeros, ControlError::Zeros],
            data_at: 2,
            backup,
            backup_lba: LAYOUT.blocks() - 1,
        })
    );
    // Something else entirely.
    let other = MemDisk::new(vec![0x5a; LAYOUT.blocks() as usize * BLOCK_SIZE]);
    assert_eq!(
        mem_open(&other).err(),
        Some(Error::NoControlBlock {
            slots: [ControlError::NotControl, ControlError::NotControl],
            data_at: 0,
            backup: None,
            backup_lba: LAYOUT.blocks() - 1,
        })
    );
    // A device smaller than the control blocks: too small, not an I/O error.
    for blocks in [0usize, 1] {
        let tiny = MemDisk::new(vec![0; blocks * BLOCK_SIZE]);
        let err = mem_open(&tiny).err();
        assert_eq!(
            err,
            Some(Error::DeviceTooSmall {
                needed: 2,
                have: blocks as u64
            })
        );
        assert_eq!(
            err.unwrap().to_string(),
            format!("device too small: it has {blocks} blocks of 4 KiB, the store needs 2")
        );
        assert!(matches!(
            Engine::open_or_format(
                MemDevice::new(&tiny),
                MemDevice::new(&tiny),
                LAYOUT,
                config(),
                pool(&tiny, FRAMES)
            ),
            Err(Error::DeviceTooSmall { needed: 2, .. })
        ));
    }
    // A blank device: open says so, open_or_format formats it.
    let fresh = blank(LAYOUT);
    assert_eq!(mem_open(&fresh).err(), Some(Error::NotFormatted));
    let (e, report) = Engine::open_or_format(
        MemDevice::new(&fresh),
        MemDevice::new(&fresh),
        LAYOUT,
        config(),
        pool(&fresh, FRAMES),
    )
    .unwrap();
    assert!(report.is_none());
    KvTable::new(&e, PageId(0), 4).put(&[(1, 2)]).unwrap();
    drop(e);
    let (e, report) = Engine::open_or_format(
        MemDevice::new(&fresh),
        MemDevice::new(&fresh),
        LAYOUT,
        config(),
        pool(&fresh, FRAMES),
    )
    .unwrap();
    assert_eq!(report.unwrap().transactions, 1);
    assert_eq!(KvTable::new(&e, PageId(0), 4).get(1).unwrap(), 2);
    drop(e);
    // One byte of data among zeros where format would write: refused.
    let mut img3 = vec![0u8; LAYOUT.blocks() as usize * BLOCK_SIZE];
    img3[(LAYOUT.blocks() as usize - 1) * BLOCK_SIZE + 9] = 1;
    let d3 = MemDisk::new(img3);
    let r = Engine::open_or_format(
        MemDevice::new(&d3),
        MemDevice::new(&d3),
        LAYOUT,
        config(),
        pool(&d3, FRAMES),
    );
    assert_eq!(
        r.err(),
        Some(Error::NoControlBlock {
            slots: [ControlError::Zeros, ControlError::Zeros],
            data_at: LAYOUT.blocks() - 1,
            backup: None,
            backup_lba: LAYOUT.blocks() - 1,
        })
    );
    // The explicit request formats anything.
    let e = mem_format(&d3, LAYOUT, config());
    drop(e);
    assert_eq!(mem_open(&d3).unwrap().1.transactions, 0);
}

/// Item 3: control blocks with a valid checksum and impossible sizes are
/// corrupt control blocks, not a panic.
#[test]
fn crafted_control_blocks_are_corrupt_not_a_panic() {
    let (disk, _) = committed_store(3);
    let good = Control::decode(&disk.image()[BLOCK_SIZE..2 * BLOCK_SIZE]).unwrap();
    let cases = [
        (
            Layout {
                log_blocks: u64::MAX - 1,
                data_pages: 4,
            },
            ControlError::BadField {
                field: "log blocks",
                value: u64::MAX - 1,
            },
        ),
        (
            Layout {
                log_blocks: 16,
                data_pages: u64::MAX - 17,
            },
            ControlError::BadField {
                field: "data pages",
                value: u64::MAX - 17,
            },
        ),
        (
            Layout {
                log_blocks: 0,
                data_pages: 4,
            },
            ControlError::BadField {
                field: "log blocks",
                value: 0,
            },
        ),
    ];
    for (layout, err) in cases {
        let mut img = disk.image();
        for slot in 0..2 {
            let c = Control {
                seq: good.seq + slot,
                layout,
                ..good
            };
            c.encode(&mut img[c.lba() as usize * BLOCK_SIZE..]);
        }
        let d = MemDisk::new(img);
        assert_eq!(
            mem_open(&d).err(),
            Some(Error::NoControlBlock {
                slots: [err, err],
                data_at: 0,
                backup: backup_of(&disk.image()),
                backup_lba: LAYOUT.blocks() - 1,
            })
        );
        assert!(mem_open(&d)
            .err()
            .unwrap()
            .to_string()
            .contains("corrupt control block"));
    }
    // Possible but larger than the device: too small, not a panic.
    let mut img = disk.image();
    let c = Control {
        seq: good.seq + 1,
        layout: Layout {
            log_blocks: 1 << 32,
            data_pages: 1 << 36,
        },
        ..good
    };
    c.encode(&mut img[c.lba() as usize * BLOCK_SIZE..]);
    let d = MemDisk::new(img);
    assert_eq!(
        mem_open(&d).err(),
        Some(Error::DeviceTooSmall {
            needed: 2 + (1 << 32) + (1 << 36) + 1,
            have: LAYOUT.blocks()
        })
    );
}

/// Item 4: the engine checkpoints by itself; a workload of many times the
/// log's capacity never sees a full log.
#[test]
fn a_long_workload_never_fills_the_log() {
    let small = SMALL_LOG;
    let disk = blank(small);
    let e = mem_format(&disk, small, config());
    let kv = KvTable::new(&e, PageId(0), 4);
    // About 484 of these transactions fill the log (see engine.rs).
    const N: u64 = 5000;
    for i in 0..N {
        kv.put(&[(i % 2000, i + 1)]).unwrap();
    }
    assert!(e.stats().checkpoints >= 10, "{:?}", e.stats());
    assert!(e.wal().insert_lsn().0 > 8 * 8 * LOG_BLOCK);
    drop(e);
    let (e, _) = mem_open(&disk).unwrap();
    let kv = KvTable::new(&e, PageId(0), 4);
    for k in 0..2000u64 {
        let last = (0..N).rev().find(|i| i % 2000 == k).unwrap();
        assert_eq!(kv.get(k).unwrap(), last + 1);
    }
}

/// Item 4: a failing automatic checkpoint surfaces its error to the
/// transaction that took it (which appended nothing) and fails the engine.
#[test]
fn a_failing_automatic_checkpoint_surfaces_its_error() {
    let small = SMALL_LOG;
    let (dev, pc) = memory_device(vec![0; disk_bytes(small)]);
    let e = format(&dev, small, CommitMode::Fua);
    let kv = KvTable::new(&e, PageId(0), 4);
    // FUA commits do not flush; checkpoints do.
    pc.fail(OpMatch::Flush, libc::EIO);
    let mut n = 0u64;
    let err = loop {
        let insert = e.wal().insert_lsn();
        match kv.put(&[(n % 2000, n + 1)]) {
            Ok(_) => n += 1,
            Err(err) => {
                assert_eq!(e.wal().insert_lsn(), insert, "appended nothing");
                break err;
            }
        }
    };
    assert_eq!(
        err,
        Error::DeviceAt(IoFailure {
            error: DeviceError::WriteFault,
            kind: IoKind::Flush,
            lba: 0,
            blocks: 0
        })
    );
    assert!(err.to_string().starts_with(
        "the device flush failed: write fault (the data may not be stable); the engine stopped \
         there and retried nothing"
    ));
    // The transaction that finds 4 of the 8 blocks in use (50%) takes the
    // checkpoint: after the image of page 0 (4122 bytes) and n of 56
    // bytes, the insert position enters block 3 (payload 3 * 8 * 488).
    assert_eq!(n, (3 * 8 * 488 - 4122u64).div_ceil(56));
    assert_eq!(
        kv.put(&[(1, 1)]),
        Err(Error::Log(WalError::Failed(DeviceError::WriteFault)))
    );
}

/// Item 5: a freshly formatted log is a clean, empty log; damage at the
/// redo point says so.
#[test]
fn recovery_says_what_it_found() {
    let disk = blank(LAYOUT);
    drop(mem_format(&disk, LAYOUT, config()));
    let (_, report) = mem_open(&disk).unwrap();
    assert_eq!(report.stop, ScanStop::PartialSector);
    assert_eq!(report.stop.to_string(), "clean end");
    assert_eq!((report.records, report.transactions), (0, 0));
    // The end-of-recovery checkpoint put the redo point at the log's end:
    // damage there.
    let (disk, ends) = committed_store(30);
    let (e, _) = mem_open(&disk).unwrap();
    let redo = e.control().redo;
    assert_eq!(redo, ends[29]);
    drop(e);
    let mut img = disk.image();
    let at = LAYOUT.log_start() as usize * BLOCK_SIZE + (redo.0 / SECTOR * SECTOR) as usize + 3;
    img[at] ^= 0xff;
    let d = MemDisk::new(img);
    let Err(err @ Error::LogCorrupt(dmg)) = mem_open(&d) else {
        panic!("accepted")
    };
    assert_eq!(
        dmg.what,
        Damage::Redo {
            redo,
            found: SectorState::BadChecksum
        }
    );
    assert_eq!(dmg.sector, redo.0 / SECTOR);
    let msg = err.to_string();
    assert!(
        msg.contains(&format!(
            "holds a sector failing its checksum where the log from the redo point {} must be",
            redo.0
        )),
        "{msg}"
    );
}

/// A recovery that wrote its control block (new epoch, epoch start `R`)
/// and crashed before cutting the log at `R`: the next recovery reads the
/// log only up to `R` and succeeds, whether `R` falls inside a sector or at
/// a sector's start (the cut sector then still holds older data).
#[test]
fn a_crash_between_the_recovery_control_write_and_the_log_cut_recovers() {
    use dbos_bufferpool::log::payload_index;
    for at_sector_start in [false, true] {
        let (disk, e) = manual_store();
        let kv = KvTable::new(&e, PageId(0), 4);
        for i in 0..5 {
            kv.put(&[(i, value(i))]).unwrap();
        }
        // Page 2's image is logged with its first change, now.
        e.commit(&[dbos_bufferpool::PageWrite {
            page: PageId(2),
            offset: 2000,
            data: &[1],
        }])
        .unwrap();
        // One write sized so that its commit ends where we want the cut:
        // a page write record is 27 bytes plus its data, a commit 21.
        let p = payload_index(e.wal().insert_lsn());
        let len = if at_sector_start {
            let l = (488 - (p + 48) % 488) % 488;
            if l == 0 {
                488
            } else {
                l
            }
        } else {
            100
        } as usize;
        let data = vec![0x77u8; len];
        let cut = e
            .commit(&[dbos_bufferpool::PageWrite {
                page: PageId(2),
                offset: 2000,
                data: &data,
            }])
            .unwrap();
        assert_eq!(cut.0 % SECTOR == 24, at_sector_start, "{cut:?}");
        for i in 5..40 {
            kv.put(&[(i, value(i))]).unwrap();
        }
        drop(e);
        let mut img = disk.image();
        let c = Control::newest(&img[..BLOCK_SIZE], &img[BLOCK_SIZE..2 * BLOCK_SIZE]).unwrap();
        let next = Control {
            seq: c.seq + 1,
            epoch: c.epoch + 1,
            epoch_start: cut,
            ..c
        };
        next.encode(&mut img[next.lba() as usize * BLOCK_SIZE..]);
        let disk = MemDisk::new(img);
        let (e, report) = mem_open(&disk).unwrap_or_else(|err| panic!("{err}"));
        assert_eq!(report.end, cut);
        let kv = KvTable::new(&e, PageId(0), 4);
        for i in 0..40 {
            let want = if i < 5 { value(i) } else { 0 };
            assert_eq!(kv.get(i).unwrap(), want, "key {i}");
        }
        let mut got = vec![0u8; len];
        e.read(PageId(2), 2000, &mut got).unwrap();
        assert!(got == data);
    }
}

/// An all-zero data page is damage (format writes every page before the
/// control block): repaired from its image if the log has one, refused
/// otherwise, with nothing written. (Before the pool, recovery took it for
/// an empty page and silently lost what it held.)
#[test]
fn an_all_zero_page_is_repaired_from_its_image_or_refused() {
    let (disk, e) = manual_store();
    let kv = KvTable::new(&e, PageId(0), 4);
    let on_page = |p: u64| p * dbos_bufferpool::kv::SLOTS_PER_PAGE + 5;
    kv.put(&[(on_page(1), 11)]).unwrap();
    e.checkpoint().unwrap();
    // Page 2's first change after the checkpoint logs its image.
    kv.put(&[(on_page(2), 22)]).unwrap();
    e.checkpoint().unwrap();
    kv.put(&[(on_page(2), 23)]).unwrap();
    drop(e);
    let zero = |img: &mut Vec<u8>, p: u64| {
        let at = LAYOUT.page_lba(PageId(p)) as usize * BLOCK_SIZE;
        img[at..at + BLOCK_SIZE].fill(0);
    };
    // Page 2 changed after the last checkpoint: its image is in the log.
    let mut img = disk.image();
    zero(&mut img, 2);
    let d = MemDisk::new(img);
    let (e, report) = mem_open(&d).unwrap();
    assert_eq!(report.pages_repaired, [PageId(2)]);
    let kv = KvTable::new(&e, PageId(0), 4);
    assert_eq!(kv.get(on_page(2)).unwrap(), 23);
    assert_eq!(kv.get(on_page(1)).unwrap(), 11);
    drop(e);
    // Page 1 last changed before it: no image, refused, nothing written.
    let mut img = disk.image();
    zero(&mut img, 1);
    let d = MemDisk::new(img.clone());
    assert_eq!(
        mem_open(&d).err(),
        Some(Error::UnrepairablePage {
            page: PageId(1),
            lba: LAYOUT.page_lba(PageId(1)),
            check: dbos_bufferpool::page::PageCheck::Empty
        })
    );
    assert!(d.image() == img, "a refusing recovery wrote");
}

/// Issue 16, case 6: an older, valid copy of a data page put back after a
/// checkpoint had written a newer one (a lost or reverted page write) is
/// refused with the page, its block and both LSNs, writing nothing; the
/// same stale copy of a page that the log restores from an image (it was
/// changed after the last checkpoint) does no harm.
#[test]
fn a_stale_page_is_refused_unless_the_log_restores_it() {
    const SLOTS: u64 = dbos_bufferpool::kv::SLOTS_PER_PAGE;
    let page_block = |p: u64| LAYOUT.page_lba(PageId(p)) as usize * BLOCK_SIZE;
    for changed_after in [false, true] {
        let (disk, e) = manual_store();
        let kv = KvTable::new(&e, PageId(0), 4);
        for k in 0..4 {
            kv.put(&[(k * SLOTS, 10 + k)]).unwrap();
        }
        e.checkpoint().unwrap();
        // Page 1 as on storage now: valid, LSN of its first change.
        let old = disk.image()[page_block(1)..page_block(1) + BLOCK_SIZE].to_vec();
        kv.put(&[(SLOTS, 21)]).unwrap();
        e.checkpoint().unwrap();
        // Later commits, to page 0 only (or to page 1 too).
        kv.put(&[(0, 30)]).unwrap();
        if changed_after {
            kv.put(&[(SLOTS + 1, 31)]).unwrap();
        }
        drop(e);
        let mut img = disk.image();
        assert_ne!(img[page_block(1)..page_block(1) + BLOCK_SIZE], old[..]);
        img[page_block(1)..page_block(1) + BLOCK_SIZE].copy_from_slice(&old);
        let disk = MemDisk::new(img.clone());
        match mem_open(&disk) {
            Err(err) => {
                assert!(!changed_after, "{err}");
                let Error::StalePage {
                    page,
                    lba,
                    found,
                    expected,
                } = err
                else {
                    panic!("{err}")
                };
                assert_eq!((page, lba), (PageId(1), LAYOUT.page_lba(PageId(1))));
                assert!(found < expected, "{err}");
                assert!(disk.image() == img, "a refusal wrote");
                let msg = err.to_string();
                eprintln!("{msg}");
                assert!(
                    msg.contains(&format!(
                        "page 1 (device block {lba}) is older on storage than the log says: \
                         it holds LSN {}, but a checkpoint recorded it at LSN {}",
                        found.0, expected.0
                    )),
                    "{msg}"
                );
            }
            Ok((e, report)) => {
                assert!(changed_after, "the stale page was served");
                assert!(report.page_images >= 1);
                let kv = KvTable::new(&e, PageId(0), 4);
                assert_eq!(kv.get(0).unwrap(), 30);
                assert_eq!(kv.get(SLOTS).unwrap(), 21);
                assert_eq!(kv.get(SLOTS + 1).unwrap(), 31);
                assert_eq!(kv.get(2 * SLOTS).unwrap(), 12);
            }
        }
    }
}
