//! Crash recovery: open an engine from what is durable.
//!
//! 1. Read the control block (the newer valid copy): the layout, the
//!    epoch, the epoch start and the redo point of the last complete
//!    checkpoint. With neither copy valid, a device that is blank where a
//!    store would be is [`Error::NotFormatted`], one holding the marker of
//!    a format that did not finish is [`Error::FormatUnfinished`]; anything
//!    else is refused ([`Error::NoControlBlock`], saying what blocks 0 and
//!    1 hold): only an explicit [`Engine::format`] reuses it.
//!    [`Engine::open_or_format`] formats only a blank device or an
//!    unfinished format.
//! 2. Read every data page and check it (checksum, page id): a torn page,
//!    another page's image or an all-zero page (format writes every page
//!    before the control block, so no store has one) is damaged. Only the
//!    list of bad pages is kept; the pages themselves are not (the pool
//!    reads them as needed).
//! 3. Check the log: scan it from the redo point ([`crate::log::scan`]) to
//!    its end without applying anything. A torn tail (the write batch in
//!    flight at a crash) ends the log; a corrupt log
//!    ([`crate::log::LogDamage`]: damage no crash leaves, or intact log
//!    past the end that a crash cannot explain) is refused with
//!    [`Error::LogCorrupt`], unless the operator asked for exactly that
//!    truncation ([`TruncateRequest`], [`Engine::open_truncating`]); a
//!    record that makes no sense is [`Error::BadLogRecord`]; a damaged page
//!    that the log does not restore from an image before its first change
//!    (or at all) is [`Error::UnrepairablePage`]. Nothing has been written
//!    when any of these is refused: the pool was built, but nothing may be
//!    written through it until the checks pass (its write-ahead hook allows
//!    no LSN yet).
//! 4. Redo through the pool: flush the device (so the log just read is
//!    durable before any page write: a crashed process can leave log
//!    writes in the device's volatile cache), allow page writes up to the
//!    end of the log replayed, then scan the log again (up to the last
//!    commit): a page image is installed without reading the page
//!    ([`Pool::fix_overwrite`]; repairing it if it was damaged); the page
//!    writes of a transaction are applied when its commit record is
//!    reached, to pages (fixed exclusively, read in if need be) whose LSN
//!    is below the commit's end; writes of a transaction whose commit is
//!    missing are discarded. The pool evicts (and writes) as it needs, so
//!    the pages redone may be many more than its frames. A crash during
//!    this leaves the control block and the log as they were, and every
//!    page written carries its page LSN, so the next recovery redoes the
//!    same.
//! 5. Raise the epoch in the control block (FUA), with the end of the last
//!    commit record as the new epoch start; rewrite the log block holding
//!    that end cut off there (FUA: records of a transaction without a
//!    commit are erased, so they can never be read as part of the
//!    continued log), continue the log there, and take a checkpoint, which
//!    writes the recovered pages and bounds the next recovery.

use crate::control::Layout;
use crate::control::CONTROL_BLOCKS;
use crate::control::{Control, ControlError};
use crate::device::{BlockDevice, DmaBytes};
use crate::engine::{
    build_pool, check_fits, page_lsns, Config, Engine, Error, LogHook, PoolSetup, RecordProblem,
};
use crate::log::{
    lsn_advance, read_tail, scan, scan_to, LogDamage, LogGeometry, ScanError, ScanStop,
    ScanSummary, TruncateRequest,
};
use crate::lsntable::{self, Expected};
use crate::page::{page_lsn, set_page_id, PageCheck, PAGE_HEADER};
use crate::pool::{BufferManager, Pool, PoolError};
use crate::record::Record;
use crate::store::StoreIo;
use crate::{Env, Lsn, PageId, PAGE_SIZE};
use alloc::collections::BTreeMap;
use alloc::sync::Arc;
use alloc::vec::Vec;

