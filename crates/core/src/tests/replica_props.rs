//! Properties across replicas: 2–4 [`Replica`] machines share one `Store`
//! (a mockall fake whose answers come from a model of the experiments table
//! kept on the database's own clock) on virtual time, with arbitrary
//! interleavings (random store and provider delays), freezes (SIGSTOP-like
//! pauses), lost heartbeats, database cut-offs of one replica, kills and
//! restarts (same identity or a new one, crash or graceful), and forward steps
//! of the database's clock. Checked:
//! - R1: a replica starts a call only while its claim is the current one and
//!   the database would not yet let anyone take it over (so never two
//!   replicas dispatching for one experiment while both could still write,
//!   and a fenced replica starts no call after its lease has run out);
//! - R2: a dead replica's experiments are owned again within
//!   lease + scan interval (+ jitter and store delays);
//! - R3: after every fault, each example × repetition ends with exactly one
//!   accepted result, and every provider call beyond one per result was made
//!   by a replica that suffered a fault.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::executor::block_on;
use proptest::prelude::*;

use crate::memory::Unlimited;
use crate::ports::{Finish, MockStore, Store, Write};
use crate::replica::{ClaimSource, Order, Replica};
use crate::scheduler::{Action, PlanKeys};
use crate::work::{TaskKey, TaskWork};
use crate::{
    CallReport, CallSpec, Claim, Config, DatasetId, Epoch, Error, ExampleData, ExampleId,
    ExperimentId, ExperimentPlan, Outcome, RateKey, ReplicaId, Reply, RunId, RunWrite, WriteResult,
};

fn cases() -> u32 {
    if std::env::var_os("RUNNEL_TEST_FULL").is_some() {
        1024
    } else {
        96
    }
}

const LEASE: Duration = Duration::from_secs(3);
/// Faults start and end within this window after the start.
const FAULT_WINDOW: Duration = Duration::from_secs(12);

fn config() -> Config {
    Config {
        lease: LEASE,
        max_concurrency: 4,
        shutdown_grace: Duration::from_secs(2),
        ..Config::default()
    }
}

/// One row of the experiments table, as the model database keeps it.
#[derive(Clone, Debug)]
struct Row {
    examples: i64,
    epoch: Epoch,
    claimed_by: Option<ReplicaId>,
    /// The database's clock when the claim was last written.
    claimed_at: Option<Instant>,
    completed: bool,
}

/// The shared model of the database.
#[derive(Debug, Default)]
struct Model {
    /// True (virtual) time, set by the harness.
    now: Option<Instant>,
    /// How far the database's clock has stepped ahead of true time.
    skew: Duration,
    rows: BTreeMap<ExperimentId, Row>,
    /// Accepted successful writes per run.
    runs: HashMap<(ExperimentId, TaskKey), u32>,
    /// Every claim written: (true time, experiment, replica, epoch).
    claims: Vec<(Instant, ExperimentId, ReplicaId, Epoch)>,
}

impl Model {
    fn db_now(&self) -> Instant {
        self.now.expect("set by the harness") + self.skew
    }

    fn claim(&mut self, id: ExperimentId, replica: &ReplicaId) -> Claim {
        let now = self.db_now();
        let t = self.now.expect("set");
        let row = self.rows.get_mut(&id).expect("row");
        row.epoch = Epoch(row.epoch.0 + 1);
        row.claimed_by = Some(replica.clone());
        row.claimed_at = Some(now);
        self.claims.push((t, id, replica.clone(), row.epoch));
        Claim {
            experiment: id,
            replica: replica.clone(),
            epoch: row.epoch,
        }
    }

    fn owns(&self, c: &Claim) -> bool {
        self.rows.get(&c.experiment).is_some_and(|r| {
            r.epoch == c.epoch && r.claimed_by.as_ref() == Some(&c.replica) && !r.completed
        })
    }
}

type Boxed<T> = Pin<Box<dyn Future<Output = T> + Send>>;

fn ready<T: Send + 'static>(value: T) -> Boxed<T> {
    Box::pin(async move { value })
}

fn plan(id: ExperimentId) -> ExperimentPlan {
    ExperimentPlan {
        id,
        dataset: DatasetId(uuid::Uuid::nil()),
        repetitions: 1,
        max_concurrency: None,
        task: CallSpec {
            provider: "p".into(),
            model: "m".into(),
            messages: vec![],
            params: Default::default(),
            timeout_s: None,
            stream: false,
        },
        evaluators: vec![],
    }
}

