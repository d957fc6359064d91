//! The physical frame allocator: 4 KiB frames from the usable RAM regions of
//! the boot memory map.
//!
//! Fresh frames are handed out in address order from each region (a bump
//! pointer); freed frames go on a free list threaded through the frames
//! themselves (the first word of a free frame, reached through the direct
//! map, holds the next one). One spin lock guards both.

use crate::abi::{MemoryKind, MemoryRegion, MAX_MEMORY_REGIONS};
use crate::memory::phys_to_virt;
use spin::Mutex;
use x86_64::structures::paging::{FrameAllocator, PhysFrame, Size4KiB};
use x86_64::PhysAddr;

const FRAME: u64 = 4096;
const NONE: u64 = u64::MAX;

struct Frames {
    regions: [(u64, u64); MAX_MEMORY_REGIONS],
    count: usize,
    /// Index of the region the bump pointer is in, and the next fresh frame.
    current: usize,
    next: u64,
    free_head: u64,
    free_frames: u64,
}

static FRAMES: Mutex<Frames> = Mutex::new(Frames {
    regions: [(0, 0); MAX_MEMORY_REGIONS],
    count: 0,
    current: 0,
    next: 0,
    free_head: NONE,
    free_frames: 0,
});

/// Takes the usable regions of the memory map. Called once at boot.
pub(crate) fn init(map: &[MemoryRegion]) {
    let mut f = FRAMES.lock();
    for r in map.iter().filter(|r| r.kind() == Some(MemoryKind::Usable)) {
        let start = r.start.next_multiple_of(FRAME);
        let end = r.end() & !(FRAME - 1);
        if start < end && f.count < MAX_MEMORY_REGIONS {
            let i = f.count;
            f.regions[i] = (start, end);
            f.count += 1;
        }
    }
    f.current = 0;
    f.next = if f.count > 0 { f.regions[0].0 } else { 0 };
}

/// Allocates one frame; its contents are unspecified. `None` when RAM is exhausted.
pub fn alloc() -> Option<PhysFrame> {
    let mut f = FRAMES.lock();
    if f.free_head != NONE {
        let frame = f.free_head;
        // SAFETY: `frame` is on the free list, so it is a free RAM frame owned
        // by the allocator whose first word holds the next free frame.
        f.free_head = unsafe { *(phys_to_virt(frame) as *const u64) };
        f.free_frames -= 1;
        return Some(PhysFrame::containing_address(PhysAddr::new(frame)));
    }
    while f.current < f.count {
        let (_, end) = f.regions[f.current];
        if f.next < end {
            let frame = f.next;
            f.next += FRAME;
            return Some(PhysFrame::containing_address(PhysAddr::new(frame)));
        }
        f.current += 1;
        if f.current < f.count {
            f.next = f.regions[f.current].0;
        }
    }
    None
}

/// Allocates one frame filled with zeroes.
pub fn alloc_zeroed() -> Option<PhysFrame> {
    let frame = alloc()?;
    // SAFETY: the frame was just allocated, so nothing else refers to it, and
    // the direct map covers it writable.
    unsafe {
        core::ptr::write_bytes(
            phys_to_virt(frame.start_address().as_u64()) as *mut u8,
            0,
            FRAME as usize,
        )
    };
    Some(frame)
}

/// Returns a frame to the allocator.
///
/// # Safety
/// The frame must have come from [`alloc`] and must no longer be mapped or used.
pub unsafe fn free(frame: PhysFrame) {
    let addr = frame.start_address().as_u64();
    let mut f = FRAMES.lock();
    // SAFETY: the caller gives the frame back, so we may write into it.
    unsafe { *(phys_to_virt(addr) as *mut u64) = f.free_head };
    f.free_head = addr;
    f.free_frames += 1;
}

/// Frames still available (fresh plus freed).
pub fn available() -> u64 {
    let f = FRAMES.lock();
    let mut n = f.free_frames;
    if f.current < f.count {
        n += (f.regions[f.current].1 - f.next) / FRAME;
        for &(s, e) in &f.regions[f.current + 1..f.count] {
            n += (e - s) / FRAME;
        }
    }
    n
}

/// The allocator as the `x86_64` crate's page-table code wants it.
pub(crate) struct ZeroedFrames;

// SAFETY: `alloc_zeroed` hands out each frame at most once until it is freed.
unsafe impl FrameAllocator<Size4KiB> for ZeroedFrames {
    fn allocate_frame(&mut self) -> Option<PhysFrame<Size4KiB>> {
        alloc_zeroed()
    }
}
