//! xorshift64* (Marsaglia's xorshift with Vigna's multiplier): a small
//! deterministic generator, so a failing randomized case repeats from its
//! seed. Shared by the batch tests (`io_batch.rs`, `mmio_batch.rs`).

/// The generator state; seed it with any non-zero value.
pub struct Rng(pub u64);

impl Rng {
    /// The next 64-bit value.
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A value in `[0, n)` (`n` > 0), by modulo.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}
