//! Convergence against simulated providers on virtual time (see
//! `sim/mod.rs`), once per dialect of `PROVIDERS.md`: the advisor starts
//! 10× too low and 10× too high and must hold every 10-second window after
//! 30 s at ≥ 0.9 of the limit that binds, with at most 2 % of calls rate
//! limited when the headers report the binding limit and 3 % when nothing
//! does.
//!
//! "Settled" is measured strictly: every window (not the average) of the
//! successful calls after the convergence time must reach the fraction.
//! Each case runs several seeds (`RUNNEL_TEST_FULL=1` runs more).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod sim;

use runnel_advisor::AdvisorConfig;
use sim::{Enforce, Provider, Report, Tokens, Trace, run};

const SECONDS: u64 = 150;
/// The last seconds hold calls still in flight when the run ends.
const MEASURED_UNTIL: usize = 145;

fn seeds() -> std::ops::RangeInclusive<u64> {
    if std::env::var_os("RUNNEL_TEST_FULL").is_some() {
        1..=16
    } else {
        1..=4
    }
}

/// Runs every seed against `provider`, started at `start` times the binding
/// limit, and returns the worst window rate (as a fraction of the binding
/// limit) and the worst share of 429s, both measured from `from` seconds on.
fn worst(provider: Provider, start: f64, from: usize, window: usize) -> (f64, f64, Trace) {
    let limit = provider.binding();
    let mut lowest = (f64::INFINITY, Trace::default());
    let mut rejected = 0.0f64;
    for seed in seeds() {
        let trace = run(
            provider,
            start * limit,
            AdvisorConfig::default(),
            SECONDS,
            100_000,
            seed,
        );
        let rate = trace.min_success_rate(from, MEASURED_UNTIL, window) / limit;
        rejected = rejected.max(trace.reject_fraction(from, MEASURED_UNTIL));
        if rate < lowest.0 {
            lowest = (rate, trace);
        }
    }
    (lowest.0, rejected, lowest.1)
}

/// Asserts that against `provider`, started 10× too low and 10× too high,
/// every `window` after `from` seconds reaches `fraction` of the binding
/// limit and at most `max_429` of the calls after `from` are rate limited.
fn check(name: &str, provider: Provider, from: usize, window: usize, fraction: f64, max_429: f64) {
    if let Err(failure) = try_check(name, provider, from, window, fraction, max_429) {
        panic!("{failure}");
    }
}

/// [`check`], returning the failure (with the worst run's table) instead.
fn try_check(
    name: &str,
    provider: Provider,
    from: usize,
    window: usize,
    fraction: f64,
    max_429: f64,
) -> Result<(), String> {
    for start in [0.1, 10.0] {
        let (rate, rejected, trace) = worst(provider, start, from, window);
        let case = format!(
            "{name}, binding limit {:.2}/s, start {start}×: worst {window}-s window after \
             {from} s at {rate:.3}·L, 429s {:.2} %",
            provider.binding(),
            rejected * 100.0
        );
        eprintln!("{case}");
        if rate < fraction || rejected > max_429 {
            return Err(format!("{case}\n{}", trace.table()));
        }
    }
    Ok(())
}

/// 429 shares allowed: when headers report the binding limit, and when
/// nothing does.
const WITH_HEADERS: f64 = 0.02;
const WITHOUT_HEADERS: f64 = 0.03;

fn per_minute_headers(limit: f64) -> Provider {
    Provider {
        budget: Some((limit, limit * 60.0)),
        report: Report::Full,
        ..Provider::new(limit)
    }
}

#[test]
fn without_headers_the_rate_settles_within_30_seconds() {
    // 300 to 60 000 requests per minute.
    for limit in [5.0, 20.0, 200.0, 1000.0] {
        check(
            "no headers",
            Provider::new(limit),
            30,
            10,
            0.9,
            WITHOUT_HEADERS,
        );
    }
}

#[test]
fn with_retry_after_the_rate_settles_within_30_seconds() {
    // Each 429 also pauses the key until the provider has room for a call.
    for limit in [5.0, 20.0, 200.0] {
        let provider = Provider {
            retry_after: true,
            ..Provider::new(limit)
        };
        check("retry-after", provider, 30, 10, 0.9, WITHOUT_HEADERS);
    }
}

