//! Translation rules, on model values built by hand.

use std::collections::BTreeMap;

use prost::Message;

use super::*;
use std::sync::Arc;

use crate::model::{Endpoint, EndpointState, Endpoints, ProxyProtocol, Slice};
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;

fn key(name: &str) -> ServiceKey {
    ServiceKey::new("default", name)
}

fn service(name: &str, port: u16, kind: PortKind) -> Service {
    Service::one_port(key(name), port, kind)
}

fn endpoint(ip: &str) -> Endpoint {
    Endpoint {
        address: ip.parse().unwrap(),
        state: EndpointState::Ready,
        zone: Some("zone-1".into()),
        target: None,
    }
}

fn slice(family: Family, ips: &[&str]) -> Arc<Slice> {
    Arc::new(Slice::new(
        family,
        BTreeMap::from([("main".to_string(), 8080)]),
        ips.iter().map(|ip| endpoint(ip)).collect(),
    ))
}

fn dual_endpoints() -> Endpoints {
    let mut e = Endpoints::default();
    e.slices
        .insert("v4".into(), slice(Family::IPv4, &["10.0.0.1", "10.0.0.2"]));
    e.slices
        .insert("v6".into(), slice(Family::IPv6, &["fd00::1"]));
    e
}

fn model(services: Vec<Service>) -> Model {
    let mut m = Model::default();
    for s in services {
        m.endpoints.insert(s.key.clone(), dual_endpoints());
        m.services.insert(s.key.clone(), s);
    }
    m
}

fn group<'a>(set: &'a SnapshotSet, families: &str) -> &'a Snapshot {
    set.get(families).expect("group")
}

fn cla(snapshot: &Snapshot, name: &str) -> ClusterLoadAssignment {
    let r = snapshot
        .resources(ResourceType::Endpoint)
        .get(name)
        .unwrap();
    ClusterLoadAssignment::decode(&*r.to_any().value).unwrap()
}

fn addresses(cla: &ClusterLoadAssignment, priority: u32) -> Vec<String> {
    use envoy_types::pb::envoy::config::core::v3::address;
    use envoy_types::pb::envoy::config::endpoint::v3::lb_endpoint::HostIdentifier;
    cla.endpoints
        .iter()
        .filter(|l| l.priority == priority)
        .flat_map(|l| l.lb_endpoints.iter())
        .map(|e| match &e.host_identifier {
            Some(HostIdentifier::Endpoint(ep)) => match &ep.address.as_ref().unwrap().address {
                Some(address::Address::SocketAddress(s)) => s.address.clone(),
                _ => unreachable!(),
            },
            _ => unreachable!(),
        })
        .collect()
}

#[test]
fn listeners_on_each_family_clusters_on_the_primary() {
    let mut t = Translator::new(Family::IPv4);
    let set = t
        .update(&model(vec![service("web", 80, PortKind::Http)]), None)
        .unwrap();
    let both = group(&set, "IPv4,IPv6");
    let listeners: Vec<_> = both
        .resources(ResourceType::Listener)
        .iter()
        .map(|r| r.name().to_string())
        .collect();
    assert_eq!(listeners, ["default/web:80:ipv4", "default/web:80:ipv6"]);
    assert_eq!(both.resources(ResourceType::Route).len(), 1);
    assert_eq!(
        addresses(&cla(both, "default/web:80"), 0),
        ["10.0.0.1", "10.0.0.2"]
    );
    // A node binding only IPv4 never gets an IPv6 listener, and vice versa.
    let v4 = group(&set, "IPv4");
    assert_eq!(v4.resources(ResourceType::Listener).len(), 1);
    assert!(v4
        .resources(ResourceType::Listener)
        .get("default/web:80:ipv4")
        .is_some());
    let v6 = group(&set, "IPv6");
    assert!(v6
        .resources(ResourceType::Listener)
        .get("default/web:80:ipv6")
        .is_some());
    // The IPv6 listener binds [::] v6-only.
    let l = Listener::decode(
        &*v6.resources(ResourceType::Listener)
            .iter()
            .next()
            .unwrap()
            .to_any()
            .value,
    )
    .unwrap();
    let json = format!("{:?}", l.address);
    assert!(
        json.contains("address: \"::\"") && json.contains("ipv4_compat: false"),
        "{json}"
    );
}

