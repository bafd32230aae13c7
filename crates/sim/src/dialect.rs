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
