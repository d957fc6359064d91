//! Windows of the process platform: reserved address ranges, the record of
//! which frame is mapped at which page, and the mapping system calls.
//!
//! A window is one `mmap(PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS |
//! MAP_NORESERVE)`, 2 MiB aligned. Mapping frame `f` at a page replaces that
//! page with `mmap(MAP_FIXED | MAP_SHARED)` of the memory file at offset
//! `f.addr()`; unmapping replaces it with a fresh reserved page
//! (`mmap(MAP_FIXED, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE)`);
//! a protection change is one `mprotect`. Each of these is one system call
//! and one mapping-edit event (`pte_writes`).
//!
//! The record of mappings (the "page table" of the window) is two arrays of
//! atomic entries, one per 4 KiB page and one per 2 MiB page, allocated as
//! anonymous `MAP_NORESERVE` memory so that a huge window costs only the
//! entries that are touched. An entry is `frame address | flags`; the `BUSY`
//! flag is held while a system call edits the page, so that concurrent calls
//! on one page serialise without a lock (a call that finds an entry busy
//! spins, then yields, until it is not). Everything here is lock-free and
//! async-signal-safe except `reserve`, so the fault hook may map and unmap.
//!
//! Windows are registered in a fixed table of [`MAX_WINDOWS`] slots that the
//! SIGSEGV handler searches without locks. `release` (behind
//! `Platform::release`) empties a window's slot (reused by the next
//! `reserve`) and unmaps its range and its entry arrays; the window's small record itself (base, length, owner, hook) is
//! kept, never freed, because a handler running on another thread may have
//! loaded the slot just before it was emptied and still reads the record
//! (about 80 bytes per released window; the mappings, the address range
//! and the slot are what is given back).
//!
//! Each mapped page that is not contiguous with its neighbours (in the file
//! and in protection) is a separate kernel VMA, and Linux limits a process to
//! `vm.max_map_count` VMAs (65530 by default). The platform charges every
//! window and mapped page against that limit before the system call (see
//! [`maps`](super::maps)), so `map` and `reserve` fail with
//! `Error::MappingLimit` instead of `ENOMEM`, and `unmap` never fails for it.

use super::last_errno;
use crate::hook::ContextHookCell;
use crate::platform::WindowFaultHook;
use crate::platform::{Error, Frame, PageSize, Protection, LARGE_PAGE_SIZE, PAGE_SIZE};
use core::sync::atomic::{AtomicPtr, AtomicU64, AtomicUsize, Ordering};
use std::boxed::Box;
use std::sync::Mutex;

/// How many windows the whole process may reserve (all platforms together).
pub const MAX_WINDOWS: usize = 1024;

bitflags::bitflags! {
    /// The state bits of a mapping entry (in its low [`FLAGS`] bits; the rest
    /// is the frame address).
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    struct State: u64 {
        /// A system call is editing the page.
        const BUSY = 1 << 0;
        /// A frame is mapped at the page.
        const MAPPED = 1 << 1;
        /// The page is mapped writable.
        const WRITE = 1 << 2;
    }
}

/// The bits of an entry that are not the frame address.
const FLAGS: u64 = PAGE_SIZE - 1;
const _: () = assert!(State::all().bits() & !FLAGS == 0);

impl State {
    /// The state bits of entry value `entry`.
    fn of(entry: u64) -> State {
        State::from_bits_truncate(entry)
    }

    /// Whether entry value `entry` has a frame mapped.
    fn mapped(entry: u64) -> bool {
        State::of(entry).contains(State::MAPPED)
    }
}
const SMALL_PER_LARGE: usize = (LARGE_PAGE_SIZE / PAGE_SIZE) as usize;

static REGISTRY: [AtomicPtr<Window>; MAX_WINDOWS] =
    [const { AtomicPtr::new(core::ptr::null_mut()) }; MAX_WINDOWS];
static REGISTERED: AtomicUsize = AtomicUsize::new(0);
static REGISTER: Mutex<()> = Mutex::new(());

