//! Guest scenarios the hypervisor's integration tests boot and observe.
//!
//! `dbos run scenarios -- NAME`; each scenario prints what the test checks.
#![no_std]
#![no_main]

extern crate alloc;

use core::sync::atomic::{AtomicU64, Ordering};
use libdbos::paging;
use libdbos::platform::{Frame, PageSize, Protection};
use libdbos::{frames, println, HookResult, InterruptFrame, PageFault};

libdbos::entry!(main);

/// A virtual window nothing maps at boot (above the direct map's reach is not
/// needed: the lower half is entirely unmapped).
const WINDOW: u64 = 0x0000_1000_0000_0000;

/// A count that may not be known: "n/a" when it is not (KVM's exit count on
/// a host whose KVM does not offer its statistics).
struct Maybe(Option<u64>);

impl core::fmt::Display for Maybe {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self.0 {
            Some(n) => write!(f, "{n}"),
            None => f.write_str("n/a"),
        }
    }
}

fn main() -> u8 {
    let mut args = libdbos::args();
    let scenario = args.next().unwrap_or("");
    match scenario {
        "page-fault-hook" => page_fault_hook(),
        "unhandled-fault" => unhandled_fault(),
        "hook-declines" => hook_declines(),
        "vector-hook" => vector_hook(),
        "unknown-port" => {
            // SAFETY: a write to an I/O port nothing serves; the host stops us.
            unsafe { core::arch::asm!("out dx, al", in("dx") 0x80u16, in("al") 1u8) };
            0
        }
        "emulation-failure" => {
            // SAFETY: an SSE instruction, which the ring-0 emulator on hosts
            // without VT-x cannot execute; the host stops us.
            unsafe { core::arch::asm!("pxor xmm0, xmm0") };
            0
        }
        "triple-fault" => triple_fault(),
        "smp" => smp(),
        "files" => files(),
        "nvme" => nvme(),
        "nvme-sleep" => nvme_sleep(),
        "nvme-give-back" => nvme_give_back(),
        "dma" => dma(args.next(), args.next()),
        "window-stack" => window_stack(),
        "high-args" => high_args(),
        "panic" => panic!("scenario panic with value {}", 42),
        "bad-pointer" => {
            println!("passing an address beyond guest memory to the console call");
            libdbos::hypercall::console_write_raw(1 << 40, 16);
            println!("still running after a bad pointer");
            0
        }
        "bad-length" => {
            let text = b"abc";
            let phys = libdbos::memory::virt_to_phys(text.as_ptr() as u64).unwrap();
            libdbos::hypercall::console_write_raw(phys, u64::MAX - 8);
            println!("still running after a bad length");
            0
        }
        "clock" => {
            let a = libdbos::hypercall::clock_nanos();
            let b = libdbos::hypercall::clock_nanos();
            println!("clock {a} {b} monotonic={}", b >= a && a > 0);
            0
        }
        "deferred-view" => deferred_view(args.next()),
        "args" => {
            let all: alloc::vec::Vec<&str> = args.collect();
            println!("args: {}", all.join("|"));
            0
        }
        other => panic!("unknown scenario {other:?}"),
    }
}

/// Reads the u64 at `addr`. Naked so that the faulting instruction is the
/// function's first: a fault here has RIP == `load as u64`.
#[unsafe(naked)]
extern "sysv64" fn load(addr: u64) -> u64 {
    core::arch::naked_asm!("mov rax, qword ptr [rdi]", "ret")
}

/// Writes `value` at `addr`; the faulting instruction is the first.
#[unsafe(naked)]
extern "sysv64" fn store(addr: u64, value: u64) {
    core::arch::naked_asm!("mov qword ptr [rdi], rsi", "ret")
}

static FAULT_ADDR: AtomicU64 = AtomicU64::new(0);
static FAULT_ERROR: AtomicU64 = AtomicU64::new(0);
static FAULT_RIP: AtomicU64 = AtomicU64::new(0);
static FAULT_COUNT: AtomicU64 = AtomicU64::new(0);

fn map_on_fault(fault: &PageFault, _frame: &mut InterruptFrame) -> HookResult {
    FAULT_ADDR.store(fault.addr, Ordering::Relaxed);
    FAULT_ERROR.store(fault.error.bits(), Ordering::Relaxed);
    FAULT_RIP.store(fault.rip, Ordering::Relaxed);
    FAULT_COUNT.fetch_add(1, Ordering::Relaxed);
    if !(WINDOW..WINDOW + (1 << 30)).contains(&fault.addr) {
        return HookResult::Unhandled;
    }
    let Some(frame) = frames::alloc_zeroed() else {
        return HookResult::Unhandled;
    };
    let frame = Frame::from_addr(frame.start_address().as_u64()).expect("frames are aligned");
    match paging::map(
        fault.addr & !0xfff,
        frame,
        PageSize::Small,
        Protection::ReadWrite,
    ) {
        Ok(()) => HookResult::Handled,
        Err(_) => HookResult::Unhandled,
    }
}

