//! Configuration (DESIGN §8): every constant of the system, loaded with
//! figment from built-in defaults < `runnel.toml` < `RUNNEL_…` environment
//! variables (nested keys joined with `__`) < command-line flags. An invalid
//! value stops start-up with one message naming the key.
//!
//! Sections: `[server]`, `[database]` (the store), `[scheduler]` (the core),
//! `[advisor]`, `[budget]` (the rate budget shared by replicas), `[providers.NAME]` (one table per provider entry, holding both
//! the client settings of `runnel-providers` and the limits of
//! `runnel-advisor`), `[calls]` (the settings `runnel-providers` applies to
//! every entry), `[auth]`, `[otel]`, `[log]`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use runnel_advisor::{AdvisorConfig, BudgetConfig, ProviderLimits};
use runnel_providers::{ProviderEntry, Settings};
use runnel_store::StoreConfig;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Top-level sections a `RUNNEL_…` variable may address; others (for example
/// `RUNNEL_TEST_POSTGRES_URL`) are not configuration and are ignored.
const SECTIONS: &[&str] = &[
    "server",
    "database",
    "scheduler",
    "advisor",
    "budget",
    "providers",
    "calls",
    "auth",
    "otel",
    "log",
];

/// An invalid configuration: which key, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid configuration `{key}`: {message}")]
pub struct ConfigError {
    /// The offending key, dotted as in `runnel.toml` (`scheduler.lease`).
    pub key: String,
    /// What is wrong with it.
    pub message: String,
}

impl ConfigError {
    fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            message: message.into(),
        }
    }
}

/// `[server]`: the HTTP listener and this replica.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// Address of the HTTP API.
    pub bind: SocketAddr,
    /// Largest request body accepted, in bytes (413 above).
    pub body_limit_bytes: usize,
    /// Origins allowed by CORS; empty (the default) turns CORS off. `"*"`
    /// allows any origin.
    pub cors_origins: Vec<String>,
    /// Stable identity of this replica. Unset: on SQLite one is generated once
    /// and kept beside the database file; on PostgreSQL a random one per
    /// process.
    pub replica_id: Option<String>,
    /// How often learned rate limits are saved to the database.
    #[serde(with = "runnel_core::config::duration")]
    pub rate_state_interval: Duration,
    /// Minimum time between two `progress` events of one event stream.
    #[serde(with = "runnel_core::config::duration")]
    pub progress_interval: Duration,
    /// How often an event stream reads its experiment's status from the
    /// database while no event arrives (a stop or an end on another
    /// replica reaches it this way).
    #[serde(with = "runnel_core::config::duration")]
    pub events_status_poll: Duration,
    /// Events buffered per watched experiment; a stream further behind
    /// loses events and catches up from the database. At most 1048576.
    pub event_buffer: usize,
    /// Wait before listening again after the database's notification
    /// listener failed (PostgreSQL).
    #[serde(with = "runnel_core::config::duration")]
    pub listen_retry: Duration,
    /// Runs or log entries per page when a request gives no `limit` (a
    /// request may ask for up to `database.max_page`).
    pub default_page: usize,
    /// Examples of a dataset that an experiment's templates are checked
    /// against before it is created (at most `database.max_page`).
    pub template_sample: usize,
    /// Upper bounds of the provider-call latency histogram, in seconds,
    /// increasing. The default reaches the default `scheduler.max_call_timeout`
    /// (no call lasts longer), so the slowest calls are not all lumped into
    /// the last bucket.
    pub latency_buckets: Vec<f64>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            bind: SocketAddr::from(([127, 0, 0, 1], 8080)),
            body_limit_bytes: 32 * 1024 * 1024,
            cors_origins: Vec::new(),
            replica_id: None,
            rate_state_interval: Duration::from_secs(15),
            progress_interval: Duration::from_millis(250),
            events_status_poll: Duration::from_secs(1),
            event_buffer: 4096,
            listen_retry: Duration::from_secs(1),
            default_page: 100,
            template_sample: 200,
            latency_buckets: vec![
                0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
                300.0, 600.0, 1800.0, 3600.0,
            ],
        }
    }
}

