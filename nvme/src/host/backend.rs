//! The I/O submission path behind the poller, as a trait.
//!
//! The poller turns each valid command into [`IoOp`]s and hands them to a
//! [`Backend`]: [`crate::host::uring::UringBackend`] in production,
//! [`crate::host::sync::SyncBackend`] where io_uring is unavailable, and
//! `crate::host::testing::InspectBackend` (feature `test-backends`) around
//! either to record or fail operations in tests. The poller is generic over
//! the backend, so the real path pays no dynamic dispatch.

use super::fixed::Registrar;
use super::memory::HostBuf;
use super::wake::WakeFd;
use crate::status::{NvmeError, Status};
use std::io;
use std::sync::Arc;

/// What one operation does on the backing file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum IoKind {
    /// `pread` into the buffer.
    Read,
    /// `pwrite` from the buffer; with `fua`, a `RWF_DSYNC` write.
    Write { fua: bool },
    /// `fdatasync`.
    Flush,
}

/// Which operations a fault applies to (the test backends' fault
/// injection).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpMatch {
    Read,
    /// Any write, with or without FUA.
    Write,
    Flush,
}

impl OpMatch {
    /// Whether an operation of `kind` is one of these.
    pub fn matches(self, kind: IoKind) -> bool {
        matches!(
            (self, kind),
            (OpMatch::Read, IoKind::Read)
                | (OpMatch::Write, IoKind::Write { .. })
                | (OpMatch::Flush, IoKind::Flush)
        )
    }
}

/// One operation on the backing file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IoOp {
    pub kind: IoKind,
    /// Byte offset in the file (0 for flush).
    pub offset: u64,
    /// The data (length 0 for flush).
    pub buf: HostBuf,
}

/// A way of carrying out [`IoOp`]s asynchronously.
///
/// Operations are pushed with a tag, handed to the kernel by
/// [`Backend::submit`], and reported back by [`Backend::reap`] with the tag
/// and the syscall result (bytes moved, or a negated errno).
pub trait Backend: Send {
    /// Capacity of the backing file in 4 KiB blocks.
    fn capacity_blocks(&self) -> u64;

    /// How many more operations [`Backend::push`] accepts now.
    fn room(&self) -> usize;

    /// Queues an operation; `false` if there is no room (the caller checks
    /// [`Backend::room`] first).
    fn push(&mut self, op: &IoOp, tag: u64) -> bool;

    /// Hands queued operations to the kernel without waiting.
    fn submit(&mut self) -> io::Result<()>;

    /// Reports every finished operation as `f(tag, result)`; returns how many.
    fn reap<F: FnMut(u64, i32)>(&mut self, f: F) -> usize;

    /// Blocks until an operation has finished or `wake` is signalled.
    fn park(&mut self, wake: &Arc<WakeFd>) -> io::Result<()>;

    /// Operations pushed and not yet reaped.
    fn in_flight(&self) -> usize;

    /// How the backend registers declared DMA regions as fixed buffers;
    /// `None` (the default) for a backend without fixed buffers, which
    /// refuses every declaration.
    fn registrar(&mut self) -> Option<&mut dyn Registrar> {
        None
    }
}

/// Why a backend failed an operation on purpose: a model of a failure
/// (crash injection), not an error of the host's disk. A backend reports
/// such a failure with [`simulated_failure`], so that the poller names it
/// for what it is instead of logging it as a disk error.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Simulated {
    /// The power is cut (`host::powercut`): the operation never completes.
    PowerCut,
    /// A fault injected by a test (`PowerCut::fail`).
    Fault,
}

/// The bit of a negated result that marks a [`Simulated::PowerCut`]
/// failure, and that of a [`Simulated::Fault`]. Errno values are below
/// 4096, so neither can be mistaken for one.
const SIMULATED_POWER_CUT: i32 = 1 << 24;
const SIMULATED_FAULT: i32 = 1 << 25;

/// The result a backend reports for an operation it fails on purpose with
/// `errno` (`why` says which model failed it). [`split_result`] takes it
/// apart again; the guest sees the status `errno` maps to.
pub const fn simulated_failure(why: Simulated, errno: i32) -> i32 {
    let bit = match why {
        Simulated::PowerCut => SIMULATED_POWER_CUT,
        Simulated::Fault => SIMULATED_FAULT,
    };
    -(errno | bit)
}

