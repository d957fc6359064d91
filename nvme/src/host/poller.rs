//! The poller: the host side of every queue pair.
//!
//! One poller thread serves any number of queue pairs over one
//! [`DmaMemory`] and one [`Backend`]. Each turn it reads every queue's
//! shadow SQ tail, validates new entries (the `command` module), hands valid
//! ones to the backend as operations, posts an error completion for invalid
//! ones, and posts the completion of every command whose operations have
//! all finished.
//!
//! While there is work (new entries, operations in flight, completions) it
//! spins; after [`PollerConfig::spin`] without progress it parks: it sets
//! each queue's SQ event index to the tail it has consumed, re-checks the
//! tails, and blocks in the backend until an operation finishes or the wake
//! eventfd is signalled (the driver's real doorbell). An idle poller
//! therefore costs no CPU, and a busy one costs the driver no doorbell.
//!
//! A queue pair registered with an interrupt vector
//! ([`QueuePairConfig::interrupt`]) may have a CPU sleeping until a
//! completion arrives: it raises the queue's waiting word
//! ([`WAIT_WORD`]) and looks at the ring once more before it sleeps. At the
//! end of every turn that posted a completion on such a queue, the poller
//! (after a full fence, so that either it sees the word or the sleeper
//! sees the completion) swaps the word to 0 and, if it was raised, sends
//! that CPU the vector through [`Poller::send_interrupts`]. One interrupt
//! per sleep, none while nobody sleeps.
//!
//! The poller never trusts queue memory: a tail or head outside the ring is
//! ignored, a reused command id gets "command id conflict", and completions
//! are only posted into completion-ring slots the driver has released, so a
//! hostile driver can only stall its own queue.
//!
//! Two gates sit between a valid command and the backend, both off unless
//! asked for:
//!
//! - [`Poller::watch_for_deletion`]: before a flush or FUA write is
//!   reported complete, the backing file's link count is checked (`fstat`,
//!   well under a microsecond); once the file is found deleted, that command
//!   and every later write and flush fail ("internal error"), because
//!   nothing written to a file without a name survives, and the error is
//!   logged once. Reads go on (the data is still there for this open).
//! - [`Poller::inject_error`]: the N-th command of a kind (read, write with
//!   or without FUA, flush), counted from 1 over all queue pairs, fails with
//!   the status a failing disk gives ("unrecovered read error" or "write
//!   fault") and is not carried out: a failed write writes nothing.

use super::backend::{status_for, Backend, IoKind, IoOp, OpMatch};
use super::command::decode;
use super::file::{link_count, BackingFile};
use super::fixed::{Fixed, PinLimit, RegionError};
use super::memory::{DmaMemory, HostBuf};
use super::wake::{CompletionWaker, EventFdDoorbell, SpinBudget, WakeFd};
use crate::queue::{
    post_cqe, read_sqe, shared_word, ConfigError, Cqe, QueuePairConfig, Sqe, CQ_HEAD_WORD,
    EVENT_IDX_POLLING, SQ_TAIL_WORD, WAIT_WORD,
};
use crate::status::{NvmeError, Status};
use crate::types::{CommandId, DmaAddr, QueueId};
use std::fs::File;
use std::io;
use std::string::String;
use std::sync::atomic::{fence, AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use std::vec::Vec;

/// Sends interrupt `vector` (second argument) to the CPU whose APIC id is
/// the first argument: how the poller wakes a CPU waiting for a completion
/// (a guest vCPU: `KVM_SIGNAL_MSI`). Called on the poller thread.
pub type InterruptSender = Arc<dyn Fn(u32, u8) + Send + Sync>;

/// Most queue pairs one poller serves.
pub const MAX_QUEUES: usize = 256;

/// Poller settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PollerConfig {
    /// How long to keep polling without progress before parking. Longer
    /// than a typical I/O, so that a steady stream of requests never needs a
    /// real doorbell.
    pub spin: Duration,
    /// How long to keep polling with operations in flight and nothing
    /// completing before blocking in the kernel until one completes (or a
    /// doorbell rings: the doorbells are armed meanwhile), at least: the
    /// poller spins longer, up to [`IN_FLIGHT_SPIN_MAX`], while its waits
    /// show completions arriving within that ([`SpinBudget`]). Completions of a
    /// busy queue arrive faster than this; a single durable write takes
    /// longer, and a poller spinning through it would take a CPU that the
    /// kernel (an io_uring worker running the write) or the waiting thread
    /// needs, which on a shared machine is the difference between 20 us
    /// and 20 ms. `None`: never block with operations in flight (yield the
    /// CPU between turns instead, the old behaviour, for comparison).
    pub block_in_flight_after: Option<Duration>,
    /// Whether spins before sleeping adapt to the waits they serve (the
    /// poller's in-flight spin, and in process mode each queue pair's
    /// waiter; see [`SpinBudget`]). `false`: both stay at their minimum
    /// (`block_in_flight_after`, `process::WAIT_SPIN`), as before, for
    /// comparison.
    pub adaptive_spin: bool,
}

impl Default for PollerConfig {
    fn default() -> Self {
        PollerConfig {
            spin: Duration::from_micros(200),
            block_in_flight_after: Some(Duration::from_micros(20)),
            adaptive_spin: true,
        }
    }
}

/// With [`PollerConfig::block_in_flight_after`] `None`: how long the poller
/// spins with I/O in flight and nothing completing before it yields its CPU
/// between turns.
const YIELD_AFTER: Duration = Duration::from_micros(20);

