//! Tabby: a buffer pool with a fixed virtual address per page id whose
//! eviction sends no TLB shootdown (the guest pool of the Libdbos paper,
//! Zhou et al., SIGMOD 2025), on any libdbos [`Platform`]: the guest's own
//! page tables, or a process's `ProcessPlatform` (how its host tests run).
//!
//! It owns one window with page `id` at `base + id * 4096` for every page
//! of the device, one versioned [`Latch`] per page id, `capacity` frames
//! and one read-only *blank* frame, and shares the resident set, clock,
//! write-back and eviction with the process pools (`PoolCore` in
//! `pool/resident.rs`).
//!
//! # Invariants
//!
//! 1. **Frames live as long as the pool.** The `capacity` frames are
//!    allocated once at creation and freed only when the pool drops (after
//!    its window is released, [`Platform::release`], which flushes every
//!    CPU's stale translations of them); they are never zeroed on eviction.
//!    **A page once mapped stays mapped** while the pool lives (its entry
//!    is only ever re-pointed: to a frame on a load, to the blank frame on
//!    an `InvalidateAll` eviction, never cleared), and no address of the
//!    window is read before its page's first load (every fix loads an
//!    Evicted page before it hands the page out), so any address a reader
//!    can hold is readable at any time, whatever an optimistic reader races
//!    with. Where the platform bounds the number of mappings
//!    ([`bounded_mappings`](pf::Capabilities::bounded_mappings): the
//!    process), every page is mapped (to the blank frame, read-only) at
//!    creation, which turns the limit into an error at creation: a remap
//!    never adds a mapping later. Elsewhere (the guest) pages are mapped
//!    by their first load, and creation maps only the first page of each
//!    2 MiB, which makes the window's page tables exist: one entry per 512
//!    pages, and a load never needs memory for a table.
//! 2. **A frame's header names what it holds.** Bytes 16..24 of a frame (the
//!    page header's id, [`page`](crate::page)) are the id of the page the
//!    frame holds, or [`INVALID`] (`u64::MAX`): set to `INVALID` for every
//!    frame at creation (through `frame_ptr`, so garbage never looks like a
//!    page) and for the blank frame; to the page's id when a page is read
//!    in (the verified disk image carries it) or allocated; back to
//!    `INVALID` when the page is evicted, before its latch is released.
//! 3. **A page is in at most one frame**, and only while its latch is
//!    resident (Unlocked, Marked, Shared or Exclusive after a load).
//! 4. **A page's entry is written only under its exclusive latch** (loads,
//!    and evictions in `InvalidateAll` mode). So while page P's latch is
//!    resident with version v, P's entry points at P's frame: the page
//!    tables are always right for resident pages. Only a CPU's TLB may be
//!    stale: it may still hold the translation of P to a frame P was
//!    evicted from (and that now holds another page, or nothing).
//! 5. **Every access checks the header through the page's own address**
//!    ([`Tabby::verify_translation`]), after taking or reading the latch. A
//!    mismatch means this CPU's TLB is stale (the table is right, by 4): the
//!    CPU invalidates its own entry for the page (one `invlpg`, no entry
//!    written) and reads again. With the latch held, a second mismatch is a
//!    bug ([`PoolError::StaleTranslation`]); for an optimistic read it means
//!    the latch changed since it was read: the read restarts.
//!
//! # Eviction
//!
//! [`Eviction::Tabby`]: the clock latches victims exclusively, writes the
//! dirty ones back under the write-ahead rule, resets each victim frame's
//! header to `INVALID` (through the frame's own pointer, not the window),
//! releases the latch as Evicted (a new version) and puts the frame on the
//! evicting CPU's free list. The page's entry still points at the old
//! frame: **no entry written, no `invlpg`, no IPI**. A load of page P (its
//! latch held exclusively) takes a frame, reads P into it through the
//! frame's pointer (the bounce path, which verifies P's identity), points
//! P's entry at it with [`Platform::remap`] (one entry written, one local
//! `invlpg`), and releases the latch.
//!
//! [`Eviction::InvalidateAll`], the classic way, for side-by-side
//! comparison: eviction points the victim's entry at the blank frame
//! (`remap`) and calls [`Platform::invalidate_all`] for it (an IPI to every
//! other CPU) before the frame is reused, so no CPU can hold a stale
//! translation and loads need no repair. The code is otherwise the same.
//!
//! # Why the repair needs no lock on the entry
//!
//! The reference design locks the page-table entry (a software bit set by a
//! compare-and-swap) around its repair, because there the repairing CPU may
//! also *write* the entry (load the page). Here the entry is written only by
//! the holder of the page's exclusive latch (invariant 4), and the repair
//! writes nothing: it drops this CPU's cached translation, and the next
//! access walks the tables, which the latch already protects. A read of the
//! entry under a shared or exclusive latch, or between an optimistic read's
//! two latch loads, sees the entry of the latch's current version. So the
//! repair is one `invlpg` and no atomic read-modify-write on a shared cache
//! line, and it never waits for another CPU.
//!
//! # Why a validated optimistic read never returns another page's bytes
//!
//! A reader of page P loads the latch (resident, version v) at t0, checks
//! the header through P's address at t1 (it says P), reads, and validates at
//! t2 (version still v, not Exclusive or Evicted). Every eviction and every
//! load of P releases P's latch with a new version, so P was resident in one
//! frame F throughout [t0, t2] and P's entry pointed at F (invariant 4). The
//! translation the reader used at t1 led to a frame whose header said P at
//! t1; by invariants 2 and 3 the only frame whose header says P during
//! [t0, t2] is F (an evicted frame's header was reset before P's latch was
//! released; a frame P is loaded into gets P's id under P's exclusive
//! latch, i.e. outside [t0, t2]). So the translation led to F. It cannot
//! change to another frame before t2: a CPU's translation changes only by
//! dropping the cached entry and walking the tables again, which yields F.
//! So every byte read between t1 and t2 came from F while F held P. The
//! exclusive and shared paths rely on the same argument with the latch
//! held, so a writer with a stale translation never writes P's old frame:
//! it checks the header under the latch before handing out the page, and
//! repairs first if it must. An optimistic read upgraded to an exclusive fix
//! ([`Latch::try_upgrade`], same version) keeps the translation its header
//! check validated.
//!
//! Where staleness can be forced for tests: [`Tabby::verify_translation`]
//! is the one function that checks and repairs; a test that makes one CPU's
//! translation of page P point at a frame holding another page exercises it
//! through any fix of P (the guest program `examples/src/bin/tabby.rs`,
//! mode `stale`, does it with libdbos's deferred page-table view).
//! `TabbyConfig::repair` (feature `test-knobs`) turns the check off (for
//! tests that must show they fail without it).

