//! xDS resources -> nginx configuration, without I/O: the same Listeners, Clusters,
//! ClusterLoadAssignments and RouteConfigurations an Envoy node gets, written as nginx
//! `stream {}` and `http {}` text. Nothing is translated from the Kubernetes model here,
//! so what nginx serves and what Envoy serves stay the same by construction.
//!
//! | xDS | nginx |
//! |---|---|
//! | Listener, TCP proxy | `stream` server, `proxy_pass` to the cluster's upstream |
//! | Listener, UDP proxy | `stream` server with `listen ... udp` |
//! | Listener, HTTP connection manager + RDS | `http` servers, one per virtual host (`server_name`), `proxy_pass` with `X-Forwarded-For`, or `grpc_pass` (`listen ... http2`) to an HTTP/2 cluster |
//! | Listener with SNI filter chains (TLS passthrough) | `stream` server with `ssl_preread` and a `map` of server names to upstreams; unknown names are closed |
//! | Cluster + ClusterLoadAssignment | `upstream`: priority 0 endpoints, higher priorities as `backup`, draining ones left out |
//! | Cluster with upstream PROXY protocol v1 | `proxy_protocol on` |
//!
//! What nginx can't express is refused with the reason (the agent NACKs the response that
//! carried it) and everything else is rendered: PROXY protocol v2 (open-source nginx sends
//! v1 only), PROXY protocol to an HTTP upstream, TLS termination (not rendered for nginx
//! yet), cleartext HTTP/1.1 and HTTP/2 on one port.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write;

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::core::v3::{address, socket_address, HealthStatus};
use envoy_types::pb::envoy::config::endpoint::v3::{lb_endpoint, ClusterLoadAssignment};
use envoy_types::pb::envoy::config::listener::v3::{filter, listener_filter, Listener};
use envoy_types::pb::envoy::config::route::v3::{route, route_action, RouteConfiguration};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    http_connection_manager, HttpConnectionManager,
};
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::{tcp_proxy, TcpProxy};
use envoy_types::pb::envoy::extensions::filters::udp::udp_proxy::v3::{
    udp_proxy_config, Route as UdpRoute, UdpProxyConfig,
};
use envoy_types::pb::envoy::extensions::transport_sockets::proxy_protocol::v3::ProxyProtocolUpstreamTransport;
use envoy_types::pb::envoy::extensions::upstreams::http::v3::{
    http_protocol_options, HttpProtocolOptions,
};
use envoy_types::pb::google::protobuf::Any;
use envoy_types::pb::xds::r#type::matcher::v3::matcher;
use prost::{Message, Name};

use crate::snapshot::ResourceType;

/// The resources a node holds, decoded, by name.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Resources {
    pub listeners: BTreeMap<String, Listener>,
    pub clusters: BTreeMap<String, Cluster>,
    pub endpoints: BTreeMap<String, ClusterLoadAssignment>,
    pub routes: BTreeMap<String, RouteConfiguration>,
}

impl Resources {
    /// Takes one received resource of type `ty`; an error names what does not decode.
    pub fn insert(&mut self, ty: ResourceType, name: &str, any: &Any) -> Result<(), String> {
        fn take<M: Message + Name + Default>(
            map: &mut BTreeMap<String, M>,
            name: &str,
            any: &Any,
        ) -> Result<(), String> {
            if any.type_url != M::type_url() {
                return Err(format!(
                    "{name}: type {} is not {}",
                    any.type_url,
                    M::type_url()
                ));
            }
            let message = M::decode(any.value.as_slice()).map_err(|e| format!("{name}: {e}"))?;
            map.insert(name.to_owned(), message);
            Ok(())
        }
        match ty {
            ResourceType::Listener => take(&mut self.listeners, name, any),
            ResourceType::Cluster => take(&mut self.clusters, name, any),
            ResourceType::Endpoint => take(&mut self.endpoints, name, any),
            ResourceType::Route => take(&mut self.routes, name, any),
            // Not subscribed to: nginx is not given certificates.
            ResourceType::Secret => Ok(()),
        }
    }

