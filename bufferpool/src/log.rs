//! The write-ahead log: records packed into 512-byte sectors of 4 KiB log
//! blocks, appended by many committers at once and made durable in groups
//! by one writer at a time (group commit).
//!
//! # Format
//!
//! The log is a circular area of `log_blocks` blocks. A log sequence number
//! is a byte position in the unbounded log; sector `n` covers LSNs
//! `[512 n, 512 n + 512)` and lives in log block `n / 8` at block
//! `start + (n / 8) % log_blocks`. Each sector starts with a header, and
//! records ([`crate::record`]) are packed into the sector payloads as one
//! byte stream, spanning sectors and blocks as needed:
//!
//! ```text
//! offset  size  field
//!      0     4  CRC32C of bytes 4..512
//!      4     2  payload bytes used (0..=488)
//!      6     2  reserved
//!      8     4  epoch (the control block's epoch when written)
//!     12     4  format id (low half)
//!     16     8  sector number
//!     24   488  payload
//! ```
//!
//! The CRC and LSN unit is the sector, the unit a write can be torn at:
//! a torn 4 KiB log write leaves every sector either old or new, each
//! self-validating. The tail block is rewritten by each batch; its sectors
//! that were already durable are rewritten byte for byte, so whichever
//! version of them survives holds the same records. The reader
//! ([`scan`]) stops at the first sector whose CRC, number, format id or
//! epoch does not hold, or that is not full, and at the first record whose
//! frame does not hold. The epoch (raised at every start) keeps stale
//! sectors written past the recovered end by an earlier run from being
//! read as the continuation of a later one.
//!
//! # Group commit
//!
//! [`Wal::append`] reserves log space and copies records into an in-memory
//! ring under a short spin lock and returns the end LSN.
//! [`Wal::flush_to`] waits until that LSN is durable: the first waiter to
//! find no writer active becomes the writer (the leader), takes everything
//! appended so far as one batch, seals its sectors into a DMA buffer,
//! writes the blocks (FUA writes, or writes and one flush:
//! [`CommitMode`]) and publishes the new durable LSN. Committers that
//! appended while a batch was in flight are served by the next leader.
//!
//! # Failure
//!
//! A failed log write or flush puts the log into a failed state: the
//! leader gets the device error, every waiter and every later append gets
//! [`WalError::Failed`]. Nothing is retried; the next start recovers from
//! what is durable. A log that would overwrite history still needed by
//! recovery (older than the last checkpoint's redo LSN) refuses the append
//! with [`WalError::LogFull`] and changes nothing.

use crate::checksum::crc32c;
use crate::device::{run_all, BlockDevice, DeviceError, DmaBytes, Io, IoKind, MAX_IO_BLOCKS};
use crate::record::{Record, RecordError};
use crate::sync::lock;
use crate::{Env, Lsn};
use alloc::boxed::Box;
use alloc::vec;
use alloc::vec::Vec;
use core::cell::UnsafeCell;
use core::fmt;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use spin::Mutex;

/// Bytes per sector.
pub const SECTOR: u64 = dbos_abi::SECTOR_SIZE;
/// Bytes of sector header.
pub const SECTOR_HEADER: u64 = 24;
/// Payload bytes per sector.
pub const SECTOR_PAYLOAD: u64 = SECTOR - SECTOR_HEADER;
/// Sectors per log block.
pub const SECTORS_PER_BLOCK: u64 = 8;
/// Bytes per log block.
pub const LOG_BLOCK: u64 = SECTOR * SECTORS_PER_BLOCK;
/// The LSN of the first record of a new log.
pub const FIRST_LSN: Lsn = Lsn(SECTOR_HEADER);

/// A block of the unbounded log: `LogBlock(n)` covers LSNs
/// `[4096 n, 4096 n + 4096)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LogBlock(pub u64);

impl LogBlock {
    /// The block holding `lsn`.
    pub fn of(lsn: Lsn) -> LogBlock {
        LogBlock(lsn.0 / LOG_BLOCK)
    }
}

/// Index of the payload byte at `lsn` in the stream of all payload bytes.
/// `lsn` must be a payload position (`lsn % 512 >= 24`).
pub fn payload_index(lsn: Lsn) -> u64 {
    debug_assert!(lsn.0 % SECTOR >= SECTOR_HEADER, "{lsn:?} is in a header");
    (lsn.0 / SECTOR) * SECTOR_PAYLOAD + (lsn.0 % SECTOR - SECTOR_HEADER)
}

