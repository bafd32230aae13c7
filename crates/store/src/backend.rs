//! What differs between the databases: the SQL text, placeholders, how a
//! write transaction begins, which error codes are worth retrying, and the
//! embedded migrations. Everything else (the lifecycle rules, fencing
//! decisions, batching, result mapping) is written once, generic over
//! [`Backend`], in the `sql` module.

use sqlx::migrate::{Migrate, Migrator};

// SQL fragments that are the same text in every dialect. `concat!` only
// takes literals, hence macros.

/// The select list of a dataset view.
macro_rules! dataset_view {
    () => {
        "SELECT d.id, d.name, d.created_at,
                (SELECT COUNT(*) FROM dataset_examples e WHERE e.dataset_id = d.id)
         FROM datasets d "
    };
}
pub(crate) use dataset_view;

/// The select list of an experiment view, with its progress counts.
/// `$ok` and `$failed` test the `succeeded` column of a run or annotation,
/// in the dialect's spelling (SQLite stores and indexes it as 0/1).
macro_rules! experiment_view {
    ($ok:literal, $failed:literal) => {
        concat!(
            "SELECT x.id, x.name, x.dataset_id, x.status, x.last_error, x.claimed_by,
                    x.repetitions, x.max_concurrency, x.epoch, x.created_at, x.updated_at,
                    (SELECT COUNT(*) FROM dataset_examples e WHERE e.dataset_id = x.dataset_id),
                    (SELECT COUNT(*) FROM runs r WHERE r.experiment_id = x.id AND ",
            $ok,
            "),
                    (SELECT COUNT(*) FROM runs r WHERE r.experiment_id = x.id AND ",
            $failed,
            "),
                    (SELECT COUNT(*) FROM evaluators v WHERE v.experiment_id = x.id),
                    (SELECT COUNT(*) FROM annotations a WHERE a.experiment_id = x.id AND ",
            $ok,
            "),
                    (SELECT COUNT(*) FROM annotations a WHERE a.experiment_id = x.id AND ",
            $failed,
            ")
             FROM experiments x "
        )
    };
}
pub(crate) use experiment_view;

/// The columns a run upsert writes, what it selects from the rows `v` and
/// the experiment `x` (the timestamps follow, per dialect), and what a
/// replacing write sets.
macro_rules! run_upsert {
    (select) => {
        "SELECT v.experiment_id, v.example_id, v.repetition, v.succeeded, v.output, v.error,
                v.attempts, v.latency_ms, v.total_latency_ms, v.prompt_tokens,
                v.completion_tokens, x.epoch, "
    };
    (insert) => {
        "INSERT INTO runs (experiment_id, example_id, repetition, succeeded, output, error, attempts,
                           latency_ms, total_latency_ms, prompt_tokens, completion_tokens, epoch,
                           started_at, finished_at) "
    };
    (update) => {
        " ON CONFLICT (experiment_id, example_id, repetition) DO UPDATE SET
             succeeded = excluded.succeeded, output = excluded.output, error = excluded.error,
             attempts = excluded.attempts, latency_ms = excluded.latency_ms,
             total_latency_ms = excluded.total_latency_ms, prompt_tokens = excluded.prompt_tokens,
             completion_tokens = excluded.completion_tokens, epoch = excluded.epoch,
             started_at = excluded.started_at, finished_at = excluded.finished_at "
    };
}
pub(crate) use run_upsert;

/// The columns an annotation upsert writes, what it selects from the rows
/// `v` and the experiment `x` (the timestamp follows, per dialect), and what
/// a replacing write sets.
macro_rules! annotation_upsert {
    (select) => {
        "SELECT v.experiment_id, v.run_id, v.evaluator_id, v.succeeded, v.label, v.score,
                v.explanation, v.error, v.attempts, v.latency_ms, v.prompt_tokens,
                v.completion_tokens, x.epoch, "
    };
    (insert) => {
        "INSERT INTO annotations (experiment_id, run_id, evaluator_id, succeeded, label, score,
                                  explanation, error, attempts, latency_ms, prompt_tokens,
                                  completion_tokens, epoch, finished_at) "
    };
    (update) => {
        " ON CONFLICT (run_id, evaluator_id) DO UPDATE SET
             succeeded = excluded.succeeded, label = excluded.label, score = excluded.score,
             explanation = excluded.explanation, error = excluded.error,
             attempts = excluded.attempts, latency_ms = excluded.latency_ms,
             prompt_tokens = excluded.prompt_tokens, completion_tokens = excluded.completion_tokens,
             epoch = excluded.epoch, finished_at = excluded.finished_at "
    };
}
pub(crate) use annotation_upsert;

/// The start of a multi-row run upsert: the rows, as a `VALUES` list named
/// `v`, follow.
macro_rules! run_rows {
    () => {
        "WITH v (experiment_id, example_id, repetition, succeeded, output, error, attempts,
                 latency_ms, total_latency_ms, prompt_tokens, completion_tokens, epoch, replica)
         AS (VALUES "
    };
}
pub(crate) use run_rows;

/// The start of a multi-row annotation upsert: the rows, as a `VALUES` list
/// named `v`, follow.
macro_rules! annotation_rows {
    () => {
        "WITH v (experiment_id, run_id, evaluator_id, succeeded, label, score, explanation, error,
                 attempts, latency_ms, prompt_tokens, completion_tokens, epoch, replica)
         AS (VALUES "
    };
}
pub(crate) use annotation_rows;

/// The select lists of the run and annotation views.
macro_rules! result_view {
    (runs) => {
        "SELECT id, example_id, repetition, output, error, attempts, latency_ms,
                total_latency_ms, prompt_tokens, completion_tokens, epoch, started_at, finished_at
         FROM runs "
    };
    (annotations) => {
        "SELECT a.run_id, v.name, a.evaluator_id, a.label, a.score, a.explanation, a.error,
                a.attempts, a.latency_ms, a.prompt_tokens, a.completion_tokens, a.epoch
         FROM annotations a JOIN evaluators v ON v.id = a.evaluator_id "
    };
}
pub(crate) use result_view;

/// The fence of DESIGN §4, on the experiment row `x`: it exists, still has
/// the writer's epoch, and names the writer or nobody. A user stop clears the
/// owner but keeps the epoch, so the stopped run's in-flight results are kept;
/// every claim increments the epoch, so writes from before it are refused.
macro_rules! fence {
    ($id:literal, $epoch:literal, $replica:literal) => {
        concat!(
            "x.id = ",
            $id,
            " AND x.epoch = ",
            $epoch,
            " AND (x.claimed_by = ",
            $replica,
            " OR x.claimed_by IS NULL)"
        )
    };
}
pub(crate) use fence;

/// The rows of a shared-budget sync, as a `VALUES` list named `v` (the
/// rows follow). Per row: key, replica, lease_ms, demand, based_on,
/// decreased, rate_rps, good_rps, last_429_rps, learned_from,
/// token_rate_tps, paused_ms.
macro_rules! budget_rows {
    () => {
        "WITH v (key, replica, lease_ms, demand, based_on, decreased, rate_rps, good_rps,
                 last_429_rps, learned_from, token_rate_tps, paused_ms) AS (VALUES "
    };
}
pub(crate) use budget_rows;

/// How a report `v` changes its key's row `b` (the merge rule of
/// `runnel_advisor::share::merge`): a proposal made on the current version
/// applies up or down, a decrease applies if it is below the row, a stale
/// increase is dropped. The pause is set by each dialect.
macro_rules! budget_merge {
    () => {
        "version = b.version + CASE WHEN (v.rate_rps IS NOT NULL AND (v.based_on = b.version
                                  OR (v.decreased AND v.rate_rps < b.rate_rps)))
                               OR (v.token_rate_tps IS NOT NULL AND (v.based_on = b.version
                                  OR b.token_rate_tps IS NULL OR v.token_rate_tps < b.token_rate_tps))
                               THEN 1 ELSE 0 END,
         rate_rps = CASE WHEN v.rate_rps IS NOT NULL AND (v.based_on = b.version
                         OR (v.decreased AND v.rate_rps < b.rate_rps)) THEN v.rate_rps ELSE b.rate_rps END,
         good_rps = CASE WHEN v.rate_rps IS NOT NULL AND (v.based_on = b.version
                         OR (v.decreased AND v.rate_rps < b.rate_rps)) THEN v.good_rps ELSE b.good_rps END,
         last_429_rps = CASE WHEN v.rate_rps IS NOT NULL AND (v.based_on = b.version
                         OR (v.decreased AND v.rate_rps < b.rate_rps)) THEN v.last_429_rps ELSE b.last_429_rps END,
         learned_from = CASE WHEN v.rate_rps IS NOT NULL AND (v.based_on = b.version
                         OR (v.decreased AND v.rate_rps < b.rate_rps)) THEN v.learned_from ELSE b.learned_from END,
         token_rate_tps = CASE WHEN v.token_rate_tps IS NOT NULL AND (v.based_on = b.version
                         OR b.token_rate_tps IS NULL OR v.token_rate_tps < b.token_rate_tps)
                         THEN v.token_rate_tps ELSE b.token_rate_tps END, "
    };
}
pub(crate) use budget_merge;

