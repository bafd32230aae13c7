//! Property tests: a bucket never grants more than `r·t + b` in any window,
//! answers exact wait times, and an explicit limit is never exceeded in any
//! 60-second window whatever the provider says.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use proptest::prelude::*;
use runnel_advisor::{Advisor, AdvisorConfig, AdvisorSnapshot, KeySnapshot, LearnedFrom};
use runnel_advisor::{ProviderLimits, TokenBucket};
use runnel_core::{
    Acquire, Advisor as _, LimitScope, Observation, OutcomeClass, RateKey, RateLimitHeaders,
};

/// The largest sum of `sizes` granted in any closed window `[t_i, t_j]`
/// with `i < j` minus `rate · (t_j - t_i)`: the burst the grants needed.
fn worst_excess(grants: &[(Duration, u64)], rate: f64) -> f64 {
    let mut worst = f64::NEG_INFINITY;
    for i in 0..grants.len() {
        let mut sum = grants[i].1;
        for j in i + 1..grants.len() {
            sum += grants[j].1;
            let span = (grants[j].0 - grants[i].0).as_secs_f64();
            worst = worst.max(sum as f64 - rate * span);
        }
    }
    worst
}

/// The most tokens granted in any half-open window `[t_i, t_i + window)`.
fn most_in_window(grants: &[(Duration, u64)], window: Duration) -> u64 {
    let mut most = 0;
    let mut end = 0;
    let mut sum = 0;
    for start in 0..grants.len() {
        while end < grants.len() && grants[end].0 < grants[start].0 + window {
            sum += grants[end].1;
            end += 1;
        }
        most = most.max(sum);
        sum -= grants[start].1;
    }
    most
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// For a fixed rate `r` and burst `b`, the permits granted in any window
    /// of length `t` never exceed `r·t + b`, however the asks are spaced.
    #[test]
    fn permits_in_any_window_stay_within_rate_times_window_plus_burst(
        rate in 0.05f64..500.0,
        burst in 1u64..40,
        gaps in prop::collection::vec(0.0f64..3.0, 1..300),
    ) {
        let t0 = Instant::now();
        let mut bucket = TokenBucket::new(rate, burst, t0);
        let mut now = Duration::ZERO;
        let mut grants = Vec::new();
        for gap in gaps {
            // Gaps in units of the interval, so every rate sees idle
            // stretches as well as floods.
            now += Duration::from_secs_f64(gap / rate);
            if bucket.try_take(1, t0 + now).is_ok() {
                grants.push((now, 1));
            }
        }
        prop_assert!(worst_excess(&grants, rate) <= burst as f64 + 1e-6);
        prop_assert!(grants.len() as u64 >= burst.min(1));
    }

    /// Requests of any size, including larger than the burst: any window
    /// holding two grants or more stays within `r·t + b`.
    #[test]
    fn tokens_in_any_window_stay_within_rate_times_window_plus_burst(
        rate in 1.0f64..5000.0,
        burst in 1u64..200,
        asks in prop::collection::vec((0.0f64..3.0, 1u64..400), 1..200),
    ) {
        let t0 = Instant::now();
        let mut bucket = TokenBucket::new(rate, burst, t0);
        let mut now = Duration::ZERO;
        let mut grants = Vec::new();
        for (gap, n) in asks {
            now += Duration::from_secs_f64(gap * n as f64 / rate);
            if bucket.try_take(n, t0 + now).is_ok() {
                grants.push((now, n));
            }
        }
        prop_assert!(worst_excess(&grants, rate) <= burst as f64 + 1e-6);
    }

    /// A wait ends exactly when the tokens are there: asking at `until`
    /// succeeds, one nanosecond earlier does not.
    #[test]
    fn waits_are_exact(
        rate in 0.01f64..100_000.0,
        burst in 1u64..100,
        taken in 0u64..300,
        n in 1u64..300,
        at in 0u64..10_000_000_000,
    ) {
        let t0 = Instant::now();
        let mut bucket = TokenBucket::new(rate, burst, t0);
        bucket.take(taken, t0);
        let now = t0 + Duration::from_nanos(at);
        if let Err(until) = bucket.check(n, now) {
            prop_assert!(until > now);
            prop_assert_eq!(bucket.check(n, until), Ok(()));
            prop_assert!(bucket.check(n, until - Duration::from_nanos(1)).is_err());
        }
    }
}