/// The LSN of payload byte `p`.
pub fn lsn_of_payload(p: u64) -> Lsn {
    Lsn((p / SECTOR_PAYLOAD) * SECTOR + SECTOR_HEADER + p % SECTOR_PAYLOAD)
}

/// The LSN `bytes` payload bytes after `lsn`.
pub fn lsn_advance(lsn: Lsn, bytes: u64) -> Lsn {
    lsn_of_payload(payload_index(lsn) + bytes)
}

/// Position of the last payload byte before `end` (the first payload byte
/// for `FIRST_LSN`).
fn last_byte(end: Lsn) -> u64 {
    lsn_of_payload(payload_index(end).saturating_sub(1)).0
}

/// How commits are made durable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CommitMode {
    /// Every log write is a FUA write.
    Fua,
    /// Plain log writes, then one flush per batch.
    WriteFlush,
}

/// Where the log is and how its sectors are tagged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LogGeometry {
    /// First block of the log area.
    pub start_lba: u64,
    /// Blocks in the log area.
    pub blocks: u64,
    /// The format id sectors are tagged with (low 32 bits stored).
    pub format_id: u64,
    /// The epoch sectors written now are tagged with.
    pub epoch: u32,
}

impl LogGeometry {
    fn lba_of(&self, block: LogBlock) -> u64 {
        self.start_lba + block.0 % self.blocks
    }
}

/// A log operation that failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WalError {
    /// This operation's log write or flush failed; the log is now failed.
    Device(DeviceError),
    /// An earlier log write or flush failed; the log accepts nothing more.
    Failed(DeviceError),
    /// The append would overwrite log still needed by recovery:
    /// `needed_blocks` blocks past the redo point, `log_blocks` available.
    /// Nothing was appended; a checkpoint frees space.
    LogFull { needed_blocks: u64, log_blocks: u64 },
    /// The records are larger than the log buffer can hold at once.
    TooLarge(usize),
}

impl fmt::Display for WalError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WalError::Device(e) => write!(f, "log write failed: {e}"),
            WalError::Failed(e) => {
                write!(f, "the log has failed earlier ({e}) and accepts nothing")
            }
            WalError::LogFull {
                needed_blocks,
                log_blocks,
            } => write!(
                f,
                "the log is full: {needed_blocks} blocks since the last checkpoint needed, \
                 {log_blocks} available (checkpoint to free space)"
            ),
            WalError::TooLarge(n) => write!(f, "{n} bytes of records do not fit the log buffer"),
        }
    }
}

/// Counters of a log.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LogStats {
    /// Successful [`Wal::append`] calls.
    pub appends: u64,
    /// Records appended.
    pub records: u64,
    /// Encoded record bytes appended.
    pub record_bytes: u64,
    /// Batches written (leader turns that wrote something).
    pub batches: u64,
    /// Log blocks written.
    pub blocks_written: u64,
    /// Flushes issued.
    pub flushes: u64,
}

#[derive(Default)]
struct AtomicLogStats {
    appends: AtomicU64,
    records: AtomicU64,
    record_bytes: AtomicU64,
    batches: AtomicU64,
    blocks_written: AtomicU64,
    flushes: AtomicU64,
}

/// The in-memory copy of the unwritten log: payload bytes at
/// `lsn % size` (header positions unused).
struct Ring {
    bytes: UnsafeCell<Box<[u8]>>,
    size: u64,
}

// SAFETY: appenders write disjoint ranges under the insert lock; the writer
// reads only ranges below the insert position it read under that lock, and
// appends never reach a slot the writer may still read (see `Wal::append`).
unsafe impl Sync for Ring {}

impl Ring {
    fn new(size: u64) -> Ring {
        Ring {
            bytes: UnsafeCell::new(vec![0u8; size as usize].into_boxed_slice()),
            size,
        }
    }

