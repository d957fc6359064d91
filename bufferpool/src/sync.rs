//! Spinning primitives for code that runs on vCPUs in ring 0 and on threads
//! in a process: a mutex acquisition that waits with the platform's relax
//! function, and [`Gate`], a reader-writer gate with writer priority that
//! lets a checkpoint fence off transactions for a moment.

use core::sync::atomic::{AtomicU64, Ordering};
use spin::{Mutex, MutexGuard};

/// Locks `m`, calling `relax` while it is held by someone else.
pub fn lock<T>(m: &Mutex<T>, relax: fn()) -> MutexGuard<'_, T> {
    loop {
        if let Some(g) = m.try_lock() {
            return g;
        }
        while m.is_locked() {
            relax();
        }
    }
}

const WRITER: u64 = 1 << 63;

/// A reader-writer gate: many readers, or one writer; a waiting writer
/// stops new readers from entering.
#[derive(Debug, Default)]
pub struct Gate {
    state: AtomicU64,
}

/// A reader's pass through a [`Gate`].
pub struct ReadPass<'a>(&'a Gate);

/// The writer's hold on a [`Gate`].
pub struct WritePass<'a>(&'a Gate);

impl Gate {
    /// A gate with nobody inside.
    pub const fn new() -> Gate {
        Gate {
            state: AtomicU64::new(0),
        }
    }

    /// Enters as a reader.
    pub fn read(&self, relax: fn()) -> ReadPass<'_> {
        loop {
            let v = self.state.load(Ordering::Relaxed);
            if v & WRITER == 0
                && self
                    .state
                    .compare_exchange_weak(v, v + 1, Ordering::Acquire, Ordering::Relaxed)
                    .is_ok()
            {
                return ReadPass(self);
            }
            relax();
        }
    }

    /// Enters as the writer, once every reader has left.
    pub fn write(&self, relax: fn()) -> WritePass<'_> {
        loop {
            let v = self.state.load(Ordering::Relaxed);
            if v & WRITER == 0
                && self
                    .state
                    .compare_exchange_weak(v, v | WRITER, Ordering::Acquire, Ordering::Relaxed)
                    .is_ok()
            {
                break;
            }
            relax();
        }
        while self.state.load(Ordering::Acquire) != WRITER {
            relax();
        }
        WritePass(self)
    }
}

impl Drop for ReadPass<'_> {
    fn drop(&mut self) {
        self.0.state.fetch_sub(1, Ordering::Release);
    }
}

impl Drop for WritePass<'_> {
    fn drop(&mut self) {
        self.0.state.fetch_and(!WRITER, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gate_counts_readers_and_excludes_the_writer() {
        let g = Gate::new();
        let a = g.read(core::hint::spin_loop);
        let b = g.read(core::hint::spin_loop);
        assert_eq!(g.state.load(Ordering::Relaxed), 2);
        drop((a, b));
        let w = g.write(core::hint::spin_loop);
        assert_eq!(g.state.load(Ordering::Relaxed), WRITER);
        drop(w);
        assert_eq!(g.state.load(Ordering::Relaxed), 0);
        let m = Mutex::new(5);
        assert_eq!(*lock(&m, core::hint::spin_loop), 5);
    }
}
