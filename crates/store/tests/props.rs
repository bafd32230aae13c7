//! Property test of the lifecycle state machine (DESIGN §4) on real
//! databases: random sequences of transitions, heartbeats, releases,
//! takeovers, finishes and fenced writes are applied to the store and to a
//! small model of the rules; every answer and the final state must agree.
//!
//! Cooldowns are modelled exactly by using either none (0) or one far
//! longer than the test (1 h), so no answer depends on the wall clock.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::{connect, seed};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use runnel_core::{
    Claim, Epoch, ExampleId, ExperimentId, ExperimentStatus, Finish, ReplicaId, RunRecord,
    RunWrite, Store, TaskKey, Write,
};
use runnel_store::testing::TempDatabase;
use runnel_store::{DatabaseKind, Db, Transition};

const HOUR: Duration = Duration::from_secs(3600);
const EXAMPLES: usize = 3;

#[derive(Clone, Debug)]
enum Op {
    Start(usize),
    Resume(usize, bool),
    Stop(bool),
    Release(usize),
    TakeOver(usize),
    Reclaim(usize),
    Heartbeat(usize),
    Finish(usize, bool),
    Write(usize, usize, bool),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0..3usize).prop_map(Op::Start),
        (0..3usize, any::<bool>()).prop_map(|(r, long)| Op::Resume(r, long)),
        any::<bool>().prop_map(Op::Stop),
        (0..8usize).prop_map(Op::Release),
        (0..3usize).prop_map(Op::TakeOver),
        (0..3usize).prop_map(Op::Reclaim),
        (0..8usize).prop_map(Op::Heartbeat),
        (0..8usize, any::<bool>()).prop_map(|(c, ok)| Op::Finish(c, ok)),
        (0..8usize, 0..EXAMPLES, any::<bool>()).prop_map(|(c, e, ok)| Op::Write(c, e, ok)),
    ]
}

/// The rules of DESIGN §4, in memory.
#[derive(Debug)]
struct Model {
    status: ExperimentStatus,
    owner: Option<ReplicaId>,
    epoch: i64,
    /// The claim was released (expired): the orphan scan takes it at once.
    expired: bool,
    /// A 1 h cooldown is running.
    cooling: bool,
    last_error: Option<String>,
    /// Per example: (succeeded, epoch of the write, run id once known).
    runs: HashMap<usize, (bool, i64)>,
}

impl Model {
    fn new() -> Self {
        Self {
            status: ExperimentStatus::Stopped,
            owner: None,
            epoch: 0,
            expired: false,
            cooling: false,
            last_error: None,
            runs: HashMap::new(),
        }
    }

    fn owns(&self, c: &Claim) -> bool {
        self.owner.as_ref() == Some(&c.replica) && self.epoch == c.epoch.0
    }

    fn claim(&mut self, r: &ReplicaId) -> Epoch {
        self.status = ExperimentStatus::Running;
        self.owner = Some(r.clone());
        self.epoch += 1;
        self.expired = false;
        self.last_error = None;
        Epoch(self.epoch)
    }

    /// Start (cooldown `None`) or resume.
    fn start(&mut self, r: &ReplicaId, cooldown: Option<bool>) -> Transition<Epoch> {
        if self.owner.is_some() {
            return Transition::AlreadyInState(self.status);
        }
        if self.cooling {
            return Transition::Cooldown { remaining: HOUR };
        }
        if let Some(long) = cooldown {
            self.cooling = long;
        }
        Transition::Done(self.claim(r))
    }

    fn stop(&mut self, long: bool) -> Transition<()> {
        if self.status != ExperimentStatus::Running {
            return Transition::AlreadyInState(self.status);
        }
        if self.cooling {
            return Transition::Cooldown { remaining: HOUR };
        }
        self.status = ExperimentStatus::Stopped;
        self.owner = None;
        self.expired = false;
        self.cooling = long;
        Transition::Done(())
    }

    fn write(&mut self, c: &Claim, example: usize, ok: bool) -> Option<bool> {
        let fence = self.epoch == c.epoch.0 && self.owner.as_ref().is_none_or(|o| *o == c.replica);
        if !fence {
            return None;
        }
        match self.runs.get(&example) {
            Some((true, _)) => Some(false),
            _ => {
                self.runs.insert(example, (ok, c.epoch.0));
                Some(ok)
            }
        }
    }
}

