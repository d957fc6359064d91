//! Crash recovery: open an engine from what is durable.
//!
//! 1. Read the control block (the newer valid copy): the layout, the
//!    epoch, the epoch start and the redo point of the last complete
//!    checkpoint. With neither copy valid, a device that is blank where a
//!    store would be is [`Error::NotFormatted`]; anything else is refused
//!    ([`Error::NoControlBlock`], saying what blocks 0 and 1 hold): only an
//!    explicit [`Engine::format`] reuses it. [`Engine::open_or_format`]
//!    formats only a blank device.
//! 2. Read every data page and check it (checksum, page id): a torn page
//!    is marked damaged.
//! 3. Scan the log from the redo point ([`crate::log::scan`]) to its end.
//!    Redo: a page image replaces the page (repairing it if it was
//!    damaged); the page writes of a transaction are applied when its
//!    commit record is reached, to pages whose LSN is below the commit's
//!    end; writes of a transaction whose commit is missing are discarded.
//!    A torn tail (the write batch in flight at a crash) ends the log; a
//!    corrupt log ([`crate::log::LogDamage`]: damage no crash leaves, or
//!    intact log past the end that a crash cannot explain) is refused with
//!    [`Error::LogCorrupt`] before anything is written, unless the
//!    operator asked for exactly that truncation ([`TruncateRequest`],
//!    [`Engine::open_truncating`]).
//! 4. Fail if a damaged page was not repaired.
//! 5. Raise the epoch in the control block (FUA), with the end of the last
//!    commit record as the new epoch start; rewrite the log block holding
//!    that end cut off there (FUA: records of a transaction without a
//!    commit are erased, so they can never be read as part of the
//!    continued log), continue the log there, and take a checkpoint, which
//!    writes the recovered pages and bounds the next recovery.

use crate::control::Control;
use crate::control::Layout;
use crate::control::CONTROL_BLOCKS;
use crate::device::{BlockDevice, DmaBytes};
use crate::engine::{check_fits, Config, Engine, Error, RecordProblem};
use crate::log::{lsn_advance, read_tail, scan, LogDamage, ScanError, ScanStop};
use crate::page::{page_lsn, set_page_lsn, PageCheck};
use crate::record::Record;
use crate::store::{PageStore, StoreIo};
use crate::{Lsn, PageId};
use alloc::vec;
use alloc::vec::Vec;

/// Blocks read at a time while scanning the log.
const SCAN_BLOCKS: usize = 64;

/// Blocks [`Engine::open`] checks for data when neither control block is
/// valid (1 MiB from block 0), to tell a blank device from something else.
/// Every store this crate formats has, at any time, a valid control block
/// or data in block 2 (the log's first sector, sealed at format, is never
/// zeroed again), so a damaged store is never taken for a blank device;
/// other data (a file system, a partition table) starts in the first
/// blocks too. The bound keeps a first start cheap on a large device (8
/// reads of the store's 32-block buffer). [`Engine::open_or_format`]
/// checks every block that format would write instead.
pub const BLANK_CHECK_BLOCKS: u64 = 256;

/// The operator's request to give up part of a corrupt log: recovery cuts
/// the log at `at` and discards it up to `discard_to`. Both must equal
/// what recovery finds ([`LogDamage::keep_end`], [`LogDamage::lost_end`],
/// as the refusal reported them), so the request states exactly how much
/// is lost; anything else is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TruncateRequest {
    /// Keep the log before this LSN (the end of the last commit before the
    /// damage).
    pub at: Lsn,
    /// Discard the log from `at` up to this LSN (the end of the intact log
    /// found past the damage).
    pub discard_to: Lsn,
}

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

struct Pending {
    page: PageId,
    offset: usize,
    data: Vec<u8>,
}

impl<D: BlockDevice> Engine<D> {
    /// Opens a formatted namespace: recovers the pages from the log (see
    /// the module docs) and returns the engine with a report. Never
    /// formats: a blank device is [`Error::NotFormatted`].
    pub fn open(
        log_dev: D,
        data_dev: D,
        config: Config,
    ) -> Result<(Engine<D>, RecoveryReport), Error> {
        open_existing(log_dev, data_dev, config, None)
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
    ) -> Result<(Engine<D>, RecoveryReport), Error> {
        open_existing(log_dev, data_dev, config, Some(request))
    }

