//! Which served memory is registered with the backend as io_uring fixed
//! buffers, and the regions a driver declares for DMA.
//!
//! Two ways memory becomes fixed buffers:
//!
//! - **All of it, at start** ([`crate::host::UringConfig::fixed_buffers`]):
//!   process mode registers its one small region, as buffers `0..n` of
//!   [`DmaMemory::fixed_buffers`].
//! - **Declared regions** (the VMM): the backend reserves
//!   [`MAX_DMA_REGIONS`] empty (sparse) slots, and the driver declares the
//!   ranges of served memory it does I/O from ([`Fixed::declare`]: the
//!   buffer pool's frames, the log's buffers, the rings), each validated
//!   (aligned, non-empty, at most [`MAX_DMA_REGION`] bytes, inside one
//!   region of the served memory, overlapping no declared region, within
//!   the pinning limit) and registered into a free slot; it gives them
//!   back with [`Fixed::release`]. Nothing else is pinned: guest RAM that
//!   was not declared costs nothing at start.
//!
//! For each operation the poller asks [`Fixed::lookup`] whether its host
//! range lies inside one registered buffer: if it does, the operation uses
//! the fixed-buffer opcodes (`READ_FIXED`/`WRITE_FIXED`, no per-I/O page
//! pinning); otherwise the plain ones (`READ`/`WRITE`, which pin the pages
//! while the I/O runs). Both are correct for any buffer in served memory.
//!
//! Registering pins the pages and counts against `RLIMIT_MEMLOCK` unless
//! the process has `CAP_IPC_LOCK` ([`PinLimit::of_this_process`]). The
//! registry checks declared bytes against that limit itself, so that a
//! declaration beyond it is refused with an error naming the limit rather
//! than an `ENOMEM` from the kernel (which is reported the same way if the
//! kernel, counting other pinned memory of the user, refuses first).

use super::memory::DmaMemory;
use crate::types::PAGE_SIZE;
use std::io;
use std::vec::Vec;

/// Fixed-buffer slots a backend reserves for declared regions (the ABI's
/// limit).
pub const MAX_DMA_REGIONS: usize = dbos_abi::MAX_DMA_REGIONS as usize;

/// Largest declared region: one io_uring fixed buffer (1 GiB).
pub const MAX_DMA_REGION: u64 = dbos_abi::MAX_DMA_REGION;

const _: () = assert!(MAX_DMA_REGION == super::memory::MAX_FIXED_BUFFER);

/// How much memory this process may pin: `None` without a limit (the
/// process has `CAP_IPC_LOCK`, or `RLIMIT_MEMLOCK` is unlimited).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PinLimit {
    /// `RLIMIT_MEMLOCK` (soft), bytes.
    pub bytes: u64,
}

impl PinLimit {
    /// The limit that applies to io_uring registrations of this process:
    /// none with `CAP_IPC_LOCK` in the effective set (read from
    /// `/proc/self/status`), else the soft `RLIMIT_MEMLOCK`.
    pub fn of_this_process() -> Option<PinLimit> {
        if has_ipc_lock() {
            return None;
        }
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit writes one rlimit we own.
        if unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut lim) } != 0 {
            log::warn!(
                "getrlimit(RLIMIT_MEMLOCK) failed ({}); DMA regions are checked against a \
                 limit of 0 bytes",
                io::Error::last_os_error()
            );
            return Some(PinLimit { bytes: 0 });
        }
        (lim.rlim_cur != libc::RLIM_INFINITY).then_some(PinLimit {
            bytes: lim.rlim_cur,
        })
    }
}

/// `CAP_IPC_LOCK` (capability 14) is in this process's effective set.
fn has_ipc_lock() -> bool {
    const CAP_IPC_LOCK: u32 = 14;
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .is_some_and(|caps| caps & (1 << CAP_IPC_LOCK) != 0)
}