/// A poller that cannot do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum PollerError {
    #[error("invalid queue pair: {0}")]
    Config(#[from] ConfigError),
    #[error("the poller thread has stopped")]
    Stopped,
    #[error("no queue pair {0:?}")]
    NoSuchQueue(QueueId),
    #[error("starting the poller failed: {0}")]
    Io(#[from] io::Error),
    #[error("{0}")]
    Region(#[from] RegionError),
}

/// Counters of a poller.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PollerStats {
    /// Submission entries taken off the queues.
    pub commands: u64,
    /// Completions posted with an error status.
    pub errors: u64,
    /// Operations handed to the backend.
    pub io_ops: u64,
    /// Times the poller parked.
    pub parks: u64,
    /// Times a park ended.
    pub wakeups: u64,
    /// Times a queue's shadow doorbell held an index outside its ring.
    pub bad_doorbells: u64,
    /// Valid read, write (FUA or not) and flush commands taken off the
    /// queues (those failed on purpose included): what
    /// [`Poller::inject_error`] counts.
    pub read_commands: u64,
    pub write_commands: u64,
    pub flush_commands: u64,
    /// Commands failed because the backing file was found deleted
    /// ([`Poller::watch_for_deletion`]).
    pub refused_deleted: u64,
    /// Completion interrupts sent to waiting CPUs
    /// ([`Poller::send_interrupts`]).
    pub interrupts: u64,
    /// Read and write operations issued with fixed buffers
    /// (`READ_FIXED`/`WRITE_FIXED`: the buffer lay in registered memory)
    /// and with plain ones (`READ`/`WRITE`); their sum is `io_ops` less the
    /// flushes.
    pub fixed_ios: u64,
    pub plain_ios: u64,
    /// Declared DMA regions registered now, and their bytes
    /// ([`PollerControl::declare_region`]).
    pub dma_regions: u64,
    pub dma_bytes: u64,
}

/// A command to fail on purpose: the `nth` command (from 1) of the kind
/// `kind` matches, counted over all queue pairs ([`Poller::inject_error`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ErrorInjection {
    /// Reads, writes (FUA or not) or flushes.
    pub kind: OpMatch,
    pub nth: u64,
}

/// The command an [`ErrorInjection`] failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FailedCommand {
    pub kind: IoKind,
    /// First block and block count (0 and 0 for a flush).
    pub slba: u64,
    pub blocks: u32,
    /// The queue pair and command id it came with.
    pub queue: u16,
    pub cid: u16,
    /// The status it completed with.
    pub error: NvmeError,
}

/// The backing file whose deletion [`Poller::watch_for_deletion`] watches
/// for.
pub struct DeletionWatch {
    file: File,
    name: String,
    during: String,
}

impl DeletionWatch {
    /// Watches `file` (through a duplicate of its descriptor, which shares
    /// its lock and is closed with the poller). In the error, the file is
    /// `name` and was deleted `during` (for example "disk /d.img" and
    /// "while the VM ran").
    pub fn new(
        file: &BackingFile,
        name: impl Into<String>,
        during: impl Into<String>,
    ) -> io::Result<DeletionWatch> {
        Ok(DeletionWatch {
            file: file.file().try_clone()?,
            name: name.into(),
            during: during.into(),
        })
    }
}

/// The gates between valid commands and the backend (see the module docs).
#[derive(Default)]
struct Gate {
    watch: Option<DeletionWatch>,
    /// The watched file was found deleted.
    deleted: bool,
    injection: Option<ErrorInjection>,
}

impl Gate {
    /// Counts a valid command and decides whether it goes to the backend;
    /// `Err` fails it with that status instead.
    fn admit(
        &mut self,
        kind: IoKind,
        sqe: &Sqe,
        queue: u16,
        shared: &Shared,
    ) -> Result<(), NvmeError> {
        let stats = &shared.stats;
        let counter = match kind {
            IoKind::Read => &stats.read_commands,
            IoKind::Write { .. } => &stats.write_commands,
            IoKind::Flush => &stats.flush_commands,
        };
        AtomicStats::add(counter, 1);
        let nth = counter.load(Ordering::Relaxed);
        if self.deleted && kind != IoKind::Read {
            AtomicStats::add(&stats.refused_deleted, 1);
            return Err(NvmeError::InternalError);
        }
        match self.injection {
            Some(inj) if inj.kind.matches(kind) && inj.nth == nth => {
                let error = match kind {
                    IoKind::Read => NvmeError::UnrecoveredReadError,
                    _ => NvmeError::WriteFault,
                };
                let (slba, blocks) = match kind {
                    IoKind::Flush => (0, 0),
                    _ => (sqe.slba().0, sqe.blocks()),
                };
                let failed = FailedCommand {
                    kind,
                    slba,
                    blocks,
                    queue,
                    cid: sqe.cid().0,
                    error,
                };
                log::debug!("nvme: failing {failed:?} on purpose (error injection)");
                *shared.failed.lock().unwrap_or_else(|e| e.into_inner()) = Some(failed);
                Err(error)
            }
            _ => Ok(()),
        }
    }

    /// Whether a flush or FUA write that completed may be reported done:
    /// not if the watched file has been deleted (then nothing it wrote is
    /// durable), which is logged once.
    fn durable(&mut self, stats: &AtomicStats) -> bool {
        let Some(watch) = &self.watch else {
            return true;
        };
        let ok = !self.deleted
            && match link_count(&watch.file) {
                Ok(0) => {
                    self.deleted = true;
                    log::error!(
                        "{} was deleted {}; writes are refused from now on: a flush or FUA \
                         write cannot make anything durable in a file that no longer has a \
                         name (its link count is 0), so none is acknowledged",
                        watch.name,
                        watch.during
                    );
                    false
                }
                Ok(_) => true,
                Err(e) => {
                    log::error!(
                        "{}: fstat failed ({e}); a flush or FUA write is failed, since the \
                         file cannot be shown to still exist",
                        watch.name
                    );
                    false
                }
            };
        if !ok {
            AtomicStats::add(&stats.refused_deleted, 1);
        }
        ok
    }
}