/// One reserved window and its mappings.
pub(crate) struct Window {
    /// Id of the platform that reserved it.
    pub(crate) owner: usize,
    pub(crate) base: u64,
    pub(crate) len: u64,
    /// The window's own fault hook, if set.
    pub(crate) hook: ContextHookCell<WindowFaultHook>,
    small: &'static [AtomicU64],
    large: &'static [AtomicU64],
    /// The slot it is registered in.
    slot: usize,
}

/// Reserves a window of `len` bytes (a positive multiple of 2 MiB) for
/// platform `owner`.
pub(crate) fn reserve(owner: usize, len: u64) -> Result<&'static Window, Error> {
    let _guard = REGISTER.lock().unwrap_or_else(|e| e.into_inner());
    // The lowest empty slot: a released one, or a fresh one.
    let used = REGISTERED.load(Ordering::Relaxed);
    let Some(slot) =
        (0..MAX_WINDOWS).find(|&i| i >= used || REGISTRY[i].load(Ordering::Relaxed).is_null())
    else {
        return Err(Error::OutOfAddressSpace(len));
    };
    let base = reserve_aligned(len)?;
    let small = match zeroed_table(len / PAGE_SIZE) {
        Ok(t) => t,
        Err(e) => {
            unmap_range(base, len);
            return Err(e);
        }
    };
    let large = match zeroed_table(len / LARGE_PAGE_SIZE) {
        Ok(t) => t,
        Err(e) => {
            unmap_range(base, len);
            unmap_range(small.as_ptr() as u64, len / PAGE_SIZE * 8);
            return Err(e);
        }
    };
    let window = Box::leak(Box::new(Window {
        owner,
        base,
        len,
        hook: ContextHookCell::new(),
        small,
        large,
        slot,
    }));
    REGISTRY[slot].store(window, Ordering::Release);
    REGISTERED.fetch_max(slot + 1, Ordering::Release);
    Ok(window)
}

/// Empties `window`'s slot and unmaps its range and entry arrays; returns
/// the pages that were still mapped in it, with their frames. One `munmap`
/// of the range (the kernel shoots down every CPU that ran the process
/// before it returns).
///
/// # Safety
/// `window` is registered (not released before), and nothing uses it any
/// more: no thread accesses its range or calls the platform for it.
pub(crate) unsafe fn release(
    window: &'static Window,
) -> Result<std::vec::Vec<(u64, PageSize, Frame)>, Error> {
    let guard = REGISTER.lock().unwrap_or_else(|e| e.into_inner());
    let slot = &REGISTRY[window.slot];
    if !core::ptr::eq(slot.load(Ordering::Acquire), window) {
        return Err(Error::NotReserved(window.base));
    }
    slot.store(core::ptr::null_mut(), Ordering::Release);
    drop(guard);
    window.hook.set(None, 0);
    let mut pages = std::vec::Vec::new();
    for (tables, size) in [
        (window.small, PageSize::Small),
        (window.large, PageSize::Large),
    ] {
        for (i, entry) in tables.iter().enumerate() {
            let v = entry.load(Ordering::Acquire);
            if State::mapped(v) {
                pages.push((window.base + i as u64 * size.bytes(), size, frame_of(v)));
            }
        }
    }
    unmap_range(window.base, window.len);
    unmap_range(window.small.as_ptr() as u64, window.small.len() as u64 * 8);
    unmap_range(window.large.as_ptr() as u64, window.large.len() as u64 * 8);
    Ok(pages)
}

/// Windows registered now, whoever owns them (the process may have at most
/// [`MAX_WINDOWS`]).
pub fn live_windows() -> usize {
    let n = REGISTERED.load(Ordering::Acquire);
    REGISTRY[..n]
        .iter()
        .filter(|s| !s.load(Ordering::Acquire).is_null())
        .count()
}

/// The window containing `addr`, whoever owns it (lock-free, for the
/// SIGSEGV handler).
pub(crate) fn find(addr: u64) -> Option<&'static Window> {
    let n = REGISTERED.load(Ordering::Acquire);
    REGISTRY[..n].iter().find_map(|slot| {
        let w = slot.load(Ordering::Acquire);
        // SAFETY: window records are leaked boxes, never freed (not even
        // when the window is released: see the module comment).
        let w = unsafe { w.as_ref() }?;
        (addr >= w.base && addr - w.base < w.len).then_some(w)
    })
}

