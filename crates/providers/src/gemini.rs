//! The Google Gemini adapter (`generateContent`, `streamGenerateContent`).
//!
//! - `POST {base_url}/models/{model}:generateContent`, or
//!   `…:streamGenerateContent?alt=sse` when streaming; the key goes in the
//!   `x-goog-api-key` header, never in the URL.
//! - Roles: `user` stays `user`, `assistant` becomes `model`; `system` (and
//!   `developer`) messages become `systemInstruction`.
//! - `params` map to `generationConfig`: `temperature`, `top_p` → `topP`,
//!   `top_k` → `topK`, `max_tokens` / `max_completion_tokens` →
//!   `maxOutputTokens` (default: the entry's `default_max_tokens`, if any),
//!   `stop` → `stopSequences`, `n` → `candidateCount`, `seed`,
//!   `presence_penalty` → `presencePenalty`, `frequency_penalty` →
//!   `frequencyPenalty`; a `generationConfig` object is merged in;
//!   `safetySettings`, `tools`, `toolConfig`, `cachedContent`, `labels` stay
//!   top-level; any other key goes into `generationConfig` as written.
//! - A blocked prompt or reply is a permanent failure naming the reason.
//!   A stream is complete once a candidate has a `finishReason`.
//!
//! A configured entry and one call (needs a running server, so not run here):
//!
//! ```no_run
//! use runnel_core::{Provider, ProviderKind};
//! use runnel_providers::{ProviderEntry, Providers, Settings};
//! # async fn demo(job: runnel_core::Job) {
//! let entry = ProviderEntry::new(ProviderKind::Gemini); // reads GEMINI_API_KEY
//! let providers = Providers::from_env([("gemini".to_string(), entry)], Settings::default())
//!     .expect("valid configuration");
//! let report = providers.call(&job, None).await; // job's model e.g. "gemini-2.0-flash"
//! println!("{:?}", report.outcome);
//! # }
//! ```
//!
//! The request body it sends:
//!
//! ```
//! use runnel_core::Message;
//! use runnel_providers::{gemini, RequestOptions};
//! let messages = [
//!     Message { role: "system".into(), content: "Be terse.".into() },
//!     Message { role: "user".into(), content: "Hi".into() },
//!     Message { role: "assistant".into(), content: "Hello".into() },
//! ];
//! let params = serde_json::json!({"temperature": 0, "max_tokens": 50}).as_object().unwrap().clone();
//! let body = gemini::request_body(&messages, &params, &RequestOptions::default());
//! assert_eq!(body, serde_json::json!({
//!     "systemInstruction": {"parts": [{"text": "Be terse."}]},
//!     "contents": [{"role": "user", "parts": [{"text": "Hi"}]},
//!                  {"role": "model", "parts": [{"text": "Hello"}]}],
//!     "generationConfig": {"temperature": 0, "maxOutputTokens": 50},
//! }));
//! ```

use reqwest::Url;
use runnel_core::{Message, OutcomeClass, Usage};
use serde_json::{Map, Value, json};

use crate::RequestOptions;
use crate::classify::Fault;
use crate::wire::{
    Accumulator, Completion, Step, embedded_error, join, parse_event, parse_json, stop_list, u64_at,
};

/// Request fields that live beside `generationConfig`, not inside it.
const TOP_LEVEL: &[&str] = &[
    "safetySettings",
    "tools",
    "toolConfig",
    "cachedContent",
    "labels",
];

/// `{base}/models/{model}:generateContent`, or the streaming form.
pub fn endpoint(base: &Url, model: &str, stream: bool) -> Url {
    let model = model.strip_prefix("models/").unwrap_or(model);
    if stream {
        let mut url = join(base, &["models", &format!("{model}:streamGenerateContent")]);
        url.query_pairs_mut().append_pair("alt", "sse");
        url
    } else {
        join(base, &["models", &format!("{model}:generateContent")])
    }
}

fn parts(text: &str) -> Value {
    json!({"parts": [{"text": text}]})
}

