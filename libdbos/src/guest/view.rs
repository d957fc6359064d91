//! Deferred page-table views: stale translations on purpose, for tests of
//! TLB invalidation (test mode, compiled only with the `conformance`
//! feature). Owns each CPU's private view (its root, its private tables and
//! its counters) and the refresh that invalidations perform on it.
//!
//! # Why
//!
//! On real hardware a CPU keeps a stale TLB entry after another CPU edits a
//! page table, until it invalidates that page; code that forgets an
//! invalidation (Tabby's lazy repair, Snappy's IPI to a snapshot reader)
//! then reads the wrong frame. This host's KVM (software, shadow paging)
//! resynchronises every vCPU by itself when a page table is written, so the
//! stale case never happens and a broken repair path would pass. A deferred
//! view makes it happen whatever the hardware does.
//!
//! Measured on this host without a view (`dbos run --vcpus 2 scenarios --
//! deferred-view shared`, the same scenario with `defer_view` left out):
//! CPU 1 reads page A (value 1), CPU 0 re-points A at another frame (value
//! 2) with platform calls that invalidate only CPU 0, and CPU 1 reads **2**
//! at once, before any invalidation of its own (case 1); likewise a page
//! CPU 0 unmapped faults on CPU 1 at once (case 4) and a page re-pointed
//! before a `flush_local` reads the new value before the flush (case 5).
//! The host never showed a stale translation by itself; with the view all
//! three stay stale until CPU 1's invalidation (`hypervisor/tests/
//! deferred_view.rs`).
//!
//! # What a view is
//!
//! [`defer_view`] called on a CPU gives that CPU, from then on, its own
//! level-4 table, loaded into its CR3: a copy of the shared root in which
//! every entry covering the deferred range points at a private copy of the
//! tables below it, down to the page tables (the walker's views,
//! [`dbos_abi::paging::PageTables::sync_view`]). That CPU's hardware
//! translates the range through the frozen copy: edits other CPUs make to
//! the real tables there are invisible to it until it invalidates, exactly
//! as a stale TLB entry would be, and more reliably (the copy is never
//! evicted). Outside the range the copy's entries are the shared ones, so
//! the rest of memory (the direct map, the image, other windows' tables
//! below the copied entries) translates as everywhere else.
//!
//! Invalidation repairs the view: [`crate::tlb::invalidate_local`] (what
//! `Platform::invalidate_local`, `invalidate_local_many`, `unmap`,
//! `protect` and the access-bit calls run) first refreshes that page's
//! entries in the private copy from the real tables (every level whose
//! entry differs, including tables that appeared or went away), then runs
//! `invlpg`; the IPI handler of `invalidate_all` does the same on the
//! target CPU; [`crate::tlb::flush_local`] refreshes the whole view before
//! reloading CR3. So a correct invalidation repairs the view and a missing
//! one leaves it stale. [`end_deferred_view`] reloads the shared root and
//! frees every private table.
//!
//! A page fault on a deferring CPU first refreshes the faulting page, as
//! the fault itself invalidates that page on real hardware; if the view then
//! permits the access (the copy held a not-present or read-only entry that
//! the real tables have since made present or writable) the access is
//! retried without calling the fault hook and counted in
//! [`ViewCounts::absorbed_faults`]. So a mapping another CPU adds to a page
//! this CPU's view has as not present is seen on first access, as on
//! hardware, which never caches a not-present entry (libdbos relies on
//! that: a new mapping needs no invalidation). What stays stale is what
//! real TLBs keep: a present translation (a re-pointed or removed page, a
//! write permission taken away) until this CPU invalidates it.
//!
//! # Invariants
//!
//! - **Only the owner edits its view.** The private root and tables of a CPU
//!   are written only on that CPU, with interrupts disabled (a refresh from
//!   `invalidate_local` cannot interleave with the IPI handler's refresh on
//!   the same CPU, and the IPI handler runs on the owner: the target of an
//!   `invalidate_all` refreshes its own view). Other CPUs only read its
//!   counters.
//! - **The copy's upper levels covering the range are private** (copied):
//!   a shared table above a private one would be the real table, and
//!   pointing it at a private copy would change every CPU's translation.
//!   Entries outside the range are copies of the real entries and share the
//!   real tables below them; a table created later under a copied entry
//!   outside the range (another window in the same 512 GiB) is visible
//!   after an invalidation of a page in it, a fault there, or a flush.
//! - **Walks use the real tables.** Every page-table walk, edit and
//!   accessed/dirty read libdbos does (`crate::paging`, `translate`,
//!   `access_bits`, `virt_to_phys`) goes to the shared root saved here, not
//!   CR3, on a deferring CPU too: mapping calls edit the real tables, while
//!   the CPU's hardware translates through the copy. Consequence for A/D
//!   bits: the accessed and dirty bits a deferring CPU's accesses set land
//!   in its copy, not in the real tables (and a refresh overwrites them with
//!   the real ones); a test that needs them set in the real tables must
//!   touch the page before deferring.
//! - **Memory mapped into the range later by other CPUs** is not visible
//!   while this CPU's copy holds a present entry for that page (that is the
//!   point), and visible on first access where the copy has none (above).
//! - The refresh reads the real tables lock-free, as the hardware walker
//!   does: window tables are only added (zeroed before they are linked)
//!   while the window lives. It takes no lock, so an `invalidate_all` sent
//!   by a CPU holding the structural page-table lock cannot deadlock on it.
//!   A private table whose real entry went away is unlinked, freed, and the
//!   page `invlpg`ed right after (interrupts stay disabled in between).
//!
//! # Counting
//!
//! Entries written into private copies are **not** page-table writes of the
//! platform (`pte_writes`): they are counted apart, in
//! [`ViewCounts::writes`], so the figures of the mechanisms under test are
//! the same with and without a view. The invalidations themselves are
//! counted as usual (`local_invalidations`, `remote_invalidations`, IPIs).
//! [`ViewCounts::tables`] is the private tables alive (root included): 0
//! after [`end_deferred_view`], and every frame returns to the allocator.
//!
//! Cost when unused: one load of a global count of deferring CPUs (0), and
//! a compare, on each invalidation, each CR3 flush, each page-table edit
//! (which root to walk) and each page fault; while some CPU defers, one
//! per-CPU check more on those paths of every CPU.

