//! Snappy's guest tests and event report (`hypervisor/tests/snappy.rs` runs
//! them and checks the console exactly).
//!
//! `dbos run snappy -- CMD`:
//! - `o1`: page-table writes at snapshot time, Snappy against the fork-like
//!   snapshot, for a 16 MiB heap and a 1 GiB (sparsely mapped) heap: the
//!   platform's count (what the walker reported) beside the entries that
//!   differ between copies of every page table taken before and after,
//!   read from memory without the walker;
//! - `consistency`: writes, a snapshot, more writes, on one vCPU; the
//!   snapshot's checksum against the writers' log;
//! - `consistency2`: the same with the writer on vCPU 1 and the snapshot
//!   taken and checked on vCPU 0 (needs 2 vCPUs);
//! - `many`: overlapping snapshots taken and released in random order while
//!   writing; frames back to the baseline at the end;
//! - `bytes`: bytes copied per snapshot against distinct pages written;
//! - `reader`: a reader on vCPU 0, its translations of the view frozen
//!   (`paging::defer_view`), reads a snapshot through its view while a
//!   writer on vCPU 1 writes (needs 2 vCPUs); `reader noflush` runs it with
//!   Snappy's fault-time reader flush disabled, and must see stale data;
//! - `drop`: Snappy and the fork-like snapshot each created, used (pages
//!   mapped, snapshots taken, copies made) and dropped 20 times (more than
//!   the 32 window slots allow at two windows each without release); free
//!   frames back to the baseline exactly, and every heap at the same
//!   address (windows and address space given back);
//! - `bench [MAX_MIB]`: per-snapshot events for heaps from 16 MiB up to
//!   MAX_MIB (default 1024), both mechanisms side by side;
//! - `kv [MAX_MIB [TABLE_PAGES [INTERVALS [SNAPSHOTS]]]]`: issue 12's
//!   key-value workload (`dbos_snapshot::kv`, the process benchmark's table)
//!   in a Snappy heap and in a fork-like heap, heaps from 16 MiB up to
//!   MAX_MIB (default 1024), a table of TABLE_PAGES pages (default 256),
//!   a snapshot every N updates for each N of the comma-separated INTERVALS
//!   (default 100,1000), SNAPSHOTS snapshots per run (default 4); writers on
//!   1 and 2 vCPUs, and 1 writer with a snapshot reader on vCPU 1 (needs 2
//!   vCPUs). Per snapshot: counted events (see [`kv`]).
#![no_std]
#![no_main]

extern crate alloc;

use alloc::vec;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use dbos_snapshot::forklike::{ForkLike, ForkSnapshot};
use dbos_snapshot::kv::{Table, Writer, SLOTS_PER_PAGE};
use dbos_snapshot::snappy::Snappy;
use dbos_snapshot::{Checksum, Snapshotter};
use libdbos::platform::Platform;
use libdbos::println;
use libdbos::sync::SpinLock;

libdbos::entry!(main);

const PAGE: u64 = libdbos::platform::PAGE_SIZE;
const MIB: u64 = 1 << 20;

fn main() -> u8 {
    let mut args = libdbos::args();
    let cmd = args.next().unwrap_or("");
    match cmd {
        "o1" => o1(),
        "consistency" => consistency(),
        "consistency2" => consistency2(),
        "many" => many(),
        "bytes" => bytes(),
        #[cfg(feature = "conformance")]
        "reader" => reader(args.next() != Some("noflush")),
        #[cfg(not(feature = "conformance"))]
        "reader" => {
            println!(
                "snappy: `reader` forces stale translations with a deferred view, which only \
                 the test build has (target/guest-test/x86_64-unknown-none/release/snappy)"
            );
            return 2;
        }
        "drop" => drop_cycles(),
        "errors" => errors(),
        "bench" => bench(args.next().and_then(|a| a.parse().ok()).unwrap_or(1024)),
        "kv" => {
            let max_mib = args.next().map_or(1024, |a| a.parse().expect("MAX_MIB"));
            let table_pages = args.next().map_or(256, |a| a.parse().expect("TABLE_PAGES"));
            let intervals: Vec<u64> = args.next().map_or(vec![100, 1000], |a| {
                a.split(',')
                    .map(|n| n.parse().expect("INTERVALS"))
                    .collect()
            });
            let snapshots = args.next().map_or(4, |a| a.parse().expect("SNAPSHOTS"));
            kv(max_mib, table_pages, &intervals, snapshots)
        }
        other => panic!("unknown command {other:?}"),
    }
    0
}

/// xorshift64*: deterministic pseudo-random numbers, no floating point.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn counters() -> libdbos::platform::EventCounts {
    libdbos::platform().counters()
}

/// The checksum of a heap image given as 8-byte slots.
fn checksum_of(slots: &[u64]) -> u64 {
    let mut c = Checksum::new();
    for s in slots {
        c.update(&s.to_le_bytes());
    }
    c.finish()
}

/// Replays `log` (slot, value) over a zeroed heap of `n` slots.
fn replay(n: usize, log: &[(u32, u64)]) -> Vec<u64> {
    let mut heap = vec![0u64; n];
    for &(slot, value) in log {
        heap[slot as usize] = value;
    }
    heap
}

