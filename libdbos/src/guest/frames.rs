//! The physical frame allocator: 4 KiB and 2 MiB frames from the usable RAM
//! regions of the boot memory map.
//!
//! Fresh frames are handed out in address order from each region (a bump
//! pointer); a 2 MiB frame first aligns the bump pointer, and the 4 KiB frames
//! it skips go on the small free list. Freed frames go on free lists (one per
//! size) threaded through the frames themselves: the first word of a free
//! frame, reached through the direct map, holds the next one. One spin lock
//! guards everything, taken with interrupts disabled so that a hook running
//! in an interrupt on the same CPU can allocate too.

use crate::abi::{MemoryKind, MemoryRegion, MAX_MEMORY_REGIONS};
use crate::memory::phys_to_virt;
use crate::platform::{PageSize, LARGE_PAGE_SIZE, PAGE_SIZE};
use spin::Mutex;
use x86_64::structures::paging::PhysFrame;
use x86_64::PhysAddr;

const NONE: u64 = u64::MAX;

struct Frames {
    regions: [(u64, u64); MAX_MEMORY_REGIONS],
    count: usize,
    /// Index of the region the bump pointer is in, and the next fresh frame.
    current: usize,
    next: u64,
    free_small: u64,
    free_large: u64,
    /// Frames on the free lists, in 4 KiB units.
    free_units: u64,
}

static FRAMES: Mutex<Frames> = Mutex::new(Frames {
    regions: [(0, 0); MAX_MEMORY_REGIONS],
    count: 0,
    current: 0,
    next: 0,
    free_small: NONE,
    free_large: NONE,
    free_units: 0,
});

fn locked<R>(f: impl FnOnce(&mut Frames) -> R) -> R {
    x86_64::instructions::interrupts::without_interrupts(|| f(&mut FRAMES.lock()))
}

/// Takes the usable regions of the memory map. Called once at boot.
pub(crate) fn init(map: &[MemoryRegion]) {
    locked(|f| {
        for r in map.iter().filter(|r| r.kind() == Some(MemoryKind::Usable)) {
            let start = r.start.next_multiple_of(PAGE_SIZE);
            let end = r.end() & !(PAGE_SIZE - 1);
            if start < end && f.count < MAX_MEMORY_REGIONS {
                let i = f.count;
                f.regions[i] = (start, end);
                f.count += 1;
            }
        }
        f.current = 0;
        f.next = if f.count > 0 { f.regions[0].0 } else { 0 };
    })
}

impl Frames {
    fn pop(&mut self, size: PageSize) -> Option<u64> {
        let head = match size {
            PageSize::Small => &mut self.free_small,
            PageSize::Large => &mut self.free_large,
        };
        if *head == NONE {
            return None;
        }
        let frame = *head;
        // SAFETY: `frame` is on a free list, so it is free RAM owned by the
        // allocator whose first word holds the next free frame.
        *head = unsafe { *(phys_to_virt(frame) as *const u64) };
        self.free_units -= size.bytes() / PAGE_SIZE;
        Some(frame)
    }

    fn push(&mut self, frame: u64, size: PageSize) {
        let head = match size {
            PageSize::Small => &mut self.free_small,
            PageSize::Large => &mut self.free_large,
        };
        // SAFETY: the frame is free (given back or skipped), so we may write it.
        unsafe { *(phys_to_virt(frame) as *mut u64) = *head };
        *head = frame;
        self.free_units += size.bytes() / PAGE_SIZE;
    }

    fn bump(&mut self, size: PageSize) -> Option<u64> {
        self.bump_aligned(size.bytes(), size.bytes())
    }

    /// `bytes` of fresh frames, contiguous, aligned to `align`.
    fn bump_aligned(&mut self, bytes: u64, align: u64) -> Option<u64> {
        while self.current < self.count {
            let (_, end) = self.regions[self.current];
            let start = self.next.next_multiple_of(align);
            if start + bytes <= end {
                // Keep the frames skipped for alignment.
                let mut skipped = self.next;
                while skipped < start {
                    self.push(skipped, PageSize::Small);
                    skipped += PAGE_SIZE;
                }
                self.next = start + bytes;
                return Some(start);
            }
            self.current += 1;
            if self.current < self.count {
                self.next = self.regions[self.current].0;
            }
        }
        None
    }
}

