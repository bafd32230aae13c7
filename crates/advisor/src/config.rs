//! The advisor's configuration: breaker and learning constants, a table of
//! starting rates per provider kind, and explicit limits per provider entry.
//!
//! Every field has a documented default; the server loads this struct with
//! figment (it is plain serde, so any loader works). Durations are written
//! `"30s"`, `"500ms"` or as a number of seconds. Rates are per second, except
//! the explicit `rpm` / `tpm` of a provider entry, which use the units
//! providers publish.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use runnel_core::ProviderKind;
use runnel_core::config::duration;
use serde::{Deserialize, Serialize};

use crate::error::AdvisorError;

/// Constants of the advisor (DESIGN §5, §6).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdvisorConfig {
    /// Consecutive transient failures of one key that open its breaker. Default 5.
    pub breaker_threshold: u32,
    /// How long an open breaker stays open before one probe is let through.
    /// Default `"30s"`.
    #[serde(with = "duration")]
    pub breaker_cooldown: Duration,
    /// How long a half-open breaker waits for its probe's outcome before it
    /// lets another probe through (the outcome was lost). Should exceed the
    /// longest call timeout, so a slow probe is not doubled. Default `"150s"`.
    #[serde(with = "duration")]
    pub probe_timeout: Duration,
    /// A 429 whose `retry-after` is longer than this is quota exhaustion,
    /// not a rate limit (the provider adapters classify it so). Default
    /// `"10m"`: the waits of real rate limits are seconds to about a minute
    /// (per-second and per-minute windows, Gemini's `retryDelay`, Anthropic's
    /// resets), while a wait of many minutes or hours is a daily or hourly
    /// allowance that is used up — which the user should see, and which is
    /// shorter than `scheduler.rate_limit_give_up` (30 min) so the wait is
    /// shown well before the experiment gives up.
    #[serde(with = "duration")]
    pub long_wait: Duration,
    /// How long a key whose quota is used up waits before one probe call
    /// checks whether it is back, when the provider did not say when (OpenAI
    /// `insufficient_quota`, a spend cap, 402). Default `"5m"`: credit added
    /// by the user is found within five minutes, at the cost of one refused
    /// call per key per five minutes.
    #[serde(with = "duration")]
    pub quota_probe_interval: Duration,
    /// Burst capacity of a bucket, in seconds of its rate (at least one
    /// request). Small, so a long idle period never releases a wall of
    /// requests. Default 1.0.
    pub burst_seconds: f64,
    /// Multiplicative decrease of the request rate on a 429. Default 0.5.
    pub decrease_factor: f64,
    /// At most one decrease per window, so a burst of concurrent 429s (all
    /// caused by the same overshoot) halves the rate once. 429 replies come
    /// back fast, so one second covers the calls sent at the old rate.
    /// Default `"1s"`.
    #[serde(with = "duration")]
    pub decrease_window: Duration,
    /// After a decrease, the rate grows back to the last good rate linearly
    /// over this time. Default `"1s"`.
    #[serde(with = "duration")]
    pub recovery_time: Duration,
    /// Additive increase while probing near the rate that drew the last 429
    /// (and the bucket is the bottleneck): the fraction of the rate added per
    /// second, at most 0.1 % per success. Repeated 429s at the same rate
    /// shrink it. Default 0.02.
    pub additive_step: f64,
    /// Growth per second of saturated use before any limit is known (slow
    /// start). Default 2.0 (doubling each second, at most once per success).
    pub slow_start_factor: f64,
    /// The most one success may multiply the rate by in slow start: when
    /// successes are seconds apart (a low starting rate), each grows the
    /// rate by the factor per second since the last, up to this. Default 8.
    pub slow_start_max_growth: f64,
    /// Lowest request rate the learning may reach, per second. Default 1/60
    /// (one request per minute).
    pub min_rps: f64,
    /// Fraction of the refill rate derived from headers that the rate jumps
    /// to, leaving room for the two clocks' drift and the rounding of the
    /// headers. The derived rate is a hint, not a ceiling: probing goes on
    /// above it while replies report headroom. Default 0.99.
    pub header_headroom: f64,
    /// A `remaining` header below this much time of the current rate means
    /// the limit is running out: the rate falls (toward the derived refill
    /// rate) before any 429 comes. Default `"500ms"`.
    #[serde(with = "duration")]
    pub header_low: Duration,
    /// ... or, when the limit is stated, below this fraction of it (a bucket
    /// of one second's capacity is often half empty without running out).
    /// Default 0.1.
    pub header_low_fraction: f64,
    /// How many replies the refill rate derived from headers averages
    /// (`(limit − remaining) / reset`, as a ratio of decayed sums), so one
    /// reply's rounding does not decide. Default 8.
    pub header_samples: f64,
    /// A rate that carried this many successes in a row without a 429 is
    /// taken to be below the limit: after a 429 the last good rate is at
    /// least the highest such rate (at low rates a few seconds of successes
    /// measure too little). Default 3.
    pub ok_streak: u32,
    /// The last good rate is set this fraction below what a 429 measured, so
    /// the next 429 is some probing away. Default 0.03.
    pub margin: f64,
    /// A 429 drawn within this fraction of the rate of the previous one
    /// confirms the limit (and halves the probing step). Default 0.1.
    pub confirm: f64,
    /// Growth per second from the last good rate up to just below where the
    /// last 429 came (the last good rate may be measured too low), as a
    /// fraction of the rate. Default 0.3.
    pub approach: f64,
    /// ... but per success at most half the way there, or this fraction if
    /// that is more, so that at low rates the rate nears the last 429 in a
    /// few calls and passes the limit by little. Default 0.03.
    pub approach_per_success: f64,
    /// Above a known limit, one success adds at most this fraction of the
    /// rate, so at low rates a probe takes many requests and 429s stay rare.
    /// Default 0.001.
    pub probe_per_success: f64,
    /// The probing step shrinks (as 429s confirm the limit) to no less than
    /// `additive_step` divided by this. Default 64.
    pub probe_floor: f64,
    /// While probing without a 429, a shrunken step doubles this often, so a
    /// limit that was raised is found within minutes. Default `"30s"`.
    #[serde(with = "duration")]
    pub probe_doubling: Duration,
    /// Shortest time over which the success rate measured at a 429 is
    /// averaged. Default `"3s"`.
    #[serde(with = "duration")]
    pub goodput_window: Duration,
    /// The success rate is averaged over at least this many successes (at
    /// low rates the window grows to hold them). Default 16.
    pub goodput_samples: f64,
    /// Fewer (decayed) successes than this give no success-rate measurement
    /// at a 429. Default 3.
    pub goodput_min_samples: f64,
    /// Longest averaging time of the success rate: beyond it a rate is so
    /// low that the measurement is history, not evidence. Default `"600s"`.
    #[serde(with = "duration")]
    pub goodput_max_window: Duration,
    /// How many calls the average token charge per call spans (it sizes a
    /// token rate learned from a 429). Default 32.
    pub usage_samples: f64,
    /// Kind assumed for a key whose provider entry is not in `providers`.
    /// Default `openai_compatible`.
    pub default_kind: ProviderKind,
    /// Starting rates per provider kind; a kind missing here uses the built-in
    /// value of [`KindDefault::builtin`]. Defaults to the built-in table.
    pub kinds: HashMap<ProviderKind, KindDefault>,
    /// Explicit settings per provider entry (the `[providers.NAME]` name that
    /// starts every rate-limit key). Default empty.
    pub providers: BTreeMap<String, ProviderLimits>,
}

