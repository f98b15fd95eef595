//! Admin HTTP (`--admin-addr`): health, readiness, Prometheus metrics, and the debug
//! views of what is served (`/debug/resources`) and to whom (`/debug/clients`).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Json};
use axum::routing::get;
use axum::Router;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family as MetricFamily;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use serde_json::json;
use tokio::net::TcpListener;

use crate::model::{Family, Model, Skipped};
use crate::server::ClientRegistry;
use crate::snapshot::json::snapshot_json;
use crate::snapshot::SnapshotCache;

/// What the admin endpoints read.
#[derive(Clone)]
pub struct Admin {
    /// Every source has completed its initial sync (and the first snapshot is published).
    pub ready: Arc<AtomicBool>,
    pub registry: Arc<Registry>,
    pub cache: SnapshotCache,
    pub clients: Arc<ClientRegistry>,
    /// Objects left out of the last publication, with their reasons.
    pub skipped: Arc<Mutex<Vec<Skipped>>>,
}

impl Admin {
    pub fn router(self) -> Router {
        Router::new()
            .route("/healthz", get(|| async { "ok\n" }))
            .route("/readyz", get(readyz))
            .route("/metrics", get(metrics))
            .route("/debug/resources", get(resources))
            .route("/debug/clients", get(clients))
            .with_state(self)
    }

    /// Serves until the process ends.
    pub async fn serve(self, listener: TcpListener) -> std::io::Result<()> {
        axum::serve(listener, self.router()).await
    }
}

async fn readyz(State(admin): State<Admin>) -> impl IntoResponse {
    if admin.ready.load(Ordering::SeqCst) {
        (StatusCode::OK, "ready\n")
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: waiting for the initial sync of every source\n",
        )
    }
}

async fn metrics(State(admin): State<Admin>) -> impl IntoResponse {
    let mut text = String::new();
    match prometheus_client::encoding::text::encode(&mut text, &admin.registry) {
        Ok(()) => (
            StatusCode::OK,
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            text,
        ),
        Err(error) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            [(header::CONTENT_TYPE, "text/plain")],
            error.to_string(),
        ),
    }
}

/// Every served resource with its version, per group of listener families, as
/// proto3 JSON; and every object left out, with its reason.
async fn resources(State(admin): State<Admin>) -> impl IntoResponse {
    let groups: serde_json::Map<String, serde_json::Value> = admin
        .cache
        .current()
        .map(|set| {
            set.groups()
                .map(|(group, snapshot)| (group.to_owned(), snapshot_json(snapshot)))
                .collect()
        })
        .unwrap_or_default();
    let skipped = admin
        .skipped
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    Json(json!({ "groups": groups, "skipped": skipped }))
}

/// Every connected stream: node, cluster, listener families, SotW or Delta, and per
/// type the acked version, the pending nonce and the last NACK.
async fn clients(State(admin): State<Admin>) -> impl IntoResponse {
    Json(admin.clients.clients())
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FamilyLabel {
    family: &'static str,
}

/// Metrics of the pipeline from sources to published snapshots (the registry adds the
/// `dualstack_xds_` prefix).
#[derive(Clone, Debug)]
pub struct PipelineMetrics {
    publishes: Counter,
    translation_seconds: Histogram,
    change_to_push_seconds: Histogram,
    endpoints: MetricFamily<FamilyLabel, Gauge>,
    skipped_objects: Gauge,
}

impl Default for PipelineMetrics {
    fn default() -> Self {
        PipelineMetrics {
            publishes: Counter::default(),
            // 50 µs .. ~3 s
            translation_seconds: Histogram::new(exponential_buckets(0.00005, 2.5, 13)),
            // 1 ms .. ~16 s
            change_to_push_seconds: Histogram::new(exponential_buckets(0.001, 2.2, 13)),
            endpoints: MetricFamily::default(),
            skipped_objects: Gauge::default(),
        }
    }
}

impl PipelineMetrics {
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "snapshot_publishes",
            "Snapshots published to the xDS streams",
            self.publishes.clone(),
        );
        registry.register(
            "translation_seconds",
            "Time to translate a change into snapshots",
            self.translation_seconds.clone(),
        );
        registry.register(
            "change_to_push_seconds",
            "Time from the first change of a burst (a watch event, a file event) to its publication, debouncing included",
            self.change_to_push_seconds.clone(),
        );
        registry.register(
            "endpoints",
            "Endpoints known, by family (duplicates across slices counted once per slice)",
            self.endpoints.clone(),
        );
        registry.register(
            "skipped_objects",
            "Invalid objects left out (see /debug/resources)",
            self.skipped_objects.clone(),
        );
    }

    /// Records one publication.
    pub fn published(
        &self,
        model: &Model,
        skipped: usize,
        translation: Duration,
        since: Option<Duration>,
    ) {
        self.publishes.inc();
        self.translation_seconds.observe(translation.as_secs_f64());
        if let Some(since) = since {
            self.change_to_push_seconds.observe(since.as_secs_f64());
        }
        for family in Family::BOTH {
            let count: usize = model.endpoints.values().map(|e| e.count(family)).sum();
            self.endpoints
                .get_or_create(&FamilyLabel {
                    family: family.as_str(),
                })
                .set(count as i64);
        }
        self.skipped_objects.set(skipped as i64);
    }

    /// Publications so far.
    pub fn publishes(&self) -> u64 {
        self.publishes.get()
    }
}
