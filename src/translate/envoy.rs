//! Envoy resources for one Service port, and the pieces of the listeners Services share.
//! Pure functions of the model.
//!
//! Determinism matters: versions are hashes of the encoded bytes, and prost encodes map
//! fields in hash order, so no resource here carries a map with more than one entry.

use envoy_types::pb::envoy::config::cluster::v3::{cluster, Cluster};
use envoy_types::pb::envoy::config::core::v3::{
    address, config_source, socket_address, transport_socket, Address, AggregatedConfigSource,
    ConfigSource, HealthStatus, Http2ProtocolOptions, ProxyProtocolConfig, SocketAddress,
    TransportSocket, UdpSocketConfig,
};
use envoy_types::pb::envoy::config::core::v3::{data_source, DataSource};
use envoy_types::pb::envoy::config::endpoint::v3::{
    lb_endpoint, Endpoint as EnvoyEndpoint, LbEndpoint,
};
use envoy_types::pb::envoy::config::listener::v3::{
    filter, listener_filter, Filter, FilterChain, FilterChainMatch, Listener, ListenerFilter,
    UdpListenerConfig,
};
use envoy_types::pb::envoy::config::route::v3::{
    route, route_action, route_match, DirectResponseAction, Route, RouteAction, RouteConfiguration,
    RouteMatch, VirtualHost,
};
use envoy_types::pb::envoy::extensions::filters::http::router::v3::Router;
use envoy_types::pb::envoy::extensions::filters::listener::tls_inspector::v3::TlsInspector;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    http_connection_manager, http_filter, HttpConnectionManager, HttpFilter, Rds,
};
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::{tcp_proxy, TcpProxy};
use envoy_types::pb::envoy::extensions::filters::udp::udp_proxy::v3::{
    udp_proxy_config, Route as UdpRoute, UdpProxyConfig,
};
use envoy_types::pb::envoy::extensions::transport_sockets::proxy_protocol::v3::ProxyProtocolUpstreamTransport;
use envoy_types::pb::envoy::extensions::transport_sockets::raw_buffer::v3::RawBuffer;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    secret, CommonTlsContext, DownstreamTlsContext, SdsSecretConfig, Secret, TlsCertificate,
};
use envoy_types::pb::envoy::extensions::upstreams::http::v3::{
    http_protocol_options, HttpProtocolOptions,
};
use envoy_types::pb::google::protobuf::{Any, BoolValue, Duration};
use envoy_types::pb::xds::core::v3::TypedExtensionConfig;
use envoy_types::pb::xds::r#type::matcher::v3::{matcher, Matcher};
use prost::{Message, Name};

use crate::model::{
    Endpoint, EndpointState, Family, PortKind, ProxyProtocol, ServicePort, TlsSecret,
};

/// A message packed into `google.protobuf.Any`.
pub fn any<M: Message + Name>(message: &M) -> Any {
    Any {
        type_url: M::type_url(),
        value: message.encode_to_vec(),
    }
}

/// A config source pointing at the ADS stream.
pub fn ads() -> ConfigSource {
    ConfigSource {
        resource_api_version: 2, // V3
        config_source_specifier: Some(config_source::ConfigSourceSpecifier::Ads(
            AggregatedConfigSource {},
        )),
        ..Default::default()
    }
}

fn seconds(s: i64) -> Duration {
    Duration {
        seconds: s,
        nanos: 0,
    }
}

fn socket(address: &str, port: u16, udp: bool) -> Address {
    Address {
        address: Some(address::Address::SocketAddress(SocketAddress {
            protocol: if udp {
                socket_address::Protocol::Udp as i32
            } else {
                socket_address::Protocol::Tcp as i32
            },
            address: address.to_owned(),
            port_specifier: Some(socket_address::PortSpecifier::PortValue(port.into())),
            // `[::]` listeners are IPv6-only (IPV6_V6ONLY): IPv4 has its own listener.
            ipv4_compat: false,
            ..Default::default()
        })),
    }
}

