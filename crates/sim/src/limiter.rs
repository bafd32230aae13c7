//! Rate limits: token buckets per key, sans-I/O (every call takes `now`,
//! the time since the simulator started), so tests step time exactly.
//!
//! A bucket refills continuously at `rate` tokens per second up to its
//! capacity (`rate × burst`, at least 1). A request is admitted when every
//! configured bucket of its key holds its cost — one token for the request
//! buckets, the reply's total tokens for the token bucket — and then takes it
//! from all of them; a rejected request takes nothing and is told how long
//! until it would be admitted. A cost larger than the capacity is admitted
//! once the bucket is full and leaves it in debt, so no request is refused
//! forever.

use std::collections::HashMap;
use std::time::Duration;

use crate::config::LimitsConfig;

/// Slack in token comparisons, so that waiting exactly the advertised time
/// always suffices despite floating-point rounding.
const EPSILON: f64 = 1e-9;

/// One token bucket: its level as of `updated`.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct TokenBucket {
    level: f64,
    updated: Duration,
}

/// The shape of a bucket, from the configuration of the moment.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Rate {
    /// Tokens added per second.
    pub(crate) per_second: f64,
    /// Most tokens the bucket holds.
    pub(crate) capacity: f64,
}

impl Rate {
    /// A rate of `per_second` holding `burst` worth of refill (at least 1).
    pub(crate) fn new(per_second: f64, burst: Duration) -> Self {
        Rate {
            per_second,
            capacity: (per_second * burst.as_secs_f64()).max(1.0),
        }
    }
}

impl TokenBucket {
    /// A full bucket.
    pub(crate) fn full(rate: Rate, now: Duration) -> Self {
        TokenBucket {
            level: rate.capacity,
            updated: now,
        }
    }

    /// Brings the level up to `now` (and down to a capacity that shrank).
    pub(crate) fn refill(&mut self, now: Duration, rate: Rate) {
        if now > self.updated {
            let gained = rate.per_second * (now - self.updated).as_secs_f64();
            self.level += gained;
            self.updated = now;
        }
        self.level = self.level.min(rate.capacity);
    }

    /// How long until `cost` can be taken; zero when it can be now.
    pub(crate) fn wait_for(&self, cost: f64, rate: Rate) -> Duration {
        let need = cost.min(rate.capacity);
        let missing = need - self.level;
        if missing <= EPSILON {
            Duration::ZERO
        } else {
            Duration::try_from_secs_f64(missing / rate.per_second).unwrap_or(Duration::MAX)
        }
    }

    /// Takes `cost` (the caller checked [`Self::wait_for`]).
    pub(crate) fn take(&mut self, cost: f64) {
        self.level -= cost;
    }

    /// Whole tokens left (never negative).
    pub(crate) fn remaining(&self) -> u64 {
        // A float-to-int `as` saturates; the level is at most the capacity.
        (self.level + EPSILON).floor().max(0.0) as u64
    }

    /// How long until the bucket is full again.
    pub(crate) fn time_to_full(&self, rate: Rate) -> Duration {
        let missing = (rate.capacity - self.level).max(0.0);
        Duration::try_from_secs_f64(missing / rate.per_second).unwrap_or(Duration::MAX)
    }
}

/// What a bucket reports in rate-limit headers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct BucketReport {
    /// The limit per minute.
    pub(crate) per_minute: u64,
    /// Whole tokens left.
    pub(crate) remaining: u64,
    /// Time until full.
    pub(crate) reset: Duration,
}

/// The state of a key's limits after a decision, for the response headers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct LimitStatus {
    /// The request limits (per second and per minute reported as one).
    pub(crate) requests: Option<BucketReport>,
    /// The token limit.
    pub(crate) tokens: Option<BucketReport>,
}

/// The answer to one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Decision {
    /// `None` when admitted; otherwise how long until it would be.
    pub(crate) retry_after: Option<Duration>,
    /// The key's limits after the decision.
    pub(crate) status: LimitStatus,
}

