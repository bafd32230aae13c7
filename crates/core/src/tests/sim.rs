//! A deterministic discrete-event simulation that drives the [`Scheduler`]
//! against the in-memory store, a model advisor and a scripted provider on
//! virtual time. The property tests in `scheduler_props.rs` run it with
//! random parameters and check the invariants of DESIGN §3 at every step.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::executor::block_on;

use crate::experiment::WriteResult;
use crate::memory::MemoryStore;
use crate::ports::{Acquire, Advisor, Departure, Finish, RunWrite, Store, WaitReason};
use crate::rng::Rng;
use crate::scheduler::{Action, PlanKeys, Scheduler};
use crate::work::{EvalKey, EvalWork, Job, TaskKey, TaskWork, WorkKey};
use crate::{
    CallReport, CallSpec, Claim, Config, Error, EvaluatorId, EvaluatorSpec, ExampleData,
    ExperimentId, ExperimentPlan, Observation, Outcome, OutcomeClass, RateKey, ReplicaId, Reply,
};

/// How the scripted provider answers.
#[derive(Clone, Debug)]
pub(crate) struct Behaviour {
    pub(crate) p_rate_limited: f64,
    pub(crate) p_transient: f64,
    pub(crate) p_permanent: f64,
    pub(crate) latency_ms: (u64, u64),
    /// Delay of store answers (fetches, write acknowledgements), in ms.
    pub(crate) store_ms: (u64, u64),
}

impl Behaviour {
    pub(crate) fn reliable(latency_ms: u64) -> Self {
        Self {
            p_rate_limited: 0.0,
            p_transient: 0.0,
            p_permanent: 0.0,
            latency_ms: (latency_ms, latency_ms),
            store_ms: (0, 0),
        }
    }
}

/// One experiment of a simulation.
#[derive(Clone, Debug)]
pub(crate) struct ExpSpec {
    pub(crate) examples: usize,
    pub(crate) repetitions: u32,
    pub(crate) evaluators: usize,
    pub(crate) cap: Option<u32>,
    /// Provider entry of the task (evaluators use `judge`).
    pub(crate) provider: String,
}

/// The model advisor: per key, either unlimited, a fixed number of permits
/// per second (a bucket of one), or never (always throttled).
#[derive(Debug, Default)]
pub(crate) struct ModelAdvisor {
    pub(crate) rates: HashMap<String, f64>,
    /// Providers whose breaker is open, and since when.
    pub(crate) open: HashMap<String, Instant>,
    state: Mutex<HashMap<RateKey, Instant>>,
    pub(crate) permits: Mutex<HashMap<RateKey, u64>>,
    /// The probe interval of a used-up quota whose return time is unknown.
    pub(crate) quota_probe: Duration,
    /// Keys waiting on quota, and when the next probe may go.
    quota: Mutex<HashMap<RateKey, Instant>>,
    /// A per-key breaker like the advisor's: `(threshold, cooldown)`; it
    /// opens after that many transient failures in a row, for the cooldown.
    pub(crate) breaker: Option<(u32, Duration)>,
    /// Per key: failures in a row, and since/until when it is open.
    breakers: Mutex<HashMap<RateKey, ModelBreaker>>,
}

/// How long a quota probe counts as out before another may go (the model
/// of the advisor's `probe_timeout`).
const PROBE_OUT: Duration = Duration::from_secs(3600);

/// Failures in a row, and since/until when the breaker is open.
type ModelBreaker = (u32, Option<(Instant, Instant)>);

