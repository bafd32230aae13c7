//! What the scheduler learns about each rate-limit key from the outcomes of
//! every experiment's calls (keys are shared): the last transient error, and
//! whether the key has answered nothing but 429s since its last success —
//! rate limited or quota exhausted (DESIGN §5–6).
//!
//! A key that only answers 429s for `rate_limit_give_up` makes every
//! experiment that needs it give up with a `last_error` naming the quota;
//! this module holds that rule and the texts the user sees. Pure data with
//! `now` parameters, like the rest of the scheduler.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::ids::RateKey;
use crate::outcome::Outcome;

/// Per-key notes of the scheduler.
#[derive(Debug, Default)]
pub(crate) struct KeyNotes {
    /// The last transient error per key (named in `last_error` when an
    /// experiment gives up on an open breaker).
    pub(crate) last_errors: HashMap<RateKey, String>,
    /// Keys whose calls have answered only 429s since their last success.
    limited: HashMap<RateKey, Limited>,
}

/// A key that answers only 429s.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Limited {
    /// The first 429 after the last success.
    pub(crate) since: Instant,
    /// What the last 429 said.
    pub(crate) last: String,
    /// Set once a 429 said the quota is used up.
    pub(crate) quota: Option<QuotaNote>,
}

/// The last quota exhaustion a key reported.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct QuotaNote {
    /// What the provider said.
    pub(crate) message: String,
    /// When the provider said the quota comes back.
    pub(crate) until: Option<Instant>,
}

impl KeyNotes {
    /// Takes the outcome of a call with `key`.
    pub(crate) fn observe(&mut self, key: &RateKey, outcome: &Outcome, now: Instant) {
        match outcome {
            Outcome::Success(_) => {
                if !self.limited.is_empty() {
                    self.limited.remove(key);
                }
            }
            Outcome::Transient { message } => {
                self.last_errors.insert(key.clone(), message.clone());
            }
            Outcome::RateLimited { message, .. } => {
                self.limited_mut(key, now).last.clone_from(message);
            }
            Outcome::QuotaExhausted {
                message,
                retry_after,
            } => {
                let limited = self.limited_mut(key, now);
                limited.last.clone_from(message);
                limited.quota = Some(QuotaNote {
                    message: message.clone(),
                    until: retry_after.and_then(|d| now.checked_add(d)),
                });
            }
            // A permanent failure is about the request, not the key.
            Outcome::Permanent { .. } => {}
        }
    }

    fn limited_mut(&mut self, key: &RateKey, now: Instant) -> &mut Limited {
        self.limited.entry(key.clone()).or_insert_with(|| Limited {
            since: now,
            last: String::new(),
            quota: None,
        })
    }

    /// The 429-only streak of `key`, if it has one.
    pub(crate) fn limited(&self, key: &RateKey) -> Option<&Limited> {
        if self.limited.is_empty() {
            return None;
        }
        self.limited.get(key)
    }

    /// The last quota exhaustion of `key`, while its streak lasts.
    pub(crate) fn quota(&self, key: &RateKey) -> Option<&QuotaNote> {
        self.limited(key).and_then(|l| l.quota.as_ref())
    }
}

impl Limited {
    /// When an experiment that began its session at `started` gives up on
    /// this key: `give_up` after the streak began, counted from the session's
    /// start at the earliest (so a resume gets the whole time again).
    pub(crate) fn deadline(&self, started: Instant, give_up: Duration) -> Instant {
        let from = self.since.max(started);
        from.checked_add(give_up).unwrap_or(from)
    }

    /// The `last_error` of an experiment that gave up on `key` at `now`,
    /// having waited since `from`.
    pub(crate) fn give_up_message(&self, key: &RateKey, from: Instant, now: Instant) -> String {
        let waited = human(now.saturating_duration_since(from));
        match &self.quota {
            Some(q) => format!(
                "quota exhausted: provider `{}` (key `{}`) has answered only 429s for {waited}, \
                 the last saying its quota is used up: {}; {}. Resume the experiment once the \
                 quota is back",
                key.provider(),
                key.as_str(),
                q.message,
                comes_back(q.until, now),
            ),
            None => format!(
                "rate limited without end: provider `{}` (key `{}`) has answered only 429s for \
                 {waited} (scheduler.rate_limit_give_up); last: {}. The key's quota may be used \
                 up; resume the experiment to try again",
                key.provider(),
                key.as_str(),
                self.last,
            ),
        }
    }
}

/// The log text when an experiment starts waiting on `key`'s quota.
pub(crate) fn waiting_message(
    key: &RateKey,
    note: Option<&QuotaNote>,
    until: Option<Instant>,
    give_up_at: Option<Instant>,
    now: Instant,
) -> String {
    let said = note.map(|n| format!(": {}", n.message)).unwrap_or_default();
    let give_up = give_up_at
        .map(|g| {
            format!(
                "; the experiment gives up in {} if it is not back",
                human(g.saturating_duration_since(now))
            )
        })
        .unwrap_or_default();
    format!(
        "waiting on quota: provider `{}` (key `{}`) says its quota is used up{said}; {}{give_up}",
        key.provider(),
        key.as_str(),
        comes_back(until, now),
    )
}

