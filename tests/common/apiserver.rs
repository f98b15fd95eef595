//! A fake Kubernetes API server for Services, EndpointSlices, ConfigMaps and Secrets, faithful to
//! the list/watch protocol as kube-rs (and client-go) use it:
//!
//! - every write takes the next `resourceVersion` (monotonic, global);
//! - list (with `limit`/`continue` paging) returns the collection's `resourceVersion`;
//!   watch from that version streams `ADDED`/`MODIFIED`/`DELETED` newline-delimited JSON
//!   events after it, an object leaving a label selector is sent as `DELETED`;
//! - `allowWatchBookmarks=true` gets `BOOKMARK` events carrying the current version;
//! - a watch or continue from a compacted version gets `410 Gone` (an `ERROR` event
//!   with an `Expired` Status), which forces a relist;
//! - `labelSelector` (`k=v`, `k==v`, `k!=v`, `k`, `!k`) and `fieldSelector`
//!   (`metadata.name`, `metadata.namespace`) filter lists and watches;
//! - `timeoutSeconds` ends a watch;
//! - a kind the caller's RBAC does not allow ([`FakeApiServer::forbid`]) gets
//!   `403 Forbidden` with a `Forbidden` Status, as the real server answers.
//!
//! Tests drive it with [`FakeApiServer::apply`], [`FakeApiServer::delete`],
//! [`FakeApiServer::expire`] (compaction: open watches end and must relist),
//! [`FakeApiServer::hold_lists`] and [`FakeApiServer::stop`] / [`FakeApiServer::start`].

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    Service,
    EndpointSlice,
    ConfigMap,
    Secret,
}

impl Kind {
    fn of(object: &Value) -> Kind {
        match object["kind"].as_str() {
            Some("Service") => Kind::Service,
            Some("EndpointSlice") => Kind::EndpointSlice,
            Some("ConfigMap") => Kind::ConfigMap,
            Some("Secret") => Kind::Secret,
            other => panic!("the fake API server does not serve kind {other:?}"),
        }
    }

    fn api_version(self) -> &'static str {
        match self {
            Kind::EndpointSlice => "discovery.k8s.io/v1",
            _ => "v1",
        }
    }

    fn name(self) -> &'static str {
        match self {
            Kind::Service => "Service",
            Kind::EndpointSlice => "EndpointSlice",
            Kind::ConfigMap => "ConfigMap",
            Kind::Secret => "Secret",
        }
    }

    /// The resource in URLs and RBAC rules.
    fn resource(self) -> &'static str {
        match self {
            Kind::Service => "services",
            Kind::EndpointSlice => "endpointslices",
            Kind::ConfigMap => "configmaps",
            Kind::Secret => "secrets",
        }
    }
}

/// One write, as watches replay it.
#[derive(Clone, Debug)]
struct Write {
    rv: u64,
    kind: Kind,
    /// `None` for a creation.
    old: Option<Value>,
    /// `None` for a deletion.
    new: Option<Value>,
}

#[derive(Debug, Default)]
struct Store {
    rv: u64,
    /// Writes at or below this version are compacted away.
    compacted: u64,
    objects: BTreeMap<(Kind, String, String), Value>,
    log: Vec<Write>,
    lists_held: bool,
    /// Latency of every list response (a large cluster's lists take time).
    list_delay: Duration,
    /// Requests served, by verb ("list" or "watch") and by resource and verb
    /// ("secrets list"), for assertions.
    requests: HashMap<String, u64>,
    /// Kinds the caller may not read.
    forbidden: std::collections::BTreeSet<Kind>,
}

struct Shared {
    store: Mutex<Store>,
    /// Bumped on every write, compaction and stop: wakes watches.
    changed: watch::Sender<u64>,
    /// Bumped to end every open watch (compaction, stop).
    generation: watch::Sender<u64>,
    bookmark_every: Duration,
}

pub struct FakeApiServer {
    shared: Arc<Shared>,
    addr: SocketAddr,
    server: Option<tokio::task::JoinHandle<()>>,
}

fn lock(shared: &Shared) -> std::sync::MutexGuard<'_, Store> {
    shared.store.lock().unwrap_or_else(|p| p.into_inner())
}

