//! `cargo xtask chaos [--quick] [TEST…]`: the reliability and security suite
//! (issue 8). Each test starts the simulated provider and `runnel serve` as
//! separate processes on 127.0.0.1, injects faults (kill -9, database
//! restarts and locks, provider outages and fault storms, hostile requests),
//! and then checks the invariants by reading the database directly (`psql`,
//! `sqlite3`) and through the API.
//!
//! | test | file | what it breaks |
//! |---|---|---|
//! | `replicas` | `replicas.rs` | 3 PostgreSQL replicas killed and restarted at random under client load |
//! | `database` | `database.rs` | PostgreSQL stopped mid-run; a SQLite file locked by another process |
//! | `provider` | `provider.rs` | provider outages (breaker, give-up) and 529 / reset / malformed storms |
//! | `hostile` | `hostile.rs` | random and malformed requests to every endpoint; bad dataset files |
//! | `security` | `security.rs` | a planted provider key, API keys, public binds, SQL injection strings |
//! | `storm` | `storm.rs` | 1,000 concurrent stop/resume calls across replicas, one replica killed |
//!
//! Every test prints the faults it injected, the requests it made, the rows
//! it checked, the duplicates and losses it found, and PASS or FAIL; the
//! command fails when any test does. A JSON copy of each report goes to
//! `target/chaos/<test>.json`.

mod client;
mod database;
pub(crate) mod db;
mod hostile;
mod provider;
mod replicas;
mod rng;
mod security;
mod storm;

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

use crate::duplicates::Duplicates;
use crate::harness::{self, Bin};

/// One test of the suite.
pub(crate) struct Test {
    /// Its name on the command line.
    pub(crate) name: &'static str,
    /// One line saying what it does.
    pub(crate) title: &'static str,
    /// Needs the local PostgreSQL.
    postgres: bool,
}

/// Every test, in the order they run.
pub(crate) const TESTS: &[Test] = &[
    Test {
        name: "hostile",
        title: "hostile input: random, malformed and oversized requests to every endpoint",
        postgres: false,
    },
    Test {
        name: "security",
        title: "security: planted provider key, API keys, public bind, SQL injection",
        postgres: true,
    },
    Test {
        name: "provider",
        title: "provider faults: outage and breaker, give-up and resume, 529/reset/malformed storms",
        postgres: false,
    },
    Test {
        name: "database",
        title: "database faults: PostgreSQL stopped mid-run, SQLite locked by another process",
        postgres: true,
    },
    Test {
        name: "storm",
        title: "stop/resume storm: 1,000 concurrent toggles across 3 replicas",
        postgres: true,
    },
    Test {
        name: "replicas",
        title: "replica chaos: 3 PostgreSQL replicas killed and restarted under client load",
        postgres: true,
    },
];

/// Options of `cargo xtask chaos`.
#[derive(Clone, Debug)]
pub(crate) struct Options {
    /// CI sizes.
    pub(crate) quick: bool,
    /// Seed of every random choice (printed, so a failing run can be replayed).
    pub(crate) seed: Option<u64>,
    /// Which tests (empty: all).
    pub(crate) tests: Vec<String>,
}

/// What one test run works with.
pub(crate) struct Ctx {
    /// The release binary.
    pub(crate) bin: Bin,
    /// CI sizes.
    pub(crate) quick: bool,
    /// This test's seed.
    pub(crate) seed: u64,
    /// A fresh directory for this test's files (configs, logs, SQLite).
    pub(crate) dir: PathBuf,
}

impl Ctx {
    /// `quick` or `full`.
    pub(crate) fn pick<T>(&self, quick: T, full: T) -> T {
        if self.quick { quick } else { full }
    }

    /// A subdirectory of this test's directory.
    pub(crate) fn subdir(&self, name: &str) -> Result<PathBuf> {
        let dir = self.dir.join(name);
        std::fs::create_dir_all(&dir)?;
        Ok(dir)
    }
}

