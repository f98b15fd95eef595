//! The "translate" stage: model + primary family + a node's listener families -> Envoy
//! resources, kept as one snapshot per distinct set of listener families.
//!
//! Translation depends on the node only through its listener families, so it is done once
//! per Service and shared by the (at most three) groups. A change to one Service
//! recomputes that Service's resources only. Clusters never depend on the primary family:
//! flipping it changes ClusterLoadAssignments and nothing else.

pub(crate) mod envoy;

use std::collections::{BTreeMap, BTreeSet};
use std::hash::Hash;

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::google::protobuf::value::Kind;

use crate::model::{
    Endpoints, Family, ListenerFamilies, Model, PortKind, Service, ServiceKey, ServicePort, Skipped,
};

mod endpoints;
pub mod grpc;
use crate::snapshot::{InconsistentSnapshot, Resource, ResourceType, Snapshot, SnapshotSet};
use endpoints::EndpointCache;

pub use envoy::router_filter;

/// Node metadata key naming the families a node binds listeners on.
pub const LISTENER_FAMILIES_KEY: &str = "dualstack-xds.io/listener-families";

/// The snapshot group of proxyless gRPC clients.
pub const GRPC_GROUP: &str = "grpc";

/// The snapshot group of a node: proxyless gRPC clients (their user agent says gRPC) get
/// theirs; an Envoy gets its listener families' (default both).
pub fn node_group(node: &Node) -> Result<String, String> {
    if node.user_agent_name.starts_with("gRPC") {
        return Ok(GRPC_GROUP.to_owned());
    }
    let families = node
        .metadata
        .as_ref()
        .and_then(|m| m.fields.get(LISTENER_FAMILIES_KEY))
        .map(|value| match &value.kind {
            Some(Kind::StringValue(s)) => s
                .parse::<ListenerFamilies>()
                .map_err(|e| format!("metadata {LISTENER_FAMILIES_KEY}: {e}")),
            _ => Err(format!(
                "metadata {LISTENER_FAMILIES_KEY} must be a string such as \"IPv4,IPv6\""
            )),
        })
        .transpose()?
        .unwrap_or(ListenerFamilies::BOTH);
    Ok(families.to_string())
}

/// Stable, family-neutral name of a Service port's cluster, endpoints and routes.
pub fn cluster_name(key: &ServiceKey, port: &ServicePort) -> String {
    format!("{}/{}:{}", key.namespace, key.name, port.port)
}

/// Name of a Service port's ingress listener on one family.
pub fn listener_name(key: &ServiceKey, port: &ServicePort, family: Family) -> String {
    format!(
        "{}:{}",
        cluster_name(key, port),
        family.as_str().to_ascii_lowercase()
    )
}

/// The primary family of a Service: `--primary-family` < ConfigMap < annotation.
pub fn effective_primary(service: &Service, model: &Model, default: Family) -> Family {
    service
        .primary_family
        .or(model.config_primary_family)
        .unwrap_or(default)
}

/// A content digest of anything hashable (stable within a process).
fn digest<T: Hash + ?Sized>(value: &T) -> u128 {
    let mut hasher = xxhash_rust::xxh3::Xxh3::default();
    value.hash(&mut hasher);
    hasher.digest128()
}

/// A digest of everything a Service's resources depend on. Slices contribute their own
/// digests, so a Service with many endpoints is compared in time proportional to its
/// number of slices.
fn input_digest(service: &Service, primary: Family, endpoints: &Endpoints) -> u128 {
    use std::hash::Hasher;
    let mut hasher = xxhash_rust::xxh3::Xxh3::default();
    service.hash(&mut hasher);
    primary.hash(&mut hasher);
    for (name, slice) in &endpoints.slices {
        name.hash(&mut hasher);
        hasher.write_u128(slice.digest());
    }
    hasher.digest128()
}

/// What is remembered of a Service's input: enough to tell whether it changed, and the
/// listener ports it claims.
#[derive(Clone, Debug)]
struct Known {
    digest: u128,
    claims: Vec<PortClaim>,
}

/// A Service's resources, encoded once and shared by every group.
#[derive(Clone, Debug, Default)]
struct Output {
    /// Digest of what clusters, listeners and routes depend on (the Service and which
    /// listener ports it holds): when only endpoints change, they are reused as they are.
    service_digest: u128,
    clusters: Vec<Resource>,
    load_assignments: Vec<Resource>,
    /// (family, listener, name of the route it uses if any)
    listeners: Vec<(Family, Resource, Option<String>)>,
    routes: BTreeMap<String, Resource>,
    conflicts: Vec<Skipped>,
    /// For proxyless gRPC clients (ports with `appProtocol: grpc`): api_listeners,
    /// routes, clusters and endpoints with additional addresses.
    grpc: GrpcOutput,
}

