//! A token bucket kept as one "theoretical arrival time" (the GCRA form):
//! integer nanoseconds, no floating point on the hot path, and an exact
//! answer to "when can `n` tokens be taken?".
//!
//! The bucket spends one `interval` of time per token. Its state is the
//! instant `tat` at which everything granted so far would have been paid
//! for at that pace; a `tolerance` lets `tat` run ahead of `now` by a little,
//! which is the burst (`burst = 1 + tolerance / interval` tokens). So `n`
//! tokens fit at `now` when `tat + (n - 1) · interval <= now + tolerance`,
//! and taking them moves `tat` to `max(tat, now) + n · interval`.
//!
//! A request larger than the burst is allowed once the bucket has been idle
//! long enough for the excess; it leaves the bucket in debt. When the rate or
//! the burst changes, the tokens available are kept: a halved rate takes
//! twice as long to refill, a larger burst starts with its extra room empty,
//! a smaller one clamps. For learned rates a debt can instead be capped at
//! one empty burst, so a debt run up at a rate that proved far too high does
//! not block the key for long.
//!
//! The bound that matters: **in any half-open window of length `w`, the
//! tokens granted number fewer than `w · rate_max + burst_max`** (for a
//! single grant: its size), where `rate_max` and `burst_max` are the highest
//! rate and burst the bucket had and no debt was capped — for a fixed rate
//! `r` and burst `b` that is `r · w + b`. The proof: the tokens available
//! never jump up, they refill by at most `rate_max` per second and never
//! exceed `burst_max`, so the grants of a window before its last one took at
//! most what the last one found missing plus `rate_max · w`, and the last
//! one (of `n` tokens) found at least `n` available, counting idle credit.
//! The property tests check it for sequences of requests and rate changes.
//!
//! The bucket never reads a clock: every method takes `now`.

use std::time::{Duration, Instant};

use crate::config::MAX_RATE;

const NANOS_PER_SEC: f64 = 1.0e9;

/// A token bucket with an exact earliest-ready time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenBucket {
    /// Nanoseconds per token (the rate, rounded so it is never exceeded).
    interval_ns: u64,
    /// How far `tat` may run ahead of `now` after a grant.
    tolerance_ns: u64,
    /// Theoretical arrival time: when everything granted is paid for.
    tat: Instant,
}

impl TokenBucket {
    /// A full bucket of `rate` tokens per second holding `burst` tokens (at
    /// least one). Rates are clamped to `[1e-9, 1e9]` per second.
    pub fn new(rate: f64, burst: u64, now: Instant) -> Self {
        let interval_ns = interval_ns(rate);
        Self {
            interval_ns,
            tolerance_ns: tolerance_for(interval_ns, burst),
            tat: now,
        }
    }

    /// A full bucket whose burst is about `burst_seconds` of `rate` (at least one token).
    pub fn with_burst_seconds(rate: f64, burst_seconds: f64, now: Instant) -> Self {
        Self::new(rate, burst_for(rate, burst_seconds), now)
    }

    /// A full bucket with an explicit tolerance (the burst in time).
    pub fn with_tolerance(rate: f64, tolerance: Duration, now: Instant) -> Self {
        Self {
            interval_ns: interval_ns(rate),
            tolerance_ns: u64::try_from(tolerance.as_nanos()).unwrap_or(u64::MAX),
            tat: now,
        }
    }

    /// Tokens per second (as rounded for enforcement).
    pub fn rate(&self) -> f64 {
        NANOS_PER_SEC / self.interval_ns as f64
    }

    /// Capacity in whole tokens: `1 + tolerance / interval`.
    pub fn burst(&self) -> u64 {
        1 + self.tolerance_ns / self.interval_ns
    }

    /// Time per token.
    pub fn interval(&self) -> Duration {
        Duration::from_nanos(self.interval_ns)
    }

    /// How far the bucket may run ahead (the burst in time).
    pub fn tolerance(&self) -> Duration {
        Duration::from_nanos(self.tolerance_ns)
    }

    /// Tokens available at `now`, capped at the burst (negative while in
    /// debt beyond empty). For metrics and tests.
    pub fn available(&self, now: Instant) -> f64 {
        let ahead = signed_ns(self.tat, now).max(0) as f64;
        (self.tolerance_ns as f64 - ahead) / self.interval_ns as f64 + 1.0
    }

