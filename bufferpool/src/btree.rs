//! A B+tree on any [`BufferManager`]: variable-length keys and values,
//! insert, update, delete, point lookups, forward and backward range scans,
//! node splits and merges. Readers use optimistic lock coupling (no latch is
//! taken on the way down; each node is validated before its child pointer
//! is trusted); writers descend optimistically and upgrade only the nodes
//! they change, never waiting for a latch while holding one (a failed
//! upgrade restarts the operation), so there is no deadlock.
//!
//! It is `no_std` + `alloc` and generic over the pool, so the same source
//! runs on the process pools and on the guest's.
//!
//! # Limits
//! Keys are at most [`MAX_KEY`] (512) bytes and an entry (key + value) at
//! most [`MAX_ENTRY`] (1024) bytes, a quarter of a page, so every node
//! holds at least three entries and a split always makes room.
//!
//! # Node format (after the 32-byte page header of [`crate::page`])
//! ```text
//! 32  u8   kind: 1 leaf, 2 inner, 3 meta, 4 free (unlinked)
//! 34  u16  count of entries
//! 36  u16  heap start (entries are stored from the end of the page down)
//! 38  u16  live heap bytes
//! 40  u64  leaf: right sibling; inner: upper child (keys > every key); meta: root
//! 48  u64  leaf: left sibling
//! 56  slots, 6 bytes each, sorted by key: offset u16, key length u16,
//!     value length u16; an inner node's value is the child page id (u64 LE)
//! ```
//! An inner entry `(k, c)` sends keys `<= k` (and greater than the previous
//! entry's key) to `c`. Missing siblings are `u64::MAX`. Freed nodes are
//! kept on an in-memory free list for reuse by splits (not persistent: the
//! tree's free space is not logged yet).

use crate::page::{PageBuf, PAGE_HEADER};
use crate::pool::{
    BufferManager, ExclusiveGuard, OptimisticGuard, PageRead, Pool, PoolError, Stale,
};
use crate::{PageId, PAGE_SIZE};
use alloc::vec::Vec;
use core::cmp::Ordering;
use core::fmt;

/// Longest key in bytes.
pub const MAX_KEY: usize = 512;
/// Longest entry (key + value) in bytes.
pub const MAX_ENTRY: usize = 1024;

const KIND: usize = PAGE_HEADER;
const COUNT: usize = PAGE_HEADER + 2;
const HEAP: usize = PAGE_HEADER + 4;
const LIVE: usize = PAGE_HEADER + 6;
const LINK_A: usize = PAGE_HEADER + 8;
const LINK_B: usize = PAGE_HEADER + 16;
const SLOTS: usize = PAGE_HEADER + 24;
const SLOT: usize = 6;
const MAX_COUNT: usize = (PAGE_SIZE - SLOTS) / SLOT;
const NONE: u64 = u64::MAX;

const LEAF: u8 = 1;
const INNER: u8 = 2;
const META: u8 = 3;
const FREE: u8 = 4;

/// A node is merged with a sibling when its live bytes fall below this.
const UNDERFULL: usize = (PAGE_SIZE - SLOTS) / 4;

/// What went wrong in a tree operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TreeError {
    /// The pool failed.
    Pool(PoolError),
    /// A key longer than [`MAX_KEY`].
    KeyTooLong { len: usize },
    /// A key + value longer than [`MAX_ENTRY`].
    EntryTooLarge { len: usize },
    /// A latched node does not parse: the tree is damaged.
    Corrupt { page: PageId, what: &'static str },
}

impl fmt::Display for TreeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TreeError::Pool(e) => write!(f, "{e}"),
            TreeError::KeyTooLong { len } => write!(f, "key of {len} bytes (max {MAX_KEY})"),
            TreeError::EntryTooLarge { len } => {
                write!(f, "entry of {len} bytes (max {MAX_ENTRY})")
            }
            TreeError::Corrupt { page, what } => write!(f, "node {} is damaged: {what}", page.0),
        }
    }
}

impl From<PoolError> for TreeError {
    fn from(e: PoolError) -> TreeError {
        TreeError::Pool(e)
    }
}

