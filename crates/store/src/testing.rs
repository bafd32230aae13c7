//! Throw-away databases for tests (feature `conformance`): a SQLite file in a
//! fresh temporary folder, or a freshly created PostgreSQL database on the
//! server named by `RUNNEL_TEST_POSTGRES_URL`, so that tests run in parallel
//! without seeing each other's rows.

use std::panic::AssertUnwindSafe;
use std::path::PathBuf;

use futures::FutureExt;

use sqlx::{Connection, Executor, PgConnection};

use crate::db::DatabaseKind;

/// The variable naming the PostgreSQL server tests use.
pub const POSTGRES_URL_VAR: &str = "RUNNEL_TEST_POSTGRES_URL";

/// The PostgreSQL server tests use. Panics with instructions when
/// `RUNNEL_TEST_POSTGRES_URL` is unset: a PostgreSQL test never skips silently.
pub fn postgres_url() -> String {
    match std::env::var(POSTGRES_URL_VAR) {
        Ok(url) if !url.trim().is_empty() => url,
        _ => panic!(
            "{POSTGRES_URL_VAR} is not set: this test needs PostgreSQL. Set it \
             (e.g. {POSTGRES_URL_VAR}=postgres://postgres@127.0.0.1:5432/postgres) \
             or run `cargo xtask test`, which starts PostgreSQL and sets it"
        ),
    }
}

/// `url` with its database name replaced by `database`.
pub fn with_database(url: &str, database: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (url, None),
    };
    let scheme_end = base.find("://").map_or(0, |i| i + 3);
    let host_end = base[scheme_end..]
        .find('/')
        .map_or(base.len(), |i| scheme_end + i);
    let mut out = format!("{}/{database}", &base[..host_end]);
    if let Some(query) = query {
        out.push('?');
        out.push_str(query);
    }
    out
}

/// A database that exists for one test.
#[derive(Debug)]
pub struct TempDatabase {
    kind: DatabaseKind,
    url: String,
    /// SQLite: the temporary folder; PostgreSQL: the server URL and the
    /// database name.
    cleanup: Cleanup,
}

#[derive(Debug)]
enum Cleanup {
    Folder(PathBuf),
    Database { server: String, name: String },
}

impl TempDatabase {
    /// A SQLite file `runnel.db` in a new temporary folder.
    pub fn sqlite() -> Self {
        let dir = std::env::temp_dir().join(format!("runnel-test-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
        let url = format!("sqlite://{}", dir.join("runnel.db").display());
        Self {
            kind: DatabaseKind::Sqlite,
            url,
            cleanup: Cleanup::Folder(dir),
        }
    }

    /// A new, empty PostgreSQL database on the server of
    /// `RUNNEL_TEST_POSTGRES_URL` (panics with instructions when unset).
    pub async fn postgres() -> Self {
        let server = postgres_url();
        let name = format!("runnel_test_{}", uuid::Uuid::new_v4().simple());
        let mut admin = PgConnection::connect(&server)
            .await
            .unwrap_or_else(|e| panic!("cannot connect to {}: {e}", crate::redact_url(&server)));
        admin
            .execute(sqlx::AssertSqlSafe(format!("CREATE DATABASE \"{name}\"")))
            .await
            .unwrap_or_else(|e| panic!("cannot create database {name}: {e}"));
        let _ = admin.close().await;
        Self {
            kind: DatabaseKind::Postgres,
            url: with_database(&server, &name),
            cleanup: Cleanup::Database { server, name },
        }
    }

    /// A database of `kind`.
    pub async fn new(kind: DatabaseKind) -> Self {
        match kind {
            DatabaseKind::Sqlite => Self::sqlite(),
            DatabaseKind::Postgres => Self::postgres().await,
        }
    }

    /// Its URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Which database it is.
    pub fn kind(&self) -> DatabaseKind {
        self.kind
    }

    /// Removes the database (every connection to it must be closed, or is
    /// closed by force on PostgreSQL).
    pub async fn remove(self) {
        match self.cleanup {
            Cleanup::Folder(dir) => {
                // Best effort: a leftover temporary folder harms nothing.
                let _ = std::fs::remove_dir_all(dir);
            }
            Cleanup::Database { server, name } => {
                if let Ok(mut admin) = PgConnection::connect(&server).await {
                    let _ = admin
                        .execute(sqlx::AssertSqlSafe(format!(
                            "DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"
                        )))
                        .await;
                    let _ = admin.close().await;
                }
            }
        }
    }
}

/// Every example id of a dataset, in order (panics on a store error).
pub async fn example_ids(
    db: &crate::Db,
    dataset: runnel_core::DatasetId,
) -> Vec<runnel_core::ExampleId> {
    let mut ids = Vec::new();
    loop {
        let page = db
            // Clamped to the store's `max_page`.
            .examples_page(dataset, ids.last().copied(), usize::MAX)
            .await
            .unwrap_or_else(|e| panic!("reading the examples of {dataset}: {e}"));
        if page.is_empty() {
            return ids;
        }
        ids.extend(page.into_iter().map(|(id, _)| id));
    }
}

/// Runs `test` with a new database of `kind`, and removes the database
/// afterwards, also when the test panics (the panic is then passed on).
pub async fn with_temp_db<F>(kind: DatabaseKind, test: F)
where
    F: AsyncFnOnce(&TempDatabase),
{
    let temp = TempDatabase::new(kind).await;
    let outcome = AssertUnwindSafe(test(&temp)).catch_unwind().await;
    temp.remove().await;
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_database_name_is_replaced_and_the_rest_kept() {
        assert_eq!(
            with_database("postgres://postgres@127.0.0.1:5432/postgres", "t1"),
            "postgres://postgres@127.0.0.1:5432/t1"
        );
        assert_eq!(
            with_database("postgres://u:p@h/db?sslmode=disable", "t2"),
            "postgres://u:p@h/t2?sslmode=disable"
        );
        assert_eq!(
            with_database("postgres://h:5432", "t3"),
            "postgres://h:5432/t3"
        );
    }
}
