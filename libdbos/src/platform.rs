//! The privileged API a database programs against, and the types it uses.
//!
//! [`Platform`] is implemented twice: by the guest kernel (`libdbos` in ring 0,
//! `GuestPlatform`) and by an ordinary Linux process (`ProcessPlatform`). A
//! buffer pool, a snapshot mechanism or a test written against the trait runs
//! on both; the guest gives it direct control of page tables, the TLB and
//! interrupts, the process is the fallback and the baseline.
//!
//! The model:
//! - A **window** is a range of virtual addresses reserved for the database;
//!   nothing is mapped in it until the database maps pages.
//! - A **frame** is a 4 KiB (or 2 MiB) unit of memory the platform owns: guest
//!   RAM in the guest, a page of a memory file in a process. Its contents are
//!   always reachable through [`Platform::frame_ptr`], whether or not it is
//!   mapped in a window, and it can be mapped at any window page.
//! - Mapping calls edit translations; they do **not** invalidate other CPUs'
//!   TLBs (see each call). [`Platform::invalidate_all`] does, at the price of
//!   interrupting every other CPU.
//! - An access to an unmapped or protected window page calls the **fault
//!   hook** on the faulting CPU/thread; the hook resolves it (maps a frame,
//!   changes protection) and returns [`FaultResolution::Retry`], and the access
//!   is retried.
//! - Every implementation counts its events ([`EventCounts`]), so a mechanism
//!   can be judged by page-table writes, invalidations and IPIs per operation.
//!
//! What each call costs in each implementation is stated on the call and
//! tabulated (from counted runs) in the crate's `docs/costs.md`.

use core::fmt;

/// Sizes of a small page (and frame) and of a large page (and large frame).
pub use dbos_abi::{LARGE_PAGE_SIZE, PAGE_SIZE};

/// A frame: a 4 KiB unit of memory owned by the platform (in the guest, its
/// guest-physical address; in a process, its offset in the memory file). A
/// large frame is 512 consecutive, 2 MiB-aligned frames named by the first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Frame(u64);

impl Frame {
    /// The frame at byte address/offset `addr`, which must be 4 KiB aligned.
    pub const fn from_addr(addr: u64) -> Option<Frame> {
        if addr.is_multiple_of(PAGE_SIZE) {
            Some(Frame(addr))
        } else {
            None
        }
    }
    /// Its byte address (guest-physical) or offset (process memory file).
    pub const fn addr(self) -> u64 {
        self.0
    }
}

/// Access rights of a mapped window page. Window pages are never executable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protection {
    /// Reads succeed, writes fault.
    ReadOnly,
    /// Reads and writes succeed.
    ReadWrite,
}

/// Page sizes a mapping can use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PageSize {
    /// 4 KiB.
    Small,
    /// 2 MiB; the page address and the frame must be 2 MiB aligned.
    Large,
}

impl PageSize {
    pub const fn bytes(self) -> u64 {
        match self {
            PageSize::Small => PAGE_SIZE,
            PageSize::Large => LARGE_PAGE_SIZE,
        }
    }
}

/// A reserved range of virtual addresses, `[base, base + len)`, page aligned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Window {
    pub base: u64,
    pub len: u64,
}

impl Window {
    /// Whether `[addr, addr + len)` lies inside the window.
    pub fn contains(&self, addr: u64, len: u64) -> bool {
        addr >= self.base
            && addr
                .checked_add(len)
                .is_some_and(|end| end <= self.base + self.len)
    }
    /// Address of the `i`-th small page.
    pub fn page(&self, i: u64) -> u64 {
        self.base + i * PAGE_SIZE
    }
}

/// The accessed and dirty state of a mapped page, as far as the platform can
/// observe it: `None` where it cannot (see [`Platform::capabilities`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct AccessBits {
    pub accessed: Option<bool>,
    pub dirty: Option<bool>,
}

/// What [`Platform::unmap`] took away: the frame, and the page's accessed
/// and dirty state at the moment its translation disappeared (`None` where
/// the platform cannot observe it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Unmapped {
    pub frame: Frame,
    pub bits: AccessBits,
}

/// What [`Platform::release`] took down, besides the pages it reported.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Released {
    /// Pages that were still mapped (each reported to the caller once).
    pub pages: u64,
    /// Page-table pages freed (guest; 0 in a process, whose kernel frees
    /// its own).
    pub tables: u64,
}

