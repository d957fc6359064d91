//! The process implementation of the privileged API: [`ProcessPlatform`], a
//! [`Platform`] for an ordinary Linux process ("process mode").
//!
//! It gives a database the same model as the guest, built from Linux's
//! virtual-memory interfaces:
//!
//! | capability | how (module) |
//! |---|---|
//! | windows | `mmap(PROT_NONE, MAP_NORESERVE)`, 2 MiB aligned ([`windows`]) |
//! | frames | pages of one `memfd`, mapped whole as the direct map ([`frames`]) |
//! | map / unmap / protect | `mmap(MAP_FIXED \| MAP_SHARED)` of the memory file at the frame's offset / `mmap(MAP_FIXED, PROT_NONE)` / `mprotect` ([`windows`]) |
//! | accessed / dirty bits | not observable: `None` (see below) |
//! | TLB invalidation | no-ops, counted: the kernel keeps TLBs coherent and shoots down other CPUs itself |
//! | fault hook | a `SIGSEGV` handler that calls the hook in the faulting thread ([`faults`]) |
//! | CPUs | a pool of worker threads, one per configured CPU ([`cpus`]) |
//! | timer, IPIs | POSIX timers and queued real-time signals ([`interrupts`]) |
//! | event counters | per-CPU atomics; shootdowns from `/proc/interrupts` ([`counters`]) |
//! | `vm.max_map_count` | every window and mapped page charged against it before the system call ([`maps`]) |
//!
//! A platform is created with [`ProcessPlatform::new`] and lives for the rest
//! of the process (`&'static`): the signal handlers find it, its windows and
//! its worker threads through process-wide tables, and nothing is released.
//! Up to [`MAX_PLATFORMS`] platforms and [`windows::MAX_WINDOWS`] windows may
//! exist in one process.
//!
//! **Accessed and dirty bits.** Linux offers no per-page accessed bit to a
//! process ([`AccessBits::accessed`] is `None`). The only per-page dirty
//! information is the soft-dirty bit (bit 55 of `/proc/self/pagemap`), which
//! (1) needs `CONFIG_MEM_SOFT_DIRTY` — the kernel of the development machines
//! lacks it: the bit stays 0 after writes —, (2) is set on every page of a
//! newly created mapping, and every `map` here creates one, and (3) can only be
//! cleared for the whole process (`echo 4 > /proc/self/clear_refs`). So
//! [`AccessBits::dirty`] is `None` too, [`Capabilities`] says so, and
//! [`Platform::clear_access_bits`] returns [`Error::Unsupported`]. `unmap`
//! and `protect` report `None` bits, and `test_and_clear_accessed` reports
//! each mapped page with `None` bits and clears nothing. The batched calls
//! (`unmap_many`, `invalidate_local_many`) are the trait's loops: one system
//! call (and its events) per page unmapped, one counted no-op per page
//! invalidated.
//!
//! **Large pages.** A 2 MiB mapping maps 2 MiB of the memory file at a 2 MiB
//! aligned window page; whether the kernel backs it with one huge page is not
//! guaranteed (shared memory uses huge pages only when
//! `/sys/kernel/mm/transparent_hugepage/shmem_enabled` allows it; it is
//! `never` on the development machines), so in a process a large mapping
//! saves system calls and bookkeeping, not TLB entries.
//!
//! **Costs.** Each `map`, `unmap` and `protect` is one system call, counted as
//! one `pte_writes`; `unmap` and `protect` also count one
//! `local_invalidations` (the kernel flushes the range on this CPU, and sends
//! shootdown IPIs to the other CPUs that run the process, which show in
//! `shootdowns`). `invalidate_local`, `flush_local` and `invalidate_all`
//! make no system call; they count what they stand for
//! (`invalidate_all` = 1 local + `cpu_count - 1` remote invalidations, no
//! IPI sent by the library). Counted figures per operation are in the crate's
//! `docs/costs.md`.
//!
//! **The limit on memory mappings.** Each mapped page that does not continue
//! its neighbour's mapping is a kernel VMA, and Linux refuses a process more
//! than `vm.max_map_count` of them (65,530 by default; `ENOMEM` from `mmap`,
//! which used to come after ~32,000 scattered mappings, in `map` and in an
//! `unmap` that splits a mapping). The platform cannot choose where a caller
//! maps which frame, so rather than hoping the kernel merges neighbours it
//! keeps a bound that holds whatever the layout ([`maps`]): a window with `m`
//! mapped pages holds at most `2m + 1` VMAs, so each window is charged 3 and
//! each mapped page 2, against 7/8 of the limit (the rest is headroom for the
//! rest of the process). Then:
//! - `map` and `reserve` that would pass the allowance fail with
//!   [`Error::MappingLimit`] before any system call, with nothing changed;
//! - `unmap` and `protect` only lower the charge or keep it, and the bound
//!   covers the split they may cause, so they never fail for the limit:
//!   eviction cannot stop half-way;
//! - [`ProcessPlatform::new`] refuses, with the same error, a configuration
//!   whose frames, each mapped apart in one window, could pass the allowance
//!   (about 28,660 frames, 112 MiB, with the default limit): raise
//!   `vm.max_map_count` for larger memory files.
//!
//! The bound is pessimistic for pools that map consecutive frames at
//! consecutive pages (the kernel merges those into one VMA) and for large
//! pages; it is what makes the check one atomic add, exact under concurrent
//! edits of neighbouring pages and async-signal-safe.
//! [`ProcessPlatform::map_count`] reports the charge and the allowance.
//!
//! **Signal context.** The fault, timer and IPI hooks run in signal handlers.
//! There they may call `map`, `unmap`, `protect`, `translate`,
//! `alloc_frame`, `free_frame`, `frame_ptr`, `free_frames`, the TLB calls and
//! `cpu_id`, which are lock-free and async-signal-safe; not `reserve`,
//! `run_on_all`, `set_timer`, `send_ipi` or `counters`. A hook must not
//! operate on a page whose mapping call it interrupted (it would wait for
//! that call forever).

