//! The fault hook of the process platform: a `SIGSEGV` handler.
//!
//! An access to an unmapped or write-protected window page raises `SIGSEGV`
//! in the faulting thread. The handler (installed once per process with
//! `sigaction(SA_SIGINFO)`) finds the window containing the address with a
//! lock-free search, builds a [`Fault`] and calls the platform's fault hook
//! in the faulting thread. When the hook returns
//! [`FaultResolution::Retry`], the handler returns and the CPU re-executes
//! the access. That is exactly the guest's semantics: the hook runs on the
//! faulting CPU, may map any frame at the page or change its protection, and
//! the access is retried.
//!
//! Why not `userfaultfd`: it resolves a missing-page fault only by copying
//! data into the faulting page (`UFFDIO_COPY`/`ZEROPAGE`) or by continuing
//! with the page the file already has at that offset (`UFFDIO_CONTINUE`), not
//! by mapping an arbitrary frame there; its registration is per VMA and is
//! lost whenever `mmap(MAP_FIXED)` replaces the page, which is how this
//! platform maps frames; and it resolves faults in another thread, not on the
//! faulting CPU.
//!
//! The [`Fault`] fields:
//! - `addr`: `si_addr`, the faulting address;
//! - `write`: bit 1 of the hardware page-fault error code, which x86-64
//!   Linux passes in `uc_mcontext.gregs[REG_ERR]`;
//! - `present`: whether the platform has a frame mapped at the page (not the
//!   error code's bit 0: a page mapped read-only and never touched has no
//!   page-table entry yet, so the hardware reports "not present" where the
//!   guest, which writes the entry at `map`, reports a protection fault);
//! - `ip`: `uc_mcontext.gregs[REG_RIP]`;
//! - `cpu`: the faulting thread's CPU index (see [`super::cpus`]).
//!
//! A fault outside every window, a fault with no hook set, or a hook that
//! returns [`FaultResolution::Unhandled`] writes one line to stderr
//! (`write(2)`), restores the default `SIGSEGV` action and returns, so the
//! access faults again and the process dies of an ordinary segmentation
//! fault (for a fault outside the windows, the handler installed before this
//! one, such as Rust's stack-overflow reporter, is called first). A fault
//! inside the hook itself kills the process the same way: `SIGSEGV` is
//! blocked while the handler runs, so the kernel forces the default action.
//!
//! The handler is async-signal-safe: it allocates nothing and takes no lock;
//! it preserves `errno`. The timer and IPI signals are blocked while it runs.
//! It runs on the faulting thread's own stack (no `SA_ONSTACK`), so a hook has
//! the room of ordinary code; the price is that a stack overflow kills the
//! process without Rust's "has overflowed its stack" message.

use super::{cpus, platform_by_id, windows, ErrnoGuard};
use crate::fmtbuf::FmtBuf;
use crate::platform::{Fault, FaultHandler, FaultResolution, PAGE_SIZE};
use core::fmt::Write;
use core::sync::atomic::{AtomicUsize, Ordering};

/// The `sa_sigaction` and `sa_flags` of the SIGSEGV action this handler
/// replaced (to chain to for faults outside the windows).
static PREVIOUS_HANDLER: AtomicUsize = AtomicUsize::new(libc::SIG_DFL);
static PREVIOUS_FLAGS: AtomicUsize = AtomicUsize::new(0);

/// Records the action replaced by `install`.
pub(crate) fn set_previous(action: &libc::sigaction) {
    PREVIOUS_FLAGS.store(action.sa_flags as usize, Ordering::Relaxed);
    PREVIOUS_HANDLER.store(action.sa_sigaction, Ordering::Release);
}

