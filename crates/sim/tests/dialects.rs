//! The rate-limit dialects, algorithms, quota exhaustion and the new
//! `/stats` counters over real sockets, on the manual clock.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::{chat_body, has_header_starting, header, messages_body, start};
use serde_json::{Value, json};

const MS: Duration = Duration::from_millis(1);
const S: Duration = Duration::from_secs(1);

/// Names of the rate-limit and retry headers of a response, sorted.
fn limit_header_names(r: &reqwest::Response) -> Vec<String> {
    let mut names: Vec<String> = r
        .headers()
        .keys()
        .map(|n| n.as_str().to_owned())
        .filter(|n| n.contains("ratelimit") || n.contains("tokenlimit") || n.starts_with("retry"))
        .collect();
    names.sort();
    names
}

#[tokio::test]
async fn openai_shows_a_per_minute_bucket_and_bucket_shows_the_enforcing_one() {
    let t = start(json!({"limits": {"rpm": 3000}})).await;
    let r = t.chat("k", &chat_body("hi")).await.unwrap();
    assert_eq!(header(&r, "x-ratelimit-limit-requests"), "3000");
    assert_eq!(header(&r, "x-ratelimit-remaining-requests"), "2999");
    assert_eq!(header(&r, "x-ratelimit-reset-requests"), "20ms");

    // The server of issue 12: 20 a second, its bucket in the headers.
    t.admin(&json!({"limits": {"rpm": null, "rps": 20, "dialect": "bucket"}}))
        .await;
    let r = t.chat("b", &chat_body("hi")).await.unwrap();
    assert_eq!(header(&r, "x-ratelimit-limit-requests"), "20");
    assert_eq!(header(&r, "x-ratelimit-remaining-requests"), "19");
    assert_eq!(header(&r, "x-ratelimit-reset-requests"), "50ms");
}

#[tokio::test]
async fn daily_announces_the_day_and_not_the_binding_limit() {
    let t =
        start(json!({"limits": {"rps": 2, "rpd": 1000, "tpm": 60000, "dialect": "daily"}})).await;
    t.advance(3600 * S);
    let body = chat_body("What is 2 + 2?"); // 4 + 1 tokens
    let r = t.chat("k", &body).await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "x-ratelimit-limit-requests"), "1000");
    assert_eq!(header(&r, "x-ratelimit-remaining-requests"), "999");
    assert_eq!(header(&r, "x-ratelimit-reset-requests"), "23h0m0s");
    assert_eq!(header(&r, "x-ratelimit-limit-tokens"), "60000");
    assert_eq!(header(&r, "x-ratelimit-remaining-tokens"), "59995");
    assert_eq!(header(&r, "x-ratelimit-reset-tokens"), "5ms");
    assert_eq!(t.chat("k", &body).await.unwrap().status(), 200);
    let r = t.chat("k", &body).await.unwrap();
    assert_eq!(r.status(), 429);
    assert_eq!(header(&r, "retry-after"), "1", "whole seconds only");
    assert_eq!(header(&r, "retry-after-ms"), "");
    assert_eq!(header(&r, "x-ratelimit-remaining-requests"), "998");
    let error: Value = r.json().await.unwrap();
    assert_eq!(error["error"]["type"], "requests");
}

#[tokio::test]
async fn a_day_limit_refuses_until_the_next_day() {
    let t = start(json!({"limits": {"rpd": 2, "dialect": "daily"}})).await;
    for _ in 0..2 {
        assert_eq!(t.chat("k", &chat_body("hi")).await.unwrap().status(), 200);
    }
    t.advance(86_399 * S);
    let r = t.chat("k", &chat_body("hi")).await.unwrap();
    assert_eq!(r.status(), 429);
    assert_eq!(header(&r, "retry-after"), "1");
    assert_eq!(header(&r, "x-ratelimit-remaining-requests"), "0");
    let message = common::error_message(r).await;
    assert!(
        message.contains("requests per day (RPD): Limit 2, Used 2"),
        "{message}"
    );
    t.advance(S);
    assert_eq!(t.chat("k", &chat_body("hi")).await.unwrap().status(), 200);
}

