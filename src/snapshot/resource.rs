//! One xDS resource, encoded once: the bytes every client receives and the content hash
//! that versions them.

use std::fmt;
use std::sync::Arc;

use bytes::Bytes;
use envoy_types::pb::envoy::config::cluster::v3::{
    cluster::ClusterDiscoveryType, cluster::DiscoveryType, Cluster,
};
use envoy_types::pb::envoy::config::core::v3::transport_socket;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    http_connection_manager::RouteSpecifier, HttpConnectionManager,
};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    DownstreamTlsContext, Secret,
};
use envoy_types::pb::google::protobuf::Any;
use prost::{Message, Name};

/// The resource types this server serves, in make-before-break order: clusters before
/// their endpoints, listeners before their routes (Envoy's `xds_protocol`, "eventual
/// consistency considerations"), the TLS secrets listeners use before the listeners.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ResourceType {
    Cluster,
    Endpoint,
    Secret,
    Listener,
    Route,
}

impl ResourceType {
    /// How many types there are.
    pub const COUNT: usize = 5;

    /// Every type, in the order an ADS stream sends them.
    pub const ALL: [ResourceType; Self::COUNT] = [
        ResourceType::Cluster,
        ResourceType::Endpoint,
        ResourceType::Secret,
        ResourceType::Listener,
        ResourceType::Route,
    ];

    /// The type URL clients put in requests.
    pub fn type_url(self) -> &'static str {
        match self {
            ResourceType::Cluster => "type.googleapis.com/envoy.config.cluster.v3.Cluster",
            ResourceType::Endpoint => {
                "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
            }
            ResourceType::Secret => {
                "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"
            }
            ResourceType::Listener => "type.googleapis.com/envoy.config.listener.v3.Listener",
            ResourceType::Route => "type.googleapis.com/envoy.config.route.v3.RouteConfiguration",
        }
    }

    /// The type for a type URL, or `None` for a type this server does not serve.
    pub fn from_type_url(url: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.type_url() == url)
    }

    /// Short lowercase name used in logs and metric labels (`cds`, `eds`, `sds`, `lds`,
    /// `rds`).
    pub fn short_name(self) -> &'static str {
        match self {
            ResourceType::Cluster => "cds",
            ResourceType::Endpoint => "eds",
            ResourceType::Secret => "sds",
            ResourceType::Listener => "lds",
            ResourceType::Route => "rds",
        }
    }

    /// Listener and Cluster responses carry the complete state of the world in SotW;
    /// the other types are sent resource by resource, as in Delta (`xds_protocol`,
    /// "Grouping resources into responses").
    pub fn sotw_full_state(self) -> bool {
        matches!(self, ResourceType::Cluster | ResourceType::Listener)
    }

    /// The types whose names this type's resources reference: clusters name their
    /// ClusterLoadAssignment, listeners their RouteConfigurations and TLS secrets.
    pub fn referenced_types(self) -> &'static [ResourceType] {
        match self {
            ResourceType::Cluster => &[ResourceType::Endpoint],
            ResourceType::Listener => &[ResourceType::Route, ResourceType::Secret],
            _ => &[],
        }
    }

    /// What references resources of this type (they must be referenced, and present
    /// when referenced), if anything does.
    pub fn referenced_by(self) -> Option<&'static str> {
        match self {
            ResourceType::Endpoint => Some("cluster"),
            ResourceType::Route | ResourceType::Secret => Some("listener"),
            _ => None,
        }
    }

    pub(crate) fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for ResourceType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.short_name())
    }
}

/// A content hash: the same bytes give the same version in every process.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Version(pub(crate) u128);

impl Version {
    pub(crate) fn of_bytes(bytes: &[u8]) -> Self {
        Version(xxhash_rust::xxh3::xxh3_128(bytes))
    }

    /// The length of a version's text.
    pub const TEXT_LEN: usize = 11;

    /// The version as text (what `Display` writes), without allocating: the high 64 bits
    /// of the hash as 11 characters of unpadded base64url. Delta responses carry one per
    /// resource to every stream, so its length is bytes on every wire: 32 hex digits
    /// made a Delta sync of 10,000 clusters and their endpoints 8% larger. 64 bits keep
    /// a changed resource from reusing a version with a chance of 2^-64 per change.
    pub fn text(&self) -> [u8; Self::TEXT_LEN] {
        const DIGITS: &[u8; 64] =
            b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        // 64 bits padded to 66 (11 digits of 6), as base64 pads a last partial digit.
        let bits = (self.0 >> 64) << 2;
        let mut out = [0u8; Self::TEXT_LEN];
        for (i, digit) in out.iter_mut().enumerate() {
            *digit = DIGITS[((bits >> (60 - 6 * i)) & 0x3f) as usize];
        }
        out
    }