/// The JSON body of a `generateContent` request (the model is in the URL;
/// `options.stream` changes only the URL).
pub fn request_body(
    messages: &[Message],
    params: &Map<String, Value>,
    options: &RequestOptions,
) -> Value {
    let mut body = Map::new();
    let mut config = Map::new();
    for (key, value) in params {
        let renamed = match key.as_str() {
            "top_p" => "topP",
            "top_k" => "topK",
            "max_tokens" | "max_completion_tokens" => "maxOutputTokens",
            "n" => "candidateCount",
            "presence_penalty" => "presencePenalty",
            "frequency_penalty" => "frequencyPenalty",
            "stop" => {
                config.insert("stopSequences".into(), stop_list(value.clone()));
                continue;
            }
            "stream" | "stream_options" => continue,
            "generationConfig" => {
                if let Value::Object(extra) = value {
                    config.extend(extra.clone());
                }
                continue;
            }
            k if TOP_LEVEL.contains(&k) => {
                body.insert(key.clone(), value.clone());
                continue;
            }
            other => other,
        };
        config.insert(renamed.into(), value.clone());
    }
    if !config.contains_key("maxOutputTokens")
        && let Some(n) = options.default_max_tokens
    {
        config.insert("maxOutputTokens".into(), json!(n));
    }
    let system: Vec<&str> = messages
        .iter()
        .filter(|m| matches!(m.role.as_str(), "system" | "developer"))
        .map(|m| m.content.as_str())
        .collect();
    if !system.is_empty() {
        body.insert("systemInstruction".into(), parts(&system.join("\n\n")));
    }
    let contents: Vec<Value> = messages
        .iter()
        .filter(|m| !matches!(m.role.as_str(), "system" | "developer"))
        .map(|m| {
            let role = if m.role == "assistant" {
                "model"
            } else {
                m.role.as_str()
            };
            let mut content = parts(&m.content);
            content["role"] = json!(role);
            content
        })
        .collect();
    body.insert("contents".into(), Value::Array(contents));
    if !config.is_empty() {
        body.insert("generationConfig".into(), Value::Object(config));
    }
    Value::Object(body)
}

fn usage(v: &Value) -> Option<Usage> {
    let u = v.get("usageMetadata").filter(|u| u.is_object())?;
    Some(Usage {
        prompt_tokens: u64_at(u, "/promptTokenCount").unwrap_or(0),
        completion_tokens: u64_at(u, "/candidatesTokenCount").unwrap_or(0)
            + u64_at(u, "/thoughtsTokenCount").unwrap_or(0),
    })
}

/// What one response object (a whole reply or one stream chunk) holds.
struct Piece {
    text: String,
    finish_reason: Option<String>,
}

/// Reads one `GenerateContentResponse`; blocked prompts and errors are faults.
fn piece(v: &Value, error_class: OutcomeClass) -> Result<Piece, Fault> {
    if let Some(fault) = embedded_error(v, error_class) {
        return Err(fault);
    }
    let Some(candidate) = v.pointer("/candidates/0") else {
        if let Some(reason) = v
            .pointer("/promptFeedback/blockReason")
            .and_then(Value::as_str)
        {
            return Err(Fault::permanent(format!(
                "the prompt was blocked: {reason}"
            )));
        }
        return Ok(Piece {
            text: String::new(),
            finish_reason: None,
        });
    };
    let text: String = candidate
        .pointer("/content/parts")
        .and_then(Value::as_array)
        .map(|parts| {
            parts
                .iter()
                .filter(|p| p.get("thought").and_then(Value::as_bool) != Some(true))
                .filter_map(|p| p.get("text").and_then(Value::as_str))
                .collect()
        })
        .unwrap_or_default();
    let finish_reason = candidate
        .get("finishReason")
        .and_then(Value::as_str)
        .map(str::to_owned);
    if let Some(reason) = &finish_reason
        && text.is_empty()
        && matches!(
            reason.as_str(),
            "SAFETY" | "RECITATION" | "BLOCKLIST" | "PROHIBITED_CONTENT" | "SPII" | "OTHER"
        )
    {
        return Err(Fault::permanent(format!(
            "the reply was blocked (finishReason: {reason})"
        )));
    }
    Ok(Piece {
        text,
        finish_reason,
    })
}

/// Reads a non-streamed reply.
pub(crate) fn parse_reply(body: &[u8]) -> Result<Completion, Fault> {
    let v = parse_json(body, "reply body")?;
    if v.get("candidates").is_none() && v.pointer("/promptFeedback/blockReason").is_none() {
        return Err(embedded_error(&v, OutcomeClass::Permanent)
            .unwrap_or_else(|| Fault::permanent("reply has no candidates")));
    }
    let piece = piece(&v, OutcomeClass::Permanent)?;
    Ok(Completion {
        text: piece.text,
        usage: usage(&v),
    })
}

/// Decodes a streamed reply, one SSE event at a time.
#[derive(Debug, Default)]
pub(crate) struct Decoder(Accumulator);

impl Decoder {
    /// Takes one event; text deltas go to `sink`.
    pub(crate) fn event(&mut self, data: &str, sink: &mut dyn FnMut(&str)) -> Result<Step, Fault> {
        let v = parse_event(data)?;
        let piece = piece(&v, OutcomeClass::Transient)?;
        self.0.push(&piece.text, sink);
        if let Some(u) = usage(&v) {
            self.0.usage = Some(u);
        }
        self.0.finished |= piece.finish_reason.is_some();
        Ok(Step::More)
    }

