//! The operations the HTTP API needs (API.md): datasets, experiments,
//! evaluators, result pages, logs, advisor state, readiness and the
//! migration check. Generic over [`Backend`] like the rest of the store.

use std::collections::HashMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::stream::{self, BoxStream, StreamExt};
use runnel_core::{
    BudgetReport, BudgetView, DatasetId, EvaluatorId, EvaluatorSpec, ExampleData, ExampleId,
    ExperimentId, LogLevel, RateKey, ReplicaId, RunId, SharedRate, Usage,
};
use serde_json::Value as Json;
use sqlx::{AssertSqlSafe, ColumnIndex, Decode, Encode, Executor, IntoArguments, Type};
use uuid::Uuid;

use super::{
    SqlCore, StoredEvaluator, Value, ms, parse_json, parse_status, to_i64, to_u32, to_u64,
};
use crate::backend::Backend;
use crate::error::StoreError;
use crate::types::{
    AnnotationView, DatasetInfo, ExperimentFilter, ExperimentView, LogEntry, NewEvaluator,
    NewExample, NewExperiment, Progress, RunView, RunsPage,
};

fn usage(prompt: Option<i64>, completion: Option<i64>) -> Option<Usage> {
    Some(Usage {
        prompt_tokens: u64::try_from(prompt?).ok()?,
        completion_tokens: u64::try_from(completion?).ok()?,
    })
}

fn non_empty(field: &str, value: &str) -> Result<(), StoreError> {
    if value.trim().is_empty() {
        return Err(StoreError::invalid(field, "must not be empty"));
    }
    Ok(())
}