/// A fault in a window, handed to the fault hook.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fault {
    /// The faulting address (not page aligned).
    pub addr: u64,
    /// The access was a write.
    pub write: bool,
    /// The page was mapped (a protection fault), not missing.
    pub present: bool,
    /// The faulting instruction.
    pub ip: u64,
    /// The CPU (guest) or thread's CPU index (process) that faulted.
    pub cpu: usize,
}

/// What the fault hook did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultResolution {
    /// The fault is resolved; retry the access.
    Retry,
    /// Not resolved: the platform's default action (the guest stops with a
    /// report; a process aborts with a message).
    Unhandled,
}

/// The fault hook: runs on the faulting CPU (guest) or thread (process), in
/// interrupt or signal context. It may call the mapping and frame functions
/// of the platform, but must not block on a lock the faulting code may hold,
/// and must not fault itself.
pub type FaultHook = fn(&Fault) -> FaultResolution;

/// A window's own fault hook: as [`FaultHook`], with the context value
/// registered with it (for example the address of the buffer pool or
/// snapshot that owns the window), so that several mechanisms, each with
/// its own windows, can handle their faults side by side.
pub type WindowFaultHook = fn(&Fault, context: usize) -> FaultResolution;

/// The hook a fault in a window goes to: the window's own, with its
/// context, or else the platform-wide one. Both platforms dispatch through it.
#[derive(Clone, Copy)]
pub(crate) enum FaultHandler {
    Window(WindowFaultHook, usize),
    Platform(FaultHook),
}

impl FaultHandler {
    /// The window's own hook if it has one; only then is `platform` read.
    pub(crate) fn choose(
        own: Option<(WindowFaultHook, usize)>,
        platform: impl FnOnce() -> Option<FaultHook>,
    ) -> Option<FaultHandler> {
        match own {
            Some((hook, context)) => Some(FaultHandler::Window(hook, context)),
            None => platform().map(FaultHandler::Platform),
        }
    }

    /// Calls the hook.
    pub(crate) fn call(self, fault: &Fault) -> FaultResolution {
        match self {
            FaultHandler::Window(hook, context) => hook(fault, context),
            FaultHandler::Platform(hook) => hook(fault),
        }
    }
}

/// A hook for timer ticks and inter-processor interrupts: runs on the CPU
/// (thread) the event is for, in interrupt (signal) context, with its index.
pub type EventHook = fn(cpu: usize);

/// Events counted by a platform. Sums over all CPUs; read with
/// [`Platform::counters`] and subtract two readings to cost an operation.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EventCounts {
    /// Faults delivered to the fault hook.
    pub faults: u64,
    /// Page-table entries written (guest), or mapping system calls made
    /// (process: each `mmap`/`mprotect`/`madvise` counts one).
    pub pte_writes: u64,
    /// Single-page invalidations on the calling CPU (`invlpg`).
    pub local_invalidations: u64,
    /// Whole-TLB flushes on the calling CPU (CR3 reload).
    pub local_flushes: u64,
    /// Invalidations requested on other CPUs.
    pub remote_invalidations: u64,
    /// Inter-processor interrupts sent.
    pub ipis_sent: u64,
    /// Exits to the VMM taken by the whole VM (guest; 0 in a process): the
    /// returns from `KVM_RUN` the VMM counts (hypercalls, the exiting
    /// doorbell). Exits KVM handles in the kernel are not among them.
    pub vmm_exits: u64,
    /// All VM exits of the whole VM as KVM counts them (its per-vCPU
    /// `exits` statistic, read by the VMM), those it handles in the kernel
    /// included: interrupts and IPIs through the in-kernel APIC, page
    /// faults and TLB instructions under shadow paging, emulated
    /// instructions. `None` in a process, and in a guest whose host KVM
    /// does not offer its statistics.
    pub kvm_exits: Option<u64>,
    /// TLB shootdowns the kernel performed (process: from
    /// `/proc/interrupts`, machine-wide; 0 in the guest, which has none it
    /// did not ask for).
    pub shootdowns: u64,
}

/// The events an implementation counts itself (the library-side fields of
/// [`EventCounts`]); `vmm_exits`, `kvm_exits` and `shootdowns` come from
/// outside.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(usize)]
pub enum Event {
    Fault,
    PteWrite,
    LocalInvalidation,
    LocalFlush,
    RemoteInvalidation,
    IpiSent,
}

