//! Record numbers, their keys, and the choosers that pick which record an
//! operation touches, as YCSB's CoreWorkload does.
//!
//! - [`key_bytes`]: record `n`'s key, `"user"` + 20 decimal digits of
//!   either `n` itself (ordered) or its FNV-1a hash (YCSB's default, so
//!   that insertion order is not key order).
//! - [`Zipfian`]: YCSB's ZipfianGenerator (Gray et al., "Quickly
//!   generating billion-record synthetic databases", 1994): rank 0 is the
//!   most popular, P(rank i) ~ 1/(i+1)^theta, theta 0.99.
//! - [`ScrambledZipfian`]: a Zipfian over 10^10 ranks hashed with FNV-1a
//!   modulo the item count, so the popular records are spread over the key
//!   space instead of clustered at the low record numbers.
//! - [`Latest`]: YCSB's SkewedLatestGenerator, a Zipfian counted back from
//!   the newest record, for workload D.
//! - [`Chooser`]: the one of these a workload uses, drawing among the
//!   records that exist so far (the shared insert counter lives in
//!   [`super::Acked`], which every thread of a run shares).
//!
//! The real-valued arithmetic uses `libm` (no_std), never `std`'s float
//! functions, so the same code runs in the guest.

use alloc::vec::Vec;

use super::rng::Rng;

/// Length in bytes of every key [`key_bytes`] makes.
pub const KEY_LEN: usize = 4 + 20;

const FNV_OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// FNV-1a over the eight little-endian bytes of `n` (YCSB's `fnvhash64`,
/// without its final `Math.abs`).
pub fn fnv1a64(n: u64) -> u64 {
    n.to_le_bytes().iter().fold(FNV_OFFSET_BASIS, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(FNV_PRIME)
    })
}

/// Writes record `n`'s key into `out` (replacing its contents): `"user"`
/// followed by 20 zero-padded decimal digits of `n` if `ordered`, else of
/// [`fnv1a64`]`(n)`. Every key is [`KEY_LEN`] bytes, and byte order of
/// keys is numeric order of the number they spell.
pub fn key_bytes(n: u64, ordered: bool, out: &mut Vec<u8>) {
    let mut x = if ordered { n } else { fnv1a64(n) };
    out.clear();
    out.extend_from_slice(b"user");
    out.resize(KEY_LEN, b'0');
    for digit in out[4..].iter_mut().rev() {
        *digit = b'0' + (x % 10) as u8;
        x /= 10;
    }
}

/// The number of ranks a [`ScrambledZipfian`] draws from before hashing
/// (YCSB's `ITEM_COUNT`).
pub const SCRAMBLE_SPACE: u64 = 10_000_000_000;

/// `sum over i in from+1..=to of 1/i^theta`: what the zeta constant of a
/// Zipfian grows by when its item count goes from `from` to `to` (0 if
/// `to <= from`). Short ranges are summed term by term; long ones sum
/// their first 100 terms and take the rest from the Euler-Maclaurin
/// formula (up to the f''' term), whose error there is below 1e-13
/// relative, so a zeta over 10^10 items costs about 100 `pow`s.
pub fn zeta(from: u64, to: u64, theta: f64) -> f64 {
    const HEAD: u64 = 100;
    if to <= from {
        return 0.0;
    }
    let f = |i: u64| libm::pow(i as f64, -theta);
    let first = from + 1;
    if to - first < 2 * HEAD {
        return (first..=to).map(f).sum();
    }
    let m = first + HEAD;
    let head: f64 = (first..m).map(f).sum();
    let (mf, bf) = (m as f64, to as f64);
    let integral = (libm::pow(bf, 1.0 - theta) - libm::pow(mf, 1.0 - theta)) / (1.0 - theta);
    let d1 = |x: f64| -theta * libm::pow(x, -theta - 1.0);
    let d3 = |x: f64| -theta * (theta + 1.0) * (theta + 2.0) * libm::pow(x, -theta - 3.0);
    let ends = (f(m) + f(to)) / 2.0;
    head + integral + ends + (d1(bf) - d1(mf)) / 12.0 - (d3(bf) - d3(mf)) / 720.0
}

