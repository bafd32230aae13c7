//! Runs a task call (streamed) and an evaluator call through the registry
//! against a tiny OpenAI-compatible server started inside this program on
//! 127.0.0.1, then shows how a throttled call is classified.
//!
//! `cargo run -p runnel-providers --example local_server`

use std::sync::Arc;

use runnel_core::{
    CallSpec, ChunkSink, EvalKey, EvalWork, EvaluatorId, EvaluatorSpec, ExampleData, ExampleId,
    ExperimentId, Job, JobKind, Message, Provider, ProviderKind, RateKey, RunId, TaskKey, TaskWork,
};
use runnel_providers::{ProviderEntry, Providers, Settings, template};
use serde_json::{Value, json};
use wiremock::{Mock, MockServer, Request, ResponseTemplate};

/// The server's behaviour: judges get a label, `busy-model` gets a 429,
/// everyone else gets "4", streamed when asked.
fn reply(request: &Request) -> ResponseTemplate {
    let body: Value = request.body_json().unwrap_or_default();
    if body["model"] == "busy-model" {
        return ResponseTemplate::new(429)
            .insert_header("retry-after", "2")
            .set_body_json(
                json!({"error": {"message": "Rate limit reached", "type": "requests"}}),
            );
    }
    let prompt = body["messages"].to_string();
    let answer = if prompt.contains("CORRECT or INCORRECT") {
        "CORRECT\nThe output states 4, as expected."
    } else {
        "2 + 2 = 4"
    };
    if body["stream"] == true {
        let mut sse = String::new();
        for word in answer.split_inclusive(' ') {
            let chunk = json!({"choices": [{"delta": {"content": word}}]});
            sse.push_str(&format!("data: {chunk}\n\n"));
        }
        let last = json!({"choices": [{"delta": {}, "finish_reason": "stop"}],
                          "usage": {"prompt_tokens": 12, "completion_tokens": 5}});
        sse.push_str(&format!("data: {last}\n\ndata: [DONE]\n\n"));
        ResponseTemplate::new(200).set_body_raw(sse, "text/event-stream")
    } else {
        ResponseTemplate::new(200)
            .insert_header("x-ratelimit-limit-requests", "600")
            .insert_header("x-ratelimit-remaining-requests", "599")
            .insert_header("x-ratelimit-reset-requests", "100ms")
            .set_body_json(json!({
                "choices": [{"message": {"role": "assistant", "content": answer}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 30, "completion_tokens": 9}
            }))
    }
}

fn message(role: &str, content: &str) -> Message {
    Message {
        role: role.into(),
        content: content.into(),
    }
}

fn call(model: &str, messages: Vec<Message>, stream: bool) -> CallSpec {
    CallSpec {
        provider: "local".into(),
        model: model.into(),
        messages,
        params: serde_json::Map::new(),
        timeout_s: Some(5.0),
        stream,
    }
}

fn job(kind: JobKind, key: RateKey) -> Job {
    Job {
        experiment: ExperimentId(uuid::Uuid::nil()),
        kind,
        key,
        attempt: 1,
        transient_failures: 0,
        rate_limited: 0,
        earlier_latency_ms: 0,
        tokens_reserved: None,
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let server = MockServer::start().await;
    Mock::given(wiremock::matchers::method("POST"))
        .respond_with(reply)
        .mount(&server)
        .await;

    // A `local` entry needs no key; its rate key is the entry name alone.
    let entry =
        ProviderEntry::new(ProviderKind::Local).with_base_url(format!("{}/v1", server.uri()));
    let providers = Providers::new([("local".to_string(), entry)], Settings::default(), |_| {
        None
    })?;
    for problem in providers.check() {
        println!("warning: {problem}");
    }

    let example = Arc::new(ExampleData {
        input: json!({"question": "What is 2 + 2?"}),
        expected: Some(json!("4")),
        metadata: json!({}),
    });

    // The API checks templates when an experiment is created.
    let task_messages = vec![
        message("system", "Answer briefly."),
        message("user", "{{input.question}}"),
    ];
    let problems = template::validate(&task_messages, false, std::slice::from_ref(&*example));
    println!("template problems: {problems:?}");

    // 1. A streamed task call: chunks arrive as the server sends them.
    let task_call = call("tiny-model", task_messages, true);
    let key = providers.rate_key(&task_call)?;
    let task = job(
        JobKind::Task {
            call: Arc::new(task_call),
            work: TaskWork {
                key: TaskKey {
                    example: ExampleId(1),
                    repetition: 0,
                },
                data: Arc::clone(&example),
            },
        },
        key.clone(),
    );
    println!(
        "rate key: {key}; estimated tokens: {:?}",
        providers.estimate_tokens(&task)
    );
    let sink: ChunkSink = Arc::new(|chunk: &str| println!("  chunk: {chunk:?}"));
    let report = providers.call(&task, Some(sink)).await;
    println!(
        "task: {:?} in {:?}, usage {:?}",
        report.outcome, report.latency, report.usage
    );

    // 2. An evaluator judging that output.
    let judge = EvaluatorSpec {
        id: EvaluatorId(1),
        name: "correct".into(),
        call: call(
            "tiny-judge",
            vec![message(
                "user",
                "Expected {{expected}}; got {{output}}. Answer CORRECT or INCORRECT.",
            )],
            false,
        ),
        labels: vec!["CORRECT".into(), "INCORRECT".into()],
    };
    let eval = job(
        JobKind::Eval {
            evaluator: Arc::new(judge),
            work: EvalWork {
                key: EvalKey {
                    run: RunId(1),
                    evaluator: EvaluatorId(1),
                },
                example: ExampleId(1),
                data: Arc::clone(&example),
                output: "2 + 2 = 4".into(),
            },
        },
        key.clone(),
    );
    let report = providers.call(&eval, None).await;
    println!(
        "eval: {:?}; rate limits {:?}",
        report.outcome, report.rate_limits
    );

    // 3. A throttled call is an outcome, not an error.
    let busy = job(
        JobKind::Task {
            call: Arc::new(call("busy-model", vec![message("user", "hi")], false)),
            work: TaskWork {
                key: TaskKey {
                    example: ExampleId(1),
                    repetition: 1,
                },
                data: example,
            },
        },
        key,
    );
    let report = providers.call(&busy, None).await;
    println!("busy: {:?}", report.outcome);
    Ok(())
}
