//! What an experiment asks for: the task call, the evaluators, the number of
//! repetitions. These are plain data, stored as JSON by the store and
//! interpreted (templates, request bodies, reply parsing) by the providers.

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::ids::{DatasetId, EvaluatorId, ExperimentId};

/// One chat message of a prompt template. `content` may contain
/// `{{input.field}}`, `{{expected}}`, `{{metadata.field}}` and, for
/// evaluators, `{{output}}` placeholders.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Message {
    /// `system`, `user` or `assistant`.
    pub role: String,
    /// The template text.
    pub content: String,
}

/// One provider call as described by the user: which configured provider,
/// which model, which messages, which parameters.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CallSpec {
    /// Name of a `[providers.*]` entry of the server configuration.
    pub provider: String,
    /// Model name passed to the provider.
    pub model: String,
    /// The prompt template.
    pub messages: Vec<Message>,
    /// Extra request parameters (temperature, max_tokens, ...), passed through.
    #[serde(default)]
    pub params: Map<String, Value>,
    /// Per-call timeout in seconds; `None` uses the configured default.
    #[serde(default)]
    pub timeout_s: Option<f64>,
    /// Whether to stream the reply (task calls only; chunks reach event streams).
    #[serde(default)]
    pub stream: bool,
}

impl CallSpec {
    /// The per-call timeout: the spec's own, at most `max` (the
    /// `scheduler.max_call_timeout` that API validation also enforces), else
    /// `default`. Non-finite or non-positive values (rejected by API
    /// validation) fall back to `default`.
    pub fn timeout(&self, default: Duration, max: Duration) -> Duration {
        match self.timeout_s {
            Some(s) if s.is_finite() && s > 0.0 => {
                Duration::try_from_secs_f64(s).map_or(max, |d| d.min(max))
            }
            _ => default,
        }
    }

    /// The `max_tokens` parameter, when the user gave one (used to estimate a
    /// call's token cost for tokens-per-minute limits).
    pub fn max_tokens(&self) -> Option<u64> {
        self.params
            .get("max_tokens")
            .or_else(|| self.params.get("max_completion_tokens"))
            .and_then(Value::as_u64)
    }
}

/// An LLM judge attached to an experiment.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EvaluatorSpec {
    /// Row id of the evaluator.
    pub id: EvaluatorId,
    /// Name shown in results, unique within the experiment.
    pub name: String,
    /// The judge's call.
    pub call: CallSpec,
    /// Allowed labels. When empty, the reply is read as a numeric score.
    #[serde(default)]
    pub labels: Vec<String>,
}

/// Everything the scheduler needs to know about an experiment to run it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ExperimentPlan {
    /// The experiment.
    pub id: ExperimentId,
    /// Its dataset.
    pub dataset: DatasetId,
    /// How many runs per example (≥ 1).
    pub repetitions: u32,
    /// Per-experiment concurrency cap; `None` uses the configured default.
    pub max_concurrency: Option<u32>,
    /// The task call.
    pub task: CallSpec,
    /// The evaluators attached when the plan was loaded.
    pub evaluators: Vec<EvaluatorSpec>,
}

/// The data of one example, shared by every job that needs it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ExampleData {
    /// The input object the task template reads as `{{input.*}}`.
    pub input: Value,
    /// The expected answer, if any (`{{expected}}`).
    #[serde(default)]
    pub expected: Option<Value>,
    /// Free metadata (`{{metadata.*}}`).
    #[serde(default)]
    pub metadata: Value,
}

/// The kind of a configured provider entry: which wire protocol its adapter
/// speaks and which quota scope its rate limits have (DESIGN §6).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProviderKind {
    /// OpenAI's API (Chat Completions). Limits per model.
    #[serde(rename = "openai")]
    OpenAi,
    /// Azure OpenAI deployments (`api-key` header). Limits per deployment.
    Azure,
    /// Anthropic Messages API. Limits per account.
    Anthropic,
    /// Google Gemini `generateContent`. Limits per model.
    Gemini,
    /// Groq (OpenAI-compatible). Limits per model.
    Groq,
    /// xAI (OpenAI-compatible). Limits per model.
    Xai,
    /// Cerebras (OpenAI-compatible). Limits per model.
    Cerebras,
    /// Mistral (OpenAI-compatible). Limits per account.
    Mistral,
    /// DeepSeek (OpenAI-compatible). Limits per account.
    #[serde(rename = "deepseek")]
    DeepSeek,
    /// Together (OpenAI-compatible). Limits per account.
    Together,
    /// Fireworks (OpenAI-compatible). Limits per account.
    Fireworks,
    /// Any other OpenAI-compatible server. Limits per model.
    #[serde(rename = "openai_compatible")]
    OpenAiCompatible,
    /// A local server (Ollama, vLLM, llama.cpp; OpenAI-compatible). Unlimited by default.
    Local,
}

/// What a provider's rate limits are counted against.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum QuotaScope {
    /// One quota per (credential, base url, model).
    PerModel,
    /// One quota per (credential, base url, deployment).
    PerDeployment,
    /// One quota per credential.
    PerAccount,
    /// No quota to respect.
    Unlimited,
}

/// The wire protocol an adapter speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Protocol {
    /// OpenAI Chat Completions (`/chat/completions`).
    OpenAiChat,
    /// Anthropic Messages (`/v1/messages`).
    AnthropicMessages,
    /// Gemini `generateContent`.
    GeminiGenerate,
}

