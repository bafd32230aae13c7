//! S11: the simulator's rate-limit dialects (issue 12 items 5 and 6), each
//! on fresh processes, each against the limit that binds it: per-minute
//! headers, a bucket's capacity with its time to full, a per-day header over
//! an unannounced per-second limit, remaining-only headers over 10 s
//! windows, RFC 3339 resets (Anthropic), per-second headers (Together), no
//! headers, a token limit that binds before the request limit, fixed and
//! sliding windows, a hidden second client on the same key, and quota
//! exhaustion.
//!
//! Figures per row: completion ÷ ideal (the ideal is the binding limiter's
//! earliest admission of every call, [`super::ideal`]), 429 share, the lowest
//! 10 s throughput after the first 30 s ÷ the binding limit (from the
//! simulator's per-second histogram), and duplicate provider calls
//! ([`crate::duplicates`]). The quota row: the experiment must reach ERROR
//! with a `last_error` naming the quota within `scheduler.rate_limit_give_up`
//! of the first quota reply, and the provider must get no call after that.
//!
//! `BENCH_S11_ROWS=openai,none` runs only the rows named (for working on one
//! dialect; the figures of the others are then missing and the run counts as
//! failed).

use std::collections::BTreeMap;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

use super::ideal::{self, Limiter};
use super::report::{FigureSpec, Goal, Run};
use super::{Ctx, SIM_BURST_S, Size, Spec, all_succeeded, deadline, wait_end};
use crate::chaos::db::Database;
use crate::duplicates::Duplicates;
use crate::harness::{ServerProcess, ServerToml, SimProcess, arithmetic, experiment_body};

/// Runs per row.
const RUNS: Size = Size::new(200, 1000);

/// The request limit of every row limited by requests, per second: 1,000
/// runs take about 50 s, enough for the lowest-window figure (which needs
/// more than 40 s), and 200 runs about 10 s, so the quick matrix fits in CI.
const RATE: f64 = 20.0;

/// The 429-share goal of every rate row at `--quick` size (200 runs, what
/// CI checks). Learning a limit costs a roughly fixed number of 429s (a slow
/// start that overshoots once, a hidden client found by its 429s), which on
/// 200 runs measured 2–5 % where 1,000 runs stay under the full-size goals
/// (2 % with headers, 3 % without). A learner that does not learn — the
/// 26.6 % of issue 14, a 429 storm — is still far above this.
const QUICK_429_SHARE: f64 = 0.10;

/// Length of the windows of the window rows.
const WINDOW_S: f64 = 10.0;

/// The per-day request limit the `daily` row announces (far above the run:
/// the unannounced per-second limit binds).
const RPD: f64 = 100_000.0;

/// The share of the quota the hidden client uses in the `hidden` row.
const HIDDEN_SHARE: f64 = 0.3;

/// The token row: about 4,000 prompt tokens per call (the simulator counts
/// characters / 4) under 2,400,000 tokens per minute (40,000 per second:
/// about 10 calls per second), with a request limit of 50 per second that
/// does not bind.
const PROMPT_CHARS: usize = 16_000;
const TPM: f64 = 2_400_000.0;
const TOKEN_ROW_RPS: f64 = 50.0;

/// The quota row: the simulator answers quota errors after this many calls.
const QUOTA_AFTER: Size = Size::new(50, 200);

/// `scheduler.rate_limit_give_up` of the quota row, in seconds: short, so
/// the row takes well under a minute.
const GIVE_UP_S: f64 = 20.0;

/// Slack on the give-up for the quota outcome: the status is read every
/// [`POLL`], and the give-up is counted from runnel's first quota reply,
/// which the simulator's counters show a little later.
const GIVE_UP_SLACK_S: f64 = 5.0;

/// How long the quota row watches the simulator after ERROR for calls that
/// should not come (a retry would come within a few backoffs).
const AFTER_ERROR_WATCH: Duration = Duration::from_secs(5);

/// How often the quota row reads the experiment and the simulator.
const POLL: Duration = Duration::from_millis(100);