pub mod counters;
pub mod cpus;
pub mod faults;
pub mod frames;
pub mod interrupts;
pub mod maps;
pub mod windows;

pub use counters::tlb_shootdowns;
pub use interrupts::{ipi_signal, timer_signal};
pub use windows::{live_windows, MAX_WINDOWS};

use crate::hook::HookCell;
use crate::platform::{
    AccessBits, Capabilities, Error, EventCounts, EventHook, FaultHook, Frame, PageSize, Platform,
    Protection, Released, Unmapped, Window, WindowFaultHook, LARGE_PAGE_SIZE, PAGE_SIZE,
};
use core::sync::atomic::{AtomicPtr, AtomicU64, AtomicUsize, Ordering};
use counters::{Counters, Event};
use cpus::Pool;
use frames::Frames;
use interrupts::Interrupts;
use std::boxed::Box;
use std::sync::OnceLock;

/// How many platforms one process may create.
pub const MAX_PLATFORMS: usize = 64;

/// Configuration of a [`ProcessPlatform`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Config {
    /// Capacity of the memory file in 4 KiB frames (whole 2 MiB chunks of it
    /// can be allocated as large frames). Memory is only used once touched.
    pub frames: u64,
    /// Number of CPUs: worker threads, `1..`.
    pub cpus: usize,
    /// Pin worker `i` to the `i`-th allowed core when there are at least
    /// `cpus` of them.
    pub pin: bool,
    /// Total bytes of windows the platform may reserve.
    pub address_space: u64,
    /// A lower limit on the process's memory mappings than
    /// `vm.max_map_count` for this platform (for tests); `None` (the
    /// default) uses the sysctl. A value above the sysctl's is ignored. See
    /// [`maps`].
    pub max_map_count: Option<u64>,
}

impl Default for Config {
    /// 64 MiB of frames, 2 CPUs, pinned, 16 TiB of windows.
    fn default() -> Config {
        Config {
            frames: 16 * 1024,
            cpus: 2,
            pin: true,
            address_space: 1 << 44,
            max_map_count: None,
        }
    }
}

/// The privileged API in a Linux process (see the [module docs](self)).
pub struct ProcessPlatform {
    id: usize,
    config: Config,
    frames: Frames,
    pool: Pool,
    counters: Counters,
    fault_hook: HookCell<FaultHook>,
    interrupts: Interrupts,
    reserved: AtomicU64,
    maps: maps::Account,
}