/// The mockall `Store` fake, answering from the shared model.
fn fake_store(model: Arc<Mutex<Model>>) -> MockStore {
    let mut store = MockStore::new();
    let m = model.clone();
    store.expect_reclaim_own().returning(move |replica| {
        let mut db = m.lock().unwrap();
        let ids: Vec<ExperimentId> = db
            .rows
            .iter()
            .filter(|(_, r)| !r.completed && r.claimed_by.as_ref() == Some(replica))
            .map(|(id, _)| *id)
            .collect();
        let claims = ids.into_iter().map(|id| db.claim(id, replica)).collect();
        ready(Ok(claims))
    });
    let m = model.clone();
    store
        .expect_take_over_orphans()
        .returning(move |replica, lease| {
            let mut db = m.lock().unwrap();
            let now = db.db_now();
            let ids: Vec<ExperimentId> = db
                .rows
                .iter()
                .filter(|(_, r)| {
                    !r.completed
                        && r.claimed_at
                            .is_none_or(|at| now.saturating_duration_since(at) > lease)
                })
                .map(|(id, _)| *id)
                .collect();
            let claims = ids.into_iter().map(|id| db.claim(id, replica)).collect();
            ready(Ok(claims))
        });
    let m = model.clone();
    store.expect_heartbeat().returning(move |claims| {
        let mut db = m.lock().unwrap();
        let now = db.db_now();
        let mut owned = Vec::new();
        for c in claims {
            if db.owns(c) {
                if let Some(row) = db.rows.get_mut(&c.experiment) {
                    row.claimed_at = Some(now);
                }
                owned.push(c.experiment);
            }
        }
        ready(Ok(owned))
    });
    let m = model.clone();
    store.expect_release().returning(move |claims| {
        let mut db = m.lock().unwrap();
        for c in claims {
            if db.owns(c)
                && let Some(row) = db.rows.get_mut(&c.experiment)
            {
                row.claimed_at = None;
            }
        }
        ready(Ok(()))
    });
    let m = model.clone();
    store.expect_finish().returning(move |claim, end| {
        let mut db = m.lock().unwrap();
        if !db.owns(claim) {
            return ready(Ok(false));
        }
        let row = db.rows.get_mut(&claim.experiment).expect("owned");
        row.claimed_by = None;
        row.claimed_at = None;
        row.completed = *end == Finish::Completed;
        ready(Ok(true))
    });
    let m = model.clone();
    store.expect_load_plan().returning(move |id| {
        let db = m.lock().unwrap();
        ready(match db.rows.get(&id) {
            Some(_) => Ok(plan(id)),
            None => Err(Error::NotFound(id)),
        })
    });
    let m = model.clone();
    store
        .expect_task_page()
        .returning(move |claim, after, limit| {
            let db = m.lock().unwrap();
            let examples = db.rows.get(&claim.experiment).map_or(0, |r| r.examples);
            let start = after.map_or(1, |a| a.example.0 + 1);
            let page: Vec<TaskWork> = (start..=examples)
                .map(|e| TaskKey {
                    example: ExampleId(e),
                    repetition: 0,
                })
                .filter(|k| !db.runs.contains_key(&(claim.experiment, *k)))
                .take(limit)
                .map(|key| TaskWork {
                    key,
                    data: Arc::new(ExampleData::default()),
                })
                .collect();
            ready(Ok(page))
        });
    store
        .expect_eval_page()
        .returning(|_, _, _| ready(Ok(vec![])));
    let m = model;
    store.expect_record_run().returning(move |claim, record| {
        let mut db = m.lock().unwrap();
        if !db.owns(claim) {
            return ready(Ok(Write::Fenced));
        }
        let n = db.runs.entry((claim.experiment, record.key)).or_default();
        *n += 1;
        ready(Ok(Write::Accepted(RunWrite {
            id: RunId(record.key.example.0),
            new_success: *n == 1,
        })))
    });
    store.expect_record_annotation().never();
    store.expect_log().returning(|_, _, _| ready(Ok(())));
    store
}

/// A fault, at a moment of the fault window.
#[derive(Clone, Debug)]
enum Fault {
    /// Freeze the replica (SIGSTOP) for this long.
    Pause(usize, Duration),
    /// Cut the replica off from the database for this long.
    Cut(usize, Duration),
    /// Lose the answers of the replica's next heartbeats (applied or not).
    LoseBeats(usize, u32, bool),
    /// Kill the replica and restart it after this long (same identity?).
    Restart(usize, Duration, bool),
    /// Graceful shutdown, then restart under the same identity.
    Graceful(usize),
    /// The database's clock steps forward by this many milliseconds.
    Jump(u64),
}

