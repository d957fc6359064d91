//! A competing load started by a benchmark itself (`--background-load N`):
//! N threads of pure computation, so that a comparison can be run on a
//! shared machine in the same command as on a quiet one. A design that
//! needs a core of its own (a poller spinning, a waiter spinning on
//! `sched_yield`) shows what it costs when it does not get one.

use std::hint::black_box;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

/// Busy threads; they stop and are joined when this is dropped.
pub struct BackgroundLoad {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<u64>>,
}

impl BackgroundLoad {
    /// Starts `threads` busy threads (none for 0).
    pub fn start(threads: usize) -> BackgroundLoad {
        let stop = Arc::new(AtomicBool::new(false));
        let threads = (0..threads)
            .map(|i| {
                let stop = stop.clone();
                std::thread::Builder::new()
                    .name(format!("background-load-{i}"))
                    .spawn(move || spin(&stop, i as u64 + 1))
                    .expect("starting a background-load thread")
            })
            .collect();
        BackgroundLoad { stop, threads }
    }

    /// Threads running.
    pub fn threads(&self) -> usize {
        self.threads.len()
    }
}

/// xorshift64 until told to stop: integer work, no memory traffic to speak
/// of, no system calls.
fn spin(stop: &AtomicBool, seed: u64) -> u64 {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    while !stop.load(Ordering::Relaxed) {
        for _ in 0..4096 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
        }
        black_box(x);
    }
    x
}

impl Drop for BackgroundLoad {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}