#[derive(Clone, Debug, Default)]
struct GrpcOutput {
    listeners: Vec<Resource>,
    routes: Vec<Resource>,
    clusters: Vec<Resource>,
    load_assignments: Vec<Resource>,
}

impl GrpcOutput {
    /// Every resource, in make-before-break order.
    fn resources(&self) -> impl Iterator<Item = (ResourceType, &Resource)> {
        [
            (ResourceType::Cluster, &self.clusters),
            (ResourceType::Endpoint, &self.load_assignments),
            (ResourceType::Listener, &self.listeners),
            (ResourceType::Route, &self.routes),
        ]
        .into_iter()
        .flat_map(|(ty, list)| list.iter().map(move |r| (ty, r)))
    }
}

/// A listener port on the ingress: TCP and UDP are separate sockets.
type PortClaim = (u16, bool);

/// The listener ports a Service wants (none when its ingress is off).
fn port_claims(service: &Service) -> Vec<PortClaim> {
    if !service.ingress {
        return Vec::new();
    }
    service
        .ports
        .iter()
        .map(|p| (p.listener_port, p.kind == PortKind::Udp))
        .collect()
}

/// Incremental translator: keeps each Service's output and one snapshot per group.
#[derive(Debug)]
pub struct Translator {
    default_primary: Family,
    known: BTreeMap<ServiceKey, Known>,
    outputs: BTreeMap<ServiceKey, Output>,
    /// Which Services want each listener port; the first in key order gets it.
    claims: BTreeMap<PortClaim, BTreeSet<ServiceKey>>,
    /// Each Service's endpoints, encoded slice by slice.
    endpoint_caches: BTreeMap<ServiceKey, EndpointCache>,
    /// The three listener-family groups, then the gRPC group.
    snapshots: [Snapshot; 4],
}

impl Translator {
    pub fn new(default_primary: Family) -> Self {
        Translator {
            default_primary,
            known: BTreeMap::new(),
            outputs: BTreeMap::new(),
            claims: BTreeMap::new(),
            endpoint_caches: BTreeMap::new(),
            snapshots: Default::default(),
        }
    }

