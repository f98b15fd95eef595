//! The per-stream xDS protocol as I/O-free state machines: a request in gives responses
//! out; a snapshot change in gives responses out. The gRPC layer only moves messages.
//!
//! Rules implemented (Envoy's `xds_protocol` document):
//! - wildcard and named subscriptions, including legacy wildcard (an empty first request);
//! - one response in flight per type: the next waits for the ACK or NACK of the last, so a
//!   slow client coalesces to the latest snapshot instead of queueing responses;
//! - an ACK is never answered with a resend; a NACK is recorded with its text and the
//!   rejected content is not sent again (only newer content is);
//! - requests carrying a nonce other than the latest one sent are stale and ignored;
//! - make-before-break: on ADS a snapshot change is sent clusters, endpoints, listeners,
//!   routes, in that order.

pub mod delta;
pub mod request;
mod response;
pub mod sotw;
mod subscription;

use std::collections::BTreeSet;
use std::sync::Arc;

use envoy_types::pb::envoy::config::core::v3::Node;
use serde::Serialize;

use super::authorization::{Denied, NodeAuthorization};
use crate::snapshot::{Resource, ResourceType, Snapshot, SnapshotSet, TypeSnapshot, DEFAULT_GROUP};
pub use request::{DeltaRequest, Names, RequestError, SotwRequest};
pub use response::{DeltaResponse, Resources, Response, SotwResponse};
pub use subscription::Subscription;

/// A stream's protocol state machine, SotW or Delta: requests and published snapshots
/// in, responses out. The transport drives it and decides nothing.
pub trait Machine: Send + 'static {
    type Request: Send + 'static;
    type Response: Response;
    /// Handles one request (in any form that converts to the stream's request type);
    /// `set` is the latest published snapshot set, if any.
    fn on_request(
        &mut self,
        req: impl Into<Self::Request>,
        set: Option<&SnapshotSet>,
    ) -> Result<Outcome<Self::Response>, ProtocolError>;
    /// Handles a newly published snapshot set: responses in make-before-break order.
    fn on_snapshot(&mut self, set: &SnapshotSet) -> Outcome<Self::Response>;
    /// What `/debug/clients` and CSDS show of the stream.
    fn status(&self) -> StreamStatus;
    /// The client, once its first request named it.
    fn node(&self) -> Option<&Node>;
}

/// Which types a stream may carry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    /// ADS: every type, multiplexed.
    Aggregated,
    /// A per-type service (CDS, EDS, LDS or RDS).
    Single(ResourceType),
}

impl Scope {
    fn resolve(self, type_url: &str) -> Result<ResourceType, ProtocolError> {
        match self {
            Scope::Aggregated => ResourceType::from_type_url(type_url)
                .ok_or_else(|| ProtocolError::UnknownType(type_url.to_owned())),
            // Per-type services may leave the type URL out: it is implied.
            Scope::Single(ty) if type_url.is_empty() || type_url == ty.type_url() => Ok(ty),
            Scope::Single(ty) => Err(ProtocolError::WrongType {
                got: type_url.to_owned(),
                service: ty,
            }),
        }
    }
}

/// Maps a node to the group whose snapshot it is served (see [`SnapshotSet`]); an error
/// names what is wrong with the node.
pub type NodeGrouping = Arc<dyn Fn(&Node) -> Result<String, String> + Send + Sync>;

/// Every node in [`DEFAULT_GROUP`].
pub fn single_group() -> NodeGrouping {
    Arc::new(|_| Ok(DEFAULT_GROUP.to_owned()))
}

/// Which node a stream's client may claim: the rules, and the identities its verified
/// certificate carries.
#[derive(Clone, Debug)]
pub struct StreamAuthorization {
    pub rules: Arc<NodeAuthorization>,
    pub identities: Arc<[String]>,
}

/// What a stream may do.
#[derive(Clone, Debug)]
pub struct StreamPolicy {
    /// `None`: any client may claim any node (no client certificates are verified).
    pub authorization: Option<StreamAuthorization>,
    pub max_names_per_request: usize,
}

impl Default for StreamPolicy {
    fn default() -> Self {
        StreamPolicy {
            authorization: None,
            max_names_per_request: usize::MAX,
        }
    }
}

/// A request the stream cannot go on with; it ends that stream only.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    #[error("permission denied: {0}")]
    Unauthorized(Denied),
    #[error("a request may name at most {limit} resources; this one names {count}")]
    TooManyNames { count: usize, limit: usize },
    #[error("the first request on an xDS stream must identify the client in its `node` field, and this one has no node")]
    MissingNode,
    #[error("invalid node: {0}")]
    InvalidNode(String),
    #[error("unknown type URL {0:?}: this server serves {types}", types = served_types())]
    UnknownType(String),
    #[error("type URL {got:?} sent to the {service} service, which serves only {}", .service.type_url())]
    WrongType { got: String, service: ResourceType },
}

