//! Memory for the pools' frames and per-page arrays ([`Mapping`],
//! [`ZeroedArray`]).
//!
//! In a process: one anonymous `mmap(MAP_NORESERVE)` mapping per window or
//! array (never one mapping per page, so `vm.max_map_count` is not a
//! limit), released page by page with `madvise(MADV_DONTNEED)`, which zaps
//! page-table entries without splitting the mapping. In the guest
//! (`target_os = "none"`, used by the hash pool only): a zeroed, 4 KiB
//! aligned heap allocation, freed on drop, never released page by page.

use super::{Latch, PoolError};
use crate::PAGE_SIZE;
use core::ptr::NonNull;
use core::sync::atomic::{AtomicU64, AtomicU8};

#[cfg(not(target_os = "none"))]
fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

/// Zeroed memory owned by a pool: in a process one private anonymous
/// mapping, unmapped on drop; in the guest a heap allocation.
pub(crate) struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping is plain memory owned by this value; concurrent access
// to its contents is governed by the pools' latches.
unsafe impl Send for Mapping {}
// SAFETY: as above; `&Mapping` only hands out its address.
unsafe impl Sync for Mapping {}

#[cfg(not(target_os = "none"))]
impl Mapping {
    /// `len` bytes (rounded up to 4 KiB) of zeroed, lazily backed memory.
    pub fn anonymous(len: usize) -> Result<Mapping, PoolError> {
        let len = len.max(1).next_multiple_of(PAGE_SIZE);
        // SAFETY: a new private anonymous mapping at an address the kernel
        // picks; it overlaps nothing of ours.
        let p = unsafe {
            libc::mmap(
                core::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(PoolError::Setup {
                what: "mmap of an anonymous window",
                errno: errno(),
            });
        }
        Ok(Mapping {
            ptr: NonNull::new(p.cast()).expect("mmap never returns null on success"),
            len,
        })
    }

    /// The first byte.
    pub fn ptr(&self) -> NonNull<u8> {
        self.ptr
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Releases `len` bytes at `offset` (page aligned): they read as zero
    /// afterwards. Linux flushes the TLBs of every CPU that may cache them.
    pub fn dontneed(&self, offset: usize, len: usize) -> Result<(), PoolError> {
        assert!(
            offset.is_multiple_of(PAGE_SIZE)
                && len.is_multiple_of(PAGE_SIZE)
                && offset + len <= self.len
        );
        // SAFETY: the range lies inside our mapping; DONTNEED on private
        // anonymous memory only drops its contents (callers hold the
        // exclusive latches of the pages in it).
        let r = unsafe {
            libc::madvise(
                self.ptr.as_ptr().add(offset).cast(),
                len,
                libc::MADV_DONTNEED,
            )
        };
        if r != 0 {
            return Err(PoolError::Setup {
                what: "madvise(MADV_DONTNEED)",
                errno: errno(),
            });
        }
        Ok(())
    }

    /// Releases the page-aligned `(offset, len)` ranges, as
    /// [`dontneed`](Self::dontneed) each: with one
    /// `process_madvise(MADV_DONTNEED)` on this process for all of them
    /// where the kernel takes it (`PIDFD_SELF`: Linux 6.14 and later),
    /// which lets the kernel flush the TLBs of the other CPUs running this
    /// process once for the batch instead of once per range (one
    /// shootdown per evicted page while other threads of the process ran,
    /// 0.016 with this, on Linux 6.18: `bufferpool/docs/pools.md`); else
    /// one `madvise` per range. Returns the system calls made.
    pub fn dontneed_ranges(&self, ranges: &[(usize, usize)]) -> Result<u64, PoolError> {
        use core::sync::atomic::{AtomicBool, Ordering};
        /// Cleared at the first refusal: the kernel does not take it.
        static BATCHED: AtomicBool = AtomicBool::new(true);
        /// `PIDFD_SELF_THREAD`: the calling thread (its process's memory).
        const PIDFD_SELF: libc::c_long = -10000;
        let mut done = 0;
        let mut calls = 0;
        if ranges.len() > 1 && BATCHED.load(Ordering::Relaxed) {
            let iov: std::vec::Vec<libc::iovec> = ranges
                .iter()
                .map(|&(offset, len)| {
                    assert!(
                        offset.is_multiple_of(PAGE_SIZE)
                            && len.is_multiple_of(PAGE_SIZE)
                            && offset + len <= self.len
                    );
                    libc::iovec {
                        // SAFETY: inside our mapping (asserted).
                        iov_base: unsafe { self.ptr.as_ptr().add(offset) }.cast(),
                        iov_len: len,
                    }
                })
                .collect();
            // SAFETY: every range lies inside our mapping (asserted above);
            // DONTNEED on private anonymous memory only drops its contents
            // (callers hold the exclusive latches of the pages in them);
            // the iovec array outlives the call.
            let r = unsafe {
                libc::syscall(
                    libc::SYS_process_madvise,
                    PIDFD_SELF,
                    iov.as_ptr(),
                    iov.len(),
                    libc::MADV_DONTNEED as libc::c_long,
                    0 as libc::c_long,
                )
            };
            calls += 1;
            if r < 0 {
                let e = errno();
                // Not taken here (an older kernel): per range from now on.
                if matches!(
                    e,
                    libc::EINVAL | libc::EBADF | libc::ENOSYS | libc::EPERM | libc::ESRCH
                ) {
                    BATCHED.store(false, Ordering::Relaxed);
                } else {
                    return Err(PoolError::Setup {
                        what: "process_madvise(MADV_DONTNEED)",
                        errno: e,
                    });
                }
            } else {
                // The ranges advised in full (a short count stops inside
                // the first one that was not).
                let mut bytes = r as usize;
                while done < ranges.len() && bytes >= ranges[done].1 {
                    bytes -= ranges[done].1;
                    done += 1;
                }
            }
        }
        for &(offset, len) in &ranges[done..] {
            self.dontneed(offset, len)?;
            calls += 1;
        }
        Ok(calls)
    }
}

#[cfg(not(target_os = "none"))]
impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: we own the mapping and nothing borrows it any more (every
        // borrow is tied to a pool that owns this value).
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

#[cfg(target_os = "none")]
impl Mapping {
    fn heap_layout(len: usize) -> Option<core::alloc::Layout> {
        core::alloc::Layout::from_size_align(len, PAGE_SIZE).ok()
    }

    /// `len` bytes (rounded up to 4 KiB) of zeroed heap memory, 4 KiB
    /// aligned.
    pub fn anonymous(len: usize) -> Result<Mapping, PoolError> {
        let len = len.max(1).next_multiple_of(PAGE_SIZE);
        let no_memory = PoolError::Setup {
            what: "heap allocation of pool memory",
            errno: 0,
        };
        let layout = Mapping::heap_layout(len).ok_or(no_memory)?;
        // SAFETY: the layout has a non-zero size.
        let p = unsafe { alloc::alloc::alloc_zeroed(layout) };
        Ok(Mapping {
            ptr: NonNull::new(p).ok_or(no_memory)?,
            len,
        })
    }

    /// The first byte.
    pub fn ptr(&self) -> NonNull<u8> {
        self.ptr
    }
}

#[cfg(target_os = "none")]
impl Drop for Mapping {
    fn drop(&mut self) {
        let layout = Mapping::heap_layout(self.len).expect("the layout it was allocated with");
        // SAFETY: allocated by `anonymous` with this layout; nothing borrows
        // it any more (every borrow is tied to a pool that owns this value).
        unsafe { alloc::alloc::dealloc(self.ptr.as_ptr(), layout) };
    }
}

/// Types for which all-zero memory is a valid value.
///
/// # Safety
/// The all-zero bit pattern must be a valid value of the type.
pub(crate) unsafe trait ZeroIsValid: Sync {}
// SAFETY: a zero AtomicU64 is 0.
unsafe impl ZeroIsValid for AtomicU64 {}
// SAFETY: a zero AtomicU8 is 0.
unsafe impl ZeroIsValid for AtomicU8 {}
// SAFETY: Latch is a transparent AtomicU64; zero is Evicted, version 0.
unsafe impl ZeroIsValid for Latch {}

/// An array of `n` `T`s in an anonymous mapping (zero-initialized and
/// backed lazily, so arrays over every page of a large device are cheap).
pub(crate) struct ZeroedArray<T> {
    map: Mapping,
    n: usize,
    _t: core::marker::PhantomData<T>,
}

impl<T: ZeroIsValid> ZeroedArray<T> {
    pub fn new(n: usize) -> Result<ZeroedArray<T>, PoolError> {
        let bytes = n
            .checked_mul(core::mem::size_of::<T>())
            .ok_or(PoolError::Setup {
                what: "array size overflows",
                errno: 0,
            })?;
        Ok(ZeroedArray {
            map: Mapping::anonymous(bytes)?,
            n,
            _t: core::marker::PhantomData,
        })
    }
}

impl<T: ZeroIsValid> core::ops::Deref for ZeroedArray<T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        // SAFETY: the mapping holds at least n * size_of::<T>() zeroed (or
        // since written through &T, i.e. atomically) bytes, page aligned;
        // zero is a valid T and T is only accessed through shared refs.
        unsafe { core::slice::from_raw_parts(self.map.ptr().as_ptr().cast::<T>(), self.n) }
    }
}
