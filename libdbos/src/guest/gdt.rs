//! Per-CPU GDT and TSS, and the interrupt stack table (IST) stacks.
//!
//! Every IDT gate uses an IST stack, so an exception or interrupt never runs
//! on the stack of the code it interrupted: guest code is ordinary compiled
//! Rust that may keep data below its stack pointer (a red zone), and a handler
//! pushing onto that stack would corrupt it.

use alloc::boxed::Box;
use x86_64::instructions::segmentation::{Segment, CS, DS, ES, SS};
use x86_64::instructions::tables::load_tss;
use x86_64::structures::gdt::{Descriptor, GlobalDescriptorTable, SegmentSelector};
use x86_64::structures::tss::TaskStateSegment;
use x86_64::VirtAddr;

/// IST slots (1-based in the IDT gate, 0-based in the TSS array).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Ist {
    DoubleFault = 1,
    Nmi = 2,
    MachineCheck = 3,
    PageFault = 4,
    Exception = 5,
    Interrupt = 6,
}

impl Ist {
    const fn stack_size(self) -> usize {
        match self {
            // The page-fault hook runs the database's fault handling (frame
            // allocation, I/O submission and polling), so it gets the most.
            Ist::PageFault => 64 * 1024,
            Ist::Exception | Ist::Interrupt => 32 * 1024,
            Ist::DoubleFault | Ist::Nmi | Ist::MachineCheck => 16 * 1024,
        }
    }

    const ALL: [Ist; 6] = [
        Ist::DoubleFault,
        Ist::Nmi,
        Ist::MachineCheck,
        Ist::PageFault,
        Ist::Exception,
        Ist::Interrupt,
    ];

    /// Heap bytes the IST stacks of one CPU take.
    const fn total() -> usize {
        let mut sum = 0;
        let mut i = 0;
        while i < Self::ALL.len() {
            sum += Self::ALL[i].stack_size();
            i += 1;
        }
        sum
    }
}

/// What one CPU takes from the heap at boot besides its IST stacks: TSS,
/// GDT, per-CPU area and the allocator's own overhead, rounded up generously.
const OTHER_PER_CPU_HEAP: usize = 8 * 1024;

// The hypervisor sizes the heap region with `HEAP_PER_VCPU` bytes per vCPU:
// everything `init_this_cpu` and `percpu::init` allocate must fit in it.
const _: () = assert!(
    Ist::total() + OTHER_PER_CPU_HEAP + core::mem::size_of::<crate::percpu::PerCpu>()
        <= crate::abi::HEAP_PER_VCPU as usize
);

/// Selectors of the kernel segments, identical on every CPU.
pub const KERNEL_CS: SegmentSelector = SegmentSelector(0x08);
pub const KERNEL_DS: SegmentSelector = SegmentSelector(0x10);

/// Builds this CPU's TSS (with freshly allocated IST stacks) and GDT, loads
/// them, and reloads the segment registers. All of it is leaked: it must live
/// as long as the CPU runs.
pub(crate) fn init_this_cpu() {
    let mut tss = TaskStateSegment::new();
    for ist in Ist::ALL {
        // Not zeroed: a stack needs no initial contents, and zeroing costs an
        // emulated instruction per word on hosts without VT-x.
        let stack = Box::leak(Box::<[u8]>::new_uninit_slice(ist.stack_size()));
        // The CPU aligns RSP down to 16 bytes on entry, so any top works; keep
        // it aligned anyway.
        let top = VirtAddr::from_ptr(stack.as_ptr_range().end).align_down(16u64);
        tss.interrupt_stack_table[ist as usize - 1] = top;
    }
    let tss: &'static TaskStateSegment = Box::leak(Box::new(tss));

    let mut gdt = GlobalDescriptorTable::new();
    let cs = gdt.append(Descriptor::kernel_code_segment());
    let ds = gdt.append(Descriptor::kernel_data_segment());
    let tss_sel = gdt.append(Descriptor::tss_segment(tss));
    debug_assert_eq!(cs, KERNEL_CS);
    debug_assert_eq!(ds, KERNEL_DS);
    let gdt: &'static GlobalDescriptorTable = Box::leak(Box::new(gdt));
    gdt.load();
    // SAFETY: the selectors index the GDT just loaded, whose code and data
    // descriptors are valid 64-bit ring-0 segments, and the TSS descriptor
    // points at a leaked TSS that outlives the CPU.
    unsafe {
        CS::set_reg(cs);
        SS::set_reg(ds);
        DS::set_reg(ds);
        ES::set_reg(ds);
        load_tss(tss_sel);
    }
}