fn served_types() -> String {
    ResourceType::ALL.map(|t| t.type_url()).join(", ")
}

impl ProtocolError {
    /// The gRPC status the client receives.
    pub fn into_status(self) -> tonic::Status {
        match self {
            ProtocolError::Unauthorized(_) => tonic::Status::permission_denied(self.to_string()),
            ProtocolError::TooManyNames { .. } => {
                tonic::Status::resource_exhausted(self.to_string())
            }
            _ => tonic::Status::invalid_argument(self.to_string()),
        }
    }
}

/// Something a stream's owner should log or count.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Ack {
        ty: ResourceType,
        version: String,
    },
    Nack {
        ty: ResourceType,
        version: String,
        message: String,
    },
    StaleNonce {
        ty: ResourceType,
        nonce: String,
    },
}

/// What one step of a state machine produced.
#[derive(Debug)]
pub struct Outcome<R> {
    pub responses: Vec<R>,
    pub events: Vec<Event>,
}

impl<R> Default for Outcome<R> {
    fn default() -> Self {
        Outcome {
            responses: Vec::new(),
            events: Vec::new(),
        }
    }
}

/// SotW or Delta.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum StreamKind {
    #[serde(rename = "sotw")]
    Sotw,
    #[serde(rename = "delta")]
    Delta,
}

impl StreamKind {
    pub fn as_str(self) -> &'static str {
        match self {
            StreamKind::Sotw => "sotw",
            StreamKind::Delta => "delta",
        }
    }
}

/// A rejected response, as the client reported it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct NackRecord {
    pub version: String,
    pub nonce: String,
    pub message: String,
}

/// What one stream knows about one type, for `/debug/clients` and CSDS.
#[derive(Clone, Debug, Default, Serialize)]
pub struct TypeStatus {
    pub type_url: &'static str,
    pub wildcard: bool,
    pub subscribed_names: usize,
    pub sent_version: Option<String>,
    pub acked_version: Option<String>,
    pub pending_nonce: Option<String>,
    pub last_nack: Option<NackRecord>,
    pub nacks: u64,
    /// What was last sent (structure shared with the snapshot; for CSDS).
    #[serde(skip)]
    pub sent: Option<TypeSnapshot>,
    #[serde(skip)]
    pub subscription: Subscription,
}

impl TypeStatus {
    /// The resources the client was last sent, for what it subscribes to.
    pub fn sent_resources(&self) -> Resources {
        self.sent.as_ref().map_or_else(Resources::default, |sent| {
            self.subscription.resources_in(sent)
        })
    }

    /// The last response was rejected (and nothing newer has been acked).
    pub fn rejected(&self) -> Option<&NackRecord> {
        self.last_nack
            .as_ref()
            .filter(|n| Some(&n.version) == self.sent_version.as_ref())
    }
}

/// A response sent and not yet answered.
#[derive(Clone, Debug)]
struct Pending {
    nonce: String,
    version: String,
}

/// Per-type state shared by both protocol variants.
#[derive(Debug, Default)]
struct TypeState {
    /// The client has asked for this type on this stream.
    requested: bool,
    subscription: Subscription,
    /// Names subscribed since the last response (all of them when wildcard was turned on).
    newly_subscribed: BTreeSet<String>,
    newly_wildcard: bool,
    /// The snapshot whose content, restricted to the subscription, was last sent: the
    /// next response is the diff from it. Shares structure with the live snapshot.
    sent: Option<TypeSnapshot>,
    /// Latest nonce sent; requests carrying another one are stale.
    last_nonce: Option<String>,
    pending: Option<Pending>,
    acked_version: Option<String>,
    last_nack: Option<NackRecord>,
    nacks: u64,
}

impl TypeState {
    /// Applies an ACK or NACK for `nonce`; `None` when the nonce is stale.
    fn answer(
        &mut self,
        ty: ResourceType,
        nonce: &str,
        error: Option<String>,
        acked_version: impl FnOnce() -> String,
    ) -> Option<Event> {
        if self.pending.as_ref().map(|p| p.nonce.as_str()) != Some(nonce) {
            return None;
        }
        let pending = self.pending.take()?;
        Some(match error {
            Some(message) => {
                self.nacks += 1;
                self.last_nack = Some(NackRecord {
                    version: pending.version.clone(),
                    nonce: pending.nonce,
                    message: message.clone(),
                });
                Event::Nack {
                    ty,
                    version: pending.version,
                    message,
                }
            }
            None => {
                let version = acked_version();
                self.acked_version = Some(version.clone());
                Event::Ack { ty, version }
            }
        })
    }

    fn ready_to_send(&self) -> bool {
        self.requested && self.pending.is_none()
    }

    /// Records a response as sent: the client now has `current` (for what it subscribes).
    fn mark_sent(&mut self, current: &TypeSnapshot) {
        self.sent = Some(current.clone());
        self.newly_subscribed.clear();
        self.newly_wildcard = false;
    }

