//! KVM's own per-vCPU statistics, read through `KVM_GET_STATS_FD`.
//!
//! The VMM counts the exits that reach it (every return from `KVM_RUN`:
//! hypercalls, unknown ports, MMIO, failures: [`crate::report::ExitCounts`]).
//! KVM handles many more exits in the kernel without returning to the VMM
//! (interrupts and IPIs through the in-kernel APIC, page faults and TLB
//! instructions under shadow paging, emulated instructions, halts), and
//! counts every one of them in its per-vCPU statistics. This module reads
//! those, so that a run reports exits at both levels: exits to the VMM,
//! and all VM exits as KVM counted them.
//!
//! The binary statistics file (Linux `Documentation/virt/kvm/api.rst`,
//! "KVM_GET_STATS_FD"; capability `KVM_CAP_BINARY_STATS_FD`) is a header,
//! a block of descriptors (flags, exponent, size in 64-bit words, offset
//! into the data block, bucket size, then a NUL-padded name of the
//! header's `name_size` bytes) and a data block of `u64` values. The
//! header and descriptors are read once; [`VcpuStats::read`] re-reads the
//! data block. Parsing is plain byte slicing ([`Layout::parse`]); the only
//! `unsafe` is the ioctl that makes the file (`stats_fd`).

use kvm_ioctls::{Kvm, VcpuFd};
use std::fmt;
use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::FileExt;

/// `KVM_CAP_BINARY_STATS_FD`.
const CAP_BINARY_STATS_FD: libc::c_ulong = kvm_bindings::KVM_CAP_BINARY_STATS_FD as libc::c_ulong;
/// `KVM_GET_STATS_FD = _IO(KVMIO, 0xce)`: no argument, so no size or
/// direction bits.
const KVM_GET_STATS_FD: libc::c_ulong = (0xae << 8) | 0xce;
/// Bytes of the header: six `u32`.
const HEADER_LEN: usize = 24;
/// Bytes of a descriptor before its name.
const DESC_FIXED_LEN: usize = 16;
/// Stat type field of a descriptor's flags (bits 0-3).
const TYPE_MASK: u32 = 0xf;
/// A counter that only grows.
const TYPE_CUMULATIVE: u32 = 0;
/// Unit field (bits 4-7): 0 is a plain count.
const UNIT_MASK: u32 = 0xf0;
/// Limits that keep a malformed file from making us allocate without end.
const MAX_DESCRIPTORS: u32 = 4096;
const MAX_NAME: u32 = 4096;
const MAX_DATA_WORDS: u64 = 1 << 20;

/// The exit counters KVM keeps per vCPU on x86, by their KVM names:
/// `exits` counts every VM exit; the others count exits of one kind
/// (`io_exits` and `mmio_exits` are those that went on to user space,
/// `irq_exits` external interrupts, `halt_exits` `hlt`, ...).
pub const EXIT_KINDS: [&str; 9] = [
    "io_exits",
    "mmio_exits",
    "halt_exits",
    "irq_exits",
    "irq_window_exits",
    "nmi_window_exits",
    "request_irq_exits",
    "signal_exits",
    "notify_window_exits",
];

/// Other work KVM counts per vCPU that a guest's own counters do not
/// show: instructions emulated, page faults taken (shadow paging), TLB
/// flushes, `invlpg` handled, interrupts injected.
pub const OTHER_EVENTS: [&str; 6] = [
    "insn_emulation",
    "pf_taken",
    "tlb_flush",
    "invlpg",
    "irq_injections",
    "hypercalls",
];

/// Why KVM's statistics cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum StatsError {
    #[error("this KVM does not offer binary statistics (no KVM_CAP_BINARY_STATS_FD)")]
    NoCapability,
    #[error("KVM_GET_STATS_FD failed: {0}")]
    Ioctl(std::io::Error),
    #[error("reading the statistics file failed: {0}")]
    Read(std::io::Error),
    #[error("malformed statistics file: {0}")]
    Malformed(String),
    #[error("the statistics have no {0:?} counter")]
    Missing(&'static str),
}

/// Whether `kvm` offers binary statistics (`KVM_CHECK_EXTENSION`).
pub fn available(kvm: &Kvm) -> bool {
    kvm.check_extension_raw(CAP_BINARY_STATS_FD) > 0
}

