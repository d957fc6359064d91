//! Exception and interrupt dispatch, and the hooks a database registers.
//!
//! Every vector enters [`dispatch`] with the full register state in an
//! [`InterruptFrame`]. A page fault (#PF, vector 14) goes to the hook set with
//! [`set_page_fault_hook`]; any other vector to the hook set for it with
//! [`set_vector_hook`]. A hook that handles the event returns
//! [`HookResult::Handled`] and the interrupted code resumes (for a fault, the
//! faulting instruction is retried) with the registers as the hook left them.
//! Without a hook, or when the hook declines, the guest is stopped and the
//! host reports the vector, error code, RIP and CR2.

use crate::abi::FaultArgs;
use crate::fmtbuf::FmtBuf;
use crate::hook::HookCell;
use core::fmt::Write;
use core::sync::atomic::Ordering;

/// The register state saved on entry to every vector, in stack order.
/// Hooks may modify it; it is restored on return.
#[repr(C)]
#[derive(Debug)]
pub struct InterruptFrame {
    pub r15: u64,
    pub r14: u64,
    pub r13: u64,
    pub r12: u64,
    pub r11: u64,
    pub r10: u64,
    pub r9: u64,
    pub r8: u64,
    pub rbp: u64,
    pub rdi: u64,
    pub rsi: u64,
    pub rdx: u64,
    pub rcx: u64,
    pub rbx: u64,
    pub rax: u64,
    /// Vector number (pushed by the entry stub).
    pub vector: u64,
    /// The CPU's error code, or 0 for vectors without one.
    pub error_code: u64,
    pub rip: u64,
    pub cs: u64,
    pub rflags: u64,
    pub rsp: u64,
    pub ss: u64,
}

/// What a hook did with an event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HookResult {
    /// Resolved: resume the interrupted code (retry a faulting access).
    Handled,
    /// Not resolved: stop the guest with a report.
    Unhandled,
}

bitflags::bitflags! {
    /// Bits of the page-fault error code (every bit the CPU pushed is kept,
    /// named or not; [`bits`](Self::bits) is the raw code).
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct PageFaultError: u64 {
        /// The page was present (a protection violation), not missing.
        const PRESENT = 1 << 0;
        /// The access was a write.
        const WRITE = 1 << 1;
        /// The access came from ring 3.
        const USER = 1 << 2;
        /// A reserved bit was set in a paging-structure entry.
        const RESERVED = 1 << 3;
        /// The access was an instruction fetch.
        const INSTRUCTION = 1 << 4;
        // Protection keys, shadow stack, SGX and the rest: kept as pushed.
        const _ = !0;
    }
}

impl PageFaultError {
    pub fn present(self) -> bool {
        self.contains(Self::PRESENT)
    }
    pub fn write(self) -> bool {
        self.contains(Self::WRITE)
    }
    pub fn instruction(self) -> bool {
        self.contains(Self::INSTRUCTION)
    }
}

/// A page fault, as handed to the page-fault hook.
#[derive(Clone, Copy, Debug)]
pub struct PageFault {
    /// The faulting virtual address (CR2).
    pub addr: u64,
    /// The error code the CPU pushed.
    pub error: PageFaultError,
    /// The faulting instruction.
    pub rip: u64,
}

/// A page-fault hook. It runs on the #PF IST stack with interrupts disabled;
/// it must not itself fault (a nested page fault stops the guest).
pub type PageFaultHook = fn(&PageFault, &mut InterruptFrame) -> HookResult;

/// A hook for any other vector.
pub type VectorHook = fn(&mut InterruptFrame) -> HookResult;

crate::hook::hook_fns!(PageFaultHook, VectorHook);

const PAGE_FAULT: u8 = 14;

static PAGE_FAULT_HOOK: HookCell<PageFaultHook> = HookCell::new();
static VECTOR_HOOKS: [HookCell<VectorHook>; 256] = [const { HookCell::new() }; 256];

/// Sets (or with `None` clears) the page-fault hook, for all CPUs.
pub fn set_page_fault_hook(hook: Option<PageFaultHook>) {
    PAGE_FAULT_HOOK.set(hook);
}

/// Sets (or clears) the hook for `vector`, for all CPUs.
///
/// # Panics
/// For vector 14 (use [`set_page_fault_hook`]) and vector 8 (a double fault is
/// not recoverable).
pub fn set_vector_hook(vector: u8, hook: Option<VectorHook>) {
    assert!(vector != PAGE_FAULT, "use set_page_fault_hook for #PF");
    assert!(vector != 8, "a double fault cannot be hooked");
    VECTOR_HOOKS[usize::from(vector)].set(hook);
}

