//! `GET /stats` over HTTP: counts by class and key, tokens, the per-second
//! histogram on the manual clock, and reset.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::{chat_body, start};
use serde_json::json;

#[tokio::test]
async fn stats_count_classes_keys_and_seconds() {
    let t = start(json!({"limits": {"rps": 2}})).await;
    let hi = chat_body("hi");
    // Second 0: two admitted, one limited, one bad body.
    for _ in 0..3 {
        t.chat("a", &hi).await.unwrap();
    }
    t.chat("b", &json!({"model": "m"})).await.unwrap();
    // Second 2: one admitted for each key.
    t.advance(Duration::from_millis(2500));
    t.chat("a", &hi).await.unwrap();
    t.chat("b", &hi).await.unwrap();

    let stats = t.http_stats().await;
    assert_eq!(stats, t.sim.stats(), "the endpoint and the handle agree");
    assert_eq!(stats.requests, 6);
    assert_eq!(stats.classes.ok, 4);
    assert_eq!(stats.classes.rate_limited, 1);
    assert_eq!(stats.classes.client_error, 1);
    assert_eq!(stats.classes.total(), 6);
    assert_eq!(stats.elapsed_ms, 2500);
    assert_eq!(stats.keys["a"].requests, 4);
    assert_eq!(stats.keys["a"].ok, 3);
    assert_eq!(stats.keys["a"].rate_limited, 1);
    assert_eq!(stats.keys["b"].requests, 2);
    assert_eq!(stats.keys["b"].ok, 1);
    assert!(stats.tokens.prompt > 0 && stats.tokens.completion > 0);
    let seconds: Vec<(u64, u64, u64, u64)> = stats
        .per_second
        .iter()
        .map(|s| (s.second, s.requests, s.ok, s.rate_limited))
        .collect();
    assert_eq!(seconds, vec![(0, 4, 2, 1), (1, 0, 0, 0), (2, 2, 2, 0)]);
    assert_eq!(stats.concurrency.current, 0);
    assert!(stats.concurrency.peak >= 1);

    let r = t.client.post(t.url("/admin/reset")).send().await.unwrap();
    let after: runnel_sim::StatsSnapshot = r.json().await.unwrap();
    assert_eq!(after.requests, 0);
    assert!(after.keys.is_empty() && after.per_second.is_empty());
    t.advance(Duration::from_secs(1));
    t.chat("a", &hi).await.unwrap();
    let stats = t.sim.stats();
    assert_eq!(stats.per_second.len(), 1);
    assert_eq!(
        stats.per_second[0].second, 1,
        "seconds count from the reset"
    );
}
