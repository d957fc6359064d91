//! The classic design, as the baseline the VM-based pools must beat: a
//! frame array, a table from page id to frame, one versioned [`Latch`] per
//! frame, clock eviction. Same interface and invariants as the
//! vmcache-style process pool. It needs no virtual-memory tricks, so it
//! also builds for the guest (frames on the heap), where it is the
//! engine's pool until Tabby.
//!
//! The table is open addressing with linear probing over `AtomicU64`
//! entries (`(pid + 1) << 24 | frame`, 0 empty), at most half full. Hits
//! look up without locking; inserts and removals (backward-shift deletion)
//! hold one table mutex. A lock-free lookup that races with a removal may
//! miss a present entry: misses are therefore re-checked under the mutex
//! before a page is read. A lookup may also find a frame that is being
//! reused for another page: the frame's latch word is loaded, then its
//! page id is checked; a change after that bumps the version, which the
//! reader validates.

use super::memory::Mapping;
use super::resident::{forward_to_core, Frames, Held, PoolCore};
use super::{overwritten, BufferManager, Counters, Frame, Latch, PoolConfig, PoolError, PoolStats};
use crate::device::BlockDevice;
use crate::pool::latch::{state, EVICTED, EXCLUSIVE, MARKED, UNLOCKED};
use crate::{PageId, PAGE_SIZE};
use alloc::vec::Vec;
use core::sync::atomic::{AtomicU64, Ordering};

const FRAME_BITS: u32 = 24;
const FRAME_MASK: u64 = (1 << FRAME_BITS) - 1;

/// Page id -> frame, lock-free lookups.
struct Table {
    entries: Vec<AtomicU64>,
    mask: usize,
    lock: spin::Mutex<()>,
}

impl Table {
    fn new(frames: usize) -> Table {
        let len = (frames * 2).next_power_of_two().max(16);
        Table {
            entries: (0..len).map(|_| AtomicU64::new(0)).collect(),
            mask: len - 1,
            lock: spin::Mutex::new(()),
        }
    }

    #[inline]
    fn home(&self, id: PageId) -> usize {
        (id.0.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 20) as usize & self.mask
    }

    /// The frame of `id`, if found (may miss during a concurrent removal).
    #[inline]
    fn get(&self, id: PageId) -> Option<usize> {
        let key = id.0 + 1;
        let mut i = self.home(id);
        for _ in 0..=self.mask {
            let e = self.entries[i].load(Ordering::Acquire);
            if e == 0 {
                return None;
            }
            if e >> FRAME_BITS == key {
                return Some((e & FRAME_MASK) as usize);
            }
            i = (i + 1) & self.mask;
        }
        None
    }

    /// Inserts under the table lock (`id` is absent).
    fn insert_locked(&self, id: PageId, frame: usize) {
        let mut i = self.home(id);
        while self.entries[i].load(Ordering::Relaxed) != 0 {
            i = (i + 1) & self.mask;
        }
        self.entries[i].store(((id.0 + 1) << FRAME_BITS) | frame as u64, Ordering::Release);
    }

    /// Removes `id` under the table lock, shifting later entries of its
    /// probe run back so that no tombstones are needed.
    fn remove_locked(&self, id: PageId) {
        let key = id.0 + 1;
        let mut i = self.home(id);
        loop {
            let e = self.entries[i].load(Ordering::Relaxed);
            if e == 0 {
                return;
            }
            if e >> FRAME_BITS == key {
                break;
            }
            i = (i + 1) & self.mask;
        }
        let mut hole = i;
        let mut j = i;
        loop {
            j = (j + 1) & self.mask;
            let e = self.entries[j].load(Ordering::Relaxed);
            if e == 0 {
                break;
            }
            let home = self.home(PageId((e >> FRAME_BITS) - 1));
            // Move e into the hole if its home is not in (hole, j].
            let in_between = if hole <= j {
                hole < home && home <= j
            } else {
                hole < home || home <= j
            };
            if !in_between {
                self.entries[hole].store(e, Ordering::Release);
                hole = j;
            }
        }
        self.entries[hole].store(0, Ordering::Release);
    }
}

