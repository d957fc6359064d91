//! A vmcache-style pool in a process (Leis et al., SIGMOD 2023): one
//! anonymous `mmap(MAP_NORESERVE)` window with a fixed address for every
//! page id (`base + id * 4096`), one versioned [`Latch`] per page id, and at
//! most `capacity` resident pages.
//!
//! - A hit is a latch load plus a load at a computed address: no lookup.
//! - A miss latches the page exclusively (Evicted -> Exclusive), takes a
//!   free resident slot (evicting a batch if none is free), reads the page
//!   and copies it to its address (see [`IoQueues`](super::IoQueues) for why a bounce
//!   buffer), checking its identity.
//! - Eviction is a clock over the resident slots (Unlocked -> Marked ->
//!   victim); a batch of victims is latched exclusively, the dirty ones are
//!   written under the write-ahead rule, then the batch is released with
//!   `madvise(MADV_DONTNEED)` (adjacent pages in one call) and the latches
//!   become Evicted with a new version. Linux shoots down the TLBs of the
//!   other CPUs running this process for every such call.
//! - A caller that must not block on a miss (an event loop serving many
//!   clients) reads the page itself: `begin_read` latches it and reserves
//!   a slot as a miss does, the caller reads straight into the page's
//!   address (its own io_uring, no bounce buffer: the window is page
//!   aligned) and `finish_read` checks it and unlatches it.
//! - The window stays one mapping whatever is evicted (DONTNEED never
//!   splits a mapping), so `vm.max_map_count` does not limit the pool; an
//!   optimistic reader of an evicted page reads zeros, never faults, and
//!   fails validation.

use super::memory::{Mapping, ZeroedArray};
use super::resident::{forward_to_core, Frames, Held, PoolCore};
use super::{
    overwritten, read_outcome, BeginRead, BufferManager, Counters, Frame, Latch, PendingRead,
    PoolError, PoolStats,
};
use crate::device::{BlockDevice, DeviceError};
use crate::{PageId, PAGE_SIZE};
use latch_states::*;
use std::vec::Vec;

mod latch_states {
    pub use crate::pool::latch::{state, EVICTED, EXCLUSIVE, MARKED, UNLOCKED};
}

pub use super::PoolConfig;

/// The vmcache-style process pool.
pub struct VmCache<D> {
    window: Mapping,
    latches: ZeroedArray<Latch>,
    /// Frame index = page id.
    core: PoolCore<D>,
}

impl<D: BlockDevice> VmCache<D> {
    /// A pool over `devs` (queues to one device; one per thread that may
    /// miss concurrently) with a window over every page of the device.
    pub fn new(devs: Vec<D>, cfg: PoolConfig) -> Result<VmCache<D>, PoolError> {
        let io = PoolCore::queues(devs, &cfg.core())?;
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
            core: PoolCore::new(io, &cfg.core(), pages, "vmcache")?,
        })
    }

    /// The window's first byte and length (for tests and reports).
    pub fn window(&self) -> (*const u8, usize) {
        (self.window.ptr().as_ptr(), self.window.len())
    }

    /// Pages resident now.
    pub fn resident(&self) -> usize {
        self.core.capacity - self.core.slots.free_count()
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

    /// The page's bytes while the caller holds its exclusive latch.
    #[allow(clippy::mut_from_ref)]
    fn page_mut(&self, id: PageId) -> &mut [u8] {
        let f = self.frame(id);
        // SAFETY: the caller holds the page's exclusive latch, so no one
        // else writes it; PAGE_SIZE bytes at its address are in the window.
        unsafe { core::slice::from_raw_parts_mut(f.data.as_ptr(), PAGE_SIZE) }
    }

    /// A free resident slot for the page whose `latch` the caller holds
    /// exclusively (it was Evicted). On failure the latch is released as
    /// Evicted.
    fn take_slot(&self, latch: &Latch) -> Result<usize, PoolError> {
        self.core
            .take_slot(self)
            .inspect_err(|_| latch.unlock_exclusive_evicted())
    }

    /// Reads page `id`, whose latch the caller holds exclusively (it was
    /// Evicted). On failure the latch is released as Evicted.
    fn load(&self, id: PageId) -> Result<(), PoolError> {
        let latch = &self.latches[id.0 as usize];
        let slot = self.take_slot(latch)?;
        // The window page is zero (never touched, or released with
        // DONTNEED); the read overwrites all of it.
        let read = self.core.io.read_page(id, self.page_mut(id));
        self.settle(id, slot, read)
    }

    /// Ends a read of page `id` (latched exclusively) into resident slot
    /// `slot`: the page resident and counted, still latched; or, if
    /// `outcome` is an error, the page zero again for the next attempt,
    /// its slot free and its latch released as Evicted.
    fn settle(
        &self,
        id: PageId,
        slot: usize,
        outcome: Result<(), PoolError>,
    ) -> Result<(), PoolError> {
        if let Err(e) = outcome {
            let _ = self.window.dontneed(id.0 as usize * PAGE_SIZE, PAGE_SIZE);
            self.core.slots.push_free(slot, 0);
            self.latches[id.0 as usize].unlock_exclusive_evicted();
            return Err(e);
        }
        self.core.slots.set(slot, id);
        Counters::add(&self.core.counters.reads, 1);
        Ok(())
    }

    /// Reads page `id` in for a shared or optimistic fix if its latch is
    /// still `seen` (Evicted), leaving it unlatched; does nothing if
    /// another thread got there first.
    fn load_unlatched(&self, id: PageId, latch: &Latch, seen: u64) -> Result<(), PoolError> {
        if latch.try_lock_exclusive(seen) {
            self.load(id)?;
            latch.unlock_exclusive();
        }
        Ok(())
    }
}

