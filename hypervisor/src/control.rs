//! The guest's life cycle and the VMM's counters: [`Hypercall::Exit`](dbos_abi::Hypercall::Exit),
//! [`Hypercall::Panic`](dbos_abi::Hypercall::Panic) and [`Hypercall::Fault`](dbos_abi::Hypercall::Fault) stop the guest with a
//! [`Stop`] the run report turns into an exit status; [`Hypercall::Stats`](dbos_abi::Hypercall::Stats)
//! reads the exit counters: exits to the VMM, and KVM's count of all VM
//! exits.

use crate::hypercall::{HypercallError, Outcome, Request, Stop};
use crate::kvmstats::VcpuStats;
use dbos_abi::{ExitArgs, FaultArgs, PanicArgs, StatsArgs, KVM_EXITS_UNKNOWN};
use std::sync::atomic::{AtomicU64, Ordering};

/// The control service of one VM.
pub struct Control<'a> {
    /// Exits to the VMM of all vCPUs so far (including the one being
    /// served).
    pub vmm_exits: &'a AtomicU64,
    /// How many of them were `Stats` calls.
    pub stats_calls: &'a AtomicU64,
    /// KVM's statistics of every vCPU, or why there are none.
    pub kvm_stats: &'a Result<Vec<VcpuStats>, String>,
}

impl Control<'_> {
    /// [`Hypercall::Exit`](dbos_abi::Hypercall::Exit): stop with the guest's status.
    pub fn exit(&self, args: ExitArgs) -> Outcome {
        Outcome::Stop(Stop::Exit(args.status))
    }

    /// [`Hypercall::Panic`](dbos_abi::Hypercall::Panic): stop with the guest's panic report.
    pub fn panic(&self, req: &Request<'_>, args: PanicArgs) -> Result<Outcome, HypercallError> {
        Ok(Outcome::Stop(Stop::Panic {
            message: req.text("message", args.message)?,
            file: req.text("file", args.file)?,
            line: args.line,
            column: args.column,
        }))
    }

    /// [`Hypercall::Fault`](dbos_abi::Hypercall::Fault): stop with the unhandled exception's report.
    pub fn fault(&self, req: &Request<'_>, args: FaultArgs) -> Result<Outcome, HypercallError> {
        Ok(Outcome::Stop(Stop::Fault {
            vector: args.vector,
            error_code: args.error_code,
            rip: args.rip,
            cr2: args.cr2,
            rsp: args.rsp,
            rflags: args.rflags,
            reason: req.text("reason", args.reason)?,
            gprs: args.gprs,
        }))
    }

    /// [`Hypercall::Stats`](dbos_abi::Hypercall::Stats): the exit counters.
    pub fn stats(&self, req: &Request<'_>, mut args: StatsArgs) -> Result<Outcome, HypercallError> {
        // The Stats calls themselves are not counted, so that the
        // difference of two readings is exactly the exits between (at
        // KVM's level: one exit per call, this one included, which KVM
        // counted before returning to us).
        let stats_calls = self.stats_calls.fetch_add(1, Ordering::Relaxed) + 1;
        args.vmm_exits = self
            .vmm_exits
            .load(Ordering::Relaxed)
            .saturating_sub(stats_calls);
        args.kvm_exits = crate::vm::kvm_exits_now(self.kvm_stats)
            .map_or(KVM_EXITS_UNKNOWN, |n| n.saturating_sub(stats_calls));
        req.write_back(&args)
    }
}
