//! The scheduler (DESIGN §3): the registry of running experiments, global
//! slots and per-experiment caps, round-robin by least-recently-served, and
//! the next wake-up instant.
//!
//! It is a sans-I/O state machine in the style of `quinn-proto`: inputs arrive
//! through `handle_*` methods carrying `now`, work leaves through
//! [`Scheduler::poll_dispatch`] (jobs) and [`Scheduler::poll_action`] (store
//! requests, logs, final statuses), and [`Scheduler::poll_timeout`] says when to
//! call again if nothing else happens. The driver ([`crate::engine`]) performs
//! the actions and feeds the results back.
//!
//! Fairness: experiments are kept in least-recently-served order. A new
//! experiment enters at the front (the user sees output at once); the one that
//! gets a slot moves to the back; one that is throttled keeps its place. So
//! with K always-ready experiments the dispatch counts never differ by more
//! than one, and a throttled experiment never holds a slot or delays another.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::Instant;

use crate::config::Config;
use crate::error::Error;
use crate::experiment::{ExperimentState, Mode, Next};
use crate::fasthash::FastMap;
use crate::ids::{Claim, ExperimentId, RateKey};
use crate::isolation::Isolation;
use crate::limited::KeyNotes;
use crate::outcome::{CallReport, Observation};
use crate::ports::{Advisor, Departure, LogLevel, RunWrite};
use crate::rng::Rng;
use crate::spec::ExperimentPlan;
use crate::work::{EvalKey, EvalWork, Job, TaskKey, TaskWork};

pub use crate::experiment::{
    Action, ExperimentCounts, PlanKeys, WriteResult, backoff, store_backoff,
};

/// Why [`Scheduler::insert`] refused an experiment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum InsertError {
    /// The experiment is already in the scheduler (possibly still draining an
    /// earlier session); insert it again after it departs.
    AlreadyPresent,
    /// The plan and its keys do not match (one key per evaluator).
    KeysMismatch,
}

/// The scheduling state of one process. See the module documentation.
#[derive(Debug)]
pub struct Scheduler {
    config: Config,
    experiments: FastMap<ExperimentId, ExperimentState>,
    /// Least-recently-served order: smaller keys are served first.
    order: BTreeMap<u64, ExperimentId>,
    next_back: u64,
    next_front: u64,
    slots_in_use: usize,
    actions: VecDeque<Action>,
    rng: Rng,
    /// What the outcomes of every experiment's calls said about each key:
    /// its last transient error (named when an experiment gives up on an
    /// open breaker) and whether it answers only 429s (quota give-up).
    notes: KeyNotes,
    /// Failure streaks per (key, experiment): keeps one experiment's own
    /// failures away from the key's shared breaker.
    isolation: Isolation,
}

impl Scheduler {
    /// A scheduler with the given constants and jitter seed.
    pub fn new(config: Config, seed: u64) -> Self {
        const MIDDLE: u64 = u64::MAX / 2;
        Self {
            config,
            experiments: FastMap::default(),
            order: BTreeMap::new(),
            next_back: MIDDLE,
            next_front: MIDDLE - 1,
            slots_in_use: 0,
            actions: VecDeque::new(),
            rng: Rng::new(seed),
            notes: KeyNotes::default(),
            isolation: Isolation::default(),
        }
    }

    /// The constants in use.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Starts scheduling an experiment under `claim`. It enters at the front
    /// of the round-robin order and asks for its first pages at once.
    pub fn insert(
        &mut self,
        claim: Claim,
        plan: &ExperimentPlan,
        keys: PlanKeys,
        now: Instant,
    ) -> Result<(), InsertError> {
        let id = claim.experiment;
        if self.experiments.contains_key(&id) {
            return Err(InsertError::AlreadyPresent);
        }
        if keys.evaluators.len() != plan.evaluators.len() {
            return Err(InsertError::KeysMismatch);
        }
        self.isolation
            .register(id, std::iter::once(&keys.task).chain(&keys.evaluators));
        let order_key = self.next_front;
        self.next_front -= 1;
        let state = ExperimentState::new(claim, plan, keys, &self.config, order_key, now);
        self.order.insert(order_key, id);
        self.experiments.insert(id, state);
        self.touch(id, now);
        Ok(())
    }