/// Every page table reachable from CR3, copied by its physical address:
/// read straight from memory through the direct map, entry by entry,
/// without the page-table walker (an independent count of what a take
/// writes). Large pages are not descended into.
fn tables() -> alloc::collections::BTreeMap<u64, Vec<u64>> {
    const PRESENT: u64 = 1;
    const LARGE: u64 = 1 << 7;
    const ADDR: u64 = 0x000f_ffff_ffff_f000;
    let root = x86_64::registers::control::Cr3::read()
        .0
        .start_address()
        .as_u64();
    let mut out = alloc::collections::BTreeMap::new();
    // (table, level): 4 is the top, 1 holds 4 KiB leaves.
    let mut todo = vec![(root, 4u8)];
    while let Some((table, level)) = todo.pop() {
        if out.contains_key(&table) {
            continue;
        }
        let base = (libdbos::abi::DIRECT_MAP_BASE + table) as *const u64;
        let entries: Vec<u64> = (0..512)
            // SAFETY: `table` is a page-table page (CR3's, or one a
            // present non-leaf entry names), RAM in the direct map; a
            // volatile 8-byte read of an aligned entry.
            .map(|i| unsafe { base.add(i).read_volatile() })
            .collect();
        if level > 1 {
            for &e in &entries {
                if e & PRESENT != 0 && e & LARGE == 0 {
                    todo.push((e & ADDR, level - 1));
                }
            }
        }
        out.insert(table, entries);
    }
    out
}

/// Entries written between two [`tables`] copies, as memory shows them:
/// in a table present in both, each entry that differs (accessed and dirty
/// bits aside: the CPU sets those); in a table that is new, each entry that
/// is not zero (a new table starts zeroed).
fn entries_changed(
    before: &alloc::collections::BTreeMap<u64, Vec<u64>>,
    after: &alloc::collections::BTreeMap<u64, Vec<u64>>,
) -> u64 {
    const AD: u64 = (1 << 5) | (1 << 6);
    after
        .iter()
        .map(|(table, now)| match before.get(table) {
            Some(was) => now
                .iter()
                .zip(was)
                .filter(|(a, b)| (*a & !AD) != (*b & !AD))
                .count() as u64,
            None => now.iter().filter(|&&e| e != 0).count() as u64,
        })
        .sum()
}

fn o1() {
    // (heap length, mapped pages, stride between them)
    for (len, pages, stride) in [(16 * MIB, 256, PAGE), (1024 * MIB, 256, 4 * MIB)] {
        let s = Snappy::new(len).unwrap();
        for i in 0..pages {
            s.populate(i * stride, PAGE).unwrap();
        }
        let t0 = tables();
        let before = counters();
        let snap = s.take().unwrap();
        let d = counters().since(&before);
        let changed = entries_changed(&t0, &tables());
        println!(
            "snappy heap={}MiB mapped={pages} take_pte_writes={} (entries changed in memory {changed})",
            len / MIB,
            d.pte_writes,
        );
        s.release(snap).unwrap();

        let f = ForkLike::new(len).unwrap();
        for i in 0..pages {
            f.populate(i * stride, PAGE).unwrap();
        }
        let t0 = tables();
        let before = counters();
        let snap = f.take().unwrap();
        let d = counters().since(&before);
        let changed = entries_changed(&t0, &tables());
        println!(
            "forklike heap={}MiB mapped={pages} take_pte_writes={} (entries changed in memory {changed})",
            len / MIB,
            d.pte_writes
        );
        f.release(snap).unwrap();
    }
}

/// Slots in a heap of `pages` pages.
fn slots(pages: u64) -> usize {
    (pages * PAGE / 8) as usize
}

fn consistency() {
    let pages = 16;
    let s = Snappy::new(pages * PAGE).unwrap();
    s.populate(0, pages * PAGE).unwrap();
    let n = slots(pages);
    let mut rng = Rng(0x5eed_0001);
    let mut log: Vec<(u32, u64)> = Vec::new();
    let mut counter = 0u64;
    let mut write = |log: &mut Vec<(u32, u64)>, rng: &mut Rng| {
        counter += 1;
        let slot = rng.below(n as u64) as u32;
        let value = counter.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        s.write_u64(slot as usize * 8, value);
        log.push((slot, value));
    };
    for _ in 0..300 {
        write(&mut log, &mut rng);
    }
    let snap = s.take().unwrap();
    let at = log.len();
    for _ in 0..300 {
        write(&mut log, &mut rng);
    }
    let expected = checksum_of(&replay(n, &log[..at]));
    let got = s.checksum(&snap, 0, s.heap_len()).unwrap();
    // The heap itself, through the heap: the whole log.
    // SAFETY: the heap is mapped for its whole length (populated above).
    let heap = unsafe { core::slice::from_raw_parts(s.heap() as *const u8, s.heap_len()) };
    let heap_ok = Checksum::of(heap) == checksum_of(&replay(n, &log));
    println!(
        "consistency: snapshot_matches_log={} heap_matches_log={heap_ok} writes_before={at} writes_after={}",
        got == expected,
        log.len() - at
    );
    s.release(snap).unwrap();
}

