//! Quota exhaustion through the whole stack (DESIGN §6, issue 12 item 3),
//! against a small local OpenAI-style stub: its key allows one call, then
//! answers every call with OpenAI's 429 `insufficient_quota` and a
//! `retry-after` of an hour. The experiment shows that it waits on quota
//! and until when (event stream, `GET`, log), goes to ERROR naming the
//! quota after `scheduler.rate_limit_give_up`, and no provider call is made
//! for it after that.
//!
//! A stub rather than `runnel sim`: the simulator's quota dialect
//! (`limits.quota_after`) is being added in parallel, and its token bucket
//! cannot stand in — with a tiny limit its `x-ratelimit-remaining: 0` and
//! reset headers make runnel pause before any 429 is drawn.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use axum::Json;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::post;
use serde_json::{Value, json};

use crate::common::*;
use crate::lifecycle::after_cooldown;

/// The stub's state: calls so far, and whether the quota is used up.
struct Stub {
    url: String,
    calls: Arc<AtomicU64>,
    spent: Arc<AtomicBool>,
}

/// The stub: the first call succeeds, every later one is told the quota is
/// used up (with `retry_after` seconds, if given) while `spent` is set.
async fn quota_stub(retry_after: Option<&'static str>) -> Stub {
    let calls = Arc::new(AtomicU64::new(0));
    let spent = Arc::new(AtomicBool::new(true));
    let (counter, flag) = (calls.clone(), spent.clone());
    let app = axum::Router::new().route(
        "/v1/chat/completions",
        post(move || {
            let n = counter.fetch_add(1, Ordering::SeqCst);
            let spent = flag.load(Ordering::SeqCst);
            async move {
                if n == 0 || !spent {
                    return Json(json!({
                        "id": "chatcmpl-1", "object": "chat.completion",
                        "choices": [{"index": 0, "message": {"role": "assistant", "content": "4"}, "finish_reason": "stop"}],
                        "usage": {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6}
                    }))
                    .into_response();
                }
                let mut response = (
                    StatusCode::TOO_MANY_REQUESTS,
                    Json(json!({"error": {
                        "message": "You exceeded your current quota, please check your plan and billing details. For more information on this error, read the docs: https://platform.openai.com/docs/guides/error-codes/api-errors.",
                        "type": "insufficient_quota", "param": null, "code": "insufficient_quota"}})),
                )
                    .into_response();
                if let Some(secs) = retry_after {
                    response
                        .headers_mut()
                        .insert("retry-after", axum::http::HeaderValue::from_static(secs));
                }
                response
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
        .await
        .unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Stub {
        url: format!("http://{addr}"),
        calls,
        spent,
    }
}

/// Examples of the dataset each test runs.
const EXAMPLES: usize = 6;

/// A server on `kind` with `settings` (section, key, TOML value) against
/// `stub`, running one experiment of [`EXAMPLES`] examples, one call at a
/// time.
struct Run {
    server: Server,
    id: String,
    _db: TestDb,
    _dir: TempDir,
}

impl Run {
    async fn start(kind: DbKind, stub: &Stub, settings: &[(&str, &str, &str)]) -> Self {
        let db = TestDb::new(kind).await;
        let dir = TempDir::new("quota");
        let mut config = ConfigToml::new(&stub.url);
        for (section, key, value) in settings {
            config.set(section, key, value);
        }
        let server = Server::start(dir.path(), "a", &ServerSpec::new(&config, &db)).await;
        let api = server.api();
        let dataset = api
            .create_dataset("quota", &arithmetic_examples(EXAMPLES))
            .await;
        let id = api
            .create_experiment(&json!({
                "dataset_id": dataset, "name": "quota", "max_concurrency": 1,
                "task": arithmetic_task(false)
            }))
            .await;
        Self {
            server,
            id,
            _db: db,
            _dir: dir,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_used_up_quota_is_shown_then_errors_naming_it_on_sqlite() {
    a_used_up_quota_is_shown_then_errors_naming_it(DbKind::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_used_up_quota_is_shown_then_errors_naming_it_on_postgres() {
    a_used_up_quota_is_shown_then_errors_naming_it(DbKind::Postgres).await;
}

async fn a_used_up_quota_is_shown_then_errors_naming_it(kind: DbKind) {
    let stub = quota_stub(Some("3600")).await;
    let calls = stub.calls.clone();
    let mut run = Run::start(
        kind,
        &stub,
        &[("scheduler", "rate_limit_give_up", "\"4s\"")],
    )
    .await;
    let (api, id) = (run.server.api(), run.id.clone());

    // The wait is shown: an event (at once if the stream opens mid-wait)...
    let mut sse = api.events(&id).await;
    let (waiting, _) = within(30, "a waiting event", sse.until("waiting")).await;
    let data = &waiting.data;
    assert_eq!(data["reason"], "quota", "{data}");
    assert!(data["key"].as_str().unwrap().starts_with("sim|"), "{data}");
    assert!(
        data["message"]
            .as_str()
            .unwrap()
            .contains("insufficient_quota"),
        "{data}"
    );
    let until: chrono::DateTime<chrono::Utc> = data["until"].as_str().unwrap().parse().unwrap();
    let ahead = until - chrono::Utc::now();
    assert!(
        ahead > chrono::TimeDelta::minutes(55) && ahead <= chrono::TimeDelta::minutes(60),
        "{data}"
    );
    // ...and by GET while it lasts (the give-up is seconds away).
    let view = api.experiment(&id).await;
    assert_eq!(view["status"], "RUNNING", "{view}");
    assert_eq!(view["waiting"]["reason"], "quota", "{view}");
    assert_eq!(view["waiting"]["until"], data["until"], "{view}");

    // After the give-up: ERROR, naming the quota and when it comes back.
    let rest = within(60, "the event stream to end", sse.collect_all()).await;
    assert_eq!(final_status(&rest), "ERROR", "{rest:?}");
    let view = api.experiment(&id).await;
    assert_eq!(view["status"], "ERROR", "{view}");
    assert_eq!(view["waiting"], Value::Null, "{view}");
    let error = view["last_error"]
        .as_str()
        .unwrap_or_else(|| panic!("{view}"));
    assert!(
        error.starts_with("quota exhausted: provider `sim`"),
        "{error}"
    );
    assert!(error.contains("exceeded your current quota"), "{error}");
    assert!(error.contains("comes back in about 59m"), "{error}");
    // One success, one quota answer, then nothing: the key waited.
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    assert_eq!(view["progress"]["runs_succeeded"], 1, "{view}");
    assert_eq!(view["progress"]["runs_failed"], 0, "{view}");
    let logs = api.get(&format!("/v1/experiments/{id}/logs")).await.json();
    let texts: Vec<&str> = logs
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|l| l["message"].as_str())
        .collect();
    assert!(
        texts
            .iter()
            .any(|t| t.starts_with("waiting on quota: provider `sim`")),
        "{texts:?}"
    );

    // Zero provider calls for it after the ERROR, up to the server's exit.
    run.server.terminate(30).await;
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_continues_once_the_quota_is_back_on_sqlite() {
    resume_continues_once_the_quota_is_back(DbKind::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_continues_once_the_quota_is_back_on_postgres() {
    resume_continues_once_the_quota_is_back(DbKind::Postgres).await;
}

/// The provider does not say when the quota comes back: the key is probed
/// every `advisor.quota_probe_interval`, the experiment errors after the
/// give-up, and once the user has topped up, a resume completes it.
async fn resume_continues_once_the_quota_is_back(kind: DbKind) {
    let stub = quota_stub(None).await;
    let settings = [
        ("scheduler", "rate_limit_give_up", "\"3s\""),
        ("scheduler", "cooldown", "\"1s\""),
        ("advisor", "quota_probe_interval", "\"1s\""),
    ];
    let run = Run::start(kind, &stub, &settings).await;
    let (api, id, n) = (run.server.api(), run.id.clone(), EXAMPLES);
    let mut sse = api.events(&id).await;
    let (waiting, _) = within(30, "a waiting event", sse.until("waiting")).await;
    assert_eq!(waiting.data["reason"], "quota", "{waiting:?}");
    assert_eq!(waiting.data["until"], Value::Null, "{waiting:?}");
    let rest = within(60, "the event stream to end", sse.collect_all()).await;
    assert_eq!(final_status(&rest), "ERROR", "{rest:?}");
    let view = api.experiment(&id).await;
    let error = view["last_error"].as_str().unwrap();
    assert!(error.contains("did not say when it comes back"), "{error}");
    // One success, the quota answer, and a probe about every second: a
    // handful, not a storm.
    let calls = stub.calls.load(Ordering::SeqCst);
    assert!((2..=6).contains(&calls), "{calls} calls");

    // Credit added: the resumed experiment's first call is the probe, which
    // succeeds, and the rest follows.
    stub.spent.store(false, Ordering::SeqCst);
    let (r, _) = after_cooldown(&api, &format!("/v1/experiments/{id}/resume")).await;
    assert_eq!(r.expect(200).json(), json!({"status": "RUNNING"}));
    let events = api.follow(&id, 60).await;
    assert_eq!(final_status(&events), "COMPLETED", "{events:?}");
    let view = api.experiment(&id).await;
    assert_eq!(view["progress"]["runs_succeeded"], n, "{view}");
    assert_eq!(view["progress"]["runs_failed"], 0, "{view}");
    assert_eq!(view["last_error"], Value::Null, "{view}");
}
