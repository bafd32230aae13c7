//! Running one experiment in this process and following it, for `runnel
//! demo` and `runnel run`: [`launch`] creates and starts it through the same
//! code paths as `POST /v1/experiments` (store, then [`lifecycle::start`]),
//! [`follow`] counts the engine's events for it and shows live progress — an
//! indicatif bar on a terminal, a plain line a second otherwise — until the
//! experiment leaves the engine.

use std::collections::{BTreeSet, VecDeque};
use std::fmt::Write as _;
use std::future::Future;
use std::io::IsTerminal;
use std::sync::Arc;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use runnel_advisor::Advisor;
use runnel_core::{Departure, EngineEvent, ExperimentId, OutcomeClass, RateKey};
use runnel_store::NewExperiment;
use tokio::sync::broadcast;

use crate::api::error::ApiError;
use crate::config::{LogConfig, RunnelConfig};
use crate::lifecycle;
use crate::state::AppState;

/// Lowers the default log filter to warnings, so log lines do not scribble
/// over the progress display. A filter set in the configuration (or
/// `RUST_LOG`) is kept, and so is the default when OpenTelemetry export is
/// on: the filter also decides which spans are exported.
pub fn quiet_logs(config: &mut RunnelConfig) {
    if config.log.filter == LogConfig::default().filter && config.otel.endpoint.is_none() {
        config.log.filter = "warn".into();
    }
}

// The three constants below shape what a person watching `runnel run` or
// `runnel demo` sees in the terminal; they change no result, no load and no
// stored value, so they are not settings (a configuration key would be
// one more thing to document for no effect on an experiment).

/// How far back the "current rate" looks.
const RATE_WINDOW: Duration = Duration::from_secs(2);
/// How often the progress is redrawn (plain lines: printed).
const TICK: Duration = Duration::from_millis(200);
/// Plain progress lines are printed at most this often.
const LINE_EVERY: Duration = Duration::from_secs(1);
/// How often the progress bar's spinner moves.
const SPINNER_TICK: Duration = Duration::from_millis(120);

/// An experiment this process created and started, with its event stream.
#[derive(Debug)]
pub struct Launched {
    /// Its id.
    pub id: ExperimentId,
    /// Runs it will make (examples × repetitions).
    pub runs_expected: u64,
    /// Evaluators attached.
    pub evaluators: u64,
    /// When it was started.
    pub started: Instant,
    events: broadcast::Receiver<Arc<EngineEvent>>,
}

/// Stores `new` and starts it on this replica, subscribed to its events
/// before the start so that none is missed.
pub async fn launch(state: &AppState, new: &NewExperiment) -> Result<Launched, ApiError> {
    let id = state.db.create_experiment(new).await?;
    let events = state.bus.subscribe(id);
    let view = state.db.experiment(id).await?;
    let started = Instant::now();
    lifecycle::start(state, id).await?;
    Ok(Launched {
        id,
        runs_expected: view.progress.runs_expected,
        evaluators: new.evaluators.len() as u64,
        started,
        events,
    })
}

/// What the engine reported for one experiment, counted as it happened.
#[derive(Clone, Debug, Default)]
pub struct Tally {
    /// Runs recorded as successes.
    pub runs_ok: u64,
    /// Runs recorded as failures.
    pub runs_failed: u64,
    /// Annotations recorded as successes.
    pub evals_ok: u64,
    /// Annotations recorded as failures.
    pub evals_failed: u64,
    /// Provider calls made (every attempt).
    pub calls: u64,
    /// Calls answered "rate limited" (429, 529) and retried later.
    pub rate_limited: u64,
    /// Calls answered "quota used up" (402, `insufficient_quota`, a daily
    /// quota, a very long `retry-after`) and waited for.
    pub quota_exhausted: u64,
    /// The key whose used-up quota the experiment waits on, while it does.
    pub waiting: Option<runnel_core::Waiting>,
    /// Calls that failed transiently (5xx, resets, timeouts).
    pub transient: u64,
    /// Calls that failed permanently.
    pub permanent: u64,
    /// Events were lost because this reader fell behind (the database's
    /// counts stay exact).
    pub lagged: bool,
    /// The rate-limit keys this experiment's calls used.
    pub keys: BTreeSet<RateKey>,
    recent: VecDeque<Instant>,
}

