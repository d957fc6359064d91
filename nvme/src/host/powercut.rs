//! A backend that models a power cut: crash injection for tests and for
//! `dbos run --power-cut-after` / `--power-cut-at-write` (feature
//! `powercut`).
//!
//! The disk is in memory: what reads see ("current"), what would survive a
//! power cut ("durable"), and the writes since the last flush ("volatile").
//! Operations are carried out one at a time, and an operation carried out
//! has completed (its completion may reach the host later, which a real
//! device allows too): a completed FUA write is durable; a flush makes
//! every completed write durable.
//!
//! A cut produces the disk as it would be found after the power returns:
//! the durable image, plus each volatile write — taken in a random order —
//! either kept, lost, or torn (each of its 512-byte sectors kept or lost
//! independently). A volatile write never overrides a sector that a later
//! FUA write or flush made durable. After the cut every operation fails
//! with EIO, marked as a simulated power cut
//! ([`super::backend::simulated_failure`], so the poller does not log it
//! as a disk error): the machine is off. Reads, writes and flushes can also
//! be failed with any errno ([`PowerCut::fail`]).
//!
//! The cut comes from outside ([`PowerCut::cut`]: between two operations,
//! none in flight) or from the disk's own operation stream: when a given
//! operation ([`PowerCut::cut_after`]) or a given write command
//! ([`PowerCut::cut_at_write`]) reaches the disk. That operation is in
//! flight at the cut and never completes (it fails with EIO, like every
//! later one): if it is a write, FUA or not, it is not durable and joins
//! the volatile writes, to be kept, lost or torn like them
//! ([`CutReport::in_flight`] says what became of it). Operations handed to
//! the disk together with it but behind it are not carried out at all.
//!
//! Everything random comes from the seed given to the cut, so the same
//! operations and seed give the same image; a cut timed by the operation
//! stream also falls at the same place in it.
//!
//! On a file ([`PowerCutBackend::load`], [`PowerCut::store`]): the file's
//! contents are read into memory at the start (all durable, as a disk
//! found after power-on), I/O runs on the model, synchronously on the
//! poller's thread (no io_uring, so slower than the real backend), and
//! `store` writes back what the disk holds at the end: the crash image
//! after a cut, the current contents otherwise (a clean shutdown). The
//! model keeps about twice the disk in memory (current and durable
//! contents, plus the volatile writes and 8 bytes per 512-byte sector);
//! every allocation of its size is fallible: [`PowerCutBackend::load`]
//! fails with [`LoadError::OutOfMemory`], a write the model cannot hold
//! fails with `ENOMEM`, and a cut allocates no image (it is built in the
//! durable contents' memory, which the cut ends the use of). Until
//! `store`, the file is not written at all.
//!
//! `store` is atomic: it writes the contents to a new file next to the
//! disk's ([`writeback_temp_path`], created exclusively, locked), syncs it,
//! renames it over the disk's path and syncs the directory. A process
//! killed at any moment before the rename leaves the disk file as it was
//! (and a stale temporary file, which [`remove_stale_writeback`] removes);
//! after it, the new contents. The new file gets the old one's permission
//! bits (and owner, where the process may set it).

use super::backend::OpMatch;
use super::backend::{simulated_failure, Backend, IoKind, IoOp, Simulated};
use super::file::{BackingFile, FileError};
use super::sync::Inline;
use super::wake::WakeFd;
use crate::types::BLOCK_SIZE;
use std::boxed::Box;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::vec;
use std::vec::Vec;

/// Bytes per sector, the unit a write may be torn at.
pub const SECTOR: usize = dbos_abi::SECTOR_SIZE as usize;

/// The model could not allocate memory it needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("allocating {bytes} bytes for {what} failed (out of memory or address space)")]
pub struct OutOfMemory {
    /// What the memory was for.
    pub what: &'static str,
    pub bytes: u64,
}

/// `len` zero bytes, or [`OutOfMemory`] for `what`.
fn try_zeroed(len: usize, what: &'static str) -> Result<Vec<u8>, OutOfMemory> {
    let mut v = Vec::new();
    v.try_reserve_exact(len).map_err(|_| OutOfMemory {
        what,
        bytes: len as u64,
    })?;
    v.resize(len, 0);
    Ok(v)
}

