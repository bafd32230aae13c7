//! In-memory implementations of the ports, for tests, examples and
//! benchmarks: [`MemoryStore`] (a faithful [`Store`] — the store crate's
//! conformance suite runs against it), [`FnProvider`] (a [`Provider`] whose
//! replies come from a closure) and [`Unlimited`] (an [`Advisor`] that always
//! permits).
//!
//! None of them reads a clock: `MemoryStore` asks the time from a closure the
//! caller supplies (for tests, tokio's paused clock), `FnProvider` sleeps
//! through the [`Clock`] port.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use uuid::Uuid;

use crate::error::Error;
use crate::ids::{
    Claim, DatasetId, Epoch, EvaluatorId, ExampleId, ExperimentId, RateKey, ReplicaId, RunId,
};
use crate::outcome::{CallReport, Observation, Outcome};
use crate::ports::{
    Acquire, Advisor, AnnotationRecord, ChunkSink, Clock, Finish, LogLevel, Provider, RunRecord,
    RunWrite, Store, Write,
};
use crate::spec::{CallSpec, EvaluatorSpec, ExampleData, ExperimentPlan, ExperimentStatus};
use crate::work::{EvalCursor, EvalKey, EvalWork, Job, TaskCursor, TaskKey, TaskWork, WorkKey};

/// A source of the current instant.
pub type TimeSource = Arc<dyn Fn() -> Instant + Send + Sync>;

/// The stored state of an experiment, as [`MemoryStore::experiment`] shows it.
#[derive(Clone, Debug, PartialEq)]
pub struct ExperimentRow {
    /// What it runs.
    pub plan: ExperimentPlan,
    /// Status.
    pub status: ExperimentStatus,
    /// Owner, if claimed.
    pub claimed_by: Option<ReplicaId>,
    /// When the claim was made or renewed.
    pub claimed_at: Option<Instant>,
    /// Fencing token.
    pub epoch: Epoch,
    /// Why it errored.
    pub last_error: Option<String>,
}

/// A stored run.
#[derive(Clone, Debug, PartialEq)]
pub struct StoredRun {
    /// Row id.
    pub id: RunId,
    /// Example × repetition.
    pub key: TaskKey,
    /// The record as last written.
    pub record: RunRecord,
    /// Epoch of the write that stored it.
    pub epoch: Epoch,
}

/// A stored annotation.
#[derive(Clone, Debug, PartialEq)]
pub struct StoredAnnotation {
    /// Run × evaluator.
    pub key: EvalKey,
    /// The record as last written.
    pub record: AnnotationRecord,
    /// Epoch of the write that stored it.
    pub epoch: Epoch,
}

/// Text as the SQL stores keep it: PostgreSQL cannot hold NUL, so both
/// replace it with U+FFFD; the fake does the same to stay faithful.
fn clean(text: &str) -> String {
    text.replace('\0', "\u{fffd}")
}

fn clean_opt(text: &mut Option<String>) {
    if let Some(t) = text.as_mut()
        && t.contains('\0')
    {
        *t = clean(t);
    }
}

#[derive(Default)]
struct Inner {
    next_id: i64,
    datasets: HashMap<DatasetId, BTreeSet<ExampleId>>,
    examples: HashMap<ExampleId, Arc<ExampleData>>,
    experiments: BTreeMap<ExperimentId, ExperimentRow>,
    runs: BTreeMap<(ExperimentId, TaskKey), StoredRun>,
    run_keys: HashMap<RunId, (ExperimentId, TaskKey)>,
    annotations: BTreeMap<(ExperimentId, EvalKey), StoredAnnotation>,
    logs: Vec<(ExperimentId, LogLevel, String)>,
    accepted_writes: HashMap<(ExperimentId, WorkKey), u32>,
}

impl Inner {
    fn next(&mut self) -> i64 {
        self.next_id += 1;
        self.next_id
    }

    fn fence_ok(&self, claim: &Claim) -> bool {
        self.experiments.get(&claim.experiment).is_some_and(|e| {
            e.epoch == claim.epoch && e.claimed_by.as_ref().is_none_or(|r| *r == claim.replica)
        })
    }

