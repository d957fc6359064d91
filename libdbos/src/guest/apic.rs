//! The local APIC in x2APIC mode (MSR interface): enabling it, end of
//! interrupt, inter-processor interrupts and the periodic timer.
//!
//! The VMM creates an in-kernel irqchip, so the APIC is emulated by KVM and
//! an IPI or timer interrupt costs no exit to the VMM. In x2APIC mode the APIC
//! id is the vCPU index (KVM's vcpu id), so CPU `n` is addressed as `n`.

use x86_64::registers::model_specific::Msr;

const IA32_APIC_BASE: u32 = 0x1b;
const APIC_BASE_ENABLE: u64 = 1 << 11;
const APIC_BASE_X2APIC: u64 = 1 << 10;
const X2APIC_TPR: u32 = 0x808;
const X2APIC_EOI: u32 = 0x80b;
const X2APIC_SVR: u32 = 0x80f;
const X2APIC_ICR: u32 = 0x830;
const X2APIC_LVT_TIMER: u32 = 0x832;
const X2APIC_TIMER_INITIAL: u32 = 0x838;
const X2APIC_TIMER_DIVIDE: u32 = 0x83e;

const SVR_ENABLE: u64 = 1 << 8;
const ICR_LEVEL_ASSERT: u64 = 1 << 14;
const LVT_MASKED: u64 = 1 << 16;
const LVT_PERIODIC: u64 = 1 << 17;
/// Divide configuration "divide by 1".
const DIVIDE_BY_1: u64 = 0b1011;
/// KVM's emulated APIC timer counts at 1 GHz (one tick per nanosecond).
const TIMER_TICKS_PER_US: u64 = 1000;

/// Interrupt vectors libdbos uses.
pub mod vector {
    /// Wakes an idle CPU to look for work (`run_on_all`).
    pub const WAKE: u8 = 0xf0;
    /// Remote TLB invalidation request.
    pub const TLB: u8 = 0xf1;
    /// The database's IPI hook.
    pub const USER_IPI: u8 = 0xf2;
    /// The periodic timer.
    pub const TIMER: u8 = 0xef;
    /// Spurious interrupts (no EOI).
    pub const SPURIOUS: u8 = 0xff;
}

fn write(msr: u32, value: u64) {
    // SAFETY: x2APIC MSRs only affect this CPU's interrupt delivery, which
    // the callers below configure deliberately; KVM emulates them.
    unsafe { Msr::new(msr).write(value) }
}

fn read(msr: u32) -> u64 {
    // SAFETY: reading an architectural MSR that exists once the APIC is
    // enabled has no side effects.
    unsafe { Msr::new(msr).read() }
}

/// Enables this CPU's local APIC in x2APIC mode with the spurious vector set
/// and all priorities accepted.
pub(crate) fn init_this_cpu() {
    let base = read(IA32_APIC_BASE);
    write(IA32_APIC_BASE, base | APIC_BASE_ENABLE | APIC_BASE_X2APIC);
    write(X2APIC_TPR, 0);
    write(X2APIC_SVR, SVR_ENABLE | u64::from(vector::SPURIOUS));
    write(X2APIC_LVT_TIMER, LVT_MASKED | u64::from(vector::TIMER));
}

/// Signals end of interrupt for the interrupt being handled.
pub(crate) fn eoi() {
    write(X2APIC_EOI, 0);
}

/// Sends fixed interrupt `vector` to CPU `cpu` (physical destination).
pub fn send_ipi(cpu: u32, vector: u8) {
    write(
        X2APIC_ICR,
        (u64::from(cpu) << 32) | ICR_LEVEL_ASSERT | u64::from(vector),
    );
}

/// Starts (or with `None` stops) this CPU's periodic timer.
pub fn set_timer(period_us: Option<u64>) {
    crate::percpu::current()
        .timer_on
        .store(period_us.is_some(), core::sync::atomic::Ordering::Relaxed);
    match period_us {
        Some(us) => {
            write(X2APIC_TIMER_DIVIDE, DIVIDE_BY_1);
            write(X2APIC_LVT_TIMER, LVT_PERIODIC | u64::from(vector::TIMER));
            let ticks = us
                .saturating_mul(TIMER_TICKS_PER_US)
                .clamp(1, u64::from(u32::MAX));
            write(X2APIC_TIMER_INITIAL, ticks);
        }
        None => {
            write(X2APIC_LVT_TIMER, LVT_MASKED | u64::from(vector::TIMER));
            write(X2APIC_TIMER_INITIAL, 0);
        }
    }
}
