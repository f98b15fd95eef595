//! Translation proven with real Envoy on loopback: listeners on both families, endpoints of
//! the primary family, a flip as an EDS push only, UDP and HTTP, listener families per node.
//! (The proof across single-family hosts, in network namespaces, is tests/netns.rs.)

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use dualstack_xds::model::Family;
use dualstack_xds::translate::node_group;

struct Backends {
    tcp4: SocketAddr,
    tcp6: SocketAddr,
    udp4: SocketAddr,
    udp6: SocketAddr,
    http4: SocketAddr,
    http6: SocketAddr,
}

struct Ports {
    tcp: u16,
    udp: u16,
    http: u16,
}

fn write_manifests(dir: &Path, b: &Backends, p: &Ports, primary: &str) {
    let service = |name: &str, port: u16, listener: u16| {
        manifests::service("test", name).annotate(
            "dualstack-xds.io/listener-ports",
            &format!("{port}={listener}"),
        )
    };
    let slice = |name: &str, service: &str, family: &str, ip: &str| {
        manifests::slice("test", name, service, family).endpoint(ip)
    };
    let objects = [
        manifests::config_map(primary),
        service("echo", 7, p.tcp).port("echo", 7),
        service("uecho", 7, p.udp).udp_port("uecho", 7),
        service("web", 80, p.http).app_port("http", 80, "http"),
        slice("echo-4", "echo", "IPv4", "127.0.0.1").port("echo", b.tcp4.port()),
        slice("echo-6", "echo", "IPv6", "::1").port("echo", b.tcp6.port()),
        slice("uecho-4", "uecho", "IPv4", "127.0.0.1").udp_port("uecho", b.udp4.port()),
        slice("uecho-6", "uecho", "IPv6", "::1").udp_port("uecho", b.udp6.port()),
        slice("web-4", "web", "IPv4", "127.0.0.1").port("http", b.http4.port()),
        slice("web-6", "web", "IPv6", "::1").port("http", b.http6.port()),
    ];
    std::fs::write(dir.join("services.yaml"), manifests::yaml(&objects)).unwrap();
}

fn addr(ip: &str, port: u16) -> SocketAddr {
    SocketAddr::new(ip.parse().unwrap(), port)
}