impl Event {
    /// Number of kinds, for per-CPU counter arrays indexed by `event as usize`.
    pub const COUNT: usize = 6;
}

impl EventCounts {
    /// Counts assembled from the library's own totals (`total(event)`, summed
    /// over CPUs) and the outside sources.
    pub fn from_totals(
        total: impl Fn(Event) -> u64,
        vmm_exits: u64,
        kvm_exits: Option<u64>,
        shootdowns: u64,
    ) -> EventCounts {
        EventCounts {
            faults: total(Event::Fault),
            pte_writes: total(Event::PteWrite),
            local_invalidations: total(Event::LocalInvalidation),
            local_flushes: total(Event::LocalFlush),
            remote_invalidations: total(Event::RemoteInvalidation),
            ipis_sent: total(Event::IpiSent),
            vmm_exits,
            kvm_exits,
            shootdowns,
        }
    }

    /// The counts as an array, in field order (for per-slot atomics);
    /// `kvm_exits` of `None` is `u64::MAX`.
    pub fn to_array(&self) -> [u64; 9] {
        [
            self.faults,
            self.pte_writes,
            self.local_invalidations,
            self.local_flushes,
            self.remote_invalidations,
            self.ipis_sent,
            self.vmm_exits,
            self.kvm_exits.unwrap_or(u64::MAX),
            self.shootdowns,
        ]
    }

    /// The inverse of [`EventCounts::to_array`].
    pub fn from_array(a: [u64; 9]) -> EventCounts {
        let [faults, pte_writes, local_invalidations, local_flushes, remote_invalidations, ipis_sent, vmm_exits, kvm_exits, shootdowns] =
            a;
        EventCounts {
            faults,
            pte_writes,
            local_invalidations,
            local_flushes,
            remote_invalidations,
            ipis_sent,
            vmm_exits,
            kvm_exits: (kvm_exits != u64::MAX).then_some(kvm_exits),
            shootdowns,
        }
    }

    /// The events between `earlier` and `self`.
    pub fn since(&self, earlier: &EventCounts) -> EventCounts {
        EventCounts {
            faults: self.faults - earlier.faults,
            pte_writes: self.pte_writes - earlier.pte_writes,
            local_invalidations: self.local_invalidations - earlier.local_invalidations,
            local_flushes: self.local_flushes - earlier.local_flushes,
            remote_invalidations: self.remote_invalidations - earlier.remote_invalidations,
            ipis_sent: self.ipis_sent - earlier.ipis_sent,
            vmm_exits: self.vmm_exits - earlier.vmm_exits,
            kvm_exits: self
                .kvm_exits
                .zip(earlier.kvm_exits)
                .map(|(now, then)| now - then),
            shootdowns: self.shootdowns.saturating_sub(earlier.shootdowns),
        }
    }
}

/// What an implementation can observe or do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Capabilities {
    /// [`AccessBits::accessed`] is reported.
    pub accessed_bit: bool,
    /// [`AccessBits::dirty`] is reported.
    pub dirty_bit: bool,
    /// [`Platform::clear_access_bits`] clears one page only (otherwise it is
    /// unsupported).
    pub per_page_clear: bool,
    /// Timer and IPI hooks run in interrupt context on the target CPU.
    pub interrupts: bool,
    /// Separately mapped pages count against a limit
    /// ([`Error::MappingLimit`]: the process platform, where each one is a
    /// kernel mapping), so `map` or `remap` of an unmapped page can fail on
    /// it; a mechanism that must not fail midway maps what it needs up
    /// front. `false`: only frames and page-table memory bound mappings
    /// (the guest).
    pub bounded_mappings: bool,
}

