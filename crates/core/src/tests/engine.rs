//! Engine tests on tokio's paused clock: mockall fakes of the ports for the
//! focused behaviours (heartbeat cadence, lost ownership, takeover, shutdown,
//! timeouts, open breakers, store errors), and the in-memory store with a
//! scripted provider for whole runs. No test sleeps to synchronise: they wait
//! for engine events, and virtual time advances when everything is idle.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use super::tokio_clock::TokioClock;
use crate::memory::{FnProvider, MemoryStore, Unlimited};
use crate::ports::{
    Acquire, Departure, EngineEvent, EventSink, Finish, MockAdvisor, MockProvider, MockStore,
    WaitReason, Write,
};
use crate::work::{TaskKey, TaskWork};
use crate::{
    CallReport, CallSpec, Claim, Config, Engine, EngineHandle, Epoch, Error, EvaluatorId,
    EvaluatorSpec, ExampleData, ExampleId, ExperimentId, ExperimentPlan, ExperimentStatus, Outcome,
    Ports, RateKey, ReplicaId, Reply, RunId, RunWrite,
};

/// Forwards every event into a channel the test reads.
struct Events(mpsc::UnboundedSender<EngineEvent>);

impl EventSink for Events {
    fn emit(&self, event: EngineEvent) {
        let _ = self.0.send(event);
    }
}

async fn wait_for(
    rx: &mut mpsc::UnboundedReceiver<EngineEvent>,
    mut wanted: impl FnMut(&EngineEvent) -> bool,
) -> EngineEvent {
    loop {
        let event = rx.recv().await.expect("engine alive");
        if wanted(&event) {
            return event;
        }
    }
}

/// Ports on the in-memory store with `provider`, no rate limits, and an
/// event channel the test reads.
#[allow(clippy::type_complexity)]
fn memory_ports<P: crate::Provider>(
    store: Arc<MemoryStore>,
    provider: Arc<P>,
) -> (
    Ports<MemoryStore, P, Unlimited, TokioClock, Events>,
    mpsc::UnboundedReceiver<EngineEvent>,
) {
    let (tx, rx) = mpsc::unbounded_channel();
    let ports = Ports {
        store,
        provider,
        advisor: Arc::new(Unlimited),
        clock: Arc::new(TokioClock),
        events: Arc::new(Events(tx)),
    };
    (ports, rx)
}

fn call(provider: &str) -> CallSpec {
    CallSpec {
        provider: provider.into(),
        model: "m".into(),
        messages: vec![],
        params: Default::default(),
        timeout_s: None,
        stream: false,
    }
}

fn plan(id: ExperimentId) -> ExperimentPlan {
    ExperimentPlan {
        id,
        dataset: crate::DatasetId(uuid::Uuid::nil()),
        repetitions: 1,
        max_concurrency: None,
        task: call("p"),
        evaluators: vec![],
    }
}

fn claim(id: ExperimentId, epoch: i64) -> Claim {
    Claim {
        experiment: id,
        replica: ReplicaId::new("r1"),
        epoch: Epoch(epoch),
    }
}

fn work(example: i64) -> TaskWork {
    TaskWork {
        key: TaskKey {
            example: ExampleId(example),
            repetition: 0,
        },
        data: Arc::new(ExampleData::default()),
    }
}

type Boxed<T> = Pin<Box<dyn Future<Output = T> + Send>>;

fn ready<T: Send + 'static>(value: T) -> Boxed<T> {
    Box::pin(async move { value })
}

/// A store mock that owns one experiment with `examples` tasks; other
/// expectations are added by each test.
fn store_with(examples: i64, id: ExperimentId) -> MockStore {
    store_with_log(examples, id, |_| {})
}

/// [`store_with`], handing every log message to `log`.
fn store_with_log(
    examples: i64,
    id: ExperimentId,
    log: impl Fn(String) + Send + Sync + 'static,
) -> MockStore {
    let mut store = MockStore::new();
    store
        .expect_reclaim_own()
        .returning(move |_| ready(Ok(vec![claim(id, 1)])));
    store
        .expect_take_over_orphans()
        .returning(|_, _| ready(Ok(vec![])));
    store
        .expect_load_plan()
        .returning(move |id| ready(Ok(plan(id))));
    store
        .expect_eval_page()
        .returning(|_, _, _| ready(Ok(vec![])));
    store.expect_task_page().returning(move |_, after, limit| {
        let start = after.map_or(1, |a| a.example.0 + 1);
        let page: Vec<TaskWork> = (start..=examples).take(limit).map(work).collect();
        ready(Ok(page))
    });
    store.expect_log().returning(move |_, _, message| {
        log(message);
        ready(Ok(()))
    });
    store
}

