//! Operations endpoints: `/healthz` (process up), `/readyz` (database
//! reachable, migrations applied), `/metrics` (Prometheus text format).

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use runnel_core::ExperimentStatus;
use serde_json::{Value, json};

use super::error::ApiError;
use crate::state::AppState;

/// The process is up.
#[utoipa::path(get, path = "/healthz", tag = "operations",
    responses((status = 200, description = "The process is up")))]
pub async fn healthz() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

/// The database is reachable and its migrations are this binary's; 503
/// when it does not answer within the store's `ready_timeout`. The
/// `rate_budget` field says whether the shared rate budget is in use
/// (`shared`) or this replica runs on conservative local shares
/// (`fallback`); that alone does not make the replica unready (it keeps
/// working, only more slowly), so alerts use the field or the metrics.
#[utoipa::path(get, path = "/readyz", tag = "operations",
    responses((status = 200, description = "Ready"), (status = 503, description = "Database unreachable")))]
pub async fn readyz(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    state
        .db
        .ready()
        .await
        .map_err(|e| ApiError::Unavailable(e.to_string()))?;
    Ok(Json(json!({
        "status": "ready",
        "database": state.db.kind().as_str(),
        "replica": state.replica.as_str(),
        "rate_budget": state.metrics.budget().map(|b| b.readiness(std::time::Instant::now())),
    })))
}

/// Every metric, in the Prometheus text format.
#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses((status = 200, content_type = "text/plain", description = "Prometheus text exposition")))]
pub async fn metrics(State(state): State<AppState>) -> Response {
    // Experiments by status are counted at scrape time; when the database is
    // down the gauge keeps its last value.
    if let Ok(views) = state.db.experiments(&Default::default()).await {
        let mut counts = [
            ExperimentStatus::Running,
            ExperimentStatus::Stopped,
            ExperimentStatus::Completed,
            ExperimentStatus::Error,
        ]
        .map(|s| (s, 0));
        for v in &views {
            if let Some((_, n)) = counts.iter_mut().find(|(s, _)| *s == v.status) {
                *n += 1;
            }
        }
        state.metrics.set_experiment_counts(&counts);
    }
    let mut response = (StatusCode::OK, state.metrics.render()).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    response
}
