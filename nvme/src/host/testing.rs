//! A backend wrapper for tests: records every operation the poller issues
//! and can fail chosen kinds of operation with an errno instead of issuing
//! them.

pub use super::backend::OpMatch;
use super::backend::{Backend, IoKind, IoOp};
use super::wake::WakeFd;
use std::collections::VecDeque;
use std::io;
use std::sync::{Arc, Mutex};
use std::vec::Vec;

/// One operation as the poller issued it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Recorded {
    pub kind: IoKind,
    pub offset: u64,
    pub len: u32,
    /// The errno it was failed with instead of being issued, if any.
    pub failed_with: Option<i32>,
}

/// The shared view of an [`InspectBackend`]: what it recorded, which faults
/// it injects.
#[derive(Debug, Default)]
pub struct Inspector {
    ops: Mutex<Vec<Recorded>>,
    faults: Mutex<Vec<(OpMatch, i32)>>,
}

impl Inspector {
    /// Fails every later operation matching `what` with `errno`.
    pub fn fail(&self, what: OpMatch, errno: i32) {
        self.faults
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((what, errno));
    }

    /// Removes all faults.
    pub fn clear_faults(&self) {
        self.faults
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }

    /// Takes the operations recorded so far.
    pub fn take(&self) -> Vec<Recorded> {
        std::mem::take(&mut *self.ops.lock().unwrap_or_else(|e| e.into_inner()))
    }

    fn fault_for(&self, kind: IoKind) -> Option<i32> {
        let faults = self.faults.lock().unwrap_or_else(|e| e.into_inner());
        faults
            .iter()
            .find(|(m, _)| m.matches(kind))
            .map(|&(_, errno)| errno)
    }
}

/// Wraps a backend, recording operations and injecting faults.
pub struct InspectBackend<B> {
    inner: B,
    inspector: Arc<Inspector>,
    failed: VecDeque<(u64, i32)>,
}

impl<B: Backend> InspectBackend<B> {
    /// Wraps `inner`; the returned inspector observes and steers it.
    pub fn new(inner: B) -> (InspectBackend<B>, Arc<Inspector>) {
        let inspector = Arc::new(Inspector::default());
        (
            InspectBackend {
                inner,
                inspector: inspector.clone(),
                failed: VecDeque::new(),
            },
            inspector,
        )
    }
}

impl<B: Backend> Backend for InspectBackend<B> {
    fn capacity_blocks(&self) -> u64 {
        self.inner.capacity_blocks()
    }

    fn room(&self) -> usize {
        self.inner.room()
    }

    fn push(&mut self, op: &IoOp, tag: u64) -> bool {
        let fault = self.inspector.fault_for(op.kind);
        if fault.is_none() && !self.inner.push(op, tag) {
            return false;
        }
        if let Some(errno) = fault {
            self.failed.push_back((tag, -errno));
        }
        let rec = Recorded {
            kind: op.kind,
            offset: op.offset,
            len: op.buf.len,
            failed_with: fault,
        };
        self.inspector
            .ops
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(rec);
        true
    }

    fn submit(&mut self) -> io::Result<()> {
        self.inner.submit()
    }

    fn reap<F: FnMut(u64, i32)>(&mut self, mut f: F) -> usize {
        let n = self.failed.len();
        for (tag, res) in self.failed.drain(..) {
            f(tag, res);
        }
        n + self.inner.reap(f)
    }

    fn park(&mut self, wake: &Arc<WakeFd>) -> io::Result<()> {
        if !self.failed.is_empty() {
            return Ok(());
        }
        self.inner.park(wake)
    }

    fn in_flight(&self) -> usize {
        self.inner.in_flight() + self.failed.len()
    }

    fn registrar(&mut self) -> Option<&mut dyn crate::host::fixed::Registrar> {
        self.inner.registrar()
    }
}
