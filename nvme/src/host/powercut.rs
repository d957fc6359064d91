//! A backend that models a power cut: crash injection for tests and for
//! `dbos run --power-cut-after` (feature `powercut`).
//!
//! The disk is in memory: what reads see ("current"), what would survive a
//! power cut ("durable"), and the writes since the last flush ("volatile").
//! A FUA write is durable when it completes; a flush makes every completed
//! write durable. [`PowerCut::cut`] (or [`PowerCut::cut_after`], which
//! cuts inside the poller when a given number of operations has been
//! issued) produces the disk as it would be found after the power returns:
//! the durable image, plus each volatile write — taken in a random order —
//! either kept, lost, or torn (each of its 512-byte sectors kept or lost
//! independently). A volatile write never overrides a sector that a later
//! FUA write or flush made durable. After the cut every operation fails
//! with EIO: the machine is off. Reads, writes and flushes can also be
//! failed with any errno ([`PowerCut::fail`]).
//!
//! Everything random comes from the seed given to the cut, so the same
//! operations and seed give the same image.
//!
//! On a file ([`PowerCutBackend::load`], [`PowerCut::store`]): the file's
//! contents are read into memory at the start (all durable, as a disk
//! found after power-on), I/O runs on the model, synchronously on the
//! poller's thread (no io_uring, so slower than the real backend), and
//! `store` writes back what the disk holds at the end: the crash image
//! after a cut, the current contents otherwise (a clean shutdown). The
//! model keeps about twice the disk in memory (current and durable
//! contents, plus the volatile writes). Until `store`, the file is not
//! written at all.

use super::backend::OpMatch;
use super::backend::{Backend, IoKind, IoOp};
use super::file::{BackingFile, FileError};
use super::sync::Inline;
use super::wake::WakeFd;
use crate::types::BLOCK_SIZE;
use std::io;
use std::sync::{Arc, Mutex, MutexGuard};
use std::vec;
use std::vec::Vec;

/// Bytes per sector, the unit a write may be torn at.
pub const SECTOR: usize = dbos_abi::SECTOR_SIZE as usize;

/// A small deterministic generator (xorshift64*).
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    /// A generator from `seed` (any value).
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A value in `0..n` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
}

/// What happened to the volatile writes at a cut.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CutReport {
    /// Volatile writes at the cut.
    pub volatile: usize,
    pub kept: usize,
    pub lost: usize,
    pub torn: usize,
}

/// Counters of the model.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PowerCutStats {
    /// Operations issued (including failed ones).
    pub ops: u64,
    pub reads: u64,
    pub writes: u64,
    pub fua_writes: u64,
    pub flushes: u64,
    /// Bytes written (plain and FUA).
    pub bytes_written: u64,
    /// Operations failed by an injected fault or because the power is off.
    pub failed: u64,
}

struct Volatile {
    seq: u64,
    offset: usize,
    data: Vec<u8>,
}

struct Disk {
    current: Vec<u8>,
    durable: Vec<u8>,
    /// Per sector: the sequence number of the write durable there.
    durable_seq: Vec<u64>,
    volatile: Vec<Volatile>,
    seq: u64,
    faults: Vec<(OpMatch, i32)>,
    cut_after: Option<(u64, u64)>,
    image: Option<(Vec<u8>, CutReport)>,
    stats: PowerCutStats,
}

impl Disk {
    fn apply_durable(
        &mut self,
        seq: u64,
        offset: usize,
        data: &[u8],
        sectors: impl Fn(usize) -> bool,
    ) {
        for (i, chunk) in data.chunks(SECTOR).enumerate() {
            let s = offset / SECTOR + i;
            if seq > self.durable_seq[s] && sectors(i) {
                self.durable[s * SECTOR..s * SECTOR + chunk.len()].copy_from_slice(chunk);
                self.durable_seq[s] = seq;
            }
        }
    }

