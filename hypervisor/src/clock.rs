//! The guest's clock: [`Hypercall::Clock`] reads the host's monotonic
//! clock, as nanoseconds since the VM was created.

use crate::hypercall::{HypercallError, Outcome, Request, Service};
use dbos_abi::{ClockArgs, Hypercall};
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

impl Service for Clock {
    fn serve(&self, req: &Request<'_>) -> Result<Outcome, HypercallError> {
        debug_assert_eq!(req.call, Hypercall::Clock);
        let mut args: ClockArgs = req.args()?;
        args.nanos = u64::try_from(self.started.elapsed().as_nanos()).unwrap_or(u64::MAX);
        req.write_back(&args)
    }
}
