//! The PostgreSQL dialect. `now()` is the only clock; claims lock experiment
//! rows in id order (`ORDER BY id FOR UPDATE`) and fenced writes take a share
//! lock on their experiment row, so a write and a change of ownership are
//! serialised and never deadlock. Stop, resume and delete announce themselves
//! with `pg_notify` in the same statement.

use sqlx::Postgres;
use sqlx::migrate::Migrator;

use crate::backend::{
    Backend, MultiRow, Sql, annotation_rows, annotation_upsert, budget_insert, budget_merge,
    budget_rows, dataset_view, experiment_view, fence, result_view, run_rows, run_upsert,
};

static MIGRATOR: Migrator = sqlx::migrate!("../../migrations/postgres");

/// The channel on which stop/resume/delete are announced.
pub(crate) const CHANNEL: &str = "runnel_experiments";

/// Wraps a data-modifying statement returning `id` and `cols` so that every
/// row it touches sends a notification `<id>:<what>` in the same statement.
macro_rules! notify {
    ($statement:expr, $cols:literal, $what:literal) => {
        concat!(
            "WITH changed AS (",
            $statement,
            ")
             SELECT ",
            $cols,
            " FROM changed
             CROSS JOIN LATERAL pg_notify('runnel_experiments', changed.id::text || ':",
            $what,
            "') AS n"
        )
    };
}

/// Claims the experiments selected by `$which` (a WHERE condition) for
/// `$replica` with a new epoch, locking them in id order; `$lock` is the
/// locking clause (`FOR UPDATE` or `FOR UPDATE SKIP LOCKED`).
macro_rules! claim_many {
    ($which:literal, $owner:literal, $lock:literal) => {
        concat!(
            "UPDATE experiments x
             SET claimed_by = ",
            $owner,
            ", claimed_at = now(), epoch = x.epoch + 1, updated_at = now()
             FROM (SELECT id FROM experiments WHERE ",
            $which,
            " ORDER BY id ",
            $lock,
            ") chosen
             WHERE x.id = chosen.id
             RETURNING x.id, x.epoch"
        )
    };
}

static SQL: Sql = Sql {
    reclaim_own: claim_many!("status = 'RUNNING' AND claimed_by = $1", "$1", "FOR UPDATE"),
    // SKIP LOCKED: of two replicas scanning at once, the second skips the
    // rows the first is claiming; once the first commits, the re-checked
    // condition (fresh claimed_at) excludes them. One winner per experiment.
    take_over_orphans: claim_many!(
        "status = 'RUNNING'
           AND (claimed_at IS NULL OR claimed_at < now() - $2 * interval '1 millisecond')",
        "$1",
        "FOR UPDATE SKIP LOCKED"
    ),
    heartbeat: "UPDATE experiments SET claimed_at = now()
                WHERE id = $1 AND claimed_by = $2 AND epoch = $3
                RETURNING id",
    release: "UPDATE experiments SET claimed_at = 'epoch'::timestamptz
              WHERE id = $1 AND claimed_by = $2 AND epoch = $3",
    finish: "UPDATE experiments
             SET status = $4, last_error = $5, claimed_by = NULL, claimed_at = NULL, updated_at = now()
             WHERE id = $1 AND claimed_by = $2 AND epoch = $3
             RETURNING id",
    claim: notify!(
        "UPDATE experiments
         SET status = 'RUNNING', claimed_by = $2, claimed_at = now(), epoch = epoch + 1,
             last_error = NULL, updated_at = now(),
             cooldown_until = CASE WHEN $3::bigint IS NULL THEN cooldown_until
                                   ELSE now() + $3 * interval '1 millisecond' END
         WHERE id = $1 AND claimed_by IS NULL
           AND (cooldown_until IS NULL OR cooldown_until <= now())
         RETURNING id, epoch",
        "changed.epoch",
        "resumed"
    ),
    stop: notify!(
        "UPDATE experiments
         SET status = 'STOPPED', claimed_by = NULL, claimed_at = NULL,
             cooldown_until = now() + $2 * interval '1 millisecond', updated_at = now()
         WHERE id = $1 AND status = 'RUNNING'
           AND (cooldown_until IS NULL OR cooldown_until <= now())
         RETURNING id",
        "changed.id",
        "stopped"
    ),
    diagnose: "SELECT status, claimed_by,
                      (EXTRACT(EPOCH FROM (cooldown_until - now())) * 1000)::float8
               FROM experiments WHERE id = $1",
    delete_experiment: notify!(
        "DELETE FROM experiments WHERE id = $1 RETURNING id",
        "changed.id",
        "deleted"
    ),

    experiment_plan: "SELECT dataset_id, repetitions, max_concurrency, task
                      FROM experiments WHERE id = $1",
    evaluators_of: "SELECT id, name, spec FROM evaluators WHERE experiment_id = $1 ORDER BY id",
    example_ids: "SELECT id, id FROM dataset_examples
                  WHERE dataset_id = $1 AND id >= $2 ORDER BY id LIMIT $3",
    runs_done: "SELECT example_id, repetition FROM runs
                WHERE experiment_id = $1 AND example_id >= $2 AND example_id <= $3
                  AND (succeeded OR epoch = $4)",
    succeeded_runs: "SELECT id, example_id FROM runs
                     WHERE experiment_id = $1 AND succeeded AND id >= $2
                     ORDER BY id LIMIT $3",
    evaluator_ids: "SELECT id FROM evaluators WHERE experiment_id = $1 ORDER BY id",
    annotations_done: "SELECT run_id, evaluator_id FROM annotations
                       WHERE experiment_id = $1 AND run_id >= $2 AND run_id <= $3
                         AND (succeeded OR epoch = $4)",
    examples_by_id: "SELECT id, input, expected, metadata FROM dataset_examples WHERE id IN (",
    outputs_by_id: "SELECT id, output FROM runs WHERE id IN (",
    after_import: Some("ANALYZE dataset_examples"),

    // FOR SHARE: a write waits for a concurrent change of ownership to commit
    // and is then re-checked against the new row, so no write from an old
    // epoch can commit after a takeover or resume did. Rows are written in
    // identity order, the order every group uses, so two batch writers never
    // wait on each other in a cycle.
    record_runs: MultiRow {
        head: run_rows!(),
        casts: &[
            "::uuid", "::bigint", "::bigint", "::boolean", "::text", "::text", "::bigint",
            "::bigint", "::bigint", "::bigint", "::bigint", "::bigint", "::text",
        ],
        tail: concat!(
            ") ",
            run_upsert!(insert),
            run_upsert!(select),
            "now() - v.total_latency_ms * interval '1 millisecond', now()
             FROM v JOIN experiments x ON x.id = v.experiment_id
             WHERE ", fence!("v.experiment_id", "v.epoch", "v.replica"), "
             ORDER BY v.experiment_id, v.example_id, v.repetition
             FOR SHARE OF x",
            run_upsert!(update),
            "WHERE NOT runs.succeeded
             RETURNING experiment_id, example_id, repetition, id"
        ),
    },
    run_diagnosis: concat!(
        "SELECT EXISTS (SELECT 1 FROM experiments x WHERE ", fence!("$1", "$4", "$5"), "),
                (SELECT id FROM runs
                 WHERE experiment_id = $1 AND example_id = $2 AND repetition = $3 AND succeeded)"
    ),
    record_annotations: MultiRow {
        head: annotation_rows!(),
        casts: &[
            "::uuid", "::bigint", "::bigint", "::boolean", "::text", "::float8", "::text",
            "::text", "::bigint", "::bigint", "::bigint", "::bigint", "::bigint", "::text",
        ],
        tail: concat!(
            ") ",
            annotation_upsert!(insert),
            annotation_upsert!(select),
            "now()
             FROM v JOIN experiments x ON x.id = v.experiment_id
             WHERE ", fence!("v.experiment_id", "v.epoch", "v.replica"), "
             ORDER BY v.run_id, v.evaluator_id
             FOR SHARE OF x",
            annotation_upsert!(update),
            "WHERE NOT annotations.succeeded
             RETURNING run_id, evaluator_id"
        ),
    },
    annotation_diagnosis: concat!(
        "SELECT EXISTS (SELECT 1 FROM experiments x WHERE ", fence!("$1", "$4", "$5"), "),
                (SELECT id FROM annotations
                 WHERE run_id = $2 AND evaluator_id = $3 AND succeeded)"
    ),
    log: "INSERT INTO experiment_logs (experiment_id, level, message)
          SELECT id, $2, $3 FROM experiments WHERE id = $1
          RETURNING id",

    examples_page: "SELECT id, input, expected, metadata FROM dataset_examples
                    WHERE dataset_id = $1 AND id > $2 ORDER BY id LIMIT $3",
    dataset_exists: "SELECT 1 FROM datasets WHERE id = $1",
    insert_dataset: "INSERT INTO datasets (id, name) VALUES ($1, $2)",
    insert_examples: MultiRow {
        head: "INSERT INTO dataset_examples (dataset_id, input, expected, metadata) VALUES ",
        casts: &[""; 4],
        tail: "",
    },
    dataset: concat!(dataset_view!(), "WHERE d.id = $1"),
    datasets: concat!(dataset_view!(), "ORDER BY d.created_at, d.id"),
    insert_experiment: "INSERT INTO experiments (id, name, dataset_id, repetitions, max_concurrency, task)
                        VALUES ($1, $2, $3, $4, $5, $6)",
    insert_evaluator: "INSERT INTO evaluators (experiment_id, name, spec) VALUES ($1, $2, $3)
                       RETURNING id",
    experiment: concat!(experiment_view!("succeeded", "NOT succeeded"), "WHERE x.id = $1"),
    experiments: concat!(
        experiment_view!("succeeded", "NOT succeeded"),
        "WHERE ($1::uuid IS NULL OR x.dataset_id = $1) AND ($2::text IS NULL OR x.status = $2)
         ORDER BY x.created_at, x.id"
    ),
    experiment_exists: "SELECT 1 FROM experiments WHERE id = $1",
    runs_page: concat!(
        result_view!(runs),
        "WHERE experiment_id = $1 AND id > $2
                ORDER BY id LIMIT $3"
    ),
    annotations_of_runs: concat!(
        result_view!(annotations),
        "WHERE a.experiment_id = $1 AND a.run_id >= $2 AND a.run_id <= $3
                          ORDER BY a.run_id, a.evaluator_id"
    ),
    logs: "SELECT id, level, message, created_at FROM experiment_logs
           WHERE experiment_id = $1 AND id < $2
           ORDER BY id DESC LIMIT $3",
    save_rate_state: "INSERT INTO rate_limit_state (key, state, updated_at) VALUES ($1, $2, now())
                      ON CONFLICT (key) DO UPDATE SET state = excluded.state, updated_at = excluded.updated_at",
    load_rate_state: "SELECT key, state FROM rate_limit_state ORDER BY key",
    budget_sync: &[MultiRow {
        head: budget_rows!(),
        casts: &[
            "::text", "::text", "::bigint", "::bigint", "::bigint", "::boolean", "::float8",
            "::float8", "::float8", "::text", "::float8", "::bigint",
        ],
        tail: concat!(
            "),
             gc AS (DELETE FROM rate_budget_members g
                    USING (SELECT DISTINCT replica, lease_ms FROM v) l
                    WHERE g.replica <> l.replica
                      AND g.seen_at < now() - l.lease_ms * 10 * interval '1 millisecond'),
             m AS (INSERT INTO rate_budget_members (key, replica, demand, seen_at)
                   SELECT key, replica, demand, now() FROM v
                   ON CONFLICT (key, replica)
                   DO UPDATE SET demand = excluded.demand, seen_at = excluded.seen_at),
             u AS (UPDATE rate_budgets AS b SET ",
            budget_merge!(),
            "paused_until = GREATEST(b.paused_until, CASE WHEN v.paused_ms > 0
                                         THEN now() + v.paused_ms * interval '1 millisecond' END),
                   updated_at = now()
                   FROM v WHERE b.key = v.key
                   RETURNING b.key, b.version, b.rate_rps, b.good_rps, b.last_429_rps,
                             b.learned_from, b.token_rate_tps, b.paused_until),
             i AS (",
            budget_insert!(),
            "SELECT v.key, 1, v.rate_rps, v.good_rps, v.last_429_rps, v.learned_from,
                          v.token_rate_tps,
                          CASE WHEN v.paused_ms > 0 THEN now() + v.paused_ms * interval '1 millisecond' END
                   FROM v
                   WHERE v.rate_rps IS NOT NULL
                     AND NOT EXISTS (SELECT 1 FROM rate_budgets e WHERE e.key = v.key)
                   ON CONFLICT (key) DO NOTHING
                   RETURNING key, version, rate_rps, good_rps, last_429_rps, learned_from,
                             token_rate_tps, paused_until),
             r AS (SELECT * FROM u UNION ALL SELECT * FROM i)
             SELECT v.key, COALESCE(r.version, 0), r.rate_rps, r.good_rps, r.last_429_rps,
                    r.learned_from, r.token_rate_tps,
                    COALESCE(CAST(GREATEST(0, EXTRACT(EPOCH FROM (r.paused_until - now())) * 1000)
                                  AS bigint), 0),
                    v.demand + COALESCE((SELECT SUM(o.demand) FROM rate_budget_members o
                                WHERE o.key = v.key AND o.replica <> v.replica
                                  AND o.seen_at > now() - v.lease_ms * interval '1 millisecond'),
                               0)::bigint,
                    1 + (SELECT COUNT(*) FROM rate_budget_members o
                         WHERE o.key = v.key AND o.replica <> v.replica
                           AND o.seen_at > now() - v.lease_ms * interval '1 millisecond')
             FROM v LEFT JOIN r ON r.key = v.key"
        ),
    }],
    budget_leave: "DELETE FROM rate_budget_members WHERE replica = $1",
    migrations_table_exists: "SELECT 1 WHERE to_regclass('_sqlx_migrations') IS NOT NULL",
    migration_state: "SELECT MAX(version) FILTER (WHERE success), COUNT(*) FILTER (WHERE NOT success) > 0
                      FROM _sqlx_migrations",
};

impl Backend for Postgres {
    const BEGIN_WRITE: &'static str = "BEGIN";

    fn sql() -> &'static Sql {
        &SQL
    }

    fn migrator() -> &'static Migrator {
        &MIGRATOR
    }

    fn placeholder(n: usize) -> String {
        format!("${n}")
    }

    fn is_transient(code: &str) -> bool {
        // Class 08: connection exceptions; 40001 serialization failure;
        // 40P01 deadlock; class 53: insufficient resources; 55P03 lock not
        // available; 57P01–57P05: shutdown, crash, cannot connect now, idle
        // session timeout. Class 28 (credentials rejected) and 3D000 (no such
        // database) come from the server refusing a new connection: the
        // database is unreachable (being restored, credentials rotating), not
        // a statement that failed.
        code.starts_with("08")
            || code.starts_with("53")
            || code.starts_with("28")
            || matches!(code, "40001" | "40P01" | "55P03" | "3D000")
            || code.starts_with("57P")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_and_concurrency_failures_are_transient() {
        for code in [
            "08006", "40001", "40P01", "57P01", "53300", "28P01", "3D000",
        ] {
            assert!(Postgres::is_transient(code), "{code}");
        }
        for code in ["23505", "42601", "22P02"] {
            assert!(!Postgres::is_transient(code), "{code}");
        }
        assert_eq!(Postgres::placeholder(12), "$12");
        assert!(SQL.stop.contains(CHANNEL));
    }
}
