//! Overflow chains: values too large for a leaf (a key and value of more
//! than [`MAX_ENTRY`](super::MAX_ENTRY) bytes) in a logged tree.
//!
//! Such a value is cut into pages of [`CHUNK`] bytes linked in order, a
//! *chain*; the leaf entry holds a [`REF_LEN`]-byte reference to it (the
//! slot's [`REF_FLAG`](super::REF_FLAG) says so): the chain's number, the
//! value's length, its first and last page and its page count. Every page
//! of a chain carries the chain's number, unique in the tree, so a reader
//! that follows a reference without latches held can tell a page that is
//! no longer that chain's.
//!
//! # Writing: pending chains
//! A chain of up to 261 pages cannot be one unit (a unit holds its pages
//! latched, and units may hold half the pool), so it is written in units
//! of [`PER_UNIT`] pages, last page first, each also recording the chain so
//! far in a *pending* slot of the meta page (head, tail, pages, number).
//! A change claims the slots of all its large values at once, in a unit of
//! its own, or waits holding none: so writers never deadlock over the 32
//! slots, and a change of more than 32 large values is refused.
//! The leaf change that refers to the chain is a unit of its own that also
//! empties the slot. A crash in between leaves the chain pending, and
//! [`BTree::open_logged`](super::BTree::open_logged) frees every pending
//! chain: so a chain is always reachable from a leaf, from a pending slot,
//! or from the free list, and never lost.
//!
//! # Freeing
//! A change that replaces or deletes a value on a chain frees the chain in
//! its own unit, in O(1) pages: the chain's pages link the next in the
//! same field as free pages do, so the whole chain is spliced onto the
//! free list by latching its last page (linked to the old head of the
//! list) and the meta page. Pages of kind [`OVERFLOW`] may therefore sit
//! on the free list; a page taken from it is initialised anew.
//!
//! # Overflow page format (after the 32-byte page header)
//! ```text
//!  32  u8   kind: 5
//!  40  u64  the next page of the chain (u64::MAX: none); on the free
//!           list, the next free page
//!  48  u64  the chain's number
//!  56  u16  bytes of the value in this page
//!  64  the value's bytes
//! ```

use super::{
    corrupt, rd16, rd64, wr16, wr64, BTree, Mtr, TreeError, E, KIND, LINK_A, META_CHAIN, META_FREE,
    META_FREE_COUNT, META_PENDING, NONE, PENDING_SLOT, PENDING_SLOTS, R,
};
use crate::page::PAGE_HEADER;
use crate::pool::{BufferManager, Pool};
use crate::{PageId, PAGE_SIZE};
use alloc::vec::Vec;

/// The kind byte of an overflow page.
pub(super) const OVERFLOW: u8 = 5;
const O_NONCE: usize = PAGE_HEADER + 16;
const O_LEN: usize = PAGE_HEADER + 24;
const O_DATA: usize = PAGE_HEADER + 32;
/// Bytes of a value per overflow page.
pub const CHUNK: usize = PAGE_SIZE - O_DATA;

/// The largest value a logged tree stores (1 MiB).
pub const MAX_VALUE: usize = 1 << 20;
const MAX_CHAIN: u64 = MAX_VALUE.div_ceil(CHUNK) as u64;

/// Chain pages one unit writes (with the meta page, 5 latched: fewer than
/// a split's).
const PER_UNIT: usize = 4;

/// Bytes of a reference to a chain in a leaf entry.
pub(super) const REF_LEN: usize = 40;

/// A chain as a reference (or a pending slot) describes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Chain {
    /// The chain's number (never 0).
    pub nonce: u64,
    /// The value's length (in a pending slot: 0).
    pub len: u64,
    pub head: u64,
    pub tail: u64,
    pub pages: u64,
}

impl Chain {
    pub fn encode(&self) -> [u8; REF_LEN] {
        let mut r = [0u8; REF_LEN];
        for (i, v) in [self.nonce, self.len, self.head, self.tail, self.pages]
            .into_iter()
            .enumerate()
        {
            r[i * 8..i * 8 + 8].copy_from_slice(&v.to_le_bytes());
        }
        r
    }

    /// The reference in `r`; one of the wrong size decodes as a chain of
    /// no pages, which every use refuses as damaged.
    pub fn decode(r: &[u8]) -> Chain {
        if r.len() != REF_LEN {
            return Chain {
                nonce: 0,
                len: 0,
                head: NONE,
                tail: NONE,
                pages: 0,
            };
        }
        let f = |i: usize| rd64(r, i * 8);
        Chain {
            nonce: f(0),
            len: f(1),
            head: f(2),
            tail: f(3),
            pages: f(4),
        }
    }

