//! The end-of-run summary of `runnel demo` and `runnel run`: counts, label
//! distributions and latencies read back from the database (exact even when
//! live events were dropped), plus the provider calls the engine reported.
//! Printed as a small table, or as JSON (`runnel run --json`).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use futures::StreamExt;
use runnel_core::{ExperimentId, ExperimentStatus};
use runnel_store::{Db, StoreError};
use serde::Serialize;

use crate::follow::Tally;

/// How many failure messages the summary quotes. Not a setting: it only
/// shapes the terminal summary; every failure is in the results and the log.
const ERRORS_SHOWN: usize = 5;

/// Median and 95th percentile of a set of latencies, in milliseconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Percentiles {
    /// How many values.
    pub count: u64,
    /// 50th percentile (nearest rank).
    pub p50: u64,
    /// 95th percentile (nearest rank).
    pub p95: u64,
}

impl Percentiles {
    /// Nearest-rank percentiles of `values`; `None` when there are none.
    pub fn of(mut values: Vec<u64>) -> Option<Self> {
        if values.is_empty() {
            return None;
        }
        values.sort_unstable();
        let rank = |p: f64| {
            // Nearest rank: the smallest value with at least p % at or below it.
            let n = values.len();
            let index = ((p / 100.0) * n as f64).ceil() as usize;
            values[index.clamp(1, n) - 1]
        };
        Some(Self {
            count: values.len() as u64,
            p50: rank(50.0),
            p95: rank(95.0),
        })
    }
}

/// Run counts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct RunCounts {
    /// Examples × repetitions.
    pub expected: u64,
    /// Succeeded.
    pub succeeded: u64,
    /// Failed permanently (after retries).
    pub failed: u64,
}

/// Annotation counts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct AnnotationCounts {
    /// Successful runs × evaluators.
    pub expected: u64,
    /// Succeeded.
    pub done: u64,
    /// Failed permanently.
    pub failed: u64,
}

/// Numeric scores of one evaluator.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Scores {
    /// How many.
    pub count: u64,
    /// Their mean.
    pub mean: f64,
    /// The lowest.
    pub min: f64,
    /// The highest.
    pub max: f64,
}

/// Provider calls, as the engine reported them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Calls {
    /// Every call made (all attempts).
    pub total: u64,
    /// One call per result: runs expected plus annotations expected.
    pub ideal: u64,
    /// Answered "rate limited" and retried later.
    pub rate_limited: u64,
    /// Answered "quota used up" and waited for.
    pub quota_exhausted: u64,
    /// Failed transiently (5xx, resets, timeouts) and retried or given up.
    pub transient: u64,
    /// Failed permanently.
    pub permanent: u64,
}

/// Latencies of successful calls, from the stored results.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Latency {
    /// Task calls (the last call of each successful run).
    pub task: Option<Percentiles>,
    /// Evaluator calls (the last call of each successful annotation).
    pub eval: Option<Percentiles>,
}

/// One distinct failure message, how often it was stored, and where first.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct FailureSample {
    /// The stored error.
    pub error: String,
    /// How many runs or annotations failed with exactly this message.
    pub count: u64,
    /// The first example it was seen on.
    pub example_id: String,
    /// Its repetition.
    pub repetition: u32,
    /// The evaluator, for a failed annotation.
    pub evaluator: Option<String>,
}

/// Failures grouped by message, in the order first seen.
#[derive(Debug, Default)]
struct Failures(Vec<FailureSample>);

impl Failures {
    fn add(&mut self, error: &str, example_id: String, repetition: u32, evaluator: Option<&str>) {
        if let Some(known) = self
            .0
            .iter_mut()
            .find(|f| f.error == error && f.evaluator.as_deref() == evaluator)
        {
            known.count += 1;
            return;
        }
        self.0.push(FailureSample {
            error: error.to_owned(),
            count: 1,
            example_id,
            repetition,
            evaluator: evaluator.map(str::to_owned),
        });
    }

    /// The most frequent messages, most frequent first.
    fn top(mut self) -> Vec<FailureSample> {
        // A stable sort keeps first-seen order among equals.
        self.0.sort_by_key(|f| std::cmp::Reverse(f.count));
        self.0.truncate(ERRORS_SHOWN);
        self.0
    }
}

/// Everything the summary says.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Summary {
    /// The experiment.
    pub experiment_id: String,
    /// Its name.
    pub name: String,
    /// Its status at the end (`COMPLETED`, `ERROR`, `STOPPED`, `RUNNING`).
    pub status: String,
    /// Why it errored.
    pub last_error: Option<String>,
    /// Wall time from start to the end of following, in seconds.
    pub duration_s: f64,
    /// Runs.
    pub runs: RunCounts,
    /// Annotations.
    pub annotations: AnnotationCounts,
    /// Label counts per evaluator (label evaluators).
    pub labels: BTreeMap<String, BTreeMap<String, u64>>,
    /// Score statistics per evaluator (score evaluators).
    pub scores: BTreeMap<String, Scores>,
    /// Latencies of successful calls.
    pub latency_ms: Latency,
    /// Provider calls.
    pub calls: Calls,
    /// Live events were dropped (the call counts may be low; everything
    /// else comes from the database).
    pub events_lagged: bool,
    /// The most frequent failure messages (at most five).
    pub failures: Vec<FailureSample>,
    /// Completed with every run and annotation successful.
    pub ok: bool,
}