    /// Whether `text` is this version as `Display` writes it.
    pub fn is(&self, text: &str) -> bool {
        text.as_bytes() == self.text()
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(std::str::from_utf8(&self.text()).expect("base64url characters"))
    }
}

/// An Envoy resource message this server can serve.
pub trait XdsResource: Message + Name {
    /// Its xDS type.
    const TYPE: ResourceType;
    /// The name clients subscribe to.
    fn resource_name(&self) -> &str;
    /// The resources it depends on (of its [`ResourceType::referenced_types`]).
    fn references(&self) -> Vec<(ResourceType, String)> {
        Vec::new()
    }
}

impl XdsResource for Cluster {
    const TYPE: ResourceType = ResourceType::Cluster;
    fn resource_name(&self) -> &str {
        &self.name
    }
    fn references(&self) -> Vec<(ResourceType, String)> {
        let is_eds = matches!(
            self.cluster_discovery_type,
            Some(ClusterDiscoveryType::Type(t)) if t == DiscoveryType::Eds as i32
        );
        if !is_eds {
            return Vec::new();
        }
        let service_name = self
            .eds_cluster_config
            .as_ref()
            .map(|c| c.service_name.as_str())
            .filter(|s| !s.is_empty())
            .unwrap_or(&self.name);
        vec![(ResourceType::Endpoint, service_name.to_owned())]
    }
}

impl XdsResource for ClusterLoadAssignment {
    const TYPE: ResourceType = ResourceType::Endpoint;
    fn resource_name(&self) -> &str {
        &self.cluster_name
    }
}

impl XdsResource for Listener {
    const TYPE: ResourceType = ResourceType::Listener;
    fn resource_name(&self) -> &str {
        &self.name
    }
    fn references(&self) -> Vec<(ResourceType, String)> {
        use envoy_types::pb::envoy::config::listener::v3::filter::ConfigType;
        let chains: Vec<_> = self
            .filter_chains
            .iter()
            .chain(self.default_filter_chain.as_ref())
            .collect();
        let chain_filters = chains
            .iter()
            .flat_map(|chain| chain.filters.iter())
            .filter_map(|filter| match &filter.config_type {
                Some(ConfigType::TypedConfig(any)) => Some(any),
                _ => None,
            });
        let api_listener = self
            .api_listener
            .as_ref()
            .and_then(|api| api.api_listener.as_ref());
        let routes = chain_filters
            .chain(api_listener)
            .filter(|any| any.type_url == HttpConnectionManager::type_url())
            .filter_map(|any| HttpConnectionManager::decode(any.value.as_slice()).ok())
            .filter_map(|hcm| match hcm.route_specifier {
                Some(RouteSpecifier::Rds(rds)) => {
                    Some((ResourceType::Route, rds.route_config_name))
                }
                _ => None,
            });
        let secrets = chains
            .iter()
            .filter_map(|chain| chain.transport_socket.as_ref())
            .filter_map(|socket| match &socket.config_type {
                Some(transport_socket::ConfigType::TypedConfig(any)) => Some(any),
                _ => None,
            })
            .filter(|any| any.type_url == DownstreamTlsContext::type_url())
            .filter_map(|any| DownstreamTlsContext::decode(any.value.as_slice()).ok())
            .flat_map(|tls| {
                tls.common_tls_context
                    .unwrap_or_default()
                    .tls_certificate_sds_secret_configs
            })
            .map(|sds| (ResourceType::Secret, sds.name));
        let mut names: Vec<(ResourceType, String)> = routes.chain(secrets).collect();
        names.sort();
        names.dedup();
        names
    }
}

impl XdsResource for Secret {
    const TYPE: ResourceType = ResourceType::Secret;
    fn resource_name(&self) -> &str {
        &self.name
    }
}

impl XdsResource for RouteConfiguration {
    const TYPE: ResourceType = ResourceType::Route;
    fn resource_name(&self) -> &str {
        &self.name
    }
}

/// A resource as served: encoded once, shared by every stream. The bytes are the
/// encoded `google.protobuf.Any`, written into responses as they are.
///
/// One pointer: snapshots, per-Service records and the lists streams are sent hold and
/// move resources by the ten thousand, and a clone is one reference count.
#[derive(Clone, Debug)]
pub struct Resource(Arc<Encoded>);