    /// Whether the reference could describe a chain at all.
    fn plausible(&self) -> bool {
        self.nonce != 0 && (1..=MAX_CHAIN).contains(&self.pages) && self.len <= MAX_VALUE as u64
    }
}

/// The chain of a slot claimed for it and not written yet.
pub(super) fn unwritten(nonce: u64) -> Chain {
    Chain {
        nonce,
        len: 0,
        head: NONE,
        tail: NONE,
        pages: 0,
    }
}

/// A change of [`BTree::apply`] whose value went to a chain, pending in
/// meta slot `slot`.
pub(super) struct Spilled {
    pub change: usize,
    pub chain: Chain,
    pub slot: usize,
}

/// Pending slot `slot`: `None` if free; a chain of 0 pages if claimed
/// and not written yet.
fn pending(meta: &[u8], slot: usize) -> Option<Chain> {
    let at = META_PENDING + slot * PENDING_SLOT;
    let nonce = rd64(meta, at + 24);
    (nonce != 0).then(|| Chain {
        nonce,
        len: 0,
        head: rd64(meta, at),
        tail: rd64(meta, at + 8),
        pages: rd64(meta, at + 16),
    })
}

fn set_pending(meta: &mut [u8], slot: usize, c: &Chain) {
    let at = META_PENDING + slot * PENDING_SLOT;
    wr64(meta, at, c.head);
    wr64(meta, at + 8, c.tail);
    wr64(meta, at + 16, c.pages);
    wr64(meta, at + 24, c.nonce);
}

/// Empties pending slot `slot` of the meta page `meta`.
pub(super) fn clear_pending(meta: &mut [u8], slot: usize) {
    let at = META_PENDING + slot * PENDING_SLOT;
    meta[at..at + PENDING_SLOT].fill(0);
}

impl<'p, B: BufferManager + ?Sized> BTree<'p, B> {
    /// Reads the value on chain `c` into `out`. A page that is not the
    /// chain's (the chain was freed after its reference was read) restarts
    /// the caller, which reads the reference again; the same chain found
    /// wrong twice is damage, since a freed chain's number never returns to
    /// a leaf. `suspect` carries that across attempts.
    pub(super) fn read_value(
        &self,
        c: &Chain,
        out: &mut Vec<u8>,
        suspect: &mut Option<u64>,
    ) -> R<()> {
        if !c.plausible() {
            return Err(corrupt(
                PageId(c.head),
                "an overflow reference that does not parse",
            ));
        }
        out.clear();
        let mut at = c.head;
        for n in 0..c.pages {
            self.visit();
            let g = self.pool.fix_shared(PageId(at))?;
            let b = g.bytes();
            let len = rd16(b, O_LEN);
            if b[KIND] != OVERFLOW || rd64(b, O_NONCE) != c.nonce || len > CHUNK {
                if *suspect == Some(c.nonce) {
                    return Err(corrupt(
                        PageId(at),
                        "an overflow page is not the chain's its leaf refers to",
                    ));
                }
                *suspect = Some(c.nonce);
                return Err(E::Restart);
            }
            out.extend_from_slice(&b[O_DATA..O_DATA + len]);
            if n + 1 == c.pages && (at != c.tail || out.len() as u64 != c.len) {
                return Err(corrupt(PageId(at), "an overflow chain of the wrong length"));
            }
            at = rd64(b, LINK_A);
        }
        Ok(())
    }

    /// Claims `n` pending slots at once, each with its chain's number (a
    /// unit of its own): all or none, so a writer never holds some slots
    /// while it waits for more, and writers cannot deadlock over them.
    pub(super) fn claim_slots(&self, n: usize) -> Result<Vec<(usize, u64)>, TreeError> {
        if n > PENDING_SLOTS {
            return Err(TreeError::TooManyLargeValues {
                values: n,
                limit: PENDING_SLOTS,
            });
        }
        if let Some(log) = self.log {
            log.prepare()?;
        }
        self.retry(|| {
            let _reserved = self.reserve(1).map_err(E::Fail)?;
            let mut m = Mtr::new(true);
            let mi = self.latch_meta(&mut m)?;
            let free: Vec<usize> = (0..PENDING_SLOTS)
                .filter(|&s| pending(m.b(mi), s).is_none())
                .take(n)
                .collect();
            if free.len() < n {
                // Others' chains are pending: wait for them.
                return Err(E::Restart);
            }
            let base = rd64(m.b(mi), META_CHAIN);
            wr64(m.bm(mi), META_CHAIN, base + n as u64);
            let claims: Vec<(usize, u64)> = free.into_iter().zip(base + 1..).collect();
            for &(slot, nonce) in &claims {
                set_pending(m.bm(mi), slot, &unwritten(nonce));
            }
            m.commit(self.log)?;
            Ok(claims)
        })
    }