/// Every heartbeat keeps every claim.
fn heartbeat_keeps_everything(store: &mut MockStore) {
    store.expect_heartbeat().returning(|c| {
        let owned = c.iter().map(|c| c.experiment).collect();
        ready(Ok(owned))
    });
}

/// A provider mock that computes keys and estimates; calls are up to the test.
fn keyed_provider() -> MockProvider {
    let mut provider = MockProvider::new();
    provider
        .expect_rate_key()
        .returning(|c| Ok(RateKey::new(&c.provider, &c.model)));
    provider.expect_estimate_tokens().returning(|_| None);
    provider
}

fn provider_never_answering() -> MockProvider {
    let mut provider = keyed_provider();
    provider
        .expect_call()
        .returning(|_, _| Box::pin(std::future::pending()));
    provider
}

fn engine<S: crate::Store, P: crate::Provider, A: crate::Advisor>(
    config: Config,
    store: S,
    provider: P,
    advisor: A,
) -> (
    EngineHandle,
    mpsc::UnboundedReceiver<EngineEvent>,
    tokio::task::JoinHandle<()>,
) {
    let (tx, rx) = mpsc::unbounded_channel();
    let ports = Ports {
        store: Arc::new(store),
        provider: Arc::new(provider),
        advisor: Arc::new(advisor),
        clock: Arc::new(TokioClock),
        events: Arc::new(Events(tx)),
    };
    let (engine, handle) = Engine::new(config, ReplicaId::new("r1"), ports);
    let task = tokio::spawn(engine.run());
    (handle, rx, task)
}

fn exp_id(n: u128) -> ExperimentId {
    ExperimentId(uuid::Uuid::from_u128(n))
}

#[tokio::test(start_paused = true)]
async fn heartbeats_every_third_of_the_lease_whatever_the_calls_do() {
    let id = exp_id(1);
    let mut store = store_with(5, id);
    let beats = Arc::new(Mutex::new(Vec::new()));
    let seen = beats.clone();
    store.expect_heartbeat().returning(move |claims| {
        seen.lock().unwrap().push(tokio::time::Instant::now());
        let owned: Vec<ExperimentId> = claims.iter().map(|c| c.experiment).collect();
        ready(Ok(owned))
    });
    let config = Config {
        task_timeout: Duration::from_secs(3600),
        ..Config::default()
    };
    let start = tokio::time::Instant::now();
    let (_handle, mut rx, _task) = engine(config, store, provider_never_answering(), Unlimited);
    wait_for(&mut rx, |e| matches!(e, EngineEvent::Adopted { .. })).await;
    tokio::time::sleep_until(start + Duration::from_secs(65)).await;
    let beats: Vec<u64> = beats
        .lock()
        .unwrap()
        .iter()
        .map(|t| (*t - start).as_secs())
        .collect();
    assert_eq!(beats, vec![10, 20, 30, 40, 50, 60]);
}

#[tokio::test(start_paused = true)]
async fn lost_ownership_stops_locally_without_writing() {
    let id = exp_id(2);
    let mut store = store_with(3, id);
    store.expect_heartbeat().returning(|_| ready(Ok(vec![])));
    // The engine must write nothing for an experiment it no longer owns.
    store.expect_record_run().never();
    store.expect_finish().never();
    let mut provider = keyed_provider();
    provider.expect_call().returning(|_, _| {
        Box::pin(async {
            tokio::time::sleep(Duration::from_secs(15)).await;
            CallReport::new(
                Outcome::Success(Reply::Task {
                    output: "late".into(),
                }),
                Duration::from_secs(15),
            )
        })
    });
    let (_handle, mut rx, _task) = engine(Config::default(), store, provider, Unlimited);
    let departed = wait_for(&mut rx, |e| matches!(e, EngineEvent::Departed { .. })).await;
    let EngineEvent::Departed { experiment, why } = departed else {
        unreachable!()
    };
    assert_eq!((experiment, why), (id, Departure::Lost));
}

