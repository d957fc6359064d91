//! Timer and inter-processor interrupts of the process platform, as
//! real-time signals.
//!
//! - **Timer**: `Interrupts::set_timer` creates a POSIX timer
//!   (`timer_create(CLOCK_MONOTONIC)` with `SIGEV_THREAD_ID`) that sends
//!   [`timer_signal`] (`SIGRTMIN + 3`) to the calling thread every period;
//!   the handler calls the timer hook with the calling thread's CPU index.
//!   One timer per CPU index: a second `set_timer` on the same CPU re-arms
//!   it (and moves it to the calling thread if another thread with the same
//!   index, such as a non-worker thread for CPU 0, made the first).
//! - **IPI**: `send_ipi` queues [`ipi_signal`] (`SIGRTMIN + 4`)
//!   to the target CPU's worker thread with `pthread_sigqueue`; its handler
//!   calls the IPI hook there. Real-time signals queue, so every IPI sent runs
//!   the hook once. The workers live as long as the platform, so an IPI can
//!   be sent at any time, inside `run_on_all` or not.
//!
//! `SIGRTMIN` itself is left alone (the hypervisor uses it in the VMM
//! process). Both signals carry `(platform id, cpu)` in their value, so the
//! handlers find their platform without locks. While a timer, IPI or fault
//! handler runs, the timer and IPI signals are blocked (as an interrupt gate
//! masks interrupts), so timer and IPI hooks never nest; a timer or IPI hook
//! that touches an unmapped window page enters the fault hook, as a guest
//! interrupt handler may page-fault.
//!
//! `set_timer` and `send_ipi` are not async-signal-safe (`set_timer` takes a
//! lock); hooks must not call them.

use super::{last_errno, platform_by_id};
use crate::hook::HookCell;
use crate::platform::{Error, EventHook};
use std::boxed::Box;
use std::sync::Mutex;
use std::vec::Vec;

/// The signal the timer sends: `SIGRTMIN + 3`.
pub fn timer_signal() -> libc::c_int {
    libc::SIGRTMIN() + 3
}

/// The signal an IPI is: `SIGRTMIN + 4`.
pub fn ipi_signal() -> libc::c_int {
    libc::SIGRTMIN() + 4
}

/// A POSIX timer and the thread it signals.
struct Timer {
    id: libc::timer_t,
    tid: libc::pid_t,
}

// SAFETY: a timer_t is a kernel handle (an id); any thread may arm or delete it.
unsafe impl Send for Timer {}

/// The interrupt state of one platform.
pub(crate) struct Interrupts {
    pub(crate) timer_hook: HookCell<EventHook>,
    pub(crate) ipi_hook: HookCell<EventHook>,
    timers: Box<[Mutex<Option<Timer>>]>,
}

impl Interrupts {
    pub(crate) fn new(cpus: usize) -> Interrupts {
        let timers: Vec<Mutex<Option<Timer>>> = (0..cpus).map(|_| Mutex::new(None)).collect();
        Interrupts {
            timer_hook: HookCell::new(),
            ipi_hook: HookCell::new(),
            timers: timers.into_boxed_slice(),
        }
    }

    /// Starts, re-arms or stops the timer of CPU `cpu` of platform `platform`,
    /// signalling the calling thread.
    pub(crate) fn set_timer(
        &self,
        platform: usize,
        cpu: usize,
        period_us: Option<u64>,
    ) -> Result<(), Error> {
        let mut slot = self.timers[cpu].lock().unwrap_or_else(|e| e.into_inner());
        let Some(period_us) = period_us else {
            if let Some(t) = slot.take() {
                delete_timer(t.id);
            }
            return Ok(());
        };
        if period_us == 0 {
            return Err(Error::Os("timer_settime", libc::EINVAL));
        }
        // SAFETY: gettid has no preconditions.
        let tid = unsafe { libc::gettid() };
        if slot.as_ref().is_some_and(|t| t.tid != tid) {
            if let Some(t) = slot.take() {
                delete_timer(t.id);
            }
        }
        if slot.is_none() {
            *slot = Some(Timer {
                id: create_timer(tid, encode(platform, cpu))?,
                tid,
            });
        }
        let id = slot
            .as_ref()
            .map(|t| t.id)
            .unwrap_or_else(|| unreachable!("set above"));
        let period = libc::timespec {
            tv_sec: (period_us / 1_000_000) as libc::time_t,
            tv_nsec: ((period_us % 1_000_000) * 1000) as libc::c_long,
        };
        let spec = libc::itimerspec {
            it_interval: period,
            it_value: period,
        };
        // SAFETY: `id` is a live timer of ours; `spec` is a valid itimerspec.
        if unsafe { libc::timer_settime(id, 0, &spec, core::ptr::null_mut()) } != 0 {
            return Err(Error::Os("timer_settime", last_errno()));
        }
        Ok(())
    }
}

