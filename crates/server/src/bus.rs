//! The engine's event sink: counts every event in the metrics and forwards
//! it to the event streams (`GET /v1/experiments/{id}/events`) of its
//! experiment. Never blocks: streams that fall behind lose events (and catch
//! up from the database), experiments nobody watches cost one map lookup.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

use chrono::{DateTime, Utc};
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
    /// What each experiment running here waits on, while it waits (shown by
    /// `GET /v1/experiments/{id}`).
    waiting: Mutex<HashMap<ExperimentId, WaitingOn>>,
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
            waiting: Mutex::new(HashMap::new()),
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

    /// What the experiment waits on, if it runs on this replica and waits
    /// on a used-up quota.
    pub fn waiting(&self, experiment: ExperimentId) -> Option<WaitingOn> {
        let waiting = self.waiting.lock().unwrap_or_else(|p| p.into_inner());
        waiting.get(&experiment).cloned()
    }

    /// Keeps the waiting state of the experiment an event is about.
    fn note_waiting(&self, event: &EngineEvent) {
        let mut waiting = self.waiting.lock().unwrap_or_else(|p| p.into_inner());
        match event {
            EngineEvent::Waiting {
                experiment,
                waiting: Some(w),
            } => {
                waiting.insert(
                    *experiment,
                    WaitingOn::new(w, Instant::now(), SystemTime::now()),
                );
            }
            EngineEvent::Waiting {
                experiment,
                waiting: None,
            }
            | EngineEvent::Departed { experiment, .. } => {
                waiting.remove(experiment);
            }
            _ => {}
        }
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

/// A wait the user should see, with wall-clock times.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WaitingOn {
    /// Why: `"quota"` (a used-up quota; the only reason shown so far).
    pub reason: &'static str,
    /// The rate-limit key (`provider|scope`).
    pub key: String,
    /// When the provider said the quota comes back, if it said.
    pub until: Option<DateTime<Utc>>,
    /// What the provider said, if a call said it.
    pub message: Option<String>,
    /// When the wait began.
    pub since: DateTime<Utc>,
}

impl WaitingOn {
    /// The engine's wait (monotonic instants) in wall-clock time, as of
    /// `now` / `wall`.
    fn new(w: &runnel_core::Waiting, now: Instant, wall: SystemTime) -> Self {
        let wall: DateTime<Utc> = wall.into();
        Self {
            reason: "quota",
            key: w.key.as_str().to_owned(),
            until: w.until.and_then(|u| {
                let ahead = chrono::TimeDelta::from_std(u.saturating_duration_since(now)).ok()?;
                wall.checked_add_signed(ahead)
            }),
            message: w.message.clone(),
            since: wall,
        }
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
        | EngineEvent::Waiting { experiment, .. }
        | EngineEvent::Departed { experiment, .. } => *experiment,
    }
}

impl EventSink for Bus {
    fn emit(&self, event: EngineEvent) {
        self.metrics.record(&event);
        if matches!(
            event,
            EngineEvent::Waiting { .. } | EngineEvent::Departed { .. }
        ) {
            self.note_waiting(&event);
        }
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