impl Default for AdvisorConfig {
    fn default() -> Self {
        Self {
            breaker_threshold: 5,
            breaker_cooldown: Duration::from_secs(30),
            probe_timeout: Duration::from_secs(150),
            long_wait: Duration::from_secs(600),
            quota_probe_interval: Duration::from_secs(300),
            burst_seconds: 1.0,
            decrease_factor: 0.5,
            decrease_window: Duration::from_secs(1),
            recovery_time: Duration::from_secs(1),
            additive_step: 0.02,
            slow_start_factor: 2.0,
            slow_start_max_growth: 8.0,
            min_rps: 1.0 / 60.0,
            header_headroom: 0.99,
            header_low: Duration::from_millis(500),
            header_low_fraction: 0.1,
            header_samples: 8.0,
            ok_streak: 3,
            margin: 0.03,
            confirm: 0.1,
            approach: 0.3,
            approach_per_success: 0.03,
            probe_per_success: 0.001,
            probe_floor: 64.0,
            probe_doubling: Duration::from_secs(30),
            goodput_window: Duration::from_secs(3),
            goodput_samples: 16.0,
            goodput_min_samples: 3.0,
            goodput_max_window: Duration::from_secs(600),
            usage_samples: 32.0,
            default_kind: ProviderKind::OpenAiCompatible,
            kinds: ProviderKind::ALL
                .iter()
                .map(|&k| (k, KindDefault::builtin(k)))
                .collect(),
            providers: BTreeMap::new(),
        }
    }
}