impl FakeApiServer {
    /// Starts on a free loopback port.
    pub async fn start_new() -> FakeApiServer {
        let (changed, _) = watch::channel(0);
        let (generation, _) = watch::channel(0);
        let shared = Arc::new(Shared {
            store: Mutex::new(Store::default()),
            changed,
            generation,
            bookmark_every: Duration::from_millis(500),
        });
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut server = FakeApiServer {
            shared,
            addr,
            server: None,
        };
        server.serve(listener);
        server
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A kubeconfig file for this server.
    pub fn kubeconfig(&self, dir: &std::path::Path) -> std::path::PathBuf {
        let path = dir.join("kubeconfig");
        std::fs::write(
            &path,
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster: {{server: \"{}\"}}\nusers:\n- name: fake\n  user: {{token: fake-token}}\ncontexts:\n- name: fake\n  context: {{cluster: fake, user: fake}}\ncurrent-context: fake\n",
                self.url()
            ),
        )
        .unwrap();
        path
    }

    fn serve(&mut self, listener: TcpListener) {
        let router = Router::new()
            .route("/api/v1/services", get(list_or_watch_all_services))
            .route(
                "/api/v1/namespaces/{ns}/services",
                get(list_or_watch_services),
            )
            .route("/api/v1/configmaps", get(list_or_watch_all_config_maps))
            .route(
                "/api/v1/namespaces/{ns}/configmaps",
                get(list_or_watch_config_maps),
            )
            .route("/api/v1/secrets", get(list_or_watch_all_secrets))
            .route(
                "/api/v1/namespaces/{ns}/secrets",
                get(list_or_watch_secrets),
            )
            .route(
                "/apis/discovery.k8s.io/v1/endpointslices",
                get(list_or_watch_all_slices),
            )
            .route(
                "/apis/discovery.k8s.io/v1/namespaces/{ns}/endpointslices",
                get(list_or_watch_slices),
            )
            .with_state(self.shared.clone());
        self.server = Some(tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        }));
    }

    /// Stops serving: the port refuses connections and open watches end.
    pub async fn stop(&mut self) {
        if let Some(server) = self.server.take() {
            server.abort();
            let _ = server.await;
        }
        self.shared.generation.send_modify(|g| *g += 1);
    }

