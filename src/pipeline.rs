//! The middle of the product, in one place: source events -> model -> translation ->
//! publication.
//!
//! ```text
//!  kube::run | manifest_watch::run --SourceEvent--> Pipeline
//!      ModelStore (apply the changes; which Services they touched)
//!   -> Translator (those Services; one snapshot per group)
//!   -> SnapshotCache (publish; every xDS stream is woken)
//! ```
//!
//! Nothing is published until the source says its initial state is complete; then every
//! burst of changes is one publication. A change whose translation fails stays pending
//! and is retried with the next one; the last good configuration stays served.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family as MetricFamily;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use tracing::info;

use crate::model::{Changed, Family, Model, ModelStore, Skipped};
use crate::snapshot::SnapshotCache;
use crate::sources::debounce::Instant;
use crate::sources::{Sink, SourceEvent};
use crate::translate::Translator;

/// What the admin endpoints read of the pipeline.
#[derive(Clone, Debug, Default)]
pub struct PipelineStatus {
    ready: Arc<AtomicBool>,
    skipped: Arc<Mutex<Vec<Skipped>>>,
}

impl PipelineStatus {
    /// Every source has completed its initial sync and the first snapshot is published.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst)
    }

    /// Objects left out of the last publication, with their reasons.
    pub fn skipped(&self) -> Vec<Skipped> {
        self.skipped
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// Source events in, published snapshots out.
#[derive(Debug)]
pub struct Pipeline {
    store: ModelStore,
    translator: Translator,
    cache: SnapshotCache,
    metrics: PipelineMetrics,
    status: PipelineStatus,
    synced: bool,
    /// Applied to the model, not yet published (before the sync, or after a failed
    /// translation), and since when.
    pending: Changed,
    pending_since: Option<Instant>,
}

impl Pipeline {
    /// A pipeline publishing into `cache`, with `default_primary` as `--primary-family`.
    pub fn new(default_primary: Family, cache: SnapshotCache, metrics: PipelineMetrics) -> Self {
        Pipeline {
            store: ModelStore::default(),
            translator: Translator::new(default_primary),
            cache,
            metrics,
            status: PipelineStatus::default(),
            synced: false,
            pending: Changed::Nothing,
            pending_since: None,
        }
    }

    /// Reports Services that ask for TLS termination instead of serving them
    /// (`--tls-termination=false`).
    pub fn without_tls_termination(mut self) -> Self {
        self.translator = self.translator.without_tls_termination();
        self
    }

    /// Readiness and skipped objects, for the admin endpoints.
    pub fn status(&self) -> PipelineStatus {
        self.status.clone()
    }

    pub fn model(&self) -> &Model {
        self.store.model()
    }

    /// Translates what is pending and publishes it.
    fn publish(&mut self) {
        let started = std::time::Instant::now();
        let model = self.store.model();
        let result = self
            .translator
            .update(model, self.pending.services().as_ref());
        let translation = started.elapsed();
        let skipped: Vec<Skipped> = model
            .skipped()
            .chain(self.translator.conflicts().iter())
            .cloned()
            .collect();
        for s in &skipped {
            tracing::warn!(kind = %s.kind, namespace = %s.key.namespace, name = %s.key.name, reason = %s.reason, "skipping an invalid object");
        }
        match result {
            Ok(set) => {
                self.cache.publish(set);
                let since = self.pending_since.take().map(|s| s.elapsed());
                self.metrics
                    .published(model, skipped.len(), translation, since);
                self.pending = Changed::Nothing;
                self.status.ready.store(true, Ordering::SeqCst);
                info!(
                    services = model.services.len(),
                    translation_ms = translation.as_secs_f64() * 1e3,
                    "configuration published"
                );
            }
            Err(error) => {
                tracing::error!(%error, "not publishing an inconsistent snapshot; the last one stays served and the change is retried with the next")
            }
        }
        *self
            .status
            .skipped
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = skipped;
    }
}

impl Sink for Pipeline {
    fn send(&mut self, event: SourceEvent) {
        match event {
            SourceEvent::Changes { changes, since } => {
                let changed = self.store.apply_all(changes);
                if changed.is_nothing() {
                    return;
                }
                self.pending.merge(changed);
                self.pending_since = Some(self.pending_since.map_or(since, |s| s.min(since)));
                if self.synced {
                    self.publish();
                }
            }
            SourceEvent::Synced if !self.synced => {
                self.synced = true;
                self.pending = Changed::All;
                self.publish();
            }
            SourceEvent::Synced => {}
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{ModelChange, ObjectKey, PortKind, Service};
    use crate::snapshot::ResourceType;

    fn service(name: &str) -> ModelChange {
        let key = ObjectKey::new("ns", name);
        ModelChange::Service(key.clone(), Ok(Service::one_port(key, 80, PortKind::Tcp)))
    }

    fn changes(changes: Vec<ModelChange>) -> SourceEvent {
        SourceEvent::Changes {
            changes,
            since: Instant::now(),
        }
    }

    fn clusters(cache: &SnapshotCache) -> Vec<String> {
        let set = cache.current().expect("published");
        set.get("IPv4,IPv6")
            .unwrap()
            .resources(ResourceType::Cluster)
            .iter()
            .map(|r| r.name().to_string())
            .collect()
    }

    #[test]
    fn nothing_is_published_before_the_sync() {
        let cache = SnapshotCache::new();
        let mut pipeline = Pipeline::new(Family::IPv4, cache.clone(), Default::default());
        pipeline.send(changes(vec![service("a")]));
        assert!(cache.current().is_none());
        assert!(!pipeline.status().is_ready());
        pipeline.send(SourceEvent::Synced);
        assert_eq!(clusters(&cache), ["ns/a:80"]);
        assert!(pipeline.status().is_ready());
        pipeline.send(changes(vec![service("b")]));
        assert_eq!(clusters(&cache), ["ns/a:80", "ns/b:80"]);
        assert_eq!(pipeline.metrics.publishes(), 2);
    }

    #[test]
    fn a_change_whose_translation_failed_is_published_with_the_next() {
        let cache = SnapshotCache::new();
        let mut pipeline = Pipeline::new(Family::IPv4, cache.clone(), Default::default());
        pipeline.send(SourceEvent::Synced);
        pipeline.translator.fail_next_build = true;
        pipeline.send(changes(vec![service("a")]));
        assert!(
            clusters(&cache).is_empty(),
            "the failed build published nothing"
        );
        pipeline.send(changes(vec![service("b")]));
        assert_eq!(clusters(&cache), ["ns/a:80", "ns/b:80"]);
    }
}
