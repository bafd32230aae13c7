//! `runnel run FILE`: one experiment, start to finish, in this process and
//! against the configured database. The run file (TOML or JSON) names a
//! dataset file (JSON lines or CSV) and describes the task and evaluators in
//! the shapes of `POST /v1/experiments`; it may add provider entries. The
//! dataset is read and checked whole before anything is stored, the
//! experiment goes through the API's validation and lifecycle code, runs on
//! the real engine with live progress, and ends with a summary table (or
//! JSON). Exit status: 0 when every run and annotation succeeded, 3 when
//! some failed or the experiment did not complete, 2 for a bad run file or
//! dataset, 1 for anything else, 130 when interrupted.
//!
//! ```toml
//! dataset = "questions.csv"        # relative to this file; .jsonl/.ndjson or .csv
//! name = "arithmetic"              # experiment name (default: this file's name)
//!
//! [task]
//! provider = "sim"
//! model = "sim-task"
//! messages = [{ role = "user", content = "{{input.question}}" }]
//!
//! [[evaluators]]
//! name = "correct"
//! provider = "sim"
//! model = "sim-judge"
//! messages = [{ role = "user", content = "Expected {{expected}}; got {{output}}. Answer CORRECT or INCORRECT." }]
//! labels = ["CORRECT", "INCORRECT"]
//!
//! [providers.sim]                  # optional: added to the server's entries
//! kind = "openai_compatible"
//! base_url = "http://127.0.0.1:8090/v1"
//! ```

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use figment::Figment;
use figment::providers::{Format, Toml};
use runnel_core::{DatasetId, ExampleData};
use runnel_store::NewExample;
use serde::Deserialize;
use serde_json::{Map, Value};

use crate::api::body::parse_json;
use crate::api::error::ApiError;
use crate::api::types::{CreateExperiment, EvaluatorIn, ExampleIn, TaskIn};
use crate::api::validate;
use crate::config::{LogFormat, Overrides, RunnelConfig};
use crate::follow::{self, Display, End, Tally};

/// After an interrupt, how much longer than `scheduler.shutdown_grace` the
/// runner follows the experiment, so that results the engine records right at
/// the end of the grace still reach the summary. Not a setting: it only
/// bounds how long the terminal waits for records already under way.
const RECORD_SLACK: Duration = Duration::from_secs(1);
use crate::lifecycle;
use crate::runtime::Runtime;
use crate::state::AppState;
use crate::summary::{self, Summary};

