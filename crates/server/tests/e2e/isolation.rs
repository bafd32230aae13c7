//! Breaker isolation through the whole stack (issue 13, item 3): an
//! experiment whose every call times out (its `timeout_s` is shorter than
//! the provider's replies), with ten times the concurrency of a healthy one
//! on the same rate-limit key, does not open that key's breaker: the
//! healthy one completes, and the impatient one ends in ERROR naming its
//! timeout, long before `breaker_give_up`.

use std::time::Duration;

use serde_json::json;

use crate::common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_experiments_timeouts_do_not_open_the_breaker_of_its_key() {
    let sim = Sim::start(Duration::from_millis(300), 0.0).await;
    let db = TestDb::new(DbKind::Sqlite).await;
    let dir = TempDir::new("isolation");
    let mut config = ConfigToml::new(&sim.url());
    // Were the impatient experiment's failures counted against the key, the
    // breaker would open after 5 of them and stay open 60 s.
    config.set("advisor", "breaker_threshold", "5");
    config.set("advisor", "breaker_cooldown", "\"60s\"");
    config.set("scheduler", "experiment_breaker_cooldown", "\"1s\"");
    config.set("scheduler", "backoff_base", "\"100ms\"");
    let server = Server::start(dir.path(), "a", &ServerSpec::new(&config, &db)).await;
    let api = server.api();
    let dataset = api
        .create_dataset("isolation", &arithmetic_examples(30))
        .await;
    let mut impatient_task = arithmetic_task(false);
    impatient_task["timeout_s"] = json!(0.1);
    // The healthy one first: while an experiment is alone on a key, its
    // failures are the key's.
    let healthy = api
        .create_experiment(&json!({
            "dataset_id": dataset, "name": "healthy", "max_concurrency": 2,
            "task": arithmetic_task(false), "evaluators": []
        }))
        .await;
    let impatient = api
        .create_experiment(&json!({
            "dataset_id": dataset, "name": "impatient", "max_concurrency": 20,
            "task": impatient_task, "evaluators": []
        }))
        .await;

    let events = api.follow(&healthy, 60).await;
    assert_eq!(final_status(&events), "COMPLETED", "{events:?}");
    let events = api.follow(&impatient, 60).await;
    assert_eq!(final_status(&events), "ERROR", "{events:?}");
    let view = api.experiment(&impatient).await;
    let error = view["last_error"].as_str().unwrap_or_default();
    assert!(
        error.contains("every call of this experiment") && error.contains("timed out"),
        "{view}"
    );
    let view = api.experiment(&healthy).await;
    assert_eq!(view["progress"]["runs_succeeded"], 30, "{view}");
    // The key's breaker never opened.
    let metrics = api.get("/metrics").await.expect(200).text();
    let trips: Vec<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("runnel_breaker_trips") && !l.ends_with(" 0"))
        .collect();
    assert!(trips.is_empty(), "{trips:?}");
}
