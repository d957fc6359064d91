//! Process mode: [`BlockDevice`](crate::BlockDevice)s over
//! `dbos_nvme::host::process` queue pairs (the real driver, poller and
//! io_uring on an `O_DIRECT` file), the host [`Env`], and the kernel's
//! count of TLB shootdowns ([`tlb_shootdowns`]).

use crate::device::{DmaAllocator, IoBuf, NvmeDevice, QueueAccess};
use crate::{Env, Sleep};
use dbos_nvme::host::{
    Device, DeviceError, EventFdDoorbell, InlineDevice, InlineDoorbell, InlineQueuePair,
    ProcessMemory, ProcessQueuePair,
};
use dbos_nvme::QueuePair;
use std::sync::atomic::AtomicU32;
use std::sync::Arc;

impl QueueAccess for ProcessQueuePair {
    type Doorbell = EventFdDoorbell;
    fn queue(&mut self) -> &mut QueuePair<EventFdDoorbell> {
        self
    }
    fn queue_ref(&self) -> &QueuePair<EventFdDoorbell> {
        self
    }

    /// Polls a moment, then sleeps until the poller posts a completion (it
    /// wakes this queue's waker): no spinning against the poller thread.
    fn wait_for_completion(&mut self, _relax: fn()) {
        ProcessQueuePair::wait_for_completion(self);
    }
}

impl QueueAccess for InlineQueuePair {
    type Doorbell = InlineDoorbell;
    fn queue(&mut self) -> &mut QueuePair<InlineDoorbell> {
        self
    }
    fn queue_ref(&self) -> &QueuePair<InlineDoorbell> {
        self
    }

    /// Runs the queue pair's host in this thread until a completion is
    /// posted, blocking in the kernel while only I/O is outstanding
    /// (`dbos_nvme::host::inline`).
    fn wait_for_completion(&mut self, _relax: fn()) {
        InlineQueuePair::wait_for_completion(self);
    }

    /// Runs a turn of the host (a poll of the bare ring would never see
    /// a completion otherwise).
    fn progress(&mut self) {
        InlineQueuePair::progress(self);
    }
}

/// Buffers carved from a process device's registered region.
pub struct RegionAlloc(pub Arc<ProcessMemory>);

// SAFETY: ProcessMemory::alloc hands out disjoint, 4 KiB aligned pieces of
// its registered mapping (device address = host address), never reused,
// mapped as long as the Arc lives.
unsafe impl DmaAllocator for RegionAlloc {
    fn alloc(&mut self, bytes: usize) -> Option<IoBuf> {
        let b = self.0.alloc(bytes)?;
        Some(IoBuf {
            ptr: b.ptr,
            addr: b.addr,
            blocks: b.len / crate::device::BLOCK_SIZE,
        })
    }
}

/// A block device on a process-mode queue pair.
pub type ProcessBlockDevice = NvmeDevice<ProcessQueuePair, RegionAlloc>;

/// A new queue pair of `depth` entries on `dev`, as a block device.
pub fn block_device(dev: &Device, depth: u16) -> Result<ProcessBlockDevice, DeviceError> {
    let qp = dev.queue_pair(depth)?;
    Ok(NvmeDevice::new(
        qp,
        RegionAlloc(dev.memory().clone()),
        dev.blocks(),
    ))
}

/// A block device on an owner-driven queue pair (its host runs in the
/// thread using it: `dbos_nvme::host::inline`).
pub type InlineBlockDevice = NvmeDevice<InlineQueuePair, RegionAlloc>;

/// A new owner-driven queue pair of `depth` entries on `dev`, as a block
/// device.
pub fn inline_block_device(
    dev: &InlineDevice,
    depth: u16,
) -> Result<InlineBlockDevice, DeviceError> {
    let qp = dev.queue_pair(depth)?;
    Ok(NvmeDevice::new(
        qp,
        RegionAlloc(dev.memory().clone()),
        dev.blocks(),
    ))
}

/// `CLOCK_MONOTONIC` in nanoseconds (time since boot, so that it also
/// makes a reasonable format id).
fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec we pass and nothing else.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// The process platform: waits yield the CPU (threads may outnumber
/// cores), a long wait sleeps on a futex, the clock is `CLOCK_MONOTONIC`.
pub fn env() -> Env {
    Env {
        relax: std::thread::yield_now,
        now_ns: monotonic_ns,
        sleep: Some(Sleep {
            wait: futex_wait,
            wake_all: futex_wake_all,
        }),
    }
}

/// Sleeps while `word` holds `expected`, at most 10 ms (a missed wake-up
/// would cost time, never a hang).
fn futex_wait(word: &AtomicU32, expected: u32) {
    let timeout = libc::timespec {
        tv_sec: 0,
        tv_nsec: 10_000_000,
    };
    // SAFETY: FUTEX_WAIT reads the aligned u32 behind `word`, which lives
    // for the call, and the timespec we pass; it writes nothing of ours.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAIT | libc::FUTEX_PRIVATE_FLAG,
            expected,
            &timeout as *const libc::timespec,
        )
    };
}

/// Wakes every thread sleeping on `word`.
fn futex_wake_all(word: &AtomicU32) {
    // SAFETY: FUTEX_WAKE only uses the address as a key.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAKE | libc::FUTEX_PRIVATE_FLAG,
            i32::MAX,
        )
    };
}

/// The sum of the `TLB:` line of /proc/interrupts: TLB shootdown IPIs
/// received by all CPUs since boot (the whole machine's, every process's).
/// `None` where the kernel does not show it.
pub fn tlb_shootdowns() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/interrupts").ok()?;
    let line = s.lines().find(|l| l.trim_start().starts_with("TLB:"))?;
    Some(
        line.split_whitespace()
            .skip(1)
            .map_while(|x| x.parse::<u64>().ok())
            .sum(),
    )
}
