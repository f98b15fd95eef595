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

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LimitLabels {
    limit: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

/// Every limit, as metrics label it.
pub const LIMITS: [&str; 7] = [
    "streams",
    "streams_per_connection",
    "request_bytes",
    "names_per_request",
    "requests_per_second",
    "idle_timeout",
    "keepalive",
];

/// xDS metrics (names get the `dualstack_xds_` prefix from the registry). Cloning shares
/// the series.
#[derive(Clone, Debug, Default)]
pub struct XdsMetrics {
    connected_clients: Family<KindLabels, Gauge>,
    responses: Family<TypeLabels, Counter>,
    nacks: Family<TypeLabels, Counter>,
    limits_exceeded: Family<LimitLabels, Counter>,
    authorization_denied: Family<ReasonLabels, Counter>,
    tls_handshake_failures: Counter,
    tls_reloads: Family<ResultLabels, Counter>,
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
        registry.register(
            "limit_exceeded",
            "Requests, streams and connections refused or closed by a limit, by limit",
            self.limits_exceeded.clone(),
        );
        registry.register(
            "authorization_denied",
            "Clients refused because their certificate does not authorize the node they claim (PermissionDenied), by reason",
            self.authorization_denied.clone(),
        );
        registry.register(
            "tls_handshake_failures",
            "TLS handshakes on the xDS port that failed or timed out (no or a wrong client certificate, plaintext)",
            self.tls_handshake_failures.clone(),
        );
        registry.register(
            "tls_reloads",
            "Rotations of the xDS port's TLS files, by result (ok, error: the files in use stay)",
            self.tls_reloads.clone(),
        );
        // Zero from the start, so alerts see the series.
        for limit in LIMITS {
            self.limits_exceeded
                .get_or_create(&LimitLabels { limit })
                .get();
        }
        for reason in ["no_identity", "mismatch"] {
            self.authorization_denied
                .get_or_create(&ReasonLabels { reason })
                .get();
        }
        for result in ["ok", "error"] {
            self.tls_reloads
                .get_or_create(&ResultLabels { result })
                .get();
        }
    }

    pub(crate) fn limit_exceeded(&self, limit: &'static str) {
        self.limits_exceeded
            .get_or_create(&LimitLabels { limit })
            .inc();
    }

    /// Times a limit was hit.
    pub fn limits_exceeded(&self, limit: &'static str) -> u64 {
        self.limits_exceeded
            .get_or_create(&LimitLabels { limit })
            .get()
    }

    pub(crate) fn authorization_denied(&self, reason: &'static str) {
        self.authorization_denied
            .get_or_create(&ReasonLabels { reason })
            .inc();
    }

    pub(crate) fn tls_handshake_failed(&self) {
        self.tls_handshake_failures.inc();
    }

    pub(crate) fn tls_reloaded(&self, ok: bool) {
        let result = if ok { "ok" } else { "error" };
        self.tls_reloads
            .get_or_create(&ResultLabels { result })
            .inc();
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