/// The starting point of every key of one provider kind.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KindDefault {
    /// Starting request rate per second, before anything is learned.
    pub initial_rps: f64,
    /// No client-side rate limit at all (local servers); pauses the provider
    /// asks for and the breaker still apply.
    #[serde(default)]
    pub unlimited: bool,
}

impl KindDefault {
    /// The built-in starting rate of `kind`: roughly the lowest paid (or free)
    /// tier of each provider, so a fresh key starts near its real limit and
    /// slow start or the provider's headers find the rest within seconds.
    ///
    /// | kind | start | why |
    /// |---|---|---|
    /// | openai | 500 RPM | tier 1 of most models |
    /// | azure | 60 RPM | a small deployment (10 k TPM ≈ 60 RPM) |
    /// | anthropic | 50 RPM | tier 1 |
    /// | gemini | 5 RPM | free tier of the larger models |
    /// | groq, cerebras | 30 RPM | free tier |
    /// | xai, mistral, openai_compatible | 60 RPM | one per second |
    /// | deepseek | 120 RPM | no published limit; start moderate |
    /// | together, fireworks | 300 RPM | entry tiers |
    /// | local | unlimited | Ollama, vLLM, llama.cpp (600 RPM if `unlimited = false`) |
    pub fn builtin(kind: ProviderKind) -> Self {
        let rpm = match kind {
            ProviderKind::OpenAi => 500.0,
            ProviderKind::Azure => 60.0,
            ProviderKind::Anthropic => 50.0,
            ProviderKind::Gemini => 5.0,
            ProviderKind::Groq | ProviderKind::Cerebras => 30.0,
            ProviderKind::Xai | ProviderKind::Mistral | ProviderKind::OpenAiCompatible => 60.0,
            ProviderKind::DeepSeek => 120.0,
            ProviderKind::Together | ProviderKind::Fireworks => 300.0,
            ProviderKind::Local => 600.0,
        };
        Self {
            initial_rps: rpm / 60.0,
            unlimited: kind == ProviderKind::Local,
        }
    }
}

/// Explicit settings of one provider entry.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProviderLimits {
    /// The provider kind; `None` uses [`AdvisorConfig::default_kind`].
    pub kind: Option<ProviderKind>,
    /// Requests per minute: honoured exactly — no 60-second window ever holds
    /// more permits — and never exceeded by anything learned.
    pub rpm: Option<u64>,
    /// Tokens per minute, for calls whose token estimate is known: honoured
    /// exactly like `rpm`.
    pub tpm: Option<u64>,
    /// Starting request rate per second (instead of the kind's, or of `rpm`
    /// when that is given).
    pub initial_rps: Option<f64>,
    /// No client-side rate limit (`Some(true)`), or a limit even for a kind
    /// that is unlimited by default (`Some(false)`). Cannot be combined with
    /// `rpm` or `tpm`.
    pub unlimited: Option<bool>,
}

impl ProviderLimits {
    /// The configuration keys of these settings. A server that keeps them in
    /// the same `[providers.NAME]` table as the provider adapter's keys can
    /// split the table with this list (`kind` belongs to both) and
    /// deserialize each part with its own `deny_unknown_fields` type.
    pub const KEYS: &'static [&'static str] = &["kind", "rpm", "tpm", "initial_rps", "unlimited"];
}

