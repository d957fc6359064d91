//! The buffer-manager interface ([`BufferManager`]) over 4 KiB pages named
//! by [`PageId`], its guards, and what every pool shares: page I/O through
//! [`BlockDevice`] queues with identity checks ([`IoQueues`]) and the
//! owner's write-ahead hook ([`Durability`]).
//!
//! Implementations:
//! - [`vmcache::VmCache`] (process): every page id has a fixed address in
//!   one anonymous `MAP_NORESERVE` window; eviction is `MADV_DONTNEED`.
//! - [`hash::HashPool`] (process, and the guest without virtual-memory
//!   tricks: frames on the heap): a frame array and a page-id -> frame
//!   table, the classic design.
//! - [`tabby::Tabby`] (guest, and a process through libdbos's
//!   `ProcessPlatform`): the vmcache layout on a libdbos [`Platform`] window
//!   whose translations the pool edits itself; frames are allocated once,
//!   every frame's header names the page it holds, and eviction leaves the
//!   page-table entry and every TLB as they are (no `invlpg`, no IPI, no
//!   entry written): each access checks the header through the page's own
//!   address and a CPU with a stale translation repairs only itself
//!   (`docs/pools.md`). Its [`tabby::Eviction::InvalidateAll`] mode evicts
//!   the classic way (one `invalidate_all` per evicted page) for comparison.
//!
//! [`Platform`]: libdbos::platform::Platform
//!
//! # The contract, and the invariants every pool holds
//!
//! A page is fixed in one of three modes:
//! - **exclusive** ([`ExclusiveGuard`]): the only holder, may write;
//! - **shared** ([`SharedGuard`]): readers only, nobody writes;
//! - **optimistic** ([`OptimisticGuard`]): no latch at all. The reader
//!   remembers the page's latch word, reads, and validates; any write,
//!   eviction or reuse of the memory in between changes the version and
//!   fails validation.
//!
//! 1. *An optimistic reader may read a page that is being evicted or
//!    overwritten with another page: it never crashes, loops forever or
//!    acts on garbage.* The page's memory stays readable for as long as the
//!    pool lives (the vmcache window stays mapped, DONTNEED pages read as
//!    zero; hash-pool frames are never freed; Tabby maps every page of its
//!    window from creation on, to a read-only blank frame or to a frame
//!    that is never freed while the pool lives). Every read through
//!    an [`OptimisticGuard`] is bounds-checked against the page and returns
//!    [`Stale`] instead of panicking, and callers must validate before they
//!    act on what they read (follow a child pointer, return a value).
//! 2. *A version cannot wrap into a stale read validating:* versions are 56
//!    bits (argument in [`latch`]).
//! 3. *A page on storage carries its identity:* every write seals the page
//!    with [`page::seal`] (checksum, magic, page id, page LSN), and every
//!    read checks [`page::verify`] against the id it was read for: a bad
//!    checksum, a wrong id or a never-written page is
//!    [`PoolError::Corrupt`], never silent garbage.
//! 4. *The write-ahead rule:* a dirty page is written back only after the
//!    owner's [`Durability::ensure_durable`] returned for an LSN at least
//!    its page LSN (bytes 8..16 of the page, [`page::page_lsn`]).
//!
//! Page bytes 0..[`page::PAGE_HEADER`] are the page header; users own the
//! rest and set the page LSN through [`ExclusiveGuard::set_lsn`].

use crate::device::{run_all, BlockDevice, DeviceError, DmaBytes, Io, IoKind, BLOCK_SIZE};
use crate::page::{self, PageCheck};
use crate::{Lsn, PageId, PAGE_SIZE};
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::fmt;
use core::ptr::NonNull;
use core::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use dbos_nvme::DmaAddr;

pub mod latch;
pub use latch::Latch;

pub mod hash;
mod memory;
pub(crate) mod racy;
mod resident;
pub mod tabby;
#[cfg(not(target_os = "none"))]
pub mod vmcache;

pub use resident::PoolConfig;

/// What went wrong in a pool.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PoolError {
    /// Reading or writing page `id` failed on the device.
    Device {
        id: PageId,
        kind: IoKind,
        error: DeviceError,
    },
    /// Page `id` read from storage is not a valid image of page `id`.
    Corrupt { id: PageId, check: PageCheck },
    /// Page `id` was never allocated (`pages` are).
    OutOfRange { id: PageId, pages: u64 },
    /// The device has no room for another page.
    DeviceFull { pages: u64 },
    /// Every one of `frames` frames is latched: nothing can be evicted.
    NoFreeFrame { frames: usize },
    /// The owner could not make the log durable up to `lsn`, so page `id`
    /// may not be written.
    NotDurable { id: PageId, lsn: Lsn },
    /// Setting up the pool failed: what, and the OS error number (0 if
    /// none).
    Setup { what: &'static str, errno: i32 },
    /// A call to the libdbos platform failed (Tabby): what the pool was
    /// doing, and the platform's error.
    Platform {
        what: &'static str,
        error: libdbos::platform::Error,
    },
    /// Tabby: page `id` is latched, yet its own address shows a frame whose
    /// header names page `found`, even after this CPU invalidated its
    /// translation. The pool's invariant (a latched page's entry points at
    /// its frame) is broken: a bug, never a normal outcome.
    StaleTranslation { id: PageId, found: u64 },
}