fn page_fault_hook() -> u8 {
    libdbos::set_page_fault_hook(Some(map_on_fault));
    let addr = WINDOW + 0x5000 + 0x238;
    store(addr, 0xdead_beef_cafe_f00d);
    let value = load(addr);
    println!(
        "fault cr2={:#x} error={:#x} rip-is-store={} faults={} value={:#x} phys-mapped={}",
        FAULT_ADDR.load(Ordering::Relaxed),
        FAULT_ERROR.load(Ordering::Relaxed),
        FAULT_RIP.load(Ordering::Relaxed)
            == (store as extern "sysv64" fn(u64, u64)) as usize as u64,
        FAULT_COUNT.load(Ordering::Relaxed),
        value,
        paging::translate(addr).is_some(),
    );
    // A second access to the same page must not fault again.
    store(addr + 8, 7);
    println!(
        "faults after second access={}",
        FAULT_COUNT.load(Ordering::Relaxed)
    );
    0
}

fn unhandled_fault() -> u8 {
    let addr = WINDOW + 0x7_7000 + 0x10;
    println!(
        "load-fn={:#x} addr={:#x}",
        (load as extern "sysv64" fn(u64) -> u64) as usize,
        addr
    );
    let v = load(addr);
    println!("unreachable: read {v}");
    0
}

fn hook_declines() -> u8 {
    libdbos::set_page_fault_hook(Some(map_on_fault));
    // Outside the window the hook handles: it declines.
    let addr = 0x0000_2000_0000_0000 + 0x40;
    println!(
        "load-fn={:#x} addr={:#x}",
        (load as extern "sysv64" fn(u64) -> u64) as usize,
        addr
    );
    let v = load(addr);
    println!("unreachable: read {v}");
    0
}

/// #UD hook: skips the 2-byte `ud2` and hands a value back in rax.
fn skip_ud2(frame: &mut InterruptFrame) -> HookResult {
    frame.rip += 2;
    frame.rax = 0x1234_5678;
    HookResult::Handled
}

fn vector_hook() -> u8 {
    libdbos::set_vector_hook(6, Some(skip_ud2));
    let (mut rax, mut rbx, mut rcx, mut rdx) = (0u64, 0xb0b0u64, 0xc0c0u64, 0xd0d0u64);
    let (mut rsi, mut r8, mut r12, mut r15) = (0x5151u64, 0x0808u64, 0x1212u64, 0x1515u64);
    // SAFETY: `ud2` traps to the hook above, which resumes after it.
    unsafe {
        core::arch::asm!(
            "ud2",
            inout("rax") rax, inout("rcx") rcx, inout("rdx") rdx,
            inout("rsi") rsi, inout("r8") r8, inout("r12") r12, inout("r15") r15,
            inout("r9") rbx,
        );
    }
    println!(
        "rax={rax:#x} preserved={}",
        rbx == 0xb0b0
            && rcx == 0xc0c0
            && rdx == 0xd0d0
            && rsi == 0x5151
            && r8 == 0x0808
            && r12 == 0x1212
            && r15 == 0x1515
    );
    // Once the hook is cleared, #UD stops the guest. (Not `int3`: KVM's
    // instruction emulator on these hosts fails on it in ring 0.)
    libdbos::set_vector_hook(6, None);
    // SAFETY: traps to the default handler, which never returns.
    unsafe { core::arch::asm!("ud2") };
    0
}

/// Loads an empty IDT and faults: the #UD cannot be delivered, nor the
/// double fault that follows, so the CPU shuts down (a triple fault).
fn triple_fault() -> u8 {
    let empty = x86_64::structures::DescriptorTablePointer {
        limit: 0,
        base: x86_64::VirtAddr::new(0),
    };
    // SAFETY: deliberately breaks interrupt delivery; the guest ends here.
    unsafe {
        x86_64::instructions::tables::lidt(&empty);
        core::arch::asm!("ud2");
    }
    0
}

static PER_CPU_SUM: AtomicU64 = AtomicU64::new(0);
static SEEN_CPUS: AtomicU64 = AtomicU64::new(0);
static TICKS: AtomicU64 = AtomicU64::new(0);
static IPI_ON: AtomicU64 = AtomicU64::new(u64::MAX);

