//! How a run ended, what it cost in exits to the VMM, and how it is reported.

use crate::hypercall::{HypercallError, Stop};
use dbos_abi::{exception_name, Hypercall};
use dbos_nvme::host::powercut::Fate;
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
/// Process exit status when the VM cannot be set up (no KVM, unreadable or
/// invalid image, memory too small or larger than the host can provide, a
/// host file or disk that cannot be opened).
pub const STATUS_SETUP: u8 = 1;
/// Process exit status for a usage error (a bad or inconsistent option).
pub const STATUS_USAGE: u8 = 2;

/// Process exit status for a guest stopped by an injected power cut.
pub const STATUS_POWER_CUT: u8 = 105;

/// dbos's own process exit statuses and what each means.
pub const DBOS_STATUSES: [(u8, &str); 7] = [
    (STATUS_SETUP, "a VM that cannot be set up"),
    (STATUS_USAGE, "a usage error"),
    (STATUS_PANIC, "a guest panic"),
    (STATUS_CRASH, "a guest crash"),
    (STATUS_BAD_EXIT, "an exit status that does not fit 8 bits"),
    (STATUS_TIMED_OUT, "a guest stopped at its time limit"),
    (STATUS_POWER_CUT, "a guest stopped by an injected power cut"),
];

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
        /// The faulting context's registers: those the guest reported, with
        /// the control registers of the vCPU.
        regs: Option<RegisterDump>,
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
    /// Stopped by an injected power cut (`--power-cut-after`,
    /// `--power-cut-at-write`): the writes not yet durable were kept, lost
    /// or torn as `cut` says.
    PowerCut {
        at: crate::disk::CutAt,
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
                rflags,
                reason,
                gprs,
            } => GuestExit::UnhandledException {
                vcpu,
                vector,
                error_code,
                rip,
                cr2,
                rsp,
                reason,
                regs: Some(RegisterDump {
                    rip,
                    rsp,
                    rflags,
                    gprs: std::array::from_fn(|i| (dbos_abi::FAULT_GPR_NAMES[i], gprs[i])),
                    cr0: 0,
                    cr2,
                    cr3: 0,
                    cr4: 0,
                    efer: 0,
                }),
            },
        }
    }

    /// Completes the report with vCPU `index`'s registers, read when it
    /// stopped. For an unhandled exception the guest reported the faulting
    /// context's registers itself (the vCPU is in the handler by then); only
    /// the control registers, which the handler did not change, come from
    /// the vCPU.
    pub(crate) fn attach_registers(&mut self, index: u32, dump: Option<RegisterDump>) {
        match self {
            GuestExit::BadHypercall { vcpu, regs, .. } | GuestExit::Crashed { vcpu, regs, .. } => {
                *vcpu = index;
                *regs = dump;
            }
            GuestExit::UnhandledException {
                regs: Some(regs), ..
            } => {
                if let Some(vcpu) = dump {
                    regs.cr0 = vcpu.cr0;
                    regs.cr3 = vcpu.cr3;
                    regs.cr4 = vcpu.cr4;
                    regs.efer = vcpu.efer;
                }
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

    /// When the guest exited with a status that dbos also uses for an outcome
    /// of its own, one line that says the guest chose it.
    pub fn status_collision(&self) -> Option<String> {
        let GuestExit::Exited { status, .. } = self else {
            return None;
        };
        let (code, meaning) = DBOS_STATUSES
            .iter()
            .find(|(code, _)| u32::from(*code) == *status)?;
        Some(format!(
            "exit status {code} was chosen by the guest (dbos itself uses {code} for {meaning})"
        ))
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
                regs,
            } => {
                write!(
                    f,
                    "guest stopped on vCPU {vcpu}: unhandled exception {} (vector {vector}), \
                     error code {error_code:#x}, RIP {rip:#x}, CR2 {cr2:#x}, RSP {rsp:#x}: \
                     {reason}",
                    exception_name(*vector)
                )?;
                if let Some(r) = regs {
                    write!(f, "\n{r}")?;
                }
                Ok(())
            }
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
            GuestExit::PowerCut { at, seed, cut } => {
                write!(
                    f,
                    "power cut at {at} (seed {seed}): {} writes not yet durable: {} kept, {} \
                     lost, {} torn",
                    cut.volatile, cut.kept, cut.lost, cut.torn
                )?;
                if let Some(w) = cut.in_flight {
                    write!(
                        f,
                        " (among them the write in flight, {}{} bytes at byte {}: {}",
                        if w.fua { "FUA, " } else { "" },
                        w.len,
                        w.offset,
                        match w.fate {
                            Fate::Kept => "kept",
                            Fate::Lost => "lost",
                            Fate::Torn => "torn",
                        }
                    )?;
                    if w.fate == Fate::Torn {
                        write!(
                            f,
                            ", {} of {} sectors landed",
                            w.sectors_landed,
                            w.len.div_ceil(512)
                        )?;
                    }
                    write!(f, ")")?;
                }
                write!(f, "; the disk file holds the crash image")
            }
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

/// A VM exit that is not a hypercall, by reason.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OtherExit {
    /// An `out` to a port that is not a hypercall.
    UnknownPortOut,
    /// An `in` from any port.
    PortIn,
    /// An MMIO read or write (there are no MMIO devices).
    Mmio,
    /// A triple fault (`KVM_EXIT_SHUTDOWN`).
    Shutdown,
    /// `hlt` with no way to wake.
    Hlt,
    /// `KVM_EXIT_FAIL_ENTRY`.
    FailEntry,
    /// `KVM_EXIT_INTERNAL_ERROR` (such as an emulation failure).
    InternalError,
    /// Any other exit reason.
    Other,
}

impl OtherExit {
    /// Every reason, in the order of the breakdown.
    pub const ALL: [OtherExit; 8] = [
        OtherExit::UnknownPortOut,
        OtherExit::PortIn,
        OtherExit::Mmio,
        OtherExit::Shutdown,
        OtherExit::Hlt,
        OtherExit::FailEntry,
        OtherExit::InternalError,
        OtherExit::Other,
    ];

    /// How the `--stats` breakdown names it.
    pub fn name(self) -> &'static str {
        match self {
            OtherExit::UnknownPortOut => "unknown-port out",
            OtherExit::PortIn => "port in",
            OtherExit::Mmio => "MMIO",
            OtherExit::Shutdown => "triple fault",
            OtherExit::Hlt => "hlt",
            OtherExit::FailEntry => "failed entry",
            OtherExit::InternalError => "KVM internal error",
            OtherExit::Other => "other",
        }
    }
}

/// Why one VM exit happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExitKind {
    Hypercall(Hypercall),
    Other(OtherExit),
}

