//! Owner-driven queue pairs in process mode: the host side of a queue pair
//! (a [`Poller`] serving only it, over an io_uring of its own) run by the
//! thread that uses the queue pair, as a polled-mode NVMe driver's
//! application thread polls its own queue and as io_uring runs without a
//! submission thread.
//!
//! Submitting runs the host's turn at once: after every turn the host sets
//! the queue's SQ event index to the tail it consumed, so the driver's next
//! submission rings the doorbell, and the doorbell is a call into the host
//! (fetch, validate, hand to io_uring). Waiting runs turns and blocks in
//! `io_uring_enter` until an operation completes. No poller thread, no
//! hand-off, no wake-up across threads: one thread per I/O, as with
//! `pread`, so the queue pair needs no CPU of its own when other work
//! takes the CPUs. Everything else is the queue pair's protocol as the
//! poller thread serves it (the rings, the command checks, the gates).
//!
//! Completions therefore appear only while the owner submits, polls or
//! waits through the [`InlineQueuePair`] ([`InlineQueuePair::poll`] and
//! [`InlineQueuePair::reap`] run a turn of the host when the ring is
//! empty; [`InlineQueuePair::wait_for_completion`],
//! [`InlineQueuePair::wait`] and [`InlineQueuePair::execute`] block);
//! reading the ring through the bare [`QueuePair`] (its `poll`, `reap`,
//! `has_completion`) does not run the host. The block device built on it
//! (`dbos_bufferpool::host::inline_block_device`) polls through the
//! [`InlineQueuePair`].
//!
//! [`process::Device`](super::process::Device)'s queue pairs, served by one
//! poller thread, remain the guest's shape and the compared method. An
//! [`InlineQueuePair`] is used by one thread at a time but may move
//! between threads: its io_uring is set up without
//! `IORING_SETUP_SINGLE_ISSUER` (`UringConfig::defer_taskrun` is turned
//! off), which would tie it to the first thread that used it. Durable
//! operations (FUA writes, flushes) are carried out by the caller's thread
//! with `pwritev2(RWF_DSYNC)` and `fdatasync`
//! (`UringConfig::durable_in_caller`): through the ring, io_uring hands
//! them to a kernel worker thread, a second thread to schedule again.

use super::file::BackingFile;
use super::memory::{DmaBuf, DmaMemory, ProcessMemory};
use super::poller::{DeletionWatch, Poller, PollerConfig, PollerStats};
use super::process::DeviceError;
use super::uring::{UringBackend, UringConfig};
use crate::driver::{Command, Completion, Doorbell, DriverError, QueueMemory, QueuePair};
use crate::queue::QueueLayout;
use std::string::ToString;
use std::sync::{Arc, Mutex, MutexGuard};

/// A process-mode device whose queue pairs are served by their owners
/// (see the module docs): a registered region and the file, no thread.
pub struct InlineDevice {
    memory: Arc<ProcessMemory>,
    dma: Arc<DmaMemory>,
    file: BackingFile,
    poller: PollerConfig,
    uring: UringConfig,
}

impl InlineDevice {
    /// A device on `file` with a registered region of `region_bytes`. Each
    /// queue pair gets an io_uring set up as `uring` says (but without
    /// `defer_taskrun`, see the module docs); `poller` is
    /// the host's configuration (its spins are unused: nothing polls
    /// without its owner).
    pub fn open(
        file: &BackingFile,
        region_bytes: usize,
        poller: PollerConfig,
        uring: UringConfig,
    ) -> Result<InlineDevice, DeviceError> {
        let memory = Arc::new(ProcessMemory::new(region_bytes)?);
        let dma = Arc::new(DmaMemory::from_process(memory.clone())?);
        Ok(InlineDevice {
            memory,
            dma,
            file: file.try_clone()?,
            poller,
            // A queue pair may move between threads (see the module docs);
            // durable writes are done by the caller, not by a kernel worker.
            uring: UringConfig {
                defer_taskrun: false,
                durable_in_caller: true,
                ..uring
            },
        })
    }

    /// Namespace capacity in blocks.
    pub fn blocks(&self) -> u64 {
        self.file.blocks()
    }

    /// The registered region.
    pub fn memory(&self) -> &Arc<ProcessMemory> {
        &self.memory
    }

    /// Carves a 4 KiB aligned buffer of `len` bytes from the region.
    pub fn alloc(&self, len: usize) -> Result<DmaBuf, DeviceError> {
        self.memory.alloc(len).ok_or(DeviceError::OutOfMemory(len))
    }