/// Blocks read at a time while scanning the log.
const SCAN_BLOCKS: usize = 64;

/// Blocks [`Engine::open`] checks for data when neither control block is
/// valid (1 MiB from block 0), besides the device's last block, to tell a
/// blank device from something else. Every store this crate formats has
/// its backup control block in the device's last block and data all
/// through its log area (format writes every log sector), so a store
/// whose first blocks, or whose last block, were destroyed is never taken
/// for a blank device; other data (a file system, a partition table)
/// starts in the first blocks too. The bound keeps a first start cheap on
/// a large device (8 reads of the store's 32-block buffer).
/// [`Engine::open_or_format`] checks every block that format would write
/// instead.
pub const BLANK_CHECK_BLOCKS: u64 = 256;

/// What recovery did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecoveryReport {
    /// Where the scan started (the last checkpoint's redo point).
    pub redo: Lsn,
    /// Where the log continues: after the last commit record.
    pub end: Lsn,
    /// Where the valid records end (past `end` if the last transaction
    /// has no commit record).
    pub log_end: Lsn,
    /// Why the scan stopped.
    pub stop: ScanStop,
    /// The damage the operator asked to truncate at, if any: the log from
    /// its `keep_end` to its `lost_end` was discarded.
    pub truncated: Option<LogDamage>,
    /// Valid log records read.
    pub records: u64,
    /// Committed transactions replayed.
    pub transactions: u64,
    /// Page writes applied.
    pub writes_applied: u64,
    /// Page writes skipped because the page already held them.
    pub writes_skipped: u64,
    /// Page images restored.
    pub page_images: u64,
    /// Pages that were damaged on storage (torn) and restored from an image.
    pub pages_repaired: Vec<PageId>,
    /// Page writes at the end of the log without a commit (discarded).
    pub writes_discarded: u64,
    /// Pages the end-of-recovery checkpoint wrote.
    pub pages_written: u64,
    /// The epoch the engine now runs in.
    pub epoch: u32,
    /// Time taken, by the platform clock.
    pub elapsed_ns: u64,
}

impl<D: BlockDevice + Send + 'static, B: BufferManager> Engine<D, B> {
    /// Opens a formatted namespace: recovers the pages from the log (see
    /// the module docs) through the pool `make_pool` builds (as for
    /// [`Engine::format`]) and returns the engine with a report. Never
    /// formats: a blank device is [`Error::NotFormatted`].
    pub fn open(
        log_dev: D,
        data_dev: D,
        config: Config,
        make_pool: impl FnOnce(PoolSetup) -> Result<B, PoolError>,
    ) -> Result<(Engine<D, B>, RecoveryReport), Error> {
        open_existing(log_dev, data_dev, config, None, make_pool)
    }

    /// Opens like [`Engine::open`], but on a corrupt log cuts it as the
    /// operator's `request` says, discarding committed transactions after
    /// the damage. Refused unless the log is corrupt and `request` names
    /// exactly the cut and the loss recovery finds.
    pub fn open_truncating(
        log_dev: D,
        data_dev: D,
        config: Config,
        request: TruncateRequest,
        make_pool: impl FnOnce(PoolSetup) -> Result<B, PoolError>,
    ) -> Result<(Engine<D, B>, RecoveryReport), Error> {
        open_existing(log_dev, data_dev, config, Some(request), make_pool)
    }

    /// Opens the store on the device, or formats it for `layout` if the
    /// device is blank (every block format would write, `layout.blocks()`
    /// from block 0, is zero) or holds a format that did not finish
    /// ([`Error::FormatUnfinished`]). A device holding anything else without a
    /// valid control block is refused ([`Error::NoControlBlock`]). Returns
    /// the recovery report when it opened an existing store.
    pub fn open_or_format(
        log_dev: D,
        data_dev: D,
        layout: Layout,
        config: Config,
        make_pool: impl FnOnce(PoolSetup) -> Result<B, PoolError>,
    ) -> Result<(Engine<D, B>, Option<RecoveryReport>), Error> {
        layout.validate().map_err(Error::BadLayout)?;
        let io = StoreIo::new(data_dev, config.env)?;
        match read_control(io, layout.blocks())? {
            Found::Store(control, io) => {
                recover(log_dev, control, io, config, None, make_pool).map(|(e, r)| (e, Some(r)))
            }
            Found::Blank(io) => {
                log::info!("engine: blank device, formatting");
                Engine::format_on(log_dev, io, layout, config, make_pool).map(|e| (e, None))
            }
            Found::Unfinished(io, slots) => {
                log::warn!(
                    "engine: {}; formatting again",
                    Error::FormatUnfinished { slots }
                );
                Engine::format_on(log_dev, io, layout, config, make_pool).map(|e| (e, None))
            }
        }
    }
}