fn stored_evaluator(new: &NewEvaluator) -> Result<String, StoreError> {
    serde_json::to_string(&StoredEvaluator {
        call: new.call.clone(),
        labels: new.labels.clone(),
    })
    .map_err(|e| StoreError::invalid("evaluators", e.to_string()))
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
    // ----- datasets -----------------------------------------------------------

    /// Inserts `examples` into `dataset` inside `tx`, in multi-row statements.
    async fn insert_examples(
        &self,
        tx: &mut sqlx::Transaction<'static, DB>,
        dataset: DatasetId,
        examples: &[NewExample],
    ) -> Result<(), StoreError> {
        for chunk in examples.chunks(self.tuning.examples_per_statement) {
            let sql = DB::sql().insert_examples.sql(chunk.len(), DB::placeholder);
            // Built from placeholders only; every value is bound.
            let mut query = sqlx::query::<DB>(AssertSqlSafe(sql));
            for example in chunk {
                let metadata = match &example.metadata {
                    Some(m) if !m.is_null() => m.to_string(),
                    _ => "{}".to_owned(),
                };
                query = query
                    .bind(dataset.0)
                    .bind(example.input.to_string())
                    .bind(example.expected.as_ref().map(Json::to_string))
                    .bind(metadata);
            }
            query.execute(&mut **tx).await.map_err(Self::err)?;
        }
        Ok(())
    }

    /// After a large import, refreshes the planner's statistics where the
    /// database plans from them. Best effort: a failure only costs speed.
    async fn after_import(&self, examples: usize) {
        if let Some(sql) = DB::sql().after_import
            && examples >= self.tuning.analyze_after
            && let Err(e) = Self::q(sql).execute(&self.pool).await
        {
            tracing::warn!(error = %e, "refreshing statistics after an import failed");
        }
    }

    fn validate_examples(examples: &[NewExample]) -> Result<(), StoreError> {
        examples
            .iter()
            .enumerate()
            .try_for_each(|(i, e)| e.validate(i))
    }

    fn dataset_info(row: &DB::Row) -> Result<DatasetInfo, StoreError> {
        Ok(DatasetInfo {
            id: DatasetId(Self::get(row, 0)?),
            name: Self::get(row, 1)?,
            created_at: Self::get(row, 2)?,
            example_count: to_u64(Self::get(row, 3)?, "example_count")?,
        })
    }

    /// Creates a dataset with its examples in one transaction: either all of
    /// it is stored or nothing is.
    pub(crate) async fn create_dataset(
        &self,
        name: &str,
        examples: &[NewExample],
    ) -> Result<DatasetInfo, StoreError> {
        non_empty("name", name)?;
        Self::validate_examples(examples)?;
        let id = DatasetId(Uuid::now_v7());
        let mut tx = self.begin_write().await?;
        Self::q(DB::sql().insert_dataset)
            .bind(id.0)
            .bind(name.to_owned())
            .execute(&mut *tx)
            .await
            .map_err(Self::err)?;
        self.insert_examples(&mut tx, id, examples).await?;
        tx.commit().await.map_err(Self::err)?;
        self.after_import(examples.len()).await;
        self.dataset(id).await
    }

    /// Appends examples to a dataset in one transaction; returns the new
    /// example count.
    pub(crate) async fn append_examples(
        &self,
        id: DatasetId,
        examples: &[NewExample],
    ) -> Result<u64, StoreError> {
        Self::validate_examples(examples)?;
        let mut tx = self.begin_write().await?;
        self.dataset_exists(&mut *tx, id).await?;
        self.insert_examples(&mut tx, id, examples).await?;
        tx.commit().await.map_err(Self::err)?;
        self.after_import(examples.len()).await;
        Ok(self.dataset(id).await?.example_count)
    }

    /// Up to `limit` examples of a dataset after `after`, in id order.
    pub(crate) async fn examples_page(
        &self,
        id: DatasetId,
        after: Option<ExampleId>,
        limit: usize,
    ) -> Result<Vec<(ExampleId, ExampleData)>, StoreError> {
        self.dataset_exists(&self.pool, id).await?;
        Self::q(DB::sql().examples_page)
            .bind(id.0)
            .bind(after.map_or(i64::MIN, |e| e.0))
            .bind(i64::try_from(limit.clamp(1, self.tuning.max_page)).unwrap_or(i64::MAX))
            .fetch_all(&self.pool)
            .await
            .map_err(Self::err)?
            .iter()
            .map(|row| {
                let example: i64 = Self::get(row, 0)?;
                Ok((ExampleId(example), Self::example_data(row, 1, example)?))
            })
            .collect()
    }

    async fn dataset_exists<'c, E>(&self, conn: E, id: DatasetId) -> Result<(), StoreError>
    where
        E: Executor<'c, Database = DB>,
    {
        Self::q(DB::sql().dataset_exists)
            .bind(id.0)
            .fetch_optional(conn)
            .await
            .map_err(Self::err)?
            .map(drop)
            .ok_or(StoreError::DatasetNotFound(id))
    }

    pub(crate) async fn dataset(&self, id: DatasetId) -> Result<DatasetInfo, StoreError> {
        let row = Self::q(DB::sql().dataset)
            .bind(id.0)
            .fetch_optional(&self.pool)
            .await
            .map_err(Self::err)?
            .ok_or(StoreError::DatasetNotFound(id))?;
        Self::dataset_info(&row)
    }

    pub(crate) async fn datasets(&self) -> Result<Vec<DatasetInfo>, StoreError> {
        Self::q(DB::sql().datasets)
            .fetch_all(&self.pool)
            .await
            .map_err(Self::err)?
            .iter()
            .map(Self::dataset_info)
            .collect()
    }

    // ----- experiments ----------------------------------------------------------

    /// Creates an experiment (status STOPPED) with its evaluators, in one
    /// transaction.
    pub(crate) async fn create_experiment(
        &self,
        new: &NewExperiment,
    ) -> Result<ExperimentId, StoreError> {
        non_empty("name", &new.name)?;
        if new.repetitions < 1 {
            return Err(StoreError::invalid("repetitions", "must be at least 1"));
        }
        if new.max_concurrency == Some(0) {
            return Err(StoreError::invalid(
                "max_concurrency",
                "must be at least 1 when set",
            ));
        }
        let mut names = std::collections::HashSet::new();
        for (i, e) in new.evaluators.iter().enumerate() {
            non_empty(&format!("evaluators[{i}].name"), &e.name)?;
            if !names.insert(e.name.as_str()) {
                return Err(StoreError::invalid(
                    format!("evaluators[{i}].name"),
                    format!("`{}` is used by another evaluator", e.name),
                ));
            }
        }
        let task = serde_json::to_string(&new.task)
            .map_err(|e| StoreError::invalid("task", e.to_string()))?;
        let id = ExperimentId(Uuid::now_v7());
        let mut tx = self.begin_write().await?;
        self.dataset_exists(&mut *tx, new.dataset_id).await?;
        Self::q(DB::sql().insert_experiment)
            .bind(id.0)
            .bind(new.name.clone())
            .bind(new.dataset_id.0)
            .bind(i64::from(new.repetitions))
            .bind(new.max_concurrency.map(i64::from))
            .bind(task)
            .execute(&mut *tx)
            .await
            .map_err(Self::err)?;
        for evaluator in &new.evaluators {
            Self::q(DB::sql().insert_evaluator)
                .bind(id.0)
                .bind(evaluator.name.clone())
                .bind(stored_evaluator(evaluator)?)
                .fetch_one(&mut *tx)
                .await
                .map_err(Self::err)?;
        }
        tx.commit().await.map_err(Self::err)?;
        Ok(id)
    }

    /// Attaches one more evaluator; the next resume scores existing runs with it.
    pub(crate) async fn attach_evaluator(
        &self,
        id: ExperimentId,
        new: &NewEvaluator,
    ) -> Result<EvaluatorSpec, StoreError> {
        non_empty("name", &new.name)?;
        let spec = stored_evaluator(new)?;
        let mut tx = self.begin_write().await?;
        self.require_experiment(&mut *tx, id).await?;
        let row = Self::q(DB::sql().insert_evaluator)
            .bind(id.0)
            .bind(new.name.clone())
            .bind(spec)
            .fetch_one(&mut *tx)
            .await
            .map_err(|e| match Self::err(e) {
                StoreError::Conflict(_) => StoreError::Conflict(format!(
                    "experiment {id} already has an evaluator named `{}`",
                    new.name
                )),
                other => other,
            })?;
        let evaluator = EvaluatorId(Self::get(&row, 0)?);
        tx.commit().await.map_err(Self::err)?;
        Ok(EvaluatorSpec {
            id: evaluator,
            name: new.name.clone(),
            call: new.call.clone(),
            labels: new.labels.clone(),
        })
    }

    /// Fails with [`StoreError::ExperimentNotFound`] when `id` does not exist.
    pub(super) async fn require_experiment<'c, E>(
        &self,
        conn: E,
        id: ExperimentId,
    ) -> Result<(), StoreError>
    where
        E: Executor<'c, Database = DB>,
    {
        Self::q(DB::sql().experiment_exists)
            .bind(id.0)
            .fetch_optional(conn)
            .await
            .map_err(Self::err)?
            .map(drop)
            .ok_or(StoreError::ExperimentNotFound(id))
    }

    fn experiment_view(row: &DB::Row) -> Result<ExperimentView, StoreError> {
        let count =
            |i: usize, what: &str| -> Result<u64, StoreError> { to_u64(Self::get(row, i)?, what) };
        let repetitions = to_u32(Self::get(row, 6)?, "repetitions")?;
        let max_concurrency: Option<i64> = Self::get(row, 7)?;
        let status: String = Self::get(row, 3)?;
        let runs_succeeded = count(12, "runs_succeeded")?;
        Ok(ExperimentView {
            id: ExperimentId(Self::get(row, 0)?),
            name: Self::get(row, 1)?,
            dataset_id: DatasetId(Self::get(row, 2)?),
            status: parse_status(&status)?,
            last_error: Self::get(row, 4)?,
            claimed_by: Self::get(row, 5)?,
            repetitions,
            max_concurrency: max_concurrency
                .map(|n| to_u32(n, "max_concurrency"))
                .transpose()?,
            epoch: Self::get(row, 8)?,
            created_at: Self::get(row, 9)?,
            updated_at: Self::get(row, 10)?,
            progress: Progress {
                runs_expected: count(11, "examples")?.saturating_mul(u64::from(repetitions)),
                runs_succeeded,
                runs_failed: count(13, "runs_failed")?,
                annotations_expected: runs_succeeded.saturating_mul(count(14, "evaluators")?),
                annotations_done: count(15, "annotations_done")?,
                annotations_failed: count(16, "annotations_failed")?,
            },
        })
    }

    pub(crate) async fn experiment(&self, id: ExperimentId) -> Result<ExperimentView, StoreError> {
        let row = Self::q(DB::sql().experiment)
            .bind(id.0)
            .fetch_optional(&self.pool)
            .await
            .map_err(Self::err)?
            .ok_or(StoreError::ExperimentNotFound(id))?;
        Self::experiment_view(&row)
    }

    pub(crate) async fn experiments(
        &self,
        filter: &ExperimentFilter,
    ) -> Result<Vec<ExperimentView>, StoreError> {
        Self::q(DB::sql().experiments)
            .bind(filter.dataset_id.map(|d| d.0))
            .bind(filter.status.map(|s| s.as_str().to_owned()))
            .fetch_all(&self.pool)
            .await
            .map_err(Self::err)?
            .iter()
            .map(Self::experiment_view)
            .collect()
    }

    // ----- results ----------------------------------------------------------------

    fn run_view(row: &DB::Row) -> Result<RunView, StoreError> {
        Ok(RunView {
            id: RunId(Self::get(row, 0)?),
            example_id: ExampleId(Self::get(row, 1)?),
            repetition: to_u32(Self::get(row, 2)?, "repetition")?,
            output: Self::get(row, 3)?,
            error: Self::get(row, 4)?,
            attempts: to_u32(Self::get(row, 5)?, "attempts")?,
            latency_ms: to_u64(Self::get(row, 6)?, "latency_ms")?,
            total_latency_ms: to_u64(Self::get(row, 7)?, "total_latency_ms")?,
            usage: usage(Self::get(row, 8)?, Self::get(row, 9)?),
            epoch: Self::get(row, 10)?,
            started_at: Self::get(row, 11)?,
            finished_at: Self::get(row, 12)?,
            annotations: Vec::new(),
        })
    }

    fn annotation_view(row: &DB::Row) -> Result<(i64, AnnotationView), StoreError> {
        Ok((
            Self::get(row, 0)?,
            AnnotationView {
                evaluator: Self::get(row, 1)?,
                evaluator_id: EvaluatorId(Self::get(row, 2)?),
                label: Self::get(row, 3)?,
                score: Self::get(row, 4)?,
                explanation: Self::get(row, 5)?,
                error: Self::get(row, 6)?,
                attempts: to_u32(Self::get(row, 7)?, "attempts")?,
                latency_ms: to_u64(Self::get(row, 8)?, "latency_ms")?,
                usage: usage(Self::get(row, 9)?, Self::get(row, 10)?),
                epoch: Self::get(row, 11)?,
            },
        ))
    }

    /// Up to `limit` runs after `after`, in id order, each with its
    /// annotations.
    pub(crate) async fn runs_page(
        &self,
        id: ExperimentId,
        after: Option<RunId>,
        limit: usize,
    ) -> Result<RunsPage, StoreError> {
        self.require_experiment(&self.pool, id).await?;
        let limit = limit.clamp(1, self.tuning.max_page);
        let rows = Self::q(DB::sql().runs_page)
            .bind(id.0)
            .bind(after.map_or(i64::MIN, |r| r.0))
            .bind(i64::try_from(limit + 1).unwrap_or(i64::MAX))
            .fetch_all(&self.pool)
            .await
            .map_err(Self::err)?;
        let mut items = rows
            .iter()
            .map(Self::run_view)
            .collect::<Result<Vec<_>, _>>()?;
        let more = items.len() > limit;
        items.truncate(limit);
        if let (Some(first), Some(last)) = (items.first(), items.last()) {
            let (first, last) = (first.id.0, last.id.0);
            let mut by_run: HashMap<i64, Vec<AnnotationView>> = HashMap::new();
            for row in Self::q(DB::sql().annotations_of_runs)
                .bind(id.0)
                .bind(first)
                .bind(last)
                .fetch_all(&self.pool)
                .await
                .map_err(Self::err)?
            {
                let (run, view) = Self::annotation_view(&row)?;
                by_run.entry(run).or_default().push(view);
            }
            for item in &mut items {
                item.annotations = by_run.remove(&item.id.0).unwrap_or_default();
            }
        }
        let next_cursor = more.then(|| items.last().map(|r| r.id)).flatten();
        Ok(RunsPage { items, next_cursor })
    }

    /// Every run of the experiment, page by page (so no connection is held
    /// between pages); ends with an error item if a page fails.
    pub(crate) fn runs_stream(
        &self,
        id: ExperimentId,
    ) -> BoxStream<'static, Result<RunView, StoreError>> {
        let core = self.clone();
        let page_size = self.tuning.export_page;
        // State: the cursor, or `None` once the last page has been read.
        stream::unfold(Some(None::<RunId>), move |cursor| {
            let core = core.clone();
            async move {
                let after = cursor?;
                match core.runs_page(id, after, page_size).await {
                    Ok(page) => {
                        let next = page.next_cursor.map(Some);
                        let items: Vec<_> = page.items.into_iter().map(Ok).collect();
                        Some((stream::iter(items), next))
                    }
                    Err(e) => Some((stream::iter(vec![Err(e)]), None)),
                }
            }
        })
        .flatten()
        .boxed()
    }

    /// Log entries, newest first, before entry `before` (all when `None`).
    pub(crate) async fn logs(
        &self,
        id: ExperimentId,
        before: Option<i64>,
        limit: usize,
    ) -> Result<Vec<LogEntry>, StoreError> {
        self.require_experiment(&self.pool, id).await?;
        let limit = limit.clamp(1, self.tuning.max_page);
        Self::q(DB::sql().logs)
            .bind(id.0)
            .bind(before.unwrap_or(i64::MAX))
            .bind(i64::try_from(limit).unwrap_or(i64::MAX))
            .fetch_all(&self.pool)
            .await
            .map_err(Self::err)?
            .iter()
            .map(|row| {
                let level: String = Self::get(row, 1)?;
                Ok(LogEntry {
                    id: Self::get(row, 0)?,
                    level: match level.as_str() {
                        "info" => LogLevel::Info,
                        "warn" => LogLevel::Warn,
                        "error" => LogLevel::Error,
                        other => {
                            return Err(StoreError::corrupt(format!("log level `{other}`")));
                        }
                    },
                    message: Self::get(row, 2)?,
                    created_at: Self::get(row, 3)?,
                })
            })
            .collect()
    }

    // ----- advisor state ------------------------------------------------------

    pub(crate) async fn save_rate_state(
        &self,
        key: &RateKey,
        state: &Json,
    ) -> Result<(), StoreError> {
        Self::q(DB::sql().save_rate_state)
            .bind(key.as_str().to_owned())
            .bind(state.to_string())
            .execute(&self.pool)
            .await
            .map_err(Self::err)
            .map(drop)
    }

    pub(crate) async fn load_rate_state(&self) -> Result<Vec<(RateKey, Json)>, StoreError> {
        Self::q(DB::sql().load_rate_state)
            .fetch_all(&self.pool)
            .await
            .map_err(Self::err)?
            .iter()
            .map(|row| {
                let key: String = Self::get(row, 0)?;
                let state: String = Self::get(row, 1)?;
                let state = parse_json(&state, &format!("rate state of `{key}`"))?;
                Ok((RateKey::from_raw(key), state))
            })
            .collect()
    }

    // ----- shared rate budget (issue 14) ---------------------------------

    /// One sync of `replica`'s budget reports; see `Sql::budget_sync`.
    pub(crate) async fn budget_sync(
        &self,
        replica: &ReplicaId,
        lease: Duration,
        reports: &[BudgetReport],
    ) -> Result<Vec<BudgetView>, StoreError> {
        if reports.is_empty() {
            return Ok(Vec::new());
        }
        let statements = DB::sql().budget_sync;
        let bind = |mut query: sqlx::query::Query<'static, DB, DB::Arguments>| {
            for r in reports {
                let p = r.proposal.as_ref();
                query = query
                    .bind(r.key.as_str().to_owned())
                    .bind(replica.as_str().to_owned())
                    .bind(ms(lease))
                    .bind(to_i64(r.demand))
                    .bind(r.based_on)
                    .bind(r.decreased)
                    .bind(p.map(|p| p.rate_rps))
                    .bind(p.map(|p| p.good_rps))
                    .bind(p.and_then(|p| p.last_429_rps))
                    .bind(p.map(|p| p.learned_from.clone()))
                    .bind(p.and_then(|p| p.token_rate_tps))
                    .bind(to_i64(r.paused_ms));
            }
            query
        };
        let query = |i: usize| {
            // Built from placeholders only; every value is bound.
            bind(sqlx::query::<DB>(AssertSqlSafe(
                statements[i].sql(reports.len(), DB::placeholder),
            )))
        };
        let last = statements.len() - 1;
        let rows = if last == 0 {
            // One statement (PostgreSQL): atomic by itself, one round trip.
            query(0).fetch_all(&self.pool).await.map_err(Self::err)?
        } else {
            let mut tx = self.begin_write().await?;
            for i in 0..last {
                query(i).execute(&mut *tx).await.map_err(Self::err)?;
            }
            let rows = query(last).fetch_all(&mut *tx).await.map_err(Self::err)?;
            tx.commit().await.map_err(Self::err)?;
            rows
        };
        rows.iter()
            .map(|row| {
                let key: String = Self::get(row, 0)?;
                let rate: Option<f64> = Self::get(row, 2)?;
                let shared = match rate {
                    None => None,
                    Some(rate_rps) => Some(SharedRate {
                        rate_rps,
                        good_rps: Self::get(row, 3)?,
                        last_429_rps: Self::get(row, 4)?,
                        learned_from: Self::get(row, 5)?,
                        token_rate_tps: Self::get(row, 6)?,
                    }),
                };
                let paused: i64 = Self::get(row, 7)?;
                let total: i64 = Self::get(row, 8)?;
                let members: i64 = Self::get(row, 9)?;
                Ok(BudgetView {
                    key: RateKey::from_raw(key),
                    version: Self::get(row, 1)?,
                    rate: shared,
                    paused_ms: to_u64(paused, "budget pause")?,
                    total_demand: to_u64(total, "budget demand")?,
                    members: to_u32(members, "budget members")?,
                })
            })
            .collect()
    }

    /// Removes `replica` from every budget.
    pub(crate) async fn budget_leave(&self, replica: &ReplicaId) -> Result<(), StoreError> {
        Self::q(DB::sql().budget_leave)
            .bind(replica.as_str().to_owned())
            .execute(&self.pool)
            .await
            .map_err(Self::err)
            .map(drop)
    }

    // ----- migrations and readiness ----------------------------------------------

    /// The highest migration version this binary embeds.
    pub(crate) fn known_migration() -> i64 {
        DB::migrator().iter().map(|m| m.version).max().unwrap_or(0)
    }

    /// The highest migration applied to the database (0 when none), refusing
    /// a database where a migration failed part-way.
    pub(crate) async fn applied_migration(&self) -> Result<i64, StoreError> {
        let exists = Self::q(DB::sql().migrations_table_exists)
            .fetch_optional(&self.pool)
            .await
            .map_err(Self::err)?;
        if exists.is_none() {
            return Ok(0);
        }
        let row = Self::q(DB::sql().migration_state)
            .fetch_one(&self.pool)
            .await
            .map_err(Self::err)?;
        let applied: Option<i64> = Self::get(&row, 0)?;
        let failed: bool = Self::get(&row, 1)?;
        if failed {
            return Err(StoreError::Migrate(
                "a migration failed part-way on this database; repair it by hand \
                 (see the _sqlx_migrations table) before runnel can use it"
                    .into(),
            ));
        }
        Ok(applied.unwrap_or(0))
    }

    /// Compares the database's migrations with the binary's: refuses a newer
    /// database, and one with migrations pending.
    async fn check_migrations(&self) -> Result<(), StoreError> {
        let applied = self.applied_migration().await?;
        let known = Self::known_migration();
        if applied > known {
            return Err(StoreError::MigrationsNewer { applied, known });
        }
        if applied < known {
            return Err(StoreError::MigrationsPending { applied, known });
        }
        Ok(())
    }

    /// Brings the database to this binary's migrations: refuses a newer
    /// database; applies pending migrations when `auto_migrate`, else refuses
    /// to run without them. Concurrent replicas may call this at once (the
    /// migrator serialises them with a lock on PostgreSQL, and SQLite has one
    /// writer).
    pub(crate) async fn prepare(&self, auto_migrate: bool) -> Result<(), StoreError> {
        match self.check_migrations().await {
            Err(StoreError::MigrationsPending { .. }) if auto_migrate => DB::migrator()
                .run(&self.pool)
                .await
                .map_err(|e| StoreError::Migrate(e.to_string())),
            checked => checked,
        }
    }

    /// Readiness: the database answers, every migration is applied, and a
    /// write transaction can begin. On SQLite (WAL) another process holding
    /// the write lock leaves reads working while every result write waits and
    /// fails: opening a write transaction is what tells. It is rolled back
    /// at once. [`crate::Db::ready`] bounds the whole check by `ready_timeout`.
    pub(crate) async fn ready(&self) -> Result<(), StoreError> {
        self.check_migrations().await?;
        let tx = self.begin_write().await?;
        tx.rollback().await.map_err(Self::err)
    }
}
