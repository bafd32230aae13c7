//! The registry of configured provider entries: one HTTP client per entry
//! (connection pooling), credentials read once from the environment, rate
//! keys by quota scope, and the `Provider` port implementation that renders
//! a job, sends it, reads the reply and classifies how it ended.

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use reqwest::header::{ACCEPT, CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue};
use reqwest::{Client, Response, Url};
use runnel_core::{
    CallReport, CallSpec, ChunkSink, Job, JobKind, Message, Outcome, Protocol, Provider,
    ProviderKind, QuotaScope, RateKey, RateLimitHeaders, Reply,
};
use sha2::{Digest, Sha256};

use crate::classify::{Fault, classify_status, classify_transport};
use crate::config::{ProviderEntry, Settings};
use crate::error::Error;
use crate::ratelimit::rate_limit_headers;
use crate::redact::clean;
use crate::stream::{Decoder, read_capped, read_events, too_large};
use crate::template::{Vars, render_messages};
use crate::verdict::parse_verdict;
use crate::wire::Completion;
use crate::{RequestOptions, anthropic, gemini, openai};

/// A credential value. Its `Debug` never shows it, and it has no `Display`.
#[derive(Clone)]
struct Secret(String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret([REDACTED])")
    }
}

/// Where an entry's key stands.
#[derive(Clone, Debug)]
enum Credential {
    /// The entry sends no key (local servers).
    None,
    /// Read from the environment; the header carries it, marked sensitive.
    Key {
        value: Secret,
        header: (HeaderName, HeaderValue),
    },
    /// The named variable is not set (or empty).
    Missing(String),
    /// The named variable holds something that cannot go in a header.
    Unusable(String),
}

/// One configured entry, ready to call.
struct Entry {
    name: String,
    config: ProviderEntry,
    protocol: Protocol,
    base: Url,
    client: Client,
    credential: Credential,
    /// Short hash of the key, for rate keys ("nokey" without one).
    key_hash: String,
    /// Values removed from every error text: the key and secret-looking
    /// static headers.
    secrets: Vec<Secret>,
}

impl fmt::Debug for Entry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let credential = match &self.credential {
            Credential::None => "none".to_owned(),
            Credential::Key { .. } => format!("key {}", self.key_hash),
            Credential::Missing(var) => format!("{var} not set"),
            Credential::Unusable(var) => format!("{var} unusable"),
        };
        f.debug_struct("Entry")
            .field("name", &self.name)
            .field("kind", &self.config.kind)
            .field("base", &self.base.as_str())
            .field("credential", &credential)
            .finish_non_exhaustive()
    }
}

/// A problem found by [`Providers::check`], for start-up warnings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// The entry's name.
    pub entry: String,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "provider `{}`: {}", self.entry, self.message)
    }
}

/// Every configured provider entry, behind the `Provider` port.
///
/// Built once at start-up; cheap to share behind an `Arc`. Calls through an
/// entry whose key variable is missing end `Permanent` (and
/// [`Providers::check`] lists them), so one unusable entry does not stop the
/// server.
#[derive(Debug)]
pub struct Providers {
    entries: BTreeMap<String, Arc<Entry>>,
    settings: Settings,
}

fn invalid(entry: &str, key: &'static str, message: impl Into<String>) -> Error {
    Error::InvalidEntry {
        entry: entry.to_owned(),
        key,
        message: message.into(),
    }
}

/// The first 12 hex digits of the SHA-256 of `key`.
fn short_hash(key: &str) -> String {
    let digest = Sha256::digest(key.as_bytes());
    digest.iter().take(6).map(|b| format!("{b:02x}")).collect()
}

fn parse_base(name: &str, config: &ProviderEntry) -> Result<Url, Error> {
    let text = config.base_url().ok_or_else(|| {
        invalid(
            name,
            "base_url",
            format!("is required for kind `{}`", config.kind.as_str()),
        )
    })?;
    // The message never repeats the URL: a misplaced key could be in it.
    let url =
        Url::parse(text).map_err(|e| invalid(name, "base_url", format!("is not a URL: {e}")))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(invalid(
            name,
            "base_url",
            "must start with http:// or https://",
        ));
    }
    if url.query().is_some()
        || url.fragment().is_some()
        || !url.username().is_empty()
        || url.password().is_some()
    {
        return Err(invalid(
            name,
            "base_url",
            "must not hold a query, fragment or user info (keys belong in the variable named by api_key_env)",
        ));
    }
    Ok(url)
}