    /// Copies `data` to the payload positions starting at `lsn`.
    ///
    /// # Safety
    /// No other thread accesses the ring slots of those positions meanwhile.
    unsafe fn copy_in(&self, lsn: Lsn, data: &[u8]) {
        let base = self.base();
        let mut pos = lsn.0;
        let mut rest = data;
        while !rest.is_empty() {
            let take = ((SECTOR - pos % SECTOR) as usize).min(rest.len());
            let at = (pos % self.size) as usize;
            // SAFETY: a sector's payload never crosses the ring end (the
            // ring is a multiple of 512 bytes); exclusivity from the caller.
            unsafe { core::ptr::copy_nonoverlapping(rest.as_ptr(), base.add(at), take) };
            rest = &rest[take..];
            pos += take as u64;
            if pos.is_multiple_of(SECTOR) {
                pos += SECTOR_HEADER;
            }
        }
    }

    /// Copies `out.len()` bytes at position `pos` (inside one sector).
    ///
    /// # Safety
    /// Nobody writes those ring slots meanwhile.
    unsafe fn copy_out(&self, pos: u64, out: &mut [u8]) {
        debug_assert!(pos % SECTOR + out.len() as u64 <= SECTOR);
        let at = (pos % self.size) as usize;
        // SAFETY: inside the ring (see copy_in); exclusivity from the caller.
        unsafe { core::ptr::copy_nonoverlapping(self.base().add(at), out.as_mut_ptr(), out.len()) };
    }

    fn base(&self) -> *mut u8 {
        // SAFETY: only the pointer is taken; accesses go through copy_in and
        // copy_out, whose callers guarantee disjointness.
        unsafe { (*self.bytes.get()).as_mut_ptr() }
    }
}

/// Durable sectors of the tail block left by an earlier run, rewritten
/// byte for byte until the log has moved past their block.
struct Frozen {
    first_sector: u64,
    raw: Vec<u8>,
}

struct Writer<D> {
    dev: D,
    buf: DmaBytes,
    ios: Vec<Io>,
    frozen: Option<Frozen>,
}

/// Where a log continues after recovery (see [`scan`]).
pub struct Tail {
    /// End of the last valid record: the next append goes here.
    pub end: Lsn,
    /// The raw block holding `end`, as read from the log.
    pub block: Vec<u8>,
}

/// The write-ahead log.
pub struct Wal<D: BlockDevice> {
    env: Env,
    geo: LogGeometry,
    mode: CommitMode,
    ring: Ring,
    insert: Mutex<Lsn>,
    durable: AtomicU64,
    redo: AtomicU64,
    writer: Mutex<Writer<D>>,
    failed: AtomicBool,
    failure: Mutex<Option<DeviceError>>,
    stats: AtomicLogStats,
}