use super::latch::{state, EVICTED, EXCLUSIVE, MARKED};
use super::resident::{forward_to_core, CoreConfig, Frames, Held, PoolConfig, PoolCore};
use super::{overwritten, BufferManager, Counters, Frame, Latch, PoolError, PoolStats};
use crate::device::BlockDevice;
use crate::page::ID_OFFSET;
use crate::{PageId, PAGE_SIZE};
use alloc::vec::Vec;
use core::ptr::NonNull;
use core::sync::atomic::{AtomicU32, Ordering};
use dbos_nvme::DmaAddr;
use libdbos::platform::{self as pf, PageSize, Platform, Protection, Window, LARGE_PAGE_SIZE};

/// The header id of a frame that holds no page.
pub const INVALID: u64 = u64::MAX;

/// How Tabby evicts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Eviction {
    /// Leave the entry and every TLB as they are; accesses repair their own
    /// CPU's stale translation (no IPI, no entry written, no `invlpg`).
    Tabby,
    /// Point the entry at the blank frame and invalidate the page on every
    /// CPU ([`Platform::invalidate_all`]) for each evicted page.
    InvalidateAll,
}

/// How a Tabby pool is set up: what every pool is set up with, the
/// eviction mode, and (feature `test-knobs`) the repair switch.
#[derive(Clone)]
pub struct TabbyConfig {
    /// Frames, pages, the write-ahead hook, ... as for every pool.
    pub pool: PoolConfig,
    /// How pages are evicted.
    pub eviction: Eviction,
    /// Check every access's header through the page's address and repair a
    /// stale translation (invariant 5). **Exists only so that tests can show
    /// they fail without it** (feature `test-knobs`): with `false` the pool
    /// trusts whatever translation the CPU holds, which after a `Tabby`
    /// eviction may lead to another page's frame.
    #[cfg(feature = "test-knobs")]
    pub repair: bool,
}

