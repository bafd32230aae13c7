//! The engine: the one async module of the core. A thin loop that feeds port
//! results into the [`Scheduler`], performs the actions it asks for, and
//! sleeps until the next deadline — it makes no scheduling decision of its own.
//!
//! ```text
//! loop {
//!     1. perform every pending scheduler action (fetch, write, log, finish)
//!        by spawning a task that calls the port and reports back;
//!     2. dispatch jobs while the scheduler hands them out: each runs in its
//!        own task, bounded by its timeout;
//!     3. sleep until the earliest of: the scheduler's timeout, the next
//!        heartbeat, the next orphan scan — or until a command or a result.
//! }
//! ```
//!
//! Store writes run to completion in their own tasks and are retried while the
//! store is unreachable: no write is ever cancelled half-way. Heartbeats run
//! every `lease / 3` independently of job durations; the orphan scan runs
//! every `lease / 3` ± `orphan_scan_jitter`, and once at start after the replica
//! has taken back the experiments still claimed under its own identity.
//! Graceful shutdown stops dispatching, lets in-flight calls finish for up to
//! `shutdown_grace`, then releases the remaining claims so another replica (or
//! the restarted process) takes them over at once.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot, watch};
use tracing::Instrument;

use crate::config::Config;
use crate::error::Error;
use crate::experiment::WriteResult;
use crate::ids::{Claim, ExperimentId, RateKey, ReplicaId};
use crate::outcome::{CallReport, Outcome};
use crate::ports::{
    AnnotationRecord, ChunkSink, Clock, Departure, EngineEvent, EventSink, Finish, Provider,
    RunRecord, RunWrite, Store, Write,
};
use crate::rng::{Rng, seed_from};
use crate::scheduler::{Action, PlanKeys, Scheduler, store_backoff};
use crate::spec::ExperimentPlan;
use crate::work::{EvalKey, EvalWork, Job, TaskKey, TaskWork};
use crate::{Advisor, LogLevel};

/// The ports an engine drives.
pub struct Ports<S, P, A, C, E> {
    /// Persistence.
    pub store: Arc<S>,
    /// Provider calls.
    pub provider: Arc<P>,
    /// Rate limits and breakers.
    pub advisor: Arc<A>,
    /// Time.
    pub clock: Arc<C>,
    /// Events for streams and metrics.
    pub events: Arc<E>,
}

impl<S, P, A, C, E> Clone for Ports<S, P, A, C, E> {
    fn clone(&self) -> Self {
        Self {
            store: self.store.clone(),
            provider: self.provider.clone(),
            advisor: self.advisor.clone(),
            clock: self.clock.clone(),
            events: self.events.clone(),
        }
    }
}

/// Live figures of an engine, readable without a round trip.
#[derive(Debug, Default)]
pub struct EngineStats {
    slots_in_use: AtomicUsize,
    experiments: AtomicUsize,
}

impl EngineStats {
    /// Provider calls under way.
    pub fn slots_in_use(&self) -> usize {
        self.slots_in_use.load(Ordering::Relaxed)
    }

    /// Experiments running or draining in this engine.
    pub fn experiments(&self) -> usize {
        self.experiments.load(Ordering::Relaxed)
    }
}

enum Command {
    Adopt {
        claim: Claim,
        takeover: bool,
    },
    Stop {
        experiment: ExperimentId,
        why: Departure,
    },
    Shutdown(oneshot::Sender<Vec<Claim>>),
    Demand(oneshot::Sender<HashMap<RateKey, u64>>),
}

/// Controls a running engine. Cheap to clone.
#[derive(Clone, Debug)]
pub struct EngineHandle {
    tx: mpsc::UnboundedSender<Command>,
    stats: Arc<EngineStats>,
    max_concurrency: usize,
    started: watch::Receiver<bool>,
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Command::Adopt { claim, .. } => write!(f, "Adopt({})", claim.experiment),
            Command::Stop { experiment, .. } => write!(f, "Stop({experiment})"),
            Command::Shutdown(_) => f.write_str("Shutdown"),
            Command::Demand(_) => f.write_str("Demand"),
        }
    }
}

