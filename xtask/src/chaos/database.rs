//! Database faults (issue 8, part 2).
//!
//! - PostgreSQL: the local cluster is stopped mid-run (`pg_ctlcluster …
//!   stop -m fast`), kept down for a few seconds while `/readyz` is polled,
//!   and started again. This is the machine's shared server: the outage is
//!   kept short and its time is printed.
//! - SQLite: another process (`sqlite3`) holds `BEGIN EXCLUSIVE` on the file
//!   for longer than the store's busy timeout while `/readyz` is polled.
//!
//! Either way the runner must keep its experiment (same claim epoch; on
//! PostgreSQL, whose outage outlives the lease, at most one re-claim by the
//! runner itself), retry
//! its writes, report the outage at `/readyz`, lose nothing, and complete
//! the experiment once the database is back, without any request.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use super::db::Database;
use super::{Ctx, PgDb, Report};
use crate::duplicates::FaultTally;
use crate::harness::{Api, ServerProcess, SimProcess, arithmetic, experiment_body};

/// The slowest `/readyz` answer allowed during an outage, with the store's
/// default `ready_timeout` (2 s).
const SLOWEST_READYZ: Duration = Duration::from_secs(4);

/// One `/readyz` probe: when it was sent and answered, and its status
/// (`None`: no answer within 30 s).
#[derive(Clone, Copy, Debug)]
struct Probe {
    sent: Instant,
    done: Instant,
    status: Option<u16>,
}

/// Probes `/readyz` every 250 ms, each probe on its own (a probe that waits
/// for the database does not delay the next), until stopped.
struct Poller {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<Vec<Probe>>,
}

impl Poller {
    fn start(base: &str) -> Result<Self> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()?;
        let url = format!("{base}/readyz");
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let task = tokio::spawn(async move {
            let mut probes = Vec::new();
            while !flag.load(Ordering::Relaxed) {
                let (http, url) = (http.clone(), url.clone());
                probes.push(tokio::spawn(async move {
                    let sent = Instant::now();
                    let status = http.get(url).send().await.ok().map(|r| r.status().as_u16());
                    Probe {
                        sent,
                        done: Instant::now(),
                        status,
                    }
                }));
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            let mut out = Vec::new();
            for p in probes {
                if let Ok(p) = p.await {
                    out.push(p);
                }
            }
            out
        });
        Ok(Self { stop, task })
    }

    async fn finish(self) -> Vec<Probe> {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.unwrap_or_default()
    }
}

/// What the probes said about an outage from `from` to `to`.
struct Readiness {
    /// Probes sent.
    probes: u64,
    /// 503s answered during the outage.
    reported: u64,
    /// 200s sent and answered inside the outage.
    wrongly_ready: u64,
    /// Probes without an answer or with another status.
    other: Vec<String>,
    /// From the end of the outage to the first 200 of a probe sent after it.
    recovered: Option<Duration>,
    /// The slowest answer.
    slowest: Duration,
}

fn secs_from(t: Instant, origin: Instant) -> f64 {
    if t >= origin {
        (t - origin).as_secs_f64()
    } else {
        -(origin - t).as_secs_f64()
    }
}

/// Judges the probes of an outage: the database was surely unusable from
/// `from` to `until` (a probe sent and answered inside that must not say
/// ready); `recovered` is how long after the outage a fresh probe said
/// ready again.
fn judge(
    probes: &[Probe],
    from: Instant,
    until: Instant,
    recovered: Option<Duration>,
) -> Readiness {
    let mut r = Readiness {
        probes: probes.len() as u64,
        reported: 0,
        wrongly_ready: 0,
        other: Vec::new(),
        recovered,
        slowest: Duration::ZERO,
    };
    for p in probes {
        if std::env::var_os("CHAOS_DEBUG").is_some() {
            eprintln!(
                "probe sent {:+.2} done {:+.2} {:?}",
                secs_from(p.sent, from),
                secs_from(p.done, from),
                p.status
            );
        }
        r.slowest = r.slowest.max(p.done - p.sent);
        match p.status {
            Some(503) if p.done >= from => r.reported += 1,
            Some(503) => {}
            Some(200) if p.sent >= from && p.done <= until => r.wrongly_ready += 1,
            Some(200) => {}
            other => r.other.push(format!(
                "{other:?} after {:.1} s",
                (p.done - p.sent).as_secs_f64()
            )),
        }
    }
    r
}

