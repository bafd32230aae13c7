//! Shared by `cargo xtask bench` and `cargo xtask chaos`: building the
//! release binary, running the simulated provider and `runnel serve` as
//! separate processes on 127.0.0.1, killing and restarting them, and a small
//! client of the HTTP API.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

/// The binaries under test.
#[derive(Clone, Debug)]
pub(crate) struct Bin {
    /// The release `runnel` binary.
    pub(crate) runnel: PathBuf,
}

/// Builds `runnel` in release mode and returns its path.
pub(crate) fn build() -> Result<Bin> {
    let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args([
            "build",
            "--release",
            "--quiet",
            "-p",
            "runnel-server",
            "--bin",
            "runnel",
        ])
        .status()
        .context("building runnel")?;
    if !status.success() {
        bail!("building runnel failed ({status})");
    }
    let target = std::env::var("CARGO_TARGET_DIR")
        .map_or_else(|_| workspace_root().join("target"), PathBuf::from);
    let runnel = target.join("release").join("runnel");
    if !runnel.exists() {
        bail!("built runnel is not at {}", runnel.display());
    }
    Ok(Bin { runnel })
}

/// The workspace root (xtask's parent).
pub(crate) fn workspace_root() -> PathBuf {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest
        .parent()
        .map_or(manifest.clone(), Path::to_path_buf)
}

/// A free TCP port on 127.0.0.1.
pub(crate) fn free_port() -> Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