/// The lowest-window figure: skip this many seconds of learning, then take
/// the lowest throughput over any span of this length.
const SKIP_S: u64 = 30;
const SPAN_S: u64 = 10;

/// One row of the matrix.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Row {
    OpenAi,
    Bucket,
    Anthropic,
    Together,
    Daily,
    Remaining,
    Bare,
    Tokens,
    Fixed,
    Sliding,
    Hidden,
}

/// Every rate row, in order (the quota row runs after them).
const ROWS: &[Row] = &[
    Row::OpenAi,
    Row::Bucket,
    Row::Anthropic,
    Row::Together,
    Row::Daily,
    Row::Remaining,
    Row::Bare,
    Row::Tokens,
    Row::Fixed,
    Row::Sliding,
    Row::Hidden,
];

impl Row {
    /// Its name, the prefix of its figure keys.
    fn key(self) -> &'static str {
        match self {
            Row::OpenAi => "openai",
            Row::Bucket => "bucket",
            Row::Anthropic => "anthropic",
            Row::Together => "together",
            Row::Daily => "daily",
            Row::Remaining => "remaining",
            Row::Bare => "none",
            Row::Tokens => "tpm",
            Row::Fixed => "fixed",
            Row::Sliding => "sliding",
            Row::Hidden => "hidden",
        }
    }

    /// The simulator's `limits`. Only fields other than the defaults are
    /// written, so the rows the simulator has always known (`openai`,
    /// `none`) run on any version of it.
    fn limits(self) -> Value {
        let burst = format!("{}ms", (SIM_BURST_S * 1000.0).round());
        let window = format!("{WINDOW_S}s");
        let mut limits = json!({ "rps": RATE, "burst": burst });
        let extra = match self {
            Row::OpenAi => json!({}),
            Row::Bucket => json!({ "dialect": "bucket" }),
            Row::Anthropic => json!({ "dialect": "anthropic" }),
            Row::Together => json!({ "dialect": "together" }),
            Row::Daily => json!({ "dialect": "daily", "rpd": RPD }),
            Row::Remaining => json!({
                "dialect": "remaining", "algorithm": "fixed_window", "window": window,
            }),
            Row::Bare => json!({ "headerless": true }),
            Row::Tokens => json!({ "rps": TOKEN_ROW_RPS, "tpm": TPM }),
            Row::Fixed => json!({ "algorithm": "fixed_window", "window": window }),
            Row::Sliding => json!({ "algorithm": "sliding_window", "window": window }),
            Row::Hidden => json!({ "hidden_share": HIDDEN_SHARE }),
        };
        crate::chaos::merge(&mut limits, extra);
        limits
    }

    /// The simulator's limiters for this row, each with the cost of one call
    /// in its unit; `phase` is the time since the simulator's start at the
    /// experiment's creation, `tokens` the mean tokens of a successful call.
    /// A window limiter admits `rate × window` per window.
    fn limiters(self, phase: f64, tokens: f64) -> Vec<(Limiter, f64)> {
        let bucket = (Limiter::bucket(RATE, SIM_BURST_S), 1.0);
        let per_window = RATE * WINDOW_S;
        match self {
            Row::OpenAi | Row::Bucket | Row::Anthropic | Row::Together | Row::Bare => {
                vec![bucket]
            }
            Row::Daily => vec![
                bucket,
                (
                    Limiter::FixedWindow {
                        window: 86_400.0,
                        per_window: RPD,
                        phase,
                    },
                    1.0,
                ),
            ],
            Row::Remaining | Row::Fixed => vec![(
                Limiter::FixedWindow {
                    window: WINDOW_S,
                    per_window,
                    phase,
                },
                1.0,
            )],
            Row::Sliding => vec![(
                Limiter::SlidingWindow {
                    window: WINDOW_S,
                    per_window,
                },
                1.0,
            )],
            // The hidden client takes its share of the refill; the bucket's
            // capacity stays whole (the most runnel could find at the start).
            Row::Hidden => vec![(
                Limiter::Bucket {
                    rate: RATE * (1.0 - HIDDEN_SHARE),
                    capacity: (RATE * SIM_BURST_S).max(1.0),
                },
                1.0,
            )],
            Row::Tokens => vec![
                (Limiter::bucket(TOKEN_ROW_RPS, SIM_BURST_S), 1.0),
                (Limiter::bucket(TPM / 60.0, SIM_BURST_S), tokens.max(1.0)),
            ],
        }
    }

    /// Speaks the Anthropic protocol (a `kind = "anthropic"` provider entry).
    fn anthropic(self) -> bool {
        self == Row::Anthropic
    }
}