    /// Serves again on the same port, with the same objects (etcd kept them).
    pub async fn start(&mut self) {
        let listener = loop {
            match TcpListener::bind(self.addr).await {
                Ok(l) => break l,
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        };
        self.serve(listener);
    }

    /// Creates or replaces an object (JSON with `kind` and `metadata`).
    pub fn apply(&self, mut object: Value) {
        let kind = Kind::of(&object);
        let ns = object["metadata"]["namespace"]
            .as_str()
            .unwrap_or("default")
            .to_owned();
        let name = object["metadata"]["name"].as_str().unwrap().to_owned();
        if let Some(Value::Object(strings)) = object.as_object_mut().unwrap().remove("stringData") {
            // Write-only: the server merges it into `data`, base64-encoded.
            for (key, value) in strings {
                let bytes = k8s_openapi::ByteString(value.as_str().unwrap().as_bytes().to_vec());
                object["data"][key] = serde_json::to_value(bytes).unwrap();
            }
        }
        let mut store = lock(&self.shared);
        store.rv += 1;
        let rv = store.rv;
        object["apiVersion"] = json!(kind.api_version());
        object["metadata"]["namespace"] = json!(ns);
        object["metadata"]["resourceVersion"] = json!(rv.to_string());
        let old = store.objects.insert((kind, ns, name), object.clone());
        store.log.push(Write {
            rv,
            kind,
            old,
            new: Some(object),
        });
        drop(store);
        self.shared.changed.send_modify(|v| *v += 1);
    }

    /// Deletes an object if present.
    pub fn delete(&self, kind: Kind, ns: &str, name: &str) {
        let mut store = lock(&self.shared);
        let Some(mut old) = store
            .objects
            .remove(&(kind, ns.to_owned(), name.to_owned()))
        else {
            return;
        };
        store.rv += 1;
        let rv = store.rv;
        old["metadata"]["resourceVersion"] = json!(rv.to_string());
        store.log.push(Write {
            rv,
            kind,
            old: Some(old),
            new: None,
        });
        drop(store);
        self.shared.changed.send_modify(|v| *v += 1);
    }

    /// Compacts history: every version up to now is gone, open watches end, and a
    /// client resuming from an old version gets `410 Gone` and must relist.
    pub fn expire(&self) {
        let mut store = lock(&self.shared);
        // Writes elsewhere moved the version on, then history was compacted.
        store.rv += 1;
        store.compacted = store.rv;
        store.log.clear();
        drop(store);
        self.shared.generation.send_modify(|g| *g += 1);
    }

    /// While held, list requests wait (the initial sync does not complete).
    pub fn hold_lists(&self, held: bool) {
        lock(&self.shared).lists_held = held;
        self.shared.changed.send_modify(|v| *v += 1);
    }

    /// Makes every list response take `delay`.
    pub fn slow_lists(&self, delay: Duration) {
        lock(&self.shared).list_delay = delay;
    }

    /// From now on, reading `kind` is refused with `403 Forbidden` (RBAC without it).
    pub fn forbid(&self, kind: Kind) {
        lock(&self.shared).forbidden.insert(kind);
    }

    /// How many list or watch requests were served (`what` is "list" or "watch", a
    /// resource and verb: "secrets watch", or those and a field selector: "secrets list
    /// metadata.name=tls"), refused ones included.
    pub fn requests(&self, what: &str) -> u64 {
        lock(&self.shared).requests.get(what).copied().unwrap_or(0)
    }
}

impl Drop for FakeApiServer {
    fn drop(&mut self) {
        if let Some(server) = self.server.take() {
            server.abort();
        }
        self.shared.generation.send_modify(|g| *g += 1);
    }
}

type Params = Query<HashMap<String, String>>;
type SharedState = State<Arc<Shared>>;

async fn list_or_watch_all_services(s: SharedState, q: Params) -> Response {
    handle(s.0, Kind::Service, None, q.0).await
}
async fn list_or_watch_services(s: SharedState, Path(ns): Path<String>, q: Params) -> Response {
    handle(s.0, Kind::Service, Some(ns), q.0).await
}
async fn list_or_watch_all_config_maps(s: SharedState, q: Params) -> Response {
    handle(s.0, Kind::ConfigMap, None, q.0).await
}
async fn list_or_watch_config_maps(s: SharedState, Path(ns): Path<String>, q: Params) -> Response {
    handle(s.0, Kind::ConfigMap, Some(ns), q.0).await
}
async fn list_or_watch_all_secrets(s: SharedState, q: Params) -> Response {
    handle(s.0, Kind::Secret, None, q.0).await
}
async fn list_or_watch_secrets(s: SharedState, Path(ns): Path<String>, q: Params) -> Response {
    handle(s.0, Kind::Secret, Some(ns), q.0).await
}
async fn list_or_watch_all_slices(s: SharedState, q: Params) -> Response {
    handle(s.0, Kind::EndpointSlice, None, q.0).await
}
async fn list_or_watch_slices(s: SharedState, Path(ns): Path<String>, q: Params) -> Response {
    handle(s.0, Kind::EndpointSlice, Some(ns), q.0).await
}

/// What a request selects.
#[derive(Clone, Debug)]
struct Selection {
    kind: Kind,
    namespace: Option<String>,
    labels: Vec<LabelRequirement>,
    fields: Vec<(String, bool, String)>,
}

#[derive(Clone, Debug)]
enum LabelRequirement {
    Equals(String, String),
    NotEquals(String, String),
    Exists(String),
    NotExists(String),
}

fn parse_labels(selector: &str) -> Result<Vec<LabelRequirement>, String> {
    selector
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|part| {
            if let Some((k, v)) = part.split_once("!=") {
                Ok(LabelRequirement::NotEquals(
                    k.trim().into(),
                    v.trim().into(),
                ))
            } else if let Some((k, v)) = part.split_once("==").or_else(|| part.split_once('=')) {
                Ok(LabelRequirement::Equals(k.trim().into(), v.trim().into()))
            } else if let Some(k) = part.strip_prefix('!') {
                Ok(LabelRequirement::NotExists(k.trim().into()))
            } else if part.contains(' ') {
                Err(format!("unsupported label selector {part:?}"))
            } else {
                Ok(LabelRequirement::Exists(part.into()))
            }
        })
        .collect()
}

fn parse_fields(selector: &str) -> Result<Vec<(String, bool, String)>, String> {
    selector
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|part| {
            let (field, equal, value) = if let Some((k, v)) = part.split_once("!=") {
                (k, false, v)
            } else if let Some((k, v)) = part.split_once("==").or_else(|| part.split_once('=')) {
                (k, true, v)
            } else {
                return Err(format!("invalid field selector {part:?}"));
            };
            match field {
                "metadata.name" | "metadata.namespace" => {
                    Ok((field.to_owned(), equal, value.to_owned()))
                }
                other => Err(format!("field label not supported: {other}")),
            }
        })
        .collect()
}