/// Internal: restart the operation, or fail it.
enum E {
    Restart,
    Fail(TreeError),
}

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

/// Slot `i`: (offset, key length, value length), checked to lie in the page.
fn slot<P: PageRead + ?Sized>(p: &P, i: usize) -> Result<(usize, usize, usize), Stale> {
    let at = SLOTS + i * SLOT;
    let off = p.u16_at(at)? as usize;
    let klen = p.u16_at(at + 2)? as usize;
    let vlen = p.u16_at(at + 4)? as usize;
    if off < SLOTS || off + klen + vlen > PAGE_SIZE {
        return Err(Stale);
    }
    Ok((off, klen, vlen))
}

/// First position whose key is `>= key` (`None`: +infinity), and whether it
/// is equal.
fn lower_bound<P: PageRead + ?Sized>(p: &P, key: Option<&[u8]>) -> Result<(usize, bool), Stale> {
    let n = count(p)?;
    let Some(key) = key else {
        return Ok((n, false));
    };
    let (mut lo, mut hi) = (0, n);
    while lo < hi {
        let mid = (lo + hi) / 2;
        let (off, klen, _) = slot(p, mid)?;
        if p.compare(off, klen, key)? == Ordering::Less {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    let exact = if lo < n {
        let (off, klen, _) = slot(p, lo)?;
        p.compare(off, klen, key)? == Ordering::Equal
    } else {
        false
    };
    Ok((lo, exact))
}

/// An inner node's child at `pos` (`count` is the upper child).
fn child<P: PageRead + ?Sized>(p: &P, pos: usize) -> Result<u64, Stale> {
    if pos >= count(p)? {
        return p.u64_at(LINK_A);
    }
    let (off, klen, vlen) = slot(p, pos)?;
    if vlen != 8 {
        return Err(Stale);
    }
    p.u64_at(off + klen)
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
    wr64(b, LINK_A, NONE);
    wr64(b, LINK_B, NONE);
}

/// Free bytes, counting holes left by removals.
fn free_space(b: &[u8]) -> usize {
    PAGE_SIZE - SLOTS - rd16(b, COUNT) * SLOT - rd16(b, LIVE)
}

/// The entry at `i` of a latched node: (key, value) ranges.
fn entry(b: &[u8], i: usize) -> (&[u8], &[u8]) {
    let at = SLOTS + i * SLOT;
    let (off, klen, vlen) = (rd16(b, at), rd16(b, at + 2), rd16(b, at + 4));
    (&b[off..off + klen], &b[off + klen..off + klen + vlen])
}

fn compact(b: &mut [u8]) {
    let mut tmp = PageBuf::zeroed();
    tmp.0.copy_from_slice(b);
    let n = rd16(b, COUNT);
    let mut heap = PAGE_SIZE;
    for i in 0..n {
        let (k, v) = entry(&tmp.0, i);
        let len = k.len() + v.len();
        heap -= len;
        b[heap..heap + k.len()].copy_from_slice(k);
        b[heap + k.len()..heap + len].copy_from_slice(v);
        wr16(b, SLOTS + i * SLOT, heap);
    }
    wr16(b, HEAP, heap);
}

/// Inserts `(key, val)` at position `pos`; false if it does not fit.
fn insert_at(b: &mut [u8], pos: usize, key: &[u8], val: &[u8]) -> bool {
    let need = key.len() + val.len();
    if free_space(b) < need + SLOT {
        return false;
    }
    let n = rd16(b, COUNT);
    if rd16(b, HEAP) < SLOTS + (n + 1) * SLOT + need {
        compact(b);
    }
    let heap = rd16(b, HEAP) - need;
    b[heap..heap + key.len()].copy_from_slice(key);
    b[heap + key.len()..heap + need].copy_from_slice(val);
    let at = SLOTS + pos * SLOT;
    b.copy_within(at..SLOTS + n * SLOT, at + SLOT);
    wr16(b, at, heap);
    wr16(b, at + 2, key.len());
    wr16(b, at + 4, val.len());
    wr16(b, HEAP, heap);
    wr16(b, COUNT, n + 1);
    let live = rd16(b, LIVE) + need;
    wr16(b, LIVE, live);
    true
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
}

fn set_child(b: &mut [u8], pos: usize, c: PageId) {
    if pos >= rd16(b, COUNT) {
        wr64(b, LINK_A, c.0);
    } else {
        let at = SLOTS + pos * SLOT;
        let (off, klen) = (rd16(b, at), rd16(b, at + 2));
        wr64(b, off + klen, c.0);
    }
}

fn live_child(b: &[u8], pos: usize) -> PageId {
    if pos >= rd16(b, COUNT) {
        PageId(rd64(b, LINK_A))
    } else {
        PageId(rd64(entry(b, pos).1, 0))
    }
}

/// What an operation does when the key exists or not.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Put {
    Insert,
    Update,
    Upsert,
}

/// A B+tree whose meta page (holding the root's id) is `meta`.
pub struct BTree<'p, B: BufferManager + ?Sized> {
    pool: &'p B,
    meta: PageId,
    free: spin::Mutex<Vec<PageId>>,
}