use crate::abi::{DIRECT_MAP_BASE, PAGE_SIZE};
use crate::pagetable::{walker, OffsetMemory, PagingError, TableFrames};
use crate::percpu::{self, PerCpu};
use core::ops::Range;
use core::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use x86_64::registers::control::Cr3;
use x86_64::structures::paging::PhysFrame;
use x86_64::PhysAddr;

/// CPUs that defer a view now. The hot paths check it before anything
/// per-CPU: it is 0 in every program that never defers, and it is also what
/// makes them safe before a CPU's per-CPU area exists (a page-table walk or
/// a panic during boot reaches [`shared_root`]).
static DEFERRING: AtomicUsize = AtomicUsize::new(0);

/// Whether any CPU may defer a view (one global load).
#[inline]
fn any() -> bool {
    DEFERRING.load(Ordering::Relaxed) != 0
}

/// One CPU's deferred view. Written by its owner only (see the invariants);
/// read by any CPU for the counters.
pub(crate) struct ViewState {
    /// Physical address of the private root; 0 when not deferring. Stored
    /// last on entry and first on exit: it is the flag the hot paths check.
    root: AtomicU64,
    /// The shared root (what CR3 held before), walked for every edit.
    shared: AtomicU64,
    /// The deferred range, `start..end`.
    start: AtomicU64,
    end: AtomicU64,
    /// Entries written into private tables, ever.
    writes: AtomicU64,
    /// Private tables alive, the root included.
    tables: AtomicU64,
    /// Faults retried without the hook, ever.
    absorbed: AtomicU64,
}

impl ViewState {
    pub(crate) const fn new() -> ViewState {
        ViewState {
            root: AtomicU64::new(0),
            shared: AtomicU64::new(0),
            start: AtomicU64::new(0),
            end: AtomicU64::new(0),
            writes: AtomicU64::new(0),
            tables: AtomicU64::new(0),
            absorbed: AtomicU64::new(0),
        }
    }