    fn claim(&mut self, id: ExperimentId, replica: &ReplicaId, now: Instant) -> Option<Claim> {
        let row = self.experiments.get_mut(&id)?;
        row.epoch = Epoch(row.epoch.0 + 1);
        row.claimed_by = Some(replica.clone());
        row.claimed_at = Some(now);
        row.status = ExperimentStatus::Running;
        row.last_error = None;
        Some(Claim {
            experiment: id,
            replica: replica.clone(),
            epoch: row.epoch,
        })
    }
}

/// A [`Store`] in memory, with the same rules as the SQL stores: conditional
/// lifecycle transitions, epoch fencing, idempotent writes where a success is
/// never replaced by a failure, and keyset-paginated work reconstruction.
///
/// Besides the port it offers the seeding and inspection methods tests need,
/// and fault injection ([`MemoryStore::set_available`]).
pub struct MemoryStore {
    inner: Mutex<Inner>,
    now: TimeSource,
    available: AtomicBool,
    fenced: AtomicU64,
}

impl std::fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryStore").finish_non_exhaustive()
    }
}

impl MemoryStore {
    /// An empty store reading the time from `now`.
    pub fn new(now: TimeSource) -> Self {
        Self {
            inner: Mutex::new(Inner::default()),
            now,
            available: AtomicBool::new(true),
            fenced: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock can only come from a bug in this
        // module; the data is still consistent enough for tests to report it.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn check(&self) -> Result<(), Error> {
        if self.available.load(Ordering::SeqCst) {
            Ok(())
        } else {
            Err(Error::StoreUnavailable(
                "memory store switched off by the test".into(),
            ))
        }
    }

    /// Makes every port call fail with [`Error::StoreUnavailable`] (false) or
    /// work again (true), to simulate a database outage.
    pub fn set_available(&self, available: bool) {
        self.available.store(available, Ordering::SeqCst);
    }

    /// Creates a dataset holding `examples`.
    pub fn create_dataset(&self, examples: Vec<ExampleData>) -> DatasetId {
        let mut inner = self.lock();
        let id = DatasetId(Uuid::from_u128(inner.next() as u128));
        inner.datasets.insert(id, BTreeSet::new());
        drop(inner);
        self.add_examples(id, examples);
        id
    }

    /// Appends examples to a dataset; returns their ids (empty if the
    /// dataset does not exist).
    pub fn add_examples(&self, dataset: DatasetId, examples: Vec<ExampleData>) -> Vec<ExampleId> {
        let mut inner = self.lock();
        if !inner.datasets.contains_key(&dataset) {
            return Vec::new();
        }
        let mut ids = Vec::with_capacity(examples.len());
        for data in examples {
            let id = ExampleId(inner.next());
            inner.examples.insert(id, Arc::new(data));
            ids.push(id);
        }
        if let Some(list) = inner.datasets.get_mut(&dataset) {
            list.extend(&ids);
        }
        ids
    }

    /// Creates a stopped experiment over `dataset`. Evaluator ids in `plan`
    /// are replaced by fresh ones; `plan.id` and `plan.dataset` are set.
    pub fn create_experiment(&self, dataset: DatasetId, mut plan: ExperimentPlan) -> ExperimentId {
        let mut inner = self.lock();
        let id = ExperimentId(Uuid::from_u128(inner.next() as u128));
        plan.id = id;
        plan.dataset = dataset;
        for e in &mut plan.evaluators {
            e.id = EvaluatorId(inner.next());
        }
        inner.experiments.insert(
            id,
            ExperimentRow {
                plan,
                status: ExperimentStatus::Stopped,
                claimed_by: None,
                claimed_at: None,
                epoch: Epoch(0),
                last_error: None,
            },
        );
        id
    }

    /// Attaches one more evaluator; used by the next session.
    pub fn attach_evaluator(
        &self,
        experiment: ExperimentId,
        mut evaluator: EvaluatorSpec,
    ) -> Option<EvaluatorId> {
        let mut inner = self.lock();
        let id = EvaluatorId(inner.next());
        evaluator.id = id;
        inner.experiments.get_mut(&experiment).map(|row| {
            row.plan.evaluators.push(evaluator);
            id
        })
    }

    /// Start or resume: claims the experiment for `replica` with a new epoch
    /// when nobody holds it. `None` when it does not exist or is claimed.
    pub fn start(&self, experiment: ExperimentId, replica: &ReplicaId) -> Option<Claim> {
        let now = (self.now)();
        let mut inner = self.lock();
        if inner.experiments.get(&experiment)?.claimed_by.is_some() {
            return None;
        }
        inner.claim(experiment, replica, now)
    }

    /// Stop: status STOPPED, claim cleared (the epoch stays). Returns whether
    /// it was running.
    pub fn stop(&self, experiment: ExperimentId) -> bool {
        let mut inner = self.lock();
        match inner.experiments.get_mut(&experiment) {
            Some(row) if row.status == ExperimentStatus::Running => {
                row.status = ExperimentStatus::Stopped;
                row.claimed_by = None;
                row.claimed_at = None;
                true
            }
            _ => false,
        }
    }

    /// Deletes the experiment with its runs and annotations.
    pub fn delete(&self, experiment: ExperimentId) -> bool {
        let mut inner = self.lock();
        let existed = inner.experiments.remove(&experiment).is_some();
        inner.runs.retain(|(e, _), _| *e != experiment);
        inner.run_keys.retain(|_, (e, _)| *e != experiment);
        inner.annotations.retain(|(e, _), _| *e != experiment);
        existed
    }

    /// The stored experiment.
    pub fn experiment(&self, experiment: ExperimentId) -> Option<ExperimentRow> {
        self.lock().experiments.get(&experiment).cloned()
    }

    /// Every stored run of the experiment, in key order.
    pub fn runs(&self, experiment: ExperimentId) -> Vec<StoredRun> {
        self.lock()
            .runs
            .range(
                (
                    experiment,
                    TaskKey {
                        example: ExampleId(i64::MIN),
                        repetition: 0,
                    },
                )..,
            )
            .take_while(|((e, _), _)| *e == experiment)
            .map(|(_, r)| r.clone())
            .collect()
    }

    /// Every stored annotation of the experiment, in key order.
    pub fn annotations(&self, experiment: ExperimentId) -> Vec<StoredAnnotation> {
        self.lock()
            .annotations
            .iter()
            .filter(|((e, _), _)| *e == experiment)
            .map(|(_, a)| a.clone())
            .collect()
    }

    /// Log entries of the experiment, oldest first.
    pub fn logs(&self, experiment: ExperimentId) -> Vec<(LogLevel, String)> {
        self.lock()
            .logs
            .iter()
            .filter(|(e, _, _)| *e == experiment)
            .map(|(_, l, m)| (*l, m.clone()))
            .collect()
    }

    /// Writes rejected by fencing so far.
    pub fn fenced_writes(&self) -> u64 {
        self.fenced.load(Ordering::SeqCst)
    }

    /// How many accepted writes each work identity received (duplicates show
    /// as counts above one).
    pub fn accepted_writes(&self, experiment: ExperimentId) -> HashMap<WorkKey, u32> {
        self.lock()
            .accepted_writes
            .iter()
            .filter(|((e, _), _)| *e == experiment)
            .map(|((_, k), n)| (*k, *n))
            .collect()
    }

    /// Makes the experiment's claim look as old as `age` (a replica that
    /// stopped heartbeating that long ago).
    pub fn age_claim(&self, experiment: ExperimentId, age: Duration) {
        let now = (self.now)();
        if let Some(row) = self.lock().experiments.get_mut(&experiment) {
            row.claimed_at = row.claimed_at.map(|_| now.checked_sub(age).unwrap_or(now));
        }
    }
}

impl Store for MemoryStore {
    async fn reclaim_own(&self, replica: &ReplicaId) -> Result<Vec<Claim>, Error> {
        self.check()?;
        let now = (self.now)();
        let mut inner = self.lock();
        let ids: Vec<ExperimentId> = inner
            .experiments
            .iter()
            .filter(|(_, r)| {
                r.status == ExperimentStatus::Running && r.claimed_by.as_ref() == Some(replica)
            })
            .map(|(id, _)| *id)
            .collect();
        Ok(ids
            .into_iter()
            .filter_map(|id| inner.claim(id, replica, now))
            .collect())
    }

