//! Deterministic replies over HTTP: the documented conventions on both
//! endpoints, repeatability, usage.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{chat_body, messages_body, start};
use serde_json::{Value, json};

#[tokio::test]
async fn the_documented_conventions_hold_over_http() {
    let t = start(json!({})).await;
    assert_eq!(t.ask("What is 17 + 25?").await, "42");
    assert_eq!(t.ask("What is 9 − 12?").await, "-3");
    assert_eq!(t.ask("What is 6 × 7?").await, "42");
    let judge = t
        .ask("Expected 42; got 41. Answer CORRECT or INCORRECT.")
        .await;
    assert_eq!(judge.lines().next(), Some("INCORRECT"));
    let judge = t
        .ask("Expected: Paris\nGot: paris\nAnswer CORRECT or INCORRECT.")
        .await;
    assert_eq!(judge.lines().next(), Some("CORRECT"));
    let label = t.ask("Pick the best title. Answer one of: A, B, C").await;
    assert!(["A", "B", "C"].contains(&label.lines().next().unwrap()));
    let score = t.ask("Rate the answer from 1 to 10.").await;
    let n: i64 = score.lines().next().unwrap().parse().unwrap();
    assert!((1..=10).contains(&n));
}

#[tokio::test]
async fn the_same_prompt_gets_the_same_reply_on_both_apis() {
    let t = start(json!({"replies": {"wrong_rate": 0.5}})).await;
    for prompt in [
        "What is 123 + 456?",
        "Write a haiku.",
        "Rate it from 0 to 5.",
        "Answer YES or NO.",
    ] {
        let a = t.ask(prompt).await;
        let b = t.ask(prompt).await;
        assert_eq!(a, b, "{prompt}");
        assert_eq!(
            a,
            runnel_sim::reply(prompt, None, &t.sim.config().replies).text
        );
        // The messages body sets max_tokens 256, which sizes free text.
        let m = t.messages_json("k", &messages_body(prompt)).await;
        let want = runnel_sim::reply(prompt, Some(256), &t.sim.config().replies).text;
        assert_eq!(m["content"][0]["text"], want, "{prompt}");
        let mut chat = chat_body(prompt);
        chat["max_tokens"] = json!(256);
        let c = t.chat_json("k", &chat).await;
        assert_eq!(c["choices"][0]["message"]["content"], want, "{prompt}");
    }
}

#[tokio::test]
async fn usage_is_chars_over_four_and_text_follows_max_tokens() {
    let t = start(json!({})).await;
    let mut body = chat_body("Tell me a long story please.");
    body["max_tokens"] = json!(40);
    let r: Value = t.chat("k", &body).await.unwrap().json().await.unwrap();
    let text = r["choices"][0]["message"]["content"].as_str().unwrap();
    // 28 characters of prompt: 7 tokens.
    assert_eq!(r["usage"]["prompt_tokens"], 7);
    let completion = r["usage"]["completion_tokens"].as_u64().unwrap();
    assert_eq!(completion, (text.chars().count() as u64).div_ceil(4));
    assert!((35..=40).contains(&completion), "{completion}");
    assert_eq!(r["choices"][0]["finish_reason"], "stop");
    assert_eq!(r["model"], "sim-model");
    assert!(r["id"].as_str().unwrap().starts_with("chatcmpl-"));
    let stats = t.sim.stats();
    assert_eq!(stats.tokens.prompt, 7);
    assert_eq!(stats.tokens.completion, completion);
}

#[tokio::test]
async fn system_prompts_and_content_parts_are_part_of_the_prompt() {
    let t = start(json!({})).await;
    let body = json!({
        "model": "m",
        "messages": [
            {"role": "system", "content": "Answer CORRECT or INCORRECT."},
            {"role": "user", "content": [{"type": "text", "text": "Expected 5; got 5."}]}
        ]
    });
    let r: Value = t.chat("k", &body).await.unwrap().json().await.unwrap();
    assert!(
        r["choices"][0]["message"]["content"]
            .as_str()
            .unwrap()
            .starts_with("CORRECT\n")
    );
    let body = json!({
        "model": "m", "max_tokens": 50,
        "system": [{"type": "text", "text": "Answer CORRECT or INCORRECT."}],
        "messages": [{"role": "user", "content": "Expected 5; got 6."}]
    });
    let r: Value = t.messages("k", &body).await.unwrap().json().await.unwrap();
    assert!(
        r["content"][0]["text"]
            .as_str()
            .unwrap()
            .starts_with("INCORRECT\n")
    );
}
