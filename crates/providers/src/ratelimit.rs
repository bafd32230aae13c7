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

/// The three fields every dialect reports for a limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Field {
    Limit,
    Remaining,
    Reset,
}

/// The two dimensions the advisor paces.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Dim {
    Requests,
    Tokens,
}

/// One header's place in a dialect: its field, dimension, the window its
/// name states, and a rank among headers of the same dimension (lower is
/// preferred: total tokens before input tokens, a generic name before a
/// stated window, then the shorter window, which binds first).
#[derive(Clone, Copy, Debug, PartialEq)]
struct Slot {
    field: Field,
    dim: Dim,
    window: Option<Duration>,
    rank: (u8, Duration),
}

fn field_of(word: &str) -> Option<Field> {
    match word {
        "limit" => Some(Field::Limit),
        "remaining" => Some(Field::Remaining),
        "reset" => Some(Field::Reset),
        _ => None,
    }
}

/// The window a name's suffix states (`day`, `minute`, …).
fn window_of(word: &str) -> Option<Duration> {
    let secs = match word {
        "second" | "sec" | "s" => 1,
        "minute" | "min" | "m" => 60,
        "hour" | "h" => 3_600,
        "day" | "d" => 86_400,
        "week" => 7 * 86_400,
        "month" => 30 * 86_400,
        _ => return None,
    };
    Some(Duration::from_secs(secs))
}

/// Where a header name fits, if it is a rate-limit header of a known dialect:
///
/// - OpenAI, Groq, Azure, Fireworks: `x-ratelimit-{field}-{requests,tokens}`;
/// - names that state a window: Cerebras `x-ratelimit-{field}-requests-day`,
///   `-tokens-minute`, Mistral `-req-minute`, `-tokens-month`;
/// - Together, OpenRouter: `x-ratelimit-{field}` (requests), Together
///   `x-tokenlimit-{field}` (tokens);
/// - Anthropic: `anthropic-ratelimit-{requests,tokens,input-tokens}-{field}`.
fn slot(name: &str) -> Option<Slot> {
    let generic = |field, dim, rank: u8| Slot {
        field,
        dim,
        window: None,
        rank: (rank, Duration::ZERO),
    };
    if let Some(rest) = name.strip_prefix("anthropic-ratelimit-") {
        let (dim, field) = rest.rsplit_once('-')?;
        let field = field_of(field)?;
        return match dim {
            "requests" => Some(generic(field, Dim::Requests, 0)),
            "tokens" => Some(generic(field, Dim::Tokens, 0)),
            // Input tokens are what a TPM limit meters when the total is
            // not reported (newer accounts).
            "input-tokens" => Some(generic(field, Dim::Tokens, 1)),
            _ => None,
        };
    }
    if let Some(rest) = name.strip_prefix("x-tokenlimit-") {
        return Some(generic(field_of(rest)?, Dim::Tokens, 2));
    }
    let rest = name.strip_prefix("x-ratelimit-")?;
    let mut words = rest.split('-');
    let field = field_of(words.next()?)?;
    let dim = match words.next() {
        // Together and OpenRouter: no dimension in the name, requests.
        None => return Some(generic(field, Dim::Requests, 2)),
        Some("requests" | "req") => Dim::Requests,
        Some("tokens") => Dim::Tokens,
        Some(_) => return None,
    };
    match (words.next(), words.next()) {
        (None, _) => Some(generic(field, dim, 0)),
        (Some(suffix), None) => {
            let window = window_of(suffix)?;
            Some(Slot {
                field,
                dim,
                window: Some(window),
                rank: (1, window),
            })
        }
        // `-tokens-prompt`, `-tokens-generated-…`, dynamic limits: not read.
        _ => None,
    }
}

/// A reset in any form providers send: a Go duration (`"1s"`, `"6m0s"`), an
/// RFC 3339 or HTTP date, float seconds (`"33011.38"`), or an epoch time in
/// seconds or milliseconds (`"1735689612000"`), as a duration from `now`.
pub fn parse_reset(text: &str, now: SystemTime) -> Option<Duration> {
    let text = text.trim();
    if let Ok(number) = text.parse::<f64>() {
        // A count of seconds no longer than a day, else an epoch time: one
        // in milliseconds has 13 digits today, one in seconds 10.
        const EPOCH_SECONDS_FROM: f64 = 1.0e9;
        const EPOCH_MILLIS_FROM: f64 = 1.0e12;
        let at = if number >= EPOCH_MILLIS_FROM {
            number / 1000.0
        } else if number >= EPOCH_SECONDS_FROM {
            number
        } else {
            return seconds_to_duration(number);
        };
        let at = SystemTime::UNIX_EPOCH.checked_add(Duration::try_from_secs_f64(at).ok()?)?;
        let wait = at.duration_since(now).unwrap_or(Duration::ZERO);
        return (wait <= MAX_WAIT).then_some(wait);
    }
    until(text, now).or_else(|| parse_go_duration(text))
}

