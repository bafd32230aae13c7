//! Streamed replies and transport failures over real sockets on 127.0.0.1:
//! normal, truncated and malformed streams for each protocol, text chunks
//! delivered as they arrive, oversize streams, slow servers (timeouts),
//! refused connections, and connections reset or closed mid-reply.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use runnel_core::{CallSpec, ChunkSink, Outcome, OutcomeClass, Provider, ProviderKind, Reply};
use serde_json::Value;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio::sync::{Notify, mpsc};
use wiremock::matchers::{method, path, query_param};
use wiremock::{Mock, MockServer, ResponseTemplate};

fn streaming(mut call: CallSpec) -> CallSpec {
    call.stream = true;
    call
}

async fn sse_server(path_: &str, status: u16, body: String) -> MockServer {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(path_))
        .respond_with(ResponseTemplate::new(status).set_body_raw(body, "text/event-stream"))
        .mount(&server)
        .await;
    server
}

const OPENAI_EVENTS: [&str; 5] = [
    r#"{"choices":[{"index":0,"delta":{"role":"assistant","content":""}}]}"#,
    r#"{"choices":[{"index":0,"delta":{"content":"Two plus"}}]}"#,
    r#"{"choices":[{"index":0,"delta":{"content":" two is 4."},"finish_reason":"stop"}]}"#,
    r#"{"choices":[],"usage":{"prompt_tokens":9,"completion_tokens":5}}"#,
    "[DONE]",
];

async fn openai_stream(body: String) -> (runnel_core::CallReport, Vec<String>, MockServer) {
    let server = sse_server("/v1/chat/completions", 200, body).await;
    let p = registry("oa", ProviderKind::OpenAi, &format!("{}/v1", server.uri()));
    let (sink, seen) = recording_sink();
    let report = p
        .call(
            &task(streaming(spec("oa", "m", &[("user", "hi")]))),
            Some(sink),
        )
        .await;
    let seen = seen.lock().unwrap().clone();
    (report, seen, server)
}

#[tokio::test]
async fn openai_stream_delivers_chunks_and_usage() {
    let (report, seen, server) = openai_stream(sse(&OPENAI_EVENTS)).await;
    assert_eq!(
        report.outcome,
        Outcome::Success(Reply::Task {
            output: "Two plus two is 4.".into()
        })
    );
    assert_eq!(seen, ["Two plus", " two is 4."]);
    assert_eq!(report.usage.unwrap().total(), 14);
    let request = &server.received_requests().await.unwrap()[0];
    let body: Value = request.body_json().unwrap();
    assert_eq!(body["stream"], true);
    assert_eq!(body["stream_options"]["include_usage"], true);
    assert_eq!(request.headers.get("accept").unwrap(), "text/event-stream");
}

#[tokio::test]
async fn truncated_and_malformed_streams_are_transient() {
    let (report, seen, _s) = openai_stream(sse(&OPENAI_EVENTS[..2])).await;
    assert_eq!(report.outcome.class(), OutcomeClass::Transient);
    assert!(
        report
            .outcome
            .message()
            .unwrap()
            .starts_with("truncated stream"),
        "{:?}",
        report.outcome
    );
    assert_eq!(seen, ["Two plus"]);

    let mut events = OPENAI_EVENTS.to_vec();
    events.insert(2, r#"{"choices":[{"delta":{"content":"#);
    let (report, _, _s) = openai_stream(sse(&events)).await;
    assert_eq!(report.outcome.class(), OutcomeClass::Transient);
    assert!(
        report
            .outcome
            .message()
            .unwrap()
            .starts_with("malformed stream event"),
        "{:?}",
        report.outcome
    );

    let (report, _, _s) = openai_stream(sse(&[
        r#"{"error":{"message":"Rate limit exceeded mid-stream"}}"#,
    ]))
    .await;
    assert_eq!(report.outcome.class(), OutcomeClass::RateLimited);
}

#[tokio::test]
async fn a_server_that_ignores_stream_and_answers_json_still_succeeds() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200).set_body_json(openai_reply("plain")))
        .mount(&server)
        .await;
    let p = registry("oa", ProviderKind::OpenAi, &format!("{}/v1", server.uri()));
    let report = p
        .call(&task(streaming(spec("oa", "m", &[("user", "hi")]))), None)
        .await;
    assert_eq!(
        report.outcome,
        Outcome::Success(Reply::Task {
            output: "plain".into()
        })
    );
}

#[tokio::test]
async fn an_error_status_on_a_stream_request_is_classified_like_any_other() {
    let server = sse_server("/v1/chat/completions", 429, String::new()).await;
    let p = registry("oa", ProviderKind::OpenAi, &format!("{}/v1", server.uri()));
    let report = p
        .call(&task(streaming(spec("oa", "m", &[("user", "hi")]))), None)
        .await;
    assert_eq!(report.outcome.class(), OutcomeClass::RateLimited);
}

