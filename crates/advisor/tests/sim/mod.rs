//! A simulated provider and a simulated dispatcher that uses the advisor the
//! way the engine does, all on virtual time (no sockets, no sleeps): a
//! discrete-event loop over instants derived from one origin.
//!
//! The provider is modelled as `PROVIDERS.md` documents providers, not as
//! the advisor would like them: it enforces a limiter (a token bucket, a
//! fixed window or a sliding window), may keep a second, reported budget (a
//! per-minute or per-day count whose headers say nothing of the limiter that
//! binds), may report only `remaining`, rounds resets to whole seconds when
//! they are timestamps, may share its limit with a hidden client, and may
//! meter tokens (charging prompt plus `max_tokens` on admission, as OpenAI
//! and Cerebras document) and name the token limit in its 429s.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::time::{Duration, Instant};

use runnel_advisor::{Advisor, AdvisorConfig, ProviderLimits};
use runnel_core::rng::Rng;
use runnel_core::{
    Acquire, Advisor as _, LimitScope, Observation, OutcomeClass, RateKey, RateLimitHeaders,
};

/// How a limiter counts.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Enforce {
    /// A token bucket holding `burst_seconds` of its rate.
    Bucket { burst_seconds: f64 },
    /// A count reset every `window` seconds, `rate · window` per window.
    Fixed { window: f64 },
    /// At most `rate · window` in any `window` seconds.
    Sliding { window: f64 },
}

/// What the headers of a dimension carry.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Report {
    /// No headers.
    Nothing,
    /// Limit, remaining and the time until full (OpenAI's duration).
    Full,
    /// Limit, remaining and an RFC 3339 reset: whole seconds, rounded up.
    Timestamp,
    /// Remaining only (Azure).
    RemainingOnly,
}

/// Token metering of the simulated provider.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Tokens {
    /// The token limit, tokens per second, enforced by a one-second bucket.
    pub(crate) per_second: f64,
    /// Prompt tokens of every call.
    pub(crate) prompt: u64,
    /// `max_tokens` of every call; the completion uses 20–100 % of it.
    pub(crate) max_completion: u64,
    /// Whether replies carry token headers (per-minute budget).
    pub(crate) report: Report,
}

impl Tokens {
    /// What a call is charged on admission.
    pub(crate) fn estimate(&self) -> u64 {
        self.prompt + self.max_completion
    }
}

/// How the simulated provider behaves.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Provider {
    /// The enforced request limit, requests per second.
    pub(crate) limit: f64,
    /// How the enforced limit counts.
    pub(crate) enforce: Enforce,
    /// A second request limit `(rate per second, capacity)` refilling
    /// continuously, which the headers report instead of the enforced one
    /// (OpenAI's per-minute budget, Groq's per-day one).
    pub(crate) budget: Option<(f64, f64)>,
    /// What the request headers carry.
    pub(crate) report: Report,
    /// The request `limit` header is the enforced limit times this (60: a
    /// `limit` stated per minute while `remaining` and `reset` are those of
    /// the per-second bucket that enforces it).
    pub(crate) limit_scale: f64,
    /// Whether 429s carry a retry-after (time until one request is back).
    pub(crate) retry_after: bool,
    /// Share of the enforced limit used by another client of the same key.
    pub(crate) hidden: f64,
    /// Token metering, if any.
    pub(crate) tokens: Option<Tokens>,
    /// Latency of a successful call, uniform in this range (seconds).
    pub(crate) success_latency: (f64, f64),
    /// Latency of a 429 reply, uniform in this range (seconds).
    pub(crate) reject_latency: (f64, f64),
}

impl Provider {
    /// A provider allowing `limit` requests per second with a one-second
    /// burst and no headers, successes taking 0.3–1.5 s and 429s 50–200 ms.
    pub(crate) fn new(limit: f64) -> Self {
        Self {
            limit,
            enforce: Enforce::Bucket { burst_seconds: 1.0 },
            budget: None,
            report: Report::Nothing,
            limit_scale: 1.0,
            retry_after: false,
            hidden: 0.0,
            tokens: None,
            success_latency: (0.3, 1.5),
            reject_latency: (0.05, 0.2),
        }
    }

