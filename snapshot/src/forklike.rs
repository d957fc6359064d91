//! A snapshot taken the way `fork()` takes one, in the guest, for the
//! side-by-side comparison with [`crate::snappy`] (guest only).
//!
//! This module owns a heap window, a window of view slots with their own
//! page tables, and a reference count per physical frame (an array, as the
//! kernel's `struct page` count).
//!
//! Taking a snapshot copies every present leaf entry of the heap into the
//! view's own tables (read-only), write-protects the heap's leaf (setting
//! [`COW`]) and increments the frame's reference count: its page-table
//! writes grow with the mapped pages (two per page, plus the view's tables),
//! then every CPU flushes (as `fork()` flushes the parent's TLB).
//!
//! A write fault on a COW heap page whose frame is shared (count > 1)
//! copies the page **for the heap** (as the kernel does for the writer),
//! re-points the heap's entry at the copy and invalidates the page on every
//! CPU (other CPUs may cache the heap's translation to the old frame, which
//! the snapshots keep: without the shootdown they would read it, stale).
//! A count of 1 (no snapshot shares it any more) is made writable in place.
//!
//! Releasing unmaps the view's leaves (one write each), drops the counts
//! (freeing frames no one maps), clears the view's top entry, flushes every
//! CPU and frees the view's tables.
//!
//! Invariants: every mapping of a frame (the heap's, each view's) is counted
//! once in `refs`; a frame is freed when its count reaches 0, after the
//! entry that mapped it is gone and every CPU flushed (release) or
//! invalidated it (fault). One [`ServingLock`] serialises take, release and
//! fault resolution; page-table edits run inside `paging::with_tables`,
//! shootdowns outside it.

use crate::guest::{check_len, paging, ServingLock, SnapError, GIB, MAX_SNAPSHOTS};
use crate::PAGE_SIZE;
use alloc::vec;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicU64, Ordering};
use libdbos::pagetable::{walker, Entry, Level, Size, TableMemory, COW, F};
use libdbos::platform::{Fault, FaultResolution, Frame, PageSize, Platform, Window};

const PAGE: u64 = PAGE_SIZE as u64;

/// A live fork-like snapshot (released explicitly with
/// [`ForkLike::release`]).
#[derive(Debug)]
pub struct ForkSnapshot {
    slot: usize,
    /// The [`ForkLike::id`] of the instance that took it.
    owner: u64,
}

impl ForkSnapshot {
    /// Its view, readable from any CPU (unmapped where the heap was).
    ///
    /// # Panics
    /// If `owner` is not the instance that took it.
    pub fn as_ptr(&self, owner: &ForkLike) -> *const u8 {
        assert_eq!(self.owner, owner.id, "a snapshot of another ForkLike");
        owner.view_base(self.slot) as *const u8
    }
}

/// Instance ids (slots are per instance, so a snapshot names its owner).
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// Counted events of a fork-like instance.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ForkStats {
    pub cow_faults: u64,
    pub bytes_copied: u64,
    /// Page-table entries written by the last take.
    pub last_take_writes: u64,
}

struct State {
    live: [bool; MAX_SNAPSHOTS],
    /// References to each physical frame (index: address / 4 KiB).
    refs: Vec<u16>,
}

/// The fork-like snapshot mechanism over one heap window.
pub struct ForkLike {
    /// Unique among the instances of this boot.
    id: u64,
    heap: Window,
    /// The heap's length as asked for (the window is rounded up to 2 MiB).
    len: u64,
    views: Window,
    state: ServingLock<State>,
    cow_faults: AtomicU64,
    bytes_copied: AtomicU64,
    last_take_writes: AtomicU64,
}

