//! Harness of the end-to-end tests: the real `runnel` binary on a free
//! loopback port, the simulated provider, a throw-away database, and a small
//! HTTP client with an SSE reader.
//!
//! - [`Sim`]: `runnel_sim` started in-process on `127.0.0.1:0`.
//! - [`TestDb`]: a SQLite file in a temporary folder, or a fresh PostgreSQL
//!   database on the server of `RUNNEL_TEST_POSTGRES_URL` (a panic says to set
//!   it), dropped at the end; [`TestDb::find`] searches every table for a text.
//! - [`ConfigToml`]: writes `runnel.toml` (providers pointing at the sim).
//! - [`Server`]: spawns `runnel serve --bind 127.0.0.1:<free port>`, waits for
//!   `/readyz` within a deadline, captures stderr to a file, kills the child on
//!   drop; [`Server::kill9`] sends SIGKILL.
//! - [`Api`]: reqwest helpers for the API, [`Sse`] reads `event:`/`data:`.
//!
//! Nothing here sleeps to synchronise: readiness is polled with a deadline,
//! everything else waits on a response or an event, each bounded by
//! [`within`] so a hung server fails the test instead of hanging it.

#![allow(dead_code, unreachable_pub)] // each test binary uses part of the harness
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::future::Future;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures::StreamExt;
use futures::stream::BoxStream;
use runnel_sim::{ReplyConfig, SimConfig, SimHandle};
use runnel_store::testing::TempDatabase;
use serde_json::{Value, json};

/// The environment variable the test configurations name as `api_key_env`.
pub const KEY_ENV: &str = "RUNNEL_E2E_PROVIDER_KEY";
/// The provider key planted in the server's environment (key-shaped).
pub const PROVIDER_KEY: &str = "sk-e2e-PLANTED-9f3c2a7b51d04e6e8a1bc0ffee";

/// Whether `RUNNEL_TEST_FULL=1` asks for larger sizes.
pub fn full() -> bool {
    std::env::var("RUNNEL_TEST_FULL").is_ok_and(|v| v == "1")
}

/// Awaits `fut` for at most `secs` seconds; panics naming `what` otherwise.
pub async fn within<T>(secs: u64, what: &str, fut: impl Future<Output = T>) -> T {
    match tokio::time::timeout(Duration::from_secs(secs), fut).await {
        Ok(v) => v,
        Err(_) => panic!("timed out after {secs}s waiting for {what}"),
    }
}

// ------------------------------------------------------------------ folders

/// A temporary folder, removed on drop unless the test failed (then its path
/// is printed, with the server logs inside).
#[derive(Debug)]
pub struct TempDir(PathBuf);

