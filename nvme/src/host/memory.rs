//! The memory the host serves: device addresses, their host mappings, and
//! the io_uring fixed buffers they are registered as.
//!
//! In the VMM a device address is guest-physical and guest RAM is one or two
//! host mappings; in process mode it is the process's own virtual address
//! inside one registered region ([`ProcessMemory`]). Every queue location and
//! every data pointer is checked against a [`DmaMemory`] before the host
//! touches it or hands it to the kernel.

use crate::types::{DmaAddr, PAGE_SIZE};
use std::any::Any;
use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::vec::Vec;

/// Largest fixed buffer io_uring accepts in one iovec (1 GiB): larger
/// regions are registered as several buffer indexes.
pub const MAX_FIXED_BUFFER: u64 = 1 << 30;

/// Most fixed buffers io_uring accepts (`IORING_MAX_REG_BUFFERS`).
pub const MAX_FIXED_BUFFERS: usize = 1 << 14;

/// One range of device addresses and the host mapping behind it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DmaRegion {
    /// First device address (4 KiB aligned).
    pub addr: u64,
    /// Host address of `addr` (4 KiB aligned).
    pub host: *mut u8,
    /// Length in bytes (a non-zero multiple of 4 KiB).
    pub len: u64,
}

/// A set of regions that cannot be served.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MemoryError {
    #[error("no memory regions")]
    Empty,
    #[error("region at device address {addr:#x} (host {host:#x}, {len:#x} bytes) is empty or not 4 KiB aligned")]
    Misaligned { addr: u64, host: u64, len: u64 },
    #[error("region at device address {addr:#x} wraps the address space")]
    Wraps { addr: u64 },
    #[error("regions at device addresses {a:#x} and {b:#x} overlap")]
    Overlap { a: u64, b: u64 },
    #[error("{0} fixed buffers needed, io_uring takes at most {MAX_FIXED_BUFFERS}")]
    TooManyBuffers(usize),
}

/// A piece of a transfer inside one fixed buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HostBuf {
    /// Host address.
    pub ptr: *mut u8,
    /// Length in bytes.
    pub len: u32,
    /// The io_uring fixed buffer that contains all of it, if one does
    /// (set by the poller from its registered buffers, `crate::host::fixed`):
    /// the operation then uses the fixed-buffer opcodes, else the plain ones.
    pub fixed: Option<u16>,
}

// SAFETY: a HostBuf is an address, not a borrow; whoever dereferences it
// must respect DmaMemory's contract.
unsafe impl Send for HostBuf {}

#[derive(Debug)]
struct Region {
    addr: u64,
    host: *mut u8,
    len: u64,
}

/// The validated memory the host serves.
pub struct DmaMemory {
    regions: Vec<Region>,
    buffers: Vec<(*mut u8, u64)>,
    _owner: Option<Arc<dyn Any + Send + Sync>>,
}

// SAFETY: DmaMemory holds addresses of shared memory whose lifetime its
// creator vouched for; all accesses through it are volatile or atomic, or
// are handed to the kernel.
unsafe impl Send for DmaMemory {}
// SAFETY: as above; DmaMemory is immutable after construction.
unsafe impl Sync for DmaMemory {}

impl std::fmt::Debug for DmaMemory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DmaMemory")
            .field("regions", &self.regions)
            .field("buffers", &self.buffers.len())
            .finish()
    }
}

