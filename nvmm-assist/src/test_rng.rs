//! The tests' random generator: xorshift64* (Marsaglia's xorshift with
//! Vigna's multiplier). Small and deterministic, so a failing randomized
//! case repeats from its seed, and dependency-free, so the one file serves
//! the unit tests (`crate::testutil::Rng`), the integration tests
//! (through `tests/support`), the oracle encoder (`tests/oracle_support/
//! encode.rs`) and the fuzz targets that include it.

/// The generator state; seed it with any non-zero value (zero stays zero).
#[derive(Debug, Clone)]
pub struct Rng(pub u64);

impl Rng {
    /// The next 64-bit value.
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A value in `[0, n)`, by modulo (`n` = 0 counts as 1, giving 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    /// True in about `percent` cases of 100.
    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    /// True with probability 1/`n`.
    pub fn one_in(&mut self, n: u64) -> bool {
        self.below(n) == 0
    }

    /// One of `items` (which must not be empty).
    pub fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len() as u64) as usize]
    }
}
