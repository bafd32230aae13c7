//! Reading what a provider says about its limits: `retry-after-ms`,
//! `retry-after` (seconds or an HTTP date), and the rate-limit headers of
//! OpenAI style (`x-ratelimit-{limit,remaining,reset}-{requests,tokens}`,
//! resets like `"1s"`, `"6m0s"`, `"20ms"`) and Anthropic style
//! (`anthropic-ratelimit-{requests,tokens}-{limit,remaining,reset}`, resets
//! as RFC 3339 times). Times become durations from `now`, which the caller
//! passes so tests need no wall clock.

use std::time::{Duration, SystemTime};

use reqwest::header::HeaderMap;
use runnel_core::RateLimitHeaders;

/// Longest pause or reset accepted from a provider (a day); anything longer
/// is taken for a malformed value and ignored.
const MAX_WAIT: Duration = Duration::from_secs(86_400);

/// Parses a Go-style duration as OpenAI, Groq and others send it: `"1s"`,
/// `"6m0s"`, `"20ms"`, `"1h2m3.5s"`, `"250us"`; a bare number is seconds.
///
/// ```
/// use std::time::Duration;
/// use runnel_providers::ratelimit::parse_go_duration;
/// assert_eq!(parse_go_duration("6m0s"), Some(Duration::from_secs(360)));
/// assert_eq!(parse_go_duration("20ms"), Some(Duration::from_millis(20)));
/// assert_eq!(parse_go_duration("1.5"), Some(Duration::from_millis(1500)));
/// assert_eq!(parse_go_duration("soon"), None);
/// ```
pub fn parse_go_duration(text: &str) -> Option<Duration> {
    let text = text.trim();
    if text.is_empty() {
        return None;
    }
    if let Ok(seconds) = text.parse::<f64>() {
        return seconds_to_duration(seconds);
    }
    let mut total = 0.0f64;
    let mut rest = text;
    while !rest.is_empty() {
        let number_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let number: f64 = rest[..number_len].parse().ok()?;
        rest = &rest[number_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_len] {
            "h" => 3600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 1e-3,
            "us" | "µs" | "μs" => 1e-6,
            "ns" => 1e-9,
            _ => return None,
        };
        total += number * scale;
        rest = &rest[unit_len..];
    }
    seconds_to_duration(total)
}

fn seconds_to_duration(seconds: f64) -> Option<Duration> {
    (seconds.is_finite() && seconds >= 0.0 && seconds <= MAX_WAIT.as_secs_f64())
        .then(|| Duration::from_secs_f64(seconds))
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name)?.to_str().ok().map(str::trim)
}

fn number(headers: &HeaderMap, name: &str) -> Option<u64> {
    let text = header(headers, name)?;
    text.parse::<u64>().ok().or_else(|| {
        text.parse::<f64>()
            .ok()
            .filter(|f| f.is_finite() && *f >= 0.0)
            .map(|f| f as u64)
    })
}

/// Time from `now` until the RFC 3339 or HTTP date `text` (zero when it has
/// passed).
fn until(text: &str, now: SystemTime) -> Option<Duration> {
    let at = chrono::DateTime::parse_from_rfc3339(text)
        .or_else(|_| chrono::DateTime::parse_from_rfc2822(text))
        .ok()?;
    let at = SystemTime::from(at.with_timezone(&chrono::Utc));
    let wait = at.duration_since(now).unwrap_or(Duration::ZERO);
    (wait <= MAX_WAIT).then_some(wait)
}

/// How long the provider asked to wait: `retry-after-ms` (milliseconds),
/// else `retry-after` as seconds or as an HTTP date (relative to `now`).
///
/// ```
/// use std::time::{Duration, SystemTime};
/// use reqwest::header::{HeaderMap, HeaderValue};
/// use runnel_providers::ratelimit::retry_after;
/// let mut h = HeaderMap::new();
/// h.insert("retry-after", HeaderValue::from_static("7"));
/// assert_eq!(retry_after(&h, SystemTime::now()), Some(Duration::from_secs(7)));
/// h.insert("retry-after-ms", HeaderValue::from_static("1500"));
/// assert_eq!(retry_after(&h, SystemTime::now()), Some(Duration::from_millis(1500)));
/// ```
pub fn retry_after(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    if let Some(ms) = header(headers, "retry-after-ms").and_then(|t| t.parse::<f64>().ok())
        && let Some(d) = seconds_to_duration(ms / 1000.0)
    {
        return Some(d);
    }
    let text = header(headers, "retry-after")?;
    match text.parse::<f64>() {
        Ok(seconds) => seconds_to_duration(seconds),
        Err(_) => until(text, now),
    }
}

