//! [`SimConfig`]: everything the simulator does, with documented defaults.
//! Loaded from JSON (a file, the server's own config loader, or an admin
//! patch); every part can be changed while the simulator runs.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::Error;
use crate::rng::Rng;

/// The simulator's whole configuration. Every field has a default
/// (`SimConfig::default()`): no limits, no latency, no faults, no outage.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SimConfig {
    /// Address to listen on; port 0 picks a free port. Default `127.0.0.1:0`.
    pub listen: SocketAddr,
    /// Seed of the fault and latency draws. Default 0.
    pub seed: u64,
    /// Answer provider requests that carry no API key with 401. Default
    /// false: such requests share the key `anonymous`.
    pub require_key: bool,
    /// The API keys accepted; empty (the default) accepts any key. A request
    /// with another key gets 401 `invalid_api_key` whose message repeats the
    /// key, as OpenAI's "Incorrect API key provided: …" does — so clients can
    /// prove they keep such echoes out of their logs and records.
    pub accepted_keys: Vec<String>,
    /// Largest accepted request body in bytes; larger ones get 413. Default 4 MiB.
    pub max_body_bytes: usize,
    /// On shutdown, how long open responses may run before their connections
    /// are cut. Default `5s`.
    #[serde(with = "crate::duration")]
    pub shutdown_grace: Duration,
    /// How many of the most recent seconds the `/stats` histogram keeps.
    /// Default 3600.
    pub histogram_seconds: usize,
    /// Rate limits per API key.
    pub limits: LimitsConfig,
    /// Response latency and streaming pace.
    pub latency: LatencyConfig,
    /// Random faults.
    pub faults: FaultsConfig,
    /// Outage windows and the manual outage switch.
    pub outage: OutageConfig,
    /// How replies are made up.
    pub replies: ReplyConfig,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            seed: 0,
            require_key: false,
            accepted_keys: Vec::new(),
            max_body_bytes: 4 * 1024 * 1024,
            shutdown_grace: Duration::from_secs(5),
            histogram_seconds: 3600,
            limits: LimitsConfig::default(),
            latency: LatencyConfig::default(),
            faults: FaultsConfig::default(),
            outage: OutageConfig::default(),
            replies: ReplyConfig::default(),
        }
    }
}

/// Rate limits per key (the API key, or the API key and the model with
/// `per_model`), how they are enforced (`algorithm`), and how they are
/// announced (`dialect`). A limit that is not set is not enforced and its
/// headers are not sent.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    /// Requests per second. Default: none.
    pub rps: Option<f64>,
    /// Requests per minute. Default: none.
    pub rpm: Option<f64>,
    /// Tokens (prompt + completion) per minute. Default: none.
    pub tpm: Option<f64>,
    /// How much refill time a bucket holds (`algorithm: bucket`): its
    /// capacity is `rate × burst` (at least one request). Default `1s`, so
    /// an idle key can send one second's worth at once, like the real
    /// services.
    #[serde(with = "crate::duration")]
    pub burst: Duration,
    /// Keep separate limits per API key *and* model (OpenAI's scope) instead
    /// of per API key (Anthropic's). Default false.
    pub per_model: bool,
    /// The old name of `dialect: none`: when true, the dialect is `none`
    /// whatever `dialect` says. Default false.
    pub headerless: bool,
    /// Which provider's rate-limit headers and 429s to imitate. Default
    /// `openai`.
    pub dialect: Dialect,
    /// How `rps`, `rpm` and `tpm` are enforced. Default `bucket`.
    pub algorithm: Algorithm,
    /// The window of the `fixed_window` and `sliding_window` algorithms.
    /// Default `10s`.
    #[serde(with = "crate::duration")]
    pub window: Duration,
    /// Requests per day, counted in fixed days from the simulator's start
    /// (an admin reset empties the count but keeps the day's boundaries),
    /// whatever the algorithm. Announced only by the
    /// `daily` dialect. Default: none.
    pub rpd: Option<f64>,
    /// Share, in `[0, 1)`, of every key's request and token capacity used by
    /// a hidden second client that sends continuously at this share of each
    /// limit's rate. Default 0.
    pub hidden_share: f64,
    /// After this many admitted requests on a key, every further request on
    /// it gets a quota-exhaustion 429 (see `quota_style`) until a config
    /// change raises or removes this. Default: none.
    pub quota_after: Option<u64>,
    /// How quota exhaustion is answered. Default `openai`.
    pub quota_style: QuotaStyle,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            rps: None,
            rpm: None,
            tpm: None,
            burst: Duration::from_secs(1),
            per_model: false,
            headerless: false,
            dialect: Dialect::default(),
            algorithm: Algorithm::default(),
            window: Duration::from_secs(10),
            rpd: None,
            hidden_share: 0.0,
            quota_after: None,
            quota_style: QuotaStyle::default(),
        }
    }
}

