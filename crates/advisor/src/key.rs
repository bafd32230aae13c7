//! Everything the advisor knows about one rate-limit key: its request and
//! token buckets, the learning controller, the breaker, a pause the provider
//! asked for, and counters. Plain data with `now` parameters; the
//! [`crate::Advisor`] wraps one of these per key in a lock.

use std::time::{Duration, Instant};

use runnel_core::{Acquire, Observation, OutcomeClass, RateLimitHeaders, WaitReason};
use serde::{Deserialize, Serialize};

use crate::breaker::{Breaker, BreakerSnapshot, BreakerState, Gate, Transition};
use crate::bucket::{TokenBucket, burst_for, interval_ns, later};
use crate::config::{AdvisorConfig, ResolvedLimits};
use crate::error::AdvisorError;
use crate::learn::{Learned, Learning, RateController, Source};

/// Providers publish limits per minute; explicit limits hold in every window
/// of this length.
const WINDOW_SECS: f64 = 60.0;

/// An explicit limit: its highest rate and the largest tolerance (burst in
/// time) the bucket may have, chosen so that no window of [`WINDOW_SECS`]
/// holds more than `limit` tokens.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Explicit {
    limit: u64,
    max_rate: f64,
    tolerance: Duration,
}

impl Explicit {
    /// A window of length `w` holds fewer than `w / interval + tolerance /
    /// interval + 1` tokens (see [`crate::bucket`]). With a burst of `b`
    /// tokens — `max(1, floor(limit / 60 · burst_seconds))` — the highest rate
    /// is `(limit + 1 - b) / 60` and the tolerance `(b - 1)` intervals of it,
    /// which makes that bound `limit + 1`: at most `limit` in every window.
    fn new(limit: u64, burst_seconds: f64) -> Self {
        let limit = limit.max(1);
        let ideal = (limit as f64 / WINDOW_SECS * burst_seconds).floor();
        // Saturating float-to-int conversion.
        let burst = (ideal as u64).clamp(1, limit);
        let max_rate = (limit + 1 - burst) as f64 / WINDOW_SECS;
        let tolerance = Duration::from_nanos(interval_ns(max_rate).saturating_mul(burst - 1));
        Self {
            limit,
            max_rate,
            tolerance,
        }
    }

    /// The tolerance at `rate`: about `burst_seconds` of it (at least one
    /// token), within the explicit cap.
    fn tolerance_at(this: Option<Self>, rate: f64, burst_seconds: f64) -> Duration {
        let burst = burst_for(rate, burst_seconds);
        let natural = Duration::from_nanos(interval_ns(rate).saturating_mul(burst - 1));
        this.map_or(natural, |e| natural.min(e.tolerance))
    }
}

/// What recording an outcome changed, for logs.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Recorded {
    /// The breaker changed state.
    pub breaker: Option<Transition>,
    /// A 429 cut the request rate to this many per second.
    pub decreased_to: Option<f64>,
}

/// Counters of one key, for metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    /// Permits granted.
    pub permits: u64,
    /// Waits because a bucket was empty.
    pub waits_rate: u64,
    /// Waits because the provider asked for a pause.
    pub waits_paused: u64,
    /// Waits because the breaker was open (or its probe out).
    pub waits_breaker: u64,
    /// Successful calls recorded.
    pub successes: u64,
    /// Rate-limited calls (429s) recorded.
    pub rate_limited: u64,
    /// Transient failures recorded.
    pub transient: u64,
    /// Permanent failures recorded.
    pub permanent: u64,
    /// Times the request rate was cut after a 429.
    pub decreases: u64,
}

impl Counters {
    /// Outcomes recorded, of any class.
    pub fn outcomes(&self) -> u64 {
        self.successes + self.rate_limited + self.transient + self.permanent
    }
}

