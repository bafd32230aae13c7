//! Stop/resume storm (issue 8, part 6): eight running experiments on three
//! PostgreSQL replicas get 1,000 concurrent random stop and resume calls
//! spread over the replicas (all spawned at once, each sent at a random
//! moment within 3.5 s, so hundreds are in flight together and the storm spans
//! several cooldowns); one replica is killed with SIGKILL in the middle of the
//! storm. Then:
//!
//! - every answer is a 200 or a 409 with `Retry-After` (a refused
//!   connection or 5xx only from the killed replica once it was dead);
//! - the cooldown holds: a trigger installed in the test database logs every
//!   user toggle (a change of `cooldown_until`) with the database's clock;
//!   two toggles of one experiment are never closer than the cooldown;
//! - after lease + scan interval, status matches ownership: a RUNNING
//!   experiment is claimed by a live replica, any other is claimed by none,
//!   and the live replicas' engines hold as many experiments as are RUNNING;
//!   none is RUNNING with no live owner;
//! - after the killed replica is back, a resume completes every experiment
//!   with exactly one run per example and one annotation per run.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use reqwest::Method;
use serde_json::json;

use super::client::{
    Client, Downtime, Outcome, by_outcome, check_answers, metric_value, unexcused_failures,
};
use super::db::Database;
use super::replicas::{AUDIT_SQL, Timeline, audit, replica_id};
use super::rng::Rng;
use super::{Ctx, PgDb, Report};
use crate::duplicates::FaultTally;
use crate::harness::{Api, ServerProcess, SimProcess, arithmetic, experiment_body};

const REPLICAS: usize = 3;
const EXPERIMENTS: usize = 8;
const CALLS: usize = 1000;
const LEASE: Duration = Duration::from_secs(3);
const COOLDOWN: Duration = Duration::from_secs(1);
/// The calls are all spawned at once, each sent at a random moment within
/// this time, so the storm spans several cooldowns.
/// Not a whole number of cooldowns, so experiments end the storm in
/// different states.
const SPREAD: Duration = Duration::from_millis(3500);

/// Logs every user toggle (stop, resume: the statements that set
/// `cooldown_until`) with the transaction's `now()`, the clock the cooldown
/// is computed with.
const TOGGLES_SQL: &str = "
CREATE TABLE chaos_toggles (experiment_id uuid NOT NULL, status text NOT NULL, at timestamptz NOT NULL);
CREATE FUNCTION chaos_toggle() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  INSERT INTO chaos_toggles VALUES (NEW.id, NEW.status, now());
  RETURN NULL;
END $$;
CREATE TRIGGER chaos_toggles AFTER UPDATE ON experiments FOR EACH ROW
  WHEN (OLD.cooldown_until IS DISTINCT FROM NEW.cooldown_until)
  EXECUTE FUNCTION chaos_toggle();
";

