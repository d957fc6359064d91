//! What the pools ([`VmCache`](super::vmcache::VmCache),
//! [`HashPool`](super::hash::HashPool) and [`Tabby`](super::tabby::Tabby))
//! share besides their frames and latches: the resident set (slots, free
//! lists and the clock hand), dirty flags, page-id allocation, the clock
//! sweep, batched write-back, eviction and flush ([`PoolCore`]).
//!
//! It is `no_std` (Tabby and the hash pool run in the guest): the dirty
//! flags are a zeroed anonymous mapping in a process and zeroed heap memory
//! in the guest (`memory.rs`). Free slots
//! are kept in one list per CPU ([`Slots`]; the process pools use one list,
//! Tabby one per platform CPU), a slot freed by an eviction goes on the
//! evicting CPU's list, and a CPU whose list is empty steals from the others.
//!
//! A pool names each frame by an *index* (its latch, dirty flag and bytes):
//! the page id in vmcache, the frame number in the hash pool. It tells the
//! shared code how slots map to indexes through [`Frames`].

use super::latch::{state, EVICTED, EXCLUSIVE, MARKED, UNLOCKED};
use super::memory::ZeroedArray;
use super::{Counters, Durability, Frame, IoQueues, Latch, PoolError, PoolStats};
use crate::device::BlockDevice;
use crate::PageId;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicU64, AtomicU8, AtomicUsize, Ordering};

/// How a process pool (or the guest's hash pool) is set up.
#[derive(Clone)]
pub struct PoolConfig {
    /// Resident pages at most.
    pub capacity: usize,
    /// Pages already allocated on the device (`allocate` continues after
    /// them; 0 for a new pool).
    pub allocated: u64,
    /// The device block holding page 0 (the data area's start: the
    /// engine's pages follow its control and log blocks). Must lie inside
    /// the device; page `n` is at `first_block + n * (PAGE_SIZE /
    /// BLOCK_SIZE)`.
    pub first_block: u64,
    /// Pages the pool serves at most (the data area's length), or `None`
    /// for every page from `first_block` to the device's end. Page ids, the
    /// latch arrays and vmcache's window cover these pages only.
    pub pages: Option<u64>,
    /// Pages evicted (and written) per batch.
    pub evict_batch: usize,
    /// The owner's write-ahead hook.
    pub durability: Arc<dyn Durability>,
    /// Called in wait loops.
    pub relax: fn(),
}

impl PoolConfig {
    /// The shared core's part of it (one free list).
    pub(crate) fn core(&self) -> CoreConfig<'_> {
        CoreConfig {
            capacity: self.capacity,
            allocated: self.allocated,
            first_block: self.first_block,
            pages: self.pages,
            evict_batch: self.evict_batch,
            durability: &self.durability,
            relax: self.relax,
            free_lists: 1,
        }
    }

    /// `capacity` pages from block 0, batches of 64, no log, yielding (in
    /// a process) or spinning (in the guest) while waiting.
    pub fn new(capacity: usize) -> PoolConfig {
        PoolConfig {
            capacity,
            allocated: 0,
            first_block: 0,
            pages: None,
            evict_batch: 64,
            durability: Arc::new(super::NoLog),
            #[cfg(not(target_os = "none"))]
            relax: std::thread::yield_now,
            #[cfg(target_os = "none")]
            relax: core::hint::spin_loop,
        }
    }
}

