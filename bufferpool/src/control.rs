//! The control block: where the log and the data pages are, and the
//! checkpoint recovery starts from.
//!
//! It lives in blocks 0 and 1 of the namespace, written alternately (slot
//! `seq % 2`) with FUA, so a torn control write leaves the other copy; the
//! valid copy with the higher sequence number wins. A checkpoint is complete
//! when its control block is stable: the control block is the checkpoint
//! record.
//!
//! ```text
//! offset  size  field
//!      0     8  magic "DBOSCTL1"
//!      8     4  CRC32C of bytes 12..4096
//!     12     4  format version (1)
//!     16     8  sequence number
//!     24     8  format id (tags this format's log sectors)
//!     32     4  epoch: incremented at every start, tags log sectors
//!     36     4  reserved
//!     40     8  log blocks
//!     48     8  data pages
//!     56     8  redo LSN: recovery scans the log from here
//! ```
//!
//! Namespace layout: blocks 0-1 control, then `log_blocks` log blocks,
//! then `data_pages` data pages.

use crate::checksum::crc32c;
use crate::device::BLOCK_SIZE;
use crate::{Lsn, PageId};

const MAGIC: &[u8; 8] = b"DBOSCTL1";
const VERSION: u32 = 1;

/// Blocks used by the control block copies.
pub const CONTROL_BLOCKS: u64 = 2;

/// Where things are on the namespace.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    /// Blocks of log (a circular area).
    pub log_blocks: u64,
    /// Data pages.
    pub data_pages: u64,
}

impl Layout {
    /// First log block.
    pub fn log_start(&self) -> u64 {
        CONTROL_BLOCKS
    }

    /// Block of page `id`.
    pub fn page_lba(&self, id: PageId) -> u64 {
        CONTROL_BLOCKS + self.log_blocks + id.0
    }

    /// Blocks the layout needs.
    pub fn blocks(&self) -> u64 {
        CONTROL_BLOCKS + self.log_blocks + self.data_pages
    }
}

/// One control block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Control {
    pub seq: u64,
    pub format_id: u64,
    pub epoch: u32,
    pub layout: Layout,
    pub redo: Lsn,
}

impl Control {
    /// The block this control block is written to.
    pub fn lba(&self) -> u64 {
        self.seq % CONTROL_BLOCKS
    }

    /// Encodes into one block.
    pub fn encode(&self, out: &mut [u8]) {
        let out = &mut out[..BLOCK_SIZE];
        out.fill(0);
        out[0..8].copy_from_slice(MAGIC);
        out[12..16].copy_from_slice(&VERSION.to_le_bytes());
        out[16..24].copy_from_slice(&self.seq.to_le_bytes());
        out[24..32].copy_from_slice(&self.format_id.to_le_bytes());
        out[32..36].copy_from_slice(&self.epoch.to_le_bytes());
        out[40..48].copy_from_slice(&self.layout.log_blocks.to_le_bytes());
        out[48..56].copy_from_slice(&self.layout.data_pages.to_le_bytes());
        out[56..64].copy_from_slice(&self.redo.0.to_le_bytes());
        let crc = crc32c(&out[12..]);
        out[8..12].copy_from_slice(&crc.to_le_bytes());
    }

    /// Decodes one block; `None` unless magic, version and CRC hold.
    pub fn decode(block: &[u8]) -> Option<Control> {
        let b = &block[..BLOCK_SIZE];
        let u64_at = |at: usize| u64::from_le_bytes(b[at..at + 8].try_into().unwrap());
        let u32_at = |at: usize| u32::from_le_bytes(b[at..at + 4].try_into().unwrap());
        if &b[0..8] != MAGIC || u32_at(8) != crc32c(&b[12..]) || u32_at(12) != VERSION {
            return None;
        }
        Some(Control {
            seq: u64_at(16),
            format_id: u64_at(24),
            epoch: u32_at(32),
            layout: Layout {
                log_blocks: u64_at(40),
                data_pages: u64_at(48),
            },
            redo: Lsn(u64_at(56)),
        })
    }

    /// The newer valid copy of the two control blocks.
    pub fn newest(slot0: &[u8], slot1: &[u8]) -> Option<Control> {
        match (Control::decode(slot0), Control::decode(slot1)) {
            (Some(a), Some(b)) => Some(if b.seq > a.seq { b } else { a }),
            (a, b) => a.or(b),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    #[test]
    fn encode_decode_newest() {
        let c = Control {
            seq: 5,
            format_id: 0xabcdef,
            epoch: 3,
            layout: Layout {
                log_blocks: 64,
                data_pages: 10,
            },
            redo: Lsn(4096 + 24),
        };
        let mut a = vec![0u8; 4096];
        c.encode(&mut a);
        assert_eq!(Control::decode(&a), Some(c));
        assert_eq!(c.lba(), 1);
        assert_eq!(c.layout.page_lba(PageId(3)), 2 + 64 + 3);
        let mut b = vec![0u8; 4096];
        let c6 = Control { seq: 6, ..c };
        c6.encode(&mut b);
        assert_eq!(Control::newest(&a, &b), Some(c6));
        // A torn newer copy: the older one wins.
        b[1000] ^= 1;
        assert_eq!(Control::newest(&a, &b), Some(c));
        assert_eq!(Control::newest(&b, &b), None);
    }
}