#[derive(Clone, Debug)]
struct Case {
    seed: u64,
    replicas: usize,
    experiments: Vec<i64>,
    latency_ms: (u64, u64),
    store_ms: u64,
    faults: Vec<(u64, Fault)>,
    /// Kill one replica for good at the end of the fault window.
    kill_at_end: bool,
}

fn fault(replicas: usize) -> impl Strategy<Value = Fault> {
    let r = 0..replicas;
    prop_oneof![
        (r.clone(), 100u64..9_000).prop_map(|(r, ms)| Fault::Pause(r, Duration::from_millis(ms))),
        (r.clone(), 100u64..9_000).prop_map(|(r, ms)| Fault::Cut(r, Duration::from_millis(ms))),
        (r.clone(), 1u32..5, any::<bool>()).prop_map(|(r, n, a)| Fault::LoseBeats(r, n, a)),
        (r.clone(), 0u64..5_000, any::<bool>()).prop_map(|(r, ms, same)| Fault::Restart(
            r,
            Duration::from_millis(ms),
            same
        )),
        r.prop_map(Fault::Graceful),
        // Steps of the database's clock stay within half the safety margin
        // in total (checked by the harness): a larger step is what the
        // margin is there to absorb, and no lease scheme survives an
        // unbounded one.
        (0u64..150).prop_map(Fault::Jump),
    ]
}

fn case() -> impl Strategy<Value = Case> {
    (2usize..=4).prop_flat_map(|replicas| {
        (
            any::<u64>(),
            Just(replicas),
            proptest::collection::vec(1i64..40, 1..4),
            (5u64..400, 0u64..800),
            0u64..200,
            proptest::collection::vec((0u64..12_000, fault(replicas)), 0..8),
            any::<bool>(),
        )
            .prop_map(
                |(seed, replicas, experiments, (lo, extra), store_ms, faults, kill_at_end)| Case {
                    seed,
                    replicas,
                    experiments,
                    latency_ms: (lo, lo + extra),
                    store_ms,
                    faults,
                    kill_at_end,
                },
            )
    })
}

/// What an event does when its time comes.
#[derive(Debug)]
enum Ev {
    /// Perform an order's store call now (the database applies it).
    Apply(usize, u64, Order),
    /// Deliver a store answer to the replica.
    Answer(usize, u64, Answer),
    /// A provider call ended.
    CallDone(usize, u64, Box<crate::Job>, usize),
    Fault(Fault),
    /// End of a pause or cut of a replica.
    Thaw,
    Reconnect(usize),
    Restart(usize, bool),
}

#[derive(Debug)]
enum Answer {
    Claims(ClaimSource, Result<Vec<Claim>, Error>),
    Heartbeat(Result<Vec<ExperimentId>, Error>),
    Plan(Claim, Result<ExperimentPlan, Error>),
    Tasks(Claim, Result<Vec<TaskWork>, Error>),
    Evals(Claim, Result<Vec<crate::EvalWork>, Error>),
    Run(Claim, TaskKey, WriteResult<RunWrite>),
    Finished(Claim, Finish),
    Released,
}

struct Node {
    machine: Option<Replica>,
    /// Incarnation number: events of an earlier one are dropped.
    life: u64,
    name: ReplicaId,
    paused_until: Option<Instant>,
    cut_until: Option<Instant>,
    lose_beats: u32,
    lose_applied: bool,
    /// Incarnations that suffered a fault.
    faulted: HashSet<u64>,
    stopping: bool,
    dead: bool,
    restarts: u32,
}

/// One provider call: who made it, for what, and whether its result was
/// accepted.
struct CallRecord {
    node: usize,
    life: u64,
    experiment: ExperimentId,
    key: TaskKey,
    accepted: bool,
}

struct Cluster {
    start: Instant,
    now: Instant,
    model: Arc<Mutex<Model>>,
    store: MockStore,
    nodes: Vec<Node>,
    queue: BinaryHeap<Reverse<(Instant, u64)>>,
    events: HashMap<u64, Ev>,
    seq: u64,
    rng: crate::rng::Rng,
    case: Case,
    calls: Vec<CallRecord>,
    violations: Vec<String>,
    config: Config,
    /// Total forward steps of the database's clock.
    jumped: Duration,
}

