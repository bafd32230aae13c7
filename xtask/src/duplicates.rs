//! Duplicate provider calls: the calls that cost money twice (issue 12
//! item 8). The database cannot hold a second row for one example ×
//! repetition or one run × evaluator (the schema forbids it), so its
//! duplicate count cannot fail; what can is the provider side:
//! successful provider calls − results recorded (runs + annotations). Each
//! fault may cost at most the calls it caught in flight (their replies may
//! arrive after the result can no longer be written, and the call is made
//! again), so the count is bounded by the calls in flight at the faults, and
//! by 0 where nothing failed.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use serde_json::{Value, json};

/// What one experiment (or test) cost at the provider, and what it kept.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct Duplicates {
    /// Successful replies of the simulator(s) (`/stats` `classes.ok`).
    pub(crate) successful_calls: u64,
    /// Runs and annotations recorded (succeeded or failed), from the
    /// database or the API.
    pub(crate) results: u64,
    /// Extra rows the database holds for one example × repetition or one
    /// run × evaluator.
    pub(crate) database: u64,
    /// The simulator's own count of successful replies to a request body it
    /// had already answered successfully (`/stats` `repeated_successes`),
    /// when it reports it.
    pub(crate) repeated_successes: Option<u64>,
    /// Whether every result's request body is distinct (one repetition,
    /// distinct inputs, no evaluator), so `repeated_successes` counts the
    /// same calls as `provider()` and is checked against the bound too.
    pub(crate) unique_bodies: bool,
    /// Calls in flight at the faults, summed over the faults: the most
    /// duplicates the faults may cost (0 without a fault).
    pub(crate) bound: u64,
}

impl Duplicates {
    /// Duplicate provider calls: successful calls − results (negative when
    /// some results came without a successful call, e.g. failed runs).
    pub(crate) fn provider(&self) -> i64 {
        self.successful_calls as i64 - self.results as i64
    }

    /// The largest duplicate count that the checks see: the provider-side
    /// count, or the simulator's own where it counts the same calls.
    pub(crate) fn worst(&self) -> i64 {
        match self.repeated_successes {
            Some(repeated) if self.unique_bodies => self.provider().max(repeated as i64),
            _ => self.provider(),
        }
    }

    /// The provider-side bounds that do not hold, one line each, prefixed
    /// by `what` (the database count has its own check where it is read).
    pub(crate) fn violations(&self, what: &str) -> Vec<String> {
        let mut out = Vec::new();
        if self.provider() > self.bound as i64 {
            out.push(format!(
                "{what}: {} duplicate provider calls ({} successful calls − {} results) exceed \
                 the {} calls in flight at the faults",
                self.provider(),
                self.successful_calls,
                self.results,
                self.bound
            ));
        }
        if let Some(repeated) = self.repeated_successes
            && self.unique_bodies
            && repeated > self.bound
        {
            out.push(format!(
                "{what}: the simulator answered {repeated} repeated request bodies successfully, \
                 more than the {} calls in flight at the faults",
                self.bound
            ));
        }
        out
    }

    /// The counts, for a report.
    pub(crate) fn json(&self) -> Value {
        json!({
            "successful_calls": self.successful_calls,
            "results": self.results,
            "provider_duplicates": self.provider(),
            "repeated_successes": self.repeated_successes,
            "database_duplicates": self.database,
            "bound_in_flight_at_faults": self.bound,
        })
    }

    /// Adds `other` (another experiment or simulator of the same test).
    pub(crate) fn add(&mut self, other: &Duplicates) {
        self.successful_calls += other.successful_calls;
        self.results += other.results;
        self.database += other.database;
        self.repeated_successes = match (self.repeated_successes, other.repeated_successes) {
            (Some(a), Some(b)) => Some(a + b),
            _ => None,
        };
        self.unique_bodies &= other.unique_bodies;
        self.bound += other.bound;
    }
}

/// The calls in flight at the simulator at each fault, added up by the
/// tasks that inject faults (kills, freezes, stops) concurrently: the bound
/// of [`Duplicates`].
#[derive(Clone, Debug)]
pub(crate) struct FaultTally {
    http: reqwest::Client,
    stats_url: String,
    in_flight: Arc<AtomicU64>,
    faults: Arc<AtomicU64>,
    unread: Arc<AtomicU64>,
}