impl TabbyConfig {
    /// `capacity` frames, batches of 8, no log, spinning while waiting,
    /// Tabby eviction with repair.
    pub fn new(capacity: usize) -> TabbyConfig {
        TabbyConfig::of(PoolConfig {
            evict_batch: 8,
            relax: core::hint::spin_loop,
            ..PoolConfig::new(capacity)
        })
    }

    /// A pool set up as `pool` says, with Tabby eviction and repair.
    pub fn of(pool: PoolConfig) -> TabbyConfig {
        TabbyConfig {
            pool,
            eviction: Eviction::Tabby,
            #[cfg(feature = "test-knobs")]
            repair: true,
        }
    }

    fn core(&self, free_lists: usize) -> CoreConfig<'_> {
        CoreConfig {
            free_lists,
            ..self.pool.core()
        }
    }
}

/// The Tabby pool over platform `P` and device `D`.
pub struct Tabby<P: Platform + 'static, D> {
    platform: &'static P,
    window: Window,
    /// Pages mapped at creation (all on a platform with bounded mappings,
    /// else the first of every 2 MiB), for the check at drop.
    pages: usize,
    /// One latch per page id (outlives frames: versions never reset).
    latches: Vec<Latch>,
    /// Per page id: the slot of its frame, valid while the page is resident
    /// (written under the page's exclusive latch).
    owner: Vec<AtomicU32>,
    /// Slot -> frame, fixed at creation.
    frames: Vec<pf::Frame>,
    /// Read-only, header `INVALID`, otherwise zero: every page's entry
    /// before its first load (and after an `InvalidateAll` eviction).
    blank: pf::Frame,
    eviction: Eviction,
    #[cfg(feature = "test-knobs")]
    repair: bool,
    core: PoolCore<D>,
}

/// A platform error during setup, as a pool error.
fn platform_err(what: &'static str) -> impl Fn(pf::Error) -> PoolError {
    move |error| PoolError::Platform { what, error }
}

