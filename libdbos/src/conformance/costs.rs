//! Event counts per operation, measured on any [`Platform`]: the source of
//! the table in the crate's `docs/costs.md`.
//!
//! [`measure`] performs each operation of [`OPERATIONS`] a fixed number of
//! times, reads [`Platform::counters`] before and after, and returns the
//! totals; [`write_markdown`] prints them as a table of events per operation
//! (two decimals, integer arithmetic). It runs in the guest as well as in a
//! process (no heap, no floating point), so both columns of the cost table
//! come from the same code. Like the checks, it is not reentrant and uses
//! the suite's hooks; it needs a few frames, one 2 MiB frame, and windows of
//! `iterations` pages.
//!
//! `shootdowns` in a process is the machine-wide count from
//! `/proc/interrupts`, so other activity on the machine adds to it.

use super::{
    pattern, read, wait_until, write, Failure, Session, ACT_MAP_FRAME, HOOK_FRAME, IPIS, STAGE,
    WAIT_CYCLES,
};
use crate::platform::{EventCounts, PageSize, Platform, Protection, LARGE_PAGE_SIZE, PAGE_SIZE};
use core::fmt;
use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};

/// The operations measured, in table order.
pub const OPERATIONS: [&str; 19] = [
    "map 4 KiB page",
    "unmap 4 KiB page",
    "map + write + unmap 4 KiB page, other CPUs idle",
    "map + write + unmap 4 KiB page, another CPU reading the window",
    "protect 4 KiB page read-only, then read-write",
    "unmap 4 KiB page, then fault it in (the hook maps it)",
    "map + write + unmap 2 MiB page",
    "invalidate_local",
    "flush_local",
    "invalidate_all",
    "send_ipi (and wait for the hook)",
    "alloc + free 4 KiB frame",
    "unmap_many, 16 written pages a call (per page)",
    "invalidate_local_many, 16 pages a call (per page)",
    "test_and_clear_accessed, page accessed (per page)",
    "test_and_clear_accessed, page not accessed (per page)",
    "remap mapped 4 KiB page to another frame",
    "reserve 2 MiB window, map 1 page, release it (still mapped)",
    "reserve 2 MiB window, release it empty",
];

/// Pages per call of the batched operations.
const BATCH: usize = 16;

/// One operation's totals.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cost {
    pub operation: &'static str,
    /// How many times it ran (0: not measured on this platform, e.g. a
    /// cross-CPU operation with one CPU).
    pub ops: u64,
    /// The events of all `ops` runs together.
    pub events: EventCounts,
}