    async fn take_over_orphans(
        &self,
        replica: &ReplicaId,
        lease: Duration,
    ) -> Result<Vec<Claim>, Error> {
        self.check()?;
        let now = (self.now)();
        let mut inner = self.lock();
        let ids: Vec<ExperimentId> = inner
            .experiments
            .iter()
            .filter(|(_, r)| {
                r.status == ExperimentStatus::Running
                    && match r.claimed_at {
                        None => true,
                        Some(at) => now.saturating_duration_since(at) > lease,
                    }
            })
            .map(|(id, _)| *id)
            .collect();
        Ok(ids
            .into_iter()
            .filter_map(|id| inner.claim(id, replica, now))
            .collect())
    }

    async fn heartbeat(&self, claims: &[Claim]) -> Result<Vec<ExperimentId>, Error> {
        self.check()?;
        let now = (self.now)();
        let mut inner = self.lock();
        let mut owned = Vec::new();
        for c in claims {
            if let Some(row) = inner.experiments.get_mut(&c.experiment)
                && row.claimed_by.as_ref() == Some(&c.replica)
                && row.epoch == c.epoch
            {
                row.claimed_at = Some(now);
                owned.push(c.experiment);
            }
        }
        Ok(owned)
    }

    async fn release(&self, claims: &[Claim]) -> Result<(), Error> {
        self.check()?;
        let mut inner = self.lock();
        for c in claims {
            if let Some(row) = inner.experiments.get_mut(&c.experiment)
                && row.claimed_by.as_ref() == Some(&c.replica)
                && row.epoch == c.epoch
            {
                // Expired: the next scan takes it at once.
                row.claimed_at = None;
            }
        }
        Ok(())
    }

