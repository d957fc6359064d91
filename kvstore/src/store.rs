//! The durable store: a B+tree of keys and values on the engine's pages,
//! every change logged as a mini-transaction (`dbos_bufferpool::mtr`),
//! every write acknowledged only once its log unit is durable, with group
//! commit across concurrent writers (the engine's WAL).
//!
//! # On disk
//! The engine's layout (control blocks, log, data pages); in the data
//! pages:
//! ```text
//! page 0   the store's header: magic "DBOS-KV\0", format version (u32)
//! page 1   the tree's meta page (root, free list, the tree's next page)
//! page 2.. the tree's nodes, allocated as it grows, freed pages reused
//! ```
//! The same file opens as a process (`dbos-kv`) and in the guest
//! (`kvstore`): the format does not depend on the pool.
//!
//! # Transactions
//! [`Store::transaction`] applies up to [`MAX_TRANSACTION`] puts and
//! deletes as one log unit: after a crash, all of them or none. A reader
//! may see a write before it is durable (as in Redis, whose reply waits for
//! the fsync but whose data is visible at once); its writer is told only
//! once it is durable.

use crate::{Kv, Op};
use alloc::vec::Vec;
use core::fmt;
use core::sync::atomic::{AtomicU64, Ordering};
use dbos_bufferpool::btree::{BTree, Change, TreeError, MAX_CHANGES, MAX_KEY, MAX_VALUE};
use dbos_bufferpool::engine::PoolSetup;
use dbos_bufferpool::log::FIRST_LSN;
use dbos_bufferpool::page::{PAGE_CONTENTS, PAGE_HEADER};
use dbos_bufferpool::pool::Resident;
use dbos_bufferpool::{
    BlockDevice, BufferManager, Config, Engine, Layout, Lsn, PageId, PageWrite, PoolError,
    RecoveryReport,
};

/// The format version this build reads and writes (2: values larger than
/// a quarter page on overflow chains).
pub const FORMAT_VERSION: u32 = 2;

/// The header page's magic.
pub const MAGIC: [u8; 8] = *b"DBOS-KV\0";

/// Most changes in one [`Store::transaction`].
pub const MAX_TRANSACTION: usize = MAX_CHANGES;

const HEADER_PAGE: PageId = PageId(0);
const TREE_META: PageId = PageId(1);

/// What went wrong in the store.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Error {
    /// The engine failed: its log, its pages, recovery (see the engine's
    /// error for what and where).
    Engine(dbos_bufferpool::Error),
    /// The tree refused or failed.
    Tree(TreeError),
    /// Page 0 does not hold a store's header: the device holds an engine
    /// store of something else.
    NotAStore,
    /// The store was written in another format version.
    Version { found: u32, supported: u32 },
    /// A key longer than [`MAX_KEY`].
    KeyTooLong { len: usize, max: usize },
    /// A value longer than [`MAX_VALUE`] (1 MiB).
    ValueTooLarge { len: usize, max: usize },
}

impl From<dbos_bufferpool::Error> for Error {
    fn from(e: dbos_bufferpool::Error) -> Error {
        Error::Engine(e)
    }
}

impl From<TreeError> for Error {
    fn from(e: TreeError) -> Error {
        match e {
            TreeError::Engine(e) => Error::Engine(e),
            TreeError::KeyTooLong { len } => Error::KeyTooLong { len, max: MAX_KEY },
            TreeError::ValueTooLarge { len } => Error::ValueTooLarge {
                len,
                max: MAX_VALUE,
            },
            e => Error::Tree(e),
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Engine(e) => write!(f, "{e}"),
            Error::Tree(e) => write!(f, "{e}"),
            Error::NotAStore => f.write_str(
                "not a key-value store: the device holds an engine store whose page 0 has no \
                 store header (refusing to use it; `format --force` would discard it)",
            ),
            Error::Version { found, supported } => write!(
                f,
                "the store is format version {found}; this build reads and writes version \
                 {supported} only (refusing to open it, nothing was written)"
            ),
            Error::KeyTooLong { len, max } => write!(f, "key of {len} bytes (at most {max})"),
            Error::ValueTooLarge { len, max } => {
                write!(f, "value of {len} bytes (at most {max})")
            }
        }
    }
}