/// Backends of both families on loopback, free listener ports, and their manifests.
async fn setup(primary: &str) -> (Backends, Ports, tempfile::TempDir) {
    let backends = Backends {
        tcp4: echo_server_on("127.0.0.1:0", "tcp4:").await,
        tcp6: echo_server_on("[::1]:0", "tcp6:").await,
        udp4: udp_echo_on("127.0.0.1:0", "udp4:").await,
        udp6: udp_echo_on("[::1]:0", "udp6:").await,
        http4: http_server_on("127.0.0.1:0", "http4 xff=").await,
        http6: http_server_on("[::1]:0", "http6 xff=").await,
    };
    let ports = Ports {
        tcp: free_port(),
        udp: free_port(),
        http: free_port(),
    };
    let dir = tempfile::tempdir().unwrap();
    write_manifests(dir.path(), &backends, &ports, primary);
    (backends, ports, dir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nat64_then_nat46_on_loopback_with_a_flip_that_is_an_eds_push() {
    let (backends, ports, dir) = setup("IPv4").await;
    let server = start_server_with(Arc::new(node_group)).await;
    let mut manifests = ManifestPublisher::new(dir.path(), Family::IPv6, &server.cache);
    let envoy = Envoy::start("envoy/ads-sotw.yaml", server.addr, "dual").await;
    envoy
        .wait_stat("listener_manager.lds.update_success", 1)
        .await;

    // NAT64: IPv6 clients reach the IPv4 backends (the ConfigMap's IPv4 beats the flag).
    let tcp6 = eventually(
        "TCP over the IPv6 listener",
        Duration::from_secs(20),
        || tcp_roundtrip(addr("::1", ports.tcp), "hi"),
    )
    .await;
    assert_eq!(tcp6, "tcp4:hi");
    assert_eq!(
        tcp_roundtrip(addr("127.0.0.1", ports.tcp), "hi")
            .await
            .as_deref(),
        Some("tcp4:hi")
    );
    let udp = eventually(
        "UDP over the IPv6 listener",
        Duration::from_secs(20),
        || udp_roundtrip(addr("::1", ports.udp), "ping"),
    )
    .await;
    assert_eq!(udp, "udp4:ping");
    let http = eventually(
        "HTTP over the IPv6 listener",
        Duration::from_secs(20),
        || http_get(addr("::1", ports.http)),
    )
    .await;
    // Envoy writes its own host address into X-Forwarded-For for loopback clients; the
    // real client address is checked across hosts in tests/netns.rs.
    assert!(
        http.starts_with("http4 xff=") && http.len() > "http4 xff=".len(),
        "{http}"
    );

    // Flip the ConfigMap: NAT46, as an EDS push only.
    let cds = envoy.stat("cluster_manager.cds.update_success").await;
    let lds = envoy.stat("listener_manager.lds.update_success").await;
    let eds = envoy.stat("cluster.test/echo_7.update_success").await;
    assert!(eds >= 1, "EDS stat name");
    write_manifests(dir.path(), &backends, &ports, "IPv6");
    manifests.publish();
    let tcp4 = eventually(
        "TCP to the IPv6 backend",
        Duration::from_secs(20),
        || async {
            tcp_roundtrip(addr("127.0.0.1", ports.tcp), "hi")
                .await
                .filter(|r| r == "tcp6:hi")
        },
    )
    .await;
    assert_eq!(tcp4, "tcp6:hi");
    assert_eq!(
        udp_roundtrip(addr("127.0.0.1", ports.udp), "ping")
            .await
            .as_deref(),
        Some("udp6:ping")
    );
    let http = http_get(addr("127.0.0.1", ports.http))
        .await
        .unwrap_or_default();
    assert!(http.starts_with("http6 xff="), "{http}");
    assert!(envoy.stat("cluster.test/echo_7.update_success").await > eds);
    assert_eq!(
        envoy.stat("cluster_manager.cds.update_success").await,
        cds,
        "no CDS push"
    );
    assert_eq!(
        envoy.stat("listener_manager.lds.update_success").await,
        lds,
        "no LDS push"
    );
    assert_eq!(
        envoy.stat("listener_manager.lds.update_rejected").await,
        0,
        "{}",
        envoy.log()
    );
    assert_eq!(envoy.stat("cluster_manager.cds.update_rejected").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ipv4_only_node_gets_only_ipv4_listeners() {
    let (_backends, ports, dir) = setup("IPv4").await;
    let server = start_server_with(Arc::new(node_group)).await;
    ManifestPublisher::new(dir.path(), Family::IPv4, &server.cache);
    let overlay = r#"{"node": {"metadata": {"dualstack-xds.io/listener-families": "IPv4"}}}"#;
    let envoy = Envoy::start_with(
        "envoy/ads-delta.yaml",
        server.addr,
        "v4-only",
        Some(overlay),
    )
    .await;
    envoy
        .wait_stat("listener_manager.lds.update_success", 1)
        .await;
    let listeners = eventually("listeners", Duration::from_secs(20), || async {
        let text = envoy.admin_get("/listeners?format=json").await;
        text.contains("test/web:80:ipv4").then_some(text)
    })
    .await;
    assert!(!listeners.contains(":ipv6"), "{listeners}");
    assert_eq!(listeners.matches(":ipv4\"").count(), 3, "{listeners}");
    assert!(tcp_roundtrip(addr("::1", ports.tcp), "x").await.is_none());
    assert_eq!(
        tcp_roundtrip(addr("127.0.0.1", ports.tcp), "x")
            .await
            .as_deref(),
        Some("tcp4:x")
    );
    let clients = server.registry.clients();
    assert_eq!(clients[0].group, "IPv4");
}
