//! How each dialect announces limits: the rate-limit headers of every
//! response, the retry headers and message of a 429, and the bodies of
//! quota exhaustion. Pure functions of the limiter's [`LimitStatus`]; the
//! server only attaches what they return.

use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::json;

use crate::config::{Dialect, QuotaStyle};
use crate::limiter::{Binding, LimitStatus, View};
use crate::protocol::{Api, ErrorKind};

/// A header to send: its name and value.
pub(crate) type Header = (&'static str, String);

/// The `retry-after` of `quota_style: long_retry`: an hour, longer than any
/// client should wait on a rate limit, so it reads as quota. Named here,
/// not a setting, because the style exists to send exactly this signal.
pub(crate) const LONG_RETRY: Duration = Duration::from_secs(3600);

/// The dialect spoken on `api`'s route: the default `openai` answers the
/// Anthropic route in Anthropic's headers (a real OpenAI server has no such
/// route); every other dialect is spoken on both routes.
pub(crate) fn on_route(dialect: Dialect, api: Api) -> Dialect {
    match (dialect, api) {
        (Dialect::OpenAi, Api::Anthropic) => Dialect::Anthropic,
        (dialect, _) => dialect,
    }
}

/// The rate-limit headers of `dialect` for a key in `status`; `wall` is
/// the wall-clock time of the response (for Anthropic's timestamps).
pub(crate) fn limit_headers(
    dialect: Dialect,
    status: &LimitStatus,
    wall: DateTime<Utc>,
) -> Vec<Header> {
    const OPENAI: [[&str; 3]; 2] = [
        [
            "x-ratelimit-limit-requests",
            "x-ratelimit-remaining-requests",
            "x-ratelimit-reset-requests",
        ],
        [
            "x-ratelimit-limit-tokens",
            "x-ratelimit-remaining-tokens",
            "x-ratelimit-reset-tokens",
        ],
    ];
    const ANTHROPIC: [[&str; 3]; 2] = [
        [
            "anthropic-ratelimit-requests-limit",
            "anthropic-ratelimit-requests-remaining",
            "anthropic-ratelimit-requests-reset",
        ],
        [
            "anthropic-ratelimit-tokens-limit",
            "anthropic-ratelimit-tokens-remaining",
            "anthropic-ratelimit-tokens-reset",
        ],
    ];
    let mut out = Vec::new();
    let mut triple =
        |names: &[&'static str; 3], view: Option<View>, reset: &dyn Fn(Duration) -> String| {
            if let Some(v) = view {
                out.push((names[0], whole(v.limit).to_string()));
                out.push((names[1], v.remaining.to_string()));
                out.push((names[2], reset(v.reset)));
            }
        };
    match dialect {
        Dialect::OpenAi => {
            triple(&OPENAI[0], status.shown_requests, &format_reset);
            triple(&OPENAI[1], status.shown_tokens, &format_reset);
        }
        Dialect::Bucket => {
            triple(&OPENAI[0], status.requests, &format_reset);
            triple(&OPENAI[1], status.tokens, &format_reset);
        }
        Dialect::Daily => {
            triple(&OPENAI[0], status.day, &format_reset);
            triple(&OPENAI[1], status.shown_tokens, &format_reset);
        }
        Dialect::Anthropic => {
            let at = |reset: Duration| reset_time(wall, reset);
            triple(&ANTHROPIC[0], status.shown_requests, &at);
            // Anthropic rounds the tokens left to the nearest thousand.
            let tokens = status.shown_tokens.map(|v| View {
                remaining: ((v.remaining + 500) / 1000 * 1000).min(whole(v.limit)),
                ..v
            });
            triple(&ANTHROPIC[1], tokens, &at);
        }
        Dialect::Remaining => {
            if let Some(v) = status.requests {
                out.push(("x-ratelimit-remaining-requests", v.remaining.to_string()));
            }
            if let Some(v) = status.tokens {
                out.push(("x-ratelimit-remaining-tokens", v.remaining.to_string()));
            }
        }
        Dialect::Together => {
            triple(
                &[
                    "x-ratelimit-limit",
                    "x-ratelimit-remaining",
                    "x-ratelimit-reset",
                ],
                status.shown_requests,
                &decimal_seconds,
            );
            if let Some(v) = status.shown_tokens {
                out.push(("x-tokenlimit-limit", whole(v.limit).to_string()));
                out.push(("x-tokenlimit-remaining", v.remaining.to_string()));
            }
        }
        Dialect::None => {}
    }
    out
}

/// The retry headers of a rate-limit 429 that may be retried after `wait`.
pub(crate) fn retry_headers(dialect: Dialect, wait: Duration) -> Vec<Header> {
    let millis = u64::try_from(wait.as_nanos().div_ceil(1_000_000)).unwrap_or(u64::MAX);
    let seconds = ("retry-after", millis.div_ceil(1000).to_string());
    match dialect {
        Dialect::OpenAi | Dialect::Bucket | Dialect::Remaining => {
            vec![("retry-after-ms", millis.to_string()), seconds]
        }
        Dialect::Daily | Dialect::Anthropic | Dialect::Together => vec![seconds],
        Dialect::None => Vec::new(),
    }
}

/// The error kind and message of a rate-limit 429 caused by `by`, in the
/// words OpenAI and Groq use: which limit, its figure, what was used and
/// requested, and the wait.
pub(crate) fn limit_message(
    dialect: Dialect,
    model: &str,
    by: Binding,
    status: &LimitStatus,
    tokens: u64,
    wait: Duration,
) -> (ErrorKind, String) {
    let per = if dialect == Dialect::Together {
        ("second", "S")
    } else {
        ("min", "M")
    };
    let (kind, what, view, requested) = match by {
        Binding::Requests => (
            ErrorKind::RateLimit,
            format!("requests per {} (RP{})", per.0, per.1),
            status.shown_requests,
            1,
        ),
        Binding::Tokens => (
            ErrorKind::TokenLimit,
            format!("tokens per {} (TP{})", per.0, per.1),
            status.shown_tokens,
            tokens,
        ),
        Binding::Day => (
            ErrorKind::RateLimit,
            "requests per day (RPD)".to_owned(),
            status.day,
            1,
        ),
    };
    let figures = view.map_or(String::new(), |v| {
        let limit = whole(v.limit);
        format!(
            ": Limit {limit}, Used {}, Requested {requested}",
            limit.saturating_sub(v.remaining)
        )
    });
    let message = format!(
        "Rate limit reached for {model} on {what}{figures}. Please try again in {}. (simulated)",
        format_reset(wait)
    );
    (kind, message)
}

/// The body of a quota-exhaustion 429 (`None` for `long_retry`, which
/// answers like a rate limit), whatever the route: each style is one
/// provider's own answer. `now` is the time since start, for Gemini's
/// `retryDelay`.
pub(crate) fn quota_body(style: QuotaStyle, model: &str, now: Duration) -> Option<Vec<u8>> {
    let body = match style {
        QuotaStyle::OpenAi => json!({"error": {
            "message": "You exceeded your current quota, please check your plan and billing details. (simulated: quota_after reached)",
            "type": "insufficient_quota",
            "param": null,
            "code": "insufficient_quota",
        }}),
        QuotaStyle::Anthropic => json!({"type": "error", "error": {
            "type": "rate_limit_error",
            "message": "You have reached your specified API usage limits. (simulated: quota_after reached)",
            "details": {"error_code": "enforced_spend_limit_reached"},
        }}),
        QuotaStyle::Gemini => {
            // Gemini suggests a short delay even for a daily quota (seen in
            // real replies); here the time to the next whole minute since start.
            let delay = 60 - now.as_secs() % 60;
            json!({"error": {
                "code": 429,
                "message": "You exceeded your current quota. (simulated: quota_after reached)",
                "status": "RESOURCE_EXHAUSTED",
                "details": [
                    {
                        "@type": "type.googleapis.com/google.rpc.QuotaFailure",
                        "violations": [{
                            "quotaMetric": "generativelanguage.googleapis.com/generate_content_requests",
                            "quotaId": "GenerateRequestsPerDayPerProjectPerModel",
                            "quotaDimensions": {"model": model, "location": "global"},
                        }],
                    },
                    {
                        "@type": "type.googleapis.com/google.rpc.RetryInfo",
                        "retryDelay": format!("{delay}s"),
                    },
                ],
            }})
        }
        QuotaStyle::LongRetry => return None,
    };
    Some(body.to_string().into_bytes())
}

/// A figure as a whole number for a header (limits are whole in practice;
/// a fractional capacity such as 40,000 TPM over one second is rounded).
fn whole(value: f64) -> u64 {
    // A float-to-int `as` saturates; the value is positive.
    value.round().max(0.0) as u64
}

/// OpenAI's reset notation (Go's duration format): `"850ms"` under a
/// second, else `"1s"`, `"1.5s"`, `"6m0s"`, `"1h2m3s"` (milliseconds
/// rounded up).
pub(crate) fn format_reset(d: Duration) -> String {
    let ms = u64::try_from(d.as_nanos().div_ceil(1_000_000)).unwrap_or(u64::MAX);
    if ms == 0 {
        return "0s".to_owned();
    }
    if ms < 1000 {
        return format!("{ms}ms");
    }
    let (hours, minutes, second_ms) = (ms / 3_600_000, ms / 60_000 % 60, ms % 60_000);
    let mut out = String::new();
    if hours > 0 {
        out.push_str(&format!("{hours}h"));
    }
    if hours > 0 || minutes > 0 {
        out.push_str(&format!("{minutes}m"));
    }
    out.push_str(&(second_ms / 1000).to_string());
    let fraction = second_ms % 1000;
    if fraction > 0 {
        let digits = format!("{fraction:03}");
        out.push('.');
        out.push_str(digits.trim_end_matches('0'));
    }
    out.push('s');
    out
}

/// Together's reset (its format is not documented): seconds with up to
/// three decimals, rounded up to the millisecond, e.g. `"0.05"`, `"1"`.
fn decimal_seconds(d: Duration) -> String {
    let ms = u64::try_from(d.as_nanos().div_ceil(1_000_000)).unwrap_or(u64::MAX);
    let text = format!("{}.{:03}", ms / 1000, ms % 1000);
    text.trim_end_matches('0').trim_end_matches('.').to_owned()
}

/// Anthropic's reset notation: the RFC 3339 time when the bucket is full,
/// rounded up to the second.
pub(crate) fn reset_time(wall: DateTime<Utc>, reset: Duration) -> String {
    let at = chrono::Duration::from_std(reset)
        .ok()
        .and_then(|d| wall.checked_add_signed(d))
        .unwrap_or(wall);
    let whole = at.timestamp() + i64::from(at.timestamp_subsec_nanos() > 0);
    DateTime::from_timestamp(whole, 0)
        .unwrap_or(at)
        .to_rfc3339_opts(SecondsFormat::Secs, true)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use serde_json::Value;

    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn view(limit: f64, remaining: u64, reset: Duration) -> Option<View> {
        Some(View {
            limit,
            remaining,
            reset,
        })
    }

    /// A key of 20 rps (bucket of 20), 3000 rpm shown, 40,000 TPM, 14,400 RPD.
    fn status() -> LimitStatus {
        LimitStatus {
            shown_requests: view(3000.0, 2999, 20 * MS),
            shown_tokens: view(40_000.0, 35_500, 6750 * MS),
            requests: view(20.0, 19, 50 * MS),
            tokens: view(666.666, 200, 700 * MS),
            day: view(14_400.0, 14_399, Duration::from_millis(179_560)),
        }
    }

    fn headers(dialect: Dialect) -> HashMap<&'static str, String> {
        let wall = DateTime::from_timestamp(1_700_000_000, 0).unwrap();
        let list = limit_headers(dialect, &status(), wall);
        let map: HashMap<_, _> = list.iter().cloned().collect();
        assert_eq!(map.len(), list.len(), "no header twice");
        map
    }

    fn expect(dialect: Dialect, want: &[(&str, &str)]) {
        let got = headers(dialect);
        let mut names: Vec<&str> = got.keys().copied().collect();
        names.sort_unstable();
        let mut wanted: Vec<&str> = want.iter().map(|(n, _)| *n).collect();
        wanted.sort_unstable();
        assert_eq!(names, wanted, "{dialect:?}");
        for (name, value) in want {
            assert_eq!(got[name], *value, "{dialect:?} {name}");
        }
    }

    #[test]
    fn openai_shows_the_per_minute_bucket() {
        expect(
            Dialect::OpenAi,
            &[
                ("x-ratelimit-limit-requests", "3000"),
                ("x-ratelimit-remaining-requests", "2999"),
                ("x-ratelimit-reset-requests", "20ms"),
                ("x-ratelimit-limit-tokens", "40000"),
                ("x-ratelimit-remaining-tokens", "35500"),
                ("x-ratelimit-reset-tokens", "6.75s"),
            ],
        );
    }

    #[test]
    fn bucket_shows_the_enforcing_bucket() {
        expect(
            Dialect::Bucket,
            &[
                ("x-ratelimit-limit-requests", "20"),
                ("x-ratelimit-remaining-requests", "19"),
                ("x-ratelimit-reset-requests", "50ms"),
                ("x-ratelimit-limit-tokens", "667"),
                ("x-ratelimit-remaining-tokens", "200"),
                ("x-ratelimit-reset-tokens", "700ms"),
            ],
        );
    }

    #[test]
    fn daily_shows_the_day_for_requests_and_the_minute_for_tokens() {
        expect(
            Dialect::Daily,
            &[
                ("x-ratelimit-limit-requests", "14400"),
                ("x-ratelimit-remaining-requests", "14399"),
                ("x-ratelimit-reset-requests", "2m59.56s"),
                ("x-ratelimit-limit-tokens", "40000"),
                ("x-ratelimit-remaining-tokens", "35500"),
                ("x-ratelimit-reset-tokens", "6.75s"),
            ],
        );
    }

    #[test]
    fn remaining_shows_only_what_is_left() {
        expect(
            Dialect::Remaining,
            &[
                ("x-ratelimit-remaining-requests", "19"),
                ("x-ratelimit-remaining-tokens", "200"),
            ],
        );
    }

    #[test]
    fn anthropic_shows_timestamps_and_thousands_of_tokens() {
        expect(
            Dialect::Anthropic,
            &[
                ("anthropic-ratelimit-requests-limit", "3000"),
                ("anthropic-ratelimit-requests-remaining", "2999"),
                ("anthropic-ratelimit-requests-reset", "2023-11-14T22:13:21Z"),
                ("anthropic-ratelimit-tokens-limit", "40000"),
                ("anthropic-ratelimit-tokens-remaining", "36000"),
                ("anthropic-ratelimit-tokens-reset", "2023-11-14T22:13:27Z"),
            ],
        );
    }

    #[test]
    fn together_shows_its_per_second_headers_and_none_shows_nothing() {
        // The limiter hands Together a per-second shown bucket; the dialect
        // only names it.
        expect(
            Dialect::Together,
            &[
                ("x-ratelimit-limit", "3000"),
                ("x-ratelimit-remaining", "2999"),
                ("x-ratelimit-reset", "0.02"),
                ("x-tokenlimit-limit", "40000"),
                ("x-tokenlimit-remaining", "35500"),
            ],
        );
        expect(Dialect::None, &[]);
        assert!(limit_headers(Dialect::OpenAi, &LimitStatus::default(), Utc::now()).is_empty());
    }

    #[test]
    fn retry_headers_follow_each_provider() {
        let wait = 1234 * MS;
        let names = |d| {
            retry_headers(d, wait)
                .into_iter()
                .map(|(n, v)| format!("{n}={v}"))
                .collect::<Vec<_>>()
        };
        for d in [Dialect::OpenAi, Dialect::Bucket, Dialect::Remaining] {
            assert_eq!(names(d), ["retry-after-ms=1234", "retry-after=2"], "{d:?}");
        }
        for d in [Dialect::Daily, Dialect::Anthropic, Dialect::Together] {
            assert_eq!(names(d), ["retry-after=2"], "{d:?}");
        }
        assert!(names(Dialect::None).is_empty());
    }

    #[test]
    fn limit_messages_name_the_limit_that_binds() {
        let (kind, message) = limit_message(
            Dialect::OpenAi,
            "gpt-x",
            Binding::Tokens,
            &status(),
            4100,
            1200 * MS,
        );
        assert_eq!(kind, ErrorKind::TokenLimit);
        assert_eq!(
            message,
            "Rate limit reached for gpt-x on tokens per min (TPM): Limit 40000, Used 4500, \
             Requested 4100. Please try again in 1.2s. (simulated)"
        );
        let (kind, message) = limit_message(
            Dialect::Bucket,
            "m",
            Binding::Requests,
            &status(),
            9,
            50 * MS,
        );
        assert_eq!(kind, ErrorKind::RateLimit);
        assert!(
            message.contains("requests per min (RPM): Limit 3000, Used 1, Requested 1."),
            "{message}"
        );
        let (_, message) = limit_message(
            Dialect::Together,
            "m",
            Binding::Requests,
            &status(),
            9,
            50 * MS,
        );
        assert!(message.contains("requests per second (RPS)"), "{message}");
        let (kind, message) = limit_message(
            Dialect::Daily,
            "m",
            Binding::Day,
            &status(),
            9,
            Duration::from_secs(3600),
        );
        assert_eq!(kind, ErrorKind::RateLimit);
        assert!(
            message.contains("requests per day (RPD): Limit 14400, Used 1, Requested 1. Please try again in 1h0m0s."),
            "{message}"
        );
    }

    #[test]
    fn quota_bodies_are_each_providers_own() {
        let body = |style| -> Value {
            serde_json::from_slice(&quota_body(style, "m-1", Duration::from_secs(125)).unwrap())
                .unwrap()
        };
        let openai = body(QuotaStyle::OpenAi);
        assert_eq!(openai["error"]["type"], "insufficient_quota");
        assert_eq!(openai["error"]["code"], "insufficient_quota");
        assert!(openai["error"]["param"].is_null());
        assert!(
            openai["error"]["message"]
                .as_str()
                .unwrap()
                .starts_with("You exceeded your current quota")
        );
        let anthropic = body(QuotaStyle::Anthropic);
        assert_eq!(anthropic["type"], "error");
        assert_eq!(anthropic["error"]["type"], "rate_limit_error");
        assert_eq!(
            anthropic["error"]["details"]["error_code"],
            "enforced_spend_limit_reached"
        );
        let gemini = body(QuotaStyle::Gemini);
        assert_eq!(gemini["error"]["code"], 429);
        assert_eq!(gemini["error"]["status"], "RESOURCE_EXHAUSTED");
        let details = gemini["error"]["details"].as_array().unwrap();
        assert_eq!(
            details[0]["@type"],
            "type.googleapis.com/google.rpc.QuotaFailure"
        );
        let quota_id = details[0]["violations"][0]["quotaId"].as_str().unwrap();
        assert!(quota_id.contains("PerDay"), "{quota_id}");
        assert_eq!(
            details[1]["@type"],
            "type.googleapis.com/google.rpc.RetryInfo"
        );
        assert_eq!(details[1]["retryDelay"], "55s");
        assert!(quota_body(QuotaStyle::LongRetry, "m", Duration::ZERO).is_none());
    }

    #[test]
    fn the_default_dialect_speaks_anthropic_on_the_messages_route() {
        assert_eq!(
            on_route(Dialect::OpenAi, Api::Anthropic),
            Dialect::Anthropic
        );
        assert_eq!(on_route(Dialect::OpenAi, Api::OpenAi), Dialect::OpenAi);
        for d in [
            Dialect::Bucket,
            Dialect::Daily,
            Dialect::Anthropic,
            Dialect::None,
        ] {
            assert_eq!(on_route(d, Api::Anthropic), d);
            assert_eq!(on_route(d, Api::OpenAi), d);
        }
    }

    #[test]
    fn reset_notation_matches_openai() {
        let cases = [
            (Duration::ZERO, "0s"),
            (Duration::from_micros(1), "1ms"),
            (Duration::from_millis(850), "850ms"),
            (Duration::from_secs(1), "1s"),
            (Duration::from_millis(1500), "1.5s"),
            (Duration::from_millis(1234), "1.234s"),
            (Duration::from_secs(360), "6m0s"),
            (Duration::from_millis(90_500), "1m30.5s"),
            (Duration::from_secs(3723), "1h2m3s"),
        ];
        for (d, want) in cases {
            assert_eq!(format_reset(d), want, "{d:?}");
        }
    }

    #[test]
    fn together_resets_are_decimal_seconds() {
        assert_eq!(decimal_seconds(Duration::ZERO), "0");
        assert_eq!(decimal_seconds(50 * MS), "0.05");
        assert_eq!(decimal_seconds(Duration::from_secs(1)), "1");
        assert_eq!(decimal_seconds(Duration::from_micros(1_250_001)), "1.251");
    }

    #[test]
    fn reset_time_rounds_up_to_the_second() {
        let wall = DateTime::from_timestamp(1_700_000_000, 0).unwrap();
        assert_eq!(reset_time(wall, Duration::ZERO), "2023-11-14T22:13:20Z");
        assert_eq!(
            reset_time(wall, Duration::from_millis(1)),
            "2023-11-14T22:13:21Z"
        );
        assert_eq!(
            reset_time(wall, Duration::from_secs(60)),
            "2023-11-14T22:14:20Z"
        );
    }
}
