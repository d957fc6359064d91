//! Host memory mappings shared by the process baselines.

use std::io;

/// An anonymous mapping, unmapped on drop.
#[derive(Debug)]
pub(crate) struct Mapping {
    ptr: *mut u8,
    len: usize,
}

// SAFETY: the mapping is plain memory owned by this value; which threads
// touch its bytes is governed by the types that hold it.
unsafe impl Send for Mapping {}
// SAFETY: as for `Send`: `Mapping` itself only hands out the raw pointer.
unsafe impl Sync for Mapping {}

impl Mapping {
    /// Maps `len` bytes (a multiple of the page size) of zeroed anonymous
    /// memory: `MAP_SHARED` if `shared`, else `MAP_PRIVATE` (copy-on-write
    /// across `fork()`). Private heaps are populated at once and kept on
    /// 4 KiB pages (`MADV_NOHUGEPAGE`), so that both baselines copy and
    /// protect the same 4 KiB granule.
    pub(crate) fn anonymous(len: usize, shared: bool) -> io::Result<Mapping> {
        let kind = if shared {
            libc::MAP_SHARED
        } else {
            libc::MAP_PRIVATE
        };
        // SAFETY: a fresh anonymous mapping at an address the kernel picks
        // touches no existing memory.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                kind | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let mapping = Mapping {
            ptr: ptr.cast(),
            len,
        };
        if !shared {
            // SAFETY: advice on the mapping just made, which this value owns.
            if unsafe { libc::madvise(ptr, len, libc::MADV_NOHUGEPAGE) } != 0 {
                return Err(io::Error::last_os_error());
            }
            // Populate: every page present, as in a long-running database
            // (and userfaultfd write-protection then needs no pte markers).
            // SAFETY: `ptr..ptr+len` is the mapping just made; nothing else
            // refers to it yet.
            unsafe { std::ptr::write_bytes(mapping.ptr, 0, len) };
        }
        Ok(mapping)
    }

    pub(crate) fn ptr(&self) -> *mut u8 {
        self.ptr
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping this value owns; no reference
        // into it outlives the value (its owners hand out raw pointers only,
        // under their own documented lifetimes).
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}

/// Checks a heap size: non-zero and a multiple of the page size.
pub(crate) fn check_heap_len(len: usize) -> bool {
    len != 0 && len.is_multiple_of(crate::PAGE_SIZE)
}