pub(super) async fn run(ctx: &Ctx, report: &mut Report) -> Result<()> {
    let mut rng = Rng::new(ctx.seed);
    let examples = ctx.pick(200, 500);
    let sim = SimProcess::start(&ctx.bin, &ctx.dir, super::sim_config(ctx.seed, 300, 100)).await?;
    let pg = PgDb::create("storm")?;
    let db = Database::from_url(&pg.url);
    let toml = super::server_toml(&pg.url, &sim.url)
        .set("scheduler", "lease", "3s")
        .set("scheduler", "cooldown", "1s")
        .render();
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()?;
    let timeline = Mutex::new(Timeline {
        incarnations: Vec::new(),
        downtime: Downtime::new(REPLICAS),
    });
    let mut servers = Vec::new();
    for r in 0..REPLICAS {
        let server = ServerProcess::start(&ctx.bin, &ctx.dir, &format!("r{r}"), &toml, &[]).await?;
        let id = replica_id(&http, &server.url).await?;
        if let Ok(mut t) = timeline.lock() {
            t.born(r, id);
        }
        if r == 0 {
            db.query(AUDIT_SQL).context("installing the write audit")?;
            db.query(TOGGLES_SQL).context("installing the toggle log")?;
        }
        servers.push(server);
    }
    let bases: Vec<String> = servers.iter().map(|s| s.url.clone()).collect();
    let apis: Vec<Api> = bases.iter().map(|b| Api::new(b)).collect();
    let dataset = apis[0].dataset("storm", arithmetic(examples)).await?;
    let mut ids = Vec::new();
    for e in 0..EXPERIMENTS {
        let body = experiment_body(
            &dataset,
            &format!("storm-{e}"),
            "task",
            Some("judge"),
            Some(2),
        );
        ids.push(apis[e % REPLICAS].experiment(&body).await?);
    }
    report.requests += 1 + EXPERIMENTS as u64;
    // Let the first cooldown pass, so the storm's first toggles are allowed.
    tokio::time::sleep(COOLDOWN).await;

    // The storm: every call spawned at once.
    let client = Client::new(bases.clone());
    let ids = Arc::new(ids);
    // Each stop and the kill may leave calls in flight whose results come
    // back too late: the bound of the duplicate provider calls.
    let tally = FaultTally::new(&sim.url);
    let started = Instant::now();
    let mut calls = Vec::new();
    for _ in 0..CALLS {
        let client = client.clone();
        let tally = tally.clone();
        let target = rng.index(REPLICAS);
        let id = ids[rng.index(EXPERIMENTS)].clone();
        // Resumes a little more often than stops, so some experiments end
        // the storm RUNNING (some owned by the replica that gets killed).
        let (what, path) = if rng.chance(0.4) {
            ("stop", format!("/v1/experiments/{id}/stop"))
        } else {
            ("resume", format!("/v1/experiments/{id}/resume"))
        };
        let at = Duration::from_millis(rng.below(SPREAD.as_millis() as u64));
        calls.push(tokio::spawn(async move {
            tokio::time::sleep(at).await;
            if what != "stop" {
                return client.send(target, what, Method::POST, &path, None).await;
            }
            tally
                .stop(client.send(target, what, Method::POST, &path, None))
                .await
        }));
    }
    // Kill the last replica once two thirds of the answers are in.
    let victim = REPLICAS - 1;
    loop {
        if client.records().len() >= CALLS * 2 / 3 || started.elapsed() > Duration::from_secs(60) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let killed_at = Instant::now();
    if let Ok(mut t) = timeline.lock() {
        t.killed(victim, killed_at);
    }
    tally.fault().await;
    servers[victim].kill9();
    report.fault("kill -9 mid-storm", 1);
    for c in calls {
        let _ = c.await;
    }
    let storm_took = started.elapsed();
    let victim_id = timeline
        .lock()
        .ok()
        .and_then(|t| {
            t.incarnations
                .iter()
                .find(|i| i.replica == victim)
                .map(|i| i.id.clone())
        })
        .unwrap_or_default();
    let orphans = db.scalar(&format!(
        "SELECT COUNT(*) FROM experiments WHERE status = 'RUNNING' AND claimed_by = '{}'",
        victim_id.replace('\'', "")
    ))?;
    report.fault("concurrent stop/resume calls", CALLS as u64);

    let records = client.records();
    report.requests += records.len() as u64;
    let downtime = timeline
        .lock()
        .map(|t| t.downtime.clone())
        .unwrap_or_default();
    let unexcused = unexcused_failures(&records, &downtime);
    let mut bad = Vec::new();
    for r in &records {
        let Outcome::Status {
            code, retry_after, ..
        } = &r.outcome
        else {
            continue;
        };
        match code {
            200 => {}
            409 => {
                let ok = retry_after
                    .as_deref()
                    .and_then(|v| v.parse::<u64>().ok())
                    .is_some_and(|s| (1..=COOLDOWN.as_secs().max(1)).contains(&s));
                if !ok {
                    bad.push(format!("409 with Retry-After {retry_after:?}"));
                }
            }
            c if *c >= 500 => {}
            c => bad.push(format!("{} got {c}", r.what)),
        }
    }
    report.figure(
        "storm",
        format!(
            "{CALLS} calls over {} replicas, sent within {:.1} s, done in {:.2} s; replica {victim} killed after {:.2} s",
            REPLICAS,
            SPREAD.as_secs_f64(),
            storm_took.as_secs_f64(),
            (killed_at - started).as_secs_f64()
        ),
    );
    report.figure("answers", json!(by_outcome(&records)));
    check_answers(report, &unexcused, &bad);

    // The cooldown, from the database's own log of toggles.
    let toggles = db.query(
        "SELECT experiment_id::text, status,
                EXTRACT(EPOCH FROM at - LAG(at) OVER (PARTITION BY experiment_id ORDER BY at)) * 1000
         FROM chaos_toggles ORDER BY experiment_id, at",
    )?;
    report.rows_checked += toggles.len() as u64;
    let mut shortest: Option<f64> = None;
    let mut too_close = Vec::new();
    for row in &toggles {
        if let Some(gap) = row.get(2).and_then(|g| g.parse::<f64>().ok()) {
            shortest = Some(shortest.map_or(gap, |s: f64| s.min(gap)));
            if gap + 0.001 < COOLDOWN.as_secs_f64() * 1000.0 {
                too_close.push(format!("{}: {gap:.1} ms", row[0]));
            }
        }
    }
    let toggled_ok = records.iter().filter(|r| r.code() == Some(200)).count();
    report.figure(
        "toggles written (of 200 answers)",
        format!(
            "{} of {toggled_ok}; shortest gap between two toggles of one experiment {} (cooldown {} ms)",
            toggles.len(),
            shortest.map_or("n/a".into(), |s| format!("{s:.0} ms")),
            COOLDOWN.as_millis()
        ),
    );
    report.check(too_close.is_empty(), || {
        format!("toggles closer than the cooldown: {too_close:?}")
    });

    // After lease + scan, status matches ownership.
    tokio::time::sleep(LEASE + LEASE / 3 + Duration::from_secs(1)).await;
    let live: Vec<usize> = (0..REPLICAS).filter(|r| *r != victim).collect();
    let settle_until = Instant::now() + Duration::from_secs(15);
    let (mut running, mut owned_total, mut mismatches);
    loop {
        let rows = db.query(
            "SELECT name, status, COALESCE(claimed_by, '') FROM experiments ORDER BY name",
        )?;
        report.rows_checked += rows.len() as u64;
        running = 0u64;
        mismatches = Vec::new();
        {
            let t = timeline.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
            for row in &rows {
                let (name, status, owner) = (&row[0], &row[1], &row[2]);
                match status.as_str() {
                    "RUNNING" => {
                        running += 1;
                        if owner.is_empty() || !t.live(owner) {
                            mismatches.push(format!("{name} RUNNING, owner {owner:?} not live"));
                        }
                    }
                    _ if !owner.is_empty() => {
                        mismatches.push(format!("{name} {status} but claimed by {owner}"))
                    }
                    _ => {}
                }
            }
        }
        owned_total = 0.0;
        for r in &live {
            let text = http
                .get(format!("{}/metrics", bases[*r]))
                .send()
                .await?
                .text()
                .await?;
            owned_total += metric_value(&text, "runnel_experiments_owned").unwrap_or(0.0);
        }
        if (mismatches.is_empty() && owned_total as u64 == running) || Instant::now() > settle_until
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    report.figure(
        "after lease + scan",
        format!(
            "{running} RUNNING ({orphans} had been left RUNNING by the killed replica), \
             engines of live replicas hold {owned_total}, {} mismatches",
            mismatches.len()
        ),
    );
    report.check(mismatches.is_empty(), || {
        format!("status does not match ownership: {mismatches:?}")
    });
    report.check(owned_total as u64 == running, || {
        format!("{running} experiments RUNNING in the database, live engines hold {owned_total}")
    });

    // Back to full strength; every experiment completes.
    servers[victim].restart().await?;
    super::final_resume(&apis, &ids, report).await;
    let inv = db.invariants(true)?;
    report.absorb("final state", &inv);
    report
        .provider_duplicates(
            &format!("{} stops answered 200 and 1 kill", tally.faults() - 1),
            &sim,
            &inv,
            tally.bound(),
        )
        .await?;
    audit(&db)?.report(report);
    report.provider_calls = sim.snapshot().await?.requests;
    let panics = super::panicked_logs(&ctx.dir);
    report.check(panics.is_empty(), || format!("panics in {panics:?}"));
    Ok(())
}
