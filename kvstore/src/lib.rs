//! The dbos key-value database.
//!
//! - [`store`]: the durable store: a B+tree on the engine's pages, every
//!   change logged as a mini-transaction, writes acknowledged once
//!   durable, group commit across writers.
//! - [`workload`]: the in-process workload driver (YCSB's core workloads
//!   A-F) and its report, over any [`Kv`].
//! - [`server`]: the Redis-protocol server's commands, sans-I/O, over a
//!   [`server::KvEngine`]: the B+tree engine (`server::btree`) or the
//!   in-memory engine persisted by snapshots ([`memory`]).
//! - [`resp`]: the RESP2 protocol (requests parsed, replies encoded).
//! - Process mode only: `net` (the server's sockets and event loops),
//!   `backup` (the B+tree engine's online backup) and `loadgen` (`dbos-kv
//!   bench`, a YCSB load generator over RESP that drives this server and
//!   Redis alike).
//!
//! The crate is `no_std` + `alloc`: the same code runs as the guest image
//! `kvstore` and as the Linux binary `dbos-kv` (process mode).
#![no_std]

extern crate alloc;
#[cfg(not(target_os = "none"))]
extern crate std;

#[cfg(not(target_os = "none"))]
pub mod backup;
#[cfg(not(target_os = "none"))]
pub mod loadgen;
pub mod memory;
#[cfg(not(target_os = "none"))]
pub mod net;
pub mod resp;
pub mod server;
pub mod store;
pub mod workload;

pub use store::{Error, Store, StoreStats, FORMAT_VERSION};

use alloc::vec::Vec;
use core::fmt;

/// One write of a multi-key transaction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op<'a> {
    /// Sets `key` to `value` (inserting or replacing).
    Put { key: &'a [u8], value: &'a [u8] },
    /// Removes `key` (nothing if absent).
    Delete { key: &'a [u8] },
}

/// A key-value store as the workload driver (and later the server) sees
/// it. Every write returns only once it is durable.
pub trait Kv: Sync {
    type Error: fmt::Display + fmt::Debug;
    /// Copies the value of `key` into `out`; false if absent.
    fn get(&self, key: &[u8], out: &mut Vec<u8>) -> Result<bool, Self::Error>;
    /// Sets `key` to `value`, durably; true if the key was new.
    fn put(&self, key: &[u8], value: &[u8]) -> Result<bool, Self::Error>;
    /// Removes `key`, durably; false if it was absent.
    fn delete(&self, key: &[u8]) -> Result<bool, Self::Error>;
    /// Applies `ops` atomically and durably: after a crash either all of
    /// them are there or none.
    fn transaction(&self, ops: &[Op<'_>]) -> Result<(), Self::Error>;
    /// Calls `f(key, value)` for up to `limit` entries with keys `>=
    /// start`, in ascending order; returns how many it delivered.
    fn scan(
        &self,
        start: &[u8],
        limit: usize,
        f: &mut dyn FnMut(&[u8], &[u8]),
    ) -> Result<usize, Self::Error>;
}