/// The body of [`Engine::open`] and [`Engine::open_truncating`]: recovers
/// a store, refusing a blank device.
fn open_existing<D: BlockDevice + Send + 'static, B: BufferManager>(
    log_dev: D,
    data_dev: D,
    config: Config,
    request: Option<TruncateRequest>,
    make_pool: impl FnOnce(PoolSetup) -> Result<B, PoolError>,
) -> Result<(Engine<D, B>, RecoveryReport), Error> {
    let io = StoreIo::new(data_dev, config.env)?;
    match read_control(io, BLANK_CHECK_BLOCKS)? {
        Found::Store(control, io) => recover(log_dev, control, io, config, request, make_pool),
        Found::Blank(_) => Err(Error::NotFormatted),
        Found::Unfinished(_, slots) => Err(Error::FormatUnfinished { slots }),
    }
}

/// What [`read_control`] found.
enum Found<D> {
    /// A store: its control block.
    Store(Control, StoreIo<D>),
    /// No control block and a blank device.
    Blank(StoreIo<D>),
    /// The marker of a format that did not finish (what each slot holds).
    Unfinished(StoreIo<D>, [ControlError; 2]),
}

/// Reads the control block through `io`; without a valid one, tells a
/// blank device (blocks `0..blank_check` and the device's last block, where
/// format puts the backup control block, all zero) from anything else
/// ([`Error::NoControlBlock`]).
fn read_control<D: BlockDevice>(mut io: StoreIo<D>, blank_check: u64) -> Result<Found<D>, Error> {
    // A device that cannot even hold the control blocks is named as such,
    // not as an I/O error of the first read.
    let have = io.block_count();
    if have < CONTROL_BLOCKS {
        return Err(Error::DeviceTooSmall {
            needed: CONTROL_BLOCKS,
            have,
        });
    }
    let slots = match io.read_control()? {
        Ok(control) => return Ok(Found::Store(control, io)),
        Err(slots) => slots,
    };
    // A format's marker in one slot and it or nothing in the other: only
    // a format that did not finish leaves that (it clears its last marker
    // once its control block is stable).
    let unfinished = |s: &ControlError| matches!(s, ControlError::Unfinished { .. });
    if slots.iter().any(unfinished)
        && slots
            .iter()
            .all(|s| unfinished(s) || *s == ControlError::Zeros)
    {
        return Ok(Found::Unfinished(io, slots));
    }
    let backup_lba = io.backup_lba();
    let backup = io.read_backup_control()?;
    let data_at = match (io.first_nonzero(blank_check)?, backup) {
        (None, Err(ControlError::Zeros)) => return Ok(Found::Blank(io)),
        (Some(at), _) => at,
        (None, _) => backup_lba,
    };
    Err(Error::NoControlBlock {
        slots,
        data_at,
        backup: backup.ok().map(Into::into),
        backup_lba,
    })
}

fn scan_error(e: ScanError<Error>) -> Error {
    match e {
        ScanError::Device(d) => Error::DeviceAt(d),
        ScanError::Handler(e) => e,
    }
}

