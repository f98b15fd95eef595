//! The Kubernetes API as a source: kube-rs watchers for Services (by label selector),
//! EndpointSlices (every slice that names a Service, joined in memory), the one mode
//! ConfigMap (by field selector on its name), in the namespaces given or all of them, and
//! each Secret a Service terminates TLS with (by field selector on its name, started and
//! stopped as Services name them: no other Secret is ever read).
//!
//! One generic watch serves every kind: kube's watcher with its default backoff, each
//! object converted into a model change as it arrives (nothing else of it is kept), errors
//! counted. [`KubeState`] (no I/O) turns the events into changes, buffering relists;
//! [`run`] debounces them into [`SourceEvent`]s.

mod state;

use std::fmt::Debug;

use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service as K8sService};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Client};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use serde::de::DeserializeOwned;
use tokio::sync::mpsc;

use super::convert::{Convert, SERVICE_NAME_LABEL};
use super::debounce::{Debounce, Debouncer, Instant};
use super::{Sink, SourceEvent};
use crate::model::{ObjectKey, ObjectKind};
pub use state::{Converted, KubeState, SecretWatches};

/// What to watch.
#[derive(Clone, Debug)]
pub struct Scope {
    /// Label selector for Services (`--service-selector`), in Kubernetes syntax.
    pub service_selector: String,
    /// Namespaces to watch; all when empty.
    pub namespaces: Vec<String>,
    /// The mode ConfigMap (`--config-map NAMESPACE/NAME`).
    pub config_map: ObjectKey,
    /// Watch the Secrets that Services terminating TLS name (`--tls-termination`).
    pub secrets: bool,
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
        for kind in ObjectKind::ALL {
            self.counter(kind).get();
        }
    }

    fn counter(&self, kind: ObjectKind) -> Counter {
        self.watch_errors
            .get_or_create(&KindLabel {
                kind: kind.as_str(),
            })
            .clone()
    }

    /// Watch errors so far, all kinds.
    pub fn watch_errors(&self) -> u64 {
        ObjectKind::ALL
            .into_iter()
            .map(|kind| self.counter(kind).get())
            .sum()
    }
}

/// What a watcher reports: an event, or `None` when a request failed (the watcher
/// retries with kube's default backoff).
pub type Reported = Option<watcher::Event<Converted>>;

type TaggedStream = std::pin::Pin<Box<dyn Stream<Item = (usize, Reported)> + Send>>;

/// The events of one watcher (`id`), objects converted as they arrive; errors are
/// counted, logged and reported as `None`.
fn watch<K>(
    id: usize,
    api: Api<K>,
    config: watcher::Config,
    metrics: &SourceMetrics,
) -> TaggedStream
where
    K: Convert + kube::Resource + Clone + DeserializeOwned + Debug + Send + 'static,
{
    let errors = metrics.counter(K::KIND);
    let convert = |object: K| Converted {
        key: object.key(),
        change: object.change(),
    };
    Box::pin(
        watcher(api, config)
            .default_backoff()
            .filter_map(move |event| {
                let errors = errors.clone();
                async move {
                    match event {
                        Ok(event) => Some((
                            id,
                            Some(match event {
                                watcher::Event::Apply(o) => watcher::Event::Apply(convert(o)),
                                watcher::Event::Delete(o) => watcher::Event::Delete(convert(o)),
                                watcher::Event::Init => watcher::Event::Init,
                                watcher::Event::InitApply(o) => {
                                    watcher::Event::InitApply(convert(o))
                                }
                                watcher::Event::InitDone => watcher::Event::InitDone,
                            }),
                        )),
                        Err(error) => {
                            errors.inc();
                            if K::KIND == ObjectKind::Secret {
                                tracing::warn!(kind = %K::KIND, %error, "reading a TLS Secret failed; the Services using it are not served until it is read (grant get/list/watch on Secrets, or run with --tls-termination=false); retrying with backoff");
                            } else {
                                tracing::warn!(kind = %K::KIND, %error, "Kubernetes watch failed; retrying with backoff and serving the last state");
                            }
                            Some((id, None))
                        }
                    }
                }
            }),
    )
}

/// The API for `K` in one namespace, or in all.
fn api<K>(client: &Client, namespace: Option<&str>) -> Api<K>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
    K::DynamicType: Default,
{
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// The watchers of a scope, as they are added: their streams and the kind each watches.
struct Watchers<'a> {
    client: &'a Client,
    metrics: &'a SourceMetrics,
    streams: Vec<TaggedStream>,
    kinds: Vec<ObjectKind>,
}

impl Watchers<'_> {
    fn add<K>(&mut self, namespace: Option<&str>, config: watcher::Config)
    where
        K: Convert + kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
        K: Clone + DeserializeOwned + Debug + Send + 'static,
        K::DynamicType: Default,
    {
        let id = self.streams.len();
        self.streams.push(watch::<K>(
            id,
            api(self.client, namespace),
            config,
            self.metrics,
        ));
        self.kinds.push(K::KIND);
    }
}

/// Starts the watch of one Secret, as watcher `id`.
pub type SecretWatch = Box<dyn Fn(usize, &ObjectKey) -> TaggedStream + Send>;

