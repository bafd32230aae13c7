//! Hostile input against every endpoint, through `app(state).oneshot` on a
//! real `Runtime` (SQLite, and PostgreSQL with `RUNNEL_TEST_POSTGRES_URL`):
//!
//! - a property: generated requests — arbitrary JSON, valid bodies with one
//!   field of the wrong type, huge strings, deep nesting, invalid UTF-8,
//!   truncated bodies, random bytes, wrong content types, garbage ids and
//!   query strings, unsupported methods — always get a 2xx (reads only) or a
//!   4xx `application/problem+json`, never a 5xx or a panic, and change
//!   nothing (datasets, examples, experiments and evaluators compared before
//!   and after);
//! - SQL injection strings in every text field round-trip unchanged;
//! - near-miss API keys are refused on every `/v1` route.
//!
//! `cargo xtask chaos hostile` and `security` run the same ideas at a larger
//! scale over real sockets.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use axum::body::Body;
use axum::http::{Request, StatusCode};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use runnel_store::DatabaseKind;
use serde_json::{Value, json};

#[path = "common/fixture.rs"]
mod fixture;
use fixture::{Fixture, judge, task};

const GHOST: &str = "0191d3c2-7e4b-7c4e-9a53-6f0e2d5b1a77";

/// One generated request.
#[derive(Clone, Debug)]
struct Hostile {
    method: &'static str,
    path: String,
    content_type: Option<&'static str>,
    body: Vec<u8>,
    /// A 2xx answer would mean the request changed something.
    mutating: bool,
}

