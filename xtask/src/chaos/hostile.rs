//! Hostile input (issue 8, part 4), against a real server over a socket, on
//! SQLite and on PostgreSQL: thousands of seeded random requests to every
//! endpoint — arbitrary JSON, wrong types, huge strings, deep nesting,
//! invalid UTF-8, truncated bodies, wrong content types, garbage ids and
//! query strings, unsupported methods — plus malformed HTTP on raw sockets
//! and large NDJSON dataset files with one bad line. Every answer must be
//! below 500, every error an `application/problem+json`, a bad dataset line
//! must be named by its number, and nothing may change in the database: the
//! table counts and the API's listing are compared before and after, and
//! the server must still be up with no panic in its log.

use std::time::Duration;

use anyhow::{Context, Result};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::db::Database;
use super::rng::Rng;
use super::{Ctx, PgDb, Report};
use crate::harness::{Api, ServerProcess, SimProcess, arithmetic, experiment_body};

/// The server's body limit in this test.
const BODY_LIMIT: usize = 4 * 1024 * 1024;

pub(super) async fn run(ctx: &Ctx, report: &mut Report) -> Result<()> {
    let dir = ctx.subdir("sqlite")?;
    let url = format!("sqlite://{}", dir.join("runnel.db").display());
    one_database(ctx, &dir, &url, "SQLite", report).await?;
    let dir = ctx.subdir("postgres")?;
    let pg = PgDb::create("hostile")?;
    one_database(ctx, &dir, &pg.url, "PostgreSQL", report).await
}

/// A request to send and what it may get.
struct Hostile {
    method: reqwest::Method,
    path: String,
    content_type: Option<String>,
    body: Vec<u8>,
    /// The endpoint writes when it accepts (a 2xx is then reported).
    mutating: bool,
    kind: &'static str,
}

