//! What the pools ([`VmCache`](super::vmcache::VmCache),
//! [`HashPool`](super::hash::HashPool) and [`Tabby`](super::tabby::Tabby))
//! share besides their frames and latches: the resident set (slots, free
//! lists and the clock hand), dirty flags, page-id allocation, the clock
//! sweep, batched write-back, eviction and flush ([`PoolCore`]).
//!
//! It is `no_std` (Tabby runs in the guest): the dirty flags are a zeroed
//! anonymous mapping in a process and a heap vector in the guest. Free slots
//! are kept in one list per CPU ([`Slots`]; the process pools use one list,
//! Tabby one per platform CPU), a slot freed by an eviction goes on the
//! evicting CPU's list, and a CPU whose list is empty steals from the others.
//!
//! A pool names each frame by an *index* (its latch, dirty flag and bytes):
//! the page id in vmcache, the frame number in the hash pool. It tells the
//! shared code how slots map to indexes through [`Frames`].

use super::latch::{state, EVICTED, MARKED, UNLOCKED};
#[cfg(not(target_os = "none"))]
use super::os::ZeroedArray;
use super::{Counters, Durability, Frame, IoQueues, Latch, PoolError, PoolStats};
use crate::device::BlockDevice;
use crate::PageId;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicU64, AtomicU8, AtomicUsize, Ordering};

/// How a pool's core is set up (from its configuration).
pub(crate) struct CoreConfig<'a> {
    pub capacity: usize,
    pub allocated: u64,
    pub evict_batch: usize,
    pub durability: &'a Arc<dyn Durability>,
    pub relax: fn(),
    /// Free lists (one per CPU that evicts and loads; at least 1).
    pub free_lists: usize,
}

/// Per-index dirty flags: lazily backed zeroed memory in a process (arrays
/// over every page of a large device stay cheap), a heap vector in the guest.
#[cfg(not(target_os = "none"))]
type DirtyFlags = ZeroedArray<AtomicU8>;
#[cfg(target_os = "none")]
type DirtyFlags = Vec<AtomicU8>;

fn dirty_flags(n: usize) -> Result<DirtyFlags, PoolError> {
    #[cfg(not(target_os = "none"))]
    {
        ZeroedArray::new(n)
    }
    #[cfg(target_os = "none")]
    {
        Ok((0..n).map(|_| AtomicU8::new(0)).collect())
    }
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
    pub dirty: DirtyFlags,
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
        IoQueues::new(devs, batch, Arc::clone(cfg.durability), cfg.relax)
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
            dirty: dirty_flags(indexes)?,
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
    pub fn take_slot(&self, frames: &impl Frames) -> Result<usize, PoolError> {
        let mut idle = 0;
        loop {
            if let Some(s) = self.slots.pop_free(frames.cpu()) {
                return Ok(s);
            }
            if self.evict(frames, self.evict_batch)? == 0 {
                idle += 1;
                if idle > 100 {
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

    /// Writes every dirty resident page that can be latched shared back,
    /// a batch at a time (they stay resident). Returns how many were
    /// written.
    pub fn flush(&self, frames: &impl Frames) -> Result<usize, PoolError> {
        let mut written = 0;
        let mut batch: Vec<Held> = Vec::new();
        let release = |b: &mut Vec<Held>| {
            b.drain(..)
                .for_each(|h| frames.latch(h.index).unlock_shared())
        };
        for slot in 0..self.capacity {
            let Some((index, known)) = frames.locate(slot) else {
                continue;
            };
            if self.dirty[index].load(Ordering::Relaxed) == 0 {
                continue;
            }
            let latch = frames.latch(index);
            let w = latch.load();
            if state(w) == EVICTED || !latch.try_lock_shared(w) {
                continue;
            }
            let Some(id) = known.or_else(|| self.slots.get(slot)) else {
                latch.unlock_shared();
                continue;
            };
            batch.push(Held { id, slot, index });
            if batch.len() == self.evict_batch {
                let r = self.write_back(frames, &batch);
                release(&mut batch);
                written += r?;
            }
        }
        let r = self.write_back(frames, &batch);
        release(&mut batch);
        Ok(written + r?)
    }
}