/// `[auth]`: bearer API keys for `/v1`.
#[derive(Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// Accepted API keys. Empty: no authentication (loopback only, unless
    /// `allow_unauthenticated`).
    pub api_keys: Vec<String>,
    /// Allow binding a non-loopback address without API keys.
    pub allow_unauthenticated: bool,
}

impl std::fmt::Debug for AuthConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthConfig")
            .field("api_keys", &format!("<{} keys>", self.api_keys.len()))
            .field("allow_unauthenticated", &self.allow_unauthenticated)
            .finish()
    }
}

/// `[otel]`: OpenTelemetry export.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OtelConfig {
    /// OTLP/HTTP endpoint (e.g. `http://127.0.0.1:4318`); unset turns export off.
    pub endpoint: Option<String>,
    /// `service.name` of exported traces and metrics.
    pub service_name: String,
    /// How often metrics are pushed by OTLP.
    #[serde(with = "runnel_core::config::duration")]
    pub metrics_interval: Duration,
}

impl Default for OtelConfig {
    fn default() -> Self {
        Self {
            endpoint: None,
            service_name: "runnel".into(),
            metrics_interval: Duration::from_secs(15),
        }
    }
}

/// Log line format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Human,
    /// One JSON object per line.
    Json,
}

/// `[log]`: logging.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// Line format.
    pub format: LogFormat,
    /// Filter in `tracing` syntax (`info`, `runnel=debug,sqlx=warn`);
    /// `RUST_LOG` overrides it.
    pub filter: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            format: LogFormat::Human,
            filter: "info,sqlx=warn".into(),
        }
    }
}

/// The configuration file's shape, as loaded. `[providers.NAME]` tables are
/// kept raw and split into client settings and limits by [`RunnelConfig::load`].
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct Raw {
    server: ServerConfig,
    database: StoreConfig,
    scheduler: runnel_core::Config,
    advisor: AdvisorConfig,
    budget: BudgetConfig,
    providers: BTreeMap<String, Map<String, Value>>,
    calls: Settings,
    auth: AuthConfig,
    otel: OtelConfig,
    log: LogConfig,
}

/// One `[providers.NAME]` entry, split.
#[derive(Clone, Debug, PartialEq)]
pub struct ProviderSection {
    /// Client settings (runnel-providers).
    pub entry: ProviderEntry,
    /// Rate limits (runnel-advisor).
    pub limits: ProviderLimits,
}

/// The whole, validated configuration.
#[derive(Clone, Debug)]
pub struct RunnelConfig {
    /// `[server]`.
    pub server: ServerConfig,
    /// `[database]`.
    pub database: StoreConfig,
    /// `[scheduler]`.
    pub scheduler: runnel_core::Config,
    /// `[advisor]`, with the limits of every `[providers.NAME]` merged in.
    pub advisor: AdvisorConfig,
    /// `[budget]`: one rate budget per key across replicas.
    pub budget: BudgetConfig,
    /// `[providers.NAME]`.
    pub providers: BTreeMap<String, ProviderSection>,
    /// `[calls]`: settings of every provider entry (the timeouts in it are
    /// not read: [`RunnelConfig::provider_settings`] takes the scheduler's).
    pub calls: Settings,
    /// `[auth]`.
    pub auth: AuthConfig,
    /// `[otel]`.
    pub otel: OtelConfig,
    /// `[log]`.
    pub log: LogConfig,
}

/// Values given on the command line, applied last.
#[derive(Clone, Debug, Default)]
pub struct Overrides {
    /// `--bind`.
    pub bind: Option<SocketAddr>,
    /// `--database-url`.
    pub database_url: Option<String>,
    /// `--replica-id`.
    pub replica_id: Option<String>,
    /// `--log-format`.
    pub log_format: Option<LogFormat>,
}

