//! Owns raw access to the snapshotted heap: a bounds-checked view of the
//! bytes a [`Snapshotter`](dbos_snapshot::Snapshotter) hands out, so that
//! the table code above it is safe code working with offsets.
//!
//! Every access is checked against the heap's length and panics on a bad
//! offset: the table only computes offsets from its own header, so a bad
//! one is a bug in the table, never input from outside (the saver reads
//! the frozen view through the snapshotter instead, and checks what it
//! reads, see [`dump`](super::dump)).

use core::ptr::NonNull;

/// The live heap: `len` bytes at `ptr`, 8-byte aligned.
///
/// Reads take `&self`, writes take `&mut self`: the owner (the table,
/// behind the engine's lock) is the only code that touches these bytes in
/// this process, so a `&[u8]` handed out by [`bytes`](Self::bytes) never
/// sees them change while it lives. (The snapshot mechanism may read them
/// concurrently, from its own thread or process; it never writes them.)
#[derive(Debug)]
pub struct HeapMem {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: `HeapMem` is a pointer to plain bytes; which thread may touch them
// is governed by `&`/`&mut` access to the `HeapMem` (see the type's
// documentation), as for a `Vec<u8>`.
unsafe impl Send for HeapMem {}
// SAFETY: as for `Send`: shared access only reads.
unsafe impl Sync for HeapMem {}

impl HeapMem {
    /// A view of `len` bytes at `ptr`.
    ///
    /// # Safety
    ///
    /// `ptr` must be non-null, 8-byte aligned and valid for reads and writes
    /// of `len` bytes for as long as the returned value (or anything built
    /// on it) lives, and no other code in this process may access those
    /// bytes meanwhile (a snapshot mechanism may read them).
    pub unsafe fn new(ptr: *mut u8, len: usize) -> HeapMem {
        assert!(
            !ptr.is_null() && (ptr as usize).is_multiple_of(8),
            "heap pointer null or unaligned"
        );
        HeapMem {
            // SAFETY: checked non-null just above.
            ptr: unsafe { NonNull::new_unchecked(ptr) },
            len,
        }
    }

    /// The heap's length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True for a heap of no bytes.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn check(&self, off: usize, len: usize) {
        assert!(
            off.checked_add(len).is_some_and(|end| end <= self.len),
            "heap access {off}+{len} outside the heap of {} bytes",
            self.len
        );
    }

    /// The 8-byte word at `off` (a multiple of 8).
    pub fn u64_at(&self, off: usize) -> u64 {
        self.check(off, 8);
        assert!(off.is_multiple_of(8), "unaligned heap word at {off}");
        // SAFETY: in bounds and 8-byte aligned (checked; the heap's start
        // is aligned), valid for reads (`new`'s contract).
        unsafe { self.ptr.as_ptr().add(off).cast::<u64>().read() }
    }

    /// Sets the 8-byte word at `off` (a multiple of 8).
    pub fn set_u64(&mut self, off: usize, value: u64) {
        self.check(off, 8);
        assert!(off.is_multiple_of(8), "unaligned heap word at {off}");
        // SAFETY: in bounds and aligned (checked), valid for writes and
        // exclusively ours (`new`'s contract, `&mut self`).
        unsafe { self.ptr.as_ptr().add(off).cast::<u64>().write(value) }
    }

    /// The `len` bytes at `off`.
    pub fn bytes(&self, off: usize, len: usize) -> &[u8] {
        self.check(off, len);
        // SAFETY: in bounds (checked) and valid for reads; nothing writes
        // them while the returned borrow of `self` lives (writes need
        // `&mut self`).
        unsafe { core::slice::from_raw_parts(self.ptr.as_ptr().add(off), len) }
    }

    /// Copies `src` to the heap at `off`.
    pub fn write(&mut self, off: usize, src: &[u8]) {
        self.check(off, src.len());
        // SAFETY: in bounds (checked), valid for writes, exclusively ours;
        // `src` cannot overlap the heap (it would be a borrow of `self`).
        unsafe {
            core::ptr::copy_nonoverlapping(src.as_ptr(), self.ptr.as_ptr().add(off), src.len())
        }
    }

    /// Zeroes `len` bytes at `off`.
    pub fn zero(&mut self, off: usize, len: usize) {
        self.check(off, len);
        // SAFETY: in bounds (checked), valid for writes, exclusively ours.
        unsafe { core::ptr::write_bytes(self.ptr.as_ptr().add(off), 0, len) }
    }
}