fn smp() -> u8 {
    let n = libdbos::smp::cpu_count();
    libdbos::smp::run_on_all(&|cpu| {
        PER_CPU_SUM.fetch_add(cpu as u64 + 1, Ordering::Relaxed);
        SEEN_CPUS.fetch_or(1 << libdbos::percpu::cpu_id(), Ordering::Relaxed);
    });
    // Every CPU stops at the barrier twice; between the rounds all of them
    // must see every other CPU's first increment.
    static ROUND1: AtomicU64 = AtomicU64::new(0);
    static MISSED: AtomicU64 = AtomicU64::new(0);
    let barrier = libdbos::sync::Barrier::new(n);
    libdbos::smp::run_on_all(&|_| {
        ROUND1.fetch_add(1, Ordering::SeqCst);
        barrier.wait();
        if ROUND1.load(Ordering::SeqCst) != n as u64 {
            MISSED.fetch_add(1, Ordering::SeqCst);
        }
        barrier.wait();
    });
    println!("barrier: missed={}", MISSED.load(Ordering::SeqCst));
    println!(
        "run_on_all: sum={} seen={:#b}",
        PER_CPU_SUM.load(Ordering::Relaxed),
        SEEN_CPUS.load(Ordering::Relaxed)
    );
    libdbos::set_ipi_hook(Some(|cpu| IPI_ON.store(cpu as u64, Ordering::Relaxed)));
    if n > 1 {
        libdbos::apic::send_ipi(1, libdbos::apic::vector::USER_IPI);
        let start = libdbos::hypercall::clock_nanos();
        while IPI_ON.load(Ordering::Relaxed) == u64::MAX
            && libdbos::hypercall::clock_nanos() - start < 1_000_000_000
        {
            core::hint::spin_loop();
        }
    }
    println!("ipi ran on cpu {}", IPI_ON.load(Ordering::Relaxed) as i64);
    libdbos::set_timer_hook(Some(|_| {
        TICKS.fetch_add(1, Ordering::Relaxed);
    }));
    libdbos::apic::set_timer(Some(1000));
    let start = libdbos::hypercall::clock_nanos();
    while TICKS.load(Ordering::Relaxed) < 3
        && libdbos::hypercall::clock_nanos() - start < 1_000_000_000
    {
        core::hint::spin_loop();
    }
    libdbos::apic::set_timer(None);
    println!("timer ticks>=3: {}", TICKS.load(Ordering::Relaxed) >= 3);
    0
}

fn files() -> u8 {
    use libdbos::hostfile::{Errno, HostFile};
    let missing = HostFile::open("nope").map(|_| ());
    println!("open unknown: {missing:?}");
    let f = HostFile::open("data").expect("data is authorised");
    let size = f.size().unwrap();
    let mut head = [0u8; 5];
    let n = f.read_at(0, &mut head).unwrap();
    println!(
        "size={size} read={n} head={:?}",
        core::str::from_utf8(&head[..n]).unwrap()
    );
    f.write_at(size, b" and more").unwrap();
    f.flush().unwrap();
    println!("size after write={}", f.size().unwrap());
    // A window buffer (split per page by the library) works too.
    let p = libdbos::platform();
    use libdbos::platform::{PageSize, Platform, Protection};
    let w = p.reserve(1 << 21).unwrap();
    for i in 0..2 {
        let frame = p.alloc_frame(PageSize::Small).unwrap();
        p.map(w.page(i), frame, PageSize::Small, Protection::ReadWrite)
            .unwrap();
    }
    // SAFETY: pages 0 and 1 of the window are mapped read-write just above,
    // and nothing else refers to these 12 bytes.
    let span = unsafe { core::slice::from_raw_parts_mut((w.base + 4090) as *mut u8, 12) };
    span.copy_from_slice(b"across pages");
    f.write_at(100, span).unwrap();
    let mut back = [0u8; 12];
    f.read_at(100, &mut back).unwrap();
    println!("window round trip={}", &back == b"across pages");
    let bad = HostFile::from_raw_handle(99).size();
    println!("bad handle: {}", bad == Err(Errno(9)));
    0
}

/// Queue pairs given back: 300 queue pairs (more than the host serves at
/// once, 256) made, used for one read and dropped in turn, each given back
/// to the host and its rings freed; then the DMA memory is what it was.
fn nvme_give_back() -> u8 {
    use libdbos::nvme::{self, dma};
    use nvme_format::{Command, DataPtr, Lba};
    let layout = core::alloc::Layout::from_size_align(4096, 4096).unwrap();
    // SAFETY: non-zero size; freed at the end.
    let buf = unsafe { alloc::alloc::alloc_zeroed(layout) };
    let before = libdbos::dma::stats();
    let mut ids = alloc::collections::BTreeSet::new();
    for i in 0..300u64 {
        let mut qp = match nvme::queue_pair(8) {
            Ok(qp) => qp,
            Err(e) => {
                println!("queue pair {i} refused: {e:?}");
                return 1;
            }
        };
        ids.insert(qp.id());
        qp.execute(&Command::read(
            Lba(i % 4),
            1,
            DataPtr::Contiguous(dma(buf).unwrap()),
        ))
        .unwrap();
    }
    let after = libdbos::dma::stats();
    println!(
        "300 queue pairs made, used and given back; {} distinct ids",
        ids.len()
    );
    println!(
        "dma pages in use before {} after {}",
        before.pages_in_use, after.pages_in_use
    );
    // SAFETY: allocated above with `layout`; no I/O uses it any more.
    unsafe { alloc::alloc::dealloc(buf, layout) };
    0
}

