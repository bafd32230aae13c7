//! Calls through the registry against a local mock server: each adapter's
//! request shape, every status class, retry-after forms, rate-limit headers,
//! bodies that do not parse or are too large, evaluators, template errors,
//! and credential redaction.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::*;
use runnel_core::{Outcome, OutcomeClass, Provider, ProviderKind, Reply, Usage};
use serde_json::{Value, json};
use wiremock::matchers::{header, method, path, query_param};
use wiremock::{Mock, MockServer, ResponseTemplate};

async fn serve(status: u16, body: &str, path_: &str) -> MockServer {
    serve_template(ResponseTemplate::new(status).set_body_string(body), path_).await
}

async fn serve_template(template: ResponseTemplate, path_: &str) -> MockServer {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(path_))
        .respond_with(template)
        .mount(&server)
        .await;
    server
}

fn openai_base(server: &MockServer) -> String {
    format!("{}/v1", server.uri())
}

async fn call_openai(server: &MockServer) -> runnel_core::CallReport {
    let p = registry("oa", ProviderKind::OpenAi, &openai_base(server));
    p.call(&task(spec("oa", "gpt-test", &[("user", "hi")])), None)
        .await
}

#[tokio::test]
async fn openai_request_and_reply() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/v1/chat/completions"))
        .and(header("authorization", format!("Bearer {KEY}").as_str()))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(openai_reply("4"))
                .insert_header("x-ratelimit-limit-requests", "500")
                .insert_header("x-ratelimit-remaining-requests", "499")
                .insert_header("x-ratelimit-reset-requests", "120ms")
                .insert_header("x-ratelimit-limit-tokens", "30000")
                .insert_header("x-ratelimit-remaining-tokens", "29986")
                .insert_header("x-ratelimit-reset-tokens", "6m0s"),
        )
        .expect(1)
        .mount(&server)
        .await;
    let p = registry("oa", ProviderKind::OpenAi, &openai_base(&server));
    let mut call = spec(
        "oa",
        "gpt-test",
        &[
            ("system", "Answer with a number."),
            ("user", "Q: {{input.question}} ({{metadata.source}})"),
        ],
    );
    call.params.insert("temperature".into(), json!(0));
    let report = p.call(&task(call), None).await;
    assert_eq!(
        report.outcome,
        Outcome::Success(Reply::Task { output: "4".into() })
    );
    assert_eq!(
        report.usage,
        Some(Usage {
            prompt_tokens: 11,
            completion_tokens: 3
        })
    );
    let limits = report.rate_limits.unwrap();
    assert_eq!(limits.requests_limit, Some(500));
    assert_eq!(limits.requests_remaining, Some(499));
    assert_eq!(limits.requests_reset, Some(Duration::from_millis(120)));
    assert_eq!(limits.tokens_remaining, Some(29986));
    assert_eq!(limits.tokens_reset, Some(Duration::from_secs(360)));
    let body: Value = server.received_requests().await.unwrap()[0]
        .body_json()
        .unwrap();
    assert_eq!(
        body,
        json!({"model": "gpt-test", "temperature": 0, "messages": [
            {"role": "system", "content": "Answer with a number."},
            {"role": "user", "content": "Q: What is 2+2? (arithmetic)"}]})
    );
}

#[tokio::test]
async fn azure_uses_its_url_scheme_and_api_key_header() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/openai/deployments/prod-4o/chat/completions"))
        .and(query_param("api-version", "2024-10-21"))
        .and(header("api-key", KEY))
        .respond_with(ResponseTemplate::new(200).set_body_json(openai_reply("ok")))
        .expect(1)
        .mount(&server)
        .await;
    let p = registry("az", ProviderKind::Azure, &server.uri());
    let report = p
        .call(&task(spec("az", "prod-4o", &[("user", "hi")])), None)
        .await;
    assert_eq!(report.outcome.class(), OutcomeClass::Success);
    let request = &server.received_requests().await.unwrap()[0];
    assert!(!request.headers.contains_key("authorization"));
}

