//! Security (issue 8, part 5), on SQLite and on PostgreSQL:
//!
//! - **Planted provider key.** The server reads a key-shaped secret from its
//!   environment for every provider; one simulator accepts it, another
//!   rejects it with a 401 that repeats it. After experiments ran through
//!   both (with trace-level JSON logs), no fragment of the key may appear in
//!   any table (PostgreSQL: every row of every table as JSON; SQLite: every
//!   byte of the file and of the files named after it, such as its WAL), any
//!   log line, the metrics, any API response or event, or `runnel config`.
//! - **API keys.** With `auth.api_keys` set, every `/v1` route answers 401
//!   with `WWW-Authenticate` to no key and to near-miss keys (a prefix, one
//!   character changed, another case, another scheme), and accepts the key;
//!   health, readiness and metrics stay open.
//! - **Public bind.** `runnel serve --bind 0.0.0.0:…` (and `[::]`, and the
//!   same through `RUNNEL_SERVER__BIND`) without keys exits non-zero naming
//!   `server.bind`, before listening.
//! - **SQL injection.** Injection strings in every text field (dataset and
//!   experiment names, example input/expected/metadata keys and values,
//!   model names, prompt texts, evaluator names and labels, query
//!   parameters) round-trip unchanged through the API and harm nothing: the
//!   tables keep their rows and the experiment runs to completion.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde_json::{Value, json};

use super::db::Database;
use super::{Ctx, PgDb, Report};
use crate::harness::{ServerProcess, ServerToml, SimProcess, arithmetic};

const KEY_ENV: &str = "CHAOS_PLANTED_KEY";
const PLANTED: &str = "sk-chaos-PLANTED-4e1f7a09c2d84b6ba5e3deadbeef";
/// Distinctive parts of the planted key: a partial leak is a leak too.
const FRAGMENTS: &[&str] = &[PLANTED, "PLANTED-4e1f7a09", "c2d84b6ba5e3deadbeef"];
const AUTH_KEY: &str = "chaos-api-key-5b0d9e27f1";

/// Strings that break naively built SQL (and a NUL, which PostgreSQL text
/// cannot hold: it may only arrive inside JSON, where it is escaped).
const INJECTIONS: &[&str] = &[
    "'; DROP TABLE runs; --",
    "\" OR \"1\"=\"1",
    "x' OR '1'='1' --",
    "1; DELETE FROM experiments WHERE 1=1",
    "Robert'); DROP TABLE datasets;--",
    "$1 $2 ? :name @p1",
    "\\'; SELECT pg_sleep(10); --",
    "%' UNION SELECT * FROM experiments --",
    "0x27 CHAR(39) ' || '",
    "'; ATTACH DATABASE '/tmp/x.db' AS x; --",
    "NUL \u{0} in the middle; E'\\000'",
];

pub(super) async fn run(ctx: &Ctx, report: &mut Report) -> Result<()> {
    let dir = ctx.subdir("sqlite")?;
    let url = format!("sqlite://{}", dir.join("runnel.db").display());
    one_database(ctx, &dir, &url, "SQLite", report).await?;
    let dir = ctx.subdir("postgres")?;
    let pg = PgDb::create("security")?;
    one_database(ctx, &dir, &pg.url, "PostgreSQL", report).await?;
    public_bind(ctx, report).await
}

fn leaks(text: &str) -> Vec<&'static str> {
    FRAGMENTS
        .iter()
        .copied()
        .filter(|f| text.contains(f))
        .collect()
}