impl Selection {
    fn matches(&self, object: &Value) -> bool {
        let meta = &object["metadata"];
        if let Some(ns) = &self.namespace {
            if meta["namespace"].as_str() != Some(ns) {
                return false;
            }
        }
        let label = |k: &str| meta["labels"][k].as_str();
        let labels_ok = self.labels.iter().all(|r| match r {
            LabelRequirement::Equals(k, v) => label(k) == Some(v),
            LabelRequirement::NotEquals(k, v) => label(k) != Some(v),
            LabelRequirement::Exists(k) => label(k).is_some(),
            LabelRequirement::NotExists(k) => label(k).is_none(),
        });
        let fields_ok = self.fields.iter().all(|(field, equal, value)| {
            let actual = match field.as_str() {
                "metadata.name" => meta["name"].as_str(),
                _ => meta["namespace"].as_str(),
            };
            (actual == Some(value.as_str())) == *equal
        });
        labels_ok && fields_ok
    }
}

fn status(code: u16, reason: &str, message: &str) -> Value {
    json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    })
}

fn error_response(code: StatusCode, reason: &str, message: &str) -> Response {
    (
        code,
        [(header::CONTENT_TYPE, "application/json")],
        status(code.as_u16(), reason, message).to_string(),
    )
        .into_response()
}

async fn handle(
    shared: Arc<Shared>,
    kind: Kind,
    namespace: Option<String>,
    params: HashMap<String, String>,
) -> Response {
    let labels = match parse_labels(params.get("labelSelector").map_or("", String::as_str)) {
        Ok(l) => l,
        Err(e) => return error_response(StatusCode::BAD_REQUEST, "BadRequest", &e),
    };
    let fields = match parse_fields(params.get("fieldSelector").map_or("", String::as_str)) {
        Ok(f) => f,
        Err(e) => return error_response(StatusCode::BAD_REQUEST, "BadRequest", &e),
    };
    let selection = Selection {
        kind,
        namespace,
        labels,
        fields,
    };
    let watch = matches!(params.get("watch").map(String::as_str), Some("true" | "1"));
    let verb = if watch { "watch" } else { "list" };
    let forbidden = {
        let mut store = lock(&shared);
        let mut keys = vec![verb.to_owned(), format!("{} {verb}", kind.resource())];
        if let Some(fields) = params.get("fieldSelector").filter(|f| !f.is_empty()) {
            keys.push(format!("{} {verb} {fields}", kind.resource()));
        }
        for key in keys {
            *store.requests.entry(key).or_default() += 1;
        }
        store.forbidden.contains(&kind)
    };
    if forbidden {
        let scope = match &selection.namespace {
            Some(ns) => format!("in the namespace \"{ns}\""),
            None => "at the cluster scope".to_owned(),
        };
        let message = format!(
            "{} is forbidden: User \"system:serviceaccount:dualstack-xds:dualstack-xds\" cannot {verb} resource \"{}\" in API group \"\" {scope}",
            kind.resource(),
            kind.resource()
        );
        return error_response(StatusCode::FORBIDDEN, "Forbidden", &message);
    }
    if watch {
        watch_response(shared, selection, &params)
    } else {
        list_response(shared, selection, &params).await
    }
}