#[derive(Default)]
struct AtomicStats {
    commands: AtomicU64,
    errors: AtomicU64,
    io_ops: AtomicU64,
    parks: AtomicU64,
    wakeups: AtomicU64,
    bad_doorbells: AtomicU64,
    read_commands: AtomicU64,
    write_commands: AtomicU64,
    flush_commands: AtomicU64,
    refused_deleted: AtomicU64,
    interrupts: AtomicU64,
    fixed_ios: AtomicU64,
    plain_ios: AtomicU64,
    dma_regions: AtomicU64,
    dma_bytes: AtomicU64,
}

impl AtomicStats {
    fn add(counter: &AtomicU64, n: u64) {
        // Only the poller thread writes, so load + store is exact and cheaper
        // than a locked add.
        counter.store(counter.load(Ordering::Relaxed) + n, Ordering::Relaxed);
    }

    fn snapshot(&self) -> PollerStats {
        PollerStats {
            commands: self.commands.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
            io_ops: self.io_ops.load(Ordering::Relaxed),
            parks: self.parks.load(Ordering::Relaxed),
            wakeups: self.wakeups.load(Ordering::Relaxed),
            bad_doorbells: self.bad_doorbells.load(Ordering::Relaxed),
            read_commands: self.read_commands.load(Ordering::Relaxed),
            write_commands: self.write_commands.load(Ordering::Relaxed),
            flush_commands: self.flush_commands.load(Ordering::Relaxed),
            refused_deleted: self.refused_deleted.load(Ordering::Relaxed),
            interrupts: self.interrupts.load(Ordering::Relaxed),
            fixed_ios: self.fixed_ios.load(Ordering::Relaxed),
            plain_ios: self.plain_ios.load(Ordering::Relaxed),
            dma_regions: self.dma_regions.load(Ordering::Relaxed),
            dma_bytes: self.dma_bytes.load(Ordering::Relaxed),
        }
    }
}

enum Control {
    Add(
        QueuePairConfig,
        Option<Arc<CompletionWaker>>,
        mpsc::Sender<Result<QueueId, PollerError>>,
    ),
    Remove(QueueId, mpsc::Sender<Result<(), PollerError>>),
    Declare(u64, u64, mpsc::Sender<Result<(), PollerError>>),
    Release(u64, u64, mpsc::Sender<Result<(), PollerError>>),
}

/// What the poller shares with its handles.
struct Shared {
    /// Requests for the poller thread; `None` once it has stopped.
    control: Mutex<Option<Vec<Control>>>,
    control_pending: AtomicBool,
    stop: AtomicBool,
    stats: AtomicStats,
    wake: Arc<WakeFd>,
    /// The command an [`ErrorInjection`] failed, once it has.
    failed: Mutex<Option<FailedCommand>>,
}

/// The host's view of one queue pair.
struct HostQueue {
    id: QueueId,
    depth: u32,
    sq: *const Sqe,
    cq: *mut Cqe,
    doorbells: *mut u32,
    events: *mut u32,
    sq_head: u32,
    cq_tail: u32,
    phase: bool,
    /// Commands taken off the SQ whose completion is not posted yet.
    held: u32,
    /// Command ids of the held commands.
    cid_busy: Vec<u64>,
    /// The CQ was full when we last looked (only a misbehaving driver).
    cq_stalled: bool,
    cq_head_seen: u32,
    bad_doorbell: bool,
    removing: Option<mpsc::Sender<Result<(), PollerError>>>,
    /// Woken at the end of every turn that posted a completion here
    /// (process mode: a driver thread may sleep on it instead of
    /// spinning); one wake-up for all of a turn's completions.
    waker: Option<Arc<CompletionWaker>>,
    /// A completion was posted in this turn.
    posted: bool,
    /// The vector to send a CPU waiting on this queue (its waiting word);
    /// 0: nobody sleeps on it.
    interrupt: u8,
}

impl HostQueue {
    fn word(&self, base: *mut u32, index: usize) -> &std::sync::atomic::AtomicU32 {
        // SAFETY: `base` points to the doorbell area (four dwords) or the
        // event indexes (two dwords) inside the served memory, validated
        // when the queue was added, 8-byte aligned; `index` is within it.
        unsafe { shared_word(base.add(index)) }
    }

    fn cid_is_busy(&self, cid: CommandId) -> bool {
        self.cid_busy[cid.0 as usize / 64] & (1 << (cid.0 % 64)) != 0
    }

    fn set_cid_busy(&mut self, cid: CommandId, busy: bool) {
        let (w, bit) = (cid.0 as usize / 64, 1u64 << (cid.0 % 64));
        if busy {
            self.cid_busy[w] |= bit;
        } else {
            self.cid_busy[w] &= !bit;
        }
    }

    /// Posts a completion for a held command.
    fn post(&mut self, cid: CommandId, status: Status) {
        let cqe = Cqe::new(cid, self.sq_head as u16, self.id, status, self.phase);
        // SAFETY: cq_tail < depth, so the slot is inside the completion
        // ring, which was validated to lie in served memory.
        unsafe { post_cqe(self.cq.add(self.cq_tail as usize), &cqe) };
        self.cq_tail += 1;
        if self.cq_tail == self.depth {
            self.cq_tail = 0;
            self.phase = !self.phase;
        }
        self.held -= 1;
        self.posted = true;
    }

    /// Completion-ring entries posted and not yet consumed, per the
    /// driver's shadow CQ head; `None` if that head is outside the ring.
    fn cq_used(&self) -> Option<u32> {
        let head = self
            .word(self.doorbells, CQ_HEAD_WORD)
            .load(Ordering::Acquire);
        (head < self.depth).then(|| (self.cq_tail + self.depth - head) % self.depth)
    }

