//! Everything the advisor knows about one rate-limit key: its request and
//! token buckets, the learning controller, the breaker, a pause the provider
//! asked for, and counters. Plain data with `now` parameters; the
//! [`crate::Advisor`] wraps one of these per key in a lock.

use std::time::{Duration, Instant};

use runnel_core::{Acquire, LimitScope, Observation, OutcomeClass, RateLimitHeaders, WaitReason};
use serde::{Deserialize, Serialize};

use crate::breaker::{Breaker, BreakerSnapshot, BreakerState, Gate, Transition};
use crate::bucket::{TokenBucket, burst_for, interval_ns, later};
use crate::config::{AdvisorConfig, ResolvedLimits};
use crate::error::AdvisorError;
use crate::learn::{Learned, Learning, RateController, Refill, Source};
use crate::quota::QuotaWait;

/// Explicit `rpm` / `tpm` limits are per minute and hold in every window of
/// this length; a learned token rate also caps one call's charge at a
/// minute of it.
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
    /// Waits because the key's quota was used up.
    pub waits_quota: u64,
    /// Successful calls recorded.
    pub successes: u64,
    /// Rate-limited calls (429s) recorded.
    pub rate_limited: u64,
    /// Calls that reported the quota used up.
    pub quota_exhausted: u64,
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
        self.successes + self.rate_limited + self.quota_exhausted + self.transient + self.permanent
    }
}

/// One paced dimension of a key — requests, or tokens: the explicit limit
/// if any, the learning controller, the bucket that enforces its rate, and
/// what the headers said about it.
#[derive(Clone, Debug)]
struct Dimension {
    limit: Option<Explicit>,
    control: RateController,
    bucket: TokenBucket,
    refill: Refill,
    /// The last reply's headers said this dimension is running out.
    low: bool,
    /// The last reply's headers said nothing is left, without a reset (a
    /// fixed window that will refuse everything until it ends).
    exhausted: bool,
    /// The rate was cut since the last success.
    cut_since_success: bool,
    /// Permits granted before the last decrease. Outcomes are numbered in the
    /// order they are recorded; a 429 numbered above this mark (once a call
    /// was permitted after the decrease) is taken to come from a call the
    /// decreased rate sent. 429s are answered fast, so they come back nearly
    /// in the order their calls were sent.
    decrease_mark: Option<u64>,
    /// This process's share of the key's rate (1: all of it), from the
    /// shared rate budget ([`crate::share`]). Learning is in whole-key
    /// rates; only the bucket runs at `rate × share`.
    share: f64,
}

impl Dimension {
    fn new(
        learning: Learning,
        initial: f64,
        limit: Option<Explicit>,
        burst_seconds: f64,
        now: Instant,
    ) -> Self {
        let max_rate = limit.map_or(f64::INFINITY, |e| e.max_rate);
        let control = RateController::new(learning, initial, max_rate, now);
        let rate = control.rate();
        let tolerance = Explicit::tolerance_at(limit, rate, burst_seconds);
        Self {
            limit,
            bucket: TokenBucket::with_tolerance(rate, tolerance, now),
            control,
            refill: Refill::default(),
            low: false,
            exhausted: false,
            cut_since_success: false,
            decrease_mark: None,
            share: 1.0,
        }
    }

    /// Gives the bucket the controller's rate. `reset`: the rate comes from a
    /// new estimate (a 429, headers), not from gradual growth.
    fn sync(&mut self, burst_seconds: f64, now: Instant, reset: bool) {
        let rate = self.control.rate() * self.share;
        let tolerance = Explicit::tolerance_at(self.limit, rate, burst_seconds);
        // A debt run up at a learned rate that proved far too high must not
        // block the key for long, so a new estimate caps it at one empty
        // burst. Gradual growth keeps it (capping there would hand out a
        // token each time the burst rounds up), and so does an explicit
        // limit, always.
        let cap_debt = reset && self.limit.is_none();
        self.bucket
            .set_rate_tolerance(rate, tolerance, now, cap_debt);
    }

