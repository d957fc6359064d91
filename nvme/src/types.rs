//! Typed values and limits shared by the driver and the host.

/// Size of one logical block in bytes (the LBA unit): 4 KiB.
pub const BLOCK_SIZE: u64 = 4096;

/// log2 of [`BLOCK_SIZE`].
pub const BLOCK_SHIFT: u32 = 12;

/// Memory page size for data pointers and queue placement (PRP entries,
/// queue bases): 4 KiB.
pub const PAGE_SIZE: u64 = 4096;

/// The one namespace served.
pub const NSID: u32 = 1;

/// NSID value addressing all namespaces (accepted by flush only).
pub const NSID_ALL: u32 = 0xffff_ffff;

/// Largest transfer of one command, in blocks (1 MiB). Larger transfers get
/// [`crate::NvmeError::InvalidField`], as NVMe's MDTS limit prescribes.
pub const MAX_TRANSFER_BLOCKS: u32 = 256;

/// Largest queue depth (entries per ring).
pub const MAX_DEPTH: u16 = 4096;

/// Smallest queue depth: a ring of 2 holds one entry.
pub const MIN_DEPTH: u16 = 2;

/// A logical block address (in units of [`BLOCK_SIZE`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Lba(pub u64);

impl Lba {
    /// Byte offset of this block in the namespace (saturating).
    pub fn byte_offset(self) -> u64 {
        self.0.saturating_mul(BLOCK_SIZE)
    }
}

/// A command identifier, unique among a queue's outstanding commands.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CommandId(pub u16);

/// A queue-pair identifier assigned by the host (the SQ identifier of
/// completion entries).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct QueueId(pub u16);

/// An address in the device's view of memory: guest-physical in a VM, the
/// process's virtual address inside the registered region in process mode.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DmaAddr(pub u64);

impl DmaAddr {
    /// The address `bytes` further on (wrapping; the host checks ranges).
    pub fn offset(self, bytes: u64) -> DmaAddr {
        DmaAddr(self.0.wrapping_add(bytes))
    }
    /// Whether the address is [`PAGE_SIZE`] aligned.
    pub fn is_page_aligned(self) -> bool {
        self.0.is_multiple_of(PAGE_SIZE)
    }
}
