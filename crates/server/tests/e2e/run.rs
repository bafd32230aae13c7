//! A whole experiment through the API: dataset, experiment with two
//! evaluators, the event stream followed to COMPLETED, then every run and
//! annotation checked against what the simulator is known to answer.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde_json::{Value, json};

use crate::common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn experiment_runs_to_completion_on_sqlite() {
    experiment_runs_to_completion(DbKind::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn experiment_runs_to_completion_on_postgres() {
    experiment_runs_to_completion(DbKind::Postgres).await;
}

async fn experiment_runs_to_completion(kind: DbKind) {
    let examples_n = if full() { 200 } else { 12 };
    let repetitions = 2u64;
    // Slow at first, so the event stream is open before the first results;
    // the latency drops once it is.
    let sim = Sim::start(Duration::from_millis(300), 0.3).await;
    let db = TestDb::new(kind).await;
    let dir = TempDir::new("run");
    let config = ConfigToml::new(&sim.url());
    let server = Server::start(dir.path(), "a", &ServerSpec::new(&config, &db)).await;
    let api = server.api();

    let examples = arithmetic_examples(examples_n);
    let dataset = api.create_dataset("arithmetic", &examples).await;
    let created = api
        .post(
            "/v1/experiments",
            &json!({
                "dataset_id": dataset,
                "name": "sums",
                "repetitions": repetitions,
                "max_concurrency": 2,
                "task": arithmetic_task(true),
                "evaluators": [label_judge("correct"), score_judge("score")]
            }),
        )
        .await
        .expect(201)
        .json();
    assert_eq!(created["status"], "RUNNING", "{created}");
    let id = created["id"].as_str().unwrap().to_owned();

    let mut sse = api.events(&id).await;
    let first = within(10, "the first event", sse.next()).await.unwrap();
    assert_eq!(first.event, "status", "{first:?}");
    assert_eq!(first.data["status"], "RUNNING");
    sim.patch(json!({"latency": {"base": "10ms"}}));
    let events = within(120, "the experiment to complete", sse.collect_all()).await;

    // The stream ends with the final status, after a progress event showing
    // everything done.
    let statuses: Vec<&Value> = events
        .iter()
        .filter(|e| e.event == "status")
        .map(|e| &e.data)
        .collect();
    assert_eq!(
        statuses.last().map(|s| &s["status"]),
        Some(&json!("COMPLETED")),
        "statuses: {statuses:?}"
    );
    assert_eq!(events.last().unwrap().event, "status");
    let runs_expected = examples_n as u64 * repetitions;
    let final_progress = &events
        .iter()
        .rev()
        .find(|e| e.event == "progress")
        .expect("a progress event")
        .data;
    assert_eq!(
        final_progress,
        &json!({
            "runs_expected": runs_expected,
            "runs_succeeded": runs_expected,
            "runs_failed": 0,
            "annotations_expected": runs_expected * 2,
            "annotations_done": runs_expected * 2,
            "annotations_failed": 0,
        })
    );
    assert!(
        events.iter().all(|e| e.event != "error"),
        "error events: {events:?}"
    );

    // The experiment as the API shows it, with every field of API.md.
    let view = api.experiment(&id).await;
    assert_has_fields(
        &view,
        &[
            "id",
            "name",
            "dataset_id",
            "status",
            "last_error",
            "claimed_by",
            "created_at",
            "updated_at",
            "progress",
        ],
    );
    let dataset_view = api
        .get(&format!("/v1/datasets/{dataset}"))
        .await
        .expect(200)
        .json();
    assert_has_fields(&dataset_view, &["id", "name", "example_count"]);
    assert_eq!(dataset_view["example_count"], examples_n);
    assert_eq!(view["status"], "COMPLETED", "{view}");
    assert_eq!(view["claimed_by"], Value::Null, "{view}");
    assert_eq!(view["last_error"], Value::Null, "{view}");
    assert_eq!(view["dataset_id"], dataset.as_str());
    assert_eq!(view["name"], "sums");
    assert_eq!(&view["progress"], final_progress);
    let listed = api
        .get(&format!(
            "/v1/experiments?dataset_id={dataset}&status=COMPLETED"
        ))
        .await
        .expect(200)
        .json();
    assert_eq!(listed.as_array().unwrap().len(), 1, "{listed}");
    assert_eq!(listed[0]["id"], id.as_str());

    // Every run through pages, and through runs.jsonl: the same runs.
    let paged = api.runs(&id, 7).await;
    let streamed = api.runs_jsonl(&id).await;
    assert_eq!(paged.len() as u64, runs_expected);
    assert_eq!(paged, streamed, "pages and runs.jsonl differ");
    for run in &paged {
        assert_has_fields(
            run,
            &[
                "id",
                "example_id",
                "repetition",
                "output",
                "error",
                "attempts",
                "latency_ms",
                "usage",
                "annotations",
            ],
        );
        for annotation in run["annotations"].as_array().unwrap() {
            assert_has_fields(
                annotation,
                &["evaluator", "label", "score", "explanation", "error"],
            );
        }
    }
    let runs = by_key(&paged);
    let ids = example_ids(&paged);
    assert_eq!(ids.len(), examples_n);
    let replies = sim.replies();
    let mut labels = BTreeMap::<String, usize>::new();
    for (i, example_id) in ids.iter().enumerate() {
        let a = examples[i]["input"]["a"].as_u64().unwrap();
        let b = examples[i]["input"]["b"].as_u64().unwrap();
        let expected = predicted_output(a, b, &replies);
        let right = expected == (a + b).to_string();
        for rep in 0..repetitions {
            let run = runs
                .get(&(example_id.clone(), rep))
                .unwrap_or_else(|| panic!("no run for example {example_id} repetition {rep}"));
            assert_eq!(run["output"], expected.as_str(), "{a} + {b}: {run}");
            assert_eq!(run["error"], Value::Null, "{run}");
            assert!(run["attempts"].as_u64().unwrap() >= 1, "{run}");
            assert!(run["usage"]["prompt_tokens"].as_u64().unwrap() > 0, "{run}");
            let annotations = run["annotations"].as_array().unwrap();
            let names: BTreeSet<&str> = annotations
                .iter()
                .map(|a| a["evaluator"].as_str().unwrap())
                .collect();
            assert_eq!(annotations.len(), 2, "{run}");
            assert_eq!(names, BTreeSet::from(["correct", "score"]), "{run}");
            for annotation in annotations {
                assert_eq!(annotation["error"], Value::Null, "{run}");
                match annotation["evaluator"].as_str().unwrap() {
                    "correct" => {
                        let label = if right { "CORRECT" } else { "INCORRECT" };
                        assert_eq!(annotation["label"], label, "{a} + {b}: {run}");
                        *labels.entry(label.to_owned()).or_default() += 1;
                    }
                    _ => {
                        let score = if right { 10.0 } else { 1.0 };
                        assert_eq!(annotation["score"].as_f64(), Some(score), "{run}");
                    }
                }
            }
        }
    }
    // With wrong_rate 0.3 both labels occur (deterministic for these prompts).
    assert_eq!(labels.len(), 2, "labels: {labels:?}");

    // Every `run` event seen matches the stored run; chunks are part of the
    // output of the run they name.
    let run_events: Vec<&Value> = events
        .iter()
        .filter(|e| e.event == "run")
        .map(|e| &e.data)
        .collect();
    assert!(!run_events.is_empty(), "no run events were streamed");
    let by_id: BTreeMap<&str, &Value> = paged
        .iter()
        .map(|r| (r["id"].as_str().unwrap(), r))
        .collect();
    for event in &run_events {
        let stored = by_id[event["id"].as_str().unwrap()];
        for field in ["example_id", "repetition", "output", "error", "attempts"] {
            assert_eq!(event[field], stored[field], "{field}: {event} vs {stored}");
        }
    }
    let mut chunks = BTreeMap::<(String, u64), String>::new();
    for e in events.iter().filter(|e| e.event == "chunk") {
        let key = (
            e.data["example_id"].as_str().unwrap().to_owned(),
            e.data["repetition"].as_u64().unwrap(),
        );
        chunks
            .entry(key)
            .or_default()
            .push_str(e.data["text"].as_str().unwrap());
    }
    assert!(!chunks.is_empty(), "a streamed task sends chunk events");
    for (key, text) in &chunks {
        let output = runs[key]["output"].as_str().unwrap();
        assert!(
            output.ends_with(text.as_str()),
            "{key:?}: chunks {text:?} vs {output:?}"
        );
    }
}

/// Asserts that `object` has every field the contract (API.md) names.
fn assert_has_fields(object: &Value, fields: &[&str]) {
    let o = object
        .as_object()
        .unwrap_or_else(|| panic!("not an object: {object}"));
    let missing: Vec<&&str> = fields.iter().filter(|f| !o.contains_key(**f)).collect();
    assert!(missing.is_empty(), "missing {missing:?} in {object}");
}