/// Why a privileged call failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Error {
    /// The address is not inside a reserved window.
    NotInWindow(u64),
    /// The address or frame is not aligned to the page size.
    Unaligned(u64),
    /// The page is already mapped.
    AlreadyMapped(u64),
    /// The page is not mapped.
    NotMapped(u64),
    /// A large page covers the small page (or the reverse).
    SizeMismatch(u64),
    /// No free frame (or no memory for a page table).
    OutOfFrames,
    /// The page's entry is locked (or changed) by another CPU's lock-free
    /// edit; try again.
    Busy(u64),
    /// No virtual address space left for a window of this size.
    OutOfAddressSpace(u64),
    /// A CPU index beyond [`Platform::cpu_count`].
    NoSuchCpu(usize),
    /// The implementation cannot do this (see [`Capabilities`]).
    Unsupported(&'static str),
    /// A system call failed (process): the call and `errno`.
    Os(&'static str, i32),
    /// The call could take the process past its limit on memory mappings
    /// (process: Linux's `vm.max_map_count`), so it was refused before any
    /// system call: it would need `needed` mappings where the platform may
    /// use `allowed` of the `limit`.
    MappingLimit {
        /// Mappings the platform would hold after the call (or, when a
        /// platform is created, could hold with every frame mapped apart).
        needed: u64,
        /// The share of `limit` the platform may use.
        allowed: u64,
        /// The process's limit (`vm.max_map_count`, or the configured one).
        limit: u64,
    },
    /// The window (named by its base) is not one this platform reserved
    /// and still holds: another platform's, a range that is not exactly a
    /// window, or a window released already.
    NotReserved(u64),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::NotInWindow(a) => write!(f, "address {a:#x} is not in a reserved window"),
            Error::Unaligned(a) => write!(f, "address {a:#x} is not aligned to the page size"),
            Error::AlreadyMapped(a) => write!(f, "page {a:#x} is already mapped"),
            Error::NotMapped(a) => write!(f, "page {a:#x} is not mapped"),
            Error::SizeMismatch(a) => write!(f, "page {a:#x} is mapped with another page size"),
            Error::OutOfFrames => write!(f, "out of frames"),
            Error::Busy(a) => write!(f, "page {a:#x} is being edited by another CPU"),
            Error::OutOfAddressSpace(n) => write!(f, "no address space for a {n}-byte window"),
            Error::NoSuchCpu(c) => write!(f, "no CPU {c}"),
            Error::Unsupported(what) => write!(f, "unsupported on this platform: {what}"),
            Error::Os(call, errno) => write!(f, "{call} failed with errno {errno}"),
            Error::MappingLimit {
                needed,
                allowed,
                limit,
            } => write!(
                f,
                "would need {needed} memory mappings, more than the {allowed} of \
                 vm.max_map_count = {limit} the platform may use; raise the limit \
                 (sysctl -w vm.max_map_count=N) or use fewer frames or windows"
            ),
            Error::NotReserved(base) => write!(
                f,
                "no window reserved by this platform starts at {base:#x} \
                 (another platform's, not a whole window, or released already)"
            ),
        }
    }
}

impl core::error::Error for Error {}

/// The privileged API. All methods take `&self` and may be called from any
/// CPU (thread) concurrently; costs are for the guest / the process.
pub trait Platform: Sync {
    /// What this implementation can observe or do.
    fn capabilities(&self) -> Capabilities;

    // ---- windows -------------------------------------------------------

    /// Reserves `len` bytes (rounded up to 2 MiB) of virtual address space,
    /// 2 MiB aligned, with nothing mapped. Guest: no page-table write until
    /// pages are mapped. Process: one `mmap(PROT_NONE, MAP_NORESERVE)`.
    fn reserve(&self, len: u64) -> Result<Window, Error>;

