//! The dbos hypervisor: a small KVM-based VMM that runs a `libdbos` guest in
//! 64-bit ring 0.
//!
//! [`Vm::from_file`] validates and loads a static ELF64 image, lays out guest
//! memory ([`layout`]), writes the boot state ([`boot`]) and creates the vCPUs
//! ([`vcpu`]); [`Vm::run`] runs them until the guest stops and returns a
//! [`RunReport`]. Guest services go through the hypercall server
//! ([`hypercall`]), which checks every guest address against guest memory
//! ([`memory`]) and hands each call to the module that owns it: [`console`],
//! [`control`] (exit, panic, fault, counters), [`clock`], [`files`] and
//! [`disk`]. The run report counts the exits that reach the VMM;
//! [`kvmstats`] reads KVM's own per-vCPU statistics, which count every VM
//! exit, those KVM handles in the kernel included. Everything the VMM and
//! a guest agree on comes from the `dbos-abi` crate; the VMM does not link
//! `libdbos`.

pub mod boot;
pub mod clock;
pub mod console;
pub mod control;
pub mod disk;
pub mod elf;
pub mod files;
#[doc(hidden)]
pub mod fuzzing;
pub mod hypercall;
pub mod kvmstats;
pub mod layout;
pub mod memory;
pub mod report;
pub mod vcpu;
pub mod vm;

pub use report::{ExitCounts, GuestExit, RunReport};
pub use vm::{Vm, VmConfig, VmError};

/// Directory holding the guest images built from `examples/` with this crate.
pub const GUEST_DIR: &str = env!("DBOS_GUEST_DIR");

/// Path of the built guest image `name` (e.g. `"hello"`).
pub fn guest_image(name: &str) -> std::path::PathBuf {
    std::path::Path::new(GUEST_DIR).join(name)
}
