//! What this crate adds to each provider call, measured against a baseline
//! taken in the same run:
//! - HTTP: `Providers::call` (render the template, build the body, send,
//!   read, parse, classify) against a bare reqwest POST of the same body to
//!   the same local keep-alive server, both JSON and streamed (SSE) replies;
//! - pure functions: template rendering, verdict parsing and redaction
//!   against a naive equivalent (`format!`, `contains`, `replace`).
//!
//! A plain `main` (harness = false): `cargo bench -p runnel-providers --bench call_overhead`.
//! Each figure is the median of 5 runs with the min–max range.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use runnel_core::{
    CallSpec, ExampleData, ExampleId, ExperimentId, Job, JobKind, Message, Provider, ProviderKind,
    RateKey, TaskKey, TaskWork,
};
use runnel_providers::{ProviderEntry, Providers, Settings, redact, template, verdict};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// `cargo bench` passes `--bench`; `cargo test --all-targets` runs this
/// binary without it, and then a small smoke run checks that it works.
fn measuring() -> bool {
    static MEASURING: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *MEASURING.get_or_init(|| std::env::args().any(|a| a == "--bench"))
}

/// Runs per figure.
fn runs() -> usize {
    if measuring() { 5 } else { 1 }
}

/// HTTP calls per run.
fn calls() -> usize {
    if measuring() { 2000 } else { 50 }
}

/// Pure-function operations per run.
fn ops_per_run() -> usize {
    if measuring() { 100_000 } else { 1_000 }
}
const CONCURRENCY: usize = 16;
const STREAM_EVENTS: usize = 50;

fn json_reply() -> String {
    json!({
        "choices": [{"message": {"role": "assistant", "content": "The answer is 4."}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 20, "completion_tokens": 5}
    })
    .to_string()
}

fn sse_reply() -> String {
    let mut body = String::new();
    for i in 0..STREAM_EVENTS {
        let chunk = json!({"choices": [{"delta": {"content": format!("token{i} ")}}]});
        body.push_str(&format!("data: {chunk}\n\n"));
    }
    let end = json!({"choices": [{"delta": {}, "finish_reason": "stop"}], "usage": {"prompt_tokens": 20, "completion_tokens": 50}});
    body.push_str(&format!("data: {end}\n\ndata: [DONE]\n\n"));
    body
}

/// A minimal keep-alive HTTP/1.1 server: reads a request (head and
/// `content-length` body) and answers with a fixed JSON or SSE reply.
async fn serve(mut socket: TcpStream, json: Arc<String>, sse: Arc<String>) {
    let _ = socket.set_nodelay(true);
    let mut buf: Vec<u8> = Vec::with_capacity(8192);
    let mut chunk = vec![0u8; 8192];
    loop {
        let head_end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            match socket.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        while buf.len() < head_end + length {
            match socket.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        let body = &buf[head_end..head_end + length];
        let streamed = body.windows(13).any(|w| w == b"\"stream\":true");
        let (kind, reply) = if streamed {
            ("text/event-stream", &sse)
        } else {
            ("application/json", &json)
        };
        let response = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: {kind}\r\ncontent-length: {}\r\n\r\n{reply}",
            reply.len()
        );
        if socket.write_all(response.as_bytes()).await.is_err() {
            return;
        }
        buf.drain(..head_end + length);
    }
}

async fn start_server() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let json = Arc::new(json_reply());
    let sse = Arc::new(sse_reply());
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            tokio::spawn(serve(socket, Arc::clone(&json), Arc::clone(&sse)));
        }
    });
    format!("http://{addr}/v1")
}

fn task_job(stream: bool) -> Job {
    let call = CallSpec {
        provider: "local".into(),
        model: "bench".into(),
        messages: vec![
            Message {
                role: "system".into(),
                content: "You answer arithmetic questions briefly.".into(),
            },
            Message {
                role: "user".into(),
                content: "Question: {{input.question}}\nContext: {{input.context}}".into(),
            },
        ],
        params: json!({"temperature": 0, "max_tokens": 64})
            .as_object()
            .unwrap()
            .clone(),
        timeout_s: Some(30.0),
        stream,
    };
    Job {
        experiment: ExperimentId(uuid::Uuid::nil()),
        kind: JobKind::Task {
            call: Arc::new(call),
            work: TaskWork {
                key: TaskKey {
                    example: ExampleId(1),
                    repetition: 0,
                },
                data: Arc::new(ExampleData {
                    input: json!({"question": "What is 2 + 2?", "context": "x".repeat(300)}),
                    expected: Some(json!("4")),
                    metadata: json!({}),
                }),
            },
        },
        key: RateKey::new("local", ""),
        attempt: 1,
        transient_failures: 0,
        rate_limited: 0,
        earlier_latency_ms: 0,
        tokens_reserved: None,
    }
}

/// Runs `calls()` calls of `one`, `CONCURRENCY` at a time; returns calls/s.
async fn rate<F, Fut>(one: F) -> f64
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let started = Instant::now();
    let mut pending = FuturesUnordered::new();
    let mut issued = 0;
    while issued < CONCURRENCY.min(calls()) {
        pending.push(one());
        issued += 1;
    }
    while pending.next().await.is_some() {
        if issued < calls() {
            pending.push(one());
            issued += 1;
        }
    }
    calls() as f64 / started.elapsed().as_secs_f64()
}

struct Stats {
    median: f64,
    min: f64,
    max: f64,
}

