//! The `Advisor` port as the engine sees it: starting rates, exact waits,
//! pauses, headers, breaker, tokens, snapshots and metrics.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use runnel_advisor::{
    Advisor, AdvisorConfig, AdvisorError, AdvisorSnapshot, BreakerSnapshot, BreakerState,
    KeySnapshot, LearnedFrom, ProviderLimits,
};
use runnel_core::{
    Acquire, Advisor as _, Observation, OutcomeClass, ProviderKind, RateKey, RateLimitHeaders,
    WaitReason,
};

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn with(entries: &[(&str, ProviderLimits)]) -> Advisor {
    let mut config = AdvisorConfig::default();
    for (name, limits) in entries {
        config.providers.insert((*name).to_owned(), *limits);
    }
    Advisor::new(config).unwrap()
}

fn kind(kind: ProviderKind) -> ProviderLimits {
    ProviderLimits {
        kind: Some(kind),
        ..ProviderLimits::default()
    }
}

fn wait(until: Instant, reason: WaitReason) -> Acquire {
    Acquire::Wait { until, reason }
}

fn rate_limited(retry_after: Option<Duration>) -> Observation {
    Observation {
        retry_after,
        ..Observation::of(OutcomeClass::RateLimited)
    }
}

fn with_headers(class: OutcomeClass, headers: RateLimitHeaders) -> Observation {
    Observation {
        headers: Some(headers),
        ..Observation::of(class)
    }
}

/// Permits granted by asking every millisecond for `span`.
fn permits_over(advisor: &Advisor, key: &RateKey, from: Instant, span: Duration) -> usize {
    (0..span.as_millis() as u64)
        .filter(|&t| advisor.try_acquire(key, None, from + ms(t)) == Acquire::Permit)
        .count()
}

#[test]
fn an_unknown_provider_starts_at_the_default_kind_and_waits_exactly() {
    let advisor = Advisor::new(AdvisorConfig::default()).unwrap();
    let key = RateKey::new("nobody-configured-this", "model");
    let t0 = Instant::now();
    // openai_compatible: 60 RPM, a burst of one.
    assert_eq!(advisor.try_acquire(&key, None, t0), Acquire::Permit);
    assert_eq!(
        advisor.try_acquire(&key, None, t0),
        wait(t0 + secs(1), WaitReason::Rate)
    );
    assert_eq!(
        advisor.try_acquire(&key, None, t0 + secs(1)),
        Acquire::Permit
    );
}

#[test]
fn each_kind_starts_at_its_own_rate() {
    let advisor = with(&[
        ("openai", kind(ProviderKind::OpenAi)),
        ("gemini", kind(ProviderKind::Gemini)),
        ("ollama", kind(ProviderKind::Local)),
    ]);
    let t0 = Instant::now();
    // OpenAI: 500 RPM. Gemini: 5 RPM. Local: unlimited.
    let openai = permits_over(&advisor, &RateKey::new("openai", "m"), t0, secs(60));
    assert!((495..=510).contains(&openai), "{openai}");
    let gemini = permits_over(&advisor, &RateKey::new("gemini", "m"), t0, secs(60));
    assert_eq!(gemini, 5);
    let local = RateKey::new("ollama", "llama");
    for _ in 0..10_000 {
        assert_eq!(advisor.try_acquire(&local, None, t0), Acquire::Permit);
    }
    let m = advisor.key_metrics(&local, t0).unwrap();
    assert_eq!(m.rate_rps, None);
    assert_eq!(m.counters.permits, 10_000);
}

