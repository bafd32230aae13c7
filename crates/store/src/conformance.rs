//! The store conformance suite (feature `conformance`): the semantics of the
//! [`Store`] port, checked the same way against every implementation — the
//! SQLite and PostgreSQL stores of this crate and the core's in-memory fake —
//! so the engine's tests, run on the fake, say something about production.
//!
//! An implementation joins the suite by implementing [`Harness`] (how to seed
//! datasets and experiments and how to read rows back, which the port does not
//! cover) and invoking [`conformance_tests!`](crate::conformance_tests) in a
//! test file:
//!
//! ```text
//! runnel_store::conformance_tests!(runnel_store::conformance::DbHarness::sqlite());
//! ```
//!
//! Each case gets a fresh harness, so cases can run in parallel.

// This module is test code: a failed check or a failed helper call panics,
// which is how a test reports it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use runnel_core::{
    AnnotationRecord, CallSpec, Claim, DatasetId, Epoch, EvalKey, EvaluatorId, ExampleId,
    ExperimentId, ExperimentStatus, Finish, LogLevel, ReplicaId, RunId, RunRecord, RunWrite, Store,
    TaskKey, Usage, Write,
};
use serde_json::json;

use crate::StoreConfig;
use crate::db::{DatabaseKind, Db};
use crate::testing::TempDatabase;
use crate::types::{NewEvaluator, NewExample, NewExperiment, Transition};

/// A lease no claim made during a test reaches.
pub const HOUR: Duration = Duration::from_secs(3600);

/// The lifecycle columns of an experiment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExperimentState {
    /// Its status.
    pub status: ExperimentStatus,
    /// Who holds the claim.
    pub claimed_by: Option<ReplicaId>,
    /// The current epoch.
    pub epoch: Epoch,
    /// The last error.
    pub last_error: Option<String>,
}

/// A stored run, as the suite checks it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredRun {
    /// Its id.
    pub id: RunId,
    /// Example × repetition.
    pub key: TaskKey,
    /// The output (success).
    pub output: Option<String>,
    /// The error (failure).
    pub error: Option<String>,
    /// Provider calls made.
    pub attempts: u32,
    /// The epoch that wrote it.
    pub epoch: Epoch,
}

/// A stored annotation, as the suite checks it.
#[derive(Clone, Debug, PartialEq)]
pub struct StoredAnnotation {
    /// Run × evaluator.
    pub key: EvalKey,
    /// The label (success).
    pub label: Option<String>,
    /// The error (failure).
    pub error: Option<String>,
    /// The epoch that wrote it.
    pub epoch: Epoch,
}

/// What the suite needs beyond the port: seeding and reading back. Helpers
/// may panic on failure (they are test code).
pub trait Harness {
    /// The store under test.
    type Store: Store;

    /// The store under test.
    fn store(&self) -> &Self::Store;

    /// Creates a dataset of `examples` examples; example `i` (from 0) has
    /// input `{"n": i}`, expected `i * 10` and metadata `{"i": i}`. Returns
    /// the example ids in creation order.
    fn create_dataset(&self, examples: usize) -> impl Future<Output = (DatasetId, Vec<ExampleId>)>;

    /// Appends `count` examples numbered from `first` like `create_dataset`.
    fn add_examples(
        &self,
        dataset: DatasetId,
        first: usize,
        count: usize,
    ) -> impl Future<Output = Vec<ExampleId>>;

    /// Creates a STOPPED experiment with evaluators named `evaluators`.
    fn create_experiment(
        &self,
        dataset: DatasetId,
        repetitions: u32,
        evaluators: &[&str],
    ) -> impl Future<Output = (ExperimentId, Vec<EvaluatorId>)>;

    /// Attaches an evaluator.
    fn attach_evaluator(
        &self,
        experiment: ExperimentId,
        name: &str,
    ) -> impl Future<Output = EvaluatorId>;

    /// Starts (or resumes, without cooldown) the experiment for `replica`;
    /// panics unless it was claimed.
    fn start(&self, experiment: ExperimentId, replica: &ReplicaId) -> impl Future<Output = Claim>;

    /// Stops the experiment without setting a cooldown; panics unless it was
    /// running.
    fn stop(&self, experiment: ExperimentId) -> impl Future<Output = ()>;

    /// Deletes the experiment.
    fn delete(&self, experiment: ExperimentId) -> impl Future<Output = ()>;

    /// The experiment's lifecycle columns, `None` when it does not exist.
    fn state(&self, experiment: ExperimentId) -> impl Future<Output = Option<ExperimentState>>;

    /// The experiment's runs in id order.
    fn runs(&self, experiment: ExperimentId) -> impl Future<Output = Vec<StoredRun>>;

    /// The experiment's annotations in (run, evaluator) order.
    fn annotations(&self, experiment: ExperimentId) -> impl Future<Output = Vec<StoredAnnotation>>;

    /// The experiment's log, newest first.
    fn logs(&self, experiment: ExperimentId) -> impl Future<Output = Vec<(LogLevel, String)>>;

    /// Releases what the harness holds (closes pools, drops databases).
    fn finish(self) -> impl Future<Output = ()>
    where
        Self: Sized,
    {
        async {}
    }
}

