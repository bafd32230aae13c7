//! The two wire formats: OpenAI Chat Completions and Anthropic Messages —
//! request parsing, reply bodies, stream events and error bodies. Pure
//! functions of their inputs; the server decides which to send.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// Which provider API a request came in on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Api {
    /// `POST /v1/chat/completions`.
    OpenAi,
    /// `POST /v1/messages`.
    Anthropic,
}

/// What the simulator needs from a provider request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ProviderRequest {
    /// The model named.
    pub(crate) model: String,
    /// All message texts joined by newlines, the system prompt first.
    pub(crate) prompt: String,
    /// The request's completion limit.
    pub(crate) max_tokens: Option<u32>,
    /// Whether an SSE stream was asked for.
    pub(crate) stream: bool,
    /// OpenAI `stream_options.include_usage`.
    pub(crate) include_usage: bool,
}

/// A finished reply, ready to be rendered.
#[derive(Clone, Debug)]
pub(crate) struct Completion<'a> {
    /// Response id (without the API's prefix).
    pub(crate) id: u64,
    /// Unix seconds.
    pub(crate) created: i64,
    /// The model named in the request.
    pub(crate) model: &'a str,
    /// The reply text.
    pub(crate) text: &'a str,
    /// Whether it was cut at `max_tokens`.
    pub(crate) truncated: bool,
    /// Prompt tokens.
    pub(crate) prompt_tokens: u64,
    /// Completion tokens.
    pub(crate) completion_tokens: u64,
}

/// The kinds of error body the simulator sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ErrorKind {
    /// 400.
    InvalidRequest,
    /// 401.
    Authentication,
    /// 404.
    NotFound,
    /// 405.
    MethodNotAllowed,
    /// 413.
    TooLarge,
    /// 429 of a request limit.
    RateLimit,
    /// 429 of a token limit (OpenAI and Groq say so in `type`).
    TokenLimit,
    /// 500, 502, 503.
    Server,
    /// 529.
    Overloaded,
}

// ---------------------------------------------------------------- requests

#[derive(Deserialize)]
#[serde(untagged)]
enum Content {
    Text(String),
    Parts(Vec<Part>),
}

#[derive(Deserialize)]
struct Part {
    #[serde(default)]
    text: Option<String>,
}

impl Content {
    fn push_to(&self, prompt: &mut String) {
        match self {
            Content::Text(text) => push_line(prompt, text),
            Content::Parts(parts) => {
                for text in parts.iter().filter_map(|p| p.text.as_deref()) {
                    push_line(prompt, text);
                }
            }
        }
    }
}

fn push_line(prompt: &mut String, text: &str) {
    if !prompt.is_empty() {
        prompt.push('\n');
    }
    prompt.push_str(text);
}

#[derive(Deserialize)]
struct ChatRequest {
    model: String,
    messages: Vec<ChatMessage>,
    #[serde(default)]
    max_tokens: Option<u32>,
    #[serde(default)]
    max_completion_tokens: Option<u32>,
    #[serde(default)]
    stream: Option<bool>,
    #[serde(default)]
    stream_options: Option<StreamOptions>,
}

#[derive(Deserialize)]
struct ChatMessage {
    #[serde(default)]
    content: Option<Content>,
}

#[derive(Deserialize)]
struct StreamOptions {
    #[serde(default)]
    include_usage: Option<bool>,
}

#[derive(Deserialize)]
struct MessagesRequest {
    model: String,
    max_tokens: u32,
    messages: Vec<AnthropicMessage>,
    #[serde(default)]
    system: Option<Content>,
    #[serde(default)]
    stream: Option<bool>,
}

#[derive(Deserialize)]
struct AnthropicMessage {
    content: Content,
}

