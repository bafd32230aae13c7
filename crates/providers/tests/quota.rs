//! Quota exhaustion through the registry against a local mock server: the
//! replies of PROVIDERS.md "429 and what it means" end as `QuotaExhausted`
//! (with the time the quota comes back when it is known), while ordinary
//! 429s — Gemini per-minute included — stay `RateLimited`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::*;
use runnel_core::{Outcome, Provider, ProviderKind};
use serde_json::json;
use wiremock::matchers::method;
use wiremock::{Mock, MockServer, ResponseTemplate};

async fn answer(template: ResponseTemplate) -> MockServer {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(template)
        .mount(&server)
        .await;
    server
}

async fn call(kind: ProviderKind, template: ResponseTemplate) -> Outcome {
    let server = answer(template).await;
    let base = match kind {
        ProviderKind::Anthropic | ProviderKind::Gemini => server.uri(),
        _ => format!("{}/v1", server.uri()),
    };
    let p = registry("p", kind, &base);
    p.call(&task(spec("p", "m", &[("user", "hi")])), None)
        .await
        .outcome
}

fn quota(outcome: &Outcome) -> (String, Option<Duration>) {
    match outcome {
        Outcome::QuotaExhausted {
            message,
            retry_after,
        } => (message.clone(), *retry_after),
        other => panic!("expected quota exhaustion, got {other:?}"),
    }
}

#[tokio::test]
async fn openai_insufficient_quota() {
    let body = json!({"error": {
        "message": "You exceeded your current quota, please check your plan and billing details. For more information on this error, read the docs: https://platform.openai.com/docs/guides/error-codes/api-errors.",
        "type": "insufficient_quota", "param": null, "code": "insufficient_quota"}});
    let outcome = call(
        ProviderKind::OpenAi,
        ResponseTemplate::new(429).set_body_json(body),
    )
    .await;
    let (message, back) = quota(&outcome);
    assert!(
        message.starts_with(
            "HTTP 429 Too Many Requests: insufficient_quota: You exceeded your current quota"
        ),
        "{message}"
    );
    assert_eq!(back, None);
}

#[tokio::test]
async fn anthropic_spend_limit() {
    let body = json!({"type": "error", "error": {"type": "rate_limit_error",
        "message": "You have reached your specified API usage limits. You will regain access on 2027-01-01 at 00:00 UTC.",
        "details": {"error_code": "enforced_spend_limit_reached"}}});
    let outcome = call(
        ProviderKind::Anthropic,
        ResponseTemplate::new(429).set_body_json(body),
    )
    .await;
    let (message, _) = quota(&outcome);
    assert!(
        message.contains("API usage limits") && message.contains("spend limit"),
        "{message}"
    );
}

fn gemini_body(quota_id: &str) -> serde_json::Value {
    json!([{"error": {"code": 429, "status": "RESOURCE_EXHAUSTED",
        "message": "You exceeded your current quota, please check your plan and billing details. For more information on this error, head to: https://ai.google.dev/gemini-api/docs/rate-limits.",
        "details": [
            {"@type": "type.googleapis.com/google.rpc.QuotaFailure", "violations": [{
                "quotaMetric": "generativelanguage.googleapis.com/generate_content_free_tier_requests",
                "quotaId": quota_id,
                "quotaDimensions": {"location": "global", "model": "gemini-2.0-flash"},
                "quotaValue": "15"}]},
            {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "33s"}]}}])
}

#[tokio::test]
async fn gemini_per_day_waits_until_midnight_pacific_and_per_minute_is_a_rate_limit() {
    let outcome = call(
        ProviderKind::Gemini,
        ResponseTemplate::new(429).set_body_json(gemini_body(
            "GenerateRequestsPerDayPerProjectPerModel-FreeTier",
        )),
    )
    .await;
    let (message, back) = quota(&outcome);
    assert!(message.contains("midnight Pacific"), "{message}");
    let back = back.expect("the reset of a daily quota is known");
    assert!(
        back > Duration::ZERO && back <= Duration::from_secs(25 * 3600),
        "{back:?}"
    );

    let outcome = call(
        ProviderKind::Gemini,
        ResponseTemplate::new(429).set_body_json(gemini_body(
            "GenerateRequestsPerMinutePerProjectPerModel-FreeTier",
        )),
    )
    .await;
    assert!(
        matches!(outcome, Outcome::RateLimited { retry_after: Some(d), .. } if d == Duration::from_secs(33)),
        "{outcome:?}"
    );
}

#[tokio::test]
async fn payment_required_is_quota() {
    let deepseek = json!({"error": {"message": "Insufficient Balance", "type": "unknown_error", "param": null, "code": "invalid_request_error"}});
    let outcome = call(
        ProviderKind::DeepSeek,
        ResponseTemplate::new(402).set_body_json(deepseek),
    )
    .await;
    assert!(quota(&outcome).0.contains("Insufficient Balance"));
    let openrouter = json!({"error": {"code": 402, "message": "Insufficient credits. Add more using https://openrouter.ai/settings/credits",
        "metadata": {"limit_source": "key"}}});
    let outcome = call(
        ProviderKind::OpenAiCompatible,
        ResponseTemplate::new(402).set_body_json(openrouter),
    )
    .await;
    assert!(quota(&outcome).0.contains("Insufficient credits"));
}

#[tokio::test]
async fn a_retry_after_beyond_long_wait_is_quota_and_a_short_one_is_not() {
    let outcome = call(
        ProviderKind::OpenAi,
        ResponseTemplate::new(429).insert_header("retry-after", "3600"),
    )
    .await;
    let (message, back) = quota(&outcome);
    assert_eq!(back, Some(Duration::from_secs(3600)));
    assert!(
        message.contains("longer than advisor.long_wait = 600s"),
        "{message}"
    );
    let outcome = call(
        ProviderKind::OpenAi,
        ResponseTemplate::new(429).insert_header("retry-after", "600"),
    )
    .await;
    assert!(
        matches!(outcome, Outcome::RateLimited { retry_after: Some(d), .. } if d == Duration::from_secs(600))
    );
}