/// The SIGSEGV handler.
pub(crate) extern "C" fn on_sigsegv(
    sig: libc::c_int,
    info: *mut libc::siginfo_t,
    ctx: *mut libc::c_void,
) {
    let errno = ErrnoGuard::save();
    // SAFETY: the kernel passes a valid siginfo and ucontext to an
    // SA_SIGINFO handler.
    let (code, addr, error_code, ip) = unsafe {
        let gregs = &(*(ctx as *const libc::ucontext_t)).uc_mcontext.gregs;
        (
            (*info).si_code,
            (*info).si_addr() as u64,
            gregs[libc::REG_ERR as usize] as u64,
            gregs[libc::REG_RIP as usize] as u64,
        )
    };
    if code <= 0 {
        // Sent by kill/tgkill, not a fault: die of it.
        die("SIGSEGV sent by a process", addr, ip);
        // SAFETY: raise is async-signal-safe; SIGSEGV is blocked until we return.
        unsafe { libc::raise(sig) };
        return;
    }
    let Some(window) = windows::find(addr) else {
        die("fault outside every window", addr, ip);
        chain_previous(sig, info, ctx);
        // Whatever the previous handler did, the retried access must kill.
        reset_default();
        return;
    };
    let Some(platform) = platform_by_id(window.owner) else {
        die("fault in a window of an unknown platform", addr, ip);
        return;
    };
    let Some(handler) = FaultHandler::choose(window.hook.get(), || platform.fault_hook.get())
    else {
        die("fault in a window with no fault hook set", addr, ip);
        return;
    };
    let cpu = cpus::cpu_id(window.owner);
    let fault = Fault {
        addr,
        write: error_code & 2 != 0,
        present: window.translate(addr & !(PAGE_SIZE - 1)).is_some(),
        ip,
        cpu,
    };
    platform.counters.add(cpu, super::counters::Event::Fault, 1);
    match handler.call(&fault) {
        FaultResolution::Retry => drop(errno),
        FaultResolution::Unhandled => die("the fault hook did not resolve the fault", addr, ip),
    }
}

/// Reports a fatal fault on stderr and restores the default SIGSEGV action.
fn die(why: &str, addr: u64, ip: u64) {
    let mut buf = [0u8; 192];
    let mut line = FmtBuf::new(&mut buf);
    let _ = writeln!(
        line,
        "dbos: segmentation fault at {addr:#x} (ip {ip:#x}): {why}"
    );
    let bytes = line.as_bytes();
    // SAFETY: write(2) is async-signal-safe; `bytes` is a valid buffer.
    unsafe { libc::write(2, bytes.as_ptr().cast(), bytes.len()) };
    reset_default();
}

/// Restores the default SIGSEGV action (async-signal-safe).
fn reset_default() {
    // SAFETY: an all-zero sigaction with SIG_DFL is a valid action.
    unsafe {
        let mut dfl: libc::sigaction = core::mem::zeroed();
        dfl.sa_sigaction = libc::SIG_DFL;
        libc::sigaction(libc::SIGSEGV, &dfl, core::ptr::null_mut());
    }
}

/// Calls the SIGSEGV handler installed before ours, if it was a function.
fn chain_previous(sig: libc::c_int, info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
    let handler = PREVIOUS_HANDLER.load(Ordering::Acquire);
    let flags = PREVIOUS_FLAGS.load(Ordering::Relaxed) as libc::c_int;
    if handler == libc::SIG_DFL || handler == libc::SIG_IGN || handler == libc::SIG_ERR {
        return;
    }
    if flags & libc::SA_SIGINFO != 0 {
        // SAFETY: the previous action was installed with SA_SIGINFO, so its
        // handler has this signature; we pass our own valid arguments.
        let f = unsafe {
            core::mem::transmute::<
                usize,
                extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void),
            >(handler)
        };
        f(sig, info, ctx);
    } else {
        // SAFETY: a non-SA_SIGINFO handler takes the signal number only.
        let f = unsafe { core::mem::transmute::<usize, extern "C" fn(libc::c_int)>(handler) };
        f(sig);
    }
}