impl LimitsConfig {
    /// The dialect in force: `none` when `headerless` is set.
    pub fn effective_dialect(&self) -> Dialect {
        if self.headerless {
            Dialect::None
        } else {
            self.dialect
        }
    }
}

/// The rate-limit dialects of real providers (see the crate documentation
/// for the exact headers of each).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Dialect {
    /// OpenAI: `x-ratelimit-{limit,remaining,reset}-{requests,tokens}` of a
    /// per-minute bucket, resets as durations (`"20ms"`, `"6m0s"`).
    #[default]
    #[serde(rename = "openai")]
    #[value(name = "openai")]
    OpenAi,
    /// A server whose `x-ratelimit-*` headers describe its enforcing bucket:
    /// limit = its capacity, reset = time until it is full.
    Bucket,
    /// Groq: the `-requests` headers describe the per-day limit (`rpd`), the
    /// `-tokens` headers tokens per minute; the binding per-second or
    /// per-minute request limit is announced by no header.
    Daily,
    /// Azure OpenAI: only `x-ratelimit-remaining-{requests,tokens}`.
    Remaining,
    /// Anthropic: `anthropic-ratelimit-{requests,tokens}-{limit,remaining,reset}`
    /// per minute, resets as RFC 3339 times.
    Anthropic,
    /// Together: `x-ratelimit-{limit,remaining,reset}` and
    /// `x-tokenlimit-{limit,remaining}` per second.
    Together,
    /// No rate-limit headers; over the limit a bare 429.
    None,
}

/// How a rate is enforced.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Algorithm {
    /// Token buckets of `rate × burst` refilling continuously.
    #[default]
    Bucket,
    /// At most `rate × window` per window; windows follow each other from
    /// the simulator's start, and each starts empty.
    #[value(name = "fixed_window", alias = "fixed-window")]
    FixedWindow,
    /// At most `rate × window` in any trailing `window`.
    #[value(name = "sliding_window", alias = "sliding-window")]
    SlidingWindow,
}

/// How a key whose quota is used up (`quota_after`) is answered.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum QuotaStyle {
    /// 429 `insufficient_quota` ("You exceeded your current quota…"), no
    /// `retry-after`.
    #[default]
    #[serde(rename = "openai")]
    #[value(name = "openai")]
    OpenAi,
    /// 429 `rate_limit_error` with `error.details.error_code:
    /// "enforced_spend_limit_reached"`, no `retry-after`.
    Anthropic,
    /// 429 `RESOURCE_EXHAUSTED` with a per-day `QuotaFailure` and a
    /// `RetryInfo`.
    Gemini,
    /// An ordinary rate-limit 429 whose `retry-after` is an hour.
    #[value(name = "long_retry", alias = "long-retry")]
    LongRetry,
}

