//! `cargo xtask bench S1 … S10`: end-to-end scenarios against the physical
//! limits (issue 7). Each scenario starts the simulated provider and
//! `runnel serve` as separate processes on 127.0.0.1, drives them only
//! through their HTTP APIs, repeats the whole set-up for every run (fresh
//! processes and databases), and reports each figure as the median of its
//! runs with min–max, next to the limit the provider or physics sets,
//! measured in the same run. One JSON file per scenario goes to
//! `target/bench/`; the command prints a table.
//!
//! | file | scenarios |
//! |---|---|
//! | `rate.rs` | S1 (headers), S2 (headerless, start 10× high / low), S10 (evaluators) |
//! | `throughput.rs` | S3 (runs recorded per second), S4 (concurrency ÷ slots) |
//! | `fairness.rs` | S5 (4 experiments on one key), S6 (throttled A, unlimited B) |
//! | `recovery.rs` | S7 (kill -9, restart, takeover), S8 (stop latency) |
//! | `scale.rs` | S9 (1,000,000 examples: peak RSS, time to first dispatch) |
//! | `dialects.rs` | S11 (the simulator's rate-limit dialects, against the limit that binds) |
//! | `shared.rs` | S12 (one rate budget per key across 3 and 6 replicas) |
//!
//! `ideal.rs` holds the ideal time of every rate scenario (the limiter's
//! true admission capacity, burst included); `report.rs` the figures, goals
//! and `--check`.

mod dialects;
mod fairness;
pub(crate) mod ideal;
mod rate;
mod recovery;
pub(crate) mod report;
mod scale;
mod shared;
mod throughput;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

use crate::harness::{self, Api, Bin, ServerProcess, ServerToml, SimProcess};
use report::{FigureSpec, Machine, Run, ScenarioReport};

/// A scenario: its id, what it measures, and its figures.
pub(crate) struct Spec {
    /// `S1` … `S10`.
    pub(crate) id: &'static str,
    /// One line.
    pub(crate) title: &'static str,
    /// The set-up in words, for the given sizes (`quick`).
    pub(crate) setup: fn(bool) -> String,
    /// The figures every run fills in.
    pub(crate) figures: &'static [FigureSpec],
    /// Needs the local PostgreSQL.
    pub(crate) postgres: bool,
}

/// Every scenario, in order.
pub(crate) const SCENARIOS: &[&Spec] = &[
    &rate::S1,
    &rate::S2,
    &throughput::S3,
    &throughput::S4,
    &fairness::S5,
    &fairness::S6,
    &recovery::S7,
    &recovery::S8,
    &scale::S9,
    &rate::S10,
    &dialects::S11,
    &shared::S12,
];

async fn run_once(id: &str, ctx: &Ctx) -> Result<Run> {
    match id {
        "S1" => rate::s1(ctx).await,
        "S2" => rate::s2(ctx).await,
        "S3" => throughput::s3(ctx).await,
        "S4" => throughput::s4(ctx).await,
        "S5" => fairness::s5(ctx).await,
        "S6" => fairness::s6(ctx).await,
        "S7" => recovery::s7(ctx).await,
        "S8" => recovery::s8(ctx).await,
        "S9" => scale::s9(ctx).await,
        "S10" => rate::s10(ctx).await,
        "S11" => dialects::s11(ctx).await,
        "S12" => shared::s12(ctx).await,
        other => bail!("no scenario {other}"),
    }
}

/// The scenario called `name` (case-insensitive), if any.
pub(crate) fn find(name: &str) -> Option<&'static Spec> {
    SCENARIOS
        .iter()
        .copied()
        .find(|s| s.id.eq_ignore_ascii_case(name))
}

/// What one run of a scenario works with.
pub(crate) struct Ctx {
    /// The release binary.
    pub(crate) bin: Bin,
    /// Quick (CI) sizes.
    pub(crate) quick: bool,
    /// A fresh directory for this run's files (configs, logs, SQLite).
    pub(crate) dir: PathBuf,
    /// Which run of the scenario this is (0-based), for seeds and names.
    pub(crate) run: usize,
}

impl Ctx {
    /// A SQLite URL for a file in this run's directory.
    pub(crate) fn sqlite(&self, name: &str) -> String {
        format!("sqlite://{}", self.dir.join(format!("{name}.db")).display())
    }

    /// A fresh PostgreSQL database for this run; dropped by [`PgDb`]'s drop.
    pub(crate) fn postgres(&self, scenario: &str) -> Result<PgDb> {
        let url = harness::pg_create(&format!("{}_{}", scenario.to_lowercase(), self.run))?;
        Ok(PgDb { url })
    }

