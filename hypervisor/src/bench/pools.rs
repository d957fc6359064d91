//! Pools: B+tree point lookups on the vmcache-style pool, the hash-table
//! pool and Tabby (on the process platform) in process mode
//! (`dbos_benches::pools`, the code behind `btree-compare`), with the
//! reference vmcache binary as an optional peer (`$DBOS_VMCACHE`,
//! `dbos_benches::vmcache`), in memory and out of memory (data 4x the
//! pool, against QD1 reads of the same pages), 1 and 2 threads, quiet and
//! with busy threads beside; and the guest's Tabby against the classic
//! invalidate-all eviction in counted events per evicted page
//! (`dbos run ... tabby -- bench`, a child process).

use super::plot::{self, Axis, Series};
use super::report::{Cell, Figure, Kind, Section, Table, Value};
use super::{disk_problem, Ctx};
use dbos_benches::load::BackgroundLoad;
use dbos_benches::median;
use dbos_benches::pools::{
    build, config, direct, lookups, ooo_measure, qd1_reads, tabby, tabby_max_pages, warm, OooRun,
    ProcessTabby, KEYS_PER_LEAF,
};
use dbos_benches::vmcache::{self, Reference};
use dbos_bufferpool::btree::BTree;
use dbos_bufferpool::device::{BlockDevice, DmaBytes};
use dbos_bufferpool::direct::DirectDevice;
use dbos_bufferpool::pool::hash::HashPool;
use dbos_bufferpool::pool::vmcache::VmCache;
use dbos_bufferpool::pool::BufferManager;
use dbos_bufferpool::PAGE_SIZE;
use dbos_nvme::host::BackingFile;
use std::sync::Arc;

/// The pools measured here, by index; [`REF`] is the reference vmcache.
const POOLS: [&str; 3] = ["vmcache", "hash", "tabby"];
/// The method index of the reference vmcache binary.
const REF: usize = 3;
const REF_NAME: &str = "vmcache (reference)";
const THREADS: [usize; 2] = [1, 2];
/// Busy threads beside the loaded runs (the pools' targets in
/// `bufferpool/docs/pools.md` hold quiet and with 2 busy threads).
const LOAD: usize = 2;

/// The name of method `m` (a pool or the reference).
fn name(m: usize) -> &'static str {
    if m == REF {
        REF_NAME
    } else {
        POOLS[m]
    }
}

/// The run with the median rate.
fn median_run(mut r: Vec<OooRun>) -> OooRun {
    r.sort_by(|a, b| a.rate.total_cmp(&b.rate));
    r.swap_remove((r.len() - 1) / 2)
}

/// The sizes of a run.
struct Shape {
    keys: u64,
    data_mib: u64,
    pool_mib: u64,
    secs: f64,
    rounds: usize,
    /// `tabby -- bench` arguments (keys, frames, lookups), none: defaults.
    guest_args: Vec<&'static str>,
}

/// In memory: lookups/s per (busy threads beside, method, threads), the
/// median round; and why Tabby or the reference have none, if they have
/// none.
struct InMemory {
    rates: Vec<(usize, usize, usize, f64)>,
    tabby: Result<(), Value>,
    reference: Result<(), Value>,
    /// Where Tabby cannot map the section's tree: the vmcache-style pool
    /// and Tabby on the largest tree it can map.
    tabby_sized: Option<Result<TabbySized, Value>>,
}

/// In memory on the largest tree Tabby can map in this process: lookups/s
/// per (pool, threads), quiet, the median round.
struct TabbySized {
    keys: u64,
    pages: u64,
    rates: Vec<(usize, usize, f64)>,
}

/// Out of memory: QD1 IOPS and each pool's run per thread count, medians.
struct OutOfMemory {
    qd1: f64,
    runs: Vec<(usize, usize, OooRun)>,
    /// QD1 IOPS and each pool's 1-thread run with [`LOAD`] busy threads
    /// beside.
    qd1_loaded: f64,
    loaded: Vec<(usize, OooRun)>,
    /// Why Tabby has no runs, if it has none.
    tabby: Result<(), Value>,
    /// The reference's 1-thread lookups/s (quiet, loaded), or why none.
    reference: Result<(f64, f64), Value>,
    keys: u64,
    used_pages: u64,
    cap_pages: usize,
}

/// The three trees (Tabby's only where it could be built).
struct Trees<'a> {
    vm: BTree<'a, VmCache<DirectDevice>>,
    hash: BTree<'a, HashPool<DirectDevice>>,
    tabby: Option<BTree<'a, ProcessTabby>>,
}

/// `$body` with `$t` bound to the tree of pool `$p` (Tabby's must exist).
macro_rules! on_tree {
    ($trees:expr, $p:expr, |$t:ident| $body:expr) => {
        match $p {
            0 => {
                let $t = &$trees.vm;
                $body
            }
            1 => {
                let $t = &$trees.hash;
                $body
            }
            _ => {
                let $t = $trees.tabby.as_ref().expect("Tabby runs only if built");
                $body
            }
        }
    };
}

/// The pools that run: vmcache-style, hash, and Tabby if it was built.
fn pools_of(trees: &Trees<'_>) -> Vec<usize> {
    let mut p = vec![0, 1];
    if trees.tabby.is_some() {
        p.push(2);
    }
    p
}