/// The EDS cluster of a Service port. Family-neutral: a flip never changes it.
pub fn cluster(name: &str, port: &ServicePort, proxy_protocol: Option<ProxyProtocol>) -> Cluster {
    let mut cluster = Cluster {
        name: name.to_owned(),
        connect_timeout: Some(seconds(5)),
        cluster_discovery_type: Some(cluster::ClusterDiscoveryType::Type(
            cluster::DiscoveryType::Eds as i32,
        )),
        eds_cluster_config: Some(cluster::EdsClusterConfig {
            eds_config: Some(ads()),
            service_name: String::new(),
        }),
        ..Default::default()
    };
    if matches!(port.kind, PortKind::H2c | PortKind::Grpc) {
        let options = HttpProtocolOptions {
            upstream_protocol_options: Some(
                http_protocol_options::UpstreamProtocolOptions::ExplicitHttpConfig(
                    http_protocol_options::ExplicitHttpConfig {
                        protocol_config: Some(
                            http_protocol_options::explicit_http_config::ProtocolConfig::Http2ProtocolOptions(
                                Http2ProtocolOptions::default(),
                            ),
                        ),
                    },
                ),
            ),
            ..Default::default()
        };
        cluster
            .typed_extension_protocol_options
            .insert(HttpProtocolOptions::full_name(), any(&options));
    }
    if let Some(version) = proxy_protocol {
        let transport = ProxyProtocolUpstreamTransport {
            config: Some(ProxyProtocolConfig {
                version: match version {
                    ProxyProtocol::V1 => 0,
                    ProxyProtocol::V2 => 1,
                },
                ..Default::default()
            }),
            transport_socket: Some(TransportSocket {
                name: "envoy.transport_sockets.raw_buffer".into(),
                config_type: Some(transport_socket::ConfigType::TypedConfig(any(
                    &RawBuffer::default(),
                ))),
            }),
            ..Default::default()
        };
        cluster.transport_socket = Some(TransportSocket {
            name: "envoy.transport_sockets.upstream_proxy_protocol".into(),
            config_type: Some(transport_socket::ConfigType::TypedConfig(any(&transport))),
        });
    }
    cluster
}

/// The ClusterLoadAssignment of a Service port, built whole: the primary family's
/// endpoints at priority 0 and, with failover, the other family's at priority 1.
/// Translation assembles the same bytes from encoded slices (see `endpoints`); this is
/// the reference it is tested against.
#[cfg(test)]
use envoy_types::pb::envoy::config::{
    core::v3::Locality,
    endpoint::v3::{ClusterLoadAssignment, LocalityLbEndpoints},
};

#[cfg(test)]
pub fn load_assignment(
    name: &str,
    port: u16,
    primary: &[Endpoint],
    failover: Option<&[Endpoint]>,
) -> ClusterLoadAssignment {
    let mut endpoints = localities(port, primary, 0);
    if let Some(other) = failover {
        if endpoints.is_empty() {
            // Priorities are contiguous: an empty priority 0 sends all traffic to 1.
            endpoints.push(LocalityLbEndpoints::default());
        }
        endpoints.extend(localities(port, other, 1));
    }
    ClusterLoadAssignment {
        cluster_name: name.to_owned(),
        endpoints,
        ..Default::default()
    }
}

/// Endpoints grouped by zone (the zone becomes the Envoy locality).
#[cfg(test)]
fn localities(port: u16, endpoints: &[Endpoint], priority: u32) -> Vec<LocalityLbEndpoints> {
    let mut by_zone: std::collections::BTreeMap<Option<&str>, Vec<LbEndpoint>> = Default::default();
    for endpoint in endpoints {
        by_zone
            .entry(endpoint.zone.as_deref())
            .or_default()
            .push(lb_endpoint(endpoint, port));
    }
    by_zone
        .into_iter()
        .map(|(zone, lb_endpoints)| LocalityLbEndpoints {
            locality: zone.map(|z| Locality {
                zone: z.to_owned(),
                ..Default::default()
            }),
            lb_endpoints,
            priority,
            ..Default::default()
        })
        .collect()
}

/// One endpoint on one port; a terminating endpoint that still serves is draining.
pub fn lb_endpoint(endpoint: &Endpoint, port: u16) -> LbEndpoint {
    LbEndpoint {
        host_identifier: Some(lb_endpoint::HostIdentifier::Endpoint(EnvoyEndpoint {
            address: Some(socket(&endpoint.address.to_string(), port, false)),
            ..Default::default()
        })),
        health_status: match endpoint.state {
            EndpointState::Ready => HealthStatus::Unknown as i32,
            EndpointState::Draining => HealthStatus::Draining as i32,
        },
        ..Default::default()
    }
}

