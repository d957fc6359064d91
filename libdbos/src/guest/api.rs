//! [`GuestPlatform`]: the privileged API implemented in ring 0.
//!
//! Windows are carved from the lower half of the address space (nothing else
//! lives there); mappings are direct page-table edits ([`crate::paging`]);
//! frames come from [`crate::frames`] and are addressed through the direct
//! map; TLB calls are `invlpg`, CR3 reloads and IPIs ([`crate::smp`]); the
//! fault hook is called from the #PF handler on the faulting CPU.

use crate::abi::DIRECT_MAP_BASE;
use crate::hook::{ContextHookCell, HookCell};
use crate::interrupts::{self, HookResult, InterruptFrame, PageFault};
use crate::percpu::{self, Event};
use crate::platform::{
    AccessBits, Capabilities, Error, EventCounts, EventHook, Fault, FaultHandler, FaultHook,
    FaultResolution, Frame, PageSize, Platform, Protection, Released, Unmapped, Window,
    WindowFaultHook, LARGE_PAGE_SIZE, PAGE_SIZE,
};
use core::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use spin::Mutex;

/// First address handed out for windows (16 TiB) and the end of the lower half.
const WINDOW_SPACE: (u64, u64) = (0x0000_1000_0000_0000, 0x0000_8000_0000_0000);
/// Most windows that can be reserved.
const MAX_WINDOWS: usize = 32;

/// The guest's privileged API; use [`platform`](crate::platform()) to get it.
pub struct GuestPlatform {
    _private: (),
}

static PLATFORM: GuestPlatform = GuestPlatform { _private: () };

/// The guest platform.
pub fn platform() -> &'static GuestPlatform {
    &PLATFORM
}

/// Reserved windows, by slot: written under `RESERVE`, read lock-free. A
/// slot is live while its end is non-zero. Publishing stores the base, then
/// the end (release); releasing stores end 0 (release). A reader loads the
/// end, the base (both acquire) and the end again, and uses the pair only
/// if the end did not change: a base it read from a later reuse of the slot
/// was stored after the release's end 0, so the second load sees that (or
/// a later end) and the pair is refused.
static WINDOW_BASE: [AtomicU64; MAX_WINDOWS] = [const { AtomicU64::new(0) }; MAX_WINDOWS];
static WINDOW_END: [AtomicU64; MAX_WINDOWS] = [const { AtomicU64::new(0) }; MAX_WINDOWS];
/// Slots ever used (the high-water mark readers search below).
static WINDOW_COUNT: AtomicUsize = AtomicUsize::new(0);
/// The next free address (everything from it to the end of the window
/// space is unused). Released windows at the top give their range back at
/// once; a hole below a live window is reused once every window above it
/// is released (the space is a stack).
static RESERVE: Mutex<u64> = Mutex::new(WINDOW_SPACE.0);

/// Takes `RESERVE`, serving TLB shootdowns while it spins: a release holds
/// it across `smp::flush_all`, which waits for every CPU, this one
/// included, even if it spins here with interrupts disabled.
fn lock_reserve() -> spin::MutexGuard<'static, u64> {
    loop {
        if let Some(g) = RESERVE.try_lock() {
            return g;
        }
        crate::smp::service_tlb_requests();
        core::hint::spin_loop();
    }
}

/// The bounds of slot `i`, if it holds a live window (see `WINDOW_END`).
fn slot_bounds(i: usize) -> Option<(u64, u64)> {
    loop {
        let end = WINDOW_END[i].load(Ordering::Acquire);
        if end == 0 {
            return None;
        }
        let base = WINDOW_BASE[i].load(Ordering::Acquire);
        if WINDOW_END[i].load(Ordering::Acquire) == end {
            return Some((base, end));
        }
    }
}

static FAULT_HOOK: HookCell<FaultHook> = HookCell::new();
/// Each window's own fault hook, by window index.
static WINDOW_HOOKS: [ContextHookCell<WindowFaultHook>; MAX_WINDOWS] =
    [const { ContextHookCell::new() }; MAX_WINDOWS];