impl Cluster {
    fn new(case: Case) -> Self {
        let start = Instant::now();
        let model = Arc::new(Mutex::new(Model {
            now: Some(start),
            ..Model::default()
        }));
        let store = fake_store(model.clone());
        {
            let mut db = model.lock().unwrap();
            for (i, &examples) in case.experiments.iter().enumerate() {
                let id = ExperimentId(uuid::Uuid::from_u128(i as u128 + 1));
                db.rows.insert(
                    id,
                    Row {
                        examples,
                        epoch: Epoch(0),
                        claimed_by: None,
                        claimed_at: None,
                        completed: false,
                    },
                );
            }
        }
        let mut c = Self {
            start,
            now: start,
            model,
            store,
            nodes: Vec::new(),
            queue: BinaryHeap::new(),
            events: HashMap::new(),
            seq: 0,
            rng: crate::rng::Rng::new(case.seed),
            calls: Vec::new(),
            violations: Vec::new(),
            config: config(),
            jumped: Duration::ZERO,
            case: case.clone(),
        };
        for r in 0..case.replicas {
            c.nodes.push(Node {
                machine: None,
                life: 0,
                name: ReplicaId::new(format!("r{r}")),
                paused_until: None,
                cut_until: None,
                lose_beats: 0,
                lose_applied: false,
                faulted: HashSet::new(),
                stopping: false,
                dead: false,
                restarts: 0,
            });
            c.boot(r);
        }
        for (at, f) in case.faults {
            c.schedule(Duration::from_millis(at), Ev::Fault(f));
        }
        c
    }

    fn boot(&mut self, r: usize) {
        let node = &mut self.nodes[r];
        node.life += 1;
        node.stopping = false;
        let seed = self.case.seed ^ (r as u64) ^ (node.life << 8);
        let mut machine = Replica::new(self.config.clone(), node.name.clone(), seed, self.now);
        machine.start(self.now);
        node.machine = Some(machine);
    }

    fn schedule(&mut self, delay: Duration, ev: Ev) {
        self.seq += 1;
        self.queue.push(Reverse((self.now + delay, self.seq)));
        self.events.insert(self.seq, ev);
    }

    fn draw(&mut self, (lo, hi): (u64, u64)) -> Duration {
        let span = hi - lo;
        let extra = if span == 0 {
            0
        } else {
            self.rng.next_u64() % (span + 1)
        };
        Duration::from_millis(lo + extra)
    }

    fn store_delay(&mut self) -> Duration {
        self.draw((0, self.case.store_ms))
    }

    fn frozen(&self, r: usize) -> bool {
        self.nodes[r].paused_until.is_some_and(|t| t > self.now)
    }

    fn cut(&self, r: usize) -> bool {
        self.nodes[r].cut_until.is_some_and(|t| t > self.now)
    }

    fn mark_faulted(&mut self, r: usize) {
        let life = self.nodes[r].life;
        self.nodes[r].faulted.insert(life);
    }

    /// Performs every order of replica `r` and dispatches its jobs.
    fn drive(&mut self, r: usize) {
        if self.frozen(r) {
            return;
        }
        let now = self.now;
        let life = self.nodes[r].life;
        let Some(mut machine) = self.nodes[r].machine.take() else {
            return;
        };
        loop {
            while let Some(order) = machine.poll_order() {
                match order {
                    Order::Started | Order::Adopted { .. } | Order::Departed { .. } => {}
                    Order::Work(Action::Log { .. }) => {}
                    Order::Work(Action::Departed { .. }) => {}
                    other => {
                        let d = self.store_delay();
                        self.schedule(d, Ev::Apply(r, life, other));
                    }
                }
            }
            let Some(job) = machine.poll_dispatch(now, &Unlimited, &|_| None) else {
                break;
            };
            self.check_dispatch(r, &machine, &job);
            let latency = self.draw(self.case.latency_ms);
            let crate::WorkKey::Task(key) = job.work_key() else {
                panic!("these experiments have no evaluators");
            };
            self.calls.push(CallRecord {
                node: r,
                life,
                experiment: job.experiment,
                key,
                accepted: false,
            });
            let index = self.calls.len() - 1;
            self.schedule(latency, Ev::CallDone(r, life, Box::new(job), index));
        }
        if self.nodes[r].stopping && machine.is_done() {
            // Graceful shutdown complete: restart under the same identity.
            self.nodes[r].machine = None;
            self.schedule(Duration::from_millis(200), Ev::Restart(r, true));
            return;
        }
        self.nodes[r].machine = Some(machine);
    }

