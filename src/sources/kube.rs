//! The Kubernetes API as a source: kube-rs watchers for Services (by label selector),
//! EndpointSlices (every slice that names a Service, joined in memory) and the one mode
//! ConfigMap (by field selector on its name), in the namespaces given or all of them.
//!
//! [`KubeState`] applies watch events to a [`ModelStore`] and knows nothing of the
//! network: a relist (the watcher's `Init` .. `InitDone`, after a `410 Gone`, a
//! reconnect or a timeout) is buffered and applied as a whole, so clients never see a
//! Service vanish and come back; the source is ready once every watcher has completed
//! its first list. [`run`] is the glue: it starts the watchers (each with kube's default
//! backoff), feeds their events through debouncing, and publishes.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::{ConfigMap, Service as K8sService};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Client};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use tokio::sync::mpsc;

use super::debounce::{Debounce, Debouncer, Instant};
use super::objects::{key_of, Changed, ModelStore, ANNOTATION_PREFIX, SERVICE_NAME_LABEL};
use crate::model::{Model, ServiceKey};

/// What to watch.
#[derive(Clone, Debug)]
pub struct Scope {
    /// Label selector for Services (`--service-selector`), in Kubernetes syntax.
    pub service_selector: String,
    /// Namespaces to watch; all when empty.
    pub namespaces: Vec<String>,
    /// The mode ConfigMap (`--config-map NAMESPACE/NAME`).
    pub config_map: ServiceKey,
}

/// One watch event, by kind. (Moved once, through one channel: not worth a box.)
#[derive(Debug)]
#[allow(clippy::large_enum_variant)]
pub enum KindEvent {
    Service(watcher::Event<K8sService>),
    Slice(watcher::Event<EndpointSlice>),
    ConfigMap(watcher::Event<ConfigMap>),
}

/// A watched object of any kind, as the store takes it.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)]
enum Object {
    Service(K8sService),
    Slice(EndpointSlice),
    ConfigMap(ConfigMap),
}

#[derive(Clone, Copy, Debug)]
enum Kind {
    Service,
    Slice,
    ConfigMap,
}

impl Object {
    fn key(&self) -> ServiceKey {
        key_of(match self {
            Object::Service(o) => &o.metadata,
            Object::Slice(o) => &o.metadata,
            Object::ConfigMap(o) => &o.metadata,
        })
    }

    fn kind(&self) -> Kind {
        match self {
            Object::Service(_) => Kind::Service,
            Object::Slice(_) => Kind::Slice,
            Object::ConfigMap(_) => Kind::ConfigMap,
        }
    }

    fn upsert(self, store: &mut ModelStore) -> Changed {
        match self {
            Object::Service(o) => store.upsert_service(o),
            Object::Slice(o) => store.upsert_slice(o),
            Object::ConfigMap(o) => store.set_config_map(Some(o)),
        }
    }
}

impl Kind {
    fn remove(self, store: &mut ModelStore, key: &ServiceKey) -> Changed {
        match self {
            Kind::Service => store.remove_service(key),
            Kind::Slice => store.remove_slice(key),
            // One ConfigMap is watched (by name): its removal is the ConfigMap's.
            Kind::ConfigMap => store.set_config_map(None),
        }
    }
}

impl KindEvent {
    /// The event with its object kind-erased, for the one way every kind is applied.
    fn into_object_event(self) -> watcher::Event<Object> {
        fn map<K>(event: watcher::Event<K>, wrap: fn(K) -> Object) -> watcher::Event<Object> {
            match event {
                watcher::Event::Apply(o) => watcher::Event::Apply(wrap(o)),
                watcher::Event::Delete(o) => watcher::Event::Delete(wrap(o)),
                watcher::Event::Init => watcher::Event::Init,
                watcher::Event::InitApply(o) => watcher::Event::InitApply(wrap(o)),
                watcher::Event::InitDone => watcher::Event::InitDone,
            }
        }
        match self {
            KindEvent::Service(e) => map(e, Object::Service),
            KindEvent::Slice(e) => map(e, Object::Slice),
            KindEvent::ConfigMap(e) => map(e, Object::ConfigMap),
        }
    }
}

