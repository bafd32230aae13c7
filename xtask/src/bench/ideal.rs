//! The ideal time of a rate scenario: the earliest moment the provider's
//! limiter could have admitted every call, burst included, so that no run
//! can come in under 1.0 × ideal (issue 12 item 7).
//!
//! - Token bucket of rate `r` per second and capacity `C = max(1, r × burst)`,
//!   full at the start, each call costing `c` (1 for a request limit, the
//!   call's tokens for a token limit): the n-th call is admitted once
//!   `C + r·t − (n − 1)·c ≥ min(c, C)` (the simulator admits a call larger
//!   than the bucket once it is full), so
//!   `t = max(0, (n − 1)·c + min(c, C) − C) / r`; for `c = 1` that is
//!   `max(0, n − C) / r`.
//! - Fixed windows of length `W` admitting `L` calls each, aligned to the
//!   simulator's start, the experiment starting at phase `p` (time since the
//!   simulator's start modulo `W`): the n-th call falls in window
//!   `k = ⌊(n − 1) / L⌋` counted from the one in progress, so `t = 0` when
//!   `k = 0`, else `(W − p) + (k − 1)·W`.
//! - Sliding windows (at most `L` calls in any span of `W`):
//!   `t = ⌊(n − 1) / L⌋ · W`.
//!
//! Where several limits apply, every one must admit every call, so the ideal
//! is the largest of their times: the limit that binds.

/// One limiter of the provider, as the simulator enforces it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Limiter {
    /// A token bucket, full at the start.
    Bucket {
        /// Refill per second (requests, or tokens for a token limit).
        rate: f64,
        /// Most it holds.
        capacity: f64,
    },
    /// Consecutive windows aligned to the simulator's start.
    FixedWindow {
        /// Window length in seconds.
        window: f64,
        /// Admissions per window.
        per_window: f64,
        /// Seconds into the window in progress when the experiment started.
        phase: f64,
    },
    /// At most `per_window` admissions in any span of `window` seconds.
    SlidingWindow {
        /// Window length in seconds.
        window: f64,
        /// Admissions per window.
        per_window: f64,
    },
}

impl Limiter {
    /// The simulator's bucket of `rate` per second holding `burst_s` seconds
    /// of refill, at least one unit.
    pub(crate) fn bucket(rate: f64, burst_s: f64) -> Self {
        Limiter::Bucket {
            rate,
            capacity: (rate * burst_s).max(1.0),
        }
    }

    /// The earliest time, in seconds after the start, at which `n` calls of
    /// `cost` units each can all have been admitted.
    pub(crate) fn earliest(&self, n: u64, cost: f64) -> f64 {
        if n == 0 {
            return 0.0;
        }
        let n = n as f64;
        match *self {
            Limiter::Bucket { rate, capacity } => {
                ((n - 1.0) * cost + cost.min(capacity) - capacity).max(0.0) / rate
            }
            Limiter::FixedWindow {
                window,
                per_window,
                phase,
            } => {
                let k = windows_before(n, per_window, cost);
                if k == 0.0 {
                    0.0
                } else {
                    (window - phase.rem_euclid(window)) + (k - 1.0) * window
                }
            }
            Limiter::SlidingWindow { window, per_window } => {
                windows_before(n, per_window, cost) * window
            }
        }
    }
}

impl Limiter {
    /// Calls of `cost` per second it admits in the long run.
    pub(crate) fn long_run_rate(&self, cost: f64) -> f64 {
        match *self {
            Limiter::Bucket { rate, .. } => rate / cost,
            Limiter::FixedWindow {
                window, per_window, ..
            }
            | Limiter::SlidingWindow { window, per_window } => {
                (per_window / cost).floor().max(1.0) / window
            }
        }
    }
}

/// The limit that binds `n` calls: the one whose earliest time is the
/// latest (the first of equals); `None` without limits.
pub(crate) fn binding(n: u64, limits: &[(Limiter, f64)]) -> Option<(Limiter, f64)> {
    limits.iter().copied().reduce(|best, next| {
        if next.0.earliest(n, next.1) > best.0.earliest(n, best.1) {
            next
        } else {
            best
        }
    })
}

/// Whole windows that must pass before the n-th call: `⌊(n − 1) / L⌋`,
/// where a window of `per_window` units admits `L = ⌊per_window / cost⌋`
/// calls (at least one).
fn windows_before(n: f64, per_window: f64, cost: f64) -> f64 {
    let calls = (per_window / cost).floor().max(1.0);
    ((n - 1.0) / calls).floor()
}

