//! A small seedable pseudo-random generator: splitmix64.
//!
//! One 64-bit word of state, a handful of integer instructions per draw
//! (no SIMD, nothing the guest's instruction emulator trips on), and every
//! seed, including 0, gives a full-period stream. Each driver thread has
//! its own, seeded from the run's seed and the thread number, so a run is
//! reproducible for a given seed and thread count.

/// The splitmix64 generator (Steele, Lea and Flood; the finaliser is
/// Stafford's "Mix13").
#[derive(Clone, Debug)]
pub struct Rng {
    state: u64,
}

/// The golden-ratio increment of splitmix64.
const GAMMA: u64 = 0x9e37_79b9_7f4a_7c15;

/// Mixes `z` into a well-distributed word (a bijection on `u64`).
pub(crate) fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl Rng {
    /// A generator whose stream is fixed by `seed`.
    pub fn new(seed: u64) -> Self {
        Rng { state: seed }
    }

    /// The generator of driver thread `thread` in a run seeded with
    /// `seed`: streams of different threads do not overlap in practice.
    pub fn for_thread(seed: u64, thread: usize) -> Self {
        Rng::new(mix64(seed ^ mix64((thread as u64).wrapping_add(1))))
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(GAMMA);
        mix64(self.state)
    }

    /// A uniform integer in `0..n`, without modulo bias (Lemire's
    /// multiply-and-reject). `n` must not be 0.
    pub fn below(&mut self, n: u64) -> u64 {
        assert!(n > 0, "Rng::below(0)");
        let mut m = u128::from(self.next_u64()) * u128::from(n);
        if (m as u64) < n {
            // Values of the low word below 2^64 mod n would make some
            // results one draw more likely than others: draw again.
            let threshold = n.wrapping_neg() % n;
            while (m as u64) < threshold {
                m = u128::from(self.next_u64()) * u128::from(n);
            }
        }
        (m >> 64) as u64
    }

    /// A uniform integer in `lo..=hi` (`lo <= hi`).
    pub fn between(&mut self, lo: u64, hi: u64) -> u64 {
        assert!(lo <= hi, "Rng::between({lo}, {hi})");
        match (hi - lo).checked_add(1) {
            Some(n) => lo + self.below(n),
            None => self.next_u64(),
        }
    }

    /// A uniform `f64` in `[0, 1)`: 53 random bits scaled by 2^-53.
    pub fn unit_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splitmix64_reference_values() {
        // The first outputs of splitmix64 from state 0, as the reference
        // C implementation (Vigna) prints them.
        let mut r = Rng::new(0);
        assert_eq!(r.next_u64(), 0xe220_a839_7b1d_cdaf);
        assert_eq!(r.next_u64(), 0x6e78_9e6a_a1b9_65f4);
        assert_eq!(r.next_u64(), 0x06c4_5d18_8009_454f);
    }

    #[test]
    fn same_seed_same_stream_and_threads_differ() {
        let a: [u64; 4] = core::array::from_fn({
            let mut r = Rng::for_thread(7, 0);
            move |_| r.next_u64()
        });
        let b: [u64; 4] = core::array::from_fn({
            let mut r = Rng::for_thread(7, 0);
            move |_| r.next_u64()
        });
        let c: [u64; 4] = core::array::from_fn({
            let mut r = Rng::for_thread(7, 1);
            move |_| r.next_u64()
        });
        assert_eq!(a, b);
        assert_ne!(a, c);
    }

    #[test]
    fn below_stays_in_range_and_is_uniform() {
        let mut r = Rng::new(42);
        let mut counts = [0u32; 10];
        for _ in 0..100_000 {
            let x = r.below(10);
            counts[x as usize] += 1;
        }
        // Each bucket expects 10 000 draws, standard deviation about 95.
        for c in counts {
            assert!((9_500..=10_500).contains(&c), "{counts:?}");
        }
        assert_eq!(r.below(1), 0);
        // A bound just above 2^63 rejects almost half the raw draws.
        let big = (1u64 << 63) + 1;
        for _ in 0..1000 {
            assert!(r.below(big) < big);
        }
    }

    #[test]
    fn between_covers_both_ends() {
        let mut r = Rng::new(3);
        let mut seen = [false; 100];
        for _ in 0..10_000 {
            let x = r.between(1, 100);
            assert!((1..=100).contains(&x));
            seen[x as usize - 1] = true;
        }
        assert!(seen.iter().all(|&s| s));
        assert_eq!(r.between(5, 5), 5);
        let _ = r.between(0, u64::MAX);
    }

    #[test]
    fn unit_f64_in_half_open_interval_with_mean_one_half() {
        let mut r = Rng::new(9);
        let mut sum = 0.0;
        for _ in 0..100_000 {
            let u = r.unit_f64();
            assert!((0.0..1.0).contains(&u));
            sum += u;
        }
        // Standard deviation of the mean: sqrt(1/12 / 1e5) ~ 0.0009.
        let mean = sum / 100_000.0;
        assert!((mean - 0.5).abs() < 0.005, "{mean}");
    }
}
