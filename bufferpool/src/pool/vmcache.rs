//! A vmcache-style pool in a process (Leis et al., SIGMOD 2023): one
//! anonymous `mmap(MAP_NORESERVE)` window with a fixed address for every
//! page id (`base + id * 4096`), one versioned [`Latch`] per page id, and at
//! most `capacity` resident pages.
//!
//! - A hit is a latch load plus a load at a computed address: no lookup.
//! - A miss latches the page exclusively (Evicted -> Exclusive), takes a
//!   free resident slot (evicting a batch if none is free), reads the page
//!   and copies it to its address (see [`IoQueues`] for why a bounce
//!   buffer), checking its identity.
//! - Eviction is a clock over the resident slots (Unlocked -> Marked ->
//!   victim); a batch of victims is latched exclusively, the dirty ones are
//!   written under the write-ahead rule, then the batch is released with
//!   `madvise(MADV_DONTNEED)` (adjacent pages in one call) and the latches
//!   become Evicted with a new version. Linux shoots down the TLBs of the
//!   other CPUs running this process for every such call.
//! - The window stays one mapping whatever is evicted (DONTNEED never
//!   splits a mapping), so `vm.max_map_count` does not limit the pool; an
//!   optimistic reader of an evicted page reads zeros, never faults, and
//!   fails validation.

use super::os::{Mapping, ZeroedArray};
use super::{
    BufferManager, Counters, Durability, Frame, IoQueues, Latch, PoolError, PoolStats, Slots,
};
use crate::device::BlockDevice;
use crate::{PageId, PAGE_SIZE};
use core::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use latch_states::*;
use std::sync::Arc;
use std::vec::Vec;

mod latch_states {
    pub use crate::pool::latch::{state, EVICTED, EXCLUSIVE, MARKED, UNLOCKED};
}

/// How a process pool is set up.
#[derive(Clone)]
pub struct PoolConfig {
    /// Resident pages at most.
    pub capacity: usize,
    /// Pages already allocated on the device (`allocate` continues after
    /// them; 0 for a new pool).
    pub allocated: u64,
    /// Pages evicted (and written) per batch.
    pub evict_batch: usize,
    /// The owner's write-ahead hook.
    pub durability: Arc<dyn Durability>,
    /// Called in wait loops.
    pub relax: fn(),
}

impl PoolConfig {
    /// `capacity` pages, batches of 64, no log, yielding while waiting.
    pub fn new(capacity: usize) -> PoolConfig {
        PoolConfig {
            capacity,
            allocated: 0,
            evict_batch: 64,
            durability: Arc::new(super::NoLog),
            relax: std::thread::yield_now,
        }
    }
}

/// The vmcache-style process pool.
pub struct VmCache<D> {
    window: Mapping,
    latches: ZeroedArray<Latch>,
    dirty: ZeroedArray<AtomicU8>,
    slots: Slots,
    io: IoQueues<D>,
    next_pid: AtomicU64,
    capacity: usize,
    evict_batch: usize,
    counters: Counters,
    relax: fn(),
}

impl<D: BlockDevice> VmCache<D> {
    /// A pool over `devs` (queues to one device; one per thread that may
    /// miss concurrently) with a window over every page of the device.
    pub fn new(devs: Vec<D>, cfg: PoolConfig) -> Result<VmCache<D>, PoolError> {
        let batch = cfg.evict_batch.clamp(1, cfg.capacity.max(1));
        let io = IoQueues::new(devs, batch, cfg.durability, cfg.relax)?;
        let pages = io.device_pages() as usize;
        if cfg.capacity == 0 || cfg.allocated > pages as u64 {
            return Err(PoolError::Setup {
                what: "pool capacity is zero or more pages allocated than the device holds",
                errno: 0,
            });
        }
        let window = Mapping::anonymous(pages * PAGE_SIZE)?;
        log::debug!(
            "vmcache: window of {pages} pages at {:p}, {} resident at most",
            window.ptr(),
            cfg.capacity
        );
        Ok(VmCache {
            window,
            latches: ZeroedArray::new(pages)?,
            dirty: ZeroedArray::new(pages)?,
            slots: Slots::new(cfg.capacity),
            io,
            next_pid: AtomicU64::new(cfg.allocated),
            capacity: cfg.capacity,
            evict_batch: batch,
            counters: Counters::default(),
            relax: cfg.relax,
        })
    }

