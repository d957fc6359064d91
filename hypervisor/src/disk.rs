//! The NVMe disk device: a `dbos_nvme` poller thread serving the guest's
//! queue pairs from guest RAM, with io_uring on an `O_DIRECT` backing file.
//!
//! Guest RAM is not registered as io_uring fixed buffers: registering pins
//! and faults in all of it at start (a 4 GiB guest took 3-25 s to start
//! here and kept 4 GiB resident and pinned, counted against
//! `RLIMIT_MEMLOCK` without `CAP_IPC_LOCK`). Instead the guest declares
//! the ranges it does I/O from as DMA regions
//! ([`Hypercall::DmaDeclare`](dbos_abi::Hypercall::DmaDeclare), as NVMe
//! drivers and SPDK map only their DMA memory): each is validated against
//! guest RAM and the regions already declared, checked against the
//! pinning limit, and registered into a free fixed-buffer slot, until the
//! guest gives it back ([`Hypercall::DmaRelease`](dbos_abi::Hypercall::DmaRelease)).
//! An I/O whose buffer lies in a declared region uses `READ_FIXED`/
//! `WRITE_FIXED`; any other uses plain `READ`/`WRITE`, which pin its pages
//! only while it runs. Start-up cost does not grow with the guest, and
//! nothing the guest did not declare is pinned.
//!
//! The backing file is locked (`flock`, see `dbos_nvme::host::file`) for as
//! long as the disk lives: a second VM on the same file is refused.
//!
//! If the backing file is deleted while the VM runs, the poller notices at
//! the next flush or FUA write (its link count is 0) and fails that command
//! and every later write and flush, with an error on stderr: nothing
//! written to a file without a name is durable. An injected I/O error
//! ([`DiskConfig::io_error`]) fails one chosen command the same way a
//! failing disk would, without carrying it out.
//!
//! With a power cut armed ([`PowerCutPlan`]), the disk runs on the
//! power-cut model instead (`dbos_nvme::host::powercut`): the file is read
//! into memory at the start, I/O is carried out synchronously on the
//! poller's thread (slower than io_uring), and when the disk stops the file
//! receives the crash image (if the power was cut) or the final contents,
//! atomically: they are written to `PATH.dbos-writeback`, synced and
//! renamed over PATH (`PowerCut::store`), so a `dbos` killed meanwhile
//! leaves PATH as it was before the run. The next run on the disk removes
//! such a leftover temporary file, with a warning.
//! A cut at a moment ([`CutAt::After`]) is made by the VM
//! ([`Disk::cut_power`]); a cut at a write ([`CutAt::Write`]) by the model
//! itself, on the poller's thread, which then tells the VM
//! ([`Disk::on_power_cut`]).
//!
//! The guest registers each queue pair with a hypercall; after that, I/O
//! costs no exit to the VMM while the poller is polling. The only exit on the I/O
//! path is the real doorbell, which the guest rings when the poller has
//! announced (event indexes) that it is parking.

use crate::hypercall::{HypercallError, Outcome, Request};
use crate::memory::GuestRam;
use dbos_abi::net::QueueIdArgs;
use dbos_abi::{DmaRegionArgs, DmaStatsArgs, NvmeInfoArgs, NvmeQueueArgs};
use dbos_nvme::host::powercut::{
    remove_stale_writeback, CutReport, LoadError, OutOfMemory, PowerCut, PowerCutBackend,
    PowerCutStats, StoreError, WriteBackStep,
};
use dbos_nvme::host::{
    BackingFile, DeletionWatch, DmaMemory, DmaRegion, ErrorInjection, FailedCommand, FileError,
    InterruptSender, MemoryError, Poller, PollerConfig, PollerControl, PollerError, PollerHandle,
    PollerStats, UringBackend, UringConfig, UringError,
};
use dbos_nvme::{QueuePairConfig, BLOCK_SIZE};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A power cut to inject (`dbos run --power-cut-after DURATION` or
/// `--power-cut-at-write N`, with `--seed N`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PowerCutPlan {
    /// When.
    pub at: CutAt,
    /// Decides, for each write not yet durable, whether it is kept, lost
    /// or torn (see `dbos_nvme::host::powercut`).
    pub seed: u64,
}