#[test]
fn a_flip_changes_endpoints_and_nothing_else() {
    let mut t = Translator::new(Family::IPv4);
    let services = vec![
        service("web", 80, PortKind::Http),
        service("db", 5432, PortKind::Tcp),
    ];
    let mut m = model(services);
    let before = t.update(&m, None).unwrap();
    m.config_primary_family = Some(Family::IPv6);
    let after = t.update(&m, None).unwrap();
    for families in ["IPv4,IPv6", "IPv4", "IPv6"] {
        let (b, a) = (group(&before, families), group(&after, families));
        for ty in [
            ResourceType::Cluster,
            ResourceType::Listener,
            ResourceType::Route,
        ] {
            assert_eq!(
                b.resources(ty).version(),
                a.resources(ty).version(),
                "{ty} in {families}"
            );
        }
        assert_ne!(
            b.resources(ResourceType::Endpoint).version(),
            a.resources(ResourceType::Endpoint).version()
        );
        assert_eq!(addresses(&cla(a, "default/db:5432"), 0), ["fd00::1"]);
    }
}

#[test]
fn annotation_overrides_config_map_overrides_flag() {
    let mut t = Translator::new(Family::IPv6);
    let mut pinned = service("pinned", 81, PortKind::Tcp);
    pinned.primary_family = Some(Family::IPv4);
    let mut m = model(vec![service("web", 80, PortKind::Tcp), pinned]);
    let set = t.update(&m, None).unwrap();
    let g = group(&set, "IPv4,IPv6");
    assert_eq!(addresses(&cla(g, "default/web:80"), 0), ["fd00::1"], "flag");
    assert_eq!(
        addresses(&cla(g, "default/pinned:81"), 0),
        ["10.0.0.1", "10.0.0.2"],
        "annotation"
    );
    m.config_primary_family = Some(Family::IPv4);
    m.services.get_mut(&key("pinned")).unwrap().primary_family = Some(Family::IPv6);
    let set = t.update(&m, None).unwrap();
    let g = group(&set, "IPv4,IPv6");
    assert_eq!(
        addresses(&cla(g, "default/web:80"), 0),
        ["10.0.0.1", "10.0.0.2"],
        "config map"
    );
    assert_eq!(
        addresses(&cla(g, "default/pinned:81"), 0),
        ["fd00::1"],
        "annotation"
    );
}

#[test]
fn failover_puts_the_other_family_at_priority_one() {
    let mut t = Translator::new(Family::IPv4);
    let mut svc = service("web", 80, PortKind::Tcp);
    svc.failover = true;
    let mut m = model(vec![svc]);
    let set = t.update(&m, None).unwrap();
    let c = cla(group(&set, "IPv4"), "default/web:80");
    assert_eq!(addresses(&c, 0), ["10.0.0.1", "10.0.0.2"]);
    assert_eq!(addresses(&c, 1), ["fd00::1"]);
    // No primary endpoints at all: priority 0 is present and empty.
    m.endpoints
        .get_mut(&key("web"))
        .unwrap()
        .slices
        .remove("v4");
    let set = t.update(&m, None).unwrap();
    let c = cla(group(&set, "IPv4"), "default/web:80");
    assert!(addresses(&c, 0).is_empty());
    assert_eq!(c.endpoints[0].priority, 0);
    assert_eq!(addresses(&c, 1), ["fd00::1"]);
}

#[test]
fn a_change_to_one_service_touches_only_its_resources() {
    let mut t = Translator::new(Family::IPv4);
    let mut m = model(
        (0..50)
            .map(|i| service(&format!("s{i}"), 1000 + i, PortKind::Tcp))
            .collect(),
    );
    let before = t.update(&m, None).unwrap();
    m.endpoints.get_mut(&key("s7")).unwrap().slices.insert(
        "v4".into(),
        slice(Family::IPv4, &["10.0.0.1", "10.0.0.2", "10.0.0.9"]),
    );
    let changed = [key("s7")].into();
    let after = t.update(&m, Some(&changed)).unwrap();
    let g = |s: &SnapshotSet| group(s, "IPv4,IPv6").clone();
    let (b, a) = (g(&before), g(&after));
    let changes: Vec<String> = b
        .resources(ResourceType::Endpoint)
        .changes_to(a.resources(ResourceType::Endpoint))
        .map(|c| c.name().to_string())
        .collect();
    assert_eq!(changes, ["default/s7:1007"]);
    assert_eq!(
        b.resources(ResourceType::Listener)
            .changes_to(a.resources(ResourceType::Listener))
            .count(),
        0
    );
}