/// How many memory mappings a platform is charged, and may be (see [`maps`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapCount {
    /// The platform's charge: an upper bound on the kernel VMAs it holds.
    pub charged: u64,
    /// The most it may be charged: 7/8 of `limit`.
    pub allowed: u64,
    /// The limit: `vm.max_map_count`, or the lower `Config::max_map_count`.
    pub limit: u64,
}

static PLATFORMS: [AtomicPtr<ProcessPlatform>; MAX_PLATFORMS] =
    [const { AtomicPtr::new(core::ptr::null_mut()) }; MAX_PLATFORMS];
/// Platform ids handed out so far (ids start at 1; 0 means "none").
static NEXT_ID: AtomicUsize = AtomicUsize::new(1);

/// The platform with id `id` (lock-free, for the signal handlers).
fn platform_by_id(id: usize) -> Option<&'static ProcessPlatform> {
    let p = PLATFORMS.get(id)?.load(Ordering::Acquire);
    // SAFETY: registered platforms are leaked boxes, never freed.
    unsafe { p.as_ref() }
}

impl ProcessPlatform {
    /// Creates a platform: the memory file, the worker threads, and (once
    /// per process) the signal handlers. It lives until the process exits.
    ///
    /// Refuses with [`Error::MappingLimit`] a configuration that could need
    /// more memory mappings than `vm.max_map_count` allows (see [`maps`]):
    /// one window with every frame mapped as a separate small page.
    pub fn new(config: Config) -> Result<&'static ProcessPlatform, Error> {
        if config.cpus == 0 {
            return Err(Error::NoSuchCpu(0));
        }
        let system = maps::system_limit();
        let limit = config.max_map_count.map_or(system, |l| l.min(system));
        let worst = maps::worst_case(config.frames, config.cpus);
        if worst > maps::allowed(limit) {
            return Err(Error::MappingLimit {
                needed: worst,
                allowed: maps::allowed(limit),
                limit,
            });
        }
        let account = maps::Account::new(limit);
        let base = maps::platform_base(config.cpus);
        account.charge(base)?;
        let parts = (|| {
            install_handlers()?;
            let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
            if id >= MAX_PLATFORMS {
                return Err(Error::Unsupported(
                    "more than MAX_PLATFORMS process platforms",
                ));
            }
            let frames = Frames::new(config.frames)?;
            let pool = Pool::start(id, config.cpus, config.pin)?;
            Ok((id, frames, pool))
        })();
        let (id, frames, pool) = match parts {
            Ok(parts) => parts,
            Err(e) => {
                account.release(base);
                return Err(e);
            }
        };
        let platform: &'static ProcessPlatform = Box::leak(Box::new(ProcessPlatform {
            id,
            config,
            frames,
            pool,
            counters: Counters::new(config.cpus),
            fault_hook: HookCell::new(),
            interrupts: Interrupts::new(config.cpus),
            reserved: AtomicU64::new(0),
            maps: account,
        }));
        PLATFORMS[id].store(
            platform as *const ProcessPlatform as *mut ProcessPlatform,
            Ordering::Release,
        );
        log::debug!(
            "process platform {id}: {} frames ({} MiB), {} cpus",
            config.frames,
            (config.frames * PAGE_SIZE) >> 20,
            config.cpus
        );
        Ok(platform)
    }

    /// The configuration it was created with.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Size of the memory file in bytes.
    pub fn memory_bytes(&self) -> u64 {
        self.frames.bytes()
    }

    /// The platform's charge of memory mappings and its allowance.
    pub fn map_count(&self) -> MapCount {
        let own = self.maps.own();
        MapCount {
            charged: own.used(),
            allowed: own.allowed(),
            limit: own.limit(),
        }
    }

    fn cpu_count_internal(&self) -> usize {
        self.pool.len()
    }

    fn count(&self, event: Event, n: u64) {
        self.counters.add(cpus::cpu_id(self.id), event, n);
    }

    /// The window holding `page` of `size`, after checking alignment.
    fn window_of(&self, page: u64, size: PageSize) -> Result<&'static windows::Window, Error> {
        if !page.is_multiple_of(size.bytes()) {
            return Err(Error::Unaligned(page));
        }
        windows::find_owned(self.id, page).ok_or(Error::NotInWindow(page))
    }

    /// The window holding mapped small page `page` (for the A/D calls).
    fn mapped_page(&self, page: u64) -> Result<(), Error> {
        let w = self.window_of(page, PageSize::Small)?;
        w.translate(page).map(|_| ()).ok_or(Error::NotMapped(page))
    }
}

