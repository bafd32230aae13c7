//! Configuration of provider entries (`[providers.NAME]` in `runnel.toml`)
//! and the settings shared by all of them, with their documented defaults.

use std::collections::BTreeMap;
use std::time::Duration;

use runnel_core::ProviderKind;
use runnel_core::config::duration;
use serde::{Deserialize, Serialize};

/// One configured provider entry: where it is, how to authenticate, and how
/// to talk to it. Experiments name an entry by its key in the server's
/// `[providers.*]` table.
///
/// ```
/// use runnel_providers::ProviderEntry;
/// let entry: ProviderEntry = serde_json::from_str(r#"{"kind": "openai"}"#).unwrap();
/// assert_eq!(entry.base_url(), Some("https://api.openai.com/v1"));
/// assert_eq!(entry.api_key_env(), Some("OPENAI_API_KEY"));
/// ```
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderEntry {
    /// Which service this is; decides the wire protocol and the quota scope.
    pub kind: ProviderKind,
    /// Base URL of the API. Default: the service's public endpoint (see
    /// [`default_base_url`]); required for `azure` (the resource URL,
    /// `https://NAME.openai.azure.com`) and `openai_compatible`.
    #[serde(default)]
    pub base_url: Option<String>,
    /// Name of the environment variable holding the API key. Default: the
    /// service's usual variable (see [`default_api_key_env`]); none for
    /// `local` and `openai_compatible`, which then send no key.
    #[serde(default)]
    pub api_key_env: Option<String>,
    /// Protocol version: Azure's `api-version` query parameter (default
    /// `2024-10-21`) or Anthropic's `anthropic-version` header (default
    /// `2023-06-01`). Ignored by other kinds.
    #[serde(default)]
    pub api_version: Option<String>,
    /// Extra static headers sent with every request of this entry.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// How long connecting (TCP and TLS) may take. Default 10 s.
    #[serde(default = "default_connect_timeout", with = "duration")]
    pub connect_timeout: Duration,
    /// Largest response body read, in bytes (streamed replies included);
    /// a larger reply is a permanent failure. Default 4 MiB.
    #[serde(default = "default_max_response_bytes")]
    pub max_response_bytes: u64,
    /// Stream every call through this entry, even when the call spec does not
    /// ask for it. Default false.
    #[serde(default)]
    pub stream: bool,
    /// `max_tokens` sent when the call spec gives none. Default 4096 for
    /// `anthropic` (whose API requires it), none for the others. Also used to
    /// estimate a call's token cost.
    #[serde(default)]
    pub default_max_tokens: Option<u64>,
    /// For OpenAI-compatible streaming: ask for token usage in the final
    /// chunk (`stream_options.include_usage`). Default true, except for
    /// `mistral` (which reports usage without being asked).
    #[serde(default)]
    pub stream_usage: Option<bool>,
}

