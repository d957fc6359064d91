//! Owns the allocator of the heap's arena: blocks of fixed size classes
//! (see [`layout`](super::layout)), carved from a bump offset and recycled
//! through one free list per class whose heads live in the header.
//!
//! A block never changes class, is never split and never merged, so the
//! arena from its start to `bump` is always a sequence of whole blocks,
//! each announcing its class in its first word: the saver walks it
//! linearly. When a class's list is empty and the bump offset cannot carve
//! a block, a free block of a larger class is used whole (wasting the
//! difference) before the heap is declared full. Memory freed in one class
//! is not available to smaller or larger ones otherwise: fragmentation is
//! accepted for simplicity.

use super::heap::HeapMem;
use super::layout::{
    class_size, CLASSES, FREE, H_ARENA_END, H_BUMP, H_FREE_HEADS, H_USED, LIVE, R_NEXT, R_STATE,
};

fn head_off(class: usize) -> usize {
    H_FREE_HEADS + class * 8
}

/// The class of the block at `block`.
pub fn block_class(heap: &HeapMem, block: usize) -> usize {
    let w = heap.u64_at(block + R_STATE);
    debug_assert_eq!(w >> 32, LIVE, "block {block} is not live");
    (w & 0xFFFF_FFFF) as usize
}

/// Allocates a block of `class` (or larger); returns its offset, its state
/// word set to live. `None` if the heap has no room: nothing changed.
pub fn allocate(heap: &mut HeapMem, class: usize) -> Option<usize> {
    debug_assert!(class < CLASSES);
    let got = pop(heap, class).or_else(|| {
        let bump = heap.u64_at(H_BUMP) as usize;
        let end = heap.u64_at(H_ARENA_END) as usize;
        let size = class_size(class);
        if end - bump >= size {
            heap.set_u64(H_BUMP, (bump + size) as u64);
            Some((bump, class))
        } else {
            (class + 1..CLASSES).find_map(|c| pop(heap, c))
        }
    });
    let (block, c) = got?;
    heap.set_u64(block + R_STATE, (LIVE << 32) | c as u64);
    heap.set_u64(block + R_NEXT, 0);
    let used = heap.u64_at(H_USED);
    heap.set_u64(H_USED, used + class_size(c) as u64);
    Some(block)
}

/// Takes the first block of `class`'s free list.
fn pop(heap: &mut HeapMem, class: usize) -> Option<(usize, usize)> {
    let block = heap.u64_at(head_off(class)) as usize;
    if block == 0 {
        return None;
    }
    let next = heap.u64_at(block + R_NEXT);
    heap.set_u64(head_off(class), next);
    Some((block, class))
}

/// Frees the live block at `block` onto its class's free list.
pub fn free(heap: &mut HeapMem, block: usize) {
    let class = block_class(heap, block);
    heap.set_u64(block + R_STATE, (FREE << 32) | class as u64);
    let head = heap.u64_at(head_off(class));
    heap.set_u64(block + R_NEXT, head);
    heap.set_u64(head_off(class), block as u64);
    let used = heap.u64_at(H_USED);
    heap.set_u64(H_USED, used - class_size(class) as u64);
}

/// Empties every free list (the arena is being reset).
pub fn reset(heap: &mut HeapMem, arena_start: usize) {
    for c in 0..CLASSES {
        heap.set_u64(head_off(c), 0);
    }
    heap.set_u64(H_BUMP, arena_start as u64);
    heap.set_u64(H_USED, 0);
}
