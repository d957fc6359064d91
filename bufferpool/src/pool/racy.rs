//! Word-sized reads of a page that may change under the reader (the reads
//! of an optimistic fix: a seqlock, validated afterwards).
//!
//! Every read is one or two aligned volatile loads of 8 bytes (or one of 2
//! or 1), never a loop of byte loads: a volatile `[u8; N]` read compiles to
//! `N` byte loads, and a key compared that way cost a lookup one load per
//! byte. An unaligned word is put together from the two aligned words that
//! hold its bytes, and a load never touches an aligned word that holds none
//! of the requested bytes, so no read leaves the page. Offsets are masked
//! into the page as well, so even a caller's bad offset reads the page (and
//! only the page) instead of faulting.

use crate::PAGE_SIZE;
use core::cmp::Ordering;

/// A page read racily: `PAGE_SIZE` readable bytes, 8-byte aligned.
#[derive(Clone, Copy)]
pub(crate) struct RacyPage(*const u8);

impl RacyPage {
    /// The page at `base`.
    ///
    /// # Safety
    /// `base` is 8-byte aligned and points to `PAGE_SIZE` bytes that stay
    /// readable (no fault) for as long as the value is used: a frame of a
    /// pool, whose memory stays readable while the pool lives
    /// ([`super::BufferManager`]'s contract).
    #[inline(always)]
    pub(crate) unsafe fn new(base: *const u8) -> RacyPage {
        debug_assert!((base as usize).is_multiple_of(8));
        RacyPage(base)
    }

    /// The little-endian word at the 8-aligned offset `at` (masked into the
    /// page).
    #[inline(always)]
    fn word(self, at: usize) -> u64 {
        let at = at & (PAGE_SIZE - 8);
        // SAFETY: `at` is 8-aligned and at + 8 <= PAGE_SIZE, the base is
        // 8-aligned and its PAGE_SIZE bytes are readable (`new`); volatile
        // keeps the compiler from assuming the bytes are stable, and every
        // bit pattern is a u64.
        u64::from_le(unsafe { self.0.add(at).cast::<u64>().read_volatile() })
    }

    /// The byte at `off` (masked into the page).
    #[inline(always)]
    pub(crate) fn u8_at(self, off: usize) -> u8 {
        let off = off & (PAGE_SIZE - 1);
        // SAFETY: off < PAGE_SIZE, readable (`new`).
        unsafe { self.0.add(off).read_volatile() }
    }

    /// The little-endian u16 at `off` (`off + 2 <= PAGE_SIZE`).
    #[inline(always)]
    pub(crate) fn u16_at(self, off: usize) -> u16 {
        if off.is_multiple_of(2) {
            let at = off & (PAGE_SIZE - 2);
            // SAFETY: `at` is 2-aligned, at + 2 <= PAGE_SIZE, readable
            // (`new`); every bit pattern is a u16.
            u16::from_le(unsafe { self.0.add(at).cast::<u16>().read_volatile() })
        } else {
            u16::from_le_bytes([self.u8_at(off), self.u8_at(off + 1)])
        }
    }

    /// The little-endian u64 at `off` (`off + 8 <= PAGE_SIZE`).
    #[inline(always)]
    pub(crate) fn u64_at(self, off: usize) -> u64 {
        let s = off & 7;
        let at = off - s;
        if s == 0 {
            self.word(at)
        } else {
            (self.word(at) >> (8 * s)) | (self.word(at + 8) << (64 - 8 * s))
        }
    }

    /// The `n` (1..=8) bytes at `off` (`off + n <= PAGE_SIZE`) as a
    /// big-endian number whose first byte is the top byte, zero-padded at
    /// the bottom: two such numbers compare like their bytes.
    #[inline(always)]
    pub(crate) fn be_at(self, off: usize, n: usize) -> u64 {
        debug_assert!((1..=8).contains(&n));
        let s = off & 7;
        let at = off - s;
        let mut v = self.word(at) >> (8 * s);
        if s + n > 8 {
            v |= self.word(at + 8) << (64 - 8 * s);
        }
        v.swap_bytes() & top_bytes(n)
    }