#[test]
fn keys_are_independent() {
    let advisor = Advisor::new(AdvisorConfig::default()).unwrap();
    let (a, b) = (RateKey::new("p", "a"), RateKey::new("p", "b"));
    let t0 = Instant::now();
    assert_eq!(advisor.try_acquire(&a, None, t0), Acquire::Permit);
    assert_eq!(advisor.try_acquire(&b, None, t0), Acquire::Permit);
    for _ in 0..5 {
        advisor.record(&a, &Observation::of(OutcomeClass::Transient), t0);
    }
    assert!(matches!(
        advisor.try_acquire(&a, None, t0 + secs(1)),
        Acquire::Wait {
            reason: WaitReason::BreakerOpen { .. },
            ..
        }
    ));
    assert_eq!(advisor.try_acquire(&b, None, t0 + secs(1)), Acquire::Permit);
}

#[test]
fn retry_after_pauses_the_key_and_halves_the_rate() {
    let advisor = with(&[(
        "p",
        ProviderLimits {
            initial_rps: Some(10.0),
            ..ProviderLimits::default()
        },
    )]);
    let key = RateKey::new("p", "m");
    let t0 = Instant::now();
    assert_eq!(advisor.try_acquire(&key, None, t0), Acquire::Permit);
    advisor.record(&key, &rate_limited(Some(secs(7))), t0 + ms(100));
    let pause_end = t0 + ms(7100);
    assert_eq!(
        advisor.try_acquire(&key, None, t0 + secs(1)),
        wait(pause_end, WaitReason::Paused)
    );
    assert_eq!(advisor.try_acquire(&key, None, pause_end), Acquire::Permit);
    let m = advisor.key_metrics(&key, pause_end).unwrap();
    // Halved, and no more than the new estimate of the limit (without a
    // measurement: half the rate, less 3 %).
    assert_eq!(m.rate_rps, Some(4.85));
    assert_eq!(m.counters.rate_limited, 1);
    assert_eq!(m.counters.decreases, 1);
    assert_eq!(m.breaker, BreakerState::Closed, "429s never count");
}

/// An advisor whose key `p|m` starts at 16 requests per second, learning.
fn sixteen_per_second() -> (Advisor, RateKey, Instant) {
    let advisor = with(&[(
        "p",
        ProviderLimits {
            initial_rps: Some(16.0),
            ..ProviderLimits::default()
        },
    )]);
    (advisor, RateKey::new("p", "m"), Instant::now())
}

#[test]
fn a_burst_of_429s_halves_the_rate_once() {
    let (advisor, key, t0) = sixteen_per_second();
    for i in 0..20 {
        advisor.record(&key, &rate_limited(None), t0 + ms(10 * i));
    }
    let m = advisor.key_metrics(&key, t0 + secs(1)).unwrap();
    assert_eq!(m.rate_rps, Some(16.0 * 0.5 * 0.97));
    assert_eq!((m.counters.rate_limited, m.counters.decreases), (20, 1));
    // A second burst after the decrease window halves once more.
    for i in 0..20 {
        advisor.record(&key, &rate_limited(None), t0 + secs(2) + ms(10 * i));
    }
    let m = advisor.key_metrics(&key, t0 + secs(3)).unwrap();
    assert_eq!(m.rate_rps, Some(16.0 * 0.5 * 0.97 * 0.5 * 0.97));
}

#[test]
fn a_429_of_a_call_sent_after_a_decrease_cuts_again_at_once() {
    let (advisor, key, t0) = sixteen_per_second();
    // Sixteen calls out at once (one second of burst), all rate limited:
    // one overshoot, one decrease.
    for _ in 0..16 {
        assert_eq!(advisor.try_acquire(&key, None, t0), Acquire::Permit);
    }
    for i in 0..16 {
        advisor.record(&key, &rate_limited(None), t0 + ms(10 + i));
    }
    let once = 16.0 * 0.5 * 0.97;
    let m = advisor.key_metrics(&key, t0 + ms(100)).unwrap();
    assert_eq!((m.rate_rps, m.counters.decreases), (Some(once), 1));
    // A call permitted at the decreased rate is rate limited too: the cut
    // was not enough, and the next one comes without waiting for the window.
    let next = t0 + ms(200);
    assert_eq!(advisor.try_acquire(&key, None, next), Acquire::Permit);
    advisor.record(&key, &rate_limited(None), next + ms(5));
    let m = advisor.key_metrics(&key, next + ms(5)).unwrap();
    assert_eq!(m.rate_rps, Some(once * 0.5 * 0.97));
    assert_eq!(m.counters.decreases, 2);
}