/// Performs every operation `iterations` times (1..=4096) and returns the
/// event totals.
pub fn measure<P: Platform>(
    p: &'static P,
    iterations: u64,
) -> Result<[Cost; OPERATIONS.len()], Failure> {
    let s = Session::begin(p)?;
    if !(1..=4096).contains(&iterations) {
        fail!("iterations = {iterations}, expected 1..=4096");
    }
    let n = iterations;
    let mut costs = OPERATIONS.map(|operation| Cost {
        operation,
        ops: 0,
        events: EventCounts::default(),
    });
    let (small, rw) = (PageSize::Small, Protection::ReadWrite);
    let w = ok!(p.reserve(n * PAGE_SIZE + LARGE_PAGE_SIZE));
    let f = ok!(p.alloc_frame(small));
    let g = ok!(p.alloc_frame(small));
    // The small pages used are `w.page(0..n)`; the last 2 MiB of the window
    // (above them) is for the large mapping. Warm up: create the page tables
    // of the small pages' 2 MiB regions.
    let top = w.base + w.len - LARGE_PAGE_SIZE;
    let mut region = w.base;
    while region < top {
        ok!(p.map(region, g, small, rw));
        ok!(p.unmap(region, small));
        region += LARGE_PAGE_SIZE;
    }
    let mut record = |i: usize, ops: u64, before: &EventCounts, after: &EventCounts| {
        costs[i].ops = ops;
        costs[i].events = after.since(before);
    };

    // 0, 1: map n distinct pages (one frame at all of them), write each (so
    // that the unmap has a translation to remove), then unmap them.
    let c = p.counters();
    for i in 0..n {
        ok!(p.map(w.page(i), f, small, rw));
    }
    let d = p.counters();
    record(0, n, &c, &d);
    for i in 0..n {
        // SAFETY: mapped read-write.
        unsafe { write(w.page(i) + 8, i) };
    }
    let c = p.counters();
    for i in 0..n {
        ok!(p.unmap(w.page(i), small));
    }
    let d = p.counters();
    record(1, n, &c, &d);

    // 2: map + write + unmap one page, other CPUs idle.
    let page = w.page(1);
    let c = p.counters();
    for i in 0..n {
        ok!(p.map(page, f, small, rw));
        // SAFETY: mapped read-write.
        unsafe { write(page + 8, i) };
        ok!(p.unmap(page, small));
    }
    let d = p.counters();
    record(2, n, &c, &d);

    // 3: the same on CPU 0 while CPU 1 keeps reading another page of the
    // window (so its TLB holds the window's translations).
    if p.cpu_count() >= 2 {
        let busy = w.page(0);
        ok!(p.map(busy, g, small, rw));
        STAGE.store(0, Ordering::SeqCst);
        let result = AtomicU32::new(0);
        let delta = [const { AtomicU64::new(0) }; 9];
        p.run_on_all(&|cpu| {
            if cpu == 1 {
                STAGE.store(1, Ordering::SeqCst);
                while STAGE.load(Ordering::SeqCst) != 2 {
                    // SAFETY: `busy` stays mapped until the stage is 2.
                    unsafe { read(busy) };
                }
            } else if cpu == 0 {
                if !wait_until(WAIT_CYCLES, || STAGE.load(Ordering::SeqCst) == 1) {
                    result.store(line!(), Ordering::SeqCst);
                    STAGE.store(2, Ordering::SeqCst);
                    return;
                }
                let c = p.counters();
                for i in 0..n {
                    if p.map(page, f, small, rw).is_err() {
                        result.store(line!(), Ordering::SeqCst);
                        break;
                    }
                    // SAFETY: mapped read-write.
                    unsafe { write(page + 8, i) };
                    if p.unmap(page, small).is_err() {
                        result.store(line!(), Ordering::SeqCst);
                        break;
                    }
                }
                let d = p.counters().since(&c);
                for (slot, value) in delta.iter().zip(d.to_array()) {
                    slot.store(value, Ordering::SeqCst);
                }
                STAGE.store(2, Ordering::SeqCst);
            }
        });
        if let Some(line) = core::num::NonZeroU32::new(result.load(Ordering::SeqCst)) {
            return Err(Failure::new(
                file!(),
                line.get(),
                format_args!("failed on CPU 0"),
            ));
        }
        let d = EventCounts::from_array(delta.each_ref().map(|a| a.load(Ordering::SeqCst)));
        // `d` is already a difference: subtract nothing (KVM's count, when
        // known, included).
        let zero = EventCounts {
            kvm_exits: d.kvm_exits.map(|_| 0),
            ..EventCounts::default()
        };
        record(3, n, &zero, &d);
        ok!(p.unmap(busy, small));
    }

    // 4: protect round trips.
    ok!(p.map(page, f, small, rw));
    let c = p.counters();
    for _ in 0..n {
        ok!(p.protect(page, small, Protection::ReadOnly));
        ok!(p.protect(page, small, rw));
    }
    let d = p.counters();
    record(4, n, &c, &d);

    // 5: unmap, then touch: the hook maps the frame again.
    HOOK_FRAME.store(f.addr(), Ordering::SeqCst);
    s.fault_hook(ACT_MAP_FRAME);
    // SAFETY: `f` is allocated.
    unsafe { write(super::frame_addr(p, f, 0), pattern(5, 5)) };
    let c = p.counters();
    for _ in 0..n {
        ok!(p.unmap(page, small));
        // SAFETY: unmapped; the hook maps `f` again.
        if unsafe { read(page) } != pattern(5, 5) {
            fail!("the faulted-in page does not hold the frame's data");
        }
    }
    let d = p.counters();
    record(5, n, &c, &d);
    ok!(p.unmap(page, small));
    p.set_fault_hook(None);

    // 6: 2 MiB map + unmap.
    let large = ok!(p.alloc_frame(PageSize::Large));
    let c = p.counters();
    for i in 0..n {
        ok!(p.map(top, large, PageSize::Large, rw));
        // SAFETY: mapped read-write.
        unsafe { write(top + LARGE_PAGE_SIZE / 2, i) };
        ok!(p.unmap(top, PageSize::Large));
    }
    let d = p.counters();
    record(6, n, &c, &d);
    // SAFETY: unmapped, not used again.
    unsafe { p.free_frame(large, PageSize::Large) };

    // 7, 8, 9: TLB calls.
    let c = p.counters();
    for i in 0..n {
        p.invalidate_local(w.page(i));
    }
    let d = p.counters();
    record(7, n, &c, &d);
    let c = p.counters();
    for _ in 0..n {
        p.flush_local();
    }
    let d = p.counters();
    record(8, n, &c, &d);
    let c = p.counters();
    for i in 0..n {
        p.invalidate_all(w.page(i));
    }
    let d = p.counters();
    record(9, n, &c, &d);

    // 10: IPIs to the last CPU, each waited for.
    if p.capabilities().interrupts {
        let target = p.cpu_count() - 1;
        p.set_ipi_hook(Some(super::ipi_hook::<P>));
        let c = p.counters();
        for i in 0..n {
            ok!(p.send_ipi(target));
            if !wait_until(WAIT_CYCLES, || IPIS[target].load(Ordering::SeqCst) > i) {
                fail!("IPI {i} to CPU {target} did not arrive");
            }
        }
        let d = p.counters();
        record(10, n, &c, &d);
        p.set_ipi_hook(None);
    }

    // 11: frames.
    let c = p.counters();
    for _ in 0..n {
        let x = ok!(p.alloc_frame(small));
        // SAFETY: just allocated, never mapped.
        unsafe { p.free_frame(x, small) };
    }
    let d = p.counters();
    record(11, n, &c, &d);

    // 12: unmap_many over written pages, in batches.
    for i in 0..n {
        ok!(p.map(w.page(i), f, small, rw));
        // SAFETY: mapped read-write.
        unsafe { write(w.page(i) + 8, i) };
    }
    let mut pages = [0u64; BATCH];
    let mut results = [Err(crate::platform::Error::OutOfFrames); BATCH];
    let c = p.counters();
    let mut i = 0;
    while i < n {
        let k = (n - i).min(BATCH as u64) as usize;
        for (j, page) in pages[..k].iter_mut().enumerate() {
            *page = w.page(i + j as u64);
        }
        p.unmap_many(&pages[..k], small, &mut results[..k]);
        if let Some(Err(e)) = results[..k].iter().find(|r| r.is_err()) {
            fail!("unmap_many: {e:?}");
        }
        i += k as u64;
    }
    let d = p.counters();
    record(12, n, &c, &d);

    // 13: invalidate_local_many, in batches.
    let c = p.counters();
    let mut i = 0;
    while i < n {
        let k = (n - i).min(BATCH as u64) as usize;
        for (j, page) in pages[..k].iter_mut().enumerate() {
            *page = w.page(i + j as u64);
        }
        p.invalidate_local_many(&pages[..k]);
        i += k as u64;
    }
    let d = p.counters();
    record(13, n, &c, &d);

    // 14, 15: a clock sweep over n mapped pages, every page read since the
    // last sweep; then again with none touched.
    for i in 0..n {
        ok!(p.map(w.page(i), f, small, rw));
    }
    let mut bits = [None; BATCH];
    let sweep = |bits: &mut [Option<crate::platform::AccessBits>; BATCH]| {
        let mut i = 0;
        while i < n {
            let k = (n - i).min(BATCH as u64) as usize;
            p.test_and_clear_accessed(w.page(i), small, &mut bits[..k])?;
            i += k as u64;
        }
        Ok::<(), crate::platform::Error>(())
    };
    ok!(sweep(&mut bits));
    for i in 0..n {
        // SAFETY: mapped read-write.
        unsafe { read(w.page(i)) };
    }
    let c = p.counters();
    ok!(sweep(&mut bits));
    let d = p.counters();
    record(14, n, &c, &d);
    let c = p.counters();
    ok!(sweep(&mut bits));
    let d = p.counters();
    record(15, n, &c, &d);
    for i in 0..n {
        ok!(p.unmap(w.page(i), small));
    }

    // 16: remap a mapped page to the other frame, back and forth.
    ok!(p.map(page, f, small, rw));
    let c = p.counters();
    for i in 0..n {
        ok!(p.remap(page, if i % 2 == 0 { g } else { f }, small, rw));
    }
    let d = p.counters();
    record(16, n, &c, &d);
    ok!(p.unmap(page, small));

    // 17: a window's life: reserve, map one page, release with the page
    // still mapped (the release unmaps it, frees the tables the map made and
    // flushes every CPU); every cycle reuses the slot and the range.
    let c = p.counters();
    for _ in 0..n {
        let x = ok!(p.reserve(LARGE_PAGE_SIZE));
        ok!(p.map(x.page(3), f, small, rw));
        let mut reported = 0;
        // SAFETY: nothing accesses the window; its only page maps `f`,
        // which the release reports and which stays allocated.
        let r = ok!(unsafe { p.release(x, &mut |_, _, _| reported += 1) });
        if (r.pages, reported) != (1, 1) {
            fail!("release reported {} pages, {reported} calls", r.pages);
        }
    }
    let d = p.counters();
    record(17, n, &c, &d);

    // 18: reserve and release an empty window.
    let c = p.counters();
    for _ in 0..n {
        let x = ok!(p.reserve(LARGE_PAGE_SIZE));
        // SAFETY: never used.
        ok!(unsafe { p.release(x, &mut |_, _, _| {}) });
    }
    let d = p.counters();
    record(18, n, &c, &d);

    // SAFETY: both frames are unmapped everywhere and not used again.
    unsafe {
        p.free_frame(f, small);
        p.free_frame(g, small);
    }
    // SAFETY: the measuring window is not used any more.
    ok!(unsafe { p.release(w, &mut |_, _, _| {}) });
    Ok(costs)
}