impl Readiness {
    fn describe(&self) -> String {
        format!(
            "/readyz probed {} times: {} × 503 during the outage, {} × 200 inside it, slowest answer {:.1} s, \
             ready again {} after it ended",
            self.probes,
            self.reported,
            self.wrongly_ready,
            self.slowest.as_secs_f64(),
            self.recovered
                .map_or("never".into(), |d| format!("{:.1} s", d.as_secs_f64()))
        )
    }

    fn check(&self, report: &mut Report, label: &str) {
        report.requests += self.probes;
        report.check(self.reported > 0, || {
            format!("{label}: /readyz never reported the outage")
        });
        report.check(self.wrongly_ready == 0, || {
            format!(
                "{label}: /readyz answered 200 {} times inside the outage",
                self.wrongly_ready
            )
        });
        report.check(self.other.is_empty(), || {
            format!("{label}: /readyz answered otherwise: {:?}", self.other)
        });
        report.check(self.recovered.is_some(), || {
            format!("{label}: /readyz did not recover")
        });
        report.check(self.slowest <= SLOWEST_READYZ, || {
            format!(
                "{label}: the slowest /readyz answer took {:.1} s (bound {:.0} s: the store's \
                 default ready_timeout of 2 s, plus 2 s for a loaded machine)",
                self.slowest.as_secs_f64(),
                SLOWEST_READYZ.as_secs_f64()
            )
        });
    }
}

