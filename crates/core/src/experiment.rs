//! The state machine of one running experiment (DESIGN §3): its buffers, its
//! retry heap, its in-flight set, the two store sweeps that reconstruct work,
//! and the rules that decide the next job, completion and draining.
//!
//! ```text
//!                       stop / lost / give-up / shutdown
//!   ┌─────────┐ ─────────────────────────────────────▶ ┌──────────┐
//!   │ Running │                                        │ Draining │ in-flight calls finish,
//!   └─────────┘ ── everything done ──▶ Finish(Completed)└──────────┘ results are written
//!        │                                                  │ (not when lost)
//!        │ phases: EvalSweep ──(sweep exhausted)──▶ Tasks   ▼
//!        │                                           Departed / Finish(Error)
//! ```
//!
//! Work comes from two keyset-paginated sweeps of the store: task work
//! (example × repetition without a successful run) and eval work (successful
//! runs missing an annotation). The eval sweep runs first, before any task is
//! dispatched, so evals queued reactively after a task success can never also
//! be found by the sweep (DESIGN §3: the sweep runs only when no reactive eval
//! is queued or in flight). Task pages may be fetched meanwhile: they do not
//! depend on annotations.
//!
//! Nothing here reads a clock or performs I/O; `now` is always a parameter and
//! store calls are requested as [`Action`]s.

use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::config::Config;
use crate::fasthash::{FastMap, FastSet};
use crate::ids::{Claim, ExampleId, ExperimentId, RateKey};
use crate::isolation::Verdict;
use crate::limited::{KeyNotes, waiting_message};
use crate::outcome::{CallReport, Outcome, Reply};
use crate::ports::{
    Acquire, Advisor, AnnotationRecord, Departure, Finish, LogLevel, RunRecord, RunWrite,
    WaitReason, Waiting, Write,
};
use crate::rng::Rng;
use crate::spec::{CallSpec, EvaluatorSpec, ExampleData, ExperimentPlan};
use crate::work::{EvalKey, EvalWork, Job, JobKind, TaskKey, TaskWork, WorkKey};

/// Something the scheduler asks its driver to do.
#[derive(Clone, Debug)]
pub enum Action {
    /// Fetch a page of task work (`Store::task_page`), then call
    /// `Scheduler::handle_task_page`.
    FetchTasks {
        /// The claim to fetch under.
        claim: Claim,
        /// Keyset cursor.
        after: Option<TaskKey>,
        /// Page size.
        limit: usize,
    },
    /// Fetch a page of eval work (`Store::eval_page`), then call
    /// `Scheduler::handle_eval_page`.
    FetchEvals {
        /// The claim to fetch under.
        claim: Claim,
        /// Keyset cursor.
        after: Option<EvalKey>,
        /// Page size.
        limit: usize,
    },
    /// Write a run (`Store::record_run`), then call `Scheduler::handle_run_written`.
    WriteRun {
        /// The claim fencing the write.
        claim: Claim,
        /// What to write.
        record: RunRecord,
    },
    /// Write an annotation (`Store::record_annotation`), then call
    /// `Scheduler::handle_annotation_written`.
    WriteAnnotation {
        /// The claim fencing the write.
        claim: Claim,
        /// The evaluator's name (for event streams).
        evaluator: Arc<str>,
        /// What to write.
        record: AnnotationRecord,
    },
    /// Append to the experiment's log (`Store::log`).
    Log {
        /// The experiment.
        experiment: ExperimentId,
        /// Severity.
        level: LogLevel,
        /// Text.
        message: String,
    },
    /// Write the final status (`Store::finish`). The experiment has already
    /// left the scheduler.
    Finish {
        /// The claim that finishes.
        claim: Claim,
        /// Completed or Error.
        end: Finish,
    },
    /// The experiment started (`Some`) or stopped (`None`) waiting on a
    /// used-up quota (`EngineEvent::Waiting`, so the API can show it).
    Waiting {
        /// The experiment.
        experiment: ExperimentId,
        /// On what, until when.
        waiting: Option<Waiting>,
    },
    /// The experiment left the scheduler without a status write of its own
    /// (stopped elsewhere, lost, released on shutdown).
    Departed {
        /// The claim it ran under.
        claim: Claim,
        /// Why it left.
        why: Departure,
    },
}

/// How a result write ended, as reported back by the driver.
#[derive(Clone, Debug, PartialEq)]
pub enum WriteResult<T> {
    /// The store committed it (or found it fenced).
    Done(Write<T>),
    /// The store stayed unreachable; the write was given up. The work item is
    /// found again by the next session's sweep.
    Abandoned(String),
}

/// The answer of one experiment when asked for a job.
#[derive(Debug)]
pub(crate) enum Next {
    /// Dispatch this job (a permit has been taken).
    Ready(Job),
    /// Nothing can start now; the experiment's `wake` says when it may.
    NotReady,
    /// The per-experiment cap is reached, or the experiment is not running.
    Busy,
    /// A needed key's breaker stayed open past `breaker_give_up`, or the key
    /// answered only 429s for `rate_limit_give_up`.
    GaveUp(String),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Scoring runs that existed when the session started; tasks wait.
    EvalSweep,
    /// Running tasks; evals follow each task success.
    Tasks,
}

#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Mode {
    Running,
    Draining(Departure),
}

#[derive(Debug)]
struct Sweep<C> {
    cursor: Option<C>,
    exhausted: bool,
    /// Page size of the fetch under way, if one is.
    fetching: Option<usize>,
}