/// YCSB's ZipfianGenerator over ranks `0..items`: rank 0 is the most
/// popular. Draws cost one `pow`; the constants are computed once (and
/// updated incrementally by [`Zipfian::resize`] when the item count
/// grows).
#[derive(Clone, Debug)]
pub struct Zipfian {
    items: u64,
    theta: f64,
    zetan: f64,
    zeta2: f64,
    alpha: f64,
    eta: f64,
    half_pow_theta: f64,
}

impl Zipfian {
    /// YCSB's default Zipfian constant.
    pub const THETA: f64 = 0.99;

    /// A Zipfian over `items` ranks with theta 0.99.
    pub fn new(items: u64) -> Self {
        Zipfian::with_theta(items, Zipfian::THETA)
    }

    /// A Zipfian over `items` ranks (at least 1) with `theta` in (0, 1).
    pub fn with_theta(items: u64, theta: f64) -> Self {
        assert!(items >= 1, "a Zipfian needs at least one item");
        assert!(
            theta > 0.0 && theta < 1.0,
            "Zipfian theta {theta} not in (0, 1)"
        );
        let zeta2 = zeta(0, 2, theta);
        let mut z = Zipfian {
            items,
            theta,
            zetan: zeta(0, items, theta),
            zeta2,
            alpha: 1.0 / (1.0 - theta),
            eta: 0.0,
            half_pow_theta: libm::pow(0.5, theta),
        };
        z.eta = z.eta_for();
        z
    }

    fn eta_for(&self) -> f64 {
        (1.0 - libm::pow(2.0 / self.items as f64, 1.0 - self.theta))
            / (1.0 - self.zeta2 / self.zetan)
    }

    /// The number of ranks.
    pub fn items(&self) -> u64 {
        self.items
    }

    /// The normalising constant: `sum over i in 1..=items of 1/i^theta`;
    /// rank `r` has probability `1/((r+1)^theta * zetan)`.
    pub fn zetan(&self) -> f64 {
        self.zetan
    }

    /// Changes the number of ranks: adds the new terms to the constant
    /// when growing (as YCSB does when records are inserted), recomputes
    /// it when shrinking.
    pub fn resize(&mut self, items: u64) {
        assert!(items >= 1, "a Zipfian needs at least one item");
        if items == self.items {
            return;
        }
        self.zetan = if items > self.items {
            self.zetan + zeta(self.items, items, self.theta)
        } else {
            zeta(0, items, self.theta)
        };
        self.items = items;
        self.eta = self.eta_for();
    }

    /// Draws a rank in `0..items`. Ranks 0 and 1 have exactly their
    /// Zipfian probabilities; the rest follow Gray et al.'s approximation.
    pub fn next(&self, rng: &mut Rng) -> u64 {
        let u = rng.unit_f64();
        let uz = u * self.zetan;
        if uz < 1.0 {
            return 0;
        }
        if uz < 1.0 + self.half_pow_theta {
            return 1.min(self.items - 1);
        }
        let rank = self.items as f64 * libm::pow(self.eta * u - self.eta + 1.0, self.alpha);
        (rank as u64).min(self.items - 1)
    }
}

/// YCSB's ScrambledZipfianGenerator: a Zipfian over [`SCRAMBLE_SPACE`]
/// ranks, each rank hashed with [`fnv1a64`] modulo the item count. The
/// popularity skew is the Zipfian's; which records are popular is spread
/// over `0..items`.
#[derive(Clone, Debug)]
pub struct ScrambledZipfian {
    items: u64,
    zipf: Zipfian,
}