impl Api {
    /// Parses a request body; the error says what is wrong, for a 400.
    pub(crate) fn parse(self, body: &[u8]) -> Result<ProviderRequest, String> {
        let mut prompt = String::new();
        let request = match self {
            Api::OpenAi => {
                let r: ChatRequest = serde_json::from_slice(body).map_err(|e| e.to_string())?;
                for content in r.messages.iter().filter_map(|m| m.content.as_ref()) {
                    content.push_to(&mut prompt);
                }
                if r.messages.is_empty() {
                    return Err("`messages` must not be empty".to_owned());
                }
                let stream = r.stream.unwrap_or(false);
                ProviderRequest {
                    model: r.model,
                    prompt,
                    max_tokens: r.max_completion_tokens.or(r.max_tokens),
                    stream,
                    include_usage: stream
                        && r.stream_options
                            .and_then(|o| o.include_usage)
                            .unwrap_or(false),
                }
            }
            Api::Anthropic => {
                let r: MessagesRequest = serde_json::from_slice(body).map_err(|e| e.to_string())?;
                if let Some(system) = &r.system {
                    system.push_to(&mut prompt);
                }
                for message in &r.messages {
                    message.content.push_to(&mut prompt);
                }
                if r.messages.is_empty() {
                    return Err("`messages` must not be empty".to_owned());
                }
                ProviderRequest {
                    model: r.model,
                    prompt,
                    max_tokens: Some(r.max_tokens),
                    stream: r.stream.unwrap_or(false),
                    include_usage: false,
                }
            }
        };
        if request.max_tokens == Some(0) {
            return Err("`max_tokens` must be at least 1".to_owned());
        }
        Ok(request)
    }
}

// ---------------------------------------------------------------- OpenAI bodies

#[derive(Serialize)]
struct ChatCompletion<'a> {
    id: String,
    object: &'static str,
    created: i64,
    model: &'a str,
    choices: [ChatChoice<'a>; 1],
    usage: ChatUsage,
}

#[derive(Serialize)]
struct ChatChoice<'a> {
    index: u32,
    message: ChatReplyMessage<'a>,
    finish_reason: &'static str,
    logprobs: Option<()>,
}

#[derive(Serialize)]
struct ChatReplyMessage<'a> {
    role: &'static str,
    content: &'a str,
}

#[derive(Serialize, Clone, Copy)]
struct ChatUsage {
    prompt_tokens: u64,
    completion_tokens: u64,
    total_tokens: u64,
}

#[derive(Serialize)]
struct ChatChunk<'a> {
    id: &'a str,
    object: &'static str,
    created: i64,
    model: &'a str,
    choices: Vec<ChunkChoice<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    usage: Option<ChatUsage>,
}

#[derive(Serialize)]
struct ChunkChoice<'a> {
    index: u32,
    delta: Delta<'a>,
    finish_reason: Option<&'static str>,
}

#[derive(Serialize, Default)]
struct Delta<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    role: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    content: Option<&'a str>,
}

#[derive(Serialize)]
struct OpenAiError<'a> {
    error: OpenAiErrorBody<'a>,
}

#[derive(Serialize)]
struct OpenAiErrorBody<'a> {
    message: &'a str,
    #[serde(rename = "type")]
    kind: &'static str,
    param: Option<()>,
    code: Option<&'static str>,
}

// ---------------------------------------------------------------- Anthropic bodies

#[derive(Serialize)]
struct Message<'a> {
    id: String,
    #[serde(rename = "type")]
    kind: &'static str,
    role: &'static str,
    model: &'a str,
    content: Vec<TextBlock<'a>>,
    stop_reason: Option<&'static str>,
    stop_sequence: Option<()>,
    usage: MessageUsage,
}

#[derive(Serialize)]
struct TextBlock<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    text: &'a str,
}

#[derive(Serialize)]
struct MessageUsage {
    input_tokens: u64,
    output_tokens: u64,
}

#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum StreamEvent<'a> {
    MessageStart {
        message: Message<'a>,
    },
    ContentBlockStart {
        index: u32,
        content_block: TextBlock<'a>,
    },
    Ping,
    ContentBlockDelta {
        index: u32,
        delta: TextDelta<'a>,
    },
    ContentBlockStop {
        index: u32,
    },
    MessageDelta {
        delta: StopDelta,
        usage: OutputUsage,
    },
    MessageStop,
}