    /// Drops one resource.
    pub fn remove(&mut self, ty: ResourceType, name: &str) {
        match ty {
            ResourceType::Listener => self.listeners.remove(name).map(drop),
            ResourceType::Cluster => self.clusters.remove(name).map(drop),
            ResourceType::Endpoint => self.endpoints.remove(name).map(drop),
            ResourceType::Route => self.routes.remove(name).map(drop),
            ResourceType::Secret => None,
        };
    }

    /// Every resource of a snapshot (what a node of its group is served).
    pub fn from_snapshot(snapshot: &crate::snapshot::Snapshot) -> Resources {
        let mut resources = Resources::default();
        for ty in ResourceType::ALL {
            for r in snapshot.resources(ty).iter() {
                resources
                    .insert(ty, r.name(), &r.to_any())
                    .expect("the server's own resources decode");
            }
        }
        resources
    }
}

/// A resource nginx can't be given, and why.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Refused {
    pub ty: ResourceType,
    pub name: String,
    pub reason: String,
}

/// The nginx configuration of a set of resources.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Rendered {
    /// For the main context: a `stream {}` block (empty when nothing needs one).
    pub stream: String,
    /// For inside the `http {}` block: upstreams and servers.
    pub http: String,
    /// What was left out because nginx can't express it.
    pub refused: Vec<Refused>,
    /// Resources referenced but not held yet (a listener whose cluster, endpoints or
    /// route have not arrived): what they reference is left out until they do.
    pub missing: BTreeSet<(ResourceType, String)>,
}

/// The upstream that closes every connection: unknown server names go there.
const CLOSED: &str = "dsx_closed";

/// Renders `resources`. Deterministic: the same resources give the same text.
pub fn render(resources: &Resources) -> Rendered {
    let mut r = Renderer {
        resources,
        out: Rendered::default(),
        stream_upstreams: BTreeSet::new(),
        http_upstreams: BTreeSet::new(),
        stream_servers: String::new(),
        http_servers: String::new(),
        maps: String::new(),
    };
    let mut http_ports: BTreeMap<String, Vec<(String, Listen)>> = BTreeMap::new();
    for (name, listener) in &resources.listeners {
        r.listener(name, listener, &mut http_ports);
    }
    for (route, listens) in &http_ports {
        r.http_route(route, listens);
    }
    r.finish()
}

struct Renderer<'a> {
    resources: &'a Resources,
    out: Rendered,
    stream_upstreams: BTreeSet<String>,
    http_upstreams: BTreeSet<String>,
    stream_servers: String,
    http_servers: String,
    maps: String,
}

/// Where a listener listens, as nginx's `listen` takes it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Listen {
    address: String,
    ipv6_only: bool,
    udp: bool,
}

impl Listen {
    fn of(listener: &Listener) -> Option<Listen> {
        let Some(address::Address::SocketAddress(sa)) = listener.address.as_ref()?.address.as_ref()
        else {
            return None;
        };
        let Some(socket_address::PortSpecifier::PortValue(port)) = sa.port_specifier else {
            return None;
        };
        let v6 = sa.address.contains(':');
        Some(Listen {
            address: socket(&sa.address, port)?,
            ipv6_only: v6 && !sa.ipv4_compat,
            udp: sa.protocol == socket_address::Protocol::Udp as i32,
        })
    }

    /// The `listen` directive, with `extra` parameters.
    fn directive(&self, extra: &str) -> String {
        self.directive_with(extra, true)
    }

    /// The same; socket options (`ipv6only`) only with `options`: nginx takes them once
    /// per address, so of the servers sharing a port only the first says them.
    fn directive_with(&self, extra: &str, options: bool) -> String {
        let mut d = format!("        listen {}", self.address);
        if self.udp {
            d.push_str(" udp");
        }
        d.push_str(extra);
        if self.ipv6_only && options {
            d.push_str(" ipv6only=on");
        }
        d.push_str(";\n");
        d
    }
}

/// A name nginx accepts for an upstream or variable: the resource name's letters and
/// digits, and a hash so that two names never meet.
pub fn ident(prefix: &str, name: &str) -> String {
    let clean: String = name
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    let hash = xxhash_rust::xxh3::xxh3_64(name.as_bytes()) as u32;
    format!("{prefix}_{clean}_{hash:08x}")
}