impl<C: Copy> Sweep<C> {
    fn new() -> Self {
        Self {
            cursor: None,
            exhausted: false,
            fetching: None,
        }
    }

    /// A page asked for by this sweep arrived: ends the fetch, moves the
    /// cursor past the page, and marks the sweep exhausted when the page is
    /// shorter than asked. `Ok(None)`: nothing was being fetched, or the
    /// experiment no longer runs — the page is dropped.
    fn receive<T>(
        &mut self,
        running: bool,
        page: Result<Vec<T>, crate::Error>,
        key: impl Fn(&T) -> C,
    ) -> Result<Option<Vec<T>>, crate::Error> {
        let Some(limit) = self.fetching.take() else {
            return Ok(None);
        };
        if !running {
            return Ok(None);
        }
        let items = page?;
        if items.len() < limit {
            self.exhausted = true;
        }
        if let Some(last) = items.last() {
            self.cursor = Some(key(last));
        }
        Ok(Some(items))
    }
}

#[derive(Debug)]
struct Retry {
    ready_at: Instant,
    seq: u64,
    job: Job,
}

impl PartialEq for Retry {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Retry {}
impl PartialOrd for Retry {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Retry {
    // Reversed so that `BinaryHeap` (a max-heap) pops the earliest first.
    fn cmp(&self, other: &Self) -> Ordering {
        (other.ready_at, other.seq).cmp(&(self.ready_at, self.seq))
    }
}

/// What is kept while a successful task's run is being written: enough to
/// queue its evals once the store returns the run id.
#[derive(Debug)]
struct PendingTask {
    example: ExampleId,
    data: Arc<ExampleData>,
    output: Arc<str>,
}

/// Counters of one experiment, for tests and introspection.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ExperimentCounts {
    /// Task work buffered.
    pub tasks: usize,
    /// Eval jobs queued.
    pub evals: usize,
    /// Jobs waiting for a retry.
    pub retries: usize,
    /// Calls under way.
    pub in_flight: usize,
    /// Results being written.
    pub writing: usize,
}

/// One experiment's scheduling state.
#[derive(Debug)]
pub(crate) struct ExperimentState {
    pub(crate) claim: Claim,
    pub(crate) mode: Mode,
    task_call: Arc<CallSpec>,
    task_key: RateKey,
    evaluators: Vec<(Arc<EvaluatorSpec>, RateKey, Arc<str>)>,
    cap: usize,
    phase: Phase,
    evals: VecDeque<Job>,
    retries: BinaryHeap<Retry>,
    tasks: VecDeque<TaskWork>,
    /// Work identities in flight, waiting for a retry, or being written.
    busy: FastSet<WorkKey>,
    pending_tasks: FastMap<TaskKey, PendingTask>,
    in_flight: usize,
    writing: usize,
    task_sweep: Sweep<TaskKey>,
    eval_sweep: Sweep<EvalKey>,
    fetch_failures: u32,
    fetch_retry_at: Option<Instant>,
    /// When this session began (breaker give-up counts from here at the
    /// earliest, so a resume after an outage gets the full give-up time).
    started: Instant,
    open_keys_logged: HashSet<RateKey>,
    /// The key whose used-up quota this experiment is shown waiting on.
    pub(crate) waiting: Option<RateKey>,
    failures_logged: u32,
    /// `Config::failures_logged`: failures logged one by one.
    failures_to_log: u32,
    retry_seq: u64,
    /// Earliest instant at which asking for a job can succeed, as learned at
    /// the last visit; `None` when waiting for an event.
    pub(crate) wake: Option<Instant>,
    /// Position in the least-recently-served order.
    pub(crate) order_key: u64,
    /// This experiment's own breakers, per key (see `crate::isolation`).
    own_breakers: HashMap<RateKey, OwnBreaker>,
    /// Self-fencing: no call starts at or after this instant (set by the
    /// replica's lease bookkeeping; `None` means no limit).
    pub(crate) fence_at: Option<Instant>,
}

/// An experiment's own breaker for one key: open after its isolated
/// failures, one probe after the cooldown.
#[derive(Debug)]
struct OwnBreaker {
    open_since: Instant,
    until: Instant,
    probing: bool,
    last: String,
}

/// The rate-limit keys of a plan, computed by the provider adapter.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlanKeys {
    /// Key of the task call.
    pub task: RateKey,
    /// Key of each evaluator, in the plan's order.
    pub evaluators: Vec<RateKey>,
}

impl ExperimentState {
    pub(crate) fn new(
        claim: Claim,
        plan: &ExperimentPlan,
        keys: PlanKeys,
        config: &Config,
        order_key: u64,
        now: Instant,
    ) -> Self {
        let cap = plan
            .max_concurrency
            .map(|c| c.max(1) as usize)
            .or(config.experiment_max_concurrency)
            .unwrap_or(usize::MAX);
        let evaluators = plan
            .evaluators
            .iter()
            .zip(keys.evaluators)
            .map(|(e, k)| (Arc::new(e.clone()), k, Arc::from(e.name.as_str())))
            .collect();
        Self {
            claim,
            mode: Mode::Running,
            task_call: Arc::new(plan.task.clone()),
            task_key: keys.task,
            evaluators,
            cap,
            phase: Phase::EvalSweep,
            evals: VecDeque::new(),
            retries: BinaryHeap::new(),
            tasks: VecDeque::new(),
            busy: FastSet::default(),
            pending_tasks: FastMap::default(),
            in_flight: 0,
            writing: 0,
            task_sweep: Sweep::new(),
            eval_sweep: Sweep::new(),
            fetch_failures: 0,
            fetch_retry_at: None,
            started: now,
            open_keys_logged: HashSet::new(),
            waiting: None,
            failures_logged: 0,
            failures_to_log: config.failures_logged,
            retry_seq: 0,
            wake: None,
            order_key,
            own_breakers: HashMap::new(),
            fence_at: None,
        }
    }

