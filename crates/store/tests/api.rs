//! The operations the HTTP API needs (API.md), on both databases: datasets,
//! experiments with progress, evaluators, result pages and streams, logs,
//! advisor state, replica identities and connection errors.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::{connect, evaluator, examples, experiment, seed};
use futures::StreamExt;
use runnel_core::{
    AnnotationRecord, DatasetId, EvalKey, ExperimentId, ExperimentStatus, LogLevel, RateKey,
    ReplicaId, RunRecord, Store, TaskKey, Usage, Write,
};
use runnel_store::testing::with_temp_db;
use runnel_store::{DatabaseKind, Db, ExperimentFilter, StoreConfig, StoreError, Transition};
use serde_json::json;

fn run(example: runnel_core::ExampleId, repetition: u32, ok: bool) -> RunRecord {
    RunRecord {
        key: TaskKey {
            example,
            repetition,
        },
        output: ok.then(|| format!("answer {example}/{repetition}")),
        error: (!ok).then(|| "HTTP 400: bad request".to_owned()),
        attempts: 1,
        latency_ms: 250,
        total_latency_ms: 250,
        usage: ok.then_some(Usage {
            prompt_tokens: 12,
            completion_tokens: 3,
        }),
    }
}

async fn datasets_are_imported_whole_and_counted(kind: DatabaseKind) {
    with_temp_db(kind, async |temp| {
        let db = connect(temp.url()).await;
        let mut rows = examples(0, 3);
        rows[1].expected = Some(json!("B"));
        rows[2].metadata = Some(json!({"source": "test"}));
        let info = db.create_dataset("letters", &rows).await.unwrap();
        assert_eq!((info.name.as_str(), info.example_count), ("letters", 3));
        assert_eq!(db.dataset(info.id).await.unwrap(), info);

        let page = db.examples_page(info.id, None, 10).await.unwrap();
        assert_eq!(page.len(), 3);
        assert_eq!(page[0].1.input, json!({"n": 0}));
        assert_eq!(page[0].1.metadata, json!({}), "metadata defaults to {{}}");
        assert_eq!(page[1].1.expected, Some(json!("B")));
        assert_eq!(page[2].1.metadata, json!({"source": "test"}));
        let tail = db
            .examples_page(info.id, Some(page[0].0), 10)
            .await
            .unwrap();
        assert_eq!(tail.len(), 2);

        assert_eq!(
            db.append_examples(info.id, &examples(3, 2)).await.unwrap(),
            5
        );
        assert_eq!(db.append_examples(info.id, &[]).await.unwrap(), 5);

        // One bad example: nothing of the request is stored.
        let mut bad = examples(10, 3);
        bad[1].input = json!("not an object");
        let err = db.append_examples(info.id, &bad).await.unwrap_err();
        assert_eq!(
            err,
            StoreError::Invalid {
                field: "examples[1].input".into(),
                message: "must be a JSON object".into()
            }
        );
        assert_eq!(db.dataset(info.id).await.unwrap().example_count, 5);
        assert!(db.create_dataset("bad", &bad).await.is_err());
        assert!(matches!(
            db.create_dataset("  ", &[]).await,
            Err(StoreError::Invalid { field, .. }) if field == "name"
        ));
        let listed = db.datasets().await.unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].example_count, 5);

        let missing = DatasetId(uuid::Uuid::now_v7());
        assert_eq!(
            db.dataset(missing).await,
            Err(StoreError::DatasetNotFound(missing))
        );
        assert_eq!(
            db.append_examples(missing, &examples(0, 1)).await,
            Err(StoreError::DatasetNotFound(missing))
        );
        assert_eq!(
            db.examples_page(missing, None, 1).await,
            Err(StoreError::DatasetNotFound(missing))
        );
        db.close().await;
    })
    .await;
}