/// The columns of a new budget row, from the report `v`.
macro_rules! budget_insert {
    () => {
        "INSERT INTO rate_budgets (key, version, rate_rps, good_rps, last_429_rps, learned_from,
                                   token_rate_tps, paused_until) "
    };
}
pub(crate) use budget_insert;

/// A database runnel can use, with its dialect.
pub(crate) trait Backend: sqlx::Database<Connection: Migrate> {
    /// The statement that opens a transaction that will write. SQLite takes
    /// the write lock at once (`BEGIN IMMEDIATE`) so that a transaction never
    /// has to upgrade a read lock, which SQLite refuses without waiting.
    const BEGIN_WRITE: &'static str;

    /// The statements, in this database's dialect.
    fn sql() -> &'static Sql;

    /// The embedded migrations of this database.
    fn migrator() -> &'static Migrator;

    /// The `n`-th (1-based) bind placeholder, for statements built at run
    /// time (multi-row inserts).
    fn placeholder(n: usize) -> String;

    /// Whether a database error code means "try again later" (locked, busy,
    /// connection lost, deadlock, shutting down).
    fn is_transient(code: &str) -> bool;
}

/// A statement over rows given as a `VALUES` list: `head`, then one tuple of
/// placeholders per row (the j-th followed by `casts[j]`), then `tail`.
pub(crate) struct MultiRow {
    /// Up to the first row.
    pub(crate) head: &'static str,
    /// A suffix per column (PostgreSQL types the `VALUES` columns with
    /// casts; SQLite needs none).
    pub(crate) casts: &'static [&'static str],
    /// After the last row.
    pub(crate) tail: &'static str,
}

