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
//!      6     2  back: this sector's distance from the first sector
//!                its write batch changed (the batch marker)
//!      8     4  epoch (the control block's epoch when written)
//!     12     4  format id (low half)
//!     16     8  sector number
//!     24   488  payload
//! ```
//!
//! The CRC and LSN unit is the sector, the unit a write can be torn at:
//! a torn 4 KiB log write leaves every sector either old or new, each
//! self-validating. The tail block is rewritten by each batch; its sectors
//! that were already durable are rewritten byte for byte (from a copy of
//! what was written), so whichever version of them survives is
//! the same. Every batch also writes the sector holding its end, even when
//! no payload of it is used yet (`used` = 0): the durable end of the log is
//! always a valid sector that is not full. The sectors after the end in
//! its last block are written as *blank* sectors (checksummed, numbered,
//! `used` = 0xFFFF, with the batch marker), and format writes every sector
//! of the log area as an *unwritten* sector (`used` = 0xFFFE): **no sector
//! of a log is ever all zeros**, so a zeroed sector is damage wherever it
//! is found, never the old contents of a torn write. The epoch (raised at
//! every start) keeps stale sectors written past the recovered end by an
//! earlier run from being read as the continuation of a later one.
//!
//! # Torn tail or corruption: the in-flight invariant
//!
//! **Invariant.** At most one write batch is in flight at any time: a
//! leader holds the writer lock from sealing a batch until all of its
//! writes (and, in [`CommitMode::WriteFlush`], its flush) have completed,
//! and only then publishes the durable LSN; nothing else writes the log
//! area (format zeroes it before the log exists). A batch whose durable
//! LSN was `D` when it began changes only sectors from `D`'s sector on
//! (earlier sectors of the block are rewritten byte for byte), and every
//! sector it seals records in `back` how far it is from `D`'s sector. So
//! for a sector `v` written by some batch, every sector before
//! `v - back(v)` was durable, and final, before `v` was written.
//!
//! A crash leaves every sector the in-flight batch wrote either old or new,
//! and both are intact (a sector is the atomic unit; format wrote every
//! sector of the log area, so "old" is an unwritten sector, a blank one, an
//! older version of the same sector, or a sector of an earlier lap or
//! epoch, and never zeros). Therefore, when the reader ([`scan`]) stops at
//! sector `s`:
//!
//! - if `s` is damaged in a way no crash produces (zeros, a checksum
//!   failure, an impossible header, a foreign format, a misplaced sector
//!   number, an epoch newer than the control block's, a record frame that
//!   does not hold in sectors whose checksums do), that is corruption;
//! - if some later valid or blank sector `v` of this epoch has
//!   `v - back(v) > s` (or `= s` where `s` is not a valid sector: a batch
//!   can only begin in a sector that holds the durable end, a valid
//!   sector in every version a crash leaves), or a blank one says its
//!   batch began past the
//!   readable log, a batch began after `s` was durable, so `s` cannot be
//!   the torn tail of the in-flight batch: corruption (the in-flight
//!   batch began at the durable end, and every version of the sector
//!   holding it, old or new, holds the log up to there);
//! - if the readable log ends before the epoch start the control block
//!   names (log the recovery that began the epoch had read and kept), that
//!   is corruption;
//! - otherwise `s` and every valid sector after it can belong to the batch
//!   that was in flight, which acknowledged nothing: a torn tail.
//!
//! What this cannot tell apart: a sector of the *last* completed batch
//! (with no batch after it) reverted to the version it had before that
//! batch, which is exactly what a crash during that batch leaves. No log
//! can: nothing is written after the last batch to contradict it (see
//! `docs/wal.md`).
//!
//! Corruption is reported as [`LogDamage`] (sector, device block, LSN
//! range, what was found, the intact log beyond it); recovery refuses to
//! open and writes nothing, unless the operator asks for that exact
//! truncation (`crate::recovery::TruncateRequest`).
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
use crate::device::{
    run_all, run_one, BlockDevice, DeviceError, DmaBytes, Io, IoFailure, IoKind, MAX_IO_BLOCKS,
};
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
/// `used` of a blank sector: written by a batch past its end sector.
pub const USED_BLANK: u16 = 0xFFFF;
/// `used` of an unwritten sector: written by format, by no batch since.
pub const USED_UNWRITTEN: u16 = 0xFFFE;
/// The LSN of the first record of a new log.
pub const FIRST_LSN: Lsn = Lsn(SECTOR_HEADER);
/// Most blocks of log buffer ([`Wal::new`]): a batch's sectors must be able
/// to name their distance from its first in 16 bits.
pub const MAX_BUFFER_BLOCKS: usize = (u16::MAX as usize + 1) / SECTORS_PER_BLOCK as usize - 2;

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