    /// The rate left for runnel, requests per second: the enforced limit less
    /// the hidden client's share, or the token limit over the tokens a call
    /// is charged, whichever is lower.
    pub(crate) fn binding(&self) -> f64 {
        let requests = self.limit * (1.0 - self.hidden);
        match self.tokens {
            Some(t) => requests.min(t.per_second / t.estimate() as f64),
            None => requests,
        }
    }
}

/// One limiter's state, in seconds of virtual time.
#[derive(Clone, Debug)]
struct Limiter {
    enforce: Enforce,
    rate: f64,
    capacity: f64,
    /// Bucket: the level. Fixed window: the count of the current window.
    level: f64,
    last: f64,
    window_index: u64,
    /// Sliding window: (time, cost) of admissions within the window.
    history: VecDeque<(f64, f64)>,
    used: f64,
}

impl Limiter {
    fn new(enforce: Enforce, rate: f64) -> Self {
        let capacity = match enforce {
            Enforce::Bucket { burst_seconds } => rate * burst_seconds,
            Enforce::Fixed { window } | Enforce::Sliding { window } => rate * window,
        };
        Self::with_capacity(enforce, rate, capacity.max(1.0))
    }

    fn with_capacity(enforce: Enforce, rate: f64, capacity: f64) -> Self {
        Self {
            enforce,
            rate,
            capacity,
            level: match enforce {
                Enforce::Bucket { .. } => capacity,
                Enforce::Fixed { .. } | Enforce::Sliding { .. } => 0.0,
            },
            last: 0.0,
            window_index: 0,
            history: VecDeque::new(),
            used: 0.0,
        }
    }

    fn advance(&mut self, t: f64) {
        match self.enforce {
            Enforce::Bucket { .. } => {
                let dt = (t - self.last).max(0.0);
                self.level = (self.level + dt * self.rate).min(self.capacity);
            }
            Enforce::Fixed { window } => {
                let index = (t / window) as u64;
                if index != self.window_index {
                    self.window_index = index;
                    self.level = 0.0;
                }
            }
            Enforce::Sliding { window } => {
                while self.history.front().is_some_and(|&(s, _)| s <= t - window) {
                    if let Some((_, c)) = self.history.pop_front() {
                        self.used -= c;
                    }
                }
            }
        }
        self.last = self.last.max(t);
    }

    fn remaining(&self) -> f64 {
        match self.enforce {
            Enforce::Bucket { .. } => self.level,
            Enforce::Fixed { .. } => self.capacity - self.level,
            Enforce::Sliding { .. } => self.capacity - self.used,
        }
    }

    fn fits(&mut self, t: f64, cost: f64) -> bool {
        self.advance(t);
        self.remaining() >= cost
    }

    fn take(&mut self, t: f64, cost: f64) {
        match self.enforce {
            Enforce::Bucket { .. } => self.level -= cost,
            Enforce::Fixed { .. } => self.level += cost,
            Enforce::Sliding { .. } => {
                self.history.push_back((t, cost));
                self.used += cost;
            }
        }
    }

    /// Time until the limiter is full (empty of use) again.
    fn reset(&self, t: f64) -> f64 {
        match self.enforce {
            Enforce::Bucket { .. } => (self.capacity - self.level) / self.rate,
            Enforce::Fixed { window } => {
                if self.level > 0.0 {
                    (self.window_index + 1) as f64 * window - t
                } else {
                    0.0
                }
            }
            Enforce::Sliding { window } => self
                .history
                .back()
                .map_or(0.0, |&(s, _)| (s + window - t).max(0.0)),
        }
    }