impl Advisor for ModelAdvisor {
    fn try_acquire(&self, key: &RateKey, _tokens: Option<u64>, now: Instant) -> Acquire {
        if let Some(next) = self.quota.lock().unwrap().get_mut(key) {
            if now < *next {
                return Acquire::Wait {
                    until: *next,
                    reason: WaitReason::Quota { until: None },
                };
            }
            // One probe; the next waits for its outcome.
            *next = now + PROBE_OUT;
            *self.permits.lock().unwrap().entry(key.clone()).or_default() += 1;
            return Acquire::Permit;
        }
        if let Some((_, Some((since, until)))) = self.breakers.lock().unwrap().get(key).copied()
            && now < until
        {
            return Acquire::Wait {
                until,
                reason: WaitReason::BreakerOpen { open_since: since },
            };
        }
        if let Some(&open_since) = self.open.get(key.provider()) {
            return Acquire::Wait {
                until: now + Duration::from_secs(1),
                reason: WaitReason::BreakerOpen { open_since },
            };
        }
        let Some(&rate) = self.rates.get(key.provider()) else {
            *self.permits.lock().unwrap().entry(key.clone()).or_default() += 1;
            return Acquire::Permit;
        };
        if rate <= 0.0 {
            return Acquire::Wait {
                until: now + Duration::from_secs(1),
                reason: WaitReason::Rate,
            };
        }
        let mut state = self.state.lock().unwrap();
        let next = state.entry(key.clone()).or_insert(now);
        if *next <= now {
            *next = now + Duration::from_secs_f64(1.0 / rate);
            *self.permits.lock().unwrap().entry(key.clone()).or_default() += 1;
            Acquire::Permit
        } else {
            Acquire::Wait {
                until: *next,
                reason: WaitReason::Rate,
            }
        }
    }

    fn record(&self, key: &RateKey, observation: &Observation, now: Instant) {
        let mut quota = self.quota.lock().unwrap();
        match observation.class {
            OutcomeClass::QuotaExhausted => {
                let wait = observation.retry_after.unwrap_or(self.quota_probe);
                quota.insert(key.clone(), now + wait);
            }
            OutcomeClass::Success => {
                quota.remove(key);
            }
            _ => {}
        }
        drop(quota);
        let Some((threshold, cooldown)) = self.breaker else {
            return;
        };
        let mut breakers = self.breakers.lock().unwrap();
        let (failures, open) = breakers.entry(key.clone()).or_default();
        match observation.class {
            OutcomeClass::Success => *failures = 0,
            OutcomeClass::Transient => {
                *failures += 1;
                if *failures >= threshold && open.is_none_or(|(_, until)| until <= now) {
                    *open = Some((now, now + cooldown));
                    *failures = 0;
                }
            }
            _ => {}
        }
    }
}

enum SimEvent {
    CallDone(Box<(Job, CallReport)>),
    Tasks(Claim, Result<Vec<TaskWork>, Error>),
    Evals(Claim, Result<Vec<EvalWork>, Error>),
    RunWritten(Claim, TaskKey, WriteResult<RunWrite>),
    AnnotationWritten(Claim, EvalKey, WriteResult<()>),
}

/// A record of one dispatch.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Dispatch {
    pub(crate) at: Duration,
    pub(crate) experiment: ExperimentId,
    pub(crate) work: WorkKey,
    pub(crate) attempt: u32,
}

pub(crate) struct Sim {
    pub(crate) start: Instant,
    pub(crate) now: Instant,
    clock: Arc<Mutex<Instant>>,
    sizes: HashMap<ExperimentId, usize>,
    pub(crate) scheduler: Scheduler,
    pub(crate) store: Arc<MemoryStore>,
    pub(crate) advisor: ModelAdvisor,
    pub(crate) config: Config,
    behaviour: Behaviour,
    rng: Rng,
    queue: BinaryHeap<Reverse<(Instant, u64)>>,
    events: HashMap<u64, SimEvent>,
    seq: u64,
    pub(crate) in_flight: HashSet<(ExperimentId, WorkKey)>,
    pub(crate) outcomes: HashMap<(ExperimentId, WorkKey), Vec<OutcomeClass>>,
    pub(crate) dispatches: Vec<Dispatch>,
    pub(crate) finished: HashMap<ExperimentId, Vec<Finish>>,
    /// When (since start) each experiment's last final status was written.
    pub(crate) finished_at: HashMap<ExperimentId, Duration>,
    pub(crate) departed: HashMap<ExperimentId, Vec<Departure>>,
    pub(crate) stopped: HashSet<ExperimentId>,
    pub(crate) claims: BTreeMap<ExperimentId, Claim>,
    pub(crate) experiments: Vec<ExperimentId>,
    /// Checked after every step; the text says which invariant broke.
    pub(crate) violations: Vec<String>,
    /// Checks that need the scheduler's internals at each dispatch.
    pub(crate) check_priority: bool,
    /// Moments (since start) at which the hook wants to run even if nothing
    /// else happens then.
    pub(crate) wakeups: Vec<Duration>,
    /// Calls with this provider entry answer that the quota is used up,
    /// with this `retry_after`, while `quota_until` (since start) has not
    /// passed.
    pub(crate) quota: Option<(String, Option<Duration>)>,
    /// Until when (since start) the quota of `quota` stays used up.
    pub(crate) quota_until: Duration,
    /// Quota waits shown: (since start, experiment, started or ended).
    pub(crate) waiting: Vec<(Duration, ExperimentId, bool)>,
    /// Experiments whose every call ends this way after this latency,
    /// whatever the behaviour says.
    pub(crate) scripted: HashMap<ExperimentId, (Outcome, Duration)>,
}