/// Response latency: `base`, spread by `jitter` according to `distribution`,
/// never below zero; and the pause between two streamed events.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LatencyConfig {
    /// Typical time before the response (its headers) is sent. Default `0s`.
    #[serde(with = "crate::duration")]
    pub base: Duration,
    /// Spread around `base`; zero makes the latency fixed. Default `0s`.
    #[serde(with = "crate::duration")]
    pub jitter: Duration,
    /// How the spread is drawn. Default `uniform`.
    pub distribution: Distribution,
    /// Pause before each streamed event after the first. Default `0s`.
    #[serde(with = "crate::duration")]
    pub stream_chunk_delay: Duration,
}

/// How latency is spread around its base.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Distribution {
    /// `base ± jitter`, uniformly.
    #[default]
    Uniform,
    /// Normal with mean `base` and standard deviation `jitter`.
    Normal,
    /// `base` plus an exponential tail with mean `jitter`.
    Exponential,
}

impl LatencyConfig {
    /// One latency draw.
    pub(crate) fn sample(&self, rng: &mut Rng) -> Duration {
        let base = self.base.as_secs_f64();
        let jitter = self.jitter.as_secs_f64();
        if jitter == 0.0 {
            return self.base;
        }
        let seconds = match self.distribution {
            Distribution::Uniform => base + jitter * (rng.unit() * 2.0 - 1.0),
            Distribution::Normal => {
                // Box–Muller; 1 - unit() is in (0, 1], so the logarithm is finite.
                let radius = (-2.0 * (1.0 - rng.unit()).ln()).sqrt();
                let angle = std::f64::consts::TAU * rng.unit();
                base + jitter * radius * angle.cos()
            }
            Distribution::Exponential => base - jitter * (1.0 - rng.unit()).ln(),
        };
        Duration::try_from_secs_f64(seconds.max(0.0)).unwrap_or(Duration::ZERO)
    }
}

/// Random faults. Each rate is the probability, in `[0, 1]`, that a request
/// admitted by the rate limits gets that fault instead of its reply; the
/// rates together must not exceed 1. Draws come from a generator seeded by
/// `seed` and the request's number, so a given seed and request order repeat.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FaultsConfig {
    /// A 500, 502 or 503 with an error body. Default 0.
    pub server_error_rate: f64,
    /// Anthropic's 529 `overloaded_error`. Default 0.
    pub overloaded_rate: f64,
    /// The connection is reset (TCP RST): before any response, or after the
    /// headers and part of the body. Default 0.
    pub reset_rate: f64,
    /// Of the resets, the share that happen after the headers and part of
    /// the body were sent (the rest come before any byte). Default 0.5.
    pub reset_after_headers: f64,
    /// A 200 whose body is not valid JSON, or a stream with one malformed
    /// event. Default 0.
    pub malformed_rate: f64,
}

impl Default for FaultsConfig {
    fn default() -> Self {
        Self {
            server_error_rate: 0.0,
            overloaded_rate: 0.0,
            reset_rate: 0.0,
            reset_after_headers: 0.5,
            malformed_rate: 0.0,
        }
    }
}

/// One drawn fault.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Fault {
    /// No fault: the normal reply.
    None,
    /// A 5xx with this status.
    ServerError(u16),
    /// 529 overloaded.
    Overloaded,
    /// Reset before any response byte.
    ResetBefore,
    /// Reset after the headers and part of the body.
    ResetDuring,
    /// Invalid JSON body or a malformed event.
    Malformed,
}

impl FaultsConfig {
    /// Draws this request's fault: one uniform number picks a band.
    pub(crate) fn draw(&self, rng: &mut Rng) -> Fault {
        let u = rng.unit();
        let mut edge = self.server_error_rate;
        if u < edge {
            return Fault::ServerError([500, 502, 503][rng.below(3) as usize]);
        }
        edge += self.overloaded_rate;
        if u < edge {
            return Fault::Overloaded;
        }
        edge += self.reset_rate;
        if u < edge {
            return if rng.unit() < self.reset_after_headers {
                Fault::ResetDuring
            } else {
                Fault::ResetBefore
            };
        }
        edge += self.malformed_rate;
        if u < edge {
            return Fault::Malformed;
        }
        Fault::None
    }
}

