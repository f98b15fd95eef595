//! Resources for proxyless gRPC clients (gRFC A27): for a target
//! `xds:///SERVICE.NAMESPACE:PORT` (or `...svc.cluster.local:PORT`), a Listener with an
//! `api_listener` (HTTP connection manager, RDS over ADS, router filter last as gRFC A39
//! requires), its RouteConfiguration, an EDS Cluster and its ClusterLoadAssignment.
//!
//! Endpoints follow the primary family exactly as for Envoy; where a pod has an address
//! in each family (matched by `targetRef`), the other one goes in `additional_addresses`
//! (gRFC A61), so a client falls back to it by happy eyeballs. Envoy ingresses never get
//! these resources: gRPC clients have their own snapshot group.

use std::collections::HashMap;

use envoy_types::pb::envoy::config::cluster::v3::{cluster, Cluster};
use envoy_types::pb::envoy::config::core::v3::{address, socket_address, Address, SocketAddress};
use envoy_types::pb::envoy::config::endpoint::v3::{
    endpoint::AdditionalAddress, lb_endpoint, ClusterLoadAssignment, LocalityLbEndpoints,
};
use envoy_types::pb::envoy::config::listener::v3::{ApiListener, Listener};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    http_connection_manager, HttpConnectionManager, Rds,
};

use envoy_types::pb::google::protobuf::UInt32Value;

use super::envoy::{ads, any, lb_endpoint, router_filter};
use crate::model::{Endpoint, Endpoints, Family, ServiceKey, ServicePort};

/// The listener names a gRPC client may ask for, for one Service port.
pub fn listener_names(key: &ServiceKey, port: &ServicePort) -> [String; 2] {
    [
        format!("{}.{}:{}", key.name, key.namespace, port.port),
        format!(
            "{}.{}.svc.cluster.local:{}",
            key.name, key.namespace, port.port
        ),
    ]
}

/// The api_listener of a target: RDS over ADS, the router filter last.
pub fn listener(name: &str, route: &str) -> Listener {
    let hcm = HttpConnectionManager {
        stat_prefix: name.to_owned(),
        route_specifier: Some(http_connection_manager::RouteSpecifier::Rds(Rds {
            config_source: Some(ads()),
            route_config_name: route.to_owned(),
        })),
        http_filters: vec![router_filter()],
        ..Default::default()
    };
    Listener {
        name: name.to_owned(),
        api_listener: Some(ApiListener {
            api_listener: Some(any(&hcm)),
        }),
        ..Default::default()
    }
}

/// A plain EDS cluster (no Envoy-only options: gRPC would reject them).
pub fn cluster(name: &str) -> Cluster {
    Cluster {
        name: name.to_owned(),
        cluster_discovery_type: Some(cluster::ClusterDiscoveryType::Type(
            cluster::DiscoveryType::Eds as i32,
        )),
        eds_cluster_config: Some(cluster::EdsClusterConfig {
            eds_config: Some(ads()),
            service_name: String::new(),
        }),
        lb_policy: cluster::LbPolicy::RoundRobin as i32,
        ..Default::default()
    }
}

fn socket(endpoint: &Endpoint, port: u16) -> Address {
    Address {
        address: Some(address::Address::SocketAddress(SocketAddress {
            protocol: socket_address::Protocol::Tcp as i32,
            address: endpoint.address.to_string(),
            port_specifier: Some(socket_address::PortSpecifier::PortValue(port.into())),
            ..Default::default()
        })),
    }
}

