//! A synchronous backend: `pread`, `pwrite`, `pwritev2(RWF_DSYNC)` and
//! `fdatasync`, issued by the poller thread itself at submit time.
//!
//! It is the fallback where io_uring is unavailable, and a deterministic
//! base for tests (it can report a batch's completions in reverse order).

use super::backend::{Backend, IoKind, IoOp};
use super::file::BackingFile;
use super::wake::WakeFd;
use std::collections::VecDeque;
use std::fs::File;
use std::io;
use std::os::unix::io::AsRawFd;
use std::sync::Arc;
use std::vec::Vec;

/// The bookkeeping of a backend that carries out operations synchronously,
/// at submit time: what was pushed and not yet submitted, and the results
/// not yet reaped. Shared by [`SyncBackend`] and the power-cut test backend.
#[derive(Default)]
pub(super) struct Inline {
    queued: Vec<(IoOp, u64)>,
    done: VecDeque<(u64, i32)>,
}

impl Inline {
    pub(super) fn push(&mut self, op: &IoOp, tag: u64) -> bool {
        self.queued.push((*op, tag));
        true
    }

    /// Executes the queued operations in order with `execute`; their
    /// results are reaped in that order, or reversed with `reverse`.
    pub(super) fn submit(&mut self, mut execute: impl FnMut(&IoOp) -> i32, reverse: bool) {
        let results: Vec<(u64, i32)> = self
            .queued
            .drain(..)
            .map(|(op, tag)| (tag, execute(&op)))
            .collect();
        if reverse {
            self.done.extend(results.into_iter().rev());
        } else {
            self.done.extend(results);
        }
    }

    pub(super) fn reap<F: FnMut(u64, i32)>(&mut self, mut f: F) -> usize {
        let n = self.done.len();
        for (tag, res) in self.done.drain(..) {
            f(tag, res);
        }
        n
    }

    pub(super) fn park(&mut self, wake: &Arc<WakeFd>) -> io::Result<()> {
        if self.in_flight() > 0 {
            return Ok(());
        }
        wake.wait().map(|_| ())
    }

    pub(super) fn in_flight(&self) -> usize {
        self.queued.len() + self.done.len()
    }
}

/// Carries out operations with plain syscalls.
pub struct SyncBackend {
    file: File,
    blocks: u64,
    ops: Inline,
    reverse: bool,
}

impl SyncBackend {
    /// A backend on `file`.
    pub fn new(file: &BackingFile) -> io::Result<SyncBackend> {
        Ok(SyncBackend {
            file: file.file().try_clone()?,
            blocks: file.blocks(),
            ops: Inline::default(),
            reverse: false,
        })
    }

    /// Reports the operations of each submitted batch in reverse order.
    pub fn reverse_completions(mut self, reverse: bool) -> SyncBackend {
        self.reverse = reverse;
        self
    }
}

/// Carries out `op` on `file` with one syscall; the result or -errno.
fn execute(file: &File, op: &IoOp) -> i32 {
    let fd = file.as_raw_fd();
    let (ptr, len, off) = (op.buf.ptr, op.buf.len as usize, op.offset as libc::off_t);
    // SAFETY: the poller checked that the buffer lies in the served
    // memory, which stays mapped while the poller runs.
    let rc = unsafe {
        match op.kind {
            IoKind::Read => libc::pread(fd, ptr.cast(), len, off),
            IoKind::Write { fua: false } => libc::pwrite(fd, ptr.cast(), len, off),
            IoKind::Write { fua: true } => {
                let iov = libc::iovec {
                    iov_base: ptr.cast(),
                    iov_len: len,
                };
                libc::pwritev2(fd, &iov, 1, off, libc::RWF_DSYNC)
            }
            IoKind::Flush => libc::fdatasync(fd) as isize,
        }
    };
    if rc < 0 {
        -io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::EIO)
    } else {
        rc as i32
    }
}

impl Backend for SyncBackend {
    fn capacity_blocks(&self) -> u64 {
        self.blocks
    }

    fn room(&self) -> usize {
        usize::MAX / 2
    }

    fn push(&mut self, op: &IoOp, tag: u64) -> bool {
        self.ops.push(op, tag)
    }

    fn submit(&mut self) -> io::Result<()> {
        let SyncBackend {
            file, ops, reverse, ..
        } = self;
        ops.submit(|op| execute(file, op), *reverse);
        Ok(())
    }

    fn reap<F: FnMut(u64, i32)>(&mut self, f: F) -> usize {
        self.ops.reap(f)
    }

    fn park(&mut self, wake: &Arc<WakeFd>) -> io::Result<()> {
        self.ops.park(wake)
    }

    fn in_flight(&self) -> usize {
        self.ops.in_flight()
    }
}