/// When a power cut falls.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CutAt {
    /// This long after start, counted like the time limit (from the start
    /// of VM setup). Which writes are in flight then depends on timing.
    After(Duration),
    /// When write command number N of the run (counted from 1, FUA or
    /// not) reaches the disk, before it completes: that write is in flight,
    /// and is kept, lost or torn like every write not yet durable. The
    /// same guest, disk, N and seed give the same crash image.
    Write(u64),
}

impl CutAt {
    /// The `dbos run` option that asks for this cut.
    pub fn option(&self) -> &'static str {
        match self {
            CutAt::After(_) => "--power-cut-after",
            CutAt::Write(_) => "--power-cut-at-write",
        }
    }
}

impl std::fmt::Display for CutAt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CutAt::After(after) => write!(f, "{:.3} s", after.as_secs_f64()),
            CutAt::Write(n) => write!(f, "disk write {n}"),
        }
    }
}

/// Which file backs the disk, and its size when it is created.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiskConfig {
    pub path: PathBuf,
    /// Create the file with this many bytes if it does not exist. An
    /// existing file is used at its own size; if this is given and differs,
    /// the VM is refused (a disk is never grown or shrunk silently).
    pub create_bytes: Option<u64>,
    /// How long the poller keeps polling without work before it parks (and
    /// the guest must ring the exiting doorbell). The default, 200 us, is
    /// longer than a guest's gap between I/Os on VT-x/AMD-V hardware; where
    /// ring 0 is emulated (no VT-x), a guest needs milliseconds between
    /// I/Os, and only a longer spin keeps steady-state I/O free of exits.
    pub poll_spin: std::time::Duration,
    /// Experiment (`--disk-fixed-buffers`): register all of guest RAM with
    /// io_uring as fixed buffers, as the disk did before, which pins and
    /// faults it all in at start. Off by default; ignored on the power-cut
    /// model.
    pub fixed_buffers: bool,
    /// Run the disk on the power-cut model and cut the power as planned
    /// (at a moment: [`Disk::cut_power`], called by the VM; at a write: by
    /// the model, which tells the VM).
    pub power_cut: Option<PowerCutPlan>,
    /// Fail one disk command on purpose (`--io-error-at N
    /// --io-error-kind KIND`): the N-th of its kind, counted from 1 over
    /// the run and all queue pairs, completes with the error status a
    /// failing disk gives and is not carried out.
    pub io_error: Option<ErrorInjection>,
}

impl DiskConfig {
    /// A disk at `path` with the default polling.
    pub fn new(path: impl Into<PathBuf>, create_bytes: Option<u64>) -> Self {
        DiskConfig {
            path: path.into(),
            create_bytes,
            poll_spin: PollerConfig::default().spin,
            fixed_buffers: false,
            power_cut: None,
            io_error: None,
        }
    }
}