fn consistency2() {
    assert!(libdbos::smp::cpu_count() >= 2, "needs 2 vCPUs");
    let pages = 16;
    let s = Snappy::new(pages * PAGE).unwrap();
    s.populate(0, pages * PAGE).unwrap();
    let n = slots(pages);
    // The writer holds the log's lock around each write and its log entry;
    // the taker holds it around take: the log length at the take is the
    // snapshot's exact moment.
    let log: SpinLock<Vec<(u32, u64)>> = SpinLock::new(Vec::new());
    let done = AtomicBool::new(false);
    let snap_at = AtomicUsize::new(0);
    let taken = AtomicBool::new(false);
    let snap: SpinLock<Option<dbos_snapshot::snappy::Snapshot>> = SpinLock::new(None);
    libdbos::smp::run_on_all(&|cpu| match cpu {
        1 => {
            let mut rng = Rng(0x5eed_0002);
            for i in 1..=600u64 {
                // The snapshot is taken while writes 200..400 run (the
                // vCPUs are host threads: vCPU 0 may be descheduled for a
                // long time); past that the writer waits for it, so that
                // writes after the snapshot always exist.
                if i == 401 {
                    while !taken.load(Ordering::Acquire) {
                        core::hint::spin_loop();
                    }
                }
                let slot = rng.below(n as u64) as u32;
                let value = i.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
                let mut l = log.lock();
                s.write_u64(slot as usize * 8, value);
                l.push((slot, value));
            }
            done.store(true, Ordering::Release);
        }
        0 => {
            while log.lock().len() < 200 {
                core::hint::spin_loop();
            }
            let l = log.lock();
            *snap.lock() = Some(s.take().unwrap());
            snap_at.store(l.len(), Ordering::Relaxed);
            drop(l);
            taken.store(true, Ordering::Release);
        }
        _ => {}
    });
    assert!(done.load(Ordering::Acquire));
    let log = log.lock();
    let at = snap_at.load(Ordering::Relaxed);
    let snap = snap.lock().take().unwrap();
    let expected = checksum_of(&replay(n, &log[..at]));
    let got = s.checksum(&snap, 0, s.heap_len()).unwrap();
    println!(
        "consistency2: snapshot_matches_log={} writes_after_snapshot>0={} total_writes={}",
        got == expected,
        log.len() > at,
        log.len()
    );
    s.release(snap).unwrap();
}

fn many() {
    let pages = 8;
    let s = Snappy::new(pages * PAGE).unwrap();
    s.populate(0, pages * PAGE).unwrap();
    let n = slots(pages);
    let mut shadow = vec![0u64; n];
    let mut rng = Rng(0x5eed_0003);
    let p = libdbos::platform();
    let baseline = p.free_frames();
    // (snapshot, expected checksum)
    let mut live: Vec<(dbos_snapshot::snappy::Snapshot, u64)> = Vec::new();
    let (mut taken, mut released, mut mismatches, mut max_live) = (0, 0, 0, 0);
    let mut counter = 0u64;
    let mut limbo_ok = true;
    for _ in 0..24 {
        match rng.below(3) {
            0 | 1 if live.len() < 6 => {
                let snap = s.take().unwrap();
                live.push((snap, checksum_of(&shadow)));
                taken += 1;
                max_live = max_live.max(live.len());
            }
            _ if !live.is_empty() => {
                let i = rng.below(live.len() as u64) as usize;
                let (snap, expected) = live.swap_remove(i);
                if s.checksum(&snap, 0, s.heap_len()).unwrap() != expected {
                    mismatches += 1;
                }
                s.release(snap).unwrap();
                released += 1;
            }
            _ => {}
        }
        for _ in 0..12 {
            counter += 1;
            let slot = rng.below(n as u64) as usize;
            let value = counter.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
            s.write_u64(slot * 8, value);
            shadow[slot] = value;
        }
        // Every frame missing from the baseline is a copy on the limbo list.
        let st = s.stats();
        limbo_ok &= baseline - p.free_frames() == st.limbo_tables + st.limbo_frames;
    }
    let during = baseline - p.free_frames();
    while let Some((snap, expected)) = live.pop() {
        if s.checksum(&snap, 0, s.heap_len()).unwrap() != expected {
            mismatches += 1;
        }
        s.release(snap).unwrap();
        released += 1;
    }
    let st = s.stats();
    println!(
        "many: taken={taken} released={released} max_live={max_live} mismatches={mismatches} limbo_accounts_for_every_frame={limbo_ok} copies_before_last_releases>0={}",
        during > 0
    );
    println!(
        "many: frames_after_minus_baseline={} limbo_tables={} limbo_frames={} freed_equals_copied={}",
        p.free_frames() as i64 - baseline as i64,
        st.limbo_tables,
        st.limbo_frames,
        st.freed == st.tables_copied + st.pages_copied
    );
}

/// Cycles of `drop`: more than the guest's 32 window slots / 2 windows.
const DROP_CYCLES: usize = 20;

