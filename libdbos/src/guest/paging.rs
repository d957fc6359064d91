//! Edits of the active page tables, reached through the direct map.
//!
//! Invariant relied on here: every paging structure is a RAM frame, so the
//! direct map at [`DIRECT_MAP_BASE`] covers it; and all edits of the active
//! tables go through [`TABLES`]'s lock, so two CPUs never write the same
//! table at once. TLB rule: after a present entry changes or goes away the
//! old translation may still be cached, so every such edit here invalidates
//! the page on this CPU (`invlpg`) before returning; other CPUs are the
//! caller's business.

use crate::abi::DIRECT_MAP_BASE;
use crate::frames::ZeroedFrames;
use spin::Mutex;
use x86_64::registers::control::Cr3;
use x86_64::structures::paging::mapper::{MapToError, TranslateResult, UnmapError};
use x86_64::structures::paging::{
    Mapper, OffsetPageTable, Page, PageTable, PhysFrame, Size4KiB, Translate,
};
use x86_64::{PhysAddr, VirtAddr};

pub use x86_64::structures::paging::{PageTableFlags, PhysFrame as Frame};

/// Serialises edits of the active page tables.
static TABLES: Mutex<()> = Mutex::new(());

/// Why a mapping call failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MapError {
    /// The page is already mapped.
    AlreadyMapped,
    /// The page is not mapped.
    NotMapped,
    /// A larger page covers the address.
    HugePage,
    /// No frame for an intermediate table.
    OutOfFrames,
}

fn with_tables<R>(f: impl FnOnce(&mut OffsetPageTable<'static>) -> R) -> R {
    let _guard = TABLES.lock();
    let (pml4, _) = Cr3::read();
    let pml4_virt = DIRECT_MAP_BASE + pml4.start_address().as_u64();
    // SAFETY: CR3 points at the active PML4, a RAM frame reachable through the
    // direct map (invariant above), and the lock makes this the only mutable
    // view of the tables for the duration of `f`.
    let mut mapper = unsafe {
        OffsetPageTable::new(
            &mut *(pml4_virt as *mut PageTable),
            VirtAddr::new(DIRECT_MAP_BASE),
        )
    };
    f(&mut mapper)
}

/// Maps the 4 KiB page at `virt` to `frame` with `flags` (PRESENT is added).
pub fn map_4k(virt: u64, frame: PhysFrame, flags: PageTableFlags) -> Result<(), MapError> {
    let page = Page::<Size4KiB>::containing_address(VirtAddr::new(virt));
    with_tables(|m| {
        // SAFETY: mapping a page that is not mapped yet cannot invalidate any
        // reference the program holds; what the frame is used for is the
        // caller's contract.
        let flush = unsafe {
            m.map_to(
                page,
                frame,
                flags | PageTableFlags::PRESENT,
                &mut ZeroedFrames,
            )
        };
        match flush {
            // The entry was not present before, so no stale translation can be
            // cached; invalidating is still cheap and keeps the rule simple.
            Ok(flush) => {
                flush.flush();
                Ok(())
            }
            Err(MapToError::PageAlreadyMapped(_)) => Err(MapError::AlreadyMapped),
            Err(MapToError::ParentEntryHugePage) => Err(MapError::HugePage),
            Err(MapToError::FrameAllocationFailed) => Err(MapError::OutOfFrames),
        }
    })
}

/// Unmaps the 4 KiB page at `virt` and returns the frame it mapped. The page
/// is invalidated on this CPU only.
pub fn unmap_4k(virt: u64) -> Result<PhysFrame, MapError> {
    let page = Page::<Size4KiB>::containing_address(VirtAddr::new(virt));
    with_tables(|m| match m.unmap(page) {
        Ok((frame, flush)) => {
            flush.flush();
            Ok(frame)
        }
        Err(UnmapError::PageNotMapped) => Err(MapError::NotMapped),
        Err(UnmapError::ParentEntryHugePage) => Err(MapError::HugePage),
        Err(UnmapError::InvalidFrameAddress(_)) => Err(MapError::NotMapped),
    })
}

/// The guest-physical address `virt` translates to, if mapped.
pub fn translate(virt: u64) -> Option<u64> {
    let v = VirtAddr::try_new(virt).ok()?;
    with_tables(|m| match m.translate(v) {
        TranslateResult::Mapped { frame, offset, .. } => {
            Some(frame.start_address().as_u64() + offset)
        }
        _ => None,
    })
}

/// The flags of the 4 KiB page mapping `virt`, if it is mapped with one.
pub fn flags(virt: u64) -> Option<PageTableFlags> {
    let v = VirtAddr::try_new(virt).ok()?;
    with_tables(|m| match m.translate(v) {
        TranslateResult::Mapped { flags, .. } => Some(flags),
        _ => None,
    })
}

/// Physical address of the active PML4.
pub fn root() -> PhysAddr {
    Cr3::read().0.start_address()
}
