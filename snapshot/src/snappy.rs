//! Snappy: O(1) page-table snapshots of a guest heap, with copy-on-write by
//! path and epoch-based reclamation (guest only).
//!
//! This module owns a heap window, the window of its snapshot views, the
//! page-table pages and data frames it copies for snapshots, and the limbo
//! list those copies wait on until no live snapshot can reach them.
//!
//! # Layout
//!
//! The heap is a window of at most 1 GiB whose base is 1 GiB-aligned, so
//! **one level-3 entry (the heap's *top entry*) covers it**; the level-2
//! table below it (the heap's *top table*) exists from [`Snappy::new`] on.
//! Each snapshot gets a *view*: slot `i` of a window of [`MAX_SNAPSHOTS`]
//! 1 GiB-aligned gibibytes, whose level-3 entry (the view's top entry)
//! points into the same kind of subtree. A view address is `view base +
//! (heap address - heap base)`; readers read a snapshot through it
//! ([`Snapshot::as_ptr`]), from any CPU.
//!
//! # Epochs
//!
//! An *epoch* is the number of snapshots taken so far: taking a snapshot
//! increments it and the snapshot is named by the new value. Every copy
//! Snappy makes for snapshots (a page-table page or a data frame) is
//! reachable exactly from the live snapshots whose entries were re-pointed
//! at it, so it records the interval `[first, last]` of their epochs. A copy
//! is freed (a frame back to the platform, a table to the frame allocator)
//! once **no live snapshot's epoch lies in its interval**. (No snapshot
//! outside the interval can reach it: later snapshots share the heap's
//! tables, which never point at a copy; and an earlier or later live
//! snapshot that reached the shared page would have been re-pointed in the
//! same operation, see *Copy on write*.)
//!
//! # Taking a snapshot: O(1) page-table writes
//!
//! Under the lock: the view's top entry := the heap's top table, read-only
//! (1 write); the heap's top entry loses its write bit and gains [`COW`]
//! (1 write, none if it already is). Then every CPU flushes its TLB
//! (`smp::flush_all`: a CR3 reload here, one IPI per other CPU), because
//! any CPU may cache a writable translation of a heap page. **Two entries
//! written whatever the heap size**; O(CPUs) IPIs.
//!
//! # Copy on write: copy for the snapshots, never move the heap
//!
//! Invariant H (heap): *the heap's entry for a page-table page or a frame
//! that a live snapshot can reach is write-protected and [`COW`]* (a COW
//! entry whose target no snapshot reaches any more is allowed: it is
//! resolved without a copy). Taking a snapshot establishes it at the top.
//!
//! A fault in the heap (a write to a COW page, or any access to a missing
//! page) walks the heap's path top down. At each level whose heap entry is
//! COW, pointing at table `T`:
//! 1. every live snapshot whose view entry at this level points at `T` is
//!    found (views whose path above was already copied, by construction of
//!    the walk top down, reach that entry through snapshot-owned tables;
//!    several snapshots sharing one table share one entry, re-pointed once);
//! 2. if there are any, `T` is duplicated into `T'` and those view entries
//!    are re-pointed at `T'` (the snapshots keep exactly what they saw), and
//!    every present entry of `T` (the heap's, in place) is made read-only and
//!    COW, since their targets are now also reachable through `T'`; this
//!    keeps H one level down;
//! 3. the heap's entry is made writable and non-COW, **after** step 4.
//!
//! At the leaf, a COW entry pointing at frame `F`: the live snapshots whose
//! view leaf points at `F` are re-pointed at a copy `F'` (one copy for all of
//! them: they all saw `F`'s bytes, unchanged since the heap's entry became
//! COW), then the heap's entry is made writable in place. The heap's data
//! and tables never move: writers keep their frames, and a CPU that caches
//! the heap's (older, stricter) translations only takes a spurious fault,
//! resolved by an `invlpg`. Only snapshot readers' translations change.
//!
//! 4. Before any heap entry becomes writable, readers that may still cache a
//!    view translation through a re-pointed entry must drop it, or they could
//!    read the heap's next writes through `T` or `F`: if, for a re-pointed
//!    entry, the view's top entry has its accessed bit set (someone walked
//!    this view at all) and the re-pointed entry had its accessed bit set
//!    (someone used it), all CPUs flush ([`Snappy::shoot_down_readers`], one
//!    IPI per other CPU, at most one round per fault); otherwise none.
//!    This is conservative, never missing: a CPU caches a translation only
//!    after walking the entries it used, and the hardware sets their
//!    accessed bits in that walk (a locked update, Intel SDM 4.8) before the
//!    translation can be used; view top entries are written fresh (accessed
//!    clear) at take, and our compare-and-swap returns the re-pointed entry's
//!    bits as they were when it changed. Accessed bits in tables that were
//!    shared with the heap may have been set by heap accesses before the
//!    snapshot, or copied into `T'`: spurious flushes, never missing ones.
//!
//! # Why a reader never sees a later write
//!
//! A snapshot's view is read-only (its top entry has no write bit), so only
//! the heap writes frames. After take's flush, no CPU holds a writable
//! translation of a heap page that the snapshot reaches (H + the flush), so
//! a heap write to such a page faults first. The fault re-points every live
//! snapshot's entry away from the frame or table the heap is about to make
//! writable, flushes readers that may cache the old path (4), and only then
//! makes the heap entry writable. So the bytes reachable from a view never
//! change after its take. Writes concurrent with `take` (not ordered against
//! it by the caller) may or may not be in the view, as the `Snapshotter`
//! contract allows.
//!
//! # When a frame or table may be freed
//!
//! The heap's own tables and frames are never freed by Snappy (they never
//! move). A snapshot-owned copy is freed at a release, after the released
//! view's top entry was cleared and, if that view was walked (accessed bit),
//! after every CPU flushed, once no live snapshot's epoch is in its
//! interval. When every snapshot is released the limbo list is empty and
//! the frames and tables in use are exactly those before the first take.
//!
//! # Why the heap's tables stay in place (a change from the first design)
//!
//! The first design copied the *heap's* path (the heap re-pointed at fresh
//! copies, the old tables left to the snapshots) and then re-pointed
//! snapshot leaves inside those old tables. That has a hole: another CPU
//! may still hold paging-structure-cache entries for the heap's old path
//! (the upper-level entries it walked since the take), and through them it
//! would translate heap addresses via the old tables, whose leaves now lead
//! to the snapshots' copies: it would read frozen data instead of the
//! heap's newer writes, until it happens to flush. Closing it needs a
//! shootdown on every path copy that another CPU may have walked, and the
//! faulting CPU's own walk sets the accessed bits that would tell. Copying
//! for the snapshots at every level instead (the heap keeps its tables and
//! frames; only views are re-pointed) leaves the heap's translations valid
//! everywhere (they only gain write permission), so heap CPUs never need an
//! IPI, and the one flush left is for snapshot readers, decided by the
//! view's accessed bits. The price: the heap's table is write-protected in
//! place (one write per entry not yet protected) in addition to the copy,
//! about twice the page-table writes of a heap-side copy at fault time.
//!
//! # Locking and TLB rules
//!
//! One [`ServingLock`] per instance serialises take, release and fault
//! resolution; page-table edits are made inside `paging::with_tables`
//! (the guest's structural lock), never while waiting for a shootdown.
//! Every entry written is counted (`paging::count_writes`).