/// The figures of the rate rows: the goal of completion ÷ ideal and of the
/// 429 share depend on whether the binding limit is announced.
macro_rules! rows {
    ($(($key:literal, $label:literal, $ratio:expr, $share:expr)),* $(,)?; $($extra:expr),* $(,)?) => {
        &[
            $(
                FigureSpec::goal(
                    concat!($key, "_ratio"),
                    concat!($label, ": completion ÷ ideal"),
                    "ratio",
                    Goal::AtMost($ratio),
                ),
                FigureSpec::goal(
                    concat!($key, "_429"),
                    concat!($label, ": 429 share"),
                    "ratio",
                    Goal::AtMost($share),
                )
                .quick_goal(Goal::AtMost(QUICK_429_SHARE))
                .independent(),
                FigureSpec::goal(
                    concat!($key, "_window"),
                    concat!($label, ": lowest 10 s after 30 s ÷ limit"),
                    "ratio",
                    Goal::AtLeast(0.85),
                )
                .full_size_only(),
                FigureSpec::goal(
                    concat!($key, "_dup"),
                    concat!($label, ": duplicate provider calls"),
                    "calls",
                    Goal::AtMost(0.0),
                )
                .independent(),
            )*
            $($extra),*
        ]
    };
}

/// S11.
pub(crate) const S11: Spec = Spec {
    id: "S11",
    title: "rate-limit dialects: each against the limit that binds",
    setup: |quick| {
        format!(
            "{} runs per row, each row on a fresh simulator and server (SQLite, default \
             settings, 20 slots), latency 100±50 ms. Limit {RATE} req/s (burst {SIM_BURST_S} s) \
             unless said: openai per-minute headers; bucket = capacity + time to full; anthropic \
             RFC 3339 resets through an anthropic provider entry; together per-second headers; \
             daily = rpd {RPD} announced, {RATE} req/s unannounced; remaining-only headers over \
             {WINDOW_S} s fixed windows; none = bare 429s; tpm = ~4,000-token prompts under \
             {TPM} tokens/min (the tokens bind), {TOKEN_ROW_RPS} req/s; fixed and sliding \
             {WINDOW_S} s windows of {} requests; hidden = a second client using {} % of the \
             quota. Ideal = the binding limiter's earliest admission of every call, burst \
             included. Lowest window = fewest successful calls in any {SPAN_S} s after the \
             first {SKIP_S} s (the last, partial second excluded) ÷ the binding rate. \
             Duplicates = successful calls − runs recorded (and the simulator's \
             repeated_successes when it reports it). Quota: the simulator answers quota errors \
             after {} calls; scheduler.rate_limit_give_up = {GIVE_UP_S} s.",
            RUNS.get(quick),
            RATE * WINDOW_S,
            HIDDEN_SHARE * 100.0,
            QUOTA_AFTER.get(quick),
        )
    },
    figures: rows![
        ("openai", "openai headers", 1.05, 0.02),
        ("bucket", "bucket capacity + time to full", 1.05, 0.02),
        ("anthropic", "anthropic RFC 3339", 1.05, 0.02),
        ("together", "together per-second", 1.05, 0.02),
        ("daily", "daily header, unannounced rps", 1.10, 0.03),
        ("remaining", "remaining-only, 10 s windows", 1.10, 0.03),
        ("none", "no headers", 1.10, 0.03),
        ("tpm", "4,000-token prompts, TPM binds", 1.10, 0.03),
        ("fixed", "fixed 10 s windows", 1.10, 0.03),
        ("sliding", "sliding 10 s window", 1.10, 0.03),
        ("hidden", "hidden client using 30 %", 1.10, 0.03);
        FigureSpec::goal(
            "quota_error",
            "quota: ERROR naming the quota within the give-up (1 = yes)",
            "outcome",
            Goal::AtLeast(1.0),
        )
        .independent(),
        FigureSpec::goal(
            "quota_calls_after",
            "quota: provider calls after ERROR",
            "calls",
            Goal::AtMost(0.0),
        )
        .independent(),
        FigureSpec::context(
            "quota_error_s",
            "quota: s from the first quota reply to ERROR",
            "s",
        ),
    ],
    postgres: false,
};

