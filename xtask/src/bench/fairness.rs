//! Fairness scenarios. S5: four experiments share one rate-limit key; each
//! should get a quarter of it and they should finish together. S6: an
//! experiment on a throttled provider must not slow one on another provider.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::json;

use super::report::{FigureSpec, Goal, Run, jain};
use super::{
    Ctx, Single, Size, Spec, all_succeeded, deadline, run_to_end, seconds_between, sim_config,
    wait_end,
};
use crate::harness::{ServerProcess, ServerToml, SimProcess, arithmetic, experiment_body};

const S5_LIMIT: f64 = 40.0;
const S5_EXPERIMENTS: usize = 4;

const S5_RUNS: Size = Size::new(60, 300);

/// S5.
pub(crate) const S5: Spec = Spec {
    id: "S5",
    title: "4 experiments on one key: fairness and completion spread",
    setup: |quick| {
        format!(
            "{S5_EXPERIMENTS} experiments of {} runs each, created back to back on one server \
             (SQLite), all on one provider key; simulator limit {S5_LIMIT} req/s with headers, \
             latency 100±50 ms. Progress of each is read every 200 ms. Throughput of each = runs \
             recorded while all four run (from the first reading where all four have recorded \
             a run to the last reading before the first one completes) ÷ that time; Jain's \
             index over the four. Completion spread = (last − first COMPLETED time) ÷ (last \
             COMPLETED − first created), database timestamps.",
            S5_RUNS.get(quick)
        )
    },
    figures: &[
        FigureSpec::goal(
            "jain",
            "Jain's index while all run",
            "index",
            Goal::AtLeast(0.99),
        ),
        FigureSpec::goal("spread", "completion spread", "ratio", Goal::AtMost(0.05)),
        FigureSpec::context(
            "utilisation",
            "key throughput ÷ limit while all run",
            "ratio",
        ),
    ],
    postgres: false,
};

