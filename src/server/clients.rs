//! Who is connected and what they were sent, acked and rejected: the source of
//! `/debug/clients`, CSDS and the xDS metrics.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::protocol::{StreamKind, StreamStatus};
use crate::snapshot::ResourceType;

/// Connected streams, each updating its own entry (no lock shared by all streams on
/// the hot path but the map insert and remove at connect and disconnect).
#[derive(Debug, Default)]
pub struct ClientRegistry {
    next_id: AtomicU64,
    streams: Mutex<BTreeMap<u64, Arc<Mutex<StreamStatus>>>>,
    pub metrics: XdsMetrics,
}

impl ClientRegistry {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Registers a stream until the returned handle is dropped.
    pub(crate) fn connect(self: &Arc<Self>, status: StreamStatus) -> ClientHandle {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.metrics.connected(status.kind).inc();
        let entry = Arc::new(Mutex::new(status));
        lock(&self.streams).insert(id, entry.clone());
        ClientHandle {
            id,
            entry,
            registry: self.clone(),
        }
    }

    /// Every connected stream's status, in connection order.
    pub fn clients(&self) -> Vec<StreamStatus> {
        let entries: Vec<_> = lock(&self.streams).values().cloned().collect();
        entries.iter().map(|e| lock(e).clone()).collect()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// One stream's entry in the registry; removes it when dropped.
pub(crate) struct ClientHandle {
    id: u64,
    entry: Arc<Mutex<StreamStatus>>,
    registry: Arc<ClientRegistry>,
}

impl ClientHandle {
    pub(crate) fn update(&self, status: StreamStatus) {
        *lock(&self.entry) = status;
    }
}

impl Drop for ClientHandle {
    fn drop(&mut self) {
        let kind = lock(&self.entry).kind;
        lock(&self.registry.streams).remove(&self.id);
        self.registry.metrics.connected(kind).dec();
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TypeLabels {
    r#type: &'static str,
}

/// xDS metrics (names get the `dualstack_xds_` prefix from the registry).
#[derive(Debug, Default)]
pub struct XdsMetrics {
    connected_clients: Family<KindLabels, Gauge>,
    responses: Family<TypeLabels, Counter>,
    nacks: Family<TypeLabels, Counter>,
}

impl XdsMetrics {
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "connected_clients",
            "Connected xDS streams by kind (sotw, delta)",
            self.connected_clients.clone(),
        );
        registry.register(
            "responses",
            "xDS responses sent, by resource type",
            self.responses.clone(),
        );
        registry.register(
            "nacks",
            "Responses rejected by clients (NACKs), by resource type",
            self.nacks.clone(),
        );
    }

    fn connected(&self, kind: StreamKind) -> Gauge {
        self.connected_clients
            .get_or_create(&KindLabels {
                kind: kind.as_str(),
            })
            .clone()
    }

    pub(crate) fn response_sent(&self, ty: ResourceType) {
        self.responses
            .get_or_create(&TypeLabels {
                r#type: ty.short_name(),
            })
            .inc();
    }

    pub(crate) fn nack(&self, ty: ResourceType) {
        self.nacks
            .get_or_create(&TypeLabels {
                r#type: ty.short_name(),
            })
            .inc();
    }

    /// NACKs received so far for a type.
    pub fn nacks(&self, ty: ResourceType) -> u64 {
        self.nacks
            .get_or_create(&TypeLabels {
                r#type: ty.short_name(),
            })
            .get()
    }

    /// Responses sent so far for a type.
    pub fn responses(&self, ty: ResourceType) -> u64 {
        self.responses
            .get_or_create(&TypeLabels {
                r#type: ty.short_name(),
            })
            .get()
    }
}
