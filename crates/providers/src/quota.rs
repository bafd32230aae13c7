//! Telling quota exhaustion from a rate limit (DESIGN §5–6, PROVIDERS.md
//! "429 and what it means"). A 429 usually means "slow down"; these mean
//! "the allowance is used up", which waiting a few seconds does not fix:
//!
//! | reply | quota | comes back |
//! |---|---|---|
//! | 402 (DeepSeek "Insufficient Balance", OpenRouter) | credit | unknown |
//! | OpenAI 429 `insufficient_quota`, "exceeded your current quota" | credit, monthly spend | unknown |
//! | Anthropic 429 `error.details.error_code: "enforced_spend_limit_reached"` | monthly spend cap | unknown |
//! | Gemini 429 `RESOURCE_EXHAUSTED`, `QuotaFailure` `quotaId` `…PerDay…` | daily quota of the project | midnight Pacific |
//! | any 429 whose `retry-after` exceeds `advisor.long_wait` | an allowance of hours | as stated |
//!
//! A Gemini `RESOURCE_EXHAUSTED` whose quota is per minute stays a rate
//! limit (its `RetryInfo.retryDelay` is the wait), even though its message
//! also says "You exceeded your current quota".

use std::time::{Duration, SystemTime};

use chrono::{DateTime, Datelike, NaiveDate, NaiveDateTime, TimeDelta, Utc, Weekday};
use serde_json::Value;

/// What a 429 (or 402) body says about the quota.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum QuotaSignal {
    /// Not a quota: an ordinary rate limit (or no signal at all).
    None,
    /// The quota is used up; it comes back after this long, if known. The
    /// text says which quota, for the message.
    Exhausted {
        /// When it comes back, if the reply says (or the quota's reset is known).
        back_in: Option<Duration>,
        /// Which quota, when the body names it (appended to the message).
        note: Option<String>,
    },
}

/// Whether an error text says the account is out of credit or over its
/// spend, which waiting does not fix (OpenAI answers 429 `insufficient_quota`
/// with "You exceeded your current quota").
pub(crate) fn is_out_of_credit(text: &str) -> bool {
    let lower = text.to_ascii_lowercase();
    [
        "insufficient_quota",
        "exceeded your current quota",
        "insufficient balance",
        "insufficient credits",
        "credit balance",
        "billing",
    ]
    .iter()
    .any(|p| lower.contains(p))
}

/// The first error object of a body (Gemini sometimes sends a list).
fn error_object(body: &Value) -> Option<&Value> {
    let body = match body {
        Value::Array(items) => items.first()?,
        other => other,
    };
    body.get("error")
}

/// Reads a 429's body: Gemini quota details first (they decide per-minute
/// against per-day), then Anthropic's spend limit, then the words of
/// credit and billing exhaustion.
pub(crate) fn quota_signal(json: Option<&Value>, detail: &str, now: SystemTime) -> QuotaSignal {
    let error = json.and_then(error_object);
    if let Some(error) = error
        && error.get("status").and_then(Value::as_str) == Some("RESOURCE_EXHAUSTED")
    {
        return gemini(error, now);
    }
    if let Some(code) = error
        .and_then(|e| e.pointer("/details/error_code"))
        .and_then(Value::as_str)
        && code == "enforced_spend_limit_reached"
    {
        return QuotaSignal::Exhausted {
            back_in: None,
            note: Some("the organisation's monthly spend limit is reached".into()),
        };
    }
    if is_out_of_credit(detail) {
        return QuotaSignal::Exhausted {
            back_in: None,
            note: None,
        };
    }
    QuotaSignal::None
}

/// Gemini `RESOURCE_EXHAUSTED`: a `QuotaFailure` violation whose `quotaId`
/// names a per-day quota is exhaustion until midnight Pacific; anything
/// else (per minute, no details) is a rate limit.
fn gemini(error: &Value, now: SystemTime) -> QuotaSignal {
    let daily = error
        .get("details")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|d| d.get("violations")?.as_array())
        .flatten()
        .filter_map(|v| v.get("quotaId")?.as_str())
        .find(|id| id.contains("PerDay"));
    match daily {
        Some(id) => QuotaSignal::Exhausted {
            back_in: until_pacific_midnight(now),
            note: Some(format!(
                "daily quota `{id}` used up; it resets at midnight Pacific time"
            )),
        },
        None => QuotaSignal::None,
    }
}

/// Whether US Pacific time observes daylight saving at `t`: from the second
/// Sunday of March, 02:00 PST (10:00 UTC), to the first Sunday of November,
/// 02:00 PDT (09:00 UTC).
fn pacific_daylight(t: DateTime<Utc>) -> bool {
    let year = t.year();
    let at = |month, nth, hour| {
        NaiveDate::from_weekday_of_month_opt(year, month, Weekday::Sun, nth)
            .and_then(|d| d.and_hms_opt(hour, 0, 0))
    };
    match (at(3, 2, 10), at(11, 1, 9)) {
        (Some(start), Some(end)) => {
            let t = t.naive_utc();
            start <= t && t < end
        }
        _ => false,
    }
}

