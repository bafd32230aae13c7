//! A provider key planted in the server's environment (`api_key_env`) is
//! sent to the provider and appears nowhere else: not in any API response,
//! event, log line, `runnel config` output or database row — even when the
//! provider repeats it in an error body.

use std::time::Duration;

use runnel_sim::SimConfig;
use serde_json::{Value, json};

use crate::common::*;

/// Distinctive parts of [`PROVIDER_KEY`]: a partial leak is a leak too.
const FRAGMENTS: &[&str] = &[PROVIDER_KEY, "PLANTED-9f3c2a7b", "51d04e6e8a1bc0ffee"];

fn assert_clean(what: &str, text: &str) {
    for fragment in FRAGMENTS {
        assert!(
            !text.contains(fragment),
            "the provider key ({fragment}) leaked into {what}:\n{text}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_provider_key_leaks_nowhere_on_sqlite() {
    the_provider_key_leaks_nowhere(DbKind::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_provider_key_leaks_nowhere_on_postgres() {
    the_provider_key_leaks_nowhere(DbKind::Postgres).await;
}

async fn the_provider_key_leaks_nowhere(kind: DbKind) {
    // One simulator accepts the key; the other rejects it with a 401 that
    // repeats it ("Incorrect API key provided: sk-…").
    let good = Sim::start(Duration::from_millis(5), 0.0).await;
    let leaky = Sim::with_config(SimConfig {
        accepted_keys: vec!["sk-some-other-key-entirely-0000000000".into()],
        ..SimConfig::default()
    })
    .await;

    let db = TestDb::new(kind).await;
    let dir = TempDir::new("secrets");
    let mut config = ConfigToml::new(&good.url());
    config.set("providers.leaky", "kind", "\"openai\"");
    config.set(
        "providers.leaky",
        "base_url",
        &format!("\"{}/v1\"", leaky.url()),
    );
    config.set("providers.leaky", "api_key_env", &format!("\"{KEY_ENV}\""));
    config.set("providers.leaky", "unlimited", "true");
    // Every log line the server can write, as JSON.
    config.set("log", "filter", "\"trace\"");
    config.set("log", "format", "\"json\"");
    let spec = ServerSpec::new(&config, &db);
    let server = Server::start(dir.path(), "a", &spec).await;
    let api = server.api();
    let mut responses = Vec::<(String, String)>::new();

    let n = 4;
    let dataset = api.create_dataset("secrets", &arithmetic_examples(n)).await;
    // The task succeeds; one judge is rejected with the echo.
    let scored = api
        .create_experiment(&json!({
            "dataset_id": dataset, "name": "scored",
            "task": arithmetic_task(true),
            "evaluators": [label_judge("correct"), merge_provider(label_judge("leaky"), "leaky")]
        }))
        .await;
    // Every task call is rejected with the echo.
    let rejected = api
        .create_experiment(&json!({
            "dataset_id": dataset, "name": "rejected",
            "task": merge_provider(arithmetic_task(false), "leaky"),
            "evaluators": [label_judge("correct")]
        }))
        .await;
    for id in [&scored, &rejected] {
        let events = api.follow(id, 60).await;
        assert_eq!(final_status(&events), "COMPLETED", "{events:?}");
        responses.push((format!("events of {id}"), format!("{events:?}")));
    }

    // The key really was used, and really was echoed.
    assert!(
        good.handle.stats().keys.contains_key(PROVIDER_KEY),
        "the planted key should reach the provider"
    );
    assert!(leaky.handle.stats().keys[PROVIDER_KEY].requests > 0);
    assert_eq!(leaky.handle.stats().keys[PROVIDER_KEY].ok, 0);
    let runs = api.runs(&rejected, 100).await;
    assert_eq!(runs.len(), n);
    for run in &runs {
        let error = run["error"].as_str().unwrap_or_else(|| panic!("{run}"));
        assert!(error.contains("Incorrect API key provided"), "{error}");
        assert!(error.contains("[REDACTED]"), "{error}");
    }
    let runs = api.runs(&scored, 100).await;
    for run in &runs {
        assert_eq!(run["error"], Value::Null, "{run}");
        let leaky = run["annotations"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["evaluator"] == "leaky")
            .unwrap_or_else(|| panic!("{run}"));
        let error = leaky["error"].as_str().unwrap_or_else(|| panic!("{run}"));
        assert!(error.contains("[REDACTED]"), "{error}");
    }

    // Every API response.
    let mut paths = vec![
        "/v1/datasets".to_owned(),
        format!("/v1/datasets/{dataset}"),
        "/v1/experiments".to_owned(),
        "/openapi.json".to_owned(),
        "/metrics".to_owned(),
        "/healthz".to_owned(),
        "/readyz".to_owned(),
    ];
    for id in [&scored, &rejected] {
        paths.extend([
            format!("/v1/experiments/{id}"),
            format!("/v1/experiments/{id}/runs"),
            format!("/v1/experiments/{id}/runs.jsonl"),
            format!("/v1/experiments/{id}/logs"),
            format!("/v1/experiments/{id}/events"),
        ]);
    }
    for path in paths {
        let r = api.get(&path).await.expect(200);
        responses.push((path, r.text()));
    }
    let logs = api
        .get(&format!("/v1/experiments/{rejected}/logs"))
        .await
        .json();
    assert!(
        !logs.as_array().unwrap().is_empty(),
        "failed runs leave log entries"
    );
    for (what, text) in &responses {
        assert_clean(what, text);
    }

    // `runnel config` with the same file and environment.
    let mut cmd = runnel_command(dir.path());
    cmd.arg("--config").arg(&server.config_path).arg("config");
    let out = output(cmd, 30).await;
    assert!(out.status.success(), "{out:?}");
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(printed.contains("[providers.leaky]"), "{printed}");
    assert_clean("runnel config", &printed);
    assert_clean(
        "runnel config's stderr",
        &String::from_utf8_lossy(&out.stderr),
    );

    // Every log line, and every row of every table.
    let log = server.log();
    assert!(log.lines().count() > 20, "expected a verbose log:\n{log}");
    assert!(
        log.contains("Incorrect API key provided"),
        "the echo is logged redacted"
    );
    assert_clean("the server's log", &log);
    let found = db.find(PROVIDER_KEY).await;
    assert!(
        found.is_empty(),
        "the key is stored in the database: {found:?}"
    );
    for fragment in FRAGMENTS {
        assert!(db.find(fragment).await.is_empty(), "{fragment} is stored");
    }
}

/// `spec` with its `provider` replaced.
fn merge_provider(mut spec: Value, provider: &str) -> Value {
    spec["provider"] = json!(provider);
    spec
}
