//! Convergence against a simulated provider with a hidden limit `L`, on
//! virtual time (see `sim/mod.rs`): the advisor starts 10× too low and 10×
//! too high and must settle at ≥ 0.9·L with ≤ 3 % of calls rate limited.
//!
//! "Settled" is measured strictly: every window (not the average) of the
//! successful calls after the convergence time must reach 0.9·L. Each case
//! runs several seeds (`RUNNEL_TEST_FULL=1` runs more).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod sim;

use runnel_advisor::AdvisorConfig;
use sim::{Provider, Trace, run};

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

/// What the simulated provider says besides 429.
#[derive(Clone, Copy, Debug)]
enum Says {
    Nothing,
    Headers,
    RetryAfter,
}

/// Runs every seed with `limit`, started at `start · limit`, and returns the
/// worst window rate (as a fraction of the limit) and the worst share of
/// 429s, both measured from `from` seconds on.
fn worst(limit: f64, start: f64, says: Says, from: usize, window: usize) -> (f64, f64, Trace) {
    let mut lowest = (f64::INFINITY, Trace::default());
    let mut rejected = 0.0f64;
    for seed in seeds() {
        let mut provider = Provider::new(limit);
        provider.headers = matches!(says, Says::Headers);
        provider.retry_after = matches!(says, Says::RetryAfter);
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

/// Asserts that with `limit`, started 10× too low and 10× too high, every
/// `window` after `from` seconds reaches `fraction` of the limit and at most
/// 3 % of the calls after `from` are rate limited.
fn check(limit: f64, says: Says, from: usize, window: usize, fraction: f64) {
    for start in [0.1, 10.0] {
        let (rate, rejected, trace) = worst(limit, start, says, from, window);
        let case = format!(
            "limit {limit}/s, start {start}×, provider says {says:?}: worst {window}-s window \
             after {from} s at {rate:.3}·L, 429s {:.2} %",
            rejected * 100.0
        );
        eprintln!("{case}");
        assert!(rate >= fraction, "{case}\n{}", trace.table());
        assert!(rejected <= 0.03, "{case}\n{}", trace.table());
    }
}

#[test]
fn without_headers_the_rate_settles_within_30_seconds() {
    // 300 to 60 000 requests per minute.
    for limit in [5.0, 20.0, 200.0, 1000.0] {
        check(limit, Says::Nothing, 30, 10, 0.9);
    }
}

#[test]
fn with_retry_after_the_rate_settles_within_30_seconds() {
    // Each 429 also pauses the key until the provider has room for a call.
    for limit in [5.0, 20.0, 200.0] {
        check(limit, Says::RetryAfter, 30, 10, 0.9);
    }
}

#[test]
fn without_headers_low_limits_settle_within_a_minute() {
    // At one or two requests per second a 429 costs a large share of a
    // window and thirty seconds hold only a few dozen calls; the advisor
    // settles, but later. (Real providers at such limits send headers, see
    // below, or a retry-after.)
    for limit in [1.0, 2.0] {
        check(limit, Says::Nothing, 60, 60, 0.85);
    }
}

#[test]
fn with_headers_the_rate_settles_within_2_seconds() {
    for limit in [1.0f64, 2.0, 5.0, 20.0, 200.0, 1000.0] {
        // Windows of at least ten calls, so one call more or less is not 10 %.
        let window = (10.0 / limit).ceil().max(5.0) as usize;
        check(limit, Says::Headers, 2, window, 0.9);
    }
}