/// The Secret watch of a scope that watches Secrets.
fn secret_watch(client: &Client, scope: &Scope, metrics: &SourceMetrics) -> Option<SecretWatch> {
    if !scope.secrets {
        return None;
    }
    let client = client.clone();
    let metrics = metrics.clone();
    Some(Box::new(move |id, key: &ObjectKey| {
        let config = watcher::Config::default().fields(&format!("metadata.name={}", key.name));
        watch::<Secret>(id, api(&client, Some(&key.namespace)), config, &metrics)
    }))
}

/// Every watcher the scope needs, and the kind each watches.
fn watchers(
    client: &Client,
    scope: &Scope,
    metrics: &SourceMetrics,
) -> (Vec<TaggedStream>, Vec<ObjectKind>) {
    let mut watchers = Watchers {
        client,
        metrics,
        streams: Vec::new(),
        kinds: Vec::new(),
    };
    let namespaces: Vec<Option<&str>> = if scope.namespaces.is_empty() {
        vec![None]
    } else {
        scope.namespaces.iter().map(|n| Some(n.as_str())).collect()
    };
    for namespace in namespaces {
        let services = watcher::Config::default().labels(&scope.service_selector);
        watchers.add::<K8sService>(namespace, services);
        // Only slices that belong to a Service.
        let slices = watcher::Config::default().labels(SERVICE_NAME_LABEL);
        watchers.add::<EndpointSlice>(namespace, slices);
    }
    let config_map =
        watcher::Config::default().fields(&format!("metadata.name={}", scope.config_map.name));
    watchers.add::<ConfigMap>(Some(&scope.config_map.namespace), config_map);
    (watchers.streams, watchers.kinds)
}

/// The source: watches until the process ends, sending the changes of each debounced
/// burst of events, and `Synced` once every watcher has completed its first list.
pub async fn run(
    client: Client,
    scope: Scope,
    debounce: Debounce,
    metrics: SourceMetrics,
    sink: impl Sink,
) {
    let (streams, kinds) = watchers(&client, &scope, &metrics);
    let secrets = secret_watch(&client, &scope, &metrics);
    follow(
        futures::stream::select_all(streams),
        kinds,
        secrets,
        debounce,
        sink,
    )
    .await;
}

/// Sends the events of `events` into `tx`, stamped with their arrival, until either ends.
fn forward(
    events: impl Stream<Item = (usize, Reported)> + Send + 'static,
    tx: mpsc::Sender<(Instant, (usize, Reported))>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut events = std::pin::pin!(events);
        while let Some(event) = events.next().await {
            if tx.send((Instant::now(), event)).await.is_err() {
                return;
            }
        }
    })
}

/// The source after its watches: `events` (the index of the watcher, which watches
/// `kinds[index]`, and what it reported) are applied to a [`KubeState`], debounced and sent to
/// `sink` until the stream ends. With `secrets`, the Secrets that Services name are
/// watched too, each by a watcher of its own. Benchmarks feed it directly.
pub async fn follow(
    events: impl Stream<Item = (usize, Reported)> + Send + 'static,
    kinds: Vec<ObjectKind>,
    secrets: Option<SecretWatch>,
    debounce: Debounce,
    mut sink: impl Sink,
) {
    let mut state = KubeState::new(kinds);
    if secrets.is_some() {
        state = state.with_secret_watches();
    }
    // Watchers wait when the pipeline falls behind: the channel is the only queue.
    let (events_tx, mut stamped) = mpsc::channel(256);
    // Secret watchers send into the same channel; without them it closes when `events`
    // ends (a benchmark's stream).
    let secrets_tx = secrets.as_ref().map(|_| events_tx.clone());
    forward(events, events_tx);
    let mut secret_watchers: std::collections::BTreeMap<usize, tokio::task::JoinHandle<()>> =
        std::collections::BTreeMap::new();
    let mut synced = false;
    let mut debouncer = Debouncer::new(debounce);
    let mut changes = Vec::new();
    loop {
        let Some(since) = debouncer
            .burst(&mut stamped, |(id, reported)| match reported {
                Some(event) => changes.extend(state.apply(id, event)),
                None => state.failed(id),
            })
            .await
        else {
            return;
        };
        if let (Some(watch), Some(tx)) = (&secrets, &secrets_tx) {
            let watches = state.secret_watches();
            for id in watches.stop {
                if let Some(task) = secret_watchers.remove(&id) {
                    task.abort();
                }
            }
            for (id, key) in watches.start {
                tracing::debug!(namespace = %key.namespace, name = %key.name, "watching a TLS Secret");
                secret_watchers.insert(id, forward(watch(id, &key), tx.clone()));
            }
            changes.extend(watches.changes);
        }
        let sending = Instant::now();
        if !changes.is_empty() {
            let changes = std::mem::take(&mut changes);
            sink.send(SourceEvent::Changes { changes, since });
        }
        if !synced && state.is_synced() {
            synced = true;
            tracing::info!("initial sync with the Kubernetes API complete");
            sink.send(SourceEvent::Synced);
        }
        debouncer.published(sending.elapsed());
    }
}
