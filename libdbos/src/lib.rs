//! `libdbos`: the guest kernel library of dbos (over the host/guest ABI of
//! `dbos-abi`).
//!
//! Built for `x86_64-unknown-none`, this crate is a small ring-0 kernel that a
//! database links against: it boots on the vCPUs the `dbos` hypervisor starts,
//! sets up per-CPU descriptor tables with IST stacks, an IDT whose handlers save
//! the full register state and call hooks the database registers, a heap, a
//! frame allocator and page-table access, and a `log` backend and panic
//! handler that go through hypercalls. A guest program provides its entry
//! point with the `entry!` macro (guest builds only: built for another
//! target, `entry!` is an error that names it and the guest target).
//!
//! Built for the host, it is the process-mode implementation of the same
//! privileged API ([`process`]), and the target-independent helpers
//! ([`fmtbuf`], [`hook`]) serve both. The host/guest ABI lives in its own crate,
//! `dbos-abi` (re-exported as [`abi`]), which the hypervisor uses without
//! this library.
//!
//! Feature `conformance` (off by default, test code): the module
//! `conformance`, the conformance suite and cost measurement for
//! [`platform::Platform`] implementations, on either side; in the guest
//! also the deferred page-table views (`paging::defer_view`) and their
//! hooks on the page-fault, `invlpg` and CR3 paths, and the raw console
//! call. The guest programs the project measures are built without it
//! (`hypervisor/build.rs`; `hypervisor/tests/images.rs` checks).
//!
//! # The page-table API of mechanisms built on libdbos
//!
//! [`platform::Platform`] offers what a database needs of its memory:
//! windows, pages mapped and remapped, invalidations, fault hooks. A
//! mechanism that edits the tables *above* the leaves (Snappy shares a
//! heap's level-3 subtree between views and copies tables on write) needs
//! more, and uses, in the guest, exactly this: `paging::with_tables` (the
//! structural lock, with the tables), [`pagetable`]'s walker types
//! (`walker`, `Entry`, `Level`, the `COW` bit), `tlb::invalidate_local`,
//! `smp::flush_all` and `smp::ServingLock` (a lock that serves TLB
//! shootdowns while it spins), and `frames::ZeroedFrames` (table memory).
//! These are public for that reason; their invariants (who may write which
//! entry, when an invalidation is owed) are stated where they are
//! defined.
#![no_std]

#[cfg(target_os = "none")]
extern crate alloc;
#[cfg(not(target_os = "none"))]
extern crate std;

/// The host/guest ABI (the `dbos-abi` crate), re-exported for guests.
pub use dbos_abi as abi;
#[cfg(feature = "conformance")]
pub mod conformance;
pub mod fmtbuf;
pub mod hook;
pub mod pagetable;
pub mod platform;
#[cfg(not(target_os = "none"))]
pub mod process;
pub mod sync;

#[cfg(target_os = "none")]
mod guest;
// `entry!` (an error naming the target) and `println!` (standard output)
// on other targets.
#[cfg(not(target_os = "none"))]
#[doc(hidden)]
pub mod host_macros;
#[cfg(target_os = "none")]
pub use guest::*;