pub(crate) async fn s5(ctx: &Ctx) -> Result<Run> {
    let n = S5_RUNS.get(ctx.quick);
    let env = Single::start(
        ctx,
        sim_config(Some(S5_LIMIT), false, 100, 50, ctx.run),
        &[],
        |t| t,
    )
    .await?;
    let dataset = env.api.dataset("s5", arithmetic(n)).await?;
    let mut ids = Vec::new();
    for i in 0..S5_EXPERIMENTS {
        ids.push(
            env.api
                .experiment(&experiment_body(
                    &dataset,
                    &format!("s5-{i}"),
                    "sim",
                    None,
                    None,
                ))
                .await?,
        );
    }
    // (time, runs recorded per experiment, completed per experiment)
    let mut readings: Vec<(f64, Vec<u64>, Vec<bool>)> = Vec::new();
    let started = Instant::now();
    let ideal = super::rate_ideal(n * S5_EXPERIMENTS, S5_LIMIT);
    let until = started + deadline(ideal);
    loop {
        let t = started.elapsed().as_secs_f64();
        let mut counts = Vec::new();
        let mut completed = Vec::new();
        for id in &ids {
            let body = env.api.get(id).await?;
            counts.push(body["progress"]["runs_succeeded"].as_u64().unwrap_or(0));
            completed.push(body["status"] != "RUNNING");
        }
        let all_done = completed.iter().all(|c| *c);
        readings.push((t, counts, completed));
        if all_done {
            break;
        }
        if Instant::now() > until {
            bail!("S5 did not complete within {:?}", deadline(ideal));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let first = readings
        .iter()
        .position(|(_, c, _)| c.iter().all(|x| *x > 0))
        .unwrap_or(0);
    let last = readings
        .iter()
        .position(|(_, _, done)| done.iter().any(|d| *d))
        .map_or(readings.len() - 1, |p| p.saturating_sub(1));
    if last <= first {
        bail!("S5: no reading with all four experiments running (too small?)");
    }
    let (t0, c0, _) = &readings[first];
    let (t1, c1, _) = &readings[last];
    let window = t1 - t0;
    let rates: Vec<f64> = c0
        .iter()
        .zip(c1)
        .map(|(a, b)| (b - a) as f64 / window)
        .collect();
    let mut finished = Vec::new();
    for id in &ids {
        let done = wait_end(
            &env.api,
            id,
            Duration::from_secs(60),
            Duration::from_millis(100),
        )
        .await?;
        all_succeeded(&done, n as u64)?;
        finished.push(done);
    }
    let (ends, lo, hi) = super::completions(&finished)?;
    let stats = env.sim.snapshot().await?;
    let mut run = Run {
        details: json!({
            "runs_each": n,
            "window_s": window,
            "rates": rates,
            "completion_s": ends,
            "requests": stats.requests,
            "rate_limited": stats.classes.rate_limited,
        }),
        ..Run::default()
    };
    run.figure("jain", jain(&rates));
    run.figure("spread", (hi - lo) / hi);
    run.figure("utilisation", rates.iter().sum::<f64>() / S5_LIMIT);
    Ok(run)
}

const S6_RUNS: Size = Size::new(400, 2000);

/// S6.
pub(crate) const S6: Spec = Spec {
    id: "S6",
    title: "throttled experiment A does not slow experiment B on another provider",
    setup: |quick| {
        format!(
            "Two simulators: A limited to 2 req/s with headers, B without limits; both latency \
             100±50 ms. One server (SQLite, 20 slots): provider `slow` on A with default limits \
             (it learns 2 req/s), provider `fast` on B with `unlimited = true`. B alone: an \
             experiment of {n} runs on `fast`. Then an experiment of 10,000 runs on `slow` \
             starts, and once it has recorded a run, a second experiment of {n} runs on `fast`. \
             Figure = B's throughput with A running ÷ B's alone (completion times from the \
             database).",
            n = S6_RUNS.get(quick)
        )
    },
    figures: &[FigureSpec::goal(
        "ratio",
        "B with A ÷ B alone (throughput)",
        "ratio",
        Goal::AtLeast(0.95),
    )],
    postgres: false,
};

pub(crate) async fn s6(ctx: &Ctx) -> Result<Run> {
    let n = S6_RUNS.get(ctx.quick);
    let slow = SimProcess::start(
        &ctx.bin,
        &ctx.dir,
        sim_config(Some(2.0), false, 100, 50, ctx.run),
    )
    .await?;
    let fast = SimProcess::start(
        &ctx.bin,
        &ctx.dir,
        sim_config(None, false, 100, 50, ctx.run),
    )
    .await?;
    let toml = ServerToml::new(&ctx.sqlite("runnel"))
        .provider("slow", &slow.url, &[])
        .provider("fast", &fast.url, &[("unlimited", json!(true))]);
    let server = ServerProcess::start(&ctx.bin, &ctx.dir, "server", &toml.render(), &[]).await?;
    let api = server.api();
    let b_data = api.dataset("s6-b", arithmetic(n)).await?;
    let a_data = api.dataset("s6-a", arithmetic(10_000)).await?;
    let ideal = n as f64 / 200.0;
    let poll = Duration::from_millis(200);
    let alone = run_to_end(
        &api,
        &experiment_body(&b_data, "b-alone", "fast", None, None),
        deadline(ideal),
        poll,
    )
    .await?;
    all_succeeded(&alone, n as u64)?;

    let a = api
        .experiment(&experiment_body(&a_data, "a", "slow", None, None))
        .await?;
    api.wait_runs(&a, 1, Duration::from_secs(30), Duration::from_millis(50))
        .await
        .context("S6: experiment A")?;
    let with = run_to_end(
        &api,
        &experiment_body(&b_data, "b-with-a", "fast", None, None),
        deadline(ideal),
        poll,
    )
    .await?;
    all_succeeded(&with, n as u64)?;
    let a_body = api.get(&a).await?;
    let a_runs = a_body["progress"]["runs_succeeded"].as_u64().unwrap_or(0);
    let a_seconds =
        seconds_between(&a_body["created_at"], &a_body["updated_at"]).unwrap_or(f64::NAN);
    let _ = api.stop(&a).await?;
    let slow_stats = slow.snapshot().await?;
    let mut run = Run {
        details: json!({
            "runs": n,
            "alone_s": alone.seconds,
            "with_a_s": with.seconds,
            "a_runs_recorded": a_runs,
            "a_elapsed_s_at_read": a_seconds,
            "a_requests": slow_stats.requests,
            "a_429": slow_stats.classes.rate_limited,
        }),
        ..Run::default()
    };
    run.figure("ratio", alone.seconds / with.seconds);
    Ok(run)
}