    fn cut(&mut self, seed: u64) -> CutReport {
        let (image, report) = self.crash_image(seed);
        self.image = Some((image, report));
        report
    }

    fn crash_image(&self, seed: u64) -> (Vec<u8>, CutReport) {
        let mut rng = Rng::new(seed);
        let mut image = self.durable.clone();
        let mut image_seq = self.durable_seq.clone();
        let mut order: Vec<usize> = (0..self.volatile.len()).collect();
        for i in (1..order.len()).rev() {
            order.swap(i, rng.below(i as u64 + 1) as usize);
        }
        let mut report = CutReport {
            volatile: order.len(),
            ..CutReport::default()
        };
        for &i in &order {
            let w = &self.volatile[i];
            let fate = rng.below(3);
            let sectors = w.data.len().div_ceil(SECTOR);
            let keep: Vec<bool> = match fate {
                0 => {
                    report.kept += 1;
                    vec![true; sectors]
                }
                1 => {
                    report.lost += 1;
                    continue;
                }
                _ => {
                    report.torn += 1;
                    (0..sectors).map(|_| rng.below(2) == 0).collect()
                }
            };
            for (j, chunk) in w.data.chunks(SECTOR).enumerate() {
                let s = w.offset / SECTOR + j;
                // Older than what a FUA write or flush made durable there:
                // superseded in the device's cache, cannot land.
                if keep[j] && w.seq > self.durable_seq[s] {
                    image[s * SECTOR..s * SECTOR + chunk.len()].copy_from_slice(chunk);
                    image_seq[s] = w.seq;
                }
            }
        }
        (image, report)
    }

    fn execute(&mut self, op: &IoOp) -> i32 {
        self.stats.ops += 1;
        if let Some((at, seed)) = self.cut_after {
            if self.stats.ops > at && self.image.is_none() {
                self.cut(seed);
            }
        }
        let fault = self
            .faults
            .iter()
            .find(|(m, _)| m.matches(op.kind))
            .map(|&(_, e)| e);
        let fault = if self.image.is_some() {
            Some(libc::EIO)
        } else {
            fault
        };
        if let Some(errno) = fault {
            self.stats.failed += 1;
            return -errno;
        }
        let (off, len) = (op.offset as usize, op.buf.len as usize);
        if op.kind != IoKind::Flush && off.checked_add(len).is_none_or(|e| e > self.current.len()) {
            return -libc::EINVAL;
        }
        match op.kind {
            IoKind::Read => {
                self.stats.reads += 1;
                // SAFETY: the poller checked that the buffer lies in the
                // served memory, which stays mapped while the poller runs.
                unsafe {
                    std::ptr::copy_nonoverlapping(self.current[off..].as_ptr(), op.buf.ptr, len)
                };
            }
            IoKind::Write { fua } => {
                self.stats.writes += 1;
                self.stats.bytes_written += len as u64;
                let mut data = vec![0u8; len];
                // SAFETY: as for reads.
                unsafe { std::ptr::copy_nonoverlapping(op.buf.ptr, data.as_mut_ptr(), len) };
                self.current[off..off + len].copy_from_slice(&data);
                self.seq += 1;
                let seq = self.seq;
                if fua {
                    self.stats.fua_writes += 1;
                    self.apply_durable(seq, off, &data, |_| true);
                } else {
                    self.volatile.push(Volatile {
                        seq,
                        offset: off,
                        data,
                    });
                }
            }
            IoKind::Flush => {
                self.stats.flushes += 1;
                for w in std::mem::take(&mut self.volatile) {
                    self.apply_durable(w.seq, w.offset, &w.data, |_| true);
                }
            }
        }
        len as i32
    }
}

/// The shared handle of a [`PowerCutBackend`]: faults, cuts, the image.
pub struct PowerCut {
    disk: Mutex<Disk>,
}