fn auth_header(kind: ProviderKind, key: &str) -> Option<(HeaderName, HeaderValue)> {
    let (name, value) = match kind.protocol() {
        Protocol::OpenAiChat if kind == ProviderKind::Azure => ("api-key", key.to_owned()),
        Protocol::OpenAiChat => ("authorization", format!("Bearer {key}")),
        Protocol::AnthropicMessages => ("x-api-key", key.to_owned()),
        Protocol::GeminiGenerate => ("x-goog-api-key", key.to_owned()),
    };
    let mut value = HeaderValue::from_str(&value).ok()?;
    value.set_sensitive(true);
    Some((HeaderName::from_static(name), value))
}

impl Entry {
    fn build(
        name: &str,
        config: ProviderEntry,
        lookup: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self, Error> {
        let base = parse_base(name, &config)?;
        if config.max_response_bytes == 0 {
            return Err(invalid(name, "max_response_bytes", "must be at least 1"));
        }
        if config.connect_timeout.is_zero() {
            return Err(invalid(
                name,
                "connect_timeout",
                "must be greater than zero",
            ));
        }
        let mut headers = HeaderMap::new();
        let mut secrets = Vec::new();
        for (key, value) in &config.headers {
            let header = HeaderName::from_bytes(key.as_bytes()).map_err(|_| {
                invalid(
                    name,
                    "headers",
                    format!("`{key}` is not a valid header name"),
                )
            })?;
            let mut header_value = HeaderValue::from_str(value).map_err(|_| {
                invalid(
                    name,
                    "headers",
                    format!("the value of `{key}` is not a valid header value"),
                )
            })?;
            if crate::config::is_secret_header(key) {
                header_value.set_sensitive(true);
                secrets.push(Secret(value.clone()));
            }
            headers.insert(header, header_value);
        }
        let credential = match config.api_key_env() {
            None => Credential::None,
            Some("") => return Err(invalid(name, "api_key_env", "must not be empty")),
            Some(var) => match lookup(var).map(|v| v.trim().to_owned()) {
                None => Credential::Missing(var.to_owned()),
                Some(v) if v.is_empty() => Credential::Missing(var.to_owned()),
                Some(v) => match auth_header(config.kind, &v) {
                    Some(header) => {
                        secrets.push(Secret(v.clone()));
                        Credential::Key {
                            value: Secret(v),
                            header,
                        }
                    }
                    None => Credential::Unusable(var.to_owned()),
                },
            },
        };
        let key_hash = match &credential {
            Credential::Key { value, .. } => short_hash(&value.0),
            _ => "nokey".to_owned(),
        };
        let client = Client::builder()
            .connect_timeout(config.connect_timeout)
            // An API endpoint does not redirect; following one could carry
            // the key to another host.
            .redirect(reqwest::redirect::Policy::none())
            .default_headers(headers)
            .user_agent(concat!("runnel/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| Error::HttpClient {
                entry: name.to_owned(),
                message: crate::classify::error_chain(&e),
            })?;
        Ok(Self {
            name: name.to_owned(),
            protocol: config.kind.protocol(),
            config,
            base,
            client,
            credential,
            key_hash,
            secrets,
        })
    }

    fn rate_key(&self, model: &str) -> RateKey {
        let base = self.base.as_str().trim_end_matches('/');
        let scope = match self.config.kind.quota_scope() {
            QuotaScope::PerModel | QuotaScope::PerDeployment => {
                format!("{}|{base}|{model}", self.key_hash)
            }
            QuotaScope::PerAccount => format!("{}|{base}", self.key_hash),
            QuotaScope::Unlimited => String::new(),
        };
        RateKey::new(&self.name, &scope)
    }

    /// Redacts and truncates an error text on its way out.
    fn clean(&self, text: &str, max_chars: usize) -> String {
        let secrets: Vec<&str> = self.secrets.iter().map(|s| s.0.as_str()).collect();
        clean(text, &secrets, max_chars)
    }

    fn options(&self, spec: &CallSpec) -> RequestOptions {
        RequestOptions {
            stream: spec.stream || self.config.stream,
            stream_usage: self.config.stream_usage(),
            default_max_tokens: self.config.default_max_tokens(),
        }
    }

    fn request(
        &self,
        spec: &CallSpec,
        messages: &[Message],
        options: &RequestOptions,
    ) -> (Url, serde_json::Value) {
        match self.protocol {
            Protocol::OpenAiChat => {
                let url = match (self.config.kind, self.config.api_version()) {
                    (ProviderKind::Azure, Some(version)) => {
                        openai::azure_endpoint(&self.base, &spec.model, version)
                    }
                    _ => openai::endpoint(&self.base),
                };
                (
                    url,
                    openai::request_body(&spec.model, messages, &spec.params, options),
                )
            }
            Protocol::AnthropicMessages => (
                anthropic::endpoint(&self.base),
                anthropic::request_body(&spec.model, messages, &spec.params, options),
            ),
            Protocol::GeminiGenerate => (
                gemini::endpoint(&self.base, &spec.model, options.stream),
                gemini::request_body(messages, &spec.params, options),
            ),
        }
    }

    /// One call: everything up to the interpreted reply text. An error
    /// reply's body is read up to `error_body_bytes`.
    async fn call(
        &self,
        spec: &CallSpec,
        messages: &[Message],
        timeout: Duration,
        chunks: Option<&ChunkSink>,
        error_body_bytes: u64,
    ) -> (Result<Completion, Fault>, Option<RateLimitHeaders>) {
        let auth = match &self.credential {
            Credential::None => None,
            Credential::Key { header, .. } => Some(header),
            Credential::Missing(var) => {
                return (
                    Err(Fault::permanent(format!(
                        "environment variable {var} is not set"
                    ))),
                    None,
                );
            }
            Credential::Unusable(var) => {
                return (
                    Err(Fault::permanent(format!(
                        "environment variable {var} does not hold a usable key (it must be printable ASCII)"
                    ))),
                    None,
                );
            }
        };
        let options = self.options(spec);
        let (url, body) = self.request(spec, messages, &options);
        let mut request = self.client.post(url).timeout(timeout).json(&body);
        if let Some((name, value)) = auth {
            request = request.header(name, value);
        }
        if self.protocol == Protocol::AnthropicMessages
            && let Some(version) = self.config.api_version()
        {
            request = request.header("anthropic-version", version);
        }
        if options.stream {
            request = request.header(ACCEPT, "text/event-stream");
        }
        let response = match request.send().await {
            Ok(r) => r,
            Err(e) => return (Err(classify_transport(&e, timeout)), None),
        };
        let limits = rate_limit_headers(response.headers(), SystemTime::now());
        (
            self.read(response, options.stream, timeout, chunks, error_body_bytes)
                .await,
            limits,
        )
    }

    async fn read(
        &self,
        response: Response,
        stream: bool,
        timeout: Duration,
        chunks: Option<&ChunkSink>,
        error_body_bytes: u64,
    ) -> Result<Completion, Fault> {
        let status = response.status();
        let max = self.config.max_response_bytes;
        if !status.is_success() {
            let headers = response.headers().clone();
            // A broken error body still has its status: classify with what arrived.
            let (body, _, _) =
                read_capped(response.bytes_stream(), error_body_bytes.min(max)).await;
            return Err(classify_status(status, &headers, &body, SystemTime::now()));
        }
        let is_sse = response
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.trim_start().starts_with("text/event-stream"));
        if stream && is_sse {
            return read_events(
                response.bytes_stream(),
                max,
                Decoder::new(self.protocol),
                chunks,
                |e| classify_transport(&e, timeout),
            )
            .await;
        }
        if response.content_length().is_some_and(|n| n > max) {
            return Err(too_large(max));
        }
        let (body, more, error) = read_capped(response.bytes_stream(), max).await;
        if let Some(e) = error {
            return Err(classify_transport(&e, timeout));
        }
        if more {
            return Err(too_large(max));
        }
        match self.protocol {
            Protocol::OpenAiChat => openai::parse_reply(&body),
            Protocol::AnthropicMessages => anthropic::parse_reply(&body),
            Protocol::GeminiGenerate => gemini::parse_reply(&body),
        }
    }
}

