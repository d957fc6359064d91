//! Owns the snapshot file format (`dump.dbkv`), `no_std`: encoding to a
//! [`Sink`] and decoding from a [`Source`], so the guest can use it too.
//!
//! All integers are little-endian. A file is:
//!
//! ```text
//! header   (32 bytes)  magic "DBKVSNAP", version u32, header length u32 (32),
//!                      created (Unix ms) u64, flags u32 (0),
//!                      CRC32C of the 28 bytes before it u32
//! block*               kind u32 ("REC1"), payload length u32, records u32,
//!                      CRC32C u32 of the 12 bytes before it and the payload,
//!                      payload: records
//! trailer              a block of kind "TRL1" whose 20-byte payload is
//!                      records in the file u64, record blocks u64,
//!                      CRC32C of every byte before the trailer u32
//! ```
//!
//! and nothing after the trailer. A record is `key length u32, value length
//! u32, flags u8` (bit 0: an expiry follows), `expiry u64` (Unix ms) if
//! flagged, then the key and the value. A block holds whole records and is
//! at most [`MAX_PAYLOAD`] bytes: the encoder closes a block before it would
//! pass [`BLOCK_TARGET`] bytes, and a record larger than that gets a block of
//! its own. The decoder allocates nothing larger than [`MAX_PAYLOAD`]
//! whatever a length field says, and reports every inconsistency as a
//! [`DecodeError`] naming its byte offset: it never panics.

mod decode;
mod encode;

pub use decode::{decode, DecodeError, DecodeSummary, Record};
pub use encode::{EncodeSummary, Encoder};

/// The file's first 8 bytes.
pub const MAGIC: [u8; 8] = *b"DBKVSNAP";
/// The format version this code writes and reads.
pub const VERSION: u32 = 1;
/// Bytes of the file header.
pub const HEADER_LEN: usize = 32;
/// Bytes of a block header.
pub const BLOCK_HEADER_LEN: usize = 16;
/// Block kinds.
pub const KIND_RECORDS: u32 = u32::from_le_bytes(*b"REC1");
pub const KIND_TRAILER: u32 = u32::from_le_bytes(*b"TRL1");
/// Bytes of the trailer's payload.
pub const TRAILER_PAYLOAD: usize = 20;
/// A record block is closed before it passes this many payload bytes.
pub const BLOCK_TARGET: usize = 64 * 1024;
/// Longest key and value a file may hold.
pub const MAX_KEY: usize = super::layout::MAX_KEY;
pub const MAX_VALUE: usize = super::layout::MAX_VALUE;
/// Bytes of a record's fixed part (lengths and flags; the expiry is 8 more).
pub const RECORD_FIXED: usize = 9;
/// The largest record.
pub const MAX_RECORD: usize = RECORD_FIXED + 8 + MAX_KEY + MAX_VALUE;
/// The largest block payload a valid file has.
pub const MAX_PAYLOAD: usize = if MAX_RECORD > BLOCK_TARGET {
    MAX_RECORD
} else {
    BLOCK_TARGET
};
/// Record flag: an expiry follows.
pub const FLAG_EXPIRES: u8 = 1;

/// Where encoded bytes go.
pub trait Sink {
    type Error;
    /// Writes all of `bytes`.
    fn write_all(&mut self, bytes: &[u8]) -> Result<(), Self::Error>;
}

/// Where encoded bytes come from.
pub trait Source {
    type Error;
    /// Reads up to `buf.len()` bytes; 0 only at the end.
    fn read(&mut self, buf: &mut [u8]) -> Result<usize, Self::Error>;
}

impl Sink for alloc::vec::Vec<u8> {
    type Error = core::convert::Infallible;
    fn write_all(&mut self, bytes: &[u8]) -> Result<(), Self::Error> {
        self.extend_from_slice(bytes);
        Ok(())
    }
}

impl Source for &[u8] {
    type Error = core::convert::Infallible;
    fn read(&mut self, buf: &mut [u8]) -> Result<usize, Self::Error> {
        let n = buf.len().min(self.len());
        buf[..n].copy_from_slice(&self[..n]);
        *self = &self[n..];
        Ok(n)
    }
}

#[cfg(test)]
mod tests;