/// The disk could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    #[error("disk {source}")]
    File { path: PathBuf, source: FileError },
    #[error("disk {}: writing back the power-cut model's contents failed: {source}", .path.display())]
    Store {
        path: PathBuf,
        source: Box<StoreError>,
    },
    #[error(
        "disk {}: {option} runs the disk on an in-memory model of it, which needs about \
         {need} bytes for this {disk}-byte disk (its contents twice, and 8 bytes per \
         512-byte sector): {source}; use a smaller disk, or allow the process more memory \
         (ulimit -v)", .path.display()
    )]
    ModelMemory {
        path: PathBuf,
        /// The option that armed the power cut.
        option: &'static str,
        disk: u64,
        need: u64,
        source: OutOfMemory,
    },
    #[error("disk {} does not exist; give --disk-size to create it", .0.display())]
    Missing(PathBuf),
    #[error("disk {} has {actual} bytes, not the {requested} given with --disk-size; it is never resized", .path.display())]
    SizeMismatch {
        path: PathBuf,
        actual: u64,
        requested: u64,
    },
    #[error("registering guest memory for the disk: {0}")]
    Memory(#[from] MemoryError),
    #[error("setting up io_uring for the disk: {0}")]
    Uring(#[from] UringError),
    #[error("starting the disk poller: {0}")]
    Poller(#[from] PollerError),
    #[error("starting the disk poller: {0}")]
    Io(#[from] std::io::Error),
}

/// A running disk.
pub struct Disk {
    blocks: u64,
    control: PollerControl,
    poller: Mutex<Option<PollerHandle>>,
    /// The power-cut model and its plan, when one is armed.
    power: Option<(Arc<PowerCut>, PowerCutPlan)>,
    /// The error injection asked for, if any.
    io_error: Option<ErrorInjection>,
    /// The backing file, if this disk created it (removed again by
    /// [`Disk::discard`] when the VM's setup fails later).
    created: Option<PathBuf>,
    // Dropped last: holds the file's lock while the poller serves it. The
    // power-cut write-back replaces it with the new file it renamed over
    // the path (locked before the rename), so the lock never lapses.
    file: Mutex<BackingFile>,
}

/// What an injected I/O error did (`--io-error-at`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IoErrorReport {
    pub plan: ErrorInjection,
    /// Commands of the planned kind the run made.
    pub seen: u64,
    /// Read, write and flush commands the run made.
    pub commands: [u64; 3],
    /// The command failed, if the run made `plan.nth` of them.
    pub failed: Option<FailedCommand>,
}

impl std::fmt::Display for IoErrorReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use dbos_nvme::host::{IoKind, OpMatch};
        let kind = match self.plan.kind {
            OpMatch::Read => "read",
            OpMatch::Write => "write",
            OpMatch::Flush => "flush",
        };
        match self.failed {
            None => write!(
                f,
                "--io-error-at {} --io-error-kind {kind}: the run made {} {kind} command(s), \
                 fewer than {}; nothing was failed (in all: {} read, {} write and {} flush \
                 commands)",
                self.plan.nth,
                self.seen,
                self.plan.nth,
                self.commands[0],
                self.commands[1],
                self.commands[2]
            ),
            Some(c) => {
                write!(
                    f,
                    "injected I/O error: {kind} command {} of the run ",
                    self.plan.nth
                )?;
                match c.kind {
                    IoKind::Flush => write!(f, "(a flush)")?,
                    IoKind::Read => write!(f, "(read of {} block(s) at LBA {})", c.blocks, c.slba)?,
                    IoKind::Write { fua } => write!(
                        f,
                        "({}write of {} block(s) at LBA {})",
                        if fua { "FUA " } else { "" },
                        c.blocks,
                        c.slba
                    )?,
                }
                write!(
                    f,
                    ", queue pair {} command id {}, failed with \"{}\" and not carried out",
                    c.queue, c.cid, c.error
                )
            }
        }
    }
}

impl Disk {
    /// Opens (or creates) the backing file and starts the poller over `ram`,
    /// sending completion interrupts with `interrupts` (to guest CPUs that
    /// wait for them; queue pairs asking for interrupts are refused
    /// without). A file it created is removed again if a later step fails.
    pub fn start(
        config: &DiskConfig,
        ram: &Arc<GuestRam>,
        interrupts: Option<InterruptSender>,
    ) -> Result<Disk, DiskError> {
        let created = !config.path.exists();
        let disk = Disk::start_inner(config, ram, interrupts);
        match disk {
            Ok(mut disk) => {
                disk.created = created.then(|| config.path.clone());
                Ok(disk)
            }
            // Only a file this call created: `create` opens with O_EXCL, so
            // EEXIST means another process made it first, and it stays.
            Err(e) if created && config.path.exists() && !is_eexist(&e) => {
                remove_created(&config.path);
                Err(e)
            }
            Err(e) => Err(e),
        }
    }

    /// Stops the disk and removes its backing file if this disk created it:
    /// for a VM whose setup failed after the disk was started.
    pub fn discard(self) {
        let created = self.created.clone();
        drop(self);
        if let Some(path) = created {
            remove_created(&path);
        }
    }