#[test]
fn headers_set_the_rate_and_remaining_zero_pauses_until_one_request_is_back() {
    let advisor = Advisor::new(AdvisorConfig::default()).unwrap();
    let key = RateKey::new("oa", "gpt");
    let t0 = Instant::now();
    assert_eq!(advisor.try_acquire(&key, None, t0), Acquire::Permit);
    // OpenAI-style: limit, remaining, time until the window is full again.
    let reply = |remaining, reset| {
        with_headers(
            OutcomeClass::Success,
            RateLimitHeaders {
                requests_limit: Some(3000),
                requests_remaining: Some(remaining),
                requests_reset: Some(reset),
                ..RateLimitHeaders::default()
            },
        )
    };
    advisor.record(&key, &reply(2999, ms(20)), t0 + ms(500));
    let m = advisor.key_metrics(&key, t0 + ms(500)).unwrap();
    // 3000 RPM = 50/s, used at 99 %.
    assert!((m.rate_rps.unwrap() - 49.5).abs() < 1e-9);
    assert!((m.last_good_rps.unwrap() - 49.5).abs() < 1e-9);
    // Nothing left, full again in 60 s: the limit refills continuously, so
    // one request is back after 60 s / 3000 = 20 ms.
    // (The bucket, emptied too, has its next request at the refill rate,
    // 49.5/s, a fraction of a millisecond later.)
    advisor.record(&key, &reply(0, secs(60)), t0 + secs(1));
    let Acquire::Wait { until, reason } = advisor.try_acquire(&key, None, t0 + secs(1)) else {
        panic!("expected a wait");
    };
    assert_eq!(reason, WaitReason::Paused);
    let waited = until - (t0 + secs(1));
    assert!(waited >= ms(20) && waited <= ms(21), "{waited:?}");
    // A name that states its window counts a fixed window: the whole reset.
    let daily = with_headers(
        OutcomeClass::Success,
        RateLimitHeaders {
            requests_limit: Some(14_400),
            requests_remaining: Some(0),
            requests_reset: Some(secs(12)),
            requests_window: Some(secs(86_400)),
            ..RateLimitHeaders::default()
        },
    );
    advisor.record(&key, &daily, t0 + secs(2));
    assert_eq!(
        advisor.try_acquire(&key, None, t0 + secs(3)),
        wait(t0 + secs(14), WaitReason::Paused)
    );
    assert_eq!(
        advisor.try_acquire(&key, None, t0 + secs(14)),
        Acquire::Permit
    );
}

#[test]
fn the_breaker_opens_probes_once_and_reports_how_long_it_has_been_open() {
    let advisor = Advisor::new(AdvisorConfig::default()).unwrap();
    let key = RateKey::new("p", "m");
    let t0 = Instant::now();
    let transient = Observation::of(OutcomeClass::Transient);
    for i in 0..4 {
        advisor.record(&key, &transient, t0 + ms(i));
        // Still closed (a success would reset the count; these calls' ends
        // are not recorded).
        assert_eq!(
            advisor.try_acquire(&key, None, t0 + secs(10 + i)),
            Acquire::Permit
        );
    }
    let tripped = t0 + secs(20);
    advisor.record(&key, &transient, tripped);
    let open = WaitReason::BreakerOpen {
        open_since: tripped,
    };
    assert_eq!(
        advisor.try_acquire(&key, None, tripped + secs(1)),
        wait(tripped + secs(30), open)
    );
    // Half-open: one probe; everyone else waits for its outcome (or for it
    // to count as lost).
    let probe = tripped + secs(30);
    assert_eq!(advisor.try_acquire(&key, None, probe), Acquire::Permit);
    assert_eq!(
        advisor.try_acquire(&key, None, probe),
        wait(probe + secs(150), open)
    );
    // The probe fails: open again, still open since the trip.
    advisor.record(&key, &transient, probe + secs(2));
    assert_eq!(
        advisor.try_acquire(&key, None, probe + secs(3)),
        wait(probe + secs(32), open)
    );
    // The next probe is lost: another one after the probe timeout.
    let second = probe + secs(32);
    assert_eq!(advisor.try_acquire(&key, None, second), Acquire::Permit);
    let third = second + secs(150);
    assert_eq!(advisor.try_acquire(&key, None, third), Acquire::Permit);
    advisor.record(
        &key,
        &Observation::of(OutcomeClass::Success),
        third + secs(1),
    );
    let m = advisor.key_metrics(&key, third + secs(1)).unwrap();
    assert_eq!(m.breaker, BreakerState::Closed);
    assert_eq!(m.trips, 1);
    assert_eq!(m.open_since, None);
    assert_eq!(
        advisor.try_acquire(&key, None, third + secs(2)),
        Acquire::Permit
    );
}