/// Misuse, refused with the right error and no harm done: bad heap sizes,
/// more live snapshots than slots, another instance's snapshot, a range
/// outside the heap. Frames back to the baseline at the end.
fn errors() {
    let p = libdbos::platform();
    let baseline = p.free_frames();
    let e = |r: Result<(), dbos_snapshot::SnapError>| match r {
        Ok(()) => alloc::string::String::from("ok"),
        Err(e) => alloc::format!("{e:?}"),
    };
    println!(
        "errors: new(0)={} new(1GiB+4KiB)={}",
        e(Snappy::new(0).map(|_| ())),
        e(Snappy::new(1024 * MIB + PAGE).map(|_| ()))
    );
    {
        let a = Snappy::new(4 * PAGE).unwrap();
        a.populate(0, 4 * PAGE).unwrap();
        let mut live = Vec::new();
        let mut first_refused = None;
        for i in 0..20 {
            match a.take() {
                Ok(s) => live.push(s),
                Err(err) => {
                    first_refused.get_or_insert((i, e(Err(err))));
                }
            }
        }
        let (at, err) = first_refused.unwrap_or((0, "none".into()));
        println!("errors: took {} then refused take {at}: {err}", live.len());
        for s in live {
            a.release(s).unwrap();
        }
        let b = Snappy::new(4 * PAGE).unwrap();
        b.populate(0, 4 * PAGE).unwrap();
        // The same slot and epoch in both instances.
        let sa = a.take().unwrap();
        let sb = b.take().unwrap();
        a.write_u64(0, 1);
        b.write_u64(0, 2);
        let mut buf = [0u8; 8];
        let foreign_read = e(b.read(&sa, 0, &mut buf));
        let out_of_range = e(a.read(&sa, 4 * PAGE as usize - 4, &mut buf));
        let foreign_release = e(b.release(sa));
        println!(
            "errors: foreign read={foreign_read} out of range={out_of_range} foreign release={foreign_release} live a={} b={}",
            a.live(),
            b.live()
        );
        b.read(&sb, 0, &mut buf).unwrap();
        println!(
            "errors: b's snapshot still reads {}",
            u64::from_le_bytes(buf)
        );
        b.release(sb).unwrap();
        let f = ForkLike::new(4 * PAGE).unwrap();
        let g = ForkLike::new(4 * PAGE).unwrap();
        let fs = f.take().unwrap();
        println!("errors: forklike foreign release={}", e(g.release(fs)));
    }
    println!(
        "errors: frames_after_minus_baseline={}",
        p.free_frames() as i64 - baseline as i64
    );
}

fn drop_cycles() {
    let p = libdbos::platform();
    let baseline = p.free_frames();
    let mut bases = Vec::new();
    let mut exact = 0;
    for i in 0..DROP_CYCLES {
        let s = Snappy::new(4 * PAGE).unwrap();
        bases.push(s.heap_window().base);
        s.populate(0, 4 * PAGE).unwrap();
        let a = s.take().unwrap();
        s.write_u64(0, i as u64 + 1); // a page copied for `a`
        let b = s.take().unwrap();
        s.write_u64(PAGE as usize, 7); // a page copied for `a` and `b`
        s.release(a).unwrap();
        // The Snappy goes first: its state lives on in `b` until `b` goes.
        drop(s);
        drop(b);
        exact += usize::from(p.free_frames() == baseline);
    }
    println!(
        "drop: snappy cycles={DROP_CYCLES} back_to_baseline={exact} frames_after_minus_baseline={} same_heap_base={}",
        p.free_frames() as i64 - baseline as i64,
        bases.iter().all(|&b| b == bases[0])
    );
    bases.clear();
    exact = 0;
    for i in 0..DROP_CYCLES {
        let f = ForkLike::new(4 * PAGE).unwrap();
        bases.push(f.heap_window().base);
        f.populate(0, 4 * PAGE).unwrap();
        let _live = f.take().unwrap();
        // SAFETY: page 0 of the heap is mapped (populated) and the fault
        // hook resolves the copy on write.
        unsafe { (f.heap_window().base as *mut u64).write_volatile(i as u64 + 1) };
        // Dropped with its snapshot still live.
        drop(f);
        exact += usize::from(p.free_frames() == baseline);
    }
    println!(
        "drop: forklike cycles={DROP_CYCLES} back_to_baseline={exact} frames_after_minus_baseline={} same_heap_base={}",
        p.free_frames() as i64 - baseline as i64,
        bases.iter().all(|&b| b == bases[0])
    );
}

fn bytes() {
    let pages = 32;
    let s = Snappy::new(pages * PAGE).unwrap();
    s.populate(0, pages * PAGE).unwrap();
    let write_pages = |list: &[u64]| {
        for &pg in list {
            for k in 0..3 {
                s.write_u64((pg * PAGE + k * 512) as usize, pg * 10 + k + 1);
            }
        }
    };
    // Frames taken from the frame allocator: the copies, counted apart from
    // Snappy's own counters (whose `bytes_copied` is pages copied x 4096).
    let p = libdbos::platform();
    let free0 = p.free_frames();
    let s1 = s.take().unwrap();
    write_pages(&[1, 4, 9, 16, 25]);
    let a = s.stats();
    let free1 = p.free_frames();
    println!(
        "bytes: after s1 distinct_pages=5 bytes_copied={} tables_copied={} cow_faults={} reader_flushes={} frames_taken={}",
        a.bytes_copied,
        a.tables_copied,
        a.cow_faults,
        a.reader_shootdowns,
        free0 - free1
    );
    let s2 = s.take().unwrap();
    // Page 4 was written after s1 (s2 shares the written frame), 2 and 30
    // were not (s1 and s2 both reach them: one copy serves both).
    write_pages(&[4, 2, 30, 2]);
    let b = s.stats();
    println!(
        "bytes: after s2 distinct_pages=3 bytes_copied={} tables_copied={} cow_faults={} reader_flushes={} frames_taken={}",
        b.bytes_copied - a.bytes_copied,
        b.tables_copied - a.tables_copied,
        b.cow_faults - a.cow_faults,
        b.reader_shootdowns,
        free1 - p.free_frames()
    );
    s.release(s1).unwrap();
    s.release(s2).unwrap();
}