impl fmt::Display for PoolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PoolError::Device { id, kind, error } => {
                let verb = match kind {
                    IoKind::Read => "reading",
                    IoKind::Write | IoKind::WriteFua => "writing",
                    IoKind::Flush => "flushing",
                };
                write!(f, "{verb} page {} failed: {error}", id.0)
            }
            PoolError::Corrupt { id, check } => {
                write!(f, "page {} read from storage is not valid: {check}", id.0)
            }
            PoolError::OutOfRange { id, pages } => {
                write!(f, "page {} was never allocated ({pages} pages are)", id.0)
            }
            PoolError::DeviceFull { pages } => write!(f, "the device holds only {pages} pages"),
            PoolError::NoFreeFrame { frames } => {
                write!(f, "all {frames} frames are latched, none can be evicted")
            }
            PoolError::NotDurable { id, lsn } => write!(
                f,
                "the log could not be made durable to {} before writing page {}",
                lsn.0, id.0
            ),
            PoolError::Setup { what, errno } => write!(f, "{what} failed (errno {errno})"),
            PoolError::Platform { what, error } => write!(f, "{what} failed: {error}"),
            PoolError::StaleTranslation { id, found } => write!(
                f,
                "page {} is latched but its address shows a frame holding page {found:#x} \
                 after a local invalidation",
                id.0
            ),
        }
    }
}

/// An optimistic read went stale: the page changed, was evicted, or what
/// was read points outside the page. Restart the operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stale;

/// The owner's side of the write-ahead rule.
pub trait Durability: Send + Sync {
    /// Returns once the log is durable up to at least `lsn`, or fails.
    fn ensure_durable(&self, lsn: Lsn) -> Result<(), DurabilityError>;

    /// A page write of the pool failed (called by [`IoQueues::write_pages`]
    /// before it returns the error). An owner that must not retry page
    /// writes (the engine: a failed write stops it) fails itself here, so
    /// that its next `ensure_durable` refuses and no other thread's
    /// eviction writes a page before the error has reached the owner.
    fn page_write_failed(&self, _id: PageId, _error: DeviceError) {}
}

/// The log could not be made durable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DurabilityError {
    /// How far the log is durable.
    pub durable: Lsn,
}

/// For pools whose pages are never logged (benchmarks, caches): every LSN
/// is durable. Using it with logged pages breaks the write-ahead rule.
pub struct NoLog;

impl Durability for NoLog {
    fn ensure_durable(&self, _lsn: Lsn) -> Result<(), DurabilityError> {
        Ok(())
    }
}

/// Counters of a pool (monotonic since creation).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PoolStats {
    /// Pages read from storage.
    pub reads: u64,
    /// Pages written to storage.
    pub writes: u64,
    /// Pages evicted.
    pub evictions: u64,
    /// Eviction batches (each one `madvise` pass in vmcache).
    pub evict_batches: u64,
    /// `madvise(MADV_DONTNEED)` calls (vmcache; ranges of adjacent pages
    /// are merged into one call).
    pub dontneed_calls: u64,
    /// Pages allocated.
    pub allocations: u64,
    /// Tabby: accesses whose header check through the page's address found
    /// another page's frame (a stale translation on this CPU) and repaired it
    /// with one local invalidation.
    pub stale_repairs: u64,
    /// Tabby: page-table entries rewritten by the pool (one per load; plus
    /// one per eviction in `InvalidateAll` mode).
    pub remaps: u64,
    /// Tabby in `InvalidateAll` mode: `invalidate_all` calls (one per evicted
    /// page, each interrupting every other CPU).
    pub invalidate_alls: u64,
    /// Pages read straight into their frame (Tabby in the guest: no bounce
    /// buffer, no copy); the rest of `reads` went through a bounce buffer.
    pub direct_reads: u64,
}

// Used by the process pools; no_std so that the guest pool can use it too.
#[cfg_attr(target_os = "none", allow(dead_code))]
#[derive(Default)]
pub(crate) struct Counters {
    pub reads: AtomicU64,
    pub writes: AtomicU64,
    pub evictions: AtomicU64,
    pub evict_batches: AtomicU64,
    pub dontneed_calls: AtomicU64,
    pub allocations: AtomicU64,
    pub stale_repairs: AtomicU64,
    pub remaps: AtomicU64,
    pub invalidate_alls: AtomicU64,
    pub direct_reads: AtomicU64,
}

