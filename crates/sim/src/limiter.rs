//! Rate limits, sans-I/O (every call takes `now`, the time since the
//! simulator started), so tests step time exactly.
//!
//! Each configured rate (`rps`, `rpm`, `tpm`) is enforced per key by a
//! [`Meter`] of the configured algorithm: a token bucket of `rate × burst`
//! refilling continuously, a fixed window of `rate × window` that empties
//! at each boundary (boundaries counted from the simulator's start), or a
//! sliding window that admits at most `rate × window` in any trailing
//! window. `rpd` is a fixed window of one day. A request is admitted when
//! every meter of its key has room for its cost — one for the request
//! meters, the reply's prompt + completion tokens for the token meter — and
//! then takes it from all of them; a rejected request takes nothing and is
//! told how long until it would be admitted. A cost larger than a meter's
//! capacity is admitted once the meter is as empty as it gets (a bucket in
//! debt, or a window's count above its capacity), so no request is refused
//! forever.
//!
//! Beside the enforcing meters each key keeps the *shown* buckets that the
//! headers of the `openai`, `anthropic` and `together` dialects describe: a
//! bucket whose capacity is the per-minute figure (per-second for
//! `together`) and that refills over that period. They take what admitted
//! requests take but never refuse anything: real providers announce
//! per-minute limits and enforce them over shorter periods.
//!
//! A hidden second client (`hidden_share`) uses that share of every meter's
//! rate continuously: a bucket refills at `(1 − share) × rate`, a window
//! holds `share × rate × time` of hidden use (since the key was first seen
//! or the window began). After `quota_after` admitted requests a key gets
//! only quota exhaustion.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use crate::config::{Algorithm, Dialect, LimitsConfig};

/// Slack in token comparisons, so that waiting exactly the advertised time
/// always suffices despite floating-point rounding.
const EPSILON: f64 = 1e-9;

/// The period of `limits.rpd`. A named constant, not a setting: a per-day
/// limit counts days, and tests step the manual clock over it.
pub(crate) const DAY: Duration = Duration::from_secs(86_400);

/// The period the shown buckets of most dialects describe.
const MINUTE: Duration = Duration::from_secs(60);

/// The period of `together`'s headers.
const SECOND: Duration = Duration::from_secs(1);

/// How a meter enforces its rate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Shape {
    /// A token bucket.
    Bucket,
    /// Fixed windows of this length from the start.
    Fixed(Duration),
    /// A trailing window of this length.
    Sliding(Duration),
}

/// One limit: its rate, capacity, hidden share and algorithm.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Limit {
    /// The full rate per second, the hidden client's share included.
    per_second: f64,
    /// The most a meter holds: `rate × burst` or `rate × window`, at least 1.
    capacity: f64,
    /// The hidden client's share of the rate, in `[0, 1)`.
    hidden: f64,
    shape: Shape,
}

impl Limit {
    /// A token bucket of `per_second × burst` (at least one), no hidden share.
    #[cfg(test)]
    pub(crate) fn bucket(per_second: f64, burst: Duration) -> Self {
        Limit {
            per_second,
            capacity: (per_second * burst.as_secs_f64()).max(1.0),
            hidden: 0.0,
            shape: Shape::Bucket,
        }
    }

    /// The limit of `per_second` under `config`'s algorithm.
    fn enforced(per_second: f64, config: &LimitsConfig) -> Self {
        let (span, shape) = match config.algorithm {
            Algorithm::Bucket => (config.burst, Shape::Bucket),
            Algorithm::FixedWindow => (config.window, Shape::Fixed(config.window)),
            Algorithm::SlidingWindow => (config.window, Shape::Sliding(config.window)),
        };
        Limit {
            per_second,
            capacity: (per_second * span.as_secs_f64()).max(1.0),
            hidden: config.hidden_share,
            shape,
        }
    }

    /// A bucket holding exactly one `period` of `per_second` (a shown bucket).
    fn shown(per_second: f64, period: Duration, hidden: f64) -> Self {
        Limit {
            per_second,
            capacity: per_second * period.as_secs_f64(),
            hidden,
            shape: Shape::Bucket,
        }
    }

    /// What a bucket gains per second once the hidden client took its share.
    fn refill(&self) -> f64 {
        self.per_second * (1.0 - self.hidden)
    }

    /// The most one request may need: a window never has more than
    /// `capacity × (1 − hidden)` free once the hidden client ran a window.
    fn need(&self, cost: f64) -> f64 {
        match self.shape {
            Shape::Bucket => cost.min(self.capacity),
            Shape::Fixed(_) | Shape::Sliding(_) => cost.min(self.capacity * (1.0 - self.hidden)),
        }
    }

    /// The hidden client's use counted by a window meter at `at`.
    fn hidden_at(&self, at: Duration, since: Duration) -> f64 {
        let span = match self.shape {
            Shape::Bucket => Duration::ZERO,
            Shape::Fixed(window) => at.saturating_sub(window_start(at, window).max(since)),
            Shape::Sliding(window) => at.saturating_sub(since).min(window),
        };
        self.hidden * self.per_second * span.as_secs_f64()
    }
}

/// The start of the fixed window that holds `at`.
fn window_start(at: Duration, window: Duration) -> Duration {
    let index = at.as_nanos() / window.as_nanos().max(1);
    from_nanos(index * window.as_nanos())
}