    async fn finish(&self, claim: &Claim, end: &Finish) -> Result<bool, Error> {
        self.check()?;
        let mut inner = self.lock();
        let Some(row) = inner.experiments.get_mut(&claim.experiment) else {
            return Ok(false);
        };
        if row.claimed_by.as_ref() != Some(&claim.replica) || row.epoch != claim.epoch {
            return Ok(false);
        }
        row.claimed_by = None;
        row.claimed_at = None;
        match end {
            Finish::Completed => {
                row.status = ExperimentStatus::Completed;
                row.last_error = None;
            }
            Finish::Error(msg) => {
                row.status = ExperimentStatus::Error;
                row.last_error = Some(clean(msg));
            }
        }
        Ok(true)
    }

    async fn load_plan(&self, experiment: ExperimentId) -> Result<ExperimentPlan, Error> {
        self.check()?;
        self.lock()
            .experiments
            .get(&experiment)
            .map(|r| r.plan.clone())
            .ok_or(Error::NotFound(experiment))
    }

    async fn task_page(
        &self,
        claim: &Claim,
        after: Option<TaskCursor>,
        limit: usize,
    ) -> Result<Vec<TaskWork>, Error> {
        self.check()?;
        let inner = self.lock();
        let row = inner
            .experiments
            .get(&claim.experiment)
            .ok_or(Error::NotFound(claim.experiment))?;
        let reps = row.plan.repetitions;
        if limit == 0 {
            return Ok(Vec::new());
        }
        let Some(examples) = inner.datasets.get(&row.plan.dataset) else {
            return Ok(Vec::new());
        };
        let first = after.map_or(ExampleId(i64::MIN), |a| a.example);
        let mut page = Vec::new();
        for &example in examples.range(first..) {
            let Some(data) = inner.examples.get(&example) else {
                continue;
            };
            for repetition in 0..reps {
                let key = TaskKey {
                    example,
                    repetition,
                };
                if after.is_some_and(|a| key <= a) {
                    continue;
                }
                let needed = match inner.runs.get(&(claim.experiment, key)) {
                    None => true,
                    Some(run) => run.record.error.is_some() && run.epoch != claim.epoch,
                };
                if needed {
                    page.push(TaskWork {
                        key,
                        data: data.clone(),
                    });
                    if page.len() == limit {
                        return Ok(page);
                    }
                }
            }
        }
        Ok(page)
    }

