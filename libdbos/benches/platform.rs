//! Micro-benchmarks of the process platform's mapping and fault paths.
//!
//! ```text
//! cargo bench -p libdbos --bench platform
//! ```
//!
//! Each path is measured with the other CPUs idle and, where unmapping or
//! write-protecting is involved, again while a second thread keeps reading
//! another page of the same window (so Linux must shoot down its TLB). A
//! baseline of plain Linux (fault in an anonymous page, then
//! `madvise(MADV_DONTNEED)` it) runs in the same process for comparison. The
//! benchmark thread is pinned to the first allowed core and the reader to the
//! second.

use criterion::{criterion_group, criterion_main, Criterion};
use libdbos::platform::{
    Fault, FaultResolution, Frame, PageSize, Platform, Protection, Window, PAGE_SIZE,
};
use libdbos::process::{Config, ProcessPlatform};
use std::hint::black_box;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

static PLATFORM: OnceLock<&'static ProcessPlatform> = OnceLock::new();
/// The frame the fault hook maps.
static HOOK_FRAME: AtomicU64 = AtomicU64::new(0);
/// Tells the reader to stop.
static STOP: AtomicBool = AtomicBool::new(false);

fn platform() -> &'static ProcessPlatform {
    PLATFORM.get_or_init(|| {
        ProcessPlatform::new(Config {
            frames: 4096,
            cpus: 2,
            ..Config::default()
        })
        .expect("process platform")
    })
}

fn hook(f: &Fault) -> FaultResolution {
    let p = platform();
    let frame = Frame::from_addr(HOOK_FRAME.load(Ordering::Relaxed)).expect("aligned");
    match p.map(
        f.addr & !(PAGE_SIZE - 1),
        frame,
        PageSize::Small,
        Protection::ReadWrite,
    ) {
        Ok(()) => FaultResolution::Retry,
        Err(_) => FaultResolution::Unhandled,
    }
}

fn pin_to(core_index: usize) {
    // SAFETY: an all-zero cpu_set_t is empty; the calls get valid sets.
    unsafe {
        let mut allowed: libc::cpu_set_t = std::mem::zeroed();
        libc::sched_getaffinity(0, size_of::<libc::cpu_set_t>(), &mut allowed);
        let Some(core) = (0..libc::CPU_SETSIZE as usize)
            .filter(|&c| libc::CPU_ISSET(c, &allowed))
            .nth(core_index)
        else {
            return;
        };
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(core, &mut set);
        libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set);
    }
}

/// Runs `body` while CPU 1 (a worker, pinned to the second core) keeps
/// reading `page`.
fn with_reader(page: u64, body: impl FnOnce()) {
    let p = platform();
    STOP.store(false, Ordering::SeqCst);
    let started = AtomicBool::new(false);
    std::thread::scope(|s| {
        s.spawn(|| {
            p.run_on_all(&|cpu| {
                if cpu == 1 {
                    started.store(true, Ordering::SeqCst);
                    while !STOP.load(Ordering::Relaxed) {
                        // SAFETY: `page` stays mapped while the reader runs.
                        black_box(unsafe { std::ptr::read_volatile(page as *const u64) });
                    }
                }
            });
        });
        while !started.load(Ordering::SeqCst) {
            std::hint::spin_loop();
        }
        body();
        STOP.store(true, Ordering::SeqCst);
    });
}

struct Setup {
    w: Window,
    f: Frame,
    large: Frame,
}

fn setup() -> Setup {
    let p = platform();
    let w = p.reserve(8 << 20).expect("window");
    let f = p.alloc_frame(PageSize::Small).expect("frame");
    let g = p.alloc_frame(PageSize::Small).expect("frame");
    let large = p.alloc_frame(PageSize::Large).expect("large frame");
    // Page 0 stays mapped: the reader's page.
    p.map(w.page(0), g, PageSize::Small, Protection::ReadWrite)
        .expect("map");
    HOOK_FRAME.store(f.addr(), Ordering::SeqCst);
    p.set_fault_hook(Some(hook));
    Setup { w, f, large }
}

fn write(addr: u64, v: u64) {
    // SAFETY: callers pass mapped read-write pages (or pages the hook maps).
    unsafe { std::ptr::write_volatile(addr as *mut u64, v) }
}

fn read(addr: u64) -> u64 {
    // SAFETY: as for `write`.
    unsafe { std::ptr::read_volatile(addr as *const u64) }
}

fn paths(c: &mut Criterion, s: &Setup, suffix: &str) {
    let p = platform();
    let page = s.w.page(1);
    let mut g = c.benchmark_group(format!("process platform{suffix}"));
    g.bench_function("map + unmap 4 KiB", |b| {
        b.iter(|| {
            p.map(page, s.f, PageSize::Small, Protection::ReadWrite)
                .unwrap();
            p.unmap(page, PageSize::Small).unwrap();
        })
    });
    g.bench_function("map + write + unmap 4 KiB", |b| {
        b.iter(|| {
            p.map(page, s.f, PageSize::Small, Protection::ReadWrite)
                .unwrap();
            write(page, 1);
            p.unmap(page, PageSize::Small).unwrap();
        })
    });
    p.map(page, s.f, PageSize::Small, Protection::ReadWrite)
        .unwrap();
    g.bench_function("protect read-only + read-write, touched", |b| {
        b.iter(|| {
            p.protect(page, PageSize::Small, Protection::ReadOnly)
                .unwrap();
            black_box(read(page));
            p.protect(page, PageSize::Small, Protection::ReadWrite)
                .unwrap();
            write(page, 2);
        })
    });
    g.bench_function("unmap + fault-in through the hook", |b| {
        b.iter(|| {
            p.unmap(page, PageSize::Small).unwrap();
            black_box(read(page)); // faults; the hook maps the frame again
        })
    });
    p.unmap(page, PageSize::Small).unwrap();
    let big = s.w.base + (4 << 20);
    g.bench_function("map + write + unmap 2 MiB", |b| {
        b.iter(|| {
            p.map(big, s.large, PageSize::Large, Protection::ReadWrite)
                .unwrap();
            write(big + 4096, 3);
            p.unmap(big, PageSize::Large).unwrap();
        })
    });
    // Plain Linux, same process: fault in an anonymous page, drop it.
    let anon = anonymous_page();
    g.bench_function(
        "baseline: write-fault anonymous page + madvise(DONTNEED)",
        |b| {
            b.iter(|| {
                write(anon, 4);
                // SAFETY: `anon` is our own anonymous page.
                unsafe {
                    libc::madvise(
                        anon as *mut libc::c_void,
                        PAGE_SIZE as usize,
                        libc::MADV_DONTNEED,
                    )
                };
            })
        },
    );
    g.finish();
}

fn anonymous_page() -> u64 {
    static PAGE: OnceLock<u64> = OnceLock::new();
    *PAGE.get_or_init(|| {
        // SAFETY: a fresh private anonymous page.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                PAGE_SIZE as usize,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(p, libc::MAP_FAILED);
        p as u64
    })
}

fn bench(c: &mut Criterion) {
    pin_to(0);
    let s = setup();
    paths(c, &s, ", other CPUs idle");
    with_reader(s.w.page(0), || {
        paths(c, &s, ", another CPU reading the window")
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(30);
    targets = bench
}
criterion_main!(benches);