fn stats(mut values: Vec<f64>) -> Stats {
    values.sort_by(f64::total_cmp);
    Stats {
        median: values[values.len() / 2],
        min: values[0],
        max: values[values.len() - 1],
    }
}

fn report(label: &str, unit: &str, baseline: Stats, ours: Stats) {
    println!(
        "{label}\n  baseline: median {:>10.0} {unit} (min {:.0} – max {:.0})\n  runnel:   median {:>10.0} {unit} (min {:.0} – max {:.0})\n  added per operation: {:.2} µs (from the medians)",
        baseline.median,
        baseline.min,
        baseline.max,
        ours.median,
        ours.min,
        ours.max,
        (1.0 / ours.median - 1.0 / baseline.median) * 1e6
    );
}

async fn http(base: &str, providers: &Providers, stream: bool) {
    let client = reqwest::Client::new();
    let job = task_job(stream);
    let url = format!("{base}/chat/completions");
    let body = json!({
        "model": "bench", "temperature": 0, "max_tokens": 64, "stream": stream,
        "messages": [{"role": "system", "content": "You answer arithmetic questions briefly."},
                     {"role": "user", "content": format!("Question: What is 2 + 2?\nContext: {}", "x".repeat(300))}]
    })
    .to_string();
    let baseline_one = || {
        let request = client
            .post(&url)
            .header("content-type", "application/json")
            .body(body.clone());
        async move {
            let response = request.send().await.unwrap();
            black_box(response.bytes().await.unwrap());
        }
    };
    let ours_one = || async {
        let report = providers.call(&job, None).await;
        assert_eq!(report.outcome.class(), runnel_core::OutcomeClass::Success);
    };
    // Warm the connection pools.
    rate(&baseline_one).await;
    rate(&ours_one).await;
    let mut baseline = Vec::new();
    let mut ours = Vec::new();
    for _ in 0..runs() {
        baseline.push(rate(&baseline_one).await);
        ours.push(rate(&ours_one).await);
    }
    let label = if stream {
        format!(
            "HTTP, streamed reply of {STREAM_EVENTS} SSE events, {} calls x {CONCURRENCY} concurrent",
            calls()
        )
    } else {
        format!(
            "HTTP, JSON reply, {} calls x {CONCURRENCY} concurrent",
            calls()
        )
    };
    report(&label, "calls/s", stats(baseline), stats(ours));
}

/// Operations per second of `f`, `n` times.
fn ops(n: usize, mut f: impl FnMut()) -> f64 {
    let started = Instant::now();
    for _ in 0..n {
        f();
    }
    n as f64 / started.elapsed().as_secs_f64()
}

fn pure() {
    let n = ops_per_run();
    let example = ExampleData {
        input: json!({"question": "What is 2 + 2?", "context": "x".repeat(300)}),
        expected: Some(json!("4")),
        metadata: json!({}),
    };
    let vars = template::Vars::task(&example);
    let text = "Question: {{input.question}}\nContext: {{input.context}}\nExpected: {{expected}}";
    let q = example.input["question"].as_str().unwrap();
    let c = example.input["context"].as_str().unwrap();
    let (mut b, mut o) = (Vec::new(), Vec::new());
    for _ in 0..runs() {
        b.push(ops(n, || {
            black_box(format!("Question: {q}\nContext: {c}\nExpected: {}", "4"));
        }));
        o.push(ops(n, || {
            black_box(template::render(black_box(text), &vars).unwrap());
        }));
    }
    report("template render vs format!", "ops/s", stats(b), stats(o));

    let labels = vec!["CORRECT".to_string(), "INCORRECT".to_string()];
    let reply = "The output says 4 and the reference says 4, so it matches.\nLabel: CORRECT";
    let (mut b, mut o) = (Vec::new(), Vec::new());
    for _ in 0..runs() {
        b.push(ops(n, || {
            black_box(black_box(reply).to_lowercase().contains("incorrect"));
        }));
        o.push(ops(n, || {
            black_box(verdict::parse_verdict(black_box(reply), &labels).unwrap());
        }));
    }
    report(
        "verdict parse vs lowercase+contains",
        "ops/s",
        stats(b),
        stats(o),
    );

    let key = "sk-bench-0123456789abcdefghijklmnop";
    let error = format!(
        "HTTP 401 Unauthorized: invalid_request_error: Incorrect API key provided: {key}. {}",
        "You can find your API key at https://platform.example/account/api-keys. ".repeat(5)
    );
    let (mut b, mut o) = (Vec::new(), Vec::new());
    for _ in 0..runs() {
        b.push(ops(n, || {
            black_box(black_box(&error).replace(key, "[REDACTED]"));
        }));
        o.push(ops(n, || {
            black_box(redact::redact(black_box(&error), &[key]));
        }));
    }
    report(
        "redact (500-char error) vs str::replace",
        "ops/s",
        stats(b),
        stats(o),
    );
}

fn main() {
    if !measuring() {
        println!("call_overhead: smoke run (use `cargo bench` for figures)");
    }
    println!(
        "call_overhead: median of {} runs, min–max. Shared 2-core machine with other agents \
         compiling at the same time: treat the absolute figures as noisy; the baseline is measured \
         in the same run.",
        runs()
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let base = start_server().await;
        let entry = ProviderEntry::new(ProviderKind::Local).with_base_url(base.clone());
        let settings = Settings {
            task_timeout: Duration::from_secs(30),
            ..Settings::default()
        };
        let providers = Providers::new([("local".to_owned(), entry)], settings, |_| None).unwrap();
        http(&base, &providers, false).await;
        http(&base, &providers, true).await;
    });
    pure();
}
