//! The storage engine: the log, the page store, transactions of page writes
//! with redo-only logging, checkpoints, and full-page images against torn
//! pages.
//!
//! # Transactions
//!
//! [`Engine::commit`] takes a set of page writes. It latches the pages (in
//! page order), appends to the log, as one contiguous run, a full-page image
//! of every page that has not been changed since the last checkpoint began,
//! one [`Record::PageWrite`] per write and a [`Record::Commit`], applies the
//! writes to the pages (page LSN = the end of the commit record), releases
//! the latches and waits for the log to be durable up to its commit record
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
//! makes the log durable to it, writes every dirty page (write-ahead rule),
//! flushes, and writes the control block with the new redo point (FUA).
//! Only then may the log before the redo point be overwritten.
//!
//! # Failure
//!
//! A failed log write, page write or flush fails the engine (the log's
//! failed state): the failing call returns the device error, every later
//! commit and checkpoint returns [`WalError::Failed`]. Nothing is retried;
//! restart and recover.

use crate::control::{Control, Layout};
use crate::device::{BlockDevice, DeviceError};
use crate::log::{CommitMode, LogGeometry, Tail, Wal, WalError, FIRST_LSN, LOG_BLOCK};
use crate::page::{page_lsn, set_page_lsn, PageCheck, PAGE_HEADER};
use crate::record::Record;
use crate::store::{PageStore, StoreIo, WriteError};
use crate::sync::{lock, Gate};
use crate::{Env, Lsn, PageId, PAGE_SIZE};
use alloc::vec;
use alloc::vec::Vec;
use core::fmt;
use core::sync::atomic::{AtomicU64, Ordering};
use spin::Mutex;

/// How an engine runs.
#[derive(Clone, Copy, Debug)]
pub struct Config {
    pub env: Env,
    /// FUA log writes, or writes and a flush.
    pub mode: CommitMode,
    /// Blocks of log buffered in memory (the largest batch).
    pub log_buffer_blocks: usize,
}

impl Config {
    /// FUA commits and a 1 MiB log buffer.
    pub fn new(env: Env) -> Config {
        Config {
            env,
            mode: CommitMode::Fua,
            log_buffer_blocks: 256,
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

/// An engine operation that failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Error {
    /// The log refused or failed (including the failed state).
    Log(WalError),
    /// A page or control-block I/O failed.
    Device(DeviceError),
    /// No valid control block: the device was never formatted.
    NotFormatted,
    /// The device has `have` blocks, the layout needs `needed`.
    DeviceTooSmall { needed: u64, have: u64 },
    /// A write outside a page's contents, or a transaction with no writes.
    BadWrite {
        page: PageId,
        offset: usize,
        len: usize,
    },
    /// A page id past the last page.
    NoSuchPage(PageId),
    /// A page on storage is damaged and the log holds no image of it.
    UnrepairablePage(PageId, PageCheck),
    /// The log the last checkpoint needs is gone.
    RedoLost(Lsn),
    /// The log holds a commit whose writes do not precede it.
    CorruptLog(Lsn),
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

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Log(e) => write!(f, "{e}"),
            Error::Device(e) => write!(f, "page I/O failed: {e}"),
            Error::NotFormatted => f.write_str("no valid control block: not formatted"),
            Error::DeviceTooSmall { needed, have } => {
                write!(f, "the device has {have} blocks, {needed} needed")
            }
            Error::BadWrite { page, offset, len } => write!(
                f,
                "write of {len} bytes at offset {offset} of page {} is outside its contents",
                page.0
            ),
            Error::NoSuchPage(p) => write!(f, "no page {}", p.0),
            Error::UnrepairablePage(p, c) => {
                write!(
                    f,
                    "page {} is damaged ({c:?}) and the log has no image of it",
                    p.0
                )
            }
            Error::RedoLost(l) => write!(f, "the log from the redo point {} on is gone", l.0),
            Error::CorruptLog(l) => write!(f, "corrupt log at {}", l.0),
        }
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
}

#[derive(Default)]
struct AtomicEngineStats {
    transactions: AtomicU64,
    page_writes: AtomicU64,
    data_bytes: AtomicU64,
    page_images: AtomicU64,
    checkpoints: AtomicU64,
}

/// The log, the pages, and the rules between them.
pub struct Engine<D: BlockDevice> {
    pub(crate) env: Env,
    pub(crate) wal: Wal<D>,
    pub(crate) store: PageStore<D>,
    gate: Gate,
    /// Pages whose LSN is at most this get an image before their next change.
    image_redo: AtomicU64,
    control: Mutex<Control>,
    checkpointing: Mutex<()>,
    stats: AtomicEngineStats,
}

impl<D: BlockDevice> Engine<D> {
    /// Formats the namespace for `layout` and opens an empty engine: the
    /// log through `log_dev`, the pages and the control block through
    /// `data_dev` (two queues of the same namespace).
    pub fn format(
        log_dev: D,
        data_dev: D,
        layout: Layout,
        config: Config,
    ) -> Result<Engine<D>, Error> {
        let env = config.env;
        let io = StoreIo::new(data_dev, env)?;
        check_fits(&io, &layout)?;
        let store = PageStore::new(io, layout, env);
        store.write_all_unlogged()?;
        let control = Control {
            seq: 1,
            format_id: (env.now_ns)() ^ 0x005e_ed0f_d805,
            epoch: 1,
            layout,
            redo: FIRST_LSN,
        };
        {
            let mut io = store.io();
            io.clear_control(0)?;
            io.write_control(&control)?;
        }
        let tail = Tail {
            end: FIRST_LSN,
            block: vec![0; LOG_BLOCK as usize],
        };
        log::info!(
            "engine: formatted {} log blocks, {} pages",
            layout.log_blocks,
            layout.data_pages
        );
        Engine::assemble(log_dev, store, control, tail, config)
    }

