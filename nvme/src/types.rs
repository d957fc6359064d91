//! Typed values and limits shared by the driver and the host.

/// Block size, page size and queue-depth limits are part of the host/guest
/// ABI (`dbos_abi`): a logical block (the LBA unit) is one 4 KiB page, and
/// data pointers and queue bases are page aligned.
pub use dbos_abi::nvme::{BLOCK_SHIFT, BLOCK_SIZE, MAX_DEPTH, MIN_DEPTH};
pub use dbos_abi::PAGE_SIZE;

/// The one namespace served.
pub const NSID: u32 = 1;

/// NSID value addressing all namespaces (accepted by flush only).
pub const NSID_ALL: u32 = 0xffff_ffff;

/// Largest transfer of one command, in blocks (1 MiB). Larger transfers get
/// [`crate::NvmeError::InvalidField`], as NVMe's MDTS limit prescribes.
pub const MAX_TRANSFER_BLOCKS: u32 = 256;

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