/// A declaration or release that was refused.
#[derive(Debug, thiserror::Error)]
pub enum RegionError {
    #[error(
        "DMA region at {addr:#x} ({len:#x} bytes) is empty or not 4 KiB aligned in address \
         and length"
    )]
    Misaligned { addr: u64, len: u64 },
    #[error(
        "DMA region at {addr:#x} ({len:#x} bytes) is larger than one fixed buffer \
         ({MAX_DMA_REGION:#x} bytes)"
    )]
    TooLarge { addr: u64, len: u64 },
    #[error(
        "DMA region at {addr:#x} ({len:#x} bytes) is not inside one range of the served memory \
         (guest RAM): it wraps, crosses a gap or runs past the end"
    )]
    OutsideMemory { addr: u64, len: u64 },
    #[error(
        "DMA region at {addr:#x} ({len:#x} bytes) overlaps the region declared at \
         {other:#x} ({other_len:#x} bytes)"
    )]
    Overlap {
        addr: u64,
        len: u64,
        other: u64,
        other_len: u64,
    },
    #[error("DMA region at {addr:#x}: all {MAX_DMA_REGIONS} region slots are in use")]
    TooMany { addr: u64 },
    #[error(
        "DMA region at {addr:#x} ({len} bytes) refused: registering it would pin {total} bytes \
         of DMA regions in all, more than RLIMIT_MEMLOCK allows ({limit} bytes) to a process \
         without CAP_IPC_LOCK; raise the limit (ulimit -l) or declare less"
    )]
    PinLimit {
        addr: u64,
        len: u64,
        total: u64,
        limit: u64,
    },
    #[error(
        "DMA region at {addr:#x} ({len} bytes) refused: the kernel would not pin it ({source}); \
         without CAP_IPC_LOCK pinned memory counts against RLIMIT_MEMLOCK ({limit})"
    )]
    KernelPinLimit {
        addr: u64,
        len: u64,
        limit: std::string::String,
        source: io::Error,
    },
    #[error(
        "DMA region at {addr:#x}: this disk cannot register fixed buffers (the power-cut model, \
         or a kernel without sparse buffer registration); its I/O uses plain buffers"
    )]
    Unsupported { addr: u64 },
    #[error(
        "registering the DMA region at {addr:#x} ({len} bytes) with io_uring failed: {source}"
    )]
    Register {
        addr: u64,
        len: u64,
        source: io::Error,
    },
    #[error("no DMA region is declared at {addr:#x} with {len:#x} bytes")]
    NotDeclared { addr: u64, len: u64 },
    #[error("unregistering the DMA region at {addr:#x} from io_uring failed: {source}")]
    Unregister { addr: u64, source: io::Error },
}

impl RegionError {
    /// The errno the driver is answered with.
    pub fn errno(&self) -> i32 {
        match self {
            RegionError::Misaligned { .. } | RegionError::TooLarge { .. } => libc::EINVAL,
            RegionError::OutsideMemory { .. } => libc::EFAULT,
            RegionError::Overlap { .. } => libc::EEXIST,
            RegionError::TooMany { .. } => libc::ENOSPC,
            RegionError::PinLimit { .. } | RegionError::KernelPinLimit { .. } => libc::ENOMEM,
            RegionError::Unsupported { .. } => libc::EOPNOTSUPP,
            RegionError::Register { .. } | RegionError::Unregister { .. } => libc::EIO,
            RegionError::NotDeclared { .. } => libc::ENOENT,
        }
    }
}

/// One registered buffer, by host address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Entry {
    host_start: u64,
    host_end: u64,
    slot: u16,
    /// Device address and length, for a declared region (`None` for the
    /// permanent buffers of [`Fixed::whole`]).
    declared: Option<(u64, u64)>,
}

/// What registering needs of a backend (implemented by the backend the
/// poller drives).
pub trait Registrar {
    /// All of the served memory is registered, as buffers `0..n` of
    /// [`DmaMemory::fixed_buffers`] (then no slot is left for regions).
    fn whole_memory(&self) -> bool {
        false
    }
    /// Slots reserved for declared regions (0: cannot register).
    fn region_slots(&self) -> usize;
    /// Registers `len` bytes at `host` as fixed buffer `slot`.
    fn register_region(&mut self, slot: u16, host: *mut u8, len: u64) -> io::Result<()>;
    /// Empties fixed-buffer slot `slot` (operations in flight on it keep
    /// their pages until they finish).
    fn unregister_region(&mut self, slot: u16) -> io::Result<()>;
}

/// The registered buffers of one poller: the permanent ones and the
/// declared regions. Lives on the poller's thread.
#[derive(Debug, Default)]
pub struct Fixed {
    /// Sorted by `host_start`; disjoint.
    entries: Vec<Entry>,
    /// First slot of declared regions (after the permanent buffers).
    first_slot: u16,
    /// Slots of declared regions in use.
    used: Vec<bool>,
    /// Bytes of declared regions registered now.
    declared_bytes: u64,
    limit: Option<PinLimit>,
}

impl Fixed {
    /// The registry for `backend` over `memory`: all of it when the
    /// backend registered all of it, else empty with the backend's region
    /// slots, within `limit`.
    pub fn for_backend(
        memory: &DmaMemory,
        registrar: Option<&mut dyn Registrar>,
        limit: Option<PinLimit>,
    ) -> Fixed {
        match registrar {
            Some(r) if r.whole_memory() => Fixed::whole(memory),
            Some(r) => Fixed::new(0, r.region_slots(), limit),
            None => Fixed::new(0, 0, limit),
        }
    }