impl StreamEvent<'_> {
    fn name(&self) -> &'static str {
        match self {
            StreamEvent::MessageStart { .. } => "message_start",
            StreamEvent::ContentBlockStart { .. } => "content_block_start",
            StreamEvent::Ping => "ping",
            StreamEvent::ContentBlockDelta { .. } => "content_block_delta",
            StreamEvent::ContentBlockStop { .. } => "content_block_stop",
            StreamEvent::MessageDelta { .. } => "message_delta",
            StreamEvent::MessageStop => "message_stop",
        }
    }
}

#[derive(Serialize)]
struct TextDelta<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    text: &'a str,
}

#[derive(Serialize)]
struct StopDelta {
    stop_reason: &'static str,
    stop_sequence: Option<()>,
}

#[derive(Serialize)]
struct OutputUsage {
    output_tokens: u64,
}

#[derive(Serialize)]
struct AnthropicError<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    error: AnthropicErrorBody<'a>,
}

#[derive(Serialize)]
struct AnthropicErrorBody<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    message: &'a str,
}

// ---------------------------------------------------------------- rendering

fn to_json<T: Serialize>(value: &T) -> Vec<u8> {
    // Serialising these plain structs (strings, numbers, options) into a
    // Vec cannot fail: there is no map with non-string keys and no I/O.
    serde_json::to_vec(value).unwrap_or_default()
}

/// The text cut into stream pieces: each word with the spaces after it.
pub(crate) fn pieces(text: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut in_space = false;
    for (i, c) in text.char_indices() {
        if c.is_whitespace() {
            in_space = true;
        } else if in_space {
            out.push(&text[start..i]);
            start = i;
            in_space = false;
        }
    }
    if start < text.len() {
        out.push(&text[start..]);
    }
    out
}

/// One SSE event whose data is cut in half: not valid JSON.
fn corrupt(event: &Bytes) -> Bytes {
    let text = String::from_utf8_lossy(event);
    let data_at = text.find("data: ").map_or(0, |i| i + "data: ".len());
    let keep = data_at + (text.len() - data_at) / 2;
    let mut cut = keep;
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    Bytes::from(format!("{}\n\n", &text[..cut]))
}

impl Api {
    /// The non-streamed reply body.
    pub(crate) fn body(self, c: &Completion<'_>) -> Vec<u8> {
        match self {
            Api::OpenAi => to_json(&ChatCompletion {
                id: format!("chatcmpl-sim{}", c.id),
                object: "chat.completion",
                created: c.created,
                model: c.model,
                choices: [ChatChoice {
                    index: 0,
                    message: ChatReplyMessage {
                        role: "assistant",
                        content: c.text,
                    },
                    finish_reason: if c.truncated { "length" } else { "stop" },
                    logprobs: None,
                }],
                usage: openai_usage(c),
            }),
            Api::Anthropic => to_json(&anthropic_message(
                c,
                vec![TextBlock {
                    kind: "text",
                    text: c.text,
                }],
                Some(stop_reason(c)),
                c.completion_tokens,
            )),
        }
    }

    /// The streamed reply as SSE events, in order. With `malformed`, the
    /// first event that carries text has its data cut in half.
    pub(crate) fn events(
        self,
        c: &Completion<'_>,
        include_usage: bool,
        malformed: bool,
    ) -> Vec<Bytes> {
        let (mut events, first_text) = match self {
            Api::OpenAi => (openai_events(c, include_usage), 1),
            Api::Anthropic => (anthropic_events(c), 3),
        };
        if malformed && let Some(event) = events.get_mut(first_text) {
            *event = corrupt(event);
        }
        events
    }