/// The index of the window holding `[addr, addr + len)`.
fn window_index(addr: u64, len: u64) -> Option<usize> {
    let n = WINDOW_COUNT.load(Ordering::Acquire);
    (0..n).find(|&i| {
        slot_bounds(i).is_some_and(|(base, end)| {
            addr >= base && addr.checked_add(len).is_some_and(|e| e <= end)
        })
    })
}

/// The slot holding exactly `window`.
fn exact_window(window: &Window) -> Option<usize> {
    let end = window.base.checked_add(window.len)?;
    window_index(window.base, window.len).filter(|&i| slot_bounds(i) == Some((window.base, end)))
}

fn in_window(addr: u64, len: u64) -> bool {
    window_index(addr, len).is_some()
}

/// Installs the #PF hook while any fault hook (platform-wide or a window's)
/// is set, and removes it when none is.
fn update_page_fault_hook() {
    let any = FAULT_HOOK.get().is_some() || WINDOW_HOOKS.iter().any(ContextHookCell::is_set);
    interrupts::set_page_fault_hook(any.then_some(window_fault as interrupts::PageFaultHook));
}

fn check_page(page: u64, size: PageSize) -> Result<(), Error> {
    if !page.is_multiple_of(size.bytes()) {
        return Err(Error::Unaligned(page));
    }
    if !in_window(page, size.bytes()) {
        return Err(Error::NotInWindow(page));
    }
    Ok(())
}

/// The #PF hook installed while a fault hook is set: a window fault goes to
/// the window's own hook, else to the platform-wide one; anything else stops
/// the guest.
fn window_fault(pf: &PageFault, _frame: &mut InterruptFrame) -> HookResult {
    let Some(index) = window_index(pf.addr, 1) else {
        return HookResult::Unhandled;
    };
    let Some(handler) = FaultHandler::choose(WINDOW_HOOKS[index].get(), || FAULT_HOOK.get()) else {
        return HookResult::Unhandled;
    };
    percpu::count(Event::Fault);
    let fault = Fault {
        addr: pf.addr,
        write: pf.error.write(),
        present: pf.error.present(),
        ip: pf.rip,
        cpu: percpu::cpu_id() as usize,
    };
    match handler.call(&fault) {
        FaultResolution::Retry => HookResult::Handled,
        FaultResolution::Unhandled => HookResult::Unhandled,
    }
}

impl GuestPlatform {
    /// Reserves a window of `len` bytes (rounded up to 2 MiB) whose base is
    /// a multiple of `align` (a power of two, at least 2 MiB): for mechanisms
    /// that share or protect a window through one upper-level entry (Snappy
    /// reserves its heap 1 GiB-aligned, so one level-3 entry covers it).
    /// Address space skipped for the alignment stays unused.
    pub fn reserve_aligned(&self, len: u64, align: u64) -> Result<Window, Error> {
        let len = len.max(1).next_multiple_of(LARGE_PAGE_SIZE);
        if !align.is_power_of_two() || align < LARGE_PAGE_SIZE {
            return Err(Error::Unaligned(align));
        }
        let mut next = lock_reserve();
        // The lowest free slot (released slots are reused first).
        let index = (0..MAX_WINDOWS).find(|&i| WINDOW_END[i].load(Ordering::Relaxed) == 0);
        let base = next.checked_next_multiple_of(align);
        let end = base
            .and_then(|b| b.checked_add(len))
            .filter(|&e| e <= WINDOW_SPACE.1);
        let (Some(base), Some(end), Some(index)) = (base, end, index) else {
            return Err(Error::OutOfAddressSpace(len));
        };
        WINDOW_BASE[index].store(base, Ordering::Release);
        WINDOW_END[index].store(end, Ordering::Release);
        WINDOW_COUNT.fetch_max(index + 1, Ordering::Release);
        // Leave an unmapped 2 MiB gap between windows, so an overrun faults.
        *next = end + LARGE_PAGE_SIZE;
        Ok(Window { base, len })
    }
}