#[test]
fn listener_port_conflicts_are_reported_and_the_first_service_keeps_the_port() {
    let mut t = Translator::new(Family::IPv4);
    let mut m = model(vec![
        service("b", 80, PortKind::Tcp),
        service("a", 80, PortKind::Tcp),
    ]);
    let set = t.update(&m, None).unwrap();
    let g = group(&set, "IPv4,IPv6");
    assert!(g
        .resources(ResourceType::Listener)
        .get("default/a:80:ipv4")
        .is_some());
    assert!(g
        .resources(ResourceType::Listener)
        .get("default/b:80:ipv4")
        .is_none());
    // b's cluster is still served (gRPC clients can use it).
    assert!(g
        .resources(ResourceType::Cluster)
        .get("default/b:80")
        .is_some());
    let conflicts = t.conflicts();
    assert_eq!(conflicts.len(), 1);
    assert!(
        conflicts[0].reason.contains("default/a"),
        "{}",
        conflicts[0].reason
    );
    // UDP on the same port is a different socket: no conflict.
    m.services.insert(key("u"), service("u", 80, PortKind::Udp));
    // When a leaves, b gets the port.
    m.services.remove(&key("a"));
    let set = t.update(&m, None).unwrap();
    let g = group(&set, "IPv4,IPv6");
    assert!(g
        .resources(ResourceType::Listener)
        .get("default/b:80:ipv4")
        .is_some());
    assert!(g
        .resources(ResourceType::Listener)
        .get("default/u:80:ipv4")
        .is_some());
    assert!(t.conflicts().is_empty());
}

#[test]
fn ingress_false_serves_clusters_without_listeners() {
    let mut t = Translator::new(Family::IPv4);
    let mut svc = service("grpc-only", 9000, PortKind::Grpc);
    svc.ingress = false;
    let set = t.update(&model(vec![svc]), None).unwrap();
    let g = group(&set, "IPv4,IPv6");
    assert!(g.resources(ResourceType::Listener).is_empty());
    assert!(g.resources(ResourceType::Route).is_empty());
    assert_eq!(g.resources(ResourceType::Cluster).len(), 1);
}

#[test]
fn proxy_protocol_and_http2_upstreams() {
    let mut t = Translator::new(Family::IPv4);
    let mut svc = service("pp", 443, PortKind::Grpc);
    svc.proxy_protocol = Some(ProxyProtocol::V2);
    let set = t.update(&model(vec![svc]), None).unwrap();
    let r = group(&set, "IPv4")
        .resources(ResourceType::Cluster)
        .get("default/pp:443")
        .unwrap()
        .clone();
    let c =
        envoy_types::pb::envoy::config::cluster::v3::Cluster::decode(&*r.to_any().value).unwrap();
    assert_eq!(
        c.transport_socket.unwrap().name,
        "envoy.transport_sockets.upstream_proxy_protocol"
    );
    assert!(c
        .typed_extension_protocol_options
        .contains_key("envoy.extensions.upstreams.http.v3.HttpProtocolOptions"));
}

#[test]
fn node_groups_come_from_metadata() {
    use envoy_types::pb::google::protobuf::{value, Struct, Value};
    let node = |v: Option<&str>| Node {
        id: "n".into(),
        metadata: v.map(|v| Struct {
            fields: [(
                LISTENER_FAMILIES_KEY.to_string(),
                Value {
                    kind: Some(value::Kind::StringValue(v.into())),
                },
            )]
            .into(),
        }),
        ..Default::default()
    };
    assert_eq!(node_group(&node(None)).unwrap(), "IPv4,IPv6");
    assert_eq!(node_group(&node(Some("IPv6"))).unwrap(), "IPv6");
    assert_eq!(node_group(&node(Some("ipv6,ipv4"))).unwrap(), "IPv4,IPv6");
    assert!(node_group(&node(Some("IPv7")))
        .unwrap_err()
        .contains("IPv7"));
}

#[test]
fn same_input_same_versions_in_another_translator() {
    let m = model(vec![
        service("web", 80, PortKind::Http),
        service("dns", 53, PortKind::Udp),
    ]);
    let a = Translator::new(Family::IPv4).update(&m, None).unwrap();
    let b = Translator::new(Family::IPv4).update(&m, None).unwrap();
    for ty in ResourceType::ALL {
        assert_eq!(
            group(&a, "IPv4,IPv6").resources(ty).version(),
            group(&b, "IPv4,IPv6").resources(ty).version()
        );
    }
}

