//! Rate scenarios: how close to the provider's limit runnel runs, and how
//! many calls it wastes. S1: a limit announced in headers. S2: bare 429s,
//! starting 10× above and 10× below the limit. S10: evaluators on a second
//! provider — every call should produce a run or an annotation.

use anyhow::Result;
use serde_json::{Value, json};

use super::report::{FigureSpec, Goal, Run};
use super::{
    Ctx, SIM_BURST_S, Single, Size, Spec, all_succeeded, deadline, rate_ideal, run_to_end,
    sim_config,
};
use crate::harness::{ServerProcess, ServerToml, SimProcess, arithmetic, experiment_body};

/// The provider limit of S1, S2 and S10, in requests per second.
const LIMIT: f64 = 50.0;

const RUNS: Size = Size::new(300, 2000);

/// S1.
pub(crate) const S1: Spec = Spec {
    id: "S1",
    title: "limit announced in headers: completion vs ideal",
    setup: |quick| {
        format!(
            "{} runs; simulator limit {LIMIT} req/s per key with x-ratelimit headers, burst 1 s, \
             latency 100±50 ms uniform; one server on SQLite with default settings (20 slots, \
             openai_compatible start rate 1 req/s). Ideal = the earliest time the simulator's \
             bucket admits every run, burst included: (runs − {LIMIT} × {SIM_BURST_S} s) / \
             limit. Completion = experiment created_at → updated_at of its COMPLETED write.",
            RUNS.get(quick)
        )
    },
    figures: &[
        FigureSpec::goal("ratio", "completion ÷ ideal", "ratio", Goal::AtMost(1.05)),
        FigureSpec::goal(
            "share_429",
            "429 share of requests",
            "ratio",
            Goal::AtMost(0.02),
        )
        .independent(),
    ],
    postgres: false,
};

/// One experiment of `n` runs against a fresh simulator and server; returns
/// (completion ÷ ideal, 429 share, details).
async fn limited(
    ctx: &Ctx,
    n: usize,
    headerless: bool,
    limits: &[(&str, Value)],
) -> Result<(f64, f64, Value)> {
    let env = Single::start(
        ctx,
        sim_config(Some(LIMIT), headerless, 100, 50, ctx.run),
        limits,
        |t| t,
    )
    .await?;
    let dataset = env.api.dataset("rate", arithmetic(n)).await?;
    let ideal = rate_ideal(n, LIMIT);
    let done = run_to_end(
        &env.api,
        &experiment_body(&dataset, "rate", "sim", None, None),
        deadline(ideal),
        std::time::Duration::from_millis(200),
    )
    .await?;
    all_succeeded(&done, n as u64)?;
    let stats = env.sim.snapshot().await?;
    let share = stats.classes.rate_limited as f64 / stats.requests.max(1) as f64;
    let ratio = done.seconds / ideal;
    let details = json!({
        "runs": n,
        "ideal_s": ideal,
        "completion_s": done.seconds,
        "requests": stats.requests,
        "ok": stats.classes.ok,
        "rate_limited": stats.classes.rate_limited,
        "requests_per_second": stats.per_second.iter().map(|s| s.requests).collect::<Vec<_>>(),
    });
    Ok((ratio, share, details))
}

pub(crate) async fn s1(ctx: &Ctx) -> Result<Run> {
    let (ratio, share, details) = limited(ctx, RUNS.get(ctx.quick), false, &[]).await?;
    let mut run = Run {
        details,
        ..Run::default()
    };
    run.figure("ratio", ratio);
    run.figure("share_429", share);
    Ok(run)
}

/// S2.
pub(crate) const S2: Spec = Spec {
    id: "S2",
    title: "headerless provider (bare 429s), start rate 10× too high and 10× too low",
    setup: |quick| {
        format!(
            "As S1 ({} runs, limit {LIMIT} req/s, latency 100±50 ms) but the simulator sends bare \
             429s and no rate-limit headers; the provider entry starts at initial_rps = {} \
             (10× too high) in one experiment and {} (10× too low) in another, each on fresh \
             processes.",
            RUNS.get(quick),
            LIMIT * 10.0,
            LIMIT / 10.0
        )
    },
    figures: &[
        FigureSpec::goal(
            "high_ratio",
            "start 10× high: completion ÷ ideal",
            "ratio",
            Goal::AtMost(1.15),
        ),
        FigureSpec::goal(
            "high_429",
            "start 10× high: 429 share",
            "ratio",
            Goal::AtMost(0.05),
        )
        .independent(),
        FigureSpec::goal(
            "low_ratio",
            "start 10× low: completion ÷ ideal",
            "ratio",
            Goal::AtMost(1.15),
        ),
        FigureSpec::goal(
            "low_429",
            "start 10× low: 429 share",
            "ratio",
            Goal::AtMost(0.05),
        )
        .independent(),
    ],
    postgres: false,
};