    /// Gives `window` back: unmaps every page still mapped in it (without
    /// freeing its frame: frames are the caller's), frees the page-table
    /// pages only it used, makes every CPU drop what it cached of it, removes
    /// its fault hook, and makes its slot and its address range reusable by
    /// a later [`reserve`](Self::reserve).
    ///
    /// `still_mapped(page, size, unmapped)` is called once for every page
    /// that was still mapped, **after** every CPU dropped its translations,
    /// so the caller may free `unmapped.frame` there if it owns it (a frame
    /// mapped at several pages is reported once per page). A caller that
    /// unmapped everything before gets no call.
    ///
    /// Errors, before anything is changed: [`Error::NotReserved`] if
    /// `window` is not exactly a window this platform reserved and has not
    /// released (another platform's, a part of one, or released twice).
    ///
    /// Guest: per page still mapped 1 PTE write (its entry cleared), per
    /// page-table page freed 1 PTE write (its parent entry cleared); then,
    /// if any entry was written, one flush of every CPU's TLB (a CR3 reload
    /// here, one IPI per other CPU, which reloads CR3: 1 local flush, `n-1`
    /// IPIs and remote invalidations), before any table or reported frame
    /// can be reused; nothing if the window was empty. A page-table page is
    /// freed when its whole span lies in the window, or when no other live
    /// window meets its span and it is empty once the window's entries are
    /// gone. A CPU that defers its view (the `conformance` test mode) is
    /// refreshed by that flush like any other. Process: one `munmap` of the
    /// window (1 PTE write), the window's bookkeeping freed, and the mapping
    /// limit charge of the window and of each page still mapped given back;
    /// finding the pages still mapped reads one entry per page of the window.
    ///
    /// # Safety
    /// From the call on, nothing accesses an address of the window or calls
    /// the platform for one of its pages (no CPU, thread or fault hook, and
    /// no pointer into it kept for later: a later `reserve` may hand the
    /// same addresses to another window). In the guest, no page table of the
    /// window is linked from outside it (a table shared with another
    /// window's entry, as Snappy's views share the heap's while a snapshot
    /// lives, would be freed under that window).
    unsafe fn release(
        &self,
        window: Window,
        still_mapped: &mut dyn FnMut(u64, PageSize, Unmapped),
    ) -> Result<Released, Error>;

    // ---- frames --------------------------------------------------------

    /// Allocates a frame of `size`; its contents are unspecified.
    fn alloc_frame(&self, size: PageSize) -> Result<Frame, Error>;

    /// Returns a frame.
    ///
    /// # Safety
    /// The frame must come from `alloc_frame` with the same size, be unmapped
    /// everywhere, and not be used afterwards.
    unsafe fn free_frame(&self, frame: Frame, size: PageSize);

    /// Pointer to the frame's contents (`size` bytes), valid while it is
    /// allocated, whether or not it is mapped in a window.
    fn frame_ptr(&self, frame: Frame) -> *mut u8;

    /// The address a device transfers to and from the frame at, if devices
    /// reach frames directly: in the guest, its guest-physical address (the
    /// VMM's disk serves any guest RAM); `None` in a process (a device
    /// reaches only its registered region).
    fn frame_dma_addr(&self, _frame: Frame) -> Option<u64> {
        None
    }

    /// Frames still available to `alloc_frame` (small-frame units).
    fn free_frames(&self) -> u64;

    /// Allocates a 4 KiB frame for disk I/O (a buffer pool's frame): in the
    /// guest, from DMA memory declared to the host (`dma`), so that I/O
    /// into it is served with fixed buffers; elsewhere (the default) an
    /// ordinary frame. Contents unspecified.
    fn alloc_dma_frame(&self) -> Result<Frame, Error> {
        self.alloc_frame(PageSize::Small)
    }

    /// Returns a frame from [`alloc_dma_frame`](Self::alloc_dma_frame).
    ///
    /// # Safety
    /// As [`free_frame`](Self::free_frame), for a frame of `alloc_dma_frame`.
    unsafe fn free_dma_frame(&self, frame: Frame) {
        // SAFETY: forwarded contract.
        unsafe { self.free_frame(frame, PageSize::Small) }
    }

    // ---- mappings ------------------------------------------------------

    /// Maps window page `page` to `frame` with `prot`. The page must be
    /// unmapped; no TLB invalidation is needed (nothing was cached).
    /// Guest: 1 PTE write (plus one per missing page table). Process: 1 `mmap`.
    fn map(&self, page: u64, frame: Frame, size: PageSize, prot: Protection) -> Result<(), Error>;

    /// Points window page `page` at `frame` with `prot`, replacing whatever
    /// translation it had (mapped or not) in one atomic exchange, and
    /// returns the translation replaced (its frame and its accessed/dirty
    /// state at the moment of the exchange), `None` if the page was not
    /// mapped. Invalidates the page on the calling CPU only, as
    /// [`unmap`](Self::unmap): other CPUs may keep using the old frame until
    /// they invalidate. Guest: 1 PTE write (a compare-and-swap on the leaf,
    /// no lock, when its tables exist; else the missing tables are created
    /// under the structural lock, one write each, as [`map`](Self::map)) +
    /// 1 `invlpg` if the page was mapped (none if not: nothing was cached).
    /// Process: 1 `mmap(MAP_FIXED)` of the frame's page of the memory file,
    /// counted as 1 PTE write + 1 local invalidation if the page was mapped
    /// (the kernel shoots down the other CPUs); a page not mapped before is
    /// charged against the mapping limit like `map`
    /// ([`Error::MappingLimit`] before any system call); `bits` are `None`.
    fn remap(
        &self,
        page: u64,
        frame: Frame,
        size: PageSize,
        prot: Protection,
    ) -> Result<Option<Unmapped>, Error>;

