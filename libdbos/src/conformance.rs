//! A conformance suite for [`Platform`] implementations: the same checks run
//! on the process platform (host tests) and on the guest (ring 0).
//!
//! Test code, compiled only with the crate's `conformance` feature (off by
//! default): `libdbos = { path = "...", features = ["conformance"] }`. This
//! crate's tests and its `costs` example get it from its dev-dependency on
//! itself; the guest programs from `examples/Cargo.toml`.
//!
//! Each check is a function generic over the platform, `fn(&'static P) ->
//! Result<(), Failure>`, that exercises one behaviour of the contract in
//! [`crate::platform`] with exact assertions. A failed assertion returns a
//! [`Failure`] naming the check, the file and line and both values; nothing
//! panics (a panic stops a guest). [`checks`] lists them by name and
//! [`run_all`] runs them in order. The suite uses only `core` (no heap, no
//! floating point) and keeps each check to a few thousand operations, so it
//! runs in the guest's emulated ring 0. From a guest (the complete program is
//! `examples/src/bin/platform.rs`, which the hypervisor's tests boot):
//!
//! ```text
//! let passed = libdbos::conformance::run_all(platform, |name, result| match result {
//!     Ok(()) => log::info!("conformance {name}: ok"),
//!     Err(failure) => log::error!("{failure}"),
//! })?;
//! ```
//!
//! **Not reentrant.** The hooks are plain `fn`s, so they find the platform and
//! the check's state through statics: checks run one at a time (a second
//! check started while one runs fails with "not reentrant"), on one thread
//! (CPU) at a time, apart from the closures a check itself runs with
//! `run_on_all`. A check sets the hooks it needs and clears all three hooks
//! (and stops the calling CPU's timer) when it ends. A failing check may leak
//! the frames and mappings it made; windows are not released (apart from
//! `release_gives_back`'s), so a platform must offer at least as many
//! windows as the checks reserve.
//!
//! **What the checks expect** beyond the trait's documentation (an
//! implementation must agree):
//! - alignment is checked before the window: an unaligned address in a window
//!   is `Unaligned(addr)`; an aligned address outside every window is
//!   `NotInWindow(addr)` (the checks use page `0x1000`, which must not be in
//!   a window);
//! - a small page inside a large mapping is `SizeMismatch(page)` for `map`,
//!   `unmap` and `protect`; a large `map` over a 2 MiB range that has small
//!   mappings, and a large `unmap`/`protect` of such a range, are
//!   `SizeMismatch(page)`; a large `unmap` of an empty range is
//!   `NotMapped(page)`; a large frame that is not 2 MiB aligned is
//!   `Unaligned(frame address)`;
//! - `translate` of a small page inside a large mapping is the matching 4 KiB
//!   part of the large frame;
//! - a write to a page mapped read-only faults with `write` and `present`
//!   set, also when the page was mapped read-only and never touched;
//! - where accessed/dirty bits are observable, a page freshly mapped is
//!   neither accessed nor dirty (nothing sets them but an access through the
//!   window), and a read sets only the accessed bit;
//! - `unmap_many` reports per page the error `unmap` would return, and
//!   `test_and_clear_accessed` reports `None` for a page not mapped with the
//!   size asked for;
//! - event counts (deltas of [`Platform::counters`], with the other CPUs
//!   idle): `map` of a page whose page table exists = 1 `pte_writes` and no
//!   other event; `unmap` and `protect` = 1 `pte_writes` + 1
//!   `local_invalidations`; `invalidate_local` = 1 `local_invalidations`;
//!   `flush_local` = 1 `local_flushes`; `invalidate_all` = 1
//!   `local_invalidations` + `cpu_count - 1` `remote_invalidations`;
//!   `send_ipi` = 1 `ipis_sent`; a fault resolved by a hook that maps one
//!   page = 1 `faults` + 1 `pte_writes`; `unmap_many` = per page unmapped 1
//!   `pte_writes` + 1 `local_invalidations`; `invalidate_local_many` = 1
//!   `local_invalidations` per page; `test_and_clear_accessed` = where
//!   accessed bits are observable, 1 `pte_writes` + 1 `local_invalidations`
//!   per accessed page and nothing per other page, elsewhere nothing;
//!   `release` of a window with pages still mapped = where the platform has
//!   page tables of its own (the guest, the implementation that observes
//!   accessed bits), 1 `pte_writes` per page and per table freed, 1
//!   `local_flushes`, `cpu_count - 1` `remote_invalidations` and
//!   `ipis_sent`; elsewhere (the process) 1 `pte_writes`; of an empty window,
//!   no event in the guest. `vmm_exits`, `kvm_exits`, `shootdowns` and the
//!   IPIs behind `invalidate_all` differ between implementations and are not
//!   asserted (the [`costs`] table records them).
//!
//! The timed waits (timer, IPIs, cross-CPU hand-offs) are bounded by the
//! time-stamp counter (`rdtsc`): about [`WAIT_CYCLES`] cycles before a check
//! gives up.

// `Failure` carries its message inline (no heap in the guest) and is only
// built on the cold path, so its size in `Result` does not matter.
#![allow(clippy::result_large_err)]

use crate::fmtbuf::FmtBuf;
use crate::platform::{
    AccessBits, Capabilities, Error, Fault, FaultResolution, Frame, PageSize, Platform, Protection,
    Released, Unmapped, Window, LARGE_PAGE_SIZE, PAGE_SIZE,
};
use core::fmt;
use core::fmt::Write;
use core::sync::atomic::{
    AtomicBool, AtomicPtr, AtomicU32, AtomicU64, AtomicU8, AtomicUsize, Ordering,
};

/// The most CPUs the suite supports (the size of its per-CPU tables).
pub const MAX_CPUS: usize = 64;

/// How long (in TSC cycles) a check waits for another CPU, a timer tick or
/// an IPI before it fails: several seconds at any clock rate.
pub const WAIT_CYCLES: u64 = 20_000_000_000;

/// A quiet period (in TSC cycles, a few milliseconds) a check waits to see
/// that nothing more happens.
const QUIET_CYCLES: u64 = 30_000_000;

/// A page that must not be in any window.
const OUTSIDE: u64 = 0x1000;

// ---- failures ---------------------------------------------------------------

const MESSAGE_BYTES: usize = 240;

/// Why a check failed: where, and what differed.
#[derive(Clone, Copy)]
pub struct Failure {
    /// The check's name (set by [`run_all`]; empty when a check is called
    /// directly).
    pub check: &'static str,
    pub file: &'static str,
    pub line: u32,
    message: [u8; MESSAGE_BYTES],
    len: usize,
}

impl Failure {
    /// A failure at `file:line` with a formatted message (truncated to 240
    /// bytes).
    pub fn new(file: &'static str, line: u32, args: fmt::Arguments<'_>) -> Failure {
        let mut message = [0u8; MESSAGE_BYTES];
        let mut buf = FmtBuf::new(&mut message);
        let _ = buf.write_fmt(args);
        let len = buf.as_bytes().len();
        Failure {
            check: "",
            file,
            line,
            message,
            len,
        }
    }

    /// What differed.
    pub fn message(&self) -> &str {
        core::str::from_utf8(&self.message[..self.len]).unwrap_or("(message not UTF-8)")
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: {}:{}: {}",
            self.check,
            self.file,
            self.line,
            self.message()
        )
    }
}

impl fmt::Debug for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Returns a [`Failure`] at this line.
macro_rules! fail {
    ($($arg:tt)*) => {
        return Err(Failure::new(file!(), line!(), format_args!($($arg)*)))
    };
}

/// Fails unless the condition holds.
macro_rules! check {
    ($cond:expr) => {
        if !$cond {
            fail!("check failed: {}", stringify!($cond));
        }
    };
    ($cond:expr, $($arg:tt)+) => {
        if !$cond {
            fail!("check failed: {}: {}", stringify!($cond), format_args!($($arg)+));
        }
    };
}

/// Fails unless both sides are equal, showing both.
macro_rules! check_eq {
    ($left:expr, $right:expr) => {
        match (&$left, &$right) {
            (l, r) => {
                if *l != *r {
                    fail!(
                        "{} == {}: left {:?}, right {:?}",
                        stringify!($left),
                        stringify!($right),
                        l,
                        r
                    );
                }
            }
        }
    };
}

/// The value of an `Ok`, or a failure showing the error.
macro_rules! ok {
    ($e:expr) => {
        match $e {
            Ok(v) => v,
            Err(e) => fail!("{} failed: {:?}", stringify!($e), e),
        }
    };
}

pub mod costs;

// ---- the list ---------------------------------------------------------------