impl ForkLike {
    /// A heap of `len` bytes (at most 1 GiB), 1 GiB-aligned, nothing mapped;
    /// boxed, because the fault hook's context is its address.
    pub fn new(len: u64) -> Result<alloc::boxed::Box<ForkLike>, SnapError> {
        check_len(len)?;
        let p = libdbos::platform();
        let heap = p.reserve_aligned(len, GIB)?;
        let views = p.reserve_aligned(MAX_SNAPSHOTS as u64 * GIB, GIB)?;
        let writes = libdbos::paging::with_tables(|t| -> Result<u64, SnapError> {
            let mut w = 0;
            for i in 0..MAX_SNAPSHOTS as u64 {
                w += t
                    .walker()
                    .prepare(views.base + i * GIB, Level::L3)
                    .map_err(paging(views.base))?;
            }
            Ok(w)
        })?;
        libdbos::paging::count_writes(writes);
        let frames = libdbos::boot::memory_map()
            .iter()
            .map(|r| r.end())
            .max()
            .unwrap_or(0)
            / PAGE;
        let me = alloc::boxed::Box::new(ForkLike {
            heap,
            len,
            views,
            state: ServingLock::new(State {
                live: [false; MAX_SNAPSHOTS],
                refs: vec![0; frames as usize],
            }),
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            cow_faults: AtomicU64::new(0),
            bytes_copied: AtomicU64::new(0),
            last_take_writes: AtomicU64::new(0),
        });
        p.set_window_fault_hook(&heap, Some(on_fault), &*me as *const ForkLike as usize)?;
        Ok(me)
    }

    fn view_base(&self, slot: usize) -> u64 {
        self.views.base + slot as u64 * GIB
    }

    pub fn heap_window(&self) -> Window {
        self.heap
    }

    pub fn stats(&self) -> ForkStats {
        ForkStats {
            cow_faults: self.cow_faults.load(Ordering::Relaxed),
            bytes_copied: self.bytes_copied.load(Ordering::Relaxed),
            last_take_writes: self.last_take_writes.load(Ordering::Relaxed),
        }
    }

    /// Maps every missing page of `[offset, offset + len)`.
    pub fn populate(&self, offset: u64, len: u64) -> Result<(), SnapError> {
        if offset.checked_add(len).is_none_or(|e| e > self.len) {
            return Err(SnapError::OutOfRange { offset, len });
        }
        let mut page = offset & !(PAGE - 1);
        while page < offset + len {
            self.resolve(self.heap.base + page)?;
            page += PAGE;
        }
        Ok(())
    }

    /// The heap's present leaves: (heap address, entry).
    fn leaves(w: &Walker, base: u64, len: u64) -> Result<Vec<(u64, Entry)>, SnapError> {
        let mut tables = Vec::new();
        w.visit(base, base + len, |v| {
            if v.level == Level::L1 {
                tables.push((v.table, v.base));
            }
        })
        .map_err(paging(base))?;
        let mut out = Vec::new();
        for (table, tbase) in tables {
            let entries = w.memory().table(table).ok_or(SnapError::Paging {
                addr: tbase,
                error: walker::PagingError::BadTable(table),
            })?;
            for (i, slot) in entries.iter().enumerate() {
                let e = Entry(slot.load(Ordering::Acquire));
                let va = tbase + i as u64 * PAGE;
                if e.present() && va >= base && va < base + len {
                    out.push((va, e));
                }
            }
        }
        Ok(out)
    }

    /// Takes a snapshot: two entries per mapped page plus the view's tables.
    pub fn take(&self) -> Result<ForkSnapshot, SnapError> {
        self.state.with(|st| {
            let slot = st
                .live
                .iter()
                .position(|l| !l)
                .ok_or(SnapError::TooManySnapshots)?;
            let view = self.view_base(slot);
            let (heap, len) = (self.heap.base, self.len);
            let writes = libdbos::paging::with_tables(|t| -> Result<u64, SnapError> {
                let w = t.walker();
                let mut writes = 0;
                for (va, e) in Self::leaves(w, heap, len)? {
                    writes += w
                        .map(view + (va - heap), e.addr(), Size::Small, F::NO_EXECUTE)
                        .map_err(paging(va))?
                        .writes;
                    writes += w
                        .update(va, Size::Small, |e| {
                            (e.has(F::WRITABLE) || !e.has(COW))
                                .then(|| e.without(F::WRITABLE).with(COW))
                        })
                        .map_err(paging(va))?
                        .writes;
                    st.refs[(e.addr() / PAGE) as usize] += 1;
                }
                Ok(writes)
            })?;
            libdbos::paging::count_writes(writes);
            self.last_take_writes.store(writes, Ordering::Relaxed);
            // The heap's writable translations, on every CPU.
            libdbos::smp::flush_all();
            st.live[slot] = true;
            Ok(ForkSnapshot {
                slot,
                owner: self.id,
            })
        })
    }

