//! The writer: [`Wal`] appends records into an in-memory ring under a short
//! spin lock and makes them durable in groups, one write batch at a time
//! (the in-flight invariant of the `log` module docs), sealing sectors with
//! the format of [`super::format`]; a failed write or flush fails the log.

use super::format::*;
use crate::device::{run_all, BlockDevice, DeviceError, DmaBytes, Io, IoKind, MAX_IO_BLOCKS};
use crate::record::Record;
use crate::sync::lock;
use crate::{Env, Lsn};
use alloc::boxed::Box;
use alloc::vec;
use alloc::vec::Vec;
use core::cell::UnsafeCell;
use core::fmt;
use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use spin::Mutex;

/// How commits are made durable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CommitMode {
    /// Every log write is a FUA write.
    Fua,
    /// Plain log writes, then one flush per batch.
    WriteFlush,
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
    /// Times a follower slept until a batch ended (instead of spinning on;
    /// only where the platform can sleep, see [`Env::sleep`]).
    pub follower_sleeps: u64,
    /// Followers' spin steps (`Env::relax`) that gave the CPU to other
    /// work for too long (200 us plus 50 us per thread waiting for the
    /// log); after one, followers sleep without spinning for 10 ms.
    pub slow_relaxes: u64,
}

#[derive(Default)]
struct AtomicLogStats {
    appends: AtomicU64,
    records: AtomicU64,
    record_bytes: AtomicU64,
    batches: AtomicU64,
    blocks_written: AtomicU64,
    flushes: AtomicU64,
    follower_sleeps: AtomicU64,
    slow_relaxes: AtomicU64,
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

/// Where a log continues after recovery (see [`scan`](super::scan)).
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
    /// Bumped each time the writer is let go of (a batch written or not):
    /// what a sleeping follower waits on (see `wait_durable`).
    batches: AtomicU32,
    /// Followers asleep or about to sleep on `batches`.
    sleepers: AtomicU32,
    /// How long recent batches took, in ns (a moving average; measured
    /// only where waits can sleep): how long a follower spins first.
    batch_ns: AtomicU64,
    /// Until this time (`Env::now_ns`), followers sleep without spinning:
    /// a follower's `relax` (a yield) gave the CPU away for longer than
    /// [`SLOW_RELAX_NS`], so other work wants the CPUs.
    contended_until: AtomicU64,
    /// Threads in `wait_durable`: a follower's yield may wait for each of
    /// them before it returns, so they lengthen what counts as slow.
    waiters: AtomicU32,
}

/// A follower spins at most this long before sleeping, however slow the
/// batches are: on a machine whose CPUs are busy, spinning takes the CPU
/// the leader needs to finish its batch.
const SPIN_MAX_NS: u64 = 100_000;

/// A follower's `relax` that takes longer than this (plus
/// [`SLOW_RELAX_PER_WAITER_NS`] per waiting thread) gave its CPU to other
/// work: followers then sleep at once for [`CONTENDED_NS`]. Measured on 2
/// cores with 2 busy threads beside the committers: a yield returns after
/// the busy thread's time slice (milliseconds), and yielding followers cut
/// 16 committers from 51k commits/s to 3.1k (fewer than 1 committer's
/// 7.4k); sleeping at once kept 44k. Quiet, a yield returns within
/// microseconds and spinning wins (64 committers: 177k against 124k
/// commits/s sleeping at once).
const SLOW_RELAX_NS: u64 = 200_000;

/// What each thread waiting for the log adds to [`SLOW_RELAX_NS`]: quiet,
/// 64 yielding followers make a yield take hundreds of microseconds
/// without any other work on the CPUs.
const SLOW_RELAX_PER_WAITER_NS: u64 = 50_000;

/// How long followers sleep without spinning after a slow `relax`.
const CONTENDED_NS: u64 = 10_000_000;

impl<D: BlockDevice> Wal<D> {
    /// A log on `geo` written through `dev`, continuing at `tail` (from
    /// [`scan`](super::scan), or an empty tail at [`FIRST_LSN`] for a new log), keeping
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
            batches: AtomicU32::new(0),
            sleepers: AtomicU32::new(0),
            batch_ns: AtomicU64::new(SPIN_MAX_NS / 2),
            contended_until: AtomicU64::new(0),
            waiters: AtomicU32::new(0),
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
            follower_sleeps: l(&s.follower_sleeps),
            slow_relaxes: l(&s.slow_relaxes),
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
    ///
    /// The first waiter to find the writer free becomes the leader and
    /// writes everything appended so far; the others follow: they spin
    /// (`Env::relax`) for about as long as a batch takes (at most
    /// 100 us), then, where the platform can sleep, sleep until
    /// the writer is let go of. Spinning alone is fastest while every
    /// waiter has a CPU; when other work takes the CPUs, spinning
    /// followers take the CPU the leader needs, so they sleep.
    pub fn wait_durable(&self, lsn: Lsn) -> Result<(), WalError> {
        if self.durable.load(Ordering::Acquire) >= lsn.0 {
            return Ok(());
        }
        self.waiters.fetch_add(1, Ordering::Relaxed);
        let result = self.wait_durable_counted(lsn);
        self.waiters.fetch_sub(1, Ordering::Relaxed);
        result
    }