/// Reads that wait for their completion asleep: the CPU raises the queue's
/// waiting word and halts until the poller's completion interrupt (run
/// with a short poller spin, so the poller parks between reads and each
/// read waits on the disk).
fn nvme_sleep() -> u8 {
    use libdbos::nvme::{self, dma};
    use nvme_format::{Command, DataPtr, Lba};
    let mut qp = nvme::queue_pair(8).expect("queue pair");
    let layout = core::alloc::Layout::from_size_align(4096, 4096).unwrap();
    // SAFETY: non-zero size; freed at the end.
    let buf = unsafe { alloc::alloc::alloc_zeroed(layout) };
    // Block b holds b's number in its first 8 bytes.
    for b in 0..4u64 {
        // SAFETY: `buf` is 4096 bytes.
        unsafe { (buf as *mut u64).write(b * 1000 + 7) };
        qp.execute(&Command::write(
            Lba(b),
            1,
            DataPtr::Contiguous(dma(buf).unwrap()),
        ))
        .unwrap();
    }
    let sleeps0 = nvme_format::driver::SLEEPS.load(core::sync::atomic::Ordering::Relaxed);
    let doorbells0 = qp.stats().doorbells;
    let p = {
        use libdbos::platform::Platform;
        libdbos::platform().counters()
    };
    // At least 32 reads, and on until the CPU has slept 3 times (at most
    // 4096 reads): on a loaded host the emulated guest can be slow enough
    // that a read completes before it looks, so it never needs to sleep.
    let (mut n, mut wrong) = (0u64, 0);
    let slept =
        || nvme_format::driver::SLEEPS.load(core::sync::atomic::Ordering::Relaxed) - sleeps0;
    while n < 32 || (slept() < 3 && n < 4096) {
        let i = n;
        n += 1;
        let b = i % 4;
        // SAFETY: `buf` is 4096 bytes.
        unsafe { (buf as *mut u64).write(0) };
        qp.submit(&Command::read(
            Lba(b),
            1,
            DataPtr::Contiguous(dma(buf).unwrap()),
        ))
        .unwrap();
        let c = loop {
            if let Some(c) = qp.poll() {
                break c;
            }
            if !qp.sleep_until_completion() {
                core::hint::spin_loop();
            }
        };
        // SAFETY: `buf` is 4096 bytes; the read has completed.
        if c.result().is_err() || unsafe { (buf as *const u64).read() } != b * 1000 + 7 {
            wrong += 1;
        }
    }
    let d = {
        use libdbos::platform::Platform;
        libdbos::platform().counters().since(&p)
    };
    let sleeps = nvme_format::driver::SLEEPS.load(core::sync::atomic::Ordering::Relaxed) - sleeps0;
    let doorbells = qp.stats().doorbells - doorbells0;
    println!(
        "sleeping reads: {n} reads, {wrong} wrong, slept {}",
        sleeps > 0
    );
    println!("sleeps {sleeps}");
    // Every exit to the VMM is a real doorbell (the poller parked): the
    // sleeps cost none (the `hlt` and the interrupt are KVM's alone).
    println!(
        "exits: {} to the VMM for {doorbells} doorbells, {} VM exits (KVM)",
        d.vmm_exits,
        Maybe(d.kvm_exits)
    );
    // SAFETY: allocated above with `layout`.
    unsafe { alloc::alloc::dealloc(buf, layout) };
    0
}

fn nvme() -> u8 {
    use libdbos::nvme::{self, dma};
    use libdbos::platform::Platform;
    use nvme_format::{Command, DataPtr, DriverError, Lba, NvmeError};
    let info = nvme::info().expect("the VM has a disk");
    println!("disk: {} blocks of {} bytes", info.blocks, info.block_size);
    let mut qp = nvme::queue_pair(16).expect("queue pair");
    // Two 4 KiB-aligned, physically contiguous buffers of two blocks each.
    let layout = core::alloc::Layout::from_size_align(8192, 4096).unwrap();
    // SAFETY: non-zero size; freed at the end.
    let (out, back) = unsafe {
        (
            alloc::alloc::alloc(layout),
            alloc::alloc::alloc_zeroed(layout),
        )
    };
    for i in 0..8192 {
        // SAFETY: `out` is 8192 bytes.
        unsafe { *out.add(i) = (i % 251) as u8 };
    }
    let data = |p: *mut u8| DataPtr::Contiguous(dma(p).unwrap());
    qp.execute(&Command::write(Lba(3), 1, data(out))).unwrap();
    qp.execute(&Command::write_fua(
        Lba(4),
        1,
        // SAFETY: `out` is 8192 bytes; this is its second half.
        data(unsafe { out.add(4096) }),
    ))
    .unwrap();
    qp.execute(&Command::flush()).unwrap();
    qp.execute(&Command::read(Lba(3), 2, data(back))).unwrap();
    // SAFETY: both buffers are 8192 bytes.
    let same = unsafe {
        core::slice::from_raw_parts(out, 8192) == core::slice::from_raw_parts(back, 8192)
    };
    println!("write, write FUA, flush, read back: same={same}");
    let beyond = qp.execute(&Command::read(Lba(info.blocks), 1, data(back)));
    println!(
        "read past the end: lba-out-of-range={}",
        beyond == Err(DriverError::Device(NvmeError::LbaOutOfRange))
    );
    // Steady state: back-to-back I/Os after a warm-up.
    let p = libdbos::platform();
    for i in 0..8 {
        qp.execute(&Command::read(Lba(i), 1, data(back))).unwrap();
    }
    let before = p.counters();
    let n = 64u64;
    for i in 0..n {
        qp.execute(&Command::read(Lba(i % 16), 1, data(back)))
            .unwrap();
    }
    let d = p.counters().since(&before);
    println!(
        "steady state: {n} reads, {} exits to the VMM, {} VM exits (KVM)",
        d.vmm_exits,
        Maybe(d.kvm_exits)
    );
    // SAFETY: allocated above with `layout`.
    unsafe {
        alloc::alloc::dealloc(out, layout);
        alloc::alloc::dealloc(back, layout);
    }
    0
}