    /// Whether the experiment is in the scheduler (running or draining).
    pub fn contains(&self, id: ExperimentId) -> bool {
        self.experiments.contains_key(&id)
    }

    /// Whether the experiment is running here (not draining).
    pub fn is_running(&self, id: ExperimentId) -> bool {
        self.experiments.get(&id).is_some_and(|e| e.is_running())
    }

    /// Stops dispatching for the experiment: queues are cleared, in-flight
    /// calls finish and are recorded (except when `why` is `Lost`), then the
    /// experiment departs with `why`.
    pub fn stop(&mut self, id: ExperimentId, why: Departure, now: Instant) {
        if let Some(exp) = self.experiments.get_mut(&id) {
            exp.drain(why);
            self.touch(id, now);
        }
    }

    /// A heartbeat answered: of the claims `sent`, only `owned` are still
    /// ours. The others were stopped, deleted or taken over elsewhere; those
    /// still running here are dropped without writing. (One already draining
    /// after a local stop keeps writing its in-flight results: no later claim
    /// exists, so the store still accepts them.)
    pub fn handle_heartbeat(&mut self, sent: &[Claim], owned: &[ExperimentId], now: Instant) {
        for claim in sent {
            if owned.contains(&claim.experiment) {
                continue;
            }
            let lose = Self::current(&mut self.experiments, claim).is_some_and(|e| {
                !matches!(e.mode, Mode::Draining(Departure::Stopped | Departure::Lost))
            });
            if lose {
                self.actions.push_back(Action::Log {
                    experiment: claim.experiment,
                    level: LogLevel::Warn,
                    message: format!(
                        "replica {} no longer owns the experiment (epoch {}); it stops here",
                        claim.replica, claim.epoch
                    ),
                });
                self.stop(claim.experiment, Departure::Lost, now);
            }
        }
    }

    /// Self-fencing: the experiment under `claim` may start calls only
    /// before `until` (calls under way are not affected). Moving it later
    /// lets a fenced experiment dispatch again.
    pub fn set_fence(&mut self, claim: &Claim, until: Instant, now: Instant) {
        if let Some(exp) = Self::current(&mut self.experiments, claim) {
            exp.fence_at = Some(until);
            self.touch(claim.experiment, now);
        }
    }

    /// Whether the experiment is held back by self-fencing at `now`.
    pub fn is_fenced(&self, id: ExperimentId, now: Instant) -> bool {
        self.experiments
            .get(&id)
            .is_some_and(|e| e.fence_at.is_some_and(|at| now >= at))
    }

    /// Stops every experiment with `why` (graceful shutdown uses `Released`).
    pub fn stop_all(&mut self, why: Departure, now: Instant) {
        let ids: Vec<ExperimentId> = self.experiments.keys().copied().collect();
        for id in ids {
            self.stop(id, why.clone(), now);
        }
    }

    /// The next job to run, if a slot is free and some experiment has a job
    /// whose key the advisor permits now. Call repeatedly until `None`.
    ///
    /// `estimate` gives a job's token estimate for tokens-per-minute limits.
    pub fn poll_dispatch<A: Advisor + ?Sized>(
        &mut self,
        now: Instant,
        advisor: &A,
        estimate: &dyn Fn(&Job) -> Option<u64>,
    ) -> Option<Job> {
        if self.slots_in_use >= self.config.max_concurrency {
            return None;
        }
        let mut chosen = None;
        let mut gave_up = Vec::new();
        for (&order_key, id) in &self.order {
            let Some(exp) = self.experiments.get_mut(id) else {
                continue;
            };
            match exp.next_job(
                now,
                advisor,
                estimate,
                &self.config,
                &self.notes,
                &mut self.actions,
            ) {
                Next::Ready(job) => {
                    chosen = Some((order_key, *id, job));
                    break;
                }
                Next::GaveUp(message) => gave_up.push((*id, message)),
                Next::NotReady | Next::Busy => {}
            }
        }
        for (id, message) in gave_up {
            self.actions.push_back(Action::Log {
                experiment: id,
                level: LogLevel::Error,
                message: message.clone(),
            });
            self.stop(id, Departure::Errored(message), now);
        }
        let (order_key, id, job) = chosen?;
        // Served: move to the back of the least-recently-served order.
        self.order.remove(&order_key);
        self.next_back += 1;
        self.order.insert(self.next_back, id);
        if let Some(exp) = self.experiments.get_mut(&id) {
            exp.order_key = self.next_back;
        }
        self.slots_in_use += 1;
        self.touch(id, now);
        Some(job)
    }