#[tokio::test]
async fn anthropic_request_reply_and_rate_limit_headers() {
    let server = MockServer::start().await;
    let reset = (chrono::Utc::now() + chrono::Duration::seconds(30)).to_rfc3339();
    Mock::given(method("POST"))
        .and(path("/v1/messages"))
        .and(header("x-api-key", KEY))
        .and(header("anthropic-version", "2023-06-01"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(json!({
                    "type": "message", "role": "assistant", "stop_reason": "end_turn",
                    "content": [{"type": "text", "text": "Four."}],
                    "usage": {"input_tokens": 20, "output_tokens": 2}
                }))
                .insert_header("anthropic-ratelimit-requests-limit", "50")
                .insert_header("anthropic-ratelimit-requests-remaining", "49")
                .insert_header("anthropic-ratelimit-requests-reset", reset.as_str())
                .insert_header("anthropic-ratelimit-tokens-limit", "40000")
                .insert_header("anthropic-ratelimit-tokens-remaining", "39978")
                .insert_header("anthropic-ratelimit-tokens-reset", reset.as_str()),
        )
        .expect(1)
        .mount(&server)
        .await;
    let p = registry("claude", ProviderKind::Anthropic, &server.uri());
    let call = spec(
        "claude",
        "claude-test",
        &[("system", "Be terse."), ("user", "{{input.question}}")],
    );
    let report = p.call(&task(call), None).await;
    assert_eq!(
        report.outcome,
        Outcome::Success(Reply::Task {
            output: "Four.".into()
        })
    );
    assert_eq!(report.usage.unwrap().total(), 22);
    let limits = report.rate_limits.unwrap();
    assert_eq!(limits.requests_limit, Some(50));
    assert_eq!(limits.tokens_remaining, Some(39978));
    let reset = limits.requests_reset.unwrap();
    assert!(
        reset <= Duration::from_secs(30) && reset >= Duration::from_secs(10),
        "{reset:?}"
    );
    let body: Value = server.received_requests().await.unwrap()[0]
        .body_json()
        .unwrap();
    assert_eq!(
        body,
        json!({"model": "claude-test", "max_tokens": 4096, "system": "Be terse.",
               "messages": [{"role": "user", "content": "What is 2+2?"}]})
    );
}

#[tokio::test]
async fn gemini_request_and_reply_keep_the_key_out_of_the_url() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/v1beta/models/gemini-test:generateContent"))
        .and(header("x-goog-api-key", KEY))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "candidates": [{"content": {"role": "model", "parts": [{"text": "4"}]}, "finishReason": "STOP"}],
            "usageMetadata": {"promptTokenCount": 9, "candidatesTokenCount": 1}
        })))
        .expect(1)
        .mount(&server)
        .await;
    let p = registry(
        "g",
        ProviderKind::Gemini,
        &format!("{}/v1beta", server.uri()),
    );
    let call = spec(
        "g",
        "gemini-test",
        &[("system", "Be terse."), ("user", "{{input.question}}")],
    );
    let report = p.call(&task(call), None).await;
    assert_eq!(
        report.outcome,
        Outcome::Success(Reply::Task { output: "4".into() })
    );
    assert_eq!(report.usage.unwrap().total(), 10);
    let request = &server.received_requests().await.unwrap()[0];
    assert_eq!(request.url.query(), None);
    assert!(!request.url.as_str().contains(KEY));
    let body: Value = request.body_json().unwrap();
    assert_eq!(
        body,
        json!({"systemInstruction": {"parts": [{"text": "Be terse."}]},
               "contents": [{"role": "user", "parts": [{"text": "What is 2+2?"}]}]})
    );
}

