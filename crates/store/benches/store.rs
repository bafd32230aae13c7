//! Store benchmark (`cargo bench -p runnel-store --bench store`; the lead
//! wires it as `cargo xtask bench store`). Needs PostgreSQL:
//! `RUNNEL_TEST_POSTGRES_URL` (as for the tests).
//!
//! Prints, for SQLite (a temporary file) and PostgreSQL (a temporary
//! database):
//! 1. recorded runs per second with batching, from 20 concurrent writers as
//!    the engine has them (one per global slot), against a baseline measured
//!    in the same run: one transaction per run (batch size 1);
//! 2. the time of a task page (1,000 items) over a 10,000-example and a
//!    1,000,000-example dataset: the first page of a fresh experiment, a
//!    page from the middle, and the first page when the first half is done.
//!
//! Each figure is the median of at least 5 runs with the min–max range.
//! Knobs: `RUNNEL_BENCH_LARGE` (examples of the large dataset, default
//! 1,000,000), `RUNNEL_BENCH_WRITES` (runs per write measurement, default
//! 10,000), `RUNNEL_BENCH_ROUNDS` (default 5), `RUNNEL_BENCH_DATABASES`
//! (`sqlite`, `postgres`; default both), `RUNNEL_BENCH_SKIP_PAGES`,
//! `RUNNEL_BENCH_WINDOW_US` and `RUNNEL_BENCH_BATCH_WRITERS` (batching
//! settings to compare; default the store's defaults). `--quick` (passed by
//! `cargo xtask bench --quick`) divides the default large dataset and the
//! writes by ten; under `cargo test` a small smoke run only checks it works.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use runnel_core::{Claim, ExampleId, ReplicaId, RunRecord, Store, TaskKey, Write};
use runnel_store::testing::{example_ids, with_temp_db};
use runnel_store::{DatabaseKind, Db, NewExample, NewExperiment, StoreConfig, Transition};
use serde_json::json;

const WRITERS: usize = 20;
const PAGE: usize = 1000;

/// `cargo bench` passes `--bench`; `cargo test --all-targets` runs this
/// binary without it, and then a small smoke run checks that it works.
fn measuring() -> bool {
    static MEASURING: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *MEASURING.get_or_init(|| std::env::args().any(|a| a == "--bench"))
}

/// `cargo xtask bench --quick` passes `--quick`: a tenth of the sizes.
fn quick() -> bool {
    static QUICK: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *QUICK.get_or_init(|| std::env::args().any(|a| a == "--quick"))
}

/// `measured` when measuring (a tenth of it with `--quick`), `smoke` in a
/// smoke run.
fn size(measured: usize, smoke: usize) -> usize {
    match (measuring(), quick()) {
        (false, _) => smoke,
        (true, true) => measured / 10,
        (true, false) => measured,
    }
}

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.replace('_', "").parse().ok())
        .unwrap_or(default)
}

/// Median, min and max of `samples`.
fn summary(mut samples: Vec<f64>) -> (f64, f64, f64) {
    samples.sort_by(f64::total_cmp);
    let n = samples.len();
    let median = if n % 2 == 1 {
        samples[n / 2]
    } else {
        (samples[n / 2 - 1] + samples[n / 2]) / 2.0
    };
    (median, samples[0], samples[n - 1])
}

fn examples(first: usize, count: usize) -> Vec<NewExample> {
    (first..first + count)
        .map(|i| NewExample::new(json!({"question": format!("What is {i} + {i}?"), "n": i})))
        .collect()
}

fn task() -> runnel_core::CallSpec {
    serde_json::from_value(json!({
        "provider": "sim", "model": "echo",
        "messages": [{"role": "user", "content": "{{input.question}}"}]
    }))
    .unwrap()
}

async fn started(db: &Db, dataset: runnel_core::DatasetId) -> Claim {
    let x = db
        .create_experiment(&NewExperiment {
            dataset_id: dataset,
            name: "bench".into(),
            repetitions: 1,
            max_concurrency: None,
            task: task(),
            evaluators: vec![],
        })
        .await
        .unwrap();
    match db.start(x, &ReplicaId::new("bench")).await.unwrap() {
        Transition::Done(claim) => claim,
        other => panic!("{other:?}"),
    }
}

