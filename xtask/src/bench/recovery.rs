//! Recovery scenarios. S7: a server killed with SIGKILL mid-run — on SQLite
//! restarted at once (it reclaims its own claims), on PostgreSQL with a second
//! replica that takes over after the lease. S8: how fast a stop takes
//! effect, on the owning replica and through another one (NOTIFY).

use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use serde_json::{Value, json};

use super::report::{FigureSpec, Goal, Run};
use super::{Ctx, Size, Spec, all_succeeded, sim_config, wait_end};
use crate::chaos::db::Database;
use crate::duplicates::Duplicates;
use crate::harness::{Api, ServerProcess, ServerToml, SimProcess, arithmetic, experiment_body};

const S7_LIMIT: f64 = 50.0;

const S7_RUNS: Size = Size::new(300, 1500);

/// The lease of S7's PostgreSQL part: the default, or 3 s for `--quick`.
fn s7_lease(quick: bool) -> &'static str {
    if quick { "3s" } else { "30s" }
}

/// S7.
pub(crate) const S7: Spec = Spec {
    id: "S7",
    title: "kill -9 mid-run: SQLite restart; PostgreSQL takeover by a second replica",
    setup: |quick| {
        format!(
            "{} runs; simulator limit {S7_LIMIT} req/s with headers, latency 100±50 ms. \
             SQLite: one server, killed with SIGKILL once a third of the runs are recorded, \
             restarted at once (same file, so the same replica id). PostgreSQL: two replicas \
             (lease {}), the experiment created on the first, which is killed the same way; \
             the second takes over. Resume = kill → the first reading (every 50 ms, through the \
             API) that shows more runs than the database held at the kill. Lost = runs missing \
             at completion. In flight at kill = calls the simulator had received or answered \
             just before the kill − runs in the database just after it (psql / sqlite3); \
             duplicate provider calls = successful calls − run rows in the database (or the \
             simulator's repeated_successes when it reports it and it is larger); database \
             duplicates = extra run rows of one example × repetition.",
            S7_RUNS.get(quick),
            s7_lease(quick)
        )
    },
    figures: &[
        FigureSpec::goal(
            "sqlite_resume_s",
            "SQLite restart: s until progress resumes",
            "s",
            Goal::AtMost(45.0),
        ),
        FigureSpec::goal(
            "sqlite_lost",
            "SQLite restart: runs lost",
            "runs",
            Goal::AtMost(0.0),
        )
        .independent(),
        FigureSpec::goal(
            "sqlite_excess",
            "SQLite restart: duplicate calls − in flight at kill",
            "calls",
            Goal::AtMost(0.0),
        )
        .independent(),
        FigureSpec::context(
            "sqlite_duplicates",
            "SQLite restart: duplicate calls",
            "calls",
        ),
        FigureSpec::goal(
            "sqlite_db_duplicates",
            "SQLite restart: duplicate rows in the database",
            "rows",
            Goal::AtMost(0.0),
        )
        .independent(),
        FigureSpec::goal(
            "pg_resume_s",
            "PostgreSQL takeover: s until progress resumes",
            "s",
            Goal::AtMost(45.0),
        ),
        FigureSpec::goal(
            "pg_lost",
            "PostgreSQL takeover: runs lost",
            "runs",
            Goal::AtMost(0.0),
        )
        .independent(),
        FigureSpec::goal(
            "pg_excess",
            "PostgreSQL takeover: duplicate calls − in flight at kill",
            "calls",
            Goal::AtMost(0.0),
        )
        .independent(),
        FigureSpec::context(
            "pg_duplicates",
            "PostgreSQL takeover: duplicate calls",
            "calls",
        ),
        FigureSpec::goal(
            "pg_db_duplicates",
            "PostgreSQL takeover: duplicate rows in the database",
            "rows",
            Goal::AtMost(0.0),
        )
        .independent(),
    ],
    postgres: true,
};