    /// Copies `out.len()` bytes at `off` (`off + out.len() <= PAGE_SIZE`)
    /// into `out`, 8 bytes per step.
    #[inline]
    pub(crate) fn copy(self, off: usize, out: &mut [u8]) {
        let s = off & 7;
        let mut at = off - s;
        let len = out.len();
        let (body, tail) = out.split_at_mut(len - len % 8);
        // The word holding the next byte to copy once the body is done.
        let w = if s == 0 {
            for c in body.chunks_exact_mut(8) {
                c.copy_from_slice(&self.word(at).to_le_bytes());
                at += 8;
            }
            if tail.is_empty() {
                return;
            }
            self.word(at)
        } else {
            let mut w = self.word(at);
            for c in body.chunks_exact_mut(8) {
                let next = self.word(at + 8);
                c.copy_from_slice(&((w >> (8 * s)) | (next << (64 - 8 * s))).to_le_bytes());
                w = next;
                at += 8;
            }
            w
        };
        // Fewer than 8 bytes left, starting at byte `s` of `w`.
        let mut v = w >> (8 * s);
        if s + tail.len() > 8 {
            v |= self.word(at + 8) << (64 - 8 * s);
        }
        for b in tail {
            *b = v as u8;
            v >>= 8;
        }
    }

    /// Compares the `len` bytes at `off` (`off + len <= PAGE_SIZE`) with
    /// `other`, 8 bytes per step.
    #[inline]
    pub(crate) fn compare(self, off: usize, len: usize, other: &[u8]) -> Ordering {
        let n = len.min(other.len());
        let mut i = 0;
        while i < n {
            let k = (n - i).min(8);
            let a = self.be_at(off + i, k);
            let b = be_head(&other[i..i + k]);
            match a.cmp(&b) {
                Ordering::Equal => i += k,
                o => return o,
            }
        }
        len.cmp(&other.len())
    }
}

/// A mask of the top `n` (0..=8) bytes of a u64.
#[inline(always)]
pub(crate) fn top_bytes(n: usize) -> u64 {
    if n == 0 {
        0
    } else {
        !0u64 << (8 * (8 - n))
    }
}

