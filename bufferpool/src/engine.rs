//! The storage engine: the log, the pages in a buffer pool, transactions of
//! page writes with redo-only logging, checkpoints, and full-page images
//! against torn pages.
//!
//! # The pool
//!
//! The data pages live in a [`BufferManager`] that holds at most its
//! capacity of them, evicting as it needs; page `n` is at device block
//! `2 + log_blocks + n` (the pool's first block). The engine builds the
//! pool through a function the caller gives ([`PoolSetup`]) once the
//! layout is known, handing it the engine's write-ahead hook: the pool
//! writes a dirty page only after the hook made the log durable up to the
//! page LSN, and a failed page write fails the engine through the same
//! hook before any other page is written.
//!
//! # Transactions
//!
//! [`Engine::commit`] takes a set of page writes. It fixes the pages
//! exclusively through the pool (in page order), appends to the log, as one contiguous run, a full-page image
//! of every page that has not been changed since the last checkpoint began,
//! one [`Record::PageWrite`] per write and a [`Record::Commit`], applies the
//! writes to the pages (page LSN = the end of the commit record), unfixes
//! them dirty and waits for the log to be durable up to its commit record
//! (group commit). Changes reach pages only through committed log runs and
//! pages are written only after the log covering them is durable, so
//! recovery never needs undo.
//!
//! # Torn pages: full-page images (PostgreSQL's approach)
//!
//! The first change of a page after a checkpoint's redo point logs the
//! whole page first. Any page write that a crash can tear happened after
//! the last complete checkpoint's redo point (a checkpoint is complete
//! only once its page writes are flushed), so the page was changed after
//! that redo point, so its image is in the log that recovery replays:
//! recovery restores the image and replays the later changes, whatever the
//! torn page holds. The alternative, InnoDB's double-write area, writes
//! every page twice; images cost one extra page in the log per page per
//! checkpoint interval, which is cheaper when checkpoints are rare relative
//! to page changes and keeps the page write path to one write. See
//! `docs/wal.md` for the measured write amplification.
//!
//! # Checkpoints
//!
//! [`Engine::checkpoint`] fences transactions off for an instant to take
//! the redo point (the insert LSN; from now on changed pages log images),
//! makes the log durable to it, writes every page dirty in the pool
//! ([`BufferManager::flush`]: latched pages are waited for, not skipped;
//! write-ahead rule), flushes the device, and writes the control block with
//! the new redo point (FUA). Only then may the log before the redo point be
//! overwritten.
//!
//! The engine checkpoints by itself: a transaction that finds the log
//! filled past [`Config::checkpoint_percent`] of its size since the last
//! redo point takes a checkpoint before it appends (unless another one is
//! running), and a transaction refused for a full log waits for, or takes,
//! a checkpoint and tries again. So `LogFull` reaches the caller only when
//! automatic checkpoints are off or a single transaction does not fit the
//! log; a failing checkpoint returns its error to the transaction that
//! took it (which appended nothing) and fails the engine.
//!
//! # Failure
//!
//! A failed log write, page write or flush fails the engine (the log's
//! failed state): the failing call returns the device error, every later
//! commit and checkpoint returns [`WalError::Failed`]. Nothing is retried;
//! restart and recover.

use crate::btree::Reserved;
use crate::control::{Control, ControlError, Layout, LayoutError};
use crate::device::{BlockDevice, DeviceError, IoFailure, IoKind, BLOCK_SIZE};
use crate::log::{
    unwritten_block, CommitMode, LogBlock, LogDamage, Tail, TruncateRequest, Wal, WalError,
    FIRST_LSN, LOG_BLOCK,
};
use crate::lsntable::{self, PageLsns};
use crate::page::{PageCheck, PAGE_HEADER};
use crate::pool::{
    BufferManager, Durability, DurabilityError, ExclusiveGuard, Pool, PoolConfig, PoolError,
};
use crate::record::Record;
use crate::store::StoreIo;
use crate::sync::{lock, Gate};
use crate::{Env, Lsn, PageId, PAGE_SIZE};
use alloc::sync::Arc;
use alloc::vec;
use alloc::vec::Vec;
use core::fmt;
use core::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use spin::Mutex;

/// How an engine runs.
#[derive(Clone, Copy, Debug)]
pub struct Config {
    pub env: Env,
    /// FUA log writes, or writes and a flush.
    pub mode: CommitMode,
    /// Blocks of log buffered in memory (the largest batch; 4 to
    /// [`crate::log::MAX_BUFFER_BLOCKS`]).
    pub log_buffer_blocks: usize,
    /// Take a checkpoint when the log since the last redo point fills more
    /// than this percentage of the log area (1 to 100); 0 turns automatic
    /// checkpoints off (then a full log refuses transactions with
    /// `WalError::LogFull` until the caller checkpoints).
    pub checkpoint_percent: u8,
}

impl Config {
    /// FUA commits, a 1 MiB log buffer, a checkpoint whenever the log is
    /// half full.
    pub fn new(env: Env) -> Config {
        Config {
            env,
            mode: CommitMode::Fua,
            log_buffer_blocks: 256,
            checkpoint_percent: 50,
        }
    }
}

/// One write of a transaction: `data` at byte `offset` of `page`
/// (`offset >= PAGE_HEADER`, inside the page).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PageWrite<'a> {
    pub page: PageId,
    pub offset: usize,
    pub data: &'a [u8],
}

/// What is wrong with a record in a log whose sectors and frames hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecordProblem {
    /// A page image or write of a page past the last page.
    NoSuchPage(PageId),
    /// A page write outside the page's contents.
    OutsidePage {
        page: PageId,
        offset: usize,
        len: usize,
    },
    /// A commit record counting a different number of page writes than
    /// precede it.
    WriteCount { commit_says: u32, found: u64 },
    /// A checkpoint's page-LSN table inside a transaction's records (a
    /// checkpoint appends it on its own).
    TableInTransaction,
}