    /// Releases a snapshot: unmaps its view, drops the counts, frees what
    /// nobody maps and the view's tables.
    pub fn release(&self, snap: ForkSnapshot) -> Result<(), SnapError> {
        if snap.owner != self.id {
            return Err(SnapError::ForeignSnapshot);
        }
        let view = self.view_base(snap.slot);
        let p = libdbos::platform();
        self.state.with(|st| {
            if !st.live[snap.slot] {
                return Err(SnapError::NotLive {
                    slot: snap.slot,
                    epoch: 0,
                });
            }
            let mut free = Vec::new();
            let mut tables = Vec::new();
            let writes = libdbos::paging::with_tables(|t| -> Result<u64, SnapError> {
                let w = t.walker();
                let mut writes = 0;
                for (va, _) in Self::leaves(w, view, GIB)? {
                    let u = w.unmap(va, Size::Small).map_err(paging(va))?;
                    writes += u.writes;
                    let r = &mut st.refs[(u.old.addr() / PAGE) as usize];
                    *r -= 1;
                    if *r == 0 {
                        free.push(u.old.addr());
                    }
                }
                // Only the tables wholly inside the slot are the view's own
                // (the level-3 table above it is shared with other windows).
                w.visit(view, view + GIB, |v| {
                    if v.whole {
                        tables.push(v.table)
                    }
                })
                .map_err(paging(view))?;
                let top = w.read(view, Level::L3).map_err(paging(view))?;
                if top.present() {
                    writes += w
                        .replace(view, Level::L3, top, Entry::EMPTY)
                        .map_err(paging(view))?
                        .writes;
                }
                Ok(writes)
            })?;
            libdbos::paging::count_writes(writes);
            libdbos::smp::flush_all();
            st.live[snap.slot] = false;
            for phys in free.into_iter().chain(tables) {
                // SAFETY: frames no mapping counts any more, and the view's
                // tables, unlinked; every CPU flushed above.
                unsafe { p.free_frame(Frame::from_addr(phys).expect("aligned"), PageSize::Small) };
            }
            Ok(())
        })
    }

