//! Buffer management for dbos: page and log identifiers, the write-ahead
//! log with group commit, the data page format, buffer pools, the storage
//! engine on them (transactions, checkpoints, crash recovery), a B+tree.
//!
//! It is `no_std` with `alloc`, generic over the storage ([`BlockDevice`])
//! and the platform's waiting and clock ([`Env`]), so the same code runs in
//! the guest (vCPUs spinning on a guest NVMe queue pair) and in a process
//! (threads on a `dbos_nvme::host` queue pair; see `host`).
//!
//! - [`device`]: the storage trait and its NVMe queue-pair implementation.
//! - [`record`]: log record framing (length, LSN, CRC32C).
//! - [`log`]: the log format, group commit ([`Wal`]) and the log reader.
//! - [`page`]: the page header (page LSN, checksum).
//! - [`control`]: the control block (layout, epoch, last checkpoint).
//! - [`store`]: the engine's own I/O (control block, format, page check).
//! - [`engine`]: transactions on a buffer pool, full-page images,
//!   checkpoints, failure.
//! - [`recovery`]: crash recovery, [`Engine::open`].
//! - [`kv`]: a tiny key-value table on pages (the crash tests' data).
//! - [`pool`]: the buffer-manager interface, versioned latches, and the
//!   vmcache-style and hash-table pools (the hash pool also in the guest;
//!   `docs/pools.md`).
//! - [`btree`]: a B+tree on any buffer manager, logged or not.
//! - [`mtr`]: mini-transactions: how the engine logs a tree's changes.
//!
//! Design notes and measured figures: `docs/wal.md`.
#![no_std]
#![deny(unsafe_op_in_unsafe_fn)]

extern crate alloc;
#[cfg(not(target_os = "none"))]
extern crate std;

pub mod btree;
pub mod checksum;
pub mod control;
pub mod device;
pub mod engine;
#[cfg(feature = "fuzzing")]
pub mod fuzzing;
pub mod growth;
pub mod kv;
pub mod log;
pub mod lsntable;
pub mod mtr;
pub mod page;
pub mod pool;
pub mod record;
pub mod recovery;
pub mod store;
pub mod sync;

#[cfg(not(target_os = "none"))]
pub mod direct;
#[cfg(target_os = "none")]
pub mod guest;
#[cfg(not(target_os = "none"))]
pub mod host;
#[cfg(any(feature = "fuzzing", not(target_os = "none")))]
mod immediate;

pub use control::Layout;
pub use device::{
    BlockDevice, DeviceError, DmaAllocator, Io, IoBuf, IoKind, NvmeDevice, QueueAccess,
};
pub use engine::{
    CheckpointHold, CheckpointReport, Config, Engine, EngineStats, Error, PageWrite, PoolSetup,
    RecordProblem,
};
pub use kv::KvTable;
pub use log::TruncateRequest;
pub use log::{CommitMode, Damage, LogDamage, LogStats, ScanStop, SectorState, Wal, WalError};
pub use pool::{BufferManager, Durability, Pool, PoolConfig, PoolError, PoolStats};
pub use recovery::RecoveryReport;

/// Size of a database page in bytes.
pub const PAGE_SIZE: usize = dbos_abi::PAGE_SIZE as usize;

/// What the platform provides besides storage: how to wait and what time
/// it is. In the guest `relax` is `core::hint::spin_loop` and `now_ns`
/// reads the TSC; in a process see `host::env`.
#[derive(Clone, Copy, Debug)]
pub struct Env {
    /// Called in every wait loop (a lock held elsewhere, a batch in flight,
    /// a completion not yet posted).
    pub relax: fn(),
    /// Monotonic nanoseconds (only differences are used: reports, ids,
    /// and, where `sleep` is given, how long a waiter has spun).
    pub now_ns: fn() -> u64,
    /// How a thread sleeps until another wakes it, where the platform can
    /// (a process: a futex). Without it every wait spins on `relax`, as
    /// the guest's do (its vCPUs are not shared with other work).
    pub sleep: Option<Sleep>,
}

/// Sleeping on a word until it changes (a futex's two calls).
#[derive(Clone, Copy, Debug)]
pub struct Sleep {
    /// Sleeps while `word` holds `expected`; may return early (a signal, a
    /// timeout), so the caller checks again.
    pub wait: fn(word: &core::sync::atomic::AtomicU32, expected: u32),
    /// Wakes every thread sleeping on `word`.
    pub wake_all: fn(word: &core::sync::atomic::AtomicU32),
}

/// Identifies a database page: its index in the data file, so that page `n`
/// lives at byte offset `n * PAGE_SIZE` and, in an MMU-translated buffer pool,
/// at `window_base + n * PAGE_SIZE`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PageId(pub u64);

impl PageId {
    /// Byte offset of the page in the data file (or in the virtual window).
    /// `None` if it does not fit in 64 bits.
    pub fn byte_offset(self) -> Option<u64> {
        self.0.checked_mul(PAGE_SIZE as u64)
    }

    /// The page containing byte `offset`.
    pub fn containing(offset: u64) -> PageId {
        PageId(offset / PAGE_SIZE as u64)
    }
}

/// A log sequence number: the byte position of a record in the (logically
/// unbounded) write-ahead log. LSNs only grow; `Lsn::ZERO` precedes every record.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Lsn(pub u64);

impl Lsn {
    pub const ZERO: Lsn = Lsn(0);

    /// The LSN `bytes` further on; `None` on overflow.
    pub fn advance(self, bytes: u64) -> Option<Lsn> {
        self.0.checked_add(bytes).map(Lsn)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_offsets() {
        assert_eq!(PageId(3).byte_offset(), Some(12288));
        assert_eq!(PageId(u64::MAX).byte_offset(), None);
        assert_eq!(PageId::containing(12287), PageId(2));
        assert_eq!(PageId::containing(12288), PageId(3));
    }

    #[test]
    fn lsns_order_and_advance() {
        assert!(Lsn::ZERO < Lsn(1));
        assert_eq!(Lsn(10).advance(5), Some(Lsn(15)));
        assert_eq!(Lsn(u64::MAX).advance(1), None);
    }
}
