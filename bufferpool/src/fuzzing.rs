//! The bodies of the fuzz targets in `bufferpool/fuzz` (cargo fuzz,
//! libFuzzer), here so that `cargo test` replays every committed corpus
//! file through the same code (`tests/fuzz_corpus.rs`) without a fuzzer,
//! and an in-memory [`BlockDevice`] for them and for tests.
//!
//! Each target takes arbitrary bytes and panics only on a real finding: a
//! crash in the code under test, or a broken property it checks.

use crate::control::{Control, Layout, CONTROL_BLOCKS};
use crate::device::{BlockDevice, DeviceError, Io, IoBuf, IoKind, IoTag, BLOCK_SIZE};
use crate::engine::{Config, Engine, Error, PageWrite, PoolSetup};
use crate::immediate::Immediate;
use crate::log::{CommitMode, SECTOR, SECTOR_HEADER};
use crate::page::{PAGE_CONTENTS, PAGE_HEADER};
use crate::pool::hash::HashPool;
use crate::pool::PoolError;
use crate::record::Record;
use crate::{Env, Lsn, PageId};
use alloc::format;
use alloc::string::ToString;
use alloc::sync::Arc;
use alloc::vec;
use alloc::vec::Vec;
use spin::Mutex;

/// The bytes of an in-memory disk, shared by the devices on it.
pub struct MemDisk {
    bytes: Mutex<Vec<u8>>,
}

impl MemDisk {
    /// A disk holding `image` (a whole number of blocks).
    pub fn new(image: Vec<u8>) -> Arc<MemDisk> {
        assert!(image.len().is_multiple_of(BLOCK_SIZE));
        Arc::new(MemDisk {
            bytes: Mutex::new(image),
        })
    }

    /// A copy of the disk's bytes.
    pub fn image(&self) -> Vec<u8> {
        self.bytes.lock().clone()
    }

    /// Runs `f` on the disk's bytes.
    pub fn with<R>(&self, f: impl FnOnce(&mut [u8]) -> R) -> R {
        f(&mut self.bytes.lock())
    }
}

/// A [`BlockDevice`] on a [`MemDisk`]: every request completes at once,
/// in order, and is stable when it completes.
pub struct MemDevice {
    disk: Arc<MemDisk>,
    io: Immediate,
}

impl MemDevice {
    /// A device on `disk`.
    pub fn new(disk: &Arc<MemDisk>) -> MemDevice {
        MemDevice {
            disk: disk.clone(),
            io: Immediate::default(),
        }
    }

    fn execute(&mut self, io: &Io) -> Result<(), DeviceError> {
        if io.kind == IoKind::Flush {
            return Ok(());
        }
        let len = io.blocks as usize * BLOCK_SIZE;
        let ptr = self
            .io
            .buffer(io.addr, len)
            .ok_or(DeviceError::InvalidRequest)?;
        let mut disk = self.disk.bytes.lock();
        let start = usize::try_from(io.lba)
            .ok()
            .and_then(|l| l.checked_mul(BLOCK_SIZE))
            .filter(|s| s.checked_add(len).is_some_and(|e| e <= disk.len()))
            .ok_or(DeviceError::LbaOutOfRange)?;
        let range = &mut disk[start..start + len];
        match io.kind {
            // SAFETY: `ptr..ptr + len` lies in a live buffer of ours
            // (checked by `buffer`), which no one else accesses during a
            // request, and does not overlap the disk's Vec.
            IoKind::Read => unsafe { core::ptr::copy_nonoverlapping(range.as_ptr(), ptr, len) },
            // SAFETY: as for reads.
            IoKind::Write | IoKind::WriteFua => unsafe {
                core::ptr::copy_nonoverlapping(ptr, range.as_mut_ptr(), len)
            },
            IoKind::Flush => {}
        }
        Ok(())
    }
}

// SAFETY: buffers are fresh zeroed allocations of the requested size,
// 4 KiB aligned, owned by the device until it is dropped, handed out once;
// their "device address" is their address, and the device touches them
// only while executing a request naming them.
unsafe impl BlockDevice for MemDevice {
    fn block_count(&self) -> u64 {
        (self.disk.bytes.lock().len() / BLOCK_SIZE) as u64
    }

    fn alloc(&mut self, blocks: usize) -> Result<IoBuf, DeviceError> {
        self.io.alloc(blocks)
    }