/// Arbitrary JSON; object keys start with `zz`, so they are never a field
/// name of the API.
fn arbitrary_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        ".{0,12}".prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
            prop::collection::btree_map("zz[a-z]{0,4}", inner, 1..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// A value of another JSON type than `v`, never null (null means "absent"
/// for optional fields).
fn wrong_type(v: &Value, pick: u8) -> Value {
    let candidates = [
        json!(7),
        json!("seven"),
        json!([1, "two"]),
        json!({"zz": 1}),
        json!(true),
    ];
    for i in 0..candidates.len() {
        let c = &candidates[(usize::from(pick) + i) % candidates.len()];
        if std::mem::discriminant(c) != std::mem::discriminant(v) {
            return c.clone();
        }
    }
    json!(7)
}

/// How a valid body is made hostile.
#[derive(Clone, Debug)]
enum Mangle {
    Arbitrary(Value),
    WrongType { field: usize, pick: u8 },
    Huge(usize),
    Deep(usize),
    InvalidUtf8 { at: usize, byte: u8 },
    Truncated(usize),
    Bytes(Vec<u8>),
    ContentType(&'static str),
}

fn mangle() -> impl Strategy<Value = Mangle> {
    prop_oneof![
        arbitrary_json().prop_map(Mangle::Arbitrary),
        (any::<usize>(), any::<u8>()).prop_map(|(field, pick)| Mangle::WrongType { field, pick }),
        (201usize..6000).prop_map(Mangle::Huge),
        (129usize..5000).prop_map(Mangle::Deep),
        (
            any::<usize>(),
            prop::sample::select(vec![0xffu8, 0xfe, 0xc3, 0x80, 0xed])
        )
            .prop_map(|(at, byte)| Mangle::InvalidUtf8 { at, byte }),
        any::<usize>().prop_map(Mangle::Truncated),
        prop::collection::vec(any::<u8>(), 0..200).prop_map(Mangle::Bytes),
        prop::sample::select(vec![
            "application/xml",
            "text/csv",
            "multipart/form-data; boundary=x",
            "image/png",
        ])
        .prop_map(Mangle::ContentType),
    ]
}

/// The writing endpoints: path, a valid body, and pointers to its typed,
/// required fields.
fn writers(dataset: &str, experiment: &str) -> Vec<(String, Value, &'static [&'static str])> {
    vec![
        (
            "/v1/datasets".into(),
            json!({"name": "h", "examples": [{"input": {"a": 1, "b": 2}, "expected": 3}]}),
            &["/name", "/examples", "/examples/0", "/examples/0/input"],
        ),
        (
            format!("/v1/datasets/{dataset}/examples"),
            json!({"examples": [{"input": {"a": 1, "b": 2}}]}),
            &["/examples", "/examples/0", "/examples/0/input"],
        ),
        (
            "/v1/experiments".into(),
            json!({"dataset_id": dataset, "name": "e", "start": false, "task": task(),
                   "evaluators": [judge("c")]}),
            &[
                "/dataset_id",
                "/name",
                "/task",
                "/task/provider",
                "/task/model",
                "/task/messages",
                "/task/messages/0",
                "/task/messages/0/content",
                "/evaluators",
                "/evaluators/0/name",
                "/evaluators/0/labels",
            ],
        ),
        (
            format!("/v1/experiments/{experiment}/evaluators"),
            judge("other"),
            &["/name", "/provider", "/model", "/messages", "/labels"],
        ),
    ]
}

fn hostile_body(
    (path, valid, fields): &(String, Value, &'static [&'static str]),
    how: &Mangle,
) -> Hostile {
    let text = valid.to_string();
    let mut content_type = Some("application/json");
    let body = match how {
        Mangle::Arbitrary(v) => v.to_string().into_bytes(),
        Mangle::WrongType { field, pick } => {
            let mut v = valid.clone();
            let pointer = fields[field % fields.len()];
            let slot = v.pointer_mut(pointer).unwrap();
            *slot = wrong_type(&slot.clone(), *pick);
            v.to_string().into_bytes()
        }
        Mangle::Huge(n) => {
            // A name far beyond 200 characters (or an unknown field).
            let mut v = valid.clone();
            match v.pointer_mut("/name") {
                Some(slot) => *slot = json!("n".repeat(*n)),
                None => v["zz"] = json!("n".repeat(*n)),
            }
            v.to_string().into_bytes()
        }
        Mangle::Deep(depth) => {
            format!("{}1{}", "[".repeat(*depth), "]".repeat(*depth)).into_bytes()
        }
        Mangle::InvalidUtf8 { at, byte } => {
            let mut bytes = text.into_bytes();
            let i = at % bytes.len();
            bytes[i] = *byte;
            if *byte == 0xc3 && i + 1 < bytes.len() {
                bytes[i + 1] = b'(';
            }
            bytes
        }
        Mangle::Truncated(at) => {
            let bytes = text.into_bytes();
            bytes[..at % bytes.len()].to_vec()
        }
        Mangle::Bytes(b) => b.clone(),
        Mangle::ContentType(ct) => {
            content_type = Some(ct);
            text.into_bytes()
        }
    };
    Hostile {
        method: "POST",
        path: path.clone(),
        content_type,
        body,
        mutating: true,
    }
}

