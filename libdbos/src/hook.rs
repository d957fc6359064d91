//! [`HookCell`]: one optional function pointer, installed at run time and
//! called from interrupt or signal context.
//!
//! Every hook libdbos calls from a context that may not lock or allocate is
//! kept in one of these: on the guest, the page-fault, per-vector, timer and
//! IPI hooks of `interrupts` and the platform's fault hook; on the host, the process platform's fault hook (called from its
//! `SIGSEGV` handler) and its timer and IPI hooks (called from real-time
//! signal handlers). A cell is one atomic pointer, so it can be a `static`,
//! an element of a `const` array or a field, and both setting and reading it
//! are lock-free and async-signal-safe: [`HookCell::set`] publishes the hook
//! with `Release`, [`HookCell::get`] reads it with `Acquire`.
//!
//! A cell holds only a function-pointer type that implements the sealed
//! [`HookFn`], which this module implements for exactly the hook types
//! libdbos stores; any other type does not compile:
//!
//! ```compile_fail
//! use libdbos::hook::HookCell;
//! static NOT_A_HOOK: HookCell<u64> = HookCell::new();
//! ```
//!
//! ```
//! use libdbos::hook::HookCell;
//! use libdbos::platform::EventHook;
//! fn tick(_cpu: usize) {}
//! static TIMER: HookCell<EventHook> = HookCell::new();
//! TIMER.set(Some(tick));
//! assert!(TIMER.get().is_some());
//! ```

use core::marker::PhantomData;
use core::sync::atomic::{fence, AtomicBool, AtomicPtr, AtomicU64, AtomicUsize, Ordering};

pub(crate) mod sealed {
    pub trait Sealed {}
}

/// A function-pointer type a [`HookCell`] may hold (sealed: implemented
/// here for the hook types libdbos stores, and for nothing else).
pub trait HookFn: Copy + sealed::Sealed {
    /// The function's address.
    #[doc(hidden)]
    fn into_ptr(self) -> *mut ();
}

