//! CPUs of the process platform: a persistent pool of worker threads, one
//! per configured CPU.
//!
//! Worker `i` is CPU `i`: it records its index in a thread-local, so
//! `cpu_id` is one thread-local read. Every other thread (the one that
//! created the platform, test threads, ...) is **CPU 0** for that platform:
//! its calls are counted as CPU 0's and its faults report `cpu = 0`.
//!
//! `Pool::run_on_all` hands a closure to every worker at once and waits
//! until all have returned (calls from several threads take turns; a call
//! from inside a worker would wait for itself and panics instead). The
//! workers stay alive between calls, blocked on a condition variable, so they
//! can receive IPIs (signals) at any time. When the configured CPU count is
//! at most the number of CPUs the process may run on, worker `i` is pinned to
//! the `i`-th of them (`sched_setaffinity`), otherwise the workers float.

use super::last_errno;
use crate::platform::Error;
use core::cell::Cell;
use std::string::String;
use std::sync::{Arc, Condvar, Mutex};
use std::vec::Vec;

std::thread_local! {
    /// `(platform id, cpu index)` of a worker thread; `(0, 0)` elsewhere.
    /// Const-initialised, so reading it is async-signal-safe.
    static CURRENT: Cell<(usize, usize)> = const { Cell::new((0, 0)) };
}

/// The calling thread's CPU index for platform `platform` (0 on threads that
/// are not its workers). Async-signal-safe.
#[inline]
pub(crate) fn cpu_id(platform: usize) -> usize {
    let (p, cpu) = CURRENT.with(Cell::get);
    if p == platform {
        cpu
    } else {
        0
    }
}

/// The closure of a `run_on_all` call, with its lifetime erased.
#[derive(Clone, Copy)]
struct Job(*const (dyn Fn(usize) + Sync + 'static));

// SAFETY: the closure is `Sync`, and `run_on_all` keeps it alive until every
// worker is done with it.
unsafe impl Send for Job {}

struct State {
    generation: u64,
    job: Option<Job>,
    pending: usize,
    panic: Option<String>,
}

struct Shared {
    state: Mutex<State>,
    start: Condvar,
    done: Condvar,
}

/// A worker thread as seen from outside: its `pthread_t` (the target of its
/// IPIs).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Worker {
    pub(crate) pthread: libc::pthread_t,
}

/// The worker threads of one platform.
pub(crate) struct Pool {
    shared: Arc<Shared>,
    workers: Vec<Worker>,
    /// Serialises `run_on_all` calls.
    turn: Mutex<()>,
    platform: usize,
}

impl Pool {
    /// Starts `n` workers for platform `platform`, pinned if `pin` and there
    /// are enough CPUs.
    pub(crate) fn start(platform: usize, n: usize, pin: bool) -> Result<Pool, Error> {
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                generation: 0,
                job: None,
                pending: 0,
                panic: None,
            }),
            start: Condvar::new(),
            done: Condvar::new(),
        });
        let cpus = if pin { allowed_cpus() } else { Vec::new() };
        let pin_to = |i: usize| (cpus.len() >= n).then(|| cpus[i]);
        let (tx, rx) = std::sync::mpsc::channel::<(usize, Worker)>();
        for i in 0..n {
            let shared = Arc::clone(&shared);
            let tx = tx.clone();
            let core = pin_to(i);
            std::thread::Builder::new()
                .name(std::format!("dbos-cpu{i}"))
                .spawn(move || {
                    CURRENT.with(|c| c.set((platform, i)));
                    if let Some(core) = core {
                        if let Err(e) = pin_current(core) {
                            log::warn!("dbos cpu {i}: cannot pin to core {core}: {e}");
                        }
                    }
                    let _ = tx.send((
                        i,
                        Worker {
                            pthread: current_pthread(),
                        },
                    ));
                    drop(tx);
                    worker_loop(&shared, i);
                })
                .map_err(|e| Error::Os("pthread_create", e.raw_os_error().unwrap_or(0)))?;
        }
        drop(tx);
        // Workers report in any order.
        let mut slots: Vec<Option<Worker>> = std::vec![None; n];
        for _ in 0..n {
            let (i, w) = rx
                .recv()
                .map_err(|_| Error::Os("pthread_create", libc::EAGAIN))?;
            slots[i] = Some(w);
        }
        let workers = slots.into_iter().flatten().collect();
        Ok(Pool {
            shared,
            workers,
            turn: Mutex::new(()),
            platform,
        })
    }

    /// Number of workers.
    pub(crate) fn len(&self) -> usize {
        self.workers.len()
    }

    /// Worker `cpu`.
    pub(crate) fn worker(&self, cpu: usize) -> Option<Worker> {
        self.workers.get(cpu).copied()
    }

    /// Runs `f(i)` on every worker `i` concurrently and waits for all. A panic
    /// in `f` is re-raised here after every worker has finished.
    pub(crate) fn run_on_all(&self, f: &(dyn Fn(usize) + Sync)) {
        let (p, _) = CURRENT.with(Cell::get);
        assert!(
            p != self.platform,
            "run_on_all called from one of the platform's own CPUs (it would wait for itself)"
        );
        let _turn = self.turn.lock().unwrap_or_else(|e| e.into_inner());
        // SAFETY: only the lifetime is erased; this function does not return
        // before every worker has finished with the closure (`pending == 0`).
        let job: Job =
            unsafe { core::mem::transmute::<*const (dyn Fn(usize) + Sync + '_), Job>(f) };
        let mut s = self.shared.state.lock().unwrap_or_else(|e| e.into_inner());
        s.generation += 1;
        s.job = Some(job);
        s.pending = self.workers.len();
        self.shared.start.notify_all();
        while s.pending > 0 {
            s = self.shared.done.wait(s).unwrap_or_else(|e| e.into_inner());
        }
        s.job = None;
        if let Some(msg) = s.panic.take() {
            drop(s);
            panic!("run_on_all: a CPU panicked: {msg}");
        }
    }
}

fn worker_loop(shared: &Shared, cpu: usize) {
    let mut seen = 0u64;
    loop {
        let job = {
            let mut s = shared.state.lock().unwrap_or_else(|e| e.into_inner());
            while s.generation == seen {
                s = shared.start.wait(s).unwrap_or_else(|e| e.into_inner());
            }
            seen = s.generation;
            s.job
        };
        let mut panic = None;
        if let Some(Job(f)) = job {
            // SAFETY: `run_on_all` keeps the closure alive until `pending`
            // drops to 0, which happens only after this call returns.
            let f = unsafe { &*f };
            if let Err(e) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(cpu))) {
                panic = Some(panic_message(&*e));
            }
        }
        let mut s = shared.state.lock().unwrap_or_else(|e| e.into_inner());
        if panic.is_some() && s.panic.is_none() {
            s.panic = panic;
        }
        s.pending -= 1;
        if s.pending == 0 {
            shared.done.notify_all();
        }
    }
}

