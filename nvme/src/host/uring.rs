//! The io_uring backend: reads and writes on the registered file, with
//! `READ_FIXED`/`WRITE_FIXED` where the buffer lies in a registered fixed
//! buffer (no per-I/O pinning or mapping) and plain `READ`/`WRITE`
//! elsewhere (each I/O pins its pages for its duration), FUA as
//! `RWF_DSYNC`, flush as `IORING_OP_FSYNC` with `IORING_FSYNC_DATASYNC`
//! (`fdatasync`).
//!
//! Which memory is registered ([`UringConfig::fixed_buffers`]): all of the
//! served memory at start (process mode's small region), or only the DMA
//! regions the driver declares later (`crate::host::fixed`), into
//! [`MAX_DMA_REGIONS`] empty slots reserved at start with
//! `IORING_RSRC_REGISTER_SPARSE` and filled or emptied with
//! `IORING_REGISTER_BUFFERS_UPDATE` (Linux 5.13). Registering all of a VM's
//! RAM would pin (and fault in) all of it at start, counted against
//! `RLIMIT_MEMLOCK` without `CAP_IPC_LOCK` (4 GiB took seconds and stayed
//! pinned); declared regions pin only what the guest does I/O from.
//!
//! Parking waits in `io_uring_enter` for either an I/O completion or a read
//! of the poller's eventfd, so one wait covers both.

use super::backend::{Backend, IoKind, IoOp};
use super::file::BackingFile;
use super::fixed::{Registrar, MAX_DMA_REGIONS};
use super::memory::DmaMemory;
use super::wake::WakeFd;
use io_uring::{opcode, squeue, types, IoUring};
use std::boxed::Box;
use std::fs::File;
use std::io;
use std::os::unix::io::AsRawFd;
use std::sync::Arc;
use std::vec::Vec;

/// Tag of the eventfd read that wakes a parked poller.
const WAKE_TAG: u64 = u64::MAX;

/// Fewest submission entries: one command may need
/// [`crate::MAX_TRANSFER_BLOCKS`] operations.
pub const MIN_ENTRIES: u32 = 512;

/// Settings of the io_uring instance.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UringConfig {
    /// Submission ring entries (rounded up to a power of two, at least
    /// [`MIN_ENTRIES`]); the completion ring has twice as many.
    pub entries: u32,
    /// `IORING_SETUP_COOP_TASKRUN | IORING_SETUP_TASKRUN_FLAG` (default on):
    /// the kernel does not interrupt the polling thread to post completions;
    /// the backend enters the kernel to collect them when the ring flags say
    /// some are waiting. Without it, completions of a spinning poller are
    /// posted by interrupting it; that measured about the same on an idle
    /// machine but 3-4x fewer IOPS at queue depth 32 while other processes
    /// competed for the CPUs (see `nvme-compare --no-coop-taskrun`).
    pub coop_taskrun: bool,
    /// `IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN` (default
    /// on, as fio sets up its rings): completions are posted only when the
    /// poller asks for them, on its own thread, without the kernel waking
    /// or interrupting it. The ring is created disabled and enabled by the
    /// first thread that submits or waits on it, which must then be the
    /// only thread that does (the poller's own).
    pub defer_taskrun: bool,
    /// Unrelated operations handed to the kernel per `io_uring_enter` at
    /// most (0: no limit, one enter per poller turn). io_uring plugs the
    /// block layer for a submission of more than 2 operations, holding the
    /// first ones back from the device until the whole batch is issued; on
    /// the development machine's virtio disk that cost 10-15% of QD32 4 KiB
    /// random-read IOPS against batches of 2. A run of adjacent operations
    /// of one kind (sequential writes) is still submitted as one batch,
    /// because there the plug merges them into larger requests (about 2x
    /// the IOPS for 4 KiB sequential writes at QD32). Figures in
    /// `nvme/docs/benchmarks.md`.
    pub submit_batch: u32,
    /// Register all of the served memory as fixed buffers at start
    /// (default on). Off: nothing is registered at start (no start-up
    /// cost, nothing pinned or counted against `RLIMIT_MEMLOCK`); empty
    /// slots wait for declared DMA regions, and I/O outside them pins its
    /// pages while it runs.
    pub fixed_buffers: bool,
    /// Carry out durable operations (FUA writes and flushes) in the
    /// calling thread, synchronously when they are pushed (`pwritev2` with
    /// `RWF_DSYNC`, `fdatasync`), instead of through the ring (default
    /// off). io_uring hands such writes to a kernel worker thread
    /// (`iou-wrk`), which, like a poller thread, must get a CPU before the
    /// write completes: with other work on every CPU, 4 KiB FUA writes
    /// took milliseconds through the ring against 137 us this way
    /// (`nvme/docs/benchmarks.md`). Owner-driven queue pairs
    /// (`host::inline`) turn it on: their host already runs in the
    /// caller's thread.
    pub durable_in_caller: bool,
}