use crate::guest::{check_len, paging, ServingLock, SnapError, GIB, MAX_SNAPSHOTS};
use crate::{Snapshotter, PAGE_SIZE};
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use libdbos::pagetable::{walker, Entry, Level, TableMemory, COW, F};
use libdbos::platform::{Fault, FaultResolution, Frame, PageSize, Platform, Window};

const PAGE: u64 = PAGE_SIZE as u64;

/// The walker over the guest's live tables.
type Walker = walker::PageTables<
    'static,
    libdbos::pagetable::OffsetMemory<'static, libdbos::frames::ZeroedFrames>,
>;

/// A live snapshot: its view slot and epoch. Dropping it releases it.
pub struct Snapshot {
    owner: Arc<Inner>,
    slot: usize,
    epoch: u64,
    released: bool,
}

impl Snapshot {
    /// The first byte of its view: the heap as it was at the take, read-only,
    /// readable from any CPU (a page that was not mapped in the heap at the
    /// take is not mapped in the view: reading it faults; [`Snappy::read`]
    /// reads it as zeroes).
    pub fn as_ptr(&self) -> *const u8 {
        self.owner.view_base(self.slot) as *const u8
    }

    /// Its epoch (1 for the first snapshot taken).
    pub fn epoch(&self) -> u64 {
        self.epoch
    }
}