/// A conformance check.
pub type Check<P> = fn(&'static P) -> Result<(), Failure>;

/// Every check, by name, in the order [`run_all`] runs them.
pub fn checks<P: Platform>() -> [(&'static str, Check<P>); 23] {
    [
        ("frames_alloc_free", frames_alloc_free::<P>),
        (
            "map_write_unmap_fault_remap",
            map_write_unmap_fault_remap::<P>,
        ),
        (
            "window_and_direct_map_agree",
            window_and_direct_map_agree::<P>,
        ),
        ("write_protect_fault", write_protect_fault::<P>),
        ("access_bits", access_bits::<P>),
        ("bad_input_errors", bad_input_errors::<P>),
        ("large_page_errors", large_page_errors::<P>),
        ("translate_before_after", translate_before_after::<P>),
        ("large_mapping", large_mapping::<P>),
        ("per_cpu_counter", per_cpu_counter::<P>),
        ("fault_on_every_cpu", fault_on_every_cpu::<P>),
        (
            "remote_sees_remap_after_invalidate_all",
            remote_sees_remap_after_invalidate_all::<P>,
        ),
        ("timer_fires", timer_fires::<P>),
        ("ipi_runs_on_target", ipi_runs_on_target::<P>),
        ("event_counts", event_counts::<P>),
        ("fault_event_counts", fault_event_counts::<P>),
        ("window_fault_hooks", window_fault_hooks::<P>),
        ("unmap_reports_access_bits", unmap_reports_access_bits::<P>),
        ("protect_keeps_dirty", protect_keeps_dirty::<P>),
        (
            "unmap_many_and_invalidate_many",
            unmap_many_and_invalidate_many::<P>,
        ),
        (
            "test_and_clear_accessed_sweep",
            test_and_clear_accessed_sweep::<P>,
        ),
        ("remap_exchanges_frames", remap_exchanges_frames::<P>),
        ("release_gives_back", release_gives_back::<P>),
    ]
}

/// Runs every check in order, calling `report(name, result)` after each;
/// returns how many passed, or the first failure (after running them all).
pub fn run_all<P: Platform>(
    p: &'static P,
    mut report: impl FnMut(&'static str, &Result<(), Failure>),
) -> Result<usize, Failure> {
    let mut passed = 0;
    let mut first = None;
    for (name, check) in checks::<P>() {
        let result = run_one(p, name, check);
        report(name, &result);
        match result {
            Ok(()) => passed += 1,
            Err(f) => {
                first.get_or_insert(f);
            }
        }
    }
    match first {
        None => Ok(passed),
        Some(f) => Err(f),
    }
}

/// Runs one check, naming it in its failure.
pub fn run_one<P: Platform>(
    p: &'static P,
    name: &'static str,
    check: Check<P>,
) -> Result<(), Failure> {
    check(p).map_err(|mut f| {
        f.check = name;
        f
    })
}

// ---- shared state of hooks and checks --------------------------------------

static RUNNING: AtomicBool = AtomicBool::new(false);
/// The platform of the running check (a `&'static P`).
static PLATFORM: AtomicPtr<()> = AtomicPtr::new(core::ptr::null_mut());

const ACT_NONE: u8 = 0;
/// Map `HOOK_FRAME` read-write at the faulting page.
const ACT_MAP_FRAME: u8 = 1;
/// Make the faulting page read-write.
const ACT_MAKE_WRITABLE: u8 = 2;
/// Map `TABLE[i]` at page `TABLE_BASE + i * PAGE_SIZE`.
const ACT_MAP_TABLE: u8 = 3;

static ACTION: AtomicU8 = AtomicU8::new(ACT_NONE);
static HOOK_FRAME: AtomicU64 = AtomicU64::new(0);
static TABLE_BASE: AtomicU64 = AtomicU64::new(0);
static TABLE: [AtomicU64; MAX_CPUS] = [const { AtomicU64::new(0) }; MAX_CPUS];

static FAULTS: AtomicU64 = AtomicU64::new(0);
static LAST_ADDR: AtomicU64 = AtomicU64::new(0);
static LAST_IP: AtomicU64 = AtomicU64::new(0);
static LAST_WRITE: AtomicBool = AtomicBool::new(false);
static LAST_PRESENT: AtomicBool = AtomicBool::new(false);
static LAST_CPU: AtomicUsize = AtomicUsize::new(usize::MAX);
static CPU_FAULTS: [AtomicU64; MAX_CPUS] = [const { AtomicU64::new(0) }; MAX_CPUS];
/// Anomalies seen in hooks: a platform call that failed, a `Fault::cpu` or
/// hook argument that is not the running CPU.
static HOOK_ERRORS: AtomicU64 = AtomicU64::new(0);

static TICKS: AtomicU64 = AtomicU64::new(0);
static TICK_CPU: AtomicUsize = AtomicUsize::new(usize::MAX);
static IPIS: [AtomicU64; MAX_CPUS] = [const { AtomicU64::new(0) }; MAX_CPUS];

/// Per-CPU slots for closures run with `run_on_all`.
static SLOTS: [AtomicU64; MAX_CPUS] = [const { AtomicU64::new(0) }; MAX_CPUS];
static SEEN: [AtomicU32; MAX_CPUS] = [const { AtomicU32::new(0) }; MAX_CPUS];
static SUM: AtomicU64 = AtomicU64::new(0);
static STAGE: AtomicU32 = AtomicU32::new(0);
/// The line of the first failure inside a `run_on_all` closure (0: none),
/// and a value that goes with it.
static STEP_LINE: AtomicU32 = AtomicU32::new(0);
static STEP_VALUE: AtomicU64 = AtomicU64::new(0);

/// Records a failure inside a closure run on another CPU.
fn note(line: u32, value: u64) {
    if STEP_LINE
        .compare_exchange(0, line, Ordering::SeqCst, Ordering::SeqCst)
        .is_ok()
    {
        STEP_VALUE.store(value, Ordering::SeqCst);
    }
}

/// The running check's platform.
fn platform<P: Platform + 'static>() -> Option<&'static P> {
    let p = PLATFORM.load(Ordering::Acquire) as *const P;
    // SAFETY: `PLATFORM` is set only by `Session::<P>::begin` from a
    // `&'static P`, and the hooks that call this with `P` are installed only
    // by checks running with a `Session<P>` on that platform; it is cleared
    // after the hooks are.
    unsafe { p.as_ref() }
}

/// The state of one running check: sets up the statics, and on drop clears
/// the hooks and stops this CPU's timer.
struct Session<P: Platform + 'static> {
    p: &'static P,
}

impl<P: Platform + 'static> Session<P> {
    fn begin(p: &'static P) -> Result<Session<P>, Failure> {
        if RUNNING.swap(true, Ordering::SeqCst) {
            fail!("not reentrant: another conformance check is running");
        }
        if p.cpu_count() > MAX_CPUS || p.cpu_count() == 0 {
            RUNNING.store(false, Ordering::SeqCst);
            fail!("cpu_count() = {} is not in 1..={MAX_CPUS}", p.cpu_count());
        }
        PLATFORM.store(p as *const P as *mut (), Ordering::Release);
        ACTION.store(ACT_NONE, Ordering::SeqCst);
        for a in [
            &FAULTS,
            &LAST_ADDR,
            &LAST_IP,
            &HOOK_ERRORS,
            &TICKS,
            &SUM,
            &STEP_VALUE,
            &HOOK_FRAME,
            &TABLE_BASE,
        ] {
            a.store(0, Ordering::SeqCst);
        }
        LAST_WRITE.store(false, Ordering::SeqCst);
        LAST_PRESENT.store(false, Ordering::SeqCst);
        LAST_CPU.store(usize::MAX, Ordering::SeqCst);
        TICK_CPU.store(usize::MAX, Ordering::SeqCst);
        STAGE.store(0, Ordering::SeqCst);
        STEP_LINE.store(0, Ordering::SeqCst);
        for i in 0..MAX_CPUS {
            for a in [&TABLE[i], &CPU_FAULTS[i], &IPIS[i], &SLOTS[i]] {
                a.store(0, Ordering::SeqCst);
            }
            SEEN[i].store(0, Ordering::SeqCst);
        }
        Ok(Session { p })
    }

    /// Installs the suite's fault hook with `action`.
    fn fault_hook(&self, action: u8) {
        ACTION.store(action, Ordering::SeqCst);
        self.p.set_fault_hook(Some(fault_hook::<P>));
    }

    /// The failure recorded inside a closure, if any.
    fn step_failure(&self) -> Result<(), Failure> {
        match STEP_LINE.load(Ordering::SeqCst) {
            0 => Ok(()),
            line => Err(Failure::new(
                file!(),
                line,
                format_args!(
                    "failed on another CPU (value {:#x})",
                    STEP_VALUE.load(Ordering::SeqCst)
                ),
            )),
        }
    }
}

impl<P: Platform + 'static> Drop for Session<P> {
    fn drop(&mut self) {
        self.p.set_fault_hook(None);
        self.p.set_timer_hook(None);
        self.p.set_ipi_hook(None);
        if self.p.capabilities().interrupts {
            let _ = self.p.set_timer(None);
        }
        ACTION.store(ACT_NONE, Ordering::SeqCst);
        PLATFORM.store(core::ptr::null_mut(), Ordering::Release);
        RUNNING.store(false, Ordering::SeqCst);
    }
}

/// The suite's fault hook: records the fault, then acts as `ACTION` says.
fn fault_hook<P: Platform + 'static>(f: &Fault) -> FaultResolution {
    let Some(p) = platform::<P>() else {
        return FaultResolution::Unhandled;
    };
    FAULTS.fetch_add(1, Ordering::SeqCst);
    LAST_ADDR.store(f.addr, Ordering::SeqCst);
    LAST_IP.store(f.ip, Ordering::SeqCst);
    LAST_WRITE.store(f.write, Ordering::SeqCst);
    LAST_PRESENT.store(f.present, Ordering::SeqCst);
    LAST_CPU.store(f.cpu, Ordering::SeqCst);
    if f.cpu < MAX_CPUS {
        CPU_FAULTS[f.cpu].fetch_add(1, Ordering::SeqCst);
    }
    if f.cpu != p.cpu_id() {
        HOOK_ERRORS.fetch_add(1, Ordering::SeqCst);
    }
    let page = f.addr & !(PAGE_SIZE - 1);
    let result = match ACTION.load(Ordering::SeqCst) {
        ACT_MAP_FRAME => match Frame::from_addr(HOOK_FRAME.load(Ordering::SeqCst)) {
            Some(frame) => p.map(page, frame, PageSize::Small, Protection::ReadWrite),
            None => Err(Error::Unaligned(HOOK_FRAME.load(Ordering::SeqCst))),
        },
        ACT_MAKE_WRITABLE => p
            .protect(page, PageSize::Small, Protection::ReadWrite)
            .map(|_| ()),
        ACT_MAP_TABLE => {
            let i = (page.wrapping_sub(TABLE_BASE.load(Ordering::SeqCst)) / PAGE_SIZE) as usize;
            match TABLE
                .get(i)
                .and_then(|t| Frame::from_addr(t.load(Ordering::SeqCst)))
            {
                Some(frame) => p.map(page, frame, PageSize::Small, Protection::ReadWrite),
                None => Err(Error::NotInWindow(page)),
            }
        }
        _ => return FaultResolution::Unhandled,
    };
    match result {
        Ok(()) => FaultResolution::Retry,
        Err(_) => {
            HOOK_ERRORS.fetch_add(1, Ordering::SeqCst);
            FaultResolution::Unhandled
        }
    }
}

/// Faults handled by the suite's window hook, and the last context it got.
static WINDOW_FAULTS: AtomicU64 = AtomicU64::new(0);
static WINDOW_CONTEXT: AtomicU64 = AtomicU64::new(0);

/// The suite's window hook: its context is the address of the frame to map
/// read-write at the faulting page.
fn window_hook<P: Platform + 'static>(f: &Fault, context: usize) -> FaultResolution {
    let Some(p) = platform::<P>() else {
        return FaultResolution::Unhandled;
    };
    WINDOW_FAULTS.fetch_add(1, Ordering::SeqCst);
    WINDOW_CONTEXT.store(context as u64, Ordering::SeqCst);
    if f.cpu != p.cpu_id() {
        HOOK_ERRORS.fetch_add(1, Ordering::SeqCst);
    }
    let page = f.addr & !(PAGE_SIZE - 1);
    match Frame::from_addr(context as u64)
        .ok_or(Error::Unaligned(context as u64))
        .and_then(|frame| p.map(page, frame, PageSize::Small, Protection::ReadWrite))
    {
        Ok(()) => FaultResolution::Retry,
        Err(_) => {
            HOOK_ERRORS.fetch_add(1, Ordering::SeqCst);
            FaultResolution::Unhandled
        }
    }
}

