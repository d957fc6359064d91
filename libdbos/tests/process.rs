//! The process platform: every conformance check (one test each), and the
//! behaviours specific to a process: fatal faults kill the process with
//! SIGSEGV (checked in a child process), hooks that map and allocate in
//! signal context while other threads do the same, frame reuse and
//! exhaustion, configuration errors, and exact event counts per operation.
//!
//! The conformance checks share one platform and run one at a time (they use
//! process-wide statics); the tests take a lock for that.

use libdbos::conformance::{self, costs};
use libdbos::platform::{
    Error, Fault, FaultResolution, Frame, PageSize, Platform, Protection, Window, LARGE_PAGE_SIZE,
    PAGE_SIZE,
};
use libdbos::process::{maps, Config, MapCount, ProcessPlatform};
use std::os::unix::process::ExitStatusExt;
use std::process::Command;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, OnceLock};

const CPUS: usize = 2;

/// The platform the conformance checks share.
fn shared() -> &'static ProcessPlatform {
    static P: OnceLock<&'static ProcessPlatform> = OnceLock::new();
    P.get_or_init(|| {
        ProcessPlatform::new(Config {
            frames: 8192,
            cpus: CPUS,
            ..Config::default()
        })
        .expect("process platform")
    })
}

/// Serialises the tests that use hooks or the conformance statics.
fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

macro_rules! conformance_tests {
    ($($name:ident),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                let _g = serial();
                let p = shared();
                if let Err(f) = conformance::run_one(p, stringify!($name), conformance::$name::<ProcessPlatform>) {
                    panic!("{f}");
                }
            }
        )*

        /// Every check in `conformance::checks` has a test above.
        #[test]
        fn every_check_has_a_test() {
            let ours = [$(stringify!($name)),*];
            let listed: Vec<&str> = conformance::checks::<ProcessPlatform>().iter().map(|(n, _)| *n).collect();
            assert_eq!(listed, ours);
        }
    };
}

conformance_tests!(
    frames_alloc_free,
    map_write_unmap_fault_remap,
    window_and_direct_map_agree,
    write_protect_fault,
    access_bits,
    bad_input_errors,
    large_page_errors,
    translate_before_after,
    large_mapping,
    per_cpu_counter,
    fault_on_every_cpu,
    remote_sees_remap_after_invalidate_all,
    timer_fires,
    ipi_runs_on_target,
    event_counts,
    fault_event_counts,
    window_fault_hooks,
    unmap_reports_access_bits,
    protect_keeps_dirty,
    unmap_many_and_invalidate_many,
    test_and_clear_accessed_sweep,
    remap_exchanges_frames,
    release_gives_back,
);

#[test]
fn run_all_reports_every_check() {
    let _g = serial();
    let mut names = Vec::new();
    let passed = conformance::run_all(shared(), |name, result| {
        assert!(result.is_ok(), "{name}: {result:?}");
        names.push(name);
    })
    .unwrap_or_else(|f| panic!("{f}"));
    assert_eq!(passed, conformance::checks::<ProcessPlatform>().len());
    assert_eq!(names.len(), passed);
}

// ---- the cost table ------------------------------------------------------------

#[test]
fn costs_are_exact() {
    let _g = serial();
    let p = shared();
    let n = 50;
    let costs = costs::measure(p, n).unwrap_or_else(|f| panic!("{f}"));
    let row = |name: &str| {
        let c = costs
            .iter()
            .find(|c| c.operation == name)
            .unwrap_or_else(|| panic!("no row {name}"));
        assert_eq!(c.ops, n, "{name}");
        let e = c.events;
        (
            e.faults,
            e.pte_writes,
            e.local_invalidations,
            e.local_flushes,
            e.remote_invalidations,
            e.ipis_sent,
            e.vmm_exits,
        )
    };
    let r = CPUS as u64 - 1;
    assert_eq!(row("map 4 KiB page"), (0, n, 0, 0, 0, 0, 0));
    assert_eq!(row("unmap 4 KiB page"), (0, n, n, 0, 0, 0, 0));
    assert_eq!(
        row("map + write + unmap 4 KiB page, other CPUs idle"),
        (0, 2 * n, n, 0, 0, 0, 0)
    );
    assert_eq!(
        row("map + write + unmap 4 KiB page, another CPU reading the window"),
        (0, 2 * n, n, 0, 0, 0, 0)
    );
    assert_eq!(
        row("protect 4 KiB page read-only, then read-write"),
        (0, 2 * n, 2 * n, 0, 0, 0, 0)
    );
    assert_eq!(
        row("unmap 4 KiB page, then fault it in (the hook maps it)"),
        (n, 2 * n, n, 0, 0, 0, 0)
    );
    assert_eq!(
        row("map + write + unmap 2 MiB page"),
        (0, 2 * n, n, 0, 0, 0, 0)
    );
    assert_eq!(row("invalidate_local"), (0, 0, n, 0, 0, 0, 0));
    assert_eq!(row("flush_local"), (0, 0, 0, n, 0, 0, 0));
    assert_eq!(row("invalidate_all"), (0, 0, n, 0, r * n, 0, 0));
    assert_eq!(
        row("send_ipi (and wait for the hook)"),
        (0, 0, 0, 0, 0, n, 0)
    );
    assert_eq!(row("alloc + free 4 KiB frame"), (0, 0, 0, 0, 0, 0, 0));
    // The batched calls loop: one system call per page unmapped; accessed
    // bits are not observable, so the sweep does nothing.
    assert_eq!(
        row("unmap_many, 16 written pages a call (per page)"),
        (0, n, n, 0, 0, 0, 0)
    );
    assert_eq!(
        row("invalidate_local_many, 16 pages a call (per page)"),
        (0, 0, n, 0, 0, 0, 0)
    );
    assert_eq!(
        row("test_and_clear_accessed, page accessed (per page)"),
        (0, 0, 0, 0, 0, 0, 0)
    );
    assert_eq!(
        row("test_and_clear_accessed, page not accessed (per page)"),
        (0, 0, 0, 0, 0, 0, 0)
    );
    assert_eq!(
        row("remap mapped 4 KiB page to another frame"),
        (0, n, n, 0, 0, 0, 0),
        "one mmap(MAP_FIXED), standing for one exchange and one invlpg"
    );
    assert_eq!(
        row("reserve 2 MiB window, map 1 page, release it (still mapped)"),
        (0, 2 * n, 0, 0, 0, 0, 0),
        "one mmap for the map, one munmap for the release"
    );
    assert_eq!(
        row("reserve 2 MiB window, release it empty"),
        (0, n, 0, 0, 0, 0, 0),
        "one munmap"
    );
    let mut table = String::new();
    costs::write_markdown(&mut table, &costs).unwrap();
    assert!(
        table.contains("| map 4 KiB page | 0 | 1 | 0 | 0 | 0 | 0 | 0 |"),
        "{table}"
    );
    assert!(
        table.contains("| invalidate_all | 0 | 0 | 1 | 0 | 1 | 0 | 0 |"),
        "{table}"
    );
    assert_eq!(costs::measure(p, 0).err().map(|f| f.line > 0), Some(true));
}