/// The reference vmcache (`$DBOS_VMCACHE`) with a pool of `physgb` GiB and
/// a window (and sparse file in the work directory) of `virtgb` GiB, or
/// why it does not run.
fn reference(ctx: &Ctx, physgb: u64, virtgb: u64) -> Result<Reference, Value> {
    Reference::new(
        reference_bin()?,
        ctx.work.join("vmcache.block"),
        physgb,
        virtgb,
    )
    .map_err(Value::not_available)
}

/// The reference vmcache binary (`$DBOS_VMCACHE`), or "not installed".
fn reference_bin() -> Result<std::path::PathBuf, Value> {
    let tool = format!("vmcache: set {} to its binary", vmcache::ENV);
    let bin = vmcache::named(None).ok_or_else(|| Value::not_installed(&tool))?;
    match vmcache::problem(&bin) {
        Some(p) => Err(Value::not_installed(&format!("{tool}; {p}"))),
        None => Ok(bin),
    }
}

/// Runs the section.
pub fn run(ctx: &Ctx) -> Section {
    let shape = if ctx.quick {
        Shape {
            keys: 20_000,
            data_mib: 16,
            pool_mib: 4,
            secs: 0.2,
            rounds: 1,
            guest_args: vec!["300", "8", "40"],
        }
    } else {
        Shape {
            keys: 1_000_000,
            data_mib: 1024,
            pool_mib: 256,
            secs: 2.0,
            rounds: 3,
            guest_args: vec![],
        }
    };
    let mut s = Section::new(
        "pools",
        "Buffer pools: vmcache-style, hash-table and Tabby pools, the reference vmcache; \
         Tabby in the guest",
        &format!(
            "Process mode, each thread's own pread/pwrite on an O_DIRECT file (the direct \
             device): a B+tree of 8-byte keys and 120-byte values, uniform random lookups \
             from {THREADS:?} threads for {} s, {} round(s) in rotated order, medians, on the \
             vmcache-style pool, the hash-table pool and Tabby (on the process platform, \
             its eviction writing no page-table entry), and the reference vmcache binary \
             (${}) as a child process where it is given. In memory: {} keys, pools larger \
             than the tree, quiet and with {LOAD} busy threads beside. Out of memory: {} MiB \
             of tree over pools of {} MiB, after a warm-up, against QD1 random 4 KiB reads \
             of the same pages, quiet and (1 thread) with {LOAD} busy threads beside. Guest: \
             Tabby against the classic pool that invalidates every TLB on eviction, same \
             tree shape, events per evicted page.",
            shape.secs,
            shape.rounds,
            vmcache::ENV,
            shape.keys,
            shape.data_mib,
            shape.pool_mib
        ),
    );
    let command = format!(
        "{} (building block: btree-compare --keys {} --ooo-data-mib {} --ooo-pool-mib {} \
         --threads 1,2 --seconds {} --rounds {} --background-load 0,{LOAD}; Tabby: \
         dbos_benches::pools::tabby)",
        ctx.command("pools"),
        shape.keys,
        shape.data_mib,
        shape.pool_mib,
        shape.secs,
        shape.rounds
    );
    let (mem, ooo) = match disk_problem(&ctx.work) {
        Some(p) => (Err(Value::not_available(&p)), Err(Value::not_available(p))),
        None => {
            ctx.progress("pools", &format!("in memory: building {} keys", shape.keys));
            // A workload that fails panics: the section fails (mod.rs).
            let mem = in_memory(ctx, &shape);
            ctx.progress(
                "pools",
                &format!(
                    "out of memory: building {} MiB of tree over a {} MiB pool",
                    shape.data_mib, shape.pool_mib
                ),
            );
            let ooo = out_of_memory(ctx, &shape);
            (mem, ooo)
        }
    };
    let guest_args = shape.guest_args.join(" ");
    ctx.progress(
        "pools",
        &format!("guest: tabby -- bench {guest_args} (KVM, counted events)"),
    );
    let guest = guest_bench(ctx, &shape.guest_args);
    let guest_command = format!(
        "{} (building block: dbos run --vcpus 2 --disk DISK --disk-size 4M --disk-spin-us \
         200000 {} -- bench {guest_args})",
        ctx.command("pools"),
        crate::guest_image("tabby").display()
    );
    s.figures = figures(&mem, &ooo, &guest);
    s.tables.push(in_memory_table(&mem, &command));
    if let Ok(InMemory {
        tabby_sized: Some(t),
        ..
    }) = &mem
    {
        s.tables.push(tabby_sized_table(t, &command));
    }
    s.tables.push(ooo_table(&ooo, &command));
    s.tables.push(ooo_counted_table(&ooo, &command));
    match &guest {
        Ok(rows) => s.tables.push(guest_table(rows, &guest_command)),
        Err(v) => s.notes.push(format!("guest events: {}", v.text())),
    }
    plots(ctx, &mut s, &mem, &ooo);
    match &mem {
        Err(v) => s.notes.push(format!("in memory: {}", v.text())),
        Ok(m) => {
            if let Err(v) = &m.tabby {
                s.notes.push(format!(
                    "Tabby in memory at this tree: {}{}",
                    v.text(),
                    if m.tabby_sized.is_some() {
                        "; so it is measured in memory on the largest tree it can map (its own \
                         table)"
                    } else {
                        ""
                    }
                ));
            }
        }
    }
    match &ooo {
        Err(v) => s.notes.push(format!("out of memory: {}", v.text())),
        Ok(o) => {
            if let Err(v) = &o.tabby {
                s.notes.push(format!(
                    "Tabby out of memory: {} (measured in memory only)",
                    v.text()
                ));
            }
        }
    }
    s.notes.push(
        "Not measured yet here: the pools on the queue pair (btree-compare --io qp). TLB \
         shootdowns are the whole machine's (the TLB line of /proc/interrupts), other \
         processes' included; in a process Tabby's eviction writes no entry, but pointing a \
         page at its new frame on a load is an mmap over the old mapping, which the kernel \
         may shoot down."
            .into(),
    );
    s
}