impl ProviderEntry {
    /// The configuration keys of an entry. A server that keeps other keys
    /// in the same `[providers.NAME]` table (the advisor's limits) can split
    /// the table with this list and deserialize each part with its own
    /// `deny_unknown_fields` type: `#[serde(flatten)]` would silently
    /// accept misspelt keys.
    pub const KEYS: &'static [&'static str] = &[
        "kind",
        "base_url",
        "api_key_env",
        "api_version",
        "headers",
        "connect_timeout",
        "max_response_bytes",
        "stream",
        "default_max_tokens",
        "stream_usage",
    ];

    /// An entry of `kind` with every other field at its default.
    pub fn new(kind: ProviderKind) -> Self {
        Self {
            kind,
            base_url: None,
            api_key_env: None,
            api_version: None,
            headers: BTreeMap::new(),
            connect_timeout: default_connect_timeout(),
            max_response_bytes: default_max_response_bytes(),
            stream: false,
            default_max_tokens: None,
            stream_usage: None,
        }
    }

    /// Sets the base URL (builder style).
    pub fn with_base_url(mut self, url: impl Into<String>) -> Self {
        self.base_url = Some(url.into());
        self
    }

    /// Sets the name of the environment variable holding the key (builder style).
    pub fn with_api_key_env(mut self, name: impl Into<String>) -> Self {
        self.api_key_env = Some(name.into());
        self
    }

    /// The base URL in effect: the configured one, else the kind's default.
    pub fn base_url(&self) -> Option<&str> {
        self.base_url
            .as_deref()
            .or_else(|| default_base_url(self.kind))
    }

    /// The key variable in effect: the configured one, else the kind's default.
    pub fn api_key_env(&self) -> Option<&str> {
        self.api_key_env
            .as_deref()
            .or_else(|| default_api_key_env(self.kind))
    }

    /// The protocol version in effect (Azure and Anthropic only).
    pub fn api_version(&self) -> Option<&str> {
        self.api_version.as_deref().or(match self.kind {
            ProviderKind::Azure => Some("2024-10-21"),
            ProviderKind::Anthropic => Some("2023-06-01"),
            _ => None,
        })
    }

    /// The default `max_tokens` in effect.
    pub fn default_max_tokens(&self) -> Option<u64> {
        self.default_max_tokens.or(match self.kind {
            ProviderKind::Anthropic => Some(4096),
            _ => None,
        })
    }

    /// Whether OpenAI-style streams ask for usage.
    pub fn stream_usage(&self) -> bool {
        self.stream_usage
            .unwrap_or(self.kind != ProviderKind::Mistral)
    }
}

/// Header names whose values are credentials (hidden in `Debug` output and
/// removed from error texts).
pub(crate) fn is_secret_header(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    ["authorization", "key", "token", "secret", "cookie"]
        .iter()
        .any(|w| name.contains(w))
}

impl std::fmt::Debug for ProviderEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Static headers may hold credentials: show only their names then.
        let headers: BTreeMap<&str, &str> = self
            .headers
            .iter()
            .map(|(k, v)| {
                let shown = if is_secret_header(k) {
                    "[REDACTED]"
                } else {
                    v.as_str()
                };
                (k.as_str(), shown)
            })
            .collect();
        f.debug_struct("ProviderEntry")
            .field("kind", &self.kind)
            .field("base_url", &self.base_url)
            .field("api_key_env", &self.api_key_env)
            .field("api_version", &self.api_version)
            .field("headers", &headers)
            .field("connect_timeout", &self.connect_timeout)
            .field("max_response_bytes", &self.max_response_bytes)
            .field("stream", &self.stream)
            .field("default_max_tokens", &self.default_max_tokens)
            .field("stream_usage", &self.stream_usage)
            .finish()
    }
}

fn default_connect_timeout() -> Duration {
    Duration::from_secs(10)
}

fn default_max_response_bytes() -> u64 {
    4 * 1024 * 1024
}

/// The public endpoint of each kind; `None` where there is none to guess
/// (`azure`, `openai_compatible`). `local` defaults to Ollama's port.
pub fn default_base_url(kind: ProviderKind) -> Option<&'static str> {
    Some(match kind {
        ProviderKind::OpenAi => "https://api.openai.com/v1",
        ProviderKind::Anthropic => "https://api.anthropic.com",
        ProviderKind::Gemini => "https://generativelanguage.googleapis.com/v1beta",
        ProviderKind::Groq => "https://api.groq.com/openai/v1",
        ProviderKind::Xai => "https://api.x.ai/v1",
        ProviderKind::Cerebras => "https://api.cerebras.ai/v1",
        ProviderKind::Mistral => "https://api.mistral.ai/v1",
        ProviderKind::DeepSeek => "https://api.deepseek.com/v1",
        ProviderKind::Together => "https://api.together.xyz/v1",
        ProviderKind::Fireworks => "https://api.fireworks.ai/inference/v1",
        ProviderKind::Local => "http://127.0.0.1:11434/v1",
        ProviderKind::Azure | ProviderKind::OpenAiCompatible => return None,
    })
}

