//! Learning a key's request rate from what the provider says (DESIGN §6),
//! as a plain state machine with `now` parameters.
//!
//! The controller keeps the current rate and the *last good rate* (the best
//! estimate of the provider's limit):
//!
//! - **Headers** (`x-ratelimit-limit-requests`, `anthropic-ratelimit-requests-limit`)
//!   give the limit outright: the last good rate becomes `limit / 60 ·
//!   header_headroom` and the rate jumps to it. Nothing probes above it.
//! - **Without headers**, before any limit is known, the rate grows by
//!   `slow_start_factor` per second of saturated use (slow start).
//! - A 429 — at most one per `decrease_window` counts, so a burst of
//!   concurrent 429s counts once, unless it comes from a call sent after the
//!   last decrease (the cut was not enough: a start 10× too high takes a few
//!   round trips, not a few seconds) — re-estimates the last good rate as the
//!   success rate of the last few seconds (an exponential average over
//!   `max(3 s, 16 / rate)`), kept between `decrease_factor` of the rate that
//!   drew the 429 and that rate, less 3 %; it remembers the rate that drew it,
//!   and cuts the rate to `decrease_factor` of that rate (or to the new last
//!   good rate, if that is lower).
//! - After a decrease the rate grows back to the last good rate linearly
//!   within `recovery_time`. Above it, and only while the bucket is the
//!   bottleneck (an idle key learns nothing), it grows by 10 % per second up
//!   to 94 % of the rate that drew the last 429 (the measured good rate may be
//!   low), then probes gently: by `additive_step` of the rate per second, at
//!   most 0.1 % per success, so that at low rates a probe spans many calls.
//!   A 429 drawn within 10 % of the previous one's rate confirms the limit and
//!   halves the step (down to 1/64 of it); the step doubles every 30 s
//!   without a 429, so a limit that was raised is still found within minutes.
//! - An explicit limit caps everything; `min_rps` is the floor.
//!
//! In the simulations of `tests/convergence.rs` (a provider with a hidden
//! limit and a one-second burst, calls taking 0.3–1.5 s) this holds every
//! 10-second window after 30 s at 90–96 % of the limit with under 1 % of
//! calls rate limited, for limits of 5 to 1000 requests per second started
//! 10× too low or too high. At 1–2 requests per second it takes about a
//! minute (88–95 % per minute after that, 1–2.5 % rate limited); with
//! headers, 2 seconds at any limit.

use std::time::{Duration, Instant};

use crate::config::{AdvisorConfig, MAX_RATE};

/// The learning constants, copied from [`AdvisorConfig`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Learning {
    /// See [`AdvisorConfig::decrease_factor`].
    pub decrease_factor: f64,
    /// See [`AdvisorConfig::decrease_window`].
    pub decrease_window: Duration,
    /// See [`AdvisorConfig::recovery_time`].
    pub recovery_time: Duration,
    /// See [`AdvisorConfig::additive_step`].
    pub additive_step: f64,
    /// See [`AdvisorConfig::slow_start_factor`].
    pub slow_start_factor: f64,
    /// See [`AdvisorConfig::header_headroom`].
    pub header_headroom: f64,
    /// See [`AdvisorConfig::min_rps`].
    pub min_rps: f64,
}

impl Learning {
    /// The learning constants of `config`.
    pub fn of(config: &AdvisorConfig) -> Self {
        Self {
            decrease_factor: config.decrease_factor,
            decrease_window: config.decrease_window,
            recovery_time: config.recovery_time,
            additive_step: config.additive_step,
            slow_start_factor: config.slow_start_factor,
            header_headroom: config.header_headroom,
            min_rps: config.min_rps,
        }
    }
}

impl Default for Learning {
    fn default() -> Self {
        Self::of(&AdvisorConfig::default())
    }
}

/// Where the last good rate came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// Nothing known yet: slow start.
    Unknown,
    /// Measured at a 429 that was not drawn near the rate of the one before.
    Estimated,
    /// Measured at a 429 drawn within 10 % of the rate of the one before
    /// (or an explicit limit).
    Confirmed,
    /// Read from the provider's headers: never probes above it.
    Headers,
}

/// What a controller has learned, for persistence.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Learned {
    /// The current rate, requests per second.
    pub rate: f64,
    /// The last good rate.
    pub good: f64,
    /// The rate that drew the last 429.
    pub last_429: Option<f64>,
    /// Where the last good rate came from.
    pub source: Source,
}

/// The adaptive request rate of one key.
#[derive(Clone, Debug, PartialEq)]
pub struct RateController {
    learning: Learning,
    rate: f64,
    max_rate: f64,
    good: f64,
    source: Source,
    last_decrease: Option<Instant>,
    last_growth: Option<Instant>,
    saturated: bool,
    /// Additive step in use (decays while 429s confirm the same limit).
    probe: f64,
    /// The rate that drew the last 429.
    bad: Option<f64>,
    goodput: Goodput,
}