impl<D: BlockDevice> Frames for VmCache<D> {
    fn locate(&self, slot: usize) -> Option<(usize, Option<PageId>)> {
        let id = self.core.slots.get(slot)?;
        Some((id.0 as usize, Some(id)))
    }

    fn latch(&self, index: usize) -> &Latch {
        &self.latches[index]
    }

    fn bytes(&self, index: usize) -> &[u8] {
        let f = self.frame(PageId(index as u64));
        // SAFETY: the caller holds a latch that excludes writers; PAGE_SIZE
        // bytes at the page's address are in the window.
        unsafe { core::slice::from_raw_parts(f.data.as_ptr(), PAGE_SIZE) }
    }

    /// Releases each run of adjacent page ids, all runs in one system
    /// call where the kernel allows (`Mapping::dontneed_ranges`).
    fn release(&self, victims: &[Held]) -> Result<(), PoolError> {
        let mut sorted: Vec<PageId> = victims.iter().map(|v| v.id).collect();
        sorted.sort_unstable();
        let mut runs = Vec::new();
        let mut i = 0;
        while i < sorted.len() {
            let mut j = i + 1;
            while j < sorted.len() && sorted[j].0 == sorted[j - 1].0 + 1 {
                j += 1;
            }
            runs.push((sorted[i].0 as usize * PAGE_SIZE, (j - i) * PAGE_SIZE));
            i = j;
        }
        // On failure some runs may have been released: the pool evicts the
        // whole (clean) batch (see `Frames::release`).
        let calls = self.window.dontneed_ranges(&runs)?;
        Counters::add(&self.core.counters.dontneed_calls, calls);
        Ok(())
    }
}