/// A copy of `src`, or [`OutOfMemory`] for `what`.
fn try_copy(src: &[u8], what: &'static str) -> Result<Vec<u8>, OutOfMemory> {
    let mut v = Vec::new();
    v.try_reserve_exact(src.len()).map_err(|_| OutOfMemory {
        what,
        bytes: src.len() as u64,
    })?;
    v.extend_from_slice(src);
    Ok(v)
}

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
    /// Volatile writes at the cut, the write in flight included.
    pub volatile: usize,
    pub kept: usize,
    pub lost: usize,
    pub torn: usize,
    /// The write in flight at the cut (one cut by the operation stream
    /// whose operation at the cut is a write), counted in the figures
    /// above too.
    pub in_flight: Option<InFlight>,
}

/// What became of a volatile write at a cut.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fate {
    /// Every sector landed.
    Kept,
    /// No sector landed.
    Lost,
    /// Each sector landed or not, independently (possibly all or none).
    Torn,
}

/// The write in flight at a cut.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InFlight {
    /// Its number among the run's write commands, from 1.
    pub write: u64,
    /// Byte offset and length on the disk.
    pub offset: u64,
    pub len: u64,
    pub fua: bool,
    pub fate: Fate,
    /// How many of its 512-byte sectors landed (all when kept, none when
    /// lost).
    pub sectors_landed: u64,
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
    /// Write commands that reached the disk, including failed ones and
    /// one in flight at a cut: what [`PowerCut::cut_at_write`] counts.
    pub write_commands: u64,
    /// Operations failed by an injected fault or because the power is off.
    pub failed: u64,
}

struct Volatile {
    seq: u64,
    offset: usize,
    data: Vec<u8>,
}

/// A cut timed by the operation stream: at which operation, and its seed.
#[derive(Clone, Copy, Debug)]
enum Trigger {
    /// When operation number `.0` (counted in `stats.ops`) arrives.
    Op(u64),
    /// When write command number `.0` (`stats.write_commands`) arrives.
    Write(u64),
}

/// The write in flight at a cut by the operation stream.
struct Pending {
    write: Volatile,
    number: u64,
    fua: bool,
}

struct Disk {
    current: Vec<u8>,
    durable: Vec<u8>,
    /// Per sector: the sequence number of the write durable there.
    durable_seq: Vec<u64>,
    volatile: Vec<Volatile>,
    seq: u64,
    faults: Vec<(OpMatch, i32)>,
    trigger: Option<(Trigger, u64)>,
    image: Option<(Vec<u8>, CutReport)>,
    /// Set when the operation stream cut the power, until the backend has
    /// told [`PowerCut::on_cut`]'s callback.
    cut_by_disk: bool,
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

    /// Cuts the power: the crash image is built in the durable contents'
    /// memory (nothing reads them after the cut), so a cut allocates no
    /// image and cannot run out of memory for one.
    fn cut(&mut self, seed: u64, in_flight: Option<Pending>) -> CutReport {
        self.trigger = None;
        let mut image = std::mem::take(&mut self.durable);
        let report = self.land_volatile(&mut image, seed, in_flight.as_ref());
        self.image = Some((image, report));
        report
    }

    /// The disk a cut with `seed` would leave now (after a cut: the image
    /// it left), in newly allocated memory.
    fn crash_image(&self, seed: u64) -> Result<(Vec<u8>, CutReport), OutOfMemory> {
        if let Some((image, report)) = &self.image {
            return Ok((try_copy(image, "a copy of the crash image")?, *report));
        }
        let mut image = try_copy(&self.durable, "a crash image")?;
        let report = self.land_volatile(&mut image, seed, None);
        Ok((image, report))
    }

    /// Lands the volatile writes and `in_flight` on `image` (the durable
    /// contents), each kept, lost or torn as `seed` decides.
    fn land_volatile(&self, image: &mut [u8], seed: u64, in_flight: Option<&Pending>) -> CutReport {
        let mut rng = Rng::new(seed);
        let writes: Vec<&Volatile> = self
            .volatile
            .iter()
            .chain(in_flight.map(|p| &p.write))
            .collect();
        let mut order: Vec<usize> = (0..writes.len()).collect();
        for i in (1..order.len()).rev() {
            order.swap(i, rng.below(i as u64 + 1) as usize);
        }
        let mut report = CutReport {
            volatile: order.len(),
            ..CutReport::default()
        };
        for &i in &order {
            let w = writes[i];
            let sectors = w.data.len().div_ceil(SECTOR);
            let (fate, keep): (Fate, Vec<bool>) = match rng.below(3) {
                0 => {
                    report.kept += 1;
                    (Fate::Kept, vec![true; sectors])
                }
                1 => {
                    report.lost += 1;
                    (Fate::Lost, vec![false; sectors])
                }
                _ => {
                    report.torn += 1;
                    (
                        Fate::Torn,
                        (0..sectors).map(|_| rng.below(2) == 0).collect(),
                    )
                }
            };
            if let Some(p) = in_flight.filter(|_| i == self.volatile.len()) {
                report.in_flight = Some(InFlight {
                    write: p.number,
                    offset: p.write.offset as u64,
                    len: p.write.data.len() as u64,
                    fua: p.fua,
                    fate,
                    sectors_landed: keep.iter().filter(|&&k| k).count() as u64,
                });
            }
            // Volatile writes land in the order drawn, so that a later one
            // of two overlapping writes may or may not win a sector.
            for (j, chunk) in w.data.chunks(SECTOR).enumerate() {
                let s = w.offset / SECTOR + j;
                // Older than what a FUA write or flush made durable there:
                // superseded in the device's cache, cannot land.
                if keep[j] && w.seq > self.durable_seq[s] {
                    image[s * SECTOR..s * SECTOR + chunk.len()].copy_from_slice(chunk);
                }
            }
        }
        report
    }

