//! NVMe-style queue pairs for dbos.
//!
//! A database talks to storage through NVMe submission and completion queues
//! that live in memory it shares with a host-side poller: in the guest, guest
//! RAM shared with the VMM; in process mode, a memory region of the process
//! shared with a poller thread. The layouts are NVMe's (64-byte submission
//! entries, 16-byte completion entries with a phase bit, shadow doorbells with
//! event indexes), so the host sees new submissions without a VM exit and the
//! driver rings a real doorbell only when the host has said it is going idle.
//!
//! The crate has three layers:
//!
//! - [`queue`], [`status`] and [`types`]: the shared format, `no_std`,
//!   compiled by the guest and the host alike.
//! - [`driver`]: the submitting side ([`driver::QueuePair`]), `no_std` with
//!   `alloc`, used by the guest on guest RAM and by a process on its own
//!   memory.
//! - `host` (not built for `target_os = "none"`): the poller thread that
//!   validates every entry against the registered memory and the namespace
//!   and issues the I/O with io_uring on an `O_DIRECT` file.
//!
//! # Block size and namespace
//!
//! Logical blocks are 4 KiB ([`types::BLOCK_SIZE`]), there is one namespace
//! (NSID 1, [`types::NSID`]), and one command moves at most
//! [`types::MAX_TRANSFER_BLOCKS`] blocks. Data buffers are 4 KiB aligned in
//! both the device address space and host memory.
#![no_std]
#![deny(unsafe_op_in_unsafe_fn)]

extern crate alloc;
#[cfg(not(target_os = "none"))]
extern crate std;

pub mod driver;
pub mod queue;
pub mod status;
pub mod types;

#[cfg(not(target_os = "none"))]
pub mod host;

pub use driver::{Command, Completion, DataPtr, Doorbell, DriverError, QueueMemory, QueuePair};
pub use queue::{Cqe, Opcode, QueueLayout, QueuePairConfig, Sqe};
pub use status::{NvmeError, Status, StatusFlags};
pub use types::{
    CommandId, DmaAddr, Lba, QueueId, BLOCK_SIZE, MAX_DEPTH, MAX_TRANSFER_BLOCKS, NSID,
};