/// Outages: while one is on, provider requests fail as `mode` says; the
/// admin, stats and health endpoints keep answering so it can be switched off.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OutageConfig {
    /// How requests fail during an outage. Default `refuse`.
    pub mode: OutageMode,
    /// The manual switch: an outage is on while this is true. Default false.
    pub active: bool,
    /// Scheduled outages, in time since the simulator started. Default none.
    pub windows: Vec<OutageWindow>,
}

/// How requests fail during an outage.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
pub enum OutageMode {
    /// The connection is closed at once with a TCP reset, before any byte
    /// of a response (a request on a new connection sees its connection
    /// reset right after connecting and sending).
    #[default]
    #[serde(rename = "refuse")]
    #[value(name = "refuse")]
    Refuse,
    /// A 503 with an error body.
    #[serde(rename = "503", alias = "unavailable")]
    #[value(name = "503", alias = "unavailable")]
    Unavailable,
}

/// An outage from `start` to `end` (time since the simulator started;
/// `start` included, `end` excluded).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutageWindow {
    /// When the outage begins.
    #[serde(with = "crate::duration")]
    pub start: Duration,
    /// When it ends.
    #[serde(with = "crate::duration")]
    pub end: Duration,
}

impl OutageConfig {
    /// Whether an outage is on at `now` (time since start).
    pub fn is_down(&self, now: Duration) -> bool {
        self.active || self.windows.iter().any(|w| w.start <= now && now < w.end)
    }
}

/// How replies are made up (see the crate documentation for the rules).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ReplyConfig {
    /// Share of arithmetic questions answered wrongly, chosen by a hash of
    /// the prompt (the same prompt is always right or always wrong). Default 0.
    pub wrong_rate: f64,
    /// Length in tokens of free-text replies. Default: none, which means
    /// the request's `max_tokens`, or `default_text_tokens` without one.
    pub text_tokens: Option<u32>,
    /// Length of free-text replies when neither `text_tokens` nor the
    /// request's `max_tokens` says. Default 64.
    pub default_text_tokens: u32,
}

impl Default for ReplyConfig {
    fn default() -> Self {
        Self {
            wrong_rate: 0.0,
            text_tokens: None,
            default_text_tokens: 64,
        }
    }
}

/// Most tokens a free-text reply may be configured to (about 400 KB).
pub const MAX_TEXT_TOKENS: u32 = 100_000;

impl SimConfig {
    /// Reads a JSON document (all keys optional) and checks it.
    pub fn from_json(text: &str) -> Result<Self, Error> {
        let config: SimConfig =
            serde_json::from_str(text).map_err(|e| Error::Document(e.to_string()))?;
        config.validate()?;
        Ok(config)
    }

    /// This configuration with a JSON merge patch (RFC 7386) applied and
    /// checked: objects merge key by key, any other value replaces, `null`
    /// puts a key back to its default (for a limit: no limit).
    pub fn patched(&self, patch: &Value) -> Result<Self, Error> {
        if !patch.is_object() {
            return Err(Error::Document(
                "a config patch must be a JSON object".to_owned(),
            ));
        }
        let mut doc = serde_json::to_value(self).map_err(|e| Error::Document(e.to_string()))?;
        merge(&mut doc, patch);
        let next: SimConfig =
            serde_json::from_value(doc).map_err(|e| Error::Document(e.to_string()))?;
        next.validate()?;
        Ok(next)
    }