fn timer_hook<P: Platform + 'static>(cpu: usize) {
    TICKS.fetch_add(1, Ordering::SeqCst);
    TICK_CPU.store(cpu, Ordering::SeqCst);
    if platform::<P>().is_none_or(|p| p.cpu_id() != cpu) {
        HOOK_ERRORS.fetch_add(1, Ordering::SeqCst);
    }
}

fn ipi_hook<P: Platform + 'static>(cpu: usize) {
    if cpu < MAX_CPUS {
        IPIS[cpu].fetch_add(1, Ordering::SeqCst);
    }
    if platform::<P>().is_none_or(|p| p.cpu_id() != cpu) {
        HOOK_ERRORS.fetch_add(1, Ordering::SeqCst);
    }
}

// ---- helpers ------------------------------------------------------------------

/// Reads the `u64` at `addr`.
///
/// # Safety
/// `addr` must be 8-byte aligned and readable, or be in a window page whose
/// fault the current fault hook resolves.
unsafe fn read(addr: u64) -> u64 {
    // SAFETY: guaranteed by the caller.
    unsafe { core::ptr::read_volatile(addr as *const u64) }
}

/// Writes `value` at `addr`.
///
/// # Safety
/// As for [`read`], for writing.
unsafe fn write(addr: u64, value: u64) {
    // SAFETY: guaranteed by the caller.
    unsafe { core::ptr::write_volatile(addr as *mut u64, value) }
}

/// The address of byte `offset` of `frame` in the platform's direct view.
fn frame_addr<P: Platform>(p: &P, frame: Frame, offset: u64) -> u64 {
    p.frame_ptr(frame) as u64 + offset
}

/// The bits a platform with `caps` reports for a page whose accessed and
/// dirty states are `accessed` and `dirty` (`None` where it cannot observe
/// them).
fn expected_bits(caps: Capabilities, accessed: bool, dirty: bool) -> AccessBits {
    AccessBits {
        accessed: caps.accessed_bit.then_some(accessed),
        dirty: caps.dirty_bit.then_some(dirty),
    }
}

/// A distinct value for page `i`, word `w`.
fn pattern(i: u64, w: u64) -> u64 {
    0xdb05_0000_0000_0000 | (i << 24) | w
}

/// The events the library counts itself, in `EventCounts` order: faults,
/// PTE writes, local invalidations, local flushes, remote invalidations, IPIs.
fn library_events(d: &crate::platform::EventCounts) -> (u64, u64, u64, u64, u64, u64) {
    (
        d.faults,
        d.pte_writes,
        d.local_invalidations,
        d.local_flushes,
        d.remote_invalidations,
        d.ipis_sent,
    )
}

/// The time-stamp counter (libdbos is x86-64 only).
fn cycles() -> u64 {
    // SAFETY: rdtsc has no preconditions (and works in the guest).
    #[allow(unused_unsafe)]
    unsafe {
        core::arch::x86_64::_rdtsc()
    }
}

/// Spins until `cond` holds or about `limit` cycles pass; returns `cond()`.
fn wait_until(limit: u64, cond: impl Fn() -> bool) -> bool {
    let start = cycles();
    loop {
        if cond() {
            return true;
        }
        if cycles().wrapping_sub(start) > limit {
            return cond();
        }
        core::hint::spin_loop();
    }
}

/// Spins for about `limit` cycles.
fn pause(limit: u64) {
    wait_until(limit, || false);
}

// ---- checks -------------------------------------------------------------------

/// `alloc_frame`/`free_frame` move `free_frames` by the frame's size in small
/// units; frames are aligned, distinct, with distinct contents pointers.
pub fn frames_alloc_free<P: Platform>(p: &'static P) -> Result<(), Failure> {
    let _s = Session::begin(p)?;
    let before = p.free_frames();
    let a = ok!(p.alloc_frame(PageSize::Small));
    let b = ok!(p.alloc_frame(PageSize::Small));
    check_eq!(p.free_frames(), before - 2);
    check!(a != b);
    check_eq!(a.addr() % PAGE_SIZE, 0);
    check!(!p.frame_ptr(a).is_null() && !p.frame_ptr(b).is_null());
    check!(p.frame_ptr(a) != p.frame_ptr(b));
    // SAFETY: both frames are allocated; their direct views are writable.
    unsafe {
        write(frame_addr(p, a, 0), 1);
        write(frame_addr(p, b, 0), 2);
        check_eq!(read(frame_addr(p, a, 0)), 1);
        check_eq!(read(frame_addr(p, b, 0)), 2);
        p.free_frame(a, PageSize::Small);
        p.free_frame(b, PageSize::Small);
    }
    check_eq!(p.free_frames(), before);
    let large = ok!(p.alloc_frame(PageSize::Large));
    check_eq!(large.addr() % LARGE_PAGE_SIZE, 0);
    check_eq!(p.free_frames(), before - LARGE_PAGE_SIZE / PAGE_SIZE);
    // SAFETY: allocated above with this size, never mapped.
    unsafe { p.free_frame(large, PageSize::Large) };
    check_eq!(p.free_frames(), before);
    Ok(())
}

/// Map a frame, write through the window, unmap (which returns the frame);
/// the next access faults, the hook maps a different frame, and the access
/// reads the new frame's data.
pub fn map_write_unmap_fault_remap<P: Platform>(p: &'static P) -> Result<(), Failure> {
    let s = Session::begin(p)?;
    let w = ok!(p.reserve(LARGE_PAGE_SIZE));
    check_eq!(w.base % LARGE_PAGE_SIZE, 0);
    check_eq!(w.len, LARGE_PAGE_SIZE);
    let a = ok!(p.alloc_frame(PageSize::Small));
    let b = ok!(p.alloc_frame(PageSize::Small));
    let page = w.page(3);
    ok!(p.map(page, a, PageSize::Small, Protection::ReadWrite));
    // SAFETY: `page` is mapped read-write to `a`; `b` is allocated.
    unsafe {
        write(page + 8, pattern(1, 1));
        write(page + PAGE_SIZE - 8, pattern(1, 2));
        check_eq!(read(frame_addr(p, a, 8)), pattern(1, 1));
        check_eq!(read(frame_addr(p, a, PAGE_SIZE - 8)), pattern(1, 2));
        write(frame_addr(p, b, 8), pattern(2, 1));
    }
    check_eq!(ok!(p.unmap(page, PageSize::Small)).frame, a);
    check_eq!(p.translate(page), None);
    HOOK_FRAME.store(b.addr(), Ordering::SeqCst);
    s.fault_hook(ACT_MAP_FRAME);
    let me = p.cpu_id();
    // SAFETY: the page is unmapped; the hook maps `b` there.
    let value = unsafe { read(page + 8) };
    check_eq!(value, pattern(2, 1));
    check_eq!(FAULTS.load(Ordering::SeqCst), 1);
    check_eq!(LAST_ADDR.load(Ordering::SeqCst), page + 8);
    check_eq!(LAST_WRITE.load(Ordering::SeqCst), false);
    check_eq!(LAST_PRESENT.load(Ordering::SeqCst), false);
    check_eq!(LAST_CPU.load(Ordering::SeqCst), me);
    check!(LAST_IP.load(Ordering::SeqCst) != 0);
    check_eq!(HOOK_ERRORS.load(Ordering::SeqCst), 0);
    check_eq!(p.translate(page), Some(b));
    // The old frame keeps its contents.
    // SAFETY: `a` is allocated.
    check_eq!(unsafe { read(frame_addr(p, a, 8)) }, pattern(1, 1));
    check_eq!(ok!(p.unmap(page, PageSize::Small)).frame, b);
    // SAFETY: both frames are unmapped and not used again.
    unsafe {
        p.free_frame(a, PageSize::Small);
        p.free_frame(b, PageSize::Small);
    }
    Ok(())
}

/// Writes through a window page are visible through `frame_ptr` and the
/// reverse; one frame mapped at two pages shows the same data at both.
pub fn window_and_direct_map_agree<P: Platform>(p: &'static P) -> Result<(), Failure> {
    let _s = Session::begin(p)?;
    let w = ok!(p.reserve(LARGE_PAGE_SIZE));
    let f = ok!(p.alloc_frame(PageSize::Small));
    let (x, y) = (w.page(0), w.page(7));
    ok!(p.map(x, f, PageSize::Small, Protection::ReadWrite));
    ok!(p.map(y, f, PageSize::Small, Protection::ReadWrite));
    for (i, offset) in [0, 8, 2048, PAGE_SIZE - 8].into_iter().enumerate() {
        let i = i as u64;
        // SAFETY: `x` and `y` are mapped read-write to `f`, which is allocated.
        unsafe {
            write(x + offset, pattern(i, 1));
            check_eq!(read(frame_addr(p, f, offset)), pattern(i, 1));
            check_eq!(read(y + offset), pattern(i, 1));
            write(frame_addr(p, f, offset), pattern(i, 2));
            check_eq!(read(x + offset), pattern(i, 2));
            write(y + offset, pattern(i, 3));
            check_eq!(read(x + offset), pattern(i, 3));
        }
    }
    check_eq!(ok!(p.unmap(x, PageSize::Small)).frame, f);
    check_eq!(ok!(p.unmap(y, PageSize::Small)).frame, f);
    // SAFETY: unmapped everywhere, not used again.
    unsafe { p.free_frame(f, PageSize::Small) };
    Ok(())
}

