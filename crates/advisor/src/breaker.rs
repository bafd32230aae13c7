//! The circuit breaker of one rate-limit key (DESIGN §5), as a plain state
//! machine with `now` parameters.
//!
//! ```text
//!            threshold consecutive transient failures
//!   CLOSED ────────────────────────────────────────────▶ OPEN (open_since = now)
//!     ▲                                                    │
//!     │ success                          cooldown elapsed  │
//!     │                                                    ▼
//!     └──────────────────────────────────────────────── HALF-OPEN ── one probe permit
//!                                                          │  ▲
//!                          transient failure: OPEN again   │  │ probe lost (no outcome
//!                          (open_since kept, new cooldown) ◀┘  │ within probe_timeout):
//!                                                             │ another probe
//! ```
//!
//! - Only transient failures count; rate-limited, quota-exhausted and
//!   permanent outcomes never open the breaker, and a success resets the count.
//! - While open, outcomes of calls dispatched before it opened change nothing:
//!   the cooldown runs its course.
//! - In half-open, a success closes, a transient failure re-opens. A
//!   rate-limited or permanent outcome says nothing about the outage either
//!   way: the breaker stays half-open and the next permit is a new probe.
//! - `open_since` is when the breaker last left CLOSED; failed probes keep it,
//!   so the engine can give up on an experiment after `breaker_give_up`.
//!
//! Use it in two steps so a probe is not spent when another limit says no:
//! [`Breaker::check`] (pure) and, if the call is permitted, [`Breaker::on_permit`].

use std::time::{Duration, Instant};

use runnel_core::OutcomeClass;
use serde::{Deserialize, Serialize};

use crate::bucket::later;

/// The externally visible state of a breaker.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BreakerState {
    /// Calls flow.
    Closed,
    /// No calls until the cooldown ends.
    Open,
    /// One probe call may go (or is out).
    HalfOpen,
}

impl BreakerState {
    /// Lower-case name for metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half_open",
        }
    }

    /// A number for gauges: 0 closed, 1 half-open, 2 open.
    pub fn as_gauge(self) -> u8 {
        match self {
            BreakerState::Closed => 0,
            BreakerState::HalfOpen => 1,
            BreakerState::Open => 2,
        }
    }
}

/// The breaker's answer to "may a call go now?".
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Gate {
    /// Closed: calls flow.
    Pass,
    /// Half-open and no probe out: this call would be the probe.
    Probe {
        /// When the breaker last left CLOSED.
        open_since: Instant,
    },
    /// Open, or half-open with the probe out: not before `until`.
    Blocked {
        /// End of the cooldown, or when the outstanding probe counts as lost.
        until: Instant,
        /// When the breaker last left CLOSED.
        open_since: Instant,
    },
}

/// What a recorded outcome did to the breaker.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transition {
    /// CLOSED → OPEN (a trip).
    Opened,
    /// HALF-OPEN → OPEN (the probe failed).
    Reopened,
    /// HALF-OPEN → CLOSED (the probe succeeded).
    Closed,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Closed {
        failures: u32,
    },
    Open {
        since: Instant,
        until: Instant,
    },
    HalfOpen {
        since: Instant,
        /// When the outstanding probe counts as lost; `None`: no probe out.
        probe_deadline: Option<Instant>,
    },
}

/// A circuit breaker.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Breaker {
    threshold: u32,
    cooldown: Duration,
    probe_timeout: Duration,
    state: State,
    trips: u64,
}

impl Breaker {
    /// A closed breaker that opens after `threshold` (at least 1) consecutive
    /// transient failures, stays open for `cooldown`, and waits
    /// `probe_timeout` for a probe's outcome.
    pub fn new(threshold: u32, cooldown: Duration, probe_timeout: Duration) -> Self {
        Self {
            threshold: threshold.max(1),
            cooldown,
            probe_timeout,
            state: State::Closed { failures: 0 },
            trips: 0,
        }
    }