#[test]
fn grpc_ports_are_served_to_proxyless_clients_in_their_own_group() {
    let mut t = Translator::new(Family::IPv4);
    let mut internal = service("ledger", 7070, PortKind::Grpc);
    internal.ingress = false;
    let set = t
        .update(
            &model(vec![
                service("api", 9090, PortKind::Grpc),
                internal,
                service("web", 80, PortKind::Http),
            ]),
            None,
        )
        .unwrap();
    let grpc = group(&set, PROXYLESS_GROUP);
    let names = |ty| -> Vec<String> {
        grpc.resources(ty)
            .iter()
            .map(|r| r.name().to_string())
            .collect()
    };
    assert_eq!(
        names(ResourceType::Listener),
        [
            "api.default.svc.cluster.local:9090",
            "api.default:9090",
            "ledger.default.svc.cluster.local:7070",
            "ledger.default:7070"
        ]
    );
    assert_eq!(
        names(ResourceType::Cluster),
        ["default/api:9090", "default/ledger:7070"]
    );
    // Envoy groups get no api_listener, and no ingress listener for ingress: false.
    let both = group(&set, "IPv4,IPv6");
    assert!(both
        .resources(ResourceType::Listener)
        .iter()
        .all(|r| !r.name().contains("ledger") && !r.name().contains(".default")));
    // A flip is an EDS push for gRPC clients too.
    let mut m = model(vec![service("api", 9090, PortKind::Grpc)]);
    let mut t = Translator::new(Family::IPv4);
    let before = t.update(&m, None).unwrap();
    m.config_primary_family = Some(Family::IPv6);
    let after = t.update(&m, None).unwrap();
    let (b, a) = (
        group(&before, PROXYLESS_GROUP),
        group(&after, PROXYLESS_GROUP),
    );
    for ty in [
        ResourceType::Cluster,
        ResourceType::Listener,
        ResourceType::Route,
    ] {
        assert_eq!(b.resources(ty).version(), a.resources(ty).version(), "{ty}");
    }
    assert_ne!(
        b.resources(ResourceType::Endpoint).version(),
        a.resources(ResourceType::Endpoint).version()
    );
}

/// Every cluster, listener and route of every group, with the address of its encoded
/// bytes: the same address means the resource was reused, not encoded again.
fn encodings(set: &SnapshotSet) -> Vec<(String, String, usize)> {
    let mut out = Vec::new();
    for (group, snapshot) in set.groups() {
        for ty in [
            ResourceType::Cluster,
            ResourceType::Listener,
            ResourceType::Route,
        ] {
            for r in snapshot.resources(ty).iter() {
                out.push((
                    group.to_owned(),
                    r.name().to_string(),
                    r.encoded_any().as_ptr() as usize,
                ));
            }
        }
    }
    out
}

#[test]
fn a_flip_by_annotation_or_config_map_reencodes_endpoints_only() {
    let mut grpc = service("api", 9090, PortKind::Grpc);
    grpc.failover = true;
    let mut t = Translator::new(Family::IPv4);
    let mut m = model(vec![
        service("web", 80, PortKind::Http),
        service("db", 5432, PortKind::Tcp),
        grpc,
    ]);
    let first = t.update(&m, None).unwrap();
    let reused = encodings(&first);
    assert!(reused.len() > 10);

    // By annotation, on one Service.
    m.services.get_mut(&key("web")).unwrap().primary_family = Some(Family::IPv6);
    let by_annotation = t.update(&m, Some(&[key("web")].into())).unwrap();
    assert_eq!(encodings(&by_annotation), reused);
    assert_eq!(
        addresses(
            &cla(group(&by_annotation, "IPv4,IPv6"), "default/web:80"),
            0
        ),
        ["fd00::1"]
    );

    // By the ConfigMap, for all.
    m.config_primary_family = Some(Family::IPv6);
    let by_config_map = t.update(&m, None).unwrap();
    assert_eq!(encodings(&by_config_map), reused);
    assert_eq!(
        addresses(&cla(group(&by_config_map, "IPv4"), "default/db:5432"), 0),
        ["fd00::1"]
    );

    // A structural change is encoded again.
    m.services.get_mut(&key("db")).unwrap().proxy_protocol = Some(ProxyProtocol::V1);
    let structural = t.update(&m, Some(&[key("db")].into())).unwrap();
    assert_ne!(encodings(&structural), reused);
}

