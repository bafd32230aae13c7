//! The chaos suite's randomness: runnel's one seeded generator
//! (`runnel_core::rng::Rng`, SplitMix64), so a chaos run is replayed from the
//! seed it prints, plus the clock-derived seed of runs without `--seed`.

pub(crate) use runnel_core::rng::Rng;

/// A seed from the clock, for runs without `--seed`.
pub(crate) fn seed_from_time() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
        % 1_000_000_000
}