/// `KVM_GET_STATS_FD` on `vcpu`: its statistics file.
fn stats_fd(vcpu: &VcpuFd) -> Result<File, StatsError> {
    // SAFETY: KVM_GET_STATS_FD takes no argument and reads or writes no
    // memory of ours; on success it returns a new file descriptor, which
    // nothing else owns.
    let fd = unsafe { libc::ioctl(vcpu.as_raw_fd(), KVM_GET_STATS_FD as _, 0) };
    if fd < 0 {
        return Err(StatsError::Ioctl(std::io::Error::last_os_error()));
    }
    // SAFETY: `fd` was just returned by the kernel and is owned by nobody
    // else; the OwnedFd closes it once.
    Ok(File::from(unsafe { OwnedFd::from_raw_fd(fd) }))
}

/// One statistic's descriptor.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Descriptor {
    pub name: String,
    pub flags: u32,
    /// Number of `u64` values (1 for a scalar).
    pub size: u16,
    /// Byte offset of its values in the data block.
    pub offset: u32,
}

impl Descriptor {
    /// A plain cumulative count (no unit, one value): what this module sums.
    pub fn is_count(&self) -> bool {
        self.flags & TYPE_MASK == TYPE_CUMULATIVE && self.flags & UNIT_MASK == 0 && self.size == 1
    }
}

/// The header and descriptors of a statistics file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layout {
    pub id: String,
    pub descriptors: Vec<Descriptor>,
    pub data_offset: u64,
    /// Bytes of the data block: up to the end of the last value.
    pub data_len: usize,
}

fn u32_at(b: &[u8], at: usize) -> Result<u32, StatsError> {
    b.get(at..at + 4)
        .map(|s| u32::from_le_bytes(s.try_into().expect("4 bytes")))
        .ok_or_else(|| StatsError::Malformed(format!("truncated at byte {at}")))
}

fn u16_at(b: &[u8], at: usize) -> Result<u16, StatsError> {
    b.get(at..at + 2)
        .map(|s| u16::from_le_bytes(s.try_into().expect("2 bytes")))
        .ok_or_else(|| StatsError::Malformed(format!("truncated at byte {at}")))
}

/// A NUL-padded name.
fn name(b: &[u8]) -> String {
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    String::from_utf8_lossy(&b[..end]).into_owned()
}

impl Layout {
    /// Reads and parses the header and descriptors of `file`.
    fn read(file: &File) -> Result<Layout, StatsError> {
        let mut header = [0u8; HEADER_LEN];
        file.read_exact_at(&mut header, 0)
            .map_err(StatsError::Read)?;
        let name_size = u32_at(&header, 4)?;
        let num_desc = u32_at(&header, 8)?;
        if name_size > MAX_NAME || num_desc > MAX_DESCRIPTORS {
            return Err(StatsError::Malformed(format!(
                "{num_desc} descriptors with names of {name_size} bytes"
            )));
        }
        let id_offset = u64::from(u32_at(&header, 12)?);
        let desc_offset = u64::from(u32_at(&header, 16)?);
        let mut id = vec![0u8; name_size as usize];
        file.read_exact_at(&mut id, id_offset)
            .map_err(StatsError::Read)?;
        let mut descs = vec![0u8; (DESC_FIXED_LEN + name_size as usize) * num_desc as usize];
        file.read_exact_at(&mut descs, desc_offset)
            .map_err(StatsError::Read)?;
        Layout::parse(&header, &id, &descs)
    }

    /// Parses a header (24 bytes), the id and the descriptor block.
    pub fn parse(header: &[u8], id: &[u8], descs: &[u8]) -> Result<Layout, StatsError> {
        let name_size = u32_at(header, 4)? as usize;
        let num_desc = u32_at(header, 8)? as usize;
        let data_offset = u64::from(u32_at(header, 20)?);
        let stride = DESC_FIXED_LEN + name_size;
        if descs.len() < stride * num_desc {
            return Err(StatsError::Malformed(format!(
                "{} bytes of descriptors, {num_desc} of {stride} bytes expected",
                descs.len()
            )));
        }
        let mut descriptors = Vec::with_capacity(num_desc);
        let mut data_len = 0u64;
        for d in descs.chunks_exact(stride).take(num_desc) {
            let desc = Descriptor {
                flags: u32_at(d, 0)?,
                size: u16_at(d, 6)?,
                offset: u32_at(d, 8)?,
                name: name(&d[DESC_FIXED_LEN..]),
            };
            let end = u64::from(desc.offset) + 8 * u64::from(desc.size);
            if end > 8 * MAX_DATA_WORDS {
                return Err(StatsError::Malformed(format!(
                    "{} ends at data byte {end}",
                    desc.name
                )));
            }
            data_len = data_len.max(end);
            descriptors.push(desc);
        }
        Ok(Layout {
            id: name(id),
            descriptors,
            data_offset,
            data_len: data_len as usize,
        })
    }