fn call(provider: &str, model: &str) -> CallSpec {
    CallSpec {
        provider: provider.into(),
        model: model.into(),
        messages: vec![],
        params: Default::default(),
        timeout_s: None,
        stream: false,
    }
}

impl Sim {
    pub(crate) fn new(config: Config, behaviour: Behaviour, seed: u64) -> Self {
        let start = Instant::now();
        let clock = Arc::new(Mutex::new(start));
        let source = clock.clone();
        // The store reads the simulation's virtual time.
        let store = Arc::new(MemoryStore::new(Arc::new(move || *source.lock().unwrap())));
        Self {
            start,
            now: start,
            clock,
            sizes: HashMap::new(),
            scheduler: Scheduler::new(config.clone(), seed),
            store,
            advisor: ModelAdvisor::default(),
            config,
            behaviour,
            rng: Rng::new(seed ^ 0xABCD),
            queue: BinaryHeap::new(),
            events: HashMap::new(),
            seq: 0,
            in_flight: HashSet::new(),
            outcomes: HashMap::new(),
            dispatches: Vec::new(),
            finished: HashMap::new(),
            finished_at: HashMap::new(),
            departed: HashMap::new(),
            stopped: HashSet::new(),
            claims: BTreeMap::new(),
            experiments: Vec::new(),
            violations: Vec::new(),
            check_priority: false,
            wakeups: Vec::new(),
            quota: None,
            quota_until: Duration::MAX,
            waiting: Vec::new(),
            scripted: HashMap::new(),
        }
    }

    /// Creates and starts an experiment.
    pub(crate) fn add(&mut self, spec: &ExpSpec) -> ExperimentId {
        let examples = (0..spec.examples)
            .map(|i| ExampleData {
                input: serde_json::json!({ "i": i }),
                expected: None,
                metadata: serde_json::Value::Null,
            })
            .collect();
        let dataset = self.store.create_dataset(examples);
        let evaluators: Vec<EvaluatorSpec> = (0..spec.evaluators)
            .map(|i| EvaluatorSpec {
                id: EvaluatorId(0),
                name: format!("judge{i}"),
                call: call("judge", &format!("j{i}")),
                labels: vec!["A".into(), "B".into()],
            })
            .collect();
        let plan = ExperimentPlan {
            id: ExperimentId(uuid::Uuid::nil()),
            dataset,
            repetitions: spec.repetitions,
            max_concurrency: spec.cap,
            task: call(&spec.provider, "m"),
            evaluators,
        };
        let id = self.store.create_experiment(dataset, plan);
        self.sizes.insert(id, spec.examples);
        self.experiments.push(id);
        self.resume(id);
        id
    }

    /// Claims the experiment in the store and inserts it in the scheduler.
    pub(crate) fn resume(&mut self, id: ExperimentId) {
        let replica = ReplicaId::new("sim");
        let claim = self.store.start(id, &replica).expect("claimable");
        let plan = block_on(self.store.load_plan(id)).expect("plan");
        let keys = PlanKeys {
            task: RateKey::new(&plan.task.provider, &plan.task.model),
            evaluators: plan
                .evaluators
                .iter()
                .map(|e| RateKey::new(&e.call.provider, &e.call.model))
                .collect(),
        };
        self.claims.insert(id, claim.clone());
        self.stopped.remove(&id);
        self.scheduler
            .insert(claim, &plan, keys, self.now)
            .expect("not present");
    }