fn backing(ctx: &Ctx, name: &str, pages: u64) -> Result<Arc<BackingFile>, Value> {
    let path = ctx.work.join(name);
    let _ = std::fs::remove_file(&path);
    BackingFile::create(&path, pages * PAGE_SIZE as u64)
        .map(Arc::new)
        .map_err(|e| Value::not_available(format!("cannot create {}: {e}", path.display())))
}

fn in_memory(ctx: &Ctx, shape: &Shape) -> Result<InMemory, Value> {
    let keys = shape.keys;
    let pages = keys / KEYS_PER_LEAF * 11 / 10 + 4096;
    let file = backing(ctx, "pools-memory.img", pages)?;
    let nq = THREADS.iter().max().copied().unwrap_or(1) + 1;
    let cap = pages as usize;
    let vm = VmCache::new(direct(&file, nq), config(cap, 0)).expect("vmcache pool");
    let meta = build(&vm, keys);
    let used = vm.page_count();
    let hash = HashPool::new(direct(&file, nq), config(cap, used)).expect("hash pool");
    // Tabby's window covers the tree's pages, every one resident.
    let tabby_pool = tabby(&file, nq, used as usize, used, used).map_err(Value::not_available);
    let trees = Trees {
        vm: BTree::open(&vm, meta).expect("open the tree"),
        hash: BTree::open(&hash, meta).expect("open the tree"),
        tabby: tabby_pool
            .as_ref()
            .ok()
            .map(|t| BTree::open(t, meta).expect("open the tree")),
    };
    // Every page resident in the hash pool and Tabby too.
    trees.hash.scan_forward(None, |_, _| true).expect("scan");
    if let Some(t) = &trees.tabby {
        t.scan_forward(None, |_, _| true).expect("scan");
    }
    let mut refr = reference(ctx, 1, 4);
    let mut rates = Vec::new();
    for load in [0, LOAD] {
        let _busy = BackgroundLoad::start(load);
        let tag = if load == 0 {
            String::new()
        } else {
            format!(" +{load} busy threads")
        };
        let mut methods = pools_of(&trees);
        if refr.is_ok() {
            methods.push(REF);
        }
        let items: Vec<(usize, usize)> = THREADS
            .iter()
            .flat_map(|&t| methods.iter().map(move |&m| (m, t)))
            .collect();
        let mut runs: Vec<Vec<f64>> = vec![Vec::new(); items.len()];
        for round in 0..shape.rounds {
            for k in 0..items.len() {
                let i = (k + round) % items.len();
                let (m, t) = items[i];
                let rate = if m == REF {
                    let Ok(r) = &refr else { continue };
                    match r.lookups(keys, t, shape.secs) {
                        Ok(rate) => rate.wall,
                        Err(e) => {
                            refr = Err(Value::not_available(e));
                            continue;
                        }
                    }
                } else {
                    on_tree!(trees, m, |tree| lookups(tree, keys, t, shape.secs).wall)
                };
                ctx.progress(
                    "pools",
                    &format!(
                        "in memory{tag} round {}: {} {t} thread(s): {rate:.0} lookups/s",
                        round + 1,
                        name(m)
                    ),
                );
                runs[i].push(rate);
            }
        }
        for (i, r) in runs.iter().enumerate() {
            if !r.is_empty() && (items[i].0 != REF || refr.is_ok()) {
                rates.push((load, items[i].0, items[i].1, median(r)));
            }
        }
    }
    if let Some(t) = &trees.tabby {
        assert_eq!(t.pool().stats().evictions, 0, "the in-memory Tabby evicted");
    }
    let tabby_sized = (tabby_pool.is_err() && used > tabby_max_pages()).then(|| {
        drop(trees);
        tabby_sized(ctx, shape)
    });
    Ok(InMemory {
        rates,
        tabby: tabby_pool.as_ref().map(|_| ()).map_err(Clone::clone),
        reference: refr.map(|_| ()),
        tabby_sized,
    })
}

