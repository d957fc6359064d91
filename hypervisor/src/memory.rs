//! Guest RAM: anonymous host memory (vm-memory) registered with KVM, and the
//! only way the VMM reads or writes it. Every access is checked against the
//! guest's RAM ranges first, so a guest-supplied address can never make the
//! VMM touch host memory outside guest memory.

use crate::layout::Range;
use dbos_abi::Pod;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

/// An access outside guest RAM.
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum MemoryError {
    #[error("guest range [{addr:#x}, +{len:#x}) is outside guest memory")]
    OutOfRange { addr: u64, len: u64 },
    #[error("could not allocate {0} bytes of guest memory: {1}")]
    Alloc(u64, String),
}

/// The guest's RAM.
pub struct GuestRam {
    mem: GuestMemoryMmap,
}

/// One region as KVM needs it.
pub struct HostRegion {
    pub guest_addr: u64,
    pub size: u64,
    pub host_addr: u64,
}

impl GuestRam {
    /// Allocates zeroed RAM for the given guest-physical ranges.
    pub fn new(ranges: &[Range]) -> Result<Self, MemoryError> {
        let spec: Vec<(GuestAddress, usize)> = ranges
            .iter()
            .map(|r| (GuestAddress(r.start), r.len() as usize))
            .collect();
        let total = ranges.iter().map(Range::len).sum();
        let mem = GuestMemoryMmap::from_ranges(&spec)
            .map_err(|e| MemoryError::Alloc(total, e.to_string()))?;
        Ok(GuestRam { mem })
    }

    /// The regions to register with KVM.
    pub fn host_regions(&self) -> Vec<HostRegion> {
        self.mem
            .iter()
            .map(|r| HostRegion {
                guest_addr: r.start_addr().0,
                size: r.len(),
                host_addr: r.as_ptr() as u64,
            })
            .collect()
    }

    /// Checks that `[addr, addr + len)` lies entirely in guest RAM.
    pub fn check(&self, addr: u64, len: u64) -> Result<(), MemoryError> {
        let err = MemoryError::OutOfRange { addr, len };
        let end = addr.checked_add(len).ok_or(err.clone())?;
        if len == 0 {
            return Ok(());
        }
        // RAM ranges are disjoint and a checked range must sit in one of them
        // (there is nothing between them).
        let inside = self
            .mem
            .iter()
            .any(|r| addr >= r.start_addr().0 && end <= r.start_addr().0 + r.len());
        if inside {
            Ok(())
        } else {
            Err(err)
        }
    }

    /// The host address of the 4 KiB guest-physical page at `addr` (4 KiB
    /// aligned, entirely in RAM), for data the VMM must access atomically
    /// (page-table entries). Valid as long as `self`.
    pub fn page_ptr(&self, addr: u64) -> Result<*mut u8, MemoryError> {
        let err = MemoryError::OutOfRange { addr, len: 4096 };
        if !addr.is_multiple_of(4096) {
            return Err(err);
        }
        self.check(addr, 4096)?;
        self.mem
            .get_host_address(GuestAddress(addr))
            .map_err(|_| err)
    }

    /// The host address of `[addr, addr + len)` (`len` > 0), a range that
    /// lies entirely in one RAM region, so that the `len` host bytes from
    /// the returned pointer are that range: for the network's socket I/O
    /// and queue rings, which the VMM accesses through raw pointers (never
    /// references: the guest may change the memory at any time). Valid as
    /// long as `self`.
    pub fn host_range(&self, addr: u64, len: u64) -> Result<*mut u8, MemoryError> {
        let err = MemoryError::OutOfRange { addr, len };
        if len == 0 {
            return Err(err);
        }
        // `check` accepts only a range inside one region (regions are
        // separate mappings: a range spanning two is refused).
        self.check(addr, len).map_err(|_| err.clone())?;
        self.mem
            .get_host_address(GuestAddress(addr))
            .map_err(|_| err)
    }

