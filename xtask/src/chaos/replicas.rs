//! Replica chaos (issue 8, part 1): three `runnel serve` processes on one
//! PostgreSQL database run six experiments with evaluators; for 2 minutes
//! (`--quick`: 30 s) a random replica is killed with SIGKILL and restarted
//! every few seconds — or, one time in three, frozen with SIGSTOP for longer
//! than the lease and thawed, so its experiments are taken over while its
//! calls are in flight — while clients send stop, resume, attach-evaluator
//! and get requests to random replicas. Afterwards a final resume completes
//! every experiment, and:
//!
//! - every example × repetition has exactly one run row and every run
//!   exactly one annotation per evaluator (read with psql);
//! - no write from a stale epoch was accepted: a deferred constraint trigger
//!   installed in the test database records, at the commit of every run and
//!   annotation write, the row's epoch next to the experiment's epoch and
//!   owner at that moment; the epochs must be equal (a write after a user
//!   stop keeps the epoch and is kept by design); writes the fence rejected
//!   are counted from each replica's `runnel_fenced_writes_total`;
//! - no experiment stayed owned by a dead replica longer than lease + orphan
//!   scan interval (claims sampled every 250 ms);
//! - the only 5xx answers and refused connections came from a replica while
//!   it was down (between just before its kill and its `/readyz` answering,
//!   or while frozen).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use reqwest::Method;
use serde_json::{Value, json};

use super::client::{
    Client, Downtime, Outcome, by_outcome, check_answers, metric_value, unexcused_failures,
};
use super::db::Database;
use super::rng::Rng;
use super::{Ctx, PgDb, Report};
use crate::duplicates::FaultTally;
use crate::harness::{Api, ServerProcess, SimProcess, arithmetic, experiment_body};

/// Number of replicas.
const REPLICAS: usize = 3;
/// Number of experiments.
const EXPERIMENTS: usize = 6;
/// Claim lease (short, to keep the test fast).
const LEASE: Duration = Duration::from_secs(3);
/// Evaluators attached during the chaos, at most, per experiment.
const MAX_EXTRA_EVALUATORS: usize = 2;

/// The audit installed in the test database: a deferred constraint trigger
/// on runs and annotations records, at commit, the written row's epoch next
/// to the experiment's epoch, owner and status at that moment.
pub(crate) const AUDIT_SQL: &str = "
CREATE TABLE chaos_audit (
    tbl text NOT NULL, experiment_id uuid NOT NULL, row_epoch bigint NOT NULL,
    exp_epoch bigint, claimed_by text, status text,
    at timestamptz NOT NULL DEFAULT clock_timestamp());
CREATE FUNCTION chaos_audit_write() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  INSERT INTO chaos_audit (tbl, experiment_id, row_epoch, exp_epoch, claimed_by, status)
  SELECT TG_TABLE_NAME, NEW.experiment_id, NEW.epoch, x.epoch, x.claimed_by, x.status
  FROM experiments x WHERE x.id = NEW.experiment_id;
  RETURN NULL;
END $$;
CREATE CONSTRAINT TRIGGER chaos_audit_runs AFTER INSERT OR UPDATE ON runs
  DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION chaos_audit_write();
CREATE CONSTRAINT TRIGGER chaos_audit_annotations AFTER INSERT OR UPDATE ON annotations
  DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION chaos_audit_write();
";

/// What the write audit found.
pub(crate) struct Audit {
    /// Writes committed.
    pub(crate) total: i64,
    /// Of which from an epoch other than the experiment's at commit.
    pub(crate) stale: i64,
    /// Of which committed after a user stop (same epoch, no owner): the
    /// stopped session's calls in flight, kept by design (DESIGN §4).
    pub(crate) after_stop: i64,
}