/// One key's state.
#[derive(Clone, Debug)]
pub struct KeyState {
    burst_seconds: f64,
    header_headroom: f64,
    control: Option<RateController>,
    request_limit: Option<Explicit>,
    requests: Option<TokenBucket>,
    token_limit: Option<Explicit>,
    tokens: Option<TokenBucket>,
    /// Largest single charge of the token bucket.
    token_cap: u64,
    breaker: Breaker,
    paused_until: Option<Instant>,
    counters: Counters,
    /// Permits granted before the last decrease. Outcomes are numbered in the
    /// order they are recorded; a 429 numbered above this mark (once a call
    /// was permitted after the decrease) is taken to come from a call the
    /// decreased rate sent. 429s are answered fast, so they come back nearly
    /// in the order their calls were sent.
    decrease_mark: Option<u64>,
    /// This process's share of the key's rate (1: all of it), from the
    /// shared rate budget ([`crate::share`]). Learning is in whole-key
    /// rates; only the buckets run at `rate × share`.
    share: f64,
    /// The whole key's token rate (the bucket runs at `× share`).
    token_full: Option<f64>,
}

impl KeyState {
    /// A fresh key with `limits`, as of `now`.
    pub fn new(config: &AdvisorConfig, limits: ResolvedLimits, now: Instant) -> Self {
        let bs = config.burst_seconds;
        let (request_limit, control, requests, token_limit) = if limits.unlimited {
            (None, None, None, None)
        } else {
            let request_limit = limits.rpm.map(|rpm| Explicit::new(rpm, bs));
            let max_rate = request_limit.map_or(f64::INFINITY, |e| e.max_rate);
            let control =
                RateController::new(Learning::of(config), limits.initial_rps, max_rate, now);
            let rate = control.rate();
            let tolerance = Explicit::tolerance_at(request_limit, rate, bs);
            let bucket = TokenBucket::with_tolerance(rate, tolerance, now);
            let token_limit = limits.tpm.map(|tpm| Explicit::new(tpm, bs));
            (request_limit, Some(control), Some(bucket), token_limit)
        };
        let mut key = Self {
            burst_seconds: bs,
            header_headroom: config.header_headroom,
            control,
            request_limit,
            requests,
            token_limit,
            tokens: None,
            token_cap: 0,
            breaker: Breaker::new(
                config.breaker_threshold,
                config.breaker_cooldown,
                config.probe_timeout,
            ),
            paused_until: None,
            counters: Counters::default(),
            decrease_mark: None,
            share: 1.0,
            token_full: None,
        };
        if let Some(t) = token_limit {
            key.set_token_rate(t.max_rate, now);
        }
        key
    }

    /// Asks for a permit for one call costing `tokens` (if known).
    pub fn try_acquire(&mut self, tokens: Option<u64>, now: Instant) -> Acquire {
        let mut until = now;
        let mut open_since = None;
        let mut blocked = false;
        let gate = self.breaker.check(now);
        match gate {
            Gate::Pass => {}
            Gate::Probe { open_since: s } => open_since = Some(s),
            Gate::Blocked {
                until: u,
                open_since: s,
            } => {
                open_since = Some(s);
                until = until.max(u);
                blocked = true;
            }
        }
        let paused = match self.paused_until {
            Some(p) if p > now => {
                until = until.max(p);
                true
            }
            _ => false,
        };
        let mut short = false;
        if let Some(b) = &self.requests
            && let Err(u) = b.check(1, now)
        {
            until = until.max(u);
            short = true;
        }
        let charge = match (&self.tokens, tokens) {
            (Some(_), Some(n)) => n.min(self.token_cap),
            _ => 0,
        };
        if charge > 0
            && let Some(b) = &self.tokens
            && let Err(u) = b.check(charge, now)
        {
            until = until.max(u);
            short = true;
        }
        if blocked || paused || short {
            let reason = if let Some(open_since) = open_since {
                self.counters.waits_breaker += 1;
                WaitReason::BreakerOpen { open_since }
            } else if paused {
                self.counters.waits_paused += 1;
                WaitReason::Paused
            } else {
                self.counters.waits_rate += 1;
                if let Some(c) = &mut self.control {
                    c.on_saturated();
                }
                WaitReason::Rate
            };
            return Acquire::Wait { until, reason };
        }
        if let Some(b) = &mut self.requests {
            b.take(1, now);
        }
        if charge > 0
            && let Some(b) = &mut self.tokens
        {
            b.take(charge, now);
        }
        self.breaker.on_permit(now);
        self.counters.permits += 1;
        Acquire::Permit
    }

