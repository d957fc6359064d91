//! `kvstore -- memory ...`: the memory engine of the key-value database
//! (`dbos_kvstore::memory`, a hash table whose every byte lives in one
//! heap) on Snappy, the guest's page-table snapshots, driven by the YCSB
//! workload driver on every vCPU.
//!
//! It loads the records, takes a snapshot (Snappy's `take`: the writers'
//! stall and the page-table writes are counted), runs the workload while the
//! snapshot lives (every first write to a page after it copies that page),
//! then writes the snapshot's view in the snapshot file format
//! (`dump.dbkv`, to memory: the guest has no file system) and reads it back:
//! it must hold exactly what the table held at the snapshot, while the live
//! table holds every acknowledged write of the run. A second snapshot after
//! the run shows that taking one costs the same page-table writes whatever
//! the data.

use alloc::string::String;
use alloc::vec::Vec;
use dbos_kvstore::memory::dump::{dump, View};
use dbos_kvstore::memory::format::{decode, Encoder};
use dbos_kvstore::memory::heap::HeapMem;
use dbos_kvstore::memory::table::Table;
use dbos_kvstore::server::engine::{EngineError, Write};
use dbos_kvstore::workload::{self, Acked, Distribution, Spec, Stats, Workload};
use dbos_kvstore::{Kv, Op};
use dbos_snapshot::snappy::{Snappy, Snapshot};
use dbos_snapshot::Snapshotter;
use libdbos::platform::{EventCounts, Platform};
use libdbos::println;

/// The memory engine as the workload driver sees it: one lock around the
/// table (the process server's engine does the same).
struct MemKv {
    table: spin::Mutex<Table>,
}

impl Kv for MemKv {
    type Error = EngineError;
    fn get(&self, key: &[u8], out: &mut Vec<u8>) -> Result<bool, EngineError> {
        Ok(self.table.lock().get(key, out).is_some())
    }
    fn put(&self, key: &[u8], value: &[u8]) -> Result<bool, EngineError> {
        let mut t = self.table.lock();
        let new = t.get(key, &mut Vec::new()).is_none();
        t.apply(&[Write::Put {
            key,
            value,
            expires: None,
        }])?;
        Ok(new)
    }
    fn delete(&self, key: &[u8]) -> Result<bool, EngineError> {
        Ok(self.table.lock().apply(&[Write::Delete { key }])? > 0)
    }
    fn transaction(&self, ops: &[Op<'_>]) -> Result<(), EngineError> {
        let writes: Vec<Write<'_>> = ops
            .iter()
            .map(|op| match *op {
                Op::Put { key, value } => Write::Put {
                    key,
                    value,
                    expires: None,
                },
                Op::Delete { key } => Write::Delete { key },
            })
            .collect();
        self.table.lock().apply(&writes).map(|_| ())
    }
    fn scan(
        &self,
        _start: &[u8],
        _limit: usize,
        _f: &mut dyn FnMut(&[u8], &[u8]),
    ) -> Result<usize, EngineError> {
        Err(EngineError::Unsupported(
            "the memory engine is a hash table: no ordered scans".into(),
        ))
    }
}

/// A snapshot's view, read through the `Snapshotter` interface (also the
/// guest server's memory engine's, `snapengine`).
pub(crate) struct SnapView<'a> {
    pub(crate) snappy: &'a Snappy,
    pub(crate) snap: &'a Snapshot,
}

impl View for SnapView<'_> {
    type Error = String;
    fn read(&mut self, offset: usize, buf: &mut [u8]) -> Result<(), String> {
        self.snappy
            .read(self.snap, offset, buf)
            .map_err(|e| alloc::format!("{e:?}"))
    }
}

