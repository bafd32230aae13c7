//! The engine: the one async module of the core. A thin driver of the
//! [`Replica`] state machine (which owns the [`crate::Scheduler`]): it feeds
//! port results and commands into it, performs the orders it hands out, and
//! sleeps until its next deadline — it makes no scheduling or lifecycle
//! decision of its own.
//!
//! ```text
//! loop {
//!     1. perform every pending order (reclaim, scan, heartbeat, plan read,
//!        fetch, write, log, final status, release) by spawning a task that
//!        calls the port and reports back;
//!     2. dispatch jobs while the replica hands them out: each runs in its
//!        own task, bounded by its timeout;
//!     3. sleep until the replica's `poll_timeout` — or until a command or a
//!        result arrives.
//! }
//! ```
//!
//! Store writes run to completion in their own tasks and are retried while the
//! store is unreachable (capped backoff, for up to `store_write_give_up`; the
//! release at shutdown for up to `release_give_up`): no write is ever
//! cancelled half-way.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot, watch};
use tracing::Instrument;

use crate::Advisor;
use crate::config::Config;
use crate::error::Error;
use crate::experiment::WriteResult;
use crate::ids::{Claim, ExperimentId, RateKey, ReplicaId};
use crate::outcome::{CallReport, Outcome};
use crate::ports::{
    AnnotationRecord, ChunkSink, Clock, Departure, EngineEvent, EventSink, Finish, Provider,
    RunRecord, RunWrite, Store, Write,
};
use crate::replica::{ClaimSource, Order, Replica};
use crate::rng::seed_from;
use crate::scheduler::{Action, PlanKeys, store_backoff};
use crate::spec::ExperimentPlan;
use crate::work::{EvalKey, EvalWork, Job, TaskKey, TaskWork};

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
        sent: Option<Instant>,
    },
    CheckClaims,
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
            Command::CheckClaims => f.write_str("CheckClaims"),
            Command::Shutdown(_) => f.write_str("Shutdown"),
            Command::Demand(_) => f.write_str("Demand"),
        }
    }
}

impl EngineHandle {
    /// Runs an experiment that this replica has just claimed (start,
    /// resume) when the instant the claim was requested is not known: a
    /// heartbeat confirms the claim before any call starts.
    pub fn adopt(&self, claim: Claim) -> Result<(), Error> {
        self.send(Command::Adopt { claim, sent: None })
    }

    /// Runs an experiment that this replica has just claimed; `sent` is the
    /// instant (on the engine's clock) just before the claiming statement
    /// was sent, so the claim's lease counts from then.
    pub fn adopt_claimed(&self, claim: Claim, sent: Instant) -> Result<(), Error> {
        self.send(Command::Adopt {
            claim,
            sent: Some(sent),
        })
    }

    /// The notification listener reconnected and may have missed stops or
    /// deletions: checks the claims (heartbeat) and scans for orphans now.
    pub fn check_claims(&self) -> Result<(), Error> {
        self.send(Command::CheckClaims)
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
        result: Result<(ExperimentPlan, Result<PlanKeys, String>), Error>,
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
        result: Result<Vec<ExperimentId>, Error>,
    },
    Claims {
        source: ClaimSource,
        result: Result<Vec<Claim>, Error>,
    },
    Released,
}

