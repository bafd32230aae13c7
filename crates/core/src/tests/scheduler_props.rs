//! Property tests of the scheduler (P1–P8 of the core issue), run on the
//! discrete-event simulation in `sim.rs` with random experiments, random
//! outcomes and random store delays. Invariants checked at every step are
//! collected in `Sim::violations`; end-state properties are checked here.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use proptest::prelude::*;

use super::sim::{Behaviour, ExpSpec, Sim};
use crate::ports::{Departure, Finish};
use crate::work::WorkKey;
use crate::{Config, ExperimentId, OutcomeClass};

fn cases() -> u32 {
    if std::env::var_os("RUNNEL_TEST_FULL").is_some() {
        1024
    } else {
        96
    }
}

#[derive(Clone, Debug)]
struct Params {
    seed: u64,
    slots: usize,
    high: usize,
    low: usize,
    max_retries: u32,
    behaviour: Behaviour,
    experiments: Vec<ExpSpec>,
}

fn exp_spec() -> impl Strategy<Value = ExpSpec> {
    (
        0usize..25,
        1u32..4,
        0usize..3,
        proptest::option::of(1u32..4),
        0usize..3,
    )
        .prop_map(
            |(examples, repetitions, evaluators, cap, provider)| ExpSpec {
                examples,
                repetitions,
                evaluators,
                cap,
                provider: format!("p{provider}"),
            },
        )
}

fn params() -> impl Strategy<Value = Params> {
    (
        any::<u64>(),
        1usize..8,
        (1usize..12).prop_flat_map(|high| (Just(high), 0..high)),
        0u32..4,
        (0.0f64..0.3, 0.0f64..0.3, 0.0f64..0.15),
        (0u64..50, 0u64..400),
        (0u64..5, 0u64..20),
        proptest::collection::vec(exp_spec(), 1..5),
    )
        .prop_map(
            |(
                seed,
                slots,
                (high, low),
                max_retries,
                (rl, tr, perm),
                (lat_lo, lat_span),
                (st_lo, st_span),
                experiments,
            )| Params {
                seed,
                slots,
                high,
                low,
                max_retries,
                behaviour: Behaviour {
                    p_rate_limited: rl,
                    p_transient: tr,
                    p_permanent: perm,
                    latency_ms: (lat_lo, lat_lo + lat_span),
                    store_ms: (st_lo, st_lo + st_span),
                },
                experiments,
            },
        )
}

fn config(p: &Params) -> Config {
    Config {
        max_concurrency: p.slots,
        high_watermark: p.high,
        low_watermark: p.low,
        max_retries: p.max_retries,
        backoff_base: Duration::from_millis(100),
        backoff_max: Duration::from_secs(2),
        ..Config::default()
    }
}

/// P3: every identity ended in exactly one terminal result that matches the
/// outcomes its calls got; successes have every annotation.
fn check_results(sim: &Sim, id: ExperimentId, max_retries: u32) -> Result<(), TestCaseError> {
    let row = sim.store.experiment(id).expect("experiment exists");
    let runs = sim.store.runs(id);
    let writes = sim.store.accepted_writes(id);
    for run in &runs {
        let work = WorkKey::Task(run.key);
        prop_assert_eq!(writes.get(&work).copied(), Some(1), "writes of {:?}", work);
        check_terminal(
            &sim.outcomes,
            id,
            work,
            run.record.output.is_some(),
            max_retries,
        )?;
    }
    let annotations = sim.store.annotations(id);
    let successes: Vec<_> = runs.iter().filter(|r| r.record.output.is_some()).collect();
    prop_assert_eq!(
        annotations.len(),
        successes.len() * row.plan.evaluators.len()
    );
    for a in &annotations {
        let work = WorkKey::Eval(a.key);
        prop_assert_eq!(writes.get(&work).copied(), Some(1), "writes of {:?}", work);
        check_terminal(
            &sim.outcomes,
            id,
            work,
            a.record.error.is_none(),
            max_retries,
        )?;
    }
    Ok(())
}