    pub(crate) fn id(&self) -> ExperimentId {
        self.claim.experiment
    }

    pub(crate) fn is_running(&self) -> bool {
        self.mode == Mode::Running
    }

    pub(crate) fn counts(&self) -> ExperimentCounts {
        ExperimentCounts {
            tasks: self.tasks.len(),
            evals: self.evals.len(),
            retries: self.retries.len(),
            in_flight: self.in_flight,
            writing: self.writing,
        }
    }

    pub(crate) fn fetch_retry_at(&self) -> Option<Instant> {
        self.fetch_retry_at
    }

    #[cfg(test)]
    pub(crate) fn cap(&self) -> usize {
        self.cap
    }

    #[cfg(test)]
    pub(crate) fn evaluator_count(&self) -> usize {
        self.evaluators.len()
    }

    /// Whether a store fetch is under way (its answer will come back).
    fn fetching(&self) -> bool {
        self.task_sweep.fetching.is_some() || self.eval_sweep.fetching.is_some()
    }

    /// Asks for the next job in priority order: evals, then retries whose
    /// backoff has elapsed, then new tasks. A class whose head is throttled
    /// does not block a later class with a permitted key.
    /// Adds the jobs this experiment has ready, per rate-limit key, to
    /// `demand`: buffered evals, retries (due or not: they will be soon) and
    /// buffered tasks. Nothing while draining: no more calls will start.
    pub(crate) fn add_demand(&self, demand: &mut HashMap<RateKey, u64>) {
        if !self.is_running() {
            return;
        }
        for job in &self.evals {
            *demand.entry(job.key.clone()).or_default() += 1;
        }
        for retry in &self.retries {
            *demand.entry(retry.job.key.clone()).or_default() += 1;
        }
        if !self.tasks.is_empty() {
            *demand.entry(self.task_key.clone()).or_default() += self.tasks.len() as u64;
        }
    }

    pub(crate) fn next_job<A: Advisor + ?Sized>(
        &mut self,
        now: Instant,
        advisor: &A,
        estimate: &dyn Fn(&Job) -> Option<u64>,
        config: &Config,
        notes: &KeyNotes,
        actions: &mut VecDeque<Action>,
    ) -> Next {
        let fenced = self.fence_at.is_some_and(|at| now >= at);
        if !self.is_running() || self.in_flight >= self.cap || fenced {
            self.wake = None;
            return Next::Busy;
        }
        let mut wake: Option<Instant> = None;
        let mut refused: Option<RateKey> = None;

        // 1. Evals of runs that just succeeded (or found by the sweep).
        if let Some(head) = self.evals.front() {
            match self.limit_check(&head.key, config, notes, now) {
                Err(msg) => return Next::GaveUp(msg),
                Ok(deadline) => wake = deadline.map_or(wake, |d| earliest(wake, d)),
            }
            let tokens = estimate(head);
            let key = head.key.clone();
            match self.acquire(advisor, &key, tokens, now, config) {
                Acquire::Permit => {
                    if let Some(mut job) = self.evals.pop_front() {
                        job.tokens_reserved = tokens;
                        return self.dispatched(job);
                    }
                }
                Acquire::Wait { until, reason } => {
                    if let Some(msg) = self.gave_up(&key, reason, now, config, notes, actions) {
                        return Next::GaveUp(msg);
                    }
                    refused = Some(key);
                    wake = earliest(wake, until);
                }
            }
        }

        // 2. Retries whose backoff has elapsed, earliest first.
        if let Some(top) = self.retries.peek() {
            match self.limit_check(&top.job.key, config, notes, now) {
                Err(msg) => return Next::GaveUp(msg),
                Ok(deadline) => wake = deadline.map_or(wake, |d| earliest(wake, d)),
            }
            if top.ready_at <= now {
                if refused.as_ref() != Some(&top.job.key) {
                    let tokens = estimate(&top.job);
                    let key = top.job.key.clone();
                    match self.acquire(advisor, &key, tokens, now, config) {
                        Acquire::Permit => {
                            if let Some(Retry { mut job, .. }) = self.retries.pop() {
                                job.tokens_reserved = tokens;
                                return self.dispatched(job);
                            }
                        }
                        Acquire::Wait { until, reason } => {
                            if let Some(msg) =
                                self.gave_up(&key, reason, now, config, notes, actions)
                            {
                                return Next::GaveUp(msg);
                            }
                            wake = earliest(wake, until);
                            refused = Some(key);
                        }
                    }
                }
            } else {
                wake = earliest(wake, top.ready_at);
            }
        }

        // 3. New tasks, once the eval sweep is over and while the backlog of
        //    evals, retries and pending writes is below the high watermark.
        let backlog = self.evals.len() + self.retries.len() + self.writing;
        if self.phase == Phase::Tasks
            && backlog < config.high_watermark
            && refused.as_ref() != Some(&self.task_key)
            && let Some(work) = self.tasks.front()
        {
            {
                match self.limit_check(&self.task_key, config, notes, now) {
                    Err(msg) => return Next::GaveUp(msg),
                    Ok(deadline) => wake = deadline.map_or(wake, |d| earliest(wake, d)),
                }
                let mut job = self.task_job(work.clone());
                let tokens = estimate(&job);
                let key = self.task_key.clone();
                match self.acquire(advisor, &key, tokens, now, config) {
                    Acquire::Permit => {
                        self.tasks.pop_front();
                        job.tokens_reserved = tokens;
                        return self.dispatched(job);
                    }
                    Acquire::Wait { until, reason } => {
                        let key = self.task_key.clone();
                        if let Some(msg) = self.gave_up(&key, reason, now, config, notes, actions) {
                            return Next::GaveUp(msg);
                        }
                        wake = earliest(wake, until);
                    }
                }
            }
        }

        if let Some(at) = self.fetch_retry_at {
            wake = earliest(wake, at);
        }
        // An advisor answering "wait until the past" must not make the driver spin.
        let wake = wake.map(|w| w.max(now + Duration::from_millis(1)));
        self.wake = wake;
        Next::NotReady
    }