    /// Whether `n` tokens can be taken at `now`; if not, the earliest instant
    /// at which they can (exact: asking at that instant succeeds, asking one
    /// nanosecond earlier does not, unless the bucket changes in between).
    pub fn check(&self, n: u64, now: Instant) -> Result<(), Instant> {
        let wait = self.wait_ns(n, now);
        if wait <= 0 {
            Ok(())
        } else {
            Err(add_ns(now, wait))
        }
    }

    /// Takes `n` tokens at `now` without checking; call after [`check`](Self::check)
    /// said yes (or to charge tokens that were used without asking).
    pub fn take(&mut self, n: u64, now: Instant) {
        let base = self.tat.max(now);
        self.tat = add_ns(base, i128::from(n) * i128::from(self.interval_ns));
    }

    /// Takes `n` tokens if they fit, otherwise says when they will.
    pub fn try_take(&mut self, n: u64, now: Instant) -> Result<(), Instant> {
        self.check(n, now)?;
        self.take(n, now);
        Ok(())
    }

    /// Changes the rate and burst at `now`, keeping the debt in tokens.
    pub fn set_rate(&mut self, rate: f64, burst: u64, now: Instant) {
        let interval = interval_ns(rate);
        self.reconfigure(interval, tolerance_for(interval, burst), now, false);
    }

    /// Changes the rate and the tolerance (the burst in time) at `now`,
    /// keeping the debt in tokens, or when `cap_debt` at most one empty burst.
    pub fn set_rate_tolerance(
        &mut self,
        rate: f64,
        tolerance: Duration,
        now: Instant,
        cap_debt: bool,
    ) {
        let tolerance = u64::try_from(tolerance.as_nanos()).unwrap_or(u64::MAX);
        self.reconfigure(interval_ns(rate), tolerance, now, cap_debt);
    }

    fn reconfigure(&mut self, interval: u64, tolerance: u64, now: Instant, cap_debt: bool) {
        let ahead = signed_ns(self.tat, now);
        if ahead > 0 {
            // Keep the tokens available: `available - 1 = (tolerance - ahead)
            // / interval`, before and after. A larger burst therefore starts
            // with its extra room empty, a smaller one clamps. Floor division
            // keeps the result on the safe side.
            let spare = (i128::from(self.tolerance_ns) - ahead) * i128::from(interval);
            let kept = spare.div_euclid(i128::from(self.interval_ns));
            let mut new_ahead = i128::from(tolerance) - kept;
            if cap_debt {
                // An empty bucket: the burst (tolerance + one interval) is owed.
                new_ahead = new_ahead.min(i128::from(tolerance) + i128::from(interval));
            }
            self.tat = add_ns(now, new_ahead);
        }
        // A full bucket stays full (and keeps any idle credit in time).
        self.interval_ns = interval;
        self.tolerance_ns = tolerance;
    }

    /// Empties the bucket at `now` (keeps any larger debt): after a 429 the
    /// provider's own bucket is empty, so ours must not release a burst.
    pub fn drain(&mut self, now: Instant) {
        self.cap_available(0, now);
    }

    /// Grants nothing before `now + for_`, and then one token at a time at
    /// the rate (no burst), keeping any larger debt.
    pub fn hold(&mut self, now: Instant, for_: Duration) {
        let ahead = i128::from(self.tolerance_ns)
            .saturating_add(i128::try_from(for_.as_nanos()).unwrap_or(i128::MAX / 4));
        self.tat = self.tat.max(add_ns(now, ahead));
    }

    /// Limits the tokens available at `now` to `tokens` (what the provider
    /// says remains), keeping any larger debt.
    pub fn cap_available(&mut self, tokens: u64, now: Instant) {
        // `tokens` fit exactly when tat = now + tolerance - (tokens - 1) · interval.
        let ahead =
            i128::from(self.tolerance_ns) + i128::from(self.interval_ns) * (1 - i128::from(tokens));
        if ahead > 0 {
            self.tat = self.tat.max(add_ns(now, ahead));
        }
    }