/// The [`BufferManager`](super::BufferManager) methods every pool forwards
/// to its [`PoolCore`] (a field `core`) unchanged, written once: unfixing,
/// eviction, flushing and the counters. Each pool writes its fix paths
/// and allocation itself (the hot paths, kept explicit per pool).
macro_rules! forward_to_core {
    () => {
        fn unfix_exclusive_frame(&self, frame: &Frame<'_>, dirty: bool) {
            self.core.unfix_exclusive(frame, dirty);
        }

        fn unfix_shared_frame(&self, frame: &Frame<'_>) {
            frame.latch.unlock_shared();
        }

        fn evict(&self, pages: usize) -> Result<usize, PoolError> {
            self.core.evict(self, pages)
        }

        fn flush(&self) -> Result<usize, PoolError> {
            self.core.flush(self)
        }

        fn page_count(&self) -> u64 {
            self.core.page_count()
        }

        fn capacity(&self) -> usize {
            self.core.capacity
        }

        fn stats(&self) -> PoolStats {
            self.core.stats()
        }

        fn relax(&self) {
            (self.core.relax)()
        }
    };
}
pub(crate) use forward_to_core;

/// How a pool's core is set up (from its configuration).
pub(crate) struct CoreConfig<'a> {
    pub capacity: usize,
    pub allocated: u64,
    /// The device block of page 0.
    pub first_block: u64,
    /// See [`PoolConfig::pages`].
    pub pages: Option<u64>,
    pub evict_batch: usize,
    pub durability: &'a Arc<dyn Durability>,
    pub relax: fn(),
    /// Free lists (one per CPU that evicts and loads; at least 1).
    pub free_lists: usize,
}

/// A pool's frames as the shared machinery sees them.
pub(crate) trait Frames {
    /// The frame index of the page in `slot`, and that page if the pool
    /// knows it before latching the frame; `None` if the slot is known to
    /// be free. vmcache's latches belong to page ids, so it reads the page
    /// first (and the slot must still hold it once latched); a hash-pool
    /// frame's latch guards whichever page the frame holds, which is read
    /// from the slot once the frame is latched.
    fn locate(&self, slot: usize) -> Option<(usize, Option<PageId>)>;

    /// The latch of the frame at `index`.
    fn latch(&self, index: usize) -> &Latch;

    /// The bytes of the frame at `index`; the caller holds a latch of it
    /// that excludes writers.
    fn bytes(&self, index: usize) -> &[u8];

    /// Releases the memory of an eviction batch, written back and latched
    /// exclusively. On failure part of the batch may have been released
    /// (vmcache: the runs before the failing `madvise` read as zero now),
    /// so the caller evicts the whole batch anyway: every victim is clean,
    /// and an evicted page is read back from the device on its next fix.
    fn release(&self, victims: &[Held]) -> Result<(), PoolError>;

    /// The free list of the calling CPU (taken modulo the lists); the
    /// process pools have one.
    fn cpu(&self) -> usize {
        0
    }
}

/// A resident page latched by the pool's own machinery: the page, its
/// slot and its frame index.
#[derive(Clone, Copy)]
pub(crate) struct Held {
    pub id: PageId,
    pub slot: usize,
    pub index: usize,
}

/// The resident set: `capacity` slots, each holding a resident page
/// (`pid + 1`, 0 if free), per-CPU stacks of free slots, and the clock hand.
pub(crate) struct Slots {
    pub pids: Vec<AtomicU64>,
    pub free: Vec<spin::Mutex<Vec<usize>>>,
    pub hand: AtomicUsize,
}

impl Slots {
    /// `capacity` free slots dealt round-robin over `lists` free lists.
    pub fn new(capacity: usize, lists: usize) -> Slots {
        let lists = lists.max(1);
        let mut free: Vec<Vec<usize>> = (0..lists).map(|_| Vec::new()).collect();
        for s in (0..capacity).rev() {
            free[s % lists].push(s);
        }
        Slots {
            pids: (0..capacity).map(|_| AtomicU64::new(0)).collect(),
            free: free.into_iter().map(spin::Mutex::new).collect(),
            hand: AtomicUsize::new(0),
        }
    }

    /// A free slot from `cpu`'s list, else stolen from another's.
    pub fn pop_free(&self, cpu: usize) -> Option<usize> {
        let n = self.free.len();
        (0..n).find_map(|k| self.free[(cpu + k) % n].lock().pop())
    }