/// A reader on vCPU 0 and a writer on vCPU 1. The reader first reads every
/// page of the view (its walks set the accessed bits in the real tables, as
/// any CPU's would before it caches a translation), then freezes its
/// translations of the view (`paging::defer_view`, test mode: they stay as
/// they are until this CPU invalidates, as stale TLB entries would; this
/// host's KVM would otherwise resynchronise them by itself), reads while the
/// writer writes, and reads every slot once more after the writer is done.
/// With the reader flush, no read sees a later write; without it the frozen
/// view keeps the heap's frames and sees them all.
#[cfg(feature = "conformance")]
fn reader(flush: bool) {
    assert!(libdbos::smp::cpu_count() >= 2, "needs 2 vCPUs");
    let pages = 8;
    let s = Snappy::new(pages * PAGE).unwrap();
    s.populate(0, pages * PAGE).unwrap();
    s.set_reader_flush(flush);
    let n = slots(pages);
    for i in 0..n {
        s.write_u64(i * 8, i as u64 + 1);
    }
    let snap = s.take().unwrap();
    let view = snap.as_ptr() as u64;
    let ready = AtomicBool::new(false);
    let done = AtomicBool::new(false);
    let mismatches = AtomicU64::new(0);
    let reads = AtomicU64::new(0);
    let final_mismatches = AtomicU64::new(0);
    let check = |slot: usize| {
        // SAFETY: the view is mapped read-only while `snap` lives.
        let v = unsafe { core::ptr::read_volatile((view + slot as u64 * 8) as *const u64) };
        reads.fetch_add(1, Ordering::Relaxed);
        v != slot as u64 + 1
    };
    let mut written = vec![false; n];
    let mut rng = Rng(0x5eed_0005);
    let picks: Vec<usize> = (0..200).map(|_| rng.below(n as u64) as usize).collect();
    for &p in &picks {
        written[p] = true;
    }
    libdbos::smp::run_on_all(&|cpu| match cpu {
        0 => {
            for pg in 0..pages as usize {
                check(pg * 512);
            }
            libdbos::paging::defer_view(view..view + pages * PAGE).unwrap();
            ready.store(true, Ordering::Release);
            let mut rng = Rng(0x5eed_0004);
            while !done.load(Ordering::Acquire) {
                if check(rng.below(n as u64) as usize) {
                    mismatches.fetch_add(1, Ordering::Relaxed);
                }
            }
            for slot in 0..n {
                if check(slot) {
                    final_mismatches.fetch_add(1, Ordering::Relaxed);
                }
            }
            libdbos::paging::end_deferred_view().unwrap();
        }
        1 => {
            while !ready.load(Ordering::Acquire) {
                core::hint::spin_loop();
            }
            for (i, &slot) in picks.iter().enumerate() {
                s.write_u64(slot * 8, (1 << 63) | i as u64);
            }
            done.store(true, Ordering::Release);
        }
        _ => {}
    });
    let st = s.stats();
    // While writing, how many stale reads a missing flush gives depends on
    // timing: printed (as a count) only with the flush, where it must be 0.
    let during = if flush {
        alloc::format!(
            " mismatches_while_writing={}",
            mismatches.load(Ordering::Relaxed)
        )
    } else {
        alloc::string::String::new()
    };
    println!(
        "reader: flush={flush} final_pass_mismatches={} (slots written after the snapshot: {}){during} reads>{n}={} pages_copied={} reader_flushes={}",
        final_mismatches.load(Ordering::Relaxed),
        written.iter().filter(|w| **w).count(),
        reads.load(Ordering::Relaxed) > n as u64,
        st.pages_copied,
        st.reader_shootdowns
    );
    s.release(snap).unwrap();
}

