//! Lifecycle transitions on real databases (issue 4's list): claim races
//! between two replicas, fencing after a takeover under concurrent writes,
//! cooldowns, idempotent toggles, NOTIFY, and the migration check.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{connect, seed};
use runnel_core::{Claim, Epoch, ExperimentStatus, ReplicaId, RunRecord, Store, TaskKey, Write};
use runnel_store::testing::with_temp_db;
use runnel_store::{
    ControlEvent, ControlKind, DatabaseKind, Db, Heard, StoreConfig, StoreError, Transition,
};

const HOUR: Duration = Duration::from_secs(3600);
const COOLDOWN: Duration = Duration::from_secs(5);

fn success(example: runnel_core::ExampleId, text: &str) -> RunRecord {
    RunRecord {
        key: TaskKey {
            example,
            repetition: 0,
        },
        output: Some(text.to_owned()),
        error: None,
        attempts: 1,
        latency_ms: 5,
        total_latency_ms: 5,
        usage: None,
    }
}

fn done<T: std::fmt::Debug>(t: Transition<T>) -> T {
    match t {
        Transition::Done(v) => v,
        other => panic!("expected Done, got {other:?}"),
    }
}

/// Two replicas, each with its own pool, race for the same experiment 1,000
/// times — alternately through the orphan scan (after a release) and through
/// start (after a stop). Every round has exactly one winner, and the epoch
/// grows by exactly one per round.
async fn two_pools_race_for_one_experiment_with_one_winner_each_time(kind: DatabaseKind) {
    with_temp_db(kind, async |temp| {
        let a = Arc::new(connect(temp.url()).await);
        let b = Arc::new(connect(temp.url()).await);
        let (x, _) = seed(&a, 1, 1, &[]).await;
        let (ra, rb) = (ReplicaId::new("replica-a"), ReplicaId::new("replica-b"));
        let mut current = done(a.start(x, &ra).await.unwrap());
        for round in 0..1000 {
            let (wa, wb) = if round % 2 == 0 {
                a.release(std::slice::from_ref(&current)).await.unwrap();
                let (da, db) = (a.clone(), b.clone());
                let (ra2, rb2) = (ra.clone(), rb.clone());
                let ta = tokio::spawn(async move { da.take_over_orphans(&ra2, HOUR).await });
                let tb = tokio::spawn(async move { db.take_over_orphans(&rb2, HOUR).await });
                (ta.await.unwrap().unwrap(), tb.await.unwrap().unwrap())
            } else {
                done(a.stop(x, Duration::ZERO).await.unwrap());
                let (da, db) = (a.clone(), b.clone());
                let (ra2, rb2) = (ra.clone(), rb.clone());
                let ta = tokio::spawn(async move { da.start(x, &ra2).await });
                let tb = tokio::spawn(async move { db.start(x, &rb2).await });
                let claims = |t: Transition<Claim>| match t {
                    Transition::Done(c) => vec![c],
                    Transition::AlreadyInState(ExperimentStatus::Running) => vec![],
                    other => panic!("round {round}: unexpected {other:?}"),
                };
                (
                    claims(ta.await.unwrap().unwrap()),
                    claims(tb.await.unwrap().unwrap()),
                )
            };
            let winners: Vec<Claim> = wa.into_iter().chain(wb).collect();
            assert_eq!(winners.len(), 1, "round {round}: winners {winners:?}");
            let winner = winners.into_iter().next().unwrap();
            assert_eq!(winner.epoch, Epoch(current.epoch.0 + 1), "round {round}");
            current = winner;
        }
        let view = a.experiment(x).await.unwrap();
        assert_eq!(view.epoch, current.epoch.0);
        assert_eq!(view.claimed_by.as_deref(), Some(current.replica.as_str()));
        Arc::try_unwrap(a).unwrap().close().await;
        Arc::try_unwrap(b).unwrap().close().await;
    })
    .await;
}