/// Reads the summary of experiment `id` from the database.
pub async fn collect(
    db: &Db,
    id: ExperimentId,
    tally: &Tally,
    elapsed: Duration,
) -> Result<Summary, StoreError> {
    let view = db.experiment(id).await?;
    let mut labels: BTreeMap<String, BTreeMap<String, u64>> = BTreeMap::new();
    let mut score_values: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    let mut task_latency = Vec::new();
    let mut eval_latency = Vec::new();
    let mut failures = Failures::default();
    let mut runs = db.runs_stream(id);
    while let Some(run) = runs.next().await {
        let run = run?;
        match &run.error {
            Some(error) if run.output.is_none() => {
                failures.add(error, run.example_id.to_string(), run.repetition, None);
            }
            _ => task_latency.push(run.latency_ms),
        }
        for a in &run.annotations {
            if let Some(error) = &a.error {
                failures.add(
                    error,
                    run.example_id.to_string(),
                    run.repetition,
                    Some(&a.evaluator),
                );
                continue;
            }
            eval_latency.push(a.latency_ms);
            match (&a.label, a.score) {
                (Some(label), _) => {
                    *labels
                        .entry(a.evaluator.clone())
                        .or_default()
                        .entry(label.clone())
                        .or_default() += 1;
                }
                (None, Some(score)) => score_values
                    .entry(a.evaluator.clone())
                    .or_default()
                    .push(score),
                (None, None) => {}
            }
        }
    }
    // Every entry holds at least the score that created it.
    let scores = score_values
        .into_iter()
        .map(|(name, v)| {
            let count = v.len() as u64;
            let mean = v.iter().sum::<f64>() / v.len() as f64;
            let min = v.iter().copied().fold(f64::INFINITY, f64::min);
            let max = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            (
                name,
                Scores {
                    count,
                    mean,
                    min,
                    max,
                },
            )
        })
        .collect();
    let p = view.progress;
    let ok = view.status == ExperimentStatus::Completed
        && p.runs_failed == 0
        && p.annotations_failed == 0;
    Ok(Summary {
        experiment_id: id.to_string(),
        name: view.name,
        status: view.status.as_str().to_owned(),
        last_error: view.last_error,
        duration_s: elapsed.as_secs_f64(),
        runs: RunCounts {
            expected: p.runs_expected,
            succeeded: p.runs_succeeded,
            failed: p.runs_failed,
        },
        annotations: AnnotationCounts {
            expected: p.annotations_expected,
            done: p.annotations_done,
            failed: p.annotations_failed,
        },
        labels,
        scores,
        latency_ms: Latency {
            task: Percentiles::of(task_latency),
            eval: Percentiles::of(eval_latency),
        },
        calls: Calls {
            total: tally.calls,
            ideal: p.runs_expected + p.annotations_expected,
            rate_limited: tally.rate_limited,
            quota_exhausted: tally.quota_exhausted,
            transient: tally.transient,
            permanent: tally.permanent,
        },
        events_lagged: tally.lagged,
        failures: failures.top(),
        ok,
    })
}

fn percent(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 * 100.0 / whole as f64
    }
}

fn latency_text(p: Option<Percentiles>) -> String {
    match p {
        Some(p) => format!("p50 {} ms, p95 {} ms", p.p50, p.p95),
        None => "-".to_owned(),
    }
}

impl Summary {
    /// The summary as an aligned table, one fact per line.
    pub fn render(&self) -> String {
        render_rows(&self.rows())
    }