#[derive(Debug, Default)]
struct KeyBuckets {
    per_second: Option<TokenBucket>,
    per_minute: Option<TokenBucket>,
    tokens: Option<TokenBucket>,
}

/// The configured rates of the moment: `(per second, per minute, tokens)`.
struct Rates {
    per_second: Option<Rate>,
    per_minute: Option<Rate>,
    tokens: Option<Rate>,
}

impl Rates {
    fn of(limits: &LimitsConfig) -> Self {
        let make = |per_second: Option<f64>| per_second.map(|r| Rate::new(r, limits.burst));
        Rates {
            per_second: make(limits.rps),
            per_minute: make(limits.rpm.map(|r| r / 60.0)),
            tokens: make(limits.tpm.map(|r| r / 60.0)),
        }
    }
}

/// Every key's buckets. Limits come from the configuration at each call, so
/// a runtime change applies at once (a new limit starts full, a removed one
/// is forgotten, a smaller capacity trims the level).
#[derive(Debug, Default)]
pub(crate) struct Limiter {
    keys: HashMap<String, KeyBuckets>,
}

impl Limiter {
    /// Decides one request of `cost` tokens for `key` at `now`; `cost: None`
    /// only reports the key's state (for responses that skip the limits).
    pub(crate) fn check(
        &mut self,
        key: &str,
        now: Duration,
        limits: &LimitsConfig,
        cost: Option<u64>,
    ) -> Decision {
        let rates = Rates::of(limits);
        if rates.per_second.is_none() && rates.per_minute.is_none() && rates.tokens.is_none() {
            self.keys.remove(key);
            return Decision {
                retry_after: None,
                status: LimitStatus::default(),
            };
        }
        if !self.keys.contains_key(key) {
            self.keys.insert(key.to_owned(), KeyBuckets::default());
        }
        // The entry was inserted just above when it was missing.
        let Some(buckets) = self.keys.get_mut(key) else {
            return Decision {
                retry_after: None,
                status: LimitStatus::default(),
            };
        };
        let slots = [
            (&mut buckets.per_second, rates.per_second, 1.0),
            (&mut buckets.per_minute, rates.per_minute, 1.0),
            (&mut buckets.tokens, rates.tokens, cost.unwrap_or(0) as f64),
        ];
        let mut live: Vec<(&mut TokenBucket, Rate, f64)> = Vec::with_capacity(3);
        for (slot, rate, unit_cost) in slots {
            match rate {
                None => *slot = None,
                Some(rate) => {
                    let bucket = slot.get_or_insert_with(|| TokenBucket::full(rate, now));
                    bucket.refill(now, rate);
                    live.push((bucket, rate, unit_cost));
                }
            }
        }
        let mut retry_after = None;
        if cost.is_some() {
            let wait = live
                .iter()
                .map(|(bucket, rate, c)| bucket.wait_for(*c, *rate))
                .max()
                .unwrap_or(Duration::ZERO);
            if wait.is_zero() {
                for (bucket, _, c) in &mut live {
                    bucket.take(*c);
                }
            } else {
                retry_after = Some(wait);
            }
        }
        Decision {
            retry_after,
            status: status(buckets, &rates),
        }
    }

    /// Forgets every key (all buckets start full again).
    pub(crate) fn clear(&mut self) {
        self.keys.clear();
    }
}