// SAFETY: frames are addresses in the window (mapped for the pool's life;
// evicted pages read as zero); every write, load and eviction of a page
// happens under its exclusive latch, released with a version increment;
// try_upgrade'd latches are released by unfix_exclusive_frame.
unsafe impl<D: BlockDevice> BufferManager for VmCache<D> {
    fn fix_exclusive_frame(&self, id: PageId) -> Result<Frame<'_>, PoolError> {
        self.core.check(id)?;
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
                _ => (self.core.relax)(),
            }
        }
    }

    fn fix_shared_frame(&self, id: PageId) -> Result<Frame<'_>, PoolError> {
        self.core.check(id)?;
        let latch = &self.latches[id.0 as usize];
        loop {
            let w = latch.load();
            match state(w) {
                EVICTED => self.load_unlatched(id, latch, w)?,
                EXCLUSIVE => (self.core.relax)(),
                _ => {
                    if latch.try_lock_shared(w) {
                        return Ok(self.frame(id));
                    }
                    (self.core.relax)();
                }
            }
        }
    }

    #[inline]
    fn fix_optimistic_frame(&self, id: PageId) -> Result<(Frame<'_>, u64), PoolError> {
        self.core.check(id)?;
        let latch = &self.latches[id.0 as usize];
        loop {
            let w = latch.load();
            match state(w) {
                EVICTED => self.load_unlatched(id, latch, w)?,
                EXCLUSIVE => (self.core.relax)(),
                MARKED => {
                    latch.unmark(w);
                    return Ok((self.frame(id), w));
                }
                _ => return Ok((self.frame(id), w)),
            }
        }
    }

    #[inline]
    fn fix_optimistic_resident_frame(
        &self,
        id: PageId,
    ) -> Result<Option<(Frame<'_>, u64)>, PoolError> {
        self.core.check(id)?;
        let latch = &self.latches[id.0 as usize];
        let w = latch.load();
        match state(w) {
            EVICTED | EXCLUSIVE => Ok(None),
            MARKED => {
                latch.unmark(w);
                Ok(Some((self.frame(id), w)))
            }
            _ => Ok(Some((self.frame(id), w))),
        }
    }

    fn begin_read(&self, id: PageId) -> Result<BeginRead, PoolError> {
        self.core.check(id)?;
        let latch = &self.latches[id.0 as usize];
        let w = latch.load();
        match state(w) {
            EVICTED => {}
            EXCLUSIVE => return Ok(BeginRead::Busy),
            _ => return Ok(BeginRead::Resident),
        }
        let Some(at) = self.core.io.file_at(id) else {
            return Ok(BeginRead::Unsupported);
        };
        if !latch.try_lock_exclusive(w) {
            return Ok(BeginRead::Busy);
        }
        // The window page is zero (never touched, or released with
        // DONTNEED) and stays latched until `finish_read`: the caller's
        // read overwrites all of it.
        let slot = self.take_slot(latch)?;
        let pool = self as *const Self as usize;
        Ok(BeginRead::Started(PendingRead::new(
            id,
            at,
            self.frame(id).data,
            slot,
            pool,
        )))
    }

    fn finish_read(
        &self,
        read: PendingRead,
        result: Result<(), DeviceError>,
    ) -> Result<(), PoolError> {
        let id = read.id;
        let Some(slot) = read.slot_in(self as *const Self as usize) else {
            return Err(PoolError::Setup {
                what: "finishing a read another pool started",
                errno: 0,
            });
        };
        let outcome = read_outcome(id, result, self.page_mut(id));
        self.settle(id, slot, outcome)?;
        self.latches[id.0 as usize].unlock_exclusive();
        Ok(())
    }

    fn fix_overwrite_frame(&self, id: PageId) -> Result<Frame<'_>, PoolError> {
        self.core.check(id)?;
        let latch = &self.latches[id.0 as usize];
        loop {
            let w = latch.load();
            match state(w) {
                UNLOCKED | MARKED => {
                    if latch.try_lock_exclusive(w) {
                        overwritten(self.page_mut(id), id);
                        return Ok(self.frame(id));
                    }
                }
                EVICTED => {
                    if latch.try_lock_exclusive(w) {
                        let slot = self.take_slot(latch)?;
                        // Not resident: nothing is read; the window page
                        // is zero (never touched, or released with
                        // DONTNEED) and gets its id.
                        overwritten(self.page_mut(id), id);
                        self.core.slots.set(slot, id);
                        return Ok(self.frame(id));
                    }
                }
                _ => (self.core.relax)(),
            }
        }
    }

    forward_to_core!();

    fn allocate_frame(&self) -> Result<Frame<'_>, PoolError> {
        let id = self.core.allocate_id()?;
        let latch = &self.latches[id.0 as usize];
        let w = latch.load();
        // A new id: Evicted and unknown to everyone else.
        if !latch.try_lock_exclusive(w) {
            return Err(PoolError::Setup {
                what: "a newly allocated page id is latched",
                errno: 0,
            });
        }
        let slot = self.take_slot(latch)?;
        // Never written: the window page is still zero.
        self.core.slots.set(slot, id);
        self.core.allocated(id.0 as usize);
        Ok(self.frame(id))
    }
}
