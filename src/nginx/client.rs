//! The agent's side of Delta ADS, without I/O: what to request on (re)connect, what a
//! response changes, which EDS and RDS names to follow, and the ACK or NACK of every
//! response once nginx has (or has not) taken the configuration it led to.
//!
//! Responses are taken as they come and answered in batches: the agent renders and
//! applies once a burst is over, then answers every response of the batch. When nginx
//! refuses the batch, the resources go back to the last configuration nginx took (what
//! Envoy does with a rejected update), so one bad resource does not hold back the next
//! good change; a response that carried a resource nginx can't express is NACKed with the
//! reason while the rest of it is applied.

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
    ty: ResourceType,
    nonce: String,
    /// Names the response carried (added or removed).
    names: BTreeSet<String>,
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
                ty: ResourceType::Listener,
                nonce: response.nonce,
                names: BTreeSet::new(),
                errors: vec![format!("type {} was not asked for", response.type_url)],
            });
            return Vec::new();
        };
        let mut pending = Pending {
            ty,
            nonce: response.nonce,
            names: BTreeSet::new(),
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
                    pending.names.insert(resource.name);
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
            pending.names.insert(name);
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

    /// Whether names subscribed to have not arrived yet: a listener whose cluster's
    /// endpoints are on their way is better applied with them.
    pub fn warming(&self) -> bool {
        !self.awaiting.is_empty()
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
        let mut requests = Vec::new();
        for pending in std::mem::take(&mut self.pending) {
            let mut errors = pending.errors;
            for r in refused {
                if r.ty == pending.ty && pending.names.contains(&r.name) {
                    errors.push(format!("{}: {}", r.name, r.reason));
                }
            }
            if let Outcome::Failed(reason) = outcome {
                errors.push(format!("nginx refused the configuration: {reason}"));
            }
            requests.push(DeltaDiscoveryRequest {
                type_url: pending.ty.type_url().to_owned(),
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
        match outcome {
            Outcome::Applied => {
                self.good = self.held.clone();
                self.good_versions = self.versions.clone();
                self.dirty = false;
            }
            Outcome::Failed(_) => {
                self.held = self.good.clone();
                self.versions = self.good_versions.clone();
                self.dirty = false;
                requests.extend(self.follow());
            }
        }
        requests
    }
}

#[cfg(test)]
mod tests;