impl fmt::Display for RecordProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RecordProblem::NoSuchPage(p) => write!(f, "it names page {}, past the last page", p.0),
            RecordProblem::OutsidePage { page, offset, len } => write!(
                f,
                "it writes {len} bytes at offset {offset} of page {}, outside its contents",
                page.0
            ),
            RecordProblem::WriteCount { commit_says, found } => write!(
                f,
                "the commit counts {commit_says} page writes, {found} precede it"
            ),
            RecordProblem::TableInTransaction => {
                f.write_str("a checkpoint's page-LSN table among a transaction's page writes")
            }
        }
    }
}

/// What a backup control block says of the store formatted on a device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backup {
    /// The format id its log sectors carry.
    pub format_id: u64,
    /// The layout it was formatted with.
    pub layout: Layout,
}

impl From<Control> for Backup {
    fn from(c: Control) -> Backup {
        Backup {
            format_id: c.format_id,
            layout: c.layout,
        }
    }
}

/// An engine operation that failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Error {
    /// The log refused or failed (including the failed state).
    Log(WalError),
    /// An I/O failed (a page through the pool, the log).
    Device(DeviceError),
    /// The engine's own I/O failed (the control block, recovery's reads of
    /// the pages and the log, format), at the blocks it names.
    DeviceAt(IoFailure),
    /// No valid control block, and the device is blank where a store would
    /// be (blocks `0..BLANK_CHECK_BLOCKS` for [`Engine::open`], see
    /// `crate::recovery::BLANK_CHECK_BLOCKS`): never formatted.
    NotFormatted,
    /// A format of the device was interrupted before it made a store:
    /// the control blocks hold its marker (`slots`: what each holds, at
    /// least one [`ControlError::Unfinished`], the other that or zeros).
    /// The device holds nothing that was ever acknowledged;
    /// [`Engine::open_or_format`] formats it again, [`Engine::open`]
    /// refuses it with this.
    FormatUnfinished { slots: [ControlError; 2] },
    /// No valid control block (what each of blocks 0 and 1 holds), and the
    /// device is not blank (block `data_at` holds data): a damaged store or
    /// something else. `backup` is the backup control block found in the
    /// device's last block (`backup_lba`), if it holds one: then this is
    /// a store whose first blocks were destroyed. Opening refuses it and
    /// nothing formats it except an explicit [`Engine::format`].
    NoControlBlock {
        slots: [ControlError; 2],
        data_at: u64,
        backup: Option<Backup>,
        backup_lba: u64,
    },
    /// The layout asked for (or found) is impossible.
    BadLayout(LayoutError),
    /// The log is corrupt; recovery refused and wrote nothing.
    LogCorrupt(LogDamage),
    /// A truncation was requested that does not match what recovery found
    /// (`found`: the damage, or `None` for an intact log); nothing was
    /// written.
    TruncateMismatch {
        requested: TruncateRequest,
        found: Option<LogDamage>,
    },
    /// The buffer pool failed: a page read or write (a failed write has
    /// failed the engine), a page on storage that is not what it should
    /// be, no frame free, or the pool could not be built for the layout.
    Pool(PoolError),
    /// The device has `have` blocks, the layout needs `needed`.
    DeviceTooSmall { needed: u64, have: u64 },
    /// The data area of `pages` pages cannot grow (`max`: the most it may
    /// have), for the reason `why`; the change that needed a page was not
    /// made.
    StoreFull {
        pages: u64,
        max: u64,
        why: crate::growth::Limit,
    },
    /// A write outside a page's contents, or a transaction with no writes.
    BadWrite {
        page: PageId,
        offset: usize,
        len: usize,
    },
    /// A page id past the last page.
    NoSuchPage(PageId),
    /// A transaction changes more distinct pages (`pages`) than commits may
    /// hold fixed at once (`limit`: half the pool's frames, see
    /// [`Engine::commit_page_limit`]); nothing was logged.
    TooManyPages { pages: usize, limit: usize },
    /// A page on storage (at device block `lba`) is damaged and the log
    /// holds no image of it.
    UnrepairablePage {
        page: PageId,
        lba: u64,
        check: PageCheck,
    },
    /// The log holds a well-formed record at `lsn` that makes no sense.
    BadLogRecord { lsn: Lsn, problem: RecordProblem },
    /// Page `page` (device block `lba`) holds LSN `found` on storage, but a
    /// checkpoint's page-LSN table in the log says it held at least
    /// `expected` (see `crate::lsntable`): an older copy of the page (a
    /// lost or reverted page write), and the log holds no image of it.
    /// Recovery refused and wrote nothing.
    StalePage {
        page: PageId,
        lba: u64,
        found: Lsn,
        expected: Lsn,
    },
    /// Page `page` (device block `lba`) holds LSN `page_lsn` on storage,
    /// but the readable log ends (its last commit) at `log_end`, before
    /// it. A page is written only once the log is durable up to its LSN,
    /// so the log lost records that were durable: its final blocks were
    /// reverted or lost. Recovery refused and wrote nothing.
    LogBehindPage {
        page: PageId,
        lba: u64,
        page_lsn: Lsn,
        log_end: Lsn,
    },
    /// Memory for `what` (`bytes` bytes) could not be had.
    OutOfMemory { what: &'static str, bytes: u64 },
    /// Recovery's redo pass read the log differently from its check pass
    /// (the last commit ended at `checked`, now at `replayed`): the device
    /// returned other data for the same blocks. Pages redone so far may
    /// have been written (each with its LSN, from checked log); the control
    /// block and the log were not.
    LogChanged { checked: Lsn, replayed: Lsn },
}

impl Error {
    /// Whether the device holds no store and nothing that was ever
    /// acknowledged: blank ([`Error::NotFormatted`]) or an unfinished
    /// format ([`Error::FormatUnfinished`]). A caller that formats blank
    /// devices formats these.
    pub fn holds_no_store(&self) -> bool {
        matches!(self, Error::NotFormatted | Error::FormatUnfinished { .. })
    }
}

impl From<WalError> for Error {
    fn from(e: WalError) -> Error {
        Error::Log(e)
    }
}

impl From<DeviceError> for Error {
    fn from(e: DeviceError) -> Error {
        Error::Device(e)
    }
}

