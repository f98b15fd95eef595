//! The "model" stage: what the product knows about Services and their endpoints, free of
//! Kubernetes and protobuf types. Sources build it; `translate` reads it.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

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

/// A Service's identity.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct ServiceKey {
    pub namespace: String,
    pub name: String,
}

impl fmt::Display for ServiceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
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
}

/// Whether an endpoint takes new traffic.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub enum EndpointState {
    /// `ready`: serves.
    Ready,
    /// `serving` and `terminating`: finishes what it has, sent as draining.
    Draining,
}

/// One address of one backend, with the ports it serves by port name.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct Endpoint {
    pub address: IpAddr,
    pub state: EndpointState,
    pub zone: Option<String>,
    /// The backing pod (`targetRef`), used to pair a pod's IPv4 and IPv6 addresses.
    pub target: Option<String>,
    /// Port name -> port number.
    pub ports: BTreeMap<String, u16>,
}

/// A Service's endpoints of both families, merged from all its EndpointSlices with
/// duplicates removed.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize)]
pub struct Endpoints {
    pub ipv4: Vec<Endpoint>,
    pub ipv6: Vec<Endpoint>,
}

impl Endpoints {
    pub fn family(&self, family: Family) -> &[Endpoint] {
        match family {
            Family::IPv4 => &self.ipv4,
            Family::IPv6 => &self.ipv6,
        }
    }

    /// Merges endpoints into a family: sorted, one entry per address (a ready copy wins
    /// over a draining one, ports are united).
    pub fn merge(&mut self, family: Family, more: impl IntoIterator<Item = Endpoint>) {
        let list = match family {
            Family::IPv4 => &mut self.ipv4,
            Family::IPv6 => &mut self.ipv6,
        };
        let mut by_address: BTreeMap<IpAddr, Endpoint> =
            list.drain(..).map(|e| (e.address, e)).collect();
        for endpoint in more {
            match by_address.get_mut(&endpoint.address) {
                Some(existing) => {
                    existing.state = existing.state.min(endpoint.state);
                    for (name, port) in endpoint.ports {
                        existing.ports.entry(name).or_insert(port);
                    }
                    if existing.zone.is_none() {
                        existing.zone = endpoint.zone;
                    }
                    if existing.target.is_none() {
                        existing.target = endpoint.target;
                    }
                }
                None => {
                    by_address.insert(endpoint.address, endpoint);
                }
            }
        }
        *list = by_address.into_values().collect();
    }
}

/// An object that was left out, and why (shown in `/debug/resources`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Skipped {
    pub kind: String,
    pub namespace: String,
    pub name: String,
    pub reason: String,
}

/// Everything translation needs.
#[derive(Clone, Debug, Default)]
pub struct Model {
    pub services: BTreeMap<ServiceKey, (Service, Endpoints)>,
    /// From the ConfigMap's `primaryFamily`, overriding the command line.
    pub config_primary_family: Option<Family>,
    pub skipped: Vec<Skipped>,
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
        let ep = |ip: &str, state, port: u16| Endpoint {
            address: ip.parse().unwrap(),
            state,
            zone: None,
            target: None,
            ports: [("http".to_string(), port)].into(),
        };
        let mut e = Endpoints::default();
        e.merge(
            Family::IPv4,
            [
                ep("10.0.0.2", EndpointState::Draining, 80),
                ep("10.0.0.1", EndpointState::Ready, 80),
            ],
        );
        e.merge(Family::IPv4, [ep("10.0.0.2", EndpointState::Ready, 80)]);
        assert_eq!(e.ipv4.len(), 2);
        assert_eq!(e.ipv4[0].address.to_string(), "10.0.0.1");
        assert_eq!(e.ipv4[1].state, EndpointState::Ready);
    }
}
