//! The B+tree lookup workloads behind `btree-compare` and `dbos bench
//! --only pools`: a tree of 8-byte big-endian keys with 120-byte values
//! built in a pool, uniform random lookups from N threads, and QD1 page
//! reads as the out-of-memory baseline.

use dbos_bufferpool::btree::BTree;
use dbos_bufferpool::device::{run_all, BlockDevice, DmaBytes, Io};
use dbos_bufferpool::direct::DirectDevice;
use dbos_bufferpool::host::tlb_shootdowns;
use dbos_bufferpool::pool::tabby::{Eviction, Tabby, TabbyConfig};
use dbos_bufferpool::pool::vmcache::PoolConfig;
use dbos_bufferpool::pool::{BufferManager, PoolStats};
use dbos_bufferpool::{PageId, PAGE_SIZE};
use dbos_nvme::host::BackingFile;
use libdbos::process::ProcessPlatform;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Bytes per value.
pub const VALUE: usize = 120;
/// Keys per full leaf: (4096 - 208 - 6) / (16 + 3 + 120) (16-byte slots,
/// keys without the 5 bytes their leaf's fences share, 3-byte fences).
pub const KEYS_PER_LEAF: u64 = 27;

/// CPU seconds the calling thread has used.
pub fn thread_cpu() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid clock id and a pointer to a timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}

/// Lookups per second of wall-clock time, and per second of CPU time of
/// the threads that did them (which a shared machine's load changes
/// least: a thread that waits for a CPU uses none).
#[derive(Clone, Copy, Debug)]
pub struct Rate {
    /// Per second of wall-clock time.
    pub wall: f64,
    /// Per second of the lookup threads' CPU time.
    pub cpu: f64,
}

/// The value stored under key `k`.
pub fn value_of(k: u64) -> [u8; VALUE] {
    let mut v = [0u8; VALUE];
    v[..8].copy_from_slice(&k.to_be_bytes());
    for (i, b) in v[8..].iter_mut().enumerate() {
        *b = (k as u8).wrapping_add(i as u8);
    }
    v
}

/// xorshift64.
pub struct Rng(pub u64);

/// A new seed for every lookup thread of every run, so that a run does not
/// replay the keys an earlier run (or the warm-up) just made resident.
pub fn seed() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    (n.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1) ^ 0x1234_5678
}

