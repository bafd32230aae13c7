//! Helpers shared by the integration tests: running one test on both
//! databases, and seeding.

#![allow(dead_code)]

use runnel_core::{CallSpec, DatasetId, ExampleId, ExperimentId};
use runnel_store::{Db, NewEvaluator, NewExample, NewExperiment, StoreConfig};
use serde_json::json;

/// Defines, for each listed `async fn name(kind: DatabaseKind)`, a test
/// `sqlite::name` and a test `postgres::name` (on a multi-threaded runtime,
/// so that concurrent tasks really run in parallel).
#[macro_export]
macro_rules! on_both_databases {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(runnel_store::DatabaseKind::Sqlite).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(runnel_store::DatabaseKind::Postgres).await;
                }
            )*
        }
    };
}

pub(crate) fn call() -> CallSpec {
    serde_json::from_value(json!({
        "provider": "sim", "model": "echo",
        "messages": [{"role": "user", "content": "{{input.n}}"}]
    }))
    .unwrap()
}

pub(crate) fn examples(first: usize, count: usize) -> Vec<NewExample> {
    (first..first + count)
        .map(|i| NewExample::new(json!({"n": i})))
        .collect()
}

pub(crate) fn evaluator(name: &str) -> NewEvaluator {
    NewEvaluator {
        name: name.to_owned(),
        call: call(),
        labels: vec!["CORRECT".into(), "INCORRECT".into()],
    }
}

pub(crate) fn experiment(
    dataset: DatasetId,
    repetitions: u32,
    evaluators: &[&str],
) -> NewExperiment {
    NewExperiment {
        dataset_id: dataset,
        name: "test".into(),
        repetitions,
        max_concurrency: None,
        task: call(),
        evaluators: evaluators.iter().map(|n| evaluator(n)).collect(),
    }
}

pub(crate) async fn connect(url: &str) -> Db {
    Db::connect(&StoreConfig::for_url(url)).await.unwrap()
}

/// A dataset of `n` examples and an experiment over it; returns the
/// experiment and the example ids.
pub(crate) async fn seed(
    db: &Db,
    n: usize,
    repetitions: u32,
    evaluators: &[&str],
) -> (ExperimentId, Vec<ExampleId>) {
    let dataset = db.create_dataset("seed", &examples(0, n)).await.unwrap();
    let ids = runnel_store::testing::example_ids(db, dataset.id).await;
    let x = db
        .create_experiment(&experiment(dataset.id, repetitions, evaluators))
        .await
        .unwrap();
    (x, ids)
}
