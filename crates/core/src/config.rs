//! Every scheduling and lifecycle constant of DESIGN §3–§5, with its default.
//!
//! The server loads this struct with figment (defaults < `runnel.toml` <
//! `RUNNEL_…` environment < flags); it is plain serde so any other loader works
//! too. Durations are written as `"30s"`, `"500ms"`, `"5m"`, `"1h"` or a number
//! of seconds.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::Error;

/// Scheduling and lifecycle constants.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Global slots: provider calls in flight at once in this process.
    pub max_concurrency: usize,
    /// Default per-experiment cap; `None` means only the global slots limit it.
    /// An experiment's own `max_concurrency` overrides it.
    pub experiment_max_concurrency: Option<usize>,
    /// Transient failures retried before a run or annotation is recorded as failed.
    pub max_retries: u32,
    /// First retry delay; doubled on each further failure.
    #[serde(with = "duration")]
    pub backoff_base: Duration,
    /// Largest retry delay.
    #[serde(with = "duration")]
    pub backoff_max: Duration,
    /// Random extra delay, as a fraction of the backoff (0.25 = up to +25 %).
    pub backoff_jitter: f64,
    /// Default timeout of a task call (an experiment may set its own).
    #[serde(with = "duration")]
    pub task_timeout: Duration,
    /// Default timeout of an evaluator call.
    #[serde(with = "duration")]
    pub eval_timeout: Duration,
    /// How old a claim must be before another replica takes it over.
    #[serde(with = "duration")]
    pub lease: Duration,
    /// Heartbeats per lease: a replica renews its claims every
    /// `lease / heartbeats_per_lease`.
    pub heartbeats_per_lease: u32,
    /// Orphan scans per lease: a replica looks for expired claims every
    /// `lease / orphan_scans_per_lease` (± `orphan_scan_jitter`), so a dead
    /// replica's experiments are taken over within about
    /// `lease + lease / orphan_scans_per_lease` of its last heartbeat.
    pub orphan_scans_per_lease: u32,
    /// Random spread of the orphan scan interval, as a fraction (0.1 = ±10 %).
    pub orphan_scan_jitter: f64,
    /// Self-fencing margin, as a fraction of the lease: a replica starts no
    /// provider call for an experiment once `lease × (1 − margin)` has passed
    /// since it sent the last heartbeat (or claim) that the database
    /// confirmed, and resumes only after a confirmed heartbeat. The margin
    /// absorbs the time between deciding a call and sending it, and a step of
    /// the database's clock.
    pub lease_safety_margin: f64,
    /// On graceful shutdown, how long releasing the claims is retried while
    /// the database is unreachable (they expire after the lease otherwise).
    #[serde(with = "duration")]
    pub release_give_up: Duration,
    /// Consecutive transient failures of one experiment on one rate-limit
    /// key, while other experiments on that key do not fail, that open the
    /// experiment's own breaker for that key (the key's breaker, shared by
    /// every experiment, only counts failures seen by more than one).
    pub experiment_breaker_failures: u32,
    /// How long an experiment's own breaker stays open before one probe call.
    #[serde(with = "duration")]
    pub experiment_breaker_cooldown: Duration,
    /// Minimum time between two user toggles (stop/resume) of one experiment.
    #[serde(with = "duration")]
    pub cooldown: Duration,
    /// How long a needed rate-limit key may stay with an open breaker before
    /// the experiment is set to ERROR. Zero: at once.
    #[serde(with = "duration")]
    pub breaker_give_up: Duration,
    /// High watermark: most work items buffered per experiment and kind; also
    /// the page size of work reconstruction.
    pub high_watermark: usize,
    /// Low watermark: a buffer is refilled when it drops to this many items.
    pub low_watermark: usize,
    /// On graceful shutdown, how long in-flight calls may run before the
    /// claims are released anyway.
    #[serde(with = "duration")]
    pub shutdown_grace: Duration,
    /// First delay before retrying a failed store call (doubles, up to `store_retry_max`).
    #[serde(with = "duration")]
    pub store_retry_base: Duration,
    /// Largest delay between two retries of a store call.
    #[serde(with = "duration")]
    pub store_retry_max: Duration,
    /// How long a result write is retried while the database is unreachable
    /// before it is given up (the work is then found again on the next resume).
    #[serde(with = "duration")]
    pub store_write_give_up: Duration,
    /// Seed of the jitter generator; `None` derives one from the replica id.
    pub seed: Option<u64>,
    /// Whether this engine takes back the experiments still claimed under its
    /// own identity at start and takes over orphaned ones. A one-shot runner
    /// (`runnel run`) turns this off so it runs only what it was given.
    pub take_over: bool,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            max_concurrency: 20,
            experiment_max_concurrency: None,
            max_retries: 3,
            backoff_base: Duration::from_secs(1),
            backoff_max: Duration::from_secs(60),
            backoff_jitter: 0.25,
            task_timeout: Duration::from_secs(120),
            eval_timeout: Duration::from_secs(60),
            lease: Duration::from_secs(30),
            heartbeats_per_lease: 3,
            orphan_scans_per_lease: 3,
            orphan_scan_jitter: 0.1,
            lease_safety_margin: 0.2,
            release_give_up: Duration::from_secs(5),
            experiment_breaker_failures: 10,
            experiment_breaker_cooldown: Duration::from_secs(5),
            cooldown: Duration::from_secs(5),
            breaker_give_up: Duration::from_secs(300),
            high_watermark: 1000,
            low_watermark: 250,
            shutdown_grace: Duration::from_secs(30),
            store_retry_base: Duration::from_millis(100),
            store_retry_max: Duration::from_secs(5),
            store_write_give_up: Duration::from_secs(600),
            seed: None,
            take_over: true,
        }
    }
}