/// Defines one `#[tokio::test]` per conformance case, each on a fresh
/// harness built by `$make` (an expression evaluating to a future of a
/// [`Harness`]). The harness is finished even when a case fails.
#[macro_export]
macro_rules! conformance_tests {
    ($make:expr) => {
        $crate::conformance_tests!(@cases $make;
            claims_follow_the_lifecycle,
            a_restarted_replica_reclaims_its_own,
            finish_needs_the_current_claim,
            writes_are_fenced_by_epoch,
            runs_keep_successes_and_replace_failures,
            annotations_keep_successes_and_replace_failures,
            task_pages_reconstruct_missing_work,
            eval_pages_reconstruct_missing_annotations,
            plans_describe_the_experiment,
            logs_are_appended,
            missing_experiments_and_empty_pages,
            long_sweeps_page_through_everything_once,
            writes_to_one_row_in_flight_together_keep_their_order,
        );
    };
    (@cases $make:expr; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test]
            async fn $case() {
                let harness = $make.await;
                let outcome = $crate::__private::futures::FutureExt::catch_unwind(
                    ::std::panic::AssertUnwindSafe($crate::conformance::$case(&harness)),
                )
                .await;
                $crate::conformance::Harness::finish(harness).await;
                if let Err(panic) = outcome {
                    ::std::panic::resume_unwind(panic);
                }
            }
        )*
    };
}

fn replica(name: &str) -> ReplicaId {
    ReplicaId::new(name)
}

fn success(example: ExampleId, repetition: u32, output: &str) -> RunRecord {
    RunRecord {
        key: TaskKey {
            example,
            repetition,
        },
        output: Some(output.to_owned()),
        error: None,
        attempts: 1,
        latency_ms: 120,
        total_latency_ms: 120,
        usage: Some(Usage {
            prompt_tokens: 10,
            completion_tokens: 5,
        }),
    }
}

fn failure(example: ExampleId, repetition: u32, error: &str, attempts: u32) -> RunRecord {
    RunRecord {
        key: TaskKey {
            example,
            repetition,
        },
        output: None,
        error: Some(error.to_owned()),
        attempts,
        latency_ms: 30,
        total_latency_ms: 90,
        usage: None,
    }
}

fn verdict(
    run: RunId,
    evaluator: EvaluatorId,
    label: Option<&str>,
    error: Option<&str>,
) -> AnnotationRecord {
    AnnotationRecord {
        key: EvalKey { run, evaluator },
        label: label.map(str::to_owned),
        score: label.map(|_| 1.0),
        explanation: label.map(|_| "because".to_owned()),
        error: error.map(str::to_owned),
        attempts: 1,
        latency_ms: 40,
        usage: None,
    }
}

fn accepted_run(write: Write<RunWrite>) -> RunWrite {
    match write {
        Write::Accepted(w) => w,
        Write::Fenced => panic!("the write was fenced, expected it accepted"),
    }
}

fn keys(page: &[runnel_core::TaskWork]) -> Vec<(ExampleId, u32)> {
    page.iter()
        .map(|w| (w.key.example, w.key.repetition))
        .collect()
}

fn pairs(examples: &[ExampleId], repetitions: u32) -> Vec<(ExampleId, u32)> {
    examples
        .iter()
        .flat_map(|e| (0..repetitions).map(move |r| (*e, r)))
        .collect()
}