/// Hook run on a CPU when its timer fires, and when it receives the
/// database's IPI: `fn(cpu)`.
pub type CpuHook = fn(usize);

static TIMER_HOOK: HookCell<CpuHook> = HookCell::new();
static IPI_HOOK: HookCell<CpuHook> = HookCell::new();

/// Sets (or clears) the hook run when a CPU's timer fires.
pub fn set_timer_hook(hook: Option<CpuHook>) {
    TIMER_HOOK.set(hook);
}

/// Sets (or clears) the hook run on a CPU that receives the database IPI.
pub fn set_ipi_hook(hook: Option<CpuHook>) {
    IPI_HOOK.set(hook);
}

/// Interrupts from the local APIC (vectors 32-255). Returns whether the
/// vector is one libdbos owns.
fn apic_interrupt(vector: u8) -> bool {
    use crate::apic::vector::*;
    let cpu = crate::percpu::cpu_id() as usize;
    match vector {
        SPURIOUS => return true,
        WAKE => {}
        TLB => crate::smp::service_tlb_requests(),
        TIMER => {
            let running = crate::percpu::current().timer_on.load(Ordering::Relaxed);
            if let Some(hook) = TIMER_HOOK.get().filter(|_| running) {
                hook(cpu);
            }
        }
        USER_IPI => {
            if let Some(hook) = IPI_HOOK.get() {
                hook(cpu);
            }
        }
        _ => return false,
    }
    crate::apic::eoi();
    true
}

/// Called by the entry stubs with the saved register state.
pub(crate) extern "sysv64" fn dispatch(frame: &mut InterruptFrame) {
    let vector = frame.vector;
    if vector >= 32 && apic_interrupt(vector as u8) {
        return;
    }
    if vector == u64::from(PAGE_FAULT) {
        let fault = PageFault {
            addr: x86_64::registers::control::Cr2::read_raw(),
            error: PageFaultError::from_bits_retain(frame.error_code),
            rip: frame.rip,
        };
        // Test mode: a CPU that defers its view first refreshes the faulting
        // page, as the fault invalidates it on hardware; a fault that this
        // resolves is retried without the hook (see `crate::view`).
        #[cfg(feature = "conformance")]
        if crate::view::absorb_fault(fault.addr, fault.error.write()) {
            return;
        }
        let percpu = crate::percpu::current();
        if percpu.in_page_fault.get() {
            report(frame, fault.addr, "page fault inside the page-fault hook");
        }
        let Some(hook) = PAGE_FAULT_HOOK.get() else {
            report(frame, fault.addr, "no page-fault hook registered");
        };
        percpu.in_page_fault.set(true);
        let result = hook(&fault, frame);
        percpu.in_page_fault.set(false);
        match result {
            HookResult::Handled => return,
            HookResult::Unhandled => {
                report(frame, fault.addr, "the page-fault hook did not resolve it")
            }
        }
    }
    let cr2 = x86_64::registers::control::Cr2::read_raw();
    let Some(hook) = VECTOR_HOOKS[vector as usize & 0xff].get() else {
        report(frame, cr2, "no hook registered");
    };
    match hook(frame) {
        HookResult::Handled => {
            if vector >= 32 {
                crate::apic::eoi();
            }
        }
        HookResult::Unhandled => report(frame, cr2, "the hook did not handle it"),
    }
}

/// Sends the fault report to the host, which stops the guest.
fn report(frame: &InterruptFrame, cr2: u64, why: &str) -> ! {
    let mut buf = [0u8; 160];
    let mut reason = FmtBuf::new(&mut buf);
    let _ = write!(reason, "{why}");
    let args = FaultArgs {
        vector: frame.vector,
        error_code: frame.error_code,
        rip: frame.rip,
        cr2,
        rsp: frame.rsp,
        rflags: frame.rflags,
        reason: Default::default(),
        gprs: [
            frame.rax, frame.rbx, frame.rcx, frame.rdx, frame.rsi, frame.rdi, frame.rbp, frame.r8,
            frame.r9, frame.r10, frame.r11, frame.r12, frame.r13, frame.r14, frame.r15,
        ],
    };
    crate::hypercall::fault(args, reason.as_bytes())
}
