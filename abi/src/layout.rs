//! Sizes and the guest address space at entry.
//!
//! The hypervisor starts every vCPU directly in 64-bit long mode, ring 0,
//! with paging on and these mappings (nothing else is mapped):
//!
//! | virtual | maps | pages |
//! |---|---|---|
//! | [`DIRECT_MAP_BASE`] + p | guest-physical p, for all guest RAM | 2 MiB, RW, NX |
//! | [`IMAGE_BASE`] + p | the ELF image's segments at physical p | 4 KiB, permissions from the segment flags |
//!
//! Guest-physical layout: [`BOOT_REGION`] holds the boot data written by the
//! hypervisor (GDT, [`crate::BootInfo`], arguments, page tables); the image is
//! linked at `IMAGE_BASE + IMAGE_PHYS_MIN` or above; after it come the
//! per-vCPU boot stacks, the heap and the usable RAM, all described by
//! [`crate::BootInfo::memory_map`]. RAM above 3 GiB ([`LOW_RAM_END`]) is
//! placed from 4 GiB ([`HIGH_RAM_START`]) up, leaving the usual hole below
//! 4 GiB (where the local APIC lives).
//!
//! Registers at entry: `rdi` = virtual address of the [`crate::BootInfo`],
//! `rsi` = vCPU index (0 for the bootstrap vCPU), `rsp` = top of that vCPU's
//! boot stack minus 8 (as if `_start` had been called), interrupts disabled.

/// A 4 KiB page: the unit of mapping, of frames, of database pages and of
/// NVMe logical blocks and data pointers.
pub const PAGE_SIZE: u64 = 4096;

/// log2 of [`PAGE_SIZE`].
pub const PAGE_SHIFT: u32 = 12;

/// A 2 MiB large page.
pub const LARGE_PAGE_SIZE: u64 = 2 << 20;

/// A 512-byte sector: the unit a device writes atomically (a torn write
/// tears at sector boundaries), and the unit of the write-ahead log's seals.
pub const SECTOR_SIZE: u64 = 512;

/// Virtual base of the direct map of all guest RAM.
pub const DIRECT_MAP_BASE: u64 = 0xffff_8000_0000_0000;

/// Virtual base of the image mapping: an image segment at guest-physical `p`
/// is linked at `IMAGE_BASE + p` (the top 2 GiB, for the kernel code model).
pub const IMAGE_BASE: u64 = 0xffff_ffff_8000_0000;

/// Lowest guest-physical address an image segment may be loaded at.
pub const IMAGE_PHYS_MIN: u64 = 0x20_0000;

/// Highest guest-physical address (exclusive) an image segment may reach.
pub const IMAGE_PHYS_MAX: u64 = 0x4000_0000;

/// Guest-physical range `[start, end)` reserved for the hypervisor's boot data.
pub const BOOT_REGION: (u64, u64) = (0x1000, IMAGE_PHYS_MIN);

/// Start of guest RAM above the 32-bit hole.
pub const HIGH_RAM_START: u64 = 0x1_0000_0000;

/// Guest RAM up to this address is placed below 4 GiB.
pub const LOW_RAM_END: u64 = 0xc000_0000;

/// Size of each vCPU's boot stack.
pub const BOOT_STACK_SIZE: u64 = 64 * 1024;

/// Heap bytes the hypervisor adds to the heap region for each vCPU, on top
/// of the program's share: what the guest library allocates for a vCPU when
/// it starts it (its interrupt-stack-table stacks, TSS, GDT and per-CPU
/// area, with allocator slack). The guest library checks at compile time
/// that its per-vCPU allocations fit.
pub const HEAP_PER_VCPU: u64 = 192 * 1024;

/// Maximum number of vCPUs.
pub const MAX_VCPUS: u32 = 64;

const _: () = assert!(1 << PAGE_SHIFT == PAGE_SIZE);
const _: () = assert!(HEAP_PER_VCPU.is_multiple_of(PAGE_SIZE));
const _: () = assert!(PAGE_SIZE.is_multiple_of(SECTOR_SIZE));
const _: () = assert!(LARGE_PAGE_SIZE.is_multiple_of(PAGE_SIZE));
const _: () = assert!(IMAGE_PHYS_MIN.is_multiple_of(LARGE_PAGE_SIZE));