async fn one_database(
    ctx: &Ctx,
    dir: &std::path::Path,
    url: &str,
    label: &str,
    report: &mut Report,
) -> Result<()> {
    let mut rng = Rng::new(ctx.seed ^ label.len() as u64);
    let requests = ctx.pick(1500, 8000);
    let lines = ctx.pick(5_000, 40_000);
    let sim = SimProcess::start(&ctx.bin, dir, super::sim_config(ctx.seed, 0, 0)).await?;
    let toml = super::server_toml(url, &sim.url)
        .set("server", "body_limit_bytes", BODY_LIMIT as u64)
        .render();
    let mut server = ServerProcess::start(&ctx.bin, dir, "server", &toml, &[]).await?;
    let api = server.api();
    let db = Database::from_url(url);

    // Something to leave untouched.
    let dataset = api.dataset("kept", arithmetic(5)).await?;
    let body = json!({"start": false});
    let mut create = experiment_body(&dataset, "kept", "task", Some("judge"), None);
    super::merge(&mut create, body);
    let experiment = api.experiment(&create).await?;
    let counts = db.table_counts()?;
    let listed = listing(&api).await?;

    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()?;
    let mut five_hundreds = Vec::new();
    let mut not_problems = Vec::new();
    let mut accepted = Vec::new();
    let mut by_status = std::collections::BTreeMap::<u16, u64>::new();
    let mut sent = 0u64;
    for _ in 0..requests {
        let h = hostile(&mut rng, &dataset, &experiment, &create);
        let mut request = http.request(h.method.clone(), format!("{}{}", server.url, h.path));
        if let Some(ct) = &h.content_type {
            request = request.header("content-type", ct.as_str());
        }
        request = request.body(h.body.clone());
        sent += 1;
        let response = match request.send().await {
            Ok(r) => r,
            Err(e) => {
                five_hundreds.push(format!(
                    "{} {} ({}): no answer: {e}",
                    h.method, h.path, h.kind
                ));
                continue;
            }
        };
        let status = response.status().as_u16();
        *by_status.entry(status).or_default() += 1;
        let content_type = response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let text = response.text().await.unwrap_or_default();
        if status >= 500 {
            five_hundreds.push(format!(
                "{} {} ({}): {status} {text}",
                h.method,
                short(&h.path),
                h.kind
            ));
        } else if status >= 400 {
            let problem: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
            if content_type != "application/problem+json"
                || problem["status"] != status
                || !problem["detail"].is_string()
            {
                not_problems.push(format!(
                    "{} {} ({}): {status} {content_type} {}",
                    h.method,
                    short(&h.path),
                    h.kind,
                    short(&text)
                ));
            }
        } else if h.mutating {
            accepted.push(format!(
                "{} {} ({}): {status}",
                h.method,
                short(&h.path),
                h.kind
            ));
        }
    }
    report.fault(&format!("{label}: hostile HTTP requests"), sent);

    // Malformed HTTP on raw sockets.
    let raw = raw_abuse(&server.url, &mut rng).await?;
    report.fault(&format!("{label}: malformed HTTP on raw sockets"), raw.sent);
    sent += raw.sent;
    five_hundreds.extend(raw.five_hundreds);

    // NDJSON files with one bad line: a new dataset and an append.
    let ndjson = bad_lines(&http, &server.url, &dataset, lines, &mut rng).await?;
    report.fault(
        &format!("{label}: dataset files with a bad line"),
        ndjson.sent,
    );
    sent += ndjson.sent;
    report.requests += sent + 6;

    report.figure(&format!("{label}: answers by status"), json!(by_status));
    report.figure(
        &format!("{label}: bad dataset lines"),
        format!(
            "{} files of up to {lines} lines, each rejected naming its line: {} of {}",
            ndjson.sent, ndjson.named, ndjson.sent
        ),
    );
    report.check(five_hundreds.is_empty(), || {
        format!(
            "{label}: {} answers ≥ 500 or none at all: {:?}",
            five_hundreds.len(),
            five_hundreds.iter().take(5).collect::<Vec<_>>()
        )
    });
    report.check(not_problems.is_empty(), || {
        format!(
            "{label}: {} 4xx answers that are not problem documents: {:?}",
            not_problems.len(),
            not_problems.iter().take(5).collect::<Vec<_>>()
        )
    });
    report.check(accepted.is_empty(), || {
        format!("{label}: hostile requests accepted: {accepted:?}")
    });
    report.check(ndjson.named == ndjson.sent, || {
        format!("{label}: bad lines not named: {:?}", ndjson.unnamed)
    });

    // Nothing changed.
    let after = db.table_counts()?;
    report.rows_checked += after.iter().map(|(_, n)| *n as u64).sum::<u64>();
    report.check(after == counts, || {
        format!("{label}: tables changed: {counts:?} → {after:?}")
    });
    report.check(listing(&api).await? == listed, || {
        format!("{label}: the API's listing changed")
    });
    report.check(server.is_running(), || {
        format!("{label}: the server exited")
    });
    let healthy = http
        .get(format!("{}/healthz", server.url))
        .send()
        .await
        .is_ok_and(|r| r.status().is_success());
    report.check(healthy, || format!("{label}: /healthz does not answer"));
    let panics = super::panicked_logs(dir);
    report.check(panics.is_empty(), || format!("panics in {panics:?}"));
    Ok(())
}

fn short(text: &str) -> String {
    text.chars().take(160).collect()
}

/// Datasets and experiments as listed by the API, without the fields that
/// move by themselves.
async fn listing(api: &Api) -> Result<Value> {
    let http = reqwest::Client::new();
    let datasets: Value = http
        .get(format!("{}/v1/datasets", api.base))
        .send()
        .await?
        .json()
        .await?;
    let mut experiments: Value = http
        .get(format!("{}/v1/experiments", api.base))
        .send()
        .await?
        .json()
        .await?;
    if let Some(list) = experiments.as_array_mut() {
        for e in list {
            if let Some(o) = e.as_object_mut() {
                o.remove("updated_at");
            }
        }
    }
    Ok(json!([datasets, experiments]))
}

// ------------------------------------------------------------ generation

const ALPHABET: &[&str] = &[
    "a",
    "Z",
    "0",
    " ",
    "\"",
    "\\",
    "'",
    ";",
    "--",
    "{{",
    "}}",
    "\u{0}",
    "\u{7}",
    "\n",
    "é",
    "💥",
    "\u{202e}",
    "%",
    "?",
    "&",
    "/",
    "*",
    "DROP TABLE runs;",
    "' OR '1'='1",
];