impl GuestPlatform {
    /// [`Platform::release`] (see there for the costs and the contract).
    ///
    /// # Safety
    /// As [`Platform::release`].
    unsafe fn release_window(
        &self,
        window: Window,
        still_mapped: &mut dyn FnMut(u64, PageSize, Unmapped),
    ) -> Result<Released, Error> {
        let mut next = lock_reserve();
        let index = exact_window(&window).ok_or(Error::NotReserved(window.base))?;
        let (start, end) = (window.base, window.base + window.len);
        // Unpublished first: from here no call and no fault finds the
        // window (the caller promised none comes), and its hook is gone.
        WINDOW_END[index].store(0, Ordering::Release);
        WINDOW_HOOKS[index].set(None, 0);
        update_page_fault_hook();
        // A table may be freed when no other live window meets its span (a
        // window reserved meanwhile cannot exist: we hold RESERVE).
        let in_use = |lo: u64, hi: u64| {
            (0..WINDOW_COUNT.load(Ordering::Acquire))
                .filter_map(slot_bounds)
                .any(|(b, e)| b <= hi && e > lo)
        };
        let (leaves, tables) = crate::paging::clear_range(start, end, &in_use);
        if !leaves.is_empty() || !tables.is_empty() {
            // TLB invariant: a present entry went away (a leaf, or a table
            // link the paging-structure caches may hold), so every CPU must
            // drop what it cached of the range before a reported frame or a
            // freed table can be reused. No entry written: nothing present
            // changed, nothing can be cached (x86 caches no non-present
            // entry). On a CPU that defers its view, the CR3 reload of this
            // flush refreshes the whole view first (`crate::view`), dropping
            // its private copies of the window's tables too.
            crate::smp::flush_all();
        }
        for &table in &tables {
            // SAFETY: a window table, allocated zeroed from the frame
            // allocator, unlinked above and flushed from every CPU; no
            // other window reaches it (the caller's contract, and `in_use`).
            unsafe { crate::frames::free_sized(table, PageSize::Small) };
        }
        // The address space above the highest live window is free again.
        *next = (0..WINDOW_COUNT.load(Ordering::Acquire))
            .filter_map(slot_bounds)
            .map(|(_, e)| e + LARGE_PAGE_SIZE)
            .max()
            .unwrap_or(WINDOW_SPACE.0);
        drop(next);
        for (page, m) in &leaves {
            still_mapped(
                *page,
                m.size,
                Unmapped {
                    frame: m.frame,
                    bits: m.bits(),
                },
            );
        }
        log::debug!(
            "released window {start:#x}..{end:#x}: {} pages, {} tables",
            leaves.len(),
            tables.len()
        );
        Ok(Released {
            pages: leaves.len() as u64,
            tables: tables.len() as u64,
        })
    }
}