impl RunnelConfig {
    /// Loads defaults < `file` (when it exists; an explicitly named file must
    /// exist) < `RUNNEL_…` environment < `overrides`, then validates.
    pub fn load(file: Option<&Path>, overrides: &Overrides) -> Result<Self, ConfigError> {
        let mut figment = Figment::from(Serialized::defaults(Raw::default()));
        match file {
            Some(path) => {
                if !path.exists() {
                    return Err(ConfigError::new(
                        "--config",
                        format!("the file {} does not exist", path.display()),
                    ));
                }
                figment = figment.merge(Toml::file(path));
            }
            None => {
                if Path::new("runnel.toml").exists() {
                    figment = figment.merge(Toml::file("runnel.toml"));
                }
            }
        }
        figment = figment.merge(Env::prefixed("RUNNEL_").split("__").filter(|key| {
            let key = key.as_str().to_ascii_lowercase();
            let section = key.split(['.', '_']).next().unwrap_or_default();
            SECTIONS.contains(&section)
        }));
        let mut cli = Map::new();
        let mut set = |section: &str, key: &str, value: Value| {
            let entry = cli
                .entry(section.to_owned())
                .or_insert_with(|| Value::Object(Map::new()));
            if let Value::Object(m) = entry {
                m.insert(key.to_owned(), value);
            }
        };
        if let Some(bind) = overrides.bind {
            set("server", "bind", Value::String(bind.to_string()));
        }
        if let Some(url) = &overrides.database_url {
            set("database", "url", Value::String(url.clone()));
        }
        if let Some(id) = &overrides.replica_id {
            set("server", "replica_id", Value::String(id.clone()));
        }
        if let Some(format) = overrides.log_format {
            let text = match format {
                LogFormat::Human => "human",
                LogFormat::Json => "json",
            };
            set("log", "format", Value::String(text.into()));
        }
        figment = figment.merge(Serialized::defaults(Value::Object(cli)));
        let raw: Raw = figment.extract().map_err(figment_error)?;
        Self::from_raw(raw)
    }

