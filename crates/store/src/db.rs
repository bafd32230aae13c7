//! [`Db`]: the one store type the server uses, on SQLite or PostgreSQL
//! depending on the URL. It implements the core's [`Store`] port and offers
//! the operations the HTTP API needs.

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use futures::stream::BoxStream;
use runnel_core::work::EvalWork;
use runnel_core::work::{EvalCursor, TaskCursor};
use runnel_core::{
    AnnotationRecord, Claim, DatasetId, EvaluatorSpec, ExampleData, ExampleId, ExperimentId,
    ExperimentPlan, Finish, LogLevel, RateKey, ReplicaId, RunId, RunRecord, RunWrite, Store,
    TaskWork, Write,
};
use serde_json::Value as Json;
use sqlx::pool::PoolOptions;
use sqlx::postgres::{PgConnectOptions, PgListener};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqliteSynchronous};
use sqlx::{Postgres, Sqlite};

use crate::backend::Backend as _;
use crate::batch::BatchLimits;
use crate::config::{StoreConfig, redact_url};
use crate::error::StoreError;
use crate::sql::{SqlCore, SqlStore, Tuning};
use crate::types::{
    ControlEvent, DatasetInfo, ExperimentFilter, ExperimentView, LogEntry, NewEvaluator,
    NewExample, NewExperiment, RunView, RunsPage, Transition,
};

/// Which database a URL names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DatabaseKind {
    /// An embedded SQLite file (`sqlite://…`, `sqlite:…`).
    Sqlite,
    /// A PostgreSQL server (`postgres://…`, `postgresql://…`).
    Postgres,
}

impl DatabaseKind {
    /// The database `url` names, if it is one runnel supports.
    pub fn of_url(url: &str) -> Option<Self> {
        let scheme = url.split(':').next()?.to_ascii_lowercase();
        match scheme.as_str() {
            "sqlite" => Some(Self::Sqlite),
            "postgres" | "postgresql" => Some(Self::Postgres),
            _ => None,
        }
    }

    /// `sqlite` or `postgres`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Sqlite => "sqlite",
            Self::Postgres => "postgres",
        }
    }
}

enum Inner {
    Sqlite(SqlStore<Sqlite>),
    Postgres(SqlStore<Postgres>),
}

/// The store: a connection pool on SQLite or PostgreSQL, with batch writers.
///
/// ```
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// use runnel_store::{Db, StoreConfig};
/// let db = Db::connect(&StoreConfig::for_url("sqlite::memory:")).await.unwrap();
/// let dataset = db.create_dataset("demo", &[]).await.unwrap();
/// assert_eq!(dataset.example_count, 0);
/// db.close().await;
/// # });
/// ```
pub struct Db {
    inner: Inner,
    /// The SQLite file, when the database is one.
    sqlite_file: Option<PathBuf>,
    /// Longest wait of [`Db::ready`].
    ready_timeout: Duration,
}

/// Runs `$body` with `$s` bound to the store of whichever database this is.
macro_rules! on {
    ($self:expr, $s:ident => $body:expr) => {
        match &$self.inner {
            Inner::Sqlite($s) => $body,
            Inner::Postgres($s) => $body,
        }
    };
}

fn config_error(e: sqlx::Error, url: &str) -> StoreError {
    StoreError::Config {
        key: "url",
        message: format!("cannot use `{}`: {e}", redact_url(url)),
    }
}

fn sqlite_options(config: &StoreConfig) -> Result<SqliteConnectOptions, StoreError> {
    Ok(SqliteConnectOptions::from_str(&config.url)
        .map_err(|e| config_error(e, &config.url))?
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(match config.sqlite_synchronous {
            crate::SqliteSynchronous::Off => SqliteSynchronous::Off,
            crate::SqliteSynchronous::Normal => SqliteSynchronous::Normal,
            crate::SqliteSynchronous::Full => SqliteSynchronous::Full,
            crate::SqliteSynchronous::Extra => SqliteSynchronous::Extra,
        })
        .busy_timeout(config.busy_timeout)
        .foreign_keys(true))
}

fn is_memory(options: &SqliteConnectOptions) -> bool {
    options
        .get_filename()
        .to_string_lossy()
        .starts_with("file:sqlx-in-memory")
}

fn pool_options<DB: sqlx::Database>(config: &StoreConfig) -> PoolOptions<DB> {
    PoolOptions::new()
        .max_connections(config.max_connections)
        .min_connections(config.min_connections)
        .acquire_timeout(config.acquire_timeout)
}