    /// R1, at every dispatch.
    fn check_dispatch(&mut self, r: usize, machine: &Replica, job: &crate::Job) {
        let Some(claim) = machine
            .claims()
            .into_iter()
            .find(|c| c.experiment == job.experiment)
        else {
            self.violations.push(format!(
                "R1: r{r} dispatched for an experiment it holds no claim of"
            ));
            return;
        };
        let db = self.model.lock().unwrap();
        let db_now = db.db_now();
        let Some(row) = db.rows.get(&claim.experiment) else {
            return;
        };
        let current = row.epoch == claim.epoch && row.claimed_by.as_ref() == Some(&claim.replica);
        let fresh = row
            .claimed_at
            .is_some_and(|at| db_now.saturating_duration_since(at) < self.config.lease);
        if !(current && fresh) {
            self.violations.push(format!(
                "R1: r{r} started a call for {} at {:?} under epoch {} while the row has epoch {}, owner {:?}, claim age {:?}",
                claim.experiment,
                self.now - self.start,
                claim.epoch,
                row.epoch,
                row.claimed_by,
                row.claimed_at.map(|at| db_now.saturating_duration_since(at)),
            ));
        }
    }

    fn apply(&mut self, r: usize, life: u64, order: Order) {
        let cut = self.cut(r);
        let unavailable = || Error::StoreUnavailable("cut off".into());
        let answer = match order {
            Order::Reclaim | Order::ScanOrphans => {
                let source = if matches!(order, Order::Reclaim) {
                    ClaimSource::Reclaim
                } else {
                    ClaimSource::Orphans
                };
                let result = if cut {
                    Err(unavailable())
                } else if source == ClaimSource::Reclaim {
                    block_on(self.store.reclaim_own(&self.nodes[r].name))
                } else {
                    block_on(
                        self.store
                            .take_over_orphans(&self.nodes[r].name, self.config.lease),
                    )
                };
                Answer::Claims(source, result)
            }
            Order::Heartbeat(claims) => {
                let node = &mut self.nodes[r];
                let result = if cut {
                    Err(unavailable())
                } else if node.lose_beats > 0 {
                    node.lose_beats -= 1;
                    if node.lose_applied {
                        let _ = block_on(self.store.heartbeat(&claims));
                    }
                    Err(Error::StoreUnavailable("answer lost".into()))
                } else {
                    block_on(self.store.heartbeat(&claims))
                };
                Answer::Heartbeat(result)
            }
            Order::LoadPlan(claim) => {
                let result = if cut {
                    Err(unavailable())
                } else {
                    block_on(self.store.load_plan(claim.experiment))
                };
                Answer::Plan(claim, result)
            }
            Order::Release(claims) => {
                if cut {
                    // Retried like the engine does, for `release_give_up`.
                    self.schedule(
                        Duration::from_millis(100),
                        Ev::Apply(r, life, Order::Release(claims)),
                    );
                    return;
                }
                let _ = block_on(self.store.release(&claims));
                Answer::Released
            }
            Order::Work(Action::FetchTasks {
                claim,
                after,
                limit,
            }) => {
                let result = if cut {
                    Err(unavailable())
                } else {
                    block_on(self.store.task_page(&claim, after, limit))
                };
                Answer::Tasks(claim, result)
            }
            Order::Work(Action::FetchEvals {
                claim,
                after,
                limit,
            }) => {
                let result = if cut {
                    Err(unavailable())
                } else {
                    block_on(self.store.eval_page(&claim, after, limit))
                };
                Answer::Evals(claim, result)
            }
            Order::Work(Action::WriteRun { claim, record }) => {
                if cut {
                    // The engine retries writes while the store is down.
                    let order = Order::Work(Action::WriteRun { claim, record });
                    self.schedule(Duration::from_millis(100), Ev::Apply(r, life, order));
                    return;
                }
                let key = record.key;
                let result =
                    block_on(self.store.record_run(&claim, record)).map_err(|e| e.to_string());
                let result = match result {
                    Ok(w) => WriteResult::Done(w),
                    Err(e) => WriteResult::Abandoned(e),
                };
                if matches!(result, WriteResult::Done(Write::Accepted(_))) {
                    let node_life = life;
                    if let Some(call) = self.calls.iter_mut().rev().find(|c| {
                        c.node == r
                            && c.life == node_life
                            && c.experiment == claim.experiment
                            && c.key == key
                    }) {
                        call.accepted = true;
                    }
                }
                Answer::Run(claim, key, result)
            }
            Order::Work(Action::Finish { claim, end }) => {
                if cut {
                    let order = Order::Work(Action::Finish { claim, end });
                    self.schedule(Duration::from_millis(100), Ev::Apply(r, life, order));
                    return;
                }
                let _ = block_on(self.store.finish(&claim, &end));
                Answer::Finished(claim, end)
            }
            other => panic!("unexpected order {other:?}"),
        };
        let d = self.store_delay();
        self.schedule(d, Ev::Answer(r, life, answer));
    }

