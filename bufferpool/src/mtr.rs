//! Mini-transactions: how the engine logs a B+tree's changes
//! ([`TreeLog`] for [`Engine`]).
//!
//! A tree change latches its pages exclusively as it goes, keeping a copy
//! of each as it was when latched, and changes them in place (see
//! `crate::btree`). While they are still latched the engine logs the unit:
//! for every page that differs from its copy, the copy as a full-page image
//! if the page has not been changed since the last checkpoint's redo point
//! (torn-page protection, as for [`Engine::commit`]), then the changed byte
//! ranges as page writes, then one commit record. The unit's pages get its
//! end as their page LSN before they are unlatched, so none is written back
//! before the unit is durable. The records are the engine's ordinary
//! transaction records: recovery replays a unit whole or not at all, and
//! needs nothing of its own for trees.
//!
//! The changed ranges come from comparing each page with its copy by
//! 8-byte words; ranges closer than [`MERGE_GAP`] bytes are logged as one
//! (a page write record costs 27 bytes of framing). An insert into a leaf
//! logs its slot, the shifted slots after it, the new heap bytes, the
//! hints and the header fields: typically a few hundred bytes, not a page.
//!
//! Checkpoints: a unit holds the engine's checkpoint gate from its image
//! decisions until its pages are unlatched (dirty), as a transaction does,
//! so a checkpoint's redo point never falls inside a unit. A unit refused
//! for a full log is undone by the tree, which then calls
//! [`TreeLog::make_room`] (a checkpoint) with no page latched: a checkpoint
//! waits for latched pages, so it may never run while a unit holds any.

use crate::btree::{Refused, Reserved, TreeError, TreeLog};
use crate::device::BlockDevice;
use crate::engine::{Engine, Error};
use crate::page::{PageBuf, PAGE_HEADER};
use crate::pool::{BufferManager, ExclusiveGuard};
use crate::record::Record;
use crate::{Lsn, WalError, PAGE_SIZE};
use alloc::vec::Vec;
use core::sync::atomic::Ordering;

/// Changed ranges at most this many bytes apart are logged as one.
pub const MERGE_GAP: usize = 32;

/// The byte ranges `(offset, len)` of `new` that differ from `old`, past
/// the page header, compared by 8-byte words (so offsets and lengths are
/// multiples of 8) and merged where less than [`MERGE_GAP`] bytes apart.
pub fn changed_ranges(old: &[u8], new: &[u8], out: &mut Vec<(usize, usize)>) {
    const W: usize = 8;
    const _: () = assert!(PAGE_HEADER.is_multiple_of(W) && PAGE_SIZE.is_multiple_of(W));
    out.clear();
    let word = |b: &[u8], at: usize| u64::from_ne_bytes(b[at..at + W].try_into().expect("a word"));
    let mut at = PAGE_HEADER;
    while at < PAGE_SIZE {
        if word(old, at) == word(new, at) {
            at += W;
            continue;
        }
        let start = at;
        while at < PAGE_SIZE && word(old, at) != word(new, at) {
            at += W;
        }
        match out.last_mut() {
            Some((o, l)) if start - (*o + *l) <= MERGE_GAP => *l = at - *o,
            _ => out.push((start, at - start)),
        }
    }
}

fn engine_error(e: Error) -> TreeError {
    match e {
        Error::Pool(p) => TreeError::Pool(p),
        e => TreeError::Engine(e),
    }
}