    fn start_inner(
        config: &DiskConfig,
        ram: &Arc<GuestRam>,
        interrupts: Option<InterruptSender>,
    ) -> Result<Disk, DiskError> {
        let file_err = |source| DiskError::File {
            path: config.path.clone(),
            source,
        };
        let file = if config.path.exists() {
            let file = BackingFile::open(&config.path).map_err(file_err)?;
            // We hold the disk's lock, so no write-back into it is under way:
            // a temporary file of one is what a killed run left.
            match remove_stale_writeback(&file) {
                Ok(Some(stale)) => log::warn!(
                    "removed {}: a dbos run killed while writing the disk back left it \
                     (the disk was left as it was before that run)",
                    stale.display()
                ),
                Ok(None) => {}
                Err(e) => log::warn!(
                    "disk {}: cannot check for a write-back file left by a killed run: {e}",
                    config.path.display()
                ),
            }
            if let Some(requested) = config.create_bytes {
                let actual = file.blocks() * BLOCK_SIZE;
                if actual != requested {
                    return Err(DiskError::SizeMismatch {
                        path: config.path.clone(),
                        actual,
                        requested,
                    });
                }
            }
            file
        } else {
            let bytes = config
                .create_bytes
                .ok_or_else(|| DiskError::Missing(config.path.clone()))?;
            BackingFile::create(&config.path, bytes).map_err(file_err)?
        };
        let regions: Vec<DmaRegion> = ram
            .host_regions()
            .iter()
            .map(|r| DmaRegion {
                addr: r.guest_addr,
                host: r.host_addr as *mut u8,
                len: r.size,
            })
            .collect();
        // SAFETY: the regions are guest RAM, mapped read-write for as long as
        // the `GuestRam` lives, which the memory's owner handle keeps alive;
        // the guest writing them concurrently is what the poller expects.
        let memory = unsafe { DmaMemory::new(&regions) }?;
        let memory = Arc::new(memory.with_owner(ram.clone()));
        let blocks = file.blocks();
        let poller_config = PollerConfig {
            spin: config.poll_spin,
            ..PollerConfig::default()
        };
        let (poller, power) = match config.power_cut {
            None => {
                let uring = UringConfig {
                    fixed_buffers: config.fixed_buffers,
                    ..UringConfig::default()
                };
                let backend = UringBackend::new(&file, &memory, uring)?;
                let mut poller = Poller::new(memory, backend, poller_config)?;
                set_gates(&mut poller, &file, config, interrupts)?;
                (poller.spawn()?, None)
            }
            Some(plan) => {
                let (backend, model) = PowerCutBackend::load(&file).map_err(|e| match e {
                    LoadError::File(source) => file_err(source),
                    LoadError::OutOfMemory { disk, need, source } => DiskError::ModelMemory {
                        path: config.path.clone(),
                        option: plan.at.option(),
                        disk,
                        need,
                        source,
                    },
                })?;
                if let CutAt::Write(n) = plan.at {
                    model.cut_at_write(n, plan.seed);
                }
                let mut poller = Poller::new(memory, backend, poller_config)?;
                set_gates(&mut poller, &file, config, interrupts)?;
                (poller.spawn()?, Some((model, plan)))
            }
        };
        log::debug!("disk {} started: {blocks} blocks", config.path.display());
        Ok(Disk {
            blocks,
            control: poller.control(),
            poller: Mutex::new(Some(poller)),
            power,
            io_error: config.io_error,
            created: None,
            file: Mutex::new(file),
        })
    }

    /// What the injected I/O error did, if one was asked for.
    pub fn io_error_report(&self) -> Option<IoErrorReport> {
        let plan = self.io_error?;
        let stats = self.control.stats();
        let seen = match plan.kind {
            dbos_nvme::host::OpMatch::Read => stats.read_commands,
            dbos_nvme::host::OpMatch::Write => stats.write_commands,
            dbos_nvme::host::OpMatch::Flush => stats.flush_commands,
        };
        Some(IoErrorReport {
            plan,
            seen,
            commands: [
                stats.read_commands,
                stats.write_commands,
                stats.flush_commands,
            ],
            failed: self.control.injected_failure(),
        })
    }

    /// The power cut armed on this disk, if any.
    pub fn power_cut_plan(&self) -> Option<PowerCutPlan> {
        self.power.as_ref().map(|(_, plan)| *plan)
    }

    /// Cuts the power now (with the plan's seed), if a power cut is armed:
    /// from here on every I/O fails, and the disk file will receive the
    /// crash image when the disk stops. What happened to the writes not yet
    /// durable is returned.
    pub fn cut_power(&self) -> Option<CutReport> {
        self.power
            .as_ref()
            .map(|(model, plan)| model.cut(plan.seed))
    }

