//! Turning every way a call can end into an outcome class (DESIGN §5). The
//! table is in the crate documentation; this module is its implementation.

use std::error::Error as StdError;
use std::time::{Duration, SystemTime};

use reqwest::StatusCode;
use reqwest::header::HeaderMap;
use runnel_core::{LimitScope, Outcome, OutcomeClass};
use serde_json::Value;

use crate::quota::{QuotaSignal, quota_signal};
use crate::ratelimit::{parse_go_duration, retry_after};

/// How much of a body without a recognisable error message is quoted. Not a
/// setting: the whole message is cut to `calls.max_error_chars`, the one
/// knob for error length.
const BODY_SNIPPET_CHARS: usize = 300;

/// A call that did not succeed, before its message is redacted.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Fault {
    /// Never `Success`.
    pub(crate) class: OutcomeClass,
    /// What went wrong, possibly with credentials still in it.
    pub(crate) message: String,
    /// For rate limits: the provider's requested pause.
    pub(crate) retry_after: Option<Duration>,
    /// For rate limits: which limit the provider named.
    pub(crate) scope: LimitScope,
}

impl Fault {
    pub(crate) fn permanent(message: impl Into<String>) -> Self {
        Self {
            class: OutcomeClass::Permanent,
            message: message.into(),
            retry_after: None,
            scope: LimitScope::Unknown,
        }
    }

    pub(crate) fn transient(message: impl Into<String>) -> Self {
        Self {
            class: OutcomeClass::Transient,
            message: message.into(),
            retry_after: None,
            scope: LimitScope::Unknown,
        }
    }

    pub(crate) fn rate_limited(message: impl Into<String>, retry_after: Option<Duration>) -> Self {
        let message = message.into();
        Self {
            class: OutcomeClass::RateLimited,
            scope: limit_scope(&message, None),
            message,
            retry_after,
        }
    }

    pub(crate) fn quota(message: impl Into<String>, retry_after: Option<Duration>) -> Self {
        Self {
            class: OutcomeClass::QuotaExhausted,
            message: message.into(),
            retry_after,
            scope: LimitScope::Unknown,
        }
    }

    /// A rate limit whose wait is longer than `long_wait` (`advisor.long_wait`)
    /// is a used-up allowance, not a rate limit (DESIGN §6).
    pub(crate) fn long_wait(self, long_wait: Duration) -> Self {
        match self.retry_after {
            Some(wait) if self.class == OutcomeClass::RateLimited && wait > long_wait => {
                let message = format!(
                    "{} (the provider asks to wait {}, longer than advisor.long_wait = {}: \
                     treated as a used-up quota)",
                    self.message,
                    runnel_core::config::duration::format(wait),
                    runnel_core::config::duration::format(long_wait),
                );
                Self::quota(message, Some(wait))
            }
            _ => self,
        }
    }

    /// The outcome, with `clean` applied to the message (redaction and
    /// truncation happen there, in one place).
    pub(crate) fn into_outcome(self, clean: impl Fn(&str) -> String) -> Outcome {
        let message = clean(&self.message);
        match self.class {
            OutcomeClass::RateLimited => Outcome::RateLimited {
                retry_after: self.retry_after,
                scope: self.scope,
                message,
            },
            OutcomeClass::QuotaExhausted => Outcome::QuotaExhausted {
                message,
                retry_after: self.retry_after,
            },
            OutcomeClass::Transient => Outcome::Transient { message },
            // A fault is never a success; treat a misuse as permanent.
            OutcomeClass::Permanent | OutcomeClass::Success => Outcome::Permanent { message },
        }
    }
}

/// Whether an error text says the provider is throttling or overloaded.
pub(crate) fn is_throttling(text: &str) -> bool {
    let lower = text.to_ascii_lowercase();
    [
        "rate limit",
        "rate_limit",
        "ratelimit",
        "too many requests",
        "throttl",
        "overloaded",
        "resource_exhausted",
        "resource exhausted",
    ]
    .iter()
    .any(|p| lower.contains(p))
}