/// Polls `api` until experiment `id` shows more than `recorded` runs;
/// returns the time of that reading.
async fn wait_progress(api: &Api, id: &str, recorded: u64, within: Duration) -> Result<Instant> {
    let until = Instant::now() + within;
    loop {
        if let Ok(now) = api.runs_succeeded(id).await
            && now > recorded
        {
            return Ok(Instant::now());
        }
        if Instant::now() > until {
            bail!("experiment {id} made no progress within {within:?} of the kill");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Runs lost: runs of `id` that did not succeed or are missing.
async fn lost(api: &Api, id: &str, n: usize) -> Result<u64> {
    let runs = api.runs(id).await?;
    let mut ok: Vec<(String, u64)> = runs
        .iter()
        .filter(|r| r["error"].is_null() && !r["output"].is_null())
        .map(|r| {
            (
                r["example_id"].to_string(),
                r["repetition"].as_u64().unwrap_or(0),
            )
        })
        .collect();
    ok.sort_unstable();
    ok.dedup();
    Ok((n as u64).saturating_sub(ok.len() as u64))
}

/// What one kill measured.
struct Killed {
    resume_s: f64,
    lost: u64,
    duplicates: i64,
    database_duplicates: u64,
    in_flight: i64,
    details: Value,
}

/// Where S7 kills a replica.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Deployment {
    /// One server on SQLite, restarted after the kill.
    Sqlite,
    /// Two replicas on PostgreSQL; the survivor takes over.
    Postgres,
}

async fn kill_one(ctx: &Ctx, n: usize, deployment: Deployment) -> Result<Killed> {
    let sim = SimProcess::start(
        &ctx.bin,
        &ctx.dir,
        sim_config(Some(S7_LIMIT), false, 100, 50, ctx.run),
    )
    .await?;
    let pg = match deployment {
        Deployment::Postgres => Some(ctx.postgres("s7")?),
        Deployment::Sqlite => None,
    };
    let url = pg
        .as_ref()
        .map_or_else(|| ctx.sqlite("runnel"), |db| db.url.clone());
    let toml = ServerToml::new(&url)
        .provider("sim", &sim.url, &[])
        .set("scheduler", "lease", s7_lease(ctx.quick))
        .render();
    let mut victim = ServerProcess::start(&ctx.bin, &ctx.dir, "victim", &toml, &[]).await?;
    let survivor = match deployment {
        Deployment::Postgres => {
            Some(ServerProcess::start(&ctx.bin, &ctx.dir, "survivor", &toml, &[]).await?)
        }
        Deployment::Sqlite => None,
    };
    let api = victim.api();
    let dataset = api.dataset("s7", arithmetic(n)).await?;
    let id = api
        .experiment(&experiment_body(&dataset, "s7", "sim", None, None))
        .await?;
    api.wait_runs(
        &id,
        n as u64 / 3,
        Duration::from_secs(120),
        Duration::from_millis(50),
    )
    .await?;

    let before = sim.snapshot().await?;
    victim.kill9();
    let killed = Instant::now();
    // No server is alive to ask: read the database itself.
    let at_kill =
        Database::from_url(&url).scalar("SELECT COUNT(*) FROM runs WHERE succeeded")? as u64;
    let follow = match &survivor {
        Some(server) => server.api(),
        None => {
            victim.restart().await?;
            victim.api()
        }
    };
    let ready_s = killed.elapsed().as_secs_f64();
    let resumed = wait_progress(&follow, &id, at_kill, Duration::from_secs(180)).await?;
    let done = wait_end(
        &follow,
        &id,
        super::deadline(n as f64 / S7_LIMIT),
        Duration::from_millis(200),
    )
    .await?;
    all_succeeded(&done, n as u64)?;
    let (after, repeated_successes) = sim.stats().await?;
    let sent_before = before.classes.ok + before.concurrency.current;
    let resume_s = (resumed - killed).as_secs_f64();
    let in_flight = sent_before as i64 - at_kill as i64;
    let inv = Database::from_url(&url).invariants(true)?;
    // Every run's prompt is distinct: the simulator's count of repeated
    // bodies counts the same calls.
    let counted = Duplicates {
        successful_calls: after.classes.ok,
        results: inv.runs,
        database: inv.duplicate_runs,
        repeated_successes,
        unique_bodies: true,
        bound: in_flight.max(0) as u64,
    };
    let duplicates = counted.worst();
    Ok(Killed {
        resume_s,
        lost: lost(&follow, &id, n).await?,
        duplicates,
        database_duplicates: inv.duplicate_runs,
        in_flight,
        details: json!({
            "runs": n,
            "lease": s7_lease(ctx.quick),
            "runs_at_kill": at_kill,
            "sim_ok_before_kill": before.classes.ok,
            "sim_in_flight_before_kill": before.concurrency.current,
            "follower_ready_s": ready_s,
            "resume_s": resume_s,
            "in_flight_at_kill": in_flight,
            "duplicates": counted.json(),
            "sim_ok_total": after.classes.ok,
            "sim_429_total": after.classes.rate_limited,
        }),
    })
}

pub(crate) async fn s7(ctx: &Ctx) -> Result<Run> {
    let n = S7_RUNS.get(ctx.quick);
    let mut run = Run::default();
    let mut details = serde_json::Map::new();
    let parts = [
        (
            Deployment::Sqlite,
            "sqlite",
            [
                "sqlite_resume_s",
                "sqlite_lost",
                "sqlite_excess",
                "sqlite_duplicates",
                "sqlite_db_duplicates",
            ],
        ),
        (
            Deployment::Postgres,
            "pg",
            [
                "pg_resume_s",
                "pg_lost",
                "pg_excess",
                "pg_duplicates",
                "pg_db_duplicates",
            ],
        ),
    ];
    for (deployment, name, [resume, lost, excess, duplicates, db_duplicates]) in parts {
        let k = kill_one(&ctx.sub(name)?, n, deployment).await?;
        run.figure(resume, k.resume_s);
        run.figure(lost, k.lost as f64);
        run.figure(excess, (k.duplicates - k.in_flight) as f64);
        run.figure(duplicates, k.duplicates as f64);
        run.figure(db_duplicates, k.database_duplicates as f64);
        details.insert(name.into(), k.details);
    }
    run.details = Value::Object(details);
    Ok(run)
}

const S8_LIMIT: f64 = 100.0;

/// S8.
pub(crate) const S8: Spec = Spec {
    id: "S8",
    title: "stop → last dispatch, on the owning replica and through another (PostgreSQL)",
    setup: |_| {
        format!(
            "Two replicas on one PostgreSQL database; simulator limit {S8_LIMIT} req/s with \
             headers, latency 0 (so a call is counted as it is dispatched). An experiment of \
             20,000 runs is created on replica A; once 100 runs are recorded it is stopped \
             through A; a second one is stopped through B (A learns by NOTIFY). Latency = the \
             stop request being sent → the last reading (every 5 ms) of the simulator's \
             request count that still grew; readings continue until 2 s without growth."
        )
    },
    figures: &[
        FigureSpec::goal(
            "owner_s",
            "stop on the owner: s to last dispatch",
            "s",
            Goal::AtMost(1.0),
        ),
        FigureSpec::goal(
            "other_s",
            "stop on another replica: s to last dispatch",
            "s",
            Goal::AtMost(1.0),
        ),
    ],
    postgres: true,
};

/// Stops `id` through `api` and returns the seconds from the stop request
/// to the last growth of the simulator's request count.
async fn stop_latency(api: &Api, sim: &SimProcess, id: &str) -> Result<(f64, Value)> {
    // The dispatch rate just before the stop shows the experiment was busy.
    let earlier = sim.snapshot().await?.requests;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let at_stop = sim.snapshot().await?.requests;
    let mut last_count = at_stop;
    let sent = Instant::now();
    let (status, body) = api.stop(id).await?;
    if status != 200 {
        bail!("stop answered {status}: {body}");
    }
    let answered = sent.elapsed().as_secs_f64();
    let mut last_growth = sent;
    let give_up = sent + Duration::from_secs(30);
    loop {
        let count = sim.snapshot().await?.requests;
        let now = Instant::now();
        if count != last_count {
            last_count = count;
            last_growth = now;
        }
        if now - last_growth > Duration::from_secs(2) || now > give_up {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let latency = (last_growth - sent).as_secs_f64();
    Ok((
        latency,
        json!({
            "stop_answered_s": answered,
            "latency_s": latency,
            "requests_per_s_before_stop": (at_stop - earlier) as f64 / 0.5,
            "requests_after_stop": last_count - at_stop,
        }),
    ))
}

pub(crate) async fn s8(ctx: &Ctx) -> Result<Run> {
    let sim = SimProcess::start(
        &ctx.bin,
        &ctx.dir,
        sim_config(Some(S8_LIMIT), false, 0, 0, ctx.run),
    )
    .await?;
    let db = ctx.postgres("s8")?;
    let toml = ServerToml::new(&db.url)
        .provider("sim", &sim.url, &[])
        .render();
    let a = ServerProcess::start(&ctx.bin, &ctx.dir, "replica-a", &toml, &[]).await?;
    let b = ServerProcess::start(&ctx.bin, &ctx.dir, "replica-b", &toml, &[]).await?;
    let (api_a, api_b) = (a.api(), b.api());
    let dataset = api_a.dataset("s8", arithmetic(20_000)).await?;
    let mut run = Run::default();
    let mut details = serde_json::Map::new();
    for (key, via) in [("owner_s", &api_a), ("other_s", &api_b)] {
        let id = api_a
            .experiment(&experiment_body(&dataset, key, "sim", None, None))
            .await?;
        api_a
            .wait_runs(&id, 100, Duration::from_secs(60), Duration::from_millis(50))
            .await?;
        let (latency, d) = stop_latency(via, &sim, &id).await?;
        let owner_view = api_a.get(&id).await?;
        if owner_view["status"] != "STOPPED" {
            bail!("experiment {id} is {} after the stop", owner_view["status"]);
        }
        run.figure(key, latency);
        details.insert(key.into(), d);
    }
    run.details = Value::Object(details);
    Ok(run)
}