impl Tally {
    /// Counts one event; returns the departure when the experiment left.
    pub fn record(&mut self, event: &EngineEvent, now: Instant) -> Option<Departure> {
        match event {
            EngineEvent::RunRecorded { record, .. } => {
                if record.output.is_some() {
                    self.runs_ok += 1;
                } else {
                    self.runs_failed += 1;
                }
            }
            EngineEvent::AnnotationRecorded { record, .. } => {
                if record.error.is_none() {
                    self.evals_ok += 1;
                } else {
                    self.evals_failed += 1;
                }
            }
            EngineEvent::CallFinished { class, key, .. } => {
                self.calls += 1;
                if !self.keys.contains(key) {
                    self.keys.insert(key.clone());
                }
                match class {
                    OutcomeClass::Success => {}
                    OutcomeClass::RateLimited => self.rate_limited += 1,
                    OutcomeClass::QuotaExhausted => self.quota_exhausted += 1,
                    OutcomeClass::Transient => self.transient += 1,
                    OutcomeClass::Permanent => self.permanent += 1,
                }
                self.recent.push_back(now);
            }
            EngineEvent::Waiting { waiting, .. } => self.waiting.clone_from(waiting),
            EngineEvent::Departed { why, .. } => return Some(why.clone()),
            _ => {}
        }
        None
    }

    /// Provider calls per second over the last two seconds.
    pub fn rate(&mut self, now: Instant) -> f64 {
        while self
            .recent
            .front()
            .is_some_and(|t| now.saturating_duration_since(*t) > RATE_WINDOW)
        {
            self.recent.pop_front();
        }
        self.recent.len() as f64 / RATE_WINDOW.as_secs_f64()
    }
}

/// Where live progress goes.
#[derive(Debug)]
pub enum Display {
    /// An indicatif bar (the stream is a terminal).
    Bar(ProgressBar),
    /// Plain lines, at most one a second, on stdout or stderr.
    Lines {
        /// Print to stderr instead of stdout.
        stderr: bool,
        /// When the last line was printed.
        last: Option<Instant>,
        /// The last line printed, so an unchanged one is not repeated.
        text: String,
    },
    /// Nothing.
    Quiet,
}

impl Display {
    /// A bar when the chosen stream is a terminal, plain lines otherwise.
    pub fn auto(stderr: bool) -> Self {
        let terminal = if stderr {
            std::io::stderr().is_terminal()
        } else {
            std::io::stdout().is_terminal()
        };
        if !terminal {
            return Display::Lines {
                stderr,
                last: None,
                text: String::new(),
            };
        }
        let target = if stderr {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::stdout()
        };
        let bar = ProgressBar::with_draw_target(Some(0), target);
        let style = ProgressStyle::with_template(
            "{spinner} {elapsed:>4} [{bar:32}] {pos}/{len} results\n  {wide_msg}",
        )
        .map(|s| s.progress_chars("=> "))
        .unwrap_or_else(|_| ProgressStyle::default_bar());
        bar.set_style(style);
        bar.enable_steady_tick(SPINNER_TICK);
        Display::Bar(bar)
    }

    fn show(&mut self, done: u64, total: u64, message: &str, now: Instant, last: bool) {
        match self {
            Display::Bar(bar) => {
                bar.set_length(total);
                bar.set_position(done);
                bar.set_message(message.to_owned());
                if last {
                    bar.finish();
                }
            }
            Display::Lines {
                stderr,
                last: printed,
                text,
            } => {
                let due = printed.is_none_or(|t| now.saturating_duration_since(t) >= LINE_EVERY);
                if (due || last) && *text != message {
                    let line = format!("progress: {message}");
                    if *stderr {
                        eprintln!("{line}");
                    } else {
                        println!("{line}");
                    }
                    *printed = Some(now);
                    *text = message.to_owned();
                }
            }
            Display::Quiet => {}
        }
    }
}

