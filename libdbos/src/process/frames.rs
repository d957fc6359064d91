//! Frames of the process platform: the pages of one memory file.
//!
//! `Frames::new` creates a `memfd` of the configured capacity and maps the
//! whole file once, `MAP_SHARED`, as the *direct map*: frame `f` lives at
//! file offset `f.addr()` and its contents at `base + f.addr()`, whether or
//! not (and wherever) it is also mapped in a window. Mapping a frame in a
//! window maps the same file page again, so both views share the memory, as
//! the guest's direct map and window mappings share guest RAM.
//!
//! Free frames are kept on two lock-free stacks (Treiber stacks whose head
//! carries a generation tag against ABA), so that allocation and freeing are
//! async-signal-safe and may be called from the fault hook:
//! - *large* frames: the 2 MiB-aligned chunks of the file (the file starts
//!   out as a stack of chunks, lowest first);
//! - *small* frames: 4 KiB frames, freed small frames on top. When the small
//!   stack is empty, one chunk is split into 512 small frames.
//!
//! Freed small frames are not merged back into chunks, so once memory has
//! been handed out in small frames it stays small: allocate large frames
//! first (as a buffer pool sizing its pools at start does). Frames beyond the
//! last whole chunk (a capacity that is not a multiple of 512 frames) are
//! small frames from the start. Freeing is LIFO: a freed frame is the next one
//! allocated.

use super::last_errno;
use crate::platform::{Error, Frame, PageSize, LARGE_PAGE_SIZE, PAGE_SIZE};
use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::boxed::Box;
use std::vec::Vec;

const FRAMES_PER_CHUNK: u64 = LARGE_PAGE_SIZE / PAGE_SIZE;

/// A lock-free stack of indices `0..n`, linked through a side array.
struct Stack {
    /// `tag << 32 | (top + 1)`; the low half is 0 when empty.
    head: AtomicU64,
    /// `next[i]` is `1 +` the index below `i`, or 0.
    next: Box<[AtomicU32]>,
}

impl Stack {
    fn new(n: usize) -> Stack {
        let next: Vec<AtomicU32> = (0..n).map(|_| AtomicU32::new(0)).collect();
        Stack {
            head: AtomicU64::new(0),
            next: next.into_boxed_slice(),
        }
    }

    fn push(&self, i: u32) {
        let mut head = self.head.load(Ordering::Acquire);
        loop {
            self.next[i as usize].store(head as u32, Ordering::Relaxed);
            let new = ((head >> 32).wrapping_add(1) << 32) | u64::from(i + 1);
            match self
                .head
                .compare_exchange_weak(head, new, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return,
                Err(h) => head = h,
            }
        }
    }

    fn pop(&self) -> Option<u32> {
        let mut head = self.head.load(Ordering::Acquire);
        loop {
            let top = head as u32;
            if top == 0 {
                return None;
            }
            // A concurrent pop may have taken `top` already; then the tag in
            // `head` has changed and the exchange below fails.
            let below = self.next[(top - 1) as usize].load(Ordering::Relaxed);
            let new = ((head >> 32).wrapping_add(1) << 32) | u64::from(below);
            match self
                .head
                .compare_exchange_weak(head, new, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return Some(top - 1),
                Err(h) => head = h,
            }
        }
    }
}

/// The memory file, its direct map and the free frames.
pub(crate) struct Frames {
    fd: libc::c_int,
    base: *mut u8,
    bytes: u64,
    small: Stack,
    large: Stack,
    free: AtomicU64,
}

// SAFETY: `base` points to a shared mapping that lives as long as `Frames`;
// all mutable state is atomic.
unsafe impl Send for Frames {}
// SAFETY: as above.
unsafe impl Sync for Frames {}

impl Frames {
    /// A memory file of `count` 4 KiB frames, mapped once as the direct map.
    pub(crate) fn new(count: u64) -> Result<Frames, Error> {
        if count == 0 || count >= u64::from(u32::MAX) {
            return Err(Error::OutOfFrames);
        }
        let bytes = count * PAGE_SIZE;
        let fd = create_memfd(bytes)?;
        let base = match map_direct(fd, bytes) {
            Ok(base) => base,
            Err(e) => {
                close(fd);
                return Err(e);
            }
        };
        let chunks = count / FRAMES_PER_CHUNK;
        let frames = Frames {
            fd,
            base,
            bytes,
            small: Stack::new(count as usize),
            large: Stack::new(chunks as usize),
            free: AtomicU64::new(count),
        };
        for c in (0..chunks).rev() {
            frames.large.push(c as u32);
        }
        for f in (chunks * FRAMES_PER_CHUNK..count).rev() {
            frames.small.push(f as u32);
        }
        Ok(frames)
    }

    /// The memory file's descriptor (for mapping frames in windows).
    pub(crate) fn fd(&self) -> libc::c_int {
        self.fd
    }

    /// Size of the memory file in bytes.
    pub(crate) fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Whether `frame` with `size` lies inside the memory file.
    pub(crate) fn contains(&self, frame: Frame, size: PageSize) -> bool {
        frame
            .addr()
            .checked_add(size.bytes())
            .is_some_and(|end| end <= self.bytes)
    }

