//! Request and response bodies of the HTTP API (the contract of API.md).
//! Requests reject unknown fields; responses may grow new fields.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::{IntoParams, ToSchema};

/// One example of a dataset.
#[derive(Clone, Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExampleIn {
    /// The input object templates read as `{{input.*}}`.
    #[schema(value_type = Object)]
    pub input: Value,
    /// The expected answer (any JSON).
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub expected: Option<Value>,
    /// Free metadata (an object).
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<Value>,
}

/// `POST /v1/datasets` (JSON form).
#[derive(Clone, Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateDataset {
    /// Dataset name.
    pub name: String,
    /// Its examples.
    pub examples: Vec<ExampleIn>,
}

/// `POST /v1/datasets/{id}/examples` (JSON form).
#[derive(Clone, Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AppendExamples {
    /// Examples to append.
    pub examples: Vec<ExampleIn>,
}

/// Query of the NDJSON form of dataset creation.
#[derive(Clone, Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct DatasetQuery {
    /// Dataset name (NDJSON bodies only).
    pub name: Option<String>,
}

/// A dataset.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct DatasetOut {
    /// Id.
    pub id: String,
    /// Name.
    pub name: String,
    /// Number of examples.
    pub example_count: u64,
    /// Creation time.
    pub created_at: DateTime<Utc>,
}

/// Answer of an append.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct ExampleCount {
    /// Examples in the dataset after the append.
    pub example_count: u64,
}

/// A chat message of a prompt template.
#[derive(Clone, Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MessageIn {
    /// `system`, `user` or `assistant`.
    pub role: String,
    /// Template text with `{{input.field}}`-style placeholders.
    pub content: String,
}

/// The task of an experiment.
#[derive(Clone, Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TaskIn {
    /// A `[providers.NAME]` entry of the server configuration.
    pub provider: String,
    /// Model name.
    pub model: String,
    /// Prompt template.
    pub messages: Vec<MessageIn>,
    /// Request parameters passed through (temperature, max_tokens, …).
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub params: Option<Map<String, Value>>,
    /// Per-call timeout in seconds, above 0 and at most
    /// `scheduler.max_call_timeout` (3600 unless configured).
    #[serde(default)]
    pub timeout_s: Option<f64>,
    /// Stream the output (chunks reach the event stream).
    #[serde(default)]
    pub stream: Option<bool>,
}

/// An evaluator (LLM judge).
#[derive(Clone, Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EvaluatorIn {
    /// Name, unique within the experiment.
    pub name: String,
    /// A `[providers.NAME]` entry.
    pub provider: String,
    /// Model name.
    pub model: String,
    /// Prompt template; may use `{{output}}`.
    pub messages: Vec<MessageIn>,
    /// Allowed labels; without labels the reply is read as a numeric score.
    #[serde(default)]
    pub labels: Option<Vec<String>>,
    /// Request parameters passed through.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub params: Option<Map<String, Value>>,
    /// Per-call timeout in seconds, above 0 and at most
    /// `scheduler.max_call_timeout` (3600 unless configured).
    #[serde(default)]
    pub timeout_s: Option<f64>,
}

/// `POST /v1/experiments`.
#[derive(Clone, Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateExperiment {
    /// The dataset to run.
    pub dataset_id: String,
    /// Experiment name.
    pub name: String,
    /// Runs per example (≥ 1, default 1).
    #[serde(default)]
    pub repetitions: Option<i64>,
    /// Per-experiment concurrency cap.
    #[serde(default)]
    pub max_concurrency: Option<i64>,
    /// Start at once (default true).
    #[serde(default)]
    pub start: Option<bool>,
    /// The task.
    pub task: TaskIn,
    /// The evaluators.
    #[serde(default)]
    pub evaluators: Option<Vec<EvaluatorIn>>,
}

/// Answer of an experiment creation.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct CreatedExperiment {
    /// Id.
    pub id: String,
    /// `RUNNING` or `STOPPED`.
    pub status: String,
}

/// Progress counted from runs and annotations.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct ProgressOut {
    /// Examples × repetitions.
    pub runs_expected: u64,
    /// Successful runs.
    pub runs_succeeded: u64,
    /// Failed runs.
    pub runs_failed: u64,
    /// Successful runs × evaluators.
    pub annotations_expected: u64,
    /// Successful annotations.
    pub annotations_done: u64,
    /// Failed annotations.
    pub annotations_failed: u64,
}

/// An experiment.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct ExperimentOut {
    /// Id.
    pub id: String,
    /// Name.
    pub name: String,
    /// Its dataset.
    pub dataset_id: String,
    /// `RUNNING`, `STOPPED`, `COMPLETED` or `ERROR`.
    pub status: String,
    /// Why it errored.
    pub last_error: Option<String>,
    /// The replica running it.
    pub claimed_by: Option<String>,
    /// Runs per example.
    pub repetitions: u32,
    /// Per-experiment concurrency cap.
    pub max_concurrency: Option<u32>,
    /// Creation time.
    pub created_at: DateTime<Utc>,
    /// Last change.
    pub updated_at: DateTime<Utc>,
    /// Progress.
    pub progress: ProgressOut,
    /// While the experiment runs but waits on something the user should see
    /// (a used-up quota): on what and until when. Known to the replica that
    /// runs it; `null` otherwise (the experiment log has the entry too).
    pub waiting: Option<WaitingOut>,
}