/// What may happen to a key with an explicit limit.
#[derive(Clone, Debug)]
enum Op {
    /// Time passes.
    Advance(u64),
    /// Time passes exactly until the last wait ends.
    Jump,
    /// The engine asks for permits of this many tokens until it must wait.
    Ask(u64),
    /// An outcome arrives, with or without headers claiming anything.
    Record {
        class: OutcomeClass,
        retry_after_ms: Option<u64>,
        claimed_rpm: Option<u64>,
        remaining: Option<u64>,
        tokens_used: Option<u64>,
    },
    /// A snapshot claiming any learned rate is restored.
    Restore(f64),
}

fn class() -> impl Strategy<Value = OutcomeClass> {
    prop_oneof![
        Just(OutcomeClass::Success),
        Just(OutcomeClass::RateLimited),
        Just(OutcomeClass::Transient),
        Just(OutcomeClass::Permanent),
    ]
}

fn op(tpm: u64) -> impl Strategy<Value = Op> {
    prop_oneof![
        2 => (0u64..3_000).prop_map(Op::Advance),
        6 => Just(Op::Jump),
        8 => (1u64..=tpm / 4).prop_map(Op::Ask),
        4 => (
            class(),
            prop::option::of(0u64..5_000),
            prop::option::of(1u64..1_000_000),
            prop::option::of(0u64..1_000),
            prop::option::of(0u64..2 * tpm),
        )
            .prop_map(|(class, retry_after_ms, claimed_rpm, remaining, tokens_used)| Op::Record {
                class,
                retry_after_ms,
                claimed_rpm,
                remaining,
                tokens_used,
            }),
        1 => (1.0e-3f64..1.0e6).prop_map(Op::Restore),
    ]
}

/// Only asks, jumps to the end of waits and successes whose headers claim
/// ten times the limit: the key runs flat out at its limit, where an
/// off-by-one would show.
fn flat_out(tpm: u64) -> impl Strategy<Value = Op> {
    prop_oneof![
        1 => (0u64..50).prop_map(Op::Advance),
        8 => Just(Op::Jump),
        8 => (1u64..=tpm / 50).prop_map(Op::Ask),
        2 => Just(Op::Record {
            class: OutcomeClass::Success,
            retry_after_ms: None,
            claimed_rpm: Some(1_000_000),
            remaining: None,
            tokens_used: None,
        }),
    ]
}

