//! One vCPU: its initial register state and its run loop.
//!
//! The loop runs `KVM_RUN`, serves hypercall exits through the
//! [`Services`], counts every exit that reaches the VMM, and
//! turns anything unexpected (triple fault, emulation failure, an unknown
//! port, MMIO with no device) into a [`GuestExit::Crashed`] with the vCPU's
//! RIP and a register dump.

use crate::boot::{BootState, CODE_SELECTOR, DATA_SELECTOR};
use crate::clock::Clock;
use crate::control::Control;
use crate::disk::DiskService;
use crate::hypercall::{self, Outcome};
use crate::report::{ExitCounts, ExitKind, GuestExit, OtherExit, RegisterDump};
use crate::services::Services;
use crate::shared::Shared;
use dbos_abi::{Hypercall, DIRECT_MAP_BASE};
use kvm_bindings::{kvm_mp_state, kvm_segment, CpuId, KVM_MP_STATE_RUNNABLE};
use kvm_ioctls::{VcpuExit, VcpuFd};
use std::sync::atomic::Ordering;
use x86_64::registers::control::{Cr0Flags, Cr4Flags};
use x86_64::registers::model_specific::EferFlags;

/// CR0, CR4 and EFER at entry: 64-bit long mode with paging, write
/// protection in ring 0 and native FPU errors; no-execute pages if `nx`.
fn control_registers(nx: bool) -> (Cr0Flags, Cr4Flags, EferFlags) {
    let cr0 = Cr0Flags::PROTECTED_MODE_ENABLE
        | Cr0Flags::MONITOR_COPROCESSOR
        | Cr0Flags::EXTENSION_TYPE
        | Cr0Flags::NUMERIC_ERROR
        | Cr0Flags::WRITE_PROTECT
        | Cr0Flags::PAGING;
    let cr4 = Cr4Flags::PHYSICAL_ADDRESS_EXTENSION;
    let mut efer = EferFlags::LONG_MODE_ENABLE | EferFlags::LONG_MODE_ACTIVE;
    efer.set(EferFlags::NO_EXECUTE_ENABLE, nx);
    (cr0, cr4, efer)
}

/// Sets `cpuid` (with this vCPU's APIC id), the long-mode segment and control
/// registers, and the entry registers from the ABI: `rip` = entry,
/// `rdi` = boot info, `rsi` = vCPU index, `rsp` = boot stack top - 8.
pub fn setup(
    vcpu: &VcpuFd,
    index: u32,
    cpuid: &CpuId,
    boot: &BootState,
    entry: u64,
    stack_top_phys: u64,
    nx: bool,
) -> Result<(), kvm_ioctls::Error> {
    let mut cpuid = cpuid.clone();
    for e in cpuid.as_mut_slice() {
        match e.function {
            1 => e.ebx = (e.ebx & 0x00ff_ffff) | (index << 24),
            0xb | 0x1f => e.edx = index,
            _ => {}
        }
    }
    vcpu.set_cpuid2(&cpuid)?;

    let mut sregs = vcpu.get_sregs()?;
    let code = kvm_segment {
        base: 0,
        limit: 0xffff_ffff,
        selector: CODE_SELECTOR,
        type_: 0xb,
        present: 1,
        dpl: 0,
        db: 0,
        s: 1,
        l: 1,
        g: 1,
        avl: 0,
        unusable: 0,
        padding: 0,
    };
    let data = kvm_segment {
        selector: DATA_SELECTOR,
        type_: 0x3,
        db: 1,
        l: 0,
        ..code
    };
    sregs.cs = code;
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.gdt.base = boot.gdt_virt;
    sregs.gdt.limit = 3 * 8 - 1;
    sregs.idt.base = 0;
    sregs.idt.limit = 0;
    sregs.cr3 = boot.pml4;
    let (cr0, cr4, efer) = control_registers(nx);
    sregs.cr4 = cr4.bits();
    sregs.cr0 = cr0.bits();
    sregs.efer = efer.bits();
    vcpu.set_sregs(&sregs)?;

    let mut regs = vcpu.get_regs()?;
    regs.rip = entry;
    regs.rdi = boot.boot_info_virt;
    regs.rsi = u64::from(index);
    // As if `_start` had been called: the return-address slot keeps the
    // SysV alignment rule (rsp + 8 is 16-byte aligned at function entry).
    regs.rsp = DIRECT_MAP_BASE + stack_top_phys - 8;
    regs.rflags = 0x2;
    vcpu.set_regs(&regs)?;

    // With an in-kernel irqchip, KVM parks every vCPU but the first in
    // wait-for-SIPI; ours start directly at the entry point instead.
    if index > 0 {
        vcpu.set_mp_state(kvm_mp_state {
            mp_state: KVM_MP_STATE_RUNNABLE,
        })?;
    }
    Ok(())
}

