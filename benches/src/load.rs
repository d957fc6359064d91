//! A competing load started by a benchmark itself (`--background-load N`):
//! N busy threads of pure computation, so that a comparison can be run on
//! a shared machine in the same command as on a quiet one. A design that
//! needs a core of its own (a poller spinning, a waiter spinning on
//! `sched_yield`) shows what it costs when it does not get one.
//!
//! Each busy thread is a process of its own (`sh -c 'while :; do :; done'`:
//! no system calls, no memory traffic to speak of), as other work on a
//! shared server is: a thread inside the measured process would share its
//! address space, so every TLB shootdown the measured code causes (a pool's
//! `madvise(MADV_DONTNEED)`) would interrupt the load's CPU too and the
//! load would slow the measured process in a way other programs do not.
//! The processes die with the thread that started them (`dies_with_parent`)
//! and are killed when this is dropped.

use crate::child::dies_with_parent;
use std::process::{Child, Command, Stdio};

/// Busy processes; killed and reaped when this is dropped.
pub struct BackgroundLoad {
    children: Vec<Child>,
}

impl BackgroundLoad {
    /// Starts `busy` busy processes (none for 0).
    ///
    /// # Panics
    /// If `sh` cannot be started (every Linux system has it).
    pub fn start(busy: usize) -> BackgroundLoad {
        let children = (0..busy)
            .map(|_| {
                dies_with_parent(Command::new("sh").args(["-c", "while :; do :; done"]))
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .expect("starting a background-load process (sh)")
            })
            .collect();
        BackgroundLoad { children }
    }

    /// Busy processes running.
    pub fn threads(&self) -> usize {
        self.children.len()
    }

    /// CPU seconds the busy processes have used so far (user and system,
    /// from `/proc/PID/stat`).
    pub fn cpu_seconds(&self) -> f64 {
        // SAFETY: sysconf reads a constant; no memory is passed.
        let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
        self.children
            .iter()
            .filter_map(|c| std::fs::read_to_string(format!("/proc/{}/stat", c.id())).ok())
            .filter_map(|stat| {
                // Fields after the command name (which may hold spaces):
                // utime and stime are the 12th and 13th of them.
                let rest = stat.rsplit_once(')')?.1;
                let f: Vec<&str> = rest.split_whitespace().collect();
                Some(f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?)
            })
            .sum::<f64>()
            / ticks
    }
}

impl Drop for BackgroundLoad {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    /// Two busy processes use about two CPUs' worth of time (at least one
    /// between them on a machine with one core), are separate processes,
    /// and are gone once the load is dropped.
    #[test]
    fn busy_processes_burn_cpu_and_end_with_the_load() {
        let load = BackgroundLoad::start(2);
        assert_eq!(load.threads(), 2);
        let pids: Vec<u32> = load.children.iter().map(|c| c.id()).collect();
        assert!(pids.iter().all(|&p| p != std::process::id()));
        let start = Instant::now();
        std::thread::sleep(Duration::from_millis(600));
        let used = load.cpu_seconds();
        let wall = start.elapsed().as_secs_f64();
        assert!(
            used > 0.5 * wall && used < 2.5 * wall,
            "{used:.2} CPU s in {wall:.2} s"
        );
        drop(load);
        for p in pids {
            // Reaped: no /proc entry (or, were the pid reused, not ours).
            let stat = std::fs::read_to_string(format!("/proc/{p}/stat")).unwrap_or_default();
            assert!(!stat.contains("(sh)"), "{stat}");
        }
        assert_eq!(BackgroundLoad::start(0).threads(), 0);
    }
}
