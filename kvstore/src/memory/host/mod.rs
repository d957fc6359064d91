//! Owns the host engine: [`MemoryEngine`], the [`KvEngine`] over the
//! heap-resident [`Table`], persisted by snapshot files in a directory.
//!
//! - Writes go to the table under its one lock ([`RwLock`]: readers share
//!   it, writers and `take` hold it alone) and are acknowledged at once:
//!   `write` returns `Ticket(0)` and `wait` returns at once (durability is
//!   by snapshots, as Redis without an AOF).
//! - A save takes a snapshot of the whole heap under the write lock, so it
//!   is an exact point between two writes, and times that stall with the
//!   configured clock. It then writes the snapshot's view to
//!   `dump.dbkv` ([`file`]) while writers go on: in a background thread
//!   ([`KvEngine::bgsave`]) or in the caller ([`KvEngine::save`]). One save
//!   runs at a time; another is refused with Redis's "Background save
//!   already in progress".
//! - [`MemoryEngine::open`] loads `dump.dbkv` if there is one (a damaged
//!   file refuses to open, naming its path and the byte offset).
//!
//! The lock is `std`'s (a blocking lock), not a spin lock: a writer can
//! block inside the lock, in `fork()` or on a userfaultfd write fault, and
//! spinning readers would take the CPU the writer needs.

mod file;
mod periodic;
mod snapshot;

pub use file::{DUMP, DUMP_TMP};
pub use periodic::PeriodicSaves;
pub use snapshot::SnapshotKind;

use self::file::{load_dump, remove_leftover, write_dump, LoadError};
use self::snapshot::{AnyHeap, AnySnap, HeapError};
use super::format::Record;
use super::heap::HeapMem;
use super::layout::{MAX_KEY, MAX_VALUE};
use super::table::{scan_slot, Table};
use crate::server::engine::{Cursor, EngineError, KvEngine, SaveStatus, Ticket, UnixMs, Write};
use std::fmt;
use std::format;
use std::hash::{BuildHasher, Hasher};
use std::io;
use std::path::{Path, PathBuf};
use std::string::{String, ToString};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock, RwLock};
use std::thread::JoinHandle;
use std::time::Instant;
use std::vec::Vec;

/// Redis's answer to a save while one runs.
pub const IN_PROGRESS: &str = "Background save already in progress";

pub use super::table::MAX_WRITES;

/// Microseconds on a monotonic clock (the default [`MemoryConfig::clock_us`]).
pub fn monotonic_us() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_micros() as u64
}

/// How to open a [`MemoryEngine`].
#[derive(Clone, Debug)]
pub struct MemoryConfig {
    /// The directory of `dump.dbkv`.
    pub dir: PathBuf,
    /// Bytes of the heap (rounded up to a page): every key, value and the
    /// index live in it; the engine is full when it is.
    pub heap_bytes: usize,
    /// The snapshot mechanism.
    pub snapshot: SnapshotKind,
    /// A clock in microseconds, to time the writers' stall at a snapshot.
    pub clock_us: fn() -> u64,
}

impl MemoryConfig {
    /// A configuration with the default clock ([`monotonic_us`]).
    pub fn new(dir: impl Into<PathBuf>, heap_bytes: usize, snapshot: SnapshotKind) -> Self {
        MemoryConfig {
            dir: dir.into(),
            heap_bytes,
            snapshot,
            clock_us: monotonic_us,
        }
    }
}

/// Why an engine did not open.
#[derive(Debug)]
pub enum OpenError {
    /// The snapshot mechanism is not available here (userfaultfd missing or
    /// refused); `fork` always is.
    SnapshotUnavailable { kind: SnapshotKind, reason: String },
    /// The heap could not be made or formatted.
    Heap(String),
    /// A file system operation failed.
    Io {
        path: PathBuf,
        action: &'static str,
        error: io::Error,
    },
    /// `dump.dbkv` is damaged (nothing was changed on disk).
    Damaged {
        path: PathBuf,
        offset: u64,
        reason: String,
    },
    /// `dump.dbkv` holds more than the heap: the record at `offset` did
    /// not fit (nothing was changed on disk).
    DoesNotFit {
        path: PathBuf,
        offset: u64,
        reason: String,
    },
}