    /// A new queue pair with `depth` entries per ring and a host of its
    /// own (an io_uring on the file, watching for the file's deletion as
    /// [`process::Device::open`](super::process::Device::open) does).
    pub fn queue_pair(&self, depth: u16) -> Result<InlineQueuePair, DeviceError> {
        let layout = QueueLayout::new(depth).ok_or(DriverError::Depth(depth))?;
        let mem = self.alloc(layout.size() as usize)?;
        let backend = UringBackend::new(&self.file, &self.dma, self.uring)?;
        let mut poller = Poller::new(self.dma.clone(), backend, self.poller)?;
        poller.watch_for_deletion(DeletionWatch::new(
            &self.file,
            self.file.path().display().to_string(),
            "while in use",
        )?);
        let host = Arc::new(Host(Mutex::new(poller)));
        // SAFETY: the block was just carved from the region (never handed
        // out again), is 4 KiB aligned and layout.size() long, and its
        // device address is its host address; the Arc keeps the region
        // mapped.
        let qp = unsafe {
            QueuePair::new(
                QueueMemory {
                    virt: mem.ptr,
                    dma: mem.addr,
                },
                depth,
                InlineDoorbell(host.clone()),
            )?
        };
        {
            let mut p = host.lock();
            p.add_queue(qp.config())?;
            // The first submission rings.
            p.arm_doorbells();
        }
        Ok(InlineQueuePair {
            qp,
            host,
            _memory: self.memory.clone(),
        })
    }
}

/// The host side of one owner-driven queue pair. The lock is only ever
/// taken by the thread that owns the queue pair (the doorbell and the
/// waits), so it is never contended; it makes the doorbell, which the
/// queue pair holds, and the waits share the poller.
struct Host(Mutex<Poller<UringBackend>>);

impl Host {
    fn lock(&self) -> MutexGuard<'_, Poller<UringBackend>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Turns until nothing new arrives, then asks the driver to ring on its
/// next submission (the SQ event index at the consumed tail).
fn serve(p: &mut Poller<UringBackend>) {
    loop {
        p.turn();
        if p.arm_doorbells() {
            return;
        }
    }
}

/// The doorbell of an owner-driven queue pair: runs the host at once.
#[derive(Clone)]
pub struct InlineDoorbell(Arc<Host>);

impl Doorbell for InlineDoorbell {
    fn ring(&self) {
        serve(&mut self.0.lock());
    }
}

/// A driver queue pair whose host runs in the calling thread (see the
/// module docs).
pub struct InlineQueuePair {
    qp: QueuePair<InlineDoorbell>,
    host: Arc<Host>,
    _memory: Arc<ProcessMemory>,
}

impl InlineQueuePair {
    /// Waits until a completion is in the ring (returns at once if one
    /// is, or if nothing is outstanding): runs the host's turns, blocking
    /// in the kernel until an operation completes while only operations
    /// are outstanding. Returns whether it blocked.
    pub fn wait_for_completion(&self) -> bool {
        let mut blocked = false;
        let mut p = self.host.lock();
        loop {
            if self.qp.in_flight() == 0 || self.qp.has_completion() {
                break;
            }
            if p.turn() {
                continue;
            }
            if p.in_flight() == 0 {
                // Nothing in the kernel and nothing posted: the host waits
                // for the driver (a full completion ring it must consume).
                break;
            }
            p.wait_for_backend();
            blocked = true;
        }
        // Nothing else runs the host: whatever arrives now rings.
        while !p.arm_doorbells() {
            p.turn();
        }
        blocked
    }

    /// Runs one turn of the host without blocking when commands are
    /// outstanding and the ring holds no completion: collects the
    /// operations that finished and posts their completions.
    pub fn progress(&self) {
        if self.qp.in_flight() > 0 && !self.qp.has_completion() {
            serve(&mut self.host.lock());
        }
    }

    /// Consumes one completion if there is one, running a turn of the
    /// host first when the ring has none (shadows [`QueuePair::poll`],
    /// which only reads the ring: a loop that polls and yields then
    /// progresses, as it does with the poller thread).
    pub fn poll(&mut self) -> Option<Completion> {
        self.progress();
        self.qp.poll()
    }

    /// Consumes up to `out.len()` completions, running a turn of the host
    /// first when the ring has none (shadows [`QueuePair::reap`], as
    /// [`poll`](Self::poll) does).
    pub fn reap(&mut self, out: &mut [Completion]) -> usize {
        self.progress();
        self.qp.reap(out)
    }

    /// Waits for and consumes one completion; `None` if nothing is
    /// outstanding. (Shadows [`QueuePair::wait`], which spins on the ring
    /// and, with nobody else to run the host, would never see one.)
    pub fn wait(&mut self) -> Option<Completion> {
        while self.qp.in_flight() > 0 {
            if let Some(c) = self.qp.poll() {
                return Some(c);
            }
            self.wait_for_completion();
        }
        None
    }

    /// Submits one command and waits until it completes. Needs a queue
    /// pair with nothing else outstanding. (Shadows
    /// [`QueuePair::execute`], for the reason [`wait`](Self::wait) says.)
    pub fn execute(&mut self, cmd: &Command) -> Result<(), DriverError> {
        if self.qp.in_flight() != 0 {
            return Err(DriverError::CommandsOutstanding);
        }
        self.qp.submit(cmd)?;
        let c = self.wait().ok_or(DriverError::CommandsOutstanding)?;
        c.result().map_err(DriverError::Device)
    }

    /// The host's counters.
    pub fn host_stats(&self) -> PollerStats {
        self.host.lock().stats()
    }
}

impl std::ops::Deref for InlineQueuePair {
    type Target = QueuePair<InlineDoorbell>;
    fn deref(&self) -> &Self::Target {
        &self.qp
    }
}

impl std::ops::DerefMut for InlineQueuePair {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.qp
    }
}