/// The environment variable each kind reads its key from by default; `None`
/// for kinds that usually need no key (`local`, `openai_compatible`).
pub fn default_api_key_env(kind: ProviderKind) -> Option<&'static str> {
    Some(match kind {
        ProviderKind::OpenAi => "OPENAI_API_KEY",
        ProviderKind::Azure => "AZURE_OPENAI_API_KEY",
        ProviderKind::Anthropic => "ANTHROPIC_API_KEY",
        ProviderKind::Gemini => "GEMINI_API_KEY",
        ProviderKind::Groq => "GROQ_API_KEY",
        ProviderKind::Xai => "XAI_API_KEY",
        ProviderKind::Cerebras => "CEREBRAS_API_KEY",
        ProviderKind::Mistral => "MISTRAL_API_KEY",
        ProviderKind::DeepSeek => "DEEPSEEK_API_KEY",
        ProviderKind::Together => "TOGETHER_API_KEY",
        ProviderKind::Fireworks => "FIREWORKS_API_KEY",
        ProviderKind::OpenAiCompatible | ProviderKind::Local => return None,
    })
}

/// Settings shared by every entry of a [`crate::Providers`] registry. The
/// server reads them from its `[calls]` section, except the timeouts, which
/// it takes from `[scheduler]` (they are not read from the section, so one
/// value has one key).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// Timeout of a task call whose spec sets none. Default 120 s (the
    /// server passes `scheduler.task_timeout`).
    #[serde(skip)]
    pub task_timeout: Duration,
    /// Timeout of an evaluator call whose spec sets none. Default 60 s (the
    /// server passes `scheduler.eval_timeout`).
    #[serde(skip)]
    pub eval_timeout: Duration,
    /// Longest timeout a call spec may set; longer ones are cut to it.
    /// Default 1 h (the server passes `scheduler.max_call_timeout`).
    #[serde(skip)]
    pub max_call_timeout: Duration,
    /// Longest error message an outcome carries, in characters; longer
    /// provider messages are cut with `…`. At least 20. Default 500.
    pub max_error_chars: usize,
    /// How much of an error reply's body is read to find its message, in
    /// bytes (never more than the entry's `max_response_bytes`). At least
    /// 256. Default 65536.
    pub error_body_bytes: u64,
    /// Characters per token when a call's prompt tokens are estimated before
    /// it is sent (for tokens-per-minute limits); 4 fits English text on the
    /// common tokenizers, text in other scripts has fewer. Default 4.
    pub chars_per_token: u64,
    /// Tokens a chat message costs in that estimate beyond its text (role,
    /// separators). Default 4.
    pub tokens_per_message: u64,
    /// A 429 whose `retry-after` is longer than this ends as
    /// `QuotaExhausted`, not `RateLimited`. Default 10 min (the server
    /// passes `advisor.long_wait`, which documents the choice).
    #[serde(skip)]
    pub long_wait: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            task_timeout: Duration::from_secs(120),
            eval_timeout: Duration::from_secs(60),
            max_call_timeout: Duration::from_secs(3600),
            max_error_chars: 500,
            error_body_bytes: 64 * 1024,
            chars_per_token: 4,
            tokens_per_message: 4,
            long_wait: Duration::from_secs(600),
        }
    }
}