    /// Checks every value; the error names the offending key.
    pub fn validate(&self) -> Result<(), Error> {
        if self.max_body_bytes < 1024 {
            return Err(Error::config("max_body_bytes", "must be at least 1024"));
        }
        if !(1..=1_000_000).contains(&self.histogram_seconds) {
            return Err(Error::config(
                "histogram_seconds",
                "must be between 1 and 1000000",
            ));
        }
        let limits = [
            ("limits.rps", self.limits.rps),
            ("limits.rpm", self.limits.rpm),
            ("limits.tpm", self.limits.tpm),
        ];
        for (key, limit) in limits {
            if let Some(rate) = limit
                && !(rate.is_finite() && rate > 0.0)
            {
                return Err(Error::config(
                    key,
                    format!("must be a positive number, not {rate}"),
                ));
            }
        }
        if self.limits.burst.is_zero() {
            return Err(Error::config("limits.burst", "must be greater than zero"));
        }
        if self.limits.window.is_zero() {
            return Err(Error::config("limits.window", "must be greater than zero"));
        }
        if let Some(rpd) = self.limits.rpd
            && !(rpd.is_finite() && rpd >= 1.0)
        {
            return Err(Error::config(
                "limits.rpd",
                format!("must be a number of requests of at least 1, not {rpd}"),
            ));
        }
        let share = self.limits.hidden_share;
        if !(0.0..1.0).contains(&share) {
            return Err(Error::config(
                "limits.hidden_share",
                format!("must be at least 0 and less than 1, not {share}"),
            ));
        }
        let f = &self.faults;
        let rates = [
            ("faults.server_error_rate", f.server_error_rate),
            ("faults.overloaded_rate", f.overloaded_rate),
            ("faults.reset_rate", f.reset_rate),
            ("faults.reset_after_headers", f.reset_after_headers),
            ("faults.malformed_rate", f.malformed_rate),
            ("replies.wrong_rate", self.replies.wrong_rate),
        ];
        for (key, rate) in rates {
            if !(0.0..=1.0).contains(&rate) {
                return Err(Error::config(
                    key,
                    format!("must be between 0 and 1, not {rate}"),
                ));
            }
        }
        let total = f.server_error_rate + f.overloaded_rate + f.reset_rate + f.malformed_rate;
        if total > 1.0 + 1e-9 {
            return Err(Error::config(
                "faults",
                format!("the fault rates add up to {total}, more than 1"),
            ));
        }
        for (i, w) in self.outage.windows.iter().enumerate() {
            if w.start >= w.end {
                return Err(Error::config(
                    format!("outage.windows[{i}]"),
                    "start must be before end",
                ));
            }
        }
        let tokens = [
            ("replies.text_tokens", self.replies.text_tokens),
            (
                "replies.default_text_tokens",
                Some(self.replies.default_text_tokens),
            ),
        ];
        for (key, value) in tokens {
            if let Some(n) = value
                && !(1..=MAX_TEXT_TOKENS).contains(&n)
            {
                return Err(Error::config(
                    key,
                    format!("must be between 1 and {MAX_TEXT_TOKENS}, not {n}"),
                ));
            }
        }
        Ok(())
    }
}

