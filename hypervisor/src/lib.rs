//! The dbos hypervisor: a small KVM-based VMM that runs a `libdbos` guest in
//! 64-bit ring 0.
//!
//! [`Vm::from_file`] validates and loads a static ELF64 image, lays out guest
//! memory ([`layout`]), writes the boot state ([`boot`]) and creates the vCPUs
//! ([`vcpu`]); [`Vm::run`] runs them until the guest stops and returns a
//! [`RunReport`]. Guest services go through the hypercall server
//! ([`hypercall`]), which checks every guest address against guest memory
//! ([`memory`]) and hands each call to the module that owns it: [`console`],
//! [`control`] (exit, panic, fault, counters), [`clock`], [`files`],
//! [`disk`] and [`net`]. The run report counts the exits that reach the VMM;
//! [`kvmstats`] reads KVM's own per-vCPU statistics, which count every VM
//! exit, those KVM handles in the kernel included. Everything the VMM and
//! a guest agree on comes from the `dbos-abi` crate; the VMM does not link
//! `libdbos`.

pub mod bench;
pub mod boot;
pub mod clock;
pub mod console;
pub mod control;
pub mod disk;
pub mod elf;
pub mod files;
#[cfg(feature = "fuzzing")]
pub mod fuzzing;
pub mod hypercall;
pub mod kvmstats;
pub mod layout;
pub mod memory;
pub mod net;
pub mod new_project;
pub mod report;
pub mod services;
mod shared;
pub mod vcpu;
pub mod vm;

pub use report::{ExitCounts, GuestExit, RunReport};
pub use vm::{Vm, VmConfig, VmError};

/// Directory holding the measured guest images built from `examples/` with
/// this crate (no test machinery: see `hypervisor/build.rs`).
pub const GUEST_DIR: &str = env!("DBOS_GUEST_DIR");

/// Directory holding the test build of every guest program (feature
/// `conformance`: libdbos's conformance suite, deferred views, test knobs).
pub const GUEST_TEST_DIR: &str = env!("DBOS_GUEST_TEST_DIR");

/// Path of the built, measured guest image `name` (e.g. `"kvstore"`).
pub fn guest_image(name: &str) -> std::path::PathBuf {
    std::path::Path::new(GUEST_DIR).join(name)
}

/// Path of the test build of guest program `name` (e.g. `"scenarios"`).
pub fn test_guest_image(name: &str) -> std::path::PathBuf {
    std::path::Path::new(GUEST_TEST_DIR).join(name)
}
