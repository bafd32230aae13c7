//! Stop, resume and delete through the API (DESIGN §4): the cooldown answers
//! 409 with `Retry-After`, repeated toggles are idempotent, a deleted
//! experiment is gone while the server keeps serving.

use std::time::Duration;

use serde_json::{Value, json};

use crate::common::*;

/// Posts to `path` until it answers something else than 409, waiting the
/// `Retry-After` the API asks for between tries (a real delay of the API,
/// not a synchronisation sleep). Returns the answer and how many 409s came
/// first.
pub(crate) async fn after_cooldown(api: &Api, path: &str) -> (Resp, usize) {
    for conflicts in 0..5 {
        let r = api.post(path, &json!({})).await;
        if r.status != 409 {
            return (r, conflicts);
        }
        let secs: u64 = r
            .header("retry-after")
            .expect("a 409 carries Retry-After")
            .parse()
            .unwrap();
        tokio::time::sleep(Duration::from_secs(secs)).await;
    }
    panic!("{path} still in its cooldown after 5 tries");
}

/// Asserts a cooldown conflict: 409 problem+json with `Retry-After` of 1 to
/// `cooldown_secs` whole seconds.
fn assert_cooldown(r: &Resp, cooldown_secs: u64) {
    let p = r.problem(409);
    let wait: u64 = r
        .header("retry-after")
        .unwrap_or_else(|| panic!("409 without Retry-After: {p}"))
        .parse()
        .unwrap();
    assert!((1..=cooldown_secs).contains(&wait), "Retry-After {wait}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_and_resume_respect_the_cooldown_on_sqlite() {
    stop_and_resume_respect_the_cooldown(DbKind::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_and_resume_respect_the_cooldown_on_postgres() {
    stop_and_resume_respect_the_cooldown(DbKind::Postgres).await;
}

async fn stop_and_resume_respect_the_cooldown(kind: DbKind) {
    // Slow calls and one at a time: the experiment stays RUNNING for the
    // whole sequence of toggles.
    let sim = Sim::start(Duration::from_millis(400), 0.0).await;
    let db = TestDb::new(kind).await;
    let dir = TempDir::new("cooldown");
    let mut config = ConfigToml::new(&sim.url());
    config.set("scheduler", "cooldown", "\"2s\"");
    let server = Server::start(dir.path(), "a", &ServerSpec::new(&config, &db)).await;
    let api = server.api();
    let n = 10;
    let dataset = api.create_dataset("toggles", &arithmetic_examples(n)).await;
    let id = api
        .create_experiment(&json!({
            "dataset_id": dataset, "name": "toggled", "max_concurrency": 1,
            "task": arithmetic_task(false), "evaluators": [label_judge("correct")]
        }))
        .await;
    let stop = format!("/v1/experiments/{id}/stop");
    let resume = format!("/v1/experiments/{id}/resume");

    // Starting is not a toggle: stopping right after creation is allowed.
    let r = api.post(&stop, &json!({})).await.expect(200);
    assert_eq!(r.json(), json!({"status": "STOPPED"}));
    let view = api.experiment(&id).await;
    assert_eq!(view["status"], "STOPPED", "{view}");
    assert_eq!(view["claimed_by"], Value::Null, "{view}");
    // Stop again: idempotent, even inside the cooldown.
    let r = api.post(&stop, &json!({})).await.expect(200);
    assert_eq!(r.json(), json!({"status": "STOPPED"}));
    // Resume inside the cooldown: 409 with Retry-After.
    assert_cooldown(&api.post(&resume, &json!({})).await, 2);
    assert_eq!(api.experiment(&id).await["status"], "STOPPED");
    // After it: 200.
    let (r, conflicts) = after_cooldown(&api, &resume).await;
    assert_eq!(r.expect(200).json(), json!({"status": "RUNNING"}));
    assert!(conflicts <= 1, "waited {conflicts} times");
    let view = api.experiment(&id).await;
    assert_eq!(view["status"], "RUNNING", "{view}");
    assert!(view["claimed_by"].is_string(), "{view}");
    // Resume again: idempotent.
    let r = api.post(&resume, &json!({})).await.expect(200);
    assert_eq!(r.json(), json!({"status": "RUNNING"}));
    // Stop inside the resume's cooldown: 409, and it keeps running.
    assert_cooldown(&api.post(&stop, &json!({})).await, 2);
    assert_eq!(api.experiment(&id).await["status"], "RUNNING");
    // Unknown experiments: 404 for both toggles.
    let ghost = uuid::Uuid::new_v4();
    api.post(&format!("/v1/experiments/{ghost}/stop"), &json!({}))
        .await
        .problem(404);
    api.post(&format!("/v1/experiments/{ghost}/resume"), &json!({}))
        .await
        .problem(404);

    // Let it finish: every example once, whatever the toggles interrupted.
    sim.patch(json!({"latency": {"base": "5ms"}}));
    let events = api.follow(&id, 60).await;
    assert_eq!(final_status(&events), "COMPLETED", "{events:?}");
    let runs = api.runs(&id, 100).await;
    assert_eq!(runs.len(), n);
    let keyed = by_key(&runs);
    assert_eq!(example_ids(&runs).len(), n);
    for run in keyed.values() {
        assert_eq!(run["error"], Value::Null, "{run}");
        assert_eq!(run["annotations"].as_array().unwrap().len(), 1, "{run}");
        assert_eq!(run["annotations"][0]["label"], "CORRECT", "{run}");
    }
    assert_eq!(db.count("runs").await, n as i64);
    assert_eq!(db.count("annotations").await, n as i64);

    // Resume after COMPLETED with nothing missing completes at once.
    let (r, _) = after_cooldown(&api, &resume).await;
    assert_eq!(r.expect(200).json(), json!({"status": "RUNNING"}));
    let events = api.follow(&id, 30).await;
    assert_eq!(final_status(&events), "COMPLETED", "{events:?}");
    assert_eq!(db.count("runs").await, n as i64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_while_running_on_sqlite() {
    delete_while_running(DbKind::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_while_running_on_postgres() {
    delete_while_running(DbKind::Postgres).await;
}

async fn delete_while_running(kind: DbKind) {
    let sim = Sim::start(Duration::from_millis(150), 0.0).await;
    let db = TestDb::new(kind).await;
    let dir = TempDir::new("delete");
    let config = ConfigToml::new(&sim.url());
    let server = Server::start(dir.path(), "a", &ServerSpec::new(&config, &db)).await;
    let api = server.api();
    let n = 20;
    let dataset = api.create_dataset("doomed", &arithmetic_examples(n)).await;
    let body = json!({
        "dataset_id": dataset, "name": "doomed", "max_concurrency": 3,
        "task": arithmetic_task(false), "evaluators": [label_judge("correct")]
    });
    let id = api.create_experiment(&body).await;

    // Mid-run: some results are in, calls are in flight.
    let mut sse = api.events(&id).await;
    within(30, "a first run", sse.until("run")).await;
    api.delete(&format!("/v1/experiments/{id}"))
        .await
        .expect(204);

    // Gone, everywhere.
    api.get(&format!("/v1/experiments/{id}")).await.problem(404);
    api.get(&format!("/v1/experiments/{id}/runs"))
        .await
        .problem(404);
    api.get(&format!("/v1/experiments/{id}/runs.jsonl"))
        .await
        .problem(404);
    api.get(&format!("/v1/experiments/{id}/logs"))
        .await
        .problem(404);
    api.get(&format!("/v1/experiments/{id}/events"))
        .await
        .problem(404);
    api.post(&format!("/v1/experiments/{id}/stop"), &json!({}))
        .await
        .problem(404);
    api.post(&format!("/v1/experiments/{id}/resume"), &json!({}))
        .await
        .problem(404);
    api.delete(&format!("/v1/experiments/{id}"))
        .await
        .problem(404);
    let listed = api.get("/v1/experiments").await.expect(200).json();
    assert_eq!(listed, json!([]));
    // An open event stream of the deleted experiment ends.
    within(
        15,
        "the deleted experiment's stream to end",
        sse.collect_all(),
    )
    .await;

    // The server keeps serving: another experiment on the same dataset runs
    // to completion, and the deleted one left no rows behind (calls that
    // were in flight could not write into it).
    sim.patch(json!({"latency": {"base": "5ms"}}));
    api.get("/healthz").await.expect(200);
    let second = api.create_experiment(&body).await;
    let events = api.follow(&second, 60).await;
    assert_eq!(final_status(&events), "COMPLETED", "{events:?}");
    assert_eq!(api.runs(&second, 100).await.len(), n);
    assert_eq!(db.count("experiments").await, 1);
    assert_eq!(db.count("runs").await, n as i64);
    assert_eq!(db.count("annotations").await, n as i64);
    assert!(
        !server.log().contains("panicked"),
        "the server panicked:\n{}",
        server.log()
    );
}