    /// The state at `now` (an open breaker whose cooldown has ended is half-open).
    pub fn state(&self, now: Instant) -> BreakerState {
        match self.state {
            State::Closed { .. } => BreakerState::Closed,
            State::Open { until, .. } if now < until => BreakerState::Open,
            State::Open { .. } | State::HalfOpen { .. } => BreakerState::HalfOpen,
        }
    }

    /// When the breaker last left CLOSED, while it is not closed.
    pub fn open_since(&self) -> Option<Instant> {
        match self.state {
            State::Closed { .. } => None,
            State::Open { since, .. } | State::HalfOpen { since, .. } => Some(since),
        }
    }

    /// Consecutive transient failures counted while closed.
    pub fn failures(&self) -> u32 {
        match self.state {
            State::Closed { failures } => failures,
            _ => 0,
        }
    }

    /// How many times the breaker went from CLOSED to OPEN.
    pub fn trips(&self) -> u64 {
        self.trips
    }

    /// May a call go at `now`? Pure: see [`on_permit`](Self::on_permit).
    pub fn check(&self, now: Instant) -> Gate {
        match self.state {
            State::Closed { .. } => Gate::Pass,
            State::Open { since, until } if now < until => Gate::Blocked {
                until,
                open_since: since,
            },
            State::Open { since, .. } => Gate::Probe { open_since: since },
            State::HalfOpen {
                since,
                probe_deadline: Some(deadline),
            } if now < deadline => Gate::Blocked {
                until: deadline,
                open_since: since,
            },
            State::HalfOpen { since, .. } => Gate::Probe { open_since: since },
        }
    }

    /// Notes that a call was permitted at `now` after [`check`](Self::check)
    /// said [`Gate::Probe`]: the probe is out until its outcome or `probe_timeout`.
    pub fn on_permit(&mut self, now: Instant) {
        if let Gate::Probe { open_since } = self.check(now) {
            self.state = State::HalfOpen {
                since: open_since,
                probe_deadline: Some(later(now, self.probe_timeout)),
            };
        }
    }

    /// Takes the outcome of a permitted call.
    pub fn record(&mut self, class: OutcomeClass, now: Instant) -> Option<Transition> {
        match (self.state, class) {
            (State::Closed { .. }, OutcomeClass::Success) => {
                self.state = State::Closed { failures: 0 };
                None
            }
            (State::Closed { failures }, OutcomeClass::Transient) => {
                let failures = failures.saturating_add(1);
                if failures >= self.threshold {
                    self.trips += 1;
                    self.state = State::Open {
                        since: now,
                        until: later(now, self.cooldown),
                    };
                    Some(Transition::Opened)
                } else {
                    self.state = State::Closed { failures };
                    None
                }
            }
            (State::HalfOpen { .. }, OutcomeClass::Success) => {
                self.state = State::Closed { failures: 0 };
                Some(Transition::Closed)
            }
            (State::HalfOpen { since, .. }, OutcomeClass::Transient) => {
                self.state = State::Open {
                    since,
                    until: later(now, self.cooldown),
                };
                Some(Transition::Reopened)
            }
            (State::HalfOpen { since, .. }, _) => {
                // Rate limited or permanent: no verdict; the next permit probes.
                self.state = State::HalfOpen {
                    since,
                    probe_deadline: None,
                };
                None
            }
            // Closed + rate limited / permanent: never counts.
            // Open: late outcomes of calls sent before the trip change nothing.
            (State::Closed { .. }, _) | (State::Open { .. }, _) => None,
        }
    }

    /// The breaker's state as durations relative to `now`, for persistence.
    pub fn snapshot(&self, now: Instant) -> BreakerSnapshot {
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        match self.state {
            State::Closed { failures } => BreakerSnapshot::Closed { failures },
            State::Open { since, until } => BreakerSnapshot::Open {
                open_for_ms: ms(now.saturating_duration_since(since)),
                cooldown_left_ms: ms(until.saturating_duration_since(now)),
            },
            State::HalfOpen { since, .. } => BreakerSnapshot::HalfOpen {
                open_for_ms: ms(now.saturating_duration_since(since)),
            },
        }
    }

