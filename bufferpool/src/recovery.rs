//! Crash recovery: open an engine from what is durable.
//!
//! 1. Read the control block (the newer valid copy): the layout, the
//!    epoch, and the redo point of the last complete checkpoint.
//! 2. Read every data page and check it (checksum, page id): a torn page
//!    is marked damaged.
//! 3. Scan the log from the redo point ([`crate::log::scan`]), stopping at
//!    the first sector or record that does not hold (a torn tail is normal
//!    after a crash). Redo: a page image replaces the page (repairing it if
//!    it was damaged); the page writes of a transaction are applied when
//!    its commit record is reached, to pages whose LSN is below the commit's
//!    end; writes of a transaction whose commit is missing are discarded.
//! 4. Fail if a damaged page was not repaired.
//! 5. Raise the epoch in the control block (FUA), rewrite the log block
//!    holding the end of the last commit record cut off there (FUA:
//!    records of a transaction without a commit are erased, so they can
//!    never be read as part of the continued log), continue the log there,
//!    and take a checkpoint, which writes the recovered pages and bounds
//!    the next recovery.

use crate::control::Control;
use crate::device::{BlockDevice, DmaBytes};
use crate::engine::{check_fits, Config, Engine, Error};
use crate::log::{lsn_advance, read_tail, scan, LogGeometry, ScanError, ScanStop};
use crate::page::{page_lsn, set_page_lsn, PageCheck};
use crate::record::Record;
use crate::store::{PageStore, StoreIo};
use crate::{Lsn, PageId};
use alloc::vec;
use alloc::vec::Vec;

/// Blocks read at a time while scanning the log.
const SCAN_BLOCKS: usize = 64;

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
    /// the module docs) and returns the engine with a report.
    pub fn open(
        log_dev: D,
        data_dev: D,
        config: Config,
    ) -> Result<(Engine<D>, RecoveryReport), Error> {
        recover(log_dev, data_dev, config)
    }
}

fn recover<D: BlockDevice>(
    mut log_dev: D,
    data_dev: D,
    config: Config,
) -> Result<(Engine<D>, RecoveryReport), Error> {
    let env = config.env;
    let t0 = (env.now_ns)();
    let mut io = StoreIo::new(data_dev, env)?;
    let control = io.read_control()?.ok_or(Error::NotFormatted)?;
    let layout = control.layout;
    check_fits(&io, &layout)?;
    let store = PageStore::new(io, layout, env);
    let checks = store.load()?;
    let mut damaged: Vec<Option<PageCheck>> = checks
        .iter()
        .map(|c| match c {
            PageCheck::Valid | PageCheck::Empty => None,
            c => Some(*c),
        })
        .collect();
    let geo = LogGeometry {
        start_lba: layout.log_start(),
        blocks: layout.log_blocks,
        format_id: control.format_id,
        epoch: control.epoch,
    };
    let mut buf = DmaBytes::new(log_dev.alloc(SCAN_BLOCKS)?);
    let mut pending: Vec<Pending> = Vec::new();
    // Where the log continues: after the last commit record.
    let mut resume = control.redo;
    let mut report = RecoveryReport {
        redo: control.redo,
        end: control.redo,
        log_end: control.redo,
        stop: ScanStop::LogEnd,
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
        ScanError::RedoLost(l) => Error::RedoLost(l),
        ScanError::Handler(e) => e,
    })?;
    report.records = summary.records;
    report.writes_discarded = pending.len() as u64;
    report.end = resume;
    report.log_end = summary.end;
    report.stop = summary.stop;
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
        ..control
    };
    store.io().write_control(&control)?;
    log::info!(
        "recovery: {} records from {} to {} ({:?}), {} transactions replayed, {} pages repaired",
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
            let mut f = store.latch(page).ok_or(Error::CorruptLog(lsn))?;
            f.page.0.copy_from_slice(image);
            f.dirty = true;
            report.page_images += 1;
            if damaged[page.0 as usize].take().is_some() {
                report.pages_repaired.push(page);
            }
        }
        Record::PageWrite { page, offset, data } => {
            if page.0 >= store.pages()
                || (offset as usize) < crate::page::PAGE_HEADER
                || offset as usize + data.len() > crate::PAGE_SIZE
            {
                return Err(Error::CorruptLog(lsn));
            }
            pending.push(Pending {
                page,
                offset: offset as usize,
                data: data.to_vec(),
            });
        }
        Record::Commit { writes } => {
            if writes as usize != pending.len() {
                return Err(Error::CorruptLog(lsn));
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