/// Read-only pages: reads succeed; a write faults with `write` and
/// `present`, the hook makes the page writable, and the write lands. Also
/// for a page mapped read-only from the start and never touched.
pub fn write_protect_fault<P: Platform>(p: &'static P) -> Result<(), Failure> {
    let s = Session::begin(p)?;
    let w = ok!(p.reserve(LARGE_PAGE_SIZE));
    let f = ok!(p.alloc_frame(PageSize::Small));
    let g = ok!(p.alloc_frame(PageSize::Small));
    let page = w.page(5);
    ok!(p.map(page, f, PageSize::Small, Protection::ReadWrite));
    s.fault_hook(ACT_MAKE_WRITABLE);
    // SAFETY: mapped read-write, then read-only; the hook restores write access.
    unsafe {
        write(page, 1);
        ok!(p.protect(page, PageSize::Small, Protection::ReadOnly));
        check_eq!(read(page), 1);
        check_eq!(FAULTS.load(Ordering::SeqCst), 0);
        write(page + 16, 2);
    }
    check_eq!(FAULTS.load(Ordering::SeqCst), 1);
    check_eq!(LAST_ADDR.load(Ordering::SeqCst), page + 16);
    check_eq!(LAST_WRITE.load(Ordering::SeqCst), true);
    check_eq!(LAST_PRESENT.load(Ordering::SeqCst), true);
    // SAFETY: the page is mapped read-write again; `f` is allocated.
    unsafe {
        check_eq!(read(page + 16), 2);
        check_eq!(read(frame_addr(p, f, 16)), 2);
        // Again: protection changes are not sticky in either direction.
        ok!(p.protect(page, PageSize::Small, Protection::ReadOnly));
        write(page + 24, 3);
        check_eq!(read(frame_addr(p, f, 24)), 3);
    }
    check_eq!(FAULTS.load(Ordering::SeqCst), 2);
    check_eq!(p.translate(page), Some(f));
    // Mapped read-only from the start, never touched.
    let fresh = w.page(6);
    ok!(p.map(fresh, g, PageSize::Small, Protection::ReadOnly));
    // SAFETY: mapped read-only; the hook makes it writable.
    unsafe { write(fresh + 8, 4) };
    check_eq!(FAULTS.load(Ordering::SeqCst), 3);
    check_eq!(LAST_ADDR.load(Ordering::SeqCst), fresh + 8);
    check_eq!(LAST_WRITE.load(Ordering::SeqCst), true);
    check_eq!(LAST_PRESENT.load(Ordering::SeqCst), true);
    // SAFETY: `g` is allocated.
    check_eq!(unsafe { read(frame_addr(p, g, 8)) }, 4);
    check_eq!(HOOK_ERRORS.load(Ordering::SeqCst), 0);
    check_eq!(ok!(p.unmap(page, PageSize::Small)).frame, f);
    check_eq!(ok!(p.unmap(fresh, PageSize::Small)).frame, g);
    // SAFETY: unmapped, not used again.
    unsafe {
        p.free_frame(f, PageSize::Small);
        p.free_frame(g, PageSize::Small);
    }
    Ok(())
}

/// Accessed and dirty bits: reported exactly where `capabilities()` says,
/// set by reads and writes, cleared by `clear_access_bits` where it is
/// per-page; otherwise that call is `Unsupported`.
pub fn access_bits<P: Platform>(p: &'static P) -> Result<(), Failure> {
    let _s = Session::begin(p)?;
    let caps = p.capabilities();
    let expect = |accessed, dirty| expected_bits(caps, accessed, dirty);
    let w = ok!(p.reserve(LARGE_PAGE_SIZE));
    let f = ok!(p.alloc_frame(PageSize::Small));
    let page = w.page(1);
    check_eq!(p.access_bits(page), Err(Error::NotMapped(page)));
    check_eq!(p.clear_access_bits(page), Err(Error::NotMapped(page)));
    ok!(p.map(page, f, PageSize::Small, Protection::ReadWrite));
    let bits = ok!(p.access_bits(page));
    check_eq!(bits.accessed.is_some(), caps.accessed_bit);
    check_eq!(bits.dirty.is_some(), caps.dirty_bit);
    if caps.per_page_clear {
        ok!(p.clear_access_bits(page));
        check_eq!(ok!(p.access_bits(page)), expect(false, false));
        // SAFETY: mapped read-write.
        unsafe { read(page) };
        check_eq!(ok!(p.access_bits(page)), expect(true, false));
        // SAFETY: mapped read-write.
        unsafe { write(page, 5) };
        check_eq!(ok!(p.access_bits(page)), expect(true, true));
        check_eq!(ok!(p.clear_access_bits(page)), expect(true, true));
        check_eq!(ok!(p.access_bits(page)), expect(false, false));
        // SAFETY: mapped read-write.
        unsafe { write(page, 6) };
        check_eq!(ok!(p.access_bits(page)), expect(true, true));
    } else {
        // SAFETY: mapped read-write.
        unsafe { write(page, 5) };
        let after = ok!(p.access_bits(page));
        if caps.accessed_bit {
            check_eq!(after.accessed, Some(true));
        }
        if caps.dirty_bit {
            check_eq!(after.dirty, Some(true));
        }
        match p.clear_access_bits(page) {
            Err(Error::Unsupported(_)) => {}
            other => {
                fail!("clear_access_bits without per_page_clear: {other:?}, expected Unsupported")
            }
        }
    }
    check_eq!(ok!(p.unmap(page, PageSize::Small)).frame, f);
    // SAFETY: unmapped, not used again.
    unsafe { p.free_frame(f, PageSize::Small) };
    Ok(())
}

/// Every bad input to the small-page calls gets its error variant.
pub fn bad_input_errors<P: Platform>(p: &'static P) -> Result<(), Failure> {
    let _s = Session::begin(p)?;
    let w = ok!(p.reserve(LARGE_PAGE_SIZE));
    let f = ok!(p.alloc_frame(PageSize::Small));
    let g = ok!(p.alloc_frame(PageSize::Small));
    let (page, other) = (w.page(2), w.page(3));
    let (small, rw) = (PageSize::Small, Protection::ReadWrite);
    for bad in [w.base + 1, w.base + 8, page + 2048] {
        check_eq!(p.map(bad, f, small, rw), Err(Error::Unaligned(bad)));
        check_eq!(p.unmap(bad, small), Err(Error::Unaligned(bad)));
        check_eq!(p.protect(bad, small, rw), Err(Error::Unaligned(bad)));
        check_eq!(p.access_bits(bad), Err(Error::Unaligned(bad)));
    }
    check_eq!(
        p.map(OUTSIDE, f, small, rw),
        Err(Error::NotInWindow(OUTSIDE))
    );
    check_eq!(p.unmap(OUTSIDE, small), Err(Error::NotInWindow(OUTSIDE)));
    check_eq!(
        p.protect(OUTSIDE, small, rw),
        Err(Error::NotInWindow(OUTSIDE))
    );
    check_eq!(p.access_bits(OUTSIDE), Err(Error::NotInWindow(OUTSIDE)));
    check_eq!(p.unmap(page, small), Err(Error::NotMapped(page)));
    check_eq!(
        p.protect(page, small, Protection::ReadOnly),
        Err(Error::NotMapped(page))
    );
    ok!(p.map(page, f, small, rw));
    check_eq!(p.map(page, f, small, rw), Err(Error::AlreadyMapped(page)));
    check_eq!(
        p.map(page, g, small, Protection::ReadOnly),
        Err(Error::AlreadyMapped(page))
    );
    // The failed calls changed nothing.
    check_eq!(p.translate(page), Some(f));
    check_eq!(p.translate(other), None);
    check_eq!(p.unmap(other, small), Err(Error::NotMapped(other)));
    check_eq!(ok!(p.unmap(page, small)).frame, f);
    check_eq!(p.unmap(page, small), Err(Error::NotMapped(page)));
    let n = p.cpu_count();
    check_eq!(p.send_ipi(n), Err(Error::NoSuchCpu(n)));
    check_eq!(p.send_ipi(usize::MAX), Err(Error::NoSuchCpu(usize::MAX)));
    // SAFETY: unmapped, not used again.
    unsafe {
        p.free_frame(f, PageSize::Small);
        p.free_frame(g, PageSize::Small);
    }
    Ok(())
}

/// Large-page misuse: misaligned pages and frames, and mixing sizes.
pub fn large_page_errors<P: Platform>(p: &'static P) -> Result<(), Failure> {
    let _s = Session::begin(p)?;
    let w = ok!(p.reserve(2 * LARGE_PAGE_SIZE));
    let large = ok!(p.alloc_frame(PageSize::Large));
    let f = ok!(p.alloc_frame(PageSize::Small));
    let (lo, hi) = (w.base, w.base + LARGE_PAGE_SIZE);
    let (big, small, rw) = (PageSize::Large, PageSize::Small, Protection::ReadWrite);
    let misaligned_frame = ok!(Frame::from_addr(large.addr() + PAGE_SIZE).ok_or("frame"));
    check_eq!(
        p.map(hi + PAGE_SIZE, large, big, rw),
        Err(Error::Unaligned(hi + PAGE_SIZE))
    );
    check_eq!(
        p.map(hi, misaligned_frame, big, rw),
        Err(Error::Unaligned(misaligned_frame.addr()))
    );
    check_eq!(
        p.unmap(hi + PAGE_SIZE, big),
        Err(Error::Unaligned(hi + PAGE_SIZE))
    );
    check_eq!(
        p.protect(hi + PAGE_SIZE, big, rw),
        Err(Error::Unaligned(hi + PAGE_SIZE))
    );
    check_eq!(p.unmap(hi, big), Err(Error::NotMapped(hi)));
    check_eq!(
        p.map(OUTSIDE & !(LARGE_PAGE_SIZE - 1), large, big, rw),
        Err(Error::NotInWindow(0))
    );
    // A large mapping blocks small calls inside it.
    ok!(p.map(hi, large, big, rw));
    check_eq!(p.map(hi, large, big, rw), Err(Error::AlreadyMapped(hi)));
    check_eq!(
        p.map(hi + 5 * PAGE_SIZE, f, small, rw),
        Err(Error::SizeMismatch(hi + 5 * PAGE_SIZE))
    );
    check_eq!(p.map(hi, f, small, rw), Err(Error::SizeMismatch(hi)));
    check_eq!(
        p.unmap(hi + 5 * PAGE_SIZE, small),
        Err(Error::SizeMismatch(hi + 5 * PAGE_SIZE))
    );
    check_eq!(p.protect(hi, small, rw), Err(Error::SizeMismatch(hi)));
    check_eq!(ok!(p.unmap(hi, big)).frame, large);
    // Small mappings block large calls over them.
    ok!(p.map(lo + 9 * PAGE_SIZE, f, small, rw));
    check_eq!(p.map(lo, large, big, rw), Err(Error::SizeMismatch(lo)));
    check_eq!(p.unmap(lo, big), Err(Error::SizeMismatch(lo)));
    check_eq!(p.protect(lo, big, rw), Err(Error::SizeMismatch(lo)));
    check_eq!(p.translate(lo), None);
    check_eq!(p.translate(lo + 9 * PAGE_SIZE), Some(f));
    check_eq!(ok!(p.unmap(lo + 9 * PAGE_SIZE, small)).frame, f);
    // SAFETY: unmapped, not used again.
    unsafe {
        p.free_frame(large, PageSize::Large);
        p.free_frame(f, PageSize::Small);
    }
    Ok(())
}