/// A backend's result as the syscall result it stands for (bytes, or a
/// negated errno) and, for a failure made by [`simulated_failure`], which
/// model made it.
pub const fn split_result(result: i32) -> (i32, Option<Simulated>) {
    if result >= 0 {
        return (result, None);
    }
    let raw = -result;
    let why = if raw & SIMULATED_POWER_CUT != 0 {
        Some(Simulated::PowerCut)
    } else if raw & SIMULATED_FAULT != 0 {
        Some(Simulated::Fault)
    } else {
        None
    };
    (-(raw & !(SIMULATED_POWER_CUT | SIMULATED_FAULT)), why)
}

/// The completion status for an operation of `kind` that expected to move
/// `expected` bytes and returned `result` (bytes, a negated errno, or a
/// [`simulated_failure`]). A real failure is logged as a warning; a
/// simulated one only at debug level, named as what it is (the power-cut
/// report or the test says what happened).
pub fn status_for(kind: IoKind, result: i32, expected: u32) -> Status {
    let (result, simulated) = split_result(result);
    let err = match (kind, result) {
        (IoKind::Flush, r) if r >= 0 => return Status::SUCCESS,
        (_, r) if r >= 0 && r as u32 == expected => return Status::SUCCESS,
        (_, r) if r >= 0 => NvmeError::DataTransferError,
        (IoKind::Read, r) if r == -libc::EIO => NvmeError::UnrecoveredReadError,
        (_, r) if r == -libc::EIO => NvmeError::WriteFault,
        (_, r) if r == -libc::ENOSPC || r == -libc::EDQUOT => NvmeError::CapacityExceeded,
        _ => NvmeError::InternalError,
    };
    match simulated {
        Some(Simulated::PowerCut) => log::debug!(
            "nvme: {kind:?} not completed: the power is off (a simulated power cut, not a \
             disk error)"
        ),
        Some(Simulated::Fault) => log::debug!(
            "nvme: {kind:?} failed by an injected fault: {}",
            io::Error::from_raw_os_error(-result)
        ),
        None if result < 0 => log::warn!(
            "nvme: {kind:?} failed: {}",
            io::Error::from_raw_os_error(-result)
        ),
        None => log::warn!("nvme: short {kind:?}: {result} of {expected} bytes"),
    }
    Status::from_error(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errno_mapping() {
        let st = |k, r, e| status_for(k, r, e).error();
        let w = IoKind::Write { fua: false };
        assert_eq!(st(IoKind::Read, 4096, 4096), None);
        assert_eq!(st(IoKind::Flush, 0, 0), None);
        assert_eq!(
            st(IoKind::Read, 2048, 4096),
            Some(NvmeError::DataTransferError)
        );
        assert_eq!(st(w, 0, 4096), Some(NvmeError::DataTransferError));
        assert_eq!(
            st(IoKind::Read, -libc::EIO, 4096),
            Some(NvmeError::UnrecoveredReadError)
        );
        assert_eq!(st(w, -libc::EIO, 4096), Some(NvmeError::WriteFault));
        assert_eq!(
            st(IoKind::Write { fua: true }, -libc::EIO, 4096),
            Some(NvmeError::WriteFault)
        );
        assert_eq!(
            st(IoKind::Flush, -libc::EIO, 0),
            Some(NvmeError::WriteFault)
        );
        assert_eq!(
            st(w, -libc::ENOSPC, 4096),
            Some(NvmeError::CapacityExceeded)
        );
        assert_eq!(
            st(IoKind::Flush, -libc::ENOSPC, 0),
            Some(NvmeError::CapacityExceeded)
        );
        assert_eq!(
            st(w, -libc::EDQUOT, 4096),
            Some(NvmeError::CapacityExceeded)
        );
        assert_eq!(
            st(IoKind::Read, -libc::EINVAL, 4096),
            Some(NvmeError::InternalError)
        );
    }

    /// A simulated failure maps to the status of its errno and splits back
    /// into it; plain results pass through unchanged.
    #[test]
    fn simulated_failures_round_trip() {
        for why in [Simulated::PowerCut, Simulated::Fault] {
            for errno in [libc::EIO, libc::ENOSPC, libc::EINVAL, 4095] {
                let r = simulated_failure(why, errno);
                assert!(r < 0);
                assert_eq!(split_result(r), (-errno, Some(why)));
            }
            let r = simulated_failure(why, libc::EIO);
            let w = IoKind::Write { fua: true };
            assert_eq!(status_for(w, r, 4096).error(), Some(NvmeError::WriteFault));
            assert_eq!(
                status_for(IoKind::Read, r, 4096).error(),
                Some(NvmeError::UnrecoveredReadError)
            );
        }
        for r in [0, 4096, i32::MAX, -libc::EIO, -4095] {
            assert_eq!(split_result(r), (r, None));
        }
    }
}
