//! The HTTP contract around the provider endpoints: routing errors, bad
//! bodies, keys, size limits, health, and the admin endpoints.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{chat_body, error_message, header, start};
use serde_json::{Value, json};

#[tokio::test]
async fn unknown_routes_are_404_and_wrong_methods_405_with_error_json() {
    let t = start(json!({})).await;
    let r = t.client.get(t.url("/v1/models")).send().await.unwrap();
    assert_eq!(r.status(), 404);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["message"], "Unknown route: GET /v1/models");
    assert_eq!(body["error"]["type"], "invalid_request_error");
    let r = t
        .client
        .get(t.url("/v1/chat/completions"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 405);
    let r = t.client.post(t.url("/stats")).send().await.unwrap();
    assert_eq!(r.status(), 405);
    assert_eq!(
        t.sim.stats().requests,
        0,
        "only provider requests are counted"
    );
}

#[tokio::test]
async fn bad_bodies_are_400_with_an_error_that_says_why() {
    let t = start(json!({})).await;
    let cases = [
        ("/v1/chat/completions", "not json", "expected ident"),
        (
            "/v1/chat/completions",
            r#"{"messages": []}"#,
            "missing field `model`",
        ),
        (
            "/v1/chat/completions",
            r#"{"model": "m", "messages": []}"#,
            "`messages` must not be empty",
        ),
        (
            "/v1/messages",
            r#"{"model": "m", "messages": [{"role": "user", "content": "x"}]}"#,
            "missing field `max_tokens`",
        ),
    ];
    for (path, body, needle) in cases {
        let r = t
            .client
            .post(t.url(path))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{body}");
        let error: Value = r.json().await.unwrap();
        let message = error["error"]["message"].as_str().unwrap();
        assert!(message.contains(needle), "{body}: {message}");
        if path == "/v1/messages" {
            assert_eq!(error["type"], "error");
            assert_eq!(error["error"]["type"], "invalid_request_error");
        }
    }
    assert_eq!(t.sim.stats().classes.client_error, 4);
}

#[tokio::test]
async fn oversized_bodies_are_413() {
    let t = start(json!({"max_body_bytes": 1024})).await;
    let r = t.chat("k", &chat_body(&"x".repeat(2000))).await.unwrap();
    assert_eq!(r.status(), 413);
    assert!(error_message(r).await.contains("1024 bytes"));
}

#[tokio::test]
async fn keys_are_optional_unless_required() {
    let t = start(json!({})).await;
    let send = |headers: &[(&str, &str)]| {
        let mut request = t
            .client
            .post(t.url("/v1/chat/completions"))
            .json(&chat_body("hi"));
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        request.send()
    };
    assert_eq!(send(&[]).await.unwrap().status(), 200);
    assert_eq!(t.sim.stats().keys[runnel_sim::ANONYMOUS_KEY].ok, 1);

    t.admin(&json!({"require_key": true})).await;
    let r = send(&[]).await.unwrap();
    assert_eq!(r.status(), 401);
    assert!(error_message(r).await.contains("API key"));
    let r = send(&[("api-key", "azure-key")]).await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(t.sim.stats().keys["azure-key"].ok, 1);
}

#[tokio::test]
async fn health_and_config_endpoints() {
    let t = start(json!({"limits": {"rpm": 10}})).await;
    let r = t.client.get(t.url("/healthz")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap(), json!({"status": "ok"}));
    let config: Value = t
        .client
        .get(t.url("/admin/config"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(config["limits"]["rpm"], 10.0);
    assert_eq!(config["limits"]["burst"], "1s");

    let r = t.admin(&json!({"limits": {"rqm": 5}})).await;
    assert_eq!(r.status(), 400);
    assert!(error_message(r).await.contains("rqm"));
    let r = t.admin(&json!({"faults": {"reset_rate": 3}})).await;
    assert_eq!(r.status(), 400);
    assert!(error_message(r).await.contains("faults.reset_rate"));
    let r = t
        .client
        .post(t.url("/admin/config"))
        .body("{oops")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(header(&r, "content-type"), "application/json");
    let r = t.admin(&json!({"listen": "127.0.0.1:1"})).await;
    assert_eq!(r.status(), 400);
    assert!(error_message(r).await.contains("`listen`"));
    assert_eq!(
        t.sim.config().listen,
        t.sim.addr(),
        "the config names the bound port"
    );
    assert_eq!(
        t.sim.config().limits.rpm,
        Some(10.0),
        "failed patches change nothing"
    );
}

#[tokio::test]
async fn update_through_the_handle_matches_the_admin_endpoint() {
    let t = start(json!({})).await;
    let config = t
        .sim
        .update(&json!({"replies": {"wrong_rate": 1.0}}))
        .unwrap();
    assert_eq!(config.replies.wrong_rate, 1.0);
    assert_ne!(t.ask("What is 1 + 1?").await, "2");
    assert!(
        t.sim
            .update(&json!({"replies": {"wrong_rate": -1}}))
            .is_err()
    );
    assert_eq!(t.sim.config().replies.wrong_rate, 1.0);
}