    /// Adds `n` to one of this CPU's counters (owner only: load + store).
    fn add(counter: &AtomicU64, n: u64) {
        counter.store(
            counter.load(Ordering::Relaxed).wrapping_add(n),
            Ordering::Relaxed,
        );
    }

    fn range(&self) -> Range<u64> {
        self.start.load(Ordering::Relaxed)..self.end.load(Ordering::Relaxed)
    }
}

/// Why a deferred-view call failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ViewError {
    /// The range is empty, not 4 KiB aligned, not canonical, or spans both
    /// halves of the address space.
    BadRange { start: u64, end: u64 },
    /// This CPU already defers a view (of `start..end`).
    AlreadyDeferred { cpu: u32, start: u64, end: u64 },
    /// This CPU defers no view.
    NotDeferred { cpu: u32 },
    /// No frame for a private table; nothing was kept (`tables` were
    /// allocated and freed again).
    OutOfFrames { cpu: u32, tables: u64 },
}

impl core::fmt::Display for ViewError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match *self {
            ViewError::BadRange { start, end } => {
                write!(f, "cannot defer the view of {start:#x}..{end:#x}")
            }
            ViewError::AlreadyDeferred { cpu, start, end } => {
                write!(f, "CPU {cpu} already defers {start:#x}..{end:#x}")
            }
            ViewError::NotDeferred { cpu } => write!(f, "CPU {cpu} defers no view"),
            ViewError::OutOfFrames { cpu, tables } => write!(
                f,
                "out of frames copying CPU {cpu}'s view ({tables} tables freed again)"
            ),
        }
    }
}

/// Counters of the deferred views, summed over all CPUs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ViewCounts {
    /// Entries written into private copies (not counted as `pte_writes`).
    pub writes: u64,
    /// Private tables alive, roots included.
    pub tables: u64,
    /// Page faults on a deferring CPU that the refresh resolved (retried
    /// without calling the fault hook).
    pub absorbed_faults: u64,
}

