//! The host side: the poller that serves queue pairs from shared memory
//! and issues their I/O on an `O_DIRECT` file (not built for the guest).
//!
//! Setting up, in the VMM:
//!
//! 1. Describe guest RAM as [`DmaRegion`]s (guest-physical address, host
//!    mapping, length) and build an `Arc<`[`DmaMemory`]`>`.
//! 2. Open the [`BackingFile`] (which locks it) and build a
//!    [`UringBackend`] over it and the memory (the VMM turns
//!    [`UringConfig::fixed_buffers`] off: registering all guest RAM would
//!    pin it at start; the guest declares the DMA regions it does I/O from
//!    instead, [`PollerControl::declare_region`], see [`fixed`]).
//! 3. [`Poller::new`] and [`Poller::spawn`] give a [`PollerHandle`].
//! 4. For each queue pair the guest announces, [`PollerControl::add_queue`]
//!    with its [`crate::QueuePairConfig`]; on the guest's doorbell exit,
//!    [`WakeFd::wake`] on [`PollerControl::wake_fd`].
//!
//! In process mode, [`process::Device`] does all of this over a
//! [`ProcessMemory`] region; [`inline::InlineDevice`] gives queue pairs
//! whose host runs in the thread that uses them (no poller thread).
//!
//! `powercut` (an in-memory disk that models a power cut; crash injection
//! for `dbos run --power-cut-after` and for crash tests) is compiled with
//! the crate's `powercut` feature. `testing` (records operations, fails
//! chosen ones) is test code, compiled with the `test-backends` feature,
//! which implies `powercut` (enable it from a dev-dependency,
//! `dbos-nvme = { path = "...", features = ["test-backends"] }`). Both are
//! off by default.

pub mod backend;
mod command;
pub mod file;
pub mod fixed;
#[cfg(feature = "fuzzing")]
pub mod fuzzing;
pub mod inline;
pub mod memory;
pub mod poller;
#[cfg(feature = "powercut")]
pub mod powercut;
pub mod process;
pub mod sync;
#[cfg(feature = "test-backends")]
pub mod testing;
pub mod uring;
pub mod wake;

pub use backend::{simulated_failure, split_result, Backend, IoKind, IoOp, OpMatch, Simulated};
pub use file::{link_count, BackingFile, FileError, LockHolder};
pub use fixed::{PinLimit, RegionError, MAX_DMA_REGION, MAX_DMA_REGIONS};
pub use inline::{InlineDevice, InlineDoorbell, InlineQueuePair};
pub use memory::{DmaBuf, DmaMemory, DmaRegion, HostBuf, MemoryError, ProcessMemory};
pub use poller::{
    DeletionWatch, ErrorInjection, FailedCommand, InterruptSender, Poller, PollerConfig,
    PollerControl, PollerError, PollerHandle, PollerStats,
};
pub use process::{Device, DeviceError, ProcessQueuePair};
pub use sync::SyncBackend;
pub use uring::{UringBackend, UringConfig, UringError};
pub use wake::{CompletionWaker, EventFdDoorbell, SpinBudget, WakeFd};