    /// An error body in this API's style.
    pub(crate) fn error_body(self, kind: ErrorKind, message: &str) -> Vec<u8> {
        match self {
            Api::OpenAi => {
                let (kind, code) = match kind {
                    ErrorKind::InvalidRequest
                    | ErrorKind::NotFound
                    | ErrorKind::MethodNotAllowed
                    | ErrorKind::TooLarge => ("invalid_request_error", None),
                    ErrorKind::Authentication => ("invalid_request_error", Some("invalid_api_key")),
                    ErrorKind::RateLimit => ("requests", Some("rate_limit_exceeded")),
                    ErrorKind::TokenLimit => ("tokens", Some("rate_limit_exceeded")),
                    ErrorKind::Server => ("server_error", None),
                    ErrorKind::Overloaded => ("overloaded_error", None),
                };
                to_json(&OpenAiError {
                    error: OpenAiErrorBody {
                        message,
                        kind,
                        param: None,
                        code,
                    },
                })
            }
            Api::Anthropic => {
                let kind = match kind {
                    ErrorKind::InvalidRequest | ErrorKind::MethodNotAllowed => {
                        "invalid_request_error"
                    }
                    ErrorKind::Authentication => "authentication_error",
                    ErrorKind::NotFound => "not_found_error",
                    ErrorKind::TooLarge => "request_too_large",
                    ErrorKind::RateLimit | ErrorKind::TokenLimit => "rate_limit_error",
                    ErrorKind::Server => "api_error",
                    ErrorKind::Overloaded => "overloaded_error",
                };
                to_json(&AnthropicError {
                    kind: "error",
                    error: AnthropicErrorBody { kind, message },
                })
            }
        }
    }
}

fn openai_usage(c: &Completion<'_>) -> ChatUsage {
    ChatUsage {
        prompt_tokens: c.prompt_tokens,
        completion_tokens: c.completion_tokens,
        total_tokens: c.prompt_tokens + c.completion_tokens,
    }
}

fn stop_reason(c: &Completion<'_>) -> &'static str {
    if c.truncated {
        "max_tokens"
    } else {
        "end_turn"
    }
}

fn anthropic_message<'a>(
    c: &Completion<'a>,
    content: Vec<TextBlock<'a>>,
    stop: Option<&'static str>,
    output_tokens: u64,
) -> Message<'a> {
    Message {
        id: format!("msg_sim{}", c.id),
        kind: "message",
        role: "assistant",
        model: c.model,
        content,
        stop_reason: stop,
        stop_sequence: None,
        usage: MessageUsage {
            input_tokens: c.prompt_tokens,
            output_tokens,
        },
    }
}

fn sse_data(json: &[u8]) -> Bytes {
    let mut event = Vec::with_capacity(json.len() + 8);
    event.extend_from_slice(b"data: ");
    event.extend_from_slice(json);
    event.extend_from_slice(b"\n\n");
    Bytes::from(event)
}

fn openai_events(c: &Completion<'_>, include_usage: bool) -> Vec<Bytes> {
    let id = format!("chatcmpl-sim{}", c.id);
    let chunk = |delta: Delta<'_>, finish: Option<&'static str>| {
        sse_data(&to_json(&ChatChunk {
            id: &id,
            object: "chat.completion.chunk",
            created: c.created,
            model: c.model,
            choices: vec![ChunkChoice {
                index: 0,
                delta,
                finish_reason: finish,
            }],
            usage: None,
        }))
    };
    let mut events = vec![chunk(
        Delta {
            role: Some("assistant"),
            content: Some(""),
        },
        None,
    )];
    for piece in pieces(c.text) {
        events.push(chunk(
            Delta {
                role: None,
                content: Some(piece),
            },
            None,
        ));
    }
    events.push(chunk(
        Delta::default(),
        Some(if c.truncated { "length" } else { "stop" }),
    ));
    if include_usage {
        events.push(sse_data(&to_json(&ChatChunk {
            id: &id,
            object: "chat.completion.chunk",
            created: c.created,
            model: c.model,
            choices: Vec::new(),
            usage: Some(openai_usage(c)),
        })));
    }
    events.push(Bytes::from_static(b"data: [DONE]\n\n"));
    events
}

