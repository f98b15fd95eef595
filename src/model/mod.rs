//! The "model" stage: what the product knows about Services and their endpoints, free of
//! Kubernetes and protobuf types. Sources describe changes to it ([`ModelChange`]); the
//! [`ModelStore`] applies them and says which Services they touched ([`Changed`]);
//! `translate` reads it.

mod store;

pub use store::{Changed, ModelChange, ModelStore};

use std::collections::BTreeMap;
use std::fmt;
use std::hash::Hash;
use std::net::IpAddr;
use std::str::FromStr;
use std::sync::Arc;

use serde::Serialize;

/// An IP family.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub enum Family {
    IPv4,
    IPv6,
}

impl Family {
    pub const BOTH: [Family; 2] = [Family::IPv4, Family::IPv6];

    pub fn other(self) -> Family {
        match self {
            Family::IPv4 => Family::IPv6,
            Family::IPv6 => Family::IPv4,
        }
    }

    pub fn of(ip: &IpAddr) -> Family {
        match ip {
            IpAddr::V4(_) => Family::IPv4,
            IpAddr::V6(_) => Family::IPv6,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Family::IPv4 => "IPv4",
            Family::IPv6 => "IPv6",
        }
    }
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Family {
    type Err = String;
    /// Accepts `IPv4`/`IPv6` in any letter case.
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "ipv4" => Ok(Family::IPv4),
            "ipv6" => Ok(Family::IPv6),
            _ => Err(format!("{s:?} is not an IP family (expected IPv4 or IPv6)")),
        }
    }
}

/// The families a node binds listeners on (node metadata
/// `dualstack-xds.io/listener-families`). Never empty.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ListenerFamilies {
    ipv4: bool,
    ipv6: bool,
}

impl ListenerFamilies {
    pub const BOTH: ListenerFamilies = ListenerFamilies {
        ipv4: true,
        ipv6: true,
    };
    pub const IPV4: ListenerFamilies = ListenerFamilies {
        ipv4: true,
        ipv6: false,
    };
    pub const IPV6: ListenerFamilies = ListenerFamilies {
        ipv4: false,
        ipv6: true,
    };
    /// Every distinct value, for building each group's snapshot.
    pub const ALL: [ListenerFamilies; 3] = [Self::BOTH, Self::IPV4, Self::IPV6];

    pub fn contains(self, family: Family) -> bool {
        match family {
            Family::IPv4 => self.ipv4,
            Family::IPv6 => self.ipv6,
        }
    }

    pub fn iter(self) -> impl Iterator<Item = Family> {
        Family::BOTH.into_iter().filter(move |f| self.contains(*f))
    }
}

impl fmt::Display for ListenerFamilies {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self.iter().map(Family::as_str).collect();
        f.write_str(&names.join(","))
    }
}

impl FromStr for ListenerFamilies {
    type Err = String;
    /// `"IPv4,IPv6"`, `"IPv4"` or `"IPv6"` (any order, any case, spaces allowed).
    fn from_str(s: &str) -> Result<Self, String> {
        let mut families = ListenerFamilies {
            ipv4: false,
            ipv6: false,
        };
        for part in s.split(',').filter(|p| !p.trim().is_empty()) {
            match part.parse::<Family>()? {
                Family::IPv4 => families.ipv4 = true,
                Family::IPv6 => families.ipv6 = true,
            }
        }
        if !families.ipv4 && !families.ipv6 {
            return Err(format!(
                "{s:?} names no IP family (expected IPv4, IPv6 or IPv4,IPv6)"
            ));
        }
        Ok(families)
    }
}

/// An object's identity: its namespace and name (a Service, an EndpointSlice, a
/// ConfigMap; which kind is always clear from where the key is used).
///
/// Translation keeps several records per Service keyed by it: shared strings make a
/// copy two reference counts instead of two allocations.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct ObjectKey {
    pub namespace: Arc<str>,
    pub name: Arc<str>,
}

/// A Service's identity.
pub type ServiceKey = ObjectKey;

