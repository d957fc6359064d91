//! The consistency checks every [`Snapshotter`] must pass.
//!
//! # How the moment of a snapshot is made exact
//!
//! Every write is made under the read side of a `RwLock` (the *gate*) and
//! gets a global sequence number from a counter incremented under it; `take`
//! runs under the write side and records the counter (the *cut*). So every
//! write with a sequence number below the cut happened-before `take` and
//! every other write happened-after it, and the expected view is the initial
//! heap with exactly the writes below the cut applied. Each writer owns the
//! slots `slot % writers == id`, so the writes to one slot are made by one
//! thread in sequence order and applying them in sequence order gives the
//! value the slot held.

#![allow(dead_code)]

use dbos_snapshot::{Checksum, Snapshotter};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::RwLock;
use std::thread;

/// Heap of the tests: 4 MiB.
pub const HEAP: usize = 4 << 20;
/// Writes per writer thread.
pub const WRITES: usize = 4000;

/// xorshift64*: deterministic randomness without a dependency.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// The value of the `n`th write of `writer`: derived from the counter.
fn value(writer: usize, n: usize) -> u64 {
    ((writer as u64 + 1) << 48) | (n as u64 + 1)
}

/// The initial value of slot `i` (non-zero, so zero pages are not special).
fn initial(i: usize) -> u64 {
    !(i as u64)
}

/// One write: (sequence number, slot, value).
pub type Log = Vec<(u64, usize, u64)>;

/// What the controlling thread sees of the writers.
pub struct Ctx {
    gate: RwLock<()>,
    seq: AtomicU64,
    finished: AtomicUsize,
    writers: usize,
    /// Writers wait while `seq` has reached this: the controller lets them
    /// write in steps, so that snapshots fall between known numbers of
    /// writes however slow `take` is.
    allowed: AtomicU64,
}

impl Ctx {
    /// Runs `f` (a `take`) with every writer paused between writes; returns
    /// the cut (the sequence number of the first write after it) and `f`'s
    /// result.
    pub fn at_cut<T>(&self, f: impl FnOnce() -> T) -> (u64, T) {
        let _g = self.gate.write().unwrap();
        (self.seq.load(Ordering::Relaxed), f())
    }

    /// Waits until `n` more writes were made (or the writers finished).
    pub fn let_write(&self, n: u64) {
        let target = self.seq.load(Ordering::Relaxed) + n;
        self.allowed.store(target, Ordering::Relaxed);
        while self.seq.load(Ordering::Relaxed) < target
            && self.finished.load(Ordering::Relaxed) < self.writers
        {
            thread::yield_now();
        }
    }
}

/// Fills the heap with the initial values; returns them.
pub fn fill<S: Snapshotter>(s: &S) -> Vec<u8> {
    let slots = s.heap_len() / 8;
    let mut bytes = Vec::with_capacity(s.heap_len());
    for i in 0..slots {
        s.write_u64(i * 8, initial(i));
        bytes.extend_from_slice(&initial(i).to_ne_bytes());
    }
    bytes
}

/// The heap after exactly the writes with sequence number below `cut`.
pub fn expected(initial: &[u8], writes: &[(u64, usize, u64)], cut: u64) -> Vec<u8> {
    let mut heap = initial.to_vec();
    for &(seq, slot, v) in writes {
        if seq >= cut {
            break;
        }
        heap[slot * 8..slot * 8 + 8].copy_from_slice(&v.to_ne_bytes());
    }
    heap
}

/// Runs `writers` writer threads of [`WRITES`] writes each while `control`
/// runs; returns `control`'s result and all writes sorted by sequence number.
pub fn with_writers<S: Snapshotter, T>(
    s: &S,
    writers: usize,
    seed: u64,
    control: impl FnOnce(&Ctx) -> T,
) -> (T, Log) {
    let ctx = Ctx {
        gate: RwLock::new(()),
        seq: AtomicU64::new(0),
        finished: AtomicUsize::new(0),
        writers,
        allowed: AtomicU64::new(0),
    };
    let slots = s.heap_len() / 8;
    let (out, mut all) = thread::scope(|scope| {
        let handles: Vec<_> = (0..writers)
            .map(|id| {
                let ctx = &ctx;
                scope.spawn(move || {
                    let mut rng = Rng::new(seed ^ ((id as u64 + 1) * 0x1234_5678));
                    let mut log = Log::with_capacity(WRITES);
                    for n in 0..WRITES {
                        let slot = rng.below(slots / writers) * writers + id;
                        let v = value(id, n);
                        while ctx.seq.load(Ordering::Relaxed) >= ctx.allowed.load(Ordering::Relaxed)
                        {
                            thread::yield_now();
                        }
                        let _g = ctx.gate.read().unwrap();
                        let seq = ctx.seq.fetch_add(1, Ordering::Relaxed);
                        s.write_u64(slot * 8, v);
                        log.push((seq, slot, v));
                    }
                    ctx.finished.fetch_add(1, Ordering::Relaxed);
                    log
                })
            })
            .collect();
        let out = control(&ctx);
        ctx.allowed.store(u64::MAX, Ordering::Relaxed);
        let all: Log = handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect();
        (out, all)
    });
    all.sort_unstable();
    (out, all)
}