/// What one exit asks the loop to do.
enum Next {
    Continue,
    Stop(Box<GuestExit>),
}

/// Runs vCPU `index` until the guest stops or the VM is being torn down.
pub(crate) fn run(index: u32, mut vcpu: VcpuFd, shared: &Shared) -> ExitCounts {
    let mut counts = ExitCounts::default();
    let services = Services {
        ram: &shared.ram,
        console: &shared.console,
        control: Control {
            vmm_exits: &shared.vmm_exits,
            stats_calls: &shared.stats_calls,
            kvm_stats: &shared.kvm_stats,
        },
        clock: Clock::new(shared.started),
        files: &shared.files,
        disk: DiskService {
            disk: shared.disk.as_ref(),
        },
        net: crate::net::NetService {
            net: shared.net.as_ref(),
        },
    };
    loop {
        if shared.stopping.load(Ordering::Acquire) {
            return counts;
        }
        let next = match vcpu.run() {
            Ok(exit) => {
                shared.vmm_exits.fetch_add(1, Ordering::Relaxed);
                let kind = exit_kind(&exit);
                counts.record(kind);
                // The guest has stopped meanwhile (another vCPU, the time
                // limit, a power cut): the machine is off, this exit is not
                // served (no console line, no I/O after a power cut).
                if shared.stopping.load(Ordering::Acquire) {
                    return counts;
                }
                match exit {
                    VcpuExit::IoOut(_, data) => match kind {
                        ExitKind::Hypercall(call) => {
                            // The data borrows the vCPU's run area: take its
                            // 4-byte value (no allocation) before reading
                            // `rax` (one ioctl, no VM exit), and only then.
                            let value = hypercall::port_value(call, data);
                            serve_hypercall(index, &vcpu, &services, call, value)
                        }
                        ExitKind::Other(_) => crashed(unserved(&exit)),
                    },
                    exit => crashed(unserved(&exit)),
                }
            }
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                vcpu.set_kvm_immediate_exit(0);
                Next::Continue
            }
            Err(e) => crashed(format!("KVM_RUN failed: {e}")),
        };
        if let Next::Stop(exit) = next {
            stop(index, &mut vcpu, shared, exit);
            return counts;
        }
    }
}

/// Serves hypercall `call` whose `out` wrote `value` (read before this, as
/// it borrows the vCPU): reads `rax` for the argument block's address and
/// hands the call to its service.
fn serve_hypercall(
    index: u32,
    vcpu: &VcpuFd,
    services: &Services<'_>,
    call: Hypercall,
    value: Result<u32, hypercall::HypercallError>,
) -> Next {
    let value = match value {
        Ok(v) => v,
        Err(error) => return bad_hypercall(index, error),
    };
    let rax = match vcpu.get_regs() {
        Ok(regs) => regs.rax,
        Err(e) => return crashed(format!("KVM_GET_REGS failed: {e}")),
    };
    let outcome = hypercall::block_address(call, value, rax)
        .and_then(|block| services.handle(index, call, block));
    match outcome {
        Ok(Outcome::Continue) => Next::Continue,
        Ok(Outcome::Stop(stop)) => Next::Stop(Box::new(GuestExit::from_stop(index, stop))),
        Err(error) => bad_hypercall(index, error),
    }
}

