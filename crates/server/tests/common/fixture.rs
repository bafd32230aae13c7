//! A `Runtime` for handler-level tests: `app(state).oneshot(request)` with
//! no socket, on a fresh SQLite file in a temporary folder or a fresh
//! PostgreSQL database (`RUNNEL_TEST_POSTGRES_URL`; the test fails saying so
//! when it is unset). Providers point at a closed port: tests that use this
//! create experiments stopped, or never let them call out.

#![allow(dead_code, unreachable_pub)] // each test binary uses part of it
#![allow(clippy::unwrap_used, clippy::expect_used)]

use axum::body::Body;
use axum::http::{Request, StatusCode};
use runnel_server::{AppState, RunnelConfig, Runtime, app};
use runnel_store::DatabaseKind;
use runnel_store::testing::TempDatabase;
use serde_json::{Value, json};
use tower::ServiceExt;

/// A runtime on a fresh database; the folder and database go with it.
pub struct Fixture {
    runtime: Option<Runtime>,
    dir: std::path::PathBuf,
    database: Option<TempDatabase>,
    /// The database URL.
    pub url: String,
}

impl Fixture {
    /// On SQLite, with the base configuration.
    pub async fn new() -> Self {
        Self::with(|_| {}).await
    }

    /// On SQLite, with the base configuration changed by `tweak`.
    pub async fn with(tweak: impl FnOnce(&mut String)) -> Self {
        Self::on(DatabaseKind::Sqlite, tweak).await
    }

    /// On a fresh database of `kind`, with the base configuration changed by
    /// `tweak`.
    pub async fn on(kind: DatabaseKind, tweak: impl FnOnce(&mut String)) -> Self {
        let dir = std::env::temp_dir().join(format!("runnel-handlers-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let (url, database) = match kind {
            DatabaseKind::Sqlite => (
                format!("sqlite://{}", dir.join("runnel.db").display()),
                None,
            ),
            DatabaseKind::Postgres => {
                let temp = TempDatabase::postgres().await;
                (temp.url().to_owned(), Some(temp))
            }
        };
        let mut text = format!(
            "[database]\nurl = \"{url}\"\n\
             [server]\nbody_limit_bytes = 4096\n\
             [providers.sim]\nkind = \"openai\"\nbase_url = \"http://127.0.0.1:9/v1\"\nunlimited = true\n\
             [providers.judge]\nkind = \"anthropic\"\nbase_url = \"http://127.0.0.1:9\"\nunlimited = true\n"
        );
        tweak(&mut text);
        let config = RunnelConfig::from_toml(&text).unwrap();
        let runtime = Runtime::start(config).await.unwrap();
        Self {
            runtime: Some(runtime),
            dir,
            database,
            url,
        }
    }

    /// The API's state.
    pub fn state(&self) -> AppState {
        self.runtime.as_ref().unwrap().state.clone()
    }

    /// Sends `request`; returns the status, content type and body (JSON, or
    /// a JSON string of the text).
    pub async fn call(&self, request: Request<Body>) -> (StatusCode, Option<String>, Value) {
        let response = app(self.state()).oneshot(request).await.unwrap();
        let status = response.status();
        let content_type = response
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_owned());
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap();
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()))
        };
        (status, content_type, body)
    }

    /// `POST path` with a JSON body.
    pub async fn post(&self, path: &str, body: &Value) -> (StatusCode, Value) {
        let request = Request::post(path)
            .header("content-type", "application/json")
            .body(Body::from(serde_json::to_vec(body).unwrap()))
            .unwrap();
        let (status, _, body) = self.call(request).await;
        (status, body)
    }

    /// `GET path`.
    pub async fn get(&self, path: &str) -> (StatusCode, Value) {
        let (status, _, body) = self
            .call(Request::get(path).body(Body::empty()).unwrap())
            .await;
        (status, body)
    }

    /// Creates a dataset named `d` of `examples`; returns its id.
    pub async fn dataset(&self, examples: Value) -> String {
        let (status, body) = self
            .post("/v1/datasets", &json!({"name": "d", "examples": examples}))
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        body["id"].as_str().unwrap().to_owned()
    }

    /// A dataset of one example and a stopped experiment `name` over it with
    /// one evaluator; returns their ids.
    pub async fn stopped_experiment(&self, name: &str) -> (String, String) {
        let dataset = self
            .dataset(json!([{"input": {"a": 1, "b": 2}, "expected": 3}]))
            .await;
        let (status, created) = self
            .post(
                "/v1/experiments",
                &json!({"dataset_id": dataset, "name": name, "start": false,
                        "task": task(), "evaluators": [judge("correct")]}),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{created}");
        (dataset, created["id"].as_str().unwrap().to_owned())
    }

    /// Stops the runtime and removes the folder and database.
    pub async fn shutdown(mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown().await;
        }
        if let Some(database) = self.database.take() {
            database.remove().await;
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// An arithmetic task through the `sim` provider.
pub fn task() -> Value {
    json!({"provider": "sim", "model": "m",
           "messages": [{"role": "user", "content": "What is {{input.a}} + {{input.b}}?"}]})
}

/// A label judge `name` through the `judge` provider.
pub fn judge(name: &str) -> Value {
    json!({"name": name, "provider": "judge", "model": "j",
           "messages": [{"role": "user", "content": "Expected {{expected}}; got {{output}}. Answer CORRECT or INCORRECT."}],
           "labels": ["CORRECT", "INCORRECT"]})
}
