//! # runnel-providers
//!
//! LLM provider clients behind runnel-core's [`Provider`](runnel_core::Provider)
//! port: one [`Providers`] registry, built from the server's `[providers.*]`
//! entries, renders a job's prompt template, makes one HTTP call with
//! reqwest, reads the reply (whole or streamed), and classifies how the call
//! ended. It never panics on a reply and never returns an `Err` for a failed
//! call: every ending is an [`Outcome`](runnel_core::Outcome).
//!
//! Adapters: [`openai`] (Chat Completions: OpenAI, Azure OpenAI, Groq,
//! Together, DeepSeek, xAI, Fireworks, Mistral, Cerebras, and local vLLM /
//! Ollama servers), [`anthropic`] (Messages) and [`gemini`]
//! (`generateContent`). The [`template`] and [`verdict`] modules (prompt
//! placeholders; reading an evaluator's label or score) and [`redact`] are
//! usable on their own.
//!
//! **Architecture invariant:** depends on `runnel-core` only among the
//! workspace crates — never on the store, the advisor, the simulator or the
//! server. It makes no scheduling decision: no retries, no backoff, no rate
//! limiting; it reports what happened and the engine and advisor decide.
//! Credentials are read from the environment when the registry is built and
//! are never stored, logged, put in a URL, or echoed: every error text that
//! leaves the crate goes through [`redact::redact`].
//!
//! ## How a call ends
//!
//! | what happened | outcome |
//! |---|---|
//! | 2xx with a body that parses (or a stream that reached its final event) | `Success` |
//! | 429; Anthropic 529; any non-2xx whose error says rate limit / throttling / overloaded / `RESOURCE_EXHAUSTED` (not 401) | `RateLimited`, with `retry_after` from `retry-after-ms`, `retry-after` (seconds or HTTP date), or Gemini's `RetryInfo` |
//! | 402; 429 whose error says `insufficient_quota` / "exceeded your current quota" / billing / credit; Anthropic 429 `enforced_spend_limit_reached`; Gemini 429 `RESOURCE_EXHAUSTED` whose `QuotaFailure` names a per-day quota; a 429 whose wait is longer than `Settings::long_wait` (`advisor.long_wait`) | `QuotaExhausted`, with `retry_after` when the return is known (the stated wait; midnight Pacific for Gemini's daily quotas) |
//! | 408, 409, 5xx; timeout; connect error, reset or closed connection; body cut off | `Transient` |
//! | a stream that ends without its final event (`[DONE]` / `finish_reason`, `message_stop`, Gemini `finishReason`) | `Transient` ("truncated stream") |
//! | a malformed stream event (bad JSON, not UTF-8); an `error` event inside a stream | `Transient` (`RateLimited` when it says overloaded / rate limit) |
//! | 400, 401, 403, 404, 422 and other 4xx; unexpected 1xx/3xx (redirects are not followed) | `Permanent` |
//! | 2xx body that does not parse, or lacks the reply (no choices, no content, blocked) | `Permanent` |
//! | reply larger than `max_response_bytes` | `Permanent` |
//! | template error (unknown placeholder, missing field), unknown entry, key variable not set | `Permanent`, before any call |
//! | evaluator reply without a readable label / score | `Permanent`, quoting what was received |
//!
//! Messages include the provider's own error message when the body has one,
//! redacted and cut to `max_error_chars` (default 500).
//!
//! ## Rate-limit keys
//!
//! [`Provider::rate_key`](runnel_core::Provider::rate_key) follows each
//! kind's [`QuotaScope`](runnel_core::QuotaScope): per model
//! `entry|hash|base_url|model`, per deployment (Azure)
//! `entry|hash|base_url|deployment`, per account `entry|hash|base_url`,
//! unlimited (local) `entry|`. `hash` is the first 12 hex digits of the
//! SHA-256 of the key (`nokey` without one) — never the key itself.
//!
//! ## Example
//!
//! `examples/local_server.rs` starts a tiny server on 127.0.0.1 and runs a
//! task and an evaluator call through the registry:
//! `cargo run -p runnel-providers --example local_server`.

pub mod anthropic;
mod classify;
pub mod config;
mod error;
pub mod gemini;
pub mod openai;
mod quota;
pub mod ratelimit;
pub mod redact;
mod registry;
mod stream;
pub mod template;
pub mod verdict;
mod wire;

pub use config::{ProviderEntry, Settings, default_api_key_env, default_base_url};
pub use error::Error;
pub use registry::{Problem, Providers};

/// How an adapter builds a request body.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RequestOptions {
    /// Ask for a streamed reply.
    pub stream: bool,
    /// OpenAI-compatible streams: ask for usage in the last chunk.
    pub stream_usage: bool,
    /// `max_tokens` to send when the params have none.
    pub default_max_tokens: Option<u64>,
}

impl Default for RequestOptions {
    /// Not streamed; usage asked for when streamed; no default `max_tokens`.
    fn default() -> Self {
        Self {
            stream: false,
            stream_usage: true,
            default_max_tokens: None,
        }
    }
}