impl From<IoFailure> for Error {
    fn from(e: IoFailure) -> Error {
        Error::DeviceAt(e)
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Log(e) => write!(f, "{e}"),
            Error::Device(e) => write!(f, "I/O failed: {e}"),
            Error::DeviceAt(e) if e.kind == IoKind::Read => write!(
                f,
                "{e}; nothing more was written. A read error may be passing (run again); \
                 blocks that stay unreadable must be copied off with a tool that skips them, \
                 and the store opened from the copy"
            ),
            Error::DeviceAt(e) => write!(
                f,
                "{e}; the engine stopped there and retried nothing. Once the device accepts \
                 writes again (space, permissions, hardware), the next start recovers every \
                 commit that was acknowledged"
            ),
            Error::NotFormatted => f.write_str(
                "not formatted: no control block, and the device is blank where a store would be",
            ),
            Error::FormatUnfinished { slots } => write!(
                f,
                "a format of this device was interrupted before it finished (block 0 holds \
                 {}, block 1 holds {}): it holds no store and nothing stored in it was ever \
                 acknowledged; formatting it again loses nothing",
                slots[0], slots[1]
            ),
            Error::NoControlBlock {
                slots,
                data_at,
                backup,
                backup_lba,
            } => {
                write!(
                    f,
                    "no valid control block (block 0 holds {}, block 1 holds {}), and the \
                     device is not blank (block {data_at} holds data",
                    slots[0], slots[1]
                )?;
                if let Some(b) = backup {
                    write!(
                        f,
                        "; block {backup_lba}, the device's last, holds the backup control \
                         block of a store formatted here: format id {:#x}, {} log blocks, {} \
                         data pages, so this is that store with its first blocks destroyed",
                        b.format_id, b.layout.log_blocks, b.layout.data_pages
                    )?;
                }
                f.write_str(
                    "): refusing to open it and writing nothing; only an explicit format \
                     would reuse the device, discarding its contents",
                )
            }
            Error::BadLayout(e) => write!(f, "impossible layout: {e}"),
            Error::LogCorrupt(d) => write!(
                f,
                "{d}. Recovery refused and wrote nothing; {}",
                d.truncation()
            ),
            Error::TruncateMismatch { requested, found } => {
                write!(
                    f,
                    "truncation at LSN {} discarding up to LSN {} requested, but ",
                    requested.at.0, requested.discard_to.0
                )?;
                match found {
                    None => f.write_str("the log is intact; nothing was written"),
                    Some(d) => write!(
                        f,
                        "recovery would truncate at LSN {} and discard up to LSN {} \
                         (nothing was written): {d}",
                        d.keep_end.0,
                        d.lost_end().0
                    ),
                }
            }
            Error::Pool(e) => write!(f, "buffer pool: {e}"),
            Error::DeviceTooSmall { needed, have } => {
                write!(
                    f,
                    "device too small: it has {have} blocks of 4 KiB, the store needs {needed}"
                )
            }
            Error::StoreFull { pages, max, why } => write!(
                f,
                "store full: its {pages} data pages of 4 KiB cannot grow ({why}; at most {max} \
                 here); the change was not made and nothing acknowledged is lost"
            ),
            Error::BadWrite { page, offset, len } => write!(
                f,
                "write of {len} bytes at offset {offset} of page {} is outside its contents",
                page.0
            ),
            Error::NoSuchPage(p) => write!(f, "no page {}", p.0),
            Error::TooManyPages { pages, limit } => write!(
                f,
                "a transaction changes {pages} pages, more than the {limit} that commits may \
                 hold fixed at once (half the buffer pool)"
            ),
            Error::UnrepairablePage { page, lba, check } => write!(
                f,
                "page {} (device block {lba}, bytes {}..{}) is damaged on storage ({check}) and \
                 the log holds no image of it to restore it from. Recovery refused and wrote \
                 nothing; the page's contents are lost unless it is put back from a copy of \
                 the store",
                page.0,
                lba * BLOCK_SIZE as u64,
                (lba + 1) * BLOCK_SIZE as u64
            ),
            Error::BadLogRecord { lsn, problem } => {
                write!(f, "corrupt log: the record at LSN {}: {problem}", lsn.0)
            }
            Error::StalePage {
                page,
                lba,
                found,
                expected,
            } => write!(
                f,
                "page {} (device block {lba}) is older on storage than the log says: it holds \
                 LSN {}, but a checkpoint recorded it at LSN {} (a lost or reverted page \
                 write), and the log holds no image of it to restore it from. Recovery \
                 refused and wrote nothing",
                page.0, found.0, expected.0
            ),
            Error::LogBehindPage {
                page,
                lba,
                page_lsn,
                log_end,
            } => write!(
                f,
                "the log ends too early: page {} (device block {lba}) holds LSN {}, but the \
                 readable log's last commit ends at LSN {}; a page is written only once the \
                 log is durable up to its LSN, so durable log records were lost (the log's \
                 last blocks reverted or not written back). Recovery refused and wrote nothing",
                page.0, page_lsn.0, log_end.0
            ),
            Error::OutOfMemory { what, bytes } => {
                write!(f, "out of memory: {bytes} bytes for {what}")
            }
            Error::LogChanged { checked, replayed } => write!(
                f,
                "the log read differently during recovery: its last commit ended at LSN {} \
                 when checked and at LSN {} when replayed; recovery stopped",
                checked.0, replayed.0
            ),
        }
    }
}

/// Checkpoints and growth held off (see [`Engine::hold_checkpoints`]).
pub struct CheckpointHold<'a, D: BlockDevice, B: BufferManager> {
    engine: &'a Engine<D, B>,
    _one: spin::MutexGuard<'a, ()>,
}

impl<D: BlockDevice, B: BufferManager> CheckpointHold<'_, D, B> {
    /// The layout, fixed while the hold lasts.
    pub fn layout(&self) -> Layout {
        Layout {
            log_blocks: self.engine.log_blocks,
            data_pages: self.engine.data_pages.load(Ordering::Acquire),
        }
    }

    /// Makes everything logged so far durable; returns the LSN it is
    /// durable to.
    pub fn sync_log(&self) -> Result<Lsn, Error> {
        let lsn = self.engine.wal.insert_lsn();
        self.engine.wal.wait_durable(lsn)?;
        Ok(lsn)
    }
}