fn limited() -> impl Strategy<Value = (u64, u64, f64, Vec<Op>)> {
    (1u64..=600, 100u64..=50_000, 0.1f64..10.0, any::<bool>()).prop_flat_map(
        |(rpm, tpm, burst, flat)| {
            let ops = if flat {
                prop::collection::vec(flat_out(tpm), 1..1500).boxed()
            } else {
                prop::collection::vec(op(tpm), 1..600).boxed()
            };
            (Just(rpm), Just(tpm), Just(burst), ops)
        },
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    /// With explicit `rpm` and `tpm`, no 60-second window ever holds more
    /// permits than `rpm` nor more reserved tokens than `tpm`, whatever the
    /// outcomes, headers (claiming limits far above), pauses and restored
    /// snapshots say.
    #[test]
    fn an_explicit_limit_is_never_exceeded((rpm, tpm, burst, ops) in limited()) {
        let mut config = AdvisorConfig {
            burst_seconds: burst,
            ..AdvisorConfig::default()
        };
        config.providers.insert(
            "p".into(),
            ProviderLimits {
                rpm: Some(rpm),
                tpm: Some(tpm),
                ..ProviderLimits::default()
            },
        );
        let advisor = Advisor::new(config).unwrap();
        let key = RateKey::new("p", "m");
        let t0 = Instant::now();
        let mut now = Duration::ZERO;
        let mut permits = Vec::new();
        let mut tokens = Vec::new();
        let mut until = now;
        for op in ops {
            match op {
                Op::Advance(ms) => now += Duration::from_millis(ms),
                Op::Jump => now = now.max(until),
                Op::Ask(n) => {
                    for _ in 0..1000 {
                        match advisor.try_acquire(&key, Some(n), t0 + now) {
                            Acquire::Permit => {
                                permits.push((now, 1));
                                tokens.push((now, n));
                            }
                            Acquire::Wait { until: u, .. } => {
                                until = u - t0;
                                break;
                            }
                        }
                    }
                }
                Op::Record { class, retry_after_ms, claimed_rpm, remaining, tokens_used } => {
                    let obs = Observation {
                        class,
                        retry_after: retry_after_ms.map(Duration::from_millis),
                        headers: Some(RateLimitHeaders {
                            requests_limit: claimed_rpm,
                            requests_remaining: remaining,
                            requests_reset: Some(Duration::from_millis(500)),
                            tokens_limit: claimed_rpm.map(|r| r * 1000),
                            tokens_remaining: remaining.map(|r| r * 100),
                            tokens_reset: Some(Duration::from_millis(500)),
                            ..RateLimitHeaders::default()
                        }),
                        scope: if tokens_used.is_some_and(|t| t % 2 == 0) {
                            LimitScope::Tokens
                        } else {
                            LimitScope::Unknown
                        },
                        tokens_used,
                        tokens_reserved: Some(tpm / 2),
                    };
                    advisor.record(&key, &obs, t0 + now);
                }
                Op::Restore(rate) => {
                    let snapshot = AdvisorSnapshot {
                        keys: [(
                            key.as_str().to_owned(),
                            KeySnapshot {
                                rate_rps: Some(rate),
                                last_good_rps: Some(rate),
                                last_429_rps: Some(rate * 2.0),
                                learned_from: LearnedFrom::Headers,
                                token_rate_tps: Some(rate * 1000.0),
                                ..KeySnapshot::default()
                            },
                        )]
                        .into(),
                    };
                    advisor.restore(&snapshot, t0 + now).unwrap();
                }
            }
        }
        let minute = Duration::from_secs(60);
        prop_assert!(most_in_window(&permits, minute) <= rpm, "permits {:?}", permits);
        prop_assert!(most_in_window(&tokens, minute) <= tpm, "tokens {:?}", tokens);
    }
}

#[test]
fn the_window_helpers_count_what_they_say() {
    let s = Duration::from_secs;
    let grants = [(s(0), 1), (s(30), 2), (s(59), 3), (s(60), 4)];
    assert_eq!(most_in_window(&grants, s(60)), 9);
    assert_eq!(most_in_window(&grants, s(61)), 10);
    assert!((worst_excess(&grants, 0.0) - 10.0).abs() < 1e-9);
    assert!((worst_excess(&grants, 1.0) - 6.0).abs() < 1e-9);
}

#[test]
fn an_explicit_limit_is_used_in_full() {
    // The bound is not met by refusing: at 60 RPM every second gets a permit.
    let mut config = AdvisorConfig::default();
    config.providers.insert(
        "p".into(),
        ProviderLimits {
            rpm: Some(60),
            ..ProviderLimits::default()
        },
    );
    let advisor = Advisor::new(config).unwrap();
    let key = RateKey::new("p", "m");
    let t0 = Instant::now();
    let mut permits = Vec::new();
    for ms in (0..600_000).step_by(10) {
        let now = Duration::from_millis(ms);
        if advisor.try_acquire(&key, None, t0 + now) == Acquire::Permit {
            permits.push((now, 1));
        }
    }
    assert_eq!(most_in_window(&permits, Duration::from_secs(60)), 60);
    assert_eq!(permits.len(), 600);
}
