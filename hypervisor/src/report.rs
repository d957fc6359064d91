//! How a run ended, what it cost in VM exits, and how it is reported.

use crate::hypercall::{HypercallError, Stop};
use dbos_abi::{exception_name, Hypercall};
use kvm_ioctls::VcpuFd;
use std::fmt;
use std::time::Duration;

/// Process exit status for a guest panic.
pub const STATUS_PANIC: u8 = 101;
/// Process exit status for a guest that crashed: unhandled exception, bad
/// hypercall, triple fault, emulation failure, unknown port.
pub const STATUS_CRASH: u8 = 102;
/// Process exit status for an exit status that does not fit 8 bits.
pub const STATUS_BAD_EXIT: u8 = 103;
/// Process exit status for a guest stopped at its time limit.
pub const STATUS_TIMED_OUT: u8 = 104;
/// Process exit status for a guest stopped by an injected power cut.
pub const STATUS_POWER_CUT: u8 = 105;

/// How the guest stopped.
#[derive(Clone, Debug)]
pub enum GuestExit {
    /// The guest called exit.
    Exited { vcpu: u32, status: u32 },
    /// The guest panicked.
    Panicked {
        vcpu: u32,
        message: String,
        file: String,
        line: u32,
        column: u32,
    },
    /// An exception no hook handled.
    UnhandledException {
        vcpu: u32,
        vector: u64,
        error_code: u64,
        rip: u64,
        cr2: u64,
        rsp: u64,
        reason: String,
    },
    /// A hypercall with a bad argument.
    BadHypercall {
        vcpu: u32,
        error: HypercallError,
        regs: Option<RegisterDump>,
    },
    /// An unexpected VM exit or KVM failure.
    Crashed {
        vcpu: u32,
        reason: String,
        regs: Option<RegisterDump>,
    },
    /// Stopped by the VMM at the configured time limit, wherever it was.
    TimedOut { limit: Duration },
    /// Stopped by an injected power cut (`--power-cut-after`): the writes
    /// not yet durable were kept, lost or torn as `cut` says.
    PowerCut {
        after: Duration,
        seed: u64,
        cut: dbos_nvme::host::powercut::CutReport,
    },
}

impl GuestExit {
    pub(crate) fn from_stop(vcpu: u32, stop: Stop) -> Self {
        match stop {
            Stop::Exit(status) => GuestExit::Exited { vcpu, status },
            Stop::Panic {
                message,
                file,
                line,
                column,
            } => GuestExit::Panicked {
                vcpu,
                message,
                file,
                line,
                column,
            },
            Stop::Fault {
                vector,
                error_code,
                rip,
                cr2,
                rsp,
                reason,
                ..
            } => GuestExit::UnhandledException {
                vcpu,
                vector,
                error_code,
                rip,
                cr2,
                rsp,
                reason,
            },
        }
    }

    pub(crate) fn attach_registers(&mut self, index: u32, dump: Option<RegisterDump>) {
        match self {
            GuestExit::BadHypercall { vcpu, regs, .. } | GuestExit::Crashed { vcpu, regs, .. } => {
                *vcpu = index;
                *regs = dump;
            }
            _ => {}
        }
    }

    /// The hypervisor's process exit status for this outcome: the guest's own
    /// status when it exited, otherwise [`STATUS_PANIC`] or [`STATUS_CRASH`].
    pub fn process_status(&self) -> u8 {
        match self {
            GuestExit::Exited { status, .. } => u8::try_from(*status).unwrap_or(STATUS_BAD_EXIT),
            GuestExit::Panicked { .. } => STATUS_PANIC,
            GuestExit::TimedOut { .. } => STATUS_TIMED_OUT,
            GuestExit::PowerCut { .. } => STATUS_POWER_CUT,
            _ => STATUS_CRASH,
        }
    }

    /// Whether the guest stopped by calling exit.
    pub fn is_exit(&self) -> bool {
        matches!(self, GuestExit::Exited { .. })
    }
}