    pub fn read(&self, addr: u64, buf: &mut [u8]) -> Result<(), MemoryError> {
        self.check(addr, buf.len() as u64)?;
        self.mem
            .read_slice(buf, GuestAddress(addr))
            .map_err(|_| MemoryError::OutOfRange {
                addr,
                len: buf.len() as u64,
            })
    }

    pub fn write(&self, addr: u64, buf: &[u8]) -> Result<(), MemoryError> {
        self.check(addr, buf.len() as u64)?;
        self.mem
            .write_slice(buf, GuestAddress(addr))
            .map_err(|_| MemoryError::OutOfRange {
                addr,
                len: buf.len() as u64,
            })
    }

    /// Reads a plain-data value (an ABI struct or an integer).
    pub fn read_pod<T: Pod>(&self, addr: u64) -> Result<T, MemoryError> {
        let mut value = T::default();
        // SAFETY: `T: Pod` has no padding and accepts any bit pattern, so
        // viewing it as bytes and filling them in is sound.
        let bytes = unsafe {
            std::slice::from_raw_parts_mut((&mut value as *mut T).cast::<u8>(), size_of::<T>())
        };
        self.read(addr, bytes)?;
        Ok(value)
    }

    /// Writes a plain-data value.
    pub fn write_pod<T: Pod>(&self, addr: u64, value: &T) -> Result<(), MemoryError> {
        // SAFETY: `T: Pod` has no padding, so all its bytes are initialised.
        let bytes =
            unsafe { std::slice::from_raw_parts((value as *const T).cast::<u8>(), size_of::<T>()) };
        self.write(addr, bytes)
    }
}

/// How much memory the host has, from `/proc/meminfo`.
///
/// "What the host can provide" is its RAM plus its swap (`MemTotal` +
/// `SwapTotal`): guest RAM is mapped lazily (`MAP_NORESERVE`) and a guest
/// touches only what it uses, so a VM larger than the memory free at the
/// moment (`MemAvailable`, which moves with every other process and the page
/// cache) may well run; but one larger than RAM and swap together can never
/// be backed, and touching it would end in the OOM killer. A cgroup's memory
/// limit is not taken into account.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HostMemory {
    /// `MemTotal`, bytes.
    pub total: Option<u64>,
    /// `SwapTotal`, bytes.
    pub swap: Option<u64>,
}

impl HostMemory {
    /// Reads `/proc/meminfo`; unknown values stay `None`.
    pub fn read() -> HostMemory {
        std::fs::read_to_string("/proc/meminfo")
            .map(|text| HostMemory::parse(&text))
            .unwrap_or_default()
    }

    /// Parses the text of `/proc/meminfo` ("MemTotal:  24684092 kB").
    pub fn parse(text: &str) -> HostMemory {
        let field = |key: &str| {
            text.lines().find_map(|line| {
                let rest = line.strip_prefix(key)?.strip_prefix(':')?;
                let kib: u64 = rest.trim().strip_suffix("kB")?.trim().parse().ok()?;
                kib.checked_mul(1024)
            })
        };
        HostMemory {
            total: field("MemTotal"),
            swap: field("SwapTotal"),
        }
    }

    /// The most guest memory the host can provide, when known.
    pub fn provides(&self) -> Option<u64> {
        self.total?.checked_add(self.swap.unwrap_or(0))
    }
}

/// This process's memory, from `/proc/self/status`: what a run of `dbos`
/// held at its peak and what it locked or pinned (`--stats` prints it).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProcessMemory {
    /// Peak resident set size (`VmHWM`), bytes.
    pub peak_resident: Option<u64>,
    /// Memory locked with `mlock` (`VmLck`), bytes.
    pub locked: Option<u64>,
    /// Pages pinned by the kernel for this process (`VmPin`: io_uring
    /// fixed buffers, for one), bytes.
    pub pinned: Option<u64>,
}