/// Options of `runnel run`.
#[derive(Clone, Debug, clap::Args)]
#[command(after_help = "The run file (TOML shown; JSON has the same keys):

  dataset = \"questions.csv\"     # .jsonl/.ndjson (one API example per line) or .csv
  name = \"arithmetic\"           # optional; also repetitions, max_concurrency
  [task]                        # as in POST /v1/experiments
  provider = \"sim\"
  model = \"sim-task\"
  messages = [{ role = \"user\", content = \"{{input.question}}\" }]
  [[evaluators]]                # optional, repeatable
  name = \"correct\"
  provider = \"sim\"
  model = \"sim-judge\"
  messages = [{ role = \"user\", content = \"Expected {{expected}}; got {{output}}. Answer CORRECT or INCORRECT.\" }]
  labels = [\"CORRECT\", \"INCORRECT\"]
  [providers.sim]               # optional; same keys as runnel.toml's [providers.NAME]
  kind = \"openai_compatible\"
  base_url = \"http://127.0.0.1:8090/v1\"

CSV: the header names the columns; `expected` becomes the expected answer,
every other column a string field of the input ({{input.COLUMN}}).
Exit status: 0 all succeeded; 3 some run or annotation failed, or the
experiment did not complete; 2 bad run file, dataset or configuration;
1 other errors; 130 interrupted (the experiment is stopped, not deleted).

Example:
  runnel sim --rps 20 --per-model &
  runnel run crates/server/assets/arithmetic.toml --database-url sqlite://results.db")]
pub struct RunArgs {
    /// The run file (TOML, or JSON when it ends in .json).
    #[arg(value_name = "FILE")]
    pub file: PathBuf,
    /// Print the summary as JSON on stdout (progress goes to stderr).
    #[arg(long)]
    pub json: bool,
    /// Database URL (default: the configured one, sqlite://runnel.db).
    #[arg(long, value_name = "URL")]
    pub database_url: Option<String>,
}

/// Why `runnel run` did not succeed, with its exit status.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The run file cannot be read or does not describe an experiment.
    #[error("{path}: {message}")]
    File {
        /// The run file.
        path: String,
        /// What is wrong.
        message: String,
    },
    /// The dataset file cannot be read, or one of its lines is not an
    /// example. Nothing was stored.
    #[error("{path}{}: {message} (nothing was imported)", line_text(*.line))]
    Dataset {
        /// The dataset file.
        path: String,
        /// The line at fault, from 1.
        line: Option<u64>,
        /// What is wrong.
        message: String,
    },
    /// The experiment was rejected before anything was stored; `field` is
    /// spelt as in the run file.
    #[error("{path}: `{field}` {message} (nothing was stored)")]
    Invalid {
        /// The run file.
        path: String,
        /// The offending key.
        field: String,
        /// What is wrong.
        message: String,
    },
    /// The experiment ran, but some runs or annotations failed permanently,
    /// or it did not complete.
    #[error("{0}")]
    Failed(String),
    /// Ctrl-C or SIGTERM: the experiment was stopped, its results kept.
    #[error(
        "interrupted: experiment {0} was stopped with its results kept; \
         resume it with POST /v1/experiments/{0}/resume on `runnel serve`"
    )]
    Interrupted(String),
}

fn line_text(line: Option<u64>) -> String {
    line.map(|l| format!(" line {l}")).unwrap_or_default()
}

impl RunError {
    /// The process exit status for this error.
    pub fn exit_code(&self) -> u8 {
        match self {
            RunError::File { .. } | RunError::Dataset { .. } | RunError::Invalid { .. } => 2,
            RunError::Failed(_) => 3,
            RunError::Interrupted(_) => 130,
        }
    }
}

/// Formats of dataset files.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DatasetFormat {
    /// One API example object per line (`{"input": {…}, "expected": …}`).
    Jsonl,
    /// A header line, then one example per record.
    Csv,
}

impl DatasetFormat {
    /// The format a file name implies.
    pub fn of_path(path: &Path) -> Option<Self> {
        let ext = path.extension()?.to_str()?.to_ascii_lowercase();
        match ext.as_str() {
            "jsonl" | "ndjson" => Some(DatasetFormat::Jsonl),
            "csv" => Some(DatasetFormat::Csv),
            _ => None,
        }
    }
}

/// The run file.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunFile {
    /// The dataset file, relative to the run file.
    pub dataset: PathBuf,
    /// The dataset's name (default: the dataset file's name).
    #[serde(default)]
    pub dataset_name: Option<String>,
    /// The dataset's format (default: from its extension).
    #[serde(default)]
    pub dataset_format: Option<DatasetFormat>,
    /// The experiment's name (default: the run file's name).
    #[serde(default)]
    pub name: Option<String>,
    /// Runs per example (default 1).
    #[serde(default)]
    pub repetitions: Option<i64>,
    /// Per-experiment concurrency cap.
    #[serde(default)]
    pub max_concurrency: Option<i64>,
    /// The task.
    pub task: TaskIn,
    /// The evaluators.
    #[serde(default)]
    pub evaluators: Vec<EvaluatorIn>,
    /// Provider entries added to (or replacing) the configured ones.
    #[serde(default)]
    pub providers: BTreeMap<String, Map<String, Value>>,
}

/// Reads a run file: JSON when the name ends in `.json`, TOML otherwise.
pub fn read_run_file(path: &Path) -> Result<RunFile, RunError> {
    let shown = path.display().to_string();
    let fail = |message: String| RunError::File {
        path: shown.clone(),
        message,
    };
    let text = std::fs::read_to_string(path).map_err(|e| fail(format!("cannot read it: {e}")))?;
    let json = path
        .extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| e.eq_ignore_ascii_case("json"));
    if json {
        let de = &mut serde_json::Deserializer::from_str(&text);
        serde_path_to_error::deserialize(de).map_err(|e| {
            let at = e.path().to_string();
            let inner = e.into_inner();
            if at == "." {
                fail(inner.to_string())
            } else {
                fail(format!("`{at}`: {inner}"))
            }
        })
    } else {
        Figment::from(Toml::string(&text))
            .extract()
            .map_err(|e| fail(figment_message(&e)))
    }
}