#[cfg_attr(target_os = "none", allow(dead_code))]
impl Counters {
    pub(crate) fn snapshot(&self) -> PoolStats {
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        PoolStats {
            reads: l(&self.reads),
            writes: l(&self.writes),
            evictions: l(&self.evictions),
            evict_batches: l(&self.evict_batches),
            dontneed_calls: l(&self.dontneed_calls),
            allocations: l(&self.allocations),
            stale_repairs: l(&self.stale_repairs),
            remaps: l(&self.remaps),
            invalidate_alls: l(&self.invalidate_alls),
            direct_reads: l(&self.direct_reads),
        }
    }
    pub(crate) fn add(c: &AtomicU64, n: u64) {
        c.fetch_add(n, Ordering::Relaxed);
    }
}

/// A fixed page as a pool lends it: the page's latch and its 4 KiB.
#[derive(Clone, Copy, Debug)]
pub struct Frame<'a> {
    /// The page.
    pub id: PageId,
    /// Its latch (per page in vmcache and Tabby, per frame in the hash
    /// pool).
    pub latch: &'a Latch,
    /// Its first byte; `PAGE_SIZE` bytes, 4 KiB aligned.
    pub data: NonNull<u8>,
    /// The implementation's index of the frame (slot, page id, ...).
    pub index: usize,
}