    /// Writes `val` to a new chain numbered `nonce`, pending in the slot
    /// `slot` claimed for it ([`claim_slots`](Self::claim_slots)); returns
    /// the chain. On an error the part written is freed and the slot
    /// given back.
    pub(super) fn write_chain(
        &self,
        val: &[u8],
        slot: usize,
        nonce: u64,
    ) -> Result<Chain, TreeError> {
        let log = self.log.expect("only a logged tree has overflow chains");
        let len = val.len();
        let mut done = Chain {
            len: len as u64,
            ..unwritten(nonce)
        };
        let mut left = len.div_ceil(CHUNK);
        while left > 0 {
            let from = left.saturating_sub(PER_UNIT);
            let (mut restarts, mut full) = (0, 0);
            let r = loop {
                if let Err(e) = log.prepare() {
                    break Err(e);
                }
                let unit = (|| -> R<Chain> {
                    // Declared before `m`: given back after its pages are
                    // unlatched.
                    let _reserved = self.reserve(left - from + 1).map_err(E::Fail)?;
                    let mut m = Mtr::new(true);
                    let mi = self.latch_meta(&mut m)?;
                    let mut c = done;
                    for j in (from..left).rev() {
                        let i = self.new_node(&mut m)?;
                        let data = &val[j * CHUNK..len.min((j + 1) * CHUNK)];
                        let b = m.bm(i);
                        b[PAGE_HEADER..].fill(0);
                        b[KIND] = OVERFLOW;
                        wr64(b, LINK_A, c.head);
                        wr64(b, O_NONCE, c.nonce);
                        wr16(b, O_LEN, data.len());
                        b[O_DATA..O_DATA + data.len()].copy_from_slice(data);
                        c.head = m.id(i).0;
                        if c.tail == NONE {
                            c.tail = c.head;
                        }
                        c.pages += 1;
                    }
                    set_pending(m.bm(mi), slot, &c);
                    m.commit(self.log)?;
                    Ok(c)
                })();
                match unit {
                    Ok(d) => break Ok(d),
                    Err(E::Fail(e)) => break Err(e),
                    Err(E::LogFull(e)) => {
                        if let Err(e) = self.make_room(&mut full, e) {
                            break Err(e);
                        }
                    }
                    Err(E::Grow(pages)) => {
                        if let Err(e) = self.grow(pages) {
                            break Err(e);
                        }
                    }
                    Err(E::Restart) | Err(E::Split(..)) => self.back_off(&mut restarts),
                }
            };
            match r {
                Ok(c) => done = c,
                Err(e) => {
                    self.release(done, slot);
                    return Err(e);
                }
            }
            left = from;
        }
        Ok(done)
    }

    /// Frees the chains of `spilled` that a failed change left pending.
    pub(super) fn release_chains(&self, spilled: &[Spilled]) {
        for s in spilled {
            self.release(s.chain, s.slot);
        }
    }

    /// Frees chain `c` (of no pages: a slot claimed and not written),
    /// pending in `slot`, if it still is, and gives the slot back. A failure
    /// is logged: the chain stays pending and the next open frees it.
    pub(super) fn release(&self, c: Chain, slot: usize) {
        if let Err(e) = self.free_pending(slot, Some(c)) {
            log::warn!(
                "btree: freeing overflow chain {} ({} pages) after a failed change: {e}; it \
                 stays pending until the store is opened again",
                c.nonce,
                c.pages
            );
        }
    }

    /// One unit: frees the chain pending in `slot` (if any, and if it is
    /// `expect` where that is given) and empties the slot. Returns the pages
    /// freed.
    fn free_pending(&self, slot: usize, expect: Option<Chain>) -> Result<u64, TreeError> {
        self.retry(|| {
            let _reserved = self.reserve(2).map_err(E::Fail)?;
            let mut m = Mtr::new(true);
            let mi = self.latch_meta(&mut m)?;
            let Some(c) = pending(m.b(mi), slot) else {
                return Ok(0);
            };
            if expect.is_some_and(|e| Chain { len: 0, ..e } != c) {
                return Ok(0);
            }
            if c.pages > 0 {
                self.free_chain(&mut m, mi, &c)?;
            }
            clear_pending(m.bm(mi), slot);
            m.commit(self.log)?;
            Ok(c.pages)
        })
    }

