//! The interrupt descriptor table and the assembly entry stubs.
//!
//! One 16-byte stub per vector pushes a zero in place of an error code (for
//! vectors where the CPU pushes none) and the vector number, then jumps to a
//! common path that saves all general-purpose registers into an
//! [`InterruptFrame`](super::interrupts::InterruptFrame), calls the Rust
//! dispatcher with a pointer to it, restores the (possibly modified) registers
//! and returns with `iretq`. One IDT is shared by all CPUs.

use super::gdt::{Ist, KERNEL_CS};
use core::arch::global_asm;
use x86_64::instructions::tables::lidt;
use x86_64::structures::DescriptorTablePointer;
use x86_64::VirtAddr;

/// Bytes per entry stub; the stub for vector `v` is at `isr_stubs + v * STUB_SIZE`.
const STUB_SIZE: u64 = 16;

// Vectors for which the CPU pushes an error code: 8, 10-14, 17, 21, 29, 30.
// Stack layout at `isr_common` (top first): vector, error code, then the
// CPU's frame (rip, cs, rflags, rsp, ss). Every gate uses an IST stack, whose
// top is 16-byte aligned, and 7 + 15 pushed words keep RSP 16-byte aligned at
// the call, as the SysV ABI requires.
global_asm!(
    r#"
    .section .text.isr, "ax"
    .balign 16
    .global isr_stubs
isr_stubs:
    .set vec, 0
    .rept 256
    .balign 16
    .if (vec == 8) || ((vec >= 10) && (vec <= 14)) || (vec == 17) || (vec == 21) || (vec == 29) || (vec == 30)
    .else
    push 0
    .endif
    push vec
    jmp isr_common
    .set vec, vec + 1
    .endr

isr_common:
    push rax
    push rbx
    push rcx
    push rdx
    push rsi
    push rdi
    push rbp
    push r8
    push r9
    push r10
    push r11
    push r12
    push r13
    push r14
    push r15
    cld
    mov rdi, rsp
    call {dispatch}
    pop r15
    pop r14
    pop r13
    pop r12
    pop r11
    pop r10
    pop r9
    pop r8
    pop rbp
    pop rdi
    pop rsi
    pop rdx
    pop rcx
    pop rbx
    pop rax
    add rsp, 16
    iretq
    .text
    "#,
    dispatch = sym super::interrupts::dispatch,
);

unsafe extern "C" {
    static isr_stubs: [u8; 256 * STUB_SIZE as usize];
}

/// One 64-bit interrupt gate descriptor.
#[derive(Clone, Copy, Default)]
#[repr(C)]
struct Gate {
    offset_low: u16,
    selector: u16,
    /// Bits 0-2: IST index; the rest zero.
    ist: u8,
    /// Present, DPL 0, type 0xE (64-bit interrupt gate: clears IF on entry).
    type_attr: u8,
    offset_mid: u16,
    offset_high: u32,
    reserved: u32,
}

impl Gate {
    fn new(handler: u64, ist: Ist) -> Self {
        Gate {
            offset_low: handler as u16,
            selector: KERNEL_CS.0,
            ist: ist as u8,
            type_attr: 0x8e,
            offset_mid: (handler >> 16) as u16,
            offset_high: (handler >> 32) as u32,
            reserved: 0,
        }
    }
}

#[repr(C, align(16))]
struct Idt([Gate; 256]);

static IDT: spin::Once<Idt> = spin::Once::new();

/// The IST stack each vector runs on.
fn ist_for(vector: usize) -> Ist {
    match vector {
        2 => Ist::Nmi,
        8 => Ist::DoubleFault,
        14 => Ist::PageFault,
        18 => Ist::MachineCheck,
        0..=31 => Ist::Exception,
        _ => Ist::Interrupt,
    }
}

/// Loads the shared IDT on the calling CPU (building it on first use).
/// The CPU's TSS must already be loaded: every gate names an IST slot.
pub(crate) fn load() {
    let idt = IDT.call_once(|| {
        let base = core::ptr::addr_of!(isr_stubs) as u64;
        let mut gates = [Gate::default(); 256];
        for (vector, gate) in gates.iter_mut().enumerate() {
            *gate = Gate::new(base + vector as u64 * STUB_SIZE, ist_for(vector));
        }
        Idt(gates)
    });
    let ptr = DescriptorTablePointer {
        limit: (core::mem::size_of::<Idt>() - 1) as u16,
        base: VirtAddr::from_ptr(idt as *const Idt),
    };
    // SAFETY: the IDT is a static that lives forever and every gate points at
    // a valid stub in `isr_stubs` with the kernel code selector.
    unsafe { lidt(&ptr) };
}