    /// Parses a TOML text on top of the defaults (no environment), for tests
    /// and `runnel run` files.
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        let raw: Raw = Figment::from(Serialized::defaults(Raw::default()))
            .merge(Toml::string(text))
            .extract()
            .map_err(figment_error)?;
        Self::from_raw(raw)
    }

    fn from_raw(raw: Raw) -> Result<Self, ConfigError> {
        if !raw.advisor.providers.is_empty() {
            return Err(ConfigError::new(
                "advisor.providers",
                "set provider limits in the [providers.NAME] tables (rpm, tpm, initial_rps, unlimited)",
            ));
        }
        let mut providers = BTreeMap::new();
        for (name, table) in raw.providers {
            providers.insert(name.clone(), split_provider(&name, table)?);
        }
        let mut advisor = raw.advisor;
        advisor.providers = providers
            .iter()
            .map(|(name, section)| (name.clone(), section.limits))
            .collect();
        let config = Self {
            server: raw.server,
            database: raw.database,
            scheduler: raw.scheduler,
            advisor,
            budget: raw.budget,
            providers,
            calls: raw.calls,
            auth: raw.auth,
            otel: raw.otel,
            log: raw.log,
        };
        config.validate()?;
        Ok(config)
    }

    /// Checks every section; the error names the key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.scheduler.validate().map_err(|e| match e {
            runnel_core::Error::Config { key, message } => {
                ConfigError::new(format!("scheduler.{key}"), message)
            }
            other => ConfigError::new("scheduler", other.to_string()),
        })?;
        self.advisor.validate().map_err(|e| match e {
            // Provider limits are written in the [providers.NAME] tables.
            runnel_advisor::AdvisorError::Config { key, message }
                if key.starts_with("providers.") =>
            {
                ConfigError::new(key, message)
            }
            runnel_advisor::AdvisorError::Config { key, message } => {
                ConfigError::new(format!("advisor.{key}"), message)
            }
            other => ConfigError::new("advisor", other.to_string()),
        })?;
        self.database.validate().map_err(|e| match e {
            runnel_store::StoreError::Config { key, message } => {
                ConfigError::new(format!("database.{key}"), message)
            }
            other => ConfigError::new("database", other.to_string()),
        })?;
        self.budget.validate().map_err(|e| match e {
            runnel_advisor::AdvisorError::Config { key, message } => ConfigError::new(key, message),
            other => ConfigError::new("budget", other.to_string()),
        })?;
        if self.server.body_limit_bytes < 1024 {
            return Err(ConfigError::new(
                "server.body_limit_bytes",
                "must be at least 1024",
            ));
        }
        if self.server.progress_interval.is_zero() {
            return Err(ConfigError::new(
                "server.progress_interval",
                "must be greater than zero",
            ));
        }
        self.provider_settings().validate().map_err(|e| match e {
            runnel_providers::Error::InvalidSetting { key, message } => {
                ConfigError::new(format!("calls.{key}"), message)
            }
            other => ConfigError::new("calls", other.to_string()),
        })?;
        let server = &self.server;
        let max_page = self.database.max_page;
        let buckets = &server.latency_buckets;
        // (key, whether its value is valid, what a valid one is)
        let checks = [
            (
                "server.events_status_poll",
                server.events_status_poll >= Duration::from_millis(10),
                "must be at least 10ms",
            ),
            (
                "server.event_buffer",
                (1..=1 << 20).contains(&server.event_buffer),
                "must be between 1 and 1048576",
            ),
            (
                "server.listen_retry",
                server.listen_retry >= Duration::from_millis(10),
                "must be at least 10ms",
            ),
            (
                "server.default_page",
                (1..=max_page).contains(&server.default_page),
                "must be between 1 and database.max_page",
            ),
            (
                "server.template_sample",
                (1..=max_page).contains(&server.template_sample),
                "must be between 1 and database.max_page",
            ),
            (
                "server.latency_buckets",
                (1..=100).contains(&buckets.len())
                    && buckets.iter().all(|b| b.is_finite() && *b > 0.0)
                    && buckets.windows(2).all(|w| w[0] < w[1]),
                "must be 1 to 100 increasing numbers of seconds above 0",
            ),
        ];
        if let Some((key, _, message)) = checks.into_iter().find(|(_, ok, _)| !ok) {
            return Err(ConfigError::new(key, message));
        }
        if self.server.rate_state_interval < Duration::from_secs(1) {
            return Err(ConfigError::new(
                "server.rate_state_interval",
                "must be at least 1s",
            ));
        }
        if let Some(id) = &self.server.replica_id
            && (id.trim().is_empty() || id.len() > 200)
        {
            return Err(ConfigError::new(
                "server.replica_id",
                "must be between 1 and 200 characters",
            ));
        }
        if self.auth.api_keys.iter().any(|k| k.trim().len() < 8) {
            return Err(ConfigError::new(
                "auth.api_keys",
                "every API key must have at least 8 characters",
            ));
        }
        // A key is compared with what follows `Bearer ` in the header, which
        // is visible ASCII with the surrounding blanks trimmed: a key with a
        // space, a trailing newline (from a secret file) or a non-ASCII
        // character could never match, and every request would get 401.
        if self
            .auth
            .api_keys
            .iter()
            .any(|k| !k.bytes().all(|b| b.is_ascii_graphic()))
        {
            return Err(ConfigError::new(
                "auth.api_keys",
                "an API key may hold only visible ASCII characters (no spaces, \
                 line breaks or other characters a header cannot carry)",
            ));
        }
        if let Some(endpoint) = &self.otel.endpoint
            && !(endpoint.starts_with("http://") || endpoint.starts_with("https://"))
        {
            return Err(ConfigError::new(
                "otel.endpoint",
                "must be an http:// or https:// URL",
            ));
        }
        if !self.server.bind.ip().is_loopback()
            && self.auth.api_keys.is_empty()
            && !self.auth.allow_unauthenticated
        {
            return Err(ConfigError::new(
                "server.bind",
                format!(
                    "{} is not a loopback address and no auth.api_keys are set; \
                     set API keys or auth.allow_unauthenticated = true",
                    self.server.bind
                ),
            ));
        }
        Ok(())
    }

    /// The provider clients' settings: `[calls]` with the scheduler's
    /// timeouts.
    pub fn provider_settings(&self) -> Settings {
        Settings {
            task_timeout: self.scheduler.task_timeout,
            eval_timeout: self.scheduler.eval_timeout,
            max_call_timeout: self.scheduler.max_call_timeout,
            long_wait: self.advisor.long_wait,
            ..self.calls.clone()
        }
    }

    /// The effective configuration as TOML, secrets masked (`runnel config`).
    pub fn to_masked_toml(&self) -> String {
        let mut raw = Raw {
            server: self.server.clone(),
            database: self.database.clone(),
            scheduler: self.scheduler.clone(),
            advisor: AdvisorConfig {
                providers: BTreeMap::new(),
                ..self.advisor.clone()
            },
            budget: self.budget.clone(),
            providers: BTreeMap::new(),
            calls: self.calls.clone(),
            auth: self.auth.clone(),
            otel: self.otel.clone(),
            log: self.log.clone(),
        };
        raw.database.url = runnel_store::redact_url(&raw.database.url);
        raw.auth.api_keys = raw
            .auth
            .api_keys
            .iter()
            .map(|_| "********".to_owned())
            .collect();
        for (name, section) in &self.providers {
            let mut table = Map::new();
            for part in [
                serde_json::to_value(&section.entry),
                serde_json::to_value(section.limits),
            ] {
                if let Ok(Value::Object(m)) = part {
                    table.extend(m.into_iter().filter(|(_, v)| !v.is_null()));
                }
            }
            raw.providers.insert(name.clone(), table);
        }
        to_toml(&raw)
    }

    /// Adds (or replaces) the provider entry `name` from a `[providers.NAME]`
    /// table, as `runnel demo` and `runnel run` do, and validates again.
    pub fn add_provider(
        &mut self,
        name: &str,
        table: Map<String, Value>,
    ) -> Result<(), ConfigError> {
        let section = split_provider(name, table)?;
        self.advisor
            .providers
            .insert(name.to_owned(), section.limits);
        self.providers.insert(name.to_owned(), section);
        self.validate()
    }

    /// The built-in defaults as TOML (the README's configuration reference
    /// is checked against this text).
    pub fn defaults_toml() -> String {
        to_toml(&Raw::default())
    }
}

