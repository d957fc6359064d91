//! The ring-0 guest kernel: only compiled for `x86_64-unknown-none`.

pub mod api;
pub mod apic;
pub mod boot;
pub mod console;
pub mod dma;
pub mod frames;
pub mod gdt;
pub mod heap;
pub mod hostfile;
pub mod hypercall;
pub mod idt;
pub mod interrupts;
pub mod memory;
pub mod net;
pub mod nvme;
pub mod paging;
pub mod panic;
pub mod percpu;
pub mod smp;
pub mod tlb;
#[cfg(feature = "conformance")]
pub mod view;

pub use api::{platform, GuestPlatform};
pub use boot::{args, boot_info, exit, Args};
pub use interrupts::{
    set_ipi_hook, set_page_fault_hook, set_timer_hook, set_vector_hook, CpuHook, HookResult,
    InterruptFrame, PageFault, PageFaultError,
};
