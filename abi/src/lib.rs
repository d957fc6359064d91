//! `dbos-abi`: everything the `dbos` hypervisor and a guest must agree on,
//! each defined once.
//!
//! Both sides compile this crate: the VMM on Linux, `libdbos` in the guest
//! (`x86_64-unknown-none`), and the NVMe crate in both. It holds plain
//! `#[repr(C)]` data, constants, pure decoding functions and the one
//! page-table walker both sides use; its only dependency is the `x86_64`
//! crate's types (no instructions), so linking it never drags either side's
//! code into the other.
//!
//! | module | what it defines |
//! |---|---|
//! | [`layout`] | page, large-page and sector sizes; the guest address space at entry (direct map, image window, boot region, RAM placement) |
//! | [`boot`] | [`BootInfo`] and the guest-physical memory map |
//! | [`hypercall`] | the [`Hypercall`] numbers, their argument blocks and how an argument block's address travels (the DMA-region calls among them) |
//! | [`nvme`] | the NVMe queue-pair registration ([`QueuePairConfig`]) and the ring layout in memory ([`QueueLayout`]) |
//! | [`net`] | the network queue pair: its entries ([`net::NetSqe`], [`net::NetCqe`]), commands, statuses and calls (same ring shape and doorbells as [`nvme`]) |
//! | [`note`] | the ELF note that carries a guest image's ABI version |
//! | [`paging`] | the page-table walker: the VMM builds the boot tables with it, the guest edits its live tables with it (atomic entries, level-aware operations) |
//!
//! # Versioning
//!
//! [`ABI_VERSION`] names this ABI. A guest image carries the version it was
//! built for in an ELF note ([`note`]); `dbos run` reads it while validating
//! the image and refuses to create a VM for another version. The hypervisor
//! also writes its version into [`BootInfo::abi_version`], and the guest
//! stops with a clear message when it differs ([`check_abi_version`]): the
//! second line of defence, for images loaded by other means.
//!
//! Version history:
//! - 1: hypercall argument blocks addressed by a 32-bit port value (below 4 GiB).
//! - 2: argument blocks addressed by the full 64-bit guest-physical address in
//!   `rax` ([`hypercall`]); the NVMe registration embeds [`QueuePairConfig`];
//!   the ELF version note.
//! - 3: [`FaultArgs`] carries the faulting context's general-purpose
//!   registers; the heap region includes [`HEAP_PER_VCPU`] bytes per vCPU.
//! - 4: hypercalls tied to their argument blocks ([`calls`]); NVMe
//!   completion interrupts: a queue pair names an interrupt vector
//!   ([`QueuePairConfig::interrupt`]) and its doorbell area holds a
//!   waiting word ([`nvme::WAIT_WORD`], 16 bytes in all).
//! - 5: [`StatsArgs`] names its count for what it is (exits to the VMM,
//!   `vmm_exits`) and adds KVM's own count of all VM exits (`kvm_exits`).
//! - 6: DMA regions: [`Hypercall::DmaDeclare`], [`Hypercall::DmaRelease`]
//!   and [`Hypercall::DmaStats`] (I/Os served with fixed and with plain
//!   buffers).
//! - 7: the network queue pair ([`net`]): [`Hypercall::NetInfo`],
//!   [`Hypercall::NetCreateQueue`], [`Hypercall::NetDoorbell`],
//!   [`Hypercall::NetDestroyQueue`], [`Hypercall::NetStats`]; disk queue
//!   pairs can be given back ([`Hypercall::NvmeDestroyQueue`]); [`ClockArgs`]
//!   carries the host's wall clock too.
#![no_std]

pub mod boot;
pub mod hypercall;
pub mod layout;
pub mod net;
pub mod note;
pub mod nvme;
pub mod paging;

pub use boot::{
    BootInfo, MemoryKind, MemoryRegion, BOOT_MAGIC, MAX_ARGS_BYTES, MAX_MEMORY_REGIONS,
};
pub use hypercall::*;
pub use layout::*;
pub use nvme::{QueueLayout, QueuePairConfig};

/// Version of this ABI (see the crate documentation for the history).
pub const ABI_VERSION: u32 = 7;

/// A guest-physical address: what the guest's page tables translate to and
/// what the VMM checks against guest memory before it touches anything.
#[repr(transparent)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct GuestPhysAddr(pub u64);

impl GuestPhysAddr {
    /// The raw address.
    pub const fn raw(self) -> u64 {
        self.0
    }

