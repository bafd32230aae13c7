//! Streaming over real sockets: both SSE formats parsed event by event,
//! usage in the stream, the same text as the JSON reply, pace, and
//! in-flight counting while streams are open.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::{chat_body, messages_body, read_events, start};
use serde_json::{Value, json};

fn stream(mut body: Value, include_usage: bool) -> Value {
    body["stream"] = json!(true);
    if include_usage {
        body["stream_options"] = json!({"include_usage": true});
    }
    body
}

#[tokio::test]
async fn openai_stream_parses_event_by_event_and_matches_the_json_reply() {
    let t = start(json!({})).await;
    let prompt = "Tell me about rivers.";
    let whole = t.chat_json("k", &chat_body(prompt)).await;
    let want_text = whole["choices"][0]["message"]["content"].as_str().unwrap();

    let events = read_events(t.chat("k", &stream(chat_body(prompt), true)).await.unwrap()).await;
    let (done, chunks) = events.split_last().unwrap();
    assert_eq!(done.data, "[DONE]");
    let chunks: Vec<Value> = chunks
        .iter()
        .map(|e| {
            assert_eq!(e.name, None);
            serde_json::from_str(&e.data).unwrap()
        })
        .collect();
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let text: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(text, want_text);
    assert!(chunks.len() > 5, "one chunk per word");
    for c in &chunks {
        assert_eq!(c["object"], "chat.completion.chunk");
        assert_eq!(c["id"], chunks[0]["id"]);
    }
    let finish = &chunks[chunks.len() - 2];
    assert_eq!(finish["choices"][0]["finish_reason"], "stop");
    let usage = chunks.last().unwrap();
    assert_eq!(usage["choices"], json!([]));
    assert_eq!(usage["usage"], whole["usage"]);
}

#[tokio::test]
async fn openai_stream_without_include_usage_has_no_usage_chunk() {
    let t = start(json!({})).await;
    let events = read_events(
        t.chat("k", &stream(chat_body("What is 6 × 7?"), false))
            .await
            .unwrap(),
    )
    .await;
    let data: Vec<&str> = events.iter().map(|e| e.data.as_str()).collect();
    assert_eq!(data.len(), 4, "role, \"42\", finish, [DONE]: {data:?}");
    assert!(data.iter().all(|d| !d.contains("\"usage\"")));
    let content: Value = serde_json::from_str(data[1]).unwrap();
    assert_eq!(content["choices"][0]["delta"]["content"], "42");
}

#[tokio::test]
async fn anthropic_stream_has_the_event_sequence_and_the_json_text() {
    let t = start(json!({})).await;
    let prompt = "Expected: 4\nGot: 5\nAnswer CORRECT or INCORRECT.";
    let whole = t.messages_json("k", &messages_body(prompt)).await;
    assert_eq!(whole["stop_reason"], "end_turn");
    let want_text = whole["content"][0]["text"].as_str().unwrap();
    assert!(want_text.starts_with("INCORRECT\n"), "{want_text}");

    let events = read_events(
        t.messages("k", &stream(messages_body(prompt), false))
            .await
            .unwrap(),
    )
    .await;
    let names: Vec<&str> = events.iter().map(|e| e.name.as_deref().unwrap()).collect();
    let deltas = names
        .iter()
        .filter(|n| **n == "content_block_delta")
        .count();
    assert!(deltas >= 2);
    let mut want = vec!["message_start", "content_block_start", "ping"];
    want.extend(std::iter::repeat_n("content_block_delta", deltas));
    want.extend(["content_block_stop", "message_delta", "message_stop"]);
    assert_eq!(names, want);
    let data: Vec<Value> = events
        .iter()
        .map(|e| serde_json::from_str(&e.data).unwrap())
        .collect();
    for (event, value) in events.iter().zip(&data) {
        assert_eq!(
            event.name.as_deref(),
            value["type"].as_str(),
            "name and type agree"
        );
    }
    assert_eq!(
        data[0]["message"]["usage"]["input_tokens"],
        whole["usage"]["input_tokens"]
    );
    let text: String = data
        .iter()
        .filter_map(|d| d["delta"]["text"].as_str())
        .collect();
    assert_eq!(text, want_text);
    let end = &data[data.len() - 2];
    assert_eq!(end["delta"]["stop_reason"], "end_turn");
    assert_eq!(
        end["usage"]["output_tokens"],
        whole["usage"]["output_tokens"]
    );
}

#[tokio::test]
async fn truncated_streams_say_length_and_max_tokens() {
    let t = start(json!({})).await;
    let mut body = stream(
        chat_body("Expected 1; got 2. Answer CORRECT or INCORRECT"),
        false,
    );
    body["max_tokens"] = json!(1);
    let events = read_events(t.chat("k", &body).await.unwrap()).await;
    let finish: Value = serde_json::from_str(&events[events.len() - 2].data).unwrap();
    assert_eq!(finish["choices"][0]["finish_reason"], "length");
    let mut body = stream(
        messages_body("Expected 1; got 2. Answer CORRECT or INCORRECT"),
        false,
    );
    body["max_tokens"] = json!(1);
    let events = read_events(t.messages("k", &body).await.unwrap()).await;
    let end: Value = serde_json::from_str(&events[events.len() - 2].data).unwrap();
    assert_eq!(end["delta"]["stop_reason"], "max_tokens");
}

#[tokio::test]
async fn events_are_paced_by_the_chunk_delay() {
    let t = start(json!({"latency": {"stream_chunk_delay": "15ms"}})).await;
    let started = Instant::now();
    let events = read_events(
        t.chat("k", &stream(chat_body("What is 1 + 1?"), false))
            .await
            .unwrap(),
    )
    .await;
    // Lower bound only: the pauses between the 4 events are real waits.
    assert_eq!(events.len(), 4);
    assert!(
        started.elapsed() >= Duration::from_millis(45),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn open_streams_count_as_in_flight() {
    // Streams that pause an hour between events stay open until shutdown.
    let t = start(json!({"latency": {"stream_chunk_delay": "1h"}, "shutdown_grace": "10ms"})).await;
    let mut open = Vec::new();
    for _ in 0..5 {
        let response = t
            .chat("k", &stream(chat_body("hello"), false))
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        open.push(response);
    }
    let stats = t.http_stats().await;
    assert_eq!(stats.concurrency.current, 5);
    assert_eq!(stats.concurrency.peak, 5);
    assert_eq!(stats.classes.ok, 5);
    drop(open);
    t.sim.shutdown().await;
}