/// The limits that apply to one provider entry, resolved from the config.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ResolvedLimits {
    /// No request bucket at all.
    pub unlimited: bool,
    /// Starting request rate per second.
    pub initial_rps: f64,
    /// Explicit requests per minute.
    pub rpm: Option<u64>,
    /// Explicit tokens per minute.
    pub tpm: Option<u64>,
}

impl AdvisorConfig {
    /// The limits of keys under provider entry `provider`.
    pub fn resolve(&self, provider: &str) -> ResolvedLimits {
        let entry = self.providers.get(provider).copied().unwrap_or_default();
        let kind = entry.kind.unwrap_or(self.default_kind);
        let kind_default = self
            .kinds
            .get(&kind)
            .copied()
            .unwrap_or_else(|| KindDefault::builtin(kind));
        let explicit = entry.rpm.is_some() || entry.tpm.is_some();
        let unlimited = entry
            .unlimited
            .unwrap_or(kind_default.unlimited && !explicit);
        ResolvedLimits {
            unlimited,
            // An explicit limit is the best starting point there is.
            initial_rps: entry.initial_rps.unwrap_or_else(|| {
                entry
                    .rpm
                    .map_or(kind_default.initial_rps, |rpm| rpm as f64 / 60.0)
            }),
            rpm: entry.rpm,
            tpm: entry.tpm,
        }
    }

    /// Checks every value; the error names the offending key.
    pub fn validate(&self) -> Result<(), AdvisorError> {
        fn bad(key: impl Into<String>, message: &str) -> Result<(), AdvisorError> {
            Err(AdvisorError::Config {
                key: key.into(),
                message: message.to_owned(),
            })
        }
        fn positive_rate(x: f64) -> bool {
            x.is_finite() && x > 0.0 && x <= MAX_RATE
        }
        if self.breaker_threshold == 0 {
            return bad("breaker_threshold", "must be at least 1");
        }
        if self.breaker_cooldown.is_zero() {
            return bad("breaker_cooldown", "must be greater than zero");
        }
        if self.probe_timeout.is_zero() {
            return bad("probe_timeout", "must be greater than zero");
        }
        if self.long_wait < Duration::from_secs(1) {
            return bad(
                "long_wait",
                "must be at least 1s (a shorter wait is an ordinary rate limit)",
            );
        }
        if self.quota_probe_interval < Duration::from_secs(1) {
            return bad("quota_probe_interval", "must be at least 1s");
        }
        if !(self.burst_seconds.is_finite()
            && self.burst_seconds > 0.0
            && self.burst_seconds <= 60.0)
        {
            return bad("burst_seconds", "must be greater than 0 and at most 60");
        }
        if !(self.decrease_factor > 0.0 && self.decrease_factor < 1.0) {
            return bad("decrease_factor", "must be between 0 and 1 (exclusive)");
        }
        if self.decrease_window.is_zero() {
            return bad("decrease_window", "must be greater than zero");
        }
        if self.recovery_time.is_zero() {
            return bad("recovery_time", "must be greater than zero");
        }
        if !(self.additive_step.is_finite() && (0.0..=10.0).contains(&self.additive_step)) {
            return bad("additive_step", "must be between 0 and 10");
        }
        if !(self.slow_start_factor.is_finite() && (1.0..=100.0).contains(&self.slow_start_factor))
        {
            return bad("slow_start_factor", "must be between 1 and 100");
        }
        if !positive_rate(self.min_rps) {
            return bad(
                "min_rps",
                "must be a positive number of requests per second",
            );
        }
        if !(self.header_headroom > 0.0 && self.header_headroom <= 1.0) {
            return bad("header_headroom", "must be greater than 0 and at most 1");
        }
        let fraction = |x: f64| x.is_finite() && (0.0..1.0).contains(&x);
        if !(self.slow_start_max_growth.is_finite()
            && (1.0..=1000.0).contains(&self.slow_start_max_growth))
        {
            return bad("slow_start_max_growth", "must be between 1 and 1000");
        }
        if !fraction(self.header_low_fraction) {
            return bad("header_low_fraction", "must be at least 0 and below 1");
        }
        if !fraction(self.margin) {
            return bad("margin", "must be at least 0 and below 1");
        }
        if !fraction(self.confirm) {
            return bad("confirm", "must be at least 0 and below 1");
        }
        if !(self.approach.is_finite() && (0.0..=10.0).contains(&self.approach)) {
            return bad("approach", "must be between 0 and 10");
        }
        if !(self.approach_per_success.is_finite()
            && (0.0..=10.0).contains(&self.approach_per_success))
        {
            return bad("approach_per_success", "must be between 0 and 10");
        }
        if !(self.probe_per_success.is_finite() && (0.0..=1.0).contains(&self.probe_per_success)) {
            return bad("probe_per_success", "must be between 0 and 1");
        }
        if !(self.probe_floor.is_finite() && self.probe_floor >= 1.0) {
            return bad("probe_floor", "must be at least 1");
        }
        if self.probe_doubling.is_zero() {
            return bad("probe_doubling", "must be greater than zero");
        }
        if self.goodput_window.is_zero() {
            return bad("goodput_window", "must be greater than zero");
        }
        if self.goodput_max_window < self.goodput_window {
            return bad(
                "goodput_max_window",
                "must not be shorter than goodput_window",
            );
        }
        if !(self.goodput_min_samples.is_finite()
            && (1.0..=10_000.0).contains(&self.goodput_min_samples))
        {
            return bad("goodput_min_samples", "must be between 1 and 10000");
        }
        if !(self.usage_samples.is_finite() && (1.0..=1_000_000.0).contains(&self.usage_samples)) {
            return bad("usage_samples", "must be between 1 and 1000000");
        }
        if !(self.goodput_samples.is_finite() && (1.0..=10_000.0).contains(&self.goodput_samples)) {
            return bad("goodput_samples", "must be between 1 and 10000");
        }
        if self.ok_streak == 0 {
            return bad("ok_streak", "must be at least 1");
        }
        if !(self.header_samples.is_finite() && (1.0..=10_000.0).contains(&self.header_samples)) {
            return bad("header_samples", "must be between 1 and 10000");
        }
        for (kind, d) in &self.kinds {
            if !positive_rate(d.initial_rps) {
                return bad(
                    format!("kinds.{}.initial_rps", kind.as_str()),
                    "must be a positive number of requests per second",
                );
            }
        }
        for (name, p) in &self.providers {
            if name.contains('|') {
                return bad(
                    format!("providers.{name}"),
                    "a provider entry name cannot contain `|` (it separates the parts of a rate-limit key)",
                );
            }
            if p.rpm == Some(0) {
                return bad(format!("providers.{name}.rpm"), "must be at least 1");
            }
            if p.tpm == Some(0) {
                return bad(format!("providers.{name}.tpm"), "must be at least 1");
            }
            if let Some(r) = p.initial_rps
                && !positive_rate(r)
            {
                return bad(
                    format!("providers.{name}.initial_rps"),
                    "must be a positive number of requests per second",
                );
            }
            if p.unlimited == Some(true) && (p.rpm.is_some() || p.tpm.is_some()) {
                return bad(
                    format!("providers.{name}.unlimited"),
                    "cannot be true together with an explicit rpm or tpm",
                );
            }
        }
        Ok(())
    }
}

