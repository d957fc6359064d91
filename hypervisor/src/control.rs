//! The guest's life cycle and the VMM's counters: [`Hypercall::Exit`](dbos_abi::Hypercall::Exit),
//! [`Hypercall::Panic`](dbos_abi::Hypercall::Panic) and [`Hypercall::Fault`](dbos_abi::Hypercall::Fault) stop the guest with a
//! [`Stop`] the run report turns into an exit status; [`Hypercall::Stats`](dbos_abi::Hypercall::Stats)
//! reads the VM-exit counter.

use crate::hypercall::{HypercallError, Outcome, Request, Stop};
use dbos_abi::{ExitArgs, FaultArgs, PanicArgs, StatsArgs};
use std::sync::atomic::{AtomicU64, Ordering};

/// The control service of one VM.
pub struct Control<'a> {
    /// VM exits of all vCPUs so far (including the one being served).
    pub exits: &'a AtomicU64,
    /// How many of them were `Stats` calls.
    pub stats_calls: &'a AtomicU64,
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

    /// [`Hypercall::Stats`](dbos_abi::Hypercall::Stats): the VM-exit counter.
    pub fn stats(&self, req: &Request<'_>, mut args: StatsArgs) -> Result<Outcome, HypercallError> {
        // The Stats calls themselves are not counted, so that the
        // difference of two readings is exactly the exits between.
        let stats_calls = self.stats_calls.fetch_add(1, Ordering::Relaxed) + 1;
        args.vm_exits = self
            .exits
            .load(Ordering::Relaxed)
            .saturating_sub(stats_calls);
        req.write_back(&args)
    }
}