/// The last good rate is set this fraction below what a 429 measured, so
/// the next 429 is some probing away.
const MARGIN: f64 = 0.03;
/// A 429 drawn within this fraction of the rate of the previous one confirms
/// the limit.
const CONFIRM: f64 = 0.1;
/// Growth per second from the last good rate up to just below where the
/// last 429 came (the last good rate may be measured too low).
const APPROACH: f64 = 0.1;
/// Above a confirmed limit, one success adds at most this fraction of it,
/// so at low rates a probe takes many requests and 429s stay rare.
const PROBE_PER_SUCCESS: f64 = 0.001;
/// The additive step decays to at most this fraction of its configured value.
const PROBE_FLOOR: f64 = 64.0;
/// While probing without a 429, a decayed step doubles this often, so a
/// limit that was raised is found within minutes.
const PROBE_DOUBLING_SECS: f64 = 30.0;

impl RateController {
    /// A controller starting at `initial` requests per second, never above
    /// `max_rate` (an explicit limit, or infinity). With a finite `max_rate`
    /// the limit is known: there is no slow start. Rates never exceed
    /// [`MAX_RATE`].
    pub fn new(learning: Learning, initial: f64, max_rate: f64, now: Instant) -> Self {
        let known = max_rate.is_finite();
        // A bucket cannot enforce more than one call per nanosecond; above
        // that the rate would only grow towards infinity.
        let max_rate = if max_rate.is_nan() {
            MAX_RATE
        } else {
            max_rate.min(MAX_RATE)
        };
        let min = learning.min_rps.min(max_rate);
        let rate = clamp_rate(initial, min, max_rate);
        Self {
            learning,
            rate,
            max_rate,
            good: if known { max_rate } else { rate },
            source: if known {
                Source::Confirmed
            } else {
                Source::Unknown
            },
            last_decrease: None,
            last_growth: Some(now),
            saturated: false,
            probe: learning.additive_step,
            bad: None,
            goodput: Goodput::new(now),
        }
    }

    /// The current rate, requests per second.
    pub fn rate(&self) -> f64 {
        self.rate
    }

    /// The last good rate (the estimate of the provider's limit).
    pub fn last_good(&self) -> f64 {
        self.good
    }

    /// Where the last good rate came from.
    pub fn source(&self) -> Source {
        self.source
    }

    /// The highest rate allowed (an explicit limit, or [`MAX_RATE`]).
    pub fn max_rate(&self) -> f64 {
        self.max_rate
    }

    /// The bucket made a caller wait: the rate is the bottleneck, so growing
    /// it is worth trying.
    pub fn on_saturated(&mut self) {
        self.saturated = true;
    }

    /// A permitted call succeeded. Returns whether the rate changed.
    pub fn on_success(&mut self, now: Instant) -> bool {
        self.goodput.record(now, self.good.max(self.rate));
        let dt = match self.last_growth {
            Some(t) => now.saturating_duration_since(t).min(Duration::from_secs(1)),
            None => Duration::ZERO,
        };
        self.last_growth = Some(now);
        let saturated = std::mem::take(&mut self.saturated);
        let dt = dt.as_secs_f64();
        let before = self.rate;
        match self.source {
            Source::Unknown => {
                if saturated {
                    // Slow start; dt ≤ 1 s, so at most one factor per success.
                    self.rate *= self.learning.slow_start_factor.powf(dt);
                }
            }
            _ if self.rate < self.good => {
                let step = self.good * (1.0 - self.learning.decrease_factor) * dt
                    / self.learning.recovery_time.as_secs_f64();
                self.rate = (self.rate + step).min(self.good);
            }
            Source::Headers => {}
            _ if !saturated => {}
            _ => {
                let near = self.bad.map_or(0.0, |b| b * (1.0 - 2.0 * MARGIN));
                if self.rate < near {
                    // Well below where the last 429 came: approach it fast.
                    self.rate = (self.rate * (1.0 + APPROACH * dt)).min(near);
                } else {
                    // Near or above it: probe gently.
                    let since = self
                        .last_decrease
                        .map_or(0.0, |t| now.saturating_duration_since(t).as_secs_f64());
                    let step = (self.probe * (since / PROBE_DOUBLING_SECS).exp2())
                        .min(self.learning.additive_step);
                    self.rate += (step * dt).min(PROBE_PER_SUCCESS) * self.rate;
                }
            }
        }
        self.rate = clamp_rate(self.rate, self.min(), self.max_rate);
        self.rate != before
    }