impl<'p, B: BufferManager + ?Sized> BTree<'p, B> {
    /// A new empty tree in `pool`.
    pub fn create(pool: &'p B) -> Result<BTree<'p, B>, TreeError> {
        let mut meta = pool.allocate()?;
        let mut root = pool.allocate()?;
        init(root.bytes_mut(), LEAF);
        let m = meta.bytes_mut();
        init(m, META);
        wr64(m, LINK_A, root.id().0);
        let id = meta.id();
        log::debug!("btree: created, meta {} root {}", id.0, root.id().0);
        Ok(BTree {
            pool,
            meta: id,
            free: spin::Mutex::new(Vec::new()),
        })
    }

    /// The tree whose meta page is `meta`.
    pub fn open(pool: &'p B, meta: PageId) -> Result<BTree<'p, B>, TreeError> {
        let g = pool.fix_shared(meta)?;
        if g.bytes()[KIND] != META {
            return Err(TreeError::Corrupt {
                page: meta,
                what: "not a tree meta page",
            });
        }
        Ok(BTree {
            pool,
            meta,
            free: spin::Mutex::new(Vec::new()),
        })
    }

    /// The meta page.
    pub fn meta(&self) -> PageId {
        self.meta
    }

    /// The pool.
    pub fn pool(&self) -> &'p B {
        self.pool
    }

    fn retry<T>(&self, mut f: impl FnMut() -> R<T>) -> Result<T, TreeError> {
        let mut restarts = 0u32;
        loop {
            match f() {
                Ok(t) => return Ok(t),
                Err(E::Fail(e)) => return Err(e),
                Err(E::Restart) => {
                    restarts += 1;
                    if restarts > 4 {
                        self.pool.relax();
                    } else {
                        core::hint::spin_loop();
                    }
                }
            }
        }
    }

    /// The root, read optimistically; the meta page is validated.
    fn root(&self) -> R<OptimisticGuard<'p, B>> {
        let meta = self.pool.optimistic(self.meta)?;
        let root = meta.u64_at(LINK_A)?;
        meta.validate()?;
        let node = self.pool.optimistic(PageId(root))?;
        meta.validate()?;
        Ok(node)
    }