impl MultiRow {
    /// The statement for `rows` rows, with placeholders from `placeholder`.
    pub(crate) fn sql(&self, rows: usize, placeholder: fn(usize) -> String) -> String {
        let width = self.casts.len();
        let mut sql = String::from(self.head);
        for row in 0..rows {
            sql.push_str(if row == 0 { "(" } else { ", (" });
            for (col, cast) in self.casts.iter().enumerate() {
                if col > 0 {
                    sql.push_str(", ");
                }
                sql.push_str(&placeholder(row * width + col + 1));
                sql.push_str(cast);
            }
            sql.push(')');
        }
        sql.push_str(self.tail);
        sql
    }
}

/// Every statement the store runs, per database. Binds are listed as
/// `1 name, 2 name, …`; "→" lists the returned columns. A `claim` bind triple
/// is (experiment id, replica text, epoch).
pub(crate) struct Sql {
    /// Claims back RUNNING experiments owned by a replica with a new epoch.
    /// Binds: 1 replica → (id, epoch).
    pub(crate) reclaim_own: &'static str,
    /// Claims RUNNING experiments whose claim is older than the lease, or
    /// missing. Binds: 1 replica, 2 lease in ms → (id, epoch).
    pub(crate) take_over_orphans: &'static str,
    /// Renews one claim. Binds: 1 id, 2 replica, 3 epoch → (id).
    pub(crate) heartbeat: &'static str,
    /// Expires one claim (status stays RUNNING). Binds: 1 id, 2 replica, 3 epoch.
    pub(crate) release: &'static str,
    /// Ends an experiment while the claim still owns it. Binds: 1 id,
    /// 2 replica, 3 epoch, 4 status, 5 last_error → (id).
    pub(crate) finish: &'static str,
    /// Start or resume: claims an unclaimed experiment whose cooldown is over,
    /// setting a new cooldown when given. Binds: 1 id, 2 replica, 3 cooldown
    /// in ms or NULL → (epoch).
    pub(crate) claim: &'static str,
    /// Stops a RUNNING experiment whose cooldown is over and clears its claim
    /// (the epoch stays). Binds: 1 id, 2 cooldown in ms → (id).
    pub(crate) stop: &'static str,
    /// Why a transition matched nothing. Binds: 1 id → (status, claimed_by,
    /// cooldown left in ms as a float or NULL).
    pub(crate) diagnose: &'static str,
    /// Deletes an experiment and, by cascade, everything it owns. Binds: 1 id → (id).
    pub(crate) delete_experiment: &'static str,