fn panic_message(e: &(dyn core::any::Any + Send)) -> String {
    if let Some(s) = e.downcast_ref::<&str>() {
        String::from(*s)
    } else if let Some(s) = e.downcast_ref::<String>() {
        s.clone()
    } else {
        String::from("(non-string panic payload)")
    }
}

fn current_pthread() -> libc::pthread_t {
    // SAFETY: pthread_self has no preconditions.
    unsafe { libc::pthread_self() }
}

/// The CPUs this process may run on, in order.
fn allowed_cpus() -> Vec<usize> {
    // SAFETY: an all-zero cpu_set_t is a valid empty set.
    let mut set: libc::cpu_set_t = unsafe { core::mem::zeroed() };
    // SAFETY: `set` is a valid cpu_set_t of the size passed.
    let r =
        unsafe { libc::sched_getaffinity(0, core::mem::size_of::<libc::cpu_set_t>(), &mut set) };
    if r != 0 {
        return Vec::new();
    }
    (0..libc::CPU_SETSIZE as usize)
        // SAFETY: `i` is below CPU_SETSIZE.
        .filter(|&i| unsafe { libc::CPU_ISSET(i, &set) })
        .collect()
}

/// Pins the calling thread to `core`.
fn pin_current(core: usize) -> Result<(), Error> {
    // SAFETY: an all-zero cpu_set_t is a valid empty set.
    let mut set: libc::cpu_set_t = unsafe { core::mem::zeroed() };
    // SAFETY: `core` comes from `allowed_cpus`, below CPU_SETSIZE.
    unsafe { libc::CPU_SET(core, &mut set) };
    // SAFETY: `set` is a valid cpu_set_t of the size passed; 0 is this thread.
    let r = unsafe { libc::sched_setaffinity(0, core::mem::size_of::<libc::cpu_set_t>(), &set) };
    if r != 0 {
        return Err(Error::Os("sched_setaffinity", last_errno()));
    }
    Ok(())
}
