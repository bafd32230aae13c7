//! A walk through the store, as the server and the engine use it: import a
//! dataset, create and start an experiment, do its work the way the engine
//! does (pages of missing work, fenced writes), finish it, and read the
//! results and progress back.
//!
//! ```sh
//! cargo run -p runnel-store --example walkthrough          # a temporary SQLite file
//! createdb -h 127.0.0.1 -U postgres runnel_demo
//! cargo run -p runnel-store --example walkthrough -- postgres://postgres@127.0.0.1:5432/runnel_demo
//! ```
//!
//! A PostgreSQL database given here is migrated to runnel's schema; the
//! walkthrough deletes its experiment afterwards but keeps the dataset.

use std::time::Duration;

use runnel_core::{AnnotationRecord, Finish, RunRecord, Store, Write};
use runnel_store::{Db, NewEvaluator, NewExample, NewExperiment, StoreConfig, Transition};
use serde_json::json;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = match std::env::args().nth(1) {
        Some(url) => url,
        None => {
            let dir =
                std::env::temp_dir().join(format!("runnel-walkthrough-{}", std::process::id()));
            format!("sqlite://{}", dir.join("runnel.db").display())
        }
    };
    println!("store: {}", runnel_store::redact_url(&url));
    let db = Db::connect(&StoreConfig::for_url(&url)).await?;
    let me = db.replica_id(None)?;
    println!("replica id: {me}");

    // The API side: a dataset and an experiment with one judge.
    let examples: Vec<NewExample> = ["2+2", "3*3", "10-4"]
        .iter()
        .map(|q| NewExample {
            input: json!({"question": q}),
            expected: None,
            metadata: None,
        })
        .collect();
    let dataset = db.create_dataset("arithmetic", &examples).await?;
    let call = |content: &str| {
        serde_json::from_value(json!({
            "provider": "sim", "model": "echo",
            "messages": [{"role": "user", "content": content}]
        }))
    };
    let experiment = db
        .create_experiment(&NewExperiment {
            dataset_id: dataset.id,
            name: "walkthrough".into(),
            repetitions: 2,
            max_concurrency: None,
            task: call("Compute {{input.question}}")?,
            evaluators: vec![NewEvaluator {
                name: "correct".into(),
                call: call("Is {{output}} right?")?,
                labels: vec!["CORRECT".into(), "INCORRECT".into()],
            }],
        })
        .await?;
    let Transition::Done(claim) = db.start(experiment, &me).await? else {
        return Err("the experiment could not be started".into());
    };
    println!("started {experiment} under epoch {}", claim.epoch);

    // The engine side: reconstruct the work, do it, write it (fenced).
    let tasks = db.task_page(&claim, None, 100).await?;
    println!("task work: {} example × repetition pairs", tasks.len());
    for work in &tasks {
        let question = work.data.input["question"].as_str().unwrap_or_default();
        let record = RunRecord {
            key: work.key,
            output: Some(format!("the answer to {question}")),
            error: None,
            attempts: 1,
            latency_ms: 120,
            total_latency_ms: 120,
            usage: None,
        };
        match db.record_run(&claim, record).await? {
            Write::Accepted(w) => {
                println!("  run {} stored (new success: {})", w.id, w.new_success)
            }
            Write::Fenced => println!("  fenced: another replica owns the experiment now"),
        }
    }
    let evals = db.eval_page(&claim, None, 100).await?;
    println!("eval work: {} run × evaluator pairs", evals.len());
    for work in evals {
        let record = AnnotationRecord {
            key: work.key,
            label: Some("CORRECT".into()),
            score: Some(1.0),
            explanation: None,
            error: None,
            attempts: 1,
            latency_ms: 80,
            usage: None,
        };
        db.record_annotation(&claim, record).await?;
    }
    db.log(
        experiment,
        runnel_core::LogLevel::Info,
        "all work done".into(),
    )
    .await?;
    println!("finished: {}", db.finish(&claim, &Finish::Completed).await?);

    // The API side again: progress, results, logs, and a toggle refused
    // during its cooldown.
    let view = db.experiment(experiment).await?;
    println!("status {} progress {:?}", view.status, view.progress);
    let page = db.runs_page(experiment, None, 10).await?;
    for run in &page.items {
        let labels: Vec<_> = run
            .annotations
            .iter()
            .filter_map(|a| a.label.clone())
            .collect();
        println!(
            "  run {} example {} rep {}: {:?} {labels:?}",
            run.id,
            run.example_id,
            run.repetition,
            run.output.as_deref().unwrap_or("-")
        );
    }
    for entry in db.logs(experiment, None, 10).await? {
        println!("  log [{:?}] {}", entry.level, entry.message);
    }
    let cooldown = Duration::from_secs(5);
    println!("resume: {:?}", db.resume(experiment, &me, cooldown).await?);
    println!(
        "stop right after: {:?}",
        db.stop(experiment, cooldown).await?
    );
    println!("fenced writes so far: {}", db.fenced_writes());
    if let Some(file) = db.sqlite_file().map(ToOwned::to_owned) {
        db.close().await;
        if let Some(dir) = file.parent() {
            std::fs::remove_dir_all(dir)?;
        }
    } else {
        db.delete_experiment(experiment).await?;
        db.close().await;
    }
    Ok(())
}