impl EngineHandle {
    /// Runs an experiment that this replica has just claimed (start, resume).
    pub fn adopt(&self, claim: Claim) -> Result<(), Error> {
        self.send(Command::Adopt {
            claim,
            takeover: false,
        })
    }

    /// Stops an experiment locally, without writing: in-flight calls finish
    /// and their results are recorded. Use after the API stopped it in the
    /// store, or when a notification says another replica did.
    pub fn stop(&self, experiment: ExperimentId) -> Result<(), Error> {
        self.send(Command::Stop {
            experiment,
            why: Departure::Stopped,
        })
    }

    /// Drops an experiment that was deleted or is owned elsewhere: nothing
    /// more is written for it.
    pub fn forget(&self, experiment: ExperimentId) -> Result<(), Error> {
        self.send(Command::Stop {
            experiment,
            why: Departure::Lost,
        })
    }

    /// Graceful shutdown: stops dispatching, lets in-flight calls finish for
    /// up to `shutdown_grace`, releases the claims still held, and returns
    /// them.
    pub async fn shutdown(&self) -> Result<Vec<Claim>, Error> {
        let (tx, rx) = oneshot::channel();
        self.send(Command::Shutdown(tx))?;
        rx.await.map_err(|_| Error::EngineGone)
    }

    /// Completes once the engine has taken back the experiments still claimed
    /// under its own identity (start-up). Start or resume experiments through
    /// the API only after this, so a start-up reclaim never races a fresh claim.
    pub async fn started(&self) -> Result<(), Error> {
        let mut started = self.started.clone();
        started
            .wait_for(|done| *done)
            .await
            .map(|_| ())
            .map_err(|_| Error::EngineGone)
    }

    /// Jobs ready per rate-limit key right now
    /// ([`Scheduler::demand_by_key`]), for the shared rate budget.
    pub async fn demand(&self) -> Result<HashMap<RateKey, u64>, Error> {
        let (tx, rx) = oneshot::channel();
        self.send(Command::Demand(tx))?;
        rx.await.map_err(|_| Error::EngineGone)
    }

    /// Live figures.
    pub fn stats(&self) -> &EngineStats {
        &self.stats
    }

    /// The global slot count.
    pub fn max_concurrency(&self) -> usize {
        self.max_concurrency
    }

    fn send(&self, command: Command) -> Result<(), Error> {
        self.tx.send(command).map_err(|_| Error::EngineGone)
    }
}

enum Event {
    PlanLoaded {
        claim: Claim,
        takeover: bool,
        result: Result<ExperimentPlan, Error>,
    },
    Tasks {
        claim: Claim,
        result: Result<Vec<TaskWork>, Error>,
    },
    Evals {
        claim: Claim,
        result: Result<Vec<EvalWork>, Error>,
    },
    CallDone {
        job: Box<Job>,
        report: CallReport,
    },
    RunWritten {
        claim: Claim,
        key: TaskKey,
        result: WriteResult<RunWrite>,
        record: Arc<RunRecord>,
    },
    AnnotationWritten {
        claim: Claim,
        key: EvalKey,
        result: WriteResult<()>,
        evaluator: Arc<str>,
        record: Arc<AnnotationRecord>,
    },
    Finished {
        claim: Claim,
        end: Finish,
    },
    Heartbeat {
        sent: Vec<Claim>,
        result: Result<Vec<ExperimentId>, Error>,
    },
    Claims {
        takeover: bool,
        result: Result<Vec<Claim>, Error>,
    },
    RetryLoad {
        claim: Claim,
        takeover: bool,
    },
}

