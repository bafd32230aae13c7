//! Property tests of quota exhaustion (DESIGN §6, issue 12 item 3) on the
//! discrete-event simulation: a key that only answers "quota used up" makes
//! the experiment wait visibly, probe at most once per interval, and go to
//! ERROR naming the quota after `rate_limit_give_up` — never before, never
//! later than one probe interval after — with no call after the ERROR; a
//! quota that comes back in time lets it complete; resume continues it.

use std::time::Duration;

use proptest::prelude::*;

use super::sim::{Behaviour, ExpSpec, Sim};
use crate::ports::{Finish, LogLevel};
use crate::{Config, ExperimentId, OutcomeClass};

fn cases() -> u32 {
    if std::env::var_os("RUNNEL_TEST_FULL").is_some() {
        1024
    } else {
        128
    }
}

#[derive(Clone, Debug)]
struct Case {
    seed: u64,
    slots: usize,
    give_up_s: u64,
    probe_s: u64,
    /// The `retry_after` of each quota answer, if the provider states one.
    retry_after_s: Option<u64>,
    examples: usize,
    evaluators: usize,
    latency_ms: u64,
}

fn case() -> impl Strategy<Value = Case> {
    (
        any::<u64>(),
        1usize..6,
        1u64..4000,
        1u64..900,
        proptest::option::of(1u64..20_000),
        1usize..15,
        0usize..2,
        1u64..3000,
    )
        .prop_map(
            |(seed, slots, give_up_s, probe_s, retry_after_s, examples, evaluators, latency_ms)| {
                Case {
                    seed,
                    slots,
                    give_up_s,
                    probe_s,
                    retry_after_s,
                    examples,
                    evaluators,
                    latency_ms,
                }
            },
        )
}

/// A case whose probes (or stated waits) are at most a third of the
/// give-up, so the quota can come back in time.
fn back_in_time_case() -> impl Strategy<Value = Case> {
    case().prop_map(|mut c| {
        c.give_up_s = c.give_up_s.max(60);
        let third = c.give_up_s / 3;
        c.probe_s = 1 + c.probe_s % third;
        c.retry_after_s = c.retry_after_s.map(|r| 1 + r % third);
        c
    })
}

fn sim(c: &Case) -> Sim {
    let config = Config {
        max_concurrency: c.slots,
        rate_limit_give_up: Duration::from_secs(c.give_up_s),
        ..Config::default()
    };
    let mut sim = Sim::new(config, Behaviour::reliable(c.latency_ms), c.seed);
    sim.advisor.quota_probe = Duration::from_secs(c.probe_s);
    sim.quota = Some(("spent".into(), c.retry_after_s.map(Duration::from_secs)));
    sim
}

fn spec(c: &Case, provider: &str) -> ExpSpec {
    ExpSpec {
        examples: c.examples,
        repetitions: 1,
        evaluators: c.evaluators,
        cap: None,
        provider: provider.into(),
    }
}