    /// The window's first byte and length (for tests and reports).
    pub fn window(&self) -> (*const u8, usize) {
        (self.window.ptr().as_ptr(), self.window.len())
    }

    /// Pages resident now.
    pub fn resident(&self) -> usize {
        self.capacity - self.slots.free.lock().len()
    }

    fn frame(&self, id: PageId) -> Frame<'_> {
        let off = id.0 as usize * PAGE_SIZE;
        Frame {
            id,
            latch: &self.latches[id.0 as usize],
            data: core::ptr::NonNull::new(self.window.ptr().as_ptr().wrapping_add(off))
                .expect("inside the window"),
            index: id.0 as usize,
        }
    }

    fn check(&self, id: PageId) -> Result<(), PoolError> {
        let pages = self.next_pid.load(Ordering::Acquire);
        if id.0 >= pages {
            return Err(PoolError::OutOfRange { id, pages });
        }
        Ok(())
    }

    /// The page's bytes while the caller holds its exclusive latch.
    #[allow(clippy::mut_from_ref)]
    fn page_mut(&self, id: PageId) -> &mut [u8] {
        let f = self.frame(id);
        // SAFETY: the caller holds the page's exclusive latch, so no one
        // else writes it; PAGE_SIZE bytes at its address are in the window.
        unsafe { core::slice::from_raw_parts_mut(f.data.as_ptr(), PAGE_SIZE) }
    }

    fn page(&self, id: PageId) -> &[u8] {
        let f = self.frame(id);
        // SAFETY: the caller holds a latch that excludes writers; PAGE_SIZE
        // bytes at the page's address are in the window.
        unsafe { core::slice::from_raw_parts(f.data.as_ptr(), PAGE_SIZE) }
    }

    /// A free resident slot, evicting a batch if there is none.
    fn take_slot(&self) -> Result<usize, PoolError> {
        let mut idle = 0;
        loop {
            if let Some(s) = self.slots.pop_free() {
                return Ok(s);
            }
            if self.evict(self.evict_batch)? == 0 {
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

    /// Reads page `id`, whose latch the caller holds exclusively (it was
    /// Evicted). On failure the latch is released as Evicted.
    fn load(&self, id: PageId) -> Result<(), PoolError> {
        let latch = &self.latches[id.0 as usize];
        let slot = match self.take_slot() {
            Ok(s) => s,
            Err(e) => {
                latch.unlock_exclusive_evicted();
                return Err(e);
            }
        };
        // The window page is zero (never touched, or released with
        // DONTNEED); the read overwrites all of it.
        if let Err(e) = self.io.read_page(id, self.page_mut(id)) {
            // Leave the page zero for the next attempt.
            let _ = self.window.dontneed(id.0 as usize * PAGE_SIZE, PAGE_SIZE);
            self.slots.push_free(slot);
            latch.unlock_exclusive_evicted();
            return Err(e);
        }
        self.slots.set(slot, id);
        Counters::add(&self.counters.reads, 1);
        Ok(())
    }

    /// Victims for one batch: up to `n` pages latched exclusively, with
    /// their slots.
    fn pick_victims(&self, n: usize, out: &mut Vec<(PageId, usize)>) {
        let cap = self.capacity;
        // Two sweeps: the first may only mark.
        let mut scanned = 0;
        while out.len() < n && scanned < 2 * cap {
            let chunk = 64.min(2 * cap - scanned);
            for s in self.slots.advance(chunk) {
                let slot = s % cap;
                let Some(id) = self.slots.get(slot) else {
                    continue;
                };
                let latch = &self.latches[id.0 as usize];
                let w = latch.load();
                match state(w) {
                    UNLOCKED => {
                        latch.try_mark(w);
                    }
                    MARKED if latch.try_lock_exclusive(w) => {
                        if self.slots.get(slot) == Some(id) {
                            out.push((id, slot));
                            if out.len() == n {
                                break;
                            }
                        } else {
                            latch.unlock_exclusive();
                        }
                    }
                    _ => {}
                }
            }
            scanned += chunk;
        }
    }

    /// Writes the dirty pages among `pages` (latched by the caller) and
    /// clears their dirty flags.
    fn write_back(&self, pages: &[PageId]) -> Result<usize, PoolError> {
        let dirty: Vec<(PageId, &[u8])> = pages
            .iter()
            .filter(|id| self.dirty[id.0 as usize].load(Ordering::Relaxed) != 0)
            .map(|&id| (id, self.page(id)))
            .collect();
        for chunk in dirty.chunks(self.io.batch()) {
            self.io.write_pages(chunk)?;
            for (id, _) in chunk {
                self.dirty[id.0 as usize].store(0, Ordering::Relaxed);
            }
            Counters::add(&self.counters.writes, chunk.len() as u64);
        }
        Ok(dirty.len())
    }
}

// SAFETY: frames are addresses in the window (mapped for the pool's life;
// evicted pages read as zero); every write, load and eviction of a page
// happens under its exclusive latch, released with a version increment;
// try_upgrade'd latches are released by unfix_exclusive_frame.
unsafe impl<D: BlockDevice> BufferManager for VmCache<D> {
    fn fix_exclusive_frame(&self, id: PageId) -> Result<Frame<'_>, PoolError> {
        self.check(id)?;
        let latch = &self.latches[id.0 as usize];
        loop {
            let w = latch.load();
            match state(w) {
                UNLOCKED | MARKED => {
                    if latch.try_lock_exclusive(w) {
                        return Ok(self.frame(id));
                    }
                }
                EVICTED => {
                    if latch.try_lock_exclusive(w) {
                        self.load(id)?;
                        return Ok(self.frame(id));
                    }
                }
                _ => (self.relax)(),
            }
        }
    }

    fn fix_shared_frame(&self, id: PageId) -> Result<Frame<'_>, PoolError> {
        self.check(id)?;
        let latch = &self.latches[id.0 as usize];
        loop {
            let w = latch.load();
            match state(w) {
                EVICTED => {
                    if latch.try_lock_exclusive(w) {
                        self.load(id)?;
                        latch.unlock_exclusive();
                    }
                }
                EXCLUSIVE => (self.relax)(),
                _ => {
                    if latch.try_lock_shared(w) {
                        return Ok(self.frame(id));
                    }
                    (self.relax)();
                }
            }
        }
    }

    #[inline]
    fn fix_optimistic_frame(&self, id: PageId) -> Result<(Frame<'_>, u64), PoolError> {
        self.check(id)?;
        let latch = &self.latches[id.0 as usize];
        loop {
            let w = latch.load();
            match state(w) {
                EVICTED => {
                    if latch.try_lock_exclusive(w) {
                        self.load(id)?;
                        latch.unlock_exclusive();
                    }
                }
                EXCLUSIVE => (self.relax)(),
                MARKED => {
                    latch.unmark(w);
                    return Ok((self.frame(id), w));
                }
                _ => return Ok((self.frame(id), w)),
            }
        }
    }

    fn unfix_exclusive_frame(&self, frame: &Frame<'_>, dirty: bool) {
        if dirty {
            self.dirty[frame.index].store(1, Ordering::Relaxed);
        }
        frame.latch.unlock_exclusive();
    }

    fn unfix_shared_frame(&self, frame: &Frame<'_>) {
        frame.latch.unlock_shared();
    }

    fn allocate_frame(&self) -> Result<Frame<'_>, PoolError> {
        let pages = self.io.device_pages();
        let id = PageId(self.next_pid.fetch_add(1, Ordering::AcqRel));
        if id.0 >= pages {
            self.next_pid.fetch_sub(1, Ordering::AcqRel);
            return Err(PoolError::DeviceFull { pages });
        }
        let latch = &self.latches[id.0 as usize];
        let w = latch.load();
        // A new id: Evicted and unknown to everyone else.
        if !latch.try_lock_exclusive(w) {
            return Err(PoolError::Setup {
                what: "a newly allocated page id is latched",
                errno: 0,
            });
        }
        let slot = match self.take_slot() {
            Ok(s) => s,
            Err(e) => {
                latch.unlock_exclusive_evicted();
                return Err(e);
            }
        };
        // Never written: the window page is still zero.
        self.slots.set(slot, id);
        self.dirty[id.0 as usize].store(1, Ordering::Relaxed);
        Counters::add(&self.counters.allocations, 1);
        Ok(self.frame(id))
    }

    fn evict(&self, pages: usize) -> Result<usize, PoolError> {
        let mut victims = Vec::with_capacity(pages.min(self.evict_batch));
        self.pick_victims(pages.min(self.evict_batch), &mut victims);
        if victims.is_empty() {
            return Ok(0);
        }
        let ids: Vec<PageId> = victims.iter().map(|v| v.0).collect();
        if let Err(e) = self.write_back(&ids) {
            log::warn!("vmcache: write-back of an eviction batch failed: {e}");
            for id in ids {
                self.latches[id.0 as usize].unlock_exclusive();
            }
            return Err(e);
        }
        // Release the memory: one madvise per run of adjacent page ids.
        let mut sorted = ids.clone();
        sorted.sort_unstable();
        let mut calls = 0;
        let mut i = 0;
        while i < sorted.len() {
            let mut j = i + 1;
            while j < sorted.len() && sorted[j].0 == sorted[j - 1].0 + 1 {
                j += 1;
            }
            let res = self
                .window
                .dontneed(sorted[i].0 as usize * PAGE_SIZE, (j - i) * PAGE_SIZE);
            if let Err(e) = res {
                // Nothing was released: the victims stay resident and clean.
                for id in ids {
                    self.latches[id.0 as usize].unlock_exclusive();
                }
                return Err(e);
            }
            calls += 1;
            i = j;
        }
        for &(id, slot) in &victims {
            self.latches[id.0 as usize].unlock_exclusive_evicted();
            self.slots.push_free(slot);
        }
        Counters::add(&self.counters.evictions, victims.len() as u64);
        Counters::add(&self.counters.evict_batches, 1);
        Counters::add(&self.counters.dontneed_calls, calls);
        Ok(victims.len())
    }

    fn flush(&self) -> Result<usize, PoolError> {
        let mut written = 0;
        let mut batch = Vec::new();
        for slot in 0..self.capacity {
            let Some(id) = self.slots.get(slot) else {
                continue;
            };
            if self.dirty[id.0 as usize].load(Ordering::Relaxed) == 0 {
                continue;
            }
            let latch = &self.latches[id.0 as usize];
            let w = latch.load();
            if state(w) == EVICTED || !latch.try_lock_shared(w) {
                continue;
            }
            batch.push(id);
            if batch.len() == self.evict_batch {
                let r = self.write_back(&batch);
                batch
                    .drain(..)
                    .for_each(|id| self.latches[id.0 as usize].unlock_shared());
                written += r?;
            }
        }
        let r = self.write_back(&batch);
        batch
            .drain(..)
            .for_each(|id| self.latches[id.0 as usize].unlock_shared());
        Ok(written + r?)
    }

    fn page_count(&self) -> u64 {
        self.next_pid.load(Ordering::Acquire)
    }

    fn capacity(&self) -> usize {
        self.capacity
    }

    fn stats(&self) -> PoolStats {
        self.counters.snapshot()
    }

    fn relax(&self) {
        (self.relax)()
    }
}