impl TempDir {
    /// A new empty folder.
    pub fn new(label: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("runnel-e2e-{label}-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("kept the test folder {}", self.0.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

// ---------------------------------------------------------------- databases

/// Which database a test runs against.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DbKind {
    /// An embedded SQLite file.
    Sqlite,
    /// A fresh database on the PostgreSQL server of `RUNNEL_TEST_POSTGRES_URL`.
    Postgres,
}

/// A database for one test, removed on drop.
#[derive(Debug)]
pub struct TestDb {
    kind: DbKind,
    url: String,
    temp: Option<TempDatabase>,
}

impl TestDb {
    /// A new database of `kind`. PostgreSQL panics with instructions when
    /// `RUNNEL_TEST_POSTGRES_URL` is unset.
    pub async fn new(kind: DbKind) -> Self {
        let temp = match kind {
            DbKind::Sqlite => TempDatabase::sqlite(),
            DbKind::Postgres => TempDatabase::postgres().await,
        };
        Self {
            kind,
            url: temp.url().to_owned(),
            temp: Some(temp),
        }
    }

    /// Its URL, as `--database-url` takes it.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Which database it is.
    pub fn kind(&self) -> DbKind {
        self.kind
    }

    /// The SQLite file.
    pub fn sqlite_file(&self) -> PathBuf {
        assert_eq!(self.kind, DbKind::Sqlite);
        PathBuf::from(self.url.trim_start_matches("sqlite://"))
    }

    /// Where `needle` occurs in the database: on SQLite every byte of the
    /// database file and its journal (and the replica id file beside it), so
    /// rows of every table — and even freed pages — are covered; on
    /// PostgreSQL every row of every table, as JSON.
    pub async fn find(&self, needle: &str) -> Vec<String> {
        let mut found = Vec::new();
        match self.kind {
            DbKind::Sqlite => {
                let file = self.sqlite_file();
                let dir = file.parent().unwrap();
                for entry in std::fs::read_dir(dir).unwrap() {
                    let path = entry.unwrap().path();
                    let bytes = std::fs::read(&path).unwrap_or_default();
                    if bytes.windows(needle.len()).any(|w| w == needle.as_bytes()) {
                        found.push(path.display().to_string());
                    }
                }
            }
            DbKind::Postgres => {
                use sqlx::Connection;
                let mut conn = sqlx::PgConnection::connect(&self.url).await.unwrap();
                let tables: Vec<(String,)> = sqlx::query_as(
                    "SELECT table_name::text FROM information_schema.tables \
                     WHERE table_schema = 'public' AND table_type = 'BASE TABLE'",
                )
                .fetch_all(&mut conn)
                .await
                .unwrap();
                assert!(
                    tables.iter().any(|(t,)| t == "runs"),
                    "the dump should see the runs table: {tables:?}"
                );
                for (table,) in tables {
                    let rows: Vec<(String,)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
                        "SELECT row_to_json(t)::text FROM \"{table}\" t"
                    )))
                    .fetch_all(&mut conn)
                    .await
                    .unwrap();
                    for (row,) in rows {
                        if row.contains(needle) {
                            found.push(format!("{table}: {row}"));
                        }
                    }
                }
                let _ = conn.close().await;
            }
        }
        found
    }

    /// Number of rows of `table` (both databases).
    pub async fn count(&self, table: &str) -> i64 {
        let sql = format!("SELECT COUNT(*) FROM {table}");
        match self.kind {
            DbKind::Sqlite => {
                use sqlx::Connection;
                let mut conn = sqlx::SqliteConnection::connect(&self.url).await.unwrap();
                let (n,): (i64,) = sqlx::query_as(sqlx::AssertSqlSafe(sql))
                    .fetch_one(&mut conn)
                    .await
                    .unwrap();
                let _ = conn.close().await;
                n
            }
            DbKind::Postgres => {
                use sqlx::Connection;
                let mut conn = sqlx::PgConnection::connect(&self.url).await.unwrap();
                let (n,): (i64,) = sqlx::query_as(sqlx::AssertSqlSafe(sql))
                    .fetch_one(&mut conn)
                    .await
                    .unwrap();
                let _ = conn.close().await;
                n
            }
        }
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let Some(temp) = self.temp.take() else {
            return;
        };
        if std::thread::panicking() && self.kind == DbKind::Sqlite {
            eprintln!("kept the test database {}", self.url);
            return;
        }
        // Dropping happens inside the test's runtime; removing needs one of
        // its own (a PostgreSQL database is dropped with a connection).
        let _ = std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(temp.remove());
        })
        .join();
    }
}

// ---------------------------------------------------------------------- sim

/// The simulated provider, in-process on `127.0.0.1:0`.
pub struct Sim {
    /// The running simulator.
    pub handle: SimHandle,
}

impl Sim {
    /// A simulator with `latency` per call and a share `wrong_rate` of wrong
    /// arithmetic answers.
    pub async fn start(latency: Duration, wrong_rate: f64) -> Self {
        let mut config = SimConfig::default();
        config.latency.base = latency;
        config.replies.wrong_rate = wrong_rate;
        Self::with_config(config).await
    }

    /// A simulator with `config`.
    pub async fn with_config(config: SimConfig) -> Self {
        Self {
            handle: runnel_sim::Sim::start(config).await.unwrap(),
        }
    }

    /// Its base URL.
    pub fn url(&self) -> String {
        self.handle.url()
    }

    /// Applies a merge patch to its configuration.
    pub fn patch(&self, patch: Value) {
        self.handle.update(&patch).unwrap();
    }

    /// The reply configuration in force.
    pub fn replies(&self) -> ReplyConfig {
        self.handle.config().replies
    }
}

// ------------------------------------------------------------------- config

/// A `runnel.toml` for tests: a `sim` provider (OpenAI protocol) and a
/// `judge` provider (Anthropic protocol), both at the simulator, both reading
/// their key from [`KEY_ENV`] and unlimited on runnel's side.
#[derive(Clone, Debug)]
pub struct ConfigToml {
    sections: Vec<(String, Vec<String>)>,
}