fn record(example: ExampleId) -> RunRecord {
    RunRecord {
        key: TaskKey {
            example,
            repetition: 0,
        },
        output: Some(format!(
            "The answer to example {example} is a short sentence."
        )),
        error: None,
        attempts: 1,
        latency_ms: 420,
        total_latency_ms: 420,
        usage: Some(runnel_core::Usage {
            prompt_tokens: 31,
            completion_tokens: 12,
        }),
    }
}

/// Runs per second of `writes` run writes from WRITERS concurrent tasks.
async fn runs_per_second(db: &Arc<Db>, dataset: runnel_core::DatasetId, ids: &[ExampleId]) -> f64 {
    let claim = started(db, dataset).await;
    let start = Instant::now();
    let tasks: Vec<_> = (0..WRITERS)
        .map(|w| {
            let mine: Vec<ExampleId> = ids.iter().skip(w).step_by(WRITERS).copied().collect();
            let (db, claim) = (db.clone(), claim.clone());
            tokio::spawn(async move {
                for e in mine {
                    let verdict = db.record_run(&claim, record(e)).await.unwrap();
                    assert!(matches!(verdict, Write::Accepted(_)));
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    ids.len() as f64 / start.elapsed().as_secs_f64()
}

async fn write_throughput(kind: DatabaseKind, url: &str, rounds: usize) {
    let writes = env("RUNNEL_BENCH_WRITES", size(10_000, 500));
    let defaults = StoreConfig::default();
    let config = StoreConfig {
        batch_window: Duration::from_micros(env(
            "RUNNEL_BENCH_WINDOW_US",
            defaults.batch_window.as_micros() as usize,
        ) as u64),
        batch_writers: env("RUNNEL_BENCH_BATCH_WRITERS", defaults.batch_writers),
        ..StoreConfig::for_url(url)
    };
    let batched = Arc::new(Db::connect(&config).await.unwrap());
    let dataset = batched
        .create_dataset("writes", &examples(0, writes))
        .await
        .unwrap();
    let ids = example_ids(&batched, dataset.id).await;
    let unbatched = Arc::new(
        Db::connect(&StoreConfig {
            batch_size: 1,
            batch_window: Duration::ZERO,
            batch_writers: 1,
            ..StoreConfig::for_url(url)
        })
        .await
        .unwrap(),
    );
    // The baseline is slow; a fifth of the writes gives a stable rate.
    let baseline_ids = &ids[..writes.div_ceil(5)];
    let mut with = Vec::new();
    let mut without = Vec::new();
    for _ in 0..rounds {
        with.push(runs_per_second(&batched, dataset.id, &ids).await);
        without.push(runs_per_second(&unbatched, dataset.id, baseline_ids).await);
    }
    let (m, lo, hi) = summary(with);
    let (bm, blo, bhi) = summary(without);
    println!(
        "{:<8} recorded runs/s, batched ({} per group, {:?} window, {} batch writers; {WRITERS} \
         concurrent callers, {writes} runs): median {m:.0} (min {lo:.0} – max {hi:.0})",
        kind.as_str(),
        config.batch_size,
        config.batch_window,
        config.batch_writers,
    );
    println!(
        "{:<8} baseline, one transaction per run ({} runs): median {bm:.0} (min {blo:.0} – max {bhi:.0}); \
         batching gains x{:.1}",
        kind.as_str(),
        baseline_ids.len(),
        m / bm
    );
    Arc::try_unwrap(batched).unwrap().close().await;
    Arc::try_unwrap(unbatched).unwrap().close().await;
}

/// Milliseconds of `page` (a closure producing a page future), over `rounds` runs.
async fn time_page<F, Fut>(rounds: usize, mut page: F) -> (f64, f64, f64)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = usize>,
{
    // One warm-up, as the engine's first page would also pay it.
    page().await;
    let mut samples = Vec::new();
    for _ in 0..rounds.max(5) {
        let start = Instant::now();
        let n = page().await;
        samples.push(start.elapsed().as_secs_f64() * 1000.0);
        assert_eq!(n, PAGE);
    }
    summary(samples)
}

/// Marks the first `done` examples of the claim's dataset as succeeded, in
/// bulk (the store's own writes would take minutes for half a million).
async fn bulk_done(kind: DatabaseKind, url: &str, claim: &Claim, ids: &[ExampleId], done: usize) {
    use sqlx::{Connection, Executor};
    let last = ids[done - 1].0;
    let x = claim.experiment.0;
    let epoch = claim.epoch.0;
    match kind {
        DatabaseKind::Sqlite => {
            let mut c = sqlx::SqliteConnection::connect(url).await.unwrap();
            let sql = "INSERT INTO runs (experiment_id, example_id, repetition, succeeded, output,
                           attempts, latency_ms, total_latency_ms, epoch, started_at, finished_at)
                       SELECT ?1, id, 0, 1, 'done', 1, 1, 1, ?2, '2025-01-01T00:00:00.000Z',
                              '2025-01-01T00:00:00.000Z'
                       FROM dataset_examples
                       WHERE dataset_id = (SELECT dataset_id FROM experiments WHERE id = ?1)
                         AND id <= ?3";
            c.execute(sqlx::query(sql).bind(x).bind(epoch).bind(last))
                .await
                .unwrap();
            c.close().await.unwrap();
        }
        DatabaseKind::Postgres => {
            let mut c = sqlx::PgConnection::connect(url).await.unwrap();
            let sql = "INSERT INTO runs (experiment_id, example_id, repetition, succeeded, output,
                           attempts, latency_ms, total_latency_ms, epoch, started_at, finished_at)
                       SELECT $1, id, 0, TRUE, 'done', 1, 1, 1, $2, now(), now()
                       FROM dataset_examples
                       WHERE dataset_id = (SELECT dataset_id FROM experiments WHERE id = $1)
                         AND id <= $3";
            c.execute(sqlx::query(sql).bind(x).bind(epoch).bind(last))
                .await
                .unwrap();
            c.close().await.unwrap();
        }
    }
}

async fn page_times(kind: DatabaseKind, url: &str, rounds: usize) {
    let large = env("RUNNEL_BENCH_LARGE", size(1_000_000, 20_000));
    let db = Db::connect(&StoreConfig::for_url(url)).await.unwrap();
    for size in [if measuring() { 10_000 } else { 5_000 }, large] {
        let build = Instant::now();
        let dataset = db.create_dataset("pages", &[]).await.unwrap();
        const CHUNK: usize = 20_000;
        for first in (0..size).step_by(CHUNK) {
            db.append_examples(dataset.id, &examples(first, CHUNK.min(size - first)))
                .await
                .unwrap();
        }
        let built = build.elapsed();
        let ids = example_ids(&db, dataset.id).await;
        assert_eq!(ids.len(), size);
        let claim = started(&db, dataset.id).await;
        let first = time_page(rounds, || async {
            db.task_page(&claim, None, PAGE).await.unwrap().len()
        })
        .await;
        let middle_cursor = TaskKey {
            example: ids[size / 2],
            repetition: 0,
        };
        let middle = time_page(rounds, || async {
            db.task_page(&claim, Some(middle_cursor), PAGE)
                .await
                .unwrap()
                .len()
        })
        .await;
        let half_done = started(&db, dataset.id).await;
        bulk_done(kind, url, &half_done, &ids, size / 2).await;
        let after_done = time_page(rounds, || async {
            db.task_page(&half_done, None, PAGE).await.unwrap().len()
        })
        .await;
        println!(
            "{:<8} task page of {PAGE} over {size} examples (built in {:.1} s): first page \
             {:.2} ms ({:.2}–{:.2}); from the middle {:.2} ms ({:.2}–{:.2}); first page with \
             the first half done {:.1} ms ({:.1}–{:.1})",
            kind.as_str(),
            built.as_secs_f64(),
            first.0,
            first.1,
            first.2,
            middle.0,
            middle.1,
            middle.2,
            after_done.0,
            after_done.1,
            after_done.2,
        );
    }
    db.close().await;
}

fn main() {
    let rounds = if measuring() {
        env("RUNNEL_BENCH_ROUNDS", 5).max(5)
    } else {
        println!("runnel-store bench: smoke run (use `cargo bench` for figures)");
        1
    };
    println!(
        "runnel-store benchmark: {rounds} rounds per figure; a shared 2-core machine where other \
         builds may be running, so compare figures within one run"
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let only = std::env::var("RUNNEL_BENCH_DATABASES").unwrap_or_default();
        for kind in [DatabaseKind::Sqlite, DatabaseKind::Postgres] {
            if !only.is_empty() && !only.contains(kind.as_str()) {
                continue;
            }
            with_temp_db(kind, async |temp| {
                write_throughput(kind, temp.url(), rounds).await
            })
            .await;
            with_temp_db(kind, async |temp| {
                page_times(kind, temp.url(), rounds).await
            })
            .await;
        }
    });
}
