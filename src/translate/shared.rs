//! Listener ports many Services share: routed by HTTP Host (one RouteConfiguration with
//! a virtual host per Service) or by TLS SNI (one listener with a filter chain per
//! Service, passing TLS through or terminating it).
//!
//! Each Service contributes [`SharedPiece`]s; a port's resources are assembled from its
//! members in namespace/name order, the first Service to name a host keeping it. Each
//! member's virtual host or filter chain is encoded once and kept; the RouteConfiguration
//! or listener is the concatenation of the kept pieces (a repeated protobuf field is the
//! concatenation of its entries), so a change to one of 1,000 Services sharing a port
//! encodes that Service's piece, not the 999 others.

use std::sync::Arc;

use bytes::Bytes;
use imbl::OrdMap;
use prost::encoding::{encode_key, encode_varint, WireType};
use prost::Message;

use super::envoy;
use crate::model::{Family, ListenerFamilies, ObjectKind, PortKind, ServiceKey, Skipped};
use crate::snapshot::{Resource, ResourceType};

/// How Services share a listener port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Sharing {
    /// One Service's port alone (TCP, UDP or HTTP).
    Exclusive,
    /// HTTP, routed by Host.
    Hosts,
    /// TLS, routed by SNI.
    Sni,
}

/// What one Service port brings to a shared listener port.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct SharedPiece {
    pub listener_port: u16,
    pub sharing: Sharing,
    /// The names it asks for (lowercase; `*.` wildcards).
    pub hosts: Vec<String>,
    /// Its cluster (`NAMESPACE/NAME:PORT`).
    pub cluster: String,
    pub kind: PortKind,
    /// Terminated TLS: the SDS secret and the route configuration of its chain.
    pub terminate: Option<Terminate>,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Terminate {
    pub secret: String,
    pub route: String,
}

/// A member of a shared port and what was last encoded for it.
#[derive(Clone, Debug)]
struct Member {
    piece: Arc<SharedPiece>,
    /// The names it was given and its encoded virtual host or filter chain.
    encoded: Option<(Vec<String>, Bytes)>,
}

/// The Services sharing one listener port in one way.
#[derive(Clone, Debug, Default)]
pub struct SharedPort {
    members: OrdMap<ServiceKey, Member>,
}

/// A shared port's resources for the Envoy groups, and the hosts lost to another
/// Service.
#[derive(Debug, Default)]
pub struct Assembled {
    /// Listeners by family.
    pub listeners: Vec<(Family, Resource)>,
    /// The RouteConfiguration of a Host-shared port.
    pub route: Option<Resource>,
    pub conflicts: Vec<Skipped>,
}

impl SharedPort {
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    pub fn insert(&mut self, key: ServiceKey, piece: Arc<SharedPiece>) {
        let encoded = self
            .members
            .get(&key)
            .filter(|m| m.piece == piece)
            .and_then(|m| m.encoded.clone());
        self.members.insert(key, Member { piece, encoded });
    }

    pub fn remove(&mut self, key: &ServiceKey) {
        self.members.remove(key);
    }

