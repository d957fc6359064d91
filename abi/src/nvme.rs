//! The NVMe queue pair as both sides see it in memory: where a queue pair
//! lives ([`QueuePairConfig`], what the driver registers and the host
//! validates) and how one block of memory is laid out for it
//! ([`QueueLayout`]). The entry formats (64-byte submission and 16-byte
//! completion entries) and the protocol are the `dbos-nvme` crate's.

use crate::{Pod, PAGE_SIZE};

/// Size of a submission queue entry.
pub const SQE_SIZE: u64 = 64;
/// Size of a completion queue entry.
pub const CQE_SIZE: u64 = 16;

/// Size of one logical block in bytes (the LBA unit): one page.
pub const BLOCK_SIZE: u64 = PAGE_SIZE;
/// log2 of [`BLOCK_SIZE`].
pub const BLOCK_SHIFT: u32 = crate::PAGE_SHIFT;

/// Largest queue depth (entries per ring).
pub const MAX_DEPTH: u16 = 4096;
/// Smallest queue depth: a ring of 2 holds one entry.
pub const MIN_DEPTH: u16 = 2;

/// Event index value meaning "the host is polling; no real doorbell needed".
pub const EVENT_IDX_POLLING: u32 = u32::MAX;

/// Dword index of the SQ tail in the doorbell and event-index pairs.
pub const SQ_TAIL_WORD: usize = 0;
/// Dword index of the CQ head in the doorbell and event-index pairs.
pub const CQ_HEAD_WORD: usize = 1;
/// Dword index, among the doorbells (which the driver writes), of the
/// *waiting* word: 0, or the CPU (APIC id) + 1 that is going to sleep
/// until the host posts a completion on this queue pair. A host that
/// posts one and finds it set clears it and sends that CPU the queue's
/// [`QueuePairConfig::interrupt`] (the mirror of io_uring's
/// `IORING_SQ_NEED_WAKEUP`: the sleeper publishes its intent, then checks
/// the ring once more; the host publishes the completion, then checks the
/// word).
pub const WAIT_WORD: usize = 2;
/// Bytes of the doorbell area: SQ tail, CQ head, waiting, one reserved.
pub const DOORBELL_BYTES: u64 = 16;

/// Where a queue pair lives, as the driver tells the host at creation.
///
/// All addresses are device addresses: guest-physical in a VM, process
/// virtual addresses in process mode. The host validates every field
/// ([`QueuePairConfig::validate_shape`] for what needs no memory map, and
/// its memory checks for the rest).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QueuePairConfig {
    /// Submission ring: `depth` × 64 bytes, 4 KiB aligned.
    pub sq_addr: u64,
    /// Completion ring: `depth` × 16 bytes, 4 KiB aligned.
    pub cq_addr: u64,
    /// Shadow doorbells: four dwords (SQ tail, CQ head, waiting
    /// ([`WAIT_WORD`]), reserved), 8-byte aligned.
    pub doorbell_addr: u64,
    /// Event indexes: two dwords (SQ tail, CQ head), 8-byte aligned.
    pub event_idx_addr: u64,
    /// Entries per ring, in [`MIN_DEPTH`]..=[`MAX_DEPTH`].
    pub depth: u16,
    /// The interrupt vector the host sends a CPU waiting for a completion
    /// ([`WAIT_WORD`]), 32 to 254; 0: the driver never sleeps (it polls).
    pub interrupt: u16,
    pub _reserved: [u16; 2],
}

// SAFETY: #[repr(C)], four u64 then u16 + [u16; 3]: 40 bytes, no padding
// (checked in the tests), every bit pattern valid.
unsafe impl Pod for QueuePairConfig {}

/// A [`QueuePairConfig`] the host refuses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConfigError {
    /// The depth is outside [`MIN_DEPTH`]..=[`MAX_DEPTH`].
    Depth(u16),
    /// An area is not aligned.
    Misaligned {
        what: &'static str,
        addr: u64,
        align: u64,
    },
    /// An area wraps the address space or lies outside registered memory.
    OutsideMemory {
        what: &'static str,
        addr: u64,
        len: u64,
    },
    /// Two areas overlap.
    Overlap { a: &'static str, b: &'static str },
    /// The host serves no more queue pairs.
    TooManyQueues(usize),
    /// An interrupt vector the host does not send (0 or 32..=254), or
    /// interrupts where the host cannot send them.
    Interrupt(u16),
}

impl core::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match *self {
            Self::Depth(d) => write!(f, "queue depth {d} is outside {MIN_DEPTH}..={MAX_DEPTH}"),
            Self::Misaligned { what, addr, align } => {
                write!(f, "{what} address {addr:#x} is not {align}-byte aligned")
            }
            Self::OutsideMemory { what, addr, len } => {
                write!(
                    f,
                    "{what} [{addr:#x}, +{len:#x}) is outside the registered memory"
                )
            }
            Self::Overlap { a, b } => write!(f, "{a} and {b} overlap"),
            Self::TooManyQueues(n) => write!(f, "too many queue pairs (at most {n})"),
            Self::Interrupt(v) => write!(
                f,
                "completion interrupt vector {v} cannot be sent here (0: none, or 32..=254 \
                 where the host sends interrupts)"
            ),
        }
    }
}

impl core::error::Error for ConfigError {}