/// The vmcache-style pool and Tabby in memory on the largest tree Tabby
/// can map in this process ([`tabby_max_pages`]), quiet.
fn tabby_sized(ctx: &Ctx, shape: &Shape) -> Result<TabbySized, Value> {
    let keys = tabby_max_pages() * KEYS_PER_LEAF * 8 / 10;
    ctx.progress(
        "pools",
        &format!("in memory, Tabby-sized: building {keys} keys"),
    );
    let pages = keys / KEYS_PER_LEAF * 11 / 10 + 4096;
    let file = backing(ctx, "pools-tabby.img", pages)?;
    let nq = THREADS.iter().max().copied().unwrap_or(1) + 1;
    let vm = VmCache::new(direct(&file, nq), config(pages as usize, 0)).expect("vmcache pool");
    let meta = build(&vm, keys);
    let used = vm.page_count();
    let tp = tabby(&file, nq, used as usize, used, used).map_err(Value::not_available)?;
    let tv = BTree::open(&vm, meta).expect("open the tree");
    let tt = BTree::open(&tp, meta).expect("open the tree");
    tt.scan_forward(None, |_, _| true).expect("scan");
    let items: Vec<(usize, usize)> = THREADS.iter().flat_map(|&t| [(0, t), (2, t)]).collect();
    let mut runs: Vec<Vec<f64>> = vec![Vec::new(); items.len()];
    for round in 0..shape.rounds {
        for k in 0..items.len() {
            let i = (k + round) % items.len();
            let (p, t) = items[i];
            let rate = if p == 0 {
                lookups(&tv, keys, t, shape.secs).wall
            } else {
                lookups(&tt, keys, t, shape.secs).wall
            };
            ctx.progress(
                "pools",
                &format!(
                    "in memory, Tabby-sized, round {}: {} {t} thread(s): {rate:.0} lookups/s",
                    round + 1,
                    POOLS[p]
                ),
            );
            runs[i].push(rate);
        }
    }
    Ok(TabbySized {
        keys,
        pages: used,
        rates: items
            .iter()
            .zip(&runs)
            .map(|(&(p, t), r)| (p, t, median(r)))
            .collect(),
    })
}

fn tabby_sized_table(t: &Result<TabbySized, Value>, command: &str) -> Table {
    let rate = |p: usize, th: usize| -> Value {
        match t {
            Ok(t) => t
                .rates
                .iter()
                .find(|r| r.0 == p && r.1 == th)
                .map_or_else(|| Value::not_available("not run"), |r| Value::num(r.2)),
            Err(v) => v.clone(),
        }
    };
    let mut rows = Vec::new();
    for &th in &THREADS {
        for p in [0, 2] {
            let ratio = match (rate(0, th).number(), rate(p, th)) {
                (Some(a), Value::Number { value }) => Value::num(a / value),
                (_, v) => v,
            };
            rows.push(vec![
                Cell::from(POOLS[p]),
                th.to_string().into(),
                rate(p, th).into(),
                ratio.into(),
            ]);
        }
    }
    Table {
        title: match t {
            Ok(t) => format!(
                "In memory on the largest tree Tabby can map in this process: {} keys, {} pages",
                t.keys, t.pages
            ),
            Err(_) => "In memory on the largest tree Tabby can map in this process".into(),
        },
        command: command.into(),
        kind: Kind::WallClock,
        columns: ["pool", "threads", "lookups/s", "vmcache-style / this"]
            .map(String::from)
            .to_vec(),
        rows,
    }
}