fn limits(config: &StoreConfig, kind: DatabaseKind) -> BatchLimits {
    BatchLimits {
        size: config.batch_size,
        window: config.batch_window,
        queue: config.batch_queue,
        // SQLite serialises writers; a second one would wait on the lock
        // with SQLite's sleeping busy handler (measured: a third of the
        // throughput).
        writers: match kind {
            DatabaseKind::Sqlite => 1,
            DatabaseKind::Postgres => config.batch_writers,
        },
    }
}

impl Db {
    /// Connects to the database `config.url` names (creating a SQLite file
    /// when missing), checks its migrations, and starts the batch writers.
    /// Must be called inside a tokio runtime.
    pub async fn connect(config: &StoreConfig) -> Result<Self, StoreError> {
        config.validate()?;
        match DatabaseKind::of_url(&config.url) {
            Some(DatabaseKind::Sqlite) => {
                let options = sqlite_options(config)?;
                let mut pool = pool_options::<Sqlite>(config);
                let file = if is_memory(&options) {
                    // An in-memory database lives as long as a connection to
                    // it does, and shared-cache connections lock whole tables
                    // without waiting: keep exactly one connection, forever.
                    pool = pool
                        .max_connections(1)
                        .min_connections(1)
                        .idle_timeout(None)
                        .max_lifetime(None);
                    None
                } else {
                    let file = options.get_filename().to_path_buf();
                    if let Some(dir) = file.parent().filter(|d| !d.as_os_str().is_empty()) {
                        std::fs::create_dir_all(dir).map_err(|e| StoreError::Config {
                            key: "url",
                            message: format!("cannot create {}: {e}", dir.display()),
                        })?;
                    }
                    Some(file)
                };
                let pool = pool.connect_with(options).await.map_err(|e| {
                    StoreError::Unavailable(format!("cannot open {}: {e}", config.url))
                })?;
                let core = SqlCore::new(pool, Tuning::of(config));
                core.prepare(config.auto_migrate).await?;
                Ok(Self {
                    inner: Inner::Sqlite(core.into_store(limits(config, DatabaseKind::Sqlite))),
                    sqlite_file: file,
                    ready_timeout: config.ready_timeout,
                })
            }
            Some(DatabaseKind::Postgres) => {
                let options = PgConnectOptions::from_str(&config.url)
                    .map_err(|e| config_error(e, &config.url))?
                    .application_name("runnel");
                let pool = pool_options::<Postgres>(config)
                    .connect_with(options)
                    .await
                    .map_err(|e| {
                        StoreError::Unavailable(format!(
                            "cannot connect to {}: {e}",
                            redact_url(&config.url)
                        ))
                    })?;
                let core = SqlCore::new(pool, Tuning::of(config));
                core.prepare(config.auto_migrate).await?;
                Ok(Self {
                    inner: Inner::Postgres(core.into_store(limits(config, DatabaseKind::Postgres))),
                    sqlite_file: None,
                    ready_timeout: config.ready_timeout,
                })
            }
            // `validate` has refused any other URL.
            None => Err(StoreError::Config {
                key: "url",
                message: format!("unsupported database URL `{}`", redact_url(&config.url)),
            }),
        }
    }

    /// Which database this is.
    pub fn kind(&self) -> DatabaseKind {
        match self.inner {
            Inner::Sqlite(_) => DatabaseKind::Sqlite,
            Inner::Postgres(_) => DatabaseKind::Postgres,
        }
    }

    /// The replica identity to use: `configured` when given; on a SQLite
    /// file, the identity kept beside it (generated on first use); otherwise
    /// a random one for this process (DESIGN §4).
    pub fn replica_id(&self, configured: Option<&str>) -> Result<ReplicaId, StoreError> {
        match (configured.map(str::trim), &self.sqlite_file) {
            (Some(name), _) if !name.is_empty() => Ok(ReplicaId::new(name)),
            (_, Some(file)) => crate::replica::replica_id_beside(file),
            _ => Ok(crate::replica::random_replica_id()),
        }
    }

    /// The SQLite file, when the database is one.
    pub fn sqlite_file(&self) -> Option<&Path> {
        self.sqlite_file.as_deref()
    }

    /// Run and annotation writes rejected by the fence since connecting (a
    /// metric: writes from a replica that lost its claim).
    pub fn fenced_writes(&self) -> u64 {
        on!(self, s => s.core.fenced_writes())
    }