fn text(rng: &mut Rng, max: usize) -> String {
    let n = rng.index(max.max(1) + 1);
    let mut s = String::new();
    for _ in 0..n {
        s.push_str(ALPHABET[rng.index(ALPHABET.len())]);
    }
    s
}

/// Arbitrary JSON whose object keys are never a field name of the API.
fn arbitrary(rng: &mut Rng, depth: u32) -> Value {
    let pick = if depth == 0 {
        rng.below(4)
    } else {
        rng.below(6)
    };
    match pick {
        0 => Value::Null,
        1 => json!(rng.chance(0.5)),
        2 => json!((rng.next_u64() as i64) >> rng.below(60)),
        3 => json!(text(rng, 12)),
        4 => Value::Array(
            (0..rng.below(4))
                .map(|_| arbitrary(rng, depth - 1))
                .collect(),
        ),
        _ => {
            let mut map = serde_json::Map::new();
            for _ in 0..rng.range(1, 4) {
                map.insert(format!("zz{}", text(rng, 4)), arbitrary(rng, depth - 1));
            }
            Value::Object(map)
        }
    }
}

/// A value of a different JSON type than `v` (never null: null means
/// "absent" for optional fields).
fn wrong_type(rng: &mut Rng, v: &Value) -> Value {
    loop {
        let candidate = match rng.below(5) {
            0 => json!(rng.below(1000)),
            1 => json!(text(rng, 6)),
            2 => json!([1, "two", null]),
            3 => json!({"zz": 1}),
            _ => json!(true),
        };
        let same = std::mem::discriminant(&candidate) == std::mem::discriminant(v);
        if !same {
            return candidate;
        }
    }
}

/// JSON nested `depth` levels (beyond serde_json's limit of 128).
fn deep(rng: &mut Rng) -> String {
    let depth = rng.range(200, 20_000) as usize;
    let (open, close) = if rng.chance(0.5) {
        ("[", "]")
    } else {
        ("{\"a\":", "}")
    };
    format!("{}1{}", open.repeat(depth), close.repeat(depth))
}

/// Pointers to typed, required fields of each valid body.
const DATASET_FIELDS: &[&str] = &["/name", "/examples", "/examples/0", "/examples/0/input"];
const EXPERIMENT_FIELDS: &[&str] = &[
    "/dataset_id",
    "/name",
    "/repetitions",
    "/task",
    "/task/provider",
    "/task/model",
    "/task/messages",
    "/task/messages/0",
    "/task/messages/0/content",
    "/evaluators",
    "/evaluators/0/name",
    "/evaluators/0/labels",
    "/evaluators/0/messages",
];
const EVALUATOR_FIELDS: &[&str] = &["/name", "/provider", "/model", "/messages", "/labels"];
const APPEND_FIELDS: &[&str] = &["/examples", "/examples/0", "/examples/0/input"];