fn from_nanos(nanos: u128) -> Duration {
    Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
}

fn seconds(value: f64) -> Duration {
    Duration::try_from_secs_f64(value.max(0.0)).unwrap_or(Duration::MAX)
}

/// A token bucket: refills continuously up to its capacity.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct TokenBucket {
    level: f64,
    updated: Duration,
}

impl TokenBucket {
    /// A full bucket.
    pub(crate) fn full(limit: Limit, now: Duration) -> Self {
        TokenBucket {
            level: limit.capacity,
            updated: now,
        }
    }

    /// Brings the level up to `now` (and down to a capacity that shrank).
    pub(crate) fn refill(&mut self, now: Duration, limit: Limit) {
        if now > self.updated {
            self.level += limit.refill() * (now - self.updated).as_secs_f64();
            self.updated = now;
        }
        self.level = self.level.min(limit.capacity);
    }

    /// How long until `cost` can be taken; zero when it can be now.
    pub(crate) fn wait_for(&self, cost: f64, limit: Limit) -> Duration {
        let missing = limit.need(cost) - self.level;
        if missing <= EPSILON {
            Duration::ZERO
        } else {
            seconds(missing / limit.refill())
        }
    }

    /// Takes `cost` (the caller checked [`Self::wait_for`]).
    pub(crate) fn take(&mut self, cost: f64) {
        self.level -= cost;
    }

    /// How long until the bucket is full again.
    pub(crate) fn time_to_full(&self, limit: Limit) -> Duration {
        seconds((limit.capacity - self.level).max(0.0) / limit.refill())
    }
}

/// The state of one limit of one key.
#[derive(Clone, Debug)]
enum Meter {
    Bucket(TokenBucket),
    Fixed {
        /// The window whose use `used` counts.
        start: Duration,
        used: f64,
    },
    Sliding {
        /// Admitted costs and their times, oldest first, inside the window.
        entries: VecDeque<(Duration, f64)>,
        used: f64,
    },
}

/// What a meter reports for the headers.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct View {
    /// Its capacity (for a shown bucket: the per-period figure).
    pub(crate) limit: f64,
    /// Whole units left now (never negative).
    pub(crate) remaining: u64,
    /// How long until it is back to its initial state (full, or empty of
    /// this client's use).
    pub(crate) reset: Duration,
}

impl Meter {
    fn new(limit: Limit, now: Duration) -> Self {
        match limit.shape {
            Shape::Bucket => Meter::Bucket(TokenBucket::full(limit, now)),
            Shape::Fixed(window) => Meter::Fixed {
                start: window_start(now, window),
                used: 0.0,
            },
            Shape::Sliding(_) => Meter::Sliding {
                entries: VecDeque::new(),
                used: 0.0,
            },
        }
    }

    /// Whether this state belongs to `limit`'s algorithm.
    fn fits(&self, limit: Limit) -> bool {
        matches!(
            (self, limit.shape),
            (Meter::Bucket(_), Shape::Bucket)
                | (Meter::Fixed { .. }, Shape::Fixed(_))
                | (Meter::Sliding { .. }, Shape::Sliding(_))
        )
    }

    /// Brings the state to `now`: refill, a new window, expired entries.
    fn advance(&mut self, limit: Limit, now: Duration) {
        match (self, limit.shape) {
            (Meter::Bucket(bucket), _) => bucket.refill(now, limit),
            (Meter::Fixed { start, used }, Shape::Fixed(window)) => {
                let current = window_start(now, window);
                if current != *start {
                    *start = current;
                    *used = 0.0;
                }
            }
            (Meter::Sliding { entries, used }, Shape::Sliding(window)) => {
                while let Some(&(at, cost)) = entries.front() {
                    if at + window > now {
                        break;
                    }
                    entries.pop_front();
                    *used -= cost;
                }
                if entries.is_empty() {
                    *used = 0.0;
                }
            }
            // `fits` is checked before every advance.
            _ => {}
        }
    }

    /// Room left at `now` for this client (capacity − own use − hidden use).
    fn room(&self, limit: Limit, now: Duration, since: Duration) -> f64 {
        match self {
            Meter::Bucket(bucket) => bucket.level,
            Meter::Fixed { used, .. } | Meter::Sliding { used, .. } => {
                limit.capacity - used - limit.hidden_at(now, since)
            }
        }
    }

    /// How long until `cost` fits; zero when it fits now.
    fn wait_for(&self, cost: f64, limit: Limit, now: Duration, since: Duration) -> Duration {
        let need = limit.need(cost);
        if let Meter::Bucket(bucket) = self {
            return bucket.wait_for(cost, limit);
        }
        if need <= self.room(limit, now, since) + EPSILON {
            return Duration::ZERO;
        }
        match (self, limit.shape) {
            (Meter::Fixed { start, .. }, Shape::Fixed(window)) => (*start + window) - now,
            (Meter::Sliding { entries, used }, Shape::Sliding(window)) => {
                // The first expiry after which the rest, the hidden use and
                // the cost fit.
                let mut rest = *used;
                let mut last = now;
                for &(at, c) in entries {
                    rest -= c;
                    last = at + window;
                    if need <= limit.capacity - rest - limit.hidden_at(last, since) + EPSILON {
                        break;
                    }
                }
                last.saturating_sub(now)
            }
            _ => Duration::ZERO,
        }
    }