/// Which limit a rate-limit reply names: Groq's `error.type` (`"tokens"`,
/// `"requests"`), else the words of the message — OpenAI's "… on tokens per
/// min (TPM)", Anthropic's "… input tokens per minute", Together's
/// `dynamic_token_limited`.
pub(crate) fn limit_scope(text: &str, json: Option<&Value>) -> LimitScope {
    let kind = json
        .and_then(|v| v.pointer("/error/type"))
        .and_then(Value::as_str)
        .map(str::to_ascii_lowercase);
    match kind.as_deref() {
        Some("tokens") => return LimitScope::Tokens,
        Some("requests") => return LimitScope::Requests,
        _ => {}
    }
    let lower = text.to_ascii_lowercase();
    let names = |words: &[&str]| words.iter().any(|w| lower.contains(w));
    if names(&[
        "tokens per min",
        "tokens per day",
        "tokens per second",
        "(tpm)",
        "(tpd)",
        "token rate limit",
        "token_limited",
    ]) {
        LimitScope::Tokens
    } else if names(&[
        "requests per min",
        "requests per day",
        "requests per second",
        "(rpm)",
        "(rpd)",
        "request_limited",
    ]) {
        LimitScope::Requests
    } else {
        LimitScope::Unknown
    }
}

fn text_field(v: &Value, key: &str) -> Option<String> {
    match v.get(key)? {
        Value::String(s) if !s.trim().is_empty() => Some(s.trim().to_owned()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// The error message in a JSON error body, in any of the shapes providers
/// use: OpenAI / Azure `{"error": {"message", "type", "code"}}`, Anthropic
/// `{"type": "error", "error": {"type", "message"}}`, Gemini
/// `{"error": {"code", "message", "status"}}` (sometimes inside a list),
/// Ollama `{"error": "…"}`, FastAPI / vLLM `{"detail": …}`, `{"message": …}`.
pub(crate) fn error_message(body: &Value) -> Option<String> {
    let body = match body {
        Value::Array(items) => items.first()?,
        other => other,
    };
    if let Some(error) = body.get("error") {
        match error {
            Value::String(s) if !s.trim().is_empty() => return Some(s.trim().to_owned()),
            Value::Object(_) => {
                let kind = text_field(error, "type")
                    .or_else(|| text_field(error, "status"))
                    .or_else(|| text_field(error, "code"));
                let message = text_field(error, "message");
                return match (kind, message) {
                    (Some(k), Some(m)) => Some(format!("{k}: {m}")),
                    (k, m) => m.or(k),
                };
            }
            _ => {}
        }
    }
    if let Some(detail) = body.get("detail") {
        return Some(match detail {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        });
    }
    text_field(body, "message")
}

/// Gemini's `RetryInfo` detail: `{"@type": "…RetryInfo", "retryDelay": "30s"}`.
fn gemini_retry_delay(body: &Value) -> Option<Duration> {
    let body = match body {
        Value::Array(items) => items.first()?,
        other => other,
    };
    body.pointer("/error/details")?
        .as_array()?
        .iter()
        .filter_map(|d| d.get("retryDelay")?.as_str())
        .find_map(parse_go_duration)
}

/// What to say about a body: its error message, else the start of its text.
fn describe_body(body: &[u8]) -> (Option<Value>, String) {
    let json: Option<Value> = serde_json::from_slice(body).ok();
    let message = json.as_ref().and_then(error_message).unwrap_or_else(|| {
        let text = String::from_utf8_lossy(body);
        let collapsed: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
        crate::redact::truncate(&collapsed, BODY_SNIPPET_CHARS)
    });
    (json, message)
}

/// Classifies a reply whose status is not 2xx.
pub(crate) fn classify_status(
    status: StatusCode,
    headers: &HeaderMap,
    body: &[u8],
    now: SystemTime,
) -> Fault {
    let (json, detail) = describe_body(body);
    let head = match status.canonical_reason() {
        Some(reason) => format!("HTTP {} {reason}", status.as_u16()),
        None => format!("HTTP {}", status.as_u16()),
    };
    let message = if detail.is_empty() {
        head
    } else {
        format!("{head}: {detail}")
    };
    let wait = || retry_after(headers, now).or_else(|| json.as_ref().and_then(gemini_retry_delay));
    let code = status.as_u16();
    // Money or a used-up allowance, not a rate (see `crate::quota`).
    let quota = match code {
        402 => QuotaSignal::Exhausted {
            back_in: None,
            note: None,
        },
        429 => quota_signal(json.as_ref(), &detail, now),
        _ => QuotaSignal::None,
    };
    if let QuotaSignal::Exhausted { back_in, note } = quota {
        let message = match note {
            Some(note) => format!("{message} ({note})"),
            None => message,
        };
        return Fault::quota(message, back_in.or_else(|| retry_after(headers, now)));
    }
    match code {
        429 | 529 => Fault {
            scope: limit_scope(&detail, json.as_ref()),
            ..Fault::rate_limited(message, wait())
        },
        401 => Fault::permanent(message),
        _ if is_throttling(&detail) => Fault::rate_limited(message, wait()),
        408 | 409 | 500..=599 => Fault::transient(message),
        400..=499 => Fault::permanent(message),
        _ => Fault::permanent(format!(
            "{message} (unexpected status; redirects are not followed)"
        )),
    }
}

/// Classifies an error found inside a 2xx body or a stream: throttling is a
/// rate limit, anything else `otherwise`.
pub(crate) fn classify_error_text(message: String, otherwise: OutcomeClass) -> Fault {
    if is_throttling(&message) {
        Fault::rate_limited(message, None)
    } else {
        Fault {
            class: otherwise,
            message,
            retry_after: None,
            scope: LimitScope::Unknown,
        }
    }
}

/// An error and its causes, joined with `: `, repeats left out.
pub(crate) fn error_chain(err: &(dyn StdError + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut current: Option<&(dyn StdError + 'static)> = Some(err);
    while let Some(e) = current {
        let text = e.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        current = e.source();
    }
    parts.join(": ")
}

/// Classifies a transport failure of reqwest (sending, or reading a body).
pub(crate) fn classify_transport(err: &reqwest::Error, timeout: Duration) -> Fault {
    let chain = error_chain(err);
    if err.is_timeout() {
        Fault::transient(format!(
            "timed out: no complete reply within {}: {chain}",
            runnel_core::config::duration::format(timeout)
        ))
    } else if err.is_builder() || err.is_redirect() {
        Fault::permanent(format!("invalid request: {chain}"))
    } else if err.is_connect() {
        Fault::transient(format!("could not connect: {chain}"))
    } else {
        // Resets, closed connections, broken bodies: worth another try.
        Fault::transient(format!("connection failed: {chain}"))
    }
}

#[cfg(test)]
mod tests {
    use reqwest::header::HeaderValue;
    use serde_json::json;

    use super::*;

    fn status(code: u16, body: &str) -> Fault {
        classify_status(
            StatusCode::from_u16(code).unwrap(),
            &HeaderMap::new(),
            body.as_bytes(),
            SystemTime::now(),
        )
    }

    #[test]
    fn status_table() {
        use OutcomeClass::*;
        let cases = [
            (429, "", RateLimited),
            (
                529,
                r#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#,
                RateLimited,
            ),
            (
                429,
                r#"{"error":{"message":"You exceeded your current quota","code":"insufficient_quota"}}"#,
                QuotaExhausted,
            ),
            (
                402,
                r#"{"error":{"message":"Insufficient Balance","type":"unknown_error","param":null,"code":"invalid_request_error"}}"#,
                QuotaExhausted,
            ),
            (402, "", QuotaExhausted),
            (
                400,
                r#"{"__type":"ThrottlingException","message":"Too many requests, please wait"}"#,
                RateLimited,
            ),
            (
                503,
                r#"{"error":{"message":"The engine is currently overloaded"}}"#,
                RateLimited,
            ),
            (500, "oops", Transient),
            (502, "<html>bad gateway</html>", Transient),
            (503, "", Transient),
            (408, "", Transient),
            (409, "", Transient),
            (
                400,
                r#"{"error":{"message":"bad","type":"invalid_request_error"}}"#,
                Permanent,
            ),
            (
                401,
                r#"{"error":{"message":"rate limit your key usage"}}"#,
                Permanent,
            ),
            (403, "", Permanent),
            (404, "", Permanent),
            (
                422,
                r#"{"detail":[{"loc":["body","model"],"msg":"field required"}]}"#,
                Permanent,
            ),
            (418, "", Permanent),
            (302, "", Permanent),
        ];
        for (code, body, class) in cases {
            assert_eq!(status(code, body).class, class, "{code} {body}");
        }
    }

    #[test]
    fn messages_carry_the_providers_words() {
        assert_eq!(
            status(
                400,
                r#"{"error":{"message":"bad model","type":"invalid_request_error"}}"#
            )
            .message,
            "HTTP 400 Bad Request: invalid_request_error: bad model"
        );
        assert_eq!(
            status(
                404,
                r#"[{"error":{"code":404,"message":"not found","status":"NOT_FOUND"}}]"#
            )
            .message,
            "HTTP 404 Not Found: NOT_FOUND: not found"
        );
        assert_eq!(
            status(500, r#"{"error":"model crashed"}"#).message,
            "HTTP 500 Internal Server Error: model crashed"
        );
        assert_eq!(status(503, "").message, "HTTP 503 Service Unavailable");
        assert_eq!(
            status(502, "<h1>Bad\n   gateway</h1>").message,
            "HTTP 502 Bad Gateway: <h1>Bad gateway</h1>"
        );
        assert_eq!(status(529, "").message, "HTTP 529");
    }

    #[test]
    fn retry_after_from_headers_or_gemini_details() {
        let mut headers = HeaderMap::new();
        headers.insert("retry-after", HeaderValue::from_static("12"));
        let f = classify_status(
            StatusCode::TOO_MANY_REQUESTS,
            &headers,
            b"",
            SystemTime::now(),
        );
        assert_eq!(f.retry_after, Some(Duration::from_secs(12)));
        let body = json!({"error": {"code": 429, "status": "RESOURCE_EXHAUSTED", "message": "quota",
            "details": [{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "31s"}]}});
        let f = status(429, &body.to_string());
        assert_eq!(f.retry_after, Some(Duration::from_secs(31)));
        assert_eq!(status(429, "").retry_after, None);
    }

    #[test]
    fn a_429_names_the_limit_it_is_about() {
        let cases = [
            (
                r#"{"error":{"message":"Rate limit reached for gpt-4o-mini in organization org-x on tokens per min (TPM): Limit 40000, Used 39000, Requested 4000.","type":"tokens","code":"rate_limit_exceeded"}}"#,
                LimitScope::Tokens,
            ),
            (
                r#"{"error":{"message":"Rate limit reached for model `llama` on requests per minute (RPM): Limit 30, Used 30, Requested 1. Please try again in 2s.","type":"requests","code":"rate_limit_exceeded"}}"#,
                LimitScope::Requests,
            ),
            (
                r#"{"error":{"message":"Please try again in 5.289s","type":"tokens"}}"#,
                LimitScope::Tokens,
            ),
            (
                r#"{"type":"error","error":{"type":"rate_limit_error","message":"This request would exceed the rate limit for your organization of 40,000 input tokens per minute."}}"#,
                LimitScope::Tokens,
            ),
            (
                r#"{"error":{"message":"over limit","code":"dynamic_token_limited"}}"#,
                LimitScope::Tokens,
            ),
            (
                r#"{"error":{"message":"Rate limit reached for requests","type":"requests"}}"#,
                LimitScope::Requests,
            ),
            ("", LimitScope::Unknown),
            (
                r#"{"error":{"message":"Too many requests"}}"#,
                LimitScope::Unknown,
            ),
        ];
        for (body, scope) in cases {
            let fault = status(429, body);
            assert_eq!(fault.class, OutcomeClass::RateLimited, "{body}");
            assert_eq!(fault.scope, scope, "{body}");
            let outcome = fault.into_outcome(str::to_owned);
            assert!(matches!(outcome, Outcome::RateLimited { scope: s, .. } if s == scope));
        }
        // Throttling found in a stream's error text is scoped by its words.
        let f = classify_error_text(
            "rate limit: 6000 tokens per minute".into(),
            OutcomeClass::Transient,
        );
        assert_eq!(
            (f.class, f.scope),
            (OutcomeClass::RateLimited, LimitScope::Tokens)
        );
    }

    proptest::proptest! {
        #[test]
        fn any_status_and_body_is_classified_by_the_table(code in 100u16..600, body in ".{0,120}") {
            let fault = status(code, &body);
            let throttling = is_throttling(&fault.message);
            let expected = match code {
                402 => OutcomeClass::QuotaExhausted,
                429 if crate::quota::is_out_of_credit(&fault.message) => OutcomeClass::QuotaExhausted,
                429 | 529 => OutcomeClass::RateLimited,
                401 => OutcomeClass::Permanent,
                _ if throttling => OutcomeClass::RateLimited,
                408 | 409 | 500..=599 => OutcomeClass::Transient,
                _ => OutcomeClass::Permanent,
            };
            proptest::prop_assert_eq!(fault.class, expected);
        }

        #[test]
        fn no_reply_body_makes_an_adapter_panic(body in r#"[\[\]{}":,a-z0-9 ]{0,80}"#, wrap in 0usize..4) {
            let body = match wrap {
                0 => body,
                1 => format!(r#"{{"choices":[{{"message":{body}}}]}}"#),
                2 => format!(r#"{{"content":[{body}]}}"#),
                _ => format!(r#"{{"candidates":[{{"content":{{"parts":[{body}]}}}}]}}"#),
            };
            let _ = crate::openai::parse_reply(body.as_bytes());
            let _ = crate::anthropic::parse_reply(body.as_bytes());
            let _ = crate::gemini::parse_reply(body.as_bytes());
        }
    }

    #[test]
    fn long_waits_become_quota_and_keep_their_time() {
        let hour = Duration::from_secs(3600);
        let ten = Duration::from_secs(600);
        let f = Fault::rate_limited("HTTP 429", Some(hour)).long_wait(ten);
        assert_eq!(f.class, OutcomeClass::QuotaExhausted);
        assert_eq!(f.retry_after, Some(hour));
        assert_eq!(
            f.into_outcome(str::to_owned),
            Outcome::QuotaExhausted {
                message: "HTTP 429 (the provider asks to wait 3600s, longer than \
                          advisor.long_wait = 600s: treated as a used-up quota)"
                    .into(),
                retry_after: Some(hour),
            }
        );
        for f in [
            Fault::rate_limited("HTTP 429", Some(ten)),
            Fault::rate_limited("HTTP 429", None),
            Fault::transient("HTTP 503"),
        ] {
            assert_eq!(f.clone().long_wait(ten), f);
        }
    }

    #[test]
    fn faults_become_outcomes_through_the_cleaner() {
        let outcome = Fault::rate_limited("slow down sk-x", Some(Duration::from_secs(1)))
            .into_outcome(|m| m.replace("sk-x", "[REDACTED]"));
        assert_eq!(
            outcome,
            Outcome::RateLimited {
                retry_after: Some(Duration::from_secs(1)),
                scope: LimitScope::Unknown,
                message: "slow down [REDACTED]".into()
            }
        );
    }
}