#[tokio::test]
async fn remaining_sends_only_remaining_and_both_retry_headers() {
    let t = start(
        json!({"limits": {"rps": 1, "tpm": 60000, "dialect": "remaining",
        "algorithm": "fixed_window", "window": "10s"}}),
    )
    .await;
    let r = t.chat("k", &chat_body("hi")).await.unwrap();
    assert_eq!(
        limit_header_names(&r),
        [
            "x-ratelimit-remaining-requests",
            "x-ratelimit-remaining-tokens"
        ]
    );
    // A 10 s window of 1 a second holds 10 requests (and 10,000 tokens).
    assert_eq!(header(&r, "x-ratelimit-remaining-requests"), "9");
    for _ in 0..9 {
        assert_eq!(t.chat("k", &chat_body("hi")).await.unwrap().status(), 200);
    }
    t.advance(4 * S);
    let r = t.chat("k", &chat_body("hi")).await.unwrap();
    assert_eq!(r.status(), 429);
    assert_eq!(header(&r, "retry-after-ms"), "6000");
    assert_eq!(header(&r, "retry-after"), "6");
    t.advance(6 * S - MS);
    assert_eq!(t.chat("k", &chat_body("hi")).await.unwrap().status(), 429);
    t.advance(MS);
    assert_eq!(t.chat("k", &chat_body("hi")).await.unwrap().status(), 200);
}

#[tokio::test]
async fn anthropic_dialect_on_the_openai_route_and_together_per_second() {
    let t = start(json!({"limits": {"rpm": 120, "dialect": "anthropic"}})).await;
    let r = t.chat("k", &chat_body("hi")).await.unwrap();
    assert_eq!(header(&r, "anthropic-ratelimit-requests-limit"), "120");
    assert_eq!(header(&r, "anthropic-ratelimit-requests-remaining"), "119");
    assert!(header(&r, "anthropic-ratelimit-requests-reset").ends_with('Z'));
    assert!(!has_header_starting(&r, "x-ratelimit"));
    t.chat("k", &chat_body("hi")).await.unwrap();
    let r = t.chat("k", &chat_body("hi")).await.unwrap();
    assert_eq!(r.status(), 429);
    assert_eq!(
        limit_header_names(&r),
        [
            "anthropic-ratelimit-requests-limit",
            "anthropic-ratelimit-requests-remaining",
            "anthropic-ratelimit-requests-reset",
            "retry-after"
        ]
    );
    let error: Value = r.json().await.unwrap();
    assert_eq!(
        error["error"]["code"], "rate_limit_exceeded",
        "the route's body"
    );

    t.admin(&json!({"limits": {"rpm": null, "rps": 20, "tpm": 60000, "dialect": "together"}}))
        .await;
    let r = t.messages("t", &messages_body("hi")).await.unwrap();
    assert_eq!(
        limit_header_names(&r),
        [
            "x-ratelimit-limit",
            "x-ratelimit-remaining",
            "x-ratelimit-reset",
            "x-tokenlimit-limit",
            "x-tokenlimit-remaining"
        ]
    );
    assert_eq!(header(&r, "x-ratelimit-limit"), "20");
    assert_eq!(header(&r, "x-ratelimit-remaining"), "19");
    assert_eq!(header(&r, "x-ratelimit-reset"), "0.05");
    assert_eq!(header(&r, "x-tokenlimit-limit"), "1000");
}

#[tokio::test]
async fn dialect_none_is_bare() {
    let t = start(json!({"limits": {"rps": 1, "tpm": 6000, "dialect": "none"}})).await;
    let ok = t.chat("k", &chat_body("hi")).await.unwrap();
    assert!(limit_header_names(&ok).is_empty());
    let limited = t.chat("k", &chat_body("hi")).await.unwrap();
    assert_eq!(limited.status(), 429);
    assert!(limit_header_names(&limited).is_empty());
    assert!(limited.bytes().await.unwrap().is_empty());
}