/// An order-free digest of a set of (key, value) pairs: their count and
/// the wrapping sum of a hash of each.
fn digest_pair(key: &[u8], value: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in key.iter().chain([0xffu8].iter()).chain(value) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// The digest of the live table (under its lock).
fn digest_table(t: &Table) -> (u64, u64) {
    let (mut n, mut sum) = (0u64, 0u64);
    let mut slot = 0;
    let mut entries = Vec::new();
    loop {
        entries.clear();
        let next = t.scan(slot, 256, &mut entries);
        for (key, value, _) in &entries {
            n += 1;
            sum = sum.wrapping_add(digest_pair(key, value));
        }
        match next {
            Some(s) => slot = s,
            None => return (n, sum),
        }
    }
}

struct Taken {
    snap: Snapshot,
    digest: (u64, u64),
}

/// Takes a snapshot between writes (under the table's lock) and reports
/// its cost.
fn take(kv: &MemKv, snappy: &Snappy, when: &str) -> Taken {
    let t = kv.table.lock();
    let digest = digest_table(&t);
    let before = libdbos::platform().counters();
    let t0 = super::now_ns();
    let snap = snappy.take_snapshot().expect("a snapshot");
    let stall = super::now_ns() - t0;
    let after = libdbos::platform().counters();
    drop(t);
    let s = snappy.stats();
    println!(
        "snapshot {when}: {} keys, {} KiB of heap in use; writers stopped {} us; {} page-table \
         writes, {} local invalidations, {} whole-TLB flushes, {} IPIs",
        digest.0,
        kv.table.lock().heap_bytes_used() / 1024,
        stall / 1000,
        s.last_take_writes,
        after.local_invalidations - before.local_invalidations,
        after.local_flushes - before.local_flushes,
        after.ipis_sent - before.ipis_sent,
    );
    Taken { snap, digest }
}

/// Writes the snapshot's view as a snapshot file (to memory), reads it
/// back and checks it holds exactly what the table held at the snapshot.
fn save_and_check(snappy: &Snappy, taken: &Taken) -> bool {
    let t0 = super::now_ns();
    let mut enc = Encoder::new(Vec::new(), 0).expect("a Vec sink");
    let summary = match dump(
        &mut SnapView {
            snappy,
            snap: &taken.snap,
        },
        &mut enc,
    ) {
        Ok(s) => s,
        Err(e) => {
            println!("dump failed: {e:?}");
            return false;
        }
    };
    let (file, _) = enc.finish().expect("a Vec sink");
    let ms = (super::now_ns() - t0) / 1_000_000;
    let (mut n, mut sum) = (0u64, 0u64);
    let decoded = decode(&file[..], &mut |r| {
        n += 1;
        sum = sum.wrapping_add(digest_pair(r.key, r.value));
        Ok(())
    });
    let ok = decoded.is_ok() && (n, sum) == taken.digest;
    println!(
        "snapshot file: {} records, {} bytes, read {} KiB of the view in {ms} ms; read back: \
         {n} records, {}",
        summary.records,
        file.len(),
        summary.view_bytes / 1024,
        match (&decoded, ok) {
            (Err(e), _) => alloc::format!("damaged: {e:?}"),
            (Ok(_), true) => "exactly the table at the snapshot".into(),
            (Ok(_), false) => "NOT the table at the snapshot".into(),
        }
    );
    ok
}

/// One vCPU's share of a phase, given its progress callback.
type PhaseFn<'a> = dyn Fn(usize, &dyn Fn(u64)) -> Stats + Sync + 'a;

/// Runs the memory-engine job; the exit status.
pub fn run(args: &[&'static str]) -> u8 {
    let mut spec = Spec {
        workload: Workload::A,
        distribution: Distribution::Zipfian,
        records: 400,
        operations: 400,
        value_size: 100,
        threads: libdbos::platform().cpu_count(),
        seed: 1,
        ordered_keys: false,
        load_batch: 8,
    };
    let mut heap_kib: u64 = 2048;
    let usage = |e: String| {
        println!("{e}\nusage: kvstore -- memory [records N] [ops N] [workload a|b|c|d|f] [dist uniform|zipfian] [value N] [heap KIB] [seed N]");
        super::STATUS_USAGE
    };
    if !args.len().is_multiple_of(2) {
        return usage(alloc::format!("'{}' has no value", args[args.len() - 1]));
    }
    for pair in args.chunks_exact(2) {
        let (name, value) = (pair[0], pair[1]);
        let Ok(number) = value.parse::<u64>() else {
            if name == "workload" || name == "dist" {
                let r = if name == "workload" {
                    value.parse().map(|w| spec.workload = w)
                } else {
                    value.parse().map(|d| spec.distribution = d)
                };
                if let Err(e) = r {
                    return usage(alloc::format!("{e}"));
                }
                continue;
            }
            return usage(alloc::format!("{name} takes a whole number, not '{value}'"));
        };
        match name {
            "records" => spec.records = number,
            "ops" => spec.operations = number,
            "value" => spec.value_size = number as usize,
            "heap" => heap_kib = number,
            "seed" => spec.seed = number,
            _ => return usage(alloc::format!("unknown option '{name}'")),
        }
    }
    if spec.workload == Workload::E {
        return usage("workload e scans in key order: the memory engine is a hash table".into());
    }
    if let Err(e) = spec.validate() {
        return usage(alloc::format!("{e}"));
    }
    let heap_len = (heap_kib as usize * 1024).next_multiple_of(dbos_snapshot::PAGE_SIZE);
    let snappy = match Snappy::new(heap_len as u64) {
        Ok(s) => s,
        Err(e) => return usage(alloc::format!("heap of {heap_kib} KiB: {e:?}")),
    };
    snappy
        .populate(0, heap_len as u64)
        .expect("the heap's pages");
    // SAFETY: Snappy's heap is mapped, readable and writable for
    // `heap_len` bytes (populated above) for as long as `snappy` lives,
    // which outlives the table (both live to the end of this function),
    // and only the table touches it (Snappy reads it for snapshots).
    let heap = unsafe { HeapMem::new(snappy.heap(), heap_len) };
    let kv = MemKv {
        table: spin::Mutex::new(Table::format(heap, spec.seed).expect("a table")),
    };
    println!("{spec}; memory engine, {heap_kib} KiB heap on Snappy");
    let acked = Acked::new(&spec);
    let phase = |name: &'static str, total: u64, f: &PhaseFn<'_>| {
        let before = libdbos::platform().counters();
        let (stats, ns) = super::on_all(|cpu| {
            let share = spec.share(total, cpu);
            f(cpu, &super::progress(name, cpu, share.end - share.start))
        });
        let c = events(&before, &libdbos::platform().counters(), total);
        super::report(name, &spec, &stats, ns, &c);
    };
    phase("load", spec.records, &|cpu, p| {
        workload::load(&kv, &spec, &acked, cpu, super::now_ns, p)
    });
    let first = take(&kv, &snappy, "after load");
    let cow_before = snappy.stats();
    phase("run", spec.operations, &|cpu, p| {
        workload::run(&kv, &spec, &acked, cpu, super::now_ns, p)
    });
    let cow = snappy.stats();
    println!(
        "while the snapshot lived: {} copy-on-write faults, {} pages ({} KiB) and {} page tables \
         copied",
        cow.cow_faults - cow_before.cow_faults,
        cow.pages_copied - cow_before.pages_copied,
        (cow.bytes_copied - cow_before.bytes_copied) / 1024,
        cow.tables_copied - cow_before.tables_copied,
    );
    let mut ok = save_and_check(&snappy, &first);
    let (v, _) = super::on_all(|cpu| {
        let share = spec.share(acked.claimed(), cpu);
        let p = super::progress("verify", cpu, share.end - share.start);
        workload::verify(&kv, &spec, &acked, cpu, super::now_ns, &p)
    });
    let all = workload::Verification::merged(&v);
    super::print_lines(&alloc::format!("verify the live table: {all}"));
    ok &= all.passed();
    let second = take(&kv, &snappy, "after run");
    ok &= save_and_check(&snappy, &second);
    for t in [first, second] {
        if let Err(e) = snappy.release_snapshot(t.snap) {
            println!("release: {e:?}");
            ok = false;
        }
    }
    if let Err(e) = kv.table.lock().check() {
        println!("table check failed: {e}");
        ok = false;
    }
    println!("{}", if ok { "PASSED" } else { "FAILED" });
    u8::from(!ok)
}

/// The platform's events per operation of a phase.
fn events(before: &EventCounts, after: &EventCounts, ops: u64) -> Vec<(&'static str, f64)> {
    let per = |a: u64, b: u64| (a - b) as f64 / ops.max(1) as f64;
    alloc::vec![
        ("VM exits / op", per(after.vmm_exits, before.vmm_exits)),
        ("faults / op", per(after.faults, before.faults)),
        (
            "page-table writes / op",
            per(after.pte_writes, before.pte_writes)
        ),
        (
            "local invalidations / op",
            per(after.local_invalidations, before.local_invalidations)
        ),
        ("IPIs / op", per(after.ipis_sent, before.ipis_sent)),
    ]
}
