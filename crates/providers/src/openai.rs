//! The OpenAI Chat Completions adapter: OpenAI itself, Azure OpenAI
//! deployments, and every compatible server (Groq, Together, DeepSeek, xAI,
//! Fireworks, Mistral, Cerebras, vLLM, Ollama, llama.cpp).
//!
//! - `POST {base_url}/chat/completions`, key as `Authorization: Bearer …`;
//!   Azure: `POST {base_url}/openai/deployments/{model}/chat/completions?api-version=…`
//!   with the key in `api-key` (the call spec's `model` names the deployment).
//! - `params` are passed through as body fields; `max_tokens` is added from
//!   the entry's `default_max_tokens` when the spec has none.
//! - Streaming adds `"stream": true` and, unless the entry turns it off,
//!   `"stream_options": {"include_usage": true}`; the stream is complete at
//!   `data: [DONE]` (or once a choice has a `finish_reason`).
//!
//! A configured entry and one call (needs a running server, so not run here):
//!
//! ```no_run
//! use std::sync::Arc;
//! use runnel_core::{CallSpec, Message, Provider, ProviderKind};
//! use runnel_providers::{ProviderEntry, Providers, Settings};
//! # async fn demo(job: runnel_core::Job) {
//! let entry = ProviderEntry::new(ProviderKind::OpenAi); // reads OPENAI_API_KEY
//! let providers = Providers::from_env([("openai".to_string(), entry)], Settings::default())
//!     .expect("valid configuration");
//! // `job` carries a CallSpec with provider "openai" and a model such as "gpt-4o-mini".
//! let report = providers.call(&job, Some(Arc::new(|chunk: &str| print!("{chunk}")))).await;
//! println!("{:?} in {:?}", report.outcome, report.latency);
//! # }
//! ```
//!
//! The request body it sends:
//!
//! ```
//! use runnel_core::Message;
//! use runnel_providers::{openai, RequestOptions};
//! let messages = [Message { role: "user".into(), content: "Hi".into() }];
//! let params = serde_json::json!({"temperature": 0}).as_object().unwrap().clone();
//! let body = openai::request_body("gpt-4o-mini", &messages, &params,
//!     &RequestOptions { stream: true, ..RequestOptions::default() });
//! assert_eq!(body, serde_json::json!({
//!     "model": "gpt-4o-mini", "temperature": 0, "stream": true,
//!     "stream_options": {"include_usage": true},
//!     "messages": [{"role": "user", "content": "Hi"}],
//! }));
//! ```

use reqwest::Url;
use runnel_core::{Message, OutcomeClass, Usage};
use serde_json::{Map, Value, json};

use crate::RequestOptions;
use crate::classify::Fault;
use crate::wire::{
    Accumulator, Completion, Step, embedded_error, join, parse_event, parse_json, u64_at,
};

/// `{base}/chat/completions`.
pub fn endpoint(base: &Url) -> Url {
    join(base, &["chat", "completions"])
}

/// `{base}/openai/deployments/{deployment}/chat/completions?api-version={version}`.
pub fn azure_endpoint(base: &Url, deployment: &str, api_version: &str) -> Url {
    let mut url = join(
        base,
        &["openai", "deployments", deployment, "chat", "completions"],
    );
    url.query_pairs_mut()
        .append_pair("api-version", api_version);
    url
}

/// The JSON body of a Chat Completions request.
pub fn request_body(
    model: &str,
    messages: &[Message],
    params: &Map<String, Value>,
    options: &RequestOptions,
) -> Value {
    let mut body = params.clone();
    body.remove("stream");
    body.insert("model".into(), json!(model));
    if !body.contains_key("max_tokens")
        && !body.contains_key("max_completion_tokens")
        && let Some(n) = options.default_max_tokens
    {
        body.insert("max_tokens".into(), json!(n));
    }
    if options.stream {
        body.insert("stream".into(), json!(true));
        if options.stream_usage && !body.contains_key("stream_options") {
            body.insert("stream_options".into(), json!({"include_usage": true}));
        }
    } else {
        body.remove("stream_options");
    }
    let messages: Vec<Value> = messages
        .iter()
        .map(|m| json!({"role": m.role, "content": m.content}))
        .collect();
    body.insert("messages".into(), Value::Array(messages));
    Value::Object(body)
}