impl FaultTally {
    /// A tally of the simulator at `sim_url`.
    pub(crate) fn new(sim_url: &str) -> Self {
        Self {
            http: reqwest::Client::new(),
            stats_url: format!("{sim_url}/stats"),
            in_flight: Arc::default(),
            faults: Arc::default(),
            unread: Arc::default(),
        }
    }

    /// The simulator's calls in flight now.
    pub(crate) async fn read(&self) -> Option<u64> {
        let r = self.http.get(&self.stats_url).send().await.ok()?;
        let v: Value = r.json().await.ok()?;
        v["concurrency"]["current"].as_u64()
    }

    /// Adds a fault that caught `in_flight` calls (`None`: the simulator
    /// could not be read, so the bound is unknown).
    pub(crate) fn add(&self, in_flight: Option<u64>) {
        self.faults.fetch_add(1, Ordering::Relaxed);
        match in_flight {
            Some(n) => {
                self.in_flight.fetch_add(n, Ordering::Relaxed);
            }
            None => {
                self.unread.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Reads the calls in flight now and adds them as one fault.
    pub(crate) async fn fault(&self) {
        self.add(self.read().await);
    }

    /// Sends a stop (`stop` yields its HTTP status) and, when it is answered
    /// 200, adds it as a fault that caught the larger of the calls in flight
    /// just before it was sent and just after its answer.
    pub(crate) async fn stop(
        &self,
        stop: impl std::future::Future<Output = Option<u16>>,
    ) -> Option<u16> {
        let before = self.read().await;
        let code = stop.await;
        if code == Some(200) {
            let after = self.read().await;
            self.add(before.zip(after).map(|(a, b)| a.max(b)));
        }
        code
    }

    /// The calls in flight summed over the faults; `None` when a reading
    /// failed.
    pub(crate) fn bound(&self) -> Option<u64> {
        (self.unread.load(Ordering::Relaxed) == 0).then(|| self.in_flight.load(Ordering::Relaxed))
    }

    /// Faults counted.
    pub(crate) fn faults(&self) -> u64 {
        self.faults.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counted(successful_calls: u64, results: u64, bound: u64) -> Duplicates {
        Duplicates {
            successful_calls,
            results,
            bound,
            unique_bodies: true,
            ..Duplicates::default()
        }
    }

    #[test]
    fn provider_duplicates_beyond_the_calls_in_flight_fail() {
        assert!(counted(1000, 1000, 0).violations("x").is_empty());
        assert!(counted(1004, 1000, 5).violations("x").is_empty());
        let over = counted(1006, 1000, 5).violations("S7");
        assert_eq!(over.len(), 1, "{over:?}");
        assert!(
            over[0].starts_with("S7: 6 duplicate provider calls"),
            "{over:?}"
        );
        // Fewer calls than results (failed runs without a reply) is not a
        // duplicate.
        assert_eq!(counted(990, 1000, 0).provider(), -10);
        assert!(counted(990, 1000, 0).violations("x").is_empty());
    }

    #[test]
    fn the_simulator_count_is_checked_where_bodies_are_unique() {
        let mut d = counted(1000, 1000, 2);
        d.repeated_successes = Some(3);
        assert_eq!(d.worst(), 3);
        assert_eq!(d.violations("x").len(), 1);
        // Repeated bodies are legitimate with repetitions: only reported.
        d.unique_bodies = false;
        assert_eq!(d.worst(), 0);
        assert!(d.violations("x").is_empty());
    }

    #[test]
    fn adding_sums_and_keeps_the_simulator_count_only_if_all_have_it() {
        let mut a = counted(10, 9, 1);
        a.repeated_successes = Some(1);
        let mut b = counted(5, 5, 0);
        b.repeated_successes = Some(0);
        a.add(&b);
        assert_eq!((a.successful_calls, a.results, a.bound), (15, 14, 1));
        assert_eq!(a.repeated_successes, Some(1));
        a.add(&counted(1, 1, 0));
        assert_eq!(a.repeated_successes, None);
    }

    #[test]
    fn a_tally_adds_the_calls_in_flight_and_knows_when_a_reading_failed() {
        let tally = FaultTally::new("http://127.0.0.1:9");
        let other = tally.clone();
        tally.add(Some(3));
        other.add(Some(4));
        assert_eq!((tally.bound(), tally.faults()), (Some(7), 2));
        other.add(None);
        assert_eq!((tally.bound(), tally.faults()), (None, 3));
    }
}