    /// Ends the stream. Gemini sends no terminal event: the stream is
    /// complete when a chunk carried a `finishReason`.
    pub(crate) fn finish(self) -> Result<Completion, Fault> {
        self.0.finish(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::check_failures;

    #[test]
    fn endpoints() {
        let base = Url::parse("https://generativelanguage.googleapis.com/v1beta").unwrap();
        assert_eq!(
            endpoint(&base, "models/gemini-2.0-flash", false).as_str(),
            "https://generativelanguage.googleapis.com/v1beta/models/gemini-2.0-flash:generateContent"
        );
        assert_eq!(
            endpoint(&base, "gemini-2.0-flash", true).as_str(),
            "https://generativelanguage.googleapis.com/v1beta/models/gemini-2.0-flash:streamGenerateContent?alt=sse"
        );
    }

    #[test]
    fn params_map_to_generation_config() {
        let params = json!({
            "top_p": 0.9, "top_k": 40, "max_completion_tokens": 5, "stop": "x", "n": 1, "seed": 7,
            "presence_penalty": 0.1, "frequency_penalty": 0.2, "responseMimeType": "application/json",
            "generationConfig": {"thinkingConfig": {"thinkingBudget": 0}},
            "safetySettings": [], "stream": true
        });
        let body = request_body(
            &[],
            params.as_object().unwrap(),
            &RequestOptions {
                default_max_tokens: Some(100),
                ..RequestOptions::default()
            },
        );
        assert_eq!(
            body,
            json!({
                "contents": [],
                "safetySettings": [],
                "generationConfig": {
                    "topP": 0.9, "topK": 40, "maxOutputTokens": 5, "stopSequences": ["x"],
                    "candidateCount": 1, "seed": 7, "presencePenalty": 0.1, "frequencyPenalty": 0.2,
                    "responseMimeType": "application/json", "thinkingConfig": {"thinkingBudget": 0}
                }
            })
        );
    }

    #[test]
    fn replies() {
        let ok = br#"{"candidates":[{"content":{"role":"model","parts":[{"text":"plan","thought":true},{"text":"4"}]},"finishReason":"STOP"}],
                      "usageMetadata":{"promptTokenCount":8,"candidatesTokenCount":1,"thoughtsTokenCount":2}}"#;
        assert_eq!(
            parse_reply(ok),
            Ok(Completion {
                text: "4".into(),
                usage: Some(Usage {
                    prompt_tokens: 8,
                    completion_tokens: 3
                })
            })
        );
        check_failures(
            parse_reply,
            &[
                (
                    r#"{"promptFeedback":{"blockReason":"SAFETY"}}"#,
                    OutcomeClass::Permanent,
                    "the prompt was blocked: SAFETY",
                ),
                (
                    r#"{"candidates":[{"finishReason":"SAFETY"}]}"#,
                    OutcomeClass::Permanent,
                    "blocked (finishReason: SAFETY)",
                ),
                (
                    r#"{"error":{"code":429,"message":"Resource has been exhausted","status":"RESOURCE_EXHAUSTED"}}"#,
                    OutcomeClass::RateLimited,
                    "RESOURCE_EXHAUSTED",
                ),
                ("{}", OutcomeClass::Permanent, "reply has no candidates"),
            ],
        );
    }

    #[test]
    fn streams() {
        let mut d = Decoder::default();
        let mut seen = String::new();
        let mut sink = |t: &str| seen.push_str(t);
        d.event(
            r#"{"candidates":[{"content":{"parts":[{"text":"Hel"}],"role":"model"}}]}"#,
            &mut sink,
        )
        .unwrap();
        d.event(
            r#"{"candidates":[{"content":{"parts":[{"text":"lo"}],"role":"model"},"finishReason":"STOP"}],
                "usageMetadata":{"promptTokenCount":2,"candidatesTokenCount":2}}"#,
            &mut sink,
        )
        .unwrap();
        let c = d.finish().unwrap();
        assert_eq!(c.text, "Hello");
        assert_eq!(c.usage.map(|u| u.total()), Some(4));
        assert_eq!(seen, "Hello");

        let mut d = Decoder::default();
        d.event(
            r#"{"candidates":[{"content":{"parts":[{"text":"Hel"}]}}]}"#,
            &mut |_| {},
        )
        .unwrap();
        assert!(
            d.finish()
                .unwrap_err()
                .message
                .starts_with("truncated stream")
        );
    }
}
