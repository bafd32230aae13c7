//! The store itself, written once for every database: generic over
//! [`Backend`], which supplies only the SQL text and dialect details.
//!
//! This module holds the Store port (claims, work pages, fenced writes) and
//! the lifecycle transitions; `api` holds the operations the HTTP API needs.
//!
//! Rust cannot name a set of bounds, so the `where` clause listing what the
//! generic code needs from a database driver is repeated on the two `impl`
//! blocks (here and in `api`); it lists capabilities, not logic.

mod api;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::FutureExt;
use runnel_core::work::{EvalCursor, TaskCursor};
use runnel_core::{
    AnnotationRecord, CallSpec, Claim, Epoch, EvalKey, EvalWork, EvaluatorId, EvaluatorSpec,
    ExampleData, ExampleId, ExperimentId, ExperimentPlan, ExperimentStatus, Finish, LogLevel,
    ReplicaId, RunId, RunRecord, RunWrite, TaskKey, TaskWork, Write,
};
use serde::{Deserialize, Serialize};
use sqlx::query::Query;
use sqlx::{
    AssertSqlSafe, ColumnIndex, Decode, Encode, Executor, IntoArguments, Pool, Row, Transaction,
    Type,
};
use uuid::Uuid;

use crate::backend::Backend;
use crate::batch::{BatchLimits, Batcher, GroupWrite};
use crate::error::StoreError;
use crate::types::Transition;

/// A value the generic code binds and reads back.
pub(crate) trait Value<DB: sqlx::Database>:
    Type<DB> + for<'q> Encode<'q, DB> + for<'r> Decode<'r, DB>
{
}
impl<DB: sqlx::Database, T> Value<DB> for T where
    T: Type<DB> + for<'q> Encode<'q, DB> + for<'r> Decode<'r, DB>
{
}

/// Ids bound in one `IN (…)` list. Not a setting: the lists it splits are
/// the examples of one page of work (at most `scheduler.high_watermark`
/// ids), so it only keeps a statement far below the bind limit of both
/// databases ([`crate::config::MAX_BINDS`]); a smaller value would only add
/// round trips.
const IDS_PER_STATEMENT: usize = 1000;
const _: () = assert!(IDS_PER_STATEMENT <= crate::config::MAX_BINDS);

/// The statement sizes and limits of [`crate::StoreConfig`] the SQL code
/// uses (documented and validated there).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Tuning {
    pub(crate) scan_chunk_min: usize,
    pub(crate) scan_chunk_max: usize,
    pub(crate) transition_tries: usize,
    pub(crate) examples_per_statement: usize,
    pub(crate) analyze_after: usize,
    pub(crate) max_page: usize,
    pub(crate) export_page: usize,
}

impl Tuning {
    pub(crate) fn of(config: &crate::StoreConfig) -> Self {
        Self {
            scan_chunk_min: config.scan_chunk_min,
            scan_chunk_max: config.scan_chunk_max,
            transition_tries: config.transition_tries,
            examples_per_statement: config.examples_per_statement,
            analyze_after: config.analyze_after,
            max_page: config.max_page,
            export_page: config.export_page,
        }
    }
}

/// A write handed to the batch writers.
#[derive(Clone, Debug)]
pub(crate) enum WriteOp {
    Run(Claim, RunRecord),
    Annotation(Claim, AnnotationRecord),
}

impl WriteOp {
    /// The order in which a group's writes are made: by experiment, then by
    /// row identity. One total order for every group means two groups
    /// committed at once (several PostgreSQL batch writers) take their locks
    /// in the same order and cannot deadlock.
    fn order(&self) -> (ExperimentId, u8, i64, i64) {
        match self {
            WriteOp::Run(claim, r) => (
                claim.experiment,
                0,
                r.key.example.0,
                i64::from(r.key.repetition),
            ),
            WriteOp::Annotation(claim, a) => (claim.experiment, 1, a.key.run.0, a.key.evaluator.0),
        }
    }
}

/// The verdict on a [`WriteOp`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum WriteVerdict {
    Run(Write<RunWrite>),
    Annotation(Write<()>),
}

impl WriteVerdict {
    fn is_fenced(self) -> bool {
        matches!(
            self,
            WriteVerdict::Run(Write::Fenced) | WriteVerdict::Annotation(Write::Fenced)
        )
    }
}

/// What an evaluator row stores besides its id and name.
#[derive(Serialize, Deserialize)]
struct StoredEvaluator {
    call: CallSpec,
    #[serde(default)]
    labels: Vec<String>,
}

/// The connection pool and the counters, shared by the store and its batch
/// writers. Every operation lives here.
pub(crate) struct SqlCore<DB: sqlx::Database> {
    pool: Pool<DB>,
    fenced: Arc<AtomicU64>,
    tuning: Tuning,
}