/// The rows `BENCH_S11_ROWS` names (all without it).
fn selected(name: &str) -> bool {
    match std::env::var("BENCH_S11_ROWS") {
        Ok(list) => list.split(',').any(|r| r.trim().eq_ignore_ascii_case(name)),
        Err(_) => true,
    }
}

pub(crate) async fn s11(ctx: &Ctx) -> Result<Run> {
    let mut run = Run::default();
    let mut details = serde_json::Map::new();
    for row in ROWS.iter().copied().filter(|r| selected(r.key())) {
        let started = Instant::now();
        match rate_row(&ctx.sub(row.key())?, row).await {
            Ok(figures) => {
                eprintln!(
                    "bench: S11 {}: ratio {}, 429 share {:.4}, lowest window {}, duplicates \
                     {} ({:.0} s)",
                    row.key(),
                    if figures.ratio.is_finite() {
                        format!("{:.3}", figures.ratio)
                    } else {
                        "– (every call fits in the first window)".into()
                    },
                    figures.share,
                    figures
                        .window
                        .map_or("– (run too short)".into(), |w| format!("{w:.3}")),
                    figures.duplicates,
                    started.elapsed().as_secs_f64()
                );
                run.figures.extend(figures.named(row.key()));
                details.insert(row.key().into(), figures.details);
            }
            Err(e) => run.errors.push(format!("S11 row {}: {e:#}", row.key())),
        }
    }
    if selected("quota") {
        match quota_row(&ctx.sub("quota")?).await {
            Ok((figures, d)) => {
                eprintln!("bench: S11 quota: {d}");
                run.figures.extend(figures);
                details.insert("quota".into(), d);
            }
            Err(e) => run.errors.push(format!("S11 row quota: {e:#}")),
        }
    }
    run.details = Value::Object(details);
    Ok(run)
}

/// What one rate row measured.
struct RowFigures {
    ratio: f64,
    share: f64,
    window: Option<f64>,
    duplicates: i64,
    details: Value,
}

impl RowFigures {
    /// The figures under their keys (`<row>_ratio`, …). The keys are the
    /// spec's, looked up so they stay `'static`.
    fn named(&self, row: &str) -> Vec<(&'static str, f64)> {
        let value = |suffix: &str| match suffix {
            "_ratio" => self.ratio,
            "_429" => self.share,
            "_window" => self.window.unwrap_or(f64::NAN),
            _ => self.duplicates as f64,
        };
        S11.figures
            .iter()
            .filter_map(|f| {
                let suffix = f.key.strip_prefix(row)?;
                matches!(suffix, "_ratio" | "_429" | "_window" | "_dup")
                    .then(|| (f.key, value(suffix)))
            })
            .collect()
    }
}

/// A simulator, and one server on SQLite whose provider `sim` points at it
/// (an Anthropic entry for the Anthropic row), with `extra` settings.
async fn start(
    ctx: &Ctx,
    limits: Value,
    anthropic: bool,
    extra: &[(&str, &str, Value)],
) -> Result<(SimProcess, ServerProcess)> {
    let mut config = super::sim_config(None, false, 100, 50, ctx.run);
    config["limits"] = limits;
    let sim = SimProcess::start(&ctx.bin, &ctx.dir, config).await?;
    let mut toml = ServerToml::new(&ctx.sqlite("runnel"));
    toml = if anthropic {
        toml.set("providers.sim", "kind", "anthropic")
            .set("providers.sim", "base_url", sim.url.as_str())
            .set("providers.sim", "api_key_env", KEY_ENV)
    } else {
        toml.provider("sim", &sim.url, &[])
    };
    for (section, key, value) in extra {
        toml = toml.set(section, key, value.clone());
    }
    let server = ServerProcess::start(
        &ctx.bin,
        &ctx.dir,
        "server",
        &toml.render(),
        &[(KEY_ENV, "sk-s11-bench")],
    )
    .await?;
    Ok((sim, server))
}