fn status(buckets: &KeyBuckets, rates: &Rates) -> LimitStatus {
    let report = |bucket: &Option<TokenBucket>, rate: Option<Rate>| {
        bucket.as_ref().zip(rate).map(|(b, r)| BucketReport {
            per_minute: (r.per_second * 60.0).round() as u64,
            remaining: b.remaining(),
            reset: b.time_to_full(r),
        })
    };
    let second = report(&buckets.per_second, rates.per_second);
    let minute = report(&buckets.per_minute, rates.per_minute);
    // One "requests" report for both request limits: the per-minute figure
    // when there is one, and whichever bucket is emptier for the rest.
    let requests = match (second, minute) {
        (Some(s), Some(m)) => Some(BucketReport {
            per_minute: m.per_minute,
            remaining: s.remaining.min(m.remaining),
            reset: s.reset.max(m.reset),
        }),
        (s, m) => m.or(s),
    };
    LimitStatus {
        requests,
        tokens: report(&buckets.tokens, rates.tokens),
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn limits(rps: Option<f64>, rpm: Option<f64>, tpm: Option<f64>) -> LimitsConfig {
        LimitsConfig {
            rps,
            rpm,
            tpm,
            ..LimitsConfig::default()
        }
    }

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn a_burst_gets_exactly_the_capacity_then_waits_one_refill() {
        let mut limiter = Limiter::default();
        let config = limits(Some(5.0), None, None);
        let decisions: Vec<Decision> = (0..8)
            .map(|_| limiter.check("k", Duration::ZERO, &config, Some(10)))
            .collect();
        let admitted = decisions.iter().filter(|d| d.retry_after.is_none()).count();
        assert_eq!(admitted, 5);
        let rejected = decisions[7];
        assert_eq!(rejected.retry_after, Some(Duration::from_millis(200)));
        let requests = rejected.status.requests.unwrap();
        assert_eq!(requests.per_minute, 300);
        assert_eq!(requests.remaining, 0);
        assert_eq!(requests.reset, Duration::from_secs(1));
        assert!(
            limiter
                .check("k", 199 * MS, &config, Some(1))
                .retry_after
                .is_some()
        );
        assert!(
            limiter
                .check("k", 200 * MS, &config, Some(1))
                .retry_after
                .is_none()
        );
        // Another key has its own bucket.
        assert!(
            limiter
                .check("other", 200 * MS, &config, Some(1))
                .retry_after
                .is_none()
        );
    }

    #[test]
    fn rpm_and_rps_report_together() {
        let mut limiter = Limiter::default();
        let config = limits(Some(10.0), Some(120.0), None);
        // rpm 120 with a one-second burst holds two requests.
        let first = limiter.check("k", Duration::ZERO, &config, Some(0));
        let report = first.status.requests.unwrap();
        assert_eq!(report.per_minute, 120);
        assert_eq!(report.remaining, 1);
        assert_eq!(report.reset, Duration::from_millis(500));
        assert!(
            limiter
                .check("k", Duration::ZERO, &config, Some(0))
                .retry_after
                .is_none()
        );
        let third = limiter.check("k", Duration::ZERO, &config, Some(0));
        assert_eq!(third.retry_after, Some(Duration::from_millis(500)));
    }

    #[test]
    fn token_limit_charges_the_cost_and_allows_debt_when_full() {
        let mut limiter = Limiter::default();
        // 600 tokens per minute: 10 per second, a capacity of 10.
        let config = limits(None, None, Some(600.0));
        let d = limiter.check("k", Duration::ZERO, &config, Some(4));
        assert!(d.retry_after.is_none());
        assert_eq!(d.status.tokens.unwrap().remaining, 6);
        assert_eq!(d.status.requests, None);
        // 25 > capacity: waits until the bucket is full (0.4 s), then goes into debt.
        let d = limiter.check("k", Duration::ZERO, &config, Some(25));
        assert_eq!(d.retry_after, Some(Duration::from_millis(400)));
        let d = limiter.check("k", 400 * MS, &config, Some(25));
        assert!(d.retry_after.is_none());
        assert_eq!(d.status.tokens.unwrap().remaining, 0);
        assert_eq!(d.status.tokens.unwrap().reset, Duration::from_millis(2500));
        let d = limiter.check("k", 400 * MS, &config, Some(1));
        assert_eq!(d.retry_after, Some(Duration::from_millis(1600)));
    }

    #[test]
    fn runtime_changes_apply_at_once() {
        let mut limiter = Limiter::default();
        let mut admitted = |config: &LimitsConfig| {
            limiter
                .check("k", Duration::ZERO, config, Some(0))
                .retry_after
                .is_none()
        };
        let tight = limits(Some(1.0), None, None);
        assert!(admitted(&tight));
        assert!(!admitted(&tight));
        assert!(admitted(&LimitsConfig::default()));
        // The limit comes back as a fresh, full bucket.
        assert!(admitted(&tight));
        // Peeking takes nothing.
        let peek = limiter.check("k", Duration::ZERO, &tight, None);
        assert_eq!(peek.retry_after, None);
        assert_eq!(peek.status.requests.unwrap().remaining, 0);
        limiter.clear();
        assert!(
            limiter
                .check("k", Duration::ZERO, &tight, Some(0))
                .retry_after
                .is_none()
        );
    }

    #[derive(Clone, Debug)]
    enum Step {
        Advance(u64),
        Take(u64),
    }

    fn steps() -> impl Strategy<Value = Vec<Step>> {
        prop::collection::vec(
            prop_oneof![
                (0u64..3_000).prop_map(Step::Advance),
                (0u64..40).prop_map(Step::Take),
            ],
            1..200,
        )
    }

    proptest! {
        /// Over any run, what a bucket lets through never exceeds its
        /// capacity plus what it refilled, and its level never exceeds
        /// the capacity.
        #[test]
        fn bucket_never_admits_more_than_capacity_plus_refill(
            per_second in 0.5f64..50.0,
            burst_ms in 1u64..5_000,
            steps in steps(),
        ) {
            let rate = Rate::new(per_second, Duration::from_millis(burst_ms));
            let mut bucket = TokenBucket::full(rate, Duration::ZERO);
            let mut now = Duration::ZERO;
            let mut admitted = 0.0;
            for step in steps {
                match step {
                    Step::Advance(ms) => now += Duration::from_millis(ms),
                    Step::Take(cost) => {
                        bucket.refill(now, rate);
                        prop_assert!(bucket.level <= rate.capacity + EPSILON);
                        let cost = (cost as f64).min(rate.capacity);
                        if bucket.wait_for(cost, rate).is_zero() {
                            bucket.take(cost);
                            admitted += cost;
                        }
                    }
                }
            }
            let bound = rate.capacity + per_second * now.as_secs_f64() + 1e-6;
            prop_assert!(admitted <= bound, "{admitted} > {bound}");
        }

        /// The advertised wait is exact: a retry that waits it is admitted,
        /// one that comes a millisecond early is not.
        #[test]
        fn advertised_wait_is_exact(
            per_second in 0.5f64..50.0,
            burst_ms in 1u64..5_000,
            first in 0u64..60,
            second in 1u64..60,
        ) {
            let rate = Rate::new(per_second, Duration::from_millis(burst_ms));
            let mut bucket = TokenBucket::full(rate, Duration::ZERO);
            let first = (first as f64).min(rate.capacity);
            bucket.take(first);
            let wait = bucket.wait_for(second as f64, rate);
            prop_assume!(wait > Duration::from_millis(2));
            let mut early = bucket.clone();
            early.refill(wait - MS, rate);
            prop_assert!(!early.wait_for(second as f64, rate).is_zero());
            bucket.refill(wait, rate);
            prop_assert!(bucket.wait_for(second as f64, rate).is_zero());
        }

        /// N simultaneous requests against `rps` with a one-second burst:
        /// exactly min(N, ceil-free capacity) get through.
        #[test]
        fn simultaneous_burst_admits_exactly_the_capacity(rps in 1u32..200, n in 0usize..400) {
            let mut limiter = Limiter::default();
            let config = limits(Some(f64::from(rps)), None, None);
            let admitted = (0..n)
                .filter(|_| limiter.check("k", Duration::ZERO, &config, Some(1)).retry_after.is_none())
                .count();
            prop_assert_eq!(admitted, n.min(rps as usize));
        }
    }
}
