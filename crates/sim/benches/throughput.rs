//! Throughput of the simulator: requests per second it answers over
//! loopback with keep-alive connections, latency 0 and no limits (and a few
//! variants), against a baseline measured in the same run — a bare hyper
//! server answering a fixed body of the same size — which shows what the
//! machine, the loopback and the load generator allow at all.
//!
//! `cargo bench -p runnel-sim --bench throughput`; environment:
//! `BENCH_RUNS` (default 5), `BENCH_SECONDS` per run (default 2),
//! `BENCH_CONNECTIONS` (default 32). Prints the median of the runs and
//! their min–max for each scenario. The load generator runs in the same
//! process and on the same two worker threads as the server.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use runnel_sim::{Sim, SimConfig, SimHandle};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// One HTTP/1.1 request, ready to write again and again.
fn request(addr: SocketAddr, path: &str, body: &Value) -> Bytes {
    let body = body.to_string();
    Bytes::from(format!(
        "POST {path} HTTP/1.1\r\nhost: {addr}\r\nauthorization: Bearer sk-bench\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    ))
}

/// Reads one response (content-length or chunked) from `socket`, keeping
/// any surplus in `buf`; returns whether it was a 200.
async fn read_response(socket: &mut TcpStream, buf: &mut Vec<u8>) -> std::io::Result<bool> {
    let head_end = loop {
        if let Some(i) = find(buf, b"\r\n\r\n") {
            break i + 4;
        }
        fill(socket, buf).await?;
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    let ok = head.starts_with("http/1.1 200");
    let length = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length: "))
        .and_then(|v| v.trim().parse::<usize>().ok());
    buf.drain(..head_end);
    match length {
        Some(n) => {
            while buf.len() < n {
                fill(socket, buf).await?;
            }
            buf.drain(..n);
        }
        None => loop {
            // Chunked: "<hex size>\r\n<data>\r\n", ending with a zero size.
            let line_end = loop {
                if let Some(i) = find(buf, b"\r\n") {
                    break i;
                }
                fill(socket, buf).await?;
            };
            let size = usize::from_str_radix(String::from_utf8_lossy(&buf[..line_end]).trim(), 16)
                .map_err(|e| std::io::Error::other(format!("bad chunk size: {e}")))?;
            let total = line_end + 2 + size + 2;
            while buf.len() < total {
                fill(socket, buf).await?;
            }
            buf.drain(..total);
            if size == 0 {
                break;
            }
        },
    }
    Ok(ok)
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

async fn fill(socket: &mut TcpStream, buf: &mut Vec<u8>) -> std::io::Result<()> {
    let mut chunk = [0u8; 8192];
    let n = socket.read(&mut chunk).await?;
    if n == 0 {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    buf.extend_from_slice(&chunk[..n]);
    Ok(())
}

/// Runs `connections` keep-alive clients for `seconds`; returns the 200s,
/// the other responses, and the time taken.
async fn load(
    addr: SocketAddr,
    request: Bytes,
    connections: u64,
    seconds: f64,
) -> std::io::Result<(u64, u64, f64)> {
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicU64::new(0));
    let other = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..connections {
        let (stop, ok, other, request) = (stop.clone(), ok.clone(), other.clone(), request.clone());
        tasks.push(tokio::spawn(async move {
            let mut socket = TcpStream::connect(addr).await?;
            socket.set_nodelay(true)?;
            let mut buf = Vec::with_capacity(16 * 1024);
            while !stop.load(Ordering::Relaxed) {
                socket.write_all(&request).await?;
                let counter = if read_response(&mut socket, &mut buf).await? {
                    &ok
                } else {
                    &other
                };
                counter.fetch_add(1, Ordering::Relaxed);
            }
            Ok::<(), std::io::Error>(())
        }));
    }
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs_f64(seconds)).await;
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        task.await.map_err(std::io::Error::other)??;
    }
    let elapsed = started.elapsed().as_secs_f64();
    Ok((
        ok.load(Ordering::Relaxed),
        other.load(Ordering::Relaxed),
        elapsed,
    ))
}

/// A bare hyper server that answers every request with `body`.
async fn baseline_server(body: Bytes) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            let body = body.clone();
            tokio::spawn(async move {
                let service = service_fn(move |request: Request<hyper::body::Incoming>| {
                    let body = body.clone();
                    async move {
                        // Read the request body as the sim does.
                        let _ = http_body_util::BodyExt::collect(request.into_body()).await;
                        let mut response = Response::new(Full::new(body));
                        response.headers_mut().insert(
                            hyper::header::CONTENT_TYPE,
                            hyper::header::HeaderValue::from_static("application/json"),
                        );
                        Ok::<_, Infallible>(response)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok(addr)
}

struct Scenario<'a> {
    name: &'static str,
    addr: SocketAddr,
    request: Bytes,
    /// The simulator behind `addr`, whose own count must match the client's.
    sim: Option<&'a SimHandle>,
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    let n = xs.len();
    if n % 2 == 1 {
        xs[n / 2]
    } else {
        (xs[n / 2 - 1] + xs[n / 2]) / 2.0
    }
}

type BenchResult<T> = Result<T, Box<dyn std::error::Error>>;

fn main() -> BenchResult<()> {
    // `cargo bench` passes `--bench`; `cargo test --all-targets` runs this
    // binary without it, and then a short smoke run checks that it works.
    let measuring = std::env::args().any(|a| a == "--bench");
    let (runs, seconds, connections) = if measuring {
        (
            env("BENCH_RUNS", 5).max(1),
            env("BENCH_SECONDS", 2).max(1) as f64,
            env("BENCH_CONNECTIONS", 32).max(1),
        )
    } else {
        (1, 0.1, 4)
    };
    let warm_up = (seconds / 5.0).min(0.3);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(measure(runs, seconds, warm_up, connections, measuring))
}

async fn measure(
    runs: u64,
    seconds: f64,
    warm_up: f64,
    connections: u64,
    measuring: bool,
) -> BenchResult<()> {
    let chat =
        json!({"model": "bench", "messages": [{"role": "user", "content": "What is 17 + 25?"}]});
    let messages = json!({"model": "bench", "max_tokens": 64, "messages": [{"role": "user", "content": "What is 17 + 25?"}]});
    let mut streamed = chat.clone();
    streamed["stream"] = json!(true);
    streamed["stream_options"] = json!({"include_usage": true});

    let plain = Sim::start(SimConfig::default()).await?;
    let mut limited_config = SimConfig::default();
    limited_config.limits.rpm = Some(1e9);
    limited_config.limits.tpm = Some(1e12);
    let limited = Sim::start(limited_config).await?;

    // The baseline answers a body as large as the sim's chat reply.
    let probe = reqwest::Client::new()
        .post(format!("{}/v1/chat/completions", plain.url()))
        .json(&chat)
        .send()
        .await?
        .bytes()
        .await?;
    let baseline = baseline_server(probe.clone()).await?;

    let scenarios = [
        Scenario {
            name: "baseline: bare hyper, fixed body",
            addr: baseline,
            request: request(baseline, "/v1/chat/completions", &chat),
            sim: None,
        },
        Scenario {
            name: "sim: chat completions, JSON",
            addr: plain.addr(),
            request: request(plain.addr(), "/v1/chat/completions", &chat),
            sim: Some(&plain),
        },
        Scenario {
            name: "sim: messages, JSON",
            addr: plain.addr(),
            request: request(plain.addr(), "/v1/messages", &messages),
            sim: Some(&plain),
        },
        Scenario {
            name: "sim: chat completions, SSE",
            addr: plain.addr(),
            request: request(plain.addr(), "/v1/chat/completions", &streamed),
            sim: Some(&plain),
        },
        Scenario {
            name: "sim: chat, rpm+tpm limits (never hit)",
            addr: limited.addr(),
            request: request(limited.addr(), "/v1/chat/completions", &chat),
            sim: Some(&limited),
        },
    ];

    println!(
        "runnel-sim throughput: {runs} runs x {seconds} s, {connections} keep-alive connections, \
             load generator in-process on the same 2 worker threads; shared 2-core machine \
             (other agents may be compiling: figures are noisy)."
    );
    println!("reply body: {} bytes", probe.len());
    println!(
        "{:<40} {:>14} {:>22} {:>8}",
        "scenario", "median req/s", "min-max req/s", "non-200"
    );
    let mut sim_chat_median = 0.0;
    for scenario in &scenarios {
        if let Some(sim) = scenario.sim {
            sim.reset();
        }
        // One short warm-up run, not timed.
        let (warm_ok, warm_other, _) = load(
            scenario.addr,
            scenario.request.clone(),
            connections,
            warm_up,
        )
        .await?;
        let mut rates = Vec::new();
        let mut failures = warm_other;
        let mut answered = warm_ok + warm_other;
        for _ in 0..runs {
            let (ok, other, elapsed) = load(
                scenario.addr,
                scenario.request.clone(),
                connections,
                seconds,
            )
            .await?;
            rates.push(ok as f64 / elapsed);
            failures += other;
            answered += ok + other;
        }
        // The simulator's own count must agree with what the clients read.
        if let Some(sim) = scenario.sim {
            let counted = sim.stats().requests;
            if counted != answered {
                return Err(format!(
                    "{}: the sim counted {counted}, the clients read {answered}",
                    scenario.name
                )
                .into());
            }
        }
        let min = rates.iter().copied().fold(f64::INFINITY, f64::min);
        let max = rates.iter().copied().fold(0.0, f64::max);
        let med = median(rates);
        if scenario.name.starts_with("sim: chat completions, JSON") {
            sim_chat_median = med;
        }
        println!(
            "{:<40} {:>14.0} {:>10.0}-{:<11.0} {:>8}",
            scenario.name, med, min, max, failures
        );
    }
    if measuring {
        let verdict = if sim_chat_median >= 5000.0 {
            "meets"
        } else {
            "MISSES"
        };
        println!(
            "sim chat JSON median {sim_chat_median:.0} req/s {verdict} the 5,000 req/s target"
        );
    } else {
        println!("smoke run under `cargo test`: not a measurement (use `cargo bench`)");
    }
    plain.shutdown().await;
    limited.shutdown().await;
    Ok(())
}
