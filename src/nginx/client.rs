//! The agent's side of Delta ADS, without I/O: what to request on (re)connect, what a
//! response changes, which EDS and RDS names to follow, and the ACK or NACK of every
//! response once nginx has (or has not) taken the configuration it led to.
//!
//! Responses are taken as they come and answered in batches: the agent renders and
//! applies once a burst is over, then answers every response of the batch. When nginx
//! refuses the batch, the agent falls back to the last configuration nginx took with the
//! batch's endpoint changes and removals (which can't make a configuration invalid; the
//! server sends nothing twice, so they must not be lost with the rest), ACKs those and
//! NACKs the listeners, clusters and routes of the batch (what Envoy does with a rejected
//! update); so one bad resource does not hold back the next good change. A response that
//! carried a resource nginx can't express is NACKed with the reason while the rest of it
//! is applied.

use std::collections::{BTreeMap, BTreeSet};

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse,
};
use envoy_types::pb::google::rpc::Status as RpcStatus;

use super::render::{references, render, Refused, Rendered, Resources};
use crate::snapshot::ResourceType;

/// The types the agent follows: listeners and clusters by wildcard, endpoints and routes
/// by the names those reference. Secrets are not asked for.
const WILDCARD: [ResourceType; 2] = [ResourceType::Cluster, ResourceType::Listener];
const NAMED: [ResourceType; 2] = [ResourceType::Endpoint, ResourceType::Route];

/// A received response not answered yet.
#[derive(Clone, Debug)]
struct Pending {
    /// As the response said it (the answer echoes it).
    type_url: String,
    ty: Option<ResourceType>,
    nonce: String,
    /// Names the response added or changed.
    added: BTreeSet<String>,
    /// Names it removed.
    removed: BTreeSet<String>,
    /// Resources that did not decode.
    errors: Vec<String>,
}

/// The client's state across streams.
#[derive(Debug)]
pub struct Client {
    node: Node,
    /// What has been received (the last applied state plus the batch in progress).
    held: Resources,
    /// Per type and name, the version received.
    versions: BTreeMap<ResourceType, BTreeMap<String, String>>,
    /// What nginx last took, and the versions of it.
    good: Resources,
    good_versions: BTreeMap<ResourceType, BTreeMap<String, String>>,
    /// EDS and RDS names subscribed to.
    subscribed: BTreeMap<ResourceType, BTreeSet<String>>,
    /// Subscribed names no response has answered yet (the configuration is warming).
    awaiting: BTreeSet<(ResourceType, String)>,
    pending: Vec<Pending>,
    /// Whether something changed since the last apply.
    dirty: bool,
}

/// How a batch went.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// nginx took it (reloaded, or had nothing to reload).
    Applied,
    /// nginx refused it: the reason (`nginx -t`'s message, or a reload that never came).
    Failed(String),
}

impl Client {
    pub fn new(node: Node) -> Self {
        Client {
            node,
            held: Resources::default(),
            versions: BTreeMap::new(),
            good: Resources::default(),
            good_versions: BTreeMap::new(),
            subscribed: BTreeMap::new(),
            awaiting: BTreeSet::new(),
            pending: Vec::new(),
            dirty: false,
        }
    }