#[derive(Debug, Default)]
struct WatcherState {
    /// Has completed a first list.
    synced: bool,
    /// The kind it watches (known once an object has passed).
    kind: Option<Kind>,
    /// What this watcher's last list and events hold (its share of the store).
    known: BTreeSet<ServiceKey>,
    /// A relist in progress: the objects listed so far.
    relist: Option<BTreeMap<ServiceKey, Object>>,
}

/// Watch events applied to the model. I/O-free.
#[derive(Debug)]
pub struct KubeState {
    store: ModelStore,
    watchers: Vec<WatcherState>,
}

impl KubeState {
    /// State for `watchers` watchers, none synced yet.
    pub fn new(watchers: usize) -> Self {
        KubeState {
            store: ModelStore::default(),
            watchers: (0..watchers).map(|_| WatcherState::default()).collect(),
        }
    }

    pub fn model(&self) -> &Model {
        self.store.model()
    }

    /// Every watcher has completed its first list.
    pub fn is_synced(&self) -> bool {
        self.watchers.iter().all(|w| w.synced)
    }

    /// Applies one event from watcher `id`; returns what it changed.
    pub fn apply(&mut self, id: usize, event: KindEvent) -> Changed {
        let store = &mut self.store;
        let w = &mut self.watchers[id];
        match event.into_object_event() {
            watcher::Event::Apply(o) => {
                w.kind = Some(o.kind());
                w.known.insert(o.key());
                o.upsert(store)
            }
            watcher::Event::Delete(o) => {
                let key = o.key();
                w.known.remove(&key);
                o.kind().remove(store, &key)
            }
            watcher::Event::Init => {
                w.relist = Some(BTreeMap::new());
                Changed::Nothing
            }
            watcher::Event::InitApply(o) => {
                w.kind = Some(o.kind());
                if let Some(listed) = &mut w.relist {
                    listed.insert(o.key(), o);
                }
                Changed::Nothing
            }
            watcher::Event::InitDone => finish_relist(store, w),
        }
    }
}

/// Replaces the watcher's share of the store with what the relist found, in one step.
fn finish_relist(store: &mut ModelStore, w: &mut WatcherState) -> Changed {
    w.synced = true;
    let mut changed = Changed::Nothing;
    let Some(listed) = w.relist.take() else {
        return changed;
    };
    if let Some(kind) = w.kind {
        for gone in w.known.iter().filter(|k| !listed.contains_key(*k)) {
            changed.merge(kind.remove(store, gone));
        }
    }
    w.known = listed.keys().cloned().collect();
    for (_, o) in listed {
        changed.merge(o.upsert(store));
    }
    changed
}

/// Drops what the product never reads before an object is stored: managed fields,
/// status, other controllers' annotations, labels it does not select on.
fn prune_meta(meta: &mut ObjectMeta, keep_label: Option<&str>) {
    meta.managed_fields = None;
    meta.owner_references = None;
    meta.finalizers = None;
    meta.generate_name = None;
    meta.uid = None;
    meta.creation_timestamp = None;
    meta.generation = None;
    if let Some(annotations) = &mut meta.annotations {
        annotations.retain(|k, _| k.starts_with(ANNOTATION_PREFIX));
        if annotations.is_empty() {
            meta.annotations = None;
        }
    }
    match (keep_label, &mut meta.labels) {
        (Some(keep), Some(labels)) => labels.retain(|k, _| k == keep),
        _ => meta.labels = None,
    }
}

pub fn prune_service(mut o: K8sService) -> K8sService {
    prune_meta(&mut o.metadata, None);
    o.status = None;
    if let Some(spec) = &mut o.spec {
        let ports = spec.ports.take();
        *spec = k8s_openapi::api::core::v1::ServiceSpec {
            ports,
            ..Default::default()
        };
    }
    o
}