/// Any request: a hostile body to a writing endpoint, or a garbage id,
/// query or method anywhere.
fn hostile(dataset: String, experiment: String) -> impl Strategy<Value = Hostile> {
    let bodies = {
        let writers = writers(&dataset, &experiment);
        (0..writers.len(), mangle()).prop_map(move |(i, how)| hostile_body(&writers[i], &how))
    };
    let ids = prop_oneof![
        Just(GHOST.to_owned()),
        Just("%ff%fe".to_owned()),
        Just("12".to_owned()),
        "[a-zA-Z0-9%'\";=-]{1,40}",
        (1usize..3000).prop_map(|n| "x".repeat(n)),
    ];
    let queries = prop_oneof![
        Just(String::new()),
        Just("?limit=-1".to_owned()),
        Just("?limit=0".to_owned()),
        Just("?limit=99999999999999999999".to_owned()),
        Just("?cursor=%ff".to_owned()),
        Just("?status=RUNNING%27%3B--".to_owned()),
        Just("?dataset_id=1%20OR%201%3D1".to_owned()),
        "\\?[a-z]{1,6}=[a-zA-Z0-9%]{0,20}",
    ];
    let others = (0usize..12, ids, queries, any::<bool>(), arbitrary_json()).prop_map({
        let (dataset, experiment) = (dataset.clone(), experiment.clone());
        move |(route, id, query, real, junk)| {
            // Reads may use the real ids; writes only ids that match nothing.
            let d = if real { dataset.clone() } else { id.clone() };
            let e = if real { experiment.clone() } else { id.clone() };
            let (method, path, mutating) = match route {
                0 => ("GET", format!("/v1/datasets{query}"), false),
                1 => ("GET", format!("/v1/datasets/{d}{query}"), false),
                2 => ("GET", format!("/v1/experiments{query}"), false),
                3 => ("GET", format!("/v1/experiments/{e}{query}"), false),
                4 => ("GET", format!("/v1/experiments/{e}/runs{query}"), false),
                5 => (
                    "GET",
                    format!("/v1/experiments/{e}/runs.jsonl{query}"),
                    false,
                ),
                6 => ("GET", format!("/v1/experiments/{e}/logs{query}"), false),
                7 => ("GET", format!("/v1/experiments/{id}/events"), false),
                8 => ("POST", format!("/v1/experiments/{id}/stop"), true),
                9 => ("POST", format!("/v1/experiments/{id}/resume"), true),
                10 => ("DELETE", format!("/v1/experiments/{id}"), true),
                _ => ("PUT", format!("/v1/experiments/{e}"), true),
            };
            Hostile {
                method,
                path,
                content_type: Some("application/json"),
                body: junk.to_string().into_bytes(),
                mutating,
            }
        }
    });
    prop_oneof![3 => bodies, 2 => others]
}

/// What must not change: datasets with their example counts, experiments
/// (without the fields that move by themselves) and their evaluators.
async fn snapshot(f: &Fixture) -> Value {
    let db = &f.state().db;
    let datasets: Vec<Value> = db
        .datasets()
        .await
        .unwrap()
        .into_iter()
        .map(|d| json!([d.id.to_string(), d.name, d.example_count]))
        .collect();
    let mut experiments = Vec::new();
    for x in db.experiments(&Default::default()).await.unwrap() {
        let plan = runnel_core::Store::load_plan(&**db, x.id).await.unwrap();
        let evaluators: Vec<String> = plan.evaluators.iter().map(|e| e.name.clone()).collect();
        experiments.push(json!([
            x.id.to_string(),
            x.name,
            x.status.as_str(),
            evaluators
        ]));
    }
    json!([datasets, experiments])
}

async fn send(f: &Fixture, h: &Hostile) -> Result<(), TestCaseError> {
    let mut request = Request::builder().method(h.method).uri(&h.path);
    if let Some(ct) = h.content_type {
        request = request.header("content-type", ct);
    }
    let Ok(request) = request.body(Body::from(h.body.clone())) else {
        // Not a valid URI: no server would see it.
        return Ok(());
    };
    let (status, content_type, body) = f.call(request).await;
    prop_assert!(
        status.as_u16() < 500,
        "{} {}: {status} {body}",
        h.method,
        h.path
    );
    if status.is_client_error() {
        prop_assert_eq!(
            content_type.as_deref(),
            Some("application/problem+json"),
            "{} {}: {}",
            h.method,
            &h.path,
            body
        );
        prop_assert_eq!(&body["status"], &json!(status.as_u16()), "{}", body);
        prop_assert!(body["detail"].is_string(), "{}", body);
    } else {
        prop_assert!(
            !h.mutating,
            "a hostile {} {} was accepted: {status} {body}",
            h.method,
            h.path
        );
    }
    Ok(())
}

