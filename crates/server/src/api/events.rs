//! `GET /v1/experiments/{id}/events`: Server-Sent Events of one experiment —
//! `progress`, `run`, `chunk`, `status`, `waiting`, `error` — ending when the experiment
//! leaves RUNNING.
//!
//! Runs and chunks come from this replica's engine. Progress and status are
//! read from the database, so a stream served by one replica follows an
//! experiment running on another too.

use std::convert::Infallible;
use std::sync::Arc;

use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures::Stream;
use runnel_core::{EngineEvent, ExperimentId, ExperimentStatus};
use serde_json::json;
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;

use super::body::PathId;
use super::error::{ApiError, Problem};
use super::types::{ProgressOut, WaitingOut};
use super::validate;
use crate::state::AppState;

/// Follow an experiment live (Server-Sent Events).
#[utoipa::path(get, path = "/v1/experiments/{id}/events", tag = "results",
    params(("id" = String, Path, description = "Experiment id")),
    responses((status = 200, content_type = "text/event-stream", description = "events: progress, run, chunk, status, waiting (on a used-up quota, or null when it ends), error"), (status = 404, body = Problem)))]
pub async fn events(
    State(state): State<AppState>,
    PathId(id): PathId,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let id = validate::experiment_id(&id)?;
    // Subscribe before reading the state, so nothing falls between the two.
    let bus = state.bus.subscribe(id);
    let view = state.db.experiment(id).await?;
    let (tx, rx) = mpsc::channel(256);
    tokio::spawn(follow(state, id, view, bus, tx));
    let stream = futures::StreamExt::map(ReceiverStream::new(rx), Ok);
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}

fn event(name: &str, data: serde_json::Value) -> Event {
    Event::default().event(name).data(data.to_string())
}

fn progress_event(progress: runnel_store::Progress) -> Event {
    event(
        "progress",
        serde_json::to_value(ProgressOut::from(progress)).unwrap_or_default(),
    )
}

fn status_event(status: ExperimentStatus, last_error: Option<&str>) -> Event {
    event(
        "status",
        json!({ "status": status.as_str(), "last_error": last_error }),
    )
}

async fn follow(
    state: AppState,
    id: ExperimentId,
    view: runnel_store::ExperimentView,
    mut bus: broadcast::Receiver<Arc<EngineEvent>>,
    tx: mpsc::Sender<Event>,
) {
    let mut status = view.status;
    if tx
        .send(status_event(status, view.last_error.as_deref()))
        .await
        .is_err()
        || tx.send(progress_event(view.progress)).await.is_err()
    {
        return;
    }
    if status != ExperimentStatus::Running {
        return;
    }
    // A stream opened during a quota wait shows it at once (later changes
    // come as events; the bus was subscribed before this read).
    if let Some(waiting) = state.bus.waiting(id)
        && tx
            .send(event(
                "waiting",
                serde_json::to_value(WaitingOut::from(waiting)).unwrap_or_default(),
            ))
            .await
            .is_err()
    {
        return;
    }
    let mut progress_tick = tokio::time::interval(state.config.server.progress_interval);
    let mut status_tick = tokio::time::interval(state.config.server.events_status_poll);
    let mut dirty = false;
    loop {
        tokio::select! {
            received = bus.recv() => {
                let out = match received {
                    Ok(e) => match &*e {
                        EngineEvent::RunRecorded { run, record, .. } => {
                            dirty = true;
                            Some(event("run", json!({
                                "id": run.to_string(),
                                "example_id": record.key.example.to_string(),
                                "repetition": record.key.repetition,
                                "output": record.output,
                                "error": record.error,
                                "attempts": record.attempts,
                                "latency_ms": record.latency_ms,
                                "usage": record.usage,
                            })))
                        }
                        EngineEvent::AnnotationRecorded { .. } => {
                            dirty = true;
                            None
                        }
                        EngineEvent::Chunk { key, text, .. } => Some(event("chunk", json!({
                            "example_id": key.example.to_string(),
                            "repetition": key.repetition,
                            "text": &**text,
                        }))),
                        EngineEvent::WriteAbandoned { error, .. } => Some(event("error", json!({
                            "message": format!("a result could not be recorded: {error}"),
                        }))),
                        EngineEvent::Waiting { .. } => Some(event(
                            "waiting",
                            serde_json::to_value(state.bus.waiting(id).map(WaitingOut::from))
                                .unwrap_or_default(),
                        )),
                        EngineEvent::Departed { .. } => {
                            // The final status write may still be under way:
                            // the status poll picks it up.
                            status_tick.reset_immediately();
                            None
                        }
                        _ => None,
                    },
                    Err(broadcast::error::RecvError::Lagged(missed)) => {
                        dirty = true;
                        Some(event("error", json!({
                            "message": format!("this stream fell behind and skipped {missed} events; progress is exact"),
                        })))
                    }
                    Err(broadcast::error::RecvError::Closed) => None,
                };
                if let Some(out) = out
                    && tx.send(out).await.is_err()
                {
                    return;
                }
            }
            _ = progress_tick.tick() => {
                if dirty {
                    dirty = false;
                    if let Ok(view) = state.db.experiment(id).await
                        && tx.send(progress_event(view.progress)).await.is_err()
                    {
                        return;
                    }
                }
            }
            _ = status_tick.tick() => {
                match state.db.experiment(id).await {
                    Ok(view) => {
                        if view.status != status {
                            status = view.status;
                            let _ = tx.send(progress_event(view.progress)).await;
                            if tx.send(status_event(status, view.last_error.as_deref())).await.is_err() {
                                return;
                            }
                        }
                        if status != ExperimentStatus::Running {
                            return;
                        }
                    }
                    Err(runnel_store::StoreError::ExperimentNotFound(_)) => {
                        let _ = tx.send(event("error", json!({ "message": "the experiment was deleted" }))).await;
                        return;
                    }
                    Err(e) => tracing::debug!(error = %e, "event stream could not read the experiment"),
                }
            }
            () = tx.closed() => return,
            () = state.bus.closed() => {
                // Never wait for a slow client here: shutdown goes on.
                let _ = tx.try_send(event("error", json!({
                    "message": "the server is shutting down; the experiment goes on elsewhere or after the restart",
                })));
                return;
            }
        }
    }
}