// ---- fatal faults, in a child process ------------------------------------------

const CHILD_ENV: &str = "DBOS_PROCESS_TEST_CHILD";

/// Runs the test `child` of this binary in a child process with
/// `CHILD_ENV=what`; returns its exit status and stderr.
fn run_child(what: &str) -> (std::process::ExitStatus, String) {
    let out = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "child", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, what)
        .output()
        .unwrap();
    (
        out.status,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// What the child does (nothing when run as an ordinary test).
#[test]
fn child() {
    let Ok(what) = std::env::var(CHILD_ENV) else {
        return;
    };
    let p = ProcessPlatform::new(Config {
        frames: 1024,
        cpus: 1,
        ..Config::default()
    })
    .unwrap();
    let w = p.reserve(LARGE_PAGE_SIZE).unwrap();
    let page = w.page(2);
    let target = match what.as_str() {
        "outside" => 8, // the null page: in no window
        "no-hook" => page + 16,
        "unhandled" => {
            p.set_fault_hook(Some(|_| FaultResolution::Unhandled));
            page + 16
        }
        "hook-faults" => {
            // The hook touches another unmapped window page: SIGSEGV inside
            // the SIGSEGV handler.
            static OTHER: AtomicU64 = AtomicU64::new(0);
            OTHER.store(w.page(3), Ordering::SeqCst);
            p.set_fault_hook(Some(|_| {
                // SAFETY: deliberately faults (the test expects the process to die).
                unsafe { std::ptr::read_volatile(OTHER.load(Ordering::SeqCst) as *const u64) };
                FaultResolution::Retry
            }));
            page + 16
        }
        "read-only" => {
            let f = p.alloc_frame(PageSize::Small).unwrap();
            p.map(page, f, PageSize::Small, Protection::ReadOnly)
                .unwrap();
            // No hook: the write to a read-only page is fatal.
            // SAFETY: deliberately faults.
            unsafe { std::ptr::write_volatile((page + 16) as *mut u64, 1) };
            unreachable!("the write to a read-only page did not fault");
        }
        "real-limit" => {
            // Scattered maps of one frame with the real vm.max_map_count:
            // they stop with MappingLimit, before the kernel's ENOMEM.
            let allowed = p.map_count().allowed;
            let w = p.reserve(2 * allowed * PAGE_SIZE).unwrap();
            let f = p.alloc_frame(PageSize::Small).unwrap();
            let mut mapped = 0;
            let refused = loop {
                match p.map(w.page(2 * mapped), f, PageSize::Small, Protection::ReadOnly) {
                    Ok(()) => mapped += 1,
                    Err(e) => break e,
                }
            };
            assert!(matches!(refused, Error::MappingLimit { .. }), "{refused}");
            assert!(p.map_count().charged + 2 > allowed);
            let vmas = std::fs::read_to_string("/proc/self/maps")
                .unwrap()
                .lines()
                .count() as u64;
            assert!(vmas < p.map_count().limit, "{vmas} VMAs");
            // At the limit, a map is refused; an unmap is not and makes room
            // for one more map (the next frame after `f`, at the page after
            // page 0, so the kernel merges the two), which unmaps again.
            p.map(w.page(1), f, PageSize::Small, Protection::ReadOnly)
                .unwrap_err();
            let g = p.alloc_frame(PageSize::Small).unwrap();
            p.unmap(w.page(2), PageSize::Small).unwrap();
            p.map(w.page(1), g, PageSize::Small, Protection::ReadOnly)
                .unwrap();
            p.unmap(w.page(1), PageSize::Small).unwrap();
            eprintln!("refused after {mapped} maps with {vmas} VMAs: {refused}");
            std::process::exit(0);
        }
        other => panic!("unknown child action {other}"),
    };
    // SAFETY: deliberately faults (the parent expects the child to die).
    let v = unsafe { std::ptr::read_volatile(target as *const u64) };
    eprintln!("child survived, read {v:#x}");
    std::process::exit(3);
}

fn assert_killed_by_sigsegv(what: &str, message: &str) {
    let (status, stderr) = run_child(what);
    assert_eq!(
        status.signal(),
        Some(libc::SIGSEGV),
        "{what}: {status:?}, stderr: {stderr}"
    );
    assert!(
        stderr.contains(message),
        "{what}: stderr lacks {message:?}: {stderr}"
    );
}

#[test]
fn fault_outside_every_window_is_a_segfault() {
    assert_killed_by_sigsegv("outside", "dbos: segmentation fault at 0x8 (ip 0x");
    assert_killed_by_sigsegv("outside", "outside every window");
}

#[test]
fn fault_without_a_hook_is_a_segfault() {
    assert_killed_by_sigsegv("no-hook", "in a window with no fault hook set");
}

#[test]
fn unhandled_fault_is_a_segfault() {
    assert_killed_by_sigsegv("unhandled", "the fault hook did not resolve the fault");
}

#[test]
fn fault_inside_the_hook_is_a_segfault() {
    // The kernel kills it (SIGSEGV is blocked in the handler): no message.
    let (status, stderr) = run_child("hook-faults");
    assert_eq!(
        status.signal(),
        Some(libc::SIGSEGV),
        "{status:?}, stderr: {stderr}"
    );
    assert!(!stderr.contains("child survived"), "{stderr}");
}

#[test]
fn write_to_read_only_page_without_hook_is_a_segfault() {
    assert_killed_by_sigsegv("read-only", "no fault hook set");
}

// ---- signal safety ------------------------------------------------------------------

static STRESS: OnceLock<&'static ProcessPlatform> = OnceLock::new();
static STRESS_BASE: AtomicU64 = AtomicU64::new(0);
static STRESS_HOOK_ERRORS: AtomicUsize = AtomicUsize::new(0);
static STRESS_TICKS: AtomicUsize = AtomicUsize::new(0);

/// Allocates a frame, fills it and maps it at the faulting page, all in the
/// signal handler.
fn stress_fault_hook(f: &Fault) -> FaultResolution {
    let p = STRESS.get().unwrap();
    let page = f.addr & !(PAGE_SIZE - 1);
    let Ok(frame) = p.alloc_frame(PageSize::Small) else {
        STRESS_HOOK_ERRORS.fetch_add(1, Ordering::SeqCst);
        return FaultResolution::Unhandled;
    };
    // SAFETY: a fresh frame: its direct view is ours.
    unsafe { *(p.frame_ptr(frame) as *mut u64) = page };
    match p.map(page, frame, PageSize::Small, Protection::ReadWrite) {
        Ok(()) => FaultResolution::Retry,
        Err(_) => {
            STRESS_HOOK_ERRORS.fetch_add(1, Ordering::SeqCst);
            FaultResolution::Unhandled
        }
    }
}

/// On every tick, maps and unmaps a page of its own (in signal context, while
/// the interrupted thread may be inside a platform call).
fn stress_timer_hook(cpu: usize) {
    let p = STRESS.get().unwrap();
    let page = STRESS_BASE.load(Ordering::SeqCst) + LARGE_PAGE_SIZE + cpu as u64 * PAGE_SIZE;
    let Ok(frame) = p.alloc_frame(PageSize::Small) else {
        STRESS_HOOK_ERRORS.fetch_add(1, Ordering::SeqCst);
        return;
    };
    let ok = p
        .map(page, frame, PageSize::Small, Protection::ReadWrite)
        .is_ok()
        && p.unmap(page, PageSize::Small).map(|u| u.frame) == Ok(frame);
    // SAFETY: unmapped again, not used afterwards.
    unsafe { p.free_frame(frame, PageSize::Small) };
    if !ok {
        STRESS_HOOK_ERRORS.fetch_add(1, Ordering::SeqCst);
    }
    STRESS_TICKS.fetch_add(1, Ordering::SeqCst);
}

#[test]
fn hooks_allocate_and_map_in_signal_context() {
    let _g = serial();
    const PAGES_PER_CPU: u64 = 200;
    let p = *STRESS.get_or_init(|| {
        ProcessPlatform::new(Config {
            frames: 4096,
            cpus: CPUS,
            ..Config::default()
        })
        .unwrap()
    });
    let w = p.reserve(2 * LARGE_PAGE_SIZE).unwrap();
    STRESS_BASE.store(w.base, Ordering::SeqCst);
    let free_before = p.free_frames();
    let counts_before = p.counters();
    p.set_fault_hook(Some(stress_fault_hook));
    p.set_timer_hook(Some(stress_timer_hook));
    let bad = AtomicUsize::new(0);
    p.run_on_all(&|cpu| {
        // Each CPU's timer interrupts it while it faults pages in and
        // unmaps and frees them again.
        p.set_timer(Some(200)).unwrap();
        for round in 0..3 {
            for i in 0..PAGES_PER_CPU {
                let page = w.page(cpu as u64 * PAGES_PER_CPU + i);
                // SAFETY: unmapped; the hook maps a frame holding `page`.
                let v = unsafe { std::ptr::read_volatile(page as *const u64) };
                if v != page {
                    bad.fetch_add(1, Ordering::SeqCst);
                }
            }
            for i in 0..PAGES_PER_CPU {
                let page = w.page(cpu as u64 * PAGES_PER_CPU + i);
                match p.unmap(page, PageSize::Small).map(|u| u.frame) {
                    // SAFETY: unmapped now, not used again.
                    Ok(f) => unsafe { p.free_frame(f, PageSize::Small) },
                    Err(e) => panic!("round {round}: unmap {page:#x}: {e}"),
                }
            }
        }
        p.set_timer(None).unwrap();
    });
    p.set_fault_hook(None);
    p.set_timer_hook(None);
    assert_eq!(bad.load(Ordering::SeqCst), 0);
    assert_eq!(STRESS_HOOK_ERRORS.load(Ordering::SeqCst), 0);
    assert_eq!(p.free_frames(), free_before, "every frame came back");
    assert!(STRESS_TICKS.load(Ordering::SeqCst) > 0);
    assert_eq!(
        p.counters().since(&counts_before).faults,
        3 * PAGES_PER_CPU * CPUS as u64
    );
    for i in 0..2 * PAGES_PER_CPU {
        assert_eq!(p.translate(w.page(i)), None);
    }
}

static NESTED_PAGE: AtomicU64 = AtomicU64::new(0);
static NESTED_READS: AtomicU64 = AtomicU64::new(0);

/// Reads an unmapped window page from the timer hook: the fault hook runs
/// inside the timer handler and maps it.
fn nested_timer_hook(_cpu: usize) {
    let page = NESTED_PAGE.load(Ordering::SeqCst);
    // SAFETY: a window page; the fault hook maps a frame holding `page`.
    let v = unsafe { std::ptr::read_volatile(page as *const u64) };
    if v == page {
        NESTED_READS.fetch_add(1, Ordering::SeqCst);
    }
}

#[test]
fn fault_inside_a_timer_hook_reaches_the_fault_hook() {
    let _g = serial();
    let p = *STRESS.get_or_init(|| {
        ProcessPlatform::new(Config {
            frames: 4096,
            cpus: CPUS,
            ..Config::default()
        })
        .unwrap()
    });
    let w = p.reserve(LARGE_PAGE_SIZE).unwrap();
    NESTED_PAGE.store(w.page(9), Ordering::SeqCst);
    p.set_fault_hook(Some(stress_fault_hook));
    p.set_timer_hook(Some(nested_timer_hook));
    let before = p.counters();
    p.set_timer(Some(1000)).unwrap();
    let start = std::time::Instant::now();
    while NESTED_READS.load(Ordering::SeqCst) < 3 && start.elapsed().as_secs() < 5 {
        std::hint::spin_loop();
    }
    p.set_timer(None).unwrap();
    p.set_timer_hook(None);
    p.set_fault_hook(None);
    assert!(NESTED_READS.load(Ordering::SeqCst) >= 3);
    // Only the first read faulted; the page stayed mapped.
    assert_eq!(p.counters().since(&before).faults, 1);
    let f = p.unmap(w.page(9), PageSize::Small).unwrap().frame;
    // SAFETY: unmapped, not used again.
    unsafe { p.free_frame(f, PageSize::Small) };
}

#[test]
fn errno_survives_a_fault() {
    let _g = serial();
    let p = STRESS.get_or_init(|| {
        ProcessPlatform::new(Config {
            frames: 4096,
            cpus: CPUS,
            ..Config::default()
        })
        .unwrap()
    });
    let w = p.reserve(LARGE_PAGE_SIZE).unwrap();
    STRESS_BASE.store(w.base, Ordering::SeqCst);
    p.set_fault_hook(Some(stress_fault_hook));
    // SAFETY: close(-1) fails with EBADF and touches nothing.
    assert_eq!(unsafe { libc::close(-1) }, -1);
    // The hook's own system calls (mmap) succeed; errno must still be EBADF.
    // SAFETY: unmapped; the hook maps a frame.
    let v = unsafe { std::ptr::read_volatile(w.page(0) as *const u64) };
    let errno = std::io::Error::last_os_error().raw_os_error();
    p.set_fault_hook(None);
    assert_eq!(v, w.page(0));
    assert_eq!(errno, Some(libc::EBADF));
    let f = p.unmap(w.page(0), PageSize::Small).unwrap().frame;
    // SAFETY: unmapped, not used again.
    unsafe { p.free_frame(f, PageSize::Small) };
}

// ---- frames ---------------------------------------------------------------------------

#[test]
fn freed_frames_are_reused_first() {
    let p = ProcessPlatform::new(Config {
        frames: 2048,
        cpus: 1,
        ..Config::default()
    })
    .unwrap();
    let a = p.alloc_frame(PageSize::Small).unwrap();
    let b = p.alloc_frame(PageSize::Small).unwrap();
    assert_eq!((a.addr(), b.addr()), (0, PAGE_SIZE));
    // SAFETY: allocated, never mapped.
    unsafe { p.free_frame(a, PageSize::Small) };
    assert_eq!(p.alloc_frame(PageSize::Small), Ok(a));
    // SAFETY: as above.
    unsafe {
        p.free_frame(b, PageSize::Small);
        p.free_frame(a, PageSize::Small);
    }
    assert_eq!(p.alloc_frame(PageSize::Small), Ok(a));
    assert_eq!(p.alloc_frame(PageSize::Small), Ok(b));
    // Chunk 0 is split; large frames come from the next chunks, lowest first.
    let l1 = p.alloc_frame(PageSize::Large).unwrap();
    let l2 = p.alloc_frame(PageSize::Large).unwrap();
    assert_eq!(
        (l1.addr(), l2.addr()),
        (LARGE_PAGE_SIZE, 2 * LARGE_PAGE_SIZE)
    );
    // SAFETY: allocated, never mapped.
    unsafe { p.free_frame(l1, PageSize::Large) };
    assert_eq!(p.alloc_frame(PageSize::Large), Ok(l1));
    // A freed frame's old contents are still there (unspecified, but not
    // cleared by the platform): the direct map and the file are one memory.
    // SAFETY: `b` is allocated.
    unsafe { *(p.frame_ptr(b) as *mut u64) = 77 };
    // SAFETY: allocated, never mapped.
    unsafe { p.free_frame(b, PageSize::Small) };
    let again = p.alloc_frame(PageSize::Small).unwrap();
    assert_eq!(again, b);
    // SAFETY: allocated.
    assert_eq!(unsafe { *(p.frame_ptr(again) as *const u64) }, 77);
}

#[test]
fn out_of_frames() {
    // One whole chunk and 3 more frames.
    let p = ProcessPlatform::new(Config {
        frames: 512 + 3,
        cpus: 1,
        ..Config::default()
    })
    .unwrap();
    assert_eq!(p.free_frames(), 515);
    let large = p.alloc_frame(PageSize::Large).unwrap();
    assert_eq!(large.addr(), 0);
    assert_eq!(p.alloc_frame(PageSize::Large), Err(Error::OutOfFrames));
    let small: Vec<Frame> = (0..3)
        .map(|_| p.alloc_frame(PageSize::Small).unwrap())
        .collect();
    assert_eq!(
        small
            .iter()
            .map(|f| f.addr() / PAGE_SIZE)
            .collect::<Vec<_>>(),
        [512, 513, 514]
    );
    assert_eq!(p.free_frames(), 0);
    assert_eq!(p.alloc_frame(PageSize::Small), Err(Error::OutOfFrames));
    assert_eq!(p.alloc_frame(PageSize::Large), Err(Error::OutOfFrames));
    // SAFETY: allocated, never mapped.
    unsafe { p.free_frame(large, PageSize::Large) };
    assert_eq!(p.free_frames(), 512);
    // Small allocations now split the chunk.
    assert_eq!(p.alloc_frame(PageSize::Small).map(|f| f.addr()), Ok(0));
    assert_eq!(p.free_frames(), 511);
    assert_eq!(p.alloc_frame(PageSize::Large), Err(Error::OutOfFrames));
}

#[test]
fn frames_outside_the_file() {
    let p = ProcessPlatform::new(Config {
        frames: 512,
        cpus: 1,
        ..Config::default()
    })
    .unwrap();
    let w = p.reserve(LARGE_PAGE_SIZE).unwrap();
    let beyond = Frame::from_addr(512 * PAGE_SIZE).unwrap();
    assert!(p.frame_ptr(beyond).is_null());
    assert!(!p
        .frame_ptr(Frame::from_addr(511 * PAGE_SIZE).unwrap())
        .is_null());
    let expected = Err(Error::Os(
        "map: frame outside the memory file",
        libc::EINVAL,
    ));
    assert_eq!(
        p.map(w.base, beyond, PageSize::Small, Protection::ReadWrite),
        expected
    );
    // A large frame whose 2 MiB run past the end of the file.
    let p2 = ProcessPlatform::new(Config {
        frames: 600,
        cpus: 1,
        ..Config::default()
    })
    .unwrap();
    let w2 = p2.reserve(LARGE_PAGE_SIZE).unwrap();
    let tail = Frame::from_addr(LARGE_PAGE_SIZE).unwrap();
    assert_eq!(
        p2.map(w2.base, tail, PageSize::Large, Protection::ReadWrite),
        expected
    );
    assert_eq!(p2.translate(w2.base), None);
    // Another platform's window is not ours.
    assert_eq!(
        p2.map(
            w.base,
            Frame::from_addr(0).unwrap(),
            PageSize::Small,
            Protection::ReadWrite
        ),
        Err(Error::NotInWindow(w.base))
    );
    assert_eq!(p2.translate(w.base), None);
}

// ---- configuration, windows, CPUs, timers ---------------------------------------

#[test]
fn configuration_errors() {
    assert_eq!(
        ProcessPlatform::new(Config {
            cpus: 0,
            ..Config::default()
        })
        .err(),
        Some(Error::NoSuchCpu(0))
    );
    assert_eq!(
        ProcessPlatform::new(Config {
            frames: 0,
            ..Config::default()
        })
        .err(),
        Some(Error::OutOfFrames)
    );
}

#[test]
fn reserve_rounds_and_limits() {
    let p = ProcessPlatform::new(Config {
        frames: 512,
        cpus: 1,
        address_space: 8 << 20,
        ..Config::default()
    })
    .unwrap();
    assert_eq!(p.reserve(u64::MAX), Err(Error::OutOfAddressSpace(u64::MAX)));
    let w0 = p.reserve(0).unwrap();
    assert_eq!((w0.base % LARGE_PAGE_SIZE, w0.len), (0, LARGE_PAGE_SIZE));
    let w = p.reserve(1).unwrap();
    assert_eq!((w.base % LARGE_PAGE_SIZE, w.len), (0, LARGE_PAGE_SIZE));
    assert_eq!(p.reserve(5 << 20), Err(Error::OutOfAddressSpace(5 << 20)));
    let w2 = p.reserve(4 << 20).unwrap();
    assert_eq!(w2.len, 4 << 20);
    assert_eq!(p.reserve(1), Err(Error::OutOfAddressSpace(1)));
    // The whole window is reserved and unmapped: every page faults (checked
    // here through `translate` and the platform's own record).
    assert_eq!(p.translate(w2.base + w2.len - PAGE_SIZE), None);
    assert_eq!(p.translate(w2.base + w2.len), None);
    // A huge window costs only address space.
    let q = ProcessPlatform::new(Config {
        frames: 512,
        cpus: 1,
        ..Config::default()
    })
    .unwrap();
    let huge = q.reserve(1 << 40).unwrap();
    let f = q.alloc_frame(PageSize::Small).unwrap();
    let last = huge.base + huge.len - PAGE_SIZE;
    q.map(last, f, PageSize::Small, Protection::ReadWrite)
        .unwrap();
    // SAFETY: mapped read-write.
    unsafe { std::ptr::write_volatile(last as *mut u64, 5) };
    // SAFETY: `f` is allocated.
    assert_eq!(unsafe { *(q.frame_ptr(f) as *const u64) }, 5);
    assert_eq!(q.unmap(last, PageSize::Small).map(|u| u.frame), Ok(f));
}

#[test]
fn cpus_are_worker_threads() {
    let _g = serial();
    let p = ProcessPlatform::new(Config {
        frames: 512,
        cpus: 3,
        ..Config::default()
    })
    .unwrap();
    assert_eq!(p.cpu_count(), 3);
    // Not a worker: CPU 0.
    assert_eq!(p.cpu_id(), 0);
    let names = Mutex::new(vec![String::new(); 3]);
    let ids = Mutex::new(vec![usize::MAX; 3]);
    p.run_on_all(&|cpu| {
        names.lock().unwrap()[cpu] = std::thread::current().name().unwrap_or("").to_string();
        ids.lock().unwrap()[cpu] = p.cpu_id();
    });
    assert_eq!(
        *names.lock().unwrap(),
        ["dbos-cpu0", "dbos-cpu1", "dbos-cpu2"]
    );
    assert_eq!(*ids.lock().unwrap(), [0, 1, 2]);
    // Another platform's workers are CPU 0 for this one.
    let other = shared();
    let seen = AtomicUsize::new(usize::MAX);
    other.run_on_all(&|cpu| {
        if cpu == 1 {
            seen.store(p.cpu_id(), Ordering::SeqCst);
        }
    });
    assert_eq!(seen.load(Ordering::SeqCst), 0);
}

#[test]
fn run_on_all_reraises_panics_and_refuses_nesting() {
    let p = ProcessPlatform::new(Config {
        frames: 512,
        cpus: 2,
        ..Config::default()
    })
    .unwrap();
    let r = std::panic::catch_unwind(|| {
        p.run_on_all(&|cpu| {
            if cpu == 1 {
                panic!("boom on {cpu}");
            }
        })
    });
    let msg = r.unwrap_err().downcast::<String>().unwrap();
    assert!(msg.contains("boom on 1"), "{msg}");
    let nested = std::sync::atomic::AtomicBool::new(false);
    let r = std::panic::catch_unwind(|| {
        p.run_on_all(&|cpu| {
            if cpu == 0 {
                let inner = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    p.run_on_all(&|_| {})
                }));
                nested.store(inner.is_err(), Ordering::SeqCst);
            }
        })
    });
    assert!(r.is_ok());
    assert!(
        nested.load(Ordering::SeqCst),
        "a nested run_on_all must panic, not hang"
    );
    // The pool still works.
    let count = AtomicUsize::new(0);
    p.run_on_all(&|_| {
        count.fetch_add(1, Ordering::SeqCst);
    });
    assert_eq!(count.load(Ordering::SeqCst), 2);
}

