//! The product's proof across single-family hosts, in Linux network namespaces this test
//! creates (`common::netns`: IPv6-only and IPv4-only clients and backends, the ingress
//! host with both, running dualstack-xds and a real Envoy).
//!
//! The xDS server's socket and Envoy live in `ing`; clients and backends are sockets made
//! inside their namespaces. Needs root (CI runs as root).

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use common::netns::*;
use common::*;
use dualstack_xds::model::Family;
use dualstack_xds::server::{ClientRegistry, XdsServer};
use dualstack_xds::snapshot::SnapshotCache;
use dualstack_xds::translate::node_group;

/// Listener ports on the ingress, and backend ports.
const ECHO: u16 = 10007;
const PINNED: u16 = 10008;
const PROXY: u16 = 10009;
const FAILOVER: u16 = 10010;
const UDP: u16 = 10053;
const WEB: u16 = 10080;
const B_ECHO: u16 = 7007;
const B_PROXY: u16 = 7009;
const B_UDP: u16 = 7053;
const B_WEB: u16 = 7080;

fn start_backends(hosts: &Hosts) {
    for (role, addr, tag) in [("b4", "0.0.0.0", "b4"), ("b6", "::", "b6")] {
        let ns = hosts.ns(role);
        let tag: &'static str = tag;
        serve_echo(
            bind_tcp(&ns, sa(addr, B_ECHO)),
            Box::leak(format!("{tag}:").into_boxed_str()),
        );
        serve_udp_echo(
            bind_udp(&ns, sa(addr, B_UDP)),
            Box::leak(format!("{tag}:").into_boxed_str()),
        );
        serve_http(
            bind_tcp(&ns, sa(addr, B_WEB)),
            Box::leak(format!("{tag} xff=").into_boxed_str()),
        );
        serve_proxy_reader(
            bind_tcp(&ns, sa(addr, B_PROXY)),
            Box::leak(format!("{tag} ").into_boxed_str()),
        );
    }
}

