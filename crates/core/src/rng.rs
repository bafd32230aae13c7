//! runnel's one seedable random number generator (SplitMix64): retry jitter
//! and orphan-scan spread in the core, the demo's dataset in the server, the
//! fault schedule of `cargo xtask chaos`. Seeded, so a failing property test
//! or chaos run replays exactly.

/// SplitMix64: fast, tiny, good enough for jitter. Not for cryptography.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    /// A generator starting from `seed`.
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A uniform number in `[0, 1)`.
    pub fn unit(&mut self) -> f64 {
        // 53 random bits, the precision of an f64 mantissa.
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// A uniform number in `[-1, 1)`.
    pub fn signed_unit(&mut self) -> f64 {
        self.unit() * 2.0 - 1.0
    }

    /// A number in `0..n` (0 when `n` is 0); the modulo bias is below
    /// 2^-40 for the small `n` this is used with.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    /// A number in `low..=high` (`low` when `high < low`).
    pub fn range(&mut self, low: u64, high: u64) -> u64 {
        low + self.below(high.saturating_sub(low).saturating_add(1))
    }

    /// An index into a slice of length `n` (0 when `n` is 0).
    pub fn index(&mut self, n: usize) -> usize {
        // usize fits in u64 on every supported target, and the result is
        // below `n`, so both conversions are lossless.
        self.below(n as u64) as usize
    }

    /// True with probability `p` (clamped to `[0, 1]`).
    pub fn chance(&mut self, p: f64) -> bool {
        self.unit() < p
    }

    /// A generator for a sub-task, independent of this one's later draws.
    pub fn fork(&mut self) -> Self {
        Self(self.next_u64())
    }
}

/// A seed derived from a text (for example the replica id), so replicas do
/// not share jitter sequences while each one stays reproducible.
pub fn seed_from(text: &str) -> u64 {
    // FNV-1a, then one SplitMix round to spread the bits.
    let mut h: u64 = 0xCBF2_9CE4_8422_2325;
    for b in text.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01B3);
    }
    Rng::new(h).next_u64()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_stay_inside_their_bounds() {
        let mut r = Rng::new(3);
        for _ in 0..1000 {
            assert!((5..=9).contains(&r.range(5, 9)));
            assert!(r.below(4) < 4);
            assert!(r.index(3) < 3);
        }
        assert_eq!(r.range(7, 7), 7);
        assert_eq!(r.below(0), 0);
        assert!(!r.chance(0.0));
        assert!(r.chance(1.0));
        let mut a = Rng::new(9);
        let mut forked = a.fork();
        assert_ne!(a.next_u64(), forked.next_u64());
    }

    #[test]
    fn same_seed_same_sequence_and_units_stay_in_range() {
        let mut a = Rng::new(7);
        let mut b = Rng::new(7);
        for _ in 0..1000 {
            assert_eq!(a.next_u64(), b.next_u64());
            let u = a.unit();
            assert!((0.0..1.0).contains(&u));
            let s = b.signed_unit();
            assert!((-1.0..1.0).contains(&s));
        }
        assert_ne!(seed_from("replica-a"), seed_from("replica-b"));
    }
}
