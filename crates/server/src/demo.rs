//! `runnel demo`: the whole system in one process with nothing installed
//! and no network. It starts the simulated provider on a free loopback port
//! with a rate limit, latency, server errors and some wrong answers; opens a
//! fresh SQLite file; imports a generated dataset of arithmetic questions
//! with expected answers; creates an experiment with one CORRECT/INCORRECT
//! judge through the API's own validation and lifecycle code; runs it on the
//! real engine with live progress; prints a summary; and keeps serving the
//! HTTP API (with the simulator configured as provider `sim`) until Ctrl-C.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;
use runnel_core::rng::Rng;
use runnel_sim::{Sim, SimConfig, SimHandle, StatsSnapshot};
use serde_json::{Map, Value, json};
use tokio::sync::watch;

use crate::api::types::{CreateExperiment, ExampleIn};
use crate::api::validate;
use crate::config::{LogFormat, Overrides, RunnelConfig};
use crate::follow::{self, Display, End, Tally};
use crate::runtime::Runtime;
use crate::summary;

/// The name of the simulator's provider entry.
pub const PROVIDER: &str = "sim";
/// The task model (the simulator keeps one rate limit per model).
pub const TASK_MODEL: &str = "sim-task";
/// The judge model.
pub const JUDGE_MODEL: &str = "sim-judge";
/// How long the demo's API may take to close once the user stops it; open
/// event streams would otherwise hold it. Not a setting: it bounds only the
/// HTTP connections; the engine's shutdown (and its grace) comes after.
const API_CLOSE_WAIT: Duration = Duration::from_secs(3);

/// Options of `runnel demo`.
#[derive(Clone, Debug, clap::Args)]
#[command(after_help = "Examples:
  runnel demo                      # 300 questions, then serve the API on 127.0.0.1:8080
  runnel demo --exit --examples 50 # a short run that ends after the summary
  runnel demo --headers            # the simulator sends OpenAI-style rate-limit headers")]
pub struct DemoArgs {
    /// How many arithmetic questions to generate (at least 1).
    #[arg(long, value_name = "N", default_value_t = 300,
          value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub examples: u32,
    /// The simulator's rate limit, requests per second per model.
    #[arg(long, value_name = "N", default_value_t = 40.0)]
    pub rps: f64,
    /// Send OpenAI-style x-ratelimit-* headers and retry-after on 429s. By
    /// default 429s are bare, so the advisor has to find the limit itself
    /// (slow start, halve on 429, climb back).
    #[arg(long)]
    pub headers: bool,
    /// The advisor's starting rate per model, requests per second (default:
    /// the built-in rate of an `openai_compatible` provider, 1/s).
    #[arg(long, value_name = "N")]
    pub initial_rps: Option<f64>,
    /// Typical latency of a simulated call.
    #[arg(long, value_name = "DURATION", default_value = "150ms",
          value_parser = runnel_sim::duration::parse)]
    pub latency: Duration,
    /// Spread of the latency (uniform, ±).
    #[arg(long, value_name = "DURATION", default_value = "100ms",
          value_parser = runnel_sim::duration::parse)]
    pub jitter: Duration,
    /// Share of calls answered 500/502/503 (retried with backoff).
    #[arg(long, value_name = "RATE", default_value_t = 0.02)]
    pub error_rate: f64,
    /// Share of questions the simulated model answers wrongly (the judge
    /// then says INCORRECT).
    #[arg(long, value_name = "RATE", default_value_t = 0.1)]
    pub wrong_rate: f64,
    /// Seed of the dataset and of the simulator's latency and fault draws.
    #[arg(long, default_value_t = 7)]
    pub seed: u64,
    /// SQLite file of the demo. It is deleted and created afresh at every
    /// start (with its -wal, -shm and .replica-id companions).
    #[arg(long, value_name = "FILE", default_value = "runnel-demo.db")]
    pub db: PathBuf,
    /// Address of the HTTP API.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8080")]
    pub bind: SocketAddr,
    /// End after the summary instead of serving the API until Ctrl-C.
    #[arg(long)]
    pub exit: bool,
}