    /// Frees `slot` onto `cpu`'s list.
    pub fn push_free(&self, slot: usize, cpu: usize) {
        self.pids[slot].store(0, Ordering::Release);
        self.free[cpu % self.free.len()].lock().push(slot);
    }

    /// Free slots now (all lists).
    pub fn free_count(&self) -> usize {
        self.free.iter().map(|l| l.lock().len()).sum()
    }

    /// Which page slot `slot` holds.
    pub fn get(&self, slot: usize) -> Option<PageId> {
        match self.pids[slot].load(Ordering::Acquire) {
            0 => None,
            p => Some(PageId(p - 1)),
        }
    }

    pub fn set(&self, slot: usize, id: PageId) {
        self.pids[slot].store(id.0 + 1, Ordering::Release);
    }

    /// The next `n` slots of the clock.
    pub fn advance(&self, n: usize) -> core::ops::Range<usize> {
        let start = self.hand.fetch_add(n, Ordering::Relaxed);
        start..start + n
    }
}

/// The state a process pool keeps besides its frames and latches.
pub(crate) struct PoolCore<D> {
    /// Per frame index: 1 if the page there was changed since it was last
    /// written.
    pub dirty: ZeroedArray<AtomicU8>,
    pub slots: Slots,
    pub io: IoQueues<D>,
    next_pid: AtomicU64,
    pub capacity: usize,
    pub evict_batch: usize,
    pub counters: Counters,
    pub relax: fn(),
    /// The pool's name in log messages.
    name: &'static str,
}

impl<D: BlockDevice> PoolCore<D> {
    /// The I/O queues of a pool set up by `cfg`: batches of
    /// `cfg.evict_batch` pages, at least one and at most the capacity.
    pub fn queues(devs: Vec<D>, cfg: &CoreConfig<'_>) -> Result<IoQueues<D>, PoolError> {
        let batch = cfg.evict_batch.clamp(1, cfg.capacity.max(1));
        IoQueues::over(
            devs,
            cfg.first_block,
            cfg.pages,
            batch,
            Arc::clone(cfg.durability),
            cfg.relax,
        )
    }

    /// The core of a pool over `io` (from [`queues`](Self::queues)) with
    /// `indexes` frame indexes.
    pub fn new(
        io: IoQueues<D>,
        cfg: &CoreConfig<'_>,
        indexes: usize,
        name: &'static str,
    ) -> Result<PoolCore<D>, PoolError> {
        Ok(PoolCore {
            dirty: ZeroedArray::new(indexes)?,
            slots: Slots::new(cfg.capacity, cfg.free_lists),
            evict_batch: io.batch(),
            io,
            next_pid: AtomicU64::new(cfg.allocated),
            capacity: cfg.capacity,
            counters: Counters::default(),
            relax: cfg.relax,
            name,
        })
    }

    /// Fails unless page `id` was allocated.
    #[inline]
    pub fn check(&self, id: PageId) -> Result<(), PoolError> {
        let pages = self.next_pid.load(Ordering::Acquire);
        if id.0 >= pages {
            return Err(PoolError::OutOfRange { id, pages });
        }
        Ok(())
    }

    /// Page ids handed out so far.
    pub fn page_count(&self) -> u64 {
        self.next_pid.load(Ordering::Acquire)
    }

    /// A new page id, if the device has room.
    pub fn allocate_id(&self) -> Result<PageId, PoolError> {
        let pages = self.io.device_pages();
        let id = PageId(self.next_pid.fetch_add(1, Ordering::AcqRel));
        if id.0 >= pages {
            self.next_pid.fetch_sub(1, Ordering::AcqRel);
            return Err(PoolError::DeviceFull { pages });
        }
        Ok(id)
    }

    /// Counts a page allocated into the frame at `index` (dirty: never
    /// written).
    pub fn allocated(&self, index: usize) {
        self.dirty[index].store(1, Ordering::Relaxed);
        Counters::add(&self.counters.allocations, 1);
    }