    fn set_events(&self, sq: u32, cq: u32) {
        self.word(self.events, SQ_TAIL_WORD)
            .store(sq, Ordering::Relaxed);
        self.word(self.events, CQ_HEAD_WORD)
            .store(cq, Ordering::Relaxed);
    }
}

/// A command whose operations are in the backend.
#[derive(Clone, Copy, Debug)]
struct Pending {
    queue: u16,
    cid: CommandId,
    kind: IoKind,
    remaining: u32,
    status: Status,
}

/// The host side of the queue pairs. Run it on its own thread with
/// [`Poller::spawn`], or drive it by hand with [`Poller::turn`].
pub struct Poller<B: Backend> {
    memory: Arc<DmaMemory>,
    backend: B,
    capacity_blocks: u64,
    queues: Vec<Option<HostQueue>>,
    pending: Vec<Pending>,
    free_pending: Vec<u32>,
    bufs: Vec<HostBuf>,
    ops: Vec<IoOp>,
    shared: Arc<Shared>,
    config: PollerConfig,
    gate: Gate,
    /// How completion interrupts are sent; `None`: queue pairs asking for
    /// them are refused.
    interrupts: Option<InterruptSender>,
    /// The registered fixed buffers and declared DMA regions.
    fixed: Fixed,
    /// How long to spin with operations in flight before blocking:
    /// between `block_in_flight_after` and [`IN_FLIGHT_SPIN_MAX`], adapted
    /// to how long such waits take (`None`: never block).
    in_flight_spin: Option<SpinBudget>,
}

/// The longest the poller spins with operations in flight before it
/// blocks in the kernel, once its waits have shown that completions
/// arrive within that.
pub const IN_FLIGHT_SPIN_MAX: Duration = Duration::from_micros(200);

// SAFETY: the raw pointers in HostQueue point into the served memory, which
// DmaMemory (held in an Arc) keeps valid; they are only used by the thread
// that owns the poller.
unsafe impl<B: Backend> Send for Poller<B> {}

impl<B: Backend> Poller<B> {
    /// A poller over `memory` issuing I/O through `backend`.
    pub fn new(
        memory: Arc<DmaMemory>,
        mut backend: B,
        config: PollerConfig,
    ) -> io::Result<Poller<B>> {
        let fixed = Fixed::for_backend(&memory, backend.registrar(), PinLimit::of_this_process());
        let shared = Arc::new(Shared {
            control: Mutex::new(Some(Vec::new())),
            control_pending: AtomicBool::new(false),
            stop: AtomicBool::new(false),
            stats: AtomicStats::default(),
            wake: Arc::new(WakeFd::new()?),
            failed: Mutex::new(None),
        });
        Ok(Poller {
            capacity_blocks: backend.capacity_blocks(),
            memory,
            backend,
            queues: Vec::new(),
            pending: Vec::new(),
            free_pending: Vec::new(),
            bufs: Vec::new(),
            ops: Vec::new(),
            shared,
            in_flight_spin: config.block_in_flight_after.map(|after| {
                let max = if config.adaptive_spin {
                    IN_FLIGHT_SPIN_MAX
                } else {
                    after
                };
                SpinBudget::new(after, max)
            }),
            config,
            gate: Gate::default(),
            interrupts: None,
            fixed,
        })
    }

    /// Checks declared DMA regions against `limit` instead of this
    /// process's own (`PinLimit::of_this_process`, which the poller starts
    /// with).
    pub fn set_pin_limit(&mut self, limit: Option<PinLimit>) {
        self.fixed.set_limit(limit);
    }

    /// Declares `[addr, addr + len)` of the served memory a DMA region:
    /// validated and registered as a fixed buffer (see `host::fixed`).
    pub fn declare_region(&mut self, addr: u64, len: u64) -> Result<(), RegionError> {
        let Poller {
            memory,
            backend,
            fixed,
            ..
        } = self;
        let r = match backend.registrar() {
            Some(reg) => fixed.declare(memory, reg, addr, len),
            None => Err(RegionError::Unsupported { addr }),
        };
        self.publish_regions();
        r
    }

    /// Gives back the DMA region declared at exactly `[addr, addr + len)`.
    pub fn release_region(&mut self, addr: u64, len: u64) -> Result<(), RegionError> {
        let Poller { backend, fixed, .. } = self;
        let r = match backend.registrar() {
            Some(reg) => fixed.release(reg, addr, len),
            None => Err(RegionError::NotDeclared { addr, len }),
        };
        self.publish_regions();
        r
    }

    fn publish_regions(&self) {
        let stats = &self.shared.stats;
        stats
            .dma_regions
            .store(self.fixed.regions() as u64, Ordering::Relaxed);
        stats
            .dma_bytes
            .store(self.fixed.declared_bytes(), Ordering::Relaxed);
    }

    /// Checks, before a flush or FUA write is reported complete, that
    /// `watch`'s file still has a name; once it has none, fails that
    /// command and every later write and flush (see the module docs).
    pub fn watch_for_deletion(&mut self, watch: DeletionWatch) {
        self.gate.watch = Some(watch);
    }

    /// Fails the command `injection` names, without carrying it out (see
    /// the module docs); [`PollerControl::injected_failure`] tells which
    /// it was.
    pub fn inject_error(&mut self, injection: ErrorInjection) {
        self.gate.injection = Some(injection);
    }

    /// Sends completion interrupts with `send` to CPUs waiting on queue
    /// pairs registered with an interrupt vector (see the module docs);
    /// without it such queue pairs are refused.
    pub fn send_interrupts(&mut self, send: InterruptSender) {
        self.interrupts = Some(send);
    }

    /// The eventfd that wakes this poller.
    pub fn wake_fd(&self) -> &Arc<WakeFd> {
        &self.shared.wake
    }