/// `translate` follows `map`, `protect` and `unmap`, for small pages and for
/// the 4 KiB parts of a large page.
pub fn translate_before_after<P: Platform>(p: &'static P) -> Result<(), Failure> {
    let _s = Session::begin(p)?;
    let w = ok!(p.reserve(2 * LARGE_PAGE_SIZE));
    let f = ok!(p.alloc_frame(PageSize::Small));
    let large = ok!(p.alloc_frame(PageSize::Large));
    let page = w.page(4);
    check_eq!(p.translate(page), None);
    ok!(p.map(page, f, PageSize::Small, Protection::ReadOnly));
    check_eq!(p.translate(page), Some(f));
    check_eq!(p.translate(page + PAGE_SIZE), None);
    ok!(p.protect(page, PageSize::Small, Protection::ReadWrite));
    check_eq!(p.translate(page), Some(f));
    check_eq!(ok!(p.unmap(page, PageSize::Small)).frame, f);
    check_eq!(p.translate(page), None);
    let hi = w.base + LARGE_PAGE_SIZE;
    check_eq!(p.translate(hi), None);
    ok!(p.map(hi, large, PageSize::Large, Protection::ReadWrite));
    for k in [0, 1, 100, 511] {
        check_eq!(
            p.translate(hi + k * PAGE_SIZE),
            Frame::from_addr(large.addr() + k * PAGE_SIZE)
        );
    }
    check_eq!(p.translate(w.base), None);
    check_eq!(ok!(p.unmap(hi, PageSize::Large)).frame, large);
    check_eq!(p.translate(hi), None);
    check_eq!(p.translate(hi + 511 * PAGE_SIZE), None);
    // SAFETY: unmapped, not used again.
    unsafe {
        p.free_frame(f, PageSize::Small);
        p.free_frame(large, PageSize::Large);
    }
    Ok(())
}

/// A 2 MiB mapping of a large frame is readable at offsets 0 and 2 MiB - 8,
/// and writes through it reach the frame.
pub fn large_mapping<P: Platform>(p: &'static P) -> Result<(), Failure> {
    let _s = Session::begin(p)?;
    let w = ok!(p.reserve(LARGE_PAGE_SIZE));
    let before = p.free_frames();
    let large = ok!(p.alloc_frame(PageSize::Large));
    check_eq!(p.free_frames(), before - LARGE_PAGE_SIZE / PAGE_SIZE);
    let end = LARGE_PAGE_SIZE - 8;
    // SAFETY: the frame is allocated; its direct view covers 2 MiB.
    unsafe {
        write(frame_addr(p, large, 0), pattern(7, 0));
        write(frame_addr(p, large, end), pattern(7, 1));
    }
    ok!(p.map(w.base, large, PageSize::Large, Protection::ReadWrite));
    // SAFETY: the window's 2 MiB are mapped read-write to `large`.
    unsafe {
        check_eq!(read(w.base), pattern(7, 0));
        check_eq!(read(w.base + end), pattern(7, 1));
        write(w.base + 300 * PAGE_SIZE + 16, pattern(7, 2));
        check_eq!(
            read(frame_addr(p, large, 300 * PAGE_SIZE + 16)),
            pattern(7, 2)
        );
    }
    check_eq!(ok!(p.unmap(w.base, PageSize::Large)).frame, large);
    // (Mapping may have taken frames for page tables: compare from here.)
    let unmapped = p.free_frames();
    // SAFETY: unmapped, not used again.
    unsafe { p.free_frame(large, PageSize::Large) };
    check_eq!(p.free_frames(), unmapped + LARGE_PAGE_SIZE / PAGE_SIZE);
    Ok(())
}

/// `run_on_all` runs the closure once on every CPU, concurrently, with the
/// CPU's own index: a shared counter sums to the exact total and every index
/// in `0..cpu_count()` is seen once.
pub fn per_cpu_counter<P: Platform>(p: &'static P) -> Result<(), Failure> {
    let s = Session::begin(p)?;
    const PER_CPU: u64 = 200;
    let n = p.cpu_count();
    p.run_on_all(&|cpu| {
        if cpu >= MAX_CPUS {
            note(line!(), cpu as u64);
            return;
        }
        if p.cpu_id() != cpu {
            note(line!(), p.cpu_id() as u64);
        }
        SEEN[cpu].fetch_add(1, Ordering::SeqCst);
        for _ in 0..PER_CPU {
            SUM.fetch_add(1, Ordering::SeqCst);
            SLOTS[cpu].fetch_add(1, Ordering::Relaxed);
        }
    });
    s.step_failure()?;
    check_eq!(SUM.load(Ordering::SeqCst), n as u64 * PER_CPU);
    for (cpu, (seen, slot)) in SEEN.iter().zip(&SLOTS).enumerate().take(n) {
        check_eq!((cpu, seen.load(Ordering::SeqCst)), (cpu, 1));
        check_eq!((cpu, slot.load(Ordering::SeqCst)), (cpu, PER_CPU));
    }
    // A second round sees the same.
    p.run_on_all(&|cpu| {
        if cpu < MAX_CPUS {
            SEEN[cpu].fetch_add(1, Ordering::SeqCst);
        }
    });
    for (cpu, seen) in SEEN.iter().enumerate().take(n) {
        check_eq!((cpu, seen.load(Ordering::SeqCst)), (cpu, 2));
    }
    Ok(())
}

/// Every CPU faults on its own page; the hook runs on the faulting CPU
/// (`Fault::cpu == cpu_id()` there) and maps that CPU's frame.
pub fn fault_on_every_cpu<P: Platform>(p: &'static P) -> Result<(), Failure> {
    let s = Session::begin(p)?;
    let n = p.cpu_count();
    let w = ok!(p.reserve(LARGE_PAGE_SIZE));
    let mut frames = [None::<Frame>; MAX_CPUS];
    for (cpu, slot) in frames.iter_mut().enumerate().take(n) {
        let f = ok!(p.alloc_frame(PageSize::Small));
        // SAFETY: allocated above.
        unsafe { write(frame_addr(p, f, 64), pattern(cpu as u64, 9)) };
        TABLE[cpu].store(f.addr(), Ordering::SeqCst);
        *slot = Some(f);
    }
    TABLE_BASE.store(w.base, Ordering::SeqCst);
    s.fault_hook(ACT_MAP_TABLE);
    let before = p.counters();
    p.run_on_all(&|cpu| {
        if cpu < MAX_CPUS {
            // SAFETY: the page is unmapped; the hook maps this CPU's frame.
            let v = unsafe { read(w.page(cpu as u64) + 64) };
            SLOTS[cpu].store(v, Ordering::SeqCst);
        }
    });
    let after = p.counters();
    s.step_failure()?;
    check_eq!(HOOK_ERRORS.load(Ordering::SeqCst), 0);
    check_eq!(FAULTS.load(Ordering::SeqCst), n as u64);
    check_eq!(after.since(&before).faults, n as u64);
    for (cpu, frame) in frames.iter().enumerate().take(n) {
        check_eq!(
            (cpu, SLOTS[cpu].load(Ordering::SeqCst)),
            (cpu, pattern(cpu as u64, 9))
        );
        check_eq!((cpu, CPU_FAULTS[cpu].load(Ordering::SeqCst)), (cpu, 1));
        let page = w.page(cpu as u64);
        check_eq!(p.translate(page), *frame);
        let f = ok!(p.unmap(page, PageSize::Small)).frame;
        // SAFETY: unmapped, not used again.
        unsafe { p.free_frame(f, PageSize::Small) };
    }
    Ok(())
}

/// One CPU remaps a page that another CPU has just read, calls
/// `invalidate_all`, and the other CPU then reads the new frame's data; and
/// the same with the roles swapped. Passes trivially with one CPU.
pub fn remote_sees_remap_after_invalidate_all<P: Platform>(p: &'static P) -> Result<(), Failure> {
    let s = Session::begin(p)?;
    if p.cpu_count() < 2 {
        return Ok(());
    }
    let w = ok!(p.reserve(LARGE_PAGE_SIZE));
    let a = ok!(p.alloc_frame(PageSize::Small));
    let b = ok!(p.alloc_frame(PageSize::Small));
    // SAFETY: both frames are allocated.
    unsafe {
        write(frame_addr(p, a, 0), pattern(0xa, 0));
        write(frame_addr(p, b, 0), pattern(0xb, 0));
    }
    let page = w.page(0);
    ok!(p.map(page, a, PageSize::Small, Protection::ReadWrite));
    for (round, (writer, reader)) in [(0usize, 1usize), (1, 0)].into_iter().enumerate() {
        let (old, new) = if round == 0 { (a, b) } else { (b, a) };
        STAGE.store(0, Ordering::SeqCst);
        p.run_on_all(&|cpu| {
            if cpu == reader {
                // SAFETY: mapped to `old` until the writer remaps it after
                // stage 1; read again only after stage 2 (mapped to `new`).
                let first = unsafe { read(page) };
                SLOTS[0].store(first, Ordering::SeqCst);
                STAGE.store(1, Ordering::SeqCst);
                if !wait_until(WAIT_CYCLES, || STAGE.load(Ordering::SeqCst) == 2) {
                    note(line!(), 0);
                    return;
                }
                // SAFETY: as above.
                SLOTS[1].store(unsafe { read(page) }, Ordering::SeqCst);
            } else if cpu == writer {
                if !wait_until(WAIT_CYCLES, || STAGE.load(Ordering::SeqCst) == 1) {
                    note(line!(), 0);
                    STAGE.store(2, Ordering::SeqCst);
                    return;
                }
                match p.unmap(page, PageSize::Small).map(|u| u.frame) {
                    Ok(f) if f == old => {}
                    Ok(f) => note(line!(), f.addr()),
                    Err(_) => note(line!(), 0),
                }
                if p.map(page, new, PageSize::Small, Protection::ReadWrite)
                    .is_err()
                {
                    note(line!(), new.addr());
                }
                p.invalidate_all(page);
                STAGE.store(2, Ordering::SeqCst);
            }
        });
        s.step_failure()?;
        let expect_old = if round == 0 {
            pattern(0xa, 0)
        } else {
            pattern(0xb, 0)
        };
        let expect_new = if round == 0 {
            pattern(0xb, 0)
        } else {
            pattern(0xa, 0)
        };
        check_eq!(
            (round, SLOTS[0].load(Ordering::SeqCst)),
            (round, expect_old)
        );
        check_eq!(
            (round, SLOTS[1].load(Ordering::SeqCst)),
            (round, expect_new)
        );
        check_eq!(p.translate(page), Some(new));
    }
    check_eq!(ok!(p.unmap(page, PageSize::Small)).frame, a);
    // SAFETY: unmapped, not used again.
    unsafe {
        p.free_frame(a, PageSize::Small);
        p.free_frame(b, PageSize::Small);
    }
    Ok(())
}