    /// Restores a snapshot taken with [`snapshot`](Self::snapshot) as of `now`.
    /// A probe that was out is treated as lost: the next permit probes again.
    pub fn restore(&mut self, snapshot: &BreakerSnapshot, trips: u64, now: Instant) {
        let back = |ms: u64| now.checked_sub(Duration::from_millis(ms)).unwrap_or(now);
        self.trips = trips;
        self.state = match *snapshot {
            BreakerSnapshot::Closed { failures } => State::Closed {
                failures: failures.min(self.threshold.saturating_sub(1)),
            },
            BreakerSnapshot::Open {
                open_for_ms,
                cooldown_left_ms,
            } => State::Open {
                since: back(open_for_ms),
                until: later(
                    now,
                    Duration::from_millis(cooldown_left_ms).min(self.cooldown),
                ),
            },
            BreakerSnapshot::HalfOpen { open_for_ms } => State::HalfOpen {
                since: back(open_for_ms),
                probe_deadline: None,
            },
        };
    }
}

/// A breaker's state as plain durations, for persistence (see
/// [`crate::KeySnapshot`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum BreakerSnapshot {
    /// Closed, with this many consecutive transient failures counted.
    Closed {
        /// Consecutive transient failures.
        failures: u32,
    },
    /// Open.
    Open {
        /// How long it had been open (since it left CLOSED), in milliseconds.
        open_for_ms: u64,
        /// Cooldown left, in milliseconds.
        cooldown_left_ms: u64,
    },
    /// Half-open.
    HalfOpen {
        /// How long it had been open (since it left CLOSED), in milliseconds.
        open_for_ms: u64,
    },
}

impl Default for BreakerSnapshot {
    fn default() -> Self {
        BreakerSnapshot::Closed { failures: 0 }
    }
}