impl PowerCut {
    fn disk(&self) -> MutexGuard<'_, Disk> {
        self.disk.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Fails every later operation matching `what` with `errno`.
    pub fn fail(&self, what: OpMatch, errno: i32) {
        self.disk().faults.push((what, errno));
    }

    /// Removes all injected faults.
    pub fn clear_faults(&self) {
        self.disk().faults.clear();
    }

    /// Cuts the power now (if not yet cut), with randomness from `seed`.
    pub fn cut(&self, seed: u64) -> CutReport {
        let mut d = self.disk();
        if let Some((_, r)) = &d.image {
            return *r;
        }
        d.cut(seed)
    }

    /// The disk a power cut with `seed` would leave now, without cutting
    /// (the same as [`PowerCut::cut`] followed by [`PowerCut::image`]).
    pub fn crash_image(&self, seed: u64) -> (Vec<u8>, CutReport) {
        self.disk().crash_image(seed)
    }

    /// Cuts the power just before the operation after the next `ops`
    /// operations, with randomness from `seed`.
    pub fn cut_after(&self, ops: u64, seed: u64) {
        let mut d = self.disk();
        let at = d.stats.ops + ops;
        d.cut_after = Some((at, seed));
    }

    /// Whether the power has been cut.
    pub fn is_cut(&self) -> bool {
        self.disk().image.is_some()
    }

    /// The disk as found after the cut (`None` before it).
    pub fn image(&self) -> Option<(Vec<u8>, CutReport)> {
        self.disk().image.clone()
    }

    /// What a clean shutdown would leave: the current contents.
    pub fn current(&self) -> Vec<u8> {
        self.disk().current.clone()
    }

    /// Writes not yet durable.
    pub fn volatile_writes(&self) -> usize {
        self.disk().volatile.len()
    }

    /// The counters.
    pub fn stats(&self) -> PowerCutStats {
        self.disk().stats
    }
}

/// The backend the poller drives; see the module docs.
pub struct PowerCutBackend {
    shared: Arc<PowerCut>,
    blocks: u64,
    ops: Inline,
}

impl PowerCutBackend {
    /// A disk holding `image` (a non-zero multiple of 4 KiB), all of it
    /// durable.
    pub fn new(image: Vec<u8>) -> (PowerCutBackend, Arc<PowerCut>) {
        assert!(
            !image.is_empty() && image.len().is_multiple_of(BLOCK_SIZE as usize),
            "the image must be a non-zero multiple of 4 KiB"
        );
        let blocks = image.len() as u64 / BLOCK_SIZE;
        let sectors = image.len() / SECTOR;
        let shared = Arc::new(PowerCut {
            disk: Mutex::new(Disk {
                current: image.clone(),
                durable: image,
                durable_seq: vec![0; sectors],
                volatile: Vec::new(),
                seq: 0,
                faults: Vec::new(),
                cut_after: None,
                image: None,
                stats: PowerCutStats::default(),
            }),
        });
        (
            PowerCutBackend {
                shared: shared.clone(),
                blocks,
                ops: Inline::default(),
            },
            shared,
        )
    }

    /// A zeroed disk of `blocks` blocks.
    pub fn blank(blocks: u64) -> (PowerCutBackend, Arc<PowerCut>) {
        PowerCutBackend::new(vec![0; (blocks * BLOCK_SIZE) as usize])
    }
}

/// Bytes moved per `pread`/`pwrite` by [`PowerCutBackend::load`] and
/// [`PowerCut::store`].
const FILE_CHUNK: usize = 1 << 20;

/// A 4 KiB aligned piece of `v` of `len` bytes, as `O_DIRECT` needs.
fn aligned(v: &mut [u8], len: usize) -> &mut [u8] {
    let off = v.as_ptr().align_offset(BLOCK_SIZE as usize);
    &mut v[off..off + len]
}

