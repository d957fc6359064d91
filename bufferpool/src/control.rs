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
//!     12     4  format version (3)
//!     16     8  sequence number
//!     24     8  format id (tags this format's log sectors)
//!     32     4  epoch: incremented at every start, tags log sectors
//!     36     4  reserved (zero)
//!     40     8  log blocks
//!     48     8  data pages (the data area's size now: it grows, see
//!               `crate::growth`)
//!     56     8  redo LSN: recovery scans the log from here
//!     64     8  epoch start LSN: where the log of this epoch begins
//!     72  4024  reserved (zero)
//! ```
//!
//! The epoch start is the end of the log that the recovery which began the
//! epoch verified and kept (`FIRST_LSN` after a format): log bytes before
//! it may carry older epochs, log bytes from it on only this epoch
//! (see `crate::log::scan`).
//!
//! Every field is checked when the block is decoded ([`Control::decode`]):
//! sizes are bounded so that everything computed from them (the layout's
//! block count, log positions, the next epoch and sequence number) fits
//! without overflow, and a block with a good checksum but an impossible
//! value is refused as corrupt, never trusted.
//!
//! Namespace layout: blocks 0-1 control, then `log_blocks` log blocks,
//! then `data_pages` data pages (and room for the area to grow into);
//! and the device's last block holds the
//! *backup* control block, the copy format wrote (as GPT and ext4 keep a
//! backup header). It is never updated and never used to open a store:
//! it lets a store whose first blocks were destroyed be recognised, and
//! refused, instead of being taken for a blank device and formatted.
//!
//! While a format runs, both slots hold its *marker* instead (magic
//! "DBOSFMT1", the same checksum, version and format id at 12 and 16, the
//! rest zero): a device interrupted during a format says so
//! ([`ControlError::Unfinished`]), holds no store, and is formatted again
//! by an open that formats blank devices, where anything unrecognised is
//! refused. Format writes the marker to both slots first and clears slot 0
//! (the marker's last copy) after its control block is stable in slot 1.

use crate::checksum::crc32c;
use crate::device::BLOCK_SIZE;
use crate::log::{LogGeometry, SECTOR, SECTOR_HEADER};
use crate::{Lsn, PageId};
use core::fmt;

const MAGIC: &[u8; 8] = b"DBOSCTL1";
/// The magic of a format's marker (see the module docs).
const FORMAT_MAGIC: &[u8; 8] = b"DBOSFMT1";
/// The format version this build reads and writes.
pub const VERSION: u32 = 3;

/// Blocks used by the control block copies.
pub const CONTROL_BLOCKS: u64 = 2;
/// Blocks used by the backup control block (the device's last block).
pub const BACKUP_BLOCKS: u64 = 1;

/// Most log blocks a layout may have (16 TiB of log).
pub const MAX_LOG_BLOCKS: u64 = 1 << 32;
/// Most data pages a layout may have (256 TiB of pages).
pub const MAX_DATA_PAGES: u64 = 1 << 36;
/// Fewest log blocks a layout may have.
pub const MIN_LOG_BLOCKS: u64 = 2;
/// Largest LSN a control block may name (the log never gets near it:
/// 4 EiB of log).
pub const MAX_LSN: u64 = 1 << 62;

/// Where things are on the namespace.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    /// Blocks of log (a circular area).
    pub log_blocks: u64,
    /// Data pages.
    pub data_pages: u64,
}

/// Why a layout cannot be used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LayoutError {
    /// `log_blocks` outside `MIN_LOG_BLOCKS..=MAX_LOG_BLOCKS`.
    LogBlocks(u64),
    /// `data_pages` above `MAX_DATA_PAGES`.
    DataPages(u64),
}

impl fmt::Display for LayoutError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LayoutError::LogBlocks(n) => write!(
                f,
                "{n} log blocks (must be {MIN_LOG_BLOCKS} to {MAX_LOG_BLOCKS})"
            ),
            LayoutError::DataPages(n) => {
                write!(f, "{n} data pages (at most {MAX_DATA_PAGES})")
            }
        }
    }
}

impl Layout {
    /// First log block.
    pub fn log_start(&self) -> u64 {
        CONTROL_BLOCKS
    }