/// A buffer manager over 4 KiB pages. The `*_frame` methods are what an
/// implementation provides; users call the guard-returning methods of
/// [`Pool`], implemented for every `BufferManager`.
///
/// # Safety
/// Implementations guarantee:
/// - a [`Frame`] returned by a fix or allocation points to `PAGE_SIZE`
///   bytes holding page `id`, with `latch` in the state the method names
///   (exclusive for `fix_exclusive_frame` and `allocate_frame`, shared for
///   `fix_shared_frame`, any resident state for `fix_optimistic_frame`,
///   which returns the latch word it saw);
/// - while the latch word's version is unchanged and its state neither
///   Exclusive nor Evicted, the frame's memory holds page `id` (every write,
///   eviction or reuse of the memory goes through an exclusive latch, whose
///   release increments the version);
/// - the frame's memory stays readable (no fault that kills the program) for
///   as long as the pool lives, whatever happens to the page;
/// - a latch taken exclusively by [`Latch::try_upgrade`] on a frame's latch
///   is released correctly by `unfix_exclusive_frame`.
pub unsafe trait BufferManager: Sync {
    /// Fixes page `id` exclusively, reading it in if it is not resident;
    /// waits (relaxing) while others hold it.
    fn fix_exclusive_frame(&self, id: PageId) -> Result<Frame<'_>, PoolError>;
    /// Fixes page `id` shared, reading it in if it is not resident.
    fn fix_shared_frame(&self, id: PageId) -> Result<Frame<'_>, PoolError>;
    /// Makes page `id` resident and returns its frame and the latch word
    /// an optimistic read starts from (never Exclusive or Evicted).
    fn fix_optimistic_frame(&self, id: PageId) -> Result<(Frame<'_>, u64), PoolError>;
    /// Fixes page `id` exclusively *without reading it*: the caller is about
    /// to overwrite the page (recovery installing a page image from the
    /// log over a page whose stored copy is torn). If the page is resident,
    /// its frame is returned latched; if not, a frame is taken (evicting if
    /// needed) and the page becomes resident in it, nothing read and
    /// nothing checked. Either way the bytes are those `overwritten`
    /// leaves: zeros, with the page's own id in the header's id field
    /// (bytes 16..24, where Tabby's frame header names the page), so a
    /// caller that writes less never leaves another page's bytes. A caller
    /// must keep bytes 16..24 as the page id. Waits (relaxing) while others
    /// hold the page. The caller unfixes it dirty.
    fn fix_overwrite_frame(&self, id: PageId) -> Result<Frame<'_>, PoolError>;
    /// Releases an exclusive fix; `dirty` if the page was changed.
    fn unfix_exclusive_frame(&self, frame: &Frame<'_>, dirty: bool);
    /// Releases a shared fix.
    fn unfix_shared_frame(&self, frame: &Frame<'_>);
    /// A new page, zero-filled, fixed exclusively (and dirty).
    fn allocate_frame(&self) -> Result<Frame<'_>, PoolError>;
    /// Evicts up to `pages` unlatched pages (clock), writing dirty ones
    /// back under the write-ahead rule. Returns how many were evicted. Pools
    /// evict inline when they need a frame; a background thread may call
    /// this to keep frames free.
    fn evict(&self, pages: usize) -> Result<usize, PoolError>;
    /// Writes back every page that is dirty when the call begins (they stay
    /// resident), each under the write-ahead rule; a page latched
    /// exclusively is waited for, never skipped (a page evicted meanwhile
    /// was written before it left the pool). Returns how many pages it
    /// wrote. The caller must hold no latch of this pool (it could wait
    /// for itself), and the flush holds no latch while it waits for one
    /// (so it cannot deadlock with a holder waiting for another page). The
    /// writes complete before it returns; making them durable (a device
    /// flush) is the caller's.
    ///
    /// This is what a checkpoint relies on: after `flush` returns, every
    /// change made before it began is written.
    fn flush(&self) -> Result<usize, PoolError>;
    /// Page ids handed out so far (`0..page_count()` are valid).
    fn page_count(&self) -> u64;
    /// Frames the pool holds at most.
    fn capacity(&self) -> usize;
    /// Counters.
    fn stats(&self) -> PoolStats;
    /// Called in every wait loop.
    fn relax(&self);

    /// As [`fix_optimistic_frame`](Self::fix_optimistic_frame) for a page
    /// that is resident and not latched exclusively; `None` for any other
    /// (not resident, being read in, written or evicted), without reading
    /// and without waiting. A pool that cannot read asynchronously
    /// ([`begin_read`](Self::begin_read) is [`BeginRead::Unsupported`])
    /// may read and wait here as `fix_optimistic_frame` does: the default.
    fn fix_optimistic_resident_frame(
        &self,
        id: PageId,
    ) -> Result<Option<(Frame<'_>, u64)>, PoolError> {
        self.fix_optimistic_frame(id).map(Some)
    }

    /// Prepares reading page `id` in without waiting for the read: with
    /// [`BeginRead::Started`] the page is latched exclusively with a frame
    /// reserved for it, and the caller reads [`PendingRead::LEN`] bytes
    /// from the read's file and offset into its destination with I/O of
    /// its own, then calls [`finish_read`](Self::finish_read) with the
    /// outcome. Until then every other fix of the page waits, so the
    /// caller must not wait for another latch of this pool while it holds
    /// a started read (it could wait for a thread that waits for this
    /// page). The default, for pools and devices that cannot:
    /// [`BeginRead::Unsupported`].
    fn begin_read(&self, _id: PageId) -> Result<BeginRead, PoolError> {
        Ok(BeginRead::Unsupported)
    }

    /// Completes a read [`begin_read`](Self::begin_read) started:
    /// `result` is the outcome of the caller's read. The page is checked
    /// ([`page::verify`]) and becomes resident; if the read or the check
    /// failed, the page stays evicted (the next fix reads it again) and
    /// the error is returned.
    fn finish_read(
        &self,
        read: PendingRead,
        _result: Result<(), DeviceError>,
    ) -> Result<(), PoolError> {
        Err(PoolError::Device {
            id: read.id,
            kind: IoKind::Read,
            error: DeviceError::InvalidRequest,
        })
    }
}

/// A page read a pool has prepared for its caller to carry out
/// ([`BufferManager::begin_read`]): read [`LEN`](Self::LEN) bytes of
/// descriptor `fd` at byte `offset` into [`dest`](Self::dest), then hand
/// it back to [`BufferManager::finish_read`] of the same pool. Until then
/// the page is latched: a read that is never finished blocks its page.
#[must_use = "a started read holds its page latched until it is finished"]
#[derive(Debug)]
pub struct PendingRead {
    /// The page.
    pub id: PageId,
    /// The file to read from.
    pub fd: i32,
    /// Its byte offset in the file.
    pub offset: u64,
    /// The page's memory: [`LEN`](Self::LEN) bytes, 4 KiB aligned.
    dest: NonNull<u8>,
    /// The pool's resident slot reserved for the page.
    slot: usize,
    /// The pool that started it (its address), checked when it finishes.
    pool: usize,
}

impl PendingRead {
    /// Bytes to read.
    pub const LEN: usize = PAGE_SIZE;

    /// Where the bytes go: the page's memory in the pool, `LEN` bytes
    /// aligned to 4 KiB (so an `O_DIRECT` read may target it), which
    /// nothing else writes until the read is finished.
    pub fn dest(&self) -> *mut u8 {
        self.dest.as_ptr()
    }

    /// A read of page `id` from `fd` at `offset` into `dest`, in slot
    /// `slot` of the pool at address `pool`.
    #[cfg_attr(target_os = "none", allow(dead_code))]
    pub(crate) fn new(
        id: PageId,
        (fd, offset): (i32, u64),
        dest: NonNull<u8>,
        slot: usize,
        pool: usize,
    ) -> PendingRead {
        PendingRead {
            id,
            fd,
            offset,
            dest,
            slot,
            pool,
        }
    }

    /// The slot reserved, if the read belongs to the pool at `pool`.
    #[cfg_attr(target_os = "none", allow(dead_code))]
    pub(crate) fn slot_in(&self, pool: usize) -> Option<usize> {
        (self.pool == pool).then_some(self.slot)
    }
}

/// What [`BufferManager::begin_read`] did.
#[derive(Debug)]
pub enum BeginRead {
    /// The caller is to carry out this read.
    Started(PendingRead),
    /// The page is resident (no read needed).
    Resident,
    /// The page is latched exclusively: being read in by another thread
    /// (or another of the caller's reads), written, or evicted.
    Busy,
    /// This pool, or its device, cannot read asynchronously.
    Unsupported,
}

/// What a lookup that never waits for storage found
/// (`BTree::lookup_resident`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resident<T> {
    /// The lookup completed.
    Done(T),
    /// It needs page `0`, which is not resident (or is latched
    /// exclusively): read it in ([`BufferManager::begin_read`]) and try
    /// again.
    Missing(PageId),
    /// It needs pages in a way that waits (an overflow chain): run the
    /// waiting lookup.
    WouldBlock,
}

/// The guard-returning API of every [`BufferManager`] (also on
/// `dyn BufferManager`).
pub trait Pool: BufferManager {
    /// Fixes page `id` exclusively.
    fn fix_exclusive(&self, id: PageId) -> Result<ExclusiveGuard<'_, Self>, PoolError> {
        let frame = self.fix_exclusive_frame(id)?;
        Ok(ExclusiveGuard {
            pool: self,
            frame,
            dirty: false,
        })
    }

    /// Fixes page `id` shared.
    fn fix_shared(&self, id: PageId) -> Result<SharedGuard<'_, Self>, PoolError> {
        let frame = self.fix_shared_frame(id)?;
        Ok(SharedGuard { pool: self, frame })
    }