#[test]
fn a_failed_build_commits_nothing_and_the_change_is_retried() {
    let mut t = Translator::new(Family::IPv4);
    let mut m = model(vec![service("web", 80, PortKind::Tcp)]);
    t.update(&m, None).unwrap();
    m.services
        .insert(key("db"), service("db", 5432, PortKind::Tcp));
    m.endpoints.insert(key("db"), dual_endpoints());
    let changed: BTreeSet<ServiceKey> = [key("db")].into();
    t.fail_next_build = true;
    assert!(t.update(&m, Some(&changed)).is_err());
    // The same change again: built this time.
    let set = t.update(&m, Some(&changed)).unwrap();
    let clusters: Vec<String> = group(&set, "IPv4,IPv6")
        .resources(ResourceType::Cluster)
        .iter()
        .map(|r| r.name().to_string())
        .collect();
    assert_eq!(clusters, ["default/db:5432", "default/web:80"]);
    assert_eq!(
        group(&set, "IPv6")
            .resources(ResourceType::Listener)
            .iter()
            .map(|r| r.name().to_string())
            .collect::<Vec<_>>(),
        ["default/db:5432:ipv6", "default/web:80:ipv6"]
    );
}

fn with_hosts(name: &str, listener_port: u16, kind: PortKind, hosts: &[&str]) -> Service {
    let mut s = service(name, 80, kind);
    s.ports[0].listener_port = listener_port;
    s.hosts = hosts.iter().map(|h| h.to_string()).collect();
    s
}

fn names(snapshot: &Snapshot, ty: ResourceType) -> Vec<String> {
    snapshot
        .resources(ty)
        .iter()
        .map(|r| r.name().to_string())
        .collect()
}

fn test_secret(host: &str) -> crate::model::TlsSecret {
    let issued = rcgen::generate_simple_self_signed(vec![host.to_string()]).unwrap();
    crate::model::TlsSecret {
        certificate_chain: issued.cert.pem(),
        private_key: issued.signing_key.serialize_pem(),
    }
}

#[test]
fn services_naming_hosts_share_one_listener_and_one_route_table_per_port() {
    let mut t = Translator::new(Family::IPv4);
    let mut m = model(vec![
        with_hosts("shop", 8080, PortKind::Http, &["shop.example.com"]),
        with_hosts(
            "blog",
            8080,
            PortKind::Http,
            &["blog.example.com", "*.blog.example.com"],
        ),
        with_hosts("api", 8080, PortKind::Grpc, &["api.example.com"]),
        // Wants shop's host too: loses it, keeps its own.
        with_hosts(
            "zz-copy",
            8080,
            PortKind::Http,
            &["shop.example.com", "copy.example.com"],
        ),
    ]);
    let set = t.update(&m, None).unwrap();
    let g = group(&set, "IPv4,IPv6");
    assert_eq!(
        names(g, ResourceType::Listener),
        ["shared-http:8080:ipv4", "shared-http:8080:ipv6"]
    );
    assert_eq!(
        names(group(&set, "IPv6"), ResourceType::Listener),
        ["shared-http:8080:ipv6"]
    );
    let route = RouteConfiguration::decode(
        &*g.resources(ResourceType::Route)
            .get("shared-http:8080")
            .unwrap()
            .to_any()
            .value,
    )
    .unwrap();
    let vhosts: Vec<(String, Vec<String>)> = route
        .virtual_hosts
        .iter()
        .map(|v| (v.name.clone(), v.domains.clone()))
        .collect();
    assert_eq!(
        vhosts,
        [
            (
                "default/api:80".to_string(),
                vec!["api.example.com".to_string()]
            ),
            (
                "default/blog:80".to_string(),
                vec![
                    "blog.example.com".to_string(),
                    "*.blog.example.com".to_string()
                ]
            ),
            (
                "default/shop:80".to_string(),
                vec!["shop.example.com".to_string()]
            ),
            (
                "default/zz-copy:80".to_string(),
                vec!["copy.example.com".to_string()]
            ),
        ]
    );
    let conflicts = t.conflicts();
    assert_eq!(conflicts.len(), 1, "{conflicts:?}");
    assert!(
        conflicts[0].reason.contains("shop.example.com"),
        "{conflicts:?}"
    );
    assert_eq!(&*conflicts[0].key.name, "zz-copy");

    // shop goes away: the copy gets the host, the listener stays as it is.
    let listener = g
        .resources(ResourceType::Listener)
        .get("shared-http:8080:ipv4")
        .unwrap()
        .clone();
    m.services.remove(&key("shop"));
    let set = t.update(&m, Some(&[key("shop")].into())).unwrap();
    let g = group(&set, "IPv4,IPv6");
    assert_eq!(
        g.resources(ResourceType::Listener)
            .get("shared-http:8080:ipv4"),
        Some(&listener)
    );
    let route = RouteConfiguration::decode(
        &*g.resources(ResourceType::Route)
            .get("shared-http:8080")
            .unwrap()
            .to_any()
            .value,
    )
    .unwrap();
    assert!(route
        .virtual_hosts
        .iter()
        .any(|v| v.name == "default/zz-copy:80"
            && v.domains.contains(&"shop.example.com".to_string())));
    assert!(t.conflicts().is_empty());
}

