//! Log records: framing and encoding.
//!
//! Every record is framed as
//!
//! ```text
//! offset  size  field
//!      0     4  total length in bytes (header included)
//!      4     4  CRC32C of the length, the LSN and the body
//!      8     8  LSN: where the record starts in the log
//!     16     1  kind
//!     17     -  body of the kind
//! ```
//!
//! The LSN in the frame is what lets the log reader tell a record of this
//! lap of the log from stale bytes of an earlier one, and the CRC what lets
//! it tell a complete record from a torn one.
//!
//! Kinds:
//! - [`Record::PageImage`]: a full page image (torn-page protection: logged
//!   on the first change of a page after a checkpoint), `page u64, image
//!   [u8; 4096]`.
//! - [`Record::PageWrite`]: bytes written into a page, `page u64, offset
//!   u16, data`.
//! - [`Record::Commit`]: ends a transaction whose `writes` page writes
//!   precede it, `writes u32`.
//! - [`Record::PageLsns`]: part of a checkpoint's page-LSN table: the page
//!   LSN that pages `first..` held on storage once the checkpoint whose
//!   redo point is `checkpoint` had written them (0: not known, a page
//!   changed after the redo point), `checkpoint u64, first u64, lsns
//!   [u64]`. Recovery refuses a page older than its entry (a lost or
//!   reverted page write) unless the log holds an image of it.

use crate::checksum::Crc32c;
use crate::{Lsn, PageId, PAGE_SIZE};

/// Bytes of frame before the body (length, CRC, LSN, kind).
pub const RECORD_HEADER: usize = 17;

const KIND_PAGE_IMAGE: u8 = 1;
const KIND_PAGE_WRITE: u8 = 2;
const KIND_COMMIT: u8 = 3;
const KIND_PAGE_LSNS: u8 = 4;

/// Most pages one [`Record::PageLsns`] covers (3840 bytes of LSNs).
pub const PAGE_LSNS_PER_RECORD: usize = 480;

/// One log record, borrowing its data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Record<'a> {
    PageImage {
        page: PageId,
        image: &'a [u8],
    },
    PageWrite {
        page: PageId,
        offset: u16,
        data: &'a [u8],
    },
    Commit {
        writes: u32,
    },
    PageLsns {
        checkpoint: Lsn,
        first: PageId,
        /// Little-endian `u64` LSNs, one per page from `first` on.
        lsns: &'a [u8],
    },
}

/// Why bytes are not a record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecordError {
    /// Fewer bytes than the frame says.
    Incomplete,
    /// The length field is impossible.
    BadLength(u32),
    /// The CRC does not hold.
    BadChecksum,
    /// The frame's LSN is not where the record was found.
    WrongLsn { expected: Lsn, found: Lsn },
    /// An unknown kind or a body that does not fit its kind.
    BadBody,
}

impl core::fmt::Display for RecordError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            RecordError::Incomplete => f.write_str("fewer bytes than its frame says"),
            RecordError::BadLength(n) => write!(f, "impossible length {n}"),
            RecordError::BadChecksum => f.write_str("its checksum does not hold"),
            RecordError::WrongLsn { expected, found } => write!(
                f,
                "it says it is at LSN {}, found at LSN {}",
                found.0, expected.0
            ),
            RecordError::BadBody => f.write_str("an unknown kind or a body that does not fit it"),
        }
    }
}

