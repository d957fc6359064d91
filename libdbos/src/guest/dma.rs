//! DMA memory: the frames the guest does disk I/O from, in physically
//! contiguous arenas that are declared to the host as DMA regions
//! ([`calls::DmaDeclare`]), as NVMe drivers and SPDK map only their DMA
//! memory. The host registers each region with io_uring as a fixed buffer,
//! so an I/O whose buffer lies in one is served without per-request page
//! pinning; any other guest memory still works, with plain buffers.
//!
//! [`alloc`] hands out 4 KiB-aligned, physically contiguous buffers from
//! the arenas (first fit in a per-arena page bitmap) and creates a new
//! arena when none has room: at least 2 MiB, and growing with what is
//! allocated already (up to 64 MiB), so a large pool is a few regions.
//! [`free`] returns pages; an arena whose pages are all free is given back
//! to the host ([`calls::DmaRelease`]) and its frames to the frame
//! allocator. Users: the disk's queue-pair rings (`nvme`), and through
//! `dbos-bufferpool` the log's buffers and Tabby's frames.
//!
//! A declaration the host refuses (no disk, its pinning limit, no slot
//! left, a backend without fixed buffers) leaves the arena in use,
//! undeclared: its I/O is served with plain buffers. [`stats`] says how
//! many arenas were declared and refused, and the host's counts of I/Os
//! served each way.

use crate::abi::{calls, DmaRegionArgs, DmaStatsArgs, GuestBuf, GuestPhysAddr};
use crate::frames;
use crate::hypercall;
use crate::memory::phys_to_virt;
use crate::platform::{LARGE_PAGE_SIZE, PAGE_SIZE};
use alloc::vec::Vec;
use spin::Mutex;

/// The host's answers for "no disk" and "this disk registers nothing"
/// (Linux errno values, as the ABI's statuses are).
const ENODEV: i32 = 19;
const EOPNOTSUPP: i32 = 95;

/// Pages of the smallest arena (2 MiB).
const MIN_ARENA_PAGES: u64 = LARGE_PAGE_SIZE / PAGE_SIZE;
/// Pages of the largest arena made to grow (64 MiB); a larger request
/// gets an arena of its own size.
const MAX_ARENA_PAGES: u64 = 32 * MIN_ARENA_PAGES;

/// A DMA buffer: `len` bytes at `virt` (the direct map), physically
/// contiguous from `phys`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DmaBuf {
    pub virt: *mut u8,
    pub phys: u64,
    pub len: usize,
}

// SAFETY: a DmaBuf names memory; whoever accesses it does so as its owner.
unsafe impl Send for DmaBuf {}

struct Arena {
    phys: u64,
    pages: u64,
    /// One bit per page, set when in use.
    used: Vec<u64>,
    in_use: u64,
    /// The host registered it.
    declared: bool,
}

impl Arena {
    fn is_used(&self, page: u64) -> bool {
        self.used[(page / 64) as usize] & (1 << (page % 64)) != 0
    }

    fn set(&mut self, first: u64, n: u64, used: bool) {
        for p in first..first + n {
            let (w, bit) = ((p / 64) as usize, 1u64 << (p % 64));
            if used {
                self.used[w] |= bit;
            } else {
                self.used[w] &= !bit;
            }
        }
    }

    /// First run of `n` free pages.
    fn find(&self, n: u64) -> Option<u64> {
        if self.pages - self.in_use < n {
            return None;
        }
        let mut run = 0;
        for p in 0..self.pages {
            if self.is_used(p) {
                run = 0;
            } else {
                run += 1;
                if run == n {
                    return Some(p + 1 - n);
                }
            }
        }
        None
    }
}

/// What the allocator did, and the host's counts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DmaStats {
    /// Arenas now.
    pub arenas: u64,
    /// Pages in them, and pages handed out.
    pub pages: u64,
    pub pages_in_use: u64,
    /// Arenas the host registered, and arenas it refused, since boot.
    pub declared: u64,
    pub refused: u64,
    /// The host's counters ([`calls::DmaStats`]).
    pub host: DmaStatsArgs,
}

struct State {
    arenas: Vec<Arena>,
    declared: u64,
    refused: u64,
    /// An unexpected refusal was reported (once).
    reported: bool,
}

static STATE: Mutex<State> = Mutex::new(State {
    arenas: Vec::new(),
    declared: 0,
    refused: 0,
    reported: false,
});

fn locked<R>(f: impl FnOnce(&mut State) -> R) -> R {
    x86_64::instructions::interrupts::without_interrupts(|| f(&mut STATE.lock()))
}

/// Declares `[phys, phys + len)` a DMA region: 0, or the host's negative
/// errno (see [`DmaRegionArgs`]).
pub fn declare(phys: u64, len: u64) -> i64 {
    region_call(calls::DmaDeclare, phys, len)
}

/// Gives back the DMA region declared at exactly `[phys, phys + len)`: 0,
/// or the host's negative errno.
pub fn release(phys: u64, len: u64) -> i64 {
    region_call(calls::DmaRelease, phys, len)
}

fn region_call(call: crate::abi::Call<DmaRegionArgs>, phys: u64, len: u64) -> i64 {
    let mut args = DmaRegionArgs {
        region: GuestBuf {
            addr: GuestPhysAddr(phys),
            len,
        },
        status: 0,
    };
    hypercall::call(call, &mut args);
    args.status
}