fn out_of_memory(ctx: &Ctx, shape: &Shape) -> Result<OutOfMemory, Value> {
    let data_pages = (shape.data_mib << 20) / PAGE_SIZE as u64;
    let keys = data_pages * KEYS_PER_LEAF * 98 / 100;
    let cap = ((shape.pool_mib << 20) / PAGE_SIZE as u64) as usize;
    let file = backing(ctx, "pools-ooo.img", data_pages * 11 / 10 + 4096)?;
    let nq = THREADS.iter().max().copied().unwrap_or(1) + 1;
    let (meta, used) = {
        let builder = VmCache::new(direct(&file, 2), config(cap, 0)).expect("vmcache pool");
        (build(&builder, keys), builder.page_count())
    };
    let vm = VmCache::new(direct(&file, nq), config(cap, used)).expect("vmcache pool");
    let hash = HashPool::new(direct(&file, nq), config(cap, used)).expect("hash pool");
    let tabby_pool = tabby(&file, nq, cap, used, used).map_err(Value::not_available);
    let trees = Trees {
        vm: BTree::open(&vm, meta).expect("open the tree"),
        hash: BTree::open(&hash, meta).expect("open the tree"),
        tabby: tabby_pool
            .as_ref()
            .ok()
            .map(|t| BTree::open(t, meta).expect("open the tree")),
    };
    let pools = pools_of(&trees);
    ctx.progress("pools", "out of memory: warming the pools");
    for &p in &pools {
        on_tree!(trees, p, |t| warm(t, keys, POOLS[p], shape.secs));
    }
    // The reference at the same shape: its pool is a whole number of GiB.
    let mut refr = if shape.pool_mib.is_multiple_of(1024) {
        let virtgb = (shape.data_mib * 2).div_ceil(1024) + 1;
        reference(ctx, shape.pool_mib / 1024, virtgb)
    } else {
        reference_bin().and_then(|_| {
            Err(Value::not_available(format!(
                "the reference's pool (PHYSGB) is a whole number of GiB; this shape's pool \
                 is {} MiB",
                shape.pool_mib
            )))
        })
    };
    let mut qdev: DirectDevice = direct(&file, 1).pop().expect("a device");
    let buf = DmaBytes::new(qdev.alloc(1).expect("an I/O buffer"));
    // Quiet: QD1 reads, each pool at each thread count, the reference (1
    // thread); with LOAD busy threads: the same at 1 thread.
    let (mut qd1, mut qd1_loaded) = (Vec::new(), Vec::new());
    let mut runs: Vec<(usize, usize, Vec<OooRun>)> = Vec::new();
    let mut loaded: Vec<(usize, Vec<OooRun>)> = pools.iter().map(|&p| (p, Vec::new())).collect();
    let (mut ref_quiet, mut ref_loaded) = (Vec::new(), Vec::new());
    for load in [0, LOAD] {
        let _busy = BackgroundLoad::start(load);
        let threads: &[usize] = if load == 0 { &THREADS } else { &[1] };
        // Items: None for QD1 reads, Some((method, threads)).
        let mut items: Vec<Option<(usize, usize)>> = vec![None];
        items.extend(
            threads
                .iter()
                .flat_map(|&t| pools.iter().map(move |&p| Some((p, t)))),
        );
        if refr.is_ok() {
            items.push(Some((REF, 1)));
        }
        if load == 0 {
            runs = threads
                .iter()
                .flat_map(|&t| pools.iter().map(move |&p| (p, t, Vec::new())))
                .collect();
        }
        let tag = if load == 0 {
            String::new()
        } else {
            format!(" +{load} busy threads")
        };
        for round in 0..shape.rounds {
            for k in 0..items.len() {
                let what = match items[(k + round) % items.len()] {
                    None => {
                        let iops = qd1_reads(&mut qdev, &buf, 0..used, shape.secs);
                        if load == 0 { &mut qd1 } else { &mut qd1_loaded }.push(iops);
                        format!("QD1 reads {iops:.0} IOPS")
                    }
                    Some((REF, _)) => {
                        let Ok(r) = &refr else { continue };
                        match r.run(keys, 1, shape.secs, Some(cap as u64)) {
                            Ok(x) => {
                                if load == 0 {
                                    &mut ref_quiet
                                } else {
                                    &mut ref_loaded
                                }
                                .push(x.rate.wall);
                                format!("{REF_NAME} 1 thread(s): {:.0} lookups/s", x.rate.wall)
                            }
                            Err(e) => {
                                refr = Err(Value::not_available(e));
                                continue;
                            }
                        }
                    }
                    Some((p, t)) => {
                        let r = on_tree!(trees, p, |tree| ooo_measure(tree, keys, t, shape.secs));
                        let what = format!("{} {t} thread(s): {:.0} lookups/s", POOLS[p], r.rate);
                        let slot = if load == 0 {
                            runs.iter_mut()
                                .find(|x| x.0 == p && x.1 == t)
                                .map(|x| &mut x.2)
                        } else {
                            loaded.iter_mut().find(|x| x.0 == p).map(|x| &mut x.1)
                        };
                        slot.expect("a run of each item").push(r);
                        what
                    }
                };
                ctx.progress(
                    "pools",
                    &format!("out of memory{tag} round {}: {what}", round + 1),
                );
            }
        }
    }
    let reference = refr.and_then(|_| {
        if ref_quiet.is_empty() || ref_loaded.is_empty() {
            Err(Value::not_available("the reference gave no run"))
        } else {
            Ok((median(&ref_quiet), median(&ref_loaded)))
        }
    });
    Ok(OutOfMemory {
        qd1: median(&qd1),
        runs: runs
            .into_iter()
            .map(|(p, t, r)| (p, t, median_run(r)))
            .collect(),
        qd1_loaded: median(&qd1_loaded),
        loaded: loaded
            .into_iter()
            .map(|(p, r)| (p, median_run(r)))
            .collect(),
        tabby: tabby_pool.as_ref().map(|_| ()).map_err(Clone::clone),
        reference,
        keys,
        used_pages: used,
        cap_pages: cap,
    })
}

/// The in-memory lookups/s of method `m` at `threads` with `load` busy
/// threads beside.
fn mem_rate(
    mem: &Result<InMemory, Value>,
    load: usize,
    m: usize,
    threads: usize,
) -> Result<f64, Value> {
    let mem = mem.as_ref().map_err(Clone::clone)?;
    if m == 2 {
        mem.tabby.clone().map_err(|_| tabby_refused())?;
    }
    if m == REF {
        mem.reference.clone()?;
    }
    mem.rates
        .iter()
        .find(|r| r.0 == load && r.1 == m && r.2 == threads)
        .map(|r| r.3)
        .ok_or_else(|| Value::not_available("not run"))
}

/// A table cell's short reason where Tabby did not run (the section's
/// notes give the refusal in full).
fn tabby_refused() -> Value {
    Value::not_available(
        "Tabby could not be created for this tree in a process (the notes say why)",
    )
}

fn ooo_run(
    ooo: &Result<OutOfMemory, Value>,
    pool: usize,
    threads: usize,
) -> Result<&OooRun, Value> {
    let o = ooo.as_ref().map_err(Clone::clone)?;
    if pool == 2 {
        o.tabby.clone().map_err(|_| tabby_refused())?;
    }
    o.runs
        .iter()
        .find(|r| r.0 == pool && r.1 == threads)
        .map(|r| &r.2)
        .ok_or_else(|| Value::not_available("not run"))
}

/// A pool's 1-thread out-of-memory run with [`LOAD`] busy threads beside.
fn ooo_loaded(ooo: &Result<OutOfMemory, Value>, pool: usize) -> Result<&OooRun, Value> {
    let o = ooo.as_ref().map_err(Clone::clone)?;
    if pool == 2 {
        o.tabby.clone().map_err(|_| tabby_refused())?;
    }
    o.loaded
        .iter()
        .find(|r| r.0 == pool)
        .map(|r| &r.1)
        .ok_or_else(|| Value::not_available("not run"))
}