impl ObjectKey {
    pub fn new(namespace: impl Into<Arc<str>>, name: impl Into<Arc<str>>) -> Self {
        ObjectKey {
            namespace: namespace.into(),
            name: name.into(),
        }
    }
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// The kinds of object the product reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub enum ObjectKind {
    Service,
    EndpointSlice,
    ConfigMap,
    Secret,
}

impl ObjectKind {
    pub const ALL: [ObjectKind; 4] = [
        ObjectKind::Service,
        ObjectKind::EndpointSlice,
        ObjectKind::ConfigMap,
        ObjectKind::Secret,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ObjectKind::Service => "Service",
            ObjectKind::EndpointSlice => "EndpointSlice",
            ObjectKind::ConfigMap => "ConfigMap",
            ObjectKind::Secret => "Secret",
        }
    }
}

impl fmt::Display for ObjectKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a port's traffic is proxied.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
pub enum PortKind {
    Tcp,
    Udp,
    /// HTTP/1.1 (`appProtocol: http`).
    Http,
    /// HTTP/2 cleartext (`kubernetes.io/h2c`).
    H2c,
    /// gRPC (HTTP/2).
    Grpc,
}

impl PortKind {
    pub fn is_http(self) -> bool {
        matches!(self, PortKind::Http | PortKind::H2c | PortKind::Grpc)
    }
}

/// PROXY protocol version for upstream connections.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
pub enum ProxyProtocol {
    V1,
    V2,
}

/// One exposed port of a Service.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct ServicePort {
    /// The port's name ("" for a Service's single unnamed port): endpoints are matched
    /// to it by this name.
    pub name: String,
    pub port: u16,
    pub kind: PortKind,
    /// The port ingress listeners bind (`dualstack-xds.io/listener-ports`, else `port`).
    pub listener_port: u16,
}

/// A Service as the product sees it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct Service {
    pub key: ServiceKey,
    pub ports: Vec<ServicePort>,
    /// `dualstack-xds.io/primary-family`: overrides the global primary family.
    pub primary_family: Option<Family>,
    /// `dualstack-xds.io/failover`: the other family's endpoints at priority 1.
    pub failover: bool,
    pub proxy_protocol: Option<ProxyProtocol>,
    /// `dualstack-xds.io/ingress: "false"` turns ingress listeners off.
    pub ingress: bool,
    /// `dualstack-xds.io/hosts`: the Service shares its listener ports with other
    /// Services, routed by HTTP Host (or by TLS SNI with `tls`). Exact names and
    /// `*.suffix` wildcards, lowercase.
    pub hosts: Vec<String>,
    /// `dualstack-xds.io/tls` (with `hosts`).
    pub tls: Option<TlsMode>,
}

/// TLS on a shared port.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
pub enum TlsMode {
    /// The backend terminates TLS; the ingress routes the connection by SNI.
    Passthrough,
    /// The ingress terminates TLS with the certificate of this `kubernetes.io/tls` Secret
    /// (in the Service's namespace) and routes HTTP to the backend.
    Terminate { secret: ObjectKey },
}

impl Service {
    /// The Secret whose certificate the ingress serves for this Service, if any.
    pub fn tls_secret(&self) -> Option<&ObjectKey> {
        match &self.tls {
            Some(TlsMode::Terminate { secret }) => Some(secret),
            _ => None,
        }
    }
}

/// A TLS certificate and its key, from a `kubernetes.io/tls` Secret, as PEM; checked to
/// parse and to match when converted.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct TlsSecret {
    pub certificate_chain: String,
    pub private_key: String,
}

impl fmt::Debug for TlsSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the key, in any log.
        f.debug_struct("TlsSecret")
            .field("certificate_chain", &self.certificate_chain.len())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