/// The rate-limit headers of a reply, normalised; `None` when there are
/// none. OpenAI-style headers win when a reply has both styles.
pub fn rate_limit_headers(headers: &HeaderMap, now: SystemTime) -> Option<RateLimitHeaders> {
    let openai = RateLimitHeaders {
        requests_limit: number(headers, "x-ratelimit-limit-requests"),
        requests_remaining: number(headers, "x-ratelimit-remaining-requests"),
        requests_reset: header(headers, "x-ratelimit-reset-requests").and_then(parse_go_duration),
        tokens_limit: number(headers, "x-ratelimit-limit-tokens"),
        tokens_remaining: number(headers, "x-ratelimit-remaining-tokens"),
        tokens_reset: header(headers, "x-ratelimit-reset-tokens").and_then(parse_go_duration),
    };
    if !openai.is_empty() {
        return Some(openai);
    }
    // Anthropic reports total tokens, or (on newer accounts) input and
    // output tokens separately; input tokens are what a TPM limit meters.
    let tokens = |field: &str| {
        let total = format!("anthropic-ratelimit-tokens-{field}");
        let input = format!("anthropic-ratelimit-input-tokens-{field}");
        if headers.contains_key(total.as_str()) {
            total
        } else {
            input
        }
    };
    let reset = |name: &str| {
        header(headers, name).and_then(|t| until(t, now).or_else(|| parse_go_duration(t)))
    };
    let anthropic = RateLimitHeaders {
        requests_limit: number(headers, "anthropic-ratelimit-requests-limit"),
        requests_remaining: number(headers, "anthropic-ratelimit-requests-remaining"),
        requests_reset: reset("anthropic-ratelimit-requests-reset"),
        tokens_limit: number(headers, &tokens("limit")),
        tokens_remaining: number(headers, &tokens("remaining")),
        tokens_reset: reset(&tokens("reset")),
    };
    (!anthropic.is_empty()).then_some(anthropic)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use reqwest::header::{HeaderName, HeaderValue};

    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(k, v)| {
                (
                    HeaderName::from_bytes(k.as_bytes()).unwrap(),
                    HeaderValue::from_str(v).unwrap(),
                )
            })
            .collect()
    }

    /// 2025-01-01T00:00:00Z.
    fn now() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_735_689_600)
    }

    #[test]
    fn go_durations() {
        let cases = [
            ("1s", Some(1000)),
            ("6m0s", Some(360_000)),
            ("20ms", Some(20)),
            ("1h2m3.5s", Some(3_723_500)),
            ("0.5s", Some(500)),
            ("2m59.56s", Some(179_560)),
            ("30", Some(30_000)),
            ("", None),
            ("5 s", None),
            ("-1s", None),
            ("1d", None),
            ("99999h", None),
        ];
        for (text, ms) in cases {
            assert_eq!(
                parse_go_duration(text),
                ms.map(Duration::from_millis),
                "{text:?}"
            );
        }
    }

    #[test]
    fn retry_after_in_every_form() {
        let ms = headers(&[("retry-after-ms", "250"), ("retry-after", "3")]);
        assert_eq!(retry_after(&ms, now()), Some(Duration::from_millis(250)));
        let secs = headers(&[("retry-after", "3")]);
        assert_eq!(retry_after(&secs, now()), Some(Duration::from_secs(3)));
        let date = headers(&[("retry-after", "Wed, 01 Jan 2025 00:00:42 GMT")]);
        assert_eq!(retry_after(&date, now()), Some(Duration::from_secs(42)));
        let past = headers(&[("retry-after", "Tue, 31 Dec 2024 23:00:00 GMT")]);
        assert_eq!(retry_after(&past, now()), Some(Duration::ZERO));
        let junk = headers(&[("retry-after", "later"), ("retry-after-ms", "x")]);
        assert_eq!(retry_after(&junk, now()), None);
        assert_eq!(retry_after(&HeaderMap::new(), now()), None);
    }

    #[test]
    fn openai_style_headers() {
        let h = headers(&[
            ("x-ratelimit-limit-requests", "500"),
            ("x-ratelimit-remaining-requests", "499"),
            ("x-ratelimit-reset-requests", "120ms"),
            ("x-ratelimit-limit-tokens", "30000"),
            ("x-ratelimit-remaining-tokens", "29000"),
            ("x-ratelimit-reset-tokens", "2s"),
        ]);
        assert_eq!(
            rate_limit_headers(&h, now()),
            Some(RateLimitHeaders {
                requests_limit: Some(500),
                requests_remaining: Some(499),
                requests_reset: Some(Duration::from_millis(120)),
                tokens_limit: Some(30000),
                tokens_remaining: Some(29000),
                tokens_reset: Some(Duration::from_secs(2)),
            })
        );
    }

    #[test]
    fn anthropic_style_headers() {
        let h = headers(&[
            ("anthropic-ratelimit-requests-limit", "50"),
            ("anthropic-ratelimit-requests-remaining", "0"),
            ("anthropic-ratelimit-requests-reset", "2025-01-01T00:00:12Z"),
            ("anthropic-ratelimit-input-tokens-limit", "40000"),
            ("anthropic-ratelimit-input-tokens-remaining", "39000"),
            (
                "anthropic-ratelimit-input-tokens-reset",
                "2024-12-31T23:59:00Z",
            ),
        ]);
        assert_eq!(
            rate_limit_headers(&h, now()),
            Some(RateLimitHeaders {
                requests_limit: Some(50),
                requests_remaining: Some(0),
                requests_reset: Some(Duration::from_secs(12)),
                tokens_limit: Some(40000),
                tokens_remaining: Some(39000),
                tokens_reset: Some(Duration::ZERO),
            })
        );
        assert_eq!(rate_limit_headers(&HeaderMap::new(), now()), None);
        let junk = headers(&[("x-ratelimit-limit-requests", "many")]);
        assert_eq!(rate_limit_headers(&junk, now()), None);
    }

    proptest! {
        #[test]
        fn duration_parsing_never_panics(text in "[0-9.hmsun µ-]{0,16}") {
            let _ = parse_go_duration(&text);
            // Header values must be visible ASCII.
            let text = text.replace('µ', "u");
            let h = headers(&[("retry-after", text.trim()), ("anthropic-ratelimit-requests-reset", text.trim())]);
            let _ = retry_after(&h, now());
            let _ = rate_limit_headers(&h, now());
        }
    }
}