    /// Calls `f` on the poller's thread when the disk cuts its own power
    /// ([`CutAt::Write`]), before the write at the cut or any later I/O is
    /// reported to the guest. No lock of the disk is held while `f` runs.
    pub fn on_power_cut(&self, f: impl FnMut(CutReport) + Send + 'static) {
        if let Some((model, _)) = &self.power {
            model.on_cut(f);
        }
    }

    /// Settles the power cut when the VM stops: a cut that has not
    /// happened is called off (the disk then finishes normally), one that
    /// has is returned.
    pub fn settle_power_cut(&self) -> Option<(PowerCutPlan, CutReport)> {
        let (model, plan) = self.power.as_ref()?;
        Some((*plan, model.disarm()?))
    }

    /// The power-cut model's counters (operations, write commands, ...),
    /// when the disk runs on it.
    pub fn power_cut_stats(&self) -> Option<PowerCutStats> {
        self.power.as_ref().map(|(model, _)| model.stats())
    }

    /// Capacity in blocks of [`BLOCK_SIZE`] bytes.
    pub fn blocks(&self) -> u64 {
        self.blocks
    }

    /// Registers a queue pair the guest built.
    pub fn add_queue(&self, config: QueuePairConfig) -> Result<u16, PollerError> {
        self.control.add_queue(config).map(|id| id.0)
    }

    /// Stops serving a queue pair; returns once its outstanding commands
    /// have completed and the poller no longer touches its memory.
    pub fn remove_queue(&self, id: u16) -> Result<(), PollerError> {
        self.control.remove_queue(dbos_nvme::QueueId(id))
    }

    /// Declares a DMA region of guest RAM (`[addr, addr + len)`),
    /// registered with io_uring as a fixed buffer; see
    /// `dbos_nvme::host::fixed` for what is checked.
    pub fn declare_region(&self, addr: u64, len: u64) -> Result<(), PollerError> {
        self.control.declare_region(addr, len)
    }

    /// Gives back the DMA region declared at exactly `[addr, addr + len)`.
    pub fn release_region(&self, addr: u64, len: u64) -> Result<(), PollerError> {
        self.control.release_region(addr, len)
    }

    /// The real doorbell: wakes the poller if it is parked.
    pub fn ring(&self) {
        self.control.wake_fd().wake();
    }

    /// The poller's counters so far.
    pub fn stats(&self) -> PollerStats {
        self.control.stats()
    }

    /// CPU time the poller thread has used so far (its own thread CPU
    /// clock); `None` once it has stopped or if the clock cannot be read.
    pub fn poller_cpu_time(&self) -> Option<Duration> {
        let poller = self.poller.lock().unwrap_or_else(|p| p.into_inner());
        match poller.as_ref().map(PollerHandle::cpu_time) {
            Some(Ok(t)) => Some(t),
            Some(Err(e)) => {
                log::warn!("reading the disk poller's CPU clock: {e}");
                None
            }
            None => None,
        }
    }

    /// Stops the poller (waiting for it) and returns its counters; on the
    /// power-cut model, then writes the disk's contents (the crash image
    /// after a cut) to the file. `None` if it was stopped already.
    pub fn stop(&self) -> Result<Option<PollerStats>, DiskError> {
        let handle = self.poller.lock().unwrap_or_else(|p| p.into_inner()).take();
        let Some(handle) = handle else {
            return Ok(None);
        };
        let stats = handle.stop();
        // A model that received no write and no cut holds what the file
        // holds (a setup that failed after the disk started, a guest that
        // only read): nothing to write back.
        let untouched = |model: &PowerCut| model.stats().write_commands == 0 && !model.is_cut();
        if let Some((model, _)) = self.power.as_ref().filter(|(m, _)| !untouched(m)) {
            let mut file = self.file.lock().unwrap_or_else(|p| p.into_inner());
            let stored = model
                .store_with(&file, &mut writeback_test_hook())
                .map_err(|source| DiskError::Store {
                    path: file.path().to_path_buf(),
                    source: Box::new(source),
                })?;
            // The new file, locked, replaces the old (unlocked as it goes).
            *file = stored.file;
        }
        Ok(Some(stats))
    }
}