fn write_manifests(dir: &Path, primary: &str) {
    let service = |name: &str, port: u16, listener: u16| {
        manifests::service("t", name)
            .annotate(
                "dualstack-xds.io/listener-ports",
                &format!("{port}={listener}"),
            )
            .port("p", port)
    };
    let slice = |name: &str, service: &str, family: &str, addr: &str, port: u16, udp: bool| {
        let slice = manifests::slice("t", name, service, family);
        let slice = if udp {
            slice.udp_port("p", port)
        } else {
            slice.port("p", port)
        };
        slice.endpoint(addr)
    };
    let mut objects = vec![
        manifests::config_map(primary),
        service("echo", 7, ECHO),
        service("pinned", 8, PINNED).annotate("dualstack-xds.io/primary-family", "IPv6"),
        service("pp", 9, PROXY).annotate("dualstack-xds.io/proxy-protocol", "v1"),
        service("fo", 10, FAILOVER).annotate("dualstack-xds.io/failover", "true"),
        manifests::service("t", "udp")
            .annotate("dualstack-xds.io/listener-ports", &format!("53={UDP}"))
            .udp_port("p", 53),
        manifests::service("t", "web")
            .annotate("dualstack-xds.io/listener-ports", &format!("80={WEB}"))
            .app_port("p", 80, "http"),
    ];
    for (svc, port, udp) in [
        ("echo", B_ECHO, false),
        ("pinned", B_ECHO, false),
        ("pp", B_PROXY, false),
        ("udp", B_UDP, true),
        ("web", B_WEB, false),
    ] {
        objects.push(slice(&format!("{svc}-4"), svc, "IPv4", B4, port, udp));
        objects.push(slice(&format!("{svc}-6"), svc, "IPv6", B6, port, udp));
    }
    // The failover Service has endpoints only in IPv6.
    objects.push(slice("fo-6", "fo", "IPv6", B6, B_ECHO, false));
    std::fs::write(dir.join("all.yaml"), manifests::yaml(&objects)).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nat64_and_nat46_across_single_family_hosts() {
    let hosts = Hosts::create();
    let (ing, c4, c6) = (hosts.ns("ing"), hosts.ns("c4"), hosts.ns("c6"));
    start_backends(&hosts);

    // The control plane and Envoy on the ingress host.
    let xds = bind_tcp(&ing, sa("127.0.0.1", 0));
    let xds_addr = xds.local_addr().unwrap();
    let cache = SnapshotCache::new();
    let server = XdsServer::new(cache.clone(), Arc::new(node_group), ClientRegistry::new());
    tokio::spawn(server.serve(xds, std::future::pending()));
    let dir = tempfile::tempdir().unwrap();
    write_manifests(dir.path(), "IPv4");
    let mut manifests = ManifestPublisher::new(dir.path(), Family::IPv6, &cache);
    let envoy = Envoy::start_in_netns(&ing, "envoy/ads-sotw.yaml", xds_addr, "ingress").await;
    envoy
        .wait_stat("listener_manager.lds.update_success", 1)
        .await;

    // NAT64: the IPv6-only client reaches the IPv4-only backend through the ingress...
    let reply = eventually("NAT64 through the ingress", Duration::from_secs(30), || {
        tcp_from(&c6, sa(ING_C6, ECHO), "hello")
    })
    .await;
    assert_eq!(reply, "b4:hello");
    // ...and cannot reach it directly.
    assert_eq!(tcp_from(&c6, sa(B4, B_ECHO), "direct").await, None);
    assert_eq!(tcp_from(&c4, sa(B6, B_ECHO), "direct").await, None);

    // The per-Service annotation beats the ConfigMap: "pinned" is IPv6-primary.
    assert_eq!(
        tcp_from(&c4, sa(ING_C4, PINNED), "x").await.as_deref(),
        Some("b6:x")
    );
    // Failover: no IPv4 endpoint, so the IPv6 one serves.
    let fo = eventually("failover", Duration::from_secs(10), || {
        tcp_from(&c4, sa(ING_C4, FAILOVER), "f")
    })
    .await;
    assert_eq!(fo, "b6:f");
    // UDP across families.
    let udp = eventually("UDP NAT64", Duration::from_secs(10), || {
        udp_from(&c6, sa(ING_C6, UDP), "dns?")
    })
    .await;
    assert_eq!(udp, "b4:dns?");
    // The backend gets a PROXY header carrying the IPv6 client's address...
    let pp = tcp_from(&c6, sa(ING_C6, PROXY), "").await;
    let pp = match pp {
        Some(p) => p,
        None => tcp_from(&c6, sa(ING_C6, PROXY), " ")
            .await
            .unwrap_or_default(),
    };
    assert!(
        pp.starts_with(&format!("b4 PROXY TCP6 {C6} {ING_C6} ")),
        "{pp}"
    );
    // ...and an HTTP backend sees it in X-Forwarded-For.
    assert_eq!(
        http_from(&c6, sa(ING_C6, WEB)).await.as_deref(),
        Some(format!("b4 xff={C6}").as_str())
    );

    // A connection opened before the flip, and continuous load during it.
    let mut long_lived = LongLived::open(&c6, sa(ING_C6, ECHO)).await;
    assert_eq!(long_lived.roundtrip("before"), "b4:before");
    let load = Load::start(&c6, sa(ING_C6, ECHO), "load");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let cds = envoy.stat("cluster_manager.cds.update_success").await;
    write_manifests(dir.path(), "IPv6");
    manifests.publish();
    // NAT46: the IPv4-only client now reaches the IPv6-only backend.
    let reply = eventually("NAT46 after the flip", Duration::from_secs(30), || async {
        tcp_from(&c4, sa(ING_C4, ECHO), "v4 client")
            .await
            .filter(|r| r.starts_with("b6:"))
    })
    .await;
    assert_eq!(reply, "b6:v4 client");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (sent, failed, seen) = load.stop().await;
    assert_eq!(failed, 0, "requests failed during the flip (of {sent})");
    assert_eq!(
        seen,
        BTreeSet::from(["b4:load".to_string(), "b6:load".to_string()]),
        "the load crossed the flip"
    );
    // The old connection keeps working, still to its original backend.
    assert_eq!(long_lived.roundtrip("after"), "b4:after");
    assert_eq!(
        envoy.stat("cluster_manager.cds.update_success").await,
        cds,
        "the flip was EDS only"
    );
    assert_eq!(
        udp_from(&c4, sa(ING_C4, UDP), "q").await.as_deref(),
        Some("b6:q")
    );
    assert_eq!(
        envoy.stat("listener_manager.lds.update_rejected").await,
        0,
        "{}",
        envoy.log()
    );
    drop(envoy);
    drop(hosts);
}