    /// Whether `op`, the operation just counted, is the one an armed
    /// trigger cuts at.
    fn triggers(&self, write: bool) -> Option<u64> {
        match self.trigger {
            Some((Trigger::Op(n), seed)) if self.stats.ops >= n => Some(seed),
            Some((Trigger::Write(n), seed)) if write && self.stats.write_commands >= n => {
                Some(seed)
            }
            _ => None,
        }
    }

    fn execute(&mut self, op: &IoOp) -> i32 {
        self.stats.ops += 1;
        let (off, len) = (op.offset as usize, op.buf.len as usize);
        let in_range = off
            .checked_add(len)
            .is_some_and(|e| e <= self.current.len());
        let fua = match op.kind {
            IoKind::Write { fua } => {
                self.stats.write_commands += 1;
                Some(fua)
            }
            _ => None,
        };
        if self.image.is_none() {
            if let Some(seed) = self.triggers(fua.is_some()) {
                // The operation reached the disk and the power went before
                // it completed: a write is in flight, durable or not as the
                // seed decides, FUA or not.
                let in_flight = fua.filter(|_| in_range).and_then(|fua| {
                    // Without the memory to hold it, the write in flight is
                    // lost (one of its possible fates), and said so.
                    let mut data = match try_zeroed(len, "the write in flight at the cut") {
                        Ok(data) => data,
                        Err(e) => {
                            log::error!("power-cut model: {e}; that write is lost");
                            return None;
                        }
                    };
                    // SAFETY: the poller checked that the buffer lies in the
                    // served memory, which stays mapped while the poller runs.
                    unsafe { std::ptr::copy_nonoverlapping(op.buf.ptr, data.as_mut_ptr(), len) };
                    Some(Pending {
                        write: Volatile {
                            seq: self.seq + 1,
                            offset: off,
                            data,
                        },
                        number: self.stats.write_commands,
                        fua,
                    })
                });
                self.cut(seed, in_flight);
                self.cut_by_disk = true;
            }
        }
        let fault = if self.image.is_some() {
            Some(simulated_failure(Simulated::PowerCut, libc::EIO))
        } else {
            self.faults
                .iter()
                .find(|(m, _)| m.matches(op.kind))
                .map(|&(_, e)| simulated_failure(Simulated::Fault, e))
        };
        if let Some(result) = fault {
            self.stats.failed += 1;
            return result;
        }
        if op.kind != IoKind::Flush && !in_range {
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
                let mut data = match try_zeroed(len, "a write") {
                    Ok(data) => data,
                    Err(e) => {
                        log::error!("power-cut model: {e}; the write fails");
                        self.stats.failed += 1;
                        return -libc::ENOMEM;
                    }
                };
                if !fua && self.volatile.try_reserve(1).is_err() {
                    log::error!("power-cut model: no memory for one more unflushed write");
                    self.stats.failed += 1;
                    return -libc::ENOMEM;
                }
                self.stats.writes += 1;
                self.stats.bytes_written += len as u64;
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

/// Told of a cut by the operation stream (see [`PowerCut::on_cut`]).
type CutCallback = Box<dyn FnMut(CutReport) + Send>;

/// The shared handle of a [`PowerCutBackend`]: faults, cuts, the image.
pub struct PowerCut {
    disk: Mutex<Disk>,
    on_cut: Mutex<Option<CutCallback>>,
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

    /// Cuts the power now (if not yet cut), with randomness from `seed`:
    /// between two operations, none in flight.
    pub fn cut(&self, seed: u64) -> CutReport {
        let mut d = self.disk();
        if let Some((_, r)) = &d.image {
            return *r;
        }
        d.cut(seed, None)
    }

    /// The disk a power cut with `seed` would leave now, without cutting
    /// (the same as [`PowerCut::cut`] followed by [`PowerCut::image`]).
    /// After a cut, the image that cut left. For tests: panics if the copy
    /// cannot be allocated ([`PowerCut::try_crash_image`] does not).
    pub fn crash_image(&self, seed: u64) -> (Vec<u8>, CutReport) {
        self.try_crash_image(seed)
            .unwrap_or_else(|e| panic!("power-cut model: {e}"))
    }

    /// [`PowerCut::crash_image`], failing if the image's memory cannot be
    /// allocated.
    pub fn try_crash_image(&self, seed: u64) -> Result<(Vec<u8>, CutReport), OutOfMemory> {
        self.disk().crash_image(seed)
    }

    /// Cuts the power when the operation after the next `ops` operations
    /// reaches the disk, with randomness from `seed`; that operation is in
    /// flight at the cut (see the module docs). Replaces any cut armed
    /// before.
    pub fn cut_after(&self, ops: u64, seed: u64) {
        let mut d = self.disk();
        let at = d.stats.ops + ops + 1;
        d.trigger = Some((Trigger::Op(at), seed));
    }

    /// Cuts the power when write command number `n` (counted from 1 since
    /// the model was created, FUA or not, failed ones included:
    /// [`PowerCutStats::write_commands`]) reaches the disk, with
    /// randomness from `seed`; that write is in flight at the cut (see the
    /// module docs). If `n` writes have been issued already, the next
    /// write cuts. Replaces any cut armed before.
    pub fn cut_at_write(&self, n: u64, seed: u64) {
        self.disk().trigger = Some((Trigger::Write(n), seed));
    }

    /// Calls `f` (on the poller's thread, with no lock of the model held)
    /// when the operation stream cuts the power ([`PowerCut::cut_after`],
    /// [`PowerCut::cut_at_write`]), before the operation at the cut or any
    /// later one is reported complete. Not called for [`PowerCut::cut`].
    pub fn on_cut(&self, f: impl FnMut(CutReport) + Send + 'static) {
        *self.on_cut.lock().unwrap_or_else(|e| e.into_inner()) = Some(Box::new(f));
    }

    /// Drops an armed cut that has not happened; returns what the cut did
    /// if the power has been cut already.
    pub fn disarm(&self) -> Option<CutReport> {
        let mut d = self.disk();
        d.trigger = None;
        d.image.as_ref().map(|(_, r)| *r)
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
    /// durable. For tests and small disks: panics if the model's memory
    /// (a second copy of `image`, 8 bytes per sector) cannot be allocated;
    /// [`PowerCutBackend::try_new`] fails instead.
    pub fn new(image: Vec<u8>) -> (PowerCutBackend, Arc<PowerCut>) {
        PowerCutBackend::try_new(image).unwrap_or_else(|e| panic!("power-cut model: {e}"))
    }

    /// A disk holding `image` (a non-zero multiple of 4 KiB), all of it
    /// durable; [`OutOfMemory`] if the rest of the model's memory (a second
    /// copy of `image`, 8 bytes per 512-byte sector) cannot be allocated.
    pub fn try_new(image: Vec<u8>) -> Result<(PowerCutBackend, Arc<PowerCut>), OutOfMemory> {
        assert!(
            !image.is_empty() && image.len().is_multiple_of(BLOCK_SIZE as usize),
            "the image must be a non-zero multiple of 4 KiB"
        );
        let blocks = image.len() as u64 / BLOCK_SIZE;
        let sectors = image.len() / SECTOR;
        let current = try_copy(&image, "the disk's current contents (a second copy)")?;
        let mut durable_seq = Vec::new();
        durable_seq
            .try_reserve_exact(sectors)
            .map_err(|_| OutOfMemory {
                what: "the sequence number of each sector",
                bytes: (sectors * std::mem::size_of::<u64>()) as u64,
            })?;
        durable_seq.resize(sectors, 0);
        let shared = Arc::new(PowerCut {
            disk: Mutex::new(Disk {
                current,
                durable: image,
                durable_seq,
                volatile: Vec::new(),
                seq: 0,
                faults: Vec::new(),
                trigger: None,
                image: None,
                cut_by_disk: false,
                stats: PowerCutStats::default(),
            }),
            on_cut: Mutex::new(None),
        });
        Ok((
            PowerCutBackend {
                shared: shared.clone(),
                blocks,
                ops: Inline::default(),
            },
            shared,
        ))
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

/// [`PowerCutBackend::load`] failed.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(transparent)]
    File(#[from] FileError),
    #[error(
        "the in-memory model of a {disk}-byte disk needs about {need} bytes of memory (its \
         contents twice, and 8 bytes per 512-byte sector): {source}"
    )]
    OutOfMemory {
        /// The disk's size in bytes.
        disk: u64,
        /// About what the model needs in all.
        need: u64,
        source: OutOfMemory,
    },
}

impl PowerCutBackend {
    /// A disk holding the contents of `file` (all of them durable), to be
    /// written back with [`PowerCut::store`]. Every allocation of the
    /// disk's size is fallible ([`LoadError::OutOfMemory`]).
    pub fn load(file: &BackingFile) -> Result<(PowerCutBackend, Arc<PowerCut>), LoadError> {
        use std::os::unix::fs::FileExt;
        let bytes = file.blocks() * BLOCK_SIZE;
        let len = usize::try_from(bytes).map_err(|_| FileError::Size {
            path: file.path().to_path_buf(),
            len: bytes,
        })?;
        let oom = |source| LoadError::OutOfMemory {
            disk: bytes,
            need: bytes.saturating_mul(2).saturating_add(bytes / 64),
            source,
        };
        let mut image = Vec::new();
        image.try_reserve_exact(len).map_err(|_| {
            oom(OutOfMemory {
                what: "the disk's contents",
                bytes,
            })
        })?;
        let mut bounce =
            try_zeroed(FILE_CHUNK + BLOCK_SIZE as usize, "a transfer buffer").map_err(oom)?;
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
        PowerCutBackend::try_new(image).map_err(oom)
    }
}

/// What [`PowerCut::store`] appends to the disk file's name for the file
/// it writes the new contents to before renaming it over the disk's.
pub const WRITEBACK_SUFFIX: &str = ".dbos-writeback";

/// The file [`PowerCut::store`] writes the new contents of the disk at
/// `disk` (a path with no symbolic link in it) to, before renaming it over
/// `disk`: `DISK.dbos-writeback`, in the same directory.
pub fn writeback_temp_path(disk: &Path) -> PathBuf {
    let mut name = std::ffi::OsString::from(disk.as_os_str());
    name.push(WRITEBACK_SUFFIX);
    PathBuf::from(name)
}

/// Removes the temporary file a [`PowerCut::store`] into the disk at `disk`
/// left when its process was killed before the rename (the disk file itself
/// is then as it was before that run, and the temporary file holds a
/// partial image that nothing may use). Returns the path removed, if there
/// was one. Call it only while holding the disk's lock (an open
/// [`BackingFile`] of it): a store in progress holds that lock, so the
/// file found then is never one being written.
pub fn remove_stale_writeback(disk: &BackingFile) -> io::Result<Option<PathBuf>> {
    let temp = writeback_temp_path(&std::fs::canonicalize(disk.path())?);
    match std::fs::symlink_metadata(&temp) {
        Ok(meta) if meta.is_file() => {
            std::fs::remove_file(&temp)?;
            Ok(Some(temp))
        }
        Ok(_) => Err(io::Error::other(std::format!(
            "{} exists and is not a regular file; it is left alone",
            temp.display()
        ))),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// A point of [`PowerCut::store_with`]'s write-back, for a test hook that
/// stops it there (as a kill would).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WriteBackStep {
    /// About to write chunk `n` of `of` ([`WRITEBACK_CHUNK`] bytes each,
    /// from 1) to the temporary file: chunks 1 to `n - 1` are written.
    Chunk { n: u64, of: u64 },
    /// Every chunk is written; about to sync the temporary file and rename
    /// it over the disk's.
    Rename,
}

/// Bytes written per `pwrite` by [`PowerCut::store`].
pub const WRITEBACK_CHUNK: usize = FILE_CHUNK;

/// What [`PowerCut::store`] wrote.
#[derive(Debug)]
pub struct Stored {
    /// It was a crash image (the power had been cut), not the current
    /// contents.
    pub crashed: bool,
    /// The disk file now at the path: the new file, open and locked like
    /// any [`BackingFile`]. The one passed to `store` is the old file, no
    /// longer at the path; keep this one until done with the disk, so that
    /// the lock passes from the old file to the new without a gap.
    pub file: BackingFile,
}

/// [`PowerCut::store`] failed; the disk file is left as it was unless
/// stated otherwise.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(
        "{} was deleted while in use (its link count is 0); its contents are not written back, \
         so nothing is recreated at that path", .path.display()
    )]
    Deleted { path: PathBuf },
    #[error(
        "{} is no longer the file that was loaded (it was replaced, renamed or deleted while in \
         use); the contents are not written over whatever is there now", .path.display()
    )]
    Replaced { path: PathBuf },
    #[error("{}: the model holds {contents} bytes, the file {file} bytes", .path.display())]
    Size {
        path: PathBuf,
        contents: u64,
        file: u64,
    },
    #[error(
        "writing the new contents of {} to {} failed: {source}; the disk file is left as it \
         was", .path.display(), .temp.display()
    )]
    Write {
        path: PathBuf,
        temp: PathBuf,
        source: FileError,
    },
    #[error(
        "{} holds the new contents, but syncing its directory failed (the rename may not \
         survive a crash of the host): {source}", .path.display()
    )]
    SyncDirectory { path: PathBuf, source: io::Error },
}