    fn resolve(&self, addr: u64) -> Result<(), SnapError> {
        if addr < self.heap.base || addr - self.heap.base >= self.len {
            return Err(SnapError::NotResolvable(addr));
        }
        let page = addr & !(PAGE - 1);
        let p = libdbos::platform();
        self.state.with(|st| {
            let mut shootdown = false;
            let mut writes = 0;
            let r = libdbos::paging::with_tables(|t| -> Result<(), SnapError> {
                let w = t.walker();
                let e = match w.read(page, Level::L1) {
                    Ok(e) => e,
                    Err(walker::PagingError::NotMapped) => Entry::EMPTY,
                    Err(error) => return Err(SnapError::Paging { addr: page, error }),
                };
                if !e.present() {
                    let frame = p.alloc_frame(PageSize::Small)?;
                    // SAFETY: a frame just allocated, in the direct map.
                    unsafe { core::ptr::write_bytes(p.frame_ptr(frame), 0, PAGE_SIZE) };
                    writes += w
                        .map(page, frame.addr(), Size::Small, F::WRITABLE | F::NO_EXECUTE)
                        .map_err(paging(page))?
                        .writes;
                    st.refs[(frame.addr() / PAGE) as usize] = 1;
                } else if e.has(COW) {
                    self.cow_faults.fetch_add(1, Ordering::Relaxed);
                    let r = &mut st.refs[(e.addr() / PAGE) as usize];
                    if *r > 1 {
                        let copy = p.alloc_frame(PageSize::Small)?;
                        let from = Frame::from_addr(e.addr()).expect("aligned");
                        // SAFETY: RAM frames in the direct map; `copy` is
                        // new, `from` read-only everywhere.
                        unsafe {
                            core::ptr::copy_nonoverlapping(
                                p.frame_ptr(from),
                                p.frame_ptr(copy),
                                PAGE_SIZE,
                            )
                        };
                        *r -= 1;
                        st.refs[(copy.addr() / PAGE) as usize] = 1;
                        writes += w
                            .update(page, Size::Small, |e| {
                                Some(Entry::new(
                                    copy.addr(),
                                    e.flags().union(F::WRITABLE).difference(COW),
                                ))
                            })
                            .map_err(paging(page))?
                            .writes;
                        self.bytes_copied.fetch_add(PAGE, Ordering::Relaxed);
                        shootdown = true;
                    } else {
                        writes += w
                            .update(page, Size::Small, |e| {
                                Some(e.with(F::WRITABLE).without(COW))
                            })
                            .map_err(paging(page))?
                            .writes;
                    }
                } else if !e.has(F::WRITABLE) {
                    return Err(SnapError::NotResolvable(page));
                }
                Ok(())
            });
            libdbos::paging::count_writes(writes);
            r?;
            if shootdown {
                // The heap's entry moved to another frame: every CPU drops
                // its translation of the old one.
                libdbos::smp::invalidate_all(page);
            } else {
                libdbos::tlb::invalidate_local(page);
            }
            Ok(())
        })
    }
}

type Walker = walker::PageTables<
    'static,
    libdbos::pagetable::OffsetMemory<'static, libdbos::frames::ZeroedFrames>,
>;

impl Drop for ForkLike {
    /// Gives both windows back and frees every frame and table it used,
    /// live snapshots included (a [`ForkSnapshot`] is only a slot number,
    /// useless without its ForkLike): each frame a view or the heap still
    /// maps loses that reference, and is freed at zero.
    fn drop(&mut self) {
        let p = libdbos::platform();
        if let Err(e) = p.set_window_fault_hook(&self.heap, None, 0) {
            log::error!("removing the fork-like fault hook: {e}");
        }
        let mut mapped = Vec::new();
        for window in [self.views, self.heap] {
            // SAFETY: nothing can access either window any more: the
            // ForkLike (the only way to the heap, and `as_ptr` needs it for
            // a view) is being dropped, the hook is gone, and the windows
            // share no table (views hold their own tables).
            let released = unsafe { p.release(window, &mut |_, _, u| mapped.push(u.frame.addr())) };
            if let Err(e) = released {
                log::error!("fork-like: releasing window {:#x}: {e}", window.base);
            }
        }
        let free = self.state.with(|st| {
            let mut free = Vec::new();
            for phys in mapped {
                let r = &mut st.refs[(phys / PAGE) as usize];
                *r -= 1;
                if *r == 0 {
                    free.push(phys);
                }
            }
            free
        });
        for phys in free {
            // SAFETY: every mapping of the frame was counted in `refs`, and
            // the last one just went away with its window (every CPU
            // flushed it in the release).
            unsafe { p.free_frame(Frame::from_addr(phys).expect("aligned"), PageSize::Small) };
        }
    }
}

/// The heap window's fault hook; `context` is the ForkLike's address.
fn on_fault(fault: &Fault, context: usize) -> FaultResolution {
    // SAFETY: `context` is the address of the boxed ForkLike that registered
    // this hook; its Drop removes the hook before the box is freed.
    let me = unsafe { &*(context as *const ForkLike) };
    match me.resolve(fault.addr) {
        Ok(()) => FaultResolution::Retry,
        Err(e) => {
            log::error!("fork-like: unresolved fault at {:#x}: {e}", fault.addr);
            FaultResolution::Unhandled
        }
    }
}
