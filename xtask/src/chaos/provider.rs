//! Provider faults (issue 8, part 3), each phase on a fresh simulator and a
//! fresh server on SQLite:
//!
//! 1. **Outage** (60 s; `--quick` 15 s) mid-run: the simulator resets every
//!    connection. The breaker of each rate-limit key must open within
//!    `threshold` failures, so the calls the simulator refuses during the
//!    outage are at most, per key, `threshold` + one probe per
//!    `breaker_cooldown` + the calls already in flight when the breaker
//!    opened (the experiment's concurrency − 1). After the outage the work
//!    resumes by itself and completes with nothing lost.
//! 2. **Give-up**: an outage longer than `scheduler.breaker_give_up` sets the
//!    experiment to ERROR with a `last_error` naming the provider and its last
//!    error; once the provider is back, a resume completes it.
//! 3. **Storms**: 529 overloaded answers, connections reset mid-stream, and
//!    malformed bodies. Each experiment completes; every example has exactly
//!    one run, every failed run or annotation carries a clear error, and the
//!    server neither crashes nor panics.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::Result;
use serde_json::{Value, json};

use super::client::metric_value;
use super::db::Database;
use super::{Ctx, Report};
use crate::duplicates::FaultTally;
use crate::harness::{Api, ServerProcess, ServerToml, SimProcess, arithmetic, experiment_body};

/// The key the providers send (the simulator accepts any).
const KEY_ENV: &str = "CHAOS_PROVIDER_KEY";
const KEY: &str = "sk-chaos-provider-key-0123456789";

/// A simulator and a server on SQLite in `dir`, with the task on an
/// OpenAI-compatible entry and the judge on an Anthropic entry.
async fn stack(
    ctx: &Ctx,
    dir: &std::path::Path,
    sim: Value,
    tweak: impl FnOnce(ServerToml) -> ServerToml,
) -> Result<(SimProcess, ServerProcess, Database)> {
    let sim = SimProcess::start(&ctx.bin, dir, sim).await?;
    let url = format!("sqlite://{}", dir.join("runnel.db").display());
    let toml = super::keyed_providers(ServerToml::new(&url), &sim.url, KEY_ENV)
        .set("scheduler", "backoff_base", "100ms")
        .set("scheduler", "backoff_max", "1s")
        .set("scheduler", "cooldown", "1s");
    let toml = tweak(toml).render();
    let server = ServerProcess::start(&ctx.bin, dir, "server", &toml, &[(KEY_ENV, KEY)]).await?;
    Ok((sim, server, Database::from_url(&url)))
}

/// Waits until experiment `id` has at least `n` successful runs.
async fn wait_runs(api: &Api, id: &str, n: u64) -> Result<()> {
    api.wait_runs(id, n, Duration::from_secs(120), Duration::from_millis(100))
        .await
}

pub(super) async fn run(ctx: &Ctx, report: &mut Report) -> Result<()> {
    outage(ctx, report).await?;
    give_up(ctx, report).await?;
    storms(ctx, report).await
}