impl BreakerSnapshot {
    /// The snapshot as it would read `elapsed` later (for a store that knows
    /// how long ago it was saved): open time grows, cooldown shrinks.
    pub fn aged(self, elapsed: Duration) -> Self {
        let e = u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX);
        match self {
            BreakerSnapshot::Closed { .. } => self,
            BreakerSnapshot::Open {
                open_for_ms,
                cooldown_left_ms,
            } => BreakerSnapshot::Open {
                open_for_ms: open_for_ms.saturating_add(e),
                cooldown_left_ms: cooldown_left_ms.saturating_sub(e),
            },
            BreakerSnapshot::HalfOpen { open_for_ms } => BreakerSnapshot::HalfOpen {
                open_for_ms: open_for_ms.saturating_add(e),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: OutcomeClass = OutcomeClass::Transient;
    const S: OutcomeClass = OutcomeClass::Success;

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    fn breaker() -> Breaker {
        Breaker::new(3, secs(30), secs(100))
    }

    /// A breaker that opened at `t0`.
    fn tripped(t0: Instant) -> Breaker {
        let mut b = breaker();
        for _ in 0..3 {
            b.record(T, t0);
        }
        b
    }

    fn blocked(until: Instant, open_since: Instant) -> Gate {
        Gate::Blocked { until, open_since }
    }

    #[test]
    fn opens_after_threshold_consecutive_transient_failures_only() {
        let t0 = Instant::now();
        let mut b = breaker();
        assert_eq!(b.record(T, t0), None);
        assert_eq!(b.record(T, t0), None);
        assert_eq!(b.record(S, t0), None, "a success resets the count");
        assert_eq!(b.failures(), 0);
        for class in [
            OutcomeClass::RateLimited,
            OutcomeClass::QuotaExhausted,
            OutcomeClass::Permanent,
        ] {
            for _ in 0..10 {
                assert_eq!(b.record(class, t0), None);
            }
        }
        assert_eq!(b.check(t0), Gate::Pass);
        b.record(T, t0);
        b.record(OutcomeClass::RateLimited, t0);
        b.record(T, t0);
        assert_eq!(b.failures(), 2, "429s neither count nor reset");
        assert_eq!(b.record(T, t0), Some(Transition::Opened));
        assert_eq!(b.state(t0), BreakerState::Open);
        assert_eq!(b.trips(), 1);
        assert_eq!(b.check(t0 + secs(1)), blocked(t0 + secs(30), t0));
    }

    #[test]
    fn half_open_lets_one_probe_and_its_outcome_decides() {
        let t0 = Instant::now();
        let mut b = tripped(t0);
        let t1 = t0 + secs(30);
        assert_eq!(b.state(t1), BreakerState::HalfOpen);
        assert_eq!(b.check(t1), Gate::Probe { open_since: t0 });
        b.on_permit(t1);
        assert_eq!(b.check(t1), blocked(t1 + secs(100), t0));
        // The probe fails: open again, open_since kept, new cooldown.
        assert_eq!(b.record(T, t1 + secs(2)), Some(Transition::Reopened));
        assert_eq!(b.check(t1 + secs(3)), blocked(t1 + secs(32), t0));
        assert_eq!(b.trips(), 1, "a failed probe is not a new trip");
        let t2 = t1 + secs(32);
        b.on_permit(t2);
        assert_eq!(b.record(S, t2 + secs(1)), Some(Transition::Closed));
        assert_eq!(b.check(t2 + secs(1)), Gate::Pass);
        assert_eq!(b.open_since(), None);
    }

    #[test]
    fn a_lost_probe_does_not_wedge_the_key() {
        let t0 = Instant::now();
        let mut b = tripped(t0);
        let t1 = t0 + secs(30);
        b.on_permit(t1);
        assert!(matches!(b.check(t1 + secs(99)), Gate::Blocked { .. }));
        assert_eq!(b.check(t1 + secs(100)), Gate::Probe { open_since: t0 });
    }

    #[test]
    fn a_probe_ending_rate_limited_frees_the_probe_without_closing() {
        let t0 = Instant::now();
        let mut b = tripped(t0);
        let t1 = t0 + secs(30);
        b.on_permit(t1);
        assert_eq!(b.record(OutcomeClass::RateLimited, t1), None);
        assert_eq!(b.state(t1), BreakerState::HalfOpen);
        assert_eq!(b.check(t1), Gate::Probe { open_since: t0 });
    }

    #[test]
    fn outcomes_while_open_change_nothing() {
        let t0 = Instant::now();
        let mut b = tripped(t0);
        for class in [S, T, OutcomeClass::Permanent] {
            assert_eq!(b.record(class, t0 + secs(5)), None);
        }
        assert_eq!(b.check(t0 + secs(6)), blocked(t0 + secs(30), t0));
    }

    #[test]
    fn huge_durations_do_not_panic() {
        let t0 = Instant::now();
        let mut b = Breaker::new(1, Duration::MAX, Duration::MAX);
        assert_eq!(b.record(T, t0), Some(Transition::Opened));
        assert!(matches!(b.check(t0), Gate::Blocked { .. }));
        b.restore(
            &BreakerSnapshot::Open {
                open_for_ms: u64::MAX,
                cooldown_left_ms: u64::MAX,
            },
            u64::MAX,
            t0,
        );
        assert!(matches!(b.check(t0), Gate::Blocked { .. }));
    }

    #[test]
    fn snapshots_round_trip_and_age() {
        let t0 = Instant::now();
        let b = tripped(t0);
        let now = t0 + secs(10);
        let snap = b.snapshot(now);
        assert_eq!(
            snap,
            BreakerSnapshot::Open {
                open_for_ms: 10_000,
                cooldown_left_ms: 20_000
            }
        );
        let later = now + secs(1000);
        let mut c = breaker();
        c.restore(&snap.aged(secs(5)), 1, later);
        assert_eq!(
            c.check(later),
            Gate::Blocked {
                until: later + secs(15),
                open_since: later - secs(15)
            }
        );
        assert_eq!(c.trips(), 1);
        let json = serde_json::to_string(&snap).unwrap();
        assert_eq!(
            serde_json::from_str::<BreakerSnapshot>(&json).unwrap(),
            snap
        );
    }
}