    /// Asks this experiment's own breaker for the key, then the advisor.
    fn acquire<A: Advisor + ?Sized>(
        &mut self,
        advisor: &A,
        key: &RateKey,
        tokens: Option<u64>,
        now: Instant,
        config: &Config,
    ) -> Acquire {
        if let Some(b) = self.own_breakers.get(key)
            && (b.probing || now < b.until)
        {
            return Acquire::Wait {
                until: if b.probing {
                    now + config.experiment_breaker_cooldown
                } else {
                    b.until
                },
                reason: WaitReason::BreakerOpen {
                    open_since: b.open_since,
                },
            };
        }
        let answer = advisor.try_acquire(key, tokens, now);
        if answer == Acquire::Permit
            && let Some(b) = self.own_breakers.get_mut(key)
        {
            b.probing = true;
        }
        answer
    }

    /// Applies the isolation verdict on a call of this experiment on `key`
    /// to its own breaker. Returns the `last_error` text when the experiment
    /// must give up at once.
    pub(crate) fn own_breaker_outcome(
        &mut self,
        key: &RateKey,
        verdict: &Verdict,
        now: Instant,
        config: &Config,
        actions: &mut VecDeque<Action>,
    ) -> Option<String> {
        if verdict.close {
            self.own_breakers.remove(key);
            return None;
        }
        let until = now + config.experiment_breaker_cooldown;
        match &verdict.trip {
            Some(trip) => {
                if let Some(message) = &trip.hopeless {
                    return Some(format!(
                        "every call of this experiment to provider `{}` failed ({} in a row) while other experiments on the same rate-limit key succeeded; last error: {message}",
                        key.provider(),
                        trip.failures
                    ));
                }
                let b = self.own_breakers.entry(key.clone()).or_insert_with(|| {
                    actions.push_back(Action::Log {
                        experiment: self.claim.experiment,
                        level: LogLevel::Warn,
                        message: format!(
                            "calls of this experiment to provider `{}` keep failing while other experiments on the key do not; they wait (last error: {})",
                            key.provider(),
                            trip.last
                        ),
                    });
                    OwnBreaker {
                        open_since: now,
                        until,
                        probing: false,
                        last: trip.last.clone(),
                    }
                });
                b.until = until;
                b.probing = false;
                b.last = trip.last.clone();
            }
            None => {
                if let Some(b) = self.own_breakers.get_mut(key)
                    && b.probing
                {
                    b.probing = false;
                    b.until = until;
                }
            }
        }
        None
    }

    fn dispatched(&mut self, job: Job) -> Next {
        self.in_flight += 1;
        self.busy.insert(job.work_key());
        self.wake = None;
        Next::Ready(job)
    }

    /// The give-up of a key that has answered only 429s (DESIGN §6): `Err`
    /// with the `last_error` once `rate_limit_give_up` has passed, else when
    /// that will be (so the experiment is visited then even if the advisor
    /// asks it to wait far longer, for example until a daily quota resets).
    fn limit_check(
        &self,
        key: &RateKey,
        config: &Config,
        notes: &KeyNotes,
        now: Instant,
    ) -> Result<Option<Instant>, String> {
        let Some(limited) = notes.limited(key) else {
            return Ok(None);
        };
        let deadline = limited.deadline(self.started, config.rate_limit_give_up);
        if now < deadline {
            return Ok(Some(deadline));
        }
        Err(limited.give_up_message(key, limited.since.max(self.started), now))
    }

    /// Shows, once per wait, that the experiment waits on `key`'s used-up
    /// quota: a log entry and an [`Action::Waiting`].
    pub(crate) fn note_waiting(
        &mut self,
        key: &RateKey,
        until: Option<Instant>,
        now: Instant,
        config: &Config,
        notes: &KeyNotes,
        actions: &mut VecDeque<Action>,
    ) {
        // One wait is shown at a time (an experiment whose task and judge
        // keys are both spent shows the first until it is back), so the log
        // gets one entry per wait, not one per visit.
        if self.waiting.is_some() {
            return;
        }
        self.waiting = Some(key.clone());
        let note = notes.quota(key);
        let until = until.or(note.and_then(|n| n.until));
        let give_up_at = notes
            .limited(key)
            .map(|l| l.deadline(self.started, config.rate_limit_give_up));
        actions.push_back(Action::Log {
            experiment: self.id(),
            level: LogLevel::Warn,
            message: waiting_message(key, note, until, give_up_at, now),
        });
        actions.push_back(Action::Waiting {
            experiment: self.id(),
            waiting: Some(Waiting {
                key: key.clone(),
                until,
                message: note.map(|n| n.message.clone()),
            }),
        });
    }