impl fmt::Display for GuestExit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GuestExit::Exited { vcpu, status } => {
                write!(f, "guest exited with status {status} (from vCPU {vcpu})")?;
                if *status > 255 {
                    write!(
                        f,
                        "; it does not fit a process exit status, {STATUS_BAD_EXIT} is used"
                    )?;
                }
                Ok(())
            }
            GuestExit::Panicked {
                vcpu,
                message,
                file,
                line,
                column,
            } => {
                write!(
                    f,
                    "guest panicked on vCPU {vcpu} at {file}:{line}:{column}: {message}"
                )
            }
            GuestExit::UnhandledException {
                vcpu,
                vector,
                error_code,
                rip,
                cr2,
                rsp,
                reason,
            } => write!(
                f,
                "guest stopped on vCPU {vcpu}: unhandled exception {} (vector {vector}), \
                 error code {error_code:#x}, RIP {rip:#x}, CR2 {cr2:#x}, RSP {rsp:#x}: {reason}",
                exception_name(*vector)
            ),
            GuestExit::BadHypercall { vcpu, error, regs } => {
                write!(f, "guest stopped on vCPU {vcpu}: bad {error}")?;
                if let Some(r) = regs {
                    write!(f, "\n{r}")?;
                }
                Ok(())
            }
            GuestExit::Crashed { vcpu, reason, regs } => {
                write!(f, "guest crashed on vCPU {vcpu}: {reason}")?;
                if let Some(r) = regs {
                    write!(f, "\n{r}")?;
                }
                Ok(())
            }
            GuestExit::TimedOut { limit } => {
                write!(
                    f,
                    "guest stopped at its time limit of {:.3} s",
                    limit.as_secs_f64()
                )
            }
            GuestExit::PowerCut { after, seed, cut } => write!(
                f,
                "power cut at {:.3} s (seed {seed}): {} writes not yet durable: {} kept, {} lost, \
                 {} torn; the disk file holds the crash image",
                after.as_secs_f64(),
                cut.volatile,
                cut.kept,
                cut.lost,
                cut.torn
            ),
        }
    }
}

/// A short register dump of a vCPU.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RegisterDump {
    pub rip: u64,
    pub rsp: u64,
    pub rflags: u64,
    pub gprs: [(&'static str, u64); 15],
    pub cr0: u64,
    pub cr2: u64,
    pub cr3: u64,
    pub cr4: u64,
    pub efer: u64,
}

impl RegisterDump {
    pub(crate) fn read(vcpu: &VcpuFd) -> Option<Self> {
        let r = vcpu.get_regs().ok()?;
        let s = vcpu.get_sregs().ok()?;
        Some(RegisterDump {
            rip: r.rip,
            rsp: r.rsp,
            rflags: r.rflags,
            gprs: [
                ("rax", r.rax),
                ("rbx", r.rbx),
                ("rcx", r.rcx),
                ("rdx", r.rdx),
                ("rsi", r.rsi),
                ("rdi", r.rdi),
                ("rbp", r.rbp),
                ("r8", r.r8),
                ("r9", r.r9),
                ("r10", r.r10),
                ("r11", r.r11),
                ("r12", r.r12),
                ("r13", r.r13),
                ("r14", r.r14),
                ("r15", r.r15),
            ],
            cr0: s.cr0,
            cr2: s.cr2,
            cr3: s.cr3,
            cr4: s.cr4,
            efer: s.efer,
        })
    }
}

impl fmt::Display for RegisterDump {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "  RIP {:#018x}  RSP {:#018x}  RFLAGS {:#x}",
            self.rip, self.rsp, self.rflags
        )?;
        for chunk in self.gprs.chunks(4) {
            write!(f, " ")?;
            for (name, value) in chunk {
                write!(f, " {name:>3} {value:#018x}")?;
            }
            writeln!(f)?;
        }
        write!(
            f,
            "  CR0 {:#x}  CR2 {:#x}  CR3 {:#x}  CR4 {:#x}  EFER {:#x}",
            self.cr0, self.cr2, self.cr3, self.cr4, self.efer
        )
    }
}

/// VM exits counted by the VMM.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ExitCounts {
    /// Every return from `KVM_RUN` with an exit (not counting signal kicks).
    pub total: u64,
    /// Hypercall exits by call number.
    pub hypercalls: [u64; Hypercall::ALL.len()],
}

impl ExitCounts {
    pub fn add(&mut self, other: &ExitCounts) {
        self.total += other.total;
        for (a, b) in self.hypercalls.iter_mut().zip(other.hypercalls) {
            *a += b;
        }
    }

    /// Hypercall exits of one kind.
    pub fn hypercall(&self, call: Hypercall) -> u64 {
        self.hypercalls[call as usize]
    }
}

/// What a run produced.
#[derive(Clone, Debug)]
pub struct RunReport {
    pub exit: GuestExit,
    /// Exits of all vCPUs together.
    pub exits: ExitCounts,
    /// Exits per vCPU.
    pub exits_per_vcpu: Vec<ExitCounts>,
    /// Time from VM creation to the guest's stop.
    pub elapsed: Duration,
    /// Console lines, when capture was enabled.
    pub console: Vec<String>,
    /// The disk poller's counters, when the VM had a disk.
    pub disk: Option<dbos_nvme::host::PollerStats>,
}