#[test]
fn timer_errors_and_rearm() {
    let _g = serial();
    let p = ProcessPlatform::new(Config {
        frames: 512,
        cpus: 1,
        ..Config::default()
    })
    .unwrap();
    assert_eq!(
        p.set_timer(Some(0)),
        Err(Error::Os("timer_settime", libc::EINVAL))
    );
    assert_eq!(p.set_timer(None), Ok(()));
    static TICKS: AtomicUsize = AtomicUsize::new(0);
    p.set_timer_hook(Some(|_| {
        TICKS.fetch_add(1, Ordering::SeqCst);
    }));
    // A slow timer re-armed to a fast one ticks at the fast rate.
    p.set_timer(Some(10_000_000)).unwrap();
    p.set_timer(Some(500)).unwrap();
    let start = std::time::Instant::now();
    while TICKS.load(Ordering::SeqCst) < 5 && start.elapsed().as_secs() < 5 {
        std::hint::spin_loop();
    }
    p.set_timer(None).unwrap();
    assert!(TICKS.load(Ordering::SeqCst) >= 5);
    p.set_timer_hook(None);
}

#[test]
fn capabilities_are_documented_values() {
    let c = shared().capabilities();
    assert!(!c.accessed_bit && !c.dirty_bit && !c.per_page_clear && c.interrupts);
    assert_eq!(shared().counters().vmm_exits, 0);
    assert_eq!(shared().counters().kvm_exits, None, "no KVM in a process");
}