    /// A permitted call was rate limited. `fresh`: the call was permitted
    /// after the last decrease, so the decreased rate drew this 429 too.
    /// Returns whether the rate was cut: at most once per decrease window for
    /// 429s of calls sent before the cut (a burst of them is one overshoot),
    /// and again at once for a fresh one (the cut was not enough).
    pub fn on_rate_limited(&mut self, now: Instant, fresh: bool) -> bool {
        if !fresh
            && let Some(t) = self.last_decrease
            && now.saturating_duration_since(t) < self.learning.decrease_window
        {
            return false;
        }
        let f = self.learning.decrease_factor;
        let r0 = self.rate;
        if self.source != Source::Headers {
            self.reestimate(r0, now);
        }
        self.rate = clamp_rate((r0 * f).min(self.good), self.min(), self.max_rate);
        self.last_decrease = Some(now);
        self.last_growth = Some(now);
        self.saturated = false;
        true
    }

    /// Re-estimates after a 429 drawn at rate `r0`.
    fn reestimate(&mut self, r0: f64, now: Instant) {
        let f = self.learning.decrease_factor;
        // The last good rate: what got through lately, kept between the
        // decreased rate and the rate that drew the 429, a little below.
        self.good = self.goodput.rate(now).unwrap_or(0.0).clamp(r0 * f, r0) * (1.0 - MARGIN);
        let agrees = self.bad.is_some_and(|b| (r0 - b).abs() <= CONFIRM * b);
        if agrees {
            // The limit is where it was: probe more gently, so 429s grow rarer.
            self.probe = (self.probe * 0.5).max(self.learning.additive_step / PROBE_FLOOR);
            self.source = Source::Confirmed;
        } else {
            self.probe = self.learning.additive_step;
            self.source = Source::Estimated;
        }
        self.bad = Some(r0);
    }

    /// The provider said its limit is `per_minute` requests per minute.
    /// Returns whether the rate changed.
    pub fn on_header_limit(&mut self, per_minute: u64, now: Instant) -> bool {
        if per_minute == 0 {
            return false;
        }
        let limit = (per_minute as f64 / 60.0 * self.learning.header_headroom).min(self.max_rate);
        let before = self.rate;
        let changed_limit = self.source != Source::Headers || limit != self.good;
        self.good = limit;
        self.source = Source::Headers;
        let recovering = self
            .last_decrease
            .is_some_and(|t| now.saturating_duration_since(t) < self.learning.recovery_time);
        if changed_limit && !recovering {
            self.rate = limit;
        } else {
            self.rate = self.rate.min(limit);
        }
        self.rate = clamp_rate(self.rate, self.min(), self.max_rate);
        self.rate != before
    }

    /// The learned state, for persistence.
    pub fn learned(&self) -> Learned {
        Learned {
            rate: self.rate,
            good: self.good,
            last_429: self.bad,
            source: self.source,
        }
    }

    /// Restores learned state (clamped to this controller's limits).
    pub fn restore(&mut self, learned: &Learned) {
        self.rate = clamp_rate(learned.rate, self.min(), self.max_rate);
        self.bad = learned.last_429.filter(|b| b.is_finite() && *b > 0.0);
        if matches!(learned.source, Source::Unknown | Source::Estimated)
            && self.max_rate.is_finite()
        {
            // An explicit limit is known now even if it was not then.
            return;
        }
        self.good = clamp_rate(learned.good, self.min(), self.max_rate);
        self.source = learned.source;
    }

    fn min(&self) -> f64 {
        self.learning.min_rps.min(self.max_rate)
    }
}

fn clamp_rate(rate: f64, min: f64, max: f64) -> f64 {
    if rate.is_nan() {
        min
    } else {
        rate.clamp(min, max)
    }
}

/// Successes per second, as an exponentially weighted average over about
/// `max(2 s, 8 / rate)` — a few seconds, or a few successes at low rates.
#[derive(Clone, Debug, PartialEq)]
struct Goodput {
    /// Decayed count of successes.
    count: f64,
    /// Time constant in seconds.
    tau: f64,
    last: Option<Instant>,
    since: Instant,
}

/// Fewer (decayed) successes than this give no measurement.
const MIN_SAMPLES: f64 = 3.0;

impl Goodput {
    fn new(now: Instant) -> Self {
        Self {
            count: 0.0,
            tau: 3.0,
            last: None,
            since: now,
        }
    }

    fn decayed(&self, now: Instant) -> f64 {
        match self.last {
            Some(t) => {
                let dt = now.saturating_duration_since(t).as_secs_f64();
                self.count * (-dt / self.tau).exp()
            }
            None => 0.0,
        }
    }

    fn record(&mut self, now: Instant, rate: f64) {
        self.count = self.decayed(now) + 1.0;
        self.last = Some(now);
        // Retune for the next sample; the decayed count is kept as it is.
        self.tau = (16.0 / rate.max(1.0e-6)).clamp(3.0, 600.0);
    }

