//! Rendering, on the resources the server's own pipeline makes of manifests: what nginx
//! gets is what an Envoy node of the same families gets.

use std::path::Path;

use super::*;
use crate::model::Family;
use crate::pipeline::{Pipeline, PipelineMetrics};
use crate::snapshot::SnapshotCache;
use crate::sources::debounce::Instant;
use crate::sources::manifest_watch::ManifestDir;
use crate::sources::manifests::Filter;
use crate::sources::{Sink, SourceEvent};
use envoy_types::pb::envoy::config::core::v3::address;
use envoy_types::pb::envoy::config::endpoint::v3::lb_endpoint;

fn filter() -> Filter {
    Filter {
        service_selector: "dualstack-xds.io/expose=true".parse().unwrap(),
        namespaces: vec![],
        config_map: crate::model::ObjectKey::new("dualstack-xds", "dualstack-xds"),
    }
}

/// The resources an Envoy node binding `families` gets for the manifests in `dir`.
fn resources_of(dir: &Path, families: &str, primary: Family) -> Resources {
    let mut manifests = ManifestDir::load(dir, filter()).unwrap();
    let cache = SnapshotCache::new();
    let mut pipeline = Pipeline::new(primary, cache.clone(), PipelineMetrics::default());
    pipeline.send(SourceEvent::Changes {
        changes: manifests.take_changes(),
        since: Instant::now(),
    });
    pipeline.send(SourceEvent::Synced);
    Resources::from_snapshot(cache.current().unwrap().get(families).unwrap())
}

fn examples(primary: Family) -> Rendered {
    render(&resources_of(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("examples")
            .as_path(),
        "IPv4,IPv6",
        primary,
    ))
}

fn yaml(text: &str, families: &str) -> Rendered {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("test.yaml"), text).unwrap();
    // The examples' ConfigMap pins IPv4; these tests set their own modes.
    render(&resources_of(dir.path(), families, Family::IPv4))
}

/// The block of `text` that starts at the line containing `start`, to its closing brace.
fn block<'a>(text: &'a str, start: &str) -> &'a str {
    let at = text
        .find(start)
        .unwrap_or_else(|| panic!("no {start:?} in\n{text}"));
    let rest = &text[at..];
    let end = rest.find("\n    }\n").map_or(rest.len(), |e| e + 7);
    &rest[..end]
}