/// DMA regions (`dma MODE [N]`):
///
/// - `io`: a write from a DMA buffer (declared) and a read into a heap
///   buffer (not declared) of the same blocks; the host's counts of I/Os
///   served with fixed and with plain buffers, and the data.
/// - `hostile`: declarations the host must refuse (past RAM's end,
///   misaligned, empty, too large, overlapping a declared region) and
///   releases of what was not declared, each with its status.
/// - `limit N`: declares a region of 512 KiB, then one of N bytes; the
///   statuses (the test runs it under a small `RLIMIT_MEMLOCK`).
/// - `loop N`: N times, a 2 MiB DMA buffer (a new arena, declared), a
///   write from it, and its release (the arena given back); the regions
///   and bytes declared before and after, the peak, and the counts.
fn dma(mode: Option<&str>, n: Option<&str>) -> u8 {
    use libdbos::dma;
    use libdbos::nvme;
    use nvme_format::{Command, DataPtr, DmaAddr, Lba};
    let n: u64 = n.map_or(0, |s| s.parse().expect("a number"));
    match mode.unwrap_or("") {
        "io" => {
            let mut qp = nvme::queue_pair(16).expect("queue pair");
            let inside = dma::alloc(8192).expect("DMA memory");
            let layout = core::alloc::Layout::from_size_align(8192, 4096).unwrap();
            // SAFETY: non-zero size; freed at the end.
            let outside = unsafe { alloc::alloc::alloc_zeroed(layout) };
            for i in 0..8192 {
                // SAFETY: `inside` is 8192 bytes of DMA memory we own.
                unsafe { *inside.virt.add(i) = (i % 253) as u8 };
            }
            let before = dma::host_stats();
            qp.execute(&Command::write(
                Lba(5),
                2,
                DataPtr::Contiguous(DmaAddr(inside.phys)),
            ))
            .unwrap();
            qp.execute(&Command::read(
                Lba(5),
                2,
                DataPtr::Contiguous(nvme::dma(outside).unwrap()),
            ))
            .unwrap();
            let after = dma::host_stats();
            // SAFETY: both are 8192 bytes.
            let same = unsafe {
                core::slice::from_raw_parts(inside.virt, 8192)
                    == core::slice::from_raw_parts(outside, 8192)
            };
            println!(
                "dma io: fixed {} plain {} same={same}; regions {} bytes {}",
                after.fixed_ios - before.fixed_ios,
                after.plain_ios - before.plain_ios,
                after.regions,
                after.bytes
            );
            let s = dma::stats();
            println!("dma io: declared {} refused {}", s.declared, s.refused);
            // SAFETY: allocated above with `layout`; no I/O in flight.
            unsafe { alloc::alloc::dealloc(outside, layout) };
            0
        }
        "hostile" => {
            let end = libdbos::memory::phys_end();
            let run = frames::alloc_contiguous(4).expect("4 frames");
            let checks: [(&str, i64); 12] = [
                ("past RAM's end", dma::declare(end - 4096, 8192)),
                ("at RAM's end", dma::declare(end, 4096)),
                ("wrapping", dma::declare(!0xfff, 8192)),
                ("empty", dma::declare(run, 0)),
                ("misaligned", dma::declare(run + 8, 4096)),
                ("too large", dma::declare(0, (1 << 30) + 4096)),
                ("valid", dma::declare(run, 4 * 4096)),
                ("overlapping its end", dma::declare(run + 3 * 4096, 8192)),
                ("inside it", dma::declare(run + 4096, 4096)),
                ("release of a part", dma::release(run, 4096)),
                ("release", dma::release(run, 4 * 4096)),
                ("release again", dma::release(run, 4 * 4096)),
            ];
            for (what, status) in checks {
                println!("dma hostile: {what}: {status}");
            }
            let h = dma::host_stats();
            println!("dma hostile: regions {} bytes {}", h.regions, h.bytes);
            0
        }
        "limit" => {
            let small = 512 * 1024;
            let run = frames::alloc_contiguous((small + n) / 4096).expect("frames");
            let a = dma::declare(run, small);
            let b = dma::declare(run + small, n);
            let h = dma::host_stats();
            println!(
                "dma limit: 524288: {a}; {n}: {b}; regions {} bytes {}",
                h.regions, h.bytes
            );
            0
        }
        "loop" => {
            let mut qp = nvme::queue_pair(16).expect("queue pair");
            let start = dma::host_stats();
            let mut peak = start.regions;
            for i in 0..n {
                let buf = dma::alloc(2 << 20).expect("DMA memory");
                // SAFETY: `buf` is ours.
                unsafe { buf.virt.write_bytes(i as u8, 4096) };
                qp.execute(&Command::write(
                    Lba(i % 16),
                    1,
                    DataPtr::Contiguous(DmaAddr(buf.phys)),
                ))
                .unwrap();
                peak = peak.max(dma::host_stats().regions);
                // SAFETY: from dma::alloc; its write has completed.
                unsafe { dma::free(buf) };
            }
            let end = dma::host_stats();
            let s = dma::stats();
            println!(
                "dma loop {n}: regions {} -> {} (peak {peak}), bytes {} -> {}, fixed {} \
                 plain {}, arenas {}, declared {} refused {}",
                start.regions,
                end.regions,
                start.bytes,
                end.bytes,
                end.fixed_ios - start.fixed_ios,
                end.plain_ios - start.plain_ios,
                s.arenas,
                s.declared,
                s.refused
            );
            0
        }
        other => panic!("dma: unknown mode {other:?}"),
    }
}