    /// [`Self::wait_durable`], counted in `waiters`.
    fn wait_durable_counted(&self, lsn: Lsn) -> Result<(), WalError> {
        let mut spinning_since = None;
        loop {
            if self.durable.load(Ordering::Acquire) >= lsn.0 {
                return Ok(());
            }
            self.check_failed()?;
            if let Some(mut w) = self.writer.try_lock() {
                let result = self.lead(&mut w);
                drop(w);
                self.writer_released();
                result?;
                continue;
            }
            match self.env.sleep {
                Some(sleep) if self.spun_out(&mut spinning_since) => {
                    self.sleep_while_writing(sleep.wait, lsn)
                }
                Some(_) => self.relax_timed(),
                None => (self.env.relax)(),
            }
        }
    }

    /// Writes a batch as the leader, timing it where waits can sleep.
    fn lead(&self, w: &mut Writer<D>) -> Result<(), WalError> {
        let t0 = self.env.sleep.map(|_| (self.env.now_ns)());
        let result = self.write_batch(w, false);
        if let Some(t0) = t0 {
            let took = (self.env.now_ns)().saturating_sub(t0);
            let avg = self.batch_ns.load(Ordering::Relaxed);
            self.batch_ns
                .store(avg - avg / 8 + took / 8, Ordering::Relaxed);
        }
        result
    }

    /// A follower's spin step: `relax`, timed; a slow one marks the CPUs
    /// as contended.
    fn relax_timed(&self) {
        let t0 = (self.env.now_ns)();
        (self.env.relax)();
        let t1 = (self.env.now_ns)();
        let waiters = u64::from(self.waiters.load(Ordering::Relaxed));
        if t1.saturating_sub(t0) > SLOW_RELAX_NS + waiters * SLOW_RELAX_PER_WAITER_NS {
            self.stats.slow_relaxes.fetch_add(1, Ordering::Relaxed);
            self.contended_until
                .store(t1 + CONTENDED_NS, Ordering::Relaxed);
        }
    }

    /// Whether a follower that began spinning at `since` (set on the first
    /// call) has spun as long as a batch takes, or should not spin at all
    /// (the CPUs are contended).
    fn spun_out(&self, since: &mut Option<u64>) -> bool {
        let now = (self.env.now_ns)();
        if now < self.contended_until.load(Ordering::Relaxed) {
            return true;
        }
        let start = *since.get_or_insert(now);
        let budget = self.batch_ns.load(Ordering::Relaxed).min(SPIN_MAX_NS);
        now.saturating_sub(start) >= budget
    }

    /// Sleeps until the writer's holder lets go of it (or `lsn` is durable,
    /// or the log failed).
    ///
    /// No lost wake-up: the holder bumps `batches` after letting go of the
    /// writer and then wakes sleepers if it sees any (both SeqCst). A
    /// follower reads `batches`, announces itself in `sleepers`, and sleeps
    /// only if the writer is still held then, and only while `batches` is
    /// unchanged (the futex checks that atomically). If the holder's
    /// release came before the follower's check, the follower sees it free
    /// and does not sleep; if after, its bump changes `batches` (the futex
    /// returns at once) or it sees the announcement and wakes the follower.
    fn sleep_while_writing(&self, wait: fn(&AtomicU32, u32), lsn: Lsn) {
        let seen = self.batches.load(Ordering::SeqCst);
        self.sleepers.fetch_add(1, Ordering::SeqCst);
        if self.writer.is_locked()
            && self.durable.load(Ordering::SeqCst) < lsn.0
            && !self.failed.load(Ordering::SeqCst)
        {
            self.stats.follower_sleeps.fetch_add(1, Ordering::Relaxed);
            wait(&self.batches, seen);
        }
        self.sleepers.fetch_sub(1, Ordering::SeqCst);
    }

    /// Called after every release of the writer: wakes sleeping followers.
    fn writer_released(&self) {
        self.batches.fetch_add(1, Ordering::SeqCst);
        if let Some(sleep) = self.env.sleep {
            if self.sleepers.load(Ordering::SeqCst) > 0 {
                (sleep.wake_all)(&self.batches);
            }
        }
    }

    /// Rewrites the block holding the insert position with FUA, cut off
    /// there: the durable records before it as they are, nothing after it.
    /// Recovery does this before the log continues, so that records left
    /// after the end it chose (a transaction without its commit) can never
    /// be read as part of the continued log.
    pub fn truncate_tail(&self) -> Result<(), WalError> {
        let mut w = lock(&self.writer, self.env.relax);
        let result = self.write_batch_as(&mut w, true, IoKind::WriteFua);
        drop(w);
        self.writer_released();
        result
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
