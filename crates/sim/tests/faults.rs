//! Faults, outages and latency over real sockets: each fault type at rate
//! 1, resets seen on a raw socket, outage windows on the manual clock, the
//! admin switch, seeded repeatability.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::ErrorKind;
use std::time::{Duration, Instant};

use common::{TestSim, chat_body, messages_body, raw_post, read_events, start};
use futures::StreamExt;
use serde_json::{Value, json};

#[tokio::test]
async fn server_errors_are_5xx_with_an_error_body() {
    let t = start(json!({"faults": {"server_error_rate": 1.0}, "limits": {"rps": 100}})).await;
    for _ in 0..10 {
        let r = t.chat("k", &chat_body("hi")).await.unwrap();
        assert!(
            [500, 502, 503].contains(&r.status().as_u16()),
            "{}",
            r.status()
        );
        assert_eq!(
            common::header(&r, "x-ratelimit-limit-requests"),
            "6000",
            "limit headers on faults too"
        );
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["error"]["type"], "server_error");
    }
    assert_eq!(t.sim.stats().classes.server_error, 10);
}

#[tokio::test]
async fn overloaded_is_529_in_both_styles() {
    let t = start(json!({"faults": {"overloaded_rate": 1.0}})).await;
    let r = t.messages("k", &messages_body("hi")).await.unwrap();
    assert_eq!(r.status().as_u16(), 529);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["type"], "overloaded_error");
    let r = t.chat("k", &chat_body("hi")).await.unwrap();
    assert_eq!(r.status().as_u16(), 529);
    assert_eq!(t.sim.stats().classes.overloaded, 2);
}

#[tokio::test]
async fn reset_before_the_response_sends_nothing_then_rst() {
    let t = start(json!({"faults": {"reset_rate": 1.0, "reset_after_headers": 0.0}})).await;
    let raw = raw_post(t.sim.addr(), "/v1/chat/completions", &chat_body("hi")).await;
    assert!(raw.received.is_empty(), "{}", raw.text());
    assert_eq!(raw.error, Some(ErrorKind::ConnectionReset));
    let err = t.chat("k", &chat_body("hi")).await.unwrap_err();
    assert!(!err.is_status() && !err.is_timeout(), "{err:?}");
    assert_eq!(t.sim.stats().classes.reset, 2);
}

#[tokio::test]
async fn reset_during_the_body_sends_headers_and_part_of_it() {
    let t = start(json!({"faults": {"reset_rate": 1.0, "reset_after_headers": 1.0}})).await;
    let raw = raw_post(
        t.sim.addr(),
        "/v1/chat/completions",
        &chat_body("Tell me a story."),
    )
    .await;
    let text = raw.text();
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length: "))
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        !body.is_empty() && body.len() < length,
        "{} of {length}",
        body.len()
    );
    assert_eq!(raw.error, Some(ErrorKind::ConnectionReset));

    // Through a client: the status arrives, reading the body fails.
    let r = t.chat("k", &chat_body("Tell me a story.")).await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.bytes().await.is_err());

    // Streaming: some events arrive, then the stream breaks.
    let mut body = chat_body("Tell me a story.");
    body["stream"] = json!(true);
    let r = t.chat("k", &body).await.unwrap();
    let mut stream = r.bytes_stream();
    let mut received = Vec::new();
    let mut failed = false;
    while let Some(chunk) = stream.next().await {
        match chunk {
            Ok(bytes) => received.extend_from_slice(&bytes),
            Err(_) => {
                failed = true;
                break;
            }
        }
    }
    assert!(failed, "the stream must break");
    let text = String::from_utf8(received).unwrap();
    assert!(text.starts_with("data: {"), "{text}");
    assert!(!text.contains("[DONE]"));
    assert_eq!(t.sim.stats().classes.reset, 3);
}

#[tokio::test]
async fn malformed_bodies_and_events() {
    let t = start(json!({"faults": {"malformed_rate": 1.0}})).await;
    let r = t.chat("k", &chat_body("hi")).await.unwrap();
    assert_eq!(r.status(), 200);
    let bytes = r.bytes().await.unwrap();
    assert!(!bytes.is_empty());
    assert!(serde_json::from_slice::<Value>(&bytes).is_err());

    for anthropic in [false, true] {
        let mut body = if anthropic {
            messages_body("a b c")
        } else {
            chat_body("a b c")
        };
        body["stream"] = json!(true);
        let r = if anthropic {
            t.messages("k", &body).await
        } else {
            t.chat("k", &body).await
        };
        let events = read_events(r.unwrap()).await;
        let broken = events
            .iter()
            .filter(|e| e.data != "[DONE]" && serde_json::from_str::<Value>(&e.data).is_err())
            .count();
        assert_eq!(
            broken, 1,
            "exactly one malformed event (anthropic: {anthropic})"
        );
    }
    assert_eq!(t.sim.stats().classes.malformed, 3);
    assert_eq!(t.sim.stats().classes.ok, 0);
}