    /// Unmaps window page `page` and returns its frame with the page's
    /// accessed/dirty state as it was when the translation disappeared (one
    /// atomic exchange of the entry: a write that raced the unmap is either
    /// in `bits.dirty` or faulted). Invalidates the page on the calling CPU
    /// only: other CPUs may keep using a stale translation until they
    /// invalidate it or [`invalidate_all`](Self::invalidate_all) is called.
    /// Guest: 1 PTE write + 1 `invlpg`, no IPI, no lock. Process: 1 `mmap`;
    /// the kernel shoots down every CPU that ran the process; `bits` are
    /// `None`.
    fn unmap(&self, page: u64, size: PageSize) -> Result<Unmapped, Error>;

    /// Changes the protection of mapped page `page`, keeping its frame and its
    /// accessed and dirty state; returns that state as it was before.
    /// Invalidates the page on the calling CPU only (as
    /// [`unmap`](Self::unmap)). Guest: 1 PTE write + 1 `invlpg` (a
    /// compare-and-swap loop on the entry, no lock). Process: 1 `mprotect`;
    /// the bits are `None`.
    fn protect(&self, page: u64, size: PageSize, prot: Protection) -> Result<AccessBits, Error>;

    /// Unmaps every page of `pages` (each of `size`), writing each page's
    /// outcome to the same index of `results` (which must be as long as
    /// `pages`: panics otherwise). All entries are removed before any is
    /// invalidated on this CPU; other CPUs as for [`unmap`](Self::unmap).
    /// Costs the same per page as `unmap` (guest: 1 PTE write + 1 `invlpg`
    /// per page unmapped; process: one `mmap` each, a loop); a page that
    /// fails costs nothing.
    fn unmap_many(&self, pages: &[u64], size: PageSize, results: &mut [Result<Unmapped, Error>]) {
        assert_eq!(pages.len(), results.len(), "one result per page");
        for (page, result) in pages.iter().zip(results.iter_mut()) {
            *result = self.unmap(*page, size);
        }
    }

    /// The frame mapped at `page`, if any.
    fn translate(&self, page: u64) -> Option<Frame>;

    /// The accessed/dirty state of mapped page `page`.
    fn access_bits(&self, page: u64) -> Result<AccessBits, Error>;

    /// Clears the accessed and dirty state of `page` (and invalidates it on
    /// this CPU, so the CPU sets them again on the next access); returns the
    /// state before.
    fn clear_access_bits(&self, page: u64) -> Result<AccessBits, Error>;

    /// A clock sweep over `bits.len()` consecutive pages of `size` from
    /// `first` (all in one window): for each mapped page, its
    /// accessed/dirty state before (`bits[i]`, `None` when the page is not
    /// mapped with this size), and its accessed bit cleared (the dirty bit
    /// stays). Returns how many pages were accessed. Alignment and the window
    /// are checked for the whole range first (nothing is done on error).
    /// Guest: per accessed page 1 PTE write (a compare-and-swap, no lock) +
    /// 1 `invlpg` on this CPU (so this CPU sets the bit again; other CPUs may
    /// keep a cached translation and not set it until they invalidate); per
    /// page not accessed, nothing. Process: the state is not observable:
    /// every mapped page is `Some` with `None` bits, nothing is cleared, no
    /// system call, and the result is 0.
    fn test_and_clear_accessed(
        &self,
        first: u64,
        size: PageSize,
        bits: &mut [Option<AccessBits>],
    ) -> Result<usize, Error>;

    // ---- TLB -------------------------------------------------------------

    /// Invalidates `page` in this CPU's TLB. Guest: `invlpg`. Process: no-op
    /// (the kernel keeps TLBs coherent), counted.
    fn invalidate_local(&self, page: u64);