fn usage(v: &Value) -> Option<Usage> {
    let u = v.get("usage").filter(|u| u.is_object())?;
    Some(Usage {
        prompt_tokens: u64_at(u, "/prompt_tokens").unwrap_or(0),
        completion_tokens: u64_at(u, "/completion_tokens").unwrap_or(0),
    })
}

/// Text of a `content` that is a string or a list of `{"type": "text", "text"}` parts.
fn content_text(content: &Value) -> Option<String> {
    match content {
        Value::String(s) => Some(s.clone()),
        Value::Array(parts) => Some(
            parts
                .iter()
                .filter_map(|p| p.get("text").and_then(Value::as_str))
                .collect(),
        ),
        _ => None,
    }
}

/// Reads a non-streamed reply.
pub(crate) fn parse_reply(body: &[u8]) -> Result<Completion, Fault> {
    let v = parse_json(body, "reply body")?;
    let Some(choice) = v.pointer("/choices/0") else {
        return Err(embedded_error(&v, OutcomeClass::Permanent)
            .unwrap_or_else(|| Fault::permanent("reply has no choices")));
    };
    let message = choice.get("message").unwrap_or(&Value::Null);
    let text = match message.get("content").and_then(content_text) {
        Some(text) => text,
        None => {
            if let Some(refusal) = message.get("refusal").and_then(Value::as_str) {
                return Err(Fault::permanent(format!("the model refused: {refusal}")));
            }
            let reason = choice
                .get("finish_reason")
                .and_then(Value::as_str)
                .unwrap_or("none given");
            return Err(Fault::permanent(format!(
                "reply has no text content (finish_reason: {reason})"
            )));
        }
    };
    Ok(Completion {
        text,
        usage: usage(&v),
    })
}

/// Decodes a streamed reply, one SSE event at a time.
#[derive(Debug, Default)]
pub(crate) struct Decoder(Accumulator);

impl Decoder {
    /// Takes one event; text deltas go to `sink`.
    pub(crate) fn event(&mut self, data: &str, sink: &mut dyn FnMut(&str)) -> Result<Step, Fault> {
        if data.trim() == "[DONE]" {
            return Ok(Step::Done);
        }
        let v = parse_event(data)?;
        if let Some(fault) = embedded_error(&v, OutcomeClass::Transient) {
            return Err(fault);
        }
        if let Some(u) = usage(&v) {
            self.0.usage = Some(u);
        }
        if let Some(choice) = v.pointer("/choices/0") {
            if let Some(delta) = choice.pointer("/delta/content").and_then(content_text) {
                self.0.push(&delta, sink);
            }
            if choice.get("finish_reason").is_some_and(|r| !r.is_null()) {
                self.0.finished = true;
            }
        }
        Ok(Step::More)
    }