impl Drop for Disk {
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            log::error!("{e}");
        }
    }
}

/// The environment variable of the write-back's test hook (a test hook,
/// not a user option): `DBOS_TEST_KILL_WRITEBACK_AT_CHUNK=N` makes the
/// process kill itself with SIGKILL, as `kill -9` would, when the power-cut
/// model's write-back reaches chunk N (from 1; chunks 1 to N-1 are written
/// to the temporary file). N one past the last chunk kills it after every
/// chunk is written, before the temporary file is synced and renamed.
pub const KILL_WRITEBACK_ENV: &str = "DBOS_TEST_KILL_WRITEBACK_AT_CHUNK";

/// The write-back hook [`KILL_WRITEBACK_ENV`] asks for (or one that does
/// nothing).
fn writeback_test_hook() -> impl FnMut(WriteBackStep) {
    let at: Option<u64> = std::env::var(KILL_WRITEBACK_ENV).ok().and_then(|v| {
        let n = v.parse().ok();
        if n.is_none() {
            log::warn!("{KILL_WRITEBACK_ENV}={v:?} is not a number; ignored");
        }
        n
    });
    let mut chunks = 0;
    move |step| {
        let reached = match step {
            WriteBackStep::Chunk { n, of } => {
                chunks = of;
                n
            }
            WriteBackStep::Rename => chunks + 1,
        };
        if at == Some(reached) {
            kill_self();
        }
    }
}

/// Ends this process with SIGKILL, as `kill -9` would: no destructor, no
/// clean-up (the write-back's test hook).
fn kill_self() -> ! {
    // SAFETY: kill(2) of our own process id; it touches no memory. SIGKILL
    // cannot be caught or blocked, so it ends the process.
    unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
    std::process::abort()
}

/// Sets the poller's gates: the deletion watch on the backing file, and
/// the error injection asked for; and how it sends completion interrupts.
fn set_gates<B: dbos_nvme::host::Backend>(
    poller: &mut Poller<B>,
    file: &BackingFile,
    config: &DiskConfig,
    interrupts: Option<InterruptSender>,
) -> Result<(), DiskError> {
    if let Some(send) = interrupts {
        poller.send_interrupts(send);
    }
    poller.watch_for_deletion(DeletionWatch::new(
        file,
        format!("disk {}", config.path.display()),
        "while the VM ran",
    )?);
    if let Some(injection) = config.io_error {
        poller.inject_error(injection);
    }
    Ok(())
}

fn is_eexist(e: &DiskError) -> bool {
    matches!(
        e,
        DiskError::File {
            source: FileError::Io { source, .. },
            ..
        } if source.raw_os_error() == Some(libc::EEXIST)
    )
}

/// Removes a backing file this process created, after a failed setup.
fn remove_created(path: &std::path::Path) {
    if let Err(e) = std::fs::remove_file(path) {
        log::warn!(
            "could not remove {} after a failed setup: {e}",
            path.display()
        );
    }
}

/// The disk's hypercalls: describe the disk, register a queue pair (the
/// registration is the shared [`QueuePairConfig`] layout, validated by the
/// poller), and the exiting doorbell. A VM without a disk answers with 0
/// blocks and `-ENODEV`.
pub struct DiskService<'a> {
    pub disk: Option<&'a Disk>,
}