    /// The quota of `key` is back (one of its calls succeeded): the
    /// experiment no longer shows that it waits on it.
    pub(crate) fn quota_back(&mut self, key: &RateKey, actions: &mut VecDeque<Action>) {
        if self.waiting.as_ref() != Some(key) {
            return;
        }
        self.waiting = None;
        actions.push_back(Action::Log {
            experiment: self.id(),
            level: LogLevel::Info,
            message: format!(
                "the quota of provider `{}` (key `{}`) is back: calls continue",
                key.provider(),
                key.as_str()
            ),
        });
        actions.push_back(Action::Waiting {
            experiment: self.id(),
            waiting: None,
        });
    }

    /// Whether waiting on `key` for `reason` has lasted past the give-up time;
    /// returns the `last_error` text if so.
    fn gave_up(
        &mut self,
        key: &RateKey,
        reason: WaitReason,
        now: Instant,
        config: &Config,
        notes: &KeyNotes,
        actions: &mut VecDeque<Action>,
    ) -> Option<String> {
        let open_since = match reason {
            WaitReason::BreakerOpen { open_since } => open_since,
            WaitReason::Quota { until } => {
                self.note_waiting(key, until, now, config, notes, actions);
                return None;
            }
            WaitReason::Rate | WaitReason::Paused => return None,
        };
        self.note_open_key(key, actions);
        // Counted from this session's start at the earliest: a resume after
        // an outage gets the whole give-up time again.
        let open_for = now.saturating_duration_since(open_since.max(self.started));
        if open_for < config.breaker_give_up {
            return None;
        }
        let last = self
            .own_breakers
            .get(key)
            .map(|b| &b.last)
            .or_else(|| notes.last_errors.get(key))
            .map(|m| format!("; last error: {m}"))
            .unwrap_or_default();
        Some(format!(
            "provider `{}` unavailable: its circuit breaker has been open for {}s{last}",
            key.provider(),
            open_for.as_secs()
        ))
    }

    fn task_job(&self, work: TaskWork) -> Job {
        Job {
            experiment: self.claim.experiment,
            kind: JobKind::Task {
                call: self.task_call.clone(),
                work,
            },
            key: self.task_key.clone(),
            attempt: 1,
            transient_failures: 0,
            rate_limited: 0,
            earlier_latency_ms: 0,
            tokens_reserved: None,
        }
    }

    /// A call ended. Returns whether it freed a slot of this experiment.
    pub(crate) fn handle_call_finished(
        &mut self,
        mut job: Job,
        report: CallReport,
        now: Instant,
        config: &Config,
        rng: &mut Rng,
        actions: &mut VecDeque<Action>,
    ) {
        self.in_flight = self.in_flight.saturating_sub(1);
        let key = job.work_key();
        self.busy.remove(&key);
        if self.mode == Mode::Draining(Departure::Lost) {
            // Someone else owns the experiment now: the result would be
            // fenced anyway, so it is discarded here, in memory only.
            return;
        }
        let latency_ms = duration_ms(report.latency);
        match report.outcome {
            Outcome::Success(reply) => {
                self.write(job, Ok(reply), latency_ms, report.usage, actions)
            }
            Outcome::RateLimited { retry_after, .. } => {
                job.rate_limited += 1;
                let delay = match retry_after {
                    // Honour the provider's pause, spread a little so that a
                    // crowd of waiting jobs does not return at one instant.
                    Some(pause) => pause.mul_f64(1.0 + config.retry_after_spread * rng.unit()),
                    None => backoff(job.rate_limited, config, rng),
                };
                self.retry(job, latency_ms, now + delay);
            }
            Outcome::QuotaExhausted { retry_after, .. } => {
                // Not a failure of this work item: it waits for the quota
                // without counting toward max_retries. The advisor holds the
                // key (one probe at a time), so without a stated time the
                // ordinary backoff only decides when to ask it again.
                job.rate_limited += 1;
                let backoff = backoff(job.rate_limited, config, rng);
                let ready_at = retry_after
                    .and_then(|wait| now.checked_add(wait))
                    .unwrap_or(now + backoff);
                self.retry(job, latency_ms, ready_at);
            }
            Outcome::Transient { message } => {
                job.transient_failures += 1;
                if job.transient_failures > config.max_retries {
                    let message = format!("{message} (gave up after {} attempts)", job.attempt);
                    self.write(job, Err(message), latency_ms, report.usage, actions);
                } else {
                    let delay = backoff(job.transient_failures, config, rng);
                    self.retry(job, latency_ms, now + delay);
                }
            }
            Outcome::Permanent { message } => {
                self.write(job, Err(message), latency_ms, report.usage, actions)
            }
        }
    }

    fn retry(&mut self, mut job: Job, latency_ms: u64, ready_at: Instant) {
        if !self.is_running() {
            // Stopping: the work stays unrecorded and is found again by the
            // next session's sweep.
            return;
        }
        job.earlier_latency_ms = job.earlier_latency_ms.saturating_add(latency_ms);
        job.attempt += 1;
        job.tokens_reserved = None;
        self.busy.insert(job.work_key());
        self.retry_seq += 1;
        self.retries.push(Retry {
            ready_at,
            seq: self.retry_seq,
            job,
        });
    }

