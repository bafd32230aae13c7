//! Checks requests before anything is stored, naming the offending field:
//! unknown provider entries, unknown datasets, `repetitions < 1`, templates
//! referring to a field no example has, malformed placeholders, bad labels.

use std::collections::HashSet;

use runnel_core::{CallSpec, DatasetId, ExampleData, ExperimentId, Message};
use runnel_providers::{template, verdict};
use runnel_store::{NewEvaluator, NewExample, NewExperiment};
use serde_json::Value;

use super::error::ApiError;
use super::types::{CreateExperiment, EvaluatorIn, ExampleIn, MessageIn};
use crate::state::AppState;

/// Longest accepted name. Not a setting: it is part of the API's contract
/// (API.md), which a client relies on across servers.
const NAME_MAX: usize = 200;

/// Parses an id from a path or body field.
pub fn experiment_id(text: &str) -> Result<ExperimentId, ApiError> {
    text.parse().map_err(|_| ApiError::NotFound {
        what: "experiment",
        id: text.chars().take(64).collect(),
    })
}

/// Parses a dataset id from a path.
pub fn dataset_id(text: &str) -> Result<DatasetId, ApiError> {
    text.parse().map_err(|_| ApiError::NotFound {
        what: "dataset",
        id: text.chars().take(64).collect(),
    })
}

/// Checks a name.
pub fn name(field: &str, text: &str) -> Result<String, ApiError> {
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return Err(ApiError::invalid(field, "must not be empty"));
    }
    if trimmed.chars().count() > NAME_MAX {
        return Err(ApiError::invalid(
            field,
            format!("must be at most {NAME_MAX} characters"),
        ));
    }
    if trimmed.chars().any(char::is_control) {
        return Err(ApiError::invalid(
            field,
            "must not contain control characters",
        ));
    }
    Ok(trimmed.to_owned())
}

/// Checks examples: `input` must be an object, `metadata` an object or null.
pub fn examples(items: Vec<ExampleIn>, field: &str) -> Result<Vec<NewExample>, ApiError> {
    items
        .into_iter()
        .enumerate()
        .map(|(i, e)| example(e, &format!("{field}[{i}]")))
        .collect()
}

/// Checks one example.
pub fn example(e: ExampleIn, field: &str) -> Result<NewExample, ApiError> {
    if !e.input.is_object() {
        return Err(ApiError::invalid(
            format!("{field}.input"),
            "must be a JSON object",
        ));
    }
    let metadata = match e.metadata {
        None | Some(Value::Null) => None,
        Some(m @ Value::Object(_)) => Some(m),
        Some(_) => {
            return Err(ApiError::invalid(
                format!("{field}.metadata"),
                "must be a JSON object",
            ));
        }
    };
    Ok(NewExample {
        input: e.input,
        expected: e.expected,
        metadata,
    })
}

fn messages(items: &[MessageIn]) -> Vec<Message> {
    items
        .iter()
        .map(|m| Message {
            role: m.role.clone(),
            content: m.content.clone(),
        })
        .collect()
}

/// A call's `timeout_s`: above 0 and at most `scheduler.max_call_timeout`,
/// the limit the engine and the providers also cut it to.
fn timeout(state: &AppState, field: &str, value: Option<f64>) -> Result<Option<f64>, ApiError> {
    let most = state.config.scheduler.max_call_timeout.as_secs_f64();
    match value {
        Some(t) if !(t.is_finite() && t > 0.0 && t <= most) => Err(ApiError::invalid(
            field,
            format!("must be a number of seconds above 0 and at most {most}"),
        )),
        other => Ok(other),
    }
}

fn provider(state: &AppState, field: &str, name: &str) -> Result<(), ApiError> {
    if state.config.providers.contains_key(name) {
        return Ok(());
    }
    let known: Vec<&str> = state.config.providers.keys().map(String::as_str).collect();
    Err(ApiError::invalid(
        field,
        if known.is_empty() {
            format!("unknown provider `{name}`: the server has no [providers.*] entries configured")
        } else {
            format!(
                "unknown provider `{name}` (configured: {})",
                known.join(", ")
            )
        },
    ))
}

fn templates(
    field: &str,
    messages: &[Message],
    evaluator: bool,
    sample: &[ExampleData],
) -> Result<(), ApiError> {
    if messages.is_empty() {
        return Err(ApiError::invalid(field, "needs at least one message"));
    }
    if let Some(problem) = template::validate(messages, evaluator, sample)
        .into_iter()
        .next()
    {
        let at = match problem.message {
            Some(i) => format!("{field}[{i}]"),
            None => field.to_owned(),
        };
        return Err(ApiError::invalid(at, problem.to_string()));
    }
    Ok(())
}

