//! `runnel run FILE` and `runnel demo`, end to end: the real binary as a
//! child process, the simulated provider on a real loopback socket, real
//! SQLite files (and PostgreSQL for one test).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::Duration;

use runnel_sim::{ReplyConfig, Sim, SimConfig, SimHandle};
use runnel_store::testing::with_temp_db;
use runnel_store::{DatabaseKind, Db, ExperimentFilter, StoreConfig};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

/// Longest a command may take before the test fails.
const DEADLINE: Duration = Duration::from_secs(120);

/// A folder for one test, removed at the end.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "runnel-cmd-{tag}-{}",
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    fn sqlite(&self) -> String {
        format!("sqlite://{}", self.path("runnel.db").display())
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn runnel(dir: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_runnel"));
    cmd.current_dir(dir)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    cmd
}

async fn output(mut cmd: Command) -> Output {
    let child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    tokio::time::timeout(DEADLINE, child.wait_with_output())
        .await
        .expect("the command did not finish in time")
        .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A simulator with a per-model limit high enough not to slow tests down.
async fn sim(patch: Value) -> SimHandle {
    let config = SimConfig::default()
        .patched(&json!({
            "seed": 3,
            "limits": {"rps": 200, "per_model": true},
            "latency": {"base": "5ms", "jitter": "3ms"},
            "replies": {"wrong_rate": 0.25}
        }))
        .unwrap()
        .patched(&patch)
        .unwrap();
    Sim::start(config).await.unwrap()
}

/// Arithmetic questions with their answers.
fn questions(n: usize) -> Vec<(String, u64)> {
    (0..n as u64)
        .map(|i| (format!("What is {} + {}?", 10 + i, 3 * i), 10 + 4 * i))
        .collect()
}

const SYSTEM: &str = "You are a careful calculator. Reply with the number only.";

/// How many of `questions` the simulator answers wrongly (the judge then
/// says INCORRECT): the prompt it sees is the system message, a newline and
/// the question.
fn predicted_wrong(questions: &[(String, u64)], wrong_rate: f64) -> u64 {
    let config = ReplyConfig {
        wrong_rate,
        ..ReplyConfig::default()
    };
    questions
        .iter()
        .filter(|(q, answer)| {
            let reply = runnel_sim::reply(&format!("{SYSTEM}\n{q}"), None, &config);
            reply.text != answer.to_string()
        })
        .count() as u64
}

/// A run file (JSON) over `dataset` against the simulator at `url`.
fn run_file(dataset: &str, url: &str, repetitions: u32) -> Value {
    json!({
        "dataset": dataset,
        "name": "arithmetic",
        "repetitions": repetitions,
        "task": {
            "provider": "sim",
            "model": "sim-task",
            "messages": [
                {"role": "system", "content": SYSTEM},
                {"role": "user", "content": "{{input.question}}"}
            ]
        },
        "evaluators": [{
            "name": "correct",
            "provider": "sim",
            "model": "sim-judge",
            "messages": [{"role": "user", "content": "Expected {{expected}}; got {{output}}. Answer CORRECT or INCORRECT."}],
            "labels": ["CORRECT", "INCORRECT"]
        }],
        "providers": {
            "sim": {"kind": "openai_compatible", "base_url": format!("{url}/v1"), "initial_rps": 100}
        }
    })
}

fn write_jsonl(path: &Path, questions: &[(String, u64)]) {
    let lines: Vec<String> = questions
        .iter()
        .map(|(q, a)| json!({"input": {"question": q}, "expected": a}).to_string())
        .collect();
    std::fs::write(path, lines.join("\n") + "\n").unwrap();
}

fn write_json(path: &Path, value: &Value) {
    std::fs::write(path, serde_json::to_string_pretty(value).unwrap()).unwrap();
}

async fn get_json(url: &str) -> Value {
    let response = reqwest::get(url).await.unwrap();
    assert!(
        response.status().is_success(),
        "GET {url}: {}",
        response.status()
    );
    response.json().await.unwrap()
}

async fn db(url: &str) -> Db {
    Db::connect(&StoreConfig::for_url(url)).await.unwrap()
}

/// Runs a JSONL dataset through `runnel run --json` against `database`.
async fn jsonl_run_reports_every_run_and_label(database: &str, dir: &TempDir) {
    let sim = sim(json!({})).await;
    let qs = questions(30);
    write_jsonl(&dir.path("questions.jsonl"), &qs);
    write_json(
        &dir.path("run.json"),
        &run_file("questions.jsonl", &sim.url(), 1),
    );
    let mut cmd = runnel(&dir.0);
    cmd.args(["run", "run.json", "--json", "--database-url", database]);
    let out = output(cmd).await;
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "{stdout}\n{stderr}");
    let summary: Value = serde_json::from_str(&stdout).expect(&stdout);
    assert_eq!(summary["status"], "COMPLETED", "{summary}");
    assert_eq!(summary["ok"], true);
    assert_eq!(
        summary["runs"],
        json!({"expected": 30, "succeeded": 30, "failed": 0})
    );
    assert_eq!(
        summary["annotations"],
        json!({"expected": 30, "done": 30, "failed": 0})
    );
    let wrong = predicted_wrong(&qs, 0.25);
    assert!(wrong > 0 && wrong < 30, "the sample must show both labels");
    let labels = &summary["labels"]["correct"];
    assert_eq!(labels["INCORRECT"], wrong, "{summary}");
    assert_eq!(labels["CORRECT"], 30 - wrong, "{summary}");
    assert_eq!(summary["latency_ms"]["task"]["count"], 30);
    // Every provider call the engine counted reached the simulator.
    assert_eq!(summary["calls"]["total"], sim.stats().requests, "{summary}");
    assert_eq!(summary["calls"]["ideal"], 60);
    // Progress went to stderr, leaving stdout to the JSON.
    assert!(stderr.contains("progress: runs"), "{stderr}");

    let db = db(database).await;
    let experiments = db.experiments(&ExperimentFilter::default()).await.unwrap();
    assert_eq!(experiments.len(), 1);
    assert_eq!(experiments[0].progress.annotations_done, 30);
    db.close().await;
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_jsonl_on_sqlite_reports_every_run_and_label() {
    let dir = TempDir::new("jsonl");
    jsonl_run_reports_every_run_and_label(&dir.sqlite(), &dir).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_jsonl_on_postgres_reports_every_run_and_label() {
    let dir = TempDir::new("pg");
    // The database is dropped afterwards, also when the test fails.
    with_temp_db(DatabaseKind::Postgres, async |database| {
        jsonl_run_reports_every_run_and_label(database.url(), &dir).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_csv_with_repetitions_prints_the_summary_table() {
    let dir = TempDir::new("csv");
    let sim = sim(json!({})).await;
    let qs = questions(12);
    let mut csv = String::from("question,expected\n");
    for (q, a) in &qs {
        csv.push_str(&format!("{q},{a}\n"));
    }
    std::fs::write(dir.path("questions.csv"), csv).unwrap();
    // TOML this time, as the README shows.
    let toml = format!(
        r#"dataset = "questions.csv"
repetitions = 2

[task]
provider = "sim"
model = "sim-task"
messages = [
  {{ role = "system", content = "{SYSTEM}" }},
  {{ role = "user", content = "{{{{input.question}}}}" }},
]

[[evaluators]]
name = "correct"
provider = "sim"
model = "sim-judge"
messages = [{{ role = "user", content = "Expected {{{{expected}}}}; got {{{{output}}}}. Answer CORRECT or INCORRECT." }}]
labels = ["CORRECT", "INCORRECT"]

[providers.sim]
kind = "openai_compatible"
base_url = "{}/v1"
initial_rps = 100
"#,
        sim.url()
    );
    std::fs::write(dir.path("run.toml"), toml).unwrap();
    let mut cmd = runnel(&dir.0);
    cmd.args(["run", "run.toml", "--database-url", &dir.sqlite()]);
    let out = output(cmd).await;
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "{stdout}\n{stderr}");
    // Both repetitions of a question get the same (deterministic) answer.
    let wrong = 2 * predicted_wrong(&qs, 0.25);
    for needle in [
        "COMPLETED".to_owned(),
        "24 succeeded, 0 failed, of 24".to_owned(),
        "24 done, 0 failed, of 24".to_owned(),
        format!("INCORRECT {wrong} ("),
        "task latency".to_owned(),
        "provider calls for 48 results".to_owned(),
    ] {
        assert!(stdout.contains(&needle), "{needle:?} missing:\n{stdout}");
    }
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permanently_failed_runs_exit_with_status_3() {
    let dir = TempDir::new("fail");
    // The simulator answers 401 to calls without a key: a permanent failure.
    let sim = sim(json!({"require_key": true})).await;
    write_jsonl(&dir.path("q.jsonl"), &questions(5));
    write_json(&dir.path("run.json"), &run_file("q.jsonl", &sim.url(), 1));
    let mut cmd = runnel(&dir.0);
    cmd.args(["run", "run.json", "--json", "--database-url", &dir.sqlite()]);
    let out = output(cmd).await;
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(3), "{stdout}\n{stderr}");
    let summary: Value = serde_json::from_str(&stdout).expect(&stdout);
    assert_eq!(summary["ok"], false);
    assert_eq!(summary["runs"]["failed"], 5);
    assert_eq!(summary["failures"][0]["count"], 5, "{summary}");
    assert!(
        summary["failures"][0]["error"]
            .as_str()
            .unwrap()
            .contains("401"),
        "{summary}"
    );
    assert!(stderr.contains("error: 5 of 5 runs failed"), "{stderr}");
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_dataset_line_or_experiment_is_named_and_nothing_is_stored() {
    let dir = TempDir::new("bad");
    let sim = sim(json!({})).await;
    let database = dir.sqlite();
    // One good run first, so there is something that must stay as it is.
    write_jsonl(&dir.path("good.jsonl"), &questions(3));
    write_json(
        &dir.path("good.json"),
        &run_file("good.jsonl", &sim.url(), 1),
    );
    let mut cmd = runnel(&dir.0);
    cmd.args(["run", "good.json", "--database-url", &database]);
    assert!(output(cmd).await.status.success());

    let mut lines: Vec<String> = questions(5)
        .iter()
        .map(|(q, a)| json!({"input": {"question": q}, "expected": a}).to_string())
        .collect();
    lines[3] = r#"{"input": {"question": "What is 1 + 1?"}, "expectd": 2}"#.to_owned();
    std::fs::write(dir.path("bad.jsonl"), lines.join("\n")).unwrap();
    std::fs::write(
        dir.path("bad.csv"),
        "question,expected\nWhat is 1 + 1?,2\nWhat is 2 + 2?,4,extra\n",
    )
    .unwrap();
    let mut unknown_provider = run_file("good.jsonl", &sim.url(), 1);
    unknown_provider["task"]["provider"] = json!("nope");
    let mut bad_template = run_file("good.jsonl", &sim.url(), 1);
    bad_template["task"]["messages"][1]["content"] = json!("{{input.questoin}}");
    let cases = [
        (
            run_file("bad.jsonl", &sim.url(), 1),
            "bad.jsonl line 4: ",
            "expectd",
        ),
        (
            run_file("bad.csv", &sim.url(), 1),
            "bad.csv line 3: ",
            "3 fields",
        ),
        (unknown_provider, "`task.provider`", "nope"),
        (bad_template, "`task.messages[1]`", "input.questoin"),
        (
            run_file("good.jsonl", &sim.url(), 0),
            "`repetitions`",
            "at least 1",
        ),
    ];
    for (file, first, second) in cases {
        write_json(&dir.path("bad.json"), &file);
        let mut cmd = runnel(&dir.0);
        cmd.args(["run", "bad.json", "--database-url", &database]);
        let out = output(cmd).await;
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{first}: {stderr}");
        assert!(
            stderr.contains(first) && stderr.contains(second),
            "{first} / {second} missing: {stderr}"
        );
        assert!(!stderr.contains("panicked"), "{stderr}");
    }

    let db = db(&database).await;
    assert_eq!(
        db.datasets().await.unwrap().len(),
        1,
        "nothing half-imported"
    );
    let experiments = db.experiments(&ExperimentFilter::default()).await.unwrap();
    assert_eq!(experiments.len(), 1);
    db.close().await;
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreadable_run_files_are_errors_not_panics() {
    let dir = TempDir::new("file");
    std::fs::write(dir.path("a.toml"), "dataset = 3\n").unwrap();
    std::fs::write(
        dir.path("b.json"),
        "{\"dataset\": \"x.jsonl\", \"task\": 1}",
    )
    .unwrap();
    for (file, needle) in [
        ("a.toml", "a.toml: `dataset`"),
        ("b.json", "b.json: `task`"),
        ("missing.toml", "missing.toml: cannot read it"),
    ] {
        let mut cmd = runnel(&dir.0);
        cmd.args(["run", file, "--database-url", &dir.sqlite()]);
        let out = output(cmd).await;
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{file}: {stderr}");
        assert!(stderr.contains(needle), "{needle}: {stderr}");
    }
    // Nothing was even opened.
    assert!(!dir.path("runnel.db").exists());
}

/// Options that keep the demo short: a fast simulator and a warm advisor.
const FAST_DEMO: &[&str] = &[
    "--examples",
    "20",
    "--rps",
    "100",
    "--initial-rps",
    "50",
    "--latency",
    "5ms",
    "--jitter",
    "3ms",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_exit_runs_everything_and_prints_the_summary() {
    let dir = TempDir::new("demo");
    // A previous demo's file is replaced, not reused.
    std::fs::write(dir.path("demo.db"), "not a database").unwrap();
    let mut cmd = runnel(&dir.0);
    cmd.args(["demo", "--exit", "--db", "demo.db"])
        .args(FAST_DEMO);
    let out = output(cmd).await;
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "{stdout}\n{stderr}");
    for needle in [
        "simulated OpenAI-compatible API at http://127.0.0.1:",
        "20 arithmetic questions",
        "progress: runs",
        "COMPLETED",
        "20 succeeded, 0 failed, of 20",
        "20 done, 0 failed, of 20",
        "labels correct",
        "task latency",
        "requests reached the simulator for 40 results",
    ] {
        assert!(stdout.contains(needle), "{needle:?} missing:\n{stdout}");
    }
    assert!(!stdout.contains("keeps serving"), "{stdout}");
    let db = db(&format!("sqlite://{}", dir.path("demo.db").display())).await;
    assert_eq!(db.datasets().await.unwrap().len(), 1);
    db.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_serves_the_api_until_interrupted() {
    let dir = TempDir::new("serve");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let bind = format!("127.0.0.1:{port}");
    let mut cmd = runnel(&dir.0);
    cmd.args(["demo", "--bind", &bind]).args(FAST_DEMO);
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut seen = Vec::new();
    let serving = tokio::time::timeout(DEADLINE, async {
        while let Some(line) = lines.next_line().await.unwrap() {
            // The last of the curl lines printed after the summary.
            let done = line.contains("/metrics");
            seen.push(line);
            if done {
                return true;
            }
        }
        false
    })
    .await
    .expect("the demo did not finish in time");
    assert!(serving, "the demo ended early:\n{}", seen.join("\n"));

    let base = format!("http://{bind}");
    let experiments = get_json(&format!("{base}/v1/experiments")).await;
    assert_eq!(experiments[0]["status"], "COMPLETED", "{experiments}");
    assert_eq!(experiments[0]["progress"]["annotations_done"], 20);
    // The curl lines the demo printed name this experiment.
    let id = experiments[0]["id"].as_str().unwrap();
    let printed = seen.join("\n");
    assert!(
        printed.contains(&format!("{base}/v1/experiments/{id}")),
        "{printed}"
    );
    let runs = get_json(&format!("{base}/v1/experiments/{id}/runs?limit=2")).await;
    assert_eq!(runs["items"].as_array().unwrap().len(), 2);
    assert_eq!(runs["items"][0]["annotations"][0]["evaluator"], "correct");

    // Ctrl-C: a graceful shutdown and a clean exit.
    let pid = child.id().unwrap().to_string();
    let status = std::process::Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .unwrap();
    assert!(status.success());
    let rest = tokio::time::timeout(DEADLINE, async {
        let mut rest = Vec::new();
        while let Some(line) = lines.next_line().await.unwrap() {
            rest.push(line);
        }
        rest
    })
    .await
    .expect("the demo did not stop");
    let status = tokio::time::timeout(DEADLINE, child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "{status}: {}", rest.join("\n"));
    assert!(rest.iter().any(|l| l == "shutting down"), "{rest:?}");
}