    /// Builds the port's resources, encoding only the members whose piece or names
    /// changed.
    pub fn assemble(&mut self, port: u16, sharing: Sharing) -> Assembled {
        let mut out = Assembled::default();
        if self.members.is_empty() {
            return out;
        }
        let mut taken: std::collections::BTreeMap<String, ServiceKey> = Default::default();
        let mut pieces: Vec<Bytes> = Vec::with_capacity(self.members.len());
        let mut references: Vec<(ResourceType, Arc<str>)> = Vec::new();
        let keys: Vec<ServiceKey> = self.members.keys().cloned().collect();
        for key in keys {
            let member = self.members.get_mut(&key).expect("a member");
            let mut names = Vec::new();
            for host in &member.piece.hosts {
                match taken.get(host) {
                    Some(holder) => out.conflicts.push(Skipped::new(
                        ObjectKind::Service,
                        &key,
                        format!(
                            "host {host} on listener port {port} is already routed to Service {holder}"
                        ),
                    )),
                    None => {
                        taken.insert(host.clone(), key.clone());
                        names.push(host.clone());
                    }
                }
            }
            // A terminating member's route table and Secret are its own resources, put
            // whether or not it won a host: the port's listeners keep them referenced
            // (a member that lost every host has no chain that uses them, and Envoy
            // never asks for them), so one Service's host conflict never makes the
            // snapshots inconsistent and holds back everyone's changes.
            if let Some(terminate) = &member.piece.terminate {
                references.push((ResourceType::Route, terminate.route.as_str().into()));
                references.push((ResourceType::Secret, terminate.secret.as_str().into()));
            }
            if names.is_empty() {
                continue;
            }
            let fresh = member.encoded.as_ref().filter(|(given, _)| *given == names);
            let bytes = match fresh {
                Some((_, bytes)) => bytes.clone(),
                None => {
                    let bytes = encode_piece(&member.piece, &key, names.clone(), sharing);
                    member.encoded = Some((names, bytes.clone()));
                    bytes
                }
            };
            pieces.push(bytes);
        }
        if pieces.is_empty() {
            return out;
        }
        match sharing {
            Sharing::Hosts => {
                let route = http_route_name(port);
                out.route = Some(route_configuration(&route, &pieces));
                for family in Family::BOTH {
                    let name = listener_name("http", port, family);
                    let listener = envoy::shared_http_listener(&name, family, port, &route);
                    out.listeners.push((
                        family,
                        Resource::with_references(
                            &listener,
                            vec![(ResourceType::Route, route.clone())],
                        ),
                    ));
                }
            }
            Sharing::Sni => {
                references.sort();
                references.dedup();
                for family in Family::BOTH {
                    let name = listener_name("tls", port, family);
                    let (head, tail) = envoy::sni_listener_parts(&name, family, port);
                    let mut bytes = head.encode_to_vec();
                    append_repeated(&mut bytes, LISTENER_FILTER_CHAINS, &pieces);
                    tail.encode(&mut bytes).expect("a Vec grows");
                    out.listeners.push((
                        family,
                        Resource::from_encoded_with_references(
                            ResourceType::Listener,
                            name.into(),
                            &bytes,
                            references.clone(),
                        ),
                    ));
                }
            }
            Sharing::Exclusive => unreachable!("exclusive ports are not shared"),
        }
        out
    }
}

/// `Listener.filter_chains` and `RouteConfiguration.virtual_hosts`.
const LISTENER_FILTER_CHAINS: u32 = 3;
const ROUTE_VIRTUAL_HOSTS: u32 = 2;

fn append_repeated(out: &mut Vec<u8>, tag: u32, pieces: &[Bytes]) {
    for piece in pieces {
        encode_key(tag, WireType::LengthDelimited, out);
        encode_varint(piece.len() as u64, out);
        out.extend_from_slice(piece);
    }
}

/// The route configuration of a Host-shared port, from encoded virtual hosts (in field
/// order, as prost would encode the whole).
fn route_configuration(name: &str, virtual_hosts: &[Bytes]) -> Resource {
    let (head, tail) = envoy::shared_route_parts(name);
    let mut bytes = head.encode_to_vec();
    append_repeated(&mut bytes, ROUTE_VIRTUAL_HOSTS, virtual_hosts);
    tail.encode(&mut bytes).expect("a Vec grows");
    Resource::from_encoded(ResourceType::Route, name, &bytes)
}