impl<P: Platform + 'static, D: BlockDevice> Tabby<P, D> {
    /// A pool over `devs` (queues to one device; one per CPU that may miss
    /// at once) on `platform`. Every failure is here, never later: a zero
    /// capacity, more frames than the platform has, a window or a mapping
    /// the platform refuses (e.g. the process platform's mapping limit).
    pub fn new(
        platform: &'static P,
        devs: Vec<D>,
        cfg: TabbyConfig,
    ) -> Result<Tabby<P, D>, PoolError> {
        let lists = platform.cpu_count().max(1);
        let io = PoolCore::queues(devs, &cfg.core(lists))?;
        let pages = io.device_pages() as usize;
        if cfg.pool.capacity == 0 || cfg.pool.allocated > pages as u64 {
            return Err(PoolError::Setup {
                what: "tabby: capacity is zero or more pages allocated than the device holds",
                errno: 0,
            });
        }
        if cfg.pool.capacity as u64 >= platform.free_frames()
            || cfg.pool.capacity > u32::MAX as usize
        {
            return Err(PoolError::Setup {
                what: "tabby: more frames (plus the blank one) than the platform has free",
                errno: 0,
            });
        }
        let core = PoolCore::new(io, &cfg.core(lists), pages, "tabby")?;
        let window = platform
            .reserve((pages.max(1) * PAGE_SIZE) as u64)
            .map_err(platform_err("tabby: reserving the window"))?;
        let blank = match platform.alloc_frame(PageSize::Small) {
            Ok(f) => f,
            Err(e) => {
                // SAFETY: the window was just reserved and nothing uses it.
                if let Err(e) = unsafe { platform.release(window, &mut |_, _, _| {}) } {
                    log::error!("tabby: releasing the window of a failed pool: {e}");
                }
                return Err(platform_err("tabby: allocating the blank frame")(e));
            }
        };
        let mut pool = Tabby {
            platform,
            window,
            pages: 0,
            latches: (0..pages).map(|_| Latch::new()).collect(),
            owner: (0..pages).map(|_| AtomicU32::new(0)).collect(),
            frames: Vec::with_capacity(cfg.pool.capacity),
            blank,
            eviction: cfg.eviction,
            #[cfg(feature = "test-knobs")]
            repair: cfg.repair,
            core,
        };
        // The blank frame: zero, header INVALID. From here on, dropping
        // `pool` frees what was set up so far.
        // SAFETY: the blank frame is allocated and nobody else uses it yet.
        unsafe {
            core::ptr::write_bytes(platform.frame_ptr(pool.blank), 0, PAGE_SIZE);
        }
        pool.set_header(pool.blank, INVALID);
        for _ in 0..cfg.pool.capacity {
            // DMA memory: in the guest, declared to the host, so that the
            // reads and write-backs of the frame use fixed buffers.
            let f = platform
                .alloc_dma_frame()
                .map_err(platform_err("tabby: allocating a frame"))?;
            pool.frames.push(f);
            // Garbage never looks like a page (invariant 2).
            pool.set_header(f, INVALID);
        }
        // On a platform that bounds mappings, every page mapped from now
        // on, so that the limit is met here (invariant 1). Elsewhere each
        // page is mapped by its first load, and only the first page of each
        // 2 MiB of the window is mapped now: that makes the page tables
        // below the window exist (so a load never needs memory for one,
        // and runs out of nothing midway) at one entry per 512 pages.
        let step = if platform.capabilities().bounded_mappings {
            1
        } else {
            (LARGE_PAGE_SIZE / PAGE_SIZE as u64) as usize
        };
        for id in (0..pages).step_by(step) {
            platform
                .map(
                    window.page(id as u64),
                    pool.blank,
                    PageSize::Small,
                    Protection::ReadOnly,
                )
                .map_err(platform_err("tabby: mapping the window to the blank frame"))?;
            pool.pages += 1;
        }
        log::debug!(
            "tabby: window of {pages} pages at {:#x}, {} frames, {:?}",
            window.base,
            cfg.pool.capacity,
            cfg.eviction,
        );
        Ok(pool)
    }

    /// The window (for tests and reports).
    pub fn window(&self) -> Window {
        self.window
    }

    /// The address of page `id`.
    pub fn page_addr(&self, id: PageId) -> u64 {
        self.window.page(id.0)
    }

    /// The frame in slot `slot` (for tests: `0..capacity`).
    pub fn frame(&self, slot: usize) -> pf::Frame {
        self.frames[slot]
    }

    /// The blank frame every page maps before its first load.
    pub fn blank_frame(&self) -> pf::Frame {
        self.blank
    }

    /// The frame page `id` is resident in, if it is (a racy snapshot).
    pub fn resident_frame(&self, id: PageId) -> Option<pf::Frame> {
        let slot = self.owner.get(id.0 as usize)?.load(Ordering::Acquire) as usize;
        (self.core.slots.get(slot) == Some(id)).then(|| self.frames[slot])
    }

    /// The header id of `frame`, read through the platform's pointer to it.
    pub fn frame_header(&self, frame: pf::Frame) -> u64 {
        // SAFETY: the frame is allocated (one of ours); the id field is an
        // aligned u64 inside it; a racy read is fine (volatile, any value).
        unsafe { read_id(self.platform.frame_ptr(frame)) }
    }

    /// Pages resident now.
    pub fn resident(&self) -> usize {
        self.core.capacity - self.core.slots.free_count()
    }

    fn set_header(&self, frame: pf::Frame, id: u64) {
        // SAFETY: the frame is allocated; the caller holds what makes it
        // the only writer (the page's exclusive latch, or creation); the id
        // field is an aligned u64 inside it.
        unsafe {
            self.platform
                .frame_ptr(frame)
                .add(ID_OFFSET)
                .cast::<u64>()
                .write_volatile(id.to_le())
        }
    }

    fn frame_of_page(&self, id: PageId) -> pf::Frame {
        self.frames[self.owner[id.0 as usize].load(Ordering::Acquire) as usize]
    }

    fn guard_frame(&self, id: PageId) -> Frame<'_> {
        Frame {
            id,
            latch: &self.latches[id.0 as usize],
            data: NonNull::new(self.page_addr(id) as *mut u8).expect("inside the window"),
            index: id.0 as usize,
        }
    }

    /// Checks that this CPU's translation of page `id` leads to a frame
    /// whose header names `id`; if not, invalidates this CPU's entry for the
    /// page (one `invlpg`, no entry written) and checks again. Returns the
    /// id found last (`id.0` if the translation is good). This is the one
    /// place where a stale translation is detected and repaired
    /// (invariant 5); with `TabbyConfig::repair` off it trusts the
    /// translation and returns `id.0` without reading.
    pub fn verify_translation(&self, id: PageId) -> u64 {
        #[cfg(feature = "test-knobs")]
        if !self.repair {
            return id.0;
        }
        let va = self.page_addr(id);
        // SAFETY: every page of the window is mapped for the pool's life
        // (invariant 1); the id field is an aligned u64 in it.
        let found = unsafe { read_id(va as *const u8) };
        if found == id.0 {
            return found;
        }
        // The tables are right for a resident page (invariant 4): only this
        // CPU's cached translation can be stale. Drop it; the latch held (or
        // the version an optimistic reader validates) protects the entry,
        // so no lock on it is needed.
        self.platform.invalidate_local(va);
        Counters::add(&self.core.counters.stale_repairs, 1);
        // SAFETY: as above.
        unsafe { read_id(va as *const u8) }
    }

    /// [`verify_translation`](Self::verify_translation) for a page whose
    /// latch the caller holds (shared or exclusive): a mismatch after the
    /// repair is a broken invariant.
    fn verify_latched(&self, id: PageId) -> Result<(), PoolError> {
        match self.verify_translation(id) {
            found if found == id.0 => Ok(()),
            found => {
                log::error!("tabby: page {} latched, its address shows {found:#x}", id.0);
                Err(PoolError::StaleTranslation { id, found })
            }
        }
    }

    /// The frame of page `id`, latched by the caller, once its translation
    /// is verified; on a broken translation the latch is released with
    /// `unlock` and the error returned.
    fn verified_frame(&self, id: PageId, unlock: fn(&Latch)) -> Result<Frame<'_>, PoolError> {
        if let Err(e) = self.verify_latched(id) {
            unlock(&self.latches[id.0 as usize]);
            return Err(e);
        }
        Ok(self.guard_frame(id))
    }

    /// Reads page `id`, whose latch the caller holds exclusively (it was
    /// Evicted), into a free frame and points its entry there. On failure
    /// the latch is released as Evicted.
    fn load(&self, id: PageId) -> Result<(), PoolError> {
        let latch = &self.latches[id.0 as usize];
        let slot = self
            .core
            .take_slot(self)
            .inspect_err(|_| latch.unlock_exclusive_evicted())?;
        let frame = self.frames[slot];
        // SAFETY: the frame is ours and free (its slot came off a free
        // list): nobody writes it; readers with stale translations only
        // read, and fail their header check or validation.
        let dest =
            unsafe { core::slice::from_raw_parts_mut(self.platform.frame_ptr(frame), PAGE_SIZE) };
        // The verified image carries the page id at 16..24 (invariant 2).
        // Straight into the frame where the device reaches it (the guest),
        // else through the queue's bounce buffer.
        let read = match self.platform.frame_dma_addr(frame) {
            // SAFETY: `dest` is the frame at that device address, free and
            // ours until `install` (see above).
            Some(addr) => unsafe { self.core.io.read_page_direct(id, DmaAddr(addr), dest) }
                .inspect(|_| Counters::add(&self.core.counters.direct_reads, 1)),
            None => self.core.io.read_page(id, dest),
        };
        if let Err(e) = read {
            self.set_header(frame, INVALID);
            self.core.slots.push_free(slot, self.platform.cpu_id());
            latch.unlock_exclusive_evicted();
            return Err(e);
        }
        self.install(id, slot)
            .inspect_err(|_| latch.unlock_exclusive_evicted())?;
        Counters::add(&self.core.counters.reads, 1);
        Ok(())
    }

    /// Makes `slot` (whose frame holds page `id`, latched exclusively) the
    /// page's frame: records it and points the page's entry at it (one
    /// entry written, one local `invlpg`; invariant 4).
    fn install(&self, id: PageId, slot: usize) -> Result<(), PoolError> {
        let frame = self.frames[slot];
        self.owner[id.0 as usize].store(slot as u32, Ordering::Release);
        if let Err(error) = self.platform.remap(
            self.page_addr(id),
            frame,
            PageSize::Small,
            Protection::ReadWrite,
        ) {
            self.set_header(frame, INVALID);
            self.core.slots.push_free(slot, self.platform.cpu_id());
            return Err(PoolError::Platform {
                what: "tabby: pointing a page at its frame",
                error,
            });
        }
        Counters::add(&self.core.counters.remaps, 1);
        self.core.slots.set(slot, id);
        Ok(())
    }

    /// Reads page `id` in for a shared or optimistic fix if its latch is
    /// still `seen` (Evicted), leaving it unlatched; does nothing if another
    /// CPU got there first.
    fn load_unlatched(&self, id: PageId, latch: &Latch, seen: u64) -> Result<(), PoolError> {
        if latch.try_lock_exclusive(seen) {
            self.load(id)?;
            latch.unlock_exclusive();
        }
        Ok(())
    }
}

