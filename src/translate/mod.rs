//! The "translate" stage: model + primary family + a node's listener families -> Envoy
//! resources, kept as one snapshot per [`Group`] of clients.
//!
//! Translation depends on the node only through its group, so it is done once per
//! Service and shared by the groups. A change to one Service recomputes that Service's
//! resources only, and [`Translator::update`] goes in three steps: *plan* (which Services
//! changed, and who holds each listener port), *apply* (translate those Services), and
//! *assemble* (edit and build each group's snapshot). The plan is staged and committed
//! only once every snapshot is built, so a failed build changes nothing and the same
//! change is tried again. Clusters, listeners and routes never depend on a
//! Service's primary family: flipping it, by the ConfigMap or by an annotation, changes
//! ClusterLoadAssignments and nothing else.

pub mod envoy;

use std::collections::{BTreeMap, BTreeSet};
use std::hash::Hash;
use std::sync::Arc;

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::google::protobuf::value::Kind;

use crate::model::{
    Family, ListenerFamilies, Model, ObjectKey, ObjectKind, PortKind, ProxyProtocol, Service,
    ServiceKey, ServicePort, Skipped, TlsMode,
};

mod endpoints;
pub mod proxyless;
mod shared;
mod template;
use crate::snapshot::{
    InconsistentSnapshot, Resource, ResourceType, Snapshot, SnapshotSet, XdsResource,
};
use endpoints::EndpointCache;
use shared::{Assembled, SharedPiece, SharedPort, Sharing};
use template::{Templates, Values};

pub use envoy::router_filter;

/// Node metadata key naming the families a node binds listeners on.
pub const LISTENER_FAMILIES_KEY: &str = "dualstack-xds.io/listener-families";

/// The snapshot group of proxyless gRPC clients.
pub const PROXYLESS_GROUP: &str = "grpc";

/// The clients a snapshot is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Group {
    /// Envoys binding listeners on these families.
    Envoy(ListenerFamilies),
    /// Proxyless gRPC clients.
    Proxyless,
}

impl Group {
    /// The group's name in a [`SnapshotSet`] (and in `/debug/resources`).
    pub fn name(self) -> String {
        match self {
            Group::Envoy(families) => families.to_string(),
            Group::Proxyless => PROXYLESS_GROUP.to_owned(),
        }
    }
}

/// The snapshot group of a node: proxyless gRPC clients (their user agent says gRPC) get
/// theirs; an Envoy gets its listener families' (default both).
pub fn node_group(node: &Node) -> Result<String, String> {
    Ok(group_of(node)?.name())
}