/// The engine. Build it with [`Engine::new`], then drive it with
/// [`Engine::run`] (usually inside `tokio::spawn`).
pub struct Engine<S, P, A, C, E> {
    ports: Ports<S, P, A, C, E>,
    replica: Replica,
    commands: mpsc::UnboundedReceiver<Command>,
    events_tx: mpsc::UnboundedSender<Event>,
    events_rx: mpsc::UnboundedReceiver<Event>,
    stats: Arc<EngineStats>,
    started: watch::Sender<bool>,
    /// Who waits for the end of shutdown.
    shutdown_reply: Option<oneshot::Sender<Vec<Claim>>>,
    /// Result writes requested this turn, spawned together.
    writes: Vec<futures::future::BoxFuture<'static, ()>>,
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
            replica: Replica::new(config, replica, seed, now),
            ports,
            commands,
            events_tx,
            events_rx,
            stats,
            started,
            shutdown_reply: None,
            writes: Vec::new(),
        };
        (engine, handle)
    }

    /// Runs until shut down through the handle (or until every handle is
    /// dropped, which shuts down the same way).
    pub async fn run(mut self) {
        self.replica.start(self.ports.clock.now());
        let mut commands_open = true;
        loop {
            let now = self.ports.clock.now();
            self.perform_orders();
            self.dispatch(now);
            self.perform_orders();
            self.publish_stats();
            if self.replica.is_done() {
                break;
            }

            let deadline = self.replica.poll_timeout();
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
                        self.replica.handle_shutdown(self.ports.clock.now());
                    }
                },
                () = sleep => self.replica.handle_timeout(self.ports.clock.now()),
            }
        }
        self.publish_stats();
        if let Some(reply) = self.shutdown_reply.take() {
            let _ = reply.send(self.replica.released());
        }
    }

    fn publish_stats(&self) {
        let scheduler = self.replica.scheduler();
        self.stats
            .slots_in_use
            .store(scheduler.slots_in_use(), Ordering::Relaxed);
        self.stats
            .experiments
            .store(scheduler.len(), Ordering::Relaxed);
    }

    fn handle_command(&mut self, command: Command) {
        let now = self.ports.clock.now();
        match command {
            Command::Adopt { claim, sent } => self.replica.handle_adopt(claim, sent, now),
            Command::Stop { experiment, why } => self.replica.handle_stop(experiment, why, now),
            Command::CheckClaims => self.replica.handle_listener_reconnected(now),
            Command::Shutdown(reply) => {
                if self.shutdown_reply.is_none() {
                    tracing::info!("shutting down: no new calls; waiting for calls under way");
                }
                self.shutdown_reply = Some(reply);
                self.replica.handle_shutdown(now);
            }
            Command::Demand(reply) => drop(reply.send(self.replica.scheduler().demand_by_key())),
        }
    }

    fn handle_event(&mut self, event: Event) {
        let now = self.ports.clock.now();
        match event {
            Event::PlanLoaded { claim, result } => self.replica.handle_plan(&claim, result, now),
            Event::Tasks { claim, result } => self.replica.handle_task_page(&claim, result, now),
            Event::Evals { claim, result } => self.replica.handle_eval_page(&claim, result, now),
            Event::CallDone { job, report } => {
                self.ports.events.emit(EngineEvent::CallFinished {
                    experiment: job.experiment,
                    key: job.key.clone(),
                    class: report.outcome.class(),
                    latency: report.latency,
                    task: job.is_task(),
                });
                self.replica
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
                self.replica.handle_run_written(&claim, key, result, now);
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
                self.replica
                    .handle_annotation_written(&claim, key, result, now);
            }
            Event::Finished { claim, end } => self.replica.handle_finished(&claim, end, now),
            Event::Heartbeat { result } => self.replica.handle_heartbeat(result, now),
            Event::Claims { source, result } => self.replica.handle_claims(source, result, now),
            Event::Released => self.replica.handle_released(),
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

    fn dispatch(&mut self, now: Instant) {
        let provider = self.ports.provider.clone();
        let estimate = move |job: &Job| provider.estimate_tokens(job);
        while let Some(job) = self
            .replica
            .poll_dispatch(now, &*self.ports.advisor, &estimate)
        {
            self.spawn_call(job);
        }
    }

    fn spawn_call(&self, job: Job) {
        let provider = self.ports.provider.clone();
        let clock = self.ports.clock.clone();
        let tx = self.events_tx.clone();
        let config = self.replica.config();
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

    fn perform_orders(&mut self) {
        while let Some(order) = self.replica.poll_order() {
            self.perform(order);
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

    /// Performs one order of the replica: a port call in its own task that
    /// reports back through the event channel, or an event for the sink.
    fn perform(&mut self, order: Order) {
        let store = self.ports.store.clone();
        let tx = self.events_tx.clone();
        match order {
            Order::Reclaim => {
                let replica = self.replica.id().clone();
                tokio::spawn(async move {
                    let result = store.reclaim_own(&replica).await;
                    let _ = tx.send(Event::Claims {
                        source: ClaimSource::Reclaim,
                        result,
                    });
                });
            }
            Order::ScanOrphans => {
                let replica = self.replica.id().clone();
                let lease = self.replica.config().lease;
                tokio::spawn(async move {
                    let result = store.take_over_orphans(&replica, lease).await;
                    let _ = tx.send(Event::Claims {
                        source: ClaimSource::Orphans,
                        result,
                    });
                });
            }
            Order::Heartbeat(claims) => {
                tokio::spawn(async move {
                    let result = store.heartbeat(&claims).await;
                    let _ = tx.send(Event::Heartbeat { result });
                });
            }
            Order::LoadPlan(claim) => {
                let provider = self.ports.provider.clone();
                tokio::spawn(async move {
                    let result = store.load_plan(claim.experiment).await.map(|plan| {
                        let keys = plan_keys(&*provider, &plan);
                        (plan, keys)
                    });
                    let _ = tx.send(Event::PlanLoaded { claim, result });
                });
            }
            Order::Release(claims) => {
                let retry = self.retry(self.replica.config().release_give_up);
                tokio::spawn(async move {
                    match retry.run(|| store.release(&claims)).await {
                        Retried::Done(()) => {
                            tracing::info!(count = claims.len(), "released claims for takeover")
                        }
                        Retried::Abandoned(e) => tracing::warn!(
                            error = %e,
                            "could not release claims; they expire after the lease"
                        ),
                    }
                    let _ = tx.send(Event::Released);
                });
            }
            Order::Started => {
                self.started.send_replace(true);
            }
            Order::Adopted { claim, takeover } => {
                self.ports
                    .events
                    .emit(EngineEvent::Adopted { claim, takeover });
            }
            Order::Departed { claim, why } => {
                self.ports.events.emit(EngineEvent::Departed {
                    experiment: claim.experiment,
                    why,
                });
            }
            Order::Work(action) => self.perform_action(action),
        }
    }

    fn perform_action(&mut self, action: Action) {
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
            // The replica turns departures into `Order::Departed`.
            Action::Departed { claim, why } => self.perform(Order::Departed { claim, why }),
        }
    }

    fn write_retry(&self) -> StoreRetry<C> {
        self.retry(self.replica.config().store_write_give_up)
    }

    fn retry(&self, give_up: Duration) -> StoreRetry<C> {
        StoreRetry {
            clock: self.ports.clock.clone(),
            give_up,
            config: self.replica.config().clone(),
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
