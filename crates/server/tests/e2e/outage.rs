//! A provider outage through the whole stack (DESIGN §5): transient failures
//! open the rate-limit key's breaker; when it stays open longer than
//! `breaker_give_up` the experiment goes to ERROR with `last_error` naming the
//! provider; once the provider is back, a resume completes it with every
//! example once.

use std::time::Duration;

use serde_json::{Value, json};

use crate::common::*;
use crate::lifecycle::after_cooldown;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_errors_the_experiment_and_resume_recovers_on_sqlite() {
    an_outage_errors_the_experiment_and_resume_recovers(DbKind::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_errors_the_experiment_and_resume_recovers_on_postgres() {
    an_outage_errors_the_experiment_and_resume_recovers(DbKind::Postgres).await;
}

async fn an_outage_errors_the_experiment_and_resume_recovers(kind: DbKind) {
    let sim = Sim::start(Duration::from_millis(5), 0.0).await;
    let db = TestDb::new(kind).await;
    let dir = TempDir::new("outage");
    let mut config = ConfigToml::new(&sim.url());
    config.set("scheduler", "breaker_give_up", "\"2s\"");
    config.set("scheduler", "cooldown", "\"1s\"");
    config.set("advisor", "breaker_threshold", "3");
    config.set("advisor", "breaker_cooldown", "\"300ms\"");
    let server = Server::start(dir.path(), "a", &ServerSpec::new(&config, &db)).await;
    let api = server.api();
    let n = 12;
    let dataset = api.create_dataset("outage", &arithmetic_examples(n)).await;

    // The provider resets every connection from the start.
    sim.patch(json!({"outage": {"active": true}}));
    let id = api
        .create_experiment(&json!({
            "dataset_id": dataset, "name": "outage", "max_concurrency": 2,
            "task": arithmetic_task(false), "evaluators": [label_judge("correct")]
        }))
        .await;
    let events = api.follow(&id, 60).await;
    assert_eq!(final_status(&events), "ERROR", "{events:?}");
    let last = events.iter().rev().find(|e| e.event == "status").unwrap();
    let view = api.experiment(&id).await;
    assert_eq!(view["status"], "ERROR", "{view}");
    assert_eq!(view["claimed_by"], Value::Null, "{view}");
    let error = view["last_error"]
        .as_str()
        .unwrap_or_else(|| panic!("{view}"));
    assert!(
        error.contains("sim"),
        "last_error names the provider: {error}"
    );
    assert!(
        error.contains("last error:"),
        "last_error carries the provider's last error: {error}"
    );
    assert_eq!(last.data["last_error"], view["last_error"], "{last:?}");
    assert!(sim.handle.stats().classes.refused > 0);
    let logs = api.get(&format!("/v1/experiments/{id}/logs")).await.json();
    assert!(!logs.as_array().unwrap().is_empty(), "no log entries");
    // No run is recorded as succeeded; the outage does not count as done.
    assert_eq!(view["progress"]["runs_succeeded"], 0, "{view}");

    // The provider is back: resume completes everything, once.
    sim.patch(json!({"outage": {"active": false}}));
    // The give-up time counts from the resumed session's start, so one
    // resume is enough even while the breaker is still in its cooldown.
    let (r, _) = after_cooldown(&api, &format!("/v1/experiments/{id}/resume")).await;
    assert_eq!(r.expect(200).json(), json!({"status": "RUNNING"}));
    let events = api.follow(&id, 60).await;
    assert_eq!(final_status(&events), "COMPLETED", "{events:?}");
    let view = api.experiment(&id).await;
    assert_eq!(view["last_error"], Value::Null, "{view}");
    assert_eq!(
        view["progress"],
        json!({
            "runs_expected": n, "runs_succeeded": n, "runs_failed": 0,
            "annotations_expected": n, "annotations_done": n, "annotations_failed": 0
        }),
        "{view}"
    );
    let runs = api.runs(&id, 100).await;
    assert_eq!(by_key(&runs).len(), n);
    assert_eq!(db.count("runs").await, n as i64);
}