    /// The counters so far.
    pub fn stats(&self) -> PollerStats {
        self.shared.stats.snapshot()
    }

    /// The command [`Poller::inject_error`] failed, once it has.
    pub fn injected_failure(&self) -> Option<FailedCommand> {
        *self.shared.failed.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The backend.
    pub fn backend(&self) -> &B {
        &self.backend
    }

    /// Namespace capacity in blocks.
    pub fn capacity_blocks(&self) -> u64 {
        self.capacity_blocks
    }

    /// Starts serving a queue pair after checking that its rings and words
    /// lie in the served memory. The event indexes are set to "polling".
    pub fn add_queue(&mut self, config: QueuePairConfig) -> Result<QueueId, PollerError> {
        self.add_queue_woken(config, None)
    }

    /// Starts serving a queue pair like [`Poller::add_queue`], waking
    /// `waker` after every completion posted on it.
    pub fn add_queue_woken(
        &mut self,
        config: QueuePairConfig,
        waker: Option<Arc<CompletionWaker>>,
    ) -> Result<QueueId, PollerError> {
        config.validate_shape()?;
        if config.interrupt != 0 && self.interrupts.is_none() {
            return Err(ConfigError::Interrupt(config.interrupt).into());
        }
        let mut ptrs = [std::ptr::null_mut(); 4];
        for (ptr, (what, addr, len, _)) in ptrs.iter_mut().zip(config.areas()) {
            *ptr = self
                .memory
                .host_ptr(DmaAddr(addr), len)
                .ok_or(ConfigError::OutsideMemory { what, addr, len })?;
        }
        let slot = match self.queues.iter().position(Option::is_none) {
            Some(i) => i,
            None if self.queues.len() < MAX_QUEUES => {
                self.queues.push(None);
                self.queues.len() - 1
            }
            None => return Err(ConfigError::TooManyQueues(MAX_QUEUES).into()),
        };
        let depth = config.depth as u32;
        let q = HostQueue {
            id: QueueId(slot as u16),
            depth,
            sq: ptrs[0].cast(),
            cq: ptrs[1].cast(),
            doorbells: ptrs[2].cast(),
            events: ptrs[3].cast(),
            sq_head: 0,
            cq_tail: 0,
            phase: true,
            held: 0,
            cid_busy: std::vec![0; 1024],
            cq_stalled: false,
            cq_head_seen: 0,
            bad_doorbell: false,
            removing: None,
            waker,
            posted: false,
            // validate_shape checked 0 or 32..=254.
            interrupt: config.interrupt as u8,
        };
        // The driver starts with SQ tail 0 and the host with head 0; a
        // driver that already submitted is picked up on the next turn.
        q.set_events(EVENT_IDX_POLLING, EVENT_IDX_POLLING);
        fence(Ordering::SeqCst);
        log::debug!("nvme: serving queue pair {slot} with depth {depth} at {config:x?}");
        self.queues[slot] = Some(q);
        Ok(QueueId(slot as u16))
    }

    /// Stops serving a queue pair once its outstanding commands have
    /// completed; `done` is told when the host no longer touches its memory.
    fn remove_queue(&mut self, id: QueueId, done: mpsc::Sender<Result<(), PollerError>>) {
        match self.queues.get_mut(id.0 as usize).and_then(Option::as_mut) {
            Some(q) if q.removing.is_none() => q.removing = Some(done),
            _ => {
                let _ = done.send(Err(PollerError::NoSuchQueue(id)));
            }
        }
        self.finish_removals();
    }

    fn finish_removals(&mut self) {
        for slot in self.queues.iter_mut() {
            if slot
                .as_ref()
                .is_some_and(|q| q.removing.is_some() && q.held == 0)
            {
                let q = slot.take().expect("checked above");
                log::debug!("nvme: queue pair {} removed", q.id.0);
                if let Some(done) = q.removing {
                    let _ = done.send(Ok(()));
                }
            }
        }
    }

    fn handle_control(&mut self) {
        self.shared.control_pending.store(false, Ordering::Relaxed);
        let msgs = {
            let mut control = self
                .shared
                .control
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            control.as_mut().map(std::mem::take).unwrap_or_default()
        };
        for msg in msgs {
            match msg {
                Control::Add(config, waker, reply) => {
                    let r = self.add_queue_woken(config, waker);
                    let _ = reply.send(r);
                }
                Control::Remove(id, reply) => self.remove_queue(id, reply),
                Control::Declare(addr, len, reply) => {
                    let r = self.declare_region(addr, len);
                    let _ = reply.send(r.map_err(PollerError::from));
                }
                Control::Release(addr, len, reply) => {
                    let r = self.release_region(addr, len);
                    let _ = reply.send(r.map_err(PollerError::from));
                }
            }
        }
    }

    /// Takes new entries off one queue. Returns whether it did anything.
    fn fetch(&mut self, qi: usize) -> bool {
        let Some(mut q) = self.queues[qi].take() else {
            return false;
        };
        let work = self.fetch_from(&mut q);
        self.queues[qi] = Some(q);
        work
    }

    fn fetch_from(&mut self, q: &mut HostQueue) -> bool {
        if q.removing.is_some() {
            return false;
        }
        let tail = q.word(q.doorbells, SQ_TAIL_WORD).load(Ordering::Acquire);
        if tail >= q.depth {
            if !q.bad_doorbell {
                log::warn!(
                    "nvme: queue pair {}: SQ tail {tail} outside a ring of {}",
                    q.id.0,
                    q.depth
                );
                q.bad_doorbell = true;
                AtomicStats::add(&self.shared.stats.bad_doorbells, 1);
            }
            return false;
        }
        q.bad_doorbell = false;
        if q.sq_head == tail {
            return false;
        }
        let Some(mut cq_used) = q.cq_used() else {
            q.cq_stalled = true;
            return false;
        };
        let stats = &self.shared.stats;
        let (mut commands, mut errors, mut io_ops) = (0, 0, 0);
        let (mut fixed_ios, mut plain_ios) = (0, 0);
        q.cq_stalled = false;
        while q.sq_head != tail {
            // Take an entry only if its completion is sure to find room.
            if q.held + cq_used >= q.depth - 1 {
                q.cq_stalled = true;
                break;
            }
            // SAFETY: sq_head < depth: the slot is inside the submission
            // ring, which lies in served memory.
            let sqe = unsafe { read_sqe(q.sq.add(q.sq_head as usize)) };
            let cid = sqe.cid();
            let decoded = if q.cid_is_busy(cid) {
                Err(NvmeError::CommandIdConflict)
            } else {
                decode(
                    &sqe,
                    &self.memory,
                    self.capacity_blocks,
                    &mut self.bufs,
                    &mut self.ops,
                )
            };
            if decoded.is_ok() && self.backend.room() < self.ops.len() {
                break; // The backend is full: retry on a later turn.
            }
            q.sq_head = (q.sq_head + 1) % q.depth;
            q.held += 1;
            commands += 1;
            let decoded = decoded.and_then(|kind| {
                self.gate
                    .admit(kind, &sqe, q.id.0, &self.shared)
                    .map(|()| kind)
            });
            match decoded {
                Err(e) => {
                    errors += 1;
                    q.post(cid, Status::from_error(e));
                    cq_used += 1;
                }
                Ok(kind) => {
                    q.set_cid_busy(cid, true);
                    if kind != IoKind::Flush {
                        for op in self.ops.iter_mut() {
                            op.buf.fixed = self.fixed.lookup(op.buf.ptr, op.buf.len);
                            if op.buf.fixed.is_some() {
                                fixed_ios += 1;
                            } else {
                                plain_ios += 1;
                            }
                        }
                    }
                    let p = Pending {
                        queue: q.id.0,
                        cid,
                        kind,
                        remaining: self.ops.len() as u32,
                        status: Status::SUCCESS,
                    };
                    let slot = match self.free_pending.pop() {
                        Some(s) => {
                            self.pending[s as usize] = p;
                            s
                        }
                        None => {
                            self.pending.push(p);
                            (self.pending.len() - 1) as u32
                        }
                    };
                    for op in &self.ops {
                        let tag = slot as u64 | (op.buf.len as u64) << 32;
                        if !self.backend.push(op, tag) {
                            // Cannot happen after the room check; fail the
                            // operation rather than lose the command.
                            log::error!("nvme: backend refused an operation it had room for");
                            complete_op(
                                &mut self.queues,
                                &mut self.pending,
                                &mut self.free_pending,
                                stats,
                                &mut self.gate,
                                Some(&mut *q),
                                tag,
                                -libc::EAGAIN,
                            );
                        }
                    }
                    io_ops += self.ops.len() as u64;
                }
            }
        }
        AtomicStats::add(&stats.commands, commands);
        AtomicStats::add(&stats.errors, errors);
        AtomicStats::add(&stats.io_ops, io_ops);
        AtomicStats::add(&stats.fixed_ios, fixed_ios);
        AtomicStats::add(&stats.plain_ios, plain_ios);
        commands > 0
    }

    /// One pass: control messages, new entries on every queue, submission to
    /// the kernel, finished operations. Returns whether anything happened.
    pub fn turn(&mut self) -> bool {
        self.turn_inner(true)
    }

    fn turn_inner(&mut self, fetch: bool) -> bool {
        if self.shared.control_pending.load(Ordering::Acquire) {
            self.handle_control();
        }
        let mut work = false;
        if fetch {
            for qi in 0..self.queues.len() {
                work |= self.fetch(qi);
            }
        }
        if work {
            if let Err(e) = self.backend.submit() {
                log::error!("nvme: submitting to the backend failed: {e}");
            }
        }
        let Poller {
            backend,
            queues,
            pending,
            free_pending,
            shared,
            gate,
            ..
        } = self;
        let reaped = backend.reap(|tag, res| {
            complete_op(
                queues,
                pending,
                free_pending,
                &shared.stats,
                gate,
                None,
                tag,
                res,
            )
        });
        if reaped > 0 {
            self.finish_removals();
        }
        // One wake-up per queue for everything this turn posted there.
        // The completions are published (post_cqe's release store); the
        // fence orders them before the look at the waiting word, pairing
        // with the sleeper's store of the word before its last look at
        // the ring: one of the two sees the other.
        let mut fenced = false;
        for q in self.queues.iter_mut().flatten() {
            if !std::mem::take(&mut q.posted) {
                continue;
            }
            if let Some(w) = &q.waker {
                w.notify();
            }
            if q.interrupt != 0 {
                if !fenced {
                    fence(Ordering::SeqCst);
                    fenced = true;
                }
                let waiting = q.word(q.doorbells, WAIT_WORD).swap(0, Ordering::SeqCst);
                if waiting != 0 {
                    if let Some(send) = &self.interrupts {
                        send(waiting - 1, q.interrupt);
                        AtomicStats::add(&self.shared.stats.interrupts, 1);
                    }
                }
            }
        }
        work || reaped > 0
    }

    /// Sets every queue's event indexes so that the driver rings the real
    /// doorbell on its next submission, then re-checks the queues. Returns
    /// `true` if it is safe to park (nothing arrived meanwhile); otherwise
    /// the event indexes are back to "polling".
    pub fn arm_doorbells(&mut self) -> bool {
        for q in self.queues.iter_mut().flatten() {
            let cq = if q.cq_stalled {
                q.cq_head_seen = q.word(q.doorbells, CQ_HEAD_WORD).load(Ordering::Relaxed);
                q.cq_head_seen
            } else {
                EVENT_IDX_POLLING
            };
            q.set_events(q.sq_head, cq);
        }
        fence(Ordering::SeqCst);
        let busy = self.shared.control_pending.load(Ordering::Relaxed)
            || self.shared.stop.load(Ordering::Relaxed)
            || self.queues.iter().flatten().any(|q| {
                if q.removing.is_some() {
                    return false;
                }
                if q.cq_stalled {
                    q.word(q.doorbells, CQ_HEAD_WORD).load(Ordering::Relaxed) != q.cq_head_seen
                } else {
                    let tail = q.word(q.doorbells, SQ_TAIL_WORD).load(Ordering::Relaxed);
                    tail < q.depth && tail != q.sq_head
                }
            });
        if busy {
            self.disarm_doorbells();
        }
        !busy
    }

    /// Sets every queue's event indexes to "polling".
    pub fn disarm_doorbells(&mut self) {
        for q in self.queues.iter().flatten() {
            q.set_events(EVENT_IDX_POLLING, EVENT_IDX_POLLING);
        }
    }

    /// Parks until an operation finishes or the wake eventfd is signalled,
    /// unless work arrives while arming the doorbells.
    pub fn park(&mut self) {
        if self.arm_doorbells() {
            AtomicStats::add(&self.shared.stats.parks, 1);
            if let Err(e) = self.backend.park(&self.shared.wake) {
                log::error!("nvme: parking failed: {e}");
            }
            AtomicStats::add(&self.shared.stats.wakeups, 1);
            self.disarm_doorbells();
        }
    }

    /// Blocks in the backend until an operation finishes (or the wake
    /// eventfd is signalled), for a poller run by its queue pair's owner
    /// (`host::inline`), which has nothing else to wait for.
    pub fn wait_for_backend(&mut self) {
        if let Err(e) = self.backend.park(&self.shared.wake) {
            log::error!("nvme: waiting for the backend failed: {e}");
        }
    }

    /// Operations in the backend.
    pub fn in_flight(&self) -> usize {
        self.backend.in_flight()
    }

    /// Turns until no entry is waiting and no operation is in flight,
    /// blocking in the backend while only operations are outstanding.
    pub fn run_until_idle(&mut self) {
        loop {
            if self.turn() {
                continue;
            }
            if self.backend.in_flight() == 0 {
                return;
            }
            if let Err(e) = self.backend.park(&self.shared.wake) {
                log::error!("nvme: waiting for the backend failed: {e}");
                return;
            }
        }
    }

    /// Serves the queues until [`PollerHandle::stop`]; then finishes the
    /// operations in flight (taking no new entries) and returns.
    pub fn run(&mut self) {
        let spin = self.config.spin;
        let mut idle_since: Option<Instant> = None;
        // Since when the poller has had nothing to do but operations in
        // flight (kept across a block, so the wait is measured whole).
        let mut in_flight_since: Option<Instant> = None;
        while !self.shared.stop.load(Ordering::Relaxed) {
            if self.turn() {
                if let (Some(t0), Some(budget)) = (in_flight_since.take(), &self.in_flight_spin) {
                    budget.record(t0.elapsed());
                }
                idle_since = None;
                continue;
            }
            let now = Instant::now();
            let idle = now.duration_since(*idle_since.get_or_insert(now));
            if idle < spin {
                if self.backend.in_flight() > 0 {
                    let waited = now.duration_since(*in_flight_since.get_or_insert(now));
                    match &self.in_flight_spin {
                        // Waiting on the kernel for a while: block until an
                        // operation completes (or a doorbell rings), so the
                        // kernel's worker and the waiting thread get the CPU.
                        Some(budget) if waited > budget.get() => {
                            self.park();
                            idle_since = None;
                        }
                        None if idle > YIELD_AFTER => std::thread::yield_now(),
                        _ => std::hint::spin_loop(),
                    }
                } else {
                    in_flight_since = None;
                    std::hint::spin_loop();
                }
                continue;
            }
            self.park();
            idle_since = None;
        }
        while self.backend.in_flight() > 0 {
            if !self.turn_inner(false) {
                if let Err(e) = self.backend.park(&self.shared.wake) {
                    log::error!("nvme: draining the backend failed: {e}");
                    break;
                }
            }
        }
        let msgs = self
            .shared
            .control
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
            .unwrap_or_default();
        for msg in msgs {
            match msg {
                Control::Add(_, _, reply) => drop(reply.send(Err(PollerError::Stopped))),
                Control::Remove(_, reply)
                | Control::Declare(_, _, reply)
                | Control::Release(_, _, reply) => drop(reply.send(Err(PollerError::Stopped))),
            }
        }
        log::debug!("nvme: poller stopped: {:?}", self.stats());
    }
}

/// Accounts one finished operation (`tag` = pending slot | length << 32)
/// and posts its command's completion when it was the last one (a flush or
/// FUA write only if `gate` lets it count as durable). `current` is a queue
/// taken out of `queues` for the moment, if any.
#[allow(clippy::too_many_arguments)]
fn complete_op(
    queues: &mut [Option<HostQueue>],
    pending: &mut [Pending],
    free_pending: &mut Vec<u32>,
    stats: &AtomicStats,
    gate: &mut Gate,
    current: Option<&mut HostQueue>,
    tag: u64,
    res: i32,
) {
    let slot = tag as u32;
    let Some(p) = pending.get_mut(slot as usize) else {
        log::error!("nvme: completion with unknown tag {tag:#x}");
        return;
    };
    let st = status_for(p.kind, res, (tag >> 32) as u32);
    if p.status.is_success() {
        p.status = st;
    }
    p.remaining -= 1;
    if p.remaining > 0 {
        return;
    }
    let durable_kind = matches!(p.kind, IoKind::Flush | IoKind::Write { fua: true });
    if durable_kind && p.status.is_success() && !gate.durable(stats) {
        p.status = Status::from_error(NvmeError::InternalError);
    }
    free_pending.push(slot);
    let q = match current {
        Some(q) if q.id.0 == p.queue => Some(q),
        _ => queues.get_mut(p.queue as usize).and_then(Option::as_mut),
    };
    if let Some(q) = q {
        q.set_cid_busy(p.cid, false);
        if !p.status.is_success() {
            AtomicStats::add(&stats.errors, 1);
        }
        q.post(p.cid, p.status);
    }
}

impl<B: Backend + 'static> Poller<B> {
    /// Runs the poller on a new thread named `nvme-poller`.
    pub fn spawn(mut self) -> Result<PollerHandle, PollerError> {
        let shared = self.shared.clone();
        let thread = std::thread::Builder::new()
            .name("nvme-poller".into())
            .spawn(move || self.run())?;
        Ok(PollerHandle {
            control: PollerControl { shared },
            thread: Some(thread),
        })
    }
}