    /// Block of page `id` (of a layout that passed [`Layout::validate`],
    /// for `id` below `data_pages`).
    pub fn page_lba(&self, id: PageId) -> u64 {
        CONTROL_BLOCKS + self.log_blocks + id.0
    }

    /// Blocks the layout needs: the control blocks, the log, the data
    /// pages and the backup control block (which goes in the device's
    /// last block, at or past the data); `None` if that does not fit 64
    /// bits.
    pub fn checked_blocks(&self) -> Option<u64> {
        CONTROL_BLOCKS
            .checked_add(self.log_blocks)?
            .checked_add(self.data_pages)?
            .checked_add(BACKUP_BLOCKS)
    }

    /// Blocks the layout needs (`u64::MAX` if that does not fit 64 bits,
    /// which no device has).
    pub fn blocks(&self) -> u64 {
        self.checked_blocks().unwrap_or(u64::MAX)
    }

    /// Whether the sizes are within the supported bounds (which keeps
    /// every size computed from them within 64 bits).
    pub fn validate(&self) -> Result<(), LayoutError> {
        if !(MIN_LOG_BLOCKS..=MAX_LOG_BLOCKS).contains(&self.log_blocks) {
            return Err(LayoutError::LogBlocks(self.log_blocks));
        }
        if self.data_pages > MAX_DATA_PAGES {
            return Err(LayoutError::DataPages(self.data_pages));
        }
        Ok(())
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
    /// Where the log of this epoch begins (see the module docs).
    pub epoch_start: Lsn,
}

/// Why a block is not a valid control block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ControlError {
    /// The block is entirely zero (never written).
    Zeros,
    /// The block does not start with the magic: something else is there.
    NotControl,
    /// The magic is there, the checksum does not hold (a torn or damaged
    /// control write).
    BadChecksum,
    /// The checksum holds, the format version is not this build's.
    Version(u32),
    /// The checksum holds, a field has an impossible value.
    BadField { field: &'static str, value: u64 },
    /// The marker of a format that has not finished (see the module
    /// docs), whose format id was `format_id`.
    Unfinished { format_id: u64 },
}

impl fmt::Display for ControlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ControlError::Zeros => f.write_str("all zero"),
            ControlError::NotControl => f.write_str("not a control block (no magic)"),
            ControlError::BadChecksum => f.write_str("a control block failing its checksum"),
            ControlError::Version(v) => write!(
                f,
                "a control block of format version {v} (this build reads version {VERSION})"
            ),
            ControlError::BadField { field, value } => write!(
                f,
                "a corrupt control block: {field} = {value} is impossible"
            ),
            ControlError::Unfinished { format_id } => write!(
                f,
                "the marker of a format (id {format_id:#x}) that did not finish"
            ),
        }
    }
}

/// Whether `lsn` is a position a log record can start at or end at.
fn payload_position(lsn: u64) -> bool {
    lsn % SECTOR >= SECTOR_HEADER && lsn <= MAX_LSN
}