impl fmt::Display for OpenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OpenError::SnapshotUnavailable { kind, reason } => {
                write!(f, "snapshot mechanism {kind} unavailable: {reason}")
            }
            OpenError::Heap(e) => write!(f, "memory engine heap: {e}"),
            OpenError::Io {
                path,
                action,
                error,
            } => write!(f, "{action} {}: {error}", path.display()),
            OpenError::Damaged { path, reason, .. } => {
                write!(f, "cannot load {}: {reason}", path.display())
            }
            OpenError::DoesNotFit { path, reason, .. } => write!(
                f,
                "cannot load {} into a heap this small: {reason}",
                path.display()
            ),
        }
    }
}

impl std::error::Error for OpenError {}

/// What the save machinery keeps.
#[derive(Debug)]
struct SaveState {
    in_progress: bool,
    status: SaveStatus,
    /// The change counter at the snapshot of the last successful save.
    changes_at_save: u64,
    snapshots: u64,
    failed: u64,
}

/// A snapshot taken and not yet written.
struct Taken {
    snap: AnySnap,
    changes: u64,
    copied_before: Option<u64>,
}

struct Inner {
    /// Declared before `heap`: dropped first (it points into it).
    table: RwLock<Table>,
    heap: AnyHeap,
    dir: PathBuf,
    kind: SnapshotKind,
    clock_us: fn() -> u64,
    /// Keys changed since open.
    changes: AtomicU64,
    save: Mutex<SaveState>,
    save_done: Condvar,
    worker: Mutex<Option<JoinHandle<()>>>,
    /// Tests: how long a save waits between taking its snapshot and
    /// writing it (so that writers run while the view is old).
    #[cfg(test)]
    pause_after_take: Mutex<std::time::Duration>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The in-memory hash-table engine persisted by snapshots (see the module
/// documentation). Cloning gives another handle on the same engine.
#[derive(Clone)]
pub struct MemoryEngine {
    inner: Arc<Inner>,
}

impl fmt::Debug for MemoryEngine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryEngine")
            .field("dir", &self.inner.dir)
            .field("snapshot", &self.inner.kind)
            .field("heap_bytes", &self.inner.heap.len())
            .finish()
    }
}

