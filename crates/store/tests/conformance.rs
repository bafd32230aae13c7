//! The store conformance suite against SQLite (a temporary file) and
//! PostgreSQL (a fresh database per case; needs `RUNNEL_TEST_POSTGRES_URL`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod sqlite {
    runnel_store::conformance_tests!(runnel_store::conformance::DbHarness::sqlite());
}

mod postgres {
    runnel_store::conformance_tests!(runnel_store::conformance::DbHarness::postgres());
}

/// The core's in-memory fake, which the engine tests run on: the same suite
/// proves it faithful to the SQL stores.
mod memory {
    use std::sync::Arc;
    use std::time::Instant;

    use runnel_core::memory::MemoryStore;
    use runnel_core::{
        CallSpec, Claim, DatasetId, EvaluatorId, EvaluatorSpec, ExampleData, ExampleId,
        ExperimentId, ExperimentPlan, LogLevel, ReplicaId,
    };
    use runnel_store::conformance::{ExperimentState, Harness, StoredAnnotation, StoredRun};
    use serde_json::json;

    pub(super) struct MemoryHarness(MemoryStore);

    pub(super) async fn harness() -> MemoryHarness {
        MemoryHarness(MemoryStore::new(Arc::new(Instant::now)))
    }

    fn call() -> CallSpec {
        serde_json::from_value(json!({"provider": "sim", "model": "echo", "messages": []}))
            .expect("a valid call spec")
    }

    fn examples(first: usize, count: usize) -> Vec<ExampleData> {
        (first..first + count)
            .map(|i| ExampleData {
                input: json!({"n": i}),
                expected: Some(json!(i * 10)),
                metadata: json!({"i": i}),
            })
            .collect()
    }

    fn evaluator(name: &str) -> EvaluatorSpec {
        EvaluatorSpec {
            id: EvaluatorId(0),
            name: name.to_owned(),
            call: call(),
            labels: vec![],
        }
    }

    impl Harness for MemoryHarness {
        type Store = MemoryStore;

        fn store(&self) -> &MemoryStore {
            &self.0
        }

        async fn create_dataset(&self, count: usize) -> (DatasetId, Vec<ExampleId>) {
            let dataset = self.0.create_dataset(Vec::new());
            (dataset, self.0.add_examples(dataset, examples(0, count)))
        }

        async fn add_examples(
            &self,
            dataset: DatasetId,
            first: usize,
            count: usize,
        ) -> Vec<ExampleId> {
            self.0.add_examples(dataset, examples(first, count))
        }

        async fn create_experiment(
            &self,
            dataset: DatasetId,
            repetitions: u32,
            evaluators: &[&str],
        ) -> (ExperimentId, Vec<EvaluatorId>) {
            let plan = ExperimentPlan {
                id: ExperimentId(uuid::Uuid::nil()),
                dataset,
                repetitions,
                max_concurrency: None,
                task: call(),
                evaluators: evaluators.iter().map(|n| evaluator(n)).collect(),
            };
            let id = self.0.create_experiment(dataset, plan);
            let row = self.0.experiment(id).expect("just created");
            (id, row.plan.evaluators.iter().map(|e| e.id).collect())
        }

        async fn attach_evaluator(&self, experiment: ExperimentId, name: &str) -> EvaluatorId {
            self.0
                .attach_evaluator(experiment, evaluator(name))
                .expect("the experiment exists")
        }

        async fn start(&self, experiment: ExperimentId, replica: &ReplicaId) -> Claim {
            self.0
                .start(experiment, replica)
                .unwrap_or_else(|| panic!("start of {experiment} was refused"))
        }

        async fn stop(&self, experiment: ExperimentId) {
            assert!(self.0.stop(experiment), "stop of {experiment}");
        }

        async fn delete(&self, experiment: ExperimentId) {
            assert!(self.0.delete(experiment));
        }

        async fn state(&self, experiment: ExperimentId) -> Option<ExperimentState> {
            self.0.experiment(experiment).map(|row| ExperimentState {
                status: row.status,
                claimed_by: row.claimed_by,
                epoch: row.epoch,
                last_error: row.last_error,
            })
        }

        async fn runs(&self, experiment: ExperimentId) -> Vec<StoredRun> {
            let mut runs: Vec<StoredRun> = self
                .0
                .runs(experiment)
                .into_iter()
                .map(|r| StoredRun {
                    id: r.id,
                    key: r.key,
                    output: r.record.output,
                    error: r.record.error,
                    attempts: r.record.attempts,
                    epoch: r.epoch,
                })
                .collect();
            runs.sort_by_key(|r| r.id);
            runs
        }

        async fn annotations(&self, experiment: ExperimentId) -> Vec<StoredAnnotation> {
            self.0
                .annotations(experiment)
                .into_iter()
                .map(|a| StoredAnnotation {
                    key: a.key,
                    label: a.record.label,
                    error: a.record.error,
                    epoch: a.epoch,
                })
                .collect()
        }

        async fn logs(&self, experiment: ExperimentId) -> Vec<(LogLevel, String)> {
            let mut logs = self.0.logs(experiment);
            logs.reverse();
            logs
        }
    }

    runnel_store::conformance_tests!(harness());
}