/// The [`Group`] of a node.
pub fn group_of(node: &Node) -> Result<Group, String> {
    if node.user_agent_name.starts_with("gRPC") {
        return Ok(Group::Proxyless);
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
    Ok(Group::Envoy(families))
}

/// Stable, family-neutral name of a Service port's cluster, endpoints and routes.
/// (`NAMESPACE/NAME:PORT`; built without the formatting machinery, which costs more
/// than the rest of a small Service's names together.)
pub fn cluster_name(key: &ServiceKey, port: &ServicePort) -> String {
    let mut name = String::with_capacity(key.namespace.len() + key.name.len() + 16);
    push_cluster_name(&mut name, key, port);
    name
}

fn push_cluster_name(name: &mut String, key: &ServiceKey, port: &ServicePort) {
    name.push_str(&key.namespace);
    name.push('/');
    name.push_str(&key.name);
    name.push(':');
    let mut digits = [0u8; 5];
    let mut n = port.port;
    let mut start = digits.len();
    loop {
        start -= 1;
        digits[start] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    name.push_str(std::str::from_utf8(&digits[start..]).expect("ASCII digits"));
}

/// Name of a Service port's ingress listener on one family.
pub fn listener_name(key: &ServiceKey, port: &ServicePort, family: Family) -> String {
    let mut name = String::with_capacity(key.namespace.len() + key.name.len() + 21);
    push_cluster_name(&mut name, key, port);
    name.push_str(match family {
        Family::IPv4 => ":ipv4",
        Family::IPv6 => ":ipv6",
    });
    name
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
/// number of slices; a TLS Secret it terminates with contributes its content.
fn input_digest(service: &Service, primary: Family, model: &Model) -> u128 {
    use std::hash::Hasher;
    let mut hasher = xxhash_rust::xxh3::Xxh3::default();
    service.hash(&mut hasher);
    primary.hash(&mut hasher);
    for (name, slice) in &model.endpoints_of(&service.key).slices {
        name.hash(&mut hasher);
        hasher.write_u128(slice.digest());
    }
    if let Some(secret) = service.tls_secret() {
        model.secrets.get(secret).hash(&mut hasher);
    }
    hasher.digest128()
}

/// How a Service port stands on its listener port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum PortRole<'a> {
    /// It has the port to itself.
    Owner,
    /// It shares the port with other Services (by Host or SNI).
    Member,
    /// Another Service holds the port, in this way.
    Lost(&'a ServiceKey, Sharing),
}

/// A digest of what clusters, listeners and routes depend on: the Service without its
/// endpoint policy (primary family and failover, which only ClusterLoadAssignments
/// depend on), and how it stands on its listener ports. Equal digests: those resources
/// are reused as they are, however the primary family was flipped.
fn structure_digest(service: &Service, roles: &[PortRole], secret_present: bool) -> u128 {
    // Destructured so that a new field has to be placed on one side or the other.
    let Service {
        key,
        ports,
        proxy_protocol,
        ingress,
        hosts,
        tls,
        primary_family: _,
        failover: _,
    } = service;
    digest(&(
        key,
        ports,
        proxy_protocol,
        ingress,
        hosts,
        tls,
        roles,
        secret_present,
    ))
}

/// What is remembered of a Service's input: enough to tell whether it changed, and the
/// listener ports it claims.
#[derive(Clone, Debug)]
struct Known {
    digest: u128,
    claims: Vec<(PortClaim, Sharing)>,
}

/// A Service's resources, encoded once and shared by every group.
#[derive(Clone, Debug, Default)]
struct Output {
    /// [`structure_digest`]: when it is unchanged, clusters, listeners and routes are
    /// reused and only the endpoints (and a TLS Secret's content) are new.
    structure: u128,
    clusters: Vec<Resource>,
    load_assignments: Vec<Resource>,
    listeners: Vec<(Family, Resource)>,
    routes: Vec<Resource>,
    /// What it brings to shared listener ports.
    shared: Vec<Arc<SharedPiece>>,
    /// The SDS secrets of its terminated TLS: (name, resource).
    secrets: Vec<(String, Resource)>,
    conflicts: Vec<Skipped>,
    /// For proxyless gRPC clients (ports with `appProtocol: grpc`): api_listeners,
    /// routes, clusters and endpoints with additional addresses.
    proxyless: ProxylessOutput,
}

impl Output {
    /// This Service's own resources in a group's snapshot: listeners on the group's
    /// families, and, when the group edits them (the single-family groups share the
    /// dual-stack group's), clusters, endpoints and the routes its listeners and filter
    /// chains use; for proxyless clients, theirs. (Shared listeners and secrets are
    /// assembled across Services.)
    fn in_group(
        &self,
        group: Group,
        edits_shared: bool,
    ) -> impl Iterator<Item = (ResourceType, &Resource)> {
        let (proxyless, families) = match group {
            Group::Proxyless => (true, ListenerFamilies::BOTH),
            Group::Envoy(families) => (false, families),
        };
        let envoy = !proxyless;
        // What the dual-stack group edits for the others. Every route is used in every
        // family: by both families' listeners of its port, or by a filter chain of a
        // shared port, which has listeners in both too.
        let edits = envoy && edits_shared;
        let listeners = self
            .listeners
            .iter()
            .filter(move |(family, _)| envoy && families.contains(*family));
        let proxyless = proxyless
            .then(|| self.proxyless.resources())
            .into_iter()
            .flatten();
        proxyless
            .chain(typed(ResourceType::Cluster, edits, &self.clusters))
            .chain(typed(ResourceType::Endpoint, edits, &self.load_assignments))
            .chain(listeners.map(|(_, r)| (ResourceType::Listener, r)))
            .chain(typed(ResourceType::Route, edits, &self.routes))
    }
}

/// `list` as resources of type `ty` when `include`, else nothing.
fn typed(
    ty: ResourceType,
    include: bool,
    list: &[Resource],
) -> impl Iterator<Item = (ResourceType, &Resource)> {
    let list = if include { list } else { &[] };
    list.iter().map(move |r| (ty, r))
}

#[derive(Clone, Debug, Default)]
struct ProxylessOutput {
    listeners: Vec<Resource>,
    routes: Vec<Resource>,
    clusters: Vec<Resource>,
    load_assignments: Vec<Resource>,
}

impl ProxylessOutput {
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

/// How a Service's ports use their listener ports: by Host or SNI when it names hosts.
fn sharing(service: &Service) -> Sharing {
    match (service.hosts.is_empty(), &service.tls) {
        (true, _) => Sharing::Exclusive,
        (false, None) => Sharing::Hosts,
        (false, Some(_)) => Sharing::Sni,
    }
}

/// The listener ports a Service wants (none when its ingress is off), and how.
fn port_claims(service: &Service) -> Vec<(PortClaim, Sharing)> {
    if !service.ingress {
        return Vec::new();
    }
    let how = sharing(service);
    service
        .ports
        .iter()
        .map(|p| ((p.listener_port, p.kind == PortKind::Udp), how))
        .collect()
}

/// One snapshot per group. Envoys binding both families edit clusters, endpoints and
/// routes; the single-family groups share them (they differ in listeners only).
#[derive(Clone, Debug, Default)]
struct Groups {
    dual: Snapshot,
    ipv4: Snapshot,
    ipv6: Snapshot,
    proxyless: Snapshot,
}

impl Groups {
    fn to_set(&self) -> SnapshotSet {
        let mut set = SnapshotSet::default();
        for (group, snapshot) in [
            (Group::Envoy(ListenerFamilies::BOTH), &self.dual),
            (Group::Envoy(ListenerFamilies::IPV4), &self.ipv4),
            (Group::Envoy(ListenerFamilies::IPV6), &self.ipv6),
            (Group::Proxyless, &self.proxyless),
        ] {
            set.insert(&group.name(), snapshot.clone());
        }
        set
    }
}

/// A listener port shared in one way.
type SharedKey = (u16, Sharing);

/// The Services that terminate TLS with an SDS secret, and its resource.
#[derive(Clone, Debug)]
struct SecretUse {
    resource: Resource,
    users: BTreeSet<ServiceKey>,
}

/// What translation has committed.
#[derive(Debug, Default)]
struct State {
    known: BTreeMap<ServiceKey, Known>,
    /// Which Services want each listener port, and how; the first in key order decides
    /// how it is used (alone, or shared by Host or SNI).
    claims: BTreeMap<PortClaim, BTreeMap<ServiceKey, Sharing>>,
    outputs: BTreeMap<ServiceKey, Arc<Output>>,
    shared: BTreeMap<SharedKey, SharedPort>,
    /// What each shared port put into the snapshots.
    assembled: BTreeMap<SharedKey, Arc<Assembled>>,
    secrets: BTreeMap<String, SecretUse>,
    groups: Groups,
}

/// What an update will change of the committed [`State`], staged: committed only once
/// every snapshot is built.
#[derive(Debug, Default)]
struct Plan {
    /// Every Service to retranslate.
    dirty: BTreeSet<ServiceKey>,
    /// New records of Services whose input changed (`None`: gone).
    known: BTreeMap<ServiceKey, Option<Known>>,
    /// The new claimants of every listener port whose claimants change.
    claims: BTreeMap<PortClaim, BTreeMap<ServiceKey, Sharing>>,
}

impl Plan {
    /// The claimants of a listener port, as the plan leaves them.
    fn owners<'a>(
        &'a self,
        state: &'a State,
        claim: &PortClaim,
    ) -> Option<&'a BTreeMap<ServiceKey, Sharing>> {
        self.claims.get(claim).or_else(|| state.claims.get(claim))
    }

    fn owners_mut(
        &mut self,
        state: &State,
        claim: PortClaim,
    ) -> &mut BTreeMap<ServiceKey, Sharing> {
        self.claims
            .entry(claim)
            .or_insert_with(|| state.claims.get(&claim).cloned().unwrap_or_default())
    }
}

/// What assembling produced, to commit once it is built.
#[derive(Debug, Default)]
struct Assembly {
    groups: Groups,
    shared: BTreeMap<SharedKey, SharedPort>,
    assembled: BTreeMap<SharedKey, Arc<Assembled>>,
    secrets: BTreeMap<String, Option<SecretUse>>,
}

/// Incremental translator: keeps each Service's output and one snapshot per group.
#[derive(Debug)]
pub struct Translator {
    default_primary: Family,
    /// Whether Services may terminate TLS (reading Secrets); when not, they are reported.
    tls_termination: bool,
    state: State,
    /// Each Service's endpoints, encoded slice by slice (a cache of the model: it stays
    /// right whether or not an update is committed).
    endpoint_caches: BTreeMap<ServiceKey, EndpointCache>,
    /// How a Service port's cluster, route table and listeners are encoded.
    encoders: Encoders,
    /// Fail the next build (tests of the retry).
    #[cfg(test)]
    pub(crate) fail_next_build: bool,
}

impl Translator {
    pub fn new(default_primary: Family) -> Self {
        Translator {
            default_primary,
            tls_termination: true,
            state: State::default(),
            endpoint_caches: BTreeMap::new(),
            encoders: Encoders::default(),
            #[cfg(test)]
            fail_next_build: false,
        }
    }

    /// Turns TLS termination off (`--tls-termination=false`: the cluster refuses the
    /// control plane access to Secrets): Services that ask for it are reported.
    pub fn without_tls_termination(mut self) -> Self {
        self.tls_termination = false;
        self
    }

    /// Brings every group's snapshot up to date with `model`. `changed` names the Services
    /// that may have changed; `None` compares all (after a relist or a global flip). On
    /// an error nothing is committed: the next update with the same Services retries.
    pub fn update(
        &mut self,
        model: &Model,
        changed: Option<&BTreeSet<ServiceKey>>,
    ) -> Result<SnapshotSet, InconsistentSnapshot> {
        let plan = self.state.plan(model, changed, self.default_primary);
        let outputs = self.apply(&plan, model);
        let assembly = self.state.assemble(&outputs)?;
        #[cfg(test)]
        if std::mem::take(&mut self.fail_next_build) {
            return Err(InconsistentSnapshot {
                problems: vec!["failed for a test".into()],
            });
        }
        self.state.commit(plan, outputs, assembly);
        Ok(self.state.groups.to_set())
    }

    /// Listener ports and hosts lost to another Service, and TLS that can't be
    /// terminated, with the reason.
    pub fn conflicts(&self) -> Vec<Skipped> {
        self.state
            .outputs
            .values()
            .flat_map(|o| o.conflicts.iter().cloned())
            .chain(
                self.state
                    .assembled
                    .values()
                    .flat_map(|a| a.conflicts.iter().cloned()),
            )
            .collect()
    }

    /// Translates the Services of the plan: `None` for those that are gone.
    fn apply(&mut self, plan: &Plan, model: &Model) -> Vec<(ServiceKey, Option<Output>)> {
        let state = &self.state;
        let tls_termination = self.tls_termination;
        plan.dirty
            .iter()
            .map(|key| {
                let output = match model.services.get(key) {
                    Some(service) => {
                        if !self.endpoint_caches.contains_key(key) {
                            self.endpoint_caches
                                .insert(key.clone(), EndpointCache::default());
                        }
                        let cache = self.endpoint_caches.get_mut(key).expect("inserted");
                        let primary = effective_primary(service, model, self.default_primary);
                        let owners = |claim: &PortClaim| {
                            plan.owners(state, claim)
                                .and_then(|o| o.iter().next())
                                .map(|(k, how)| (k, *how))
                        };
                        Some(translate(
                            Inputs {
                                key,
                                service,
                                model,
                                primary,
                                tls_termination,
                            },
                            owners,
                            cache,
                            &mut self.encoders,
                            state.outputs.get(key).map(Arc::as_ref),
                        ))
                    }
                    None => {
                        self.endpoint_caches.remove(key);
                        None
                    }
                };
                (key.clone(), output)
            })
            .collect()
    }
}

impl State {
    /// Finds the Services whose input changed, moving listener ports between them as
    /// their claims change.
    fn plan(
        &self,
        model: &Model,
        changed: Option<&BTreeSet<ServiceKey>>,
        default_primary: Family,
    ) -> Plan {
        let candidates: Box<dyn Iterator<Item = &ServiceKey>> = match changed {
            Some(keys) => Box::new(keys.iter()),
            None => Box::new(union(model.services.keys(), self.known.keys())),
        };
        let mut plan = Plan::default();
        // Built in key order, then made sets in one pass (cheaper than one by one when
        // every Service of a large model is new).
        let mut dirty: Vec<ServiceKey> = Vec::new();
        let mut known: Vec<(ServiceKey, Option<Known>)> = Vec::new();
        for key in candidates {
            let current = model.services.get(key).map(|service| {
                let primary = effective_primary(service, model, default_primary);
                (service, input_digest(service, primary, model))
            });
            let was = self.known.get(key);
            if current.map(|(_, d)| d) == was.map(|k| k.digest) {
                continue;
            }
            let claims = current.map(|(service, _)| port_claims(service));
            let same_claims = matches!(
                (&claims, was),
                (Some(new), Some(was)) if *new == was.claims
            );
            // Listener ports change hands only when claims change: other Services are
            // retranslated then, not when only endpoints move.
            // A claimant's role on a port depends on the first claimant only (who it is,
            // and how it uses the port): the others are retranslated when that changes,
            // not whenever one joins or leaves (which, for Services sharing a port by
            // Host, would make a full translation quadratic in their number).
            if !same_claims {
                for (claim, _) in was.iter().flat_map(|k| &k.claims) {
                    let owners = plan.owners_mut(self, *claim);
                    let before = first_claimant(owners);
                    owners.remove(key);
                    if first_claimant(owners) != before {
                        let others: Vec<ServiceKey> = owners.keys().cloned().collect();
                        plan.dirty.extend(others);
                    }
                }
            }
            let record = match (current, claims) {
                (Some((_, digest)), Some(claims)) => {
                    if !same_claims {
                        for (claim, how) in &claims {
                            let owners = plan.owners_mut(self, *claim);
                            let before = first_claimant(owners);
                            owners.insert(key.clone(), *how);
                            if first_claimant(owners) != before {
                                // Whoever held the port may lose it.
                                let others: Vec<ServiceKey> =
                                    owners.keys().filter(|k| *k != key).cloned().collect();
                                plan.dirty.extend(others);
                            }
                        }
                    }
                    Some(Known { digest, claims })
                }
                _ => None,
            };
            known.push((key.clone(), record));
            dirty.push(key.clone());
        }
        plan.known = known.into_iter().collect();
        if plan.dirty.is_empty() {
            plan.dirty = dirty.into_iter().collect();
        } else {
            plan.dirty.extend(dirty);
        }
        plan
    }

    /// Puts the new outputs into every group's snapshot, assembles the shared ports and
    /// secrets they touch, and builds the snapshots.
    fn assemble(
        &self,
        outputs: &[(ServiceKey, Option<Output>)],
    ) -> Result<Assembly, InconsistentSnapshot> {
        let mut dual = self.groups.dual.edit();
        let mut ipv4 = self.groups.ipv4.edit();
        let mut ipv6 = self.groups.ipv6.edit();
        let mut proxyless = self.groups.proxyless.edit();
        let mut shared: BTreeMap<SharedKey, SharedPort> = BTreeMap::new();
        let mut secrets: BTreeMap<String, Option<SecretUse>> = BTreeMap::new();
        for (key, new) in outputs {
            let old = self.outputs.get(key).map(Arc::as_ref);
            // Secrets: who uses them changes here, resources below.
            for (name, _) in old.iter().flat_map(|o| &o.secrets) {
                let entry = secrets
                    .entry(name.clone())
                    .or_insert_with(|| self.secrets.get(name).cloned());
                if let Some(secret) = entry {
                    secret.users.remove(key);
                }
            }
            for (name, resource) in new.iter().flat_map(|o| &o.secrets) {
                let entry = secrets
                    .entry(name.clone())
                    .or_insert_with(|| self.secrets.get(name).cloned());
                let secret = entry.get_or_insert_with(|| SecretUse {
                    resource: resource.clone(),
                    users: BTreeSet::new(),
                });
                secret.resource = resource.clone();
                secret.users.insert(key.clone());
            }
            let only_endpoints =
                matches!((old, new), (Some(old), Some(new)) if old.structure == new.structure);
            if only_endpoints {
                let new = new.as_ref().expect("matched above");
                for r in &new.load_assignments {
                    dual.upsert_resource(ResourceType::Endpoint, r.clone());
                }
                for r in &new.proxyless.load_assignments {
                    proxyless.upsert_resource(ResourceType::Endpoint, r.clone());
                }
                continue;
            }
            // Shared ports: memberships change here, resources below.
            for piece in old.iter().flat_map(|o| &o.shared) {
                let port = (piece.listener_port, piece.sharing);
                shared
                    .entry(port)
                    .or_insert_with(|| self.shared.get(&port).cloned().unwrap_or_default())
                    .remove(key);
            }
            for piece in new.iter().flat_map(|o| &o.shared) {
                let port = (piece.listener_port, piece.sharing);
                shared
                    .entry(port)
                    .or_insert_with(|| self.shared.get(&port).cloned().unwrap_or_default())
                    .insert(key.clone(), piece.clone());
            }

            for (builder, group, edits_shared) in [
                (&mut dual, Group::Envoy(ListenerFamilies::BOTH), true),
                (&mut ipv4, Group::Envoy(ListenerFamilies::IPV4), false),
                (&mut ipv6, Group::Envoy(ListenerFamilies::IPV6), false),
                (&mut proxyless, Group::Proxyless, true),
            ] {
                for (ty, r) in old
                    .into_iter()
                    .flat_map(|o| o.in_group(group, edits_shared))
                {
                    builder.remove(ty, r.name());
                }
                for (ty, r) in new.iter().flat_map(|n| n.in_group(group, edits_shared)) {
                    builder.upsert_resource(ty, r.clone());
                }
            }
        }
        let envoy_groups = [
            (ListenerFamilies::BOTH, &mut dual),
            (ListenerFamilies::IPV4, &mut ipv4),
            (ListenerFamilies::IPV6, &mut ipv6),
        ];
        let mut assembled = BTreeMap::new();
        let mut envoy_groups = envoy_groups;
        for ((port, how), members) in shared.iter_mut() {
            let new = Arc::new(members.assemble(*port, *how));
            for (families, builder) in envoy_groups.iter_mut() {
                let edits_shared = *families == ListenerFamilies::BOTH;
                // What is gone goes; what is new or changed is put (unchanged: kept).
                let kept: BTreeSet<&Arc<str>> = shared::group_listeners(&new, *families)
                    .map(Resource::name)
                    .chain(new.route.as_ref().map(Resource::name))
                    .collect();
                if let Some(old) = self.assembled.get(&(*port, *how)) {
                    for r in shared::group_listeners(old, *families) {
                        if !kept.contains(r.name()) {
                            builder.remove(ResourceType::Listener, r.name());
                        }
                    }
                    if let Some(route) = old
                        .route
                        .as_ref()
                        .filter(|r| edits_shared && !kept.contains(r.name()))
                    {
                        builder.remove(ResourceType::Route, route.name());
                    }
                }
                for r in shared::group_listeners(&new, *families) {
                    builder.upsert_resource(ResourceType::Listener, r.clone());
                }
                if let Some(route) = new.route.as_ref().filter(|_| edits_shared) {
                    builder.upsert_resource(ResourceType::Route, route.clone());
                }
            }
            assembled.insert((*port, *how), new);
        }
        for (name, secret) in &secrets {
            for (_, builder) in envoy_groups.iter_mut() {
                match secret.as_ref().filter(|s| !s.users.is_empty()) {
                    Some(secret) => {
                        builder.upsert_resource(ResourceType::Secret, secret.resource.clone())
                    }
                    None => builder.remove(ResourceType::Secret, name),
                };
            }
        }
        let dual = dual.build()?;
        for single in [&mut ipv4, &mut ipv6] {
            single.share(&dual, ResourceType::Cluster);
            single.share(&dual, ResourceType::Endpoint);
            // Routes are the same in every family, but what references them is the
            // group's own listeners: checked when built.
            single.share_checked(&dual, ResourceType::Route);
        }
        Ok(Assembly {
            groups: Groups {
                ipv4: ipv4.build()?,
                ipv6: ipv6.build()?,
                proxyless: proxyless.build()?,
                dual,
            },
            shared,
            assembled,
            secrets,
        })
    }

    /// Makes the plan, the outputs and what was assembled from them the committed state.
    fn commit(
        &mut self,
        plan: Plan,
        outputs: Vec<(ServiceKey, Option<Output>)>,
        assembly: Assembly,
    ) {
        merge_into(&mut self.known, plan.known);
        for (claim, owners) in plan.claims {
            if owners.is_empty() {
                self.claims.remove(&claim);
            } else {
                self.claims.insert(claim, owners);
            }
        }
        merge_into(
            &mut self.outputs,
            outputs
                .into_iter()
                .map(|(key, output)| (key, output.map(Arc::new))),
        );
        for (port, members) in assembly.shared {
            if members.is_empty() {
                self.shared.remove(&port);
                self.assembled.remove(&port);
            } else {
                self.shared.insert(port, members);
            }
        }
        for (port, assembled) in assembly.assembled {
            if self.shared.contains_key(&port) {
                self.assembled.insert(port, assembled);
            }
        }
        for (name, secret) in assembly.secrets {
            match secret.filter(|s| !s.users.is_empty()) {
                Some(secret) => self.secrets.insert(name, secret),
                None => self.secrets.remove(&name),
            };
        }
        self.groups = assembly.groups;
    }
}

/// The claimant that decides how a listener port is used (the first in key order), and
/// how it uses it.
fn first_claimant(owners: &BTreeMap<ServiceKey, Sharing>) -> Option<(ServiceKey, Sharing)> {
    owners.iter().next().map(|(key, how)| (key.clone(), *how))
}

/// The keys of two sorted sequences, in order, each once.
fn union<'a, K: Ord + 'a>(
    a: impl Iterator<Item = &'a K>,
    b: impl Iterator<Item = &'a K>,
) -> impl Iterator<Item = &'a K> {
    let (mut a, mut b) = (a.peekable(), b.peekable());
    std::iter::from_fn(move || match (a.peek(), b.peek()) {
        (Some(x), Some(y)) => match x.cmp(y) {
            std::cmp::Ordering::Less => a.next(),
            std::cmp::Ordering::Greater => b.next(),
            std::cmp::Ordering::Equal => {
                b.next();
                a.next()
            }
        },
        (Some(_), None) => a.next(),
        (None, _) => b.next(),
    })
}

/// Puts `changes` (in key order; `None`: remove) into `map`: one by one when they are
/// few, else by merging both in one pass and building the map whole, which a full
/// translation of a large model needs (one by one, each insertion searches the tree).
fn merge_into<K: Ord, V>(
    map: &mut BTreeMap<K, V>,
    changes: impl IntoIterator<Item = (K, Option<V>)>,
) {
    let changes = changes.into_iter();
    if changes.size_hint().0.saturating_mul(8) < map.len() {
        for (key, value) in changes {
            match value {
                Some(value) => map.insert(key, value),
                None => map.remove(&key),
            };
        }
        return;
    }
    let mut old = std::mem::take(map).into_iter().peekable();
    let mut merged = Vec::new();
    for (key, value) in changes {
        while let Some((k, _)) = old.peek() {
            if *k >= key {
                break;
            }
            merged.extend(old.next());
        }
        if old.peek().is_some_and(|(k, _)| *k == key) {
            old.next();
        }
        merged.extend(value.map(|v| (key, v)));
    }
    merged.extend(old);
    *map = merged.into_iter().collect();
}

/// What a Service is translated from.
struct Inputs<'a> {
    key: &'a ServiceKey,
    service: &'a Service,
    model: &'a Model,
    primary: Family,
    tls_termination: bool,
}