impl MemoryEngine {
    /// Opens the engine on `config.dir` (created if missing): makes the
    /// heap, removes a leftover `dump.dbkv.tmp` (with a log line) and loads
    /// `dump.dbkv` if present. A damaged dump refuses to open
    /// ([`OpenError::Damaged`], naming the byte offset); nothing on disk is
    /// changed then.
    pub fn open(config: MemoryConfig) -> Result<MemoryEngine, OpenError> {
        let dir = config.dir;
        let io_err = |path: &Path, action, error| OpenError::Io {
            path: path.to_path_buf(),
            action,
            error,
        };
        std::fs::create_dir_all(&dir).map_err(|e| io_err(&dir, "creating directory", e))?;
        let heap_bytes = config
            .heap_bytes
            .checked_next_multiple_of(dbos_snapshot::PAGE_SIZE)
            .ok_or_else(|| OpenError::Heap(format!("heap of {} bytes", config.heap_bytes)))?;
        let heap = AnyHeap::new(config.snapshot, heap_bytes).map_err(|e| match e {
            HeapError::Unavailable(reason) => OpenError::SnapshotUnavailable {
                kind: config.snapshot,
                reason,
            },
            HeapError::Other(e) => OpenError::Heap(e),
        })?;
        // SAFETY: the heap's memory is valid, page-aligned and writable for
        // `len()` bytes as long as `heap` lives (the `Snapshotter`
        // contract); the table is dropped before the heap (field order of
        // `Inner`), and nothing else in this process writes the heap.
        let mem = unsafe { HeapMem::new(heap.ptr(), heap.len()) };
        let seed = std::hash::RandomState::new().build_hasher().finish();
        let mut table = Table::format(mem, seed).map_err(OpenError::Heap)?;

        let path = dir.join(DUMP);
        let loaded = load_dump(&path, &mut |r: Record<'_>| {
            table
                .apply(&[Write::Put {
                    key: r.key,
                    value: r.value,
                    expires: r.expires.map(UnixMs),
                }])
                .map(|_| ())
                .map_err(|e| format!("loading it: {e}"))
        })
        .map_err(|e| match e {
            LoadError::Io(e) => io_err(&path, "reading", e),
            LoadError::Bad { offset, reason } => OpenError::Damaged {
                path: path.clone(),
                offset,
                reason,
            },
            LoadError::Refused { offset, reason } => OpenError::DoesNotFit {
                path: path.clone(),
                offset,
                reason,
            },
        })?;
        // Only once the dump is known good: a leftover temporary file.
        remove_leftover(&dir).map_err(|e| io_err(&dir.join(DUMP_TMP), "removing", e))?;
        let mut status = SaveStatus {
            last_ok: true,
            ..SaveStatus::default()
        };
        match loaded {
            Some(s) => {
                log::info!(
                    "memory engine: loaded {} keys ({} bytes) from {}",
                    s.records,
                    s.bytes,
                    path.display()
                );
                status.last_save_unix = s.created_ms / 1000;
                status.latest_file_bytes = s.bytes;
            }
            None => log::info!("memory engine: no {} yet, starting empty", path.display()),
        }
        Ok(MemoryEngine {
            inner: Arc::new(Inner {
                table: RwLock::new(table),
                heap,
                dir,
                kind: config.snapshot,
                clock_us: config.clock_us,
                changes: AtomicU64::new(0),
                save: Mutex::new(SaveState {
                    in_progress: false,
                    status,
                    changes_at_save: 0,
                    snapshots: 0,
                    failed: 0,
                }),
                save_done: Condvar::new(),
                worker: Mutex::new(None),
                #[cfg(test)]
                pause_after_take: Mutex::new(std::time::Duration::ZERO),
            }),
        })
    }

    /// The snapshot mechanism in use.
    pub fn snapshot_kind(&self) -> SnapshotKind {
        self.inner.kind
    }

    /// The directory of `dump.dbkv`.
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// Returns once no save is running.
    pub fn wait_for_save(&self) {
        let mut st = lock(&self.inner.save);
        while st.in_progress {
            st = self
                .inner
                .save_done
                .wait(st)
                .unwrap_or_else(|e| e.into_inner());
        }
        drop(st);
        if let Some(h) = lock(&self.inner.worker).take() {
            let _ = h.join();
        }
    }

    /// Saves in the background every `every` when keys changed since the
    /// last save (`--save-every SECONDS`), until the returned handle is
    /// dropped.
    pub fn start_periodic_saves(&self, every: std::time::Duration) -> PeriodicSaves {
        PeriodicSaves::start(self.clone(), every)
    }

    /// Checks every invariant of the table (walks the whole heap).
    pub fn check(&self) -> Result<super::table::CheckSummary, String> {
        self.inner.read().check()
    }

    #[cfg(test)]
    fn set_pause_after_take(&self, d: std::time::Duration) {
        *lock(&self.inner.pause_after_take) = d;
    }
}