#[tokio::test(start_paused = true)]
async fn takes_over_orphans_at_start_and_every_third_of_a_lease() {
    let id = exp_id(3);
    let mut store = MockStore::new();
    store.expect_reclaim_own().returning(|_| ready(Ok(vec![])));
    let scans = Arc::new(AtomicU32::new(0));
    let counted = scans.clone();
    store
        .expect_take_over_orphans()
        .returning(move |replica, lease| {
            assert_eq!(lease, Duration::from_secs(30));
            let n = counted.fetch_add(1, Ordering::SeqCst);
            // Nothing at the start-up scan; an orphan appears at the second.
            let claims = if n == 1 {
                vec![Claim {
                    experiment: id,
                    replica: replica.clone(),
                    epoch: Epoch(7),
                }]
            } else {
                vec![]
            };
            ready(Ok(claims))
        });
    store.expect_load_plan().returning(|id| ready(Ok(plan(id))));
    store
        .expect_eval_page()
        .returning(|_, _, _| ready(Ok(vec![])));
    store
        .expect_task_page()
        .returning(|_, _, _| ready(Ok(vec![])));
    store.expect_log().returning(|_, _, _| ready(Ok(())));
    heartbeat_keeps_everything(&mut store);
    store
        .expect_finish()
        .withf(move |c, end| c.epoch == Epoch(7) && *end == Finish::Completed)
        .times(1)
        .returning(|_, _| ready(Ok(true)));
    let start = tokio::time::Instant::now();
    let (_handle, mut rx, _task) = engine(
        Config::default(),
        store,
        provider_never_answering(),
        Unlimited,
    );
    let adopted = wait_for(&mut rx, |e| matches!(e, EngineEvent::Adopted { .. })).await;
    let EngineEvent::Adopted { claim, takeover } = adopted else {
        unreachable!()
    };
    assert!(takeover);
    assert_eq!(claim.epoch, Epoch(7));
    // The second scan runs a third of a lease (±10 %) after the first.
    let elapsed = tokio::time::Instant::now() - start;
    assert!(
        elapsed >= Duration::from_secs(9) && elapsed <= Duration::from_secs(11),
        "{elapsed:?}"
    );
    let done = wait_for(&mut rx, |e| matches!(e, EngineEvent::Departed { .. })).await;
    assert!(matches!(
        done,
        EngineEvent::Departed {
            why: Departure::Completed,
            ..
        }
    ));
}