/// Per-snapshot events, both mechanisms, heaps from 16 MiB to `max_mib`.
fn bench(max_mib: u64) {
    const SNAPSHOTS: u64 = 3;
    const WRITES: u64 = 16;
    const DENSITY: u64 = MIB; // one mapped page per MiB of heap
    println!(
        "bench: {SNAPSHOTS} snapshots per heap, {WRITES} random pages written after each, one page mapped per MiB, {} vCPUs",
        libdbos::smp::cpu_count()
    );
    println!("mechanism heap_mib mapped snapshot take_pte_writes take_ipis cow_faults bytes_copied fault_ipis fault_pte_writes vmm_exits kvm_exits");
    let mut len = 16 * MIB;
    while len <= max_mib * MIB {
        let mapped = len / DENSITY;
        let s = Snappy::new(len).unwrap();
        let f = ForkLike::new(len).unwrap();
        for i in 0..mapped {
            s.populate(i * DENSITY, PAGE).unwrap();
            f.populate(i * DENSITY, PAGE).unwrap();
        }
        let mut rng = Rng(0x5eed_0006 + len);
        let mut picks = Vec::new();
        for _ in 0..SNAPSHOTS * WRITES {
            picks.push(rng.below(mapped) * DENSITY);
        }
        // Snappy
        for k in 0..SNAPSHOTS {
            let mut tot = [0u64; 6];
            let c0 = counters();
            let st0 = s.stats();
            let snap = s.take().unwrap();
            let c1 = counters();
            for &off in &picks[(k * WRITES) as usize..((k + 1) * WRITES) as usize] {
                s.write_u64(off as usize, k + 1);
            }
            let c2 = counters();
            let st1 = s.stats();
            tot[0] = c1.since(&c0).pte_writes;
            tot[1] = c1.since(&c0).ipis_sent;
            tot[2] = st1.cow_faults - st0.cow_faults;
            tot[3] = st1.bytes_copied - st0.bytes_copied;
            tot[4] = c2.since(&c1).ipis_sent;
            tot[5] = c2.since(&c1).pte_writes;
            s.release(snap).unwrap();
            print_row("snappy", len, mapped, k, &tot, c2.since(&c0));
        }
        // Fork-like
        for k in 0..SNAPSHOTS {
            let mut tot = [0u64; 6];
            let c0 = counters();
            let st0 = f.stats();
            let snap = f.take().unwrap();
            let c1 = counters();
            for &off in &picks[(k * WRITES) as usize..((k + 1) * WRITES) as usize] {
                let p = (f.heap_window().base + off) as *mut u64;
                // SAFETY: inside the fork-like heap, mapped (populated), and
                // made writable by its fault hook.
                unsafe { p.write_volatile(k + 1) };
            }
            let c2 = counters();
            let st1 = f.stats();
            tot[0] = c1.since(&c0).pte_writes;
            tot[1] = c1.since(&c0).ipis_sent;
            tot[2] = st1.cow_faults - st0.cow_faults;
            tot[3] = st1.bytes_copied - st0.bytes_copied;
            tot[4] = c2.since(&c1).ipis_sent;
            tot[5] = c2.since(&c1).pte_writes;
            f.release(snap).unwrap();
            print_row("forklike", len, mapped, k, &tot, c2.since(&c0));
        }
        len *= 4;
    }
}

/// A count that may not be known (KVM's exits on a host whose KVM does not
/// offer its statistics): "n/a" then.
fn maybe(n: Option<u64>) -> alloc::string::String {
    n.map_or_else(|| "n/a".into(), |n| alloc::format!("{n}"))
}

/// One `bench` row; `all` is the snapshot's whole window (take and writes),
/// for its exits: to the VMM, and all VM exits as KVM counted them.
fn print_row(
    name: &str,
    len: u64,
    mapped: u64,
    k: u64,
    e: &[u64; 6],
    all: libdbos::platform::EventCounts,
) {
    println!(
        "{name} {} {mapped} {} {} {} {} {} {} {} {} {}",
        len / MIB,
        k + 1,
        e[0],
        e[1],
        e[2],
        e[3],
        e[4],
        e[5],
        all.vmm_exits,
        maybe(all.kvm_exits)
    );
}

/// What the `kv` workload needs of a snapshot mechanism: Snappy and the
/// fork-like snapshot, driven identically.
trait Mechanism: Sync {
    type Snap: Send;
    const NAME: &'static str;
    /// The heap's first byte.
    fn base(&self) -> *mut u8;
    fn populate(&self, offset: u64, len: u64);
    fn take_snap(&self) -> Self::Snap;
    fn release_snap(&self, snap: Self::Snap);
    /// The snapshot's view of the heap's first byte.
    fn view(&self, snap: &Self::Snap) -> *const u8;
    /// (copy-on-write faults, bytes copied) so far.
    fn events(&self) -> (u64, u64);
}

impl Mechanism for Snappy {
    type Snap = dbos_snapshot::snappy::Snapshot;
    const NAME: &'static str = "snappy";
    fn base(&self) -> *mut u8 {
        self.heap()
    }
    fn populate(&self, offset: u64, len: u64) {
        Snappy::populate(self, offset, len).unwrap()
    }
    fn take_snap(&self) -> Self::Snap {
        self.take().unwrap()
    }
    fn release_snap(&self, snap: Self::Snap) {
        self.release(snap).unwrap()
    }
    fn view(&self, snap: &Self::Snap) -> *const u8 {
        snap.as_ptr()
    }
    fn events(&self) -> (u64, u64) {
        let s = self.stats();
        (s.cow_faults, s.bytes_copied)
    }
}

impl Mechanism for ForkLike {
    type Snap = ForkSnapshot;
    const NAME: &'static str = "forklike";
    fn base(&self) -> *mut u8 {
        self.heap_window().base as *mut u8
    }
    fn populate(&self, offset: u64, len: u64) {
        ForkLike::populate(self, offset, len).unwrap()
    }
    fn take_snap(&self) -> Self::Snap {
        self.take().unwrap()
    }
    fn release_snap(&self, snap: Self::Snap) {
        self.release(snap).unwrap()
    }
    fn view(&self, snap: &Self::Snap) -> *const u8 {
        snap.as_ptr(self)
    }
    fn events(&self) -> (u64, u64) {
        let s = self.stats();
        (s.cow_faults, s.bytes_copied)
    }
}