/// Highest rate a bucket represents (one per nanosecond); anything above it
/// is configured as unlimited instead.
pub const MAX_RATE: f64 = 1.0e9;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_cover_every_kind() {
        let c = AdvisorConfig::default();
        c.validate().unwrap();
        for kind in ProviderKind::ALL {
            assert!(c.kinds.contains_key(&kind), "{kind:?}");
        }
        assert!(c.resolve("anything").initial_rps > 0.0);
        assert!(!c.resolve("anything").unlimited);
    }

    #[test]
    fn reads_partial_config_and_rejects_unknown_keys() {
        let c: AdvisorConfig = serde_json::from_str(
            r#"{"breaker_cooldown": "10s", "providers": {"oa": {"kind": "openai", "rpm": 600}}}"#,
        )
        .unwrap();
        assert_eq!(c.breaker_cooldown, Duration::from_secs(10));
        assert_eq!(c.breaker_threshold, 5);
        assert_eq!(c.providers["oa"].rpm, Some(600));
        let err = serde_json::from_str::<AdvisorConfig>(r#"{"breaker_treshold": 3}"#).unwrap_err();
        assert!(err.to_string().contains("breaker_treshold"), "{err}");
        let err = serde_json::from_str::<AdvisorConfig>(r#"{"providers": {"x": {"rmp": 3}}}"#)
            .unwrap_err();
        assert!(err.to_string().contains("rmp"), "{err}");
    }

    #[test]
    fn a_partial_kind_table_keeps_the_builtin_values_of_the_others() {
        let c: AdvisorConfig =
            serde_json::from_str(r#"{"kinds": {"gemini": {"initial_rps": 0.5}}}"#).unwrap();
        c.validate().unwrap();
        let gemini = AdvisorConfig {
            providers: [(
                "g".to_owned(),
                ProviderLimits {
                    kind: Some(ProviderKind::Gemini),
                    ..ProviderLimits::default()
                },
            )]
            .into(),
            ..c.clone()
        };
        assert_eq!(gemini.resolve("g").initial_rps, 0.5);
        assert_eq!(
            c.resolve("other").initial_rps,
            KindDefault::builtin(ProviderKind::OpenAiCompatible).initial_rps
        );
    }

    #[test]
    fn the_listed_keys_are_exactly_the_fields() {
        let value = serde_json::to_value(ProviderLimits {
            kind: Some(ProviderKind::Groq),
            rpm: Some(1),
            tpm: Some(1),
            initial_rps: Some(1.0),
            unlimited: Some(false),
        })
        .unwrap();
        let mut fields: Vec<&str> = value
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        fields.sort_unstable();
        let mut keys = ProviderLimits::KEYS.to_vec();
        keys.sort_unstable();
        assert_eq!(fields, keys);
    }

    #[test]
    fn local_is_unlimited_unless_limits_are_given() {
        let mut c = AdvisorConfig::default();
        c.providers.insert(
            "ollama".into(),
            ProviderLimits {
                kind: Some(ProviderKind::Local),
                ..ProviderLimits::default()
            },
        );
        c.providers.insert(
            "vllm".into(),
            ProviderLimits {
                kind: Some(ProviderKind::Local),
                rpm: Some(120),
                ..ProviderLimits::default()
            },
        );
        assert!(c.resolve("ollama").unlimited);
        let v = c.resolve("vllm");
        assert!(!v.unlimited);
        assert_eq!(v.rpm, Some(120));
    }

    #[test]
    fn validation_names_the_bad_key() {
        fn key_of(c: &AdvisorConfig) -> String {
            match c.validate() {
                Err(AdvisorError::Config { key, .. }) => key,
                other => panic!("expected a config error, got {other:?}"),
            }
        }
        let base = AdvisorConfig::default();
        let c = AdvisorConfig {
            breaker_threshold: 0,
            ..base.clone()
        };
        assert_eq!(key_of(&c), "breaker_threshold");
        let c = AdvisorConfig {
            decrease_factor: 1.0,
            ..base.clone()
        };
        assert_eq!(key_of(&c), "decrease_factor");
        let c = AdvisorConfig {
            burst_seconds: f64::NAN,
            ..base.clone()
        };
        assert_eq!(key_of(&c), "burst_seconds");
        let c = AdvisorConfig {
            long_wait: Duration::from_millis(10),
            ..base.clone()
        };
        assert_eq!(key_of(&c), "long_wait");
        let c = AdvisorConfig {
            quota_probe_interval: Duration::ZERO,
            ..base.clone()
        };
        assert_eq!(key_of(&c), "quota_probe_interval");
        let mut c = base.clone();
        c.providers.insert(
            "oa".into(),
            ProviderLimits {
                rpm: Some(0),
                ..ProviderLimits::default()
            },
        );
        assert_eq!(key_of(&c), "providers.oa.rpm");
        let mut c = base.clone();
        c.providers.insert(
            "oa".into(),
            ProviderLimits {
                rpm: Some(10),
                unlimited: Some(true),
                ..ProviderLimits::default()
            },
        );
        assert_eq!(key_of(&c), "providers.oa.unlimited");
        let mut c = base.clone();
        c.kinds.insert(
            ProviderKind::Gemini,
            KindDefault {
                initial_rps: -1.0,
                unlimited: false,
            },
        );
        assert_eq!(key_of(&c), "kinds.gemini.initial_rps");
    }
}
