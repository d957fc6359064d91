//! Owns decoding: [`decode`] checks a snapshot file as it reads it and hands
//! out its records; every defect is a [`DecodeError`] with its byte offset.

use super::*;
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;
use dbos_bufferpool::checksum::{crc32c, Crc32c};

/// A record as decoded (borrowed from the decoder's block buffer).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Record<'a> {
    /// Byte offset of the record in the file.
    pub offset: u64,
    pub key: &'a [u8],
    pub value: &'a [u8],
    /// Unix ms.
    pub expires: Option<u64>,
}

/// What a whole file held.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DecodeSummary {
    pub records: u64,
    pub blocks: u64,
    pub bytes: u64,
    pub created_ms: u64,
}

/// Why a file was refused; every variant has a byte offset
/// ([`offset`](Self::offset)).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DecodeError<E> {
    /// The source failed.
    Io { offset: u64, error: E },
    /// The file ends at `offset`, inside or in place of `expected`.
    Truncated { offset: u64, expected: &'static str },
    /// The first 8 bytes are not [`MAGIC`].
    BadMagic { found: [u8; 8] },
    /// The header names a version this code cannot read.
    UnsupportedVersion { version: u32 },
    /// The header's CRC does not match.
    HeaderChecksum { stored: u32, computed: u32 },
    /// The block at `offset` does not match its CRC.
    BlockChecksum {
        offset: u64,
        stored: u32,
        computed: u32,
    },
    /// A field at `offset` is impossible (a length over its limit, an
    /// unknown kind or flag, counts that disagree, bytes after the end).
    Corrupt { offset: u64, what: String },
    /// The caller refused the record at `offset` (e.g. no room for it).
    Rejected { offset: u64, reason: String },
}

impl<E> DecodeError<E> {
    /// The byte offset the error is about.
    pub fn offset(&self) -> u64 {
        match self {
            DecodeError::BadMagic { .. } | DecodeError::HeaderChecksum { .. } => 0,
            DecodeError::UnsupportedVersion { .. } => 8,
            DecodeError::Io { offset, .. }
            | DecodeError::Truncated { offset, .. }
            | DecodeError::BlockChecksum { offset, .. }
            | DecodeError::Corrupt { offset, .. }
            | DecodeError::Rejected { offset, .. } => *offset,
        }
    }
}

impl<E: fmt::Display> fmt::Display for DecodeError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let at = self.offset();
        match self {
            DecodeError::Io { error, .. } => write!(f, "read error at byte offset {at}: {error}"),
            DecodeError::Truncated { expected, .. } => {
                write!(f, "truncated at byte offset {at} (expected {expected})")
            }
            DecodeError::BadMagic { found } => write!(
                f,
                "bad magic at byte offset 0: {found:02x?} is not a dbos memory-engine snapshot"
            ),
            DecodeError::UnsupportedVersion { version } => write!(
                f,
                "format version {version} not supported (at byte offset {at}; this build reads version {VERSION})"
            ),
            DecodeError::HeaderChecksum { stored, computed } => write!(
                f,
                "header checksum mismatch at byte offset 0 (stored {stored:#010x}, computed {computed:#010x})"
            ),
            DecodeError::BlockChecksum {
                stored, computed, ..
            } => write!(
                f,
                "checksum mismatch in block at byte offset {at} (stored {stored:#010x}, computed {computed:#010x})"
            ),
            DecodeError::Corrupt { what, .. } => write!(f, "corrupt at byte offset {at}: {what}"),
            DecodeError::Rejected { reason, .. } => {
                write!(f, "record at byte offset {at} refused: {reason}")
            }
        }
    }
}

/// The source, with the offset and CRC of what was read.
struct Reader<S: Source> {
    src: S,
    offset: u64,
    crc: Crc32c,
}

