//! The HTTP side: the accept loop, one hyper HTTP/1.1 connection per
//! socket, routing, and the provider request path (outage → key → body →
//! reply → limits → fault → latency → answer).
//!
//! Hyper is used directly, not through a router framework, because a
//! simulated reset has to reach the socket: a request that must be reset
//! marks its connection, and the socket is closed with `SO_LINGER = 0` (a
//! TCP RST) when hyper drops it after the handler fails or the body errors.

use std::hash::{Hash, Hasher};
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use hyper::body::Incoming;
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::body::{Events, SimBody};
use crate::clock::SimClock;
use crate::config::Dialect;
use crate::config::{Fault, OutageMode, SimConfig};
use crate::dialect::{self, Header};
use crate::error::Error;
use crate::limiter::{Limiter, Verdict};
use crate::protocol::{Api, Completion, ErrorKind};
use crate::reply::{estimate_tokens, reply};
use crate::rng::Rng;
use crate::stats::{Class, Stats, StatsSnapshot};

/// The key of requests that carry none (when `require_key` is off).
pub const ANONYMOUS_KEY: &str = "anonymous";

/// State shared by every connection.
#[derive(Debug)]
struct Shared {
    config: RwLock<Arc<SimConfig>>,
    clock: SimClock,
    wall_start: DateTime<Utc>,
    limiter: Mutex<Limiter>,
    stats: Arc<Stats>,
    sequence: AtomicU64,
}

impl Shared {
    fn config(&self) -> Arc<SimConfig> {
        // A writer only swaps an Arc, so a poisoned lock still holds a
        // whole, valid configuration.
        Arc::clone(&self.config.read().unwrap_or_else(PoisonError::into_inner))
    }

    fn update(&self, patch: &serde_json::Value) -> Result<SimConfig, Error> {
        let mut slot = self.config.write().unwrap_or_else(PoisonError::into_inner);
        let next = slot.patched(patch)?;
        if next.listen != slot.listen {
            return Err(Error::Config {
                key: "listen".to_owned(),
                message: format!(
                    "cannot change while the simulator runs (it listens on {})",
                    slot.listen
                ),
            });
        }
        *slot = Arc::new(next.clone());
        Ok(next)
    }

    fn limiter(&self) -> std::sync::MutexGuard<'_, Limiter> {
        // The limiter's maps stay consistent between statements.
        self.limiter.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn stats(&self) -> StatsSnapshot {
        let now = self.clock.elapsed();
        let mut snapshot = self.stats.snapshot(now);
        snapshot.hidden = self.limiter().hidden(now, &self.config().limits);
        snapshot
    }

    fn reset(&self) {
        self.stats.reset(self.clock.elapsed());
        self.limiter().clear();
        self.sequence.store(0, Ordering::SeqCst);
    }

    fn wall(&self, now: Duration) -> DateTime<Utc> {
        chrono::Duration::from_std(now)
            .ok()
            .and_then(|d| self.wall_start.checked_add_signed(d))
            .unwrap_or(self.wall_start)
    }
}

/// Starts simulators.
#[derive(Debug)]
pub struct Sim;

impl Sim {
    /// Binds `config.listen` and serves in the background on the current
    /// Tokio runtime, on real time.
    pub async fn start(config: SimConfig) -> Result<SimHandle, Error> {
        Self::start_with_clock(config, SimClock::system()).await
    }

    /// Like [`Sim::start`], with the given clock for rate limits, outage
    /// windows and the histogram (a [`crate::ManualClock`] in tests).
    pub async fn start_with_clock(
        mut config: SimConfig,
        clock: SimClock,
    ) -> Result<SimHandle, Error> {
        config.validate()?;
        let listener = listen(config.listen).map_err(|source| Error::Bind {
            addr: config.listen,
            source,
        })?;
        let addr = listener.local_addr().map_err(|source| Error::Bind {
            addr: config.listen,
            source,
        })?;
        // The configuration in force names the real port, not port 0.
        config.listen = addr;
        let shared = Arc::new(Shared {
            config: RwLock::new(Arc::new(config)),
            clock,
            wall_start: Utc::now(),
            limiter: Mutex::new(Limiter::default()),
            stats: Arc::new(Stats::default()),
            sequence: AtomicU64::new(0),
        });
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(accept_loop(listener, Arc::clone(&shared), stopped));
        tracing::info!(%addr, "sim listening");
        Ok(SimHandle {
            addr,
            shared,
            stop,
            task: Some(task),
        })
    }
}