/// Start, heartbeat, release, takeover: a released claim is taken over at
/// once with a new epoch, and the old owner's heartbeat loses it.
pub async fn claims_follow_the_lifecycle<H: Harness>(h: &H) {
    let s = h.store();
    let (dataset, _) = h.create_dataset(2).await;
    let (x, _) = h.create_experiment(dataset, 1, &[]).await;
    let (a, b) = (replica("replica-a"), replica("replica-b"));
    let claim = h.start(x, &a).await;
    assert_eq!((claim.experiment, &claim.replica), (x, &a));
    assert_eq!(
        s.heartbeat(std::slice::from_ref(&claim)).await.unwrap(),
        vec![x]
    );
    assert!(
        s.take_over_orphans(&b, HOUR).await.unwrap().is_empty(),
        "a fresh claim is no orphan"
    );

    s.release(std::slice::from_ref(&claim)).await.unwrap();
    let state = h.state(x).await.unwrap();
    assert_eq!(
        state.status,
        ExperimentStatus::Running,
        "release keeps RUNNING"
    );
    assert_eq!(state.claimed_by, Some(a.clone()), "release keeps the owner");
    assert_eq!(state.epoch, claim.epoch);

    let taken = s.take_over_orphans(&b, HOUR).await.unwrap();
    let expected = Claim {
        experiment: x,
        replica: b.clone(),
        epoch: Epoch(claim.epoch.0 + 1),
    };
    assert_eq!(taken, vec![expected.clone()]);
    assert!(
        s.heartbeat(std::slice::from_ref(&claim))
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(s.heartbeat(&taken).await.unwrap(), vec![x]);
    assert!(s.take_over_orphans(&a, HOUR).await.unwrap().is_empty());
    let state = h.state(x).await.unwrap();
    assert_eq!((state.claimed_by, state.epoch), (Some(b), expected.epoch));
}

/// `reclaim_own` takes back exactly the replica's RUNNING experiments, each
/// with a new epoch.
pub async fn a_restarted_replica_reclaims_its_own<H: Harness>(h: &H) {
    let s = h.store();
    let (dataset, examples) = h.create_dataset(1).await;
    let (a, b) = (replica("replica-a"), replica("replica-b"));
    let mut mine = Vec::new();
    for _ in 0..2 {
        let (x, _) = h.create_experiment(dataset, 1, &[]).await;
        mine.push(h.start(x, &a).await);
    }
    let (stopped, _) = h.create_experiment(dataset, 1, &[]).await;
    h.start(stopped, &a).await;
    h.stop(stopped).await;
    let (theirs, _) = h.create_experiment(dataset, 1, &[]).await;
    let their_claim = h.start(theirs, &b).await;

    let mut reclaimed = s.reclaim_own(&a).await.unwrap();
    reclaimed.sort_by_key(|c| c.experiment);
    let mut expected: Vec<Claim> = mine
        .iter()
        .map(|c| Claim {
            epoch: Epoch(c.epoch.0 + 1),
            ..c.clone()
        })
        .collect();
    expected.sort_by_key(|c| c.experiment);
    assert_eq!(reclaimed, expected);
    assert!(
        s.heartbeat(&mine).await.unwrap().is_empty(),
        "old epochs are lost"
    );
    let example = examples[0];
    assert_eq!(
        s.record_run(&mine[0], success(example, 0, "before the crash"))
            .await
            .unwrap(),
        Write::Fenced
    );
    let same = reclaimed
        .iter()
        .find(|c| c.experiment == mine[0].experiment)
        .unwrap();
    accepted_run(
        s.record_run(same, success(example, 0, "after"))
            .await
            .unwrap(),
    );
    assert_eq!(s.heartbeat(&reclaimed).await.unwrap().len(), 2);
    assert_eq!(h.state(theirs).await.unwrap().epoch, their_claim.epoch);
    assert_eq!(
        h.state(stopped).await.unwrap().status,
        ExperimentStatus::Stopped
    );
}

/// Only the current owner can complete or fail an experiment; finishing
/// clears the claim.
pub async fn finish_needs_the_current_claim<H: Harness>(h: &H) {
    let s = h.store();
    let (dataset, _) = h.create_dataset(1).await;
    let (x, _) = h.create_experiment(dataset, 1, &[]).await;
    let claim = h.start(x, &replica("replica-a")).await;
    let impostor = Claim {
        replica: replica("replica-b"),
        ..claim.clone()
    };
    let end = Finish::Error("provider down".into());
    assert!(!s.finish(&impostor, &end).await.unwrap());
    assert_eq!(h.state(x).await.unwrap().status, ExperimentStatus::Running);

    assert!(s.finish(&claim, &end).await.unwrap());
    let state = h.state(x).await.unwrap();
    assert_eq!(state.status, ExperimentStatus::Error);
    assert_eq!(state.last_error.as_deref(), Some("provider down"));
    assert_eq!(state.claimed_by, None);
    assert!(
        !s.finish(&claim, &Finish::Completed).await.unwrap(),
        "finished once"
    );

    let again = h.start(x, &replica("replica-a")).await;
    assert_eq!(again.epoch, Epoch(claim.epoch.0 + 1));
    assert!(s.finish(&again, &Finish::Completed).await.unwrap());
    let state = h.state(x).await.unwrap();
    assert_eq!(state.status, ExperimentStatus::Completed);
    assert_eq!(state.last_error, None);
    assert!(s.heartbeat(&[again]).await.unwrap().is_empty());
}

/// The fencing rule: writes under the current epoch are accepted (also after
/// a user stop cleared the owner); after a resume, a takeover or a delete,
/// writes under an older epoch are rejected.
pub async fn writes_are_fenced_by_epoch<H: Harness>(h: &H) {
    let s = h.store();
    let (dataset, examples) = h.create_dataset(5).await;
    let (x, evaluators) = h.create_experiment(dataset, 1, &["judge"]).await;
    let (a, b) = (replica("replica-a"), replica("replica-b"));
    let first = h.start(x, &a).await;
    let r0 = accepted_run(
        s.record_run(&first, success(examples[0], 0, "zero"))
            .await
            .unwrap(),
    );

    h.stop(x).await;
    let r1 = accepted_run(
        s.record_run(&first, success(examples[1], 0, "after stop"))
            .await
            .unwrap(),
    );
    assert!(r1.new_success, "an in-flight result after a stop is kept");
    assert_eq!(
        s.record_annotation(&first, verdict(r0.id, evaluators[0], Some("ok"), None))
            .await
            .unwrap(),
        Write::Accepted(())
    );

    // The same replica claims again: only the epoch tells the claims apart.
    let second = h.start(x, &a).await;
    assert_eq!(second.epoch, Epoch(first.epoch.0 + 1));
    assert_eq!(
        s.record_run(&first, success(examples[2], 0, "stale"))
            .await
            .unwrap(),
        Write::Fenced
    );
    assert_eq!(
        s.record_annotation(&first, verdict(r1.id, evaluators[0], Some("stale"), None))
            .await
            .unwrap(),
        Write::Fenced
    );
    // Another replica with the current epoch: only the owner tells them apart.
    let impostor = Claim {
        replica: b.clone(),
        ..second.clone()
    };
    assert_eq!(
        s.record_run(&impostor, success(examples[2], 0, "impostor"))
            .await
            .unwrap(),
        Write::Fenced
    );
    accepted_run(
        s.record_run(&second, success(examples[2], 0, "two"))
            .await
            .unwrap(),
    );

    s.release(std::slice::from_ref(&second)).await.unwrap();
    let third = s.take_over_orphans(&b, HOUR).await.unwrap().remove(0);
    assert_eq!(
        s.record_run(&second, success(examples[3], 0, "stale"))
            .await
            .unwrap(),
        Write::Fenced
    );
    accepted_run(
        s.record_run(&third, success(examples[3], 0, "three"))
            .await
            .unwrap(),
    );

    let runs = h.runs(x).await;
    let outputs: Vec<_> = runs.iter().map(|r| r.output.clone().unwrap()).collect();
    assert_eq!(outputs, ["zero", "after stop", "two", "three"]);
    let epochs: Vec<_> = runs.iter().map(|r| r.epoch).collect();
    assert_eq!(
        epochs,
        [first.epoch, first.epoch, second.epoch, third.epoch]
    );

    h.delete(x).await;
    assert_eq!(
        s.record_run(&third, success(examples[4], 0, "gone"))
            .await
            .unwrap(),
        Write::Fenced
    );
}

/// A failure is replaced by a later failure or success; a success is never
/// replaced; `new_success` is true only for the write that stored the first
/// success; the run keeps one id.
pub async fn runs_keep_successes_and_replace_failures<H: Harness>(h: &H) {
    let s = h.store();
    let (dataset, examples) = h.create_dataset(1).await;
    let (x, _) = h.create_experiment(dataset, 1, &[]).await;
    let claim = h.start(x, &replica("replica-a")).await;
    let e = examples[0];

    let w1 = accepted_run(
        s.record_run(&claim, failure(e, 0, "timeout", 4))
            .await
            .unwrap(),
    );
    assert!(!w1.new_success);
    let w2 = accepted_run(s.record_run(&claim, failure(e, 0, "503", 2)).await.unwrap());
    assert_eq!((w2.id, w2.new_success), (w1.id, false));
    let run = &h.runs(x).await[0];
    assert_eq!((run.error.as_deref(), run.attempts), (Some("503"), 2));

    let w3 = accepted_run(
        s.record_run(&claim, success(e, 0, "forty-two"))
            .await
            .unwrap(),
    );
    assert_eq!((w3.id, w3.new_success), (w1.id, true));
    let w4 = accepted_run(
        s.record_run(&claim, failure(e, 0, "late", 1))
            .await
            .unwrap(),
    );
    assert_eq!((w4.id, w4.new_success), (w1.id, false));
    let w5 = accepted_run(s.record_run(&claim, success(e, 0, "again")).await.unwrap());
    assert_eq!((w5.id, w5.new_success), (w1.id, false));

    let runs = h.runs(x).await;
    assert_eq!(runs.len(), 1);
    assert_eq!(runs[0].output.as_deref(), Some("forty-two"));
    assert_eq!(runs[0].error, None);
    assert_eq!(
        runs[0].key,
        TaskKey {
            example: e,
            repetition: 0
        }
    );
}

/// The same replacement rules for annotations, per (run, evaluator).
pub async fn annotations_keep_successes_and_replace_failures<H: Harness>(h: &H) {
    let s = h.store();
    let (dataset, examples) = h.create_dataset(1).await;
    let (x, evaluators) = h.create_experiment(dataset, 1, &["a", "b"]).await;
    let claim = h.start(x, &replica("replica-a")).await;
    let run = accepted_run(
        s.record_run(&claim, success(examples[0], 0, "out"))
            .await
            .unwrap(),
    )
    .id;
    let (ea, eb) = (evaluators[0], evaluators[1]);
    let ok = Write::Accepted(());

    assert_eq!(
        s.record_annotation(&claim, verdict(run, ea, None, Some("bad json")))
            .await
            .unwrap(),
        ok
    );
    assert_eq!(
        s.record_annotation(&claim, verdict(run, ea, Some("CORRECT"), None))
            .await
            .unwrap(),
        ok
    );
    assert_eq!(
        s.record_annotation(&claim, verdict(run, ea, None, Some("late")))
            .await
            .unwrap(),
        ok
    );
    assert_eq!(
        s.record_annotation(&claim, verdict(run, ea, Some("WRONG"), None))
            .await
            .unwrap(),
        ok
    );
    assert_eq!(
        s.record_annotation(&claim, verdict(run, eb, None, Some("refused")))
            .await
            .unwrap(),
        ok
    );

    let stored = h.annotations(x).await;
    assert_eq!(stored.len(), 2);
    assert_eq!(
        (
            stored[0].key,
            stored[0].label.as_deref(),
            stored[0].error.as_deref()
        ),
        (EvalKey { run, evaluator: ea }, Some("CORRECT"), None)
    );
    assert_eq!(
        (
            stored[1].key,
            stored[1].label.as_deref(),
            stored[1].error.as_deref()
        ),
        (EvalKey { run, evaluator: eb }, None, Some("refused"))
    );
    assert!(stored.iter().all(|a| a.epoch == claim.epoch));
}

/// Task pages: every example × repetition without a success and without a
/// failure under the current epoch, in key order, strictly after the
/// cursor; examples added later appear; a new epoch retries old failures.
pub async fn task_pages_reconstruct_missing_work<H: Harness>(h: &H) {
    let s = h.store();
    let (dataset, mut examples) = h.create_dataset(3).await;
    let (x, _) = h.create_experiment(dataset, 2, &[]).await;
    let a = replica("replica-a");
    let claim = h.start(x, &a).await;

    let all = s.task_page(&claim, None, 100).await.unwrap();
    assert_eq!(keys(&all), pairs(&examples, 2));
    assert_eq!(all[2].data.input, json!({"n": 1}));
    assert_eq!(all[2].data.expected, Some(json!(10)));
    assert_eq!(all[2].data.metadata, json!({"i": 1}));
    assert!(
        Arc::ptr_eq(&all[2].data, &all[3].data),
        "repetitions of one example share its data within a page"
    );

    let first = s.task_page(&claim, None, 4).await.unwrap();
    assert_eq!(keys(&first), pairs(&examples, 2)[..4]);
    let rest = s.task_page(&claim, Some(first[3].key), 4).await.unwrap();
    assert_eq!(keys(&rest), pairs(&examples, 2)[4..]);
    assert!(
        s.task_page(&claim, Some(rest[1].key), 4)
            .await
            .unwrap()
            .is_empty()
    );

    accepted_run(
        s.record_run(&claim, success(examples[0], 0, "ok"))
            .await
            .unwrap(),
    );
    accepted_run(
        s.record_run(&claim, failure(examples[0], 1, "no", 4))
            .await
            .unwrap(),
    );
    accepted_run(
        s.record_run(&claim, failure(examples[1], 0, "no", 4))
            .await
            .unwrap(),
    );
    let page = s.task_page(&claim, None, 100).await.unwrap();
    assert_eq!(
        keys(&page),
        [(examples[1], 1), (examples[2], 0), (examples[2], 1)],
        "successes and this epoch's failures are not handed out again"
    );

    examples.extend(h.add_examples(dataset, 3, 2).await);
    let page = s.task_page(&claim, Some(page[2].key), 100).await.unwrap();
    assert_eq!(
        keys(&page),
        pairs(&examples[3..], 2),
        "examples added later follow"
    );
    assert_eq!(page[0].data.input, json!({"n": 3}));

    h.stop(x).await;
    let next = h.start(x, &a).await;
    let page = s.task_page(&next, None, 100).await.unwrap();
    let mut expected = vec![(examples[0], 1)];
    expected.extend(pairs(&examples[1..], 2));
    assert_eq!(
        keys(&page),
        expected,
        "a new epoch retries earlier failures"
    );
}

/// Eval pages: successful run × attached evaluator pairs without a
/// successful annotation and without a failure under the current epoch, in
/// (run, evaluator) order after the cursor; an evaluator attached later
/// scores existing runs; a new epoch retries failed annotations.
pub async fn eval_pages_reconstruct_missing_annotations<H: Harness>(h: &H) {
    let s = h.store();
    let (dataset, examples) = h.create_dataset(2).await;
    let (x, evaluators) = h.create_experiment(dataset, 2, &["first"]).await;
    let first = evaluators[0];
    let a = replica("replica-a");
    let claim = h.start(x, &a).await;
    let r00 = accepted_run(
        s.record_run(&claim, success(examples[0], 0, "o00"))
            .await
            .unwrap(),
    )
    .id;
    let r01 = accepted_run(
        s.record_run(&claim, success(examples[0], 1, "o01"))
            .await
            .unwrap(),
    )
    .id;
    accepted_run(
        s.record_run(&claim, failure(examples[1], 0, "down", 4))
            .await
            .unwrap(),
    );
    let r11 = accepted_run(
        s.record_run(&claim, success(examples[1], 1, "o11"))
            .await
            .unwrap(),
    )
    .id;
    let mut runs = [r00, r01, r11];
    runs.sort();

    let page = s.eval_page(&claim, None, 100).await.unwrap();
    let got: Vec<_> = page.iter().map(|w| (w.key.run, w.key.evaluator)).collect();
    assert_eq!(got, runs.iter().map(|r| (*r, first)).collect::<Vec<_>>());
    let w = page.iter().find(|w| w.key.run == r11).unwrap();
    assert_eq!((w.example, &*w.output), (examples[1], "o11"));
    assert_eq!(w.data.input, json!({"n": 1}));

    let ok = Write::Accepted(());
    assert_eq!(
        s.record_annotation(&claim, verdict(r00, first, Some("yes"), None))
            .await
            .unwrap(),
        ok
    );
    assert_eq!(
        s.record_annotation(&claim, verdict(r01, first, None, Some("refused")))
            .await
            .unwrap(),
        ok
    );
    let page = s.eval_page(&claim, None, 100).await.unwrap();
    let got: Vec<_> = page.iter().map(|w| (w.key.run, w.key.evaluator)).collect();
    assert_eq!(
        got,
        [(r11, first)],
        "partially annotated runs keep only what is missing"
    );

    let second = h.attach_evaluator(x, "second").await;
    let mut expected = vec![(r00, second), (r01, second), (r11, first), (r11, second)];
    expected.sort();
    let page = s.eval_page(&claim, None, 100).await.unwrap();
    let got: Vec<_> = page.iter().map(|w| (w.key.run, w.key.evaluator)).collect();
    assert_eq!(
        got, expected,
        "an evaluator attached later scores existing runs"
    );

    let head = s.eval_page(&claim, None, 2).await.unwrap();
    let tail = s.eval_page(&claim, Some(head[1].key), 100).await.unwrap();
    let got: Vec<_> = head
        .iter()
        .chain(&tail)
        .map(|w| (w.key.run, w.key.evaluator))
        .collect();
    assert_eq!(got, expected, "keyset pages cover everything once");

    h.stop(x).await;
    let next = h.start(x, &a).await;
    let page = s.eval_page(&next, None, 100).await.unwrap();
    let got: Vec<_> = page.iter().map(|w| (w.key.run, w.key.evaluator)).collect();
    let mut expected = vec![
        (r00, second),
        (r01, first),
        (r01, second),
        (r11, first),
        (r11, second),
    ];
    expected.sort();
    assert_eq!(got, expected, "a new epoch retries failed annotations");
}

/// `load_plan` reads the dataset, repetitions, task and every attached
/// evaluator.
pub async fn plans_describe_the_experiment<H: Harness>(h: &H) {
    let s = h.store();
    let (dataset, _) = h.create_dataset(1).await;
    let (x, evaluators) = h.create_experiment(dataset, 3, &["judge"]).await;
    let later = h.attach_evaluator(x, "later").await;
    let plan = s.load_plan(x).await.unwrap();
    assert_eq!((plan.id, plan.dataset, plan.repetitions), (x, dataset, 3));
    let names: Vec<_> = plan
        .evaluators
        .iter()
        .map(|e| (e.id, e.name.as_str()))
        .collect();
    assert_eq!(names, [(evaluators[0], "judge"), (later, "later")]);
    h.delete(x).await;
    assert_eq!(s.load_plan(x).await, Err(runnel_core::Error::NotFound(x)));
}

/// Log entries are kept newest first; logging for a missing experiment is
/// `NotFound`.
pub async fn logs_are_appended<H: Harness>(h: &H) {
    let s = h.store();
    let (dataset, _) = h.create_dataset(1).await;
    let (x, _) = h.create_experiment(dataset, 1, &[]).await;
    s.log(x, LogLevel::Info, "started".into()).await.unwrap();
    s.log(x, LogLevel::Warn, "breaker opened".into())
        .await
        .unwrap();
    s.log(x, LogLevel::Error, "gave up".into()).await.unwrap();
    assert_eq!(
        h.logs(x).await,
        [
            (LogLevel::Error, "gave up".to_owned()),
            (LogLevel::Warn, "breaker opened".to_owned()),
            (LogLevel::Info, "started".to_owned()),
        ]
    );
    h.delete(x).await;
    assert_eq!(
        s.log(x, LogLevel::Info, "late".into()).await,
        Err(runnel_core::Error::NotFound(x))
    );
}

/// Edge cases: zero limits give empty pages; work pages of a missing
/// experiment are `NotFound`; it has no claims; an empty claim list is fine.
pub async fn missing_experiments_and_empty_pages<H: Harness>(h: &H) {
    let s = h.store();
    let (dataset, _) = h.create_dataset(2).await;
    let (x, _) = h.create_experiment(dataset, 1, &[]).await;
    let claim = h.start(x, &replica("replica-a")).await;
    assert!(s.task_page(&claim, None, 0).await.unwrap().is_empty());
    assert!(s.eval_page(&claim, None, 0).await.unwrap().is_empty());
    assert!(s.heartbeat(&[]).await.unwrap().is_empty());
    s.release(&[]).await.unwrap();
    h.delete(x).await;
    assert_eq!(h.state(x).await, None);
    assert_eq!(
        s.task_page(&claim, None, 10).await,
        Err(runnel_core::Error::NotFound(x))
    );
    assert_eq!(
        s.eval_page(&claim, None, 10).await,
        Err(runnel_core::Error::NotFound(x))
    );
    assert!(
        s.heartbeat(std::slice::from_ref(&claim))
            .await
            .unwrap()
            .is_empty()
    );
    assert!(!s.finish(&claim, &Finish::Completed).await.unwrap());
}

/// Sweeps over more work than one page or one internal scan step: paging
/// with small limits visits every missing item exactly once, in order, and
/// skips what is done, however it is spread.
pub async fn long_sweeps_page_through_everything_once<H: Harness>(h: &H) {
    let s = h.store();
    let (dataset, examples) = h.create_dataset(1500).await;
    let (x, evaluators) = h.create_experiment(dataset, 2, &["a", "b"]).await;
    let claim = h.start(x, &replica("replica-a")).await;
    // Written concurrently, as the engine does (and so that the batch
    // writers group them).
    let mut expected_tasks = Vec::new();
    let mut writes = Vec::new();
    for (i, &e) in examples.iter().enumerate() {
        for rep in 0..2u32 {
            let n = i * 2 + rep as usize;
            if n.is_multiple_of(97) || (i >= 1400 && !n.is_multiple_of(89)) {
                expected_tasks.push((e, rep));
            } else if n.is_multiple_of(89) {
                writes.push(s.record_run(&claim, failure(e, rep, "x", 1)));
            } else {
                writes.push(s.record_run(&claim, success(e, rep, "y")));
            }
        }
    }
    let mut runs: Vec<RunId> = futures::future::join_all(writes)
        .await
        .into_iter()
        .map(|w| accepted_run(w.unwrap()))
        .filter(|w| w.new_success)
        .map(|w| w.id)
        .collect();
    let mut seen = Vec::new();
    let mut cursor = None;
    loop {
        let page = s.task_page(&claim, cursor, 37).await.unwrap();
        assert!(page.len() <= 37);
        let Some(last) = page.last() else { break };
        cursor = Some(last.key);
        seen.extend(keys(&page));
    }
    assert_eq!(seen, expected_tasks);

    runs.sort();
    let mut expected_evals = Vec::new();
    let mut writes = Vec::new();
    for (i, &run) in runs.iter().enumerate() {
        for (j, &evaluator) in evaluators.iter().enumerate() {
            if (i + j) % 5 == 0 {
                writes.push(s.record_annotation(&claim, verdict(run, evaluator, Some("ok"), None)));
            } else {
                expected_evals.push((run, evaluator));
            }
        }
    }
    for w in futures::future::join_all(writes).await {
        assert_eq!(w.unwrap(), Write::Accepted(()));
    }
    let mut seen = Vec::new();
    let mut cursor = None;
    loop {
        let page = s.eval_page(&claim, cursor, 101).await.unwrap();
        assert!(page.len() <= 101);
        let Some(last) = page.last() else { break };
        cursor = Some(last.key);
        seen.extend(page.iter().map(|w| (w.key.run, w.key.evaluator)));
    }
    assert_eq!(seen, expected_evals);
}

/// Several writes to one run or annotation in flight at once (the batch
/// writers may put them in one group) take effect in the order they were
/// made, with the replacement rules applied in that order.
pub async fn writes_to_one_row_in_flight_together_keep_their_order<H: Harness>(h: &H) {
    let s = h.store();
    let (dataset, examples) = h.create_dataset(2).await;
    let (x, evaluators) = h.create_experiment(dataset, 1, &["judge"]).await;
    let claim = h.start(x, &replica("replica-a")).await;
    let (e0, e1) = (examples[0], examples[1]);
    let verdicts = futures::future::join_all([
        s.record_run(&claim, failure(e0, 0, "first", 1)),
        s.record_run(&claim, success(e1, 0, "other")),
        s.record_run(&claim, success(e0, 0, "second")),
        s.record_run(&claim, failure(e0, 0, "third", 1)),
        s.record_run(&claim, success(e0, 0, "fourth")),
    ])
    .await;
    let news: Vec<bool> = verdicts
        .into_iter()
        .map(|v| accepted_run(v.unwrap()).new_success)
        .collect();
    assert_eq!(news, [false, true, true, false, false]);
    let runs = h.runs(x).await;
    let run = runs.iter().find(|r| r.key.example == e0).unwrap();
    assert_eq!(run.output.as_deref(), Some("second"));

    let judge = evaluators[0];
    let verdicts = futures::future::join_all([
        s.record_annotation(&claim, verdict(run.id, judge, None, Some("garbled"))),
        s.record_annotation(&claim, verdict(run.id, judge, Some("YES"), None)),
        s.record_annotation(&claim, verdict(run.id, judge, Some("NO"), None)),
    ])
    .await;
    assert!(
        verdicts
            .into_iter()
            .all(|v| v.unwrap() == Write::Accepted(()))
    );
    let stored = h.annotations(x).await;
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].label.as_deref(), Some("YES"));
}