fn hostile_requests_change_nothing(kind: DatabaseKind, cases: u32) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let f = rt.block_on(Fixture::on(kind, |_| {}));
    let (dataset, experiment) = rt.block_on(f.stopped_experiment("kept"));
    let before = rt.block_on(snapshot(&f));
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    });
    let result = runner.run(&hostile(dataset, experiment), |h| rt.block_on(send(&f, &h)));
    let after = rt.block_on(snapshot(&f));
    rt.block_on(f.shutdown());
    if let Err(e) = result {
        panic!("{e}");
    }
    assert_eq!(before, after, "hostile requests changed the database");
}

#[test]
fn hostile_requests_get_4xx_problems_and_change_nothing_on_sqlite() {
    hostile_requests_change_nothing(DatabaseKind::Sqlite, 600);
}

#[test]
fn hostile_requests_get_4xx_problems_and_change_nothing_on_postgres() {
    hostile_requests_change_nothing(DatabaseKind::Postgres, 300);
}

/// Strings that break naively built SQL, and a NUL (which PostgreSQL text
/// cannot hold; it may only arrive inside JSON, where it is escaped).
const INJECTIONS: &[&str] = &[
    "'; DROP TABLE runs; --",
    "\" OR \"1\"=\"1",
    "x' OR '1'='1' --",
    "Robert'); DROP TABLE datasets;--",
    "$1 $2 ? :name @p1",
    "%' UNION SELECT * FROM experiments --",
    "NUL \u{0} inside",
];

