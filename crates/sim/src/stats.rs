//! What `GET /stats` reports: every provider request counted once, by the
//! class of its answer, per key, and per second since the start (or since
//! the last reset); and how many requests are in flight.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The class of a provider request's answer; each request has exactly one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Class {
    /// 2xx with a well-formed body.
    Ok,
    /// 4xx other than 429 (bad body, missing key, too large).
    ClientError,
    /// 429 of a rate limit.
    RateLimited,
    /// 429 of quota exhaustion (`limits.quota_after`); counted as
    /// `rate_limited` too.
    QuotaExhausted,
    /// 5xx, including 503 during an outage in `503` mode.
    ServerError,
    /// 529.
    Overloaded,
    /// Connection reset by a fault.
    Reset,
    /// 2xx with a malformed body or event.
    Malformed,
    /// Connection closed at once during an outage in `refuse` mode.
    Refused,
}

/// Requests per class of answer.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClassCounts {
    /// 2xx with a well-formed body.
    pub ok: u64,
    /// 4xx other than 429.
    pub client_error: u64,
    /// 429.
    pub rate_limited: u64,
    /// 5xx (faults, and 503 outages).
    pub server_error: u64,
    /// 529 overloaded.
    pub overloaded: u64,
    /// Connections reset by a fault.
    pub reset: u64,
    /// 2xx with a malformed body or stream event.
    pub malformed: u64,
    /// Requests whose connection was closed at once during a `refuse` outage.
    pub refused: u64,
}

impl ClassCounts {
    fn add(&mut self, class: Class) {
        let slot = match class {
            Class::Ok => &mut self.ok,
            Class::ClientError => &mut self.client_error,
            Class::RateLimited | Class::QuotaExhausted => &mut self.rate_limited,
            Class::ServerError => &mut self.server_error,
            Class::Overloaded => &mut self.overloaded,
            Class::Reset => &mut self.reset,
            Class::Malformed => &mut self.malformed,
            Class::Refused => &mut self.refused,
        };
        *slot += 1;
    }

    /// The sum over all classes (equals the request count).
    pub fn total(&self) -> u64 {
        self.ok
            + self.client_error
            + self.rate_limited
            + self.server_error
            + self.overloaded
            + self.reset
            + self.malformed
            + self.refused
    }
}

/// Requests in flight (received, response not finished).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Concurrency {
    /// Now.
    pub current: u64,
    /// The most at once since the start or the last reset.
    pub peak: u64,
}

/// Tokens of successful replies.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenCounts {
    /// Prompt tokens.
    pub prompt: u64,
    /// Completion tokens.
    pub completion: u64,
}

/// Counts for one rate-limit key (the API key, or `key/model` with
/// `limits.per_model`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyStats {
    /// All requests with this key.
    pub requests: u64,
    /// Of which answered 2xx with a well-formed body.
    pub ok: u64,
    /// Of which answered 429 (quota exhaustion included).
    pub rate_limited: u64,
    /// Of which answered 429 for quota exhaustion.
    pub quota_exhausted: u64,
    /// Prompt tokens of its successful replies.
    pub prompt_tokens: u64,
    /// Completion tokens of its successful replies.
    pub completion_tokens: u64,
}

/// One second of the histogram.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecondStats {
    /// Whole seconds since the start or the last reset.
    pub second: u64,
    /// Requests that arrived in this second.
    pub requests: u64,
    /// Of which answered 2xx with a well-formed body.
    pub ok: u64,
    /// Of which answered 429.
    pub rate_limited: u64,
}

