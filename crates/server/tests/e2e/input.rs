//! Bad input over a real socket: malformed JSON, unknown fields, wrong
//! types, unknown ids, oversize bodies, wrong content types, bad queries.
//! Each gets the right 4xx `application/problem+json` (naming the field when
//! one is wrong), and nothing changes in the database.

use serde_json::{Value, json};

use crate::common::*;

/// One bad request and the problem it must get.
struct Case {
    what: &'static str,
    method: &'static str,
    path: String,
    content_type: Option<&'static str>,
    body: Vec<u8>,
    status: u16,
    /// The `field` the problem must name (`None`: no `field` member).
    field: Option<&'static str>,
    /// Text the detail must contain (case-insensitive).
    detail: &'static str,
}

fn case(
    what: &'static str,
    method: &'static str,
    path: impl Into<String>,
    body: impl Into<Vec<u8>>,
    status: u16,
    field: Option<&'static str>,
    detail: &'static str,
) -> Case {
    Case {
        what,
        method,
        path: path.into(),
        content_type: Some("application/json"),
        body: body.into(),
        status,
        field,
        detail,
    }
}

fn json_body(v: Value) -> Vec<u8> {
    serde_json::to_vec(&v).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_problems_and_change_nothing_on_sqlite() {
    bad_requests_get_problems_and_change_nothing(DbKind::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_problems_and_change_nothing_on_postgres() {
    bad_requests_get_problems_and_change_nothing(DbKind::Postgres).await;
}

async fn bad_requests_get_problems_and_change_nothing(kind: DbKind) {
    let sim = Sim::start(std::time::Duration::ZERO, 0.0).await;
    let db = TestDb::new(kind).await;
    let dir = TempDir::new("input");
    let mut config = ConfigToml::new(&sim.url());
    config.set("server", "body_limit_bytes", "4096");
    let server = Server::start(dir.path(), "a", &ServerSpec::new(&config, &db)).await;
    let api = server.api();

    // Something to leave untouched.
    let dataset = api.create_dataset("kept", &arithmetic_examples(3)).await;
    let experiment = api
        .create_experiment(&json!({
            "dataset_id": dataset, "name": "kept", "start": false,
            "task": arithmetic_task(false), "evaluators": [label_judge("correct")]
        }))
        .await;
    let before = api.snapshot().await;
    let tables = [
        "datasets",
        "dataset_examples",
        "experiments",
        "evaluators",
        "runs",
    ];
    let mut counts = Vec::new();
    for t in tables {
        counts.push(db.count(t).await);
    }

    let ghost = uuid::Uuid::new_v4().to_string();
    let good_task = arithmetic_task(false);
    let experiment_with = |patch: Value| {
        let mut body = json!({
            "dataset_id": dataset, "name": "bad", "start": false,
            "task": good_task.clone(), "evaluators": [label_judge("correct")]
        });
        merge(&mut body, patch);
        json_body(body)
    };
    let big_example = json!({"input": {"text": "x".repeat(5000)}});
    #[rustfmt::skip]
    let mut cases = vec![
        // Malformed and empty bodies.
        case("truncated JSON", "POST", "/v1/datasets", r#"{"name": "x", "examples": ["#, 400, None, "not valid JSON"),
        case("not JSON at all", "POST", "/v1/datasets", "name=x", 400, None, "not valid JSON"),
        case("empty body", "POST", "/v1/datasets", "", 400, None, "empty"),
        case("a JSON array", "POST", "/v1/datasets", "[]", 400, None, ""),
        case("truncated experiment", "POST", "/v1/experiments", r#"{"dataset_id": "#, 400, None, "not valid JSON"),
        // Unknown fields.
        case("unknown dataset field", "POST", "/v1/datasets", json_body(json!({"name": "x", "examples": [], "colour": "red"})), 400, Some("colour"), "colour"),
        case("unknown example field", "POST", "/v1/datasets", json_body(json!({"name": "x", "examples": [{"input": {}, "inptu": {}}]})), 400, Some("examples[0].inptu"), "inptu"),
        case("unknown experiment field", "POST", "/v1/experiments", experiment_with(json!({"repetitons": 2})), 400, Some("repetitons"), "repetitons"),
        case("unknown task field", "POST", "/v1/experiments", experiment_with(json!({"task": {"temprature": 0}})), 400, Some("task.temprature"), "temprature"),
        // Wrong types.
        case("name is a number", "POST", "/v1/datasets", json_body(json!({"name": 5, "examples": []})), 400, Some("name"), ""),
        case("examples is an object", "POST", "/v1/datasets", json_body(json!({"name": "x", "examples": {}})), 400, Some("examples"), ""),
        case("input is a string", "POST", "/v1/datasets", json_body(json!({"name": "x", "examples": [{"input": {}}, {"input": "2+2"}]})), 400, Some("examples[1].input"), "object"),
        case("metadata is a number", "POST", "/v1/datasets", json_body(json!({"name": "x", "examples": [{"input": {}, "metadata": 3}]})), 400, Some("examples[0].metadata"), "object"),
        case("blank name", "POST", "/v1/datasets", json_body(json!({"name": "  ", "examples": []})), 400, Some("name"), "empty"),
        case("repetitions is text", "POST", "/v1/experiments", experiment_with(json!({"repetitions": "two"})), 400, Some("repetitions"), ""),
        case("start is text", "POST", "/v1/experiments", experiment_with(json!({"start": "yes"})), 400, Some("start"), ""),
        // Invalid values.
        case("repetitions 0", "POST", "/v1/experiments", experiment_with(json!({"repetitions": 0})), 400, Some("repetitions"), "at least 1"),
        case("unknown provider", "POST", "/v1/experiments", experiment_with(json!({"task": {"provider": "nope"}})), 400, Some("task.provider"), "nope"),
        case("unknown dataset", "POST", "/v1/experiments", experiment_with(json!({"dataset_id": ghost})), 400, Some("dataset_id"), ""),
        case("malformed dataset id", "POST", "/v1/experiments", experiment_with(json!({"dataset_id": "not-an-id"})), 400, Some("dataset_id"), ""),
        case("template field no example has", "POST", "/v1/experiments", experiment_with(json!({"task": {"messages": [{"role": "user", "content": "{{input.question}}"}]}})), 400, Some("task.messages[0]"), "input.question"),
        case("labels that cannot be told apart", "POST", "/v1/experiments", experiment_with(json!({"evaluators": [merged(label_judge("c"), json!({"labels": ["Yes", "YES!"]}))]})), 400, Some("evaluators[0].labels"), "told apart"),
        case("an empty label", "POST", "/v1/experiments", experiment_with(json!({"evaluators": [merged(label_judge("c"), json!({"labels": ["A", " "]}))]})), 400, Some("evaluators[0].labels"), "empty"),
        case("duplicate evaluator names", "POST", "/v1/experiments", experiment_with(json!({"evaluators": [label_judge("c"), label_judge("c")]})), 400, Some("evaluators[1].name"), ""),
        case("bad evaluator provider on attach", "POST", format!("/v1/experiments/{experiment}/evaluators"), json_body(merged(label_judge("other"), json!({"provider": "nope"}))), 400, Some("provider"), "nope"),
        case("bad example on append", "POST", format!("/v1/datasets/{dataset}/examples"), json_body(json!({"examples": [{"input": {"a": 1, "b": 2}}, {"input": []}]})), 400, Some("examples[1].input"), "object"),
        // Unknown ids.
        case("append to unknown dataset", "POST", format!("/v1/datasets/{ghost}/examples"), json_body(json!({"examples": [{"input": {}}]})), 404, None, ""),
        case("attach to unknown experiment", "POST", format!("/v1/experiments/{ghost}/evaluators"), json_body(label_judge("x")), 404, None, ""),
        case("get unknown dataset", "GET", format!("/v1/datasets/{ghost}"), "", 404, None, ""),
        case("get malformed dataset id", "GET", "/v1/datasets/12", "", 404, None, ""),
        case("get unknown experiment", "GET", format!("/v1/experiments/{ghost}"), "", 404, None, ""),
        case("runs of unknown experiment", "GET", format!("/v1/experiments/{ghost}/runs"), "", 404, None, ""),
        case("delete unknown experiment", "DELETE", format!("/v1/experiments/{ghost}"), "", 404, None, ""),
        case("unknown route", "GET", "/v1/nothing-here", "", 404, None, ""),
        case("wrong method", "PUT", "/v1/datasets", "{}", 405, None, ""),
        // Bad queries.
        case("unknown status filter", "GET", "/v1/experiments?status=DONE", "", 400, Some("status"), ""),
        case("unknown query parameter", "GET", "/v1/experiments?colour=red", "", 400, Some("colour"), ""),
        case("limit 0", "GET", format!("/v1/experiments/{experiment}/runs?limit=0"), "", 400, Some("limit"), ""),
        case("limit too large", "GET", format!("/v1/experiments/{experiment}/runs?limit=100000"), "", 400, Some("limit"), ""),
        case("forged cursor", "GET", format!("/v1/experiments/{experiment}/runs?cursor=abc"), "", 400, Some("cursor"), ""),
        // Oversize bodies (limit 4096 bytes).
        case("oversize dataset", "POST", "/v1/datasets", json_body(json!({"name": "big", "examples": [big_example]})), 413, None, "4096"),
        case("oversize append", "POST", format!("/v1/datasets/{dataset}/examples"), json_body(json!({"examples": [big_example]})), 413, None, "4096"),
        case("oversize experiment", "POST", "/v1/experiments", experiment_with(json!({"name": "n".repeat(5000)})), 413, None, "4096"),
    ];
    // Wrong content types.
    for (what, ct, path) in [
        ("XML dataset", "application/xml", "/v1/datasets".to_owned()),
        (
            "CSV append",
            "text/csv",
            format!("/v1/datasets/{dataset}/examples"),
        ),
        (
            "YAML experiment",
            "application/yaml",
            "/v1/experiments".to_owned(),
        ),
        (
            "NDJSON experiment",
            "application/x-ndjson",
            "/v1/experiments".to_owned(),
        ),
    ] {
        cases.push(Case {
            content_type: Some(ct),
            ..case(
                what,
                "POST",
                path,
                json_body(json!({"name": "x", "examples": []})),
                415,
                None,
                "",
            )
        });
    }
    // NDJSON bodies.
    cases.push(Case {
        content_type: Some("application/x-ndjson"),
        ..case(
            "NDJSON without ?name=",
            "POST",
            "/v1/datasets",
            "{\"input\": {}}\n",
            400,
            Some("name"),
            "name",
        )
    });
    cases.push(Case {
        content_type: Some("application/x-ndjson"),
        ..case(
            "NDJSON with a bad line",
            "POST",
            "/v1/datasets?name=n",
            "{\"input\": {}}\n{\"input\": {}, \"x\": 1}\n",
            400,
            Some("examples[1].x"),
            "line 2",
        )
    });
    cases.push(Case {
        content_type: Some("application/x-ndjson"),
        ..case(
            "NDJSON oversize",
            "POST",
            "/v1/datasets?name=n",
            format!("{big_example}\n"),
            413,
            None,
            "",
        )
    });

    // Every case is checked; the failures are reported together.
    let mut failures = Vec::new();
    for c in &cases {
        let method = reqwest::Method::from_bytes(c.method.as_bytes()).unwrap();
        let r = api
            .raw(method, &c.path, c.content_type, c.body.clone())
            .await;
        if let Err(why) = check(c, &r) {
            failures.push(format!("{} ({} {}): {why}", c.what, c.method, c.path));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));

    // Nothing changed.
    assert_eq!(api.snapshot().await, before);
    for (t, n) in tables.iter().zip(counts) {
        assert_eq!(db.count(t).await, n, "rows of {t}");
    }
    let view = api.experiment(&experiment).await;
    assert_eq!(view["status"], "STOPPED", "{view}");
    assert!(!server.log().contains("panicked"), "{}", server.log());
    assert!(
        !server.log().contains("internal error"),
        "a bad request caused a 500:\n{}",
        server.log()
    );
}

/// Checks one answer against its case.
fn check(c: &Case, r: &Resp) -> Result<(), String> {
    if r.status != c.status {
        return Err(format!(
            "status {} instead of {}: {}",
            r.status,
            c.status,
            r.text()
        ));
    }
    if r.header("content-type").as_deref() != Some("application/problem+json") {
        return Err(format!("content type {:?}", r.header("content-type")));
    }
    let p: Value = serde_json::from_slice(&r.body).map_err(|e| format!("{e}: {}", r.text()))?;
    let kind = p["type"].as_str().unwrap_or_default();
    if !kind.starts_with("urn:runnel:problem:")
        || !p["title"].is_string()
        || p["status"] != c.status
    {
        return Err(format!("not a problem document: {p}"));
    }
    if p.get("field").and_then(Value::as_str) != c.field {
        return Err(format!(
            "field {:?} instead of {:?}: {p}",
            p.get("field"),
            c.field
        ));
    }
    let detail = p["detail"].as_str().unwrap_or_default().to_lowercase();
    if detail.is_empty() || !detail.contains(&c.detail.to_lowercase()) {
        return Err(format!("detail lacks {:?}: {p}", c.detail));
    }
    Ok(())
}