    /// Readiness: the database answers, every migration is applied and a
    /// write transaction can begin, all within `ready_timeout`. A database
    /// that is down or locked is reported as unavailable after that long,
    /// not after the pool's `acquire_timeout` or SQLite's `busy_timeout`.
    pub async fn ready(&self) -> Result<(), StoreError> {
        let check = async { on!(self, s => s.core.ready().await) };
        match tokio::time::timeout(self.ready_timeout, check).await {
            Ok(answer) => answer,
            Err(_) => Err(StoreError::Unavailable(format!(
                "the database did not answer the readiness check within {:?} (store ready_timeout)",
                self.ready_timeout
            ))),
        }
    }

    /// Listens for stop/resume/delete announcements of other replicas.
    /// `None` on SQLite, where a single replica serves every request itself.
    pub async fn listen(&self) -> Result<Option<Listener>, StoreError> {
        match &self.inner {
            Inner::Sqlite(_) => Ok(None),
            Inner::Postgres(s) => {
                let err = |e| StoreError::from_sqlx(e, Postgres::is_transient);
                let mut listener = PgListener::connect_with(s.core.pool()).await.map_err(err)?;
                listener
                    .listen(crate::postgres::CHANNEL)
                    .await
                    .map_err(err)?;
                Ok(Some(Listener { inner: listener }))
            }
        }
    }

    /// Waits until every queued write is committed, then closes the pool.
    pub async fn close(self) {
        match self.inner {
            Inner::Sqlite(s) => s.close().await,
            Inner::Postgres(s) => s.close().await,
        }
    }

    // ----- lifecycle --------------------------------------------------------

    /// Starts an experiment for `replica`: claims it with a new epoch when
    /// nobody holds it (no cooldown is set). `AlreadyInState(Running)` when
    /// someone does.
    pub async fn start(
        &self,
        id: ExperimentId,
        replica: &ReplicaId,
    ) -> Result<Transition<Claim>, StoreError> {
        on!(self, s => s.core.claim_for(id, replica, None).await)
    }

    /// Resumes an experiment for `replica` (a user toggle): like `start`, but
    /// refused while the cooldown of the previous toggle runs, and sets a new
    /// cooldown.
    pub async fn resume(
        &self,
        id: ExperimentId,
        replica: &ReplicaId,
        cooldown: Duration,
    ) -> Result<Transition<Claim>, StoreError> {
        on!(self, s => s.core.claim_for(id, replica, Some(cooldown)).await)
    }

    /// Stops a RUNNING experiment (a user toggle): clears its claim, keeps
    /// its epoch (so the owner's in-flight results are still stored), sets a
    /// cooldown. `AlreadyInState(status)` when it is not running.
    pub async fn stop(
        &self,
        id: ExperimentId,
        cooldown: Duration,
    ) -> Result<Transition<()>, StoreError> {
        on!(self, s => s.core.stop(id, cooldown).await)
    }

    /// Deletes an experiment with its runs, annotations, evaluators and
    /// logs. False when it did not exist.
    pub async fn delete_experiment(&self, id: ExperimentId) -> Result<bool, StoreError> {
        on!(self, s => s.core.delete_experiment(id).await)
    }

    // ----- datasets -----------------------------------------------------------

    /// Creates a dataset with its examples in one transaction (nothing is
    /// stored when any example is invalid or the write fails).
    pub async fn create_dataset(
        &self,
        name: &str,
        examples: &[NewExample],
    ) -> Result<DatasetInfo, StoreError> {
        on!(self, s => s.core.create_dataset(name, examples).await)
    }

    /// Appends examples in one transaction; returns the new example count.
    pub async fn append_examples(
        &self,
        id: DatasetId,
        examples: &[NewExample],
    ) -> Result<u64, StoreError> {
        on!(self, s => s.core.append_examples(id, examples).await)
    }

    /// Up to `limit` (at most `max_page`) examples of a dataset after `after`, in
    /// id order (the order work is handed out in).
    pub async fn examples_page(
        &self,
        id: DatasetId,
        after: Option<ExampleId>,
        limit: usize,
    ) -> Result<Vec<(ExampleId, ExampleData)>, StoreError> {
        on!(self, s => s.core.examples_page(id, after, limit).await)
    }

    /// One dataset.
    pub async fn dataset(&self, id: DatasetId) -> Result<DatasetInfo, StoreError> {
        on!(self, s => s.core.dataset(id).await)
    }

    /// Every dataset, oldest first.
    pub async fn datasets(&self) -> Result<Vec<DatasetInfo>, StoreError> {
        on!(self, s => s.core.datasets().await)
    }

    // ----- experiments ----------------------------------------------------------