#[tokio::test]
async fn anthropic_stream_normal_truncated_and_overloaded() {
    let events = [
        (
            "message_start",
            r#"{"type":"message_start","message":{"usage":{"input_tokens":12,"output_tokens":1}}}"#,
        ),
        (
            "content_block_start",
            r#"{"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}"#,
        ),
        ("ping", r#"{"type": "ping"}"#),
        (
            "content_block_delta",
            r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Fo"}}"#,
        ),
        (
            "content_block_delta",
            r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"ur"}}"#,
        ),
        (
            "content_block_stop",
            r#"{"type":"content_block_stop","index":0}"#,
        ),
        (
            "message_delta",
            r#"{"type":"message_delta","delta":{"stop_reason":"end_turn"},"usage":{"output_tokens":2}}"#,
        ),
        ("message_stop", r#"{"type":"message_stop"}"#),
    ];
    let render = |events: &[(&str, &str)]| -> String {
        events
            .iter()
            .map(|(name, data)| format!("event: {name}\ndata: {data}\n\n"))
            .collect()
    };
    let overloaded = [
        events[0],
        (
            "error",
            r#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#,
        ),
    ];
    let cases = [
        (render(&events), OutcomeClass::Success, vec!["Fo", "ur"]),
        (
            render(&events[..5]),
            OutcomeClass::Transient,
            vec!["Fo", "ur"],
        ),
        (render(&overloaded), OutcomeClass::RateLimited, vec![]),
    ];
    for (body, class, chunks) in cases {
        let server = sse_server("/v1/messages", 200, body).await;
        let p = registry("c", ProviderKind::Anthropic, &server.uri());
        let (sink, seen) = recording_sink();
        let report = p
            .call(
                &task(streaming(spec("c", "m", &[("user", "hi")]))),
                Some(sink),
            )
            .await;
        assert_eq!(report.outcome.class(), class, "{:?}", report.outcome);
        assert_eq!(*seen.lock().unwrap(), chunks);
        if class == OutcomeClass::Success {
            assert_eq!(report.usage.unwrap().total(), 14);
        }
    }
}

#[tokio::test]
async fn gemini_stream_normal_and_truncated() {
    let events = [
        r#"{"candidates":[{"content":{"parts":[{"text":"Fo"}],"role":"model"}}]}"#,
        r#"{"candidates":[{"content":{"parts":[{"text":"ur"}],"role":"model"},"finishReason":"STOP"}],"usageMetadata":{"promptTokenCount":5,"candidatesTokenCount":2}}"#,
    ];
    for (body, class) in [
        (sse(&events), OutcomeClass::Success),
        (sse(&events[..1]), OutcomeClass::Transient),
    ] {
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .and(path("/v1beta/models/g:streamGenerateContent"))
            .and(query_param("alt", "sse"))
            .respond_with(ResponseTemplate::new(200).set_body_raw(body, "text/event-stream"))
            .mount(&server)
            .await;
        let p = registry(
            "gem",
            ProviderKind::Gemini,
            &format!("{}/v1beta", server.uri()),
        );
        let report = p
            .call(&task(streaming(spec("gem", "g", &[("user", "hi")]))), None)
            .await;
        assert_eq!(report.outcome.class(), class, "{:?}", report.outcome);
        if class == OutcomeClass::Success {
            assert_eq!(
                report.outcome,
                Outcome::Success(Reply::Task {
                    output: "Four".into()
                })
            );
        }
    }
}

#[tokio::test]
async fn oversize_streams_are_permanent() {
    let delta = format!(
        r#"{{"choices":[{{"delta":{{"content":"{}"}}}}]}}"#,
        "y".repeat(500)
    );
    let events: Vec<&str> = std::iter::repeat_n(delta.as_str(), 10).collect();
    let server = sse_server("/v1/chat/completions", 200, sse(&events)).await;
    let p = registry_with(
        "oa",
        runnel_providers::ProviderEntry {
            max_response_bytes: 2000,
            ..entry(ProviderKind::OpenAi, &format!("{}/v1", server.uri()))
        },
    );
    let report = p
        .call(&task(streaming(spec("oa", "m", &[("user", "hi")]))), None)
        .await;
    assert_eq!(
        report.outcome,
        Outcome::Permanent {
            message: "reply is larger than max_response_bytes (2000 bytes)".into()
        }
    );
}