    /// Takes `cost` at `now` (the caller checked [`Self::wait_for`]).
    fn take(&mut self, cost: f64, now: Duration) {
        match self {
            Meter::Bucket(bucket) => bucket.take(cost),
            Meter::Fixed { used, .. } => *used += cost,
            Meter::Sliding { entries, used } => {
                entries.push_back((now, cost));
                *used += cost;
            }
        }
    }

    fn view(&self, limit: Limit, now: Duration, since: Duration) -> View {
        let room = self.room(limit, now, since);
        let reset = match (self, limit.shape) {
            (Meter::Bucket(bucket), _) => bucket.time_to_full(limit),
            (Meter::Fixed { start, .. }, Shape::Fixed(window)) => {
                if room < limit.capacity - EPSILON {
                    (*start + window).saturating_sub(now)
                } else {
                    Duration::ZERO
                }
            }
            (Meter::Sliding { entries, .. }, Shape::Sliding(window)) => entries
                .back()
                .map_or(Duration::ZERO, |&(at, _)| (at + window).saturating_sub(now)),
            _ => Duration::ZERO,
        };
        View {
            limit: limit.capacity,
            // A float-to-int `as` saturates; room is at most the capacity.
            remaining: (room + EPSILON).floor().max(0.0) as u64,
            reset,
        }
    }
}

/// Which limit refused a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Binding {
    /// `rps` or `rpm`.
    Requests,
    /// `tpm`.
    Tokens,
    /// `rpd`.
    Day,
}

/// The answer to one request.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Verdict {
    /// Admitted; its cost was taken.
    Admitted,
    /// Over a rate limit: admitted after `wait` at the earliest.
    Limited {
        /// How long until it would be admitted.
        wait: Duration,
        /// The limit that needs the longest wait.
        by: Binding,
    },
    /// The key used up its `quota_after`.
    QuotaExhausted,
}

/// The state of a key's limits after a decision, for the response headers
/// of every dialect.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub(crate) struct LimitStatus {
    /// The shown request bucket (per minute, or per second for `together`).
    pub(crate) shown_requests: Option<View>,
    /// The shown token bucket.
    pub(crate) shown_tokens: Option<View>,
    /// The enforcing request meter with the least room (`rps` or `rpm`).
    pub(crate) requests: Option<View>,
    /// The enforcing token meter.
    pub(crate) tokens: Option<View>,
    /// The day's request count (`rpd`).
    pub(crate) day: Option<View>,
}

/// The answer to one request and the key's state after it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Decision {
    pub(crate) verdict: Verdict,
    pub(crate) status: LimitStatus,
}

/// The limits in force, from the configuration of the moment.
struct Limits {
    second: Option<Limit>,
    minute: Option<Limit>,
    tokens: Option<Limit>,
    day: Option<Limit>,
    shown_requests: Option<Limit>,
    shown_tokens: Option<Limit>,
    /// The hidden client's requests per second (its share of the tightest
    /// request rate).
    hidden_rate: f64,
}

impl Limits {
    fn of(config: &LimitsConfig) -> Self {
        let hidden = config.hidden_share;
        let rps = config.rps;
        let rpm = config.rpm.map(|r| r / 60.0);
        let tps = config.tpm.map(|r| r / 60.0);
        let day = config.rpd.map(|rpd| Limit {
            per_second: rpd / DAY.as_secs_f64(),
            capacity: rpd,
            hidden,
            shape: Shape::Fixed(DAY),
        });
        // The shown figure is the configured one of the shown period when
        // there is one (rpm for a minute, rps for a second).
        let (period, shown_rate) = match config.dialect {
            Dialect::Together => (SECOND, rps.or(rpm)),
            _ => (MINUTE, rpm.or(rps)),
        };
        let tightest = match (rps, rpm) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let hidden_rate = tightest.or(day.map(|d| d.per_second)).unwrap_or(0.0) * hidden;
        Limits {
            second: rps.map(|r| Limit::enforced(r, config)),
            minute: rpm.map(|r| Limit::enforced(r, config)),
            tokens: tps.map(|r| Limit::enforced(r, config)),
            day,
            shown_requests: shown_rate.map(|r| Limit::shown(r, period, hidden)),
            shown_tokens: tps.map(|r| Limit::shown(r, period, hidden)),
            hidden_rate,
        }
    }

    fn none(&self) -> bool {
        self.second.is_none()
            && self.minute.is_none()
            && self.tokens.is_none()
            && self.day.is_none()
    }
}

/// One key's meters.
#[derive(Debug)]
struct KeyState {
    /// When the key was first seen (the hidden client starts then).
    since: Duration,
    second: Option<Meter>,
    minute: Option<Meter>,
    tokens: Option<Meter>,
    day: Option<Meter>,
    shown_requests: Option<Meter>,
    shown_tokens: Option<Meter>,
    /// Requests admitted, for `quota_after`.
    admitted: u64,
    /// Requests the hidden client sent until `hidden_updated`.
    hidden: f64,
    hidden_updated: Duration,
}

impl KeyState {
    fn new(now: Duration) -> Self {
        KeyState {
            since: now,
            second: None,
            minute: None,
            tokens: None,
            day: None,
            shown_requests: None,
            shown_tokens: None,
            admitted: 0,
            hidden: 0.0,
            hidden_updated: now,
        }
    }