impl Record<'_> {
    /// Length of the encoded record, frame included.
    pub fn encoded_len(&self) -> usize {
        RECORD_HEADER
            + match self {
                Record::PageImage { .. } => 8 + PAGE_SIZE,
                Record::PageWrite { data, .. } => 8 + 2 + data.len(),
                Record::Commit { .. } => 4,
                Record::PageLsns { lsns, .. } => 16 + lsns.len(),
            }
    }

    /// Encodes the record into `out` (exactly [`Record::encoded_len`]
    /// bytes) with LSN `lsn`.
    pub fn encode(&self, lsn: Lsn, out: &mut [u8]) {
        let len = self.encoded_len();
        assert_eq!(out.len(), len, "record buffer of the wrong size");
        out[0..4].copy_from_slice(&(len as u32).to_le_bytes());
        out[8..16].copy_from_slice(&lsn.0.to_le_bytes());
        let body = &mut out[16..];
        match *self {
            Record::PageImage { page, image } => {
                assert_eq!(image.len(), PAGE_SIZE, "a page image is one page");
                body[0] = KIND_PAGE_IMAGE;
                body[1..9].copy_from_slice(&page.0.to_le_bytes());
                body[9..].copy_from_slice(image);
            }
            Record::PageWrite { page, offset, data } => {
                body[0] = KIND_PAGE_WRITE;
                body[1..9].copy_from_slice(&page.0.to_le_bytes());
                body[9..11].copy_from_slice(&offset.to_le_bytes());
                body[11..].copy_from_slice(data);
            }
            Record::Commit { writes } => {
                body[0] = KIND_COMMIT;
                body[1..5].copy_from_slice(&writes.to_le_bytes());
            }
            Record::PageLsns {
                checkpoint,
                first,
                lsns,
            } => {
                assert!(
                    !lsns.is_empty() && lsns.len().is_multiple_of(8),
                    "whole LSNs"
                );
                body[0] = KIND_PAGE_LSNS;
                body[1..9].copy_from_slice(&checkpoint.0.to_le_bytes());
                body[9..17].copy_from_slice(&first.0.to_le_bytes());
                body[17..].copy_from_slice(lsns);
            }
        }
        let crc = frame_crc(out);
        out[4..8].copy_from_slice(&crc.to_le_bytes());
    }

    /// Rewrites the LSN of an encoded record (and its CRC).
    pub fn relocate(encoded: &mut [u8], lsn: Lsn) {
        encoded[8..16].copy_from_slice(&lsn.0.to_le_bytes());
        let crc = frame_crc(encoded);
        encoded[4..8].copy_from_slice(&crc.to_le_bytes());
    }

    /// The total length a frame starting with `header` claims, if `header`
    /// holds at least the length field and the length is possible.
    pub fn framed_len(header: &[u8], max: usize) -> Result<usize, RecordError> {
        if header.len() < 4 {
            return Err(RecordError::Incomplete);
        }
        let len = u32::from_le_bytes(header[0..4].try_into().unwrap());
        if (len as usize) < RECORD_HEADER || len as usize > max {
            return Err(RecordError::BadLength(len));
        }
        Ok(len as usize)
    }

    /// Decodes the record that `bytes` (exactly one frame) holds, found at
    /// `lsn`.
    pub fn decode(bytes: &[u8], lsn: Lsn) -> Result<Record<'_>, RecordError> {
        let len = Record::framed_len(bytes, usize::MAX)?;
        if bytes.len() != len {
            return Err(RecordError::Incomplete);
        }
        let crc = u32::from_le_bytes(bytes[4..8].try_into().unwrap());
        if crc != frame_crc(bytes) {
            return Err(RecordError::BadChecksum);
        }
        let found = Lsn(u64::from_le_bytes(bytes[8..16].try_into().unwrap()));
        if found != lsn {
            return Err(RecordError::WrongLsn {
                expected: lsn,
                found,
            });
        }
        let body = &bytes[16..];
        let page = || PageId(u64::from_le_bytes(body[1..9].try_into().unwrap()));
        match body[0] {
            KIND_PAGE_IMAGE if body.len() == 9 + PAGE_SIZE => Ok(Record::PageImage {
                page: page(),
                image: &body[9..],
            }),
            KIND_PAGE_WRITE if body.len() >= 11 => Ok(Record::PageWrite {
                page: page(),
                offset: u16::from_le_bytes(body[9..11].try_into().unwrap()),
                data: &body[11..],
            }),
            KIND_COMMIT if body.len() == 5 => Ok(Record::Commit {
                writes: u32::from_le_bytes(body[1..5].try_into().unwrap()),
            }),
            KIND_PAGE_LSNS
                if body.len() > 17
                    && (body.len() - 17).is_multiple_of(8)
                    && body.len() - 17 <= 8 * PAGE_LSNS_PER_RECORD =>
            {
                Ok(Record::PageLsns {
                    checkpoint: Lsn(u64::from_le_bytes(body[1..9].try_into().unwrap())),
                    first: PageId(u64::from_le_bytes(body[9..17].try_into().unwrap())),
                    lsns: &body[17..],
                })
            }
            _ => Err(RecordError::BadBody),
        }
    }
}

fn frame_crc(frame: &[u8]) -> u32 {
    Crc32c::new()
        .update(&frame[0..4])
        .update(&frame[8..])
        .finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    #[test]
    fn round_trips_and_rejects() {
        let image = vec![0x5a; PAGE_SIZE];
        let recs = [
            Record::PageImage {
                page: PageId(9),
                image: &image,
            },
            Record::PageWrite {
                page: PageId(2),
                offset: 100,
                data: b"hello",
            },
            Record::Commit { writes: 1 },
            Record::PageLsns {
                checkpoint: Lsn(4120),
                first: PageId(480),
                lsns: &[7; 24],
            },
        ];
        let lens = [17 + 8 + 4096, 17 + 10 + 5, 17 + 4, 17 + 16 + 24];
        for (r, len) in recs.iter().zip(lens) {
            assert_eq!(r.encoded_len(), len);
            let mut buf = vec![0; len];
            r.encode(Lsn(777), &mut buf);
            assert_eq!(Record::decode(&buf, Lsn(777)), Ok(*r));
            assert_eq!(
                Record::decode(&buf, Lsn(778)),
                Err(RecordError::WrongLsn {
                    expected: Lsn(778),
                    found: Lsn(777)
                })
            );
            Record::relocate(&mut buf, Lsn(778));
            assert_eq!(Record::decode(&buf, Lsn(778)), Ok(*r));
            buf[len - 1] ^= 0x10;
            assert_eq!(
                Record::decode(&buf, Lsn(778)),
                Err(RecordError::BadChecksum)
            );
            assert_eq!(
                Record::decode(&buf[..len - 1], Lsn(778)),
                Err(RecordError::Incomplete)
            );
        }
        assert_eq!(
            Record::framed_len(&[3, 0, 0, 0], 100),
            Err(RecordError::BadLength(3))
        );
        assert_eq!(
            Record::framed_len(&[0, 1, 0, 0], 100),
            Err(RecordError::BadLength(256))
        );
    }
}
