//! The guest's clock: [`Hypercall::Clock`](dbos_abi::Hypercall::Clock) reads the host's monotonic
//! clock, as nanoseconds since the VM was created.

use crate::hypercall::{HypercallError, Outcome, Request};
use dbos_abi::ClockArgs;
use std::time::Instant;

/// The clock service of one VM.
pub struct Clock {
    started: Instant,
}

impl Clock {
    /// A clock whose zero is `started` (the VM's creation).
    pub fn new(started: Instant) -> Clock {
        Clock { started }
    }
}

impl Clock {
    /// [`Hypercall::Clock`](dbos_abi::Hypercall::Clock): nanoseconds since the VM was created.
    pub fn serve(&self, req: &Request<'_>, mut args: ClockArgs) -> Result<Outcome, HypercallError> {
        args.nanos = u64::try_from(self.started.elapsed().as_nanos()).unwrap_or(u64::MAX);
        req.write_back(&args)
    }
}