/// The reference's out-of-memory lookups/s, quiet or loaded.
fn ooo_ref(ooo: &Result<OutOfMemory, Value>, loaded: bool) -> Result<f64, Value> {
    let o = ooo.as_ref().map_err(Clone::clone)?;
    let (q, l) = o.reference.clone()?;
    Ok(if loaded { l } else { q })
}

fn val(r: Result<f64, Value>) -> Value {
    r.map_or_else(|v| v, Value::num)
}

fn figures(
    mem: &Result<InMemory, Value>,
    ooo: &Result<OutOfMemory, Value>,
    guest: &Result<Vec<GuestRow>, Value>,
) -> Vec<Figure> {
    let mut v = Vec::new();
    let ratio = (|| Ok(mem_rate(mem, 0, 0, 1)? / mem_rate(mem, 0, 1, 1)?))();
    let ratio = val(ratio);
    v.push(Figure {
        name: "in memory: vmcache-style lookups/s / hash pool's, 1 thread".into(),
        met: ratio.number().map(|r| r >= 1.5),
        value: ratio,
        unit: "x".into(),
        baseline: "the hash-table pool, 1 thread (lookups/s)".into(),
        baseline_value: val(mem_rate(mem, 0, 1, 1)),
        target: ">= 1.5 (benches/src/bin/btree-compare.rs, bufferpool/docs/pools.md)".into(),
        kind: Kind::WallClock,
    });
    let vs_ref = val((|| Ok(mem_rate(mem, 0, 0, 1)? / mem_rate(mem, 0, REF, 1)?))());
    v.push(Figure {
        name: "in memory: vmcache-style lookups/s / the reference vmcache's, 1 thread".into(),
        met: vs_ref.number().map(|r| r >= 1.0),
        value: vs_ref,
        unit: "x".into(),
        baseline: "the reference vmcache binary, 1 thread (lookups/s)".into(),
        baseline_value: val(mem_rate(mem, 0, REF, 1)),
        target: ">= 1.0, goal 1.2 (bufferpool/docs/pools.md)".into(),
        kind: Kind::WallClock,
    });
    let reads = (|| {
        let r = ooo_run(ooo, 0, 1)?;
        let qd1 = ooo.as_ref().map_err(Clone::clone)?.qd1;
        Ok(r.stats.reads as f64 / r.secs / qd1)
    })();
    v.push(Figure {
        name: "out of memory: vmcache-style page reads/s / QD1 IOPS, 1 thread".into(),
        met: val(reads.clone()).number().map(|r| r >= 0.9),
        value: val(reads),
        unit: "x".into(),
        baseline: "QD1 random 4 KiB reads of the same pages (IOPS)".into(),
        baseline_value: val(ooo.as_ref().map(|o| o.qd1).map_err(Clone::clone)),
        target: ">= 0.90 (benches/src/bin/btree-compare.rs)".into(),
        kind: Kind::WallClock,
    });
    let loaded = (|| {
        let o = ooo.as_ref().map_err(Clone::clone)?;
        let r = ooo_loaded(ooo, 0)?;
        Ok(r.stats.reads as f64 / r.secs / o.qd1_loaded)
    })();
    v.push(Figure {
        name: format!(
            "out of memory, {LOAD} busy threads beside: vmcache-style page reads/s / QD1 IOPS, \
             1 thread"
        ),
        met: val(loaded.clone()).number().map(|r| r >= 0.9),
        value: val(loaded),
        unit: "x".into(),
        baseline: format!("QD1 random 4 KiB reads of the same pages, {LOAD} busy threads (IOPS)"),
        baseline_value: val(ooo.as_ref().map(|o| o.qd1_loaded).map_err(Clone::clone)),
        target: ">= 0.90 quiet and loaded (benches/src/bin/btree-compare.rs)".into(),
        kind: Kind::WallClock,
    });
    let ooo_vs_ref = val((|| Ok(ooo_run(ooo, 0, 1)?.rate / ooo_ref(ooo, false)?))());
    v.push(Figure {
        name: "out of memory: vmcache-style lookups/s / the reference vmcache's, 1 thread, quiet"
            .into(),
        met: ooo_vs_ref.number().map(|r| r >= 1.2),
        value: ooo_vs_ref,
        unit: "x".into(),
        baseline: "the reference vmcache binary at the same shape, 1 thread (lookups/s)".into(),
        baseline_value: val(ooo_ref(ooo, false)),
        target: ">= 1.2 quiet, >= 1.0 loaded (benches/src/bin/btree-compare.rs)".into(),
        kind: Kind::WallClock,
    });
    for (col, what) in [(0, "IPIs"), (1, "remote invalidations")] {
        let (value, base) = match guest {
            Ok(rows) => (
                guest_value(rows, "tabby", "lookups", col),
                guest_value(rows, "invalidate_all", "lookups", col),
            ),
            Err(e) => (e.clone(), e.clone()),
        };
        v.push(Figure {
            name: format!("guest: Tabby {what} per evicted page, during lookups"),
            met: value.number().map(|x| x == 0.0),
            value,
            unit: "per page".into(),
            baseline: "the classic pool that invalidates every TLB on eviction".into(),
            baseline_value: base,
            target: "= 0 (bufferpool/docs/pools.md, Tabby)".into(),
            kind: Kind::Counted,
        });
    }
    v
}