impl Default for UringConfig {
    fn default() -> Self {
        UringConfig {
            entries: MIN_ENTRIES,
            coop_taskrun: true,
            defer_taskrun: true,
            submit_batch: 2,
            fixed_buffers: true,
            durable_in_caller: false,
        }
    }
}

/// The io_uring backend could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum UringError {
    #[error("io_uring setup failed: {0}")]
    Setup(io::Error),
    #[error("registering the backing file with io_uring failed: {0}")]
    RegisterFile(io::Error),
    #[error(
        "registering {bytes} bytes of memory as {count} io_uring fixed buffers failed: {source} \
         (without CAP_IPC_LOCK the size counts against RLIMIT_MEMLOCK)"
    )]
    RegisterBuffers {
        bytes: u64,
        count: usize,
        source: io::Error,
    },
    #[error("duplicating the backing file descriptor failed: {0}")]
    Dup(io::Error),
    #[error("opening the backing file for io_uring failed: {0}")]
    Reopen(super::file::FileError),
}

/// Waiting on an io_uring ring from a thread other than the one that
/// enabled it (`defer_taskrun` rings belong to one thread).
const NOT_ISSUER: i32 = libc::EEXIST;

/// The io_uring submission entry for `op` (exposed so tests can check what
/// the kernel will be asked to do): `READ_FIXED`/`WRITE_FIXED` when the
/// poller found its buffer inside a registered one ([`HostBuf::fixed`]),
/// plain `READ`/`WRITE` otherwise.
///
/// [`HostBuf::fixed`]: super::memory::HostBuf::fixed
pub fn entry_for(op: &IoOp, tag: u64) -> squeue::Entry {
    let fd = types::Fixed(0);
    let (ptr, len) = (op.buf.ptr, op.buf.len);
    let dsync = |fua: bool| if fua { libc::RWF_DSYNC } else { 0 };
    match (op.kind, op.buf.fixed) {
        (IoKind::Read, Some(index)) => opcode::ReadFixed::new(fd, ptr, len, index)
            .offset(op.offset)
            .build(),
        (IoKind::Read, None) => opcode::Read::new(fd, ptr, len).offset(op.offset).build(),
        (IoKind::Write { fua }, Some(index)) => opcode::WriteFixed::new(fd, ptr, len, index)
            .offset(op.offset)
            .rw_flags(dsync(fua))
            .build(),
        (IoKind::Write { fua }, None) => opcode::Write::new(fd, ptr, len)
            .offset(op.offset)
            .rw_flags(dsync(fua))
            .build(),
        (IoKind::Flush, _) => opcode::Fsync::new(fd)
            .flags(types::FsyncFlags::DATASYNC)
            .build(),
    }
    .user_data(tag)
}