impl Platform for ProcessPlatform {
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            accessed_bit: false,
            dirty_bit: false,
            per_page_clear: false,
            interrupts: true,
            bounded_mappings: true,
        }
    }

    /// One `mmap`. A `len` of 0 reserves 2 MiB (as in the guest); one that
    /// overflows when rounded up, or goes beyond the configured
    /// `address_space`, is `OutOfAddressSpace(len)`.
    fn reserve(&self, len: u64) -> Result<Window, Error> {
        let Some(rounded) = len.max(1).checked_next_multiple_of(LARGE_PAGE_SIZE) else {
            return Err(Error::OutOfAddressSpace(len));
        };
        let before = self.reserved.fetch_add(rounded, Ordering::Relaxed);
        if before
            .checked_add(rounded)
            .is_none_or(|total| total > self.config.address_space)
        {
            self.reserved.fetch_sub(rounded, Ordering::Relaxed);
            return Err(Error::OutOfAddressSpace(len));
        }
        if let Err(e) = self.maps.charge(maps::PER_WINDOW) {
            self.reserved.fetch_sub(rounded, Ordering::Relaxed);
            return Err(e);
        }
        match windows::reserve(self.id, rounded) {
            Ok(w) => Ok(Window {
                base: w.base,
                len: w.len,
            }),
            Err(e) => {
                self.reserved.fetch_sub(rounded, Ordering::Relaxed);
                self.maps.release(maps::PER_WINDOW);
                Err(e)
            }
        }
    }

    /// One `munmap` (counted as 1 PTE write); the bits reported are `None`.
    /// The mapping-limit charge of the window and of every page still
    /// mapped is given back, and so is its share of `address_space`.
    unsafe fn release(
        &self,
        window: Window,
        still_mapped: &mut dyn FnMut(u64, PageSize, Unmapped),
    ) -> Result<Released, Error> {
        let w = windows::find_owned(self.id, window.base)
            .filter(|w| w.base == window.base && w.len == window.len)
            .ok_or(Error::NotReserved(window.base))?;
        // SAFETY: `w` is this platform's, found registered just now (a
        // release racing ours is refused inside), and the caller promised
        // nothing uses the window any more.
        let mapped = unsafe { windows::release(w)? };
        let pages = mapped.len() as u64;
        self.maps.release(maps::PER_WINDOW + pages * maps::PER_PAGE);
        self.reserved.fetch_sub(w.len, Ordering::Relaxed);
        self.count(Event::PteWrite, 1);
        // After the munmap: no thread can reach these frames through it.
        for (page, size, frame) in mapped {
            still_mapped(
                page,
                size,
                Unmapped {
                    frame,
                    bits: AccessBits::default(),
                },
            );
        }
        Ok(Released { pages, tables: 0 })
    }

    fn alloc_frame(&self, size: PageSize) -> Result<Frame, Error> {
        self.frames.alloc(size)
    }

    unsafe fn free_frame(&self, frame: Frame, size: PageSize) {
        self.frames.free(frame, size)
    }

    /// Null for a frame outside the memory file.
    fn frame_ptr(&self, frame: Frame) -> *mut u8 {
        self.frames.ptr(frame)
    }

    fn free_frames(&self) -> u64 {
        self.frames.available()
    }

    /// A frame outside the memory file is `Os("map: frame outside the memory
    /// file", EINVAL)`.
    fn map(&self, page: u64, frame: Frame, size: PageSize, prot: Protection) -> Result<(), Error> {
        let w = self.window_of(page, size)?;
        if !frame.addr().is_multiple_of(size.bytes()) {
            return Err(Error::Unaligned(frame.addr()));
        }
        if !self.frames.contains(frame, size) {
            return Err(Error::Os(
                "map: frame outside the memory file",
                libc::EINVAL,
            ));
        }
        self.maps.charge(maps::PER_PAGE)?;
        if let Err(e) = w.map(page, frame, size, prot, self.frames.fd()) {
            self.maps.release(maps::PER_PAGE);
            return Err(e);
        }
        self.count(Event::PteWrite, 1);
        Ok(())
    }

    /// One `mmap(MAP_FIXED | MAP_SHARED)` of the frame's page of the memory
    /// file over the page; a page not mapped before is charged like `map`.
    /// The bits are `None` (see the module docs).
    fn remap(
        &self,
        page: u64,
        frame: Frame,
        size: PageSize,
        prot: Protection,
    ) -> Result<Option<Unmapped>, Error> {
        let w = self.window_of(page, size)?;
        if !frame.addr().is_multiple_of(size.bytes()) {
            return Err(Error::Unaligned(frame.addr()));
        }
        if !self.frames.contains(frame, size) {
            return Err(Error::Os(
                "remap: frame outside the memory file",
                libc::EINVAL,
            ));
        }
        let old = w.remap(page, frame, size, prot, self.frames.fd(), &self.maps)?;
        self.count(Event::PteWrite, 1);
        if old.is_some() {
            self.count(Event::LocalInvalidation, 1);
        }
        Ok(old.map(|frame| Unmapped {
            frame,
            bits: AccessBits::default(),
        }))
    }

    /// The bits are `None`: Linux does not expose a page's accessed/dirty
    /// state to the process (see the module docs).
    fn unmap(&self, page: u64, size: PageSize) -> Result<Unmapped, Error> {
        let frame = self.window_of(page, size)?.unmap(page, size)?;
        self.maps.release(maps::PER_PAGE);
        self.count(Event::PteWrite, 1);
        self.count(Event::LocalInvalidation, 1);
        Ok(Unmapped {
            frame,
            bits: AccessBits::default(),
        })
    }

    /// The bits are `None`, as for `unmap`.
    fn protect(&self, page: u64, size: PageSize, prot: Protection) -> Result<AccessBits, Error> {
        self.window_of(page, size)?.protect(page, size, prot)?;
        self.count(Event::PteWrite, 1);
        self.count(Event::LocalInvalidation, 1);
        Ok(AccessBits::default())
    }

    /// `None` also for an unaligned page or one outside the windows.
    fn translate(&self, page: u64) -> Option<Frame> {
        self.window_of(page, PageSize::Small).ok()?.translate(page)
    }

    /// Both bits are `None` (see the module docs).
    fn access_bits(&self, page: u64) -> Result<AccessBits, Error> {
        self.mapped_page(page)?;
        Ok(AccessBits {
            accessed: None,
            dirty: None,
        })
    }

    /// Checks `page` like `access_bits`, then `Unsupported`.
    fn clear_access_bits(&self, page: u64) -> Result<AccessBits, Error> {
        self.mapped_page(page)?;
        Err(Error::Unsupported(
            "per-page clearing of accessed/dirty state (Linux clears soft-dirty only process-wide)",
        ))
    }

    /// Reports every mapped page with `None` bits and clears nothing: no
    /// system call, no event; returns 0.
    fn test_and_clear_accessed(
        &self,
        first: u64,
        size: PageSize,
        bits: &mut [Option<AccessBits>],
    ) -> Result<usize, Error> {
        let len = (bits.len() as u64)
            .checked_mul(size.bytes())
            .ok_or(Error::NotInWindow(first))?;
        let w = self.window_of(first, size)?;
        if !bits.is_empty()
            && first
                .checked_add(len)
                .is_none_or(|end| end > w.base + w.len)
        {
            return Err(Error::NotInWindow(first));
        }
        for (i, slot) in bits.iter_mut().enumerate() {
            let page = first + i as u64 * size.bytes();
            *slot = w.translate_sized(page, size).map(|_| AccessBits::default());
        }
        Ok(0)
    }

    fn invalidate_local(&self, _page: u64) {
        self.count(Event::LocalInvalidation, 1);
    }

    fn flush_local(&self) {
        self.count(Event::LocalFlush, 1);
    }

    fn invalidate_all(&self, _page: u64) {
        self.count(Event::LocalInvalidation, 1);
        self.count(
            Event::RemoteInvalidation,
            self.cpu_count_internal() as u64 - 1,
        );
    }

    fn set_fault_hook(&self, hook: Option<FaultHook>) {
        self.fault_hook.set(hook);
    }

    fn set_window_fault_hook(
        &self,
        window: &Window,
        hook: Option<WindowFaultHook>,
        context: usize,
    ) -> Result<(), Error> {
        let w = windows::find_owned(self.id, window.base)
            .filter(|w| w.base == window.base && w.len == window.len)
            .ok_or(Error::NotInWindow(window.base))?;
        w.hook.set(hook, context);
        Ok(())
    }

    fn cpu_count(&self) -> usize {
        self.cpu_count_internal()
    }

    /// The worker's index on a worker thread, 0 on any other thread.
    fn cpu_id(&self) -> usize {
        cpus::cpu_id(self.id)
    }

    /// Panics if called from one of this platform's workers (it would wait
    /// for itself), or if `f` panicked on some CPU.
    fn run_on_all(&self, f: &(dyn Fn(usize) + Sync)) {
        self.pool.run_on_all(f);
    }

    fn set_timer_hook(&self, hook: Option<EventHook>) {
        self.interrupts.timer_hook.set(hook);
    }

    /// The timer signals the calling thread; a period of 0 is
    /// `Os("timer_settime", EINVAL)`.
    fn set_timer(&self, period_us: Option<u64>) -> Result<(), Error> {
        self.interrupts.set_timer(self.id, self.cpu_id(), period_us)
    }

    fn set_ipi_hook(&self, hook: Option<EventHook>) {
        self.interrupts.ipi_hook.set(hook);
    }

    fn send_ipi(&self, cpu: usize) -> Result<(), Error> {
        let worker = self.pool.worker(cpu).ok_or(Error::NoSuchCpu(cpu))?;
        interrupts::send_ipi(self.id, cpu, worker.pthread)?;
        self.count(Event::IpiSent, 1);
        Ok(())
    }

    /// Reads `/proc/interrupts` for `shootdowns` (machine-wide).
    fn counters(&self) -> EventCounts {
        self.counters.sum()
    }
}