impl Rng {
    /// A number below `n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// A pool configuration of `capacity` frames over `allocated` pages.
pub fn config(capacity: usize, allocated: u64) -> PoolConfig {
    PoolConfig {
        capacity,
        allocated,
        ..PoolConfig::new(capacity)
    }
}

/// `n` direct devices on `file`.
pub fn direct(file: &Arc<BackingFile>, n: usize) -> Vec<DirectDevice> {
    (0..n).map(|_| DirectDevice::new(file.clone())).collect()
}

/// Builds a tree of keys 0..keys (ascending inserts) in `pool`; returns
/// its meta page.
pub fn build<B: BufferManager>(pool: &B, keys: u64) -> PageId {
    let t = BTree::create(pool).expect("create");
    let t0 = Instant::now();
    for k in 0..keys {
        assert!(t.insert(&k.to_be_bytes(), &value_of(k)).expect("insert"));
    }
    let written = pool.flush().expect("flush");
    eprintln!(
        "built {keys} keys in {:.1} s: {} pages ({:.0} MiB), {written} written at the end",
        t0.elapsed().as_secs_f64(),
        pool.page_count(),
        (pool.page_count() * PAGE_SIZE as u64) as f64 / (1 << 20) as f64
    );
    t.meta()
}

/// Lookups/s of `threads` threads for `secs`, each looking up uniform
/// random keys below `keys` with `lookup(key, out)`, which checks what it
/// finds.
pub fn timed_lookups(
    keys: u64,
    threads: usize,
    secs: f64,
    lookup: impl Fn(u64, &mut Vec<u8>) + Sync,
) -> Rate {
    let deadline = Instant::now() + Duration::from_secs_f64(secs);
    let start = Instant::now();
    let lookup = &lookup;
    let (total, cpu) = std::thread::scope(|s| {
        let hs: Vec<_> = (0..threads)
            .map(|_| {
                let mut r = Rng(seed());
                s.spawn(move || {
                    let cpu0 = thread_cpu();
                    let mut out = Vec::with_capacity(VALUE);
                    let mut n = 0u64;
                    loop {
                        for _ in 0..64 {
                            lookup(r.below(keys), &mut out);
                        }
                        n += 64;
                        if Instant::now() >= deadline {
                            return (n, thread_cpu() - cpu0);
                        }
                    }
                })
            })
            .collect();
        hs.into_iter()
            .map(|h| h.join().expect("thread"))
            .fold((0, 0.0), |(n, c), (m, d)| (n + m, c + d))
    });
    Rate {
        wall: total as f64 / start.elapsed().as_secs_f64(),
        cpu: total as f64 / cpu.max(1e-3),
    }
}

/// Lookups/s of `threads` threads for `secs`.
pub fn lookups<B: BufferManager>(t: &BTree<'_, B>, keys: u64, threads: usize, secs: f64) -> Rate {
    timed_lookups(keys, threads, secs, |k, out| {
        let found = t.lookup(&k.to_be_bytes(), out).expect("lookup");
        assert!(found && out[..8] == k.to_be_bytes(), "key {k}");
    })
}

/// Random 4 KiB reads of the blocks in `blocks`, one at a time, for
/// `secs`: reads per second.
pub fn qd1_reads<D: BlockDevice>(
    dev: &mut D,
    buf: &DmaBytes,
    blocks: std::ops::Range<u64>,
    secs: f64,
) -> f64 {
    let mut r = Rng(seed());
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(secs);
    let mut n = 0u64;
    while Instant::now() < deadline {
        let block = blocks.start + r.below(blocks.end - blocks.start);
        let io = Io::read(block, 1, buf.io_buf().addr);
        run_all(dev, &[io], std::thread::yield_now).expect("read");
        n += 1;
    }
    n as f64 / start.elapsed().as_secs_f64()
}

/// An out-of-memory run: lookups/s, the pool's work and the machine's TLB
/// shootdowns during it.
pub struct OooRun {
    pub rate: f64,
    pub stats: PoolStats,
    pub tlb: u64,
    pub secs: f64,
}

/// Lookups on `t` from `threads` threads for `secs`, with the pool's
/// counters and TLB shootdowns.
pub fn ooo_measure<B: BufferManager>(
    t: &BTree<'_, B>,
    keys: u64,
    threads: usize,
    secs: f64,
) -> OooRun {
    let s0 = t.pool().stats();
    let tlb0 = tlb_shootdowns().unwrap_or(0);
    let t0 = Instant::now();
    let rate = lookups(t, keys, threads, secs).wall;
    let secs = t0.elapsed().as_secs_f64();
    let s1 = t.pool().stats();
    OooRun {
        rate,
        stats: PoolStats {
            reads: s1.reads - s0.reads,
            writes: s1.writes - s0.writes,
            evictions: s1.evictions - s0.evictions,
            evict_batches: s1.evict_batches - s0.evict_batches,
            dontneed_calls: s1.dontneed_calls - s0.dontneed_calls,
            allocations: s1.allocations - s0.allocations,
            ..PoolStats::default()
        },
        tlb: tlb_shootdowns().unwrap_or(0) - tlb0,
        secs,
    }
}

/// Warms a pool with lookups (2 threads, `secs` at a time) until it has
/// read as many pages as it holds.
pub fn warm<B: BufferManager>(t: &BTree<'_, B>, keys: u64, name: &str, secs: f64) {
    let t0 = Instant::now();
    while t.pool().stats().reads < t.pool().capacity() as u64 {
        lookups(t, keys, 2, secs);
    }
    eprintln!(
        "warmed the {name} pool in {:.1} s ({:?})",
        t0.elapsed().as_secs_f64(),
        t.pool().stats()
    );
}

/// The most pages (window and frames alike) a Tabby pool can have in this
/// process, with a tenth left for other mappings: its platform's frames
/// and its window's pages are each charged 2 mappings against 7/8 of
/// `vm.max_map_count` ([`libdbos::process::maps`]).
pub fn tabby_max_pages() -> u64 {
    use libdbos::process::maps;
    let allowed = maps::allowed(maps::system_limit());
    let base = maps::worst_case(0, 2);
    allowed.saturating_sub(base) / maps::PER_PAGE * 9 / 10
}

/// Tabby on the process platform over direct devices.
pub type ProcessTabby = Tabby<ProcessPlatform, DirectDevice>;

/// A Tabby pool (`Eviction::Tabby`) of `capacity` frames over the first
/// `pages` pages of `file` (`allocated` of them in use), on `devs` direct
/// devices, on a process platform of its own (2 CPUs, unpinned, as many
/// frames as the pool needs; it lives for the rest of the process, as every
/// process platform does). Or why not: in a process, Tabby maps every page
/// of its window at creation and each mapping is charged against
/// `vm.max_map_count` ([`libdbos::process::maps`]), so a large window is
/// refused with the numbers.
pub fn tabby(
    file: &Arc<BackingFile>,
    devs: usize,
    capacity: usize,
    allocated: u64,
    pages: u64,
) -> Result<ProcessTabby, String> {
    use libdbos::process::{maps, Config};
    let why = |what: &str, e: &dyn std::fmt::Display| {
        format!(
            "{what}: {e} (in a process, Tabby's {capacity} frames, and the {pages} pages of its \
             window, each mapped at creation, are charged {} mappings each)",
            maps::PER_PAGE
        )
    };
    let platform = ProcessPlatform::new(Config {
        frames: capacity as u64 + 64,
        cpus: 2,
        pin: false,
        ..Config::default()
    })
    .map_err(|e| why("the process platform", &e))?;
    let cfg = TabbyConfig {
        eviction: Eviction::Tabby,
        ..TabbyConfig::of(PoolConfig {
            pages: Some(pages),
            ..config(capacity, allocated)
        })
    };
    Tabby::new(platform, direct(file, devs), cfg).map_err(|e| why("the Tabby pool", &e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tabby_past_the_mapping_limit_is_refused_with_the_numbers() {
        let path = std::env::temp_dir().join(format!("tabby-limit-{}.img", std::process::id()));
        let Ok(file) = BackingFile::create(&path, 64 * PAGE_SIZE as u64) else {
            return; // no O_DIRECT file here: nothing to test on.
        };
        let file = Arc::new(file);
        // More frames than the allowance can map apart, whatever the limit.
        let limit = libdbos::process::maps::system_limit();
        let frames = libdbos::process::maps::allowed(limit) as usize;
        let err = tabby(&file, 1, frames, 0, 64).err().expect("refused");
        let _ = std::fs::remove_file(&path);
        assert!(err.contains("vm.max_map_count"), "{err}");
        assert!(err.contains("the process platform"), "{err}");
    }
}