/// How long from `now` until the next midnight in US Pacific time, when
/// Gemini's daily quotas reset. No time-zone database is needed: the rule
/// of US daylight saving is fixed in law, and midnight is never inside a
/// change (those happen at 02:00).
pub(crate) fn until_pacific_midnight(now: SystemTime) -> Option<Duration> {
    let utc: DateTime<Utc> = now.into();
    let offset = |t: DateTime<Utc>| TimeDelta::hours(if pacific_daylight(t) { 7 } else { 8 });
    let local: NaiveDateTime = utc.naive_utc() - offset(utc);
    let midnight = local.date().succ_opt()?.and_hms_opt(0, 0, 0)?;
    // The offset at that midnight: standard time first, daylight if that
    // instant is in daylight time.
    let standard = (midnight + TimeDelta::hours(8)).and_utc();
    let reset = if pacific_daylight(standard) {
        (midnight + TimeDelta::hours(7)).and_utc()
    } else {
        standard
    };
    (reset - utc).to_std().ok()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn at(text: &str) -> SystemTime {
        DateTime::parse_from_rfc3339(text).unwrap().into()
    }

    #[test]
    fn midnight_pacific_in_winter_summer_and_across_the_changes() {
        let hours = |d: Option<Duration>| d.map(|d| d.as_secs_f64() / 3600.0);
        // Winter (PST, UTC-8): 20:00 UTC is 12:00 PST, midnight in 12 h.
        assert_eq!(
            hours(until_pacific_midnight(at("2026-01-15T20:00:00Z"))),
            Some(12.0)
        );
        // Summer (PDT, UTC-7): 20:00 UTC is 13:00 PDT, midnight in 11 h.
        assert_eq!(
            hours(until_pacific_midnight(at("2026-07-15T20:00:00Z"))),
            Some(11.0)
        );
        // Just after midnight PST: almost a whole day.
        assert_eq!(
            until_pacific_midnight(at("2026-01-15T08:00:01Z")),
            Some(Duration::from_secs(24 * 3600 - 1))
        );
        // 2026-03-08 is the second Sunday of March: a 23-hour day. At
        // 00:00 PST (08:00 UTC) the next midnight is 07:00 UTC on the 9th.
        assert_eq!(
            hours(until_pacific_midnight(at("2026-03-08T08:00:00Z"))),
            Some(23.0)
        );
        // 2026-11-01 is the first Sunday of November: a 25-hour day.
        assert_eq!(
            hours(until_pacific_midnight(at("2026-11-01T07:00:00Z"))),
            Some(25.0)
        );
    }

    #[test]
    fn gemini_per_day_is_quota_and_per_minute_is_a_rate_limit() {
        let now = at("2026-01-15T20:00:00Z");
        let body = |quota_id: &str| {
            json!({"error": {"code": 429, "status": "RESOURCE_EXHAUSTED",
                "message": "You exceeded your current quota, please check your plan and billing details.",
                "details": [
                    {"@type": "type.googleapis.com/google.rpc.QuotaFailure", "violations": [{
                        "quotaMetric": "generativelanguage.googleapis.com/generate_content_free_tier_requests",
                        "quotaId": quota_id,
                        "quotaDimensions": {"location": "global", "model": "gemini-2.0-flash"},
                        "quotaValue": "200"}]},
                    {"@type": "type.googleapis.com/google.rpc.Help", "links": [{"description": "Learn more", "url": "https://ai.google.dev/gemini-api/docs/rate-limits"}]},
                    {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "33s"}]}})
        };
        let detail = "RESOURCE_EXHAUSTED: You exceeded your current quota, please check your plan and billing details.";
        let daily = body("GenerateRequestsPerDayPerProjectPerModel-FreeTier");
        match quota_signal(Some(&daily), detail, now) {
            QuotaSignal::Exhausted { back_in, note } => {
                assert_eq!(back_in, Some(Duration::from_secs(12 * 3600)));
                assert!(
                    note.unwrap()
                        .contains("GenerateRequestsPerDayPerProjectPerModel-FreeTier")
                );
            }
            other => panic!("{other:?}"),
        }
        // Its message says "exceeded your current quota" too: the details decide.
        let minute = body("GenerateRequestsPerMinutePerProjectPerModel-FreeTier");
        assert_eq!(quota_signal(Some(&minute), detail, now), QuotaSignal::None);
    }

    #[test]
    fn openai_anthropic_and_credit_words() {
        let now = SystemTime::now();
        let openai = json!({"error": {"message": "You exceeded your current quota, please check your plan and billing details. For more information on this error, read the docs: https://platform.openai.com/docs/guides/error-codes/api-errors.",
            "type": "insufficient_quota", "param": null, "code": "insufficient_quota"}});
        assert!(matches!(
            quota_signal(
                Some(&openai),
                "insufficient_quota: You exceeded your current quota",
                now
            ),
            QuotaSignal::Exhausted { back_in: None, .. }
        ));
        let anthropic = json!({"type": "error", "error": {"type": "rate_limit_error",
            "message": "You have reached your specified API usage limits. You will regain access on 2026-12-01 at 00:00 UTC.",
            "details": {"error_code": "enforced_spend_limit_reached"}}});
        match quota_signal(
            Some(&anthropic),
            "rate_limit_error: You have reached your specified API usage limits.",
            now,
        ) {
            QuotaSignal::Exhausted { note, .. } => assert!(note.unwrap().contains("spend limit")),
            other => panic!("{other:?}"),
        }
        let plain = json!({"type": "error", "error": {"type": "rate_limit_error",
            "message": "Number of request tokens has exceeded your per-minute rate limit"}});
        assert_eq!(
            quota_signal(
                Some(&plain),
                "rate_limit_error: Number of request tokens has exceeded your per-minute rate limit",
                now
            ),
            QuotaSignal::None
        );
        assert!(is_out_of_credit("Insufficient Balance"));
        assert!(!is_out_of_credit(
            "Rate limit reached for gpt-4o in organization org-x on requests per min (RPM): Limit 500"
        ));
    }
}