/// One `kv` run's shape.
#[derive(Clone, Copy)]
struct KvRun {
    mapped: u64,
    table_pages: u64,
    writers: usize,
    reader: bool,
    interval: u64,
    snapshots: u64,
}

/// A `kv` row: per snapshot, in the order of [`KV_COLUMNS`] after `snap`
/// (the exits to the VMM, then KVM's count of all VM exits, `None` where
/// this host's KVM does not say).
type KvRow = ([u64; 10], u64, Option<u64>);

const KV_COLUMNS: &str = "mechanism heap_mib mapped writers reader interval snap updates take_pte_writes take_ipis release_ipis cow_faults distinct_pages bytes_copied fault_ipis fault_pte_writes reader_bad_passes vmm_exits kvm_exits";

/// Issue 12's key-value workload under both mechanisms, heaps from 16 MiB
/// to `max_mib`, as counted events per snapshot.
///
/// Layout of each heap (both mechanisms alike): the hash table
/// (`dbos_snapshot::kv`, half of its `table_pages * 32` slots holding keys)
/// in its first `table_pages` pages, and one more mapped page at every
/// further MiB (`heap_mib - 1` pages the writers never touch: the rest of a
/// heap of that size, mapped sparsely because mapping a whole GiB in this
/// emulated guest would take many minutes). Every mapped page exists before
/// the first snapshot, so a take sees `table_pages + heap_mib - 1` pages.
///
/// Per configuration (writers on 1 vCPU; 1 writer and a reader on vCPU 1;
/// writers on 2 vCPUs) and interval N: `snapshots` rounds of "take a
/// snapshot, release the previous one, then the writers make N updates in
/// all (N / writers each, on their own keys)", the last snapshot released at
/// the end. The take happens while the writers wait, so every update is
/// ordered after one take and before the next: the pages written after a
/// snapshot are known exactly (a bitmap the writers mark). The reader, when
/// there is one, digests the table through the newest snapshot's view once
/// before the writers start (touching every page of it), then again and
/// again while they write, and once after; every digest must equal the
/// heap's digest at the take. In the test build (feature `conformance`),
/// between its first pass and its last, the reader's translations of the
/// view are frozen (`paging::defer_view`, as in `reader`): this host's KVM
/// would otherwise resynchronise them by itself, and a missing reader
/// flush (Snappy's IPI at a copy-on-write fault) would go unseen; frozen,
/// only the flush refreshes them, so a digest that must stay equal shows
/// the flush was sent. The measured build does not freeze them: the frozen
/// view is a private copy of the tables, which this host's shadow paging
/// pays for in exits, and which is not what the benchmark measures.
fn kv(max_mib: u64, table_pages: u64, intervals: &[u64], snapshots: u64) {
    assert!(libdbos::smp::cpu_count() >= 2, "needs 2 vCPUs");
    assert!(
        (1..=256).contains(&table_pages),
        "the table fits in the heap's first MiB"
    );
    let slots = table_pages as usize * SLOTS_PER_PAGE;
    println!(
        "kv: table {table_pages} pages, {slots} slots of 128 bytes, {} keys; one more mapped page per further MiB of heap; {snapshots} snapshots per run; {} vCPUs",
        slots / 2,
        libdbos::smp::cpu_count()
    );
    println!("{KV_COLUMNS}");
    let mut mib = 16;
    while mib <= max_mib {
        let len = mib * MIB;
        let s = Snappy::new(len).unwrap();
        let f = ForkLike::new(len).unwrap();
        kv_heap(&s, mib, table_pages, intervals, snapshots);
        kv_heap(&*f, mib, table_pages, intervals, snapshots);
        mib *= 4;
    }
}

fn kv_heap<M: Mechanism>(m: &M, mib: u64, table_pages: u64, intervals: &[u64], snapshots: u64) {
    m.populate(0, table_pages * PAGE);
    for i in 1..mib {
        m.populate(i * MIB, PAGE);
    }
    // SAFETY: the heap is at least 16 MiB, mapped and writable for its whole
    // length while `m` lives (the mechanism's fault hook), and the table's
    // pages lie in its first MiB; only this workload writes it.
    let table = unsafe { Table::new(m.base(), table_pages as usize * SLOTS_PER_PAGE) };
    table.fill();
    for (writers, reader) in [(1, false), (1, true), (2, false)] {
        for &interval in intervals {
            let run = KvRun {
                mapped: table_pages + mib - 1,
                table_pages,
                writers,
                reader,
                interval,
                snapshots,
            };
            for (k, (row, vmm, kvm)) in kv_run(m, &table, run).iter().enumerate() {
                let mut line = alloc::format!(
                    "{} {mib} {} {writers} {} {interval} {}",
                    M::NAME,
                    run.mapped,
                    u8::from(reader),
                    k + 1
                );
                for v in row {
                    line.push_str(&alloc::format!(" {v}"));
                }
                println!("{line} {vmm} {}", maybe(*kvm));
            }
        }
    }
}