#[test]
fn a_breaker_wait_also_covers_a_pause() {
    let advisor = Advisor::new(AdvisorConfig::default()).unwrap();
    let key = RateKey::new("p", "m");
    let t0 = Instant::now();
    advisor.record(&key, &rate_limited(Some(secs(100))), t0);
    for _ in 0..5 {
        advisor.record(&key, &Observation::of(OutcomeClass::Transient), t0);
    }
    // Cooldown ends at 30 s but the pause at 100 s: the earliest instant
    // worth asking again is 100 s, and the reason names the breaker.
    assert_eq!(
        advisor.try_acquire(&key, None, t0 + secs(1)),
        wait(t0 + secs(100), WaitReason::BreakerOpen { open_since: t0 })
    );
}

#[test]
fn an_explicit_tpm_limits_calls_by_their_tokens() {
    let advisor = with(&[(
        "p",
        ProviderLimits {
            rpm: Some(6000),
            tpm: Some(60_000),
            ..ProviderLimits::default()
        },
    )]);
    let key = RateKey::new("p", "m");
    let t0 = Instant::now();
    // 60 000 TPM: about 1000 tokens per second with a burst of about 1000
    // (taken from the rate, so a minute never holds more than 60 000).
    assert_eq!(advisor.try_acquire(&key, Some(900), t0), Acquire::Permit);
    let Acquire::Wait { until, reason } = advisor.try_acquire(&key, Some(500), t0) else {
        panic!("expected a wait");
    };
    assert_eq!(reason, WaitReason::Rate);
    assert!(
        until - t0 > ms(300) && until - t0 < ms(500),
        "{:?}",
        until - t0
    );
    assert_eq!(advisor.try_acquire(&key, Some(500), until), Acquire::Permit);
    // Calls without an estimate are not held back by tokens.
    assert_eq!(advisor.try_acquire(&key, None, until), Acquire::Permit);
    // Tokens used beyond the reservation are owed.
    advisor.record(
        &key,
        &Observation {
            tokens_used: Some(10_500),
            tokens_reserved: Some(500),
            ..Observation::of(OutcomeClass::Success)
        },
        until,
    );
    let Acquire::Wait { until: later, .. } = advisor.try_acquire(&key, Some(1), until) else {
        panic!("expected a wait");
    };
    assert!(later - until >= secs(10), "{:?}", later - until);
}

