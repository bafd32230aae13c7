//! `kill -9` mid-run (DESIGN §4, Timing): a restarted replica with the same
//! identity takes its experiments back at once; a replica with another
//! identity takes them over once the lease has passed. Either way every
//! example × repetition ends up recorded exactly once.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::common::*;

const EXAMPLES: usize = 30;
const REPETITIONS: usize = 2;

/// Starts an experiment on `server` and waits until at least `runs` results
/// are recorded (so the kill lands mid-run). Returns the experiment id.
async fn start_and_wait_for_runs(api: &Api, runs: usize) -> String {
    let dataset = api
        .create_dataset("crash", &arithmetic_examples(EXAMPLES))
        .await;
    let id = api
        .create_experiment(&json!({
            "dataset_id": dataset, "name": "crash", "repetitions": REPETITIONS,
            "max_concurrency": 4,
            "task": arithmetic_task(false), "evaluators": [label_judge("correct")]
        }))
        .await;
    let mut sse = api.events(&id).await;
    for _ in 0..runs {
        within(30, "runs before the kill", sse.until("run")).await;
    }
    id
}

/// Follows the stream to COMPLETED, then checks that every example ×
/// repetition is recorded exactly once, succeeded, and is annotated once.
async fn assert_completed_exactly_once(api: &Api, db: &TestDb, id: &str, secs: u64) {
    let events = api.follow(id, secs).await;
    assert_eq!(final_status(&events), "COMPLETED", "{events:?}");
    let runs = api.runs(id, 1000).await;
    assert_eq!(runs.len(), EXAMPLES * REPETITIONS);
    let keyed = by_key(&runs);
    assert_eq!(example_ids(&runs).len(), EXAMPLES);
    for ((_, rep), run) in &keyed {
        assert!((*rep as usize) < REPETITIONS);
        assert_eq!(run["error"], Value::Null, "{run}");
        let annotations = run["annotations"].as_array().unwrap();
        assert_eq!(annotations.len(), 1, "{run}");
        assert_eq!(annotations[0]["label"], "CORRECT", "{run}");
    }
    // The database itself holds nothing more.
    assert_eq!(db.count("runs").await, (EXAMPLES * REPETITIONS) as i64);
    assert_eq!(
        db.count("annotations").await,
        (EXAMPLES * REPETITIONS) as i64
    );
    let view = api.experiment(id).await;
    assert_eq!(view["status"], "COMPLETED", "{view}");
    assert_eq!(view["claimed_by"], Value::Null, "{view}");
}

/// The replica a server reports at `/readyz`.
async fn replica_of(api: &Api) -> String {
    api.get("/readyz").await.expect(200).json()["replica"]
        .as_str()
        .unwrap()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_server_restarts_on_the_same_sqlite_file() {
    let sim = Sim::start(Duration::from_millis(40), 0.0).await;
    let db = TestDb::new(DbKind::Sqlite).await;
    let dir = TempDir::new("kill-sqlite");
    let mut config = ConfigToml::new(&sim.url());
    // A lease far longer than the test may take: completing proves the
    // restart reclaimed at once instead of waiting for a takeover.
    config.set("scheduler", "lease", "\"120s\"");
    let spec = ServerSpec::new(&config, &db);
    let mut first = Server::start(dir.path(), "first", &spec).await;
    let replica = replica_of(&first.api()).await;
    let id = start_and_wait_for_runs(&first.api(), 5).await;
    first.kill9();

    let started = Instant::now();
    let second = Server::start(dir.path(), "second", &spec).await;
    let api = second.api();
    assert_eq!(
        replica_of(&api).await,
        replica,
        "the replica id is kept beside the SQLite file"
    );
    assert_completed_exactly_once(&api, &db, &id, 60).await;
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "took {:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_server_restarts_with_its_replica_id_on_postgres() {
    let sim = Sim::start(Duration::from_millis(40), 0.0).await;
    let db = TestDb::new(DbKind::Postgres).await;
    let dir = TempDir::new("kill-pg");
    let mut config = ConfigToml::new(&sim.url());
    config.set("scheduler", "lease", "\"120s\"");
    config.set("server", "replica_id", "\"replica-e2e-fixed\"");
    let spec = ServerSpec::new(&config, &db);
    let mut first = Server::start(dir.path(), "first", &spec).await;
    assert_eq!(replica_of(&first.api()).await, "replica-e2e-fixed");
    let id = start_and_wait_for_runs(&first.api(), 5).await;
    first.kill9();

    let second = Server::start(dir.path(), "second", &spec).await;
    let api = second.api();
    assert_eq!(replica_of(&api).await, "replica-e2e-fixed");
    // Taken back at start: the lease (120 s) never has to pass.
    assert_completed_exactly_once(&api, &db, &id, 60).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_replica_takes_over_after_the_lease_on_postgres() {
    let sim = Sim::start(Duration::from_millis(40), 0.0).await;
    let db = TestDb::new(DbKind::Postgres).await;
    let dir = TempDir::new("takeover-pg");
    let mut config = ConfigToml::new(&sim.url());
    config.set("scheduler", "lease", "\"3s\"");
    let mut spec = ServerSpec::new(&config, &db);
    spec.replica_id = Some("replica-a".into());
    let mut a = Server::start(dir.path(), "a", &spec).await;
    let id = start_and_wait_for_runs(&a.api(), 5).await;
    a.kill9();

    spec.replica_id = Some("replica-b".into());
    let b = Server::start(dir.path(), "b", &spec).await;
    let api = b.api();
    // The dead replica still holds the claim until the lease passes.
    let view = api.experiment(&id).await;
    assert_eq!(view["status"], "RUNNING", "{view}");
    assert_eq!(view["claimed_by"], "replica-a", "{view}");
    assert_completed_exactly_once(&api, &db, &id, 60).await;
    let metrics = api.get("/metrics").await.expect(200).text();
    let takeovers = metric_value(&metrics, "runnel_claim_takeovers");
    assert_eq!(takeovers, Some(1.0), "{metrics}");
}

/// The value of an unlabelled metric (Prometheus text), whatever suffix
/// the exporter added (`_total`).
pub(crate) fn metric_value(text: &str, name: &str) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let (key, value) = l.rsplit_once(' ')?;
        let bare = key.strip_suffix("_total").unwrap_or(key);
        (bare == name).then(|| value.parse().ok())?
    })
}