    /// Takes one reply's headers for this dimension. Returns whether the
    /// rate changed.
    /// `rate_limited`: the reply is a 429, which cuts the rate itself.
    fn observe(
        &mut self,
        view: HeaderView,
        rate_limited: bool,
        learning: &Learning,
        now: Instant,
    ) -> bool {
        self.refill.observe(
            view.limit,
            view.remaining,
            view.reset,
            view.window,
            learning.header_samples,
        );
        let refill = self.refill.rate();
        let mut changed = false;
        self.exhausted = view.remaining == Some(0) && view.reset.is_none();
        if let Some(remaining) = view.remaining {
            // Running out: less left than `header_low` of the current rate,
            // and (when the limit is stated) than a fraction of it.
            let mut threshold = self.control.rate() * learning.header_low.as_secs_f64();
            if let Some(limit) = view.limit {
                let capacity = self.refill.capacity(limit) as f64;
                threshold = threshold.min(capacity * learning.header_low_fraction);
            }
            self.low = (remaining as f64) < threshold || remaining == 0;
            self.bucket.cap_available(remaining, now);
            if self.low && !rate_limited {
                if refill.is_some() || remaining == 0 {
                    changed |= self.control.on_running_low(now, refill);
                } else {
                    // Running low, but nothing says how fast it refills (a
                    // fixed window near its end looks the same): stop
                    // growing, and let nothing left or a 429 say more.
                    self.control.hold();
                }
            }
        }
        // Jump up only while the limit is at least half full.
        let healthy = match (view.limit, view.remaining) {
            (Some(limit), Some(remaining)) => {
                remaining.saturating_mul(2) >= self.refill.capacity(limit)
            }
            _ => true,
        };
        if !self.low
            && healthy
            && let Some(refill) = refill
        {
            changed |= self.control.on_headroom(refill, now);
        }
        changed
    }
}

/// One dimension's part of a reply's headers.
#[derive(Clone, Copy, Debug)]
struct HeaderView {
    limit: Option<u64>,
    remaining: Option<u64>,
    reset: Option<Duration>,
    window: Option<Duration>,
}

impl HeaderView {
    fn requests(h: &RateLimitHeaders) -> Self {
        Self {
            limit: h.requests_limit,
            remaining: h.requests_remaining,
            reset: h.requests_reset,
            window: h.requests_window,
        }
    }

    fn tokens(h: &RateLimitHeaders) -> Self {
        Self {
            limit: h.tokens_limit,
            remaining: h.tokens_remaining,
            reset: h.tokens_reset,
            window: h.tokens_window,
        }
    }

    fn is_empty(&self) -> bool {
        self.limit.is_none() && self.remaining.is_none()
    }
}

/// The tokens a call is charged on average — the larger of its
/// reservation and the usage its reply reports, since providers admit on
/// the estimate (prompt plus `max_tokens`) and count usage beyond it.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
struct TokenUsage {
    /// Decayed average charge per call.
    per_call: f64,
}

impl TokenUsage {
    /// Adds one call's charge; the average spans about `samples` calls
    /// (`advisor.usage_samples`).
    fn record(&mut self, reserved: Option<u64>, used: Option<u64>, samples: f64) {
        let charge = reserved.unwrap_or(0).max(used.unwrap_or(0)) as f64;
        if charge > 0.0 {
            let keep = 1.0 - 1.0 / samples.max(1.0);
            self.per_call = if self.per_call > 0.0 {
                self.per_call * keep + charge * (1.0 - keep)
            } else {
                charge
            };
        }
    }
}

/// One key's state.
#[derive(Clone, Debug)]
pub struct KeyState {
    burst_seconds: f64,
    learning: Learning,
    /// `None`: the key is unlimited.
    requests: Option<Dimension>,
    /// Paced once tokens are known to matter: an explicit `tpm`, token
    /// headers, or a 429 naming the token limit.
    tokens: Option<Dimension>,
    /// Largest single charge of the token bucket.
    token_cap: u64,
    usage: TokenUsage,
    breaker: Breaker,
    paused_until: Option<Instant>,
    /// While the key's quota is used up.
    quota: Option<QuotaWait>,
    quota_probe: Duration,
    probe_timeout: Duration,
    /// This process's share of the key's rate, given to every dimension
    /// (also to a token dimension created later).
    share: f64,
    counters: Counters,
}