const SERVICE: &str = "apiVersion: v1
kind: Service
metadata:
  name: NAME
  namespace: t
  labels: {dualstack-xds.io/expose: \"true\"}
  annotations: {ANNOTATIONS}
spec:
  ports: [{name: p, port: PORT, protocol: PROTO APPPROTO}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: NAME-v4, namespace: t, labels: {kubernetes.io/service-name: NAME}}
addressType: IPv4
ports: [{name: p, port: 8080, protocol: PROTO}]
endpoints:
- {addresses: [10.0.0.1], conditions: {ready: true}}
- {addresses: [10.0.0.2], conditions: {ready: false, serving: true, terminating: true}}
- {addresses: [10.0.0.3], conditions: {ready: false, serving: false}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: NAME-v6, namespace: t, labels: {kubernetes.io/service-name: NAME}}
addressType: IPv6
ports: [{name: p, port: 8080, protocol: PROTO}]
endpoints:
- {addresses: [\"fd00::1\"], conditions: {ready: true}}
";

fn service(name: &str, port: u16, proto: &str, app_protocol: &str, annotations: &str) -> String {
    SERVICE
        .replace(
            "APPPROTO",
            &if app_protocol.is_empty() {
                String::new()
            } else {
                format!(", appProtocol: {app_protocol}")
            },
        )
        .replace("NAME", name)
        .replace("PORT", &port.to_string())
        .replace("PROTO", proto)
        .replace("ANNOTATIONS", annotations)
}

#[test]
fn a_tcp_port_listens_on_both_families_and_forwards_to_the_primary_family_only() {
    let r = yaml(&service("db", 5432, "TCP", "", ""), "IPv4,IPv6");
    assert!(r.refused.is_empty(), "{:?}", r.refused);
    let up = ident("dsx", "t/db:5432");
    assert_eq!(
        block(&r.stream, &format!("upstream {up}")),
        format!("upstream {up} {{\n        server 10.0.0.1:8080;\n    }}\n")
    );
    let v4 = block(&r.stream, "# t/db:5432:ipv4");
    assert!(v4.contains("listen 0.0.0.0:5432;\n"), "{v4}");
    assert!(v4.contains(&format!("proxy_pass {up};")), "{v4}");
    let v6 = block(&r.stream, "# t/db:5432:ipv6");
    assert!(v6.contains("listen [::]:5432 ipv6only=on;\n"), "{v6}");
    assert!(!r.stream.contains("proxy_protocol"), "{}", r.stream);
    assert!(r.http.is_empty());
}

#[test]
fn a_flip_changes_only_the_upstream_servers() {
    let ipv4 = examples(Family::IPv4);
    let dir = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("examples")).unwrap()
    {
        let entry = entry.unwrap();
        let text = std::fs::read_to_string(entry.path()).unwrap();
        std::fs::write(
            dir.path().join(entry.file_name()),
            text.replace("primaryFamily: IPv4", "primaryFamily: IPv6"),
        )
        .unwrap();
    }
    let ipv6 = render(&resources_of(dir.path(), "IPv4,IPv6", Family::IPv4));
    let web = ident("dsx", "shop/web:80");
    assert!(block(&ipv4.http, &format!("upstream {web}")).contains("server 10.244."));
    let flipped = block(&ipv6.http, &format!("upstream {web}"));
    assert!(flipped.contains("server [fd00:"), "{flipped}");
    assert!(!flipped.contains("10.244."), "{flipped}");
    // The listeners are the same text.
    let servers = |text: &str| -> Vec<String> {
        text.split("\n    }\n")
            .filter(|b| b.contains("server {"))
            .map(str::to_owned)
            .collect()
    };
    assert_eq!(servers(&ipv4.stream), servers(&ipv6.stream));
    assert_eq!(servers(&ipv4.http), servers(&ipv6.http));
}

#[test]
fn a_single_family_node_gets_listeners_of_its_family_only() {
    let r = yaml(&service("db", 5432, "TCP", "", ""), "IPv6");
    assert!(r.stream.contains("listen [::]:5432 ipv6only=on;"));
    assert!(!r.stream.contains("0.0.0.0"), "{}", r.stream);
}

#[test]
fn draining_and_unready_endpoints_are_left_out_and_failover_is_backup() {
    let r = yaml(
        &service(
            "api",
            9000,
            "TCP",
            "",
            "dualstack-xds.io/failover: \"true\"",
        ),
        "IPv4,IPv6",
    );
    let up = ident("dsx", "t/api:9000");
    assert_eq!(
        block(&r.stream, &format!("upstream {up}")),
        format!(
            "upstream {up} {{\n        server 10.0.0.1:8080;\n        server [fd00::1]:8080 backup;\n    }}\n"
        )
    );
}

#[test]
fn udp_ports_listen_udp() {
    let r = yaml(&service("dns", 53, "UDP", "", ""), "IPv4,IPv6");
    assert!(r.refused.is_empty(), "{:?}", r.refused);
    let v4 = block(&r.stream, "# t/dns:53:ipv4");
    assert!(v4.contains("listen 0.0.0.0:53 udp reuseport;"), "{v4}");
    assert!(v4.contains("proxy_timeout"), "{v4}");
    assert!(r
        .stream
        .contains("listen [::]:53 udp reuseport ipv6only=on;"));
}

#[test]
fn proxy_protocol_v1_is_sent_and_v2_is_refused_with_the_reason() {
    let r = yaml(
        &format!(
            "{}---\n{}",
            service("v1", 5432, "TCP", "", "dualstack-xds.io/proxy-protocol: v1"),
            service("v2", 5433, "TCP", "", "dualstack-xds.io/proxy-protocol: v2")
        ),
        "IPv4,IPv6",
    );
    assert!(block(&r.stream, "# t/v1:5432:ipv4").contains("proxy_protocol on;"));
    assert!(!r.stream.contains("5433"), "{}", r.stream);
    assert_eq!(r.refused.len(), 1, "{:?}", r.refused);
    assert_eq!(r.refused[0].ty, ResourceType::Cluster);
    assert_eq!(r.refused[0].name, "t/v2:5433");
    assert!(r.refused[0].reason.contains("PROXY protocol v2"));
}

#[test]
fn http_ports_forward_the_client_address_and_grpc_ports_use_grpc_pass() {
    let r = yaml(
        &format!(
            "{}---\n{}",
            service("web", 80, "TCP", "http", ""),
            service("api", 9090, "TCP", "grpc", "")
        ),
        "IPv4,IPv6",
    );
    assert!(r.refused.is_empty(), "{:?}", r.refused);
    assert!(r.stream.is_empty(), "{}", r.stream);
    let web = block(&r.http, "# t/web:80:ipv4, t/web:80:ipv6");
    assert!(web.contains("listen 0.0.0.0:80 default_server;"), "{web}");
    assert!(
        web.contains("listen [::]:80 default_server ipv6only=on;"),
        "{web}"
    );
    assert!(web.contains(&format!("proxy_pass http://{};", ident("dsx", "t/web:80"))));
    assert!(web.contains("proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;"));
    let api = block(&r.http, "# t/api:9090:ipv4, t/api:9090:ipv6");
    assert!(
        api.contains("listen 0.0.0.0:9090 http2 default_server;"),
        "{api}"
    );
    assert!(api.contains(&format!("grpc_pass grpc://{};", ident("dsx", "t/api:9090"))));
}

#[test]
fn services_sharing_a_port_by_host_get_a_server_each_and_unknown_hosts_404() {
    let r = yaml(
        &format!(
            "{}---\n{}",
            service(
                "a",
                80,
                "TCP",
                "http",
                "dualstack-xds.io/hosts: a.example.com"
            ),
            service(
                "b",
                80,
                "TCP",
                "http",
                "dualstack-xds.io/hosts: \"*.b.example.com\""
            )
        ),
        "IPv4,IPv6",
    );
    assert!(r.refused.is_empty(), "{:?}", r.refused);
    assert!(r.http.contains("server_name a.example.com;"), "{}", r.http);
    assert!(
        r.http.contains("server_name *.b.example.com;"),
        "{}",
        r.http
    );
    let unknown = block(&r.http, ": unknown hosts");
    assert!(unknown.contains("default_server"), "{unknown}");
    assert!(unknown.contains("return 404;"), "{unknown}");
}

#[test]
fn the_examples_render_and_what_nginx_cant_express_is_refused_by_name() {
    let r = examples(Family::IPv4);
    // TLS passthrough by server name: a map, unknown names closed.
    assert!(
        r.stream.contains("map $ssl_preread_server_name"),
        "{}",
        r.stream
    );
    assert!(
        r.stream.contains("vault.example.com dsx_shop_vault_443_"),
        "{}",
        r.stream
    );
    assert!(r.stream.contains("default dsx_closed;"));
    assert!(r.stream.contains("ssl_preread on;"));
    let refused: Vec<(ResourceType, &str)> =
        r.refused.iter().map(|r| (r.ty, r.name.as_str())).collect();
    assert_eq!(
        refused,
        [
            (ResourceType::Cluster, "shop/legacy-db:5432"),
            (ResourceType::Listener, "shared-tls:8443:ipv4"),
            (ResourceType::Listener, "shared-tls:8443:ipv4"),
            (ResourceType::Listener, "shared-tls:8443:ipv6"),
            (ResourceType::Listener, "shared-tls:8443:ipv6"),
        ]
    );
    assert!(r.refused[1].reason.contains("TLS termination"));
    // Deterministic.
    assert_eq!(r, examples(Family::IPv4));
}

#[test]
fn what_has_not_arrived_is_missing_and_left_out() {
    let mut resources = examples(Family::IPv4);
    resources.refused.clear();
    let mut held = resources_of(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("examples")
            .as_path(),
        "IPv4,IPv6",
        Family::IPv4,
    );
    held.endpoints.remove("infra/dns:53");
    held.routes.remove("shop/web:80");
    let r = render(&held);
    assert!(r
        .missing
        .contains(&(ResourceType::Endpoint, "infra/dns:53".to_owned())));
    assert!(r
        .missing
        .contains(&(ResourceType::Route, "shop/web:80".to_owned())));
    assert!(!r.stream.contains(":5353"), "{}", r.stream);
    assert!(!r.http.contains(":8080"), "{}", r.http);
    let refs = references(&held);
    assert!(refs[&ResourceType::Endpoint].contains("infra/dns:53"));
    assert!(refs[&ResourceType::Route].contains("shop/web:80"));
}

#[test]
fn text_from_the_control_plane_never_reaches_the_configuration_unchecked() {
    use envoy_types::pb::envoy::config::route::v3::VirtualHost;
    let mut held = resources_of(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("examples")
            .as_path(),
        "IPv4,IPv6",
        Family::IPv4,
    );
    // A host that would end the directive and add one, an endpoint address that would
    // too, and a name with a newline.
    let route = held.routes.get_mut("shop/web:80").unwrap();
    let mut evil = route.virtual_hosts[0].clone();
    evil.name = "evil\n    include /etc/passwd;".into();
    evil.domains = vec![
        "a.example.com; include /etc/passwd".into(),
        "ok.example.com".into(),
    ];
    route.virtual_hosts.push(VirtualHost { ..evil });
    let cla = held.endpoints.get_mut("infra/dns:53").unwrap();
    if let Some(lb_endpoint::HostIdentifier::Endpoint(e)) =
        &mut cla.endpoints[0].lb_endpoints[0].host_identifier
    {
        if let Some(address::Address::SocketAddress(sa)) =
            e.address.as_mut().and_then(|a| a.address.as_mut())
        {
            sa.address = "10.0.0.1:53; }\n}\ninclude /etc/passwd;".into();
        }
    }
    let r = render(&held);
    // Only ever inside a one-line comment.
    for text in [&r.stream, &r.http] {
        for line in text.lines() {
            assert!(
                line.trim_start().starts_with('#') || !line.contains("/etc/passwd"),
                "{text}"
            );
        }
    }
    assert!(r.http.contains("server_name ok.example.com;"), "{}", r.http);
    let reasons: Vec<&str> = r.refused.iter().map(|r| r.reason.as_str()).collect();
    assert!(
        reasons
            .iter()
            .any(|r| r.contains("is not a host name nginx can match")),
        "{reasons:?}"
    );
    assert!(
        reasons.iter().any(|r| r.contains("is not an IP address")),
        "{reasons:?}"
    );
    assert!(host_ok("*.example.com") && host_ok("a-b.example.com"));
    assert!(!host_ok("*") && !host_ok("~^regex$") && !host_ok("a b") && !host_ok(""));
}