    fn rate(&self, now: Instant) -> Option<f64> {
        let count = self.decayed(now);
        if count < MIN_SAMPLES {
            return None;
        }
        // Early on, the average covers only the time since measuring began.
        let age = now.saturating_duration_since(self.since).as_secs_f64();
        let span = self.tau * (1.0 - (-age / self.tau).exp());
        Some(count / span.max(1.0e-3))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn slow_start_doubles_per_saturated_second() {
        let t0 = Instant::now();
        let mut c = RateController::new(Learning::default(), 1.0, f64::INFINITY, t0);
        c.on_saturated();
        c.on_success(t0);
        for i in 1..=3 {
            c.on_saturated();
            c.on_success(t0 + ms(1000 * i));
        }
        assert!((c.rate() - 8.0).abs() < 1e-9, "{}", c.rate());
        // Not saturated: no growth.
        c.on_success(t0 + ms(4000));
        c.on_success(t0 + ms(5000));
        assert!((c.rate() - 8.0).abs() < 1e-9);
    }

    #[test]
    fn a_429_halves_once_per_window_and_the_rate_grows_back() {
        let t0 = Instant::now();
        let mut c = RateController::new(Learning::default(), 10.0, f64::INFINITY, t0);
        // 8 successes per second for 8 s while the rate is 10/s: the
        // measured good rate is ~8/s.
        for i in 0..64 {
            c.on_success(t0 + ms(125 * i));
        }
        let t1 = t0 + ms(8000);
        assert!(c.on_rate_limited(t1, false));
        assert_eq!(c.source(), Source::Estimated);
        let good = c.last_good();
        assert!(good > 7.2 && good < 8.0, "{good}");
        // Halved from the rate that drew the 429 (10/s).
        assert!((c.rate() - 5.0).abs() < 1e-9, "{}", c.rate());
        assert!(
            !c.on_rate_limited(t1 + ms(999), false),
            "one decrease per window"
        );
        // ... unless the call was sent after the cut: then at once.
        let mut fresh = c.clone();
        assert!(fresh.on_rate_limited(t1 + ms(50), true));
        assert!((fresh.rate() - 2.5).abs() < 1e-9, "{}", fresh.rate());
        // Linear regrowth to the last good rate within the recovery time,
        // saturated or not.
        c.on_success(t1 + ms(500));
        let half_way = c.rate();
        assert!(half_way > 5.0 && half_way < good, "{half_way}");
        c.on_success(t1 + ms(1000));
        assert!((c.rate() - good).abs() < 1e-9);
        // Above it, only while saturated: 10 % per second towards just below
        // the rate that drew the 429 (10/s)...
        c.on_success(t1 + ms(2000));
        assert!((c.rate() - good).abs() < 1e-9);
        for i in 3..7 {
            c.on_saturated();
            c.on_success(t1 + ms(1000 * i));
        }
        // (the last steps of the loop are already gentle).
        let near = 10.0 * (1.0 - 2.0 * MARGIN);
        assert!(c.rate() >= near && c.rate() < near * 1.003, "{}", c.rate());
        // ... then gently, at most 0.1 % per success.
        let before = c.rate();
        c.on_saturated();
        c.on_success(t1 + ms(8_000));
        assert!(c.rate() > before && c.rate() <= before * 1.001 + 1e-12);
        // A second 429 near the first confirms the limit.
        assert!(c.on_rate_limited(t1 + ms(9_000), false));
        assert_eq!(c.source(), Source::Confirmed);
    }

    #[test]
    fn headers_set_the_rate_and_an_explicit_limit_caps_everything() {
        let t0 = Instant::now();
        let mut c = RateController::new(Learning::default(), 1.0, f64::INFINITY, t0);
        assert!(c.on_header_limit(600, t0));
        assert!((c.rate() - 9.9).abs() < 1e-9);
        assert_eq!(c.source(), Source::Headers);
        let mut c = RateController::new(Learning::default(), 100.0, 2.0, t0);
        assert_eq!(c.rate(), 2.0);
        c.on_header_limit(6000, t0);
        assert_eq!(c.rate(), 2.0);
        for i in 0..100 {
            c.on_saturated();
            c.on_success(t0 + ms(1000 * i));
        }
        assert_eq!(c.rate(), 2.0);
    }

    #[test]
    fn the_rate_never_drops_below_the_floor() {
        let t0 = Instant::now();
        let mut c = RateController::new(Learning::default(), 1.0, f64::INFINITY, t0);
        for i in 0..100 {
            c.on_rate_limited(t0 + ms(2000 * i), false);
        }
        assert!((c.rate() - 1.0 / 60.0).abs() < 1e-12);
    }
}
