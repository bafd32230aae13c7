//! The ports: traits through which the engine reaches the outside world
//! (DESIGN §2). Adapters live in other crates — `runnel-store` (Store),
//! `runnel-providers` (Provider), `runnel-advisor` (Advisor) — and the server
//! supplies the Clock and the EventSink.
//!
//! Async methods return `impl Future + Send` so the engine can spawn them; the
//! engine is generic over the ports, so no boxing happens on the hot path.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::error::Error;
use crate::ids::{Claim, ExperimentId, RateKey, ReplicaId, RunId};
use crate::outcome::{CallReport, Observation, OutcomeClass, Usage};
use crate::spec::{CallSpec, ExperimentPlan};
use crate::work::{EvalCursor, EvalKey, EvalWork, Job, TaskCursor, TaskKey, TaskWork};

/// Time, as the engine sees it. Production uses tokio's clock; tests use
/// tokio's paused clock, so every timer in the engine runs on virtual time.
#[cfg_attr(test, mockall::automock)]
pub trait Clock: Send + Sync + 'static {
    /// The current instant.
    fn now(&self) -> Instant;
    /// Completes at `deadline` (at once if it has passed).
    fn sleep_until(&self, deadline: Instant) -> impl Future<Output = ()> + Send;
}

/// Why the advisor said "not yet".
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WaitReason {
    /// The token bucket is empty.
    Rate,
    /// The provider asked for a pause (`retry-after`, or remaining = 0 until reset).
    Paused,
    /// The circuit breaker is open (or half-open with its probe in flight);
    /// `open_since` is when it last left the closed state.
    BreakerOpen {
        /// When the breaker opened.
        open_since: Instant,
    },
    /// The key's quota is used up (DESIGN §6): no call before the wait's
    /// `until`, when one probe call checks whether the quota is back.
    Quota {
        /// When the provider said the quota comes back; `None` when it did
        /// not say (the wait's `until` is then only the next probe).
        until: Option<Instant>,
    },
}

/// The advisor's answer to "may a job with this key start now?".
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Acquire {
    /// Yes; one request (and the estimated tokens) have been taken from the
    /// bucket. The caller must dispatch the job and later `record` its outcome.
    Permit,
    /// Not before `until`.
    Wait {
        /// Earliest instant at which asking again can succeed.
        until: Instant,
        /// Why.
        reason: WaitReason,
    },
}

/// Rate limits and circuit breakers per rate-limit key (DESIGN §6). Never
/// blocks and never sleeps: it only answers.
#[cfg_attr(test, mockall::automock)]
pub trait Advisor: Send + Sync + 'static {
    /// Asks for a permit for one call with `key`, costing `tokens` if known.
    fn try_acquire(&self, key: &RateKey, tokens: Option<u64>, now: Instant) -> Acquire;
    /// Reports how a permitted call ended.
    fn record(&self, key: &RateKey, observation: &Observation, now: Instant);
}

/// Receives streamed output text of a task call as it arrives.
pub type ChunkSink = Arc<dyn Fn(&str) + Send + Sync>;

/// Performs provider calls (DESIGN §2, §5).
#[cfg_attr(test, mockall::automock)]
pub trait Provider: Send + Sync + 'static {
    /// The rate-limit key of calls made with `call`; an error names why the
    /// call cannot be made at all (for example an unknown provider entry).
    fn rate_key(&self, call: &CallSpec) -> Result<RateKey, String>;

    /// Estimated tokens of the job's call, used for tokens-per-minute limits.
    fn estimate_tokens(&self, job: &Job) -> Option<u64>;

    /// Makes one call and classifies how it ended. Never panics on bad
    /// replies: every ending is an outcome. `chunks`, when given, receives the
    /// text of a streamed reply as it arrives.
    fn call(&self, job: &Job, chunks: Option<ChunkSink>)
    -> impl Future<Output = CallReport> + Send;
}

/// Final status an owner writes when it is done with an experiment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Finish {
    /// Every run and annotation exists.
    Completed,
    /// Gave up; the text becomes `last_error`.
    Error(String),
}