    /// The summary's `(name, value)` rows, for callers that add their own.
    pub fn rows(&self) -> Vec<(String, String)> {
        let mut rows: Vec<(String, String)> = Vec::new();
        let mut status = self.status.clone();
        if let Some(e) = &self.last_error {
            let _ = write!(status, " ({e})");
        }
        rows.push((
            "experiment".into(),
            format!("{} {}", self.experiment_id, self.name),
        ));
        rows.push(("status".into(), status));
        rows.push(("duration".into(), format!("{:.1} s", self.duration_s)));
        rows.push((
            "runs".into(),
            format!(
                "{} succeeded, {} failed, of {}",
                self.runs.succeeded, self.runs.failed, self.runs.expected
            ),
        ));
        if self.annotations.expected > 0 || self.annotations.failed > 0 {
            rows.push((
                "annotations".into(),
                format!(
                    "{} done, {} failed, of {}",
                    self.annotations.done, self.annotations.failed, self.annotations.expected
                ),
            ));
        }
        for (evaluator, counts) in &self.labels {
            let total: u64 = counts.values().sum();
            let mut sorted: Vec<(&String, &u64)> = counts.iter().collect();
            sorted.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
            let text: Vec<String> = sorted
                .iter()
                .map(|(label, n)| format!("{label} {n} ({:.1} %)", percent(**n, total)))
                .collect();
            rows.push((format!("labels {evaluator}"), text.join(", ")));
        }
        for (evaluator, s) in &self.scores {
            rows.push((
                format!("scores {evaluator}"),
                format!(
                    "mean {:.2} over {} (min {}, max {})",
                    s.mean, s.count, s.min, s.max
                ),
            ));
        }
        rows.push(("task latency".into(), latency_text(self.latency_ms.task)));
        if self.latency_ms.eval.is_some() {
            rows.push(("judge latency".into(), latency_text(self.latency_ms.eval)));
        }
        let c = self.calls;
        let mut calls = format!(
            "{} provider calls for {} results ({:.2} × ideal)",
            c.total,
            c.ideal,
            if c.ideal == 0 {
                0.0
            } else {
                c.total as f64 / c.ideal as f64
            }
        );
        let _ = write!(
            calls,
            "; {} rate-limited (429) absorbed, {} transient errors, {} permanent",
            c.rate_limited, c.transient, c.permanent
        );
        if c.quota_exhausted > 0 {
            let _ = write!(calls, ", {} quota exhausted", c.quota_exhausted);
        }
        if self.events_lagged {
            calls.push_str(" (some live events were dropped: counts may be low)");
        }
        rows.push(("calls".into(), calls));
        for f in &self.failures {
            let first = match &f.evaluator {
                Some(e) => format!(
                    "evaluator {e}, first on example {} #{}",
                    f.example_id, f.repetition
                ),
                None => format!("first on example {} #{}", f.example_id, f.repetition),
            };
            rows.push((
                "failures".into(),
                format!("{} × {} ({first})", f.count, f.error),
            ));
        }
        rows
    }
}

/// `(name, value)` rows as an aligned table, indented by two spaces.
pub fn render_rows(rows: &[(String, String)]) -> String {
    let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    let mut out = String::new();
    for (key, value) in rows {
        let _ = writeln!(out, "  {key:<width$}  {value}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_use_the_nearest_rank() {
        assert_eq!(Percentiles::of(vec![]), None);
        let one = Percentiles::of(vec![7]).unwrap();
        assert_eq!((one.p50, one.p95), (7, 7));
        let hundred = Percentiles::of((1..=100).rev().collect()).unwrap();
        assert_eq!((hundred.count, hundred.p50, hundred.p95), (100, 50, 95));
        let four = Percentiles::of(vec![40, 10, 30, 20]).unwrap();
        assert_eq!((four.p50, four.p95), (20, 40));
    }

    #[test]
    fn the_table_names_every_figure() {
        let summary = Summary {
            experiment_id: "e1".into(),
            name: "demo".into(),
            status: "COMPLETED".into(),
            last_error: None,
            duration_s: 12.34,
            runs: RunCounts {
                expected: 10,
                succeeded: 9,
                failed: 1,
            },
            annotations: AnnotationCounts {
                expected: 9,
                done: 9,
                failed: 0,
            },
            labels: BTreeMap::from([(
                "correct".to_owned(),
                BTreeMap::from([("CORRECT".to_owned(), 8), ("INCORRECT".to_owned(), 1)]),
            )]),
            scores: BTreeMap::new(),
            latency_ms: Latency {
                task: Percentiles::of(vec![100, 200]),
                eval: None,
            },
            calls: Calls {
                total: 25,
                ideal: 19,
                rate_limited: 5,
                quota_exhausted: 0,
                transient: 1,
                permanent: 1,
            },
            events_lagged: false,
            failures: {
                let mut f = Failures::default();
                f.add("HTTP 500", "y".into(), 0, Some("correct"));
                f.add("HTTP 400", "x".into(), 0, None);
                f.add("HTTP 400", "z".into(), 1, None);
                f.top()
            },
            ok: false,
        };
        let text = summary.render();
        for needle in [
            "COMPLETED",
            "9 succeeded, 1 failed, of 10",
            "CORRECT 8 (88.9 %), INCORRECT 1 (11.1 %)",
            "p50 100 ms, p95 200 ms",
            "25 provider calls for 19 results (1.32 × ideal)",
            "5 rate-limited (429) absorbed",
            "2 × HTTP 400 (first on example x #0)",
            "1 × HTTP 500 (evaluator correct, first on example y #0)",
        ] {
            assert!(text.contains(needle), "{needle:?} missing from\n{text}");
        }
    }
}
