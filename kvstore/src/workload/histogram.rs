//! A log-linear latency histogram (HDR-style) over nanoseconds.
//!
//! Values below 128 have a bucket each. Above, every power-of-two range
//! `[2^e, 2^(e+1))` is cut into 64 equal buckets, so a bucket is at most
//! 1/64 of its lowest value wide; a percentile is reported as the middle
//! of its bucket, within 1/128 (0.8%) of the true value. 3776 buckets
//! cover all of `u64` (30 KiB, allocated once by [`Histogram::new`]);
//! [`Histogram::record`] is an index computation and an add. Count,
//! sum, minimum and maximum are kept exactly.

use alloc::boxed::Box;
use alloc::vec;

/// Linear sub-buckets per power of two: 2^6.
const SUB_BITS: u32 = 6;
const SUB: u64 = 1 << SUB_BITS;
/// Buckets: 128 of width 1, then 64 for each of 2^7 .. 2^63.
const BUCKETS: usize = ((64 - SUB_BITS) as usize + 1) * SUB as usize;

/// The bucket of value `v`.
fn index(v: u64) -> usize {
    if v < SUB {
        return v as usize;
    }
    let shift = 63 - v.leading_zeros() - SUB_BITS;
    (u64::from(shift) * SUB + (v >> shift)) as usize
}

/// The lowest value of bucket `i` and its width.
fn bucket_range(i: usize) -> (u64, u64) {
    let i = i as u64;
    if i < 2 * SUB {
        return (i, 1);
    }
    let shift = i / SUB - 1;
    ((i - shift * SUB) << shift, 1 << shift)
}

/// Latencies in nanoseconds: [`Histogram::record`] without allocation,
/// [`Histogram::merge`] across threads, percentiles within 0.8%.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Histogram {
    buckets: Box<[u64]>,
    count: u64,
    sum: u128,
    min: u64,
    max: u64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram::new()
    }
}

impl Histogram {
    /// An empty histogram (allocates its buckets).
    pub fn new() -> Self {
        Histogram {
            buckets: vec![0; BUCKETS].into_boxed_slice(),
            count: 0,
            sum: 0,
            min: u64::MAX,
            max: 0,
        }
    }

    /// Records one value.
    pub fn record(&mut self, ns: u64) {
        self.record_n(ns, 1);
    }

    /// Records `n` occurrences of the same value (e.g. every operation of
    /// one committed batch with the batch's latency).
    pub fn record_n(&mut self, ns: u64, n: u64) {
        if n == 0 {
            return;
        }
        self.buckets[index(ns)] += n;
        self.count += n;
        self.sum += u128::from(ns) * u128::from(n);
        self.min = self.min.min(ns);
        self.max = self.max.max(ns);
    }

    /// Adds every value recorded in `other`.
    pub fn merge(&mut self, other: &Histogram) {
        for (a, b) in self.buckets.iter_mut().zip(other.buckets.iter()) {
            *a += b;
        }
        self.count += other.count;
        self.sum += other.sum;
        self.min = self.min.min(other.min);
        self.max = self.max.max(other.max);
    }

    /// How many values were recorded.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// True if nothing was recorded.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The exact mean (0 if empty).
    pub fn mean(&self) -> f64 {
        if self.count == 0 {
            return 0.0;
        }
        self.sum as f64 / self.count as f64
    }

    /// The exact smallest value (0 if empty).
    pub fn min(&self) -> u64 {
        if self.count == 0 {
            0
        } else {
            self.min
        }
    }

    /// The exact largest value (0 if empty).
    pub fn max(&self) -> u64 {
        self.max
    }