/// Sends requests to a running poller; cheap to clone.
#[derive(Clone)]
pub struct PollerControl {
    shared: Arc<Shared>,
}

impl PollerControl {
    fn request<T>(
        &self,
        make: impl FnOnce(mpsc::Sender<Result<T, PollerError>>) -> Control,
    ) -> Result<T, PollerError> {
        let (tx, rx) = mpsc::channel();
        match self
            .shared
            .control
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_mut()
        {
            Some(msgs) => msgs.push(make(tx)),
            None => return Err(PollerError::Stopped),
        }
        self.shared.control_pending.store(true, Ordering::Release);
        self.shared.wake.wake();
        rx.recv().map_err(|_| PollerError::Stopped)?
    }

    /// Starts serving a queue pair (validated against the served memory).
    pub fn add_queue(&self, config: QueuePairConfig) -> Result<QueueId, PollerError> {
        self.request(|tx| Control::Add(config, None, tx))
    }

    /// Starts serving a queue pair, waking `waker` after every completion
    /// posted on it (see [`CompletionWaker`]).
    pub fn add_queue_woken(
        &self,
        config: QueuePairConfig,
        waker: Arc<CompletionWaker>,
    ) -> Result<QueueId, PollerError> {
        self.request(|tx| Control::Add(config, Some(waker), tx))
    }