/// The engine. Build it with [`Engine::new`], then drive it with
/// [`Engine::run`] (usually inside `tokio::spawn`).
pub struct Engine<S, P, A, C, E> {
    ports: Ports<S, P, A, C, E>,
    replica: ReplicaId,
    scheduler: Scheduler,
    rng: Rng,
    commands: mpsc::UnboundedReceiver<Command>,
    events_tx: mpsc::UnboundedSender<Event>,
    events_rx: mpsc::UnboundedReceiver<Event>,
    stats: Arc<EngineStats>,
    /// Experiments whose plan is being read.
    loading: HashMap<ExperimentId, Claim>,
    /// Claims waiting until an earlier session of the same experiment drains.
    deferred: HashMap<ExperimentId, (Claim, bool)>,
    /// Final-status writes under way.
    finishing: usize,
    heartbeat_in_flight: bool,
    scan_in_flight: bool,
    next_heartbeat: Instant,
    next_scan: Instant,
    shutdown: Option<Shutdown>,
    startup_done: bool,
    started: watch::Sender<bool>,
    /// Result writes requested this turn, spawned together.
    writes: Vec<futures::future::BoxFuture<'static, ()>>,
}

struct Shutdown {
    reply: Option<oneshot::Sender<Vec<Claim>>>,
    deadline: Instant,
    release: Vec<Claim>,
}