/// The harness for [`Db`] on a throw-away SQLite file or PostgreSQL
/// database, written against `Db`'s public API only.
#[derive(Debug)]
pub struct DbHarness {
    db: Db,
    temp: TempDatabase,
}

fn task() -> CallSpec {
    CallSpec {
        provider: "sim".into(),
        model: "echo".into(),
        messages: vec![runnel_core::Message {
            role: "user".into(),
            content: "{{input.n}}".into(),
        }],
        params: serde_json::Map::new(),
        timeout_s: None,
        stream: false,
    }
}

fn new_examples(first: usize, count: usize) -> Vec<NewExample> {
    (first..first + count)
        .map(|i| NewExample {
            input: json!({"n": i}),
            expected: Some(json!(i * 10)),
            metadata: Some(json!({"i": i})),
        })
        .collect()
}

impl DbHarness {
    /// A harness on a new database of `kind`, with `config` (its URL is
    /// replaced by the temporary database's).
    pub async fn with_config(kind: DatabaseKind, config: StoreConfig) -> Self {
        let temp = TempDatabase::new(kind).await;
        let db = Db::connect(&StoreConfig {
            url: temp.url().to_owned(),
            ..config
        })
        .await
        .unwrap_or_else(|e| panic!("cannot open the test database: {e}"));
        Self { db, temp }
    }