    /// Descends to the leaf for `key` (`None`: the last leaf). Returns the
    /// leaf and its parent (with the leaf's position in it), all read
    /// optimistically.
    #[allow(clippy::type_complexity)]
    fn descend(
        &self,
        key: Option<&[u8]>,
    ) -> R<(
        OptimisticGuard<'p, B>,
        Option<(OptimisticGuard<'p, B>, usize)>,
    )> {
        let mut node = self.root()?;
        let mut parent = None;
        for _ in 0..64 {
            match kind(&node)? {
                LEAF => return Ok((node, parent)),
                INNER => {}
                _ => {
                    node.validate()?;
                    return Err(corrupt(node.id(), "not a tree node on the path"));
                }
            }
            let (pos, _) = lower_bound(&node, key)?;
            let c = child(&node, pos)?;
            node.validate()?;
            let next = self.pool.optimistic(PageId(c))?;
            node.validate()?;
            parent = Some((node, pos));
            node = next;
        }
        Err(E::Restart)
    }

    /// Finds `target`'s parent on the path of `key`, optimistically: the
    /// parent and `target`'s position in it. `None` if `target` is the root
    /// (the meta page's guard is returned instead) or not on the path.
    #[allow(clippy::type_complexity)]
    fn find_parent(
        &self,
        target: PageId,
        key: Option<&[u8]>,
    ) -> R<Option<(OptimisticGuard<'p, B>, usize)>> {
        let mut node = self.root()?;
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

    fn check_entry(key: &[u8], val: &[u8]) -> Result<(), TreeError> {
        if key.len() > MAX_KEY {
            return Err(TreeError::KeyTooLong { len: key.len() });
        }
        if key.len() + val.len() > MAX_ENTRY {
            return Err(TreeError::EntryTooLarge {
                len: key.len() + val.len(),
            });
        }
        Ok(())
    }

    /// Copies the value of `key` into `out`; false if absent.
    pub fn lookup(&self, key: &[u8], out: &mut Vec<u8>) -> Result<bool, TreeError> {
        self.retry(|| {
            let (leaf, _) = self.descend(Some(key))?;
            let (pos, exact) = lower_bound(&leaf, Some(key))?;
            if exact {
                let (off, klen, vlen) = slot(&leaf, pos)?;
                out.resize(vlen, 0);
                leaf.read_into(off + klen, out)?;
            }
            leaf.validate()?;
            Ok(exact)
        })
    }

    /// Inserts `key` with `val`; false (and no change) if `key` exists.
    pub fn insert(&self, key: &[u8], val: &[u8]) -> Result<bool, TreeError> {
        Self::check_entry(key, val)?;
        self.retry(|| self.put(key, val, Put::Insert))
    }

    /// Replaces the value of `key`; false (and no change) if absent.
    pub fn update(&self, key: &[u8], val: &[u8]) -> Result<bool, TreeError> {
        Self::check_entry(key, val)?;
        self.retry(|| self.put(key, val, Put::Update))
    }

    /// Inserts or replaces; true if `key` was new.
    pub fn upsert(&self, key: &[u8], val: &[u8]) -> Result<bool, TreeError> {
        Self::check_entry(key, val)?;
        self.retry(|| self.put(key, val, Put::Upsert))
    }

    fn put(&self, key: &[u8], val: &[u8], how: Put) -> R<bool> {
        let (leaf, _) = self.descend(Some(key))?;
        let id = leaf.id();
        let mut x = leaf.upgrade()?;
        let (pos, exact) =
            lower_bound(x.bytes(), Some(key)).map_err(|_| corrupt(id, "latched leaf"))?;
        match (how, exact) {
            (Put::Insert, true) | (Put::Update, false) => return Ok(false),
            _ => {}
        }
        let b = x.bytes();
        let old = if exact {
            let (k, v) = entry(b, pos);
            k.len() + v.len() + SLOT
        } else {
            0
        };
        if free_space(b) + old >= key.len() + val.len() + SLOT {
            let b = x.bytes_mut();
            if exact {
                remove_at(b, pos);
            }
            let fits = insert_at(b, pos, key, val);
            debug_assert!(fits);
            // insert/upsert: whether the key is new; update: it existed.
            return Ok(how == Put::Update || !exact);
        }
        drop(x);
        self.split(id, key)?;
        Err(E::Restart)
    }

    /// A page for a new node, latched exclusively.
    fn new_node(&self) -> R<ExclusiveGuard<'p, B>> {
        let reuse = self.free.lock().pop();
        match reuse {
            Some(id) => Ok(self.pool.fix_exclusive(id)?),
            None => Ok(self.pool.allocate()?),
        }
    }

    fn free_node(&self, mut x: ExclusiveGuard<'p, B>) {
        let id = x.id();
        init(x.bytes_mut(), FREE);
        drop(x);
        self.free.lock().push(id);
    }

    /// Splits `target` (on the path of `key`), splitting its parent first
    /// if the parent has no room for a separator. Returns Ok when something
    /// changed or the tree moved on; the caller restarts either way.
    fn split(&self, target: PageId, key: &[u8]) -> R<()> {
        let parent = self.find_parent(target, Some(key))?;
        let node = self.pool.optimistic(target)?;
        let Some((parent, pos)) = parent else {
            // The root: grow the tree by one level.
            let meta = self.pool.optimistic(self.meta)?;
            if meta.u64_at(LINK_A)? != target.0 {
                return Err(E::Restart);
            }
            let mut m = meta.upgrade()?;
            let mut n = node.upgrade()?;
            let mut right = self.new_node()?;
            let mut root = self.new_node()?;
            let ids = (n.id(), right.id());
            let sep = split_node(n.bytes_mut(), right.bytes_mut(), ids, key);
            let r = root.bytes_mut();
            init(r, INNER);
            insert_at(r, 0, &sep, &n.id().0.to_le_bytes());
            wr64(r, LINK_A, right.id().0);
            wr64(m.bytes_mut(), LINK_A, root.id().0);
            log::trace!("btree: root {} split, new root {}", target.0, root.id().0);
            drop((m, n, right, root));
            return Ok(());
        };
        let p = parent.upgrade()?;
        if free_space(p.bytes()) < MAX_KEY + 8 + SLOT {
            let pid = p.id();
            drop(p);
            return self.split(pid, key);
        }
        let mut p = p;
        let mut n = node.upgrade()?;
        if live_child(p.bytes(), pos) != target {
            return Err(corrupt(
                p.id(),
                "parent does not point to the child it led to",
            ));
        }
        let is_leaf = n.bytes()[KIND] == LEAF;
        // A leaf's right neighbour gets a new left sibling.
        let mut neighbour = None;
        if is_leaf {
            let r = rd64(n.bytes(), LINK_A);
            if r != NONE {
                neighbour = Some(self.pool.optimistic(PageId(r))?.upgrade()?);
            }
        }
        let mut right = self.new_node()?;
        let ids = (n.id(), right.id());
        let sep = split_node(n.bytes_mut(), right.bytes_mut(), ids, key);
        if let Some(nb) = neighbour.as_mut() {
            wr64(nb.bytes_mut(), LINK_B, right.id().0);
        }
        let pb = p.bytes_mut();
        set_child(pb, pos, right.id());
        let fits = insert_at(pb, pos, &sep, &n.id().0.to_le_bytes());
        debug_assert!(fits, "checked the parent's room");
        Ok(())
    }

    /// Deletes `key`; false if absent.
    pub fn delete(&self, key: &[u8]) -> Result<bool, TreeError> {
        let (found, leaf, underfull) = self.retry(|| {
            let (leaf, _) = self.descend(Some(key))?;
            let id = leaf.id();
            let mut x = leaf.upgrade()?;
            let (pos, exact) =
                lower_bound(x.bytes(), Some(key)).map_err(|_| corrupt(id, "latched leaf"))?;
            if !exact {
                return Ok((false, id, false));
            }
            remove_at(x.bytes_mut(), pos);
            Ok((true, id, rd16(x.bytes(), LIVE) < UNDERFULL))
        })?;
        if underfull {
            self.merge_up(leaf, key)?;
        }
        Ok(found)
    }

    /// Merges `node` with a sibling while it (then its parent) is underfull.
    fn merge_up(&self, mut node: PageId, key: &[u8]) -> Result<(), TreeError> {
        for _ in 0..64 {
            match self.try_merge(node, key) {
                Ok(Some(parent)) => node = parent,
                Ok(None) | Err(E::Restart) => return Ok(()),
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
        let mut p = parent.upgrade()?;
        let mut l = self.pool.optimistic(PageId(lid))?.upgrade()?;
        let r = self.pool.optimistic(PageId(rid))?.upgrade()?;
        let (lb, rb) = (l.bytes(), r.bytes());
        if lb[KIND] != rb[KIND] || (lb[KIND] != LEAF && lb[KIND] != INNER) {
            return Err(corrupt(p.id(), "siblings of different kinds"));
        }
        let leaf = lb[KIND] == LEAF;
        let sep_len = if leaf {
            0
        } else {
            entry(p.bytes(), lpos).0.len() + 8 + SLOT
        };
        let used = |b: &[u8]| rd16(b, LIVE) + rd16(b, COUNT) * SLOT;
        if used(lb) + used(rb) + sep_len > PAGE_SIZE - SLOTS {
            return Ok(None);
        }
        let mut rr = None;
        if leaf {
            let x = rd64(rb, LINK_A);
            if x != NONE {
                rr = Some(self.pool.optimistic(PageId(x))?.upgrade()?);
            }
        }
        // Move r's entries (after the separator, for inner nodes) into l.
        let mut tmp = PageBuf::zeroed();
        tmp.0.copy_from_slice(r.bytes());
        let lbm = l.bytes_mut();
        if !leaf {
            let (k, _) = entry(p.bytes(), lpos);
            let upper = rd64(lbm, LINK_A);
            let at = rd16(lbm, COUNT);
            let ok = insert_at(lbm, at, k, &upper.to_le_bytes());
            debug_assert!(ok);
        }
        for i in 0..rd16(&tmp.0, COUNT) {
            let (k, v) = entry(&tmp.0, i);
            let at = rd16(lbm, COUNT);
            let ok = insert_at(lbm, at, k, v);
            debug_assert!(ok);
        }
        wr64(lbm, LINK_A, rd64(&tmp.0, LINK_A));
        if let Some(rr) = rr.as_mut() {
            wr64(rr.bytes_mut(), LINK_B, l.id().0);
        }
        let pb = p.bytes_mut();
        set_child(pb, rpos, l.id());
        remove_at(pb, lpos);
        drop(rr);
        drop(l);
        self.free_node(r);
        let pid = p.id();
        let under = rd16(p.bytes(), LIVE) < UNDERFULL;
        drop(p);
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
        let mut m = meta.upgrade()?;
        let r = root.upgrade()?;
        let only = rd64(r.bytes(), LINK_A);
        wr64(m.bytes_mut(), LINK_A, only);
        drop(m);
        self.free_node(r);
        Ok(())
    }

    /// Calls `f(key, value)` for the entries with keys `>= start` (all if
    /// `None`) in ascending order until it returns false. Entries changed
    /// concurrently may or may not be seen; every entry delivered was in the
    /// tree when its leaf was read.
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
        loop {
            // Snapshot of the first leaf, found from the root.
            let res = self.retry(|| {
                let (leaf, _) = self.descend(if forward || bound.is_some() {
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
                for (k, v) in batch.iter() {
                    if !f(k, v) {
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
                let step = (|| -> R<OptimisticGuard<'p, B>> {
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
                    Ok(s) => cur = s,
                    Err(E::Restart) => break,
                    Err(E::Fail(e)) => return Err(e),
                }
            }
        }
    }

    /// Walks the whole tree with shared latches and checks its invariants:
    /// keys sorted and within their parents' bounds, all leaves at one
    /// depth, sibling links consistent. Returns the number of entries.
    /// For tests and tools; do not run it concurrently with writers.
    pub fn check(&self) -> Result<usize, TreeError> {
        let root = {
            let m = self.pool.fix_shared(self.meta)?;
            PageId(rd64(m.bytes(), LINK_A))
        };
        let mut leaves = Vec::new();
        let mut depth = None;
        let n = self.check_node(root, None, None, 0, &mut depth, &mut leaves)?;
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
        Ok(n)
    }

    fn check_node(
        &self,
        id: PageId,
        low: Option<&[u8]>,
        high: Option<&[u8]>,
        level: usize,
        depth: &mut Option<usize>,
        leaves: &mut Vec<PageId>,
    ) -> Result<usize, TreeError> {
        let bad = |what| TreeError::Corrupt { page: id, what };
        let g = self.pool.fix_shared(id)?;
        let b = g.bytes();
        let n = rd16(b, COUNT);
        let mut keys: Vec<Vec<u8>> = Vec::with_capacity(n);
        for i in 0..n {
            let k = entry(b, i).0.to_vec();
            if keys.last().is_some_and(|p| *p >= k) {
                return Err(bad("keys out of order"));
            }
            if low.is_some_and(|l| k.as_slice() <= l) || high.is_some_and(|h| k.as_slice() > h) {
                return Err(bad("key outside the parent's bounds"));
            }
            keys.push(k);
        }
        let live: usize = (0..n)
            .map(|i| {
                let (k, v) = entry(b, i);
                k.len() + v.len()
            })
            .sum();
        if live != rd16(b, LIVE) {
            return Err(bad("live byte count wrong"));
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
                    total += self.check_node(c, lo, hi, level + 1, depth, leaves)?;
                }
                Ok(total)
            }
            _ => Err(bad("not a tree node")),
        }
    }
}

/// Splits the latched node `b` (id `bid`) into `b` and the empty page `r`
/// (id `rid`, to the right). Returns the separator to insert into the parent: keys
/// `<= sep` stay in `b`. When `key` (the insert that needs room) is beyond
/// every key of the rightmost leaf, the leaf keeps everything (an append
/// pattern leaves full leaves behind).
fn split_node(b: &mut [u8], r: &mut [u8], (bid, rid): (PageId, PageId), key: &[u8]) -> Vec<u8> {
    let mut tmp = PageBuf::zeroed();
    tmp.0.copy_from_slice(b);
    let t = &tmp.0;
    let n = rd16(t, COUNT);
    let k = t[KIND];
    let (left_link, right_link) = (rd64(t, LINK_B), rd64(t, LINK_A));
    init(b, k);
    init(r, k);
    if k == LEAF {
        let append = right_link == NONE && n > 0 && entry(t, n - 1).0 < key;
        let m = if append {
            n
        } else {
            // Split by bytes.
            let half = rd16(t, LIVE) / 2;
            let mut acc = 0;
            let mut m = 0;
            while m < n - 1 {
                let (kk, v) = entry(t, m);
                acc += kk.len() + v.len();
                m += 1;
                if acc >= half {
                    break;
                }
            }
            m.max(1)
        };
        for i in 0..m {
            let (kk, v) = entry(t, i);
            insert_at(b, i, kk, v);
        }
        for i in m..n {
            let (kk, v) = entry(t, i);
            insert_at(r, i - m, kk, v);
        }
        wr64(b, LINK_B, left_link);
        wr64(b, LINK_A, rid.0);
        wr64(r, LINK_B, bid.0);
        wr64(r, LINK_A, right_link);
        entry(t, m - 1).0.to_vec()
    } else {
        let m = n / 2;
        for i in 0..m {
            let (kk, v) = entry(t, i);
            insert_at(b, i, kk, v);
        }
        for i in m + 1..n {
            let (kk, v) = entry(t, i);
            insert_at(r, i - m - 1, kk, v);
        }
        let (sep, mid_child) = entry(t, m);
        wr64(b, LINK_A, rd64(mid_child, 0));
        wr64(r, LINK_A, right_link);
        sep.to_vec()
    }
}

/// Entries copied out of one leaf during a scan.
#[derive(Default)]
struct Batch {
    data: Vec<u8>,
    /// (key start, key len, value len) into data, in delivery order.
    items: Vec<(usize, usize, usize)>,
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
        let range: Vec<usize> = if forward {
            let from = if exact && !inclusive { pos + 1 } else { pos };
            (from..n).collect()
        } else {
            let to = if exact && inclusive { pos + 1 } else { pos };
            (0..to).rev().collect()
        };
        for i in range {
            let (off, klen, vlen) = slot(p, i)?;
            let at = self.data.len();
            self.data.resize(at + klen + vlen, 0);
            p.read_into(off, &mut self.data[at..])?;
            self.items.push((at, klen, vlen));
        }
        self.next = p.u64_at(if forward { LINK_A } else { LINK_B })?;
        Ok(())
    }

    fn iter(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.items
            .iter()
            .map(|&(at, k, v)| (&self.data[at..at + k], &self.data[at + k..at + k + v]))
    }

    fn last_key(&self) -> Option<&[u8]> {
        self.items.last().map(|&(at, k, _)| &self.data[at..at + k])
    }
}