/// Allocates one frame of `size`; contents unspecified. `None` when exhausted.
pub fn alloc_sized(size: PageSize) -> Option<PhysFrame> {
    let addr = locked(|f| f.pop(size).or_else(|| f.bump(size)))?;
    Some(PhysFrame::containing_address(PhysAddr::new(addr)))
}

/// Allocates `pages` physically contiguous 4 KiB frames (2 MiB aligned
/// when `pages` is a multiple of 512): a freed frame of that size (512
/// pages or 1) if there is one, else fresh memory; contents unspecified. `None` when
/// no such run is left. Give them back with [`free_contiguous`].
pub fn alloc_contiguous(pages: u64) -> Option<u64> {
    let large_pages = LARGE_PAGE_SIZE / PAGE_SIZE;
    let bytes = pages.checked_mul(PAGE_SIZE).filter(|&b| b > 0)?;
    let align = if pages.is_multiple_of(large_pages) {
        LARGE_PAGE_SIZE
    } else {
        PAGE_SIZE
    };
    // A freed frame of the size first, so that a run given back and asked
    // for again (DMA arenas declared and dropped in a loop) is reused.
    locked(|f| {
        let freed = match pages {
            1 => f.pop(PageSize::Small),
            p if p == large_pages => f.pop(PageSize::Large),
            _ => None,
        };
        freed.or_else(|| f.bump_aligned(bytes, align))
    })
}

/// Gives back `pages` frames from [`alloc_contiguous`] starting at `start`:
/// 2 MiB-aligned whole large frames as large frames, the rest as 4 KiB ones.
///
/// # Safety
/// The frames must have come from one [`alloc_contiguous`] of `pages` and
/// must no longer be mapped or used.
pub unsafe fn free_contiguous(start: u64, pages: u64) {
    let end = start + pages * PAGE_SIZE;
    locked(|f| {
        let mut at = start;
        while at < end {
            if at.is_multiple_of(LARGE_PAGE_SIZE) && at + LARGE_PAGE_SIZE <= end {
                f.push(at, PageSize::Large);
                at += LARGE_PAGE_SIZE;
            } else {
                f.push(at, PageSize::Small);
                at += PAGE_SIZE;
            }
        }
    })
}

/// Allocates one 4 KiB frame; its contents are unspecified.
pub fn alloc() -> Option<PhysFrame> {
    alloc_sized(PageSize::Small)
}

/// Allocates one 4 KiB frame filled with zeroes.
pub fn alloc_zeroed() -> Option<PhysFrame> {
    let frame = alloc()?;
    // SAFETY: the frame was just allocated, so nothing else refers to it, and
    // the direct map covers it writable.
    unsafe {
        core::ptr::write_bytes(
            phys_to_virt(frame.start_address().as_u64()) as *mut u8,
            0,
            PAGE_SIZE as usize,
        )
    };
    Some(frame)
}

/// Returns a frame of `size` to the allocator.
///
/// # Safety
/// The frame must have come from [`alloc_sized`] with the same size and must
/// no longer be mapped or used.
pub unsafe fn free_sized(frame: u64, size: PageSize) {
    debug_assert_eq!(frame % size.bytes(), 0);
    locked(|f| f.push(frame, size));
}

/// Returns a 4 KiB frame to the allocator.
///
/// # Safety
/// As [`free_sized`].
pub unsafe fn free(frame: PhysFrame) {
    // SAFETY: forwarded contract.
    unsafe { free_sized(frame.start_address().as_u64(), PageSize::Small) }
}

/// Frames still available (fresh plus freed), in 4 KiB units.
pub fn available() -> u64 {
    locked(|f| {
        let mut n = f.free_units;
        if f.current < f.count {
            n += (f.regions[f.current].1 - f.next) / PAGE_SIZE;
            for &(s, e) in &f.regions[f.current + 1..f.count] {
                n += (e - s) / PAGE_SIZE;
            }
        }
        n
    })
}

const _: () = assert!(LARGE_PAGE_SIZE.is_multiple_of(PAGE_SIZE));

/// Zeroed frames for new page tables.
pub struct ZeroedFrames;

impl crate::pagetable::TableFrames for ZeroedFrames {
    fn alloc_zeroed_table(&self) -> Option<u64> {
        alloc_zeroed().map(|f| f.start_address().as_u64())
    }

    fn free_table(&self, phys: u64) {
        // SAFETY: the walker returns only tables it got from
        // `alloc_zeroed_table` and that no entry points to.
        unsafe { free_sized(phys, PageSize::Small) }
    }
}