/// Waits until a `/readyz` probe sent now or later answers 200 (at most
/// `within`); returns how long after `since` that answer came.
async fn wait_ready(base: &str, since: Instant, within: Duration) -> Option<Duration> {
    let until = Instant::now() + within;
    while Instant::now() < until {
        if reqwest::get(format!("{base}/readyz"))
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            return Some(since.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    None
}

/// The epoch and owner of the only experiment.
fn claim(db: &Database) -> Result<(String, String)> {
    let rows = db.query("SELECT epoch, COALESCE(claimed_by, '') FROM experiments")?;
    let row = rows.first().context("no experiment")?;
    Ok((row[0].clone(), row[1].clone()))
}

fn pg_cluster(action: &str) -> Result<()> {
    let versions: Vec<String> = std::fs::read_dir("/etc/postgresql")
        .context("reading /etc/postgresql (is PostgreSQL installed here?)")?
        .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect();
    let version = versions
        .first()
        .context("no PostgreSQL version installed")?;
    let mut cmd = Command::new("pg_ctlcluster");
    cmd.args(["--skip-systemctl-redirect", version, "main", action]);
    if action == "stop" {
        cmd.args(["-m", "fast"]);
    }
    let status = cmd.status().context("running pg_ctlcluster")?;
    if !status.success() {
        bail!("pg_ctlcluster {action} failed ({status})");
    }
    Ok(())
}

pub(super) async fn run(ctx: &Ctx, report: &mut Report) -> Result<()> {
    sqlite_locked(ctx, report).await?;
    postgres_restarted(ctx, report).await
}

/// One experiment of `n` runs with an evaluator, started and left to
/// record a seventh of its runs (the faults strike mid-run); returns (api, id).
async fn start_experiment(server: &ServerProcess, n: usize) -> Result<(Api, String)> {
    let api = server.api();
    let dataset = api.dataset("db-faults", arithmetic(n)).await?;
    let body = experiment_body(&dataset, "db-faults", "task", Some("judge"), Some(4));
    let id = api.experiment(&body).await?;
    api.wait_runs(
        &id,
        (n / 7) as u64,
        Duration::from_secs(120),
        Duration::from_millis(100),
    )
    .await?;
    Ok((api, id))
}

async fn sqlite_locked(ctx: &Ctx, report: &mut Report) -> Result<()> {
    let dir = ctx.subdir("sqlite")?;
    let n = ctx.pick(400, 1500);
    let hold = ctx.pick(Duration::from_secs(7), Duration::from_secs(12));
    let sim = SimProcess::start(&ctx.bin, &dir, super::sim_config(ctx.seed, 20, 10)).await?;
    let url = format!("sqlite://{}", dir.join("runnel.db").display());
    let path = dir.join("runnel.db");
    let db = Database::from_url(&url);
    let toml = super::server_toml(&url, &sim.url).render();
    let mut server = ServerProcess::start(&ctx.bin, &dir, "server", &toml, &[]).await?;
    let (api, id) = start_experiment(&server, n).await?;
    let before = claim(&db)?;

    // The calls a fault may catch in flight bound its duplicates.
    let tally = FaultTally::new(&sim.url);
    tally.fault().await;
    // Another process takes the write lock and keeps it.
    let mut locker = Command::new("sqlite3")
        .arg(&path)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .context("starting sqlite3")?;
    let mut stdin = locker.stdin.take().context("sqlite3 stdin")?;
    let stdout = locker.stdout.take().context("sqlite3 stdout")?;
    stdin.write_all(b".timeout 30000\nBEGIN EXCLUSIVE;\nSELECT 'chaos-locked';\n")?;
    stdin.flush()?;
    let mut line = String::new();
    let mut reader = BufReader::new(stdout);
    let line =
        tokio::task::spawn_blocking(move || reader.read_line(&mut line).map(|_| line)).await??;
    if line.trim() != "chaos-locked" {
        bail!("sqlite3 did not take the lock: {line:?}");
    }
    let locked_at = Instant::now();
    let poller = Poller::start(&server.url)?;
    let runs_at_lock = db.scalar("SELECT COUNT(*) FROM runs")?;
    tokio::time::sleep(hold).await;
    let runs_during = db.scalar("SELECT COUNT(*) FROM runs")? - runs_at_lock;
    let releasing = Instant::now();
    stdin.write_all(b"COMMIT;\n.quit\n")?;
    stdin.flush()?;
    drop(stdin);
    let _ = locker.wait();
    let released_at = Instant::now();
    report.fault("SQLite file locked by another process (BEGIN EXCLUSIVE)", 1);
    let recovered = wait_ready(&server.url, released_at, Duration::from_secs(30)).await;
    let readiness = judge(&poller.finish().await, locked_at, releasing, recovered);
    let view = super::wait_completed(&api, &id, Duration::from_secs(600)).await;
    let view = match view {
        Ok(v) => v,
        Err(e) => {
            report.check(false, || format!("SQLite: {e:#}"));
            api.get(&id).await?
        }
    };
    report.requests += 4;
    let after_claim = claim(&db)?;
    report.figure(
        "SQLite lock",
        format!(
            "held {:.1} s, runs written during it: {runs_during}; {}",
            hold.as_secs_f64(),
            readiness.describe()
        ),
    );
    readiness.check(report, "SQLite");
    report.check(server.is_running(), || "SQLite: the server exited".into());
    report.check(before.0 == after_claim.0, || {
        format!(
            "SQLite: the claim changed (epoch {} → {}): the runner lost its experiment",
            before.0, after_claim.0
        )
    });
    let inv = db.invariants(true)?;
    report.absorb("SQLite", &inv);
    report
        .provider_duplicates("SQLite", &sim, &inv, tally.bound())
        .await?;
    report.check(view["status"] == "COMPLETED", || {
        format!("SQLite: experiment ended {}", view["status"])
    });
    let panics = super::panicked_logs(&dir);
    report.check(panics.is_empty(), || format!("panics in {panics:?}"));
    report.provider_calls += sim.snapshot().await?.requests;
    Ok(())
}

async fn postgres_restarted(ctx: &Ctx, report: &mut Report) -> Result<()> {
    let dir = ctx.subdir("postgres")?;
    let n = ctx.pick(400, 1500);
    // Longer than the lease, so the runner must fence itself (issue 13).
    let down_for = ctx.pick(Duration::from_secs(6), Duration::from_secs(8));
    let lease_ms = 2_000;
    let sim = SimProcess::start(&ctx.bin, &dir, super::sim_config(ctx.seed, 20, 10)).await?;
    let pg = PgDb::create("database")?;
    let db = Database::from_url(&pg.url);
    // Default store settings: /readyz answers within `ready_timeout` (2 s)
    // however long the pool would wait for a connection.
    let toml = super::server_toml(&pg.url, &sim.url)
        .set("server", "replica_id", "chaos-db")
        .set("scheduler", "lease", format!("{lease_ms}ms"))
        .render();
    let mut server = ServerProcess::start(&ctx.bin, &dir, "server", &toml, &[]).await?;
    let (api, id) = start_experiment(&server, n).await?;
    let before = claim(&db)?;
    let runs_before = db.scalar("SELECT COUNT(*) FROM runs")?;

    let tally = FaultTally::new(&sim.url);
    tally.fault().await;
    let poller = Poller::start(&server.url)?;
    let stopped_wall = chrono::Local::now();
    let stopped = Instant::now();
    pg_cluster("stop")?;
    let down = Instant::now();
    let down_ms = sim.snapshot().await?.elapsed_ms;
    tokio::time::sleep(down_for).await;
    // Still down until `start` below: the window ends here.
    let up_ms = sim.snapshot().await?.elapsed_ms;
    let starting = Instant::now();
    let start_result = pg_cluster("start");
    // Wait for connections again whatever `start` said.
    let base = std::env::var("RUNNEL_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
    let admin = Database::Postgres(base);
    let back = loop {
        if admin.scalar("SELECT 1").is_ok() {
            break Instant::now();
        }
        if stopped.elapsed() > Duration::from_secs(120) {
            bail!("PostgreSQL did not come back within 2 minutes of the stop");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    start_result?;
    // Provider calls (the simulator's per-second histogram) from a second
    // after the lease ran out until the database was started again: the
    // cut-off runner starts none once its lease has run out.
    let stats = sim.snapshot().await?;
    let (from, to) = ((down_ms + lease_ms + 1_000).div_ceil(1_000), up_ms / 1_000);
    let fenced: u64 = stats
        .per_second
        .iter()
        .filter(|s| (from..to).contains(&s.second))
        .map(|s| s.requests)
        .sum();
    report.figure(
        "PostgreSQL: provider calls after the lease ran out, database down",
        format!("{fenced} in {} s (bound 0)", to.saturating_sub(from)),
    );
    report.check(fenced == 0 && to > from, || format!("PostgreSQL: {fenced} provider calls in the {} s after the lease ran out with the database down", to.saturating_sub(from)));
    let outage = back - stopped;
    eprintln!(
        "chaos:   PostgreSQL was stopped at {} for {:.1} s",
        stopped_wall.format("%Y-%m-%d %H:%M:%S"),
        outage.as_secs_f64()
    );
    report.fault("PostgreSQL stopped and started mid-run", 1);
    let recovered = wait_ready(&server.url, back, Duration::from_secs(60)).await;
    let readiness = judge(&poller.finish().await, down, starting, recovered);
    let view = match super::wait_completed(&api, &id, Duration::from_secs(600)).await {
        Ok(v) => v,
        Err(e) => {
            report.check(false, || format!("PostgreSQL: {e:#}"));
            api.get(&id).await?
        }
    };
    report.requests += 4;
    let after_claim = claim(&db)?;
    report.figure(
        "PostgreSQL outage",
        format!(
            "stopped at {} for {:.1} s with {runs_before} runs written; {}",
            stopped_wall.format("%Y-%m-%d %H:%M:%S"),
            outage.as_secs_f64(),
            readiness.describe()
        ),
    );
    readiness.check(report, "PostgreSQL");
    report.check(server.is_running(), || {
        "PostgreSQL: the server exited".into()
    });
    // The outage outlives the lease: an orphan scan the runner sent just
    // before it may run just after it and re-claim the runner's own expired
    // claim (one new epoch; nobody else can own it here).
    let (b, a) = (before.0.parse::<i64>(), after_claim.0.parse::<i64>());
    report.check(
        matches!((b, a), (Ok(b), Ok(a)) if a == b || a == b + 1),
        || {
            format!(
                "PostgreSQL: the claim changed (epoch {} → {}): the runner lost its experiment",
                before.0, after_claim.0
            )
        },
    );
    report.check(view["status"] == "COMPLETED", || {
        format!("PostgreSQL: experiment ended {}", view["status"])
    });
    let inv = db.invariants(true)?;
    report.absorb("PostgreSQL", &inv);
    report
        .provider_duplicates("PostgreSQL", &sim, &inv, tally.bound())
        .await?;
    let panics = super::panicked_logs(&dir);
    report.check(panics.is_empty(), || format!("panics in {panics:?}"));
    report.provider_calls += sim.snapshot().await?.requests;
    Ok(())
}