    /// Invalidates every page of `pages` in this CPU's TLB: as
    /// [`invalidate_local`](Self::invalidate_local) for each (guest: one
    /// `invlpg` each; process: no-op, counted per page).
    fn invalidate_local_many(&self, pages: &[u64]) {
        for &page in pages {
            self.invalidate_local(page);
        }
    }

    /// Flushes this CPU's whole TLB. Guest: CR3 reload. Process: no-op, counted.
    fn flush_local(&self);

    /// Invalidates `page` on every CPU and returns when all have done it.
    /// Guest: `invlpg` here plus one IPI to each other CPU, which runs
    /// `invlpg` and acknowledges. Process: no-op (already done by the kernel).
    fn invalidate_all(&self, page: u64);

    // ---- faults ----------------------------------------------------------

    /// Sets (or clears) the hook for faults in windows, for all CPUs. A
    /// window with a hook of its own ([`set_window_fault_hook`](Self::set_window_fault_hook))
    /// uses that one instead.
    fn set_fault_hook(&self, hook: Option<FaultHook>);

    /// Sets (or with `None` clears) `window`'s own fault hook, called with
    /// `context` for every fault in the window, on the faulting CPU
    /// (thread), instead of the platform-wide hook. The hook and its context
    /// are replaced together: a fault never sees one with the other's
    /// partner. `window` must be one this platform reserved
    /// ([`Error::NotInWindow`] otherwise). Not from a hook.
    fn set_window_fault_hook(
        &self,
        window: &Window,
        hook: Option<WindowFaultHook>,
        context: usize,
    ) -> Result<(), Error>;

    // ---- CPUs ------------------------------------------------------------

    /// Number of CPUs (guest vCPUs; worker threads in a process).
    fn cpu_count(&self) -> usize;

    /// Index of the calling CPU (thread), `0..cpu_count()`.
    fn cpu_id(&self) -> usize;

    /// Runs `f(cpu)` once on every CPU (thread) concurrently and returns when
    /// all have finished.
    fn run_on_all(&self, f: &(dyn Fn(usize) + Sync));

    // ---- interrupts --------------------------------------------------------

    /// Sets (or clears) the hook run on a CPU when its timer fires.
    fn set_timer_hook(&self, hook: Option<EventHook>);

    /// Starts (or with `None` stops) a periodic timer on the calling CPU.
    fn set_timer(&self, period_us: Option<u64>) -> Result<(), Error>;

    /// Sets (or clears) the hook run on a CPU that receives an IPI.
    fn set_ipi_hook(&self, hook: Option<EventHook>);

    /// Sends an IPI to `cpu`, whose IPI hook runs there.
    fn send_ipi(&self, cpu: usize) -> Result<(), Error>;

    // ---- counters ------------------------------------------------------------

    /// Events so far, summed over all CPUs.
    fn counters(&self) -> EventCounts;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_and_frames() {
        let w = Window {
            base: 0x20_0000,
            len: 0x40_0000,
        };
        assert!(w.contains(0x20_0000, 4096));
        assert!(w.contains(0x5f_f000, 4096));
        assert!(!w.contains(0x5f_f001, 4096));
        assert!(!w.contains(0x1f_f000, 4096));
        assert!(!w.contains(u64::MAX, 2));
        assert_eq!(w.page(3), 0x20_3000);
        assert_eq!(Frame::from_addr(0x3000).map(Frame::addr), Some(0x3000));
        assert_eq!(Frame::from_addr(0x3001), None);
    }

    #[test]
    fn counts_subtract() {
        let a = EventCounts {
            faults: 1,
            pte_writes: 2,
            ..Default::default()
        };
        let b = EventCounts {
            faults: 4,
            pte_writes: 3,
            ipis_sent: 2,
            ..Default::default()
        };
        assert_eq!(
            b.since(&a),
            EventCounts {
                faults: 3,
                pte_writes: 1,
                ipis_sent: 2,
                ..Default::default()
            }
        );
        assert_eq!(EventCounts::from_array(b.to_array()), b);
        // KVM's count: subtracted when both readings have it, else unknown.
        let (c, d) = (
            EventCounts {
                kvm_exits: Some(10),
                ..a
            },
            EventCounts {
                kvm_exits: Some(25),
                ..b
            },
        );
        assert_eq!(d.since(&c).kvm_exits, Some(15));
        assert_eq!(b.since(&c).kvm_exits, None);
        assert_eq!(EventCounts::from_array(d.to_array()), d);
    }
}