    /// Stops the experiment the way the API does: in the store, then locally.
    pub(crate) fn stop(&mut self, id: ExperimentId) {
        self.store.stop(id);
        self.stopped.insert(id);
        self.scheduler.stop(id, Departure::Stopped, self.now);
    }

    fn draw_ms(&mut self, (lo, hi): (u64, u64)) -> Duration {
        let span = hi.saturating_sub(lo);
        let extra = if span == 0 {
            0
        } else {
            self.rng.next_u64() % (span + 1)
        };
        Duration::from_millis(lo + extra)
    }

    fn schedule(&mut self, delay: Duration, event: SimEvent) {
        self.seq += 1;
        self.queue.push(Reverse((self.now + delay, self.seq)));
        self.events.insert(self.seq, event);
    }

    fn outcome(&mut self, job: &Job) -> Outcome {
        let u = self.rng.unit();
        let b = &self.behaviour;
        if let Some((provider, retry_after)) = &self.quota
            && job.key.provider() == provider
            && self.now - self.start < self.quota_until
        {
            Outcome::QuotaExhausted {
                message: "429 insufficient_quota".into(),
                retry_after: *retry_after,
            }
        } else if u < b.p_rate_limited {
            Outcome::RateLimited {
                retry_after: None,
                scope: crate::LimitScope::Unknown,
                message: "429".into(),
            }
        } else if u < b.p_rate_limited + b.p_transient {
            Outcome::Transient {
                message: "503".into(),
            }
        } else if u < b.p_rate_limited + b.p_transient + b.p_permanent {
            Outcome::Permanent {
                message: "400".into(),
            }
        } else if job.is_task() {
            Outcome::Success(Reply::Task {
                output: format!("out-{:?}", job.work_key()),
            })
        } else {
            Outcome::Success(Reply::Eval {
                label: Some("A".into()),
                score: None,
                explanation: None,
            })
        }
    }

    fn perform_actions(&mut self) {
        while let Some(action) = self.scheduler.poll_action() {
            let delay = self.draw_ms(self.behaviour.store_ms);
            match action {
                Action::FetchTasks {
                    claim,
                    after,
                    limit,
                } => {
                    let page = block_on(self.store.task_page(&claim, after, limit));
                    self.schedule(delay, SimEvent::Tasks(claim, page));
                }
                Action::FetchEvals {
                    claim,
                    after,
                    limit,
                } => {
                    let page = block_on(self.store.eval_page(&claim, after, limit));
                    self.schedule(delay, SimEvent::Evals(claim, page));
                }
                Action::WriteRun { claim, record } => {
                    let key = record.key;
                    let result = match block_on(self.store.record_run(&claim, record)) {
                        Ok(w) => WriteResult::Done(w),
                        Err(e) => WriteResult::Abandoned(e.to_string()),
                    };
                    self.schedule(delay, SimEvent::RunWritten(claim, key, result));
                }
                Action::WriteAnnotation { claim, record, .. } => {
                    let key = record.key;
                    let result = match block_on(self.store.record_annotation(&claim, record)) {
                        Ok(w) => WriteResult::Done(w),
                        Err(e) => WriteResult::Abandoned(e.to_string()),
                    };
                    self.schedule(delay, SimEvent::AnnotationWritten(claim, key, result));
                }
                Action::Log {
                    experiment,
                    level,
                    message,
                } => {
                    let _ = block_on(self.store.log(experiment, level, message));
                }
                Action::Finish { claim, end } => {
                    if end == Finish::Completed {
                        self.check_complete(claim.experiment);
                    }
                    let _ = block_on(self.store.finish(&claim, &end));
                    self.finished_at
                        .insert(claim.experiment, self.now - self.start);
                    self.finished.entry(claim.experiment).or_default().push(end);
                }
                Action::Waiting {
                    experiment,
                    waiting,
                } => {
                    let at = self.now - self.start;
                    self.waiting.push((at, experiment, waiting.is_some()));
                }
                Action::Departed { claim, why } => {
                    self.departed.entry(claim.experiment).or_default().push(why);
                }
            }
        }
    }