fn figment_message(error: &figment::Error) -> String {
    let key = error.path.join(".");
    if key.is_empty() {
        error.kind.to_string()
    } else {
        format!("`{key}`: {}", error.kind)
    }
}

fn dataset_error(path: &Path, line: Option<u64>, message: impl Into<String>) -> RunError {
    RunError::Dataset {
        path: path.display().to_string(),
        line,
        message: message.into(),
    }
}

/// Checks one example as the API does; `Err` is the message.
fn check_example(example: ExampleIn) -> Result<NewExample, String> {
    validate::example(example, "").map_err(|e| match e {
        ApiError::Validation { field, detail } => {
            format!("`{}` {detail}", field.trim_start_matches('.'))
        }
        other => other.to_string(),
    })
}

/// Reads JSON lines: one API example object per line; blank lines skipped.
pub fn read_jsonl(path: &Path, text: &str) -> Result<Vec<NewExample>, RunError> {
    let mut examples = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let number = i as u64 + 1;
        if line.trim().is_empty() {
            continue;
        }
        let example = parse_json::<ExampleIn>(line.as_bytes(), "line").map_err(|e| {
            let message = match e {
                ApiError::Validation { field, detail } => format!("`{field}`: {detail}"),
                other => other.to_string(),
            };
            dataset_error(
                path,
                Some(number),
                format!(
                    "{message} (each line is one example: {{\"input\": {{…}}, \"expected\": …}})"
                ),
            )
        })?;
        let example = check_example(example).map_err(|m| dataset_error(path, Some(number), m))?;
        examples.push(example);
    }
    Ok(examples)
}

/// Reads CSV: the header names the columns; `expected` is the expected
/// answer (an empty cell: none), every other column a string input field.
pub fn read_csv(path: &Path, bytes: &[u8]) -> Result<Vec<NewExample>, RunError> {
    let csv_error = |e: &csv::Error| {
        let line = e.position().map(csv::Position::line);
        let message = match e.kind() {
            csv::ErrorKind::UnequalLengths {
                expected_len, len, ..
            } => format!("has {len} fields where the header has {expected_len}"),
            csv::ErrorKind::Utf8 { err, .. } => format!("is not valid UTF-8 ({err})"),
            _ => e.to_string(),
        };
        dataset_error(path, line, message)
    };
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(true)
        .from_reader(bytes);
    let headers = reader.headers().map_err(|e| csv_error(&e))?.clone();
    let mut seen = HashSet::new();
    for name in &headers {
        if name.trim().is_empty() {
            return Err(dataset_error(
                path,
                Some(1),
                "the header has an empty column name",
            ));
        }
        if !seen.insert(name) {
            return Err(dataset_error(
                path,
                Some(1),
                format!("the header names the column `{name}` twice"),
            ));
        }
    }
    if headers.iter().all(|h| h == "expected") {
        return Err(dataset_error(
            path,
            Some(1),
            "the header names no input column (every column but `expected` is an input field)",
        ));
    }
    let mut examples = Vec::new();
    for record in reader.records() {
        let record = record.map_err(|e| csv_error(&e))?;
        let line = record.position().map(csv::Position::line);
        let mut input = Map::new();
        let mut expected = None;
        for (name, value) in headers.iter().zip(record.iter()) {
            if name == "expected" {
                if !value.is_empty() {
                    expected = Some(Value::String(value.to_owned()));
                }
            } else {
                input.insert(name.to_owned(), Value::String(value.to_owned()));
            }
        }
        let example = ExampleIn {
            input: Value::Object(input),
            expected,
            metadata: None,
        };
        examples.push(check_example(example).map_err(|m| dataset_error(path, line, m))?);
    }
    Ok(examples)
}

