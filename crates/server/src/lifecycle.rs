//! The lifecycle operations of DESIGN §4 as the API, `runnel run` and
//! `runnel demo` perform them: one conditional statement in the store, then
//! the local engine is told. Whoever changes ownership in the database is the
//! one who writes it; the engine never writes a status for a user toggle.

use runnel_core::{ExperimentId, ExperimentStatus};
use runnel_store::Transition;

use crate::api::error::ApiError;
use crate::state::AppState;

fn not_found(id: ExperimentId) -> ApiError {
    ApiError::NotFound {
        what: "experiment",
        id: id.to_string(),
    }
}

fn engine_gone(e: runnel_core::Error) -> ApiError {
    ApiError::Internal(format!("the engine is not running: {e}"))
}

/// Starts a stopped experiment on this replica (no cooldown: used right
/// after creation). Returns the status afterwards.
pub async fn start(state: &AppState, id: ExperimentId) -> Result<ExperimentStatus, ApiError> {
    let sent = claim_instant();
    let transition = state.db.start(id, &state.replica).await?;
    adopt(state, id, transition, sent)
}

/// Resumes an experiment (a user toggle, subject to the cooldown): it runs
/// whatever is missing — new examples, new evaluators, failed runs — and
/// completes at once when nothing is.
pub async fn resume(state: &AppState, id: ExperimentId) -> Result<ExperimentStatus, ApiError> {
    let cooldown_time = state.config.scheduler.cooldown;
    let sent = claim_instant();
    let transition = state.db.resume(id, &state.replica, cooldown_time).await?;
    adopt(state, id, transition, sent)
}

/// The engine's clock (`TokioClock`) just before a claiming statement is
/// sent: the claim's lease counts from then, so the engine's self-fencing
/// deadline falls before the database's lease runs out.
fn claim_instant() -> std::time::Instant {
    use runnel_core::Clock as _;
    crate::runtime::TokioClock.now()
}

/// Hands a fresh claim to the local engine, or says why there is none.
fn adopt(
    state: &AppState,
    id: ExperimentId,
    transition: Transition<runnel_core::Claim>,
    sent: std::time::Instant,
) -> Result<ExperimentStatus, ApiError> {
    match transition {
        Transition::Done(claim) => {
            state
                .engine
                .adopt_claimed(claim, sent)
                .map_err(engine_gone)?;
            Ok(ExperimentStatus::Running)
        }
        Transition::AlreadyInState(status) => Ok(status),
        Transition::Cooldown { remaining } => Err(cooldown(remaining)),
        Transition::NotFound => Err(not_found(id)),
    }
}

/// Stops an experiment wherever it runs: the store clears the claim (and on
/// PostgreSQL notifies the owner); the local engine lets in-flight calls
/// finish and records them.
pub async fn stop(state: &AppState, id: ExperimentId) -> Result<ExperimentStatus, ApiError> {
    match state.db.stop(id, state.config.scheduler.cooldown).await? {
        Transition::Done(()) => {
            state.engine.stop(id).map_err(engine_gone)?;
            Ok(ExperimentStatus::Stopped)
        }
        Transition::AlreadyInState(status) => Ok(status),
        Transition::Cooldown { remaining } => Err(cooldown(remaining)),
        Transition::NotFound => Err(not_found(id)),
    }
}

/// Deletes an experiment wherever it runs.
pub async fn delete(state: &AppState, id: ExperimentId) -> Result<(), ApiError> {
    if !state.db.delete_experiment(id).await? {
        return Err(not_found(id));
    }
    state.engine.forget(id).map_err(engine_gone)?;
    Ok(())
}

fn cooldown(remaining: std::time::Duration) -> ApiError {
    ApiError::Conflict {
        detail: format!(
            "the experiment was stopped or resumed less than the cooldown ago; try again in {:.1}s",
            remaining.as_secs_f64()
        ),
        retry_after: Some(remaining),
    }
}