#[test]
fn tlb_shootdowns_are_read_from_proc_interrupts() {
    // The TLB line exists on x86-64 Linux; the count only grows.
    let a = libdbos::process::tlb_shootdowns().expect("a TLB line in /proc/interrupts");
    let b = libdbos::process::tlb_shootdowns().unwrap();
    assert!(b >= a);
}

// ---- the limit on memory mappings (vm.max_map_count) ---------------------------

/// A platform allowed 700 of an artificial limit of 800 mappings, with 256
/// frames (the most it could need is 3 + 3 + 2 * 256 = 518) and a 4 MiB
/// window; returns it with the window's base and all its frames.
fn limited() -> (&'static ProcessPlatform, u64, Vec<Frame>) {
    let p = ProcessPlatform::new(Config {
        frames: 256,
        cpus: 1,
        max_map_count: Some(800),
        ..Config::default()
    })
    .unwrap();
    // The platform: its direct map, one worker stack and guard.
    assert_eq!(
        p.map_count(),
        MapCount {
            charged: 3,
            allowed: 700,
            limit: 800
        }
    );
    let w = p.reserve(2 * LARGE_PAGE_SIZE).unwrap();
    assert_eq!(p.map_count().charged, 6);
    let frames: Vec<Frame> = (0..256)
        .map(|_| p.alloc_frame(PageSize::Small).unwrap())
        .collect();
    (p, w.base, frames)
}

