//! Benchmark of the scheduling core (`cargo xtask bench core`).
//!
//! Three figures, each the median of several runs with min–max:
//! 1. the sans-I/O scheduler alone: dispatch + complete + write-ack cycles per
//!    second with 100 experiments (synthetic pages, no store);
//! 2. the per-dispatch cost with 10,000 vs 1,000,000 queued jobs (it must be
//!    flat: only a page of each experiment is ever in memory);
//! 3. the whole async engine with in-memory ports (MemoryStore, a provider
//!    answering at once, an advisor that always permits) on a 2-worker tokio
//!    runtime, against a baseline measured in the same run: the same number
//!    of bare `tokio::spawn` + channel round trips, the floor of an engine
//!    that runs each call in its own task.
//!
//! `--quick` shrinks every size; `--json` prints one JSON object at the end.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    missing_docs,
    clippy::disallowed_methods
)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use runnel_core::memory::{FnProvider, MemoryStore, Unlimited};
use runnel_core::scheduler::{Action, PlanKeys, Scheduler, WriteResult};
use runnel_core::{
    CallReport, CallSpec, Claim, Clock, Config, DatasetId, Engine, EngineEvent, Epoch, EventSink,
    ExampleData, ExampleId, ExperimentId, ExperimentPlan, Outcome, Ports, RateKey, ReplicaId,
    Reply, RunId, RunWrite, TaskKey, TaskWork, Write,
};

// tokio's clock behind the `Clock` port: one implementation shared with the
// core's tests and example.
#[path = "../src/tests/tokio_clock.rs"]
mod tokio_clock;
use tokio_clock::TokioClock;

// The server binary uses mimalloc too: with glibc's malloc, jobs allocated on
// one worker thread and freed on another contend on its arena locks.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn call(provider: &str) -> CallSpec {
    CallSpec {
        provider: provider.into(),
        model: "m".into(),
        messages: vec![],
        params: Default::default(),
        timeout_s: None,
        stream: false,
    }
}

fn plan(id: ExperimentId) -> ExperimentPlan {
    ExperimentPlan {
        id,
        dataset: DatasetId(uuid::Uuid::nil()),
        repetitions: 1,
        max_concurrency: None,
        task: call("p"),
        evaluators: vec![],
    }
}

/// Drives the scheduler alone for `total` cycles over `experiments`
/// experiments of `per_experiment` tasks each; returns cycles per second.
fn scheduler_cycles(experiments: usize, per_experiment: i64, total: u64) -> f64 {
    let config = Config {
        max_concurrency: 20,
        ..Config::default()
    };
    let mut scheduler = Scheduler::new(config, 1);
    let data = Arc::new(ExampleData::default());
    let base = Instant::now();
    let now = base;
    for n in 0..experiments {
        let claim = Claim {
            experiment: ExperimentId(uuid::Uuid::from_u128(n as u128 + 1)),
            replica: ReplicaId::new("bench"),
            epoch: Epoch(1),
        };
        let keys = PlanKeys {
            task: RateKey::new("p", &format!("m{n}")),
            evaluators: vec![],
        };
        scheduler
            .insert(claim.clone(), &plan(claim.experiment), keys, now)
            .unwrap();
    }
    let mut run_id = 0;
    let mut in_flight = Vec::with_capacity(32);
    let mut done = 0u64;
    let started = Instant::now();
    while done < total {
        // Perform actions: pages come from a generator, writes are acked.
        while let Some(action) = scheduler.poll_action() {
            match action {
                Action::FetchTasks {
                    claim,
                    after,
                    limit,
                } => {
                    let first = after.map_or(0, |a| a.example.0 + 1);
                    let page = (first..per_experiment)
                        .take(limit)
                        .map(|e| TaskWork {
                            key: TaskKey {
                                example: ExampleId(e),
                                repetition: 0,
                            },
                            data: data.clone(),
                        })
                        .collect();
                    scheduler.handle_task_page(&claim, Ok(page), now);
                }
                Action::FetchEvals { claim, .. } => {
                    scheduler.handle_eval_page(&claim, Ok(vec![]), now)
                }
                Action::WriteRun { claim, record } => {
                    run_id += 1;
                    let result = WriteResult::Done(Write::Accepted(RunWrite {
                        id: RunId(run_id),
                        new_success: true,
                    }));
                    scheduler.handle_run_written(&claim, record.key, result, now);
                    done += 1;
                }
                _ => {}
            }
        }
        while let Some(job) = scheduler.poll_dispatch(now, &Unlimited, &|_| None) {
            in_flight.push(job);
        }
        if in_flight.is_empty() {
            break;
        }
        for job in in_flight.drain(..) {
            let report = CallReport::new(
                Outcome::Success(Reply::Task {
                    output: String::new(),
                }),
                Duration::ZERO,
            );
            scheduler.handle_call_finished(job, report, now, &Unlimited);
        }
    }
    done as f64 / started.elapsed().as_secs_f64()
}

struct Counter {
    runs: AtomicU64,
    done: tokio::sync::Notify,
    target: u64,
}

impl EventSink for Counter {
    fn emit(&self, event: EngineEvent) {
        if let EngineEvent::RunRecorded { .. } = event
            && self.runs.fetch_add(1, Ordering::Relaxed) + 1 == self.target
        {
            self.done.notify_one();
        }
    }
}