fn recover<D: BlockDevice + Send + 'static, B: BufferManager>(
    mut log_dev: D,
    control: Control,
    mut io: StoreIo<D>,
    config: Config,
    request: Option<TruncateRequest>,
    make_pool: impl FnOnce(PoolSetup) -> Result<B, PoolError>,
) -> Result<(Engine<D, B>, RecoveryReport), Error> {
    let env = config.env;
    let t0 = (env.now_ns)();
    let layout = control.layout;
    check_fits(&io, &layout)?;
    let Pages {
        damaged,
        mut stored,
        newest,
    } = read_pages(&mut io, &layout)?;
    // The hook allows no page write until the checks below have passed.
    let hook = Arc::new(LogHook::new());
    let max = crate::growth::max_pages_on(&io, &layout);
    let pool = build_pool(&hook, &layout, max.0, make_pool)?;
    let geo = control.log_geometry();
    let mut buf = DmaBytes::new(log_dev.alloc(SCAN_BLOCKS)?);
    let mut report = RecoveryReport {
        redo: control.redo,
        end: control.redo,
        log_end: control.redo,
        stop: ScanStop::LogEnd,
        truncated: None,
        records: 0,
        transactions: 0,
        writes_applied: 0,
        writes_skipped: 0,
        page_images: 0,
        pages_repaired: Vec::new(),
        writes_discarded: 0,
        pages_written: 0,
        epoch: control.epoch + 1,
        elapsed_ns: 0,
    };
    // Pass 1: check everything, apply nothing.
    let mut check = Replay::<B> {
        pages: layout.data_pages,
        page0_lba: layout.page_lba(PageId(0)),
        pool: None,
        damaged,
        pending: Vec::new(),
        report: &mut report,
        resume: control.redo,
        expected: Expected::default(),
        lsns: &mut [],
    };
    let summary = scan_log(
        &mut log_dev,
        &geo,
        &control,
        None,
        &mut buf,
        env,
        &mut check,
    )?;
    let resume = check.resume;
    let discarded = check.pending.len() as u64;
    let damaged = core::mem::take(&mut check.damaged);
    let expected = core::mem::take(&mut check.expected);
    report.records = summary.records;
    report.writes_discarded = discarded;
    report.end = resume;
    report.log_end = summary.end;
    report.stop = summary.stop;
    let damage = summary.damage.map(|d| LogDamage {
        keep_end: resume,
        ..d
    });
    report.truncated = judge(
        &layout, resume, damage, request, newest, &damaged, &expected, &stored,
    )?;
    // Pass 2: redo through the pool. The log up to `resume` was read from
    // the device; the flush makes it durable before any page write, so a
    // page never reaches storage ahead of the log it depends on.
    io.flush()?;
    hook.allow_up_to(resume);
    let mut redo = Replay {
        pages: layout.data_pages,
        page0_lba: layout.page_lba(PageId(0)),
        pool: Some(&pool),
        damaged: BTreeMap::new(),
        pending: Vec::new(),
        report: &mut report,
        resume: control.redo,
        expected: Expected::default(),
        lsns: &mut stored,
    };
    // Up to the last commit only: what follows was judged by the check.
    let again = scan_log(
        &mut log_dev,
        &geo,
        &control,
        Some(resume),
        &mut buf,
        env,
        &mut redo,
    )?;
    if redo.resume != resume || again.damage.is_some() {
        // The log read differently the second time (nothing of ours
        // writes it): stop rather than redo something unchecked.
        return Err(Error::LogChanged {
            checked: resume,
            replayed: redo.resume,
        });
    }
    // A new epoch before any log write of this run.
    let control = Control {
        seq: control.seq + 1,
        epoch: control.epoch + 1,
        epoch_start: resume,
        ..control
    };
    io.write_control(&control)?;
    log::info!(
        "recovery: {} records from {} to {} ({}), {} transactions replayed, {} pages repaired",
        report.records,
        report.redo.0,
        report.end.0,
        report.stop,
        report.transactions,
        report.pages_repaired.len()
    );
    let tail = read_tail(&mut log_dev, &geo, resume, &mut buf, env)?;
    let page_lsns = if stored.is_empty() {
        None
    } else {
        page_lsns(&layout, max.0, |i| stored[i])?
    };
    let engine = Engine::assemble(
        log_dev, io, pool, hook, control, tail, page_lsns, max, config,
    )?;
    engine.wal.truncate_tail()?;
    let ckpt = engine.checkpoint()?;
    report.pages_written = ckpt.pages_written;
    report.elapsed_ns = (env.now_ns)().saturating_sub(t0);
    Ok((engine, report))
}