impl Service {
    /// For tests: an exposed Service with one port named `main`, listening on `port`.
    pub(crate) fn one_port(key: ObjectKey, port: u16, kind: PortKind) -> Service {
        Service {
            key,
            ports: vec![ServicePort {
                name: "main".into(),
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
        }
    }
}

/// Whether an endpoint takes new traffic.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub enum EndpointState {
    /// `ready`: serves.
    Ready,
    /// `serving` and `terminating`: finishes what it has, sent as draining.
    Draining,
}

/// One address of one backend.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct Endpoint {
    pub address: IpAddr,
    pub state: EndpointState,
    pub zone: Option<String>,
    /// The backing pod (`targetRef`), used to pair a pod's IPv4 and IPv6 addresses.
    pub target: Option<String>,
}

/// One EndpointSlice's contribution to a Service: endpoints of one family and the ports
/// they serve, by port name. Immutable once built; its digest is computed once, so a
/// Service with many slices is compared slice by slice, not endpoint by endpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Slice {
    family: Family,
    ports: BTreeMap<String, u16>,
    endpoints: Vec<Endpoint>,
    digest: u128,
}

impl Slice {
    pub fn new(family: Family, ports: BTreeMap<String, u16>, endpoints: Vec<Endpoint>) -> Self {
        let mut hasher = xxhash_rust::xxh3::Xxh3::default();
        (family, &ports, &endpoints).hash(&mut hasher);
        Slice {
            family,
            ports,
            endpoints,
            digest: hasher.digest128(),
        }
    }

    pub fn family(&self) -> Family {
        self.family
    }

    /// Port name -> port number.
    pub fn ports(&self) -> &BTreeMap<String, u16> {
        &self.ports
    }

    pub fn endpoints(&self) -> &[Endpoint] {
        &self.endpoints
    }

    /// A content digest: equal slices have equal digests.
    pub fn digest(&self) -> u128 {
        self.digest
    }
}

/// A Service's endpoints: every EndpointSlice that names it, by slice name.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Endpoints {
    pub slices: BTreeMap<String, Arc<Slice>>,
}

impl Endpoints {
    /// The slices of one family, in name order.
    pub fn of_family(&self, family: Family) -> impl Iterator<Item = (&String, &Arc<Slice>)> {
        self.slices.iter().filter(move |(_, s)| s.family == family)
    }

    /// The endpoints of one family serving port `port_name`, merged across slices: one
    /// entry per address (a ready copy wins over a draining one; the first slice in
    /// name order gives the port number), sorted by address.
    pub fn merged(&self, family: Family, port_name: &str) -> Vec<(Endpoint, u16)> {
        let mut by_address: BTreeMap<IpAddr, (Endpoint, u16)> = BTreeMap::new();
        for (_, slice) in self.of_family(family) {
            let Some(port) = slice.ports.get(port_name) else {
                continue;
            };
            for endpoint in &slice.endpoints {
                match by_address.get_mut(&endpoint.address) {
                    Some((existing, _)) => {
                        existing.state = existing.state.min(endpoint.state);
                        if existing.zone.is_none() {
                            existing.zone.clone_from(&endpoint.zone);
                        }
                        if existing.target.is_none() {
                            existing.target.clone_from(&endpoint.target);
                        }
                    }
                    None => {
                        by_address.insert(endpoint.address, (endpoint.clone(), *port));
                    }
                }
            }
        }
        by_address.into_values().collect()
    }

    /// Number of endpoints of a family, duplicates included.
    pub fn count(&self, family: Family) -> usize {
        self.of_family(family).map(|(_, s)| s.endpoints.len()).sum()
    }
}

/// An object that was left out, and why (shown in `/debug/resources`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Skipped {
    pub kind: ObjectKind,
    #[serde(flatten)]
    pub key: ObjectKey,
    pub reason: String,
}

impl Skipped {
    pub fn new(kind: ObjectKind, key: &ObjectKey, reason: impl Into<String>) -> Self {
        Skipped {
            kind,
            key: key.clone(),
            reason: reason.into(),
        }
    }
}

/// An EndpointSlice's contribution to the model: the Service it names and its endpoints.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SliceEndpoints {
    pub service: ServiceKey,
    pub slice: Slice,
}