impl ConfigToml {
    /// The base configuration for a simulator at `sim_url`.
    pub fn new(sim_url: &str) -> Self {
        let mut c = Self {
            sections: Vec::new(),
        };
        c.set("server", "progress_interval", "\"50ms\"");
        c.set("log", "filter", "\"info,sqlx=warn\"");
        // Fast retries, so a transient failure costs milliseconds.
        c.set("scheduler", "backoff_base", "\"50ms\"");
        c.set("scheduler", "backoff_max", "\"500ms\"");
        c.set("scheduler", "shutdown_grace", "\"2s\"");
        c.set("providers.sim", "kind", "\"openai\"");
        c.set("providers.sim", "base_url", &format!("\"{sim_url}/v1\""));
        c.set("providers.sim", "api_key_env", &format!("\"{KEY_ENV}\""));
        c.set("providers.sim", "unlimited", "true");
        c.set("providers.judge", "kind", "\"anthropic\"");
        c.set("providers.judge", "base_url", &format!("\"{sim_url}\""));
        c.set("providers.judge", "api_key_env", &format!("\"{KEY_ENV}\""));
        c.set("providers.judge", "unlimited", "true");
        c
    }

    /// Sets `key = value` (a TOML literal) in `[section]`, replacing any
    /// earlier value.
    pub fn set(&mut self, section: &str, key: &str, value: &str) -> &mut Self {
        let line = format!("{key} = {value}");
        let prefix = format!("{key} = ");
        match self.sections.iter_mut().find(|(s, _)| s == section) {
            Some((_, lines)) => {
                lines.retain(|l| !l.starts_with(&prefix));
                lines.push(line);
            }
            None => self.sections.push((section.to_owned(), vec![line])),
        }
        self
    }

    /// The TOML text.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for (section, lines) in &self.sections {
            out.push_str(&format!("[{section}]\n"));
            for line in lines {
                out.push_str(line);
                out.push('\n');
            }
            out.push('\n');
        }
        out
    }
}

// ------------------------------------------------------------------- server

/// The `runnel` binary built by cargo for these tests.
pub fn runnel_bin() -> &'static str {
    env!("CARGO_BIN_EXE_runnel")
}

/// A `runnel` command run in `dir` with a clean, predictable environment:
/// the provider key planted, no `RUST_LOG`, no stray `RUNNEL_…` settings.
pub fn runnel_command(dir: &Path) -> Command {
    let mut cmd = Command::new(runnel_bin());
    cmd.current_dir(dir);
    for (name, _) in std::env::vars() {
        if (name.starts_with("RUNNEL_") && name != "RUNNEL_TEST_POSTGRES_URL") || name == "RUST_LOG"
        {
            cmd.env_remove(name);
        }
    }
    cmd.env(KEY_ENV, PROVIDER_KEY);
    cmd
}

/// Runs `cmd` to completion with captured output, killing it after `secs`
/// (a command that should have exited but serves instead fails the test).
pub async fn output(cmd: Command, secs: u64) -> std::process::Output {
    let mut cmd = tokio::process::Command::from(cmd);
    cmd.kill_on_drop(true).stdin(Stdio::null());
    let what = format!("{:?} to exit", cmd.as_std());
    within(secs, &what, cmd.output()).await.unwrap()
}

/// A free loopback port (bound and released; the server binds it next).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// What to start a server with.
#[derive(Clone, Debug)]
pub struct ServerSpec {
    /// The configuration file's text.
    pub config: String,
    /// `--database-url`.
    pub database_url: String,
    /// `--replica-id`, when given.
    pub replica_id: Option<String>,
    /// Extra environment variables for the child.
    pub env: Vec<(String, String)>,
}

impl ServerSpec {
    /// A spec for `config` on `db`.
    pub fn new(config: &ConfigToml, db: &TestDb) -> Self {
        Self {
            config: config.render(),
            database_url: db.url().to_owned(),
            replica_id: None,
            env: Vec::new(),
        }
    }
}

/// A running `runnel serve` child.
#[derive(Debug)]
pub struct Server {
    child: Option<Child>,
    /// `http://127.0.0.1:<port>`.
    pub base: String,
    /// The child's stderr (its log lines).
    pub log_path: PathBuf,
    /// The configuration file it was started with.
    pub config_path: PathBuf,
}

