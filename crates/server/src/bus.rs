//! The engine's event sink: counts every event in the metrics and forwards
//! it to the event streams (`GET /v1/experiments/{id}/events`) of its
//! experiment. Never blocks: streams that fall behind lose events (and catch
//! up from the database), experiments nobody watches cost one map lookup.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use runnel_core::{EngineEvent, EventSink, ExperimentId};
use tokio::sync::{broadcast, watch};

use crate::telemetry::Metrics;

/// Fans engine events out to metrics and event streams.
#[derive(Debug)]
pub struct Bus {
    metrics: Arc<Metrics>,
    /// Events buffered per watched experiment before a slow stream lags
    /// (`server.event_buffer`).
    capacity: usize,
    channels: Mutex<HashMap<ExperimentId, broadcast::Sender<Arc<EngineEvent>>>>,
    /// Set once the server shuts down: event streams end, so that the HTTP
    /// server's graceful shutdown does not wait for them.
    closing: watch::Sender<bool>,
}

impl Bus {
    /// A bus counting into `metrics`, buffering `capacity` events per
    /// watched experiment (at least one).
    pub fn new(metrics: Arc<Metrics>, capacity: usize) -> Self {
        Self {
            metrics,
            capacity: capacity.max(1),
            channels: Mutex::new(HashMap::new()),
            closing: watch::Sender::new(false),
        }
    }

    /// Ends every event stream (at shutdown): they would otherwise keep the
    /// HTTP server, and with it the engine's release of its claims, waiting
    /// until their experiments leave RUNNING.
    pub fn close(&self) {
        self.closing.send_replace(true);
    }

    /// Completes once [`Bus::close`] was called.
    pub async fn closed(&self) {
        let mut closing = self.closing.subscribe();
        // The sender lives as long as `self`, so waiting cannot fail.
        let _ = closing.wait_for(|closed| *closed).await;
    }

    /// Receives the events of one experiment from now on.
    pub fn subscribe(&self, experiment: ExperimentId) -> broadcast::Receiver<Arc<EngineEvent>> {
        let mut channels = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        channels
            .entry(experiment)
            .or_insert_with(|| broadcast::channel(self.capacity).0)
            .subscribe()
    }
}

/// The experiment an event belongs to.
fn experiment_of(event: &EngineEvent) -> ExperimentId {
    match event {
        EngineEvent::Adopted { claim, .. } => claim.experiment,
        EngineEvent::RunRecorded { experiment, .. }
        | EngineEvent::AnnotationRecorded { experiment, .. }
        | EngineEvent::Chunk { experiment, .. }
        | EngineEvent::CallFinished { experiment, .. }
        | EngineEvent::WriteFenced { experiment }
        | EngineEvent::WriteAbandoned { experiment, .. }
        | EngineEvent::Departed { experiment, .. } => *experiment,
    }
}

impl EventSink for Bus {
    fn emit(&self, event: EngineEvent) {
        self.metrics.record(&event);
        let id = experiment_of(&event);
        let mut channels = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(tx) = channels.get(&id)
            && tx.send(Arc::new(event)).is_err()
        {
            // Nobody listens any more.
            channels.remove(&id);
        }
    }
}