/// A running simulator. Dropping it stops the server (without waiting);
/// [`SimHandle::shutdown`] stops it and waits.
#[derive(Debug)]
pub struct SimHandle {
    addr: SocketAddr,
    shared: Arc<Shared>,
    stop: watch::Sender<bool>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl SimHandle {
    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://<addr>`: the base URL (the APIs are under `/v1`).
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The same counters as `GET /stats`.
    pub fn stats(&self) -> StatsSnapshot {
        self.shared.stats()
    }

    /// The configuration in force (`listen` is the address bound).
    pub fn config(&self) -> SimConfig {
        SimConfig::clone(&self.shared.config())
    }

    /// Applies a JSON merge patch to the configuration (as
    /// `POST /admin/config` does) and returns the new configuration; on
    /// error nothing changes. Everything but `listen` can change.
    pub fn update(&self, patch: &serde_json::Value) -> Result<SimConfig, Error> {
        self.shared.update(patch)
    }

    /// Zeroes the stats, empties every rate-limit bucket's history (all keys
    /// start full) and restarts the fault sequence (as `POST /admin/reset`).
    pub fn reset(&self) {
        self.shared.reset();
    }

    /// Stops accepting, lets open responses finish for up to
    /// `shutdown_grace`, then cuts what is left and returns.
    pub async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for SimHandle {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

// ---------------------------------------------------------------- connections

/// Connections the kernel queues before `accept` (capped by
/// `net.core.somaxconn`). A client that opens hundreds of connections at once
/// — a scheduler filling 500 slots — must not see SYNs dropped, which costs
/// each dropped connection a one-second retransmission; the 128 of
/// `TcpListener::bind` is too few for that.
const LISTEN_BACKLOG: u32 = 4096;

/// A listener on `addr` with [`LISTEN_BACKLOG`] (and `SO_REUSEADDR`, like
/// the standard library's).
fn listen(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

async fn accept_loop(
    listener: TcpListener,
    shared: Arc<Shared>,
    mut stopped: watch::Receiver<bool>,
) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    connections.spawn(serve_connection(stream, Arc::clone(&shared), stopped.clone()));
                }
                Err(e) => {
                    // Usually out of file descriptors: pause instead of spinning.
                    tracing::warn!(error = %e, "sim accept failed");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            _ = stopped.changed() => break,
        }
    }
    drop(listener);
    let grace = shared.config().shutdown_grace;
    let drained = tokio::time::timeout(grace, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::info!(
            left = connections.len(),
            "sim shutdown grace over; cutting connections"
        );
        connections.shutdown().await;
    }
}

async fn serve_connection(
    stream: TcpStream,
    shared: Arc<Shared>,
    mut stopped: watch::Receiver<bool>,
) {
    // Small responses must not wait for Nagle's algorithm.
    let _ = stream.set_nodelay(true);
    let control = Arc::new(Control::default());
    let io = TokioIo::new(SimStream {
        tcp: stream,
        control: Arc::clone(&control),
    });
    let service =
        service_fn(move |request| route(Arc::clone(&shared), Arc::clone(&control), request));
    let connection = hyper::server::conn::http1::Builder::new()
        .keep_alive(true)
        .serve_connection(io, service);
    tokio::pin!(connection);
    tokio::select! {
        result = connection.as_mut() => {
            if let Err(e) = result {
                tracing::debug!(error = %e, "sim connection ended");
            }
        }
        _ = stopped.changed() => {
            connection.as_mut().graceful_shutdown();
            let _ = connection.await;
        }
    }
}

/// Per-connection flag set by a request that must reset the connection.
#[derive(Debug, Default)]
struct Control {
    hang_up: AtomicBool,
}

impl Control {
    fn hang_up(&self) {
        self.hang_up.store(true, Ordering::SeqCst);
    }
}

/// The socket, which resets the connection when it is dropped after a
/// request asked for a hang-up.
struct SimStream {
    tcp: TcpStream,
    control: Arc<Control>,
}

impl Drop for SimStream {
    fn drop(&mut self) {
        if self.control.hang_up.load(Ordering::SeqCst) {
            // Zero linger turns the close that follows into a TCP RST; it
            // does not block.
            let _ = self.tcp.set_zero_linger();
        }
    }
}

impl AsyncRead for SimStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_read(cx, buf)
    }
}