/// A fresh scratch directory under `target/bench-work/`.
pub(crate) fn scratch(name: &str) -> Result<PathBuf> {
    let dir = workspace_root()
        .join("target")
        .join("bench-work")
        .join(format!("{name}-{}", std::process::id()));
    if dir.exists() {
        std::fs::remove_dir_all(&dir)?;
    }
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

async fn wait_http_ok(
    client: &reqwest::Client,
    url: &str,
    deadline: Duration,
    child: &mut Child,
) -> Result<()> {
    let until = Instant::now() + deadline;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            bail!("the process exited ({status}) before {url} answered");
        }
        if let Ok(r) = client.get(url).send().await
            && r.status().is_success()
        {
            return Ok(());
        }
        if Instant::now() > until {
            bail!("{url} did not answer within {deadline:?}");
        }
        // Polling a readiness endpoint: the only way to learn a child
        // process is ready, bounded by the deadline above.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Peak resident set size of a process since it started (`VmHWM`), in bytes
/// (Linux).
pub(crate) fn peak_rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// The simulated provider as a child process (`runnel sim`).
pub(crate) struct SimProcess {
    child: Child,
    /// `http://127.0.0.1:PORT`.
    pub(crate) url: String,
    client: reqwest::Client,
}

impl SimProcess {
    /// Starts `runnel sim` with `config` (a `SimConfig` as JSON).
    pub(crate) async fn start(bin: &Bin, dir: &Path, config: Value) -> Result<Self> {
        let port = free_port()?;
        let path = dir.join(format!("sim-{port}.json"));
        std::fs::write(&path, serde_json::to_vec_pretty(&config)?)?;
        let log = std::fs::File::create(dir.join(format!("sim-{port}.log")))?;
        let mut child = Command::new(&bin.runnel)
            .arg("sim")
            .arg("--config")
            .arg(&path)
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("starting runnel sim")?;
        let url = format!("http://127.0.0.1:{port}");
        let client = reqwest::Client::new();
        wait_http_ok(
            &client,
            &format!("{url}/healthz"),
            Duration::from_secs(30),
            &mut child,
        )
        .await?;
        Ok(Self { child, url, client })
    }

    /// `GET /stats`, typed.
    pub(crate) async fn snapshot(&self) -> Result<runnel_sim::StatsSnapshot> {
        Ok(self.stats().await?.0)
    }

    /// `GET /stats`: the typed snapshot, and `repeated_successes` (successful
    /// replies to a request body already answered successfully), which
    /// newer simulators add: `None` from one that does not report it.
    pub(crate) async fn stats(&self) -> Result<(runnel_sim::StatsSnapshot, Option<u64>)> {
        let r = self
            .client
            .get(format!("{}/stats", self.url))
            .send()
            .await?
            .error_for_status()?;
        let value: Value = r.json().await?;
        let repeated = value.get("repeated_successes").and_then(Value::as_u64);
        let snapshot = serde_json::from_value(value).context("the simulator's /stats")?;
        Ok((snapshot, repeated))
    }

    /// Duplicate provider calls of everything this simulator served:
    /// its successful replies against `results` recorded, bounded by
    /// `bound` calls in flight at the faults (the database count is the
    /// caller's to fill in).
    pub(crate) async fn duplicates(
        &self,
        results: u64,
        bound: u64,
        unique_bodies: bool,
    ) -> Result<crate::duplicates::Duplicates> {
        let (stats, repeated_successes) = self.stats().await?;
        Ok(crate::duplicates::Duplicates {
            successful_calls: stats.classes.ok,
            results,
            database: 0,
            repeated_successes,
            unique_bodies,
            bound,
        })
    }

    /// `POST /admin/config` with a partial config.
    pub(crate) async fn update(&self, patch: Value) -> Result<()> {
        let r = self
            .client
            .post(format!("{}/admin/config", self.url))
            .json(&patch)
            .send()
            .await?;
        if !r.status().is_success() {
            bail!(
                "sim admin update failed: {}",
                r.text().await.unwrap_or_default()
            );
        }
        Ok(())
    }
}

impl Drop for SimProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `runnel serve` as a child process.
pub(crate) struct ServerProcess {
    child: Child,
    bin: Bin,
    dir: PathBuf,
    name: String,
    port: u16,
    env: Vec<(String, String)>,
    /// `http://127.0.0.1:PORT`.
    pub(crate) url: String,
    starts: u32,
}

impl ServerProcess {
    /// Writes `toml` to `<dir>/<name>.toml` and starts `runnel serve` with it.
    pub(crate) async fn start(
        bin: &Bin,
        dir: &Path,
        name: &str,
        toml: &str,
        env: &[(&str, &str)],
    ) -> Result<Self> {
        let port = free_port()?;
        std::fs::write(dir.join(format!("{name}.toml")), toml)?;
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let child = spawn_server(bin, dir, name, port, &env, 0)?;
        let mut server = Self {
            child,
            bin: bin.clone(),
            dir: dir.to_path_buf(),
            name: name.to_owned(),
            port,
            env,
            url: format!("http://127.0.0.1:{port}"),
            starts: 1,
        };
        server.wait_ready().await?;
        Ok(server)
    }

    async fn wait_ready(&mut self) -> Result<()> {
        let client = reqwest::Client::new();
        wait_http_ok(
            &client,
            &format!("{}/readyz", self.url),
            Duration::from_secs(60),
            &mut self.child,
        )
        .await
        .with_context(|| {
            format!(
                "server {} (log in {})",
                self.name,
                self.log_path().display()
            )
        })
    }

    /// Where the current process writes its log.
    pub(crate) fn log_path(&self) -> PathBuf {
        self.dir
            .join(format!("{}-{}.log", self.name, self.starts - 1))
    }

    /// The process id.
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Peak resident set size of the current process so far, in bytes.
    pub(crate) fn peak_rss(&self) -> Option<u64> {
        peak_rss_bytes(self.child.id())
    }

    /// The base URL of the API.
    pub(crate) fn api(&self) -> Api {
        Api::new(&self.url)
    }

    /// Whether the current process is still running (it has not exited).
    pub(crate) fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// kill -9.
    pub(crate) fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts the process again (same config, port and database).
    pub(crate) async fn restart(&mut self) -> Result<()> {
        self.child = spawn_server(
            &self.bin,
            &self.dir,
            &self.name,
            self.port,
            &self.env,
            self.starts,
        )?;
        self.starts += 1;
        self.wait_ready().await
    }
}

fn spawn_server(
    bin: &Bin,
    dir: &Path,
    name: &str,
    port: u16,
    env: &[(String, String)],
    n: u32,
) -> Result<Child> {
    let log = std::fs::File::create(dir.join(format!("{name}-{n}.log")))?;
    let mut cmd = Command::new(&bin.runnel);
    cmd.arg("--config")
        .arg(dir.join(format!("{name}.toml")))
        .arg("serve")
        .arg("--bind")
        .arg(format!("127.0.0.1:{port}"))
        .current_dir(dir)
        .env("RUST_LOG", "info,sqlx=warn")
        .stdout(Stdio::null())
        .stderr(log);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.spawn().context("starting runnel serve")
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A `runnel.toml`, built key by key: `[section] key = value`, values
/// written as JSON scalars (a JSON string or number is valid TOML).
#[derive(Clone, Debug, Default)]
pub(crate) struct ServerToml {
    sections: Vec<(String, Vec<(String, Value)>)>,
}

impl ServerToml {
    /// A configuration on the database at `url`.
    pub(crate) fn new(database_url: &str) -> Self {
        Self::default().set("database", "url", database_url)
    }

    /// Sets `key` of `[section]` (a dotted section such as `providers.sim`
    /// is a nested table).
    pub(crate) fn set(mut self, section: &str, key: &str, value: impl Into<Value>) -> Self {
        let value = value.into();
        match self.sections.iter_mut().find(|(name, _)| name == section) {
            Some((_, keys)) => match keys.iter_mut().find(|(k, _)| k == key) {
                Some((_, v)) => *v = value,
                None => keys.push((key.to_owned(), value)),
            },
            None => self
                .sections
                .push((section.to_owned(), vec![(key.to_owned(), value)])),
        }
        self
    }

    /// Adds `[providers.NAME]`: an OpenAI-compatible entry on the simulator
    /// at `sim_url`, with `limits` (`rpm`, `initial_rps`, `unlimited`, …).
    pub(crate) fn provider(mut self, name: &str, sim_url: &str, limits: &[(&str, Value)]) -> Self {
        let section = format!("providers.{name}");
        self = self.set(&section, "kind", "openai_compatible").set(
            &section,
            "base_url",
            format!("{sim_url}/v1"),
        );
        for (key, value) in limits {
            self = self.set(&section, key, value.clone());
        }
        self
    }

    /// The TOML text.
    pub(crate) fn render(&self) -> String {
        let mut out = String::new();
        for (section, keys) in &self.sections {
            out.push_str(&format!("[{section}]\n"));
            for (key, value) in keys {
                out.push_str(&format!("{key} = {value}\n"));
            }
            out.push('\n');
        }
        out
    }
}

/// Creates a fresh PostgreSQL database; returns its URL.
pub(crate) fn pg_create(name: &str) -> Result<String> {
    let base = std::env::var("RUNNEL_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
    let db = format!("runnel_bench_{}_{}", name, std::process::id());
    pg_exec(&base, &format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"))?;
    pg_exec(&base, &format!("CREATE DATABASE {db}"))?;
    let (prefix, _) = base
        .rsplit_once('/')
        .context("RUNNEL_TEST_POSTGRES_URL has no database part")?;
    Ok(format!("{prefix}/{db}"))
}

/// Drops a database made by [`pg_create`].
pub(crate) fn pg_drop(url: &str) {
    if let Some((prefix, db)) = url.rsplit_once('/') {
        let _ = pg_exec(
            &format!("{prefix}/postgres"),
            &format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"),
        );
    }
}

/// `psql` on `url`, set to stop at the first error and print bare,
/// unaligned rows (no psqlrc, no headers).
pub(crate) fn psql(url: &str) -> Command {
    let mut cmd = Command::new("psql");
    cmd.args([url, "-v", "ON_ERROR_STOP=1", "-X", "-q", "-A", "-t"]);
    cmd
}

/// Runs one SQL statement with `psql`.
pub(crate) fn pg_exec(url: &str, sql: &str) -> Result<String> {
    let out = psql(url)
        .args(["-c", sql])
        .output()
        .context("running psql")?;
    if !out.status.success() {
        bail!("psql failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// A client of the runnel HTTP API.
#[derive(Clone)]
pub(crate) struct Api {
    client: reqwest::Client,
    /// Base URL.
    pub(crate) base: String,
}

impl Api {
    /// A client of the server at `base`.
    pub(crate) fn new(base: &str) -> Self {
        Self {
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(120))
                .build()
                .unwrap_or_default(),
            base: base.trim_end_matches('/').to_owned(),
        }
    }

    async fn json(&self, r: reqwest::RequestBuilder) -> Result<(u16, Value)> {
        let r = r.send().await?;
        let status = r.status().as_u16();
        let text = r.text().await?;
        let value = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        Ok((status, value))
    }

    async fn ok(&self, r: reqwest::RequestBuilder, what: &str) -> Result<Value> {
        let (status, value) = self.json(r).await?;
        if !(200..300).contains(&status) {
            bail!("{what} failed with {status}: {value}");
        }
        Ok(value)
    }

    /// Creates a dataset from example objects, in NDJSON chunks of 50,000.
    pub(crate) async fn dataset(
        &self,
        name: &str,
        examples: impl Iterator<Item = Value>,
    ) -> Result<String> {
        let mut id: Option<String> = None;
        let mut chunk = String::new();
        let mut count = 0usize;
        for e in examples {
            chunk.push_str(&e.to_string());
            chunk.push('\n');
            count += 1;
            if count.is_multiple_of(50_000) {
                let body = std::mem::take(&mut chunk);
                id = Some(self.ndjson(name, id.as_deref(), body).await?);
            }
        }
        if !chunk.is_empty() || id.is_none() {
            let body = std::mem::take(&mut chunk);
            id = Some(self.ndjson(name, id.as_deref(), body).await?);
        }
        id.context("no dataset")
    }

    async fn ndjson(&self, name: &str, id: Option<&str>, body: String) -> Result<String> {
        let request = match id {
            None => self
                .client
                .post(format!("{}/v1/datasets?name={name}", self.base)),
            Some(id) => self
                .client
                .post(format!("{}/v1/datasets/{id}/examples", self.base)),
        }
        .header("content-type", "application/x-ndjson")
        .body(body);
        let value = self.ok(request, "creating a dataset").await?;
        Ok(match id {
            Some(id) => id.to_owned(),
            None => value["id"].as_str().context("dataset id")?.to_owned(),
        })
    }

    /// Creates an experiment; returns its id.
    pub(crate) async fn experiment(&self, body: &Value) -> Result<String> {
        let value = self
            .ok(
                self.client
                    .post(format!("{}/v1/experiments", self.base))
                    .json(body),
                "creating an experiment",
            )
            .await?;
        Ok(value["id"].as_str().context("experiment id")?.to_owned())
    }

    /// Reads an experiment.
    pub(crate) async fn get(&self, id: &str) -> Result<Value> {
        self.ok(
            self.client
                .get(format!("{}/v1/experiments/{id}", self.base)),
            "reading an experiment",
        )
        .await
    }

    /// Runs of experiment `id` recorded as succeeded (its progress).
    pub(crate) async fn runs_succeeded(&self, id: &str) -> Result<u64> {
        Ok(self.get(id).await?["progress"]["runs_succeeded"]
            .as_u64()
            .unwrap_or(0))
    }

    /// Waits until experiment `id` has recorded at least `at_least`
    /// successful runs, reading its progress every `poll`, at most `within`.
    pub(crate) async fn wait_runs(
        &self,
        id: &str,
        at_least: u64,
        within: Duration,
        poll: Duration,
    ) -> Result<()> {
        let until = Instant::now() + within;
        while self.runs_succeeded(id).await? < at_least {
            if Instant::now() > until {
                bail!("experiment {id} did not record {at_least} runs within {within:?}");
            }
            // Polling the API: the only view of the server's progress.
            tokio::time::sleep(poll).await;
        }
        Ok(())
    }

    /// Stop; returns the HTTP status and body.
    pub(crate) async fn stop(&self, id: &str) -> Result<(u16, Value)> {
        self.json(
            self.client
                .post(format!("{}/v1/experiments/{id}/stop", self.base)),
        )
        .await
    }

    /// Resume; returns the HTTP status and body.
    pub(crate) async fn resume(&self, id: &str) -> Result<(u16, Value)> {
        self.json(
            self.client
                .post(format!("{}/v1/experiments/{id}/resume", self.base)),
        )
        .await
    }

    /// Every run (from `runs.jsonl`).
    pub(crate) async fn runs(&self, id: &str) -> Result<Vec<Value>> {
        let text = self
            .client
            .get(format!("{}/v1/experiments/{id}/runs.jsonl", self.base))
            .send()
            .await?
            .error_for_status()?
            .text()
            .await?;
        text.lines()
            .map(|l| serde_json::from_str(l).context("a runs.jsonl line"))
            .collect()
    }
}

/// The experiment body of an arithmetic task on provider `task_provider`,
/// with an evaluator on `judge` when given.
pub(crate) fn experiment_body(
    dataset: &str,
    name: &str,
    task_provider: &str,
    judge: Option<&str>,
    max_concurrency: Option<u32>,
) -> Value {
    let mut body = json!({
        "dataset_id": dataset,
        "name": name,
        "repetitions": 1,
        "task": {
            "provider": task_provider,
            "model": "task-model",
            "messages": [{"role": "user", "content": "Question: {{input.question}}"}],
            "params": {"max_tokens": 16}
        },
    });
    if let Some(judge) = judge {
        body["evaluators"] = json!([{
            "name": "correct",
            "provider": judge,
            "model": "judge-model",
            "messages": [{"role": "user", "content": "Expected {{expected}}; got {{output}}. Answer CORRECT or INCORRECT."}],
            "labels": ["CORRECT", "INCORRECT"]
        }]);
    }
    if let Some(c) = max_concurrency {
        body["max_concurrency"] = json!(c);
    }
    body
}

/// Arithmetic examples with expected answers.
pub(crate) fn arithmetic(n: usize) -> impl Iterator<Item = Value> {
    (0..n).map(|i| {
        let a = (i * 7919) % 1000;
        let b = (i * 104_729) % 997;
        json!({"input": {"question": format!("What is {a} + {b}?")}, "expected": (a + b).to_string()})
    })
}
