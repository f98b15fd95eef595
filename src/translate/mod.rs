//! The "translate" stage: model + primary family + a node's listener families -> Envoy
//! resources, kept as one snapshot per distinct set of listener families.
//!
//! Translation depends on the node only through its listener families, so it is done once
//! per Service and shared by the (at most three) groups. A change to one Service
//! recomputes that Service's resources only. Clusters never depend on the primary family:
//! flipping it changes ClusterLoadAssignments and nothing else.

mod envoy;

use std::collections::{BTreeMap, BTreeSet};

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::google::protobuf::value::Kind;

use crate::model::{
    Endpoints, Family, ListenerFamilies, Model, PortKind, Service, ServiceKey, ServicePort, Skipped,
};
use crate::snapshot::{InconsistentSnapshot, Resource, ResourceType, Snapshot, SnapshotSet};

pub use envoy::router_filter;

/// Node metadata key naming the families a node binds listeners on.
pub const LISTENER_FAMILIES_KEY: &str = "dualstack-xds.io/listener-families";

/// The snapshot group of a node: its listener families (default both).
pub fn node_group(node: &Node) -> Result<String, String> {
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

/// What a Service was translated from, to tell whether it changed.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Input {
    service: Service,
    endpoints: Endpoints,
    primary: Family,
}

/// A Service's resources, encoded once and shared by every group.
#[derive(Clone, Debug, Default)]
struct Output {
    clusters: Vec<Resource>,
    load_assignments: Vec<Resource>,
    /// (family, listener, name of the route it uses if any)
    listeners: Vec<(Family, Resource, Option<String>)>,
    routes: BTreeMap<String, Resource>,
    conflicts: Vec<Skipped>,
}

/// A listener port on the ingress: TCP and UDP are separate sockets.
type PortClaim = (u16, bool);

/// Incremental translator: keeps each Service's output and one snapshot per group.
#[derive(Debug)]
pub struct Translator {
    default_primary: Family,
    inputs: BTreeMap<ServiceKey, Input>,
    outputs: BTreeMap<ServiceKey, Output>,
    /// Which Services want each listener port; the first in key order gets it.
    claims: BTreeMap<PortClaim, BTreeSet<ServiceKey>>,
    snapshots: [Snapshot; 3],
}

impl Translator {
    pub fn new(default_primary: Family) -> Self {
        Translator {
            default_primary,
            inputs: BTreeMap::new(),
            outputs: BTreeMap::new(),
            claims: BTreeMap::new(),
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
                .chain(self.inputs.keys())
                .cloned()
                .collect(),
        };
        let mut dirty = BTreeSet::new();
        for key in candidates {
            let input = model.services.get(&key).map(|(service, endpoints)| Input {
                service: service.clone(),
                endpoints: endpoints.clone(),
                primary: effective_primary(service, model, self.default_primary),
            });
            if input.as_ref() == self.inputs.get(&key) {
                continue;
            }
            self.release_claims(&key, &mut dirty);
            match input {
                Some(input) => {
                    self.claim(&key, &input.service, &mut dirty);
                    self.inputs.insert(key.clone(), input);
                }
                None => {
                    self.inputs.remove(&key);
                }
            }
            dirty.insert(key);
        }

        let mut builders: Vec<_> = self.snapshots.iter().map(Snapshot::edit).collect();
        let mut outputs = Vec::new();
        for key in &dirty {
            if let Some(old) = self.outputs.get(key) {
                for (builder, families) in builders.iter_mut().zip(ListenerFamilies::ALL) {
                    remove(builder, old, families);
                }
            }
            let output = self.inputs.get(key).map(|input| self.translate(key, input));
            if let Some(output) = &output {
                for (builder, families) in builders.iter_mut().zip(ListenerFamilies::ALL) {
                    add(builder, output, families);
                }
            }
            outputs.push((key.clone(), output));
        }
        let mut snapshots = Vec::new();
        for builder in builders {
            snapshots.push(builder.build()?);
        }
        for (key, output) in outputs {
            match output {
                Some(output) => self.outputs.insert(key, output),
                None => self.outputs.remove(&key),
            };
        }
        let mut set = SnapshotSet::default();
        for ((slot, snapshot), families) in self
            .snapshots
            .iter_mut()
            .zip(snapshots)
            .zip(ListenerFamilies::ALL)
        {
            set.insert(&families.to_string(), snapshot.clone());
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

    fn port_claims(service: &Service) -> impl Iterator<Item = PortClaim> + '_ {
        service
            .ports
            .iter()
            .filter(move |_| service.ingress)
            .map(|p| (p.listener_port, p.kind == PortKind::Udp))
    }

    fn claim(&mut self, key: &ServiceKey, service: &Service, dirty: &mut BTreeSet<ServiceKey>) {
        for claim in Self::port_claims(service) {
            let owners = self.claims.entry(claim).or_default();
            // Whoever held the port may lose it: retranslate every claimant.
            dirty.extend(owners.iter().cloned());
            owners.insert(key.clone());
        }
    }

    fn release_claims(&mut self, key: &ServiceKey, dirty: &mut BTreeSet<ServiceKey>) {
        let Some(input) = self.inputs.get(key) else {
            return;
        };
        let claims: Vec<PortClaim> = Self::port_claims(&input.service).collect();
        for claim in claims {
            if let Some(owners) = self.claims.get_mut(&claim) {
                owners.remove(key);
                dirty.extend(owners.iter().cloned());
                if owners.is_empty() {
                    self.claims.remove(&claim);
                }
            }
        }
    }

    fn translate(&self, key: &ServiceKey, input: &Input) -> Output {
        let service = &input.service;
        let mut output = Output::default();
        for port in &service.ports {
            let name = cluster_name(key, port);
            output.clusters.push(Resource::new(&envoy::cluster(
                &name,
                port,
                service.proxy_protocol,
            )));
            let primary = input.endpoints.family(input.primary);
            let failover = service
                .failover
                .then(|| input.endpoints.family(input.primary.other()));
            output
                .load_assignments
                .push(Resource::new(&envoy::load_assignment(
                    &name, &port.name, primary, failover,
                )));
            if !service.ingress {
                continue;
            }
            let claim = (port.listener_port, port.kind == PortKind::Udp);
            let owner = self.claims.get(&claim).and_then(|o| o.first());
            if owner != Some(key) {
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
                output
                    .listeners
                    .push((family, Resource::new(&listener), route.clone()));
            }
        }
        output
    }
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

fn remove(
    builder: &mut crate::snapshot::SnapshotBuilder,
    output: &Output,
    families: ListenerFamilies,
) {
    for r in &output.clusters {
        builder.remove(ResourceType::Cluster, r.name());
    }
    for r in &output.load_assignments {
        builder.remove(ResourceType::Endpoint, r.name());
    }
    for (_, r, _) in group_listeners(output, families) {
        builder.remove(ResourceType::Listener, r.name());
    }
    for route in group_routes(output, families) {
        builder.remove(ResourceType::Route, route);
    }
}

fn add(
    builder: &mut crate::snapshot::SnapshotBuilder,
    output: &Output,
    families: ListenerFamilies,
) {
    for r in &output.clusters {
        builder.upsert_resource(ResourceType::Cluster, r.clone());
    }
    for r in &output.load_assignments {
        builder.upsert_resource(ResourceType::Endpoint, r.clone());
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
