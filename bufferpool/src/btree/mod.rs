//! A B+tree on any [`BufferManager`]: variable-length keys and values,
//! insert, update, delete, point lookups, forward and backward range scans,
//! node splits and merges. Readers use optimistic lock coupling (no latch is
//! taken on the way down; each node is validated before its child pointer
//! is trusted); writers descend optimistically and upgrade only the nodes
//! they change (a failed upgrade restarts the operation). A unit holding
//! latches waits for another only rightwards (a leaf's neighbour),
//! downwards (a collapsing root's child) or for a free page, and every
//! unit that needs the meta page takes it first: so there is no cycle and
//! no deadlock.
//!
//! # Durability: mini-transactions
//! A tree made with [`BTree::create_logged`] logs every change through a
//! [`TreeLog`] (the engine: `crate::mtr`). A change (a leaf's inserts and
//! deletes, a split, a merge, a new or collapsed root, the free list, the
//! allocation of a page) is a *unit*: it latches its pages exclusively as
//! it goes, keeping each one's contents from when it was latched, changes
//! them, and is logged as one atomic run of records while they are still
//! latched; a unit given up half-way (no room in a leaf, a latch taken by
//! another, a full log) puts every page back as it was before unlatching
//! it. [`BTree::apply`] makes several leaf changes one unit (a multi-key
//! transaction: after a crash all of them or none); the splits that make
//! room for them are units of their own, which change no content.
//! Units reserve their frames first ([`TreeLog::reserve`]), so that units
//! in flight never latch the whole pool between them.
//!
//! It is `no_std` + `alloc` and generic over the pool, so the same source
//! runs on the process pools and on the guest's.
//!
//! # Limits
//! Keys are at most [`MAX_KEY`] (512) bytes and an entry (key + value) in a
//! node at most [`MAX_ENTRY`] (1024) bytes, a quarter of a page, so a node
//! holding one entry and two fences of the longest kind still has room for
//! another entry, and a split always makes progress. In a logged tree a
//! larger value (up to [`MAX_VALUE`], 1 MiB) goes to a chain of overflow
//! pages and its leaf entry holds a reference to it (see `overflow`); a
//! tree that is not logged refuses it.
//!
//! # Node format (after the 32-byte page header of [`crate::page`])
//! The layout of vmcache's `BTreeNode` (after LeanStore): each slot carries
//! the first 8 bytes of its key (after the node's prefix) as an
//! order-preserving big-endian number, the *head*, and a search compares
//! heads as integers, touching a key's bytes only when two heads tie and
//! both keys are longer than 8 bytes. In a node of more than 32 entries a
//! hint array (the heads of 16 slots spread evenly over the node) narrows
//! the search to a few slots; the slots left (all of them in a smaller
//! node) are searched by counting the heads below the key's, every one, so
//! that their cache misses overlap instead of following one another as in a
//! binary search. Every
//! node carries fences (the bounds its parent gives it) and stores its keys
//! without their common prefix.
//! ```text
//!  32  u8   kind: 1 leaf, 2 inner, 3 meta, 4 free (unlinked),
//!           5 overflow (see `overflow`)
//!  33  u8   flags: bit 0 = this node is the root
//!  34  u16  count of entries
//!  36  u16  heap start (the heap grows down from the page's end)
//!  38  u16  live heap bytes (keys, values and fences)
//!  40  u64  leaf: right sibling; inner: upper child (keys > every key);
//!           meta: root
//!  48  u64  the prefix's head (its first up to 8 bytes, big-endian)
//!  56  u16  prefix length: the bytes the fences share, cut from every key
//!  58  u16  lower fence length (0xffff: none, -infinity), exclusive
//!  60  u16  upper fence length (0xffff: none, +infinity), inclusive
//!  64  u64 x 16  hints: hint i is the head of slot (i + 1) * count / 17
//! 192  u64  leaf: left sibling
//! 208  slots, 16 bytes each, sorted by key: the head (u64), then a u64
//!      of the entry's heap offset (bits 0..13), its key length without
//!      the prefix (bits 13..23) and in bits 23..64 a leaf's value length
//!      (plus bit 63 if the value is a reference to an overflow chain) or
//!      an inner node's child page id (so a search that ends in an inner
//!      slot has the child without touching the heap)
//! ...  heap: entries (key without the prefix, then a leaf's value)
//!      growing down, then the lower fence, then the upper fence at the
//!      page's end
//! ```
//! Words a reader loads are aligned (heads, slot words, hints, links), so
//! an optimistic read of one is a single load. Keys in a node are in its
//! fences' range `(lower, upper]` and so start with their common prefix. An
//! inner entry `(k, c)` sends keys `<= k` (and greater than the previous
//! entry's key) to `c`, whose fences are exactly those two keys. Child ids
//! in slots have 41 bits ([`MAX_PAGES`] pages, 8 PiB; every pool's limit is
//! lower). Missing
//! siblings are `u64::MAX`.
//!
//! # The meta page
//! ```text
//!  32  u8   kind: 3
//!  40  u64  the root
//!  48  u64  the free list's first page (u64::MAX: empty); a free page
//!           (kind 4) links the next in its bytes 40..48
//!  56  u64  pages on the free list
//!  64  u64  a logged tree: the next page of its area never used (the
//!           area is the meta page's id up to it); 0: the pool allocates
//!  72  u64  the area's first page (the meta page)
//!  80  u64  the last overflow chain's number (each chain gets the next)
//!  96  pending overflow chains, 32 slots of 32 bytes: head, tail, pages,
//!      chain number
//!      (0: the slot is empty)
//! ```
//! In a logged tree, merges put freed nodes on the free list and splits
//! take them from it, in the same units, so freed pages are reused across
//! restarts (a tree that is not logged keeps its free pages in memory); a
//! logged
//! tree takes new pages from its area and fails with [`TreeError::Full`]
//! (the change undone) once the pool's pages are all in use.
//!
//! # The root
//! The tree caches its root's id; the root carries the root flag, cleared
//! (under the exclusive latch that changes it) whenever the node stops
//! being the root, so a reader that finds the flag in a read that validates
//! knows it started from the root without fixing the meta page. A cached
//! id whose node lacks the flag is refreshed from the meta page.

use crate::page::{PageBuf, PAGE_HEADER};
use crate::pool::racy::{be_head, top_bytes};
use crate::pool::{
    BufferManager, ExclusiveGuard, OptimisticGuard, PageRead, Pool, PoolError, Resident, Stale,
};
use crate::{Lsn, PageId, PAGE_SIZE};
use alloc::vec::Vec;
use core::cmp::Ordering;
use core::fmt;
use core::sync::atomic::{self, AtomicU64};

mod overflow;
pub use overflow::MAX_VALUE;
use overflow::{Chain, Spilled, OVERFLOW, REF_LEN};

/// Longest key in bytes.
pub const MAX_KEY: usize = 512;
/// Longest entry (key + value) in bytes.
pub const MAX_ENTRY: usize = 1024;

const KIND: usize = PAGE_HEADER;
const FLAGS: usize = PAGE_HEADER + 1;
const COUNT: usize = PAGE_HEADER + 2;
const HEAP: usize = PAGE_HEADER + 4;
const LIVE: usize = PAGE_HEADER + 6;
const LINK_A: usize = PAGE_HEADER + 8;
const PREFIX_HEAD: usize = PAGE_HEADER + 16;
const PREFIX: usize = PAGE_HEADER + 24;
const LOWER: usize = PAGE_HEADER + 26;
const UPPER: usize = PAGE_HEADER + 28;
const HINTS: usize = PAGE_HEADER + 32;
const HINT_COUNT: usize = 16;
const _: () = assert!(HINT_COUNT.is_power_of_two());
const LINK_B: usize = HINTS + HINT_COUNT * 8;
const SLOTS: usize = LINK_B + 16;
const SLOT: usize = 16;
/// The slot word's fields: heap offset, key length, then the value length
/// or child id.
const OFF_MASK: u64 = (1 << 13) - 1;
const KLEN_SHIFT: u32 = 13;
const KLEN_MASK: u64 = (1 << 10) - 1;
const REST_SHIFT: u32 = 23;
/// Page ids a tree can hold in its inner slots.
pub const MAX_PAGES: u64 = 1 << (64 - REST_SHIFT);
const MAX_COUNT: usize = (PAGE_SIZE - SLOTS) / SLOT;
const NONE: u64 = u64::MAX;
/// A fence length meaning "no fence" (the node is the first or last of its
/// level: -infinity or +infinity).
const NO_FENCE: usize = 0xffff;
/// Ranges of at most this many slots (512 bytes of slots, 8 cache lines)
/// are searched by a linear count of heads, whose loads go out together: a
/// leaf of 120-byte values (27 entries) is searched in one round trip to
/// memory instead of one for the hints and one for the slots they point to.
const LINEAR_MAX: usize = 32;
/// Nodes with more entries are searched through their hints first (which
/// leave at most `count / 17 + 1` slots).
const HINT_MIN: usize = LINEAR_MAX + 1;

const LEAF: u8 = 1;
const INNER: u8 = 2;
const META: u8 = 3;
const FREE: u8 = 4;

/// The root flag (in `FLAGS`).
const ROOT: u8 = 1;

// The meta page: the root's id in `LINK_A`, then these.
/// The first page on the free list (`NONE`: empty); each free page links
/// the next in `LINK_A`.
const META_FREE: usize = PAGE_HEADER + 16;
/// Pages on the free list.
const META_FREE_COUNT: usize = PAGE_HEADER + 24;
/// A logged tree: the next page of its area never used yet (its pages
/// are `META_FIRST..META_NEXT`); 0 in a tree whose pages the pool
/// allocates.
const META_NEXT: usize = PAGE_HEADER + 32;
/// The first page of the tree's area: the meta page itself.
const META_FIRST: usize = PAGE_HEADER + 40;
/// The number of the last overflow chain made (see `overflow`).
const META_CHAIN: usize = PAGE_HEADER + 48;
/// Overflow chains being written (see `overflow`): `PENDING_SLOTS` slots of
/// (head, tail, pages, chain number).
const META_PENDING: usize = PAGE_HEADER + 64;
const PENDING_SLOTS: usize = 32;
const PENDING_SLOT: usize = 32;
const _: () = assert!(META_PENDING + PENDING_SLOTS * PENDING_SLOT <= PAGE_SIZE);

/// In a leaf slot's value-length field: the value is a [`REF_LEN`]-byte
/// reference to an overflow chain.
const REF_FLAG: u64 = 1 << 40;
const _: () = assert!(REF_FLAG < MAX_PAGES && (REF_FLAG as usize) > PAGE_SIZE);

/// Most changes one [`BTree::apply`] takes (each may latch a leaf of its
/// own, and all are held together).
pub const MAX_CHANGES: usize = 64;

// Loads a reader does must be aligned words.
const _: () =
    assert!(PREFIX_HEAD.is_multiple_of(8) && HINTS.is_multiple_of(8) && LINK_B.is_multiple_of(8));
const _: () =
    assert!(SLOTS.is_multiple_of(SLOT) && SLOT.is_multiple_of(8) && LINK_A.is_multiple_of(8));

/// A node is merged with a sibling when its slots and live bytes fall
/// below this.
const UNDERFULL: usize = (PAGE_SIZE - SLOTS) / 4;

/// What went wrong in a tree operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TreeError {
    /// The pool failed.
    Pool(PoolError),
    /// A key longer than [`MAX_KEY`].
    KeyTooLong { len: usize },
    /// A key + value longer than [`MAX_ENTRY`], in a tree that is not
    /// logged (a logged tree moves the value to overflow pages).
    EntryTooLarge { len: usize },
    /// A value longer than [`MAX_VALUE`].
    ValueTooLarge { len: usize },
    /// A latched node does not parse: the tree is damaged.
    Corrupt { page: PageId, what: &'static str },
    /// The pool gave the tree a page beyond the [`MAX_PAGES`] its inner
    /// nodes can address.
    PageTooFar { page: PageId },
    /// A logged tree needs a new page and every one of the store's `pages`
    /// is in use: the change was undone (nothing acknowledged is lost).
    Full { pages: u64 },
    /// [`BTree::apply`] was given more than [`MAX_CHANGES`] changes.
    TooManyChanges { changes: usize },
    /// [`BTree::apply`] was given more than `limit` values for overflow
    /// chains (the meta page's pending slots).
    TooManyLargeValues { values: usize, limit: usize },
    /// A unit would latch `pages` pages, more than the `limit` units may
    /// hold at once (the engine's: half the pool).
    TooManyPages { pages: usize, limit: usize },
    /// The log or its engine failed (see [`crate::Error`]).
    Engine(crate::engine::Error),
    /// [`BTree::lookup_resident`] needs page `page`, which is not resident
    /// (it returns this as [`Resident::Missing`]; no other operation
    /// returns it).
    NotResident { page: PageId },
}

impl fmt::Display for TreeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TreeError::Pool(e) => write!(f, "{e}"),
            TreeError::KeyTooLong { len } => write!(f, "key of {len} bytes (max {MAX_KEY})"),
            TreeError::EntryTooLarge { len } => write!(
                f,
                "entry of {len} bytes (max {MAX_ENTRY} in a tree that is not logged: only a \
                 logged tree has overflow pages)"
            ),
            TreeError::ValueTooLarge { len } => {
                write!(f, "value of {len} bytes (max {MAX_VALUE})")
            }
            TreeError::Corrupt { page, what } => write!(f, "node {} is damaged: {what}", page.0),
            TreeError::PageTooFar { page } => write!(
                f,
                "page {} is beyond the {MAX_PAGES} pages a tree can address",
                page.0
            ),
            TreeError::Full { pages } => write!(
                f,
                "disk full: all {pages} pages of the store are in use; the change was not \
                 made and nothing acknowledged is lost"
            ),
            TreeError::TooManyChanges { changes } => write!(
                f,
                "a transaction of {changes} changes (at most {MAX_CHANGES})"
            ),
            TreeError::TooManyLargeValues { values, limit } => write!(
                f,
                "a transaction of {values} values larger than a quarter page (at most {limit})"
            ),
            TreeError::Engine(e) => write!(f, "{e}"),
            TreeError::NotResident { page } => write!(f, "page {} is not resident", page.0),
            TreeError::TooManyPages { pages, limit } => write!(
                f,
                "a change would hold {pages} pages at once, more than the {limit} allowed (half \
                 the buffer pool): fewer keys per transaction, or a larger pool"
            ),
        }
    }
}

impl From<PoolError> for TreeError {
    fn from(e: PoolError) -> TreeError {
        TreeError::Pool(e)
    }
}

/// Internal: restart the operation, fail it, split a leaf that has no
/// room for change `i` of [`BTree::apply`] first, or make room in the log
/// or grow the tree's area first (the unit was undone).
enum E {
    Restart,
    Fail(TreeError),
    Split(PageId, usize),
    LogFull(TreeError),
    /// The unit needs the area grown to this many pages (it was undone).
    Grow(u64),
}

/// Times an operation makes room in the log before it gives up: a unit
/// that does not fit a log just checkpointed never will.
const LOG_FULL_TRIES: u32 = 3;

impl From<Stale> for E {
    fn from(_: Stale) -> E {
        E::Restart
    }
}

impl From<PoolError> for E {
    fn from(e: PoolError) -> E {
        E::Fail(TreeError::Pool(e))
    }
}

type R<T> = Result<T, E>;

fn corrupt(page: PageId, what: &'static str) -> E {
    E::Fail(TreeError::Corrupt { page, what })
}

// ---- reading nodes (optimistic or latched) ----
//
// Everything read here may be garbage in an optimistic read (the caller
// validates before acting on it): every offset is checked by `PageRead`,
// every loop is bounded by values checked against the page.

fn kind<P: PageRead + ?Sized>(p: &P) -> Result<u8, Stale> {
    p.u8_at(KIND)
}