#[tokio::test]
async fn every_status_class() {
    use OutcomeClass::*;
    let overloaded =
        r#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#;
    let cases: [(u16, &str, OutcomeClass, &str); 12] = [
        (
            429,
            r#"{"error":{"message":"Rate limit reached for gpt-test","type":"requests"}}"#,
            RateLimited,
            "Rate limit reached for gpt-test",
        ),
        (
            529,
            overloaded,
            RateLimited,
            "HTTP 529: overloaded_error: Overloaded",
        ),
        (
            500,
            r#"{"error":{"message":"The server had an error"}}"#,
            Transient,
            "HTTP 500 Internal Server Error: The server had an error",
        ),
        (
            502,
            "<html>Bad gateway</html>",
            Transient,
            "HTTP 502 Bad Gateway: <html>Bad gateway</html>",
        ),
        (503, "", Transient, "HTTP 503 Service Unavailable"),
        (408, "", Transient, "HTTP 408"),
        (409, "", Transient, "HTTP 409"),
        (
            400,
            r#"{"error":{"message":"Unsupported parameter: 'foo'","type":"invalid_request_error"}}"#,
            Permanent,
            "invalid_request_error: Unsupported parameter",
        ),
        (
            401,
            r#"{"error":{"message":"Invalid authentication"}}"#,
            Permanent,
            "HTTP 401 Unauthorized: Invalid authentication",
        ),
        (403, "", Permanent, "HTTP 403 Forbidden"),
        (
            404,
            r#"{"error":{"message":"The model `gpt-test` does not exist"}}"#,
            Permanent,
            "does not exist",
        ),
        (
            422,
            r#"{"detail":"model: field required"}"#,
            Permanent,
            "HTTP 422 Unprocessable Entity: model: field required",
        ),
    ];
    for (status, body, class, message) in cases {
        let server = serve(status, body, "/v1/chat/completions").await;
        let report = call_openai(&server).await;
        assert_eq!(report.outcome.class(), class, "{status}");
        let text = report.outcome.message().unwrap();
        assert!(text.contains(message), "{status}: {text}");
    }
}

#[tokio::test]
async fn retry_after_in_milliseconds_seconds_and_http_date() {
    let in_a_minute = chrono::Utc::now() + chrono::Duration::seconds(60);
    let date = in_a_minute.format("%a, %d %b %Y %H:%M:%S GMT").to_string();
    let cases = [
        (
            vec![("retry-after-ms", "1500"), ("retry-after", "2")],
            Some((1500, 1500)),
        ),
        (vec![("retry-after", "7")], Some((7000, 7000))),
        // Whole seconds, and the test may be slowed down by a busy machine.
        (vec![("retry-after", date.as_str())], Some((30_000, 60_000))),
        (vec![], None),
    ];
    for (headers, expected) in cases {
        let mut template = ResponseTemplate::new(429);
        for (k, v) in &headers {
            template = template.insert_header(*k, *v);
        }
        let server = serve_template(template, "/v1/chat/completions").await;
        let report = call_openai(&server).await;
        let Outcome::RateLimited { retry_after, .. } = report.outcome else {
            panic!("{headers:?}: {:?}", report.outcome);
        };
        match (retry_after, expected) {
            (None, None) => {}
            (Some(got), Some((lo, hi))) => assert!(
                got >= Duration::from_millis(lo) && got <= Duration::from_millis(hi),
                "{headers:?}: {got:?}"
            ),
            other => panic!("{headers:?}: {other:?}"),
        }
    }
}