#[test]
fn without_headers_low_limits_settle_within_a_minute() {
    // At one or two requests per second a 429 costs a large share of a
    // window; the advisor settles, but later (the 20-s goal is not met yet,
    // see `dialects_not_met_yet`).
    for limit in [1.0, 2.0] {
        check(
            "no headers, low limit",
            Provider::new(limit),
            60,
            60,
            0.85,
            WITHOUT_HEADERS,
        );
    }
}

#[test]
fn per_minute_headers_with_per_second_enforcement() {
    // OpenAI: `limit` is per minute, `reset` the time until the minute's
    // budget is full again; the provider enforces it per second.
    for limit in [20.0, 200.0] {
        check(
            "per-minute headers",
            per_minute_headers(limit),
            30,
            10,
            0.9,
            WITH_HEADERS,
        );
    }
}

#[test]
fn headers_that_derive_the_refill_rate_settle_within_2_seconds() {
    // The hint jumps the rate up at the first reply, whatever the start:
    // every 10-s window from the second second on.
    for limit in [5.0, 20.0, 200.0] {
        let window = 10;
        let bucket = Provider {
            report: Report::Full,
            ..Provider::new(limit)
        };
        check(
            "per-minute headers, fast",
            per_minute_headers(limit),
            2,
            window,
            0.9,
            WITH_HEADERS,
        );
        check(
            "bucket capacity, fast",
            bucket,
            2,
            window,
            0.9,
            WITH_HEADERS,
        );
    }
}

#[test]
fn a_per_minute_limit_over_the_remaining_of_a_per_second_bucket() {
    // A provider that states a per-minute `limit` while `remaining` and
    // `reset` are those of the one-second bucket that enforces it (limits
    // enforced over shorter periods than the one stated). The deficit is then mostly the ratio of the two windows,
    // not use: it must not be read as a refill rate sixty times too high.
    for limit in [5.0, 20.0, 200.0] {
        let provider = Provider {
            report: Report::Full,
            limit_scale: 60.0,
            ..Provider::new(limit)
        };
        check(
            "per-minute limit, per-second remaining",
            provider,
            30,
            10,
            0.9,
            WITH_HEADERS,
        );
    }
}

#[test]
fn rfc3339_resets_in_whole_seconds() {
    // Anthropic: the reset is a timestamp (whole seconds) of full
    // replenishment; by the time it reaches the advisor it is a duration.
    for limit in [20.0, 200.0] {
        let provider = Provider {
            report: Report::Timestamp,
            ..per_minute_headers(limit)
        };
        check("RFC 3339 resets", provider, 30, 10, 0.9, WITH_HEADERS);
    }
}

#[test]
fn bucket_capacity_with_time_to_full_reset() {
    // The server: `limit` is the capacity of a bucket that refills in
    // about a second, `remaining` near the limit the whole time.
    for limit in [5.0, 20.0, 200.0] {
        let provider = Provider {
            report: Report::Full,
            ..Provider::new(limit)
        };
        check("bucket capacity", provider, 30, 10, 0.9, WITH_HEADERS);
    }
}

#[test]
fn per_day_request_header_with_an_unannounced_per_minute_limit() {
    // Groq: the request headers count a day; the per-minute limit that binds
    // has no header at all, so it is learned from 429s.
    for limit in [5.0, 20.0, 200.0] {
        let day = (limit * 3600.0f64).max(14_400.0);
        let provider = Provider {
            budget: Some((day / 86_400.0, day)),
            report: Report::Full,
            ..Provider::new(limit)
        };
        check("per-day header", provider, 30, 10, 0.9, WITHOUT_HEADERS);
    }
}

#[test]
fn fixed_and_sliding_windows_without_headers() {
    for limit in [20.0, 200.0] {
        let fixed = Provider {
            enforce: Enforce::Fixed { window: 1.0 },
            ..Provider::new(limit)
        };
        check("fixed 1 s windows", fixed, 30, 10, 0.9, WITHOUT_HEADERS);
        let sliding = Provider {
            enforce: Enforce::Sliding { window: 1.0 },
            ..Provider::new(limit)
        };
        check("sliding 1 s windows", sliding, 30, 10, 0.9, WITHOUT_HEADERS);
    }
}

#[test]
fn a_sliding_10_second_window_does_not_collapse() {
    // A start too high fills the window and it refuses every call for up to
    // ten seconds, whatever the rate: those 429s are one refusal, not one
    // cut each (they cut the rate to the floor before: 0.007–0.2 of the
    // limit). The goals (0.9, 3 %) are not met yet, see
    // `dialects_not_met_yet`; this holds what is.
    for limit in [5.0, 20.0, 200.0] {
        let sliding = Provider {
            enforce: Enforce::Sliding { window: 10.0 },
            ..Provider::new(limit)
        };
        check("sliding 10 s windows", sliding, 30, 10, 0.6, 0.07);
    }
}