/// What recovery learned from reading every data page.
struct Pages {
    /// Pages that are not a valid image of themselves (torn, another
    /// page's, all zero).
    damaged: BTreeMap<u64, PageCheck>,
    /// Every page's LSN (0 for a damaged one), for the page-LSN tables'
    /// check and as the engine's table; empty for a store without one
    /// (`lsntable::enabled`).
    stored: Vec<u64>,
    /// The page holding the highest LSN: no page is written before the
    /// log is durable up to its LSN, so the log must reach that far.
    newest: (PageId, Lsn),
}

/// Reads every data page of `layout`. Every page of a store was written at
/// format (before its control block), so an all-zero page is damage like
/// any other bad page: it must be restored from an image in the log, or
/// recovery refuses.
fn read_pages<D: BlockDevice>(io: &mut StoreIo<D>, layout: &Layout) -> Result<Pages, Error> {
    let keep_lsns = lsntable::enabled(layout);
    let mut stored: Vec<u64> = Vec::new();
    if keep_lsns {
        // Bounded by the log's size (see `lsntable::enabled`).
        let pages = layout.data_pages as usize;
        stored
            .try_reserve_exact(pages)
            .map_err(|_| Error::OutOfMemory {
                what: "the page-LSN table",
                bytes: layout.data_pages * 8,
            })?;
        stored.resize(pages, 0);
    }
    let mut newest = (PageId(0), Lsn(0));
    let damaged = io.check_pages(layout, |id, lsn| {
        if keep_lsns {
            stored[id.0 as usize] = lsn.0;
        }
        if lsn > newest.1 {
            newest = (id, lsn);
        }
    })?;
    Ok(Pages {
        damaged,
        stored,
        newest,
    })
}

/// Decides, after the check pass and before anything is written, whether
/// recovery may go on: a corrupt log (unless the operator asked for exactly
/// its truncation), a page newer than the log, a damaged page the log does
/// not restore, a page older than a checkpoint recorded (a lost or reverted
/// page write) are refused. Returns the damage truncated at, if any.
#[allow(clippy::too_many_arguments)]
fn judge(
    layout: &Layout,
    resume: Lsn,
    damage: Option<LogDamage>,
    request: Option<TruncateRequest>,
    newest: (PageId, Lsn),
    damaged: &BTreeMap<u64, PageCheck>,
    expected: &Expected,
    stored: &[u64],
) -> Result<Option<LogDamage>, Error> {
    let behind = (newest.1 > resume).then_some(Error::LogBehindPage {
        page: newest.0,
        lba: layout.page_lba(newest.0),
        page_lsn: newest.1,
        log_end: resume,
    });
    let truncated = match (damage, request) {
        (None, None) => {
            if let Some(e) = behind {
                log::error!("recovery: {e}");
                return Err(e);
            }
            None
        }
        (Some(d), None) => {
            let e = Error::LogCorrupt(d);
            log::error!("recovery: {e}");
            return Err(e);
        }
        (Some(d), Some(r)) if r.at == d.keep_end && r.discard_to == d.lost_end() => {
            log::warn!(
                "recovery: truncating the log at LSN {} as requested, discarding LSNs {}..{} \
                 and at least {} committed transactions: {d}",
                r.at.0,
                r.at.0,
                r.discard_to.0,
                d.commits_beyond
            );
            if let Some(e) = behind {
                log::warn!(
                    "recovery: after the truncation, pages hold changes of discarded \
                     transactions: {e}"
                );
            }
            Some(d)
        }
        (found, Some(requested)) => return Err(Error::TruncateMismatch { requested, found }),
    };
    if let Some((&i, &check)) = damaged.iter().next() {
        return Err(Error::UnrepairablePage {
            page: PageId(i),
            lba: layout.page_lba(PageId(i)),
            check,
        });
    }
    // A page older than a checkpoint recorded, which the log does not
    // restore: a lost or reverted page write. (A page damaged on storage
    // was restored from an image, or refused above: the images exempt it.)
    if let Some(st) = expected.first_stale(|p| stored.get(p.0 as usize).map(|&l| Lsn(l))) {
        let e = Error::StalePage {
            page: st.page,
            lba: layout.page_lba(st.page),
            found: st.found,
            expected: st.expected,
        };
        log::error!("recovery: {e}");
        return Err(e);
    }
    Ok(truncated)
}