impl Server {
    /// Writes `<dir>/<label>.toml`, spawns `runnel serve` with stderr in
    /// `<dir>/<label>.log`, and waits (at most 60 s) for `/readyz`.
    pub async fn start(dir: &Path, label: &str, spec: &ServerSpec) -> Self {
        let config_path = dir.join(format!("{label}.toml"));
        std::fs::write(&config_path, &spec.config).unwrap();
        let log_path = dir.join(format!("{label}.log"));
        let port = free_port();
        let mut cmd = runnel_command(dir);
        cmd.arg("--config")
            .arg(&config_path)
            .arg("serve")
            .arg("--bind")
            .arg(format!("127.0.0.1:{port}"))
            .arg("--database-url")
            .arg(&spec.database_url);
        if let Some(id) = &spec.replica_id {
            cmd.arg("--replica-id").arg(id);
        }
        for (k, v) in &spec.env {
            cmd.env(k, v);
        }
        let log = std::fs::File::create(&log_path).unwrap();
        cmd.stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        let child = cmd.spawn().unwrap();
        let mut server = Self {
            child: Some(child),
            base: format!("http://127.0.0.1:{port}"),
            log_path,
            config_path,
        };
        server.wait_ready().await;
        server
    }

    /// Polls `/readyz` until it answers 200 (at most 60 s). Fails at once,
    /// with the log, when the child exits.
    async fn wait_ready(&mut self) {
        let client = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        let url = format!("{}/readyz", self.base);
        loop {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!(
                    "runnel serve exited during start-up ({status}):\n{}",
                    self.log()
                );
            }
            if let Ok(Ok(r)) =
                tokio::time::timeout(Duration::from_secs(2), client.get(&url).send()).await
                && r.status() == 200
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "runnel serve was not ready within 60s:\n{}",
                self.log()
            );
            // Readiness polling interval (not a synchronisation sleep: the
            // deadline above bounds it and every poll checks the real state).
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// A client for this server.
    pub fn api(&self) -> Api {
        Api::new(&self.base)
    }