impl<DB: sqlx::Database> Clone for SqlCore<DB> {
    fn clone(&self) -> Self {
        Self {
            pool: self.pool.clone(),
            fenced: self.fenced.clone(),
            tuning: self.tuning,
        }
    }
}

/// A store on one database: the core plus its batch writers.
pub(crate) struct SqlStore<DB: sqlx::Database> {
    pub(crate) core: SqlCore<DB>,
    batcher: Batcher<WriteOp, WriteVerdict>,
}

/// The state a lifecycle follow-up read finds.
struct Diagnosis {
    status: ExperimentStatus,
    claimed_by: Option<String>,
    cooldown_left: Option<Duration>,
}

/// Splits `sorted` (indexes into `ops`, sorted by [`WriteOp::order`]) into
/// rounds of distinct row identities: the k-th write to an identity goes to
/// round k, so writes to one row keep their order.
fn rounds(ops: &[WriteOp], sorted: &[usize]) -> Vec<Vec<usize>> {
    let mut rounds: Vec<Vec<usize>> = Vec::new();
    let mut previous = None;
    let mut repeat = 0;
    for &i in sorted {
        let identity = ops[i].order();
        repeat = if previous == Some(identity) {
            repeat + 1
        } else {
            0
        };
        previous = Some(identity);
        if rounds.len() <= repeat {
            rounds.push(Vec::new());
        }
        rounds[repeat].push(i);
    }
    rounds
}

fn to_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

pub(crate) fn parse_json<T: serde::de::DeserializeOwned>(
    text: &str,
    what: &str,
) -> Result<T, StoreError> {
    serde_json::from_str(text).map_err(|e| StoreError::corrupt(format!("{what}: {e}")))
}

pub(crate) fn to_u32(n: i64, what: &str) -> Result<u32, StoreError> {
    u32::try_from(n).map_err(|_| StoreError::corrupt(format!("{what} = {n} is out of range")))
}

pub(crate) fn to_u64(n: i64, what: &str) -> Result<u64, StoreError> {
    u64::try_from(n).map_err(|_| StoreError::corrupt(format!("{what} = {n} is negative")))
}

fn parse_status(text: &str) -> Result<ExperimentStatus, StoreError> {
    text.parse().map_err(StoreError::Corrupt)
}