/// The kernel's mappings (VMAs) overlapping `base..base + len`.
fn vmas_in(base: u64, len: u64) -> usize {
    std::fs::read_to_string("/proc/self/maps")
        .unwrap()
        .lines()
        .filter(|line| {
            let range = line.split_whitespace().next().unwrap();
            let (start, end) = range.split_once('-').unwrap();
            let start = u64::from_str_radix(start, 16).unwrap();
            let end = u64::from_str_radix(end, 16).unwrap();
            start < base + len && end > base
        })
        .count()
}

#[test]
fn scattered_maps_stop_at_the_mapping_limit() {
    let (p, base, frames) = limited();
    let page = |i: u64| base + i * PAGE_SIZE;
    // Every other page, so that no two mappings merge: 2 VMAs each.
    let fits = (700 - 6) / 2;
    assert_eq!(fits, 347);
    for i in 0..fits {
        p.map(
            page(2 * i),
            frames[(i % 256) as usize],
            PageSize::Small,
            Protection::ReadWrite,
        )
        .unwrap();
    }
    assert_eq!(p.map_count().charged, 700);
    // The kernel holds 347 mappings and the 347 holes after them.
    let window_len = 2 * LARGE_PAGE_SIZE;
    assert_eq!(vmas_in(base, window_len), 694);
    // The next map is refused before any system call: nothing half-mapped.
    let next = page(2 * fits);
    let refused = p.map(next, frames[0], PageSize::Small, Protection::ReadWrite);
    assert_eq!(
        refused,
        Err(Error::MappingLimit {
            needed: 702,
            allowed: 700,
            limit: 800
        })
    );
    // remap of an unmapped page is charged like map, and refused the same
    // way; remap of a mapped page keeps its charge and is never refused.
    assert_eq!(
        p.remap(next, frames[0], PageSize::Small, Protection::ReadWrite),
        Err(Error::MappingLimit {
            needed: 702,
            allowed: 700,
            limit: 800
        })
    );
    assert_eq!(
        p.remap(page(2), frames[5], PageSize::Small, Protection::ReadWrite)
            .unwrap()
            .map(|u| u.frame),
        Some(frames[1])
    );
    assert_eq!(p.translate(page(2)), Some(frames[5]));
    assert_eq!(p.map_count().charged, 700);
    let message = refused.unwrap_err().to_string();
    assert!(message.contains("vm.max_map_count = 800"), "{message}");
    assert!(message.contains("sysctl -w vm.max_map_count="), "{message}");
    assert_eq!(p.translate(next), None);
    assert_eq!(p.map_count().charged, 700);
    assert_eq!(vmas_in(base, window_len), 694);
    // So is a new window.
    assert_eq!(
        p.reserve(LARGE_PAGE_SIZE).err(),
        Some(Error::MappingLimit {
            needed: 703,
            allowed: 700,
            limit: 800
        })
    );
    // Unmapping gives the charge back, and then the page maps.
    assert_eq!(p.unmap(page(0), PageSize::Small).unwrap().frame, frames[0]);
    assert_eq!(p.map_count().charged, 698);
    p.map(next, frames[0], PageSize::Small, Protection::ReadWrite)
        .unwrap();
    assert_eq!(p.translate(next), Some(frames[0]));
    assert_eq!(p.map_count().charged, 700);
    // Writes through the mapping reach the frame.
    // SAFETY: `next` is mapped read-write to `frames[0]`.
    unsafe { *(next as *mut u64) = 5 };
    // SAFETY: `frames[0]` is allocated.
    assert_eq!(unsafe { *(p.frame_ptr(frames[0]) as *const u64) }, 5);
}