/// The messages of a job with its data filled in.
fn render_job(job: &Job) -> Result<Vec<Message>, crate::template::TemplateProblem> {
    match &job.kind {
        JobKind::Task { call, work } => render_messages(&call.messages, &Vars::task(&work.data)),
        JobKind::Eval { evaluator, work } => render_messages(
            &evaluator.call.messages,
            &Vars::eval(&work.data, &work.output),
        ),
    }
}

impl Providers {
    /// Builds the registry. `lookup` reads an environment variable (inject
    /// it so tests need not touch the process environment; production uses
    /// [`Providers::from_env`]). Keys are read once, here.
    pub fn new<I, F>(entries: I, settings: Settings, lookup: F) -> Result<Self, Error>
    where
        I: IntoIterator<Item = (String, ProviderEntry)>,
        F: Fn(&str) -> Option<String>,
    {
        settings.validate()?;
        let entries = entries
            .into_iter()
            .map(|(name, config)| {
                let entry = Entry::build(&name, config, &lookup)?;
                Ok((name, Arc::new(entry)))
            })
            .collect::<Result<_, Error>>()?;
        Ok(Self { entries, settings })
    }

    /// Builds the registry with keys read from the process environment.
    pub fn from_env<I>(entries: I, settings: Settings) -> Result<Self, Error>
    where
        I: IntoIterator<Item = (String, ProviderEntry)>,
    {
        Self::new(entries, settings, |name| std::env::var(name).ok())
    }