impl AsyncWrite for SimStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().tcp).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().tcp).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.tcp.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_shutdown(cx)
    }
}

/// The handler's way of saying "close this connection without a response".
#[derive(Debug)]
struct HangUp;

impl std::fmt::Display for HangUp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("simulated connection reset")
    }
}

impl std::error::Error for HangUp {}

// ---------------------------------------------------------------- routing

type Answer = Result<Response<SimBody>, HangUp>;

const ROUTES: [&str; 6] = [
    "/v1/chat/completions",
    "/v1/messages",
    "/stats",
    "/healthz",
    "/admin/config",
    "/admin/reset",
];

async fn route(shared: Arc<Shared>, control: Arc<Control>, request: Request<Incoming>) -> Answer {
    let path = request.uri().path();
    match (request.method(), path) {
        (&Method::POST, "/v1/chat/completions") => {
            provider(&shared, &control, request, Api::OpenAi).await
        }
        (&Method::POST, "/v1/messages") => {
            provider(&shared, &control, request, Api::Anthropic).await
        }
        (&Method::GET, "/stats") => Ok(json(StatusCode::OK, to_json(&shared.stats()))),
        (&Method::GET, "/healthz") => Ok(json(StatusCode::OK, &br#"{"status":"ok"}"#[..])),
        (&Method::GET, "/admin/config") => Ok(json(StatusCode::OK, to_json(&*shared.config()))),
        (&Method::POST, "/admin/config") => Ok(admin_config(&shared, request).await),
        (&Method::POST, "/admin/reset") => {
            shared.reset();
            Ok(json(StatusCode::OK, to_json(&shared.stats())))
        }
        (method, path) => {
            let (status, kind, message) = if ROUTES.contains(&path) {
                (
                    StatusCode::METHOD_NOT_ALLOWED,
                    ErrorKind::MethodNotAllowed,
                    format!("{method} is not allowed on {path}"),
                )
            } else {
                (
                    StatusCode::NOT_FOUND,
                    ErrorKind::NotFound,
                    format!("Unknown route: {method} {path}"),
                )
            };
            Ok(json(status, Api::OpenAi.error_body(kind, &message)))
        }
    }
}

async fn admin_config(shared: &Shared, request: Request<Incoming>) -> Response<SimBody> {
    let bad = |message: String| {
        json(
            StatusCode::BAD_REQUEST,
            Api::OpenAi.error_body(ErrorKind::InvalidRequest, &message),
        )
    };
    let body = match read_body(request.into_body(), 1024 * 1024).await {
        Ok(body) => body,
        Err(message) => return bad(message),
    };
    let patch: serde_json::Value = match serde_json::from_slice(&body) {
        Ok(patch) => patch,
        Err(e) => return bad(format!("the config patch is not JSON: {e}")),
    };
    match shared.update(&patch) {
        Ok(config) => {
            tracing::info!(patch = %patch, "sim config updated");
            json(StatusCode::OK, to_json(&config))
        }
        Err(e) => bad(e.to_string()),
    }
}

fn to_json<T: Serialize>(value: &T) -> Vec<u8> {
    // Config and stats are plain structs with string map keys: serialising
    // them into memory cannot fail.
    serde_json::to_vec(value).unwrap_or_default()
}

fn json(status: StatusCode, body: impl Into<Bytes>) -> Response<SimBody> {
    let mut response = Response::new(SimBody::full(body));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// Reads a body of at most `limit` bytes; the error is a message for a 4xx
/// (it starts with "too large" when the limit was hit).
async fn read_body(body: Incoming, limit: usize) -> Result<Bytes, String> {
    match Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => {
            Err(format!("too large: the request body exceeds {limit} bytes"))
        }
        Err(e) => Err(format!("could not read the request body: {e}")),
    }
}

/// The API key from `Authorization: Bearer …`, `x-api-key` or `api-key`
/// (the first that is present and not blank).
fn api_key(headers: &HeaderMap) -> Option<&str> {
    fn clean(value: Option<&str>) -> Option<&str> {
        value.map(str::trim).filter(|k| !k.is_empty())
    }
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let bearer = header("authorization").and_then(|v| {
        v.get(..7)
            .filter(|p| p.eq_ignore_ascii_case("bearer "))
            .and(v.get(7..))
    });
    clean(bearer)
        .or_else(|| clean(header("x-api-key")))
        .or_else(|| clean(header("api-key")))
}

// ---------------------------------------------------------------- provider path

async fn provider(
    shared: &Shared,
    control: &Control,
    request: Request<Incoming>,
    api: Api,
) -> Answer {
    let now = shared.clock.elapsed();
    let config = shared.config();
    let number = shared.sequence.fetch_add(1, Ordering::SeqCst);
    let mut rng = Rng::for_request(config.seed, number);
    let in_flight = shared.stats.enter();
    let record = |key: &str, class: Class, usage: Option<(u64, u64)>| {
        shared
            .stats
            .record(now, key, class, usage, config.histogram_seconds);
    };
    let given_key = api_key(request.headers()).map(str::to_owned);

    if config.outage.is_down(now) {
        let key = given_key.as_deref().unwrap_or(ANONYMOUS_KEY);
        return match config.outage.mode {
            OutageMode::Refuse => {
                record(key, Class::Refused, None);
                control.hang_up();
                Err(HangUp)
            }
            OutageMode::Unavailable => {
                record(key, Class::ServerError, None);
                Ok(error(
                    api,
                    StatusCode::SERVICE_UNAVAILABLE,
                    ErrorKind::Server,
                    "The service is unavailable (simulated outage).",
                ))
            }
        };
    }
    let api_key = match given_key {
        Some(key) => key,
        None if !config.require_key => ANONYMOUS_KEY.to_owned(),
        None => {
            record(ANONYMOUS_KEY, Class::ClientError, None);
            return Ok(error(
                api,
                StatusCode::UNAUTHORIZED,
                ErrorKind::Authentication,
                "No API key: send `Authorization: Bearer <key>` or `x-api-key: <key>`.",
            ));
        }
    };
    if !config.accepted_keys.is_empty() && !config.accepted_keys.contains(&api_key) {
        record(&api_key, Class::ClientError, None);
        let message = format!(
            "Incorrect API key provided: {api_key}. You can find your API key in your account settings."
        );
        return Ok(error(
            api,
            StatusCode::UNAUTHORIZED,
            ErrorKind::Authentication,
            &message,
        ));
    }
    let body = match read_body(request.into_body(), config.max_body_bytes).await {
        Ok(body) => body,
        Err(message) => {
            record(&api_key, Class::ClientError, None);
            let (status, kind) = if message.starts_with("too large") {
                (StatusCode::PAYLOAD_TOO_LARGE, ErrorKind::TooLarge)
            } else {
                (StatusCode::BAD_REQUEST, ErrorKind::InvalidRequest)
            };
            return Ok(error(api, status, kind, &message));
        }
    };
    let parsed = match api.parse(&body) {
        Ok(parsed) => parsed,
        Err(message) => {
            record(&api_key, Class::ClientError, None);
            let message = format!("Invalid request body: {message}");
            return Ok(error(
                api,
                StatusCode::BAD_REQUEST,
                ErrorKind::InvalidRequest,
                &message,
            ));
        }
    };

    let made = reply(&parsed.prompt, parsed.max_tokens, &config.replies);
    let prompt_tokens = estimate_tokens(&parsed.prompt);
    let completion_tokens = made.completion_tokens();
    let key = if config.limits.per_model {
        format!("{api_key}/{}", parsed.model)
    } else {
        api_key
    };
    let cost = prompt_tokens + completion_tokens;
    let decision = shared.limiter().check(&key, now, &config.limits, cost);
    let dialect = dialect::on_route(config.limits.effective_dialect(), api);
    let wall = shared.wall(now);
    let headers = dialect::limit_headers(dialect, &decision.status, wall);
    let limit_headers = |response: &mut Response<SimBody>| attach(response, &headers);
    match decision.verdict {
        Verdict::Admitted => {}
        Verdict::Limited { wait, by } => {
            record(&key, Class::RateLimited, None);
            let (kind, message) =
                dialect::limit_message(dialect, &parsed.model, by, &decision.status, cost, wait);
            return Ok(rate_limited(api, dialect, wait, kind, &message, &headers));
        }
        Verdict::QuotaExhausted => {
            record(&key, Class::QuotaExhausted, None);
            let style = config.limits.quota_style;
            let mut response = match dialect::quota_body(style, &parsed.model, now) {
                Some(body) => json(StatusCode::TOO_MANY_REQUESTS, body),
                None => {
                    let message = format!(
                        "Rate limit reached for {}. Please try again in {}. (simulated)",
                        parsed.model,
                        dialect::format_reset(dialect::LONG_RETRY)
                    );
                    let kind = ErrorKind::RateLimit;
                    return Ok(rate_limited(
                        api,
                        dialect,
                        dialect::LONG_RETRY,
                        kind,
                        &message,
                        &headers,
                    ));
                }
            };
            limit_headers(&mut response);
            return Ok(response);
        }
    }

    let fault = config.faults.draw(&mut rng);
    let delay = config.latency.sample(&mut rng);
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let completion = Completion {
        id: number,
        created: wall.timestamp(),
        model: &parsed.model,
        text: &made.text,
        truncated: made.truncated,
        prompt_tokens,
        completion_tokens,
    };
    let pace = config.latency.stream_chunk_delay;
    let mut response = match fault {
        Fault::ServerError(status) => {
            record(&key, Class::ServerError, None);
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            error(
                api,
                status,
                ErrorKind::Server,
                "The server had an error while processing your request (simulated).",
            )
        }
        Fault::Overloaded => {
            record(&key, Class::Overloaded, None);
            let status = StatusCode::from_u16(529).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
            error(
                api,
                status,
                ErrorKind::Overloaded,
                "Overloaded (simulated).",
            )
        }
        Fault::ResetBefore => {
            record(&key, Class::Reset, None);
            control.hang_up();
            return Err(HangUp);
        }
        Fault::ResetDuring => {
            record(&key, Class::Reset, None);
            control.hang_up();
            if parsed.stream {
                let events = api.events(&completion, parsed.include_usage, false);
                let half = events.len().div_ceil(2);
                stream(Events::new(events, pace, Some(in_flight)).fail_after(half))
            } else {
                let body = Bytes::from(api.body(&completion));
                let length = body.len();
                let first_half = body.slice(..length / 2);
                let mut response = Response::new(SimBody::Events(
                    Events::new(vec![first_half], Duration::ZERO, Some(in_flight)).fail_after(1),
                ));
                let headers = response.headers_mut();
                headers.insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                );
                headers.insert(header::CONTENT_LENGTH, HeaderValue::from(length));
                response
            }
        }
        Fault::Malformed => {
            record(&key, Class::Malformed, None);
            if parsed.stream {
                let events = api.events(&completion, parsed.include_usage, true);
                stream(Events::new(events, pace, Some(in_flight)))
            } else {
                let body = Bytes::from(api.body(&completion));
                json(StatusCode::OK, body.slice(..body.len() / 2))
            }
        }
        Fault::None => {
            record(&key, Class::Ok, Some((prompt_tokens, completion_tokens)));
            shared
                .stats
                .success(digest(api, &parsed.model, &parsed.prompt));
            if parsed.stream {
                let events = api.events(&completion, parsed.include_usage, false);
                stream(Events::new(events, pace, Some(in_flight)))
            } else {
                json(StatusCode::OK, api.body(&completion))
            }
        }
    };
    limit_headers(&mut response);
    Ok(response)
}

fn error(api: Api, status: StatusCode, kind: ErrorKind, message: &str) -> Response<SimBody> {
    json(status, api.error_body(kind, message))
}

fn stream(events: Events) -> Response<SimBody> {
    let mut response = Response::new(SimBody::Events(events));
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

/// A rate-limit 429 in `dialect`: a bare one for `none`, else the API's
/// error body with `message`, the dialect's retry headers and `headers`.
fn rate_limited(
    api: Api,
    dialect: Dialect,
    wait: Duration,
    kind: ErrorKind,
    message: &str,
    headers: &[Header],
) -> Response<SimBody> {
    if dialect == Dialect::None {
        let mut response = Response::new(SimBody::full(Bytes::new()));
        *response.status_mut() = StatusCode::TOO_MANY_REQUESTS;
        return response;
    }
    let mut response = error(api, StatusCode::TOO_MANY_REQUESTS, kind, message);
    attach(&mut response, &dialect::retry_headers(dialect, wait));
    attach(&mut response, headers);
    response
}

fn attach(response: &mut Response<SimBody>, headers: &[Header]) {
    for (name, value) in headers {
        if let Ok(value) = HeaderValue::try_from(value.as_str()) {
            response
                .headers_mut()
                .insert(HeaderName::from_static(name), value);
        }
    }
}

/// The identity of a request's content for `repeated_successes`: route,
/// model and prompt (every message's text, the system prompt first).
fn digest(api: Api, model: &str, prompt: &str) -> u64 {
    let mut hasher = std::hash::DefaultHasher::new();
    (api == Api::OpenAi, model, prompt).hash(&mut hasher);
    hasher.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Six hundred clients connecting at once all complete their handshake
    /// while nothing accepts (a backlog of 128 would leave most of them
    /// waiting forever here). The timeout only bounds a failure.
    #[tokio::test]
    async fn a_burst_of_connections_fits_in_the_backlog() {
        let listener = listen(SocketAddr::from(([127, 0, 0, 1], 0))).unwrap();
        let addr = listener.local_addr().unwrap();
        let mut connects = JoinSet::new();
        for _ in 0..600 {
            connects.spawn(TcpStream::connect(addr));
        }
        let all = tokio::time::timeout(Duration::from_secs(20), async {
            let mut streams = Vec::new();
            while let Some(joined) = connects.join_next().await {
                streams.push(joined.unwrap().unwrap());
            }
            streams
        })
        .await
        .expect("every connection was queued");
        assert_eq!(all.len(), 600);
        drop(listener);
    }

    #[test]
    fn api_key_comes_from_any_of_the_three_headers() {
        let mut headers = HeaderMap::new();
        assert_eq!(api_key(&headers), None);
        headers.insert("api-key", HeaderValue::from_static("azure"));
        assert_eq!(api_key(&headers), Some("azure"));
        headers.insert("x-api-key", HeaderValue::from_static("anthropic"));
        assert_eq!(api_key(&headers), Some("anthropic"));
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer sk-1"),
        );
        assert_eq!(api_key(&headers), Some("sk-1"));
        headers.insert(header::AUTHORIZATION, HeaderValue::from_static("Basic abc"));
        assert_eq!(api_key(&headers), Some("anthropic"));
        headers.insert(header::AUTHORIZATION, HeaderValue::from_static("bearer  "));
        assert_eq!(api_key(&headers), Some("anthropic"));
    }
}