/// A periodic timer on this CPU calls the timer hook here, with this CPU's
/// index; after it is stopped, no more ticks arrive. Skipped where
/// `capabilities().interrupts` is false.
pub fn timer_fires<P: Platform>(p: &'static P) -> Result<(), Failure> {
    let _s = Session::begin(p)?;
    if !p.capabilities().interrupts {
        return Ok(());
    }
    let me = p.cpu_id();
    p.set_timer_hook(Some(timer_hook::<P>));
    ok!(p.set_timer(Some(1000)));
    let fired = wait_until(WAIT_CYCLES, || TICKS.load(Ordering::SeqCst) >= 3);
    ok!(p.set_timer(None));
    check!(
        fired,
        "{} ticks of a 1 ms timer",
        TICKS.load(Ordering::SeqCst)
    );
    let stopped = TICKS.load(Ordering::SeqCst);
    pause(QUIET_CYCLES);
    check_eq!(TICKS.load(Ordering::SeqCst), stopped);
    check_eq!(TICK_CPU.load(Ordering::SeqCst), me);
    check_eq!(HOOK_ERRORS.load(Ordering::SeqCst), 0);
    Ok(())
}

/// An IPI to each CPU runs the IPI hook exactly once, on that CPU. Skipped
/// where `capabilities().interrupts` is false.
pub fn ipi_runs_on_target<P: Platform>(p: &'static P) -> Result<(), Failure> {
    let _s = Session::begin(p)?;
    if !p.capabilities().interrupts {
        return Ok(());
    }
    let n = p.cpu_count();
    p.set_ipi_hook(Some(ipi_hook::<P>));
    let before = p.counters();
    for (target, count) in IPIS.iter().enumerate().take(n) {
        ok!(p.send_ipi(target));
        let arrived = wait_until(WAIT_CYCLES, || count.load(Ordering::SeqCst) >= 1);
        check!(arrived, "no IPI hook ran on CPU {target}");
    }
    let sent = p.counters().since(&before).ipis_sent;
    pause(QUIET_CYCLES);
    for (target, count) in IPIS.iter().enumerate().take(n) {
        check_eq!((target, count.load(Ordering::SeqCst)), (target, 1));
    }
    check_eq!(HOOK_ERRORS.load(Ordering::SeqCst), 0);
    check_eq!(sent, n as u64);
    Ok(())
}

/// The event counts of the mapping and TLB calls (see the module docs).
pub fn event_counts<P: Platform>(p: &'static P) -> Result<(), Failure> {
    let _s = Session::begin(p)?;
    let n = p.cpu_count() as u64;
    let w = ok!(p.reserve(LARGE_PAGE_SIZE));
    let f = ok!(p.alloc_frame(PageSize::Small));
    let g = ok!(p.alloc_frame(PageSize::Small));
    // A neighbour, so that the page table of the page below exists.
    ok!(p.map(w.page(0), g, PageSize::Small, Protection::ReadWrite));
    let page = w.page(1);

    let c = p.counters();
    ok!(p.map(page, f, PageSize::Small, Protection::ReadWrite));
    let d = p.counters().since(&c);
    check_eq!(library_events(&d), (0, 1, 0, 0, 0, 0));

    let c = p.counters();
    ok!(p.protect(page, PageSize::Small, Protection::ReadOnly));
    let d = p.counters().since(&c);
    check_eq!(library_events(&d), (0, 1, 1, 0, 0, 0));

    let c = p.counters();
    ok!(p.unmap(page, PageSize::Small));
    let d = p.counters().since(&c);
    check_eq!(library_events(&d), (0, 1, 1, 0, 0, 0));

    let c = p.counters();
    p.invalidate_local(page);
    let d = p.counters().since(&c);
    check_eq!(library_events(&d), (0, 0, 1, 0, 0, 0));

    let c = p.counters();
    p.flush_local();
    let d = p.counters().since(&c);
    check_eq!(library_events(&d), (0, 0, 0, 1, 0, 0));

    let c = p.counters();
    p.invalidate_all(page);
    let d = p.counters().since(&c);
    check_eq!(
        (
            d.faults,
            d.pte_writes,
            d.local_invalidations,
            d.local_flushes,
            d.remote_invalidations
        ),
        (0, 0, 1, 0, n - 1)
    );

    // Failed calls count nothing.
    let c = p.counters();
    let _ = p.unmap(page, PageSize::Small);
    let _ = p.map(page + 1, f, PageSize::Small, Protection::ReadWrite);
    let d = p.counters().since(&c);
    check_eq!((d.faults, d.pte_writes, d.local_invalidations), (0, 0, 0));

    check_eq!(ok!(p.unmap(w.page(0), PageSize::Small)).frame, g);
    // SAFETY: unmapped, not used again.
    unsafe {
        p.free_frame(f, PageSize::Small);
        p.free_frame(g, PageSize::Small);
    }
    Ok(())
}

/// A fault resolved by a hook that maps one page costs 1 fault and 1 page
/// table write; `send_ipi` costs 1 `ipis_sent`.
pub fn fault_event_counts<P: Platform>(p: &'static P) -> Result<(), Failure> {
    let s = Session::begin(p)?;
    let w = ok!(p.reserve(LARGE_PAGE_SIZE));
    let f = ok!(p.alloc_frame(PageSize::Small));
    let g = ok!(p.alloc_frame(PageSize::Small));
    ok!(p.map(w.page(0), g, PageSize::Small, Protection::ReadWrite));
    let page = w.page(1);
    HOOK_FRAME.store(f.addr(), Ordering::SeqCst);
    s.fault_hook(ACT_MAP_FRAME);
    let c = p.counters();
    // SAFETY: unmapped; the hook maps `f`.
    unsafe { write(page, 1) };
    let d = p.counters().since(&c);
    check_eq!(
        (
            d.faults,
            d.pte_writes,
            d.local_invalidations,
            d.remote_invalidations,
            d.ipis_sent
        ),
        (1, 1, 0, 0, 0)
    );
    check_eq!(LAST_WRITE.load(Ordering::SeqCst), true);
    check_eq!(LAST_PRESENT.load(Ordering::SeqCst), false);
    if p.capabilities().interrupts {
        p.set_ipi_hook(Some(ipi_hook::<P>));
        let c = p.counters();
        ok!(p.send_ipi(0));
        let arrived = wait_until(WAIT_CYCLES, || IPIS[0].load(Ordering::SeqCst) == 1);
        let d = p.counters().since(&c);
        check!(arrived, "no IPI hook ran on CPU 0");
        check_eq!((d.ipis_sent, d.pte_writes, d.faults), (1, 0, 0));
    }
    check_eq!(ok!(p.unmap(page, PageSize::Small)).frame, f);
    check_eq!(ok!(p.unmap(w.page(0), PageSize::Small)).frame, g);
    // SAFETY: unmapped, not used again.
    unsafe {
        p.free_frame(f, PageSize::Small);
        p.free_frame(g, PageSize::Small);
    }
    Ok(())
}

/// A window's own fault hook gets the faults of its window with its
/// context; another window's faults go to the platform-wide hook; replacing
/// the hook replaces its context; clearing it falls back to the
/// platform-wide hook; a window the platform did not reserve is refused.
pub fn window_fault_hooks<P: Platform>(p: &'static P) -> Result<(), Failure> {
    let s = Session::begin(p)?;
    WINDOW_FAULTS.store(0, Ordering::SeqCst);
    WINDOW_CONTEXT.store(0, Ordering::SeqCst);
    let own = ok!(p.reserve(LARGE_PAGE_SIZE));
    let other = ok!(p.reserve(LARGE_PAGE_SIZE));
    let frames = [
        ok!(p.alloc_frame(PageSize::Small)),
        ok!(p.alloc_frame(PageSize::Small)),
        ok!(p.alloc_frame(PageSize::Small)),
    ];
    for (i, f) in frames.iter().enumerate() {
        // SAFETY: the frames are allocated.
        unsafe { write(frame_addr(p, *f, 0), pattern(i as u64, 0)) };
    }
    // The platform-wide hook maps frame 2; the window's own maps frame 0.
    HOOK_FRAME.store(frames[2].addr(), Ordering::SeqCst);
    s.fault_hook(ACT_MAP_FRAME);
    ok!(p.set_window_fault_hook(&own, Some(window_hook::<P>), frames[0].addr() as usize));
    let page = own.page(5);
    // SAFETY: window pages, mapped by the hooks on the fault.
    check_eq!(unsafe { read(page) }, pattern(0, 0));
    check_eq!(WINDOW_FAULTS.load(Ordering::SeqCst), 1);
    check_eq!(WINDOW_CONTEXT.load(Ordering::SeqCst), frames[0].addr());
    check_eq!(FAULTS.load(Ordering::SeqCst), 0);
    // SAFETY: as above.
    check_eq!(unsafe { read(other.page(5)) }, pattern(2, 0));
    check_eq!(FAULTS.load(Ordering::SeqCst), 1);
    check_eq!(WINDOW_FAULTS.load(Ordering::SeqCst), 1);
    // A new registration: the new context comes with it.
    ok!(p.set_window_fault_hook(&own, Some(window_hook::<P>), frames[1].addr() as usize));
    check_eq!(ok!(p.unmap(page, PageSize::Small)).frame, frames[0]);
    // SAFETY: as above.
    check_eq!(unsafe { read(page) }, pattern(1, 0));
    check_eq!(WINDOW_FAULTS.load(Ordering::SeqCst), 2);
    check_eq!(WINDOW_CONTEXT.load(Ordering::SeqCst), frames[1].addr());
    // Cleared: the platform-wide hook takes the window's faults again.
    ok!(p.set_window_fault_hook(&own, None, 0));
    check_eq!(ok!(p.unmap(page, PageSize::Small)).frame, frames[1]);
    check_eq!(
        ok!(p.unmap(other.page(5), PageSize::Small)).frame,
        frames[2]
    );
    // SAFETY: as above.
    check_eq!(unsafe { read(page) }, pattern(2, 0));
    check_eq!(FAULTS.load(Ordering::SeqCst), 2);
    check_eq!(WINDOW_FAULTS.load(Ordering::SeqCst), 2);
    check_eq!(HOOK_ERRORS.load(Ordering::SeqCst), 0);
    // Not a window of this platform: a window's tail, and a made-up one.
    let tail = Window {
        base: own.page(1),
        len: own.len - PAGE_SIZE,
    };
    check_eq!(
        p.set_window_fault_hook(&tail, Some(window_hook::<P>), 0),
        Err(Error::NotInWindow(tail.base))
    );
    let nowhere = Window {
        base: OUTSIDE,
        len: LARGE_PAGE_SIZE,
    };
    check_eq!(
        p.set_window_fault_hook(&nowhere, Some(window_hook::<P>), 0),
        Err(Error::NotInWindow(nowhere.base))
    );
    check_eq!(ok!(p.unmap(page, PageSize::Small)).frame, frames[2]);
    // SAFETY: all three frames are unmapped and not used again.
    unsafe {
        for f in frames {
            p.free_frame(f, PageSize::Small);
        }
    }
    Ok(())
}

