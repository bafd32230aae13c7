//! Plain data the API-side operations take and return. Every type serialises
//! with the field names of API.md, so the server can return them as they are.

use std::time::Duration;

use chrono::{DateTime, Utc};
use runnel_core::{
    CallSpec, DatasetId, EvaluatorId, ExampleId, ExperimentId, ExperimentStatus, LogLevel, RunId,
    Usage,
};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::StoreError;

/// One example to import: `input` must be a JSON object.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NewExample {
    /// The input object, read by templates as `{{input.*}}`.
    pub input: Value,
    /// The expected answer, if any.
    #[serde(default)]
    pub expected: Option<Value>,
    /// Free metadata (an object); `{}` when absent.
    #[serde(default)]
    pub metadata: Option<Value>,
}

impl NewExample {
    /// An example with just an input.
    pub fn new(input: Value) -> Self {
        Self {
            input,
            expected: None,
            metadata: None,
        }
    }

    /// Checks the example; `index` is its position in the request, used to
    /// name the field in the error.
    pub(crate) fn validate(&self, index: usize) -> Result<(), StoreError> {
        if !self.input.is_object() {
            return Err(StoreError::invalid(
                format!("examples[{index}].input"),
                "must be a JSON object",
            ));
        }
        if let Some(m) = &self.metadata
            && !(m.is_object() || m.is_null())
        {
            return Err(StoreError::invalid(
                format!("examples[{index}].metadata"),
                "must be a JSON object",
            ));
        }
        Ok(())
    }
}

/// A dataset as the API shows it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DatasetInfo {
    /// Its id.
    pub id: DatasetId,
    /// Its name.
    pub name: String,
    /// How many examples it holds.
    pub example_count: u64,
    /// When it was created (database clock).
    pub created_at: DateTime<Utc>,
}

/// An evaluator to attach: a name, a judge call and optional labels. The call
/// is flattened, as in API.md (`{"name", "provider", "model", "messages", …}`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NewEvaluator {
    /// Name shown in results; unique within the experiment.
    pub name: String,
    /// The judge's call.
    #[serde(flatten)]
    pub call: CallSpec,
    /// Allowed labels; empty for a numeric score.
    #[serde(default)]
    pub labels: Vec<String>,
}

/// An experiment to create (status STOPPED; start it with `start`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NewExperiment {
    /// The dataset it runs over.
    pub dataset_id: DatasetId,
    /// Its name.
    pub name: String,
    /// Runs per example (≥ 1).
    pub repetitions: u32,
    /// Per-experiment concurrency cap (≥ 1 when set).
    #[serde(default)]
    pub max_concurrency: Option<u32>,
    /// The task call.
    pub task: CallSpec,
    /// The evaluators attached from the start.
    #[serde(default)]
    pub evaluators: Vec<NewEvaluator>,
}

/// Counts of an experiment's results, computed from the runs and annotations.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Progress {
    /// Examples × repetitions.
    pub runs_expected: u64,
    /// Runs that succeeded.
    pub runs_succeeded: u64,
    /// Runs whose latest result is a failure.
    pub runs_failed: u64,
    /// Successful runs × attached evaluators.
    pub annotations_expected: u64,
    /// Successful annotations.
    pub annotations_done: u64,
    /// Annotations whose latest result is a failure.
    pub annotations_failed: u64,
}

/// An experiment as the API shows it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ExperimentView {
    /// Its id.
    pub id: ExperimentId,
    /// Its name.
    pub name: String,
    /// Its dataset.
    pub dataset_id: DatasetId,
    /// Its status.
    pub status: ExperimentStatus,
    /// Why it last failed, if it did.
    pub last_error: Option<String>,
    /// The replica that holds the claim, if any.
    pub claimed_by: Option<String>,
    /// Runs per example.
    pub repetitions: u32,
    /// Its concurrency cap, if any.
    pub max_concurrency: Option<u32>,
    /// The current claim epoch (incremented on every claim).
    pub epoch: i64,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// When its status or ownership last changed.
    pub updated_at: DateTime<Utc>,
    /// Result counts.
    pub progress: Progress,
}

/// Which experiments to list.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExperimentFilter {
    /// Only experiments over this dataset.
    #[serde(default)]
    pub dataset_id: Option<DatasetId>,
    /// Only experiments with this status.
    #[serde(default)]
    pub status: Option<ExperimentStatus>,
}

/// The answer to a lifecycle request (start, resume, stop).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Transition<T> {
    /// This call changed the state; the payload says how (the new claim for
    /// start and resume).
    Done(T),
    /// Nothing to do: the experiment already is in the requested state (the
    /// status it is in). Success, for idempotent API calls.
    AlreadyInState(ExperimentStatus),
    /// A user toggle happened too recently; try again after `remaining`.
    Cooldown {
        /// Time left until the cooldown ends.
        remaining: Duration,
    },
    /// No such experiment.
    NotFound,
}

