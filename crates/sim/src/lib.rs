//! A simulated LLM provider server with real rate-limit behaviour.
//!
//! runnel's demo, end-to-end tests and benchmarks run against it over real
//! sockets on 127.0.0.1; any other LLM client can be tested against it too.
//! It speaks OpenAI Chat Completions and Anthropic Messages (JSON and SSE),
//! enforces per-key limits the way the real services do, injects seeded
//! faults and outages, and makes up deterministic replies that a test can
//! predict.
//!
//! **Architecture invariant:** this crate knows nothing of experiments: it
//! is a provider, not a client. Of the runnel crates it uses only
//! `runnel-core`'s duration syntax (`runnel_core::duration`, so `runnel sim`
//! and the server read the same texts), never its scheduling, ports or types. Its only clock for limits, outage windows and
//! statistics is [`SimClock`], so tests step time with a [`ManualClock`]
//! instead of sleeping.
//!
//! # Use
//!
//! ```
//! use runnel_sim::{Sim, SimConfig};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let mut config = SimConfig::default(); // 127.0.0.1:0, no limits, no faults
//! config.limits.rpm = Some(600.0);
//! let sim = Sim::start(config).await?;
//! let reply = reqwest::Client::new()
//!     .post(format!("{}/v1/chat/completions", sim.url()))
//!     .bearer_auth("sk-test")
//!     .json(&serde_json::json!({
//!         "model": "any",
//!         "messages": [{"role": "user", "content": "What is 17 + 25?"}]
//!     }))
//!     .send()
//!     .await?;
//! assert_eq!(reply.headers()["x-ratelimit-limit-requests"], "600");
//! let body: serde_json::Value = reply.json().await?;
//! assert_eq!(body["choices"][0]["message"]["content"], "42");
//! assert_eq!(sim.stats().classes.ok, 1);
//! sim.shutdown().await;
//! # Ok(())
//! # }
//! ```
//!
//! From the command line: `cargo xtask sim --rpm 60 --latency 200ms` or
//! `runnel sim …` (both embed [`Args`] and call [`run`]).
//!
//! # Endpoints
//!
//! | route | what |
//! |---|---|
//! | `POST /v1/chat/completions` | OpenAI-compatible; `"stream": true` gives SSE chunks ending with `data: [DONE]`; `stream_options.include_usage` adds a usage chunk |
//! | `POST /v1/messages` | Anthropic-compatible; `"stream": true` gives `message_start`, `content_block_start`, `ping`, `content_block_delta`…, `content_block_stop`, `message_delta`, `message_stop` |
//! | `GET /stats` | [`StatsSnapshot`] as JSON |
//! | `GET /admin/config` | the [`SimConfig`] in force |
//! | `POST /admin/config` | a JSON merge patch of the config (`{"limits": {"rpm": 30}}`; `null` restores a default); answers the new config, or 400 naming the bad key |
//! | `POST /admin/reset` | zeroes the stats, refills every bucket, restarts the fault sequence |
//! | `GET /healthz` | `{"status":"ok"}` |
//!
//! Anything else is 404 (405 for a known path with another method), with an
//! OpenAI-style error body `{"error": {"message", "type", "param", "code"}}`.
//! Bad provider request bodies get 400 with the error body of that API
//! (OpenAI's above; Anthropic's `{"type": "error", "error": {"type",
//! "message"}}`), and the message says what is wrong. Only HTTP/1.1 is
//! served.
//!
//! # Keys and rate limits
//!
//! The key is the API key from `Authorization: Bearer …`, `x-api-key` or
//! `api-key` (`anonymous` when none is sent, unless `require_key`), or
//! `key/model` with `limits.per_model`. With `accepted_keys` set, any other
//! key gets 401 `invalid_api_key` with a message that repeats the key
//! ("Incorrect API key provided: …", as OpenAI answers). Keys appear in
//! `/stats` as they were sent: the simulator is for test keys.
//!
//! **Enforcing.** `limits.rps`, `limits.rpm` and `limits.tpm` are enforced
//! per key by `limits.algorithm`: `bucket` (default) — token buckets
//! holding `limits.burst` of refill (default one second's worth);
//! `fixed_window` — at most `rate × window` per `limits.window` (default
//! 10 s), windows following each other from the simulator's start;
//! `sliding_window` — at most `rate × window` in any trailing window.
//! `limits.rpd` adds a per-day request count, in fixed days from the start.
//! A request costs one request and *prompt + completion tokens* of the token
//! limit (the reply is known before the check; a 16,000-character prompt is
//! 4,000 tokens). Over a limit: 429, and the request takes nothing. A cost
//! larger than a limit's capacity passes once the limit is as empty as it
//! gets, so nothing is refused forever.
//!
//! **Announcing.** `limits.dialect` picks which provider's headers every
//! response that went through the limits (2xx, 429, faults) carries:
//!
//! | dialect | headers |
//! |---|---|
//! | `openai` (default) | `x-ratelimit-{limit,remaining,reset}-{requests,tokens}` of a *per-minute* bucket: limit = rpm (or rps × 60) and tpm, refilling over 60 s beside the enforcing limits (OpenAI enforces over shorter periods than it announces), so one request against 3000/min shows `2999` and `20ms`; reset as Go durations (`"20ms"`, `"1.5s"`, `"6m0s"`). On `/v1/messages` this default speaks `anthropic`. |
//! | `bucket` | the same names describing the enforcing request meter (the emptier of rps and rpm) and token meter: limit = capacity (`20`), remaining = what is left, reset = time until full (`"50ms"`) |
//! | `daily` (Groq) | `-requests` describe `rpd` (reset = time until the day's count is back to full), `-tokens` tokens per minute; the binding rps/rpm is announced by no header |
//! | `remaining` (Azure) | only `x-ratelimit-remaining-requests` and `-tokens`, of the enforcing meters |
//! | `anthropic` | `anthropic-ratelimit-{requests,tokens}-{limit,remaining,reset}` of the per-minute buckets, reset the RFC 3339 time of full replenishment (rounded up to the second), tokens left rounded to the nearest thousand; on both routes |
//! | `together` | `x-ratelimit-{limit,remaining,reset}` of a *per-second* bucket (reset in decimal seconds, a format Together does not document) and `x-tokenlimit-{limit,remaining}` |
//! | `none` | nothing (also `limits.headerless: true`) |
//!
//! A rate-limit 429 carries `retry-after-ms` (exact, rounded up) and
//! `retry-after` (whole seconds, rounded up) in `openai`, `bucket` and
//! `remaining`; only `retry-after` in `daily`, `anthropic` and `together`;
//! and in `none` nothing at all, not even a body. Its body (the route's
//! error format) names the limit that binds the way OpenAI and Groq do:
//! `Rate limit reached for <model> on tokens per min (TPM): Limit 40000,
//! Used 39000, Requested 4100. Please try again in 1.2s.`, with OpenAI
//! `type` `tokens` for the token limit and `requests` for the request and
//! day limits (`requests per min (RPM)`, `requests per day (RPD)`; per
//! second under `together`), code `rate_limit_exceeded`.
//!
//! **Others on the key.** `limits.hidden_share` (in `[0, 1)`) gives every
//! key a hidden second client that uses that share of each limit's rate
//! continuously: buckets refill at `(1 − share) × rate`, windows fill with
//! `share × rate × time`. `/stats` counts its requests as `hidden`, apart
//! from `requests`.
//!
//! **Quota.** After `limits.quota_after` admitted requests a key gets only
//! quota-exhaustion 429s, without `retry-after`, until a config change
//! raises or removes the number (or `/admin/reset`). `limits.quota_style`:
//! `openai` (`insufficient_quota`, "You exceeded your current quota…"),
//! `anthropic` (`rate_limit_error` with `error.details.error_code:
//! "enforced_spend_limit_reached"`), `gemini` (`RESOURCE_EXHAUSTED` with a
//! `google.rpc.QuotaFailure` naming a `…PerDay…` `quotaId` and a
//! `google.rpc.RetryInfo` `retryDelay` of the seconds to the next whole
//! minute, short as Gemini's are), or `long_retry` (an ordinary rate-limit
//! 429 with `retry-after: 3600`). They count in `rate_limited` and in
//! `quota_exhausted`. Under `none` a quota body is still sent (without
//! headers), and `long_retry` is a bare 429.
//!
//! `/stats` also counts `repeated_successes`: successful replies to a
//! request whose route, model and prompt had already been answered
//! successfully (since start or reset) — paid calls a client repeated;
//! identical prompts sent on purpose count too.
//!
//! # Latency, faults, outages
//!
//! Each admitted request waits `latency.base` spread by `latency.jitter`
//! (`uniform`, `normal` or `exponential`) before its headers;
//! streamed events are `latency.stream_chunk_delay` apart. Then one seeded
//! draw (seed `seed`, and the request's number since start or reset, so the
//! same seed and the same order of requests give the same faults) picks
//! at most one fault: `server_error_rate` (500/502/503),
//! `overloaded_rate` (529 `overloaded_error`), `reset_rate` (TCP reset
//! before any byte, or — `reset_after_headers` of the time — after the
//! headers and half the body or events), `malformed_rate` (a 200 whose JSON
//! is cut in half, or a stream whose first text event carries cut JSON).
//! During an outage (`outage.active`, or inside one of `outage.windows`,
//! counted from start) provider requests are reset at once (`refuse`) or
//! answered 503 (`"503"`); admin, stats and health keep answering.
//!
//! # Replies
//!
//! The prompt is every message's text joined by newlines, the system prompt
//! first. Its reply follows the first rule that applies:
//!
//! 1. **Judge.** The prompt names two or more labels in capitals (letters,
//!    digits, `_`, `-`) separated by `,` / `or` / `/` / `|`, right after
//!    *answer*, *respond*, *reply*, *output*, *return*, *say*, *choose*,
//!    *pick*, *select*, *label*, *classify*, *verdict*, *write* or *one of*
//!    (a few words such as "with only", "one of" and a colon may come
//!    between): `Answer CORRECT or INCORRECT`, `one of: A, B, C`. When the
//!    prompt has an expected value and a given one — `Expected 42; got 41`,
//!    `Expected: …` / `Got: …` (also `given`, `actual`), each value ending at
//!    a newline, `;` or the end of a sentence — the reply is the first label
//!    if they match (trimmed, case-insensitive) and the second if not;
//!    otherwise a label picked by a hash of the prompt. A short explanation
//!    follows on the next line (never naming a label).
//! 2. **Score.** The prompt has a range `from 1 to 10` or `between 0 and 5`
//!    (also `from 1-10`), or mentions a score, rate, rating, grade or scale with
//!    a range `of 1 to 10` / `of 1-10`: the reply is a number in range — the
//!    top when expected and given match, the bottom when they differ, else
//!    picked by hash — then an explanation line.
//! 3. **Arithmetic.** `a + b`, `a - b` (or `−`), `a × b` (or `*`, `x`),
//!    also `plus`, `minus`, `times`, with integer operands, asked as a
//!    question (after *is*, *what's*, *compute*, *calculate*, *evaluate*,
//!    *solve*, or followed by `?` or `=`): the result, e.g. `What is 17 +
//!    25?` → `42`. The last such question in the prompt counts. A share
//!    `replies.wrong_rate` of prompts, chosen by a hash of the prompt, get
//!    a result off by 1 to 5 instead — always the same for the same prompt.
//! 4. **Text.** Lower-case filler words, derived from the prompt's hash, of
//!    about `replies.text_tokens` tokens, or the request's `max_tokens`, or
//!    `replies.default_text_tokens` (64).
//!
//! Every reply is cut to `max_tokens × 4` characters (finish reason
//! `length` / `max_tokens`). Tokens are estimated as characters / 4, rounded
//! up, for usage and for the token limit. [`reply()`] computes a reply
//! without a server.

mod body;
mod cli;
mod clock;
mod config;
mod dialect;
pub mod duration;
mod error;
mod limiter;
mod protocol;
pub mod reply;
mod rng;
mod server;
mod stats;

pub use cli::{Args, DEFAULT_CLI_LISTEN, run, run_blocking};
pub use clock::{ManualClock, SimClock};
pub use config::{
    Algorithm, Dialect, Distribution, FaultsConfig, LatencyConfig, LimitsConfig, MAX_TEXT_TOKENS,
    OutageConfig, OutageMode, OutageWindow, QuotaStyle, ReplyConfig, SimConfig,
};
pub use error::Error;
pub use reply::{Reply, ReplyKind, estimate_tokens, reply};
pub use server::{ANONYMOUS_KEY, Sim, SimHandle};
pub use stats::{ClassCounts, Concurrency, KeyStats, SecondStats, StatsSnapshot, TokenCounts};