impl KeyState {
    /// A fresh key with `limits`, as of `now`.
    pub fn new(config: &AdvisorConfig, limits: ResolvedLimits, now: Instant) -> Self {
        let bs = config.burst_seconds;
        let learning = Learning::of(config);
        let mut key = Self {
            burst_seconds: bs,
            learning,
            requests: None,
            tokens: None,
            token_cap: 0,
            usage: TokenUsage::default(),
            breaker: Breaker::new(
                config.breaker_threshold,
                config.breaker_cooldown,
                config.probe_timeout,
            ),
            paused_until: None,
            quota: None,
            quota_probe: config.quota_probe_interval,
            probe_timeout: config.probe_timeout,
            counters: Counters::default(),
            share: 1.0,
        };
        if !limits.unlimited {
            let request_limit = limits.rpm.map(|rpm| Explicit::new(rpm, bs));
            key.requests = Some(Dimension::new(
                learning,
                limits.initial_rps,
                request_limit,
                bs,
                now,
            ));
            if let Some(tpm) = limits.tpm {
                let limit = Explicit::new(tpm, bs);
                key.tokens = Some(Dimension::new(
                    learning,
                    limit.max_rate,
                    Some(limit),
                    bs,
                    now,
                ));
                key.token_cap = limit.limit;
            }
        }
        key
    }

    /// The token dimension, created at `initial` tokens per second if there
    /// is none yet (`None` for an unlimited key).
    fn tokens_at(&mut self, initial: f64, now: Instant) -> Option<&mut Dimension> {
        self.requests.as_ref()?;
        if self.tokens.is_none() {
            let initial = if initial.is_finite() && initial > 0.0 {
                initial
            } else {
                // Nothing known of the tokens sent: one call's worth a second.
                self.usage.per_call.max(1.0)
            };
            let mut d = Dimension::new(self.learning, initial, None, self.burst_seconds, now);
            d.share = self.share;
            d.sync(self.burst_seconds, now, false);
            self.tokens = Some(d);
        }
        let d = self.tokens.as_mut()?;
        if d.limit.is_none() {
            self.token_cap = burst_for(d.control.rate(), WINDOW_SECS);
        }
        Some(d)
    }

    /// The tokens per second being sent now (the request rate times the
    /// average charge per call), the starting point of a token rate learned
    /// from a 429.
    fn token_send_rate(&self) -> f64 {
        self.rate().unwrap_or(0.0) * self.usage.per_call
    }

    /// Asks for a permit for one call costing `tokens` (if known).
    pub fn try_acquire(&mut self, tokens: Option<u64>, now: Instant) -> Acquire {
        if let Some(Err((until, reason))) = self.quota.map(|q| q.check(now)) {
            self.counters.waits_quota += 1;
            return Acquire::Wait { until, reason };
        }
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
        let mut short_requests = false;
        if let Some(d) = &self.requests
            && let Err(u) = d.bucket.check(1, now)
        {
            until = until.max(u);
            short_requests = true;
        }
        let charge = match (&self.tokens, tokens) {
            (Some(_), Some(n)) => n.min(self.token_cap),
            _ => 0,
        };
        let mut short_tokens = false;
        if charge > 0
            && let Some(d) = &self.tokens
            && let Err(u) = d.bucket.check(charge, now)
        {
            until = until.max(u);
            short_tokens = true;
        }
        if blocked || paused || short_requests || short_tokens {
            let reason = if let Some(open_since) = open_since {
                self.counters.waits_breaker += 1;
                WaitReason::BreakerOpen { open_since }
            } else if paused {
                self.counters.waits_paused += 1;
                WaitReason::Paused
            } else {
                self.counters.waits_rate += 1;
                if short_requests && let Some(d) = &mut self.requests {
                    d.control.on_saturated();
                }
                if short_tokens && let Some(d) = &mut self.tokens {
                    d.control.on_saturated();
                }
                WaitReason::Rate
            };
            return Acquire::Wait { until, reason };
        }
        if let Some(d) = &mut self.requests {
            d.bucket.take(1, now);
        }
        if charge > 0
            && let Some(d) = &mut self.tokens
        {
            d.bucket.take(charge, now);
        }
        self.breaker.on_permit(now);
        if let Some(q) = &mut self.quota {
            q.on_permit(now, self.probe_timeout);
        }
        self.counters.permits += 1;
        Acquire::Permit
    }