    /// The headers for this limiter, as (limit, remaining, reset).
    fn headers(
        &self,
        report: Report,
        limit_scale: f64,
        t: f64,
    ) -> (Option<u64>, Option<u64>, Option<Duration>) {
        let remaining = Some(self.remaining().floor().max(0.0) as u64);
        let limit = Some((self.capacity * limit_scale).round() as u64);
        let reset: f64 = self.reset(t).max(0.0);
        match report {
            Report::Nothing => (None, None, None),
            Report::RemainingOnly => (None, remaining, None),
            Report::Full => (limit, remaining, Some(Duration::from_secs_f64(reset))),
            Report::Timestamp => (
                limit,
                remaining,
                Some(Duration::from_secs(reset.ceil() as u64)),
            ),
        }
    }
}

/// The provider's state: its limiters.
struct State {
    requests: Limiter,
    budget: Option<Limiter>,
    tokens: Option<(Limiter, Limiter)>,
}

impl State {
    fn new(p: &Provider) -> Self {
        Self {
            requests: Limiter::new(p.enforce, p.limit),
            budget: p.budget.map(|(rate, capacity)| {
                Limiter::with_capacity(Enforce::Bucket { burst_seconds: 0.0 }, rate, capacity)
            }),
            tokens: p.tokens.map(|t| {
                (
                    Limiter::new(Enforce::Bucket { burst_seconds: 1.0 }, t.per_second),
                    Limiter::with_capacity(
                        Enforce::Bucket { burst_seconds: 0.0 },
                        t.per_second,
                        t.per_second * 60.0,
                    ),
                )
            }),
        }
    }

    /// Admits one call costing `tokens` at `t`: `Ok`, or the limit that
    /// refused it.
    fn admit(&mut self, t: f64, tokens: f64) -> Result<(), LimitScope> {
        let requests_fit =
            self.requests.fits(t, 1.0) && self.budget.as_mut().is_none_or(|b| b.fits(t, 1.0));
        if !requests_fit {
            return Err(LimitScope::Unknown);
        }
        if let Some((bucket, minute)) = &mut self.tokens
            && !(bucket.fits(t, tokens) && minute.fits(t, tokens))
        {
            return Err(LimitScope::Tokens);
        }
        self.requests.take(t, 1.0);
        if let Some(b) = &mut self.budget {
            b.take(t, 1.0);
        }
        if let Some((bucket, minute)) = &mut self.tokens {
            bucket.take(t, tokens);
            minute.take(t, tokens);
        }
        Ok(())
    }

    fn headers(&self, p: &Provider, t: f64) -> Option<RateLimitHeaders> {
        let reported = self.budget.as_ref().unwrap_or(&self.requests);
        let (requests_limit, requests_remaining, requests_reset) =
            reported.headers(p.report, p.limit_scale, t);
        let (tokens_limit, tokens_remaining, tokens_reset) = match (&self.tokens, p.tokens) {
            (Some((_, minute)), Some(tk)) => minute.headers(tk.report, 1.0, t),
            _ => (None, None, None),
        };
        let h = RateLimitHeaders {
            requests_limit,
            requests_remaining,
            requests_reset,
            tokens_limit,
            tokens_remaining,
            tokens_reset,
            ..RateLimitHeaders::default()
        };
        (!h.is_empty()).then_some(h)
    }
}

/// What happened in each second of simulated time.
#[derive(Clone, Debug, Default)]
pub(crate) struct Trace {
    /// Permits granted per second (by dispatch time).
    pub(crate) granted: Vec<u64>,
    /// Successes per second (by dispatch time).
    pub(crate) successes: Vec<u64>,
    /// 429s per second (by dispatch time).
    pub(crate) rejected: Vec<u64>,
    /// The advisor's request rate at the end of each second.
    pub(crate) rate: Vec<f64>,
    /// The advisor's last good rate at the end of each second.
    pub(crate) good: Vec<f64>,
    /// The advisor's token rate at the end of each second.
    pub(crate) token_rate: Vec<f64>,
}

