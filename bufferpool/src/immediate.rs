//! What a device that carries out each request when it is submitted needs
//! besides the I/O itself: the buffers it hands out (zeroed, 4 KiB aligned
//! heap allocations whose device address is their address, freed with the
//! device) and the results waiting to be polled, in submission order. The
//! in-memory device of the fuzz targets and tests
//! (`fuzzing::MemDevice`) and the caller-driven `direct::DirectDevice`
//! are built on it.

use crate::device::{DeviceError, IoBuf, IoTag, BLOCK_SIZE};
use alloc::collections::VecDeque;
use alloc::vec::Vec;
use core::alloc::Layout;
use dbos_nvme::DmaAddr;

/// Buffers handed out and results not yet polled.
#[derive(Default)]
pub(crate) struct Immediate {
    /// (address, layout) of every buffer handed out.
    bufs: Vec<(usize, Layout)>,
    done: VecDeque<(IoTag, Result<(), DeviceError>)>,
    next_tag: IoTag,
}

impl Immediate {
    /// A fresh zeroed buffer of `blocks` blocks (at least one).
    pub(crate) fn alloc(&mut self, blocks: usize) -> Result<IoBuf, DeviceError> {
        let layout = Layout::from_size_align(blocks.max(1) * BLOCK_SIZE, BLOCK_SIZE)
            .map_err(|_| DeviceError::OutOfDmaMemory(blocks))?;
        // SAFETY: a non-zero size.
        let ptr = unsafe { alloc::alloc::alloc_zeroed(layout) };
        if ptr.is_null() {
            return Err(DeviceError::OutOfDmaMemory(blocks));
        }
        self.bufs.push((ptr as usize, layout));
        Ok(IoBuf {
            ptr,
            addr: DmaAddr(ptr as u64),
            blocks,
        })
    }

    /// The memory of `len` bytes at `addr` if they lie inside one buffer
    /// handed out here.
    pub(crate) fn buffer(&self, addr: DmaAddr, len: usize) -> Option<*mut u8> {
        let a = usize::try_from(addr.0).ok()?;
        self.bufs
            .iter()
            .any(|&(p, l)| a >= p && a.checked_add(len).is_some_and(|e| e <= p + l.size()))
            .then_some(a as *mut u8)
    }

    /// Records the result of a request carried out now; returns its tag.
    pub(crate) fn complete(&mut self, result: Result<(), DeviceError>) -> IoTag {
        let tag = self.next_tag;
        self.next_tag = self.next_tag.wrapping_add(1);
        self.done.push_back((tag, result));
        tag
    }

    /// The oldest result not yet polled.
    pub(crate) fn poll(&mut self) -> Option<(IoTag, Result<(), DeviceError>)> {
        self.done.pop_front()
    }

    /// Results not yet polled.
    pub(crate) fn in_flight(&self) -> usize {
        self.done.len()
    }
}

impl Drop for Immediate {
    fn drop(&mut self) {
        for &(p, l) in &self.bufs {
            // SAFETY: allocated in `alloc` with this layout, freed once; the
            // device whose buffers they are is going away.
            unsafe { alloc::alloc::dealloc(p as *mut u8, l) };
        }
    }
}