impl Settings {
    /// Checks every value; the error names the key.
    pub fn validate(&self) -> Result<(), crate::Error> {
        let bad = |key: &'static str, message: &str| {
            Err(crate::Error::InvalidSetting {
                key,
                message: message.to_owned(),
            })
        };
        if self.task_timeout.is_zero() {
            return bad("task_timeout", "must be greater than zero");
        }
        if self.eval_timeout.is_zero() {
            return bad("eval_timeout", "must be greater than zero");
        }
        if self.max_call_timeout.is_zero() {
            return bad("max_call_timeout", "must be greater than zero");
        }
        if self.long_wait.is_zero() {
            return bad("long_wait", "must be greater than zero");
        }
        if !(20..=1_000_000).contains(&self.max_error_chars) {
            return bad("max_error_chars", "must be between 20 and 1000000");
        }
        if !(256..=16 * 1024 * 1024).contains(&self.error_body_bytes) {
            return bad("error_body_bytes", "must be between 256 and 16 MiB");
        }
        if !(1..=100).contains(&self.chars_per_token) {
            return bad("chars_per_token", "must be between 1 and 100");
        }
        if self.tokens_per_message > 10_000 {
            return bad("tokens_per_message", "must be at most 10000");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_take_kind_defaults_and_reject_unknown_keys() {
        let e: ProviderEntry =
            serde_json::from_str(r#"{"kind": "anthropic", "connect_timeout": "2s"}"#).unwrap();
        assert_eq!(e.connect_timeout, Duration::from_secs(2));
        assert_eq!(e.max_response_bytes, 4 * 1024 * 1024);
        assert_eq!(e.api_version(), Some("2023-06-01"));
        assert_eq!(e.default_max_tokens(), Some(4096));
        assert_eq!(e.base_url(), Some("https://api.anthropic.com"));
        let err = serde_json::from_str::<ProviderEntry>(r#"{"kind": "openai", "apikey": "x"}"#)
            .unwrap_err();
        assert!(err.to_string().contains("apikey"), "{err}");
        let err = serde_json::from_str::<ProviderEntry>(r#"{"kind": "nope"}"#).unwrap_err();
        assert!(err.to_string().contains("nope"), "{err}");
    }

    #[test]
    fn every_kind_has_a_documented_default_or_requires_a_url() {
        for kind in ProviderKind::ALL {
            let e = ProviderEntry::new(kind);
            let needs_url = matches!(kind, ProviderKind::Azure | ProviderKind::OpenAiCompatible);
            assert_eq!(e.base_url().is_none(), needs_url, "{kind:?}");
        }
        assert!(!ProviderEntry::new(ProviderKind::Mistral).stream_usage());
        assert!(ProviderEntry::new(ProviderKind::OpenAi).stream_usage());
    }

    #[test]
    fn the_key_list_matches_the_fields() {
        let value = serde_json::to_value(ProviderEntry::new(ProviderKind::OpenAi)).unwrap();
        let mut fields: Vec<&str> = value
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        let mut keys = ProviderEntry::KEYS.to_vec();
        fields.sort_unstable();
        keys.sort_unstable();
        assert_eq!(fields, keys);
    }

    #[test]
    fn settings_leave_timeouts_to_the_scheduler_and_validate_naming_the_key() {
        let s: Settings = serde_json::from_str(r#"{"max_error_chars": 80}"#).unwrap();
        assert_eq!(s.max_error_chars, 80);
        assert_eq!(s.task_timeout, Duration::from_secs(120));
        s.validate().unwrap();
        assert!(serde_json::from_str::<Settings>(r#"{"task_timeout": "5s"}"#).is_err());
        assert!(serde_json::from_str::<Settings>(r#"{"max_error_char": 1}"#).is_err());
        for (settings, key) in [
            (
                Settings {
                    max_error_chars: 3,
                    ..Settings::default()
                },
                "max_error_chars",
            ),
            (
                Settings {
                    chars_per_token: 0,
                    ..Settings::default()
                },
                "chars_per_token",
            ),
            (
                Settings {
                    error_body_bytes: 0,
                    ..Settings::default()
                },
                "error_body_bytes",
            ),
        ] {
            match settings.validate() {
                Err(crate::Error::InvalidSetting { key: k, .. }) => assert_eq!(k, key),
                other => panic!("{key}: {other:?}"),
            }
        }
    }
}