fn check_terminal(
    outcomes: &HashMap<(ExperimentId, WorkKey), Vec<OutcomeClass>>,
    id: ExperimentId,
    work: WorkKey,
    succeeded: bool,
    max_retries: u32,
) -> Result<(), TestCaseError> {
    let seen = outcomes.get(&(id, work)).cloned().unwrap_or_default();
    let last = seen.last().copied();
    let transient = seen
        .iter()
        .filter(|c| **c == OutcomeClass::Transient)
        .count() as u32;
    match last {
        Some(OutcomeClass::Success) => prop_assert!(succeeded, "{work:?}: {seen:?}"),
        Some(OutcomeClass::Permanent) => prop_assert!(!succeeded, "{work:?}: {seen:?}"),
        Some(OutcomeClass::Transient) => {
            prop_assert!(!succeeded, "{work:?}: {seen:?}");
            prop_assert_eq!(transient, max_retries + 1, "{:?}: {:?}", work, seen);
        }
        other => prop_assert!(false, "{work:?} ended with {other:?}: {seen:?}"),
    }
    // Transient failures before the end never exceed the retry budget, and
    // rate limits never count toward it.
    prop_assert!(transient <= max_retries + 1);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), ..ProptestConfig::default() })]

    /// P1, P2, P3, P4, P7, P8 over random experiments and outcomes.
    #[test]
    fn every_identity_ends_in_exactly_one_result(p in params()) {
        let mut sim = Sim::new(config(&p), p.behaviour.clone(), p.seed);
        sim.check_priority = true;
        for spec in &p.experiments {
            sim.add(spec);
        }
        sim.run(Duration::from_secs(1_000_000), |_| {});
        prop_assert!(sim.violations.is_empty(), "{:?}", sim.violations);
        for &id in &sim.experiments.clone() {
            // P8: completion fired exactly once.
            prop_assert_eq!(sim.finished.get(&id).cloned(), Some(vec![Finish::Completed]));
            check_results(&sim, id, p.max_retries)?;
        }
        prop_assert!(sim.scheduler.is_empty());
        prop_assert_eq!(sim.scheduler.slots_in_use(), 0);
    }

    /// P6, and P2/P3 across sessions: experiments stopped at random moments
    /// dispatch nothing more, record what was in flight, and complete after a
    /// resume with no identity run twice at once.
    #[test]
    fn stop_and_resume_at_random_moments(p in params(), stops in proptest::collection::vec((0u64..3000, 0usize..4), 1..6)) {
        let mut sim = Sim::new(config(&p), p.behaviour.clone(), p.seed);
        for spec in &p.experiments {
            sim.add(spec);
        }
        let mut plan: Vec<(Duration, usize)> = stops
            .iter()
            .map(|&(ms, i)| (Duration::from_millis(ms), i % p.experiments.len()))
            .collect();
        plan.sort();
        sim.wakeups = plan.iter().map(|(at, _)| *at).collect();
        let ids = sim.experiments.clone();
        sim.run(Duration::from_secs(1_000_000), |sim| {
            let elapsed = sim.now - sim.start;
            while let Some(&(at, i)) = plan.first() {
                if at > elapsed {
                    break;
                }
                plan.remove(0);
                let id = ids[i];
                if sim.scheduler.is_running(id) {
                    sim.stop(id);
                }
            }
            // Resume what was stopped and has fully departed.
            for &id in &ids {
                if sim.stopped.contains(&id) && !sim.scheduler.contains(id) && plan.is_empty() {
                    sim.resume(id);
                }
            }
        });
        prop_assert!(sim.violations.is_empty(), "{:?}", sim.violations);
        for &id in &ids {
            let done = sim.finished.get(&id).cloned().unwrap_or_default();
            prop_assert_eq!(done, vec![Finish::Completed], "experiment {}", id);
            for why in sim.departed.get(&id).cloned().unwrap_or_default() {
                prop_assert_eq!(why, Departure::Stopped);
            }
            let row = sim.store.experiment(id).expect("exists");
            let runs = sim.store.runs(id);
            let successes = runs.iter().filter(|r| r.record.output.is_some()).count();
            prop_assert_eq!(sim.store.annotations(id).len(), successes * row.plan.evaluators.len());
        }
    }

    /// P5: with K always-ready experiments, dispatch counts never differ by
    /// more than one.
    #[test]
    fn round_robin_keeps_counts_within_one(k in 2usize..8, slots in 1usize..10, latency in 1u64..50) {
        let config = Config { max_concurrency: slots, high_watermark: 1000, low_watermark: 100, ..Config::default() };
        let mut sim = Sim::new(config, Behaviour::reliable(latency), 7);
        for _ in 0..k {
            sim.add(&ExpSpec { examples: 300, repetitions: 1, evaluators: 0, cap: None, provider: "free".into() });
        }
        sim.run(Duration::from_secs(3600), |_| {});
        prop_assert!(sim.violations.is_empty(), "{:?}", sim.violations);
        let mut counts: HashMap<ExperimentId, usize> = sim.experiments.iter().map(|&id| (id, 0)).collect();
        for d in &sim.dispatches {
            *counts.entry(d.experiment).or_default() += 1;
            let max = *counts.values().max().unwrap_or(&0);
            let min = *counts.values().min().unwrap_or(&0);
            if max >= 300 {
                break;
            }
            prop_assert!(max - min <= 1, "counts {:?} after {:?}", counts, d);
        }
    }

    /// P5: an experiment whose key never gets a permit does not change when
    /// or what the others dispatch.
    #[test]
    fn throttled_experiment_does_not_slow_the_others(k in 1usize..5, slots in 1usize..6, latency in 1u64..40) {
        let config = Config { max_concurrency: slots, ..Config::default() };
        let spec = ExpSpec { examples: 40, repetitions: 1, evaluators: 1, cap: None, provider: "free".into() };
        let run = |with_throttled: bool| {
            let mut sim = Sim::new(config.clone(), Behaviour::reliable(latency), 11);
            sim.advisor.rates.insert("stuck".into(), 0.0);
            for _ in 0..k {
                sim.add(&spec);
            }
            if with_throttled {
                sim.add(&ExpSpec { provider: "stuck".into(), ..spec.clone() });
            }
            sim.run(Duration::from_secs(600), |_| {});
            let others: Vec<_> = sim.experiments[..k].to_vec();
            // Run ids differ between the two stores; compare times, owners,
            // attempts and task identities.
            let log: Vec<_> = sim
                .dispatches
                .iter()
                .filter(|d| others.contains(&d.experiment))
                .map(|d| {
                    let task = match d.work {
                        WorkKey::Task(key) => Some(key),
                        WorkKey::Eval(_) => None,
                    };
                    (d.at, d.experiment, d.attempt, task)
                })
                .collect();
            (log, sim.violations)
        };
        let (alone, v1) = run(false);
        let (beside, v2) = run(true);
        prop_assert!(v1.is_empty() && v2.is_empty(), "{:?} {:?}", v1, v2);
        prop_assert_eq!(alone.len(), beside.len());
        let first_difference = alone.iter().zip(&beside).position(|(a, b)| a != b);
        prop_assert_eq!(first_difference, None, "dispatch logs differ");
    }
}

