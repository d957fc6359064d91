//! Hypercalls: a 32-bit `out` to the call's port carrying the guest-physical
//! address of its argument block (see [`crate::abi`]). Each call is one VM
//! exit, about 5 us on the development machines: keep them off hot paths.

use crate::abi::{
    ClockArgs, ConsoleArgs, ExitArgs, FaultArgs, GuestBuf, Hypercall, PanicArgs, StatsArgs,
};
use crate::memory::virt_to_phys;

/// Issues `call` with the argument block `args`.
///
/// The host addresses the block by its guest-physical address, which must be
/// below 4 GiB and physically contiguous: true for stacks, the heap and the
/// image. A block anywhere else (say, on a stack in a database window) is
/// copied through a bounce buffer in the image.
pub(crate) fn call<T: Copy>(call: Hypercall, args: &mut T) {
    let virt = args as *mut T as u64;
    let direct = virt >= crate::abi::DIRECT_MAP_BASE;
    let phys =
        virt_to_phys(virt).filter(|p| direct && *p + size_of::<T>() as u64 <= u64::from(u32::MAX));
    match phys {
        Some(phys) => out(call, phys as u32),
        None => bounced(call, args),
    }
}

fn out(call: Hypercall, phys: u32) {
    // SAFETY: `out` to a hypercall port has no effect on guest state other
    // than the host writing results into the argument block, which the
    // callers own mutably and keep alive across the instruction (no
    // `nomem`, so the compiler re-reads it afterwards).
    unsafe {
        core::arch::asm!(
            "out dx, eax",
            in("dx") call.port(),
            in("eax") phys,
            options(nostack, preserves_flags)
        );
    }
}

/// A buffer in the image (so below 4 GiB and contiguous) for argument blocks
/// the host cannot address where they are.
#[repr(C, align(64))]
struct Bounce([u64; 16]);
static BOUNCE: spin::Mutex<Bounce> = spin::Mutex::new(Bounce([0; 16]));

fn bounced<T: Copy>(call: Hypercall, args: &mut T) {
    const { assert!(size_of::<T>() <= size_of::<Bounce>()) };
    // Interrupts off while the lock is held: a hook making a hypercall on
    // this CPU must not spin on it.
    x86_64::instructions::interrupts::without_interrupts(|| {
        let mut bounce = BOUNCE.lock();
        let slot = bounce.0.as_mut_ptr().cast::<T>();
        // SAFETY: the bounce buffer is large and aligned enough for `T`
        // (checked above; 64-byte alignment covers every argument block) and
        // is ours while the lock is held.
        unsafe { slot.write(*args) };
        let phys = virt_to_phys(slot as u64).expect("the image is mapped");
        out(call, phys as u32);
        // SAFETY: as above; the host wrote its results into the slot.
        *args = unsafe { slot.read() };
    })
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
        addr: u64::MAX,
        len,
    };
    let Some(phys) = virt_to_phys(start) else {
        return bad;
    };
    if start < crate::abi::DIRECT_MAP_BASE {
        let mut page = (start & !0xfff) + 0x1000;
        while page < start + len {
            if virt_to_phys(page) != Some(phys + (page - start)) {
                return bad;
            }
            page += 0x1000;
        }
    }
    GuestBuf { addr: phys, len }
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