impl ScrambledZipfian {
    /// A scrambled Zipfian over records `0..items` (theta 0.99).
    pub fn new(items: u64) -> Self {
        assert!(items >= 1, "a Zipfian needs at least one item");
        ScrambledZipfian {
            items,
            zipf: Zipfian::new(SCRAMBLE_SPACE),
        }
    }

    /// The number of records drawn from.
    pub fn items(&self) -> u64 {
        self.items
    }

    /// Draws a record in `0..items`.
    pub fn next(&self, rng: &mut Rng) -> u64 {
        fnv1a64(self.zipf.next(rng)) % self.items
    }
}

/// YCSB's SkewedLatestGenerator: the newest record is the most popular,
/// the one before it next, and so on (a Zipfian over the records counted
/// back from the newest).
#[derive(Clone, Debug)]
pub struct Latest {
    zipf: Zipfian,
}

impl Latest {
    /// A chooser that starts with `items` records.
    pub fn new(items: u64) -> Self {
        Latest {
            zipf: Zipfian::new(items),
        }
    }

    /// Draws a record in `0..count`, where `count` is the number of
    /// records that exist now (it may have grown since the last draw).
    pub fn next(&mut self, rng: &mut Rng, count: u64) -> u64 {
        self.zipf.resize(count);
        count - 1 - self.zipf.next(rng)
    }
}

/// How an operation picks its record: the key chooser of one driver
/// thread (each thread has its own; they agree through the count of
/// records that exist, which all threads share).
#[derive(Clone, Debug)]
pub enum Chooser {
    /// Every existing record equally likely.
    Uniform,
    /// [`ScrambledZipfian`] over the records plus the inserts expected
    /// (YCSB sizes it so); draws of records not inserted yet are redrawn.
    Zipfian(ScrambledZipfian),
    /// [`Latest`].
    Latest(Latest),
}