    /// A call ended: frees its slot, tells the advisor, and routes the
    /// outcome (write, retry, or fail).
    pub fn handle_call_finished<A: Advisor + ?Sized>(
        &mut self,
        job: Job,
        report: CallReport,
        now: Instant,
        advisor: &A,
    ) {
        self.slots_in_use = self.slots_in_use.saturating_sub(1);
        let verdict = self.isolation.record(
            &job.key,
            job.experiment,
            &report.outcome,
            self.config.experiment_breaker_failures,
        );
        // An isolated failure (other experiments on the key are fine) is
        // kept from the key's shared breaker.
        if verdict.forward {
            advisor.record(
                &job.key,
                &Observation::from_report(&report, job.tokens_reserved),
                now,
            );
        }
        self.notes.observe(&job.key, &report.outcome, now);
        if matches!(report.outcome, crate::Outcome::Success(_)) {
            // A success of the key ends every experiment's quota wait on it.
            let waiting = self
                .experiments
                .iter()
                .filter(|(_, e)| e.waiting.as_ref() == Some(&job.key))
                .map(|(id, _)| *id)
                .collect::<Vec<_>>();
            for id in waiting {
                if let Some(exp) = self.experiments.get_mut(&id) {
                    exp.quota_back(&job.key, &mut self.actions);
                }
            }
        }
        let id = job.experiment;
        let quota = matches!(report.outcome, crate::Outcome::QuotaExhausted { .. });
        let own_key = job.key.clone();
        if let Some(exp) = self.experiments.get_mut(&id) {
            let key = quota.then(|| job.key.clone());
            exp.handle_call_finished(
                job,
                report,
                now,
                &self.config,
                &mut self.rng,
                &mut self.actions,
            );
            if let Some(key) = key
                && exp.is_running()
            {
                // Shown at once, not only when the advisor next says "wait".
                exp.note_waiting(
                    &key,
                    None,
                    now,
                    &self.config,
                    &self.notes,
                    &mut self.actions,
                );
            }
            let gave_up =
                exp.own_breaker_outcome(&own_key, &verdict, now, &self.config, &mut self.actions);
            if let Some(message) = gave_up
                && exp.is_running()
            {
                self.actions.push_back(Action::Log {
                    experiment: id,
                    level: LogLevel::Error,
                    message: message.clone(),
                });
                self.stop(id, Departure::Errored(message), now);
            }
            self.touch(id, now);
        }
    }

    /// A page of task work requested by [`Action::FetchTasks`] arrived.
    pub fn handle_task_page(
        &mut self,
        claim: &Claim,
        page: Result<Vec<TaskWork>, Error>,
        now: Instant,
    ) {
        if let Some(exp) = Self::current(&mut self.experiments, claim) {
            exp.handle_task_page(page, now, &self.config, &mut self.actions);
            self.touch(claim.experiment, now);
        }
    }

    /// A page of eval work requested by [`Action::FetchEvals`] arrived.
    pub fn handle_eval_page(
        &mut self,
        claim: &Claim,
        page: Result<Vec<EvalWork>, Error>,
        now: Instant,
    ) {
        if let Some(exp) = Self::current(&mut self.experiments, claim) {
            exp.handle_eval_page(page, now, &self.config, &mut self.actions);
            self.touch(claim.experiment, now);
        }
    }

    /// A run write requested by [`Action::WriteRun`] ended.
    pub fn handle_run_written(
        &mut self,
        claim: &Claim,
        key: TaskKey,
        result: WriteResult<RunWrite>,
        now: Instant,
    ) {
        if let Some(exp) = Self::current(&mut self.experiments, claim) {
            exp.handle_run_written(key, result, &mut self.actions);
            self.touch(claim.experiment, now);
        }
    }