    /// The values of every plain count in `data` (the data block), by name.
    pub fn counts(&self, data: &[u8]) -> Result<Vec<(String, u64)>, StatsError> {
        self.descriptors
            .iter()
            .filter(|d| d.is_count())
            .map(|d| {
                let at = d.offset as usize;
                data.get(at..at + 8)
                    .map(|s| {
                        (
                            d.name.clone(),
                            u64::from_le_bytes(s.try_into().expect("8 bytes")),
                        )
                    })
                    .ok_or_else(|| StatsError::Malformed(format!("{} is past the data", d.name)))
            })
            .collect()
    }
}

/// One vCPU's statistics file.
#[derive(Debug)]
pub struct VcpuStats {
    file: File,
    layout: Layout,
}

impl VcpuStats {
    /// Opens `vcpu`'s statistics; `kvm` says whether it can.
    pub fn open(kvm: &Kvm, vcpu: &VcpuFd) -> Result<VcpuStats, StatsError> {
        if !available(kvm) {
            return Err(StatsError::NoCapability);
        }
        let file = stats_fd(vcpu)?;
        let layout = Layout::read(&file)?;
        let stats = VcpuStats { file, layout };
        // Checked once here, so that every later read has the counters.
        stats.read()?;
        Ok(stats)
    }

    /// KVM's id of the vCPU (`kvm-PID/vcpu-N`).
    pub fn id(&self) -> &str {
        &self.layout.id
    }

    /// The current exit counters.
    pub fn read(&self) -> Result<KvmCounts, StatsError> {
        let mut data = vec![0u8; self.layout.data_len];
        self.file
            .read_exact_at(&mut data, self.layout.data_offset)
            .map_err(StatsError::Read)?;
        KvmCounts::from_counts(&self.layout.counts(&data)?)
    }
}

/// KVM's exit counters for one vCPU, or summed over several.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KvmCounts {
    /// Every VM exit (`exits`), those KVM handled in the kernel included.
    pub exits: u64,
    /// Exits by kind, in the order of [`EXIT_KINDS`] (0 for one this KVM
    /// does not count).
    pub kinds: [u64; EXIT_KINDS.len()],
    /// Other events, in the order of [`OTHER_EVENTS`] (0 when not counted).
    pub events: [u64; OTHER_EVENTS.len()],
}

impl KvmCounts {
    /// From (name, value) pairs; `exits` must be among them.
    pub fn from_counts(counts: &[(String, u64)]) -> Result<KvmCounts, StatsError> {
        let get = |n: &str| counts.iter().find(|(name, _)| name == n).map(|&(_, v)| v);
        Ok(KvmCounts {
            exits: get("exits").ok_or(StatsError::Missing("exits"))?,
            kinds: EXIT_KINDS.map(|n| get(n).unwrap_or(0)),
            events: OTHER_EVENTS.map(|n| get(n).unwrap_or(0)),
        })
    }

    pub fn add(&mut self, other: &KvmCounts) {
        self.exits += other.exits;
        for (a, b) in self.kinds.iter_mut().zip(other.kinds) {
            *a += b;
        }
        for (a, b) in self.events.iter_mut().zip(other.events) {
            *a += b;
        }
    }

    /// Exits of one kind, by its KVM name.
    pub fn kind(&self, name: &str) -> Option<u64> {
        EXIT_KINDS
            .iter()
            .position(|&n| n == name)
            .map(|i| self.kinds[i])
    }
}

/// As `--stats` prints it: "N: io_exits A, halt_exits B, ...; insn_emulation C, ..."
/// (kinds and events that are not zero).
impl fmt::Display for KvmCounts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.exits)?;
        let kinds: Vec<String> = EXIT_KINDS
            .iter()
            .zip(self.kinds)
            .filter(|&(_, n)| n > 0)
            .map(|(name, n)| format!("{name} {n}"))
            .collect();
        if !kinds.is_empty() {
            write!(f, " (of which {})", kinds.join(", "))?;
        }
        let events: Vec<String> = OTHER_EVENTS
            .iter()
            .zip(self.events)
            .filter(|&(_, n)| n > 0)
            .map(|(name, n)| format!("{name} {n}"))
            .collect();
        if !events.is_empty() {
            write!(f, "; other KVM events: {}", events.join(", "))?;
        }
        Ok(())
    }
}

/// KVM's counters for a run: per vCPU and summed, or why there are none.
#[derive(Clone, Debug)]
pub enum KvmStats {
    Available {
        total: KvmCounts,
        per_vcpu: Vec<KvmCounts>,
    },
    /// Not available on this host (or not readable); never reported as 0.
    Unavailable { reason: String },
}