    /// Starts an optimistic read of page `id`.
    #[inline]
    fn optimistic(&self, id: PageId) -> Result<OptimisticGuard<'_, Self>, PoolError> {
        let (frame, seen) = self.fix_optimistic_frame(id)?;
        Ok(OptimisticGuard {
            pool: self,
            frame,
            seen,
        })
    }

    /// Starts an optimistic read of page `id` if it is resident and not
    /// latched exclusively (see
    /// [`BufferManager::fix_optimistic_resident_frame`]); `None` if not.
    #[inline]
    fn optimistic_resident(
        &self,
        id: PageId,
    ) -> Result<Option<OptimisticGuard<'_, Self>>, PoolError> {
        Ok(self
            .fix_optimistic_resident_frame(id)?
            .map(|(frame, seen)| OptimisticGuard {
                pool: self,
                frame,
                seen,
            }))
    }

    /// Fixes page `id` exclusively without reading it, dirty: see
    /// [`BufferManager::fix_overwrite_frame`].
    fn fix_overwrite(&self, id: PageId) -> Result<ExclusiveGuard<'_, Self>, PoolError> {
        let frame = self.fix_overwrite_frame(id)?;
        Ok(ExclusiveGuard {
            pool: self,
            frame,
            dirty: true,
        })
    }

    /// Allocates a new zeroed page, fixed exclusively and dirty.
    fn allocate(&self) -> Result<ExclusiveGuard<'_, Self>, PoolError> {
        let frame = self.allocate_frame()?;
        Ok(ExclusiveGuard {
            pool: self,
            frame,
            dirty: true,
        })
    }
}

impl<B: BufferManager + ?Sized> Pool for B {}

/// What a read of page `id` into `img` came to: the device's error, or
/// the page's check ([`page::verify`]) of the bytes read.
pub(crate) fn read_outcome(
    id: PageId,
    result: Result<(), DeviceError>,
    img: &[u8],
) -> Result<(), PoolError> {
    result.map_err(|error| PoolError::Device {
        id,
        kind: IoKind::Read,
        error,
    })?;
    match page::verify(&img[..PAGE_SIZE], id) {
        PageCheck::Valid => Ok(()),
        check => Err(PoolError::Corrupt { id, check }),
    }
}

/// Makes `page` what [`BufferManager::fix_overwrite_frame`] returns for page
/// `id`: zeros, with `id` in the page header's id field (bytes 16..24, as
/// [`page::seal`] writes it).
pub(crate) fn overwritten(page: &mut [u8], id: PageId) {
    page[..PAGE_SIZE].fill(0);
    crate::page::set_page_id(page, id);
}

/// An exclusive fix; unfixed on drop (dirty if the bytes were borrowed
/// mutably or [`mark_dirty`](Self::mark_dirty) was called).
pub struct ExclusiveGuard<'a, B: BufferManager + ?Sized> {
    pool: &'a B,
    frame: Frame<'a>,
    dirty: bool,
}