/// Reads a dataset file whole; any bad line fails the whole file.
pub fn read_dataset(
    path: &Path,
    format: Option<DatasetFormat>,
) -> Result<Vec<NewExample>, RunError> {
    let format = format
        .or_else(|| DatasetFormat::of_path(path))
        .ok_or_else(|| {
            dataset_error(
                path,
                None,
                "unknown format: name it .jsonl, .ndjson or .csv, or set dataset_format = \"jsonl\" or \"csv\"",
            )
        })?;
    let bytes = std::fs::read(path)
        .map_err(|e| dataset_error(path, None, format!("cannot read it: {e}")))?;
    match format {
        DatasetFormat::Csv => read_csv(path, &bytes),
        DatasetFormat::Jsonl => {
            let text = std::str::from_utf8(&bytes).map_err(|e| {
                let line = bytes[..e.valid_up_to()]
                    .iter()
                    .filter(|b| **b == b'\n')
                    .count() as u64
                    + 1;
                dataset_error(path, Some(line), "is not valid UTF-8")
            })?;
            read_jsonl(path, text)
        }
    }
}

fn stem(path: &Path) -> String {
    path.file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "run".to_owned())
}

/// What `runnel run` prepared before starting anything.
struct Prepared {
    file: RunFile,
    run_path: PathBuf,
    dataset_path: PathBuf,
    examples: Vec<NewExample>,
}

fn prepare(path: &Path) -> Result<Prepared, RunError> {
    let file = read_run_file(path)?;
    let base = path.parent().unwrap_or_else(|| Path::new("."));
    let dataset_path = base.join(&file.dataset);
    let examples = read_dataset(&dataset_path, file.dataset_format)?;
    Ok(Prepared {
        file,
        run_path: path.to_path_buf(),
        dataset_path,
        examples,
    })
}

/// The configuration of a run: the usual sources plus the run file's
/// provider entries; logs quieted by [`follow::quiet_logs`].
fn run_config(
    config_file: Option<&Path>,
    log_format: Option<LogFormat>,
    args: &RunArgs,
    prepared: &Prepared,
) -> anyhow::Result<RunnelConfig> {
    let mut config = RunnelConfig::load(
        config_file,
        &Overrides {
            database_url: args.database_url.clone(),
            log_format,
            ..Overrides::default()
        },
    )?;
    for (name, table) in &prepared.file.providers {
        config
            .add_provider(name, table.clone())
            .map_err(|e| RunError::File {
                path: prepared.run_path.display().to_string(),
                message: e.to_string(),
            })?;
    }
    follow::quiet_logs(&mut config);
    // A one-shot run runs only its own experiment: a replica identity of its
    // own, and no taking over of experiments a `runnel serve` left behind.
    config.scheduler.take_over = false;
    if config.server.replica_id.is_none() {
        config.server.replica_id = Some(format!("run-{}", uuid::Uuid::new_v4().simple()));
    }
    Ok(config)
}

/// Runs `runnel run` (see the module documentation).
pub async fn run(
    args: RunArgs,
    config_file: Option<&Path>,
    log_format: Option<LogFormat>,
) -> anyhow::Result<()> {
    let prepared = prepare(&args.file)?;
    let config = run_config(config_file, log_format, &args, &prepared)?;
    let tracer = crate::telemetry::init_tracing(&config)?;
    let runtime = Runtime::start(config).await?;
    let result = execute(&args, &runtime, prepared).await;
    runtime.shutdown().await;
    if let Some(tracer) = tracer {
        let _ = tracer.shutdown();
    }
    let (summary, interrupted) = result?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        println!();
        print!("{}", summary.render());
    }
    if interrupted {
        return Err(RunError::Interrupted(summary.experiment_id).into());
    }
    verdict(&summary)
}

/// Whether a finished run counts as a success, and why not.
fn verdict(summary: &Summary) -> anyhow::Result<()> {
    if summary.ok {
        return Ok(());
    }
    let mut parts = Vec::new();
    if summary.runs.failed > 0 {
        parts.push(format!(
            "{} of {} runs failed",
            summary.runs.failed, summary.runs.expected
        ));
    }
    if summary.annotations.failed > 0 {
        parts.push(format!(
            "{} of {} annotations failed",
            summary.annotations.failed, summary.annotations.expected
        ));
    }
    if summary.status != "COMPLETED" {
        let mut text = format!("the experiment ended {}", summary.status);
        if let Some(e) = &summary.last_error {
            text.push_str(&format!(": {e}"));
        }
        parts.push(text);
    }
    Err(RunError::Failed(parts.join("; ")).into())
}

