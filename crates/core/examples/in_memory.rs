//! Runs one experiment through the engine with in-memory ports: a dataset of
//! 50 examples, two repetitions, one evaluator, a provider that answers after
//! a few milliseconds and rate-limits one call in ten.
//!
//! `cargo run -p runnel-core --example in_memory`
//!
//! This is the whole wiring another team needs: a `Store`, a `Provider`, an
//! `Advisor`, a `Clock` and an `EventSink`, handed to `Engine::new`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_methods)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use runnel_core::memory::{FnProvider, MemoryStore, Unlimited};
use runnel_core::{
    CallSpec, Clock, Config, DatasetId, Departure, Engine, EngineEvent, EvaluatorId, EvaluatorSpec,
    EventSink, ExampleData, ExperimentId, ExperimentPlan, Message, Outcome, Ports, ReplicaId,
    Reply,
};
use tokio::sync::mpsc;

// tokio's clock behind the `Clock` port (virtual under `start_paused`): the
// core's tests, benchmark and this example share one implementation. An
// application writes the same few lines (the server has `runtime::TokioClock`).
#[path = "../src/tests/tokio_clock.rs"]
mod tokio_clock;
use tokio_clock::TokioClock;

/// Sends every event to the main task.
struct Events(mpsc::UnboundedSender<EngineEvent>);

impl EventSink for Events {
    fn emit(&self, event: EngineEvent) {
        let _ = self.0.send(event);
    }
}

fn call(provider: &str, content: &str) -> CallSpec {
    CallSpec {
        provider: provider.into(),
        model: "demo-model".into(),
        messages: vec![Message {
            role: "user".into(),
            content: content.into(),
        }],
        params: Default::default(),
        timeout_s: Some(5.0),
        stream: false,
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let store = Arc::new(MemoryStore::new(Arc::new(|| {
        tokio::time::Instant::now().into_std()
    })));
    let examples = (0..50)
        .map(|i| ExampleData {
            input: serde_json::json!({ "question": format!("What is {i} + {i}?") }),
            expected: Some(serde_json::json!(i * 2)),
            metadata: serde_json::Value::Null,
        })
        .collect();
    let dataset = store.create_dataset(examples);
    let experiment = store.create_experiment(
        dataset,
        ExperimentPlan {
            id: ExperimentId(uuid::Uuid::nil()),
            dataset: DatasetId(uuid::Uuid::nil()),
            repetitions: 2,
            max_concurrency: Some(8),
            task: call("task-provider", "{{input.question}}"),
            evaluators: vec![EvaluatorSpec {
                id: EvaluatorId(0),
                name: "correct".into(),
                call: call("judge-provider", "Expected {{expected}}; got {{output}}."),
                labels: vec!["CORRECT".into(), "INCORRECT".into()],
            }],
        },
    );

    let clock = Arc::new(TokioClock);
    let calls = Arc::new(AtomicU64::new(0));
    let counted = calls.clone();
    let provider = FnProvider::new(clock.clone(), move |job| {
        let n = counted.fetch_add(1, Ordering::Relaxed);
        let outcome = if n % 10 == 9 {
            Outcome::RateLimited {
                retry_after: Some(Duration::from_millis(50)),
                scope: runnel_core::LimitScope::Unknown,
                message: "429 Too Many Requests".into(),
            }
        } else if job.is_task() {
            Outcome::Success(Reply::Task {
                output: "an answer".into(),
            })
        } else {
            Outcome::Success(Reply::Eval {
                label: Some("CORRECT".into()),
                score: Some(1.0),
                explanation: None,
            })
        };
        (Duration::from_millis(5), outcome)
    });

    let (tx, mut rx) = mpsc::unbounded_channel();
    let replica = ReplicaId::new("example");
    let ports = Ports {
        store: store.clone(),
        provider: Arc::new(provider),
        advisor: Arc::new(Unlimited),
        clock,
        events: Arc::new(Events(tx)),
    };
    let (engine, handle) = Engine::new(Config::default(), replica.clone(), ports);
    let task = tokio::spawn(engine.run());

    // Claim only once the engine has finished its start-up reclaim.
    handle.started().await.unwrap();
    let claim = store.start(experiment, &replica).expect("not claimed yet");
    handle.adopt(claim).unwrap();

    let started = Instant::now();
    let (mut runs, mut annotations) = (0, 0);
    while let Some(event) = rx.recv().await {
        match event {
            EngineEvent::RunRecorded { .. } => runs += 1,
            EngineEvent::AnnotationRecorded { .. } => annotations += 1,
            EngineEvent::Departed { why, .. } => {
                assert_eq!(why, Departure::Completed);
                break;
            }
            _ => {}
        }
    }
    handle.shutdown().await.unwrap();
    task.await.unwrap();

    let row = store.experiment(experiment).unwrap();
    println!(
        "experiment {experiment}: {} after {:.2?} — {runs} runs and {annotations} annotations recorded, {} provider calls (rate-limited ones retried)",
        row.status,
        started.elapsed(),
        calls.load(Ordering::Relaxed)
    );
    assert_eq!(store.runs(experiment).len(), 100);
    assert_eq!(store.annotations(experiment).len(), 100);
}