fn to_toml(raw: &Raw) -> String {
    // figment's TOML support does not serialise; go through a JSON value and
    // print tables ourselves, in a stable order.
    let value = serde_json::to_value(raw).unwrap_or(Value::Null);
    let mut out = String::new();
    if let Value::Object(sections) = value {
        for (section, body) in sections {
            write_table(&mut out, &section, &body);
        }
    }
    out
}

fn write_table(out: &mut String, path: &str, body: &Value) {
    let Value::Object(map) = body else {
        return;
    };
    let (tables, scalars): (Vec<_>, Vec<_>) = map
        .iter()
        .filter(|(_, v)| !v.is_null())
        .partition(|(_, v)| v.is_object());
    out.push_str(&format!("[{path}]\n"));
    for (key, value) in scalars {
        out.push_str(&format!("{} = {}\n", toml_key(key), toml_value(value)));
    }
    out.push('\n');
    for (key, value) in tables {
        write_table(out, &format!("{path}.{}", toml_key(key)), value);
    }
}

fn toml_key(key: &str) -> String {
    if !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        key.to_owned()
    } else {
        serde_json::to_string(key).unwrap_or_default()
    }
}

fn toml_value(value: &Value) -> String {
    match value {
        Value::Array(items) => {
            let inner: Vec<String> = items.iter().map(toml_value).collect();
            format!("[{}]", inner.join(", "))
        }
        // JSON strings, numbers and booleans are valid TOML literals.
        other => other.to_string(),
    }
}

/// Splits one `[providers.NAME]` table into client settings and limits
/// (also used for the provider entries of a `runnel run` file).
pub fn split_provider(
    name: &str,
    table: Map<String, Value>,
) -> Result<ProviderSection, ConfigError> {
    if name.is_empty() || name.contains('|') || name.len() > 64 {
        return Err(ConfigError::new(
            format!("providers.{name}"),
            "a provider name must be 1 to 64 characters without `|`",
        ));
    }
    let mut entry = Map::new();
    let mut limits = Map::new();
    for (key, value) in table {
        let in_entry = ProviderEntry::KEYS.contains(&key.as_str());
        let in_limits = ProviderLimits::KEYS.contains(&key.as_str());
        if !in_entry && !in_limits {
            let mut known: Vec<&str> = ProviderEntry::KEYS
                .iter()
                .chain(ProviderLimits::KEYS)
                .copied()
                .collect();
            known.sort_unstable();
            known.dedup();
            return Err(ConfigError::new(
                format!("providers.{name}.{key}"),
                format!("unknown key (expected one of: {})", known.join(", ")),
            ));
        }
        if in_entry {
            entry.insert(key.clone(), value.clone());
        }
        if in_limits {
            limits.insert(key, value);
        }
    }
    if !entry.contains_key("kind") {
        return Err(ConfigError::new(
            format!("providers.{name}.kind"),
            "missing (openai, azure, anthropic, gemini, openai_compatible, local, …)",
        ));
    }
    let entry: ProviderEntry = from_table(name, entry)?;
    let limits: ProviderLimits = from_table(name, limits)?;
    Ok(ProviderSection { entry, limits })
}