/// Calls `f` with the stack pointer at `top` and returns to the old stack.
#[unsafe(naked)]
extern "sysv64" fn on_stack(top: u64, f: extern "sysv64" fn()) {
    core::arch::naked_asm!(
        "push rbp",
        "mov rbp, rsp",
        "mov rsp, rdi",
        "call rsi",
        "mov rsp, rbp",
        "pop rbp",
        "ret"
    )
}

static WINDOW_CLOCK: AtomicU64 = AtomicU64::new(0);
static WINDOW_FILE: AtomicU64 = AtomicU64::new(0);

extern "sysv64" fn on_window_stack() {
    // The argument blocks of these calls live on this (window) stack.
    WINDOW_CLOCK.store(libdbos::hypercall::clock_nanos(), Ordering::Relaxed);
    let missing = libdbos::hostfile::HostFile::open("nope").err();
    WINDOW_FILE.store(missing.map_or(0, |e| e.0 as u64), Ordering::Relaxed);
}

/// A hypercall whose argument block (and text) lie above 4 GiB of guest RAM:
/// run with `--memory 5G`, so RAM continues from 4 GiB up.
fn high_args() -> u8 {
    use libdbos::abi::{calls, ConsoleArgs, GuestBuf, GuestPhysAddr, HIGH_RAM_START};
    use libdbos::platform::PageSize;
    let frame = loop {
        match frames::alloc_sized(PageSize::Large) {
            Some(f) if f.start_address().as_u64() >= HIGH_RAM_START => break f,
            Some(_) => continue,
            None => {
                println!("no frame above 4 GiB");
                return 1;
            }
        }
    };
    let phys = frame.start_address().as_u64();
    let base = libdbos::memory::phys_to_virt(phys);
    let text = b"hello from above 4 GiB\n";
    // SAFETY: the frame is ours (just allocated), 2 MiB, mapped in the
    // direct map at `base`; the text and the block fit in its first page.
    let args = unsafe {
        core::ptr::copy_nonoverlapping(text.as_ptr(), (base + 256) as *mut u8, text.len());
        let args = &mut *(base as *mut ConsoleArgs);
        *args = ConsoleArgs {
            text: GuestBuf {
                addr: GuestPhysAddr(phys + 256),
                len: text.len() as u64,
            },
        };
        args
    };
    println!("argument block addr={phys:#x}");
    libdbos::hypercall::call(calls::Console, args);
    0
}