/// The body of `GET /stats`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatsSnapshot {
    /// Time covered, since the start or the last reset, in milliseconds.
    pub elapsed_ms: u64,
    /// Provider requests (chat completions and messages) received.
    pub requests: u64,
    /// The same requests by class of answer (they add up to `requests`).
    pub classes: ClassCounts,
    /// Requests in flight.
    pub concurrency: Concurrency,
    /// Tokens of successful replies.
    pub tokens: TokenCounts,
    /// Of the 429s, those for quota exhaustion (`limits.quota_after`).
    pub quota_exhausted: u64,
    /// Successful replies to a request whose route, model and prompt had
    /// already been answered successfully since the start or the last
    /// reset: paid calls a client repeated. Identical prompts sent on
    /// purpose count too.
    pub repeated_successes: u64,
    /// Requests sent by the hidden client of `limits.hidden_share` (not in
    /// `requests`).
    pub hidden: u64,
    /// Counts per rate-limit key, sorted by key.
    pub keys: BTreeMap<String, KeyStats>,
    /// Requests per second, oldest first; seconds without requests inside
    /// the covered span are present with zeros.
    pub per_second: Vec<SecondStats>,
}

#[derive(Debug, Default)]
struct Counters {
    since: Duration,
    requests: u64,
    classes: ClassCounts,
    tokens: TokenCounts,
    quota_exhausted: u64,
    /// Digests of the requests answered successfully.
    answered: HashSet<u64>,
    repeated_successes: u64,
    keys: HashMap<String, KeyStats>,
    seconds: VecDeque<SecondStats>,
}

/// The live counters.
#[derive(Debug, Default)]
pub(crate) struct Stats {
    counters: Mutex<Counters>,
    current: AtomicU64,
    peak: AtomicU64,
}