/// The environment variable holding the (simulated) key of the Anthropic
/// entry, which requires one.
const KEY_ENV: &str = "S11_PROVIDER_KEY";

/// The experiment of a row: one arithmetic question per example, with about
/// 4,000 tokens of context before it in the token row.
fn body(dataset: &str, row: Row) -> Value {
    let mut body = experiment_body(dataset, row.key(), "sim", None, None);
    if row == Row::Tokens {
        let context = "lorem ipsum ".repeat(PROMPT_CHARS / 12);
        body["task"]["messages"][0]["content"] =
            json!(format!("{context}\nQuestion: {{{{input.question}}}}"));
    }
    body
}

async fn rate_row(ctx: &Ctx, row: Row) -> Result<RowFigures> {
    let n = RUNS.get(ctx.quick);
    let (sim, server) = start(ctx, row.limits(), row.anthropic(), &[]).await?;
    let api = server.api();
    let dataset = api.dataset(row.key(), arithmetic(n)).await?;
    let id = api.experiment(&body(&dataset, row)).await?;
    // Read after the POST: a phase read later makes the ideal no larger.
    let phase = sim.snapshot().await?.elapsed_ms as f64 / 1000.0;
    // A generous deadline: the ideal at the slowest row's token estimate.
    let rough = ideal::ideal_seconds(n as u64, &row.limiters(phase, 4_100.0));
    let done = wait_end(&api, &id, deadline(rough), Duration::from_millis(200)).await?;
    all_succeeded(&done, n as u64)?;
    let (stats, repeated) = sim.stats().await?;
    let tokens =
        (stats.tokens.prompt + stats.tokens.completion) as f64 / stats.classes.ok.max(1) as f64;
    let limits = row.limiters(phase, tokens);
    let ideal = ideal::ideal_seconds(n as u64, &limits);
    let (limiter, cost) = ideal::binding(n as u64, &limits).context("a row without limits")?;
    let rate = limiter.long_run_rate(cost);
    let per_second: Vec<(u64, u64)> = stats.per_second.iter().map(|s| (s.second, s.ok)).collect();
    let window = lowest_window(&per_second, SKIP_S, SPAN_S).map(|calls_per_s| calls_per_s / rate);
    let recorded = done.progress("runs_succeeded") + done.progress("runs_failed");
    // No fault: any duplicate is one too many. Every run's prompt is
    // distinct, so the simulator's own count is checked too.
    let duplicates = Duplicates {
        successful_calls: stats.classes.ok,
        results: recorded,
        database: Database::from_url(&ctx.sqlite("runnel"))
            .invariants(true)?
            .duplicate_runs,
        repeated_successes: repeated,
        unique_bodies: true,
        bound: 0,
    };
    let share = stats.classes.rate_limited as f64 / stats.requests.max(1) as f64;
    Ok(RowFigures {
        // Every call fits in the first window (window rows at the quick
        // size): there is no ideal to compare with.
        ratio: if ideal > 0.0 {
            done.seconds / ideal
        } else {
            f64::NAN
        },
        share,
        window,
        duplicates: duplicates.worst().max(duplicates.database as i64),
        details: json!({
            "runs": n,
            "limits": row.limits(),
            "phase_s": phase,
            "tokens_per_call": tokens,
            "binding": format!("{limiter:?} at cost {cost}"),
            "binding_calls_per_s": rate,
            "ideal_s": ideal,
            "completion_s": done.seconds,
            "requests": stats.requests,
            "ok": stats.classes.ok,
            "rate_limited": stats.classes.rate_limited,
            "duplicates": duplicates.json(),
            "ok_per_second": per_second.iter().map(|(_, ok)| ok).collect::<Vec<_>>(),
        }),
    })
}

