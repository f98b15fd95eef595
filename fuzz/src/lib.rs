//! What the protocol fuzz targets share: the input read as a script of client requests
//! and snapshot publications, two snapshot sets made by the real translator, and the
//! invariants every stream must keep whatever the client sends.

use dualstack_xds::model::{
    Family, ModelChange, ModelStore, ObjectKey, PortKind, Service, ServicePort,
};
use dualstack_xds::snapshot::{ResourceType, SnapshotSet};
use dualstack_xds::translate::Translator;

/// The fuzz input, read a little at a time; zeros once it runs out.
pub struct Script<'a>(pub &'a [u8]);

impl Script<'_> {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn byte(&mut self) -> u8 {
        let Some((first, rest)) = self.0.split_first() else {
            return 0;
        };
        self.0 = rest;
        *first
    }

    pub fn pick<'t, T>(&mut self, table: &'t [T]) -> &'t T {
        &table[self.byte() as usize % table.len()]
    }

    /// A short string: one of `known`, or raw bytes.
    pub fn string(&mut self, known: &[&str]) -> String {
        let choice = self.byte() as usize;
        if choice < 200 && !known.is_empty() {
            return known[choice % known.len()].to_owned();
        }
        let len = self.byte() as usize % 24;
        let bytes: Vec<u8> = (0..len).map(|_| self.byte()).collect();
        String::from_utf8_lossy(&bytes).into_owned()
    }

    pub fn strings(&mut self, known: &[&str]) -> Vec<String> {
        let n = self.byte() as usize % 6;
        (0..n).map(|_| self.string(known)).collect()
    }
}

/// Type URLs clients send: the served ones, and one that is not.
pub const TYPE_URLS: [&str; 6] = [
    "type.googleapis.com/envoy.config.cluster.v3.Cluster",
    "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment",
    "type.googleapis.com/envoy.config.listener.v3.Listener",
    "type.googleapis.com/envoy.config.route.v3.RouteConfiguration",
    "type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig",
    "",
];

/// Resource names of the snapshots, and the wildcard.
pub const NAMES: [&str; 8] = [
    "*",
    "shop/web:80",
    "shop/api:9090",
    "shop/web:80:ipv4",
    "shop/web:80:ipv6",
    "xds:///api.shop:9090",
    "shop/gone:1",
    "",
];

fn service(name: &str, port: u16, kind: PortKind) -> ModelChange {
    let key = ObjectKey::new("shop", name);
    ModelChange::Service(
        key.clone(),
        Ok(Service {
            key,
            ports: vec![ServicePort {
                name: String::new(),
                port,
                kind,
                listener_port: port,
            }],
            primary_family: None,
            failover: false,
            proxy_protocol: None,
            ingress: true,
            hosts: Vec::new(),
            tls: None,
        }),
    )
}

/// Two snapshot sets, translated from two models: the second flips the primary family
/// and drops a Service, so streams see upserts and removals between them. Made once.
pub fn snapshot_sets() -> &'static [SnapshotSet; 2] {
    static SETS: std::sync::OnceLock<[SnapshotSet; 2]> = std::sync::OnceLock::new();
    SETS.get_or_init(translate_sets)
}

fn translate_sets() -> [SnapshotSet; 2] {
    let mut store = ModelStore::default();
    store.apply(service("web", 80, PortKind::Http));
    store.apply(service("api", 9090, PortKind::Grpc));
    let mut translator = Translator::new(Family::IPv4);
    let first = translator.update(store.model(), None).unwrap();
    store.apply(ModelChange::ServiceRemoved(ObjectKey::new("shop", "web")));
    store.apply(ModelChange::Mode(Some(Ok(Some(Family::IPv6)))));
    let second = translator.update(store.model(), None).unwrap();
    [first, second]
}

/// The rule every stream keeps: one response in flight per type; the next waits for
/// the client's answer to it.
#[derive(Default)]
pub struct InFlight {
    pending: [Option<String>; ResourceType::COUNT],
}

impl InFlight {
    /// A response was sent.
    pub fn sent(&mut self, ty: ResourceType, nonce: &str) {
        let slot = &mut self.pending[ty as usize];
        assert!(
            slot.is_none(),
            "a second {ty} response ({nonce}) while {slot:?} awaits its answer"
        );
        *slot = Some(nonce.to_owned());
    }

    /// The client answered `nonce` for the type of `type_url`.
    pub fn answered(&mut self, type_url: &str, nonce: &str) {
        if let Some(ty) = ResourceType::from_type_url(type_url) {
            let slot = &mut self.pending[ty as usize];
            if slot.as_deref() == Some(nonce) {
                *slot = None;
            }
        }
    }
}