    /// Brings every group's snapshot up to date with `model`. `changed` names the Services
    /// that may have changed; `None` compares all (after a relist or a global flip).
    pub fn update(
        &mut self,
        model: &Model,
        changed: Option<&BTreeSet<ServiceKey>>,
    ) -> Result<SnapshotSet, InconsistentSnapshot> {
        let candidates: BTreeSet<ServiceKey> = match changed {
            Some(keys) => keys.clone(),
            None => model
                .services
                .keys()
                .chain(self.known.keys())
                .cloned()
                .collect(),
        };
        let mut dirty = BTreeSet::new();
        for key in candidates {
            let current = model.services.get(&key).map(|service| {
                let primary = effective_primary(service, model, self.default_primary);
                let digest = input_digest(service, primary, model.endpoints_of(&key));
                (service, digest)
            });
            if current.map(|(_, d)| d) == self.known.get(&key).map(|k| k.digest) {
                continue;
            }
            let claims = current.map(|(service, _)| port_claims(service));
            let same_claims = matches!(
                (&claims, self.known.get(&key)),
                (Some(new), Some(known)) if *new == known.claims
            );
            if !same_claims {
                // Listener ports change hands only when claims change: other Services
                // are retranslated then, not when only endpoints move.
                self.release_claims(&key, &mut dirty);
            }
            match (current, claims) {
                (Some((_, digest)), Some(claims)) => {
                    if !same_claims {
                        self.claim(&key, &claims, &mut dirty);
                    }
                    self.known.insert(key.clone(), Known { digest, claims });
                }
                _ => {
                    self.known.remove(&key);
                }
            }
            dirty.insert(key);
        }

        let mut builders: Vec<_> = self.snapshots.iter().map(Snapshot::edit).collect();
        let mut outputs = Vec::new();
        for key in &dirty {
            let old = self.outputs.get(key);
            let output = match model.services.get(key) {
                Some(service) => {
                    let cache = self.endpoint_caches.entry(key.clone()).or_default();
                    let primary = effective_primary(service, model, self.default_primary);
                    Some(translate(
                        &self.claims,
                        key,
                        service,
                        model.endpoints_of(key),
                        primary,
                        cache,
                        old,
                    ))
                }
                None => {
                    self.endpoint_caches.remove(key);
                    None
                }
            };
            let only_endpoints = matches!((old, &output), (Some(o), Some(n)) if o.service_digest == n.service_digest);
            // Clusters and endpoints are the same in every listener-family group: they
            // are edited in the first group's snapshot and shared with the others.
            // Listeners and routes depend on the group's families.
            for (i, (builder, families)) in
                builders.iter_mut().zip(ListenerFamilies::ALL).enumerate()
            {
                let shared = i == 0;
                match (&output, only_endpoints) {
                    (Some(new), true) => {
                        if shared {
                            for r in &new.load_assignments {
                                builder.upsert_resource(ResourceType::Endpoint, r.clone());
                            }
                        }
                    }
                    _ => {
                        if let Some(old) = old {
                            remove(builder, old, families, shared);
                        }
                        if let Some(new) = &output {
                            add(builder, new, families, shared);
                        }
                    }
                }
            }
            let grpc_builder = &mut builders[3];
            match (&output, only_endpoints) {
                (Some(new), true) => {
                    for r in &new.grpc.load_assignments {
                        grpc_builder.upsert_resource(ResourceType::Endpoint, r.clone());
                    }
                }
                _ => {
                    if let Some(old) = old {
                        for (ty, r) in old.grpc.resources() {
                            grpc_builder.remove(ty, r.name());
                        }
                    }
                    if let Some(new) = &output {
                        for (ty, r) in new.grpc.resources() {
                            grpc_builder.upsert_resource(ty, r.clone());
                        }
                    }
                }
            }
            outputs.push((key.clone(), output));
        }
        let mut builders = builders.into_iter();
        let first = builders.next().expect("four groups").build()?;
        let mut snapshots = vec![first.clone()];
        for (i, mut builder) in builders.enumerate() {
            if i < 2 {
                builder.share(&first, ResourceType::Cluster);
                builder.share(&first, ResourceType::Endpoint);
            }
            snapshots.push(builder.build()?);
        }
        for (key, output) in outputs {
            match output {
                Some(output) => self.outputs.insert(key, output),
                None => self.outputs.remove(&key),
            };
        }
        let names = ListenerFamilies::ALL
            .iter()
            .map(ToString::to_string)
            .chain([GRPC_GROUP.to_owned()]);
        let mut set = SnapshotSet::default();
        for ((slot, snapshot), name) in self.snapshots.iter_mut().zip(snapshots).zip(names) {
            set.insert(&name, snapshot.clone());
            *slot = snapshot;
        }
        Ok(set)
    }

    /// Listener ports lost to another Service (they get no listener), with the reason.
    pub fn conflicts(&self) -> Vec<Skipped> {
        self.outputs
            .values()
            .flat_map(|o| o.conflicts.iter().cloned())
            .collect()
    }

    fn claim(&mut self, key: &ServiceKey, claims: &[PortClaim], dirty: &mut BTreeSet<ServiceKey>) {
        for claim in claims {
            let owners = self.claims.entry(*claim).or_default();
            // Whoever held the port may lose it: retranslate every claimant.
            dirty.extend(owners.iter().cloned());
            owners.insert(key.clone());
        }
    }

    fn release_claims(&mut self, key: &ServiceKey, dirty: &mut BTreeSet<ServiceKey>) {
        let Some(known) = self.known.get(key) else {
            return;
        };
        for claim in known.claims.clone() {
            if let Some(owners) = self.claims.get_mut(&claim) {
                owners.remove(key);
                dirty.extend(owners.iter().cloned());
                if owners.is_empty() {
                    self.claims.remove(&claim);
                }
            }
        }
    }
}

/// A Service's resources: clusters, listeners and routes are reused from `old` when what
/// they depend on is unchanged; the ClusterLoadAssignments are assembled from the
/// Service's encoded slices.
fn translate(
    claims: &BTreeMap<PortClaim, BTreeSet<ServiceKey>>,
    key: &ServiceKey,
    service: &Service,
    endpoints: &Endpoints,
    primary: Family,
    cache: &mut EndpointCache,
    old: Option<&Output>,
) -> Output {
    let owners: Vec<Option<&ServiceKey>> = service
        .ports
        .iter()
        .map(|p| {
            claims
                .get(&(p.listener_port, p.kind == PortKind::Udp))
                .and_then(|o| o.first())
        })
        .collect();
    let service_digest = digest(&(service, &owners));
    let mut output = match old {
        Some(old) if old.service_digest == service_digest => {
            let mut reused = Output {
                load_assignments: Vec::new(),
                ..old.clone()
            };
            reused.grpc.load_assignments.clear();
            reused
        }
        _ => translate_service(key, service, &owners, service_digest),
    };
    for port in service.ports.iter().filter(|p| p.kind == PortKind::Grpc) {
        output
            .grpc
            .load_assignments
            .push(Resource::new(&grpc::load_assignment(
                &cluster_name(key, port),
                &port.name,
                endpoints,
                primary,
                service.failover,
            )));
    }
    cache.sync(endpoints);
    for port in &service.ports {
        output.load_assignments.push(cache.load_assignment(
            &cluster_name(key, port),
            &port.name,
            endpoints,
            primary,
            service.failover,
        ));
    }
    output
}

