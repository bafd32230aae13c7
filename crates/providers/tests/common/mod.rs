//! Helpers shared by the integration tests: jobs, registries pointed at a
//! local server, and tiny hand-written TCP servers for the endings a mock
//! HTTP server cannot produce (resets, silence, paced streams).
#![allow(dead_code, unreachable_pub)]

use std::sync::{Arc, Mutex};

use runnel_core::{
    CallSpec, ChunkSink, EvalKey, EvalWork, EvaluatorId, EvaluatorSpec, ExampleData, ExampleId,
    ExperimentId, Job, JobKind, Message, ProviderKind, RateKey, RunId, TaskKey, TaskWork,
};
use runnel_providers::{ProviderEntry, Providers, Settings};
use serde_json::{Map, Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// The key every test registry reads from `TEST_KEY`.
pub const KEY: &str = "test-key-4e1f0c2d9b8a7f6e";

/// A call spec for entry `provider`.
pub fn spec(provider: &str, model: &str, messages: &[(&str, &str)]) -> CallSpec {
    CallSpec {
        provider: provider.into(),
        model: model.into(),
        messages: messages
            .iter()
            .map(|(role, content)| Message {
                role: (*role).into(),
                content: (*content).into(),
            })
            .collect(),
        params: Map::new(),
        timeout_s: Some(10.0),
        stream: false,
    }
}

/// The example every test job uses.
pub fn example() -> Arc<ExampleData> {
    Arc::new(ExampleData {
        input: json!({"question": "What is 2+2?", "n": 2}),
        expected: Some(json!("4")),
        metadata: json!({"source": "arithmetic"}),
    })
}

fn job(kind: JobKind) -> Job {
    Job {
        experiment: ExperimentId(uuid_zero()),
        kind,
        key: RateKey::new("test", ""),
        attempt: 1,
        transient_failures: 0,
        rate_limited: 0,
        earlier_latency_ms: 0,
        tokens_reserved: None,
    }
}

fn uuid_zero() -> uuid::Uuid {
    uuid::Uuid::nil()
}

/// A task job sending `call` with [`example`].
pub fn task(call: CallSpec) -> Job {
    job(JobKind::Task {
        call: Arc::new(call),
        work: TaskWork {
            key: TaskKey {
                example: ExampleId(1),
                repetition: 0,
            },
            data: example(),
        },
    })
}

/// An eval job judging `output` with `call` and `labels`.
pub fn eval(call: CallSpec, labels: &[&str], output: &str) -> Job {
    job(JobKind::Eval {
        evaluator: Arc::new(EvaluatorSpec {
            id: EvaluatorId(3),
            name: "judge".into(),
            call,
            labels: labels.iter().map(|l| (*l).to_owned()).collect(),
        }),
        work: EvalWork {
            key: EvalKey {
                run: RunId(5),
                evaluator: EvaluatorId(3),
            },
            example: ExampleId(1),
            data: example(),
            output: output.into(),
        },
    })
}

/// A registry with one entry `name` of `kind` at `base_url`, whose key
/// variable `TEST_KEY` holds [`KEY`].
pub fn registry(name: &str, kind: ProviderKind, base_url: &str) -> Providers {
    registry_with(name, entry(kind, base_url))
}

/// A test entry of `kind` at `base_url` reading `TEST_KEY`.
pub fn entry(kind: ProviderKind, base_url: &str) -> ProviderEntry {
    ProviderEntry::new(kind)
        .with_base_url(base_url)
        .with_api_key_env("TEST_KEY")
}

/// A registry with one configured entry.
pub fn registry_with(name: &str, entry: ProviderEntry) -> Providers {
    Providers::new([(name.to_owned(), entry)], Settings::default(), |var| {
        (var == "TEST_KEY").then(|| KEY.to_owned())
    })
    .expect("valid test configuration")
}

/// A sink that records every chunk.
pub fn recording_sink() -> (ChunkSink, Arc<Mutex<Vec<String>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let clone = Arc::clone(&seen);
    let sink: ChunkSink = Arc::new(move |t: &str| clone.lock().unwrap().push(t.to_owned()));
    (sink, seen)
}

/// An OpenAI-style JSON reply with `text`.
pub fn openai_reply(text: &str) -> Value {
    json!({
        "id": "chatcmpl-1", "object": "chat.completion",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 11, "completion_tokens": 3, "total_tokens": 14}
    })
}

/// SSE text of `data:` events.
pub fn sse(events: &[&str]) -> String {
    events.iter().map(|e| format!("data: {e}\n\n")).collect()
}

/// Reads one HTTP request's head (and ignores its body).
pub async fn read_request_head(socket: &mut TcpStream) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        match socket.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// A server on 127.0.0.1 that runs `serve` for each connection; returns
/// its base URL (`http://127.0.0.1:PORT/v1`).
pub async fn raw_server<F, Fut>(serve: F) -> String
where
    F: Fn(TcpStream) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            tokio::spawn(serve(socket));
        }
    });
    format!("http://{addr}/v1")
}

/// Writes a streamed (chunked) HTTP/1.1 200 head for an SSE reply.
pub async fn write_sse_head(socket: &mut TcpStream) {
    let head =
        "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n";
    socket.write_all(head.as_bytes()).await.unwrap();
}

/// Writes one HTTP chunk.
pub async fn write_chunk(socket: &mut TcpStream, data: &str) {
    let framed = format!("{:x}\r\n{data}\r\n", data.len());
    // The client may have gone; the test looks at what it reported.
    let _ = socket.write_all(framed.as_bytes()).await;
}