    /// Releases an exclusive fix of `frame` (whose index is its frame
    /// index), marking it dirty if it was changed.
    pub fn unfix_exclusive(&self, frame: &Frame<'_>, dirty: bool) {
        if dirty {
            self.dirty[frame.index].store(1, Ordering::Relaxed);
        }
        frame.latch.unlock_exclusive();
    }

    pub fn stats(&self) -> PoolStats {
        self.counters.snapshot()
    }

    /// A free slot, evicting a batch if there is none.
    ///
    /// While every frame is latched, it waits (a clock sweep, then `relax`)
    /// for their holders: another thread may hold frames across a page read
    /// (a vCPU for as long as an emulated I/O takes). It gives up with
    /// [`PoolError::NoFreeFrame`] only after 2^22 / capacity rounds in
    /// vain (at least 100; each sweeps up to twice the capacity: about 2^23
    /// slot visits, about a second in a process on this project's
    /// machines), which is what a caller that itself holds every frame
    /// gets, after a bounded wait, instead of a hang.
    pub fn take_slot(&self, frames: &impl Frames) -> Result<usize, PoolError> {
        let patience = ((1u64 << 22) / self.capacity.max(1) as u64).max(100);
        let mut idle = 0;
        loop {
            if let Some(s) = self.slots.pop_free(frames.cpu()) {
                return Ok(s);
            }
            if self.evict(frames, self.evict_batch)? == 0 {
                idle += 1;
                if idle > patience {
                    return Err(PoolError::NoFreeFrame {
                        frames: self.capacity,
                    });
                }
                (self.relax)();
            }
        }
    }

    /// Victims for one batch: up to `n` pages latched exclusively.
    fn pick_victims(&self, frames: &impl Frames, n: usize, out: &mut Vec<Held>) {
        let cap = self.capacity;
        // Two sweeps: the first may only mark.
        let mut scanned = 0;
        while out.len() < n && scanned < 2 * cap {
            let chunk = 64.min(2 * cap - scanned);
            for s in self.slots.advance(chunk) {
                let slot = s % cap;
                let Some((index, known)) = frames.locate(slot) else {
                    continue;
                };
                let latch = frames.latch(index);
                let w = latch.load();
                match state(w) {
                    UNLOCKED => {
                        latch.try_mark(w);
                    }
                    MARKED if latch.try_lock_exclusive(w) => match self.slots.get(slot) {
                        Some(id) if known.is_none_or(|k| k == id) => {
                            out.push(Held { id, slot, index });
                            if out.len() == n {
                                break;
                            }
                        }
                        _ => latch.unlock_exclusive(),
                    },
                    _ => {}
                }
            }
            scanned += chunk;
        }
    }

    /// Writes the dirty pages among `pages` (latched by the caller) and
    /// clears their dirty flags. Returns how many were written.
    fn write_back(&self, frames: &impl Frames, pages: &[Held]) -> Result<usize, PoolError> {
        let dirty: Vec<(PageId, &[u8], usize)> = pages
            .iter()
            .filter(|h| self.dirty[h.index].load(Ordering::Relaxed) != 0)
            .map(|h| (h.id, frames.bytes(h.index), h.index))
            .collect();
        for chunk in dirty.chunks(self.io.batch()) {
            let pages: Vec<(PageId, &[u8])> = chunk.iter().map(|&(id, b, _)| (id, b)).collect();
            self.io.write_pages(&pages)?;
            for &(_, _, index) in chunk {
                self.dirty[index].store(0, Ordering::Relaxed);
            }
            Counters::add(&self.counters.writes, chunk.len() as u64);
        }
        Ok(dirty.len())
    }