    /// Takes the outcome of a permitted call; says what changed, for logs.
    pub fn record(&mut self, obs: &Observation, now: Instant) -> Recorded {
        let mut effect = Recorded::default();
        match obs.class {
            OutcomeClass::Success => self.counters.successes += 1,
            OutcomeClass::RateLimited => self.counters.rate_limited += 1,
            OutcomeClass::Transient => self.counters.transient += 1,
            OutcomeClass::Permanent => self.counters.permanent += 1,
        }
        effect.breaker = self.breaker.record(obs.class, now);
        if let Some(h) = &obs.headers {
            self.apply_headers(h, now);
        }
        match obs.class {
            OutcomeClass::RateLimited => {
                if let Some(after) = obs.retry_after {
                    self.pause(now, after);
                }
                let fresh = self.decrease_mark.is_some_and(|mark| {
                    self.counters.permits > mark && self.counters.outcomes() > mark
                });
                if let Some(c) = &mut self.control
                    && c.on_rate_limited(now, fresh)
                {
                    self.decrease_mark = Some(self.counters.permits);
                    self.counters.decreases += 1;
                    self.sync_request_rate(now, true);
                    if let Some(b) = &mut self.requests {
                        b.drain(now);
                    }
                    effect.decreased_to = self.rate();
                }
            }
            OutcomeClass::Success => {
                if let Some(c) = &mut self.control
                    && c.on_success(now)
                {
                    self.sync_request_rate(now, false);
                }
            }
            OutcomeClass::Transient | OutcomeClass::Permanent => {}
        }
        if let (Some(b), Some(used)) = (&mut self.tokens, obs.tokens_used) {
            // Tokens used beyond the reservation are charged as debt; unused
            // reservations are not refunded (providers count the estimate).
            let extra = used.saturating_sub(obs.tokens_reserved.unwrap_or(0));
            if extra > 0 {
                b.take(extra.min(self.token_cap), now);
            }
        }
        effect
    }

    fn apply_headers(&mut self, h: &RateLimitHeaders, now: Instant) {
        if let (Some(limit), Some(c)) = (h.requests_limit, &mut self.control)
            && c.on_header_limit(limit, now)
        {
            self.sync_request_rate(now, true);
        }
        if let (Some(remaining), Some(b)) = (h.requests_remaining, &mut self.requests) {
            b.cap_available(remaining, now);
        }
        if h.requests_remaining == Some(0)
            && let Some(reset) = h.requests_reset
        {
            self.pause(now, reset);
        }
        if let Some(limit) = h.tokens_limit
            && limit > 0
            && self.control.is_some()
        {
            let rate = limit as f64 / WINDOW_SECS * self.header_headroom;
            self.set_token_rate(rate, now);
        }
        if let (Some(remaining), Some(b)) = (h.tokens_remaining, &mut self.tokens) {
            b.cap_available(remaining, now);
        }
        if h.tokens_remaining == Some(0)
            && let Some(reset) = h.tokens_reset
        {
            self.pause(now, reset);
        }
    }

    fn pause(&mut self, now: Instant, for_: Duration) {
        let until = later(now, for_);
        self.paused_until = Some(self.paused_until.map_or(until, |p| p.max(until)));
    }

    /// Gives the request bucket the controller's rate. `reset`: the rate
    /// comes from a new estimate (a 429, headers), not from gradual growth.
    fn sync_request_rate(&mut self, now: Instant, reset: bool) {
        if let (Some(c), Some(b)) = (&self.control, &mut self.requests) {
            let rate = c.rate() * self.share;
            let tolerance = Explicit::tolerance_at(self.request_limit, rate, self.burst_seconds);
            // A debt run up at a learned rate that proved far too high must
            // not block the key for long, so a new estimate caps it at one
            // empty burst. Gradual growth keeps it (capping there would hand
            // out a token each time the burst rounds up), and so does an
            // explicit limit, always.
            let cap_debt = reset && self.request_limit.is_none();
            b.set_rate_tolerance(rate, tolerance, now, cap_debt);
        }
    }

