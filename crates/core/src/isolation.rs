//! Breaker isolation: the failures of one experiment must not stop the other
//! experiments on its rate-limit key.
//!
//! The advisor keeps one breaker per key, shared by every experiment on it.
//! An experiment can fail on its own — a `timeout_s` shorter than the
//! provider's replies, prompts that only it sends and that make the provider
//! fail — and if it dominated the key's traffic, its failures alone used to
//! open the key's breaker for everyone. Here every transient failure is
//! judged per (key, experiment) before the advisor hears of it:
//!
//! - **corroborated** — another experiment on the key is failing too (its
//!   last call on the key failed transiently), or no other experiment uses
//!   the key: the provider is the likely culprit, so the failure goes to the
//!   key's breaker as before;
//! - **isolated** — the other experiments on the key are not failing: the
//!   advisor is not told, and the experiment's own streak counts it. After
//!   `experiment_breaker_failures` isolated failures in a row, the
//!   experiment's own breaker for that key opens (its calls on the key wait
//!   `experiment_breaker_cooldown`, then one probe; it gives up after
//!   `breaker_give_up` like the key's breaker). When every call of the
//!   experiment on the key failed and the other experiments succeeded on the
//!   key at least `experiment_breaker_failures` times meanwhile, waiting
//!   cannot help: the experiment errors at once, naming its last failure.
//!
//! Pure bookkeeping: no clock, no I/O.

use std::collections::HashMap;

use crate::ids::{ExperimentId, RateKey};
use crate::outcome::Outcome;

/// What to do with a call's outcome.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Verdict {
    /// Tell the advisor (false for an isolated transient failure).
    pub(crate) forward: bool,
    /// The experiment's own breaker for the key must open.
    pub(crate) trip: Option<Trip>,
    /// A success of the experiment on the key: its own breaker closes.
    pub(crate) close: bool,
}

/// Why an experiment's own breaker opens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Trip {
    /// Isolated failures in a row.
    pub(crate) failures: u32,
    /// The last failure text when the experiment never succeeded on the key
    /// and the others succeeded as often meanwhile: give up at once.
    pub(crate) hopeless: Option<String>,
    /// The last failure text.
    pub(crate) last: String,
}

#[derive(Debug, Default)]
struct Streak {
    /// Whether the experiment ever succeeded on the key (this session).
    succeeded: bool,
    failures: u32,
    /// The key's success count when the streak began.
    successes_at_start: u64,
}

#[derive(Debug, Default)]
struct KeyHealth {
    /// Experiments that use the key, with their current failure streak.
    experiments: HashMap<ExperimentId, Streak>,
    /// Successful calls on the key, all experiments together.
    successes: u64,
}

/// Failure streaks per (key, experiment). See the module documentation.
#[derive(Debug, Default)]
pub(crate) struct Isolation {
    keys: HashMap<RateKey, KeyHealth>,
}