/// The result of one task run, as written to the store. It is a success
/// exactly when `error` is `None` (then `output` holds the answer).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunRecord {
    /// Example × repetition.
    pub key: TaskKey,
    /// The output on success.
    pub output: Option<String>,
    /// The error on failure.
    pub error: Option<String>,
    /// Provider calls made for this run.
    pub attempts: u32,
    /// Latency of the last call, in milliseconds.
    pub latency_ms: u64,
    /// Provider time of all calls, in milliseconds.
    pub total_latency_ms: u64,
    /// Token usage of the last call.
    pub usage: Option<Usage>,
}

/// The result of one annotation, as written to the store. It is a success
/// exactly when `error` is `None`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AnnotationRecord {
    /// Run × evaluator.
    pub key: EvalKey,
    /// Label on success (label evaluators).
    pub label: Option<String>,
    /// Score on success.
    pub score: Option<f64>,
    /// Explanation on success.
    pub explanation: Option<String>,
    /// The error on failure.
    pub error: Option<String>,
    /// Provider calls made for this annotation.
    pub attempts: u32,
    /// Latency of the last call, in milliseconds.
    pub latency_ms: u64,
    /// Token usage of the last call.
    pub usage: Option<Usage>,
}

/// A run write that the store accepted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RunWrite {
    /// The run's row id.
    pub id: RunId,
    /// Whether this write stored a new success (false when a success already
    /// existed, or when the record was a failure).
    pub new_success: bool,
}

/// The store's verdict on a fenced write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Write<T> {
    /// Committed.
    Accepted(T),
    /// Rejected: a later claim exists (or the experiment is gone), so the
    /// writer no longer owns the experiment.
    Fenced,
}

/// Severity of an experiment log entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    /// A notable event (started, taken over, completed).
    Info,
    /// Something the user may want to look at (breaker opened, retries).
    Warn,
    /// A failure (run failed permanently, experiment errored).
    Error,
}

impl LogLevel {
    /// Lower-case name as stored.
    pub fn as_str(self) -> &'static str {
        match self {
            LogLevel::Info => "info",
            LogLevel::Warn => "warn",
            LogLevel::Error => "error",
        }
    }
}

/// Persistence, as the engine needs it (DESIGN §2, §4). Every lifecycle
/// transition is one conditional statement using the database's clock.
#[cfg_attr(test, mockall::automock)]
pub trait Store: Send + Sync + 'static {
    /// Takes back, with a new epoch, every RUNNING experiment still claimed
    /// under `replica` (a restarted single server resumes at once).
    fn reclaim_own(
        &self,
        replica: &ReplicaId,
    ) -> impl Future<Output = Result<Vec<Claim>, Error>> + Send;

    /// Claims, with a new epoch, every RUNNING experiment whose claim is older
    /// than `lease` (its owner died).
    fn take_over_orphans(
        &self,
        replica: &ReplicaId,
        lease: Duration,
    ) -> impl Future<Output = Result<Vec<Claim>, Error>> + Send;

    /// Renews `claims`; returns the experiments still owned. A claim missing
    /// from the answer was lost (stopped, deleted, taken over).
    fn heartbeat(
        &self,
        claims: &[Claim],
    ) -> impl Future<Output = Result<Vec<ExperimentId>, Error>> + Send;

    /// Graceful shutdown: marks `claims` as expired (status stays RUNNING) so
    /// another replica or the restarted process takes them over at once.
    fn release(&self, claims: &[Claim]) -> impl Future<Output = Result<(), Error>> + Send;

    /// Sets COMPLETED or ERROR and clears the claim, only while `claim` is
    /// still the owner. Returns whether it was.
    fn finish(
        &self,
        claim: &Claim,
        end: &Finish,
    ) -> impl Future<Output = Result<bool, Error>> + Send;

    /// Reads what the experiment asks for.
    fn load_plan(
        &self,
        experiment: ExperimentId,
    ) -> impl Future<Output = Result<ExperimentPlan, Error>> + Send;

    /// Up to `limit` example × repetition pairs after `after` (in key order)
    /// that have no successful run and did not already fail under this claim's
    /// epoch.
    fn task_page(
        &self,
        claim: &Claim,
        after: Option<TaskCursor>,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<TaskWork>, Error>> + Send;

    /// Up to `limit` run × evaluator pairs after `after` (in key order) where
    /// the run succeeded, the evaluator is attached, and no successful
    /// annotation exists nor a failed one written under this claim's epoch.
    fn eval_page(
        &self,
        claim: &Claim,
        after: Option<EvalCursor>,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<EvalWork>, Error>> + Send;

    /// Records a run, fenced by `claim`. A success is never replaced by a
    /// failure; a failure is replaced by a later success.
    fn record_run(
        &self,
        claim: &Claim,
        record: RunRecord,
    ) -> impl Future<Output = Result<Write<RunWrite>, Error>> + Send;

    /// Records an annotation, fenced by `claim`, with the same replacement rules.
    fn record_annotation(
        &self,
        claim: &Claim,
        record: AnnotationRecord,
    ) -> impl Future<Output = Result<Write<()>, Error>> + Send;

    /// Appends an entry to the experiment's log.
    fn log(
        &self,
        experiment: ExperimentId,
        level: LogLevel,
        message: String,
    ) -> impl Future<Output = Result<(), Error>> + Send;
}

/// Why an experiment left this engine.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Departure {
    /// Stopped on request; in-flight calls were finished and recorded.
    Stopped,
    /// Every run and annotation exists; written COMPLETED.
    Completed,
    /// Gave up (breaker open too long, a key answering only 429s or out of
    /// quota too long, plan unusable); written ERROR.
    Errored(String),
    /// Another replica took it over, or it was stopped/deleted elsewhere.
    Lost,
    /// Claim released on graceful shutdown.
    Released,
}