/// Reads the write audit.
pub(crate) fn audit(db: &Database) -> Result<Audit> {
    Ok(Audit {
        total: db.scalar("SELECT COUNT(*) FROM chaos_audit")?,
        stale: db.scalar(
            "SELECT COUNT(*) FROM chaos_audit WHERE exp_epoch IS DISTINCT FROM row_epoch",
        )?,
        after_stop: db.scalar(
            "SELECT COUNT(*) FROM chaos_audit
             WHERE exp_epoch = row_epoch AND claimed_by IS NULL",
        )?,
    })
}

impl Audit {
    /// Adds the audit's figures and checks to `report`.
    pub(crate) fn report(&self, report: &mut Report) {
        report.rows_checked += self.total as u64;
        report.figure(
            "writes audited at commit",
            format!(
                "{}: {} from a stale epoch, {} from a stopped session's calls in flight (same epoch)",
                self.total, self.stale, self.after_stop
            ),
        );
        report.check(self.stale == 0, || {
            format!("{} writes were accepted from a stale epoch", self.stale)
        });
    }
}

/// One process lifetime of a replica.
#[derive(Clone, Debug)]
pub(crate) struct Incarnation {
    /// Which replica.
    pub(crate) replica: usize,
    /// Its replica id (from `/readyz`).
    pub(crate) id: String,
    /// When it was killed.
    pub(crate) died: Option<Instant>,
    /// Last `runnel_fenced_writes_total` scraped.
    pub(crate) fenced: f64,
    /// Last `runnel_claim_takeovers_total` scraped.
    pub(crate) takeovers: f64,
}

/// What every task of the test shares.
#[derive(Default)]
pub(crate) struct Timeline {
    /// Every incarnation so far.
    pub(crate) incarnations: Vec<Incarnation>,
    /// When each replica was down.
    pub(crate) downtime: Downtime,
}

impl Timeline {
    /// Whether a live incarnation has replica id `id`.
    pub(crate) fn live(&self, id: &str) -> bool {
        self.incarnations
            .iter()
            .any(|i| i.id == id && i.died.is_none())
    }

    /// When the last incarnation with id `id` died, if every incarnation
    /// with that id is dead.
    pub(crate) fn died(&self, id: &str) -> Option<Instant> {
        if self.live(id) {
            return None;
        }
        self.incarnations
            .iter()
            .filter(|i| i.id == id)
            .filter_map(|i| i.died)
            .max()
    }

    /// Replica `r` runs again, as replica id `id`.
    pub(crate) fn born(&mut self, r: usize, id: String) {
        self.incarnations.push(Incarnation {
            replica: r,
            id,
            died: None,
            fenced: 0.0,
            takeovers: 0.0,
        });
    }

    /// Replica `r` is being killed at `at`.
    pub(crate) fn killed(&mut self, r: usize, at: Instant) {
        self.downtime.down(r, at);
        if let Some(inc) = self.current(r) {
            inc.died = Some(at);
        }
    }

    /// The current incarnation of replica `r`.
    pub(crate) fn current(&mut self, r: usize) -> Option<&mut Incarnation> {
        self.incarnations
            .iter_mut()
            .rev()
            .find(|i| i.replica == r && i.died.is_none())
    }
}

/// Sends `signal` (`STOP`, `CONT`) to process `pid` with `kill`.
fn signal(pid: u32, signal: &str) -> Result<()> {
    let status = std::process::Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .status()
        .context("running kill")?;
    anyhow::ensure!(status.success(), "kill -{signal} {pid} failed ({status})");
    Ok(())
}

/// The replica id a server reports at `/readyz`.
pub(crate) async fn replica_id(http: &reqwest::Client, base: &str) -> Result<String> {
    let v: Value = http
        .get(format!("{base}/readyz"))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    Ok(v["replica"]
        .as_str()
        .context("replica in /readyz")?
        .to_owned())
}