/// The page id in the header at `p`.
///
/// # Safety
/// `p` points to a readable 4 KiB page (racy reads allowed).
unsafe fn read_id(p: *const u8) -> u64 {
    // SAFETY: forwarded; bytes 16..24 are inside the page, 8-aligned (pages
    // are 4 KiB aligned), and volatile because writers race with us.
    u64::from_le(unsafe { p.add(ID_OFFSET).cast::<u64>().read_volatile() })
}

impl<P: Platform + 'static, D> Drop for Tabby<P, D> {
    /// Gives the window back ([`Platform::release`]: every page mapped at
    /// creation goes with it, and every CPU drops its translations, stale
    /// ones from lazy eviction included) and then frees every frame.
    fn drop(&mut self) {
        // The release reports each page still mapped (to the blank frame or
        // a pool frame: all of them if mapped at creation, else those ever
        // loaded); the frames are ours and freed below from our own list,
        // once each.
        // SAFETY: the pool is being dropped, so nothing reads or maps its
        // window any more (readers borrow the pool), and its tables are
        // linked from nowhere else.
        let released = unsafe { self.platform.release(self.window, &mut |_, _, _| {}) };
        match released {
            Ok(r) if r.pages < self.pages as u64 => log::warn!(
                "tabby: {} pages were still mapped on drop, {} expected",
                r.pages,
                self.pages
            ),
            Ok(_) => {}
            Err(e) => {
                // The window stays reserved, and its pages map our frames:
                // keep the frames (leaked) rather than free them mapped.
                log::error!("tabby: releasing the window on drop: {e}");
                return;
            }
        }
        for &f in &self.frames {
            // SAFETY: allocated by us with alloc_dma_frame; every page
            // mapping it went with the window, flushed from every CPU, and
            // no I/O is in flight (the pool is being dropped).
            unsafe { self.platform.free_dma_frame(f) };
        }
        // SAFETY: allocated by us with this size; unmapped as above.
        unsafe { self.platform.free_frame(self.blank, PageSize::Small) };
    }
}