impl DmaMemory {
    /// Validates `regions` (4 KiB aligned, non-empty, disjoint in device
    /// address space) and splits them into fixed buffers of at most
    /// [`MAX_FIXED_BUFFER`] bytes.
    ///
    /// # Safety
    /// Every region's host range must be mapped readable and writable for as
    /// long as this `DmaMemory` (or any `Arc` of it) lives, and may be shared
    /// with an untrusted writer (the guest) but must not be Rust-borrowed
    /// memory of the host.
    pub unsafe fn new(regions: &[DmaRegion]) -> Result<DmaMemory, MemoryError> {
        if regions.is_empty() {
            return Err(MemoryError::Empty);
        }
        let mut sorted: Vec<DmaRegion> = regions.to_vec();
        sorted.sort_by_key(|r| r.addr);
        let mut out = Vec::with_capacity(sorted.len());
        let mut buffers = Vec::new();
        for (i, r) in sorted.iter().enumerate() {
            if r.len == 0
                || r.addr % PAGE_SIZE != 0
                || !(r.host as u64).is_multiple_of(PAGE_SIZE)
                || r.len % PAGE_SIZE != 0
            {
                return Err(MemoryError::Misaligned {
                    addr: r.addr,
                    host: r.host as u64,
                    len: r.len,
                });
            }
            if r.addr.checked_add(r.len).is_none() || (r.host as u64).checked_add(r.len).is_none() {
                return Err(MemoryError::Wraps { addr: r.addr });
            }
            if i > 0 && sorted[i - 1].addr + sorted[i - 1].len > r.addr {
                return Err(MemoryError::Overlap {
                    a: sorted[i - 1].addr,
                    b: r.addr,
                });
            }
            out.push(Region {
                addr: r.addr,
                host: r.host,
                len: r.len,
            });
            let mut off = 0;
            while off < r.len {
                let len = (r.len - off).min(MAX_FIXED_BUFFER);
                buffers.push((r.host.wrapping_add(off as usize), len));
                off += len;
            }
        }
        if buffers.len() > MAX_FIXED_BUFFERS {
            return Err(MemoryError::TooManyBuffers(buffers.len()));
        }
        Ok(DmaMemory {
            regions: out,
            buffers,
            _owner: None,
        })
    }

    /// The memory of one [`ProcessMemory`], whose device addresses are its
    /// host addresses; keeps the mapping alive.
    pub fn from_process(mem: Arc<ProcessMemory>) -> Result<DmaMemory, MemoryError> {
        // SAFETY: the mapping lives as long as the Arc, which we keep.
        let dma = unsafe { DmaMemory::new(&[mem.region()])? };
        Ok(dma.with_owner(mem))
    }

    /// Keeps `owner` (say, the object owning the mappings) alive as long as
    /// this memory.
    pub fn with_owner(mut self, owner: Arc<dyn Any + Send + Sync>) -> DmaMemory {
        self._owner = Some(owner);
        self
    }

    /// The regions, sorted by device address.
    pub fn regions(&self) -> impl Iterator<Item = DmaRegion> + '_ {
        self.regions.iter().map(|r| DmaRegion {
            addr: r.addr,
            host: r.host,
            len: r.len,
        })
    }

    /// The fixed buffers to register, in buffer-index order: (host, len).
    pub fn fixed_buffers(&self) -> &[(*mut u8, u64)] {
        &self.buffers
    }

    fn region_of(&self, addr: u64, len: u64) -> Option<&Region> {
        let end = addr.checked_add(len)?;
        self.regions
            .iter()
            .find(|r| addr >= r.addr && end <= r.addr + r.len)
    }

    /// The host address of `[addr, addr + len)`, if the whole range is
    /// inside one region and `len > 0`.
    pub fn host_ptr(&self, addr: DmaAddr, len: u64) -> Option<*mut u8> {
        if len == 0 {
            return None;
        }
        let r = self.region_of(addr.0, len)?;
        Some(r.host.wrapping_add((addr.0 - r.addr) as usize))
    }

    /// Appends the host pieces of `[addr, addr + len)` to `out` (split at
    /// the boundaries of [`DmaMemory::fixed_buffers`], so that each piece
    /// lies in one buffer when all the memory is registered), with no
    /// fixed buffer chosen yet. Returns `false`, appending nothing, unless
    /// the whole range is inside one region.
    pub fn map_range(&self, addr: DmaAddr, len: u32, out: &mut Vec<HostBuf>) -> bool {
        let Some(r) = self.region_of(addr.0, len as u64).filter(|_| len > 0) else {
            return false;
        };
        let mut off = addr.0 - r.addr;
        let end = off + len as u64;
        while off < end {
            let index = (off / MAX_FIXED_BUFFER) as usize;
            let take = (end - off).min((index as u64 + 1) * MAX_FIXED_BUFFER - off);
            out.push(HostBuf {
                ptr: r.host.wrapping_add(off as usize),
                len: take as u32,
                fixed: None,
            });
            off += take;
        }
        true
    }
}

/// An anonymous memory region of this process, the registered region of
/// process mode. Device addresses inside it are its host addresses. Buffers
/// and queue memory are carved from it with [`ProcessMemory::alloc`] (a bump
/// allocator: carved memory is not reused).
pub struct ProcessMemory {
    ptr: *mut u8,
    len: usize,
    next: AtomicUsize,
}

// SAFETY: the region is plain memory owned by this object; handing out
// disjoint pieces through an atomic bump pointer is thread safe.
unsafe impl Send for ProcessMemory {}
// SAFETY: as above.
unsafe impl Sync for ProcessMemory {}

