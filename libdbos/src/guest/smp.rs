//! Running code on every CPU, and TLB invalidation on other CPUs.
//!
//! Secondary CPUs sit in [`idle`]: with interrupts disabled they check for
//! work, and if there is none they `sti; hlt` (the one-instruction interrupt
//! shadow of `sti` makes check-then-sleep race free). [`run_on_all`] publishes
//! a closure and a new generation number, wakes every other CPU with an IPI,
//! runs the closure itself and waits until every CPU has reported that
//! generation done. Closures run in the CPUs' normal context (their boot
//! stack, interrupts enabled), not in an interrupt handler.
//!
//! [`invalidate_all`] works the same way with its own generation and the
//! `TLB` vector, except that the work (`invlpg`) is done in the interrupt
//! handler, so it reaches CPUs that are busy, not only idle ones.
//! [`flush_all`] is the same shootdown with a whole-TLB flush (CR3 reload)
//! instead of one `invlpg`: for edits of an upper-level entry, which change
//! the translations of a whole range at once.
//!
//! Deadlock rule: a CPU waits for every other CPU's acknowledgement, and a
//! CPU acknowledges only when it takes the interrupt or calls
//! [`service_tlb_requests`]. So a CPU that spins with interrupts disabled on
//! a lock whose holder may send a shootdown must serve requests while it
//! spins (as the shootdown lock does below, and Snappy's lock does).

use crate::apic::{self, vector};
use crate::percpu::{self, Event};
use crate::sync::SpinLock;
use core::sync::atomic::{AtomicU64, Ordering};
use spin::Mutex;

/// The closure being run by `run_on_all`, with its lifetime erased.
#[derive(Clone, Copy)]
struct Work(*const (dyn Fn(usize) + Sync));
// SAFETY: the pointee is `Sync`, and `run_on_all` keeps it alive until every
// CPU is done with it.
unsafe impl Send for Work {}

static RUN: Mutex<()> = Mutex::new(());
static WORK: Mutex<Option<Work>> = Mutex::new(None);
static WORK_GENERATION: AtomicU64 = AtomicU64::new(0);

static SHOOTDOWN: Mutex<()> = Mutex::new(());
static TLB_PAGE: AtomicU64 = AtomicU64::new(0);
static TLB_GENERATION: AtomicU64 = AtomicU64::new(0);

/// Number of vCPUs the VM has.
pub fn cpu_count() -> usize {
    crate::boot::boot_info().vcpu_count as usize
}