impl Drop for Snapshot {
    fn drop(&mut self) {
        if !self.released {
            if let Err(e) = self.owner.release(self.slot, self.epoch) {
                log::error!("releasing snapshot {} on drop: {e}", self.epoch);
            }
        }
    }
}

/// Counted events of one Snappy instance (page-table writes, flushes and
/// IPIs are counted by the platform as well; these are Snappy's own).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SnappyStats {
    /// Faults resolved by copying something (a table or a page) for a
    /// snapshot, or by upgrading a COW entry.
    pub cow_faults: u64,
    /// Page-table pages duplicated for snapshots.
    pub tables_copied: u64,
    /// Data pages copied for snapshots.
    pub pages_copied: u64,
    /// Bytes of data copied (4 KiB per page).
    pub bytes_copied: u64,
    /// Fault-time reader flush rounds ([`Snappy::shoot_down_readers`]).
    pub reader_shootdowns: u64,
    /// Page-table entries written by the last `take`.
    pub last_take_writes: u64,
    /// Copies waiting on the limbo list: tables and frames.
    pub limbo_tables: u64,
    pub limbo_frames: u64,
    /// Copies freed by reclamation so far.
    pub freed: u64,
}

/// A snapshot-owned copy and the epochs of the snapshots that reach it.
#[derive(Clone, Copy, Debug)]
struct Limbo {
    phys: u64,
    table: bool,
    first: u64,
    last: u64,
}

struct State {
    /// Snapshots taken so far (the last snapshot's epoch).
    epoch: u64,
    /// The epoch of the live snapshot in each view slot.
    slots: [Option<u64>; MAX_SNAPSHOTS],
    limbo: Vec<Limbo>,
}

impl State {
    fn live_in(&self, first: u64, last: u64) -> bool {
        self.slots
            .iter()
            .flatten()
            .any(|&e| e >= first && e <= last)
    }
}

struct Inner {
    /// The heap window (its length rounded up to 2 MiB by the platform).
    heap: Window,
    /// The heap's length as asked for: the part that is resolved and read.
    len: u64,
    views: Window,
    state: ServingLock<State>,
    cow_faults: AtomicU64,
    tables_copied: AtomicU64,
    pages_copied: AtomicU64,
    reader_shootdowns: AtomicU64,
    last_take_writes: AtomicU64,
    freed: AtomicU64,
    /// Test switch: whether fault-time reader flushes are sent.
    reader_flush: AtomicBool,
}

/// A view entry that must be re-pointed, and who reaches it.
#[derive(Clone, Copy)]
struct Site {
    /// A view address whose entry at the level is this one.
    va: u64,
    slot: *const AtomicU64,
    first: u64,
    last: u64,
    /// Whether some snapshot reaching it had its view's top entry accessed.
    top_accessed: bool,
}

/// The heap entries a fault makes writable after the reader flush.
#[derive(Default)]
struct Plan {
    flush: bool,
    upgrade: [Option<Level>; 3],
    copied: bool,
}

/// Snappy over one heap window. Dropping it (and every [`Snapshot`] it
/// took, which keep its state alive) gives both windows back and frees
/// every frame and page-table page it used: the frame allocator's count
/// returns to what it was before [`Snappy::new`].
pub struct Snappy {
    inner: Arc<Inner>,
}

impl Snappy {
    /// A heap of `len` bytes (a multiple of 4 KiB, at most 1 GiB), nothing
    /// mapped yet (a first access maps a zeroed page), with its top table and
    /// the tables above the view slots created (counted).
    pub fn new(len: u64) -> Result<Snappy, SnapError> {
        check_len(len)?;
        let p = libdbos::platform();
        let heap = p.reserve_aligned(len, GIB)?;
        let views = p.reserve_aligned(MAX_SNAPSHOTS as u64 * GIB, GIB)?;
        let writes = libdbos::paging::with_tables(|t| -> Result<u64, SnapError> {
            let w = t.walker();
            let top = w
                .memory()
                .alloc_table()
                .ok_or(SnapError::Platform(libdbos::platform::Error::OutOfFrames))?;
            let mut writes = w
                .share(heap.base, Level::L3, top, F::WRITABLE)
                .map_err(paging(heap.base))?
                .writes;
            for i in 0..MAX_SNAPSHOTS as u64 {
                writes += w
                    .prepare(views.base + i * GIB, Level::L3)
                    .map_err(paging(views.base))?;
            }
            Ok(writes)
        });
        let writes = writes?;
        libdbos::paging::count_writes(writes);
        let inner = Arc::new(Inner {
            heap,
            len,
            views,
            state: ServingLock::new(State {
                epoch: 0,
                slots: [None; MAX_SNAPSHOTS],
                limbo: Vec::new(),
            }),
            cow_faults: AtomicU64::new(0),
            tables_copied: AtomicU64::new(0),
            pages_copied: AtomicU64::new(0),
            reader_shootdowns: AtomicU64::new(0),
            last_take_writes: AtomicU64::new(0),
            freed: AtomicU64::new(0),
            reader_flush: AtomicBool::new(true),
        });
        // The context is the Inner's address: it lives while this Snappy
        // (which holds an Arc) does, and the hook is removed in Drop first.
        p.set_window_fault_hook(&heap, Some(on_fault), Arc::as_ptr(&inner) as usize)?;
        Ok(Snappy { inner })
    }

