//! The host/guest ABI: everything the hypervisor and a guest must agree on.
//!
//! This module is compiled by both sides (the `dbos` hypervisor on Linux and
//! `libdbos` in the guest), so a layout or a number is defined exactly once.
//! It holds plain `#[repr(C)]` data and constants only; no behaviour.
//!
//! # Guest address space at entry
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
//! hypervisor (GDT, [`BootInfo`], arguments, page tables); the image is linked
//! at `IMAGE_BASE + IMAGE_PHYS_MIN` or above; after it come the per-vCPU boot
//! stacks, the heap and the usable RAM, all described by
//! [`BootInfo::memory_map`]. RAM above 3 GiB is placed from 4 GiB up, leaving
//! the usual hole below 4 GiB (where the local APIC lives).
//!
//! Registers at entry: `rdi` = virtual address of the [`BootInfo`],
//! `rsi` = vCPU index (0 for the bootstrap vCPU), `rsp` = top of that vCPU's
//! boot stack (16-byte aligned), interrupts disabled.
//!
//! # Hypercalls
//!
//! A hypercall is a 32-bit `out` to [`HYPERCALL_PORT_BASE`] + the call's
//! [`Hypercall`] number. The value written is the guest-physical address of
//! the call's argument block (one of the `*Args` structs below), which must
//! lie below 4 GiB; results are written back into the block. The hypervisor
//! checks every address and length against guest memory before using it and
//! stops the guest with an error naming the call when one is bad.
//!
//! Calls 0 to 3 ([`Hypercall::Console`], [`Hypercall::Exit`],
//! [`Hypercall::Panic`], [`Hypercall::Fault`]) keep their numbers and layouts
//! in every ABI version, so that a guest can always report an ABI mismatch.

/// Version of this ABI. The hypervisor writes it into [`BootInfo::abi_version`];
/// the guest stops with a clear message when it differs from its own.
pub const ABI_VERSION: u32 = 1;

/// First word of [`BootInfo`], so that a guest can tell boot information from garbage.
pub const BOOT_MAGIC: u64 = u64::from_le_bytes(*b"dbosBOOT");

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

/// Maximum number of entries in [`BootInfo::memory_map`].
pub const MAX_MEMORY_REGIONS: usize = 16;

/// Maximum total size in bytes of the guest's command-line arguments.
pub const MAX_ARGS_BYTES: usize = 4096;

/// Maximum number of vCPUs.
pub const MAX_VCPUS: u32 = 64;

/// First I/O port of the hypercall range.
pub const HYPERCALL_PORT_BASE: u16 = 0x0d00;

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

impl MemoryKind {
    /// Decodes a raw kind, as read from guest memory.
    pub fn from_raw(raw: u32) -> Option<Self> {
        Some(match raw {
            1 => Self::Usable,
            2 => Self::BootData,
            3 => Self::Image,
            4 => Self::BootStacks,
            5 => Self::Heap,
            _ => return None,
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
        MemoryKind::from_raw(self.kind)
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
    /// The hypervisor's [`ABI_VERSION`].
    pub abi_version: u32,
    /// Number of vCPUs started.
    pub vcpu_count: u32,
    /// Total bytes of guest RAM.
    pub ram_bytes: u64,
    /// Number of valid entries in `memory_map`.
    pub memory_map_len: u32,
    /// Number of command-line arguments.
    pub argc: u32,
    /// Guest-physical address of the arguments: `argc` strings, each UTF-8
    /// and NUL-terminated, back to back.
    pub args_addr: u64,
    /// Total bytes at `args_addr`, NULs included.
    pub args_len: u64,
    /// Guest-physical address of the page-map level-4 table in use at entry.
    pub pml4_addr: u64,
    /// Regions of guest-physical memory, sorted by start address.
    pub memory_map: [MemoryRegion; MAX_MEMORY_REGIONS],
}

/// Hypercall numbers; the port is `HYPERCALL_PORT_BASE + number`.
#[repr(u16)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hypercall {
    /// Write bytes to the console ([`ConsoleArgs`]).
    Console = 0,
    /// Stop the whole guest with a status ([`ExitArgs`]).
    Exit = 1,
    /// Report a panic and stop the guest ([`PanicArgs`]).
    Panic = 2,
    /// Report an unhandled exception and stop the guest ([`FaultArgs`]).
    Fault = 3,
    /// Read the host's monotonic clock ([`ClockArgs`]).
    Clock = 4,
    /// Read the VMM's counters ([`StatsArgs`]).
    Stats = 5,
    /// Open a file the user authorised with `--file NAME=PATH` ([`FileOpenArgs`]).
    FileOpen = 6,
    /// Read from an open file ([`FileIoArgs`]).
    FileRead = 7,
    /// Write to an open file ([`FileIoArgs`]).
    FileWrite = 8,
    /// Make an open file's data durable, `fdatasync` ([`FileArgs`]).
    FileFlush = 9,
    /// The current size of an open file ([`FileArgs`]).
    FileSize = 10,
    /// Describe the NVMe disk ([`NvmeInfoArgs`]).
    NvmeInfo = 11,
    /// Register a queue pair with the host's poller ([`NvmeQueueArgs`]).
    NvmeCreateQueue = 12,
    /// The real (exiting) NVMe doorbell: wakes the parked poller. The value
    /// written is ignored; the driver rings it only when the poller has said
    /// (through the shadow doorbells' event indexes) that it is going idle.
    NvmeDoorbell = 13,
}

impl Hypercall {
    /// All calls, in number order.
    pub const ALL: [Hypercall; 14] = [
        Self::Console,
        Self::Exit,
        Self::Panic,
        Self::Fault,
        Self::Clock,
        Self::Stats,
        Self::FileOpen,
        Self::FileRead,
        Self::FileWrite,
        Self::FileFlush,
        Self::FileSize,
        Self::NvmeInfo,
        Self::NvmeCreateQueue,
        Self::NvmeDoorbell,
    ];

    /// The call for an I/O port, `None` if the port is not a hypercall port.
    pub fn from_port(port: u16) -> Option<Self> {
        let nr = port.checked_sub(HYPERCALL_PORT_BASE)?;
        Self::ALL.get(usize::from(nr)).copied()
    }

    /// The I/O port of this call.
    pub const fn port(self) -> u16 {
        HYPERCALL_PORT_BASE + self as u16
    }
}

/// A UTF-8 (or arbitrary byte) buffer in guest-physical memory.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GuestBuf {
    pub addr: u64,
    pub len: u64,
}

/// Arguments of [`Hypercall::Console`]: bytes to append to this vCPU's console.
/// The host prints complete lines, prefixed by the vCPU index.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct ConsoleArgs {
    pub text: GuestBuf,
}

