//! What every handler and command shares: the configuration, the database,
//! the engine's handle, the replica identity, the event bus and the metrics.

use std::sync::Arc;

use runnel_core::ReplicaId;
use runnel_core::engine::EngineHandle;
use runnel_store::Db;

use crate::bus::Bus;
use crate::config::RunnelConfig;
use crate::telemetry::Metrics;

/// Shared state of the API. Cheap to clone.
#[derive(Clone, Debug)]
pub struct AppState {
    /// The loaded configuration.
    pub config: Arc<RunnelConfig>,
    /// The database.
    pub db: Arc<Db>,
    /// The engine of this replica.
    pub engine: EngineHandle,
    /// This replica's identity.
    pub replica: ReplicaId,
    /// Engine events for event streams.
    pub bus: Arc<Bus>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
}
