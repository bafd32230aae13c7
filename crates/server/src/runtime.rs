//! Wiring: builds the adapters from the configuration, hands them to the
//! engine, and runs the background tasks of a replica — the PostgreSQL
//! notification listener, the periodic saving of learned rate limits and the
//! sync of the rate budget shared by replicas (`crate::budget`).
//! No scheduling decision is made here.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use runnel_advisor::{Advisor, AdvisorSnapshot, KeySnapshot};
use runnel_core::engine::{Engine, EngineHandle, Ports};
use runnel_core::{Clock, RateBudget, RateKey};
use runnel_providers::Providers;
use runnel_store::{ControlKind, Db, Heard};
use serde::{Deserialize, Serialize};
use tokio::task::JoinHandle;

use crate::budget::BudgetState;
use crate::bus::Bus;
use crate::config::RunnelConfig;
use crate::state::AppState;
use crate::telemetry::Metrics;

/// tokio's clock behind the core's `Clock` port.
#[derive(Clone, Copy, Debug, Default)]
pub struct TokioClock;

impl Clock for TokioClock {
    fn now(&self) -> Instant {
        tokio::time::Instant::now().into_std()
    }

    fn sleep_until(&self, deadline: Instant) -> impl Future<Output = ()> + Send {
        tokio::time::sleep_until(tokio::time::Instant::from_std(deadline))
    }
}

/// One replica, running: the shared state plus the tasks to stop at exit.
#[derive(Debug)]
pub struct Runtime {
    /// What handlers and commands share.
    pub state: AppState,
    /// The advisor (for snapshots).
    pub advisor: Arc<Advisor>,
    engine_task: JoinHandle<()>,
    background: Vec<JoinHandle<()>>,
}

