//! Edits of the active page tables, reached through the direct map, counted.
//! Every read and write of an entry is the shared walker's
//! ([`dbos_abi::paging`], through [`crate::pagetable`]), atomic.
//!
//! Invariants relied on here:
//! - every paging structure is a RAM frame, so the direct map at
//!   `DIRECT_MAP_BASE` covers it, and only the walker's atomics access it;
//! - **structural edits** (anything that may create, re-point or free a
//!   table: [`map`], [`populate`], and whatever a caller does in
//!   [`with_tables`]) hold one spin lock with interrupts disabled, so two CPUs
//!   never create the same table twice, and a hook interrupting the lock
//!   holder on its own CPU cannot deadlock on it;
//! - **leaf edits** ([`unmap`], [`set_protection`], [`clear_access_bits`],
//!   [`test_and_clear_accessed`], and writes through [`leaf`]) take no lock:
//!   each is one compare-and-swap on one entry, which serialises with the
//!   hardware's accessed/dirty updates and with other CPUs' edits of that
//!   entry. They are safe against structural edits because page tables of a
//!   window are never freed or re-pointed while the window lives (only
//!   `Platform::release` frees them, after the window is gone and nothing
//!   may use it, and only tables no other live window's range meets; nothing
//!   in the platform shares or copies a window's tables): a slot a walk
//!   found stays the slot the MMU uses. A
//!   caller of [`with_tables`] that re-points a table (share, copy) must edit
//!   the leaves below it under the lock as well, or re-walk afterwards.
//!
//! TLB rule: mapping a page that was not present needs no invalidation (x86
//! does not cache non-present entries). After a present entry changes or goes
//! away, the old translation may still be cached, so [`unmap`] and
//! [`set_protection`] invalidate the page on this CPU (`invlpg`) before
//! returning; other CPUs are the caller's business
//! (`smp::invalidate_all`, or Tabby's lazy repair).
//!
//! Counting: every entry written is one [`Event::PteWrite`], including the
//! tables a failed `map` linked before memory ran out.

use crate::abi::DIRECT_MAP_BASE;
use crate::frames::ZeroedFrames;
use crate::pagetable::{PageTables, F};
use crate::percpu::{self, Event};
use crate::platform::{Error, Frame, PageSize, Protection};
use alloc::vec::Vec;
use core::sync::atomic::AtomicU64;
use spin::Mutex;
use x86_64::registers::control::Cr3;

pub use crate::pagetable::Mapping;
#[cfg(feature = "conformance")]
pub use crate::view::{
    defer_view, deferring, end_deferred_view, view_counts, ViewCounts, ViewError,
};

/// Serialises structural edits of the active page tables.
static TABLES: Mutex<()> = Mutex::new(());

/// The active tables (CR3's root, or on a CPU that defers its view the
/// shared root: edits and walks always go to the real tables, see
/// `crate::view`), through the direct map.
fn active() -> PageTables<'static, ZeroedFrames> {
    let root = real_root();
    // SAFETY: CR3 holds the active PML4; every table is a RAM frame in the
    // direct map, which is mapped for the guest's whole life, and tables are
    // only accessed through the walker's atomics (invariants above); new
    // tables are zeroed frames from the frame allocator.
    unsafe { PageTables::new(root, DIRECT_MAP_BASE, ZeroedFrames) }
}

/// The root of the real tables: CR3's, or the shared root a CPU that
/// defers its view saved (one global check with the `conformance` feature).
fn real_root() -> u64 {
    #[cfg(feature = "conformance")]
    if let Some(root) = crate::view::shared_root() {
        return root;
    }
    Cr3::read().0.start_address().as_u64()
}