/// A Service's resources: clusters, listeners and routes are reused from `old` when what
/// they depend on is unchanged; the ClusterLoadAssignments are assembled from the
/// Service's encoded slices.
fn translate<'a>(
    inputs: Inputs<'_>,
    owners: impl Fn(&PortClaim) -> Option<(&'a ServiceKey, Sharing)>,
    cache: &mut EndpointCache,
    encoders: &mut Encoders,
    old: Option<&Output>,
) -> Output {
    let Inputs {
        key,
        service,
        model,
        primary,
        tls_termination,
    } = inputs;
    let how = sharing(service);
    let roles: Vec<PortRole> = service
        .ports
        .iter()
        .map(
            |p| match owners(&(p.listener_port, p.kind == PortKind::Udp)) {
                Some((owner, _)) if owner == key => {
                    if how == Sharing::Exclusive {
                        PortRole::Owner
                    } else {
                        PortRole::Member
                    }
                }
                Some((_, owner_how)) if owner_how == how && how != Sharing::Exclusive => {
                    PortRole::Member
                }
                Some((owner, owner_how)) => PortRole::Lost(owner, owner_how),
                // Ingress off: nothing claimed.
                None => PortRole::Owner,
            },
        )
        .collect();
    let secret = service.tls_secret().and_then(|s| model.secrets.get(s));
    let structure = structure_digest(service, &roles, secret.is_some());
    let mut output = match old {
        Some(old) if old.structure == structure => Output {
            load_assignments: Vec::new(),
            secrets: Vec::new(),
            proxyless: ProxylessOutput {
                load_assignments: Vec::new(),
                ..old.proxyless.clone()
            },
            ..old.clone()
        },
        _ => translate_service(
            key,
            service,
            &roles,
            secret.is_some(),
            tls_termination,
            structure,
            encoders,
        ),
    };
    if let (Some(name), Some(secret)) = (service.tls_secret(), secret) {
        if tls_termination && !output.shared.is_empty() {
            let name = secret_name(name);
            output.secrets.push((
                name.clone(),
                Resource::new(&envoy::tls_secret(&name, secret)),
            ));
        }
    }
    let endpoints = model.endpoints_of(key);
    for port in service.ports.iter().filter(|p| p.kind == PortKind::Grpc) {
        output
            .proxyless
            .load_assignments
            .push(Resource::new(&proxyless::load_assignment(
                &cluster_name(key, port),
                &port.name,
                endpoints,
                primary,
                service.failover,
            )));
    }
    cache.sync(endpoints);
    // Named as the port's cluster, whose name it shares (one cluster per port, in order).
    for (port, cluster) in service.ports.iter().zip(&output.clusters) {
        debug_assert_eq!(**cluster.name(), cluster_name(key, port));
        output.load_assignments.push(cache.load_assignment(
            cluster.name(),
            &port.name,
            endpoints,
            primary,
            service.failover,
        ));
    }
    output
}