impl<D: BlockDevice> Wal<D> {
    /// A log on `geo` written through `dev`, continuing at `tail` (from
    /// [`scan`], or an empty tail at [`FIRST_LSN`] for a new log), keeping
    /// everything from `redo` on, buffering up to `buffer_blocks` blocks
    /// of unwritten log.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        mut dev: D,
        geo: LogGeometry,
        mode: CommitMode,
        env: Env,
        buffer_blocks: usize,
        redo: Lsn,
        tail: Tail,
    ) -> Result<Wal<D>, DeviceError> {
        assert!(buffer_blocks >= 4, "the log buffer needs at least 4 blocks");
        assert!(geo.blocks >= 2, "the log needs at least 2 blocks");
        let ring = Ring::new(buffer_blocks as u64 * LOG_BLOCK);
        let buf = DmaBytes::new(dev.alloc(buffer_blocks + 1)?);
        let end = tail.end;
        // Reload the tail block's durable payload and freeze its full
        // sectors before the end's sector.
        let block = LogBlock::of(end);
        let end_sector = end.0 / SECTOR;
        let first_sector = block.0 * SECTORS_PER_BLOCK;
        for s in first_sector..=end_sector {
            let payload_start = s * SECTOR + SECTOR_HEADER;
            let used = (end.0 - payload_start.min(end.0)).min(SECTOR_PAYLOAD) as usize;
            if used == 0 {
                continue;
            }
            let raw = &tail.block[((s - first_sector) * SECTOR) as usize..][..SECTOR as usize];
            // SAFETY: nothing else uses the ring yet.
            unsafe { ring.copy_in(Lsn(payload_start), &raw[SECTOR_HEADER as usize..][..used]) };
        }
        let frozen = (end_sector > first_sector).then(|| Frozen {
            first_sector,
            raw: tail.block[..((end_sector - first_sector) * SECTOR) as usize].to_vec(),
        });
        Ok(Wal {
            env,
            geo,
            mode,
            ring,
            insert: Mutex::new(end),
            durable: AtomicU64::new(end.0),
            redo: AtomicU64::new(redo.0),
            writer: Mutex::new(Writer {
                dev,
                buf,
                ios: Vec::new(),
                frozen,
            }),
            failed: AtomicBool::new(false),
            failure: Mutex::new(None),
            stats: AtomicLogStats::default(),
        })
    }

    /// The geometry.
    pub fn geometry(&self) -> LogGeometry {
        self.geo
    }

    /// Where the next append goes.
    pub fn insert_lsn(&self) -> Lsn {
        *lock(&self.insert, self.env.relax)
    }

    /// Everything before this LSN is durable.
    pub fn durable_lsn(&self) -> Lsn {
        Lsn(self.durable.load(Ordering::Acquire))
    }

    /// The oldest LSN recovery needs (the last checkpoint's redo LSN).
    pub fn redo_lsn(&self) -> Lsn {
        Lsn(self.redo.load(Ordering::Acquire))
    }

    /// Frees the log before `redo` for reuse (after a checkpoint whose
    /// control block is stable).
    pub fn set_redo_lsn(&self, redo: Lsn) {
        self.redo.fetch_max(redo.0, Ordering::AcqRel);
    }

    /// The device error that failed the log, if it has failed.
    pub fn failure(&self) -> Option<DeviceError> {
        if !self.failed.load(Ordering::Acquire) {
            return None;
        }
        *lock(&self.failure, self.env.relax)
    }

    /// Puts the log into the failed state (first error wins).
    pub fn fail(&self, e: DeviceError) {
        let mut f = lock(&self.failure, self.env.relax);
        if f.is_none() {
            log::error!("wal: failed: {e}; no further commits until restart");
            *f = Some(e);
        }
        self.failed.store(true, Ordering::Release);
    }

    /// The counters.
    pub fn stats(&self) -> LogStats {
        let s = &self.stats;
        let l = |c: &AtomicU64| c.load(Ordering::Relaxed);
        LogStats {
            appends: l(&s.appends),
            records: l(&s.records),
            record_bytes: l(&s.record_bytes),
            batches: l(&s.batches),
            blocks_written: l(&s.blocks_written),
            flushes: l(&s.flushes),
        }
    }

    fn check_failed(&self) -> Result<(), WalError> {
        match self.failure() {
            Some(e) => Err(WalError::Failed(e)),
            None => Ok(()),
        }
    }

    /// Largest total of encoded record bytes one append takes.
    pub fn max_append(&self) -> usize {
        // Payload bytes whose LSN span (headers included) leaves a block of
        // the ring free.
        ((self.ring.size - 2 * LOG_BLOCK) / SECTOR * SECTOR_PAYLOAD) as usize
    }

    /// Appends `records` as one contiguous run and returns the LSN just
    /// after them. They are durable once [`Wal::flush_to`] with that LSN
    /// returns `Ok`.
    pub fn append(&self, records: &[Record<'_>]) -> Result<Lsn, WalError> {
        self.check_failed()?;
        let total: usize = records.iter().map(Record::encoded_len).sum();
        if total > self.max_append() {
            return Err(WalError::TooLarge(total));
        }
        let mut scratch = vec![0u8; total];
        let mut off = 0;
        for r in records {
            let len = r.encoded_len();
            r.encode(Lsn(0), &mut scratch[off..off + len]);
            off += len;
        }
        loop {
            let mut next = lock(&self.insert, self.env.relax);
            self.check_failed()?;
            let start = *next;
            let end = lsn_advance(start, total as u64);
            let redo_block = LogBlock::of(self.redo_lsn()).0;
            let needed = last_byte(end) / LOG_BLOCK - redo_block + 1;
            if needed > self.geo.blocks {
                return Err(WalError::LogFull {
                    needed_blocks: needed,
                    log_blocks: self.geo.blocks,
                });
            }
            // The writer may read from the durable LSN's block on: stay
            // within one ring length of it.
            let floor = self.durable.load(Ordering::Acquire) / LOG_BLOCK * LOG_BLOCK;
            if end.0 - floor > self.ring.size {
                drop(next);
                self.wait_durable(start)?;
                continue;
            }
            let mut off = 0;
            for r in records {
                let len = r.encoded_len();
                Record::relocate(&mut scratch[off..off + len], lsn_advance(start, off as u64));
                off += len;
            }
            // SAFETY: [start, end) is reserved to us under the insert lock,
            // and no writer reads it before we release the lock; it is
            // within one ring length of the writer's lowest position.
            unsafe { self.ring.copy_in(start, &scratch) };
            *next = end;
            drop(next);
            let s = &self.stats;
            s.appends.fetch_add(1, Ordering::Relaxed);
            s.records.fetch_add(records.len() as u64, Ordering::Relaxed);
            s.record_bytes.fetch_add(total as u64, Ordering::Relaxed);
            return Ok(end);
        }
    }

    /// Waits until everything before `lsn` (clamped to the insert
    /// position) is durable, writing batches as the leader when no one else
    /// is.
    pub fn flush_to(&self, lsn: Lsn) -> Result<(), WalError> {
        let lsn = lsn.min(self.insert_lsn());
        self.wait_durable(lsn)
    }

    /// Waits until everything before `lsn` (at most the insert position)
    /// is durable.
    pub fn wait_durable(&self, lsn: Lsn) -> Result<(), WalError> {
        loop {
            if self.durable.load(Ordering::Acquire) >= lsn.0 {
                return Ok(());
            }
            self.check_failed()?;
            if let Some(mut w) = self.writer.try_lock() {
                self.write_batch(&mut w, false)?;
                continue;
            }
            (self.env.relax)();
        }
    }

    /// Rewrites the block holding the insert position with FUA, cut off
    /// there: the durable records before it as they are, nothing after it.
    /// Recovery does this before the log continues, so that records left
    /// after the end it chose (a transaction without its commit) can never
    /// be read as part of the continued log.
    pub fn truncate_tail(&self) -> Result<(), WalError> {
        let mut w = lock(&self.writer, self.env.relax);
        self.write_batch_as(&mut w, true, IoKind::WriteFua)
    }

    /// The leader's turn: writes everything appended so far.
    fn write_batch(&self, w: &mut Writer<D>, force: bool) -> Result<(), WalError> {
        let kind = match self.mode {
            CommitMode::Fua => IoKind::WriteFua,
            CommitMode::WriteFlush => IoKind::Write,
        };
        self.write_batch_as(w, force, kind)
    }

    fn write_batch_as(&self, w: &mut Writer<D>, force: bool, kind: IoKind) -> Result<(), WalError> {
        self.check_failed()?;
        let durable = self.durable.load(Ordering::Acquire);
        let target = self.insert_lsn().0;
        if target <= durable && !force {
            return Ok(());
        }
        let first = LogBlock(durable / LOG_BLOCK);
        let last = LogBlock((last_byte(Lsn(target)) / LOG_BLOCK).max(first.0));
        let nblocks = last.0 - first.0 + 1;
        if w.frozen
            .as_ref()
            .is_some_and(|f| f.first_sector / SECTORS_PER_BLOCK < first.0)
        {
            w.frozen = None;
        }
        let Writer {
            dev,
            buf,
            ios,
            frozen,
        } = w;
        let out = &mut buf.bytes_mut()[..(nblocks * LOG_BLOCK) as usize];
        for (i, sector) in out.chunks_exact_mut(SECTOR as usize).enumerate() {
            let s = first.0 * SECTORS_PER_BLOCK + i as u64;
            if let Some(f) = frozen.as_ref() {
                if s >= f.first_sector && ((s - f.first_sector) * SECTOR) < f.raw.len() as u64 {
                    let at = ((s - f.first_sector) * SECTOR) as usize;
                    sector.copy_from_slice(&f.raw[at..at + SECTOR as usize]);
                    continue;
                }
            }
            self.seal_sector(s, target, sector);
        }
        ios.clear();
        let mut i = 0;
        while i < nblocks {
            let block = LogBlock(first.0 + i);
            let phys = block.0 % self.geo.blocks;
            let run = (nblocks - i)
                .min(self.geo.blocks - phys)
                .min(MAX_IO_BLOCKS as u64);
            ios.push(Io {
                kind,
                lba: self.geo.lba_of(block),
                blocks: run as u32,
                addr: buf.io_buf().block_addr(i as usize),
            });
            i += run;
        }
        let mut result = run_all(dev, ios, self.env.relax);
        if result.is_ok() && kind == IoKind::Write {
            self.stats.flushes.fetch_add(1, Ordering::Relaxed);
            result = run_all(dev, &[Io::flush()], self.env.relax);
        }
        if let Err(e) = result {
            self.fail(e);
            return Err(WalError::Device(e));
        }
        self.stats.batches.fetch_add(1, Ordering::Relaxed);
        self.stats
            .blocks_written
            .fetch_add(nblocks, Ordering::Relaxed);
        self.durable.store(target, Ordering::Release);
        Ok(())
    }

    /// Fills `out` with sector `s` as of insert position `target`.
    fn seal_sector(&self, s: u64, target: u64, out: &mut [u8]) {
        let payload_start = s * SECTOR + SECTOR_HEADER;
        let used = target.saturating_sub(payload_start).min(SECTOR_PAYLOAD) as usize;
        if used == 0 {
            out.fill(0);
            return;
        }
        let h = SECTOR_HEADER as usize;
        // SAFETY: positions below `target` were written by appenders that
        // released the insert lock before we read `target` under it, and
        // appenders stay one ring length ahead of the durable block.
        unsafe { self.ring.copy_out(payload_start, &mut out[h..h + used]) };
        out[h + used..].fill(0);
        out[4..6].copy_from_slice(&(used as u16).to_le_bytes());
        out[6..8].fill(0);
        out[8..12].copy_from_slice(&self.geo.epoch.to_le_bytes());
        out[12..16].copy_from_slice(&(self.geo.format_id as u32).to_le_bytes());
        out[16..24].copy_from_slice(&s.to_le_bytes());
        let crc = crc32c(&out[4..]);
        out[0..4].copy_from_slice(&crc.to_le_bytes());
    }
}

