//! Per-CPU data, reached through the `gs` segment base, the registry of all
//! CPUs' areas, and CPU idling.
//!
//! Each vCPU gets one [`PerCpu`] allocated at boot and leaked; `IA32_GS_BASE`
//! points at it and its first word points at itself, so [`current`] is one
//! `mov` from `gs:0`. [`cpu`] finds another CPU's area (for sums and
//! acknowledgements).

use crate::abi::MAX_VCPUS;
use core::cell::Cell;
use core::sync::atomic::{AtomicPtr, AtomicU64, AtomicUsize, Ordering};
use x86_64::registers::model_specific::GsBase;
use x86_64::VirtAddr;

pub use crate::platform::Event;

const EVENTS: usize = Event::COUNT;

/// The per-CPU area.
#[repr(C)]
pub struct PerCpu {
    /// Points at this struct (read through `gs:0`).
    self_ptr: *const PerCpu,
    /// This vCPU's index, 0 for the bootstrap vCPU.
    pub cpu: u32,
    /// Set while this CPU runs the page-fault hook, to detect a fault inside it
    /// (the #PF IST stack would be reused and the outer frame overwritten).
    pub(crate) in_page_fault: Cell<bool>,
    /// Event counters, written only by this CPU (plain load + store, no lock
    /// prefix) and read by any.
    counters: [AtomicU64; EVENTS],
    /// Last `run_on_all` generation this CPU has finished.
    pub(crate) work_done: AtomicU64,
    /// Last remote-invalidation generation this CPU has carried out.
    pub(crate) tlb_done: AtomicU64,
    /// Whether this CPU's timer is running; a tick latched before the timer
    /// was stopped is dropped, so stopping it is synchronous for the hook.
    pub(crate) timer_on: core::sync::atomic::AtomicBool,
    /// This CPU's deferred page-table view (test mode), if any.
    #[cfg(feature = "conformance")]
    pub(crate) view: crate::view::ViewState,
}

static CPUS: [AtomicPtr<PerCpu>; MAX_VCPUS as usize] =
    [const { AtomicPtr::new(core::ptr::null_mut()) }; MAX_VCPUS as usize];
static ONLINE: AtomicUsize = AtomicUsize::new(0);

/// Installs a new per-CPU area for `cpu` on the calling CPU.
pub(crate) fn init(cpu: u32) {
    let area = alloc::boxed::Box::leak(alloc::boxed::Box::new(PerCpu {
        self_ptr: core::ptr::null(),
        cpu,
        in_page_fault: Cell::new(false),
        counters: [const { AtomicU64::new(0) }; EVENTS],
        work_done: AtomicU64::new(0),
        tlb_done: AtomicU64::new(0),
        timer_on: core::sync::atomic::AtomicBool::new(false),
        #[cfg(feature = "conformance")]
        view: crate::view::ViewState::new(),
    }));
    area.self_ptr = area as *const PerCpu;
    GsBase::write(VirtAddr::from_ptr(area as *const PerCpu));
    CPUS[cpu as usize].store(area, Ordering::Release);
    ONLINE.fetch_add(1, Ordering::AcqRel);
}

/// The calling CPU's per-CPU area.
pub fn current() -> &'static PerCpu {
    let ptr: *const PerCpu;
    // SAFETY: `init` ran on this CPU before any caller (boot order), so gs:0
    // holds a pointer to a leaked, never-freed `PerCpu` owned by this CPU.
    unsafe {
        core::arch::asm!("mov {}, gs:[0]", out(reg) ptr, options(nostack, readonly, preserves_flags));
        &*ptr
    }
}

/// CPU `index`'s area, once it is online.
pub fn cpu(index: usize) -> Option<&'static PerCpu> {
    let ptr = CPUS.get(index)?.load(Ordering::Acquire);
    // SAFETY: non-null entries point at leaked areas that live forever.
    (!ptr.is_null()).then(|| unsafe { &*ptr })
}

/// Number of CPUs that finished their per-CPU setup.
pub fn online() -> usize {
    ONLINE.load(Ordering::Acquire)
}

/// This CPU's index.
pub fn cpu_id() -> u32 {
    current().cpu
}

impl PerCpu {
    /// Counts one `event` on this CPU. Must be called on the owning CPU.
    #[inline]
    pub fn count(&self, event: Event) {
        self.count_n(event, 1);
    }

    /// Counts `n` of `event` on this CPU. Must be called on the owning CPU.
    #[inline]
    pub fn count_n(&self, event: Event, n: u64) {
        let c = &self.counters[event as usize];
        c.store(c.load(Ordering::Relaxed) + n, Ordering::Relaxed);
    }

    /// This CPU's count of `event`.
    pub fn counted(&self, event: Event) -> u64 {
        self.counters[event as usize].load(Ordering::Relaxed)
    }
}

/// Counts `event` on the calling CPU.
#[inline]
pub fn count(event: Event) {
    current().count(event);
}

/// Sum of `event` over all online CPUs.
pub fn total(event: Event) -> u64 {
    (0..MAX_VCPUS as usize)
        .filter_map(cpu)
        .map(|c| c.counted(event))
        .sum()
}

/// Disables interrupts and halts this CPU for good.
pub fn halt_forever() -> ! {
    loop {
        x86_64::instructions::interrupts::disable();
        x86_64::instructions::hlt();
    }
}