/// The complete (durable, final) sectors of the block holding the durable
/// LSN, as they were written: the next batch rewrites them byte for byte.
struct Frozen {
    /// The first sector of that block.
    first_sector: u64,
    /// The sectors before the durable LSN's sector.
    raw: Vec<u8>,
}

struct Writer<D> {
    dev: D,
    buf: DmaBytes,
    ios: Vec<Io>,
    frozen: Frozen,
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
    /// Log blocks that [`Wal::append`] leaves free for
    /// [`Wal::append_reserved`] (a checkpoint's page-LSN table).
    reserve: AtomicU64,
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
        assert!(
            buffer_blocks <= MAX_BUFFER_BLOCKS,
            "the log buffer takes at most {MAX_BUFFER_BLOCKS} blocks"
        );
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
        let frozen = Frozen {
            first_sector,
            raw: tail.block[..((end_sector - first_sector) * SECTOR) as usize].to_vec(),
        };
        Ok(Wal {
            env,
            geo,
            mode,
            ring,
            insert: Mutex::new(end),
            durable: AtomicU64::new(end.0),
            redo: AtomicU64::new(redo.0),
            reserve: AtomicU64::new(0),
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

    /// Keeps `blocks` log blocks free of [`Wal::append`]'s records, for
    /// [`Wal::append_reserved`]: a full log still has room for what a
    /// checkpoint must log before it can free the log.
    pub fn set_reserve(&self, blocks: u64) {
        self.reserve.store(blocks, Ordering::Release);
    }

    /// Appends `records` as one contiguous run and returns the LSN just
    /// after them. They are durable once [`Wal::flush_to`] with that LSN
    /// returns `Ok`. Refused with [`WalError::LogFull`] where it would use
    /// the reserve ([`Wal::set_reserve`]).
    pub fn append(&self, records: &[Record<'_>]) -> Result<Lsn, WalError> {
        self.append_within(records, self.reserve.load(Ordering::Acquire))
    }

    /// Appends like [`Wal::append`], into the reserve too.
    pub fn append_reserved(&self, records: &[Record<'_>]) -> Result<Lsn, WalError> {
        self.append_within(records, 0)
    }

    /// Appends, leaving `reserve` log blocks free.
    fn append_within(&self, records: &[Record<'_>], reserve: u64) -> Result<Lsn, WalError> {
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
            // The batch that makes `end` durable writes the block holding
            // `end` (its end sector), so that block counts.
            let redo_block = LogBlock::of(self.redo_lsn()).0;
            let needed = LogBlock::of(end).0 - redo_block + 1;
            if needed > self.geo.blocks.saturating_sub(reserve) {
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
        // The batch changes sectors from the durable LSN's on (see the
        // in-flight invariant in the module docs) and writes every block up
        // to the one holding its end sector.
        let first = LogBlock(durable / LOG_BLOCK);
        let first_changed = durable / SECTOR;
        let last = LogBlock::of(Lsn(target));
        let nblocks = last.0 - first.0 + 1;
        let Writer {
            dev,
            buf,
            ios,
            frozen,
        } = w;
        debug_assert_eq!(frozen.first_sector, first.0 * SECTORS_PER_BLOCK);
        debug_assert_eq!(
            frozen.raw.len() as u64,
            (first_changed - frozen.first_sector) * SECTOR
        );
        let out = &mut buf.bytes_mut()[..(nblocks * LOG_BLOCK) as usize];
        let (done, rest) = out.split_at_mut(frozen.raw.len());
        done.copy_from_slice(&frozen.raw);
        for (i, sector) in rest.chunks_exact_mut(SECTOR as usize).enumerate() {
            self.seal_sector(first_changed + i as u64, durable, target, sector);
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
        // Remember the complete sectors of the new durable LSN's block as
        // written: the next batch rewrites them byte for byte.
        let end_sector = target / SECTOR;
        frozen.first_sector = last.0 * SECTORS_PER_BLOCK;
        let from = ((nblocks - 1) * LOG_BLOCK) as usize;
        let len = ((end_sector - frozen.first_sector) * SECTOR) as usize;
        frozen.raw.clear();
        frozen.raw.extend_from_slice(&buf.bytes()[from..from + len]);
        self.durable.store(target, Ordering::Release);
        Ok(())
    }

    /// Fills `out` with sector `s` as of insert position `target`, for a
    /// batch that began at durable LSN `durable`: payload up to `target`;
    /// the sector holding `target` is sealed even when none of its payload
    /// is used; sectors after it are blank, their payload naming `durable`
    /// and `target`.
    fn seal_sector(&self, s: u64, durable: u64, target: u64, out: &mut [u8]) {
        // At most MAX_BUFFER_BLOCKS + 1 blocks per batch: fits 16 bits.
        let back = u16::try_from(s - durable / SECTOR).expect("batch within the buffer");
        if s > target / SECTOR {
            let h = SECTOR_HEADER as usize;
            out[h..].fill(0);
            out[h..h + 8].copy_from_slice(&durable.to_le_bytes());
            out[h + 8..h + 16].copy_from_slice(&target.to_le_bytes());
            seal_header(&self.geo, s, USED_BLANK, back, out);
            return;
        }
        let payload_start = s * SECTOR + SECTOR_HEADER;
        let used = (target - payload_start).min(SECTOR_PAYLOAD) as usize;
        let h = SECTOR_HEADER as usize;
        // SAFETY: positions below `target` were written by appenders that
        // released the insert lock before we read `target` under it, and
        // appenders stay one ring length ahead of the durable block.
        unsafe { self.ring.copy_out(payload_start, &mut out[h..h + used]) };
        out[h + used..].fill(0);
        seal_header(&self.geo, s, used as u16, back, out);
    }
}

/// Writes sector `s`'s header (`used` payload bytes or a marker, batch
/// marker `back`, the geometry's epoch and format id) and its checksum
/// over `out`, whose payload is filled already.
fn seal_header(geo: &LogGeometry, s: u64, used: u16, back: u16, out: &mut [u8]) {
    out[4..6].copy_from_slice(&used.to_le_bytes());
    out[6..8].copy_from_slice(&back.to_le_bytes());
    out[8..12].copy_from_slice(&geo.epoch.to_le_bytes());
    out[12..16].copy_from_slice(&(geo.format_id as u32).to_le_bytes());
    out[16..24].copy_from_slice(&s.to_le_bytes());
    let crc = crc32c(&out[4..SECTOR as usize]);
    out[0..4].copy_from_slice(&crc.to_le_bytes());
}

/// Fills `out` (one log block) with the unwritten sectors format writes at
/// `block` of the log of `geo`: checksummed and numbered, so that no sector
/// of a log is ever all zeros (see the module docs).
pub fn unwritten_block(geo: &LogGeometry, block: LogBlock, out: &mut [u8]) {
    let first = block.0 * SECTORS_PER_BLOCK;
    for (i, sector) in out[..LOG_BLOCK as usize]
        .chunks_exact_mut(SECTOR as usize)
        .enumerate()
    {
        sector.fill(0);
        // No checksum (the field stays zero): the pattern is checked whole
        // instead (`unwritten_number`), which costs the guest, whose
        // CRC32C is software, far less at format and at every recovery.
        sector[4..6].copy_from_slice(&USED_UNWRITTEN.to_le_bytes());
        sector[12..16].copy_from_slice(&(geo.format_id as u32).to_le_bytes());
        sector[16..24].copy_from_slice(&(first + i as u64).to_le_bytes());
    }
}

/// The sector number of `raw` if it is exactly an unwritten sector of the
/// log of `geo` (see [`unwritten_block`]): checksum field, batch marker,
/// epoch and payload zero, the unwritten marker, `geo`'s format id.
fn unwritten_number(raw: &[u8], geo: &LogGeometry) -> Option<u64> {
    let words = |r: &[u8]| {
        r.chunks_exact(8)
            .all(|w| u64::from_le_bytes(w.try_into().unwrap()) == 0)
    };
    (raw[0..4] == [0; 4]
        && raw[4..6] == USED_UNWRITTEN.to_le_bytes()
        && raw[6..12] == [0; 6]
        && raw[12..16] == (geo.format_id as u32).to_le_bytes()
        && words(&raw[SECTOR_HEADER as usize..SECTOR as usize]))
    .then(|| u64::from_le_bytes(raw[16..24].try_into().unwrap()))
}

/// What a sector read from the log turned out to be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SectorState {
    /// It belongs here: checksum, format id, number and epoch hold.
    Valid { used: u16, epoch: u32, back: u16 },
    /// A blank sector of this epoch, written by a batch past its end
    /// sector (`back` as in a valid sector; `began`: the durable LSN when
    /// that batch began).
    Blank { epoch: u32, back: u16, began: Lsn },
    /// A sector format wrote and no batch has written since.
    Unwritten,
    /// All zero: no log writes such a sector (format writes every sector
    /// of the area), so it is damage.
    Zeros,
    /// Not all zero, and the checksum does not hold.
    BadChecksum,
    /// The checksum holds but the header is impossible (payload length
    /// over 488, or a batch marker before sector 0).
    BadHeader { used: u16, back: u16 },
    /// A sector of another format (low 32 bits of its format id).
    OtherFormat(u32),
    /// This log's sector `n` of an earlier lap of the circular area.
    OtherLap(u64),
    /// A sector number that never belongs at this position.
    Misplaced(u64),
    /// An epoch older than this position requires (a sector an earlier
    /// run left past the end its recovery kept).
    OldEpoch(u32),
    /// An epoch newer than the control block's: the newer control block
    /// that started it has been lost.
    NewerEpoch(u32),
}

impl SectorState {
    /// Whether a crash can leave this where a write batch was writing: an
    /// intact sector, the write's old or new version (see the module docs).
    pub fn crash_can_leave(&self) -> bool {
        matches!(
            self,
            SectorState::Valid { .. }
                | SectorState::Blank { .. }
                | SectorState::Unwritten
                | SectorState::OtherLap(_)
                | SectorState::OldEpoch(_)
        )
    }
}

impl fmt::Display for SectorState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SectorState::Valid { used, epoch, .. } => {
                write!(f, "a valid sector ({used} payload bytes, epoch {epoch})")
            }
            SectorState::Blank { epoch, .. } => {
                write!(f, "a blank sector past a write's end (epoch {epoch})")
            }
            SectorState::Unwritten => f.write_str("a sector unwritten since the format"),
            SectorState::Zeros => f.write_str("zeros"),
            SectorState::BadChecksum => f.write_str("a sector failing its checksum"),
            SectorState::BadHeader { used, back } => write!(
                f,
                "a sector with an impossible header ({used} payload bytes, marker {back})"
            ),
            SectorState::OtherFormat(id) => {
                write!(f, "a sector of another format (id {id:#010x})")
            }
            SectorState::OtherLap(n) => write!(f, "log sector {n} of an earlier lap"),
            SectorState::Misplaced(n) => write!(f, "log sector {n}, which does not belong here"),
            SectorState::OldEpoch(e) => write!(f, "a stale sector of epoch {e}"),
            SectorState::NewerEpoch(e) => write!(
                f,
                "a sector of epoch {e}, newer than the control block's (a newer control block was lost)"
            ),
        }
    }
}

/// What the reader requires of the sectors it reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SectorRules {
    /// Format id and current epoch (the control block's).
    pub geo: LogGeometry,
    /// The epoch of the previous valid sector: epochs never decrease.
    pub min_epoch: u32,
    /// Log bytes from here on carry the current epoch (the control
    /// block's epoch start).
    pub epoch_start: Lsn,
}

/// Classifies `raw` (one 512-byte sector) read where log sector `sector`
/// belongs.
pub fn check_sector(raw: &[u8], sector: u64, rules: &SectorRules) -> SectorState {
    let raw = &raw[..SECTOR as usize];
    let u32_at = |at: usize| u32::from_le_bytes(raw[at..at + 4].try_into().unwrap());
    let u16_at = |at: usize| u16::from_le_bytes(raw[at..at + 2].try_into().unwrap());
    let lap = rules.geo.blocks.saturating_mul(SECTORS_PER_BLOCK);
    if let Some(n) = unwritten_number(raw, &rules.geo) {
        return match n {
            n if n == sector => SectorState::Unwritten,
            n if n < sector && (sector - n).is_multiple_of(lap) => SectorState::OtherLap(n),
            n => SectorState::Misplaced(n),
        };
    }
    if u32_at(0) != crc32c(&raw[4..]) {
        if raw.iter().all(|&b| b == 0) {
            return SectorState::Zeros;
        }
        return SectorState::BadChecksum;
    }
    let (used, back, epoch) = (u16_at(4), u16_at(6), u32_at(8));
    let format = u32_at(12);
    let number = u64::from_le_bytes(raw[16..24].try_into().unwrap());
    let geo = &rules.geo;
    if format != geo.format_id as u32 {
        return SectorState::OtherFormat(format);
    }
    if number != sector {
        if number < sector && (sector - number).is_multiple_of(lap) {
            return SectorState::OtherLap(number);
        }
        return SectorState::Misplaced(number);
    }
    let blank = used == USED_BLANK;
    if (used as u64 > SECTOR_PAYLOAD && !blank) || back as u64 > sector {
        return SectorState::BadHeader { used, back };
    }
    if epoch > geo.epoch {
        return SectorState::NewerEpoch(epoch);
    }
    let payload_start = sector * SECTOR + SECTOR_HEADER;
    if epoch < rules.min_epoch || (epoch < geo.epoch && payload_start >= rules.epoch_start.0) {
        return SectorState::OldEpoch(epoch);
    }
    if blank {
        let h = SECTOR_HEADER as usize;
        let began = Lsn(u64::from_le_bytes(raw[h..h + 8].try_into().unwrap()));
        return SectorState::Blank { epoch, back, began };
    }
    SectorState::Valid { used, epoch, back }
}

/// Why the log could not be read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ScanError<E> {
    /// A read failed.
    Device(IoFailure),
    /// The record handler failed.
    Handler(E),
}

/// What is wrong with a damaged log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Damage {
    /// The sector holding the redo point (durable before the control block
    /// naming it was written) does not hold it.
    Redo { redo: Lsn, found: SectorState },
    /// A sector no crash can leave in a log.
    Sector(SectorState),
    /// A record whose frame does not hold, in sectors whose checksums do.
    Record { lsn: Lsn, error: RecordError },
    /// An intact sector that is not the log's continuation where the log
    /// must continue: a later write batch (its sector `later`) began only
    /// after this sector was durable.
    Overtaken { found: SectorState, later: u64 },
    /// The readable log ends at `end`, before `verified`, the end of the
    /// log that the recovery which began the current epoch read and kept.
    EndsEarly { end: Lsn, verified: Lsn },
}