impl ProcessMemory {
    /// Maps `len` bytes (rounded up to 4 KiB) of zeroed anonymous memory.
    pub fn new(len: usize) -> io::Result<ProcessMemory> {
        let len = len.div_ceil(PAGE_SIZE as usize).max(1) * PAGE_SIZE as usize;
        // SAFETY: an anonymous private mapping with no address hint does not
        // affect any existing memory.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(ProcessMemory {
            ptr: ptr.cast(),
            len,
            next: AtomicUsize::new(0),
        })
    }

    /// The whole region as a [`DmaRegion`].
    pub fn region(&self) -> DmaRegion {
        DmaRegion {
            addr: self.ptr as u64,
            host: self.ptr,
            len: self.len as u64,
        }
    }

    /// Size in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the region is empty (never: at least one page is mapped).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bytes not yet carved.
    pub fn remaining(&self) -> usize {
        self.len - self.next.load(Ordering::Relaxed).min(self.len)
    }

    /// Carves `len` bytes (rounded up to 4 KiB), 4 KiB aligned; `None` when
    /// the region is exhausted.
    pub fn alloc(&self, len: usize) -> Option<DmaBuf> {
        let len = len.max(1).checked_next_multiple_of(PAGE_SIZE as usize)?;
        let off = self
            .next
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                n.checked_add(len).filter(|&e| e <= self.len)
            })
            .ok()?;
        let ptr = self.ptr.wrapping_add(off);
        Some(DmaBuf {
            ptr,
            addr: DmaAddr(ptr as u64),
            len,
        })
    }
}

impl Drop for ProcessMemory {
    fn drop(&mut self) {
        // SAFETY: we mapped exactly this range in `new`.
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}

/// A 4 KiB aligned piece of a [`ProcessMemory`].
///
/// Its contents are shared with the device: do not read or write it while
/// a command using it is outstanding.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DmaBuf {
    /// Host address.
    pub ptr: *mut u8,
    /// Device address (equal to `ptr` in process mode).
    pub addr: DmaAddr,
    /// Length in bytes.
    pub len: usize,
}

// SAFETY: a DmaBuf names memory owned by a ProcessMemory; its accessors copy
// with raw pointers and check bounds.
unsafe impl Send for DmaBuf {}

impl DmaBuf {
    /// Device address of 4 KiB page `i` of the buffer.
    pub fn page(&self, i: usize) -> DmaAddr {
        self.addr.offset(i as u64 * PAGE_SIZE)
    }

    /// Copies `data` into the buffer at `offset`; `false` if out of bounds.
    pub fn write(&self, offset: usize, data: &[u8]) -> bool {
        if offset.checked_add(data.len()).is_none_or(|e| e > self.len) {
            return false;
        }
        // SAFETY: in bounds of memory owned by the ProcessMemory.
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), self.ptr.add(offset), data.len()) };
        true
    }

    /// Copies from the buffer at `offset` into `out`; `false` if out of bounds.
    pub fn read(&self, offset: usize, out: &mut [u8]) -> bool {
        if offset.checked_add(out.len()).is_none_or(|e| e > self.len) {
            return false;
        }
        // SAFETY: in bounds of memory owned by the ProcessMemory.
        unsafe { std::ptr::copy_nonoverlapping(self.ptr.add(offset), out.as_mut_ptr(), out.len()) };
        true
    }

    /// Fills the whole buffer with `byte`.
    pub fn fill(&self, byte: u8) {
        // SAFETY: in bounds of memory owned by the ProcessMemory.
        unsafe { std::ptr::write_bytes(self.ptr, byte, self.len) };
    }

    /// The buffer's contents as a vector.
    pub fn to_vec(&self) -> Vec<u8> {
        let mut v = std::vec![0; self.len];
        self.read(0, &mut v);
        v
    }
}

#[cfg(test)]
// The tests drive queues by hand on memory each test allocates and owns.
#[allow(clippy::undocumented_unsafe_blocks)]
mod tests {
    use super::*;

    fn region(addr: u64, host: u64, len: u64) -> DmaRegion {
        DmaRegion {
            addr,
            host: host as *mut u8,
            len,
        }
    }