fn hostile(rng: &mut Rng, dataset: &str, experiment: &str, create: &Value) -> Hostile {
    let ghost = "0191d3c2-7e4b-7c4e-9a53-6f0e2d5b1a77";
    let valid_dataset =
        json!({"name": "h", "examples": [{"input": {"question": "1+1"}, "expected": "2"}]});
    let valid_append = json!({"examples": [{"input": {"question": "1+1"}}]});
    let evaluator = create["evaluators"][0].clone();
    // (path, valid body, typed fields)
    let writers: [(String, Value, &[&str]); 4] = [
        ("/v1/datasets".into(), valid_dataset, DATASET_FIELDS),
        (
            format!("/v1/datasets/{dataset}/examples"),
            valid_append,
            APPEND_FIELDS,
        ),
        ("/v1/experiments".into(), create.clone(), EXPERIMENT_FIELDS),
        (
            format!("/v1/experiments/{experiment}/evaluators"),
            evaluator,
            EVALUATOR_FIELDS,
        ),
    ];
    if rng.chance(0.75) {
        let (path, valid, fields) = &writers[rng.index(writers.len())];
        let mut ct = Some("application/json".to_owned());
        let (kind, body): (&'static str, Vec<u8>) = match rng.below(9) {
            0 => ("arbitrary JSON", arbitrary(rng, 5).to_string().into_bytes()),
            1 | 2 => {
                let mut v = valid.clone();
                let field = fields[rng.index(fields.len())];
                if let Some(slot) = v.pointer_mut(field) {
                    *slot = wrong_type(rng, &slot.clone());
                }
                ("wrong type", v.to_string().into_bytes())
            }
            3 => {
                // A name far beyond 200 characters, or a body beyond the limit.
                let mut v = valid.clone();
                let n = if rng.chance(0.05) {
                    BODY_LIMIT + rng.index(1000)
                } else {
                    rng.range(201, 60_000) as usize
                };
                let field = if path.ends_with("/examples") {
                    "/examples/0/zz"
                } else {
                    "/name"
                };
                let s = "n".repeat(n);
                if let Some(slot) = v.pointer_mut(field) {
                    *slot = json!(s);
                } else if let Some(obj) =
                    v.pointer_mut("/examples/0").and_then(Value::as_object_mut)
                {
                    obj.insert("zz".into(), json!(s));
                }
                ("huge string", v.to_string().into_bytes())
            }
            4 => {
                let text = valid.to_string();
                let d = deep(rng);
                let at = text.find("\"input\":").map(|i| i + 8);
                let body = match at {
                    Some(i) => format!("{}{}{}", &text[..i], d, skip_value(&text[i..])),
                    None => d,
                };
                ("deep nesting", body.into_bytes())
            }
            5 => {
                let mut bytes = valid.to_string().into_bytes();
                let i = rng.index(bytes.len());
                bytes[i] = [0xff, 0xfe, 0xc3, 0x80, 0xed][rng.index(5)];
                // 0x80 alone or 0xc3 before a non-continuation byte are both invalid.
                if bytes[i] == 0xc3 && i + 1 < bytes.len() {
                    bytes[i + 1] = b'(';
                }
                ("invalid UTF-8", bytes)
            }
            6 => {
                let bytes = valid.to_string().into_bytes();
                let cut = rng.index(bytes.len());
                ("truncated", bytes[..cut].to_vec())
            }
            7 => {
                ct = Some(
                    [
                        "application/xml",
                        "text/csv",
                        "multipart/form-data; boundary=x",
                        "image/png",
                        "application/json\u{7f}",
                    ][rng.index(5)]
                    .to_owned(),
                );
                if ct.as_deref().is_some_and(|c| c.contains('\u{7f}')) {
                    ct = Some("application/vnd.evil".into());
                }
                ("wrong content type", valid.to_string().into_bytes())
            }
            _ => {
                let mut v = valid.clone();
                if let Some(obj) = v.as_object_mut() {
                    obj.insert(format!("zz{}", text(rng, 3)), arbitrary(rng, 2));
                }
                ("unknown field", v.to_string().into_bytes())
            }
        };
        return Hostile {
            method: reqwest::Method::POST,
            path: path.clone(),
            content_type: ct,
            body,
            mutating: true,
            kind,
        };
    }
    // Everything else: garbage ids, queries and methods.
    let garbage_id = match rng.below(5) {
        0 => ghost.to_owned(),
        1 => "%ff%fe".to_owned(),
        2 => "1%20OR%201%3D1".to_owned(),
        3 => "x".repeat(rng.range(1, 3000) as usize),
        _ => "..%2F..%2Fetc%2Fpasswd".to_owned(),
    };
    let real_or_garbage = |rng: &mut Rng, real: &str| {
        if rng.chance(0.4) {
            real.to_owned()
        } else {
            garbage_id.clone()
        }
    };
    let query = match rng.below(6) {
        0 => String::new(),
        1 => "?limit=-1".to_owned(),
        2 => "?cursor=%ff".to_owned(),
        3 => "?status=RUNNING%27%3B--".to_owned(),
        4 => format!("?zz={}", "q".repeat(rng.range(1, 2000) as usize)),
        _ => "?limit=99999999999999999999&cursor=AAAA".to_owned(),
    };
    let e = real_or_garbage(rng, experiment);
    let d = real_or_garbage(rng, dataset);
    let (method, path, mutating) = match rng.below(12) {
        0 => (reqwest::Method::GET, format!("/v1/datasets{query}"), false),
        1 => (
            reqwest::Method::GET,
            format!("/v1/datasets/{d}{query}"),
            false,
        ),
        2 => (
            reqwest::Method::GET,
            format!("/v1/experiments{query}"),
            false,
        ),
        3 => (
            reqwest::Method::GET,
            format!("/v1/experiments/{e}{query}"),
            false,
        ),
        4 => (
            reqwest::Method::GET,
            format!("/v1/experiments/{e}/runs{query}"),
            false,
        ),
        5 => (
            reqwest::Method::GET,
            format!("/v1/experiments/{e}/runs.jsonl{query}"),
            false,
        ),
        6 => (
            reqwest::Method::GET,
            format!("/v1/experiments/{e}/logs{query}"),
            false,
        ),
        7 => (
            reqwest::Method::GET,
            format!("/v1/experiments/{garbage_id}/events"),
            false,
        ),
        8 => (
            reqwest::Method::POST,
            format!("/v1/experiments/{garbage_id}/stop"),
            true,
        ),
        9 => (
            reqwest::Method::POST,
            format!("/v1/experiments/{garbage_id}/resume"),
            true,
        ),
        10 => (
            reqwest::Method::DELETE,
            format!("/v1/experiments/{garbage_id}"),
            true,
        ),
        _ => {
            let m = [
                reqwest::Method::PUT,
                reqwest::Method::PATCH,
                reqwest::Method::DELETE,
            ][rng.index(3)]
            .clone();
            let p = ["/v1/datasets", "/v1/experiments", "/healthz", "/metrics"][rng.index(4)];
            (m, p.to_owned(), true)
        }
    };
    Hostile {
        method,
        path,
        content_type: if rng.chance(0.5) {
            Some("application/json".into())
        } else {
            None
        },
        body: if rng.chance(0.3) {
            arbitrary(rng, 3).to_string().into_bytes()
        } else {
            Vec::new()
        },
        mutating,
        kind: "garbage id, query or method",
    }
}