#[tokio::test(start_paused = true)]
async fn graceful_shutdown_drains_in_flight_calls_then_releases_claims() {
    let id = exp_id(4);
    let mut store = store_with(1, id);
    heartbeat_keeps_everything(&mut store);
    let written = Arc::new(AtomicU32::new(0));
    let w = written.clone();
    store.expect_record_run().returning(move |_, record| {
        assert_eq!(record.output.as_deref(), Some("done"));
        w.fetch_add(1, Ordering::SeqCst);
        ready(Ok(Write::Accepted(RunWrite {
            id: RunId(1),
            new_success: true,
        })))
    });
    let released = Arc::new(Mutex::new(Vec::new()));
    let r = released.clone();
    store.expect_release().returning(move |claims| {
        r.lock().unwrap().extend(claims.to_vec());
        ready(Ok(()))
    });
    // Completion must not be written: shutdown came first.
    store.expect_finish().never();
    let mut provider = keyed_provider();
    provider.expect_call().times(1).returning(|_, _| {
        Box::pin(async {
            tokio::time::sleep(Duration::from_secs(5)).await;
            CallReport::new(
                Outcome::Success(Reply::Task {
                    output: "done".into(),
                }),
                Duration::from_secs(5),
            )
        })
    });
    let (handle, mut rx, task) = engine(Config::default(), store, provider, Unlimited);
    wait_for(&mut rx, |e| matches!(e, EngineEvent::Adopted { .. })).await;
    let start = tokio::time::Instant::now();
    let claims = handle.shutdown().await.unwrap();
    assert_eq!(claims, vec![claim(id, 1)]);
    assert_eq!(written.load(Ordering::SeqCst), 1);
    assert_eq!(*released.lock().unwrap(), vec![claim(id, 1)]);
    // Drained as soon as the call ended, well before the 30 s grace.
    assert!(tokio::time::Instant::now() - start <= Duration::from_secs(6));
    task.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn shutdown_releases_after_the_grace_period_when_calls_hang() {
    let id = exp_id(5);
    let mut store = store_with(1, id);
    heartbeat_keeps_everything(&mut store);
    store.expect_release().times(1).returning(|_| ready(Ok(())));
    let config = Config {
        task_timeout: Duration::from_secs(3600),
        shutdown_grace: Duration::from_secs(12),
        ..Config::default()
    };
    let (handle, mut rx, _task) = engine(config, store, provider_never_answering(), Unlimited);
    wait_for(&mut rx, |e| matches!(e, EngineEvent::Adopted { .. })).await;
    let start = tokio::time::Instant::now();
    let claims = handle.shutdown().await.unwrap();
    assert_eq!(claims, vec![claim(id, 1)]);
    assert_eq!(tokio::time::Instant::now() - start, Duration::from_secs(12));
}

#[tokio::test(start_paused = true)]
async fn a_call_past_its_timeout_is_a_transient_failure_retried_then_recorded() {
    let id = exp_id(6);
    let mut store = store_with(1, id);
    heartbeat_keeps_everything(&mut store);
    let recorded = Arc::new(Mutex::new(None));
    let r = recorded.clone();
    store
        .expect_record_run()
        .times(1)
        .returning(move |_, record| {
            *r.lock().unwrap() = Some(record);
            ready(Ok(Write::Accepted(RunWrite {
                id: RunId(1),
                new_success: false,
            })))
        });
    store.expect_finish().returning(|_, _| ready(Ok(true)));
    let config = Config {
        task_timeout: Duration::from_secs(2),
        max_retries: 2,
        ..Config::default()
    };
    let (_handle, mut rx, _task) = engine(config, store, provider_never_answering(), Unlimited);
    let finished = wait_for(&mut rx, |e| matches!(e, EngineEvent::CallFinished { .. })).await;
    let EngineEvent::CallFinished { class, latency, .. } = finished else {
        unreachable!()
    };
    assert_eq!(class, crate::OutcomeClass::Transient);
    assert_eq!(latency, Duration::from_secs(2));
    wait_for(&mut rx, |e| matches!(e, EngineEvent::Departed { .. })).await;
    let record = recorded.lock().unwrap().clone().expect("recorded");
    assert_eq!(record.attempts, 3);
    let error = record.error.expect("failed");
    assert!(error.contains("timed out after 2s"), "{error}");
    assert!(error.contains("gave up after 3 attempts"), "{error}");
}

#[tokio::test(start_paused = true)]
async fn keys_with_an_open_breaker_are_not_dispatched_until_give_up() {
    let id = exp_id(7);
    let mut store = store_with(3, id);
    heartbeat_keeps_everything(&mut store);
    let ended = Arc::new(Mutex::new(None));
    let e = ended.clone();
    store.expect_finish().times(1).returning(move |_, end| {
        *e.lock().unwrap() = Some(end.clone());
        ready(Ok(true))
    });
    let mut provider = keyed_provider();
    provider.expect_call().never();
    let opened = tokio::time::Instant::now().into_std();
    let mut advisor = MockAdvisor::new();
    advisor
        .expect_try_acquire()
        .returning(move |_, _, now| Acquire::Wait {
            until: now + Duration::from_secs(30),
            reason: WaitReason::BreakerOpen { open_since: opened },
        });
    let config = Config {
        breaker_give_up: Duration::from_secs(100),
        ..Config::default()
    };
    let start = tokio::time::Instant::now();
    let (_handle, mut rx, _task) = engine(config, store, provider, advisor);
    let departed = wait_for(&mut rx, |e| matches!(e, EngineEvent::Departed { .. })).await;
    let EngineEvent::Departed { why, .. } = departed else {
        unreachable!()
    };
    assert!(
        matches!(why, Departure::Errored(ref m) if m.contains("`p`")),
        "{why:?}"
    );
    let elapsed = tokio::time::Instant::now() - start;
    assert!(
        elapsed >= Duration::from_secs(100) && elapsed <= Duration::from_secs(130),
        "{elapsed:?}"
    );
    assert!(matches!(
        ended.lock().unwrap().clone(),
        Some(Finish::Error(_))
    ));
}

/// A used-up quota through the engine: the first answer says so, the
/// engine emits `Waiting` (shown by the server) and logs it, the advisor
/// holds the key, and after `rate_limit_give_up` the experiment is written
/// ERROR naming the quota — exactly one provider call in all.
#[tokio::test(start_paused = true)]
async fn a_used_up_quota_is_shown_then_errors_after_the_give_up() {
    let id = exp_id(9);
    let logged = Arc::new(Mutex::new(Vec::new()));
    let l = logged.clone();
    let mut store = store_with_log(3, id, move |m| l.lock().unwrap().push(m));
    heartbeat_keeps_everything(&mut store);
    store
        .expect_finish()
        .times(1)
        .returning(|_, _| ready(Ok(true)));
    let mut provider = keyed_provider();
    provider.expect_call().times(1).returning(|_, _| {
        ready(CallReport::new(
            Outcome::QuotaExhausted {
                message: "HTTP 429: insufficient_quota".into(),
                retry_after: Some(Duration::from_secs(7200)),
            },
            Duration::from_millis(20),
        ))
    });
    let mut advisor = MockAdvisor::new();
    let spent = Arc::new(Mutex::new(None::<Instant>));
    let s = spent.clone();
    advisor
        .expect_try_acquire()
        .returning(move |_, _, _| match *s.lock().unwrap() {
            None => Acquire::Permit,
            Some(back) => Acquire::Wait {
                until: back,
                reason: WaitReason::Quota { until: Some(back) },
            },
        });
    let s = spent.clone();
    advisor.expect_record().returning(move |_, obs, now| {
        if let Some(after) = obs.retry_after {
            *s.lock().unwrap() = Some(now + after);
        }
    });
    let config = Config {
        max_concurrency: 1,
        rate_limit_give_up: Duration::from_secs(600),
        ..Config::default()
    };
    let start = tokio::time::Instant::now();
    let (_handle, mut rx, _task) = engine(config, store, provider, advisor);
    let waiting = wait_for(&mut rx, |e| matches!(e, EngineEvent::Waiting { .. })).await;
    let EngineEvent::Waiting {
        waiting: Some(w), ..
    } = waiting
    else {
        panic!("{waiting:?}")
    };
    assert_eq!(w.key, RateKey::new("p", "m"));
    assert!(w.until.is_some());
    let departed = wait_for(&mut rx, |e| matches!(e, EngineEvent::Departed { .. })).await;
    let EngineEvent::Departed {
        why: Departure::Errored(message),
        ..
    } = departed
    else {
        panic!("{departed:?}")
    };
    assert!(
        message.starts_with("quota exhausted: provider `p`"),
        "{message}"
    );
    assert!(message.contains("comes back in about 1h 50m"), "{message}");
    let elapsed = tokio::time::Instant::now() - start;
    assert!(
        elapsed >= Duration::from_secs(600) && elapsed <= Duration::from_secs(601),
        "{elapsed:?}"
    );
    let logged = logged.lock().unwrap();
    assert!(
        logged
            .iter()
            .any(|m| m.starts_with("waiting on quota: provider `p`")),
        "{logged:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_store_error_while_refilling_does_not_kill_the_engine() {
    let id = exp_id(8);
    let mut store = MockStore::new();
    store
        .expect_reclaim_own()
        .returning(move |_| ready(Ok(vec![claim(id, 1)])));
    store
        .expect_take_over_orphans()
        .returning(|_, _| ready(Ok(vec![])));
    store.expect_load_plan().returning(|id| ready(Ok(plan(id))));
    store
        .expect_eval_page()
        .returning(|_, _, _| ready(Ok(vec![])));
    let failures = Arc::new(AtomicU32::new(0));
    let f = failures.clone();
    store.expect_task_page().returning(move |_, after, _| {
        if f.fetch_add(1, Ordering::SeqCst) < 3 {
            return ready(Err(Error::StoreUnavailable("connection refused".into())));
        }
        let page = if after.is_none() {
            vec![work(1)]
        } else {
            vec![]
        };
        ready(Ok(page))
    });
    store.expect_log().returning(|_, _, _| ready(Ok(())));
    heartbeat_keeps_everything(&mut store);
    store.expect_record_run().times(1).returning(|_, _| {
        ready(Ok(Write::Accepted(RunWrite {
            id: RunId(1),
            new_success: true,
        })))
    });
    store
        .expect_finish()
        .withf(|_, end| *end == Finish::Completed)
        .times(1)
        .returning(|_, _| ready(Ok(true)));
    let mut provider = keyed_provider();
    provider.expect_call().returning(|_, _| {
        ready(CallReport::new(
            Outcome::Success(Reply::Task {
                output: "ok".into(),
            }),
            Duration::ZERO,
        ))
    });
    let (_handle, mut rx, _task) = engine(Config::default(), store, provider, Unlimited);
    let departed = wait_for(&mut rx, |e| matches!(e, EngineEvent::Departed { .. })).await;
    assert!(matches!(
        departed,
        EngineEvent::Departed {
            why: Departure::Completed,
            ..
        }
    ));
    // Three failures, then one page shorter than asked: the sweep is over.
    assert_eq!(failures.load(Ordering::SeqCst), 4);
}

#[tokio::test(start_paused = true)]
async fn writes_are_retried_while_the_store_is_down_and_nothing_is_lost() {
    let now = Arc::new(Mutex::new(tokio::time::Instant::now().into_std()));
    let clock_now = now.clone();
    let store = Arc::new(MemoryStore::new(Arc::new(move || {
        tokio::time::Instant::now()
            .into_std()
            .max(*clock_now.lock().unwrap())
    })));
    let dataset = store.create_dataset((0..20).map(|_| ExampleData::default()).collect());
    let mut p = plan(exp_id(0));
    p.evaluators = vec![EvaluatorSpec {
        id: EvaluatorId(0),
        name: "judge".into(),
        call: call("j"),
        labels: vec!["A".into()],
    }];
    let id = store.create_experiment(dataset, p);
    let replica = ReplicaId::new("r1");
    // Claimed under this replica before it starts: taken back at start-up.
    store.start(id, &replica).unwrap();
    let clock = Arc::new(TokioClock);
    let provider = FnProvider::new(clock.clone(), |job| {
        let reply = if job.is_task() {
            Reply::Task { output: "o".into() }
        } else {
            Reply::Eval {
                label: Some("A".into()),
                score: None,
                explanation: None,
            }
        };
        (Duration::from_millis(100), Outcome::Success(reply))
    });
    let (ports, mut rx) = memory_ports(store.clone(), Arc::new(provider));
    let (engine, _handle) = Engine::new(Config::default(), replica, ports);
    tokio::spawn(engine.run());
    // Take the database away after the first recorded run, for 20 s.
    wait_for(&mut rx, |e| matches!(e, EngineEvent::RunRecorded { .. })).await;
    store.set_available(false);
    tokio::time::sleep(Duration::from_secs(20)).await;
    store.set_available(true);
    let departed = wait_for(&mut rx, |e| matches!(e, EngineEvent::Departed { .. })).await;
    assert!(matches!(
        departed,
        EngineEvent::Departed {
            why: Departure::Completed,
            ..
        }
    ));
    let runs = store.runs(id);
    assert_eq!(runs.len(), 20);
    assert!(runs.iter().all(|r| r.record.output.is_some()));
    assert_eq!(store.annotations(id).len(), 20);
    assert!(store.accepted_writes(id).values().all(|n| *n == 1));
    assert_eq!(
        store.experiment(id).unwrap().status,
        ExperimentStatus::Completed
    );
}

#[tokio::test(start_paused = true)]
async fn whole_runs_through_the_memory_store_complete_with_one_result_each() {
    let store = Arc::new(MemoryStore::new(Arc::new(|| {
        tokio::time::Instant::now().into_std()
    })));
    let replica = ReplicaId::new("r1");
    let mut ids = Vec::new();
    for n in 0..5 {
        let dataset = store.create_dataset((0..40).map(|_| ExampleData::default()).collect());
        let mut p = plan(exp_id(0));
        p.repetitions = 2;
        p.task = call(&format!("p{n}"));
        p.evaluators = vec![EvaluatorSpec {
            id: EvaluatorId(0),
            name: "judge".into(),
            call: call("j"),
            labels: vec!["A".into()],
        }];
        ids.push(store.create_experiment(dataset, p));
    }
    let clock = Arc::new(TokioClock);
    let calls = Arc::new(AtomicU32::new(0));
    let c = calls.clone();
    let provider = FnProvider::new(clock.clone(), move |job| {
        let n = c.fetch_add(1, Ordering::SeqCst);
        // Every seventh call is rate limited, every eleventh fails transiently.
        let outcome = if n % 7 == 3 {
            Outcome::RateLimited {
                retry_after: Some(Duration::from_millis(500)),
                scope: crate::LimitScope::Unknown,
                message: "429".into(),
            }
        } else if n % 11 == 5 {
            Outcome::Transient {
                message: "502".into(),
            }
        } else if job.is_task() {
            Outcome::Success(Reply::Task { output: "o".into() })
        } else {
            Outcome::Success(Reply::Eval {
                label: Some("A".into()),
                score: None,
                explanation: None,
            })
        };
        (Duration::from_millis(50 + u64::from(n % 5) * 30), outcome)
    });
    let provider = Arc::new(provider);
    let (ports, mut rx) = memory_ports(store.clone(), provider.clone());
    let config = Config {
        max_concurrency: 7,
        high_watermark: 16,
        low_watermark: 4,
        ..Config::default()
    };
    // Claimed under this replica's identity before it starts: the engine
    // takes them back at start-up (a restarted single server).
    for &id in &ids {
        store.start(id, &replica).unwrap();
    }
    let (engine, _handle) = Engine::new(config, replica.clone(), ports);
    tokio::spawn(engine.run());
    let mut completed = 0;
    while completed < ids.len() {
        if let EngineEvent::Departed { why, .. } =
            wait_for(&mut rx, |e| matches!(e, EngineEvent::Departed { .. })).await
        {
            assert_eq!(why, Departure::Completed);
            completed += 1;
        }
    }
    for &id in &ids {
        assert_eq!(store.runs(id).len(), 80);
        assert_eq!(store.annotations(id).len(), 80);
        assert!(store.accepted_writes(id).values().all(|n| *n == 1));
        assert_eq!(
            store.experiment(id).unwrap().status,
            ExperimentStatus::Completed
        );
    }
    // Never two calls for one identity at once: each identity got exactly one
    // successful call, plus retries after rate limits or transient failures.
    let total: u32 = provider.calls().values().sum();
    assert_eq!(u64::from(total), provider.total_calls());
    assert!(total >= 800);
}

#[tokio::test(start_paused = true)]
async fn an_engine_without_takeover_claims_nothing_of_its_own_accord() {
    let mut store = MockStore::new();
    store.expect_reclaim_own().never();
    store.expect_take_over_orphans().never();
    let config = Config {
        take_over: false,
        ..Config::default()
    };
    let (handle, _rx, _task) = engine(config, store, provider_never_answering(), Unlimited);
    handle.started().await.unwrap();
    // Several leases pass without any scan.
    tokio::time::sleep(Duration::from_secs(120)).await;
    handle.shutdown().await.unwrap();
}

/// The wait after a `Retry-After` is the provider's pause plus at most
/// `retry_after_spread` of it: exactly the pause with no spread, and within
/// the spread otherwise.
#[tokio::test(start_paused = true)]
async fn retry_after_waits_are_spread_by_the_configured_fraction() {
    let pause = Duration::from_secs(10);
    let mut gaps = Vec::new();
    for spread in [0.0, 1.0] {
        let store = Arc::new(MemoryStore::new(Arc::new(|| {
            tokio::time::Instant::now().into_std()
        })));
        let dataset = store.create_dataset(vec![ExampleData::default()]);
        let id = store.create_experiment(dataset, plan(exp_id(0)));
        let clock = Arc::new(TokioClock);
        let started = Arc::new(Mutex::new(Vec::new()));
        let seen = started.clone();
        let provider = FnProvider::new(clock.clone(), move |_job| {
            let mut seen = seen.lock().unwrap();
            seen.push(tokio::time::Instant::now());
            let outcome = if seen.len() == 1 {
                Outcome::RateLimited {
                    retry_after: Some(pause),
                    message: "429".into(),
                    scope: crate::outcome::LimitScope::Unknown,
                }
            } else {
                Outcome::Success(Reply::Task { output: "o".into() })
            };
            (Duration::ZERO, outcome)
        });
        let (ports, mut rx) = memory_ports(store.clone(), Arc::new(provider));
        let config = Config {
            retry_after_spread: spread,
            seed: Some(5),
            ..Config::default()
        };
        let replica = ReplicaId::new("r1");
        store.start(id, &replica).unwrap();
        let (engine, _handle) = Engine::new(config, replica, ports);
        tokio::spawn(engine.run());
        wait_for(&mut rx, |e| matches!(e, EngineEvent::Departed { .. })).await;
        let started = started.lock().unwrap();
        assert_eq!(started.len(), 2);
        gaps.push(started[1] - started[0]);
    }
    assert_eq!(gaps[0], pause);
    assert!(gaps[1] > pause && gaps[1] <= pause * 2, "{gaps:?}");
}

/// The demand per key counts the jobs an experiment has ready and none
/// once nothing is left to run.
#[tokio::test(start_paused = true)]
async fn demand_counts_ready_jobs_per_key() {
    let id = exp_id(40);
    let mut store = store_with(5, id);
    heartbeat_keeps_everything(&mut store);
    // The key is always saturated: every task stays buffered.
    let mut advisor = MockAdvisor::new();
    advisor
        .expect_try_acquire()
        .returning(|_, _, now| Acquire::Wait {
            until: now + Duration::from_secs(3600),
            reason: WaitReason::Rate,
        });
    advisor.expect_record().returning(|_, _, _| ());
    let (handle, mut rx, _task) = engine(Config::default(), store, keyed_provider(), advisor);
    wait_for(&mut rx, |e| matches!(e, EngineEvent::Adopted { .. })).await;
    let mut demand = handle.demand().await.unwrap();
    while demand.is_empty() {
        // The first task page is still on its way: wait for the engine to
        // take it (virtual time only advances when everything is idle).
        tokio::task::yield_now().await;
        demand = handle.demand().await.unwrap();
    }
    assert_eq!(demand, HashMap::from([(RateKey::new("p", "m"), 5)]));
    handle.stop(id).unwrap();
    wait_for(&mut rx, |e| matches!(e, EngineEvent::Departed { .. })).await;
    assert!(handle.demand().await.unwrap().is_empty());
}

/// Breaker isolation through the engine (issue 13, item 3): one experiment
/// whose every call outlives its `timeout_s`, with ten times the concurrency
/// of a healthy one on the same key, leaves the healthy one alone and errors
/// at once, naming the timeout.
#[tokio::test(start_paused = true)]
async fn one_experiments_timeouts_stay_with_it() {
    let store = Arc::new(MemoryStore::new(Arc::new(|| {
        tokio::time::Instant::now().into_std()
    })));
    let replica = ReplicaId::new("r1");
    let dataset = store.create_dataset((0..30).map(|_| ExampleData::default()).collect());
    let mut healthy = plan(exp_id(0));
    healthy.max_concurrency = Some(2);
    let mut impatient = healthy.clone();
    impatient.max_concurrency = Some(20);
    impatient.task.timeout_s = Some(0.1);
    let healthy = store.create_experiment(dataset, healthy);
    let impatient = store.create_experiment(dataset, impatient);
    let clock = Arc::new(TokioClock);
    let provider = FnProvider::new(clock.clone(), move |_job| {
        (
            Duration::from_millis(300),
            Outcome::Success(Reply::Task { output: "o".into() }),
        )
    });
    let (tx, mut rx) = mpsc::unbounded_channel();
    let ports = Ports {
        store: store.clone(),
        provider: Arc::new(provider),
        advisor: Arc::new(Unlimited),
        clock,
        events: Arc::new(Events(tx)),
    };
    let config = Config {
        backoff_base: Duration::from_millis(100),
        experiment_breaker_cooldown: Duration::from_secs(1),
        ..Config::default()
    };
    store.start(healthy, &replica).unwrap();
    store.start(impatient, &replica).unwrap();
    let start = tokio::time::Instant::now();
    let (engine, _handle) = Engine::new(config, replica.clone(), ports);
    tokio::spawn(engine.run());
    let mut ends = HashMap::new();
    while ends.len() < 2 {
        if let EngineEvent::Departed { experiment, why } =
            wait_for(&mut rx, |e| matches!(e, EngineEvent::Departed { .. })).await
        {
            ends.insert(experiment, (why, tokio::time::Instant::now() - start));
        }
    }
    assert_eq!(ends[&healthy].0, Departure::Completed);
    let (why, at) = &ends[&impatient];
    let Departure::Errored(message) = why else {
        panic!("{why:?}");
    };
    assert!(message.contains("timed out after 0.1s"), "{message}");
    assert!(*at < Duration::from_secs(5), "{at:?}");
}