/// `name` as it may appear in a comment: one line of printable text. Names come from the
/// control plane; nothing it sends is written into the configuration unchecked.
fn comment(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_graphic() || c == ' ' {
                c
            } else {
                '?'
            }
        })
        .collect()
}

/// Whether `host` is a name nginx can match as given (`server_name`, a `hostnames` map):
/// letters, digits, `-`, `.`, and a leading `*.` wildcard.
pub fn host_ok(host: &str) -> bool {
    let name = host.strip_prefix("*.").unwrap_or(host);
    !name.is_empty()
        && name.len() <= 253
        && !name.starts_with('.')
        && !name.ends_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
}

/// `address:port` as nginx writes it, when `address` is an IP address.
fn socket(address: &str, port: u32) -> Option<String> {
    let ip: std::net::IpAddr = address.parse().ok()?;
    let port = u16::try_from(port).ok()?;
    Some(std::net::SocketAddr::new(ip, port).to_string())
}

fn decode<M: Message + Name + Default>(any: &Any) -> Option<M> {
    (any.type_url == M::type_url())
        .then(|| M::decode(any.value.as_slice()).ok())
        .flatten()
}

/// What a cluster's upstream speaks and sends.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Upstream {
    http2: bool,
    /// PROXY protocol version (1 or 2).
    proxy_protocol: Option<u32>,
    connect_timeout_ms: u64,
}