/// Replica A writes results concurrently while replica B takes the
/// experiment over. Each of A's writes is either accepted and stored with
/// A's epoch, or fenced and absent; once the takeover has returned, every
/// write from A's epoch is fenced, and the fenced writes are counted.
async fn after_a_takeover_every_write_of_the_old_epoch_is_rejected(kind: DatabaseKind) {
    with_temp_db(kind, async |temp| {
        let a = Arc::new(connect(temp.url()).await);
        let b = connect(temp.url()).await;
        let (x, examples) = seed(&a, 400, 1, &[]).await;
        let old = done(a.start(x, &ReplicaId::new("replica-a")).await.unwrap());

        // Some writes are committed before the takeover starts...
        for &e in &examples[..50] {
            assert!(matches!(
                a.record_run(&old, success(e, "a")).await.unwrap(),
                Write::Accepted(_)
            ));
        }
        // ...and more are in flight while it happens.
        let writers: Vec<_> = examples[50..200]
            .iter()
            .map(|&e| {
                let (a, old) = (a.clone(), old.clone());
                tokio::spawn(async move { (e, a.record_run(&old, success(e, "a")).await.unwrap()) })
            })
            .collect();
        // Take over while the writes are in flight. On SQLite a claim is
        // stale for a zero lease once the clock has moved a millisecond on.
        let new = loop {
            let taken = b
                .take_over_orphans(&ReplicaId::new("replica-b"), Duration::ZERO)
                .await
                .unwrap();
            if let Some(claim) = taken.into_iter().next() {
                break claim;
            }
            tokio::task::yield_now().await;
        };
        assert_eq!(new.epoch, Epoch(old.epoch.0 + 1));

        let mut accepted = examples[..50].to_vec();
        let mut fenced = 0;
        for w in writers {
            match w.await.unwrap() {
                (e, Write::Accepted(_)) => accepted.push(e),
                (_, Write::Fenced) => fenced += 1,
            }
        }
        for &e in &examples[200..] {
            assert_eq!(
                a.record_run(&old, success(e, "late")).await.unwrap(),
                Write::Fenced,
                "a write from the old epoch after the takeover"
            );
        }
        assert_eq!(a.fenced_writes(), fenced + 200);

        let page = a.runs_page(x, None, 1000).await.unwrap();
        let mut stored: Vec<_> = page.items.iter().map(|r| r.example_id).collect();
        stored.sort();
        accepted.sort();
        assert_eq!(stored, accepted, "exactly the accepted writes are stored");
        assert!(page.items.iter().all(|r| r.epoch == old.epoch.0));
        // The new owner's writes go through.
        assert!(matches!(
            b.record_run(&new, success(examples[399], "b"))
                .await
                .unwrap(),
            Write::Accepted(_)
        ));
        Arc::try_unwrap(a).unwrap().close().await;
        b.close().await;
    })
    .await;
}

/// A toggle during the cooldown of the previous one is refused with the time
/// left; start and completion set no cooldown.
async fn a_toggle_during_the_cooldown_is_refused_with_the_time_left(kind: DatabaseKind) {
    with_temp_db(kind, async |temp| {
        let db = connect(temp.url()).await;
        let (x, _) = seed(&db, 1, 1, &[]).await;
        let me = ReplicaId::new("replica-a");
        done(db.resume(x, &me, COOLDOWN).await.unwrap());
        match db.stop(x, COOLDOWN).await.unwrap() {
            Transition::Cooldown { remaining } => {
                assert!(remaining <= COOLDOWN, "{remaining:?}");
                assert!(
                    remaining > COOLDOWN - Duration::from_secs(2),
                    "{remaining:?}"
                );
            }
            other => panic!("a stop right after a resume: {other:?}"),
        }
        assert_eq!(
            db.experiment(x).await.unwrap().status,
            ExperimentStatus::Running,
            "a refused stop changes nothing"
        );

        // Start sets no cooldown: a stop right after it goes through, and
        // its own cooldown then refuses a resume and a start alike.
        let (y, _) = seed(&db, 1, 1, &[]).await;
        done(db.start(y, &me).await.unwrap());
        done(db.stop(y, COOLDOWN).await.unwrap());
        assert!(matches!(
            db.resume(y, &me, COOLDOWN).await.unwrap(),
            Transition::Cooldown { .. }
        ));
        assert!(matches!(
            db.start(y, &me).await.unwrap(),
            Transition::Cooldown { .. }
        ));
        db.close().await;
    })
    .await;
}

/// Stop/stop and resume/resume are idempotent: the second answers "already
/// in that state" (also while a cooldown runs), never an error.
async fn stop_stop_and_resume_resume_are_idempotent(kind: DatabaseKind) {
    with_temp_db(kind, async |temp| {
        let db = connect(temp.url()).await;
        let (x, _) = seed(&db, 1, 1, &[]).await;
        let me = ReplicaId::new("replica-a");
        let claim = done(db.resume(x, &me, HOUR).await.unwrap());
        assert_eq!(
            db.resume(x, &me, HOUR).await.unwrap(),
            Transition::AlreadyInState(ExperimentStatus::Running)
        );
        assert_eq!(
            db.resume(x, &ReplicaId::new("replica-b"), HOUR)
                .await
                .unwrap(),
            Transition::AlreadyInState(ExperimentStatus::Running)
        );
        assert_eq!(
            db.experiment(x).await.unwrap().epoch,
            claim.epoch.0,
            "no second claim"
        );

        let (y, _) = seed(&db, 1, 1, &[]).await;
        assert_eq!(
            db.stop(y, HOUR).await.unwrap(),
            Transition::AlreadyInState(ExperimentStatus::Stopped),
            "a new experiment is stopped"
        );
        done(db.start(y, &me).await.unwrap());
        done(db.stop(y, HOUR).await.unwrap());
        assert_eq!(
            db.stop(y, HOUR).await.unwrap(),
            Transition::AlreadyInState(ExperimentStatus::Stopped)
        );

        let missing = runnel_core::ExperimentId(uuid::Uuid::now_v7());
        assert_eq!(db.stop(missing, HOUR).await.unwrap(), Transition::NotFound);
        assert_eq!(
            db.resume(missing, &me, HOUR).await.unwrap(),
            Transition::NotFound
        );
        assert!(!db.delete_experiment(missing).await.unwrap());

        // Completed experiments can be resumed (to run what is missing).
        let (z, _) = seed(&db, 1, 1, &[]).await;
        let claim = done(db.start(z, &me).await.unwrap());
        assert!(
            db.finish(&claim, &runnel_core::Finish::Completed)
                .await
                .unwrap()
        );
        assert_eq!(
            db.stop(z, HOUR).await.unwrap(),
            Transition::AlreadyInState(ExperimentStatus::Completed)
        );
        let again = done(db.resume(z, &me, Duration::ZERO).await.unwrap());
        assert_eq!(again.epoch, Epoch(claim.epoch.0 + 1));
        db.close().await;
    })
    .await;
}