#[test]
fn unmap_and_protect_inside_a_merged_run_succeed_at_the_limit() {
    let (p, base, frames) = limited();
    let page = |i: u64| base + i * PAGE_SIZE;
    // Consecutive frames at consecutive pages: the kernel merges them into
    // one mapping, charged 2 each all the same.
    for (i, &f) in frames.iter().enumerate() {
        p.map(page(i as u64), f, PageSize::Small, Protection::ReadWrite)
            .unwrap();
    }
    assert_eq!(p.map_count().charged, 6 + 512);
    // Fill the rest of the allowance with scattered aliases of frame 0.
    for k in 0..91 {
        p.map(
            page(258 + 2 * k),
            frames[0],
            PageSize::Small,
            Protection::ReadOnly,
        )
        .unwrap();
    }
    assert_eq!(p.map_count().charged, 700);
    let window_len = 2 * LARGE_PAGE_SIZE;
    // The run, the hole after it, then 91 mappings and their holes.
    assert_eq!(vmas_in(base, window_len), 1 + 1 + 91 + 91);
    assert!(matches!(
        p.map(
            page(1000),
            frames[1],
            PageSize::Small,
            Protection::ReadWrite
        ),
        Err(Error::MappingLimit { needed: 702, .. })
    ));
    // Unmapping a page in the middle of the run splits it in the kernel (2
    // more VMAs) but stays within the charge: it is never refused.
    assert_eq!(
        p.unmap(page(128), PageSize::Small).unwrap().frame,
        frames[128]
    );
    assert_eq!(p.translate(page(128)), None);
    assert_eq!(p.translate(page(127)), Some(frames[127]));
    assert_eq!(p.translate(page(129)), Some(frames[129]));
    assert_eq!(vmas_in(base, window_len), 186);
    assert_eq!(p.map_count().charged, 698);
    p.map(
        page(1000),
        frames[1],
        PageSize::Small,
        Protection::ReadWrite,
    )
    .unwrap();
    assert_eq!(p.map_count().charged, 700);
    // So does a protection change in the middle of a run (another split).
    p.protect(page(64), PageSize::Small, Protection::ReadOnly)
        .unwrap();
    assert_eq!(vmas_in(base, window_len), 186 + 2 + 2);
    assert_eq!(p.map_count().charged, 700);
    assert!(vmas_in(base, window_len) as u64 <= 700 - 3);
}