/// Clusters, listeners and routes: everything but the endpoints.
fn translate_service(
    key: &ServiceKey,
    service: &Service,
    owners: &[Option<&ServiceKey>],
    service_digest: u128,
) -> Output {
    let mut output = Output {
        service_digest,
        ..Default::default()
    };
    for (port, owner) in service.ports.iter().zip(owners) {
        let name = cluster_name(key, port);
        output.clusters.push(Resource::new(&envoy::cluster(
            &name,
            port,
            service.proxy_protocol,
        )));
        if port.kind == PortKind::Grpc {
            output
                .grpc
                .clusters
                .push(Resource::new(&grpc::cluster(&name)));
            output
                .grpc
                .routes
                .push(Resource::new(&envoy::route_configuration(
                    &name, &name, port.kind,
                )));
            for target in grpc::listener_names(key, port) {
                output.grpc.listeners.push(Resource::with_references(
                    &grpc::listener(&target, &name),
                    vec![name.clone()],
                ));
            }
        }
        if !service.ingress {
            continue;
        }
        if *owner != Some(key) {
            output.conflicts.push(Skipped {
                kind: "Service".into(),
                namespace: key.namespace.clone(),
                name: key.name.clone(),
                reason: format!(
                    "listener port {} is already used by Service {}: no ingress listener for port {}",
                    port.listener_port,
                    owner.map(ToString::to_string).unwrap_or_default(),
                    port.port
                ),
            });
            continue;
        }
        let route = port.kind.is_http().then(|| name.clone());
        if let Some(route) = &route {
            output.routes.insert(
                route.clone(),
                Resource::new(&envoy::route_configuration(route, &name, port.kind)),
            );
        }
        for family in Family::BOTH {
            let listener = envoy::listener(
                &listener_name(key, port, family),
                family,
                port,
                &name,
                route.as_deref().unwrap_or_default(),
            );
            let references = route.iter().cloned().collect();
            output.listeners.push((
                family,
                Resource::with_references(&listener, references),
                route.clone(),
            ));
        }
    }
    output
}

fn group_listeners(
    output: &Output,
    families: ListenerFamilies,
) -> impl Iterator<Item = &(Family, Resource, Option<String>)> {
    output
        .listeners
        .iter()
        .filter(move |(f, _, _)| families.contains(*f))
}

/// Routes used by the group's listeners.
fn group_routes(output: &Output, families: ListenerFamilies) -> BTreeSet<&String> {
    group_listeners(output, families)
        .filter_map(|(_, _, route)| route.as_ref())
        .collect()
}

/// Removes a Service's resources from a group's snapshot; clusters and endpoints only
/// when `shared` (they are edited once and shared by every group).
fn remove(
    builder: &mut crate::snapshot::SnapshotBuilder,
    output: &Output,
    families: ListenerFamilies,
    shared: bool,
) {
    if shared {
        for r in &output.clusters {
            builder.remove(ResourceType::Cluster, r.name());
        }
        for r in &output.load_assignments {
            builder.remove(ResourceType::Endpoint, r.name());
        }
    }
    for (_, r, _) in group_listeners(output, families) {
        builder.remove(ResourceType::Listener, r.name());
    }
    for route in group_routes(output, families) {
        builder.remove(ResourceType::Route, route);
    }
}

/// Adds a Service's resources to a group's snapshot (see [`remove`]).
fn add(
    builder: &mut crate::snapshot::SnapshotBuilder,
    output: &Output,
    families: ListenerFamilies,
    shared: bool,
) {
    if shared {
        for r in &output.clusters {
            builder.upsert_resource(ResourceType::Cluster, r.clone());
        }
        for r in &output.load_assignments {
            builder.upsert_resource(ResourceType::Endpoint, r.clone());
        }
    }
    for (_, r, _) in group_listeners(output, families) {
        builder.upsert_resource(ResourceType::Listener, r.clone());
    }
    for route in group_routes(output, families) {
        builder.upsert_resource(ResourceType::Route, output.routes[route].clone());
    }
}

#[cfg(test)]
mod tests;