/// The calling thread's `errno`.
fn last_errno() -> i32 {
    // SAFETY: __errno_location returns this thread's errno, always valid.
    unsafe { *libc::__errno_location() }
}

/// Saves `errno` and restores it when dropped (for signal handlers).
struct ErrnoGuard(i32);

impl ErrnoGuard {
    fn save() -> ErrnoGuard {
        ErrnoGuard(last_errno())
    }
}

impl Drop for ErrnoGuard {
    fn drop(&mut self) {
        // SAFETY: __errno_location returns this thread's errno, always valid.
        unsafe { *libc::__errno_location() = self.0 };
    }
}

/// Installs the SIGSEGV, timer and IPI handlers, once per process.
fn install_handlers() -> Result<(), Error> {
    static INSTALLED: OnceLock<Result<(), Error>> = OnceLock::new();
    *INSTALLED.get_or_init(|| {
        let segv = faults::on_sigsegv
            as extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void);
        let timer = interrupts::on_timer
            as extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void);
        let ipi = interrupts::on_ipi
            as extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void);
        let previous = install(libc::SIGSEGV, segv as usize, 0)?;
        faults::set_previous(&previous);
        install(timer_signal(), timer as usize, libc::SA_RESTART)?;
        install(ipi_signal(), ipi as usize, libc::SA_RESTART)?;
        Ok(())
    })
}

/// Installs `handler` (SA_SIGINFO) for `sig`, blocking the timer and IPI
/// signals while it runs (and `sig` itself: SIGSEGV stays deliverable in the
/// timer and IPI handlers, so a hook there may fault into the fault hook, as
/// a guest interrupt handler may page-fault); returns the previous action.
fn install(sig: libc::c_int, handler: usize, flags: libc::c_int) -> Result<libc::sigaction, Error> {
    // SAFETY: all-zero sigactions are valid; the mask is initialised with
    // sigemptyset before use; the handler has the SA_SIGINFO signature.
    unsafe {
        let mut action: libc::sigaction = core::mem::zeroed();
        action.sa_sigaction = handler;
        action.sa_flags = libc::SA_SIGINFO | flags;
        libc::sigemptyset(&mut action.sa_mask);
        libc::sigaddset(&mut action.sa_mask, timer_signal());
        libc::sigaddset(&mut action.sa_mask, ipi_signal());
        let mut previous: libc::sigaction = core::mem::zeroed();
        if libc::sigaction(sig, &action, &mut previous) != 0 {
            return Err(Error::Os("sigaction", last_errno()));
        }
        Ok(previous)
    }
}
