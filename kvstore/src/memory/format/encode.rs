//! Owns encoding: [`Encoder`] writes a snapshot file record by record
//! (layout in the parent module), buffering one block at a time.

use super::*;
use alloc::vec::Vec;
use dbos_bufferpool::checksum::{crc32c, Crc32c};

/// What an encoder wrote.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EncodeSummary {
    pub records: u64,
    pub blocks: u64,
    pub bytes: u64,
}

/// Writes a snapshot file to a sink: [`new`](Self::new) writes the header,
/// [`record`](Self::record) adds records, [`finish`](Self::finish) writes
/// the last block and the trailer.
pub struct Encoder<W: Sink> {
    sink: W,
    /// CRC32C of everything written so far.
    file_crc: Crc32c,
    payload: Vec<u8>,
    in_block: u32,
    summary: EncodeSummary,
}

impl<W: Sink> Encoder<W> {
    /// Writes the header of a file created at `created_ms` (Unix ms).
    pub fn new(sink: W, created_ms: u64) -> Result<Encoder<W>, W::Error> {
        let mut header = [0u8; HEADER_LEN];
        header[0..8].copy_from_slice(&MAGIC);
        header[8..12].copy_from_slice(&VERSION.to_le_bytes());
        header[12..16].copy_from_slice(&(HEADER_LEN as u32).to_le_bytes());
        header[16..24].copy_from_slice(&created_ms.to_le_bytes());
        header[24..28].copy_from_slice(&0u32.to_le_bytes());
        let crc = crc32c(&header[..28]);
        header[28..32].copy_from_slice(&crc.to_le_bytes());
        let mut enc = Encoder {
            sink,
            file_crc: Crc32c::new(),
            payload: Vec::with_capacity(BLOCK_TARGET),
            in_block: 0,
            summary: EncodeSummary::default(),
        };
        enc.emit(&header)?;
        Ok(enc)
    }

    fn emit(&mut self, bytes: &[u8]) -> Result<(), W::Error> {
        self.sink.write_all(bytes)?;
        self.file_crc = self.file_crc.clone().update(bytes);
        self.summary.bytes += bytes.len() as u64;
        Ok(())
    }

    /// Adds a record. Keys and values over the limits are a caller's bug.
    ///
    /// # Panics
    ///
    /// If `key` or `value` is longer than [`MAX_KEY`] or [`MAX_VALUE`].
    pub fn record(
        &mut self,
        key: &[u8],
        value: &[u8],
        expires: Option<u64>,
    ) -> Result<(), W::Error> {
        assert!(
            key.len() <= MAX_KEY && value.len() <= MAX_VALUE,
            "record over the limits"
        );
        let len = RECORD_FIXED + if expires.is_some() { 8 } else { 0 } + key.len() + value.len();
        if !self.payload.is_empty() && self.payload.len() + len > BLOCK_TARGET {
            self.flush_block()?;
        }
        let p = &mut self.payload;
        p.extend_from_slice(&(key.len() as u32).to_le_bytes());
        p.extend_from_slice(&(value.len() as u32).to_le_bytes());
        match expires {
            Some(e) => {
                p.push(FLAG_EXPIRES);
                p.extend_from_slice(&e.to_le_bytes());
            }
            None => p.push(0),
        }
        p.extend_from_slice(key);
        p.extend_from_slice(value);
        self.in_block += 1;
        self.summary.records += 1;
        Ok(())
    }

    fn flush_block(&mut self) -> Result<(), W::Error> {
        if self.payload.is_empty() {
            return Ok(());
        }
        let payload = core::mem::take(&mut self.payload);
        self.write_block(KIND_RECORDS, self.in_block, &payload)?;
        self.payload = payload;
        self.payload.clear();
        self.in_block = 0;
        self.summary.blocks += 1;
        Ok(())
    }

    fn write_block(&mut self, kind: u32, records: u32, payload: &[u8]) -> Result<(), W::Error> {
        let mut head = [0u8; BLOCK_HEADER_LEN];
        head[0..4].copy_from_slice(&kind.to_le_bytes());
        head[4..8].copy_from_slice(&(payload.len() as u32).to_le_bytes());
        head[8..12].copy_from_slice(&records.to_le_bytes());
        let crc = Crc32c::new().update(&head[..12]).update(payload).finish();
        head[12..16].copy_from_slice(&crc.to_le_bytes());
        self.emit(&head)?;
        self.emit(payload)
    }

    /// Writes the last block and the trailer; returns the sink and what
    /// was written.
    pub fn finish(mut self) -> Result<(W, EncodeSummary), W::Error> {
        self.flush_block()?;
        let mut t = [0u8; TRAILER_PAYLOAD];
        t[0..8].copy_from_slice(&self.summary.records.to_le_bytes());
        t[8..16].copy_from_slice(&self.summary.blocks.to_le_bytes());
        t[16..20].copy_from_slice(&self.file_crc.clone().finish().to_le_bytes());
        self.write_block(KIND_TRAILER, 0, &t)?;
        Ok((self.sink, self.summary))
    }
}