/// Private tables: zeroed frames from the frame allocator, counted in the
/// owner's [`ViewState::tables`].
struct ViewFrames(&'static ViewState);

impl TableFrames for ViewFrames {
    fn alloc_zeroed_table(&self) -> Option<u64> {
        let frame = crate::frames::alloc_zeroed()?;
        ViewState::add(&self.0.tables, 1);
        Some(frame.start_address().as_u64())
    }

    fn free_table(&self, phys: u64) {
        // SAFETY: views free only their private tables (the walker's view
        // shape), which came from `alloc_zeroed_table` above and which no
        // entry reachable by this CPU points at any more (unlinked before,
        // and invalidated by the caller before it re-enables interrupts).
        unsafe { crate::frames::free(PhysFrame::containing_address(PhysAddr::new(phys))) };
        ViewState::add(&self.0.tables, 0u64.wrapping_sub(1));
    }
}

type View = walker::PageTables<'static, OffsetMemory<'static, ViewFrames>>;

/// The memory of `state`'s view: the direct map, private tables counted.
fn memory(state: &'static ViewState) -> OffsetMemory<'static, ViewFrames> {
    // SAFETY: every table a view reaches is a RAM frame (the private ones
    // from the frame allocator, the shared ones the real tables'), addressed
    // through the direct map, which is mapped for the guest's whole life;
    // the walker reaches them only atomically.
    unsafe { OffsetMemory::new(DIRECT_MAP_BASE, ViewFrames(state)) }
}

/// The view rooted at `root`, owned by `state`.
fn view(state: &'static ViewState, root: u64) -> View {
    walker::PageTables::new(memory(state), root)
}

/// Everything (end exclusive; every entry of every level meets it).
const EVERYTHING: Range<u64> = 0..u64::MAX;

fn canonical(addr: u64) -> bool {
    let top = addr >> 47;
    top == 0 || top == 0x1_ffff
}

/// Gives the calling CPU its own, deferred view of `range` (4 KiB aligned,
/// end exclusive): see the module documentation. Returns the private tables
/// it made (the root included).
pub fn defer_view(range: Range<u64>) -> Result<u64, ViewError> {
    let (start, end) = (range.start, range.end);
    if start >= end
        || !start.is_multiple_of(PAGE_SIZE)
        || !end.is_multiple_of(PAGE_SIZE)
        || !canonical(start)
        || !canonical(end - 1)
        || start >> 63 != (end - 1) >> 63
    {
        return Err(ViewError::BadRange { start, end });
    }
    let me = percpu::current();
    let state = &me.view;
    x86_64::instructions::interrupts::without_interrupts(|| {
        if state.root.load(Ordering::Relaxed) != 0 {
            let r = state.range();
            return Err(ViewError::AlreadyDeferred {
                cpu: me.cpu,
                start: r.start,
                end: r.end,
            });
        }
        let (frame, flags) = Cr3::read();
        let shared = frame.start_address().as_u64();
        let before = state.tables.load(Ordering::Relaxed);
        let out_of_frames = |state: &ViewState| ViewError::OutOfFrames {
            cpu: me.cpu,
            tables: state.tables.load(Ordering::Relaxed) - before,
        };
        let copy = walker::PageTables::create(memory(state)).map_err(|_| out_of_frames(state))?;
        let root = copy.root();
        match copy.sync_view(shared, &range, &EVERYTHING) {
            Ok(writes) => ViewState::add(&state.writes, writes),
            Err(e) => {
                ViewState::add(&state.writes, writes_of(e));
                let tables = state.tables.load(Ordering::Relaxed) - before;
                let _ = copy.release_view(&range);
                return Err(ViewError::OutOfFrames {
                    cpu: me.cpu,
                    tables,
                });
            }
        }
        state.shared.store(shared, Ordering::Relaxed);
        state.start.store(start, Ordering::Relaxed);
        state.end.store(end, Ordering::Relaxed);
        state.root.store(root, Ordering::Relaxed);
        DEFERRING.fetch_add(1, Ordering::Relaxed);
        // SAFETY: the private root translates every address exactly as the
        // shared root does at this moment (every entry is a copy of the real
        // one, or points at a copy of the real table made just above, with
        // interrupts disabled), so switching changes no translation: the
        // code, the stack and the data this CPU uses stay where they are.
        // The flags (no PCID on these hosts) are kept.
        unsafe { Cr3::write(PhysFrame::containing_address(PhysAddr::new(root)), flags) };
        Ok(state.tables.load(Ordering::Relaxed) - before)
    })
}

/// Ends the calling CPU's deferred view: reloads the shared root and frees
/// every private table. Returns how many it freed (the root included).
pub fn end_deferred_view() -> Result<u64, ViewError> {
    let me = percpu::current();
    let state = &me.view;
    x86_64::instructions::interrupts::without_interrupts(|| {
        let root = state.root.load(Ordering::Relaxed);
        if root == 0 {
            return Err(ViewError::NotDeferred { cpu: me.cpu });
        }
        let shared = state.shared.load(Ordering::Relaxed);
        let (_, flags) = Cr3::read();
        // SAFETY: the shared root is the one every other CPU runs on, with
        // the same kernel mappings; the CR3 write also drops every
        // translation and paging-structure cache entry of the view (no
        // PCIDs), so the private tables freed below are no longer used.
        unsafe { Cr3::write(PhysFrame::containing_address(PhysAddr::new(shared)), flags) };
        state.root.store(0, Ordering::Relaxed);
        DEFERRING.fetch_sub(1, Ordering::Relaxed);
        let freed = view(state, root)
            .release_view(&state.range())
            .expect("private tables are RAM frames");
        Ok(freed)
    })
}

/// Whether the calling CPU defers a view.
pub fn deferring() -> bool {
    any() && percpu::current().view.root.load(Ordering::Relaxed) != 0
}

/// The deferred views' counters, summed over all CPUs.
pub fn view_counts() -> ViewCounts {
    let mut c = ViewCounts::default();
    for cpu in (0..crate::abi::MAX_VCPUS as usize).filter_map(percpu::cpu) {
        c.writes += cpu.view.writes.load(Ordering::Relaxed);
        c.tables += cpu.view.tables.load(Ordering::Relaxed);
        c.absorbed_faults += cpu.view.absorbed.load(Ordering::Relaxed);
    }
    c
}

/// The real root to walk on this CPU while it defers a view.
// Never inlined: an image with this hook on its paths names it in its
// symbols, which `hypervisor/tests/images.rs` checks the measured images for.
#[inline(never)]
pub(crate) fn shared_root() -> Option<u64> {
    if !any() {
        return None;
    }
    let state = &percpu::current().view;
    (state.root.load(Ordering::Relaxed) != 0).then(|| state.shared.load(Ordering::Relaxed))
}

fn writes_of(e: PagingError) -> u64 {
    match e {
        PagingError::OutOfTables { writes } => writes,
        _ => 0,
    }
}

/// Brings `only` of the calling CPU's view up to date with the real
/// tables; the caller invalidates afterwards. Returns the entries written.
/// Interrupts must be disabled (owner-only edits).
fn sync(me: &'static PerCpu, only: &Range<u64>) -> u64 {
    let state = &me.view;
    let root = state.root.load(Ordering::Relaxed);
    let shared = state.shared.load(Ordering::Relaxed);
    let writes = match view(state, root).sync_view(shared, &state.range(), only) {
        Ok(w) => w,
        Err(e) => {
            // The page stays not present in the view; the CPU faults on it
            // and the fault path tries again.
            log::error!("CPU {}: refreshing the deferred view: {e:?}", me.cpu);
            writes_of(e)
        }
    };
    ViewState::add(&state.writes, writes);
    writes
}

/// Before `invlpg page` on this CPU: refreshes the page in the view, if this
/// CPU defers one (one global check while no CPU does).
// Never inlined: an image with this hook on its paths names it in its
// symbols, which `hypervisor/tests/images.rs` checks the measured images for.
#[inline(never)]
pub(crate) fn refresh_page(page: u64) {
    if !any() {
        return;
    }
    let me = percpu::current();
    if me.view.root.load(Ordering::Relaxed) != 0 {
        let page = page & !0xfff;
        x86_64::instructions::interrupts::without_interrupts(|| {
            sync(me, &(page..page.saturating_add(PAGE_SIZE)));
        });
    }
}

/// Before a CR3 reload on this CPU: refreshes the whole view, if any.
// Never inlined: an image with this hook on its paths names it in its
// symbols, which `hypervisor/tests/images.rs` checks the measured images for.
#[inline(never)]
pub(crate) fn refresh_all() {
    if !any() {
        return;
    }
    let me = percpu::current();
    if me.view.root.load(Ordering::Relaxed) != 0 {
        x86_64::instructions::interrupts::without_interrupts(|| {
            sync(me, &EVERYTHING);
        });
    }
}

/// Whether the view's translation of `addr` serves an access (a write
/// needs every level writable).
fn permits(view: &View, addr: u64, write: bool) -> bool {
    let Ok(walk) = view.walk(addr) else {
        return false;
    };
    walk.leaf().is_some()
        && (!write
            || walk
                .steps()
                .iter()
                .all(|s| s.entry.has(walker::Flags::WRITABLE)))
}

/// Called first by the #PF handler (interrupts disabled): on a deferring
/// CPU, refreshes the faulting page as the fault would invalidate it on
/// hardware, and returns true when the fault is resolved by that (retry
/// without the hook). One global check while no CPU defers a view.
// Never inlined: an image with this hook on its paths names it in its
// symbols, which `hypervisor/tests/images.rs` checks the measured images for.
#[inline(never)]
pub(crate) fn absorb_fault(addr: u64, write: bool) -> bool {
    if !any() {
        return false;
    }
    let me = percpu::current();
    let root = me.view.root.load(Ordering::Relaxed);
    if root == 0 {
        return false;
    }
    let page = addr & !0xfff;
    let v = view(&me.view, root);
    let before = permits(&v, addr, write);
    sync(me, &(page..page.saturating_add(PAGE_SIZE)));
    // The refresh's own invlpg (not `tlb::invalidate_uncounted`, which
    // would refresh again).
    x86_64::instructions::tlb::flush(x86_64::VirtAddr::new_truncate(page));
    let absorbed = !before && permits(&v, addr, write);
    if absorbed {
        ViewState::add(&me.view.absorbed, 1);
    }
    absorbed
}