/// Arguments of [`Hypercall::Exit`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct ExitArgs {
    /// Becomes the hypervisor's process exit status.
    pub status: u32,
    pub _reserved: u32,
}

/// Arguments of [`Hypercall::Panic`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct PanicArgs {
    pub message: GuestBuf,
    pub file: GuestBuf,
    pub line: u32,
    pub column: u32,
}

/// Arguments of [`Hypercall::Fault`]: an exception no hook handled.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct FaultArgs {
    pub vector: u64,
    pub error_code: u64,
    pub rip: u64,
    pub cr2: u64,
    pub rsp: u64,
    pub rflags: u64,
    /// Why the handler gave up, e.g. "no hook registered" (may be empty).
    pub reason: GuestBuf,
}

/// Arguments of [`Hypercall::Clock`]; `nanos` is written by the host.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct ClockArgs {
    /// Nanoseconds on the host's monotonic clock since the VM was created.
    pub nanos: u64,
}

/// Plain old data: `#[repr(C)]`, only integer fields, no padding bytes, so
/// every bit pattern is a valid value and the host may copy it in and out of
/// guest memory as bytes.
///
/// # Safety
/// Implement only for types that satisfy all of the above.
pub unsafe trait Pod: Copy + Default + 'static {}

// SAFETY: each is #[repr(C)] with only u32/u64 fields (or arrays or structs
// of such) laid out without padding, as `layouts_are_stable` checks.
unsafe impl Pod for MemoryRegion {}
// SAFETY: as above.
unsafe impl Pod for GuestBuf {}
// SAFETY: as above.
unsafe impl Pod for ConsoleArgs {}
// SAFETY: as above.
unsafe impl Pod for ExitArgs {}
// SAFETY: as above.
unsafe impl Pod for PanicArgs {}
// SAFETY: as above.
unsafe impl Pod for FaultArgs {}
// SAFETY: as above.
unsafe impl Pod for ClockArgs {}
// SAFETY: as above.
unsafe impl Pod for BootInfo {}
// SAFETY: an integer has no padding and no invalid bit patterns.
unsafe impl Pod for u64 {}

impl Default for BootInfo {
    fn default() -> Self {
        BootInfo {
            magic: 0,
            abi_version: 0,
            vcpu_count: 0,
            ram_bytes: 0,
            memory_map_len: 0,
            argc: 0,
            args_addr: 0,
            args_len: 0,
            pml4_addr: 0,
            memory_map: [MemoryRegion::default(); MAX_MEMORY_REGIONS],
        }
    }
}

/// Arguments of [`Hypercall::Stats`]; written by the host.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct StatsArgs {
    /// VM exits taken so far by all vCPUs, not counting `Stats` calls
    /// themselves, so that the difference of two readings is exactly the
    /// exits taken in between.
    pub vm_exits: u64,
}

// SAFETY: #[repr(C)] with one u64 field.
unsafe impl Pod for StatsArgs {}