impl<DB> SqlCore<DB>
where
    DB: Backend,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    DB::Arguments: IntoArguments<DB>,
    usize: ColumnIndex<DB::Row>,
    bool: Value<DB>,
    i64: Value<DB>,
    f64: Value<DB>,
    String: Value<DB>,
    Uuid: Value<DB>,
    DateTime<Utc>: Type<DB> + for<'r> Decode<'r, DB>,
    Option<i64>: Type<DB> + for<'q> Encode<'q, DB>,
    Option<f64>: Type<DB> + for<'q> Encode<'q, DB>,
    Option<String>: Type<DB> + for<'q> Encode<'q, DB>,
    Option<Uuid>: Type<DB> + for<'q> Encode<'q, DB>,
{
    pub(crate) fn new(pool: Pool<DB>, tuning: Tuning) -> Self {
        Self {
            pool,
            fenced: Arc::new(AtomicU64::new(0)),
            tuning,
        }
    }

    /// Starts the batch writers and returns the store.
    pub(crate) fn into_store(self, limits: BatchLimits) -> SqlStore<DB> {
        let core = self.clone();
        let write: GroupWrite<WriteOp, WriteVerdict> = Arc::new(move |ops: Vec<WriteOp>| {
            let core = core.clone();
            async move { core.write_group(&ops).await }.boxed()
        });
        SqlStore {
            core: self,
            batcher: Batcher::spawn(limits, write),
        }
    }

    pub(crate) fn pool(&self) -> &Pool<DB> {
        &self.pool
    }

    /// Writes rejected by the fence since the store was opened.
    pub(crate) fn fenced_writes(&self) -> u64 {
        self.fenced.load(Ordering::Relaxed)
    }

    fn err(e: sqlx::Error) -> StoreError {
        StoreError::from_sqlx(e, DB::is_transient)
    }

    fn q(sql: &'static str) -> Query<'static, DB, DB::Arguments> {
        sqlx::query(sql)
    }

    fn get<T>(row: &DB::Row, index: usize) -> Result<T, StoreError>
    where
        T: Type<DB> + for<'r> Decode<'r, DB>,
    {
        row.try_get(index).map_err(Self::err)
    }

    async fn begin_write(&self) -> Result<Transaction<'static, DB>, StoreError> {
        self.pool
            .begin_with(DB::BEGIN_WRITE)
            .await
            .map_err(Self::err)
    }

    fn claims_of(rows: Vec<DB::Row>, replica: &ReplicaId) -> Result<Vec<Claim>, StoreError> {
        rows.iter()
            .map(|row| {
                Ok(Claim {
                    experiment: ExperimentId(Self::get(row, 0)?),
                    replica: replica.clone(),
                    epoch: Epoch(Self::get(row, 1)?),
                })
            })
            .collect()
    }

    // ----- claims (DESIGN §4) -------------------------------------------

    pub(crate) async fn reclaim_own(&self, replica: &ReplicaId) -> Result<Vec<Claim>, StoreError> {
        let rows = Self::q(DB::sql().reclaim_own)
            .bind(replica.as_str().to_owned())
            .fetch_all(&self.pool)
            .await
            .map_err(Self::err)?;
        Self::claims_of(rows, replica)
    }

    pub(crate) async fn take_over_orphans(
        &self,
        replica: &ReplicaId,
        lease: Duration,
    ) -> Result<Vec<Claim>, StoreError> {
        let rows = Self::q(DB::sql().take_over_orphans)
            .bind(replica.as_str().to_owned())
            .bind(ms(lease))
            .fetch_all(&self.pool)
            .await
            .map_err(Self::err)?;
        Self::claims_of(rows, replica)
    }

    /// Runs `sql` once per claim in one transaction, in experiment id order
    /// (the order every multi-row claim statement locks in), and returns the
    /// experiments for which it returned a row.
    async fn per_claim(
        &self,
        sql: &'static str,
        claims: &[Claim],
    ) -> Result<Vec<ExperimentId>, StoreError> {
        if claims.is_empty() {
            return Ok(Vec::new());
        }
        let mut sorted: Vec<&Claim> = claims.iter().collect();
        sorted.sort_by_key(|c| c.experiment);
        let mut tx = self.begin_write().await?;
        let mut matched = Vec::new();
        for claim in sorted {
            let row = Self::q(sql)
                .bind(claim.experiment.0)
                .bind(claim.replica.as_str().to_owned())
                .bind(claim.epoch.0)
                .fetch_optional(&mut *tx)
                .await
                .map_err(Self::err)?;
            if row.is_some() {
                matched.push(claim.experiment);
            }
        }
        tx.commit().await.map_err(Self::err)?;
        Ok(matched)
    }

    pub(crate) async fn heartbeat(
        &self,
        claims: &[Claim],
    ) -> Result<Vec<ExperimentId>, StoreError> {
        self.per_claim(DB::sql().heartbeat, claims).await
    }

    pub(crate) async fn release(&self, claims: &[Claim]) -> Result<(), StoreError> {
        self.per_claim(DB::sql().release, claims).await.map(drop)
    }

    pub(crate) async fn finish(&self, claim: &Claim, end: &Finish) -> Result<bool, StoreError> {
        let (status, error) = match end {
            Finish::Completed => (ExperimentStatus::Completed, None),
            Finish::Error(message) => (ExperimentStatus::Error, Some(clean(message))),
        };
        let row = Self::q(DB::sql().finish)
            .bind(claim.experiment.0)
            .bind(claim.replica.as_str().to_owned())
            .bind(claim.epoch.0)
            .bind(status.as_str().to_owned())
            .bind(error)
            .fetch_optional(&self.pool)
            .await
            .map_err(Self::err)?;
        Ok(row.is_some())
    }

    // ----- lifecycle transitions requested through the API ----------------

    async fn diagnose(&self, id: ExperimentId) -> Result<Option<Diagnosis>, StoreError> {
        let Some(row) = Self::q(DB::sql().diagnose)
            .bind(id.0)
            .fetch_optional(&self.pool)
            .await
            .map_err(Self::err)?
        else {
            return Ok(None);
        };
        let status: String = Self::get(&row, 0)?;
        let left_ms: Option<f64> = Self::get(&row, 2)?;
        Ok(Some(Diagnosis {
            status: parse_status(&status)?,
            claimed_by: Self::get(&row, 1)?,
            cooldown_left: left_ms.filter(|m| m.is_finite() && *m > 0.0).map(|m| {
                // To the millisecond (the precision of SQLite's clock text;
                // the float arithmetic may leave a hair above it), and at
                // least one.
                Duration::from_millis(m.round().clamp(1.0, 1.0e12) as u64)
            }),
        }))
    }

    /// Runs a lifecycle transition: the conditional statement, and when it
    /// matches nothing, the follow-up read that says why — not found, already
    /// in the requested state (`already`), or cooldown. When the read finds
    /// none of these (the row changed between the two), the statement is
    /// tried again.
    async fn transition<T>(
        &self,
        id: ExperimentId,
        statement: impl Fn() -> Query<'static, DB, DB::Arguments>,
        done: impl Fn(&DB::Row) -> Result<T, StoreError>,
        already: impl Fn(&Diagnosis) -> bool,
    ) -> Result<Transition<T>, StoreError> {
        let tries = self.tuning.transition_tries;
        for _ in 0..tries {
            let row = statement()
                .fetch_optional(&self.pool)
                .await
                .map_err(Self::err)?;
            if let Some(row) = row {
                return done(&row).map(Transition::Done);
            }
            match self.diagnose(id).await? {
                None => return Ok(Transition::NotFound),
                Some(d) if already(&d) => return Ok(Transition::AlreadyInState(d.status)),
                Some(Diagnosis {
                    cooldown_left: Some(remaining),
                    ..
                }) => return Ok(Transition::Cooldown { remaining }),
                Some(_) => continue,
            }
        }
        Err(StoreError::Unavailable(format!(
            "experiment {id} kept changing during {tries} attempts to change it"
        )))
    }

    /// Start (no new cooldown) or resume (`cooldown` set): claims the
    /// experiment for `replica` with a new epoch when nobody holds it and no
    /// cooldown is running.
    pub(crate) async fn claim_for(
        &self,
        id: ExperimentId,
        replica: &ReplicaId,
        cooldown: Option<Duration>,
    ) -> Result<Transition<Claim>, StoreError> {
        self.transition(
            id,
            || {
                Self::q(DB::sql().claim)
                    .bind(id.0)
                    .bind(replica.as_str().to_owned())
                    .bind(cooldown.map(ms))
            },
            |row| {
                Ok(Claim {
                    experiment: id,
                    replica: replica.clone(),
                    epoch: Epoch(Self::get(row, 0)?),
                })
            },
            |d| d.claimed_by.is_some(),
        )
        .await
    }

    /// Stop: a RUNNING experiment whose cooldown is over becomes STOPPED, its
    /// claim cleared (the epoch stays, so in-flight results are kept) and a
    /// new cooldown set.
    pub(crate) async fn stop(
        &self,
        id: ExperimentId,
        cooldown: Duration,
    ) -> Result<Transition<()>, StoreError> {
        self.transition(
            id,
            || Self::q(DB::sql().stop).bind(id.0).bind(ms(cooldown)),
            |_| Ok(()),
            |d| d.status != ExperimentStatus::Running,
        )
        .await
    }

    /// Deletes the experiment and everything it owns; false when it did not exist.
    pub(crate) async fn delete_experiment(&self, id: ExperimentId) -> Result<bool, StoreError> {
        let row = Self::q(DB::sql().delete_experiment)
            .bind(id.0)
            .fetch_optional(&self.pool)
            .await
            .map_err(Self::err)?;
        Ok(row.is_some())
    }

    // ----- plans and work pages (DESIGN §3) ---------------------------------

    fn evaluator_spec(row: &DB::Row) -> Result<EvaluatorSpec, StoreError> {
        let id: i64 = Self::get(row, 0)?;
        let spec: String = Self::get(row, 2)?;
        let stored: StoredEvaluator = parse_json(&spec, &format!("evaluator {id}"))?;
        Ok(EvaluatorSpec {
            id: EvaluatorId(id),
            name: Self::get(row, 1)?,
            call: stored.call,
            labels: stored.labels,
        })
    }

    pub(crate) async fn load_plan(&self, id: ExperimentId) -> Result<ExperimentPlan, StoreError> {
        let row = Self::q(DB::sql().experiment_plan)
            .bind(id.0)
            .fetch_optional(&self.pool)
            .await
            .map_err(Self::err)?
            .ok_or(StoreError::ExperimentNotFound(id))?;
        let task: String = Self::get(&row, 3)?;
        let max_concurrency: Option<i64> = Self::get(&row, 2)?;
        let evaluators = Self::q(DB::sql().evaluators_of)
            .bind(id.0)
            .fetch_all(&self.pool)
            .await
            .map_err(Self::err)?
            .iter()
            .map(Self::evaluator_spec)
            .collect::<Result<_, _>>()?;
        Ok(ExperimentPlan {
            id,
            dataset: runnel_core::DatasetId(Self::get(&row, 0)?),
            repetitions: to_u32(Self::get(&row, 1)?, "repetitions")?,
            max_concurrency: max_concurrency
                .map(|n| to_u32(n, "max_concurrency"))
                .transpose()?,
            task: parse_json(&task, &format!("task of experiment {id}"))?,
            evaluators,
        })
    }

    /// Reads the example columns starting at `at` (input, expected, metadata).
    pub(crate) fn example_data(
        row: &DB::Row,
        at: usize,
        example: i64,
    ) -> Result<ExampleData, StoreError> {
        let input: String = Self::get(row, at)?;
        let expected: Option<String> = Self::get(row, at + 1)?;
        let metadata: String = Self::get(row, at + 2)?;
        let what = |field: &str| format!("{field} of example {example}");
        Ok(ExampleData {
            input: parse_json(&input, &what("input"))?,
            expected: expected
                .map(|e| parse_json(&e, &what("expected")))
                .transpose()?,
            metadata: parse_json(&metadata, &what("metadata"))?,
        })
    }

    /// Fetches rows by id in statements of at most [`IDS_PER_STATEMENT`]
    /// ids: `head` is the statement up to `IN (`.
    async fn fetch_by_ids(
        &self,
        head: &'static str,
        ids: &[i64],
    ) -> Result<Vec<DB::Row>, StoreError> {
        let mut rows = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(IDS_PER_STATEMENT) {
            let mut sql = String::from(head);
            for i in 0..chunk.len() {
                if i > 0 {
                    sql.push_str(", ");
                }
                sql.push_str(&DB::placeholder(i + 1));
            }
            sql.push(')');
            // Built from placeholders only; every value is bound.
            let mut query = sqlx::query::<DB>(AssertSqlSafe(sql));
            for id in chunk {
                query = query.bind(*id);
            }
            rows.extend(query.fetch_all(&self.pool).await.map_err(Self::err)?);
        }
        Ok(rows)
    }

    /// The data of the examples `ids`, parsed once each.
    async fn examples_by_id(
        &self,
        ids: &[i64],
    ) -> Result<HashMap<i64, Arc<ExampleData>>, StoreError> {
        self.fetch_by_ids(DB::sql().examples_by_id, ids)
            .await?
            .iter()
            .map(|row| {
                let id: i64 = Self::get(row, 0)?;
                Ok((id, Arc::new(Self::example_data(row, 1, id)?)))
            })
            .collect()
    }

    /// A keyset sweep for work reconstruction (DESIGN §3), shared by task
    /// and eval pages. It walks "parents" in id order from the cursor's
    /// parent on — a dataset's examples, or an experiment's successful runs —
    /// a chunk at a time, pairs each with every child — repetitions, or
    /// evaluators — and drops the pairs that need no new attempt under the
    /// claim's epoch. Each step is two index range scans, so the cost does
    /// not depend on the planner's statistics, and a page over a
    /// million-example dataset costs what it costs over ten thousand.
    ///
    /// `parents` takes (owner, first id, limit) and returns (id, example id);
    /// `done` takes (experiment, first id, last id, epoch) and returns the
    /// (parent, child) pairs that need nothing. Returns up to `limit`
    /// (parent, child, example) triples strictly after `after`.
    #[allow(clippy::too_many_arguments)]
    async fn sweep(
        &self,
        claim: &Claim,
        owner: Uuid,
        parents: &'static str,
        done: &'static str,
        children: &[i64],
        after: Option<(i64, i64)>,
        limit: usize,
    ) -> Result<Vec<(i64, i64, i64)>, StoreError> {
        let mut picked = Vec::with_capacity(limit.min(4096));
        if children.is_empty() {
            return Ok(picked);
        }
        // Inclusive: the cursor's own parent may have children left.
        let mut from = after.map_or(i64::MIN, |a| a.0);
        let (min_chunk, max_chunk) = (self.tuning.scan_chunk_min, self.tuning.scan_chunk_max);
        let mut chunk = limit.div_ceil(children.len()).clamp(min_chunk, max_chunk);
        loop {
            let batch: Vec<(i64, i64)> = Self::q(parents)
                .bind(owner)
                .bind(from)
                .bind(to_i64(chunk as u64))
                .fetch_all(&self.pool)
                .await
                .map_err(Self::err)?
                .iter()
                .map(|row| Ok((Self::get(row, 0)?, Self::get(row, 1)?)))
                .collect::<Result<_, StoreError>>()?;
            let (Some(&(first, _)), Some(&(last, _))) = (batch.first(), batch.last()) else {
                return Ok(picked);
            };
            let finished: HashSet<(i64, i64)> = Self::q(done)
                .bind(claim.experiment.0)
                .bind(first)
                .bind(last)
                .bind(claim.epoch.0)
                .fetch_all(&self.pool)
                .await
                .map_err(Self::err)?
                .iter()
                .map(|row| Ok((Self::get(row, 0)?, Self::get(row, 1)?)))
                .collect::<Result<_, StoreError>>()?;
            for &(parent, example) in &batch {
                for &child in children {
                    let key = (parent, child);
                    if after.is_some_and(|a| key <= a) || finished.contains(&key) {
                        continue;
                    }
                    picked.push((parent, child, example));
                    if picked.len() == limit {
                        return Ok(picked);
                    }
                }
            }
            match last.checked_add(1) {
                Some(next) if batch.len() == chunk => from = next,
                _ => return Ok(picked),
            }
            // Mostly finished work is crossed in growing strides.
            chunk = chunk.saturating_mul(2).min(max_chunk);
        }
    }

    /// Task work: example × repetition pairs with no success and no failure
    /// under the claim's epoch, in key order after `after`.
    pub(crate) async fn task_page(
        &self,
        claim: &Claim,
        after: Option<TaskCursor>,
        limit: usize,
    ) -> Result<Vec<TaskWork>, StoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let plan = Self::q(DB::sql().experiment_plan)
            .bind(claim.experiment.0)
            .fetch_optional(&self.pool)
            .await
            .map_err(Self::err)?
            .ok_or(StoreError::ExperimentNotFound(claim.experiment))?;
        let dataset: Uuid = Self::get(&plan, 0)?;
        let repetitions: Vec<i64> = (0..Self::get::<i64>(&plan, 1)?).collect();
        let after = after.map(|k| (k.example.0, i64::from(k.repetition)));
        let sql = DB::sql();
        let picked = self
            .sweep(
                claim,
                dataset,
                sql.example_ids,
                sql.runs_done,
                &repetitions,
                after,
                limit,
            )
            .await?;
        let mut examples: Vec<i64> = picked.iter().map(|p| p.0).collect();
        examples.dedup();
        let data = self.examples_by_id(&examples).await?;
        picked
            .into_iter()
            .map(|(example, repetition, _)| {
                Ok(TaskWork {
                    key: TaskKey {
                        example: ExampleId(example),
                        repetition: to_u32(repetition, "repetition")?,
                    },
                    data: data.get(&example).cloned().ok_or_else(|| {
                        StoreError::corrupt(format!("example {example} vanished"))
                    })?,
                })
            })
            .collect()
    }

    /// Eval work: successful run × attached evaluator pairs with no
    /// successful annotation and no failure under the claim's epoch, in key
    /// order after `after`.
    pub(crate) async fn eval_page(
        &self,
        claim: &Claim,
        after: Option<EvalCursor>,
        limit: usize,
    ) -> Result<Vec<EvalWork>, StoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let evaluators: Vec<i64> = Self::q(DB::sql().evaluator_ids)
            .bind(claim.experiment.0)
            .fetch_all(&self.pool)
            .await
            .map_err(Self::err)?
            .iter()
            .map(|row| Self::get(row, 0))
            .collect::<Result<_, _>>()?;
        if evaluators.is_empty() {
            // Either no evaluator is attached, or the experiment is gone.
            self.require_experiment(&self.pool, claim.experiment)
                .await?;
            return Ok(Vec::new());
        }
        let after = after.map(|k| (k.run.0, k.evaluator.0));
        let sql = DB::sql();
        let picked = self
            .sweep(
                claim,
                claim.experiment.0,
                sql.succeeded_runs,
                sql.annotations_done,
                &evaluators,
                after,
                limit,
            )
            .await?;
        let mut runs: Vec<i64> = picked.iter().map(|p| p.0).collect();
        runs.dedup();
        let outputs: HashMap<i64, Arc<str>> = self
            .fetch_by_ids(sql.outputs_by_id, &runs)
            .await?
            .iter()
            .map(|row| {
                let output: Option<String> = Self::get(row, 1)?;
                Ok((Self::get(row, 0)?, output.unwrap_or_default().into()))
            })
            .collect::<Result<_, StoreError>>()?;
        let mut examples: Vec<i64> = picked.iter().map(|p| p.2).collect();
        examples.sort_unstable();
        examples.dedup();
        let data = self.examples_by_id(&examples).await?;
        picked
            .into_iter()
            .map(|(run, evaluator, example)| {
                let missing =
                    |what: &str| StoreError::corrupt(format!("{what} of run {run} vanished"));
                Ok(EvalWork {
                    key: EvalKey {
                        run: RunId(run),
                        evaluator: EvaluatorId(evaluator),
                    },
                    example: ExampleId(example),
                    data: data
                        .get(&example)
                        .cloned()
                        .ok_or_else(|| missing("the example"))?,
                    output: outputs
                        .get(&run)
                        .cloned()
                        .ok_or_else(|| missing("the output"))?,
                })
            })
            .collect()
    }

    // ----- fenced writes ----------------------------------------------------

    /// Commits `ops` in one transaction and returns the verdicts in the
    /// order of `ops`. Runs are written before annotations (an annotation
    /// may judge a run of the same group), each kind in as few multi-row
    /// statements as the rows allow: one, unless a row identity repeats, in
    /// which case its later writes go to later statements, in order.
    async fn write_group(&self, ops: &[WriteOp]) -> Result<Vec<WriteVerdict>, StoreError> {
        let mut order: Vec<usize> = (0..ops.len()).collect();
        order.sort_by_key(|&i| ops[i].order());
        let (runs, annotations): (Vec<usize>, Vec<usize>) = order
            .into_iter()
            .partition(|&i| matches!(ops[i], WriteOp::Run(..)));
        let mut verdicts: Vec<Option<WriteVerdict>> = vec![None; ops.len()];
        let mut tx = self.begin_write().await?;
        for round in rounds(ops, &runs) {
            Self::write_runs(&mut tx, ops, &round, &mut verdicts).await?;
        }
        for round in rounds(ops, &annotations) {
            Self::write_annotations(&mut tx, ops, &round, &mut verdicts).await?;
        }
        tx.commit().await.map_err(Self::err)?;
        let verdicts = verdicts
            .into_iter()
            .collect::<Option<Vec<WriteVerdict>>>()
            .ok_or_else(|| StoreError::Database("a write of the group got no verdict".into()))?;
        let fenced = verdicts.iter().filter(|v| v.is_fenced()).count();
        self.fenced.fetch_add(fenced as u64, Ordering::Relaxed);
        Ok(verdicts)
    }

    /// The verdict when an upsert returned no row for a write: the fence
    /// failed (`None`), or a success is already stored (its id), which a
    /// write never replaces. `sql` is the diagnosis statement, bound with
    /// the row's two key columns between the experiment and the claim.
    async fn no_row_verdict(
        tx: &mut Transaction<'static, DB>,
        sql: &'static str,
        claim: &Claim,
        key: (i64, i64),
        what: &str,
    ) -> Result<Option<i64>, StoreError> {
        let row = Self::q(sql)
            .bind(claim.experiment.0)
            .bind(key.0)
            .bind(key.1)
            .bind(claim.epoch.0)
            .bind(claim.replica.as_str().to_owned())
            .fetch_one(&mut **tx)
            .await
            .map_err(Self::err)?;
        let fence_holds: bool = Self::get(&row, 0)?;
        let existing: Option<i64> = Self::get(&row, 1)?;
        match (fence_holds, existing) {
            (false, _) => Ok(None),
            (true, Some(id)) => Ok(Some(id)),
            (true, None) => Err(StoreError::Database(format!(
                "the {what} write matched nothing although its claim holds"
            ))),
        }
    }

    /// Writes the runs `round` (indexes into `ops`, distinct identities) in
    /// one statement, and sets their verdicts.
    async fn write_runs(
        tx: &mut Transaction<'static, DB>,
        ops: &[WriteOp],
        round: &[usize],
        verdicts: &mut [Option<WriteVerdict>],
    ) -> Result<(), StoreError> {
        let sql = DB::sql().record_runs.sql(round.len(), DB::placeholder);
        // Built from placeholders only; every value is bound.
        let mut query = sqlx::query::<DB>(AssertSqlSafe(sql));
        for &i in round {
            let WriteOp::Run(claim, r) = &ops[i] else {
                continue;
            };
            query = query
                .bind(claim.experiment.0)
                .bind(r.key.example.0)
                .bind(i64::from(r.key.repetition))
                .bind(r.error.is_none())
                .bind(text(&r.output))
                .bind(text(&r.error))
                .bind(i64::from(r.attempts))
                .bind(to_i64(r.latency_ms))
                .bind(to_i64(r.total_latency_ms))
                .bind(r.usage.map(|u| to_i64(u.prompt_tokens)))
                .bind(r.usage.map(|u| to_i64(u.completion_tokens)))
                .bind(claim.epoch.0)
                .bind(claim.replica.as_str().to_owned());
        }
        let written: HashMap<(Uuid, i64, i64), i64> = query
            .fetch_all(&mut **tx)
            .await
            .map_err(Self::err)?
            .iter()
            .map(|row| {
                let key = (Self::get(row, 0)?, Self::get(row, 1)?, Self::get(row, 2)?);
                Ok((key, Self::get(row, 3)?))
            })
            .collect::<Result<_, StoreError>>()?;
        for &i in round {
            let WriteOp::Run(claim, r) = &ops[i] else {
                continue;
            };
            let (example, repetition) = (r.key.example.0, i64::from(r.key.repetition));
            let verdict = match written.get(&(claim.experiment.0, example, repetition)) {
                Some(&id) => Write::Accepted(RunWrite {
                    id: RunId(id),
                    new_success: r.error.is_none(),
                }),
                None => {
                    let sql = DB::sql().run_diagnosis;
                    let key = (example, repetition);
                    match Self::no_row_verdict(tx, sql, claim, key, "run").await? {
                        None => Write::Fenced,
                        Some(id) => Write::Accepted(RunWrite {
                            id: RunId(id),
                            new_success: false,
                        }),
                    }
                }
            };
            verdicts[i] = Some(WriteVerdict::Run(verdict));
        }
        Ok(())
    }

    /// Writes the annotations `round` (distinct identities) in one
    /// statement, and sets their verdicts.
    async fn write_annotations(
        tx: &mut Transaction<'static, DB>,
        ops: &[WriteOp],
        round: &[usize],
        verdicts: &mut [Option<WriteVerdict>],
    ) -> Result<(), StoreError> {
        let sql = DB::sql()
            .record_annotations
            .sql(round.len(), DB::placeholder);
        // Built from placeholders only; every value is bound.
        let mut query = sqlx::query::<DB>(AssertSqlSafe(sql));
        for &i in round {
            let WriteOp::Annotation(claim, a) = &ops[i] else {
                continue;
            };
            query = query
                .bind(claim.experiment.0)
                .bind(a.key.run.0)
                .bind(a.key.evaluator.0)
                .bind(a.error.is_none())
                .bind(text(&a.label))
                .bind(a.score.filter(|s| s.is_finite()))
                .bind(text(&a.explanation))
                .bind(text(&a.error))
                .bind(i64::from(a.attempts))
                .bind(to_i64(a.latency_ms))
                .bind(a.usage.map(|u| to_i64(u.prompt_tokens)))
                .bind(a.usage.map(|u| to_i64(u.completion_tokens)))
                .bind(claim.epoch.0)
                .bind(claim.replica.as_str().to_owned());
        }
        let written: HashSet<(i64, i64)> = query
            .fetch_all(&mut **tx)
            .await
            .map_err(Self::err)?
            .iter()
            .map(|row| Ok((Self::get(row, 0)?, Self::get(row, 1)?)))
            .collect::<Result<_, StoreError>>()?;
        for &i in round {
            let WriteOp::Annotation(claim, a) = &ops[i] else {
                continue;
            };
            let (run, evaluator) = (a.key.run.0, a.key.evaluator.0);
            let verdict = if written.contains(&(run, evaluator)) {
                Write::Accepted(())
            } else {
                let sql = DB::sql().annotation_diagnosis;
                match Self::no_row_verdict(tx, sql, claim, (run, evaluator), "annotation").await? {
                    None => Write::Fenced,
                    Some(_) => Write::Accepted(()),
                }
            };
            verdicts[i] = Some(WriteVerdict::Annotation(verdict));
        }
        Ok(())
    }

    pub(crate) async fn log(
        &self,
        id: ExperimentId,
        level: LogLevel,
        message: &str,
    ) -> Result<(), StoreError> {
        let row = Self::q(DB::sql().log)
            .bind(id.0)
            .bind(level.as_str().to_owned())
            .bind(clean(message))
            .fetch_optional(&self.pool)
            .await
            .map_err(Self::err)?;
        row.map(drop).ok_or(StoreError::ExperimentNotFound(id))
    }
}