    /// Sets the token rate, capped by the explicit token limit if any.
    fn set_token_rate(&mut self, rate: f64, now: Instant) {
        let rate = self.token_limit.map_or(rate, |t| rate.min(t.max_rate));
        self.token_full = Some(rate);
        let rate = rate * self.share;
        let tolerance = Explicit::tolerance_at(self.token_limit, rate, self.burst_seconds);
        self.token_cap = match self.token_limit {
            Some(t) => t.limit,
            None => burst_for(rate, WINDOW_SECS),
        };
        match &mut self.tokens {
            Some(b) => b.set_rate_tolerance(rate, tolerance, now, self.token_limit.is_none()),
            None => self.tokens = Some(TokenBucket::with_tolerance(rate, tolerance, now)),
        }
    }

    /// The current request rate (`None`: unlimited).
    pub fn rate(&self) -> Option<f64> {
        self.control.as_ref().map(RateController::rate)
    }

    /// The current token rate (`None`: tokens are not limited).
    pub fn token_rate(&self) -> Option<f64> {
        self.tokens.as_ref().and(self.token_full)
    }

    /// This process's share of the key's rate (1 unless a shared budget
    /// set it).
    pub fn share(&self) -> f64 {
        self.share
    }

    /// Runs the buckets at `share` (in (0, 1]) of the key's rate.
    pub fn set_share(&mut self, share: f64, now: Instant) {
        let share = if share.is_finite() {
            share.clamp(f64::MIN_POSITIVE, 1.0)
        } else {
            1.0
        };
        if share == self.share {
            return;
        }
        self.share = share;
        self.sync_request_rate(now, false);
        if let Some(t) = self.token_full {
            self.set_token_rate(t, now);
        }
    }

    /// Takes the cluster's learned state: `learned` replaces the
    /// controller's (explicit limits still cap it), `token_rate` the token
    /// rate, and a pause of `paused_for` is added. See [`crate::share`].
    pub fn adopt(
        &mut self,
        learned: Option<&Learned>,
        token_rate: Option<f64>,
        paused_for: Duration,
        now: Instant,
    ) {
        if let (Some(c), Some(l)) = (&mut self.control, learned)
            && c.learned() != *l
        {
            let lower = l.rate < c.rate();
            c.restore(l);
            self.sync_request_rate(now, lower);
        }
        if let Some(t) = token_rate
            && self.control.is_some()
            && self.token_full != Some(t)
        {
            self.set_token_rate(t, now);
        }
        if !paused_for.is_zero() {
            self.pause(now, paused_for);
        }
    }

    /// The breaker.
    pub fn breaker(&self) -> &Breaker {
        &self.breaker
    }

    /// The metrics of this key as of `now`.
    pub fn metrics(&self, now: Instant) -> KeyMetrics {
        KeyMetrics {
            rate_rps: self.rate(),
            last_good_rps: self.control.as_ref().map(RateController::last_good),
            token_rate_tps: self.token_rate(),
            counters: self.counters,
            breaker: self.breaker.state(now),
            trips: self.breaker.trips(),
            open_since: self.breaker.open_since(),
            paused_until: self.paused_until.filter(|&p| p > now),
        }
    }

    /// The learned state as of `now`, for persistence.
    pub fn snapshot(&self, now: Instant) -> KeySnapshot {
        let learned = self.control.as_ref().map(RateController::learned);
        KeySnapshot {
            rate_rps: learned.map(|l| l.rate),
            last_good_rps: learned.map(|l| l.good),
            last_429_rps: learned.and_then(|l| l.last_429),
            learned_from: learned.map_or(LearnedFrom::Nothing, |l| l.source.into()),
            token_rate_tps: self.token_rate(),
            paused_for_ms: self
                .paused_until
                .map_or(0, |p| millis(p.saturating_duration_since(now))),
            breaker: self.breaker.snapshot(now),
            trips: self.breaker.trips(),
        }
    }