    /// Every slot with its limit of the moment.
    fn slots<'a>(&'a mut self, limits: &Limits) -> [(&'a mut Option<Meter>, Option<Limit>); 6] {
        [
            (&mut self.second, limits.second),
            (&mut self.minute, limits.minute),
            (&mut self.tokens, limits.tokens),
            (&mut self.day, limits.day),
            (&mut self.shown_requests, limits.shown_requests),
            (&mut self.shown_tokens, limits.shown_tokens),
        ]
    }

    /// Brings every meter to `now` under `limits` (a new limit starts
    /// fresh, a removed one is forgotten, a changed algorithm restarts).
    fn sync(&mut self, limits: &Limits, now: Duration) {
        self.hidden += limits.hidden_rate * now.saturating_sub(self.hidden_updated).as_secs_f64();
        self.hidden_updated = self.hidden_updated.max(now);
        for (slot, limit) in self.slots(limits) {
            match limit {
                None => *slot = None,
                Some(limit) => {
                    if !slot.as_ref().is_some_and(|m| m.fits(limit)) {
                        *slot = Some(Meter::new(limit, now));
                    }
                    if let Some(meter) = slot {
                        meter.advance(limit, now);
                    }
                }
            }
        }
    }

    fn status(&self, limits: &Limits, now: Duration) -> LimitStatus {
        let view = |meter: &Option<Meter>, limit: Option<Limit>| {
            meter
                .as_ref()
                .zip(limit)
                .map(|(m, l)| m.view(l, now, self.since))
        };
        let second = view(&self.second, limits.second);
        let minute = view(&self.minute, limits.minute);
        // The request meter with the least room (the smaller one on a tie).
        let requests = match (second, minute) {
            (Some(s), Some(m)) => Some(if (m.remaining, m.limit) < (s.remaining, s.limit) {
                m
            } else {
                s
            }),
            (s, m) => s.or(m),
        };
        LimitStatus {
            shown_requests: view(&self.shown_requests, limits.shown_requests),
            shown_tokens: view(&self.shown_tokens, limits.shown_tokens),
            requests,
            tokens: view(&self.tokens, limits.tokens),
            day: view(&self.day, limits.day),
        }
    }
}

/// Every key's limits. Limits come from the configuration at each call, so
/// a runtime change applies at once.
#[derive(Debug, Default)]
pub(crate) struct Limiter {
    keys: HashMap<String, KeyState>,
}

impl Limiter {
    /// Decides one request of `cost` tokens for `key` at `now`.
    pub(crate) fn check(
        &mut self,
        key: &str,
        now: Duration,
        config: &LimitsConfig,
        cost: u64,
    ) -> Decision {
        let limits = Limits::of(config);
        if limits.none() && config.quota_after.is_none() {
            self.keys.remove(key);
            return Decision {
                verdict: Verdict::Admitted,
                status: LimitStatus::default(),
            };
        }
        // Look up before inserting, so a known key costs no allocation.
        if !self.keys.contains_key(key) {
            self.keys.insert(key.to_owned(), KeyState::new(now));
        }
        let Some(state) = self.keys.get_mut(key) else {
            // Inserted just above.
            return Decision {
                verdict: Verdict::Admitted,
                status: LimitStatus::default(),
            };
        };
        state.sync(&limits, now);
        let verdict = if config.quota_after.is_some_and(|n| state.admitted >= n) {
            Verdict::QuotaExhausted
        } else {
            let cost = cost as f64;
            let since = state.since;
            let enforced = [
                (&state.second, limits.second, 1.0, Binding::Requests),
                (&state.minute, limits.minute, 1.0, Binding::Requests),
                (&state.tokens, limits.tokens, cost, Binding::Tokens),
                (&state.day, limits.day, 1.0, Binding::Day),
            ];
            let mut worst: Option<(Duration, Binding)> = None;
            for (meter, limit, c, binding) in enforced {
                if let (Some(meter), Some(limit)) = (meter, limit) {
                    let wait = meter.wait_for(c, limit, now, since);
                    if !wait.is_zero() && worst.is_none_or(|(w, _)| wait > w) {
                        worst = Some((wait, binding));
                    }
                }
            }
            match worst {
                Some((wait, by)) => Verdict::Limited { wait, by },
                None => {
                    let costs = [1.0, 1.0, cost, 1.0, 1.0, cost];
                    for ((slot, _), c) in state.slots(&limits).into_iter().zip(costs) {
                        if let Some(meter) = slot {
                            meter.take(c, now);
                        }
                    }
                    state.admitted += 1;
                    Verdict::Admitted
                }
            }
        };
        Decision {
            verdict,
            status: state.status(&limits, now),
        }
    }

    /// Requests the hidden client sent on every key until `now`.
    pub(crate) fn hidden(&self, now: Duration, config: &LimitsConfig) -> u64 {
        let rate = Limits::of(config).hidden_rate;
        let total: f64 = self
            .keys
            .values()
            .map(|k| k.hidden + rate * now.saturating_sub(k.hidden_updated).as_secs_f64())
            .sum();
        // A float-to-int `as` saturates.
        (total + EPSILON).floor() as u64
    }