#[test]
fn configurations_beyond_the_mapping_limit_are_refused() {
    // 512 frames mapped apart could need 3 + 3 + 1024 mappings.
    let refused = ProcessPlatform::new(Config {
        frames: 512,
        cpus: 1,
        max_map_count: Some(800),
        ..Config::default()
    });
    assert_eq!(
        refused.err(),
        Some(Error::MappingLimit {
            needed: 1030,
            allowed: 700,
            limit: 800
        })
    );
    // The most frames that fit: 3 + 3 + 2 * 347 = 700.
    let p = ProcessPlatform::new(Config {
        frames: 347,
        cpus: 1,
        max_map_count: Some(800),
        ..Config::default()
    })
    .unwrap();
    assert_eq!(p.map_count().allowed, 700);
    // A limit above the system's is the system's.
    let system = maps::system_limit();
    let q = ProcessPlatform::new(Config {
        frames: 16,
        cpus: 1,
        max_map_count: Some(u64::MAX),
        ..Config::default()
    })
    .unwrap();
    assert_eq!(q.map_count().limit, system);
    // The default configuration fits the system's limit (65,530 by default)
    // with room to spare.
    assert!(
        maps::worst_case(Config::default().frames, Config::default().cpus) <= maps::allowed(system)
    );
}

#[test]
fn real_limit_is_reached_with_mapping_limit_not_enomem() {
    let (status, stderr) = run_child("real-limit");
    assert!(status.success(), "{status}: {stderr}");
    assert!(stderr.contains("refused after"), "{stderr}");
    assert!(stderr.contains("vm.max_map_count"), "{stderr}");
}

