//! Operations: bearer-key auth, the refusal of a non-loopback bind without
//! keys, `runnel config` masking, invalid configurations (exit 2 naming the
//! key), `/openapi.json` and `/metrics`.

use std::time::Duration;

use serde_json::json;

use crate::common::*;

/// Every path of API.md with its methods (`{id}` stands for any id).
const API_PATHS: &[(&str, &[&str])] = &[
    ("/v1/datasets", &["get", "post"]),
    ("/v1/datasets/{id}", &["get"]),
    ("/v1/datasets/{id}/examples", &["post"]),
    ("/v1/experiments", &["get", "post"]),
    ("/v1/experiments/{id}", &["get", "delete"]),
    ("/v1/experiments/{id}/stop", &["post"]),
    ("/v1/experiments/{id}/resume", &["post"]),
    ("/v1/experiments/{id}/evaluators", &["post"]),
    ("/v1/experiments/{id}/runs", &["get"]),
    ("/v1/experiments/{id}/runs.jsonl", &["get"]),
    ("/v1/experiments/{id}/logs", &["get"]),
    ("/v1/experiments/{id}/events", &["get"]),
    ("/healthz", &["get"]),
    ("/readyz", &["get"]),
    ("/metrics", &["get"]),
];

const AUTH_KEY: &str = "e2e-bearer-key-7f1d2c";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_keys_guard_every_v1_route_and_leave_health_open() {
    // Not database-specific: SQLite only.
    let sim = Sim::start(Duration::ZERO, 0.0).await;
    let db = TestDb::new(DbKind::Sqlite).await;
    let dir = TempDir::new("auth");
    let mut config = ConfigToml::new(&sim.url());
    config.set(
        "auth",
        "api_keys",
        &format!("[\"another-key-123456\", \"{AUTH_KEY}\"]"),
    );
    let server = Server::start(dir.path(), "a", &ServerSpec::new(&config, &db)).await;
    let anonymous = server.api();
    let wrong = anonymous.with_token("e2e-bearer-key-7f1d2");
    let authorised = anonymous.with_token(AUTH_KEY);

    let ghost = uuid::Uuid::new_v4().to_string();
    for (path, methods) in API_PATHS.iter().filter(|(p, _)| p.starts_with("/v1")) {
        let path = path.replace("{id}", &ghost);
        for method in *methods {
            let method = reqwest::Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
            for (who, api) in [("no key", &anonymous), ("a wrong key", &wrong)] {
                let r = api
                    .raw(
                        method.clone(),
                        &path,
                        Some("application/json"),
                        b"{}".to_vec(),
                    )
                    .await;
                let p = r.problem(401);
                assert_eq!(
                    r.header("www-authenticate").as_deref(),
                    Some("Bearer"),
                    "{p}"
                );
                assert!(
                    !r.text().contains(AUTH_KEY),
                    "{method} {path} with {who} echoes a key"
                );
            }
            let r = authorised
                .raw(
                    method.clone(),
                    &path,
                    Some("application/json"),
                    b"{}".to_vec(),
                )
                .await;
            assert_ne!(r.status, 401, "{method} {path} with the key: {}", r.text());
        }
    }
    // Operations stay open.
    for path in ["/healthz", "/readyz", "/metrics", "/openapi.json"] {
        anonymous.get(path).await.expect(200);
    }
    // Nothing was created by the rejected requests; the key works end to end.
    let datasets = authorised.get("/v1/datasets").await.expect(200).json();
    assert_eq!(datasets, json!([]));
    authorised
        .create_dataset("authorised", &arithmetic_examples(1))
        .await;
    assert!(!server.log().contains(AUTH_KEY), "the API key is logged");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_public_bind_without_api_keys_is_refused() {
    let dir = TempDir::new("bind");
    let config = dir.path().join("runnel.toml");
    std::fs::write(&config, "").unwrap();
    let db = format!("sqlite://{}", dir.path().join("never.db").display());
    // (The flag's value wins over the file's; both are checked.)
    let mut cmd = runnel_command(dir.path());
    cmd.args([
        "--config",
        config.to_str().unwrap(),
        "serve",
        "--bind",
        "0.0.0.0:0",
    ])
    .args(["--database-url", &db]);
    let out = output(cmd, 30).await;
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("server.bind"), "{stderr}");
    assert!(stderr.contains("auth.api_keys"), "{stderr}");
    assert!(
        !dir.path().join("never.db").exists(),
        "nothing is opened before the configuration is valid"
    );
    // With keys, or an explicit opt-out, the same bind passes validation:
    // `runnel config` shows it (nothing is bound to a public address here).
    for extra in [
        "[auth]\napi_keys = [\"0123456789abcdef\"]\n",
        "[auth]\nallow_unauthenticated = true\n",
    ] {
        std::fs::write(
            &config,
            format!("[server]\nbind = \"0.0.0.0:8080\"\n{extra}"),
        )
        .unwrap();
        let mut cmd = runnel_command(dir.path());
        cmd.args(["--config", config.to_str().unwrap(), "config"]);
        let out = output(cmd, 30).await;
        assert!(out.status.success(), "{extra}: {out:?}");
        assert!(String::from_utf8_lossy(&out.stdout).contains("0.0.0.0:8080"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runnel_config_masks_secrets_and_prints_a_loadable_file() {
    let dir = TempDir::new("config");
    let config = dir.path().join("runnel.toml");
    std::fs::write(
        &config,
        format!(
            "[database]\nurl = \"postgres://runnel:hunter2-db-pass@127.0.0.1:5432/runnel\"\n\
             [auth]\napi_keys = [\"{AUTH_KEY}\"]\n\
             [providers.sim]\nkind = \"openai\"\nbase_url = \"http://127.0.0.1:9/v1\"\n\
             api_key_env = \"{KEY_ENV}\"\nrpm = 600\n"
        ),
    )
    .unwrap();
    let mut cmd = runnel_command(dir.path());
    cmd.args(["--config", config.to_str().unwrap(), "config"]);
    let out = output(cmd, 30).await;
    assert!(out.status.success(), "{out:?}");
    let printed = String::from_utf8(out.stdout).unwrap();
    for secret in ["hunter2-db-pass", AUTH_KEY, PROVIDER_KEY] {
        assert!(!printed.contains(secret), "{secret} in:\n{printed}");
    }
    assert!(printed.contains("runnel:***@127.0.0.1"), "{printed}");
    assert!(printed.contains("api_keys = [\"********\"]"), "{printed}");
    assert!(
        printed.contains(&format!("api_key_env = \"{KEY_ENV}\"")),
        "{printed}"
    );
    assert!(printed.contains("rpm = 600"), "{printed}");
    // Environment overrides show up in the effective configuration.
    let mut cmd = runnel_command(dir.path());
    cmd.args(["--config", config.to_str().unwrap(), "config"])
        .env("RUNNEL_SCHEDULER__MAX_CONCURRENCY", "37");
    let out = output(cmd, 30).await;
    assert!(String::from_utf8_lossy(&out.stdout).contains("max_concurrency = 37"));
    // What it prints is itself a valid configuration.
    let copy = dir.path().join("printed.toml");
    std::fs::write(&copy, &printed).unwrap();
    let mut cmd = runnel_command(dir.path());
    cmd.args(["--config", copy.to_str().unwrap(), "config"]);
    let out = output(cmd, 30).await;
    assert!(out.status.success(), "{out:?}");
    // And so are the defaults.
    let mut cmd = runnel_command(dir.path());
    cmd.args(["config", "--defaults"]);
    let out = output(cmd, 30).await;
    assert!(out.status.success(), "{out:?}");
    let defaults = String::from_utf8(out.stdout).unwrap();
    assert!(
        defaults.contains("url = \"sqlite://runnel.db\""),
        "{defaults}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_configurations_exit_2_naming_the_key() {
    let dir = TempDir::new("invalid");
    let config = dir.path().join("runnel.toml");
    // (file text, environment, the key the first error line must name)
    type Case = (
        &'static str,
        &'static [(&'static str, &'static str)],
        &'static str,
    );
    #[rustfmt::skip]
    let cases: &[Case] = &[
        ("[scheduler]\nlease = \"soon\"\n", &[], "scheduler.lease"),
        ("[scheduler]\nmax_concurrency = 0\n", &[], "scheduler.max_concurrency"),
        ("[scheduler]\nlease = \"100ms\"\n", &[], "scheduler.lease"),
        ("[server]\nbindd = \"127.0.0.1:1\"\n", &[], "server.bindd"),
        ("[server]\nbody_limit_bytes = 10\n", &[], "server.body_limit_bytes"),
        ("[server]\nbind = \"nowhere\"\n", &[], "server.bind"),
        ("[providers.x]\nkind = \"openai\"\nrpn = 3\n", &[], "providers.x.rpn"),
        ("[providers.x]\nbase_url = \"http://127.0.0.1:9\"\n", &[], "providers.x.kind"),
        ("[providers.x]\nkind = \"openai\"\nrpm = 60\nunlimited = true\n", &[], "providers.x.unlimited"),
        ("[advisor]\nbreaker_threshold = 0\n", &[], "advisor.breaker_threshold"),
        ("[database]\nbatch_size = 0\n", &[], "database.batch_size"),
        ("[database]\nurl = \"mysql://h/db\"\n", &[], "database.url"),
        ("[auth]\napi_keys = [\"short\"]\n", &[], "auth.api_keys"),
        ("[otel]\nendpoint = \"localhost:4318\"\n", &[], "otel.endpoint"),
        ("[log]\nformat = \"xml\"\n", &[], "log.format"),
        ("", &[("RUNNEL_SCHEDULER__LEASE", "forever")], "scheduler.lease"),
        ("", &[("RUNNEL_SERVER__BODY_LIMIT_BYTES", "ten")], "server.body_limit_bytes"),
        ("this is not toml", &[], "line 1"),
    ];
    let mut failures = Vec::new();
    for (text, env, key) in cases {
        std::fs::write(&config, text).unwrap();
        // No flags: they would override the values under test. A valid
        // configuration would make `serve` serve; the time limit catches it.
        for command in ["config", "serve"] {
            let mut cmd = runnel_command(dir.path());
            cmd.args(["--config", config.to_str().unwrap(), command]);
            for (k, v) in *env {
                cmd.env(k, v);
            }
            let out = output(cmd, 30).await;
            let stderr = String::from_utf8_lossy(&out.stderr);
            let first = stderr.lines().next().unwrap_or_default();
            if out.status.code() != Some(2) || !first.contains(key) {
                failures.push(format!(
                    "{text:?} {env:?} `runnel {command}`: exit {:?}, wanted 2 naming `{key}`: {stderr}",
                    out.status.code()
                ));
            }
        }
    }
    // A named configuration file must exist.
    let mut cmd = runnel_command(dir.path());
    cmd.args(["--config", "missing.toml", "config"]);
    let out = output(cmd, 30).await;
    if out.status.code() != Some(2) {
        failures.push(format!("a missing --config file: {out:?}"));
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert!(
        !dir.path().join("runnel.db").exists(),
        "nothing is opened before the configuration is valid"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openapi_lists_every_path_of_the_contract() {
    let sim = Sim::start(Duration::ZERO, 0.0).await;
    let db = TestDb::new(DbKind::Sqlite).await;
    let dir = TempDir::new("openapi");
    let server = Server::start(
        dir.path(),
        "a",
        &ServerSpec::new(&ConfigToml::new(&sim.url()), &db),
    )
    .await;
    let r = server.api().get("/openapi.json").await.expect(200);
    assert!(
        r.header("content-type")
            .is_some_and(|c| c.starts_with("application/json")),
        "{:?}",
        r.headers
    );
    let doc = r.json();
    assert!(
        doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.")),
        "{doc}"
    );
    let paths = doc["paths"].as_object().expect("paths");
    let mut missing = Vec::new();
    for (path, methods) in API_PATHS {
        for method in *methods {
            if paths.get(*path).and_then(|p| p.get(*method)).is_none() {
                missing.push(format!("{method} {path}"));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "missing from /openapi.json: {missing:?}"
    );
    // Error answers are described as problems.
    let create = &paths["/v1/experiments"]["post"];
    assert!(create["responses"]["400"].is_object(), "{create}");
    assert!(create["requestBody"].is_object(), "{create}");
    let schemas = doc["components"]["schemas"].as_object().unwrap();
    for schema in [
        "Problem",
        "CreateExperiment",
        "ExperimentOut",
        "RunOut",
        "DatasetOut",
    ] {
        assert!(schemas.contains_key(schema), "schema {schema} missing");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_expose_the_design_metrics_after_a_run_on_sqlite() {
    metrics_expose_the_design_metrics_after_a_run(DbKind::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_expose_the_design_metrics_after_a_run_on_postgres() {
    metrics_expose_the_design_metrics_after_a_run(DbKind::Postgres).await;
}

async fn metrics_expose_the_design_metrics_after_a_run(kind: DbKind) {
    // The provider allows 10 requests per second per key; runnel starts at
    // 40 and must adapt, so 429s happen and are absorbed.
    let mut sim_config = runnel_sim::SimConfig::default();
    sim_config.limits.rps = Some(10.0);
    sim_config.latency.base = Duration::from_millis(5);
    let sim = Sim::with_config(sim_config).await;
    let db = TestDb::new(kind).await;
    let dir = TempDir::new("metrics");
    let mut config = ConfigToml::new(&sim.url());
    for provider in ["providers.sim", "providers.judge"] {
        config.set(provider, "unlimited", "false");
        config.set(provider, "initial_rps", "40");
    }
    let server = Server::start(dir.path(), "a", &ServerSpec::new(&config, &db)).await;
    let api = server.api();
    let dataset = api.create_dataset("m", &arithmetic_examples(10)).await;
    let id = api
        .create_experiment(&json!({
            "dataset_id": dataset, "name": "m",
            "task": arithmetic_task(false), "evaluators": [label_judge("correct")]
        }))
        .await;
    let events = api.follow(&id, 90).await;
    assert_eq!(final_status(&events), "COMPLETED", "{events:?}");
    let progress = api.experiment(&id).await["progress"].clone();
    assert_eq!(progress["runs_succeeded"], 10, "{progress}");
    assert_eq!(progress["annotations_done"], 10, "{progress}");
    assert!(
        sim.handle.stats().classes.rate_limited > 0,
        "no 429 was provoked"
    );

    let r = api.get("/metrics").await.expect(200);
    assert!(
        r.header("content-type")
            .is_some_and(|c| c.starts_with("text/plain")),
        "{:?}",
        r.headers
    );
    let text = r.text();
    let families = families(&text);
    // DESIGN §9, in order: jobs by outcome, 429s per key, breaker state and
    // trips per key, bucket rate per key, job latency histogram, slots in use
    // and utilisation, experiments by status, claim takeovers, fenced writes.
    let mut missing = Vec::new();
    for name in [
        "runnel_jobs",
        "runnel_rate_limited",
        "runnel_breaker_state",
        "runnel_breaker_trips",
        "runnel_bucket_rate",
        "runnel_job_latency",
        "runnel_slots_in_use",
        "runnel_slot_utilisation",
        "runnel_experiments",
        "runnel_claim_takeovers",
        "runnel_fenced_writes",
    ] {
        if !families.iter().any(|f| is_family(f, name)) {
            missing.push(name);
        }
    }
    assert!(
        missing.is_empty(),
        "metrics missing {missing:?} from:\n{text}"
    );
    // A few values that the run fixes.
    assert!(
        has_sample(
            &text,
            "runnel_jobs",
            &["outcome=\"success\"", "kind=\"task\""]
        ),
        "{text}"
    );
    assert!(
        has_sample(&text, "runnel_jobs", &["outcome=\"rate_limited\""]),
        "{text}"
    );
    assert!(
        has_sample(&text, "runnel_experiments", &["status=\"COMPLETED\""]),
        "{text}"
    );
    assert!(text.contains("runnel_job_latency_seconds_bucket"), "{text}");
    let value = |line_prefix: &str| -> Option<f64> {
        text.lines()
            .find(|l| l.starts_with(line_prefix))
            .and_then(|l| l.rsplit_once(' '))
            .and_then(|(_, v)| v.parse().ok())
    };
    assert_eq!(
        value("runnel_experiments{status=\"COMPLETED\"}"),
        Some(1.0),
        "{text}"
    );
}

/// The metric family names (`# TYPE name kind`) of a Prometheus text.
fn families(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_owned)
        .collect()
}

/// Whether family `f` is metric `name` with a unit or `_total` suffix.
fn is_family(f: &str, name: &str) -> bool {
    f == name
        || f.strip_prefix(name)
            .is_some_and(|rest| ["_total", "_seconds", "_ratio"].contains(&rest))
}

/// Whether a sample of `name` carries every label of `labels`.
fn has_sample(text: &str, name: &str, labels: &[&str]) -> bool {
    text.lines().any(|l| {
        l.starts_with(name)
            && l[name.len()..].starts_with(['{', '_'])
            && labels.iter().all(|label| l.contains(label))
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_follows_the_database_on_postgres() {
    let sim = Sim::start(Duration::ZERO, 0.0).await;
    let db = TestDb::new(DbKind::Postgres).await;
    let dir = TempDir::new("readyz");
    let mut config = ConfigToml::new(&sim.url());
    config.set("database", "acquire_timeout", "\"1s\"");
    let server = Server::start(dir.path(), "a", &ServerSpec::new(&config, &db)).await;
    let api = server.api();
    let ready = api.get("/readyz").await.expect(200).json();
    assert_eq!(ready["status"], "ready", "{ready}");
    assert_eq!(ready["database"], "postgres", "{ready}");

    // The database goes away under the running server.
    let name = db.url().rsplit('/').next().unwrap().to_owned();
    {
        use sqlx::{Connection, Executor};
        let admin_url = runnel_store::testing::postgres_url();
        let mut admin = sqlx::PgConnection::connect(&admin_url).await.unwrap();
        admin
            .execute(sqlx::AssertSqlSafe(format!(
                "DROP DATABASE \"{name}\" WITH (FORCE)"
            )))
            .await
            .unwrap();
        let _ = admin.close().await;
    }
    // Readiness says so (503 problem, Retry-After); liveness does not; API
    // calls get 503 problems, never a 500.
    within(30, "/readyz to report the database gone", async {
        loop {
            if api.get("/readyz").await.status == 503 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    let r = api.get("/readyz").await;
    r.problem(503);
    assert!(r.header("retry-after").is_some(), "{:?}", r.headers);
    api.get("/healthz").await.expect(200);
    let r = api.get("/v1/datasets").await;
    r.problem(503);
    let r = api
        .post("/v1/datasets", &json!({"name": "x", "examples": []}))
        .await;
    r.problem(503);
    assert!(
        !r.text().contains(&name),
        "the problem names internals: {}",
        r.text()
    );
    assert!(!server.log().contains("panicked"), "{}", server.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_prepares_a_database_that_serve_requires_without_auto_migrate() {
    let dir = TempDir::new("migrate");
    let config = dir.path().join("runnel.toml");
    std::fs::write(&config, "[database]\nauto_migrate = false\n").unwrap();
    let url = format!("sqlite://{}", dir.path().join("fresh.db").display());
    let serve = |url: &str| {
        let mut cmd = runnel_command(dir.path());
        cmd.args(["--config", config.to_str().unwrap(), "serve"])
            .args(["--bind", &format!("127.0.0.1:{}", free_port())])
            .args(["--database-url", url]);
        cmd
    };
    // Not migrated: serve refuses, saying what to run.
    let out = output(serve(&url), 30).await;
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("runnel migrate"), "{stderr}");
    // Migrated: it reports the version, twice alike (idempotent).
    let mut versions = Vec::new();
    for _ in 0..2 {
        let mut cmd = runnel_command(dir.path());
        cmd.args(["--config", config.to_str().unwrap(), "migrate"])
            .args(["--database-url", &url]);
        let out = output(cmd, 30).await;
        assert!(out.status.success(), "{out:?}");
        let stdout = String::from_utf8(out.stdout).unwrap();
        assert!(stdout.contains("is at migration"), "{stdout}");
        versions.push(stdout);
    }
    assert_eq!(versions[0], versions[1]);
    // And now serve starts on it.
    let mut config = ConfigToml::new("http://127.0.0.1:9");
    config.set("database", "auto_migrate", "false");
    let spec = ServerSpec {
        config: config.render(),
        database_url: url.clone(),
        replica_id: None,
        env: Vec::new(),
    };
    let server = Server::start(dir.path(), "after-migrate", &spec).await;
    server.api().get("/v1/datasets").await.expect(200);
}