pub(crate) async fn s2(ctx: &Ctx) -> Result<Run> {
    let n = RUNS.get(ctx.quick);
    let mut run = Run::default();
    let mut details = serde_json::Map::new();
    let starts = [
        ("high", LIMIT * 10.0, "high_ratio", "high_429"),
        ("low", LIMIT / 10.0, "low_ratio", "low_429"),
    ];
    for (name, start, ratio_key, share_key) in starts {
        let sub = ctx.sub(name)?;
        let (ratio, share, d) = limited(&sub, n, true, &[("initial_rps", json!(start))]).await?;
        run.figure(ratio_key, ratio);
        run.figure(share_key, share);
        details.insert(name.into(), d);
    }
    run.details = Value::Object(details);
    Ok(run)
}

/// S10.
pub(crate) const S10: Spec = Spec {
    id: "S10",
    title: "evaluators on a second provider: no wasted calls",
    setup: |quick| {
        format!(
            "{} examples; task on simulator A, one evaluator on simulator B, each limited to \
             {LIMIT} req/s with headers, latency 100±50 ms; one server on SQLite. Figure: \
             provider calls on A and B together ÷ (runs + annotations recorded). Ideal time = \
             the earliest time either simulator's bucket admits every call, burst included \
             (tasks and evaluations overlap).",
            S10_RUNS.get(quick)
        )
    },
    figures: &[
        FigureSpec::goal(
            "calls_ratio",
            "calls ÷ (runs + annotations)",
            "ratio",
            Goal::AtMost(1.02),
        )
        .independent(),
        FigureSpec::context("ratio", "completion ÷ ideal", "ratio"),
    ],
    postgres: false,
};

const S10_RUNS: Size = Size::new(200, 1000);

pub(crate) async fn s10(ctx: &Ctx) -> Result<Run> {
    let n = S10_RUNS.get(ctx.quick);
    let task = SimProcess::start(
        &ctx.bin,
        &ctx.dir,
        sim_config(Some(LIMIT), false, 100, 50, ctx.run),
    )
    .await?;
    let judge = SimProcess::start(
        &ctx.bin,
        &ctx.dir,
        sim_config(Some(LIMIT), false, 100, 50, ctx.run + 100),
    )
    .await?;
    let toml = ServerToml::new(&ctx.sqlite("runnel"))
        .provider("task", &task.url, &[])
        .provider("judge", &judge.url, &[]);
    let server = ServerProcess::start(&ctx.bin, &ctx.dir, "server", &toml.render(), &[]).await?;
    let api = server.api();
    let dataset = api.dataset("s10", arithmetic(n)).await?;
    let ideal = rate_ideal(n, LIMIT);
    let done = run_to_end(
        &api,
        &experiment_body(&dataset, "s10", "task", Some("judge"), None),
        deadline(ideal),
        std::time::Duration::from_millis(200),
    )
    .await?;
    all_succeeded(&done, n as u64)?;
    let annotations = done.progress("annotations_done") + done.progress("annotations_failed");
    let recorded = done.progress("runs_succeeded") + done.progress("runs_failed") + annotations;
    let (a, b) = (task.snapshot().await?, judge.snapshot().await?);
    let calls = a.requests + b.requests;
    let mut run = Run {
        details: json!({
            "examples": n,
            "runs": done.progress("runs_succeeded"),
            "annotations": annotations,
            "annotations_failed": done.progress("annotations_failed"),
            "task_requests": a.requests, "task_429": a.classes.rate_limited,
            "judge_requests": b.requests, "judge_429": b.classes.rate_limited,
            "completion_s": done.seconds,
            "ideal_s": ideal,
        }),
        ..Run::default()
    };
    run.figure("calls_ratio", calls as f64 / recorded.max(1) as f64);
    run.figure("ratio", done.seconds / ideal);
    Ok(run)
}