impl ProcessMemory {
    /// Reads `/proc/self/status`; fields it lacks are `None`.
    pub fn read() -> ProcessMemory {
        std::fs::read_to_string("/proc/self/status")
            .map(|text| ProcessMemory::parse(&text))
            .unwrap_or_default()
    }

    /// Parses the text of `/proc/PID/status` ("VmHWM:  5120 kB").
    pub fn parse(text: &str) -> ProcessMemory {
        let field = |key: &str| {
            text.lines().find_map(|line| {
                let rest = line.strip_prefix(key)?.strip_prefix(':')?;
                let kib: u64 = rest.trim().strip_suffix("kB")?.trim().parse().ok()?;
                kib.checked_mul(1024)
            })
        };
        ProcessMemory {
            peak_resident: field("VmHWM"),
            locked: field("VmLck"),
            pinned: field("VmPin"),
        }
    }
}

/// "peak resident 5.1 MB (VmHWM), locked 0 kB (VmLck), pinned 0 kB (VmPin)".
impl std::fmt::Display for ProcessMemory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let show = |v: Option<u64>| match v {
            Some(b) => format!("{} kB", b >> 10),
            None => "unknown".to_string(),
        };
        write!(
            f,
            "peak resident {} (VmHWM), locked {} (VmLck), pinned {} (VmPin)",
            show(self.peak_resident),
            show(self.locked),
            show(self.pinned)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn process_memory_from_status() {
        let m = ProcessMemory::parse(
            "Name:\tdbos\nVmPeak:\t 4300000 kB\nVmLck:\t       0 kB\nVmPin:\t     12 kB\n\
             VmHWM:\t    5120 kB\nVmRSS:\t    5000 kB\n",
        );
        assert_eq!(m.peak_resident, Some(5120 << 10));
        assert_eq!(m.locked, Some(0));
        assert_eq!(m.pinned, Some(12 << 10));
        assert_eq!(
            m.to_string(),
            "peak resident 5120 kB (VmHWM), locked 0 kB (VmLck), pinned 12 kB (VmPin)"
        );
        assert_eq!(ProcessMemory::parse("garbage").pinned, None);
        assert!(ProcessMemory::read().peak_resident.is_some_and(|b| b > 0));
    }

    #[test]
    fn host_memory_from_meminfo() {
        let host = HostMemory::parse(
            "MemTotal:       24684092 kB\nMemFree:        21135272 kB\n\
             MemAvailable:   24087232 kB\nSwapTotal:       1048576 kB\n",
        );
        assert_eq!(host.total, Some(24684092 << 10));
        assert_eq!(host.swap, Some(1 << 30));
        assert_eq!(host.provides(), Some((24684092 << 10) + (1 << 30)));
        assert_eq!(HostMemory::parse("garbage").provides(), None);
        assert!(HostMemory::read().provides().is_some_and(|b| b > 0));
    }

    #[test]
    fn bounds_are_enforced() {
        let ram = GuestRam::new(&[
            Range {
                start: 0,
                end: 0x10000,
            },
            Range {
                start: 0x20000,
                end: 0x21000,
            },
        ])
        .unwrap();
        assert!(ram.check(0, 0x10000).is_ok());
        assert!(ram.check(0xfff0, 0x20).is_err(), "runs off the end");
        assert!(ram.check(0x10000, 1).is_err(), "in the gap");
        assert!(ram.check(0xffff, 0x10002).is_err(), "spans the gap");
        assert!(ram.check(u64::MAX - 4, 16).is_err(), "wraps");
        assert!(ram.check(0x20ff0, 0x10).is_ok());
        ram.write_pod(0x20ff8, &0x1122_3344_5566_7788u64).unwrap();
        assert_eq!(ram.read_pod::<u64>(0x20ff8).unwrap(), 0x1122_3344_5566_7788);
        assert_eq!(
            ram.write(0x20ffc, &[0u8; 8]),
            Err(MemoryError::OutOfRange {
                addr: 0x20ffc,
                len: 8
            })
        );
    }
}