    /// A harness on a new SQLite file.
    pub async fn sqlite() -> Self {
        Self::with_config(DatabaseKind::Sqlite, StoreConfig::default()).await
    }

    /// A harness on a new PostgreSQL database (needs `RUNNEL_TEST_POSTGRES_URL`).
    pub async fn postgres() -> Self {
        Self::with_config(DatabaseKind::Postgres, StoreConfig::default()).await
    }

    /// The store.
    pub fn db(&self) -> &Db {
        &self.db
    }

    /// The temporary database's URL (to open a second pool on it).
    pub fn url(&self) -> &str {
        self.temp.url()
    }

    async fn all_runs(&self, experiment: ExperimentId) -> Vec<crate::RunView> {
        let mut runs = Vec::new();
        let mut cursor = None;
        loop {
            let page = self.db.runs_page(experiment, cursor, 1000).await.unwrap();
            runs.extend(page.items);
            match page.next_cursor {
                Some(next) => cursor = Some(next),
                None => return runs,
            }
        }
    }
}

impl Harness for DbHarness {
    type Store = Db;

    fn store(&self) -> &Db {
        &self.db
    }

    async fn create_dataset(&self, examples: usize) -> (DatasetId, Vec<ExampleId>) {
        let info = self
            .db
            .create_dataset("conformance", &new_examples(0, examples))
            .await
            .unwrap();
        (
            info.id,
            crate::testing::example_ids(&self.db, info.id).await,
        )
    }

