//! A simulated provider with a hidden limit and a simulated dispatcher that
//! uses the advisor the way the engine does, all on virtual time (no
//! sockets, no sleeps): a discrete-event loop over instants derived from one
//! origin.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::{Duration, Instant};

use runnel_advisor::{Advisor, AdvisorConfig, ProviderLimits};
use runnel_core::rng::Rng;
use runnel_core::{Acquire, Advisor as _, Observation, OutcomeClass, RateKey, RateLimitHeaders};

/// How the simulated provider behaves.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Provider {
    /// The hidden limit, requests per second.
    pub(crate) limit: f64,
    /// The provider's own burst, in seconds of its limit.
    pub(crate) burst_seconds: f64,
    /// Whether replies carry OpenAI-style rate-limit headers.
    pub(crate) headers: bool,
    /// Whether 429s carry a retry-after (time until one request is back).
    pub(crate) retry_after: bool,
    /// Latency of a successful call, uniform in this range (seconds).
    pub(crate) success_latency: (f64, f64),
    /// Latency of a 429 reply, uniform in this range (seconds).
    pub(crate) reject_latency: (f64, f64),
}

impl Provider {
    /// A provider allowing `limit` requests per second with a one-second burst,
    /// successes taking 0.3–1.5 s and 429s 50–200 ms.
    pub(crate) fn new(limit: f64) -> Self {
        Self {
            limit,
            burst_seconds: 1.0,
            headers: false,
            retry_after: false,
            success_latency: (0.3, 1.5),
            reject_latency: (0.05, 0.2),
        }
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
        let mut out = String::from("sec granted ok 429 rate good\n");
        for s in 0..self.successes.len().min(self.rate.len()) {
            out += &format!(
                "{s:3} {:7} {:4} {:4} {:8.2} {:8.2}\n",
                self.granted.get(s).copied().unwrap_or(0),
                self.successes[s],
                self.rejected.get(s).copied().unwrap_or(0),
                self.rate[s],
                self.good.get(s).copied().unwrap_or(0.0)
            );
        }
        out
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Event {
    /// Ask the advisor for permits.
    Wake,
    /// A call ends: success (true) or 429, dispatched in that second.
    Done {
        ok: bool,
        second: usize,
        remaining: u64,
        reset_ns: u64,
    },
}

/// Runs `seconds` of simulated time: a dispatcher with unlimited work and
/// `concurrency` slots asks the advisor for permits exactly when the engine
/// would (a slot is free and the advisor's last `until` has come, or a call
/// ended), and the provider answers with its hidden limit.
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

    // The provider enforces a bucket of its burst; its headers report the
    // per-minute budget (a second bucket holding a minute of the limit), as
    // OpenAI's and Anthropic's do.
    let capacity = (provider.limit * provider.burst_seconds).max(1.0);
    let minute = provider.limit * 60.0;
    let mut level = capacity;
    let mut budget = minute;
    let mut last_refill = Duration::ZERO;

    let mut trace = Trace::default();
    let mut queue: BinaryHeap<Reverse<(Duration, u64, Event)>> = BinaryHeap::new();
    let mut seq = 0u64;
    let mut in_flight = 0usize;
    let mut next_wake: Option<Duration> = None;
    queue.push(Reverse((Duration::ZERO, seq, Event::Wake)));
    let mut last_second_logged = 0usize;

    while let Some(Reverse((now, _, event))) = queue.pop() {
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
            last_second_logged += 1;
        }
        match event {
            Event::Wake => {
                if next_wake == Some(now) {
                    next_wake = None;
                }
            }
            Event::Done {
                ok,
                second: sent,
                remaining,
                reset_ns,
            } => {
                in_flight -= 1;
                let mut obs = Observation::of(if ok {
                    OutcomeClass::Success
                } else {
                    OutcomeClass::RateLimited
                });
                if ok {
                    Trace::bump(&mut trace.successes, sent);
                } else {
                    Trace::bump(&mut trace.rejected, sent);
                    if provider.retry_after {
                        obs.retry_after = Some(Duration::from_secs_f64(1.0 / provider.limit));
                    }
                }
                if provider.headers {
                    obs.headers = Some(RateLimitHeaders {
                        requests_limit: Some((provider.limit * 60.0).round() as u64),
                        requests_remaining: Some(remaining),
                        requests_reset: Some(Duration::from_nanos(reset_ns)),
                        ..RateLimitHeaders::default()
                    });
                }
                advisor.record(&key, &obs, at(now));
            }
        }
        // Dispatch while a slot is free and the advisor permits.
        while in_flight < concurrency {
            match advisor.try_acquire(&key, None, at(now)) {
                Acquire::Permit => {
                    Trace::bump(&mut trace.granted, second);
                    // The provider decides on arrival (10 ms later).
                    let arrival = now + Duration::from_millis(10);
                    let elapsed = (arrival - last_refill).as_secs_f64();
                    level = (level + elapsed * provider.limit).min(capacity);
                    budget = (budget + elapsed * provider.limit).min(minute);
                    last_refill = arrival;
                    let ok = level >= 1.0 && budget >= 1.0;
                    if ok {
                        level -= 1.0;
                        budget -= 1.0;
                    }
                    let remaining = budget.floor().max(0.0) as u64;
                    let reset = (minute - budget) / provider.limit;
                    let (lo, hi) = if ok {
                        provider.success_latency
                    } else {
                        provider.reject_latency
                    };
                    let latency = Duration::from_secs_f64(lo + (hi - lo) * rng.unit());
                    seq += 1;
                    in_flight += 1;
                    queue.push(Reverse((
                        arrival + latency,
                        seq,
                        Event::Done {
                            ok,
                            second,
                            remaining,
                            reset_ns: (reset * 1e9) as u64,
                        },
                    )));
                }
                Acquire::Wait { until, .. } => {
                    let until = until - origin;
                    assert!(until > now, "a wait must end in the future");
                    if next_wake.is_none_or(|w| until < w) {
                        next_wake = Some(until);
                        seq += 1;
                        queue.push(Reverse((until, seq, Event::Wake)));
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
    trace
}
