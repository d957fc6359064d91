//! The checkpoint's page-LSN table: where a lost or reverted page write is
//! caught.
//!
//! A page on storage carries its own LSN, but nothing on the page can say
//! that it is *older* than it should be: an earlier valid copy of a page
//! (a write the device acknowledged and lost, a restored backup of one
//! file, a block put back by hand) checks out by itself. So the engine
//! keeps the LSN of every data page in memory ([`PageLsns`], 8 bytes a
//! page), and every checkpoint logs it, after its page writes and its
//! device flush and before its control block, as [`Record::PageLsns`]
//! records: for each page, the LSN it held on storage once the checkpoint
//! had written it (0 where that is not known: a page never changed, or
//! changed after the redo point, whose first change after the redo point
//! logged its image).
//!
//! Recovery reads the tables it meets in the log from the redo point on
//! ([`Expected`]) and refuses, before it writes anything, a page whose LSN
//! on storage is below its entry, unless the log it replays holds an image
//! of that page (which recovery installs without reading the page, so the
//! stale copy does no harm): `Error::StalePage`.
//!
//! What this promises, and what not, is in `docs/wal.md`: the table is
//! kept only while it takes at most a quarter of the log area
//! ([`enabled`]), and a page reverted to a copy that is *newer* than the
//! last checkpoint's entry (a lost write between two checkpoints, whose
//! page was not changed again) is found only if a later checkpoint's table
//! is in the log recovery reads.

use crate::control::Layout;
use crate::log::{LOG_BLOCK, SECTOR, SECTOR_PAYLOAD};
use crate::record::{Record, PAGE_LSNS_PER_RECORD, RECORD_HEADER};
use crate::{Lsn, PageId};
use alloc::collections::{BTreeMap, BTreeSet};
use alloc::vec::Vec;
use core::sync::atomic::{AtomicU64, Ordering};

/// Log blocks one table of `data_pages` pages may take (records, their
/// frames, the sector headers, and a block for the partial ones at either
/// end).
pub fn table_blocks(data_pages: u64) -> u64 {
    let records = data_pages.div_ceil(PAGE_LSNS_PER_RECORD as u64);
    let bytes = data_pages
        .saturating_mul(8)
        .saturating_add(records.saturating_mul((RECORD_HEADER + 16) as u64));
    let payload_per_block = SECTOR_PAYLOAD * (LOG_BLOCK / SECTOR);
    bytes.div_ceil(payload_per_block) + 2
}

/// Whether a store of `layout` keeps the table: only while one table
/// takes at most a quarter of the log area (the log keeps that much free
/// for it, see `Wal::set_reserve`).
pub fn enabled(layout: &Layout) -> bool {
    table_blocks(layout.data_pages).saturating_mul(4) <= layout.log_blocks
}

/// The engine's copy of every data page's LSN.
pub struct PageLsns {
    lsns: Vec<AtomicU64>,
}

impl PageLsns {
    /// A table of `pages` pages, page `i` at `lsn_of(i)`; `None` if the
    /// memory cannot be had.
    pub fn new(pages: usize, lsn_of: impl Fn(usize) -> u64) -> Option<PageLsns> {
        let mut v = Vec::new();
        v.try_reserve_exact(pages).ok()?;
        v.extend((0..pages).map(|i| AtomicU64::new(lsn_of(i))));
        Some(PageLsns { lsns: v })
    }

    /// Page `page` now holds a change ending at `lsn` (it only grows).
    pub fn set(&self, page: PageId, lsn: Lsn) {
        self.lsns[page.0 as usize].fetch_max(lsn.0, Ordering::AcqRel);
    }

    /// The table of the checkpoint whose redo point is `redo` and whose
    /// pages are on storage, for the data area's first `pages` pages (the
    /// table has room for the pages the area may grow to): chunks of
    /// consecutive pages with their LSNs (little-endian), each LSN above
    /// `redo` given as 0 (not known: the page changed after the redo
    /// point); chunks of zeros left out.
    pub fn chunks(&self, redo: Lsn, pages: u64) -> Vec<(PageId, Vec<u8>)> {
        let mut out = Vec::new();
        let n = (pages as usize).min(self.lsns.len());
        for (c, chunk) in self.lsns[..n].chunks(PAGE_LSNS_PER_RECORD).enumerate() {
            let mut bytes = Vec::with_capacity(chunk.len() * 8);
            for l in chunk {
                let l = l.load(Ordering::Acquire);
                let known = if l <= redo.0 { l } else { 0 };
                bytes.extend_from_slice(&known.to_le_bytes());
            }
            if bytes.iter().any(|&b| b != 0) {
                out.push((PageId((c * PAGE_LSNS_PER_RECORD) as u64), bytes));
            }
        }
        out
    }
}

/// The records of a table's `chunks` (see [`PageLsns::chunks`]).
pub fn records(redo: Lsn, chunks: &[(PageId, Vec<u8>)]) -> Vec<Record<'_>> {
    chunks
        .iter()
        .map(|(first, lsns)| Record::PageLsns {
            checkpoint: redo,
            first: *first,
            lsns,
        })
        .collect()
}

/// What recovery learns from the tables and images in the log it reads.
#[derive(Default)]
pub struct Expected {
    /// The least LSN each page must hold on storage.
    at_least: BTreeMap<u64, u64>,
    /// Pages the log holds an image of (installed without reading the
    /// page, so their stored copy does not matter).
    imaged: BTreeSet<u64>,
}

/// A page older on storage than a table says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stale {
    pub page: PageId,
    /// The LSN it holds.
    pub found: Lsn,
    /// The LSN the table says it held at least.
    pub expected: Lsn,
}

impl Expected {
    /// A table's entries for pages `first..`; an entry above `checkpoint`
    /// (which no table writes) is ignored.
    pub fn table(&mut self, checkpoint: Lsn, first: PageId, lsns: &[u8]) {
        for (i, l) in lsns.chunks_exact(8).enumerate() {
            let l = u64::from_le_bytes(l.try_into().unwrap());
            if l != 0 && l <= checkpoint.0 {
                let e = self.at_least.entry(first.0 + i as u64).or_insert(0);
                *e = (*e).max(l);
            }
        }
    }

    /// The log holds an image of `page`.
    pub fn image(&mut self, page: PageId) {
        self.imaged.insert(page.0);
    }

    /// The first page whose stored LSN (`stored(page)`, `None` for a page
    /// already known to be damaged) is below its entry and that the log
    /// does not restore from an image.
    pub fn first_stale(&self, stored: impl Fn(PageId) -> Option<Lsn>) -> Option<Stale> {
        self.at_least.iter().find_map(|(&p, &e)| {
            let page = PageId(p);
            if self.imaged.contains(&p) {
                return None;
            }
            let found = stored(page)?;
            (found.0 < e).then_some(Stale {
                page,
                found,
                expected: Lsn(e),
            })
        })
    }
}