/// What a checkpoint did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CheckpointReport {
    /// The new redo point.
    pub redo: Lsn,
    /// Pages written.
    pub pages_written: u64,
}

/// Counters of an engine.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EngineStats {
    /// Transactions appended.
    pub transactions: u64,
    /// Page writes appended.
    pub page_writes: u64,
    /// Bytes of page writes appended (the user's data).
    pub data_bytes: u64,
    /// Full-page images logged.
    pub page_images: u64,
    /// Checkpoints completed.
    pub checkpoints: u64,
    /// Times the data area grew.
    pub growths: u64,
}

#[derive(Default)]
pub(crate) struct AtomicEngineStats {
    pub(crate) transactions: AtomicU64,
    pub(crate) page_writes: AtomicU64,
    pub(crate) data_bytes: AtomicU64,
    pub(crate) page_images: AtomicU64,
    pub(crate) checkpoints: AtomicU64,
    pub(crate) growths: AtomicU64,
}

/// What the engine gives the function that builds its pool: the pool must
/// serve pages `0..pages` from device block `first_block` on (see
/// [`IoQueues::over`](crate::pool::IoQueues::over)) and gate every page
/// write with `durability`.
#[derive(Clone)]
pub struct PoolSetup {
    /// The engine's write-ahead hook.
    pub durability: Arc<dyn Durability>,
    /// The device block of page 0 (after the control and log blocks).
    pub first_block: u64,
    /// The data pages the store may grow to (its layout's now, or more:
    /// see `crate::growth`).
    pub pages: u64,
}

impl PoolSetup {
    /// The configuration of a process pool (or the guest's hash pool) of
    /// `capacity` frames for this setup: every data page allocated, page 0
    /// at the data area's first block, the engine's hook.
    pub fn config(&self, capacity: usize) -> PoolConfig {
        PoolConfig {
            allocated: self.pages,
            first_block: self.first_block,
            pages: Some(self.pages),
            durability: self.durability.clone(),
            ..PoolConfig::new(capacity)
        }
    }

    /// The configuration of a [`Tabby`](crate::pool::tabby::Tabby) pool of
    /// `capacity` frames for this setup (as [`config`](Self::config)): its
    /// window covers the data pages only.
    pub fn tabby_config(&self, capacity: usize) -> crate::pool::tabby::TabbyConfig {
        let defaults = crate::pool::tabby::TabbyConfig::new(capacity).pool;
        crate::pool::tabby::TabbyConfig::of(PoolConfig {
            evict_batch: defaults.evict_batch,
            relax: defaults.relax,
            ..self.config(capacity)
        })
    }
}

/// The engine's side of the write-ahead rule, shared with its pool.
///
/// Before the log is open (during recovery) pages may be written only up
/// to `recovered`: the end of the log recovery replays, made durable by a
/// device flush before the first page write, and set only once recovery's
/// checks have passed (0 until then: nothing may be written). Once the log
/// is open, `ensure_durable` makes the log durable to the LSN (as a group
/// commit leader if need be), and fails once the log has failed.
pub(crate) struct LogHook<D: BlockDevice> {
    wal: spin::Once<Arc<Wal<D>>>,
    recovered: AtomicU64,
}

impl<D: BlockDevice> LogHook<D> {
    pub(crate) fn new() -> LogHook<D> {
        LogHook {
            wal: spin::Once::new(),
            recovered: AtomicU64::new(0),
        }
    }

    /// Allows page writes up to `lsn` before the log is open.
    pub(crate) fn allow_up_to(&self, lsn: Lsn) {
        self.recovered.store(lsn.0, Ordering::Release);
    }
}

impl<D: BlockDevice + Send + 'static> Durability for LogHook<D> {
    fn ensure_durable(&self, lsn: Lsn) -> Result<(), DurabilityError> {
        match self.wal.get() {
            Some(wal) => wal.flush_to(lsn).map_err(|_| DurabilityError {
                durable: wal.durable_lsn(),
            }),
            None => {
                let durable = Lsn(self.recovered.load(Ordering::Acquire));
                if lsn <= durable {
                    Ok(())
                } else {
                    Err(DurabilityError { durable })
                }
            }
        }
    }

    fn page_write_failed(&self, id: PageId, error: DeviceError) {
        log::error!("engine: writing page {} failed: {error}", id.0);
        match self.wal.get() {
            Some(wal) => wal.fail(error),
            // Recovery: no further page writes; the error reaches it.
            None => self.recovered.store(0, Ordering::Release),
        }
    }
}

/// The log, the pages (in a buffer pool `B`), and the rules between them.
pub struct Engine<D: BlockDevice, B> {
    pub(crate) env: Env,
    pub(crate) wal: Arc<Wal<D>>,
    pool: B,
    /// The control block, format and flush I/O.
    io: Mutex<StoreIo<D>>,
    /// The log's size in blocks (the data area's: `data_pages`).
    pub(crate) log_blocks: u64,
    /// Pages in the data area now (see `crate::growth`).
    pub(crate) data_pages: AtomicU64,
    /// The most it may grow to, and why no more.
    pub(crate) max_pages: u64,
    pub(crate) limit: crate::growth::Limit,
    pub(crate) gate: Gate,
    /// Pages whose LSN is at most this get an image before their next change.
    pub(crate) image_redo: AtomicU64,
    pub(crate) control: Mutex<Control>,
    pub(crate) checkpointing: Mutex<()>,
    /// Checkpoint when this many log blocks are in use (0: never).
    pub(crate) checkpoint_blocks: u64,
    /// Frames held fixed by commits in flight, at most `pin_limit`.
    pins: AtomicUsize,
    /// Half the pool's frames (at least 1). Commits fix all their pages
    /// before they log, and wait (they do not fail) while those of the
    /// commits in flight would exceed this, so the other half stays free
    /// for eviction, readers and checkpoints: without the limit, commits
    /// that each hold some frames and wait for more could latch every frame
    /// and fail with `NoFreeFrame`.
    pin_limit: usize,
    /// Every data page's LSN, logged by each checkpoint (see
    /// `crate::lsntable`); `None` for a store too large for the table.
    pub(crate) page_lsns: Option<PageLsns>,
    pub(crate) stats: AtomicEngineStats,
}