/// What a sector read from the log holds, if it belongs to the log.
fn check_sector(
    raw: &[u8],
    sector: u64,
    format_id: u64,
    min_epoch: u32,
    max_epoch: u32,
) -> Option<(usize, u32)> {
    let u32_at = |at: usize| u32::from_le_bytes(raw[at..at + 4].try_into().unwrap());
    if u32_at(0) != crc32c(&raw[4..SECTOR as usize]) {
        return None;
    }
    let used = u16::from_le_bytes(raw[4..6].try_into().unwrap()) as usize;
    let epoch = u32_at(8);
    let number = u64::from_le_bytes(raw[16..24].try_into().unwrap());
    if used == 0
        || used > SECTOR_PAYLOAD as usize
        || u32_at(12) != format_id as u32
        || number != sector
        || epoch < min_epoch
        || epoch > max_epoch
    {
        return None;
    }
    Some((used, epoch))
}

/// Why the log could not be read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ScanError<E> {
    /// A read failed.
    Device(DeviceError),
    /// The sector holding the redo LSN does not reach it: log the last
    /// checkpoint needs is gone.
    RedoLost(Lsn),
    /// The record handler failed.
    Handler(E),
}

/// What a scan found.
pub struct ScanSummary {
    /// Records handed to the handler.
    pub records: u64,
    /// Valid sectors read.
    pub sectors: u64,
    /// Why the scan stopped, for the report.
    pub stop: ScanStop,
    /// The end of the last valid record.
    pub end: Lsn,
}