impl<'a, B: BufferManager + ?Sized> ExclusiveGuard<'a, B> {
    /// The page.
    pub fn id(&self) -> PageId {
        self.frame.id
    }
    /// The page's bytes (header included).
    pub fn bytes(&self) -> &[u8] {
        // SAFETY: BufferManager's contract: PAGE_SIZE bytes, and the
        // exclusive latch makes us the only accessor (optimistic readers
        // only read, and discard what they read when they validate).
        unsafe { core::slice::from_raw_parts(self.frame.data.as_ptr(), PAGE_SIZE) }
    }
    /// The page's bytes, to change them (marks the page dirty).
    pub fn bytes_mut(&mut self) -> &mut [u8] {
        self.dirty = true;
        // SAFETY: as in `bytes`; `&mut self` makes the borrow unique.
        unsafe { core::slice::from_raw_parts_mut(self.frame.data.as_ptr(), PAGE_SIZE) }
    }
    /// Marks the page dirty.
    pub fn mark_dirty(&mut self) {
        self.dirty = true;
    }
    /// Whether the page will be unfixed dirty.
    pub(crate) fn is_dirty(&self) -> bool {
        self.dirty
    }
    /// Puts back `before` (the page as it was when fixed) and the dirty
    /// flag it was fixed with: a change undone leaves the page as it was,
    /// not a page to write (a write of it would be one no log image
    /// covers).
    pub(crate) fn undo(&mut self, before: &[u8], dirty: bool) {
        self.bytes_mut().copy_from_slice(before);
        self.dirty = dirty;
    }
    /// The page LSN.
    pub fn lsn(&self) -> Lsn {
        page::page_lsn(self.bytes())
    }
    /// Sets the page LSN (the end of the log record of this change): the
    /// page will not be written before the log is durable up to it.
    pub fn set_lsn(&mut self, lsn: Lsn) {
        page::set_page_lsn(self.bytes_mut(), lsn);
    }
}

impl<B: BufferManager + ?Sized> Drop for ExclusiveGuard<'_, B> {
    fn drop(&mut self) {
        self.pool.unfix_exclusive_frame(&self.frame, self.dirty);
    }
}

/// A shared fix; unfixed on drop.
pub struct SharedGuard<'a, B: BufferManager + ?Sized> {
    pool: &'a B,
    frame: Frame<'a>,
}

impl<B: BufferManager + ?Sized> SharedGuard<'_, B> {
    /// The page.
    pub fn id(&self) -> PageId {
        self.frame.id
    }
    /// The page's bytes.
    pub fn bytes(&self) -> &[u8] {
        // SAFETY: BufferManager's contract: PAGE_SIZE bytes, and the shared
        // latch excludes writers.
        unsafe { core::slice::from_raw_parts(self.frame.data.as_ptr(), PAGE_SIZE) }
    }
}

impl<B: BufferManager + ?Sized> Drop for SharedGuard<'_, B> {
    fn drop(&mut self) {
        self.pool.unfix_shared_frame(&self.frame);
    }
}

/// An optimistic read of a page: no latch is held. Reads are bounds-checked
/// and may see anything (a torn write, another page, zeros); they become
/// trustworthy only when [`validate`](Self::validate) succeeds after them.
pub struct OptimisticGuard<'a, B: BufferManager + ?Sized> {
    pool: &'a B,
    frame: Frame<'a>,
    seen: u64,
}

impl<B: BufferManager + ?Sized> Clone for OptimisticGuard<'_, B> {
    fn clone(&self) -> Self {
        OptimisticGuard {
            pool: self.pool,
            frame: self.frame,
            seen: self.seen,
        }
    }
}

impl<'a, B: BufferManager + ?Sized> OptimisticGuard<'a, B> {
    /// The page.
    pub fn id(&self) -> PageId {
        self.frame.id
    }

    /// Whether nothing changed the page since the read began.
    #[inline]
    pub fn validate(&self) -> Result<(), Stale> {
        if self.frame.latch.validate(self.seen) {
            Ok(())
        } else {
            Err(Stale)
        }
    }

    /// Turns the read into an exclusive fix if the page is unchanged and
    /// unlatched; never waits.
    pub fn upgrade(self) -> Result<ExclusiveGuard<'a, B>, Stale> {
        if self.frame.latch.try_upgrade(self.seen) {
            Ok(ExclusiveGuard {
                pool: self.pool,
                frame: self.frame,
                dirty: false,
            })
        } else {
            Err(Stale)
        }
    }
}

/// Bounds-checked reads of a page's bytes, implemented by latched pages
/// (`[u8]`) and by optimistic reads, so that code parsing a page is written
/// once for both.
pub trait PageRead {
    /// Copies `out.len()` bytes at `off` into `out`.
    fn read_into(&self, off: usize, out: &mut [u8]) -> Result<(), Stale>;

    /// Compares `len` bytes at `off` with `other`.
    fn compare(&self, off: usize, len: usize, other: &[u8]) -> Result<core::cmp::Ordering, Stale>;

    /// The little-endian u16 at `off`.
    fn u16_at(&self, off: usize) -> Result<u16, Stale> {
        let mut b = [0; 2];
        self.read_into(off, &mut b)?;
        Ok(u16::from_le_bytes(b))
    }

    /// The little-endian u64 at `off`.
    fn u64_at(&self, off: usize) -> Result<u64, Stale> {
        let mut b = [0; 8];
        self.read_into(off, &mut b)?;
        Ok(u64::from_le_bytes(b))
    }

    /// The byte at `off`.
    fn u8_at(&self, off: usize) -> Result<u8, Stale> {
        let mut b = [0; 1];
        self.read_into(off, &mut b)?;
        Ok(b[0])
    }
}