/// Implements [`HookFn`] for function-pointer types, checking at compile time
/// that each is exactly one pointer wide. Used here for the platform's hook
/// types and by the guest's `interrupts` for its own (so this module names
/// no guest module).
macro_rules! hook_fns {
    ($($(#[$attr:meta])* $fn_type:ty),* $(,)?) => {$(
        $(#[$attr])*
        impl $crate::hook::sealed::Sealed for $fn_type {}
        $(#[$attr])*
        impl $crate::hook::HookFn for $fn_type {
            fn into_ptr(self) -> *mut () {
                self as *mut ()
            }
        }
        $(#[$attr])*
        const _: () = assert!(
            core::mem::size_of::<$fn_type>() == core::mem::size_of::<*mut ()>()
        );
    )*};
}

// The guest's `interrupts` implements it for its own hook types.
#[cfg(target_os = "none")]
pub(crate) use hook_fns;

hook_fns!(
    crate::platform::FaultHook,
    crate::platform::WindowFaultHook,
    // Also the guest's `interrupts::CpuHook`, which is the same type.
    crate::platform::EventHook,
);

/// An optional hook of type `F` (null = none).
pub struct HookCell<F: HookFn> {
    ptr: AtomicPtr<()>,
    _hook: PhantomData<F>,
}

impl<F: HookFn> HookCell<F> {
    /// An empty cell.
    pub const fn new() -> HookCell<F> {
        HookCell {
            ptr: AtomicPtr::new(core::ptr::null_mut()),
            _hook: PhantomData,
        }
    }

    /// Installs `hook`, or with `None` removes the hook (`Release`: what the
    /// caller wrote before is visible to whoever calls the hook).
    pub fn set(&self, hook: Option<F>) {
        let ptr = hook.map_or(core::ptr::null_mut(), F::into_ptr);
        self.ptr.store(ptr, Ordering::Release);
    }

    /// The hook installed, if any (`Acquire`).
    pub fn get(&self) -> Option<F> {
        let ptr = self.ptr.load(Ordering::Acquire);
        (!ptr.is_null()).then(|| from_ptr::<F>(ptr))
    }
}

impl<F: HookFn> Default for HookCell<F> {
    fn default() -> HookCell<F> {
        HookCell::new()
    }
}

/// The hook whose address `ptr` is.
///
/// Only called on a non-null pointer loaded from a `HookCell<F>`, and the
/// only non-null values ever stored in a `HookCell<F>` are
/// [`HookFn::into_ptr`] of an `F` (`set` is the only writer).
fn from_ptr<F: HookFn>(ptr: *mut ()) -> F {
    const { assert!(core::mem::size_of::<F>() == core::mem::size_of::<*mut ()>()) };
    // SAFETY: `ptr` came from `F::into_ptr` (see above), which casts a
    // function pointer of type `F` to a data pointer of the same size (checked
    // at compile time here and in `hook_fns!`), so reading its bits as an
    // `F` gives back that same, valid, non-null function pointer.
    unsafe { core::mem::transmute_copy::<*mut (), F>(&ptr) }
}

/// A hook and the context value registered with it, read together: a
/// reader never sees one hook with another registration's context.
///
/// For hooks whose registration can change while they may be called (a
/// window's fault hook, say, replaced while another CPU faults in the
/// window). Two slots: a writer fills the slot readers are not directed to,
/// then directs them to it with one `Release` store. A reader checks the
/// slot's version before and after reading it and retries on a change, which
/// needs a second registration during its read. A reader never waits for a
/// writer: the slot it is directed to is never the one being written, except
/// after two back-to-back registrations, and then it retries on the other
/// slot, which is complete. So a hook may read the cell even if it
/// interrupted a writer on its own CPU. Writers are serialised by a flag
/// and must not run in interrupt or signal context.
pub struct ContextHookCell<F: HookFn> {
    /// The slot readers use (0 or 1).
    live: AtomicUsize,
    slots: [Slot<F>; 2],
    writing: AtomicBool,
}

struct Slot<F: HookFn> {
    /// Odd while a writer fills the slot.
    version: AtomicU64,
    hook: HookCell<F>,
    context: AtomicUsize,
}

impl<F: HookFn> Slot<F> {
    const fn new() -> Slot<F> {
        Slot {
            version: AtomicU64::new(0),
            hook: HookCell::new(),
            context: AtomicUsize::new(0),
        }
    }
}

impl<F: HookFn> ContextHookCell<F> {
    /// An empty cell.
    pub const fn new() -> ContextHookCell<F> {
        ContextHookCell {
            live: AtomicUsize::new(0),
            slots: [Slot::new(), Slot::new()],
            writing: AtomicBool::new(false),
        }
    }

    /// Registers `hook` with `context` (or with `None` removes the hook).
    /// Not from interrupt or signal context.
    pub fn set(&self, hook: Option<F>, context: usize) {
        while self
            .writing
            .compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            core::hint::spin_loop();
        }
        let next = 1 - self.live.load(Ordering::Relaxed);
        let slot = &self.slots[next];
        let v = slot.version.load(Ordering::Relaxed);
        slot.version.store(v + 1, Ordering::Relaxed);
        // The odd version is visible before any field changes.
        fence(Ordering::Release);
        slot.hook.set(hook);
        slot.context.store(context, Ordering::Relaxed);
        // Even again, after the fields (Release orders them before).
        slot.version.store(v + 2, Ordering::Release);
        self.live.store(next, Ordering::Release);
        self.writing.store(false, Ordering::Release);
    }

    /// The registered hook and its context, if a hook is registered.
    pub fn get(&self) -> Option<(F, usize)> {
        loop {
            let slot = &self.slots[self.live.load(Ordering::Acquire)];
            let before = slot.version.load(Ordering::Acquire);
            if before % 2 == 1 {
                core::hint::spin_loop();
                continue;
            }
            let hook = slot.hook.get();
            let context = slot.context.load(Ordering::Relaxed);
            // The field reads happen before the second version read.
            fence(Ordering::Acquire);
            if slot.version.load(Ordering::Relaxed) == before {
                return hook.map(|h| (h, context));
            }
        }
    }

    /// Whether a hook is registered.
    pub fn is_set(&self) -> bool {
        self.get().is_some()
    }
}

impl<F: HookFn> Default for ContextHookCell<F> {
    fn default() -> ContextHookCell<F> {
        ContextHookCell::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::platform::{EventHook, Fault, FaultHook, FaultResolution, WindowFaultHook};
    use core::sync::atomic::AtomicUsize;

    static CALLS: AtomicUsize = AtomicUsize::new(0);

    fn add_one(_cpu: usize) {
        CALLS.fetch_add(1, Ordering::SeqCst);
    }

    fn add_cpu_times_100(cpu: usize) {
        CALLS.fetch_add(cpu * 100, Ordering::SeqCst);
    }

    fn retry_if_write(f: &Fault) -> FaultResolution {
        if f.write {
            FaultResolution::Retry
        } else {
            FaultResolution::Unhandled
        }
    }

    fn never(_: &Fault) -> FaultResolution {
        FaultResolution::Unhandled
    }

    fn fault(write: bool) -> Fault {
        Fault {
            addr: 0x1000,
            write,
            present: false,
            ip: 0,
            cpu: 0,
        }
    }

    #[test]
    fn set_get_clear() {
        let cell: HookCell<FaultHook> = HookCell::new();
        assert!(cell.get().is_none());
        cell.set(Some(retry_if_write));
        let hook = cell.get().expect("hook set");
        assert_eq!(hook(&fault(true)), FaultResolution::Retry);
        assert_eq!(hook(&fault(false)), FaultResolution::Unhandled);
        cell.set(Some(never));
        assert_eq!(
            cell.get().map(|h| h(&fault(true))),
            Some(FaultResolution::Unhandled)
        );
        cell.set(None);
        assert!(cell.get().is_none());
        assert!(HookCell::<FaultHook>::default().get().is_none());
    }

    fn retry(_: &Fault, _context: usize) -> FaultResolution {
        FaultResolution::Retry
    }

    fn decline(_: &Fault, _context: usize) -> FaultResolution {
        FaultResolution::Unhandled
    }

    #[test]
    fn context_cell_set_get_clear() {
        let cell: ContextHookCell<WindowFaultHook> = ContextHookCell::new();
        assert!(cell.get().is_none() && !cell.is_set());
        cell.set(Some(retry), 7);
        let (hook, context) = cell.get().unwrap();
        assert_eq!(
            (hook(&fault(false), context), context),
            (FaultResolution::Retry, 7)
        );
        cell.set(Some(decline), 9);
        let (hook, context) = cell.get().unwrap();
        assert_eq!(
            (hook(&fault(false), context), context),
            (FaultResolution::Unhandled, 9)
        );
        cell.set(None, 0);
        assert!(cell.get().is_none());
    }

    /// Readers on other threads never see one registration's hook with
    /// another's context while a writer keeps replacing it.
    #[test]
    fn context_cell_pairs_are_never_torn() {
        static CELL: ContextHookCell<WindowFaultHook> = ContextHookCell::new();
        static STOP: AtomicBool = AtomicBool::new(false);
        CELL.set(Some(retry), 1);
        let readers: std::vec::Vec<_> = (0..2)
            .map(|_| {
                std::thread::spawn(|| {
                    let mut reads = 0u64;
                    while !STOP.load(Ordering::Relaxed) {
                        let (hook, context) = CELL.get().expect("always registered");
                        let retried = hook(&fault(false), context) == FaultResolution::Retry;
                        assert_eq!(retried, context == 1, "torn pair after {reads} reads");
                        reads += 1;
                    }
                    reads
                })
            })
            .collect();
        for i in 0..200_000u32 {
            if i % 2 == 0 {
                CELL.set(Some(decline), 2);
            } else {
                CELL.set(Some(retry), 1);
            }
        }
        STOP.store(true, Ordering::Relaxed);
        for r in readers {
            assert!(r.join().unwrap() > 0);
        }
    }

    /// Two hooks in two cells of a `const` array, called through the cells.
    #[test]
    fn two_hooks_called_through_cells() {
        static CELLS: [HookCell<EventHook>; 4] = [const { HookCell::new() }; 4];
        CELLS[1].set(Some(add_one));
        CELLS[2].set(Some(add_cpu_times_100));
        CALLS.store(0, Ordering::SeqCst);
        for cell in &CELLS {
            if let Some(hook) = cell.get() {
                hook(3);
            }
        }
        assert_eq!(CALLS.load(Ordering::SeqCst), 301);
        assert!(CELLS[0].get().is_none() && CELLS[3].get().is_none());
        CELLS[1].set(None);
        CALLS.store(0, Ordering::SeqCst);
        CELLS.iter().filter_map(HookCell::get).for_each(|h| h(5));
        assert_eq!(CALLS.load(Ordering::SeqCst), 500);
    }
}