    /// Opens the store on the device, or formats it for `layout` if the
    /// device is blank: every block format would write (`layout.blocks()`
    /// from block 0) is zero. A device holding anything else without a
    /// valid control block is refused ([`Error::NoControlBlock`]). Returns
    /// the recovery report when it opened an existing store.
    pub fn open_or_format(
        log_dev: D,
        data_dev: D,
        layout: Layout,
        config: Config,
    ) -> Result<(Engine<D>, Option<RecoveryReport>), Error> {
        layout.validate().map_err(Error::BadLayout)?;
        let io = StoreIo::new(data_dev, config.env)?;
        match read_control(io, layout.blocks())? {
            Found::Store(control, io) => {
                recover(log_dev, control, io, config, None).map(|(e, r)| (e, Some(r)))
            }
            Found::Blank(io) => {
                log::info!("engine: blank device, formatting");
                Engine::format_on(log_dev, io, layout, config).map(|e| (e, None))
            }
        }
    }
}

/// The body of [`Engine::open`] and [`Engine::open_truncating`]: recovers
/// a store, refusing a blank device.
fn open_existing<D: BlockDevice>(
    log_dev: D,
    data_dev: D,
    config: Config,
    request: Option<TruncateRequest>,
) -> Result<(Engine<D>, RecoveryReport), Error> {
    let io = StoreIo::new(data_dev, config.env)?;
    match read_control(io, BLANK_CHECK_BLOCKS)? {
        Found::Store(control, io) => recover(log_dev, control, io, config, request),
        Found::Blank(_) => Err(Error::NotFormatted),
    }
}

/// What [`read_control`] found.
enum Found<D> {
    /// A store: its control block.
    Store(Control, StoreIo<D>),
    /// No control block and a blank device.
    Blank(StoreIo<D>),
}

/// Reads the control block through `io`; without a valid one, tells a
/// blank device (blocks `0..blank_check` all zero) from anything else
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
    match io.first_nonzero(blank_check)? {
        None => Ok(Found::Blank(io)),
        Some(data_at) => Err(Error::NoControlBlock { slots, data_at }),
    }
}

fn recover<D: BlockDevice>(
    mut log_dev: D,
    control: Control,
    io: StoreIo<D>,
    config: Config,
    request: Option<TruncateRequest>,
) -> Result<(Engine<D>, RecoveryReport), Error> {
    let env = config.env;
    let t0 = (env.now_ns)();
    let layout = control.layout;
    check_fits(&io, &layout)?;
    let store = PageStore::try_new(io, layout, env).map_err(|_| Error::OutOfMemory {
        pages: layout.data_pages,
    })?;
    let checks = store.load()?;
    let mut damaged: Vec<Option<PageCheck>> = checks
        .iter()
        .map(|c| match c {
            PageCheck::Valid | PageCheck::Empty => None,
            c => Some(*c),
        })
        .collect();
    let geo = control.log_geometry();
    let mut buf = DmaBytes::new(log_dev.alloc(SCAN_BLOCKS)?);
    let mut pending: Vec<Pending> = Vec::new();
    // Where the log continues: after the last commit record.
    let mut resume = control.redo;
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
    let summary = scan(
        &mut log_dev,
        &geo,
        control.redo,
        control.epoch_start,
        &mut buf,
        env,
        |lsn, rec| {
            redo_record(&store, &mut damaged, &mut pending, &mut report, lsn, rec)?;
            if let Record::Commit { .. } = rec {
                resume = lsn_advance(lsn, rec.encoded_len() as u64);
            }
            Ok(())
        },
    )
    .map_err(|e| match e {
        ScanError::Device(d) => Error::Device(d),
        ScanError::Handler(e) => e,
    })?;
    report.records = summary.records;
    report.writes_discarded = pending.len() as u64;
    report.end = resume;
    report.log_end = summary.end;
    report.stop = summary.stop;
    let damage = summary.damage.map(|d| LogDamage {
        keep_end: resume,
        ..d
    });
    match (damage, request) {
        (None, None) => {}
        (Some(d), None) => {
            log::error!("recovery: {d}");
            return Err(Error::LogCorrupt(d));
        }
        (Some(d), Some(r)) if r.at == d.keep_end && r.discard_to == d.lost_end() => {
            log::warn!(
                "recovery: truncating the log at LSN {} as requested, discarding LSNs {}..{}: {d}",
                r.at.0,
                r.at.0,
                r.discard_to.0
            );
            report.truncated = Some(d);
        }
        (found, Some(requested)) => return Err(Error::TruncateMismatch { requested, found }),
    }
    if let Some((i, c)) = damaged
        .iter()
        .enumerate()
        .find_map(|(i, c)| c.map(|c| (i, c)))
    {
        return Err(Error::UnrepairablePage(PageId(i as u64), c));
    }
    // A new epoch before any log write of this run.
    let control = Control {
        seq: control.seq + 1,
        epoch: control.epoch + 1,
        epoch_start: resume,
        ..control
    };
    store.io().write_control(&control)?;
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
    let engine = Engine::assemble(log_dev, store, control, tail, config)?;
    engine.wal.truncate_tail()?;
    let ckpt = engine.checkpoint()?;
    report.pages_written = ckpt.pages_written;
    report.elapsed_ns = (env.now_ns)().saturating_sub(t0);
    Ok((engine, report))
}