    fn write(
        &mut self,
        job: Job,
        result: Result<Reply, String>,
        latency_ms: u64,
        usage: Option<crate::outcome::Usage>,
        actions: &mut VecDeque<Action>,
    ) {
        let attempts = job.attempt;
        let total_latency_ms = job.earlier_latency_ms.saturating_add(latency_ms);
        if let Err(message) = &result {
            self.log_failure(&job, message, actions);
        }
        self.busy.insert(job.work_key());
        self.writing += 1;
        match job.kind {
            JobKind::Task { work, .. } => {
                let (output, error) = match result {
                    Ok(Reply::Task { output }) => (Some(output), None),
                    Ok(other) => (
                        None,
                        Some(format!(
                            "the provider returned an evaluator reply to a task call: {other:?}"
                        )),
                    ),
                    Err(e) => (None, Some(e)),
                };
                if let Some(output) = &output {
                    self.pending_tasks.insert(
                        work.key,
                        PendingTask {
                            example: work.key.example,
                            data: work.data.clone(),
                            output: Arc::from(output.as_str()),
                        },
                    );
                }
                actions.push_back(Action::WriteRun {
                    claim: self.claim.clone(),
                    record: RunRecord {
                        key: work.key,
                        output,
                        error,
                        attempts,
                        latency_ms,
                        total_latency_ms,
                        usage,
                    },
                });
            }
            JobKind::Eval { evaluator, work } => {
                let (label, score, explanation, error) = match result {
                    Ok(Reply::Eval {
                        label,
                        score,
                        explanation,
                    }) => (label, score, explanation, None),
                    Ok(other) => (
                        None,
                        None,
                        None,
                        Some(format!(
                            "the provider returned a task reply to an evaluator call: {other:?}"
                        )),
                    ),
                    Err(e) => (None, None, None, Some(e)),
                };
                actions.push_back(Action::WriteAnnotation {
                    claim: self.claim.clone(),
                    evaluator: Arc::from(evaluator.name.as_str()),
                    record: AnnotationRecord {
                        key: work.key,
                        label,
                        score,
                        explanation,
                        error,
                        attempts,
                        latency_ms,
                        usage,
                    },
                });
            }
        }
    }

    fn log_failure(&mut self, job: &Job, message: &str, actions: &mut VecDeque<Action>) {
        self.failures_logged += 1;
        let what = match &job.kind {
            JobKind::Task { work, .. } => format!(
                "run of example {} (repetition {})",
                work.key.example, work.key.repetition
            ),
            JobKind::Eval { evaluator, work } => {
                format!("evaluator `{}` on run {}", evaluator.name, work.key.run)
            }
        };
        let most = self.failures_to_log;
        let message = match self.failures_logged.cmp(&most) {
            Ordering::Less | Ordering::Equal => format!("{what} failed: {message}"),
            Ordering::Greater if self.failures_logged == most.saturating_add(1) => format!(
                "more than {most} failures in this session; further ones are only in the results"
            ),
            Ordering::Greater => return,
        };
        actions.push_back(Action::Log {
            experiment: self.id(),
            level: LogLevel::Error,
            message,
        });
    }

    /// A run write ended.
    pub(crate) fn handle_run_written(
        &mut self,
        key: TaskKey,
        result: WriteResult<RunWrite>,
        actions: &mut VecDeque<Action>,
    ) {
        self.writing = self.writing.saturating_sub(1);
        self.busy.remove(&WorkKey::Task(key));
        let pending = self.pending_tasks.remove(&key);
        match result {
            WriteResult::Done(Write::Accepted(written)) => {
                if let (true, Some(p)) = (written.new_success && self.is_running(), pending) {
                    self.queue_evals(written, p);
                }
            }
            WriteResult::Done(Write::Fenced) => self.lose(actions),
            WriteResult::Abandoned(error) => actions.push_back(Action::Log {
                experiment: self.id(),
                level: LogLevel::Error,
                message: format!(
                    "could not record the run of example {} (repetition {}): {error}; it will run again on resume",
                    key.example, key.repetition
                ),
            }),
        }
    }

    fn queue_evals(&mut self, written: RunWrite, pending: PendingTask) {
        for (evaluator, key, _) in &self.evaluators {
            let work = EvalWork {
                key: EvalKey {
                    run: written.id,
                    evaluator: evaluator.id,
                },
                example: pending.example,
                data: pending.data.clone(),
                output: pending.output.clone(),
            };
            if self.busy.contains(&WorkKey::Eval(work.key)) {
                continue;
            }
            self.evals.push_back(Job {
                experiment: self.claim.experiment,
                kind: JobKind::Eval {
                    evaluator: evaluator.clone(),
                    work,
                },
                key: key.clone(),
                attempt: 1,
                transient_failures: 0,
                rate_limited: 0,
                earlier_latency_ms: 0,
                tokens_reserved: None,
            });
        }
    }