impl<D: BlockDevice + Send + 'static, B: BufferManager> TreeLog<B> for Engine<D, B>
where
    Engine<D, B>: Sync,
{
    fn prepare(&self) -> Result<(), TreeError> {
        if let Some(f) = self.wal.failure() {
            return Err(TreeError::Engine(Error::Log(WalError::Failed(f))));
        }
        self.checkpoint_if_due().map_err(engine_error)
    }

    fn log(
        &self,
        pages: &mut Vec<ExclusiveGuard<'_, B>>,
        before: &[PageBuf],
    ) -> Result<Option<Lsn>, Refused> {
        debug_assert_eq!(pages.len(), before.len());
        // The changed ranges, `(page index, offset, length)`, found before
        // the gate: the pages are latched, only this unit changes them.
        let mut ranges: Vec<(usize, usize, usize)> = Vec::new();
        let mut scratch = Vec::new();
        for (i, (g, b)) in pages.iter().zip(before).enumerate() {
            changed_ranges(&b.0, g.bytes(), &mut scratch);
            ranges.extend(scratch.iter().map(|&(off, len)| (i, off, len)));
        }
        if ranges.is_empty() {
            // Nothing changed: nothing to log.
            pages.clear();
            return Ok(None);
        }
        let changed = |i: usize| ranges.iter().any(|r| r.0 == i);
        // Held until the pages are unlatched (below): a checkpoint's redo
        // point falls before this unit's records or after its pages are
        // dirty in the pool (module docs).
        let pass = self.gate.read(self.env.relax);
        let redo = Lsn(self.image_redo.load(Ordering::Acquire));
        let mut records = Vec::with_capacity(pages.len() + ranges.len() + 1);
        for (i, (g, b)) in pages.iter().zip(before).enumerate() {
            if changed(i) && g.lsn() <= redo {
                records.push(Record::PageImage {
                    page: g.id(),
                    image: &b.0,
                });
            }
        }
        let images = records.len() as u64;
        records.extend(ranges.iter().map(|&(i, off, len)| Record::PageWrite {
            page: pages[i].id(),
            offset: off as u16,
            data: &pages[i].bytes()[off..off + len],
        }));
        let writes = ranges.len() as u32;
        records.push(Record::Commit { writes });
        let end = match self.wal.append(&records) {
            Ok(end) => end,
            Err(e @ WalError::LogFull { .. }) if self.checkpoint_blocks > 0 => {
                return Err(Refused::LogFull(TreeError::Engine(Error::Log(e))))
            }
            Err(e) => return Err(Refused::Failed(TreeError::Engine(Error::Log(e)))),
        };
        drop(records);
        for (i, g) in pages.iter_mut().enumerate() {
            if changed(i) {
                self.stamp(g, end);
            }
        }
        let bytes = ranges.iter().map(|r| r.2 as u64).sum();
        self.count_unit(writes as u64, bytes, images);
        // Unlatched (dirty) while the gate is held.
        pages.clear();
        drop(pass);
        Ok(Some(end))
    }

    fn reserve(&self, pages: usize) -> Result<Reserved<'_>, TreeError> {
        self.reserve_frames(pages)
            .map_err(|limit| TreeError::TooManyPages { pages, limit })
    }

    fn pages(&self) -> u64 {
        self.data_pages.load(Ordering::Acquire)
    }

    fn grow(&self, pages: u64) -> Result<(), TreeError> {
        match Engine::grow(self, pages) {
            Ok(_) => Ok(()),
            // The device holds no more: the tree's "disk full".
            Err(Error::StoreFull {
                pages,
                why: crate::growth::Limit::Device,
                ..
            }) => Err(TreeError::Full { pages }),
            Err(e) => Err(engine_error(e)),
        }
    }

    fn make_room(&self) -> Result<(), TreeError> {
        let seen = self.stats.checkpoints.load(Ordering::Acquire);
        self.checkpoint_since(seen).map_err(engine_error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    #[test]
    fn ranges_are_the_changed_words_merged_across_small_gaps() {
        let old = vec![0u8; PAGE_SIZE];
        let mut new = old.clone();
        let mut out = Vec::new();
        changed_ranges(&old, &new, &mut out);
        assert!(out.is_empty());
        // The header is never compared.
        new[8] = 1;
        changed_ranges(&old, &new, &mut out);
        assert!(out.is_empty());
        new[100] = 1; // word 96..104
        new[140] = 1; // word 136..144: 32 bytes after 104: merged
        new[1000] = 1; // word 1000..1008: far: its own range
        new[PAGE_SIZE - 1] = 1;
        changed_ranges(&old, &new, &mut out);
        assert_eq!(out, vec![(96, 48), (1000, 8), (PAGE_SIZE - 8, 8)]);
        new[177] = 1; // word 176..184: 32 bytes after 144: merged too
        new[225] = 1; // word 224..232: 40 bytes after 184: not merged
        changed_ranges(&old, &new, &mut out);
        assert_eq!(out, vec![(96, 88), (224, 8), (1000, 8), (PAGE_SIZE - 8, 8)]);
        // Applying the ranges to the old page gives the new one.
        let mut rebuilt = old.clone();
        for &(o, l) in &out {
            rebuilt[o..o + l].copy_from_slice(&new[o..o + l]);
        }
        assert_eq!(rebuilt[PAGE_HEADER..], new[PAGE_HEADER..]);
    }
}