    async fn eval_page(
        &self,
        claim: &Claim,
        after: Option<EvalCursor>,
        limit: usize,
    ) -> Result<Vec<EvalWork>, Error> {
        self.check()?;
        let inner = self.lock();
        let row = inner
            .experiments
            .get(&claim.experiment)
            .ok_or(Error::NotFound(claim.experiment))?;
        if limit == 0 {
            return Ok(Vec::new());
        }
        let mut evaluators: Vec<EvaluatorId> = row.plan.evaluators.iter().map(|e| e.id).collect();
        evaluators.sort();
        let mut runs: Vec<&StoredRun> = inner
            .runs
            .iter()
            .filter(|((e, _), r)| *e == claim.experiment && r.record.error.is_none())
            .map(|(_, r)| r)
            .collect();
        runs.sort_by_key(|r| r.id);
        let mut page = Vec::new();
        for run in runs {
            for &evaluator in &evaluators {
                let key = EvalKey {
                    run: run.id,
                    evaluator,
                };
                if after.is_some_and(|a| key <= a) {
                    continue;
                }
                let needed = match inner.annotations.get(&(claim.experiment, key)) {
                    None => true,
                    Some(a) => a.record.error.is_some() && a.epoch != claim.epoch,
                };
                if !needed {
                    continue;
                }
                let Some(data) = inner.examples.get(&run.key.example) else {
                    continue;
                };
                page.push(EvalWork {
                    key,
                    example: run.key.example,
                    data: data.clone(),
                    output: Arc::from(run.record.output.as_deref().unwrap_or_default()),
                });
                if page.len() == limit {
                    return Ok(page);
                }
            }
        }
        Ok(page)
    }

    async fn record_run(
        &self,
        claim: &Claim,
        mut record: RunRecord,
    ) -> Result<Write<RunWrite>, Error> {
        self.check()?;
        clean_opt(&mut record.output);
        clean_opt(&mut record.error);
        let mut inner = self.lock();
        if !inner.fence_ok(claim) {
            self.fenced.fetch_add(1, Ordering::SeqCst);
            return Ok(Write::Fenced);
        }
        let key = (claim.experiment, record.key);
        *inner
            .accepted_writes
            .entry((claim.experiment, WorkKey::Task(record.key)))
            .or_default() += 1;
        let success = record.error.is_none();
        match inner
            .runs
            .get(&key)
            .map(|r| (r.id, r.record.error.is_none()))
        {
            Some((id, true)) => Ok(Write::Accepted(RunWrite {
                id,
                new_success: false,
            })),
            Some((id, false)) => {
                if let Some(run) = inner.runs.get_mut(&key) {
                    run.record = record;
                    run.epoch = claim.epoch;
                }
                Ok(Write::Accepted(RunWrite {
                    id,
                    new_success: success,
                }))
            }
            None => {
                let id = RunId(inner.next());
                inner.run_keys.insert(id, key);
                inner.runs.insert(
                    key,
                    StoredRun {
                        id,
                        key: record.key,
                        record,
                        epoch: claim.epoch,
                    },
                );
                Ok(Write::Accepted(RunWrite {
                    id,
                    new_success: success,
                }))
            }
        }
    }

