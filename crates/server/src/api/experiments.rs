//! `/v1/experiments`: create, list, get, stop, resume, attach an evaluator,
//! delete.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use runnel_core::ExperimentStatus;
use runnel_store::ExperimentFilter;

use super::body::{JsonBody, PathId, Query};
use super::error::{ApiError, Problem};
use super::types::{
    CreateExperiment, CreatedExperiment, EvaluatorIn, EvaluatorOut, ExperimentOut,
    ExperimentsQuery, StatusOut,
};
use super::validate;
use crate::lifecycle;
use crate::state::AppState;

/// Create an experiment (and start it unless `start` is false).
#[utoipa::path(post, path = "/v1/experiments", tag = "experiments",
    request_body = CreateExperiment,
    responses(
        (status = 201, body = CreatedExperiment),
        (status = 400, body = Problem), (status = 413, body = Problem), (status = 415, body = Problem)))]
pub async fn create(
    State(state): State<AppState>,
    JsonBody(req): JsonBody<CreateExperiment>,
) -> Result<(StatusCode, Json<CreatedExperiment>), ApiError> {
    let (new, start) = validate::experiment(&state, req).await?;
    let id = state.db.create_experiment(&new).await?;
    let status = if start {
        lifecycle::start(&state, id).await?
    } else {
        ExperimentStatus::Stopped
    };
    Ok((
        StatusCode::CREATED,
        Json(CreatedExperiment {
            id: id.to_string(),
            status: status.as_str().to_owned(),
        }),
    ))
}

/// List experiments, oldest first, optionally by dataset and status.
#[utoipa::path(get, path = "/v1/experiments", tag = "experiments",
    params(ExperimentsQuery),
    responses((status = 200, body = Vec<ExperimentOut>), (status = 400, body = Problem)))]
pub async fn list(
    State(state): State<AppState>,
    Query(query): Query<ExperimentsQuery>,
) -> Result<Json<Vec<ExperimentOut>>, ApiError> {
    let dataset_id = query
        .dataset_id
        .map(|d| {
            d.parse()
                .map_err(|_| ApiError::invalid("dataset_id", "is not a valid dataset id"))
        })
        .transpose()?;
    let status = query
        .status
        .map(|s| {
            s.parse::<ExperimentStatus>()
                .map_err(|m| ApiError::invalid("status", m))
        })
        .transpose()?;
    let views = state
        .db
        .experiments(&ExperimentFilter { dataset_id, status })
        .await?;
    Ok(Json(
        views.into_iter().map(|v| with_waiting(&state, v)).collect(),
    ))
}

/// Get one experiment with its progress.
#[utoipa::path(get, path = "/v1/experiments/{id}", tag = "experiments",
    params(("id" = String, Path, description = "Experiment id")),
    responses((status = 200, body = ExperimentOut), (status = 404, body = Problem)))]
pub async fn get(
    State(state): State<AppState>,
    PathId(id): PathId,
) -> Result<Json<ExperimentOut>, ApiError> {
    let id = validate::experiment_id(&id)?;
    Ok(Json(with_waiting(&state, state.db.experiment(id).await?)))
}

/// The experiment as the API shows it, with what it waits on while it runs
/// here and waits (a used-up quota).
fn with_waiting(state: &AppState, view: runnel_store::ExperimentView) -> ExperimentOut {
    let running = view.status == ExperimentStatus::Running;
    let id = view.id;
    let mut out = ExperimentOut::from(view);
    if running {
        out.waiting = state.bus.waiting(id).map(Into::into);
    }
    out
}

/// Stop an experiment (wherever it runs). Idempotent; 409 with `Retry-After`
/// inside the cooldown of the previous toggle.
#[utoipa::path(post, path = "/v1/experiments/{id}/stop", tag = "experiments",
    params(("id" = String, Path, description = "Experiment id")),
    responses((status = 200, body = StatusOut), (status = 404, body = Problem), (status = 409, body = Problem)))]
pub async fn stop(
    State(state): State<AppState>,
    PathId(id): PathId,
) -> Result<Json<StatusOut>, ApiError> {
    let id = validate::experiment_id(&id)?;
    let status = lifecycle::stop(&state, id).await?;
    Ok(Json(StatusOut {
        status: status.as_str().to_owned(),
    }))
}

/// Resume an experiment: runs whatever is missing (new examples, new
/// evaluators, failed runs); completes at once when nothing is. Idempotent;
/// 409 with `Retry-After` inside the cooldown.
#[utoipa::path(post, path = "/v1/experiments/{id}/resume", tag = "experiments",
    params(("id" = String, Path, description = "Experiment id")),
    responses((status = 200, body = StatusOut), (status = 404, body = Problem), (status = 409, body = Problem)))]
pub async fn resume(
    State(state): State<AppState>,
    PathId(id): PathId,
) -> Result<Json<StatusOut>, ApiError> {
    let id = validate::experiment_id(&id)?;
    let status = lifecycle::resume(&state, id).await?;
    Ok(Json(StatusOut {
        status: status.as_str().to_owned(),
    }))
}

/// Attach one more evaluator; the next resume scores existing runs with it.
#[utoipa::path(post, path = "/v1/experiments/{id}/evaluators", tag = "experiments",
    params(("id" = String, Path, description = "Experiment id")),
    request_body = EvaluatorIn,
    responses((status = 201, body = EvaluatorOut), (status = 400, body = Problem), (status = 404, body = Problem), (status = 409, body = Problem)))]
pub async fn attach_evaluator(
    State(state): State<AppState>,
    PathId(id): PathId,
    JsonBody(req): JsonBody<EvaluatorIn>,
) -> Result<(StatusCode, Json<EvaluatorOut>), ApiError> {
    let id = validate::experiment_id(&id)?;
    let view = state.db.experiment(id).await?;
    let sample = validate::sample(&state, view.dataset_id).await?;
    let new = validate::evaluator(&state, req, "", &sample).map_err(|e| match e {
        ApiError::Validation { field, detail } => ApiError::Validation {
            field: field.trim_start_matches('.').to_owned(),
            detail,
        },
        other => other,
    })?;
    let spec = state.db.attach_evaluator(id, &new).await?;
    Ok((
        StatusCode::CREATED,
        Json(EvaluatorOut {
            id: spec.id.0,
            name: spec.name,
        }),
    ))
}

/// Delete an experiment with its results; stops it first wherever it runs.
#[utoipa::path(delete, path = "/v1/experiments/{id}", tag = "experiments",
    params(("id" = String, Path, description = "Experiment id")),
    responses((status = 204), (status = 404, body = Problem)))]
pub async fn delete(
    State(state): State<AppState>,
    PathId(id): PathId,
) -> Result<StatusCode, ApiError> {
    let id = validate::experiment_id(&id)?;
    lifecycle::delete(&state, id).await?;
    Ok(StatusCode::NO_CONTENT)
}