/// Queues an IPI for CPU `cpu` of platform `platform` on thread `pthread`.
pub(crate) fn send_ipi(platform: usize, cpu: usize, pthread: libc::pthread_t) -> Result<(), Error> {
    let value = libc::sigval {
        sival_ptr: encode(platform, cpu) as *mut libc::c_void,
    };
    // SAFETY: `pthread` is a worker thread of the platform, which never exits.
    let r = unsafe { libc::pthread_sigqueue(pthread, ipi_signal(), value) };
    if r != 0 {
        return Err(Error::Os("pthread_sigqueue", r));
    }
    Ok(())
}

/// `(platform, cpu)` packed into a signal value.
fn encode(platform: usize, cpu: usize) -> usize {
    (platform << 32) | cpu
}

fn decode(value: usize) -> (usize, usize) {
    (value >> 32, value & 0xffff_ffff)
}

fn create_timer(tid: libc::pid_t, value: usize) -> Result<libc::timer_t, Error> {
    // SAFETY: an all-zero sigevent is valid; the fields used are set below.
    let mut sev: libc::sigevent = unsafe { core::mem::zeroed() };
    sev.sigev_notify = libc::SIGEV_THREAD_ID;
    sev.sigev_signo = timer_signal();
    sev.sigev_value = libc::sigval {
        sival_ptr: value as *mut libc::c_void,
    };
    sev.sigev_notify_thread_id = tid;
    let mut id: libc::timer_t = core::ptr::null_mut();
    // SAFETY: `sev` and `id` are valid for the call.
    if unsafe { libc::timer_create(libc::CLOCK_MONOTONIC, &mut sev, &mut id) } != 0 {
        return Err(Error::Os("timer_create", last_errno()));
    }
    Ok(id)
}

fn delete_timer(id: libc::timer_t) {
    // SAFETY: `id` is a live timer of ours, deleted once.
    unsafe { libc::timer_delete(id) };
}

/// Which hook a real-time signal runs.
#[derive(Clone, Copy)]
enum Kind {
    Timer,
    Ipi,
}

/// The handler of the timer signal.
pub(crate) extern "C" fn on_timer(
    _sig: libc::c_int,
    info: *mut libc::siginfo_t,
    _ctx: *mut libc::c_void,
) {
    dispatch(Kind::Timer, info);
}

/// The handler of the IPI signal.
pub(crate) extern "C" fn on_ipi(
    _sig: libc::c_int,
    info: *mut libc::siginfo_t,
    _ctx: *mut libc::c_void,
) {
    dispatch(Kind::Ipi, info);
}

/// Runs the hook for a timer or IPI signal (async-signal-safe: atomics only).
fn dispatch(kind: Kind, info: *mut libc::siginfo_t) {
    let errno = super::ErrnoGuard::save();
    // SAFETY: the kernel passes a valid siginfo to an SA_SIGINFO handler; the
    // value was set by `create_timer` or `send_ipi` (for a signal sent by
    // someone else it is some integer, which `platform_by_id` rejects or maps
    // to a platform whose hook then runs once, harmlessly).
    let value = unsafe { (*info).si_value().sival_ptr as usize };
    let (platform, cpu) = decode(value);
    if let Some(p) = platform_by_id(platform) {
        if cpu < p.cpu_count_internal() {
            let hook = match kind {
                Kind::Timer => p.interrupts.timer_hook.get(),
                Kind::Ipi => p.interrupts.ipi_hook.get(),
            };
            if let Some(hook) = hook {
                hook(cpu);
            }
        }
    }
    drop(errno);
}
