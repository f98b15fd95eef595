//! Real Envoy, configured only by the server: SotW and Delta ADS bootstraps from envoy/.

mod common;

use envoy_types::pb::envoy::admin::v3::ClientResourceStatus;
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::status::v3::client_status_discovery_service_client::ClientStatusDiscoveryServiceClient;
use envoy_types::pb::envoy::service::status::v3::ClientStatusRequest;

use std::net::SocketAddr;
use std::time::Duration;

use common::fixtures::*;
use common::*;
use dualstack_xds::snapshot::{ResourceType, Snapshot, SnapshotSet};

/// One TCP service: cluster `echo` with `backend` as its endpoint, a listener on `port`.
fn tcp_service(backend: SocketAddr, port: u16) -> Snapshot {
    let mut b = Snapshot::builder();
    b.upsert(&eds_cluster("echo"))
        .upsert(&load_assignment("echo", &[("127.0.0.1", backend.port())]))
        .upsert(&tcp_listener("echo-tcp", "127.0.0.1", port, "echo"));
    b.build().unwrap()
}

async fn snapshot_is_applied(bootstrap: &str) {
    let server = start_server().await;
    let backend = echo_server("v1:").await;
    let port = free_port();
    server
        .cache
        .publish(SnapshotSet::single(tcp_service(backend, port)));
    let envoy = Envoy::start(bootstrap, server.addr, "applied").await;

    envoy
        .wait_stat("listener_manager.lds.update_success", 1)
        .await;
    envoy
        .wait_stat("cluster_manager.cds.update_success", 1)
        .await;
    let ingress: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let reply = eventually(
        "traffic through the listener",
        Duration::from_secs(20),
        || tcp_roundtrip(ingress, "hello"),
    )
    .await;
    assert_eq!(reply, "v1:hello");
    let dump = envoy.admin_get("/config_dump?include_eds").await;
    assert!(
        dump.contains("\"echo-tcp\""),
        "listener missing from config_dump"
    );
    assert!(dump.contains(&format!("\"port_value\": {}", backend.port())));

    // An endpoint change is an EDS push that reaches the data plane.
    let backend2 = echo_server("v2:").await;
    let mut next = server.cache.current().unwrap().get("").unwrap().edit();
    next.upsert(&load_assignment("echo", &[("127.0.0.1", backend2.port())]));
    server
        .cache
        .publish(SnapshotSet::single(next.build().unwrap()));
    eventually(
        "traffic to the new endpoint",
        Duration::from_secs(20),
        || async {
            let clusters = envoy.admin_get("/clusters?format=json").await;
            if !clusters.contains(&format!("\"port_value\": {}", backend2.port())) {
                return None;
            }
            tcp_roundtrip(ingress, "again")
                .await
                .filter(|r| r == "v2:again")
        },
    )
    .await;
    assert_eq!(envoy.stat("listener_manager.lds.update_rejected").await, 0);
    assert_eq!(envoy.stat("cluster_manager.cds.update_rejected").await, 0);

    let clients = server.registry.clients();
    assert_eq!(clients.len(), 1);
    assert_eq!(clients[0].node_id, "applied");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sotw_snapshot_is_applied() {
    snapshot_is_applied("envoy/ads-sotw.yaml").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delta_snapshot_is_applied() {
    snapshot_is_applied("envoy/ads-delta.yaml").await;
}

/// Two listeners on one address: Envoy rejects the LDS update.
fn conflicting(backend: SocketAddr, port: u16) -> Snapshot {
    let mut b = tcp_service(backend, port).edit();
    b.upsert(&tcp_listener("echo-tcp-clash", "127.0.0.1", port, "echo"));
    b.build().unwrap()
}

async fn rejected_snapshot_is_reported_and_not_resent(bootstrap: &str) {
    let server = start_server().await;
    let backend = echo_server("ok:").await;
    let port = free_port();
    let good = tcp_service(backend, port);
    server.cache.publish(SnapshotSet::single(good.clone()));
    let envoy = Envoy::start(bootstrap, server.addr, "nacker").await;
    envoy
        .wait_stat("listener_manager.lds.update_success", 1)
        .await;

    server
        .cache
        .publish(SnapshotSet::single(conflicting(backend, port)));
    envoy
        .wait_stat("listener_manager.lds.update_rejected", 1)
        .await;
    let nack = eventually(
        "the NACK reported by the server",
        Duration::from_secs(10),
        || async {
            let clients = server.registry.clients();
            let lds = clients
                .first()?
                .types
                .iter()
                .find(|t| t.type_url.ends_with("Listener"))?
                .clone();
            lds.last_nack
        },
    )
    .await;
    assert!(
        nack.message.contains("echo-tcp-clash") || nack.message.contains("duplicate"),
        "NACK text should name the problem: {}",
        nack.message
    );
    assert_eq!(server.registry.metrics.nacks(ResourceType::Listener), 1);
    // CSDS, as standard tooling asks: the listeners are NACKED with Envoy's text, the
    // clusters ACKED.
    let statuses = csds(&server, "nacker").await;
    assert!(
        statuses
            .iter()
            .any(|(ty, name, status, details)| ty.ends_with("Listener")
                && name == "echo-tcp-clash"
                && *status == ClientResourceStatus::Nacked as i32
                && details.contains(&nack.message)),
        "{statuses:?}"
    );
    assert!(
        statuses
            .iter()
            .any(|(ty, name, status, _)| ty.ends_with("Cluster")
                && name == "echo"
                && *status == ClientResourceStatus::Acked as i32),
        "{statuses:?}"
    );
    // The old listener keeps serving.
    let ingress: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    assert_eq!(
        tcp_roundtrip(ingress, "still").await.as_deref(),
        Some("ok:still")
    );

    // Publishing the same rejected content again sends nothing to Envoy.
    let lds_sent = server.registry.metrics.responses(ResourceType::Listener);
    server
        .cache
        .publish(SnapshotSet::single(conflicting(backend, port)));
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        server.registry.metrics.responses(ResourceType::Listener),
        lds_sent
    );
    assert_eq!(envoy.stat("listener_manager.lds.update_rejected").await, 1);

    // The next good snapshot is applied: a new listener on another port.
    let port2 = free_port();
    let mut fixed = good.edit();
    fixed.upsert(&tcp_listener("echo-tcp-2", "127.0.0.1", port2, "echo"));
    server
        .cache
        .publish(SnapshotSet::single(fixed.build().unwrap()));
    envoy
        .wait_stat("listener_manager.lds.update_success", 2)
        .await;
    let ingress2: SocketAddr = format!("127.0.0.1:{port2}").parse().unwrap();
    let reply = eventually(
        "traffic on the new listener",
        Duration::from_secs(20),
        || tcp_roundtrip(ingress2, "fixed"),
    )
    .await;
    assert_eq!(reply, "ok:fixed");
    assert_eq!(
        envoy.stat("listener_manager.lds.update_rejected").await,
        1,
        "{}",
        envoy.log()
    );
    // Envoy counts the update as applied before its ACK reaches the server.
    let lds = eventually(
        "the server to receive the ACK of the good snapshot",
        Duration::from_secs(10),
        || {
            let clients = server.registry.clients();
            let lds = clients[0]
                .types
                .iter()
                .find(|t| t.type_url.ends_with("Listener"))
                .cloned();
            async move { lds.filter(|lds| lds.pending_nonce.is_none()) }
        },
    )
    .await;
    assert!(lds.acked_version.is_some());
    let statuses = csds(&server, "nacker").await;
    assert!(
        statuses
            .iter()
            .filter(|(ty, ..)| ty.ends_with("Listener"))
            .all(|(_, _, status, _)| *status == ClientResourceStatus::Acked as i32),
        "after the fix every listener is ACKED: {statuses:?}"
    );
}

/// (type URL, name, client status, NACK details) of every resource CSDS reports for a node.
async fn csds(server: &TestServer, node: &str) -> Vec<(String, String, i32, String)> {
    let channel = tonic::transport::Channel::from_shared(format!("http://{}", server.addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let response = ClientStatusDiscoveryServiceClient::new(channel)
        .fetch_client_status(ClientStatusRequest {
            node: Some(Node {
                id: node.into(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(response.config.len(), 1, "one client named {node}");
    response.config[0]
        .generic_xds_configs
        .iter()
        .map(|c| {
            (
                c.type_url.clone(),
                c.name.clone(),
                c.client_status,
                c.error_state
                    .as_ref()
                    .map(|e| e.details.clone())
                    .unwrap_or_default(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sotw_rejected_snapshot_is_reported_and_not_resent() {
    rejected_snapshot_is_reported_and_not_resent("envoy/ads-sotw.yaml").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delta_rejected_snapshot_is_reported_and_not_resent() {
    rejected_snapshot_is_reported_and_not_resent("envoy/ads-delta.yaml").await;
}
