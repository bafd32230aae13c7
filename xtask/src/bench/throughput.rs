//! Throughput scenarios. S3: runs recorded per second end-to-end with an
//! instant, unlimited provider, on SQLite and PostgreSQL, next to what the
//! simulator alone answers to a plain load generator in the same run. S4:
//! achieved concurrency ÷ slots with 1-second calls and 500 slots.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::Spec;
use super::report::{FigureSpec, Goal, Run};
use super::{Ctx, Single, Size, all_succeeded, deadline, run_to_end, sim_config, wait_end};
use crate::harness::{ServerProcess, ServerToml, SimProcess, arithmetic, experiment_body};

const S3_RUNS: Size = Size::new(2000, 20_000);

/// S3.
pub(crate) const S3: Spec = Spec {
    id: "S3",
    title: "runs recorded per second, no limit, latency 0 (SQLite, PostgreSQL)",
    setup: |quick| {
        format!(
            "{} runs; simulator without limits or latency; provider entry `unlimited = true`; \
             default scheduler (20 slots) and store settings. One server on a SQLite file, then \
             one on a fresh PostgreSQL database. Figure = runs / (created_at → COMPLETED). \
             Baseline: the simulator alone, loaded by 20 concurrent keep-alive connections \
             from xtask (raw HTTP/1.1, prepared requests) for {} s in the same run: what \
             loopback HTTP and the simulator allow on this machine.",
            S3_RUNS.get(quick),
            if quick { 1 } else { 3 }
        )
    },
    figures: &[
        FigureSpec::goal(
            "sqlite",
            "SQLite: runs recorded per s",
            "runs/s",
            Goal::AtLeast(2000.0),
        ),
        FigureSpec::goal(
            "postgres",
            "PostgreSQL: runs recorded per s",
            "runs/s",
            Goal::AtLeast(2000.0),
        ),
        FigureSpec::context("sim_alone", "simulator alone, 20 clients: req/s", "req/s"),
    ],
    postgres: true,
};

/// Requests per second the simulator at `url` answers to `clients`
/// concurrent keep-alive connections, each writing a task-like request and
/// reading the reply, for `secs`. The client writes prepared bytes and only
/// looks for the end of each reply, so it costs little next to the
/// simulator even in xtask's debug build.
pub(crate) async fn load_sim(url: &str, clients: usize, secs: f64) -> Result<f64> {
    let addr = url.trim_start_matches("http://").to_owned();
    let body = json!({
        "model": "task-model",
        "messages": [{"role": "user", "content": "Question: What is 12 + 30?"}],
        "max_tokens": 16,
    })
    .to_string();
    let request = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    let started = Instant::now();
    let until = started + Duration::from_secs_f64(secs);
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let (addr, request) = (addr.clone(), request.clone());
        tasks.push(tokio::spawn(async move {
            let mut socket = TcpStream::connect(&addr).await?;
            socket.set_nodelay(true)?;
            let mut buf = Vec::with_capacity(4096);
            let mut answered = 0u64;
            while Instant::now() < until {
                socket.write_all(request.as_bytes()).await?;
                if !read_reply(&mut socket, &mut buf).await? {
                    bail!("the simulator answered the load generator with an error");
                }
                answered += 1;
            }
            anyhow::Ok(answered)
        }));
    }
    let mut answered = 0;
    for task in tasks {
        answered += task.await??;
    }
    Ok(answered as f64 / started.elapsed().as_secs_f64())
}