#[test]
fn sni_passthrough_and_termination_share_one_listener_with_secrets_over_sds() {
    let mut t = Translator::new(Family::IPv4);
    let mut pass = with_hosts("pass", 8443, PortKind::Tcp, &["pass.example.com"]);
    pass.tls = Some(TlsMode::Passthrough);
    let mut term = with_hosts("term", 8443, PortKind::Http, &["term.example.com"]);
    let secret_key = ObjectKey::new("default", "term-tls");
    term.tls = Some(TlsMode::Terminate {
        secret: secret_key.clone(),
    });
    let mut orphan = with_hosts("orphan", 8443, PortKind::Http, &["orphan.example.com"]);
    orphan.tls = Some(TlsMode::Terminate {
        secret: ObjectKey::new("default", "missing"),
    });
    let mut m = model(vec![pass, term, orphan]);
    m.secrets.insert(
        secret_key.clone(),
        Arc::new(test_secret("term.example.com")),
    );
    let set = t.update(&m, None).unwrap();
    for families in ["IPv4,IPv6", "IPv4", "IPv6"] {
        let g = group(&set, families);
        assert_eq!(
            names(g, ResourceType::Secret),
            ["default/term-tls"],
            "{families}"
        );
        assert!(names(g, ResourceType::Route).contains(&"default/term:80".to_string()));
    }
    assert!(group(&set, PROXYLESS_GROUP)
        .resources(ResourceType::Secret)
        .is_empty());
    let g = group(&set, "IPv4,IPv6");
    // The terminated Service's hosts go to it; any other Host on its connection is
    // misdirected (421), never routed to it.
    let route = RouteConfiguration::decode(
        &*g.resources(ResourceType::Route)
            .get("default/term:80")
            .unwrap()
            .to_any()
            .value,
    )
    .unwrap();
    let vhosts: Vec<(&[String], bool)> = route
        .virtual_hosts
        .iter()
        .map(|v| {
            let direct = matches!(
                &v.routes[0].action,
                Some(envoy_types::pb::envoy::config::route::v3::route::Action::DirectResponse(d)) if d.status == 421
            );
            (v.domains.as_slice(), direct)
        })
        .collect();
    assert_eq!(
        vhosts,
        [
            (&["term.example.com".to_string()][..], false),
            (&["*".to_string()][..], true)
        ]
    );
    let listener = Listener::decode(
        &*g.resources(ResourceType::Listener)
            .get("shared-tls:8443:ipv4")
            .unwrap()
            .to_any()
            .value,
    )
    .unwrap();
    assert_eq!(
        listener.listener_filters[0].name,
        "envoy.filters.listener.tls_inspector"
    );
    let chains: Vec<(Vec<String>, bool)> = listener
        .filter_chains
        .iter()
        .map(|c| {
            (
                c.filter_chain_match.clone().unwrap().server_names,
                c.transport_socket.is_some(),
            )
        })
        .collect();
    assert_eq!(
        chains,
        [
            (vec!["pass.example.com".to_string()], false),
            (vec!["term.example.com".to_string()], true),
        ],
        "the orphan's host is not served"
    );
    assert!(t
        .conflicts()
        .iter()
        .any(|c| &*c.key.name == "orphan" && c.reason.contains("missing")));

    // A rotated Secret: an SDS push, nothing else.
    let before = encodings(&set);
    let secret_before = g.resources(ResourceType::Secret).version();
    m.secrets
        .insert(secret_key, Arc::new(test_secret("term.example.com")));
    let set = t.update(&m, Some(&[key("term")].into())).unwrap();
    assert_eq!(
        encodings(&set),
        before,
        "no listener, cluster or route changed"
    );
    assert_ne!(
        group(&set, "IPv4,IPv6")
            .resources(ResourceType::Secret)
            .version(),
        secret_before
    );

    // The flip: endpoints only, shared listeners included.
    m.config_primary_family = Some(Family::IPv6);
    let set = t.update(&m, None).unwrap();
    assert_eq!(encodings(&set), before);

    // Termination turned off: reported, no secret read.
    let mut off = Translator::new(Family::IPv4).without_tls_termination();
    let set = off.update(&m, None).unwrap();
    assert!(group(&set, "IPv4,IPv6")
        .resources(ResourceType::Secret)
        .is_empty());
    assert!(off
        .conflicts()
        .iter()
        .any(|c| c.reason.contains("--tls-termination")));
}