/// An ingress listener for a Service port on one family.
pub fn listener(
    name: &str,
    family: Family,
    port: &ServicePort,
    cluster: &str,
    route: &str,
) -> Listener {
    let udp = port.kind == PortKind::Udp;
    let mut listener = Listener {
        name: name.to_owned(),
        address: Some(any_address(family, port.listener_port, udp)),
        ..Default::default()
    };
    match port.kind {
        PortKind::Udp => {
            let action = TypedExtensionConfig {
                name: "route".into(),
                typed_config: Some(any(&UdpRoute {
                    cluster: cluster.to_owned(),
                })),
            };
            let proxy = UdpProxyConfig {
                stat_prefix: name.to_owned(),
                route_specifier: Some(udp_proxy_config::RouteSpecifier::Matcher(Matcher {
                    on_no_match: Some(Box::new(matcher::OnMatch {
                        on_match: Some(matcher::on_match::OnMatch::Action(action)),
                        ..Default::default()
                    })),
                    ..Default::default()
                })),
                ..Default::default()
            };
            listener.udp_listener_config = Some(UdpListenerConfig {
                downstream_socket_config: Some(UdpSocketConfig::default()),
                ..Default::default()
            });
            listener.listener_filters = vec![ListenerFilter {
                name: "envoy.filters.udp_listener.udp_proxy".into(),
                config_type: Some(listener_filter::ConfigType::TypedConfig(any(&proxy))),
                ..Default::default()
            }];
        }
        PortKind::Tcp => {
            let proxy = TcpProxy {
                stat_prefix: name.to_owned(),
                cluster_specifier: Some(tcp_proxy::ClusterSpecifier::Cluster(cluster.to_owned())),
                ..Default::default()
            };
            listener.filter_chains = vec![chain("envoy.filters.network.tcp_proxy", any(&proxy))];
        }
        PortKind::Http | PortKind::H2c | PortKind::Grpc => {
            listener.filter_chains = vec![chain(
                "envoy.filters.network.http_connection_manager",
                any(&http_connection_manager(name, route)),
            )];
        }
    }
    listener
}

fn chain(filter: &str, config: Any) -> FilterChain {
    FilterChain {
        filters: vec![Filter {
            name: filter.to_owned(),
            config_type: Some(filter::ConfigType::TypedConfig(config)),
        }],
        ..Default::default()
    }
}

/// The router filter; gRFC A39 requires it, and last.
pub fn router_filter() -> HttpFilter {
    HttpFilter {
        name: "envoy.filters.http.router".into(),
        config_type: Some(http_filter::ConfigType::TypedConfig(
            any(&Router::default()),
        )),
        ..Default::default()
    }
}

/// The route table of an HTTP Service port: everything to its cluster.
pub fn route_configuration(name: &str, cluster: &str, kind: PortKind) -> RouteConfiguration {
    RouteConfiguration {
        name: name.to_owned(),
        virtual_hosts: vec![virtual_host(name, vec!["*".into()], cluster, kind)],
        ..Default::default()
    }
}

/// The RouteConfiguration behind a terminating filter chain: the Service's hosts go to
/// its cluster; any other host gets 421 Misdirected Request. An HTTP/2 client may reuse
/// a connection for another name its certificate covers (connection coalescing, RFC 9113
/// 9.1.1); the SNI picked this chain, so such a request would otherwise reach the wrong
/// Service. 421 makes the client retry on a connection of its own.
pub fn terminated_route_configuration(
    name: &str,
    hosts: &[String],
    cluster: &str,
    kind: PortKind,
) -> RouteConfiguration {
    RouteConfiguration {
        name: name.to_owned(),
        virtual_hosts: vec![
            virtual_host(name, hosts.to_vec(), cluster, kind),
            VirtualHost {
                name: "misdirected".into(),
                domains: vec!["*".into()],
                routes: vec![Route {
                    r#match: Some(RouteMatch {
                        path_specifier: Some(route_match::PathSpecifier::Prefix("/".into())),
                        ..Default::default()
                    }),
                    action: Some(route::Action::DirectResponse(DirectResponseAction {
                        status: 421,
                        ..Default::default()
                    })),
                    ..Default::default()
                }],
                ..Default::default()
            },
        ],
        ignore_port_in_host_matching: true,
        ..Default::default()
    }
}

/// The RouteConfiguration of a port shared by Host, without its virtual hosts (one per
/// Service, appended encoded between the two parts). The port in a Host header is
/// ignored: behind a LoadBalancer, `shop.example.com:443` is `shop.example.com`.
pub fn shared_route_parts(name: &str) -> (RouteConfiguration, RouteConfiguration) {
    let head = RouteConfiguration {
        name: name.to_owned(),
        ..Default::default()
    };
    let tail = RouteConfiguration {
        ignore_port_in_host_matching: true,
        ..Default::default()
    };
    (head, tail)
}

