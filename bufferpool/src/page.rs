//! The data page format: every page starts with a header holding its
//! checksum, its page LSN and its own page id.
//!
//! ```text
//! offset  size  field
//!      0     4  CRC32C of bytes 4..4096
//!      4     4  magic "DBPG"
//!      8     8  page LSN: end of the log record of the last change
//!     16     8  page id (catches misdirected writes)
//!     24     8  reserved (zero)
//!     32  4064  contents
//! ```
//!
//! The checksum is filled in only when the page is written ([`seal`]), so
//! in memory a page is its header plus contents with a stale checksum. A
//! page that is entirely zero is a page that was never written: valid,
//! empty, LSN 0.

use crate::checksum::crc32c;
use crate::{Lsn, PageId, PAGE_SIZE};

/// Bytes of page header; contents start here.
pub const PAGE_HEADER: usize = 32;

/// Where the page LSN is in a page (8 bytes, little-endian).
pub const LSN_OFFSET: usize = 8;

/// Where the page id is in a page (8 bytes, little-endian): what Tabby's
/// every access reads through the page's own address, recovery writes into
/// an installed image and the pool into every page it writes.
pub const ID_OFFSET: usize = 16;

/// Writes page id `id` into `page`'s id field.
pub fn set_page_id(page: &mut [u8], id: PageId) {
    page[ID_OFFSET..ID_OFFSET + 8].copy_from_slice(&id.0.to_le_bytes());
}

/// Bytes of contents per page.
pub const PAGE_CONTENTS: usize = PAGE_SIZE - PAGE_HEADER;

const MAGIC: [u8; 4] = *b"DBPG";

/// A page-aligned page buffer.
#[derive(Clone)]
#[repr(C, align(4096))]
pub struct PageBuf(pub [u8; PAGE_SIZE]);

impl PageBuf {
    /// An all-zero page (a never-written page).
    pub const fn zeroed() -> PageBuf {
        PageBuf([0; PAGE_SIZE])
    }
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}

/// The page LSN of `page`.
pub fn page_lsn(page: &[u8]) -> Lsn {
    Lsn(u64_at(page, LSN_OFFSET))
}

/// Sets the page LSN of `page`.
pub fn set_page_lsn(page: &mut [u8], lsn: Lsn) {
    page[LSN_OFFSET..LSN_OFFSET + 8].copy_from_slice(&lsn.0.to_le_bytes());
}

/// Fills in magic, page id and checksum of `page` (a copy about to be
/// written).
pub fn seal(page: &mut [u8], id: PageId) {
    page[4..8].copy_from_slice(&MAGIC);
    set_page_id(page, id);
    let crc = crc32c(&page[4..PAGE_SIZE]);
    page[0..4].copy_from_slice(&crc.to_le_bytes());
}

/// What a page read from storage turned out to be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PageCheck {
    /// Checksum, magic and id hold.
    Valid,
    /// All zero: never written.
    Empty,
    /// The checksum does not hold (a torn or damaged write).
    BadChecksum,
    /// A valid page that belongs elsewhere.
    WrongId(PageId),
}

impl core::fmt::Display for PageCheck {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            PageCheck::Valid => f.write_str("a valid page"),
            PageCheck::Empty => f.write_str("all zero"),
            PageCheck::BadChecksum => f.write_str("its checksum does not hold"),
            PageCheck::WrongId(id) => write!(f, "it holds page {}", id.0),
        }
    }
}

/// Checks a page read from the slot of page `id`.
pub fn verify(page: &[u8], id: PageId) -> PageCheck {
    let stored = u32::from_le_bytes(page[0..4].try_into().unwrap());
    if stored != crc32c(&page[4..PAGE_SIZE]) || page[4..8] != MAGIC {
        if page.iter().all(|&b| b == 0) {
            return PageCheck::Empty;
        }
        return PageCheck::BadChecksum;
    }
    let found = PageId(u64_at(page, ID_OFFSET));
    if found != id {
        return PageCheck::WrongId(found);
    }
    PageCheck::Valid
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_and_verify() {
        let mut p = PageBuf::zeroed();
        assert_eq!(verify(&p.0, PageId(3)), PageCheck::Empty);
        p.0[100] = 7;
        set_page_lsn(&mut p.0, Lsn(12345));
        assert_eq!(verify(&p.0, PageId(3)), PageCheck::BadChecksum);
        seal(&mut p.0, PageId(3));
        assert_eq!(verify(&p.0, PageId(3)), PageCheck::Valid);
        assert_eq!(page_lsn(&p.0), Lsn(12345));
        assert_eq!(verify(&p.0, PageId(4)), PageCheck::WrongId(PageId(3)));
        // Tear it: the second sector from an older version.
        p.0[600] ^= 1;
        assert_eq!(verify(&p.0, PageId(3)), PageCheck::BadChecksum);
    }
}