#[test]
fn a_port_is_used_the_way_its_first_claimant_uses_it() {
    let mut t = Translator::new(Family::IPv4);
    let mut m = model(vec![
        with_hosts("b-shared", 8080, PortKind::Http, &["b.example.com"]),
        with_hosts("c-shared", 8080, PortKind::Http, &["c.example.com"]),
    ]);
    let mut alone = service("a-alone", 80, PortKind::Tcp);
    alone.ports[0].listener_port = 8080;
    m.endpoints.insert(alone.key.clone(), dual_endpoints());
    m.services.insert(alone.key.clone(), alone);
    let set = t.update(&m, None).unwrap();
    assert_eq!(
        names(group(&set, "IPv4"), ResourceType::Listener),
        ["default/a-alone:80:ipv4"]
    );
    assert_eq!(t.conflicts().len(), 2);
    // The exclusive Service goes: the port becomes shared by Host.
    m.services.remove(&key("a-alone"));
    let set = t.update(&m, Some(&[key("a-alone")].into())).unwrap();
    assert_eq!(
        names(group(&set, "IPv4"), ResourceType::Listener),
        ["shared-http:8080:ipv4"]
    );
    assert!(t.conflicts().is_empty());
}

#[test]
fn names_are_built_as_formatting_would() {
    let key = ServiceKey::new("shop", "web");
    for number in [0u16, 7, 10, 80, 443, 9999, 10000, 65535] {
        let port = ServicePort {
            name: "http".into(),
            port: number,
            kind: PortKind::Http,
            listener_port: 8080,
        };
        assert_eq!(cluster_name(&key, &port), format!("shop/web:{number}"));
        assert_eq!(
            listener_name(&key, &port, Family::IPv6),
            format!("shop/web:{number}:ipv6")
        );
    }
}

#[test]
fn merging_many_changes_at_once_matches_applying_them_one_by_one() {
    let base: BTreeMap<u32, u32> = (0..20).map(|k| (k * 2, k)).collect();
    let changes: Vec<(u32, Option<u32>)> = vec![
        (0, None),
        (1, Some(100)),
        (4, Some(104)),
        (6, None),
        (7, Some(107)),
        (38, None),
        (50, Some(150)),
    ];
    let mut one_by_one = base.clone();
    for (k, v) in changes.clone() {
        match v {
            Some(v) => one_by_one.insert(k, v),
            None => one_by_one.remove(&k),
        };
    }
    let mut merged = base.clone();
    merge_into(&mut merged, changes.clone());
    assert_eq!(merged, one_by_one);
    // Few changes to a large map take the one-by-one path: the same result.
    let mut large: BTreeMap<u32, u32> = (0..1000).map(|k| (k * 2, k)).collect();
    let mut expected = large.clone();
    merge_into(&mut large, changes.clone());
    for (k, v) in changes {
        match v {
            Some(v) => expected.insert(k, v),
            None => expected.remove(&k),
        };
    }
    assert_eq!(large, expected);
    let keys: Vec<&u32> = union([1, 3, 5].iter(), [2, 3, 6].iter()).collect();
    assert_eq!(keys, [&1, &2, &3, &5, &6]);
}

