//! Shared helpers of the integration tests: a simulator on a manual clock,
//! request builders, an SSE splitter and a raw TCP exchange.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::time::Duration;

use futures::StreamExt;
use runnel_sim::{ManualClock, Sim, SimConfig, SimHandle, StatsSnapshot};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A simulator on a manual clock, with a client.
pub(crate) struct TestSim {
    pub(crate) sim: SimHandle,
    pub(crate) clock: ManualClock,
    pub(crate) client: reqwest::Client,
}

/// Starts a simulator whose config is the default with `patch` merged in.
pub(crate) async fn start(patch: Value) -> TestSim {
    let config = SimConfig::default().patched(&patch).expect("test config");
    let clock = ManualClock::new();
    let sim = Sim::start_with_clock(config, clock.clone().into())
        .await
        .expect("sim starts");
    TestSim {
        sim,
        clock,
        client: reqwest::Client::new(),
    }
}

pub(crate) fn chat_body(prompt: &str) -> Value {
    json!({"model": "sim-model", "messages": [{"role": "user", "content": prompt}]})
}

pub(crate) fn messages_body(prompt: &str) -> Value {
    json!({"model": "sim-claude", "max_tokens": 256, "messages": [{"role": "user", "content": prompt}]})
}

impl TestSim {
    pub(crate) fn url(&self, path: &str) -> String {
        format!("{}{path}", self.sim.url())
    }

    pub(crate) fn advance(&self, by: Duration) {
        self.clock.advance(by);
    }

    /// POST /v1/chat/completions with `key` as bearer token.
    pub(crate) async fn chat(&self, key: &str, body: &Value) -> reqwest::Result<reqwest::Response> {
        self.client
            .post(self.url("/v1/chat/completions"))
            .bearer_auth(key)
            .json(body)
            .send()
            .await
    }

    /// POST /v1/messages with `key` as x-api-key.
    pub(crate) async fn messages(
        &self,
        key: &str,
        body: &Value,
    ) -> reqwest::Result<reqwest::Response> {
        self.client
            .post(self.url("/v1/messages"))
            .header("x-api-key", key)
            .header("anthropic-version", "2023-06-01")
            .json(body)
            .send()
            .await
    }

    /// The content of a chat completion reply.
    pub(crate) async fn ask(&self, prompt: &str) -> String {
        let response = self.chat("sk-test", &chat_body(prompt)).await.unwrap();
        assert_eq!(response.status(), 200);
        let body: Value = response.json().await.unwrap();
        body["choices"][0]["message"]["content"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    /// The JSON body of a chat completion.
    pub(crate) async fn chat_json(&self, key: &str, body: &Value) -> Value {
        self.chat(key, body).await.unwrap().json().await.unwrap()
    }

    /// The JSON body of a message.
    pub(crate) async fn messages_json(&self, key: &str, body: &Value) -> Value {
        self.messages(key, body)
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// GET /stats over HTTP.
    pub(crate) async fn http_stats(&self) -> StatsSnapshot {
        let response = self.client.get(self.url("/stats")).send().await.unwrap();
        assert_eq!(response.status(), 200);
        response.json().await.unwrap()
    }

    /// POST /admin/config.
    pub(crate) async fn admin(&self, patch: &Value) -> reqwest::Response {
        self.client
            .post(self.url("/admin/config"))
            .json(patch)
            .send()
            .await
            .unwrap()
    }
}

/// A header as text ("" when absent).
pub(crate) fn header(response: &reqwest::Response, name: &str) -> String {
    response
        .headers()
        .get(name)
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default()
}

/// The `error.message` of an error response (both APIs put it there).
pub(crate) async fn error_message(response: reqwest::Response) -> String {
    let body: Value = response.json().await.unwrap();
    body["error"]["message"].as_str().unwrap().to_owned()
}

/// Whether any header name starts with `prefix`.
pub(crate) fn has_header_starting(response: &reqwest::Response, prefix: &str) -> bool {
    response
        .headers()
        .keys()
        .any(|k| k.as_str().starts_with(prefix))
}

/// One SSE event: its `event:` name (if any) and its `data:` text.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct SseEvent {
    pub(crate) name: Option<String>,
    pub(crate) data: String,
}

/// Reads a whole SSE response event by event (events end at a blank line),
/// checking that the stream ends on an event boundary.
pub(crate) async fn read_events(response: reqwest::Response) -> Vec<SseEvent> {
    assert_eq!(header(&response, "content-type"), "text/event-stream");
    let mut stream = response.bytes_stream();
    let mut buffer = String::new();
    let mut events = Vec::new();
    while let Some(chunk) = stream.next().await {
        buffer.push_str(std::str::from_utf8(&chunk.unwrap()).unwrap());
        while let Some(end) = buffer.find("\n\n") {
            let block: String = buffer.drain(..end + 2).collect();
            let mut event = SseEvent {
                name: None,
                data: String::new(),
            };
            for line in block.lines() {
                if let Some(name) = line.strip_prefix("event: ") {
                    event.name = Some(name.to_owned());
                } else if let Some(data) = line.strip_prefix("data: ") {
                    event.data.push_str(data);
                } else {
                    assert!(line.is_empty(), "unexpected SSE line {line:?}");
                }
            }
            events.push(event);
        }
    }
    assert!(
        buffer.is_empty(),
        "stream ended inside an event: {buffer:?}"
    );
    events
}

/// What a raw HTTP/1.1 exchange saw: every byte received, and how reading
/// ended (`None`: a clean end of stream).
pub(crate) struct RawExchange {
    pub(crate) received: Vec<u8>,
    pub(crate) error: Option<std::io::ErrorKind>,
}

impl RawExchange {
    pub(crate) fn text(&self) -> String {
        String::from_utf8_lossy(&self.received).into_owned()
    }
}

/// Sends one POST with `Connection: close` over a fresh socket and reads
/// until the server closes or resets it.
pub(crate) async fn raw_post(addr: SocketAddr, path: &str, body: &Value) -> RawExchange {
    let body = body.to_string();
    let request = format!(
        "POST {path} HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\nauthorization: Bearer sk-raw\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let mut socket = tokio::net::TcpStream::connect(addr).await.unwrap();
    socket.write_all(request.as_bytes()).await.unwrap();
    let mut received = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match socket.read(&mut buf).await {
            Ok(0) => {
                return RawExchange {
                    received,
                    error: None,
                };
            }
            Ok(n) => received.extend_from_slice(&buf[..n]),
            Err(e) => {
                return RawExchange {
                    received,
                    error: Some(e.kind()),
                };
            }
        }
    }
}