fn anthropic_events(c: &Completion<'_>) -> Vec<Bytes> {
    let event = |e: StreamEvent<'_>| {
        let json = to_json(&e);
        let mut out = Vec::with_capacity(json.len() + 40);
        out.extend_from_slice(b"event: ");
        out.extend_from_slice(e.name().as_bytes());
        out.extend_from_slice(b"\ndata: ");
        out.extend_from_slice(&json);
        out.extend_from_slice(b"\n\n");
        Bytes::from(out)
    };
    let mut events = vec![
        event(StreamEvent::MessageStart {
            message: anthropic_message(c, Vec::new(), None, 1),
        }),
        event(StreamEvent::ContentBlockStart {
            index: 0,
            content_block: TextBlock {
                kind: "text",
                text: "",
            },
        }),
        event(StreamEvent::Ping),
    ];
    for piece in pieces(c.text) {
        events.push(event(StreamEvent::ContentBlockDelta {
            index: 0,
            delta: TextDelta {
                kind: "text_delta",
                text: piece,
            },
        }));
    }
    events.push(event(StreamEvent::ContentBlockStop { index: 0 }));
    events.push(event(StreamEvent::MessageDelta {
        delta: StopDelta {
            stop_reason: stop_reason(c),
            stop_sequence: None,
        },
        usage: OutputUsage {
            output_tokens: c.completion_tokens,
        },
    }));
    events.push(event(StreamEvent::MessageStop));
    events
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;

    fn completion(text: &str) -> Completion<'_> {
        Completion {
            id: 7,
            created: 1_700_000_000,
            model: "m",
            text,
            truncated: false,
            prompt_tokens: 3,
            completion_tokens: 2,
        }
    }

    fn data(event: &Bytes) -> Value {
        let text = std::str::from_utf8(event).unwrap();
        let line = text.lines().find_map(|l| l.strip_prefix("data: ")).unwrap();
        serde_json::from_str(line).unwrap()
    }

    #[test]
    fn parses_both_apis_and_joins_the_prompt() {
        let body = json!({
            "model": "gpt", "max_tokens": 5, "stream": true,
            "stream_options": {"include_usage": true},
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": [{"type": "text", "text": "What is 1 + 1?"}, {"type": "image_url", "image_url": {}}]},
                {"role": "assistant", "content": null}
            ],
            "temperature": 0.2
        });
        let r = Api::OpenAi.parse(body.to_string().as_bytes()).unwrap();
        assert_eq!(r.prompt, "Be brief.\nWhat is 1 + 1?");
        assert_eq!(
            (r.max_tokens, r.stream, r.include_usage),
            (Some(5), true, true)
        );

        let body = json!({
            "model": "claude", "max_tokens": 9, "system": "Judge.",
            "messages": [{"role": "user", "content": "Hi"}]
        });
        let r = Api::Anthropic.parse(body.to_string().as_bytes()).unwrap();
        assert_eq!(r.prompt, "Judge.\nHi");
        assert_eq!((r.max_tokens, r.stream), (Some(9), false));
    }

    #[test]
    fn bad_requests_say_what_is_wrong() {
        let cases: &[(Api, &str, &str)] = &[
            (Api::OpenAi, "{", "EOF"),
            (Api::OpenAi, r#"{"messages": []}"#, "model"),
            (Api::OpenAi, r#"{"model": "m", "messages": []}"#, "messages"),
            (
                Api::OpenAi,
                r#"{"model": "m", "max_tokens": 0, "messages": [{"role":"user","content":"x"}]}"#,
                "max_tokens",
            ),
            (
                Api::Anthropic,
                r#"{"model": "m", "messages": [{"role":"user","content":"x"}]}"#,
                "max_tokens",
            ),
            (
                Api::Anthropic,
                r#"{"model": "m", "max_tokens": 1, "messages": [{"role":"user"}]}"#,
                "content",
            ),
        ];
        for (api, body, needle) in cases {
            let err = api.parse(body.as_bytes()).unwrap_err();
            assert!(err.contains(needle), "{body}: {err}");
        }
    }

    #[test]
    fn openai_stream_has_role_pieces_finish_usage_and_done() {
        let events = Api::OpenAi.events(&completion("two words"), true, false);
        assert_eq!(events.len(), 6);
        assert_eq!(data(&events[0])["choices"][0]["delta"]["role"], "assistant");
        assert_eq!(data(&events[1])["choices"][0]["delta"]["content"], "two ");
        assert_eq!(data(&events[2])["choices"][0]["delta"]["content"], "words");
        assert_eq!(data(&events[3])["choices"][0]["finish_reason"], "stop");
        assert_eq!(data(&events[4])["usage"]["total_tokens"], 5);
        assert_eq!(data(&events[4])["choices"], json!([]));
        assert_eq!(&events[5][..], b"data: [DONE]\n\n");
    }

    #[test]
    fn anthropic_stream_follows_the_event_sequence() {
        let events = Api::Anthropic.events(&completion("hi there"), false, false);
        let names: Vec<&str> = events
            .iter()
            .map(|e| std::str::from_utf8(e).unwrap().lines().next().unwrap())
            .collect();
        assert_eq!(
            names,
            [
                "event: message_start",
                "event: content_block_start",
                "event: ping",
                "event: content_block_delta",
                "event: content_block_delta",
                "event: content_block_stop",
                "event: message_delta",
                "event: message_stop"
            ]
        );
        assert_eq!(data(&events[3])["delta"]["text"], "hi ");
        assert_eq!(data(&events[6])["usage"]["output_tokens"], 2);
        assert_eq!(data(&events[6])["delta"]["stop_reason"], "end_turn");
    }

    #[test]
    fn malformed_stream_breaks_exactly_the_first_text_event() {
        for api in [Api::OpenAi, Api::Anthropic] {
            let good = api.events(&completion("a b"), false, false);
            let bad = api.events(&completion("a b"), false, true);
            assert_eq!(good.len(), bad.len());
            let broken: Vec<usize> = (0..good.len()).filter(|i| good[*i] != bad[*i]).collect();
            assert_eq!(broken.len(), 1, "{api:?}");
            let text = std::str::from_utf8(&bad[broken[0]]).unwrap();
            let line = text.lines().find_map(|l| l.strip_prefix("data: ")).unwrap();
            assert!(serde_json::from_str::<Value>(line).is_err());
            assert!(text.ends_with("\n\n"));
        }
    }

    #[test]
    fn bodies_and_errors_have_the_documented_shape() {
        let body: Value = serde_json::from_slice(&Api::OpenAi.body(&completion("ok"))).unwrap();
        assert_eq!(body["choices"][0]["message"]["content"], "ok");
        assert_eq!(body["usage"]["prompt_tokens"], 3);
        let body: Value = serde_json::from_slice(&Api::Anthropic.body(&completion("ok"))).unwrap();
        assert_eq!(body["content"][0]["text"], "ok");
        assert_eq!(body["usage"]["output_tokens"], 2);
        let err: Value =
            serde_json::from_slice(&Api::OpenAi.error_body(ErrorKind::RateLimit, "slow down"))
                .unwrap();
        assert_eq!(err["error"]["message"], "slow down");
        assert_eq!(err["error"]["code"], "rate_limit_exceeded");
        let err: Value =
            serde_json::from_slice(&Api::Anthropic.error_body(ErrorKind::Overloaded, "busy"))
                .unwrap();
        assert_eq!(err["type"], "error");
        assert_eq!(err["error"]["type"], "overloaded_error");
    }

    #[test]
    fn pieces_keep_every_character() {
        for text in ["", "one", "a b  c\nd ", " lead", "héllo wörld"] {
            assert_eq!(pieces(text).concat(), text);
        }
    }
}