    fn answer(&mut self, r: usize, answer: Answer) {
        let now = self.now;
        let Some(m) = self.nodes[r].machine.as_mut() else {
            return;
        };
        match answer {
            Answer::Claims(source, result) => m.handle_claims(source, result, now),
            Answer::Heartbeat(result) => m.handle_heartbeat(result, now),
            Answer::Plan(claim, result) => {
                let result = result.map(|p| {
                    (
                        p,
                        Ok(PlanKeys {
                            task: RateKey::new("p", "m"),
                            evaluators: vec![],
                        }),
                    )
                });
                m.handle_plan(&claim, result, now)
            }
            Answer::Tasks(claim, result) => m.handle_task_page(&claim, result, now),
            Answer::Evals(claim, result) => m.handle_eval_page(&claim, result, now),
            Answer::Run(claim, key, result) => m.handle_run_written(&claim, key, result, now),
            Answer::Finished(claim, end) => m.handle_finished(&claim, end, now),
            Answer::Released => m.handle_released(),
        }
    }

    /// Faults end with the fault window, so the cluster is whole after it.
    fn within_window(&self, d: Duration) -> Duration {
        let end = self.start + FAULT_WINDOW;
        d.min(end.saturating_duration_since(self.now))
    }

    fn fault(&mut self, f: Fault) {
        match f {
            Fault::Pause(r, d) => {
                let d = self.within_window(d);
                if self.nodes[r].machine.is_some() {
                    self.mark_faulted(r);
                    self.nodes[r].paused_until = Some(self.now + d);
                    self.schedule(d, Ev::Thaw);
                }
            }
            Fault::Cut(r, d) => {
                let d = self.within_window(d);
                self.mark_faulted(r);
                self.nodes[r].cut_until = Some(self.now + d);
                self.schedule(d, Ev::Reconnect(r));
            }
            Fault::LoseBeats(r, n, applied) => {
                self.mark_faulted(r);
                self.nodes[r].lose_beats = n;
                self.nodes[r].lose_applied = applied;
            }
            Fault::Restart(r, d, same) => {
                if self.nodes[r].machine.is_some() && !self.nodes[r].stopping {
                    self.mark_faulted(r);
                    self.nodes[r].machine = None;
                    self.schedule(d, Ev::Restart(r, same));
                }
            }
            Fault::Graceful(r) => {
                let now = self.now;
                let frozen = self.frozen(r);
                let node = &mut self.nodes[r];
                if !frozen
                    && !node.stopping
                    && let Some(m) = node.machine.as_mut()
                {
                    // A graceful shutdown is not a fault; its calls must all
                    // be recorded (heartbeats go on while draining).
                    m.handle_shutdown(now);
                    node.stopping = true;
                }
            }
            Fault::Jump(ms) => {
                let step = Duration::from_millis(ms);
                let budget = self
                    .config
                    .lease
                    .mul_f64(self.config.lease_safety_margin / 2.0);
                if self.jumped + step <= budget {
                    self.jumped += step;
                    self.model.lock().unwrap().skew += step;
                }
            }
        }
    }

    fn restart(&mut self, r: usize, same: bool) {
        if self.nodes[r].dead {
            return;
        }
        let node = &mut self.nodes[r];
        node.restarts += 1;
        if !same {
            node.name = ReplicaId::new(format!("r{r}-{}", node.restarts));
        }
        node.paused_until = None;
        self.boot(r);
    }

    fn handle(&mut self, ev: Ev) {
        match ev {
            Ev::Apply(r, life, order) => {
                if self.nodes[r].life == life && self.nodes[r].machine.is_some() {
                    self.apply(r, life, order);
                }
            }
            Ev::Answer(r, life, answer) => {
                if self.nodes[r].life == life {
                    self.answer(r, answer);
                }
            }
            Ev::CallDone(r, life, job, _index) => {
                if self.nodes[r].life == life {
                    let now = self.now;
                    if let Some(m) = self.nodes[r].machine.as_mut() {
                        let report = CallReport::new(
                            Outcome::Success(Reply::Task {
                                output: "ok".into(),
                            }),
                            Duration::from_millis(1),
                        );
                        m.handle_call_finished(*job, report, now, &Unlimited);
                    }
                }
            }
            Ev::Fault(f) => self.fault(f),
            Ev::Thaw => {}
            Ev::Reconnect(r) => {
                let now = self.now;
                if !self.cut(r)
                    && let Some(m) = self.nodes[r].machine.as_mut()
                {
                    m.handle_listener_reconnected(now);
                }
            }
            Ev::Restart(r, same) => self.restart(r, same),
        }
    }

