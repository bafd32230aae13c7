//! How a provider call ended (DESIGN §5). A failed call is data, not an `Err`:
//! every call ends in exactly one [`Outcome`], which decides whether the work
//! item is recorded, retried, or failed.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The reply of a successful call, already interpreted by the provider adapter.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Reply {
    /// A task call's output text.
    Task {
        /// The model's answer.
        output: String,
    },
    /// An evaluator's verdict.
    Eval {
        /// The label found in the reply (label evaluators).
        label: Option<String>,
        /// The numeric score (score evaluators, or the score of the label).
        score: Option<f64>,
        /// The rest of the reply, kept as the explanation.
        explanation: Option<String>,
    },
}

/// The class of a call's ending (DESIGN §5).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Outcome {
    /// 2xx with a parsable body.
    Success(Reply),
    /// 429, 529 overloaded, throttling: retried after a backoff that honours
    /// `retry_after`; never counts toward `max_retries` nor the breaker.
    RateLimited {
        /// How long the provider asked us to wait, if it said.
        retry_after: Option<Duration>,
        /// Which limit the provider named (requests, tokens, or neither).
        scope: LimitScope,
        /// What the provider said (credentials removed).
        message: String,
    },
    /// The key's quota, credit or spend cap is used up (OpenAI
    /// `insufficient_quota`, Anthropic's spend limit, a Gemini per-day quota,
    /// 402, or a `retry-after` longer than `advisor.long_wait`). Not a rate
    /// limit: the rate is not cut, the job waits for the quota without
    /// counting toward `max_retries` nor the breaker, and the experiment
    /// shows that it waits on quota until it gives up.
    QuotaExhausted {
        /// What the provider said (credentials removed).
        message: String,
        /// When the quota comes back, as a wait from the reply, if known.
        retry_after: Option<Duration>,
    },
    /// Timeout, connection error, 5xx, truncated stream: retried with
    /// exponential backoff up to `max_retries`; counts toward the breaker.
    Transient {
        /// What went wrong (credentials removed).
        message: String,
    },
    /// 4xx other than 429, unparsable body, template error: recorded as a
    /// failure at once.
    Permanent {
        /// What went wrong (credentials removed).
        message: String,
    },
}

impl Outcome {
    /// The outcome's class without its payload.
    pub fn class(&self) -> OutcomeClass {
        match self {
            Outcome::Success(_) => OutcomeClass::Success,
            Outcome::RateLimited { .. } => OutcomeClass::RateLimited,
            Outcome::QuotaExhausted { .. } => OutcomeClass::QuotaExhausted,
            Outcome::Transient { .. } => OutcomeClass::Transient,
            Outcome::Permanent { .. } => OutcomeClass::Permanent,
        }
    }

    /// The error text of a failed outcome.
    pub fn message(&self) -> Option<&str> {
        match self {
            Outcome::Success(_) => None,
            Outcome::RateLimited { message, .. }
            | Outcome::QuotaExhausted { message, .. }
            | Outcome::Transient { message }
            | Outcome::Permanent { message } => Some(message),
        }
    }
}

/// [`Outcome`] without payload, for metrics and observations.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum OutcomeClass {
    /// See [`Outcome::Success`].
    Success,
    /// See [`Outcome::RateLimited`].
    RateLimited,
    /// See [`Outcome::QuotaExhausted`].
    QuotaExhausted,
    /// See [`Outcome::Transient`].
    Transient,
    /// See [`Outcome::Permanent`].
    Permanent,
}

impl OutcomeClass {
    /// Lower-case name used in metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            OutcomeClass::Success => "success",
            OutcomeClass::RateLimited => "rate_limited",
            OutcomeClass::QuotaExhausted => "quota_exhausted",
            OutcomeClass::Transient => "transient",
            OutcomeClass::Permanent => "permanent",
        }
    }
}

/// Which limit a 429 names: OpenAI's "… on tokens per min (TPM)", Groq's
/// `type: "tokens"` and Anthropic's token rate-limit errors name the token
/// limit; a 429 that names neither is [`LimitScope::Unknown`] and is taken
/// for the request limit. A tokens-429 lowers the token rate, not the
/// request rate.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LimitScope {
    /// The provider did not say.
    #[default]
    Unknown,
    /// The request limit (RPM, RPS).
    Requests,
    /// A token limit (TPM, input or output tokens per minute).
    Tokens,
}