async fn injection_strings_round_trip(kind: DatabaseKind) {
    let f = Fixture::on(kind, |_| {}).await;
    let examples: Vec<Value> = INJECTIONS
        .iter()
        .map(|s| json!({"input": {"a": s, *s: s}, "expected": s, "metadata": {*s: [s]}}))
        .collect();
    for (i, name) in INJECTIONS.iter().enumerate().take(6) {
        let (status, created) = f
            .post("/v1/datasets", &json!({"name": name, "examples": examples}))
            .await;
        assert_eq!(status, StatusCode::CREATED, "{created}");
        let id = created["id"].as_str().unwrap();
        let (_, got) = f.get(&format!("/v1/datasets/{id}")).await;
        assert_eq!(got["name"], *name);
        let page = f
            .state()
            .db
            .examples_page(id.parse().unwrap(), None, 100)
            .await
            .unwrap();
        for ((_, stored), sent) in page.iter().zip(&examples) {
            assert_eq!(stored.input, sent["input"]);
            assert_eq!(stored.expected.as_ref(), Some(&sent["expected"]));
            assert_eq!(stored.metadata, sent["metadata"]);
        }
        let body = json!({
            "dataset_id": id, "name": INJECTIONS[(i + 1) % 6], "start": false,
            "task": {"provider": "sim", "model": INJECTIONS[(i + 2) % 6],
                     "messages": [{"role": "system", "content": INJECTIONS[6]},
                                  {"role": "user", "content": format!("{} {{{{input.a}}}}", INJECTIONS[i])}]},
            "evaluators": [merge_name(judge("x"), INJECTIONS[(i + 3) % 6])]
        });
        let (status, created) = f.post("/v1/experiments", &body).await;
        assert_eq!(status, StatusCode::CREATED, "{created}");
        let x = created["id"].as_str().unwrap();
        let (status, attached) = f
            .post(
                &format!("/v1/experiments/{x}/evaluators"),
                &merge_name(judge("y"), INJECTIONS[(i + 4) % 6]),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{attached}");
        let (_, view) = f.get(&format!("/v1/experiments/{x}")).await;
        assert_eq!(view["name"], INJECTIONS[(i + 1) % 6]);
        let plan = runnel_core::Store::load_plan(&*f.state().db, x.parse().unwrap())
            .await
            .unwrap();
        assert_eq!(plan.task.model, INJECTIONS[(i + 2) % 6]);
        assert_eq!(plan.task.messages[0].content, INJECTIONS[6]);
        let names: Vec<&str> = plan.evaluators.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(names, [INJECTIONS[(i + 3) % 6], INJECTIONS[(i + 4) % 6]]);
        // Injection strings in query parameters are refused, not run.
        for query in [
            "/v1/experiments?status=%27%3B%20DROP%20TABLE%20runs%3B%20--",
            "/v1/experiments?dataset_id=1%27%20OR%20%271%27%3D%271",
        ] {
            let (status, problem) = f.get(query).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{problem}");
        }
    }
    // Nothing was dropped or deleted.
    let (_, datasets) = f.get("/v1/datasets").await;
    assert_eq!(datasets.as_array().unwrap().len(), 6);
    let (_, experiments) = f.get("/v1/experiments").await;
    assert_eq!(experiments.as_array().unwrap().len(), 6);
    f.shutdown().await;
}

fn merge_name(mut spec: Value, name: &str) -> Value {
    spec["name"] = json!(name);
    spec
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_injection_strings_round_trip_on_sqlite() {
    injection_strings_round_trip(DatabaseKind::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_injection_strings_round_trip_on_postgres() {
    injection_strings_round_trip(DatabaseKind::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn near_miss_api_keys_are_refused_on_every_route() {
    let key = "handler-key-5b0d9e27f1";
    let f = Fixture::with(|t| t.push_str(&format!("[auth]\napi_keys = [\"{key}\"]\n"))).await;
    let routes = [
        ("GET", "/v1/datasets".to_owned()),
        ("POST", "/v1/datasets".to_owned()),
        ("GET", format!("/v1/datasets/{GHOST}")),
        ("POST", format!("/v1/datasets/{GHOST}/examples")),
        ("GET", "/v1/experiments".to_owned()),
        ("POST", "/v1/experiments".to_owned()),
        ("GET", format!("/v1/experiments/{GHOST}")),
        ("DELETE", format!("/v1/experiments/{GHOST}")),
        ("POST", format!("/v1/experiments/{GHOST}/stop")),
        ("POST", format!("/v1/experiments/{GHOST}/resume")),
        ("POST", format!("/v1/experiments/{GHOST}/evaluators")),
        ("GET", format!("/v1/experiments/{GHOST}/runs")),
        ("GET", format!("/v1/experiments/{GHOST}/runs.jsonl")),
        ("GET", format!("/v1/experiments/{GHOST}/logs")),
        ("GET", format!("/v1/experiments/{GHOST}/events")),
    ];
    let near_misses = [
        None,
        Some(format!("Bearer {}", &key[..key.len() - 1])),
        Some(format!("Bearer {key}x")),
        Some(format!("Bearer {}0", &key[..key.len() - 1])),
        Some(format!("Bearer {}", key.to_uppercase())),
        Some(format!("Basic {key}")),
        Some(key.to_owned()),
        Some("Bearer ".to_owned()),
        Some(format!("Bearer {key}{key}")),
    ];
    for (method, path) in &routes {
        for auth in &near_misses {
            let mut request = Request::builder().method(*method).uri(path);
            if let Some(a) = auth {
                request = request.header("authorization", a);
            }
            let (status, _, problem) = f.call(request.body(Body::from("{}")).unwrap()).await;
            assert_eq!(
                status,
                StatusCode::UNAUTHORIZED,
                "{method} {path} {auth:?}: {problem}"
            );
            assert!(!problem.to_string().contains(key), "{problem}");
        }
        let request = Request::builder()
            .method(*method)
            .uri(path)
            .header("authorization", format!("Bearer {key}"))
            .header("content-type", "application/json")
            .body(Body::from("{}"))
            .unwrap();
        let (status, _, problem) = f.call(request).await;
        assert_ne!(
            status,
            StatusCode::UNAUTHORIZED,
            "{method} {path}: {problem}"
        );
    }
    for path in ["/healthz", "/readyz", "/metrics"] {
        let (status, _) = f.get(path).await;
        assert_eq!(status, StatusCode::OK, "{path}");
    }
    f.shutdown().await;
}
