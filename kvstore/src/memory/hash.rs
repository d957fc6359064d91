//! Owns the hash of keys: a seeded 64-bit multiply-rotate hash with a
//! final avalanche. Fast and well spread, not cryptographic; the seed
//! (stored in the heap's header, chosen when the heap is formatted) makes
//! chains unpredictable to a client that does not know it.

const K1: u64 = 0x9E37_79B9_7F4A_7C15;
const K2: u64 = 0xC2B2_AE3D_27D4_EB4F;

/// The hash of `key` under `seed`.
pub fn hash(seed: u64, key: &[u8]) -> u64 {
    let mut h = seed ^ (key.len() as u64).wrapping_mul(K1);
    let mut chunks = key.chunks_exact(8);
    for c in &mut chunks {
        let mut w = [0u8; 8];
        w.copy_from_slice(c);
        h = (h ^ u64::from_le_bytes(w)).wrapping_mul(K2).rotate_left(31);
    }
    let rest = chunks.remainder();
    if !rest.is_empty() {
        let mut w = [0u8; 8];
        w[..rest.len()].copy_from_slice(rest);
        h = (h ^ u64::from_le_bytes(w)).wrapping_mul(K2).rotate_left(31);
    }
    fmix(h)
}

/// MurmurHash3's 64-bit finalizer: every input bit affects every output bit.
fn fmix(mut h: u64) -> u64 {
    h ^= h >> 33;
    h = h.wrapping_mul(0xFF51_AFD7_ED55_8CCD);
    h ^= h >> 33;
    h = h.wrapping_mul(0xC4CE_B9FE_1A85_EC53);
    h ^ (h >> 33)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn depends_on_seed_key_and_length() {
        assert_ne!(hash(1, b"a"), hash(2, b"a"));
        assert_ne!(hash(1, b"a"), hash(1, b"b"));
        assert_ne!(hash(1, b"a"), hash(1, b"a\0"));
        assert_eq!(hash(7, b"hello world!"), hash(7, b"hello world!"));
        // Spread over a small table: 4096 keys into 1024 buckets, no bucket
        // holds more than 16 (an expected maximum is about 12).
        let mut buckets = [0u32; 1024];
        for i in 0..4096u32 {
            let k = alloc::format!("key:{i}");
            buckets[(hash(42, k.as_bytes()) & 1023) as usize] += 1;
        }
        assert!(*buckets.iter().max().unwrap() <= 16, "{buckets:?}");
    }
}