/// Exits to the VMM, counted by the VMM: every return from `KVM_RUN` with
/// an exit is counted once in `total` and once under its kind, so the kinds
/// always sum to the total. Exits KVM handles in the kernel without
/// returning (interrupts, IPIs through the in-kernel APIC, page faults and
/// TLB instructions under shadow paging, emulated instructions) are not
/// here; [`crate::kvmstats`] reads KVM's own count of every exit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ExitCounts {
    /// Every return from `KVM_RUN` with an exit to the VMM (not counting
    /// signal kicks).
    pub total: u64,
    /// Hypercall exits by call number.
    pub hypercalls: [u64; Hypercall::ALL.len()],
    /// Other exits, indexed by [`OtherExit`].
    pub others: [u64; OtherExit::ALL.len()],
}

impl ExitCounts {
    /// Counts one exit.
    pub fn record(&mut self, kind: ExitKind) {
        self.total += 1;
        match kind {
            ExitKind::Hypercall(call) => self.hypercalls[call as usize] += 1,
            ExitKind::Other(reason) => self.others[reason as usize] += 1,
        }
    }

    pub fn add(&mut self, other: &ExitCounts) {
        self.total += other.total;
        for (a, b) in self.hypercalls.iter_mut().zip(other.hypercalls) {
            *a += b;
        }
        for (a, b) in self.others.iter_mut().zip(other.others) {
            *a += b;
        }
    }

    /// Hypercall exits of one kind.
    pub fn hypercall(&self, call: Hypercall) -> u64 {
        self.hypercalls[call as usize]
    }