    /// `quick` or `full`.
    pub(crate) fn pick<T>(&self, quick: T, full: T) -> T {
        if self.quick { quick } else { full }
    }

    /// The same run in a subdirectory `name` (for a scenario of several
    /// parts, each on fresh processes).
    pub(crate) fn sub(&self, name: &str) -> Result<Ctx> {
        let dir = self.dir.join(name);
        std::fs::create_dir_all(&dir)?;
        Ok(Ctx {
            bin: self.bin.clone(),
            quick: self.quick,
            dir,
            run: self.run,
        })
    }
}

/// A size with its `--quick` value.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Size {
    quick: usize,
    full: usize,
}

impl Size {
    /// `quick` with `--quick`, else `full`.
    pub(crate) const fn new(quick: usize, full: usize) -> Self {
        Self { quick, full }
    }

    /// The size in force.
    pub(crate) const fn get(self, quick: bool) -> usize {
        if quick { self.quick } else { self.full }
    }
}

/// A PostgreSQL database made for one run, dropped at the end.
pub(crate) struct PgDb {
    /// Its URL.
    pub(crate) url: String,
}

impl Drop for PgDb {
    fn drop(&mut self) {
        harness::pg_drop(&self.url);
    }
}

/// Options of `cargo xtask bench` for the scenarios.
#[derive(Clone, Debug)]
pub(crate) struct Options {
    /// Quick sizes (CI).
    pub(crate) quick: bool,
    /// Print every report as JSON after the table.
    pub(crate) json: bool,
    /// Runs per scenario (default: 3, or 1 with `--quick`).
    pub(crate) runs: Option<usize>,
    /// `--check`: which missed goals fail the command (none without it).
    pub(crate) check: Option<report::Check>,
}

/// What [`run`] found.
#[derive(Debug, Default)]
pub(crate) struct Outcome {
    /// Every run of every scenario finished.
    pub(crate) all_ran: bool,
    /// The goals `--check` covers that were missed, one line each (empty
    /// without `--check`).
    pub(crate) missed: Vec<String>,
}

/// Runs `specs`; prints the table (and JSON). Returns whether every run of
/// every scenario finished and, with `--check`, the goals it covers that
/// were missed (without it a missed goal is only reported).
pub(crate) fn run(specs: &[&'static Spec], options: &Options) -> Result<Outcome> {
    if specs.is_empty() {
        return Ok(Outcome {
            all_ran: true,
            missed: Vec::new(),
        });
    }
    if specs.iter().any(|s| s.postgres) {
        let url = crate::postgres::ensure_running()?;
        eprintln!("bench: PostgreSQL at {url}");
    }
    let load = report::load_average()[0];
    if load > 1.5 {
        eprintln!(
            "bench: the load average is {load:.2} on {} CPUs: other work is running, the \
             figures will be noisy (wait for a quieter moment for figures to publish)",
            std::thread::available_parallelism().map_or(0, usize::from)
        );
    }
    eprintln!("bench: building the release runnel");
    let bin = harness::build()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let runs = options.runs.unwrap_or(if options.quick { 1 } else { 3 });
    let started = Instant::now();
    let mut reports = Vec::new();
    let mut all_ran = true;
    let mut missed = Vec::new();
    for spec in specs {
        let report = runtime.block_on(run_scenario(spec, &bin, options.quick, runs));
        match report.write(&harness::workspace_root()) {
            Ok(path) => eprintln!("bench: {} → {}", spec.id, path.display()),
            Err(e) => eprintln!("bench: could not write the {} report: {e:#}", spec.id),
        }
        all_ran &= report.errors.is_empty();
        if let Some(check) = options.check {
            missed.extend(report::missed(&report, check));
        }
        reports.push(report);
    }
    println!();
    println!(
        "end-to-end scenarios ({} run{} each, {} sizes; {} s in all; load average {})",
        runs,
        if runs == 1 { "" } else { "s" },
        if options.quick { "quick" } else { "full" },
        started.elapsed().as_secs(),
        report::load_average()
            .iter()
            .map(|l| format!("{l:.2}"))
            .collect::<Vec<_>>()
            .join(" "),
    );
    print!("{}", report::table(&reports));
    if options.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report::json_all(&reports))?
        );
    }
    if let Some(check) = options.check {
        println!(
            "--check ({}): {}",
            match check {
                report::Check::All => "every goal",
                report::Check::Independent => "goals marked ᵢ, independent of the machine's speed",
            },
            if missed.is_empty() {
                "every goal met".to_owned()
            } else {
                format!("{} missed", missed.len())
            }
        );
        for line in &missed {
            println!("  missed: {line}");
        }
    }
    Ok(Outcome { all_ran, missed })
}

