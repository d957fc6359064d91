//! Guest mode: [`BlockDevice`](crate::BlockDevice)s over libdbos's NVMe
//! queue pairs (`libdbos::nvme`), with buffers from libdbos's DMA memory
//! (`libdbos::dma`: declared to the host, so their I/O uses fixed buffers).

use crate::device::{DmaAllocator, IoBuf, NvmeDevice, QueueAccess, BLOCK_SIZE};
use dbos_nvme::{DmaAddr, QueuePair};
use libdbos::nvme::{self, GuestQueuePair, HypercallDoorbell, SetupError};

impl QueueAccess for GuestQueuePair {
    type Doorbell = HypercallDoorbell;
    fn queue(&mut self) -> &mut QueuePair<HypercallDoorbell> {
        self
    }
    fn queue_ref(&self) -> &QueuePair<HypercallDoorbell> {
        self
    }

    /// Sleeps until the host's completion interrupt where it can (see
    /// `libdbos::nvme::sleep_until_woken`), else `relax`.
    fn wait_for_completion(&mut self, relax: fn()) {
        if !self.sleep_until_completion() {
            relax();
        }
    }
}

/// Buffers from libdbos's DMA memory: 4 KiB aligned, physically contiguous,
/// zeroed. Never freed, as the device contract says.
pub struct GuestDma;

// SAFETY: every buffer is fresh DMA memory of at least the requested size,
// 4 KiB aligned, physically contiguous (in the direct map), owned by nobody
// else and never freed, and its `addr` is its guest-physical address, which
// is what the host's poller expects.
unsafe impl DmaAllocator for GuestDma {
    fn alloc(&mut self, bytes: usize) -> Option<IoBuf> {
        let buf = libdbos::dma::alloc_zeroed(bytes)?;
        Some(IoBuf {
            ptr: buf.virt,
            addr: DmaAddr(buf.phys),
            blocks: buf.len / BLOCK_SIZE,
        })
    }
}

/// A device over one guest queue pair.
pub type GuestDevice = NvmeDevice<GuestQueuePair, GuestDma>;

/// A device over a new queue pair of `depth` entries to the VM's disk,
/// whose first `blocks` blocks it addresses.
pub fn device(depth: u16, blocks: u64) -> Result<GuestDevice, SetupError> {
    Ok(NvmeDevice::new(nvme::queue_pair(depth)?, GuestDma, blocks))
}