fn count<P: PageRead + ?Sized>(p: &P) -> Result<usize, Stale> {
    let c = p.u16_at(COUNT)? as usize;
    if c > MAX_COUNT {
        return Err(Stale);
    }
    Ok(c)
}

/// The fields of a slot word: (heap offset, key length without the
/// prefix, value length or child id).
#[inline(always)]
fn unpack(w: u64) -> (usize, usize, u64) {
    (
        (w & OFF_MASK) as usize,
        ((w >> KLEN_SHIFT) & KLEN_MASK) as usize,
        w >> REST_SHIFT,
    )
}

#[inline(always)]
fn pack(off: usize, klen: usize, rest: u64) -> u64 {
    debug_assert!(off as u64 <= OFF_MASK && klen as u64 <= KLEN_MASK && rest < MAX_PAGES);
    off as u64 | (klen as u64) << KLEN_SHIFT | rest << REST_SHIFT
}

/// Slot `i`: (heap offset, key length without the prefix, value length or
/// child id), the key checked to lie in the page.
#[inline]
fn slot<P: PageRead + ?Sized>(p: &P, i: usize) -> Result<(usize, usize, u64), Stale> {
    let (off, klen, rest) = unpack(p.u64_at(SLOTS + i * SLOT + 8)?);
    if off < SLOTS || off + klen > PAGE_SIZE {
        return Err(Stale);
    }
    Ok((off, klen, rest))
}

/// A leaf's slot `i`: (heap offset, key length, value length, whether the
/// value is a reference to an overflow chain), checked to lie in the page.
#[inline]
fn leaf_slot<P: PageRead + ?Sized>(p: &P, i: usize) -> Result<(usize, usize, usize, bool), Stale> {
    let (off, klen, rest) = slot(p, i)?;
    let vlen = rest & !REF_FLAG;
    if vlen > (PAGE_SIZE - off - klen) as u64 {
        return Err(Stale);
    }
    Ok((off, klen, vlen as usize, rest & REF_FLAG != 0))
}

/// The head of slot `i`.
#[inline]
fn head_at<P: PageRead + ?Sized>(p: &P, i: usize) -> Result<u64, Stale> {
    p.u64_at(SLOTS + i * SLOT)
}

/// Where the lower fence starts (the prefix is its first bytes).
fn lower_fence_at<P: PageRead + ?Sized>(p: &P) -> Result<usize, Stale> {
    let fence = |at| -> Result<usize, Stale> {
        let l = p.u16_at(at)? as usize;
        Ok(if l == NO_FENCE { 0 } else { l })
    };
    let used = fence(UPPER)? + fence(LOWER)?;
    if used > PAGE_SIZE - SLOTS {
        return Err(Stale);
    }
    Ok(PAGE_SIZE - used)
}

/// The slot whose head hint `i` holds, in a node of `n` entries.
#[inline(always)]
fn hint_pos(i: usize, n: usize) -> usize {
    (i + 1) * n / (HINT_COUNT + 1)
}

/// `key` against the node's prefix: Less or Greater if the key sorts
/// before or after every key that starts with the prefix (a proper prefix
/// of the prefix sorts before), Equal if it starts with it; and the
/// prefix's length.
#[inline]
fn cmp_prefix<P: PageRead + ?Sized>(p: &P, key: &[u8]) -> Result<(Ordering, usize), Stale> {
    let plen = p.u16_at(PREFIX)? as usize;
    if plen == 0 {
        return Ok((Ordering::Equal, 0));
    }
    let m = plen.min(key.len());
    let h = m.min(8);
    let ph = p.u64_at(PREFIX_HEAD)? & top_bytes(h);
    let o = be_head(&key[..h]).cmp(&ph);
    if o != Ordering::Equal {
        return Ok((o, plen));
    }
    if m > 8 {
        let at = lower_fence_at(p)?;
        let o = p.compare(at + 8, m - 8, &key[8..m])?.reverse();
        if o != Ordering::Equal {
            return Ok((o, plen));
        }
    }
    Ok((
        if key.len() < plen {
            Ordering::Less
        } else {
            Ordering::Equal
        },
        plen,
    ))
}

/// The range of positions the hints leave for a key whose head is `kh`:
/// the first position `>= key` lies in `lo..=hi`, the slots before `lo`
/// have smaller heads and slot `hi` (if any) a larger one.
#[inline]
fn hint_range<P: PageRead + ?Sized>(p: &P, n: usize, kh: u64) -> Result<(usize, usize), Stale> {
    let hint = |i: usize| p.u64_at(HINTS + 8 * i);
    // The hints below the key's head: a branchless halving (hints are
    // sorted), then those equal to it.
    let mut below = 0;
    let mut step = HINT_COUNT / 2;
    while step > 0 {
        below += step * ((hint(below + step - 1)? < kh) as usize);
        step /= 2;
    }
    if below == HINT_COUNT - 1 {
        below += (hint(below)? < kh) as usize;
    }
    let mut upto = below;
    while upto < HINT_COUNT && hint(upto)? == kh {
        upto += 1;
    }
    // Slots up to hint `below - 1`'s are below the key (their heads are);
    // hint `upto`'s slot is above it.
    let lo = if below == 0 {
        0
    } else {
        hint_pos(below - 1, n) + 1
    };
    let hi = if upto == HINT_COUNT {
        n
    } else {
        hint_pos(upto, n)
    };
    if lo > hi {
        return Err(Stale);
    }
    Ok((lo, hi))
}

/// A key (`rest`: without the prefix) against entry `i`'s key, given that
/// their heads are equal.
#[inline(always)]
fn cmp_tail<P: PageRead + ?Sized>(p: &P, i: usize, rest: &[u8]) -> Result<Ordering, Stale> {
    let (off, klen, _) = slot(p, i)?;
    if rest.len() <= 8 || klen <= 8 {
        // Equal heads: the shorter key is a prefix of the other.
        return Ok(rest.len().cmp(&klen));
    }
    Ok(p.compare(off + 8, klen - 8, &rest[8..])?.reverse())
}

/// First position whose key is `>= key` (`None`: +infinity), and whether it
/// is equal.
#[inline]
fn lower_bound<P: PageRead + ?Sized>(p: &P, key: Option<&[u8]>) -> Result<(usize, bool), Stale> {
    let n = count(p)?;
    let Some(key) = key else {
        return Ok((n, false));
    };
    let (o, plen) = cmp_prefix(p, key)?;
    match o {
        Ordering::Less => return Ok((0, false)),
        Ordering::Greater => return Ok((n, false)),
        Ordering::Equal => {}
    }
    let rest = &key[plen..];
    let kh = be_head(rest);
    // The first position >= key is in lo..=hi; slots before lo are below
    // the key, slot hi (if any) is not.
    let (mut lo, mut hi) = if n >= HINT_MIN {
        hint_range(p, n, kh)?
    } else {
        (0, n)
    };
    // Halve a range the hints left wide (many keys sharing 8 bytes after
    // the prefix), comparing whole keys.
    while hi - lo > LINEAR_MAX {
        let mid = lo + (hi - lo) / 2;
        let o = match kh.cmp(&head_at(p, mid)?) {
            Ordering::Equal => cmp_tail(p, mid, rest)?,
            o => o,
        };
        match o {
            Ordering::Less => hi = mid,
            Ordering::Greater => lo = mid + 1,
            Ordering::Equal => return Ok((mid, true)),
        }
    }
    // Count the heads below the key's in the range, every one (no early
    // exit, so that the loads go out together instead of one miss after
    // another as in a binary search).
    let mut pos = lo;
    for i in lo..hi {
        pos += (head_at(p, i)? < kh) as usize;
    }
    // Equal heads (keys sharing their first 8 bytes after the prefix):
    // compare the rest, up to `hi`.
    while pos < hi && head_at(p, pos)? == kh {
        match cmp_tail(p, pos, rest)? {
            Ordering::Less => break,
            Ordering::Equal => return Ok((pos, true)),
            Ordering::Greater => pos += 1,
        }
    }
    Ok((pos, false))
}

/// An inner node's child at `pos` (`count` is the upper child).
#[inline]
fn child<P: PageRead + ?Sized>(p: &P, pos: usize) -> Result<u64, Stale> {
    if pos >= count(p)? {
        return p.u64_at(LINK_A);
    }
    Ok(unpack(p.u64_at(SLOTS + pos * SLOT + 8)?).2)
}

// ---- changing latched nodes ----

fn rd16(b: &[u8], at: usize) -> usize {
    u16::from_le_bytes([b[at], b[at + 1]]) as usize
}
fn wr16(b: &mut [u8], at: usize, v: usize) {
    b[at..at + 2].copy_from_slice(&(v as u16).to_le_bytes());
}
fn rd64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}
fn wr64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

fn init(b: &mut [u8], k: u8) {
    b[PAGE_HEADER..].fill(0);
    b[KIND] = k;
    wr16(b, HEAP, PAGE_SIZE);
    wr16(b, LOWER, NO_FENCE);
    wr16(b, UPPER, NO_FENCE);
    wr64(b, LINK_A, NONE);
    wr64(b, LINK_B, NONE);
}

fn common_prefix(a: &[u8], b: &[u8]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

fn fence_len(b: &[u8], at: usize) -> Option<usize> {
    let l = rd16(b, at);
    (l != NO_FENCE).then_some(l)
}

/// A latched node's fences: (lower, upper).
fn fences(b: &[u8]) -> (Option<&[u8]>, Option<&[u8]>) {
    let (l, u) = (fence_len(b, LOWER), fence_len(b, UPPER));
    let u_at = PAGE_SIZE - u.unwrap_or(0);
    let l_at = u_at - l.unwrap_or(0);
    (l.map(|l| &b[l_at..l_at + l]), u.map(|u| &b[u_at..u_at + u]))
}

/// Bytes the fences take in the heap.
fn fence_bytes(b: &[u8]) -> usize {
    fence_len(b, LOWER).unwrap_or(0) + fence_len(b, UPPER).unwrap_or(0)
}

/// A latched node's prefix (the start of its lower fence).
fn prefix(b: &[u8]) -> &[u8] {
    let p = rd16(b, PREFIX);
    fences(b).0.map_or(&[][..], |l| &l[..p])
}

/// Whether `key` lies in the node's fences.
fn within(b: &[u8], key: &[u8]) -> bool {
    let (l, u) = fences(b);
    l.is_none_or(|l| key > l) && u.is_none_or(|u| key <= u)
}

/// Gives the empty node `b` (just `init`ed) its fences and prefix.
fn set_fences(b: &mut [u8], lower: Option<&[u8]>, upper: Option<&[u8]>) {
    debug_assert!(rd16(b, COUNT) == 0 && rd16(b, HEAP) == PAGE_SIZE);
    let ul = upper.map_or(0, <[u8]>::len);
    let ll = lower.map_or(0, <[u8]>::len);
    if let Some(u) = upper {
        b[PAGE_SIZE - ul..].copy_from_slice(u);
    }
    if let Some(l) = lower {
        b[PAGE_SIZE - ul - ll..PAGE_SIZE - ul].copy_from_slice(l);
    }
    wr16(b, LOWER, lower.map_or(NO_FENCE, <[u8]>::len));
    wr16(b, UPPER, upper.map_or(NO_FENCE, <[u8]>::len));
    wr16(b, HEAP, PAGE_SIZE - ul - ll);
    wr16(b, LIVE, ul + ll);
    let plen = match (lower, upper) {
        (Some(l), Some(u)) => common_prefix(l, u),
        _ => 0,
    };
    wr16(b, PREFIX, plen);
    let p = lower.unwrap_or(&[]);
    wr64(b, PREFIX_HEAD, be_head(&p[..plen.min(8)]));
}

/// Free bytes, counting holes left by removals.
fn free_space(b: &[u8]) -> usize {
    PAGE_SIZE - SLOTS - used(b)
}

/// Bytes taken by slots and the heap's live bytes.
fn used(b: &[u8]) -> usize {
    rd16(b, COUNT) * SLOT + rd16(b, LIVE)
}

/// The slot of entry `i` of a latched node: (offset, key length, bytes of
/// value in the heap (0 in an inner node), the slot's value-length field
/// (with [`REF_FLAG`]) or child id).
fn slot_of(b: &[u8], i: usize) -> (usize, usize, usize, u64) {
    let (off, klen, rest) = unpack(rd64(b, SLOTS + i * SLOT + 8));
    let vlen = if b[KIND] == INNER {
        0
    } else {
        (rest & !REF_FLAG) as usize
    };
    (off, klen, vlen, rest)
}

/// Whether leaf entry `i` of a latched leaf refers to an overflow chain.
fn is_ref(b: &[u8], i: usize) -> bool {
    slot_of(b, i).3 & REF_FLAG != 0
}

/// The heap bytes of entry `i` of a latched node: (key without the
/// prefix, a leaf's value; empty in an inner node).
fn entry(b: &[u8], i: usize) -> (&[u8], &[u8]) {
    let (off, klen, vlen, _) = slot_of(b, i);
    (&b[off..off + klen], &b[off + klen..off + klen + vlen])
}

/// Copies entry `i` of the latched node `src` to the end of the node being
/// built in `dst` (of the same kind); false if it does not fit.
fn copy_entry(dst: &mut [u8], src: &[u8], i: usize) -> bool {
    let key = key_at(src, i);
    if src[KIND] == INNER {
        push(dst, &key, &slot_of(src, i).3.to_le_bytes())
    } else {
        let n = rd16(dst, COUNT);
        insert_entry(dst, n, &key, entry(src, i).1, slot_of(src, i).3 & REF_FLAG)
    }
}

/// The whole key of entry `i` of a latched node.
fn key_at(b: &[u8], i: usize) -> Vec<u8> {
    let mut k = prefix(b).to_vec();
    k.extend_from_slice(entry(b, i).0);
    k
}

/// Recomputes the hints (after every change of the slots).
fn make_hints(b: &mut [u8]) {
    let n = rd16(b, COUNT);
    for i in 0..HINT_COUNT {
        let h = if n == 0 {
            0
        } else {
            rd64(b, SLOTS + hint_pos(i, n) * SLOT)
        };
        wr64(b, HINTS + 8 * i, h);
    }
}

/// Moves the entries together below the fences.
fn compact(b: &mut [u8]) {
    let mut tmp = PageBuf::zeroed();
    tmp.0.copy_from_slice(b);
    let n = rd16(b, COUNT);
    let mut heap = PAGE_SIZE - fence_bytes(b);
    for i in 0..n {
        let (k, v) = entry(&tmp.0, i);
        let len = k.len() + v.len();
        heap -= len;
        b[heap..heap + k.len()].copy_from_slice(k);
        b[heap + k.len()..heap + len].copy_from_slice(v);
        let (_, klen, _, rest) = slot_of(&tmp.0, i);
        wr64(b, SLOTS + i * SLOT + 8, pack(heap, klen, rest));
    }
    wr16(b, HEAP, heap);
}

/// Inserts `(key, val)` (the whole key, which starts with the node's
/// prefix) at position `pos`; false if it does not fit. An inner node's
/// value is the child id (8 bytes LE, below [`MAX_PAGES`]), kept in the
/// slot.
fn insert_at(b: &mut [u8], pos: usize, key: &[u8], val: &[u8]) -> bool {
    insert_entry(b, pos, key, val, 0)
}

/// [`insert_at`], with `flag` ([`REF_FLAG`] or 0) in a leaf entry's slot.
fn insert_entry(b: &mut [u8], pos: usize, key: &[u8], val: &[u8], flag: u64) -> bool {
    let plen = rd16(b, PREFIX);
    debug_assert!(key.starts_with(prefix(b)), "key outside the node's fences");
    let suffix = &key[plen..];
    let (val, rest) = if b[KIND] == INNER {
        (
            &[][..],
            u64::from_le_bytes(val.try_into().expect("a child id")),
        )
    } else {
        (val, val.len() as u64 | flag)
    };
    let need = suffix.len() + val.len();
    if free_space(b) < need + SLOT {
        return false;
    }
    let n = rd16(b, COUNT);
    if rd16(b, HEAP) < SLOTS + (n + 1) * SLOT + need {
        compact(b);
    }
    let heap = rd16(b, HEAP) - need;
    b[heap..heap + suffix.len()].copy_from_slice(suffix);
    b[heap + suffix.len()..heap + need].copy_from_slice(val);
    let at = SLOTS + pos * SLOT;
    b.copy_within(at..SLOTS + n * SLOT, at + SLOT);
    wr64(b, at, be_head(suffix));
    wr64(b, at + 8, pack(heap, suffix.len(), rest));
    wr16(b, HEAP, heap);
    wr16(b, COUNT, n + 1);
    let live = rd16(b, LIVE) + need;
    wr16(b, LIVE, live);
    make_hints(b);
    true
}

/// Appends `(key, val)` to a node being built; false if it does not fit.
fn push(b: &mut [u8], key: &[u8], val: &[u8]) -> bool {
    let n = rd16(b, COUNT);
    insert_at(b, n, key, val)
}

fn remove_at(b: &mut [u8], pos: usize) {
    let n = rd16(b, COUNT);
    let (k, v) = entry(b, pos);
    let len = k.len() + v.len();
    let at = SLOTS + pos * SLOT;
    b.copy_within(at + SLOT..SLOTS + n * SLOT, at);
    wr16(b, COUNT, n - 1);
    let live = rd16(b, LIVE) - len;
    wr16(b, LIVE, live);
    make_hints(b);
}

fn set_child(b: &mut [u8], pos: usize, c: PageId) {
    if pos >= rd16(b, COUNT) {
        wr64(b, LINK_A, c.0);
    } else {
        let (off, klen, _, _) = slot_of(b, pos);
        wr64(b, SLOTS + pos * SLOT + 8, pack(off, klen, c.0));
    }
}

fn live_child(b: &[u8], pos: usize) -> PageId {
    if pos >= rd16(b, COUNT) {
        PageId(rd64(b, LINK_A))
    } else {
        PageId(slot_of(b, pos).3)
    }
}

/// Where a tree's changes go to be durable: the engine (see
/// `crate::mtr`). Each change of the tree's pages (a leaf change, a
/// split, a merge, a new or collapsed root, the free list) is one
/// *mini-transaction*: its pages are latched exclusively as it goes, and
/// once it has changed them [`log`](TreeLog::log) logs the changes as one
/// atomic unit while they are still latched, so no page can be written
/// back before its change is in the log.
pub trait TreeLog<B: BufferManager + ?Sized>: Sync {
    /// Called before each tree operation, with no page latched: the log
    /// may take a checkpoint here.
    fn prepare(&self) -> Result<(), TreeError>;
    /// Logs the changes made to `pages` (page `i` held `before[i]` when it
    /// was latched) as one atomic unit, sets the changed pages' LSNs to its
    /// end, which it returns (`None`: no page changed, nothing logged), and
    /// unlatches them (empties `pages`). Pages equal to their before-image
    /// are left out. On an error nothing was logged and `pages` are left
    /// latched, for the tree to undo.
    fn log(
        &self,
        pages: &mut Vec<ExclusiveGuard<'_, B>>,
        before: &[PageBuf],
    ) -> Result<Option<Lsn>, Refused>;
    /// After [`Refused::LogFull`], with no page latched: makes room in the
    /// log (a checkpoint).
    fn make_room(&self) -> Result<(), TreeError>;
    /// Called with no page latched before a unit latches up to `pages`
    /// pages: reserves that many frames against the owner's limit for
    /// pages held by units in flight (the engine's: half the pool), waiting
    /// while others hold it, so that units never latch every frame between
    /// them. Released when the token drops; an error if `pages` is over the
    /// limit.
    fn reserve(&self, pages: usize) -> Result<Reserved<'_>, TreeError>;
    /// Pages the tree's area may use now (`0..pages()`).
    fn pages(&self) -> u64;
    /// Called with no page latched when a unit needed page `pages - 1`:
    /// grows the area to at least `pages` pages, or fails with
    /// [`TreeError::Full`] (the device holds no more) or the engine's
    /// reason.
    fn grow(&self, pages: u64) -> Result<(), TreeError>;
}

/// Frames reserved by [`TreeLog::reserve`]; given back on drop.
pub struct Reserved<'a> {
    held: Option<&'a core::sync::atomic::AtomicUsize>,
    pages: usize,
}

