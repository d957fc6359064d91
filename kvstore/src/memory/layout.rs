//! Owns the heap's layout: where the header, the index and the arena lie,
//! the header's fields, the blocks' size classes and the record header.
//! Everything is an offset from the heap's start (never a pointer), so a
//! frozen copy of the heap's bytes can be interpreted on its own: the saver
//! walks a snapshot's view with these definitions.
//!
//! ```text
//! 0          header (HEADER_BYTES): magic, version, geometry, counters,
//!            the allocator's bump offset, one free-list head per class,
//!            the count of records with an expiry
//! 4096       index: INDEX_SLOTS u64 bucket heads (offset of the first
//!            record of the bucket's chain, 0 = empty)
//! arena      blocks, carved from `bump` upwards, each of its class's size;
//!            a block is never split or merged, its class never changes
//! ```
//!
//! A block starts with a word `state << 32 | class` (state [`LIVE`] or
//! [`FREE`]); a live block holds a record:
//!
//! ```text
//! +0  state << 32 | class
//! +8  next record of the bucket's chain (0 = end)
//! +16 hash of the key
//! +24 expiry (Unix ms; meaningful if FLAG_EXPIRES)
//! +32 key length << 32 | value length
//! +40 flags
//! +48 key bytes, then value bytes
//! ```
//!
//! A free block keeps its first word (with state [`FREE`]) and holds the
//! next block of its class's free list at +8.
//!
//! Words are stored in the machine's byte order: the heap is only ever read
//! by the machine that wrote it (the snapshot *file* has its own,
//! little-endian, format: [`format`](super::format)).

/// "DBKVHEAP": the header's first word.
pub const HEAP_MAGIC: u64 = u64::from_le_bytes(*b"DBKVHEAP");
/// The heap layout's version.
pub const HEAP_VERSION: u64 = 1;

/// Header field offsets (bytes from the heap's start).
pub const H_MAGIC: usize = 0;
pub const H_VERSION: usize = 8;
pub const H_HEAP_LEN: usize = 16;
pub const H_INDEX_OFF: usize = 24;
pub const H_INDEX_SLOTS: usize = 32;
pub const H_ARENA_START: usize = 40;
pub const H_ARENA_END: usize = 48;
/// The first never-allocated byte of the arena.
pub const H_BUMP: usize = 56;
/// Live records.
pub const H_COUNT: usize = 64;
/// Bytes of live blocks (their classes' sizes).
pub const H_USED: usize = 72;
/// The hash seed.
pub const H_SEED: usize = 80;
/// Free-list heads, one word per class.
pub const H_FREE_HEADS: usize = 88;

/// Live records with an expiry (`FLAG_EXPIRES`): INFO's `expires`.
pub const H_EXPIRING: usize = H_FREE_HEADS + CLASSES * 8;
/// The header's room (the index starts here, page-aligned).
pub const HEADER_BYTES: usize = 4096;

/// Smallest heap the table accepts.
pub const MIN_HEAP: usize = 4 * 4096;

/// A block's state word values (upper half of its first word).
pub const LIVE: u64 = 0x4C49_5645; // "LIVE"
pub const FREE: u64 = 0x4652_4545; // "FREE"

/// Record header field offsets within a block.
pub const R_STATE: usize = 0;
pub const R_NEXT: usize = 8;
pub const R_HASH: usize = 16;
pub const R_EXPIRES: usize = 24;
pub const R_LENS: usize = 32;
pub const R_FLAGS: usize = 40;
/// Bytes before the key.
pub const RECORD_HEADER: usize = 48;
/// `R_FLAGS` bit: the record has an expiry.
pub const FLAG_EXPIRES: u64 = 1;

/// Longest key and value.
pub const MAX_KEY: usize = 512;
pub const MAX_VALUE: usize = 1 << 20;

/// Number of size classes: enough for the largest record.
pub const CLASSES: usize = 58;

/// The size of blocks of `class`: 64, 80, 96, 112, 128, 160, ... (four
/// steps per doubling, so a record wastes less than a quarter of its block).
pub const fn class_size(class: usize) -> usize {
    let d = class / 4;
    let s = class % 4;
    (64 << d) + s * (16 << d)
}

/// The smallest class whose blocks hold `bytes`, if any.
pub fn class_for(bytes: usize) -> Option<usize> {
    (0..CLASSES).find(|&c| class_size(c) >= bytes)
}

/// The block size a record of these lengths needs.
pub const fn record_bytes(key_len: usize, value_len: usize) -> usize {
    RECORD_HEADER + key_len + value_len
}

const _: () = assert!(H_EXPIRING + 8 <= HEADER_BYTES);
const _: () = assert!(class_size(CLASSES - 1) >= record_bytes(MAX_KEY, MAX_VALUE));
const _: () = assert!(class_size(CLASSES - 2) < record_bytes(MAX_KEY, MAX_VALUE));

/// The index's size for a heap of `heap_len` bytes: one bucket per 128
/// bytes of heap (a power of two, at least 16), so chains stay short while
/// the heap is full of small records; the index is 1/16 of the heap.
pub fn index_slots(heap_len: usize) -> usize {
    let want = (heap_len / 128).max(16);
    // The largest power of two <= want.
    1 << (usize::BITS - 1 - want.leading_zeros())
}

/// Geometry of a heap of `heap_len` bytes: (index offset, slots, arena start).
pub fn geometry(heap_len: usize) -> (usize, usize, usize) {
    let slots = index_slots(heap_len);
    let index_bytes = (slots * 8).next_multiple_of(4096);
    (HEADER_BYTES, slots, HEADER_BYTES + index_bytes)
}

/// A native-endian word from `bytes` at `off` (which must be in range).
pub fn word(bytes: &[u8], off: usize) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&bytes[off..off + 8]);
    u64::from_ne_bytes(w)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_grow_and_cover_records() {
        assert_eq!(class_size(0), 64);
        assert_eq!(class_size(3), 112);
        assert_eq!(class_size(4), 128);
        assert_eq!(class_size(5), 160);
        for c in 1..CLASSES {
            assert!(class_size(c) > class_size(c - 1));
            assert!(class_size(c).is_multiple_of(16));
        }
        assert_eq!(class_for(1), Some(0));
        assert_eq!(class_for(65), Some(1));
        assert_eq!(
            class_for(record_bytes(MAX_KEY, MAX_VALUE)),
            Some(CLASSES - 1)
        );
        assert_eq!(class_for(class_size(CLASSES - 1) + 1), None);
    }

    #[test]
    fn geometry_fits() {
        assert_eq!(index_slots(MIN_HEAP), 128);
        assert_eq!(index_slots(64 << 20), 1 << 19);
        let (io, slots, arena) = geometry(64 << 20);
        assert_eq!(io, 4096);
        assert_eq!(arena, 4096 + slots * 8);
    }
}
