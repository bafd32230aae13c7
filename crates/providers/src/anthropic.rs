//! The Anthropic Messages adapter.
//!
//! - `POST {base_url}/v1/messages` (a base URL already ending in `/v1` is
//!   not given a second one), key in `x-api-key`, protocol version in
//!   `anthropic-version` (the entry's `api_version`, default `2023-06-01`).
//! - System (and `developer`) messages become the top-level `system` text;
//!   the other messages are sent in order.
//! - `max_tokens` is required by the API: it comes from the spec's
//!   `max_tokens` or `max_completion_tokens`, else the entry's
//!   `default_max_tokens` (default 4096). `stop` becomes `stop_sequences`;
//!   other params pass through.
//! - Streaming: text from `content_block_delta` events, usage from
//!   `message_start` and `message_delta`; complete at `message_stop`. An
//!   `error` event (`overloaded_error`, …) ends the call with its class.
//!
//! A configured entry and one call (needs a running server, so not run here):
//!
//! ```no_run
//! use runnel_core::{Provider, ProviderKind};
//! use runnel_providers::{ProviderEntry, Providers, Settings};
//! # async fn demo(job: runnel_core::Job) {
//! let mut entry = ProviderEntry::new(ProviderKind::Anthropic); // reads ANTHROPIC_API_KEY
//! entry.default_max_tokens = Some(1024);
//! let providers = Providers::from_env([("claude".to_string(), entry)], Settings::default())
//!     .expect("valid configuration");
//! let report = providers.call(&job, None).await;
//! println!("{:?}, usage {:?}", report.outcome, report.usage);
//! # }
//! ```
//!
//! The request body it sends:
//!
//! ```
//! use runnel_core::Message;
//! use runnel_providers::{anthropic, RequestOptions};
//! let messages = [
//!     Message { role: "system".into(), content: "Be terse.".into() },
//!     Message { role: "user".into(), content: "Hi".into() },
//! ];
//! let params = serde_json::json!({"stop": "END"}).as_object().unwrap().clone();
//! let body = anthropic::request_body("claude-sonnet-4-5", &messages, &params, &RequestOptions::default());
//! assert_eq!(body, serde_json::json!({
//!     "model": "claude-sonnet-4-5", "max_tokens": 4096, "stop_sequences": ["END"],
//!     "system": "Be terse.", "messages": [{"role": "user", "content": "Hi"}],
//! }));
//! ```

use reqwest::Url;
use runnel_core::{Message, OutcomeClass, Usage};
use serde_json::{Map, Value, json};

use crate::RequestOptions;
use crate::classify::{Fault, classify_error_text, error_message};
use crate::wire::{
    Accumulator, Completion, Step, embedded_error, join, parse_event, parse_json, stop_list, u64_at,
};

/// `max_tokens` when neither the spec nor the options give one. Not a
/// setting: the protocol requires the field, and the registry always passes
/// the entry's `default_max_tokens` (the key users set, default 4096 for
/// this kind), so this is reached only by direct callers of the adapter.
const FALLBACK_MAX_TOKENS: u64 = 4096;

/// `{base}/v1/messages`, or `{base}/messages` when `base` ends in `/v1`.
pub fn endpoint(base: &Url) -> Url {
    if base.path().trim_end_matches('/').ends_with("/v1") {
        join(base, &["messages"])
    } else {
        join(base, &["v1", "messages"])
    }
}

/// The JSON body of a Messages request.
pub fn request_body(
    model: &str,
    messages: &[Message],
    params: &Map<String, Value>,
    options: &RequestOptions,
) -> Value {
    let mut body = params.clone();
    body.remove("stream");
    body.remove("stream_options");
    if let Some(n) = body.remove("max_completion_tokens") {
        body.entry("max_tokens").or_insert(n);
    }
    if let Some(stop) = body.remove("stop") {
        body.entry("stop_sequences").or_insert(stop_list(stop));
    }
    body.insert("model".into(), json!(model));
    body.entry("max_tokens").or_insert(json!(
        options.default_max_tokens.unwrap_or(FALLBACK_MAX_TOKENS)
    ));
    if options.stream {
        body.insert("stream".into(), json!(true));
    }
    let system: Vec<&str> = messages
        .iter()
        .filter(|m| matches!(m.role.as_str(), "system" | "developer"))
        .map(|m| m.content.as_str())
        .collect();
    if !system.is_empty() {
        body.insert("system".into(), json!(system.join("\n\n")));
    }
    let turns: Vec<Value> = messages
        .iter()
        .filter(|m| !matches!(m.role.as_str(), "system" | "developer"))
        .map(|m| json!({"role": m.role, "content": m.content}))
        .collect();
    body.insert("messages".into(), Value::Array(turns));
    Value::Object(body)
}