/// Why a scan stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ScanStop {
    /// The last sector was not full: the clean end of the log.
    PartialSector,
    /// A sector's CRC, number, format id or epoch did not hold.
    InvalidSector(u64),
    /// A record's frame did not hold (a torn or incomplete tail record).
    BadRecord(Lsn, RecordError),
    /// The whole log area was read.
    LogEnd,
}

/// Reads the log of `geo` from `redo` on, handing every valid record to
/// `handle` in order, and stops at the first invalid sector or record.
/// Sectors must carry `geo.format_id` and epochs up to `geo.epoch`, never
/// decreasing. Uses `buf` (at least one block) to read.
pub fn scan<D: BlockDevice, E>(
    dev: &mut D,
    geo: &LogGeometry,
    redo: Lsn,
    buf: &mut DmaBytes,
    env: Env,
    mut handle: impl FnMut(Lsn, Record<'_>) -> Result<(), E>,
) -> Result<ScanSummary, ScanError<E>> {
    let chunk_blocks = (buf.io_buf().blocks as u64).min(MAX_IO_BLOCKS as u64);
    let max_record = (geo.blocks * LOG_BLOCK) as usize;
    let first_sector = redo.0 / SECTOR;
    let end_sector = first_sector + geo.blocks * SECTORS_PER_BLOCK;
    let mut pending: Vec<u8> = Vec::new();
    let mut pending_start = payload_index(redo);
    let mut loaded: Option<(u64, u64)> = None; // (first block, blocks) in buf
    let mut min_epoch = 0;
    let mut summary_records = 0;
    let mut sectors = 0;
    let mut sector = first_sector;
    let stop = 'scan: loop {
        if sector >= end_sector {
            break ScanStop::LogEnd;
        }
        let block = sector / SECTORS_PER_BLOCK;
        if !loaded.is_some_and(|(b, n)| block >= b && block < b + n) {
            let phys = block % geo.blocks;
            let n = chunk_blocks.min(geo.blocks - phys);
            let io = Io::read(geo.start_lba + phys, n as u32, buf.io_buf().addr);
            run_all(dev, &[io], env.relax).map_err(ScanError::Device)?;
            loaded = Some((block, n));
        }
        let (b0, _) = loaded.unwrap();
        let at = ((sector - b0 * SECTORS_PER_BLOCK) * SECTOR) as usize;
        let raw = &buf.bytes()[at..at + SECTOR as usize];
        let Some((used, epoch)) = check_sector(raw, sector, geo.format_id, min_epoch, geo.epoch)
        else {
            if sector == first_sector && redo.0 % SECTOR != SECTOR_HEADER {
                return Err(ScanError::RedoLost(redo));
            }
            break ScanStop::InvalidSector(sector);
        };
        let skip = if sector == first_sector {
            (redo.0 % SECTOR - SECTOR_HEADER) as usize
        } else {
            0
        };
        if used < skip {
            return Err(ScanError::RedoLost(redo));
        }
        sectors += 1;
        min_epoch = epoch;
        let h = SECTOR_HEADER as usize;
        pending.extend_from_slice(&raw[h + skip..h + used]);
        let mut consumed = 0;
        while pending.len() - consumed >= 4 {
            let rest = &pending[consumed..];
            let lsn = lsn_of_payload(pending_start);
            let len = match Record::framed_len(rest, max_record) {
                Ok(len) => len,
                Err(e) => break 'scan ScanStop::BadRecord(lsn, e),
            };
            if rest.len() < len {
                break;
            }
            match Record::decode(&rest[..len], lsn) {
                Ok(r) => handle(lsn, r).map_err(ScanError::Handler)?,
                Err(e) => break 'scan ScanStop::BadRecord(lsn, e),
            }
            summary_records += 1;
            consumed += len;
            pending_start += len as u64;
        }
        pending.drain(..consumed);
        if used < SECTOR_PAYLOAD as usize {
            break ScanStop::PartialSector;
        }
        sector += 1;
    };
    Ok(ScanSummary {
        records: summary_records,
        sectors,
        stop,
        end: lsn_of_payload(pending_start),
    })
}

