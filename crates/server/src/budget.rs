//! The shared rate budget's sync loop (issue 14): every `budget.sync_interval`
//! this replica asks the engine for its demand per key, sends its reports to
//! the database in one call ([`RateBudget::sync`]) and hands the answer to
//! the advisor through [`BudgetSync`]. A sync that fails or takes longer than
//! the interval puts every key on its fallback share until one answers. No
//! decision is made here: what to report and which share follows are
//! `runnel_advisor::share`'s.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use runnel_advisor::{Advisor, BudgetConfig, BudgetMode, BudgetSync};
use runnel_core::engine::EngineHandle;
use runnel_core::{Clock, RateBudget, ReplicaId};
use serde_json::{Value, json};

use crate::runtime::TokioClock;

/// This replica's side of the shared budget, read by `/readyz` and the
/// metrics. Cheap to clone.
#[derive(Clone, Debug)]
pub struct BudgetState(Arc<Mutex<BudgetSync>>);

impl BudgetState {
    /// A fresh state with `config`.
    pub fn new(config: BudgetConfig) -> Self {
        Self(Arc::new(Mutex::new(BudgetSync::new(config))))
    }

    /// The state, locked. A poisoned lock is taken over: the state is plain
    /// data that every method leaves consistent.
    pub fn lock(&self) -> MutexGuard<'_, BudgetSync> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The `rate_budget` part of `/readyz`.
    pub fn readiness(&self, now: Instant) -> Value {
        let s = self.lock();
        let keys: serde_json::Map<String, Value> = s
            .keys()
            .iter()
            .map(|(k, b)| {
                (
                    k.as_str().to_owned(),
                    json!({
                        "cluster_rps": b.cluster_rps,
                        "share": b.share,
                        "members": b.members,
                        "demand": b.demand,
                        "total_demand": b.total_demand,
                    }),
                )
            })
            .collect();
        json!({
            "mode": s.mode(),
            "replicas": s.replicas(),
            "last_sync_ms_ago": s.last_ok().map(|t| now.saturating_duration_since(t).as_millis()),
            "failed_syncs": s.failures(),
            "keys": keys,
        })
    }
}

/// Syncs forever (until the engine is gone); spawn it.
pub async fn sync_every<B: RateBudget>(
    store: Arc<B>,
    advisor: Arc<Advisor>,
    engine: EngineHandle,
    replica: ReplicaId,
    state: BudgetState,
) {
    let config = state.lock().config().clone();
    let mut tick = tokio::time::interval(config.sync_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Ok(demand) = engine.demand().await else {
            return;
        };
        let now = TokioClock.now();
        let reports = state.lock().reports(&advisor, &demand, now);
        // A sync slower than the interval counts as failed: shares older
        // than that no longer follow demand.
        let answer = tokio::time::timeout(
            config.sync_interval,
            store.sync(&replica, config.lease, &reports),
        )
        .await;
        let now = TokioClock.now();
        let mut s = state.lock();
        let was = s.mode();
        match answer {
            Ok(Ok(views)) => {
                s.apply(&advisor, &reports, &views, now);
                if was == BudgetMode::Fallback {
                    tracing::info!("rate budget synced again; shares follow the cluster");
                }
            }
            Ok(Err(e)) => {
                s.failed(&advisor, now);
                if was != s.mode() {
                    tracing::warn!(error = %e, "rate budget sync failed; using conservative local shares");
                }
            }
            Err(_) => {
                s.failed(&advisor, now);
                if was != s.mode() {
                    tracing::warn!(
                        "rate budget sync took longer than budget.sync_interval; using conservative local shares"
                    );
                }
            }
        }
    }
}
