//! Starts a simulator with a small rate limit, sends it a burst, and shows
//! what a client sees: replies by convention, 429s with their headers, and
//! the stats. `cargo run -p runnel-sim --example quickstart`

use runnel_sim::{Sim, SimConfig};
use serde_json::{Value, json};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut config = SimConfig::default(); // 127.0.0.1 on a free port
    config.limits.rps = Some(3.0); // a bucket of 3 requests, refilled 3 per second
    let sim = Sim::start(config).await?;
    println!("sim at {}", sim.url());

    let client = reqwest::Client::new();
    let ask = |prompt: &str| {
        client
            .post(format!("{}/v1/chat/completions", sim.url()))
            .bearer_auth("sk-example")
            .json(&json!({"model": "demo", "messages": [{"role": "user", "content": prompt}]}))
            .send()
    };

    for prompt in [
        "What is 17 + 25?",
        "Expected 42; got 41. Answer CORRECT or INCORRECT.",
        "Rate this haiku from 1 to 10.",
        "What is 6 × 7?",
    ] {
        let response = ask(prompt).await?;
        let status = response.status();
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("-")
                .to_owned()
        };
        let remaining = header("x-ratelimit-remaining-requests");
        let retry = header("retry-after-ms");
        let body: Value = response.json().await?;
        let text = body["choices"][0]["message"]["content"]
            .as_str()
            .or(body["error"]["message"].as_str())
            .unwrap_or_default()
            .replace('\n', " | ");
        println!("{status} remaining={remaining} retry-after-ms={retry}  {prompt:?} -> {text:?}");
    }

    let stats = sim.stats();
    println!(
        "stats: {} requests, {} ok, {} rate limited, peak concurrency {}",
        stats.requests, stats.classes.ok, stats.classes.rate_limited, stats.concurrency.peak
    );
    sim.shutdown().await;
    Ok(())
}