fn invalid(path: &Path, error: ApiError) -> anyhow::Error {
    match error {
        ApiError::Validation { field, detail } => RunError::Invalid {
            path: path.display().to_string(),
            field,
            message: detail,
        }
        .into(),
        ApiError::BadRequest(message) => RunError::File {
            path: path.display().to_string(),
            message,
        }
        .into(),
        ApiError::Internal(text) | ApiError::Unavailable(text) => anyhow::anyhow!(text),
        other => anyhow::anyhow!(other.to_string()),
    }
}

/// Stores and runs the experiment; returns its summary and whether it was
/// interrupted.
async fn execute(
    args: &RunArgs,
    runtime: &Runtime,
    prepared: Prepared,
) -> anyhow::Result<(Summary, bool)> {
    let state: &AppState = &runtime.state;
    let Prepared {
        file,
        run_path,
        dataset_path,
        examples,
    } = prepared;
    let sample: Vec<ExampleData> = examples
        .iter()
        .take(state.config.server.template_sample)
        .map(|e| ExampleData {
            input: e.input.clone(),
            expected: e.expected.clone(),
            metadata: e.metadata.clone().unwrap_or(Value::Null),
        })
        .collect();
    let request = CreateExperiment {
        dataset_id: String::new(),
        name: file.name.clone().unwrap_or_else(|| stem(&run_path)),
        repetitions: file.repetitions,
        max_concurrency: file.max_concurrency,
        start: Some(true),
        task: file.task,
        evaluators: Some(file.evaluators),
    };
    // Everything is checked before the dataset is stored: the dataset id is
    // filled in afterwards.
    let (mut new, _) =
        validate::experiment_with_sample(state, DatasetId(uuid::Uuid::nil()), request, &sample)
            .map_err(|e| invalid(&run_path, e))?;
    let dataset_name = file.dataset_name.unwrap_or_else(|| stem(&dataset_path));
    let dataset_name =
        validate::name("dataset_name", &dataset_name).map_err(|e| invalid(&run_path, e))?;
    let info = state
        .db
        .create_dataset(&dataset_name, &examples)
        .await
        .context("storing the dataset")?;
    new.dataset_id = info.id;
    let mut launched = follow::launch(state, &new)
        .await
        .map_err(|e| invalid(&run_path, e))?;
    if !args.json {
        println!(
            "runnel run: experiment {} ({} examples of {}) against {}",
            launched.id,
            info.example_count,
            dataset_path.display(),
            runnel_store::redact_url(&state.config.database.url)
        );
    }
    let mut tally = Tally::default();
    let mut display = Display::auto(args.json);
    let end = follow::follow(
        &mut launched,
        &mut tally,
        &runtime.advisor,
        &mut display,
        crate::cli::shutdown_signal(),
    )
    .await;
    let interrupted = end == End::Interrupted;
    if interrupted {
        eprintln!("interrupted: stopping the experiment (in-flight calls finish and are recorded)");
        lifecycle::stop(state, launched.id)
            .await
            .map_err(|e| anyhow::anyhow!("stopping the experiment: {e}"))?;
        // Let the engine record what is in flight, bounded by the grace.
        let grace = state.config.scheduler.shutdown_grace + RECORD_SLACK;
        let _ = follow::follow(
            &mut launched,
            &mut tally,
            &runtime.advisor,
            &mut Display::Quiet,
            tokio::time::sleep(grace),
        )
        .await;
    }
    let mut summary = summary::collect(&state.db, launched.id, &tally, launched.started.elapsed())
        .await
        .context("reading the results")?;
    if interrupted {
        summary.ok = false;
    }
    Ok((summary, interrupted))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path() -> PathBuf {
        PathBuf::from("data.csv")
    }

    #[test]
    fn csv_columns_become_input_fields_and_expected() {
        let examples =
            read_csv(&path(), b"question,expected\nWhat is 1 + 2?,3\n\"a, b\",\n").unwrap();
        assert_eq!(examples.len(), 2);
        assert_eq!(examples[0].input["question"], "What is 1 + 2?");
        assert_eq!(examples[0].expected, Some(Value::String("3".into())));
        assert_eq!(examples[1].input["question"], "a, b");
        assert_eq!(examples[1].expected, None);
    }

    #[test]
    fn csv_errors_name_the_line() {
        let err = read_csv(&path(), b"q,expected\n1,2\n3\n4,5\n").unwrap_err();
        assert_eq!(
            err.to_string(),
            "data.csv line 3: has 1 fields where the header has 2 (nothing was imported)"
        );
        assert_eq!(err.exit_code(), 2);
        let err = read_csv(&path(), b"q,q\n1,2\n").unwrap_err();
        assert!(
            err.to_string()
                .contains("line 1: the header names the column `q` twice"),
            "{err}"
        );
        let err = read_csv(&path(), b"expected\n1\n").unwrap_err();
        assert!(err.to_string().contains("no input column"), "{err}");
        let err = read_csv(&path(), b"q,expected\n1,2\n\xff,3\n").unwrap_err();
        assert!(
            err.to_string().contains("line 3: is not valid UTF-8"),
            "{err}"
        );
    }

    #[test]
    fn jsonl_errors_name_the_line_and_field() {
        let p = PathBuf::from("d.jsonl");
        let ok = read_jsonl(
            &p,
            "{\"input\": {\"q\": 1}, \"expected\": 2}\n\n{\"input\": {}}\n",
        )
        .unwrap();
        assert_eq!(ok.len(), 2);
        for (text, needle) in [
            (
                "{\"input\": {}}\nnot json\n",
                "line 2: the line is not valid JSON",
            ),
            ("{\"input\": {}}\n{\"input\": {}, \"x\": 1}\n", "line 2: "),
            ("{\"input\": 5}\n", "line 1: `input` must be a JSON object"),
            (
                "{\"input\": {}, \"metadata\": 1}\n",
                "line 1: `metadata` must be a JSON object",
            ),
        ] {
            let err = read_jsonl(&p, text).unwrap_err();
            assert!(err.to_string().contains(needle), "{text:?}: {err}");
        }
    }

    #[test]
    fn run_files_are_read_as_toml_or_json_with_the_key_named() {
        let dir = std::env::temp_dir().join(format!("runnel-runfile-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let toml = dir.join("a.toml");
        std::fs::write(
            &toml,
            "dataset = \"d.csv\"\n[task]\nprovider = \"p\"\nmodel = \"m\"\nmessages = [{ role = \"user\", content = \"{{input.q}}\" }]\n[task.params]\ntemperature = 0\n",
        )
        .unwrap();
        let file = read_run_file(&toml).unwrap();
        assert_eq!(file.task.model, "m");
        assert_eq!(file.task.params.unwrap()["temperature"], 0);
        std::fs::write(
            &toml,
            "dataset = \"d.csv\"\n[task]\nprovider = \"p\"\nmodel = \"m\"\nmesages = []\n",
        )
        .unwrap();
        let err = read_run_file(&toml).unwrap_err().to_string();
        assert!(err.contains("mesages"), "{err}");
        let json = dir.join("a.json");
        std::fs::write(
            &json,
            r#"{"dataset": "d.csv", "task": {"provider": "p", "model": 3, "messages": []}}"#,
        )
        .unwrap();
        let err = read_run_file(&json).unwrap_err().to_string();
        assert!(err.contains("`task.model`"), "{err}");
        let err = read_run_file(&dir.join("missing.toml"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("cannot read it"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_dataset_format_comes_from_the_extension_or_the_file() {
        assert_eq!(
            DatasetFormat::of_path(Path::new("a.JSONL")),
            Some(DatasetFormat::Jsonl)
        );
        assert_eq!(
            DatasetFormat::of_path(Path::new("a.csv")),
            Some(DatasetFormat::Csv)
        );
        assert_eq!(DatasetFormat::of_path(Path::new("a.txt")), None);
        let err = read_dataset(Path::new("a.txt"), None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown format"), "{err}");
    }
}