async fn one_database(
    ctx: &Ctx,
    dir: &std::path::Path,
    url: &str,
    label: &str,
    report: &mut Report,
) -> Result<()> {
    let n = ctx.pick(20, 100);
    let good = SimProcess::start(&ctx.bin, dir, super::sim_config(ctx.seed, 5, 2)).await?;
    let leaky = SimProcess::start(
        &ctx.bin,
        dir,
        json!({"accepted_keys": ["sk-some-other-key-entirely-000000000000"]}),
    )
    .await?;
    let toml = super::keyed_providers(ServerToml::new(url), &good.url, KEY_ENV)
        .provider(
            "leaky",
            &leaky.url,
            &[("unlimited", json!(true)), ("api_key_env", json!(KEY_ENV))],
        )
        .set(
            "auth",
            "api_keys",
            json!([AUTH_KEY, "chaos-second-key-000111"]),
        )
        .set("log", "format", "json")
        .set("scheduler", "backoff_base", "50ms")
        .set("scheduler", "backoff_max", "200ms");
    let toml_text = toml.render();
    let server = ServerProcess::start(
        &ctx.bin,
        dir,
        "server",
        &toml_text,
        &[(KEY_ENV, PLANTED), ("RUST_LOG", "trace,hyper=info,h2=info")],
    )
    .await?;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()?;
    let base = server.url.clone();
    let call = |method: reqwest::Method, path: &str, token: Option<&str>| {
        let mut r = http.request(method, format!("{base}{path}"));
        if let Some(t) = token {
            r = r.header("authorization", t.to_owned());
        }
        r
    };
    let bearer = format!("Bearer {AUTH_KEY}");
    let ok = Some(bearer.as_str());
    let mut requests = 0u64;
    let mut responses: Vec<(String, String)> = Vec::new();

    // A dataset, an experiment scored by a good and a leaky judge, and one
    // whose every task call is rejected with the echo.
    let examples: Vec<Value> = arithmetic(n).collect();
    let created: Value = call(reqwest::Method::POST, "/v1/datasets", ok)
        .json(&json!({"name": "secrets", "examples": examples}))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let dataset = created["id"].as_str().context("dataset id")?.to_owned();
    let judge = |name: &str, provider: &str| {
        json!({"name": name, "provider": provider, "model": "judge-model",
               "messages": [{"role": "user", "content": "Expected {{expected}}; got {{output}}. Answer CORRECT or INCORRECT."}],
               "labels": ["CORRECT", "INCORRECT"]})
    };
    let task = |provider: &str| {
        json!({"provider": provider, "model": "task-model",
               "messages": [{"role": "user", "content": "Question: {{input.question}}"}]})
    };
    let mut ids = Vec::new();
    for (name, task_provider, judges) in [
        (
            "scored",
            "task",
            vec![judge("correct", "judge"), judge("leaky-judge", "leaky")],
        ),
        ("rejected", "leaky", vec![judge("correct", "judge")]),
    ] {
        let v: Value = call(reqwest::Method::POST, "/v1/experiments", ok)
            .json(&json!({"dataset_id": dataset, "name": name, "task": task(task_provider), "evaluators": judges}))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        ids.push(v["id"].as_str().context("experiment id")?.to_owned());
        requests += 1;
    }
    requests += 1;
    for id in &ids {
        let (v, n) = wait_done(&call, ok, id, Duration::from_secs(300)).await?;
        requests += n;
        report.check(v["status"] == "COMPLETED", || {
            format!("{label}: experiment {id} ended {v}")
        });
    }
    let good_stats = good.snapshot().await?;
    let leaky_stats = leaky.snapshot().await?;
    report.provider_calls += good_stats.requests + leaky_stats.requests;
    report.check(good_stats.keys.contains_key(PLANTED), || {
        format!("{label}: the planted key never reached the provider")
    });
    report.check(
        leaky_stats
            .keys
            .get(PLANTED)
            .is_some_and(|k| k.requests > 0 && k.ok == 0),
        || format!("{label}: the leaky provider did not reject the planted key"),
    );

    // Every API response.
    let mut paths = vec![
        "/v1/datasets".to_owned(),
        format!("/v1/datasets/{dataset}"),
        "/v1/experiments".to_owned(),
        "/openapi.json".to_owned(),
        "/metrics".to_owned(),
        "/healthz".to_owned(),
        "/readyz".to_owned(),
        "/v1/nothing-here".to_owned(),
    ];
    for id in &ids {
        for suffix in [
            "",
            "/runs",
            "/runs?limit=1000",
            "/runs.jsonl",
            "/logs",
            "/events",
        ] {
            paths.push(format!("/v1/experiments/{id}{suffix}"));
        }
    }
    for path in &paths {
        let text = call(reqwest::Method::GET, path, ok)
            .send()
            .await?
            .text()
            .await?;
        requests += 1;
        responses.push((path.clone(), text));
    }
    let redacted = responses
        .iter()
        .filter(|(p, _)| p.ends_with("/runs.jsonl"))
        .map(|(_, t)| t.matches("[REDACTED]").count())
        .sum::<usize>();
    report.check(redacted > 0, || {
        format!("{label}: the provider's echo of the key was not recorded redacted")
    });

    // `runnel config` with the same file and environment.
    let out = Command::new(&ctx.bin.runnel)
        .arg("--config")
        .arg(dir.join("server.toml"))
        .arg("config")
        .env(KEY_ENV, PLANTED)
        .output()
        .context("running runnel config")?;
    responses.push((
        "runnel config".into(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    ));
    responses.push((
        "runnel config (stderr)".into(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ));

    // Logs and tables.
    let mut log_lines = 0usize;
    for entry in std::fs::read_dir(dir)? {
        let p = entry?.path();
        if p.extension().is_some_and(|x| x == "log") {
            let text = std::fs::read_to_string(&p).unwrap_or_default();
            log_lines += text.lines().count();
            responses.push((p.display().to_string(), text));
        }
    }
    let db = Database::from_url(url);
    let dump = db.dump()?;
    report.rows_checked += dump.lines().count() as u64;
    responses.push(("the database".into(), dump));
    let mut leaked = Vec::new();
    for (what, text) in &responses {
        let found = leaks(text);
        if !found.is_empty() {
            leaked.push(format!("{what}: {found:?}"));
        }
    }
    report.figure(
        &format!("{label}: planted key searched in"),
        format!(
            "{} API responses, {log_lines} log lines, every table, runnel config; {} redacted echoes recorded",
            paths.len(),
            redacted
        ),
    );
    report.check(leaked.is_empty(), || {
        format!("{label}: the planted key leaked into {leaked:?}")
    });
    report.fault(
        &format!("{label}: provider echoing the key"),
        leaky_stats.requests,
    );

    // API keys on every /v1 route.
    let ghost = "0191d3c2-7e4b-7c4e-9a53-6f0e2d5b1a77";
    let routes: &[(&str, &[reqwest::Method])] = &[
        (
            "/v1/datasets",
            &[reqwest::Method::GET, reqwest::Method::POST],
        ),
        ("/v1/datasets/{id}", &[reqwest::Method::GET]),
        ("/v1/datasets/{id}/examples", &[reqwest::Method::POST]),
        (
            "/v1/experiments",
            &[reqwest::Method::GET, reqwest::Method::POST],
        ),
        (
            "/v1/experiments/{id}",
            &[reqwest::Method::GET, reqwest::Method::DELETE],
        ),
        ("/v1/experiments/{id}/stop", &[reqwest::Method::POST]),
        ("/v1/experiments/{id}/resume", &[reqwest::Method::POST]),
        ("/v1/experiments/{id}/evaluators", &[reqwest::Method::POST]),
        ("/v1/experiments/{id}/runs", &[reqwest::Method::GET]),
        ("/v1/experiments/{id}/runs.jsonl", &[reqwest::Method::GET]),
        ("/v1/experiments/{id}/logs", &[reqwest::Method::GET]),
        ("/v1/experiments/{id}/events", &[reqwest::Method::GET]),
    ];
    let near_misses = [
        None,
        Some(format!("Bearer {}", &AUTH_KEY[..AUTH_KEY.len() - 1])),
        Some(format!("Bearer {AUTH_KEY}x")),
        Some(format!("Bearer {}0", &AUTH_KEY[..AUTH_KEY.len() - 1])),
        Some(format!("Bearer {}", AUTH_KEY.to_uppercase())),
        Some(format!("Basic {AUTH_KEY}")),
        Some(format!("Token {AUTH_KEY}")),
        Some("Bearer ".to_owned()),
        Some(AUTH_KEY.to_owned()),
    ];
    let mut auth_failures = Vec::new();
    let mut auth_checks = 0u64;
    for (route, methods) in routes {
        let path = route.replace("{id}", ghost);
        for method in *methods {
            for token in &near_misses {
                let r = call(method.clone(), &path, token.as_deref())
                    .header("content-type", "application/json")
                    .body("{}")
                    .send()
                    .await?;
                auth_checks += 1;
                let www = r.headers().get("www-authenticate").is_some();
                let status = r.status().as_u16();
                let text = r.text().await.unwrap_or_default();
                if status != 401 || !www || text.contains(AUTH_KEY) {
                    auth_failures.push(format!("{method} {path} with {token:?}: {status}"));
                }
            }
            let r = call(method.clone(), &path, ok)
                .header("content-type", "application/json")
                .body("{}")
                .send()
                .await?;
            auth_checks += 1;
            if r.status().as_u16() == 401 {
                auth_failures.push(format!("{method} {path} with the key: 401"));
            }
        }
    }
    for path in ["/healthz", "/readyz", "/metrics"] {
        let r = call(reqwest::Method::GET, path, None).send().await?;
        auth_checks += 1;
        if !r.status().is_success() {
            auth_failures.push(format!("{path} without a key: {}", r.status()));
        }
    }
    requests += auth_checks;
    report.figure(
        &format!("{label}: API key checks"),
        format!(
            "{auth_checks} requests ({} near-miss keys per route and method)",
            near_misses.len()
        ),
    );
    report.check(auth_failures.is_empty(), || {
        format!(
            "{label}: API keys: {:?}",
            auth_failures.iter().take(5).collect::<Vec<_>>()
        )
    });

    // SQL injection strings in every text field.
    let before = db.table_counts()?;
    let injected = injection(&call, ok, report, label, &db).await?;
    requests += injected.requests;
    let after = db.table_counts()?;
    report.rows_checked += after.iter().map(|(_, n)| *n as u64).sum::<u64>();
    let grew = |t: &str| {
        let b = before.iter().find(|(n, _)| n == t).map_or(0, |x| x.1);
        let a = after.iter().find(|(n, _)| n == t).map_or(0, |x| x.1);
        a - b
    };
    report.check(
        grew("datasets") == 1 && grew("experiments") == 1 && grew("runs") == injected.runs,
        || format!("{label}: injection: tables before {before:?}, after {after:?}"),
    );
    report.fault(&format!("{label}: SQL injection strings"), injected.fields);
    report.requests += requests;
    let panics = super::panicked_logs(dir);
    report.check(panics.is_empty(), || format!("panics in {panics:?}"));
    Ok(())
}

/// Polls experiment `id` (with the API key) until it leaves RUNNING or
/// `within` passes; returns its last view and the requests made.
async fn wait_done<F>(
    call: &F,
    ok: Option<&str>,
    id: &str,
    within: Duration,
) -> Result<(Value, u64)>
where
    F: Fn(reqwest::Method, &str, Option<&str>) -> reqwest::RequestBuilder,
{
    let until = Instant::now() + within;
    let mut requests = 0;
    loop {
        let v: Value = call(reqwest::Method::GET, &format!("/v1/experiments/{id}"), ok)
            .send()
            .await?
            .json()
            .await?;
        requests += 1;
        if v["status"] != "RUNNING" || Instant::now() > until {
            return Ok((v, requests));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

struct Injected {
    requests: u64,
    fields: u64,
    runs: i64,
}

async fn injection<F>(
    call: &F,
    ok: Option<&str>,
    report: &mut Report,
    label: &str,
    db: &Database,
) -> Result<Injected>
where
    F: Fn(reqwest::Method, &str, Option<&str>) -> reqwest::RequestBuilder,
{
    let mut requests = 0u64;
    let mut fields = 0u64;
    let mut mismatches = Vec::new();
    let examples: Vec<Value> = INJECTIONS
        .iter()
        .enumerate()
        .map(|(i, s)| {
            json!({
                "input": {"question": s, *s: s, "i": i},
                "expected": s,
                "metadata": {*s: [s, {"nested": s}]}
            })
        })
        .collect();
    fields += INJECTIONS.len() as u64 * 5;
    let name = INJECTIONS[0];
    let created: Value = call(reqwest::Method::POST, "/v1/datasets", ok)
        .json(&json!({"name": name, "examples": &examples}))
        .send()
        .await?
        .json()
        .await?;
    requests += 1;
    let dataset = created["id"]
        .as_str()
        .with_context(|| format!("{created}"))?
        .to_owned();
    let got: Value = call(reqwest::Method::GET, &format!("/v1/datasets/{dataset}"), ok)
        .send()
        .await?
        .json()
        .await?;
    requests += 1;
    if got["name"] != name {
        mismatches.push(format!("dataset name {} ≠ {name:?}", got["name"]));
    }
    let system = [INJECTIONS[1], INJECTIONS[2], INJECTIONS[3], INJECTIONS[10]].join(" | ");
    let experiment_name = INJECTIONS[4];
    let model = INJECTIONS[5];
    let judge_name = INJECTIONS[6];
    let labels = [INJECTIONS[7], INJECTIONS[8]];
    let body = json!({
        "dataset_id": dataset, "name": experiment_name, "start": false,
        "task": {"provider": "task", "model": model,
                 "messages": [{"role": "system", "content": system},
                              {"role": "user", "content": "Question: {{input.question}}"}]},
        "evaluators": [{"name": judge_name, "provider": "judge", "model": model,
                        "messages": [{"role": "user", "content": "{{output}} vs {{expected}}"}],
                        "labels": labels}]
    });
    fields += 7;
    let created: Value = call(reqwest::Method::POST, "/v1/experiments", ok)
        .json(&body)
        .send()
        .await?
        .json()
        .await?;
    requests += 1;
    let id = created["id"]
        .as_str()
        .with_context(|| format!("{created}"))?
        .to_owned();
    let attached = call(
        reqwest::Method::POST,
        &format!("/v1/experiments/{id}/evaluators"),
        ok,
    )
    .json(
        &json!({"name": INJECTIONS[9], "provider": "judge", "model": model,
                      "messages": [{"role": "user", "content": INJECTIONS[9]}]}),
    )
    .send()
    .await?;
    requests += 1;
    fields += 2;
    if attached.status().as_u16() != 201 {
        mismatches.push(format!(
            "attach: {}",
            attached.text().await.unwrap_or_default()
        ));
    }
    // Query parameters.
    for query in [
        format!("?status={}", urlencode(INJECTIONS[0])),
        format!("?dataset_id={}", urlencode(INJECTIONS[2])),
        format!("?cursor={}&limit=1", urlencode(INJECTIONS[3])),
    ] {
        let path = if query.starts_with("?cursor") {
            format!("/v1/experiments/{id}/runs{query}")
        } else {
            format!("/v1/experiments{query}")
        };
        let r = call(reqwest::Method::GET, &path, ok).send().await?;
        requests += 1;
        fields += 1;
        if r.status().as_u16() != 400 {
            mismatches.push(format!("GET {path}: {} (wanted 400)", r.status()));
        }
    }
    let view: Value = call(reqwest::Method::GET, &format!("/v1/experiments/{id}"), ok)
        .send()
        .await?
        .json()
        .await?;
    requests += 1;
    if view["name"] != experiment_name {
        mismatches.push(format!(
            "experiment name {} ≠ {experiment_name:?}",
            view["name"]
        ));
    }
    // The stored task, evaluators and examples, read from the database.
    let tasks: Vec<Value> = db
        .query("SELECT task FROM experiments")?
        .iter()
        .filter_map(|r| serde_json::from_str(&r[0]).ok())
        .collect();
    let task_ok = tasks.iter().any(|t| {
        t["model"] == model
            && t["messages"][0]["content"] == system.as_str()
            && t["provider"] == "task"
    });
    if !task_ok {
        mismatches.push(format!(
            "no stored task with model {model:?} and system {system:?}: {tasks:?}"
        ));
    }
    let evaluators = db.query("SELECT name, spec FROM evaluators")?;
    for wanted in [judge_name, INJECTIONS[9]] {
        if !evaluators.iter().any(|r| r[0] == wanted) {
            mismatches.push(format!("evaluator {wanted:?} not stored verbatim"));
        }
    }
    let stored: Vec<(Value, Value, Value)> = db
        .query("SELECT input, COALESCE(expected, 'null'), metadata FROM dataset_examples")?
        .iter()
        .filter_map(|r| {
            Some((
                serde_json::from_str(&r[0]).ok()?,
                serde_json::from_str(&r[1]).ok()?,
                serde_json::from_str(&r[2]).ok()?,
            ))
        })
        .collect();
    for example in &examples {
        let found = stored.iter().any(|(i, e, m)| {
            *i == example["input"] && *e == example["expected"] && *m == example["metadata"]
        });
        if !found {
            mismatches.push(format!("example {example} not stored verbatim"));
        }
    }
    // Run it: the prompts go out, the results come back, nothing breaks.
    let r = call(
        reqwest::Method::POST,
        &format!("/v1/experiments/{id}/resume"),
        ok,
    )
    .send()
    .await?;
    requests += 1;
    if !r.status().is_success() {
        mismatches.push(format!("resume: {}", r.status()));
    }
    let (v, n) = wait_done(call, ok, &id, Duration::from_secs(120)).await?;
    requests += n;
    if v["status"] != "COMPLETED" {
        mismatches.push(format!("the injection experiment ended {v}"));
    }
    let page: Value = call(
        reqwest::Method::GET,
        &format!("/v1/experiments/{id}/runs?limit=100"),
        ok,
    )
    .send()
    .await?
    .json()
    .await?;
    requests += 1;
    let runs = page["items"].as_array().cloned().unwrap_or_default();
    for run in &runs {
        let names: Vec<&str> = run["annotations"]
            .as_array()
            .map(|a| a.iter().filter_map(|x| x["evaluator"].as_str()).collect())
            .unwrap_or_default();
        for wanted in [judge_name, INJECTIONS[9]] {
            if !names.contains(&wanted) {
                mismatches.push(format!(
                    "run {} lacks evaluator {wanted:?}: {names:?}",
                    run["id"]
                ));
            }
        }
        if let Some(label_got) = run["annotations"]
            .as_array()
            .and_then(|a| a.iter().find(|x| x["evaluator"] == judge_name))
            .and_then(|x| x["label"].as_str())
            && !labels.contains(&label_got)
        {
            mismatches.push(format!("label {label_got:?} is not one of {labels:?}"));
        }
    }
    // The examples as the dataset holds them, through the runs' prompts: the
    // sim answers arithmetic only, so compare the dataset's own view.
    let listed: Value = call(reqwest::Method::GET, "/v1/datasets", ok)
        .send()
        .await?
        .json()
        .await?;
    requests += 1;
    let found = listed.as_array().is_some_and(|l| {
        l.iter()
            .any(|d| d["name"] == name && d["example_count"] == INJECTIONS.len())
    });
    if !found {
        mismatches.push(format!(
            "dataset {name:?} with {} examples not listed",
            INJECTIONS.len()
        ));
    }
    report.figure(
        &format!("{label}: SQL injection"),
        format!(
            "{} strings in {fields} fields; {} runs completed; {} mismatches",
            INJECTIONS.len(),
            runs.len(),
            mismatches.len()
        ),
    );
    report.check(mismatches.is_empty(), || {
        format!("{label}: injection round-trip: {mismatches:?}")
    });
    Ok(Injected {
        requests,
        fields,
        runs: runs.len() as i64,
    })
}

fn urlencode(text: &str) -> String {
    text.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

async fn public_bind(ctx: &Ctx, report: &mut Report) -> Result<()> {
    let dir = ctx.subdir("bind")?;
    let url = format!("sqlite://{}", dir.join("runnel.db").display());
    let toml = ServerToml::new(&url).render();
    let config = dir.join("public.toml");
    std::fs::write(&config, toml)?;
    let mut refused = Vec::new();
    let mut failures = Vec::new();
    for (how, bind, env) in [
        ("--bind 0.0.0.0", "0.0.0.0", None),
        ("--bind [::]", "[::]", None),
        ("RUNNEL_SERVER__BIND=0.0.0.0", "", Some("0.0.0.0")),
    ] {
        let port = crate::harness::free_port()?;
        let mut cmd = Command::new(&ctx.bin.runnel);
        cmd.arg("--config").arg(&config).arg("serve");
        if !bind.is_empty() {
            cmd.arg("--bind").arg(format!("{bind}:{port}"));
        }
        if let Some(host) = env {
            cmd.env("RUNNEL_SERVER__BIND", format!("{host}:{port}"));
        }
        let mut child = cmd
            .current_dir(&dir)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting runnel serve")?;
        let until = Instant::now() + Duration::from_secs(20);
        let status = loop {
            if let Some(s) = child.try_wait()? {
                break Some(s);
            }
            if Instant::now() > until {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let mut stderr = String::new();
        if let Some(mut e) = child.stderr.take() {
            use std::io::Read;
            let _ = e.read_to_string(&mut stderr);
        }
        match status {
            Some(s) if !s.success() && stderr.contains("server.bind") => refused.push(how),
            other => failures.push(format!("{how}: exit {other:?}, stderr {stderr:?}")),
        }
    }
    report.fault("public bind without API keys", 3);
    report.requests += 3;
    report.figure(
        "public binds refused",
        format!("{} of 3 ({})", refused.len(), refused.join(", ")),
    );
    report.check(failures.is_empty(), || format!("public bind: {failures:?}"));
    Ok(())
}
