//! Observability (DESIGN §9): the tracing subscriber (human or JSON lines),
//! OpenTelemetry traces and metrics exported by OTLP when `otel.endpoint` is
//! set, and the metrics registry behind `GET /metrics`.
//!
//! Metrics are OpenTelemetry instruments read by two readers: the Prometheus
//! registry that `/metrics` renders, and (when configured) the OTLP exporter.

use std::sync::{Arc, OnceLock};
use std::time::Instant;

use opentelemetry::KeyValue;
use opentelemetry::metrics::{AsyncInstrument, Counter, Gauge, Histogram, MeterProvider as _};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::metrics::{PeriodicReader, SdkMeterProvider};
use opentelemetry_sdk::trace::SdkTracerProvider;
use prometheus::{Encoder, TextEncoder};
use runnel_advisor::{Advisor, BudgetMode, KeyBudget, KeyMetrics};
use runnel_core::engine::EngineHandle;
use runnel_core::{Departure, EngineEvent, ExperimentStatus, OutcomeClass};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use crate::budget::BudgetState;
use crate::config::{LogFormat, RunnelConfig};

/// Installs the global tracing subscriber: the configured format and filter,
/// plus an OpenTelemetry layer when `otel.endpoint` is set. Returns the tracer
/// provider to flush at exit. Installing twice (tests) keeps the first.
pub fn init_tracing(config: &RunnelConfig) -> anyhow::Result<Option<SdkTracerProvider>> {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&config.log.filter))
        .map_err(|e| anyhow::anyhow!("invalid configuration `log.filter`: {e}"))?;
    let provider = match &config.otel.endpoint {
        Some(endpoint) => {
            let exporter = opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_endpoint(format!("{}/v1/traces", endpoint.trim_end_matches('/')))
                .build()?;
            Some(
                SdkTracerProvider::builder()
                    .with_batch_exporter(exporter)
                    .with_resource(resource(config))
                    .build(),
            )
        }
        None => None,
    };
    let otel_layer = provider
        .as_ref()
        .map(|p| tracing_opentelemetry::layer().with_tracer(p.tracer("runnel")));
    let registry = tracing_subscriber::registry().with(filter).with(otel_layer);
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let result = match config.log.format {
        LogFormat::Human => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .with_ansi(ansi)
                    .with_writer(std::io::stderr),
            )
            .try_init(),
        LogFormat::Json => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .with_writer(std::io::stderr),
            )
            .try_init(),
    };
    // Already installed (several servers in one test process): keep it.
    drop(result);
    Ok(provider)
}

fn resource(config: &RunnelConfig) -> Resource {
    Resource::builder()
        .with_service_name(config.otel.service_name.clone())
        .build()
}

/// A callback observing one advisor figure per rate-limit key (labelled
/// `key`); keys for which `value` gives `None` are left out.
fn per_key<T: 'static>(
    advisor: &Arc<Advisor>,
    value: impl Fn(&KeyMetrics) -> Option<T> + Send + Sync + 'static,
) -> impl Fn(&dyn AsyncInstrument<T>) + Send + Sync + 'static {
    let advisor = advisor.clone();
    move |o| {
        for (key, m) in advisor.metrics(Instant::now()) {
            if let Some(v) = value(&m) {
                o.observe(v, &[KeyValue::new("key", key)]);
            }
        }
    }
}

/// Where slot figures come from (set once the engine exists).
type EngineCell = Arc<OnceLock<EngineHandle>>;

/// Where shared-budget figures come from (set once the runtime starts).
type BudgetCell = Arc<OnceLock<BudgetState>>;

/// A callback observing one shared-budget figure per key (labelled `key`).
fn per_budget_key<T: 'static>(
    cell: &BudgetCell,
    value: impl Fn(&KeyBudget) -> Option<T> + Send + Sync + 'static,
) -> impl Fn(&dyn AsyncInstrument<T>) + Send + Sync + 'static {
    let cell = cell.clone();
    move |o| {
        if let Some(b) = cell.get() {
            for (key, k) in b.lock().keys() {
                if let Some(v) = value(k) {
                    o.observe(v, &[KeyValue::new("key", key.as_str().to_owned())]);
                }
            }
        }
    }
}