impl Isolation {
    /// The experiment uses these keys from now on.
    pub(crate) fn register<'a>(
        &mut self,
        id: ExperimentId,
        keys: impl IntoIterator<Item = &'a RateKey>,
    ) {
        for key in keys {
            self.keys
                .entry(key.clone())
                .or_default()
                .experiments
                .entry(id)
                .or_default();
        }
    }

    /// The experiment left.
    pub(crate) fn unregister(&mut self, id: ExperimentId) {
        self.keys.retain(|_, k| {
            k.experiments.remove(&id);
            !k.experiments.is_empty()
        });
    }

    /// Judges the outcome of a call of experiment `id` on `key`.
    pub(crate) fn record(
        &mut self,
        key: &RateKey,
        id: ExperimentId,
        outcome: &Outcome,
        threshold: u32,
    ) -> Verdict {
        let health = self.keys.entry(key.clone()).or_default();
        let successes = health.successes;
        match outcome {
            Outcome::Success(_) => {
                health.successes += 1;
                health.experiments.insert(
                    id,
                    Streak {
                        succeeded: true,
                        ..Streak::default()
                    },
                );
                Verdict {
                    forward: true,
                    trip: None,
                    close: true,
                }
            }
            Outcome::Transient { message } => {
                let others_failing = health
                    .experiments
                    .iter()
                    .any(|(other, s)| *other != id && s.failures > 0);
                let alone = health.experiments.keys().all(|other| *other == id);
                let streak = health.experiments.entry(id).or_default();
                if streak.failures == 0 {
                    streak.successes_at_start = successes;
                }
                streak.failures += 1;
                if others_failing || alone {
                    return Verdict {
                        forward: true,
                        trip: None,
                        close: false,
                    };
                }
                // Hopeless: it never succeeded, and while it failed
                // `threshold` times in a row the others succeeded as many
                // times. Were the provider failing at random for everyone at
                // some rate q, this would have a chance of at most
                // q^n·(1−q)^n ≤ 4^−n (n = threshold; 10⁻⁶ for the default).
                // The texts may differ (a call cut by the engine's timeout
                // and one cut by the HTTP client's say it differently).
                let others = u64::from(threshold);
                let hopeless = !streak.succeeded
                    && successes.saturating_sub(streak.successes_at_start) >= others;
                let trip = (streak.failures >= threshold).then(|| Trip {
                    failures: streak.failures,
                    hopeless: hopeless.then(|| message.clone()),
                    last: message.clone(),
                });
                Verdict {
                    forward: false,
                    trip,
                    close: false,
                }
            }
            // Rate limits and permanent failures say nothing about breakers.
            _ => Verdict {
                forward: true,
                trip: None,
                close: false,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outcome::Reply;

    fn id(n: u128) -> ExperimentId {
        ExperimentId(uuid::Uuid::from_u128(n))
    }

    fn fail(m: &str) -> Outcome {
        Outcome::Transient { message: m.into() }
    }

    fn ok() -> Outcome {
        Outcome::Success(Reply::Task { output: "x".into() })
    }

    #[test]
    fn an_experiment_alone_on_its_key_reports_every_failure() {
        let key = RateKey::new("p", "m");
        let mut iso = Isolation::default();
        iso.register(id(1), [&key]);
        for _ in 0..20 {
            let v = iso.record(&key, id(1), &fail("503"), 3);
            assert!(v.forward && v.trip.is_none());
        }
    }

    #[test]
    fn failures_of_one_experiment_among_healthy_ones_stay_with_it() {
        let key = RateKey::new("p", "m");
        let mut iso = Isolation::default();
        iso.register(id(1), [&key]);
        iso.register(id(2), [&key]);
        assert!(!iso.record(&key, id(1), &fail("timeout"), 3).forward);
        assert!(!iso.record(&key, id(1), &fail("timeout"), 3).forward);
        assert!(iso.record(&key, id(2), &ok(), 3).forward);
        // Three failures in a row but only one success of the others: its
        // own breaker opens; it is not hopeless yet.
        let v = iso.record(&key, id(1), &fail("timeout"), 3);
        assert_eq!(v.trip.unwrap().hopeless, None);
        iso.record(&key, id(2), &ok(), 3);
        iso.record(&key, id(2), &ok(), 3);
        let v = iso.record(&key, id(1), &fail("timeout"), 3);
        assert_eq!(
            v.trip,
            Some(Trip {
                failures: 4,
                hopeless: Some("timeout".into()),
                last: "timeout".into()
            })
        );
        // Once it succeeded it is never hopeless: its own breaker opens, and
        // it may still recover.
        assert!(iso.record(&key, id(1), &ok(), 3).close);
        for m in ["a", "a", "a"] {
            iso.record(&key, id(2), &ok(), 3);
            iso.record(&key, id(2), &ok(), 3);
            iso.record(&key, id(2), &ok(), 3);
            let v = iso.record(&key, id(1), &fail(m), 3);
            assert!(!v.forward);
            if let Some(trip) = v.trip {
                assert_eq!(trip.hopeless, None);
            }
        }
    }

    #[test]
    fn failures_seen_by_two_experiments_reach_the_key_breaker() {
        let key = RateKey::new("p", "m");
        let mut iso = Isolation::default();
        iso.register(id(1), [&key]);
        iso.register(id(2), [&key]);
        assert!(!iso.record(&key, id(1), &fail("503"), 3).forward);
        assert!(iso.record(&key, id(2), &fail("503"), 3).forward);
        assert!(iso.record(&key, id(1), &fail("503"), 3).forward);
        iso.unregister(id(2));
        assert!(iso.record(&key, id(1), &fail("503"), 3).forward);
    }
}