impl Control {
    /// The log area this control block describes, in its epoch.
    pub fn log_geometry(&self) -> LogGeometry {
        LogGeometry {
            start_lba: self.layout.log_start(),
            blocks: self.layout.log_blocks,
            format_id: self.format_id,
            epoch: self.epoch,
        }
    }

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
        out[64..72].copy_from_slice(&self.epoch_start.0.to_le_bytes());
        let crc = crc32c(&out[12..]);
        out[8..12].copy_from_slice(&crc.to_le_bytes());
    }

    /// Encodes into one block the marker a format of `format_id` leaves
    /// in the control slots while it runs (see the module docs).
    pub fn encode_format_marker(format_id: u64, out: &mut [u8]) {
        let out = &mut out[..BLOCK_SIZE];
        out.fill(0);
        out[0..8].copy_from_slice(FORMAT_MAGIC);
        out[12..16].copy_from_slice(&VERSION.to_le_bytes());
        out[16..24].copy_from_slice(&format_id.to_le_bytes());
        let crc = crc32c(&out[12..]);
        out[8..12].copy_from_slice(&crc.to_le_bytes());
    }

    /// Decodes one block (at least [`BLOCK_SIZE`] bytes): magic, checksum,
    /// version and every field's bounds must hold. A format's intact
    /// marker is [`ControlError::Unfinished`].
    pub fn decode(block: &[u8]) -> Result<Control, ControlError> {
        let b = &block[..BLOCK_SIZE];
        let u64_at = |at: usize| u64::from_le_bytes(b[at..at + 8].try_into().unwrap());
        let u32_at = |at: usize| u32::from_le_bytes(b[at..at + 4].try_into().unwrap());
        if &b[0..8] == FORMAT_MAGIC {
            // Only an intact marker of this version, with nothing else in
            // it, means "a format was running".
            if u32_at(8) != crc32c(&b[12..]) {
                return Err(ControlError::BadChecksum);
            }
            if u32_at(12) != VERSION {
                return Err(ControlError::Version(u32_at(12)));
            }
            if let Some(i) = b[24..].iter().position(|&x| x != 0) {
                return Err(ControlError::BadField {
                    field: "format marker byte",
                    value: 24 + i as u64,
                });
            }
            return Err(ControlError::Unfinished {
                format_id: u64_at(16),
            });
        }
        if &b[0..8] != MAGIC {
            if b.iter().all(|&x| x == 0) {
                return Err(ControlError::Zeros);
            }
            return Err(ControlError::NotControl);
        }
        if u32_at(8) != crc32c(&b[12..]) {
            return Err(ControlError::BadChecksum);
        }
        if u32_at(12) != VERSION {
            return Err(ControlError::Version(u32_at(12)));
        }
        let c = Control {
            seq: u64_at(16),
            format_id: u64_at(24),
            epoch: u32_at(32),
            layout: Layout {
                log_blocks: u64_at(40),
                data_pages: u64_at(48),
            },
            redo: Lsn(u64_at(56)),
            epoch_start: Lsn(u64_at(64)),
        };
        let bad = |field, value| Err(ControlError::BadField { field, value });
        if c.seq == 0 || c.seq >= u64::MAX / 2 {
            return bad("sequence number", c.seq);
        }
        if c.epoch == 0 || c.epoch >= u32::MAX / 2 {
            return bad("epoch", c.epoch as u64);
        }
        match c.layout.validate() {
            Err(LayoutError::LogBlocks(n)) => return bad("log blocks", n),
            Err(LayoutError::DataPages(n)) => return bad("data pages", n),
            Ok(()) => {}
        }
        if !payload_position(c.redo.0) {
            return bad("redo LSN", c.redo.0);
        }
        if !payload_position(c.epoch_start.0) {
            return bad("epoch start LSN", c.epoch_start.0);
        }
        if u32_at(36) != 0 {
            return bad("reserved bytes 36..40", u32_at(36) as u64);
        }
        if let Some(i) = b[72..].iter().position(|&x| x != 0) {
            return bad("reserved byte", 72 + i as u64);
        }
        Ok(c)
    }

    /// The newer valid copy of the two control blocks, or why neither is.
    pub fn newest(slot0: &[u8], slot1: &[u8]) -> Result<Control, [ControlError; 2]> {
        match (Control::decode(slot0), Control::decode(slot1)) {
            (Ok(a), Ok(b)) => Ok(if b.seq > a.seq { b } else { a }),
            (Ok(a), Err(_)) => Ok(a),
            (Err(_), Ok(b)) => Ok(b),
            (Err(a), Err(b)) => Err([a, b]),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    fn sample() -> Control {
        Control {
            seq: 5,
            format_id: 0xabcdef,
            epoch: 3,
            layout: Layout {
                log_blocks: 64,
                data_pages: 10,
            },
            redo: Lsn(4096 + 24),
            epoch_start: Lsn(24),
        }
    }

    #[test]
    fn encode_decode_newest() {
        let c = sample();
        let mut a = vec![0u8; 4096];
        c.encode(&mut a);
        assert_eq!(Control::decode(&a), Ok(c));
        assert_eq!(c.lba(), 1);
        assert_eq!(c.layout.page_lba(PageId(3)), 2 + 64 + 3);
        let mut b = vec![0u8; 4096];
        let c6 = Control { seq: 6, ..c };
        c6.encode(&mut b);
        assert_eq!(Control::newest(&a, &b), Ok(c6));
        // A torn newer copy: the older one wins.
        b[1000] ^= 1;
        assert_eq!(Control::decode(&b), Err(ControlError::BadChecksum));
        assert_eq!(Control::newest(&a, &b), Ok(c));
        assert_eq!(
            Control::newest(&b, &vec![0u8; 4096]),
            Err([ControlError::BadChecksum, ControlError::Zeros])
        );
        assert_eq!(
            Control::decode(&vec![7u8; 4096]),
            Err(ControlError::NotControl)
        );
    }

    #[test]
    fn format_markers_decode_as_unfinished_only_when_intact() {
        let mut m = vec![0u8; 4096];
        Control::encode_format_marker(0x1234, &mut m);
        assert_eq!(
            Control::decode(&m),
            Err(ControlError::Unfinished { format_id: 0x1234 })
        );
        // Never a store, whatever the other slot holds but a control block.
        assert_eq!(
            Control::newest(&m, &vec![0u8; 4096]),
            Err([
                ControlError::Unfinished { format_id: 0x1234 },
                ControlError::Zeros
            ])
        );
        let mut c = vec![0u8; 4096];
        sample().encode(&mut c);
        assert_eq!(Control::newest(&m, &c), Ok(sample()));
        // Torn or damaged: not a marker.
        let mut torn = m.clone();
        torn[3000] = 1;
        assert_eq!(Control::decode(&torn), Err(ControlError::BadChecksum));
        // A valid checksum around a marker with more in it: refused.
        let mut extra = m.clone();
        extra[100] = 1;
        let crc = crc32c(&extra[12..]);
        extra[8..12].copy_from_slice(&crc.to_le_bytes());
        assert_eq!(
            Control::decode(&extra),
            Err(ControlError::BadField {
                field: "format marker byte",
                value: 100
            })
        );
    }

    /// A block with a valid checksum around `c`'s fields, whatever they are.
    fn crafted(c: &Control) -> vec::Vec<u8> {
        let mut b = vec![0u8; 4096];
        c.encode(&mut b);
        b
    }

    #[test]
    fn impossible_fields_are_corrupt_not_trusted() {
        let c = sample();
        let cases = [
            (
                Control {
                    layout: Layout {
                        log_blocks: u64::MAX,
                        data_pages: 10,
                    },
                    ..c
                },
                "log blocks",
                u64::MAX,
            ),
            (
                Control {
                    layout: Layout {
                        log_blocks: 64,
                        data_pages: u64::MAX - 1,
                    },
                    ..c
                },
                "data pages",
                u64::MAX - 1,
            ),
            (
                Control {
                    layout: Layout {
                        log_blocks: 1,
                        data_pages: 10,
                    },
                    ..c
                },
                "log blocks",
                1,
            ),
            (
                Control {
                    redo: Lsn(512),
                    ..c
                },
                "redo LSN",
                512,
            ),
            (
                Control {
                    redo: Lsn(u64::MAX),
                    ..c
                },
                "redo LSN",
                u64::MAX,
            ),
            (
                Control {
                    epoch_start: Lsn(3),
                    ..c
                },
                "epoch start LSN",
                3,
            ),
            (
                Control {
                    epoch: u32::MAX,
                    ..c
                },
                "epoch",
                u32::MAX as u64,
            ),
            (Control { seq: u64::MAX, ..c }, "sequence number", u64::MAX),
        ];
        for (bad, field, value) in cases {
            assert_eq!(
                Control::decode(&crafted(&bad)),
                Err(ControlError::BadField { field, value }),
                "{bad:?}"
            );
        }
        let mut v1 = crafted(&c);
        v1[12..16].copy_from_slice(&1u32.to_le_bytes());
        let crc = crc32c(&v1[12..]);
        v1[8..12].copy_from_slice(&crc.to_le_bytes());
        assert_eq!(Control::decode(&v1), Err(ControlError::Version(1)));
        assert_eq!(
            Layout {
                log_blocks: u64::MAX,
                data_pages: 5
            }
            .checked_blocks(),
            None
        );
        assert_eq!(c.layout.checked_blocks(), Some(2 + 64 + 10 + 1));
    }
}