    /// Stops serving a queue pair; returns once its outstanding commands
    /// have completed and the poller no longer touches its memory.
    pub fn remove_queue(&self, id: QueueId) -> Result<(), PollerError> {
        self.request(|tx| Control::Remove(id, tx))
    }

    /// Declares `[addr, addr + len)` of the served memory a DMA region,
    /// registered as a fixed buffer until [`PollerControl::release_region`]
    /// (see `host::fixed` for what is checked).
    pub fn declare_region(&self, addr: u64, len: u64) -> Result<(), PollerError> {
        self.request(|tx| Control::Declare(addr, len, tx))
    }

    /// Gives back the DMA region declared at exactly `[addr, addr + len)`.
    /// Operations in flight on it finish on its pages.
    pub fn release_region(&self, addr: u64, len: u64) -> Result<(), PollerError> {
        self.request(|tx| Control::Release(addr, len, tx))
    }

    /// The eventfd that wakes the poller (the VMM signals it on a doorbell
    /// exit, or registers it as a KVM ioeventfd).
    pub fn wake_fd(&self) -> &Arc<WakeFd> {
        &self.shared.wake
    }

    /// A process-mode doorbell for driver queue pairs.
    pub fn doorbell(&self) -> EventFdDoorbell {
        EventFdDoorbell(self.shared.wake.clone())
    }