    fn wait_ns(&self, n: u64, now: Instant) -> i128 {
        let ahead = signed_ns(self.tat, now);
        ahead + (i128::from(n) - 1) * i128::from(self.interval_ns) - i128::from(self.tolerance_ns)
    }
}

/// The tolerance giving `burst` tokens at `interval_ns`.
fn tolerance_for(interval_ns: u64, burst: u64) -> u64 {
    interval_ns.saturating_mul(burst.max(1) - 1)
}

/// The burst of `burst_seconds` at `rate`, rounded: at least one token.
pub fn burst_for(rate: f64, burst_seconds: f64) -> u64 {
    let b = (rate * burst_seconds).round();
    if b.is_finite() && b >= 1.0 {
        // Saturating float-to-int conversion.
        b as u64
    } else {
        1
    }
}

/// Nanoseconds per token for `rate` tokens per second, rounded up so the
/// enforced rate never exceeds `rate`.
pub fn interval_ns(rate: f64) -> u64 {
    let rate = if rate.is_finite() {
        rate.clamp(1.0e-9, MAX_RATE)
    } else if rate > 0.0 {
        MAX_RATE
    } else {
        1.0e-9
    };
    let ns = (NANOS_PER_SEC / rate).ceil();
    // Saturating float-to-int conversion; at least one nanosecond.
    (ns as u64).max(1)
}

/// `a - b` in signed nanoseconds.
fn signed_ns(a: Instant, b: Instant) -> i128 {
    if a >= b {
        (a - b).as_nanos() as i128
    } else {
        -((b - a).as_nanos() as i128)
    }
}

/// `t + ns` for non-negative `ns`, saturating far in the future.
fn add_ns(t: Instant, ns: i128) -> Instant {
    let ns = u64::try_from(ns.max(0)).unwrap_or(u64::MAX);
    later(t, Duration::from_nanos(ns))
}

