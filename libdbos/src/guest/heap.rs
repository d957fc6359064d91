//! The global allocator, over the heap region named in the boot information.

use linked_list_allocator::LockedHeap;

#[global_allocator]
static HEAP: LockedHeap = LockedHeap::empty();

/// Hands the heap region (a direct-map virtual range) to the allocator.
/// Called once, by the bootstrap CPU, before anything allocates.
pub(crate) fn init(start_virt: u64, len: u64) {
    // SAFETY: the region comes from the boot memory map (kind Heap), is mapped
    // writable in the direct map, and is used by nothing else; `init` runs
    // once, before the first allocation.
    unsafe { HEAP.lock().init(start_virt as *mut u8, len as usize) };
}

/// Bytes currently free in the heap.
pub fn free_bytes() -> usize {
    HEAP.lock().free()
}