impl fmt::Display for Damage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Damage::Redo { redo, found } => write!(
                f,
                "holds {found} where the log from the redo point {} must be",
                redo.0
            ),
            Damage::Sector(found) => write!(f, "holds {found}, which no crash leaves"),
            Damage::Record { lsn, error } => {
                write!(f, "holds a broken record at LSN {}: {error}", lsn.0)
            }
            Damage::Overtaken { found, later } => write!(
                f,
                "holds {found} where the log continues: log sector {later} was written after \
                 this sector was durable"
            ),
            Damage::EndsEarly { end, verified } => write!(
                f,
                "ends the readable log at LSN {}, before LSN {}, which an earlier recovery \
                 read and kept",
                end.0, verified.0
            ),
        }
    }
}

/// Where and how the log is damaged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LogDamage {
    /// What is wrong.
    pub what: Damage,
    /// The damaged sector's number in the unbounded log (it covers LSNs
    /// `512 * sector .. 512 * sector + 512`).
    pub sector: u64,
    /// The device block holding it (sector `sector % 8` of that block).
    pub lba: u64,
    /// Intact log sectors found past the damage: the LSN range from the
    /// first one's start to the last one's end, if any.
    pub beyond: Option<(Lsn, Lsn)>,
    /// Commit records found whole in that intact log past the damage: at
    /// least this many committed (and acknowledged) transactions are lost
    /// if the log is cut at the damage.
    pub commits_beyond: u64,
    /// The end of the last commit record before the damage: where a
    /// truncation would cut the log (filled in by recovery).
    pub keep_end: Lsn,
}

