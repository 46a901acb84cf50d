//! The one seedable random number generator of larder's tests and benchmarks.
//!
//! A wrapper over `rand`'s `Xoshiro256PlusPlus` (the crate larder already uses for retry
//! jitter): the same seed gives the same sequence on every platform, so a randomized
//! test that prints its seed replays exactly, and a benchmark data set is the same on
//! every run. Not for anything that needs unpredictability.

use rand::distr::uniform::SampleUniform;
use rand::rngs::Xoshiro256PlusPlus;
use rand::{Rng as _, RngExt, SeedableRng};

/// A seeded, reproducible generator with the few draws tests need.
///
/// ```
/// use larder_testkit::rng::Rng;
///
/// let (mut a, mut b) = (Rng::seeded(7), Rng::seeded(7));
/// assert_eq!(a.next_u64(), b.next_u64());
/// let n: u64 = a.below(10);
/// assert!(n < 10);
/// ```
#[derive(Debug, Clone)]
pub struct Rng(Xoshiro256PlusPlus);

impl Rng {
    /// A generator whose whole sequence is determined by `seed` (any value, 0 included).
    pub fn seeded(seed: u64) -> Rng {
        Rng(Xoshiro256PlusPlus::seed_from_u64(seed))
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0.next_u64()
    }

    /// Uniform in `0..n`, without modulo bias.
    ///
    /// # Panics
    ///
    /// If `n` is zero (an empty range).
    pub fn below<T>(&mut self, n: T) -> T
    where
        T: SampleUniform + PartialOrd + From<u8>,
    {
        self.0.random_range(T::from(0)..n)
    }

    /// A uniform index into a slice of length `len`.
    ///
    /// # Panics
    ///
    /// If `len` is zero.
    pub fn index(&mut self, len: usize) -> usize {
        self.below(len)
    }

    /// A uniformly chosen element of `items`.
    ///
    /// # Panics
    ///
    /// If `items` is empty.
    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.index(items.len())]
    }

    /// True with probability `percent` / 100.
    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100u64) < percent
    }

    /// Uniform in `lo..=hi`.
    ///
    /// # Panics
    ///
    /// If `lo > hi`.
    pub fn range_i64(&mut self, lo: i64, hi: i64) -> i64 {
        self.0.random_range(lo..=hi)
    }

    /// Shuffles `items` in place (Fisher–Yates).
    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            items.swap(i, self.index(i + 1));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Rng;

    #[test]
    fn same_seed_same_sequence_other_seed_other_sequence() {
        let draw = |seed| {
            let mut r = Rng::seeded(seed);
            (0..32).map(|_| r.next_u64()).collect::<Vec<_>>()
        };
        assert_eq!(draw(0), draw(0));
        assert_ne!(draw(0), draw(1));
        let mut r = Rng::seeded(3);
        let mut v: Vec<u32> = (0..100).collect();
        r.shuffle(&mut v);
        assert_ne!(v, (0..100).collect::<Vec<_>>());
        v.sort_unstable();
        assert_eq!(v, (0..100).collect::<Vec<_>>());
        for _ in 0..1_000 {
            assert!(r.below(7u64) < 7);
            assert!((-3..=9).contains(&r.range_i64(-3, 9)));
        }
    }
}