    /// The target replica of an event, if it is frozen (the event waits).
    fn target(ev: &Ev) -> Option<usize> {
        match ev {
            Ev::Answer(r, ..) | Ev::CallDone(r, ..) | Ev::Reconnect(r) => Some(*r),
            _ => None,
        }
    }

    fn set_now(&mut self, t: Instant) {
        self.now = t;
        self.model.lock().unwrap().now = Some(t);
    }

    fn all_done(&self) -> bool {
        self.model
            .lock()
            .unwrap()
            .rows
            .values()
            .all(|r| r.completed)
    }

    /// Runs until every experiment completed (after the faults) or `limit`.
    fn run(&mut self, limit: Duration) {
        let mut steps = 0u64;
        let mut stalls = 0u32;
        // Steps at one instant: a store answer that makes the replica ask
        // again at once, forever, would spin a real engine against the
        // store (a failed heartbeat once did, while fenced).
        let (mut instant, mut same_instant) = (self.now, 0u32);
        loop {
            steps += 1;
            if self.now == instant {
                same_instant += 1;
                if same_instant > 100_000 {
                    self.violations.push(format!(
                        "livelock: {same_instant} steps at {:?}",
                        self.now - self.start
                    ));
                    return;
                }
            } else {
                (instant, same_instant) = (self.now, 0);
            }
            if steps > 3_000_000 {
                self.violations.push("did not settle".into());
                return;
            }
            // Events due now.
            while let Some(&Reverse((at, seq))) = self.queue.peek() {
                if at > self.now {
                    break;
                }
                self.queue.pop();
                let Some(ev) = self.events.remove(&seq) else {
                    continue;
                };
                if let Some(r) = Self::target(&ev)
                    && let Some(until) = self.nodes[r].paused_until.filter(|t| *t > self.now)
                {
                    // Frozen: delivered when it thaws, in order.
                    self.queue.push(Reverse((until, seq)));
                    self.events.insert(seq, ev);
                    continue;
                }
                self.handle(ev);
            }
            for r in 0..self.nodes.len() {
                if !self.frozen(r)
                    && let Some(m) = self.nodes[r].machine.as_mut()
                    && m.poll_timeout().is_some_and(|t| t <= self.now)
                {
                    m.handle_timeout(self.now);
                }
                self.drive(r);
            }
            if self
                .queue
                .peek()
                .is_some_and(|&Reverse((at, _))| at <= self.now)
            {
                continue;
            }
            let faults_over = self.now - self.start > FAULT_WINDOW;
            if faults_over && self.all_done() {
                return;
            }
            let mut next = self.queue.peek().map(|&Reverse((at, _))| at);
            for (r, node) in self.nodes.iter().enumerate() {
                let timeout = if self.frozen(r) {
                    node.paused_until
                } else {
                    node.machine.as_ref().and_then(|m| m.poll_timeout())
                };
                if let Some(t) = timeout {
                    next = Some(next.map_or(t, |n: Instant| n.min(t)));
                }
            }
            let Some(next) = next else {
                self.violations
                    .push("nothing left to do but experiments are not done".into());
                return;
            };
            if next - self.start > limit {
                self.violations.push(format!(
                    "experiments not done after {limit:?}: {:?}",
                    self.model.lock().unwrap().rows
                ));
                return;
            }
            // A deadline that stays in the past would make the engine spin.
            if next <= self.now {
                stalls += 1;
                if stalls > 10_000 {
                    let timeouts: Vec<_> = self
                        .nodes
                        .iter()
                        .map(|n| n.machine.as_ref().and_then(|m| m.poll_timeout()))
                        .collect();
                    self.violations.push(format!(
                        "a replica's poll_timeout stays in the past at {:?}: {timeouts:?} (now {:?})",
                        self.now - self.start,
                        self.now
                    ));
                    return;
                }
            } else {
                stalls = 0;
            }
            self.set_now(next.max(self.now + Duration::from_micros(1)));
        }
    }
}

