//! Waking a parked poller: an eventfd the poller waits on, and the
//! process-mode [`Doorbell`] that signals it. And the other direction, in
//! process mode: a driver thread waiting for a completion sleeps on a
//! [`CompletionWaker`] the poller signals when it posts one (the mirror of
//! io_uring's `IORING_SQ_NEED_WAKEUP`: the sleeper sets a flag, the other
//! side checks it after publishing and wakes it with one call), so a waiter
//! never spins against the thread it waits for.
//!
//! The VMM signals the same eventfd when the guest's doorbell exit arrives
//! (directly with [`WakeFd::wake`], or by registering [`WakeFd::raw_fd`] as a
//! KVM ioeventfd for the doorbell port).

use crate::driver::Doorbell;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// An eventfd that wakes a parked poller.
#[derive(Debug)]
pub struct WakeFd {
    fd: OwnedFd,
}

impl WakeFd {
    /// A new eventfd with count 0.
    pub fn new() -> io::Result<WakeFd> {
        // SAFETY: plain syscall; the result is checked before use.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a fresh descriptor nobody else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(WakeFd { fd })
    }

    /// Wakes the poller (adds 1 to the count).
    pub fn wake(&self) {
        let one = 1u64.to_ne_bytes();
        // SAFETY: writes 8 bytes from a live buffer to our eventfd. It can
        // only fail when the count would overflow, in which case the poller
        // is woken anyway.
        unsafe { libc::write(self.fd.as_raw_fd(), one.as_ptr().cast(), 8) };
    }

    /// Blocks until the count is non-zero and resets it.
    pub fn wait(&self) -> io::Result<u64> {
        let mut buf = [0u8; 8];
        loop {
            // SAFETY: reads 8 bytes into a live buffer from our eventfd.
            let n = unsafe { libc::read(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), 8) };
            if n == 8 {
                return Ok(u64::from_ne_bytes(buf));
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }

    /// The descriptor (for io_uring or a KVM ioeventfd).
    pub fn raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

/// The process-mode real doorbell: signals the poller's eventfd.
#[derive(Clone, Debug)]
pub struct EventFdDoorbell(pub Arc<WakeFd>);

impl Doorbell for EventFdDoorbell {
    fn ring(&self) {
        self.0.wake();
    }
}

/// How a driver thread sleeps until the poller posts a completion on its
/// queue pair: it raises `sleeping`, checks the completion ring once more,
/// and blocks on the eventfd; the poller, after posting a completion,
/// lowers `sleeping` and signals the eventfd if it was raised. Both sides
/// use sequentially consistent read-modify-writes (Dekker): either the
/// poller sees the flag, or the sleeper sees the completion.
#[derive(Debug)]
pub struct CompletionWaker {
    sleeping: AtomicBool,
    fd: WakeFd,
}

impl CompletionWaker {
    /// A waker nobody sleeps on yet.
    pub fn new() -> io::Result<CompletionWaker> {
        Ok(CompletionWaker {
            sleeping: AtomicBool::new(false),
            fd: WakeFd::new()?,
        })
    }

    /// The driver's side: sleeps until the poller posts a completion,
    /// unless `ready` (a completion is in the ring) already holds after the
    /// flag is raised. Returns whether it slept.
    pub fn sleep_unless(&self, ready: impl Fn() -> bool) -> bool {
        self.sleeping.swap(true, Ordering::SeqCst);
        if ready() {
            self.sleeping.store(false, Ordering::SeqCst);
            return false;
        }
        // A wake-up from an earlier round may still be counted: it only
        // makes this wait return early, and the caller polls again.
        if let Err(e) = self.fd.wait() {
            log::error!("nvme: waiting for a completion failed: {e}");
        }
        self.sleeping.store(false, Ordering::SeqCst);
        true
    }

    /// The poller's side, after posting a completion: wakes the driver if
    /// it sleeps (one atomic operation otherwise).
    pub fn notify(&self) {
        if self.sleeping.swap(false, Ordering::SeqCst) {
            self.fd.wake();
        }
    }
}
