//! Rate limits over real sockets: exact burst capacity, exact refill on the
//! manual clock, both header styles, token limits, per-model keys,
//! headerless mode and runtime changes.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use chrono::{DateTime, Utc};
use common::{chat_body, has_header_starting, header, messages_body, start};
use futures::future::join_all;
use serde_json::{Value, json};

const MS: Duration = Duration::from_millis(1);

#[tokio::test]
async fn a_burst_gets_exactly_the_capacity_and_the_rest_429_with_headers() {
    let t = start(json!({"limits": {"rps": 5}})).await;
    let body = chat_body("Hello");
    let responses = join_all((0..8).map(|_| t.chat("sk-a", &body))).await;
    let (ok, limited): (Vec<_>, Vec<_>) = responses
        .into_iter()
        .map(Result::unwrap)
        .partition(|r| r.status() == 200);
    assert_eq!(ok.len(), 5);
    assert_eq!(limited.len(), 3);

    // The headers describe a per-minute bucket of 300 (OpenAI's figure);
    // the one-second bucket of 5 enforces it.
    let mut remaining: Vec<String> = ok
        .iter()
        .map(|r| header(r, "x-ratelimit-remaining-requests"))
        .collect();
    remaining.sort();
    assert_eq!(remaining, ["295", "296", "297", "298", "299"]);
    for r in &ok {
        assert_eq!(header(r, "x-ratelimit-limit-requests"), "300");
        assert_eq!(header(r, "retry-after"), "");
    }
    for r in limited {
        assert_eq!(r.status(), 429);
        assert_eq!(header(&r, "retry-after-ms"), "200");
        assert_eq!(header(&r, "retry-after"), "1");
        assert_eq!(header(&r, "x-ratelimit-limit-requests"), "300");
        assert_eq!(header(&r, "x-ratelimit-remaining-requests"), "295");
        assert_eq!(header(&r, "x-ratelimit-reset-requests"), "1s");
        let error: Value = r.json().await.unwrap();
        assert_eq!(error["error"]["code"], "rate_limit_exceeded");
        assert_eq!(error["error"]["type"], "requests");
        let message = error["error"]["message"].as_str().unwrap();
        assert!(
            message.contains("on requests per min (RPM): Limit 300, Used 5, Requested 1.")
                && message.contains("Please try again in 200ms."),
            "{message}"
        );
    }

    // Refill, stepped exactly: one request's worth after 200 ms, not before.
    t.advance(199 * MS);
    assert_eq!(t.chat("sk-a", &body).await.unwrap().status(), 429);
    t.advance(MS);
    let r = t.chat("sk-a", &body).await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "x-ratelimit-remaining-requests"), "295");
    assert_eq!(header(&r, "x-ratelimit-reset-requests"), "1s");
    // Another key was never touched.
    assert_eq!(t.chat("sk-b", &body).await.unwrap().status(), 200);

    let stats = t.sim.stats();
    assert_eq!(stats.classes.ok, 7);
    assert_eq!(stats.classes.rate_limited, 4);
    assert_eq!(stats.keys["sk-a"].rate_limited, 4);
    assert_eq!(stats.keys["sk-b"].requests, 1);
}

#[tokio::test]
async fn a_per_minute_limit_with_a_minute_of_burst_lets_a_minute_through() {
    let t = start(json!({"limits": {"rpm": 30, "burst": "60s"}})).await;
    let body = chat_body("Hello");
    let statuses = join_all((0..40).map(|_| t.chat("k", &body))).await;
    let ok = statuses
        .iter()
        .filter(|r| r.as_ref().unwrap().status() == 200)
        .count();
    assert_eq!(ok, 30);
    let r = t.chat("k", &body).await.unwrap();
    assert_eq!(header(&r, "retry-after-ms"), "2000");
    assert_eq!(header(&r, "retry-after"), "2");
    assert_eq!(header(&r, "x-ratelimit-reset-requests"), "1m0s");
}

#[tokio::test]
async fn anthropic_style_headers_on_messages() {
    let t = start(json!({"limits": {"rpm": 60, "tpm": 6000}})).await;
    let before = Utc::now();
    let r = t
        .messages("sk-ant", &messages_body("What is 2 + 2?"))
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "anthropic-ratelimit-requests-limit"), "60");
    assert_eq!(header(&r, "anthropic-ratelimit-requests-remaining"), "59");
    assert_eq!(header(&r, "anthropic-ratelimit-tokens-limit"), "6000");
    // "What is 2 + 2?" is 14 characters (4 tokens), "4" is 1: 5995 left,
    // rounded to the nearest thousand as Anthropic does.
    assert_eq!(header(&r, "anthropic-ratelimit-tokens-remaining"), "6000");
    let reset: DateTime<Utc> = header(&r, "anthropic-ratelimit-requests-reset")
        .parse()
        .unwrap();
    let until = reset - before;
    assert!(
        until > chrono::Duration::zero() && until <= chrono::Duration::seconds(3),
        "{until}"
    );
    assert!(header(&r, "anthropic-ratelimit-tokens-reset").ends_with('Z'));
    assert!(!has_header_starting(&r, "x-ratelimit"));

    let r = t
        .messages("sk-ant", &messages_body("What is 2 + 2?"))
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    // Anthropic sends whole seconds only.
    assert_eq!(header(&r, "retry-after"), "1");
    assert_eq!(header(&r, "retry-after-ms"), "");
    let error: Value = r.json().await.unwrap();
    assert_eq!(error["type"], "error");
    assert_eq!(error["error"]["type"], "rate_limit_error");

    // The OpenAI endpoint with the same key shares the bucket but speaks its own style.
    let r = t
        .chat("sk-ant", &chat_body("What is 2 + 2?"))
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    assert_eq!(header(&r, "x-ratelimit-limit-requests"), "60");
    assert!(!has_header_starting(&r, "anthropic-"));
}

