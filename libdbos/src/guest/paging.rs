//! Edits of the active page tables, reached through the direct map, counted.
//!
//! Invariants relied on here:
//! - every paging structure is a RAM frame, so the direct map at
//!   `DIRECT_MAP_BASE` covers it;
//! - all edits of the active tables go through [`with_tables`], which holds
//!   one spin lock with interrupts disabled, so two CPUs never write the same
//!   table at once and a hook interrupting the lock holder on its own CPU
//!   cannot deadlock on it.
//!
//! TLB rule: mapping a page that was not present needs no invalidation (x86
//! does not cache non-present entries). After a present entry changes or goes
//! away, the old translation may still be cached, so [`unmap`] and
//! [`set_protection`] invalidate the page on this CPU (`invlpg`) before
//! returning; other CPUs are the caller's business
//! (`smp::invalidate_all`, or Tabby's lazy repair).

use crate::abi::DIRECT_MAP_BASE;
use crate::frames::ZeroedFrames;
use crate::pagetable::{flags_for, Mapping, PageTables};
use crate::percpu::{self, Event};
use crate::platform::{Error, Frame, PageSize, Protection};
use spin::Mutex;
use x86_64::registers::control::Cr3;

/// Serialises edits of the active page tables.
static TABLES: Mutex<()> = Mutex::new(());

fn with_tables<R>(f: impl FnOnce(&mut PageTables<'static>) -> R) -> R {
    x86_64::instructions::interrupts::without_interrupts(|| {
        let _guard = TABLES.lock();
        let root = Cr3::read().0.start_address().as_u64();
        // SAFETY: CR3 holds the active PML4, every table is a RAM frame in the
        // direct map (invariant above), and the lock makes this the only view
        // that edits them for the duration of `f`.
        let mut tables = unsafe { PageTables::new(root, DIRECT_MAP_BASE) };
        f(&mut tables)
    })
}

/// Maps `page` to `frame`. Counted: one PTE write plus one per new table.
pub fn map(page: u64, frame: Frame, size: PageSize, prot: Protection) -> Result<(), Error> {
    let writes = with_tables(|t| t.map(page, frame, size, prot, &mut ZeroedFrames))?;
    let me = percpu::current();
    for _ in 0..writes {
        me.count(Event::PteWrite);
    }
    Ok(())
}

/// Unmaps `page` and invalidates it on this CPU. Returns the frame.
pub fn unmap(page: u64, size: PageSize) -> Result<Frame, Error> {
    let frame = with_tables(|t| t.unmap(page, size))?;
    percpu::count(Event::PteWrite);
    crate::tlb::invalidate_local(page);
    Ok(frame)
}

/// Changes the protection of mapped `page` (clearing its accessed and dirty
/// bits) and invalidates it on this CPU.
pub fn set_protection(page: u64, size: PageSize, prot: Protection) -> Result<(), Error> {
    with_tables(|t| t.set_flags(page, size, flags_for(prot)))?;
    percpu::count(Event::PteWrite);
    crate::tlb::invalidate_local(page);
    Ok(())
}

/// Clears the accessed and dirty bits of mapped `page` and invalidates it on
/// this CPU (otherwise the CPU would not set them again: it only writes them
/// when its cached entry lacks them). Returns the mapping as it was.
pub fn clear_access_bits(page: u64) -> Result<Mapping, Error> {
    let before = with_tables(|t| {
        let m = t.lookup(page).ok_or(Error::NotMapped(page))?;
        let prot = if m.writable {
            Protection::ReadWrite
        } else {
            Protection::ReadOnly
        };
        t.set_flags(page, m.size, flags_for(prot))?;
        Ok::<_, Error>(m)
    })?;
    percpu::count(Event::PteWrite);
    crate::tlb::invalidate_local(page);
    Ok(before)
}

/// The mapping covering `addr`, if any.
pub fn lookup(addr: u64) -> Option<Mapping> {
    with_tables(|t| t.lookup(addr))
}

/// The guest-physical address `virt` translates to, if mapped.
pub fn translate(virt: u64) -> Option<u64> {
    let m = lookup(virt)?;
    Some(m.frame.addr() + (virt & (m.size.bytes() - 1)))
}
