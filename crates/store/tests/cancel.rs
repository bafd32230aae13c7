//! Stopping a write mid-flight — dropping the caller's future, aborting its
//! task, killing the whole runtime — leaves no half-written state, and the
//! pool keeps working. This replaces the seed's unexplained 30 s "shield"
//! around database writes (DESIGN §10): result writes run in the store's
//! batch writers, so a caller that goes away does not cancel them, and a
//! writer that dies mid-transaction rolls the transaction back.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::task::Poll;

use common::{connect, examples, seed};
use runnel_core::{Claim, ExampleId, ReplicaId, RunRecord, Store, TaskKey, Write};
use runnel_store::testing::with_temp_db;
use runnel_store::{DatabaseKind, Db, Transition};

fn record(example: ExampleId) -> RunRecord {
    RunRecord {
        key: TaskKey {
            example,
            repetition: 0,
        },
        output: Some(format!("output of {example}")),
        error: None,
        attempts: 2,
        latency_ms: 7,
        total_latency_ms: 11,
        usage: None,
    }
}

async fn start(db: &Db, n: usize) -> (Claim, Vec<ExampleId>) {
    let (x, ids) = seed(db, n, 1, &[]).await;
    match db.start(x, &ReplicaId::new("replica-a")).await.unwrap() {
        Transition::Done(claim) => (claim, ids),
        other => panic!("{other:?}"),
    }
}

/// Every stored run is whole: its output matches its key and every column
/// holds what was written.
async fn assert_runs_whole(db: &Db, claim: &Claim) -> Vec<ExampleId> {
    let mut stored = Vec::new();
    let mut cursor = None;
    loop {
        let page = db.runs_page(claim.experiment, cursor, 1000).await.unwrap();
        for run in &page.items {
            assert_eq!(run.output, Some(format!("output of {}", run.example_id)));
            assert_eq!(
                (run.attempts, run.latency_ms, run.total_latency_ms),
                (2, 7, 11)
            );
            assert_eq!(run.epoch, claim.epoch.0);
            stored.push(run.example_id);
        }
        match page.next_cursor {
            Some(c) => cursor = Some(c),
            None => return stored,
        }
    }
}

/// A caller that stops waiting after its write was queued does not cancel
/// it: the write is committed whole. One dropped before it was polled was
/// never queued and leaves nothing.
async fn a_dropped_write_future_is_committed_whole_or_not_started(kind: DatabaseKind) {
    with_temp_db(kind, async |temp| {
        let db = connect(temp.url()).await;
        let (claim, ids) = start(&db, 40).await;
        for (i, &e) in ids.iter().enumerate() {
            let mut write = Box::pin(db.record_run(&claim, record(e)));
            // Poll i % 4 times (0: never), yielding in between so the
            // writers make progress, then give up on the answer.
            for _ in 0..i % 4 {
                if let Poll::Ready(verdict) = futures::poll!(write.as_mut()) {
                    assert!(matches!(verdict.unwrap(), Write::Accepted(_)));
                    break;
                }
                tokio::task::yield_now().await;
            }
            drop(write);
        }
        // The pool still works, and close waits for every queued write.
        let last = db.record_run(&claim, record(ids[0])).await.unwrap();
        assert!(matches!(last, Write::Accepted(_)));
        db.close().await;

        let db = connect(temp.url()).await;
        let mut stored = assert_runs_whole(&db, &claim).await;
        stored.sort();
        let expected: Vec<ExampleId> = ids
            .iter()
            .enumerate()
            .filter(|(i, _)| i % 4 != 0 || *i == 0)
            .map(|(_, e)| *e)
            .collect();
        assert_eq!(stored, expected);
        db.close().await;
    })
    .await;
}