    async fn add_examples(&self, dataset: DatasetId, first: usize, count: usize) -> Vec<ExampleId> {
        let before = crate::testing::example_ids(&self.db, dataset).await.len();
        self.db
            .append_examples(dataset, &new_examples(first, count))
            .await
            .unwrap();
        crate::testing::example_ids(&self.db, dataset)
            .await
            .split_off(before)
    }

    async fn create_experiment(
        &self,
        dataset: DatasetId,
        repetitions: u32,
        evaluators: &[&str],
    ) -> (ExperimentId, Vec<EvaluatorId>) {
        let id = self
            .db
            .create_experiment(&NewExperiment {
                dataset_id: dataset,
                name: "conformance".into(),
                repetitions,
                max_concurrency: None,
                task: task(),
                evaluators: evaluators
                    .iter()
                    .map(|name| NewEvaluator {
                        name: (*name).to_owned(),
                        call: task(),
                        labels: vec![],
                    })
                    .collect(),
            })
            .await
            .unwrap();
        let plan = self.db.load_plan(id).await.unwrap();
        (id, plan.evaluators.iter().map(|e| e.id).collect())
    }

    async fn attach_evaluator(&self, experiment: ExperimentId, name: &str) -> EvaluatorId {
        let new = NewEvaluator {
            name: name.to_owned(),
            call: task(),
            labels: vec![],
        };
        self.db.attach_evaluator(experiment, &new).await.unwrap().id
    }