impl<S, P, A, C, E> Engine<S, P, A, C, E>
where
    S: Store,
    P: Provider,
    A: Advisor,
    C: Clock,
    E: EventSink,
{
    /// A new engine for `replica`. Returns the engine and its handle.
    pub fn new(
        config: Config,
        replica: ReplicaId,
        ports: Ports<S, P, A, C, E>,
    ) -> (Self, EngineHandle) {
        let seed = config.seed.unwrap_or_else(|| seed_from(replica.as_str()));
        let (tx, commands) = mpsc::unbounded_channel();
        let (events_tx, events_rx) = mpsc::unbounded_channel();
        let stats = Arc::new(EngineStats::default());
        let now = ports.clock.now();
        let (started, started_rx) = watch::channel(false);
        let handle = EngineHandle {
            tx,
            stats: stats.clone(),
            max_concurrency: config.max_concurrency,
            started: started_rx,
        };
        let engine = Self {
            replica,
            scheduler: Scheduler::new(config, seed),
            rng: Rng::new(seed ^ 0x5EED),
            ports,
            commands,
            events_tx,
            events_rx,
            stats,
            loading: HashMap::new(),
            deferred: HashMap::new(),
            finishing: 0,
            heartbeat_in_flight: false,
            scan_in_flight: false,
            next_heartbeat: now,
            next_scan: now,
            shutdown: None,
            startup_done: false,
            started,
            writes: Vec::new(),
        };
        (engine, handle)
    }

    /// Runs until shut down through the handle (or until every handle is
    /// dropped, which shuts down the same way).
    pub async fn run(mut self) {
        let now = self.ports.clock.now();
        self.next_heartbeat = now + self.scheduler.config().heartbeat_interval();
        self.next_scan = now + self.scan_interval();
        self.startup();
        let mut commands_open = true;
        loop {
            let now = self.ports.clock.now();
            self.perform_actions();
            if self.shutdown.is_none() {
                self.dispatch(now);
            }
            self.perform_actions();
            self.publish_stats();
            if self.shutdown_complete(now) {
                break;
            }

            let deadline = self.deadline();
            let clock = self.ports.clock.clone();
            let sleep = async move {
                match deadline {
                    Some(at) => clock.sleep_until(at).await,
                    None => std::future::pending::<()>().await,
                }
            };
            tokio::select! {
                biased;
                event = self.events_rx.recv() => {
                    // The engine holds a sender itself, so the channel never closes.
                    if let Some(event) = event {
                        self.handle_event(event);
                        // Take whatever else is ready before dispatching again.
                        while let Ok(event) = self.events_rx.try_recv() {
                            self.handle_event(event);
                        }
                    }
                }
                command = self.commands.recv(), if commands_open => match command {
                    Some(command) => self.handle_command(command),
                    None => {
                        commands_open = false;
                        self.begin_shutdown(None);
                    }
                },
                () = sleep => self.handle_timers(),
            }
        }
        self.finish_shutdown().await;
    }

    fn startup(&mut self) {
        if !self.scheduler.config().take_over {
            self.startup_done = true;
            self.started.send_replace(true);
            return;
        }
        // Take back at once what this replica still owns under its own
        // identity (a restarted single server), then look for orphans.
        let store = self.ports.store.clone();
        let replica = self.replica.clone();
        let tx = self.events_tx.clone();
        self.scan_in_flight = true;
        tokio::spawn(async move {
            let result = store.reclaim_own(&replica).await;
            let _ = tx.send(Event::Claims {
                takeover: false,
                result,
            });
        });
    }

    fn scan_interval(&mut self) -> Duration {
        let config = self.scheduler.config();
        let spread = 1.0 + config.orphan_scan_jitter * self.rng.signed_unit();
        config.orphan_scan_interval().mul_f64(spread)
    }

    fn deadline(&self) -> Option<Instant> {
        let mut deadline = self.scheduler.poll_timeout();
        let mut consider = |t: Instant| {
            deadline = Some(deadline.map_or(t, |d: Instant| d.min(t)));
        };
        match &self.shutdown {
            Some(s) => consider(s.deadline),
            None => {
                consider(self.next_heartbeat);
                consider(self.next_scan);
            }
        }
        deadline
    }

    fn publish_stats(&self) {
        self.stats
            .slots_in_use
            .store(self.scheduler.slots_in_use(), Ordering::Relaxed);
        self.stats
            .experiments
            .store(self.scheduler.len(), Ordering::Relaxed);
    }

    fn handle_timers(&mut self) {
        let now = self.ports.clock.now();
        self.scheduler.handle_timeout(now);
        if self.shutdown.is_some() {
            return;
        }
        if now >= self.next_heartbeat {
            self.next_heartbeat = now + self.scheduler.config().heartbeat_interval();
            self.heartbeat();
        }
        if now >= self.next_scan {
            self.next_scan = now + self.scan_interval();
            if self.scheduler.config().take_over {
                self.orphan_scan();
            }
        }
    }

    fn heartbeat(&mut self) {
        let sent = self.scheduler.owned_claims();
        if sent.is_empty() || self.heartbeat_in_flight {
            return;
        }
        self.heartbeat_in_flight = true;
        let store = self.ports.store.clone();
        let tx = self.events_tx.clone();
        tokio::spawn(async move {
            let result = store.heartbeat(&sent).await;
            let _ = tx.send(Event::Heartbeat { sent, result });
        });
    }

    fn orphan_scan(&mut self) {
        if self.scan_in_flight {
            return;
        }
        self.scan_in_flight = true;
        let store = self.ports.store.clone();
        let replica = self.replica.clone();
        let lease = self.scheduler.config().lease;
        let tx = self.events_tx.clone();
        tokio::spawn(async move {
            let result = store.take_over_orphans(&replica, lease).await;
            let _ = tx.send(Event::Claims {
                takeover: true,
                result,
            });
        });
    }

    fn handle_command(&mut self, command: Command) {
        let now = self.ports.clock.now();
        match command {
            Command::Adopt { claim, takeover } => self.adopt(claim, takeover),
            Command::Stop { experiment, why } => {
                self.deferred.remove(&experiment);
                if let Some(claim) = self.loading.remove(&experiment) {
                    self.depart(claim, why);
                } else {
                    self.scheduler.stop(experiment, why, now);
                }
            }
            Command::Shutdown(reply) => self.begin_shutdown(Some(reply)),
            Command::Demand(reply) => drop(reply.send(self.scheduler.demand_by_key())),
        }
    }

    fn adopt(&mut self, claim: Claim, takeover: bool) {
        if self.shutdown.is_some() {
            return;
        }
        let id = claim.experiment;
        let busy = self.scheduler.contains(id) || self.loading.contains_key(&id);
        if busy {
            let same = self.loading.get(&id) == Some(&claim)
                || (self.scheduler.is_running(id) && self.scheduler.claims().contains(&claim));
            if !same {
                // An earlier session of this experiment is still here
                // (draining after a stop): run the new one once it departs, so
                // no work identity is ever in flight twice.
                self.deferred.insert(id, (claim, takeover));
            }
            return;
        }
        self.load(claim, takeover);
    }

    fn load(&mut self, claim: Claim, takeover: bool) {
        self.loading.insert(claim.experiment, claim.clone());
        let store = self.ports.store.clone();
        let tx = self.events_tx.clone();
        tokio::spawn(async move {
            let result = store.load_plan(claim.experiment).await;
            let _ = tx.send(Event::PlanLoaded {
                claim,
                takeover,
                result,
            });
        });
    }

    fn handle_event(&mut self, event: Event) {
        let now = self.ports.clock.now();
        match event {
            Event::PlanLoaded {
                claim,
                takeover,
                result,
            } => {
                if self.loading.get(&claim.experiment) != Some(&claim) {
                    return; // stopped while loading
                }
                match result {
                    Ok(plan) => {
                        self.loading.remove(&claim.experiment);
                        self.start(claim, takeover, plan, now);
                    }
                    Err(Error::NotFound(_)) => {
                        self.loading.remove(&claim.experiment);
                        self.depart(claim, Departure::Lost);
                    }
                    Err(e) if e.is_retryable() => {
                        let delay = store_backoff(2, self.scheduler.config());
                        let clock = self.ports.clock.clone();
                        let tx = self.events_tx.clone();
                        tokio::spawn(async move {
                            clock.sleep_until(clock.now() + delay).await;
                            let _ = tx.send(Event::RetryLoad { claim, takeover });
                        });
                    }
                    Err(e) => {
                        self.loading.remove(&claim.experiment);
                        self.perform(Action::Finish {
                            claim,
                            end: Finish::Error(format!("the experiment cannot run: {e}")),
                        });
                    }
                }
            }
            Event::RetryLoad { claim, takeover } => {
                if self.loading.get(&claim.experiment) == Some(&claim) {
                    self.load(claim, takeover);
                }
            }
            Event::Tasks { claim, result } => self.scheduler.handle_task_page(&claim, result, now),
            Event::Evals { claim, result } => self.scheduler.handle_eval_page(&claim, result, now),
            Event::CallDone { job, report } => {
                self.ports.events.emit(EngineEvent::CallFinished {
                    experiment: job.experiment,
                    key: job.key.clone(),
                    class: report.outcome.class(),
                    latency: report.latency,
                    task: job.is_task(),
                });
                self.scheduler
                    .handle_call_finished(*job, report, now, &*self.ports.advisor);
            }
            Event::RunWritten {
                claim,
                key,
                result,
                record,
            } => {
                self.emit_write(&claim, &result, || EngineEvent::RunRecorded {
                    experiment: claim.experiment,
                    run: match &result {
                        WriteResult::Done(Write::Accepted(w)) => w.id,
                        _ => crate::RunId(0),
                    },
                    record,
                });
                self.scheduler.handle_run_written(&claim, key, result, now);
            }
            Event::AnnotationWritten {
                claim,
                key,
                result,
                evaluator,
                record,
            } => {
                self.emit_write(&claim, &result, || EngineEvent::AnnotationRecorded {
                    experiment: claim.experiment,
                    evaluator,
                    record,
                });
                self.scheduler
                    .handle_annotation_written(&claim, key, result, now);
            }
            Event::Finished { claim, end } => {
                self.finishing -= 1;
                let why = match end {
                    Finish::Completed => Departure::Completed,
                    Finish::Error(msg) => Departure::Errored(msg),
                };
                self.depart(claim, why);
            }
            Event::Heartbeat { sent, result } => {
                self.heartbeat_in_flight = false;
                match result {
                    Ok(owned) => self.scheduler.handle_heartbeat(&sent, &owned, now),
                    Err(e) => {
                        tracing::warn!(error = %e, "heartbeat failed; retrying at the next beat")
                    }
                }
            }
            Event::Claims { takeover, result } => {
                self.scan_in_flight = false;
                match result {
                    Ok(claims) => {
                        for claim in claims {
                            if takeover {
                                tracing::info!(experiment = %claim.experiment, epoch = %claim.epoch, "took over an orphaned experiment");
                            }
                            self.adopt(claim, takeover);
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "claim scan failed; retrying at the next scan")
                    }
                }
                if !self.startup_done {
                    self.startup_done = true;
                    self.started.send_replace(true);
                    self.orphan_scan();
                }
            }
        }
    }

    fn emit_write<T>(
        &self,
        claim: &Claim,
        result: &WriteResult<T>,
        accepted: impl FnOnce() -> EngineEvent,
    ) {
        let event = match result {
            WriteResult::Done(Write::Accepted(_)) => accepted(),
            WriteResult::Done(Write::Fenced) => EngineEvent::WriteFenced {
                experiment: claim.experiment,
            },
            WriteResult::Abandoned(error) => EngineEvent::WriteAbandoned {
                experiment: claim.experiment,
                error: error.clone(),
            },
        };
        self.ports.events.emit(event);
    }

    fn start(&mut self, claim: Claim, takeover: bool, plan: ExperimentPlan, now: Instant) {
        let keys = match plan_keys(&*self.ports.provider, &plan) {
            Ok(keys) => keys,
            Err(message) => {
                self.perform(Action::Log {
                    experiment: claim.experiment,
                    level: LogLevel::Error,
                    message: message.clone(),
                });
                self.perform(Action::Finish {
                    claim,
                    end: Finish::Error(message),
                });
                return;
            }
        };
        match self.scheduler.insert(claim.clone(), &plan, keys, now) {
            Ok(()) => {
                self.perform(Action::Log {
                    experiment: claim.experiment,
                    level: LogLevel::Info,
                    message: format!(
                        "{} on replica {} (epoch {})",
                        if takeover { "taken over" } else { "running" },
                        claim.replica,
                        claim.epoch
                    ),
                });
                self.ports
                    .events
                    .emit(EngineEvent::Adopted { claim, takeover });
            }
            Err(_) => {
                self.deferred.insert(claim.experiment, (claim, takeover));
            }
        }
    }

    fn depart(&mut self, claim: Claim, why: Departure) {
        if why == Departure::Released
            && let Some(s) = &mut self.shutdown
        {
            s.release.push(claim.clone());
        }
        self.ports.events.emit(EngineEvent::Departed {
            experiment: claim.experiment,
            why,
        });
        if let Some((next, takeover)) = self.deferred.remove(&claim.experiment) {
            self.adopt(next, takeover);
        }
    }

    fn dispatch(&mut self, now: Instant) {
        let provider = self.ports.provider.clone();
        let estimate = move |job: &Job| provider.estimate_tokens(job);
        while let Some(job) = self
            .scheduler
            .poll_dispatch(now, &*self.ports.advisor, &estimate)
        {
            self.spawn_call(job);
        }
    }

    fn spawn_call(&self, job: Job) {
        let provider = self.ports.provider.clone();
        let clock = self.ports.clock.clone();
        let tx = self.events_tx.clone();
        let config = self.scheduler.config();
        let default = if job.is_task() {
            config.task_timeout
        } else {
            config.eval_timeout
        };
        let timeout = job.call().timeout(default, config.max_call_timeout);
        let chunks = self.chunk_sink(&job);
        let span = tracing::info_span!(
            "job",
            experiment = %job.experiment,
            key = %job.key,
            attempt = job.attempt,
            task = job.is_task(),
            outcome = tracing::field::Empty,
        );
        tokio::spawn(
            async move {
                let started = clock.now();
                let report = tokio::select! {
                    report = provider.call(&job, chunks) => report,
                    () = clock.sleep_until(started + timeout) => CallReport::new(
                        Outcome::Transient {
                            message: format!("the call timed out after {}s", timeout.as_secs_f64()),
                        },
                        timeout,
                    ),
                };
                tracing::Span::current().record("outcome", report.outcome.class().as_str());
                let _ = tx.send(Event::CallDone {
                    job: Box::new(job),
                    report,
                });
            }
            .instrument(span),
        );
    }

    fn chunk_sink(&self, job: &Job) -> Option<ChunkSink> {
        let crate::JobKind::Task { work, call } = &job.kind else {
            return None;
        };
        if !call.stream {
            return None;
        }
        let events = self.ports.events.clone();
        let experiment = job.experiment;
        let key = work.key;
        Some(Arc::new(move |text: &str| {
            events.emit(EngineEvent::Chunk {
                experiment,
                key,
                text: Arc::from(text),
            });
        }))
    }

    fn perform_actions(&mut self) {
        while let Some(action) = self.scheduler.poll_action() {
            self.perform(action);
        }
        // The result writes of one turn run together in one task: each still
        // runs to completion (none is ever cancelled half-way), the store's
        // batcher sees them at once, and the engine spawns one task per turn
        // rather than one per result.
        if !self.writes.is_empty() {
            let writes = std::mem::take(&mut self.writes);
            tokio::spawn(futures::future::join_all(writes));
        }
    }

    fn perform(&mut self, action: Action) {
        let store = self.ports.store.clone();
        let tx = self.events_tx.clone();
        match action {
            Action::FetchTasks {
                claim,
                after,
                limit,
            } => {
                tokio::spawn(async move {
                    let result = store.task_page(&claim, after, limit).await;
                    let _ = tx.send(Event::Tasks { claim, result });
                });
            }
            Action::FetchEvals {
                claim,
                after,
                limit,
            } => {
                tokio::spawn(async move {
                    let result = store.eval_page(&claim, after, limit).await;
                    let _ = tx.send(Event::Evals { claim, result });
                });
            }
            Action::WriteRun { claim, record } => {
                let key = record.key;
                let record = Arc::new(record);
                let retry = self.write_retry();
                self.writes.push(Box::pin(async move {
                    let result = retry
                        .run(|| store.record_run(&claim, (*record).clone()))
                        .await
                        .into();
                    let _ = tx.send(Event::RunWritten {
                        claim,
                        key,
                        result,
                        record,
                    });
                }));
            }
            Action::WriteAnnotation {
                claim,
                evaluator,
                record,
            } => {
                let key = record.key;
                let record = Arc::new(record);
                let retry = self.write_retry();
                self.writes.push(Box::pin(async move {
                    let result = retry
                        .run(|| store.record_annotation(&claim, (*record).clone()))
                        .await
                        .into();
                    let _ = tx.send(Event::AnnotationWritten {
                        claim,
                        key,
                        result,
                        evaluator,
                        record,
                    });
                }));
            }
            Action::Log {
                experiment,
                level,
                message,
            } => {
                tokio::spawn(async move {
                    if let Err(e) = store.log(experiment, level, message).await {
                        tracing::warn!(%experiment, error = %e, "could not write an experiment log entry");
                    }
                });
            }
            Action::Finish { claim, end } => {
                self.finishing += 1;
                let retry = self.write_retry();
                tokio::spawn(async move {
                    let result = retry.run(|| store.finish(&claim, &end)).await;
                    match result {
                        Retried::Done(true) => {}
                        Retried::Done(false) => tracing::info!(
                            experiment = %claim.experiment,
                            "final status not written: the claim was no longer ours"
                        ),
                        Retried::Abandoned(e) => tracing::warn!(
                            experiment = %claim.experiment,
                            error = %e,
                            "final status not written: the store stayed unreachable"
                        ),
                    }
                    let _ = tx.send(Event::Finished { claim, end });
                });
            }
            Action::Waiting {
                experiment,
                waiting,
            } => self.ports.events.emit(EngineEvent::Waiting {
                experiment,
                waiting,
            }),
            Action::Departed { claim, why } => self.depart(claim, why),
        }
    }

    fn write_retry(&self) -> StoreRetry<C> {
        let config = self.scheduler.config();
        StoreRetry {
            clock: self.ports.clock.clone(),
            give_up: config.store_write_give_up,
            config: config.clone(),
        }
    }

    fn begin_shutdown(&mut self, reply: Option<oneshot::Sender<Vec<Claim>>>) {
        let now = self.ports.clock.now();
        if let Some(s) = &mut self.shutdown {
            if reply.is_some() {
                s.reply = reply;
            }
            return;
        }
        tracing::info!("shutting down: no new calls; waiting for calls under way");
        let grace = self.scheduler.config().shutdown_grace;
        self.shutdown = Some(Shutdown {
            reply,
            deadline: now + grace,
            release: Vec::new(),
        });
        // Claims still loading were never started: release them at once.
        let loading: Vec<Claim> = self.loading.drain().map(|(_, c)| c).collect();
        self.deferred.clear();
        if let Some(s) = &mut self.shutdown {
            s.release.extend(loading);
        }
        self.scheduler.stop_all(Departure::Released, now);
    }

    fn shutdown_complete(&self, now: Instant) -> bool {
        let Some(s) = &self.shutdown else {
            return false;
        };
        (self.scheduler.is_empty() && self.finishing == 0) || now >= s.deadline
    }

    async fn finish_shutdown(&mut self) {
        let Some(mut s) = self.shutdown.take() else {
            return;
        };
        // Whatever is still draining at the deadline is released too: its
        // late results will be fenced once another replica claims it.
        let remaining: HashSet<Claim> = self.scheduler.claims().into_iter().collect();
        s.release.extend(remaining);
        if !s.release.is_empty() {
            let retry = StoreRetry {
                clock: self.ports.clock.clone(),
                give_up: Duration::from_secs(5),
                config: self.scheduler.config().clone(),
            };
            let store = self.ports.store.clone();
            let claims = s.release.clone();
            match retry.run(|| store.release(&claims)).await {
                Retried::Done(()) => {
                    tracing::info!(count = claims.len(), "released claims for takeover")
                }
                Retried::Abandoned(e) => tracing::warn!(
                    error = %e,
                    "could not release claims; they expire after the lease"
                ),
            }
        }
        self.publish_stats();
        if let Some(reply) = s.reply.take() {
            let _ = reply.send(s.release);
        }
    }
}