/// Input tokens, counting cache writes and reads (they count toward limits).
fn input_tokens(u: &Value) -> u64 {
    [
        "/input_tokens",
        "/cache_creation_input_tokens",
        "/cache_read_input_tokens",
    ]
    .iter()
    .filter_map(|p| u64_at(u, p))
    .sum()
}

fn usage(u: &Value) -> Option<Usage> {
    u.is_object().then(|| Usage {
        prompt_tokens: input_tokens(u),
        completion_tokens: u64_at(u, "/output_tokens").unwrap_or(0),
    })
}

/// Reads a non-streamed reply.
pub(crate) fn parse_reply(body: &[u8]) -> Result<Completion, Fault> {
    let v = parse_json(body, "reply body")?;
    let Some(content) = v.get("content").and_then(Value::as_array) else {
        return Err(embedded_error(&v, OutcomeClass::Permanent)
            .unwrap_or_else(|| Fault::permanent("reply has no content")));
    };
    let text: String = content
        .iter()
        .filter(|b| b.get("type").and_then(Value::as_str) == Some("text"))
        .filter_map(|b| b.get("text").and_then(Value::as_str))
        .collect();
    if text.is_empty() && v.get("stop_reason").and_then(Value::as_str) == Some("refusal") {
        return Err(Fault::permanent("the model refused to answer"));
    }
    Ok(Completion {
        text,
        usage: v.get("usage").and_then(usage),
    })
}

/// Decodes a streamed reply, one SSE event at a time.
#[derive(Debug, Default)]
pub(crate) struct Decoder {
    reply: Accumulator,
    prompt_tokens: Option<u64>,
    completion_tokens: Option<u64>,
}

impl Decoder {
    /// Takes one event; text deltas go to `sink`.
    pub(crate) fn event(
        &mut self,
        name: &str,
        data: &str,
        sink: &mut dyn FnMut(&str),
    ) -> Result<Step, Fault> {
        let v = parse_event(data)?;
        let kind = v.get("type").and_then(Value::as_str).unwrap_or(name);
        match kind {
            "message_start" => {
                if let Some(u) = v.pointer("/message/usage") {
                    self.prompt_tokens = Some(input_tokens(u));
                    self.completion_tokens = u64_at(u, "/output_tokens");
                }
            }
            "content_block_delta" => {
                if let Some(delta) = v.pointer("/delta/text").and_then(Value::as_str) {
                    self.reply.push(delta, sink);
                }
            }
            "message_delta" => {
                if let Some(u) = v.get("usage") {
                    if let Some(out) = u64_at(u, "/output_tokens") {
                        self.completion_tokens = Some(out);
                    }
                    if u.get("input_tokens").is_some() {
                        self.prompt_tokens = Some(input_tokens(u));
                    }
                }
            }
            "message_stop" => return Ok(Step::Done),
            "error" => {
                let message = error_message(&v).unwrap_or_else(|| "unknown error".into());
                return Err(classify_error_text(
                    format!("provider error in stream: {message}"),
                    OutcomeClass::Transient,
                ));
            }
            // ping, content_block_start, content_block_stop, and event types
            // added later: nothing to do.
            _ => {}
        }
        Ok(Step::More)
    }