impl<'a> Reserved<'a> {
    /// `pages` taken from `held`, given back on drop.
    pub fn new(held: &'a core::sync::atomic::AtomicUsize, pages: usize) -> Reserved<'a> {
        Reserved {
            held: Some(held),
            pages,
        }
    }

    /// Nothing reserved (a tree that is not logged).
    pub fn none() -> Reserved<'a> {
        Reserved {
            held: None,
            pages: 0,
        }
    }
}

impl Drop for Reserved<'_> {
    fn drop(&mut self) {
        if let Some(h) = self.held {
            h.fetch_sub(self.pages, atomic::Ordering::AcqRel);
        }
    }
}

/// Pages a structural unit latches at most (a split: the meta page, the
/// parent, the node, its right neighbour, the new node, a free page).
const STRUCTURAL_PAGES: usize = 6;

/// Why [`TreeLog::log`] logged nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refused {
    /// The log has no room until a checkpoint; the tree undoes the change,
    /// calls [`TreeLog::make_room`] and tries again (a few times: then it
    /// returns the error carried here).
    LogFull(TreeError),
    /// The log failed (the engine stopped) or the unit is impossible.
    Failed(TreeError),
}

/// One change of a multi-key transaction ([`BTree::apply`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change<'a> {
    /// Inserts `key` if absent (outcome: it was inserted).
    Insert { key: &'a [u8], val: &'a [u8] },
    /// Replaces the value of `key` if present (outcome: it was present).
    Update { key: &'a [u8], val: &'a [u8] },
    /// Inserts or replaces (outcome: the key was new).
    Upsert { key: &'a [u8], val: &'a [u8] },
    /// Removes `key` (outcome: it was present).
    Delete { key: &'a [u8] },
}

impl<'a> Change<'a> {
    /// The value the change writes (`None`: a delete).
    pub fn val(&self) -> Option<&'a [u8]> {
        match *self {
            Change::Insert { val, .. }
            | Change::Update { val, .. }
            | Change::Upsert { val, .. } => Some(val),
            Change::Delete { .. } => None,
        }
    }

    /// The key the change is about.
    pub fn key(&self) -> &'a [u8] {
        match *self {
            Change::Insert { key, .. }
            | Change::Update { key, .. }
            | Change::Upsert { key, .. }
            | Change::Delete { key } => key,
        }
    }
}

/// What [`BTree::apply`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Applied {
    /// Per change, in order: its outcome (see [`Change`]).
    pub outcomes: Vec<bool>,
    /// The end of the log unit that holds the changes (`None`: the tree is
    /// not logged, or nothing changed, so nothing was logged); durable once
    /// the log is durable up to it.
    pub lsn: Option<Lsn>,
}

/// A mini-transaction: the pages a change latched exclusively as it went
/// and, where it may have to be undone (a logged tree, a multi-key change,
/// a structural change), their contents when latched. Dropped without
/// [`commit`](Mtr::commit), it puts those contents back before it unlatches
/// the pages, so a change given up half-way leaves nothing behind.
struct Mtr<'p, B: BufferManager + ?Sized> {
    pages: Vec<ExclusiveGuard<'p, B>>,
    /// Each page's contents when latched (where kept), for the log's diff
    /// and for undoing.
    before: Vec<PageBuf>,
    /// Whether each page was dirty (to be written) when fixed (where kept).
    dirty: Vec<bool>,
    keep: bool,
    done: bool,
}

impl<'p, B: BufferManager + ?Sized> Mtr<'p, B> {
    fn new(keep: bool) -> Mtr<'p, B> {
        Mtr {
            pages: Vec::new(),
            before: Vec::new(),
            dirty: Vec::new(),
            keep,
            done: false,
        }
    }

    /// Takes a latched page into the unit; returns its index.
    fn add(&mut self, g: ExclusiveGuard<'p, B>) -> usize {
        if self.keep {
            let mut b = PageBuf::zeroed();
            b.0.copy_from_slice(g.bytes());
            self.before.push(b);
            self.dirty.push(g.is_dirty());
        }
        self.pages.push(g);
        self.pages.len() - 1
    }

    fn id(&self, i: usize) -> PageId {
        self.pages[i].id()
    }

    fn b(&self, i: usize) -> &[u8] {
        self.pages[i].bytes()
    }

    fn bm(&mut self, i: usize) -> &mut [u8] {
        self.pages[i].bytes_mut()
    }

    /// Two distinct pages' bytes, to change both.
    fn pair(&mut self, i: usize, j: usize) -> (&mut [u8], &mut [u8]) {
        assert!(i != j);
        if i < j {
            let (a, b) = self.pages.split_at_mut(j);
            (a[i].bytes_mut(), b[0].bytes_mut())
        } else {
            let (a, b) = self.pages.split_at_mut(i);
            (b[0].bytes_mut(), a[j].bytes_mut())
        }
    }

    /// The index of page `id` if the unit holds it.
    fn find(&self, id: u64) -> Option<usize> {
        self.pages.iter().position(|g| g.id().0 == id)
    }

    /// Logs the unit (if the tree is logged) and unlatches its pages.
    fn commit(mut self, log: Option<&dyn TreeLog<B>>) -> R<Option<Lsn>> {
        let lsn = match log {
            None => None,
            Some(log) => match log.log(&mut self.pages, &self.before) {
                Ok(lsn) => lsn,
                Err(Refused::LogFull(e)) => return Err(E::LogFull(e)),
                Err(Refused::Failed(e)) => return Err(E::Fail(e)),
            },
        };
        self.done = true;
        Ok(lsn)
    }
}

impl<B: BufferManager + ?Sized> Drop for Mtr<'_, B> {
    fn drop(&mut self) {
        if self.done || !self.keep {
            return;
        }
        for ((g, b), &d) in self.pages.iter_mut().zip(&self.before).zip(&self.dirty) {
            g.undo(&b.0, d);
        }
    }
}

/// A B+tree whose meta page (holding the root's id) is `meta`.
pub struct BTree<'p, B: BufferManager + ?Sized> {
    pool: &'p B,
    meta: PageId,
    /// The root's id as last seen (checked by the root flag at every use).
    root: AtomicU64,
    log: Option<&'p dyn TreeLog<B>>,
    /// A tree that is not logged: its free pages, in memory (a logged
    /// tree keeps them on the meta page's free list). Structural units of
    /// such a tree latch the meta page only to change the root, so a split
    /// holds at most 4 pages (parent, node, neighbour, new node): pools of
    /// 4 frames work.
    free: spin::Mutex<Vec<PageId>>,
    /// Overflow pages freed at open, pending since a crash.
    reclaimed: u64,
    /// Whether this handle counts the pages it visits (see
    /// [`counting`](BTree::counting)), and the count.
    counting: bool,
    visits: AtomicU64,
    /// Pages visited by the attempt under way (added to `visits` when it
    /// succeeds: a restarted attempt's visits are not counted).
    attempt: AtomicU64,
}

impl<'p, B: BufferManager + ?Sized> BTree<'p, B> {
    /// A new empty tree in `pool`, not logged, its pages allocated from the
    /// pool ([`Pool::allocate`]).
    pub fn create(pool: &'p B) -> Result<BTree<'p, B>, TreeError> {
        let meta = pool.allocate()?;
        let root = pool.allocate()?;
        Ok(BTree::create_in(pool, None, meta, root, 0)?.0)
    }

    /// A new empty tree whose changes are logged through `log`, on pages
    /// `first..` of `pool`: the meta page is `first`, the root `first + 1`,
    /// and the tree allocates the pages after them itself (recorded in the
    /// meta page, so allocation is logged with the rest), up to the pool's
    /// [`page_count`](BufferManager::page_count). Returns the tree and the
    /// end of the log unit that created it.
    pub fn create_logged(
        pool: &'p B,
        log: &'p dyn TreeLog<B>,
        first: PageId,
    ) -> Result<(BTree<'p, B>, Lsn), TreeError> {
        let end = first.0 + 2;
        if end > log.pages() {
            log.grow(end)?;
        }
        log.prepare()?;
        let meta = pool.fix_overwrite(first)?;
        let root = pool.fix_overwrite(PageId(first.0 + 1))?;
        let (t, lsn) = BTree::create_in(pool, Some(log), meta, root, end)?;
        Ok((t, lsn.unwrap_or(Lsn::ZERO)))
    }

    fn create_in(
        pool: &'p B,
        log: Option<&'p dyn TreeLog<B>>,
        meta: ExclusiveGuard<'p, B>,
        root: ExclusiveGuard<'p, B>,
        next: u64,
    ) -> Result<(BTree<'p, B>, Option<Lsn>), TreeError> {
        if root.id().0 >= MAX_PAGES {
            return Err(TreeError::PageTooFar { page: root.id() });
        }
        let mut m = Mtr::new(true);
        let (mi, ri) = (m.add(meta), m.add(root));
        let (id, root_id) = (m.id(mi), m.id(ri));
        let r = m.bm(ri);
        init(r, LEAF);
        r[FLAGS] = ROOT;
        let mb = m.bm(mi);
        init(mb, META);
        wr64(mb, LINK_A, root_id.0);
        // (Over fields `init` set for nodes.)
        wr64(mb, META_FREE, NONE);
        wr64(mb, META_FREE_COUNT, 0);
        wr64(mb, META_NEXT, next);
        wr64(mb, META_FIRST, id.0);
        let lsn = match m.commit(log) {
            Ok(l) => l,
            Err(E::Fail(e)) | Err(E::LogFull(e)) => return Err(e),
            Err(_) => unreachable!("a commit only fails or finds the log full"),
        };
        log::debug!("btree: created, meta {} root {}", id.0, root_id.0);
        let t = BTree {
            pool,
            meta: id,
            root: AtomicU64::new(root_id.0),
            log,
            free: spin::Mutex::new(Vec::new()),
            reclaimed: 0,
            counting: false,
            visits: AtomicU64::new(0),
            attempt: AtomicU64::new(0),
        };
        Ok((t, lsn))
    }

    /// The tree whose meta page is `meta`, not logged.
    pub fn open(pool: &'p B, meta: PageId) -> Result<BTree<'p, B>, TreeError> {
        BTree::open_in(pool, None, meta)
    }

    /// The logged tree whose meta page is `meta` (see
    /// [`create_logged`](Self::create_logged)).
    /// Overflow chains left pending by a crash (written, not yet referred
    /// to by their leaf's unit) are freed here.
    pub fn open_logged(
        pool: &'p B,
        log: &'p dyn TreeLog<B>,
        meta: PageId,
    ) -> Result<BTree<'p, B>, TreeError> {
        let mut t = BTree::open_in(pool, Some(log), meta)?;
        t.reclaimed = t.reclaim_pending()?;
        Ok(t)
    }

    /// Overflow pages [`open_logged`](Self::open_logged) freed: chains a
    /// crash left written but not yet referred to (see `overflow`).
    pub fn reclaimed_at_open(&self) -> u64 {
        self.reclaimed
    }

    fn open_in(
        pool: &'p B,
        log: Option<&'p dyn TreeLog<B>>,
        meta: PageId,
    ) -> Result<BTree<'p, B>, TreeError> {
        let g = pool.fix_shared(meta)?;
        if g.bytes()[KIND] != META {
            return Err(TreeError::Corrupt {
                page: meta,
                what: "not a tree meta page",
            });
        }
        if log.is_some() && rd64(g.bytes(), META_NEXT) == 0 {
            return Err(TreeError::Corrupt {
                page: meta,
                what: "the meta page of a tree that is not logged",
            });
        }
        let root = rd64(g.bytes(), LINK_A);
        Ok(BTree {
            pool,
            meta,
            root: AtomicU64::new(root),
            log,
            free: spin::Mutex::new(Vec::new()),
            reclaimed: 0,
            counting: false,
            visits: AtomicU64::new(0),
            attempt: AtomicU64::new(0),
        })
    }