/// `n` arithmetic questions (`+`, `-`, `×`) in the simulator's convention:
/// input `{"question": "What is 17 + 25?"}`, expected `42` (a number),
/// metadata `{"op": "+"}`.
pub fn dataset(n: usize, seed: u64) -> Vec<ExampleIn> {
    let mut rng = Rng::new(seed);
    (0..n)
        .map(|_| {
            let (a, op, b, result) = match rng.below(3) {
                0 => {
                    let (a, b) = (rng.range(2, 99), rng.range(2, 99));
                    (a, "+", b, a + b)
                }
                1 => {
                    let a = rng.range(10, 99);
                    let b = rng.range(1, a);
                    (a, "-", b, a - b)
                }
                _ => {
                    let (a, b) = (rng.range(2, 19), rng.range(2, 19));
                    (a, "×", b, a * b)
                }
            };
            ExampleIn {
                input: json!({ "question": format!("What is {a} {op} {b}?") }),
                expected: Some(json!(result)),
                metadata: Some(json!({ "op": op })),
            }
        })
        .collect()
}

/// The experiment, written as the body of `POST /v1/experiments`.
pub fn experiment_body(dataset_id: &str) -> Value {
    json!({
        "dataset_id": dataset_id,
        "name": "demo: arithmetic",
        "task": {
            "provider": PROVIDER,
            "model": TASK_MODEL,
            "messages": [
                {"role": "system", "content": "You are a careful calculator. Reply with the number only."},
                {"role": "user", "content": "{{input.question}}"}
            ],
            "params": {"temperature": 0, "max_tokens": 16}
        },
        "evaluators": [{
            "name": "correct",
            "provider": PROVIDER,
            "model": JUDGE_MODEL,
            "messages": [
                {"role": "user", "content": "Expected {{expected}}; got {{output}}. Answer CORRECT or INCORRECT."}
            ],
            "labels": ["CORRECT", "INCORRECT"]
        }]
    })
}

/// The simulator's configuration for these options.
pub fn sim_config(args: &DemoArgs) -> anyhow::Result<SimConfig> {
    let mut config = SimConfig {
        seed: args.seed,
        ..SimConfig::default()
    };
    config.limits.rps = Some(args.rps);
    config.limits.per_model = true;
    config.limits.headerless = !args.headers;
    config.latency.base = args.latency;
    config.latency.jitter = args.jitter;
    config.faults.server_error_rate = args.error_rate;
    config.replies.wrong_rate = args.wrong_rate;
    config
        .validate()
        .map_err(|e| anyhow::anyhow!("invalid demo option: {e}"))?;
    Ok(config)
}

/// Deletes the demo database and its companions, so every demo starts fresh.
fn remove_database(db: &Path) -> anyhow::Result<()> {
    let mut files = vec![db.to_path_buf(), runnel_store::replica_id_file(db)];
    for suffix in ["-wal", "-shm", "-journal"] {
        let mut name = db.as_os_str().to_owned();
        name.push(suffix);
        files.push(PathBuf::from(name));
    }
    for file in files {
        match std::fs::remove_file(&file) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(e).with_context(|| {
                    format!("removing the previous demo database {}", file.display())
                });
            }
        }
    }
    Ok(())
}

/// The configuration of the demo: the usual sources (so `runnel.toml` and
/// `RUNNEL_…` still tune the scheduler), with the demo's database and the
/// simulator as provider `sim`; logs quieted by [`follow::quiet_logs`].
pub fn demo_config(
    file: Option<&Path>,
    log_format: Option<LogFormat>,
    args: &DemoArgs,
    sim_url: &str,
) -> anyhow::Result<RunnelConfig> {
    let url = format!("sqlite://{}", args.db.display());
    let mut config = RunnelConfig::load(
        file,
        &Overrides {
            bind: Some(args.bind),
            database_url: Some(url),
            replica_id: None,
            log_format,
        },
    )?;
    let mut table = Map::new();
    table.insert("kind".into(), json!("openai_compatible"));
    table.insert("base_url".into(), json!(format!("{sim_url}/v1")));
    if let Some(rps) = args.initial_rps {
        table.insert("initial_rps".into(), json!(rps));
    }
    config.add_provider(PROVIDER, table)?;
    follow::quiet_logs(&mut config);
    Ok(config)
}

