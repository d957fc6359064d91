//! Owns periodic saves (`--save-every SECONDS`): a thread that starts a
//! background save every interval when keys changed since the last save,
//! as Redis's `save <seconds> 1`.

use super::MemoryEngine;
use crate::server::engine::KvEngine;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The periodic-save thread; dropping it stops the thread (a save it
/// started runs to its end).
#[derive(Debug)]
pub struct PeriodicSaves {
    stop: Arc<(Mutex<bool>, Condvar)>,
    thread: Option<JoinHandle<()>>,
}

impl PeriodicSaves {
    pub(super) fn start(engine: MemoryEngine, every: Duration) -> PeriodicSaves {
        let stop = Arc::new((Mutex::new(false), Condvar::new()));
        let flag = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name("memory-periodic-save".into())
            .spawn(move || run(&engine, every, &flag))
            .map_err(|e| log::error!("memory engine: starting periodic saves: {e}"))
            .ok();
        PeriodicSaves { stop, thread }
    }
}

fn run(engine: &MemoryEngine, every: Duration, stop: &(Mutex<bool>, Condvar)) {
    let (flag, cv) = stop;
    let mut next = Instant::now() + every;
    loop {
        let mut stopped = flag.lock().unwrap_or_else(|e| e.into_inner());
        while !*stopped {
            let now = Instant::now();
            if now >= next {
                break;
            }
            stopped = cv
                .wait_timeout(stopped, next - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        if *stopped {
            return;
        }
        drop(stopped);
        next = Instant::now() + every;
        let status = engine.save_status();
        if status.changes_since_save == 0 || status.in_progress {
            continue;
        }
        if let Err(e) = engine.bgsave() {
            log::warn!("memory engine: periodic save not started: {e}");
        }
    }
}

impl Drop for PeriodicSaves {
    fn drop(&mut self) {
        let (flag, cv) = &*self.stop;
        *flag.lock().unwrap_or_else(|e| e.into_inner()) = true;
        cv.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
