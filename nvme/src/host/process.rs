//! Process mode in one piece: a [`ProcessMemory`] region registered with a
//! backend, a poller thread serving it, and driver queue pairs (one per
//! thread) carved from the region, with eventfd doorbells.

use super::backend::Backend;
use super::file::BackingFile;
use super::memory::{DmaBuf, DmaMemory, MemoryError, ProcessMemory};
use super::poller::{
    DeletionWatch, Poller, PollerConfig, PollerControl, PollerError, PollerHandle,
};
use super::uring::{UringBackend, UringConfig, UringError};
use super::wake::{CompletionWaker, EventFdDoorbell, SpinBudget};
use crate::driver::{DriverError, QueueMemory, QueuePair};
use crate::queue::QueueLayout;
use crate::types::QueueId;
use std::io;
use std::string::ToString;
use std::sync::Arc;

/// Setting up process mode failed.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    #[error(transparent)]
    Memory(#[from] MemoryError),
    #[error(transparent)]
    Io(#[from] io::Error),
    #[error(transparent)]
    Uring(#[from] UringError),
    #[error(transparent)]
    Poller(#[from] PollerError),
    #[error(transparent)]
    Driver(#[from] DriverError),
    #[error("the registered region has no room for {0} more bytes")]
    OutOfMemory(usize),
}

/// A process-mode device: a poller thread over a registered region.
pub struct Device {
    // Dropped first: stops the poller and waits for its I/O.
    handle: PollerHandle,
    memory: Arc<ProcessMemory>,
    blocks: u64,
    /// The longest a queue pair's waiter spins ([`WAIT_SPIN_MAX`], or
    /// [`WAIT_SPIN`] without `PollerConfig::adaptive_spin`).
    wait_spin_max: std::time::Duration,
}

impl Device {
    /// A device on `file` with a registered region of `region_bytes`,
    /// served through io_uring. If `file` is deleted while the device runs,
    /// its next flush or FUA write and every later write fail
    /// ([`Poller::watch_for_deletion`]).
    pub fn open(
        file: &BackingFile,
        region_bytes: usize,
        poller: PollerConfig,
        uring: UringConfig,
    ) -> Result<Device, DeviceError> {
        let watch = DeletionWatch::new(file, file.path().display().to_string(), "while in use")?;
        Device::build(
            region_bytes,
            poller,
            |dma| Ok(UringBackend::new(file, dma, uring)?),
            Some(watch),
        )
    }

    /// A device whose backend `make` builds over the registered memory.
    pub fn with_backend<B: Backend + 'static>(
        region_bytes: usize,
        poller: PollerConfig,
        make: impl FnOnce(&Arc<DmaMemory>) -> Result<B, DeviceError>,
    ) -> Result<Device, DeviceError> {
        Device::build(region_bytes, poller, make, None)
    }

    fn build<B: Backend + 'static>(
        region_bytes: usize,
        poller: PollerConfig,
        make: impl FnOnce(&Arc<DmaMemory>) -> Result<B, DeviceError>,
        watch: Option<DeletionWatch>,
    ) -> Result<Device, DeviceError> {
        let memory = Arc::new(ProcessMemory::new(region_bytes)?);
        let dma = Arc::new(DmaMemory::from_process(memory.clone())?);
        let backend = make(&dma)?;
        let blocks = backend.capacity_blocks();
        let wait_spin_max = if poller.adaptive_spin {
            WAIT_SPIN_MAX
        } else {
            WAIT_SPIN
        };
        let mut poller = Poller::new(dma, backend, poller)?;
        if let Some(watch) = watch {
            poller.watch_for_deletion(watch);
        }
        let handle = poller.spawn()?;
        Ok(Device {
            handle,
            memory,
            blocks,
            wait_spin_max,
        })
    }

    /// Namespace capacity in blocks.
    pub fn blocks(&self) -> u64 {
        self.blocks
    }

    /// The registered region.
    pub fn memory(&self) -> &Arc<ProcessMemory> {
        &self.memory
    }

    /// Carves a 4 KiB aligned buffer of `len` bytes from the region.
    pub fn alloc(&self, len: usize) -> Result<DmaBuf, DeviceError> {
        self.memory.alloc(len).ok_or(DeviceError::OutOfMemory(len))
    }

    /// The poller.
    pub fn poller(&self) -> &PollerHandle {
        &self.handle
    }

    /// A new queue pair with `depth` entries per ring, served by the poller.
    pub fn queue_pair(&self, depth: u16) -> Result<ProcessQueuePair, DeviceError> {
        let layout = QueueLayout::new(depth).ok_or(DriverError::Depth(depth))?;
        let mem = self.alloc(layout.size() as usize)?;
        // SAFETY: the block was just carved from the region (never handed
        // out again), is 4 KiB aligned and layout.size() long, and its device
        // address is its host address; the Arc keeps the region mapped.
        let qp = unsafe {
            QueuePair::new(
                QueueMemory {
                    virt: mem.ptr,
                    dma: mem.addr,
                },
                depth,
                self.handle.doorbell(),
            )?
        };
        let waker = Arc::new(CompletionWaker::new()?);
        let id = self
            .handle
            .control()
            .add_queue_woken(qp.config(), waker.clone())?;
        Ok(ProcessQueuePair {
            qp,
            id,
            control: self.handle.control(),
            waker,
            spin: SpinBudget::new(WAIT_SPIN, self.wait_spin_max),
            _memory: self.memory.clone(),
        })
    }

    /// Stops the poller (finishing its I/O) and returns its counters.
    pub fn shutdown(self) -> super::PollerStats {
        self.handle.stop()
    }
}

/// A driver queue pair in process mode; removed from the poller on drop.
pub struct ProcessQueuePair {
    qp: QueuePair<EventFdDoorbell>,
    id: QueueId,
    control: PollerControl,
    /// Signalled by the poller after each completion it posts here.
    waker: Arc<CompletionWaker>,
    /// How long to poll before sleeping, adapted to the waits.
    spin: SpinBudget,
    _memory: Arc<ProcessMemory>,
}

/// How long a waiting driver thread polls its completion ring before it
/// sleeps until the poller wakes it, at least: a fast device's latency, so
/// a completion that is about to arrive costs no sleep, and a slow one (or
/// a poller that does not get a CPU because other work has them) costs
/// little CPU spent spinning against the thread it waits for.
pub const WAIT_SPIN: std::time::Duration = std::time::Duration::from_micros(20);

/// The longest a waiter spins, once its waits have shown that completions
/// arrive within that (a [`SpinBudget`] between [`WAIT_SPIN`] and this).
pub const WAIT_SPIN_MAX: std::time::Duration = std::time::Duration::from_micros(200);

impl ProcessQueuePair {
    /// The id the poller gave this queue pair.
    pub fn id(&self) -> QueueId {
        self.id
    }

    /// Waits until a completion is in the ring (returns at once if one
    /// is, or if nothing is outstanding): polls for its spin budget
    /// (between [`WAIT_SPIN`] and [`WAIT_SPIN_MAX`], see [`SpinBudget`]), then
    /// sleeps until the poller posts one. Returns whether it slept.
    pub fn wait_for_completion(&self) -> bool {
        if self.qp.in_flight() == 0 {
            return false;
        }
        let start = std::time::Instant::now();
        let budget = self.spin.get();
        while start.elapsed() < budget {
            if self.qp.has_completion() {
                self.spin.record(start.elapsed());
                return false;
            }
            std::hint::spin_loop();
        }
        let slept = self.waker.sleep_unless(|| self.qp.has_completion());
        self.spin.record(start.elapsed());
        slept
    }
}

impl std::ops::Deref for ProcessQueuePair {
    type Target = QueuePair<EventFdDoorbell>;
    fn deref(&self) -> &Self::Target {
        &self.qp
    }
}

impl std::ops::DerefMut for ProcessQueuePair {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.qp
    }
}

impl Drop for ProcessQueuePair {
    fn drop(&mut self) {
        match self.control.remove_queue(self.id) {
            Ok(()) | Err(PollerError::Stopped) => {}
            Err(e) => log::error!("nvme: removing queue pair {}: {e}", self.id.0),
        }
    }
}