/// The endpoints of a gRPC target: the primary family's, each with its pod's address in
/// the other family as an additional address; with failover, the other family's at
/// priority 1.
pub fn load_assignment(
    name: &str,
    port_name: &str,
    endpoints: &Endpoints,
    primary: Family,
    failover: bool,
) -> ClusterLoadAssignment {
    let others = endpoints.merged(primary.other(), port_name);
    let by_pod: HashMap<&str, &(Endpoint, u16)> = others
        .iter()
        .filter_map(|e| Some((e.0.target.as_deref()?, e)))
        .collect();
    let localities = |list: &[(Endpoint, u16)], family: Family, priority: u32, pair: bool| {
        let mut by_zone: std::collections::BTreeMap<Option<&str>, Vec<_>> = Default::default();
        for (endpoint, port) in list {
            let mut lb = lb_endpoint(endpoint, *port);
            if pair {
                let other = endpoint.target.as_deref().and_then(|t| by_pod.get(t));
                if let (Some((other, other_port)), Some(lb_endpoint::HostIdentifier::Endpoint(e))) =
                    (other, lb.host_identifier.as_mut())
                {
                    e.additional_addresses = vec![AdditionalAddress {
                        address: Some(socket(other, *other_port)),
                    }];
                }
            }
            by_zone
                .entry(endpoint.zone.as_deref())
                .or_default()
                .push(lb);
        }
        by_zone
            .into_iter()
            .map(|(zone, lb_endpoints)| LocalityLbEndpoints {
                // gRPC requires a locality. Its sub-zone names the family of the
                // endpoints' first addresses: gRPC identifies an endpoint by its set of
                // addresses, so without it a flip (same set, other order) would leave
                // every connection where it is; a new locality gets new connections,
                // made to the new primary address first.
                locality: Some(envoy_types::pb::envoy::config::core::v3::Locality {
                    zone: zone.unwrap_or_default().to_owned(),
                    sub_zone: family.as_str().to_owned(),
                    ..Default::default()
                }),
                // gRPC ignores a locality without a weight (it balances across
                // localities by weight): weigh each by its endpoints.
                load_balancing_weight: Some(UInt32Value {
                    value: lb_endpoints.len() as u32,
                }),
                lb_endpoints,
                priority,
                ..Default::default()
            })
            .collect::<Vec<_>>()
    };
    let mut out = localities(&endpoints.merged(primary, port_name), primary, 0, true);
    if failover {
        // gRPC rejects a locality-less placeholder: with no primary endpoints, the
        // other family is priority 0 itself.
        let priority = if out.is_empty() { 0 } else { 1 };
        out.extend(localities(&others, primary.other(), priority, false));
    }
    ClusterLoadAssignment {
        cluster_name: name.to_owned(),
        endpoints: out,
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::Arc;

    use super::*;
    use crate::model::{EndpointState, Slice};

    fn ep(ip: &str, pod: &str) -> Endpoint {
        Endpoint {
            address: ip.parse().unwrap(),
            state: EndpointState::Ready,
            zone: None,
            target: Some(format!("Pod/shop/{pod}")),
        }
    }

    fn endpoints() -> Endpoints {
        let mut e = Endpoints::default();
        let slice = |family, port: u16, eps| {
            Arc::new(Slice::new(
                family,
                BTreeMap::from([("grpc".to_string(), port)]),
                eps,
            ))
        };
        e.slices.insert(
            "v4".into(),
            slice(
                Family::IPv4,
                5004,
                vec![ep("10.0.0.1", "a"), ep("10.0.0.2", "b")],
            ),
        );
        e.slices.insert(
            "v6".into(),
            slice(Family::IPv6, 5006, vec![ep("fd00::1", "a")]),
        );
        e
    }

    fn addresses(cla: &ClusterLoadAssignment) -> Vec<(String, Vec<String>)> {
        let show = |a: &Address| match &a.address {
            Some(address::Address::SocketAddress(s)) => match s.port_specifier {
                Some(socket_address::PortSpecifier::PortValue(p)) => format!("{}:{p}", s.address),
                _ => unreachable!(),
            },
            _ => unreachable!(),
        };
        cla.endpoints
            .iter()
            .flat_map(|l| &l.lb_endpoints)
            .map(|lb| match &lb.host_identifier {
                Some(lb_endpoint::HostIdentifier::Endpoint(e)) => (
                    show(e.address.as_ref().unwrap()),
                    e.additional_addresses
                        .iter()
                        .map(|a| show(a.address.as_ref().unwrap()))
                        .collect(),
                ),
                _ => unreachable!(),
            })
            .collect()
    }

    #[test]
    fn a_pods_other_address_is_an_additional_address() {
        let cla = load_assignment(
            "shop/greeter:50051",
            "grpc",
            &endpoints(),
            Family::IPv4,
            false,
        );
        assert_eq!(
            addresses(&cla),
            [
                (
                    "10.0.0.1:5004".to_string(),
                    vec!["fd00::1:5006".to_string()]
                ),
                ("10.0.0.2:5004".to_string(), vec![]),
            ]
        );
        let flipped = load_assignment(
            "shop/greeter:50051",
            "grpc",
            &endpoints(),
            Family::IPv6,
            false,
        );
        assert_eq!(
            addresses(&flipped),
            [(
                "fd00::1:5006".to_string(),
                vec!["10.0.0.1:5004".to_string()]
            )]
        );
    }

    #[test]
    fn the_listener_is_an_api_listener_with_the_router_last() {
        let l = listener("greeter.shop:50051", "grpc/shop/greeter:50051");
        let any = l.api_listener.unwrap().api_listener.unwrap();
        let hcm = <HttpConnectionManager as prost::Message>::decode(&*any.value).unwrap();
        assert_eq!(
            hcm.http_filters.last().unwrap().name,
            "envoy.filters.http.router"
        );
        assert!(l.address.is_none() && l.filter_chains.is_empty());
    }
}