/// Runs `f(cpu)` on every CPU concurrently and returns when all are done.
///
/// # Panics
/// When called from inside `f` (it would wait for itself); the panic names
/// the caller's location.
#[track_caller]
pub fn run_on_all(f: &(dyn Fn(usize) + Sync)) {
    let Some(_guard) = RUN.try_lock() else {
        panic!(
            "run_on_all called while another run_on_all is in progress (from inside its closure?)"
        );
    };
    let me = percpu::cpu_id() as usize;
    let n = cpu_count();
    // SAFETY: lifetime erasure only; we do not return before every CPU has
    // reported this generation done, after which nobody reads the pointer.
    let erased = unsafe {
        core::mem::transmute::<
            *const (dyn Fn(usize) + Sync + '_),
            *const (dyn Fn(usize) + Sync + 'static),
        >(f)
    };
    let work = Work(erased);
    *WORK.lock() = Some(work);
    let generation = WORK_GENERATION.fetch_add(1, Ordering::AcqRel) + 1;
    for cpu in (0..n).filter(|&c| c != me) {
        apic::send_ipi(cpu as u32, vector::WAKE);
        percpu::count(Event::IpiSent);
    }
    f(me);
    percpu::current()
        .work_done
        .store(generation, Ordering::Release);
    for cpu in 0..n {
        loop {
            if percpu::cpu(cpu).is_some_and(|c| c.work_done.load(Ordering::Acquire) >= generation) {
                break;
            }
            service_tlb_requests();
            core::hint::spin_loop();
        }
    }
    *WORK.lock() = None;
}

/// The loop a secondary CPU runs forever after boot.
pub(crate) fn idle() -> ! {
    let me = percpu::current();
    loop {
        x86_64::instructions::interrupts::disable();
        let generation = WORK_GENERATION.load(Ordering::Acquire);
        if generation > me.work_done.load(Ordering::Relaxed) {
            // Published before the generation was bumped, cleared only after
            // every CPU (this one included) reported it done.
            let work = WORK
                .lock()
                .expect("work is published before its generation");
            x86_64::instructions::interrupts::enable();
            // SAFETY: see `Work`; the closure outlives this call.
            unsafe { (*work.0)(me.cpu as usize) };
            me.work_done.store(generation, Ordering::Release);
            continue;
        }
        x86_64::instructions::interrupts::enable_and_hlt();
    }
}

/// The request value meaning "flush everything" (not canonical, so never a
/// page's address).
const FLUSH_ALL: u64 = u64::MAX;

/// Invalidates `page` on every CPU: `invlpg` here, an IPI to each other CPU,
/// which runs `invlpg` in its handler, and a wait for all acknowledgements.
pub fn invalidate_all(page: u64) {
    shootdown(page);
}

/// Drops every cached translation on every CPU: a CR3 reload here, an IPI
/// to each other CPU, which reloads CR3 in its handler, and a wait for all
/// acknowledgements. Counted as one local flush, and one IPI and one remote
/// invalidation per other CPU.
pub fn flush_all() {
    shootdown(FLUSH_ALL);
}

fn shootdown(page: u64) {
    // While waiting for the lock, keep serving other CPUs' requests, or two
    // CPUs invalidating at once would wait for each other forever.
    let guard = loop {
        if let Some(g) = SHOOTDOWN.try_lock() {
            break g;
        }
        service_tlb_requests();
        core::hint::spin_loop();
    };
    let me = percpu::cpu_id() as usize;
    let n = cpu_count();
    TLB_PAGE.store(page, Ordering::Release);
    let generation = TLB_GENERATION.fetch_add(1, Ordering::AcqRel) + 1;
    if page == FLUSH_ALL {
        crate::tlb::flush_local();
    } else {
        crate::tlb::invalidate_local(page);
    }
    percpu::current()
        .tlb_done
        .store(generation, Ordering::Release);
    for cpu in (0..n).filter(|&c| c != me) {
        apic::send_ipi(cpu as u32, vector::TLB);
        percpu::count(Event::IpiSent);
        percpu::count(Event::RemoteInvalidation);
    }
    for cpu in 0..n {
        while percpu::cpu(cpu).is_none_or(|c| c.tlb_done.load(Ordering::Acquire) < generation) {
            core::hint::spin_loop();
        }
    }
    drop(guard);
}

/// Carries out a pending remote invalidation on this CPU, if any. Called by
/// the TLB interrupt handler, by CPUs spinning on the shootdown lock, and by
/// anyone spinning with interrupts disabled on a lock whose holder may wait
/// for a shootdown (see the deadlock rule above).
pub fn service_tlb_requests() {
    let me = percpu::current();
    let generation = TLB_GENERATION.load(Ordering::Acquire);
    if generation > me.tlb_done.load(Ordering::Relaxed) {
        // Counted once, as a remote invalidation, by the requesting CPU.
        match TLB_PAGE.load(Ordering::Acquire) {
            FLUSH_ALL => crate::tlb::flush_uncounted(),
            page => crate::tlb::invalidate_uncounted(page),
        }
        me.tlb_done.store(generation, Ordering::Release);
    }
}

/// A lock taken with interrupts disabled (the fault hook takes it in the
/// page-fault handler, so a holder interrupted on its own CPU would
/// deadlock otherwise) that **serves TLB shootdowns while it spins**: its
/// holder may wait for every CPU to acknowledge a shootdown
/// ([`flush_all`]), and a CPU spinning here with interrupts disabled
/// could not acknowledge it otherwise (the deadlock rule of this module).
pub struct ServingLock<T> {
    inner: SpinLock<T>,
}

impl<T> ServingLock<T> {
    pub const fn new(value: T) -> Self {
        ServingLock {
            inner: SpinLock::new(value),
        }
    }

    /// Runs `f` with the lock held and interrupts disabled.
    pub fn with<R>(&self, f: impl FnOnce(&mut T) -> R) -> R {
        x86_64::instructions::interrupts::without_interrupts(|| {
            let mut guard = loop {
                if let Some(g) = self.inner.try_lock() {
                    break g;
                }
                service_tlb_requests();
                core::hint::spin_loop();
            };
            f(&mut guard)
        })
    }
}