/// One member's virtual host or filter chain, encoded.
fn encode_piece(
    piece: &SharedPiece,
    key: &ServiceKey,
    names: Vec<String>,
    sharing: Sharing,
) -> Bytes {
    let stat = format!("{}/{}:{}", key.namespace, key.name, piece.listener_port);
    let bytes = match (sharing, &piece.terminate) {
        (Sharing::Hosts, _) => {
            envoy::virtual_host(&piece.cluster, names, &piece.cluster, piece.kind).encode_to_vec()
        }
        (_, Some(terminate)) => {
            envoy::terminating_chain(&stat, names, &terminate.secret, &terminate.route)
                .encode_to_vec()
        }
        (_, None) => envoy::passthrough_chain(&stat, names, &piece.cluster).encode_to_vec(),
    };
    Bytes::from(bytes)
}

/// The RouteConfiguration of a port shared by Host.
pub fn http_route_name(port: u16) -> String {
    format!("shared-http:{port}")
}

/// A shared listener's name: `shared-http:80:ipv4`, `shared-tls:443:ipv6`.
pub fn listener_name(kind: &str, port: u16, family: Family) -> String {
    format!(
        "shared-{kind}:{port}:{}",
        family.as_str().to_ascii_lowercase()
    )
}

/// The listeners of an assembled port a group of these families gets.
pub fn group_listeners(
    assembled: &Assembled,
    families: ListenerFamilies,
) -> impl Iterator<Item = &Resource> {
    assembled
        .listeners
        .iter()
        .filter(move |(family, _)| families.contains(*family))
        .map(|(_, r)| r)
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;

    fn piece(hosts: &[&str], cluster: &str) -> Arc<SharedPiece> {
        Arc::new(SharedPiece {
            listener_port: 80,
            sharing: Sharing::Hosts,
            hosts: hosts.iter().map(|h| h.to_string()).collect(),
            cluster: cluster.into(),
            kind: PortKind::Http,
            terminate: None,
        })
    }

    #[test]
    fn concatenated_virtual_hosts_are_the_message_prost_would_encode() {
        let mut port = SharedPort::default();
        port.insert(
            ServiceKey::new("a", "x"),
            piece(&["x.example.com"], "a/x:80"),
        );
        port.insert(
            ServiceKey::new("b", "y"),
            piece(&["*.example.com"], "b/y:80"),
        );
        let assembled = port.assemble(80, Sharing::Hosts);
        let route = assembled.route.unwrap();
        let decoded = RouteConfiguration::decode(route.to_any().value.as_slice()).unwrap();
        let whole = RouteConfiguration {
            name: "shared-http:80".into(),
            virtual_hosts: vec![
                envoy::virtual_host(
                    "a/x:80",
                    vec!["x.example.com".into()],
                    "a/x:80",
                    PortKind::Http,
                ),
                envoy::virtual_host(
                    "b/y:80",
                    vec!["*.example.com".into()],
                    "b/y:80",
                    PortKind::Http,
                ),
            ],
            ignore_port_in_host_matching: true,
            ..Default::default()
        };
        assert_eq!(decoded, whole);
        assert_eq!(Resource::new(&whole).version(), route.version());
    }

    #[test]
    fn the_first_service_keeps_a_host_and_the_other_is_reported() {
        let mut port = SharedPort::default();
        port.insert(
            ServiceKey::new("a", "first"),
            piece(&["shop.example.com"], "a/first:80"),
        );
        port.insert(
            ServiceKey::new("b", "second"),
            piece(&["shop.example.com", "b.example.com"], "b/second:80"),
        );
        let assembled = port.assemble(80, Sharing::Hosts);
        assert_eq!(assembled.conflicts.len(), 1);
        assert_eq!(&*assembled.conflicts[0].key.name, "second");
        let route =
            RouteConfiguration::decode(assembled.route.unwrap().to_any().value.as_slice()).unwrap();
        let domains: Vec<Vec<String>> =
            route.virtual_hosts.into_iter().map(|v| v.domains).collect();
        assert_eq!(
            domains,
            [
                vec!["shop.example.com".to_string()],
                vec!["b.example.com".to_string()]
            ]
        );
    }
}