/// A simulation with `breaker_give_up` = `give_up` in which the breaker of
/// provider `down` has been open since the start.
fn sim_with_down_open(give_up: Duration) -> Sim {
    let config = Config {
        breaker_give_up: give_up,
        ..Config::default()
    };
    let mut sim = Sim::new(config, Behaviour::reliable(5), 3);
    sim.advisor.open.insert("down".into(), sim.start);
    sim
}

/// `examples` tasks on provider `down`, one repetition, no evaluators.
fn on_down(examples: usize) -> ExpSpec {
    ExpSpec {
        examples,
        repetitions: 1,
        evaluators: 0,
        cap: None,
        provider: "down".into(),
    }
}

/// An experiment whose needed key keeps its breaker open past
/// `breaker_give_up` is set to ERROR naming the provider; the others go on.
#[test]
fn open_breaker_past_give_up_errors_the_experiment_only() {
    let mut sim = sim_with_down_open(Duration::from_secs(10));
    let start = sim.start;
    let down = sim.add(&on_down(5));
    let up = sim.add(&ExpSpec {
        examples: 5,
        repetitions: 1,
        evaluators: 1,
        cap: None,
        provider: "up".into(),
    });
    sim.run(Duration::from_secs(3600), |_| {});
    assert!(sim.violations.is_empty(), "{:?}", sim.violations);
    assert_eq!(sim.finished[&up], vec![Finish::Completed]);
    let Finish::Error(message) = &sim.finished[&down][0] else {
        panic!("expected an error, got {:?}", sim.finished[&down]);
    };
    assert!(message.contains("`down`"), "{message}");
    assert!(sim.now - start >= Duration::from_secs(10));
    assert!(sim.dispatches.iter().all(|d| d.experiment != down));
    let logs = sim.store.logs(down);
    assert!(
        logs.iter()
            .any(|(_, m)| m.contains("circuit breaker is open")),
        "{logs:?}"
    );
}