impl Chooser {
    /// Draws a record in `0..available`, the records that exist now
    /// (`available` must be at least 1).
    pub fn next(&mut self, rng: &mut Rng, available: u64) -> u64 {
        assert!(available >= 1, "no record to choose from");
        match self {
            Chooser::Uniform => rng.below(available),
            Chooser::Zipfian(z) => loop {
                let r = z.next(rng);
                if r < available {
                    return r;
                }
            },
            Chooser::Latest(l) => l.next(rng, available),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;
    use std::collections::BTreeSet;

    #[test]
    fn fnv_reference_values() {
        // FNV-1a 64 of the little-endian bytes, as YCSB's fnvhash64
        // computes before Math.abs.
        assert_eq!(fnv1a64(0), 12_161_962_213_042_174_405);
        assert_eq!(fnv1a64(1), 9_929_646_806_074_584_996);
        assert_eq!(fnv1a64(12345), 16_653_943_660_658_674_764);
    }

    #[test]
    fn keys_are_fixed_width_and_ordered_keys_sort_numerically() {
        let mut k = Vec::new();
        key_bytes(0, true, &mut k);
        assert_eq!(k, b"user00000000000000000000");
        key_bytes(1234, true, &mut k);
        assert_eq!(k, b"user00000000000000001234");
        key_bytes(u64::MAX, true, &mut k);
        assert_eq!(k, b"user18446744073709551615");
        key_bytes(0, false, &mut k);
        assert_eq!(k, b"user12161962213042174405");
        key_bytes(1, false, &mut k);
        assert_eq!(k, b"user09929646806074584996");
        assert_eq!(k.len(), KEY_LEN);

        let mut prev = Vec::new();
        for n in [0u64, 1, 9, 10, 99, 100, 123_456_789, u64::MAX] {
            key_bytes(n, true, &mut k);
            assert!(prev < k, "{n}");
            prev.clone_from(&k);
        }
    }

    #[test]
    fn hashed_keys_do_not_collide_and_are_not_in_insertion_order() {
        let mut k = Vec::new();
        let mut seen = BTreeSet::new();
        let mut ascending = 0;
        let mut prev = Vec::new();
        for n in 0..1u64 << 18 {
            key_bytes(n, false, &mut k);
            assert!(seen.insert(k.clone()), "key of record {n} collides");
            if k > prev {
                ascending += 1;
            }
            prev.clone_from(&k);
        }
        // About half the successive pairs ascend for a random order.
        assert!((120_000..142_000).contains(&ascending), "{ascending}");
    }

    #[test]
    fn zeta_matches_term_by_term_sums() {
        for (from, to) in [
            (0, 1),
            (0, 2),
            (0, 199),
            (0, 1000),
            (0, 100_000),
            (500, 70_000),
        ] {
            let exact: f64 = (from + 1..=to).map(|i| libm::pow(i as f64, -0.99)).sum();
            let fast = zeta(from, to, 0.99);
            assert!(
                ((fast - exact) / exact).abs() < 1e-12,
                "{from}..{to}: {fast} vs {exact}"
            );
        }
        assert_eq!(zeta(0, 1, 0.99), 1.0);
        assert_eq!(zeta(5, 5, 0.99), 0.0);
        // Growth in steps adds up to the whole.
        let stepwise = zeta(0, 1000, 0.99) + zeta(1000, 1001, 0.99) + zeta(1001, 50_000, 0.99);
        assert!((stepwise - zeta(0, 50_000, 0.99)).abs() < 1e-11);
    }

    #[test]
    fn zeta_of_the_scramble_space_is_ycsbs_constant() {
        // YCSB's ScrambledZipfianGenerator hard-codes this value of
        // zeta(10^10, 0.99).
        let z = zeta(0, SCRAMBLE_SPACE, 0.99);
        assert!((z - 26.469_028_201_783_02).abs() < 1e-9, "{z}");
    }

    /// Draws `n` ranks and returns the counts of each.
    fn histogram(mut draw: impl FnMut() -> u64, items: u64, n: u32) -> Vec<u32> {
        let mut counts = vec![0u32; items as usize];
        for _ in 0..n {
            counts[draw() as usize] += 1;
        }
        counts
    }

    /// |observed - expected| within 5 standard deviations of a binomial.
    fn assert_binomial(observed: u32, n: u32, p: f64) {
        let expected = f64::from(n) * p;
        let sd = (expected * (1.0 - p)).sqrt();
        assert!(
            (f64::from(observed) - expected).abs() < 5.0 * sd,
            "observed {observed}, expected {expected:.0} +- {sd:.0}"
        );
    }

    #[test]
    fn zipfian_1000_items_has_the_zipfian_head() {
        let z = Zipfian::new(1000);
        // zeta(1000, 0.99) computed term by term in f64.
        assert!((z.zetan() - 7.728_953_217_284_729).abs() < 1e-12);
        let mut rng = Rng::new(1);
        let n = 400_000;
        let counts = histogram(|| z.next(&mut rng), 1000, n);
        // Ranks 0 and 1 are exact: 1/zetan = 0.1294, 2^-0.99/zetan = 0.0651.
        assert_binomial(counts[0], n, 1.0 / z.zetan());
        assert_binomial(counts[1], n, libm::pow(2.0, -0.99) / z.zetan());
        // The ranks above follow the approximation: the first 100 ranks
        // together hold sum(1/i^0.99, i<=100)/zetan ~ 67%.
        let top100: u32 = counts[..100].iter().sum();
        let share = f64::from(top100) / f64::from(n);
        let exact = zeta(0, 100, 0.99) / z.zetan();
        assert!((share - exact).abs() < 0.02, "{share} vs {exact}");
        // Popularity falls with rank.
        let tens: Vec<u32> = counts.chunks(100).map(|c| c.iter().sum()).collect();
        assert!(tens.windows(2).all(|w| w[0] > w[1]), "{tens:?}");
    }

    #[test]
    fn zipfian_with_one_or_two_items() {
        let mut rng = Rng::new(5);
        let one = Zipfian::new(1);
        let two = Zipfian::new(2);
        let mut saw = [0u32; 2];
        for _ in 0..1000 {
            assert_eq!(one.next(&mut rng), 0);
            saw[two.next(&mut rng) as usize] += 1;
        }
        assert!(saw[0] > saw[1] && saw[1] > 0, "{saw:?}");
    }

    #[test]
    fn resize_matches_a_fresh_generator() {
        let mut z = Zipfian::new(1000);
        z.resize(1500);
        let fresh = Zipfian::new(1500);
        assert!((z.zetan() - fresh.zetan()).abs() < 1e-12);
        z.resize(10);
        assert!((z.zetan() - Zipfian::new(10).zetan()).abs() < 1e-15);
        let (mut a, mut b) = (Rng::new(8), Rng::new(8));
        for _ in 0..1000 {
            assert_eq!(z.next(&mut a), Zipfian::new(10).next(&mut b));
        }
    }

    #[test]
    fn scrambled_zipfian_spreads_the_hot_records() {
        let items = 1000;
        let z = ScrambledZipfian::new(items);
        let mut rng = Rng::new(2);
        let n = 400_000;
        let counts = histogram(|| z.next(&mut rng), items, n);
        // The hottest record is rank 0's hash, with at least rank 0's
        // probability 1/zeta(10^10) = 3.78%.
        let hot = (fnv1a64(0) % items) as usize;
        let max = *counts.iter().max().unwrap();
        assert_eq!(counts[hot], max);
        assert!(f64::from(max) / f64::from(n) > 0.035);
        // The ten hottest records are not clustered at low numbers (an
        // unscrambled Zipfian would put all ten in 0..10).
        let mut order: Vec<usize> = (0..items as usize).collect();
        order.sort_by_key(|&i| core::cmp::Reverse(counts[i]));
        let top: Vec<usize> = order[..10].to_vec();
        assert!(top.iter().filter(|&&i| i < 100).count() < 5, "{top:?}");
        assert!(top.iter().any(|&i| i >= 500), "{top:?}");
        // Still skewed: the hottest 10% of records get about 28% of the
        // draws (ranks 0..100 alone give zeta(100)/zeta(10^10) = 20%, the
        // long tail spreads evenly), where a uniform choice would give
        // them about 11%.
        let top100: u32 = order[..100].iter().map(|&i| counts[i]).sum();
        let share = f64::from(top100) / f64::from(n);
        assert!((0.25..0.32).contains(&share), "{share}");
        // And every record is drawn now and then.
        assert!(counts.iter().filter(|&&c| c == 0).count() < 50);
    }

    #[test]
    fn latest_prefers_the_newest_records_and_follows_growth() {
        let mut l = Latest::new(1000);
        let mut rng = Rng::new(3);
        let n = 200_000;
        let mut newest = 0;
        for _ in 0..n {
            let r = l.next(&mut rng, 1000);
            assert!(r < 1000);
            newest += u32::from(r == 999);
        }
        assert_binomial(newest, n, 1.0 / zeta(0, 1000, 0.99));
        // After growth the newest record is the new last one.
        let mut hits = 0;
        for _ in 0..n {
            let r = l.next(&mut rng, 1200);
            assert!(r < 1200);
            hits += u32::from(r == 1199);
        }
        assert_binomial(hits, n, 1.0 / zeta(0, 1200, 0.99));
        assert_eq!(l.next(&mut rng, 1), 0);
    }

    #[test]
    fn chooser_draws_only_existing_records() {
        let mut rng = Rng::new(4);
        let mut choosers = [
            Chooser::Uniform,
            Chooser::Zipfian(ScrambledZipfian::new(2000)),
            Chooser::Latest(Latest::new(1000)),
        ];
        for c in &mut choosers {
            let mut seen = BTreeSet::new();
            for _ in 0..20_000 {
                let r = c.next(&mut rng, 1000);
                assert!(r < 1000);
                seen.insert(r);
            }
            assert!(seen.len() > 100, "{c:?}: {}", seen.len());
        }
    }
}