#[tokio::test]
async fn quota_exhaustion_lasts_until_a_patch_and_is_counted() {
    let t = start(json!({"limits": {"rps": 100, "quota_after": 2}})).await;
    for _ in 0..2 {
        assert_eq!(t.chat("k", &chat_body("hi")).await.unwrap().status(), 200);
    }
    for _ in 0..3 {
        let r = t.chat("k", &chat_body("hi")).await.unwrap();
        assert_eq!(r.status(), 429);
        assert_eq!(header(&r, "retry-after"), "");
        assert_eq!(header(&r, "retry-after-ms"), "");
        let error: Value = r.json().await.unwrap();
        assert_eq!(error["error"]["code"], "insufficient_quota");
        t.advance(3600 * S);
    }
    let stats = t.http_stats().await;
    assert_eq!(stats.quota_exhausted, 3);
    assert_eq!(stats.classes.rate_limited, 3);
    assert_eq!(stats.keys["k"].quota_exhausted, 3);

    t.admin(&json!({"limits": {"quota_style": "anthropic"}}))
        .await;
    let r = t.messages("k", &messages_body("hi")).await.unwrap();
    let error: Value = r.json().await.unwrap();
    assert_eq!(
        error["error"]["details"]["error_code"],
        "enforced_spend_limit_reached"
    );
    t.admin(&json!({"limits": {"quota_style": "gemini"}})).await;
    let error: Value = t
        .chat("k", &chat_body("hi"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(error["error"]["status"], "RESOURCE_EXHAUSTED");
    t.admin(&json!({"limits": {"quota_style": "long_retry"}}))
        .await;
    let r = t.chat("k", &chat_body("hi")).await.unwrap();
    assert_eq!(header(&r, "retry-after"), "3600");
    assert_eq!(header(&r, "retry-after-ms"), "3600000");
    let error: Value = r.json().await.unwrap();
    assert_eq!(error["error"]["code"], "rate_limit_exceeded");

    t.admin(&json!({"limits": {"quota_after": null}})).await;
    assert_eq!(t.chat("k", &chat_body("hi")).await.unwrap().status(), 200);
}

#[tokio::test]
async fn the_hidden_client_is_counted_apart_and_drains_remaining() {
    let t = start(json!({"limits": {"rps": 10, "hidden_share": 0.5, "dialect": "bucket"}})).await;
    let r = t.chat("k", &chat_body("hi")).await.unwrap();
    assert_eq!(header(&r, "x-ratelimit-remaining-requests"), "9");
    // 10 at once empty the bucket; it then refills at 5 a second, not 10.
    for _ in 0..9 {
        t.chat("k", &chat_body("hi")).await.unwrap();
    }
    let r = t.chat("k", &chat_body("hi")).await.unwrap();
    assert_eq!(header(&r, "retry-after-ms"), "200");
    t.advance(2 * S);
    let r = t.chat("k", &chat_body("hi")).await.unwrap();
    assert_eq!(header(&r, "x-ratelimit-remaining-requests"), "9");
    let stats = t.http_stats().await;
    assert_eq!(stats.hidden, 10);
    assert_eq!(stats.requests, 12);
}

#[tokio::test]
async fn big_prompts_cost_their_tokens() {
    let t = start(json!({"limits": {"tpm": 40000, "burst": "60s"}})).await;
    // 16,000 characters are 4,000 prompt tokens.
    let prompt = "abcd".repeat(4000);
    let body = json!({"model": "m", "max_tokens": 100,
        "messages": [{"role": "user", "content": prompt}]});
    let r = t.chat("k", &body).await.unwrap();
    let remaining: u64 = header(&r, "x-ratelimit-remaining-tokens").parse().unwrap();
    let usage: Value = r.json().await.unwrap();
    assert_eq!(usage["usage"]["prompt_tokens"], 4000);
    let total = usage["usage"]["total_tokens"].as_u64().unwrap();
    assert_eq!(remaining, 40000 - total);
    let mut admitted = 1;
    loop {
        let r = t.chat("k", &body).await.unwrap();
        if r.status() != 200 {
            let error: Value = r.json().await.unwrap();
            assert_eq!(error["error"]["type"], "tokens");
            break;
        }
        admitted += 1;
    }
    assert_eq!(admitted, 40000 / total);
}

#[tokio::test]
async fn repeated_successes_count_identical_requests_answered_before() {
    let t = start(json!({})).await;
    for prompt in ["a", "b", "a", "a"] {
        t.chat("k", &chat_body(prompt)).await.unwrap();
    }
    // Another route or another model is another request.
    t.messages("k", &messages_body("a")).await.unwrap();
    t.chat(
        "k",
        &json!({"model": "other", "messages": [{"role": "user", "content": "a"}]}),
    )
    .await
    .unwrap();
    assert_eq!(t.http_stats().await.repeated_successes, 2);
    t.client.post(t.url("/admin/reset")).send().await.unwrap();
    t.chat("k", &chat_body("a")).await.unwrap();
    assert_eq!(t.http_stats().await.repeated_successes, 0);
}