/// `text` after the JSON value it starts with (a rough scan that is enough
/// for the valid bodies above: the value is an object).
fn skip_value(text: &str) -> &str {
    let mut depth = 0i32;
    let mut in_string = false;
    let mut escaped = false;
    for (i, c) in text.char_indices() {
        if in_string {
            match (escaped, c) {
                (true, _) => escaped = false,
                (false, '\\') => escaped = true,
                (false, '"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match c {
            '"' => in_string = true,
            '{' | '[' => depth += 1,
            '}' | ']' => {
                depth -= 1;
                if depth == 0 {
                    return &text[i + 1..];
                }
            }
            _ => {}
        }
    }
    ""
}

// ------------------------------------------------------------ raw sockets

struct Raw {
    sent: u64,
    five_hundreds: Vec<String>,
}

async fn raw_abuse(base: &str, rng: &mut Rng) -> Result<Raw> {
    let addr = base.trim_start_matches("http://").to_owned();
    let huge_header = format!("X-Big: {}\r\n", "h".repeat(200_000));
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "body shorter than Content-Length",
            b"POST /v1/datasets HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"name\": \"tr".to_vec(),
        ),
        (
            "bad chunk size",
            b"POST /v1/datasets HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n".to_vec(),
        ),
        (
            "chunked body cut short",
            b"POST /v1/experiments HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Type: application/json\r\n\r\n40\r\n{\"dataset_id\"".to_vec(),
        ),
        ("garbage request line", b"\x00\xff GARBAGE \x01\r\n\r\n".to_vec()),
        (
            "invalid UTF-8 in a header",
            b"POST /v1/datasets HTTP/1.1\r\nHost: x\r\nContent-Type: application/\xff\xfejson\r\nAuthorization: Bearer \xc3\x28\r\nContent-Length: 2\r\n\r\n{}".to_vec(),
        ),
        (
            "invalid UTF-8 in the path",
            b"GET /v1/experiments/%ff%fe%fd HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
        ),
        (
            "raw invalid bytes in the path",
            b"GET /v1/experiments/\xff\xfe HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
        ),
        (
            "huge header",
            format!("GET /v1/datasets HTTP/1.1\r\nHost: x\r\n{huge_header}\r\n").into_bytes(),
        ),
        (
            "conflicting lengths",
            b"POST /v1/datasets HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nContent-Length: 40\r\n\r\n{}".to_vec(),
        ),
        (
            "negative length",
            b"POST /v1/datasets HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n{}".to_vec(),
        ),
        (
            "HTTP/0.9",
            b"GET /v1/datasets\r\n".to_vec(),
        ),
    ];
    let mut raw = Raw {
        sent: 0,
        five_hundreds: Vec::new(),
    };
    let rounds = 3;
    for _ in 0..rounds {
        for (what, bytes) in &cases {
            raw.sent += 1;
            let mut stream = tokio::net::TcpStream::connect(&addr)
                .await
                .with_context(|| format!("connecting to {addr}"))?;
            // Write in random pieces, then half-close.
            let mut at = 0;
            while at < bytes.len() {
                let n = (rng.range(1, 4096) as usize).min(bytes.len() - at);
                if stream.write_all(&bytes[at..at + n]).await.is_err() {
                    break;
                }
                at += n;
            }
            let _ = stream.shutdown().await;
            let mut answer = Vec::new();
            let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer))
                .await;
            let head = String::from_utf8_lossy(&answer[..answer.len().min(40)]).into_owned();
            if let Some(code) = head
                .strip_prefix("HTTP/1.1 ")
                .and_then(|r| r.get(..3))
                .and_then(|c| c.parse::<u16>().ok())
                && code >= 500
            {
                raw.five_hundreds.push(format!("raw {what}: {head}"));
            }
        }
    }
    Ok(raw)
}