/// Longest file name accepted by [`Hypercall::FileOpen`].
pub const MAX_FILE_NAME: u64 = 256;
/// Largest buffer accepted by one [`Hypercall::FileRead`] or [`Hypercall::FileWrite`].
pub const MAX_FILE_IO: u64 = 16 << 20;

/// Arguments of [`Hypercall::FileOpen`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct FileOpenArgs {
    /// The name given on the command line (`--file NAME=PATH`), UTF-8.
    pub name: GuestBuf,
    /// Written by the host: a handle (> 0) on success, or a negative errno
    /// (`-ENOENT` for a name that was not authorised).
    pub status: i64,
}

/// Arguments of [`Hypercall::FileRead`] and [`Hypercall::FileWrite`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct FileIoArgs {
    pub handle: u64,
    /// Byte offset in the file.
    pub offset: u64,
    /// The guest buffer (physically contiguous, at most [`MAX_FILE_IO`] bytes).
    pub buf: GuestBuf,
    /// Written by the host: bytes transferred (a read past the end is short),
    /// or a negative errno.
    pub status: i64,
}

/// Arguments of [`Hypercall::FileFlush`] and [`Hypercall::FileSize`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct FileArgs {
    pub handle: u64,
    /// Written by the host: 0 (flush) or the size (size) on success, or a
    /// negative errno.
    pub status: i64,
}

// SAFETY: #[repr(C)], integer fields only, no padding.
unsafe impl Pod for FileOpenArgs {}
// SAFETY: as above.
unsafe impl Pod for FileIoArgs {}
// SAFETY: as above.
unsafe impl Pod for FileArgs {}

/// Arguments of [`Hypercall::NvmeInfo`]; written by the host.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct NvmeInfoArgs {
    /// Capacity in logical blocks (0: the VM has no disk).
    pub blocks: u64,
    /// Bytes per logical block.
    pub block_size: u64,
}

/// Arguments of [`Hypercall::NvmeCreateQueue`]: where the queue pair lives,
/// in guest-physical addresses (the layout of `dbos_nvme::QueuePairConfig`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct NvmeQueueArgs {
    pub sq_addr: u64,
    pub cq_addr: u64,
    pub doorbell_addr: u64,
    pub event_idx_addr: u64,
    pub depth: u64,
    /// Written by the host: the queue id (>= 0), or a negative errno
    /// (`-ENODEV` without a disk, `-EINVAL` for a bad layout).
    pub status: i64,
}

// SAFETY: #[repr(C)], integer fields only, no padding.
unsafe impl Pod for NvmeInfoArgs {}
// SAFETY: as above.
unsafe impl Pod for NvmeQueueArgs {}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hypercall_ports_round_trip() {
        for call in Hypercall::ALL {
            assert_eq!(Hypercall::from_port(call.port()), Some(call));
        }
        assert_eq!(Hypercall::from_port(HYPERCALL_PORT_BASE - 1), None);
        assert_eq!(Hypercall::from_port(HYPERCALL_PORT_BASE + 14), None);
        assert_eq!(Hypercall::from_port(0x3f8), None);
    }

    #[test]
    fn frozen_calls_keep_their_numbers() {
        assert_eq!(Hypercall::Console as u16, 0);
        assert_eq!(Hypercall::Exit as u16, 1);
        assert_eq!(Hypercall::Panic as u16, 2);
        assert_eq!(Hypercall::Fault as u16, 3);
    }

    #[test]
    fn layouts_are_stable() {
        assert_eq!(core::mem::size_of::<MemoryRegion>(), 24);
        assert_eq!(core::mem::size_of::<GuestBuf>(), 16);
        assert_eq!(core::mem::size_of::<PanicArgs>(), 40);
        assert_eq!(core::mem::size_of::<FaultArgs>(), 64);
        assert_eq!(
            core::mem::size_of::<BootInfo>(),
            56 + 24 * MAX_MEMORY_REGIONS
        );
    }

    #[test]
    fn abi_version_check() {
        assert!(check_abi_version(ABI_VERSION).is_ok());
        let err = check_abi_version(ABI_VERSION + 1).unwrap_err();
        assert_eq!(err.guest, ABI_VERSION);
        assert_eq!(err.hypervisor, ABI_VERSION + 1);
        let mut buf = [0u8; 128];
        let mut w = crate::fmtbuf::FmtBuf::new(&mut buf);
        core::fmt::Write::write_fmt(&mut w, format_args!("{err}")).unwrap();
        assert!(w
            .as_str()
            .contains("guest built for version 1, hypervisor provides version 2"));
    }

    #[test]
    fn memory_kinds_decode() {
        for k in 1..=5 {
            assert_eq!(MemoryKind::from_raw(k).unwrap() as u32, k);
        }
        assert_eq!(MemoryKind::from_raw(0), None);
        assert_eq!(MemoryKind::from_raw(6), None);
    }
}