/// The hash-table process pool.
pub struct HashPool<D> {
    frames: Mapping,
    latches: Vec<Latch>,
    table: Table,
    /// Frame index = frame number = slot.
    core: PoolCore<D>,
}

impl<D: BlockDevice> HashPool<D> {
    /// A pool of `cfg.capacity` frames over `devs`.
    pub fn new(devs: Vec<D>, cfg: PoolConfig) -> Result<HashPool<D>, PoolError> {
        let io = PoolCore::queues(devs, &cfg.core())?;
        if cfg.capacity == 0
            || cfg.capacity as u64 > FRAME_MASK
            || io.device_pages() >= 1 << (64 - FRAME_BITS)
            || cfg.allocated > io.device_pages()
        {
            return Err(PoolError::Setup {
                what: "hash pool: capacity 0 or over 2^24 frames, device over 2^40 pages, \
                       or more pages allocated than the device holds",
                errno: 0,
            });
        }
        Ok(HashPool {
            frames: Mapping::anonymous(cfg.capacity * PAGE_SIZE)?,
            latches: (0..cfg.capacity).map(|_| Latch::new()).collect(),
            table: Table::new(cfg.capacity),
            core: PoolCore::new(io, &cfg.core(), cfg.capacity, "hash pool")?,
        })
    }

    fn frame(&self, id: PageId, f: usize) -> Frame<'_> {
        Frame {
            id,
            latch: &self.latches[f],
            data: core::ptr::NonNull::new(self.frames.ptr().as_ptr().wrapping_add(f * PAGE_SIZE))
                .expect("inside the frame array"),
            index: f,
        }
    }

    #[allow(clippy::mut_from_ref)]
    fn bytes_mut(&self, f: usize) -> &mut [u8] {
        // SAFETY: the caller holds frame f's exclusive latch; the frame is
        // PAGE_SIZE bytes inside the frame array.
        unsafe {
            core::slice::from_raw_parts_mut(
                self.frames.ptr().as_ptr().add(f * PAGE_SIZE),
                PAGE_SIZE,
            )
        }
    }

    /// Page `id` resident: its frame and the latch word seen (not
    /// Exclusive, not Evicted), or, if `exclusive`, its frame latched
    /// exclusively (the word returned is then meaningless). A miss reads
    /// the page, or with `read` false zeroes the frame instead.
    fn resident(&self, id: PageId, exclusive: bool, read: bool) -> Result<(usize, u64), PoolError> {
        self.core.check(id)?;
        loop {
            let f = match self.table.get(id) {
                Some(f) => f,
                None => match self.miss(id, read)? {
                    // We loaded it and hold it exclusively.
                    Some(f) => {
                        if exclusive {
                            return Ok((f, 0));
                        }
                        self.latches[f].unlock_exclusive();
                        continue;
                    }
                    None => continue,
                },
            };
            let latch = &self.latches[f];
            let w = latch.load();
            if self.core.slots.get(f) != Some(id) {
                continue;
            }
            match state(w) {
                EVICTED => continue,
                EXCLUSIVE => (self.core.relax)(),
                s => {
                    if exclusive {
                        if (s == UNLOCKED || s == MARKED) && latch.try_lock_exclusive(w) {
                            if self.core.slots.get(f) == Some(id) {
                                return Ok((f, 0));
                            }
                            latch.unlock_exclusive();
                        }
                        (self.core.relax)();
                        continue;
                    }
                    if s == MARKED {
                        latch.unmark(w);
                    }
                    return Ok((f, w));
                }
            }
        }
    }

    /// The slow path of a lookup that found nothing: re-checks under the
    /// table lock and, if `id` is still absent, loads it into a free frame.
    /// `Some(frame)` latched exclusively if we loaded it, `None` if it turned
    /// out to be there (retry the lookup). With `read` false the frame is
    /// zeroed instead of read (see `fix_overwrite_frame`).
    fn miss(&self, id: PageId, read: bool) -> Result<Option<usize>, PoolError> {
        let f = self.core.take_slot(self)?;
        let latch = &self.latches[f];
        {
            let _t = self.table.lock.lock();
            if self.table.get(id).is_some() {
                drop(_t);
                self.core.slots.push_free(f, 0);
                return Ok(None);
            }
            // A free frame's latch is Evicted and nobody else holds it.
            let w = latch.load();
            let locked = latch.try_lock_exclusive(w);
            debug_assert!(locked && state(w) == EVICTED);
            self.core.slots.set(f, id);
            self.table.insert_locked(id, f);
        }
        if !read {
            // The caller overwrites it (`fix_overwrite_frame`).
            return Ok(Some(f));
        }
        if let Err(e) = self.core.io.read_page(id, self.bytes_mut(f)) {
            {
                let _t = self.table.lock.lock();
                self.table.remove_locked(id);
            }
            latch.unlock_exclusive_evicted();
            self.core.slots.push_free(f, 0);
            return Err(e);
        }
        Counters::add(&self.core.counters.reads, 1);
        Ok(Some(f))
    }
}