/// How following ended.
#[derive(Clone, Debug, PartialEq)]
pub enum End {
    /// The experiment left the engine.
    Departed(Departure),
    /// The interrupt future completed first (Ctrl-C).
    Interrupted,
}

/// The request rates the advisor currently allows for `keys`, labelled by
/// each key's last part (the model for per-model quotas):
/// `sim-judge 37.5/s, sim-task 38.0/s`. Unlimited keys are left out.
pub fn advisor_rates(advisor: &Advisor, keys: &BTreeSet<RateKey>, now: Instant) -> String {
    let mut out = String::new();
    for key in keys {
        let Some(rate) = advisor.key_metrics(key, now).and_then(|m| m.rate_rps) else {
            continue;
        };
        let key = key.as_str();
        let label = key.rsplit('|').next().filter(|s| !s.is_empty());
        let label = label.unwrap_or(key);
        if !out.is_empty() {
            out.push_str(", ");
        }
        let _ = write!(out, "{label} {rate:.1}/s");
    }
    out
}

/// What the progress line says while the experiment waits on a used-up quota.
fn waiting_text(tally: &Tally, now: Instant) -> Option<String> {
    let w = tally.waiting.as_ref()?;
    let mut text = format!(" · waiting on the quota of {}", w.key.as_str());
    if let Some(until) = w.until {
        let left = until.saturating_duration_since(now).as_secs();
        let _ = write!(text, " (back in {}m {}s)", left / 60, left % 60);
    }
    Some(text)
}

/// One line of progress text.
fn progress_text(
    launched: &Launched,
    tally: &mut Tally,
    advisor: &Advisor,
    now: Instant,
) -> String {
    let mut text = format!(
        "runs {}/{}",
        tally.runs_ok + tally.runs_failed,
        launched.runs_expected
    );
    if tally.runs_failed > 0 {
        let _ = write!(text, " ({} failed)", tally.runs_failed);
    }
    if launched.evaluators > 0 {
        let _ = write!(
            text,
            " · evals {}/{}",
            tally.evals_ok + tally.evals_failed,
            evals_expected(launched, tally)
        );
    }
    let _ = write!(text, " · {:.1} calls/s", tally.rate(now));
    let rates = advisor_rates(advisor, &tally.keys, now);
    if !rates.is_empty() {
        let _ = write!(text, " · advisor allows {rates}");
    }
    let _ = write!(text, " · 429s absorbed {}", tally.rate_limited);
    if let Some(waiting) = waiting_text(tally, now) {
        text.push_str(&waiting);
    }
    if tally.transient > 0 {
        let _ = write!(text, " · retried errors {}", tally.transient);
    }
    text
}

/// Follows a launched experiment until it leaves the engine (completed,
/// errored, stopped, lost) or `interrupt` completes, counting its events and
/// showing progress on `display`.
pub async fn follow(
    launched: &mut Launched,
    tally: &mut Tally,
    advisor: &Advisor,
    display: &mut Display,
    interrupt: impl Future<Output = ()>,
) -> End {
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    tokio::pin!(interrupt);
    if let Display::Bar(bar) = display {
        let (_, total) = totals(launched, tally);
        bar.set_length(total);
        bar.set_message("starting");
    }
    let end = loop {
        tokio::select! {
            received = launched.events.recv() => match received {
                Ok(event) => {
                    if let Some(why) = tally.record(&event, Instant::now()) {
                        break End::Departed(why);
                    }
                }
                Err(broadcast::error::RecvError::Lagged(_)) => tally.lagged = true,
                // The bus never closes while a receiver lives; treat it as
                // the engine going away.
                Err(broadcast::error::RecvError::Closed) => break End::Departed(Departure::Lost),
            },
            _ = tick.tick() => {
                let now = Instant::now();
                let text = progress_text(launched, tally, advisor, now);
                let (done, total) = totals(launched, tally);
                display.show(done, total, &text, now, false);
            }
            () = &mut interrupt => break End::Interrupted,
        }
    };
    let now = Instant::now();
    let text = progress_text(launched, tally, advisor, now);
    let (done, total) = totals(launched, tally);
    display.show(done, total, &text, now, true);
    end
}