proptest! {
    // Shrinking is bounded: a failing case of this harness can take seconds.
    #![proptest_config(ProptestConfig {
        cases: cases(),
        max_shrink_time: 60_000,
        ..ProptestConfig::default()
    })]

    #[test]
    fn replicas_never_overlap_and_every_result_is_written_once(case in case()) {
        let kill = case.kill_at_end && case.replicas >= 2;
        let mut cluster = Cluster::new(case.clone());
        // The faults happen within the first 12 s; the cluster then runs
        // fault-free (but for one permanent kill) until everything is done.
        cluster.run(FAULT_WINDOW);
        cluster.violations.retain(|v| !v.starts_with("experiments not done"));
        let mut owned_by_dead = Vec::new();
        // R2 is checked when another replica is up to take over.
        let up = cluster.nodes.iter().filter(|n| n.machine.is_some() && !n.stopping).count();
        let kill = kill && up >= 2;
        if kill {
            let victim = cluster.nodes.iter().position(|n| n.machine.is_some()).unwrap_or(0);
            cluster.mark_faulted(victim);
            let name = cluster.nodes[victim].name.clone();
            cluster.nodes[victim].machine = None;
            cluster.nodes[victim].dead = true;
            let db = cluster.model.lock().unwrap();
            for (id, row) in &db.rows {
                if row.claimed_by.as_ref() == Some(&name) && !row.completed {
                    owned_by_dead.push((*id, row.epoch, row.claimed_at, cluster.now));
                }
            }
        }
        // Every other replica is up, thawed and connected from here on.
        for r in 0..cluster.nodes.len() {
            cluster.nodes[r].paused_until = None;
            cluster.nodes[r].cut_until = None;
            cluster.nodes[r].lose_beats = 0;
        }
        cluster.run(Duration::from_secs(600));
        prop_assert!(cluster.violations.is_empty(), "{:#?}", cluster.violations);

        let db = cluster.model.lock().unwrap();
        // R2: the dead replica's experiments are claimed again in time.
        let config = &cluster.config;
        let scan = config.orphan_scan_interval().mul_f64(1.0 + config.orphan_scan_jitter);
        // A heartbeat under way delays a scan by its round trip, and the
        // scan's own round trip follows: four store delays at most.
        let slack = Duration::from_millis(4 * case.store_ms + 1);
        // Every other replica is healthy from the end of the fault window:
        // until then a cut-off or frozen one could not take anything over.
        let healthy_from = cluster.start + FAULT_WINDOW;
        for (id, epoch, claimed_at, died) in owned_by_dead {
            let taken = db
                .claims
                .iter()
                .find(|(_, e, _, ep)| *e == id && *ep > epoch)
                .map(|(t, ..)| *t);
            let Some(taken) = taken else {
                prop_assert!(db.rows[&id].completed, "{id} never taken over");
                continue;
            };
            // The lease runs from the last heartbeat the database wrote, on
            // its clock, which is never behind true time: measured from it,
            // the bound is if anything looser. So a dead replica's
            // experiments are owned again within lease + scan interval (+
            // jitter and store delays) of its last heartbeat. A released
            // claim (graceful shutdown under way) may be taken at the next
            // scan.
            let expired = claimed_at.map_or(died, |at| at + config.lease);
            let from = expired.max(healthy_from);
            let bound = scan + slack;
            prop_assert!(
                taken.saturating_duration_since(from) <= bound,
                "{id} taken over {:?} after its claim expired (or the cluster was whole again); bound {bound:?}",
                taken.saturating_duration_since(from)
            );
        }
        // R3: one accepted result per example × repetition …
        for (id, row) in &db.rows {
            prop_assert!(row.completed, "{id} not completed");
            for e in 1..=row.examples {
                let key = TaskKey { example: ExampleId(e), repetition: 0 };
                prop_assert_eq!(db.runs.get(&(*id, key)).copied(), Some(1), "{} {:?}", id, key);
            }
        }
        // … and every call beyond one per result was made by a replica
        // incarnation that suffered a fault.
        let mut per_key: HashMap<(ExperimentId, TaskKey), u32> = HashMap::new();
        for call in &cluster.calls {
            *per_key.entry((call.experiment, call.key)).or_default() += 1;
            if !call.accepted {
                prop_assert!(
                    cluster.nodes[call.node].faulted.contains(&call.life),
                    "a call of r{} (life {}) for {:?} was not recorded, with no fault to account for it",
                    call.node, call.life, call.key
                );
            }
        }
        let faults = case.faults.iter().filter(|(_, f)| !matches!(f, Fault::Graceful(_) | Fault::Jump(_))).count();
        if faults == 0 && !kill {
            prop_assert!(per_key.values().all(|&n| n == 1), "duplicate calls without a fault");
        }
    }
}