    /// P8: completion only when every run and annotation exists.
    fn check_complete(&mut self, id: ExperimentId) {
        let Some(row) = self.store.experiment(id) else {
            return;
        };
        let runs = self.store.runs(id);
        let annotations = self.store.annotations(id);
        let reps = row.plan.repetitions as usize;
        let examples = self.examples_of(id);
        if runs.len() != examples * reps {
            self.violations.push(format!(
                "P8: {id} completed with {} of {} runs",
                runs.len(),
                examples * reps
            ));
        }
        let successes = runs.iter().filter(|r| r.record.output.is_some()).count();
        let wanted = successes * row.plan.evaluators.len();
        if annotations.len() != wanted {
            self.violations.push(format!(
                "P8: {id} completed with {} of {wanted} annotations",
                annotations.len()
            ));
        }
    }

    fn examples_of(&self, id: ExperimentId) -> usize {
        self.sizes.get(&id).copied().unwrap_or_default()
    }

    fn dispatch(&mut self) {
        let now = self.now;
        loop {
            let priority_snapshot = if self.check_priority {
                Some(self.priority_snapshot())
            } else {
                None
            };
            let Some(job) = self.scheduler.poll_dispatch(now, &self.advisor, &|_| None) else {
                break;
            };
            let id = job.experiment;
            let work = job.work_key();
            // P2: no work identity in flight twice.
            if !self.in_flight.insert((id, work)) {
                self.violations
                    .push(format!("P2: {work:?} of {id} dispatched while in flight"));
            }
            // P6: nothing dispatched after stop.
            if self.stopped.contains(&id) {
                self.violations
                    .push(format!("P6: {work:?} of {id} dispatched after stop"));
            }
            // P4: priority — evals first, then ready retries, then tasks.
            if let Some(snapshot) = priority_snapshot
                && let Some(&(evals, ready_retries)) = snapshot.get(&id)
            {
                {
                    let is_retry = job.attempt > 1;
                    let is_eval = !job.is_task();
                    if !is_eval && evals > 0 {
                        self.violations.push(format!(
                            "P4: {work:?} dispatched while {evals} evals were queued"
                        ));
                    }
                    if !is_eval && !is_retry && ready_retries > 0 {
                        self.violations.push(format!(
                            "P4: new task {work:?} dispatched while {ready_retries} retries were ready"
                        ));
                    }
                }
            }
            self.dispatches.push(Dispatch {
                at: now - self.start,
                experiment: id,
                work,
                attempt: job.attempt,
            });
            let (outcome, latency) = match self.scripted.get(&id) {
                Some((outcome, latency)) => (outcome.clone(), *latency),
                None => {
                    let latency = self.draw_ms(self.behaviour.latency_ms);
                    (self.outcome(&job), latency)
                }
            };
            self.outcomes
                .entry((id, work))
                .or_default()
                .push(outcome.class());
            self.schedule(
                latency,
                SimEvent::CallDone(Box::new((job, CallReport::new(outcome, latency)))),
            );
        }
    }

    /// Per experiment: (queued evals, retries ready now).
    fn priority_snapshot(&self) -> HashMap<ExperimentId, (usize, usize)> {
        self.experiments
            .iter()
            .filter_map(|&id| {
                self.scheduler
                    .state(id)
                    // An experiment's own breaker may hold one class back
                    // while another, on a different key, goes ahead.
                    .filter(|s| !s.has_own_breaker())
                    .map(|s| (id, (s.counts().evals, s.ready_retries(self.now))))
            })
            .collect()
    }