/// Counters of a store, for reports.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StoreStats {
    /// The engine's (log units, bytes logged, images, checkpoints).
    pub engine: dbos_bufferpool::EngineStats,
    /// The log's (batches written, commits).
    pub log: dbos_bufferpool::LogStats,
    /// The pool's (page reads, writes, evictions).
    pub pool: dbos_bufferpool::PoolStats,
    /// Pages the store's operations visited (see `BTree::counting`): a
    /// visit that found its page resident was a hit.
    pub visits: u64,
}

impl StoreStats {
    /// The counters of a phase that ran `ops` operations between `before`
    /// and `self`, named for a report: per operation, page reads, page
    /// writes, evictions, log units and log bytes; log units per log write
    /// (how many units a group commit carried); checkpoints taken.
    pub fn per_op(&self, before: &StoreStats, ops: u64) -> Vec<(&'static str, f64)> {
        let per = |a: u64, b: u64| (a - b) as f64 / ops.max(1) as f64;
        let units = self.engine.transactions - before.engine.transactions;
        let batches = self.log.batches - before.log.batches;
        let visits = self.visits - before.visits;
        let reads = self.pool.reads - before.pool.reads;
        alloc::vec![
            // Page reads are misses (of visits, and of the splits' and
            // merges' pages, which are not counted as visits).
            (
                "hit ratio",
                if visits == 0 {
                    1.0
                } else {
                    1.0 - (reads.min(visits) as f64 / visits as f64)
                },
            ),
            ("page visits / op", per(visits, 0)),
            ("page reads / op", per(self.pool.reads, before.pool.reads)),
            (
                "page writes / op",
                per(self.pool.writes, before.pool.writes)
            ),
            (
                "evictions / op",
                per(self.pool.evictions, before.pool.evictions)
            ),
            ("log units / op", per(units, 0)),
            (
                "log bytes / op",
                per(self.log.record_bytes, before.log.record_bytes),
            ),
            (
                "log units / log write",
                if batches == 0 {
                    0.0
                } else {
                    units as f64 / batches as f64
                },
            ),
            (
                "checkpoints",
                (self.engine.checkpoints - before.engine.checkpoints) as f64,
            ),
            (
                "store growths",
                (self.engine.growths - before.engine.growths) as f64,
            ),
        ]
    }
}

/// A durable key-value store on engine `Engine<D, B>`.
pub struct Store<D: BlockDevice, B: BufferManager> {
    engine: Engine<D, B>,
    /// The tree's root as last seen (a hint, see `BTree::attach`).
    root: AtomicU64,
    /// Pages visited by the store's operations, on cache lines of their
    /// own, each thread adding to one (picked by its stack's address).
    visits: [Padded; VISIT_SHARDS],
}

const VISIT_SHARDS: usize = 8;

#[repr(align(64))]
#[derive(Default)]
struct Padded(AtomicU64);