fn window_stack() -> u8 {
    use libdbos::platform::{PageSize, Platform, Protection};
    let p = libdbos::platform();
    let w = p.reserve(1 << 21).unwrap();
    // Two pages of stack, backed by frames that are not adjacent.
    let frames = [
        p.alloc_frame(PageSize::Small).unwrap(),
        p.alloc_frame(PageSize::Small).unwrap(),
    ];
    for (i, f) in frames.iter().rev().enumerate() {
        p.map(w.page(i as u64), *f, PageSize::Small, Protection::ReadWrite)
            .unwrap();
    }
    on_stack(w.page(2), on_window_stack);
    println!(
        "hypercalls from a window stack: clock>0={} open errno={}",
        WINDOW_CLOCK.load(Ordering::Relaxed) > 0,
        WINDOW_FILE.load(Ordering::Relaxed)
    );
    // A console buffer across two non-adjacent frames is refused, not misread.
    // SAFETY: pages 0 and 1 of the window are mapped read-write above (to
    // frames that are not adjacent), and nothing else refers to these bytes.
    let span = unsafe { core::slice::from_raw_parts_mut((w.base + 4090) as *mut u8, 12) };
    span.copy_from_slice(b"across pages");
    libdbos::hypercall::console_write(span);
    println!("unreachable");
    0
}

/// Values CPU 1 read (see `deferred_view`).
static SEEN: [AtomicU64; 10] = [const { AtomicU64::new(0) }; 10];
/// Figures measured on either CPU (see `deferred_view`).
static FIGURES: [AtomicU64; 17] = [const { AtomicU64::new(0) }; 17];
/// Faults that reached the window's fault hook.
static HOOK_FAULTS: AtomicU64 = AtomicU64::new(0);

/// The window fault hook of `deferred-view`: maps the faulting page to the
/// frame whose address is `context` (it holds 3) and retries.
fn map_to_context(
    fault: &libdbos::platform::Fault,
    context: usize,
) -> libdbos::platform::FaultResolution {
    use libdbos::platform::{FaultResolution, Platform};
    HOOK_FAULTS.fetch_add(1, Ordering::Relaxed);
    let frame = Frame::from_addr(context as u64).expect("an aligned frame");
    let page = fault.addr & !0xfff;
    match libdbos::platform().map(page, frame, PageSize::Small, Protection::ReadWrite) {
        Ok(()) => FaultResolution::Retry,
        Err(_) => FaultResolution::Unhandled,
    }
}