fn in_memory_table(mem: &Result<InMemory, Value>, command: &str) -> Table {
    let mut rows = Vec::new();
    for load in [0, LOAD] {
        for &t in &THREADS {
            for m in [0, 1, 2, REF] {
                let pool = if load == 0 {
                    name(m).to_string()
                } else {
                    format!("{} +{load} busy threads", name(m))
                };
                rows.push(vec![
                    Cell::from(pool),
                    t.to_string().into(),
                    val(mem_rate(mem, load, m, t)).into(),
                    val((|| {
                        Ok(mem_rate(mem, load, 0, t)? / mem_rate(mem, load, m, t)?)
                    })())
                    .into(),
                ]);
            }
        }
    }
    Table {
        title: "In memory: lookups per second".into(),
        command: command.into(),
        kind: Kind::WallClock,
        columns: ["pool", "threads", "lookups/s", "vmcache-style / this"]
            .map(String::from)
            .to_vec(),
        rows,
    }
}

fn ooo_table(ooo: &Result<OutOfMemory, Value>, command: &str) -> Table {
    let mut rows: Vec<Vec<Cell>> = vec![vec![
        "QD1 4 KiB reads".into(),
        "1".into(),
        "- (the baseline: no lookups)".into(),
        val(ooo.as_ref().map(|o| o.qd1).map_err(Clone::clone)).into(),
    ]];
    for &t in &THREADS {
        for (p, name) in POOLS.iter().enumerate() {
            let r = ooo_run(ooo, p, t);
            rows.push(vec![
                Cell::from(*name),
                t.to_string().into(),
                val(r.clone().map(|r| r.rate)).into(),
                val(r.map(|r| r.stats.reads as f64 / r.secs)).into(),
            ]);
        }
    }
    rows.push(vec![
        REF_NAME.into(),
        "1".into(),
        val(ooo_ref(ooo, false)).into(),
        "- (not counted)".into(),
    ]);
    rows.push(vec![
        format!("QD1 4 KiB reads +{LOAD} busy threads").into(),
        "1".into(),
        "- (the baseline: no lookups)".into(),
        val(ooo.as_ref().map(|o| o.qd1_loaded).map_err(Clone::clone)).into(),
    ]);
    for (p, name) in POOLS.iter().enumerate() {
        let r = ooo_loaded(ooo, p);
        rows.push(vec![
            format!("{name} +{LOAD} busy threads").into(),
            "1".into(),
            val(r.clone().map(|r| r.rate)).into(),
            val(r.map(|r| r.stats.reads as f64 / r.secs)).into(),
        ]);
    }
    rows.push(vec![
        format!("{REF_NAME} +{LOAD} busy threads").into(),
        "1".into(),
        val(ooo_ref(ooo, true)).into(),
        "- (not counted)".into(),
    ]);
    let title = match ooo {
        Ok(o) => format!(
            "Out of memory: {} keys, {} pages of tree over pools of {} pages",
            o.keys, o.used_pages, o.cap_pages
        ),
        Err(_) => "Out of memory".into(),
    };
    Table {
        title,
        command: command.into(),
        kind: Kind::WallClock,
        columns: ["pool", "threads", "lookups/s", "page reads/s"]
            .map(String::from)
            .to_vec(),
        rows,
    }
}

fn ooo_counted_table(ooo: &Result<OutOfMemory, Value>, command: &str) -> Table {
    let mut rows = Vec::new();
    for &t in &THREADS {
        for (p, name) in POOLS.iter().enumerate() {
            let r = ooo_run(ooo, p, t);
            let per_lookup = |f: fn(&OooRun) -> u64| {
                val(r.clone().map(|r| f(r) as f64 / (r.rate * r.secs).max(1.0)))
            };
            rows.push(vec![
                Cell::from(*name),
                t.to_string().into(),
                per_lookup(|r| r.stats.reads).into(),
                per_lookup(|r| r.stats.evictions).into(),
                val(r.clone().map(|r| {
                    if r.stats.evictions == 0 {
                        0.0
                    } else {
                        r.tlb as f64 / r.stats.evictions as f64
                    }
                }))
                .into(),
            ]);
        }
    }
    Table {
        title:
            "Out of memory: page reads and evictions per lookup, TLB shootdowns per evicted page"
                .into(),
        command: command.into(),
        kind: Kind::Counted,
        columns: [
            "pool",
            "threads",
            "page reads per lookup",
            "evictions per lookup",
            "TLB shootdowns per evicted page",
        ]
        .map(String::from)
        .to_vec(),
        rows,
    }
}

fn plots(
    ctx: &Ctx,
    s: &mut Section,
    mem: &Result<InMemory, Value>,
    ooo: &Result<OutOfMemory, Value>,
) {
    let mut series = Vec::new();
    for (p, name) in POOLS.iter().enumerate() {
        series.push(Series {
            name: format!("{name}, in memory"),
            points: THREADS
                .iter()
                .filter_map(|&t| Some((t as f64, mem_rate(mem, 0, p, t).ok()?)))
                .collect(),
        });
        series.push(Series {
            name: format!("{name}, out of memory"),
            points: THREADS
                .iter()
                .filter_map(|&t| Some((t as f64, ooo_run(ooo, p, t).ok()?.rate)))
                .collect(),
        });
    }
    series.push(Series {
        name: format!("{REF_NAME}, in memory"),
        points: THREADS
            .iter()
            .filter_map(|&t| Some((t as f64, mem_rate(mem, 0, REF, t).ok()?)))
            .collect(),
    });
    series.retain(|s| !s.points.is_empty());
    plot::add(
        s,
        &ctx.out,
        "pools-lookups-threads.svg",
        "Lookups per second against threads",
        Axis {
            label: "threads",
            log: false,
        },
        Axis {
            label: "lookups per second (log scale)",
            log: true,
        },
        &series,
    );
}