impl<P: Platform + 'static, D: BlockDevice> Frames for Tabby<P, D> {
    fn locate(&self, slot: usize) -> Option<(usize, Option<PageId>)> {
        let id = self.core.slots.get(slot)?;
        Some((id.0 as usize, Some(id)))
    }

    fn latch(&self, index: usize) -> &Latch {
        &self.latches[index]
    }

    /// Through the frame's own pointer, not the window: the evicting CPU may
    /// hold a stale translation of the page.
    fn bytes(&self, index: usize) -> &[u8] {
        let f = self.frame_of_page(PageId(index as u64));
        // SAFETY: the caller holds the page's latch, which excludes writers
        // and keeps the page in this frame; PAGE_SIZE bytes of an allocated
        // frame.
        unsafe { core::slice::from_raw_parts(self.platform.frame_ptr(f), PAGE_SIZE) }
    }

    /// Resets each victim frame's header (invariant 2); in `InvalidateAll`
    /// mode first points the entry at the blank frame and shoots the page
    /// down on every CPU. In `Tabby` mode nothing else: the entry keeps
    /// pointing at the old frame, no TLB is touched.
    fn release(&self, victims: &[Held]) -> Result<(), PoolError> {
        let mut result = Ok(());
        for v in victims {
            let frame = self.frames[v.slot];
            if self.eviction == Eviction::InvalidateAll {
                let va = self.page_addr(v.id);
                match self
                    .platform
                    .remap(va, self.blank, PageSize::Small, Protection::ReadOnly)
                {
                    Ok(_) => Counters::add(&self.core.counters.remaps, 1),
                    // The entry still points at the old frame: the next load
                    // of the page rewrites it; the shootdown below still
                    // drops every cached copy.
                    Err(error) => {
                        result = Err(PoolError::Platform {
                            what: "tabby: pointing an evicted page at the blank frame",
                            error,
                        })
                    }
                }
                self.platform.invalidate_all(va);
                Counters::add(&self.core.counters.invalidate_alls, 1);
            }
            self.set_header(frame, INVALID);
        }
        result
    }

    fn cpu(&self) -> usize {
        self.platform.cpu_id()
    }
}