/// `t + d`, or a century after `t` if that cannot be represented: a time
/// that far away means "not in this process's life", and must not panic.
pub(crate) fn later(t: Instant, d: Duration) -> Instant {
    let far = Duration::from_secs(100 * 365 * 24 * 3600);
    t.checked_add(d).or_else(|| t.checked_add(far)).unwrap_or(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn a_full_bucket_grants_its_burst_then_waits_exactly_one_interval() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(10.0, 3, t0);
        for _ in 0..3 {
            assert_eq!(b.try_take(1, t0), Ok(()));
        }
        assert_eq!(b.try_take(1, t0), Err(t0 + ms(100)));
        assert_eq!(
            b.try_take(1, t0 + ms(100) - Duration::from_nanos(1)),
            Err(t0 + ms(100))
        );
        assert_eq!(b.try_take(1, t0 + ms(100)), Ok(()));
        assert_eq!(b.try_take(1, t0 + ms(100)), Err(t0 + ms(200)));
    }

    #[test]
    fn a_long_idle_period_refills_only_the_burst() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(10.0, 2, t0);
        let later = t0 + Duration::from_secs(3600);
        assert_eq!(b.try_take(1, later), Ok(()));
        assert_eq!(b.try_take(1, later), Ok(()));
        assert!(b.try_take(1, later).is_err());
    }

    #[test]
    fn an_oversized_request_waits_for_its_excess_then_leaves_debt() {
        let t0 = Instant::now();
        // 100 tokens/s, burst 10: 50 tokens need 40 more than the burst.
        let mut b = TokenBucket::new(100.0, 10, t0);
        assert_eq!(b.check(50, t0), Err(t0 + ms(400)));
        assert_eq!(b.try_take(50, t0 + ms(400)), Ok(()));
        // Debt of 50 tokens: the next single token after 410 ms more.
        assert_eq!(b.check(1, t0 + ms(400)), Err(t0 + ms(810)));
    }

    #[test]
    fn a_rate_change_keeps_the_tokens_available() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(10.0, 1, t0);
        b.take(1, t0);
        assert_eq!(b.check(1, t0), Err(t0 + ms(100)));
        b.set_rate(5.0, 1, t0);
        assert_eq!(b.check(1, t0), Err(t0 + ms(200)));
        b.set_rate(20.0, 1, t0 + ms(100));
        // 100 ms of a 200 ms debt left = half a token = 25 ms at 20/s.
        assert_eq!(b.check(1, t0 + ms(100)), Err(t0 + ms(125)));
        // A larger burst adds empty room, not tokens.
        b.set_rate(20.0, 3, t0 + ms(100));
        assert_eq!(b.burst(), 3);
        assert_eq!(b.check(1, t0 + ms(100)), Err(t0 + ms(125)));
        // A smaller burst clamps a full bucket.
        let mut b = TokenBucket::new(10.0, 5, t0);
        b.set_rate(10.0, 2, t0);
        assert_eq!(b.try_take(2, t0), Ok(()));
        assert!(b.check(1, t0).is_err());
    }

    #[test]
    fn a_spent_burst_is_not_carried_as_debt_but_an_oversized_grant_is_unless_capped() {
        let t0 = Instant::now();
        // 100 tokens at 1000/s, then the rate drops to 10/s: the bucket is
        // empty, not 100 tokens in debt.
        let mut b = TokenBucket::new(1000.0, 100, t0);
        b.take(100, t0);
        b.set_rate_tolerance(10.0, Duration::ZERO, t0, false);
        assert_eq!(b.check(1, t0), Err(t0 + ms(100)));
        // One grant of 1000 tokens leaves 990 in debt; kept, the next token
        // comes after 991 intervals of 10/s; capped, after one.
        let mut b = TokenBucket::new(1000.0, 10, t0);
        b.take(1000, t0);
        let mut kept = b.clone();
        kept.set_rate_tolerance(10.0, Duration::ZERO, t0, false);
        assert_eq!(kept.check(1, t0), Err(t0 + ms(99_100)));
        b.set_rate_tolerance(10.0, Duration::ZERO, t0, true);
        assert_eq!(b.check(1, t0), Err(t0 + ms(100)));
    }

    #[test]
    fn drain_and_cap_leave_no_burst() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(10.0, 5, t0);
        b.drain(t0);
        assert_eq!(b.check(1, t0), Err(t0 + ms(100)));
        let mut b = TokenBucket::new(10.0, 5, t0);
        b.cap_available(2, t0);
        assert_eq!(b.try_take(1, t0), Ok(()));
        assert_eq!(b.try_take(1, t0), Ok(()));
        assert!(b.try_take(1, t0).is_err());
        assert!((b.available(t0) - 0.0).abs() < 1e-9);
    }

    #[test]
    fn a_hold_grants_nothing_until_it_ends_and_then_no_burst() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(10.0, 5, t0);
        b.hold(t0, ms(1_000));
        assert_eq!(b.check(1, t0), Err(t0 + ms(1_000)));
        assert_eq!(b.try_take(1, t0 + ms(1_000)), Ok(()));
        assert_eq!(b.check(1, t0 + ms(1_000)), Err(t0 + ms(1_100)));
        // A shorter hold keeps the longer one.
        b.hold(t0, ms(10));
        assert_eq!(b.check(1, t0 + ms(1_000)), Err(t0 + ms(1_100)));
        b.hold(t0, Duration::MAX);
        assert!(b.check(1, t0).is_err());
    }

    #[test]
    fn rates_round_down_and_extremes_do_not_panic() {
        let t0 = Instant::now();
        let b = TokenBucket::new(3.0, 1, t0);
        assert!(b.rate() <= 3.0 && b.rate() > 2.999_999);
        let b = TokenBucket::with_burst_seconds(10.0, 1.0, t0);
        assert_eq!((b.burst(), b.tolerance()), (10, ms(900)));
        for r in [0.0, -1.0, f64::NAN, f64::INFINITY, 1e300, 1e-300] {
            let mut b = TokenBucket::new(r, 0, t0);
            let _ = b.try_take(u64::MAX, t0);
            let _ = b.try_take(1, t0);
            b.set_rate(r, u64::MAX, t0);
            b.set_rate_tolerance(r, Duration::MAX, t0, true);
            b.drain(t0);
            let _ = b.check(u64::MAX, t0);
        }
        assert_eq!(burst_for(f64::NAN, 1.0), 1);
        assert_eq!(burst_for(2.4, 1.0), 2);
        assert_eq!(burst_for(0.2, 1.0), 1);
    }
}