    /// Puts the pieces together (the log continuing at `tail`).
    pub(crate) fn assemble(
        log_dev: D,
        store: PageStore<D>,
        control: Control,
        tail: Tail,
        config: Config,
    ) -> Result<Engine<D>, Error> {
        let geo = LogGeometry {
            start_lba: control.layout.log_start(),
            blocks: control.layout.log_blocks,
            format_id: control.format_id,
            epoch: control.epoch,
        };
        let wal = Wal::new(
            log_dev,
            geo,
            config.mode,
            config.env,
            config.log_buffer_blocks,
            control.redo,
            tail,
        )?;
        Ok(Engine {
            env: config.env,
            wal,
            store,
            gate: Gate::new(),
            image_redo: AtomicU64::new(control.redo.0),
            control: Mutex::new(control),
            checkpointing: Mutex::new(()),
            stats: AtomicEngineStats::default(),
        })
    }

    /// The log.
    pub fn wal(&self) -> &Wal<D> {
        &self.wal
    }

    /// The page store.
    pub fn store(&self) -> &PageStore<D> {
        &self.store
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
        let f = self.store.latch(page).ok_or(Error::NoSuchPage(page))?;
        out.copy_from_slice(&f.page.0[offset..offset + out.len()]);
        Ok(())
    }

    /// The page LSN of `page` in memory.
    pub fn page_lsn(&self, page: PageId) -> Result<Lsn, Error> {
        let f = self.store.latch(page).ok_or(Error::NoSuchPage(page))?;
        Ok(page_lsn(&f.page.0))
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
        for w in writes {
            let end = w.offset.checked_add(w.data.len());
            if w.offset < PAGE_HEADER || end.is_none_or(|e| e > PAGE_SIZE) || w.data.is_empty() {
                return Err(Error::BadWrite {
                    page: w.page,
                    offset: w.offset,
                    len: w.data.len(),
                });
            }
            if w.page.0 >= self.store.pages() {
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
        let _pass = self.gate.read(self.env.relax);
        let mut ids: Vec<PageId> = writes.iter().map(|w| w.page).collect();
        ids.sort_unstable();
        ids.dedup();
        let mut frames: Vec<_> = ids
            .iter()
            .map(|&id| self.store.latch(id).expect("checked page id"))
            .collect();
        let redo = Lsn(self.image_redo.load(Ordering::Acquire));
        let end = {
            let mut records = Vec::with_capacity(ids.len() + writes.len() + 1);
            for (id, f) in ids.iter().zip(&frames) {
                if page_lsn(&f.page.0) <= redo {
                    records.push(Record::PageImage {
                        page: *id,
                        image: &f.page.0,
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
            let end = self.wal.append(&records)?;
            self.stats.page_images.fetch_add(images, Ordering::Relaxed);
            end
        };
        for w in writes {
            let i = ids.binary_search(&w.page).expect("latched");
            frames[i].page.0[w.offset..w.offset + w.data.len()].copy_from_slice(w.data);
        }
        for f in &mut frames {
            set_page_lsn(&mut f.page.0, end);
            f.dirty = true;
        }
        let s = &self.stats;
        s.transactions.fetch_add(1, Ordering::Relaxed);
        s.page_writes
            .fetch_add(writes.len() as u64, Ordering::Relaxed);
        let bytes: usize = writes.iter().map(|w| w.data.len()).sum();
        s.data_bytes.fetch_add(bytes as u64, Ordering::Relaxed);
        Ok(end)
    }

    /// Waits until the log is durable up to `lsn` (from
    /// [`Engine::append_commit`]).
    pub fn wait_durable(&self, lsn: Lsn) -> Result<(), Error> {
        Ok(self.wal.wait_durable(lsn)?)
    }

    /// Takes a checkpoint: writes every dirty page and moves the redo point
    /// to where the log was when it began, freeing the log before it.
    pub fn checkpoint(&self) -> Result<CheckpointReport, Error> {
        let _one = lock(&self.checkpointing, self.env.relax);
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
        let pages_written = match self.store.write_dirty(|lsn| self.wal.flush_to(lsn)) {
            Ok(n) => n,
            Err(WriteError::Log(e)) => return Err(Error::Log(e)),
            Err(WriteError::Device(e)) => {
                self.wal.fail(e);
                return Err(Error::Device(e));
            }
        };
        let mut control = lock(&self.control, self.env.relax);
        let next = Control {
            seq: control.seq + 1,
            redo,
            ..*control
        };
        if let Err(e) = self.store.io().write_control(&next) {
            self.wal.fail(e);
            return Err(Error::Device(e));
        }
        *control = next;
        drop(control);
        self.wal.set_redo_lsn(redo);
        self.stats.checkpoints.fetch_add(1, Ordering::Relaxed);
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

/// Refuses a data device smaller than `layout` needs.
pub(crate) fn check_fits<D: BlockDevice>(io: &StoreIo<D>, layout: &Layout) -> Result<(), Error> {
    let have = io.block_count();
    if have < layout.blocks() {
        return Err(Error::DeviceTooSmall {
            needed: layout.blocks(),
            have,
        });
    }
    Ok(())
}