// SAFETY: frames are window addresses, mapped for the pool's life
// (invariant 1); every load, write and eviction of a page happens under its
// exclusive latch, released with a version increment; a frame handed out
// holds the page, checked through the page's own address under the latch
// (invariant 5) or, for optimistic reads, validated by the version (module
// docs); try_upgrade'd latches are released by unfix_exclusive_frame.
unsafe impl<P: Platform + 'static, D: BlockDevice> BufferManager for Tabby<P, D> {
    fn fix_exclusive_frame(&self, id: PageId) -> Result<Frame<'_>, PoolError> {
        self.core.check(id)?;
        let latch = &self.latches[id.0 as usize];
        loop {
            let w = latch.load();
            match state(w) {
                EVICTED => {
                    if latch.try_lock_exclusive(w) {
                        // This CPU just wrote the entry and invalidated it.
                        self.load(id)?;
                        return Ok(self.guard_frame(id));
                    }
                }
                EXCLUSIVE => (self.core.relax)(),
                _ => {
                    if latch.try_lock_exclusive(w) {
                        // Before any write: the translation must lead to the
                        // page's frame.
                        return self.verified_frame(id, Latch::unlock_exclusive);
                    }
                    (self.core.relax)();
                }
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
                        return self.verified_frame(id, Latch::unlock_shared);
                    }
                    (self.core.relax)();
                }
            }
        }
    }

    fn fix_optimistic_frame(&self, id: PageId) -> Result<(Frame<'_>, u64), PoolError> {
        self.core.check(id)?;
        let latch = &self.latches[id.0 as usize];
        loop {
            let w = latch.load();
            match state(w) {
                EVICTED => self.load_unlatched(id, latch, w)?,
                EXCLUSIVE => (self.core.relax)(),
                s => {
                    // Header check after the latch load (module docs); a
                    // mismatch that survives the repair means the latch
                    // moved on: start again.
                    if self.verify_translation(id) != id.0 {
                        (self.core.relax)();
                        continue;
                    }
                    if s == MARKED {
                        latch.unmark(w);
                    }
                    return Ok((self.guard_frame(id), w));
                }
            }
        }
    }

    fn fix_overwrite_frame(&self, id: PageId) -> Result<Frame<'_>, PoolError> {
        self.core.check(id)?;
        let latch = &self.latches[id.0 as usize];
        loop {
            let w = latch.load();
            match state(w) {
                EVICTED => {
                    if latch.try_lock_exclusive(w) {
                        // As `allocate_frame`, for an existing page: a free
                        // frame, nothing read, the header naming the page
                        // (invariant 2), then the entry pointed at it.
                        let slot = self
                            .core
                            .take_slot(self)
                            .inspect_err(|_| latch.unlock_exclusive_evicted())?;
                        let frame = self.frames[slot];
                        // SAFETY: a free frame of ours (see `load`).
                        let bytes = unsafe {
                            core::slice::from_raw_parts_mut(
                                self.platform.frame_ptr(frame),
                                PAGE_SIZE,
                            )
                        };
                        overwritten(bytes, id);
                        self.install(id, slot)
                            .inspect_err(|_| latch.unlock_exclusive_evicted())?;
                        return Ok(self.guard_frame(id));
                    }
                }
                EXCLUSIVE => (self.core.relax)(),
                _ => {
                    if latch.try_lock_exclusive(w) {
                        // Before any write: the translation must lead to the
                        // page's frame.
                        let f = self.verified_frame(id, Latch::unlock_exclusive)?;
                        // SAFETY: latched exclusively, translation verified:
                        // these are the page's PAGE_SIZE bytes, ours alone
                        // (optimistic readers fail validation).
                        let bytes =
                            unsafe { core::slice::from_raw_parts_mut(f.data.as_ptr(), PAGE_SIZE) };
                        overwritten(bytes, id);
                        return Ok(f);
                    }
                    (self.core.relax)();
                }
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
        let slot = self
            .core
            .take_slot(self)
            .inspect_err(|_| latch.unlock_exclusive_evicted())?;
        let frame = self.frames[slot];
        // A new page is zero, with its id in the header (invariant 2).
        // SAFETY: a free frame of ours (see `load`).
        unsafe { core::ptr::write_bytes(self.platform.frame_ptr(frame), 0, PAGE_SIZE) };
        self.set_header(frame, id.0);
        self.install(id, slot)
            .inspect_err(|_| latch.unlock_exclusive_evicted())?;
        self.core.allocated(id.0 as usize);
        Ok(self.guard_frame(id))
    }
}