    /// The address `bytes` further on, `None` on overflow.
    pub const fn checked_add(self, bytes: u64) -> Option<GuestPhysAddr> {
        match self.0.checked_add(bytes) {
            Some(a) => Some(GuestPhysAddr(a)),
            None => None,
        }
    }
}

impl core::fmt::LowerHex for GuestPhysAddr {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        core::fmt::LowerHex::fmt(&self.0, f)
    }
}

impl From<GuestPhysAddr> for u64 {
    fn from(a: GuestPhysAddr) -> u64 {
        a.0
    }
}

/// Plain old data: `#[repr(C)]` (or `transparent`), only integer fields, no
/// padding bytes, so every bit pattern is a valid value and the host may copy
/// it in and out of guest memory as bytes.
///
/// # Safety
/// Implement only for types that satisfy all of the above.
pub unsafe trait Pod: Copy + Default + 'static {}

// SAFETY: an integer has no padding and no invalid bit patterns.
unsafe impl Pod for u64 {}
// SAFETY: #[repr(transparent)] over a u64.
unsafe impl Pod for GuestPhysAddr {}

/// Checks the hypervisor's ABI version against the one this code was built for.
pub fn check_abi_version(hypervisor: u32) -> Result<(), AbiMismatch> {
    if hypervisor == ABI_VERSION {
        Ok(())
    } else {
        Err(AbiMismatch {
            guest: ABI_VERSION,
            hypervisor,
        })
    }
}

/// The guest and the hypervisor were built for different ABI versions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AbiMismatch {
    pub guest: u32,
    pub hypervisor: u32,
}

impl core::fmt::Display for AbiMismatch {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(
            f,
            "dbos ABI version mismatch: guest built for version {}, hypervisor provides version {}",
            self.guest, self.hypervisor
        )
    }
}

/// Exception vectors 0..32 by name, for reports on both sides.
pub fn exception_name(vector: u64) -> &'static str {
    match vector {
        0 => "#DE divide error",
        1 => "#DB debug",
        2 => "NMI",
        3 => "#BP breakpoint",
        4 => "#OF overflow",
        5 => "#BR bound range",
        6 => "#UD invalid opcode",
        7 => "#NM device not available",
        8 => "#DF double fault",
        10 => "#TS invalid TSS",
        11 => "#NP segment not present",
        12 => "#SS stack fault",
        13 => "#GP general protection",
        14 => "#PF page fault",
        16 => "#MF x87 floating point",
        17 => "#AC alignment check",
        18 => "#MC machine check",
        19 => "#XM SIMD floating point",
        20 => "#VE virtualization",
        21 => "#CP control protection",
        32..=255 => "interrupt",
        _ => "reserved",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Buf {
        bytes: [u8; 160],
        len: usize,
    }

    impl core::fmt::Write for Buf {
        fn write_str(&mut self, s: &str) -> core::fmt::Result {
            let end = self.len + s.len();
            self.bytes
                .get_mut(self.len..end)
                .ok_or(core::fmt::Error)?
                .copy_from_slice(s.as_bytes());
            self.len = end;
            Ok(())
        }
    }

    #[test]
    fn abi_version_check() {
        assert!(check_abi_version(ABI_VERSION).is_ok());
        let err = check_abi_version(ABI_VERSION + 1).unwrap_err();
        assert_eq!(err.guest, ABI_VERSION);
        assert_eq!(err.hypervisor, ABI_VERSION + 1);
        let mut buf = Buf {
            bytes: [0; 160],
            len: 0,
        };
        core::fmt::Write::write_fmt(&mut buf, format_args!("{err}")).unwrap();
        assert_eq!(
            core::str::from_utf8(&buf.bytes[..buf.len]).unwrap(),
            "dbos ABI version mismatch: guest built for version 7, hypervisor provides version 8"
        );
    }

    #[test]
    fn exception_names() {
        assert_eq!(exception_name(14), "#PF page fault");
        assert_eq!(exception_name(9), "reserved");
        assert_eq!(exception_name(40), "interrupt");
    }

    #[test]
    fn guest_phys_addr() {
        assert_eq!(GuestPhysAddr(5).checked_add(3), Some(GuestPhysAddr(8)));
        assert_eq!(GuestPhysAddr(u64::MAX).checked_add(1), None);
        assert_eq!(u64::from(GuestPhysAddr(7)), 7);
    }
}