    /// Everything the child wrote to stderr and stdout so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Sends SIGKILL (`kill -9`) and reaps the child.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            // std's kill is SIGKILL on Unix.
            child.kill().unwrap();
            let status = child.wait().unwrap();
            assert!(!status.success(), "killed server exited cleanly: {status}");
        }
    }

    /// Sends SIGTERM and waits (at most `secs`) for a clean exit.
    pub async fn terminate(&mut self, secs: u64) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("the server is running");
        let pid = child.id().to_string();
        let ok = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        assert!(ok.success());
        within(secs, "the server to exit after SIGTERM", async {
            loop {
                if let Some(status) = child.try_wait().unwrap() {
                    return status;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            let log = self.log();
            let tail: Vec<&str> = log.lines().rev().take(60).collect();
            eprintln!(
                "---- last lines of {} ----\n{}",
                self.log_path.display(),
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
    }
}

// ------------------------------------------------------------------- client

/// A response, read whole.
#[derive(Debug)]
pub struct Resp {
    /// Status code.
    pub status: u16,
    /// Headers.
    pub headers: reqwest::header::HeaderMap,
    /// Body bytes.
    pub body: Vec<u8>,
}

impl Resp {
    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as JSON (panics with the body when it is not).
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }

    /// A header's value.
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .map(|v| v.to_str().unwrap().to_owned())
    }

    /// Asserts the status, showing the body otherwise.
    pub fn expect(self, status: u16) -> Self {
        assert_eq!(
            self.status,
            status,
            "unexpected status; body: {}",
            self.text()
        );
        self
    }

    /// Asserts an RFC 9457 problem with `status`, and returns it.
    pub fn problem(&self, status: u16) -> Value {
        assert_eq!(
            self.status,
            status,
            "unexpected status; body: {}",
            self.text()
        );
        assert_eq!(
            self.header("content-type").as_deref(),
            Some("application/problem+json"),
            "{}",
            self.text()
        );
        let p = self.json();
        assert!(p["type"].is_string(), "problem without type: {p}");
        assert!(p["title"].is_string(), "problem without title: {p}");
        assert_eq!(p["status"], status, "problem status: {p}");
        assert!(
            p["detail"].as_str().is_some_and(|d| !d.is_empty()),
            "problem without detail: {p}"
        );
        p
    }
}

/// A client of one server's API.
#[derive(Clone, Debug)]
pub struct Api {
    http: reqwest::Client,
    /// `http://127.0.0.1:<port>`.
    pub base: String,
    token: Option<String>,
}

impl Api {
    /// A client for `base`.
    pub fn new(base: &str) -> Self {
        Self {
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(60))
                .build()
                .unwrap(),
            base: base.to_owned(),
            token: None,
        }
    }

    /// The same client sending `Authorization: Bearer <token>`.
    pub fn with_token(&self, token: &str) -> Self {
        Self {
            token: Some(token.to_owned()),
            ..self.clone()
        }
    }

    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let r = self.http.request(method, format!("{}{path}", self.base));
        match &self.token {
            Some(t) => r.bearer_auth(t),
            None => r,
        }
    }

    async fn send(r: reqwest::RequestBuilder) -> Resp {
        let response = within(60, "an API response", r.send()).await.unwrap();
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let body = within(60, "an API response body", response.bytes())
            .await
            .unwrap()
            .to_vec();
        Resp {
            status,
            headers,
            body,
        }
    }

    /// `GET path`.
    pub async fn get(&self, path: &str) -> Resp {
        Self::send(self.request(reqwest::Method::GET, path)).await
    }

    /// `DELETE path`.
    pub async fn delete(&self, path: &str) -> Resp {
        Self::send(self.request(reqwest::Method::DELETE, path)).await
    }

    /// `POST path` with a JSON body.
    pub async fn post(&self, path: &str, body: &Value) -> Resp {
        Self::send(self.request(reqwest::Method::POST, path).json(body)).await
    }

    /// `POST path` with raw bytes and an optional content type.
    pub async fn post_raw(&self, path: &str, content_type: Option<&str>, body: Vec<u8>) -> Resp {
        let mut r = self.request(reqwest::Method::POST, path).body(body);
        if let Some(ct) = content_type {
            r = r.header("content-type", ct);
        }
        Self::send(r).await
    }

    /// Any method, raw bytes and an optional content type.
    pub async fn raw(
        &self,
        method: reqwest::Method,
        path: &str,
        content_type: Option<&str>,
        body: Vec<u8>,
    ) -> Resp {
        let mut r = self.request(method, path).body(body);
        if let Some(ct) = content_type {
            r = r.header("content-type", ct);
        }
        Self::send(r).await
    }

    /// Creates a dataset; returns its id.
    pub async fn create_dataset(&self, name: &str, examples: &[Value]) -> String {
        let r = self
            .post("/v1/datasets", &json!({"name": name, "examples": examples}))
            .await
            .expect(201);
        let body = r.json();
        assert_eq!(body["example_count"], examples.len(), "{body}");
        body["id"].as_str().unwrap().to_owned()
    }

    /// Creates an experiment; returns its id.
    pub async fn create_experiment(&self, body: &Value) -> String {
        let r = self.post("/v1/experiments", body).await.expect(201);
        r.json()["id"].as_str().unwrap().to_owned()
    }

    /// `GET /v1/experiments/{id}`.
    pub async fn experiment(&self, id: &str) -> Value {
        self.get(&format!("/v1/experiments/{id}"))
            .await
            .expect(200)
            .json()
    }

    /// Every run, following `next_cursor` with pages of `limit`.
    pub async fn runs(&self, id: &str, limit: usize) -> Vec<Value> {
        let mut all = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let path = match &cursor {
                Some(c) => format!("/v1/experiments/{id}/runs?limit={limit}&cursor={c}"),
                None => format!("/v1/experiments/{id}/runs?limit={limit}"),
            };
            let page = self.get(&path).await.expect(200).json();
            let items = page["items"].as_array().unwrap();
            assert!(items.len() <= limit, "page larger than its limit");
            all.extend(items.iter().cloned());
            match page["next_cursor"].as_str() {
                Some(c) => {
                    assert!(!items.is_empty(), "a cursor after an empty page");
                    cursor = Some(c.to_owned());
                }
                None => return all,
            }
        }
    }

    /// `GET /v1/experiments/{id}/runs.jsonl`, parsed.
    pub async fn runs_jsonl(&self, id: &str) -> Vec<Value> {
        let r = self
            .get(&format!("/v1/experiments/{id}/runs.jsonl"))
            .await
            .expect(200);
        assert_eq!(
            r.header("content-type").as_deref(),
            Some("application/x-ndjson")
        );
        r.text()
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    /// Opens `GET /v1/experiments/{id}/events`.
    pub async fn events(&self, id: &str) -> Sse {
        let response = within(
            30,
            "the event stream to open",
            self.request(
                reqwest::Method::GET,
                &format!("/v1/experiments/{id}/events"),
            )
            .header("accept", "text/event-stream")
            .timeout(Duration::from_secs(600))
            .send(),
        )
        .await
        .unwrap();
        assert_eq!(response.status(), 200);
        let ct = response
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_owned());
        assert!(
            ct.as_deref()
                .is_some_and(|c| c.starts_with("text/event-stream")),
            "{ct:?}"
        );
        Sse {
            stream: response
                .bytes_stream()
                .map(|c| c.map(|b| b.to_vec()))
                .boxed(),
            buf: Vec::new(),
        }
    }

    /// Follows the event stream of `id` to its end (at most `secs`) and
    /// returns every event.
    pub async fn follow(&self, id: &str, secs: u64) -> Vec<SseEvent> {
        let mut sse = self.events(id).await;
        within(secs, "the event stream to end", sse.collect_all()).await
    }

    /// Datasets and experiments, as the API lists them (for "nothing
    /// changed" comparisons).
    pub async fn snapshot(&self) -> (Value, Value) {
        let datasets = self.get("/v1/datasets").await.expect(200).json();
        let mut experiments = self.get("/v1/experiments").await.expect(200).json();
        // `updated_at` and progress of a running experiment move on their own.
        for e in experiments.as_array_mut().unwrap() {
            let o = e.as_object_mut().unwrap();
            o.remove("updated_at");
            o.remove("progress");
            o.remove("status");
            o.remove("claimed_by");
        }
        (datasets, experiments)
    }
}