/// 4,000-token prompts under a token limit that binds at about half the
/// request limit.
fn tokens_binding(report: Report) -> Provider {
    Provider {
        tokens: Some(Tokens {
            per_second: 40_000.0,
            prompt: 4_000,
            max_completion: 256,
            report,
        }),
        ..per_minute_headers(20.0)
    }
}

#[test]
fn a_token_limit_that_binds_paces_by_tokens() {
    let provider = tokens_binding(Report::Full);
    assert!(provider.binding() < 0.5 * provider.limit);
    check(
        "tokens bind, token headers",
        provider,
        30,
        10,
        0.9,
        WITH_HEADERS,
    );
    // Without token headers, the 429s name the token limit.
    check(
        "tokens bind, token 429s only",
        tokens_binding(Report::Nothing),
        30,
        10,
        0.9,
        WITHOUT_HEADERS,
    );
}

#[test]
fn a_hidden_client_using_30_percent_of_the_limit() {
    // Another client of the same key: `remaining` falls faster than
    // runnel's own calls explain, and runnel takes what is left.
    for limit in [20.0, 200.0] {
        let provider = Provider {
            hidden: 0.3,
            ..per_minute_headers(limit)
        };
        check(
            "hidden client, per-minute headers",
            provider,
            30,
            10,
            0.9,
            WITH_HEADERS,
        );
        let provider = Provider {
            hidden: 0.3,
            report: Report::Full,
            ..Provider::new(limit)
        };
        check(
            "hidden client, bucket headers",
            provider,
            30,
            10,
            0.9,
            WITH_HEADERS,
        );
    }
}

/// Not met yet (run with `--ignored` to print the figures): low limits
/// of the header dialects (at two to five requests per second a 10-second
/// window holds 20 to 50 calls, and one 429 with the cut after it costs
/// more than a tenth of one), remaining-only headers over fixed 10-second
/// windows (nothing says when the window ends, so the rate overshoots and
/// the window runs dry before its end), a sliding 10-second window without
/// headers (a start too high is refused for ten seconds and the rate is
/// cut to the floor), and the 1–2 requests per second case without headers
/// within 20 s.
#[test]
#[ignore = "dialects whose goals are not met yet; figures in the report"]
fn dialects_not_met_yet() {
    let mut failures = Vec::new();
    for limit in [1.0, 2.0] {
        failures.extend(
            try_check(
                "no headers, low limit",
                Provider::new(limit),
                20,
                20,
                0.85,
                WITHOUT_HEADERS,
            )
            .err(),
        );
    }
    for limit in [5.0, 20.0, 200.0] {
        let remaining = Provider {
            enforce: Enforce::Fixed { window: 10.0 },
            report: Report::RemainingOnly,
            ..Provider::new(limit)
        };
        failures.extend(
            try_check(
                "remaining only, 10 s windows",
                remaining,
                30,
                10,
                0.9,
                WITH_HEADERS,
            )
            .err(),
        );
        let sliding = Provider {
            enforce: Enforce::Sliding { window: 10.0 },
            ..Provider::new(limit)
        };
        failures.extend(
            try_check(
                "sliding 10 s windows",
                sliding,
                30,
                10,
                0.9,
                WITHOUT_HEADERS,
            )
            .err(),
        );
        let hidden = Provider {
            hidden: 0.3,
            report: Report::Full,
            ..Provider::new(limit)
        };
        failures.extend(
            try_check(
                "hidden client, bucket headers",
                hidden,
                30,
                10,
                0.9,
                WITH_HEADERS,
            )
            .err(),
        );
    }
    for limit in [2.0, 5.0] {
        failures.extend(
            try_check(
                "per-minute headers",
                per_minute_headers(limit),
                30,
                10,
                0.9,
                WITH_HEADERS,
            )
            .err(),
        );
        let fixed = Provider {
            enforce: Enforce::Fixed { window: 1.0 },
            ..Provider::new(limit)
        };
        failures.extend(try_check("fixed 1 s windows", fixed, 30, 10, 0.9, WITHOUT_HEADERS).err());
        let hidden = Provider {
            hidden: 0.3,
            ..per_minute_headers(limit)
        };
        failures.extend(try_check("hidden client", hidden, 30, 10, 0.9, WITH_HEADERS).err());
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