    /// Sets the pinning limit declarations are checked against.
    pub fn set_limit(&mut self, limit: Option<PinLimit>) {
        self.limit = limit;
    }

    /// No registered memory; declared regions go into `slots` slots
    /// starting at `first_slot`, within `limit`.
    pub fn new(first_slot: u16, slots: usize, limit: Option<PinLimit>) -> Fixed {
        Fixed {
            entries: Vec::new(),
            first_slot,
            used: std::vec![false; slots],
            declared_bytes: 0,
            limit,
        }
    }

    /// All of `memory` registered, as buffers `0..n` of
    /// [`DmaMemory::fixed_buffers`], with no slot for declared regions.
    pub fn whole(memory: &DmaMemory) -> Fixed {
        let mut entries: Vec<Entry> = memory
            .fixed_buffers()
            .iter()
            .enumerate()
            .map(|(i, &(host, len))| Entry {
                host_start: host as u64,
                host_end: host as u64 + len,
                slot: i as u16,
                declared: None,
            })
            .collect();
        entries.sort_by_key(|e| e.host_start);
        Fixed {
            entries,
            first_slot: 0,
            used: Vec::new(),
            declared_bytes: 0,
            limit: None,
        }
    }

    /// The fixed-buffer slot whose buffer holds all of `[ptr, ptr + len)`.
    #[inline]
    pub fn lookup(&self, ptr: *mut u8, len: u32) -> Option<u16> {
        let start = ptr as u64;
        let end = start.checked_add(len as u64)?;
        let i = self.entries.partition_point(|e| e.host_start <= start);
        let e = self.entries.get(i.checked_sub(1)?)?;
        (end <= e.host_end).then_some(e.slot)
    }

    /// Declared regions registered now.
    pub fn regions(&self) -> usize {
        self.used.iter().filter(|&&u| u).count()
    }

    /// Bytes of declared regions registered now.
    pub fn declared_bytes(&self) -> u64 {
        self.declared_bytes
    }

    /// Validates `[addr, addr + len)` of `memory` and registers it with
    /// `backend` in a free slot.
    pub fn declare<R: Registrar + ?Sized>(
        &mut self,
        memory: &DmaMemory,
        backend: &mut R,
        addr: u64,
        len: u64,
    ) -> Result<(), RegionError> {
        if len == 0 || !addr.is_multiple_of(PAGE_SIZE) || !len.is_multiple_of(PAGE_SIZE) {
            return Err(RegionError::Misaligned { addr, len });
        }
        if len > MAX_DMA_REGION {
            return Err(RegionError::TooLarge { addr, len });
        }
        let host = memory
            .host_ptr(crate::types::DmaAddr(addr), len)
            .ok_or(RegionError::OutsideMemory { addr, len })?;
        let end = addr + len; // host_ptr checked it does not wrap
        if let Some(&(other, other_len)) = self
            .entries
            .iter()
            .filter_map(|e| e.declared.as_ref())
            .find(|&&(a, l)| a < end && addr < a + l)
        {
            return Err(RegionError::Overlap {
                addr,
                len,
                other,
                other_len,
            });
        }
        if backend.region_slots() == 0 || self.used.is_empty() {
            return Err(RegionError::Unsupported { addr });
        }
        let index = self
            .used
            .iter()
            .position(|&u| !u)
            .ok_or(RegionError::TooMany { addr })?;
        let total = self.declared_bytes + len;
        if let Some(limit) = self.limit.filter(|l| total > l.bytes) {
            return Err(RegionError::PinLimit {
                addr,
                len,
                total,
                limit: limit.bytes,
            });
        }
        let slot = self.first_slot + index as u16;
        backend
            .register_region(slot, host, len)
            .map_err(|source| match source.raw_os_error() {
                Some(libc::ENOMEM) => RegionError::KernelPinLimit {
                    addr,
                    len,
                    limit: match self.limit {
                        Some(l) => std::format!("{} bytes", l.bytes),
                        None => "this process has CAP_IPC_LOCK or no limit".into(),
                    },
                    source,
                },
                _ => RegionError::Register { addr, len, source },
            })?;
        self.used[index] = true;
        self.declared_bytes = total;
        let entry = Entry {
            host_start: host as u64,
            host_end: host as u64 + len,
            slot,
            declared: Some((addr, len)),
        };
        let at = self
            .entries
            .partition_point(|e| e.host_start < entry.host_start);
        self.entries.insert(at, entry);
        log::debug!("nvme: DMA region {addr:#x}+{len:#x} registered as fixed buffer {slot}");
        Ok(())
    }