    async fn record_annotation(
        &self,
        claim: &Claim,
        mut record: AnnotationRecord,
    ) -> Result<Write<()>, Error> {
        self.check()?;
        clean_opt(&mut record.label);
        clean_opt(&mut record.explanation);
        clean_opt(&mut record.error);
        let mut inner = self.lock();
        if !inner.fence_ok(claim) {
            self.fenced.fetch_add(1, Ordering::SeqCst);
            return Ok(Write::Fenced);
        }
        if !inner.run_keys.contains_key(&record.key.run) {
            return Err(Error::Corrupt(format!(
                "run {} does not exist",
                record.key.run
            )));
        }
        *inner
            .accepted_writes
            .entry((claim.experiment, WorkKey::Eval(record.key)))
            .or_default() += 1;
        let key = (claim.experiment, record.key);
        let replace = inner
            .annotations
            .get(&key)
            .is_none_or(|a| a.record.error.is_some());
        if replace {
            inner.annotations.insert(
                key,
                StoredAnnotation {
                    key: record.key,
                    record,
                    epoch: claim.epoch,
                },
            );
        }
        Ok(Write::Accepted(()))
    }

    async fn log(
        &self,
        experiment: ExperimentId,
        level: LogLevel,
        message: String,
    ) -> Result<(), Error> {
        self.check()?;
        let mut inner = self.lock();
        if !inner.experiments.contains_key(&experiment) {
            return Err(Error::NotFound(experiment));
        }
        inner.logs.push((experiment, level, clean(&message)));
        Ok(())
    }
}

/// An [`Advisor`] that always permits and learns nothing.
#[derive(Clone, Copy, Debug, Default)]
pub struct Unlimited;

impl Advisor for Unlimited {
    fn try_acquire(&self, _key: &RateKey, _tokens: Option<u64>, _now: Instant) -> Acquire {
        Acquire::Permit
    }

    fn record(&self, _key: &RateKey, _observation: &Observation, _now: Instant) {}
}

/// A [`Provider`] whose replies come from a closure: `reply(job)` returns the
/// call's latency and outcome; the call then takes that long on the
/// [`Clock`] (virtual time in tests). Every call is counted per work identity.
pub struct FnProvider<F, C> {
    reply: F,
    clock: Arc<C>,
    calls: Mutex<HashMap<(ExperimentId, WorkKey), u32>>,
    total: AtomicU64,
}

impl<F, C> std::fmt::Debug for FnProvider<F, C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FnProvider")
            .field("total", &self.total.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl<F, C> FnProvider<F, C>
where
    F: Fn(&Job) -> (Duration, Outcome) + Send + Sync + 'static,
    C: Clock,
{
    /// A provider answering with `reply`, sleeping on `clock`.
    pub fn new(clock: Arc<C>, reply: F) -> Self {
        Self {
            reply,
            clock,
            calls: Mutex::new(HashMap::new()),
            total: AtomicU64::new(0),
        }
    }

    /// Calls made per work identity.
    pub fn calls(&self) -> HashMap<(ExperimentId, WorkKey), u32> {
        self.calls.lock().map(|c| c.clone()).unwrap_or_default()
    }

    /// Calls made in total.
    pub fn total_calls(&self) -> u64 {
        self.total.load(Ordering::Relaxed)
    }
}

impl<F, C> Provider for FnProvider<F, C>
where
    F: Fn(&Job) -> (Duration, Outcome) + Send + Sync + 'static,
    C: Clock,
{
    fn rate_key(&self, call: &CallSpec) -> Result<RateKey, String> {
        if call.provider.is_empty() {
            return Err("no provider named".into());
        }
        Ok(RateKey::new(&call.provider, &call.model))
    }

    fn estimate_tokens(&self, _job: &Job) -> Option<u64> {
        None
    }

    async fn call(&self, job: &Job, chunks: Option<ChunkSink>) -> CallReport {
        self.total.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut calls) = self.calls.lock() {
            *calls.entry((job.experiment, job.work_key())).or_default() += 1;
        }
        let (latency, outcome) = (self.reply)(job);
        if !latency.is_zero() {
            self.clock.sleep_until(self.clock.now() + latency).await;
        }
        if let (Some(sink), Outcome::Success(crate::Reply::Task { output })) = (&chunks, &outcome) {
            sink(output);
        }
        CallReport::new(outcome, latency)
    }
}