    /// The heap window (its length rounded up to 2 MiB; the heap is the
    /// first [`Snapshotter::heap_len`] bytes).
    pub fn heap_window(&self) -> Window {
        self.inner.heap
    }

    /// Maps every missing page of `[offset, offset + len)` of the heap (as a
    /// first access would, without faulting). Counted like faults' writes.
    pub fn populate(&self, offset: u64, len: u64) -> Result<(), SnapError> {
        let heap = self.inner.heap;
        if offset.checked_add(len).is_none_or(|e| e > self.inner.len) {
            return Err(SnapError::OutOfRange { offset, len });
        }
        let mut page = offset & !(PAGE - 1);
        while page < offset + len {
            self.inner.resolve(heap.base + page)?;
            page += PAGE;
        }
        Ok(())
    }

    /// Fails unless `snap` was taken by this instance: slots and epochs are
    /// per instance, so another's snapshot would name one of ours.
    fn check_owner(&self, snap: &Snapshot) -> Result<(), SnapError> {
        if Arc::ptr_eq(&snap.owner, &self.inner) {
            Ok(())
        } else {
            Err(SnapError::ForeignSnapshot)
        }
    }

    /// Takes a snapshot: two page-table writes and a TLB flush on every CPU.
    pub fn take_snapshot(&self) -> Result<Snapshot, SnapError> {
        let (slot, epoch) = self.inner.take()?;
        Ok(Snapshot {
            owner: self.inner.clone(),
            slot,
            epoch,
            released: false,
        })
    }

    /// Releases a snapshot and frees whatever only it reached. A snapshot
    /// of another `Snappy` is refused ([`SnapError::ForeignSnapshot`]) and,
    /// dropped here, released by its own instance.
    pub fn release_snapshot(&self, mut snap: Snapshot) -> Result<(), SnapError> {
        self.check_owner(&snap)?;
        snap.released = true;
        self.inner.release(snap.slot, snap.epoch)
    }

    pub fn stats(&self) -> SnappyStats {
        let i = &self.inner;
        let (limbo_tables, limbo_frames) = i.state.with(|st| {
            let t = st.limbo.iter().filter(|l| l.table).count() as u64;
            (t, st.limbo.len() as u64 - t)
        });
        let pages = i.pages_copied.load(Ordering::Relaxed);
        SnappyStats {
            cow_faults: i.cow_faults.load(Ordering::Relaxed),
            tables_copied: i.tables_copied.load(Ordering::Relaxed),
            pages_copied: pages,
            bytes_copied: pages * PAGE,
            reader_shootdowns: i.reader_shootdowns.load(Ordering::Relaxed),
            last_take_writes: i.last_take_writes.load(Ordering::Relaxed),
            limbo_tables,
            limbo_frames,
            freed: i.freed.load(Ordering::Relaxed),
        }
    }

    /// Test switch: with `false`, fault-time reader flushes are skipped (the
    /// one place Snappy invalidates readers' translations,
    /// [`Snappy::shoot_down_readers`]); a reader test that forces stale
    /// translations must then fail. Default `true`.
    pub fn set_reader_flush(&self, on: bool) {
        self.inner.reader_flush.store(on, Ordering::Relaxed);
    }

    /// Flushes every CPU's translations of snapshot views (step 4 of the
    /// module's copy on write), as a fault does when a reader may cache one.
    pub fn shoot_down_readers(&self) {
        self.inner.shoot_down_readers();
    }
}

impl Drop for Snappy {
    fn drop(&mut self) {
        // Before the Inner can go away with the last Arc.
        if let Err(e) = libdbos::platform().set_window_fault_hook(&self.inner.heap, None, 0) {
            log::error!("removing Snappy's fault hook: {e}");
        }
    }
}