impl<D: BlockDevice> Frames for HashPool<D> {
    fn locate(&self, slot: usize) -> Option<(usize, Option<PageId>)> {
        Some((slot, None))
    }

    fn latch(&self, index: usize) -> &Latch {
        &self.latches[index]
    }

    fn bytes(&self, f: usize) -> &[u8] {
        // SAFETY: the caller holds a latch of frame f that excludes writers.
        unsafe {
            core::slice::from_raw_parts(self.frames.ptr().as_ptr().add(f * PAGE_SIZE), PAGE_SIZE)
        }
    }

    /// Removes the victims from the table (the frames are reused as they
    /// are).
    fn release(&self, victims: &[Held]) -> Result<(), PoolError> {
        let _t = self.table.lock.lock();
        for v in victims {
            self.table.remove_locked(v.id);
        }
        Ok(())
    }
}

// SAFETY: frames are PAGE_SIZE pieces of one mapping that lives as long as
// the pool; a frame changes page only under its exclusive latch, whose
// release increments the version; try_upgrade'd latches are released by
// unfix_exclusive_frame.
unsafe impl<D: BlockDevice> BufferManager for HashPool<D> {
    fn fix_exclusive_frame(&self, id: PageId) -> Result<Frame<'_>, PoolError> {
        let (f, _) = self.resident(id, true, true)?;
        Ok(self.frame(id, f))
    }

    fn fix_overwrite_frame(&self, id: PageId) -> Result<Frame<'_>, PoolError> {
        let (f, _) = self.resident(id, true, false)?;
        overwritten(self.bytes_mut(f), id);
        Ok(self.frame(id, f))
    }

    fn fix_shared_frame(&self, id: PageId) -> Result<Frame<'_>, PoolError> {
        loop {
            let (f, w) = self.resident(id, false, true)?;
            let latch = &self.latches[f];
            if latch.try_lock_shared(w) || latch.try_lock_shared(latch.load()) {
                if self.core.slots.get(f) == Some(id) {
                    return Ok(self.frame(id, f));
                }
                latch.unlock_shared();
            }
            (self.core.relax)();
        }
    }

    #[inline]
    fn fix_optimistic_frame(&self, id: PageId) -> Result<(Frame<'_>, u64), PoolError> {
        let (f, w) = self.resident(id, false, true)?;
        Ok((self.frame(id, f), w))
    }

    forward_to_core!();

    fn allocate_frame(&self) -> Result<Frame<'_>, PoolError> {
        let id = self.core.allocate_id()?;
        let f = self.core.take_slot(self)?;
        let latch = &self.latches[f];
        {
            let _t = self.table.lock.lock();
            let w = latch.load();
            let locked = latch.try_lock_exclusive(w);
            debug_assert!(locked && state(w) == EVICTED);
            self.core.slots.set(f, id);
            self.table.insert_locked(id, f);
        }
        self.bytes_mut(f).fill(0);
        self.core.allocated(f);
        Ok(self.frame(id, f))
    }
}