    /// Takes the outcome of a permitted call; says what changed, for logs.
    pub fn record(&mut self, obs: &Observation, now: Instant) -> Recorded {
        let mut effect = Recorded::default();
        match obs.class {
            OutcomeClass::Success => self.counters.successes += 1,
            OutcomeClass::RateLimited => self.counters.rate_limited += 1,
            OutcomeClass::QuotaExhausted => self.counters.quota_exhausted += 1,
            OutcomeClass::Transient => self.counters.transient += 1,
            OutcomeClass::Permanent => self.counters.permanent += 1,
        }
        effect.breaker = self.breaker.record(obs.class, now);
        // Quota exhaustion is not a rate limit: the rate is not cut, the key
        // waits on its quota (see `crate::quota`).
        if obs.class == OutcomeClass::QuotaExhausted {
            self.quota = Some(QuotaWait::begin(now, obs.retry_after, self.quota_probe));
        } else if let Some(q) = &mut self.quota
            && q.on_outcome(obs.class, now)
        {
            self.quota = None;
        }
        self.usage.record(
            obs.tokens_reserved,
            obs.tokens_used,
            self.learning.usage_samples,
        );
        if let Some(h) = &obs.headers {
            self.apply_headers(h, obs.class == OutcomeClass::RateLimited, now);
        }
        let charged = obs
            .tokens_reserved
            .unwrap_or(0)
            .max(obs.tokens_used.unwrap_or(0)) as f64;
        match obs.class {
            OutcomeClass::RateLimited => {
                if let Some(after) = obs.retry_after {
                    self.pause(now, after);
                }
                let tokens_bind = match obs.scope {
                    LimitScope::Tokens => true,
                    LimitScope::Requests => false,
                    // Unnamed: the dimension the headers say is running out.
                    LimitScope::Unknown => {
                        self.tokens.as_ref().is_some_and(|d| d.low)
                            && !self.requests.as_ref().is_some_and(|d| d.low)
                    }
                };
                let (permits, outcomes) = (self.counters.permits, self.counters.outcomes());
                let bs = self.burst_seconds;
                let initial = self.token_send_rate();
                let dim = if tokens_bind {
                    self.tokens_at(initial, now)
                } else {
                    self.requests.as_mut()
                };
                let mut decreased_to = None;
                let mut wait_out = false;
                if let Some(d) = dim {
                    // A window that says it is empty refuses every call until
                    // it ends, whatever the rate: one cut, then wait.
                    wait_out = d.exhausted;
                    let fresh = !d.exhausted
                        && d.decrease_mark
                            .is_some_and(|mark| permits > mark && outcomes > mark);
                    let refill = d.refill.rate();
                    let cut_already = d.exhausted && d.cut_since_success;
                    if !cut_already && d.control.on_rate_limited(now, fresh, refill) {
                        d.cut_since_success = true;
                        d.decrease_mark = Some(permits);
                        d.sync(bs, now, true);
                        d.bucket.drain(now);
                        decreased_to = Some(d.control.rate());
                    } else if fresh && let Some(wait) = d.control.refusal_wait(now) {
                        // The provider refuses whatever the rate: one
                        // refusal is one piece of evidence, not one per
                        // call; wait a little before the next.
                        d.bucket.hold(now, wait);
                    }
                }
                if wait_out {
                    self.pause(now, self.learning.decrease_window);
                }
                if !tokens_bind && decreased_to.is_some() {
                    self.counters.decreases += 1;
                    effect.decreased_to = decreased_to;
                }
                if tokens_bind && let Some(d) = &self.tokens {
                    self.token_cap = match d.limit {
                        Some(t) => t.limit,
                        None => burst_for(d.control.rate(), WINDOW_SECS),
                    };
                }
            }
            OutcomeClass::Success => {
                let bs = self.burst_seconds;
                if let Some(d) = &mut self.requests {
                    d.cut_since_success = false;
                    if d.control.on_success(now, 1.0) {
                        d.sync(bs, now, false);
                    }
                }
                if let Some(d) = &mut self.tokens {
                    d.cut_since_success = false;
                    if charged > 0.0 && d.control.on_success(now, charged) {
                        d.sync(bs, now, false);
                    }
                }
            }
            OutcomeClass::QuotaExhausted | OutcomeClass::Transient | OutcomeClass::Permanent => {}
        }
        if let (Some(d), Some(used)) = (&mut self.tokens, obs.tokens_used) {
            // Tokens used beyond the reservation are charged as debt; unused
            // reservations are not refunded (the rates learned are in tokens
            // reserved, which is what an explicit `tpm` bounds).
            let extra = used.saturating_sub(obs.tokens_reserved.unwrap_or(0));
            if extra > 0 {
                d.bucket.take(extra.min(self.token_cap), now);
            }
        }
        effect
    }

