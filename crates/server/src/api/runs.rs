//! Results: pages of runs with their annotations, all runs as JSON lines, and
//! the experiment log.

use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use runnel_core::RunId;

use super::body::{PathId, Query};
use super::error::{ApiError, Problem};
use super::types::{LogOut, LogsQuery, RunOut, RunsPageOut, RunsQuery};
use super::validate;
use crate::state::AppState;

/// The `limit` of a page request: `server.default_page` when absent, at
/// most `database.max_page` (the store's own clamp, so one limit).
fn limit(state: &AppState, field: &str, text: Option<&str>) -> Result<usize, ApiError> {
    let most = state.config.database.max_page;
    match text {
        None => Ok(state.config.server.default_page),
        Some(t) => match t.parse::<usize>() {
            Ok(n) if (1..=most).contains(&n) => Ok(n),
            _ => Err(ApiError::invalid(
                field,
                format!("must be a whole number from 1 to {most}"),
            )),
        },
    }
}

/// A page of runs, each with its annotations, in id order.
#[utoipa::path(get, path = "/v1/experiments/{id}/runs", tag = "results",
    params(("id" = String, Path, description = "Experiment id"), RunsQuery),
    responses((status = 200, body = RunsPageOut), (status = 400, body = Problem), (status = 404, body = Problem)))]
pub async fn page(
    State(state): State<AppState>,
    PathId(id): PathId,
    Query(query): Query<RunsQuery>,
) -> Result<Json<RunsPageOut>, ApiError> {
    let id = validate::experiment_id(&id)?;
    let limit = limit(&state, "limit", query.limit.as_deref())?;
    let after = query
        .cursor
        .map(|c| {
            c.parse::<i64>()
                .map(RunId)
                .map_err(|_| ApiError::invalid("cursor", "is not a cursor this API returned"))
        })
        .transpose()?;
    // 404 for an unknown experiment rather than an empty page.
    state.db.experiment(id).await?;
    let page = state.db.runs_page(id, after, limit).await?;
    Ok(Json(RunsPageOut {
        items: page.items.into_iter().map(Into::into).collect(),
        next_cursor: page.next_cursor.map(|c| c.to_string()),
    }))
}

/// Every run with its annotations, one JSON object per line, streamed.
#[utoipa::path(get, path = "/v1/experiments/{id}/runs.jsonl", tag = "results",
    params(("id" = String, Path, description = "Experiment id")),
    responses((status = 200, content_type = "application/x-ndjson", body = RunOut), (status = 404, body = Problem)))]
pub async fn jsonl(
    State(state): State<AppState>,
    PathId(id): PathId,
) -> Result<Response, ApiError> {
    let id = validate::experiment_id(&id)?;
    state.db.experiment(id).await?;
    let lines = state.db.runs_stream(id).map(|run| match run {
        Ok(run) => {
            let mut line = serde_json::to_vec(&RunOut::from(run)).unwrap_or_default();
            line.push(b'\n');
            Ok(line)
        }
        Err(e) => {
            tracing::warn!(error = %e, "runs.jsonl stream stopped early");
            Err(std::io::Error::other(e.to_string()))
        }
    });
    let mut response = Body::from_stream(lines).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-ndjson"),
    );
    Ok(response)
}

/// Recorded errors and events of an experiment, newest first.
#[utoipa::path(get, path = "/v1/experiments/{id}/logs", tag = "results",
    params(("id" = String, Path, description = "Experiment id"), LogsQuery),
    responses((status = 200, body = Vec<LogOut>), (status = 400, body = Problem), (status = 404, body = Problem)))]
pub async fn logs(
    State(state): State<AppState>,
    PathId(id): PathId,
    Query(query): Query<LogsQuery>,
) -> Result<Json<Vec<LogOut>>, ApiError> {
    let id = validate::experiment_id(&id)?;
    let limit = limit(&state, "limit", query.limit.as_deref())?;
    let before = query
        .before
        .map(|b| {
            b.parse::<i64>()
                .map_err(|_| ApiError::invalid("before", "must be a log entry id"))
        })
        .transpose()?;
    state.db.experiment(id).await?;
    let entries = state.db.logs(id, before, limit).await?;
    Ok(Json(entries.into_iter().map(Into::into).collect()))
}