    /// Forgets every key (all limits start fresh, quotas unused).
    pub(crate) fn clear(&mut self) {
        self.keys.clear();
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::config::QuotaStyle;

    const MS: Duration = Duration::from_millis(1);
    const S: Duration = Duration::from_secs(1);

    fn limits(rps: Option<f64>, rpm: Option<f64>, tpm: Option<f64>) -> LimitsConfig {
        LimitsConfig {
            rps,
            rpm,
            tpm,
            ..LimitsConfig::default()
        }
    }

    fn windowed(algorithm: Algorithm, rps: f64, window: Duration) -> LimitsConfig {
        LimitsConfig {
            rps: Some(rps),
            algorithm,
            window,
            ..LimitsConfig::default()
        }
    }

    fn admitted(d: &Decision) -> bool {
        d.verdict == Verdict::Admitted
    }

    fn wait(d: &Decision) -> Duration {
        match d.verdict {
            Verdict::Limited { wait, .. } => wait,
            other => panic!("not limited: {other:?}"),
        }
    }

    /// Admits `n` requests of `cost` at `now` and returns the last decision.
    fn send(limiter: &mut Limiter, config: &LimitsConfig, now: Duration, n: usize) -> Decision {
        let mut last = None;
        for _ in 0..n {
            let d = limiter.check("k", now, config, 1);
            assert!(admitted(&d), "{d:?}");
            last = Some(d);
        }
        last.unwrap()
    }

    #[test]
    fn a_burst_gets_exactly_the_capacity_then_waits_one_refill() {
        let mut limiter = Limiter::default();
        let config = limits(Some(5.0), None, None);
        let decisions: Vec<Decision> = (0..8)
            .map(|_| limiter.check("k", Duration::ZERO, &config, 10))
            .collect();
        assert_eq!(decisions.iter().filter(|d| admitted(d)).count(), 5);
        let rejected = decisions[7];
        assert_eq!(
            rejected.verdict,
            Verdict::Limited {
                wait: 200 * MS,
                by: Binding::Requests
            }
        );
        let requests = rejected.status.requests.unwrap();
        assert_eq!((requests.limit, requests.remaining), (5.0, 0));
        assert_eq!(requests.reset, S);
        assert!(!admitted(&limiter.check("k", 199 * MS, &config, 1)));
        assert!(admitted(&limiter.check("k", 200 * MS, &config, 1)));
        // Another key has its own limits.
        assert!(admitted(&limiter.check("other", 200 * MS, &config, 1)));
    }

    #[test]
    fn the_shown_bucket_is_a_per_minute_bucket_beside_the_enforcing_one() {
        let mut limiter = Limiter::default();
        // 3000 a minute is 50 a second: one request is refilled in 20 ms.
        let config = limits(None, Some(3000.0), Some(600_000.0));
        let d = limiter.check("k", Duration::ZERO, &config, 1000);
        let shown = d.status.shown_requests.unwrap();
        assert_eq!(
            (shown.limit, shown.remaining, shown.reset),
            (3000.0, 2999, 20 * MS)
        );
        let tokens = d.status.shown_tokens.unwrap();
        assert_eq!((tokens.limit, tokens.remaining), (600_000.0, 599_000));
        assert_eq!(tokens.reset, 100 * MS);
        // The enforcing bucket holds one second: 50, of which 49 are left.
        let enforcing = d.status.requests.unwrap();
        assert_eq!((enforcing.limit, enforcing.remaining), (50.0, 49));
        assert_eq!(enforcing.reset, 20 * MS);
        // 49 more empty the enforcing bucket; the shown one still has 2950.
        let d = send(&mut limiter, &config, Duration::ZERO, 49);
        assert_eq!(d.status.requests.unwrap().remaining, 0);
        assert_eq!(d.status.shown_requests.unwrap().remaining, 2950);
        assert_eq!(d.status.shown_requests.unwrap().reset, S);
        assert_eq!(
            wait(&limiter.check("k", Duration::ZERO, &config, 1)),
            20 * MS
        );
    }

    #[test]
    fn with_rps_alone_the_shown_limit_is_sixty_times_it_and_together_shows_a_second() {
        let mut limiter = Limiter::default();
        let config = limits(Some(20.0), None, None);
        let d = limiter.check("k", Duration::ZERO, &config, 1);
        let shown = d.status.shown_requests.unwrap();
        assert_eq!(
            (shown.limit, shown.remaining, shown.reset),
            (1200.0, 1199, 50 * MS)
        );
        // The `bucket` dialect reports the enforcing bucket: 20, 19 left, 50 ms.
        let enforcing = d.status.requests.unwrap();
        assert_eq!(
            (enforcing.limit, enforcing.remaining, enforcing.reset),
            (20.0, 19, 50 * MS)
        );
        let together = LimitsConfig {
            dialect: Dialect::Together,
            tpm: Some(6000.0),
            ..config
        };
        let d = limiter.check("t", Duration::ZERO, &together, 30);
        let shown = d.status.shown_requests.unwrap();
        assert_eq!(
            (shown.limit, shown.remaining, shown.reset),
            (20.0, 19, 50 * MS)
        );
        let tokens = d.status.shown_tokens.unwrap();
        assert_eq!((tokens.limit, tokens.remaining), (100.0, 70));
    }

    #[test]
    fn rpm_and_rps_report_the_emptier_enforcing_meter() {
        let mut limiter = Limiter::default();
        let config = limits(Some(10.0), Some(120.0), None);
        // rpm 120 with a one-second burst holds two requests.
        let first = limiter.check("k", Duration::ZERO, &config, 0);
        let report = first.status.requests.unwrap();
        assert_eq!((report.limit, report.remaining), (2.0, 1));
        assert_eq!(report.reset, 500 * MS);
        assert_eq!(first.status.shown_requests.unwrap().limit, 120.0);
        assert!(admitted(&limiter.check("k", Duration::ZERO, &config, 0)));
        let third = limiter.check("k", Duration::ZERO, &config, 0);
        assert_eq!(wait(&third), 500 * MS);
    }

    #[test]
    fn token_limit_charges_the_cost_allows_debt_when_full_and_names_tokens() {
        let mut limiter = Limiter::default();
        // 600 tokens per minute: 10 per second, a capacity of 10.
        let config = limits(None, None, Some(600.0));
        let d = limiter.check("k", Duration::ZERO, &config, 4);
        assert!(admitted(&d));
        assert_eq!(d.status.tokens.unwrap().remaining, 6);
        assert_eq!(d.status.requests, None);
        // 25 > capacity: waits until the bucket is full (0.4 s), then goes into debt.
        let d = limiter.check("k", Duration::ZERO, &config, 25);
        assert_eq!(
            d.verdict,
            Verdict::Limited {
                wait: 400 * MS,
                by: Binding::Tokens
            }
        );
        let d = limiter.check("k", 400 * MS, &config, 25);
        assert!(admitted(&d));
        assert_eq!(d.status.tokens.unwrap().remaining, 0);
        assert_eq!(d.status.tokens.unwrap().reset, 2500 * MS);
        assert_eq!(wait(&limiter.check("k", 400 * MS, &config, 1)), 1600 * MS);
    }

    #[test]
    fn big_prompts_bind_on_tokens_before_requests() {
        let mut limiter = Limiter::default();
        // 40,000 TPM with a minute of burst; 60 RPM would allow a request a second.
        let config = LimitsConfig {
            burst: Duration::from_secs(60),
            ..limits(None, Some(600.0), Some(40_000.0))
        };
        let mut sent = 0;
        while admitted(&limiter.check("k", Duration::ZERO, &config, 4_100)) {
            sent += 1;
        }
        assert_eq!(sent, 9);
        let d = limiter.check("k", Duration::ZERO, &config, 4_100);
        let Verdict::Limited { by, .. } = d.verdict else {
            panic!("{d:?}")
        };
        assert_eq!(by, Binding::Tokens);
    }

    #[test]
    fn fixed_windows_reset_at_each_boundary_from_the_start() {
        let mut limiter = Limiter::default();
        // 2 a second over 10 s windows: 20 per window.
        let config = windowed(Algorithm::FixedWindow, 2.0, 10 * S);
        let d = send(&mut limiter, &config, 3 * S, 20);
        let view = d.status.requests.unwrap();
        assert_eq!((view.limit, view.remaining, view.reset), (20.0, 0, 7 * S));
        let d = limiter.check("k", 3 * S, &config, 1);
        assert_eq!(
            d.verdict,
            Verdict::Limited {
                wait: 7 * S,
                by: Binding::Requests
            }
        );
        assert!(!admitted(&limiter.check("k", 10 * S - MS, &config, 1)));
        let d = send(&mut limiter, &config, 10 * S, 20);
        assert_eq!(d.status.requests.unwrap().reset, 10 * S);
        // The whole next window's worth again right after the boundary.
        assert!(!admitted(&limiter.check("k", 20 * S - MS, &config, 1)));
        send(&mut limiter, &config, 20 * S, 20);
        // A key that used one request is back to its initial state at the
        // boundary.
        let d = limiter.check("other", 25 * S, &config, 1);
        assert_eq!(d.status.requests.unwrap().reset, 5 * S);
    }

    #[test]
    fn sliding_windows_count_any_trailing_window() {
        let mut limiter = Limiter::default();
        // 1 a second over 10 s: at most 10 in any 10 s.
        let config = windowed(Algorithm::SlidingWindow, 1.0, 10 * S);
        send(&mut limiter, &config, Duration::ZERO, 4);
        let d = send(&mut limiter, &config, 5 * S, 6);
        let view = d.status.requests.unwrap();
        assert_eq!((view.remaining, view.reset), (0, 10 * S));
        // The four of t = 0 leave at t = 10 s exactly, not before.
        assert_eq!(wait(&limiter.check("k", 5 * S, &config, 1)), 5 * S);
        assert!(!admitted(&limiter.check("k", 10 * S - MS, &config, 1)));
        let d = send(&mut limiter, &config, 10 * S, 4);
        assert_eq!(d.status.requests.unwrap().remaining, 0);
        // Now the six of t = 5 s are the oldest.
        assert_eq!(wait(&limiter.check("k", 12 * S, &config, 1)), 3 * S);
        // A fixed window would have let 10 more through at t = 10 s; the
        // sliding one let 4.
    }

    #[test]
    fn a_sliding_token_window_admits_an_oversized_cost_when_empty() {
        let mut limiter = Limiter::default();
        let config = LimitsConfig {
            tpm: Some(600.0),
            algorithm: Algorithm::SlidingWindow,
            window: 10 * S,
            ..LimitsConfig::default()
        };
        // 100 tokens per 10 s; 150 waits for an empty window and then passes.
        assert!(admitted(&limiter.check("k", Duration::ZERO, &config, 30)));
        assert_eq!(wait(&limiter.check("k", 2 * S, &config, 150)), 8 * S);
        assert!(admitted(&limiter.check("k", 10 * S, &config, 150)));
        assert_eq!(wait(&limiter.check("k", 10 * S, &config, 1)), 10 * S);
    }

    #[test]
    fn the_hidden_client_takes_its_share_of_a_bucket() {
        let mut limiter = Limiter::default();
        let config = LimitsConfig {
            hidden_share: 0.5,
            ..limits(Some(10.0), None, None)
        };
        send(&mut limiter, &config, Duration::ZERO, 10);
        // The bucket refills at 5 a second instead of 10.
        let d = limiter.check("k", Duration::ZERO, &config, 1);
        assert_eq!(wait(&d), 200 * MS);
        let d = send(&mut limiter, &config, S, 5);
        assert_eq!(d.status.requests.unwrap().remaining, 0);
        // The shown per-minute bucket (600) also refills at half speed.
        let shown = d.status.shown_requests.unwrap();
        assert_eq!(shown.remaining, 600 - 15 + 5);
        assert_eq!(shown.reset, 2 * S);
        // The hidden client sent 5 a second for the two seconds.
        assert_eq!(limiter.hidden(2 * S, &config), 10);
    }

    #[test]
    fn the_hidden_client_fills_windows_as_time_passes() {
        let mut limiter = Limiter::default();
        let config = LimitsConfig {
            hidden_share: 0.25,
            ..windowed(Algorithm::FixedWindow, 2.0, 10 * S)
        };
        // The key appears at 2 s; by 6 s the hidden client used 0.5 × 4 = 2.
        assert!(admitted(&limiter.check("k", 2 * S, &config, 1)));
        let d = send(&mut limiter, &config, 6 * S, 16);
        assert_eq!(d.status.requests.unwrap().remaining, 1);
        assert_eq!(wait(&limiter.check("k", 8 * S, &config, 1)), 2 * S);
        // A new window starts empty of both clients.
        let d = send(&mut limiter, &config, 10 * S, 1);
        assert_eq!(d.status.requests.unwrap().remaining, 19);
        // Sliding: the hidden use reaches share × capacity and stays there.
        let sliding = LimitsConfig {
            hidden_share: 0.25,
            ..windowed(Algorithm::SlidingWindow, 2.0, 10 * S)
        };
        let mut limiter = Limiter::default();
        let d = send(&mut limiter, &sliding, Duration::ZERO, 1);
        assert_eq!(d.status.requests.unwrap().remaining, 19);
        let d = send(&mut limiter, &sliding, 30 * S, 14);
        assert_eq!(d.status.requests.unwrap().remaining, 1);
        send(&mut limiter, &sliding, 30 * S, 1);
        assert_eq!(wait(&limiter.check("k", 30 * S, &sliding, 1)), 10 * S);
        assert_eq!(limiter.hidden(30 * S, &sliding), 15);
    }

    #[test]
    fn quota_after_refuses_every_later_request_until_raised() {
        let mut limiter = Limiter::default();
        let mut config = LimitsConfig {
            quota_after: Some(3),
            quota_style: QuotaStyle::Gemini,
            ..LimitsConfig::default()
        };
        send(&mut limiter, &config, Duration::ZERO, 3);
        for later in [Duration::ZERO, 60 * S, DAY * 2] {
            let d = limiter.check("k", later, &config, 1);
            assert_eq!(d.verdict, Verdict::QuotaExhausted);
        }
        assert!(admitted(&limiter.check(
            "other",
            Duration::ZERO,
            &config,
            1
        )));
        // "k" may send two more once the quota is raised; rate-limited
        // requests do not use it.
        config.rps = Some(1.0);
        config.quota_after = Some(5);
        assert!(admitted(&limiter.check("k", 10 * S, &config, 1)));
        assert!(!admitted(&limiter.check("k", 10 * S, &config, 1)));
        assert!(admitted(&limiter.check("k", 11 * S, &config, 1)));
        let d = limiter.check("k", 12 * S, &config, 1);
        assert_eq!(d.verdict, Verdict::QuotaExhausted);
        limiter.clear();
        assert!(admitted(&limiter.check("k", 12 * S, &config, 1)));
    }

    #[test]
    fn rpd_counts_fixed_days_from_the_start() {
        let mut limiter = Limiter::default();
        let config = LimitsConfig {
            rpd: Some(5.0),
            rps: Some(100.0),
            ..LimitsConfig::default()
        };
        let d = send(&mut limiter, &config, 3600 * S, 5);
        let day = d.status.day.unwrap();
        assert_eq!(
            (day.limit, day.remaining, day.reset),
            (5.0, 0, DAY - 3600 * S)
        );
        let d = limiter.check("k", 3600 * S, &config, 1);
        assert_eq!(
            d.verdict,
            Verdict::Limited {
                wait: DAY - 3600 * S,
                by: Binding::Day
            }
        );
        assert!(!admitted(&limiter.check("k", DAY - MS, &config, 1)));
        let d = send(&mut limiter, &config, DAY, 1);
        assert_eq!(d.status.day.unwrap().remaining, 4);
    }

    #[test]
    fn runtime_changes_apply_at_once() {
        let mut limiter = Limiter::default();
        let mut ok =
            |config: &LimitsConfig, now: Duration| admitted(&limiter.check("k", now, config, 0));
        let tight = limits(Some(1.0), None, None);
        assert!(ok(&tight, Duration::ZERO));
        assert!(!ok(&tight, Duration::ZERO));
        assert!(ok(&LimitsConfig::default(), Duration::ZERO));
        // The limit comes back fresh.
        assert!(ok(&tight, Duration::ZERO));
        // Switching the algorithm restarts the meter.
        let window = windowed(Algorithm::FixedWindow, 1.0, 10 * S);
        for _ in 0..10 {
            assert!(ok(&window, Duration::ZERO));
        }
        assert!(!ok(&window, Duration::ZERO));
        limiter.clear();
        assert!(admitted(&limiter.check("k", Duration::ZERO, &tight, 0)));
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

    fn algorithm() -> impl Strategy<Value = Algorithm> {
        prop_oneof![
            Just(Algorithm::Bucket),
            Just(Algorithm::FixedWindow),
            Just(Algorithm::SlidingWindow),
        ]
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
            let limit = Limit::bucket(per_second, Duration::from_millis(burst_ms));
            let mut bucket = TokenBucket::full(limit, Duration::ZERO);
            let mut now = Duration::ZERO;
            let mut admitted = 0.0;
            for step in steps {
                match step {
                    Step::Advance(ms) => now += Duration::from_millis(ms),
                    Step::Take(cost) => {
                        bucket.refill(now, limit);
                        prop_assert!(bucket.level <= limit.capacity + EPSILON);
                        let cost = (cost as f64).min(limit.capacity);
                        if bucket.wait_for(cost, limit).is_zero() {
                            bucket.take(cost);
                            admitted += cost;
                        }
                    }
                }
            }
            let bound = limit.capacity + per_second * now.as_secs_f64() + 1e-6;
            prop_assert!(admitted <= bound, "{admitted} > {bound}");
        }

        /// The advertised wait is exact for every algorithm and any hidden
        /// share: a retry that waits it is admitted, one that comes a
        /// millisecond early is not.
        #[test]
        fn advertised_wait_is_exact(
            algorithm in algorithm(),
            per_second in 0.5f64..50.0,
            window_ms in 100u64..20_000,
            hidden in 0.0f64..0.9,
            steps in steps(),
        ) {
            let config = LimitsConfig {
                rps: Some(per_second),
                algorithm,
                window: Duration::from_millis(window_ms),
                burst: Duration::from_millis(window_ms),
                hidden_share: hidden,
                ..LimitsConfig::default()
            };
            let mut limiter = Limiter::default();
            let mut now = Duration::ZERO;
            for step in steps {
                match step {
                    Step::Advance(ms) => now += Duration::from_millis(ms),
                    Step::Take(_) => {
                        let d = limiter.check("k", now, &config, 1);
                        if let Verdict::Limited { wait, .. } = d.verdict {
                            if wait > Duration::from_millis(2) {
                                let early = limiter.check("k", now + wait - MS, &config, 1);
                                prop_assert!(!admitted(&early), "early at {:?}+{:?}", now, wait);
                            }
                            now += wait;
                            let on_time = limiter.check("k", now, &config, 1);
                            prop_assert!(admitted(&on_time), "{:?} at {:?}", on_time, now);
                        }
                    }
                }
            }
        }

        /// No window of either window algorithm ever admits more than
        /// `rate × window` (this client and the hidden one together).
        #[test]
        fn windows_never_admit_more_than_their_capacity(
            sliding in any::<bool>(),
            per_second in 0.5f64..20.0,
            window_ms in 500u64..5_000,
            gaps in prop::collection::vec(0u64..400, 1..300),
        ) {
            let window = Duration::from_millis(window_ms);
            let algorithm = if sliding { Algorithm::SlidingWindow } else { Algorithm::FixedWindow };
            let config = windowed(algorithm, per_second, window);
            let capacity = (per_second * window.as_secs_f64()).max(1.0);
            let mut limiter = Limiter::default();
            let mut now = Duration::ZERO;
            let mut times = Vec::new();
            for gap in gaps {
                now += Duration::from_millis(gap);
                if admitted(&limiter.check("k", now, &config, 1)) {
                    times.push(now);
                }
            }
            for start in &times {
                let (from, to) = if sliding {
                    (*start, *start + window)
                } else {
                    let from = window_start(*start, window);
                    (from, from + window)
                };
                let inside = times.iter().filter(|t| **t >= from && **t < to).count();
                prop_assert!(inside as f64 <= capacity + 1e-9, "{inside} > {capacity}");
            }
        }

        /// N simultaneous requests against `rps` with a one-second burst:
        /// exactly min(N, capacity) get through.
        #[test]
        fn simultaneous_burst_admits_exactly_the_capacity(rps in 1u32..200, n in 0usize..400) {
            let mut limiter = Limiter::default();
            let config = limits(Some(f64::from(rps)), None, None);
            let admitted = (0..n)
                .filter(|_| admitted(&limiter.check("k", Duration::ZERO, &config, 1)))
                .count();
            prop_assert_eq!(admitted, n.min(rps as usize));
        }
    }
}