    /// The poller's counters.
    pub fn stats(&self) -> PollerStats {
        self.shared.stats.snapshot()
    }

    /// The command [`Poller::inject_error`] failed, once it has.
    pub fn injected_failure(&self) -> Option<FailedCommand> {
        *self.shared.failed.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Owns a poller thread; stopping or dropping it finishes the operations
/// in flight and joins the thread.
pub struct PollerHandle {
    control: PollerControl,
    thread: Option<JoinHandle<()>>,
}

impl std::ops::Deref for PollerHandle {
    type Target = PollerControl;
    fn deref(&self) -> &PollerControl {
        &self.control
    }
}

impl PollerHandle {
    /// A clonable control for the poller.
    pub fn control(&self) -> PollerControl {
        self.control.clone()
    }

    /// CPU time the poller thread has used.
    pub fn cpu_time(&self) -> io::Result<Duration> {
        use std::os::unix::thread::JoinHandleExt;
        let thread = self
            .thread
            .as_ref()
            .ok_or_else(|| io::Error::other("poller stopped"))?;
        let mut clock: libc::clockid_t = 0;
        // SAFETY: the pthread is alive (not joined) while we hold its handle.
        let rc = unsafe { libc::pthread_getcpuclockid(thread.as_pthread_t(), &mut clock) };
        if rc != 0 {
            return Err(io::Error::from_raw_os_error(rc));
        }
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: writes one timespec we own.
        if unsafe { libc::clock_gettime(clock, &mut ts) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32))
    }

    /// Stops the poller and waits for it; returns its final counters.
    pub fn stop(mut self) -> PollerStats {
        self.shutdown();
        self.control.stats()
    }

    fn shutdown(&mut self) {
        self.control.shared.stop.store(true, Ordering::Relaxed);
        self.control.shared.wake.wake();
        if let Some(t) = self.thread.take() {
            if t.join().is_err() {
                log::error!("nvme: the poller thread panicked");
            }
        }
    }
}

impl Drop for PollerHandle {
    fn drop(&mut self) {
        self.shutdown();
    }
}