    /// The `p`-th percentile (`p` in 0..=100) by nearest rank: the
    /// smallest recorded value that at least `p`% of the values do not
    /// exceed, reported as the middle of its bucket (within 0.8%), and
    /// clamped to the exact minimum and maximum; `percentile(100.0)` is
    /// the exact maximum. 0 if empty.
    pub fn percentile(&self, p: f64) -> u64 {
        if self.count == 0 {
            return 0;
        }
        let p = p.clamp(0.0, 100.0);
        let exact = p / 100.0 * self.count as f64;
        let mut rank = exact as u64;
        if (rank as f64) < exact {
            rank += 1;
        }
        let rank = rank.clamp(1, self.count);
        if rank == self.count {
            return self.max;
        }
        let mut seen = 0;
        for (i, &n) in self.buckets.iter().enumerate() {
            seen += n;
            if seen >= rank {
                let (low, width) = bucket_range(i);
                return (low + width / 2).clamp(self.min, self.max);
            }
        }
        self.max
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workload::rng::Rng;
    use alloc::vec::Vec;

    #[test]
    fn buckets_tile_the_whole_range() {
        assert_eq!(BUCKETS, 3776);
        assert_eq!(index(0), 0);
        assert_eq!(index(127), 127);
        assert_eq!(index(128), 128);
        assert_eq!(index(129), 128);
        assert_eq!(index(u64::MAX), BUCKETS - 1);
        let mut next = 0u64;
        for i in 0..BUCKETS {
            let (low, width) = bucket_range(i);
            assert_eq!(low, next, "bucket {i}");
            assert_eq!(index(low), i);
            assert_eq!(index(low + (width - 1)), i);
            if i >= 128 {
                // A bucket is at most 1/64 of its lowest value wide.
                assert!(width * 64 <= low, "bucket {i}");
            }
            next = low.wrapping_add(width);
        }
        assert_eq!(next, 0, "the last bucket ends at 2^64");
    }

    #[test]
    fn small_values_are_exact() {
        let mut h = Histogram::new();
        for v in 1..=100 {
            h.record(v);
        }
        assert_eq!(h.count(), 100);
        assert_eq!(h.mean(), 50.5);
        assert_eq!((h.min(), h.max()), (1, 100));
        assert_eq!(h.percentile(0.0), 1);
        assert_eq!(h.percentile(1.0), 1);
        assert_eq!(h.percentile(50.0), 50);
        assert_eq!(h.percentile(50.5), 51);
        assert_eq!(h.percentile(90.0), 90);
        assert_eq!(h.percentile(99.0), 99);
        assert_eq!(h.percentile(99.9), 100);
        assert_eq!(h.percentile(100.0), 100);
    }

    #[test]
    fn large_values_within_relative_error() {
        let mut h = Histogram::new();
        for v in 1..=1_000_000u64 {
            h.record(v);
        }
        assert_eq!(h.mean(), 500_000.5);
        for (p, want) in [
            (50.0, 500_000.0),
            (90.0, 900_000.0),
            (99.0, 990_000.0),
            (99.9, 999_000.0),
        ] {
            let got = h.percentile(p) as f64;
            assert!((got - want).abs() / want <= 1.0 / 128.0, "p{p}: {got}");
        }
        assert_eq!(h.percentile(100.0), 1_000_000);
        // p50 of 1..=10^6 is 500 000, in bucket [499 712, 503 808): its
        // middle is 501 760.
        assert_eq!(h.percentile(50.0), 501_760);
    }

    #[test]
    fn percentiles_match_sorted_samples() {
        // Log-uniform values from 1 ns to about 1 s, against the exact
        // nearest-rank percentile of the sorted samples.
        let mut rng = Rng::new(11);
        let mut h = Histogram::new();
        let mut all: Vec<u64> = (0..50_000)
            .map(|_| {
                let bits = rng.below(30) as u32;
                (1u64 << bits) + rng.below(1u64 << bits)
            })
            .collect();
        for &v in &all {
            h.record(v);
        }
        all.sort_unstable();
        for p in [1.0, 10.0, 50.0, 75.0, 90.0, 99.0, 99.9, 99.99] {
            let exact = p / 100.0 * all.len() as f64;
            let mut rank = exact as usize;
            if (rank as f64) < exact {
                rank += 1;
            }
            let want = all[rank - 1] as f64;
            let got = h.percentile(p) as f64;
            assert!(
                (got - want).abs() / want <= 1.0 / 128.0,
                "p{p}: {got} vs {want}"
            );
        }
        assert_eq!(h.percentile(100.0), *all.last().unwrap());
        assert_eq!(h.min(), all[0]);
    }

    #[test]
    fn merge_equals_recording_everything_in_one() {
        let (mut a, mut b, mut both) = (Histogram::new(), Histogram::new(), Histogram::new());
        for v in [3u64, 700, 12_345, 9_999_999, 5] {
            a.record(v);
            both.record(v);
        }
        for v in [1u64 << 40, 2, 700] {
            b.record(v);
            both.record(v);
        }
        b.record_n(64, 3);
        both.record_n(64, 3);
        a.merge(&b);
        assert_eq!(a, both);
        assert_eq!(a.count(), 11);
        assert_eq!((a.min(), a.max()), (2, 1 << 40));
        let mut empty = Histogram::new();
        empty.merge(&Histogram::new());
        assert!(empty.is_empty());
        assert_eq!(
            (empty.min(), empty.max(), empty.percentile(50.0)),
            (0, 0, 0)
        );
        assert_eq!(empty.mean(), 0.0);
    }

    #[test]
    fn extreme_values() {
        let mut h = Histogram::new();
        h.record(u64::MAX);
        h.record(u64::MAX);
        h.record(0);
        assert_eq!(h.percentile(100.0), u64::MAX);
        assert_eq!(h.percentile(50.0), (127 << 57) + (1 << 56));
        assert_eq!(h.percentile(10.0), 0);
        assert_eq!(h.mean(), (2.0 * u64::MAX as f64) / 3.0);
    }
}