impl PageRead for [u8] {
    fn read_into(&self, off: usize, out: &mut [u8]) -> Result<(), Stale> {
        let end = off.checked_add(out.len()).ok_or(Stale)?;
        out.copy_from_slice(self.get(off..end).ok_or(Stale)?);
        Ok(())
    }

    fn compare(&self, off: usize, len: usize, other: &[u8]) -> Result<core::cmp::Ordering, Stale> {
        let end = off.checked_add(len).ok_or(Stale)?;
        Ok(self.get(off..end).ok_or(Stale)?.cmp(other))
    }
}

impl<B: BufferManager + ?Sized> OptimisticGuard<'_, B> {
    #[inline(always)]
    fn racy(&self) -> racy::RacyPage {
        // SAFETY: BufferManager's contract: the frame's PAGE_SIZE bytes are
        // 4 KiB aligned and stay readable while the pool lives, which the
        // guard's borrow of the pool outlives.
        unsafe { racy::RacyPage::new(self.frame.data.as_ptr()) }
    }
}

// Reads race with writers (a seqlock read: what is read may be torn and is
// only used if the read validates); each is bounds-checked, then done with
// word-sized loads (`racy`).
impl<B: BufferManager + ?Sized> PageRead for OptimisticGuard<'_, B> {
    #[inline]
    fn read_into(&self, off: usize, out: &mut [u8]) -> Result<(), Stale> {
        let end = off.checked_add(out.len()).ok_or(Stale)?;
        if end > PAGE_SIZE {
            return Err(Stale);
        }
        self.racy().copy(off, out);
        Ok(())
    }

    #[inline]
    fn compare(&self, off: usize, len: usize, other: &[u8]) -> Result<core::cmp::Ordering, Stale> {
        let end = off.checked_add(len).ok_or(Stale)?;
        if end > PAGE_SIZE {
            return Err(Stale);
        }
        Ok(self.racy().compare(off, len, other))
    }

    #[inline]
    fn u16_at(&self, off: usize) -> Result<u16, Stale> {
        if off > PAGE_SIZE - 2 {
            return Err(Stale);
        }
        Ok(self.racy().u16_at(off))
    }

    #[inline]
    fn u64_at(&self, off: usize) -> Result<u64, Stale> {
        if off > PAGE_SIZE - 8 {
            return Err(Stale);
        }
        Ok(self.racy().u64_at(off))
    }

    #[inline]
    fn u8_at(&self, off: usize) -> Result<u8, Stale> {
        if off >= PAGE_SIZE {
            return Err(Stale);
        }
        Ok(self.racy().u8_at(off))
    }
}

/// Blocks per page.
const PAGE_BLOCKS: usize = PAGE_SIZE / BLOCK_SIZE;

struct Queue<D> {
    dev: D,
    /// `batch` pages of bounce buffer.
    bounce: DmaBytes,
    ios: Vec<Io>,
}

/// Page I/O for a pool: a set of [`BlockDevice`] queues (one per thread
/// that may miss at once), each with bounce buffers, reads verified
/// against the page id, writes sealed and gated by [`Durability`].
///
/// Reads go through a bounce buffer and a copy into the frame: the process
/// device only reaches its registered region, and for vmcache's window
/// that is also the only correct path (memory released with DONTNEED and
/// faulted in again is not the page a fixed-buffer registration pinned;
/// see `docs/pools.md`).
pub struct IoQueues<D> {
    queues: Vec<spin::Mutex<Queue<D>>>,
    batch: usize,
    /// The block of page 0.
    first_block: u64,
    pages: u64,
    next: AtomicUsize,
    durability: Arc<dyn Durability>,
    relax: fn(),
}

impl<D: BlockDevice> IoQueues<D> {
    /// Queues over `devs` (at least one), each with `batch` pages of bounce
    /// buffer, page 0 at block 0.
    pub fn new(
        devs: Vec<D>,
        batch: usize,
        durability: Arc<dyn Durability>,
        relax: fn(),
    ) -> Result<IoQueues<D>, PoolError> {
        IoQueues::over(devs, 0, None, batch, durability, relax)
    }

    /// Queues over `devs` whose page 0 is at block `first_block` (the
    /// data area after the engine's control and log blocks); the pages are
    /// those that fit from there to the device's end, or the first
    /// `max_pages` of them. `first_block` past the device's end, and
    /// `max_pages` more than fit, are refused.
    pub fn over(
        devs: Vec<D>,
        first_block: u64,
        max_pages: Option<u64>,
        batch: usize,
        durability: Arc<dyn Durability>,
        relax: fn(),
    ) -> Result<IoQueues<D>, PoolError> {
        if devs.is_empty() || batch == 0 {
            return Err(PoolError::Setup {
                what: "a pool needs at least one device queue and a batch of one page",
                errno: 0,
            });
        }
        let Some(blocks) = devs[0].block_count().checked_sub(first_block) else {
            return Err(PoolError::Setup {
                what: "the data area starts past the device's end",
                errno: 0,
            });
        };
        let fit = blocks / PAGE_BLOCKS as u64;
        let pages = match max_pages {
            None => fit,
            Some(n) if n <= fit => n,
            Some(_) => {
                return Err(PoolError::Setup {
                    what: "the data area extends past the device's end",
                    errno: 0,
                })
            }
        };
        let mut queues = Vec::with_capacity(devs.len());
        for mut dev in devs {
            let buf = dev
                .alloc(batch * PAGE_BLOCKS)
                .map_err(|error| PoolError::Device {
                    id: PageId(0),
                    kind: IoKind::Read,
                    error,
                })?;
            queues.push(spin::Mutex::new(Queue {
                dev,
                bounce: DmaBytes::new(buf),
                ios: Vec::with_capacity(batch),
            }));
        }
        Ok(IoQueues {
            queues,
            batch,
            first_block,
            pages,
            next: AtomicUsize::new(0),
            durability,
            relax,
        })
    }