/// The window of platform `owner` containing `addr`.
pub(crate) fn find_owned(owner: usize, addr: u64) -> Option<&'static Window> {
    find(addr).filter(|w| w.owner == owner)
}

impl Window {
    fn small_entry(&self, page: u64) -> &AtomicU64 {
        &self.small[((page - self.base) / PAGE_SIZE) as usize]
    }

    fn large_entry(&self, page: u64) -> &AtomicU64 {
        &self.large[((page - self.base) / LARGE_PAGE_SIZE) as usize]
    }

    /// The small entries covered by the large page at `page`.
    fn small_entries_of(&self, page: u64) -> &[AtomicU64] {
        let first = ((page - self.base) / PAGE_SIZE) as usize;
        &self.small[first..first + SMALL_PER_LARGE]
    }

    fn entry(&self, page: u64, size: PageSize) -> &AtomicU64 {
        match size {
            PageSize::Small => self.small_entry(page),
            PageSize::Large => self.large_entry(page),
        }
    }

    /// Maps `frame` at `page` (aligned, inside this window; the frame inside
    /// the memory file `fd`).
    pub(crate) fn map(
        &self,
        page: u64,
        frame: Frame,
        size: PageSize,
        prot: Protection,
        fd: libc::c_int,
    ) -> Result<(), Error> {
        let entry = self.entry(page, size);
        if claim(entry, |v| !State::mapped(v)).is_err() {
            return Err(Error::AlreadyMapped(page));
        }
        if self.conflicts(page, size) {
            entry.store(0, Ordering::SeqCst);
            return Err(Error::SizeMismatch(page));
        }
        // SAFETY: `page..page + size` is inside this window, which is ours;
        // replacing it touches no memory outside the window.
        let p = unsafe {
            libc::mmap(
                page as *mut libc::c_void,
                size.bytes() as usize,
                prot_bits(prot),
                libc::MAP_SHARED | libc::MAP_FIXED,
                fd,
                frame.addr() as libc::off_t,
            )
        };
        if p == libc::MAP_FAILED {
            let e = last_errno();
            entry.store(0, Ordering::Release);
            return Err(Error::Os("mmap", e));
        }
        entry.store(
            frame.addr() | (State::MAPPED | write_flag(prot)).bits(),
            Ordering::Release,
        );
        Ok(())
    }

    /// Maps `frame` at `page` whatever was there (aligned, inside this
    /// window; the frame inside the memory file `fd`): one
    /// `mmap(MAP_FIXED | MAP_SHARED)`, which replaces the old mapping
    /// atomically for every thread. A page not mapped before is charged to
    /// `account` first (the mapping limit, as for `map`); a mapped one keeps
    /// its charge. Returns the frame replaced, if any.
    pub(crate) fn remap(
        &self,
        page: u64,
        frame: Frame,
        size: PageSize,
        prot: Protection,
        fd: libc::c_int,
        account: &super::maps::Account,
    ) -> Result<Option<Frame>, Error> {
        let entry = self.entry(page, size);
        let old = match claim(entry, |_| true) {
            Ok(v) | Err(v) => v,
        };
        let was_mapped = State::mapped(old);
        if !was_mapped {
            if self.conflicts(page, size) {
                entry.store(old, Ordering::SeqCst);
                return Err(Error::SizeMismatch(page));
            }
            if let Err(e) = account.charge(super::maps::PER_PAGE) {
                entry.store(old, Ordering::SeqCst);
                return Err(e);
            }
        }
        // SAFETY: `page..page + size` is inside this window, which is ours;
        // replacing it touches no memory outside the window.
        let p = unsafe {
            libc::mmap(
                page as *mut libc::c_void,
                size.bytes() as usize,
                prot_bits(prot),
                libc::MAP_SHARED | libc::MAP_FIXED,
                fd,
                frame.addr() as libc::off_t,
            )
        };
        if p == libc::MAP_FAILED {
            let e = last_errno();
            if !was_mapped {
                account.release(super::maps::PER_PAGE);
            }
            entry.store(old, Ordering::Release);
            return Err(Error::Os("mmap", e));
        }
        entry.store(
            frame.addr() | (State::MAPPED | write_flag(prot)).bits(),
            Ordering::Release,
        );
        Ok(was_mapped.then(|| frame_of(old)))
    }