    /// What a plan needs from the experiment row. Binds: 1 id →
    /// (dataset_id, repetitions, max_concurrency, task).
    pub(crate) experiment_plan: &'static str,
    /// The experiment's evaluators in id order. Binds: 1 id → (id, name, spec).
    pub(crate) evaluators_of: &'static str,
    /// The next example ids of a dataset, from an id on (inclusive), in id
    /// order. Binds: 1 dataset, 2 first id, 3 limit → (id, id) (the shape of
    /// `succeeded_runs`: the item and its example).
    pub(crate) example_ids: &'static str,
    /// Runs of an experiment over an example id range that need no new
    /// attempt under the epoch (succeeded, or failed under it). Binds:
    /// 1 experiment, 2 first example, 3 last example, 4 epoch →
    /// (example_id, repetition).
    pub(crate) runs_done: &'static str,
    /// The next successful runs of an experiment, from a run id on
    /// (inclusive), in id order. Binds: 1 experiment, 2 first id, 3 limit →
    /// (id, example_id).
    pub(crate) succeeded_runs: &'static str,
    /// The experiment's evaluator ids in order. Binds: 1 experiment → (id).
    pub(crate) evaluator_ids: &'static str,
    /// Annotations over a run id range that need no new attempt under the
    /// epoch. Binds: 1 experiment, 2 first run, 3 last run, 4 epoch →
    /// (run_id, evaluator_id).
    pub(crate) annotations_done: &'static str,
    /// Examples by id; an `IN (…)` list of placeholders and `)` follow →
    /// (id, input, expected, metadata).
    pub(crate) examples_by_id: &'static str,
    /// Run outputs by id; an `IN (…)` list of placeholders and `)` follow →
    /// (id, output).
    pub(crate) outputs_by_id: &'static str,
    /// Refreshes the planner's statistics after a large import, so the first
    /// pages over a fresh million-example dataset use the indexes (PostgreSQL
    /// plans from statistics; SQLite needs none).
    pub(crate) after_import: Option<&'static str>,