    /// An annotation write requested by [`Action::WriteAnnotation`] ended.
    pub fn handle_annotation_written(
        &mut self,
        claim: &Claim,
        key: EvalKey,
        result: WriteResult<()>,
        now: Instant,
    ) {
        if let Some(exp) = Self::current(&mut self.experiments, claim) {
            exp.handle_annotation_written(key, result, &mut self.actions);
            self.touch(claim.experiment, now);
        }
    }

    /// Time passed: fetches that were backing off are retried.
    pub fn handle_timeout(&mut self, now: Instant) {
        let ids: Vec<ExperimentId> = self.experiments.keys().copied().collect();
        for id in ids {
            self.touch(id, now);
        }
    }

    /// The next thing to do for the driver, if any.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// When to call [`Scheduler::poll_dispatch`] / [`Scheduler::handle_timeout`]
    /// again if no event arrives first. `None`: only an event can make
    /// progress.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let slots_free = self.slots_in_use < self.config.max_concurrency;
        self.experiments
            .values()
            .filter_map(|e| {
                let dispatch = if slots_free { e.wake } else { None };
                match (dispatch, e.fetch_retry_at()) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                }
            })
            .min()
    }

    /// Claims this process must keep alive with heartbeats: running
    /// experiments and those draining while still owned (errored, released).
    pub fn owned_claims(&self) -> Vec<Claim> {
        self.experiments
            .values()
            .filter(|e| match &e.mode {
                Mode::Running => true,
                Mode::Draining(why) => {
                    matches!(why, Departure::Errored(_) | Departure::Released)
                }
            })
            .map(|e| e.claim.clone())
            .collect()
    }

    /// Every claim in the scheduler, whatever its state.
    pub fn claims(&self) -> Vec<Claim> {
        self.experiments.values().map(|e| e.claim.clone()).collect()
    }

    /// Provider calls under way.
    pub fn slots_in_use(&self) -> usize {
        self.slots_in_use
    }

    /// Experiments in the scheduler (running or draining).
    pub fn len(&self) -> usize {
        self.experiments.len()
    }

    /// Whether no experiment is in the scheduler.
    pub fn is_empty(&self) -> bool {
        self.experiments.is_empty()
    }

    /// Jobs ready to run per rate-limit key, over every running experiment
    /// (read-only): what this process would send to each key if its rate
    /// allowed. A shared rate budget gives each replica a share of a key's
    /// rate in proportion to this.
    pub fn demand_by_key(&self) -> HashMap<RateKey, u64> {
        let mut demand = HashMap::new();
        for exp in self.experiments.values() {
            exp.add_demand(&mut demand);
        }
        demand
    }

    /// Buffer sizes of one experiment.
    pub fn counts(&self, id: ExperimentId) -> Option<ExperimentCounts> {
        self.experiments.get(&id).map(|e| e.counts())
    }

    /// The experiment a result belongs to, if it is still in the session
    /// that requested it (same epoch).
    fn current<'a>(
        experiments: &'a mut FastMap<ExperimentId, ExperimentState>,
        claim: &Claim,
    ) -> Option<&'a mut ExperimentState> {
        experiments
            .get_mut(&claim.experiment)
            .filter(|e| e.claim.epoch == claim.epoch)
    }

    /// After any change to an experiment: refill its buffers and, when it is
    /// done, emit its final action and remove it.
    fn touch(&mut self, id: ExperimentId, now: Instant) {
        let Some(exp) = self.experiments.get_mut(&id) else {
            return;
        };
        exp.refill(now, &self.config, &mut self.actions);
        if let Some(done) = exp.settle() {
            let order_key = exp.order_key;
            self.experiments.remove(&id);
            self.isolation.unregister(id);
            self.order.remove(&order_key);
            self.actions.push_back(done);
        }
    }

    /// The experiment's state (for the property tests of this crate).
    #[cfg(test)]
    pub(crate) fn state(&self, id: ExperimentId) -> Option<&ExperimentState> {
        self.experiments.get(&id)
    }
}
