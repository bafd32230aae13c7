//! S12 (issue 14): one rate budget per key across replicas. Three and then
//! six `runnel serve` replicas on one PostgreSQL database, one experiment
//! created through each, all on one key of a simulator limited to 30 req/s;
//! with and without rate-limit headers; the same experiments on one replica
//! for comparison; and a replica killed with SIGKILL at one third.

use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use serde_json::{Value, json};

use super::report::{FigureSpec, Goal, Run};
use super::{Ctx, Size, Spec, all_succeeded, deadline, sim_config, wait_end};
use crate::harness::{Api, ServerProcess, ServerToml, SimProcess, arithmetic, experiment_body};

/// The simulator's limit, requests per second.
const LIMIT: f64 = 30.0;
/// The advisor's default burst (`advisor.burst_seconds`): the bucket holds
/// this many seconds of the rate, so the first second may carry that much
/// more than the steady rate.
const BURST_SECONDS: f64 = 1.0;
/// Runs per experiment.
const RUNS: Size = Size::new(150, 1000);
/// Runs per experiment of the kill part (long enough for a 10 s window
/// after the kill and the lease, even with quick sizes).
const KILL_RUNS: Size = Size::new(500, 1000);
/// `scheduler.lease` of the kill part.
const KILL_LEASE: &str = "6s";
/// The shared budget's lease (`budget.lease`, the default).
const BUDGET_LEASE_S: f64 = 5.0;

/// S12.
pub(crate) const S12: Spec = Spec {
    id: "S12",
    title: "one rate budget per key across replicas (PostgreSQL)",
    setup: |quick| {
        format!(
            "Simulator limit {LIMIT} req/s, latency 100±50 ms, with OpenAI-style headers (h) and \
             without (n). 3 and then 6 `runnel serve` replicas on one PostgreSQL database, one \
             experiment of {runs} runs created through each at once (one key); then the same \
             3 and 6 experiments on one replica. Ratio = last COMPLETED − first created \
             (database timestamps) ÷ ideal, ideal = (all runs − {LIMIT} × {BURST_SECONDS} s \
             of burst) ÷ {LIMIT}; 429 share = 429s ÷ requests at the simulator; spread = (last − \
             first COMPLETED) ÷ last. Kill: 3 replicas, headers, {kill} runs each; one is killed \
             with SIGKILL once a third of all runs are recorded; min window = the lowest 10 s \
             window of successful calls per second at the simulator, from kill + budget lease \
             ({BUDGET_LEASE_S} s) + 2 s until the last experiment completes, ÷ the limit.",
            runs = RUNS.get(quick),
            kill = KILL_RUNS.get(quick),
        )
    },
    figures: &[
        FigureSpec::goal(
            "h3_ratio",
            "headers, 3 replicas: last ÷ ideal",
            "ratio",
            Goal::AtMost(1.05),
        ),
        FigureSpec::goal(
            "h3_429",
            "headers, 3 replicas: 429 share",
            "ratio",
            Goal::AtMost(0.01),
        ),
        FigureSpec::goal(
            "h3_spread",
            "headers, 3 replicas: spread",
            "ratio",
            Goal::AtMost(0.05),
        ),
        FigureSpec::goal(
            "h6_ratio",
            "headers, 6 replicas: last ÷ ideal",
            "ratio",
            Goal::AtMost(1.05),
        ),
        FigureSpec::goal(
            "h6_429",
            "headers, 6 replicas: 429 share",
            "ratio",
            Goal::AtMost(0.01),
        ),
        FigureSpec::goal(
            "h6_spread",
            "headers, 6 replicas: spread",
            "ratio",
            Goal::AtMost(0.05),
        ),
        FigureSpec::goal(
            "n3_ratio",
            "no headers, 3 replicas: last ÷ ideal",
            "ratio",
            Goal::AtMost(1.10),
        ),
        FigureSpec::goal(
            "n3_429",
            "no headers, 3 replicas: 429 share",
            "ratio",
            Goal::AtMost(0.03),
        ),
        FigureSpec::goal(
            "n3_spread",
            "no headers, 3 replicas: spread",
            "ratio",
            Goal::AtMost(0.05),
        ),
        FigureSpec::goal(
            "n6_ratio",
            "no headers, 6 replicas: last ÷ ideal",
            "ratio",
            Goal::AtMost(1.10),
        ),
        FigureSpec::goal(
            "n6_429",
            "no headers, 6 replicas: 429 share",
            "ratio",
            Goal::AtMost(0.03),
        ),
        FigureSpec::goal(
            "n6_spread",
            "no headers, 6 replicas: spread",
            "ratio",
            Goal::AtMost(0.05),
        ),
        FigureSpec::context(
            "one_h3_ratio",
            "one replica, headers, 3 experiments: last ÷ ideal",
            "ratio",
        ),
        FigureSpec::context(
            "one_h3_429",
            "one replica, headers, 3 experiments: 429 share",
            "ratio",
        ),
        FigureSpec::context(
            "one_h6_ratio",
            "one replica, headers, 6 experiments: last ÷ ideal",
            "ratio",
        ),
        FigureSpec::context(
            "one_h6_429",
            "one replica, headers, 6 experiments: 429 share",
            "ratio",
        ),
        FigureSpec::context(
            "one_n3_ratio",
            "one replica, no headers, 3 experiments: last ÷ ideal",
            "ratio",
        ),
        FigureSpec::context(
            "one_n3_429",
            "one replica, no headers, 3 experiments: 429 share",
            "ratio",
        ),
        FigureSpec::context(
            "one_n6_ratio",
            "one replica, no headers, 6 experiments: last ÷ ideal",
            "ratio",
        ),
        FigureSpec::context(
            "one_n6_429",
            "one replica, no headers, 6 experiments: 429 share",
            "ratio",
        ),
        FigureSpec::goal(
            "kill_min_window",
            "kill: lowest 10 s window after lease + 2 s ÷ limit",
            "ratio",
            Goal::AtLeast(0.85),
        ),
        FigureSpec::context("kill_429", "kill: 429 share", "ratio"),
    ],
    postgres: true,
};