#[test]
fn snapshots_restore_learned_rates_and_open_breakers() {
    let advisor = Advisor::new(AdvisorConfig::default()).unwrap();
    let (learned, broken) = (RateKey::new("oa", "gpt"), RateKey::new("an", "claude"));
    let t0 = Instant::now();
    advisor.record(
        &learned,
        &with_headers(
            OutcomeClass::Success,
            RateLimitHeaders {
                requests_limit: Some(600),
                requests_remaining: Some(599),
                requests_reset: Some(ms(100)),
                tokens_limit: Some(60_000),
                tokens_remaining: Some(59_000),
                tokens_reset: Some(secs(1)),
                ..RateLimitHeaders::default()
            },
        ),
        t0,
    );
    for _ in 0..5 {
        advisor.record(&broken, &Observation::of(OutcomeClass::Transient), t0);
    }
    let snapshot = advisor.snapshot(t0 + secs(10));
    let json = serde_json::to_string(&snapshot).unwrap();
    let read: AdvisorSnapshot = serde_json::from_str(&json).unwrap();
    assert_eq!(read, snapshot);
    let entry = &read.keys["oa|gpt"];
    assert_eq!(entry.learned_from, LearnedFrom::Headers);
    assert!((entry.rate_rps.unwrap() - 9.9).abs() < 1e-9);
    assert!(entry.token_rate_tps.unwrap() > 900.0);
    assert_eq!(
        read.keys["an|claude"].breaker,
        BreakerSnapshot::Open {
            open_for_ms: 10_000,
            cooldown_left_ms: 20_000
        }
    );

    // A new process, later.
    let restarted = Advisor::new(AdvisorConfig::default()).unwrap();
    let t1 = t0 + secs(3600);
    restarted.restore(&read, t1).unwrap();
    let m = restarted.key_metrics(&learned, t1).unwrap();
    assert!((m.rate_rps.unwrap() - 9.9).abs() < 1e-9);
    assert_eq!(
        restarted.try_acquire(&broken, None, t1),
        wait(
            t1 + secs(20),
            WaitReason::BreakerOpen {
                open_since: t1 - secs(10)
            }
        )
    );
    // A store that knows the snapshot is an hour old can age it first.
    let aged = AdvisorSnapshot {
        keys: read
            .keys
            .iter()
            .map(|(k, v)| (k.clone(), v.aged(secs(3600))))
            .collect(),
    };
    let aged_restart = Advisor::new(AdvisorConfig::default()).unwrap();
    aged_restart.restore(&aged, t1).unwrap();
    assert_eq!(aged_restart.try_acquire(&broken, None, t1), Acquire::Permit);
}

