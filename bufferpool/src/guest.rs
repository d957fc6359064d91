//! Guest mode: [`BlockDevice`](crate::BlockDevice)s over libdbos's NVMe
//! queue pairs (`libdbos::nvme`), with DMA buffers from the guest heap.

use crate::device::{DmaAllocator, IoBuf, NvmeDevice, BLOCK_SIZE};
use libdbos::nvme::{self, dma, GuestQueuePair, SetupError};

/// DMA buffers from the guest heap: 4 KiB aligned and physically contiguous
/// (the heap lives in the direct map). Never freed, as the device contract
/// says.
pub struct HeapDma;

// SAFETY: every buffer is fresh heap memory of the requested size, 4 KiB
// aligned, physically contiguous, owned by nobody else, and its `addr` is its
// guest-physical address, which is what the host's poller expects.
unsafe impl DmaAllocator for HeapDma {
    fn alloc(&mut self, bytes: usize) -> Option<IoBuf> {
        let bytes = bytes.max(1).next_multiple_of(BLOCK_SIZE);
        let layout = core::alloc::Layout::from_size_align(bytes, BLOCK_SIZE).ok()?;
        // SAFETY: non-zero size.
        let ptr = unsafe { alloc::alloc::alloc_zeroed(layout) };
        if ptr.is_null() {
            return None;
        }
        Some(IoBuf {
            ptr,
            addr: dma(ptr)?,
            blocks: bytes / BLOCK_SIZE,
        })
    }
}

/// A device over one guest queue pair.
pub type GuestDevice = NvmeDevice<GuestQueuePair, HeapDma>;

/// A device over a new queue pair of `depth` entries to the VM's disk,
/// whose first `blocks` blocks it addresses.
pub fn device(depth: u16, blocks: u64) -> Result<GuestDevice, SetupError> {
    Ok(NvmeDevice::new(nvme::queue_pair(depth)?, HeapDma, blocks))
}