impl Inner {
    fn read(&self) -> std::sync::RwLockReadGuard<'_, Table> {
        self.table.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Table> {
        self.table.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Claims the one save slot and takes the snapshot under the write
    /// lock.
    fn begin_save(&self) -> Result<Taken, EngineError> {
        {
            let mut st = lock(&self.save);
            if st.in_progress {
                return Err(EngineError::Unsupported(IN_PROGRESS.to_string()));
            }
            st.in_progress = true;
        }
        let start = (self.clock_us)();
        let guard = self.write();
        let taken = self.heap.take();
        let changes = self.changes.load(Ordering::Relaxed);
        let copied_before = self.heap.copied_bytes();
        drop(guard);
        let stall = (self.clock_us)().saturating_sub(start);
        let mut st = lock(&self.save);
        match taken {
            Ok(snap) => {
                st.snapshots += 1;
                st.status.latest_stall_us = stall;
                Ok(Taken {
                    snap,
                    changes,
                    copied_before,
                })
            }
            Err(e) => {
                st.in_progress = false;
                st.failed += 1;
                st.status.last_ok = false;
                drop(st);
                self.save_done.notify_all();
                log::error!("memory engine: save failed: taking a snapshot: {e}");
                Err(EngineError::Unsupported(format!(
                    "save failed: cannot take a snapshot: {e}"
                )))
            }
        }
    }

    /// Writes the snapshot, releases it and records the outcome.
    fn finish_save(&self, taken: Taken) -> Result<(), String> {
        #[cfg(test)]
        std::thread::sleep(*lock(&self.pause_after_take));
        let written = write_dump(&self.dir, &self.heap, &taken.snap);
        let copied = match (taken.copied_before, self.heap.copied_bytes()) {
            (Some(a), Some(b)) => b.saturating_sub(a),
            _ => 0,
        };
        let released = self.heap.release(taken.snap);
        if let Err(e) = &released {
            log::warn!("memory engine: releasing a snapshot: {e}");
        }
        let mut st = lock(&self.save);
        st.in_progress = false;
        st.status.latest_copied_bytes = copied;
        let result = match written {
            Ok(w) => {
                st.status.last_ok = true;
                st.status.saves += 1;
                st.status.last_save_unix = file::now_unix_ms() / 1000;
                st.status.latest_file_bytes = w.file_bytes;
                st.changes_at_save = taken.changes;
                log::info!(
                    "memory engine: saved {} keys ({} bytes) to {}; writers stalled {} us, {} bytes copied",
                    w.records,
                    w.file_bytes,
                    self.dir.join(DUMP).display(),
                    st.status.latest_stall_us,
                    copied
                );
                Ok(())
            }
            Err(e) => {
                st.status.last_ok = false;
                st.failed += 1;
                log::error!("memory engine: save failed, the previous {DUMP} is kept: {e}");
                Err(e)
            }
        };
        drop(st);
        self.save_done.notify_all();
        result
    }
}

impl KvEngine for MemoryEngine {
    fn name(&self) -> &'static str {
        "memory"
    }

    fn get(&self, key: &[u8], out: &mut Vec<u8>) -> Result<Option<Option<UnixMs>>, EngineError> {
        Ok(self.inner.read().get(key, out))
    }