    /// An annotation write ended.
    pub(crate) fn handle_annotation_written(
        &mut self,
        key: EvalKey,
        result: WriteResult<()>,
        actions: &mut VecDeque<Action>,
    ) {
        self.writing = self.writing.saturating_sub(1);
        self.busy.remove(&WorkKey::Eval(key));
        match result {
            WriteResult::Done(Write::Accepted(())) => {}
            WriteResult::Done(Write::Fenced) => self.lose(actions),
            WriteResult::Abandoned(error) => actions.push_back(Action::Log {
                experiment: self.id(),
                level: LogLevel::Error,
                message: format!(
                    "could not record the annotation of run {} by evaluator {}: {error}; it will run again on resume",
                    key.run, key.evaluator
                ),
            }),
        }
    }

    fn lose(&mut self, actions: &mut VecDeque<Action>) {
        if self.mode != Mode::Draining(Departure::Lost) {
            actions.push_back(Action::Log {
                experiment: self.id(),
                level: LogLevel::Warn,
                message: format!(
                    "replica {} lost ownership (epoch {}): a later claim exists",
                    self.claim.replica, self.claim.epoch
                ),
            });
        }
        self.drain(Departure::Lost);
    }

    /// A page of task work arrived.
    pub(crate) fn handle_task_page(
        &mut self,
        page: Result<Vec<TaskWork>, crate::Error>,
        now: Instant,
        config: &Config,
        actions: &mut VecDeque<Action>,
    ) {
        match self.task_sweep.receive(self.is_running(), page, |w| w.key) {
            Ok(Some(items)) => {
                self.fetch_failures = 0;
                let busy = &self.busy;
                self.tasks.extend(
                    items
                        .into_iter()
                        .filter(|w| !busy.contains(&WorkKey::Task(w.key))),
                );
            }
            Ok(None) => {}
            Err(e) => self.fetch_failed(e, now, config, actions),
        }
    }

    /// A page of eval work arrived.
    pub(crate) fn handle_eval_page(
        &mut self,
        page: Result<Vec<EvalWork>, crate::Error>,
        now: Instant,
        config: &Config,
        actions: &mut VecDeque<Action>,
    ) {
        match self.eval_sweep.receive(self.is_running(), page, |w| w.key) {
            Ok(Some(items)) => {
                self.fetch_failures = 0;
                for work in items {
                    if self.busy.contains(&WorkKey::Eval(work.key)) {
                        continue;
                    }
                    let Some((evaluator, key, _)) = self
                        .evaluators
                        .iter()
                        .find(|(e, _, _)| e.id == work.key.evaluator)
                    else {
                        // An evaluator attached after the plan was loaded:
                        // the next session scores with it.
                        continue;
                    };
                    let job = Job {
                        experiment: self.claim.experiment,
                        kind: JobKind::Eval {
                            evaluator: evaluator.clone(),
                            work,
                        },
                        key: key.clone(),
                        attempt: 1,
                        transient_failures: 0,
                        rate_limited: 0,
                        earlier_latency_ms: 0,
                        tokens_reserved: None,
                    };
                    self.evals.push_back(job);
                }
            }
            Ok(None) => {}
            Err(e) => self.fetch_failed(e, now, config, actions),
        }
    }

    fn fetch_failed(
        &mut self,
        error: crate::Error,
        now: Instant,
        config: &Config,
        actions: &mut VecDeque<Action>,
    ) {
        match error {
            crate::Error::NotFound(_) => self.lose(actions),
            crate::Error::Corrupt(msg) => {
                actions.push_back(Action::Log {
                    experiment: self.id(),
                    level: LogLevel::Error,
                    message: format!("stored data could not be read: {msg}"),
                });
                self.drain(Departure::Errored(format!(
                    "stored data could not be read: {msg}"
                )));
            }
            other => {
                self.fetch_failures += 1;
                let delay = store_backoff(self.fetch_failures, config);
                self.fetch_retry_at = Some(now + delay);
                if self.fetch_failures == 1 {
                    actions.push_back(Action::Log {
                        experiment: self.id(),
                        level: LogLevel::Warn,
                        message: format!("reading pending work failed, retrying: {other}"),
                    });
                }
            }
        }
    }

    /// Requests pages when buffers are low (and no fetch is under way or
    /// backing off).
    pub(crate) fn refill(&mut self, now: Instant, config: &Config, actions: &mut VecDeque<Action>) {
        if !self.is_running() {
            return;
        }
        if let Some(at) = self.fetch_retry_at {
            if at > now {
                return;
            }
            self.fetch_retry_at = None;
        }
        if self.phase == Phase::EvalSweep
            && !self.eval_sweep.exhausted
            && self.eval_sweep.fetching.is_none()
            && self.evals.len() <= config.low_watermark
        {
            let limit = config.high_watermark - self.evals.len();
            self.eval_sweep.fetching = Some(limit);
            actions.push_back(Action::FetchEvals {
                claim: self.claim.clone(),
                after: self.eval_sweep.cursor,
                limit,
            });
        }
        if !self.task_sweep.exhausted
            && self.task_sweep.fetching.is_none()
            && self.tasks.len() <= config.low_watermark
        {
            let limit = config.high_watermark - self.tasks.len();
            self.task_sweep.fetching = Some(limit);
            actions.push_back(Action::FetchTasks {
                claim: self.claim.clone(),
                after: self.task_sweep.cursor,
                limit,
            });
        }
    }