    /// Exits of one other reason.
    pub fn other(&self, reason: OtherExit) -> u64 {
        self.others[reason as usize]
    }

    /// Every kind with a non-zero count, hypercalls first (by name), then
    /// the other reasons; the counts sum to [`ExitCounts::total`].
    pub fn breakdown(&self) -> Vec<(&'static str, u64)> {
        let calls = Hypercall::ALL
            .iter()
            .map(|&call| (call.name(), self.hypercall(call)));
        let others = OtherExit::ALL
            .iter()
            .map(|&reason| (reason.name(), self.other(reason)));
        calls.chain(others).filter(|&(_, n)| n > 0).collect()
    }
}

/// The breakdown, as `--stats` prints it: "Console 2, Exit 1" (or "none").
impl fmt::Display for ExitCounts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts = self.breakdown();
        if parts.is_empty() {
            return write!(f, "none");
        }
        for (i, (name, n)) in parts.iter().enumerate() {
            if i > 0 {
                write!(f, ", ")?;
            }
            write!(f, "{name} {n}")?;
        }
        Ok(())
    }
}

/// What a run produced.
#[derive(Clone, Debug)]
pub struct RunReport {
    pub exit: GuestExit,
    /// Exits to the VMM (returns from `KVM_RUN`) of all vCPUs together.
    /// Exits KVM handled in the kernel are not among them: see `kvm`.
    pub vmm_exits: ExitCounts,
    /// Exits to the VMM per vCPU.
    pub vmm_exits_per_vcpu: Vec<ExitCounts>,
    /// KVM's own counters (`KVM_GET_STATS_FD`): all VM exits, those KVM
    /// handled in the kernel included, by kind; or why they are not
    /// available.
    pub kvm: crate::kvmstats::KvmStats,
    /// Time from VM creation to the guest's stop.
    pub elapsed: Duration,
    /// Time from VM creation to the start of the first vCPU (the VM set
    /// up: guest RAM, boot state, vCPUs, the disk's poller).
    pub setup: Duration,
    /// This process's memory when the guest had stopped, before the disk
    /// was torn down: peak resident, and what was locked and pinned while
    /// the VM (and its disk's io_uring) lived.
    pub memory: crate::memory::ProcessMemory,
    /// Console lines, when capture was enabled.
    pub console: Vec<String>,
    /// The disk poller's counters, when the VM had a disk.
    pub disk: Option<dbos_nvme::host::PollerStats>,
    /// CPU time of the disk's poller thread (its thread CPU clock) when
    /// the guest had stopped, when the VM had a disk.
    pub disk_cpu: Option<Duration>,
    /// The power-cut model's counters, when the disk ran on it (a power
    /// cut was armed): `write_commands` is what `--power-cut-at-write`
    /// counts.
    pub power_cut_model: Option<dbos_nvme::host::powercut::PowerCutStats>,
    /// What the injected I/O error did (`--io-error-at`), when one was
    /// asked for.
    pub io_error: Option<crate::disk::IoErrorReport>,
    /// The network's counters, when the VM had a network (`--listen`).
    pub net: Option<dbos_abi::net::NetStatsArgs>,
}

/// The disk's I/O line of `--stats`: "disk: 12 I/Os with fixed buffers,
/// 3 with plain buffers; 2 DMA regions (1048576 bytes) declared at the
/// end; poller thread CPU 1.500 ms".
pub fn disk_io_line(disk: &dbos_nvme::host::PollerStats, cpu: Option<Duration>) -> String {
    let cpu = match cpu {
        Some(t) => format!("{:.3} ms", t.as_secs_f64() * 1e3),
        None => "unknown".to_string(),
    };
    format!(
        "disk: {} I/Os with fixed buffers, {} with plain buffers; {} DMA regions ({} bytes) \
         declared at the end; poller thread CPU {cpu}",
        disk.fixed_ios, disk.plain_ios, disk.dma_regions, disk.dma_bytes
    )
}