async fn list_response(
    shared: Arc<Shared>,
    selection: Selection,
    params: &HashMap<String, String>,
) -> Response {
    let mut changed = shared.changed.subscribe();
    while lock(&shared).lists_held {
        if changed.changed().await.is_err() {
            break;
        }
    }
    let delay = lock(&shared).list_delay;
    tokio::time::sleep(delay).await;
    let store = lock(&shared);
    // A continue token is "<list version>:<items already returned>".
    let (list_rv, offset) = match params.get("continue").filter(|c| !c.is_empty()) {
        Some(token) => {
            let parsed = token
                .split_once(':')
                .and_then(|(rv, off)| Some((rv.parse::<u64>().ok()?, off.parse::<usize>().ok()?)));
            match parsed {
                Some((rv, _)) if rv < store.compacted => {
                    return error_response(
                        StatusCode::GONE,
                        "Expired",
                        "The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter.",
                    )
                }
                Some(p) => p,
                None => {
                    return error_response(StatusCode::BAD_REQUEST, "BadRequest", "invalid continue token")
                }
            }
        }
        None => (store.rv, 0),
    };
    let limit = params
        .get("limit")
        .and_then(|l| l.parse::<usize>().ok())
        .filter(|l| *l > 0);
    let all: Vec<&Value> = store
        .objects
        .iter()
        .filter(|((k, _, _), o)| *k == selection.kind && selection.matches(o))
        .map(|(_, o)| o)
        .collect();
    let end = limit.map_or(all.len(), |l| (offset + l).min(all.len()));
    let items: Vec<Value> = all[offset.min(all.len())..end]
        .iter()
        .map(|o| {
            // Items in a list carry no kind or apiVersion.
            let mut o = (*o).clone();
            if let Some(map) = o.as_object_mut() {
                map.remove("kind");
                map.remove("apiVersion");
            }
            o
        })
        .collect();
    let mut metadata = json!({ "resourceVersion": list_rv.to_string() });
    if end < all.len() {
        metadata["continue"] = json!(format!("{list_rv}:{end}"));
        metadata["remainingItemCount"] = json!(all.len() - end);
    }
    let body = json!({
        "kind": format!("{}List", selection.kind.name()),
        "apiVersion": selection.kind.api_version(),
        "metadata": metadata,
        "items": items,
    });
    (
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

fn event(ty: &str, object: &Value) -> bytes::Bytes {
    let mut line = json!({ "type": ty, "object": object }).to_string();
    line.push('\n');
    bytes::Bytes::from(line)
}

fn watch_response(
    shared: Arc<Shared>,
    selection: Selection,
    params: &HashMap<String, String>,
) -> Response {
    let from: u64 = params
        .get("resourceVersion")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let bookmarks = params.get("allowWatchBookmarks").map(String::as_str) == Some("true");
    let timeout = params
        .get("timeoutSeconds")
        .and_then(|t| t.parse::<u64>().ok())
        .map(Duration::from_secs);
    let (tx, rx) = mpsc::channel::<Result<bytes::Bytes, std::io::Error>>(64);
    let mut changed = shared.changed.subscribe();
    let mut generation = shared.generation.subscribe();
    generation.mark_unchanged();
    tokio::spawn(async move {
        let deadline = timeout.map(|t| tokio::time::Instant::now() + t);
        // The first events: the current state for "any" version, 410 for a compacted one.
        let (first, mut sent, gone) = {
            let store = lock(&shared);
            if from == 0 {
                let events: Vec<_> = store
                    .objects
                    .iter()
                    .filter(|((k, _, _), o)| *k == selection.kind && selection.matches(o))
                    .map(|(_, o)| event("ADDED", o))
                    .collect();
                (events, store.rv, false)
            } else if from < store.compacted {
                let gone = status(
                    410,
                    "Expired",
                    &format!("too old resource version: {from} ({})", store.compacted),
                );
                (vec![event("ERROR", &gone)], from, true)
            } else {
                (Vec::new(), from, false)
            }
        };
        for e in first {
            if tx.send(Ok(e)).await.is_err() {
                return;
            }
        }
        if gone {
            return;
        }
        let mut bookmark = tokio::time::interval(shared.bookmark_every);
        bookmark.tick().await;
        loop {
            let pending: Vec<bytes::Bytes> = {
                let store = lock(&shared);
                if sent < store.compacted {
                    let gone = status(410, "Expired", "too old resource version");
                    vec![event("ERROR", &gone)]
                } else {
                    let out = store
                        .log
                        .iter()
                        .filter(|w| w.rv > sent && w.kind == selection.kind)
                        .filter_map(|w| {
                            let was = w.old.as_ref().is_some_and(|o| selection.matches(o));
                            let is = w.new.as_ref().is_some_and(|o| selection.matches(o));
                            match (was, is, &w.new) {
                                (false, true, Some(new)) => Some(event("ADDED", new)),
                                (true, true, Some(new)) => Some(event("MODIFIED", new)),
                                (true, false, Some(new)) => Some(event("DELETED", new)),
                                (true, false, None) => {
                                    Some(event("DELETED", w.old.as_ref().unwrap()))
                                }
                                _ => None,
                            }
                        })
                        .collect();
                    sent = store.rv;
                    out
                }
            };
            for e in pending {
                if tx.send(Ok(e)).await.is_err() {
                    return;
                }
            }
            let sleep_until =
                deadline.unwrap_or_else(|| tokio::time::Instant::now() + Duration::from_secs(3600));
            tokio::select! {
                r = changed.changed() => if r.is_err() { return },
                _ = generation.changed() => return,
                _ = bookmark.tick() => {
                    if bookmarks {
                        let object = json!({
                            "kind": selection.kind.name(),
                            "apiVersion": selection.kind.api_version(),
                            "metadata": { "resourceVersion": sent.to_string() },
                        });
                        if tx.send(Ok(event("BOOKMARK", &object))).await.is_err() {
                            return;
                        }
                    }
                }
                _ = tokio::time::sleep_until(sleep_until) => return,
            }
        }
    });
    (
        [(header::CONTENT_TYPE, "application/json")],
        Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(rx)),
    )
        .into_response()
}