    fn submit(&mut self, io: &Io) -> Result<IoTag, DeviceError> {
        let result = self.execute(io);
        Ok(self.io.complete(result))
    }

    fn poll(&mut self) -> Option<(IoTag, Result<(), DeviceError>)> {
        self.io.poll()
    }

    fn in_flight(&self) -> usize {
        self.io.in_flight()
    }
}

/// The platform for in-memory runs: spin, and a clock that stands still
/// (so runs are deterministic).
pub fn env() -> Env {
    Env {
        relax: core::hint::spin_loop,
        now_ns: || 0,
        sleep: None,
    }
}

/// The engine's pool for in-memory runs: a hash pool of `capacity` frames
/// over two queues of `disk`, evicting two pages at a time.
pub fn pool(
    disk: &Arc<MemDisk>,
    capacity: usize,
) -> impl FnOnce(PoolSetup) -> Result<HashPool<MemDevice>, PoolError> + use<> {
    let disk = disk.clone();
    move |setup| {
        HashPool::new(
            vec![MemDevice::new(&disk), MemDevice::new(&disk)],
            crate::pool::PoolConfig {
                evict_batch: 2,
                relax: env().relax,
                ..setup.config(capacity)
            },
        )
    }
}

/// Frames of the fuzz targets' pools: fewer than the pages of most
/// layouts they make, so eviction runs too.
const FUZZ_FRAMES: usize = 4;

/// An engine configuration for small in-memory runs.
pub fn config() -> Config {
    Config {
        env: env(),
        mode: CommitMode::Fua,
        log_buffer_blocks: 4,
        checkpoint_percent: 50,
    }
}

fn u16_at(d: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([
        d.get(at).copied().unwrap_or(0),
        d.get(at + 1).copied().unwrap_or(0),
    ])
}