    #[test]
    fn validates_regions() {
        let m = |r: &[DmaRegion]| unsafe { DmaMemory::new(r) }.map(|_| ());
        assert_eq!(m(&[]), Err(MemoryError::Empty));
        assert_eq!(
            m(&[region(0x1000, 0x10_0800, 0x1000)]),
            Err(MemoryError::Misaligned {
                addr: 0x1000,
                host: 0x10_0800,
                len: 0x1000
            })
        );
        assert_eq!(
            m(&[region(0, 0x10_0000, 0)]),
            Err(MemoryError::Misaligned {
                addr: 0,
                host: 0x10_0000,
                len: 0
            })
        );
        assert_eq!(
            m(&[
                region(0x3000, 0x20_0000, 0x1000),
                region(0x1000, 0x10_0000, 0x3000)
            ]),
            Err(MemoryError::Overlap {
                a: 0x1000,
                b: 0x3000
            })
        );
        assert_eq!(
            m(&[region(u64::MAX - 0xfff, 0x10_0000, 0x2000)]),
            Err(MemoryError::Wraps {
                addr: u64::MAX - 0xfff
            })
        );
    }

    #[test]
    fn translates_and_splits_at_buffer_boundaries() {
        // Two regions like a VM's: [0, 3 GiB) and [4 GiB, 4.5 GiB). Host
        // addresses are never dereferenced here.
        let g = 1u64 << 30;
        let low = region(0, 0x7000_0000_0000, 3 * g);
        let high = region(4 * g, 0x7100_0000_0000, g / 2);
        let mem = unsafe { DmaMemory::new(&[high, low]) }.unwrap();
        assert_eq!(mem.fixed_buffers().len(), 4);
        assert_eq!(
            mem.fixed_buffers()[1],
            ((0x7000_0000_0000u64 + g) as *mut u8, g)
        );
        assert_eq!(
            mem.fixed_buffers()[3],
            (0x7100_0000_0000u64 as *mut u8, g / 2)
        );
        assert_eq!(
            mem.host_ptr(DmaAddr(0x2000), 8),
            Some(0x7000_0000_2000u64 as *mut u8)
        );
        assert_eq!(
            mem.host_ptr(DmaAddr(4 * g + 0x1000), 4096),
            Some(0x7100_0000_1000u64 as *mut u8)
        );
        assert_eq!(mem.host_ptr(DmaAddr(3 * g), 4096), None);
        assert_eq!(mem.host_ptr(DmaAddr(3 * g - 4096), 8192), None);
        assert_eq!(mem.host_ptr(DmaAddr(u64::MAX - 3), 8), None);
        assert_eq!(mem.host_ptr(DmaAddr(0), 0), None);
        let mut out = Vec::new();
        assert!(mem.map_range(DmaAddr(g - 4096), 3 * 4096, &mut out));
        assert_eq!(
            out,
            [
                HostBuf {
                    ptr: (0x7000_0000_0000u64 + g - 4096) as *mut u8,
                    len: 4096,
                    fixed: None
                },
                HostBuf {
                    ptr: (0x7000_0000_0000u64 + g) as *mut u8,
                    len: 8192,
                    fixed: None
                },
            ]
        );
        out.clear();
        assert!(mem.map_range(DmaAddr(4 * g + 8192), 4096, &mut out));
        assert_eq!(
            out,
            [HostBuf {
                ptr: 0x7100_0000_2000u64 as *mut u8,
                len: 4096,
                fixed: None
            }]
        );
        out.clear();
        assert!(!mem.map_range(DmaAddr(3 * g - 4096), 8192, &mut out));
        assert!(!mem.map_range(DmaAddr(4 * g + g / 2), 4096, &mut out));
        assert!(out.is_empty());
    }

    #[test]
    fn process_memory_carves_aligned_buffers() {
        let pm = Arc::new(ProcessMemory::new(5 * 4096).unwrap());
        let a = pm.alloc(100).unwrap();
        let b = pm.alloc(8192).unwrap();
        assert_eq!(a.len, 4096);
        assert_eq!(b.addr.0, a.addr.0 + 4096);
        assert_eq!(a.addr.0 % 4096, 0);
        assert!(pm.alloc(3 * 4096).is_none());
        assert_eq!(pm.remaining(), 2 * 4096);
        assert!(b.write(8190, b"xy"));
        assert!(!b.write(8191, b"xy"));
        let mut out = [0u8; 2];
        assert!(b.read(8190, &mut out));
        assert_eq!(&out, b"xy");
        let dma = DmaMemory::from_process(pm.clone()).unwrap();
        assert_eq!(dma.host_ptr(b.addr, 8192), Some(b.ptr));
    }
}