impl DiskService<'_> {
    /// [`Hypercall::NvmeInfo`](dbos_abi::Hypercall::NvmeInfo): the disk's size (0 blocks without one).
    pub fn info(
        &self,
        req: &Request<'_>,
        mut args: NvmeInfoArgs,
    ) -> Result<Outcome, HypercallError> {
        args.blocks = self.disk.map_or(0, Disk::blocks);
        args.block_size = BLOCK_SIZE;
        req.write_back(&args)
    }

    /// [`Hypercall::NvmeCreateQueue`](dbos_abi::Hypercall::NvmeCreateQueue): registers a queue pair.
    pub fn create_queue(
        &self,
        req: &Request<'_>,
        mut args: NvmeQueueArgs,
    ) -> Result<Outcome, HypercallError> {
        args.status = match self.disk {
            None => -i64::from(libc::ENODEV),
            Some(disk) => match disk.add_queue(args.queue) {
                Ok(id) => i64::from(id),
                Err(e) => {
                    log::warn!("vCPU {}: queue pair refused: {e}", req.vcpu);
                    -i64::from(libc::EINVAL)
                }
            },
        };
        req.write_back(&args)
    }

    /// [`Hypercall::NvmeDestroyQueue`](dbos_abi::Hypercall::NvmeDestroyQueue):
    /// gives a queue pair back. Returns once its outstanding commands have
    /// completed and the poller no longer touches its memory.
    pub fn destroy_queue(
        &self,
        req: &Request<'_>,
        mut args: QueueIdArgs,
    ) -> Result<Outcome, HypercallError> {
        args.status = match self.disk {
            None => -i64::from(libc::ENODEV),
            Some(disk) => match u16::try_from(args.queue) {
                Err(_) => -i64::from(libc::ENOENT),
                Ok(id) => match disk.remove_queue(id) {
                    Ok(()) => 0,
                    Err(PollerError::NoSuchQueue(_)) => -i64::from(libc::ENOENT),
                    Err(e) => {
                        log::warn!("vCPU {}: queue pair {id} not given back: {e}", req.vcpu);
                        -i64::from(libc::EIO)
                    }
                },
            },
        };
        req.write_back(&args)
    }

    /// [`Hypercall::DmaDeclare`](dbos_abi::Hypercall::DmaDeclare): declares
    /// a DMA region. A refusal is the guest's status and a warning on
    /// stderr (which names the pinning limit when that is the reason),
    /// never a stop: I/O from the range is still served, with plain
    /// buffers.
    pub fn declare_region(
        &self,
        req: &Request<'_>,
        mut args: DmaRegionArgs,
    ) -> Result<Outcome, HypercallError> {
        let (addr, len) = (args.region.addr.0, args.region.len);
        args.status = self.region_status(req, "declared", |d| d.declare_region(addr, len));
        req.write_back(&args)
    }

    /// [`Hypercall::DmaRelease`](dbos_abi::Hypercall::DmaRelease): gives
    /// a DMA region back.
    pub fn release_region(
        &self,
        req: &Request<'_>,
        mut args: DmaRegionArgs,
    ) -> Result<Outcome, HypercallError> {
        let (addr, len) = (args.region.addr.0, args.region.len);
        args.status = self.region_status(req, "released", |d| d.release_region(addr, len));
        req.write_back(&args)
    }

    fn region_status(
        &self,
        req: &Request<'_>,
        what: &str,
        f: impl FnOnce(&Disk) -> Result<(), PollerError>,
    ) -> i64 {
        let Some(disk) = self.disk else {
            return -i64::from(libc::ENODEV);
        };
        match f(disk) {
            Ok(()) => 0,
            Err(PollerError::Region(e)) => {
                if e.errno() == libc::EOPNOTSUPP {
                    log::debug!("vCPU {}: {e}", req.vcpu);
                } else {
                    log::warn!("vCPU {}: DMA region not {what}: {e}", req.vcpu);
                }
                -i64::from(e.errno())
            }
            Err(e) => {
                log::warn!("vCPU {}: DMA region not {what}: {e}", req.vcpu);
                -i64::from(libc::EIO)
            }
        }
    }

    /// [`Hypercall::DmaStats`](dbos_abi::Hypercall::DmaStats): the disk's
    /// fixed and plain I/O counts and the regions declared now.
    pub fn dma_stats(
        &self,
        req: &Request<'_>,
        _args: DmaStatsArgs,
    ) -> Result<Outcome, HypercallError> {
        let args = self.disk.map_or(DmaStatsArgs::default(), |d| {
            let s = d.stats();
            DmaStatsArgs {
                fixed_ios: s.fixed_ios,
                plain_ios: s.plain_ios,
                regions: s.dma_regions,
                bytes: s.dma_bytes,
            }
        });
        req.write_back(&args)
    }

    /// [`Hypercall::NvmeDoorbell`](dbos_abi::Hypercall::NvmeDoorbell): wakes the parked poller (its block is
    /// empty and never read).
    pub fn doorbell(&self) -> Outcome {
        if let Some(disk) = self.disk {
            disk.ring();
        }
        Outcome::Continue
    }
}
