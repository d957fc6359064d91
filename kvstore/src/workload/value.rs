//! The values the driver writes, made so that a reader can check them.
//!
//! A value of `size` bytes is: the record number (u64 little-endian), the
//! version (u64 little-endian), then a fill of 8-byte words, word `j`
//! being `mix64(record, version) ^ j * GAMMA`, cut to the size. A value
//! with the wrong record number, a fill from another version (a torn
//! write), shifted bytes or the wrong length fails [`check_value`].

use alloc::vec::Vec;
use core::fmt;

use super::rng::mix64;

const GAMMA: u64 = 0x9e37_79b9_7f4a_7c15;

/// The fill word `j` of a record's version.
fn fill_word(seed: u64, j: usize) -> u64 {
    seed ^ (j as u64).wrapping_mul(GAMMA)
}

fn fill_seed(record: u64, version: u64) -> u64 {
    mix64(record ^ version.rotate_left(32) ^ 0x5bd1_e995_0000_0001)
}

/// Writes the value of `record` at `version`, `size` bytes (at least 16),
/// into `out` (replacing its contents).
pub fn encode_value(record: u64, version: u64, size: usize, out: &mut Vec<u8>) {
    assert!(size >= 16, "value size {size} below 16");
    out.clear();
    out.extend_from_slice(&record.to_le_bytes());
    out.extend_from_slice(&version.to_le_bytes());
    let seed = fill_seed(record, version);
    let mut j = 0;
    while out.len() < size {
        let word = fill_word(seed, j).to_le_bytes();
        let n = word.len().min(size - out.len());
        out.extend_from_slice(&word[..n]);
        j += 1;
    }
}

/// Why a value is not one [`encode_value`] wrote.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ValueError {
    /// It is `.0` bytes long, not the run's value size.
    Length(usize),
    /// The fill after the header does not match the record and version
    /// the header names.
    Fill,
}

impl fmt::Display for ValueError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ValueError::Length(n) => write!(f, "value of {n} bytes"),
            ValueError::Fill => write!(f, "value fill does not match its header"),
        }
    }
}

/// Checks that `value` is a whole value of `size` bytes as
/// [`encode_value`] writes it; returns the record number and version it
/// names.
pub fn check_value(value: &[u8], size: usize) -> Result<(u64, u64), ValueError> {
    if value.len() != size || size < 16 {
        return Err(ValueError::Length(value.len()));
    }
    let record = u64::from_le_bytes(value[..8].try_into().unwrap());
    let version = u64::from_le_bytes(value[8..16].try_into().unwrap());
    let seed = fill_seed(record, version);
    for (j, chunk) in value[16..].chunks(8).enumerate() {
        if chunk != &fill_word(seed, j).to_le_bytes()[..chunk.len()] {
            return Err(ValueError::Fill);
        }
    }
    Ok((record, version))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_every_size() {
        let mut v = Vec::new();
        for size in 16..80 {
            encode_value(7, 3, size, &mut v);
            assert_eq!(v.len(), size);
            assert_eq!(check_value(&v, size), Ok((7, 3)));
        }
        encode_value(u64::MAX, 1, 16, &mut v);
        assert_eq!(v, [[0xff; 8], 1u64.to_le_bytes()].concat());
    }

    #[test]
    fn detects_damage() {
        let mut v = Vec::new();
        encode_value(42, 5, 100, &mut v);
        assert_eq!(check_value(&v, 99), Err(ValueError::Length(100)));
        assert_eq!(check_value(&v[..50], 100), Err(ValueError::Length(50)));
        // Any flipped fill byte.
        for i in 16..100 {
            let mut bad = v.clone();
            bad[i] ^= 1;
            assert_eq!(check_value(&bad, 100), Err(ValueError::Fill), "byte {i}");
        }
        // A header from another record or version over this fill.
        let mut other = Vec::new();
        encode_value(42, 6, 100, &mut other);
        let mut torn = other[..16].to_vec();
        torn.extend_from_slice(&v[16..]);
        assert_eq!(check_value(&torn, 100), Err(ValueError::Fill));
        let mut renamed = v.clone();
        renamed[0] = 43;
        assert_eq!(check_value(&renamed, 100), Err(ValueError::Fill));
        // The same fill shifted by one word.
        let mut shifted = v[..16].to_vec();
        shifted.extend_from_slice(&v[24..]);
        shifted.extend_from_slice(&[0; 8]);
        assert_eq!(check_value(&shifted, 100), Err(ValueError::Fill));
    }
}