/// Scans the log of `control` from its redo point through `replay`: all of
/// it (judging its end), or up to `until`.
fn scan_log<D: BlockDevice, B: BufferManager>(
    log_dev: &mut D,
    geo: &LogGeometry,
    control: &Control,
    until: Option<Lsn>,
    buf: &mut DmaBytes,
    env: Env,
    replay: &mut Replay<'_, B>,
) -> Result<ScanSummary, Error> {
    let handle = |lsn: Lsn, rec: Record<'_>| replay.record(lsn, rec);
    match until {
        None => scan(
            log_dev,
            geo,
            control.redo,
            control.epoch_start,
            buf,
            env,
            handle,
        ),
        Some(end) => scan_to(
            log_dev,
            geo,
            control.redo..end,
            control.epoch_start,
            buf,
            env,
            handle,
        ),
    }
    .map_err(scan_error)
}

struct Pending {
    page: PageId,
    offset: usize,
    data: Vec<u8>,
}

/// One pass over the log: the check (`pool` is `None`: records are
/// validated, damaged pages tracked, transactions counted, nothing
/// applied) or the redo (through `pool`).
struct Replay<'a, B> {
    pages: u64,
    /// The device block of page 0.
    page0_lba: u64,
    pool: Option<&'a B>,
    /// Damaged pages not restored from an image yet (the check pass).
    damaged: BTreeMap<u64, PageCheck>,
    pending: Vec<Pending>,
    report: &'a mut RecoveryReport,
    /// The end of the last commit record (or page-LSN table) seen.
    resume: Lsn,
    /// What the page-LSN tables and images say (the check pass).
    expected: Expected,
    /// Every page's LSN, kept up to date by the redo pass (empty for a
    /// store without a page-LSN table, and in the check pass).
    lsns: &'a mut [u64],
}