/// One annotation of a run, as the API shows it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AnnotationView {
    /// The evaluator's name.
    pub evaluator: String,
    /// The evaluator's id.
    pub evaluator_id: EvaluatorId,
    /// The label, on success.
    pub label: Option<String>,
    /// The score, on success.
    pub score: Option<f64>,
    /// The explanation, on success.
    pub explanation: Option<String>,
    /// The error, on failure.
    pub error: Option<String>,
    /// Provider calls made.
    pub attempts: u32,
    /// Latency of the last call, in milliseconds.
    pub latency_ms: u64,
    /// Token usage of the last call.
    pub usage: Option<Usage>,
    /// The claim epoch that wrote it.
    pub epoch: i64,
}

/// One run with its annotations, as the API shows it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunView {
    /// The run's id (also the pagination cursor).
    pub id: RunId,
    /// The example it answered.
    pub example_id: ExampleId,
    /// The repetition, from 0.
    pub repetition: u32,
    /// The output, on success.
    pub output: Option<String>,
    /// The error, on failure.
    pub error: Option<String>,
    /// Provider calls made.
    pub attempts: u32,
    /// Latency of the last call, in milliseconds.
    pub latency_ms: u64,
    /// Provider time of all calls, in milliseconds.
    pub total_latency_ms: u64,
    /// Token usage of the last call.
    pub usage: Option<Usage>,
    /// The claim epoch that wrote it.
    pub epoch: i64,
    /// When the first call started (derived from the total latency).
    pub started_at: DateTime<Utc>,
    /// When the result was written (database clock).
    pub finished_at: DateTime<Utc>,
    /// Its annotations, in evaluator order.
    pub annotations: Vec<AnnotationView>,
}

/// One page of runs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunsPage {
    /// The runs, in id order.
    pub items: Vec<RunView>,
    /// The cursor of the next page; `None` on the last page.
    pub next_cursor: Option<RunId>,
}

/// One experiment log entry.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LogEntry {
    /// Its id; entries are listed newest (highest id) first.
    pub id: i64,
    /// Its severity.
    pub level: LogLevel,
    /// What happened.
    pub message: String,
    /// When (database clock).
    pub created_at: DateTime<Utc>,
}

/// What happened to an experiment, as announced to other replicas
/// (PostgreSQL `NOTIFY`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ControlKind {
    /// Stopped by a user: its owner should stop it locally.
    Stopped,
    /// Started or resumed (claimed by the replica that served the request).
    Resumed,
    /// Deleted: whoever runs it should drop it.
    Deleted,
}

impl ControlKind {
    /// The word used in notification payloads.
    pub fn as_str(self) -> &'static str {
        match self {
            ControlKind::Stopped => "stopped",
            ControlKind::Resumed => "resumed",
            ControlKind::Deleted => "deleted",
        }
    }
}

/// A control notification: experiment and what happened to it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ControlEvent {
    /// The experiment.
    pub experiment: ExperimentId,
    /// What happened.
    pub kind: ControlKind,
}

impl ControlEvent {
    /// Reads a notification payload `"<uuid>:<kind>"`.
    pub fn parse(payload: &str) -> Option<Self> {
        let (id, kind) = payload.split_once(':')?;
        let kind = match kind {
            "stopped" => ControlKind::Stopped,
            "resumed" => ControlKind::Resumed,
            "deleted" => ControlKind::Deleted,
            _ => return None,
        };
        Some(Self {
            experiment: id.parse().ok()?,
            kind,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_payloads_round_trip_and_garbage_is_ignored() {
        let id = ExperimentId(uuid::Uuid::from_u128(5));
        for kind in [
            ControlKind::Stopped,
            ControlKind::Resumed,
            ControlKind::Deleted,
        ] {
            let payload = format!("{id}:{}", kind.as_str());
            assert_eq!(
                ControlEvent::parse(&payload),
                Some(ControlEvent {
                    experiment: id,
                    kind
                })
            );
        }
        assert_eq!(ControlEvent::parse("nonsense"), None);
        assert_eq!(ControlEvent::parse(&format!("{id}:exploded")), None);
        assert_eq!(ControlEvent::parse("not-a-uuid:stopped"), None);
    }

    #[test]
    fn examples_need_an_object_input() {
        NewExample::new(serde_json::json!({"q": 1}))
            .validate(0)
            .unwrap();
        let err = NewExample::new(serde_json::json!([1]))
            .validate(3)
            .unwrap_err();
        assert_eq!(
            err,
            StoreError::invalid("examples[3].input", "must be a JSON object")
        );
        let bad_meta = NewExample {
            metadata: Some(serde_json::json!(7)),
            ..NewExample::new(serde_json::json!({}))
        };
        assert!(bad_meta.validate(0).is_err());
    }

    #[test]
    fn evaluators_read_the_flat_api_form() {
        let e: NewEvaluator = serde_json::from_str(
            r#"{"name": "correct", "provider": "anthropic", "model": "m",
                "messages": [{"role": "user", "content": "{{output}}"}],
                "labels": ["CORRECT", "INCORRECT"], "timeout_s": 60}"#,
        )
        .unwrap();
        assert_eq!(e.name, "correct");
        assert_eq!(e.call.provider, "anthropic");
        assert_eq!(e.call.timeout_s, Some(60.0));
        assert_eq!(e.labels.len(), 2);
    }
}