    /// Fenced upsert of runs, each row fenced by its own claim in the same
    /// statement. Per row: experiment, example, repetition, succeeded,
    /// output, error, attempts, latency_ms, total_latency_ms, prompt_tokens,
    /// completion_tokens, epoch, replica → (experiment_id, example_id,
    /// repetition, id) for each row inserted or failure replaced. The rows
    /// must have distinct identities.
    pub(crate) record_runs: MultiRow,
    /// Why a run upsert returned nothing. Binds: 1 experiment, 2 example,
    /// 3 repetition, 4 epoch, 5 replica → (fence holds, id of the existing success).
    pub(crate) run_diagnosis: &'static str,
    /// Fenced upsert of annotations, like `record_runs`. Per row:
    /// experiment, run, evaluator, succeeded, label, score, explanation,
    /// error, attempts, latency_ms, prompt_tokens, completion_tokens, epoch,
    /// replica → (run_id, evaluator_id) for each row written.
    pub(crate) record_annotations: MultiRow,
    /// Why an annotation upsert returned nothing. Binds: 1 experiment, 2 run,
    /// 3 evaluator, 4 epoch, 5 replica → (fence holds, id of the existing success).
    pub(crate) annotation_diagnosis: &'static str,
    /// Appends a log entry when the experiment exists. Binds: 1 experiment,
    /// 2 level, 3 message → (id).
    pub(crate) log: &'static str,

    /// Examples of a dataset in id order. Binds: 1 dataset, 2 after id,
    /// 3 limit → (id, input, expected, metadata).
    pub(crate) examples_page: &'static str,
    /// Binds: 1 id → (1) when the dataset exists.
    pub(crate) dataset_exists: &'static str,
    /// Binds: 1 id, 2 name.
    pub(crate) insert_dataset: &'static str,
    /// Multi-row example insert. Per row: dataset, input, expected, metadata.
    pub(crate) insert_examples: MultiRow,
    /// One dataset. Binds: 1 id → (id, name, created_at, example_count).
    pub(crate) dataset: &'static str,
    /// Every dataset, oldest first → (id, name, created_at, example_count).
    pub(crate) datasets: &'static str,
    /// Binds: 1 id, 2 name, 3 dataset, 4 repetitions, 5 max_concurrency, 6 task.
    pub(crate) insert_experiment: &'static str,
    /// Binds: 1 experiment, 2 name, 3 spec → (id).
    pub(crate) insert_evaluator: &'static str,
    /// One experiment with its progress. Binds: 1 id → the view columns.
    pub(crate) experiment: &'static str,
    /// Experiments, oldest first, filtered. Binds: 1 dataset or NULL,
    /// 2 status or NULL → the view columns.
    pub(crate) experiments: &'static str,
    /// Binds: 1 id → (1) when the experiment exists.
    pub(crate) experiment_exists: &'static str,
    /// A page of runs in id order. Binds: 1 experiment, 2 after id, 3 limit →
    /// the run columns.
    pub(crate) runs_page: &'static str,
    /// The annotations of the runs whose ids lie in a range. Binds:
    /// 1 experiment, 2 first run, 3 last run → the annotation columns.
    pub(crate) annotations_of_runs: &'static str,
    /// Log entries newest first. Binds: 1 experiment, 2 before id, 3 limit →
    /// (id, level, message, created_at).
    pub(crate) logs: &'static str,
    /// Upserts an advisor state. Binds: 1 key, 2 state.
    pub(crate) save_rate_state: &'static str,
    /// Every advisor state → (key, state).
    pub(crate) load_rate_state: &'static str,
    /// One shared-budget sync, run in order in one transaction (a single
    /// statement on PostgreSQL: one round trip). Rows as `budget_rows!`; the
    /// last statement returns, per row: (key, version, rate_rps, good_rps,
    /// last_429_rps, learned_from, token_rate_tps, paused_ms, total demand of
    /// the live members, live members).
    pub(crate) budget_sync: &'static [MultiRow],
    /// Removes a replica from every budget. Binds: 1 replica.
    pub(crate) budget_leave: &'static str,
    /// → (1) when the migrations table exists.
    pub(crate) migrations_table_exists: &'static str,
    /// → (highest successfully applied version or NULL, whether a failed
    /// migration is recorded).
    pub(crate) migration_state: &'static str,
}