impl PowerCutBackend {
    /// A disk holding the contents of `file` (all of them durable), to be
    /// written back with [`PowerCut::store`].
    pub fn load(file: &BackingFile) -> Result<(PowerCutBackend, Arc<PowerCut>), FileError> {
        use std::os::unix::fs::FileExt;
        let bytes = file.blocks() * BLOCK_SIZE;
        let len = usize::try_from(bytes).map_err(|_| FileError::Size {
            path: file.path().to_path_buf(),
            len: bytes,
        })?;
        let mut image = Vec::new();
        image.try_reserve_exact(len).map_err(|_| FileError::Io {
            path: file.path().to_path_buf(),
            source: io::Error::from(io::ErrorKind::OutOfMemory),
        })?;
        let mut bounce = vec![0u8; FILE_CHUNK + BLOCK_SIZE as usize];
        while image.len() < len {
            let n = FILE_CHUNK.min(len - image.len());
            let chunk = aligned(&mut bounce, n);
            file.file()
                .read_exact_at(chunk, image.len() as u64)
                .map_err(|source| FileError::Io {
                    path: file.path().to_path_buf(),
                    source,
                })?;
            image.extend_from_slice(chunk);
        }
        Ok(PowerCutBackend::new(image))
    }
}

impl PowerCut {
    /// Writes what the disk holds now to `file` (of the same size) and
    /// makes it durable (`fdatasync`): the crash image after a cut,
    /// otherwise the current contents. Returns whether it was a crash
    /// image.
    pub fn store(&self, file: &BackingFile) -> Result<bool, FileError> {
        use std::os::unix::fs::FileExt;
        let err = |source| FileError::Io {
            path: file.path().to_path_buf(),
            source,
        };
        let disk = self.disk();
        let (contents, crashed) = match &disk.image {
            Some((image, _)) => (image, true),
            None => (&disk.current, false),
        };
        if contents.len() as u64 != file.blocks() * BLOCK_SIZE {
            return Err(FileError::Size {
                path: file.path().to_path_buf(),
                len: contents.len() as u64,
            });
        }
        let mut bounce = vec![0u8; FILE_CHUNK + BLOCK_SIZE as usize];
        for (i, piece) in contents.chunks(FILE_CHUNK).enumerate() {
            let chunk = aligned(&mut bounce, piece.len());
            chunk.copy_from_slice(piece);
            file.file()
                .write_all_at(chunk, (i * FILE_CHUNK) as u64)
                .map_err(err)?;
        }
        file.file().sync_data().map_err(err)?;
        Ok(crashed)
    }
}

impl Backend for PowerCutBackend {
    fn capacity_blocks(&self) -> u64 {
        self.blocks
    }

    fn room(&self) -> usize {
        usize::MAX / 2
    }

    fn push(&mut self, op: &IoOp, tag: u64) -> bool {
        self.ops.push(op, tag)
    }

    fn submit(&mut self) -> io::Result<()> {
        let mut disk = self.shared.disk();
        self.ops.submit(|op| disk.execute(op), false);
        Ok(())
    }

    fn reap<F: FnMut(u64, i32)>(&mut self, f: F) -> usize {
        self.ops.reap(f)
    }

    fn park(&mut self, wake: &Arc<WakeFd>) -> io::Result<()> {
        self.ops.park(wake)
    }

