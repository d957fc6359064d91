//! Raw access to guest memory for the network: the only place the network
//! dereferences a host pointer into guest RAM. Every pointer comes from
//! [`GuestRam::host_range`] (a checked range inside one RAM region), lives
//! no longer than the `GuestRam` the poller keeps alive, and is accessed
//! with volatile or atomic operations or handed to `recv`/`send`: no Rust
//! reference to guest memory is ever formed, since the guest may change it
//! at any moment.

use crate::memory::GuestRam;
use dbos_abi::net::{NetCqe, NetSqe};
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicU32, Ordering};

/// A checked range of guest RAM: `len` bytes at host address `ptr`.
#[derive(Clone, Copy, Debug)]
pub struct GuestSpan {
    ptr: *mut u8,
    len: usize,
}

// SAFETY: a `GuestSpan` is an address range of guest RAM, a shared
// mapping that every thread of the VMM may access (the guest does, too);
// the span itself holds no thread-bound state.
unsafe impl Send for GuestSpan {}

impl GuestSpan {
    /// `[addr, addr + len)` of `ram`, if it lies inside one RAM region
    /// (`len` > 0). The span must not outlive `ram`.
    pub fn new(ram: &GuestRam, addr: u64, len: u64) -> Option<GuestSpan> {
        let len_usize = usize::try_from(len).ok()?;
        let ptr = ram.host_range(addr, len).ok()?;
        Some(GuestSpan {
            ptr,
            len: len_usize,
        })
    }

    pub fn len(&self) -> usize {
        self.len
    }

    /// Never: a span has at least one byte.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Dword `index` of the span (8-byte aligned doorbell or event-index
    /// area, `index` within it), as an atomic.
    fn word(&self, index: usize) -> *mut u32 {
        assert!((index + 1) * 4 <= self.len, "word {index} outside the span");
        self.ptr.cast::<u32>().wrapping_add(index)
    }

    /// Loads dword `index` with `order`.
    pub fn load(&self, index: usize, order: Ordering) -> u32 {
        let ptr = self.word(index);
        // SAFETY: `ptr` is inside the span (checked by `word`), in mapped
        // guest RAM, 4-byte aligned (the areas are 8-byte aligned); an
        // atomic access is sound whatever the guest does concurrently.
        unsafe { AtomicU32::from_ptr(ptr) }.load(order)
    }

    /// Stores `value` into dword `index` with `order`.
    pub fn store(&self, index: usize, value: u32, order: Ordering) {
        let ptr = self.word(index);
        // SAFETY: as in `load`.
        unsafe { AtomicU32::from_ptr(ptr) }.store(value, order)
    }

    /// Swaps dword `index` with `value`.
    pub fn swap(&self, index: usize, value: u32, order: Ordering) -> u32 {
        let ptr = self.word(index);
        // SAFETY: as in `load`.
        unsafe { AtomicU32::from_ptr(ptr) }.swap(value, order)
    }

    /// Copies submission entry `slot` out of a submission ring span.
    pub fn read_sqe(&self, slot: u32) -> NetSqe {
        let size = size_of::<NetSqe>();
        assert!((slot as usize + 1) * size <= self.len, "SQ slot {slot}");
        let ptr = self.ptr.wrapping_add(slot as usize * size).cast::<NetSqe>();
        // SAFETY: the entry is inside the span (asserted), in mapped guest
        // RAM, 64-byte aligned (the ring is page aligned); `NetSqe` is Pod
        // (any bits are valid). Volatile: the guest may write it at any
        // time, and a copy is all that is kept.
        unsafe { std::ptr::read_volatile(ptr) }
    }

    /// Posts completion entry `cqe` into slot `slot` of a completion ring
    /// span: the first 12 bytes, then (release) the last dword with the
    /// command id, the status and the phase tag.
    pub fn post_cqe(&self, slot: u32, cqe: &NetCqe) {
        let size = size_of::<NetCqe>();
        assert!((slot as usize + 1) * size <= self.len, "CQ slot {slot}");
        let words = self.ptr.wrapping_add(slot as usize * size).cast::<u32>();
        let last = u32::from(cqe.cid) | u32::from(cqe.status_phase) << 16;
        // SAFETY: the four dwords are inside the span (asserted), in mapped
        // guest RAM, 16-byte aligned (the ring is page aligned).
        unsafe {
            std::ptr::write_volatile(words, cqe.result);
            std::ptr::write_volatile(words.add(1), cqe.conn);
            std::ptr::write_volatile(words.add(2), cqe.aux);
            AtomicU32::from_ptr(words.add(3)).store(last, Ordering::Release);
        }
    }

    /// `recv(2)` of up to `len - offset` bytes into the span from `offset`.
    pub fn recv(&self, fd: RawFd, offset: usize) -> std::io::Result<usize> {
        let len = self.len.saturating_sub(offset);
        let ptr = self.ptr.wrapping_add(offset.min(self.len));
        // SAFETY: `[ptr, ptr + len)` is inside the span: mapped guest RAM
        // that the kernel writes directly (no Rust reference to it exists);
        // `fd` is a socket the caller owns.
        let n = unsafe { libc::recv(fd, ptr.cast(), len, 0) };
        if n < 0 {
            Err(std::io::Error::last_os_error())
        } else {
            Ok(n as usize)
        }
    }

    /// `send(2)` (`MSG_NOSIGNAL`) of the span's bytes from `offset`.
    pub fn send(&self, fd: RawFd, offset: usize) -> std::io::Result<usize> {
        let len = self.len.saturating_sub(offset);
        let ptr = self.ptr.wrapping_add(offset.min(self.len));
        // SAFETY: `[ptr, ptr + len)` is inside the span: mapped guest RAM
        // that the kernel reads directly; `fd` is a socket the caller owns.
        let n = unsafe { libc::send(fd, ptr.cast(), len, libc::MSG_NOSIGNAL) };
        if n < 0 {
            Err(std::io::Error::last_os_error())
        } else {
            Ok(n as usize)
        }
    }
}