/// Everything translation needs.
#[derive(Clone, Debug, Default)]
pub struct Model {
    pub services: BTreeMap<ServiceKey, Service>,
    /// Endpoints by the Service they name, whether or not that Service exists (yet).
    pub endpoints: BTreeMap<ServiceKey, Endpoints>,
    /// From the ConfigMap's `primaryFamily`, overriding the command line.
    pub config_primary_family: Option<Family>,
    /// Objects left out, by kind and identity.
    pub skipped: BTreeMap<(ObjectKind, ObjectKey), Skipped>,
    /// The TLS Secrets Services terminate with (only those they reference are read).
    pub secrets: BTreeMap<ObjectKey, Arc<TlsSecret>>,
}

impl Model {
    /// The endpoints of a Service (none if no slice names it).
    pub fn endpoints_of(&self, key: &ServiceKey) -> &Endpoints {
        static EMPTY: std::sync::OnceLock<Endpoints> = std::sync::OnceLock::new();
        self.endpoints
            .get(key)
            .unwrap_or_else(|| EMPTY.get_or_init(Endpoints::default))
    }

    /// Every object left out, with its reason.
    pub fn skipped(&self) -> impl Iterator<Item = &Skipped> {
        self.skipped.values()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listener_families_parse() {
        assert_eq!("IPv4,IPv6".parse(), Ok(ListenerFamilies::BOTH));
        assert_eq!(" ipv6 , IPv4 ".parse(), Ok(ListenerFamilies::BOTH));
        assert_eq!("IPv6".parse(), Ok(ListenerFamilies::IPV6));
        assert!("".parse::<ListenerFamilies>().is_err());
        assert!("IPv5"
            .parse::<ListenerFamilies>()
            .unwrap_err()
            .contains("IPv5"));
        assert_eq!(ListenerFamilies::IPV4.to_string(), "IPv4");
        assert_eq!(ListenerFamilies::BOTH.to_string(), "IPv4,IPv6");
    }

    #[test]
    fn merging_removes_duplicates_and_prefers_ready() {
        let ep = |ip: &str, state| Endpoint {
            address: ip.parse().unwrap(),
            state,
            zone: None,
            target: None,
        };
        let ports = |p: u16| BTreeMap::from([("http".to_string(), p)]);
        let mut e = Endpoints::default();
        e.slices.insert(
            "a".into(),
            Arc::new(Slice::new(
                Family::IPv4,
                ports(80),
                vec![
                    ep("10.0.0.2", EndpointState::Draining),
                    ep("10.0.0.1", EndpointState::Ready),
                ],
            )),
        );
        e.slices.insert(
            "b".into(),
            Arc::new(Slice::new(
                Family::IPv4,
                ports(81),
                vec![ep("10.0.0.2", EndpointState::Ready)],
            )),
        );
        let merged = e.merged(Family::IPv4, "http");
        assert_eq!(merged.len(), 2);
        assert_eq!(merged[0].0.address.to_string(), "10.0.0.1");
        assert_eq!(merged[1].0.state, EndpointState::Ready);
        assert_eq!(merged[1].1, 80, "the first slice gives the port");
        assert!(e.merged(Family::IPv6, "http").is_empty());
        assert!(e.merged(Family::IPv4, "other").is_empty());
    }

    #[test]
    fn equal_slices_have_equal_digests() {
        let ep = Endpoint {
            address: "fd00::1".parse().unwrap(),
            state: EndpointState::Ready,
            zone: Some("z".into()),
            target: None,
        };
        let a = Slice::new(Family::IPv6, BTreeMap::new(), vec![ep.clone()]);
        let b = Slice::new(Family::IPv6, BTreeMap::new(), vec![ep.clone()]);
        assert_eq!(a.digest(), b.digest());
        let mut moved = ep;
        moved.state = EndpointState::Draining;
        let c = Slice::new(Family::IPv6, BTreeMap::new(), vec![moved]);
        assert_ne!(a.digest(), c.digest());
    }
}
