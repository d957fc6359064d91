//! Hypercalls: a 32-bit `out` to the call's port carrying the guest-physical
//! address of its argument block (see [`crate::abi`]). Each call is one VM
//! exit, about 5 us on the development machines: keep them off hot paths.

use crate::abi::{
    ClockArgs, ConsoleArgs, ExitArgs, FaultArgs, GuestBuf, Hypercall, PanicArgs, StatsArgs,
};
use crate::memory::virt_to_phys;

/// Issues `call` with the argument block `args`.
///
/// The block must be in memory the hypervisor can address below 4 GiB
/// (stacks, the heap and the image always are); if it is not, the call cannot
/// be made and the vCPU halts for good, which the host reports as a hang
/// rather than acting on a wrong address.
pub(crate) fn call<T>(call: Hypercall, args: &mut T) {
    let phys = virt_to_phys(args as *mut T as u64)
        .filter(|p| *p + core::mem::size_of::<T>() as u64 <= u64::from(u32::MAX));
    let Some(phys) = phys else {
        crate::percpu::halt_forever();
    };
    // SAFETY: `out` to a hypercall port has no effect on guest state other
    // than the host writing results into `args`, which we own mutably and
    // which stays alive across the instruction (no `nomem`, so the compiler
    // re-reads it afterwards).
    unsafe {
        core::arch::asm!(
            "out dx, eax",
            in("dx") call.port(),
            in("eax") phys as u32,
            options(nostack, preserves_flags)
        );
    }
}

/// Describes a byte slice to the host (an address of `u64::MAX`, which the
/// host rejects, if it is not translatable).
pub(crate) fn buf(bytes: &[u8]) -> GuestBuf {
    if bytes.is_empty() {
        return GuestBuf::default();
    }
    match virt_to_phys(bytes.as_ptr() as u64) {
        // A buffer must be physically contiguous: true for the direct map and
        // the image; other virtual ranges are copied by the callers first.
        Some(addr) => GuestBuf {
            addr,
            len: bytes.len() as u64,
        },
        None => GuestBuf {
            addr: u64::MAX,
            len: bytes.len() as u64,
        },
    }
}

/// Appends raw bytes to this vCPU's console.
pub fn console_write(bytes: &[u8]) {
    let mut args = ConsoleArgs { text: buf(bytes) };
    call(Hypercall::Console, &mut args);
}

/// Passes a raw, unchecked buffer description to the console call. Only for
/// testing the hypervisor's validation: a bad `addr`/`len` ends the guest.
pub fn console_write_raw(addr: u64, len: u64) {
    let mut args = ConsoleArgs {
        text: GuestBuf { addr, len },
    };
    call(Hypercall::Console, &mut args);
}

/// Ends the guest; `status` becomes the hypervisor's exit status.
pub fn exit(status: u8) -> ! {
    let mut args = ExitArgs {
        status: u32::from(status),
        _reserved: 0,
    };
    call(Hypercall::Exit, &mut args);
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
    call(Hypercall::Panic, &mut args);
    crate::percpu::halt_forever()
}

/// Reports an unhandled exception to the host, which stops the guest.
pub fn fault(mut args: FaultArgs, reason: &[u8]) -> ! {
    args.reason = buf(reason);
    call(Hypercall::Fault, &mut args);
    crate::percpu::halt_forever()
}

/// Nanoseconds on the host's monotonic clock since the VM was created.
/// One VM exit per call.
pub fn clock_nanos() -> u64 {
    let mut args = ClockArgs::default();
    call(Hypercall::Clock, &mut args);
    args.nanos
}

/// VM exits taken so far by the whole VM, not counting these queries (one
/// VM exit per call).
pub fn vm_exits() -> u64 {
    let mut args = StatsArgs::default();
    call(Hypercall::Stats, &mut args);
    args.vm_exits
}