impl LogDamage {
    /// LSNs the damaged sector covers.
    pub fn lsns(&self) -> (Lsn, Lsn) {
        (Lsn(self.sector * SECTOR), Lsn((self.sector + 1) * SECTOR))
    }

    /// Everything before this LSN was read; a truncation discards the log
    /// from [`LogDamage::keep_end`] up to here.
    pub fn lost_end(&self) -> Lsn {
        let mut end = self.lsns().1;
        if let Some((_, b)) = self.beyond {
            end = end.max(b);
        }
        end
    }
}

impl fmt::Display for LogDamage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (a, b) = self.lsns();
        write!(
            f,
            "the log is corrupt: log sector {} (device block {}, sector {} of it, LSNs {}..{}) {}",
            self.sector,
            self.lba,
            self.sector % SECTORS_PER_BLOCK,
            a.0,
            b.0,
            self.what
        )?;
        if let Some((x, y)) = self.beyond {
            write!(
                f,
                "; intact log follows at LSNs {}..{}, holding the commit records of {} \
                 transactions (acknowledged commits, which a truncation would lose)",
                x.0, y.0, self.commits_beyond
            )?;
        }
        Ok(())
    }
}

impl LogDamage {
    /// What truncating at this damage discards, for the refusal.
    pub fn truncation(&self) -> impl fmt::Display + '_ {
        struct T<'a>(&'a LogDamage);
        impl fmt::Display for T<'_> {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                let d = self.0;
                write!(
                    f,
                    "truncating the log at LSN {} would discard LSNs {}..{} and at least {} \
                     committed transactions",
                    d.keep_end.0,
                    d.keep_end.0,
                    d.lost_end().0,
                    d.commits_beyond
                )
            }
        }
        T(self)
    }
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
    /// Corruption, if the log is corrupt (then `stop` is
    /// [`ScanStop::Damaged`] and the records read were those before it).
    pub damage: Option<LogDamage>,
}