    /// A handle on the tree whose meta page is `meta` (opened before with
    /// [`open_logged`](Self::open_logged) or [`open`](Self::open)),
    /// starting from `root_hint` (a [`root_hint`](Self::root_hint) of an
    /// earlier handle) without reading anything: a stale hint is found out
    /// by the root flag and refreshed from the meta page at first use. So
    /// a store that keeps the tree's meta page and last root can make a
    /// handle per call at no cost.
    pub fn attach(
        pool: &'p B,
        log: Option<&'p dyn TreeLog<B>>,
        meta: PageId,
        root_hint: u64,
    ) -> BTree<'p, B> {
        BTree {
            pool,
            meta,
            root: AtomicU64::new(root_hint),
            log,
            free: spin::Mutex::new(Vec::new()),
            reclaimed: 0,
            counting: false,
            visits: AtomicU64::new(0),
            attempt: AtomicU64::new(0),
        }
    }

    /// This handle, counting the pages its operations visit (each node on
    /// a path down, each leaf of a scan, each overflow page read, in the
    /// attempts that succeed: an optimistic attempt that restarts is not
    /// counted): what a hit ratio is a ratio of. A handle per thread or per
    /// operation: the count is one atomic.
    pub fn counting(mut self) -> BTree<'p, B> {
        self.counting = true;
        self
    }

    /// Pages visited since the handle began counting.
    pub fn visits(&self) -> u64 {
        self.visits.load(atomic::Ordering::Relaxed)
    }

    #[inline(always)]
    fn visit(&self) {
        if self.counting {
            self.attempt.fetch_add(1, atomic::Ordering::Relaxed);
        }
    }

    /// An attempt begins: visits so far that were not counted are dropped.
    #[inline(always)]
    fn begin_attempt(&self) {
        if self.counting {
            self.attempt.store(0, atomic::Ordering::Relaxed);
        }
    }

    /// The attempt succeeded: its visits count.
    #[inline(always)]
    fn end_attempt(&self) {
        if self.counting {
            let n = self.attempt.swap(0, atomic::Ordering::Relaxed);
            self.visits.fetch_add(n, atomic::Ordering::Relaxed);
        }
    }

    /// The root's id as this handle last saw it.
    pub fn root_hint(&self) -> u64 {
        self.root.load(atomic::Ordering::Relaxed)
    }

    /// The meta page.
    pub fn meta(&self) -> PageId {
        self.meta
    }

    /// The pool.
    pub fn pool(&self) -> &'p B {
        self.pool
    }

    /// Pages of the tree's area in use or free, and pages on its free
    /// list: `(next, free)`, where the area is `meta..next` (a logged
    /// tree; `next` is 0 for one that is not).
    pub fn space(&self) -> Result<(u64, u64), TreeError> {
        let g = self.pool.fix_shared(self.meta)?;
        Ok((rd64(g.bytes(), META_NEXT), rd64(g.bytes(), META_FREE_COUNT)))
    }

    fn retry<T>(&self, mut f: impl FnMut() -> R<T>) -> Result<T, TreeError> {
        let mut restarts = 0u32;
        let mut full = 0;
        loop {
            self.begin_attempt();
            match f() {
                Ok(t) => {
                    self.end_attempt();
                    return Ok(t);
                }
                Err(E::Fail(e)) => return Err(e),
                Err(E::LogFull(e)) => self.make_room(&mut full, e)?,
                Err(E::Grow(pages)) => self.grow(pages)?,
                Err(E::Restart) | Err(E::Split(..)) => self.back_off(&mut restarts),
            }
        }
    }

    /// After a unit was undone for want of pages: grows the area (a
    /// logged tree's; one that is not logged never asks).
    fn grow(&self, pages: u64) -> Result<(), TreeError> {
        match self.log {
            Some(log) => log.grow(pages),
            None => Err(TreeError::Full {
                pages: self.pool.page_count(),
            }),
        }
    }

    /// Waits a little before restart number `restarts`: a spin at first,
    /// then the pool's relax (the platform's yield).
    fn back_off(&self, restarts: &mut u32) {
        *restarts += 1;
        if *restarts > 4 {
            self.pool.relax();
        } else {
            core::hint::spin_loop();
        }
    }

    /// Reserves frames for a unit of up to `pages` pages (see
    /// [`TreeLog::reserve`]).
    fn reserve(&self, pages: usize) -> Result<Reserved<'p>, TreeError> {
        match self.log {
            Some(log) => log.reserve(pages),
            None => Ok(Reserved::none()),
        }
    }

    /// After a unit was refused for a full log: a checkpoint, or the log's
    /// error once `full` reaches [`LOG_FULL_TRIES`].
    fn make_room(&self, full: &mut u32, e: TreeError) -> Result<(), TreeError> {
        *full += 1;
        match self.log {
            Some(log) if *full <= LOG_FULL_TRIES => log.make_room(),
            _ => Err(e),
        }
    }

    /// The root, read optimistically: the cached root if its node still
    /// says it is the root (trusted once the caller validates the node);
    /// otherwise the cache is refreshed from the meta page and the
    /// operation restarts.
    #[inline(always)]
    fn root<const RESIDENT: bool>(&self) -> R<OptimisticGuard<'p, B>> {
        let id = self.root.load(atomic::Ordering::Relaxed);
        let node = self.node::<RESIDENT>(PageId(id))?;
        if node.u8_at(FLAGS)? & ROOT != 0 {
            return Ok(node);
        }
        node.validate()?;
        let meta = self.node::<RESIDENT>(self.meta)?;
        let root = meta.u64_at(LINK_A)?;
        meta.validate()?;
        self.root.store(root, atomic::Ordering::Relaxed);
        Err(E::Restart)
    }

    /// Page `id` read optimistically; if `RESIDENT`, only if it is
    /// resident (if not, [`TreeError::NotResident`]: nothing read, nothing
    /// waited for).
    #[inline(always)]
    fn node<const RESIDENT: bool>(&self, id: PageId) -> R<OptimisticGuard<'p, B>> {
        if RESIDENT {
            self.pool
                .optimistic_resident(id)?
                .ok_or(E::Fail(TreeError::NotResident { page: id }))
        } else {
            Ok(self.pool.optimistic(id)?)
        }
    }

    /// Descends to the leaf for `key` (`None`: the last leaf), read
    /// optimistically (not validated yet).
    #[inline(always)]
    fn descend(&self, key: Option<&[u8]>) -> R<OptimisticGuard<'p, B>> {
        self.descend_in::<false>(key)
    }

    /// [`descend`](Self::descend); if `RESIDENT`, through resident pages
    /// only ([`TreeError::NotResident`] names the first that is not).
    #[inline(always)]
    fn descend_in<const RESIDENT: bool>(&self, key: Option<&[u8]>) -> R<OptimisticGuard<'p, B>> {
        let mut node = self.root::<RESIDENT>()?;
        for _ in 0..64 {
            self.visit();
            match kind(&node)? {
                LEAF => return Ok(node),
                INNER => {}
                _ => {
                    node.validate()?;
                    return Err(corrupt(node.id(), "not a tree node on the path"));
                }
            }
            let (pos, _) = lower_bound(&node, key)?;
            let c = child(&node, pos)?;
            node.validate()?;
            let next = self.node::<RESIDENT>(PageId(c))?;
            node.validate()?;
            node = next;
        }
        Err(E::Restart)
    }

    /// Finds `target`'s parent on the path of `key`, optimistically: the
    /// parent and `target`'s position in it. `None` if `target` is the root
    /// (not validated: the caller checks the meta page) or not on the path.
    #[allow(clippy::type_complexity)]
    fn find_parent(
        &self,
        target: PageId,
        key: Option<&[u8]>,
    ) -> R<Option<(OptimisticGuard<'p, B>, usize)>> {
        let mut node = self.root::<false>()?;
        if node.id() == target {
            return Ok(None);
        }
        for _ in 0..64 {
            if kind(&node)? != INNER {
                node.validate()?;
                return Err(E::Restart);
            }
            let (pos, _) = lower_bound(&node, key)?;
            let c = child(&node, pos)?;
            node.validate()?;
            if c == target.0 {
                return Ok(Some((node, pos)));
            }
            let next = self.pool.optimistic(PageId(c))?;
            node.validate()?;
            node = next;
        }
        Err(E::Restart)
    }

    /// Checks a change's sizes; true if its value goes to overflow pages.
    fn check_entry(&self, key: &[u8], val: &[u8]) -> Result<bool, TreeError> {
        if key.len() > MAX_KEY {
            return Err(TreeError::KeyTooLong { len: key.len() });
        }
        if key.len() + val.len() <= MAX_ENTRY {
            return Ok(false);
        }
        if self.log.is_none() {
            return Err(TreeError::EntryTooLarge {
                len: key.len() + val.len(),
            });
        }
        if val.len() > MAX_VALUE {
            return Err(TreeError::ValueTooLarge { len: val.len() });
        }
        Ok(true)
    }

    /// Copies the value of `key` into `out`; false if absent.
    pub fn lookup(&self, key: &[u8], out: &mut Vec<u8>) -> Result<bool, TreeError> {
        // A chain page found not to belong to the value read last time
        // (see `overflow`).
        let mut suspect = None;
        self.retry(|| {
            let leaf = self.descend(Some(key))?;
            let (pos, exact) = lower_bound(&leaf, Some(key))?;
            if !exact {
                leaf.validate()?;
                return Ok(false);
            }
            let (off, klen, vlen, is_ref) = leaf_slot(&leaf, pos)?;
            if !is_ref {
                out.resize(vlen, 0);
                leaf.read_into(off + klen, out)?;
                leaf.validate()?;
                return Ok(true);
            }
            let mut r = [0u8; REF_LEN];
            if vlen != REF_LEN {
                leaf.validate()?;
                return Err(corrupt(
                    leaf.id(),
                    "an overflow reference of the wrong size",
                ));
            }
            leaf.read_into(off + klen, &mut r)?;
            leaf.validate()?;
            self.read_value(&Chain::decode(&r), out, &mut suspect)?;
            Ok(true)
        })
    }

    /// [`lookup`](Self::lookup) through resident pages only, for a caller
    /// that must not wait for storage (an event loop serving many
    /// clients): [`Resident::Missing`] names the first page of the path
    /// that is not resident or is latched exclusively (read it in with
    /// [`BufferManager::begin_read`] and look up again); a value in
    /// overflow pages is [`Resident::WouldBlock`]. Nothing is read and
    /// nothing waited for, except in a pool that cannot read
    /// asynchronously (see [`BufferManager::fix_optimistic_resident_frame`]).
    pub fn lookup_resident(
        &self,
        key: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<Resident<bool>, TreeError> {
        let found = self.retry(|| {
            let leaf = self.descend_in::<true>(Some(key))?;
            let (pos, exact) = lower_bound(&leaf, Some(key))?;
            if !exact {
                leaf.validate()?;
                return Ok(Resident::Done(false));
            }
            let (off, klen, vlen, is_ref) = leaf_slot(&leaf, pos)?;
            if is_ref {
                leaf.validate()?;
                return Ok(Resident::WouldBlock);
            }
            out.resize(vlen, 0);
            leaf.read_into(off + klen, out)?;
            leaf.validate()?;
            Ok(Resident::Done(true))
        });
        match found {
            Err(TreeError::NotResident { page }) => Ok(Resident::Missing(page)),
            r => r,
        }
    }

    fn one(&self, c: Change<'_>) -> Result<bool, TreeError> {
        Ok(self.apply(&[c])?.outcomes[0])
    }

    /// Inserts `key` with `val`; false (and no change) if `key` exists.
    /// (A logged tree logs the change; [`apply`](Self::apply) says where.)
    pub fn insert(&self, key: &[u8], val: &[u8]) -> Result<bool, TreeError> {
        self.one(Change::Insert { key, val })
    }

    /// Replaces the value of `key`; false (and no change) if absent.
    pub fn update(&self, key: &[u8], val: &[u8]) -> Result<bool, TreeError> {
        self.one(Change::Update { key, val })
    }

    /// Inserts or replaces; true if `key` was new.
    pub fn upsert(&self, key: &[u8], val: &[u8]) -> Result<bool, TreeError> {
        self.one(Change::Upsert { key, val })
    }

    /// Deletes `key`; false if absent.
    pub fn delete(&self, key: &[u8]) -> Result<bool, TreeError> {
        self.one(Change::Delete { key })
    }

    /// Applies `changes` in order as one atomic unit: in a logged tree one
    /// mini-transaction (whose end [`Applied::lsn`] gives: the changes are
    /// durable once the log is), so that after a crash either all of them
    /// are in the tree or none. Splits that make room for them are units
    /// of their own (they change no content); merges of the leaves they
    /// leave underfull follow them. At most [`MAX_CHANGES`] changes.
    pub fn apply(&self, changes: &[Change<'_>]) -> Result<Applied, TreeError> {
        if changes.len() > MAX_CHANGES {
            return Err(TreeError::TooManyChanges {
                changes: changes.len(),
            });
        }
        let mut large = Vec::new();
        for (i, c) in changes.iter().enumerate() {
            if self.check_entry(c.key(), c.val().unwrap_or(&[]))? {
                large.push(i);
            }
        }
        // Values too large for a leaf go to overflow chains first, each
        // recorded as pending on the meta page until the unit below refers
        // to it (or a restart reclaims it).
        let mut spilled: Vec<Spilled> = Vec::with_capacity(large.len());
        let claims = if large.is_empty() {
            Vec::new()
        } else {
            self.claim_slots(large.len())?
        };
        for (n, (&i, &(slot, nonce))) in large.iter().zip(&claims).enumerate() {
            let val = changes[i].val().expect("only a value spills");
            match self.write_chain(val, slot, nonce) {
                Ok(chain) => spilled.push(Spilled {
                    change: i,
                    chain,
                    slot,
                }),
                Err(e) => {
                    // (`write_chain` gave its own slot back.)
                    self.release_chains(&spilled);
                    for &(slot, nonce) in &claims[n + 1..] {
                        self.release(overflow::unwritten(nonce), slot);
                    }
                    return Err(e);
                }
            }
        }
        let r = self.apply_spilled(changes, &spilled);
        if r.is_err() {
            self.release_chains(&spilled);
        }
        r
    }

    /// [`apply`](Self::apply) once the large values are in the chains
    /// `spilled`.
    fn apply_spilled(
        &self,
        changes: &[Change<'_>],
        spilled: &[Spilled],
    ) -> Result<Applied, TreeError> {
        let mut applied = Applied::default();
        let mut under = Vec::new();
        let mut restarts = 0u32;
        let mut full = 0;
        // What each change that stores a value takes in its leaf: a leaf
        // split for this unit divides these with the leaf's entries, so
        // that changes that do not fit one leaf together end up in two.
        let pending: Vec<(&[u8], usize)> = changes
            .iter()
            .enumerate()
            .filter_map(|(i, c)| {
                let v = c.val()?;
                let inline = if spilled.iter().any(|s| s.change == i) {
                    overflow::REF_LEN
                } else {
                    v.len()
                };
                Some((c.key(), c.key().len() + inline + SLOT))
            })
            .collect();
        loop {
            if let Some(log) = self.log {
                log.prepare()?;
            }
            applied.outcomes.clear();
            under.clear();
            self.begin_attempt();
            match self.apply_once(changes, spilled, &mut applied, &mut under) {
                Ok(()) => {
                    self.end_attempt();
                    break;
                }
                Err(E::Fail(e)) => return Err(e),
                Err(E::LogFull(e)) => self.make_room(&mut full, e)?,
                Err(E::Grow(pages)) => self.grow(pages)?,
                // One attempt: if the tree moved on (the leaf was split or
                // merged meanwhile), the next attempt finds out.
                Err(E::Split(leaf, i)) => match self.split(leaf, changes[i].key(), &pending) {
                    Ok(()) | Err(E::Restart) | Err(E::Split(..)) => {}
                    Err(E::LogFull(e)) => self.make_room(&mut full, e)?,
                    Err(E::Grow(pages)) => self.grow(pages)?,
                    Err(E::Fail(e)) => return Err(e),
                },
                Err(E::Restart) => self.back_off(&mut restarts),
            }
        }
        // The changes are made (and logged): a merge that fails now (the
        // engine failed, a page read failed) does not make them fail; the
        // next operation meets the failure.
        for (leaf, i) in under.drain(..) {
            if let Err(e) = self.merge_up(leaf, changes[i].key()) {
                log::warn!("btree: merging leaf {} after a change failed: {e}", leaf.0);
                break;
            }
        }
        Ok(applied)
    }

    /// One attempt at [`apply`](Self::apply): finds every change's leaf
    /// optimistically with no latch held, latches the leaves (never
    /// waiting: a latched or changed leaf restarts the attempt), then
    /// changes them. A leaf without room gives the attempt up (the unit
    /// puts the leaves back) and asks for a split.
    fn apply_once(
        &self,
        changes: &[Change<'_>],
        spilled: &[Spilled],
        applied: &mut Applied,
        under: &mut Vec<(PageId, usize)>,
    ) -> R<()> {
        let mut found: Vec<OptimisticGuard<'p, B>> = Vec::with_capacity(changes.len());
        // Entries the changes may replace or delete that refer to overflow
        // chains (as read optimistically; checked again once latched).
        let mut old_refs = 0;
        for c in changes {
            let leaf = self.descend(Some(c.key()))?;
            if self.log.is_some() {
                if let (pos, true) = lower_bound(&leaf, Some(c.key()))? {
                    old_refs += leaf_slot(&leaf, pos)?.3 as usize;
                }
            }
            found.push(leaf);
        }
        // A unit that makes or frees a chain changes the meta page.
        let with_meta = old_refs > 0 || !spilled.is_empty();
        // Frames for the distinct leaves, the meta page and the chains'
        // tails (a logged tree), reserved before `m` so that they are given
        // back after its pages are unlatched.
        let _reserved = match self.log {
            None => Reserved::none(),
            Some(log) => {
                let mut ids: Vec<u64> = found.iter().map(|l| l.id().0).collect();
                ids.sort_unstable();
                ids.dedup();
                // A new chain's tail is latched only to free it: when its
                // change may have no effect, or a later change replaces it.
                let freeable = spilled
                    .iter()
                    .filter(|s| {
                        !matches!(changes[s.change], Change::Upsert { .. })
                            || changes[s.change + 1..]
                                .iter()
                                .any(|c| c.key() == changes[s.change].key())
                    })
                    .count();
                let chains = with_meta as usize + old_refs + freeable;
                log.reserve(ids.len() + chains).map_err(E::Fail)?
            }
        };
        let keep = self.log.is_some() || changes.len() > 1;
        let mut m = Mtr::new(keep);
        // All still as read (so two reads of one leaf saw one version),
        // then latched: each upgrade checks its leaf is still that version.
        for leaf in &found {
            leaf.validate()?;
        }
        // The meta page first (see `latch_meta`).
        let meta = if with_meta {
            Some(self.latch_meta(&mut m)?)
        } else {
            None
        };
        let mut freed = 0;
        let mut installed = alloc::vec![false; spilled.len()];
        let mut leaf_of = Vec::with_capacity(changes.len());
        for leaf in found {
            let i = match m.find(leaf.id().0) {
                Some(i) => i,
                None => m.add(leaf.upgrade()?),
            };
            leaf_of.push(i);
        }
        for (ci, (c, &li)) in changes.iter().zip(&leaf_of).enumerate() {
            let key = c.key();
            let id = m.id(li);
            let b = m.b(li);
            if b[KIND] != LEAF || !within(b, key) {
                return Err(corrupt(id, "a key led to a leaf whose fences exclude it"));
            }
            let (pos, exact) =
                lower_bound(b, Some(key)).map_err(|_| corrupt(id, "latched leaf"))?;
            let (val, outcome, change) = match (*c, exact) {
                (Change::Insert { .. }, true) | (Change::Update { .. }, false) => {
                    (None, false, false)
                }
                (Change::Delete { .. }, false) => (None, false, false),
                (Change::Delete { .. }, true) => (None, true, true),
                (Change::Insert { val, .. }, false) => (Some(val), true, true),
                (Change::Update { val, .. }, true) => (Some(val), true, true),
                (Change::Upsert { val, .. }, e) => (Some(val), !e, true),
            };
            applied.outcomes.push(outcome);
            if !change {
                continue;
            }
            if exact && is_ref(b, pos) {
                // The old value's chain is freed with the change; a leaf
                // whose entry became a reference since it was read starts
                // the attempt over with the frames it needs.
                // (A chain this unit made, replaced by a later change of
                // the same key, had its frame reserved with the others.)
                let chain = Chain::decode(entry(b, pos).1);
                let ours = spilled.iter().any(|s| s.chain == chain);
                let Some(mi) = meta.filter(|_| ours || freed < old_refs) else {
                    return Err(E::Restart);
                };
                self.free_chain(&mut m, mi, &chain)?;
                freed += !ours as usize;
            }
            let b = m.b(li);
            let Some(val) = val else {
                remove_at(m.bm(li), pos);
                if used(m.b(li)) < UNDERFULL && !under.iter().any(|u| u.0 == id) {
                    under.push((id, ci));
                }
                continue;
            };
            let old = if exact {
                let (k, v) = entry(b, pos);
                k.len() + v.len() + SLOT
            } else {
                0
            };
            let spill = spilled.iter().position(|s| s.change == ci);
            let reference;
            let (val, flag) = match spill {
                Some(s) => {
                    installed[s] = true;
                    reference = spilled[s].chain.encode();
                    (&reference[..], REF_FLAG)
                }
                None => (val, 0),
            };
            let need = key.len() - rd16(b, PREFIX) + val.len() + SLOT;
            if free_space(b) + old < need {
                // `m` drops here and puts back what the attempt changed.
                return Err(E::Split(id, ci));
            }
            let b = m.bm(li);
            if exact {
                remove_at(b, pos);
            }
            let fits = insert_entry(b, pos, key, val, flag);
            debug_assert!(fits);
        }
        if let Some(mi) = meta {
            // The new chains are no longer pending; one whose change had no
            // effect (an insert of a present key, an update of an absent
            // one) is freed at once.
            for (s, done) in spilled.iter().zip(&installed) {
                overflow::clear_pending(m.bm(mi), s.slot);
                if !done {
                    self.free_chain(&mut m, mi, &s.chain)?;
                }
            }
        }
        applied.lsn = m.commit(self.log)?;
        Ok(())
    }

    /// Latches the meta page into `m`. Every structural unit that needs
    /// it (in a logged tree all of them, since they may allocate or free a
    /// node; in a tree that is not logged, root changes) takes the meta
    /// page first, holding nothing else yet: so no unit holding tree nodes
    /// ever waits for the meta page, and one holding the meta page waits
    /// only as units without it do (rightwards, downwards, for a free page
    /// nobody holds), which makes no cycle.
    fn latch_meta(&self, m: &mut Mtr<'p, B>) -> R<usize> {
        if let Some(i) = m.find(self.meta.0) {
            return Ok(i);
        }
        let g = self.pool.optimistic(self.meta)?.upgrade()?;
        if g.bytes()[KIND] != META {
            return Err(corrupt(self.meta, "not a tree meta page"));
        }
        Ok(m.add(g))
    }

    /// A page for a new node, latched exclusively into `m`: in a tree that
    /// is not logged, a page from the in-memory free list or the pool's
    /// allocation; in a logged tree, the head of the meta page's free list,
    /// else the next page of the tree's area.
    fn new_node(&self, m: &mut Mtr<'p, B>) -> R<usize> {
        if self.log.is_none() {
            let reuse = self.free.lock().pop();
            let g = match reuse {
                Some(id) => self.pool.fix_exclusive(id)?,
                None => self.pool.allocate()?,
            };
            return self.new_node_in(m, g);
        }
        let mi = self.latch_meta(m)?;
        let head = rd64(m.b(mi), META_FREE);
        let g = if head != NONE {
            let g = self.pool.fix_exclusive(PageId(head))?;
            // (A freed overflow chain is spliced onto the list whole: its
            // pages link on in the same field.)
            if !matches!(g.bytes()[KIND], FREE | OVERFLOW) {
                return Err(corrupt(g.id(), "a page on the free list is not free"));
            }
            let next = rd64(g.bytes(), LINK_A);
            let mb = m.bm(mi);
            wr64(mb, META_FREE, next);
            let n = rd64(mb, META_FREE_COUNT);
            wr64(mb, META_FREE_COUNT, n.saturating_sub(1));
            g
        } else {
            let next = rd64(m.b(mi), META_NEXT);
            if next >= self.log.map_or(0, |l| l.pages()) {
                return Err(E::Grow(next + 1));
            }
            let g = self.pool.fix_overwrite(PageId(next))?;
            wr64(m.bm(mi), META_NEXT, next + 1);
            g
        };
        self.new_node_in(m, g)
    }

    /// Takes page `g` for a new node into `m`, if the tree can address it.
    fn new_node_in(&self, m: &mut Mtr<'p, B>, g: ExclusiveGuard<'p, B>) -> R<usize> {
        if g.id().0 >= MAX_PAGES {
            return Err(E::Fail(TreeError::PageTooFar { page: g.id() }));
        }
        Ok(m.add(g))
    }

    /// Puts node `i` of `m` on the free list (in the same unit); a tree
    /// that is not logged marks it free and returns it, for the caller to
    /// put on the in-memory list once the unit is done.
    fn free_node(&self, m: &mut Mtr<'p, B>, i: usize) -> R<Option<PageId>> {
        if self.log.is_none() {
            init(m.bm(i), FREE);
            return Ok(Some(m.id(i)));
        }
        let mi = self.latch_meta(m)?;
        let (head, n) = (rd64(m.b(mi), META_FREE), rd64(m.b(mi), META_FREE_COUNT));
        let id = m.id(i);
        let b = m.bm(i);
        init(b, FREE);
        wr64(b, LINK_A, head);
        let mb = m.bm(mi);
        wr64(mb, META_FREE, id.0);
        wr64(mb, META_FREE_COUNT, n + 1);
        Ok(None)
    }

    /// Splits `target` (on the path of `key`), splitting its parent first
    /// if the parent has no room for a separator. Returns Ok when something
    /// changed or the tree moved on; the caller restarts either way.
    fn split(&self, target: PageId, key: &[u8], pending: &[(&[u8], usize)]) -> R<()> {
        let reserved = self.reserve(STRUCTURAL_PAGES).map_err(E::Fail)?;
        let parent = self.find_parent(target, Some(key))?;
        let node = self.pool.optimistic(target)?;
        let mut m = Mtr::new(true);
        // The meta page first (see `latch_meta`): a logged tree allocates
        // through it, a new root is recorded in it.
        let meta = if self.log.is_some() || parent.is_none() {
            Some(self.latch_meta(&mut m)?)
        } else {
            None
        };
        let Some((parent, pos)) = parent else {
            // The root: grow the tree by one level.
            let mi = meta.expect("latched for a root split");
            if rd64(m.b(mi), LINK_A) != target.0 {
                return Err(E::Restart);
            }
            let ni = m.add(node.upgrade()?);
            let ri = self.new_node(&mut m)?;
            let ti = self.new_node(&mut m)?;
            let (nid, rid, tid) = (m.id(ni), m.id(ri), m.id(ti));
            // The old root loses its flag here (split_node rebuilds it).
            let (nb, rb) = m.pair(ni, ri);
            let sep = split_node(nb, rb, (nid, rid), key, pending);
            let r = m.bm(ti);
            init(r, INNER);
            r[FLAGS] = ROOT;
            insert_at(r, 0, &sep, &nid.0.to_le_bytes());
            wr64(r, LINK_A, rid.0);
            wr64(m.bm(mi), LINK_A, tid.0);
            m.commit(self.log)?;
            self.root.store(tid.0, atomic::Ordering::Relaxed);
            log::trace!("btree: root {} split, new root {}", target.0, tid.0);
            return Ok(());
        };
        let p = parent.upgrade()?;
        if free_space(p.bytes()) < MAX_KEY + 8 + SLOT {
            let pid = p.id();
            drop(p);
            drop(m);
            drop(reserved);
            return self.split(pid, key, &[]);
        }
        let pi = m.add(p);
        let ni = m.add(node.upgrade()?);
        if live_child(m.b(pi), pos) != target {
            return Err(corrupt(
                m.id(pi),
                "parent does not point to the child it led to",
            ));
        }
        let is_leaf = m.b(ni)[KIND] == LEAF;
        // A leaf's right neighbour gets a new left sibling.
        let mut neighbour = None;
        if is_leaf {
            let r = rd64(m.b(ni), LINK_A);
            if r != NONE {
                neighbour = Some(m.add(self.pool.optimistic(PageId(r))?.upgrade()?));
            }
        }
        let ri = self.new_node(&mut m)?;
        let (nid, rid) = (m.id(ni), m.id(ri));
        let (nb, rb) = m.pair(ni, ri);
        let sep = split_node(nb, rb, (nid, rid), key, pending);
        if let Some(x) = neighbour {
            wr64(m.bm(x), LINK_B, rid.0);
        }
        let pb = m.bm(pi);
        set_child(pb, pos, rid);
        let fits = insert_at(pb, pos, &sep, &nid.0.to_le_bytes());
        debug_assert!(fits, "checked the parent's room");
        m.commit(self.log)?;
        Ok(())
    }

    /// Merges `node` with a sibling while it (then its parent) is underfull.
    fn merge_up(&self, mut node: PageId, key: &[u8]) -> Result<(), TreeError> {
        for _ in 0..64 {
            match self.try_merge(node, key) {
                Ok(Some(parent)) => node = parent,
                // (A merge frees pages: it never needs the area grown.)
                Ok(None) | Err(E::Restart) | Err(E::Split(..)) | Err(E::Grow(_)) => return Ok(()),
                Err(E::LogFull(e)) => {
                    // Merging is optional: make the room and leave it.
                    return self.make_room(&mut 0, e);
                }
                Err(E::Fail(e)) => return Err(e),
            }
        }
        Ok(())
    }

    /// One merge of `target` with its right (or, if it is the last child,
    /// left) sibling, if both fit in one page. Returns the parent if it is
    /// underfull afterwards. Best effort: gives up (Restart) on contention.
    fn try_merge(&self, target: PageId, key: &[u8]) -> R<Option<PageId>> {
        let Some((parent, pos)) = self.find_parent(target, Some(key))? else {
            self.collapse_root()?;
            return Ok(None);
        };
        let n = count(&parent)?;
        let (lpos, rpos) = if pos < n {
            (pos, pos + 1)
        } else if pos > 0 {
            (pos - 1, pos)
        } else {
            return Ok(None);
        };
        let lid = child(&parent, lpos)?;
        let rid = child(&parent, rpos)?;
        parent.validate()?;
        let _reserved = self.reserve(STRUCTURAL_PAGES).map_err(E::Fail)?;
        let mut m = Mtr::new(true);
        if self.log.is_some() {
            self.latch_meta(&mut m)?;
        }
        let pi = m.add(parent.upgrade()?);
        let li = m.add(self.pool.optimistic(PageId(lid))?.upgrade()?);
        let ri = m.add(self.pool.optimistic(PageId(rid))?.upgrade()?);
        let (lb, rb) = (m.b(li), m.b(ri));
        if lb[KIND] != rb[KIND] || (lb[KIND] != LEAF && lb[KIND] != INNER) {
            return Err(corrupt(m.id(pi), "siblings of different kinds"));
        }
        let leaf = lb[KIND] == LEAF;
        let sep = key_at(m.b(pi), lpos);
        let mut tmp = PageBuf::zeroed();
        if !merge_nodes(&mut tmp.0, lb, rb, (!leaf).then_some(&sep[..])) {
            return Ok(None);
        }
        let mut rr = None;
        if leaf {
            let x = rd64(rb, LINK_A);
            if x != NONE {
                rr = Some(m.add(self.pool.optimistic(PageId(x))?.upgrade()?));
            }
        }
        let lid = m.id(li);
        m.bm(li)[PAGE_HEADER..].copy_from_slice(&tmp.0[PAGE_HEADER..]);
        if let Some(x) = rr {
            wr64(m.bm(x), LINK_B, lid.0);
        }
        let pb = m.bm(pi);
        set_child(pb, rpos, lid);
        remove_at(pb, lpos);
        let freed = self.free_node(&mut m, ri)?;
        let pid = m.id(pi);
        let under = used(m.b(pi)) < UNDERFULL;
        m.commit(self.log)?;
        self.free.lock().extend(freed);
        Ok(if under { Some(pid) } else { None })
    }

    /// Replaces an inner root that has a single child by that child.
    fn collapse_root(&self) -> R<()> {
        let meta = self.pool.optimistic(self.meta)?;
        let root = self.pool.optimistic(PageId(meta.u64_at(LINK_A)?))?;
        meta.validate()?;
        if kind(&root)? != INNER || count(&root)? != 0 {
            return Ok(());
        }
        let only = root.u64_at(LINK_A)?;
        root.validate()?;
        let _reserved = self.reserve(STRUCTURAL_PAGES).map_err(E::Fail)?;
        let mut m = Mtr::new(true);
        let mi = m.add(meta.upgrade()?);
        if m.b(mi)[KIND] != META {
            return Err(corrupt(self.meta, "not a tree meta page"));
        }
        let ri = m.add(root.upgrade()?);
        let ci = m.add(self.pool.optimistic(PageId(only))?.upgrade()?);
        m.bm(ci)[FLAGS] |= ROOT;
        wr64(m.bm(mi), LINK_A, only);
        // The old root loses its flag here.
        let freed = self.free_node(&mut m, ri)?;
        m.commit(self.log)?;
        self.free.lock().extend(freed);
        self.root.store(only, atomic::Ordering::Relaxed);
        Ok(())
    }

    /// Calls `f(key, value)` for the entries with keys `>= start` (all if
    /// `None`) in ascending order until it returns false. Entries changed
    /// concurrently may or may not be seen; every entry delivered was in the
    /// tree when its leaf was read (a value on overflow pages: when its
    /// chain was read, or when the key was looked up again because the
    /// value changed in between).
    pub fn scan_forward(
        &self,
        start: Option<&[u8]>,
        f: impl FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<(), TreeError> {
        self.scan(start, true, f)
    }

    /// Calls `f(key, value)` for the entries with keys `<= start` (all if
    /// `None`) in descending order until it returns false.
    pub fn scan_backward(
        &self,
        start: Option<&[u8]>,
        f: impl FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<(), TreeError> {
        self.scan(start, false, f)
    }

    fn scan(
        &self,
        start: Option<&[u8]>,
        forward: bool,
        mut f: impl FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<(), TreeError> {
        // The bound: entries beyond `bound` (inclusive or not) are next.
        let mut bound: Option<Vec<u8>> = start.map(|s| s.to_vec());
        let mut inclusive = true;
        let mut batch = Batch::default();
        let mut large = Vec::new();
        loop {
            // Snapshot of the first leaf, found from the root.
            let res = self.retry(|| {
                let leaf = self.descend(if forward || bound.is_some() {
                    Some(bound.as_deref().unwrap_or(&[]))
                } else {
                    None
                })?;
                batch.fill(&leaf, bound.as_deref(), inclusive, forward)?;
                leaf.validate()?;
                Ok(leaf)
            })?;
            let mut cur = res;
            loop {
                for (k, v, is_ref) in batch.iter() {
                    let go = if is_ref {
                        // Read now, with nothing latched. A chain freed
                        // meanwhile means the key changed since its leaf
                        // was read: then its value now, if it is there.
                        let mut suspect = None;
                        self.begin_attempt();
                        let present =
                            match self.read_value(&Chain::decode(v), &mut large, &mut suspect) {
                                Ok(()) => {
                                    self.end_attempt();
                                    true
                                }
                                Err(E::Fail(e)) => return Err(e),
                                Err(_) => self.lookup(k, &mut large)?,
                            };
                        !present || f(k, &large)
                    } else {
                        f(k, v)
                    };
                    if !go {
                        return Ok(());
                    }
                }
                if let Some(last) = batch.last_key() {
                    bound = Some(last.to_vec());
                    inclusive = false;
                }
                let next = batch.next;
                if next == NONE {
                    return Ok(());
                }
                // The sibling, checked to still be this leaf's neighbour.
                self.begin_attempt();
                let step = (|| -> R<OptimisticGuard<'p, B>> {
                    self.visit();
                    let s = self.pool.optimistic(PageId(next))?;
                    if kind(&s)? != LEAF {
                        s.validate()?;
                        return Err(E::Restart);
                    }
                    let back = s.u64_at(if forward { LINK_B } else { LINK_A })?;
                    if back != cur.id().0 {
                        s.validate()?;
                        return Err(E::Restart);
                    }
                    batch.fill(&s, bound.as_deref(), inclusive, forward)?;
                    s.validate()?;
                    Ok(s)
                })();
                match step {
                    Ok(s) => {
                        self.end_attempt();
                        cur = s;
                    }
                    Err(E::Fail(e)) => return Err(e),
                    Err(_) => break,
                }
            }
        }
    }

    /// Walks the whole tree with shared latches and checks its invariants:
    /// keys sorted and within their parents' bounds, fences equal to those
    /// bounds, prefixes, heads and hints as the keys make them, the root
    /// flag on the root alone, all leaves at one depth, sibling links
    /// consistent, the free list made of free pages and as long as the meta
    /// page says; and in a logged tree, every page of its area reachable
    /// exactly once (the meta page, a node, or a free page). Returns the
    /// number of entries. For tests and tools; do not run it concurrently
    /// with writers.
    pub fn check(&self) -> Result<usize, TreeError> {
        let (root, free_head, free_count, next, first) = {
            let m = self.pool.fix_shared(self.meta)?;
            let b = m.bytes();
            if b[KIND] != META {
                return Err(TreeError::Corrupt {
                    page: self.meta,
                    what: "not a tree meta page",
                });
            }
            (
                PageId(rd64(b, LINK_A)),
                rd64(b, META_FREE),
                rd64(b, META_FREE_COUNT),
                rd64(b, META_NEXT),
                rd64(b, META_FIRST),
            )
        };
        let mut leaves = Vec::new();
        let mut nodes = Vec::new();
        let mut depth = None;
        let n = self.check_node(root, None, None, 0, &mut depth, &mut leaves, &mut nodes)?;
        // Every leaf's overflow chains, and those still pending.
        let mut chains = Vec::new();
        for &id in &leaves {
            let g = self.pool.fix_shared(id)?;
            let b = g.bytes();
            for i in (0..rd16(b, COUNT)).filter(|&i| is_ref(b, i)) {
                chains.push((id, Chain::decode(entry(b, i).1)));
            }
        }
        for (id, c) in chains {
            self.check_chain(id, &c, true, &mut nodes)?;
        }
        self.check_pending(&mut nodes)?;
        for (i, &id) in leaves.iter().enumerate() {
            let g = self.pool.fix_shared(id)?;
            let left = rd64(g.bytes(), LINK_B);
            let right = rd64(g.bytes(), LINK_A);
            let want_left = if i == 0 { NONE } else { leaves[i - 1].0 };
            let want_right = leaves.get(i + 1).map_or(NONE, |p| p.0);
            if left != want_left || right != want_right {
                return Err(TreeError::Corrupt {
                    page: id,
                    what: "leaf sibling links disagree with the tree",
                });
            }
        }
        let mut free = Vec::new();
        let mut at = free_head;
        while at != NONE {
            if free.len() as u64 > free_count {
                return Err(TreeError::Corrupt {
                    page: self.meta,
                    what: "the free list is longer than the meta page says (or a cycle)",
                });
            }
            let g = self.pool.fix_shared(PageId(at))?;
            if !matches!(g.bytes()[KIND], FREE | OVERFLOW) {
                return Err(TreeError::Corrupt {
                    page: PageId(at),
                    what: "a page on the free list is not free",
                });
            }
            free.push(PageId(at));
            at = rd64(g.bytes(), LINK_A);
        }
        if free.len() as u64 != free_count {
            return Err(TreeError::Corrupt {
                page: self.meta,
                what: "the free list is shorter than the meta page says",
            });
        }
        let mut all: Vec<u64> = nodes.iter().chain(&free).map(|p| p.0).collect();
        all.push(self.meta.0);
        all.sort_unstable();
        if all.windows(2).any(|w| w[0] == w[1]) {
            return Err(TreeError::Corrupt {
                page: self.meta,
                what: "a page is reachable twice (two parents, or a node on the free list)",
            });
        }
        if next != 0 && (first != self.meta.0 || !all.iter().copied().eq(first..next)) {
            return Err(TreeError::Corrupt {
                page: self.meta,
                what: "the tree's pages are not its area exactly (a page lost or out of it)",
            });
        }
        Ok(n)
    }

    #[allow(clippy::too_many_arguments)]
    fn check_node(
        &self,
        id: PageId,
        low: Option<&[u8]>,
        high: Option<&[u8]>,
        level: usize,
        depth: &mut Option<usize>,
        leaves: &mut Vec<PageId>,
        nodes: &mut Vec<PageId>,
    ) -> Result<usize, TreeError> {
        let bad = |what| TreeError::Corrupt { page: id, what };
        if nodes.len() as u64 > self.pool.page_count() {
            return Err(bad("more nodes than pages: a cycle"));
        }
        nodes.push(id);
        let g = self.pool.fix_shared(id)?;
        let b = g.bytes();
        let keys = check_layout(b, low, high).map_err(bad)?;
        let n = keys.len();
        if (b[FLAGS] & ROOT != 0) != (level == 0) {
            return Err(bad("root flag wrong"));
        }
        match b[KIND] {
            LEAF => {
                if *depth.get_or_insert(level) != level {
                    return Err(bad("leaves at different depths"));
                }
                leaves.push(id);
                Ok(n)
            }
            INNER => {
                let children: Vec<PageId> = (0..=n).map(|i| live_child(b, i)).collect();
                drop(g);
                let mut total = 0;
                for (i, c) in children.into_iter().enumerate() {
                    let lo = if i == 0 {
                        low
                    } else {
                        Some(keys[i - 1].as_slice())
                    };
                    let hi = if i < n {
                        Some(keys[i].as_slice())
                    } else {
                        high
                    };
                    total += self.check_node(c, lo, hi, level + 1, depth, leaves, nodes)?;
                }
                Ok(total)
            }
            _ => Err(bad("not a tree node")),
        }
    }
}

/// Checks a latched node's layout against the bounds its parent gives it:
/// fences equal to them, the prefix their common prefix, keys sorted and
/// within them, heads, hints, heap and live bytes consistent. Returns the
/// whole keys.
fn check_layout(
    b: &[u8],
    low: Option<&[u8]>,
    high: Option<&[u8]>,
) -> Result<Vec<Vec<u8>>, &'static str> {
    let n = rd16(b, COUNT);
    if n > MAX_COUNT || SLOTS + n * SLOT > rd16(b, HEAP) {
        return Err("slots overlap the heap");
    }
    let fb = fence_bytes(b);
    if rd16(b, HEAP) + fb > PAGE_SIZE {
        return Err("fences overlap the heap");
    }
    if fences(b) != (low, high) {
        return Err("fences differ from the parent's bounds");
    }
    let plen = match (low, high) {
        (Some(l), Some(h)) => common_prefix(l, h),
        _ => 0,
    };
    if rd16(b, PREFIX) != plen {
        return Err("prefix length is not the fences' common prefix");
    }
    if rd64(b, PREFIX_HEAD) != be_head(&prefix(b)[..plen.min(8)]) {
        return Err("prefix head wrong");
    }
    let mut keys: Vec<Vec<u8>> = Vec::with_capacity(n);
    let mut live = fb;
    for i in 0..n {
        let (off, klen, vlen, _) = slot_of(b, i);
        if off < rd16(b, HEAP) || off + klen + vlen > PAGE_SIZE - fb {
            return Err("entry outside the heap");
        }
        live += klen + vlen;
        let (suffix, _) = entry(b, i);
        if rd64(b, SLOTS + i * SLOT) != be_head(suffix) {
            return Err("slot head wrong");
        }
        let k = key_at(b, i);
        if keys.last().is_some_and(|p| *p >= k) {
            return Err("keys out of order");
        }
        if low.is_some_and(|l| k.as_slice() <= l) || high.is_some_and(|h| k.as_slice() > h) {
            return Err("key outside the parent's bounds");
        }
        keys.push(k);
    }
    if live != rd16(b, LIVE) {
        return Err("live byte count wrong");
    }
    for i in 0..HINT_COUNT {
        let want = if n == 0 {
            0
        } else {
            rd64(b, SLOTS + hint_pos(i, n) * SLOT)
        };
        if rd64(b, HINTS + 8 * i) != want {
            return Err("hint wrong");
        }
    }
    Ok(keys)
}

/// Builds in the empty page `out` the merge of the latched siblings `l`
/// and `r` (an inner pair with their parent's separator `sep` between
/// them). False, and `out` unusable, if the merge does not fit in a page.
fn merge_nodes(out: &mut [u8], l: &[u8], r: &[u8], sep: Option<&[u8]>) -> bool {
    let (lower, _) = fences(l);
    let (_, upper) = fences(r);
    let plen = match (lower, upper) {
        (Some(a), Some(c)) => common_prefix(a, c),
        _ => 0,
    };
    // Keys grow by what the prefix loses.
    let grown = |b: &[u8]| {
        let n = rd16(b, COUNT);
        n * SLOT + rd16(b, LIVE) - fence_bytes(b) + n * (rd16(b, PREFIX) - plen)
    };
    let mut size = SLOTS + grown(l) + grown(r);
    size += lower.map_or(0, <[u8]>::len) + upper.map_or(0, <[u8]>::len);
    if let Some(s) = sep {
        size += SLOT + s.len() - plen;
    }
    if size > PAGE_SIZE {
        return false;
    }
    init(out, l[KIND]);
    set_fences(out, lower, upper);
    let mut ok = true;
    for i in 0..rd16(l, COUNT) {
        ok &= copy_entry(out, l, i);
    }
    if let Some(s) = sep {
        ok &= push(out, s, &rd64(l, LINK_A).to_le_bytes());
    }
    for i in 0..rd16(r, COUNT) {
        ok &= copy_entry(out, r, i);
    }
    debug_assert!(ok, "the merge was sized to fit");
    wr64(out, LINK_A, rd64(r, LINK_A));
    wr64(out, LINK_B, rd64(l, LINK_B));
    ok
}

/// The shortest separator `s` with `a <= s < b` (for `a < b`): a prefix of
/// `b` one byte longer than what `a` and `b` share, or `a` itself.
fn separator(a: &[u8], b: &[u8]) -> Vec<u8> {
    let c = common_prefix(a, b);
    if c + 1 < b.len() {
        b[..c + 1].to_vec()
    } else {
        a.to_vec()
    }
}

/// Splits the latched node `b` (id `bid`) into `b` and the empty page `r`
/// (id `rid`, to the right). Returns the separator to insert into the
/// parent: keys `<= sep` stay in `b`, which gets `sep` as upper fence and
/// `r` as lower. When `key` (the insert that needs room) is beyond every
/// key of the rightmost node of its level, the node keeps all it can (an
/// append pattern leaves full nodes behind).
fn split_node(
    b: &mut [u8],
    r: &mut [u8],
    (bid, rid): (PageId, PageId),
    key: &[u8],
    pending: &[(&[u8], usize)],
) -> Vec<u8> {
    let mut tmp = PageBuf::zeroed();
    tmp.0.copy_from_slice(b);
    let t = &tmp.0;
    let n = rd16(t, COUNT);
    let k = t[KIND];
    let (lower, upper) = fences(t);
    let (left_link, right_link) = (rd64(t, LINK_B), rd64(t, LINK_A));
    // The values a unit of several changes brings to this leaf.
    let mut incoming: Vec<(&[u8], usize)> = pending
        .iter()
        .filter(|(pk, _)| lower.is_none_or(|l| *pk > l) && upper.is_none_or(|u| *pk <= u))
        .copied()
        .collect();
    let incoming_bytes: usize = incoming.iter().map(|(_, s)| s).sum();
    let append = upper.is_none() && n > 0 && key_at(t, n - 1).as_slice() < key;
    // Split by its entries alone, each half keeps at most about half a
    // page, so incoming values of less than that fit either half (an
    // append keeps the node full and gives the new node all the room).
    let by_entries_fits =
        incoming_bytes <= PAGE_SIZE / 2 - 512 || (append && incoming_bytes <= PAGE_SIZE - 1024);
    if k == LEAF && incoming.len() > 1 && (n < 2 || !by_entries_fits) {
        // Split the leaf's entries and the incoming values together by
        // bytes: a leaf with few entries (or none: the unit that did not
        // fit was undone) is then divided between the incoming keys, so
        // the next attempt finds them in two leaves. (Split by its entries
        // alone, an empty leaf would split into an empty leaf and a new
        // empty page, forever.)
        let mut all: Vec<(Vec<u8>, usize)> = (0..n)
            .map(|i| {
                let (kk, v) = entry(t, i);
                (key_at(t, i), kk.len() + v.len() + SLOT)
            })
            .collect();
        incoming.sort_unstable_by(|a, b| a.0.cmp(b.0));
        for (pk, size) in incoming {
            match all.binary_search_by(|(ek, _)| ek.as_slice().cmp(pk)) {
                Ok(i) => all[i].1 = all[i].1.max(size),
                Err(i) => all.insert(i, (pk.to_vec(), size)),
            }
        }
        let total: usize = all.iter().map(|(_, s)| s).sum();
        let mut acc = 0;
        let mut m = 0;
        while m + 1 < all.len() {
            acc += all[m].1;
            m += 1;
            if acc * 2 >= total {
                break;
            }
        }
        let m = m.max(1);
        let sep = separator(&all[m - 1].0, &all[m].0);
        // The entries `<= sep` stay (a subset of what fit one page).
        let left = (0..n)
            .take_while(|&i| key_at(t, i).as_slice() <= sep.as_slice())
            .count();
        init(b, k);
        set_fences(b, lower, Some(&sep));
        let fits = (0..left).all(|i| copy_entry(b, t, i));
        debug_assert!(fits, "a split's left half fits");
        init(r, k);
        set_fences(r, Some(&sep), upper);
        let fits = (left..n).all(|i| copy_entry(r, t, i));
        debug_assert!(fits, "a split's right half fits");
        wr64(b, LINK_B, left_link);
        wr64(b, LINK_A, rid.0);
        wr64(r, LINK_B, bid.0);
        wr64(r, LINK_A, right_link);
        return sep;
    }
    let fill = |b: &mut [u8], sep: &[u8], from: usize, to: usize| -> bool {
        init(b, k);
        set_fences(b, lower, Some(sep));
        (from..to).all(|i| copy_entry(b, t, i))
    };
    if k == LEAF {
        // Appending: the node keeps every entry if they fit with the new
        // fence.
        let kept = append
            .then(|| key_at(t, n - 1))
            .filter(|sep| fill(b, sep, 0, n));
        let (m, sep) = match kept {
            Some(sep) => (n, sep),
            None => {
                let m = if append {
                    (n - 1).max(1)
                } else {
                    // Split by bytes.
                    let half = (rd16(t, LIVE) - fence_bytes(t)) / 2;
                    let mut acc = 0;
                    let mut m = 0;
                    while m + 1 < n {
                        let (kk, v) = entry(t, m);
                        acc += kk.len() + v.len();
                        m += 1;
                        if acc >= half {
                            break;
                        }
                    }
                    m.max(1)
                };
                let sep = if m < n {
                    separator(&key_at(t, m - 1), &key_at(t, m))
                } else {
                    key_at(t, m - 1)
                };
                let fits = fill(b, &sep, 0, m);
                debug_assert!(fits, "a split's left half fits");
                (m, sep)
            }
        };
        init(r, k);
        set_fences(r, Some(&sep), upper);
        for i in m..n {
            let fits = copy_entry(r, t, i);
            debug_assert!(fits, "a split's right half fits");
        }
        wr64(b, LINK_B, left_link);
        wr64(b, LINK_A, rid.0);
        wr64(r, LINK_B, bid.0);
        wr64(r, LINK_A, right_link);
        sep
    } else {
        let m = if append { n - 1 } else { n / 2 };
        let sep = key_at(t, m);
        let fits = fill(b, &sep, 0, m);
        debug_assert!(fits, "a split's left half fits");
        wr64(b, LINK_A, slot_of(t, m).3);
        init(r, k);
        set_fences(r, Some(&sep), upper);
        for i in m + 1..n {
            let fits = copy_entry(r, t, i);
            debug_assert!(fits, "a split's right half fits");
        }
        wr64(r, LINK_A, right_link);
        sep
    }
}

/// Entries copied out of one leaf during a scan.
#[derive(Default)]
struct Batch {
    data: Vec<u8>,
    /// (key start, key len, value len, whether the value is a reference to
    /// an overflow chain) into data, in delivery order.
    items: Vec<(usize, usize, usize, bool)>,
    /// The leaf's prefix.
    prefix: Vec<u8>,
    /// The next leaf in scan direction.
    next: u64,
}

impl Batch {
    fn fill<P: PageRead + ?Sized>(
        &mut self,
        p: &P,
        bound: Option<&[u8]>,
        inclusive: bool,
        forward: bool,
    ) -> Result<(), Stale> {
        self.data.clear();
        self.items.clear();
        let n = count(p)?;
        let (pos, exact) = match bound {
            Some(b) => lower_bound(p, Some(b))?,
            None => (if forward { 0 } else { n }, false),
        };
        let plen = p.u16_at(PREFIX)? as usize;
        if plen > MAX_KEY {
            return Err(Stale);
        }
        self.prefix.resize(plen, 0);
        p.read_into(lower_fence_at(p)?, &mut self.prefix)?;
        let (from, to) = if forward {
            (if exact && !inclusive { pos + 1 } else { pos }, n)
        } else {
            (0, if exact && inclusive { pos + 1 } else { pos })
        };
        for j in from..to {
            let i = if forward { j } else { to - 1 - (j - from) };
            let (off, klen, vlen, is_ref) = leaf_slot(p, i)?;
            if is_ref && vlen != REF_LEN {
                return Err(Stale);
            }
            let at = self.data.len();
            self.data.extend_from_slice(&self.prefix);
            self.data.resize(at + plen + klen + vlen, 0);
            p.read_into(off, &mut self.data[at + plen..])?;
            self.items.push((at, plen + klen, vlen, is_ref));
        }
        self.next = p.u64_at(if forward { LINK_A } else { LINK_B })?;
        Ok(())
    }

    /// (key, value or overflow reference, whether it is a reference).
    fn iter(&self) -> impl Iterator<Item = (&[u8], &[u8], bool)> {
        self.items
            .iter()
            .map(|&(at, k, v, r)| (&self.data[at..at + k], &self.data[at + k..at + k + v], r))
    }

    fn last_key(&self) -> Option<&[u8]> {
        self.items
            .last()
            .map(|&(at, k, _, _)| &self.data[at..at + k])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::format;
    use alloc::vec;

    /// xorshift, seeded.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    /// Every byte string over {0, 1, 0xff} of at most `max` bytes.
    fn strings(max: usize) -> Vec<Vec<u8>> {
        let mut all = vec![Vec::new()];
        let mut last = vec![Vec::new()];
        for _ in 0..max {
            let mut next = Vec::new();
            for s in &last {
                for b in [0u8, 1, 0xff] {
                    let mut t = s.clone();
                    t.push(b);
                    next.push(t);
                }
            }
            all.extend(next.iter().cloned());
            last = next;
        }
        all.sort();
        all
    }

    #[test]
    fn heads_preserve_the_order_of_keys_of_every_length() {
        // Sorted byte strings of 0 to 10 bytes (the empty key, keys that
        // are prefixes of others, bytes 0 and 0xff where padding and
        // lengths matter): their heads never decrease, and two neighbours
        // with equal heads differ only beyond 8 bytes or in length, the
        // shorter being a prefix of the longer.
        let all = strings(10);
        assert_eq!(all[0], Vec::<u8>::new());
        for w in all.windows(2) {
            let (a, b) = (&w[0], &w[1]);
            let (ha, hb) = (be_head(a), be_head(b));
            assert!(ha <= hb, "{a:?} {b:?}");
            if ha == hb && a.len().min(b.len()) <= 8 {
                assert!(b.starts_with(a), "{a:?} {b:?}");
            }
        }
    }

    /// A node of `kind` with the given fences and (sorted) entries.
    fn node(
        kind: u8,
        lower: Option<&[u8]>,
        upper: Option<&[u8]>,
        entries: &[(Vec<u8>, Vec<u8>)],
    ) -> PageBuf {
        let mut p = PageBuf::zeroed();
        init(&mut p.0, kind);
        set_fences(&mut p.0, lower, upper);
        for (k, v) in entries {
            assert!(push(&mut p.0, k, v), "entry fits");
        }
        p
    }

    /// Where `key` goes among sorted `keys`: (position, found).
    fn model_bound(keys: &[Vec<u8>], key: &[u8]) -> (usize, bool) {
        match keys.binary_search_by(|k| k.as_slice().cmp(key)) {
            Ok(i) => (i, true),
            Err(i) => (i, false),
        }
    }

    #[test]
    fn slots_hold_heads_of_keys_without_the_prefix_and_search_finds_them() {
        let p = b"prefix-shared-by-all-".to_vec();
        let mut lower = p.clone();
        lower.push(0);
        let mut upper = p.clone();
        upper.extend_from_slice(&[0xff; 12]);
        // Keys in (lower, upper]: the prefix then 0 to 14 more bytes,
        // many of them sharing 8 or more bytes after the prefix.
        let mut keys: Vec<Vec<u8>> = strings(4)
            .into_iter()
            .chain([
                vec![1; 9],
                vec![1; 10],
                [vec![1; 8], vec![0]].concat(),
                vec![0xff; 12],
            ])
            .chain((0..20).map(|i| [vec![7; 8], vec![i; (i % 6) as usize]].concat()))
            .map(|s| [p.clone(), s].concat())
            .filter(|k| k.as_slice() > lower.as_slice() && k.as_slice() <= upper.as_slice())
            .collect();
        keys.sort();
        keys.dedup();
        let entries: Vec<(Vec<u8>, Vec<u8>)> = keys
            .iter()
            .map(|k| (k.clone(), vec![k.len() as u8]))
            .collect();
        let n = node(LEAF, Some(&lower), Some(&upper), &entries);
        let b = &n.0;
        assert_eq!(rd16(b, PREFIX), p.len(), "the fences share the prefix");
        assert_eq!(
            check_layout(b, Some(&lower), Some(&upper)),
            Ok(keys.clone())
        );
        for (i, k) in keys.iter().enumerate() {
            let (suffix, v) = entry(b, i);
            assert_eq!(suffix, &k[rd16(b, PREFIX)..], "the prefix is cut");
            assert_eq!(rd64(b, SLOTS + i * SLOT), be_head(suffix));
            assert_eq!(v, &[k.len() as u8]);
        }
        // Probes: every key, and keys between, before and after them.
        let mut probes = keys.clone();
        for k in &keys {
            let mut x = k.clone();
            x.push(0);
            probes.push(x);
            let mut y = k.clone();
            y.pop();
            probes.push(y);
        }
        probes.extend([
            Vec::new(),
            vec![0xff; 40],
            p[..5].to_vec(),
            lower.clone(),
            upper.clone(),
        ]);
        for q in &probes {
            let want = if q.as_slice() <= lower.as_slice() {
                (0, false)
            } else if q.as_slice() > upper.as_slice() {
                (keys.len(), false)
            } else {
                model_bound(&keys, q)
            };
            assert_eq!(lower_bound(&b[..], Some(q)), Ok(want), "{q:?}");
        }
    }

    #[test]
    fn hints_hold_spread_heads_and_narrow_the_search_correctly() {
        let mut r = Rng(7);
        for count in [0usize, 1, 2, 16, 17, 32, 33, 34, 50, 100, 140] {
            // Keys of 4 random bytes from a small alphabet (so that some
            // heads repeat across probes), a few long ones tying on heads.
            let mut keys: Vec<Vec<u8>> = Vec::new();
            while keys.len() < count {
                let mut k: Vec<u8> = (0..4).map(|_| [0u8, 3, 9, 200][r.below(4)]).collect();
                if r.below(4) == 0 {
                    k = [
                        vec![5; 8],
                        (0..r.below(4)).map(|_| r.next() as u8).collect(),
                    ]
                    .concat();
                }
                if !keys.contains(&k) {
                    keys.push(k);
                }
            }
            keys.sort();
            let entries: Vec<_> = keys.iter().map(|k| (k.clone(), vec![1u8])).collect();
            let n = node(LEAF, None, None, &entries);
            let b = &n.0[..];
            for i in 0..HINT_COUNT {
                let want = if count == 0 {
                    0
                } else {
                    be_head(&keys[hint_pos(i, count)])
                };
                assert_eq!(rd64(b, HINTS + 8 * i), want, "count {count} hint {i}");
            }
            for _ in 0..300 {
                let q: Vec<u8> = if r.below(2) == 0 {
                    keys.get(r.below(count.max(1))).cloned().unwrap_or_default()
                } else {
                    (0..r.below(10))
                        .map(|_| [0u8, 3, 5, 9, 200][r.below(5)])
                        .collect()
                };
                let want = model_bound(&keys, &q);
                if count >= HINT_MIN {
                    let (lo, hi) = hint_range(b, count, be_head(&q)).unwrap();
                    assert!(
                        lo <= want.0 && want.0 <= hi,
                        "{q:?}: {lo}..={hi} misses {}",
                        want.0
                    );
                    // Without a hint equal to the key's head, the hints
                    // leave at most one stretch between two of them.
                    let tie = (0..HINT_COUNT).any(|i| rd64(b, HINTS + 8 * i) == be_head(&q));
                    assert!(
                        tie || hi - lo <= count / (HINT_COUNT + 1) + 1,
                        "{lo}..={hi}"
                    );
                }
                assert_eq!(lower_bound(b, Some(&q)), Ok(want), "count {count}: {q:?}");
            }
        }
    }

    #[test]
    fn splits_cut_the_separator_short_and_the_prefix_grows() {
        // A full leaf of keys "user:0000123:" + 2 bytes, between fences
        // "user:0000" and "user:0001".
        let lower = b"user:0000".to_vec();
        let upper = b"user:0001".to_vec();
        let mut entries = Vec::new();
        let mut i = 0u32;
        let base = node(LEAF, Some(&lower), Some(&upper), &[]);
        assert_eq!(rd16(&base.0, PREFIX), 8, "\"user:000\" is shared");
        let mut p = base.clone();
        loop {
            let k = format!("user:0000{:03}:", i / 7).into_bytes();
            let k = [k, vec![b'a' + (i % 7) as u8, b'z']].concat();
            if !push(&mut p.0, &k, &[0x5a; 40]) {
                break;
            }
            entries.push((k, vec![0x5a; 40]));
            i += 1;
        }
        let keys: Vec<Vec<u8>> = entries.iter().map(|e| e.0.clone()).collect();
        let (bid, rid) = (PageId(10), PageId(11));
        let mut right = PageBuf::zeroed();
        let mut left = p.clone();
        let probe = b"user:0000001:bb".to_vec();
        let sep = split_node(&mut left.0, &mut right.0, (bid, rid), &probe, &[]);
        let m = keys
            .iter()
            .position(|k| k.as_slice() > sep.as_slice())
            .unwrap();
        // The shortest separator between the halves' neighbouring keys.
        assert!(keys[m - 1].as_slice() <= sep.as_slice() && sep.as_slice() < keys[m].as_slice());
        assert_eq!(
            sep.len(),
            common_prefix(&keys[m - 1], &keys[m]) + 1,
            "{sep:?}"
        );
        assert!(sep.len() < keys[m].len());
        let lk = check_layout(&left.0, Some(&lower), Some(&sep)).unwrap();
        let rk = check_layout(&right.0, Some(&sep), Some(&upper)).unwrap();
        assert_eq!([lk, rk].concat(), keys);
        // Each half's prefix is its new fences' common prefix, longer
        // than the old one: the keys are stored shorter.
        assert!(rd16(&left.0, PREFIX) >= 8 && rd16(&right.0, PREFIX) >= 8);
        assert!(rd16(&left.0, PREFIX) > 8 || rd16(&right.0, PREFIX) > 8);
        assert_eq!(
            (rd64(&left.0, LINK_A), rd64(&right.0, LINK_B)),
            (rid.0, bid.0)
        );
        // Merging the halves back gives the node again.
        let mut merged = PageBuf::zeroed();
        assert!(merge_nodes(&mut merged.0, &left.0, &right.0, None));
        assert_eq!(
            check_layout(&merged.0, Some(&lower), Some(&upper)),
            Ok(keys.clone())
        );
        assert_eq!(rd16(&merged.0, PREFIX), 8);
        for (i, (_, v)) in entries.iter().enumerate() {
            assert_eq!(entry(&merged.0, i).1, v.as_slice());
        }
    }

    #[test]
    fn inner_splits_move_the_middle_key_up_and_keep_children() {
        let keys: Vec<Vec<u8>> = (0..150u32)
            .map(|i| format!("key{:05}", i * 3).into_bytes())
            .collect();
        let entries: Vec<_> = keys
            .iter()
            .enumerate()
            .map(|(i, k)| (k.clone(), (1000 + i as u64).to_le_bytes().to_vec()))
            .collect();
        let mut left = node(INNER, Some(b"key"), Some(b"key9"), &entries);
        wr64(&mut left.0, LINK_A, 999);
        let mut right = PageBuf::zeroed();
        let sep = split_node(
            &mut left.0,
            &mut right.0,
            (PageId(1), PageId(2)),
            b"key00001",
            &[],
        );
        let m = keys.iter().position(|k| *k == sep).expect("a key moved up");
        assert_eq!(
            check_layout(&left.0, Some(b"key"), Some(&sep)).unwrap(),
            keys[..m]
        );
        assert_eq!(
            check_layout(&right.0, Some(&sep), Some(b"key9")).unwrap(),
            keys[m + 1..]
        );
        assert_eq!(
            rd64(&left.0, LINK_A),
            1000 + m as u64,
            "the separator's child is the left upper child"
        );
        assert_eq!(rd64(&right.0, LINK_A), 999);
        for i in 0..m {
            assert_eq!(live_child(&left.0, i), PageId(1000 + i as u64));
        }
        for i in m + 1..keys.len() {
            assert_eq!(live_child(&right.0, i - m - 1), PageId(1000 + i as u64));
            assert_eq!(child(&right.0[..], i - m - 1), Ok(1000 + i as u64));
        }
        let mut merged = PageBuf::zeroed();
        assert!(merge_nodes(&mut merged.0, &left.0, &right.0, Some(&sep)));
        assert_eq!(
            check_layout(&merged.0, Some(b"key"), Some(b"key9")),
            Ok(keys.clone())
        );
        for i in 0..keys.len() {
            assert_eq!(live_child(&merged.0, i), PageId(1000 + i as u64));
        }
        assert_eq!(live_child(&merged.0, keys.len()), PageId(999));
    }

    #[test]
    fn slot_words_hold_the_largest_child_ids() {
        for (off, klen, rest) in [
            (SLOTS, 0, 0),
            (PAGE_SIZE, MAX_KEY, MAX_PAGES - 1),
            (4000, 513, 1024),
        ] {
            assert_eq!(unpack(pack(off, klen, rest)), (off, klen, rest));
        }
    }

    /// A random key in the fences' range (lower, upper], often sharing
    /// long stretches with others.
    fn key_between(r: &mut Rng, lower: &[u8], upper: &[u8]) -> Option<Vec<u8>> {
        for _ in 0..100 {
            let base = if r.below(2) == 0 { lower } else { upper };
            let cut = r.below(base.len() + 1);
            let mut k = base[..cut].to_vec();
            for _ in 0..r.below(14) {
                k.push([0u8, 1, 0x61, 0x62, 0xfe, 0xff][r.below(6)]);
            }
            if k.as_slice() > lower && k.as_slice() <= upper {
                return Some(k);
            }
        }
        None
    }

    #[test]
    fn node_operations_match_a_sorted_vec() {
        let mut r = Rng(0x5eed);
        for round in 0..60 {
            // Fences sharing a prefix of 0 to 20 bytes.
            let shared: Vec<u8> = (0..r.below(21)).map(|_| r.next() as u8).collect();
            let lower = [shared.clone(), vec![0x10, r.next() as u8]].concat();
            let upper = [
                shared.clone(),
                vec![0xf0],
                (0..r.below(4)).map(|_| r.next() as u8).collect(),
            ]
            .concat();
            let mut p = node(LEAF, Some(&lower), Some(&upper), &[]);
            let mut model: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
            for op in 0..600 {
                let b = &mut p.0;
                if r.below(3) > 0 || model.is_empty() {
                    let Some(k) = key_between(&mut r, &lower, &upper) else {
                        continue;
                    };
                    let v: Vec<u8> = (0..[0, 3, 40, 300][r.below(4)])
                        .map(|_| r.next() as u8)
                        .collect();
                    let (pos, found) = lower_bound(&b[..], Some(&k)).unwrap();
                    assert_eq!(
                        (pos, found),
                        model_bound(&model.iter().map(|e| e.0.clone()).collect::<Vec<_>>(), &k)
                    );
                    if found {
                        continue;
                    }
                    if insert_at(b, pos, &k, &v) {
                        model.insert(pos, (k, v));
                    } else {
                        assert!(
                            free_space(b) < k.len() - rd16(b, PREFIX) + v.len() + SLOT,
                            "refused with room"
                        );
                    }
                } else {
                    let i = r.below(model.len());
                    remove_at(b, i);
                    model.remove(i);
                }
                let keys: Vec<Vec<u8>> = model.iter().map(|e| e.0.clone()).collect();
                assert_eq!(
                    check_layout(b, Some(&lower), Some(&upper)),
                    Ok(keys.clone()),
                    "round {round} op {op}"
                );
                for (i, (_, v)) in model.iter().enumerate() {
                    assert_eq!(entry(b, i).1, v.as_slice());
                }
                // Searches for keys present, absent and outside the fences.
                for _ in 0..4 {
                    let q = match r.below(3) {
                        0 if !keys.is_empty() => keys[r.below(keys.len())].clone(),
                        1 => lower[..r.below(lower.len() + 1)].to_vec(),
                        _ => key_between(&mut r, &lower, &upper).unwrap_or_default(),
                    };
                    let want = if q.as_slice() <= lower.as_slice() {
                        (0, false)
                    } else {
                        model_bound(&keys, &q)
                    };
                    assert_eq!(lower_bound(&b[..], Some(&q)), Ok(want), "{q:?}");
                }
            }
        }
    }

    #[cfg(feature = "fuzzing")]
    mod on_a_pool {
        use super::*;
        use crate::fuzzing::{MemDevice, MemDisk};
        use crate::pool::hash::HashPool;
        use crate::pool::{NoLog, PoolConfig};
        use alloc::sync::Arc;

        fn pool(pages: usize, capacity: usize) -> HashPool<MemDevice> {
            let disk = MemDisk::new(vec![0; pages * PAGE_SIZE]);
            let cfg = PoolConfig {
                capacity,
                allocated: 0,
                first_block: 0,
                pages: None,
                evict_batch: 4,
                durability: Arc::new(NoLog),
                relax: std::thread::yield_now,
            };
            HashPool::new(vec![MemDevice::new(&disk)], cfg).unwrap()
        }

        #[test]
        fn optimistic_searches_read_words_like_latched_ones() {
            // The same nodes searched through an optimistic fix (racy word
            // reads) and latched (plain slices) agree, ties on 8-byte
            // heads and long prefixes included.
            let p = pool(64, 16);
            let mut r = Rng(99);
            for _ in 0..30 {
                let shared: Vec<u8> = (0..r.below(20)).map(|_| r.next() as u8).collect();
                let lower = [shared.clone(), vec![1]].concat();
                let upper = [shared.clone(), vec![0xfe, 7]].concat();
                let mut keys = Vec::new();
                for _ in 0..r.below(120) {
                    if let Some(k) = key_between(&mut r, &lower, &upper) {
                        keys.push(k);
                    }
                }
                keys.sort();
                keys.dedup();
                let entries: Vec<_> = keys.iter().map(|k| (k.clone(), vec![3u8; 9])).collect();
                let built = node(
                    LEAF,
                    Some(&lower),
                    Some(&upper),
                    &entries[..entries.len().min(100)],
                );
                let mut g = p.allocate().unwrap();
                let id = g.id();
                g.bytes_mut()[PAGE_HEADER..].copy_from_slice(&built.0[PAGE_HEADER..]);
                drop(g);
                let o = p.optimistic(id).unwrap();
                for _ in 0..100 {
                    let q = key_between(&mut r, &lower, &upper).unwrap_or_default();
                    assert_eq!(
                        lower_bound(&o, Some(&q)),
                        lower_bound(&built.0[..], Some(&q)),
                        "{q:?}"
                    );
                }
                o.validate().unwrap();
            }
        }

        #[test]
        fn lookups_do_not_fix_the_meta_page() {
            let p = pool(256, 200);
            let t = BTree::create(&p).unwrap();
            for k in 0..3000u32 {
                t.insert(&k.to_be_bytes(), &[7; 40]).unwrap();
            }
            p.flush().unwrap();
            while p.evict(64).unwrap() > 0 {}
            let mut out = Vec::new();
            let before = p.stats().reads;
            assert!(t.lookup(&77u32.to_be_bytes(), &mut out).unwrap());
            let read = p.stats().reads - before;
            // Root, inner node, leaf: no meta page.
            let depth = {
                let mut d = 1;
                let mut id = PageId(t.root.load(atomic::Ordering::Relaxed));
                loop {
                    let g = p.fix_shared(id).unwrap();
                    if g.bytes()[KIND] == LEAF {
                        break d;
                    }
                    id = live_child(g.bytes(), 0);
                    d += 1;
                }
            };
            assert!(depth >= 2);
            assert_eq!(
                read, depth as u64,
                "one read per level, none of the meta page"
            );
        }

        /// A key of the concurrent test: a long shared prefix (so nodes
        /// cut prefixes and their fences change at splits and merges)
        /// and a tail that makes some keys tie on 8-byte heads.
        fn shared_key(k: u32) -> Vec<u8> {
            let mut key = b"tenant-0042/orders/2024/".to_vec();
            key.extend_from_slice(format!("{:04}", k % 2000).as_bytes());
            if k.is_multiple_of(3) {
                key.extend_from_slice(b"/line-items/");
                key.extend_from_slice(&k.to_be_bytes());
            }
            key
        }

        /// A value naming its key and a generation.
        fn tagged(key: &[u8], gen: u32) -> Vec<u8> {
            let mut v = gen.to_le_bytes().to_vec();
            v.extend_from_slice(key);
            v.resize(4 + key.len() + (gen % 50) as usize, gen as u8);
            v
        }

        fn check_tagged(key: &[u8], v: &[u8]) {
            assert!(v.len() >= 4 + key.len(), "{key:?}: {v:?}");
            let gen = u32::from_le_bytes(v[..4].try_into().unwrap());
            assert_eq!(v, tagged(key, gen).as_slice(), "{key:?}");
        }

        #[test]
        fn readers_see_whole_entries_while_writers_split_and_merge() {
            // Two writers and two readers on a pool small enough to evict;
            // every value a reader gets (by lookup or by scan, in order)
            // must be a whole value written for its key.
            let p = pool(4096, 48);
            let t = BTree::create(&p).unwrap();
            let stop = core::sync::atomic::AtomicBool::new(false);
            std::thread::scope(|s| {
                let writers: Vec<_> = (0..2u64)
                    .map(|w| {
                        let t = &t;
                        s.spawn(move || {
                            let mut r = Rng(0x1000 + w);
                            for gen in 0..20_000u32 {
                                let k = r.below(6000) as u32;
                                let key = shared_key(k);
                                if r.below(3) == 0 {
                                    t.delete(&key).unwrap();
                                } else {
                                    t.upsert(&key, &tagged(&key, gen)).unwrap();
                                }
                            }
                        })
                    })
                    .collect();
                for rd in 0..2u64 {
                    let (t, stop) = (&t, &stop);
                    s.spawn(move || {
                        let mut r = Rng(0x2000 + rd);
                        let mut out = Vec::new();
                        loop {
                            let key = shared_key(r.below(6000) as u32);
                            if t.lookup(&key, &mut out).unwrap() {
                                check_tagged(&key, &out);
                            }
                            let mut last: Option<Vec<u8>> = None;
                            let fwd = r.below(2) == 0;
                            let mut n = 0;
                            let f = |k: &[u8], v: &[u8]| {
                                check_tagged(k, v);
                                if let Some(l) = &last {
                                    assert!(if fwd {
                                        l.as_slice() < k
                                    } else {
                                        l.as_slice() > k
                                    });
                                }
                                last = Some(k.to_vec());
                                n += 1;
                                n < 50
                            };
                            if fwd {
                                t.scan_forward(Some(&key), f).unwrap();
                            } else {
                                t.scan_backward(Some(&key), f).unwrap();
                            }
                            if stop.load(atomic::Ordering::Relaxed) {
                                break;
                            }
                        }
                    });
                }
                for w in writers {
                    w.join().unwrap();
                }
                stop.store(true, atomic::Ordering::Relaxed);
            });
            t.check().unwrap();
            assert!(p.stats().evictions > 0);
        }

        #[test]
        fn a_second_handle_follows_root_splits_and_collapses() {
            let p = pool(512, 512);
            let t1 = BTree::create(&p).unwrap();
            let t2 = BTree::open(&p, t1.meta()).unwrap();
            let mut out = Vec::new();
            assert!(t2.insert(b"first", b"1").unwrap());
            // t1 grows the root (t2's cached root stops being the root).
            for k in 0..4000u32 {
                t1.insert(&k.to_be_bytes(), &[1; 30]).unwrap();
            }
            for k in (0..4000u32).step_by(37) {
                assert!(t2.lookup(&k.to_be_bytes(), &mut out).unwrap());
            }
            assert!(t2.lookup(b"first", &mut out).unwrap());
            // t2 deletes everything (the root collapses to a leaf).
            for k in 0..4000u32 {
                assert!(t2.delete(&k.to_be_bytes()).unwrap());
            }
            assert!(t1.lookup(b"first", &mut out).unwrap() && out == b"1");
            assert!(!t1.lookup(&5u32.to_be_bytes(), &mut out).unwrap());
            assert!(t1.insert(b"again", b"2").unwrap());
            assert!(t2.lookup(b"again", &mut out).unwrap() && out == b"2");
            assert_eq!(t1.check().unwrap(), 2);
        }
    }
}
