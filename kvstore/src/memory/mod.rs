//! The `memory` engine: an in-memory hash table like Redis's, persisted by
//! snapshots (issue 22).
//!
//! Every entry and the index live inside the heap of a
//! [`dbos_snapshot::Snapshotter`], laid out by offsets so that a frozen copy
//! of the heap is interpretable on its own. A save takes a snapshot (an
//! O(1)-ish freeze of the whole heap: `fork()`, userfaultfd write
//! protection, or in the guest Snappy's page-table snapshot) under the
//! table's write lock, then serializes the frozen view into a snapshot file
//! while writers go on.
//!
//! `no_std` + `alloc` (usable by the guest):
//!
//! - [`layout`]: the heap's layout (header, index, arena, record header).
//! - [`heap`]: bounds-checked access to the heap's bytes (the `unsafe`).
//! - [`arena`]: the arena's size-class allocator.
//! - [`hash`]: the keys' hash.
//! - [`table`]: the hash table (atomic groups of writes, scan by bucket).
//! - [`dump`]: walking a frozen heap and encoding its records.
//! - [`format`]: the snapshot file format (`dump.dbkv`), encode/decode.
//!
//! Host only: [`host`], the [`KvEngine`](crate::server::engine::KvEngine)
//! [`MemoryEngine`] over `fork()` or userfaultfd snapshots, its snapshot
//! files in a directory, background and periodic saves.

pub mod arena;
pub mod dump;
pub mod format;
pub mod hash;
pub mod heap;
pub mod layout;
pub mod table;

#[cfg(not(target_os = "none"))]
pub mod host;

#[cfg(not(target_os = "none"))]
pub use host::{
    monotonic_us, MemoryConfig, MemoryEngine, OpenError, PeriodicSaves, SnapshotKind, DUMP,
    DUMP_TMP, MAX_WRITES,
};

#[cfg(test)]
mod table_tests;