/// `release` gives back the mapping-limit charge of the window and of each
/// page still mapped, its share of `address_space` (a reserve that did not
/// fit fits after it), and its address range (no VMA left); another
/// platform's window is refused.
#[test]
fn release_gives_back_charge_address_space_and_range() {
    let (p, base, frames) = limited();
    let w = Window {
        base,
        len: 2 * LARGE_PAGE_SIZE,
    };
    // Scattered pages: charged 2 each.
    for i in 0..10 {
        p.map(
            w.page(2 * i),
            frames[i as usize],
            PageSize::Small,
            Protection::ReadWrite,
        )
        .unwrap();
    }
    assert_eq!(p.map_count().charged, 6 + 20);
    assert!(vmas_in(w.base, w.len) > 0);
    // Another platform may not release it.
    let other = ProcessPlatform::new(Config {
        frames: 16,
        cpus: 1,
        ..Config::default()
    })
    .unwrap();
    // SAFETY: refused: the window is not `other`'s, nothing is released.
    let refused = unsafe { other.release(w, &mut |_, _, _| {}) };
    assert_eq!(refused, Err(Error::NotReserved(base)));
    assert_eq!(p.translate(w.page(0)), Some(frames[0]));
    let windows = libdbos::process::live_windows();
    let mut reported = Vec::new();
    // SAFETY: this test owns the window; nothing accesses it any more.
    let r = unsafe { p.release(w, &mut |page, _, u| reported.push((page, u.frame))) }.unwrap();
    assert_eq!(r.pages, 10);
    let expected: Vec<(u64, Frame)> = (0..10)
        .map(|i| (w.page(2 * i), frames[i as usize]))
        .collect();
    assert_eq!(reported, expected);
    // Back to the platform's own charge (3), the range unmapped.
    assert_eq!(p.map_count().charged, 3);
    assert_eq!(vmas_in(w.base, w.len), 0);
    assert_eq!(libdbos::process::live_windows(), windows - 1);

    let q = ProcessPlatform::new(Config {
        frames: 64,
        cpus: 1,
        address_space: 4 << 20,
        ..Config::default()
    })
    .unwrap();
    let a = q.reserve(4 << 20).unwrap();
    assert_eq!(q.reserve(1), Err(Error::OutOfAddressSpace(1)));
    // SAFETY: never used.
    unsafe { q.release(a, &mut |_, _, _| {}) }.unwrap();
    let b = q.reserve(4 << 20).unwrap();
    assert_eq!(b.len, 4 << 20);
}