/// The SDS name of a Secret's certificate: `NAMESPACE/NAME`.
pub fn secret_name(secret: &ObjectKey) -> String {
    format!("{}/{}", secret.namespace, secret.name)
}

/// Clusters, listeners and routes: everything but the endpoints.
fn translate_service(
    key: &ServiceKey,
    service: &Service,
    roles: &[PortRole],
    secret_present: bool,
    tls_termination: bool,
    structure: u128,
    encoders: &mut Encoders,
) -> Output {
    let mut output = Output {
        structure,
        ..Default::default()
    };
    let how = sharing(service);
    for (port, role) in service.ports.iter().zip(roles) {
        let name = cluster_name(key, port);
        // The name of the port's cluster, endpoints and route table, and what its
        // listeners reference: one string.
        let shared_name: Arc<str> = Arc::from(name.as_str());
        output
            .clusters
            .push(encoders.cluster(&shared_name, port.kind, service.proxy_protocol));
        if port.kind == PortKind::Grpc {
            output
                .proxyless
                .clusters
                .push(Resource::new(&proxyless::cluster(&name)));
            output
                .proxyless
                .routes
                .push(Resource::new(&envoy::route_configuration(
                    &name, &name, port.kind,
                )));
            for target in proxyless::listener_names(key, port) {
                output.proxyless.listeners.push(Resource::with_references(
                    &proxyless::listener(&target, &name),
                    vec![(ResourceType::Route, name.clone())],
                ));
            }
        }
        if !service.ingress {
            continue;
        }
        let report = |reason: String| Skipped::new(ObjectKind::Service, key, reason);
        match (role, how) {
            (PortRole::Lost(owner, owner_how), _) => {
                let reason = match (owner_how, how) {
                    (Sharing::Exclusive, _) | (_, Sharing::Exclusive) => format!(
                        "listener port {} is already used by Service {owner}: no ingress listener for port {}",
                        port.listener_port, port.port
                    ),
                    _ => format!(
                        "listener port {} is shared by {} (first: Service {owner}), not by {}: no ingress listener for port {}",
                        port.listener_port,
                        sharing_name(*owner_how),
                        sharing_name(how),
                        port.port
                    ),
                };
                output.conflicts.push(report(reason));
                continue;
            }
            (_, Sharing::Exclusive) => {}
            (_, shared_how) => {
                let terminate = match &service.tls {
                    Some(TlsMode::Terminate { secret }) => {
                        if !tls_termination {
                            output.conflicts.push(report(format!(
                                "TLS termination is turned off (--tls-termination=false): no listener for port {}",
                                port.port
                            )));
                            continue;
                        }
                        if !secret_present {
                            output.conflicts.push(report(format!(
                                "tls-secret {secret}: no valid kubernetes.io/tls Secret of that name: its hosts are not served on port {}",
                                port.port
                            )));
                            continue;
                        }
                        // The chain routes HTTP by the Service's own route table.
                        output
                            .routes
                            .push(Resource::new(&envoy::terminated_route_configuration(
                                &name,
                                &service.hosts,
                                &name,
                                port.kind,
                            )));
                        Some(shared::Terminate {
                            secret: secret_name(secret),
                            route: name.clone(),
                        })
                    }
                    _ => None,
                };
                output.shared.push(Arc::new(SharedPiece {
                    listener_port: port.listener_port,
                    sharing: shared_how,
                    hosts: service.hosts.clone(),
                    cluster: name.clone(),
                    kind: port.kind,
                    terminate,
                }));
                continue;
            }
        }
        if port.kind.is_http() {
            output.routes.push(encoders.route(&shared_name, port.kind));
        }
        for family in Family::BOTH {
            let listener = encoders.listener(
                &listener_name(key, port, family),
                family,
                port,
                &shared_name,
            );
            output.listeners.push((family, listener));
        }
    }
    output
}