impl Trace {
    fn bump(v: &mut Vec<u64>, second: usize) {
        if v.len() <= second {
            v.resize(second + 1, 0);
        }
        v[second] += 1;
    }

    /// Lowest success rate over any window of `window` seconds starting in
    /// `[from, to - window]`.
    pub(crate) fn min_success_rate(&self, from: usize, to: usize, window: usize) -> f64 {
        (from..=to - window)
            .map(|s| self.successes[s..s + window].iter().sum::<u64>() as f64 / window as f64)
            .fold(f64::INFINITY, f64::min)
    }

    /// 429s as a fraction of all calls dispatched in `[from, to)`.
    pub(crate) fn reject_fraction(&self, from: usize, to: usize) -> f64 {
        let rejected: u64 = self.rejected[from..to].iter().sum();
        let all: u64 = rejected + self.successes[from..to].iter().sum::<u64>();
        rejected as f64 / all.max(1) as f64
    }

    /// One line per second, for failure messages.
    pub(crate) fn table(&self) -> String {
        let mut out = String::from("sec granted ok 429 rate good tokens/s\n");
        for s in 0..self.successes.len().min(self.rate.len()) {
            out += &format!(
                "{s:3} {:7} {:4} {:4} {:8.2} {:8.2} {:9.0}\n",
                self.granted.get(s).copied().unwrap_or(0),
                self.successes[s],
                self.rejected.get(s).copied().unwrap_or(0),
                self.rate[s],
                self.good.get(s).copied().unwrap_or(0.0),
                self.token_rate.get(s).copied().unwrap_or(0.0),
            );
        }
        out
    }
}

#[derive(Clone, Copy, Debug)]
enum Event {
    /// Ask the advisor for permits.
    Wake,
    /// The hidden client sends a call.
    Hidden,
    /// A call ends, dispatched in `second`.
    Done {
        refused: Option<LimitScope>,
        second: usize,
        headers: Option<RateLimitHeaders>,
        tokens_used: Option<u64>,
    },
}

/// A queue entry: time, then insertion order (events never compare).
struct Entry(Duration, u64, Event);

impl PartialEq for Entry {
    fn eq(&self, other: &Self) -> bool {
        (self.0, self.1) == (other.0, other.1)
    }
}
impl Eq for Entry {}
impl PartialOrd for Entry {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Entry {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.0, self.1).cmp(&(other.0, other.1))
    }
}

