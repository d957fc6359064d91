//! Waking a parked poller: an eventfd the poller waits on, and the
//! process-mode [`Doorbell`] that signals it.
//!
//! The VMM signals the same eventfd when the guest's doorbell exit arrives
//! (directly with [`WakeFd::wake`], or by registering [`WakeFd::raw_fd`] as a
//! KVM ioeventfd for the doorbell port).

use crate::driver::Doorbell;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
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