/// The encoders of a Service port's own cluster, route table and listeners: templates
/// by shape, filled with the port's names and listener port.
#[derive(Debug, Default)]
struct Encoders {
    clusters: Templates<(PortKind, Option<ProxyProtocol>)>,
    routes: Templates<PortKind>,
    listeners: Templates<(PortKind, Family)>,
}

impl Encoders {
    /// [`envoy::cluster`], encoded.
    fn cluster(
        &mut self,
        name: &Arc<str>,
        kind: PortKind,
        proxy_protocol: Option<ProxyProtocol>,
    ) -> Resource {
        let values = Values {
            texts: &[name],
            port: 0,
        };
        let encoded = self.clusters.encode((kind, proxy_protocol), values, |v| {
            envoy::cluster(v.texts[0], &port_of(kind, 0), proxy_protocol)
        });
        let references = vec![(ResourceType::Endpoint, name.clone())];
        debug_assert_eq!(
            vec![(ResourceType::Endpoint, name.to_string())],
            envoy::cluster(name, &port_of(kind, 0), proxy_protocol).references()
        );
        Resource::from_encoded_with_references(
            ResourceType::Cluster,
            name.clone(),
            &encoded,
            references,
        )
    }

    /// [`envoy::route_configuration`] named as its cluster, encoded.
    fn route(&mut self, name: &Arc<str>, kind: PortKind) -> Resource {
        let values = Values {
            texts: &[name],
            port: 0,
        };
        let encoded = self.routes.encode(kind, values, |v| {
            envoy::route_configuration(v.texts[0], v.texts[0], kind)
        });
        Resource::from_encoded_with_references(ResourceType::Route, name.clone(), &encoded, vec![])
    }