/// Carries out operations with io_uring.
pub struct UringBackend {
    // Field order matters: the ring is dropped (after Drop drained it)
    // before the buffers it may reference.
    ring: IoUring,
    wake_buf: Box<u64>,
    _file: File,
    /// The locked descriptor (dropped after the ring).
    _lock: File,
    _memory: Arc<DmaMemory>,
    blocks: u64,
    outstanding: usize,
    cq_entries: usize,
    wake: Option<Arc<WakeFd>>,
    wake_armed: bool,
    /// `UringConfig::durable_in_caller`.
    durable_in_caller: bool,
    /// Operations carried out in `push` (durable ones, see
    /// `UringConfig::durable_in_caller`): tag and result, for the next
    /// `reap`. Counted in `outstanding` until then.
    done: Vec<(u64, i32)>,
    /// Completions wait in the kernel until we enter it (the ring's
    /// TASKRUN flag says when).
    coop: bool,
    /// Created disabled: the first `enter` enables it on its thread.
    disabled: bool,
    submit_batch: usize,
    /// Kind and end offset of the last operation pushed, to tell whether
    /// the next one continues it.
    run_end: Option<(IoKind, u64)>,
    /// Empty fixed-buffer slots reserved for declared regions (0 when all
    /// the memory is registered, or the kernel cannot reserve them).
    region_slots: usize,
    /// All of the served memory is registered.
    whole_memory: bool,
}

impl UringBackend {
    /// Sets up io_uring on `file` with `memory` registered as fixed buffers.
    pub fn new(
        file: &BackingFile,
        memory: &Arc<DmaMemory>,
        config: UringConfig,
    ) -> Result<UringBackend, UringError> {
        let entries = config.entries.max(MIN_ENTRIES).next_power_of_two();
        let mut builder = IoUring::builder();
        let coop = config.coop_taskrun || config.defer_taskrun;
        if coop {
            builder.setup_taskrun_flag();
        }
        if config.coop_taskrun {
            builder.setup_coop_taskrun();
        }
        if config.defer_taskrun {
            // Disabled until the poller's thread enables it (see `enter`):
            // that thread becomes the ring's single issuer.
            builder
                .setup_single_issuer()
                .setup_defer_taskrun()
                .setup_r_disabled();
        }
        let ring = builder.build(entries).map_err(UringError::Setup)?;
        // The ring gets its own open of the file; the backend keeps a
        // duplicate of the locked descriptor, which holds the file's lock
        // exactly as long as the backend lives (see
        // `BackingFile::reopen_unlocked`).
        let lock = file.file().try_clone().map_err(UringError::Dup)?;
        let fd = file.reopen_unlocked().map_err(UringError::Reopen)?;
        ring.submitter()
            .register_files(&[fd.as_raw_fd()])
            .map_err(UringError::RegisterFile)?;
        if config.fixed_buffers {
            let iovecs: Vec<libc::iovec> = memory
                .fixed_buffers()
                .iter()
                .map(|&(ptr, len)| libc::iovec {
                    iov_base: ptr.cast(),
                    iov_len: len as usize,
                })
                .collect();
            // SAFETY: DmaMemory's contract keeps every buffer mapped while
            // the DmaMemory lives, and we hold an Arc of it for the ring's
            // lifetime (the ring is dropped first, see the field order).
            unsafe { ring.submitter().register_buffers(&iovecs) }.map_err(|source| {
                UringError::RegisterBuffers {
                    bytes: memory.fixed_buffers().iter().map(|b| b.1).sum(),
                    count: iovecs.len(),
                    source,
                }
            })?;
        }
        let region_slots = if config.fixed_buffers {
            0
        } else {
            match ring
                .submitter()
                .register_buffers_sparse(MAX_DMA_REGIONS as u32)
            {
                Ok(()) => MAX_DMA_REGIONS,
                Err(e) => {
                    log::warn!(
                        "nvme: io_uring cannot reserve fixed-buffer slots for DMA regions \
                         ({e}; Linux 5.13 or later can): every I/O uses plain buffers"
                    );
                    0
                }
            }
        };
        let cq_entries = ring.params().cq_entries() as usize;
        Ok(UringBackend {
            ring,
            wake_buf: Box::new(0),
            _file: fd,
            _lock: lock,
            _memory: memory.clone(),
            blocks: file.blocks(),
            outstanding: 0,
            cq_entries,
            wake: None,
            wake_armed: false,
            durable_in_caller: config.durable_in_caller,
            done: Vec::new(),
            coop,
            disabled: config.defer_taskrun,
            submit_batch: config.submit_batch as usize,
            run_end: None,
            region_slots,
            whole_memory: config.fixed_buffers,
        })
    }

