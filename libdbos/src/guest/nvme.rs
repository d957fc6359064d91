//! The NVMe disk, from the guest: queue pairs in guest RAM served by the
//! VMM's poller thread (`dbos run --disk PATH`).
//!
//! [`queue_pair`] allocates the rings in DMA memory ([`crate::dma`]:
//! physically contiguous, 4 KiB aligned, declared to the host), registers
//! them with the host by a hypercall and returns a
//! `dbos_nvme` driver whose real doorbell is the [`calls::NvmeDoorbell`]
//! exit. Data buffers must be 4 KiB aligned and physically contiguous (the
//! heap, the direct map, or a frame): [`dma`] gives their device address.
//!
//! A queue pair is given back to the host when it is dropped, and its
//! rings are freed then.

use crate::abi::net::QueueIdArgs;
use crate::abi::{calls, DoorbellArgs, NvmeInfoArgs, NvmeQueueArgs};
use crate::hypercall;
use crate::memory::virt_to_phys;
use core::sync::atomic::{AtomicU32, Ordering};
use dbos_nvme::{DmaAddr, Doorbell, DriverError, QueueLayout, QueueMemory, QueuePair};

/// The exiting doorbell: one VM exit that wakes the host's parked poller.
#[derive(Clone, Copy, Debug, Default)]
pub struct HypercallDoorbell;

/// Polls of the completion ring before a waiting CPU sleeps: in the
/// emulated ring 0 of the development machines each poll is some
/// microseconds, so a completion already on its way is caught without a
/// sleep, and a slow one costs no more spinning.
const POLLS_BEFORE_SLEEP: u32 = 8;

impl Doorbell for HypercallDoorbell {
    fn ring(&self) {
        // The host reads no argument block for this call.
        hypercall::call(calls::NvmeDoorbell, &mut DoorbellArgs {});
    }

    /// Sleeps in `hlt` until the host's completion interrupt
    /// ([`sleep_until_woken`]).
    fn sleep(&self, waiting: &AtomicU32, ready: &dyn Fn() -> bool) -> bool {
        sleep_until_woken(waiting, ready)
    }
}

/// Sleeps in `hlt` until a queue's completion interrupt, for the disk's
/// and the network's queue pairs: polls `ready` a few times, then raises
/// `waiting` (the queue's waiting word, `dbos_abi::nvme::WAIT_WORD`),
/// checks `ready` once more and halts until the host's
/// [`vector::WAKE`](crate::apic::vector::WAKE) (which only ends the `hlt`).
/// Returns `false` without sleeping when a poll found work or interrupts
/// are off (the caller polls).
///
/// Invariant: interrupts are off from raising `waiting` until `sti; hlt`,
/// which enables them only for the `hlt` itself, so an interrupt sent
/// after the last look at the ring cannot be taken before the `hlt` (it
/// wakes it). The host posts the completion, fences, then swaps the word:
/// either it sees the word raised and interrupts, or the last look sees
/// the completion. The `hlt` is served by KVM in the kernel (in-kernel
/// irqchip): no exit to the VMM.
pub fn sleep_until_woken(waiting: &AtomicU32, ready: &dyn Fn() -> bool) -> bool {
    for _ in 0..POLLS_BEFORE_SLEEP {
        if ready() {
            return false;
        }
        core::hint::spin_loop();
    }
    // With interrupts off (an exception or interrupt handler, on its IST
    // stack; a lock that must not be interrupted) the caller spins:
    // enabling them there could nest an interrupt on the same stack.
    if !x86_64::instructions::interrupts::are_enabled() {
        return false;
    }
    x86_64::instructions::interrupts::disable();
    let me = crate::percpu::cpu_id() + 1;
    waiting.store(me, Ordering::SeqCst);
    if ready() {
        waiting.store(0, Ordering::SeqCst);
    } else {
        x86_64::instructions::interrupts::enable_and_hlt();
        // The host cleared it when it sent the interrupt; another
        // interrupt (a TLB shootdown, say) may have ended the `hlt`.
        waiting.store(0, Ordering::SeqCst);
    }
    x86_64::instructions::interrupts::enable();
    true
}