    /// Gives back the region declared at exactly `[addr, addr + len)`.
    pub fn release<R: Registrar + ?Sized>(
        &mut self,
        backend: &mut R,
        addr: u64,
        len: u64,
    ) -> Result<(), RegionError> {
        let i = self
            .entries
            .iter()
            .position(|e| e.declared == Some((addr, len)))
            .ok_or(RegionError::NotDeclared { addr, len })?;
        let slot = self.entries[i].slot;
        backend
            .unregister_region(slot)
            .map_err(|source| RegionError::Unregister { addr, source })?;
        self.entries.remove(i);
        self.used[(slot - self.first_slot) as usize] = false;
        self.declared_bytes -= len;
        log::debug!("nvme: DMA region {addr:#x}+{len:#x} (fixed buffer {slot}) released");
        Ok(())
    }

    /// Gives back every declared region (the poller stopping).
    pub fn release_all<R: Registrar + ?Sized>(&mut self, backend: &mut R) {
        let declared: Vec<(u64, u64)> = self.entries.iter().filter_map(|e| e.declared).collect();
        for (addr, len) in declared {
            if let Err(e) = self.release(backend, addr, len) {
                log::warn!("nvme: {e}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::memory::DmaRegion;
    use std::string::ToString;

    /// Records registrations; fails those it is told to.
    #[derive(Default)]
    struct Rec {
        slots: usize,
        registered: Vec<(u16, u64, u64)>,
        fail_with: Option<i32>,
    }

    impl Registrar for Rec {
        fn region_slots(&self) -> usize {
            self.slots
        }
        fn register_region(&mut self, slot: u16, host: *mut u8, len: u64) -> io::Result<()> {
            if let Some(e) = self.fail_with {
                return Err(io::Error::from_raw_os_error(e));
            }
            self.registered.push((slot, host as u64, len));
            Ok(())
        }
        fn unregister_region(&mut self, slot: u16) -> io::Result<()> {
            let i = self.registered.iter().position(|r| r.0 == slot).unwrap();
            self.registered.remove(i);
            Ok(())
        }
    }

    /// RAM like a VM's: 1 MiB at 0 and 1 MiB at 4 GiB (host addresses are
    /// never dereferenced here).
    fn memory() -> DmaMemory {
        let g = 1u64 << 30;
        let regions = [
            DmaRegion {
                addr: 0,
                host: 0x7000_0000_0000u64 as *mut u8,
                len: 1 << 20,
            },
            DmaRegion {
                addr: 4 * g,
                host: 0x7100_0000_0000u64 as *mut u8,
                len: 1 << 20,
            },
        ];
        // SAFETY: nothing dereferences these host addresses.
        unsafe { DmaMemory::new(&regions) }.unwrap()
    }

    #[test]
    fn declared_regions_are_validated_registered_and_released() {
        let mem = memory();
        let mut rec = Rec {
            slots: 4,
            ..Rec::default()
        };
        let mut fixed = Fixed::new(0, 4, Some(PinLimit { bytes: 3 * 4096 }));
        let errno = |r: Result<(), RegionError>| r.map_err(|e| e.errno());
        // Misaligned, empty, past RAM's end, in the gap, wrapping.
        assert_eq!(
            errno(fixed.declare(&mem, &mut rec, 0x800, 4096)),
            Err(libc::EINVAL)
        );
        assert_eq!(
            errno(fixed.declare(&mem, &mut rec, 0, 0)),
            Err(libc::EINVAL)
        );
        assert_eq!(
            errno(fixed.declare(&mem, &mut rec, 0, 100)),
            Err(libc::EINVAL)
        );
        assert_eq!(
            errno(fixed.declare(&mem, &mut rec, (1 << 20) - 4096, 8192)),
            Err(libc::EFAULT)
        );
        assert_eq!(
            errno(fixed.declare(&mem, &mut rec, 1 << 30, 4096)),
            Err(libc::EFAULT)
        );
        assert_eq!(
            errno(fixed.declare(&mem, &mut rec, u64::MAX - 4095, 8192)),
            Err(libc::EFAULT)
        );
        assert_eq!(
            errno(fixed.declare(&mem, &mut rec, 0, MAX_DMA_REGION + 4096)),
            Err(libc::EINVAL)
        );
        assert!(rec.registered.is_empty());
        // Two regions, then one overlapping each, then the limit.
        fixed.declare(&mem, &mut rec, 0x2000, 0x1000).unwrap();
        fixed.declare(&mem, &mut rec, 4 << 30, 0x2000).unwrap();
        assert_eq!(
            rec.registered,
            [(0, 0x7000_0000_2000, 0x1000), (1, 0x7100_0000_0000, 0x2000)]
        );
        assert_eq!(
            errno(fixed.declare(&mem, &mut rec, 0x1000, 0x2000)),
            Err(libc::EEXIST)
        );
        assert_eq!(
            errno(fixed.declare(&mem, &mut rec, (4 << 30) + 0x1000, 0x1000)),
            Err(libc::EEXIST)
        );
        let e = fixed.declare(&mem, &mut rec, 0x8000, 0x1000).unwrap_err();
        assert_eq!(e.errno(), libc::ENOMEM);
        assert!(
            e.to_string()
                .contains("RLIMIT_MEMLOCK allows (12288 bytes)"),
            "{e}"
        );
        assert!(
            e.to_string().contains("16384 bytes of DMA regions in all"),
            "{e}"
        );
        assert_eq!((fixed.regions(), fixed.declared_bytes()), (2, 0x3000));
        // Lookups: inside one buffer only.
        assert_eq!(fixed.lookup(0x7000_0000_2000 as *mut u8, 4096), Some(0));
        assert_eq!(fixed.lookup(0x7000_0000_2800 as *mut u8, 2048), Some(0));
        assert_eq!(fixed.lookup(0x7000_0000_2800 as *mut u8, 4096), None);
        assert_eq!(fixed.lookup(0x7000_0000_1000 as *mut u8, 4096), None);
        assert_eq!(fixed.lookup(0x7100_0000_1000 as *mut u8, 4096), Some(1));
        // Release: exact match only; then the slot and bytes come back.
        assert_eq!(
            errno(fixed.release(&mut rec, 0x2000, 0x2000)),
            Err(libc::ENOENT)
        );
        fixed.release(&mut rec, 0x2000, 0x1000).unwrap();
        assert_eq!(fixed.lookup(0x7000_0000_2000 as *mut u8, 4096), None);
        assert_eq!((fixed.regions(), fixed.declared_bytes()), (1, 0x2000));
        fixed.declare(&mem, &mut rec, 0x8000, 0x1000).unwrap();
        assert_eq!(rec.registered[1], (0, 0x7000_0000_8000, 0x1000));
        fixed.release_all(&mut rec);
        assert_eq!((fixed.regions(), fixed.declared_bytes()), (0, 0));
        assert!(rec.registered.is_empty());
    }

    #[test]
    fn slots_run_out_and_kernel_refusals_are_named() {
        let mem = memory();
        let mut rec = Rec {
            slots: 2,
            ..Rec::default()
        };
        let mut fixed = Fixed::new(3, 2, None);
        fixed.declare(&mem, &mut rec, 0, 4096).unwrap();
        fixed.declare(&mem, &mut rec, 4096, 4096).unwrap();
        assert_eq!(
            rec.registered[1].0, 4,
            "slots start after the permanent ones"
        );
        let e = fixed.declare(&mem, &mut rec, 8192, 4096).unwrap_err();
        assert_eq!(e.errno(), libc::ENOSPC);
        fixed.release(&mut rec, 0, 4096).unwrap();
        rec.fail_with = Some(libc::ENOMEM);
        let e = fixed.declare(&mem, &mut rec, 8192, 4096).unwrap_err();
        assert_eq!(e.errno(), libc::ENOMEM);
        assert!(e.to_string().contains("RLIMIT_MEMLOCK"), "{e}");
        assert_eq!((fixed.regions(), fixed.declared_bytes()), (1, 4096));
        // A backend without slots refuses every declaration.
        let mut none = Rec::default();
        let mut fixed = Fixed::new(0, 0, None);
        let e = fixed.declare(&mem, &mut none, 0, 4096).unwrap_err();
        assert_eq!(e.errno(), libc::EOPNOTSUPP);
    }

    #[test]
    fn whole_memory_is_looked_up_by_buffer() {
        let mem = memory();
        let fixed = Fixed::whole(&mem);
        assert_eq!(fixed.lookup(0x7000_0000_0000 as *mut u8, 4096), Some(0));
        assert_eq!(fixed.lookup(0x7100_0000_f000 as *mut u8, 4096), Some(1));
        assert_eq!(fixed.lookup(0x7000_000f_f000 as *mut u8, 8192), None);
        assert_eq!(fixed.regions(), 0);
    }
}