/// Target `record`: 8 bytes of LSN, then bytes to decode as one record.
/// A record that decodes must encode back to exactly the same bytes.
pub fn record(data: &[u8]) {
    let (lsn, bytes) = if data.len() >= 8 {
        let (l, b) = data.split_at(8);
        (Lsn(u64::from_le_bytes(l.try_into().unwrap())), b)
    } else {
        (Lsn(0), data)
    };
    let _ = Record::decode(bytes, lsn);
    let Ok(len) = Record::framed_len(bytes, 1 << 20) else {
        return;
    };
    if len > bytes.len() {
        return;
    }
    let frame = &bytes[..len];
    match Record::decode(frame, lsn) {
        Ok(r) => {
            assert_eq!(r.encoded_len(), len);
            let mut out = vec![0u8; len];
            r.encode(lsn, &mut out);
            assert_eq!(out, frame, "{r:?} does not encode back to its bytes");
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
}

/// Target `control`: a flags byte, then up to two blocks. Flag bit 0
/// seals the first block (magic, version, checksum) before decoding, so
/// the field checks are reached. A control block that decodes must
/// re-encode to the same bytes, and everything computed from it must fit.
pub fn control(data: &[u8]) {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let mut a = vec![0u8; BLOCK_SIZE];
    let mut b = vec![0u8; BLOCK_SIZE];
    let n = rest.len().min(BLOCK_SIZE);
    a[..n].copy_from_slice(&rest[..n]);
    if rest.len() > BLOCK_SIZE {
        let m = (rest.len() - BLOCK_SIZE).min(BLOCK_SIZE);
        b[..m].copy_from_slice(&rest[BLOCK_SIZE..BLOCK_SIZE + m]);
    }
    if flags & 1 != 0 {
        a[0..8].copy_from_slice(b"DBOSCTL1");
        a[12..16].copy_from_slice(&crate::control::VERSION.to_le_bytes());
        let crc = crate::checksum::crc32c(&a[12..]);
        a[8..12].copy_from_slice(&crc.to_le_bytes());
    }
    match Control::decode(&a) {
        Ok(c) => {
            let mut out = vec![0u8; BLOCK_SIZE];
            c.encode(&mut out);
            assert_eq!(out, a, "{c:?} does not encode back to its bytes");
            let blocks = c.layout.checked_blocks().expect("layout blocks fit");
            assert_eq!(blocks, c.layout.blocks());
            assert!(c.layout.validate().is_ok());
            assert!(c.lba() < CONTROL_BLOCKS);
            assert!(c.epoch.checked_add(1).is_some() && c.seq.checked_add(1).is_some());
            let _ = c
                .layout
                .page_lba(PageId(c.layout.data_pages.saturating_sub(1)));
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
    match Control::newest(&a, &b) {
        Ok(c) => assert!(Control::decode(&a) == Ok(c) || Control::decode(&b) == Ok(c)),
        Err(e) => {
            let _ = format!("{} {}", e[0], e[1]);
        }
    }
}

/// Target `recovery`. The first byte picks the mode.
///
/// Even: a device image. A control block is built from the next bytes
/// (small layout, epoch, redo point, epoch start: always valid, so the
/// log is reached), then the log and the pages are filled sector by
/// sector from 513-byte chunks: a flags byte (bit 0: seal the sector's
/// header, number, format id and epoch so it passes its checks; bit 1:
/// leave the sector zero) and 512 bytes. Recovery must return, never
/// panic.
///
/// Odd: the durability property. An engine commits transactions built from
/// the input on an in-memory disk (with checkpoints where the input says),
/// then up to four bytes anywhere on the disk are flipped (xor with a
/// non-zero value) and the store is reopened: it must either refuse, or
/// hold exactly every committed transaction.
pub fn recovery(data: &[u8]) {
    match data.first() {
        Some(m) if m & 1 == 0 => recover_image(&data[1..]),
        Some(_) => commit_flip_reopen(&data[1..]),
        None => {}
    }
}

const FUZZ_FORMAT_ID: u64 = 0x0123_4567_89ab_cdef;

fn recover_image(data: &[u8]) {
    let b = |i: usize| data.get(i).copied().unwrap_or(0);
    let layout = Layout {
        log_blocks: 2 + b(0) as u64 % 6,
        data_pages: 1 + b(1) as u64 % 3,
    };
    let epoch = 1 + b(2) as u32 % 4;
    let lap = layout.log_blocks * 8;
    let redo_sector = u16_at(data, 3) as u64 % (3 * lap);
    let redo = Lsn(redo_sector * SECTOR + SECTOR_HEADER + b(5) as u64 % 488);
    let start_sector = u16_at(data, 6) as u64 % (3 * lap);
    let epoch_start = Lsn(start_sector * SECTOR + SECTOR_HEADER + b(8) as u64 % 488);
    let control = Control {
        seq: 1 + b(9) as u64,
        format_id: FUZZ_FORMAT_ID,
        epoch,
        layout,
        redo,
        epoch_start,
    };
    let blocks = layout.blocks() as usize;
    let mut image = vec![0u8; blocks * BLOCK_SIZE];
    control.encode(&mut image[control.lba() as usize * BLOCK_SIZE..]);
    // Sectors from the log's first on, each a chunk of the input. Sector
    // `i` of the area is given the number of the lap the redo point is in
    // (or the one after), so sealed sectors can be the log's.
    let base = BLOCK_SIZE * CONTROL_BLOCKS as usize;
    let chunks = data.get(10..).unwrap_or(&[]).chunks(SECTOR as usize + 1);
    for (i, chunk) in chunks.enumerate() {
        let at = base + i * SECTOR as usize;
        if at + SECTOR as usize > image.len() {
            break;
        }
        let (&flags, bytes) = chunk.split_first().unwrap();
        let s = &mut image[at..at + SECTOR as usize];
        if flags & 2 != 0 {
            continue;
        }
        s[..bytes.len()].copy_from_slice(bytes);
        if flags & 1 != 0 && (i as u64) < lap {
            let redo_lap = redo_sector / lap;
            let number = (redo_lap + (flags as u64 >> 7)) * lap + i as u64;
            s[6..8].copy_from_slice(&(u16_at(bytes, 6) % 64).to_le_bytes());
            s[8..12]
                .copy_from_slice(&(epoch - (flags as u32 >> 5 & 1).min(epoch - 1)).to_le_bytes());
            s[12..16].copy_from_slice(&(FUZZ_FORMAT_ID as u32).to_le_bytes());
            s[16..24].copy_from_slice(&number.to_le_bytes());
            if u16_at(bytes, 4) > 488 {
                s[4..6].copy_from_slice(&(u16_at(bytes, 4) % 489).to_le_bytes());
            }
            let crc = crate::checksum::crc32c(&s[4..]);
            s[0..4].copy_from_slice(&crc.to_le_bytes());
        }
    }
    let disk = MemDisk::new(image);
    let r = Engine::open(
        MemDevice::new(&disk),
        MemDevice::new(&disk),
        config(),
        pool(&disk, FUZZ_FRAMES),
    );
    match r {
        Ok((engine, report)) => {
            let _ = format!("{report:?} {}", report.stop);
            // The recovered engine works.
            let w = [1u8; 8];
            let _ = engine.commit(&[PageWrite {
                page: PageId(0),
                offset: PAGE_HEADER,
                data: &w,
            }]);
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
}

fn commit_flip_reopen(data: &[u8]) {
    let b = |i: usize| data.get(i).copied().unwrap_or(0);
    let layout = Layout {
        log_blocks: 4 + b(0) as u64 % 6,
        data_pages: 2,
    };
    let flips = (b(1) % 5) as usize;
    let blocks = layout.blocks() as usize;
    let disk = MemDisk::new(vec![0u8; blocks * BLOCK_SIZE]);
    let mut model = vec![vec![0u8; PAGE_CONTENTS]; 2];
    {
        let engine = Engine::format(
            MemDevice::new(&disk),
            MemDevice::new(&disk),
            layout,
            config(),
            pool(&disk, FUZZ_FRAMES),
        )
        .expect("format");
        // Transactions: 4 bytes each (page and kind, offset, length,
        // value), up to the flips at the end of the input.
        let ops_end = data.len().saturating_sub(flips * 5).max(2);
        for op in data.get(2..ops_end).unwrap_or(&[]).chunks_exact(4) {
            if op[0] == 0xff {
                engine.checkpoint().expect("checkpoint");
                continue;
            }
            let page = (op[0] & 1) as usize;
            let len = 1 + op[2] as usize % 200;
            let offset = op[1] as usize * 16 % (PAGE_CONTENTS - len);
            let bytes = vec![op[3]; len];
            let w = [PageWrite {
                page: PageId(page as u64),
                offset: PAGE_HEADER + offset,
                data: &bytes,
            }];
            engine.commit(&w).expect("commit");
            model[page][offset..offset + len].copy_from_slice(&bytes);
        }
    }
    let total = disk.with(|d| d.len());
    for f in data[data.len().saturating_sub(flips * 5)..].chunks_exact(5) {
        let at = u32::from_le_bytes(f[..4].try_into().unwrap()) as usize % total;
        let x = if f[4] == 0 { 0x80 } else { f[4] };
        disk.with(|d| d[at] ^= x);
    }
    match Engine::open(
        MemDevice::new(&disk),
        MemDevice::new(&disk),
        config(),
        pool(&disk, FUZZ_FRAMES),
    ) {
        Ok((engine, report)) => {
            for (p, want) in model.iter().enumerate() {
                let mut got = vec![0u8; PAGE_CONTENTS];
                engine
                    .read(PageId(p as u64), PAGE_HEADER, &mut got)
                    .unwrap();
                assert!(
                    got == *want,
                    "page {p} lost committed data, yet recovery succeeded: {report:?}"
                );
            }
        }
        Err(
            e @ (Error::LogCorrupt(_)
            | Error::NoControlBlock { .. }
            | Error::UnrepairablePage { .. }
            | Error::BadLogRecord { .. }),
        ) => {
            let _ = e.to_string();
        }
        Err(e) => panic!("unexpected error after flipping bytes: {e:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mem_device_runs_an_engine() {
        let layout = Layout {
            log_blocks: 4,
            data_pages: 2,
        };
        let disk = MemDisk::new(vec![0u8; layout.blocks() as usize * BLOCK_SIZE]);
        let e = Engine::format(
            MemDevice::new(&disk),
            MemDevice::new(&disk),
            layout,
            config(),
            pool(&disk, 1),
        )
        .unwrap();
        e.commit(&[PageWrite {
            page: PageId(1),
            offset: 100,
            data: b"abc",
        }])
        .unwrap();
        drop(e);
        let (e, r) = Engine::open(
            MemDevice::new(&disk),
            MemDevice::new(&disk),
            config(),
            pool(&disk, 1),
        )
        .unwrap();
        assert_eq!(r.transactions, 1);
        let mut got = [0u8; 3];
        e.read(PageId(1), 100, &mut got).unwrap();
        assert_eq!(&got, b"abc");
        assert_eq!(crate::PAGE_SIZE, 4096);
    }
}