/// Computes the rate-limit keys of a plan; the error names the unusable call.
fn plan_keys<P: Provider + ?Sized>(
    provider: &P,
    plan: &ExperimentPlan,
) -> Result<PlanKeys, String> {
    let task = provider
        .rate_key(&plan.task)
        .map_err(|e| format!("the task cannot run: {e}"))?;
    let evaluators = plan
        .evaluators
        .iter()
        .map(|e| {
            provider
                .rate_key(&e.call)
                .map_err(|err| format!("evaluator `{}` cannot run: {err}", e.name))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(PlanKeys { task, evaluators })
}

/// Retries a store call while the store is unreachable, with capped
/// exponential backoff, for up to `give_up`.
struct StoreRetry<C> {
    clock: Arc<C>,
    give_up: Duration,
    config: Config,
}

impl<C: Clock> StoreRetry<C> {
    async fn run<T, F, Fut>(&self, mut call: F) -> Retried<T>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, Error>>,
    {
        let started = self.clock.now();
        let mut failures = 0;
        loop {
            match call().await {
                Ok(value) => return Retried::Done(value),
                Err(e) if e.is_retryable() => {
                    failures += 1;
                    let now = self.clock.now();
                    if now.saturating_duration_since(started) >= self.give_up {
                        return Retried::Abandoned(e.to_string());
                    }
                    if failures == 1 {
                        tracing::warn!(error = %e, "store call failed; retrying");
                    }
                    let delay = store_backoff(failures, &self.config);
                    self.clock.sleep_until(now + delay).await;
                }
                Err(e) => return Retried::Abandoned(e.to_string()),
            }
        }
    }
}

/// How a retried store call ended.
enum Retried<T> {
    Done(T),
    Abandoned(String),
}

impl<T> From<Retried<Write<T>>> for WriteResult<T> {
    fn from(r: Retried<Write<T>>) -> Self {
        match r {
            Retried::Done(w) => WriteResult::Done(w),
            Retried::Abandoned(e) => WriteResult::Abandoned(e),
        }
    }
}