/// The fewest successful calls per second over any `span` whole seconds
/// that start at least `skip` seconds after the first second with a call and
/// end before the last second with a success (which is partial). `seconds`
/// holds (second, successes), in any order, gaps meaning zero. `None` when
/// the run is too short for one such span.
fn lowest_window(seconds: &[(u64, u64)], skip: u64, span: u64) -> Option<f64> {
    let ok: BTreeMap<u64, u64> = seconds.iter().copied().collect();
    let first = *ok.keys().next()?;
    let last = ok.iter().rev().find(|(_, n)| **n > 0).map(|(s, _)| *s)?;
    let from = first + skip;
    (from..)
        .take_while(|start| start + span <= last)
        .map(|start| {
            let calls: u64 = (start..start + span)
                .map(|s| ok.get(&s).copied().unwrap_or(0))
                .sum();
            calls as f64 / span as f64
        })
        .reduce(f64::min)
}

/// Whether this runnel knows `scheduler.rate_limit_give_up` (issue 12 item
/// 3): the server refuses unknown keys, so the quota row sets it only when
/// `runnel config --defaults` lists it.
fn has_give_up_key(ctx: &Ctx) -> Result<bool> {
    let out = Command::new(&ctx.bin.runnel)
        .args(["config", "--defaults"])
        .output()
        .context("running runnel config --defaults")?;
    if !out.status.success() {
        bail!(
            "runnel config --defaults failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).contains("rate_limit_give_up"))
}

/// The quota row: returns its figures and details.
async fn quota_row(ctx: &Ctx) -> Result<(Vec<(&'static str, f64)>, Value)> {
    if !has_give_up_key(ctx)? {
        bail!(
            "this runnel has no scheduler.rate_limit_give_up (issue 12 item 3): the quota row \
             needs it to end within a bounded time"
        );
    }
    let n = RUNS.get(ctx.quick);
    let after = QUOTA_AFTER.get(ctx.quick);
    // No rate limit: every 429 is the quota's.
    let limits = json!({ "quota_after": after, "quota_style": "openai" });
    let give_up = format!("{GIVE_UP_S}s");
    let (sim, server) = start(
        ctx,
        limits.clone(),
        false,
        &[("scheduler", "rate_limit_give_up", json!(give_up))],
    )
    .await?;
    let api = server.api();
    let dataset = api.dataset("quota", arithmetic(n)).await?;
    let id = api.experiment(&body(&dataset, Row::OpenAi)).await?;
    let until = Instant::now() + Duration::from_secs_f64(GIVE_UP_S * 3.0 + 60.0);
    let mut first_refusal: Option<Instant> = None;
    let (experiment, calls_at_error, error_at) = loop {
        let stats = sim.snapshot().await?;
        if first_refusal.is_none() && stats.requests > stats.classes.ok {
            first_refusal = Some(Instant::now());
        }
        let body = api.get(&id).await?;
        if body["status"] != "RUNNING" {
            break (body, stats.requests, Instant::now());
        }
        if Instant::now() > until {
            bail!(
                "the quota row's experiment was still RUNNING after {GIVE_UP_S} s × 3 + 60 s: {body}"
            );
        }
        tokio::time::sleep(POLL).await;
    };
    // Watching for calls that must not come: absence needs a wait.
    tokio::time::sleep(AFTER_ERROR_WATCH).await;
    let end = sim.snapshot().await?;
    let calls_after = end.requests.saturating_sub(calls_at_error);
    let last_error = experiment["last_error"].as_str().unwrap_or_default();
    let seconds = first_refusal.map(|t| error_at.saturating_duration_since(t).as_secs_f64());
    let outcome = experiment["status"] == "ERROR"
        && last_error.to_lowercase().contains("quota")
        && seconds.is_some_and(|s| s <= GIVE_UP_S + GIVE_UP_SLACK_S);
    let figures = vec![
        ("quota_error", if outcome { 1.0 } else { 0.0 }),
        ("quota_calls_after", calls_after as f64),
        ("quota_error_s", seconds.unwrap_or(f64::NAN)),
    ];
    Ok((
        figures,
        json!({
            "runs": n,
            "limits": limits,
            "give_up_s": GIVE_UP_S,
            "status": experiment["status"],
            "last_error": last_error,
            "first_refusal_to_end_s": seconds,
            "calls_at_end": calls_at_error,
            "calls_after_end": calls_after,
            "ok": end.classes.ok,
            "requests": end.requests,
        }),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lowest_window_skips_the_start_and_the_partial_last_second() {
        // 20/s from second 0 to 59, one slow stretch at 40..45, a partial
        // last second at 60.
        let mut seconds: Vec<(u64, u64)> = (0..60)
            .map(|s| (s, if (40..45).contains(&s) { 10 } else { 20 }))
            .collect();
        seconds.push((60, 3));
        let lowest = lowest_window(&seconds, 30, 10).unwrap();
        assert!((lowest - 15.0).abs() < 1e-9, "{lowest}");
        // A slow start does not count.
        seconds[5].1 = 0;
        assert!((lowest_window(&seconds, 30, 10).unwrap() - 15.0).abs() < 1e-9);
        // Too short a run: none.
        assert_eq!(lowest_window(&seconds[..35], 30, 10), None);
        assert_eq!(lowest_window(&[], 30, 10), None);
        // A gap in the histogram is zero calls.
        let gap: Vec<(u64, u64)> = (0..60).filter(|s| *s != 50).map(|s| (s, 20)).collect();
        assert!((lowest_window(&gap, 30, 10).unwrap() - 18.0).abs() < 1e-9);
    }

    #[test]
    fn every_row_has_its_four_figures_under_its_key() {
        let figures = RowFigures {
            ratio: 1.0,
            share: 0.0,
            window: None,
            duplicates: 0,
            details: Value::Null,
        };
        for row in ROWS {
            let named = figures.named(row.key());
            assert_eq!(named.len(), 4, "{}: {named:?}", row.key());
        }
        // `none` is not a prefix of another row's keys, nor `openai` etc.
        let keys: Vec<&str> = ROWS.iter().map(|r| r.key()).collect();
        for a in &keys {
            for b in &keys {
                assert!(a == b || !b.starts_with(&format!("{a}_")), "{a} / {b}");
            }
        }
    }

    #[test]
    fn the_rows_the_current_simulator_knows_use_only_its_fields() {
        let known = ["rps", "rpm", "tpm", "burst", "per_model", "headerless"];
        for row in [Row::OpenAi, Row::Bare] {
            let limits = row.limits();
            let fields: Vec<&String> = limits.as_object().unwrap().keys().collect();
            assert!(
                fields.iter().all(|f| known.contains(&f.as_str())),
                "{fields:?}"
            );
            let config: runnel_sim::SimConfig =
                serde_json::from_value(json!({ "limits": limits })).unwrap();
            assert_eq!(config.limits.rps, Some(RATE));
        }
    }

    #[test]
    fn each_row_is_bound_by_the_limit_it_is_meant_to_show() {
        let n = 1000;
        let rate = |row: Row| {
            let limits = row.limiters(3.0, 4_010.0);
            let (limiter, cost) = ideal::binding(n, &limits).unwrap();
            limiter.long_run_rate(cost)
        };
        assert!((rate(Row::OpenAi) - RATE).abs() < 1e-9);
        assert!((rate(Row::Daily) - RATE).abs() < 1e-9);
        assert!((rate(Row::Hidden) - RATE * 0.7).abs() < 1e-9);
        assert!((rate(Row::Fixed) - RATE).abs() < 1e-9);
        assert!((rate(Row::Tokens) - TPM / 60.0 / 4_010.0).abs() < 1e-9);
        // 1,000 runs at 20 req/s: 49 s for a bucket, 40 s for sliding windows.
        let ideal = |row: Row| ideal::ideal_seconds(n, &row.limiters(3.0, 4_010.0));
        assert!((ideal(Row::OpenAi) - 49.0).abs() < 1e-9);
        assert!((ideal(Row::Sliding) - 40.0).abs() < 1e-9);
        assert!((ideal(Row::Remaining) - 37.0).abs() < 1e-9);
    }
}