/// A virtual host sending every request for `domains` to `cluster`.
pub fn virtual_host(
    name: &str,
    domains: Vec<String>,
    cluster: &str,
    kind: PortKind,
) -> VirtualHost {
    VirtualHost {
        name: name.to_owned(),
        domains,
        routes: vec![Route {
            r#match: Some(RouteMatch {
                path_specifier: Some(route_match::PathSpecifier::Prefix("/".into())),
                ..Default::default()
            }),
            action: Some(route::Action::Route(RouteAction {
                cluster_specifier: Some(route_action::ClusterSpecifier::Cluster(
                    cluster.to_owned(),
                )),
                // gRPC and h2c streams are long-lived: no whole-request timeout.
                timeout: matches!(kind, PortKind::Grpc | PortKind::H2c).then(|| seconds(0)),
                ..Default::default()
            })),
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// The address a listener binds on a family.
fn any_address(family: Family, port: u16, udp: bool) -> Address {
    let bind = match family {
        Family::IPv4 => "0.0.0.0",
        Family::IPv6 => "::",
    };
    socket(bind, port, udp)
}

/// An HTTP connection manager taking its routes from `route` over RDS; the connection's
/// peer is the real client, appended to X-Forwarded-For (and on TLS, X-Forwarded-Proto
/// says https).
fn http_connection_manager(stat_prefix: &str, route: &str) -> HttpConnectionManager {
    HttpConnectionManager {
        stat_prefix: stat_prefix.to_owned(),
        codec_type: http_connection_manager::CodecType::Auto as i32,
        route_specifier: Some(http_connection_manager::RouteSpecifier::Rds(Rds {
            config_source: Some(ads()),
            route_config_name: route.to_owned(),
        })),
        http_filters: vec![router_filter()],
        use_remote_address: Some(BoolValue { value: true }),
        ..Default::default()
    }
}

/// The listener of a port shared by Host: one HTTP connection manager whose routes
/// (`route`) have a virtual host per Service.
pub fn shared_http_listener(name: &str, family: Family, port: u16, route: &str) -> Listener {
    Listener {
        name: name.to_owned(),
        address: Some(any_address(family, port, false)),
        filter_chains: vec![chain(
            "envoy.filters.network.http_connection_manager",
            any(&http_connection_manager(name, route)),
        )],
        ..Default::default()
    }
}

/// The listener of a port shared by SNI, without its filter chains (one per Service,
/// [`passthrough_chain`] and [`terminating_chain`], appended encoded): the TLS inspector
/// reads the SNI; a connection whose SNI no chain names is closed.
pub fn sni_listener_parts(name: &str, family: Family, port: u16) -> (Listener, Listener) {
    let head = Listener {
        name: name.to_owned(),
        address: Some(any_address(family, port, false)),
        ..Default::default()
    };
    let tail = Listener {
        listener_filters: vec![ListenerFilter {
            name: "envoy.filters.listener.tls_inspector".into(),
            config_type: Some(listener_filter::ConfigType::TypedConfig(any(
                &TlsInspector::default(),
            ))),
            ..Default::default()
        }],
        ..Default::default()
    };
    (head, tail)
}

/// A filter chain for `server_names` proxying the TLS connection as it is to `cluster`.
pub fn passthrough_chain(
    stat_prefix: &str,
    server_names: Vec<String>,
    cluster: &str,
) -> FilterChain {
    let proxy = TcpProxy {
        stat_prefix: stat_prefix.to_owned(),
        cluster_specifier: Some(tcp_proxy::ClusterSpecifier::Cluster(cluster.to_owned())),
        ..Default::default()
    };
    FilterChain {
        filter_chain_match: Some(FilterChainMatch {
            server_names,
            ..Default::default()
        }),
        ..chain("envoy.filters.network.tcp_proxy", any(&proxy))
    }
}

/// A filter chain for `server_names` terminating TLS with the certificate of SDS secret
/// `secret` (over ADS), HTTP/2 or HTTP/1.1 by ALPN, routing by `route`.
pub fn terminating_chain(
    stat_prefix: &str,
    server_names: Vec<String>,
    secret: &str,
    route: &str,
) -> FilterChain {
    let tls = DownstreamTlsContext {
        common_tls_context: Some(CommonTlsContext {
            tls_certificate_sds_secret_configs: vec![SdsSecretConfig {
                name: secret.to_owned(),
                sds_config: Some(ads()),
            }],
            alpn_protocols: vec!["h2".into(), "http/1.1".into()],
            ..Default::default()
        }),
        ..Default::default()
    };
    FilterChain {
        filter_chain_match: Some(FilterChainMatch {
            server_names,
            ..Default::default()
        }),
        transport_socket: Some(TransportSocket {
            name: "envoy.transport_sockets.tls".into(),
            config_type: Some(transport_socket::ConfigType::TypedConfig(any(&tls))),
        }),
        ..chain(
            "envoy.filters.network.http_connection_manager",
            any(&http_connection_manager(stat_prefix, route)),
        )
    }
}

/// The SDS secret holding a certificate and its key.
pub fn tls_secret(name: &str, secret: &TlsSecret) -> Secret {
    let inline = |text: &str| DataSource {
        specifier: Some(data_source::Specifier::InlineString(text.to_owned())),
        ..Default::default()
    };
    Secret {
        name: name.to_owned(),
        r#type: Some(secret::Type::TlsCertificate(TlsCertificate {
            certificate_chain: Some(inline(&secret.certificate_chain)),
            private_key: Some(inline(&secret.private_key)),
            ..Default::default()
        })),
    }
}