#[test]
fn a_bad_snapshot_is_refused_whole_and_named() {
    let advisor = Advisor::new(AdvisorConfig::default()).unwrap();
    let t0 = Instant::now();
    let good = KeySnapshot {
        rate_rps: Some(3.0),
        ..KeySnapshot::default()
    };
    let bad = KeySnapshot {
        rate_rps: Some(f64::NAN),
        ..KeySnapshot::default()
    };
    let snapshot = AdvisorSnapshot {
        keys: [("a|x".to_owned(), good), ("b|y".to_owned(), bad)].into(),
    };
    let err = advisor.restore(&snapshot, t0).unwrap_err();
    assert_eq!(
        err,
        AdvisorError::Snapshot {
            key: "b|y".into(),
            field: "rate_rps",
            message: "must be a positive, finite rate".into()
        }
    );
    assert!(err.to_string().contains("b|y"));
    assert!(advisor.metrics(t0).is_empty(), "nothing was restored");
    // Unknown fields in stored JSON are refused too, naming the field.
    let err = serde_json::from_str::<KeySnapshot>(r#"{"rate": 3}"#).unwrap_err();
    assert!(err.to_string().contains("rate"));
}

#[test]
fn a_restored_rate_never_exceeds_an_explicit_limit() {
    let advisor = with(&[(
        "p",
        ProviderLimits {
            rpm: Some(60),
            ..ProviderLimits::default()
        },
    )]);
    let t0 = Instant::now();
    let snapshot = AdvisorSnapshot {
        keys: [(
            "p|m".to_owned(),
            KeySnapshot {
                rate_rps: Some(1000.0),
                last_good_rps: Some(1000.0),
                learned_from: LearnedFrom::Headers,
                ..KeySnapshot::default()
            },
        )]
        .into(),
    };
    advisor.restore(&snapshot, t0).unwrap();
    let key = RateKey::new("p", "m");
    assert_eq!(permits_over(&advisor, &key, t0, secs(60)), 60);
}

#[test]
fn metrics_count_what_happened() {
    let advisor = Advisor::new(AdvisorConfig::default()).unwrap();
    let key = RateKey::new("p", "m");
    let t0 = Instant::now();
    assert_eq!(advisor.try_acquire(&key, None, t0), Acquire::Permit);
    assert!(matches!(
        advisor.try_acquire(&key, None, t0),
        Acquire::Wait { .. }
    ));
    advisor.record(&key, &Observation::of(OutcomeClass::Success), t0);
    advisor.record(&key, &Observation::of(OutcomeClass::Permanent), t0);
    advisor.record(&key, &rate_limited(Some(secs(5))), t0);
    assert!(matches!(
        advisor.try_acquire(&key, None, t0 + secs(1)),
        Acquire::Wait {
            reason: WaitReason::Paused,
            ..
        }
    ));
    let all = advisor.metrics(t0 + secs(1));
    let m = &all["p|m"];
    let c = m.counters;
    assert_eq!(
        (c.permits, c.waits_rate, c.waits_paused, c.waits_breaker),
        (1, 1, 1, 0)
    );
    assert_eq!(
        (c.successes, c.rate_limited, c.transient, c.permanent),
        (1, 1, 0, 1)
    );
    assert_eq!(m.paused_until, Some(t0 + secs(5)));
    assert_eq!(m.breaker.as_str(), "closed");
}

#[test]
fn the_config_reads_from_toml_like_data_and_names_bad_keys() {
    let config: AdvisorConfig = serde_json::from_str(
        r#"{
            "breaker_threshold": 3,
            "breaker_cooldown": "10s",
            "probe_timeout": "2m",
            "decrease_window": "500ms",
            "kinds": { "gemini": { "initial_rps": 0.25 } },
            "providers": {
                "openai": { "kind": "openai", "rpm": 5000, "tpm": 2000000 },
                "ollama": { "kind": "local" }
            }
        }"#,
    )
    .unwrap();
    assert_eq!(config.probe_timeout, secs(120));
    assert_eq!(config.decrease_window, ms(500));
    assert!(config.resolve("ollama").unlimited);
    Advisor::new(config.clone()).unwrap();
    let mut bad = config;
    bad.providers.get_mut("openai").unwrap().initial_rps = Some(f64::INFINITY);
    match Advisor::new(bad) {
        Err(AdvisorError::Config { key, .. }) => assert_eq!(key, "providers.openai.initial_rps"),
        other => panic!("expected a config error, got {other:?}"),
    }
}

#[test]
fn a_learned_rate_can_be_read_and_a_rate_adopted_from_outside() {
    let advisor = with(&[(
        "p",
        ProviderLimits {
            rpm: Some(600),
            ..ProviderLimits::default()
        },
    )]);
    let key = RateKey::new("p", "m");
    let t0 = Instant::now();
    assert_eq!(advisor.learned_rate(&key), None, "not used yet");
    // A replica's share of a budget: 2 requests per second.
    advisor.adopt_rate(&key, 2.0, t0);
    let learned = advisor.learned_rate(&key).unwrap();
    assert_eq!((learned.rate, learned.good), (2.0, 2.0));
    // Ten seconds at 2/s, plus the burst of one second.
    assert_eq!(permits_over(&advisor, &key, t0, secs(10)), 21);
    // Never above the explicit limit (600 RPM, a little under 10/s).
    advisor.adopt_rate(&key, 1000.0, t0 + secs(10));
    assert!(advisor.learned_rate(&key).unwrap().rate <= 10.0);
    // An unlimited key has nothing to read or adopt.
    let local = with(&[("o", kind(ProviderKind::Local))]);
    let llama = RateKey::new("o", "llama");
    local.adopt_rate(&llama, 2.0, t0);
    assert_eq!(local.learned_rate(&llama), None);
}