/// The result of one test: the figures every test reports, the invariants
/// that failed, and figures of its own.
#[derive(Debug, Default)]
pub(crate) struct Report {
    /// Faults injected (kills, restarts, locks, outages, hostile requests…).
    pub(crate) faults: u64,
    /// What the faults were, in words.
    pub(crate) fault_kinds: Vec<String>,
    /// HTTP requests made to runnel.
    pub(crate) requests: u64,
    /// Calls the simulated provider received.
    pub(crate) provider_calls: u64,
    /// Database rows read to check the invariants.
    pub(crate) rows_checked: u64,
    /// Duplicate runs or annotations found in the database.
    pub(crate) duplicates: u64,
    /// Duplicate provider calls (successful calls − results recorded), over
    /// every simulator of the test that served experiments.
    pub(crate) provider_duplicates: Option<Duplicates>,
    /// Example × repetition without a run, or run × evaluator without an
    /// annotation, when the test ended.
    pub(crate) losses: u64,
    /// Invariants that did not hold.
    pub(crate) violations: Vec<String>,
    /// Further figures, in order.
    pub(crate) figures: Vec<(String, Value)>,
}

impl Report {
    /// Records a violation unless `ok`.
    pub(crate) fn check(&mut self, ok: bool, what: impl FnOnce() -> String) {
        if !ok {
            let what = what();
            eprintln!("chaos:   VIOLATION: {what}");
            self.violations.push(what);
        }
    }

    /// Adds a figure.
    pub(crate) fn figure(&mut self, name: &str, value: impl Into<Value>) {
        self.figures.push((name.to_owned(), value.into()));
    }

    /// Adds `n` faults of `kind`.
    pub(crate) fn fault(&mut self, kind: &str, n: u64) {
        self.faults += n;
        self.fault_kinds.push(format!("{kind} ×{n}"));
    }

    /// Adds what [`db::Invariants`] found.
    pub(crate) fn absorb(&mut self, what: &str, inv: &db::Invariants) {
        self.rows_checked += inv.rows;
        self.duplicates += inv.duplicate_runs + inv.duplicate_annotations;
        self.losses += inv.missing_runs + inv.missing_annotations;
        if inv.duplicate_runs + inv.duplicate_annotations > 0 {
            self.violations.push(format!(
                "{what}: {} duplicate runs, {} duplicate annotations",
                inv.duplicate_runs, inv.duplicate_annotations
            ));
        }
        if inv.missing_runs + inv.missing_annotations > 0 {
            self.violations.push(format!(
                "{what}: {} example × repetition without a successful run, {} run × evaluator \
                 without a successful annotation",
                inv.missing_runs, inv.missing_annotations
            ));
        }
    }

    /// Counts the duplicate provider calls of `sim` against the rows `inv`
    /// read, bounded by `bound` calls in flight at the faults (`None`: a
    /// reading of the simulator failed, so the count is reported but not
    /// checked).
    pub(crate) async fn provider_duplicates(
        &mut self,
        what: &str,
        sim: &harness::SimProcess,
        inv: &db::Invariants,
        bound: Option<u64>,
    ) -> Result<()> {
        let mut d = sim
            .duplicates(inv.runs + inv.annotations, bound.unwrap_or(0), false)
            .await?;
        d.database = inv.duplicate_runs + inv.duplicate_annotations;
        if bound.is_some() {
            for v in d.violations(what) {
                self.check(false, || v);
            }
        } else {
            eprintln!(
                "chaos:   {what}: the simulator could not be read at a fault; duplicate provider calls not checked"
            );
        }
        self.figure(&format!("{what}: duplicate provider calls"), d.json());
        match &mut self.provider_duplicates {
            Some(total) => total.add(&d),
            None => self.provider_duplicates = Some(d),
        }
        Ok(())
    }

    fn passed(&self, error: &Option<anyhow::Error>) -> bool {
        error.is_none() && self.violations.is_empty() && self.duplicates == 0 && self.losses == 0
    }
}

/// Seconds as a rounded figure.
pub(crate) fn secs(d: Duration) -> f64 {
    (d.as_secs_f64() * 100.0).round() / 100.0
}

