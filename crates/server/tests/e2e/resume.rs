//! Resume after COMPLETED runs whatever is missing (API.md, DESIGN §3 work
//! reconstruction): runs and annotations that failed on a faulty provider,
//! examples appended to the dataset later, an evaluator attached later. A
//! success is never redone; a failure is replaced by a later success.

use std::collections::BTreeMap;

use runnel_sim::{FaultsConfig, SimConfig};
use serde_json::{Value, json};

use crate::common::*;
use crate::lifecycle::after_cooldown;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_repairs_and_extends_a_completed_experiment_on_sqlite() {
    resume_repairs_and_extends_a_completed_experiment(DbKind::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_repairs_and_extends_a_completed_experiment_on_postgres() {
    resume_repairs_and_extends_a_completed_experiment(DbKind::Postgres).await;
}

async fn resume_repairs_and_extends_a_completed_experiment(kind: DbKind) {
    // A faulty provider: malformed replies are permanent failures, 5xx and
    // resets are retried (quickly, see ConfigToml) up to max_retries.
    let sim = Sim::with_config(SimConfig {
        seed: 7,
        faults: FaultsConfig {
            malformed_rate: 0.35,
            server_error_rate: 0.1,
            reset_rate: 0.05,
            ..FaultsConfig::default()
        },
        ..SimConfig::default()
    })
    .await;
    let db = TestDb::new(kind).await;
    let dir = TempDir::new("resume");
    let config = ConfigToml::new(&sim.url());
    let server = Server::start(dir.path(), "a", &ServerSpec::new(&config, &db)).await;
    let api = server.api();
    let first_n = 20;
    let examples = arithmetic_examples(first_n + 6);
    let dataset = api.create_dataset("repairs", &examples[..first_n]).await;
    let id = api
        .create_experiment(&json!({
            "dataset_id": dataset, "name": "repairs", "max_concurrency": 4,
            "task": arithmetic_task(false), "evaluators": [label_judge("correct")]
        }))
        .await;
    let events = api.follow(&id, 60).await;
    assert_eq!(final_status(&events), "COMPLETED", "{events:?}");
    let progress = api.experiment(&id).await["progress"].clone();
    assert_eq!(progress["runs_expected"], first_n, "{progress}");
    let failed_runs = progress["runs_failed"].as_u64().unwrap();
    let failed_annotations = progress["annotations_failed"].as_u64().unwrap();
    assert!(
        failed_runs > 0 && failed_annotations > 0,
        "the faults should fail some runs and annotations: {progress}"
    );
    let first = api.runs(&id, 100).await;
    let successes: BTreeMap<String, Value> = first
        .iter()
        .filter(|r| r["error"].is_null())
        .map(|r| (r["id"].as_str().unwrap().to_owned(), r.clone()))
        .collect();
    for run in first.iter().filter(|r| !r["error"].is_null()) {
        assert!(run["output"].is_null(), "{run}");
        assert!(run["annotations"].as_array().unwrap().is_empty(), "{run}");
    }
    // Failures are logged for the UI.
    let logs = api.get(&format!("/v1/experiments/{id}/logs")).await.json();
    let logs = logs.as_array().unwrap();
    assert!(logs.len() >= 2, "a start entry and failures: {logs:?}");
    let log_ids: Vec<i64> = logs.iter().map(|l| l["id"].as_i64().unwrap()).collect();
    assert!(
        log_ids.windows(2).all(|w| w[0] > w[1]),
        "logs are newest first: {log_ids:?}"
    );
    for entry in logs {
        assert!(
            ["info", "warn", "error"].contains(&entry["level"].as_str().unwrap()),
            "{entry}"
        );
        assert!(entry["created_at"].is_string(), "{entry}");
    }
    // Paging back from the oldest but one gives the oldest.
    let older = api
        .get(&format!(
            "/v1/experiments/{id}/logs?limit=1&before={}",
            log_ids[log_ids.len() - 2]
        ))
        .await
        .expect(200)
        .json();
    assert_eq!(older.as_array().unwrap().len(), 1, "{older}");
    assert_eq!(older[0]["id"], log_ids[log_ids.len() - 1], "{older}");

    // The provider recovers; the dataset grows; a second judge is attached.
    sim.patch(json!({"faults": {"malformed_rate": 0, "server_error_rate": 0, "reset_rate": 0}}));
    let r = api
        .post(
            &format!("/v1/datasets/{dataset}/examples"),
            &json!({"examples": &examples[first_n..]}),
        )
        .await
        .expect(200);
    assert_eq!(r.json()["example_count"], first_n + 6);
    api.post(
        &format!("/v1/experiments/{id}/evaluators"),
        &score_judge("score"),
    )
    .await
    .expect(201);
    // Attaching does not start anything by itself.
    assert_eq!(api.experiment(&id).await["status"], "COMPLETED");
    let (r, _) = after_cooldown(&api, &format!("/v1/experiments/{id}/resume")).await;
    assert_eq!(r.expect(200).json(), json!({"status": "RUNNING"}));
    let events = api.follow(&id, 60).await;
    assert_eq!(final_status(&events), "COMPLETED", "{events:?}");

    let total = first_n + 6;
    let view = api.experiment(&id).await;
    assert_eq!(
        view["progress"],
        json!({
            "runs_expected": total, "runs_succeeded": total, "runs_failed": 0,
            "annotations_expected": total * 2, "annotations_done": total * 2,
            "annotations_failed": 0
        }),
        "{view}"
    );
    let runs = api.runs(&id, 100).await;
    assert_eq!(runs.len(), total);
    assert_eq!(by_key(&runs).len(), total);
    let ids = example_ids(&runs);
    let replies = sim.replies();
    for run in &runs {
        let i = ids
            .iter()
            .position(|e| e == run["example_id"].as_str().unwrap())
            .unwrap();
        let (a, b) = (
            examples[i]["input"]["a"].as_u64().unwrap(),
            examples[i]["input"]["b"].as_u64().unwrap(),
        );
        assert_eq!(run["output"], predicted_output(a, b, &replies), "{run}");
        let annotations = run["annotations"].as_array().unwrap();
        assert_eq!(annotations.len(), 2, "{run}");
        assert!(annotations.iter().all(|a| a["error"].is_null()), "{run}");
        // A success of the first session is kept as it was, not redone.
        if let Some(before) = successes.get(run["id"].as_str().unwrap()) {
            for field in ["output", "attempts", "latency_ms", "usage"] {
                assert_eq!(run[field], before[field], "{field} of {run}");
            }
        }
    }
    assert_eq!(
        runs.iter()
            .filter(|r| successes.contains_key(r["id"].as_str().unwrap()))
            .count(),
        successes.len(),
        "every earlier success is still there under its id"
    );
    assert_eq!(db.count("runs").await, total as i64);
    assert_eq!(db.count("annotations").await, (total * 2) as i64);
}