/// Runs `f` on the active tables under the structural lock (interrupts
/// disabled). For level-aware edits through [`PageTables::walker`]: the
/// caller counts what the walker reports ([`count_writes`]) and invalidates.
pub fn with_tables<R>(f: impl FnOnce(&PageTables<'static, ZeroedFrames>) -> R) -> R {
    x86_64::instructions::interrupts::without_interrupts(|| {
        let _guard = TABLES.lock();
        f(&active())
    })
}

/// Counts `n` page-table entries written on this CPU.
pub fn count_writes(n: u64) {
    percpu::current().count_n(Event::PteWrite, n);
}

/// Maps `page` to `frame`. Counted: one PTE write plus one per new table.
pub fn map(page: u64, frame: Frame, size: PageSize, prot: Protection) -> Result<(), Error> {
    let mut writes = 0;
    let r = with_tables(|t| t.map(page, frame, size, prot, &mut writes));
    count_writes(writes);
    r
}

/// Points `page` at `frame` with `prot`, whatever it held: one exchange of
/// the entry, lock-free when the page's tables exist (a leaf edit), else
/// under the structural lock creating them as [`map`] does. If a present
/// entry was replaced, the page is invalidated on this CPU (`invlpg`; other
/// CPUs may keep the old translation: the caller's business, see Tabby);
/// if the page was not mapped, nothing can be cached and nothing is
/// invalidated. Returns the mapping replaced. Counted: 1 PTE write plus one
/// per table created.
pub fn remap(
    page: u64,
    frame: Frame,
    size: PageSize,
    prot: Protection,
) -> Result<Option<Mapping>, Error> {
    let mut writes = 0;
    let r = match active().remap(page, frame, size, prot, false, &mut writes) {
        // A missing table: a structural edit, under the lock.
        Err(Error::NotMapped(_)) => {
            with_tables(|t| t.remap(page, frame, size, prot, true, &mut writes))
        }
        r => r,
    };
    count_writes(writes);
    let before = r?;
    if before.is_some() {
        crate::tlb::invalidate_local(page);
    }
    Ok(before)
}

/// Unmaps `page` (lock-free) and invalidates it on this CPU. Returns the
/// mapping as it was when it disappeared (frame, accessed, dirty).
pub fn unmap(page: u64, size: PageSize) -> Result<Mapping, Error> {
    let before = unmap_entry(page, size)?;
    crate::tlb::invalidate_local(page);
    Ok(before)
}

/// [`unmap`] without the invalidation, which the caller owes this CPU
/// before it relies on the page being gone (batched unmaps invalidate after
/// the last entry). Counted: one PTE write.
pub fn unmap_entry(page: u64, size: PageSize) -> Result<Mapping, Error> {
    let before = active().unmap(page, size)?;
    percpu::count(Event::PteWrite);
    Ok(before)
}

/// Changes the protection of mapped `page` (lock-free; its frame and its
/// accessed and dirty bits stay) and invalidates it on this CPU. Returns the
/// mapping before.
pub fn set_protection(page: u64, size: PageSize, prot: Protection) -> Result<Mapping, Error> {
    let before = active().protect(page, size, prot)?;
    percpu::count(Event::PteWrite);
    crate::tlb::invalidate_local(page);
    Ok(before)
}

/// Clears the accessed and dirty bits of the mapping covering `page`
/// (lock-free) and invalidates it on this CPU (otherwise the CPU would not
/// set them again: it only writes them when its cached entry lacks them).
/// Returns the mapping as it was. One PTE write and one `invlpg`, whatever
/// the bits were.
pub fn clear_access_bits(page: u64) -> Result<Mapping, Error> {
    let tables = active();
    let size = tables.lookup(page).ok_or(Error::NotMapped(page))?.size;
    let base = page & !(size.bytes() - 1);
    let (before, writes) = tables.clear_bits(base, size, F::ACCESSED | F::DIRTY, true)?;
    count_writes(writes);
    crate::tlb::invalidate_local(page);
    Ok(before)
}

/// Clears the accessed bit of the leaf of `size` at `page` if it is set
/// (lock-free), and then invalidates the page on this CPU; the dirty bit
/// stays. Returns the mapping before. One PTE write and one `invlpg` if it
/// was accessed, nothing otherwise.
pub fn test_and_clear_accessed(page: u64, size: PageSize) -> Result<Mapping, Error> {
    let (before, writes) = active().clear_bits(page, size, F::ACCESSED, false)?;
    if writes > 0 {
        count_writes(writes);
        crate::tlb::invalidate_local(page);
    }
    Ok(before)
}

/// Creates every page table of `[start, end)`, so that [`leaf`] finds each
/// page's entry without allocating or locking. Counted: one PTE write per
/// table created.
pub fn populate(start: u64, end: u64) -> Result<(), Error> {
    let mut writes = 0;
    let r = with_tables(|t| t.populate(start, end, &mut writes));
    count_writes(writes);
    r
}

/// Takes `[start, end)` (a window being released) out of the tables under
/// the structural lock: every present leaf (returned with its mapping as it
/// was when it went away) and every page-table page that is empty
/// afterwards and either lies wholly in the range or spans no address
/// `in_use(first, last)` claims (unlinked and returned, **not freed**).
/// Counted: one PTE write per leaf and per table. Nothing is invalidated:
/// the caller flushes every CPU (the tables may sit in paging-structure
/// caches, the frames in TLBs) before it frees the tables or reuses the
/// frames.
pub(crate) fn clear_range(
    start: u64,
    end: u64,
    in_use: &dyn Fn(u64, u64) -> bool,
) -> (Vec<(u64, Mapping)>, Vec<u64>) {
    let mut leaves = Vec::new();
    let mut tables = Vec::new();
    let r = with_tables(|t| {
        t.walker().clear_range(
            start,
            end,
            &|lo, hi| !in_use(lo, hi),
            &mut |addr, entry, size| {
                let size = match size {
                    crate::pagetable::Size::Small => PageSize::Small,
                    crate::pagetable::Size::Large => PageSize::Large,
                };
                if let Some(m) = Mapping::from_entry(entry, size) {
                    leaves.push((addr, m));
                }
            },
            &mut |table| tables.push(table),
        )
    });
    // The walk only fails on a table the memory cannot reach, and every
    // table is a RAM frame in the direct map (the invariants above).
    let cleared = r.expect("window page tables are RAM frames in the direct map");
    count_writes(cleared.writes);
    (leaves, tables)
}

/// The level-1 entry of `addr`, if its page table exists (after
/// [`populate`]), found without the lock. It stays valid while the window
/// lives (see the invariants). Edit it only with compare-and-swap (the
/// hardware sets its accessed/dirty bits concurrently), count each write
/// ([`count_writes`]), respect [`crate::pagetable::LOCK`], and invalidate
/// after changing a present entry.
pub fn leaf(addr: u64) -> Option<&'static AtomicU64> {
    active().leaf(addr)
}

/// The mapping covering `addr`, if any (lock-free).
pub fn lookup(addr: u64) -> Option<Mapping> {
    active().lookup(addr)
}

/// The guest-physical address `virt` translates to, if mapped.
pub fn translate(virt: u64) -> Option<u64> {
    let m = lookup(virt)?;
    Some(m.frame.addr() + (virt & (m.size.bytes() - 1)))
}