    /// Problems worth a warning at start-up: key variables that are not
    /// set or unusable, and keys that would travel over plain http to a
    /// host other than this machine.
    pub fn check(&self) -> Vec<Problem> {
        let mut problems = Vec::new();
        for (name, entry) in &self.entries {
            let mut add = |message: String| {
                problems.push(Problem {
                    entry: name.clone(),
                    message,
                })
            };
            match &entry.credential {
                Credential::Missing(var) => add(format!(
                    "environment variable {var} is not set; calls through this entry will fail"
                )),
                Credential::Unusable(var) => add(format!(
                    "environment variable {var} does not hold a usable key (it must be printable ASCII)"
                )),
                Credential::Key { .. } => {
                    let host = entry.base.host_str().unwrap_or_default();
                    let host = host.trim_start_matches('[').trim_end_matches(']');
                    let local = host == "localhost"
                        || host
                            .parse::<std::net::IpAddr>()
                            .is_ok_and(|ip| ip.is_loopback());
                    if entry.base.scheme() == "http" && !local {
                        add("sends its API key over plain http to another machine".into());
                    }
                }
                Credential::None => {}
            }
        }
        problems
    }

    /// The configured entry names, sorted.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.entries.keys().map(String::as_str)
    }

    /// The configuration of entry `name`.
    pub fn entry(&self, name: &str) -> Option<&ProviderEntry> {
        self.entries.get(name).map(|e| &e.config)
    }

    /// The registry-wide settings.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    fn get(&self, name: &str) -> Result<&Arc<Entry>, String> {
        self.entries.get(name).ok_or_else(|| {
            let known: Vec<&str> = self.names().collect();
            format!(
                "unknown provider entry `{name}` (configured: {})",
                if known.is_empty() {
                    "none".to_owned()
                } else {
                    known.join(", ")
                }
            )
        })
    }

    async fn call_job(&self, job: &Job, chunks: Option<ChunkSink>) -> CallReport {
        let started = Instant::now();
        let spec = job.call();
        let max_chars = self.settings.max_error_chars;
        let entry = match self.get(&spec.provider) {
            Ok(e) => e,
            Err(message) => {
                let outcome = Fault::permanent(message).into_outcome(|m| clean(m, &[], max_chars));
                return CallReport::new(outcome, started.elapsed());
            }
        };
        let cleaner = |m: &str| entry.clean(m, max_chars);
        // Template errors are found before any call is made.
        let messages = match render_job(job) {
            Ok(m) => m,
            Err(problem) => {
                let fault = Fault::permanent(format!("template error: {problem}"));
                return CallReport::new(fault.into_outcome(cleaner), started.elapsed());
            }
        };
        let default_timeout = if job.is_task() {
            self.settings.task_timeout
        } else {
            self.settings.eval_timeout
        };
        let timeout = spec.timeout(default_timeout, self.settings.max_call_timeout);
        let (result, rate_limits) = entry
            .call(
                spec,
                &messages,
                timeout,
                chunks.as_ref(),
                self.settings.error_body_bytes,
            )
            .await;
        let (outcome, usage) = match result {
            Err(fault) => (
                fault
                    .long_wait(self.settings.long_wait)
                    .into_outcome(cleaner),
                None,
            ),
            Ok(completion) => {
                let outcome = match &job.kind {
                    JobKind::Task { .. } => Outcome::Success(Reply::Task {
                        output: completion.text,
                    }),
                    JobKind::Eval { evaluator, .. } => {
                        match parse_verdict(&completion.text, &evaluator.labels) {
                            Ok(verdict) => Outcome::Success(verdict.into()),
                            Err(why) => {
                                Fault::permanent(format!("could not read the verdict: {why}"))
                                    .into_outcome(cleaner)
                            }
                        }
                    }
                };
                (outcome, completion.usage)
            }
        };
        let latency = started.elapsed();
        tracing::debug!(
            entry = %spec.provider,
            model = %spec.model,
            outcome = outcome.class().as_str(),
            latency_ms = latency.as_millis() as u64,
            error = outcome.message().unwrap_or_default(),
            "provider call ended"
        );
        CallReport {
            outcome,
            latency,
            usage,
            rate_limits,
        }
    }
}