impl<B: BufferManager> Replay<'_, B> {
    fn check_page(&self, lsn: Lsn, page: PageId) -> Result<(), Error> {
        if page.0 >= self.pages {
            return Err(Error::BadLogRecord {
                lsn,
                problem: RecordProblem::NoSuchPage(page),
            });
        }
        Ok(())
    }

    fn record(&mut self, lsn: Lsn, rec: Record<'_>) -> Result<(), Error> {
        match rec {
            Record::PageImage { page, image } => {
                self.check_page(lsn, page)?;
                match self.pool {
                    None => {
                        self.report.page_images += 1;
                        self.expected.image(page);
                        if self.damaged.remove(&page.0).is_some() {
                            self.report.pages_repaired.push(page);
                        }
                    }
                    Some(pool) => {
                        // Installed without reading the page: its stored
                        // copy may be torn.
                        let mut g = pool.fix_overwrite(page).map_err(Error::Pool)?;
                        let bytes = g.bytes_mut();
                        bytes.copy_from_slice(image);
                        // The page's own id in the header's id field, as
                        // `fix_overwrite` left it (an image of page P holds
                        // P there already; Tabby relies on it).
                        set_page_id(bytes, page);
                        if let Some(l) = self.lsns.get_mut(page.0 as usize) {
                            *l = page_lsn(image).0;
                        }
                    }
                }
            }
            Record::PageLsns {
                checkpoint,
                first,
                lsns,
            } => {
                // A checkpoint appends its table on its own, never inside
                // a transaction's run of records.
                if !self.pending.is_empty() {
                    return Err(Error::BadLogRecord {
                        lsn,
                        problem: RecordProblem::TableInTransaction,
                    });
                }
                let last = first.0.checked_add(lsns.len() as u64 / 8 - 1);
                self.check_page(lsn, PageId(last.unwrap_or(u64::MAX)))?;
                if self.pool.is_none() {
                    self.expected.table(checkpoint, first, lsns);
                }
                // The log is cut after the last commit at the end of
                // recovery: keep the table.
                self.resume = lsn_advance(lsn, rec.encoded_len() as u64);
            }
            Record::PageWrite { page, offset, data } => {
                self.check_page(lsn, page)?;
                let offset = offset as usize;
                if offset < PAGE_HEADER || offset + data.len() > PAGE_SIZE {
                    return Err(Error::BadLogRecord {
                        lsn,
                        problem: RecordProblem::OutsidePage {
                            page,
                            offset,
                            len: data.len(),
                        },
                    });
                }
                self.pending.push(Pending {
                    page,
                    offset,
                    data: if self.pool.is_some() {
                        data.to_vec()
                    } else {
                        Vec::new()
                    },
                });
            }
            Record::Commit { writes } => {
                if writes as usize != self.pending.len() {
                    return Err(Error::BadLogRecord {
                        lsn,
                        problem: RecordProblem::WriteCount {
                            commit_says: writes,
                            found: self.pending.len() as u64,
                        },
                    });
                }
                let end = lsn_advance(lsn, rec.encoded_len() as u64);
                match self.pool {
                    None => {
                        for w in &self.pending {
                            if let Some(&c) = self.damaged.get(&w.page.0) {
                                return Err(Error::UnrepairablePage {
                                    page: w.page,
                                    lba: self.page0_lba + w.page.0,
                                    check: c,
                                });
                            }
                        }
                        self.report.transactions += 1;
                        self.pending.clear();
                    }
                    Some(pool) => self.apply(pool, end)?,
                }
                self.resume = end;
            }
        }
        Ok(())
    }

    /// Applies the pending writes of the transaction whose commit record
    /// ends at `end`, page by page: a page whose LSN is below `end` gets
    /// all its writes (in log order) and LSN `end`; a page already holding
    /// them is left as it is.
    fn apply(&mut self, pool: &B, end: Lsn) -> Result<(), Error> {
        let mut pending = core::mem::take(&mut self.pending);
        // Stable: a page's writes stay in log order.
        pending.sort_by_key(|w| w.page);
        for run in pending.chunk_by(|a, b| a.page == b.page) {
            let mut g = pool.fix_exclusive(run[0].page).map_err(Error::Pool)?;
            if g.lsn() < end {
                let bytes = g.bytes_mut();
                for w in run {
                    bytes[w.offset..w.offset + w.data.len()].copy_from_slice(&w.data);
                }
                g.set_lsn(end);
                if let Some(l) = self.lsns.get_mut(run[0].page.0 as usize) {
                    *l = end.0;
                }
                self.report.writes_applied += run.len() as u64;
            } else {
                self.report.writes_skipped += run.len() as u64;
            }
        }
        pending.clear();
        self.pending = pending;
        Ok(())
    }
}