/// The first (up to) 8 bytes of `b` as a big-endian number, zero-padded at
/// the bottom: `be_head(a) < be_head(b)` implies `a < b` for byte strings,
/// and `>` implies `>`. Built from at most two loads (a variable-length
/// copy would be a call to `memcpy`).
#[inline(always)]
pub(crate) fn be_head(b: &[u8]) -> u64 {
    let n = b.len();
    if n >= 8 {
        u64::from_be_bytes(b[..8].try_into().expect("8 bytes"))
    } else if n >= 4 {
        // Two overlapping 4-byte loads: bytes 0..4 and n-4..n.
        let hi = u32::from_be_bytes(b[..4].try_into().expect("4 bytes")) as u64;
        let lo = u32::from_be_bytes(b[n - 4..].try_into().expect("4 bytes")) as u64;
        (hi << 32) | (lo << (8 * (8 - n)))
    } else if n > 0 {
        // Bytes 0, n/2 and n-1 cover 1 to 3 bytes.
        (b[0] as u64) << 56
            | (b[n / 2] as u64) << (56 - 8 * (n / 2))
            | (b[n - 1] as u64) << (64 - 8 * n)
    } else {
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::page::PageBuf;
    use alloc::vec;
    use alloc::vec::Vec;

    fn page() -> (alloc::boxed::Box<PageBuf>, RacyPage) {
        let mut p = alloc::boxed::Box::new(PageBuf::zeroed());
        for (i, b) in p.0.iter_mut().enumerate() {
            *b = (i as u8).wrapping_mul(37).wrapping_add((i >> 8) as u8);
        }
        // SAFETY: a 4096-aligned page that outlives every use below (the
        // box is returned with it and kept by the caller).
        let r = unsafe { RacyPage::new(p.0.as_ptr()) };
        (p, r)
    }

    #[test]
    fn words_at_every_offset_match_the_bytes() {
        let (p, r) = page();
        let b = &p.0;
        for off in 0..PAGE_SIZE {
            assert_eq!(r.u8_at(off), b[off]);
            if off + 2 <= PAGE_SIZE {
                assert_eq!(r.u16_at(off), u16::from_le_bytes([b[off], b[off + 1]]));
            }
            if off + 8 <= PAGE_SIZE {
                let want = u64::from_le_bytes(b[off..off + 8].try_into().unwrap());
                assert_eq!(r.u64_at(off), want, "offset {off}");
            }
            for n in 1..=8 {
                if off + n <= PAGE_SIZE {
                    assert_eq!(r.be_at(off, n), be_head(&b[off..off + n]), "{off} {n}");
                }
            }
        }
    }

    #[test]
    fn copies_and_compares_at_every_alignment_and_length() {
        let (p, r) = page();
        let b = &p.0;
        let mut offs: Vec<usize> = (0..24).collect();
        offs.extend(PAGE_SIZE - 40..PAGE_SIZE);
        for &off in &offs {
            for len in 0..=(PAGE_SIZE - off).min(40) {
                let mut out = vec![0xAAu8; len];
                r.copy(off, &mut out);
                assert_eq!(out, &b[off..off + len], "copy {off} {len}");
                let same = b[off..off + len].to_vec();
                assert_eq!(r.compare(off, len, &same), Ordering::Equal);
                for j in 0..len {
                    let mut other = same.clone();
                    other[j] = other[j].wrapping_add(1);
                    assert_eq!(
                        r.compare(off, len, &other),
                        same.as_slice().cmp(&other),
                        "{off} {len} {j}"
                    );
                    let mut other = same.clone();
                    other[j] = other[j].wrapping_sub(1);
                    assert_eq!(r.compare(off, len, &other), same.as_slice().cmp(&other));
                }
                let shorter = &same[..len.saturating_sub(1)];
                assert_eq!(r.compare(off, len, shorter), same.as_slice().cmp(shorter));
                let mut longer = same.clone();
                longer.push(0);
                assert_eq!(r.compare(off, len, &longer), Ordering::Less);
            }
        }
        // A long copy from an unaligned offset to the page's end.
        let mut out = vec![0u8; PAGE_SIZE - 3];
        r.copy(3, &mut out);
        assert_eq!(out, &b[3..]);
    }

    #[test]
    fn heads_are_the_first_eight_bytes_padded() {
        let bytes: Vec<u8> = (0..12u8)
            .map(|i| i.wrapping_mul(89).wrapping_add(200))
            .collect();
        for n in 0..=12 {
            let mut want = [0u8; 8];
            let k = n.min(8);
            want[..k].copy_from_slice(&bytes[..k]);
            assert_eq!(be_head(&bytes[..n]), u64::from_be_bytes(want), "{n} bytes");
        }
    }

    #[test]
    fn heads_order_like_their_bytes() {
        let keys: Vec<Vec<u8>> = vec![
            vec![],
            vec![0],
            vec![0, 0],
            vec![0, 0, 0, 0, 0, 0, 0, 0],
            vec![0, 0, 0, 0, 0, 0, 0, 0, 0],
            vec![1],
            vec![1, 0],
            vec![1, 255, 255, 255, 255, 255, 255, 255, 255],
            vec![2],
            vec![255; 7],
            vec![255; 8],
            vec![255; 9],
        ];
        for a in &keys {
            for c in &keys {
                let (ha, hc) = (be_head(a), be_head(c));
                if ha < hc {
                    assert!(a < c, "{a:?} {c:?}");
                }
                if ha > hc {
                    assert!(a > c, "{a:?} {c:?}");
                }
                if ha == hc && a.len().min(c.len()) <= 8 {
                    // Equal heads and one key of at most 8 bytes: the
                    // shorter is a prefix of the other (length decides).
                    assert_eq!(a.cmp(c), a.len().cmp(&c.len()), "{a:?} {c:?}");
                }
            }
        }
    }
}