    /// Evicts up to `pages` (at most a batch) unlatched pages chosen by the
    /// clock: dirty ones are written back, the pool releases their memory,
    /// then their latches become Evicted (new version) and their slots
    /// free. Returns how many were evicted.
    pub fn evict(&self, frames: &impl Frames, pages: usize) -> Result<usize, PoolError> {
        let mut victims = Vec::with_capacity(pages.min(self.evict_batch));
        self.pick_victims(frames, pages.min(self.evict_batch), &mut victims);
        if victims.is_empty() {
            return Ok(0);
        }
        let unlock = |victims: &[Held]| {
            for v in victims {
                frames.latch(v.index).unlock_exclusive();
            }
        };
        if let Err(e) = self.write_back(frames, &victims) {
            log::warn!("{}: write-back of an eviction batch failed: {e}", self.name);
            unlock(&victims);
            return Err(e);
        }
        // Written back: from here every victim is clean, so each may become
        // Evicted whether or not its memory was released. A failed release
        // may have released part of the batch, whose pages must not stay
        // marked resident (they would read as zero), so the whole batch is
        // evicted before the error is returned.
        let released = frames.release(&victims);
        let cpu = frames.cpu();
        for v in &victims {
            frames.latch(v.index).unlock_exclusive_evicted();
            self.slots.push_free(v.slot, cpu);
        }
        Counters::add(&self.counters.evictions, victims.len() as u64);
        Counters::add(&self.counters.evict_batches, 1);
        if let Err(e) = released {
            log::warn!("{}: releasing an eviction batch failed: {e}", self.name);
            return Err(e);
        }
        Ok(victims.len())
    }

    /// Writes back every page dirty when the call begins (see
    /// [`BufferManager::flush`](super::BufferManager::flush)), a batch at a
    /// time, under shared latches (they stay resident). Returns how many
    /// were written.
    ///
    /// Why no page dirty at the start is missed: a page stays in one slot
    /// from its load to its eviction, and an eviction writes a dirty page
    /// (the write completes) before the page leaves its slot. So when the
    /// sweep reaches slot `s`, the page that was there at the start is
    /// either still there (latched shared below, waiting for an exclusive
    /// holder, and written if dirty) or was written by its eviction. The
    /// dirty flag is cleared only after a write completes, under a latch
    /// that excludes writers.
    ///
    /// While it waits for a latch it holds none: the batch gathered so far
    /// is written and released first, so a holder that waits for a page
    /// of the batch (a transaction latching pages in order) cannot
    /// deadlock with it.
    pub fn flush(&self, frames: &impl Frames) -> Result<usize, PoolError> {
        let mut written = 0;
        let mut batch: Vec<Held> = Vec::new();
        let release = |b: &mut Vec<Held>| {
            b.drain(..)
                .for_each(|h| frames.latch(h.index).unlock_shared())
        };
        let mut write_batch = |batch: &mut Vec<Held>| -> Result<(), PoolError> {
            let r = self.write_back(frames, batch);
            release(batch);
            written += r?;
            Ok(())
        };
        for slot in 0..self.capacity {
            while let Some((index, known)) = frames.locate(slot) {
                if self.dirty[index].load(Ordering::Relaxed) == 0 {
                    break;
                }
                let latch = frames.latch(index);
                let w = latch.load();
                if state(w) == EVICTED {
                    // Evicted (so written) after `locate` saw it.
                    break;
                }
                if state(w) == EXCLUSIVE || !latch.try_lock_shared(w) {
                    // Held, or the word moved: wait holding nothing.
                    write_batch(&mut batch)?;
                    (self.relax)();
                    continue;
                }
                match self.slots.get(slot) {
                    Some(id) if known.is_none_or(|k| k == id) => {
                        batch.push(Held { id, slot, index });
                        if batch.len() == self.evict_batch {
                            write_batch(&mut batch)?;
                        }
                        break;
                    }
                    // The slot's page changed between `locate` and the
                    // latch: look again at what it holds now.
                    _ => latch.unlock_shared(),
                }
            }
        }
        write_batch(&mut batch)?;
        Ok(written)
    }
}
