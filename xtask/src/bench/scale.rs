//! S9: a dataset of 1,000,000 examples. The server must stream work from the
//! database in pages (bounded memory) and start dispatching at once.

use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use serde_json::json;

use super::report::{FigureSpec, Goal, Run};
use super::{Ctx, Single, Size, Spec, sim_config};
use crate::harness::{arithmetic, experiment_body};

const S9_LIMIT: f64 = 200.0;

const EXAMPLES: Size = Size::new(50_000, 1_000_000);

const RUN_SECONDS: Size = Size::new(10, 60);

/// S9.
pub(crate) const S9: Spec = Spec {
    id: "S9",
    title: "1,000,000 examples: peak RSS and time to first dispatch",
    setup: |quick| {
        format!(
            "{} examples uploaded through the API as NDJSON in chunks of 50,000 lines; \
             simulator limit {S9_LIMIT} req/s with headers, latency 100±50 ms; one server on \
             SQLite with default settings. The experiment runs {} s and is stopped. Peak RSS = \
             the server's VmHWM at the end (upload included). First dispatch = experiment POST \
             sent → first request seen by the simulator (its in-flight peak, read every 5 ms).",
            EXAMPLES.get(quick),
            RUN_SECONDS.get(quick)
        )
    },
    figures: &[
        FigureSpec::goal(
            "peak_rss_mb",
            "server peak RSS (MB)",
            "MB",
            Goal::AtMost(200.0),
        ),
        FigureSpec::goal(
            "first_dispatch_s",
            "time to first dispatch (s)",
            "s",
            Goal::AtMost(5.0),
        ),
        FigureSpec::context("rate_ratio", "runs/s while running ÷ limit", "ratio"),
    ],
    postgres: false,
};

pub(crate) async fn s9(ctx: &Ctx) -> Result<Run> {
    let n = EXAMPLES.get(ctx.quick);
    let env = Single::start(
        ctx,
        sim_config(Some(S9_LIMIT), false, 100, 50, ctx.run),
        &[],
        |t| t,
    )
    .await?;
    let uploading = Instant::now();
    let dataset = env.api.dataset("s9", arithmetic(n)).await?;
    let upload_s = uploading.elapsed().as_secs_f64();
    let rss_after_upload = env.server.peak_rss();

    let body = experiment_body(&dataset, "s9", "sim", None, None);
    let created = Instant::now();
    let id = env.api.experiment(&body).await?;
    let post_s = created.elapsed().as_secs_f64();
    let first = loop {
        let stats = env.sim.snapshot().await?;
        if stats.concurrency.peak > 0 || stats.requests > 0 {
            break created.elapsed().as_secs_f64();
        }
        if created.elapsed() > Duration::from_secs(120) {
            bail!("S9: no request reached the simulator within 120 s");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    let mut rss_samples = Vec::new();
    let until = created + Duration::from_secs(RUN_SECONDS.get(ctx.quick) as u64);
    while Instant::now() < until {
        rss_samples.push(env.server.peak_rss().unwrap_or(0) / 1_000_000);
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let progress = env.api.get(&id).await?;
    let elapsed = created.elapsed().as_secs_f64();
    let (status, body) = env.api.stop(&id).await?;
    if status != 200 {
        bail!("S9: stop answered {status}: {body}");
    }
    let recorded = progress["progress"]["runs_succeeded"].as_u64().unwrap_or(0);
    let peak = env.server.peak_rss().unwrap_or(0) as f64 / 1e6;
    let stats = env.sim.snapshot().await?;
    let mut run = Run {
        details: json!({
            "examples": n,
            "upload_s": upload_s,
            "create_request_s": post_s,
            "peak_rss_after_upload_mb": rss_after_upload.map(|b| b as f64 / 1e6),
            "peak_rss_mb_each_second": rss_samples,
            "runs_recorded": recorded,
            "runs_expected": progress["progress"]["runs_expected"],
            "run_s": elapsed,
            "requests": stats.requests,
            "rate_limited": stats.classes.rate_limited,
        }),
        ..Run::default()
    };
    run.figure("peak_rss_mb", peak);
    run.figure("first_dispatch_s", first);
    run.figure(
        "rate_ratio",
        recorded as f64 / (elapsed - first).max(1e-3) / S9_LIMIT,
    );
    Ok(run)
}
