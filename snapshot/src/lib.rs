//! Memory snapshots for dbos.
//!
//! For now this crate holds the snapshot epoch, the counter Snappy's
//! copy-on-write is keyed on: a page last copied in an epoch older than the
//! current one must be copied before it is written. Snappy itself and the
//! `fork()` and userfaultfd baselines arrive with their issue. `no_std`, for
//! the guest and for a process.
#![no_std]

use core::sync::atomic::{AtomicU64, Ordering};

/// A snapshot epoch. Epoch 0 is "before any snapshot".
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Epoch(pub u64);

/// The current epoch, advanced by each snapshot.
#[derive(Debug, Default)]
pub struct EpochClock(AtomicU64);

impl EpochClock {
    pub const fn new() -> Self {
        EpochClock(AtomicU64::new(0))
    }

    /// The current epoch.
    pub fn current(&self) -> Epoch {
        Epoch(self.0.load(Ordering::Acquire))
    }

    /// Starts a new epoch and returns the one that just closed: the epoch a
    /// snapshot taken now captures.
    pub fn advance(&self) -> Epoch {
        Epoch(self.0.fetch_add(1, Ordering::AcqRel))
    }

    /// Whether a page last copied in `copied` must be copied again before a
    /// write in the current epoch.
    pub fn needs_copy(&self, copied: Epoch) -> bool {
        copied < self.current()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epochs_advance_and_decide_copies() {
        let clock = EpochClock::new();
        assert_eq!(clock.current(), Epoch(0));
        assert!(!clock.needs_copy(Epoch(0)));
        assert_eq!(clock.advance(), Epoch(0));
        assert_eq!(clock.current(), Epoch(1));
        assert!(clock.needs_copy(Epoch(0)));
        assert!(!clock.needs_copy(Epoch(1)));
    }
}
