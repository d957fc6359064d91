//! The boot information the hypervisor writes into guest memory before the
//! first vCPU runs, and the guest-physical memory map in it.

use crate::{GuestPhysAddr, Pod};

/// First word of [`BootInfo`], so that a guest can tell boot information from garbage.
pub const BOOT_MAGIC: u64 = u64::from_le_bytes(*b"dbosBOOT");

/// Maximum number of entries in [`BootInfo::memory_map`].
pub const MAX_MEMORY_REGIONS: usize = 16;

/// Maximum total size in bytes of the guest's command-line arguments.
pub const MAX_ARGS_BYTES: usize = 4096;

/// What a region of guest-physical memory is used for.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemoryKind {
    /// Free RAM; the guest's frame allocator owns it.
    Usable = 1,
    /// Boot data written by the hypervisor (GDT, boot info, initial page tables).
    BootData = 2,
    /// The loaded ELF image.
    Image = 3,
    /// The per-vCPU boot stacks, `BOOT_STACK_SIZE` each, vCPU 0 first.
    BootStacks = 4,
    /// The region the guest's global allocator manages.
    Heap = 5,
}

/// A raw memory kind that names no [`MemoryKind`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UnknownMemoryKind(pub u32);

impl TryFrom<u32> for MemoryKind {
    type Error = UnknownMemoryKind;

    fn try_from(raw: u32) -> Result<Self, UnknownMemoryKind> {
        Ok(match raw {
            1 => Self::Usable,
            2 => Self::BootData,
            3 => Self::Image,
            4 => Self::BootStacks,
            5 => Self::Heap,
            _ => return Err(UnknownMemoryKind(raw)),
        })
    }
}

/// One region of guest-physical memory.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemoryRegion {
    /// Guest-physical start, 4 KiB aligned.
    pub start: u64,
    /// Length in bytes, a multiple of 4 KiB.
    pub len: u64,
    /// A [`MemoryKind`] as `u32`.
    pub kind: u32,
    pub _reserved: u32,
}

impl MemoryRegion {
    /// The region's kind, `None` for an unknown value.
    pub fn kind(&self) -> Option<MemoryKind> {
        MemoryKind::try_from(self.kind).ok()
    }
    /// Exclusive end address.
    pub fn end(&self) -> u64 {
        self.start + self.len
    }
}

/// Boot information the hypervisor writes into guest memory before start.
///
/// All addresses in it are guest-physical.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct BootInfo {
    /// [`BOOT_MAGIC`].
    pub magic: u64,
    /// The hypervisor's [`crate::ABI_VERSION`].
    pub abi_version: u32,
    /// Number of vCPUs started.
    pub vcpu_count: u32,
    /// Total bytes of guest RAM.
    pub ram_bytes: u64,
    /// Number of valid entries in `memory_map`.
    pub memory_map_len: u32,
    /// Number of command-line arguments.
    pub argc: u32,
    /// The arguments: `argc` strings, each UTF-8 and NUL-terminated, back to back.
    pub args_addr: GuestPhysAddr,
    /// Total bytes at `args_addr`, NULs included.
    pub args_len: u64,
    /// The page-map level-4 table in use at entry.
    pub pml4_addr: GuestPhysAddr,
    /// Regions of guest-physical memory, sorted by start address.
    pub memory_map: [MemoryRegion; MAX_MEMORY_REGIONS],
}

impl Default for BootInfo {
    fn default() -> Self {
        BootInfo {
            magic: 0,
            abi_version: 0,
            vcpu_count: 0,
            ram_bytes: 0,
            memory_map_len: 0,
            argc: 0,
            args_addr: GuestPhysAddr(0),
            args_len: 0,
            pml4_addr: GuestPhysAddr(0),
            memory_map: [MemoryRegion::default(); MAX_MEMORY_REGIONS],
        }
    }
}

// SAFETY: #[repr(C)], u32/u64 fields only, laid out without padding (checked
// by `layouts_are_stable`).
unsafe impl Pod for MemoryRegion {}
// SAFETY: #[repr(C)], integer fields, `GuestPhysAddr` (a transparent u64)
// and an array of `MemoryRegion`, without padding (checked below).
unsafe impl Pod for BootInfo {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts_are_stable() {
        assert_eq!(core::mem::size_of::<MemoryRegion>(), 24);
        assert_eq!(
            core::mem::size_of::<BootInfo>(),
            56 + 24 * MAX_MEMORY_REGIONS
        );
        assert_eq!(core::mem::offset_of!(BootInfo, args_addr), 32);
        assert_eq!(core::mem::offset_of!(BootInfo, pml4_addr), 48);
        assert_eq!(core::mem::offset_of!(BootInfo, memory_map), 56);
    }

    #[test]
    fn memory_kinds_decode() {
        for k in 1..=5 {
            assert_eq!(MemoryKind::try_from(k).unwrap() as u32, k);
        }
        assert_eq!(MemoryKind::try_from(0), Err(UnknownMemoryKind(0)));
        assert_eq!(MemoryKind::try_from(6), Err(UnknownMemoryKind(6)));
    }
}
