//! Per-CPU data, reached through the `gs` segment base, and CPU idling.
//!
//! Each vCPU gets one [`PerCpu`] allocated at boot and leaked; `IA32_GS_BASE`
//! points at it and its first word points at itself, so [`current`] is one
//! `mov` from `gs:0`.

use core::cell::Cell;
use x86_64::registers::model_specific::GsBase;
use x86_64::VirtAddr;

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
}

/// Installs a new per-CPU area for `cpu` on the calling CPU.
pub(crate) fn init(cpu: u32) {
    let area = alloc::boxed::Box::leak(alloc::boxed::Box::new(PerCpu {
        self_ptr: core::ptr::null(),
        cpu,
        in_page_fault: Cell::new(false),
    }));
    area.self_ptr = area as *const PerCpu;
    GsBase::write(VirtAddr::from_ptr(area as *const PerCpu));
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

/// This CPU's index.
pub fn cpu_id() -> u32 {
    current().cpu
}

/// Disables interrupts and halts this CPU for good.
pub fn halt_forever() -> ! {
    loop {
        x86_64::instructions::interrupts::disable();
        x86_64::instructions::hlt();
    }
}