/// Tasks writing results are aborted at arbitrary points: every stored run
/// is whole, every write that was acknowledged is stored, and the same pool
/// keeps serving.
async fn aborted_writer_tasks_leave_whole_rows(kind: DatabaseKind) {
    with_temp_db(kind, async |temp| {
        let db = Arc::new(connect(temp.url()).await);
        let (claim, ids) = start(&db, 300).await;
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let tasks: Vec<_> = ids[..250]
            .iter()
            .map(|&e| {
                let (db, claim, tx) = (db.clone(), claim.clone(), tx.clone());
                tokio::spawn(async move {
                    let verdict = db.record_run(&claim, record(e)).await.unwrap();
                    let _ = tx.send((e, verdict));
                })
            })
            .collect();
        drop(tx);
        for (i, task) in tasks.iter().enumerate() {
            if i % 3 == 0 {
                tokio::task::yield_now().await;
            }
            task.abort();
        }
        let mut acknowledged = Vec::new();
        while let Some((e, verdict)) = rx.recv().await {
            assert!(matches!(verdict, Write::Accepted(_)));
            acknowledged.push(e);
        }
        // The same pool keeps working.
        for &e in &ids[250..] {
            assert!(matches!(
                db.record_run(&claim, record(e)).await.unwrap(),
                Write::Accepted(_)
            ));
        }
        let stored = assert_runs_whole(&db, &claim).await;
        for e in acknowledged.iter().chain(&ids[250..]) {
            assert!(stored.contains(e), "acknowledged write {e} is stored");
        }
        Arc::try_unwrap(db).unwrap().close().await;
    })
    .await;
}

/// An import (one transaction) dropped after any number of polls leaves
/// either no dataset or the whole dataset, and the pool keeps serving.
async fn a_dropped_import_leaves_no_partial_dataset(kind: DatabaseKind) {
    with_temp_db(kind, async |temp| {
        let db = connect(temp.url()).await;
        let rows = examples(0, 3000);
        let mut polls = 1;
        let mut cancelled_before_commit = 0;
        loop {
            let before = db.datasets().await.unwrap().len();
            let mut import = Box::pin(db.create_dataset("big", &rows));
            let mut finished = false;
            for _ in 0..polls {
                if futures::poll!(import.as_mut()).is_ready() {
                    finished = true;
                    break;
                }
                tokio::task::yield_now().await;
            }
            drop(import);
            let datasets = db.datasets().await.unwrap();
            assert!(datasets.len() <= before + 1);
            for d in &datasets {
                assert_eq!(d.example_count, 3000, "a dataset is whole or absent");
            }
            if finished {
                break;
            }
            if datasets.len() == before {
                cancelled_before_commit += 1;
            }
            polls *= 2;
        }
        assert!(
            cancelled_before_commit > 0,
            "no import was cancelled before its commit"
        );
        // The pool still works for reads and writes on every connection.
        for _ in 0..12 {
            db.create_dataset("after", &rows[..10]).await.unwrap();
        }
        db.close().await;
    })
    .await;
}

/// The whole runtime dies (process shutdown) while writes are in flight:
/// rows are whole, acknowledged writes are stored, and a new pool on the
/// same database works.
async fn a_killed_runtime_leaves_whole_rows(kind: DatabaseKind) {
    with_temp_db(kind, async |temp| {
        let setup = connect(temp.url()).await;
        let (claim, ids) = start(&setup, 400).await;
        setup.close().await;

        let url = temp.url().to_owned();
        let (claim2, ids2) = (claim.clone(), ids.clone());
        let acknowledged = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            let acknowledged = rt.block_on(async move {
                let db = Arc::new(connect(&url).await);
                let mut acknowledged = Vec::new();
                for &e in &ids2[..20] {
                    db.record_run(&claim2, record(e)).await.unwrap();
                    acknowledged.push(e);
                }
                // More writes, of which the runtime dies in the middle: it
                // is killed once 50 of them are acknowledged.
                let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
                for &e in &ids2[20..] {
                    let (db, claim, tx) = (db.clone(), claim2.clone(), tx.clone());
                    tokio::spawn(async move {
                        if let Ok(Write::Accepted(_)) = db.record_run(&claim, record(e)).await {
                            let _ = tx.send(e);
                        }
                    });
                }
                while acknowledged.len() < 70 {
                    acknowledged.push(rx.recv().await.unwrap());
                }
                // Leak the store into the dying runtime.
                std::mem::forget(db);
                acknowledged
            });
            rt.shutdown_background();
            acknowledged
        })
        .join()
        .unwrap();

        let db = connect(temp.url()).await;
        let stored = assert_runs_whole(&db, &claim).await;
        for e in &acknowledged {
            assert!(stored.contains(e));
        }
        let verdict = db.record_run(&claim, record(ids[399])).await.unwrap();
        assert!(matches!(verdict, Write::Accepted(_)));
        db.close().await;
    })
    .await;
}

on_both_databases!(
    a_dropped_write_future_is_committed_whole_or_not_started,
    aborted_writer_tasks_leave_whole_rows,
    a_dropped_import_leaves_no_partial_dataset,
    a_killed_runtime_leaves_whole_rows,
);