/// `total / ops` with two decimals, rounded; "n/a" when `ops` is 0.
struct PerOp(u64, u64);

/// [`PerOp`] of a count that may not be known: "n/a" when it is not.
struct MaybePerOp(Option<u64>, u64);

impl fmt::Display for MaybePerOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(total) => PerOp(total, self.1).fmt(f),
            None => f.write_str("n/a"),
        }
    }
}

impl fmt::Display for PerOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let PerOp(total, ops) = *self;
        if ops == 0 {
            return f.write_str("n/a");
        }
        let hundredths = (u128::from(total) * 100 + u128::from(ops) / 2) / u128::from(ops);
        if hundredths % 100 == 0 {
            write!(f, "{}", hundredths / 100)
        } else {
            write!(f, "{}.{:02}", hundredths / 100, hundredths % 100)
        }
    }
}

/// Writes `costs` as a markdown table of events per operation.
pub fn write_markdown(out: &mut dyn fmt::Write, costs: &[Cost]) -> fmt::Result {
    writeln!(
        out,
        "| operation | faults | pte_writes | local_invalidations | local_flushes | remote_invalidations | ipis_sent | vmm_exits | kvm_exits | shootdowns |"
    )?;
    writeln!(out, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")?;
    for c in costs {
        let e = &c.events;
        writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            c.operation,
            PerOp(e.faults, c.ops),
            PerOp(e.pte_writes, c.ops),
            PerOp(e.local_invalidations, c.ops),
            PerOp(e.local_flushes, c.ops),
            PerOp(e.remote_invalidations, c.ops),
            PerOp(e.ipis_sent, c.ops),
            PerOp(e.vmm_exits, c.ops),
            MaybePerOp(e.kvm_exits, c.ops),
            PerOp(e.shootdowns, c.ops),
        )?;
    }
    Ok(())
}