/// A request in flight; dropping it ends it.
#[derive(Debug)]
pub(crate) struct InFlight(Arc<Stats>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.current.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Stats {
    fn counters(&self) -> MutexGuard<'_, Counters> {
        // Counters stay consistent even if a holder panicked mid-update
        // (each update is a handful of additions), so poisoning is ignored.
        self.counters.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Marks a request in flight until the returned guard is dropped.
    pub(crate) fn enter(self: &Arc<Self>) -> InFlight {
        let now = self.current.fetch_add(1, Ordering::SeqCst) + 1;
        self.peak.fetch_max(now, Ordering::SeqCst);
        InFlight(Arc::clone(self))
    }

    /// Counts one request that arrived at `now`, answered as `class`, with
    /// `(prompt, completion)` tokens when it succeeded. The histogram keeps
    /// the latest `keep_seconds`.
    pub(crate) fn record(
        &self,
        now: Duration,
        key: &str,
        class: Class,
        usage: Option<(u64, u64)>,
        keep_seconds: usize,
    ) {
        let mut guard = self.counters();
        let c = &mut *guard;
        c.requests += 1;
        c.classes.add(class);
        let ok = u64::from(class == Class::Ok);
        let limited = u64::from(matches!(class, Class::RateLimited | Class::QuotaExhausted));
        let quota = u64::from(class == Class::QuotaExhausted);
        c.quota_exhausted += quota;
        let (prompt, completion) = usage.unwrap_or((0, 0));
        c.tokens.prompt += prompt;
        c.tokens.completion += completion;
        // Look up before inserting, so a known key costs no allocation.
        if !c.keys.contains_key(key) {
            c.keys.insert(key.to_owned(), KeyStats::default());
        }
        if let Some(entry) = c.keys.get_mut(key) {
            entry.requests += 1;
            entry.ok += ok;
            entry.rate_limited += limited;
            entry.quota_exhausted += quota;
            entry.prompt_tokens += prompt;
            entry.completion_tokens += completion;
        }
        let second = now.saturating_sub(c.since).as_secs();
        if let Some(slot) = second_slot(&mut c.seconds, second, keep_seconds.max(1)) {
            slot.requests += 1;
            slot.ok += ok;
            slot.rate_limited += limited;
        }
    }

    /// Notes a successful reply to the request of `digest`; a digest seen
    /// before counts as a repeated success.
    pub(crate) fn success(&self, digest: u64) {
        let mut c = self.counters();
        if !c.answered.insert(digest) {
            c.repeated_successes += 1;
        }
    }

    /// The counters as of `now` (`hidden` is the limiter's to fill in).
    pub(crate) fn snapshot(&self, now: Duration) -> StatsSnapshot {
        let c = self.counters();
        StatsSnapshot {
            elapsed_ms: u64::try_from(now.saturating_sub(c.since).as_millis()).unwrap_or(u64::MAX),
            requests: c.requests,
            classes: c.classes.clone(),
            concurrency: Concurrency {
                current: self.current.load(Ordering::SeqCst),
                peak: self.peak.load(Ordering::SeqCst),
            },
            tokens: c.tokens.clone(),
            quota_exhausted: c.quota_exhausted,
            repeated_successes: c.repeated_successes,
            hidden: 0,
            keys: c.keys.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            per_second: c.seconds.iter().cloned().collect(),
        }
    }

    /// Zeroes every counter; time is counted from `now`. Requests in
    /// flight stay in flight (and set the new peak).
    pub(crate) fn reset(&self, now: Duration) {
        let mut c = self.counters();
        *c = Counters {
            since: now,
            ..Counters::default()
        };
        self.peak
            .store(self.current.load(Ordering::SeqCst), Ordering::SeqCst);
    }
}

/// The histogram slot of `second`, appending (zero-filled) seconds as
/// needed and dropping the oldest beyond `keep`; `None` for a second
/// already dropped.
fn second_slot(
    seconds: &mut VecDeque<SecondStats>,
    second: u64,
    keep: usize,
) -> Option<&mut SecondStats> {
    let first_new = match seconds.back() {
        Some(last) if last.second >= second => {
            let front = seconds.front().map_or(0, |f| f.second);
            let index = usize::try_from(second.checked_sub(front)?).ok()?;
            return seconds.get_mut(index);
        }
        Some(last) => last.second + 1,
        None => second,
    };
    // Never create more than `keep` new slots, however long the pause.
    let first_new = first_new.max(second.saturating_sub(keep as u64 - 1));
    if seconds
        .back()
        .is_some_and(|last| last.second + 1 < first_new)
    {
        seconds.clear();
    }
    for s in first_new..=second {
        seconds.push_back(SecondStats {
            second: s,
            ..SecondStats::default()
        });
    }
    while seconds.len() > keep {
        seconds.pop_front();
    }
    seconds.back_mut()
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn counts_by_class_key_and_second() {
        let stats = Stats::default();
        stats.record(Duration::ZERO, "a", Class::Ok, Some((3, 5)), 10);
        stats.record(S / 2, "a", Class::RateLimited, None, 10);
        stats.record(3 * S, "b", Class::Ok, Some((1, 1)), 10);
        let snap = stats.snapshot(4 * S);
        assert_eq!(snap.requests, 3);
        assert_eq!(snap.classes.ok, 2);
        assert_eq!(snap.classes.rate_limited, 1);
        assert_eq!(snap.tokens.prompt, 4);
        assert_eq!(snap.tokens.completion, 6);
        assert_eq!(snap.keys["a"].requests, 2);
        assert_eq!(snap.keys["a"].rate_limited, 1);
        assert_eq!(snap.keys["b"].completion_tokens, 1);
        let seconds: Vec<(u64, u64, u64, u64)> = snap
            .per_second
            .iter()
            .map(|s| (s.second, s.requests, s.ok, s.rate_limited))
            .collect();
        assert_eq!(
            seconds,
            vec![(0, 2, 1, 1), (1, 0, 0, 0), (2, 0, 0, 0), (3, 1, 1, 0)]
        );
        assert_eq!(snap.elapsed_ms, 4000);

        stats.reset(10 * S);
        let snap = stats.snapshot(11 * S);
        assert_eq!(snap.requests, 0);
        assert!(snap.keys.is_empty() && snap.per_second.is_empty());
        assert_eq!(snap.elapsed_ms, 1000);
        stats.record(12 * S, "a", Class::Ok, None, 10);
        assert_eq!(stats.snapshot(12 * S).per_second[0].second, 2);
    }

    #[test]
    fn repeated_successes_count_digests_seen_before_until_reset() {
        let stats = Stats::default();
        for digest in [1, 2, 1, 1, 3] {
            stats.success(digest);
        }
        assert_eq!(stats.snapshot(Duration::ZERO).repeated_successes, 2);
        stats.reset(Duration::ZERO);
        stats.success(1);
        assert_eq!(stats.snapshot(Duration::ZERO).repeated_successes, 0);
    }

    #[test]
    fn concurrency_tracks_guards_and_peak() {
        let stats = Arc::new(Stats::default());
        let a = stats.enter();
        let b = stats.enter();
        drop(a);
        let snap = stats.snapshot(Duration::ZERO);
        assert_eq!((snap.concurrency.current, snap.concurrency.peak), (1, 2));
        stats.reset(Duration::ZERO);
        let snap = stats.snapshot(Duration::ZERO);
        assert_eq!((snap.concurrency.current, snap.concurrency.peak), (1, 1));
        drop(b);
        assert_eq!(stats.snapshot(Duration::ZERO).concurrency.current, 0);
    }

    #[test]
    fn a_long_pause_keeps_only_the_last_seconds() {
        let stats = Stats::default();
        stats.record(Duration::ZERO, "k", Class::Ok, None, 5);
        stats.record(1_000_000 * S, "k", Class::Ok, None, 5);
        let snap = stats.snapshot(1_000_000 * S);
        let seconds: Vec<u64> = snap.per_second.iter().map(|s| s.second).collect();
        assert_eq!(seconds, vec![999_996, 999_997, 999_998, 999_999, 1_000_000]);
        // A late arrival for a second already dropped is still counted overall.
        stats.record(S, "k", Class::Ok, None, 5);
        assert_eq!(stats.snapshot(S).requests, 3);
    }

    fn class() -> impl Strategy<Value = Class> {
        prop_oneof![
            Just(Class::Ok),
            Just(Class::ClientError),
            Just(Class::RateLimited),
            Just(Class::QuotaExhausted),
            Just(Class::ServerError),
            Just(Class::Overloaded),
            Just(Class::Reset),
            Just(Class::Malformed),
            Just(Class::Refused),
        ]
    }

    proptest! {
        /// Whatever the order of arrivals, every request is counted once in
        /// the total, once in its class, once under its key and (while the
        /// histogram is long enough) once in its second, and the seconds are
        /// consecutive.
        #[test]
        fn every_request_is_counted_once(
            events in prop::collection::vec((0u64..20_000, class(), 0usize..3), 0..300),
        ) {
            let stats = Stats::default();
            for (ms, class, key) in &events {
                stats.record(Duration::from_millis(*ms), &format!("k{key}"), *class, None, 100);
            }
            let snap = stats.snapshot(Duration::from_secs(30));
            let n = events.len() as u64;
            prop_assert_eq!(snap.requests, n);
            prop_assert_eq!(snap.classes.total(), n);
            prop_assert_eq!(snap.keys.values().map(|k| k.requests).sum::<u64>(), n);
            let first_second = events.first().map_or(0, |(ms, _, _)| ms / 1000);
            let counted = events.iter().filter(|(ms, _, _)| ms / 1000 >= first_second).count() as u64;
            prop_assert_eq!(snap.per_second.iter().map(|s| s.requests).sum::<u64>(), counted);
            for pair in snap.per_second.windows(2) {
                prop_assert_eq!(pair[0].second + 1, pair[1].second);
            }
            let quota = events.iter().filter(|(_, c, _)| *c == Class::QuotaExhausted).count() as u64;
            let limited = events.iter().filter(|(_, c, _)| *c == Class::RateLimited).count() as u64;
            prop_assert_eq!(snap.classes.rate_limited, limited + quota);
            prop_assert_eq!(snap.quota_exhausted, quota);
        }
    }
}