/// The ideal time of `n` calls under every limit of `limits` (each with the
/// cost of one call in its unit): the largest of their earliest times.
pub(crate) fn ideal_seconds(n: u64, limits: &[(Limiter, f64)]) -> f64 {
    binding(n, limits).map_or(0.0, |(limiter, cost)| limiter.earliest(n, cost))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9
    }

    #[test]
    fn a_bucket_admits_its_capacity_at_once_then_its_rate() {
        let b = Limiter::bucket(50.0, 1.0);
        assert!(close(b.earliest(2000, 1.0), 39.0));
        assert!(close(b.earliest(50, 1.0), 0.0));
        assert!(close(b.earliest(51, 1.0), 0.02));
        assert_eq!(b.earliest(0, 1.0), 0.0);
        // A tiny rate still holds one request.
        let tiny = Limiter::bucket(0.5, 1.0);
        assert!(close(tiny.earliest(3, 1.0), 4.0));
    }

    #[test]
    fn a_token_bucket_charges_each_call_its_tokens() {
        // 60,000 tokens per minute = 1,000/s, capacity 1,000: calls of 4,000
        // tokens each. The first is admitted once full (t = 0) and leaves a
        // debt of 3,000; each further one needs 4,000 more.
        let b = Limiter::bucket(1000.0, 1.0);
        assert!(close(b.earliest(1, 4000.0), 0.0));
        assert!(close(b.earliest(2, 4000.0), 4.0));
        assert!(close(b.earliest(11, 4000.0), 40.0));
        // Calls smaller than the bucket: (n − 1)·c + c − C.
        let big = Limiter::bucket(1000.0, 10.0);
        assert!(close(
            big.earliest(5, 4000.0),
            (20_000.0 - 10_000.0) / 1000.0
        ));
    }

    #[test]
    fn fixed_windows_count_from_the_phase_of_the_start() {
        let w = Limiter::FixedWindow {
            window: 10.0,
            per_window: 200.0,
            phase: 3.0,
        };
        assert_eq!(w.earliest(200, 1.0), 0.0);
        assert!(close(w.earliest(201, 1.0), 7.0));
        assert!(close(w.earliest(1000, 1.0), 7.0 + 30.0));
        // A phase beyond the window wraps.
        let wrapped = Limiter::FixedWindow {
            window: 10.0,
            per_window: 200.0,
            phase: 13.0,
        };
        assert!(close(wrapped.earliest(201, 1.0), 7.0));
    }

    #[test]
    fn sliding_windows_wait_whole_windows() {
        let w = Limiter::SlidingWindow {
            window: 10.0,
            per_window: 200.0,
        };
        assert_eq!(w.earliest(200, 1.0), 0.0);
        assert!(close(w.earliest(201, 1.0), 10.0));
        assert!(close(w.earliest(1000, 1.0), 40.0));
        // Calls of 30 units in windows of 100 units: 3 calls per window.
        let tokens = Limiter::SlidingWindow {
            window: 10.0,
            per_window: 100.0,
        };
        assert!(close(tokens.earliest(7, 30.0), 20.0));
        assert!(close(tokens.earliest(6, 30.0), 10.0));
    }

    #[test]
    fn the_binding_limit_sets_the_ideal() {
        let limits = [
            (Limiter::bucket(50.0, 1.0), 1.0),
            (Limiter::bucket(20.0, 1.0), 1.0),
        ];
        assert!(close(ideal_seconds(1000, &limits), (1000.0 - 20.0) / 20.0));
        assert_eq!(ideal_seconds(1000, &[]), 0.0);
        assert_eq!(binding(1000, &limits), Some(limits[1]));
        // A daily allowance far above the run does not bind; the unannounced
        // per-second bucket does.
        let daily = [
            (
                Limiter::FixedWindow {
                    window: 86_400.0,
                    per_window: 100_000.0,
                    phase: 5.0,
                },
                1.0,
            ),
            (Limiter::bucket(20.0, 1.0), 1.0),
        ];
        assert_eq!(binding(1000, &daily), Some(daily[1]));
        assert!(close(daily[1].0.long_run_rate(1.0), 20.0));
        // Tokens bind 4,000-token calls: 40,000 tokens/s is 10 calls/s.
        let tokens = [
            (Limiter::bucket(50.0, 1.0), 1.0),
            (Limiter::bucket(40_000.0, 1.0), 4000.0),
        ];
        let (limiter, cost) = binding(1000, &tokens).unwrap();
        assert!(close(limiter.long_run_rate(cost), 10.0));
        let sliding = Limiter::SlidingWindow {
            window: 10.0,
            per_window: 200.0,
        };
        assert!(close(sliding.long_run_rate(1.0), 20.0));
    }

    #[test]
    fn no_schedule_beats_the_ideal() {
        // Greedy admission under a bucket, simulated step by step, never
        // finishes before the formula says.
        for (rate, burst, n) in [(50.0, 1.0, 300u64), (2.0, 1.0, 10), (0.5, 1.0, 4)] {
            let limiter = Limiter::bucket(rate, burst);
            let Limiter::Bucket { capacity, .. } = limiter else {
                unreachable!()
            };
            let (mut level, mut t, mut admitted) = (capacity, 0.0f64, 0u64);
            let dt = 1e-3;
            while admitted < n {
                while level >= 1.0 - 1e-9 && admitted < n {
                    level -= 1.0;
                    admitted += 1;
                }
                if admitted < n {
                    t += dt;
                    level = (level + rate * dt).min(capacity);
                }
            }
            let ideal = limiter.earliest(n, 1.0);
            assert!(t + 1e-6 >= ideal - dt, "rate {rate}: {t} < {ideal}");
            assert!(t <= ideal + 2.0 * dt, "rate {rate}: {t} ≫ {ideal}");
        }
    }
}