/// Runs the whole engine over in-memory ports; returns cycles per second.
fn engine_cycles(experiments: usize, per_experiment: usize) -> f64 {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_time()
        .build()
        .unwrap();
    runtime.block_on(async move {
        let store = Arc::new(MemoryStore::new(Arc::new(|| {
            tokio::time::Instant::now().into_std()
        })));
        let replica = ReplicaId::new("bench");
        for n in 0..experiments {
            let dataset = store.create_dataset(
                (0..per_experiment)
                    .map(|_| ExampleData::default())
                    .collect(),
            );
            let mut p = plan(ExperimentId(uuid::Uuid::nil()));
            p.task = call(&format!("p{n}"));
            let id = store.create_experiment(dataset, p);
            store.start(id, &replica).unwrap();
        }
        let clock = Arc::new(TokioClock);
        let provider = FnProvider::new(clock.clone(), |_| {
            (
                Duration::ZERO,
                Outcome::Success(Reply::Task { output: "o".into() }),
            )
        });
        let target = (experiments * per_experiment) as u64;
        let counter = Arc::new(Counter {
            runs: AtomicU64::new(0),
            done: tokio::sync::Notify::new(),
            target,
        });
        let ports = Ports {
            store,
            provider: Arc::new(provider),
            advisor: Arc::new(Unlimited),
            clock,
            events: counter.clone(),
        };
        let config = Config {
            max_concurrency: 20,
            ..Config::default()
        };
        let (engine, handle) = Engine::new(config, replica, ports);
        let started = Instant::now();
        let task = tokio::spawn(engine.run());
        counter.done.notified().await;
        let elapsed = started.elapsed();
        handle.shutdown().await.unwrap();
        task.await.unwrap();
        target as f64 / elapsed.as_secs_f64()
    })
}

/// The floor: `total` bare spawn + channel round trips with 20 in flight.
fn baseline_round_trips(total: u64) -> f64 {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_time()
        .build()
        .unwrap();
    runtime.block_on(async move {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<u64>();
        let started = Instant::now();
        let mut sent = 0;
        for _ in 0..20 {
            let tx = tx.clone();
            tokio::spawn(async move {
                let _ = tx.send(0);
            });
            sent += 1;
        }
        let mut received = 0;
        while received < total {
            rx.recv().await.unwrap();
            received += 1;
            if sent < total {
                let tx = tx.clone();
                tokio::spawn(async move {
                    let _ = tx.send(0);
                });
                sent += 1;
            }
        }
        total as f64 / started.elapsed().as_secs_f64()
    })
}

struct Figure {
    median: f64,
    min: f64,
    max: f64,
}

fn measure(runs: usize, mut f: impl FnMut() -> f64) -> Figure {
    let mut values: Vec<f64> = (0..runs).map(|_| f()).collect();
    values.sort_by(|a, b| a.total_cmp(b));
    Figure {
        median: values[values.len() / 2],
        min: values[0],
        max: values[values.len() - 1],
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    // `cargo bench` passes `--bench`; `cargo test --all-targets` runs this
    // binary without it, and then a small smoke run checks that it works.
    let measuring = args.iter().any(|a| a == "--bench");
    let quick = args.iter().any(|a| a == "--quick");
    let json = args.iter().any(|a| a == "--json");
    let (runs, scale): (usize, usize) = match (measuring, quick) {
        (false, _) => (1, 100),
        (true, true) => (3, 10),
        (true, false) => (5, 1),
    };
    if !measuring {
        println!("runnel-core bench: smoke run (use `cargo bench` for figures)");
    }

    println!(
        "runnel-core benchmark ({} runs each, median [min–max])",
        runs
    );
    println!(
        "machine: {} logical CPUs (shared; other work may run alongside)",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );

    let sched = measure(runs, || {
        scheduler_cycles(100, 10_000, 1_000_000 / scale as u64)
    });
    println!(
        "scheduler alone, 100 experiments:        {:>12.0} cycles/s [{:.0}–{:.0}]  (goal ≥ 200,000)",
        sched.median, sched.min, sched.max
    );

    // Per-dispatch cost against the number of queued jobs.
    let small = measure(runs, || scheduler_cycles(1, 10_000, 10_000));
    let large = measure(runs, || {
        scheduler_cycles(1, 1_000_000 / scale as i64, 200_000 / scale as u64)
    });
    let ns_small = 1e9 / small.median;
    let ns_large = 1e9 / large.median;
    println!(
        "per cycle, 10,000 queued jobs:           {:>12.0} ns",
        ns_small
    );
    println!(
        "per cycle, {:>9} queued jobs:         {:>12.0} ns   (ratio {:.2}; goal ≈ 1)",
        1_000_000 / scale,
        ns_large,
        ns_large / ns_small
    );

    let per_experiment = 2_000 / scale;
    let engine = measure(runs, || engine_cycles(100, per_experiment));
    let baseline = measure(runs, || baseline_round_trips((100 * per_experiment) as u64));
    println!(
        "engine + memory ports, 100 experiments:  {:>12.0} cycles/s [{:.0}–{:.0}]  (goal ≥ 200,000)",
        engine.median, engine.min, engine.max
    );
    println!(
        "baseline spawn+channel round trips:      {:>12.0} /s [{:.0}–{:.0}]",
        baseline.median, baseline.min, baseline.max
    );
    println!(
        "engine ÷ baseline:                       {:>12.2}",
        engine.median / baseline.median
    );
    if json {
        println!(
            "{{\"scheduler_cycles_per_s\":{:.0},\"ns_per_cycle_10k\":{:.1},\"ns_per_cycle_1m\":{:.1},\"engine_cycles_per_s\":{:.0},\"baseline_round_trips_per_s\":{:.0},\"runs\":{}}}",
            sched.median, ns_small, ns_large, engine.median, baseline.median, runs
        );
    }
}