/// Joining or leaving a shared port retranslates the other claimants only when the first
/// claimant (who decides how the port is used) changes; the result is the same either way.
#[test]
fn only_a_new_first_claimant_retranslates_a_ports_other_claimants() {
    use std::collections::BTreeSet;
    let mut t = Translator::new(Family::IPv4);
    let mut m = model(vec![
        with_hosts("b", 8080, PortKind::Http, &["b.example.com"]),
        with_hosts("c", 8080, PortKind::Http, &["c.example.com"]),
    ]);
    t.update(&m, None).unwrap();
    let dirty = |t: &Translator, m: &Model, changed: &[&str]| -> Vec<String> {
        let changed: BTreeSet<ServiceKey> = changed.iter().map(|n| key(n)).collect();
        t.state
            .plan(m, Some(&changed), Family::IPv4)
            .dirty
            .iter()
            .map(|k| k.name.to_string())
            .collect()
    };
    // "d" joins after the first: only "d".
    let d = with_hosts("d", 8080, PortKind::Http, &["d.example.com"]);
    m.endpoints.insert(d.key.clone(), dual_endpoints());
    m.services.insert(d.key.clone(), d);
    assert_eq!(dirty(&t, &m, &["d"]), ["d"]);
    t.update(&m, Some(&[key("d")].into())).unwrap();
    // "a" joins first, exclusively: everyone loses the port.
    let mut a = service("a", 80, PortKind::Tcp);
    a.ports[0].listener_port = 8080;
    m.endpoints.insert(a.key.clone(), dual_endpoints());
    m.services.insert(a.key.clone(), a);
    assert_eq!(dirty(&t, &m, &["a"]), ["a", "b", "c", "d"]);
    t.update(&m, Some(&[key("a")].into())).unwrap();
    assert_eq!(t.conflicts().len(), 3);
    // "c" leaves: only "c"; "a" leaves: the others get the port back.
    m.services.remove(&key("c"));
    assert_eq!(dirty(&t, &m, &["c"]), ["c"]);
    t.update(&m, Some(&[key("c")].into())).unwrap();
    m.services.remove(&key("a"));
    assert_eq!(dirty(&t, &m, &["a"]), ["a", "b", "d"]);
    let set = t.update(&m, Some(&[key("a")].into())).unwrap();
    assert!(t.conflicts().is_empty(), "{:?}", t.conflicts());
    assert_eq!(
        names(group(&set, "IPv4"), ResourceType::Listener),
        ["shared-http:8080:ipv4"]
    );
    // The same as a translator that sees only the end state.
    let fresh = Translator::new(Family::IPv4).update(&m, None).unwrap();
    let versions = |set: &SnapshotSet| -> Vec<(String, String, String)> {
        set.groups()
            .flat_map(|(group, snapshot)| {
                ResourceType::ALL.into_iter().flat_map(move |ty| {
                    snapshot.resources(ty).iter().map(move |r| {
                        (
                            group.to_owned(),
                            r.name().to_string(),
                            r.version().to_string(),
                        )
                    })
                })
            })
            .collect()
    };
    assert_eq!(versions(&set), versions(&fresh));
}

#[test]
fn a_terminating_service_that_loses_every_host_is_reported_and_blocks_nothing() {
    // Two Services terminate TLS for the same host on one port: the first (by
    // namespace/name) gets it; the second has no filter chain. Its route table and
    // Secret stay with the port's listeners (no chain uses them), so the snapshots stay
    // consistent and every other change is still published.
    let mut t = Translator::new(Family::IPv4);
    let mut services = vec![service("other", 80, PortKind::Http)];
    let mut secrets = Vec::new();
    for name in ["a-first", "b-second"] {
        let mut s = with_hosts(name, 8443, PortKind::Http, &["shop.example.com"]);
        let secret = ObjectKey::new("default", format!("{name}-tls"));
        s.tls = Some(TlsMode::Terminate {
            secret: secret.clone(),
        });
        secrets.push(secret);
        services.push(s);
    }
    let mut m = model(services);
    for secret in secrets {
        m.secrets
            .insert(secret, Arc::new(test_secret("shop.example.com")));
    }
    let set = t
        .update(&m, None)
        .expect("the conflict does not fail the build");
    let conflicts = t.conflicts();
    assert_eq!(conflicts.len(), 1, "{conflicts:?}");
    assert_eq!(&*conflicts[0].key.name, "b-second");
    assert!(
        conflicts[0].reason.contains("shop.example.com"),
        "{conflicts:?}"
    );
    for families in ["IPv4,IPv6", "IPv4", "IPv6"] {
        let g = group(&set, families);
        let listener = Listener::decode(
            &*g.resources(ResourceType::Listener)
                .get("shared-tls:8443:ipv4")
                .or_else(|| {
                    g.resources(ResourceType::Listener)
                        .get("shared-tls:8443:ipv6")
                })
                .unwrap()
                .to_any()
                .value,
        )
        .unwrap();
        assert_eq!(
            listener.filter_chains.len(),
            1,
            "{families}: one chain, the winner's"
        );
        assert!(
            names(g, ResourceType::Listener).contains(&"default/other:80:ipv4".to_string())
                || names(g, ResourceType::Listener).contains(&"default/other:80:ipv6".to_string())
        );
    }
    // A later change elsewhere is published.
    let mut m2 = m.clone();
    m2.services.remove(&ObjectKey::new("default", "other"));
    let set = t.update(&m2, None).expect("later changes are published");
    assert!(!names(group(&set, "IPv4,IPv6"), ResourceType::Listener)
        .contains(&"default/other:80:ipv4".to_string()));
    // When the winner goes, the other gets the host.
    m2.services.remove(&ObjectKey::new("default", "a-first"));
    t.update(&m2, None).unwrap();
    assert!(t.conflicts().is_empty(), "{:?}", t.conflicts());
}