    /// Creates an experiment (status STOPPED) with its evaluators.
    pub async fn create_experiment(&self, new: &NewExperiment) -> Result<ExperimentId, StoreError> {
        on!(self, s => s.core.create_experiment(new).await)
    }

    /// One experiment with its progress.
    pub async fn experiment(&self, id: ExperimentId) -> Result<ExperimentView, StoreError> {
        on!(self, s => s.core.experiment(id).await)
    }

    /// Experiments matching `filter`, oldest first, with their progress.
    pub async fn experiments(
        &self,
        filter: &ExperimentFilter,
    ) -> Result<Vec<ExperimentView>, StoreError> {
        on!(self, s => s.core.experiments(filter).await)
    }

    /// Attaches one more evaluator; the next resume scores existing runs with it.
    pub async fn attach_evaluator(
        &self,
        id: ExperimentId,
        new: &NewEvaluator,
    ) -> Result<EvaluatorSpec, StoreError> {
        on!(self, s => s.core.attach_evaluator(id, new).await)
    }

    /// Up to `limit` (at most `max_page`) runs after `after`, each with its annotations.
    pub async fn runs_page(
        &self,
        id: ExperimentId,
        after: Option<RunId>,
        limit: usize,
    ) -> Result<RunsPage, StoreError> {
        on!(self, s => s.core.runs_page(id, after, limit).await)
    }

    /// Every run of the experiment with its annotations, read page by page.
    pub fn runs_stream(&self, id: ExperimentId) -> BoxStream<'static, Result<RunView, StoreError>> {
        on!(self, s => s.core.runs_stream(id))
    }

    /// Log entries newest first, before entry `before` (from the newest when
    /// `None`), at most `limit` (at most 1000).
    pub async fn logs(
        &self,
        id: ExperimentId,
        before: Option<i64>,
        limit: usize,
    ) -> Result<Vec<LogEntry>, StoreError> {
        on!(self, s => s.core.logs(id, before, limit).await)
    }

    // ----- advisor state ----------------------------------------------------------

    /// Saves the advisor's learned state for one rate-limit key.
    pub async fn save_rate_state(&self, key: &RateKey, state: &Json) -> Result<(), StoreError> {
        on!(self, s => s.core.save_rate_state(key, state).await)
    }

    /// Every saved advisor state.
    pub async fn load_rate_state(&self) -> Result<Vec<(RateKey, Json)>, StoreError> {
        on!(self, s => s.core.load_rate_state().await)
    }
}

impl std::fmt::Debug for Db {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Db")
            .field("kind", &self.kind())
            .field("sqlite_file", &self.sqlite_file)
            .finish_non_exhaustive()
    }
}

impl runnel_core::RateBudget for Db {
    async fn sync(
        &self,
        replica: &ReplicaId,
        lease: Duration,
        reports: &[runnel_core::BudgetReport],
    ) -> Result<Vec<runnel_core::BudgetView>, runnel_core::Error> {
        Ok(on!(self, s => s.core.budget_sync(replica, lease, reports).await)?)
    }

    async fn leave(&self, replica: &ReplicaId) -> Result<(), runnel_core::Error> {
        Ok(on!(self, s => s.core.budget_leave(replica).await)?)
    }
}

impl Store for Db {
    async fn reclaim_own(&self, replica: &ReplicaId) -> Result<Vec<Claim>, runnel_core::Error> {
        Ok(on!(self, s => s.core.reclaim_own(replica).await)?)
    }

    async fn take_over_orphans(
        &self,
        replica: &ReplicaId,
        lease: Duration,
    ) -> Result<Vec<Claim>, runnel_core::Error> {
        Ok(on!(self, s => s.core.take_over_orphans(replica, lease).await)?)
    }

    async fn heartbeat(&self, claims: &[Claim]) -> Result<Vec<ExperimentId>, runnel_core::Error> {
        Ok(on!(self, s => s.core.heartbeat(claims).await)?)
    }

    async fn release(&self, claims: &[Claim]) -> Result<(), runnel_core::Error> {
        Ok(on!(self, s => s.core.release(claims).await)?)
    }

    async fn finish(&self, claim: &Claim, end: &Finish) -> Result<bool, runnel_core::Error> {
        Ok(on!(self, s => s.core.finish(claim, end).await)?)
    }

    async fn load_plan(
        &self,
        experiment: ExperimentId,
    ) -> Result<ExperimentPlan, runnel_core::Error> {
        Ok(on!(self, s => s.core.load_plan(experiment).await)?)
    }

