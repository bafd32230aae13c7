//! A tour of the advisor on virtual time: how a dispatcher asks for permits,
//! sleeps until the exact instant it is told, reports outcomes, and what the
//! advisor learns. Run with `cargo run -p runnel-advisor --example quickstart`.

use std::time::{Duration, Instant};

use runnel_advisor::{Advisor, AdvisorConfig, AdvisorError, ProviderLimits};
use runnel_core::{
    Acquire, Advisor as _, Observation, OutcomeClass, ProviderKind, RateKey, RateLimitHeaders,
    WaitReason,
};

fn main() -> Result<(), AdvisorError> {
    // Configuration: defaults for everything, one entry with an explicit
    // limit. (The server reads the same struct from `runnel.toml`.)
    let mut config = AdvisorConfig::default();
    config.providers.insert(
        "anthropic".into(),
        ProviderLimits {
            kind: Some(ProviderKind::Anthropic),
            rpm: Some(120),
            ..ProviderLimits::default()
        },
    );
    let advisor = Advisor::new(config)?;
    // The advisor never reads a clock: this example keeps its own.
    let start = Instant::now();
    let at = |now: Instant| format!("{:>7.3}s", (now - start).as_secs_f64());
    let show = |answer: Acquire| match answer {
        Acquire::Permit => "permit".to_owned(),
        Acquire::Wait { until, reason } => match reason {
            WaitReason::BreakerOpen { open_since } => format!(
                "wait until {} (breaker open since {})",
                at(until),
                at(open_since)
            ),
            other => format!("wait until {} ({other:?})", at(until)),
        },
    };

    // 1. A dispatcher loop: ask; on a wait, sleep exactly until `until`.
    let claude = RateKey::new("anthropic", "account-1");
    let mut now = start;
    for _ in 0..6 {
        match advisor.try_acquire(&claude, None, now) {
            Acquire::Permit => {
                println!("{} permit for {claude}", at(now));
                advisor.record(&claude, &Observation::of(OutcomeClass::Success), now);
            }
            wait @ Acquire::Wait { until, .. } => {
                println!("{} {}", at(now), show(wait));
                now = until;
            }
        }
    }

    // 2. A provider that sends rate-limit headers: the limit is learned at once.
    let gpt = RateKey::new("openai", "gpt-4o-mini");
    assert_eq!(advisor.try_acquire(&gpt, None, now), Acquire::Permit);
    let headers = RateLimitHeaders {
        requests_limit: Some(3000),
        requests_remaining: Some(2999),
        requests_reset: Some(Duration::from_millis(20)),
        ..RateLimitHeaders::default()
    };
    let reply = Observation {
        headers: Some(headers),
        ..Observation::of(OutcomeClass::Success)
    };
    advisor.record(&gpt, &reply, now);

    // 3. A 429 with retry-after pauses the key and halves its rate.
    let rate_limited = Observation {
        retry_after: Some(Duration::from_secs(2)),
        ..Observation::of(OutcomeClass::RateLimited)
    };
    advisor.record(&gpt, &rate_limited, now);
    let answer = advisor.try_acquire(&gpt, None, now);
    println!("{} after a 429: {}", at(now), show(answer));

    // 4. Five transient failures in a row open the key's breaker.
    let flaky = RateKey::new("flaky", "model");
    for _ in 0..5 {
        advisor.record(&flaky, &Observation::of(OutcomeClass::Transient), now);
    }
    let answer = advisor.try_acquire(&flaky, None, now);
    println!("{} after 5 transient failures: {}", at(now), show(answer));

    // 5. What a server would export, and what a store would persist.
    for (key, m) in advisor.metrics(now) {
        println!(
            "{key:<24} rate {:>8} permits {:>2} waits {:>2} 429s {} breaker {}",
            m.rate_rps
                .map_or("unlimited".into(), |r| format!("{r:.2}/s")),
            m.counters.permits,
            m.counters.waits_rate + m.counters.waits_paused + m.counters.waits_breaker,
            m.counters.rate_limited,
            m.breaker.as_str(),
        );
    }
    let snapshot = advisor.snapshot(now);
    println!(
        "snapshot: {}",
        serde_json::to_string(&snapshot.keys["openai|gpt-4o-mini"]).unwrap_or_default()
    );
    Ok(())
}