    /// The device block of page `id`.
    fn lba(&self, id: PageId) -> u64 {
        self.first_block + id.0 * PAGE_BLOCKS as u64
    }

    /// Pages the device holds from the first block on.
    pub fn device_pages(&self) -> u64 {
        self.pages
    }

    /// Pages per write batch.
    pub fn batch(&self) -> usize {
        self.batch
    }

    fn with_queue<R>(&self, f: impl FnOnce(&mut Queue<D>) -> R) -> R {
        let n = self.queues.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        loop {
            for k in 0..n {
                if let Some(mut q) = self.queues[(start + k) % n].try_lock() {
                    return f(&mut q);
                }
            }
            (self.relax)();
        }
    }

    /// The file descriptor and byte offset of page `id`, if the devices
    /// are files read with plain system calls ([`BlockDevice::file_at`]).
    pub fn file_at(&self, id: PageId) -> Option<(i32, u64)> {
        self.with_queue(|q| q.dev.file_at(self.lba(id)))
    }

    /// Reads page `id` into `dest` and checks it is a valid image of `id`.
    pub fn read_page(&self, id: PageId, dest: &mut [u8]) -> Result<(), PoolError> {
        let relax = self.relax;
        self.with_queue(|q| {
            let lba = self.lba(id);
            let io = Io::read(lba, PAGE_BLOCKS as u32, q.bounce.io_buf().addr);
            let img = &q.bounce.bytes()[..PAGE_SIZE];
            read_outcome(id, run_all(&mut q.dev, &[io], relax), img)?;
            dest[..PAGE_SIZE].copy_from_slice(img);
            Ok(())
        })
    }

    /// Reads page `id` straight into memory the device reaches at `addr`
    /// (`dest` is that memory, as the CPU sees it) and checks it is a valid
    /// image of `id`; no bounce buffer, no copy.
    ///
    /// # Safety
    /// `addr` and `dest` name the same `PAGE_SIZE` bytes, which nobody else
    /// writes until this returns (a free frame the caller owns).
    pub unsafe fn read_page_direct(
        &self,
        id: PageId,
        addr: DmaAddr,
        dest: &[u8],
    ) -> Result<(), PoolError> {
        let relax = self.relax;
        self.with_queue(|q| {
            let io = Io::read(self.lba(id), PAGE_BLOCKS as u32, addr);
            read_outcome(id, run_all(&mut q.dev, &[io], relax), dest)
        })
    }

    /// Writes `pages` (at most [`batch`](Self::batch); each latched by the
    /// caller so that its bytes are stable) after making the log durable to
    /// the largest page LSN among them. The in-memory pages are not changed
    /// (the copies are sealed).
    pub fn write_pages(&self, pages: &[(PageId, &[u8])]) -> Result<(), PoolError> {
        debug_assert!(pages.len() <= self.batch);
        let Some(max) = pages.iter().max_by_key(|(_, b)| page::page_lsn(b)) else {
            return Ok(());
        };
        let lsn = page::page_lsn(max.1);
        if lsn > Lsn::ZERO {
            self.durability
                .ensure_durable(lsn)
                .map_err(|_| PoolError::NotDurable { id: max.0, lsn })?;
        }
        let relax = self.relax;
        self.with_queue(|q| {
            let base = q.bounce.io_buf();
            let bytes = q.bounce.bytes_mut();
            q.ios.clear();
            for (i, (id, src)) in pages.iter().enumerate() {
                let copy = &mut bytes[i * PAGE_SIZE..(i + 1) * PAGE_SIZE];
                copy.copy_from_slice(&src[..PAGE_SIZE]);
                page::seal(copy, *id);
                q.ios.push(Io::write(
                    self.lba(*id),
                    PAGE_BLOCKS as u32,
                    base.block_addr(i * PAGE_BLOCKS),
                    false,
                ));
            }
            let Queue { dev, ios, .. } = q;
            run_all(dev, ios, relax).map_err(|error| {
                self.durability.page_write_failed(pages[0].0, error);
                PoolError::Device {
                    id: pages[0].0,
                    kind: IoKind::Write,
                    error,
                }
            })
        })
    }
}