    /// The requests that open a stream: the node, the wildcard types, the names followed,
    /// each with the versions already held so that the server sends only what changed.
    /// Responses of a previous stream are forgotten (the stream that would carry their
    /// answers is gone); what they brought stays held.
    pub fn start(&mut self) -> Vec<DeltaDiscoveryRequest> {
        self.pending.clear();
        let mut requests = Vec::new();
        for ty in WILDCARD.into_iter().chain(NAMED) {
            let names: Vec<String> = self
                .subscribed
                .get(&ty)
                .map(|n| n.iter().cloned().collect())
                .unwrap_or_default();
            if NAMED.contains(&ty) && names.is_empty() {
                continue;
            }
            for name in &names {
                if !self.versions.get(&ty).is_some_and(|v| v.contains_key(name)) {
                    self.awaiting.insert((ty, name.clone()));
                }
            }
            requests.push(DeltaDiscoveryRequest {
                node: requests.is_empty().then(|| self.node.clone()),
                type_url: ty.type_url().to_owned(),
                resource_names_subscribe: names,
                initial_resource_versions: self
                    .versions
                    .get(&ty)
                    .map(|v| v.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
                    .unwrap_or_default(),
                ..Default::default()
            });
        }
        requests
    }

    /// Takes a response; the subscription changes it leads to, to send at once.
    pub fn receive(&mut self, response: DeltaDiscoveryResponse) -> Vec<DeltaDiscoveryRequest> {
        let Some(ty) = ResourceType::from_type_url(&response.type_url) else {
            self.pending.push(Pending {
                errors: vec![format!("type {} was not asked for", response.type_url)],
                type_url: response.type_url,
                ty: None,
                nonce: response.nonce,
                added: BTreeSet::new(),
                removed: BTreeSet::new(),
            });
            return Vec::new();
        };
        let mut pending = Pending {
            type_url: response.type_url,
            ty: Some(ty),
            nonce: response.nonce,
            added: BTreeSet::new(),
            removed: BTreeSet::new(),
            errors: Vec::new(),
        };
        for resource in response.resources {
            self.awaiting.remove(&(ty, resource.name.clone()));
            let Some(any) = resource.resource else {
                continue;
            };
            match self.held.insert(ty, &resource.name, &any) {
                Ok(()) => {
                    self.versions
                        .entry(ty)
                        .or_default()
                        .insert(resource.name.clone(), resource.version);
                    pending.added.insert(resource.name);
                    self.dirty = true;
                }
                Err(e) => pending.errors.push(e),
            }
        }
        for name in response.removed_resources {
            self.awaiting.remove(&(ty, name.clone()));
            self.held.remove(ty, &name);
            if let Some(v) = self.versions.get_mut(&ty) {
                v.remove(&name);
            }
            pending.removed.insert(name);
            self.dirty = true;
        }
        self.pending.push(pending);
        self.follow()
    }

    /// Subscribes to the endpoints and routes held resources reference, and drops the
    /// rest.
    fn follow(&mut self) -> Vec<DeltaDiscoveryRequest> {
        let wanted = references(&self.held);
        let mut requests = Vec::new();
        for ty in NAMED {
            let want = wanted.get(&ty).cloned().unwrap_or_default();
            let have = self.subscribed.entry(ty).or_default();
            let subscribe: Vec<String> = want.difference(have).cloned().collect();
            let unsubscribe: Vec<String> = have.difference(&want).cloned().collect();
            if subscribe.is_empty() && unsubscribe.is_empty() {
                continue;
            }
            for name in &subscribe {
                self.awaiting.insert((ty, name.clone()));
            }
            for name in &unsubscribe {
                self.awaiting.remove(&(ty, name.clone()));
                self.held.remove(ty, name);
                if let Some(v) = self.versions.get_mut(&ty) {
                    v.remove(name);
                }
                self.dirty = true;
            }
            *have = want;
            requests.push(DeltaDiscoveryRequest {
                type_url: ty.type_url().to_owned(),
                resource_names_subscribe: subscribe,
                resource_names_unsubscribe: unsubscribe,
                ..Default::default()
            });
        }
        requests
    }

    /// Whether responses wait for an answer.
    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Whether names subscribed to have not arrived yet and can: a listener whose
    /// cluster's endpoints are on their way is better applied with them. The server sends
    /// one response per type at a time, so a name whose type has a response waiting for
    /// this batch's answer can't arrive before it: no use waiting.
    pub fn warming(&self) -> bool {
        self.awaiting
            .iter()
            .any(|(ty, _)| !self.pending.iter().any(|p| p.ty == Some(*ty)))
    }

    /// Stops waiting for what has not arrived (a name the server does not have is never
    /// answered); it is applied when it comes.
    pub fn stop_warming(&mut self) {
        self.awaiting.clear();
    }

    /// Whether something changed since nginx last took a configuration.
    pub fn dirty(&self) -> bool {
        self.dirty
    }

    /// The configuration of what is held.
    pub fn render(&self) -> Rendered {
        render(&self.held)
    }

    /// What is held.
    pub fn resources(&self) -> &Resources {
        &self.held
    }

    /// Answers every pending response after an apply: a NACK for a response whose
    /// resource did not decode or was refused, a NACK of every response of a batch nginx
    /// refused (whose resources go back to what nginx holds), an ACK otherwise. The
    /// requests are the answers followed by the subscription changes a rollback leads to.
    pub fn applied(
        &mut self,
        outcome: &Outcome,
        refused: &[Refused],
    ) -> Vec<DeltaDiscoveryRequest> {
        let failed = match outcome {
            Outcome::Applied => None,
            Outcome::Failed(reason) => Some(reason.as_str()),
        };
        let requests = self.answer(refused, |_| failed);
        self.dirty = false;
        match outcome {
            Outcome::Applied => {
                self.good = self.held.clone();
                self.good_versions = self.versions.clone();
                requests
            }
            Outcome::Failed(_) => {
                let good = (self.good.clone(), self.good_versions.clone());
                self.rollback_to(good, requests)
            }
        }
    }

    /// After nginx refused the batch: what nginx took last with the batch's endpoint
    /// changes and removals, when that differs from what nginx took last.
    pub fn fallback(&self) -> Option<Resources> {
        let (resources, _) = self.fallback_state();
        (resources != self.good).then_some(resources)
    }

    fn fallback_state(&self) -> (Resources, BTreeMap<ResourceType, BTreeMap<String, String>>) {
        let mut resources = self.good.clone();
        let mut versions = self.good_versions.clone();
        for pending in &self.pending {
            let Some(ty) = pending.ty else { continue };
            for name in &pending.removed {
                resources.remove(ty, name);
                if let Some(v) = versions.get_mut(&ty) {
                    v.remove(name);
                }
            }
            if ty != ResourceType::Endpoint {
                continue;
            }
            for name in &pending.added {
                match self.held.endpoints.get(name) {
                    Some(cla) => {
                        resources.endpoints.insert(name.clone(), cla.clone());
                        if let Some(version) = self.versions.get(&ty).and_then(|v| v.get(name)) {
                            versions
                                .entry(ty)
                                .or_default()
                                .insert(name.clone(), version.clone());
                        }
                    }
                    None => resources.remove(ty, name),
                }
            }
        }
        (resources, versions)
    }

    /// nginx took [`Client::fallback`] after refusing the batch: the endpoint responses
    /// and those that only removed are ACKed, the others NACKed with `reason`.
    pub fn applied_fallback(
        &mut self,
        reason: &str,
        refused: &[Refused],
    ) -> Vec<DeltaDiscoveryRequest> {
        let state = self.fallback_state();
        let requests = self.answer(refused, |p| {
            (p.ty != Some(ResourceType::Endpoint) && !p.added.is_empty()).then_some(reason)
        });
        self.dirty = false;
        self.good = state.0.clone();
        self.good_versions = state.1.clone();
        self.rollback_to(state, requests)
    }

    /// The answer to every pending response; `failed` says which the batch's failure
    /// NACKs.
    fn answer<'r>(
        &mut self,
        refused: &[Refused],
        failed: impl Fn(&Pending) -> Option<&'r str>,
    ) -> Vec<DeltaDiscoveryRequest> {
        let mut requests = Vec::new();
        for pending in std::mem::take(&mut self.pending) {
            let mut errors = pending.errors.clone();
            for r in refused {
                if Some(r.ty) == pending.ty
                    && (pending.added.contains(&r.name) || pending.removed.contains(&r.name))
                {
                    errors.push(format!("{}: {}", r.name, r.reason));
                }
            }
            if let Some(reason) = failed(&pending) {
                errors.push(format!("nginx refused the configuration: {reason}"));
            }
            requests.push(DeltaDiscoveryRequest {
                type_url: pending.type_url,
                response_nonce: pending.nonce,
                error_detail: (!errors.is_empty()).then(|| RpcStatus {
                    // INVALID_ARGUMENT, as Envoy reports a rejected update.
                    code: 3,
                    message: errors.join("; "),
                    details: Vec::new(),
                }),
                ..Default::default()
            });
        }
        requests
    }

    /// Holds `state` (what nginx serves) and follows what it references.
    fn rollback_to(
        &mut self,
        state: (Resources, BTreeMap<ResourceType, BTreeMap<String, String>>),
        mut requests: Vec<DeltaDiscoveryRequest>,
    ) -> Vec<DeltaDiscoveryRequest> {
        (self.held, self.versions) = state;
        requests.extend(self.follow());
        requests
    }
}

#[cfg(test)]
mod tests;