    fn write(&self, writes: &[Write<'_>]) -> Result<Ticket, EngineError> {
        Table::check_limits(writes)?;
        let n = self.inner.write().apply(writes)?;
        self.inner.changes.fetch_add(n, Ordering::Relaxed);
        Ok(Ticket(0))
    }

    fn wait(&self, _ticket: Ticket) -> Result<(), EngineError> {
        Ok(())
    }

    /// Every write is as durable as it will be until the next snapshot.
    fn durable(&self) -> Ticket {
        Ticket(u64::MAX)
    }

    fn max_writes(&self) -> usize {
        MAX_WRITES
    }

    fn max_key(&self) -> usize {
        MAX_KEY
    }

    fn max_value(&self) -> usize {
        MAX_VALUE
    }

    fn ordered(&self) -> bool {
        false
    }

    fn scan(
        &self,
        from: &Cursor,
        limit: usize,
        f: &mut dyn FnMut(&[u8], &[u8], Option<UnixMs>),
    ) -> Result<Cursor, EngineError> {
        let Some(slot) = scan_slot(from)? else {
            return Ok(Cursor::Done);
        };
        let mut entries = Vec::new();
        // Copied out under the lock, delivered after it: `f` may be slow or
        // call back into the engine.
        let next = self.inner.read().scan(slot, limit, &mut entries);
        for (k, v, e) in &entries {
            f(k, v, *e);
        }
        Ok(next.map_or(Cursor::Done, Cursor::Slot))
    }

    fn len(&self) -> Result<u64, EngineError> {
        Ok(self.inner.read().len())
    }

    fn expiring(&self) -> Result<u64, EngineError> {
        Ok(self.inner.read().expiring())
    }

    fn clear(&self) -> Result<Ticket, EngineError> {
        let n = self.inner.write().clear();
        self.inner.changes.fetch_add(n, Ordering::Relaxed);
        Ok(Ticket(0))
    }

    fn bgsave(&self) -> Result<(), EngineError> {
        let taken = self.inner.begin_save()?;
        let inner = Arc::clone(&self.inner);
        let mut worker = lock(&self.inner.worker);
        if let Some(h) = worker.take() {
            // The previous save finished (the slot was free): reap it.
            let _ = h.join();
        }
        let spawned = std::thread::Builder::new()
            .name("memory-bgsave".into())
            .spawn(move || {
                let _ = inner.finish_save(taken);
            });
        match spawned {
            Ok(h) => {
                *worker = Some(h);
                Ok(())
            }
            Err(e) => {
                // The closure (and the snapshot in it) was dropped, which
                // released the snapshot; free the slot.
                let mut st = lock(&self.inner.save);
                st.in_progress = false;
                st.failed += 1;
                st.status.last_ok = false;
                drop(st);
                self.inner.save_done.notify_all();
                log::error!("memory engine: starting the background save thread: {e}");
                Err(EngineError::Unsupported(format!(
                    "Background save failed: cannot start its thread: {e}"
                )))
            }
        }
    }

    fn save(&self) -> Result<(), EngineError> {
        let taken = self.inner.begin_save()?;
        self.inner
            .finish_save(taken)
            .map_err(|e| EngineError::Unsupported(format!("save failed: {e}")))
    }

    fn save_status(&self) -> SaveStatus {
        let st = lock(&self.inner.save);
        let mut s = st.status.clone();
        s.in_progress = st.in_progress;
        s.changes_since_save = self
            .inner
            .changes
            .load(Ordering::Relaxed)
            .saturating_sub(st.changes_at_save);
        s
    }

    fn counters(&self, out: &mut Vec<(&'static str, u64)>) {
        let (keys, used, bump, heap, slots) = {
            let t = self.inner.read();
            (
                t.len(),
                t.used_bytes(),
                t.heap_bytes_used(),
                t.heap_len() as u64,
                t.slots() as u64,
            )
        };
        let st = lock(&self.inner.save);
        out.extend_from_slice(&[
            ("keys", keys),
            ("heap_bytes", heap),
            ("heap_bytes_used", bump),
            ("heap_record_bytes", used),
            ("index_slots", slots),
            ("snapshots", st.snapshots),
            ("snapshot_stall_us_last", st.status.latest_stall_us),
            ("snapshot_bytes_copied_last", st.status.latest_copied_bytes),
            ("snapshot_file_bytes_last", st.status.latest_file_bytes),
            ("saves_failed", st.failed),
        ]);
    }

    fn shutdown(&self, save: bool) -> Result<(), EngineError> {
        loop {
            self.wait_for_save();
            if !save {
                return Ok(());
            }
            match self.save() {
                // A periodic save started meanwhile: wait for it, then save.
                Err(EngineError::Unsupported(m)) if m == IN_PROGRESS => continue,
                r => return r,
            }
        }
    }
}

#[cfg(test)]
mod tests;