/// When the first answer of the key came back (the start of its streak).
fn first_answer(sim: &Sim, id: ExperimentId, latency_ms: u64) -> Duration {
    let first = sim
        .dispatches
        .iter()
        .find(|d| d.experiment == id)
        .map(|d| d.at)
        .expect("a call was made");
    first + Duration::from_millis(latency_ms)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), ..ProptestConfig::default() })]

    /// A key that only answers quota errors: ERROR within give-up + one
    /// probe interval of its first answer, never before; the last error
    /// names the quota; the wait was shown; at most one probe per
    /// interval; no call after the ERROR; no run recorded as failed; an
    /// experiment on another provider is not held up.
    #[test]
    fn a_key_that_only_answers_quota_errors_ends_in_error_within_the_give_up(c in case()) {
        let mut sim = sim(&c);
        let id = sim.add(&spec(&c, "spent"));
        let other = sim.add(&spec(&c, "fine"));
        sim.run(Duration::from_secs(1_000_000), |_| {});
        prop_assert!(sim.violations.is_empty(), "{:?}", sim.violations);

        let finished = sim.finished.get(&id).cloned().unwrap_or_default();
        prop_assert_eq!(finished.len(), 1, "{:?}", finished);
        let Finish::Error(message) = &finished[0] else {
            return Err(TestCaseError::fail(format!("ended {finished:?}")));
        };
        prop_assert!(message.starts_with("quota exhausted: provider `spent`"), "{}", message);
        prop_assert!(message.contains("insufficient_quota"), "{}", message);

        let give_up = Duration::from_secs(c.give_up_s);
        let probe = Duration::from_secs(c.probe_s);
        let latency = Duration::from_millis(c.latency_ms);
        let start = first_answer(&sim, id, c.latency_ms);
        let ended = sim.finished_at[&id];
        prop_assert!(ended >= start + give_up, "ERROR at {ended:?}, streak from {start:?}");
        // The give-up is decided at `start + give_up` exactly (well within
        // one probe interval); the status is written once the call still
        // in flight then (a probe) has come back.
        prop_assert!(ended <= start + give_up + latency, "ERROR at {ended:?}, streak from {start:?}");
        prop_assert!(ended <= start + give_up + probe + latency);

        // No call for the experiment after the give-up, none after the ERROR.
        let last_call = sim.dispatches.iter().filter(|d| d.experiment == id).map(|d| d.at).max();
        prop_assert!(last_call.is_some_and(|t| t < start + give_up && t <= ended));

        // The wait was shown before the ERROR, and logged.
        prop_assert!(sim.waiting.iter().any(|&(t, e, on)| e == id && on && t <= ended));
        let logs = sim.store.logs(id);
        prop_assert!(logs.iter().any(|(level, m)| *level == LogLevel::Warn && m.starts_with("waiting on quota")), "{:?}", logs);

        // Waiting is not failing: no run was written as failed.
        prop_assert!(sim.store.runs(id).iter().all(|r| r.record.output.is_some()));

        // One probe per interval (or per stated retry-after) after the
        // first answer, besides the calls already in flight then.
        let interval = c.retry_after_s.map_or(probe, |r| Duration::from_secs(r).min(probe).max(Duration::from_secs(1)));
        let later = sim.dispatches.iter().filter(|d| d.experiment == id && d.at >= start).count() as u64;
        let bound = give_up.as_secs() / interval.as_secs().max(1) + 2;
        prop_assert!(later <= bound, "{later} calls after the first quota answer, bound {bound}");

        // The other provider's experiment completed.
        prop_assert_eq!(sim.finished.get(&other).cloned(), Some(vec![Finish::Completed]));
    }

    /// A quota that is back before the give-up: the experiment completes,
    /// the wait is shown and then cleared, nothing failed.
    #[test]
    fn a_quota_back_in_time_completes(c in back_in_time_case(), back in 0.0f64..0.8) {
        let mut sim = sim(&c);
        // The probes (one per stated retry-after, else per probe interval)
        // must find the quota back before the give-up.
        let give_up = Duration::from_secs(c.give_up_s);
        let interval = Duration::from_secs(c.retry_after_s.unwrap_or(c.probe_s));
        prop_assume!(interval * 2 + Duration::from_secs(10) < give_up);
        sim.quota_until = (give_up / 2).mul_f64(back);
        let id = sim.add(&spec(&c, "spent"));
        sim.run(Duration::from_secs(1_000_000), |_| {});
        prop_assert!(sim.violations.is_empty(), "{:?}", sim.violations);
        prop_assert_eq!(sim.finished.get(&id).cloned(), Some(vec![Finish::Completed]));
        prop_assert!(sim.store.runs(id).iter().all(|r| r.record.output.is_some()));
        let quota_seen = sim.outcomes.values().flatten().any(|c| *c == OutcomeClass::QuotaExhausted);
        if quota_seen && sim.waiting.iter().any(|&(_, e, on)| e == id && on) {
            // Shown, then cleared by the success that proved it back.
            prop_assert_eq!(sim.waiting.last().map(|w| w.2), Some(false), "{:?}", sim.waiting);
        }
    }
}