impl<DB: sqlx::Database> SqlStore<DB> {
    /// Records a run through the batch writers.
    pub(crate) async fn record_run(
        &self,
        claim: &Claim,
        record: RunRecord,
    ) -> Result<Write<RunWrite>, StoreError> {
        match self
            .batcher
            .submit(WriteOp::Run(claim.clone(), record))
            .await?
        {
            WriteVerdict::Run(verdict) => Ok(verdict),
            WriteVerdict::Annotation(_) => Err(mismatch()),
        }
    }

    /// Records an annotation through the batch writers.
    pub(crate) async fn record_annotation(
        &self,
        claim: &Claim,
        record: AnnotationRecord,
    ) -> Result<Write<()>, StoreError> {
        match self
            .batcher
            .submit(WriteOp::Annotation(claim.clone(), record))
            .await?
        {
            WriteVerdict::Annotation(verdict) => Ok(verdict),
            WriteVerdict::Run(_) => Err(mismatch()),
        }
    }

    /// Waits for queued writes, then closes the pool.
    pub(crate) async fn close(self) {
        self.batcher.close().await;
        self.core.pool.close().await;
    }
}

fn mismatch() -> StoreError {
    StoreError::Database("the batch writer answered a different kind of write".into())
}

/// Text from outside (a provider's reply or error, a log message) as the
/// database can store it: PostgreSQL `text` cannot hold NUL, so every NUL
/// becomes U+FFFD — on both databases, so they store the same thing. Without
/// this one reply with a NUL failed its whole write batch, every time.
fn clean(text: &str) -> String {
    text.replace('\0', "\u{fffd}")
}