impl KvmStats {
    /// All VM exits KVM counted, if it could be read.
    pub fn exits(&self) -> Option<u64> {
        match self {
            KvmStats::Available { total, .. } => Some(total.exits),
            KvmStats::Unavailable { .. } => None,
        }
    }
}

impl fmt::Display for KvmStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KvmStats::Available { total, .. } => write!(f, "{total}"),
            KvmStats::Unavailable { reason } => write!(f, "not available here ({reason})"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A statistics file as KVM lays it out: header, id, descriptors, data.
    fn file(names: &[(&str, u32, u16)], values: &[u64]) -> (Vec<u8>, Vec<u8>, Vec<u8>, Vec<u8>) {
        let name_size = 48u32;
        let stride = DESC_FIXED_LEN + name_size as usize;
        let mut header = Vec::new();
        let desc_offset = HEADER_LEN as u32 + name_size;
        let data_offset = desc_offset + (stride * names.len()) as u32;
        for v in [
            0,
            name_size,
            names.len() as u32,
            HEADER_LEN as u32,
            desc_offset,
            data_offset,
        ] {
            header.extend_from_slice(&v.to_le_bytes());
        }
        let mut id = b"kvm-1/vcpu-0".to_vec();
        id.resize(name_size as usize, 0);
        let mut descs = Vec::new();
        let mut offset = 0u32;
        for &(n, flags, size) in names {
            descs.extend_from_slice(&flags.to_le_bytes());
            descs.extend_from_slice(&0i16.to_le_bytes());
            descs.extend_from_slice(&size.to_le_bytes());
            descs.extend_from_slice(&offset.to_le_bytes());
            descs.extend_from_slice(&0u32.to_le_bytes());
            let mut name = n.as_bytes().to_vec();
            name.resize(name_size as usize, 0);
            descs.extend_from_slice(&name);
            offset += 8 * u32::from(size);
        }
        let data = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        (header, id, descs, data)
    }

    #[test]
    fn parses_counts_and_skips_other_kinds() {
        // A histogram (type 4, 32 words) and a time (unit seconds) between
        // the counts: neither is a count; offsets come from the descriptors.
        let (h, id, d, data) = file(
            &[
                ("halt_wait_hist", 0x24, 32),
                ("exits", 0, 1),
                ("halt_wait_ns", 0x20, 1),
                ("io_exits", 0, 1),
                ("insn_emulation", 0, 1),
            ],
            &[vec![7u64; 32], vec![1000, 55, 3, 900]].concat(),
        );
        let layout = Layout::parse(&h, &id, &d).unwrap();
        assert_eq!(layout.id, "kvm-1/vcpu-0");
        assert_eq!(layout.descriptors.len(), 5);
        assert_eq!(layout.data_len, 8 * 36);
        let counts = layout.counts(&data).unwrap();
        assert_eq!(
            counts,
            [
                ("exits".to_string(), 1000),
                ("io_exits".to_string(), 3),
                ("insn_emulation".to_string(), 900)
            ]
        );
        let c = KvmCounts::from_counts(&counts).unwrap();
        assert_eq!(c.exits, 1000);
        assert_eq!(c.kind("io_exits"), Some(3));
        assert_eq!(c.kind("halt_exits"), Some(0));
        assert_eq!(
            c.to_string(),
            "1000 (of which io_exits 3); other KVM events: insn_emulation 900"
        );
        let mut sum = c;
        sum.add(&c);
        assert_eq!(sum.exits, 2000);
        assert_eq!(sum.kind("io_exits"), Some(6));
    }

    #[test]
    fn malformed_files_are_errors() {
        let (h, id, d, data) = file(&[("io_exits", 0, 1)], &[1]);
        let layout = Layout::parse(&h, &id, &d).unwrap();
        // No `exits`: refused, not taken for 0.
        let counts = layout.counts(&data).unwrap();
        assert!(matches!(
            KvmCounts::from_counts(&counts),
            Err(StatsError::Missing("exits"))
        ));
        // Descriptors cut short, data cut short.
        assert!(Layout::parse(&h, &id, &d[..d.len() - 1]).is_err());
        assert!(layout.counts(&data[..4]).is_err());
        // A descriptor pointing far past any real data block.
        let (h, id, mut d, _) = file(&[("exits", 0, 1)], &[1]);
        d[8..12].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(Layout::parse(&h, &id, &d).is_err());
    }

    #[test]
    fn unavailable_is_said_not_zero() {
        let s = KvmStats::Unavailable {
            reason: StatsError::NoCapability.to_string(),
        };
        assert_eq!(s.exits(), None);
        assert!(s.to_string().starts_with("not available here ("), "{s}");
    }
}