    /// Carries out a durable operation in this thread: a FUA write as
    /// `pwritev2(RWF_DSYNC)` (repeated on a short count), a flush as
    /// `fdatasync`. Returns the result as a completion carries it (bytes
    /// written, 0 for a flush, or a negated errno).
    fn durable_now(&self, op: &IoOp) -> i32 {
        let fd = self._file.as_raw_fd();
        if op.kind == IoKind::Flush {
            // SAFETY: plain syscall on our descriptor.
            return if unsafe { libc::fdatasync(fd) } == 0 {
                0
            } else {
                -io::Error::last_os_error()
                    .raw_os_error()
                    .unwrap_or(libc::EIO)
            };
        }
        let len = op.buf.len as usize;
        let mut done = 0usize;
        while done < len {
            let iov = libc::iovec {
                // SAFETY: inside the operation's buffer, which the poller
                // checked lies in the served memory.
                iov_base: unsafe { op.buf.ptr.add(done) }.cast(),
                iov_len: len - done,
            };
            // SAFETY: one iovec over live served memory, read by the
            // kernel during the call only.
            let n = unsafe {
                libc::pwritev2(
                    fd,
                    &iov,
                    1,
                    (op.offset + done as u64) as libc::off_t,
                    libc::RWF_DSYNC,
                )
            };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return -e.raw_os_error().unwrap_or(libc::EIO);
            }
            if n == 0 {
                return -libc::EIO;
            }
            done += n as usize;
        }
        done as i32
    }

    fn push_entry(&mut self, entry: &squeue::Entry) -> bool {
        // SAFETY: every entry we build references either a fixed buffer
        // inside the registered memory (checked by the poller against
        // DmaMemory) or `wake_buf`, both alive until the ring is drained.
        unsafe { self.ring.submission().push(entry).is_ok() }
    }

    fn enter(&mut self, want: usize) -> io::Result<()> {
        if self.disabled {
            self.ring.submitter().register_enable_rings()?;
            self.disabled = false;
        }
        match self.ring.submit_and_wait(want) {
            Err(e) if e.raw_os_error() == Some(NOT_ISSUER) => Err(io::Error::other(
                "io_uring ring used from a thread other than the poller's (single issuer)",
            )),
            Ok(_) => Ok(()),
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::EINTR | libc::EAGAIN | libc::EBUSY)
                ) =>
            {
                Ok(())
            }
            Err(e) => Err(e),
        }
    }
}

impl Backend for UringBackend {
    fn capacity_blocks(&self) -> u64 {
        self.blocks
    }

    fn room(&self) -> usize {
        // One submission and one completion slot stay reserved for the
        // wake-up read.
        let sq_room = (self.ring.params().sq_entries() as usize).saturating_sub(self.sq_len() + 1);
        let cq_room = self.cq_entries.saturating_sub(self.outstanding + 1);
        sq_room.min(cq_room)
    }

    fn push(&mut self, op: &IoOp, tag: u64) -> bool {
        if self.room() == 0 {
            return false;
        }
        if self.durable_in_caller && matches!(op.kind, IoKind::Flush | IoKind::Write { fua: true })
        {
            let res = self.durable_now(op);
            self.done.push((tag, res));
            self.outstanding += 1;
            return true;
        }
        // Hand the queued operations to the kernel before one that does
        // not continue them, once `submit_batch` are queued: a run of
        // adjacent operations stays together so the block layer can merge
        // it, and unrelated ones go out in pairs, without the plug.
        let continues = self.run_end == Some((op.kind, op.offset));
        if self.submit_batch > 0 && !continues && self.sq_len() >= self.submit_batch {
            // Left in the ring on failure: the turn's `submit` reports it.
            if let Err(e) = self.enter(0) {
                log::warn!("nvme: io_uring submission failed: {e}");
            }
        }
        if !self.push_entry(&entry_for(op, tag)) {
            return false;
        }
        self.outstanding += 1;
        self.run_end = Some((op.kind, op.offset + op.buf.len as u64));
        true
    }

