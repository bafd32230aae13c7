//! Handler-level tests: `app(state).oneshot(request)` on a real `Runtime`
//! (SQLite in a temporary folder, no socket). Validation of every field of
//! experiment creation, both dataset body forms, evaluator attachment, and a
//! property: no request body, however mangled, gets a 5xx or changes
//! anything unless it is valid.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use axum::body::Body;
use axum::http::{Request, StatusCode};
use proptest::prelude::*;
use runnel_server::app;
use serde_json::{Value, json};
use tower::ServiceExt;

mod common;
use common::{merge, merged};
#[path = "common/fixture.rs"]
mod fixture;
use fixture::{Fixture, judge, task};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_field_of_experiment_creation_is_validated() {
    let f = Fixture::new().await;
    let dataset = f
        .dataset(json!([
            {"input": {"a": 1, "b": 2}, "expected": 3, "metadata": {"source": "x"}},
            {"input": {"a": 5, "b": 6}, "expected": 11}
        ]))
        .await;
    let ghost = uuid::Uuid::new_v4().to_string();
    let base = json!({"dataset_id": dataset, "name": "e", "start": false,
                      "task": task(), "evaluators": [judge("correct")]});
    let long = "n".repeat(201);
    // (patch of the valid body, field the 400 must name)
    let cases: Vec<(Value, &str)> = vec![
        (json!({"dataset_id": ghost}), "dataset_id"),
        (json!({"dataset_id": "not-a-uuid"}), "dataset_id"),
        (json!({"dataset_id": 7}), "dataset_id"),
        (json!({"name": ""}), "name"),
        (json!({"name": "   "}), "name"),
        (json!({"name": long}), "name"),
        (json!({"name": "a\u{7}b"}), "name"),
        (json!({"repetitions": 0}), "repetitions"),
        (json!({"repetitions": -3}), "repetitions"),
        (json!({"repetitions": 10_001}), "repetitions"),
        (json!({"repetitions": 1.5}), "repetitions"),
        (json!({"max_concurrency": 0}), "max_concurrency"),
        (json!({"start": "true"}), "start"),
        (json!({"task": {"provider": "nope"}}), "task.provider"),
        (json!({"task": {"provider": null}}), "task.provider"),
        (json!({"task": {"model": " "}}), "task.model"),
        (json!({"task": {"model": "gpt\u{0}4"}}), "task.model"),
        (json!({"task": {"messages": []}}), "task.messages"),
        (
            json!({"task": {"messages": [{"role": "wizard", "content": "hi"}]}}),
            "task.messages[0]",
        ),
        (
            json!({"task": {"messages": [{"role": "user", "content": "{{input.c}}"}]}}),
            "task.messages[0]",
        ),
        (
            json!({"task": {"messages": [{"role": "system", "content": "ok"}, {"role": "user", "content": "{{metadata.missing}}"}]}}),
            "task.messages[1]",
        ),
        (
            json!({"task": {"messages": [{"role": "user", "content": "{{output}}"}]}}),
            "task.messages[0]",
        ),
        (
            json!({"task": {"messages": [{"role": "user", "content": "{{input.a"}]}}),
            "task.messages[0]",
        ),
        (
            json!({"task": {"messages": [{"role": "user"}]}}),
            "task.messages[0]",
        ),
        (json!({"task": {"timeout_s": 0}}), "task.timeout_s"),
        (json!({"task": {"timeout_s": -1}}), "task.timeout_s"),
        (json!({"task": {"timeout_s": 99999}}), "task.timeout_s"),
        (json!({"task": {"params": [1, 2]}}), "task.params"),
        (json!({"task": {"stream": 1}}), "task.stream"),
        (json!({"task": {"extra": 1}}), "task.extra"),
        (json!({"evaluators": {}}), "evaluators"),
        (
            json!({"evaluators": [judge("a"), {"name": "b"}]}),
            "evaluators[1]",
        ),
        (
            json!({"evaluators": [judge("a"), judge("a")]}),
            "evaluators[1].name",
        ),
        (
            json!({"evaluators": [merged(judge("a"), json!({"name": ""}))]}),
            "evaluators[0].name",
        ),
        (
            json!({"evaluators": [merged(judge("a"), json!({"provider": "nope"}))]}),
            "evaluators[0].provider",
        ),
        (
            json!({"evaluators": [merged(judge("a"), json!({"model": ""}))]}),
            "evaluators[0].model",
        ),
        (
            json!({"evaluators": [merged(judge("a"), json!({"model": "j\n"}))]}),
            "evaluators[0].model",
        ),
        (
            json!({"evaluators": [merged(judge("a"), json!({"messages": []}))]}),
            "evaluators[0].messages",
        ),
        (
            json!({"evaluators": [merged(judge("a"), json!({"messages": [{"role": "user", "content": "{{expected.value}}"}]}))]}),
            "evaluators[0].messages[0]",
        ),
        (
            json!({"evaluators": [merged(judge("a"), json!({"labels": ["A", "a"]}))]}),
            "evaluators[0].labels",
        ),
        (
            json!({"evaluators": [merged(judge("a"), json!({"labels": ["A", ""]}))]}),
            "evaluators[0].labels",
        ),
        (
            json!({"evaluators": [merged(judge("a"), json!({"labels": "A,B"}))]}),
            "evaluators[0].labels",
        ),
        (
            json!({"evaluators": [merged(judge("a"), json!({"timeout_s": 0}))]}),
            "evaluators[0].timeout_s",
        ),
        (
            json!({"evaluators": [merged(judge("a"), json!({"colour": 1}))]}),
            "evaluators[0].colour",
        ),
    ];
    let mut failures = Vec::new();
    for (patch, field) in cases {
        let mut body = base.clone();
        merge(&mut body, patch.clone());
        let (status, problem) = f.post("/v1/experiments", &body).await;
        if status != StatusCode::BAD_REQUEST || problem["field"] != field {
            failures.push(format!(
                "{patch}: {status} {problem} (wanted 400 naming {field})"
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    // Nothing was stored; the valid body then passes.
    let (_, listed) = f.get("/v1/experiments").await;
    assert_eq!(listed, json!([]));
    let (status, created) = f.post("/v1/experiments", &base).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    assert_eq!(created["status"], "STOPPED");
    // Defaults: one repetition; a template field that only some examples
    // have is accepted (the sample has it).
    let mut partial = base.clone();
    merge(
        &mut partial,
        json!({"task": {"messages": [{"role": "user", "content": "{{metadata.source}} {{input.a}}"}]}}),
    );
    let (status, body) = f.post("/v1/experiments", &partial).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (_, view) = f
        .get(&format!(
            "/v1/experiments/{}",
            created["id"].as_str().unwrap()
        ))
        .await;
    assert_eq!(view["repetitions"], 1, "{view}");
    f.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn datasets_accept_json_and_ndjson_and_append() {
    let f = Fixture::new().await;
    let ndjson =
        "{\"input\": {\"a\": 1, \"b\": 2}, \"expected\": 3}\n\n{\"input\": {\"a\": 2, \"b\": 2}}\n";
    let request = Request::post("/v1/datasets?name=from%20lines")
        .header("content-type", "application/x-ndjson")
        .body(Body::from(ndjson))
        .unwrap();
    let (status, _, created) = f.call(request).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    assert_eq!(created["name"], "from lines");
    assert_eq!(created["example_count"], 2);
    let id = created["id"].as_str().unwrap();

    let (status, body) = f
        .post(
            &format!("/v1/datasets/{id}/examples"),
            &json!({"examples": [{"input": {"a": 9, "b": 1}, "metadata": null}]}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, json!({"example_count": 3}));
    let request = Request::post(format!("/v1/datasets/{id}/examples"))
        .header("content-type", "application/jsonl; charset=utf-8")
        .body(Body::from("{\"input\": {\"a\": 0, \"b\": 0}}\n"))
        .unwrap();
    let (status, _, body) = f.call(request).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, json!({"example_count": 4}));
    // An empty append is fine and changes nothing.
    let (status, body) = f
        .post(
            &format!("/v1/datasets/{id}/examples"),
            &json!({"examples": []}),
        )
        .await;
    assert_eq!(
        (status, body),
        (StatusCode::OK, json!({"example_count": 4}))
    );

    let (status, got) = f.get(&format!("/v1/datasets/{id}")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(got["example_count"], 4);
    assert_eq!(got["name"], "from lines");
    // JSON without a content type is read as JSON (curl -d sends a form type).
    let request = Request::post("/v1/datasets")
        .body(Body::from(r#"{"name": "plain", "examples": []}"#))
        .unwrap();
    let (status, _, body) = f.call(request).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (_, listed) = f.get("/v1/datasets").await;
    let names: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["from lines", "plain"]);
    f.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn evaluators_attach_once_per_name_and_are_checked() {
    let f = Fixture::new().await;
    let (_, experiment) = f.stopped_experiment("e").await;
    let path = format!("/v1/experiments/{experiment}/evaluators");
    let (status, body) = f.post(&path, &judge("second")).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["name"], "second");
    assert!(body["id"].is_i64(), "{body}");
    // The same name again conflicts; bad ones name the field.
    let (status, body) = f.post(&path, &judge("second")).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    let (status, body) = f.post(&path, &judge("correct")).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    for (patch, field) in [
        (json!({"provider": "nope"}), "provider"),
        (json!({"labels": ["X", "x"]}), "labels"),
        (
            json!({"messages": [{"role": "user", "content": "{{input.zzz}}"}]}),
            "messages[0]",
        ),
        (json!({"name": ""}), "name"),
    ] {
        let (status, problem) = f.post(&path, &merged(judge("third"), patch.clone())).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{patch}: {problem}");
        assert_eq!(problem["field"], field, "{patch}: {problem}");
    }
    f.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_body_limit_is_the_configured_one() {
    let f = Fixture::with(|t| *t = t.replace("body_limit_bytes = 4096", "body_limit_bytes = 2048"))
        .await;
    let fits = json!({"name": "fits", "examples": [{"input": {"t": "x".repeat(1500)}}]});
    let (status, body) = f.post("/v1/datasets", &fits).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let big = json!({"name": "big", "examples": [{"input": {"t": "x".repeat(2100)}}]});
    let (status, problem) = f.post("/v1/datasets", &big).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{problem}");
    assert!(
        problem["detail"].as_str().unwrap().contains("2048"),
        "{problem}"
    );
    f.shutdown().await;
}

/// Page limits, the call-timeout cap and the template sample come from the
/// configuration: `database.max_page` bounds `limit`, `server.default_page`
/// applies without one, `scheduler.max_call_timeout` bounds `timeout_s`,
/// and `server.template_sample` is how many examples templates are checked
/// against.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn page_limits_timeouts_and_the_template_sample_are_the_configured_ones() {
    let f = Fixture::with(|t| {
        *t = t
            .replace("[database]\n", "[database]\nmax_page = 3\n")
            .replace(
                "body_limit_bytes = 4096",
                "body_limit_bytes = 4096\ndefault_page = 2\ntemplate_sample = 2\n\
                 [scheduler]\nmax_call_timeout = \"10s\"\ntask_timeout = \"5s\"\neval_timeout = \"5s\"",
            )
    })
    .await;
    let (_, id) = f.stopped_experiment("limits").await;
    for path in ["runs", "logs"] {
        let (status, problem) = f.get(&format!("/v1/experiments/{id}/{path}?limit=4")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{problem}");
        assert!(
            problem["detail"].as_str().unwrap().contains("from 1 to 3"),
            "{problem}"
        );
        let (status, body) = f.get(&format!("/v1/experiments/{id}/{path}?limit=3")).await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    for (body, accepted) in [
        (json!({"timeout_s": 10}), true),
        (json!({"timeout_s": 10.5}), false),
    ] {
        let dataset = f.dataset(json!([{"input": {"a": 1, "b": 2}}])).await;
        let request = json!({"dataset_id": dataset, "name": "t", "start": false,
                             "task": merged(task(), body)});
        let (status, problem) = f.post("/v1/experiments", &request).await;
        if accepted {
            assert_eq!(status, StatusCode::CREATED, "{problem}");
        } else {
            assert_eq!(status, StatusCode::BAD_REQUEST, "{problem}");
            assert!(problem.to_string().contains("at most 10"), "{problem}");
        }
    }
    // `{{input.c}}` is only in the third example: outside a sample of two.
    let dataset = f
        .dataset(json!([{"input": {"a": 1}}, {"input": {"a": 2}}, {"input": {"c": 3}}]))
        .await;
    let request = json!({"dataset_id": dataset, "name": "s", "start": false,
        "task": merged(task(), json!({"messages": [{"role": "user", "content": "{{input.c}}"}]}))});
    let (status, problem) = f.post("/v1/experiments", &request).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{problem}");
    f.shutdown().await;
}

/// Regression (found by `cargo xtask chaos`): an id that percent-decodes to
/// invalid UTF-8 got axum's plain-text 400 instead of a problem document.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undecodable_path_ids_get_problem_documents() {
    let f = Fixture::new().await;
    for (method, path) in [
        ("GET", "/v1/datasets/%ff%fe"),
        ("POST", "/v1/datasets/%ff%fe/examples"),
        ("GET", "/v1/experiments/%ff%fe"),
        ("DELETE", "/v1/experiments/%ff%fe"),
        ("POST", "/v1/experiments/%ff%fe/stop"),
        ("POST", "/v1/experiments/%ff%fe/resume"),
        ("POST", "/v1/experiments/%c3%28/evaluators"),
        ("GET", "/v1/experiments/%ff/runs"),
        ("GET", "/v1/experiments/%ff/runs.jsonl"),
        ("GET", "/v1/experiments/%ff/logs"),
        ("GET", "/v1/experiments/%ff/events"),
    ] {
        let request = Request::builder()
            .method(method)
            .uri(path)
            .header("content-type", "application/json")
            .body(Body::from("{}"))
            .unwrap();
        let (status, content_type, problem) = f.call(request).await;
        assert_eq!(
            status,
            StatusCode::BAD_REQUEST,
            "{method} {path}: {problem}"
        );
        assert_eq!(
            content_type.as_deref(),
            Some("application/problem+json"),
            "{method} {path}: {problem}"
        );
        assert_eq!(problem["status"], 400, "{problem}");
    }
    f.shutdown().await;
}

/// Bodies for the property below: mangled variants of a valid request.
fn mangled_bodies() -> impl Strategy<Value = Vec<u8>> {
    let valid = serde_json::to_vec(&json!({
        "name": "p", "examples": [{"input": {"a": 1}, "expected": 2, "metadata": {"k": "v"}}]
    }))
    .unwrap();
    prop_oneof![
        // Random bytes.
        proptest::collection::vec(any::<u8>(), 0..300),
        // The valid body cut short.
        (0..valid.len()).prop_map({
            let valid = valid.clone();
            move |n| valid[..n].to_vec()
        }),
        // The valid body with one byte replaced.
        (0..valid.len(), any::<u8>()).prop_map(move |(i, b)| {
            let mut v = valid.clone();
            v[i] = b;
            v
        }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    /// Whatever the body, a dataset or experiment creation answers 201 or a
    /// 4xx problem — never a 5xx — and a 4xx stores nothing.
    #[test]
    fn mangled_bodies_get_4xx_problems_and_store_nothing(
        bodies in proptest::collection::vec(mangled_bodies(), 1..8)
    ) {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let f = Fixture::new().await;
            let mut created = 0;
            for body in &bodies {
                for path in ["/v1/datasets", "/v1/experiments"] {
                    let request = Request::post(path)
                        .header("content-type", "application/json")
                        .body(Body::from(body.clone()))
                        .unwrap();
                    let (status, content_type, problem) = f.call(request).await;
                    if status == StatusCode::CREATED {
                        created += 1;
                        continue;
                    }
                    assert!(status.is_client_error(), "{path}: {status} {problem}");
                    assert_eq!(content_type.as_deref(), Some("application/problem+json"));
                    assert_eq!(problem["status"], status.as_u16(), "{problem}");
                }
            }
            let (_, datasets) = f.get("/v1/datasets").await;
            let (_, experiments) = f.get("/v1/experiments").await;
            assert_eq!(datasets.as_array().unwrap().len() + experiments.as_array().unwrap().len(), created);
            f.shutdown().await;
        });
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cors_is_off_by_default_and_follows_the_configured_origins() {
    let preflight = || {
        Request::options("/v1/datasets")
            .header("origin", "https://ui.example")
            .header("access-control-request-method", "POST")
            .header(
                "access-control-request-headers",
                "authorization,content-type",
            )
            .body(Body::empty())
            .unwrap()
    };
    let f = Fixture::new().await;
    let response = app(f.state()).oneshot(preflight()).await.unwrap();
    assert!(
        response
            .headers()
            .get("access-control-allow-origin")
            .is_none(),
        "CORS must be off by default: {:?}",
        response.headers()
    );
    f.shutdown().await;

    let f = Fixture::with(|t| {
        *t = t.replace(
            "[server]\n",
            "[server]\ncors_origins = [\"https://ui.example\"]\n",
        )
    })
    .await;
    let response = app(f.state()).oneshot(preflight()).await.unwrap();
    assert_eq!(
        response.headers()["access-control-allow-origin"],
        "https://ui.example"
    );
    let methods = response.headers()["access-control-allow-methods"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        methods.contains("POST") && methods.contains("DELETE"),
        "{methods}"
    );
    // Another origin is not allowed.
    let other = Request::get("/v1/datasets")
        .header("origin", "https://evil.example")
        .body(Body::empty())
        .unwrap();
    let response = app(f.state()).oneshot(other).await.unwrap();
    assert!(
        response
            .headers()
            .get("access-control-allow-origin")
            .is_none(),
        "{:?}",
        response.headers()
    );
    f.shutdown().await;
}
