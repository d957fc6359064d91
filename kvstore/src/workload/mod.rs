//! The in-process workload driver: YCSB's core workloads A-F over any
//! [`crate::Kv`], with latency histograms, a check of every value read,
//! and a verification of the store against what it acknowledged.
//!
//! A run has three phases, each a function that does one thread's share
//! and returns that thread's results; the driver spawns no threads (the
//! caller does: a std binary with `std::thread`, the guest one per vCPU):
//!
//! 1. [`load`] writes records `0..records`, each under its key
//!    ([`key_bytes`]: `"user"` + 20 digits of the record number's FNV
//!    hash) with a value ([`encode_value`]) that names its record and
//!    version and fills the rest with bytes derived from them.
//! 2. [`run`] does the workload's mix of reads, updates, inserts, scans
//!    and read-modify-writes ([`Workload`]), records chosen uniformly, by
//!    YCSB's scrambled Zipfian, or (workload D) skewed to the latest
//!    inserts ([`keys`]). Every value read is checked: its record, its
//!    fill, and a version no older than the last one acknowledged.
//! 3. [`verify`] reads every record and checks it against [`Acked`], the
//!    lock-free log of acknowledged versions the load and run kept: after
//!    a crash and recovery, that is the durability check.
//!
//! The caller merges the threads' [`Stats`] ([`Stats::merge`]) and prints
//! a [`Report`] (per operation kind: throughput, failures, latency
//! percentiles from a log-linear [`Histogram`]; plus counters the caller
//! measured itself, such as page reads or VM exits per operation).
//!
//! What it owns: the choice of operations and records (seeded, so a run
//! is reproducible for a seed and thread count), the value format, the
//! acknowledgement log, the statistics and the report text. What it does
//! not: threads, clocks (the caller passes `now_ns`), output (the caller
//! prints the report and shows `progress`), and the store.
//!
//! The code is `no_std` + `alloc` and uses no floating-point function
//! from `std` (`libm` instead), so it runs unchanged in the guest.
//! Memory: 16 bytes per record in [`Acked`], 30 KiB per histogram (five in
//! each thread's [`Stats`]); nothing is allocated per operation.

mod acked;
mod driver;
mod histogram;
pub mod keys;
mod rng;
mod spec;
mod value;

pub use acked::{AckReport, Acked, PendingWrite};
pub use driver::{load, run, verify, Offenders, OpStats, Report, Stats, Verification};
pub use histogram::Histogram;
pub use keys::{key_bytes, KEY_LEN};
pub use rng::Rng;
pub use spec::{
    Distribution, OpKind, ParseError, Spec, SpecError, Workload, MAX_LOAD_BATCH, MAX_SCAN,
    MIN_VALUE_SIZE,
};
pub use value::{check_value, encode_value, ValueError};