/// The network's line of `--stats`: "net: 12 commands, 11 completions
/// (3 invalid); 2 clients accepted, 0 refused; 10 bytes received, 20
/// sent; poller woken 4 times (3.0 commands per wake-up), 2 doorbells, 0
/// interrupts".
pub fn net_line(net: &dbos_abi::net::NetStatsArgs) -> String {
    let per_wakeup = if net.wakeups == 0 {
        "never parked and woken".to_string()
    } else {
        format!(
            "{:.1} commands per wake-up",
            net.commands as f64 / net.wakeups as f64
        )
    };
    format!(
        "net: {} commands, {} completions ({} invalid); {} clients accepted, {} refused; \
         {} bytes received, {} sent; poller woken {} times ({per_wakeup}), {} doorbells, \
         {} interrupts",
        net.commands,
        net.completions,
        net.invalid,
        net.accepted,
        net.refused,
        net.bytes_received,
        net.bytes_sent,
        net.wakeups,
        net.doorbells,
        net.interrupts
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_net_line_counts_per_wakeup() {
        let stats = dbos_abi::net::NetStatsArgs {
            commands: 12,
            completions: 11,
            wakeups: 4,
            doorbells: 2,
            accepted: 2,
            refused: 0,
            invalid: 3,
            bytes_received: 10,
            bytes_sent: 20,
            interrupts: 0,
        };
        assert_eq!(
            net_line(&stats),
            "net: 12 commands, 11 completions (3 invalid); 2 clients accepted, 0 refused; \
             10 bytes received, 20 sent; poller woken 4 times (3.0 commands per wake-up), \
             2 doorbells, 0 interrupts"
        );
        let idle = dbos_abi::net::NetStatsArgs::default();
        assert!(net_line(&idle).contains("(never parked and woken)"));
    }

    #[test]
    fn the_disk_line_names_fixed_and_plain_ios() {
        let stats = dbos_nvme::host::PollerStats {
            fixed_ios: 12,
            plain_ios: 3,
            dma_regions: 2,
            dma_bytes: 1 << 20,
            ..Default::default()
        };
        assert_eq!(
            disk_io_line(&stats, Some(Duration::from_micros(1500))),
            "disk: 12 I/Os with fixed buffers, 3 with plain buffers; 2 DMA regions \
             (1048576 bytes) declared at the end; poller thread CPU 1.500 ms"
        );
        assert!(disk_io_line(&stats, None).ends_with("poller thread CPU unknown"));
    }

    #[test]
    fn the_breakdown_sums_to_the_total() {
        let mut a = ExitCounts::default();
        assert_eq!(a.to_string(), "none");
        for call in Hypercall::ALL {
            a.record(ExitKind::Hypercall(*call));
        }
        a.record(ExitKind::Hypercall(Hypercall::Console));
        let mut b = ExitCounts::default();
        for reason in OtherExit::ALL {
            b.record(ExitKind::Other(reason));
        }
        a.add(&b);
        let parts = a.breakdown();
        assert_eq!(parts.len(), Hypercall::ALL.len() + OtherExit::ALL.len());
        assert_eq!(parts.iter().map(|(_, n)| n).sum::<u64>(), a.total);
        assert_eq!(
            a.total,
            (Hypercall::ALL.len() + 1 + OtherExit::ALL.len()) as u64
        );
        assert!(
            a.to_string().starts_with("Console 2, Exit 1, Panic 1, "),
            "{a}"
        );
        assert!(
            a.to_string().ends_with("KVM internal error 1, other 1"),
            "{a}"
        );
    }

    #[test]
    fn statuses_dbos_uses_are_attributed_to_the_guest() {
        for (code, _) in DBOS_STATUSES {
            let exit = GuestExit::Exited {
                vcpu: 0,
                status: u32::from(code),
            };
            let note = exit.status_collision().unwrap();
            assert!(
                note.starts_with(&format!("exit status {code} was chosen by the guest")),
                "{note}"
            );
        }
        for status in [0, 3, 42, 100, 106, 255, 257] {
            assert_eq!(
                GuestExit::Exited { vcpu: 0, status }.status_collision(),
                None
            );
        }
        let panic = GuestExit::TimedOut {
            limit: Duration::from_secs(1),
        };
        assert_eq!(panic.status_collision(), None);
    }
}