/// Runs `seconds` of simulated time: a dispatcher with unlimited work and
/// `concurrency` slots asks the advisor for permits exactly when the engine
/// would (a slot is free and the advisor's last `until` has come, or a call
/// ended), and the provider answers from its limiters.
pub(crate) fn run(
    provider: Provider,
    initial_rps: f64,
    config: AdvisorConfig,
    seconds: u64,
    concurrency: usize,
    seed: u64,
) -> Trace {
    let mut config = config;
    config.providers.insert(
        "sim".into(),
        ProviderLimits {
            initial_rps: Some(initial_rps),
            ..ProviderLimits::default()
        },
    );
    let advisor = Advisor::new(config).expect("valid config");
    let key = RateKey::new("sim", "model");
    let mut rng = Rng::new(seed);
    let origin = Instant::now();
    let end = Duration::from_secs(seconds);
    let at = |d: Duration| origin + d;
    // The provider decides when a call arrives, 10 ms after it is sent.
    let transit = Duration::from_millis(10);

    let mut state = State::new(&provider);
    let mut trace = Trace::default();
    let mut queue: BinaryHeap<Reverse<Entry>> = BinaryHeap::new();
    let mut seq = 0u64;
    let mut in_flight = 0usize;
    let mut next_wake: Option<Duration> = None;
    queue.push(Reverse(Entry(Duration::ZERO, seq, Event::Wake)));
    let hidden_every = (provider.hidden > 0.0)
        .then(|| Duration::from_secs_f64(1.0 / (provider.hidden * provider.limit)));
    if let Some(every) = hidden_every {
        seq += 1;
        queue.push(Reverse(Entry(every, seq, Event::Hidden)));
    }
    let estimate = provider.tokens.map(|t| t.estimate());
    let mut last_second_logged = 0usize;

    while let Some(Reverse(Entry(now, _, event))) = queue.pop() {
        if now >= end {
            break;
        }
        let second = now.as_secs() as usize;
        while last_second_logged < second {
            let m = advisor.key_metrics(&key, at(now));
            trace.rate.push(m.and_then(|m| m.rate_rps).unwrap_or(0.0));
            trace
                .good
                .push(m.and_then(|m| m.last_good_rps).unwrap_or(0.0));
            trace
                .token_rate
                .push(m.and_then(|m| m.token_rate_tps).unwrap_or(0.0));
            last_second_logged += 1;
        }
        match event {
            Event::Wake => {
                if next_wake == Some(now) {
                    next_wake = None;
                }
            }
            Event::Hidden => {
                let t = (now + transit).as_secs_f64();
                let _ = state.admit(t, estimate.unwrap_or(0) as f64);
                if let Some(every) = hidden_every {
                    seq += 1;
                    queue.push(Reverse(Entry(now + every, seq, Event::Hidden)));
                }
                continue;
            }
            Event::Done {
                refused,
                second: sent,
                headers,
                tokens_used,
            } => {
                in_flight -= 1;
                let mut obs = Observation::of(if refused.is_none() {
                    OutcomeClass::Success
                } else {
                    OutcomeClass::RateLimited
                });
                match refused {
                    None => {
                        Trace::bump(&mut trace.successes, sent);
                        obs.tokens_used = tokens_used;
                    }
                    Some(scope) => {
                        Trace::bump(&mut trace.rejected, sent);
                        obs.scope = scope;
                        if provider.retry_after {
                            obs.retry_after = Some(Duration::from_secs_f64(1.0 / provider.limit));
                        }
                    }
                }
                obs.headers = headers;
                obs.tokens_reserved = estimate;
                advisor.record(&key, &obs, at(now));
            }
        }
        // Dispatch while a slot is free and the advisor permits.
        while in_flight < concurrency {
            match advisor.try_acquire(&key, estimate, at(now)) {
                Acquire::Permit => {
                    Trace::bump(&mut trace.granted, second);
                    let arrival = now + transit;
                    let t = arrival.as_secs_f64();
                    let refused = state.admit(t, estimate.unwrap_or(0) as f64).err();
                    let headers = state.headers(&provider, t);
                    let tokens_used = provider.tokens.map(|tk| {
                        let share = 0.2 + 0.8 * rng.unit();
                        tk.prompt + (tk.max_completion as f64 * share) as u64
                    });
                    let (lo, hi) = if refused.is_none() {
                        provider.success_latency
                    } else {
                        provider.reject_latency
                    };
                    let latency = Duration::from_secs_f64(lo + (hi - lo) * rng.unit());
                    seq += 1;
                    in_flight += 1;
                    queue.push(Reverse(Entry(
                        arrival + latency,
                        seq,
                        Event::Done {
                            refused,
                            second,
                            headers,
                            tokens_used,
                        },
                    )));
                }
                Acquire::Wait { until, .. } => {
                    let until = until - origin;
                    assert!(until > now, "a wait must end in the future");
                    if next_wake.is_none_or(|w| until < w) {
                        next_wake = Some(until);
                        seq += 1;
                        queue.push(Reverse(Entry(until, seq, Event::Wake)));
                    }
                    break;
                }
            }
        }
    }
    let n = seconds as usize;
    for v in [
        &mut trace.granted,
        &mut trace.successes,
        &mut trace.rejected,
    ] {
        v.resize(n, 0);
    }
    trace.rate.resize(n, 0.0);
    trace.good.resize(n, 0.0);
    trace.token_rate.resize(n, 0.0);
    trace
}