/// Identity of an open file: device and inode.
fn identity(meta: &std::fs::Metadata) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    (meta.dev(), meta.ino())
}

impl PowerCut {
    /// Writes what the disk holds now (the crash image after a cut,
    /// otherwise the current contents) to `file`'s path, atomically (see
    /// the module docs), and makes it durable. `file` must be the file the
    /// model was loaded from, still at its path.
    pub fn store(&self, file: &BackingFile) -> Result<Stored, StoreError> {
        self.store_with(file, &mut |_| {})
    }

    /// [`PowerCut::store`], calling `step` at each [`WriteBackStep`] (a test
    /// hook: a process that kills itself there shows what a kill leaves).
    pub fn store_with(
        &self,
        file: &BackingFile,
        step: &mut dyn FnMut(WriteBackStep),
    ) -> Result<Stored, StoreError> {
        use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt};
        let disk = self.disk();
        let (contents, crashed) = match &disk.image {
            Some((image, _)) => (image, true),
            None => (&disk.current, false),
        };
        let path = file.path().to_path_buf();
        let file_bytes = file.blocks() * BLOCK_SIZE;
        if contents.len() as u64 != file_bytes {
            return Err(StoreError::Size {
                path,
                contents: contents.len() as u64,
                file: file_bytes,
            });
        }
        let replaced = || StoreError::Replaced { path: path.clone() };
        let old = file.file().metadata().map_err(|_| replaced())?;
        if old.nlink() == 0 {
            return Err(StoreError::Deleted { path });
        }
        // The file's real path (through any symbolic link), which must
        // still be this file: the new one replaces it there.
        let real = std::fs::canonicalize(&path).map_err(|_| replaced())?;
        let now = std::fs::metadata(&real).map_err(|_| replaced())?;
        if identity(&now) != identity(&old) {
            return Err(replaced());
        }
        let temp = writeback_temp_path(&real);
        let write_err = |source| StoreError::Write {
            path: path.clone(),
            temp: temp.clone(),
            source,
        };
        let io_err = |source| {
            write_err(FileError::Io {
                path: temp.clone(),
                source,
            })
        };
        // We hold the disk's lock: a file by that name is a stale one.
        if let Ok(Some(stale)) = remove_stale_writeback(file) {
            log::warn!(
                "removed {}, left by a write-back that was killed",
                stale.display()
            );
        }
        let new = BackingFile::create(&temp, file_bytes).map_err(write_err)?;
        let result = (|| {
            // Owner first: changing it may clear the set-id bits the mode
            // then sets. Without the right to (not root), the new file is
            // ours.
            let new_meta = new.file().metadata().map_err(io_err)?;
            if (new_meta.uid(), new_meta.gid()) != (old.uid(), old.gid()) {
                if let Err(e) =
                    std::os::unix::fs::fchown(new.file(), Some(old.uid()), Some(old.gid()))
                {
                    log::warn!(
                        "{}: cannot give the new file the old one's owner ({}:{}): {e}",
                        path.display(),
                        old.uid(),
                        old.gid()
                    );
                }
            }
            new.file()
                .set_permissions(std::fs::Permissions::from_mode(old.mode() & 0o7777))
                .map_err(io_err)?;
            let mut bounce = vec![0u8; WRITEBACK_CHUNK + BLOCK_SIZE as usize];
            let chunks = contents.len().div_ceil(WRITEBACK_CHUNK) as u64;
            for (i, piece) in contents.chunks(WRITEBACK_CHUNK).enumerate() {
                step(WriteBackStep::Chunk {
                    n: i as u64 + 1,
                    of: chunks,
                });
                let chunk = aligned(&mut bounce, piece.len());
                chunk.copy_from_slice(piece);
                new.file()
                    .write_all_at(chunk, (i * WRITEBACK_CHUNK) as u64)
                    .map_err(io_err)?;
            }
            step(WriteBackStep::Rename);
            new.file().sync_all().map_err(io_err)?;
            std::fs::rename(&temp, &real).map_err(io_err)
        })();
        if let Err(e) = result {
            if let Err(rm) = std::fs::remove_file(&temp) {
                log::warn!("could not remove {}: {rm}", temp.display());
            }
            return Err(e);
        }
        let dir = real.parent().unwrap_or(Path::new("/"));
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|source| StoreError::SyncDirectory {
                path: path.clone(),
                source,
            })?;
        Ok(Stored {
            crashed,
            file: new.renamed(path),
        })
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
        let cut = std::mem::take(&mut disk.cut_by_disk)
            .then(|| disk.image.as_ref().map(|(_, r)| *r))
            .flatten();
        drop(disk);
        // Completions are reaped after this returns: the callback hears of
        // the cut before anyone can see the operation at the cut fail.
        if let Some(report) = cut {
            if let Some(f) = self
                .shared
                .on_cut
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .as_mut()
            {
                f(report);
            }
        }
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

    /// What every operation gets once the power is off.
    const OFF: i32 = simulated_failure(Simulated::PowerCut, libc::EIO);

    fn op(kind: IoKind, offset: u64, buf: &mut [u8]) -> IoOp {
        IoOp {
            kind,
            offset,
            buf: HostBuf {
                ptr: buf.as_mut_ptr(),
                len: buf.len() as u32,
                fixed: None,
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
        assert_eq!(run(&mut b, op(IoKind::Read, 0, &mut back)), OFF);
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

    /// A cut allocates no crash image (one the size of the disk might not
    /// be had, and the cut must not fail): the image is built in the
    /// durable contents' memory, and is the same as the preview
    /// (`crash_image`, which does allocate) gives.
    #[test]
    fn a_cut_builds_its_image_in_the_durable_contents_memory() {
        let w = IoKind::Write { fua: false };
        let (mut b, pc) = PowerCutBackend::blank(64);
        let mut ones = vec![1u8; 8192];
        let mut twos = vec![2u8; 4096];
        assert_eq!(run(&mut b, op(w, 0, &mut ones)), 8192);
        assert_eq!(run(&mut b, op(w, 4096, &mut twos)), 4096);
        let preview = pc.crash_image(9);
        let durable = pc.disk().durable.as_ptr();
        let report = pc.cut(9);
        let d = pc.disk();
        let (image, r) = d.image.as_ref().unwrap();
        assert_eq!(image.as_ptr(), durable, "the cut allocated a new image");
        assert_eq!((image.clone(), *r), preview);
        assert_eq!(*r, report);
        assert!(d.durable.is_empty());
        drop(d);
        // After the cut, the preview is the cut's image.
        assert_eq!(pc.crash_image(1), preview);
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
        assert_eq!(
            run(&mut b, op(IoKind::Flush, 0, &mut none)),
            simulated_failure(Simulated::Fault, libc::EIO)
        );
        pc.clear_faults();
        assert_eq!(run(&mut b, op(IoKind::Flush, 0, &mut none)), 0);
        pc.cut_after(1, 5);
        let mut buf = vec![0u8; 4096];
        assert_eq!(run(&mut b, op(IoKind::Read, 0, &mut buf)), 4096);
        assert!(!pc.is_cut());
        assert_eq!(run(&mut b, op(IoKind::Read, 0, &mut buf)), OFF);
        assert!(pc.is_cut());
    }

    /// A FUA write in flight at the cut has not completed: it is not
    /// durable, and is kept, lost or torn at 512-byte boundaries like any
    /// other write not covered by a completed flush or FUA write.
    #[test]
    fn a_fua_write_in_flight_at_the_cut_may_be_kept_lost_or_torn() {
        let fua = IoKind::Write { fua: true };
        let mut fates = std::collections::BTreeSet::new();
        let mut partly = false;
        for seed in 0..64 {
            let (mut b, pc) = PowerCutBackend::blank(2);
            let mut ones = vec![1u8; 4096];
            let mut twos = vec![2u8; 8192];
            assert_eq!(run(&mut b, op(fua, 0, &mut ones)), 4096);
            pc.cut_at_write(2, seed);
            assert_eq!(run(&mut b, op(fua, 0, &mut twos)), OFF);
            let (img, r) = pc.image().expect("cut at the second write");
            let w = r.in_flight.expect("the write at the cut is in flight");
            assert_eq!((w.write, w.offset, w.len, w.fua), (2, 0, 8192, true));
            assert_eq!(r.volatile, 1);
            assert_eq!(r.kept + r.lost + r.torn, 1);
            let landed: Vec<bool> = (0..16).map(|s| img[s * 512] == 2).collect();
            // Each sector holds the write in flight or what was durable
            // before it: the completed FUA write's ones, or zeros.
            for s in 0..16 {
                let old = if s < 8 { 1 } else { 0 };
                let v = img[s * 512];
                assert!(v == 2 || v == old, "seed {seed} sector {s}: {v}");
                assert!(img[s * 512..(s + 1) * 512].iter().all(|&b| b == v));
            }
            let n = landed.iter().filter(|&&l| l).count() as u64;
            assert_eq!(w.sectors_landed, n, "seed {seed}");
            match w.fate {
                Fate::Kept => assert!(landed.iter().all(|&l| l)),
                Fate::Lost => assert!(landed.iter().all(|&l| !l)),
                Fate::Torn => partly |= landed.iter().any(|&l| l) && landed.iter().any(|&l| !l),
            }
            fates.insert(w.fate as u8);
        }
        assert_eq!(fates.len(), 3, "{fates:?}");
        assert!(partly, "no seed tore the write in flight");
    }

    /// `cut_at_write` counts write commands only, cuts at the n-th with
    /// the earlier volatile writes and the one in flight, runs nothing
    /// handed over behind it, tells `on_cut` once before the failures are
    /// reaped, and gives the same image for the same seed.
    #[test]
    fn cut_at_write_counts_writes_and_is_deterministic() {
        let image = |seed: u64| {
            let w = IoKind::Write { fua: false };
            let (mut b, pc) = PowerCutBackend::blank(4);
            let heard = Arc::new(Mutex::new(Vec::new()));
            let h = heard.clone();
            pc.on_cut(move |r| h.lock().unwrap().push(r));
            pc.cut_at_write(3, seed);
            let mut bufs: Vec<Vec<u8>> = (1..=5).map(|i| vec![i as u8; 4096]).collect();
            let mut none = [];
            let mut back = vec![0u8; 4096];
            assert_eq!(run(&mut b, op(w, 0, &mut bufs[0])), 4096);
            assert_eq!(run(&mut b, op(IoKind::Flush, 0, &mut none)), 0);
            assert_eq!(run(&mut b, op(IoKind::Read, 0, &mut back)), 4096);
            assert_eq!(run(&mut b, op(w, 4096, &mut bufs[1])), 4096);
            assert!(!pc.is_cut());
            // One batch: the third write cuts; the fourth, behind it, is
            // never carried out.
            let (p2, p3) = bufs[2..4].split_at_mut(1);
            assert!(b.push(&op(w, 8192, &mut p2[0]), 1));
            assert!(b.push(&op(w, 12288, &mut p3[0]), 2));
            b.submit().unwrap();
            assert_eq!(heard.lock().unwrap().len(), 1, "told before reaping");
            let mut results = Vec::new();
            b.reap(|tag, res| results.push((tag, res)));
            assert_eq!(results, [(1, OFF), (2, OFF)]);
            let (img, r) = pc.image().unwrap();
            assert_eq!(heard.lock().unwrap().as_slice(), [r]);
            assert_eq!(r.volatile, 2, "the unflushed write and the one in flight");
            assert_eq!(r.in_flight.unwrap().write, 3);
            assert_eq!(r.in_flight.unwrap().offset, 8192);
            assert!(img[..4096].iter().all(|&b| b == 1), "flushed");
            assert!(
                img[12288..].iter().all(|&b| b == 0),
                "never reached the disk"
            );
            assert_eq!(pc.disarm(), Some(r));
            assert_eq!(pc.stats().write_commands, 4);
            (img, r)
        };
        let a = image(11);
        assert_eq!(a, image(11));
        let mut differ = false;
        for seed in 0..16 {
            differ |= image(seed).0 != a.0;
        }
        assert!(differ, "the seed decides the image");
    }

    #[test]
    fn cut_after_counts_operations_and_a_disarmed_cut_never_comes() {
        let (mut b, pc) = PowerCutBackend::blank(1);
        let mut buf = vec![7u8; 4096];
        let mut none = [];
        pc.cut_after(1, 3);
        assert_eq!(run(&mut b, op(IoKind::Flush, 0, &mut none)), 0);
        // The second operation, a FUA write, is in flight at the cut.
        assert_eq!(
            run(&mut b, op(IoKind::Write { fua: true }, 0, &mut buf)),
            OFF
        );
        let r = pc.image().unwrap().1;
        assert_eq!(r.in_flight.map(|w| (w.write, w.fua)), Some((1, true)));
        let (mut b, pc) = PowerCutBackend::blank(1);
        pc.cut_at_write(1, 3);
        assert_eq!(pc.disarm(), None);
        assert_eq!(
            run(&mut b, op(IoKind::Write { fua: true }, 0, &mut buf)),
            4096
        );
        assert!(!pc.is_cut());
        assert_eq!(pc.current(), buf);
    }
}