impl Config {
    /// Heartbeat period: `lease / heartbeats_per_lease`.
    pub fn heartbeat_interval(&self) -> Duration {
        self.lease / self.heartbeats_per_lease.max(1)
    }

    /// Orphan scan period (before jitter): `lease / orphan_scans_per_lease`,
    /// so a claim that expired is taken over within that much — with the
    /// default of 3, a replica killed right after a heartbeat is replaced
    /// about `lease × 4/3` later, not up to `2 × lease` as with a scan every
    /// lease.
    pub fn orphan_scan_interval(&self) -> Duration {
        self.lease / self.orphan_scans_per_lease.max(1)
    }

    /// How long after sending a confirmed heartbeat (or claim) a replica may
    /// still start calls: `lease × (1 − lease_safety_margin)`.
    pub fn fence_after(&self) -> Duration {
        self.lease.mul_f64(1.0 - self.lease_safety_margin)
    }

    /// Checks every value; the error names the offending key.
    pub fn validate(&self) -> Result<(), Error> {
        fn bad(key: &'static str, message: impl Into<String>) -> Result<(), Error> {
            Err(Error::Config {
                key,
                message: message.into(),
            })
        }
        if self.max_concurrency == 0 {
            return bad("max_concurrency", "must be at least 1");
        }
        if self.experiment_max_concurrency == Some(0) {
            return bad("experiment_max_concurrency", "must be at least 1 when set");
        }
        if self.backoff_base.is_zero() {
            return bad("backoff_base", "must be greater than zero");
        }
        if self.backoff_max < self.backoff_base {
            return bad("backoff_max", "must not be smaller than backoff_base");
        }
        if !(0.0..=10.0).contains(&self.backoff_jitter) {
            return bad("backoff_jitter", "must be between 0 and 10");
        }
        if self.task_timeout.is_zero() {
            return bad("task_timeout", "must be greater than zero");
        }
        if self.eval_timeout.is_zero() {
            return bad("eval_timeout", "must be greater than zero");
        }
        if self.lease < Duration::from_millis(300) {
            return bad("lease", "must be at least 300ms");
        }
        if !(0.0..0.5).contains(&self.orphan_scan_jitter) {
            return bad("orphan_scan_jitter", "must be at least 0 and below 0.5");
        }
        if self.heartbeats_per_lease < 2 {
            return bad("heartbeats_per_lease", "must be at least 2");
        }
        if self.orphan_scans_per_lease == 0 {
            return bad("orphan_scans_per_lease", "must be at least 1");
        }
        if !(0.0..1.0).contains(&self.lease_safety_margin) {
            return bad("lease_safety_margin", "must be at least 0 and below 1");
        }
        if self.fence_after() <= self.heartbeat_interval() {
            return bad(
                "lease_safety_margin",
                "leaves no time for a heartbeat: lease × (1 − margin) must exceed lease / heartbeats_per_lease",
            );
        }
        if self.experiment_breaker_failures == 0 {
            return bad("experiment_breaker_failures", "must be at least 1");
        }
        if self.high_watermark == 0 {
            return bad("high_watermark", "must be at least 1");
        }
        if self.low_watermark >= self.high_watermark {
            return bad("low_watermark", "must be smaller than high_watermark");
        }
        if self.store_retry_base.is_zero() {
            return bad("store_retry_base", "must be greater than zero");
        }
        if self.store_retry_max < self.store_retry_base {
            return bad(
                "store_retry_max",
                "must not be smaller than store_retry_base",
            );
        }
        Ok(())
    }
}

/// Serde helper for durations written as `"250ms"`, `"30s"`, `"5m"`, `"1h"`,
/// `"1.5s"` or a plain number of seconds. Use with `#[serde(with = "…")]`.
pub mod duration {
    use std::time::Duration;

