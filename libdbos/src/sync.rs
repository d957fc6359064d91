//! Synchronisation for ring 0, where there is no scheduler to block in: a
//! spin lock and a barrier (from the `spin` crate), usable in the guest and in
//! a process alike.
//!
//! In the guest, do not hold a [`SpinLock`] that an interrupt hook (timer,
//! IPI, page fault) on the same CPU may also take, unless interrupts are
//! disabled while it is held: the hook would spin forever on its own CPU.

/// A spin lock protecting a `T`.
pub type SpinLock<T> = spin::Mutex<T>;

/// A barrier for a fixed number of CPUs: each `wait` spins until all have
/// arrived; exactly one caller per round is told it is the leader.
pub type Barrier = spin::Barrier;

#[cfg(all(test, not(target_os = "none")))]
mod tests {
    extern crate std;
    use super::*;
    use core::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn barrier_releases_all_with_one_leader() {
        static ARRIVED: AtomicUsize = AtomicUsize::new(0);
        static LEADERS: AtomicUsize = AtomicUsize::new(0);
        let barrier = std::sync::Arc::new(Barrier::new(3));
        let threads: std::vec::Vec<_> = (0..3)
            .map(|_| {
                let b = barrier.clone();
                std::thread::spawn(move || {
                    ARRIVED.fetch_add(1, Ordering::SeqCst);
                    let leader = b.wait().is_leader();
                    // Nobody passes before all three arrived.
                    assert_eq!(ARRIVED.load(Ordering::SeqCst), 3);
                    if leader {
                        LEADERS.fetch_add(1, Ordering::SeqCst);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(LEADERS.load(Ordering::SeqCst), 1);
        let lock = SpinLock::new(5);
        *lock.lock() += 1;
        assert_eq!(*lock.lock(), 6);
    }
}