/// Chunks reach the sink while the stream is still open: the server sends
/// the second half only after the sink has seen the first.
#[tokio::test]
async fn chunks_arrive_before_the_stream_ends() {
    let first_seen = Arc::new(Notify::new());
    let gate = Arc::clone(&first_seen);
    let base = raw_server(move |mut socket| {
        let gate = Arc::clone(&gate);
        async move {
            read_request_head(&mut socket).await;
            write_sse_head(&mut socket).await;
            write_chunk(&mut socket, &sse(&[OPENAI_EVENTS[1]])).await;
            gate.notified().await;
            write_chunk(&mut socket, &sse(&OPENAI_EVENTS[2..])).await;
            write_chunk(&mut socket, "").await;
        }
    })
    .await;
    let p = registry("oa", ProviderKind::OpenAi, &base);
    let (tx, mut rx) = mpsc::unbounded_channel::<String>();
    let notify = Arc::clone(&first_seen);
    let sink: ChunkSink = Arc::new(move |t: &str| {
        let _ = tx.send(t.to_owned());
        notify.notify_one();
    });
    let report = p
        .call(
            &task(streaming(spec("oa", "m", &[("user", "hi")]))),
            Some(sink),
        )
        .await;
    assert_eq!(
        report.outcome,
        Outcome::Success(Reply::Task {
            output: "Two plus two is 4.".into()
        })
    );
    assert_eq!(rx.recv().await.unwrap(), "Two plus");
    assert_eq!(rx.recv().await.unwrap(), " two is 4.");
}

#[tokio::test]
async fn a_silent_server_times_out_as_transient() {
    let base = raw_server(|mut socket| async move {
        read_request_head(&mut socket).await;
        // Hold the connection open without answering until the client leaves.
        let mut buf = [0u8; 64];
        let _ = tokio::io::AsyncReadExt::read(&mut socket, &mut buf).await;
    })
    .await;
    let p = registry("oa", ProviderKind::OpenAi, &base);
    let mut call = spec("oa", "m", &[("user", "hi")]);
    call.timeout_s = Some(0.3);
    let report = p.call(&task(call), None).await;
    assert_eq!(report.outcome.class(), OutcomeClass::Transient);
    let message = report.outcome.message().unwrap();
    assert!(
        message.starts_with("timed out: no complete reply within 300ms"),
        "{message}"
    );
    assert!(
        report.latency >= Duration::from_millis(300),
        "{:?}",
        report.latency
    );
}

#[tokio::test]
async fn a_stream_that_stalls_times_out_as_transient() {
    let base = raw_server(|mut socket| async move {
        read_request_head(&mut socket).await;
        write_sse_head(&mut socket).await;
        write_chunk(&mut socket, &sse(&[OPENAI_EVENTS[1]])).await;
        let mut buf = [0u8; 64];
        let _ = tokio::io::AsyncReadExt::read(&mut socket, &mut buf).await;
    })
    .await;
    let p = registry("oa", ProviderKind::OpenAi, &base);
    let mut call = streaming(spec("oa", "m", &[("user", "hi")]));
    call.timeout_s = Some(0.3);
    let (sink, seen) = recording_sink();
    let report = p.call(&task(call), Some(sink)).await;
    assert_eq!(
        report.outcome.class(),
        OutcomeClass::Transient,
        "{:?}",
        report.outcome
    );
    assert!(
        report.outcome.message().unwrap().starts_with("timed out"),
        "{:?}",
        report.outcome
    );
    assert_eq!(*seen.lock().unwrap(), ["Two plus"]);
}

#[tokio::test]
async fn refused_connections_are_transient() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let p = registry("oa", ProviderKind::OpenAi, &format!("http://{addr}/v1"));
    let report = p
        .call(&task(spec("oa", "m", &[("user", "hi")])), None)
        .await;
    assert_eq!(report.outcome.class(), OutcomeClass::Transient);
    let message = report.outcome.message().unwrap();
    assert!(message.starts_with("could not connect"), "{message}");
}

#[tokio::test]
async fn connections_reset_or_closed_mid_reply_are_transient() {
    // Reset (RST) right after the request arrives.
    let reset = raw_server(|mut socket| async move {
        read_request_head(&mut socket).await;
        let _ = socket.set_zero_linger();
        drop(socket);
    })
    .await;
    // Closed half-way through a declared body.
    let cut_body = raw_server(|mut socket| async move {
        read_request_head(&mut socket).await;
        let head = "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 500\r\n\r\n{\"choices\":";
        let _ = socket.write_all(head.as_bytes()).await;
        let _ = socket.shutdown().await;
    })
    .await;
    // Closed in the middle of a stream, inside an event.
    let cut_stream = raw_server(|mut socket| async move {
        read_request_head(&mut socket).await;
        write_sse_head(&mut socket).await;
        write_chunk(&mut socket, &sse(&[OPENAI_EVENTS[1]])).await;
        write_chunk(&mut socket, "data: {\"choices\":[{\"del").await;
        let _ = socket.shutdown().await;
    })
    .await;
    for (base, stream) in [(reset, false), (cut_body, false), (cut_stream, true)] {
        let p = registry("oa", ProviderKind::OpenAi, &base);
        let mut call = spec("oa", "m", &[("user", "hi")]);
        call.stream = stream;
        let report = p.call(&task(call), None).await;
        assert_eq!(
            report.outcome.class(),
            OutcomeClass::Transient,
            "{base}: {:?}",
            report.outcome
        );
    }
}