/// Why an exit that no service serves ends the guest.
fn unserved(exit: &VcpuExit<'_>) -> String {
    match exit {
        VcpuExit::IoOut(port, data) => format!(
            "write of {} byte(s) to unknown I/O port {port:#x}",
            data.len()
        ),
        VcpuExit::IoIn(port, data) => format!(
            "read of {} byte(s) from unknown I/O port {port:#x}",
            data.len()
        ),
        VcpuExit::MmioRead(addr, data) => format!(
            "MMIO read of {} byte(s) at {addr:#x}: no device there",
            data.len()
        ),
        VcpuExit::MmioWrite(addr, data) => format!(
            "MMIO write of {} byte(s) at {addr:#x}: no device there",
            data.len()
        ),
        VcpuExit::Shutdown => "triple fault (KVM_EXIT_SHUTDOWN)".into(),
        VcpuExit::Hlt => "halted with no way to wake (KVM_EXIT_HLT)".into(),
        VcpuExit::FailEntry(reason, cpu) => {
            format!("VM entry failed (KVM_EXIT_FAIL_ENTRY, reason {reason:#x}, cpu {cpu})")
        }
        // Filled in by `stop`, which can read the exit's suberror.
        VcpuExit::InternalError => String::new(),
        other => format!("unexpected VM exit {other:?}"),
    }
}

/// Stops the VM with `exit`: names a KVM internal error, attaches the
/// vCPU's registers and tells every vCPU to stop.
fn stop(index: u32, vcpu: &mut VcpuFd, shared: &Shared, mut exit: Box<GuestExit>) {
    if let GuestExit::Crashed { reason, .. } = exit.as_mut() {
        if reason.is_empty() {
            let internal = vcpu.get_kvm_run();
            // SAFETY: the last exit was KVM_EXIT_INTERNAL_ERROR, so
            // the `internal` member of the exit union is the valid one.
            let sub = unsafe { internal.__bindgen_anon_1.internal.suberror };
            *reason = format!(
                "KVM internal error (KVM_EXIT_INTERNAL_ERROR, suberror {sub}{}): \
                 the instruction could not be emulated (SSE/AVX and some others fail in ring 0 here)",
                if sub == 1 { ", emulation failure" } else { "" }
            );
        }
    }
    exit.attach_registers(index, RegisterDump::read(vcpu));
    shared.stop_with(*exit);
}

/// What an exit is counted as.
fn exit_kind(exit: &VcpuExit<'_>) -> ExitKind {
    match exit {
        VcpuExit::IoOut(port, _) => match Hypercall::from_port(*port) {
            Ok(call) => ExitKind::Hypercall(call),
            Err(_) => ExitKind::Other(OtherExit::UnknownPortOut),
        },
        VcpuExit::IoIn(..) => ExitKind::Other(OtherExit::PortIn),
        VcpuExit::MmioRead(..) | VcpuExit::MmioWrite(..) => ExitKind::Other(OtherExit::Mmio),
        VcpuExit::Shutdown => ExitKind::Other(OtherExit::Shutdown),
        VcpuExit::Hlt => ExitKind::Other(OtherExit::Hlt),
        VcpuExit::FailEntry(..) => ExitKind::Other(OtherExit::FailEntry),
        VcpuExit::InternalError => ExitKind::Other(OtherExit::InternalError),
        _ => ExitKind::Other(OtherExit::Other),
    }
}

fn bad_hypercall(vcpu: u32, error: hypercall::HypercallError) -> Next {
    Next::Stop(Box::new(GuestExit::BadHypercall {
        vcpu,
        error,
        regs: None,
    }))
}

fn crashed(reason: String) -> Next {
    Next::Stop(Box::new(GuestExit::Crashed {
        vcpu: 0,
        reason,
        regs: None,
    }))
}

#[cfg(test)]
mod tests {
    use super::control_registers;

    #[test]
    fn control_register_values() {
        // PE | MP | ET | NE | WP | PG; PAE; LME | LMA (| NXE).
        let (cr0, cr4, efer) = control_registers(true);
        assert_eq!(cr0.bits(), 0x8001_0033);
        assert_eq!(cr4.bits(), 0x20);
        assert_eq!(efer.bits(), 0xd00);
        let (cr0, cr4, efer) = control_registers(false);
        assert_eq!(cr0.bits(), 0x8001_0033);
        assert_eq!(cr4.bits(), 0x20);
        assert_eq!(efer.bits(), 0x500);
    }
}