// ------------------------------------------------------------ NDJSON files

struct Lines {
    sent: u64,
    named: u64,
    unnamed: Vec<String>,
}

async fn bad_lines(
    http: &reqwest::Client,
    base: &str,
    dataset: &str,
    lines: usize,
    rng: &mut Rng,
) -> Result<Lines> {
    let deep = format!(
        "{{\"input\": {{\"q\": {}1{}}}}}",
        "[".repeat(300),
        "]".repeat(300)
    );
    let bad: Vec<(&str, Vec<u8>)> = vec![
        ("not JSON", b"{\"input\": {\"q\": 1}".to_vec()),
        ("unknown field", b"{\"input\": {}, \"inptu\": 1}".to_vec()),
        ("input not an object", b"{\"input\": [1, 2]}".to_vec()),
        (
            "invalid UTF-8",
            b"{\"input\": {\"q\": \"\xff\xfe\"}}".to_vec(),
        ),
        ("deep nesting", deep.into_bytes()),
        ("a JSON array", b"[1, 2, 3]".to_vec()),
    ];
    let mut out = Lines {
        sent: 0,
        named: 0,
        unnamed: Vec::new(),
    };
    for (i, (what, line)) in bad.iter().enumerate() {
        for append in [false, true] {
            let n = if i == 0 {
                lines
            } else {
                rng.range(10, lines as u64 / 10) as usize
            };
            let at = rng.index(n) + 1;
            let mut body = Vec::new();
            for (k, example) in arithmetic(n).enumerate() {
                if k + 1 == at {
                    body.extend_from_slice(line);
                } else {
                    body.extend_from_slice(example.to_string().as_bytes());
                }
                body.push(b'\n');
            }
            let path = if append {
                format!("{base}/v1/datasets/{dataset}/examples")
            } else {
                format!("{base}/v1/datasets?name=bad-lines")
            };
            out.sent += 1;
            let r = http
                .post(path)
                .header("content-type", "application/x-ndjson")
                .body(body)
                .send()
                .await?;
            let status = r.status().as_u16();
            let text = r.text().await.unwrap_or_default();
            if status == 400 && text.contains(&format!("line {at}")) {
                out.named += 1;
            } else {
                out.unnamed.push(format!(
                    "{what} at line {at} of {n} ({}): {status} {}",
                    if append { "append" } else { "new" },
                    short(&text)
                ));
            }
        }
    }
    Ok(out)
}