/// Scrapes replica `r`'s counters into its current incarnation.
pub(crate) async fn scrape(
    http: &reqwest::Client,
    base: &str,
    r: usize,
    timeline: &Mutex<Timeline>,
) {
    let Ok(response) = http.get(format!("{base}/metrics")).send().await else {
        return;
    };
    let Ok(text) = response.text().await else {
        return;
    };
    if let Ok(mut t) = timeline.lock()
        && let Some(inc) = t.current(r)
    {
        if let Some(v) = metric_value(&text, "runnel_fenced_writes") {
            inc.fenced = v;
        }
        if let Some(v) = metric_value(&text, "runnel_claim_takeovers") {
            inc.takeovers = v;
        }
    }
}

/// Claim samples: the longest time an experiment stayed RUNNING and claimed
/// by a replica id whose processes were all dead.
#[derive(Debug, Default)]
pub(crate) struct OwnershipSamples {
    /// Samples taken.
    pub(crate) samples: u64,
    /// Longest dead ownership seen.
    pub(crate) max_dead: Duration,
    /// Which experiment and id that was.
    pub(crate) max_dead_what: String,
    /// Epoch decreases seen (must be none).
    pub(crate) epoch_decreases: Vec<String>,
    last_epoch: HashMap<String, i64>,
}

impl OwnershipSamples {
    /// Takes one sample.
    pub(crate) fn sample(&mut self, db: &Database, timeline: &Mutex<Timeline>) {
        let Ok(rows) = db.query(
            "SELECT name, status, COALESCE(claimed_by, ''), epoch FROM experiments ORDER BY name",
        ) else {
            return;
        };
        let now = Instant::now();
        self.samples += 1;
        let Ok(t) = timeline.lock() else {
            return;
        };
        for row in rows {
            let [name, status, owner, epoch] = row.as_slice() else {
                continue;
            };
            if let Ok(epoch) = epoch.parse::<i64>() {
                let last = self.last_epoch.entry(name.clone()).or_insert(epoch);
                if epoch < *last {
                    self.epoch_decreases
                        .push(format!("{name}: epoch {last} then {epoch}"));
                }
                *last = epoch;
            }
            if status != "RUNNING" || owner.is_empty() {
                continue;
            }
            if let Some(died) = t.died(owner) {
                let owned = now.saturating_duration_since(died);
                if owned > self.max_dead {
                    self.max_dead = owned;
                    self.max_dead_what = format!("{name} owned by dead {owner}");
                }
            }
        }
    }
}