#[derive(Debug)]
struct Encoded {
    name: Arc<str>,
    version: Version,
    any: Bytes,
    references: Box<[(ResourceType, Arc<str>)]>,
}

impl Resource {
    /// Encodes `message` once; its version is the hash of the encoded bytes.
    pub fn new<R: XdsResource>(message: &R) -> Self {
        Self::with_references(message, message.references())
    }

    /// Like [`Resource::new`], with the references already known to the caller (which
    /// saves decoding a listener's filters to find its routes).
    pub fn with_references<R: XdsResource>(
        message: &R,
        references: Vec<(ResourceType, String)>,
    ) -> Self {
        let mut references = references;
        references.sort();
        references.dedup();
        debug_assert_eq!(references, message.references());
        // The Any is written in one buffer: its head, then the message in place.
        let value_len = message.encoded_len();
        let mut any = any_head(R::TYPE, value_len);
        let start = any.len();
        message.encode(&mut any).expect("a Vec grows to any length");
        let version = Version::of_bytes(&any[start..]);
        debug_assert_eq!(any.len(), any.capacity());
        Resource(Arc::new(Encoded {
            name: Arc::from(message.resource_name()),
            version,
            any: Bytes::from(any),
            references: references
                .into_iter()
                .map(|(ty, name)| (ty, Arc::from(name)))
                .collect(),
        }))
    }

    /// A resource whose message is already encoded (`value`, the bytes of the message
    /// itself), as translation assembles ClusterLoadAssignments from encoded pieces.
    pub fn from_encoded(ty: ResourceType, name: &str, value: &[u8]) -> Self {
        Self::from_encoded_with_references(ty, name.into(), value, Vec::new())
    }

    /// [`Resource::from_encoded`], for a resource that references others. Names are
    /// shared: a Service port's cluster, its endpoints and its route table have one.
    pub fn from_encoded_with_references(
        ty: ResourceType,
        name: Arc<str>,
        value: &[u8],
        references: Vec<(ResourceType, Arc<str>)>,
    ) -> Self {
        let version = Version::of_bytes(value);
        let mut any = any_head(ty, value.len());
        any.extend_from_slice(value);
        debug_assert_eq!(any.len(), any.capacity());
        Resource(Arc::new(Encoded {
            name,
            version,
            any: Bytes::from(any),
            references: references.into(),
        }))
    }

    pub fn name(&self) -> &Arc<str> {
        &self.0.name
    }

    pub fn version(&self) -> Version {
        self.0.version
    }

    /// The encoded `Any`, shared by every response that carries this resource.
    pub fn encoded_any(&self) -> &Bytes {
        &self.0.any
    }

    /// The resource as a protobuf `Any` (a copy; responses use [`Resource::encoded_any`]).
    pub fn to_any(&self) -> Any {
        Any::decode(self.0.any.clone()).expect("encoded by Resource::new")
    }

    /// What this resource depends on (see [`XdsResource::references`]).
    pub fn references(&self) -> &[(ResourceType, Arc<str>)] {
        &self.0.references
    }
}

/// An encoded `google.protobuf.Any` of type `ty` up to its value, whose `value_len`
/// bytes the caller appends (room for exactly them is reserved: `Bytes` takes a full
/// `Vec` as it is, and one with room to spare with an allocation of its own).
fn any_head(ty: ResourceType, value_len: usize) -> Vec<u8> {
    use prost::encoding::{encode_key, encode_varint, encoded_len_varint, WireType};
    let type_url = ty.type_url();
    let field = |len: usize| 1 + encoded_len_varint(len as u64) + len;
    let total = field(type_url.len()) + if value_len > 0 { field(value_len) } else { 0 };
    let mut any = Vec::with_capacity(total);
    // google.protobuf.Any: type_url = 1, value = 2 (left out when empty, as prost does).
    encode_key(1, WireType::LengthDelimited, &mut any);
    encode_varint(type_url.len() as u64, &mut any);
    any.extend_from_slice(type_url.as_bytes());
    if value_len > 0 {
        encode_key(2, WireType::LengthDelimited, &mut any);
        encode_varint(value_len as u64, &mut any);
    }
    any
}

/// Two resources are equal when their content is: this is what snapshot diffs compare.
impl PartialEq for Resource {
    fn eq(&self, other: &Self) -> bool {
        self.version() == other.version() && self.name() == other.name()
    }
}

impl Eq for Resource {}