    /// [`envoy::listener`] of an exclusive port, encoded; an HTTP one takes its routes
    /// from the route table named as its cluster.
    fn listener(
        &mut self,
        name: &str,
        family: Family,
        port: &ServicePort,
        cluster: &Arc<str>,
    ) -> Resource {
        let kind = port.kind;
        let build = |v: Values<'_>| {
            let route = if kind.is_http() { v.texts[1] } else { "" };
            envoy::listener(
                v.texts[0],
                family,
                &port_of(kind, v.port),
                v.texts[1],
                route,
            )
        };
        let values = Values {
            texts: &[name, cluster],
            port: port.listener_port,
        };
        let encoded = self.listeners.encode((kind, family), values, build);
        let references: Vec<(ResourceType, Arc<str>)> = kind
            .is_http()
            .then(|| (ResourceType::Route, cluster.clone()))
            .into_iter()
            .collect();
        debug_assert_eq!(
            references
                .iter()
                .map(|(ty, name)| (*ty, name.to_string()))
                .collect::<Vec<_>>(),
            build(values).references()
        );
        Resource::from_encoded_with_references(
            ResourceType::Listener,
            name.into(),
            &encoded,
            references,
        )
    }
}

/// A Service port of this kind on this listener port, as the encoders' messages see it
/// (they read nothing else of it).
fn port_of(kind: PortKind, listener_port: u16) -> ServicePort {
    ServicePort {
        name: String::new(),
        port: 0,
        kind,
        listener_port,
    }
}

fn sharing_name(how: Sharing) -> &'static str {
    match how {
        Sharing::Exclusive => "one Service",
        Sharing::Hosts => "HTTP Host",
        Sharing::Sni => "TLS SNI",
    }
}

#[cfg(test)]
mod tests;