/// With give-up 0 (the seed's behaviour) the experiment errors at once.
#[test]
fn give_up_zero_errors_at_once() {
    let mut sim = sim_with_down_open(Duration::ZERO);
    let down = sim.add(&on_down(3));
    sim.run(Duration::from_secs(3600), |_| {});
    assert!(matches!(sim.finished[&down][..], [Finish::Error(_)]));
    assert!(sim.now - sim.start < Duration::from_millis(10));
}

/// An empty dataset completes at once.
#[test]
fn empty_dataset_completes_at_once() {
    let mut sim = Sim::new(Config::default(), Behaviour::reliable(5), 1);
    let id = sim.add(&ExpSpec {
        examples: 0,
        repetitions: 3,
        evaluators: 2,
        cap: None,
        provider: "p".into(),
    });
    let started: Instant = sim.now;
    sim.run(Duration::from_secs(60), |_| {});
    assert_eq!(sim.finished[&id], vec![Finish::Completed]);
    assert_eq!(sim.now, started);
}

/// A resumed experiment retries runs that failed in an earlier session and
/// scores runs that lack annotations, without re-running successes.
#[test]
fn resume_retries_earlier_failures_and_scores_missing_annotations() {
    let behaviour = Behaviour {
        p_permanent: 0.5,
        ..Behaviour::reliable(5)
    };
    let mut sim = Sim::new(Config::default(), behaviour, 5);
    let id = sim.add(&ExpSpec {
        examples: 30,
        repetitions: 2,
        evaluators: 1,
        cap: None,
        provider: "p".into(),
    });
    sim.run(Duration::from_secs(3600), |_| {});
    assert_eq!(sim.finished[&id], vec![Finish::Completed]);
    let failed_runs = sim
        .store
        .runs(id)
        .iter()
        .filter(|r| r.record.output.is_none())
        .count();
    assert!(failed_runs > 0);
    let successes_before: Vec<_> = sim
        .store
        .runs(id)
        .into_iter()
        .filter(|r| r.record.output.is_some())
        .map(|r| r.key)
        .collect();
    let calls_before = sim.dispatches.len();
    sim.resume(id);
    sim.run(Duration::from_secs(7200), |_| {});
    assert!(sim.violations.is_empty(), "{:?}", sim.violations);
    assert_eq!(
        sim.finished[&id],
        vec![Finish::Completed, Finish::Completed]
    );
    let second: Vec<_> = sim.dispatches[calls_before..].to_vec();
    assert!(!second.is_empty());
    for d in &second {
        if let WorkKey::Task(key) = d.work {
            assert!(
                !successes_before.contains(&key),
                "re-ran a success: {key:?}"
            );
        }
    }
}

/// A resume while the breaker is still open gets the whole give-up time
/// again: it counts from the session's start, not from when the breaker
/// first opened.
#[test]
fn a_resumed_session_gets_the_whole_give_up_time_again() {
    let mut sim = sim_with_down_open(Duration::from_secs(10));
    let down = sim.add(&on_down(2));
    sim.run(Duration::from_secs(3600), |_| {});
    assert!(matches!(sim.finished[&down][..], [Finish::Error(_)]));
    let first = sim.now - sim.start;
    sim.resume(down);
    sim.run(Duration::from_secs(3600), |_| {});
    assert!(matches!(
        sim.finished[&down][..],
        [Finish::Error(_), Finish::Error(_)]
    ));
    let second = sim.now - sim.start;
    assert!(
        second - first >= Duration::from_secs(10),
        "errored again after {:?}",
        second - first
    );
}