    fn apply_headers(&mut self, h: &RateLimitHeaders, rate_limited: bool, now: Instant) {
        let bs = self.burst_seconds;
        let learning = self.learning;
        let requests = HeaderView::requests(h);
        if !requests.is_empty()
            && let Some(d) = &mut self.requests
            && d.observe(requests, rate_limited, &learning, now)
        {
            d.sync(bs, now, true);
        }
        if h.requests_remaining == Some(0)
            && let Some(reset) = h.requests_reset
        {
            self.pause(
                now,
                until_one_is_back(reset, h.requests_limit, h.requests_window, 1),
            );
        }
        let tokens = HeaderView::tokens(h);
        if !tokens.is_empty() && self.requests.is_some() {
            let initial = self.token_send_rate();
            if let Some(d) = self.tokens_at(initial, now)
                && d.observe(tokens, rate_limited, &learning, now)
            {
                d.sync(bs, now, true);
            }
            if let Some(d) = &self.tokens
                && d.limit.is_none()
            {
                self.token_cap = burst_for(d.control.rate(), WINDOW_SECS);
            }
        }
        if h.tokens_remaining == Some(0)
            && let Some(reset) = h.tokens_reset
        {
            // Saturating float-to-int conversion.
            let per_call = self.usage.per_call.max(1.0) as u64;
            self.pause(
                now,
                until_one_is_back(reset, h.tokens_limit, h.tokens_window, per_call),
            );
        }
    }

    fn pause(&mut self, now: Instant, for_: Duration) {
        let until = later(now, for_);
        self.paused_until = Some(self.paused_until.map_or(until, |p| p.max(until)));
    }

    /// The current request rate (`None`: unlimited).
    pub fn rate(&self) -> Option<f64> {
        self.requests.as_ref().map(|d| d.control.rate())
    }

    /// The current token rate (`None`: tokens are not paced).
    pub fn token_rate(&self) -> Option<f64> {
        // The whole key's rate; the bucket runs at this times the share.
        self.tokens.as_ref().map(|d| d.control.rate())
    }

    /// What the request-rate learning knows (`None`: unlimited), for a
    /// caller that shares the key's rate with others — for example a budget
    /// kept across replicas, which reads each replica's learned rate and
    /// gives each a share back with [`adopt_rate`](Self::adopt_rate).
    pub fn learned_rate(&self) -> Option<Learned> {
        self.requests.as_ref().map(|d| d.control.learned())
    }