    /// Restores learned state (already validated) as of `now`. Explicit
    /// limits of the current configuration still cap every rate.
    pub fn restore(&mut self, snap: &KeySnapshot, now: Instant) {
        if let (Some(c), Some(rate)) = (&mut self.control, snap.rate_rps) {
            c.restore(&Learned {
                rate,
                good: snap.last_good_rps.unwrap_or(rate),
                last_429: snap.last_429_rps,
                source: snap.learned_from.into(),
            });
        }
        self.sync_request_rate(now, true);
        if let Some(rate) = snap.token_rate_tps
            && self.control.is_some()
        {
            self.set_token_rate(rate, now);
        }
        if snap.paused_for_ms > 0 {
            self.pause(now, Duration::from_millis(snap.paused_for_ms));
        }
        self.breaker.restore(&snap.breaker, snap.trips, now);
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Plain per-key figures for the server to export.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct KeyMetrics {
    /// Current request rate per second; `None` for an unlimited key.
    pub rate_rps: Option<f64>,
    /// The last good request rate (the estimate of the provider's limit).
    pub last_good_rps: Option<f64>,
    /// Current token rate per second; `None` when tokens are not limited.
    pub token_rate_tps: Option<f64>,
    /// Permits, waits and outcomes counted so far.
    pub counters: Counters,
    /// Breaker state.
    pub breaker: BreakerState,
    /// Times the breaker opened (CLOSED → OPEN).
    pub trips: u64,
    /// When the breaker last left CLOSED, while it is not closed.
    pub open_since: Option<Instant>,
    /// When a pause the provider asked for ends, while one is running.
    pub paused_until: Option<Instant>,
}

/// Where a key's last good rate came from (persisted form of the learning
/// controller's source).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LearnedFrom {
    /// Nothing learned yet (slow start), or an unlimited key.
    #[default]
    Nothing,
    /// Measured at one 429, not yet confirmed.
    Estimated,
    /// Confirmed by agreeing 429s, or an explicit limit.
    Confirmed,
    /// The provider's rate-limit headers.
    Headers,
}

impl From<Source> for LearnedFrom {
    fn from(s: Source) -> Self {
        match s {
            Source::Unknown => LearnedFrom::Nothing,
            Source::Estimated => LearnedFrom::Estimated,
            Source::Confirmed => LearnedFrom::Confirmed,
            Source::Headers => LearnedFrom::Headers,
        }
    }
}

impl From<LearnedFrom> for Source {
    fn from(s: LearnedFrom) -> Self {
        match s {
            LearnedFrom::Nothing => Source::Unknown,
            LearnedFrom::Estimated => Source::Estimated,
            LearnedFrom::Confirmed => Source::Confirmed,
            LearnedFrom::Headers => Source::Headers,
        }
    }
}

/// The learned state of one key, as plain data with durations relative to
/// the moment it was taken (an `Instant` means nothing to another process).
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KeySnapshot {
    /// Request rate per second; `None` for an unlimited key.
    pub rate_rps: Option<f64>,
    /// Last good request rate per second.
    pub last_good_rps: Option<f64>,
    /// The request rate that drew the last 429.
    pub last_429_rps: Option<f64>,
    /// Where the last good rate came from.
    pub learned_from: LearnedFrom,
    /// Token rate per second learned from headers; `None` if none.
    pub token_rate_tps: Option<f64>,
    /// Pause left, in milliseconds (0: none).
    pub paused_for_ms: u64,
    /// The breaker.
    pub breaker: BreakerSnapshot,
    /// Breaker trips so far.
    pub trips: u64,
}

impl KeySnapshot {
    /// The snapshot as it would read `elapsed` later (for a store that knows
    /// how long ago it was saved): pauses and cooldowns shrink.
    pub fn aged(self, elapsed: Duration) -> Self {
        Self {
            paused_for_ms: self.paused_for_ms.saturating_sub(millis(elapsed)),
            breaker: self.breaker.aged(elapsed),
            ..self
        }
    }

    /// Checks that every number is usable; the error names `key` and the field.
    pub fn validate(&self, key: &str) -> Result<(), AdvisorError> {
        let bad = |field: &'static str| AdvisorError::Snapshot {
            key: key.to_owned(),
            field,
            message: "must be a positive, finite rate".to_owned(),
        };
        let ok = |r: Option<f64>| r.is_none_or(|r| r.is_finite() && r > 0.0);
        if !ok(self.rate_rps) {
            return Err(bad("rate_rps"));
        }
        if !ok(self.last_good_rps) {
            return Err(bad("last_good_rps"));
        }
        if !ok(self.last_429_rps) {
            return Err(bad("last_429_rps"));
        }
        if !ok(self.token_rate_tps) {
            return Err(bad("token_rate_tps"));
        }
        Ok(())
    }
}