/// Every metric of DESIGN §9.
pub struct Metrics {
    registry: prometheus::Registry,
    provider: SdkMeterProvider,
    jobs: Counter<u64>,
    rate_limited: Counter<u64>,
    latency: Histogram<f64>,
    runs: Counter<u64>,
    annotations: Counter<u64>,
    fenced: Counter<u64>,
    abandoned: Counter<u64>,
    takeovers: Counter<u64>,
    departures: Counter<u64>,
    experiments: Gauge<u64>,
    engine: EngineCell,
    budget: BudgetCell,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Metrics {
    /// Builds the instruments. Advisor figures (rates, breakers, 429s per
    /// key) and slot figures are read when metrics are collected.
    pub fn new(config: &RunnelConfig, advisor: Arc<Advisor>) -> anyhow::Result<Self> {
        let registry = prometheus::Registry::new();
        let prometheus_reader = opentelemetry_prometheus::exporter()
            .with_registry(registry.clone())
            .scope_info_enabled(false)
            .without_target_info()
            .build()?;
        let mut builder = SdkMeterProvider::builder()
            .with_reader(prometheus_reader)
            .with_resource(resource(config));
        if let Some(endpoint) = &config.otel.endpoint {
            let exporter = opentelemetry_otlp::MetricExporter::builder()
                .with_http()
                .with_endpoint(format!("{}/v1/metrics", endpoint.trim_end_matches('/')))
                .build()?;
            builder = builder.with_reader(
                PeriodicReader::builder(exporter)
                    .with_interval(config.otel.metrics_interval)
                    .build(),
            );
        }
        let provider = builder.build();
        let meter = provider.meter("runnel");
        let engine: EngineCell = Arc::new(OnceLock::new());

        let slots = engine.clone();
        let max = config.scheduler.max_concurrency as u64;
        let _slots_in_use = meter
            .u64_observable_gauge("runnel_slots_in_use")
            .with_description("Provider calls under way (global slots in use)")
            .with_callback(move |o| {
                if let Some(e) = slots.get() {
                    o.observe(e.stats().slots_in_use() as u64, &[]);
                }
            })
            .build();
        let _slots_total = meter
            .u64_observable_gauge("runnel_slots")
            .with_description("Global slots (max_concurrency)")
            .with_callback(move |o| o.observe(max, &[]))
            .build();
        let utilisation = engine.clone();
        let _utilisation = meter
            .f64_observable_gauge("runnel_slot_utilisation")
            .with_description("Slots in use divided by slots")
            .with_callback(move |o| {
                if let Some(e) = utilisation.get() {
                    o.observe(e.stats().slots_in_use() as f64 / max.max(1) as f64, &[]);
                }
            })
            .build();
        let owned = engine.clone();
        let _owned = meter
            .u64_observable_gauge("runnel_experiments_owned")
            .with_description("Experiments running or draining in this replica")
            .with_callback(move |o| {
                if let Some(e) = owned.get() {
                    o.observe(e.stats().experiments() as u64, &[]);
                }
            })
            .build();

        let _rate = meter
            .f64_observable_gauge("runnel_bucket_rate")
            .with_description("Current permitted rate per rate-limit key, requests per second")
            .with_callback(per_key(&advisor, |m| m.rate_rps))
            .build();
        let _breaker = meter
            .u64_observable_gauge("runnel_breaker_state")
            .with_description("Circuit breaker per key: 0 closed, 1 half-open, 2 open")
            .with_callback(per_key(&advisor, |m| Some(u64::from(m.breaker.as_gauge()))))
            .build();
        let _trips = meter
            .u64_observable_counter("runnel_breaker_trips")
            .with_description("Times each key's circuit breaker opened")
            .with_callback(per_key(&advisor, |m| Some(m.trips)))
            .build();
        let _quota = meter
            .u64_observable_gauge("runnel_quota_waiting")
            .with_description(
                "1 while a key waits on its used-up quota (one probe per interval), else 0",
            )
            .with_callback(per_key(&advisor, |m| {
                Some(u64::from(m.quota_wait_until.is_some()))
            }))
            .build();
        let _permits = meter
            .u64_observable_counter("runnel_advisor_permits")
            .with_description("Permits granted per key")
            .with_callback(per_key(&advisor, |m| Some(m.counters.permits)))
            .build();

        let budget: BudgetCell = Arc::new(OnceLock::new());
        let _cluster_rate = meter
            .f64_observable_gauge("runnel_budget_cluster_rate")
            .with_description(
                "The whole key's request rate in the shared budget (all replicas), per second",
            )
            .with_callback(per_budget_key(&budget, |k| k.cluster_rps))
            .build();
        let _share = meter
            .f64_observable_gauge("runnel_budget_share")
            .with_description("This replica's share of each key's rate (0 to 1)")
            .with_callback(per_budget_key(&budget, |k| Some(k.share)))
            .build();
        let _members = meter
            .u64_observable_gauge("runnel_budget_members")
            .with_description("Live replicas sharing each key's rate")
            .with_callback(per_budget_key(&budget, |k| Some(u64::from(k.members))))
            .build();
        let fallback = budget.clone();
        let _fallback = meter
            .u64_observable_gauge("runnel_budget_fallback")
            .with_description(
                "1 while the shared budget cannot be synced and local conservative shares apply",
            )
            .with_callback(move |o| {
                if let Some(b) = fallback.get() {
                    o.observe(u64::from(b.lock().mode() == BudgetMode::Fallback), &[]);
                }
            })
            .build();
        let failures = budget.clone();
        let _failures = meter
            .u64_observable_counter("runnel_budget_sync_failures")
            .with_description("Shared-budget syncs that failed or timed out")
            .with_callback(move |o| {
                if let Some(b) = failures.get() {
                    o.observe(b.lock().failures(), &[]);
                }
            })
            .build();

        let metrics = Self {
            jobs: meter
                .u64_counter("runnel_jobs")
                .with_description("Provider calls by outcome and kind (task, eval)")
                .build(),
            rate_limited: meter
                .u64_counter("runnel_rate_limited")
                .with_description("Rate-limited answers (429, 529) per key")
                .build(),
            latency: meter
                .f64_histogram("runnel_job_latency")
                .with_unit("s")
                .with_description("Provider call latency")
                .with_boundaries(config.server.latency_buckets.clone())
                .build(),
            runs: meter
                .u64_counter("runnel_runs_recorded")
                .with_description("Runs written, by result")
                .build(),
            annotations: meter
                .u64_counter("runnel_annotations_recorded")
                .with_description("Annotations written, by result")
                .build(),
            fenced: meter
                .u64_counter("runnel_fenced_writes")
                .with_description("Writes rejected because a later claim exists")
                .build(),
            abandoned: meter
                .u64_counter("runnel_abandoned_writes")
                .with_description("Writes given up while the database was unreachable")
                .build(),
            takeovers: meter
                .u64_counter("runnel_claim_takeovers")
                .with_description("Experiments taken over from a dead replica")
                .build(),
            departures: meter
                .u64_counter("runnel_experiment_departures")
                .with_description("Experiments leaving this replica, by reason")
                .build(),
            experiments: meter
                .u64_gauge("runnel_experiments")
                .with_description("Experiments by status (whole database)")
                .build(),
            registry,
            provider,
            engine,
            budget,
        };
        // Counters without labels are exposed at zero from the start: a
        // series that appears only with its first event cannot be alerted
        // on or compared over time (and a healthy replica may never fence).
        for counter in [&metrics.fenced, &metrics.abandoned, &metrics.takeovers] {
            counter.add(0, &[]);
        }
        Ok(metrics)
    }

    /// Connects the slot gauges to the engine.
    pub fn attach_engine(&self, engine: EngineHandle) {
        let _ = self.engine.set(engine);
    }

    /// Connects the shared-budget gauges (and `/readyz`) to the sync state.
    pub fn attach_budget(&self, budget: BudgetState) {
        let _ = self.budget.set(budget);
    }

    /// The shared budget's state, once attached.
    pub fn budget(&self) -> Option<&BudgetState> {
        self.budget.get()
    }

    /// Counts one engine event.
    pub fn record(&self, event: &EngineEvent) {
        match event {
            EngineEvent::CallFinished {
                key,
                class,
                latency,
                task,
                ..
            } => {
                let kind = if *task { "task" } else { "eval" };
                self.jobs.add(
                    1,
                    &[
                        KeyValue::new("outcome", class.as_str()),
                        KeyValue::new("kind", kind),
                    ],
                );
                self.latency
                    .record(latency.as_secs_f64(), &[KeyValue::new("kind", kind)]);
                if *class == OutcomeClass::RateLimited {
                    self.rate_limited
                        .add(1, &[KeyValue::new("key", key.as_str().to_owned())]);
                }
            }
            EngineEvent::RunRecorded { record, .. } => {
                let result = if record.output.is_some() {
                    "success"
                } else {
                    "failure"
                };
                self.runs.add(1, &[KeyValue::new("result", result)]);
            }
            EngineEvent::AnnotationRecorded { record, .. } => {
                let result = if record.error.is_none() {
                    "success"
                } else {
                    "failure"
                };
                self.annotations.add(1, &[KeyValue::new("result", result)]);
            }
            EngineEvent::WriteFenced { .. } => self.fenced.add(1, &[]),
            EngineEvent::WriteAbandoned { .. } => self.abandoned.add(1, &[]),
            EngineEvent::Adopted { takeover, .. } => {
                if *takeover {
                    self.takeovers.add(1, &[]);
                }
            }
            EngineEvent::Departed { why, .. } => {
                let reason = match why {
                    Departure::Stopped => "stopped",
                    Departure::Completed => "completed",
                    Departure::Errored(_) => "errored",
                    Departure::Lost => "lost",
                    Departure::Released => "released",
                };
                self.departures.add(1, &[KeyValue::new("reason", reason)]);
            }
            EngineEvent::Chunk { .. } | EngineEvent::Waiting { .. } => {}
        }
    }

    /// Sets the experiments-by-status gauge.
    pub fn set_experiment_counts(&self, counts: &[(ExperimentStatus, u64)]) {
        for (status, n) in counts {
            self.experiments
                .record(*n, &[KeyValue::new("status", status.as_str())]);
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        let families = self.registry.gather();
        if TextEncoder::new().encode(&families, &mut out).is_err() {
            return String::new();
        }
        String::from_utf8(out).unwrap_or_default()
    }

    /// Flushes the OTLP exporter, if any.
    pub fn shutdown(&self) {
        let _ = self.provider.shutdown();
    }
}
