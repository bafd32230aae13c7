//! Several replicas and graceful shutdown (DESIGN §4): a stop or delete sent
//! to one replica reaches the owner at once on PostgreSQL (NOTIFY, not the
//! heartbeat), and SIGTERM hands the experiments over so the next replica
//! takes them at once instead of waiting for the lease.

use std::future::Future;
use std::time::Duration;

use serde_json::json;

use crate::common::*;
use crate::crash::metric_value;

/// Polls `check` every 50 ms until it holds, for at most `secs` (the
/// deadline is the assertion: polling an endpoint is not a sleep used as
/// synchronisation).
async fn eventually<F, Fut>(secs: u64, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    within(secs, what, async {
        while !check().await {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
}

/// Experiments this replica's engine holds (running or draining).
async fn owned(api: &Api) -> f64 {
    let text = api.get("/metrics").await.expect(200).text();
    metric_value(&text, "runnel_experiments_owned").unwrap_or(0.0)
}

async fn slow_experiment(api: &Api, dataset: &str, name: &str) -> String {
    api.create_experiment(&json!({
        "dataset_id": dataset, "name": name, "max_concurrency": 2,
        "task": arithmetic_task(false), "evaluators": [label_judge("correct")]
    }))
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_and_delete_through_another_replica_reach_the_owner_on_postgres() {
    let sim = Sim::start(Duration::from_millis(100), 0.0).await;
    let db = TestDb::new(DbKind::Postgres).await;
    let dir = TempDir::new("replicas");
    let mut config = ConfigToml::new(&sim.url());
    // Heartbeats every 20 s: reacting within 3 s needs the notification.
    config.set("scheduler", "lease", "\"60s\"");
    let mut spec = ServerSpec::new(&config, &db);
    spec.replica_id = Some("replica-a".into());
    let a = Server::start(dir.path(), "a", &spec).await;
    spec.replica_id = Some("replica-b".into());
    let b = Server::start(dir.path(), "b", &spec).await;
    let (api_a, api_b) = (a.api(), b.api());
    let n = 30;
    let dataset = api_a
        .create_dataset("shared", &arithmetic_examples(n))
        .await;

    // Stop through B while A runs it.
    let id = slow_experiment(&api_a, &dataset, "stopped elsewhere").await;
    let mut sse = api_a.events(&id).await;
    within(30, "a first run on A", sse.until("run")).await;
    assert_eq!(api_b.experiment(&id).await["claimed_by"], "replica-a");
    let r = api_b
        .post(&format!("/v1/experiments/{id}/stop"), &json!({}))
        .await
        .expect(200);
    assert_eq!(r.json(), json!({"status": "STOPPED"}));
    eventually(3, "A to let go of the stopped experiment", || async {
        owned(&api_a).await == 0.0
    })
    .await;
    let events = within(10, "A's stream to end", sse.collect_all()).await;
    assert_eq!(final_status(&events), "STOPPED", "{events:?}");
    let stopped_at = db.count("runs").await;
    assert!(stopped_at < n as i64, "stopped after everything ran");

    // Resume through B: B runs the rest, each example once.
    let (r, _) =
        crate::lifecycle::after_cooldown(&api_b, &format!("/v1/experiments/{id}/resume")).await;
    r.expect(200);
    assert_eq!(api_b.experiment(&id).await["claimed_by"], "replica-b");
    sim.patch(json!({"latency": {"base": "5ms"}}));
    let events = api_b.follow(&id, 60).await;
    assert_eq!(final_status(&events), "COMPLETED", "{events:?}");
    let runs = api_a.runs(&id, 1000).await;
    assert_eq!(runs.len(), n);
    assert_eq!(by_key(&runs).len(), n);

    // Delete through B while A runs another.
    sim.patch(json!({"latency": {"base": "100ms"}}));
    let doomed = slow_experiment(&api_a, &dataset, "deleted elsewhere").await;
    let mut sse = api_a.events(&doomed).await;
    within(30, "a first run on A", sse.until("run")).await;
    api_b
        .delete(&format!("/v1/experiments/{doomed}"))
        .await
        .expect(204);
    eventually(3, "A to drop the deleted experiment", || async {
        owned(&api_a).await == 0.0
    })
    .await;
    within(10, "A's stream to end", sse.collect_all()).await;
    api_a
        .get(&format!("/v1/experiments/{doomed}"))
        .await
        .problem(404);
    // Only the first experiment's rows remain, even after A's in-flight
    // calls came back.
    assert_eq!(db.count("experiments").await, 1);
    assert_eq!(db.count("runs").await, n as i64);
    for server in [&a, &b] {
        assert!(!server.log().contains("panicked"), "{}", server.log());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_hands_experiments_over_at_once_on_sqlite() {
    sigterm_hands_experiments_over_at_once(DbKind::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_hands_experiments_over_at_once_on_postgres() {
    sigterm_hands_experiments_over_at_once(DbKind::Postgres).await;
}

async fn sigterm_hands_experiments_over_at_once(kind: DbKind) {
    let sim = Sim::start(Duration::from_millis(100), 0.0).await;
    let db = TestDb::new(kind).await;
    let dir = TempDir::new("sigterm");
    let mut config = ConfigToml::new(&sim.url());
    // Far longer than the test: only the release at shutdown lets the next
    // replica (a random identity on PostgreSQL) take over in time.
    config.set("scheduler", "lease", "\"120s\"");
    let spec = ServerSpec::new(&config, &db);
    let mut first = Server::start(dir.path(), "first", &spec).await;
    let api = first.api();
    let n = 30;
    let dataset = api
        .create_dataset("handover", &arithmetic_examples(n))
        .await;
    let id = slow_experiment(&api, &dataset, "handed over").await;
    let mut sse = api.events(&id).await;
    within(30, "a first run", sse.until("run")).await;

    // An open event stream must not hold the shutdown: it ends with an
    // `error` event saying why.
    let status = first.terminate(30).await;
    assert!(status.success(), "SIGTERM exit: {status}\n{}", first.log());
    let rest = within(5, "the stream to end at shutdown", sse.collect_all()).await;
    let last = rest.last().expect("events after the first run");
    assert_eq!(last.event, "error", "{rest:?}");
    assert!(
        last.data["message"]
            .as_str()
            .unwrap()
            .contains("shutting down"),
        "{last:?}"
    );
    let log = first.log();
    assert!(log.contains("released experiments for takeover"), "{log}");
    // Still RUNNING in the database, but with an expired claim.
    let second = Server::start(dir.path(), "second", &spec).await;
    let api = second.api();
    sim.patch(json!({"latency": {"base": "5ms"}}));
    let events = api.follow(&id, 60).await;
    assert_eq!(final_status(&events), "COMPLETED", "{events:?}");
    let runs = api.runs(&id, 1000).await;
    assert_eq!(runs.len(), n);
    assert_eq!(by_key(&runs).len(), n);
    assert!(runs.iter().all(|r| r["error"].is_null()));
    assert_eq!(db.count("runs").await, n as i64);
    assert_eq!(db.count("annotations").await, n as i64);
}