/// Completes once `stop` turns true (Ctrl-C or SIGTERM).
async fn stopped(mut stop: watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

fn sim_line(stats: &StatsSnapshot, ideal: u64) -> String {
    let c = &stats.classes;
    let extra = stats.requests.saturating_sub(ideal);
    format!(
        "{} requests reached the simulator for {ideal} results ({extra} extra): \
         {} answered 429 and absorbed, {} server errors retried, peak {} in flight",
        stats.requests, c.rate_limited, c.server_error, stats.concurrency.peak
    )
}

/// Runs the demo (see the module documentation).
pub async fn run(
    args: DemoArgs,
    config_file: Option<&Path>,
    log_format: Option<LogFormat>,
) -> anyhow::Result<()> {
    let sim_config = sim_config(&args)?;
    let limit_mode = if args.headers {
        "OpenAI-style rate-limit headers: the advisor reads the limit from the first reply"
    } else {
        "bare 429s, no headers: the advisor must find the limit itself"
    };
    remove_database(&args.db)?;
    let sim = Sim::start(sim_config)
        .await
        .context("starting the simulated provider")?;
    let config = demo_config(config_file, log_format, &args, &sim.url())?;
    let tracer = crate::telemetry::init_tracing(&config)?;
    // Bind first, so a busy port fails before any work is done.
    let listener = if args.exit {
        None
    } else {
        Some(
            tokio::net::TcpListener::bind(args.bind)
                .await
                .with_context(|| {
                    format!(
                        "listening on {} (is another runnel running? pick another address with --bind, or use --exit)",
                        args.bind
                    )
                })?,
        )
    };
    let runtime = Runtime::start(config).await?;
    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::spawn(async move {
        crate::cli::shutdown_signal().await;
        let _ = stop_tx.send(true);
    });
    let server = listener.map(|listener| {
        let app = crate::api::app(runtime.state.clone());
        let stop = stop_rx.clone();
        tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(stopped(stop))
                .await
        })
    });

    let result = demo_body(&args, &runtime, &sim, limit_mode, stop_rx.clone()).await;
    if result.is_ok() && server.is_some() {
        stopped(stop_rx).await;
        println!("\nshutting down");
    }
    if let Some(server) = server {
        // Open event streams would hold a graceful shutdown forever.
        match tokio::time::timeout(API_CLOSE_WAIT, server).await {
            Ok(Ok(Err(e))) => tracing::warn!(error = %e, "serving the API"),
            Ok(_) => {}
            Err(_) => tracing::debug!("closed the API with connections still open"),
        }
    }
    runtime.shutdown().await;
    sim.shutdown().await;
    if let Some(tracer) = tracer {
        let _ = tracer.shutdown();
    }
    result
}

