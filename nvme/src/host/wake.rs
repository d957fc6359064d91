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
//!
//! Both sides spin before they sleep, for a [`SpinBudget`] measured against
//! how long their waits take: long enough to catch a completion the device
//! is about to deliver when the CPUs are free (a sleep and a wake-up cost
//! more than the spin), short when waits run long (the other side is not
//! getting a CPU, and spinning would take the one it needs).

use crate::driver::Doorbell;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

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

/// How long to spin before sleeping, adapted to the waits it serves: after
/// each wait, [`SpinBudget::record`] moves the budget a quarter of the way
/// towards 1.25x the wait's length if that is at most `max` (a spin of that
/// length would have caught it), or towards `min` if the wait ran longer
/// (spinning would not have paid, and a wait that long usually means the
/// other side is short of CPU). Quiet, with a device answering in 50 us,
/// the budget settles near 62 us and waits end in the spin; when other work
/// takes the CPUs, waits stretch past `max` and the budget falls to `min`.
#[derive(Debug)]
pub struct SpinBudget {
    ns: AtomicU64,
    min: u64,
    max: u64,
}

impl SpinBudget {
    /// A budget between `min` and `max`, starting at `min`.
    pub fn new(min: Duration, max: Duration) -> SpinBudget {
        let min = min.as_nanos() as u64;
        let max = (max.as_nanos() as u64).max(min);
        SpinBudget {
            ns: AtomicU64::new(min),
            min,
            max,
        }
    }

    /// The spin to do now.
    pub fn get(&self) -> Duration {
        Duration::from_nanos(self.ns.load(Ordering::Relaxed))
    }

    /// Adapts to a wait that took `waited` in all (spin and sleep).
    pub fn record(&self, waited: Duration) {
        let w = waited.as_nanos().min(u64::MAX as u128) as u64;
        let target = if w <= self.max {
            (w + w / 4).clamp(self.min, self.max)
        } else {
            self.min
        };
        let cur = self.ns.load(Ordering::Relaxed);
        // A quarter of the way, rounded away from `cur` so it arrives.
        let next = if cur > target {
            cur - (cur - target).div_ceil(4)
        } else {
            cur + (target - cur).div_ceil(4)
        };
        self.ns
            .store(next.clamp(self.min, self.max), Ordering::Relaxed);
    }
}

#[cfg(test)]
mod spin_tests {
    use super::*;

    fn us(n: u64) -> Duration {
        Duration::from_micros(n)
    }

    #[test]
    fn the_budget_settles_just_above_a_steady_wait() {
        let b = SpinBudget::new(us(20), us(200));
        assert_eq!(b.get(), us(20));
        for _ in 0..64 {
            b.record(us(50));
        }
        // 1.25 x 50 us, give or take the last step's rounding.
        let got = b.get().as_nanos() as i128;
        assert!((got - 62_500).abs() < 500, "{got}");
    }

    #[test]
    fn long_waits_bring_the_budget_down_to_its_minimum() {
        let b = SpinBudget::new(us(20), us(200));
        for _ in 0..64 {
            b.record(us(150));
        }
        assert_eq!(b.get(), us(187) + Duration::from_nanos(500));
        // The other side is short of CPU: waits of milliseconds.
        for _ in 0..64 {
            b.record(us(3000));
        }
        assert_eq!(b.get(), us(20));
        // Waits shorter than the minimum keep it there.
        for _ in 0..8 {
            b.record(us(1));
        }
        assert_eq!(b.get(), us(20));
    }

    #[test]
    fn the_budget_never_leaves_its_bounds() {
        let b = SpinBudget::new(us(20), us(200));
        for w in [0, 5, 199, 200, 201, 10_000, 160, 170, 180, 190] {
            for _ in 0..32 {
                b.record(us(w));
                assert!(b.get() >= us(20) && b.get() <= us(200), "{:?}", b.get());
            }
        }
        // max below min is taken as min.
        let b = SpinBudget::new(us(20), us(10));
        b.record(us(15));
        assert_eq!(b.get(), us(20));
    }
}
