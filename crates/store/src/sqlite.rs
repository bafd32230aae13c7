//! The SQLite dialect. Timestamps are UTC text written by the database
//! (`strftime('%Y-%m-%dT%H:%M:%fZ', 'now')`, millisecond precision), so they
//! compare correctly as text; durations are bound in milliseconds and added
//! through `julianday`.

use sqlx::Sqlite;
use sqlx::migrate::Migrator;

use crate::backend::{
    Backend, MultiRow, Sql, annotation_rows, annotation_upsert, budget_insert, budget_merge,
    budget_rows, dataset_view, experiment_view, fence, result_view, run_rows, run_upsert,
};

static MIGRATOR: Migrator = sqlx::migrate!("../../migrations/sqlite");

/// The database clock as stored text.
macro_rules! now {
    () => {
        "strftime('%Y-%m-%dT%H:%M:%fZ', 'now')"
    };
}

/// The database clock plus the milliseconds bound at `$n`, as stored text.
macro_rules! now_plus_ms {
    ($n:literal) => {
        concat!(
            "strftime('%Y-%m-%dT%H:%M:%fZ', julianday('now') + ",
            $n,
            " / 86400000.0)"
        )
    };
}

static SQL: Sql = Sql {
    reclaim_own: concat!(
        "UPDATE experiments SET epoch = epoch + 1, claimed_at = ", now!(), ", updated_at = ", now!(), "
         WHERE status = 'RUNNING' AND claimed_by = ?1
         RETURNING id, epoch"
    ),
    take_over_orphans: concat!(
        "UPDATE experiments
         SET claimed_by = ?1, claimed_at = ", now!(), ", epoch = epoch + 1, updated_at = ", now!(), "
         WHERE status = 'RUNNING'
           AND (claimed_at IS NULL
                OR claimed_at < strftime('%Y-%m-%dT%H:%M:%fZ', julianday('now') - ?2 / 86400000.0))
         RETURNING id, epoch"
    ),
    heartbeat: concat!(
        "UPDATE experiments SET claimed_at = ", now!(), "
         WHERE id = ?1 AND claimed_by = ?2 AND epoch = ?3
         RETURNING id"
    ),
    release: "UPDATE experiments SET claimed_at = '1970-01-01T00:00:00.000Z'
              WHERE id = ?1 AND claimed_by = ?2 AND epoch = ?3",
    finish: concat!(
        "UPDATE experiments
         SET status = ?4, last_error = ?5, claimed_by = NULL, claimed_at = NULL, updated_at = ", now!(), "
         WHERE id = ?1 AND claimed_by = ?2 AND epoch = ?3
         RETURNING id"
    ),
    claim: concat!(
        "UPDATE experiments
         SET status = 'RUNNING', claimed_by = ?2, claimed_at = ", now!(), ", epoch = epoch + 1,
             last_error = NULL, updated_at = ", now!(), ",
             cooldown_until = CASE WHEN ?3 IS NULL THEN cooldown_until ELSE ", now_plus_ms!("?3"), " END
         WHERE id = ?1 AND claimed_by IS NULL
           AND (cooldown_until IS NULL OR cooldown_until <= ", now!(), ")
         RETURNING epoch"
    ),
    stop: concat!(
        "UPDATE experiments
         SET status = 'STOPPED', claimed_by = NULL, claimed_at = NULL,
             cooldown_until = ", now_plus_ms!("?2"), ", updated_at = ", now!(), "
         WHERE id = ?1 AND status = 'RUNNING'
           AND (cooldown_until IS NULL OR cooldown_until <= ", now!(), ")
         RETURNING id"
    ),
    diagnose: "SELECT status, claimed_by,
                      (julianday(cooldown_until) - julianday('now')) * 86400000.0
               FROM experiments WHERE id = ?1",
    delete_experiment: "DELETE FROM experiments WHERE id = ?1 RETURNING id",

    experiment_plan: "SELECT dataset_id, repetitions, max_concurrency, task
                      FROM experiments WHERE id = ?1",
    evaluators_of: "SELECT id, name, spec FROM evaluators WHERE experiment_id = ?1 ORDER BY id",
    example_ids: "SELECT id, id FROM dataset_examples
                  WHERE dataset_id = ?1 AND id >= ?2 ORDER BY id LIMIT ?3",
    runs_done: "SELECT example_id, repetition FROM runs
                WHERE experiment_id = ?1 AND example_id >= ?2 AND example_id <= ?3
                  AND (succeeded = 1 OR epoch = ?4)",
    succeeded_runs: "SELECT id, example_id FROM runs
                     WHERE experiment_id = ?1 AND succeeded = 1 AND id >= ?2
                     ORDER BY id LIMIT ?3",
    evaluator_ids: "SELECT id FROM evaluators WHERE experiment_id = ?1 ORDER BY id",
    annotations_done: "SELECT run_id, evaluator_id FROM annotations
                       WHERE experiment_id = ?1 AND run_id >= ?2 AND run_id <= ?3
                         AND (succeeded = 1 OR epoch = ?4)",
    examples_by_id: "SELECT id, input, expected, metadata FROM dataset_examples WHERE id IN (",
    outputs_by_id: "SELECT id, output FROM runs WHERE id IN (",
    after_import: None,

    record_runs: MultiRow {
        head: run_rows!(),
        casts: &[""; 13],
        tail: concat!(
            ") ",
            run_upsert!(insert),
            run_upsert!(select),
            "strftime('%Y-%m-%dT%H:%M:%fZ', julianday('now') - v.total_latency_ms / 86400000.0),
                    ", now!(), "
             FROM v JOIN experiments x ON x.id = v.experiment_id
             WHERE ", fence!("v.experiment_id", "v.epoch", "v.replica"),
            run_upsert!(update),
            "WHERE runs.succeeded = 0
             RETURNING experiment_id, example_id, repetition, id"
        ),
    },
    run_diagnosis: concat!(
        "SELECT EXISTS (SELECT 1 FROM experiments x WHERE ", fence!("?1", "?4", "?5"), "),
                (SELECT id FROM runs
                 WHERE experiment_id = ?1 AND example_id = ?2 AND repetition = ?3 AND succeeded = 1)"
    ),
    record_annotations: MultiRow {
        head: annotation_rows!(),
        casts: &[""; 14],
        tail: concat!(
            ") ",
            annotation_upsert!(insert),
            annotation_upsert!(select),
            "", now!(), "
             FROM v JOIN experiments x ON x.id = v.experiment_id
             WHERE ", fence!("v.experiment_id", "v.epoch", "v.replica"),
            annotation_upsert!(update),
            "WHERE annotations.succeeded = 0
             RETURNING run_id, evaluator_id"
        ),
    },
    annotation_diagnosis: concat!(
        "SELECT EXISTS (SELECT 1 FROM experiments x WHERE ", fence!("?1", "?4", "?5"), "),
                (SELECT id FROM annotations
                 WHERE run_id = ?2 AND evaluator_id = ?3 AND succeeded = 1)"
    ),
    log: "INSERT INTO experiment_logs (experiment_id, level, message)
          SELECT id, ?2, ?3 FROM experiments WHERE id = ?1
          RETURNING id",

    examples_page: "SELECT id, input, expected, metadata FROM dataset_examples
                    WHERE dataset_id = ?1 AND id > ?2 ORDER BY id LIMIT ?3",
    dataset_exists: "SELECT 1 FROM datasets WHERE id = ?1",
    insert_dataset: "INSERT INTO datasets (id, name) VALUES (?1, ?2)",
    insert_examples: MultiRow {
        head: "INSERT INTO dataset_examples (dataset_id, input, expected, metadata) VALUES ",
        casts: &[""; 4],
        tail: "",
    },
    dataset: concat!(dataset_view!(), "WHERE d.id = ?1"),
    datasets: concat!(dataset_view!(), "ORDER BY d.created_at, d.id"),
    insert_experiment: "INSERT INTO experiments (id, name, dataset_id, repetitions, max_concurrency, task)
                        VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    insert_evaluator: "INSERT INTO evaluators (experiment_id, name, spec) VALUES (?1, ?2, ?3)
                       RETURNING id",
    experiment: concat!(experiment_view!("succeeded = 1", "succeeded = 0"), "WHERE x.id = ?1"),
    experiments: concat!(
        experiment_view!("succeeded = 1", "succeeded = 0"),
        "WHERE (?1 IS NULL OR x.dataset_id = ?1) AND (?2 IS NULL OR x.status = ?2)
         ORDER BY x.created_at, x.id"
    ),
    experiment_exists: "SELECT 1 FROM experiments WHERE id = ?1",
    runs_page: concat!(
        result_view!(runs),
        "WHERE experiment_id = ?1 AND id > ?2
                ORDER BY id LIMIT ?3"
    ),
    annotations_of_runs: concat!(
        result_view!(annotations),
        "WHERE a.experiment_id = ?1 AND a.run_id >= ?2 AND a.run_id <= ?3
                          ORDER BY a.run_id, a.evaluator_id"
    ),
    logs: "SELECT id, level, message, created_at FROM experiment_logs
           WHERE experiment_id = ?1 AND id < ?2
           ORDER BY id DESC LIMIT ?3",
    save_rate_state: concat!(
        "INSERT INTO rate_limit_state (key, state, updated_at) VALUES (?1, ?2, ", now!(), ")
         ON CONFLICT (key) DO UPDATE SET state = excluded.state, updated_at = excluded.updated_at"
    ),
    load_rate_state: "SELECT key, state FROM rate_limit_state ORDER BY key",
    budget_sync: &[
        MultiRow {
            head: budget_rows!(),
            casts: &[""; 12],
            tail: ") DELETE FROM rate_budget_members
                   WHERE replica <> (SELECT replica FROM v LIMIT 1)
                     AND seen_at < strftime('%Y-%m-%dT%H:%M:%fZ',
                                   julianday('now') - (SELECT lease_ms FROM v LIMIT 1) * 10 / 86400000.0)",
        },
        MultiRow {
            head: budget_rows!(),
            casts: &[""; 12],
            tail: concat!(
                ") INSERT INTO rate_budget_members (key, replica, demand, seen_at)
                   SELECT key, replica, demand, ", now!(), " FROM v WHERE true
                   ON CONFLICT (key, replica)
                   DO UPDATE SET demand = excluded.demand, seen_at = excluded.seen_at"
            ),
        },
        MultiRow {
            head: budget_rows!(),
            casts: &[""; 12],
            tail: concat!(
                ") UPDATE rate_budgets AS b SET ",
                budget_merge!(),
                "paused_until = CASE WHEN v.paused_ms > 0 AND (b.paused_until IS NULL
                       OR b.paused_until < strftime('%Y-%m-%dT%H:%M:%fZ', julianday('now') + v.paused_ms / 86400000.0))
                     THEN strftime('%Y-%m-%dT%H:%M:%fZ', julianday('now') + v.paused_ms / 86400000.0)
                     ELSE b.paused_until END,
                   updated_at = ", now!(), "
                 FROM v WHERE b.key = v.key"
            ),
        },
        MultiRow {
            head: budget_rows!(),
            casts: &[""; 12],
            tail: concat!(
                ") ",
                budget_insert!(),
                "SELECT key, 1, rate_rps, good_rps, last_429_rps, learned_from, token_rate_tps,
                        CASE WHEN paused_ms > 0
                             THEN strftime('%Y-%m-%dT%H:%M:%fZ', julianday('now') + paused_ms / 86400000.0) END
                 FROM v WHERE rate_rps IS NOT NULL
                 ON CONFLICT (key) DO NOTHING"
            ),
        },
        MultiRow {
            head: budget_rows!(),
            casts: &[""; 12],
            tail: ") SELECT v.key, COALESCE(r.version, 0), r.rate_rps, r.good_rps, r.last_429_rps,
                          r.learned_from, r.token_rate_tps,
                          COALESCE(MAX(0, CAST((julianday(r.paused_until) - julianday('now')) * 86400000
                                               AS INTEGER)), 0),
                          v.demand + (SELECT COALESCE(SUM(o.demand), 0) FROM rate_budget_members o
                                      WHERE o.key = v.key AND o.replica <> v.replica
                                        AND o.seen_at > strftime('%Y-%m-%dT%H:%M:%fZ',
                                              julianday('now') - v.lease_ms / 86400000.0)),
                          1 + (SELECT COUNT(*) FROM rate_budget_members o
                               WHERE o.key = v.key AND o.replica <> v.replica
                                 AND o.seen_at > strftime('%Y-%m-%dT%H:%M:%fZ',
                                       julianday('now') - v.lease_ms / 86400000.0))
                   FROM v LEFT JOIN rate_budgets r ON r.key = v.key",
        },
    ],
    budget_leave: "DELETE FROM rate_budget_members WHERE replica = ?1",
    migrations_table_exists: "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = '_sqlx_migrations'",
    migration_state: "SELECT MAX(CASE WHEN success THEN version END),
                             COALESCE(SUM(CASE WHEN success THEN 0 ELSE 1 END), 0) > 0
                      FROM _sqlx_migrations",
};

impl Backend for Sqlite {
    const BEGIN_WRITE: &'static str = "BEGIN IMMEDIATE";

    fn sql() -> &'static Sql {
        &SQL
    }

    fn migrator() -> &'static Migrator {
        &MIGRATOR
    }

    fn placeholder(n: usize) -> String {
        format!("?{n}")
    }

    fn is_transient(code: &str) -> bool {
        // Extended result codes carry the primary code in their low byte:
        // BUSY (5), LOCKED (6), IOERR (10), FULL (13), CANTOPEN (14).
        code.parse::<i64>()
            .is_ok_and(|c| matches!(c & 0xff, 5 | 6 | 10 | 13 | 14))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn busy_and_locked_are_transient_constraint_failures_are_not() {
        assert!(Sqlite::is_transient("5"));
        assert!(Sqlite::is_transient("517")); // SQLITE_BUSY_SNAPSHOT
        assert!(Sqlite::is_transient("6"));
        assert!(!Sqlite::is_transient("2067")); // SQLITE_CONSTRAINT_UNIQUE
        assert!(!Sqlite::is_transient("1"));
        assert!(!Sqlite::is_transient("garbage"));
        assert_eq!(Sqlite::placeholder(3), "?3");
    }
}