impl Platform for GuestPlatform {
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            accessed_bit: true,
            dirty_bit: true,
            per_page_clear: true,
            interrupts: true,
            bounded_mappings: false,
        }
    }

    fn reserve(&self, len: u64) -> Result<Window, Error> {
        self.reserve_aligned(len, LARGE_PAGE_SIZE)
    }

    unsafe fn release(
        &self,
        window: Window,
        still_mapped: &mut dyn FnMut(u64, PageSize, Unmapped),
    ) -> Result<Released, Error> {
        // SAFETY: forwarded contract.
        unsafe { self.release_window(window, still_mapped) }
    }

    fn alloc_frame(&self, size: PageSize) -> Result<Frame, Error> {
        crate::frames::alloc_sized(size)
            .map(|f| Frame::from_addr(f.start_address().as_u64()).expect("frames are aligned"))
            .ok_or(Error::OutOfFrames)
    }

    unsafe fn free_frame(&self, frame: Frame, size: PageSize) {
        // SAFETY: forwarded contract.
        unsafe { crate::frames::free_sized(frame.addr(), size) }
    }

    fn frame_ptr(&self, frame: Frame) -> *mut u8 {
        (DIRECT_MAP_BASE + frame.addr()) as *mut u8
    }

    fn frame_dma_addr(&self, frame: Frame) -> Option<u64> {
        Some(frame.addr())
    }

    fn free_frames(&self) -> u64 {
        crate::frames::available()
    }

    fn alloc_dma_frame(&self) -> Result<Frame, Error> {
        let buf = crate::dma::alloc(PAGE_SIZE as usize).ok_or(Error::OutOfFrames)?;
        Ok(Frame::from_addr(buf.phys).expect("DMA buffers are 4 KiB aligned"))
    }

    unsafe fn free_dma_frame(&self, frame: Frame) {
        let buf = crate::dma::DmaBuf {
            virt: self.frame_ptr(frame),
            phys: frame.addr(),
            len: PAGE_SIZE as usize,
        };
        // SAFETY: the frame is one buffer of `dma::alloc(PAGE_SIZE)`
        // (alloc_dma_frame), no longer used (forwarded contract).
        unsafe { crate::dma::free(buf) }
    }

    fn map(&self, page: u64, frame: Frame, size: PageSize, prot: Protection) -> Result<(), Error> {
        check_page(page, size)?;
        if !frame.addr().is_multiple_of(size.bytes()) {
            return Err(Error::Unaligned(frame.addr()));
        }
        crate::paging::map(page, frame, size, prot)
    }

    fn remap(
        &self,
        page: u64,
        frame: Frame,
        size: PageSize,
        prot: Protection,
    ) -> Result<Option<Unmapped>, Error> {
        check_page(page, size)?;
        if !frame.addr().is_multiple_of(size.bytes()) {
            return Err(Error::Unaligned(frame.addr()));
        }
        let before = crate::paging::remap(page, frame, size, prot)?;
        Ok(before.map(|m| Unmapped {
            frame: m.frame,
            bits: m.bits(),
        }))
    }

    fn unmap(&self, page: u64, size: PageSize) -> Result<Unmapped, Error> {
        check_page(page, size)?;
        let before = crate::paging::unmap(page, size)?;
        Ok(Unmapped {
            frame: before.frame,
            bits: before.bits(),
        })
    }

    fn protect(&self, page: u64, size: PageSize, prot: Protection) -> Result<AccessBits, Error> {
        check_page(page, size)?;
        crate::paging::set_protection(page, size, prot).map(|before| before.bits())
    }

    /// Removes all the entries first (lock-free, one compare-and-swap each),
    /// then invalidates the pages removed on this CPU: the same events as
    /// `unmap` page by page.
    fn unmap_many(&self, pages: &[u64], size: PageSize, results: &mut [Result<Unmapped, Error>]) {
        assert_eq!(pages.len(), results.len(), "one result per page");
        for (&page, result) in pages.iter().zip(results.iter_mut()) {
            *result = check_page(page, size).and_then(|()| {
                let before = crate::paging::unmap_entry(page, size)?;
                Ok(Unmapped {
                    frame: before.frame,
                    bits: before.bits(),
                })
            });
        }
        for (&page, result) in pages.iter().zip(results.iter()) {
            if result.is_ok() {
                crate::tlb::invalidate_local(page);
            }
        }
    }

    fn test_and_clear_accessed(
        &self,
        first: u64,
        size: PageSize,
        bits: &mut [Option<AccessBits>],
    ) -> Result<usize, Error> {
        let len = (bits.len() as u64)
            .checked_mul(size.bytes())
            .ok_or(Error::NotInWindow(first))?;
        if !first.is_multiple_of(size.bytes()) {
            return Err(Error::Unaligned(first));
        }
        if !bits.is_empty() && !in_window(first, len) {
            return Err(Error::NotInWindow(first));
        }
        let mut accessed = 0;
        for (i, slot) in bits.iter_mut().enumerate() {
            let page = first + i as u64 * size.bytes();
            *slot = match crate::paging::test_and_clear_accessed(page, size) {
                Ok(before) => {
                    accessed += usize::from(before.accessed);
                    Some(before.bits())
                }
                Err(_) => None,
            };
        }
        Ok(accessed)
    }

    fn translate(&self, page: u64) -> Option<Frame> {
        if !in_window(page, 1) {
            return None;
        }
        // Inside a large mapping, the 4 KiB frame backing this page.
        let m = crate::paging::lookup(page)?;
        Frame::from_addr(m.frame.addr() + (page & (m.size.bytes() - 1) & !(PAGE_SIZE - 1)))
    }

    fn access_bits(&self, page: u64) -> Result<AccessBits, Error> {
        if !page.is_multiple_of(PAGE_SIZE) {
            return Err(Error::Unaligned(page));
        }
        if !in_window(page, 1) {
            return Err(Error::NotInWindow(page));
        }
        let m = crate::paging::lookup(page).ok_or(Error::NotMapped(page))?;
        Ok(AccessBits {
            accessed: Some(m.accessed),
            dirty: Some(m.dirty),
        })
    }

    fn clear_access_bits(&self, page: u64) -> Result<AccessBits, Error> {
        if !page.is_multiple_of(PAGE_SIZE) {
            return Err(Error::Unaligned(page));
        }
        if !in_window(page, 1) {
            return Err(Error::NotInWindow(page));
        }
        let m = crate::paging::clear_access_bits(page)?;
        Ok(AccessBits {
            accessed: Some(m.accessed),
            dirty: Some(m.dirty),
        })
    }

    fn invalidate_local(&self, page: u64) {
        crate::tlb::invalidate_local(page);
    }

    fn invalidate_local_many(&self, pages: &[u64]) {
        for &page in pages {
            crate::tlb::invalidate_local(page);
        }
    }

    fn flush_local(&self) {
        crate::tlb::flush_local();
    }

    fn invalidate_all(&self, page: u64) {
        crate::smp::invalidate_all(page);
    }

    fn set_fault_hook(&self, hook: Option<FaultHook>) {
        FAULT_HOOK.set(hook);
        update_page_fault_hook();
    }

    fn set_window_fault_hook(
        &self,
        window: &Window,
        hook: Option<WindowFaultHook>,
        context: usize,
    ) -> Result<(), Error> {
        let index = exact_window(window).ok_or(Error::NotInWindow(window.base))?;
        WINDOW_HOOKS[index].set(hook, context);
        update_page_fault_hook();
        Ok(())
    }

    fn cpu_count(&self) -> usize {
        crate::smp::cpu_count()
    }

    fn cpu_id(&self) -> usize {
        percpu::cpu_id() as usize
    }

    fn run_on_all(&self, f: &(dyn Fn(usize) + Sync)) {
        crate::smp::run_on_all(f);
    }

    fn set_timer_hook(&self, hook: Option<EventHook>) {
        interrupts::set_timer_hook(hook);
    }

    fn set_timer(&self, period_us: Option<u64>) -> Result<(), Error> {
        crate::apic::set_timer(period_us);
        Ok(())
    }

    fn set_ipi_hook(&self, hook: Option<EventHook>) {
        interrupts::set_ipi_hook(hook);
    }

    fn send_ipi(&self, cpu: usize) -> Result<(), Error> {
        if cpu >= self.cpu_count() {
            return Err(Error::NoSuchCpu(cpu));
        }
        crate::apic::send_ipi(cpu as u32, crate::apic::vector::USER_IPI);
        percpu::count(Event::IpiSent);
        Ok(())
    }

    fn counters(&self) -> EventCounts {
        let exits = crate::hypercall::exits();
        EventCounts::from_totals(percpu::total, exits.vmm, exits.kvm, 0)
    }
}