pub fn prune_slice(mut o: EndpointSlice) -> EndpointSlice {
    prune_meta(&mut o.metadata, Some(SERVICE_NAME_LABEL));
    for e in &mut o.endpoints {
        e.hints = None;
        e.node_name = None;
        e.deprecated_topology = None;
        e.hostname = None;
        if let Some(r) = &mut e.target_ref {
            r.uid = None;
            r.resource_version = None;
            r.api_version = None;
            r.field_path = None;
        }
    }
    o
}

pub fn prune_config_map(mut o: ConfigMap) -> ConfigMap {
    prune_meta(&mut o.metadata, None);
    o.binary_data = None;
    if let Some(data) = &mut o.data {
        data.retain(|k, _| k == super::objects::CONFIG_PRIMARY_FAMILY_KEY);
    }
    o
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: &'static str,
}

/// Source metrics (the registry adds the `dualstack_xds_` prefix).
#[derive(Clone, Debug, Default)]
pub struct SourceMetrics {
    watch_errors: Family<KindLabel, Counter>,
}

impl SourceMetrics {
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "watch_errors",
            "Errors from Kubernetes watches (each is retried with backoff), by kind",
            self.watch_errors.clone(),
        );
        // Zero from the start, so dashboards and alerts see the series.
        for kind in ["Service", "EndpointSlice", "ConfigMap"] {
            self.watch_errors.get_or_create(&KindLabel { kind }).get();
        }
    }

    fn watch_error(&self, kind: &'static str) {
        self.watch_errors.get_or_create(&KindLabel { kind }).inc();
    }

    /// Watch errors so far, all kinds.
    pub fn watch_errors(&self) -> u64 {
        ["Service", "EndpointSlice", "ConfigMap"]
            .into_iter()
            .map(|kind| self.watch_errors.get_or_create(&KindLabel { kind }).get())
            .sum()
    }
}

/// One watcher's events, tagged with its index, errors counted and logged (the watcher
/// retries with kube's default backoff).
fn tagged<K, S>(
    id: usize,
    kind: &'static str,
    events: S,
    wrap: fn(watcher::Event<K>) -> KindEvent,
    metrics: SourceMetrics,
) -> impl Stream<Item = (usize, KindEvent)> + Send
where
    K: Send + 'static,
    S: Stream<Item = watcher::Result<watcher::Event<K>>> + Send,
{
    events.filter_map(move |event| {
        let metrics = metrics.clone();
        async move {
            match event {
                Ok(event) => Some((id, wrap(event))),
                Err(error) => {
                    metrics.watch_error(kind);
                    tracing::warn!(kind, %error, "Kubernetes watch failed; retrying with backoff and serving the last state");
                    None
                }
            }
        }
    })
}

type TaggedStream = std::pin::Pin<Box<dyn Stream<Item = (usize, KindEvent)> + Send>>;

/// Every watcher the scope needs, as tagged event streams, and their number.
fn watchers(client: Client, scope: &Scope, metrics: &SourceMetrics) -> (Vec<TaggedStream>, usize) {
    let mut streams: Vec<TaggedStream> = Vec::new();
    let namespaces: Vec<Option<&str>> = if scope.namespaces.is_empty() {
        vec![None]
    } else {
        scope.namespaces.iter().map(|n| Some(n.as_str())).collect()
    };
    for namespace in namespaces {
        let services: Api<K8sService> = match namespace {
            Some(ns) => Api::namespaced(client.clone(), ns),
            None => Api::all(client.clone()),
        };
        let config = watcher::Config::default().labels(&scope.service_selector);
        let id = streams.len();
        streams.push(Box::pin(tagged(
            id,
            "Service",
            watcher(services, config)
                .default_backoff()
                .modify(|o| *o = prune_service(std::mem::take(o))),
            KindEvent::Service,
            metrics.clone(),
        )));
        let slices: Api<EndpointSlice> = match namespace {
            Some(ns) => Api::namespaced(client.clone(), ns),
            None => Api::all(client.clone()),
        };
        // Only slices that belong to a Service.
        let config = watcher::Config::default().labels(SERVICE_NAME_LABEL);
        let id = streams.len();
        streams.push(Box::pin(tagged(
            id,
            "EndpointSlice",
            watcher(slices, config)
                .default_backoff()
                .modify(|o| *o = prune_slice(std::mem::take(o))),
            KindEvent::Slice,
            metrics.clone(),
        )));
    }
    let config_maps: Api<ConfigMap> = Api::namespaced(client, &scope.config_map.namespace);
    let config =
        watcher::Config::default().fields(&format!("metadata.name={}", scope.config_map.name));
    let id = streams.len();
    streams.push(Box::pin(tagged(
        id,
        "ConfigMap",
        watcher(config_maps, config)
            .default_backoff()
            .modify(|o| *o = prune_config_map(std::mem::take(o))),
        KindEvent::ConfigMap,
        metrics.clone(),
    )));
    let count = streams.len();
    (streams, count)
}