    async fn start(&self, experiment: ExperimentId, replica: &ReplicaId) -> Claim {
        match self.db.start(experiment, replica).await.unwrap() {
            Transition::Done(claim) => claim,
            other => panic!("start of {experiment} answered {other:?}"),
        }
    }

    async fn stop(&self, experiment: ExperimentId) {
        let answer = self.db.stop(experiment, Duration::ZERO).await.unwrap();
        assert_eq!(answer, Transition::Done(()), "stop of {experiment}");
    }

    async fn delete(&self, experiment: ExperimentId) {
        assert!(self.db.delete_experiment(experiment).await.unwrap());
    }

    async fn state(&self, experiment: ExperimentId) -> Option<ExperimentState> {
        match self.db.experiment(experiment).await {
            Ok(view) => Some(ExperimentState {
                status: view.status,
                claimed_by: view.claimed_by.map(ReplicaId::new),
                epoch: Epoch(view.epoch),
                last_error: view.last_error,
            }),
            Err(crate::StoreError::ExperimentNotFound(_)) => None,
            Err(e) => panic!("reading {experiment}: {e}"),
        }
    }

    async fn runs(&self, experiment: ExperimentId) -> Vec<StoredRun> {
        self.all_runs(experiment)
            .await
            .into_iter()
            .map(|r| StoredRun {
                id: r.id,
                key: TaskKey {
                    example: r.example_id,
                    repetition: r.repetition,
                },
                output: r.output,
                error: r.error,
                attempts: r.attempts,
                epoch: Epoch(r.epoch),
            })
            .collect()
    }

    async fn annotations(&self, experiment: ExperimentId) -> Vec<StoredAnnotation> {
        self.all_runs(experiment)
            .await
            .into_iter()
            .flat_map(|r| {
                r.annotations.into_iter().map(move |a| StoredAnnotation {
                    key: EvalKey {
                        run: r.id,
                        evaluator: a.evaluator_id,
                    },
                    label: a.label,
                    error: a.error,
                    epoch: Epoch(a.epoch),
                })
            })
            .collect()
    }

    async fn logs(&self, experiment: ExperimentId) -> Vec<(LogLevel, String)> {
        self.db
            .logs(experiment, None, 1000)
            .await
            .unwrap()
            .into_iter()
            .map(|e| (e.level, e.message))
            .collect()
    }

    async fn finish(self) {
        self.db.close().await;
        self.temp.remove().await;
    }
}