/// What an experiment is waiting on, while it waits on something the user
/// should see (DESIGN §6: a used-up quota).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Waiting {
    /// The rate-limit key whose quota is used up.
    pub key: RateKey,
    /// When the provider said the quota comes back; `None`: unknown.
    pub until: Option<Instant>,
    /// What the provider said (credentials removed), if a call said it.
    pub message: Option<String>,
}

/// Things that happened in the engine, for event streams and metrics.
#[derive(Clone, Debug)]
pub enum EngineEvent {
    /// The engine started running an experiment under `claim`.
    Adopted {
        /// The claim it runs under.
        claim: Claim,
        /// Whether it was taken over from another (dead) replica.
        takeover: bool,
    },
    /// A run was committed.
    RunRecorded {
        /// The experiment.
        experiment: ExperimentId,
        /// The run's id.
        run: RunId,
        /// What was written.
        record: Arc<RunRecord>,
    },
    /// An annotation was committed.
    AnnotationRecorded {
        /// The experiment.
        experiment: ExperimentId,
        /// The evaluator's name.
        evaluator: Arc<str>,
        /// What was written.
        record: Arc<AnnotationRecord>,
    },
    /// Streamed output text of a task call.
    Chunk {
        /// The experiment.
        experiment: ExperimentId,
        /// Which run.
        key: TaskKey,
        /// The new text.
        text: Arc<str>,
    },
    /// A provider call ended.
    CallFinished {
        /// The experiment.
        experiment: ExperimentId,
        /// The rate-limit key.
        key: RateKey,
        /// How it ended.
        class: OutcomeClass,
        /// Its latency.
        latency: Duration,
        /// Task (true) or eval (false).
        task: bool,
    },
    /// The experiment started (`Some`) or stopped (`None`) waiting on a
    /// used-up quota.
    Waiting {
        /// The experiment.
        experiment: ExperimentId,
        /// On what, until when.
        waiting: Option<Waiting>,
    },
    /// The store rejected a write because a later claim exists.
    WriteFenced {
        /// The experiment.
        experiment: ExperimentId,
    },
    /// A write was given up after the store stayed unreachable.
    WriteAbandoned {
        /// The experiment.
        experiment: ExperimentId,
        /// The last store error.
        error: String,
    },
    /// The experiment left the engine.
    Departed {
        /// The experiment.
        experiment: ExperimentId,
        /// Why.
        why: Departure,
    },
}

/// Receives engine events. Must not block: implementations buffer or drop.
pub trait EventSink: Send + Sync + 'static {
    /// Takes one event.
    fn emit(&self, event: EngineEvent);
}

/// An event sink that drops everything.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoEvents;

impl EventSink for NoEvents {
    fn emit(&self, _event: EngineEvent) {}
}