/// `remap` replaces a page's translation in one exchange: on an unmapped
/// page it maps (returns `None`, 1 PTE write, no invalidation); on a mapped
/// page it returns the old frame with its accessed/dirty state and shows the
/// new frame's contents at once (1 PTE write, 1 local invalidation, nothing
/// remote); bad input fails and counts nothing.
pub fn remap_exchanges_frames<P: Platform>(p: &'static P) -> Result<(), Failure> {
    let _s = Session::begin(p)?;
    let caps = p.capabilities();
    let expect = |accessed, dirty| expected_bits(caps, accessed, dirty);
    let (small, rw) = (PageSize::Small, Protection::ReadWrite);
    let w = ok!(p.reserve(LARGE_PAGE_SIZE));
    let a = ok!(p.alloc_frame(small));
    let b = ok!(p.alloc_frame(small));
    // A neighbour, so that the page table of the page below exists.
    ok!(p.map(w.page(0), b, small, rw));
    let page = w.page(1);
    // SAFETY: both frames are allocated.
    unsafe {
        write(frame_addr(p, a, 16), pattern(7, 1));
        write(frame_addr(p, b, 16), pattern(7, 2));
    }

    let c = p.counters();
    check_eq!(ok!(p.remap(page, a, small, rw)), None);
    let d = p.counters().since(&c);
    check_eq!(library_events(&d), (0, 1, 0, 0, 0, 0));
    check_eq!(p.translate(page), Some(a));
    // SAFETY: mapped read-write to `a`.
    unsafe {
        check_eq!(read(page + 16), pattern(7, 1));
        write(page + 24, pattern(7, 3));
        check_eq!(read(frame_addr(p, a, 24)), pattern(7, 3));
    }

    let c = p.counters();
    check_eq!(
        ok!(p.remap(page, b, small, rw)),
        Some(Unmapped {
            frame: a,
            bits: expect(true, true)
        })
    );
    let d = p.counters().since(&c);
    check_eq!(library_events(&d), (0, 1, 1, 0, 0, 0));
    check_eq!(p.translate(page), Some(b));
    // SAFETY: now mapped to `b`.
    check_eq!(unsafe { read(page + 16) }, pattern(7, 2));

    // Read-only, back to `a`: `b` was read, not written.
    check_eq!(
        ok!(p.remap(page, a, small, Protection::ReadOnly)),
        Some(Unmapped {
            frame: b,
            bits: expect(true, false)
        })
    );
    // SAFETY: mapped read-only to `a`.
    check_eq!(unsafe { read(page + 24) }, pattern(7, 3));

    // Bad input: nothing counted, nothing changed.
    let c = p.counters();
    check_eq!(
        p.remap(page + 8, b, small, rw),
        Err(Error::Unaligned(page + 8))
    );
    check_eq!(
        p.remap(OUTSIDE, b, small, rw),
        Err(Error::NotInWindow(OUTSIDE))
    );
    let large = ok!(p.alloc_frame(PageSize::Large));
    check_eq!(
        p.remap(w.base, large, PageSize::Large, rw),
        Err(Error::SizeMismatch(w.base))
    );
    // SAFETY: allocated above, never mapped.
    unsafe { p.free_frame(large, PageSize::Large) };
    let d = p.counters().since(&c);
    check_eq!((d.pte_writes, d.local_invalidations), (0, 0));
    check_eq!(p.translate(page), Some(a));

    check_eq!(ok!(p.unmap(page, small)).frame, a);
    check_eq!(ok!(p.unmap(w.page(0), small)).frame, b);
    // SAFETY: unmapped, not used again.
    unsafe {
        p.free_frame(a, small);
        p.free_frame(b, small);
    }
    Ok(())
}

/// `unmap` returns the frame with the accessed/dirty state the page had at
/// that moment: dirty after a write through the window, accessed only after
/// a read, neither when untouched (`None` where `capabilities()` says the
/// platform cannot observe them).
pub fn unmap_reports_access_bits<P: Platform>(p: &'static P) -> Result<(), Failure> {
    let _s = Session::begin(p)?;
    let caps = p.capabilities();
    let expect = |accessed, dirty| expected_bits(caps, accessed, dirty);
    let w = ok!(p.reserve(LARGE_PAGE_SIZE));
    let f = ok!(p.alloc_frame(PageSize::Small));
    let page = w.page(2);
    let rw = Protection::ReadWrite;
    ok!(p.map(page, f, PageSize::Small, rw));
    // SAFETY: mapped read-write.
    unsafe { write(page + 8, 1) };
    check_eq!(
        ok!(p.unmap(page, PageSize::Small)),
        Unmapped {
            frame: f,
            bits: expect(true, true)
        }
    );
    ok!(p.map(page, f, PageSize::Small, rw));
    // SAFETY: mapped read-write.
    check_eq!(unsafe { read(page + 8) }, 1);
    check_eq!(
        ok!(p.unmap(page, PageSize::Small)),
        Unmapped {
            frame: f,
            bits: expect(true, false)
        }
    );
    ok!(p.map(page, f, PageSize::Small, Protection::ReadOnly));
    check_eq!(
        ok!(p.unmap(page, PageSize::Small)),
        Unmapped {
            frame: f,
            bits: expect(false, false)
        }
    );
    // A large page reports its own entry's bits (in a window of its own: a
    // 2 MiB range that held small pages may keep its page table).
    let big = ok!(p.reserve(LARGE_PAGE_SIZE));
    let large = ok!(p.alloc_frame(PageSize::Large));
    ok!(p.map(big.base, large, PageSize::Large, rw));
    // SAFETY: mapped read-write.
    unsafe { write(big.base + LARGE_PAGE_SIZE - 8, 2) };
    check_eq!(
        ok!(p.unmap(big.base, PageSize::Large)),
        Unmapped {
            frame: large,
            bits: expect(true, true)
        }
    );
    // SAFETY: both unmapped, not used again.
    unsafe {
        p.free_frame(f, PageSize::Small);
        p.free_frame(large, PageSize::Large);
    }
    Ok(())
}

/// `protect` returns the state before and keeps the dirty (and accessed)
/// state: a page written, then made read-only, is still dirty, and an
/// `unmap` after that reports it dirty.
pub fn protect_keeps_dirty<P: Platform>(p: &'static P) -> Result<(), Failure> {
    let _s = Session::begin(p)?;
    let caps = p.capabilities();
    let expect = |accessed, dirty| expected_bits(caps, accessed, dirty);
    let w = ok!(p.reserve(LARGE_PAGE_SIZE));
    let f = ok!(p.alloc_frame(PageSize::Small));
    let page = w.page(4);
    ok!(p.map(page, f, PageSize::Small, Protection::ReadWrite));
    check_eq!(
        ok!(p.protect(page, PageSize::Small, Protection::ReadWrite)),
        expect(false, false)
    );
    // SAFETY: mapped read-write.
    unsafe { write(page, 3) };
    check_eq!(
        ok!(p.protect(page, PageSize::Small, Protection::ReadOnly)),
        expect(true, true)
    );
    check_eq!(ok!(p.access_bits(page)), expect(true, true));
    // SAFETY: mapped read-only: reads succeed.
    check_eq!(unsafe { read(page) }, 3);
    check_eq!(
        ok!(p.protect(page, PageSize::Small, Protection::ReadWrite)),
        expect(true, true)
    );
    check_eq!(
        ok!(p.unmap(page, PageSize::Small)),
        Unmapped {
            frame: f,
            bits: expect(true, true)
        }
    );
    // SAFETY: unmapped, not used again.
    unsafe { p.free_frame(f, PageSize::Small) };
    Ok(())
}

/// `unmap_many` unmaps each page and reports each one's outcome (frame and
/// bits, or the error of a page that is not mapped), at the cost of that
/// many `unmap`s; `invalidate_local_many` costs one local invalidation per
/// page.
pub fn unmap_many_and_invalidate_many<P: Platform>(p: &'static P) -> Result<(), Failure> {
    let _s = Session::begin(p)?;
    let caps = p.capabilities();
    let expect = |accessed, dirty| expected_bits(caps, accessed, dirty);
    let w = ok!(p.reserve(LARGE_PAGE_SIZE));
    let f = ok!(p.alloc_frame(PageSize::Small));
    let g = ok!(p.alloc_frame(PageSize::Small));
    let pages = [w.page(0), w.page(1), w.page(2), w.page(3)];
    ok!(p.map(pages[0], f, PageSize::Small, Protection::ReadWrite));
    ok!(p.map(pages[1], g, PageSize::Small, Protection::ReadWrite));
    ok!(p.map(pages[2], f, PageSize::Small, Protection::ReadOnly));
    // SAFETY: mapped (0 read-write, 2 read-only).
    unsafe {
        write(pages[0], 1);
        read(pages[2]);
    }
    let mut results = [Ok(Unmapped {
        frame: f,
        bits: AccessBits::default(),
    }); 4];
    let c = p.counters();
    p.unmap_many(&pages, PageSize::Small, &mut results);
    let d = p.counters().since(&c);
    check_eq!(library_events(&d), (0, 3, 3, 0, 0, 0));
    check_eq!(
        results,
        [
            Ok(Unmapped {
                frame: f,
                bits: expect(true, true)
            }),
            Ok(Unmapped {
                frame: g,
                bits: expect(false, false)
            }),
            Ok(Unmapped {
                frame: f,
                bits: expect(true, false)
            }),
            Err(Error::NotMapped(pages[3])),
        ]
    );
    for page in pages {
        check_eq!(p.translate(page), None);
    }
    // Bad pages are reported, not fatal.
    let mut two = [Ok(Unmapped {
        frame: f,
        bits: AccessBits::default(),
    }); 2];
    p.unmap_many(&[OUTSIDE, w.page(0) + 8], PageSize::Small, &mut two);
    check_eq!(
        two,
        [
            Err(Error::NotInWindow(OUTSIDE)),
            Err(Error::Unaligned(w.page(0) + 8))
        ]
    );
    let c = p.counters();
    p.invalidate_local_many(&pages);
    p.invalidate_local_many(&[]);
    let d = p.counters().since(&c);
    check_eq!(library_events(&d), (0, 0, 4, 0, 0, 0));
    // SAFETY: unmapped, not used again.
    unsafe {
        p.free_frame(f, PageSize::Small);
        p.free_frame(g, PageSize::Small);
    }
    Ok(())
}