/// Reads a snapshot's whole view and its checksum.
fn view<S: Snapshotter>(s: &S, snap: &S::Snapshot) -> (Vec<u8>, u64) {
    let mut bytes = vec![0u8; s.heap_len()];
    s.read(snap, 0, &mut bytes).unwrap();
    (bytes, s.checksum(snap, 0, s.heap_len()).unwrap())
}

/// One snapshot under `writers` concurrent writers: its view (read after
/// more writes were made) is exactly the heap at the cut.
pub fn one_snapshot<S: Snapshotter>(s: &S, writers: usize, seed: u64) {
    let init = fill(s);
    let ((cut, got, sum), writes) = with_writers(s, writers, seed, |ctx| {
        ctx.let_write(WRITES as u64 / 2);
        let (cut, snap) = ctx.at_cut(|| s.take().unwrap());
        assert_eq!(s.live(), 1);
        ctx.let_write(WRITES as u64 / 2);
        let (got, sum) = view(s, &snap);
        s.release(snap).unwrap();
        (cut, got, sum)
    });
    assert_eq!(s.live(), 0);
    assert_eq!(writes.len(), writers * WRITES);
    assert!(
        cut > 0 && (cut as usize) < writes.len(),
        "cut {cut} not inside the writes"
    );
    let want = expected(&init, &writes, cut);
    assert!(
        got == want,
        "snapshot view differs from the heap at the cut (first difference at byte {:?})",
        first_diff(&got, &want)
    );
    assert_eq!(sum, Checksum::of(&want));
    // The live heap holds every write, and differs from the snapshot.
    // SAFETY: the heap is valid for heap_len bytes (the trait contract) and
    // no writer runs any more.
    let live = unsafe { std::slice::from_raw_parts(s.heap(), s.heap_len()) };
    assert!(live == expected(&init, &writes, u64::MAX).as_slice());
    assert_ne!(Checksum::of(live), sum);
}

/// Many overlapping snapshots, taken and released in random order while
/// `writers` write; each is read just before its release and compared with
/// the heap at its cut.
pub fn overlapping<S: Snapshotter>(s: &S, writers: usize, seed: u64) {
    let init = fill(s);
    let (views, writes) = with_writers(s, writers, seed, |ctx| {
        let mut rng = Rng::new(seed);
        let mut live: Vec<(u64, S::Snapshot)> = Vec::new();
        let mut views = Vec::new();
        let mut taken = 0;
        let mut release_one = |live: &mut Vec<(u64, S::Snapshot)>, rng: &mut Rng| {
            let (cut, snap) = live.swap_remove(rng.below(live.len()));
            let (bytes, sum) = view(s, &snap);
            s.release(snap).unwrap();
            views.push((cut, bytes, sum));
        };
        while taken < 16 {
            ctx.let_write(150);
            if live.len() < 2 || (live.len() < 6 && rng.below(2) == 0) {
                live.push(ctx.at_cut(|| s.take().unwrap()));
                taken += 1;
            } else {
                release_one(&mut live, &mut rng);
            }
            assert_eq!(s.live(), live.len());
        }
        while !live.is_empty() {
            ctx.let_write(100);
            release_one(&mut live, &mut rng);
        }
        views
    });
    assert_eq!(s.live(), 0);
    assert_eq!(views.len(), 16);
    let mut cuts: Vec<u64> = views.iter().map(|v| v.0).collect();
    cuts.sort_unstable();
    cuts.dedup();
    assert!(
        cuts.len() > 1,
        "all snapshots at one cut: the test would prove little"
    );
    for (cut, got, sum) in views {
        let want = expected(&init, &writes, cut);
        assert!(
            got == want,
            "snapshot at cut {cut} differs (first difference at byte {:?})",
            first_diff(&got, &want)
        );
        assert_eq!(
            sum,
            Checksum::of(&want),
            "checksum of the snapshot at cut {cut}"
        );
    }
}

fn first_diff(a: &[u8], b: &[u8]) -> Option<usize> {
    a.iter().zip(b).position(|(x, y)| x != y)
}
