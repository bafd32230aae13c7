//! Seeded randomness and text hashing. Faults and latency jitter draw from a
//! generator seeded by `(config seed, request number)`, so a run with the same
//! seed and the same request order sees the same faults; replies draw from a
//! hash of the prompt, so the same prompt always gets the same reply.

/// wyrand: a tiny, fast, statistically decent generator. Not for secrets.
#[derive(Clone, Debug)]
pub(crate) struct Rng(u64);

impl Rng {
    /// A generator whose sequence is fixed by `seed`.
    pub(crate) fn new(seed: u64) -> Self {
        Rng(seed)
    }

    /// The generator of request number `n` under configuration seed `seed`.
    pub(crate) fn for_request(seed: u64, n: u64) -> Self {
        let mut mixer = Rng::new(seed ^ n.rotate_left(32));
        Rng::new(mixer.next_u64() ^ n)
    }

    /// The next 64 random bits.
    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0xA076_1D64_78BD_642F);
        let product = u128::from(self.0) * u128::from(self.0 ^ 0xE703_7ED1_A0B4_28DB);
        // Folding the 128-bit product: the truncation is the algorithm.
        ((product >> 64) as u64) ^ (product as u64)
    }

    /// Uniform in `[0, 1)`.
    pub(crate) fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Uniform in `0..n` (`n > 0`); the tiny modulo bias does not matter here.
    pub(crate) fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
}

/// A stable 64-bit hash of a text (FNV-1a, then one generator step to spread
/// the bits). Stable across runs, platforms and Rust versions, unlike std's
/// `DefaultHasher`, because replies promised to tests depend on it.
pub(crate) fn hash_text(text: &str) -> u64 {
    let fnv = text.bytes().fold(0xCBF2_9CE4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01B3)
    });
    Rng::new(fnv).next_u64()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_sequence_different_requests_differ() {
        let a: Vec<u64> = (0..8).map(|_| Rng::new(5).next_u64()).collect();
        assert!(a.windows(2).all(|w| w[0] == w[1]));
        let mut r1 = Rng::for_request(1, 0);
        let mut r2 = Rng::for_request(1, 1);
        assert_ne!(r1.next_u64(), r2.next_u64());
    }

    #[test]
    fn unit_stays_in_range_and_is_spread() {
        let mut rng = Rng::new(42);
        let draws: Vec<f64> = (0..10_000).map(|_| rng.unit()).collect();
        assert!(draws.iter().all(|u| (0.0..1.0).contains(u)));
        let below_half = draws.iter().filter(|u| **u < 0.5).count();
        assert!((4_700..5_300).contains(&below_half), "{below_half}");
    }

    #[test]
    fn hash_is_pinned() {
        // Pinned so that a change to the hash (which would change every
        // documented reply) is a deliberate decision.
        assert_eq!(hash_text(""), Rng::new(0xCBF2_9CE4_8422_2325).next_u64());
        assert_eq!(hash_text("What is 1 + 1?"), hash_text("What is 1 + 1?"));
        assert_ne!(hash_text("a"), hash_text("b"));
    }
}