    fn start_pending(&mut self, nonce: String, version: String) {
        self.last_nonce = Some(nonce.clone());
        self.pending = Some(Pending { nonce, version });
    }

    /// Resources of `current` the client subscribes to, in name order.
    fn subscribed(&self, current: &TypeSnapshot) -> Resources {
        self.subscription.resources_in(current)
    }

    /// Newly subscribed resources that exist in `current`.
    fn newly<'a>(&self, current: &'a TypeSnapshot) -> Vec<&'a Resource> {
        // A wildcard subscribed and dropped again before the response asks for nothing.
        if self.newly_wildcard && self.subscription.wildcard {
            current.iter().collect()
        } else {
            self.newly_subscribed
                .iter()
                .filter_map(|n| current.get(n))
                .collect()
        }
    }

    fn status(&self, ty: ResourceType) -> TypeStatus {
        TypeStatus {
            type_url: ty.type_url(),
            wildcard: self.subscription.wildcard,
            subscribed_names: self.subscription.names.len(),
            sent_version: self.sent.as_ref().map(|s| s.version().to_string()),
            acked_version: self.acked_version.clone(),
            pending_nonce: self.pending.as_ref().map(|p| p.nonce.clone()),
            last_nack: self.last_nack.clone(),
            nacks: self.nacks,
            sent: self.sent.clone(),
            subscription: self.subscription.clone(),
        }
    }
}

/// Stream-wide state shared by both protocol variants: who the client is, which
/// snapshot group it gets, the nonce sequence.
struct StreamCore {
    scope: Scope,
    grouping: NodeGrouping,
    policy: StreamPolicy,
    node: Option<Node>,
    group: String,
    nonces: u64,
    types: [TypeState; ResourceType::COUNT],
}

impl StreamCore {
    fn new(scope: Scope, grouping: NodeGrouping, policy: StreamPolicy) -> Self {
        StreamCore {
            scope,
            grouping,
            policy,
            node: None,
            group: String::new(),
            nonces: 0,
            types: Default::default(),
        }
    }

    /// The first request must carry the node; later ones may omit it (Envoy's
    /// `set_node_on_first_message_only`).
    fn accept_node(&mut self, node: Option<Node>) -> Result<(), ProtocolError> {
        if self.node.is_some() {
            return Ok(());
        }
        let node = node.ok_or(ProtocolError::MissingNode)?;
        if let Some(authorization) = &self.policy.authorization {
            authorization
                .rules
                .check(&authorization.identities, &node)
                .map_err(ProtocolError::Unauthorized)?;
        }
        self.group = (self.grouping)(&node).map_err(ProtocolError::InvalidNode)?;
        self.node = Some(node);
        Ok(())
    }

    /// A request may name at most the policy's number of resources.
    fn check_names(&self, count: usize) -> Result<(), ProtocolError> {
        let limit = self.policy.max_names_per_request;
        if count > limit {
            return Err(ProtocolError::TooManyNames { count, limit });
        }
        Ok(())
    }

    fn snapshot<'a>(&self, set: Option<&'a SnapshotSet>) -> Option<&'a Snapshot> {
        self.node.as_ref()?;
        set?.get(&self.group)
    }

    fn next_nonce(&mut self) -> String {
        self.nonces += 1;
        self.nonces.to_string()
    }

    fn types_in_order(&self) -> Vec<ResourceType> {
        match self.scope {
            Scope::Aggregated => ResourceType::ALL.to_vec(),
            Scope::Single(ty) => vec![ty],
        }
    }

    fn status(&self, kind: StreamKind) -> StreamStatus {
        StreamStatus {
            node_id: self.node.as_ref().map(|n| n.id.clone()).unwrap_or_default(),
            cluster: self
                .node
                .as_ref()
                .map(|n| n.cluster.clone())
                .unwrap_or_default(),
            user_agent: self
                .node
                .as_ref()
                .map(|n| n.user_agent_name.clone())
                .unwrap_or_default(),
            group: self.group.clone(),
            kind,
            aggregated: self.scope == Scope::Aggregated,
            types: ResourceType::ALL
                .into_iter()
                .filter(|ty| self.types[ty.index()].requested)
                .map(|ty| self.types[ty.index()].status(ty))
                .collect(),
        }
    }
}

/// A stream as `/debug/clients` shows it.
#[derive(Clone, Debug, Serialize)]
pub struct StreamStatus {
    pub node_id: String,
    pub cluster: String,
    /// The node's `user_agent_name`: `envoy`, `dualstack-xds-nginx`, a gRPC library.
    pub user_agent: String,
    pub group: String,
    pub kind: StreamKind,
    pub aggregated: bool,
    pub types: Vec<TypeStatus>,
}

#[cfg(test)]
mod tests;
