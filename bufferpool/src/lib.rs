//! Buffer management for dbos.
//!
//! For now this crate holds the identifiers the buffer manager and the
//! write-ahead log are built on; Tabby, the vmcache-style process buffer
//! manager, the B+tree and the WAL arrive with their own issues. It is
//! `no_std` so the same code runs in the guest and in a process.
#![no_std]

/// Size of a database page in bytes.
pub const PAGE_SIZE: usize = 4096;

/// Identifies a database page: its index in the data file, so that page `n`
/// lives at byte offset `n * PAGE_SIZE` and, in an MMU-translated buffer pool,
/// at `window_base + n * PAGE_SIZE`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PageId(pub u64);

impl PageId {
    /// Byte offset of the page in the data file (or in the virtual window).
    /// `None` if it does not fit in 64 bits.
    pub fn byte_offset(self) -> Option<u64> {
        self.0.checked_mul(PAGE_SIZE as u64)
    }

    /// The page containing byte `offset`.
    pub fn containing(offset: u64) -> PageId {
        PageId(offset / PAGE_SIZE as u64)
    }
}

/// A log sequence number: the byte position of a record in the (logically
/// unbounded) write-ahead log. LSNs only grow; `Lsn::ZERO` precedes every record.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Lsn(pub u64);

impl Lsn {
    pub const ZERO: Lsn = Lsn(0);

    /// The LSN `bytes` further on; `None` on overflow.
    pub fn advance(self, bytes: u64) -> Option<Lsn> {
        self.0.checked_add(bytes).map(Lsn)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_offsets() {
        assert_eq!(PageId(3).byte_offset(), Some(12288));
        assert_eq!(PageId(u64::MAX).byte_offset(), None);
        assert_eq!(PageId::containing(12287), PageId(2));
        assert_eq!(PageId::containing(12288), PageId(3));
    }

    #[test]
    fn lsns_order_and_advance() {
        assert!(Lsn::ZERO < Lsn(1));
        assert_eq!(Lsn(10).advance(5), Some(Lsn(15)));
        assert_eq!(Lsn(u64::MAX).advance(1), None);
    }
}
