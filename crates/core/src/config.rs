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
    /// Longest timeout an experiment may give its calls (`timeout_s`): the
    /// API refuses a longer one, and a longer one stored earlier is cut to
    /// it. At least `task_timeout` and `eval_timeout`.
    #[serde(with = "duration")]
    pub max_call_timeout: Duration,
    /// Random extra wait added to a provider's `Retry-After`, as a fraction
    /// of it (0.1 = up to +10 %), so that the jobs it paused do not all come
    /// back at one instant.
    pub retry_after_spread: f64,
    /// Failed runs or annotations logged one by one per experiment and
    /// session; after that the log only says that more failed (the results
    /// hold every one).
    pub failures_logged: u32,
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
    /// How long a needed rate-limit key may answer nothing but 429s (rate
    /// limited or quota exhausted, no success in between) — which includes
    /// waiting on a used-up quota — before the experiment is set to ERROR
    /// with a `last_error` that names the quota; resume continues it. Default
    /// 30 minutes: far longer than any rate limit's window (per second, per
    /// minute, and the 10 s windows of Azure), so a key that is merely busy
    /// never fails an experiment, yet an experiment left running against a
    /// used-up daily or monthly quota says so within half an hour instead of
    /// staying RUNNING until midnight Pacific or the next invoice.
    #[serde(with = "duration")]
    pub rate_limit_give_up: Duration,
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
            max_call_timeout: Duration::from_secs(3600),
            retry_after_spread: 0.1,
            failures_logged: 20,
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
            rate_limit_give_up: Duration::from_secs(30 * 60),
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
        if self.max_call_timeout < self.task_timeout.max(self.eval_timeout) {
            return bad(
                "max_call_timeout",
                "must not be smaller than task_timeout and eval_timeout",
            );
        }
        if !(0.0..=10.0).contains(&self.retry_after_spread) {
            return bad("retry_after_spread", "must be between 0 and 10");
        }
        if self.lease < Duration::from_millis(300) {
            return bad("lease", "must be at least 300ms");
        }
        if !(0.0..0.5).contains(&self.orphan_scan_jitter) {
            return bad("orphan_scan_jitter", "must be at least 0 and below 0.5");
        }
        if self.rate_limit_give_up.is_zero() {
            return bad(
                "rate_limit_give_up",
                "must be greater than zero (a single 429 is never a reason to give up)",
            );
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

/// The duration syntax of every runnel setting; kept at this path for the
/// `#[serde(with = "runnel_core::config::duration")]` attributes that name it.
pub use crate::duration;

#[cfg(test)]
mod tests {
    use super::*;

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
        for (c, key) in [
            (
                Config {
                    task_timeout: Duration::from_secs(7200),
                    ..Config::default()
                },
                "max_call_timeout",
            ),
            (
                Config {
                    retry_after_spread: f64::NAN,
                    ..Config::default()
                },
                "retry_after_spread",
            ),
        ] {
            match c.validate() {
                Err(Error::Config { key: k, .. }) => assert_eq!(k, key),
                other => panic!("{key}: {other:?}"),
            }
        }
    }
}