/// Runs the selected tests; returns whether all passed.
pub(crate) fn run(options: &Options) -> Result<bool> {
    let mut tests: Vec<&Test> = Vec::new();
    for name in &options.tests {
        match TESTS.iter().find(|t| t.name.eq_ignore_ascii_case(name)) {
            Some(t) => tests.push(t),
            None => bail!(
                "unknown chaos test `{name}` (known: {})",
                TESTS.iter().map(|t| t.name).collect::<Vec<_>>().join(", ")
            ),
        }
    }
    if tests.is_empty() {
        tests = TESTS.iter().collect();
    }
    if tests.iter().any(|t| t.postgres) {
        let url = crate::postgres::ensure_running()?;
        eprintln!("chaos: PostgreSQL at {url}");
    }
    for tool in ["psql", "sqlite3"] {
        if std::process::Command::new(tool)
            .arg("--version")
            .output()
            .is_err()
        {
            bail!("chaos needs `{tool}` on the PATH to read the databases directly");
        }
    }
    eprintln!("chaos: building the release runnel");
    let bin = harness::build()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let base_seed = options.seed.unwrap_or_else(rng::seed_from_time);
    eprintln!(
        "chaos: seed {base_seed} (replay with --seed {base_seed}); sizes: {}",
        if options.quick { "quick" } else { "full" }
    );
    let out_dir = harness::workspace_root().join("target").join("chaos");
    std::fs::create_dir_all(&out_dir)?;
    let mut rows = Vec::new();
    for (i, test) in tests.iter().enumerate() {
        let seed = base_seed.wrapping_add(i as u64 * 0x9E37_79B9);
        let dir = harness::scratch(&format!("chaos-{}", test.name))?;
        let ctx = Ctx {
            bin: bin.clone(),
            quick: options.quick,
            seed,
            dir: dir.clone(),
        };
        eprintln!("\n== {}: {}", test.name, test.title);
        let started = Instant::now();
        let mut report = Report::default();
        let result = runtime.block_on(run_test(test.name, &ctx, &mut report));
        let elapsed = started.elapsed();
        let error = result.err();
        let passed = report.passed(&error);
        print_report(test, &report, &error, passed, elapsed, &dir);
        let json = report_json(test, &report, &error, passed, elapsed, seed, options.quick);
        let path = out_dir.join(format!("{}.json", test.name));
        std::fs::write(&path, serde_json::to_vec_pretty(&json)?)?;
        if passed {
            // Keep the logs of a failed test for inspection.
            let _ = std::fs::remove_dir_all(&dir);
        }
        rows.push((test.name, report, passed, elapsed));
    }
    let mut table = String::new();
    let _ = writeln!(
        table,
        "\n{:<10} {:>8} {:>9} {:>9} {:>10} {:>15} {:>7}  result",
        "test", "faults", "requests", "rows", "duplicates", "provider dup.", "losses"
    );
    let mut all = true;
    for (name, r, passed, elapsed) in &rows {
        all &= passed;
        let _ = writeln!(
            table,
            "{:<10} {:>8} {:>9} {:>9} {:>10} {:>15} {:>7}  {} ({:.0} s)",
            name,
            r.faults,
            r.requests,
            r.rows_checked,
            r.duplicates,
            r.provider_duplicates
                .as_ref()
                .map_or("–".into(), |d| format!(
                    "{} (≤ {})",
                    d.provider(),
                    d.bound
                )),
            r.losses,
            if *passed { "PASS" } else { "FAIL" },
            elapsed.as_secs_f64()
        );
    }
    println!("{table}");
    println!(
        "chaos: {} (seed {base_seed}; reports in {})",
        if all { "all passed" } else { "FAILED" },
        out_dir.display()
    );
    Ok(all)
}

async fn run_test(name: &str, ctx: &Ctx, report: &mut Report) -> Result<()> {
    match name {
        "replicas" => replicas::run(ctx, report).await,
        "database" => database::run(ctx, report).await,
        "provider" => provider::run(ctx, report).await,
        "hostile" => hostile::run(ctx, report).await,
        "security" => security::run(ctx, report).await,
        "storm" => storm::run(ctx, report).await,
        other => bail!("no chaos test {other}"),
    }
}