pub(super) async fn run(ctx: &Ctx, report: &mut Report) -> Result<()> {
    let mut rng = Rng::new(ctx.seed);
    let chaos_for = ctx.pick(Duration::from_secs(30), Duration::from_secs(120));
    let (examples, repetitions) = ctx.pick((250, 1), (500, 2));
    let kill_every = ctx.pick((2_000, 5_000), (3_000, 8_000));
    // Clients toggle each experiment every few seconds on average: often
    // enough to race the kills, rarely enough that a dead replica's claims
    // outlive the lease and are taken over.
    let clients = 3;

    let sim = SimProcess::start(&ctx.bin, &ctx.dir, super::sim_config(ctx.seed, 60, 30)).await?;
    let pg = PgDb::create("replicas")?;
    let db = Database::from_url(&pg.url);
    let base = super::server_toml(&pg.url, &sim.url)
        .set("scheduler", "lease", "3s")
        .set("scheduler", "cooldown", "1s");
    let timeline = Arc::new(Mutex::new(Timeline {
        incarnations: Vec::new(),
        downtime: Downtime::new(REPLICAS),
    }));
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()?;

    // Replica 0 has a stable identity (a restart takes its experiments back
    // at once); 1 and 2 get a random one per process (PostgreSQL's default),
    // so only the takeover path frees what they held.
    let mut servers = Vec::new();
    for r in 0..REPLICAS {
        let mut toml = base.clone();
        if r == 0 {
            toml = toml.set("server", "replica_id", "chaos-r0");
        }
        let server =
            ServerProcess::start(&ctx.bin, &ctx.dir, &format!("r{r}"), &toml.render(), &[]).await?;
        let id = replica_id(&http, &server.url).await?;
        if let Ok(mut t) = timeline.lock() {
            t.born(r, id);
        }
        if r == 0 {
            db.query(AUDIT_SQL).context("installing the write audit")?;
        }
        servers.push(server);
    }
    let bases: Vec<String> = servers.iter().map(|s| s.url.clone()).collect();
    let client = Client::new(bases.clone());
    let apis: Vec<Api> = bases.iter().map(|b| Api::new(b)).collect();

    let dataset = apis[0].dataset("chaos", arithmetic(examples)).await?;
    let mut ids = Vec::new();
    for e in 0..EXPERIMENTS {
        let mut body = experiment_body(
            &dataset,
            &format!("chaos-{e}"),
            "task",
            Some("judge"),
            Some(3),
        );
        body["repetitions"] = json!(repetitions);
        ids.push(apis[rng.index(REPLICAS)].experiment(&body).await?);
    }
    report.requests += 1 + EXPERIMENTS as u64;
    eprintln!(
        "chaos:   {EXPERIMENTS} experiments × {examples} examples × {repetitions} repetitions \
         on {REPLICAS} replicas; chaos for {}s",
        chaos_for.as_secs()
    );

    let started = Instant::now();
    let deadline = started + chaos_for;
    let ids = Arc::new(ids);
    let extras: Arc<Mutex<BTreeMap<usize, usize>>> = Arc::default();
    let attach_counter = Arc::new(std::sync::atomic::AtomicUsize::new(0));

    // Each kill, freeze and stop may leave calls in flight whose results
    // come back too late: the bound of the duplicate provider calls.
    let tally = FaultTally::new(&sim.url);

    // Clients.
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let client = client.clone();
        let tally = tally.clone();
        let ids = ids.clone();
        let extras = extras.clone();
        let counter = attach_counter.clone();
        let mut rng = rng.fork();
        tasks.push(tokio::spawn(async move {
            while Instant::now() < deadline {
                let target = rng.index(REPLICAS);
                let e = rng.index(ids.len());
                let id = &ids[e];
                let roll = rng.below(100);
                if roll < 35 {
                    tally
                        .stop(client.send(
                            target,
                            "stop",
                            Method::POST,
                            &format!("/v1/experiments/{id}/stop"),
                            None,
                        ))
                        .await;
                } else if roll < 70 {
                    client
                        .send(
                            target,
                            "resume",
                            Method::POST,
                            &format!("/v1/experiments/{id}/resume"),
                            None,
                        )
                        .await;
                } else if roll < 80 {
                    let reserved = extras.lock().is_ok_and(|mut m| {
                        let n = m.entry(e).or_insert(0);
                        if *n < MAX_EXTRA_EVALUATORS {
                            *n += 1;
                            true
                        } else {
                            false
                        }
                    });
                    if reserved {
                        let k = counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let mut judge =
                            experiment_body("", "", "task", Some("judge"), None)["evaluators"][0]
                                .clone();
                        judge["name"] = json!(format!("extra-{k}"));
                        client
                            .send(
                                target,
                                "attach",
                                Method::POST,
                                &format!("/v1/experiments/{id}/evaluators"),
                                Some(&judge),
                            )
                            .await;
                    }
                } else {
                    client
                        .send(
                            target,
                            "get",
                            Method::GET,
                            &format!("/v1/experiments/{id}"),
                            None,
                        )
                        .await;
                }
                tokio::time::sleep(Duration::from_millis(rng.range(250, 1500))).await;
            }
        }));
    }

    // Claim sampler (runs until told to stop).
    let stop_sampling = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = {
        let db = db.clone();
        let timeline = timeline.clone();
        let stop = stop_sampling.clone();
        tokio::task::spawn_blocking(move || {
            let mut samples = OwnershipSamples::default();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                samples.sample(&db, &timeline);
                std::thread::sleep(Duration::from_millis(250));
            }
            samples
        })
    };

    // Metrics scraper.
    let scraper = {
        let http = http.clone();
        let bases = bases.clone();
        let timeline = timeline.clone();
        let stop = stop_sampling.clone();
        tokio::spawn(async move {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                for (r, base) in bases.iter().enumerate() {
                    scrape(&http, base, r, &timeline).await;
                }
                tokio::time::sleep(Duration::from_millis(1000)).await;
            }
        })
    };

    // The killer: this task.
    let mut kills = 0u64;
    let mut pauses = 0u64;
    let mut restart_failures = Vec::new();
    loop {
        let wait = Duration::from_millis(rng.range(kill_every.0, kill_every.1));
        if Instant::now() + wait >= deadline {
            tokio::time::sleep(deadline.saturating_duration_since(Instant::now())).await;
            break;
        }
        tokio::time::sleep(wait).await;
        let r = rng.index(REPLICAS);
        scrape(&http, &bases[r], r, &timeline).await;
        tally.fault().await;
        let at = Instant::now();
        if rng.chance(0.3) {
            // Freeze it (SIGSTOP) past the lease, so the others take its
            // experiments over while it still has calls in flight; when it
            // thaws, those results must be fenced.
            if let Ok(mut t) = timeline.lock() {
                t.downtime.down(r, at);
            }
            let frozen = signal(servers[r].pid(), "STOP");
            tokio::time::sleep(LEASE + Duration::from_millis(rng.range(1000, 2500))).await;
            let thawed = signal(servers[r].pid(), "CONT");
            if let Err(e) = frozen.and(thawed) {
                restart_failures.push(format!("replica {r}: {e:#}"));
            }
            pauses += 1;
            if let Ok(mut t) = timeline.lock() {
                t.downtime.up(r, Instant::now());
            }
            continue;
        }
        if let Ok(mut t) = timeline.lock() {
            t.killed(r, at);
        }
        servers[r].kill9();
        kills += 1;
        // Down for a moment before the restart, sometimes.
        if rng.chance(0.5) {
            tokio::time::sleep(Duration::from_millis(rng.range(100, 1500))).await;
        }
        match servers[r].restart().await {
            Ok(()) => {
                let id = replica_id(&http, &bases[r]).await.unwrap_or_default();
                if let Ok(mut t) = timeline.lock() {
                    t.born(r, id);
                    t.downtime.up(r, Instant::now());
                }
            }
            Err(e) => restart_failures.push(format!("replica {r}: {e:#}")),
        }
    }
    for t in tasks {
        let _ = t.await;
    }
    eprintln!(
        "chaos:   chaos over after {:.0}s: {kills} kills, {pauses} freezes; settling for lease + scan",
        started.elapsed().as_secs_f64()
    );
    report.fault("kill -9 and restart", kills);
    report.fault("SIGSTOP past the lease, then SIGCONT", pauses);
    report.check(restart_failures.is_empty(), || {
        format!("restarts failed: {}", restart_failures.join("; "))
    });

    // Every replica is up; after lease + a scan, nothing is owned by the dead.
    let scan = LEASE / 3;
    tokio::time::sleep(LEASE + scan + Duration::from_secs(1)).await;
    stop_sampling.store(true, std::sync::atomic::Ordering::Relaxed);
    let samples = sampler.await?;
    let _ = scraper.await;
    for (r, base) in bases.iter().enumerate() {
        scrape(&http, base, r, &timeline).await;
    }
    // The bound: the claim is at most a lease old when it can be taken
    // over, plus one scan interval (lease / 3, +10 % jitter), plus the
    // sampling period and psql's own latency.
    let bound = LEASE + scan.mul_f64(1.1) + Duration::from_millis(750);
    report.figure(
        "longest ownership by a dead replica",
        format!(
            "{:.2} s (bound lease + scan + sampling = {:.2} s; {}; {} samples)",
            samples.max_dead.as_secs_f64(),
            bound.as_secs_f64(),
            if samples.max_dead_what.is_empty() {
                "none seen"
            } else {
                &samples.max_dead_what
            },
            samples.samples
        ),
    );
    report.check(samples.max_dead <= bound, || {
        format!(
            "{} for {:.2} s, more than lease + scan interval ({:.2} s)",
            samples.max_dead_what,
            samples.max_dead.as_secs_f64(),
            bound.as_secs_f64()
        )
    });
    report.check(samples.epoch_decreases.is_empty(), || {
        format!("epochs went backwards: {:?}", samples.epoch_decreases)
    });

    // The requests: 5xx and refused only while the target was down.
    let records = client.records();
    let downtime = timeline
        .lock()
        .map(|t| t.downtime.clone())
        .unwrap_or_default();
    let unexcused = unexcused_failures(&records, &downtime);
    let mut unexpected = Vec::new();
    for r in &records {
        if let Outcome::Status {
            code, retry_after, ..
        } = &r.outcome
        {
            let fine = match (r.what, code) {
                (_, c) if *c >= 500 => true, // judged above
                ("stop" | "resume", 200) => true,
                ("stop" | "resume", 409) => retry_after.is_some(),
                ("attach", 201) => true,
                ("get", 200) => true,
                _ => false,
            };
            if !fine {
                unexpected.push(format!("{} got {code}", r.what));
            }
        }
    }
    report.requests += records.len() as u64;
    report.figure("client requests by outcome", json!(by_outcome(&records)));
    check_answers(report, &unexcused, &unexpected);
    let excused = records
        .iter()
        .filter(|r| r.code().is_none_or(|c| c >= 500))
        .count();
    report.figure(
        "5xx or refused while the replica was down",
        excused as u64 - unexcused.len() as u64,
    );
    report.figure("replica downtimes", downtime.count() as u64);

    // The final resume completes everything.
    let final_started = Instant::now();
    super::final_resume(&apis, &ids, report).await;
    report.figure(
        "final resume to all COMPLETED",
        format!("{:.1} s", final_started.elapsed().as_secs_f64()),
    );

    // Exactly once, read from the database.
    let inv = db.invariants(true)?;
    report.absorb("final state", &inv);
    report
        .provider_duplicates(
            &format!("{} kills, freezes and stops", tally.faults()),
            &sim,
            &inv,
            tally.bound(),
        )
        .await?;
    report.check(inv.stray_runs == 0, || {
        format!("{} stray runs", inv.stray_runs)
    });
    for e in &inv.experiments {
        report.check(e.status == "COMPLETED", || {
            format!("{} ended {}", e.name, e.status)
        });
    }
    let evaluators: u64 = inv.experiments.iter().map(|e| e.evaluators).sum();
    report.figure(
        "runs / annotations in the database",
        format!(
            "{} runs, {} annotations ({} evaluators over {} experiments, {} attached during the chaos)",
            inv.runs,
            inv.annotations,
            evaluators,
            inv.experiments.len(),
            evaluators.saturating_sub(EXPERIMENTS as u64)
        ),
    );
    // And through the API.
    for (i, id) in ids.iter().enumerate() {
        let v = apis[i % REPLICAS].get(id).await?;
        report.requests += 1;
        let p = &v["progress"];
        report.check(
            p["runs_succeeded"] == p["runs_expected"]
                && p["annotations_done"] == p["annotations_expected"]
                && p["runs_failed"] == 0
                && p["annotations_failed"] == 0,
            || format!("progress of {id} through the API: {p}"),
        );
    }

    // Fencing.
    audit(&db)?.report(report);
    let (fenced, takeovers) = timeline
        .lock()
        .map(|t| {
            t.incarnations
                .iter()
                .fold((0.0, 0.0), |(f, k), i| (f + i.fenced, k + i.takeovers))
        })
        .unwrap_or_default();
    report.figure("fenced (rejected) writes counted by the replicas", fenced);
    report.figure("claim takeovers counted by the replicas", takeovers);

    let stats = sim.snapshot().await?;
    report.provider_calls = stats.requests;
    let panics = super::panicked_logs(&ctx.dir);
    report.check(panics.is_empty(), || format!("panics in {panics:?}"));
    drop(servers);
    Ok(())
}