impl Renderer<'_> {
    fn refuse(&mut self, ty: ResourceType, name: &str, reason: impl Into<String>) {
        self.out.refused.push(Refused {
            ty,
            name: name.to_owned(),
            reason: reason.into(),
        });
    }

    fn missing(&mut self, ty: ResourceType, name: &str) {
        self.out.missing.insert((ty, name.to_owned()));
    }

    /// The cluster's properties, when it and its endpoints are held.
    fn upstream(&mut self, cluster: &str) -> Option<Upstream> {
        let Some(c) = self.resources.clusters.get(cluster) else {
            self.missing(ResourceType::Cluster, cluster);
            return None;
        };
        if !self.resources.endpoints.contains_key(cluster) {
            self.missing(ResourceType::Endpoint, cluster);
            return None;
        }
        let mut upstream = Upstream {
            connect_timeout_ms: c.connect_timeout.as_ref().map_or(5_000, |d| {
                d.seconds as u64 * 1_000 + d.nanos as u64 / 1_000_000
            }),
            ..Default::default()
        };
        if let Some(options) = c
            .typed_extension_protocol_options
            .get(&HttpProtocolOptions::full_name())
            .and_then(decode::<HttpProtocolOptions>)
        {
            upstream.http2 = matches!(
                options.upstream_protocol_options,
                Some(http_protocol_options::UpstreamProtocolOptions::ExplicitHttpConfig(
                    http_protocol_options::ExplicitHttpConfig {
                        protocol_config: Some(
                            http_protocol_options::explicit_http_config::ProtocolConfig::Http2ProtocolOptions(_)
                        )
                    }
                ))
            );
        }
        if let Some(socket) = &c.transport_socket {
            let transport = match &socket.config_type {
                Some(
                    envoy_types::pb::envoy::config::core::v3::transport_socket::ConfigType::TypedConfig(any),
                ) => decode::<ProxyProtocolUpstreamTransport>(any),
                None => None,
            };
            match transport {
                Some(t) => {
                    upstream.proxy_protocol = Some(t.config.map_or(0, |c| c.version) as u32 + 1)
                }
                None => {
                    self.refuse(
                        ResourceType::Cluster,
                        cluster,
                        format!("transport socket {} has no nginx equivalent", socket.name),
                    );
                    return None;
                }
            }
        }
        Some(upstream)
    }

    /// Writes the `upstream` block of `cluster` once per context; its name.
    fn upstream_block(&mut self, cluster: &str, http: bool) -> String {
        let name = ident("dsx", cluster);
        let written = if http {
            &mut self.http_upstreams
        } else {
            &mut self.stream_upstreams
        };
        if !written.insert(cluster.to_owned()) {
            return name;
        }
        let cla = &self.resources.endpoints[cluster];
        let mut primary = Vec::new();
        let mut backup = Vec::new();
        let mut bad = Vec::new();
        for locality in &cla.endpoints {
            for e in &locality.lb_endpoints {
                let serving = matches!(
                    HealthStatus::try_from(e.health_status),
                    Ok(HealthStatus::Unknown | HealthStatus::Healthy | HealthStatus::Degraded)
                );
                let Some(lb_endpoint::HostIdentifier::Endpoint(endpoint)) = &e.host_identifier
                else {
                    continue;
                };
                let Some(address::Address::SocketAddress(sa)) =
                    endpoint.address.as_ref().and_then(|a| a.address.as_ref())
                else {
                    continue;
                };
                let Some(socket_address::PortSpecifier::PortValue(port)) = sa.port_specifier else {
                    continue;
                };
                if !serving {
                    continue;
                }
                let Some(server) = socket(&sa.address, port) else {
                    bad.push(sa.address.clone());
                    continue;
                };
                if locality.priority == 0 {
                    primary.push(server);
                } else {
                    backup.push(server);
                }
            }
        }
        if let Some(address) = bad.first() {
            self.refuse(
                ResourceType::Endpoint,
                cluster,
                format!(
                    "endpoint address {:?} is not an IP address",
                    comment(address)
                ),
            );
        }
        primary.sort();
        primary.dedup();
        backup.sort();
        backup.dedup();
        let mut block = format!("    # {}\n    upstream {name} {{\n", comment(cluster));
        if primary.is_empty() {
            // No primary endpoint: the failover priority serves, as Envoy's would.
            primary = std::mem::take(&mut backup);
        }
        if primary.is_empty() {
            block.push_str("        # no ready endpoint: connections fail at once\n");
            block.push_str("        server 127.0.0.1:9 down;\n");
        }
        for s in &primary {
            let _ = writeln!(block, "        server {s};");
        }
        for s in &backup {
            let _ = writeln!(block, "        server {s} backup;");
        }
        block.push_str("    }\n");
        if http {
            self.http_servers.push_str(&block);
        } else {
            self.stream_servers.push_str(&block);
        }
        name
    }

    fn listener(
        &mut self,
        name: &str,
        listener: &Listener,
        http_ports: &mut BTreeMap<String, Vec<(String, Listen)>>,
    ) {
        let Some(listen) = Listen::of(listener) else {
            self.refuse(ResourceType::Listener, name, "not an IP address and port");
            return;
        };
        // UDP: the UDP proxy listener filter and its one route.
        if let Some(filter) = listener
            .listener_filters
            .iter()
            .find(|f| f.name == "envoy.filters.udp_listener.udp_proxy")
        {
            let proxy = match &filter.config_type {
                Some(listener_filter::ConfigType::TypedConfig(any)) => {
                    decode::<UdpProxyConfig>(any)
                }
                _ => None,
            };
            let cluster = proxy.as_ref().and_then(udp_cluster);
            let Some(cluster) = cluster else {
                self.refuse(
                    ResourceType::Listener,
                    name,
                    "UDP proxy without a single cluster",
                );
                return;
            };
            let Some(upstream) = self.upstream(&cluster) else {
                return;
            };
            if upstream.proxy_protocol.is_some() {
                self.refuse(
                    ResourceType::Cluster,
                    &cluster,
                    "nginx sends no PROXY protocol header over UDP",
                );
                return;
            }
            let idle = proxy
                .and_then(|p| p.idle_timeout)
                .map_or(60, |d| d.seconds.max(1));
            let up = self.upstream_block(&cluster, false);
            let _ = write!(
                self.stream_servers,
                "    # {}\n    server {{\n{}        proxy_pass {up};\n        proxy_timeout {idle}s;\n    }}\n",
                comment(name),
                // One socket per worker, so a client's datagrams stay with one worker.
                listen.directive(" reuseport")
            );
            return;
        }
        let sni = listener.filter_chains.iter().any(|c| {
            c.filter_chain_match
                .as_ref()
                .is_some_and(|m| !m.server_names.is_empty())
        });
        if sni {
            self.sni_listener(name, listener, &listen);
            return;
        }
        let [chain] = listener.filter_chains.as_slice() else {
            self.refuse(
                ResourceType::Listener,
                name,
                format!(
                    "{} filter chains without server names: nginx can't choose between them",
                    listener.filter_chains.len()
                ),
            );
            return;
        };
        match network_filter(chain) {
            Some(NetworkFilter::Tcp(cluster)) => {
                let Some(upstream) = self.upstream(&cluster) else {
                    return;
                };
                let proxy_protocol = match upstream.proxy_protocol {
                    None => "",
                    Some(1) => "        proxy_protocol on;\n",
                    Some(_) => {
                        self.refuse(ResourceType::Cluster, &cluster, "PROXY protocol v2: open-source nginx's stream module sends v1 only (annotate the Service dualstack-xds.io/proxy-protocol: v1)");
                        return;
                    }
                };
                let up = self.upstream_block(&cluster, false);
                let _ = write!(
                    self.stream_servers,
                    "    # {}\n    server {{\n{}        proxy_pass {up};\n        proxy_connect_timeout {}ms;\n{proxy_protocol}    }}\n",
                    comment(name),
                    listen.directive(""),
                    upstream.connect_timeout_ms,
                );
            }
            Some(NetworkFilter::Http(route)) => {
                http_ports
                    .entry(route)
                    .or_default()
                    .push((name.to_owned(), listen));
            }
            None => self.refuse(
                ResourceType::Listener,
                name,
                "neither a TCP proxy nor an HTTP connection manager over RDS",
            ),
        }
    }

    /// A port shared by SNI: `ssl_preread` reads the name, a map picks the upstream.
    fn sni_listener(&mut self, name: &str, listener: &Listener, listen: &Listen) {
        let var = ident("$dsx_sni", name);
        let mut entries = Vec::new();
        let mut proxy_protocol = BTreeSet::new();
        for chain in &listener.filter_chains {
            let names = chain
                .filter_chain_match
                .as_ref()
                .map(|m| m.server_names.clone())
                .unwrap_or_default();
            if chain.transport_socket.is_some() {
                self.refuse(
                    ResourceType::Listener,
                    name,
                    format!(
                        "TLS termination for {} is not rendered for nginx (use TLS passthrough, or an Envoy fleet)",
                        names.join(", ")
                    ),
                );
                continue;
            }
            let Some(NetworkFilter::Tcp(cluster)) = network_filter(chain) else {
                self.refuse(
                    ResourceType::Listener,
                    name,
                    format!(
                        "the filter chain for {} is not a TCP proxy",
                        names.join(", ")
                    ),
                );
                continue;
            };
            let Some(upstream) = self.upstream(&cluster) else {
                continue;
            };
            match upstream.proxy_protocol {
                Some(2) => {
                    self.refuse(ResourceType::Cluster, &cluster, "PROXY protocol v2: open-source nginx's stream module sends v1 only (annotate the Service dualstack-xds.io/proxy-protocol: v1)");
                    continue;
                }
                other => {
                    proxy_protocol.insert(other.is_some());
                }
            }
            let up = self.upstream_block(&cluster, false);
            for host in names {
                if host_ok(&host) {
                    entries.push((host, up.clone()));
                } else {
                    self.refuse(
                        ResourceType::Listener,
                        name,
                        format!("{:?} is not a server name nginx can match", comment(&host)),
                    );
                }
            }
        }
        if proxy_protocol.len() > 1 {
            self.refuse(
                ResourceType::Listener,
                name,
                "Services on one SNI port disagree on PROXY protocol: nginx sends it per port",
            );
            return;
        }
        if !self.stream_upstreams.contains(CLOSED) {
            self.stream_upstreams.insert(CLOSED.to_owned());
            let _ = write!(
                self.stream_servers,
                "    # server names no Service claims: the connection is closed\n    upstream {CLOSED} {{\n        server 127.0.0.1:9 down;\n    }}\n"
            );
        }
        let mut map = format!(
            "    # {}: TLS server name -> upstream\n    map $ssl_preread_server_name {var} {{\n        hostnames;\n        default {CLOSED};\n",
            comment(name)
        );
        entries.sort();
        for (host, up) in &entries {
            let _ = writeln!(map, "        {host} {up};");
        }
        map.push_str("    }\n");
        self.maps.push_str(&map);
        let _ = write!(
            self.stream_servers,
            "    # {}\n    server {{\n{}        ssl_preread on;\n        proxy_pass {var};\n{}    }}\n",
            comment(name),
            listen.directive(""),
            if proxy_protocol.contains(&true) {
                "        proxy_protocol on;\n"
            } else {
                ""
            }
        );
    }

    /// The HTTP servers of one RouteConfiguration, on every listener that routes by it.
    fn http_route(&mut self, route: &str, listens: &[(String, Listen)]) {
        let Some(config) = self.resources.routes.get(route) else {
            self.missing(ResourceType::Route, route);
            return;
        };
        // What each virtual host does.
        enum Action {
            Proxy { upstream: String, http2: bool },
            Status(u32),
        }
        let mut hosts: Vec<(Vec<String>, Action, String)> = Vec::new();
        for vhost in &config.virtual_hosts {
            let Some(first) = vhost.routes.first() else {
                continue;
            };
            let action = match &first.action {
                Some(route::Action::Route(action)) => match &action.cluster_specifier {
                    Some(route_action::ClusterSpecifier::Cluster(cluster)) => {
                        let Some(upstream) = self.upstream(cluster) else {
                            continue;
                        };
                        if upstream.proxy_protocol.is_some() {
                            self.refuse(
                                ResourceType::Cluster,
                                cluster,
                                "nginx's http proxy sends no PROXY protocol header upstream",
                            );
                            continue;
                        }
                        Action::Proxy {
                            upstream: self.upstream_block(cluster, true),
                            http2: upstream.http2,
                        }
                    }
                    _ => {
                        self.refuse(
                            ResourceType::Route,
                            route,
                            format!("virtual host {}: not a single cluster", vhost.name),
                        );
                        continue;
                    }
                },
                Some(route::Action::DirectResponse(d)) => Action::Status(d.status),
                _ => {
                    self.refuse(
                        ResourceType::Route,
                        route,
                        format!("virtual host {}: no route or direct response", vhost.name),
                    );
                    continue;
                }
            };
            let mut domains = Vec::new();
            for host in &vhost.domains {
                if host == "*" || host_ok(host) {
                    domains.push(host.clone());
                } else {
                    self.refuse(
                        ResourceType::Route,
                        route,
                        format!(
                            "virtual host {}: {:?} is not a host name nginx can match",
                            comment(&vhost.name),
                            comment(host)
                        ),
                    );
                }
            }
            if domains.is_empty() {
                continue;
            }
            hosts.push((domains, action, vhost.name.clone()));
        }
        let http2: BTreeSet<bool> = hosts
            .iter()
            .filter_map(|(_, a, _)| match a {
                Action::Proxy { http2, .. } => Some(*http2),
                Action::Status(_) => None,
            })
            .collect();
        let http2 = if http2.len() > 1 {
            // nginx 1.22 serves cleartext HTTP/2 only by prior knowledge, on the whole
            // port: the HTTP/1.1 Services keep it.
            for (_, action, vhost) in &hosts {
                if matches!(action, Action::Proxy { http2: true, .. }) {
                    self.refuse(ResourceType::Route, route, format!("virtual host {vhost}: nginx can't serve cleartext HTTP/2 (gRPC) and HTTP/1.1 on one port"));
                }
            }
            hosts.retain(|(_, a, _)| !matches!(a, Action::Proxy { http2: true, .. }));
            false
        } else {
            http2.contains(&true)
        };
        let params = if http2 { " http2" } else { "" };
        let has_default = hosts.iter().any(|(d, _, _)| d.iter().any(|h| h == "*"));
        let names: Vec<String> = listens.iter().map(|(n, _)| comment(n)).collect();
        let mut text = String::new();
        // Addresses whose socket options are said.
        let mut optioned = BTreeSet::new();
        for (domains, action, vhost) in &hosts {
            let default = domains.iter().any(|h| h == "*");
            let server_names: Vec<&str> = domains
                .iter()
                .filter(|h| *h != "*")
                .map(String::as_str)
                .collect();
            let _ = write!(
                text,
                "    # {} -> {}\n    server {{\n",
                names.join(", "),
                comment(vhost)
            );
            for (_, listen) in listens {
                text.push_str(&listen.directive_with(
                    &format!("{params}{}", if default { " default_server" } else { "" }),
                    optioned.insert(listen.address.clone()),
                ));
            }
            if !server_names.is_empty() {
                let _ = writeln!(text, "        server_name {};", server_names.join(" "));
            }
            match action {
                Action::Proxy {
                    upstream,
                    http2: true,
                } => {
                    let _ = write!(
                        text,
                        "        location / {{\n            grpc_pass grpc://{upstream};\n            grpc_set_header X-Forwarded-For $proxy_add_x_forwarded_for;\n            grpc_read_timeout 1d;\n            grpc_send_timeout 1d;\n        }}\n"
                    );
                }
                Action::Proxy {
                    upstream,
                    http2: false,
                } => {
                    let _ = write!(
                        text,
                        "        location / {{\n            proxy_pass http://{upstream};\n            proxy_http_version 1.1;\n            proxy_set_header Connection \"\";\n            proxy_set_header Host $http_host;\n            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;\n            proxy_set_header X-Forwarded-Proto $scheme;\n        }}\n"
                    );
                }
                Action::Status(status) => {
                    let _ = writeln!(text, "        return {status};");
                }
            }
            text.push_str("    }\n");
        }
        if !has_default {
            // A host no Service names: 404, as Envoy answers.
            let _ = write!(
                text,
                "    # {}: unknown hosts\n    server {{\n",
                names.join(", ")
            );
            for (_, listen) in listens {
                text.push_str(&listen.directive_with(
                    &format!("{params} default_server"),
                    optioned.insert(listen.address.clone()),
                ));
            }
            text.push_str("        return 404;\n    }\n");
        }
        self.http_servers.push_str(&text);
    }

    fn finish(mut self) -> Rendered {
        if !self.stream_servers.is_empty() {
            self.out.stream = format!("stream {{\n{}{}}}\n", self.maps, self.stream_servers);
        }
        self.out.http = self.http_servers;
        self.out.refused.sort();
        self.out.refused.dedup();
        self.out
    }
}