    fn handle(&mut self, event: SimEvent) {
        let now = self.now;
        match event {
            SimEvent::CallDone(done) => {
                let (job, report) = *done;
                self.in_flight.remove(&(job.experiment, job.work_key()));
                self.scheduler
                    .handle_call_finished(job, report, now, &self.advisor);
            }
            SimEvent::Tasks(claim, page) => self.scheduler.handle_task_page(&claim, page, now),
            SimEvent::Evals(claim, page) => self.scheduler.handle_eval_page(&claim, page, now),
            SimEvent::RunWritten(claim, key, result) => {
                self.scheduler.handle_run_written(&claim, key, result, now)
            }
            SimEvent::AnnotationWritten(claim, key, result) => self
                .scheduler
                .handle_annotation_written(&claim, key, result, now),
        }
    }

    /// P1 and P7, after every step.
    fn check_bounds(&mut self) {
        if self.scheduler.slots_in_use() > self.config.max_concurrency {
            self.violations.push(format!(
                "P1: {} slots in use of {}",
                self.scheduler.slots_in_use(),
                self.config.max_concurrency
            ));
        }
        for &id in &self.experiments {
            let Some(state) = self.scheduler.state(id) else {
                continue;
            };
            let counts = state.counts();
            if counts.in_flight > state.cap() {
                self.violations.push(format!(
                    "P1: {id} has {} in flight, cap {}",
                    counts.in_flight,
                    state.cap()
                ));
            }
            let high = self.config.high_watermark;
            if counts.tasks > high {
                self.violations.push(format!(
                    "P7: {id} buffers {} tasks, high {high}",
                    counts.tasks
                ));
            }
            let eval_bound = high
                + self.config.max_concurrency.min(state.cap()) * state.evaluator_count().max(1);
            if counts.evals > eval_bound {
                self.violations.push(format!(
                    "P7: {id} queues {} evals, bound {eval_bound}",
                    counts.evals
                ));
            }
            // P2 (in-memory side): every busy identity is unique by
            // construction of the set; in-flight ones must be busy.
            for (e, w) in &self.in_flight {
                if *e == id && !state.busy().contains(w) {
                    self.violations
                        .push(format!("P2: {w:?} in flight but not marked busy"));
                }
            }
        }
    }

    /// Runs until nothing is left to do or `until` passes. `hook` runs before
    /// each step with the elapsed virtual time and may stop or resume
    /// experiments. Returns the number of steps.
    pub(crate) fn run(&mut self, until: Duration, mut hook: impl FnMut(&mut Sim)) -> usize {
        let mut steps = 0;
        loop {
            steps += 1;
            if steps > 2_000_000 {
                self.violations.push("simulation did not settle".into());
                return steps;
            }
            hook(self);
            // Everything due now, first.
            while let Some(&Reverse((at, seq))) = self.queue.peek() {
                if at > self.now {
                    break;
                }
                self.queue.pop();
                if let Some(event) = self.events.remove(&seq) {
                    self.handle(event);
                    self.check_bounds();
                }
            }
            self.perform_actions();
            self.dispatch();
            self.perform_actions();
            self.check_bounds();
            if self
                .queue
                .peek()
                .is_some_and(|&Reverse((at, _))| at <= self.now)
            {
                continue;
            }
            let elapsed = self.now - self.start;
            let wakeup = self
                .wakeups
                .iter()
                .filter(|w| **w > elapsed)
                .min()
                .map(|w| self.start + *w);
            let next_event = match (self.queue.peek().map(|&Reverse((at, _))| at), wakeup) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            let next = match (next_event, self.scheduler.poll_timeout()) {
                (Some(a), Some(b)) => a.min(b),
                (a, b) => match a.or(b) {
                    Some(t) => t,
                    None => {
                        // Idle: give the hook one more chance (it may resume
                        // something) before declaring the run over.
                        let before = self.scheduler.len();
                        hook(self);
                        if self.scheduler.len() != before {
                            continue;
                        }
                        return steps;
                    }
                },
            };
            if next - self.start > until {
                return steps;
            }
            self.advance(next.max(self.now));
        }
    }

    fn advance(&mut self, to: Instant) {
        self.now = to;
        *self.clock.lock().unwrap() = to;
        self.scheduler.handle_timeout(to);
    }
}