/// What a running experiment waits on.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct WaitingOut {
    /// `quota`: the provider said the key's quota, credit or spend cap is
    /// used up; one probe call per interval checks whether it is back, and
    /// the experiment goes to ERROR after `scheduler.rate_limit_give_up`.
    pub reason: String,
    /// The rate-limit key (`provider|scope`).
    pub key: String,
    /// When the provider said the quota comes back; `null`: it did not say.
    pub until: Option<DateTime<Utc>>,
    /// What the provider said.
    pub message: Option<String>,
    /// When the wait began.
    pub since: DateTime<Utc>,
}

impl From<crate::bus::WaitingOn> for WaitingOut {
    fn from(w: crate::bus::WaitingOn) -> Self {
        Self {
            reason: w.reason.to_owned(),
            key: w.key,
            until: w.until,
            message: w.message,
            since: w.since,
        }
    }
}

/// Query of the experiment list.
#[derive(Clone, Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ExperimentsQuery {
    /// Only this dataset's experiments.
    pub dataset_id: Option<String>,
    /// Only experiments with this status.
    pub status: Option<String>,
}

/// Answer of stop and resume.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct StatusOut {
    /// The status after the call.
    pub status: String,
}

/// An attached evaluator.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct EvaluatorOut {
    /// Id.
    pub id: i64,
    /// Name.
    pub name: String,
}

/// Token usage.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct UsageOut {
    /// Prompt tokens.
    pub prompt_tokens: u64,
    /// Completion tokens.
    pub completion_tokens: u64,
}

/// An annotation of a run.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct AnnotationOut {
    /// Evaluator name.
    pub evaluator: String,
    /// Label.
    pub label: Option<String>,
    /// Score.
    pub score: Option<f64>,
    /// Explanation.
    pub explanation: Option<String>,
    /// Error, when the annotation failed.
    pub error: Option<String>,
}

/// A run.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct RunOut {
    /// Id.
    pub id: String,
    /// The example.
    pub example_id: String,
    /// Repetition, from 0.
    pub repetition: u32,
    /// Output on success.
    pub output: Option<String>,
    /// Error on failure.
    pub error: Option<String>,
    /// Provider calls made.
    pub attempts: u32,
    /// Latency of the last call.
    pub latency_ms: u64,
    /// Token usage.
    pub usage: Option<UsageOut>,
    /// Annotations.
    pub annotations: Vec<AnnotationOut>,
}

/// A page of runs.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct RunsPageOut {
    /// Runs, in id order.
    pub items: Vec<RunOut>,
    /// Cursor of the next page; absent on the last.
    pub next_cursor: Option<String>,
}

/// Query of the run list.
#[derive(Clone, Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct RunsQuery {
    /// Cursor from the previous page.
    pub cursor: Option<String>,
    /// Page size, 1 to `database.max_page` (default `server.default_page`:
    /// 1000 and 100 unless configured).
    pub limit: Option<String>,
}

/// Query of the log list.
#[derive(Clone, Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct LogsQuery {
    /// Entries older than this id.
    pub before: Option<String>,
    /// Page size, 1 to `database.max_page` (default `server.default_page`:
    /// 1000 and 100 unless configured).
    pub limit: Option<String>,
}

/// An experiment log entry.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct LogOut {
    /// Id (newest first).
    pub id: i64,
    /// `info`, `warn` or `error`.
    pub level: String,
    /// Text.
    pub message: String,
    /// When.
    pub created_at: DateTime<Utc>,
}

impl From<runnel_store::Progress> for ProgressOut {
    fn from(p: runnel_store::Progress) -> Self {
        Self {
            runs_expected: p.runs_expected,
            runs_succeeded: p.runs_succeeded,
            runs_failed: p.runs_failed,
            annotations_expected: p.annotations_expected,
            annotations_done: p.annotations_done,
            annotations_failed: p.annotations_failed,
        }
    }
}

impl From<runnel_store::ExperimentView> for ExperimentOut {
    fn from(v: runnel_store::ExperimentView) -> Self {
        Self {
            id: v.id.to_string(),
            name: v.name,
            dataset_id: v.dataset_id.to_string(),
            status: v.status.as_str().to_owned(),
            last_error: v.last_error,
            claimed_by: v.claimed_by,
            repetitions: v.repetitions,
            max_concurrency: v.max_concurrency,
            created_at: v.created_at,
            updated_at: v.updated_at,
            progress: v.progress.into(),
            waiting: None,
        }
    }
}

impl From<runnel_store::DatasetInfo> for DatasetOut {
    fn from(d: runnel_store::DatasetInfo) -> Self {
        Self {
            id: d.id.to_string(),
            name: d.name,
            example_count: d.example_count,
            created_at: d.created_at,
        }
    }
}

impl From<runnel_store::RunView> for RunOut {
    fn from(r: runnel_store::RunView) -> Self {
        Self {
            id: r.id.to_string(),
            example_id: r.example_id.to_string(),
            repetition: r.repetition,
            output: r.output,
            error: r.error,
            attempts: r.attempts,
            latency_ms: r.latency_ms,
            usage: r.usage.map(|u| UsageOut {
                prompt_tokens: u.prompt_tokens,
                completion_tokens: u.completion_tokens,
            }),
            annotations: r
                .annotations
                .into_iter()
                .map(|a| AnnotationOut {
                    evaluator: a.evaluator,
                    label: a.label,
                    score: a.score,
                    explanation: a.explanation,
                    error: a.error,
                })
                .collect(),
        }
    }
}

impl From<runnel_store::LogEntry> for LogOut {
    fn from(l: runnel_store::LogEntry) -> Self {
        Self {
            id: l.id,
            level: l.level.as_str().to_owned(),
            message: l.message,
            created_at: l.created_at,
        }
    }
}