fn redo_record<D: BlockDevice>(
    store: &PageStore<D>,
    damaged: &mut [Option<PageCheck>],
    pending: &mut Vec<Pending>,
    report: &mut RecoveryReport,
    lsn: Lsn,
    rec: Record<'_>,
) -> Result<(), Error> {
    match rec {
        Record::PageImage { page, image } => {
            let mut f = store.latch(page).ok_or(Error::BadLogRecord {
                lsn,
                problem: RecordProblem::NoSuchPage(page),
            })?;
            f.page.0.copy_from_slice(image);
            f.dirty = true;
            report.page_images += 1;
            if damaged[page.0 as usize].take().is_some() {
                report.pages_repaired.push(page);
            }
        }
        Record::PageWrite { page, offset, data } => {
            if page.0 >= store.pages() {
                return Err(Error::BadLogRecord {
                    lsn,
                    problem: RecordProblem::NoSuchPage(page),
                });
            }
            if (offset as usize) < crate::page::PAGE_HEADER
                || offset as usize + data.len() > crate::PAGE_SIZE
            {
                return Err(Error::BadLogRecord {
                    lsn,
                    problem: RecordProblem::OutsidePage {
                        page,
                        offset: offset as usize,
                        len: data.len(),
                    },
                });
            }
            pending.push(Pending {
                page,
                offset: offset as usize,
                data: data.to_vec(),
            });
        }
        Record::Commit { writes } => {
            if writes as usize != pending.len() {
                return Err(Error::BadLogRecord {
                    lsn,
                    problem: RecordProblem::WriteCount {
                        commit_says: writes,
                        found: pending.len() as u64,
                    },
                });
            }
            let end = lsn_advance(lsn, rec.encoded_len() as u64);
            let mut touched: Vec<PageId> = vec![];
            for w in pending.drain(..) {
                if let Some(c) = damaged[w.page.0 as usize] {
                    return Err(Error::UnrepairablePage(w.page, c));
                }
                let mut f = store.latch(w.page).expect("checked page id");
                if page_lsn(&f.page.0) < end {
                    f.page.0[w.offset..w.offset + w.data.len()].copy_from_slice(&w.data);
                    report.writes_applied += 1;
                    if !touched.contains(&w.page) {
                        touched.push(w.page);
                    }
                } else {
                    report.writes_skipped += 1;
                }
            }
            for p in touched {
                let mut f = store.latch(p).expect("checked page id");
                set_page_lsn(&mut f.page.0, end);
                f.dirty = true;
            }
            report.transactions += 1;
        }
    }
    Ok(())
}