async fn outcome(t: &TestSim) -> String {
    match t.chat("k", &chat_body("hi")).await {
        Ok(r) => {
            let status = r.status().as_u16();
            match r.bytes().await {
                Ok(b) if serde_json::from_slice::<Value>(&b).is_ok() => status.to_string(),
                Ok(_) => format!("{status} malformed"),
                Err(_) => format!("{status} reset"),
            }
        }
        Err(_) => "reset".to_owned(),
    }
}

#[tokio::test]
async fn the_same_seed_gives_the_same_faults() {
    let faults = json!({"server_error_rate": 0.2, "overloaded_rate": 0.2, "reset_rate": 0.2, "malformed_rate": 0.2});
    let mut runs = Vec::new();
    for seed in [11, 11, 12] {
        let t = start(json!({"seed": seed, "faults": faults})).await;
        let mut seen = Vec::new();
        for _ in 0..40 {
            seen.push(outcome(&t).await);
        }
        // After a reset the sequence starts over.
        t.client.post(t.url("/admin/reset")).send().await.unwrap();
        assert_eq!(outcome(&t).await, seen[0]);
        runs.push(seen);
    }
    assert_eq!(runs[0], runs[1]);
    assert_ne!(runs[0], runs[2]);
    // Every class appears in 40 draws at these rates (fixed by the seed).
    let seen = &runs[0];
    let appears = |wanted: &[&str]| seen.iter().any(|o| wanted.contains(&o.as_str()));
    assert!(appears(&["200"]), "{seen:?}");
    assert!(appears(&["500", "502", "503"]), "{seen:?}");
    assert!(appears(&["529"]), "{seen:?}");
    assert!(appears(&["reset", "200 reset"]), "{seen:?}");
    assert!(appears(&["200 malformed"]), "{seen:?}");
}

#[tokio::test]
async fn outage_window_refuses_then_recovers_on_the_manual_clock() {
    let t = start(json!({"outage": {"windows": [{"start": "10s", "end": "20s"}]}})).await;
    assert_eq!(t.chat("k", &chat_body("hi")).await.unwrap().status(), 200);
    t.advance(Duration::from_secs(10));
    assert!(t.chat("k", &chat_body("hi")).await.is_err());
    let raw = raw_post(t.sim.addr(), "/v1/messages", &messages_body("hi")).await;
    assert!(raw.received.is_empty());
    assert_eq!(raw.error, Some(ErrorKind::ConnectionReset));
    // Stats, health and admin keep answering during the outage.
    assert_eq!(
        t.client
            .get(t.url("/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let stats = t.http_stats().await;
    assert_eq!(stats.classes.refused, 2);
    t.advance(Duration::from_secs(10));
    assert_eq!(t.chat("k", &chat_body("hi")).await.unwrap().status(), 200);
    assert_eq!(t.sim.stats().classes.ok, 2);
}

#[tokio::test]
async fn outage_switch_in_503_mode_through_admin() {
    let t = start(json!({})).await;
    let r = t
        .admin(&json!({"outage": {"active": true, "mode": "503"}}))
        .await;
    assert_eq!(r.status(), 200);
    let r = t.chat("k", &chat_body("hi")).await.unwrap();
    assert_eq!(r.status(), 503);
    let r = t.messages("k", &messages_body("hi")).await.unwrap();
    assert_eq!(r.status(), 503);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["type"], "api_error");
    t.admin(&json!({"outage": {"active": false}})).await;
    assert_eq!(t.chat("k", &chat_body("hi")).await.unwrap().status(), 200);
    let stats = t.sim.stats();
    assert_eq!((stats.classes.server_error, stats.classes.ok), (2, 1));
}

#[tokio::test]
async fn fixed_latency_delays_the_response() {
    let t = start(json!({"latency": {"base": "60ms"}})).await;
    let started = Instant::now();
    assert_eq!(t.chat("k", &chat_body("hi")).await.unwrap().status(), 200);
    // Lower bound only: the latency is a real wait in the server.
    assert!(
        started.elapsed() >= Duration::from_millis(60),
        "{:?}",
        started.elapsed()
    );
    // Over the limit, requests are still answered (429s skip the latency).
    t.admin(&json!({"limits": {"rps": 1}})).await;
    let body = chat_body("hi");
    let statuses: Vec<u16> = futures::future::join_all((0..3).map(|_| t.chat("k", &body)))
        .await
        .into_iter()
        .map(|r| r.unwrap().status().as_u16())
        .collect();
    assert_eq!(statuses.iter().filter(|s| **s == 429).count(), 2);
}