/// `failures_logged` bounds the failures logged one by one: after that many,
/// one line says more failed, and the rest are only in the results.
#[test]
fn failures_are_logged_one_by_one_up_to_the_configured_number() {
    let behaviour = Behaviour {
        p_permanent: 1.0,
        ..Behaviour::reliable(10)
    };
    let config = Config {
        failures_logged: 3,
        ..Config::default()
    };
    let mut sim = Sim::new(config, behaviour, 11);
    let id = sim.add(&ExpSpec {
        examples: 8,
        repetitions: 1,
        evaluators: 0,
        cap: None,
        provider: "p0".into(),
    });
    sim.run(Duration::from_secs(3600), |_| {});
    assert_eq!(sim.store.runs(id).len(), 8);
    let errors: Vec<String> = sim
        .store
        .logs(id)
        .into_iter()
        .filter(|(level, _)| *level == crate::LogLevel::Error)
        .map(|(_, message)| message)
        .collect();
    assert_eq!(errors.len(), 4, "{errors:?}");
    assert!(
        errors[..3].iter().all(|m| m.contains("failed")),
        "{errors:?}"
    );
    assert!(errors[3].starts_with("more than 3 failures"), "{errors:?}");
}

/// Issue 13, item 3: one experiment whose every call times out, with ten
/// times the concurrency of a healthy one on the same key, does not open the
/// key's breaker: the healthy one runs at its own pace without a pause, and
/// the failing one errors soon, naming its failure, without waiting the
/// whole `breaker_give_up`.
#[test]
fn one_experiments_failures_do_not_stop_the_others_on_its_key() {
    let config = Config {
        max_concurrency: 22,
        backoff_jitter: 0.0,
        ..Config::default()
    };
    let mut sim = Sim::new(config, Behaviour::reliable(300), 13);
    // The advisor's breaker: 5 failures in a row open it for 5 s.
    sim.advisor.breaker = Some((5, Duration::from_secs(5)));
    let spec = |cap| ExpSpec {
        examples: 200,
        repetitions: 1,
        evaluators: 0,
        cap: Some(cap),
        provider: "p".into(),
    };
    let healthy = sim.add(&spec(2));
    let impatient = sim.add(&spec(20));
    let timeout = "the call timed out after 0.1s";
    sim.scripted.insert(
        impatient,
        (
            crate::Outcome::Transient {
                message: timeout.into(),
            },
            Duration::from_millis(100),
        ),
    );
    sim.run(Duration::from_secs(600), |_| {});
    assert!(sim.violations.is_empty(), "{:?}", sim.violations);
    assert_eq!(sim.finished.get(&healthy), Some(&vec![Finish::Completed]));
    // Two slots, 300 ms per call: 100 rounds, 30 s, with no gap longer
    // than a call between two of its dispatches.
    let times: Vec<Duration> = sim
        .dispatches
        .iter()
        .filter(|d| d.experiment == healthy)
        .map(|d| d.at)
        .collect();
    assert_eq!(times.len(), 200);
    let longest = times.windows(2).map(|w| w[1] - w[0]).max().unwrap();
    assert!(
        longest <= Duration::from_millis(300),
        "paused for {longest:?}"
    );
    assert!(*times.last().unwrap() <= Duration::from_millis(29_701));
    // The impatient one: ERROR at its first probe after its own breaker's
    // cooldown, naming the failure, long before the 300 s give-up.
    let ends = &sim.finished[&impatient];
    let [Finish::Error(message)] = &ends[..] else {
        panic!("{ends:?}");
    };
    assert!(
        message.contains("every call of this experiment") && message.contains(timeout),
        "{message}"
    );
    let last = sim
        .dispatches
        .iter()
        .filter(|d| d.experiment == impatient)
        .map(|d| d.at)
        .max()
        .unwrap();
    assert!(last <= Duration::from_secs(6), "{last:?}");
    let row = sim.store.experiment(impatient).unwrap();
    assert_eq!(row.last_error.as_deref(), Some(message.as_str()));
}