/// Deserialises part of a `[providers.NAME]` table; an error names the key.
fn from_table<T: serde::de::DeserializeOwned>(
    name: &str,
    table: Map<String, Value>,
) -> Result<T, ConfigError> {
    serde_path_to_error::deserialize(Value::Object(table)).map_err(|e| {
        let path = e.path().to_string();
        let key = if path == "." {
            format!("providers.{name}")
        } else {
            format!("providers.{name}.{path}")
        };
        ConfigError::new(key, e.into_inner().to_string())
    })
}

fn figment_error(error: figment::Error) -> ConfigError {
    // figment names the path of the value it failed on.
    let key = error.path.join(".");
    let message = error.kind.to_string();
    let key = if key.is_empty() {
        match &error.kind {
            figment::error::Kind::UnknownField(field, _) => field.clone(),
            _ => "config".into(),
        }
    } else {
        key
    };
    ConfigError::new(key, message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_load_and_validate() {
        let config = RunnelConfig::from_toml("").unwrap();
        assert_eq!(config.server.bind.to_string(), "127.0.0.1:8080");
        assert_eq!(config.database.url, "sqlite://runnel.db");
        assert_eq!(config.scheduler.max_concurrency, 20);
        assert!(config.providers.is_empty());
    }

    #[test]
    fn provider_tables_are_split_between_client_and_limits() {
        let config = RunnelConfig::from_toml(
            r#"
            [providers.openai]
            kind = "openai"
            api_key_env = "MY_KEY"
            rpm = 600
            "#,
        )
        .unwrap();
        let section = &config.providers["openai"];
        assert_eq!(section.entry.api_key_env.as_deref(), Some("MY_KEY"));
        assert_eq!(section.limits.rpm, Some(600));
        assert_eq!(config.advisor.providers["openai"].rpm, Some(600));
    }

    #[test]
    fn the_quota_keys_reach_the_core_and_the_provider_adapters() {
        let config = RunnelConfig::from_toml(
            "[scheduler]\nrate_limit_give_up = \"45m\"\n[advisor]\nlong_wait = \"20m\"\nquota_probe_interval = \"2m\"\n",
        )
        .unwrap();
        assert_eq!(
            config.scheduler.rate_limit_give_up,
            Duration::from_secs(2700)
        );
        assert_eq!(
            config.advisor.quota_probe_interval,
            Duration::from_secs(120)
        );
        assert_eq!(
            config.provider_settings().long_wait,
            Duration::from_secs(1200)
        );
        let defaults = RunnelConfig::from_toml("").unwrap();
        assert_eq!(
            defaults.scheduler.rate_limit_give_up,
            Duration::from_secs(1800)
        );
        assert_eq!(
            defaults.provider_settings().long_wait,
            Duration::from_secs(600)
        );
    }

    #[test]
    fn errors_name_the_key() {
        let cases = [
            (
                "[scheduler]\nmax_concurrency = 0",
                "scheduler.max_concurrency",
            ),
            ("[scheduler]\nlease = \"soon\"", "scheduler.lease"),
            ("[scheduler]\nleese = \"3s\"", "leese"),
            (
                "[providers.x]\nkind = \"openai\"\nrpn = 3",
                "providers.x.rpn",
            ),
            ("[providers.x]\nrpm = 3", "providers.x.kind"),
            ("[providers.x]\nkind = \"nope\"", "providers.x"),
            ("[server]\nbind = \"0.0.0.0:80\"", "server.bind"),
            ("[auth]\napi_keys = [\"short\"]", "auth.api_keys"),
            ("[advisor.providers.x]\nrpm = 1", "advisor.providers"),
            (
                "[advisor]\nbreaker_threshold = 0",
                "advisor.breaker_threshold",
            ),
            (
                "[providers.x]\nkind = \"openai\"\nrpm = 60\nunlimited = true",
                "providers.x.unlimited",
            ),
            (
                "[scheduler]\nrate_limit_give_up = \"0s\"",
                "scheduler.rate_limit_give_up",
            ),
            ("[advisor]\nlong_wait = \"10ms\"", "advisor.long_wait"),
            (
                "[advisor]\nquota_probe_interval = 0",
                "advisor.quota_probe_interval",
            ),
            ("[database]\nbatch_size = 0", "database.batch_size"),
            ("[database]\nmax_page = 0", "database.max_page"),
            ("[database]\nexport_page = 0", "database.export_page"),
            ("[database]\nscan_chunk_max = 1", "database.scan_chunk_max"),
            (
                "[database]\ntransition_tries = 0",
                "database.transition_tries",
            ),
            (
                "[database]\nexamples_per_statement = 9000",
                "database.examples_per_statement",
            ),
            (
                "[database]\nsqlite_synchronous = \"sometimes\"",
                "database.sqlite_synchronous",
            ),
            ("[database]\nanalyze_after = -1", "database.analyze_after"),
            ("[calls]\nmax_error_chars = 5", "calls.max_error_chars"),
            ("[calls]\nerror_body_bytes = 10", "calls.error_body_bytes"),
            ("[calls]\nchars_per_token = 0", "calls.chars_per_token"),
            (
                "[calls]\ntokens_per_message = 100000",
                "calls.tokens_per_message",
            ),
            ("[calls]\ntask_timeout = \"5s\"", "task_timeout"),
            (
                "[scheduler]\nmax_call_timeout = \"1m\"",
                "scheduler.max_call_timeout",
            ),
            (
                "[scheduler]\nretry_after_spread = -0.5",
                "scheduler.retry_after_spread",
            ),
            (
                "[scheduler]\nfailures_logged = -1",
                "scheduler.failures_logged",
            ),
            (
                "[server]\nevents_status_poll = \"1ms\"",
                "server.events_status_poll",
            ),
            ("[server]\nevent_buffer = 0", "server.event_buffer"),
            ("[server]\nlisten_retry = 0", "server.listen_retry"),
            ("[server]\ndefault_page = 1001", "server.default_page"),
            ("[server]\ntemplate_sample = 0", "server.template_sample"),
            (
                "[server]\nlatency_buckets = [1.0, 0.5]",
                "server.latency_buckets",
            ),
            ("[server]\nlatency_buckets = []", "server.latency_buckets"),
            ("[database]\nurl = \"mysql://h/db\"", "database.url"),
        ];
        for (text, key) in cases {
            let err = RunnelConfig::from_toml(text).unwrap_err();
            assert!(err.key.contains(key), "{text:?}: {err}");
        }
    }

    /// Regression: `provider_settings` filled everything but the timeouts
    /// from `Settings::default()`, so a user's error-message length never
    /// reached the providers.
    #[test]
    fn call_settings_from_the_file_reach_the_providers() {
        let config = RunnelConfig::from_toml(
            "[calls]\nmax_error_chars = 80\nerror_body_bytes = 1024\nchars_per_token = 3\n\
             [scheduler]\ntask_timeout = \"200s\"\nmax_call_timeout = \"2h\"\n",
        )
        .unwrap();
        let settings = config.provider_settings();
        assert_eq!(settings.max_error_chars, 80);
        assert_eq!(settings.error_body_bytes, 1024);
        assert_eq!(settings.chars_per_token, 3);
        assert_eq!(settings.task_timeout, Duration::from_secs(200));
        assert_eq!(settings.max_call_timeout, Duration::from_secs(7200));
        // And they survive `runnel config`'s output.
        let again = RunnelConfig::from_toml(&config.to_masked_toml()).unwrap();
        assert_eq!(again.provider_settings(), settings);
    }

    /// Regression (found by configuration fuzzing in `cargo xtask chaos`):
    /// an integer duration near `i64::MAX` seconds was accepted, and
    /// `scheduler.shutdown_grace` then panicked on shutdown.
    #[test]
    fn integer_durations_beyond_the_text_range_are_refused_naming_the_key() {
        for key in [
            "scheduler.shutdown_grace",
            "scheduler.lease",
            "scheduler.breaker_give_up",
            "scheduler.store_write_give_up",
            "scheduler.rate_limit_give_up",
            "advisor.breaker_cooldown",
            "advisor.long_wait",
            "advisor.quota_probe_interval",
            "advisor.probe_timeout",
            "server.rate_state_interval",
            "server.events_status_poll",
            "server.listen_retry",
            "scheduler.max_call_timeout",
            "budget.sync_interval",
            "budget.lease",
            "otel.metrics_interval",
        ] {
            let (section, name) = key.split_once('.').unwrap();
            let text = format!("[{section}]\n{name} = {}\n", i64::MAX);
            let err = RunnelConfig::from_toml(&text).unwrap_err();
            assert_eq!(err.key, key, "{err}");
        }
        let err = RunnelConfig::from_toml(&format!(
            "[providers.p]\nkind = \"openai\"\nconnect_timeout = {}\n",
            i64::MAX
        ))
        .unwrap_err();
        assert_eq!(err.key, "providers.p.connect_timeout", "{err}");
        // The largest accepted value still loads.
        RunnelConfig::from_toml("[scheduler]\nbreaker_give_up = 1000000000000\n").unwrap();
    }

    /// Regression: a key with a trailing newline or a space passed the length
    /// check but could never match the trimmed, visible-ASCII header value.
    #[test]
    fn api_keys_that_could_never_match_are_refused() {
        for key in [
            "secret-key-123\\n",
            " secret-key-123",
            "secret key 123",
            "sécret-key-123",
        ] {
            let text = format!("[auth]\napi_keys = [\"{key}\"]\n");
            let err = RunnelConfig::from_toml(&text).unwrap_err();
            assert_eq!(err.key, "auth.api_keys", "{key:?}: {err}");
        }
        RunnelConfig::from_toml("[auth]\napi_keys = [\"s3cret-key_123.~!\"]\n").unwrap();
    }

    #[test]
    fn non_loopback_bind_is_allowed_with_keys_or_explicit_opt_out() {
        RunnelConfig::from_toml(
            "[server]\nbind = \"0.0.0.0:80\"\n[auth]\napi_keys = [\"0123456789\"]",
        )
        .unwrap();
        RunnelConfig::from_toml(
            "[server]\nbind = \"0.0.0.0:80\"\n[auth]\nallow_unauthenticated = true",
        )
        .unwrap();
    }

    #[test]
    fn masked_toml_hides_secrets_and_reloads() {
        let config = RunnelConfig::from_toml(
            r#"
            [database]
            url = "postgres://u:hunter22@db/x"
            [auth]
            api_keys = ["super-secret-key"]
            [providers.a]
            kind = "anthropic"
            rpm = 50
            "#,
        )
        .unwrap();
        let text = config.to_masked_toml();
        assert!(!text.contains("hunter22"), "{text}");
        assert!(!text.contains("super-secret-key"), "{text}");
        assert!(text.contains("[providers.a]"), "{text}");
        // The defaults text is itself a valid configuration.
        RunnelConfig::from_toml(&RunnelConfig::defaults_toml()).unwrap();
    }

    #[test]
    #[allow(clippy::result_large_err)] // figment::Jail's closure type is fixed
    fn environment_overrides_the_file_and_flags_override_both() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "runnel.toml",
                "[scheduler]\nmax_concurrency = 7\n[server]\nbind = \"127.0.0.1:9000\"",
            )?;
            jail.set_env("RUNNEL_SCHEDULER__MAX_CONCURRENCY", "9");
            jail.set_env("RUNNEL_TEST_POSTGRES_URL", "postgres://ignored");
            let config = RunnelConfig::load(None, &Overrides::default()).unwrap();
            assert_eq!(config.scheduler.max_concurrency, 9);
            assert_eq!(config.server.bind.port(), 9000);
            let overrides = Overrides {
                bind: Some("127.0.0.1:9100".parse().unwrap()),
                ..Overrides::default()
            };
            let config = RunnelConfig::load(None, &overrides).unwrap();
            assert_eq!(config.server.bind.port(), 9100);
            jail.set_env("RUNNEL_SCHEDULER__LEASE", "forever");
            let err = RunnelConfig::load(None, &Overrides::default()).unwrap_err();
            assert_eq!(err.key, "scheduler.lease", "{err}");
            Ok(())
        });
    }
}