impl ProviderKind {
    /// Every kind, for documentation and default tables.
    pub const ALL: [ProviderKind; 13] = [
        ProviderKind::OpenAi,
        ProviderKind::Azure,
        ProviderKind::Anthropic,
        ProviderKind::Gemini,
        ProviderKind::Groq,
        ProviderKind::Xai,
        ProviderKind::Cerebras,
        ProviderKind::Mistral,
        ProviderKind::DeepSeek,
        ProviderKind::Together,
        ProviderKind::Fireworks,
        ProviderKind::OpenAiCompatible,
        ProviderKind::Local,
    ];

    /// The quota scope of this kind (DESIGN §6).
    pub fn quota_scope(self) -> QuotaScope {
        match self {
            ProviderKind::OpenAi
            | ProviderKind::Gemini
            | ProviderKind::Groq
            | ProviderKind::Xai
            | ProviderKind::Cerebras
            | ProviderKind::OpenAiCompatible => QuotaScope::PerModel,
            ProviderKind::Azure => QuotaScope::PerDeployment,
            ProviderKind::Anthropic
            | ProviderKind::Mistral
            | ProviderKind::DeepSeek
            | ProviderKind::Together
            | ProviderKind::Fireworks => QuotaScope::PerAccount,
            ProviderKind::Local => QuotaScope::Unlimited,
        }
    }

    /// The protocol the adapter speaks.
    pub fn protocol(self) -> Protocol {
        match self {
            ProviderKind::Anthropic => Protocol::AnthropicMessages,
            ProviderKind::Gemini => Protocol::GeminiGenerate,
            _ => Protocol::OpenAiChat,
        }
    }

    /// The configuration name (`openai`, `azure`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            ProviderKind::OpenAi => "openai",
            ProviderKind::Azure => "azure",
            ProviderKind::Anthropic => "anthropic",
            ProviderKind::Gemini => "gemini",
            ProviderKind::Groq => "groq",
            ProviderKind::Xai => "xai",
            ProviderKind::Cerebras => "cerebras",
            ProviderKind::Mistral => "mistral",
            ProviderKind::DeepSeek => "deepseek",
            ProviderKind::Together => "together",
            ProviderKind::Fireworks => "fireworks",
            ProviderKind::OpenAiCompatible => "openai_compatible",
            ProviderKind::Local => "local",
        }
    }
}

/// A shared, immutable evaluator spec.
pub type SharedEvaluator = Arc<EvaluatorSpec>;

/// The stored status of an experiment (DESIGN §4). A created experiment that
/// was not started is `Stopped`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ExperimentStatus {
    /// Claimed (or waiting to be claimed) by a replica and being worked on.
    Running,
    /// Stopped by a user, or created without starting.
    Stopped,
    /// Every run and annotation exists.
    Completed,
    /// Given up; see `last_error`. Can be resumed.
    Error,
}

impl ExperimentStatus {
    /// The stored and displayed name (`RUNNING`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            ExperimentStatus::Running => "RUNNING",
            ExperimentStatus::Stopped => "STOPPED",
            ExperimentStatus::Completed => "COMPLETED",
            ExperimentStatus::Error => "ERROR",
        }
    }
}

impl std::str::FromStr for ExperimentStatus {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_uppercase().as_str() {
            "RUNNING" => Ok(Self::Running),
            "STOPPED" => Ok(Self::Stopped),
            "COMPLETED" => Ok(Self::Completed),
            "ERROR" => Ok(Self::Error),
            _ => Err(format!(
                "unknown status `{s}` (expected RUNNING, STOPPED, COMPLETED or ERROR)"
            )),
        }
    }
}

impl std::fmt::Display for ExperimentStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(timeout: Option<f64>) -> CallSpec {
        CallSpec {
            provider: "p".into(),
            model: "m".into(),
            messages: vec![],
            params: Map::new(),
            timeout_s: timeout,
            stream: false,
        }
    }

    #[test]
    fn timeout_falls_back_on_missing_or_absurd_values_and_is_capped() {
        let d = Duration::from_secs(120);
        let max = Duration::from_secs(3600);
        assert_eq!(spec(None).timeout(d, max), d);
        assert_eq!(spec(Some(-1.0)).timeout(d, max), d);
        assert_eq!(spec(Some(f64::NAN)).timeout(d, max), d);
        assert_eq!(spec(Some(2.5)).timeout(d, max), Duration::from_millis(2500));
        assert_eq!(spec(Some(7200.0)).timeout(d, max), max);
        assert_eq!(spec(Some(1e300)).timeout(d, max), max);
    }

    #[test]
    fn provider_kinds_round_trip_by_their_config_names() {
        for kind in ProviderKind::ALL {
            let text = serde_json::to_string(&kind).unwrap();
            assert_eq!(text, format!("\"{}\"", kind.as_str()));
            assert_eq!(serde_json::from_str::<ProviderKind>(&text).unwrap(), kind);
        }
        assert_eq!(ProviderKind::Local.quota_scope(), QuotaScope::Unlimited);
        assert_eq!(
            ProviderKind::Anthropic.protocol(),
            Protocol::AnthropicMessages
        );
    }

    #[test]
    fn max_tokens_reads_either_spelling() {
        let mut s = spec(None);
        assert_eq!(s.max_tokens(), None);
        s.params.insert("max_completion_tokens".into(), 64.into());
        assert_eq!(s.max_tokens(), Some(64));
        s.params.insert("max_tokens".into(), 32.into());
        assert_eq!(s.max_tokens(), Some(32));
    }
}
