//! Hypercalls: one `out` to the call's port with the full 64-bit
//! guest-physical address of its argument block in `rax` (see
//! [`crate::abi::hypercall`]). Each call is one VM exit, about 5 us on the
//! development machines: keep them off hot paths.

use crate::abi::{
    calls, Call, ClockArgs, ConsoleArgs, ExitArgs, FaultArgs, GuestBuf, GuestPhysAddr, Hypercall,
    PanicArgs, Pod, StatsArgs,
};
use crate::memory::virt_to_phys;
use crate::platform::PAGE_SIZE;

/// An argument block copied to where it cannot straddle a page: at most 256
/// bytes, 256-byte aligned, so it lies within one page wherever it is.
#[repr(C, align(256))]
struct OnePage<T>(T);

/// Issues `call` with its argument block `args` (the block type is the
/// call's: see [`crate::abi::calls`]); the host validates every address and
/// length in it and stops the guest when one is bad.
///
/// The host addresses the block by its guest-physical address, anywhere in
/// guest RAM. A block that straddles a page boundary outside the direct map
/// (whose pages need not be physically adjacent, say on a stack in a
/// database window) is first copied into an aligned slot on this stack,
/// which cannot straddle a page.
pub fn call<T: Pod>(call: Call<T>, args: &mut T) {
    let call = call.hypercall();
    const { assert!(size_of::<T>() <= 256 && align_of::<T>() <= 256) };
    let virt = args as *mut T as u64;
    let last = virt + size_of::<T>() as u64 - 1;
    let contiguous = virt >= crate::abi::DIRECT_MAP_BASE || virt / PAGE_SIZE == last / PAGE_SIZE;
    match contiguous.then(|| virt_to_phys(virt)).flatten() {
        Some(phys) => out(call, GuestPhysAddr(phys)),
        None => {
            let mut slot = OnePage(*args);
            let phys = virt_to_phys(&mut slot as *mut OnePage<T> as u64)
                .expect("the current stack is mapped");
            out(call, GuestPhysAddr(phys));
            *args = slot.0;
        }
    }
}

fn out(call: Hypercall, block: GuestPhysAddr) {
    // SAFETY: `out` to a hypercall port has no effect on guest state other
    // than the host writing results into the argument block, which the
    // callers own mutably and keep alive across the instruction (no
    // `nomem`, so the compiler re-reads it afterwards). The port carries
    // `eax`, the low half of `rax`; the host reads all of `rax`.
    unsafe {
        core::arch::asm!(
            "out dx, eax",
            in("dx") call.port(),
            in("rax") block.raw(),
            options(nostack, preserves_flags)
        );
    }
}

/// Describes a byte slice to the host: its guest-physical address if it is
/// physically contiguous (always true in the direct map and the image;
/// checked page by page elsewhere), else an address the host rejects
/// (`u64::MAX`), which stops the guest with an error naming the call.
pub(crate) fn buf(bytes: &[u8]) -> GuestBuf {
    let len = bytes.len() as u64;
    if len == 0 {
        return GuestBuf::default();
    }
    let start = bytes.as_ptr() as u64;
    let bad = GuestBuf {
        addr: GuestPhysAddr(u64::MAX),
        len,
    };
    let Some(phys) = virt_to_phys(start) else {
        return bad;
    };
    if start < crate::abi::DIRECT_MAP_BASE {
        let mut page = (start & !(PAGE_SIZE - 1)) + PAGE_SIZE;
        while page < start + len {
            if virt_to_phys(page) != Some(phys + (page - start)) {
                return bad;
            }
            page += PAGE_SIZE;
        }
    }
    GuestBuf {
        addr: GuestPhysAddr(phys),
        len,
    }
}

/// Appends raw bytes to this vCPU's console.
pub fn console_write(bytes: &[u8]) {
    let mut args = ConsoleArgs { text: buf(bytes) };
    call(calls::Console, &mut args);
}

/// Passes a raw, unchecked buffer description to the console call. Only for
/// testing the hypervisor's validation (feature `conformance`): a bad
/// `addr`/`len` ends the guest.
#[cfg(feature = "conformance")]
pub fn console_write_raw(addr: u64, len: u64) {
    let mut args = ConsoleArgs {
        text: GuestBuf {
            addr: GuestPhysAddr(addr),
            len,
        },
    };
    call(calls::Console, &mut args);
}

/// Ends the guest; `status` becomes the hypervisor's exit status.
pub fn exit(status: u8) -> ! {
    let mut args = ExitArgs {
        status: u32::from(status),
        _reserved: 0,
    };
    call(calls::Exit, &mut args);
    crate::percpu::halt_forever()
}

/// Reports a panic to the host, which stops the guest.
pub fn panic(message: &[u8], file: &[u8], line: u32, column: u32) -> ! {
    let mut args = PanicArgs {
        message: buf(message),
        file: buf(file),
        line,
        column,
    };
    call(calls::Panic, &mut args);
    crate::percpu::halt_forever()
}

/// Reports an unhandled exception to the host, which stops the guest.
pub fn fault(mut args: FaultArgs, reason: &[u8]) -> ! {
    args.reason = buf(reason);
    call(calls::Fault, &mut args);
    crate::percpu::halt_forever()
}

/// Nanoseconds on the host's monotonic clock since the VM was created.
/// One VM exit per call.
pub fn clock_nanos() -> u64 {
    let mut args = ClockArgs::default();
    call(calls::Clock, &mut args);
    args.nanos
}

/// The host's wall clock: nanoseconds since the Unix epoch (one VM exit).
pub fn unix_time_nanos() -> u64 {
    let mut args = ClockArgs::default();
    call(calls::Clock, &mut args);
    args.unix_nanos
}

/// Exits taken so far by the whole VM, at two levels, not counting these
/// queries (one exit to the VMM per call).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Exits {
    /// Exits to the VMM (hypercalls, doorbells, anything KVM hands to user
    /// space): the VMM's own count.
    pub vmm: u64,
    /// All VM exits as KVM counted them, those it handled in the kernel
    /// included (interrupts, IPIs, shadow-paging faults, emulated
    /// instructions); `None` when this host's KVM does not offer its
    /// statistics.
    pub kvm: Option<u64>,
}

/// Both exit counts of the whole VM so far (one exit to the VMM per call,
/// not counted in either).
pub fn exits() -> Exits {
    let mut args = StatsArgs::default();
    call(calls::Stats, &mut args);
    Exits {
        vmm: args.vmm_exits,
        kvm: (args.kvm_exits != crate::abi::KVM_EXITS_UNKNOWN).then_some(args.kvm_exits),
    }
}