/// The host's DMA counters (one exit to the VMM).
pub fn host_stats() -> DmaStatsArgs {
    let mut args = DmaStatsArgs::default();
    hypercall::call(calls::DmaStats, &mut args);
    args
}

/// The allocator's state and the host's counters.
pub fn stats() -> DmaStats {
    let mut s = locked(|st| DmaStats {
        arenas: st.arenas.len() as u64,
        pages: st.arenas.iter().map(|a| a.pages).sum(),
        pages_in_use: st.arenas.iter().map(|a| a.in_use).sum(),
        declared: st.declared,
        refused: st.refused,
        host: DmaStatsArgs::default(),
    });
    s.host = host_stats();
    s
}

/// A new arena of at least `pages` pages, declared to the host.
fn new_arena(st: &mut State, pages: u64) -> Option<usize> {
    let have: u64 = st.arenas.iter().map(|a| a.pages).sum();
    let want = if pages > MAX_ARENA_PAGES {
        pages.next_multiple_of(MIN_ARENA_PAGES)
    } else {
        have.clamp(MIN_ARENA_PAGES, MAX_ARENA_PAGES)
            .max(pages.next_multiple_of(MIN_ARENA_PAGES))
    };
    // The frame allocator may have no run that long left: halve down to
    // what was asked for.
    let mut size = want;
    let phys = loop {
        if let Some(p) = frames::alloc_contiguous(size) {
            break p;
        }
        let next = if size > MIN_ARENA_PAGES {
            (size / 2).next_multiple_of(MIN_ARENA_PAGES).max(pages)
        } else {
            pages
        };
        if next >= size {
            return None;
        }
        size = next;
    };
    let status = declare(phys, size * PAGE_SIZE);
    if status == 0 {
        st.declared += 1;
    } else {
        st.refused += 1;
        // No disk, or a disk that registers nothing (the power-cut model):
        // expected, and said at debug level; any other refusal (the host's
        // pinning limit, say) once as a warning.
        let expected = status == -i64::from(ENODEV) || status == -i64::from(EOPNOTSUPP);
        if expected {
            log::debug!(
                "dma: region not registered (errno {}): plain buffers",
                -status
            );
        } else if !st.reported {
            st.reported = true;
            log::warn!(
                "dma: the host did not register a DMA region of {} bytes (errno {}): its I/O \
                 uses plain buffers",
                size * PAGE_SIZE,
                -status
            );
        }
    }
    st.arenas.push(Arena {
        phys,
        pages: size,
        used: alloc::vec![0; size.div_ceil(64) as usize],
        in_use: 0,
        declared: status == 0,
    });
    Some(st.arenas.len() - 1)
}

/// A DMA buffer of at least `bytes` bytes (whole 4 KiB pages), contents
/// unspecified; `None` when memory is out.
pub fn alloc(bytes: usize) -> Option<DmaBuf> {
    let pages = (bytes.max(1) as u64).div_ceil(PAGE_SIZE);
    locked(|st| {
        let found = st
            .arenas
            .iter()
            .enumerate()
            .find_map(|(i, a)| a.find(pages).map(|p| (i, p)));
        let (i, first) = match found {
            Some(f) => f,
            None => (new_arena(st, pages)?, 0),
        };
        let a = &mut st.arenas[i];
        a.set(first, pages, true);
        a.in_use += pages;
        let phys = a.phys + first * PAGE_SIZE;
        Some(DmaBuf {
            virt: phys_to_virt(phys) as *mut u8,
            phys,
            len: (pages * PAGE_SIZE) as usize,
        })
    })
}

/// [`alloc`], filled with zeroes.
pub fn alloc_zeroed(bytes: usize) -> Option<DmaBuf> {
    let buf = alloc(bytes)?;
    // SAFETY: the buffer was just handed out, so nothing else uses it, and
    // the direct map covers it writable.
    unsafe { core::ptr::write_bytes(buf.virt, 0, buf.len) };
    Some(buf)
}

/// Returns a buffer; an arena left empty goes back to the host and the
/// frame allocator.
///
/// # Safety
/// `buf` must come from [`alloc`] (or [`alloc_zeroed`]) unchanged, and
/// neither the CPU nor any I/O may use it afterwards.
pub unsafe fn free(buf: DmaBuf) {
    let pages = (buf.len as u64).div_ceil(PAGE_SIZE);
    locked(|st| {
        let Some(i) = st
            .arenas
            .iter()
            .position(|a| buf.phys >= a.phys && buf.phys < a.phys + a.pages * PAGE_SIZE)
        else {
            log::error!("dma: free of {:#x}, which no arena holds", buf.phys);
            return;
        };
        let a = &mut st.arenas[i];
        let first = (buf.phys - a.phys) / PAGE_SIZE;
        a.set(first, pages, false);
        a.in_use -= pages;
        if a.in_use > 0 {
            return;
        }
        let a = st.arenas.swap_remove(i);
        if a.declared {
            let status = release(a.phys, a.pages * PAGE_SIZE);
            if status != 0 {
                log::error!(
                    "dma: the host did not release the region at {:#x} (errno {})",
                    a.phys,
                    -status
                );
            }
        }
        // SAFETY: the arena's frames came from one alloc_contiguous of
        // `pages`, and none of its pages is in use any more.
        unsafe { frames::free_contiguous(a.phys, a.pages) };
    })
}