    /// Ends the stream; `done` says whether `[DONE]` arrived. A choice with
    /// a `finish_reason` also completes it (only the usage chunk may be lost).
    pub(crate) fn finish(self, done: bool) -> Result<Completion, Fault> {
        self.0.finish(done)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{check_failures, messages};

    fn opts() -> RequestOptions {
        RequestOptions::default()
    }

    #[test]
    fn bodies_pass_params_and_fill_defaults() {
        let params = json!({"temperature": 0.2, "stream": true, "model": "ignored"});
        let msgs = messages(&[("system", "be brief")]);
        let body = request_body(
            "m",
            &msgs,
            params.as_object().unwrap(),
            &RequestOptions {
                default_max_tokens: Some(64),
                ..opts()
            },
        );
        assert_eq!(
            body,
            json!({"model": "m", "temperature": 0.2, "max_tokens": 64,
                   "messages": [{"role": "system", "content": "be brief"}]})
        );
        let params = json!({"max_completion_tokens": 9});
        let body = request_body(
            "m",
            &[],
            params.as_object().unwrap(),
            &RequestOptions {
                default_max_tokens: Some(64),
                stream: true,
                stream_usage: false,
            },
        );
        assert_eq!(
            body,
            json!({"model": "m", "max_completion_tokens": 9, "stream": true, "messages": []})
        );
    }

    #[test]
    fn endpoints() {
        let base = Url::parse("https://x.openai.azure.com").unwrap();
        assert_eq!(
            azure_endpoint(&base, "gpt4o-prod", "2024-10-21").as_str(),
            "https://x.openai.azure.com/openai/deployments/gpt4o-prod/chat/completions?api-version=2024-10-21"
        );
        let base = Url::parse("https://api.groq.com/openai/v1").unwrap();
        assert_eq!(
            endpoint(&base).as_str(),
            "https://api.groq.com/openai/v1/chat/completions"
        );
    }

    #[test]
    fn replies() {
        let ok =
            br#"{"choices":[{"message":{"role":"assistant","content":"4"},"finish_reason":"stop"}],
                      "usage":{"prompt_tokens":12,"completion_tokens":1,"total_tokens":13}}"#;
        assert_eq!(
            parse_reply(ok),
            Ok(Completion {
                text: "4".into(),
                usage: Some(Usage {
                    prompt_tokens: 12,
                    completion_tokens: 1
                })
            })
        );
        let parts = br#"{"choices":[{"message":{"content":[{"type":"text","text":"a"},{"type":"text","text":"b"}]}}]}"#;
        assert_eq!(parse_reply(parts).unwrap().text, "ab");
        check_failures(
            parse_reply,
            &[
                (
                    r#"{"choices":[{"message":{"content":null,"refusal":"no"}}]}"#,
                    OutcomeClass::Permanent,
                    "the model refused: no",
                ),
                (
                    r#"{"choices":[{"message":{"content":null},"finish_reason":"tool_calls"}]}"#,
                    OutcomeClass::Permanent,
                    "no text content (finish_reason: tool_calls)",
                ),
                (
                    r#"{"error":{"message":"Rate limit reached","type":"requests"}}"#,
                    OutcomeClass::RateLimited,
                    "Rate limit reached",
                ),
                (r#"{"choices":[]}"#, OutcomeClass::Permanent, "no choices"),
                (
                    r#"{"choices": ["#,
                    OutcomeClass::Permanent,
                    "unparsable reply body",
                ),
            ],
        );
    }

    #[test]
    fn streams() {
        let mut d = Decoder::default();
        let mut seen = String::new();
        let mut sink = |t: &str| seen.push_str(t);
        for data in [
            r#"{"choices":[{"delta":{"role":"assistant","content":""}}]}"#,
            r#"{"choices":[{"delta":{"content":"Hel"}}]}"#,
            r#"{"choices":[{"delta":{"content":"lo"},"finish_reason":null}]}"#,
            r#"{"choices":[{"delta":{},"finish_reason":"stop"}]}"#,
            r#"{"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":2}}"#,
        ] {
            assert_eq!(d.event(data, &mut sink), Ok(Step::More));
        }
        assert_eq!(d.event("[DONE]", &mut sink), Ok(Step::Done));
        let c = d.finish(true).unwrap();
        assert_eq!(
            (c.text.as_str(), c.usage.map(|u| u.total())),
            ("Hello", Some(5))
        );
        assert_eq!(seen, "Hello");

        let mut d = Decoder::default();
        d.event(r#"{"choices":[{"delta":{"content":"Hel"}}]}"#, &mut |_| {})
            .unwrap();
        let f = d.finish(false).unwrap_err();
        assert_eq!(f.class, OutcomeClass::Transient);
        assert!(f.message.starts_with("truncated stream"), "{}", f.message);

        let mut d = Decoder::default();
        let f = d.event("{not json", &mut |_| {}).unwrap_err();
        assert_eq!(f.class, OutcomeClass::Transient);
        assert!(
            f.message.starts_with("malformed stream event"),
            "{}",
            f.message
        );
        let f = d
            .event(
                r#"{"error":{"message":"server had an error"}}"#,
                &mut |_| {},
            )
            .unwrap_err();
        assert_eq!(f.class, OutcomeClass::Transient);
    }
}