    /// Allocates a frame (async-signal-safe).
    pub(crate) fn alloc(&self, size: PageSize) -> Result<Frame, Error> {
        match size {
            PageSize::Large => {
                let chunk = self.large.pop().ok_or(Error::OutOfFrames)?;
                self.free.fetch_sub(FRAMES_PER_CHUNK, Ordering::Relaxed);
                Ok(frame_at(u64::from(chunk) * LARGE_PAGE_SIZE))
            }
            PageSize::Small => {
                let index = match self.small.pop() {
                    Some(i) => u64::from(i),
                    None => {
                        let chunk = u64::from(self.large.pop().ok_or(Error::OutOfFrames)?);
                        let first = chunk * FRAMES_PER_CHUNK;
                        for f in (first + 1..first + FRAMES_PER_CHUNK).rev() {
                            self.small.push(f as u32);
                        }
                        first
                    }
                };
                self.free.fetch_sub(1, Ordering::Relaxed);
                Ok(frame_at(index * PAGE_SIZE))
            }
        }
    }

    /// Returns a frame (async-signal-safe). A frame outside the file or not
    /// aligned to `size` is not one of ours and is ignored.
    pub(crate) fn free(&self, frame: Frame, size: PageSize) {
        if !self.contains(frame, size) || !frame.addr().is_multiple_of(size.bytes()) {
            return;
        }
        match size {
            PageSize::Large => {
                self.large.push((frame.addr() / LARGE_PAGE_SIZE) as u32);
                self.free.fetch_add(FRAMES_PER_CHUNK, Ordering::Relaxed);
            }
            PageSize::Small => {
                self.small.push((frame.addr() / PAGE_SIZE) as u32);
                self.free.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Pointer to the frame's contents in the direct map, or null for a
    /// frame outside the memory file.
    pub(crate) fn ptr(&self, frame: Frame) -> *mut u8 {
        if frame.addr() < self.bytes {
            self.base.wrapping_add(frame.addr() as usize)
        } else {
            core::ptr::null_mut()
        }
    }

    /// Frames available, in small-frame units.
    pub(crate) fn available(&self) -> u64 {
        self.free.load(Ordering::Relaxed)
    }
}

fn frame_at(addr: u64) -> Frame {
    Frame::from_addr(addr).unwrap_or_else(|| unreachable!("frame addresses are page multiples"))
}

/// Creates the memory file and sets its size.
fn create_memfd(bytes: u64) -> Result<libc::c_int, Error> {
    // SAFETY: the name is a NUL-terminated string; the flags are valid.
    let fd = unsafe { libc::memfd_create(c"dbos-frames".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(Error::Os("memfd_create", last_errno()));
    }
    let Ok(len) = libc::off_t::try_from(bytes) else {
        close(fd);
        return Err(Error::OutOfFrames);
    };
    // SAFETY: `fd` is the memory file just created.
    if unsafe { libc::ftruncate(fd, len) } != 0 {
        let e = last_errno();
        close(fd);
        return Err(Error::Os("ftruncate", e));
    }
    Ok(fd)
}

/// Maps the whole file shared, read-write: the direct map.
fn map_direct(fd: libc::c_int, bytes: u64) -> Result<*mut u8, Error> {
    // SAFETY: a fresh mapping chosen by the kernel; touches no existing memory.
    let p = unsafe {
        libc::mmap(
            core::ptr::null_mut(),
            bytes as usize,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED | libc::MAP_NORESERVE,
            fd,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(Error::Os("mmap", last_errno()));
    }
    Ok(p.cast())
}

fn close(fd: libc::c_int) {
    // SAFETY: `fd` is a descriptor this module opened and no longer uses.
    unsafe { libc::close(fd) };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stack_is_lifo() {
        let s = Stack::new(4);
        assert_eq!(s.pop(), None);
        s.push(2);
        s.push(0);
        s.push(3);
        assert_eq!(
            (s.pop(), s.pop(), s.pop(), s.pop()),
            (Some(3), Some(0), Some(2), None)
        );
    }

    #[test]
    fn chunks_split_and_tail() {
        // 2 chunks plus 3 tail frames.
        let f = Frames::new(2 * FRAMES_PER_CHUNK + 3).unwrap();
        assert_eq!(f.available(), 1027);
        // Tail frames first, in order.
        let tail: Vec<u64> = (0..3)
            .map(|_| f.alloc(PageSize::Small).unwrap().addr() / PAGE_SIZE)
            .collect();
        assert_eq!(tail, [1024, 1025, 1026]);
        // Then chunk 0 is split.
        assert_eq!(f.alloc(PageSize::Small).unwrap().addr(), 0);
        assert_eq!(f.alloc(PageSize::Small).unwrap().addr(), PAGE_SIZE);
        // Chunk 1 is still whole.
        assert_eq!(f.alloc(PageSize::Large).unwrap().addr(), LARGE_PAGE_SIZE);
        assert_eq!(f.alloc(PageSize::Large), Err(Error::OutOfFrames));
        assert_eq!(f.available(), 1027 - 5 - 512);
    }
}