/// Reads one HTTP/1.1 reply with a `content-length`; whether it was a 200.
async fn read_reply(socket: &mut TcpStream, buf: &mut Vec<u8>) -> Result<bool> {
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = socket.read(&mut chunk).await?;
        if n == 0 {
            bail!("the simulator closed the connection");
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    let ok = head.starts_with("http/1.1 200");
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .context("a reply without content-length")?;
    while buf.len() < head_end + length {
        let n = socket.read(&mut chunk).await?;
        if n == 0 {
            bail!("the simulator closed the connection mid-reply");
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    buf.drain(..head_end + length);
    Ok(ok)
}

async fn recorded_per_second(ctx: &Ctx, url: &str, n: usize, tag: &str) -> Result<(f64, Value)> {
    let sim = SimProcess::start(&ctx.bin, &ctx.dir, sim_config(None, false, 0, 0, ctx.run)).await?;
    let toml = ServerToml::new(url).provider("sim", &sim.url, &[("unlimited", json!(true))]);
    let server = ServerProcess::start(&ctx.bin, &ctx.dir, tag, &toml.render(), &[]).await?;
    let api = server.api();
    let uploaded = Instant::now();
    let dataset = api.dataset("s3", arithmetic(n)).await?;
    let upload_s = uploaded.elapsed().as_secs_f64();
    let done = run_to_end(
        &api,
        &experiment_body(&dataset, "s3", "sim", None, None),
        deadline(n as f64 / 500.0),
        Duration::from_millis(250),
    )
    .await?;
    all_succeeded(&done, n as u64)?;
    let stats = sim.snapshot().await?;
    let rate = n as f64 / done.seconds;
    Ok((
        rate,
        json!({
            "runs": n,
            "completion_s": done.seconds,
            "requests": stats.requests,
            "upload_s": upload_s,
            "peak_rss_mb": server.peak_rss().map(|b| b as f64 / 1e6),
        }),
    ))
}

pub(crate) async fn s3(ctx: &Ctx) -> Result<Run> {
    let n = S3_RUNS.get(ctx.quick);
    let mut run = Run::default();
    let (baseline, counted) = {
        let sim =
            SimProcess::start(&ctx.bin, &ctx.dir, sim_config(None, false, 0, 0, ctx.run)).await?;
        let rate = load_sim(&sim.url, 20, ctx.pick(1.0, 3.0)).await?;
        (rate, sim.snapshot().await?.classes.ok)
    };
    let (sqlite, sqlite_details) =
        recorded_per_second(ctx, &ctx.sqlite("runnel"), n, "sqlite").await?;
    let db = ctx.postgres("s3")?;
    let (postgres, postgres_details) = recorded_per_second(ctx, &db.url, n, "postgres").await?;
    run.figure("sqlite", sqlite);
    run.figure("postgres", postgres);
    run.figure("sim_alone", baseline);
    run.details = json!({
        "sqlite": sqlite_details,
        "postgres": postgres_details,
        "sim_alone_req_per_s": baseline,
        "sim_alone_ok_counted_by_sim": counted,
        "sqlite_vs_sim_alone": sqlite / baseline,
        "postgres_vs_sim_alone": postgres / baseline,
    });
    Ok(run)
}

const S4_RUNS: Size = Size::new(1000, 5000);

const S4_SLOTS: usize = 500;

/// S4.
pub(crate) const S4: Spec = Spec {
    id: "S4",
    title: "achieved concurrency ÷ slots (latency 1 s, 500 slots)",
    setup: |quick| {
        format!(
            "{} runs; simulator without limits, latency exactly 1 s; provider entry \
             `unlimited = true`; scheduler max_concurrency = {S4_SLOTS}; one server on SQLite. \
             Achieved concurrency = provider calls (one per run) × 1 s ÷ (created_at → \
             COMPLETED) (Little's law over the whole experiment, start-up and tail included). \
             The simulator's in-flight count, \
             sampled every 100 ms while calls are under way, is kept in the details.",
            S4_RUNS.get(quick)
        )
    },
    figures: &[FigureSpec::goal(
        "ratio",
        "achieved concurrency ÷ slots",
        "ratio",
        Goal::AtLeast(0.9),
    )],
    postgres: false,
};

pub(crate) async fn s4(ctx: &Ctx) -> Result<Run> {
    let n = S4_RUNS.get(ctx.quick);
    let env = Single::start(
        ctx,
        sim_config(None, false, 1000, 0, ctx.run),
        &[("unlimited", json!(true))],
        |t| t.set("scheduler", "max_concurrency", S4_SLOTS),
    )
    .await?;
    let dataset = env.api.dataset("s4", arithmetic(n)).await?;
    let id = env
        .api
        .experiment(&experiment_body(&dataset, "s4", "sim", None, None))
        .await?;
    // Sample the simulator's in-flight count until the experiment ends.
    let mut samples = Vec::new();
    let ideal = n as f64 / S4_SLOTS as f64;
    let until = Instant::now() + deadline(ideal);
    loop {
        let stats = env.sim.snapshot().await?;
        if stats.concurrency.current > 0 || !samples.is_empty() {
            samples.push(stats.concurrency.current);
        }
        if stats.requests >= n as u64 && stats.concurrency.current == 0 {
            break;
        }
        if Instant::now() > until {
            bail!("S4 did not finish within {:?}", deadline(ideal));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let done = wait_end(&env.api, &id, deadline(ideal), Duration::from_millis(100)).await?;
    all_succeeded(&done, n as u64)?;
    let stats = env.sim.snapshot().await?;
    let achieved = stats.requests as f64 * 1.0 / done.seconds;
    let sampled = samples.iter().sum::<u64>() as f64 / samples.len().max(1) as f64;
    let mut run = Run {
        details: json!({
            "runs": n,
            "requests": stats.requests,
            "completion_s": done.seconds,
            "ideal_s": ideal,
            "achieved_concurrency": achieved,
            "sampled_mean_in_flight": sampled,
            "sim_peak_in_flight": stats.concurrency.peak,
            "in_flight_samples": samples,
        }),
        ..Run::default()
    };
    run.figure("ratio", achieved / S4_SLOTS as f64);
    Ok(run)
}