    /// Sets the request rate to `rps` as of `now` (within `min_rps` and any
    /// explicit `rpm`), as a rate decided outside this key — a replica's
    /// share of a budget. Learning continues from it: replies with headroom
    /// raise it, 429s lower it. Does nothing for an unlimited key.
    pub fn adopt_rate(&mut self, rps: f64, now: Instant) {
        let bs = self.burst_seconds;
        if let Some(d) = &mut self.requests {
            d.control.adopt(rps, now);
            d.sync(bs, now, true);
        }
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
        let bs = self.burst_seconds;
        for d in [&mut self.requests, &mut self.tokens].into_iter().flatten() {
            d.share = share;
            d.sync(bs, now, false);
        }
    }

    /// Takes the cluster's learned state: `learned` replaces the request
    /// controller's (explicit limits still cap it), `token_rate` the token
    /// rate, and a pause of `paused_for` is added. See [`crate::share`].
    pub fn adopt(
        &mut self,
        learned: Option<&Learned>,
        token_rate: Option<f64>,
        paused_for: Duration,
        now: Instant,
    ) {
        let bs = self.burst_seconds;
        if let (Some(d), Some(l)) = (&mut self.requests, learned)
            && d.control.learned() != *l
        {
            let lower = l.rate < d.control.rate();
            d.control.restore(l);
            d.sync(bs, now, lower);
        }
        if let Some(t) = token_rate
            && t.is_finite()
            && t > 0.0
            && self.token_rate() != Some(t)
            && let Some(d) = self.tokens_at(t, now)
        {
            let lower = t < d.control.rate();
            d.control.adopt(t, now);
            d.sync(bs, now, lower);
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
            last_good_rps: self.requests.as_ref().map(|d| d.control.last_good()),
            token_rate_tps: self.token_rate(),
            counters: self.counters,
            breaker: self.breaker.state(now),
            trips: self.breaker.trips(),
            open_since: self.breaker.open_since(),
            paused_until: self.paused_until.filter(|&p| p > now),
            quota_wait_until: self.quota.map(|q| q.next_probe()).filter(|&q| q > now),
        }
    }

    /// The learned state as of `now`, for persistence.
    pub fn snapshot(&self, now: Instant) -> KeySnapshot {
        let learned = self.learned_rate();
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
        let bs = self.burst_seconds;
        if let Some(d) = &mut self.requests {
            if let Some(rate) = snap.rate_rps {
                d.control.restore(&Learned {
                    rate,
                    good: snap.last_good_rps.unwrap_or(rate),
                    last_429: snap.last_429_rps,
                    source: snap.learned_from.into(),
                });
            }
            d.sync(bs, now, true);
        }
        if let Some(rate) = snap.token_rate_tps
            && let Some(d) = self.tokens_at(rate, now)
        {
            d.control.restore(&Learned {
                rate,
                good: rate,
                last_429: None,
                source: Source::Estimated,
            });
            d.sync(bs, now, true);
            if d.limit.is_none() {
                self.token_cap = burst_for(d.control.rate(), WINDOW_SECS);
            }
        }
        if snap.paused_for_ms > 0 {
            self.pause(now, Duration::from_millis(snap.paused_for_ms));
        }
        self.breaker.restore(&snap.breaker, snap.trips, now);
    }
}

/// How long to pause when the provider says nothing is left and that the
/// limit is full again after `reset`. OpenAI's and Anthropic's resets are
/// the time until a continuously refilled limit is full, so one call's
/// worth (`need` of `limit`) is back after `reset · need / limit`; pausing
/// for the whole reset would leave a one-second bucket idle most of the
/// time. A name that states its window (`-requests-day`) counts a fixed
/// window, and without a limit nothing says how fast it refills: then the
/// whole reset.
fn until_one_is_back(
    reset: Duration,
    limit: Option<u64>,
    window: Option<Duration>,
    need: u64,
) -> Duration {
    match (limit, window) {
        (Some(limit), None) if limit > 0 => {
            let share = (need.max(1) as f64 / limit as f64).min(1.0);
            reset.mul_f64(share)
        }
        _ => reset,
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
    /// While the key waits on a used-up quota: when the next probe may go.
    pub quota_wait_until: Option<Instant>,
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