/// What one set of experiments measured.
struct SetResult {
    ratio: f64,
    rate_limited: f64,
    spread: f64,
    details: Value,
}

/// Runs `experiments` experiments of `runs` runs on one key, one created
/// through each of `replicas` servers (round robin), all at once; kills
/// replica 0 once a third of all runs are recorded when `kill`.
async fn set(
    ctx: &Ctx,
    replicas: usize,
    experiments: usize,
    runs: usize,
    headerless: bool,
    kill: bool,
) -> Result<SetResult> {
    let sim = SimProcess::start(
        &ctx.bin,
        &ctx.dir,
        sim_config(Some(LIMIT), headerless, 100, 50, ctx.run),
    )
    .await?;
    let pg = ctx.postgres("s12")?;
    let mut toml = ServerToml::new(&pg.url).provider("sim", &sim.url, &[]);
    if kill {
        // The killed replica's experiment is taken over within about
        // lease × 4/3, well before the survivors run out of their own work,
        // so the cluster has demand in every window measured.
        toml = toml.set("scheduler", "lease", KILL_LEASE);
    }
    let toml = toml.render();
    let mut servers = Vec::new();
    for i in 0..replicas {
        servers.push(ServerProcess::start(&ctx.bin, &ctx.dir, &format!("r{i}"), &toml, &[]).await?);
    }
    let apis: Vec<Api> = servers.iter().map(ServerProcess::api).collect();
    let dataset = apis[0].dataset("s12", arithmetic(runs)).await?;
    // Created at once, each through its replica.
    let creations: Vec<_> = (0..experiments)
        .map(|i| {
            let api = apis[i % replicas].clone();
            let body = experiment_body(&dataset, &format!("s12-{i}"), "sim", None, None);
            tokio::spawn(async move { api.experiment(&body).await })
        })
        .collect();
    let mut ids = Vec::new();
    for c in creations {
        ids.push(c.await??);
    }
    let total = (runs * experiments) as f64;
    let ideal = (total - LIMIT * BURST_SECONDS) / LIMIT;
    let mut killed_at = None;
    if kill {
        let recorded = || async {
            let mut sum = 0;
            for (i, id) in ids.iter().enumerate() {
                sum += apis[1 + i % (replicas - 1)]
                    .runs_succeeded(id)
                    .await
                    .unwrap_or(0);
            }
            sum
        };
        let until = Instant::now() + deadline(ideal);
        while recorded().await < (total / 3.0) as u64 {
            if Instant::now() > until {
                bail!("S12: a third of the runs were not recorded in time");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        servers[0].kill9();
        killed_at = Some(sim.snapshot().await?.elapsed_ms as f64 / 1000.0);
    }
    // Every experiment, read through a replica that is alive.
    let alive = if kill { &apis[1..] } else { &apis[..] };
    let mut finished = Vec::new();
    for (i, id) in ids.iter().enumerate() {
        let api = &alive[i % alive.len()];
        let done = wait_end(api, id, deadline(ideal), Duration::from_millis(250)).await?;
        all_succeeded(&done, runs as u64)?;
        finished.push(done);
    }
    let stats = sim.snapshot().await?;
    let (ends, lo, hi) = super::completions(&finished)?;
    let rate_limited = stats.classes.rate_limited as f64 / stats.requests.max(1) as f64;
    let per_second: Vec<u64> = stats.per_second.iter().map(|s| s.ok).collect();
    let mut details = json!({
        "replicas": replicas,
        "experiments": experiments,
        "runs_each": runs,
        "headers": !headerless,
        "ideal_s": ideal,
        "completion_s": ends,
        "requests": stats.requests,
        "rate_limited": stats.classes.rate_limited,
        "ok_per_second": per_second,
    });
    if let Some(at) = killed_at {
        // Seconds of the simulator's clock: from the kill + lease + 2 s to
        // the last whole second with successful calls (the last one is
        // partial).
        let from = (at + BUDGET_LEASE_S + 2.0).ceil() as usize;
        let to = stats.per_second.iter().rposition(|s| s.ok > 0).unwrap_or(0);
        let windows: Vec<f64> = (from..to.saturating_sub(9))
            .filter_map(|s| {
                let w = stats.per_second.get(s..s + 10)?;
                Some(w.iter().map(|x| x.ok).sum::<u64>() as f64 / 10.0)
            })
            .collect();
        let min = windows.iter().copied().fold(f64::MAX, f64::min);
        if windows.is_empty() {
            bail!("S12 kill: no 10 s window between {from} s and {to} s");
        }
        details["killed_at_s"] = json!(at);
        details["min_window_rps"] = json!(min);
        details["windows"] = json!(windows.len());
        return Ok(SetResult {
            ratio: min / LIMIT,
            rate_limited,
            spread: (hi - lo) / hi,
            details,
        });
    }
    Ok(SetResult {
        ratio: hi / ideal,
        rate_limited,
        spread: (hi - lo) / hi,
        details,
    })
}

pub(crate) async fn s12(ctx: &Ctx) -> Result<Run> {
    let runs = RUNS.get(ctx.quick);
    let mut run = Run::default();
    let mut details = serde_json::Map::new();
    for (mode, headerless) in [("h", false), ("n", true)] {
        for (n, [ratio, limited, spread], [one_ratio, one_limited]) in [
            (
                3,
                ["h3_ratio", "h3_429", "h3_spread"],
                ["one_h3_ratio", "one_h3_429"],
            ),
            (
                6,
                ["h6_ratio", "h6_429", "h6_spread"],
                ["one_h6_ratio", "one_h6_429"],
            ),
        ] {
            let name = format!("{mode}{n}");
            let key = |k: &'static str| -> &'static str {
                // The headerless figures are the same names with `n`.
                match (headerless, k) {
                    (false, k) => k,
                    (true, "h3_ratio") => "n3_ratio",
                    (true, "h3_429") => "n3_429",
                    (true, "h3_spread") => "n3_spread",
                    (true, "h6_ratio") => "n6_ratio",
                    (true, "h6_429") => "n6_429",
                    (true, "h6_spread") => "n6_spread",
                    (true, "one_h3_ratio") => "one_n3_ratio",
                    (true, "one_h3_429") => "one_n3_429",
                    (true, "one_h6_ratio") => "one_n6_ratio",
                    (true, "one_h6_429") => "one_n6_429",
                    (true, k) => k,
                }
            };
            let cluster = set(&ctx.sub(&name)?, n, n, runs, headerless, false).await?;
            eprintln!(
                "bench: S12 {name}: {n} replicas ratio {:.3}, 429 {:.4}, spread {:.3}",
                cluster.ratio, cluster.rate_limited, cluster.spread
            );
            run.figure(key(ratio), cluster.ratio);
            run.figure(key(limited), cluster.rate_limited);
            run.figure(key(spread), cluster.spread);
            details.insert(name.clone(), cluster.details);
            let one = set(
                &ctx.sub(&format!("one-{name}"))?,
                1,
                n,
                runs,
                headerless,
                false,
            )
            .await?;
            eprintln!(
                "bench: S12 one-{name}: 1 replica ratio {:.3}, 429 {:.4}",
                one.ratio, one.rate_limited
            );
            run.figure(key(one_ratio), one.ratio);
            run.figure(key(one_limited), one.rate_limited);
            details.insert(format!("one-{name}"), one.details);
        }
    }
    let killed = set(
        &ctx.sub("kill")?,
        3,
        3,
        KILL_RUNS.get(ctx.quick),
        false,
        true,
    )
    .await?;
    eprintln!(
        "bench: S12 kill: lowest window ÷ limit {:.3}, 429 {:.4}",
        killed.ratio, killed.rate_limited
    );
    run.figure("kill_min_window", killed.ratio);
    run.figure("kill_429", killed.rate_limited);
    details.insert("kill".into(), killed.details);
    run.details = Value::Object(details);
    Ok(run)
}