async fn experiments_report_progress_from_their_results(kind: DatabaseKind) {
    with_temp_db(kind, async |temp| {
        let db = connect(temp.url()).await;
        let (x, ids) = seed(&db, 3, 2, &["correct", "polite"]).await;
        let view = db.experiment(x).await.unwrap();
        assert_eq!(view.status, ExperimentStatus::Stopped);
        assert_eq!(
            (view.repetitions, view.epoch, view.claimed_by),
            (2, 0, None)
        );
        assert_eq!(view.progress.runs_expected, 6);
        assert_eq!(view.progress.annotations_expected, 0);

        let claim = match db.start(x, &ReplicaId::new("replica-a")).await.unwrap() {
            Transition::Done(c) => c,
            other => panic!("{other:?}"),
        };
        let plan = db.load_plan(x).await.unwrap();
        let (correct, polite) = (plan.evaluators[0].id, plan.evaluators[1].id);
        let mut run_ids = Vec::new();
        for (example, rep, ok) in [(ids[0], 0, true), (ids[0], 1, true), (ids[1], 0, false)] {
            match db.record_run(&claim, run(example, rep, ok)).await.unwrap() {
                Write::Accepted(w) => run_ids.push(w.id),
                Write::Fenced => panic!("fenced"),
            }
        }
        let note = |run, evaluator, label: Option<&str>| AnnotationRecord {
            key: EvalKey { run, evaluator },
            label: label.map(str::to_owned),
            score: label.map(|_| 1.0),
            explanation: None,
            error: label.is_none().then(|| "unparsable".to_owned()),
            attempts: 1,
            latency_ms: 9,
            usage: None,
        };
        for record in [
            note(run_ids[0], correct, Some("CORRECT")),
            note(run_ids[0], polite, None),
            note(run_ids[1], correct, Some("INCORRECT")),
        ] {
            assert_eq!(
                db.record_annotation(&claim, record).await.unwrap(),
                Write::Accepted(())
            );
        }
        let view = db.experiment(x).await.unwrap();
        assert_eq!(view.status, ExperimentStatus::Running);
        assert_eq!(view.claimed_by.as_deref(), Some("replica-a"));
        let p = view.progress;
        assert_eq!(
            (p.runs_expected, p.runs_succeeded, p.runs_failed),
            (6, 2, 1)
        );
        assert_eq!(
            (
                p.annotations_expected,
                p.annotations_done,
                p.annotations_failed
            ),
            (4, 2, 1)
        );

        // Runs page by page, with their annotations by evaluator name.
        let first = db.runs_page(x, None, 2).await.unwrap();
        assert_eq!(first.items.len(), 2);
        let next = first.next_cursor.expect("a second page");
        let second = db.runs_page(x, Some(next), 2).await.unwrap();
        assert_eq!((second.items.len(), second.next_cursor), (1, None));
        let r0 = &first.items[0];
        assert_eq!((r0.example_id, r0.repetition), (ids[0], 0));
        assert_eq!(
            r0.output.as_deref(),
            Some(format!("answer {}/0", ids[0]).as_str())
        );
        assert_eq!(
            r0.usage,
            Some(Usage {
                prompt_tokens: 12,
                completion_tokens: 3
            })
        );
        assert!(r0.started_at <= r0.finished_at);
        let names: Vec<_> = r0
            .annotations
            .iter()
            .map(|a| a.evaluator.as_str())
            .collect();
        assert_eq!(names, ["correct", "polite"]);
        assert_eq!(r0.annotations[0].label.as_deref(), Some("CORRECT"));
        assert_eq!(r0.annotations[1].error.as_deref(), Some("unparsable"));
        let failed = &second.items[0];
        assert_eq!(
            (failed.output.as_deref(), failed.error.as_deref()),
            (None, Some("HTTP 400: bad request"))
        );
        assert!(failed.annotations.is_empty());

        let streamed: Vec<_> = db.runs_stream(x).map(|r| r.unwrap().id).collect().await;
        assert_eq!(streamed, run_ids);

        // Filters.
        let other_dataset = db.create_dataset("other", &examples(0, 1)).await.unwrap();
        let y = db
            .create_experiment(&experiment(other_dataset.id, 1, &[]))
            .await
            .unwrap();
        let all = db.experiments(&ExperimentFilter::default()).await.unwrap();
        assert_eq!(all.iter().map(|v| v.id).collect::<Vec<_>>(), [x, y]);
        let running = db
            .experiments(&ExperimentFilter {
                status: Some(ExperimentStatus::Running),
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(running.iter().map(|v| v.id).collect::<Vec<_>>(), [x]);
        let by_dataset = db
            .experiments(&ExperimentFilter {
                dataset_id: Some(other_dataset.id),
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(by_dataset.iter().map(|v| v.id).collect::<Vec<_>>(), [y]);

        // Delete cascades to results but keeps the dataset.
        assert!(db.delete_experiment(x).await.unwrap());
        assert_eq!(
            db.experiment(x).await,
            Err(StoreError::ExperimentNotFound(x))
        );
        assert_eq!(
            db.runs_page(x, None, 10).await,
            Err(StoreError::ExperimentNotFound(x))
        );
        let streamed: Vec<_> = db.runs_stream(x).collect().await;
        assert_eq!(streamed, [Err(StoreError::ExperimentNotFound(x))]);
        assert_eq!(db.dataset(view.dataset_id).await.unwrap().example_count, 3);
        db.close().await;
    })
    .await;
}

async fn experiments_are_validated_and_evaluators_attached(kind: DatabaseKind) {
    with_temp_db(kind, async |temp| {
        let db = connect(temp.url()).await;
        let dataset = db.create_dataset("d", &examples(0, 1)).await.unwrap();
        let missing = DatasetId(uuid::Uuid::now_v7());
        assert_eq!(
            db.create_experiment(&experiment(missing, 1, &[])).await,
            Err(StoreError::DatasetNotFound(missing))
        );
        let err = db
            .create_experiment(&experiment(dataset.id, 0, &[]))
            .await
            .unwrap_err();
        assert!(
            matches!(err, StoreError::Invalid { ref field, .. } if field == "repetitions"),
            "{err}"
        );
        let err = db
            .create_experiment(&experiment(dataset.id, 1, &["same", "same"]))
            .await
            .unwrap_err();
        assert!(
            matches!(err, StoreError::Invalid { ref field, .. } if field == "evaluators[1].name"),
            "{err}"
        );
        assert!(
            db.experiments(&ExperimentFilter::default())
                .await
                .unwrap()
                .is_empty(),
            "nothing half-created"
        );

        let x = db
            .create_experiment(&experiment(dataset.id, 1, &["first"]))
            .await
            .unwrap();
        let attached = db.attach_evaluator(x, &evaluator("second")).await.unwrap();
        assert_eq!(attached.name, "second");
        assert_eq!(attached.labels, ["CORRECT", "INCORRECT"]);
        let err = db
            .attach_evaluator(x, &evaluator("first"))
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::Conflict(_)), "{err}");
        assert!(err.to_string().contains("first"));
        let plan = db.load_plan(x).await.unwrap();
        assert_eq!(plan.evaluators.len(), 2);
        assert_eq!(plan.evaluators[1], attached);
        assert_eq!(plan.task, common::call());
        let nobody = ExperimentId(uuid::Uuid::now_v7());
        assert_eq!(
            db.attach_evaluator(nobody, &evaluator("x")).await,
            Err(StoreError::ExperimentNotFound(nobody))
        );
        db.close().await;
    })
    .await;
}

async fn logs_are_listed_newest_first_in_pages(kind: DatabaseKind) {
    with_temp_db(kind, async |temp| {
        let db = connect(temp.url()).await;
        let (x, _) = seed(&db, 1, 1, &[]).await;
        for i in 0..5 {
            db.log(x, LogLevel::Warn, format!("event {i}"))
                .await
                .unwrap();
        }
        let page = db.logs(x, None, 3).await.unwrap();
        let messages: Vec<_> = page.iter().map(|e| e.message.as_str()).collect();
        assert_eq!(messages, ["event 4", "event 3", "event 2"]);
        assert!(page.iter().all(|e| e.level == LogLevel::Warn));
        let rest = db.logs(x, Some(page[2].id), 3).await.unwrap();
        let messages: Vec<_> = rest.iter().map(|e| e.message.as_str()).collect();
        assert_eq!(messages, ["event 1", "event 0"]);
        let nobody = ExperimentId(uuid::Uuid::now_v7());
        assert_eq!(
            db.logs(nobody, None, 3).await,
            Err(StoreError::ExperimentNotFound(nobody))
        );
        db.close().await;
    })
    .await;
}

async fn advisor_state_is_saved_and_reloaded(kind: DatabaseKind) {
    with_temp_db(kind, async |temp| {
        let db = connect(temp.url()).await;
        let a = RateKey::new("openai", "gpt-4o-mini");
        let b = RateKey::new("anthropic", "account");
        db.save_rate_state(&b, &json!({"rate": 1.5})).await.unwrap();
        db.save_rate_state(&a, &json!({"rate": 8.0})).await.unwrap();
        db.save_rate_state(&a, &json!({"rate": 4.0, "ceiling": 10}))
            .await
            .unwrap();
        db.close().await;
        let db = connect(temp.url()).await;
        assert_eq!(
            db.load_rate_state().await.unwrap(),
            [
                (b, json!({"rate": 1.5})),
                (a, json!({"rate": 4.0, "ceiling": 10}))
            ]
        );
        db.ready().await.unwrap();
        db.close().await;
    })
    .await;
}

/// Regression (found by `cargo xtask chaos`): PostgreSQL `text` cannot hold
/// a NUL character, so a provider reply, error or log message containing one
/// failed to be written — and was written again on every resume. Provider
/// text is stored with NUL replaced by U+FFFD on both databases.
async fn provider_text_with_nul_characters_is_stored(kind: DatabaseKind) {
    with_temp_db(kind, async |temp| {
        let db = connect(temp.url()).await;
        let (x, ids) = seed(&db, 2, 1, &["judge"]).await;
        let claim = match db.start(x, &ReplicaId::new("replica-a")).await.unwrap() {
            Transition::Done(c) => c,
            other => panic!("{other:?}"),
        };
        let plan = db.load_plan(x).await.unwrap();
        let mut ok = run(ids[0], 0, true);
        ok.output = Some("an\0swer".into());
        let Write::Accepted(w) = db.record_run(&claim, ok).await.unwrap() else {
            panic!("fenced")
        };
        let mut failed = run(ids[1], 0, false);
        failed.error = Some("HTTP 500: \0\0 broken".into());
        assert!(matches!(
            db.record_run(&claim, failed).await.unwrap(),
            Write::Accepted(_)
        ));
        let note = AnnotationRecord {
            key: EvalKey {
                run: w.id,
                evaluator: plan.evaluators[0].id,
            },
            label: Some("CORRECT".into()),
            score: None,
            explanation: Some("because\0".into()),
            error: None,
            attempts: 1,
            latency_ms: 1,
            usage: None,
        };
        assert_eq!(
            db.record_annotation(&claim, note).await.unwrap(),
            Write::Accepted(())
        );
        db.log(x, LogLevel::Error, "provider said \0".into())
            .await
            .unwrap();
        let end = runnel_core::Finish::Error("last error: \0".into());
        assert!(Store::finish(&db, &claim, &end).await.unwrap());

        let page = db.runs_page(x, None, 10).await.unwrap();
        assert_eq!(page.items[0].output.as_deref(), Some("an\u{fffd}swer"));
        assert_eq!(
            page.items[0].annotations[0].explanation.as_deref(),
            Some("because\u{fffd}")
        );
        assert_eq!(
            page.items[1].error.as_deref(),
            Some("HTTP 500: \u{fffd}\u{fffd} broken")
        );
        let logs = db.logs(x, None, 10).await.unwrap();
        assert_eq!(logs[0].message, "provider said \u{fffd}");
        let view = db.experiment(x).await.unwrap();
        assert_eq!(view.last_error.as_deref(), Some("last error: \u{fffd}"));
        db.close().await;
    })
    .await;
}

/// Small statement sizes and page limits from `[database]` take effect:
/// an import split into many statements keeps every example in order, pages
/// are clamped to `max_page`, the work scan crosses recorded runs in small
/// steps, and `runs.jsonl`'s stream reads every run across small pages.
async fn statement_sizes_and_page_limits_come_from_the_config(kind: DatabaseKind) {
    with_temp_db(kind, async |temp| {
        let config = StoreConfig {
            examples_per_statement: 3,
            max_page: 2,
            export_page: 2,
            scan_chunk_min: 1,
            scan_chunk_max: 2,
            ..StoreConfig::for_url(temp.url())
        };
        let db = Db::connect(&config).await.unwrap();
        let (x, ids) = seed(&db, 7, 1, &[]).await;
        let dataset = db.experiment(x).await.unwrap().dataset_id;
        let inputs: Vec<_> = {
            let mut all = Vec::new();
            let mut after = None;
            loop {
                let page = db.examples_page(dataset, after, 100).await.unwrap();
                assert!(page.len() <= 2, "a page of {} above max_page", page.len());
                let Some(last) = page.last() else { break all };
                after = Some(last.0);
                all.extend(page.into_iter().map(|(_, e)| e.input));
            }
        };
        let expected: Vec<_> = (0..7).map(|n| json!({"n": n})).collect();
        assert_eq!(inputs, expected);

        let claim = match db.start(x, &ReplicaId::new("replica-a")).await.unwrap() {
            Transition::Done(c) => c,
            other => panic!("{other:?}"),
        };
        for &example in &ids[..5] {
            assert!(matches!(
                db.record_run(&claim, run(example, 0, true)).await.unwrap(),
                Write::Accepted(_)
            ));
        }
        let work = db.task_page(&claim, None, 10).await.unwrap();
        let left: Vec<_> = work.iter().map(|w| w.key.example).collect();
        assert_eq!(left, ids[5..]);
        let streamed: Vec<_> = db.runs_stream(x).map(|r| r.unwrap().id).collect().await;
        assert_eq!(streamed.len(), 5);
        assert_eq!(db.runs_page(x, None, 100).await.unwrap().items.len(), 2);
        for i in 0..3 {
            db.log(x, LogLevel::Info, format!("event {i}"))
                .await
                .unwrap();
        }
        assert_eq!(db.logs(x, None, 100).await.unwrap().len(), 2);
        db.close().await;
    })
    .await;
}

on_both_databases!(
    statement_sizes_and_page_limits_come_from_the_config,
    datasets_are_imported_whole_and_counted,
    experiments_report_progress_from_their_results,
    experiments_are_validated_and_evaluators_attached,
    logs_are_listed_newest_first_in_pages,
    advisor_state_is_saved_and_reloaded,
    provider_text_with_nul_characters_is_stored,
);

#[tokio::test]
async fn a_sqlite_replica_keeps_its_identity_beside_the_file() {
    with_temp_db(DatabaseKind::Sqlite, async |temp| {
        let db = connect(temp.url()).await;
        let file = db.sqlite_file().unwrap().to_owned();
        let id = db.replica_id(None).unwrap();
        assert_eq!(
            db.replica_id(Some("  ")).unwrap(),
            id,
            "blank means not configured"
        );
        assert_eq!(
            db.replica_id(Some("node-7")).unwrap(),
            ReplicaId::new("node-7")
        );
        db.close().await;
        let db = connect(temp.url()).await;
        assert_eq!(db.replica_id(None).unwrap(), id, "kept across restarts");
        assert!(runnel_store::replica_id_file(&file).exists());
        db.close().await;
    })
    .await;
}

#[tokio::test]
async fn postgres_replicas_get_a_random_identity_unless_configured() {
    with_temp_db(DatabaseKind::Postgres, async |temp| {
        let db = connect(temp.url()).await;
        assert_ne!(db.replica_id(None).unwrap(), db.replica_id(None).unwrap());
        assert_eq!(
            db.replica_id(Some("node-1")).unwrap(),
            ReplicaId::new("node-1")
        );
        assert!(db.sqlite_file().is_none());
        db.close().await;
    })
    .await;
}

#[tokio::test]
async fn an_in_memory_database_works_for_quick_experiments() {
    let db = connect("sqlite::memory:").await;
    let (x, ids) = seed(&db, 2, 1, &[]).await;
    let claim = match db.start(x, &ReplicaId::new("r")).await.unwrap() {
        Transition::Done(c) => c,
        other => panic!("{other:?}"),
    };
    assert!(matches!(
        db.record_run(&claim, run(ids[0], 0, true)).await.unwrap(),
        Write::Accepted(_)
    ));
    assert_eq!(db.task_page(&claim, None, 10).await.unwrap().len(), 1);
    assert!(
        db.replica_id(None)
            .unwrap()
            .as_str()
            .starts_with("replica-")
    );
    db.close().await;
}

/// A second connection to the SQLite file at `url` holding its write lock
/// (`BEGIN EXCLUSIVE`) until it runs `ROLLBACK`.
async fn lock_exclusively(url: &str) -> sqlx::SqliteConnection {
    use sqlx::Connection;
    let mut other = sqlx::SqliteConnection::connect(url).await.unwrap();
    sqlx::query("BEGIN EXCLUSIVE")
        .execute(&mut other)
        .await
        .unwrap();
    other
}

/// Regression (found by `cargo xtask chaos`): with another process holding
/// the SQLite write lock, reads still work in WAL mode, so readiness said
/// ready while every result write waited and failed.
#[tokio::test]
async fn a_sqlite_file_locked_by_another_writer_is_not_ready() {
    with_temp_db(DatabaseKind::Sqlite, async |temp| {
        let config = StoreConfig {
            busy_timeout: Duration::from_millis(200),
            ..StoreConfig::for_url(temp.url())
        };
        let db = Db::connect(&config).await.unwrap();
        db.ready().await.unwrap();
        let mut other = lock_exclusively(temp.url()).await;
        let err = db.ready().await.unwrap_err();
        assert!(err.is_retryable(), "{err}");
        // Reads still work meanwhile.
        assert!(db.datasets().await.unwrap().is_empty());
        sqlx::query("ROLLBACK").execute(&mut other).await.unwrap();
        db.ready().await.unwrap();
        db.close().await;
    })
    .await;
}

/// Readiness answers within `ready_timeout` even when the database would
/// make a statement wait far longer: here SQLite's busy timeout is an hour,
/// so an answer at all means the readiness bound cut the wait short.
#[tokio::test]
async fn readiness_answers_within_ready_timeout_when_the_database_hangs() {
    with_temp_db(DatabaseKind::Sqlite, async |temp| {
        let config = StoreConfig {
            busy_timeout: Duration::from_secs(3600),
            ready_timeout: Duration::from_millis(100),
            ..StoreConfig::for_url(temp.url())
        };
        let db = Db::connect(&config).await.unwrap();
        db.ready().await.unwrap();
        let mut other = lock_exclusively(temp.url()).await;
        let err = tokio::time::timeout(Duration::from_secs(60), db.ready())
            .await
            .expect("readiness waited a minute: ready_timeout did not bound it")
            .unwrap_err();
        assert!(
            matches!(&err, StoreError::Unavailable(m) if m.contains("ready_timeout")),
            "{err}"
        );
        sqlx::query("ROLLBACK").execute(&mut other).await.unwrap();
        db.ready().await.unwrap();
        db.close().await;
    })
    .await;
}

#[tokio::test]
async fn unusable_urls_are_clear_errors() {
    let err = Db::connect(&StoreConfig::for_url("mysql://u:secret@h/db"))
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::Config { key: "url", .. }),
        "{err}"
    );
    assert!(!err.to_string().contains("secret"));
    let unreachable = StoreConfig {
        acquire_timeout: Duration::from_secs(2),
        ..StoreConfig::for_url("postgres://runnel:secret@127.0.0.1:1/none")
    };
    let err = Db::connect(&unreachable).await.unwrap_err();
    assert!(err.is_retryable(), "{err}");
    assert!(!err.to_string().contains("secret"), "{err}");
}