impl<S: Source> Reader<S> {
    /// Reads until `buf` is full or the end; returns the bytes read.
    fn fill(&mut self, buf: &mut [u8]) -> Result<usize, DecodeError<S::Error>> {
        let mut got = 0;
        while got < buf.len() {
            let n = self
                .src
                .read(&mut buf[got..])
                .map_err(|error| DecodeError::Io {
                    offset: self.offset + got as u64,
                    error,
                })?;
            if n == 0 {
                break;
            }
            got += n.min(buf.len() - got);
        }
        self.crc = self.crc.clone().update(&buf[..got]);
        self.offset += got as u64;
        Ok(got)
    }

    fn exact(
        &mut self,
        buf: &mut [u8],
        expected: &'static str,
    ) -> Result<(), DecodeError<S::Error>> {
        if self.fill(buf)? < buf.len() {
            return Err(DecodeError::Truncated {
                offset: self.offset,
                expected,
            });
        }
        Ok(())
    }
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(w)
}

/// Reads and checks a whole snapshot file from `src`, calling `f` for each
/// record in file order. Records are handed out as their block is checked,
/// so `f` may have seen some before an error in a later block: a caller
/// loading a table discards it on error.
pub fn decode<S: Source>(
    src: S,
    f: &mut dyn FnMut(Record<'_>) -> Result<(), String>,
) -> Result<DecodeSummary, DecodeError<S::Error>> {
    let mut r = Reader {
        src,
        offset: 0,
        crc: Crc32c::new(),
    };
    let mut header = [0u8; HEADER_LEN];
    let n = r.fill(&mut header)?;
    if n >= 8 && header[..8] != MAGIC {
        let mut found = [0u8; 8];
        found.copy_from_slice(&header[..8]);
        return Err(DecodeError::BadMagic { found });
    }
    if n < HEADER_LEN {
        return Err(DecodeError::Truncated {
            offset: n as u64,
            expected: "the 32-byte file header",
        });
    }
    let version = u32_at(&header, 8);
    if version != VERSION {
        return Err(DecodeError::UnsupportedVersion { version });
    }
    let (stored, computed) = (u32_at(&header, 28), crc32c(&header[..28]));
    if stored != computed {
        return Err(DecodeError::HeaderChecksum { stored, computed });
    }
    let header_len = u32_at(&header, 12);
    if header_len as usize != HEADER_LEN {
        return Err(DecodeError::Corrupt {
            offset: 12,
            what: format!("header length {header_len}, expected {HEADER_LEN}"),
        });
    }
    let flags = u32_at(&header, 24);
    if flags != 0 {
        return Err(DecodeError::Corrupt {
            offset: 24,
            what: format!("unknown header flags {flags:#x}"),
        });
    }
    let mut summary = DecodeSummary {
        created_ms: u64_at(&header, 16),
        ..DecodeSummary::default()
    };
    let mut payload: Vec<u8> = Vec::new();
    loop {
        let at = r.offset;
        let crc_before = r.crc.clone().finish();
        let mut head = [0u8; BLOCK_HEADER_LEN];
        let n = r.fill(&mut head)?;
        if n < BLOCK_HEADER_LEN {
            return Err(DecodeError::Truncated {
                offset: r.offset,
                expected: "a block header (records or the trailer)",
            });
        }
        let kind = u32_at(&head, 0);
        let len = u32_at(&head, 4) as usize;
        let count = u32_at(&head, 8);
        let stored = u32_at(&head, 12);
        let (limit, name) = match kind {
            KIND_RECORDS => (MAX_PAYLOAD, "record block"),
            KIND_TRAILER => (TRAILER_PAYLOAD, "trailer"),
            _ => {
                return Err(DecodeError::Corrupt {
                    offset: at,
                    what: format!("unknown block kind {kind:#010x}"),
                })
            }
        };
        if len > limit || (kind == KIND_TRAILER && len != TRAILER_PAYLOAD) {
            return Err(DecodeError::Corrupt {
                offset: at + 4,
                what: format!("{name} payload of {len} bytes (at most {limit})"),
            });
        }
        payload.clear();
        payload.resize(len, 0);
        r.exact(&mut payload, "the rest of a block's payload")?;
        let computed = Crc32c::new().update(&head[..12]).update(&payload).finish();
        if stored != computed {
            return Err(DecodeError::BlockChecksum {
                offset: at,
                stored,
                computed,
            });
        }
        summary.bytes = r.offset;
        if kind == KIND_TRAILER {
            check_trailer(&payload, at, crc_before, &summary)?;
            let mut extra = [0u8; 1];
            if r.fill(&mut extra)? != 0 {
                return Err(DecodeError::Corrupt {
                    offset: r.offset - 1,
                    what: "bytes after the trailer".into(),
                });
            }
            return Ok(summary);
        }
        let base = at + BLOCK_HEADER_LEN as u64;
        let parsed = parse_records(&payload, base, f)?;
        if parsed == 0 || parsed != u64::from(count) {
            return Err(DecodeError::Corrupt {
                offset: at + 8,
                what: format!("record block announces {count} records, holds {parsed}"),
            });
        }
        summary.records += parsed;
        summary.blocks += 1;
    }
}

fn check_trailer<E>(
    t: &[u8],
    at: u64,
    file_crc: u32,
    summary: &DecodeSummary,
) -> Result<(), DecodeError<E>> {
    let p = at + BLOCK_HEADER_LEN as u64;
    let (records, blocks, crc) = (u64_at(t, 0), u64_at(t, 8), u32_at(t, 16));
    let bad = |offset, what| Err(DecodeError::Corrupt { offset, what });
    if records != summary.records {
        return bad(
            p,
            format!(
                "trailer counts {records} records, the file holds {}",
                summary.records
            ),
        );
    }
    if blocks != summary.blocks {
        return bad(
            p + 8,
            format!(
                "trailer counts {blocks} blocks, the file holds {}",
                summary.blocks
            ),
        );
    }
    if crc != file_crc {
        return bad(
            p + 16,
            format!("whole-file checksum mismatch (stored {crc:#010x}, computed {file_crc:#010x})"),
        );
    }
    Ok(())
}

/// Parses a checked block's records; returns how many.
fn parse_records<E>(
    p: &[u8],
    base: u64,
    f: &mut dyn FnMut(Record<'_>) -> Result<(), String>,
) -> Result<u64, DecodeError<E>> {
    let mut pos = 0;
    let mut n = 0;
    while pos < p.len() {
        let offset = base + pos as u64;
        let corrupt = |what: String| DecodeError::Corrupt { offset, what };
        if p.len() - pos < RECORD_FIXED {
            return Err(corrupt("record header overruns its block".into()));
        }
        let klen = u32_at(p, pos) as usize;
        let vlen = u32_at(p, pos + 4) as usize;
        let flags = p[pos + 8];
        if klen > MAX_KEY || vlen > MAX_VALUE {
            return Err(corrupt(format!(
                "record of a {klen}-byte key and a {vlen}-byte value is over the limits"
            )));
        }
        if flags & !FLAG_EXPIRES != 0 {
            return Err(corrupt(format!("unknown record flags {flags:#x}")));
        }
        let mut q = pos + RECORD_FIXED;
        let expires = if flags & FLAG_EXPIRES != 0 {
            if p.len() - q < 8 {
                return Err(corrupt("record expiry overruns its block".into()));
            }
            q += 8;
            Some(u64_at(p, q - 8))
        } else {
            None
        };
        if p.len() - q < klen + vlen {
            return Err(corrupt("record key and value overrun their block".into()));
        }
        let rec = Record {
            offset,
            key: &p[q..q + klen],
            value: &p[q + klen..q + klen + vlen],
            expires,
        };
        f(rec).map_err(|reason| DecodeError::Rejected { offset, reason })?;
        pos = q + klen + vlen;
        n += 1;
    }
    Ok(n)
}
