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
//! ("Incorrect API key provided: …", as OpenAI answers). `limits.rps`, `limits.rpm` and
//! `limits.tpm` are token buckets per key holding `limits.burst` of refill
//! (default one second's worth). A request costs one request token and
//! *prompt + completion tokens* of the token bucket (the reply is known
//! before the check). Over the limit: 429 with `retry-after-ms` (exact,
//! rounded up) and `retry-after` (whole seconds, rounded up); the request
//! takes nothing from the buckets. Keys appear in `/stats` as they were
//! sent: the simulator is for test keys.
//!
//! Every response that went through the limits (2xx, 429, faults) carries
//! the limit headers of each configured limit: on `/v1/chat/completions`
//! `x-ratelimit-limit-requests` (per minute), `x-ratelimit-remaining-requests`
//! (whole tokens left), `x-ratelimit-reset-requests` (time until the bucket
//! is full: `"850ms"`, `"1s"`, `"1.5s"`, `"6m0s"`) and the `-tokens` variants;
//! on `/v1/messages` `anthropic-ratelimit-requests-limit`, `-remaining`,
//! `-reset` (RFC 3339, rounded up to the second) and the `tokens` variants.
//! With both `rps` and `rpm`, the request headers report the per-minute
//! limit and whichever bucket is emptier. With `limits.headerless` a limited
//! request gets a bare 429 — no body, no `retry-after` — and no response
//! carries limit headers.
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
    Distribution, FaultsConfig, LatencyConfig, LimitsConfig, MAX_TEXT_TOKENS, OutageConfig,
    OutageMode, OutageWindow, ReplyConfig, SimConfig,
};
pub use error::Error;
pub use reply::{Reply, ReplyKind, estimate_tokens, reply};
pub use server::{ANONYMOUS_KEY, Sim, SimHandle};
pub use stats::{ClassCounts, Concurrency, KeyStats, SecondStats, StatsSnapshot, TokenCounts};
