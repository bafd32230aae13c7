//! Reading a runnel database directly, without runnel: `psql` for
//! PostgreSQL, `sqlite3` for a SQLite file. The invariant queries are written
//! once in the SQL both understand.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context, Result, bail};

/// Field separator of query output (ASCII unit separator: never in names or
/// numbers).
const SEP: &str = "\u{1f}";

/// A runnel database, read from outside.
#[derive(Clone, Debug)]
pub(crate) enum Database {
    /// A SQLite file.
    Sqlite(PathBuf),
    /// A PostgreSQL URL.
    Postgres(String),
}

/// Per-experiment counts.
#[derive(Clone, Debug)]
pub(crate) struct ExperimentCounts {
    /// Its name.
    pub(crate) name: String,
    /// Its status.
    pub(crate) status: String,
    /// Examples × repetitions.
    pub(crate) expected_runs: u64,
    /// Run rows.
    pub(crate) runs: u64,
    /// Of which succeeded.
    pub(crate) succeeded: u64,
    /// Evaluators attached.
    pub(crate) evaluators: u64,
    /// Annotation rows.
    pub(crate) annotations: u64,
    /// Successful run × evaluator pairs without an annotation (strict:
    /// without a successful one).
    pub(crate) missing_annotations: u64,
}

/// What the invariant queries found.
#[derive(Clone, Debug, Default)]
pub(crate) struct Invariants {
    /// Rows read (experiments, runs, annotations).
    pub(crate) rows: u64,
    /// Run rows.
    pub(crate) runs: u64,
    /// Failed run rows.
    pub(crate) failed_runs: u64,
    /// Annotation rows.
    pub(crate) annotations: u64,
    /// Failed annotation rows.
    pub(crate) failed_annotations: u64,
    /// Extra rows of one (experiment, example, repetition).
    pub(crate) duplicate_runs: u64,
    /// Extra rows of one (run, evaluator).
    pub(crate) duplicate_annotations: u64,
    /// Example × repetition without a run (strict: without a successful run).
    pub(crate) missing_runs: u64,
    /// Run × evaluator without an annotation (strict: without a successful
    /// one), over successful runs.
    pub(crate) missing_annotations: u64,
    /// Runs of an example outside the dataset or a repetition out of range.
    pub(crate) stray_runs: u64,
    /// Per experiment.
    pub(crate) experiments: Vec<ExperimentCounts>,
}

impl Database {
    /// The database a runnel `database.url` names.
    pub(crate) fn from_url(url: &str) -> Self {
        match url.strip_prefix("sqlite://") {
            Some(path) => Database::Sqlite(PathBuf::from(path)),
            None => Database::Postgres(url.to_owned()),
        }
    }