/// Annotations expected so far: every evaluator on every run not failed.
fn evals_expected(launched: &Launched, tally: &Tally) -> u64 {
    launched
        .runs_expected
        .saturating_sub(tally.runs_failed)
        .saturating_mul(launched.evaluators)
}

/// Results recorded and results expected (runs plus annotations).
fn totals(launched: &Launched, tally: &Tally) -> (u64, u64) {
    let runs_done = tally.runs_ok + tally.runs_failed;
    let evals_done = tally.evals_ok + tally.evals_failed;
    let total = launched.runs_expected + evals_expected(launched, tally);
    (runs_done + evals_done, total.max(runs_done + evals_done))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(class: OutcomeClass) -> EngineEvent {
        EngineEvent::CallFinished {
            experiment: ExperimentId(uuid::Uuid::nil()),
            key: RateKey::new("sim", "m"),
            class,
            latency: Duration::from_millis(5),
            task: true,
        }
    }

    #[test]
    fn tally_counts_calls_by_class_and_forgets_old_ones_for_the_rate() {
        let mut tally = Tally::default();
        let t0 = Instant::now();
        for class in [
            OutcomeClass::Success,
            OutcomeClass::RateLimited,
            OutcomeClass::RateLimited,
            OutcomeClass::Transient,
            OutcomeClass::Permanent,
        ] {
            assert_eq!(tally.record(&call(class), t0), None);
        }
        assert_eq!(tally.calls, 5);
        assert_eq!(tally.rate_limited, 2);
        assert_eq!(tally.transient, 1);
        assert_eq!(tally.permanent, 1);
        assert!((tally.rate(t0) - 2.5).abs() < 1e-9);
        assert_eq!(tally.rate(t0 + Duration::from_secs(3)), 0.0);
        let departed = EngineEvent::Departed {
            experiment: ExperimentId(uuid::Uuid::nil()),
            why: Departure::Completed,
        };
        assert_eq!(tally.record(&departed, t0), Some(Departure::Completed));
    }

    #[test]
    fn tally_counts_quota_answers_and_shows_the_wait_while_it_lasts() {
        let mut tally = Tally::default();
        let t0 = Instant::now();
        tally.record(&call(OutcomeClass::QuotaExhausted), t0);
        assert_eq!((tally.quota_exhausted, tally.rate_limited), (1, 0));
        assert_eq!(waiting_text(&tally, t0), None);
        let experiment = ExperimentId(uuid::Uuid::nil());
        let waiting = |until| EngineEvent::Waiting {
            experiment,
            waiting: Some(runnel_core::Waiting {
                key: RateKey::new("sim", "m"),
                until,
                message: None,
            }),
        };
        tally.record(&waiting(Some(t0 + Duration::from_secs(125))), t0);
        assert_eq!(
            waiting_text(&tally, t0).as_deref(),
            Some(" · waiting on the quota of sim|m (back in 2m 5s)")
        );
        tally.record(&waiting(None), t0);
        assert_eq!(
            waiting_text(&tally, t0).as_deref(),
            Some(" · waiting on the quota of sim|m")
        );
        let over = EngineEvent::Waiting {
            experiment,
            waiting: None,
        };
        tally.record(&over, t0);
        assert_eq!(waiting_text(&tally, t0), None);
    }
}