/// RFC 7386 merge: objects merge recursively, `null` removes (so the serde
/// default applies), anything else replaces.
fn merge(target: &mut Value, patch: &Value) {
    match (target, patch) {
        (Value::Object(target), Value::Object(patch)) => {
            for (key, value) in patch {
                if value.is_null() {
                    target.remove(key);
                } else if let Some(slot) = target.get_mut(key) {
                    merge(slot, value);
                } else {
                    target.insert(key.clone(), value.clone());
                }
            }
        }
        (target, patch) => *target = patch.clone(),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn default_is_valid_and_round_trips_through_json() {
        let config = SimConfig::default();
        config.validate().unwrap();
        let text = serde_json::to_string(&config).unwrap();
        assert_eq!(SimConfig::from_json(&text).unwrap(), config);
        assert_eq!(SimConfig::from_json("{}").unwrap(), config);
    }

    #[test]
    fn patch_merges_nested_keys_and_null_restores_defaults() {
        let base = SimConfig::default()
            .patched(&json!({"limits": {"rpm": 60, "tpm": 1000}, "latency": {"base": "20ms"}}))
            .unwrap();
        assert_eq!(base.limits.rpm, Some(60.0));
        assert_eq!(base.limits.tpm, Some(1000.0));
        assert_eq!(base.latency.base, Duration::from_millis(20));

        let next = base
            .patched(
                &json!({"limits": {"tpm": null, "headerless": true}, "outage": {"mode": "503"}}),
            )
            .unwrap();
        assert_eq!(next.limits.rpm, Some(60.0), "untouched keys stay");
        assert_eq!(next.limits.tpm, None);
        assert!(next.limits.headerless);
        assert_eq!(next.outage.mode, OutageMode::Unavailable);
        assert_eq!(next.latency.base, Duration::from_millis(20));
    }

    #[test]
    fn patch_errors_name_the_key() {
        let base = SimConfig::default();
        let err = base.patched(&json!({"limits": {"rqm": 5}})).unwrap_err();
        assert!(err.to_string().contains("rqm"), "{err}");
        let err = base
            .patched(&json!({"faults": {"reset_rate": 1.5}}))
            .unwrap_err();
        assert!(err.to_string().contains("faults.reset_rate"), "{err}");
        let err = base
            .patched(&json!({"faults": {"reset_rate": 0.6, "server_error_rate": 0.6}}))
            .unwrap_err();
        assert!(err.to_string().contains("`faults`"), "{err}");
        let err = base.patched(&json!({"limits": {"rps": 0}})).unwrap_err();
        assert!(err.to_string().contains("limits.rps"), "{err}");
        let err = base
            .patched(&json!({"outage": {"windows": [{"start": "5s", "end": "2s"}]}}))
            .unwrap_err();
        assert!(err.to_string().contains("outage.windows[0]"), "{err}");
        let err = base.patched(&json!([1, 2])).unwrap_err();
        assert!(err.to_string().contains("JSON object"), "{err}");
    }

    #[test]
    fn dialect_keys_patch_validate_and_headerless_means_none() {
        let config = SimConfig::default()
            .patched(&json!({"limits": {
                "dialect": "daily", "algorithm": "sliding_window", "window": "1s",
                "rpd": 14400, "hidden_share": 0.25, "quota_after": 100, "quota_style": "long_retry"
            }}))
            .unwrap();
        let limits = &config.limits;
        assert_eq!(limits.dialect, Dialect::Daily);
        assert_eq!(limits.effective_dialect(), Dialect::Daily);
        assert_eq!(limits.algorithm, Algorithm::SlidingWindow);
        assert_eq!(limits.window, Duration::from_secs(1));
        assert_eq!(limits.rpd, Some(14400.0));
        assert_eq!(limits.quota_after, Some(100));
        assert_eq!(limits.quota_style, QuotaStyle::LongRetry);
        let text = serde_json::to_string(&config).unwrap();
        assert!(text.contains(r#""dialect":"daily""#), "{text}");
        assert!(text.contains(r#""quota_style":"long_retry""#), "{text}");
        assert_eq!(SimConfig::from_json(&text).unwrap(), config);
        let headerless = config
            .patched(&json!({"limits": {"headerless": true}}))
            .unwrap();
        assert_eq!(headerless.limits.effective_dialect(), Dialect::None);
        for (patch, key) in [
            (json!({"hidden_share": 1.0}), "limits.hidden_share"),
            (json!({"hidden_share": -0.1}), "limits.hidden_share"),
            (json!({"window": 0}), "limits.window"),
            (json!({"rpd": 0.5}), "limits.rpd"),
        ] {
            let err = config.patched(&json!({ "limits": patch })).unwrap_err();
            assert!(err.to_string().contains(key), "{err}");
        }
        let err = config
            .patched(&json!({"limits": {"dialect": "groq"}}))
            .unwrap_err();
        assert!(err.to_string().contains("groq"), "{err}");
        let err = config
            .patched(&json!({"limits": {"algorithm": "leaky"}}))
            .unwrap_err();
        assert!(err.to_string().contains("leaky"), "{err}");
    }

    #[test]
    fn outage_windows_are_half_open_and_the_switch_wins() {
        let mut outage = OutageConfig {
            windows: vec![OutageWindow {
                start: Duration::from_secs(10),
                end: Duration::from_secs(20),
            }],
            ..OutageConfig::default()
        };
        assert!(!outage.is_down(Duration::from_millis(9_999)));
        assert!(outage.is_down(Duration::from_secs(10)));
        assert!(outage.is_down(Duration::from_millis(19_999)));
        assert!(!outage.is_down(Duration::from_secs(20)));
        outage.active = true;
        assert!(outage.is_down(Duration::ZERO));
    }

    #[test]
    fn fault_draws_follow_the_rates() {
        let faults = FaultsConfig {
            server_error_rate: 0.1,
            overloaded_rate: 0.2,
            reset_rate: 0.3,
            reset_after_headers: 0.5,
            malformed_rate: 0.1,
        };
        let mut rng = Rng::new(9);
        let mut counts = std::collections::HashMap::new();
        let n = 20_000;
        for _ in 0..n {
            let key = match faults.draw(&mut rng) {
                Fault::ServerError(status) => {
                    assert!([500, 502, 503].contains(&status));
                    "5xx"
                }
                Fault::Overloaded => "529",
                Fault::ResetBefore | Fault::ResetDuring => "reset",
                Fault::Malformed => "malformed",
                Fault::None => "none",
            };
            *counts.entry(key).or_insert(0u32) += 1;
        }
        let share = |k: &str| f64::from(counts[k]) / f64::from(n);
        for (key, want) in [
            ("5xx", 0.1),
            ("529", 0.2),
            ("reset", 0.3),
            ("malformed", 0.1),
            ("none", 0.3),
        ] {
            assert!((share(key) - want).abs() < 0.02, "{key}: {}", share(key));
        }
        let all = FaultsConfig {
            reset_rate: 1.0,
            reset_after_headers: 1.0,
            ..FaultsConfig::default()
        };
        assert_eq!(all.draw(&mut rng), Fault::ResetDuring);
        assert_eq!(FaultsConfig::default().draw(&mut rng), Fault::None);
    }

    #[test]
    fn latency_draws_stay_in_their_distribution() {
        let mut rng = Rng::new(3);
        let fixed = LatencyConfig {
            base: Duration::from_millis(40),
            ..LatencyConfig::default()
        };
        assert_eq!(fixed.sample(&mut rng), Duration::from_millis(40));
        let uniform = LatencyConfig {
            base: Duration::from_millis(100),
            jitter: Duration::from_millis(20),
            ..LatencyConfig::default()
        };
        for _ in 0..1000 {
            let d = uniform.sample(&mut rng);
            assert!(
                d >= Duration::from_millis(80) && d <= Duration::from_millis(120),
                "{d:?}"
            );
        }
        for distribution in [Distribution::Normal, Distribution::Exponential] {
            let config = LatencyConfig {
                distribution,
                ..uniform.clone()
            };
            let draws: Vec<f64> = (0..20_000)
                .map(|_| config.sample(&mut rng).as_secs_f64())
                .collect();
            let mean = draws.iter().sum::<f64>() / draws.len() as f64;
            let want = if distribution == Distribution::Normal {
                0.100
            } else {
                0.120
            };
            assert!((mean - want).abs() < 0.002, "{distribution:?}: {mean}");
            if distribution == Distribution::Exponential {
                assert!(draws.iter().all(|d| *d >= 0.1 - 1e-9));
            }
        }
    }
}