    use serde::de::{self, Visitor};
    use serde::{Deserializer, Serializer};

    /// Parses a duration text such as `"250ms"`, `"30s"`, `"5m"`, `"1h"`, `"2"`.
    pub fn parse(text: &str) -> Result<Duration, String> {
        let t = text.trim();
        let split = t
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(t.len());
        let (number, unit) = t.split_at(split);
        let value: f64 = number
            .parse()
            .map_err(|_| format!("`{text}` is not a duration (try \"30s\", \"500ms\", \"5m\")"))?;
        let seconds = match unit.trim() {
            "" | "s" | "sec" | "secs" => value,
            "ms" => value / 1000.0,
            "us" | "µs" => value / 1_000_000.0,
            "m" | "min" | "mins" => value * 60.0,
            "h" => value * 3600.0,
            other => {
                return Err(format!(
                    "`{text}` has an unknown unit `{other}` (use ms, s, m or h)"
                ));
            }
        };
        from_secs(seconds).ok_or_else(|| format!("`{text}` is out of range"))
    }

    fn from_secs(seconds: f64) -> Option<Duration> {
        (seconds.is_finite() && (0.0..=1.0e12).contains(&seconds))
            .then(|| Duration::from_secs_f64(seconds))
    }

    /// Formats a duration the way [`parse`] reads it.
    pub fn format(d: Duration) -> String {
        if d.subsec_nanos() == 0 {
            format!("{}s", d.as_secs())
        } else if d.as_nanos().is_multiple_of(1_000_000) {
            format!("{}ms", d.as_millis())
        } else {
            format!("{}s", d.as_secs_f64())
        }
    }

    /// Serialises as text.
    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format(*d))
    }

    /// Deserialises from text or a number of seconds.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Duration;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a duration such as \"30s\", \"500ms\" or a number of seconds")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Duration, E> {
                parse(v).map_err(E::custom)
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Duration, E> {
                from_secs(v as f64)
                    .ok_or_else(|| E::custom("a duration must be at most 10^12 seconds"))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Duration, E> {
                if v < 0 {
                    return Err(E::custom("a duration cannot be negative"));
                }
                from_secs(v as f64)
                    .ok_or_else(|| E::custom("a duration must be at most 10^12 seconds"))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Duration, E> {
                from_secs(v).ok_or_else(|| E::custom("a duration must be a positive finite number"))
            }
        }
        d.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_in_every_documented_form() {
        assert_eq!(duration::parse("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(duration::parse("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(duration::parse("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(duration::parse("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(duration::parse("1.5"), Ok(Duration::from_millis(1500)));
        assert!(
            duration::parse("soon")
                .unwrap_err()
                .contains("not a duration")
        );
        assert!(
            duration::parse("3 fortnights")
                .unwrap_err()
                .contains("unknown unit")
        );
        assert!(duration::parse("1e30").is_err());
    }

    #[test]
    fn durations_format_round_trip() {
        for d in [
            Duration::from_secs(30),
            Duration::from_millis(1500),
            Duration::from_micros(1500),
        ] {
            assert_eq!(duration::parse(&duration::format(d)), Ok(d));
        }
    }

    #[test]
    fn config_reads_numbers_and_texts_and_rejects_unknown_keys() {
        let c: Config =
            serde_json::from_str(r#"{"lease": "10s", "backoff_base": 2, "max_concurrency": 5}"#)
                .unwrap();
        assert_eq!(c.lease, Duration::from_secs(10));
        assert_eq!(c.backoff_base, Duration::from_secs(2));
        assert_eq!(c.max_concurrency, 5);
        assert_eq!(c.max_retries, 3);
        let err = serde_json::from_str::<Config>(r#"{"leese": "10s"}"#).unwrap_err();
        assert!(err.to_string().contains("leese"));
        let err = serde_json::from_str::<Config>(r#"{"lease": -3}"#).unwrap_err();
        assert!(err.to_string().contains("negative"));
        // Values that would overflow an Instant later are refused here.
        let err = serde_json::from_str::<Config>(r#"{"shutdown_grace": 18446744073709551615}"#)
            .unwrap_err();
        assert!(err.to_string().contains("at most"), "{err}");
    }

    #[test]
    fn defaults_are_valid_and_validation_names_the_key() {
        Config::default().validate().unwrap();
        let c = Config {
            low_watermark: 2000,
            ..Config::default()
        };
        assert!(matches!(
            c.validate(),
            Err(Error::Config {
                key: "low_watermark",
                ..
            })
        ));
        let c = Config {
            max_concurrency: 0,
            ..Config::default()
        };
        assert!(matches!(
            c.validate(),
            Err(Error::Config {
                key: "max_concurrency",
                ..
            })
        ));
        assert_eq!(
            Config::default().heartbeat_interval(),
            Duration::from_secs(10)
        );
    }
}