async fn run_scenario(spec: &'static Spec, bin: &Bin, quick: bool, runs: usize) -> ScenarioReport {
    let load_before = report::load_average();
    eprintln!(
        "bench: {} — {} ({} run{}, load {:.2})",
        spec.id,
        spec.title,
        runs,
        if runs == 1 { "" } else { "s" },
        load_before[0]
    );
    let mut done = Vec::new();
    let mut errors = Vec::new();
    for run in 0..runs {
        let dir = match harness::scratch(&format!("{}-{run}", spec.id.to_lowercase())) {
            Ok(dir) => dir,
            Err(e) => {
                errors.push(format!("run {run}: scratch directory: {e:#}"));
                continue;
            }
        };
        let ctx = Ctx {
            bin: bin.clone(),
            quick,
            dir: dir.clone(),
            run,
        };
        let started = Instant::now();
        match run_once(spec.id, &ctx).await {
            Ok(mut result) => {
                for e in result.errors.drain(..) {
                    eprintln!("bench: {} run {run}: {e}", spec.id);
                    errors.push(format!("run {run}: {e}"));
                }
                let figures: Vec<String> = result
                    .figures
                    .iter()
                    .map(|(k, v)| format!("{k}={}", report::number(*v)))
                    .collect();
                eprintln!(
                    "bench: {} run {run}: {} ({:.1} s)",
                    spec.id,
                    figures.join(" "),
                    started.elapsed().as_secs_f64()
                );
                if let Value::Object(map) = &mut result.details {
                    map.insert("seconds".into(), json!(started.elapsed().as_secs_f64()));
                    map.insert("load_after".into(), json!(report::load_average()));
                }
                done.push(result);
                // Keep the logs of failed runs only.
                let _ = std::fs::remove_dir_all(&dir);
            }
            Err(e) => {
                eprintln!(
                    "bench: {} run {run} failed: {e:#} (files in {})",
                    spec.id,
                    dir.display()
                );
                errors.push(format!("run {run}: {e:#}"));
            }
        }
    }
    let figures: Vec<report::Figure> = spec
        .figures
        .iter()
        .map(|f| report::aggregate(f, &done, quick))
        .collect();
    let pass = errors.is_empty() && figures.iter().all(report::Figure::goal_met);
    ScenarioReport {
        scenario: spec.id,
        title: spec.title,
        setup: (spec.setup)(quick),
        quick,
        runs: done.len(),
        figures,
        details: done.into_iter().map(|r| r.details).collect(),
        errors,
        pass,
        machine: Machine::now(load_before),
    }
}

// ------------------------------------------------------------ shared steps

/// The burst of every simulator limit of the scenarios, in seconds of
/// refill: the simulator's default, written out so that the ideal
/// ([`rate_ideal`]) and the simulator agree. Not a setting: the scenarios'
/// figures are defined against it.
pub(crate) const SIM_BURST_S: f64 = 1.0;

/// The ideal time of `n` requests under the simulator's bucket of `rps`
/// per second with [`SIM_BURST_S`] of burst ([`ideal::Limiter::earliest`]).
pub(crate) fn rate_ideal(n: usize, rps: f64) -> f64 {
    ideal::ideal_seconds(n as u64, &[(ideal::Limiter::bucket(rps, SIM_BURST_S), 1.0)])
}

/// A simulator configuration: a request limit per second with or without
/// headers (`None`: no limit; burst [`SIM_BURST_S`]) and a latency of
/// `base_ms ± jitter_ms`.
pub(crate) fn sim_config(
    rps: Option<f64>,
    headerless: bool,
    base_ms: u64,
    jitter_ms: u64,
    seed: usize,
) -> Value {
    let mut limits = json!({ "headerless": headerless });
    if let Some(rps) = rps {
        limits["rps"] = json!(rps);
        limits["burst"] = json!(format!("{}ms", (SIM_BURST_S * 1000.0).round()));
    }
    json!({
        "seed": seed,
        "limits": limits,
        "latency": { "base": format!("{base_ms}ms"), "jitter": format!("{jitter_ms}ms") },
    })
}

/// A simulator and one server on a SQLite file, with `[providers.sim]` on
/// that simulator and `limits` for it.
pub(crate) struct Single {
    /// The provider.
    pub(crate) sim: SimProcess,
    /// The server.
    pub(crate) server: ServerProcess,
    /// Its API.
    pub(crate) api: Api,
}