/// Watches until the process ends. Nothing is published until every watcher has
/// completed its first list; `ready` is set then. After that, each debounced burst of
/// events is published with what it changed and when its first event arrived.
pub async fn run(
    client: Client,
    scope: Scope,
    debounce: Debounce,
    metrics: SourceMetrics,
    ready: Arc<AtomicBool>,
    mut publish: impl FnMut(&Model, Changed, Instant),
) {
    let (streams, count) = watchers(client, &scope, &metrics);
    let mut state = KubeState::new(count);
    // Watchers wait when the model falls behind: the channel is the only queue.
    let (tx, mut rx) = mpsc::channel(256);
    tokio::spawn(async move {
        let mut all = futures::stream::select_all(streams);
        while let Some(event) = all.next().await {
            if tx.send((Instant::now(), event)).await.is_err() {
                return;
            }
        }
    });
    let mut pending = Changed::Nothing;
    let mut published = false;
    let mut debouncer = Debouncer::new(debounce);
    loop {
        let Some(start) = debouncer
            .burst(&mut rx, |(id, event)| {
                pending.merge(state.apply(id, event));
            })
            .await
        else {
            return;
        };
        if !state.is_synced() {
            continue;
        }
        let publishing = Instant::now();
        if !published {
            tracing::info!(
                services = state.model().services.len(),
                "initial sync with the Kubernetes API complete"
            );
            publish(state.model(), Changed::All, start);
            published = true;
            ready.store(true, Ordering::SeqCst);
        } else if !pending.is_nothing() {
            publish(state.model(), std::mem::take(&mut pending), start);
        }
        debouncer.published(publishing.elapsed());
        pending = Changed::Nothing;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Family;

    fn yaml<T: serde::de::DeserializeOwned>(text: &str) -> T {
        serde_yaml_ng::from_str(text).unwrap()
    }

    fn svc(name: &str) -> K8sService {
        yaml(&format!(
            "metadata: {{name: {name}, namespace: ns, resourceVersion: '1'}}\nspec: {{ports: [{{port: 80}}]}}"
        ))
    }

    fn slice(name: &str, service: &str) -> EndpointSlice {
        yaml(&format!(
            "metadata: {{name: {name}, namespace: ns, labels: {{kubernetes.io/service-name: {service}}}}}\naddressType: IPv4\nports: [{{port: 8080}}]\nendpoints: [{{addresses: [10.0.0.1]}}]"
        ))
    }

    fn key(name: &str) -> ServiceKey {
        ServiceKey {
            namespace: "ns".into(),
            name: name.into(),
        }
    }

    fn services(state: &KubeState) -> Vec<String> {
        state
            .model()
            .services
            .keys()
            .map(|k| k.name.clone())
            .collect()
    }

    #[test]
    fn synced_once_every_watcher_has_listed() {
        let mut state = KubeState::new(3);
        use watcher::Event::*;
        state.apply(0, KindEvent::Service(Init));
        state.apply(0, KindEvent::Service(InitApply(svc("web"))));
        state.apply(0, KindEvent::Service(InitDone));
        state.apply(1, KindEvent::Slice(Init));
        state.apply(1, KindEvent::Slice(InitDone));
        assert!(!state.is_synced());
        state.apply(2, KindEvent::ConfigMap(Init));
        let changed = state.apply(2, KindEvent::ConfigMap(InitDone));
        assert_eq!(changed, Changed::Nothing, "no ConfigMap: nothing to change");
        assert!(state.is_synced());
        assert_eq!(services(&state), ["web"]);
    }

    #[test]
    fn a_relist_is_applied_as_a_whole() {
        use watcher::Event::*;
        let mut state = KubeState::new(1);
        state.apply(0, KindEvent::Service(Init));
        state.apply(0, KindEvent::Service(InitApply(svc("a"))));
        state.apply(0, KindEvent::Service(InitApply(svc("b"))));
        state.apply(0, KindEvent::Service(InitDone));
        // A relist starts: nothing is withdrawn while it runs.
        state.apply(0, KindEvent::Service(Init));
        state.apply(0, KindEvent::Service(InitApply(svc("b"))));
        assert_eq!(services(&state), ["a", "b"]);
        let changed = state.apply(0, KindEvent::Service(InitDone));
        // a is gone (deleted while the watch was down); b is unchanged.
        assert_eq!(services(&state), ["b"]);
        assert_eq!(changed, Changed::Services([key("a")].into()));
    }

    #[test]
    fn events_after_the_list_apply_at_once() {
        use watcher::Event::*;
        let mut state = KubeState::new(2);
        state.apply(0, KindEvent::Service(Init));
        state.apply(0, KindEvent::Service(InitDone));
        state.apply(1, KindEvent::Slice(Init));
        state.apply(1, KindEvent::Slice(InitDone));
        assert_eq!(
            state.apply(0, KindEvent::Service(Apply(svc("web")))),
            Changed::Services([key("web")].into())
        );
        state.apply(1, KindEvent::Slice(Apply(slice("web-1", "web"))));
        assert_eq!(
            state.model().endpoints_of(&key("web")).count(Family::IPv4),
            1
        );
        state.apply(1, KindEvent::Slice(Delete(slice("web-1", "web"))));
        assert_eq!(
            state.model().endpoints_of(&key("web")).count(Family::IPv4),
            0
        );
        state.apply(0, KindEvent::Service(Delete(svc("web"))));
        assert!(services(&state).is_empty());
    }

    #[test]
    fn pruning_keeps_what_the_product_reads() {
        let mut o: K8sService = yaml(
            "metadata: {name: web, namespace: ns, labels: {app: web}, annotations: {dualstack-xds.io/failover: 'true', kubectl.kubernetes.io/last-applied-configuration: '{...}'}, managedFields: [{manager: kubectl}]}\nspec: {ports: [{port: 80, name: http, appProtocol: http}], selector: {app: web}, clusterIP: 10.0.0.10}\nstatus: {loadBalancer: {}}",
        );
        let converted = crate::sources::objects::service(&o).unwrap();
        o = prune_service(o);
        assert_eq!(crate::sources::objects::service(&o).unwrap(), converted);
        assert!(o.metadata.managed_fields.is_none() && o.status.is_none());
        assert_eq!(o.metadata.annotations.as_ref().unwrap().len(), 1);
        assert!(o.spec.as_ref().unwrap().selector.is_none());

        let s: EndpointSlice = yaml(
            "metadata: {name: web-1, namespace: ns, labels: {kubernetes.io/service-name: web, endpointslice.kubernetes.io/managed-by: x}}\naddressType: IPv6\nports: [{port: 8080}]\nendpoints: [{addresses: ['fd00::1'], nodeName: n1, zone: z1, targetRef: {kind: Pod, name: p, namespace: ns, uid: u}}]",
        );
        let converted = crate::sources::objects::endpoint_slice(&s).unwrap();
        let pruned = prune_slice(s);
        assert_eq!(
            crate::sources::objects::endpoint_slice(&pruned).unwrap(),
            converted
        );
        assert_eq!(pruned.metadata.labels.as_ref().unwrap().len(), 1);
    }
}