fn comes_back(until: Option<Instant>, now: Instant) -> String {
    match until {
        Some(t) => format!(
            "it comes back in about {}",
            human(t.saturating_duration_since(now))
        ),
        None => "the provider did not say when it comes back".to_owned(),
    }
}

/// A duration for people: `45s`, `12m 5s`, `3h 20m`.
pub(crate) fn human(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..60 => format!("{s}s"),
        60..3600 if s.is_multiple_of(60) => format!("{}m", s / 60),
        60..3600 => format!("{}m {}s", s / 60, s % 60),
        _ if (s % 3600) / 60 == 0 => format!("{}h", s / 3600),
        _ => format!("{}h {}m", s / 3600, (s % 3600) / 60),
    }
}

#[cfg(test)]
// A test needs some instant to start from; the rule is for the core's code.
#[allow(clippy::disallowed_methods)]
mod tests {
    use super::*;
    use crate::outcome::Reply;

    fn quota(retry_after: Option<Duration>) -> Outcome {
        Outcome::QuotaExhausted {
            message: "HTTP 429: insufficient_quota: You exceeded your current quota".into(),
            retry_after,
        }
    }

    fn rate_limited(message: &str) -> Outcome {
        Outcome::RateLimited {
            retry_after: None,
            message: message.into(),
            scope: crate::outcome::LimitScope::Unknown,
        }
    }

    #[test]
    fn a_streak_starts_at_the_first_429_and_ends_at_a_success() {
        let t0 = Instant::now();
        let key = RateKey::new("openai", "gpt-4o");
        let mut notes = KeyNotes::default();
        let limited = rate_limited("slow down");
        notes.observe(&key, &limited, t0);
        notes.observe(&key, &quota(None), t0 + Duration::from_secs(5));
        let l = notes.limited(&key).unwrap().clone();
        assert_eq!(l.since, t0);
        assert!(l.quota.is_some());
        // Transient and permanent failures neither start nor end a streak.
        let other = RateKey::new("openai", "o1");
        notes.observe(
            &other,
            &Outcome::Permanent {
                message: "400".into(),
            },
            t0,
        );
        notes.observe(
            &other,
            &Outcome::Transient {
                message: "503".into(),
            },
            t0,
        );
        assert!(notes.limited(&other).is_none());
        notes.observe(
            &key,
            &Outcome::Transient {
                message: "503".into(),
            },
            t0,
        );
        assert!(notes.limited(&key).is_some());
        let ok = Outcome::Success(Reply::Task { output: "x".into() });
        notes.observe(&key, &ok, t0 + Duration::from_secs(9));
        assert!(notes.limited(&key).is_none());
        assert!(notes.quota(&key).is_none());
    }

    #[test]
    fn the_deadline_counts_from_the_session_start_at_the_earliest() {
        let t0 = Instant::now();
        let l = Limited {
            since: t0,
            last: String::new(),
            quota: None,
        };
        let give_up = Duration::from_secs(1800);
        assert_eq!(l.deadline(t0, give_up), t0 + give_up);
        let resumed = t0 + Duration::from_secs(4000);
        assert_eq!(l.deadline(resumed, give_up), resumed + give_up);
    }

    #[test]
    fn the_give_up_text_names_the_key_the_quota_and_when_it_comes_back() {
        let t0 = Instant::now();
        let key = RateKey::new("openai", "gpt-4o#ab12");
        let mut notes = KeyNotes::default();
        notes.observe(&key, &quota(Some(Duration::from_secs(3 * 3600 + 600))), t0);
        let l = notes.limited(&key).unwrap();
        let text = l.give_up_message(&key, t0, t0 + Duration::from_secs(1800));
        assert!(
            text.starts_with("quota exhausted: provider `openai`"),
            "{text}"
        );
        assert!(text.contains("`openai|gpt-4o#ab12`"), "{text}");
        assert!(text.contains("for 30m"), "{text}");
        assert!(text.contains("exceeded your current quota"), "{text}");
        assert!(text.contains("comes back in about 2h 40m"), "{text}");
        let mut notes = KeyNotes::default();
        notes.observe(&key, &quota(None), t0);
        let text = notes.limited(&key).unwrap().give_up_message(&key, t0, t0);
        assert!(text.contains("did not say when"), "{text}");
        let mut notes = KeyNotes::default();
        let limited = rate_limited("HTTP 429 Too Many Requests");
        notes.observe(&key, &limited, t0);
        let text = notes.limited(&key).unwrap().give_up_message(&key, t0, t0);
        assert!(
            text.contains("only 429s") && text.contains("HTTP 429 Too Many"),
            "{text}"
        );
    }

    #[test]
    fn durations_read_like_people_write_them() {
        assert_eq!(human(Duration::from_secs(45)), "45s");
        assert_eq!(human(Duration::from_secs(600)), "10m");
        assert_eq!(human(Duration::from_secs(725)), "12m 5s");
        assert_eq!(human(Duration::from_secs(7200)), "2h");
        assert_eq!(human(Duration::from_secs(12_000)), "3h 20m");
    }
}