/// A queue pair of the guest's disk: the driver, and the ring memory it
/// owns. Dropping it gives it back to the host
/// ([`calls::NvmeDestroyQueue`]: the host finishes its outstanding
/// commands and stops serving it) and then frees the rings.
pub struct GuestQueuePair {
    qp: QueuePair<HypercallDoorbell>,
    ring: crate::dma::DmaBuf,
    id: u64,
}

impl core::ops::Deref for GuestQueuePair {
    type Target = QueuePair<HypercallDoorbell>;
    fn deref(&self) -> &Self::Target {
        &self.qp
    }
}

impl core::ops::DerefMut for GuestQueuePair {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.qp
    }
}

impl GuestQueuePair {
    /// The id the host gave the queue pair.
    pub fn id(&self) -> u64 {
        self.id
    }
}

impl Drop for GuestQueuePair {
    /// Gives the queue pair back, then frees its rings; if the host does
    /// not confirm, the rings are kept (leaked) rather than freed under it.
    fn drop(&mut self) {
        let mut args = QueueIdArgs {
            queue: self.id,
            status: 0,
        };
        hypercall::call(calls::NvmeDestroyQueue, &mut args);
        if args.status < 0 {
            log::error!(
                "nvme: the host did not give back queue pair {} (errno {}); its rings are kept",
                self.id,
                -args.status
            );
            return;
        }
        // SAFETY: the host no longer touches the rings (the call returned
        // after its outstanding commands completed), and they came from
        // `dma::alloc` unchanged.
        unsafe { crate::dma::free(self.ring) };
    }
}

/// The disk as the host describes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DiskInfo {
    pub blocks: u64,
    pub block_size: u64,
}

/// Why a queue pair could not be set up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SetupError {
    /// The VM has no disk.
    NoDisk,
    /// The depth is outside what the queue format allows.
    Driver(DriverError),
    /// No heap memory for the rings.
    OutOfMemory,
    /// The host refused the queue pair (negative errno).
    Refused(i64),
}

/// The VM's disk, `None` if it has none.
pub fn info() -> Option<DiskInfo> {
    let mut args = NvmeInfoArgs::default();
    hypercall::call(calls::NvmeInfo, &mut args);
    (args.blocks > 0).then_some(DiskInfo {
        blocks: args.blocks,
        block_size: args.block_size,
    })
}

/// The device address of a buffer in memory the host can address
/// contiguously (heap, direct map, image).
pub fn dma(ptr: *const u8) -> Option<DmaAddr> {
    virt_to_phys(ptr as u64).map(DmaAddr)
}

/// Creates a queue pair of `depth` entries and registers it with the host.
pub fn queue_pair(depth: u16) -> Result<GuestQueuePair, SetupError> {
    if info().is_none() {
        return Err(SetupError::NoDisk);
    }
    let layout = QueueLayout::new(depth).ok_or(SetupError::Driver(DriverError::Depth(depth)))?;
    // DMA memory (declared to the host), freed when the queue pair is
    // given back.
    let ring = crate::dma::alloc(layout.size() as usize).ok_or(SetupError::OutOfMemory)?;
    let (virt, phys) = (ring.virt, ring.phys);
    let mem = QueueMemory {
        virt,
        dma: DmaAddr(phys),
    };
    // SAFETY: `virt` is `layout.size()` bytes of DMA memory owned by this
    // queue pair alone (freed only after the host gave it back), and
    // `phys` is its guest-physical address: DMA buffers are physically
    // contiguous, in the direct map.
    let mut qp = match unsafe { QueuePair::new(mem, depth, HypercallDoorbell) } {
        Ok(qp) => qp,
        Err(e) => {
            // SAFETY: nothing was registered; the ring is unused.
            unsafe { crate::dma::free(ring) };
            return Err(SetupError::Driver(e));
        }
    };
    // A CPU waiting for a completion sleeps until the host sends WAKE.
    qp.set_interrupt(crate::apic::vector::WAKE);
    let mut args = NvmeQueueArgs {
        queue: qp.config(),
        status: 0,
    };
    hypercall::call(calls::NvmeCreateQueue, &mut args);
    if args.status < 0 {
        // SAFETY: the host refused the rings and never touches them.
        unsafe { crate::dma::free(ring) };
        return Err(SetupError::Refused(args.status));
    }
    Ok(GuestQueuePair {
        qp,
        ring,
        id: args.status as u64,
    })
}