/// After the ERROR, the user resumes once the quota is back: the
/// experiment continues where it was and completes.
#[test]
fn resume_after_the_quota_error_continues() {
    let c = Case {
        seed: 7,
        slots: 4,
        give_up_s: 1800,
        probe_s: 300,
        retry_after_s: None,
        examples: 10,
        evaluators: 1,
        latency_ms: 200,
    };
    let mut sim = sim(&c);
    sim.quota_until = Duration::from_secs(3000);
    let id = sim.add(&spec(&c, "spent"));
    let resume_at = Duration::from_secs(4000);
    sim.wakeups.push(resume_at);
    let mut resumed = false;
    sim.run(Duration::from_secs(1_000_000), |s| {
        if !resumed && s.now - s.start >= resume_at {
            resumed = true;
            s.resume(id);
        }
    });
    assert!(sim.violations.is_empty(), "{:?}", sim.violations);
    let finished = sim.finished.get(&id).cloned().unwrap_or_default();
    assert_eq!(finished.len(), 2, "{finished:?}");
    assert!(matches!(&finished[0], Finish::Error(m) if m.contains("quota")));
    assert_eq!(finished[1], Finish::Completed);
    assert_eq!(sim.store.runs(id).len(), 10);
    assert!(sim.store.runs(id).iter().all(|r| r.record.output.is_some()));
}

/// A key that answers nothing but plain 429s (no quota named) also ends in
/// ERROR after the give-up, with a `last_error` that says so; the same
/// key answering 429s between successes never gives up.
#[test]
fn only_rate_limits_for_the_give_up_is_an_error_and_successes_reset_it() {
    let config = Config {
        max_concurrency: 2,
        rate_limit_give_up: Duration::from_secs(600),
        backoff_base: Duration::from_secs(1),
        backoff_max: Duration::from_secs(30),
        ..Config::default()
    };
    let mut behaviour = Behaviour::reliable(100);
    behaviour.p_rate_limited = 1.0;
    let mut sim = Sim::new(config.clone(), behaviour.clone(), 3);
    let busy = |examples| ExpSpec {
        examples,
        repetitions: 1,
        evaluators: 0,
        cap: None,
        provider: "busy".into(),
    };
    let id = sim.add(&busy(5));
    sim.run(Duration::from_secs(1_000_000), |_| {});
    assert!(sim.violations.is_empty(), "{:?}", sim.violations);
    let finished = sim.finished.get(&id).cloned().unwrap_or_default();
    let [Finish::Error(message)] = finished.as_slice() else {
        panic!("ended {finished:?}");
    };
    assert!(
        message.starts_with("rate limited without end: provider `busy`"),
        "{message}"
    );
    let ended = sim.finished_at[&id];
    let start = first_answer(&sim, id, 100);
    assert!(ended >= start + Duration::from_secs(600), "{ended:?}");
    assert!(ended <= start + Duration::from_secs(600) + Duration::from_millis(100));
    // Nothing was written as failed, and the wait was not a quota wait.
    assert!(sim.store.runs(id).is_empty());
    assert!(sim.waiting.is_empty());

    // Nine 429s in ten, for as long as it takes: successes keep resetting
    // the streak, so it completes.
    behaviour.p_rate_limited = 0.9;
    let mut sim = Sim::new(config, behaviour, 3);
    let id = sim.add(&busy(20));
    sim.run(Duration::from_secs(1_000_000), |_| {});
    assert!(sim.violations.is_empty(), "{:?}", sim.violations);
    assert_eq!(
        sim.finished.get(&id).cloned(),
        Some(vec![Finish::Completed])
    );
}