    /// Moves the phase forward and reports whether the experiment is done
    /// (completed, or drained after a stop) — exactly once.
    pub(crate) fn settle(&mut self) -> Option<Action> {
        match &self.mode {
            Mode::Running => {
                if self.phase == Phase::EvalSweep && self.eval_sweep.exhausted {
                    self.phase = Phase::Tasks;
                }
                let done = self.phase == Phase::Tasks
                    && self.task_sweep.exhausted
                    && !self.fetching()
                    && self.tasks.is_empty()
                    && self.evals.is_empty()
                    && self.retries.is_empty()
                    && self.in_flight == 0
                    && self.writing == 0;
                done.then(|| Action::Finish {
                    claim: self.claim.clone(),
                    end: Finish::Completed,
                })
            }
            Mode::Draining(why) => {
                if self.in_flight > 0 || self.writing > 0 {
                    return None;
                }
                Some(match why {
                    Departure::Errored(msg) => Action::Finish {
                        claim: self.claim.clone(),
                        end: Finish::Error(msg.clone()),
                    },
                    other => Action::Departed {
                        claim: self.claim.clone(),
                        why: other.clone(),
                    },
                })
            }
        }
    }

    /// Stops dispatching and clears the queues; in-flight calls finish (and
    /// their results are written unless the experiment was lost). A later,
    /// stronger reason replaces a weaker one: lost > stopped > errored, released.
    pub(crate) fn drain(&mut self, why: Departure) {
        let replace = match (&self.mode, &why) {
            (Mode::Running, _) => true,
            (Mode::Draining(Departure::Lost), _) => false,
            (Mode::Draining(_), Departure::Lost) => true,
            (Mode::Draining(Departure::Stopped), _) => false,
            (Mode::Draining(_), Departure::Stopped) => true,
            (Mode::Draining(_), _) => false,
        };
        if !replace {
            return;
        }
        if why == Departure::Lost {
            // Results of writes under way will be fenced; nothing to keep.
            self.pending_tasks.clear();
        }
        self.mode = Mode::Draining(why);
        for job in self.evals.drain(..) {
            self.busy.remove(&job.work_key());
        }
        for retry in self.retries.drain() {
            self.busy.remove(&retry.job.work_key());
        }
        self.tasks.clear();
        self.wake = None;
        self.fetch_retry_at = None;
        self.task_sweep.fetching = None;
        self.eval_sweep.fetching = None;
    }

    /// Logs, once per key and session, that a needed key's breaker is open.
    fn note_open_key(&mut self, key: &RateKey, actions: &mut VecDeque<Action>) {
        if self.open_keys_logged.insert(key.clone()) {
            actions.push_back(Action::Log {
                experiment: self.id(),
                level: LogLevel::Warn,
                message: format!(
                    "provider `{}` is failing: its circuit breaker is open, calls wait",
                    key.provider()
                ),
            });
        }
    }

    /// Every work identity currently in flight, waiting to retry, or being
    /// written (for property tests).
    #[cfg(test)]
    pub(crate) fn busy(&self) -> &FastSet<WorkKey> {
        &self.busy
    }

    /// Whether one of this experiment's own breakers is open or probing
    /// (for property tests).
    #[cfg(test)]
    pub(crate) fn has_own_breaker(&self) -> bool {
        !self.own_breakers.is_empty()
    }

    /// Retries whose backoff has elapsed (for property tests).
    #[cfg(test)]
    pub(crate) fn ready_retries(&self, now: Instant) -> usize {
        self.retries.iter().filter(|r| r.ready_at <= now).count()
    }
}

fn earliest(a: Option<Instant>, b: Instant) -> Option<Instant> {
    Some(a.map_or(b, |a| a.min(b)))
}

fn duration_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Retry delay after the `n`-th failure (1-based): `base × 2^(n-1)`, capped
/// at `backoff_max`, plus up to `backoff_jitter` of it at random.
pub fn backoff(n: u32, config: &Config, rng: &mut Rng) -> Duration {
    let exp = n.saturating_sub(1).min(30);
    let base = config
        .backoff_base
        .saturating_mul(1u32 << exp)
        .min(config.backoff_max);
    base.mul_f64(1.0 + config.backoff_jitter * rng.unit())
}

/// Delay before retrying a failed store call for the `n`-th time (1-based).
pub fn store_backoff(n: u32, config: &Config) -> Duration {
    let exp = n.saturating_sub(1).min(30);
    config
        .store_retry_base
        .saturating_mul(1u32 << exp)
        .min(config.store_retry_max)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_the_base_and_is_capped() {
        let config = Config {
            backoff_jitter: 0.0,
            ..Config::default()
        };
        let mut rng = Rng::new(1);
        let delays: Vec<u64> = (1..=8)
            .map(|n| backoff(n, &config, &mut rng).as_secs())
            .collect();
        assert_eq!(delays, vec![1, 2, 4, 8, 16, 32, 60, 60]);
        assert_eq!(backoff(u32::MAX, &config, &mut rng).as_secs(), 60);
    }

    #[test]
    fn backoff_jitter_stays_within_its_fraction() {
        let config = Config::default();
        let mut rng = Rng::new(9);
        for _ in 0..1000 {
            let d = backoff(2, &config, &mut rng);
            assert!(d >= Duration::from_secs(2) && d < Duration::from_millis(2500));
        }
    }

    #[test]
    fn store_backoff_is_capped() {
        let config = Config::default();
        assert_eq!(store_backoff(1, &config), Duration::from_millis(100));
        assert_eq!(store_backoff(3, &config), Duration::from_millis(400));
        assert_eq!(store_backoff(50, &config), Duration::from_secs(5));
    }
}
