//! Units of work: their identities (DESIGN §1), the items the store hands out
//! when work is reconstructed (DESIGN §3), and the in-memory job that makes
//! exactly one provider call.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::ids::{EvaluatorId, ExampleId, ExperimentId, RateKey, RunId};
use crate::spec::{CallSpec, EvaluatorSpec, ExampleData};

/// Identity of a task run within its experiment: example × repetition.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct TaskKey {
    /// The example.
    pub example: ExampleId,
    /// The repetition, counted from 0.
    pub repetition: u32,
}

/// Identity of an annotation: run × evaluator.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct EvalKey {
    /// The run being judged.
    pub run: RunId,
    /// The judge.
    pub evaluator: EvaluatorId,
}

/// Identity of any unit of work of one experiment.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum WorkKey {
    /// A task run.
    Task(TaskKey),
    /// An annotation.
    Eval(EvalKey),
}

/// A task that still needs a successful run, as handed out by the store.
#[derive(Clone, Debug, PartialEq)]
pub struct TaskWork {
    /// Which example × repetition.
    pub key: TaskKey,
    /// The example's data (shared between its repetitions).
    pub data: Arc<ExampleData>,
}

/// A successful run that still needs an annotation from one evaluator.
#[derive(Clone, Debug, PartialEq)]
pub struct EvalWork {
    /// Which run × evaluator.
    pub key: EvalKey,
    /// The example the run answered.
    pub example: ExampleId,
    /// The example's data.
    pub data: Arc<ExampleData>,
    /// The run's output, read by the evaluator template as `{{output}}`.
    pub output: Arc<str>,
}

/// Position after which the next page of task work starts (keyset pagination).
pub type TaskCursor = TaskKey;
/// Position after which the next page of eval work starts (keyset pagination).
pub type EvalCursor = EvalKey;

/// What one job calls: the task or one evaluator.
#[derive(Clone, Debug)]
pub enum JobKind {
    /// A task call.
    Task {
        /// The task call spec of the experiment.
        call: Arc<CallSpec>,
        /// The work item.
        work: TaskWork,
    },
    /// An evaluator call.
    Eval {
        /// The evaluator.
        evaluator: Arc<EvaluatorSpec>,
        /// The work item.
        work: EvalWork,
    },
}

/// The in-memory unit of work that makes exactly one provider call.
#[derive(Clone, Debug)]
pub struct Job {
    /// The experiment the job belongs to.
    pub experiment: ExperimentId,
    /// Task or eval, with its data.
    pub kind: JobKind,
    /// The rate-limit key every call of this job is charged to.
    pub key: RateKey,
    /// 1-based number of this call for this work item (all outcomes counted).
    pub attempt: u32,
    /// Transient failures so far (counted toward `max_retries`).
    pub transient_failures: u32,
    /// Rate-limited answers so far (never counted toward `max_retries`).
    pub rate_limited: u32,
    /// Total provider time spent on earlier attempts, in milliseconds.
    pub earlier_latency_ms: u64,
    /// Tokens reserved with the advisor when this attempt was permitted.
    pub tokens_reserved: Option<u64>,
}

impl Job {
    /// The work identity of this job.
    pub fn work_key(&self) -> WorkKey {
        match &self.kind {
            JobKind::Task { work, .. } => WorkKey::Task(work.key),
            JobKind::Eval { work, .. } => WorkKey::Eval(work.key),
        }
    }

    /// The call spec this job sends.
    pub fn call(&self) -> &CallSpec {
        match &self.kind {
            JobKind::Task { call, .. } => call,
            JobKind::Eval { evaluator, .. } => &evaluator.call,
        }
    }

    /// Whether this is a task job.
    pub fn is_task(&self) -> bool {
        matches!(self.kind, JobKind::Task { .. })
    }
}