fn kv_run<M: Mechanism>(m: &M, table: &Table, run: KvRun) -> Vec<KvRow> {
    assert!(run.interval.is_multiple_of(run.writers as u64));
    let per_writer = run.interval / run.writers as u64;
    let slots = table.slots();
    let keys = table.keys();
    let written: Vec<AtomicU64> = (0..run.table_pages.div_ceil(64))
        .map(|_| AtomicU64::new(0))
        .collect();
    let mark = |slot: usize| {
        let page = slot / SLOTS_PER_PAGE;
        written[page / 64].fetch_or(1 << (page % 64), Ordering::Relaxed);
    };
    const STOP: u64 = u64::MAX;
    // The round the writers may run (1-based; STOP ends the run), the round
    // vCPU 1 finished, the round whose first reader pass is done, the round
    // whose writes are all done.
    let round = AtomicU64::new(0);
    let helper_done = AtomicU64::new(0);
    let reader_ready = AtomicU64::new(0);
    let writes_done = AtomicU64::new(0);
    let view = AtomicU64::new(0);
    let expected = AtomicU64::new(0);
    let bad_passes = AtomicU64::new(0);
    let rows: SpinLock<Vec<KvRow>> = SpinLock::new(Vec::new());
    let wait = |a: &AtomicU64, k: u64| {
        while a.load(Ordering::Acquire) < k {
            core::hint::spin_loop();
        }
    };
    let digest_view = || {
        // SAFETY: the view of the newest snapshot, which stays live until
        // this round's `helper_done`; the table's pages are mapped in it
        // (mapped in the heap at the take) and 8-byte aligned.
        unsafe { dbos_snapshot::kv::digest(view.load(Ordering::Acquire) as *const u8, slots) }
    };
    libdbos::smp::run_on_all(&|cpu| match cpu {
        0 => {
            let mut writer = Writer::new(0, run.writers, keys);
            let mut prev: Option<M::Snap> = None;
            for k in 1..=run.snapshots {
                // The writers wait: the heap is the snapshot's image.
                if run.reader {
                    // SAFETY: the table's pages of the heap, mapped.
                    let d = unsafe { dbos_snapshot::kv::digest(m.base(), slots) };
                    expected.store(d, Ordering::Relaxed);
                }
                let c0 = counters();
                let e0 = m.events();
                let snap = m.take_snap();
                let c1 = counters();
                view.store(m.view(&snap) as u64, Ordering::Relaxed);
                if let Some(p) = prev.replace(snap) {
                    m.release_snap(p);
                }
                let c2 = counters();
                for w in &written {
                    w.store(0, Ordering::Relaxed);
                }
                round.store(k, Ordering::Release);
                if run.reader {
                    wait(&reader_ready, k);
                }
                for _ in 0..per_writer {
                    mark(writer.update(table));
                }
                writes_done.store(k, Ordering::Release);
                if run.writers == 2 || run.reader {
                    wait(&helper_done, k);
                }
                let c3 = counters();
                let e1 = m.events();
                let take = c1.since(&c0);
                let faults = c3.since(&c2);
                let all = c3.since(&c0);
                rows.lock().push((
                    [
                        run.interval,
                        take.pte_writes,
                        take.ipis_sent,
                        c2.since(&c1).ipis_sent,
                        e1.0 - e0.0,
                        written
                            .iter()
                            .map(|w| u64::from(w.load(Ordering::Relaxed).count_ones()))
                            .sum(),
                        e1.1 - e0.1,
                        faults.ipis_sent,
                        faults.pte_writes,
                        bad_passes.swap(0, Ordering::Relaxed),
                    ],
                    all.vmm_exits,
                    all.kvm_exits,
                ));
            }
            if let Some(p) = prev {
                m.release_snap(p);
            }
            round.store(STOP, Ordering::Release);
        }
        1 if run.writers == 2 => {
            let mut writer = Writer::new(1, 2, keys);
            for k in 1..=run.snapshots {
                wait(&round, k);
                for _ in 0..per_writer {
                    mark(writer.update(table));
                }
                helper_done.store(k, Ordering::Release);
            }
        }
        1 if run.reader => {
            for k in 1..=run.snapshots {
                wait(&round, k);
                let check = || {
                    if digest_view() != expected.load(Ordering::Relaxed) {
                        bad_passes.fetch_add(1, Ordering::Relaxed);
                    }
                };
                check();
                // The first pass cached the view's translations (and set
                // the accessed bits Snappy checks): in the test build,
                // freeze them.
                #[cfg(feature = "conformance")]
                {
                    let v = view.load(Ordering::Acquire);
                    libdbos::paging::defer_view(v..v + run.table_pages * PAGE).expect("defer_view");
                }
                reader_ready.store(k, Ordering::Release);
                while writes_done.load(Ordering::Acquire) < k {
                    check();
                }
                check();
                #[cfg(feature = "conformance")]
                libdbos::paging::end_deferred_view().expect("end_deferred_view");
                helper_done.store(k, Ordering::Release);
            }
        }
        _ => {}
    });
    let rows = core::mem::take(&mut *rows.lock());
    rows
}