    /// Ends the stream; `done` says whether `message_stop` arrived.
    pub(crate) fn finish(mut self, done: bool) -> Result<Completion, Fault> {
        if self.prompt_tokens.is_some() || self.completion_tokens.is_some() {
            self.reply.usage = Some(Usage {
                prompt_tokens: self.prompt_tokens.unwrap_or(0),
                completion_tokens: self.completion_tokens.unwrap_or(0),
            });
        }
        self.reply.finish(done)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{check_failures, messages};

    #[test]
    fn endpoints_do_not_double_the_version() {
        for base in ["https://api.anthropic.com", "https://api.anthropic.com/v1/"] {
            assert_eq!(
                endpoint(&Url::parse(base).unwrap()).as_str(),
                "https://api.anthropic.com/v1/messages"
            );
        }
    }

    #[test]
    fn bodies_translate_openai_names() {
        let params = json!({"max_completion_tokens": 10, "temperature": 1, "stop": ["a", "b"]});
        let msgs = messages(&[
            ("system", "one"),
            ("developer", "two"),
            ("user", "q"),
            ("assistant", "a"),
        ]);
        let body = request_body(
            "c",
            &msgs,
            params.as_object().unwrap(),
            &RequestOptions {
                stream: true,
                default_max_tokens: Some(99),
                ..RequestOptions::default()
            },
        );
        assert_eq!(
            body,
            json!({"model": "c", "max_tokens": 10, "temperature": 1, "stop_sequences": ["a", "b"],
                   "stream": true, "system": "one\n\ntwo",
                   "messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]})
        );
    }

    #[test]
    fn replies() {
        let ok = br#"{"id":"msg_1","type":"message","role":"assistant",
            "content":[{"type":"thinking","thinking":"hmm"},{"type":"text","text":"Hi "},{"type":"text","text":"there"}],
            "stop_reason":"end_turn",
            "usage":{"input_tokens":10,"cache_read_input_tokens":5,"output_tokens":3}}"#;
        assert_eq!(
            parse_reply(ok),
            Ok(Completion {
                text: "Hi there".into(),
                usage: Some(Usage {
                    prompt_tokens: 15,
                    completion_tokens: 3
                })
            })
        );
        check_failures(
            parse_reply,
            &[
                (
                    r#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#,
                    OutcomeClass::RateLimited,
                    "overloaded_error: Overloaded",
                ),
                (
                    r#"{"content":[],"stop_reason":"refusal"}"#,
                    OutcomeClass::Permanent,
                    "refused",
                ),
                ("[]", OutcomeClass::Permanent, "reply has no content"),
            ],
        );
    }

    #[test]
    fn streams() {
        let mut d = Decoder::default();
        let mut seen = String::new();
        let mut sink = |t: &str| seen.push_str(t);
        let events = [
            (
                "message_start",
                r#"{"type":"message_start","message":{"usage":{"input_tokens":7,"output_tokens":1}}}"#,
            ),
            (
                "content_block_start",
                r#"{"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}"#,
            ),
            ("ping", r#"{"type":"ping"}"#),
            (
                "content_block_delta",
                r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Hi"}}"#,
            ),
            (
                "content_block_delta",
                r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"!"}}"#,
            ),
            (
                "content_block_stop",
                r#"{"type":"content_block_stop","index":0}"#,
            ),
            (
                "message_delta",
                r#"{"type":"message_delta","delta":{"stop_reason":"end_turn"},"usage":{"output_tokens":4}}"#,
            ),
        ];
        for (name, data) in events {
            assert_eq!(d.event(name, data, &mut sink), Ok(Step::More), "{name}");
        }
        assert_eq!(
            d.event("message_stop", r#"{"type":"message_stop"}"#, &mut sink),
            Ok(Step::Done)
        );
        assert_eq!(
            d.finish(true),
            Ok(Completion {
                text: "Hi!".into(),
                usage: Some(Usage {
                    prompt_tokens: 7,
                    completion_tokens: 4
                })
            })
        );
        assert_eq!(seen, "Hi!");

        let mut d = Decoder::default();
        let f = d
            .event(
                "error",
                r#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#,
                &mut |_| {},
            )
            .unwrap_err();
        assert_eq!(f.class, OutcomeClass::RateLimited);
        let f = Decoder::default().finish(false).unwrap_err();
        assert!(f.message.starts_with("truncated stream"));
    }
}