#[tokio::test]
async fn unparsable_and_oversize_bodies_are_permanent() {
    let server = serve(200, r#"{"choices": [{"message": "#, "/v1/chat/completions").await;
    let report = call_openai(&server).await;
    assert_eq!(report.outcome.class(), OutcomeClass::Permanent);
    assert!(
        report
            .outcome
            .message()
            .unwrap()
            .starts_with("unparsable reply body"),
        "{:?}",
        report.outcome
    );

    let big = openai_reply(&"x".repeat(4096)).to_string();
    let server = serve(200, &big, "/v1/chat/completions").await;
    let p = registry_with(
        "oa",
        runnel_providers::ProviderEntry {
            max_response_bytes: 1024,
            ..entry(ProviderKind::OpenAi, &openai_base(&server))
        },
    );
    let report = p
        .call(&task(spec("oa", "m", &[("user", "hi")])), None)
        .await;
    assert_eq!(
        report.outcome,
        Outcome::Permanent {
            message: "reply is larger than max_response_bytes (1024 bytes)".into()
        }
    );
}

#[tokio::test]
async fn template_errors_and_missing_keys_fail_before_any_call() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200).set_body_json(openai_reply("never")))
        .expect(0)
        .mount(&server)
        .await;
    let p = registry("oa", ProviderKind::OpenAi, &openai_base(&server));
    let report = p
        .call(
            &task(spec(
                "oa",
                "m",
                &[("system", "ok"), ("user", "{{input.missing}}")],
            )),
            None,
        )
        .await;
    assert_eq!(
        report.outcome,
        Outcome::Permanent {
            message: "template error: messages[1]: `{{input.missing}}`: the example has no field `input.missing`".into()
        }
    );
    assert_eq!(
        p.estimate_tokens(&task(spec("oa", "m", &[("user", "{{input.missing}}")]))),
        None
    );

    let unset = runnel_providers::Providers::new(
        [(
            "oa".to_owned(),
            entry(ProviderKind::OpenAi, &openai_base(&server)).with_api_key_env("NOT_SET_ANYWHERE"),
        )],
        runnel_providers::Settings::default(),
        |_| None,
    )
    .unwrap();
    let report = unset
        .call(&task(spec("oa", "m", &[("user", "hi")])), None)
        .await;
    assert_eq!(
        report.outcome,
        Outcome::Permanent {
            message: "environment variable NOT_SET_ANYWHERE is not set".into()
        }
    );
    let report = unset
        .call(&task(spec("elsewhere", "m", &[("user", "hi")])), None)
        .await;
    assert_eq!(
        report.outcome,
        Outcome::Permanent {
            message: "unknown provider entry `elsewhere` (configured: oa)".into()
        }
    );
}

#[tokio::test]
async fn evaluators_read_labels_and_scores_and_report_unreadable_replies() {
    let cases = [
        (
            vec!["CORRECT", "INCORRECT"],
            "Label: INCORRECT\nThe expected answer is 4.",
            Outcome::Success(Reply::Eval {
                label: Some("INCORRECT".into()),
                score: None,
                explanation: Some("The expected answer is 4.".into()),
            }),
        ),
        (
            vec![],
            "Score: 8/10",
            Outcome::Success(Reply::Eval {
                label: None,
                score: Some(8.0),
                explanation: None,
            }),
        ),
    ];
    for (labels, reply, expected) in cases {
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .respond_with(ResponseTemplate::new(200).set_body_json(openai_reply(reply)))
            .expect(1)
            .mount(&server)
            .await;
        let p = registry("oa", ProviderKind::OpenAi, &openai_base(&server));
        let judge = spec(
            "oa",
            "judge",
            &[(
                "user",
                "Expected {{expected}}; got {{output}}. Answer CORRECT or INCORRECT.",
            )],
        );
        let report = p.call(&eval(judge, &labels, "5"), None).await;
        assert_eq!(report.outcome, expected);
        assert!(report.usage.is_some());
        let sent: Value = server.received_requests().await.unwrap()[0]
            .body_json()
            .unwrap();
        assert_eq!(
            sent["messages"][0]["content"],
            "Expected 4; got 5. Answer CORRECT or INCORRECT."
        );
    }

    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200).set_body_json(openai_reply("I am not sure.")))
        .mount(&server)
        .await;
    let p = registry("oa", ProviderKind::OpenAi, &openai_base(&server));
    let report = p
        .call(
            &eval(
                spec("oa", "judge", &[("user", "{{output}}")]),
                &["PASS", "FAIL"],
                "x",
            ),
            None,
        )
        .await;
    assert_eq!(report.outcome.class(), OutcomeClass::Permanent);
    let message = report.outcome.message().unwrap();
    assert!(
        message.starts_with("could not read the verdict: none of the labels (PASS, FAIL)")
            && message.contains("received: \"I am not sure.\""),
        "{message}"
    );
}