fn print_report(
    test: &Test,
    r: &Report,
    error: &Option<anyhow::Error>,
    passed: bool,
    elapsed: Duration,
    dir: &std::path::Path,
) {
    let mut out = String::new();
    let _ = writeln!(out, "-- {} --", test.name);
    let _ = writeln!(
        out,
        "   faults injected: {} ({})",
        r.faults,
        r.fault_kinds.join(", ")
    );
    let _ = writeln!(
        out,
        "   requests made:   {} to runnel, {} provider calls",
        r.requests, r.provider_calls
    );
    let _ = writeln!(out, "   rows checked:    {}", r.rows_checked);
    let _ = writeln!(out, "   duplicates:      {} in the database", r.duplicates);
    if let Some(d) = &r.provider_duplicates {
        let _ = writeln!(
            out,
            "   provider dup.:   {} ({} successful provider calls − {} runs and annotations; \
             bound {} = calls in flight at the faults; simulator's repeated successes: {})",
            d.provider(),
            d.successful_calls,
            d.results,
            d.bound,
            d.repeated_successes
                .map_or("not reported".into(), |n| n.to_string())
        );
    }
    let _ = writeln!(out, "   losses:          {}", r.losses);
    for (name, value) in &r.figures {
        let value = match value {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        let _ = writeln!(out, "   {name}: {value}");
    }
    for v in &r.violations {
        let _ = writeln!(out, "   violation: {v}");
    }
    if let Some(e) = error {
        let _ = writeln!(out, "   error: {e:#}");
    }
    let _ = writeln!(
        out,
        "   {} in {:.1} s{}",
        if passed { "PASS" } else { "FAIL" },
        elapsed.as_secs_f64(),
        if passed {
            String::new()
        } else {
            format!(" (logs kept in {})", dir.display())
        }
    );
    println!("{out}");
}

fn report_json(
    test: &Test,
    r: &Report,
    error: &Option<anyhow::Error>,
    passed: bool,
    elapsed: Duration,
    seed: u64,
    quick: bool,
) -> Value {
    let figures: serde_json::Map<String, Value> = r.figures.iter().cloned().collect();
    json!({
        "test": test.name,
        "title": test.title,
        "date": chrono::Utc::now().to_rfc3339(),
        "quick": quick,
        "seed": seed,
        "passed": passed,
        "seconds": secs(elapsed),
        "faults": r.faults,
        "fault_kinds": r.fault_kinds,
        "requests": r.requests,
        "provider_calls": r.provider_calls,
        "rows_checked": r.rows_checked,
        "duplicates": r.duplicates,
        "provider_duplicates": r.provider_duplicates.as_ref().map(Duplicates::json),
        "losses": r.losses,
        "violations": r.violations,
        "error": error.as_ref().map(|e| format!("{e:#}")),
        "figures": figures,
    })
}

/// A PostgreSQL database made for one test, dropped at the end.
pub(crate) struct PgDb {
    /// Its URL.
    pub(crate) url: String,
}

impl PgDb {
    /// Creates a fresh database on the server of `RUNNEL_TEST_POSTGRES_URL`.
    pub(crate) fn create(name: &str) -> Result<Self> {
        Ok(Self {
            url: harness::pg_create(&format!("chaos_{name}"))?,
        })
    }
}

impl Drop for PgDb {
    fn drop(&mut self) {
        // CHAOS_KEEP_DB=1 keeps it for inspection.
        if std::env::var_os("CHAOS_KEEP_DB").is_some() {
            eprintln!("chaos: kept the database {}", self.url);
        } else {
            harness::pg_drop(&self.url);
        }
    }
}

/// The simulator's configuration for chaos tests: latency `base_ms` ±
/// `jitter_ms`, no limits, no faults.
pub(crate) fn sim_config(seed: u64, base_ms: u64, jitter_ms: u64) -> Value {
    json!({
        "seed": seed,
        "latency": { "base": format!("{base_ms}ms"), "jitter": format!("{jitter_ms}ms") },
    })
}

/// A server configuration on `database_url` with two providers at the
/// simulator (`task` and `judge`, OpenAI-compatible, unlimited on runnel's
/// side) and fast retries.
pub(crate) fn server_toml(database_url: &str, sim_url: &str) -> harness::ServerToml {
    harness::ServerToml::new(database_url)
        .provider("task", sim_url, &[("unlimited", json!(true))])
        .provider("judge", sim_url, &[("unlimited", json!(true))])
        .set("scheduler", "backoff_base", "100ms")
        .set("scheduler", "backoff_max", "1s")
        .set("scheduler", "shutdown_grace", "2s")
}

/// Adds `task` (OpenAI-compatible) and `judge` (Anthropic), both at the
/// simulator `sim_url`, unlimited on runnel's side, each sending the key
/// read from the environment variable `key_env`.
pub(crate) fn keyed_providers(
    toml: harness::ServerToml,
    sim_url: &str,
    key_env: &str,
) -> harness::ServerToml {
    toml.provider(
        "task",
        sim_url,
        &[("unlimited", json!(true)), ("api_key_env", json!(key_env))],
    )
    .set("providers.judge", "kind", "anthropic")
    .set("providers.judge", "base_url", sim_url)
    .set("providers.judge", "api_key_env", key_env)
    .set("providers.judge", "unlimited", true)
}

/// Polls experiment `id` until `done` says its view is final (at most
/// `within`); `done` returns an error to stop at once.
async fn poll_experiment(
    api: &harness::Api,
    id: &str,
    within: Duration,
    what: &str,
    done: impl Fn(&Value) -> Result<bool>,
) -> Result<Value> {
    let until = Instant::now() + within;
    loop {
        if let Ok(v) = api.get(id).await
            && done(&v)?
        {
            return Ok(v);
        }
        if Instant::now() > until {
            bail!("experiment {id} not {what} after {within:?}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Waits until experiment `id` leaves RUNNING (at most `within`); returns
/// its view.
pub(crate) async fn wait_not_running(
    api: &harness::Api,
    id: &str,
    within: Duration,
) -> Result<Value> {
    poll_experiment(api, id, within, "out of RUNNING", |v| {
        Ok(v["status"] != "RUNNING")
    })
    .await
}

/// Waits until experiment `id` is COMPLETED (at most `within`); fails at
/// once when it ends in ERROR or STOPPED instead.
pub(crate) async fn wait_completed(
    api: &harness::Api,
    id: &str,
    within: Duration,
) -> Result<Value> {
    poll_experiment(api, id, within, "COMPLETED", |v| {
        match v["status"].as_str() {
            Some("COMPLETED") => Ok(true),
            Some("ERROR") | Some("STOPPED") => {
                bail!("experiment ended {} instead of COMPLETED: {v}", v["status"])
            }
            _ => Ok(false),
        }
    })
    .await
}

/// The final resume of the replica tests: each experiment, through a
/// replica of its own, is left to leave RUNNING, resumed (waiting out the
/// cooldown) and followed to COMPLETED.
pub(crate) async fn final_resume(apis: &[harness::Api], ids: &[String], report: &mut Report) {
    let mut finals = Vec::new();
    for (i, id) in ids.iter().enumerate() {
        let api = apis[i % apis.len()].clone();
        let id = id.clone();
        finals.push(tokio::spawn(async move {
            wait_not_running(&api, &id, Duration::from_secs(600)).await?;
            let conflicts = resume_after_cooldown(&api, &id, Duration::from_secs(30)).await?;
            wait_completed(&api, &id, Duration::from_secs(600)).await?;
            Ok::<u64, anyhow::Error>(conflicts + 3)
        }));
    }
    for f in finals {
        match f.await {
            Ok(Ok(n)) => report.requests += n,
            Ok(Err(e)) => report.check(false, || format!("final resume: {e:#}")),
            Err(e) => report.check(false, || format!("final resume task: {e}")),
        }
    }
}

/// Resumes experiment `id`, waiting out the cooldown (409 + `Retry-After`)
/// as often as needed, at most `within`. Returns the number of 409s.
pub(crate) async fn resume_after_cooldown(
    api: &harness::Api,
    id: &str,
    within: Duration,
) -> Result<u64> {
    let until = Instant::now() + within;
    let mut conflicts = 0;
    loop {
        let (code, body) = api.resume(id).await?;
        match code {
            200 => return Ok(conflicts),
            409 => {
                conflicts += 1;
                if Instant::now() > until {
                    bail!("resume of {id} still in cooldown after {within:?}");
                }
                // The cooldown's rest, as the 409 said (at most a second here).
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            other => bail!("resume of {id} answered {other}: {body}"),
        }
    }
}

/// Server logs in `dir` (every incarnation's) that show a panic.
pub(crate) fn panicked_logs(dir: &std::path::Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "log"))
        .filter(|p| std::fs::read_to_string(p).is_ok_and(|t| t.contains("panicked")))
        .map(|p| p.display().to_string())
        .collect()
}

/// RFC 7386 merge of `patch` into `target`.
pub(crate) fn merge(target: &mut Value, patch: Value) {
    match (target, patch) {
        (Value::Object(t), Value::Object(p)) => {
            for (k, v) in p {
                merge(t.entry(k).or_insert(Value::Null), v);
            }
        }
        (t, p) => *t = p,
    }
}