    async fn task_page(
        &self,
        claim: &Claim,
        after: Option<TaskCursor>,
        limit: usize,
    ) -> Result<Vec<TaskWork>, runnel_core::Error> {
        Ok(on!(self, s => s.core.task_page(claim, after, limit).await)?)
    }

    async fn eval_page(
        &self,
        claim: &Claim,
        after: Option<EvalCursor>,
        limit: usize,
    ) -> Result<Vec<EvalWork>, runnel_core::Error> {
        Ok(on!(self, s => s.core.eval_page(claim, after, limit).await)?)
    }

    async fn record_run(
        &self,
        claim: &Claim,
        record: RunRecord,
    ) -> Result<Write<RunWrite>, runnel_core::Error> {
        Ok(on!(self, s => s.record_run(claim, record).await)?)
    }

    async fn record_annotation(
        &self,
        claim: &Claim,
        record: AnnotationRecord,
    ) -> Result<Write<()>, runnel_core::Error> {
        Ok(on!(self, s => s.record_annotation(claim, record).await)?)
    }

    async fn log(
        &self,
        experiment: ExperimentId,
        level: LogLevel,
        message: String,
    ) -> Result<(), runnel_core::Error> {
        Ok(on!(self, s => s.core.log(experiment, level, &message).await)?)
    }
}

/// What a [`Listener`] heard.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Heard {
    /// Another replica stopped, resumed or deleted an experiment.
    Event(ControlEvent),
    /// The listening connection dropped and was re-opened: announcements
    /// made meanwhile are lost, so check the claims now (heartbeat).
    Reconnected,
}

/// Receives the stop/resume/delete announcements of every replica
/// (PostgreSQL `LISTEN`).
pub struct Listener {
    inner: PgListener,
}

impl Listener {
    /// Waits for the next announcement. Payloads that are not runnel's are
    /// skipped; a lost connection is re-opened and reported as
    /// [`Heard::Reconnected`].
    pub async fn recv(&mut self) -> Result<Heard, StoreError> {
        loop {
            match self.inner.try_recv().await {
                Ok(Some(n)) => match ControlEvent::parse(n.payload()) {
                    Some(event) => return Ok(Heard::Event(event)),
                    None => {
                        tracing::debug!(payload = n.payload(), "ignored a foreign notification")
                    }
                },
                Ok(None) => return Ok(Heard::Reconnected),
                Err(e) => return Err(StoreError::from_sqlx(e, Postgres::is_transient)),
            }
        }
    }
}

impl std::fmt::Debug for Listener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Listener").finish_non_exhaustive()
    }
}

/// Applies the embedded migrations to the database at `url`; returns the
/// migration version the database is at afterwards. Refuses a database
/// migrated by a newer binary.
pub async fn migrate(url: &str) -> Result<i64, StoreError> {
    let config = StoreConfig {
        url: url.to_owned(),
        max_connections: 2,
        auto_migrate: true,
        ..StoreConfig::default()
    };
    let db = Db::connect(&config).await?;
    let version = on!(db, s => s.core.applied_migration().await);
    db.close().await;
    version
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_name_their_database() {
        assert_eq!(
            DatabaseKind::of_url("sqlite://x.db"),
            Some(DatabaseKind::Sqlite)
        );
        assert_eq!(
            DatabaseKind::of_url("sqlite::memory:"),
            Some(DatabaseKind::Sqlite)
        );
        assert_eq!(
            DatabaseKind::of_url("postgresql://u@h/db"),
            Some(DatabaseKind::Postgres)
        );
        assert_eq!(DatabaseKind::of_url("mysql://h/db"), None);
        assert_eq!(DatabaseKind::of_url(""), None);
    }

    /// `database.sqlite_synchronous` reaches every connection of the pool.
    #[tokio::test]
    async fn sqlite_synchronous_is_the_configured_level() {
        crate::testing::with_temp_db(DatabaseKind::Sqlite, async |temp| {
            for (level, expected) in [
                (crate::SqliteSynchronous::Full, 2),
                (crate::SqliteSynchronous::Normal, 1),
                (crate::SqliteSynchronous::Extra, 3),
            ] {
                let config = StoreConfig {
                    sqlite_synchronous: level,
                    ..StoreConfig::for_url(temp.url())
                };
                let db = Db::connect(&config).await.unwrap();
                let Inner::Sqlite(s) = &db.inner else {
                    panic!("not SQLite")
                };
                let read: i64 = sqlx::query_scalar("PRAGMA synchronous")
                    .fetch_one(s.core.pool())
                    .await
                    .unwrap();
                assert_eq!(read, expected, "{level:?}");
                db.close().await;
            }
        })
        .await;
    }
}