/// One saved advisor key: when it was saved (wall clock), and the state.
#[derive(Serialize, Deserialize)]
struct SavedKey {
    saved_at_unix_ms: u64,
    state: KeySnapshot,
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl Runtime {
    /// Connects to the database (migrating it when configured to), restores
    /// learned rate limits, builds the providers and starts the engine. Returns
    /// once the engine has taken back what this replica still owned.
    pub async fn start(config: RunnelConfig) -> anyhow::Result<Self> {
        let config = Arc::new(config);
        let db = Arc::new(Db::connect(&config.database).await.with_context(|| {
            format!(
                "opening the database {}",
                runnel_store::redact_url(&config.database.url)
            )
        })?);
        let replica = db
            .replica_id(config.server.replica_id.as_deref())
            .context("choosing this replica's identity")?;
        let advisor =
            Arc::new(Advisor::new(config.advisor.clone()).context("configuring the advisor")?);
        restore_rate_state(&db, &advisor).await;
        let entries = config
            .providers
            .iter()
            .map(|(name, section)| (name.clone(), section.entry.clone()));
        let providers = Arc::new(
            Providers::from_env(entries, config.provider_settings())
                .context("configuring the providers")?,
        );
        for problem in providers.check() {
            tracing::warn!(provider = %problem.entry, "{}", problem.message);
        }
        let metrics = Arc::new(Metrics::new(&config, advisor.clone())?);
        let budget = BudgetState::new(config.budget.clone());
        metrics.attach_budget(budget.clone());
        let bus = Arc::new(Bus::new(metrics.clone(), config.server.event_buffer));
        let ports = Ports {
            store: db.clone(),
            provider: providers,
            advisor: advisor.clone(),
            clock: Arc::new(TokioClock),
            events: bus.clone(),
        };
        let (engine, handle) = Engine::new(config.scheduler.clone(), replica.clone(), ports);
        metrics.attach_engine(handle.clone());
        let engine_task = tokio::spawn(engine.run());
        handle
            .started()
            .await
            .context("the engine stopped during start-up")?;
        tracing::info!(
            replica = %replica,
            database = db.kind().as_str(),
            "replica ready"
        );
        let state = AppState {
            config: config.clone(),
            db: db.clone(),
            engine: handle.clone(),
            replica,
            bus,
            metrics,
        };
        let mut background = Vec::new();
        if let Some(listener) = db.listen().await.context("listening for notifications")? {
            let retry = config.server.listen_retry;
            background.push(tokio::spawn(listen(listener, handle.clone(), retry)));
        }
        background.push(tokio::spawn(crate::budget::sync_every(
            db.clone(),
            advisor.clone(),
            handle.clone(),
            state.replica.clone(),
            budget,
        )));
        background.push(tokio::spawn(save_rate_state_every(
            db.clone(),
            advisor.clone(),
            config.server.rate_state_interval,
        )));
        Ok(Self {
            state,
            advisor,
            engine_task,
            background,
        })
    }

    /// The engine's handle.
    pub fn engine(&self) -> &EngineHandle {
        &self.state.engine
    }

    /// Graceful shutdown: the engine drains and releases its claims, learned
    /// rates are saved, the database is closed.
    pub async fn shutdown(self) {
        // Event streams end, so connections drain.
        self.state.bus.close();
        match self.state.engine.shutdown().await {
            Ok(released) if !released.is_empty() => {
                tracing::info!(count = released.len(), "released experiments for takeover")
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "engine shutdown"),
        }
        let _ = self.engine_task.await;
        for task in &self.background {
            task.abort();
        }
        save_rate_state(&self.state.db, &self.advisor).await;
        // Hand this replica's shares back at once rather than after the lease.
        if let Err(e) = RateBudget::leave(&*self.state.db, &self.state.replica).await {
            tracing::debug!(error = %e, "could not leave the rate budget; its lease will lapse");
        }
        self.state.metrics.shutdown();
        match Arc::try_unwrap(self.state.db) {
            Ok(db) => db.close().await,
            Err(_) => {
                tracing::debug!("database still shared at shutdown; connections close on exit")
            }
        }
    }
}

/// Reacts to other replicas' stop/delete announcements.
async fn listen(mut listener: runnel_store::Listener, engine: EngineHandle, retry: Duration) {
    loop {
        match listener.recv().await {
            Ok(Heard::Event(event)) => {
                let result = match event.kind {
                    ControlKind::Stopped => engine.stop(event.experiment),
                    ControlKind::Deleted => engine.forget(event.experiment),
                    // The resuming replica claimed it itself; nothing to do.
                    ControlKind::Resumed => Ok(()),
                };
                if result.is_err() {
                    return;
                }
            }
            Ok(Heard::Reconnected) => {
                tracing::info!("notification listener reconnected; checking the claims now");
                if engine.check_claims().is_err() {
                    return;
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "notification listener failed; retrying");
                tokio::time::sleep(retry).await;
            }
        }
    }
}

async fn restore_rate_state(db: &Db, advisor: &Advisor) {
    let saved = match db.load_rate_state().await {
        Ok(saved) => saved,
        Err(e) => {
            tracing::warn!(error = %e, "could not load learned rate limits; starting cold");
            return;
        }
    };
    let now_ms = unix_ms();
    let mut snapshot = AdvisorSnapshot::default();
    for (key, json) in saved {
        match serde_json::from_value::<SavedKey>(json) {
            Ok(k) => {
                let age = Duration::from_millis(now_ms.saturating_sub(k.saved_at_unix_ms));
                snapshot
                    .keys
                    .insert(key.as_str().to_owned(), k.state.aged(age));
            }
            Err(e) => tracing::warn!(key = %key, error = %e, "ignored unreadable saved rate state"),
        }
    }
    let count = snapshot.keys.len();
    match advisor.restore(&snapshot, Instant::now()) {
        Ok(()) if count > 0 => tracing::info!(keys = count, "restored learned rate limits"),
        Ok(()) => {}
        Err(e) => tracing::warn!(error = %e, "could not restore learned rate limits"),
    }
}

async fn save_rate_state(db: &Db, advisor: &Advisor) {
    let snapshot = advisor.snapshot(Instant::now());
    let saved_at_unix_ms = unix_ms();
    for (key, state) in snapshot.keys {
        let saved = SavedKey {
            saved_at_unix_ms,
            state,
        };
        let Ok(json) = serde_json::to_value(&saved) else {
            continue;
        };
        if let Err(e) = db.save_rate_state(&RateKey::from_raw(key), &json).await {
            tracing::debug!(error = %e, "could not save learned rate limits");
            return;
        }
    }
}

async fn save_rate_state_every(db: Arc<Db>, advisor: Arc<Advisor>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.tick().await;
    loop {
        tick.tick().await;
        save_rate_state(&db, &advisor).await;
    }
}