    /// Runs `sql`; returns its rows as fields of text.
    pub(crate) fn query(&self, sql: &str) -> Result<Vec<Vec<String>>> {
        let out = match self {
            Database::Sqlite(path) => Command::new("sqlite3")
                .arg("-bail")
                .arg("-cmd")
                .arg(".timeout 10000")
                .arg("-separator")
                .arg(SEP)
                .arg(path)
                .arg(sql)
                .output()
                .context("running sqlite3")?,
            Database::Postgres(url) => crate::harness::psql(url)
                .args(["-F", SEP, "-c", sql])
                .output()
                .context("running psql")?,
        };
        if !out.status.success() {
            bail!(
                "query failed ({}): {}\n{sql}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| !l.is_empty())
            .map(|l| l.split(SEP).map(str::to_owned).collect())
            .collect())
    }

    /// Runs `sql` and reads its single number.
    pub(crate) fn scalar(&self, sql: &str) -> Result<i64> {
        let rows = self.query(sql)?;
        let text = rows
            .first()
            .and_then(|r| r.first())
            .with_context(|| format!("no value from {sql}"))?;
        if text.is_empty() {
            return Ok(0);
        }
        text.parse()
            .with_context(|| format!("`{text}` is not a number (from {sql})"))
    }

    /// Rows of `table`.
    pub(crate) fn count(&self, table: &str) -> Result<i64> {
        self.scalar(&format!("SELECT COUNT(*) FROM {table}"))
    }

    /// Checks exactly-once: every example × repetition of every experiment
    /// has one run row and every successful run one annotation row per
    /// evaluator. `strict`: the run and the annotations must have succeeded
    /// (no fault was meant to make any fail).
    pub(crate) fn invariants(&self, strict: bool) -> Result<Invariants> {
        let ann_filter = if strict { "AND a.succeeded" } else { "" };
        let rows = self.query(&format!(
            "SELECT x.name, x.status,
                    (SELECT COUNT(*) FROM dataset_examples e WHERE e.dataset_id = x.dataset_id) * x.repetitions,
                    (SELECT COUNT(*) FROM runs r WHERE r.experiment_id = x.id),
                    (SELECT COUNT(*) FROM runs r WHERE r.experiment_id = x.id AND r.succeeded),
                    (SELECT COUNT(*) FROM evaluators v WHERE v.experiment_id = x.id),
                    (SELECT COUNT(*) FROM annotations a WHERE a.experiment_id = x.id),
                    (SELECT COUNT(*) FROM runs r JOIN evaluators v ON v.experiment_id = r.experiment_id
                     WHERE r.experiment_id = x.id AND r.succeeded AND NOT EXISTS
                       (SELECT 1 FROM annotations a WHERE a.run_id = r.id AND a.evaluator_id = v.id {ann_filter}))
             FROM experiments x ORDER BY x.name"
        ))?;
        let mut inv = Invariants::default();
        for row in rows {
            let n = |i: usize| -> Result<u64> {
                row.get(i)
                    .with_context(|| format!("column {i} missing in {row:?}"))?
                    .parse::<u64>()
                    .with_context(|| format!("column {i} of {row:?}"))
            };
            let counts = ExperimentCounts {
                name: row.first().cloned().unwrap_or_default(),
                status: row.get(1).cloned().unwrap_or_default(),
                expected_runs: n(2)?,
                runs: n(3)?,
                succeeded: n(4)?,
                evaluators: n(5)?,
                annotations: n(6)?,
                missing_annotations: n(7)?,
            };
            inv.rows += 1 + counts.runs + counts.annotations;
            inv.runs += counts.runs;
            inv.failed_runs += counts.runs - counts.succeeded.min(counts.runs);
            inv.annotations += counts.annotations;
            let have = if strict {
                counts.succeeded
            } else {
                counts.runs
            };
            inv.missing_runs += counts.expected_runs.saturating_sub(have);
            inv.missing_annotations += counts.missing_annotations;
            inv.experiments.push(counts);
        }
        inv.failed_annotations =
            self.scalar("SELECT COUNT(*) FROM annotations a WHERE NOT a.succeeded")? as u64;
        inv.duplicate_runs = self.scalar(
            "SELECT COALESCE(SUM(c - 1), 0) FROM
               (SELECT COUNT(*) AS c FROM runs
                GROUP BY experiment_id, example_id, repetition HAVING COUNT(*) > 1) d",
        )? as u64;
        inv.duplicate_annotations = self.scalar(
            "SELECT COALESCE(SUM(c - 1), 0) FROM
               (SELECT COUNT(*) AS c FROM annotations
                GROUP BY run_id, evaluator_id HAVING COUNT(*) > 1) d",
        )? as u64;
        inv.stray_runs = self.scalar(
            "SELECT COUNT(*) FROM runs r JOIN experiments x ON x.id = r.experiment_id
             WHERE r.repetition >= x.repetitions OR NOT EXISTS
               (SELECT 1 FROM dataset_examples e WHERE e.id = r.example_id AND e.dataset_id = x.dataset_id)",
        )? as u64;
        Ok(inv)
    }

    /// Every table's row count, for "nothing changed" comparisons.
    pub(crate) fn table_counts(&self) -> Result<Vec<(String, i64)>> {
        let mut out = Vec::new();
        for table in [
            "datasets",
            "dataset_examples",
            "experiments",
            "evaluators",
            "runs",
            "annotations",
            "experiment_logs",
        ] {
            out.push((table.to_owned(), self.count(table)?));
        }
        Ok(out)
    }

    /// Every row of every runnel table as text (PostgreSQL: `row_to_json`;
    /// SQLite: every byte of the database file and of the files named after
    /// it: its WAL, shared-memory and journal files), for searching a secret.
    pub(crate) fn dump(&self) -> Result<String> {
        match self {
            Database::Postgres(_) => {
                let tables = self.query(
                    "SELECT table_name::text FROM information_schema.tables
                     WHERE table_schema = 'public' AND table_type = 'BASE TABLE'",
                )?;
                let mut out = String::new();
                for t in tables {
                    let table = &t[0];
                    for row in
                        self.query(&format!("SELECT row_to_json(t)::text FROM \"{table}\" t"))?
                    {
                        out.push_str(table);
                        out.push_str(": ");
                        out.push_str(&row.join(" "));
                        out.push('\n');
                    }
                }
                Ok(out)
            }
            Database::Sqlite(path) => {
                let dir = path.parent().context("the SQLite file has no folder")?;
                let stem = path
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                let mut out = String::new();
                for entry in std::fs::read_dir(dir)? {
                    let p = entry?.path();
                    let name = p
                        .file_name()
                        .map(|n| n.to_string_lossy().into_owned())
                        .unwrap_or_default();
                    if name.starts_with(&stem) {
                        let bytes = std::fs::read(&p).unwrap_or_default();
                        out.push_str(&String::from_utf8_lossy(&bytes));
                        out.push('\n');
                    }
                }
                Ok(out)
            }
        }
    }
}
