//! The guest's clock: [`Hypercall::Clock`](dbos_abi::Hypercall::Clock) reads the host's monotonic
//! clock, as nanoseconds since the VM was created, and its wall clock, as
//! nanoseconds since the Unix epoch.

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
    /// [`Hypercall::Clock`](dbos_abi::Hypercall::Clock): nanoseconds since the VM was created,
    /// and since the Unix epoch (0 if the host's clock is set before it).
    pub fn serve(&self, req: &Request<'_>, mut args: ClockArgs) -> Result<Outcome, HypercallError> {
        args.nanos = u64::try_from(self.started.elapsed().as_nanos()).unwrap_or(u64::MAX);
        args.unix_nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
        req.write_back(&args)
    }
}