async fn outage(ctx: &Ctx, report: &mut Report) -> Result<()> {
    let dir = ctx.subdir("outage")?;
    let outage_for = ctx.pick(Duration::from_secs(15), Duration::from_secs(60));
    let cooldown = ctx.pick(Duration::from_secs(5), Duration::from_secs(30));
    let threshold = 5u64;
    let concurrency = 4u64;
    let n = ctx.pick(300, 800);
    let (sim, server, db) = stack(ctx, &dir, super::sim_config(ctx.seed, 20, 10), |t| {
        t.set("advisor", "breaker_threshold", threshold)
            .set(
                "advisor",
                "breaker_cooldown",
                format!("{}s", cooldown.as_secs()),
            )
            .set("scheduler", "breaker_give_up", "10m")
    })
    .await?;
    let api = server.api();
    let dataset = api.dataset("outage", arithmetic(n)).await?;
    let body = experiment_body(
        &dataset,
        "outage",
        "task",
        Some("judge"),
        Some(concurrency as u32),
    );
    let id = api.experiment(&body).await?;
    wait_runs(&api, &id, (n / 10) as u64).await?;

    let before = sim.snapshot().await?;
    sim.update(json!({"outage": {"active": true}})).await?;
    let began = Instant::now();
    tokio::time::sleep(outage_for).await;
    let during = sim.snapshot().await?;
    let runs_at_end = api.runs_succeeded(&id).await?;
    sim.update(json!({"outage": {"active": false}})).await?;
    let ended = Instant::now();
    report.fault("provider outage (connections reset)", 1);
    let refused = during.classes.refused - before.classes.refused;
    // Two keys: the task's and the judge's.
    let keys = 2u64;
    let probes = outage_for.as_secs().div_ceil(cooldown.as_secs());
    let strict_bound = keys * (threshold + probes);
    let bound = strict_bound + keys * (concurrency - 1);

    // The work resumes by itself.
    let resumed = loop {
        if api.runs_succeeded(&id).await? > runs_at_end {
            break Some(ended.elapsed());
        }
        if ended.elapsed() > cooldown * 2 + Duration::from_secs(30) {
            break None;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let view = super::wait_completed(&api, &id, Duration::from_secs(600)).await;
    let metrics = reqwest::get(format!("{}/metrics", server.url))
        .await?
        .text()
        .await?;
    let trips = metric_value(&metrics, "runnel_breaker_trips");
    report.requests += 10;
    report.figure(
        "outage",
        format!(
            "{:.0} s (breaker threshold {threshold}, cooldown {} s, concurrency {concurrency}, 2 keys): \
             {refused} calls refused during it; bound threshold + probes = {strict_bound}, \
             + calls in flight when it opened = {bound}; breaker trips {}; work resumed {} after it ended",
            (ended - began).as_secs_f64(),
            cooldown.as_secs(),
            trips.map_or("n/a".into(), |t| t.to_string()),
            resumed.map_or("never".into(), |d| format!("{:.1} s", d.as_secs_f64()))
        ),
    );
    report.check(refused > 0, || {
        "outage: no call reached the simulator during it".into()
    });
    report.check(refused <= strict_bound, || {
        format!(
            "outage: {refused} calls during the outage, more than threshold + one probe per \
             cooldown per key ({strict_bound})"
        )
    });
    report.check(resumed.is_some(), || {
        "outage: the work did not resume by itself after the outage".into()
    });
    match view {
        Ok(_) => {}
        Err(e) => report.check(false, || format!("outage: {e:#}")),
    }
    let inv = db.invariants(true)?;
    report.absorb("outage", &inv);
    // The outage caught the calls in flight when it began.
    report
        .provider_duplicates("outage", &sim, &inv, Some(before.concurrency.current))
        .await?;
    report.provider_calls += sim.snapshot().await?.requests;
    let panics = super::panicked_logs(&dir);
    report.check(panics.is_empty(), || format!("panics in {panics:?}"));
    Ok(())
}

async fn give_up(ctx: &Ctx, report: &mut Report) -> Result<()> {
    let dir = ctx.subdir("give-up")?;
    let give_up_after = ctx.pick(Duration::from_secs(5), Duration::from_secs(20));
    let n = ctx.pick(200, 500);
    let (sim, server, db) = stack(ctx, &dir, super::sim_config(ctx.seed, 20, 10), |t| {
        t.set("advisor", "breaker_threshold", 5)
            .set("advisor", "breaker_cooldown", "2s")
            .set(
                "scheduler",
                "breaker_give_up",
                format!("{}s", give_up_after.as_secs()),
            )
    })
    .await?;
    let api = server.api();
    let dataset = api.dataset("give-up", arithmetic(n)).await?;
    let body = experiment_body(&dataset, "give-up", "task", Some("judge"), Some(4));
    let id = api.experiment(&body).await?;
    wait_runs(&api, &id, (n / 10) as u64).await?;
    let give_up_tally = FaultTally::new(&sim.url);
    give_up_tally.fault().await;
    sim.update(json!({"outage": {"active": true}})).await?;
    let began = Instant::now();
    report.fault("provider outage longer than breaker_give_up", 1);
    let view =
        super::wait_not_running(&api, &id, give_up_after * 3 + Duration::from_secs(60)).await?;
    let took = began.elapsed();
    let last_error = view["last_error"].as_str().unwrap_or_default().to_owned();
    report.figure(
        "give-up",
        format!(
            "breaker_give_up {} s: {} after {:.1} s of outage; last_error: {last_error:?}",
            give_up_after.as_secs(),
            view["status"].as_str().unwrap_or("?"),
            took.as_secs_f64()
        ),
    );
    report.check(view["status"] == "ERROR", || {
        format!("give-up: status {} instead of ERROR", view["status"])
    });
    report.check(
        last_error.contains("task") || last_error.contains("judge"),
        || format!("give-up: last_error does not name the provider: {last_error:?}"),
    );
    report.check(last_error.contains("last error"), || {
        format!("give-up: last_error does not carry the provider's last error: {last_error:?}")
    });
    report.check(!last_error.contains(KEY), || {
        "give-up: last_error holds the key".into()
    });
    sim.update(json!({"outage": {"active": false}})).await?;
    let conflicts = super::resume_after_cooldown(&api, &id, Duration::from_secs(30)).await?;
    match super::wait_completed(&api, &id, Duration::from_secs(600)).await {
        Ok(v) => report.check(v["last_error"].is_null(), || {
            format!("give-up: last_error kept after completion: {v}")
        }),
        Err(e) => report.check(false, || format!("give-up: after resume: {e:#}")),
    }
    report.requests += 6 + conflicts;
    let inv = db.invariants(true)?;
    report.absorb("give-up", &inv);
    report
        .provider_duplicates("give-up", &sim, &inv, give_up_tally.bound())
        .await?;
    report.provider_calls += sim.snapshot().await?.requests;
    let panics = super::panicked_logs(&dir);
    report.check(panics.is_empty(), || format!("panics in {panics:?}"));
    Ok(())
}

async fn storms(ctx: &Ctx, report: &mut Report) -> Result<()> {
    let dir = ctx.subdir("storms")?;
    let n = ctx.pick(150, 500);
    let (sim, mut server, db) = stack(ctx, &dir, super::sim_config(ctx.seed, 10, 5), |t| t).await?;
    let api = server.api();
    let dataset = api.dataset("storms", arithmetic(n)).await?;
    // (name, simulator faults, stream the task, every run must succeed)
    let phases: [(&str, Value, bool, bool); 3] = [
        ("529 storm", json!({"overloaded_rate": 0.3}), false, true),
        (
            "resets mid-stream",
            json!({"reset_rate": 0.25, "reset_after_headers": 1.0}),
            true,
            false,
        ),
        (
            "malformed bodies",
            json!({"malformed_rate": 0.2}),
            true,
            false,
        ),
    ];
    let mut errors: BTreeMap<String, u64> = BTreeMap::new();
    for (name, faults, stream, strict) in phases {
        let before = sim.snapshot().await?;
        let mut patch = json!({"faults": {
            "server_error_rate": 0.0, "overloaded_rate": 0.0, "reset_rate": 0.0,
            "reset_after_headers": 0.5, "malformed_rate": 0.0
        }});
        super::merge(&mut patch["faults"], faults);
        sim.update(patch).await?;
        let mut body = experiment_body(&dataset, name, "task", Some("judge"), Some(8));
        body["task"]["stream"] = json!(stream);
        let id = api.experiment(&body).await?;
        let result = super::wait_completed(&api, &id, Duration::from_secs(600)).await;
        let after = sim.snapshot().await?;
        let c = |f: fn(&runnel_sim::StatsSnapshot) -> u64| f(&after) - f(&before);
        let injected =
            c(|s| s.classes.overloaded) + c(|s| s.classes.reset) + c(|s| s.classes.malformed);
        report.fault(name, injected);
        report.requests += 4;
        if let Err(e) = result {
            report.check(false, || format!("{name}: {e:#}"));
        }
        let view = api.get(&id).await?;
        let p = &view["progress"];
        report.figure(
            name,
            format!(
                "{injected} faults in {} calls; runs {} succeeded, {} failed; annotations {} done, {} failed; {} runs retried",
                after.requests - before.requests,
                p["runs_succeeded"],
                p["runs_failed"],
                p["annotations_done"],
                p["annotations_failed"],
                db.scalar(&format!(
                    "SELECT COUNT(*) FROM runs r JOIN experiments x ON x.id = r.experiment_id
                     WHERE x.name = '{name}' AND r.attempts > 1"
                ))?
            ),
        );
        report.check(injected > 0, || format!("{name}: no fault was injected"));
        if strict {
            report.check(
                p["runs_failed"] == 0 && p["annotations_failed"] == 0,
                || format!("{name}: rate-limited calls must be retried until they succeed: {p}"),
            );
        }
    }
    // Every failed run or annotation says why.
    for row in db.query(
        "SELECT COALESCE(error, ''), COUNT(*) FROM runs WHERE NOT succeeded GROUP BY 1
         UNION ALL
         SELECT COALESCE(error, ''), COUNT(*) FROM annotations WHERE NOT succeeded GROUP BY 1",
    )? {
        let text: String = row[0].chars().take(90).collect();
        *errors.entry(text).or_default() += row[1].parse::<u64>().unwrap_or(0);
    }
    report.figure("errors recorded", json!(errors));
    for message in errors.keys() {
        report.check(message.trim().len() >= 10, || {
            format!("an unclear error was recorded: {message:?}")
        });
    }
    let inv = db.invariants(false)?;
    report.absorb("storms", &inv);
    // Every fault of a storm is a reply that failed, not a call whose
    // result could be lost: no duplicate is allowed.
    report
        .provider_duplicates("storms", &sim, &inv, Some(0))
        .await?;
    report.check(server.is_running(), || "storms: the server exited".into());
    let panics = super::panicked_logs(&dir);
    report.check(panics.is_empty(), || format!("panics in {panics:?}"));
    report.provider_calls += sim.snapshot().await?.requests;
    Ok(())
}