/// Cooldown answers are compared by kind only (the time left is the
/// database's to tell).
fn same<T: PartialEq + std::fmt::Debug, U: std::fmt::Debug>(
    got: &Transition<T>,
    want: &Transition<U>,
    eq: impl Fn(&T, &U) -> bool,
) -> bool {
    match (got, want) {
        (Transition::Done(a), Transition::Done(b)) => eq(a, b),
        (Transition::AlreadyInState(a), Transition::AlreadyInState(b)) => a == b,
        (Transition::Cooldown { .. }, Transition::Cooldown { .. }) => true,
        (Transition::NotFound, Transition::NotFound) => true,
        _ => false,
    }
}

fn record(example: ExampleId, ok: bool) -> RunRecord {
    RunRecord {
        key: TaskKey {
            example,
            repetition: 0,
        },
        output: ok.then(|| "out".to_owned()),
        error: (!ok).then(|| "err".to_owned()),
        attempts: 1,
        latency_ms: 1,
        total_latency_ms: 1,
        usage: None,
    }
}

async fn check(db: &Db, ops: Vec<Op>) -> Result<(), TestCaseError> {
    let (x, examples): (ExperimentId, Vec<ExampleId>) = seed(db, EXAMPLES, 1, &[]).await;
    // Cases share one database: replica names are unique per case, and the
    // claim scans' answers are narrowed to this case's experiment (earlier
    // cases' experiments may still be RUNNING; what happens to them no longer
    // matters).
    let replicas: Vec<ReplicaId> = (0..3)
        .map(|i| ReplicaId::new(format!("r{i}-{x}")))
        .collect();
    let mut model = Model::new();
    // Every claim handed out so far; ops name one by index (modulo). Before
    // the first, a claim that never existed stands in.
    let mut claims = vec![Claim {
        experiment: x,
        replica: replicas[0].clone(),
        epoch: Epoch(0),
    }];
    let mut run_ids: HashMap<usize, runnel_core::RunId> = HashMap::new();
    for (step, op) in ops.into_iter().enumerate() {
        let pick = |i: usize| claims[i % claims.len()].clone();
        match op {
            Op::Start(r) | Op::Resume(r, _) => {
                let cooldown = match op {
                    Op::Resume(_, long) => Some(long),
                    _ => None,
                };
                let got = match cooldown {
                    None => db.start(x, &replicas[r]).await.unwrap(),
                    Some(long) => db
                        .resume(x, &replicas[r], if long { HOUR } else { Duration::ZERO })
                        .await
                        .unwrap(),
                };
                let want = model.start(&replicas[r], cooldown);
                prop_assert!(
                    same(&got, &want, |c, e| c.epoch == *e
                        && c.replica == replicas[r]),
                    "step {step} {op:?}: got {got:?}, want {want:?}"
                );
                if let Transition::Done(c) = got {
                    claims.push(c);
                }
            }
            Op::Stop(long) => {
                let got = db
                    .stop(x, if long { HOUR } else { Duration::ZERO })
                    .await
                    .unwrap();
                let want = model.stop(long);
                prop_assert!(
                    same(&got, &want, |_, _| true),
                    "step {step}: {got:?} vs {want:?}"
                );
            }
            Op::Release(i) => {
                let c = pick(i);
                db.release(std::slice::from_ref(&c)).await.unwrap();
                if model.owns(&c) {
                    model.expired = true;
                }
            }
            Op::TakeOver(r) | Op::Reclaim(r) => {
                let replica = &replicas[r];
                let (mut got, eligible) = if matches!(op, Op::TakeOver(_)) {
                    let got = db.take_over_orphans(replica, HOUR).await.unwrap();
                    (got, model.expired || model.owner.is_none())
                } else {
                    let got = db.reclaim_own(replica).await.unwrap();
                    (got, model.owner.as_ref() == Some(replica))
                };
                got.retain(|c| c.experiment == x);
                let want: Vec<Epoch> = if model.status == ExperimentStatus::Running && eligible {
                    vec![model.claim(replica)]
                } else {
                    vec![]
                };
                let got_epochs: Vec<Epoch> = got.iter().map(|c| c.epoch).collect();
                prop_assert_eq!(&got_epochs, &want, "step {} {:?}", step, op);
                claims.extend(got);
            }
            Op::Heartbeat(i) => {
                let c = pick(i);
                let got = db.heartbeat(std::slice::from_ref(&c)).await.unwrap();
                let owned = model.owns(&c);
                if owned {
                    model.expired = false;
                }
                prop_assert_eq!(got, if owned { vec![x] } else { vec![] }, "step {}", step);
            }
            Op::Finish(i, ok) => {
                let c = pick(i);
                let end = if ok {
                    Finish::Completed
                } else {
                    Finish::Error("boom".into())
                };
                let got = db.finish(&c, &end).await.unwrap();
                let owned = model.owns(&c);
                if owned {
                    model.status = if ok {
                        ExperimentStatus::Completed
                    } else {
                        ExperimentStatus::Error
                    };
                    model.last_error = (!ok).then(|| "boom".to_owned());
                    model.owner = None;
                    model.expired = false;
                }
                prop_assert_eq!(got, owned, "step {} {:?}", step, op);
            }
            Op::Write(i, e, ok) => {
                let c = pick(i);
                let got = db.record_run(&c, record(examples[e], ok)).await.unwrap();
                let want = model.write(&c, e, ok);
                match (got, want) {
                    (Write::Fenced, None) => {}
                    (Write::Accepted(RunWrite { id, new_success }), Some(expected)) => {
                        prop_assert_eq!(new_success, expected, "step {} {:?}", step, op);
                        let first = *run_ids.entry(e).or_insert(id);
                        prop_assert_eq!(id, first, "a run keeps its id");
                    }
                    (got, want) => {
                        return Err(TestCaseError::fail(format!(
                            "step {step} {op:?}: got {got:?}, model says {want:?}"
                        )));
                    }
                }
            }
        }
        let view = db.experiment(x).await.unwrap();
        prop_assert_eq!(view.status, model.status, "status after step {}", step);
        prop_assert_eq!(view.epoch, model.epoch, "epoch after step {}", step);
        prop_assert_eq!(
            view.claimed_by.as_deref(),
            model.owner.as_ref().map(ReplicaId::as_str),
            "owner after step {}",
            step
        );
        prop_assert_eq!(
            &view.last_error,
            &model.last_error,
            "last_error after step {}",
            step
        );
    }

    // The stored runs and the work still handed out follow from the model.
    let page = db.runs_page(x, None, 100).await.unwrap();
    let mut stored: HashMap<usize, (bool, i64)> = HashMap::new();
    for run in page.items {
        let e = examples
            .iter()
            .position(|id| *id == run.example_id)
            .unwrap();
        stored.insert(e, (run.error.is_none(), run.epoch));
    }
    prop_assert_eq!(&stored, &model.runs);
    let now = Claim {
        experiment: x,
        replica: replicas[0].clone(),
        epoch: Epoch(model.epoch),
    };
    let work: Vec<ExampleId> = db
        .task_page(&now, None, 100)
        .await
        .unwrap()
        .into_iter()
        .map(|w| w.key.example)
        .collect();
    let want: Vec<ExampleId> = (0..EXAMPLES)
        .filter(|e| match model.runs.get(e) {
            None => true,
            Some((ok, epoch)) => !ok && *epoch != model.epoch,
        })
        .map(|e| examples[e])
        .collect();
    prop_assert_eq!(work, want);
    Ok(())
}

fn lifecycle_follows_the_model(kind: DatabaseKind) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let temp = rt.block_on(TempDatabase::new(kind));
    let db = rt.block_on(connect(temp.url()));
    let cases = if std::env::var_os("RUNNEL_TEST_FULL").is_some() {
        512
    } else {
        48
    };
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    });
    let result = runner.run(&proptest::collection::vec(op(), 1..40), |ops| {
        rt.block_on(check(&db, ops))
    });
    rt.block_on(async {
        db.close().await;
        temp.remove().await;
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}

#[test]
fn sqlite_lifecycle_follows_the_model() {
    lifecycle_follows_the_model(DatabaseKind::Sqlite);
}

#[test]
fn postgres_lifecycle_follows_the_model() {
    lifecycle_follows_the_model(DatabaseKind::Postgres);
}