impl Drop for Inner {
    /// Runs when the Snappy and every snapshot are gone (each holds an
    /// Arc): gives both windows back and frees every frame and table Snappy
    /// owns. What each release finds: the views window has no entry left
    /// (every snapshot's release cleared its top entry), the heap window
    /// holds the heap's tables and frames, now Snappy's alone.
    fn drop(&mut self) {
        // Every slot is empty (no snapshot is left), so nothing in limbo is
        // reachable: all of it is freed.
        self.state.with(|st| self.reclaim(st));
        let p = libdbos::platform();
        let mut frames = Vec::new();
        for window in [self.views, self.heap] {
            // SAFETY: nothing can access either window: the Snappy (the
            // only way to the heap) and every snapshot (the only readers of
            // the views) are gone, and the heap's hook was removed with the
            // Snappy. No table of either window is linked from outside: the
            // views' top entries, the only links to the heap's tables, were
            // cleared at each snapshot's release.
            let released =
                unsafe { p.release(window, &mut |_, size, u| frames.push((u.frame, size))) };
            if let Err(e) = released {
                log::error!("snappy: releasing window {:#x}: {e}", window.base);
            }
        }
        for (frame, size) in frames {
            // SAFETY: a heap page's frame, allocated by `unshare_path` with
            // this size; its only mapping (the heap's: snapshots map copies,
            // all freed above) is gone and every CPU flushed it (release).
            unsafe { p.free_frame(frame, size) };
        }
    }
}

/// The heap window's fault hook; `context` is the address of its `Inner`.
fn on_fault(fault: &Fault, context: usize) -> FaultResolution {
    // SAFETY: `context` is `Arc::as_ptr` of the Inner registered in
    // `Snappy::new`; the hook is removed (in `Snappy::drop`) while that
    // Snappy still holds an Arc, so the Inner is alive whenever it runs.
    let inner = unsafe { &*(context as *const Inner) };
    match inner.resolve(fault.addr) {
        Ok(()) => FaultResolution::Retry,
        Err(e) => {
            log::error!("snappy: unresolved fault at {:#x}: {e}", fault.addr);
            FaultResolution::Unhandled
        }
    }
}

impl Inner {
    fn view_base(&self, slot: usize) -> u64 {
        self.views.base + slot as u64 * GIB
    }

    fn take(&self) -> Result<(usize, u64), SnapError> {
        let heap = self.heap.base;
        self.state.with(|st| {
            let slot = st
                .slots
                .iter()
                .position(Option::is_none)
                .ok_or(SnapError::TooManySnapshots)?;
            let view = self.view_base(slot);
            let writes = libdbos::paging::with_tables(|t| -> Result<u64, SnapError> {
                let w = t.walker();
                let top = w.read(heap, Level::L3).map_err(paging(heap))?;
                let cur = w.read(view, Level::L3).map_err(paging(view))?;
                // The view's top entry: the heap's top table, read-only,
                // accessed bit clear (fresh), so that its accessed bit later
                // says whether anyone walked this view.
                let mut writes = w
                    .replace(
                        view,
                        Level::L3,
                        cur,
                        Entry::new(top.addr(), F::PRESENT | F::NO_EXECUTE),
                    )
                    .map_err(paging(view))?
                    .writes;
                // Invariant H at the top: the heap's top table is shared.
                if top.has(F::WRITABLE) || !top.has(COW) {
                    writes += w
                        .replace(heap, Level::L3, top, top.without(F::WRITABLE).with(COW))
                        .map_err(paging(heap))?
                        .writes;
                }
                Ok(writes)
            })?;
            libdbos::paging::count_writes(writes);
            self.last_take_writes.store(writes, Ordering::Relaxed);
            // Any CPU may cache a writable translation of a heap page, and
            // any CPU may cache translations of this slot's previous view:
            // all of them go before the snapshot is used.
            libdbos::smp::flush_all();
            st.epoch += 1;
            st.slots[slot] = Some(st.epoch);
            Ok((slot, st.epoch))
        })
    }