impl QueuePairConfig {
    /// The four areas: (name, address, length, alignment).
    pub fn areas(&self) -> [(&'static str, u64, u64, u64); 4] {
        let depth = u64::from(self.depth);
        [
            ("submission ring", self.sq_addr, depth * SQE_SIZE, PAGE_SIZE),
            ("completion ring", self.cq_addr, depth * CQE_SIZE, PAGE_SIZE),
            ("doorbells", self.doorbell_addr, DOORBELL_BYTES, 8),
            ("event indexes", self.event_idx_addr, 8, 8),
        ]
    }

    /// Checks the depth, the alignments and that the four areas do not
    /// overlap (each other or the end of the address space). Whether they
    /// lie in memory is the host's check.
    pub fn validate_shape(&self) -> Result<(), ConfigError> {
        if !(MIN_DEPTH..=MAX_DEPTH).contains(&self.depth) {
            return Err(ConfigError::Depth(self.depth));
        }
        if self.interrupt != 0 && !(32..=254).contains(&self.interrupt) {
            return Err(ConfigError::Interrupt(self.interrupt));
        }
        let areas = self.areas();
        for (what, addr, len, align) in areas {
            if addr % align != 0 {
                return Err(ConfigError::Misaligned { what, addr, align });
            }
            if addr.checked_add(len).is_none() {
                return Err(ConfigError::OutsideMemory { what, addr, len });
            }
        }
        for i in 0..areas.len() {
            for j in i + 1..areas.len() {
                let (a, a0, alen, _) = areas[i];
                let (b, b0, blen, _) = areas[j];
                if a0 < b0 + blen && b0 < a0 + alen {
                    return Err(ConfigError::Overlap { a, b });
                }
            }
        }
        Ok(())
    }
}

/// A queue pair's memory laid out in one block: submission ring, completion
/// ring, then one page with the shadow doorbells (offset 0) and the event
/// indexes (offset 64, their own cache line, since the other side writes them).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QueueLayout {
    depth: u16,
}

impl QueueLayout {
    /// The layout for `depth` entries per ring, `None` outside
    /// [`MIN_DEPTH`]..=[`MAX_DEPTH`].
    pub const fn new(depth: u16) -> Option<QueueLayout> {
        if depth < MIN_DEPTH || depth > MAX_DEPTH {
            None
        } else {
            Some(QueueLayout { depth })
        }
    }

    const fn round_page(bytes: u64) -> u64 {
        bytes.div_ceil(PAGE_SIZE) * PAGE_SIZE
    }

    /// Entries per ring.
    pub const fn depth(&self) -> u16 {
        self.depth
    }

    /// Offset of the submission ring.
    pub const fn sq_offset(&self) -> u64 {
        0
    }

    /// Offset of the completion ring.
    pub const fn cq_offset(&self) -> u64 {
        Self::round_page(self.depth as u64 * SQE_SIZE)
    }

    /// Offset of the shadow doorbells.
    pub const fn doorbell_offset(&self) -> u64 {
        self.cq_offset() + Self::round_page(self.depth as u64 * CQE_SIZE)
    }

    /// Offset of the event indexes.
    pub const fn event_idx_offset(&self) -> u64 {
        self.doorbell_offset() + 64
    }

    /// Total size in bytes (a multiple of 4 KiB).
    pub const fn size(&self) -> u64 {
        self.doorbell_offset() + PAGE_SIZE
    }

    /// The config for this layout placed at device address `base`.
    pub const fn config(&self, base: u64) -> QueuePairConfig {
        QueuePairConfig {
            sq_addr: base + self.sq_offset(),
            cq_addr: base + self.cq_offset(),
            doorbell_addr: base + self.doorbell_offset(),
            event_idx_addr: base + self.event_idx_offset(),
            depth: self.depth,
            interrupt: 0,
            _reserved: [0; 2],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registration_layout_is_stable() {
        assert_eq!(core::mem::size_of::<QueuePairConfig>(), 40);
        assert_eq!(core::mem::offset_of!(QueuePairConfig, depth), 32);
    }

    #[test]
    fn layout_and_config() {
        let l = QueueLayout::new(32).unwrap();
        assert_eq!(l.cq_offset(), 4096);
        assert_eq!(l.doorbell_offset(), 8192);
        assert_eq!(l.event_idx_offset(), 8192 + 64);
        assert_eq!(l.size(), 12288);
        let l = QueueLayout::new(256).unwrap();
        assert_eq!(l.cq_offset(), 16384);
        assert_eq!(l.doorbell_offset(), 16384 + 4096);
        assert!(QueueLayout::new(1).is_none());
        assert!(QueueLayout::new(MAX_DEPTH + 1).is_none());
        let c = l.config(0x10_0000);
        assert_eq!(c.validate_shape(), Ok(()));
        let mut bad = c;
        bad.depth = 1;
        assert_eq!(bad.validate_shape(), Err(ConfigError::Depth(1)));
        let mut bad = c;
        bad.sq_addr += 64;
        assert_eq!(
            bad.validate_shape(),
            Err(ConfigError::Misaligned {
                what: "submission ring",
                addr: 0x10_0040,
                align: 4096
            })
        );
        let mut bad = c;
        bad.cq_addr = c.sq_addr;
        assert_eq!(
            bad.validate_shape(),
            Err(ConfigError::Overlap {
                a: "submission ring",
                b: "completion ring"
            })
        );
        let mut bad = c;
        bad.event_idx_addr = c.doorbell_addr + 4;
        assert_eq!(
            bad.validate_shape(),
            Err(ConfigError::Misaligned {
                what: "event indexes",
                addr: c.doorbell_addr + 4,
                align: 8
            })
        );
        let mut bad = c;
        bad.sq_addr = u64::MAX - 4095;
        assert!(matches!(
            bad.validate_shape(),
            Err(ConfigError::OutsideMemory { .. })
        ));
    }
}