/// Reads the log block holding `end`, where the log is to continue.
pub fn read_tail<D: BlockDevice>(
    dev: &mut D,
    geo: &LogGeometry,
    end: Lsn,
    buf: &mut DmaBytes,
    env: Env,
) -> Result<Tail, DeviceError> {
    let io = Io::read(geo.lba_of(LogBlock::of(end)), 1, buf.io_buf().addr);
    run_all(dev, &[io], env.relax)?;
    Ok(Tail {
        end,
        block: buf.bytes()[..LOG_BLOCK as usize].to_vec(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lsn_arithmetic() {
        assert_eq!(payload_index(FIRST_LSN), 0);
        assert_eq!(lsn_of_payload(0), FIRST_LSN);
        assert_eq!(lsn_of_payload(487), Lsn(511));
        assert_eq!(lsn_of_payload(488), Lsn(512 + 24));
        assert_eq!(lsn_advance(Lsn(500), 12), Lsn(536));
        assert_eq!(lsn_advance(Lsn(500), 11), Lsn(511));
        assert_eq!(lsn_advance(FIRST_LSN, 488 * 8), Lsn(4096 + 24));
        assert_eq!(last_byte(Lsn(4096 + 24)), 4095);
        assert_eq!(last_byte(Lsn(100)), 99);
        assert_eq!(LogBlock::of(Lsn(4096 + 24)), LogBlock(1));
    }
}