/// [`clean`] of an optional text.
fn text(value: &Option<String>) -> Option<String> {
    value.as_deref().map(clean)
}

#[cfg(test)]
mod tests {
    use runnel_core::{ExampleId, ExperimentId, ReplicaId};

    use super::*;

    fn run(experiment: u128, example: i64) -> WriteOp {
        let claim = Claim {
            experiment: ExperimentId(Uuid::from_u128(experiment)),
            replica: ReplicaId::new("r"),
            epoch: Epoch(1),
        };
        let record = RunRecord {
            key: TaskKey {
                example: ExampleId(example),
                repetition: 0,
            },
            output: None,
            error: None,
            attempts: 1,
            latency_ms: 0,
            total_latency_ms: 0,
            usage: None,
        };
        WriteOp::Run(claim, record)
    }

    #[test]
    fn repeated_identities_go_to_later_rounds_in_order() {
        let ops = vec![run(1, 5), run(1, 7), run(1, 5), run(2, 1), run(1, 5)];
        let mut sorted: Vec<usize> = (0..ops.len()).collect();
        sorted.sort_by_key(|&i| ops[i].order());
        assert_eq!(rounds(&ops, &sorted), vec![vec![0, 1, 3], vec![2], vec![4]]);
        assert!(rounds(&ops, &[]).is_empty());
    }
}