impl Single {
    /// Starts both processes.
    pub(crate) async fn start(
        ctx: &Ctx,
        sim: Value,
        limits: &[(&str, Value)],
        extra: impl FnOnce(ServerToml) -> ServerToml,
    ) -> Result<Self> {
        let sim = SimProcess::start(&ctx.bin, &ctx.dir, sim).await?;
        let toml = extra(ServerToml::new(&ctx.sqlite("runnel")).provider("sim", &sim.url, limits));
        let server =
            ServerProcess::start(&ctx.bin, &ctx.dir, "server", &toml.render(), &[]).await?;
        let api = server.api();
        Ok(Self { sim, server, api })
    }
}

/// How an experiment ran, by the database's own timestamps.
#[derive(Clone, Debug)]
pub(crate) struct Finished {
    /// Its id.
    pub(crate) id: String,
    /// Creation (the POST) to the final status write, in seconds.
    pub(crate) seconds: f64,
    /// The experiment as read at the end.
    pub(crate) body: Value,
}

impl Finished {
    /// `progress.<field>` as a number.
    pub(crate) fn progress(&self, field: &str) -> u64 {
        self.body["progress"][field].as_u64().unwrap_or(0)
    }
}

/// When each finished experiment completed, in seconds after the first of
/// them was created (database timestamps), with the earliest and latest.
pub(crate) fn completions(finished: &[Finished]) -> Result<(Vec<f64>, f64, f64)> {
    let first_created = finished
        .iter()
        .map(|f| f.body["created_at"].clone())
        .min_by(|a, b| a.as_str().cmp(&b.as_str()))
        .unwrap_or_default();
    let ends: Vec<f64> = finished
        .iter()
        .map(|f| seconds_between(&first_created, &f.body["updated_at"]))
        .collect::<Result<_>>()?;
    let (lo, hi) = ends
        .iter()
        .fold((f64::MAX, f64::MIN), |(lo, hi), e| (lo.min(*e), hi.max(*e)));
    Ok((ends, lo, hi))
}

/// Seconds between two RFC 3339 timestamps of an experiment body.
pub(crate) fn seconds_between(from: &Value, to: &Value) -> Result<f64> {
    let parse = |v: &Value| -> Result<chrono::DateTime<chrono::FixedOffset>> {
        let text = v.as_str().context("a timestamp is missing")?;
        chrono::DateTime::parse_from_rfc3339(text).with_context(|| format!("timestamp `{text}`"))
    };
    let (a, b) = (parse(from)?, parse(to)?);
    Ok((b - a).num_microseconds().unwrap_or(i64::MAX) as f64 / 1e6)
}

/// Creates an experiment from `body` and waits until it leaves RUNNING
/// (polling every `poll`); it must end COMPLETED. The time is the database's:
/// `updated_at − created_at`, so polling adds no error.
pub(crate) async fn run_to_end(
    api: &Api,
    body: &Value,
    deadline: Duration,
    poll: Duration,
) -> Result<Finished> {
    let id = api.experiment(body).await?;
    wait_end(api, &id, deadline, poll).await
}

/// Waits until experiment `id` leaves RUNNING; it must end COMPLETED.
pub(crate) async fn wait_end(
    api: &Api,
    id: &str,
    deadline: Duration,
    poll: Duration,
) -> Result<Finished> {
    let until = Instant::now() + deadline;
    loop {
        let body = api.get(id).await?;
        match body["status"].as_str() {
            Some("RUNNING") => {}
            Some("COMPLETED") => {
                let seconds = seconds_between(&body["created_at"], &body["updated_at"])?;
                return Ok(Finished {
                    id: id.to_owned(),
                    seconds,
                    body,
                });
            }
            _ => bail!("experiment {id} ended as {body}"),
        }
        if Instant::now() > until {
            bail!("experiment {id} did not complete within {deadline:?}: {body}");
        }
        tokio::time::sleep(poll).await;
    }
}

/// Checks that every run of `done` succeeded.
pub(crate) fn all_succeeded(done: &Finished, runs: u64) -> Result<()> {
    let ok = done.progress("runs_succeeded");
    let failed = done.progress("runs_failed");
    if ok != runs || failed != 0 {
        bail!(
            "experiment {} recorded {ok} successful and {failed} failed runs of {runs}",
            done.id
        );
    }
    Ok(())
}

/// A generous deadline for work that ideally takes `ideal_seconds`.
pub(crate) fn deadline(ideal_seconds: f64) -> Duration {
    Duration::from_secs_f64(ideal_seconds * 5.0 + 60.0)
}