impl Provider for Providers {
    fn rate_key(&self, call: &CallSpec) -> Result<RateKey, String> {
        Ok(self.get(&call.provider)?.rate_key(&call.model))
    }

    /// Prompt characters / `chars_per_token`, plus `tokens_per_message` per
    /// message, plus the reply budget
    /// (`max_tokens` of the spec, else the entry's `default_max_tokens`).
    /// `None` when the job cannot be rendered (it will fail without a call).
    fn estimate_tokens(&self, job: &Job) -> Option<u64> {
        let spec = job.call();
        let entry = self.entries.get(&spec.provider)?;
        let messages = render_job(job).ok()?;
        let chars: u64 = messages
            .iter()
            .map(|m| m.content.chars().count() as u64)
            .sum();
        let per_message = self.settings.tokens_per_message;
        let prompt = chars
            .div_ceil(self.settings.chars_per_token)
            .saturating_add(per_message.saturating_mul(messages.len() as u64));
        let reply = spec
            .max_tokens()
            .or(entry.config.default_max_tokens())
            .unwrap_or(0);
        Some(prompt.saturating_add(reply))
    }

    fn call(
        &self,
        job: &Job,
        chunks: Option<ChunkSink>,
    ) -> impl Future<Output = CallReport> + Send {
        self.call_job(job, chunks)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn providers(
        entries: &[(&str, ProviderEntry)],
        env: &[(&str, &str)],
    ) -> Result<Providers, Error> {
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| ((*k).into(), (*v).into()))
            .collect();
        Providers::new(
            entries.iter().map(|(n, e)| ((*n).to_owned(), e.clone())),
            Settings::default(),
            move |name| env.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone()),
        )
    }

    fn spec(provider: &str, model: &str) -> CallSpec {
        CallSpec {
            provider: provider.into(),
            model: model.into(),
            messages: vec![],
            params: Default::default(),
            timeout_s: None,
            stream: false,
        }
    }

    #[test]
    fn rate_keys_follow_the_quota_scope_and_hide_the_key() {
        let p = providers(
            &[
                ("oa", ProviderEntry::new(ProviderKind::OpenAi)),
                ("claude", ProviderEntry::new(ProviderKind::Anthropic)),
                (
                    "az",
                    ProviderEntry::new(ProviderKind::Azure)
                        .with_base_url("https://r.openai.azure.com"),
                ),
                ("ollama", ProviderEntry::new(ProviderKind::Local)),
            ],
            &[
                ("OPENAI_API_KEY", "sk-secret-one"),
                ("ANTHROPIC_API_KEY", "sk-ant-secret"),
                ("AZURE_OPENAI_API_KEY", "azure-secret"),
            ],
        )
        .unwrap();
        let h = short_hash("sk-secret-one");
        assert_eq!(h.len(), 12);
        assert_eq!(
            p.rate_key(&spec("oa", "gpt-4o")).unwrap().as_str(),
            format!("oa|{h}|https://api.openai.com/v1|gpt-4o")
        );
        assert_ne!(
            p.rate_key(&spec("oa", "gpt-4o")),
            p.rate_key(&spec("oa", "gpt-4o-mini"))
        );
        let claude = p.rate_key(&spec("claude", "a")).unwrap();
        assert_eq!(claude, p.rate_key(&spec("claude", "b")).unwrap());
        assert_eq!(
            claude.as_str(),
            format!(
                "claude|{}|https://api.anthropic.com",
                short_hash("sk-ant-secret")
            )
        );
        assert!(
            p.rate_key(&spec("az", "deploy-1"))
                .unwrap()
                .as_str()
                .ends_with("|https://r.openai.azure.com|deploy-1")
        );
        assert_eq!(
            p.rate_key(&spec("ollama", "llama3")).unwrap().as_str(),
            "ollama|"
        );
        for key in ["oa", "claude", "az"] {
            let k = p.rate_key(&spec(key, "m")).unwrap();
            assert!(!k.as_str().contains("secret"), "{k}");
        }
        let err = p.rate_key(&spec("nope", "m")).unwrap_err();
        assert_eq!(
            err,
            "unknown provider entry `nope` (configured: az, claude, oa, ollama)"
        );
    }

    #[test]
    fn configuration_errors_name_the_key() {
        let cases = [
            (
                ProviderEntry::new(ProviderKind::Azure),
                "providers.x.base_url",
                "is required for kind `azure`",
            ),
            (
                ProviderEntry::new(ProviderKind::OpenAi).with_base_url("ftp://h"),
                "providers.x.base_url",
                "http",
            ),
            (
                ProviderEntry::new(ProviderKind::Gemini)
                    .with_base_url("https://h/v1beta?key=AIzaSECRET"),
                "providers.x.base_url",
                "must not hold a query",
            ),
            (
                ProviderEntry::new(ProviderKind::OpenAi).with_api_key_env(""),
                "providers.x.api_key_env",
                "empty",
            ),
            (
                ProviderEntry {
                    headers: [("bad header".to_owned(), "v".to_owned())].into(),
                    ..ProviderEntry::new(ProviderKind::OpenAi)
                },
                "providers.x.headers",
                "bad header",
            ),
            (
                ProviderEntry {
                    max_response_bytes: 0,
                    ..ProviderEntry::new(ProviderKind::OpenAi)
                },
                "providers.x.max_response_bytes",
                "at least 1",
            ),
        ];
        for (entry, key, fragment) in cases {
            let err = providers(&[("x", entry)], &[]).unwrap_err().to_string();
            assert!(err.contains(key) && err.contains(fragment), "{err}");
            assert!(!err.contains("AIzaSECRET"), "{err}");
        }
    }

    #[test]
    fn check_lists_missing_and_unusable_keys_and_plain_http() {
        let p = providers(
            &[
                ("a", ProviderEntry::new(ProviderKind::OpenAi)),
                ("b", ProviderEntry::new(ProviderKind::Groq)),
                (
                    "c",
                    ProviderEntry::new(ProviderKind::Mistral)
                        .with_base_url("http://example.invalid/v1"),
                ),
                ("d", ProviderEntry::new(ProviderKind::Local)),
                (
                    "e",
                    ProviderEntry::new(ProviderKind::Local).with_api_key_env("LOCAL_KEY"),
                ),
            ],
            &[
                ("GROQ_API_KEY", "bad\u{7}key"),
                ("MISTRAL_API_KEY", "m-key"),
                ("LOCAL_KEY", "  "),
            ],
        )
        .unwrap();
        let texts: Vec<String> = p.check().iter().map(ToString::to_string).collect();
        assert_eq!(
            texts,
            [
                "provider `a`: environment variable OPENAI_API_KEY is not set; calls through this entry will fail",
                "provider `b`: environment variable GROQ_API_KEY does not hold a usable key (it must be printable ASCII)",
                "provider `c`: sends its API key over plain http to another machine",
                "provider `e`: environment variable LOCAL_KEY is not set; calls through this entry will fail",
            ]
        );
    }

    #[test]
    fn secrets_do_not_show_in_debug_output() {
        let p = providers(
            &[(
                "a",
                ProviderEntry {
                    headers: [("X-Custom-Token".to_owned(), "tok-123456789".to_owned())].into(),
                    ..ProviderEntry::new(ProviderKind::OpenAi)
                },
            )],
            &[("OPENAI_API_KEY", "sk-very-secret-value")],
        )
        .unwrap();
        let debug = format!("{p:?} {:?}", p.entry("a"));
        assert!(!debug.contains("sk-very-secret-value"), "{debug}");
        assert!(!debug.contains("tok-123456789"), "{debug}");
    }
}