    fn in_flight(&self) -> usize {
        self.ops.in_flight()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::memory::HostBuf;

    fn op(kind: IoKind, offset: u64, buf: &mut [u8]) -> IoOp {
        IoOp {
            kind,
            offset,
            buf: HostBuf {
                ptr: buf.as_mut_ptr(),
                len: buf.len() as u32,
                buf_index: 0,
            },
        }
    }

    fn run(b: &mut PowerCutBackend, o: IoOp) -> i32 {
        assert!(b.push(&o, 7));
        b.submit().unwrap();
        let mut r = None;
        b.reap(|_, res| r = Some(res));
        r.unwrap()
    }

    #[test]
    fn durable_volatile_and_cuts() {
        let w = IoKind::Write { fua: false };
        let fua = IoKind::Write { fua: true };
        let (mut b, pc) = PowerCutBackend::blank(4);
        let mut ones = vec![1u8; 4096];
        let mut twos = vec![2u8; 4096];
        let mut threes = vec![3u8; 4096];
        let mut none = [];
        assert_eq!(run(&mut b, op(w, 0, &mut ones)), 4096);
        assert_eq!(run(&mut b, op(IoKind::Flush, 0, &mut none)), 0);
        assert_eq!(run(&mut b, op(w, 0, &mut twos)), 4096);
        assert_eq!(run(&mut b, op(fua, 4096, &mut threes)), 4096);
        assert_eq!(run(&mut b, op(w, 8192, &mut twos)), 4096);
        assert_eq!(pc.volatile_writes(), 2);
        let mut back = vec![0u8; 4096];
        assert_eq!(run(&mut b, op(IoKind::Read, 0, &mut back)), 4096);
        assert_eq!(back, twos, "reads see completed writes");
        // Every sector of block 0 is ones or twos, block 1 is threes, block 2
        // twos or zeros; the same seed gives the same image.
        let r = pc.cut(42);
        assert_eq!(r.volatile, 2);
        assert_eq!(r.kept + r.lost + r.torn, 2);
        let (img, _) = pc.image().unwrap();
        for s in 0..8 {
            let v = img[s * 512];
            assert!(v == 1 || v == 2);
            assert!(img[s * 512..(s + 1) * 512].iter().all(|&b| b == v));
        }
        assert!(img[4096..8192].iter().all(|&b| b == 3));
        assert_eq!(run(&mut b, op(IoKind::Read, 0, &mut back)), -libc::EIO);
        let (mut b2, pc2) = PowerCutBackend::blank(4);
        for o in [op(w, 0, &mut ones), op(IoKind::Flush, 0, &mut none)] {
            run(&mut b2, o);
        }
        run(&mut b2, op(w, 0, &mut twos));
        run(&mut b2, op(fua, 4096, &mut threes));
        run(&mut b2, op(w, 8192, &mut twos));
        assert_eq!(pc2.crash_image(42).0, img);
        assert!(!pc2.is_cut());
        pc2.cut(42);
        assert_eq!(pc2.image().unwrap().0, img);
        assert_eq!(pc.stats().failed, 1);
    }

    #[test]
    fn fua_supersedes_older_volatile_writes() {
        let (mut b, pc) = PowerCutBackend::blank(1);
        let mut old = vec![1u8; 4096];
        let mut new = vec![2u8; 4096];
        run(&mut b, op(IoKind::Write { fua: false }, 0, &mut old));
        run(&mut b, op(IoKind::Write { fua: true }, 0, &mut new));
        for seed in 0..32 {
            let (_, pc) = {
                let (mut b, pc) = PowerCutBackend::blank(1);
                run(&mut b, op(IoKind::Write { fua: false }, 0, &mut old));
                run(&mut b, op(IoKind::Write { fua: true }, 0, &mut new));
                (b, pc)
            };
            pc.cut(seed);
            assert_eq!(pc.image().unwrap().0, new);
        }
        pc.fail(OpMatch::Flush, libc::EIO);
        let mut none = [];
        assert_eq!(run(&mut b, op(IoKind::Flush, 0, &mut none)), -libc::EIO);
        pc.clear_faults();
        assert_eq!(run(&mut b, op(IoKind::Flush, 0, &mut none)), 0);
        pc.cut_after(1, 5);
        let mut buf = vec![0u8; 4096];
        assert_eq!(run(&mut b, op(IoKind::Read, 0, &mut buf)), 4096);
        assert!(!pc.is_cut());
        assert_eq!(run(&mut b, op(IoKind::Read, 0, &mut buf)), -libc::EIO);
        assert!(pc.is_cut());
    }
}