#[tokio::test]
async fn token_limit_charges_prompt_and_completion() {
    // 600 tokens a minute: 10 a second, a bucket of 10.
    let t = start(json!({"limits": {"tpm": 600}})).await;
    let body = chat_body("What is 2 + 2?"); // 4 prompt + 1 completion tokens
    let r = t.chat("k", &body).await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "x-ratelimit-limit-tokens"), "600");
    assert_eq!(header(&r, "x-ratelimit-remaining-tokens"), "595");
    assert_eq!(header(&r, "x-ratelimit-reset-tokens"), "500ms");
    assert_eq!(
        header(&r, "x-ratelimit-limit-requests"),
        "",
        "no request limit set"
    );
    let usage: Value = r.json().await.unwrap();
    assert_eq!(usage["usage"]["total_tokens"], 5);
    assert_eq!(t.chat("k", &body).await.unwrap().status(), 200);
    let r = t.chat("k", &body).await.unwrap();
    assert_eq!(r.status(), 429);
    assert_eq!(header(&r, "retry-after-ms"), "500");
    let error: Value = r.json().await.unwrap();
    assert_eq!(error["error"]["type"], "tokens");
    let message = error["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("on tokens per min (TPM): Limit 600, Used 10, Requested 5."),
        "{message}"
    );
    t.advance(500 * MS);
    assert_eq!(t.chat("k", &body).await.unwrap().status(), 200);
}

#[tokio::test]
async fn headerless_mode_gives_a_bare_429_and_no_limit_headers() {
    let t = start(json!({"limits": {"rps": 1, "headerless": true}})).await;
    let first = t.chat("k", &chat_body("hi")).await.unwrap();
    assert_eq!(first.status(), 200);
    let second = t.chat("k", &chat_body("hi")).await.unwrap();
    assert_eq!(second.status(), 429);
    let anthropic = t.messages("k", &messages_body("hi")).await.unwrap();
    assert_eq!(anthropic.status(), 429);
    for r in [&first, &second, &anthropic] {
        for prefix in ["x-ratelimit", "anthropic-ratelimit", "retry-after"] {
            assert!(
                !has_header_starting(r, prefix),
                "{prefix}: {:?}",
                r.headers()
            );
        }
    }
    assert!(second.bytes().await.unwrap().is_empty());
}

#[tokio::test]
async fn per_model_keys_have_separate_buckets() {
    let t = start(json!({"limits": {"rps": 1, "per_model": true}})).await;
    let model = |m: &str| json!({"model": m, "messages": [{"role": "user", "content": "hi"}]});
    assert_eq!(t.chat("k", &model("a")).await.unwrap().status(), 200);
    assert_eq!(t.chat("k", &model("a")).await.unwrap().status(), 429);
    assert_eq!(t.chat("k", &model("b")).await.unwrap().status(), 200);
    let stats = t.http_stats().await;
    assert_eq!(stats.keys["k/a"].requests, 2);
    assert_eq!(stats.keys["k/a"].rate_limited, 1);
    assert_eq!(stats.keys["k/b"].ok, 1);
}

#[tokio::test]
async fn limits_change_at_runtime_through_the_admin_endpoint() {
    let t = start(json!({})).await;
    let body = chat_body("hi");
    for _ in 0..20 {
        assert_eq!(t.chat("k", &body).await.unwrap().status(), 200);
    }
    let r = t.admin(&json!({"limits": {"rps": 2}})).await;
    assert_eq!(r.status(), 200);
    let config: Value = r.json().await.unwrap();
    assert_eq!(config["limits"]["rps"], 2.0);
    assert_eq!(t.chat("k", &body).await.unwrap().status(), 200);
    assert_eq!(t.chat("k", &body).await.unwrap().status(), 200);
    assert_eq!(t.chat("k", &body).await.unwrap().status(), 429);
    // `null` removes the limit again.
    t.admin(&json!({"limits": {"rps": null}})).await;
    let r = t.chat("k", &body).await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "x-ratelimit-limit-requests"), "");
    assert_eq!(t.sim.config().limits.rps, None);
}

#[tokio::test]
async fn reset_refills_every_bucket() {
    let t = start(json!({"limits": {"rps": 1}})).await;
    assert_eq!(t.chat("k", &chat_body("hi")).await.unwrap().status(), 200);
    assert_eq!(t.chat("k", &chat_body("hi")).await.unwrap().status(), 429);
    let r = t.client.post(t.url("/admin/reset")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(t.chat("k", &chat_body("hi")).await.unwrap().status(), 200);
    assert_eq!(t.sim.stats().requests, 1);
}