/// The migration check: a fresh database is migrated on connect (or refused
/// with instructions when automatic migration is off), `migrate` reports the
/// version, and a database migrated by a newer binary is refused.
async fn migrations_are_checked_at_connect(kind: DatabaseKind) {
    with_temp_db(kind, async |temp| {
        let manual = StoreConfig {
            auto_migrate: false,
            ..StoreConfig::for_url(temp.url())
        };
        let err = Db::connect(&manual).await.unwrap_err();
        assert!(matches!(err, StoreError::MigrationsPending { applied: 0, .. }), "{err}");
        assert!(err.to_string().contains("runnel migrate"));

        let version = runnel_store::migrate(temp.url()).await.unwrap();
        assert!(version >= 1);
        assert_eq!(runnel_store::migrate(temp.url()).await.unwrap(), version, "idempotent");
        let db = Db::connect(&manual).await.unwrap();
        db.ready().await.unwrap();
        db.close().await;

        // Pretend a newer runnel migrated this database.
        let future = version + 1000;
        let sql = format!(
            "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
             VALUES ({future}, 'from the future', TRUE, X'00', 0)"
        );
        let sql = if kind == DatabaseKind::Postgres {
            sql.replace("X'00'", "'\\x00'::bytea")
        } else {
            sql
        };
        raw_execute(kind, temp.url(), &sql).await;
        let err = Db::connect(&StoreConfig::for_url(temp.url())).await.unwrap_err();
        assert_eq!(
            err,
            StoreError::MigrationsNewer {
                applied: future,
                known: version
            }
        );
        assert!(err.to_string().contains("newer than this binary"), "{err}");
    })
    .await;
}

async fn raw_execute(kind: DatabaseKind, url: &str, sql: &str) {
    use sqlx::{Connection, Executor};
    match kind {
        DatabaseKind::Sqlite => {
            let mut c = sqlx::SqliteConnection::connect(url).await.unwrap();
            c.execute(sqlx::AssertSqlSafe(sql.to_owned()))
                .await
                .unwrap();
            c.close().await.unwrap();
        }
        DatabaseKind::Postgres => {
            let mut c = sqlx::PgConnection::connect(url).await.unwrap();
            c.execute(sqlx::AssertSqlSafe(sql.to_owned()))
                .await
                .unwrap();
            c.close().await.unwrap();
        }
    }
}

on_both_databases!(
    two_pools_race_for_one_experiment_with_one_winner_each_time,
    after_a_takeover_every_write_of_the_old_epoch_is_rejected,
    a_toggle_during_the_cooldown_is_refused_with_the_time_left,
    stop_stop_and_resume_resume_are_idempotent,
    migrations_are_checked_at_connect,
);

/// PostgreSQL announces stop, resume and delete to every replica, well
/// within a second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_announces_stop_resume_and_delete() {
    with_temp_db(DatabaseKind::Postgres, async |temp| {
        let owner = connect(temp.url()).await;
        let api = connect(temp.url()).await;
        let mut listener = owner.listen().await.unwrap().expect("PostgreSQL listens");
        let (x, _) = seed(&api, 1, 1, &[]).await;
        let me = ReplicaId::new("replica-a");
        let mut expect = async |kind: ControlKind| {
            let heard = tokio::time::timeout(Duration::from_secs(1), listener.recv())
                .await
                .expect("announced within a second")
                .unwrap();
            assert_eq!(
                heard,
                Heard::Event(ControlEvent {
                    experiment: x,
                    kind
                })
            );
        };
        done(api.resume(x, &me, Duration::ZERO).await.unwrap());
        expect(ControlKind::Resumed).await;
        done(api.stop(x, Duration::ZERO).await.unwrap());
        expect(ControlKind::Stopped).await;
        // A refused transition announces nothing; the next event is the delete.
        assert!(matches!(
            api.stop(x, Duration::ZERO).await.unwrap(),
            Transition::AlreadyInState(_)
        ));
        assert!(api.delete_experiment(x).await.unwrap());
        expect(ControlKind::Deleted).await;
        drop(listener);
        owner.close().await;
        api.close().await;
    })
    .await;
}

#[tokio::test]
async fn sqlite_has_no_listener() {
    with_temp_db(DatabaseKind::Sqlite, async |temp| {
        let db = connect(temp.url()).await;
        assert!(db.listen().await.unwrap().is_none());
        db.close().await;
    })
    .await;
}
