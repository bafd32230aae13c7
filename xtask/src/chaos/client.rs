//! A client of several runnel replicas that records every request it makes:
//! which replica, when it was sent and answered, and what came back (a
//! status with its `Retry-After`, or a connection error). The replica tests
//! hold these records against the times each replica was down.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

/// What a request got.
#[derive(Clone, Debug)]
pub(crate) enum Outcome {
    /// An HTTP answer.
    Status {
        /// The status code.
        code: u16,
        /// Its `Retry-After` header, when present.
        retry_after: Option<String>,
    },
    /// No answer: refused, reset, timed out.
    Failed(String),
}

/// One request made.
#[derive(Clone, Debug)]
pub(crate) struct Record {
    /// Index of the replica it went to.
    pub(crate) target: usize,
    /// `stop`, `resume`, `attach`, `get`, …
    pub(crate) what: &'static str,
    /// When it was sent.
    pub(crate) sent: Instant,
    /// When its answer (or failure) came.
    pub(crate) done: Instant,
    /// What it got.
    pub(crate) outcome: Outcome,
}

impl Record {
    /// The status code, when there was an answer.
    pub(crate) fn code(&self) -> Option<u16> {
        match &self.outcome {
            Outcome::Status { code, .. } => Some(*code),
            Outcome::Failed(_) => None,
        }
    }
}

/// The recording client.
#[derive(Clone)]
pub(crate) struct Client {
    http: reqwest::Client,
    /// Base URLs of the replicas, by index.
    pub(crate) bases: Arc<Vec<String>>,
    records: Arc<Mutex<Vec<Record>>>,
}

impl Client {
    /// A client of the replicas at `bases`.
    pub(crate) fn new(bases: Vec<String>) -> Self {
        Self {
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .pool_max_idle_per_host(64)
                .build()
                .unwrap_or_default(),
            bases: Arc::new(bases),
            records: Arc::new(Mutex::new(Vec::new())),
        }
    }

    /// Sends `method path` (with a JSON body) to replica `target`, records
    /// it, and returns its status (`None`: no answer).
    pub(crate) async fn send(
        &self,
        target: usize,
        what: &'static str,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
    ) -> Option<u16> {
        let base = &self.bases[target];
        let mut request = self.http.request(method, format!("{base}{path}"));
        if let Some(body) = body {
            request = request.json(body);
        }
        let sent = Instant::now();
        let result = async {
            let response = request.send().await?;
            let code = response.status().as_u16();
            let retry_after = response
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            // Read the whole body: the request is done only then.
            response.bytes().await?;
            Ok::<_, reqwest::Error>((code, retry_after))
        }
        .await;
        let done = Instant::now();
        let outcome = match result {
            Ok((code, retry_after)) => Outcome::Status { code, retry_after },
            Err(e) => Outcome::Failed(format!("{e:#}")),
        };
        let code = match &outcome {
            Outcome::Status { code, .. } => Some(*code),
            Outcome::Failed(_) => None,
        };
        if let Ok(mut records) = self.records.lock() {
            records.push(Record {
                target,
                what,
                sent,
                done,
                outcome,
            });
        }
        code
    }

    /// Every request recorded so far.
    pub(crate) fn records(&self) -> Vec<Record> {
        self.records.lock().map(|r| r.clone()).unwrap_or_default()
    }
}

/// When each replica was down: from just before its kill to the moment it
/// answered `/readyz` again.
#[derive(Clone, Debug, Default)]
pub(crate) struct Downtime {
    intervals: Vec<Vec<(Instant, Option<Instant>)>>,
}

impl Downtime {
    /// For `n` replicas, all up.
    pub(crate) fn new(n: usize) -> Self {
        Self {
            intervals: vec![Vec::new(); n],
        }
    }

    /// Replica `i` goes down now.
    pub(crate) fn down(&mut self, i: usize, at: Instant) {
        self.intervals[i].push((at, None));
    }

    /// Replica `i` is up again now.
    pub(crate) fn up(&mut self, i: usize, at: Instant) {
        if let Some(last) = self.intervals[i].last_mut()
            && last.1.is_none()
        {
            last.1 = Some(at);
        }
    }

    /// Whether replica `i` was down at any moment of `from..=to`.
    pub(crate) fn overlaps(&self, i: usize, from: Instant, to: Instant) -> bool {
        self.intervals[i]
            .iter()
            .any(|(down, up)| *down <= to && up.is_none_or(|u| u >= from))
    }

    /// Number of down intervals.
    pub(crate) fn count(&self) -> usize {
        self.intervals.iter().map(Vec::len).sum()
    }
}

/// Requests that failed (5xx or no answer) while their replica was up.
pub(crate) fn unexcused_failures(records: &[Record], downtime: &Downtime) -> Vec<String> {
    records
        .iter()
        .filter(|r| match &r.outcome {
            Outcome::Failed(_) => true,
            Outcome::Status { code, .. } => *code >= 500,
        })
        .filter(|r| !downtime.overlaps(r.target, r.sent, r.done))
        .map(|r| {
            let got = match &r.outcome {
                Outcome::Status { code, .. } => format!("status {code}"),
                Outcome::Failed(why) => format!("no answer ({why})"),
            };
            format!("{} to replica {} got {got}", r.what, r.target)
        })
        .collect()
}

/// Requests counted by kind and outcome (`stop 200`, `resume failed`, …).
pub(crate) fn by_outcome(records: &[Record]) -> BTreeMap<String, u64> {
    let mut counts = BTreeMap::new();
    for r in records {
        let key = match r.code() {
            Some(code) => format!("{} {code}", r.what),
            None => format!("{} failed", r.what),
        };
        *counts.entry(key).or_default() += 1;
    }
    counts
}

/// The value of a metric in Prometheus text (summed over its label sets),
/// whatever suffix the exporter added (`_total`); `None` when absent.
pub(crate) fn metric_value(text: &str, name: &str) -> Option<f64> {
    let mut found = None;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((key, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let key = key.split('{').next().unwrap_or(key);
        let bare = key.strip_suffix("_total").unwrap_or(key);
        if bare == name
            && let Ok(v) = value.parse::<f64>()
        {
            *found.get_or_insert(0.0) += v;
        }
    }
    found
}

/// Records as violations the failures of a live replica and the unexpected
/// answers, showing the first few of each.
pub(crate) fn check_answers(
    report: &mut super::Report,
    unexcused: &[String],
    unexpected: &[String],
) {
    report.check(unexcused.is_empty(), || {
        format!(
            "{} 5xx/refused answers from a replica that was up: {:?}",
            unexcused.len(),
            unexcused.iter().take(5).collect::<Vec<_>>()
        )
    });
    report.check(unexpected.is_empty(), || {
        format!(
            "{} unexpected answers: {:?}",
            unexpected.len(),
            unexpected.iter().take(5).collect::<Vec<_>>()
        )
    });
}