/// The status named by the last `status` event of a stream.
pub fn final_status(events: &[SseEvent]) -> String {
    events
        .iter()
        .rev()
        .find(|e| e.event == "status")
        .and_then(|e| e.data["status"].as_str())
        .unwrap_or_else(|| panic!("no status event in {events:?}"))
        .to_owned()
}

/// One server-sent event.
#[derive(Clone, Debug)]
pub struct SseEvent {
    /// `event:` (empty when absent).
    pub event: String,
    /// `data:` lines joined, parsed as JSON.
    pub data: Value,
}

/// An SSE reader over a response body.
pub struct Sse {
    stream: BoxStream<'static, reqwest::Result<Vec<u8>>>,
    buf: Vec<u8>,
}

impl Sse {
    /// The next event, `None` when the stream ended. Comments (keep-alives)
    /// are skipped.
    pub async fn next(&mut self) -> Option<SseEvent> {
        loop {
            if let Some(block) = self.take_block() {
                if let Some(event) = parse_block(&block) {
                    return Some(event);
                }
                continue;
            }
            match self.stream.next().await {
                Some(Ok(chunk)) => self.buf.extend_from_slice(&chunk),
                Some(Err(e)) => panic!("event stream failed: {e}"),
                None => return None,
            }
        }
    }

    /// Every remaining event.
    pub async fn collect_all(&mut self) -> Vec<SseEvent> {
        let mut out = Vec::new();
        while let Some(e) = self.next().await {
            out.push(e);
        }
        out
    }

    /// Waits for the next event named `name`, returning it and the events
    /// skipped before it; panics if the stream ends first.
    pub async fn until(&mut self, name: &str) -> (SseEvent, Vec<SseEvent>) {
        let mut skipped = Vec::new();
        loop {
            match self.next().await {
                Some(e) if e.event == name => return (e, skipped),
                Some(e) => skipped.push(e),
                None => panic!("the event stream ended before a `{name}` event: {skipped:?}"),
            }
        }
    }

    fn take_block(&mut self) -> Option<String> {
        let text = &self.buf;
        let at = text.windows(2).position(|w| w == b"\n\n")?;
        let block = String::from_utf8(text[..at].to_vec()).unwrap();
        self.buf.drain(..at + 2);
        Some(block)
    }
}