/// Why a scan stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ScanStop {
    /// A valid sector that is not full: the clean end of the log (a new
    /// log ends in sector 0 with nothing in it).
    PartialSector,
    /// The write batch in flight at a crash did not reach this sector
    /// (it holds `found`): a torn tail. Later sectors of that batch, if
    /// any landed, are ignored.
    TornTail { sector: u64, found: SectorState },
    /// The whole log area was read (a log this crate writes always ends
    /// before).
    LogEnd,
    /// The log is corrupt ([`ScanSummary::damage`]).
    Damaged,
}

impl fmt::Display for ScanStop {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ScanStop::PartialSector => f.write_str("clean end"),
            ScanStop::TornTail { sector, found } => {
                write!(f, "torn tail at log sector {sector}, which holds {found}")
            }
            ScanStop::LogEnd => f.write_str("end of the log area"),
            ScanStop::Damaged => f.write_str("corrupt log"),
        }
    }
}

/// Reads sectors of the log through `buf`, a window of blocks at a time.
struct SectorReader<'a, D> {
    dev: &'a mut D,
    geo: LogGeometry,
    buf: &'a mut DmaBytes,
    env: Env,
    chunk_blocks: u64,
    /// (first block, blocks) held in `buf`.
    loaded: Option<(u64, u64)>,
}