    /// Splices chain `c` onto the free list in unit `m`, which holds the
    /// meta page at `mi`: its last page is latched (into `m`) and linked to
    /// the list's old head.
    pub(super) fn free_chain(&self, m: &mut Mtr<'p, B>, mi: usize, c: &Chain) -> R<()> {
        if !c.plausible() {
            return Err(corrupt(
                m.id(mi),
                "an overflow reference that does not parse",
            ));
        }
        let ti = match m.find(c.tail) {
            Some(i) => i,
            None => m.add(self.pool.fix_exclusive(PageId(c.tail))?),
        };
        let t = m.b(ti);
        if t[KIND] != OVERFLOW || rd64(t, O_NONCE) != c.nonce {
            return Err(corrupt(
                PageId(c.tail),
                "the last page of an overflow chain being freed is not the chain's",
            ));
        }
        let (head, count) = (rd64(m.b(mi), META_FREE), rd64(m.b(mi), META_FREE_COUNT));
        wr64(m.bm(ti), LINK_A, head);
        let mb = m.bm(mi);
        wr64(mb, META_FREE, c.head);
        wr64(mb, META_FREE_COUNT, count + c.pages);
        Ok(())
    }

    /// Frees the chains a crash left pending (see the module docs); each
    /// is a unit. Returns the pages freed.
    pub(super) fn reclaim_pending(&self) -> Result<u64, TreeError> {
        let busy: Vec<usize> = {
            let g = self.pool.fix_shared(self.meta)?;
            (0..PENDING_SLOTS)
                .filter(|&s| pending(g.bytes(), s).is_some())
                .collect()
        };
        let mut pages = 0;
        for slot in busy {
            if let Some(log) = self.log {
                log.prepare()?;
            }
            pages += self.free_pending(slot, None)?;
        }
        if pages > 0 {
            log::info!("btree: freed {pages} overflow pages a crash left pending");
        }
        Ok(pages)
    }

    /// Checks chain `c` (referred to from `from`): every page the chain's,
    /// linked in order to its last, holding the value's length (if known:
    /// a pending chain's is not), every page but the last full. Adds its
    /// pages to `pages`.
    pub(super) fn check_chain(
        &self,
        from: PageId,
        c: &Chain,
        complete: bool,
        pages: &mut Vec<PageId>,
    ) -> Result<(), TreeError> {
        let bad = |page, what| TreeError::Corrupt { page, what };
        if !c.plausible() {
            return Err(bad(from, "an overflow reference that does not parse"));
        }
        let mut at = c.head;
        let mut len = 0u64;
        for n in 0..c.pages {
            let g = self.pool.fix_shared(PageId(at))?;
            let b = g.bytes();
            if b[KIND] != OVERFLOW || rd64(b, O_NONCE) != c.nonce {
                return Err(bad(
                    PageId(at),
                    "a page of an overflow chain is not the chain's",
                ));
            }
            let l = rd16(b, O_LEN);
            let last = n + 1 == c.pages;
            if l > CHUNK || l == 0 || (complete && !last && l != CHUNK) {
                return Err(bad(PageId(at), "an overflow page's length is wrong"));
            }
            len += l as u64;
            pages.push(PageId(at));
            let next = rd64(b, LINK_A);
            if last && (at != c.tail || next != NONE) {
                return Err(bad(
                    PageId(at),
                    "an overflow chain does not end at its last page",
                ));
            }
            at = next;
        }
        if complete && len != c.len {
            return Err(bad(
                from,
                "an overflow chain holds fewer bytes than its reference",
            ));
        }
        Ok(())
    }

    /// Checks the pending chains (see [`check_chain`](Self::check_chain)).
    pub(super) fn check_pending(&self, pages: &mut Vec<PageId>) -> Result<(), TreeError> {
        let chains: Vec<Chain> = {
            let g = self.pool.fix_shared(self.meta)?;
            (0..PENDING_SLOTS)
                .filter_map(|s| pending(g.bytes(), s))
                .filter(|c| c.pages > 0)
                .collect()
        };
        for c in chains {
            self.check_chain(self.meta, &c, false, pages)?;
        }
        Ok(())
    }
}