/// Token usage reported by the provider.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    /// Prompt (input) tokens.
    pub prompt_tokens: u64,
    /// Completion (output) tokens.
    pub completion_tokens: u64,
}

impl Usage {
    /// Prompt plus completion tokens.
    pub fn total(&self) -> u64 {
        self.prompt_tokens.saturating_add(self.completion_tokens)
    }
}

/// Rate-limit information a provider sent with a reply, normalised from any
/// of the dialects the provider adapter reads (`x-ratelimit-*`,
/// `anthropic-ratelimit-*`, `x-tokenlimit-*`, …; see `PROVIDERS.md`).
///
/// These are evidence, not orders: a header's name does not say its window
/// (per minute at OpenAI, per day at Groq, per second at Together), so
/// `*_window` is set only when the name states one (`-requests-day`,
/// `-tokens-minute`). Resets are durations from the moment the reply
/// arrived until the limit is full again (whatever the provider's format:
/// Go durations, RFC 3339 times, float seconds, epoch milliseconds).
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RateLimitHeaders {
    /// Requests allowed per window (window unknown unless `requests_window`).
    pub requests_limit: Option<u64>,
    /// Requests left now.
    pub requests_remaining: Option<u64>,
    /// Time until the request limit is full again.
    pub requests_reset: Option<Duration>,
    /// The window of the request limit, when the header's name states it.
    pub requests_window: Option<Duration>,
    /// Tokens allowed per window (window unknown unless `tokens_window`).
    pub tokens_limit: Option<u64>,
    /// Tokens left now.
    pub tokens_remaining: Option<u64>,
    /// Time until the token limit is full again.
    pub tokens_reset: Option<Duration>,
    /// The window of the token limit, when the header's name states it.
    pub tokens_window: Option<Duration>,
}

impl RateLimitHeaders {
    /// Whether any field is present.
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

/// Everything a provider call reports back.
#[derive(Clone, Debug, PartialEq)]
pub struct CallReport {
    /// How the call ended.
    pub outcome: Outcome,
    /// Wall time of the call.
    pub latency: Duration,
    /// Token usage, when the provider reported it.
    pub usage: Option<Usage>,
    /// Rate-limit headers seen on the reply, if any.
    pub rate_limits: Option<RateLimitHeaders>,
}

impl CallReport {
    /// A report with just an outcome and a latency.
    pub fn new(outcome: Outcome, latency: Duration) -> Self {
        Self {
            outcome,
            latency,
            usage: None,
            rate_limits: None,
        }
    }
}

/// What the advisor is told after each call (DESIGN §6).
#[derive(Clone, Debug, PartialEq)]
pub struct Observation {
    /// The class of the outcome.
    pub class: OutcomeClass,
    /// For rate-limited outcomes: the provider's requested pause; for
    /// quota exhaustion: the wait until the quota comes back, if known.
    pub retry_after: Option<Duration>,
    /// Rate-limit headers that came with the reply.
    pub headers: Option<RateLimitHeaders>,
    /// For rate-limited outcomes: which limit the provider named.
    pub scope: LimitScope,
    /// Tokens the call actually used, if known.
    pub tokens_used: Option<u64>,
    /// The tokens that were reserved for the call when it was permitted.
    pub tokens_reserved: Option<u64>,
}

impl Observation {
    /// An observation of just a class, with nothing else known.
    pub fn of(class: OutcomeClass) -> Self {
        Self {
            class,
            retry_after: None,
            headers: None,
            scope: LimitScope::Unknown,
            tokens_used: None,
            tokens_reserved: None,
        }
    }

    /// Builds the observation for a finished call.
    pub fn from_report(report: &CallReport, tokens_reserved: Option<u64>) -> Self {
        Self {
            class: report.outcome.class(),
            retry_after: match &report.outcome {
                Outcome::RateLimited { retry_after, .. } => *retry_after,
                Outcome::QuotaExhausted { retry_after, .. } => *retry_after,
                _ => None,
            },
            headers: report.rate_limits,
            scope: match &report.outcome {
                Outcome::RateLimited { scope, .. } => *scope,
                _ => LimitScope::Unknown,
            },
            tokens_used: report.usage.map(|u| u.total()),
            tokens_reserved,
        }
    }
}