async fn demo_body(
    args: &DemoArgs,
    runtime: &Runtime,
    sim: &SimHandle,
    limit_mode: &str,
    stop: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let state = &runtime.state;
    let examples = validate::examples(dataset(args.examples as usize, args.seed), "examples")
        .map_err(|e| anyhow::anyhow!("the generated dataset is invalid: {e}"))?;
    let info = state
        .db
        .create_dataset("arithmetic (demo)", &examples)
        .await
        .context("storing the demo dataset")?;
    let request: CreateExperiment = serde_json::from_value(experiment_body(&info.id.to_string()))
        .context("building the demo experiment")?;
    let (new, _) = validate::experiment(state, request)
        .await
        .map_err(|e| anyhow::anyhow!("the demo experiment is invalid: {e}"))?;

    println!("runnel demo: everything runs in this process; nothing leaves 127.0.0.1");
    println!(
        "  provider    simulated OpenAI-compatible API at {}/v1 (provider entry `{PROVIDER}`)",
        sim.url()
    );
    println!(
        "              limit {} requests/s per model, {limit_mode}",
        args.rps
    );
    println!(
        "              latency {} ± {}, {:.0} % server errors (retried), {:.0} % wrong answers",
        runnel_sim::duration::format(args.latency),
        runnel_sim::duration::format(args.jitter),
        args.error_rate * 100.0,
        args.wrong_rate * 100.0
    );
    println!(
        "  database    sqlite://{} (created afresh)",
        args.db.display()
    );
    println!(
        "  dataset     {} arithmetic questions with expected answers ({})",
        info.example_count, info.id
    );
    println!(
        "  experiment  task model `{TASK_MODEL}` answers, judge `{JUDGE_MODEL}` labels each answer CORRECT or INCORRECT"
    );
    if !args.exit {
        println!(
            "  API         http://{} (already serving: try the commands below while it runs)",
            args.bind
        );
    }
    println!();

    let mut launched = follow::launch(state, &new)
        .await
        .map_err(|e| anyhow::anyhow!("starting the demo experiment: {e}"))?;
    let mut tally = Tally::default();
    let mut display = Display::auto(false);
    let end = follow::follow(
        &mut launched,
        &mut tally,
        &runtime.advisor,
        &mut display,
        stopped(stop),
    )
    .await;
    let elapsed = launched.started.elapsed();
    let summary = summary::collect(&state.db, launched.id, &tally, elapsed)
        .await
        .context("reading the results")?;
    println!();
    if end == End::Interrupted {
        println!("interrupted; results so far:");
    }
    let mut rows = summary.rows();
    rows.push((
        "provider".into(),
        sim_line(&sim.stats(), summary.calls.ideal),
    ));
    let rates = follow::advisor_rates(&runtime.advisor, &tally.keys, Instant::now());
    if !rates.is_empty() {
        rows.push((
            "advisor".into(),
            format!("now allows {rates} (the limit is {} per model)", args.rps),
        ));
    }
    print!("{}", summary::render_rows(&rows));
    if end == End::Interrupted || args.exit {
        return Ok(());
    }
    let base = format!("http://{}", args.bind);
    let id = launched.id;
    println!();
    println!(
        "The API keeps serving on {base} until Ctrl-C, with the simulator as provider `{PROVIDER}`. Try:"
    );
    println!("  curl -s {base}/v1/experiments/{id}");
    println!("  curl -s '{base}/v1/experiments/{id}/runs?limit=2'");
    println!("  curl -s {base}/v1/experiments/{id}/runs.jsonl | head -n 3");
    println!("  curl -s -X POST {base}/v1/experiments/{id}/resume");
    println!("  curl -s {base}/metrics | grep '^runnel_jobs'");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_dataset_is_deterministic_and_follows_the_sim_convention() {
        let a = dataset(300, 7);
        assert_eq!(a.len(), 300);
        let b = dataset(300, 7);
        let texts = |d: &[ExampleIn]| -> Vec<String> {
            d.iter().map(|e| e.input["question"].to_string()).collect()
        };
        assert_eq!(texts(&a), texts(&b));
        assert_ne!(texts(&a), texts(&dataset(300, 8)));
        let config = runnel_sim::ReplyConfig::default();
        for example in &a {
            let question = example.input["question"].as_str().unwrap();
            // The prompt the simulator sees: every message, system first.
            let prompt =
                format!("You are a careful calculator. Reply with the number only.\n{question}");
            let reply = runnel_sim::reply(&prompt, None, &config);
            let expected = example.expected.as_ref().unwrap().to_string();
            assert_eq!(reply.text, expected, "{question}");
        }
        let ops: std::collections::HashSet<String> = a
            .iter()
            .map(|e| e.metadata.as_ref().unwrap()["op"].to_string())
            .collect();
        assert_eq!(ops.len(), 3);
    }

    #[test]
    fn the_judge_prompt_gets_the_sim_to_compare() {
        let config = runnel_sim::ReplyConfig::default();
        let right = runnel_sim::reply(
            "Expected 42; got 42. Answer CORRECT or INCORRECT.",
            None,
            &config,
        );
        assert!(right.text.starts_with("CORRECT"), "{}", right.text);
        let wrong = runnel_sim::reply(
            "Expected 42; got 41. Answer CORRECT or INCORRECT.",
            None,
            &config,
        );
        assert!(wrong.text.starts_with("INCORRECT"), "{}", wrong.text);
    }

    #[test]
    fn the_experiment_body_passes_the_api_types() {
        let body = experiment_body("0196b7c0-0000-7000-8000-000000000000");
        let parsed: CreateExperiment = serde_json::from_value(body).unwrap();
        assert_eq!(
            parsed.evaluators.unwrap()[0].labels.as_ref().unwrap().len(),
            2
        );
    }
}