    fn release(&self, slot: usize, epoch: u64) -> Result<(), SnapError> {
        let view = self.view_base(slot);
        self.state.with(|st| {
            if slot >= MAX_SNAPSHOTS || st.slots[slot] != Some(epoch) {
                return Err(SnapError::NotLive { slot, epoch });
            }
            let old = libdbos::paging::with_tables(|t| -> Result<Entry, SnapError> {
                let w = t.walker();
                let cur = w.read(view, Level::L3).map_err(paging(view))?;
                w.replace(view, Level::L3, cur, Entry::EMPTY)
                    .map_err(paging(view))?;
                Ok(cur)
            })?;
            libdbos::paging::count_writes(1);
            st.slots[slot] = None;
            // A CPU that walked this view may cache translations through it:
            // they must go before what they lead to is freed (or the slot is
            // reused). Not walked (accessed clear): nothing cached.
            if old.has(F::ACCESSED) {
                libdbos::smp::flush_all();
            }
            self.reclaim(st);
            Ok(())
        })
    }

    /// Frees every limbo item no live snapshot can reach.
    fn reclaim(&self, st: &mut State) {
        let p = libdbos::platform();
        let mut i = 0;
        while i < st.limbo.len() {
            let l = st.limbo[i];
            if st.live_in(l.first, l.last) {
                i += 1;
                continue;
            }
            st.limbo.swap_remove(i);
            let frame = Frame::from_addr(l.phys).expect("limbo frames are aligned");
            // SAFETY: a limbo item was allocated by Snappy (a table from the
            // frame allocator, a data frame from the platform), is reached
            // only from snapshots whose epochs lie in its interval, none of
            // which is live, and every CPU that could cache a translation
            // through it flushed at those snapshots' release.
            unsafe { p.free_frame(frame, PageSize::Small) };
            self.freed.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Step 4 of the module's copy on write: one flush round on all CPUs.
    fn shoot_down_readers(&self) {
        if self.reader_flush.load(Ordering::Relaxed) {
            libdbos::smp::flush_all();
            self.reader_shootdowns.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Resolves an access to heap address `addr`: maps a missing page, or
    /// unshares a COW path (see the module comment).
    fn resolve(&self, addr: u64) -> Result<(), SnapError> {
        if addr < self.heap.base || addr - self.heap.base >= self.len {
            return Err(SnapError::NotResolvable(addr));
        }
        let page = addr & !(PAGE - 1);
        self.state.with(|st| {
            let mut plan = Plan::default();
            let mut writes = 0;
            let r = libdbos::paging::with_tables(|t| {
                self.unshare_path(st, t.walker(), page, &mut plan, &mut writes)
            });
            libdbos::paging::count_writes(writes);
            r?;
            if plan.flush {
                self.shoot_down_readers();
            }
            if plan.copied || plan.upgrade.iter().any(Option::is_some) {
                self.cow_faults.fetch_add(1, Ordering::Relaxed);
            }
            // Now no reader can see the heap's next writes: make the path
            // writable, leaf first.
            let writes = libdbos::paging::with_tables(|t| -> Result<u64, SnapError> {
                let w = t.walker();
                let mut n = 0;
                for level in plan.upgrade.iter().rev().flatten() {
                    let e = w.read(page, *level).map_err(paging(page))?;
                    n += w
                        .replace(page, *level, e, e.with(F::WRITABLE).without(COW))
                        .map_err(paging(page))?
                        .writes;
                }
                Ok(n)
            })?;
            libdbos::paging::count_writes(writes);
            // This CPU may cache the stricter translation (or a stricter
            // upper-level entry): drop it so that the retry sees the new one.
            libdbos::tlb::invalidate_local(page);
            Ok(())
        })
    }

    fn unshare_path(
        &self,
        st: &mut State,
        w: &Walker,
        page: u64,
        plan: &mut Plan,
        writes: &mut u64,
    ) -> Result<(), SnapError> {
        let off = page - self.heap.base;
        for (i, level) in [Level::L3, Level::L2].into_iter().enumerate() {
            let e = w.read(page, level).map_err(paging(page))?;
            if !e.present() {
                // A missing table below an unshared (or fresh) path: the
                // heap's own, linked with the walker's parent flags.
                let t = w
                    .memory()
                    .alloc_table()
                    .ok_or(SnapError::Platform(libdbos::platform::Error::OutOfFrames))?;
                *writes += w
                    .replace(page, level, e, Entry::new(t, walker::PARENT_FLAGS))
                    .map_err(paging(page))?
                    .writes;
                continue;
            }
            if e.has(F::HUGE_PAGE) {
                return Err(SnapError::NotResolvable(page));
            }
            if e.has(COW) {
                self.unshare_table(st, w, off, level, e.addr(), plan, writes)?;
                plan.upgrade[i] = Some(level);
            }
        }
        let e = w.read(page, Level::L1).map_err(paging(page))?;
        if !e.present() {
            let frame = libdbos::platform().alloc_frame(PageSize::Small)?;
            // SAFETY: a frame just allocated, reached through the direct map.
            unsafe { core::ptr::write_bytes(libdbos::platform().frame_ptr(frame), 0, PAGE_SIZE) };
            *writes += w
                .replace(
                    page,
                    Level::L1,
                    e,
                    Entry::new(frame.addr(), F::PRESENT | F::WRITABLE | F::NO_EXECUTE),
                )
                .map_err(paging(page))?
                .writes;
        } else if e.has(COW) {
            self.unshare_data(st, w, off, e.addr(), plan, writes)?;
            plan.upgrade[2] = Some(Level::L1);
        } else if !e.has(F::WRITABLE) {
            return Err(SnapError::NotResolvable(page));
        }
        // Otherwise: writable already, a stale stricter translation on this
        // CPU (the caller invalidates it).
        Ok(())
    }

    /// The live snapshots' view entries at `level` (for heap offset `off`)
    /// that point at `target`: deduplicated (snapshots sharing a table share
    /// the entry), with the epochs reaching each.
    fn sites(
        &self,
        st: &State,
        w: &Walker,
        off: u64,
        level: Level,
        target: u64,
        out: &mut [Option<Site>; MAX_SNAPSHOTS],
    ) -> Result<usize, SnapError> {
        let mut n = 0;
        for (slot, epoch) in st
            .slots
            .iter()
            .enumerate()
            .filter_map(|(s, e)| e.map(|e| (s, e)))
        {
            let top_va = self.view_base(slot);
            let va = top_va + off;
            let e = match w.read(va, level) {
                Ok(e) => e,
                // A view path that ends above `level` cannot reach `target`.
                Err(libdbos::pagetable::PagingError::NotMapped) => continue,
                Err(error) => return Err(SnapError::Paging { addr: va, error }),
            };
            if !e.present() || e.addr() != target {
                continue;
            }
            let top_accessed = w
                .read(top_va, Level::L3)
                .map_err(paging(top_va))?
                .has(F::ACCESSED);
            let ptr: *const AtomicU64 = w.slot(va, level).map_err(paging(va))?;
            if let Some(s) = out[..n].iter_mut().flatten().find(|s| s.slot == ptr) {
                s.first = s.first.min(epoch);
                s.last = s.last.max(epoch);
                s.top_accessed |= top_accessed;
            } else {
                out[n] = Some(Site {
                    va,
                    slot: ptr,
                    first: epoch,
                    last: epoch,
                    top_accessed,
                });
                n += 1;
            }
        }
        Ok(n)
    }

    /// Re-points the sites at `copy`; returns the epoch interval and whether
    /// a reader may cache the old path (step 4).
    fn repoint(
        w: &Walker,
        level: Level,
        sites: &[Option<Site>],
        copy: u64,
        writes: &mut u64,
    ) -> Result<(u64, u64, bool), SnapError> {
        let (mut first, mut last, mut flush) = (u64::MAX, 0, false);
        for s in sites.iter().flatten() {
            let old = w.read(s.va, level).map_err(paging(s.va))?;
            let u = w
                .replace(s.va, level, old, Entry::new(copy, old.flags()))
                .map_err(paging(s.va))?;
            *writes += u.writes;
            // `u.old` is the entry as the compare-and-swap replaced it.
            let top_accessed = s.top_accessed || (level == Level::L3 && u.old.has(F::ACCESSED));
            flush |= top_accessed && u.old.has(F::ACCESSED);
            first = first.min(s.first);
            last = last.max(s.last);
        }
        Ok((first, last, flush))
    }

    #[allow(clippy::too_many_arguments)]
    fn unshare_table(
        &self,
        st: &mut State,
        w: &Walker,
        off: u64,
        level: Level,
        table: u64,
        plan: &mut Plan,
        writes: &mut u64,
    ) -> Result<(), SnapError> {
        let mut sites = [None; MAX_SNAPSHOTS];
        if self.sites(st, w, off, level, table, &mut sites)? == 0 {
            // No live snapshot reaches it: H holds below it already (every
            // table or frame a live snapshot reaches through another path
            // has a COW heap entry since that path was copied).
            return Ok(());
        }
        let (copy, n) = w
            .duplicate(table, |e| e)
            .map_err(paging(self.heap.base + off))?;
        *writes += n;
        st.limbo.push(Limbo {
            phys: copy,
            table: true,
            first: 0,
            last: 0,
        });
        let (first, last, flush) = Self::repoint(w, level, &sites, copy, writes)?;
        let l = st.limbo.last_mut().expect("just pushed");
        l.first = first;
        l.last = last;
        plan.flush |= flush;
        plan.copied = true;
        self.tables_copied.fetch_add(1, Ordering::Relaxed);
        // H one level down: everything below `table` is now also reachable
        // through the copy.
        *writes += w
            .update_entries(table, |_, e| {
                (e.has(F::WRITABLE) || !e.has(COW)).then(|| e.without(F::WRITABLE).with(COW))
            })
            .map_err(paging(self.heap.base + off))?;
        Ok(())
    }

    fn unshare_data(
        &self,
        st: &mut State,
        w: &Walker,
        off: u64,
        frame: u64,
        plan: &mut Plan,
        writes: &mut u64,
    ) -> Result<(), SnapError> {
        let mut sites = [None; MAX_SNAPSHOTS];
        if self.sites(st, w, off, Level::L1, frame, &mut sites)? == 0 {
            return Ok(());
        }
        let p = libdbos::platform();
        let copy = p.alloc_frame(PageSize::Small)?;
        let from = Frame::from_addr(frame).expect("a leaf's frame is aligned");
        // SAFETY: both frames are RAM in the direct map; `copy` is new, and
        // nobody writes `frame` now (every heap translation of it is
        // read-only: H and take's flush).
        unsafe { core::ptr::copy_nonoverlapping(p.frame_ptr(from), p.frame_ptr(copy), PAGE_SIZE) };
        let (first, last, flush) = Self::repoint(w, Level::L1, &sites, copy.addr(), writes)?;
        st.limbo.push(Limbo {
            phys: copy.addr(),
            table: false,
            first,
            last,
        });
        plan.flush |= flush;
        plan.copied = true;
        self.pages_copied.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

// SAFETY: `heap()` is the heap window's base, 1 GiB-aligned (so page
// aligned), and every byte of the window is readable and writable for the
// life of the Snappy: a missing page is mapped by the fault hook on first
// access, a COW page made writable by it.
unsafe impl Snapshotter for Snappy {
    type Snapshot = Snapshot;
    type Error = SnapError;

    fn heap(&self) -> *mut u8 {
        self.inner.heap.base as *mut u8
    }

    fn heap_len(&self) -> usize {
        self.inner.len as usize
    }

    fn take(&self) -> Result<Snapshot, SnapError> {
        self.take_snapshot()
    }

    /// Reads through the view; a page not mapped in the view (not mapped in
    /// the heap at the take) reads as zeroes.
    fn read(&self, snap: &Snapshot, offset: usize, buf: &mut [u8]) -> Result<(), SnapError> {
        self.check_owner(snap)?;
        let (offset, len) = (offset as u64, buf.len() as u64);
        if offset.checked_add(len).is_none_or(|e| e > self.inner.len) {
            return Err(SnapError::OutOfRange { offset, len });
        }
        let view = self.inner.view_base(snap.slot);
        let mut done = 0u64;
        while done < len {
            let at = offset + done;
            let n = (PAGE - at % PAGE).min(len - done);
            let dst = &mut buf[done as usize..(done + n) as usize];
            // Whether a view page is mapped never changes while the
            // snapshot lives (its tables never gain or lose leaves; copies
            // are verbatim); looked up under the lock so that the walk does
            // not race a re-pointing (it could read a heap table just
            // unshared, which may gain leaves).
            let mapped = self
                .inner
                .state
                .with(|_| libdbos::paging::lookup(view + at).is_some());
            if mapped {
                // SAFETY: the view page is mapped read-only for as long as
                // `snap` is live (it is: we hold it), `n` bytes stay in it.
                unsafe {
                    core::ptr::copy_nonoverlapping(
                        (view + at) as *const u8,
                        dst.as_mut_ptr(),
                        n as usize,
                    )
                };
            } else {
                dst.fill(0);
            }
            done += n;
        }
        Ok(())
    }

    fn release(&self, snap: Snapshot) -> Result<(), SnapError> {
        self.release_snapshot(snap)
    }

    fn live(&self) -> usize {
        self.inner
            .state
            .with(|st| st.slots.iter().flatten().count())
    }
}