    fn submit(&mut self) -> io::Result<()> {
        if self.sq_len() == 0 {
            return Ok(());
        }
        self.enter(0)
    }

    fn reap<F: FnMut(u64, i32)>(&mut self, mut f: F) -> usize {
        // SAFETY: no other SubmissionQueue of this ring exists meanwhile.
        if self.coop && self.outstanding > 0 && unsafe { self.ring.submission_shared().taskrun() } {
            // Completions are waiting for us to enter the kernel.
            if let Err(e) = self.enter(0) {
                log::warn!("nvme: io_uring_enter to run completions failed: {e}");
            }
        }
        let mut n = 0;
        for (tag, res) in std::mem::take(&mut self.done) {
            self.outstanding -= 1;
            n += 1;
            f(tag, res);
        }
        for cqe in self.ring.completion() {
            if cqe.user_data() == WAKE_TAG {
                self.wake_armed = false;
                continue;
            }
            self.outstanding -= 1;
            n += 1;
            f(cqe.user_data(), cqe.result());
        }
        n
    }

    fn park(&mut self, wake: &Arc<WakeFd>) -> io::Result<()> {
        if !self.done.is_empty() {
            // Finished already: the next reap reports them.
            return Ok(());
        }
        if !self.wake_armed {
            let entry = opcode::Read::new(
                types::Fd(wake.raw_fd()),
                (&mut *self.wake_buf as *mut u64).cast(),
                8,
            )
            .build()
            .user_data(WAKE_TAG);
            if !self.push_entry(&entry) {
                // The ring is full of operations: their completions wake us.
                return self.enter(1);
            }
            self.wake = Some(wake.clone());
            self.wake_armed = true;
        }
        self.enter(1)
    }

    fn in_flight(&self) -> usize {
        self.outstanding
    }

    fn registrar(&mut self) -> Option<&mut dyn Registrar> {
        Some(self)
    }
}

impl Registrar for UringBackend {
    fn whole_memory(&self) -> bool {
        self.whole_memory
    }

    fn region_slots(&self) -> usize {
        self.region_slots
    }

    fn register_region(&mut self, slot: u16, host: *mut u8, len: u64) -> io::Result<()> {
        let iov = [libc::iovec {
            iov_base: host.cast(),
            iov_len: len as usize,
        }];
        // SAFETY: the registry only registers ranges inside the served
        // memory (`DmaMemory::host_ptr` checked them), which stays mapped
        // while the backend holds its Arc; the ring is dropped first.
        unsafe {
            self.ring
                .submitter()
                .register_buffers_update(slot.into(), &iov, None)
        }
    }

    fn unregister_region(&mut self, slot: u16) -> io::Result<()> {
        let empty = [libc::iovec {
            iov_base: std::ptr::null_mut(),
            iov_len: 0,
        }];
        // SAFETY: an empty iovec only clears the slot.
        unsafe {
            self.ring
                .submitter()
                .register_buffers_update(slot.into(), &empty, None)
        }
    }
}

impl UringBackend {
    fn sq_len(&self) -> usize {
        // SAFETY: no other SubmissionQueue of this ring exists while this
        // temporary one does (the backend is not shared between threads).
        unsafe { self.ring.submission_shared().len() }
    }
}

impl Drop for UringBackend {
    fn drop(&mut self) {
        // Wait for every operation (and the wake-up read, which we complete
        // ourselves) so the kernel never writes memory after we are gone.
        if self.wake_armed {
            if let Some(w) = &self.wake {
                w.wake();
            }
        }
        // Operations done in `push` need no wait: reaped first.
        self.reap(|_, _| {});
        while self.outstanding > 0 || self.wake_armed {
            if let Err(e) = self.enter(1) {
                log::error!("nvme: io_uring wait while shutting down failed: {e}");
                break;
            }
            self.reap(|_, _| {});
        }
    }
}