    /// Whether a mapping of the other size overlaps `page` (`entry` for
    /// `page` claimed by the caller). A small page waits for a busy large
    /// entry; a large page does not wait for small ones (a busy one counts as
    /// a conflict), so two such calls never wait for each other.
    fn conflicts(&self, page: u64, size: PageSize) -> bool {
        match size {
            PageSize::Small => {
                let large = self.large_entry(page & !(LARGE_PAGE_SIZE - 1));
                State::mapped(wait_not_busy(large))
            }
            PageSize::Large => self
                .small_entries_of(page)
                .iter()
                .any(|e| e.load(Ordering::SeqCst) != 0),
        }
    }

    /// The error for an operation on `page` of `size` that is not mapped.
    fn not_mapped(&self, page: u64, size: PageSize) -> Error {
        let other = match size {
            PageSize::Small => State::mapped(
                self.large_entry(page & !(LARGE_PAGE_SIZE - 1))
                    .load(Ordering::Acquire),
            ),
            PageSize::Large => self
                .small_entries_of(page)
                .iter()
                .any(|e| State::mapped(e.load(Ordering::Acquire))),
        };
        if other {
            Error::SizeMismatch(page)
        } else {
            Error::NotMapped(page)
        }
    }

    /// Unmaps `page` (back to reserved) and returns its frame.
    pub(crate) fn unmap(&self, page: u64, size: PageSize) -> Result<Frame, Error> {
        let entry = self.entry(page, size);
        let Ok(old) = claim(entry, State::mapped) else {
            return Err(self.not_mapped(page, size));
        };
        // SAFETY: as in `map`: the range is inside our window.
        let p = unsafe {
            libc::mmap(
                page as *mut libc::c_void,
                size.bytes() as usize,
                libc::PROT_NONE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE | libc::MAP_FIXED,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            let e = last_errno();
            entry.store(old, Ordering::Release);
            return Err(Error::Os("mmap", e));
        }
        entry.store(0, Ordering::Release);
        Ok(frame_of(old))
    }

    /// Changes the protection of mapped `page`.
    pub(crate) fn protect(&self, page: u64, size: PageSize, prot: Protection) -> Result<(), Error> {
        let entry = self.entry(page, size);
        let Ok(old) = claim(entry, State::mapped) else {
            return Err(self.not_mapped(page, size));
        };
        // SAFETY: as in `map`: the range is inside our window.
        let r = unsafe {
            libc::mprotect(
                page as *mut libc::c_void,
                size.bytes() as usize,
                prot_bits(prot),
            )
        };
        if r != 0 {
            let e = last_errno();
            entry.store(old, Ordering::Release);
            return Err(Error::Os("mprotect", e));
        }
        entry.store(
            (old & !FLAGS) | (State::MAPPED | write_flag(prot)).bits(),
            Ordering::Release,
        );
        Ok(())
    }

    /// The frame mapped at `page` (aligned to `size`, inside the window) with
    /// exactly that size, if any.
    pub(crate) fn translate_sized(&self, page: u64, size: PageSize) -> Option<Frame> {
        let entry = self.entry(page, size).load(Ordering::Acquire);
        State::mapped(entry).then(|| frame_of(entry))
    }

    /// The frame mapped at small page `page` (aligned, inside the window):
    /// its own, or the matching 4 KiB part of a large frame.
    pub(crate) fn translate(&self, page: u64) -> Option<Frame> {
        let small = self.small_entry(page).load(Ordering::Acquire);
        if State::mapped(small) {
            return Some(frame_of(small));
        }
        let large_page = page & !(LARGE_PAGE_SIZE - 1);
        let large = self.large_entry(large_page).load(Ordering::Acquire);
        State::mapped(large).then(|| frame_of(large + (page - large_page)))
    }
}

/// Waits while `entry` is busy, then sets `BUSY` on it if `accept` takes its
/// value. Returns the value before, or `Err` with the value refused.
fn claim(entry: &AtomicU64, accept: impl Fn(u64) -> bool) -> Result<u64, u64> {
    loop {
        let v = wait_not_busy(entry);
        if !accept(v) {
            return Err(v);
        }
        if entry
            .compare_exchange(
                v,
                v | State::BUSY.bits(),
                Ordering::SeqCst,
                Ordering::SeqCst,
            )
            .is_ok()
        {
            return Ok(v);
        }
    }
}

/// The entry's value once it is not busy.
fn wait_not_busy(entry: &AtomicU64) -> u64 {
    let mut spins = 0u32;
    loop {
        let v = entry.load(Ordering::SeqCst);
        if !State::of(v).contains(State::BUSY) {
            return v;
        }
        spins += 1;
        if spins < 128 {
            core::hint::spin_loop();
        } else {
            // SAFETY: sched_yield has no preconditions (and is async-signal-safe).
            unsafe { libc::sched_yield() };
        }
    }
}

fn frame_of(entry: u64) -> Frame {
    Frame::from_addr(entry & !FLAGS)
        .unwrap_or_else(|| unreachable!("entries hold page-aligned frames"))
}

fn write_flag(prot: Protection) -> State {
    match prot {
        Protection::ReadOnly => State::empty(),
        Protection::ReadWrite => State::WRITE,
    }
}

fn prot_bits(prot: Protection) -> libc::c_int {
    match prot {
        Protection::ReadOnly => libc::PROT_READ,
        Protection::ReadWrite => libc::PROT_READ | libc::PROT_WRITE,
    }
}

/// Reserves `len` bytes, 2 MiB aligned: over-reserve by 2 MiB and trim.
fn reserve_aligned(len: u64) -> Result<u64, Error> {
    let total = len
        .checked_add(LARGE_PAGE_SIZE)
        .ok_or(Error::OutOfAddressSpace(len))?;
    // SAFETY: a fresh reservation chosen by the kernel.
    let p = unsafe {
        libc::mmap(
            core::ptr::null_mut(),
            total as usize,
            libc::PROT_NONE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(match last_errno() {
            libc::ENOMEM => Error::OutOfAddressSpace(len),
            e => Error::Os("mmap", e),
        });
    }
    let start = p as u64;
    let base = start.next_multiple_of(LARGE_PAGE_SIZE);
    if base > start {
        unmap_range(start, base - start);
    }
    let end = start + total;
    if end > base + len {
        unmap_range(base + len, end - (base + len));
    }
    Ok(base)
}

/// A zero-filled array of `n` atomic entries in fresh anonymous memory.
fn zeroed_table(n: u64) -> Result<&'static [AtomicU64], Error> {
    // SAFETY: a fresh private anonymous mapping chosen by the kernel.
    let p = unsafe {
        libc::mmap(
            core::ptr::null_mut(),
            (n * 8) as usize,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(Error::OutOfAddressSpace(n * PAGE_SIZE));
    }
    // SAFETY: the mapping is `n * 8` zeroed, suitably aligned bytes that
    // nothing else references, unmapped only by `release` once nothing uses
    // the window; all-zero bytes are valid `AtomicU64`s.
    Ok(unsafe { core::slice::from_raw_parts(p as *const AtomicU64, n as usize) })
}

/// Releases address space this module reserved and does not use.
fn unmap_range(addr: u64, len: u64) {
    // SAFETY: callers pass ranges they reserved themselves and never use.
    unsafe { libc::munmap(addr as *mut libc::c_void, len as usize) };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_state_bits() {
        assert_eq!(
            (
                State::BUSY.bits(),
                State::MAPPED.bits(),
                State::WRITE.bits()
            ),
            (1, 2, 4)
        );
        let rw = 0x1234_5000 | (State::MAPPED | write_flag(Protection::ReadWrite)).bits();
        assert_eq!(rw, 0x1234_5006);
        let ro = 0x1234_5000 | (State::MAPPED | write_flag(Protection::ReadOnly)).bits();
        assert_eq!(ro, 0x1234_5002);
        assert!(State::mapped(rw) && State::mapped(ro));
        assert_eq!(State::of(rw | State::BUSY.bits()), State::all());
        assert!(!State::mapped(0x1234_5000 | State::BUSY.bits()));
        assert_eq!(frame_of(rw).addr(), 0x1234_5000);
    }
}