/// Per evicted page: ipis, remote, local, pte, vmm_exits, kvm_exits.
const GUEST_EVENTS: [&str; 6] = ["ipis", "remote", "local", "pte", "vmm_exits", "kvm_exits"];

/// One `MODE PHASE: evicted N; per evicted page: ...` line.
struct GuestRow {
    mode: String,
    phase: String,
    evicted: f64,
    per_page: Vec<Option<f64>>,
}

fn guest_value(rows: &[GuestRow], mode: &str, phase: &str, col: usize) -> Value {
    match rows.iter().find(|r| r.mode == mode && r.phase == phase) {
        Some(r) => r.per_page[col].map_or_else(
            || Value::not_available(format!("the guest reported no {}", GUEST_EVENTS[col])),
            Value::num,
        ),
        None => Value::not_available(format!("the guest printed no {mode} {phase} line")),
    }
}

/// Parses `tabby -- bench` output.
fn parse_guest(stdout: &str) -> Vec<GuestRow> {
    stdout
        .lines()
        .filter_map(|l| {
            let l = l.split_once("] ").map_or(l, |x| x.1);
            let (head, rest) = l.split_once(": evicted ")?;
            let (mode, phase) = head.split_once(' ')?;
            let (evicted, rest) = rest.split_once(';')?;
            let per = rest
                .split(';')
                .next()?
                .trim()
                .strip_prefix("per evicted page:")?;
            let words: Vec<&str> = per.split_whitespace().collect();
            let per_page = GUEST_EVENTS
                .iter()
                .map(|e| {
                    let i = words.iter().position(|w| w == e)?;
                    words.get(i + 1)?.parse().ok()
                })
                .collect();
            Some(GuestRow {
                mode: mode.into(),
                phase: phase.into(),
                evicted: evicted.trim().parse().ok()?,
                per_page,
            })
        })
        .collect()
}

fn guest_bench(ctx: &Ctx, args: &[&str]) -> Result<Vec<GuestRow>, Value> {
    let disk = ctx.work.join("tabby.img");
    let disk = disk.to_string_lossy();
    let run = [
        "--vcpus",
        "2",
        "--time-limit",
        "600",
        "--disk",
        &disk,
        "--disk-size",
        "4M",
        "--disk-spin-us",
        "200000",
    ];
    let guest: Vec<&str> = std::iter::once("bench")
        .chain(args.iter().copied())
        .collect();
    let (stdout, _) = super::run_guest("tabby", &run, &guest)?;
    let rows = parse_guest(&stdout);
    if rows.is_empty() {
        return Err(Value::not_available("the guest printed no event lines"));
    }
    Ok(rows)
}

fn guest_table(rows: &[GuestRow], command: &str) -> Table {
    let mut columns = vec!["pool".to_string(), "phase".into(), "evicted".into()];
    columns.extend(
        GUEST_EVENTS
            .iter()
            .map(|e| format!("{} per page", e.replace('_', " "))),
    );
    Table {
        title: "Guest: events per evicted page, Tabby against invalidate-all".into(),
        command: command.into(),
        kind: Kind::Counted,
        columns,
        rows: rows
            .iter()
            .map(|r| {
                let mut row: Vec<Cell> = vec![
                    r.mode.clone().into(),
                    r.phase.clone().into(),
                    Value::num(r.evicted).into(),
                ];
                row.extend((0..GUEST_EVENTS.len()).map(|c| {
                    Cell::from(guest_value(std::slice::from_ref(r), &r.mode, &r.phase, c))
                }));
                row
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tabby_event_lines_are_parsed() {
        let out = "[vcpu0] tabby tree: 2000 keys, 79 pages, 16 frames\n\
            [vcpu0] tabby lookups: evicted 176; per evicted page: ipis 0.00 remote 0.00 local 0.99 pte 0.99 vmm_exits 0.00 kvm_exits 24.15; totals: ipis 0\n\
            [vcpu0] invalidate_all lookups: evicted 184; per evicted page: ipis 1.00 remote 1.00 local 3.01 pte 2.01 vmm_exits 0.01 kvm_exits n/a; totals: ipis 184\n\
            [vcpu0] tabby: ok\n";
        let rows = parse_guest(out);
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].mode, "tabby");
        assert_eq!(rows[0].phase, "lookups");
        assert_eq!(rows[0].evicted, 176.0);
        assert_eq!(rows[0].per_page[2], Some(0.99));
        assert_eq!(rows[1].per_page[0], Some(1.0));
        assert_eq!(rows[1].per_page[5], None);
        let figs = figures(
            &Err(Value::not_available("x")),
            &Err(Value::not_available("x")),
            &Ok(rows),
        );
        let ipis = figs
            .iter()
            .find(|f| f.name.starts_with("guest: Tabby IPIs"))
            .unwrap();
        assert_eq!(ipis.met, Some(true));
        assert_eq!(ipis.baseline_value.number(), Some(1.0));
        // Without process results, those figures have no verdict.
        assert!(figs
            .iter()
            .filter(|f| f.kind == Kind::WallClock)
            .all(|f| f.met.is_none()));
    }
}