/// A clock sweep with `test_and_clear_accessed`: it reports each page's
/// state before (`None` for pages not mapped), clears the accessed bit and
/// keeps the dirty bit, and costs one page-table write and one local
/// invalidation per accessed page only. Where accessed bits are not
/// observable, mapped pages report `None` bits, nothing is cleared, and it
/// costs nothing.
pub fn test_and_clear_accessed_sweep<P: Platform>(p: &'static P) -> Result<(), Failure> {
    let _s = Session::begin(p)?;
    let caps = p.capabilities();
    let expect = |accessed, dirty| Some(expected_bits(caps, accessed, dirty));
    let w = ok!(p.reserve(LARGE_PAGE_SIZE));
    let f = ok!(p.alloc_frame(PageSize::Small));
    for i in 0..4 {
        ok!(p.map(w.page(i), f, PageSize::Small, Protection::ReadWrite));
    }
    let mut bits = [None; 5];
    // Start from a clean state: every page not accessed.
    ok!(p.test_and_clear_accessed(w.page(0), PageSize::Small, &mut bits));
    // SAFETY: mapped read-write.
    unsafe {
        read(w.page(1));
        write(w.page(2), 7);
    }
    let c = p.counters();
    let accessed = ok!(p.test_and_clear_accessed(w.page(0), PageSize::Small, &mut bits));
    let d = p.counters().since(&c);
    if caps.accessed_bit {
        check_eq!(accessed, 2);
        check_eq!(library_events(&d), (0, 2, 2, 0, 0, 0));
    } else {
        check_eq!(accessed, 0);
        check_eq!(library_events(&d), (0, 0, 0, 0, 0, 0));
    }
    check_eq!(
        bits,
        [
            expect(false, false),
            expect(true, false),
            expect(true, true),
            expect(false, false),
            None
        ]
    );
    // Nothing touched since: nothing accessed, nothing written; the dirty
    // bit stayed.
    let c = p.counters();
    check_eq!(
        ok!(p.test_and_clear_accessed(w.page(0), PageSize::Small, &mut bits)),
        0
    );
    let d = p.counters().since(&c);
    check_eq!(library_events(&d), (0, 0, 0, 0, 0, 0));
    check_eq!(bits[2], expect(false, true));
    // The range is checked first.
    check_eq!(
        p.test_and_clear_accessed(w.page(0) + 8, PageSize::Small, &mut bits),
        Err(Error::Unaligned(w.page(0) + 8))
    );
    check_eq!(
        p.test_and_clear_accessed(OUTSIDE, PageSize::Small, &mut bits),
        Err(Error::NotInWindow(OUTSIDE))
    );
    let last = w.page(w.len / PAGE_SIZE - 2);
    check_eq!(
        p.test_and_clear_accessed(last, PageSize::Small, &mut bits),
        Err(Error::NotInWindow(last))
    );
    for i in 0..4 {
        check_eq!(ok!(p.unmap(w.page(i), PageSize::Small)).frame, f);
    }
    // SAFETY: unmapped, not used again.
    unsafe { p.free_frame(f, PageSize::Small) };
    Ok(())
}

/// How many times [`release_gives_back`] reserves and releases a window: more
/// than either platform has window slots (the guest 32, the process 1024),
/// so a slot that is not given back fails it.
pub const RELEASE_CYCLES: usize = 1040;

/// One reserve, map, release cycle of [`release_gives_back`]: a 4 MiB
/// window with a frame at two small pages and a large frame, released;
/// every frame reported, freed; free frames back to `before` exactly.
/// Returns the window and the release.
fn release_cycle<P: Platform>(p: &'static P) -> Result<(Window, Released), Failure> {
    let n = p.cpu_count() as u64;
    let before = p.free_frames();
    let w = ok!(p.reserve(2 * LARGE_PAGE_SIZE));
    let f = ok!(p.alloc_frame(PageSize::Small));
    let large = ok!(p.alloc_frame(PageSize::Large));
    ok!(p.map(w.page(0), f, PageSize::Small, Protection::ReadWrite));
    ok!(p.map(w.page(5), f, PageSize::Small, Protection::ReadOnly));
    let big = w.base + LARGE_PAGE_SIZE;
    ok!(p.map(big, large, PageSize::Large, Protection::ReadWrite));
    // SAFETY: both pages are mapped read-write.
    unsafe {
        write(w.page(0), pattern(7, 1));
        write(big + 8, pattern(7, 2));
    }
    let data = 1 + LARGE_PAGE_SIZE / PAGE_SIZE;
    // Page-table pages the mappings created (0 in a process).
    let tables = before - p.free_frames() - data;
    let c = p.counters();
    let mut seen = [None; 4];
    let mut calls = 0;
    // SAFETY: nothing accesses the window from here on (this check owns it)
    // and none of its tables is linked from elsewhere.
    let r = ok!(unsafe {
        p.release(w, &mut |page, size, u| {
            if let Some(slot) = seen.get_mut(calls) {
                *slot = Some((page, size, u.frame));
            }
            calls += 1;
        })
    });
    let d = p.counters().since(&c);
    check_eq!(r.pages, 3);
    check_eq!(calls, 3);
    check_eq!(
        seen,
        [
            Some((w.page(0), PageSize::Small, f)),
            Some((w.page(5), PageSize::Small, f)),
            Some((big, PageSize::Large, large)),
            None
        ]
    );
    if p.capabilities().accessed_bit {
        // Page tables of its own (the guest): every table the window made is
        // freed, each entry cleared is one write, one flush of every CPU.
        check_eq!(r.tables, tables);
        check_eq!(library_events(&d), (0, 3 + tables, 0, 1, n - 1, n - 1));
    } else {
        check_eq!((r.tables, tables), (0, 0));
        check_eq!(library_events(&d), (0, 1, 0, 0, 0, 0));
    }
    // The frames kept their data and are the caller's to free.
    // SAFETY: both are allocated (reported, not freed, by the release).
    unsafe {
        check_eq!(read(frame_addr(p, f, 0)), pattern(7, 1));
        check_eq!(read(frame_addr(p, large, 8)), pattern(7, 2));
    }
    check_eq!(p.free_frames(), before - data);
    // SAFETY: reported by the release: unmapped everywhere, not used again.
    unsafe {
        p.free_frame(f, PageSize::Small);
        p.free_frame(large, PageSize::Large);
    }
    check_eq!(p.free_frames(), before);
    Ok((w, r))
}

/// `release` unmaps what is still mapped, reports each such page once with
/// its frame (which it does not free), frees the window's page tables (free
/// frames back to the baseline exactly), costs what the contract says,
/// makes the range unusable (`translate` None, calls `NotInWindow`), refuses
/// a second release and a part of a window (`NotReserved`), and gives the
/// slot back: [`RELEASE_CYCLES`] windows reserved and released one after
/// the other all succeed (more than either platform's slots). In the guest
/// (where address space is reused as a stack), the next window of the same
/// size gets the same base.
pub fn release_gives_back<P: Platform>(p: &'static P) -> Result<(), Failure> {
    let _s = Session::begin(p)?;
    let guest = p.capabilities().accessed_bit;
    let (w, _) = release_cycle(p)?;
    // A second cycle: the same costs and the same exact balance, whatever
    // tables the first one found in place.
    let (w2, _) = release_cycle(p)?;
    if guest {
        check_eq!(w2.base, w.base);
    }
    check_eq!(p.translate(w2.page(0)), None);
    check_eq!(p.translate(w2.base + LARGE_PAGE_SIZE), None);
    let f = ok!(p.alloc_frame(PageSize::Small));
    check_eq!(
        p.map(w2.page(0), f, PageSize::Small, Protection::ReadWrite),
        Err(Error::NotInWindow(w2.page(0)))
    );
    check_eq!(
        p.set_window_fault_hook(&w2, None, 0),
        Err(Error::NotInWindow(w2.base))
    );
    // SAFETY: released already: the call must refuse it and change nothing.
    let again = unsafe { p.release(w2, &mut |_, _, _| {}) };
    check_eq!(again, Err(Error::NotReserved(w2.base)));
    // A part of a live window is not a window.
    let live = ok!(p.reserve(2 * LARGE_PAGE_SIZE));
    let half = Window {
        base: live.base,
        len: LARGE_PAGE_SIZE,
    };
    // SAFETY: refused (not a whole window): nothing is released.
    let part = unsafe { p.release(half, &mut |_, _, _| {}) };
    check_eq!(part, Err(Error::NotReserved(live.base)));
    ok!(p.map(live.page(1), f, PageSize::Small, Protection::ReadWrite));
    check_eq!(p.translate(live.page(1)), Some(f));
    // An empty window: nothing written, nothing flushed, in the guest.
    let c = p.counters();
    let mut calls = 0;
    let e = ok!(p.reserve(LARGE_PAGE_SIZE));
    // SAFETY: this check owns the window and never used it.
    let r = ok!(unsafe { p.release(e, &mut |_, _, _| calls += 1) });
    let d = p.counters().since(&c);
    check_eq!((r, calls), (Released::default(), 0));
    if guest {
        check_eq!(library_events(&d), (0, 0, 0, 0, 0, 0));
    }
    for i in 0..RELEASE_CYCLES {
        let w = match p.reserve(LARGE_PAGE_SIZE) {
            Ok(w) => w,
            Err(e) => fail!("reserve {i} of {RELEASE_CYCLES}: {e:?}"),
        };
        // SAFETY: as above.
        ok!(unsafe { p.release(w, &mut |_, _, _| {}) });
    }
    let mut reported = 0;
    // SAFETY: this check owns `live`; nothing accesses it any more.
    let r = ok!(unsafe { p.release(live, &mut |_, _, u| reported += u.frame.addr()) });
    check_eq!((r.pages, reported), (1, f.addr()));
    // SAFETY: reported by the release, not used again.
    unsafe { p.free_frame(f, PageSize::Small) };
    Ok(())
}