/// The rate-limit headers of a reply, normalised (see [`RateLimitHeaders`]);
/// `None` when there are none. Where a reply reports one dimension under
/// several names, the most direct one is read (total tokens before input
/// tokens, a name without a window before one with, the shortest window).
pub fn rate_limit_headers(headers: &HeaderMap, now: SystemTime) -> Option<RateLimitHeaders> {
    // The chosen rank per dimension, then the values of that rank.
    let mut best: [Option<(u8, Duration)>; 2] = [None, None];
    let mut found: Vec<(Slot, &str)> = Vec::new();
    for (name, value) in headers {
        let Some(slot) = slot(name.as_str()) else {
            continue;
        };
        let Ok(value) = value.to_str() else { continue };
        let i = slot.dim as usize;
        if slot.field != Field::Reset && best[i].is_none_or(|b| slot.rank < b) {
            best[i] = Some(slot.rank);
        }
        found.push((slot, value.trim()));
    }
    let mut out = RateLimitHeaders::default();
    for (slot, value) in found {
        if best[slot.dim as usize] != Some(slot.rank) {
            continue;
        }
        let count = || {
            value.parse::<u64>().ok().or_else(|| {
                value
                    .parse::<f64>()
                    .ok()
                    .filter(|f| f.is_finite() && *f >= 0.0)
                    .map(|f| f as u64)
            })
        };
        let (limit, remaining, reset, window) = match slot.dim {
            Dim::Requests => (
                &mut out.requests_limit,
                &mut out.requests_remaining,
                &mut out.requests_reset,
                &mut out.requests_window,
            ),
            Dim::Tokens => (
                &mut out.tokens_limit,
                &mut out.tokens_remaining,
                &mut out.tokens_reset,
                &mut out.tokens_window,
            ),
        };
        match slot.field {
            Field::Limit => *limit = count(),
            Field::Remaining => *remaining = count(),
            Field::Reset => *reset = parse_reset(value, now),
        }
        *window = window.or(slot.window);
    }
    let nothing = out.requests_limit.is_none()
        && out.requests_remaining.is_none()
        && out.tokens_limit.is_none()
        && out.tokens_remaining.is_none()
        && out.requests_reset.is_none()
        && out.tokens_reset.is_none();
    (!nothing).then_some(out)
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
                ..RateLimitHeaders::default()
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
                ..RateLimitHeaders::default()
            })
        );
        assert_eq!(rate_limit_headers(&HeaderMap::new(), now()), None);
        let junk = headers(&[("x-ratelimit-limit-requests", "many")]);
        assert_eq!(rate_limit_headers(&junk, now()), None);
    }

    #[test]
    fn names_that_state_a_window_and_other_reset_formats() {
        // Cerebras: per-day requests, per-minute tokens, float-second resets.
        let h = headers(&[
            ("x-ratelimit-limit-requests-day", "14400"),
            ("x-ratelimit-remaining-requests-day", "14370"),
            ("x-ratelimit-reset-requests-day", "33011.38"),
            ("x-ratelimit-limit-tokens-minute", "60000"),
            ("x-ratelimit-remaining-tokens-minute", "59000"),
            ("x-ratelimit-reset-tokens-minute", "11.5"),
        ]);
        assert_eq!(
            rate_limit_headers(&h, now()),
            Some(RateLimitHeaders {
                requests_limit: Some(14400),
                requests_remaining: Some(14370),
                requests_reset: Some(Duration::from_secs_f64(33011.38)),
                requests_window: Some(Duration::from_secs(86_400)),
                tokens_limit: Some(60000),
                tokens_remaining: Some(59000),
                tokens_reset: Some(Duration::from_millis(11_500)),
                tokens_window: Some(Duration::from_secs(60)),
            })
        );
        // Mistral: the per-minute token limit binds before the monthly one.
        let h = headers(&[
            ("x-ratelimit-limit-req-minute", "60"),
            ("x-ratelimit-remaining-req-minute", "58"),
            ("x-ratelimit-limit-tokens-month", "1000000000"),
            ("x-ratelimit-remaining-tokens-month", "999000000"),
            ("x-ratelimit-limit-tokens-minute", "500000"),
            ("x-ratelimit-remaining-tokens-minute", "498000"),
        ]);
        let r = rate_limit_headers(&h, now()).unwrap();
        assert_eq!(
            (r.requests_limit, r.requests_remaining, r.requests_window),
            (Some(60), Some(58), Some(Duration::from_secs(60)))
        );
        assert_eq!(
            (r.tokens_limit, r.tokens_remaining, r.tokens_window),
            (Some(500000), Some(498000), Some(Duration::from_secs(60)))
        );
        // Together: no dimension in the name; tokens under x-tokenlimit-*.
        let h = headers(&[
            ("x-ratelimit-limit", "10"),
            ("x-ratelimit-remaining", "9"),
            ("x-ratelimit-reset", "1"),
            ("x-ratelimit-limit-dynamic", "20"),
            ("x-tokenlimit-limit", "2000"),
            ("x-tokenlimit-remaining", "1500"),
        ]);
        assert_eq!(
            rate_limit_headers(&h, now()),
            Some(RateLimitHeaders {
                requests_limit: Some(10),
                requests_remaining: Some(9),
                requests_reset: Some(Duration::from_secs(1)),
                tokens_limit: Some(2000),
                tokens_remaining: Some(1500),
                ..RateLimitHeaders::default()
            })
        );
        // OpenRouter's 429s: the reset is an epoch time in milliseconds
        // (header names are case-insensitive).
        let h = headers(&[
            ("X-RateLimit-Limit", "20"),
            ("X-RateLimit-Remaining", "0"),
            ("X-RateLimit-Reset", "1735689612000"),
        ]);
        let r = rate_limit_headers(&h, now()).unwrap();
        assert_eq!(r.requests_reset, Some(Duration::from_secs(12)));
        assert_eq!(r.requests_remaining, Some(0));
        // Azure: remaining only.
        let h = headers(&[
            ("x-ratelimit-remaining-requests", "7"),
            ("x-ratelimit-remaining-tokens", "7000"),
        ]);
        assert_eq!(
            rate_limit_headers(&h, now()),
            Some(RateLimitHeaders {
                requests_remaining: Some(7),
                tokens_remaining: Some(7000),
                ..RateLimitHeaders::default()
            })
        );
        // Names that look alike but are not limits are not read.
        let h = headers(&[
            ("x-ratelimit-over-limit", "yes"),
            ("x-ratelimit-limit-tokens-prompt", "100"),
            ("x-ratelimit-limit-requests-fortnight", "100"),
        ]);
        assert_eq!(rate_limit_headers(&h, now()), None);
    }

    #[test]
    fn resets_in_every_format() {
        let cases = [
            ("2m59.56s", Some(179_560)),
            ("33011.38", Some(33_011_380)),
            ("2025-01-01T00:00:12Z", Some(12_000)),
            ("2025-01-01T00:00:12.5+00:00", Some(12_500)),
            ("1735689612", Some(12_000)),
            ("1735689612000", Some(12_000)),
            ("1735689000000", Some(0)),
            ("1800000000000", None),
            ("100000", None),
            ("soon", None),
        ];
        for (text, ms) in cases {
            assert_eq!(
                parse_reset(text, now()),
                ms.map(Duration::from_millis),
                "{text:?}"
            );
        }
    }

    /// The dialects that name their fields, as (limit, remaining, reset) names.
    const DIALECTS: [[&str; 3]; 6] = [
        [
            "x-ratelimit-limit-requests",
            "x-ratelimit-remaining-requests",
            "x-ratelimit-reset-requests",
        ],
        [
            "anthropic-ratelimit-requests-limit",
            "anthropic-ratelimit-requests-remaining",
            "anthropic-ratelimit-requests-reset",
        ],
        [
            "x-ratelimit-limit",
            "x-ratelimit-remaining",
            "x-ratelimit-reset",
        ],
        [
            "x-ratelimit-limit-requests-day",
            "x-ratelimit-remaining-requests-day",
            "x-ratelimit-reset-requests-day",
        ],
        [
            "x-ratelimit-limit-req-minute",
            "x-ratelimit-remaining-req-minute",
            "x-ratelimit-reset-req-minute",
        ],
        [
            "x-ratelimit-limit-tokens",
            "x-ratelimit-remaining-tokens",
            "x-ratelimit-reset-tokens",
        ],
    ];

    proptest! {
        /// Whatever the dialect and the reset's format, the numbers read are
        /// the numbers sent.
        #[test]
        fn every_dialect_reads_back_what_was_sent(
            dialect in 0usize..DIALECTS.len(),
            limit in 1u64..10_000_000,
            used in 0u64..10_000_000,
            reset_ms in 0u64..86_400_000,
            format in 0usize..4,
        ) {
            let remaining = limit.saturating_sub(used);
            let reset = Duration::from_millis(reset_ms);
            let at = now() + reset;
            let text = match format {
                0 => format!("{}ms", reset_ms),
                1 => format!("{}", reset.as_secs_f64()),
                2 => chrono::DateTime::<chrono::Utc>::from(at)
                    .to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
                _ => format!(
                    "{}",
                    at.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_millis()
                ),
            };
            let [l, r, t] = DIALECTS[dialect];
            let h = headers(&[(l, &limit.to_string()), (r, &remaining.to_string()), (t, &text)]);
            let read = rate_limit_headers(&h, now()).unwrap();
            let tokens = dialect == DIALECTS.len() - 1;
            let (gl, gr, gt) = if tokens {
                (read.tokens_limit, read.tokens_remaining, read.tokens_reset)
            } else {
                (read.requests_limit, read.requests_remaining, read.requests_reset)
            };
            prop_assert_eq!(gl, Some(limit));
            prop_assert_eq!(gr, Some(remaining));
            let gt = gt.unwrap();
            let error = gt.abs_diff(reset);
            prop_assert!(error <= Duration::from_millis(1), "{:?} vs {:?} from {}", gt, reset, text);
        }
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