/// Samples examples of a dataset for template checks.
pub async fn sample(state: &AppState, dataset: DatasetId) -> Result<Vec<ExampleData>, ApiError> {
    Ok(state
        .db
        .examples_page(dataset, None, state.config.server.template_sample)
        .await?
        .into_iter()
        .map(|(_, data)| data)
        .collect())
}

/// Checks a model name: not empty, no control characters (a model name
/// becomes part of a rate-limit key, which the database stores as text: a NUL
/// there made saving the learned rates fail on PostgreSQL).
fn model(field: &str, text: &str) -> Result<(), ApiError> {
    if text.trim().is_empty() {
        return Err(ApiError::invalid(field, "must not be empty"));
    }
    if text.chars().any(char::is_control) {
        return Err(ApiError::invalid(
            field,
            "must not contain control characters",
        ));
    }
    Ok(())
}

/// Checks one evaluator.
pub fn evaluator(
    state: &AppState,
    e: EvaluatorIn,
    field: &str,
    sample: &[ExampleData],
) -> Result<NewEvaluator, ApiError> {
    let name = name(&format!("{field}.name"), &e.name)?;
    provider(state, &format!("{field}.provider"), &e.provider)?;
    model(&format!("{field}.model"), &e.model)?;
    let msgs = messages(&e.messages);
    templates(&format!("{field}.messages"), &msgs, true, sample)?;
    let labels = e.labels.unwrap_or_default();
    verdict::validate_labels(&labels)
        .map_err(|m| ApiError::invalid(format!("{field}.labels"), m))?;
    Ok(NewEvaluator {
        name,
        call: CallSpec {
            provider: e.provider,
            model: e.model,
            messages: msgs,
            params: e.params.unwrap_or_default(),
            timeout_s: timeout(state, &format!("{field}.timeout_s"), e.timeout_s)?,
            stream: false,
        },
        labels,
    })
}

/// Checks an experiment creation; returns what to store and whether to start.
pub async fn experiment(
    state: &AppState,
    req: CreateExperiment,
) -> Result<(NewExperiment, bool), ApiError> {
    let dataset: DatasetId = req
        .dataset_id
        .parse()
        .map_err(|_| ApiError::invalid("dataset_id", "is not a valid dataset id"))?;
    match state.db.dataset(dataset).await {
        Ok(_) => {}
        Err(runnel_store::StoreError::DatasetNotFound(_)) => {
            return Err(ApiError::invalid(
                "dataset_id",
                format!("no dataset with id {dataset}"),
            ));
        }
        Err(e) => return Err(e.into()),
    }
    let sample = sample(state, dataset).await?;
    experiment_with_sample(state, dataset, req, &sample)
}

/// The checks of [`experiment`] that need no database: everything but the
/// dataset's existence, with templates checked against `sample` (examples of
/// the dataset). `req.dataset_id` is not read; `dataset` is used instead, so a
/// caller (`runnel run`) can check an experiment before its dataset is stored.
pub fn experiment_with_sample(
    state: &AppState,
    dataset: DatasetId,
    req: CreateExperiment,
    sample: &[ExampleData],
) -> Result<(NewExperiment, bool), ApiError> {
    let name = name("name", &req.name)?;
    let repetitions = match req.repetitions {
        None => 1,
        Some(r) if (1..=10_000).contains(&r) => r as u32,
        Some(_) => {
            return Err(ApiError::invalid(
                "repetitions",
                "must be at least 1 (and at most 10000)",
            ));
        }
    };
    let max_concurrency = match req.max_concurrency {
        None => None,
        Some(c) if (1..=100_000).contains(&c) => Some(c as u32),
        Some(_) => {
            return Err(ApiError::invalid(
                "max_concurrency",
                "must be at least 1 (and at most 100000)",
            ));
        }
    };
    provider(state, "task.provider", &req.task.provider)?;
    model("task.model", &req.task.model)?;
    let task_messages = messages(&req.task.messages);
    templates("task.messages", &task_messages, false, sample)?;
    let mut names = HashSet::new();
    let mut evaluators = Vec::new();
    for (i, e) in req.evaluators.unwrap_or_default().into_iter().enumerate() {
        let field = format!("evaluators[{i}]");
        let checked = evaluator(state, e, &field, sample)?;
        if !names.insert(checked.name.clone()) {
            return Err(ApiError::invalid(
                format!("{field}.name"),
                format!("`{}` is used by another evaluator", checked.name),
            ));
        }
        evaluators.push(checked);
    }
    let task = CallSpec {
        provider: req.task.provider,
        model: req.task.model,
        messages: task_messages,
        params: req.task.params.unwrap_or_default(),
        timeout_s: timeout(state, "task.timeout_s", req.task.timeout_s)?,
        stream: req.task.stream.unwrap_or(false),
    };
    Ok((
        NewExperiment {
            dataset_id: dataset,
            name,
            repetitions,
            max_concurrency,
            task,
            evaluators,
        },
        req.start.unwrap_or(true),
    ))
}