enum NetworkFilter {
    Tcp(String),
    /// The RDS route configuration name.
    Http(String),
}

/// The chain's one network filter: a TCP proxy to a cluster, or an HTTP connection
/// manager over RDS.
fn network_filter(
    chain: &envoy_types::pb::envoy::config::listener::v3::FilterChain,
) -> Option<NetworkFilter> {
    let [f] = chain.filters.as_slice() else {
        return None;
    };
    let Some(filter::ConfigType::TypedConfig(any)) = &f.config_type else {
        return None;
    };
    if let Some(TcpProxy {
        cluster_specifier: Some(tcp_proxy::ClusterSpecifier::Cluster(cluster)),
        ..
    }) = decode::<TcpProxy>(any)
    {
        return Some(NetworkFilter::Tcp(cluster));
    }
    if let Some(HttpConnectionManager {
        route_specifier: Some(http_connection_manager::RouteSpecifier::Rds(rds)),
        ..
    }) = decode::<HttpConnectionManager>(any)
    {
        return Some(NetworkFilter::Http(rds.route_config_name));
    }
    None
}

/// The one cluster a UDP proxy routes to (its matcher's no-match action).
fn udp_cluster(proxy: &UdpProxyConfig) -> Option<String> {
    let Some(udp_proxy_config::RouteSpecifier::Matcher(m)) = &proxy.route_specifier else {
        return None;
    };
    let on_match = m.on_no_match.as_ref()?;
    let Some(matcher::on_match::OnMatch::Action(action)) = &on_match.on_match else {
        return None;
    };
    decode::<UdpRoute>(action.typed_config.as_ref()?).map(|r| r.cluster)
}

/// The resources a node holds that reference others: names of each type they need.
pub fn references(resources: &Resources) -> BTreeMap<ResourceType, BTreeSet<String>> {
    let mut out: BTreeMap<ResourceType, BTreeSet<String>> = BTreeMap::new();
    for name in resources.clusters.keys() {
        out.entry(ResourceType::Endpoint)
            .or_default()
            .insert(name.clone());
    }
    for listener in resources.listeners.values() {
        for chain in &listener.filter_chains {
            if let Some(NetworkFilter::Http(route)) = network_filter(chain) {
                out.entry(ResourceType::Route).or_default().insert(route);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests;