fn parse_block(block: &str) -> Option<SseEvent> {
    let mut event = String::new();
    let mut data: Vec<&str> = Vec::new();
    for line in block.lines() {
        if line.starts_with(':') {
            continue;
        }
        let (field, value) = line.split_once(':').unwrap_or((line, ""));
        let value = value.strip_prefix(' ').unwrap_or(value);
        match field {
            "event" => event = value.to_owned(),
            "data" => data.push(value),
            _ => {}
        }
    }
    if event.is_empty() && data.is_empty() {
        return None;
    }
    let data = data.join("\n");
    let data = serde_json::from_str(&data)
        .unwrap_or_else(|e| panic!("event `{event}` carries no JSON ({e}): {data}"));
    Some(SseEvent { event, data })
}

/// RFC 7386 merge of `patch` into `target`.
pub fn merge(target: &mut Value, patch: Value) {
    match (target, patch) {
        (Value::Object(t), Value::Object(p)) => {
            for (k, v) in p {
                merge(t.entry(k).or_insert(Value::Null), v);
            }
        }
        (t, p) => *t = p,
    }
}

/// `base` with `patch` merged in.
pub fn merged(mut base: Value, patch: Value) -> Value {
    merge(&mut base, patch);
    base
}

// -------------------------------------------------------- the sim's answers

/// The distinct example ids of `runs`, in insertion order of the examples
/// (example ids grow with insertion order: see the migrations).
pub fn example_ids(runs: &[Value]) -> Vec<String> {
    let mut ids: Vec<i64> = runs
        .iter()
        .map(|r| r["example_id"].as_str().unwrap().parse().unwrap())
        .collect();
    ids.sort_unstable();
    ids.dedup();
    ids.into_iter().map(|i| i.to_string()).collect()
}

/// `n` arithmetic examples `{"input": {"a", "b"}, "expected": a + b}`.
pub fn arithmetic_examples(n: usize) -> Vec<Value> {
    (0..n)
        .map(|i| {
            let a = (i * 37 + 11) % 90;
            let b = (i * 53 + 7) % 70;
            json!({"input": {"a": a, "b": b}, "expected": a + b, "metadata": {"i": i}})
        })
        .collect()
}

/// The task prompt template for [`arithmetic_examples`].
pub const TASK_PROMPT: &str = "What is {{input.a}} + {{input.b}}?";
/// The label judge's prompt template.
pub const JUDGE_PROMPT: &str =
    "Expected {{expected}}; got {{output}}. Answer CORRECT or INCORRECT.";
/// The score judge's prompt template.
pub const SCORE_PROMPT: &str =
    "Expected: {{expected}}\nGot: {{output}}\nRate the answer on a scale from 1 to 10.";

/// The task of an arithmetic experiment through the `sim` provider.
pub fn arithmetic_task(stream: bool) -> Value {
    json!({
        "provider": "sim",
        "model": "sim-small",
        "messages": [{"role": "user", "content": TASK_PROMPT}],
        "params": {"temperature": 0},
        "timeout_s": 30,
        "stream": stream
    })
}

/// A label judge through the `judge` provider (Anthropic protocol).
pub fn label_judge(name: &str) -> Value {
    json!({
        "name": name,
        "provider": "judge",
        "model": "sim-judge",
        "messages": [{"role": "user", "content": JUDGE_PROMPT}],
        "labels": ["CORRECT", "INCORRECT"],
        "timeout_s": 30
    })
}

/// A score judge through the `sim` provider (OpenAI protocol).
pub fn score_judge(name: &str) -> Value {
    json!({
        "name": name,
        "provider": "sim",
        "model": "sim-judge",
        "messages": [
            {"role": "system", "content": "You grade arithmetic."},
            {"role": "user", "content": SCORE_PROMPT}
        ],
        "timeout_s": 30
    })
}

/// What the simulator answers to the task prompt of `a + b`.
pub fn predicted_output(a: u64, b: u64, replies: &ReplyConfig) -> String {
    runnel_sim::reply(&format!("What is {a} + {b}?"), None, replies).text
}

/// Runs keyed by `(example_id, repetition)`; panics when a key appears twice.
pub fn by_key(runs: &[Value]) -> std::collections::BTreeMap<(String, u64), Value> {
    let mut map = std::collections::BTreeMap::new();
    for r in runs {
        let key = (
            r["example_id"].as_str().unwrap().to_owned(),
            r["repetition"].as_u64().unwrap(),
        );
        assert!(
            map.insert(key.clone(), r.clone()).is_none(),
            "run {key:?} appears twice"
        );
    }
    map
}