impl<D: BlockDevice> SectorReader<'_, D> {
    fn sector(&mut self, sector: u64) -> Result<&[u8], IoFailure> {
        let block = sector / SECTORS_PER_BLOCK;
        if !self
            .loaded
            .is_some_and(|(b, n)| block >= b && block < b + n)
        {
            let phys = block % self.geo.blocks;
            let n = self.chunk_blocks.min(self.geo.blocks - phys);
            let io = Io::read(self.geo.start_lba + phys, n as u32, self.buf.io_buf().addr);
            run_one(self.dev, io, self.env.relax)?;
            self.loaded = Some((block, n));
        }
        let (b0, _) = self.loaded.unwrap();
        let at = ((sector - b0 * SECTORS_PER_BLOCK) * SECTOR) as usize;
        Ok(&self.buf.bytes()[at..at + SECTOR as usize])
    }
}

/// Reads the log of `geo` from `redo` on, handing every valid record to
/// `handle` in order, until the end of the log, and tells a torn tail from
/// corruption (see the module docs). Sectors must carry `geo.format_id`,
/// epochs up to `geo.epoch`, never decreasing, and `geo.epoch` from
/// `epoch_start` on. Uses `buf` (at least one block) to read. Reads the
/// whole log area past the end; writes nothing.
pub fn scan<D: BlockDevice, E>(
    dev: &mut D,
    geo: &LogGeometry,
    redo: Lsn,
    epoch_start: Lsn,
    buf: &mut DmaBytes,
    env: Env,
    handle: impl FnMut(Lsn, Record<'_>) -> Result<(), E>,
) -> Result<ScanSummary, ScanError<E>> {
    scan_until(dev, geo, redo, epoch_start, None, buf, env, handle)
}

/// Reads the log like [`scan`] from `records.start` (the redo point), but
/// only the records that start before `records.end`, and reads nothing
/// past them: for a second pass over a log that a [`scan`] has already
/// judged (recovery's redo), not a check of its end. The summary's `stop`
/// is then [`ScanStop::PartialSector`] and `damage` `None` unless the
/// sectors before `records.end` no longer hold.
pub fn scan_to<D: BlockDevice, E>(
    dev: &mut D,
    geo: &LogGeometry,
    records: core::ops::Range<Lsn>,
    epoch_start: Lsn,
    buf: &mut DmaBytes,
    env: Env,
    handle: impl FnMut(Lsn, Record<'_>) -> Result<(), E>,
) -> Result<ScanSummary, ScanError<E>> {
    scan_until(
        dev,
        geo,
        records.start,
        epoch_start,
        Some(records.end),
        buf,
        env,
        handle,
    )
}

#[allow(clippy::too_many_arguments)]
fn scan_until<D: BlockDevice, E>(
    dev: &mut D,
    geo: &LogGeometry,
    redo: Lsn,
    epoch_start: Lsn,
    until: Option<Lsn>,
    buf: &mut DmaBytes,
    env: Env,
    mut handle: impl FnMut(Lsn, Record<'_>) -> Result<(), E>,
) -> Result<ScanSummary, ScanError<E>> {
    let chunk_blocks = (buf.io_buf().blocks as u64).min(MAX_IO_BLOCKS as u64);
    let mut reader = SectorReader {
        dev,
        geo: *geo,
        buf,
        env,
        chunk_blocks,
        loaded: None,
    };
    let max_record = geo.blocks.saturating_mul(LOG_BLOCK).min(u32::MAX as u64) as usize;
    let first_sector = redo.0 / SECTOR;
    // The log may occupy the redo point's block and the blocks after it,
    // one lap of the area (appends never go further).
    let window_end = (LogBlock::of(redo).0 + geo.blocks) * SECTORS_PER_BLOCK;
    let mut rules = SectorRules {
        geo: *geo,
        min_epoch: 0,
        epoch_start,
    };
    let mut pending: Vec<u8> = Vec::new();
    let mut pending_start = payload_index(redo);
    let mut records = 0;
    let mut sectors = 0;
    let mut sector = first_sector;
    // Where the readable payload ends.
    let mut valid_end = redo;
    let mut damage: Option<Damage> = None;
    let mut stop_state = None;
    let mut reached_until = false;
    loop {
        if sector >= window_end || reached_until {
            break;
        }
        let raw = reader.sector(sector).map_err(ScanError::Device)?;
        let state = check_sector(raw, sector, &rules);
        let SectorState::Valid {
            used, epoch, back, ..
        } = state
        else {
            if sector == first_sector {
                damage = Some(Damage::Redo { redo, found: state });
            } else if !state.crash_can_leave() {
                damage = Some(Damage::Sector(state));
            }
            stop_state = Some(state);
            break;
        };
        let payload_start = sector * SECTOR + SECTOR_HEADER;
        let skip = if sector == first_sector {
            redo.0 - payload_start
        } else {
            0
        };
        let mut used = used as u64;
        if used < skip {
            damage = Some(Damage::Redo { redo, found: state });
            stop_state = Some(state);
            break;
        }
        // Payload of an older epoch counts only up to the epoch start.
        if epoch < geo.epoch && payload_start + used > epoch_start.0 {
            used = epoch_start.0 - payload_start;
        }
        sectors += 1;
        rules.min_epoch = epoch;
        let h = SECTOR_HEADER as usize;
        pending.extend_from_slice(&raw[h + skip as usize..h + used as usize]);
        // The position of the next payload byte (in the next sector if
        // this one is full), comparable with the epoch start.
        valid_end = lsn_of_payload(payload_index(Lsn(payload_start)) + used);
        let mut consumed = 0;
        while pending.len() - consumed >= 4 {
            let rest = &pending[consumed..];
            let lsn = lsn_of_payload(pending_start);
            if until.is_some_and(|u| lsn >= u) {
                reached_until = true;
                break;
            }
            let decoded = Record::framed_len(rest, max_record).and_then(|len| {
                if rest.len() < len {
                    Ok(None)
                } else {
                    Record::decode(&rest[..len], lsn).map(|r| Some((len, r)))
                }
            });
            match decoded {
                Ok(None) => break,
                Ok(Some((len, r))) => {
                    handle(lsn, r).map_err(ScanError::Handler)?;
                    records += 1;
                    consumed += len;
                    pending_start += len as u64;
                }
                Err(error) => {
                    damage = Some(Damage::Record { lsn, error });
                    break;
                }
            }
        }
        pending.drain(..consumed);
        if reached_until {
            break;
        }
        if damage.is_some() || used < SECTOR_PAYLOAD {
            stop_state = Some(SectorState::Valid {
                used: used as u16,
                epoch,
                back,
            });
            break;
        }
        sector += 1;
    }
    let end = lsn_of_payload(pending_start);
    if until.is_some() && damage.is_none() {
        // What lies past `end` was judged by the scan before.
        return Ok(ScanSummary {
            records,
            sectors,
            stop: ScanStop::PartialSector,
            end,
            damage: None,
        });
    }
    let Some(found) = stop_state else {
        // Every sector of the area was full: nothing past it to check.
        return Ok(ScanSummary {
            records,
            sectors,
            stop: ScanStop::LogEnd,
            end,
            damage: None,
        });
    };
    // Past the stop: intact sectors continuing the log, and whether any
    // (or a blank one) was written by a batch that began after the stop
    // sector was durable.
    let mut beyond: Option<(Lsn, Lsn)> = None;
    let mut later = None;
    // Runs of consecutive valid sectors past the stop: (the payload index
    // of the first byte, the payload), for counting the commits there.
    let mut runs: Vec<(u64, Vec<u8>)> = Vec::new();
    let mut run_next = None;
    for v in sector + 1..window_end {
        let raw = reader.sector(v).map_err(ScanError::Device)?;
        // Only a sector carrying its own number, written by a batch, can
        // say anything: skip the checksum of the others (stale laps, the
        // format's unwritten sectors, zeros), most of the area.
        if raw[16..24] != v.to_le_bytes() || raw[4..6] == USED_UNWRITTEN.to_le_bytes() {
            continue;
        }
        let back = match check_sector(raw, v, &rules) {
            SectorState::Valid { used, back, .. } => {
                let start = Lsn(v * SECTOR);
                let stop = Lsn(v * SECTOR + SECTOR_HEADER + used as u64);
                beyond = Some(beyond.map_or((start, stop), |(a, _)| (a, stop)));
                let payload = &raw[SECTOR_HEADER as usize..][..used as usize];
                if run_next != Some(v) {
                    runs.push((payload_index(Lsn(start.0 + SECTOR_HEADER)), Vec::new()));
                }
                runs.last_mut().unwrap().1.extend_from_slice(payload);
                run_next = (used as u64 == SECTOR_PAYLOAD).then_some(v + 1);
                back
            }
            // A blank sector says exactly where its batch began: past the
            // readable log, that batch began after more log than we read
            // was durable (a sector before it reverted to an older
            // version, which no crash leaves).
            SectorState::Blank { back, began, .. } if began > valid_end => {
                later.get_or_insert(v);
                back
            }
            SectorState::Blank { back, .. } => back,
            _ => continue,
        };
        // A batch that began in the stop sector found it valid (the
        // sector holding the durable end always is), and a crash leaves
        // such a sector old or new, valid either way.
        let began = v - back as u64;
        let stop_valid = matches!(found, SectorState::Valid { .. });
        if later.is_none() && (began > sector || (began == sector && !stop_valid)) {
            later = Some(v);
        }
    }
    if damage.is_none() {
        if let Some(v) = later {
            damage = Some(Damage::Overtaken { found, later: v });
        } else if valid_end < epoch_start {
            damage = Some(Damage::EndsEarly {
                end: valid_end,
                verified: epoch_start,
            });
        }
    }
    let stop = match (&damage, found) {
        (Some(_), _) => ScanStop::Damaged,
        (None, SectorState::Valid { .. }) if beyond.is_none() => ScanStop::PartialSector,
        (None, found) => ScanStop::TornTail { sector, found },
    };
    Ok(ScanSummary {
        records,
        sectors,
        stop,
        end,
        damage: damage.map(|what| {
            let sector = match what {
                Damage::Record { lsn, .. } => lsn.0 / SECTOR,
                _ => sector,
            };
            LogDamage {
                what,
                sector,
                lba: geo.lba_of(LogBlock(sector / SECTORS_PER_BLOCK)),
                beyond,
                commits_beyond: runs
                    .iter()
                    .map(|(first, payload)| count_commits(*first, payload, max_record))
                    .sum(),
                keep_end: end,
            }
        }),
    })
}

/// The commit records in `payload` (consecutive log payload from payload
/// index `first`, which may begin inside a record): from the first place a
/// whole record starts (its frame's length, LSN and checksum hold), the
/// records that follow one another.
fn count_commits(first: u64, payload: &[u8], max_record: usize) -> u64 {
    let frame_at = |i: usize| -> Option<(usize, bool)> {
        let rest = &payload[i..];
        let len = Record::framed_len(rest, max_record).ok()?;
        let lsn = lsn_of_payload(first + i as u64);
        // The LSN field first: it rules out almost every wrong offset
        // without a checksum.
        if rest.len() < len || rest[8..16] != lsn.0.to_le_bytes() {
            return None;
        }
        let r = Record::decode(&rest[..len], lsn).ok()?;
        Some((len, matches!(r, Record::Commit { .. })))
    };
    let Some(mut i) = (0..payload.len().saturating_sub(16)).find(|&i| frame_at(i).is_some()) else {
        return 0;
    };
    let mut commits = 0;
    while i + 16 <= payload.len() {
        let Some((len, commit)) = frame_at(i) else {
            break;
        };
        commits += commit as u64;
        i += len;
    }
    commits
}

/// Reads the log block holding `end`, where the log is to continue.
pub fn read_tail<D: BlockDevice>(
    dev: &mut D,
    geo: &LogGeometry,
    end: Lsn,
    buf: &mut DmaBytes,
    env: Env,
) -> Result<Tail, IoFailure> {
    let io = Io::read(geo.lba_of(LogBlock::of(end)), 1, buf.io_buf().addr);
    run_one(dev, io, env.relax)?;
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
        assert_eq!(LogBlock::of(Lsn(4096 + 24)), LogBlock(1));
    }
}