impl<D: BlockDevice + Send + 'static, B: BufferManager> Store<D, B>
where
    Engine<D, B>: Sync,
{
    /// Formats the device for `layout` (whatever it holds: the explicit
    /// format) and creates an empty store on it.
    pub fn format(
        log_dev: D,
        data_dev: D,
        layout: Layout,
        config: Config,
        make_pool: impl FnOnce(PoolSetup) -> Result<B, PoolError>,
    ) -> Result<Store<D, B>, Error> {
        let engine = Engine::format(log_dev, data_dev, layout, config, make_pool)?;
        let store = Store::finish_format(engine, false)?;
        log::info!("kvstore: formatted, format version {FORMAT_VERSION}");
        Ok(store)
    }

    /// The store's part of a format, on an engine store whose pages are as
    /// format left them: the header (unless `has_header`), then the tree,
    /// each one durable commit. [`Store::open`] finishes a format a crash
    /// interrupted between them.
    fn finish_format(engine: Engine<D, B>, has_header: bool) -> Result<Store<D, B>, Error> {
        if !has_header {
            let mut header = [0u8; 12];
            header[..8].copy_from_slice(&MAGIC);
            header[8..].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
            engine.commit(&[PageWrite {
                page: HEADER_PAGE,
                offset: PAGE_HEADER,
                data: &header,
            }])?;
        }
        let root = {
            let (t, lsn) = BTree::create_logged(engine.pool(), &engine, TREE_META)?;
            engine.wait_durable(lsn)?;
            t.root_hint()
        };
        Ok(Store {
            engine,
            root: AtomicU64::new(root),
            visits: Default::default(),
        })
    }

    /// Whether `page` holds nothing but what format wrote (an empty page).
    fn untouched(engine: &Engine<D, B>, page: PageId) -> Result<bool, Error> {
        let mut body = alloc::vec![0u8; PAGE_CONTENTS];
        engine.read(page, PAGE_HEADER, &mut body)?;
        Ok(body.iter().all(|&b| b == 0))
    }

    /// Opens the store on the device: recovers the engine, then checks the
    /// store's header (refusing another format version, naming both). A
    /// store whose format was interrupted after the engine's part is
    /// finished now (nothing was ever stored in it): an engine store that
    /// never committed anything, with the header page and the tree's meta
    /// page as format left them, or a store with its header whose tree's
    /// meta page is still empty.
    pub fn open(
        log_dev: D,
        data_dev: D,
        config: Config,
        make_pool: impl FnOnce(PoolSetup) -> Result<B, PoolError>,
    ) -> Result<(Store<D, B>, RecoveryReport), Error> {
        let (engine, report) = Engine::open(log_dev, data_dev, config, make_pool)?;
        let mut header = [0u8; 12];
        engine.read(HEADER_PAGE, PAGE_HEADER, &mut header)?;
        let unfinished = |e: &Engine<D, B>, has_header: bool| -> Result<bool, Error> {
            if !Store::untouched(e, TREE_META)? {
                return Ok(false);
            }
            log::warn!(
                "kvstore: the store's format was interrupted before its {}; finishing it",
                if has_header { "tree" } else { "header" }
            );
            Ok(true)
        };
        // Without a header, only an engine store that never committed
        // anything (the header is the format's first commit) is taken for
        // this store's unfinished format: another program's store, once
        // it has been used, is refused below.
        if report.end == FIRST_LSN
            && Store::untouched(&engine, HEADER_PAGE)?
            && unfinished(&engine, false)?
        {
            return Ok((Store::finish_format(engine, false)?, report));
        }
        if header[..8] != MAGIC {
            return Err(Error::NotAStore);
        }
        let found = u32::from_le_bytes(header[8..].try_into().expect("4 bytes"));
        if found != FORMAT_VERSION {
            return Err(Error::Version {
                found,
                supported: FORMAT_VERSION,
            });
        }
        if unfinished(&engine, true)? {
            return Ok((Store::finish_format(engine, true)?, report));
        }
        let root = BTree::open_logged(engine.pool(), &engine, TREE_META)?.root_hint();
        Ok((
            Store {
                engine,
                root: AtomicU64::new(root),
                visits: Default::default(),
            },
            report,
        ))
    }

    /// A handle on the tree (no I/O), and when dropped the root it saw is
    /// kept for the next.
    fn tree(&self) -> Tree<'_, B> {
        Tree {
            tree: BTree::attach(
                self.engine.pool(),
                Some(&self.engine),
                TREE_META,
                self.root.load(Ordering::Relaxed),
            )
            .counting(),
            root: &self.root,
            visits: &self.visits,
        }
    }

    /// The engine under the store.
    pub fn engine(&self) -> &Engine<D, B> {
        &self.engine
    }

    /// Copies the value of `key` into `out`; false if absent.
    pub fn get(&self, key: &[u8], out: &mut Vec<u8>) -> Result<bool, Error> {
        if key.len() > MAX_KEY {
            return Err(Error::KeyTooLong {
                len: key.len(),
                max: MAX_KEY,
            });
        }
        Ok(self.tree().lookup(key, out)?)
    }

    /// [`get`](Self::get) through resident pages only: what a caller that
    /// must not wait for storage uses (`BTree::lookup_resident`).
    pub fn get_resident(&self, key: &[u8], out: &mut Vec<u8>) -> Result<Resident<bool>, Error> {
        if key.len() > MAX_KEY {
            return Err(Error::KeyTooLong {
                len: key.len(),
                max: MAX_KEY,
            });
        }
        Ok(self.tree().lookup_resident(key, out)?)
    }

    /// Applies `changes` as one log unit, visible at once; its outcomes
    /// and the LSN to wait for to make it durable.
    fn apply_nowait(&self, changes: &[Change<'_>]) -> Result<(Vec<bool>, Lsn), Error> {
        let applied = self.tree().apply(changes)?;
        // A change that changed nothing (a delete of an absent key) was
        // decided on what the tree held, which may not be durable yet:
        // everything logged so far is waited for instead.
        let lsn = applied
            .lsn
            .unwrap_or_else(|| self.engine.wal().insert_lsn());
        Ok((applied.outcomes, lsn))
    }

    /// Applies `changes` as one log unit and waits until it is durable.
    fn apply(&self, changes: &[Change<'_>]) -> Result<Vec<bool>, Error> {
        let (outcomes, lsn) = self.apply_nowait(changes)?;
        self.engine.wait_durable(lsn)?;
        Ok(outcomes)
    }

    /// Sets `key` to `value`, durably; true if the key was new.
    pub fn put(&self, key: &[u8], value: &[u8]) -> Result<bool, Error> {
        Ok(self.apply(&[Change::Upsert { key, val: value }])?[0])
    }

    /// Removes `key`, durably; false if it was absent.
    pub fn delete(&self, key: &[u8]) -> Result<bool, Error> {
        Ok(self.apply(&[Change::Delete { key }])?[0])
    }

    /// Applies `ops` in order, atomically (one log unit), visible to every
    /// reader on return, and returns the LSN to pass to [`wait`](Self::wait)
    /// for durability: a server applies many clients' writes this way and
    /// waits once for all of them. At most [`MAX_TRANSACTION`] operations.
    pub fn write(&self, ops: &[Op<'_>]) -> Result<Lsn, Error> {
        Ok(self.apply_nowait(&as_changes(ops))?.1)
    }

    /// Returns once the log is durable up to `lsn`.
    pub fn wait(&self, lsn: Lsn) -> Result<(), Error> {
        Ok(self.engine.wait_durable(lsn)?)
    }

    /// Applies `ops` in order, atomically and durably (one log unit, one
    /// wait for the log). At most [`MAX_TRANSACTION`] operations.
    pub fn transaction(&self, ops: &[Op<'_>]) -> Result<(), Error> {
        self.apply(&as_changes(ops)).map(|_| ())
    }

    /// Calls `f(key, value)` for up to `limit` entries with keys `>=
    /// start` in ascending order; returns how many.
    pub fn scan(
        &self,
        start: &[u8],
        limit: usize,
        f: &mut dyn FnMut(&[u8], &[u8]),
    ) -> Result<usize, Error> {
        let mut n = 0;
        if limit == 0 {
            return Ok(0);
        }
        self.tree().scan_forward(Some(start), |k, v| {
            f(k, v);
            n += 1;
            n < limit
        })?;
        Ok(n)
    }

    /// Checks the whole tree (see `BTree::check`) and returns its entries.
    /// Not concurrently with writers.
    pub fn check(&self) -> Result<usize, Error> {
        Ok(self.tree().check()?)
    }

    /// Pages of the tree's area (`next`: pages `1..next` are the tree's)
    /// and pages on its free list.
    pub fn space(&self) -> Result<(u64, u64), Error> {
        Ok(self.tree().space()?)
    }

    /// The counters.
    pub fn stats(&self) -> StoreStats {
        StoreStats {
            engine: self.engine.stats(),
            log: self.engine.wal().stats(),
            pool: self.engine.pool().stats(),
            visits: self
                .visits
                .iter()
                .map(|v| v.0.load(Ordering::Relaxed))
                .sum(),
        }
    }

    /// Takes a checkpoint (every page written, the log freed): a clean
    /// shutdown, after which opening replays nothing.
    pub fn checkpoint(&self) -> Result<(), Error> {
        self.engine.checkpoint()?;
        Ok(())
    }

    /// Takes a checkpoint if the log since the last one fills `percent` of
    /// it or more: called from a background thread often enough, writers
    /// never reach the engine's own threshold, where the writer that finds
    /// the log past it takes the checkpoint in its own path (a stall of
    /// every dirty page's write). True if it took one.
    pub fn checkpoint_if_over(&self, percent: u64) -> Result<bool, Error> {
        let (used, size) = self.engine.log_fill();
        if used * 100 < size * percent {
            return Ok(false);
        }
        self.checkpoint()?;
        Ok(true)
    }
}

/// The tree's changes for a transaction's operations.
fn as_changes<'a>(ops: &[Op<'a>]) -> Vec<Change<'a>> {
    ops.iter()
        .map(|op| match *op {
            Op::Put { key, value } => Change::Upsert { key, val: value },
            Op::Delete { key } => Change::Delete { key },
        })
        .collect()
}