impl<D: BlockDevice + Send + 'static, B: BufferManager> Engine<D, B> {
    /// Formats the namespace for `layout`, whatever it holds (the explicit
    /// format request: its contents are discarded), and opens an empty
    /// engine: the log through `log_dev`, the control block through
    /// `data_dev` (two queues of the same namespace), the pages through the
    /// pool `make_pool` builds (its own queues of the namespace) from the
    /// [`PoolSetup`] it is given. See [`Engine::open_or_format`] for
    /// formatting only a blank device.
    pub fn format(
        log_dev: D,
        data_dev: D,
        layout: Layout,
        config: Config,
        make_pool: impl FnOnce(PoolSetup) -> Result<B, PoolError>,
    ) -> Result<Engine<D, B>, Error> {
        let io = StoreIo::new(data_dev, config.env)?;
        Engine::format_on(log_dev, io, layout, config, make_pool)
    }

    /// Formats through `io` (see [`Engine::format`]). Order: build the pool
    /// (nothing written yet), write the format's marker over both control
    /// blocks (FUA; see `crate::control`), write the log area's unwritten
    /// sectors, write every page (empty, sealed), flush, write the backup
    /// control block in the device's last block (FUA), write the log's
    /// first sector (an empty, valid end of the log), then the control
    /// block (FUA, slot 1), which makes it a store, and clear the marker
    /// left in slot 0 (FUA). A crash before the control block leaves a
    /// device marked as an unfinished format, which
    /// [`Engine::open_or_format`] formats again and [`Engine::open`]
    /// reports as [`Error::FormatUnfinished`]; a crash during the first
    /// marker write leaves what was there (a blank device, or an old store
    /// in its other slot).
    pub(crate) fn format_on(
        log_dev: D,
        mut io: StoreIo<D>,
        layout: Layout,
        config: Config,
        make_pool: impl FnOnce(PoolSetup) -> Result<B, PoolError>,
    ) -> Result<Engine<D, B>, Error> {
        let env = config.env;
        layout.validate().map_err(Error::BadLayout)?;
        check_fits(&io, &layout)?;
        let hook = Arc::new(LogHook::new());
        let max = crate::growth::max_pages_on(&io, &layout);
        let pool = build_pool(&hook, &layout, max.0, make_pool)?;
        let page_lsns = page_lsns(&layout, max.0, |_| 0)?;
        let control = Control {
            seq: 1,
            format_id: (env.now_ns)() ^ 0x005e_ed0f_d805,
            epoch: 1,
            layout,
            redo: FIRST_LSN,
            epoch_start: FIRST_LSN,
        };
        // From here until the new control block is written the device is
        // no store (not the old one either) but an unfinished format.
        io.write_format_marker(0, control.format_id)?;
        io.write_format_marker(1, control.format_id)?;
        // A log area holding only this format's sectors (never zeros) is
        // what lets recovery tell a torn tail from corruption (`crate::log`).
        let geo = control.log_geometry();
        io.write_blocks(layout.log_start(), layout.log_blocks, |i, block| {
            unwritten_block(&geo, LogBlock(i), block)
        })?;
        io.write_blank_pages(&layout)?;
        let tail = Tail {
            end: FIRST_LSN,
            block: vec![0; LOG_BLOCK as usize],
        };
        // The backup first: a crash before the control block leaves a
        // device that is recognisably a (failed) store, never blank.
        io.write_backup_control(&control)?;
        let engine = Engine::assemble(
            log_dev, io, pool, hook, control, tail, page_lsns, max, config,
        )?;
        engine.wal.truncate_tail()?;
        engine.io().write_control(&control)?;
        debug_assert_eq!(control.lba(), 1);
        engine.io().clear_control(0)?;
        log::info!(
            "engine: formatted {} log blocks, {} pages",
            layout.log_blocks,
            layout.data_pages
        );
        Ok(engine)
    }

    /// Puts the pieces together (the log continuing at `tail`, the pages
    /// at `page_lsns`), and opens the log to the pool's page writes through
    /// `hook`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn assemble(
        log_dev: D,
        io: StoreIo<D>,
        pool: B,
        hook: Arc<LogHook<D>>,
        control: Control,
        tail: Tail,
        page_lsns: Option<PageLsns>,
        (max_pages, limit): (u64, crate::growth::Limit),
        config: Config,
    ) -> Result<Engine<D, B>, Error> {
        let geo = control.log_geometry();
        let wal = Arc::new(Wal::new(
            log_dev,
            geo,
            config.mode,
            config.env,
            config.log_buffer_blocks,
            control.redo,
            tail,
        )?);
        if page_lsns.is_some() {
            wal.set_reserve(lsntable::table_blocks(control.layout.data_pages));
        }
        hook.wal.call_once(|| wal.clone());
        Ok(Engine {
            env: config.env,
            wal,
            io: Mutex::new(io),
            log_blocks: control.layout.log_blocks,
            data_pages: AtomicU64::new(control.layout.data_pages),
            max_pages,
            limit,
            gate: Gate::new(),
            image_redo: AtomicU64::new(control.redo.0),
            control: Mutex::new(control),
            checkpointing: Mutex::new(()),
            checkpoint_blocks: match config.checkpoint_percent.min(100) {
                0 => 0,
                p => (control.layout.log_blocks * p as u64 / 100).max(1),
            },
            pins: AtomicUsize::new(0),
            pin_limit: (pool.capacity() / 2).max(1),
            pool,
            page_lsns,
            stats: AtomicEngineStats::default(),
        })
    }

    /// The most distinct pages one transaction may change: half the pool's
    /// frames (at least 1).
    pub fn commit_page_limit(&self) -> usize {
        self.pin_limit
    }

    /// Reserves `n` frames for a commit, waiting while the commits in
    /// flight hold too many; a transaction larger than the limit is
    /// refused.
    fn pin(&self, n: usize) -> Result<Reserved<'_>, Error> {
        self.reserve_frames(n)
            .map_err(|limit| Error::TooManyPages { pages: n, limit })
    }

    /// Reserves `n` frames against [`Engine::commit_page_limit`] for a
    /// commit or tree unit about to fix that many pages, waiting while
    /// those in flight hold the limit; the limit if `n` is over it.
    pub(crate) fn reserve_frames(&self, n: usize) -> Result<Reserved<'_>, usize> {
        if n > self.pin_limit {
            return Err(self.pin_limit);
        }
        let mut cur = self.pins.load(Ordering::Acquire);
        loop {
            if cur + n <= self.pin_limit {
                match self.pins.compare_exchange_weak(
                    cur,
                    cur + n,
                    Ordering::AcqRel,
                    Ordering::Acquire,
                ) {
                    Ok(_) => return Ok(Reserved::new(&self.pins, n)),
                    Err(now) => cur = now,
                }
            } else {
                (self.env.relax)();
                cur = self.pins.load(Ordering::Acquire);
            }
        }
    }

    pub fn wal(&self) -> &Wal<D> {
        &self.wal
    }

    /// The buffer pool holding the pages. Its pages may be read through
    /// it; changing them other than through [`Engine::commit`] bypasses the
    /// log.
    pub fn pool(&self) -> &B {
        &self.pool
    }

    /// The layout (its data pages as they are now: the area grows).
    pub fn layout(&self) -> Layout {
        Layout {
            log_blocks: self.log_blocks,
            data_pages: self.data_pages.load(Ordering::Acquire),
        }
    }

    /// The control-block and raw I/O.
    pub(crate) fn io(&self) -> spin::MutexGuard<'_, StoreIo<D>> {
        lock(&self.io, self.env.relax)
    }

    /// The engine error for a pool error: a log that could not be made
    /// durable is the log's failure, if it has failed.
    pub(crate) fn pool_error(&self, e: PoolError) -> Error {
        match (e, self.wal.failure()) {
            (PoolError::NotDurable { .. }, Some(f)) => Error::Log(WalError::Failed(f)),
            _ => Error::Pool(e),
        }
    }

    /// The last control block written.
    pub fn control(&self) -> Control {
        *lock(&self.control, self.env.relax)
    }

    /// The counters.
    pub fn stats(&self) -> EngineStats {
        let s = &self.stats;
        let l = |c: &AtomicU64| c.load(Ordering::Relaxed);
        EngineStats {
            transactions: l(&s.transactions),
            page_writes: l(&s.page_writes),
            data_bytes: l(&s.data_bytes),
            page_images: l(&s.page_images),
            checkpoints: l(&s.checkpoints),
            growths: l(&s.growths),
        }
    }

    /// Whether the engine has failed (and why).
    pub fn failure(&self) -> Option<DeviceError> {
        self.wal.failure()
    }

    /// Copies bytes at `offset` of page `page` into `out`.
    pub fn read(&self, page: PageId, offset: usize, out: &mut [u8]) -> Result<(), Error> {
        if offset.checked_add(out.len()).is_none_or(|e| e > PAGE_SIZE) {
            return Err(Error::BadWrite {
                page,
                offset,
                len: out.len(),
            });
        }
        if page.0 >= self.data_pages.load(Ordering::Acquire) {
            return Err(Error::NoSuchPage(page));
        }
        let g = self.pool.fix_shared(page).map_err(|e| self.pool_error(e))?;
        out.copy_from_slice(&g.bytes()[offset..offset + out.len()]);
        Ok(())
    }

    /// The page LSN of `page` (in the pool, read in if need be).
    pub fn page_lsn(&self, page: PageId) -> Result<Lsn, Error> {
        if page.0 >= self.data_pages.load(Ordering::Acquire) {
            return Err(Error::NoSuchPage(page));
        }
        let g = self.pool.fix_shared(page).map_err(|e| self.pool_error(e))?;
        Ok(crate::page::page_lsn(g.bytes()))
    }

    /// Commits `writes` as one transaction and returns once it is durable,
    /// with the LSN of the end of its commit record.
    pub fn commit(&self, writes: &[PageWrite<'_>]) -> Result<Lsn, Error> {
        let end = self.append_commit(writes)?;
        self.wal.wait_durable(end)?;
        Ok(end)
    }

    /// The first half of [`Engine::commit`]: logs and applies `writes` and
    /// returns the LSN to pass to [`Engine::wait_durable`]. The transaction
    /// is committed only once that returns `Ok`; until then a crash may
    /// lose it (entirely: never partly).
    pub fn append_commit(&self, writes: &[PageWrite<'_>]) -> Result<Lsn, Error> {
        self.check_writes(writes)?;
        let mut attempts = 0;
        loop {
            self.checkpoint_if_due()?;
            let seen = self.stats.checkpoints.load(Ordering::Acquire);
            match self.try_append_commit(writes) {
                Err(Error::Log(WalError::LogFull { .. }))
                    if self.checkpoint_blocks > 0 && attempts < 3 =>
                {
                    attempts += 1;
                    self.checkpoint_since(seen)?;
                }
                r => return r,
            }
        }
    }

    /// Log blocks from the redo point's to the insert position's.
    pub fn log_blocks_in_use(&self) -> u64 {
        let insert = LogBlock::of(self.wal.insert_lsn()).0;
        insert.saturating_sub(LogBlock::of(self.wal.redo_lsn()).0) + 1
    }

    /// The log's blocks in use since the last checkpoint's redo point, and
    /// its size in blocks: a caller that checkpoints in the background
    /// (before a transaction finds the log past
    /// [`Config::checkpoint_percent`] and checkpoints in its own path)
    /// watches these.
    pub fn log_fill(&self) -> (u64, u64) {
        (self.log_blocks_in_use(), self.wal.geometry().blocks)
    }

    /// Takes a checkpoint if the log is filled past the threshold and no
    /// checkpoint is running.
    pub(crate) fn checkpoint_if_due(&self) -> Result<(), Error> {
        if self.checkpoint_blocks == 0 || self.log_blocks_in_use() < self.checkpoint_blocks {
            return Ok(());
        }
        let Some(guard) = self.checkpointing.try_lock() else {
            return Ok(());
        };
        if self.log_blocks_in_use() < self.checkpoint_blocks {
            return Ok(());
        }
        log::debug!(
            "engine: {} of {} log blocks in use, checkpointing",
            self.log_blocks_in_use(),
            self.wal.geometry().blocks
        );
        self.checkpoint_locked(guard).map(|_| ())
    }

    /// Takes a checkpoint unless one has completed since the checkpoint
    /// count was `seen` (then waits for any running one).
    pub(crate) fn checkpoint_since(&self, seen: u64) -> Result<(), Error> {
        let guard = lock(&self.checkpointing, self.env.relax);
        if self.stats.checkpoints.load(Ordering::Acquire) != seen {
            return Ok(());
        }
        self.checkpoint_locked(guard).map(|_| ())
    }

    fn check_writes(&self, writes: &[PageWrite<'_>]) -> Result<(), Error> {
        for w in writes {
            let end = w.offset.checked_add(w.data.len());
            if w.offset < PAGE_HEADER || end.is_none_or(|e| e > PAGE_SIZE) || w.data.is_empty() {
                return Err(Error::BadWrite {
                    page: w.page,
                    offset: w.offset,
                    len: w.data.len(),
                });
            }
            if w.page.0 >= self.data_pages.load(Ordering::Acquire) {
                return Err(Error::NoSuchPage(w.page));
            }
        }
        if writes.is_empty() {
            return Err(Error::BadWrite {
                page: PageId(0),
                offset: 0,
                len: 0,
            });
        }
        Ok(())
    }

    /// One attempt at logging and applying `writes` (checked).
    fn try_append_commit(&self, writes: &[PageWrite<'_>]) -> Result<Lsn, Error> {
        let _pass = self.gate.read(self.env.relax);
        let mut ids: Vec<PageId> = writes.iter().map(|w| w.page).collect();
        ids.sort_unstable();
        ids.dedup();
        // Frames for every page first (given back after the pages are
        // unfixed: `_pins` drops after `pages`).
        let _pins = self.pin(ids.len())?;
        // In page order, so two transactions never wait for each other's
        // pages in a cycle. On an error the pages fixed so far are unfixed
        // unchanged (the guards drop).
        let mut pages = Vec::with_capacity(ids.len());
        for &id in &ids {
            pages.push(
                self.pool
                    .fix_exclusive(id)
                    .map_err(|e| self.pool_error(e))?,
            );
        }
        let redo = Lsn(self.image_redo.load(Ordering::Acquire));
        let (end, images) = {
            let mut records = Vec::with_capacity(ids.len() + writes.len() + 1);
            for (id, g) in ids.iter().zip(&pages) {
                if g.lsn() <= redo {
                    records.push(Record::PageImage {
                        page: *id,
                        image: g.bytes(),
                    });
                }
            }
            let images = records.len() as u64;
            records.extend(writes.iter().map(|w| Record::PageWrite {
                page: w.page,
                offset: w.offset as u16,
                data: w.data,
            }));
            records.push(Record::Commit {
                writes: writes.len() as u32,
            });
            (self.wal.append(&records)?, images)
        };
        for w in writes {
            let i = ids.binary_search(&w.page).expect("fixed");
            pages[i].bytes_mut()[w.offset..w.offset + w.data.len()].copy_from_slice(w.data);
        }
        for g in pages.iter_mut() {
            self.stamp(g, end);
        }
        drop(pages);
        let bytes: usize = writes.iter().map(|w| w.data.len()).sum();
        self.count_unit(writes.len() as u64, bytes as u64, images);
        Ok(end)
    }

    /// Gives page `g`, changed by the log unit ending at `end`, that LSN
    /// (in the page and the page-LSN table). Marks the page dirty: it is
    /// unfixed dirty, and the pool writes it only once the log is durable
    /// to `end`.
    pub(crate) fn stamp(&self, g: &mut ExclusiveGuard<'_, B>, end: Lsn) {
        g.set_lsn(end);
        if let Some(t) = &self.page_lsns {
            t.set(g.id(), end);
        }
    }

    /// Counts a log unit of `writes` page writes of `bytes` bytes and
    /// `images` page images.
    pub(crate) fn count_unit(&self, writes: u64, bytes: u64, images: u64) {
        let s = &self.stats;
        s.transactions.fetch_add(1, Ordering::Relaxed);
        s.page_writes.fetch_add(writes, Ordering::Relaxed);
        s.data_bytes.fetch_add(bytes, Ordering::Relaxed);
        s.page_images.fetch_add(images, Ordering::Relaxed);
    }

    /// Waits until the log is durable up to `lsn` (from
    /// [`Engine::append_commit`]).
    pub fn wait_durable(&self, lsn: Lsn) -> Result<(), Error> {
        Ok(self.wal.wait_durable(lsn)?)
    }

    /// Holds checkpoints (and growth) off until the hold is dropped, for
    /// an online backup that copies the device while transactions go on.
    ///
    /// While held, the control block does not change and the log from its
    /// redo point on is never overwritten (a transaction that needs log
    /// space the redo point pins waits for the hold to end). So a copy made
    /// in this order is a crash image of the store, which opens and
    /// recovers like one: (1) the data area ([`CheckpointHold::layout`]),
    /// fuzzily, pages being written as it is read; (2)
    /// [`CheckpointHold::sync_log`]; (3) the control blocks and the whole
    /// log area. Every page the copy holds was written after the log
    /// covering it was durable (write-ahead), so before (2) returned, so the
    /// log copied in (3) covers it; a page torn by a write during (1) was
    /// changed after the redo point, so its full-page image is in that log.
    pub fn hold_checkpoints(&self) -> CheckpointHold<'_, D, B> {
        CheckpointHold {
            _one: lock(&self.checkpointing, self.env.relax),
            engine: self,
        }
    }

    /// Takes a checkpoint: writes every dirty page and moves the redo point
    /// to where the log was when it began, freeing the log before it.
    pub fn checkpoint(&self) -> Result<CheckpointReport, Error> {
        self.checkpoint_locked(lock(&self.checkpointing, self.env.relax))
    }

    fn checkpoint_locked(&self, _one: spin::MutexGuard<'_, ()>) -> Result<CheckpointReport, Error> {
        self.checkpoint_held()
    }

    /// A checkpoint, by a caller that holds the checkpoint lock.
    pub(crate) fn checkpoint_held(&self) -> Result<CheckpointReport, Error> {
        if let Some(e) = self.wal.failure() {
            return Err(Error::Log(WalError::Failed(e)));
        }
        let redo = {
            let _fence = self.gate.write(self.env.relax);
            let redo = self.wal.insert_lsn();
            self.image_redo.store(redo.0, Ordering::Release);
            redo
        };
        self.wal.wait_durable(redo)?;
        // The invariant a checkpoint keeps: the control block names `redo`
        // only once every change before `redo` is on storage. Every such
        // change was applied, and its page unfixed dirty, before the gate
        // above let us take `redo`; `flush` writes every page dirty when it
        // begins, waiting for latched pages rather than skipping them, and
        // a page evicted in the meantime was written before it left the
        // pool; the device flush below makes those writes durable. Changes
        // after `redo` have larger LSNs and are replayed from the log this
        // checkpoint keeps.
        let pages_written = self.pool.flush().map_err(|e| self.pool_error(e))? as u64;
        if let Err(e) = self.io().flush() {
            self.wal.fail(e.error);
            return Err(Error::DeviceAt(e));
        }
        // Every page's LSN as it is on storage now, before the control
        // block that makes this checkpoint recovery's starting point.
        self.log_page_lsns(redo)?;
        let mut control = lock(&self.control, self.env.relax);
        let next = Control {
            seq: control.seq + 1,
            redo,
            ..*control
        };
        if let Err(e) = self.io().write_control(&next) {
            self.wal.fail(e.error);
            return Err(Error::DeviceAt(e));
        }
        *control = next;
        drop(control);
        self.wal.set_redo_lsn(redo);
        self.stats.checkpoints.fetch_add(1, Ordering::Release);
        log::debug!(
            "engine: checkpoint at {}, {pages_written} pages written",
            redo.0
        );
        Ok(CheckpointReport {
            redo,
            pages_written,
        })
    }
}

impl<D: BlockDevice + Send + 'static, B: BufferManager> Engine<D, B> {
    /// Logs the page-LSN table of the checkpoint whose redo point is `redo`
    /// (its pages written and flushed) into the log's reserve, and makes
    /// it durable.
    fn log_page_lsns(&self, redo: Lsn) -> Result<(), Error> {
        let Some(t) = &self.page_lsns else {
            return Ok(());
        };
        let chunks = t.chunks(redo, self.data_pages.load(Ordering::Acquire));
        let records = lsntable::records(redo, &chunks);
        let max = self.wal.max_append();
        let mut end = None;
        let mut from = 0;
        while from < records.len() {
            let mut to = from;
            let mut bytes = 0;
            while to < records.len() && bytes + records[to].encoded_len() <= max {
                bytes += records[to].encoded_len();
                to += 1;
            }
            end = Some(self.wal.append_reserved(&records[from..to.max(from + 1)])?);
            from = to.max(from + 1);
        }
        if let Some(end) = end {
            self.wal.flush_to(end)?;
        }
        Ok(())
    }
}

/// The engine's page-LSN table for `layout` (pages at `lsns`), if the store
/// keeps one (`crate::lsntable::enabled`).
/// The table has room for `max` pages, the most the store may grow to
/// (`lsn_of` is asked only for the pages of `layout`).
pub(crate) fn page_lsns(
    layout: &Layout,
    max: u64,
    lsn_of: impl Fn(usize) -> u64,
) -> Result<Option<PageLsns>, Error> {
    if !lsntable::enabled(layout) {
        log::warn!(
            "engine: {} data pages over {} log blocks: no page-LSN table (it needs a log of at \
             least {} blocks), so a lost page write is not detected",
            layout.data_pages,
            layout.log_blocks,
            lsntable::table_blocks(layout.data_pages) * 4
        );
        return Ok(None);
    }
    let bytes = max * 8;
    // `enabled` bounds the pages by the log's size, which is below 2^32
    // blocks, and so does growth (`crate::growth::max_pages`): they fit a
    // usize.
    let pages = layout.data_pages as usize;
    PageLsns::new(max as usize, |i| if i < pages { lsn_of(i) } else { 0 })
        .map(Some)
        .ok_or(Error::OutOfMemory {
            what: "the page-LSN table",
            bytes,
        })
}

/// Builds the engine's pool for `layout`, to serve the `max` pages the
/// store may grow to, and checks it serves them.
pub(crate) fn build_pool<D: BlockDevice + Send + 'static, B: BufferManager>(
    hook: &Arc<LogHook<D>>,
    layout: &Layout,
    max: u64,
    make_pool: impl FnOnce(PoolSetup) -> Result<B, PoolError>,
) -> Result<B, Error> {
    let pool = make_pool(PoolSetup {
        durability: hook.clone(),
        first_block: layout.page_lba(PageId(0)),
        pages: max,
    })
    .map_err(Error::Pool)?;
    if pool.page_count() < max {
        return Err(Error::Pool(PoolError::OutOfRange {
            id: PageId(max - 1),
            pages: pool.page_count(),
        }));
    }
    Ok(pool)
}

/// Refuses a data device smaller than `layout` needs.
pub(crate) fn check_fits<D: BlockDevice>(io: &StoreIo<D>, layout: &Layout) -> Result<(), Error> {
    let have = io.block_count();
    let needed = layout.blocks();
    if have < needed {
        return Err(Error::DeviceTooSmall { needed, have });
    }
    Ok(())
}