#[tokio::test]
async fn credentials_never_leave_in_error_texts() {
    // A provider that echoes the key it was sent, and the request headers,
    // in its error body (some proxies and debugging servers do).
    let echo = json!({
        "error": {
            "message": format!("Incorrect API key provided: {KEY}. You sent headers {{\"authorization\": \"Bearer {KEY}\", \"x-api-key\": \"{KEY}\"}}; another token: Bearer eyJhbGciOiJIUzI1NiJ9.e30.abcdefghijklmnop"),
            "type": "invalid_request_error"
        }
    })
    .to_string();
    for (kind, base_suffix, path_) in [
        (ProviderKind::OpenAi, "/v1", "/v1/chat/completions"),
        (ProviderKind::Anthropic, "", "/v1/messages"),
        (
            ProviderKind::Gemini,
            "/v1beta",
            "/v1beta/models/m:generateContent",
        ),
    ] {
        for status in [401, 429, 500] {
            let server = serve_template(
                ResponseTemplate::new(status)
                    .set_body_string(echo.clone())
                    .insert_header("x-echo-key", KEY),
                path_,
            )
            .await;
            let p = registry("p", kind, &format!("{}{base_suffix}", server.uri()));
            let report = p.call(&task(spec("p", "m", &[("user", "hi")])), None).await;
            let message = report.outcome.message().unwrap();
            assert!(!message.contains(KEY), "{kind:?} {status}: {message}");
            assert!(!message.contains("eyJhbGciOiJIUzI1NiJ9"), "{message}");
            assert!(
                message.contains("Incorrect API key provided: [REDACTED]"),
                "{message}"
            );
            let debug = format!("{report:?} {p:?}");
            assert!(!debug.contains(KEY), "{debug}");
        }
    }
}

#[tokio::test]
async fn estimates_count_the_prompt_and_the_reply_budget() {
    let p = registry("claude", ProviderKind::Anthropic, "http://127.0.0.1:9");
    let mut call = spec("claude", "m", &[("user", "{{input.question}}")]);
    // "What is 2+2?" is 12 characters: 3 tokens, plus 4 for the message.
    assert_eq!(p.estimate_tokens(&task(call.clone())), Some(7 + 4096));
    call.params.insert("max_tokens".into(), json!(100));
    assert_eq!(p.estimate_tokens(&task(call.clone())), Some(107));
    // The estimate's figures are settings: 2 characters per token and
    // nothing per message make 12 characters 6 tokens.
    let settings = runnel_providers::Settings {
        chars_per_token: 2,
        tokens_per_message: 0,
        ..runnel_providers::Settings::default()
    };
    let p = runnel_providers::Providers::new(
        [(
            "claude".to_owned(),
            entry(ProviderKind::Anthropic, "http://127.0.0.1:9"),
        )],
        settings,
        |_| None,
    )
    .unwrap();
    assert_eq!(p.estimate_tokens(&task(call)), Some(106));
}

/// `error_body_bytes` bounds how much of an error reply is read: a message
/// past the bound cannot be found, and the error quotes the raw start of the
/// body instead.
#[tokio::test]
async fn error_bodies_are_read_up_to_the_configured_size() {
    let server = MockServer::start().await;
    // The message comes after 600 bytes of padding.
    let body = format!(
        r#"{{"padding": "{}", "error": {{"message": "the model is unknown"}}}}"#,
        "x".repeat(600)
    );
    Mock::given(method("POST"))
        .and(path("/v1/chat/completions"))
        .respond_with(
            ResponseTemplate::new(400).set_body_raw(body.into_bytes(), "application/json"),
        )
        .mount(&server)
        .await;
    let mut messages = Vec::new();
    for error_body_bytes in [64 * 1024, 256] {
        let settings = runnel_providers::Settings {
            error_body_bytes,
            ..runnel_providers::Settings::default()
        };
        let p = runnel_providers::Providers::new(
            [(
                "oa".to_owned(),
                entry(ProviderKind::OpenAi, &openai_base(&server)),
            )],
            settings,
            |_| Some(KEY.to_owned()),
        )
        .unwrap();
        let report = p
            .call(&task(spec("oa", "m", &[("user", "hi")])), None)
            .await;
        messages.push(report.outcome.message().unwrap().to_owned());
    }
    assert!(messages[0].contains("the model is unknown"), "{messages:?}");
    assert!(
        !messages[1].contains("the model is unknown"),
        "{messages:?}"
    );
}