/// Stale translations forced with a deferred view (`libdbos::paging::
/// defer_view`), on 2 vCPUs. CPU 1 reads pages of a window (all mapped to
/// a frame holding 1) and defers its view of the window; CPU 0 re-points
/// them with platform calls, which invalidate only CPU 0; then:
///
/// 1. page 0 re-pointed at a frame holding 2: CPU 1 reads the stale 1,
///    invalidates locally, reads 2;
/// 2. page 2 re-pointed the same way, CPU 0 calls `invalidate_all`: CPU 1
///    reads 2 without invalidating itself (the IPI refreshed its view);
/// 3. after `end_deferred_view` the private tables are freed: frames back
///    to the baseline;
/// 4. page 1, never mapped while CPU 1 looked, mapped by CPU 0 (frame
///    holding 3): CPU 1 reads 3 at once (a not-present entry is never
///    cached; the view absorbs one fault); page 3 unmapped by CPU 0: CPU 1
///    still reads the stale 1 until it invalidates, then faults (the hook
///    maps a frame holding 3);
/// 5. page 4 re-pointed at the frame holding 2: CPU 1 reads the stale 1,
///    flushes its TLB (`flush_local`), reads 2.
///
/// The mode argument: `deferred` (the default), `no-repair` (the same with
/// CPU 1's `invalidate_local` and `flush_local` and CPU 0's
/// `invalidate_all` left out: every read stays stale), `shared` (no deferred view: what this host's KVM does
/// by itself).
fn deferred_view(mode: Option<&str>) -> u8 {
    use libdbos::platform::Platform;
    let (defer, repair) = match mode.unwrap_or("deferred") {
        "deferred" => (true, true),
        "no-repair" => (true, false),
        "shared" => (false, true),
        other => panic!("deferred-view: unknown mode {other:?}"),
    };
    let p = libdbos::platform();
    if p.cpu_count() != 2 {
        println!("deferred-view needs --vcpus 2");
        return 1;
    }
    let w = p.reserve(1 << 21).unwrap();
    let frame_holding = |value: u64| {
        let f = p.alloc_frame(PageSize::Small).unwrap();
        // SAFETY: a fresh frame, ours, reached through the direct map.
        unsafe { (p.frame_ptr(f) as *mut u64).write_volatile(value) };
        f
    };
    let (f1, f2, f3) = (frame_holding(1), frame_holding(2), frame_holding(3));
    let rw = Protection::ReadWrite;
    for i in [0, 2, 3, 4] {
        p.map(w.page(i), f1, PageSize::Small, rw).unwrap();
    }
    p.set_window_fault_hook(&w, Some(map_to_context), f3.addr() as usize)
        .unwrap();
    // SAFETY: reads of window pages that are mapped (or fault into the hook
    // above, which maps them).
    let read = |page: u64| unsafe { core::ptr::read_volatile(page as *const u64) };
    let set = |slot: &AtomicU64, v: u64| slot.store(v, Ordering::SeqCst);
    let get = |slot: &AtomicU64| slot.load(Ordering::SeqCst);
    let barrier = libdbos::sync::Barrier::new(2);
    p.run_on_all(&|cpu| {
        if cpu == 1 {
            set(&SEEN[0], read(w.page(0)));
            read(w.page(2));
            read(w.page(3));
            read(w.page(4));
            set(&FIGURES[0], frames::available());
            if defer {
                set(
                    &FIGURES[1],
                    paging::defer_view(w.base..w.base + w.len).unwrap(),
                );
            }
            set(&FIGURES[2], frames::available());
            set(&FIGURES[3], paging::view_counts().writes);
        }
        barrier.wait();
        if cpu == 0 {
            let before = p.counters();
            p.unmap(w.page(0), PageSize::Small).unwrap();
            p.map(w.page(0), f2, PageSize::Small, rw).unwrap();
            p.unmap(w.page(2), PageSize::Small).unwrap();
            p.map(w.page(2), f2, PageSize::Small, rw).unwrap();
            p.map(w.page(1), f3, PageSize::Small, rw).unwrap();
            p.unmap(w.page(3), PageSize::Small).unwrap();
            p.unmap(w.page(4), PageSize::Small).unwrap();
            p.map(w.page(4), f2, PageSize::Small, rw).unwrap();
            let d = p.counters().since(&before);
            set(&FIGURES[4], d.pte_writes);
            set(&FIGURES[5], d.local_invalidations);
            set(&FIGURES[6], d.ipis_sent);
        }
        barrier.wait();
        if cpu == 1 {
            set(&SEEN[1], read(w.page(0)));
            let vw = paging::view_counts().writes;
            if repair {
                p.invalidate_local(w.page(0));
            }
            set(&FIGURES[7], paging::view_counts().writes - vw);
            set(&SEEN[2], read(w.page(0)));
        }
        barrier.wait();
        if cpu == 0 {
            let before = p.counters();
            let vw = paging::view_counts().writes;
            if repair {
                p.invalidate_all(w.page(2));
            }
            let d = p.counters().since(&before);
            set(&FIGURES[8], d.ipis_sent);
            set(&FIGURES[9], d.remote_invalidations);
            set(&FIGURES[10], d.local_invalidations);
            set(&FIGURES[11], paging::view_counts().writes - vw);
        }
        barrier.wait();
        if cpu == 1 {
            set(&SEEN[3], read(w.page(2)));
            let absorbed = paging::view_counts().absorbed_faults;
            set(&SEEN[4], read(w.page(1)));
            set(
                &FIGURES[12],
                paging::view_counts().absorbed_faults - absorbed,
            );
            set(&SEEN[5], read(w.page(3)));
            if repair {
                p.invalidate_local(w.page(3));
            }
            set(&SEEN[6], read(w.page(3)));
            set(&SEEN[7], read(w.page(4)));
            let vw = paging::view_counts().writes;
            if repair {
                p.flush_local();
            }
            set(&FIGURES[16], paging::view_counts().writes - vw);
            set(&SEEN[8], read(w.page(4)));
            if defer {
                set(&FIGURES[13], paging::end_deferred_view().unwrap());
            }
            set(&FIGURES[14], frames::available());
            set(&FIGURES[15], paging::view_counts().tables);
        }
    });
    let f = |i: usize| get(&FIGURES[i]);
    let seen = |i: usize| get(&SEEN[i]);
    println!(
        "cpu 1 defers its view of the window: private tables={} frames during={:+} (cpu 0 defers: {})",
        f(1),
        f(2) as i64 - f(0) as i64,
        paging::deferring()
    );
    println!(
        "cpu 0 re-points pages 0, 2 and 4, maps 1, unmaps 3: pte_writes={} local_invalidations={} ipis={}",
        f(4),
        f(5),
        f(6)
    );
    println!(
        "case 1, invalidate_local: before={} after remap={} after invalidate={} (view writes {})",
        seen(0),
        seen(1),
        seen(2),
        f(7)
    );
    println!(
        "case 2, invalidate_all on cpu 0: cpu 1 reads {} (ipis={} remote={} local={} view writes {})",
        seen(3),
        f(8),
        f(9),
        f(10),
        f(11)
    );
    println!(
        "case 3, end of the view: tables freed={} frames after={:+} private tables alive={}",
        f(13),
        f(14) as i64 - f(0) as i64,
        f(15)
    );
    println!(
        "case 4, page mapped by cpu 0: reads {} (absorbed faults {}); page unmapped by cpu 0: reads {} then {} after invalidate (hook faults {})",
        seen(4),
        f(12),
        seen(5),
        seen(6),
        HOOK_FAULTS.load(Ordering::Relaxed)
    );
    println!(
        "case 5, flush_local: reads {} then {} (view writes {})",
        seen(7),
        seen(8),
        f(16)
    );
    println!(
        "view writes at the copy={} in all={}",
        f(3),
        paging::view_counts().writes
    );
    0
}