/// A tree handle that hands its root hint back when dropped (a write to
/// the shared hint only when the root moved: every operation makes a
/// handle).
struct Tree<'s, B: BufferManager> {
    tree: BTree<'s, B>,
    root: &'s AtomicU64,
    visits: &'s [Padded; VISIT_SHARDS],
}

impl<'s, B: BufferManager> core::ops::Deref for Tree<'s, B> {
    type Target = BTree<'s, B>;
    fn deref(&self) -> &BTree<'s, B> {
        &self.tree
    }
}

impl<B: BufferManager> Drop for Tree<'_, B> {
    fn drop(&mut self) {
        let seen = self.tree.root_hint();
        if self.root.load(Ordering::Relaxed) != seen {
            self.root.store(seen, Ordering::Relaxed);
        }
        // Threads' stacks lie apart: a shard per stack region.
        let here = 0u8;
        let shard = (core::ptr::addr_of!(here) as usize >> 16) % VISIT_SHARDS;
        self.visits[shard]
            .0
            .fetch_add(self.tree.visits(), Ordering::Relaxed);
    }
}

impl<D: BlockDevice + Send + 'static, B: BufferManager> Kv for Store<D, B>
where
    Engine<D, B>: Sync,
{
    type Error = Error;
    fn get(&self, key: &[u8], out: &mut Vec<u8>) -> Result<bool, Error> {
        Store::get(self, key, out)
    }
    fn put(&self, key: &[u8], value: &[u8]) -> Result<bool, Error> {
        Store::put(self, key, value)
    }
    fn delete(&self, key: &[u8]) -> Result<bool, Error> {
        Store::delete(self, key)
    }
    fn transaction(&self, ops: &[Op<'_>]) -> Result<(), Error> {
        Store::transaction(self, ops)
    }
    fn scan(
        &self,
        start: &[u8],
        limit: usize,
        f: &mut dyn FnMut(&[u8], &[u8]),
    ) -> Result<usize, Error> {
        Store::scan(self, start, limit, f)
    }
}
