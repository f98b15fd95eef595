//! The gRPC surface with tonic clients: errors end one stream only, per-type services and
//! fetch, versions stable across servers, a stuck client does not hold others back.

mod common;

use std::time::Duration;

use common::fixtures::*;
use common::*;
use dualstack_xds::snapshot::{ResourceType, Snapshot, SnapshotSet};
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::cluster::v3::cluster_discovery_service_client::ClusterDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use envoy_types::pb::envoy::service::endpoint::v3::endpoint_discovery_service_client::EndpointDiscoveryServiceClient;
use envoy_types::pb::envoy::service::listener::v3::listener_discovery_service_client::ListenerDiscoveryServiceClient;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic::Streaming;

fn services(n: usize, port: u16) -> SnapshotSet {
    let mut b = Snapshot::builder();
    for i in 0..n {
        let name = format!("svc-{i}");
        b.upsert(&eds_cluster(&name))
            .upsert(&load_assignment(&name, &[("10.0.0.1", port)]))
            .upsert(&tcp_listener(&name, "0.0.0.0", 10000 + i as u16, &name));
    }
    SnapshotSet::single(b.build().unwrap())
}

fn node(id: &str) -> Option<Node> {
    Some(Node {
        id: id.into(),
        ..Default::default()
    })
}

fn request(ty: ResourceType, node_id: Option<&str>) -> DiscoveryRequest {
    DiscoveryRequest {
        node: node_id.and_then(node),
        type_url: ty.type_url().into(),
        ..Default::default()
    }
}

async fn channel(server: &TestServer) -> Channel {
    Channel::from_shared(format!("http://{}", server.addr))
        .unwrap()
        .connect()
        .await
        .unwrap()
}

/// An open SotW ADS stream.
struct Ads {
    tx: mpsc::Sender<DiscoveryRequest>,
    rx: Streaming<DiscoveryResponse>,
}

impl Ads {
    async fn open(server: &TestServer, first: DiscoveryRequest) -> Ads {
        let (tx, requests) = mpsc::channel(16);
        tx.send(first).await.unwrap();
        let rx = AggregatedDiscoveryServiceClient::new(channel(server).await)
            .stream_aggregated_resources(ReceiverStream::new(requests))
            .await
            .unwrap()
            .into_inner();
        Ads { tx, rx }
    }

    async fn next(&mut self) -> Result<DiscoveryResponse, tonic::Status> {
        tokio::time::timeout(Duration::from_secs(10), self.rx.message())
            .await
            .expect("response within 10s")
            .map(|m| m.expect("stream still open"))
    }

    async fn ack(&self, resp: &DiscoveryResponse) {
        let ty = ResourceType::from_type_url(&resp.type_url).unwrap();
        self.tx
            .send(DiscoveryRequest {
                version_info: resp.version_info.clone(),
                response_nonce: resp.nonce.clone(),
                ..request(ty, None)
            })
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn a_first_request_without_node_fails_only_that_stream() {
    let server = start_server().await;
    server.cache.publish(services(1, 80));
    let mut good = Ads::open(&server, request(ResourceType::Cluster, Some("good"))).await;
    let first = good.next().await.unwrap();
    good.ack(&first).await;

    let mut bad = Ads::open(&server, request(ResourceType::Cluster, None)).await;
    let status = bad.next().await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(status.message().contains("node"), "{}", status.message());

    let mut unknown = request(ResourceType::Cluster, Some("unknown-type"));
    unknown.type_url = "type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig".into();
    let mut bad = Ads::open(&server, unknown).await;
    let status = bad.next().await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(
        status.message().contains("TypedExtensionConfig"),
        "{}",
        status.message()
    );

    // The good stream still gets changes.
    server.cache.publish(services(2, 80));
    let update = good.next().await.unwrap();
    assert_eq!(update.resources.len(), 2);
}

#[tokio::test]
async fn per_type_services_stream_delta_and_fetch() {
    let server = start_server().await;
    server.cache.publish(services(3, 80));
    let ch = channel(&server).await;

    // CDS over its own SotW service.
    let (tx, rx) = mpsc::channel(4);
    tx.send(request(ResourceType::Cluster, Some("cds")))
        .await
        .unwrap();
    let mut cds = ClusterDiscoveryServiceClient::new(ch.clone())
        .stream_clusters(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(cds.message().await.unwrap().unwrap().resources.len(), 3);

    // EDS over its own Delta service, by name.
    let (tx, rx) = mpsc::channel(4);
    tx.send(DeltaDiscoveryRequest {
        node: node("eds"),
        type_url: ResourceType::Endpoint.type_url().into(),
        resource_names_subscribe: vec!["svc-1".into()],
        ..Default::default()
    })
    .await
    .unwrap();
    let mut eds = EndpointDiscoveryServiceClient::new(ch.clone())
        .delta_endpoints(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let resp: DeltaDiscoveryResponse = eds.message().await.unwrap().unwrap();
    assert_eq!(resp.resources.len(), 1);
    assert_eq!(resp.resources[0].name, "svc-1");

    // LDS fetch.
    let fetched = ListenerDiscoveryServiceClient::new(ch.clone())
        .fetch_listeners(request(ResourceType::Listener, Some("fetch")))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(fetched.resources.len(), 3);
    // Fetching at the current version returns no resources.
    let again = ListenerDiscoveryServiceClient::new(ch.clone())
        .fetch_listeners(DiscoveryRequest {
            version_info: fetched.version_info.clone(),
            ..request(ResourceType::Listener, Some("fetch"))
        })
        .await
        .unwrap()
        .into_inner();
    assert!(again.resources.is_empty());
    assert_eq!(again.version_info, fetched.version_info);
    // The wrong type on a per-type service is refused.
    let err = ListenerDiscoveryServiceClient::new(ch)
        .fetch_listeners(request(ResourceType::Cluster, Some("fetch")))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
}

#[tokio::test]
async fn two_servers_given_the_same_input_serve_the_same_versions() {
    let a = start_server().await;
    let b = start_server().await;
    a.cache.publish(services(5, 80));
    b.cache.publish(services(5, 80));
    for ty in ResourceType::ALL {
        // Routes and Secrets are only ever requested by name; these snapshots have none.
        if matches!(ty, ResourceType::Route | ResourceType::Secret) {
            continue;
        }
        let mut names = vec![];
        if ty == ResourceType::Endpoint {
            names = (0..5).map(|i| format!("svc-{i}")).collect();
        }
        let mut versions = vec![];
        for server in [&a, &b] {
            let mut ads = Ads::open(
                server,
                DiscoveryRequest {
                    resource_names: names.clone(),
                    ..request(ty, Some("replica-test"))
                },
            )
            .await;
            let resp = ads.next().await.unwrap();
            versions.push((resp.version_info, resp.resources));
        }
        assert_eq!(versions[0], versions[1], "{ty}");
    }
}

#[tokio::test]
async fn a_stuck_client_does_not_hold_back_others() {
    let server = start_server().await;
    server.cache.publish(services(10, 80));
    // The stuck client subscribes and then never reads or acknowledges.
    let _stuck = Ads::open(&server, request(ResourceType::Cluster, Some("stuck"))).await;
    let mut live = Ads::open(&server, request(ResourceType::Cluster, Some("live"))).await;
    let first = live.next().await.unwrap();
    live.ack(&first).await;
    for round in 1..=100 {
        let expected = 10 + round;
        server.cache.publish(services(expected, 80));
        loop {
            let resp = live.next().await.unwrap();
            live.ack(&resp).await;
            if resp.resources.len() == expected {
                break;
            }
        }
    }
    // The stuck client holds one unacknowledged response, nothing queued behind it.
    let clients = server.registry.clients();
    let stuck = clients.iter().find(|c| c.node_id == "stuck").unwrap();
    let cds = &stuck.types[0];
    assert_eq!(cds.pending_nonce.as_deref(), Some("1"));
    assert_eq!(cds.acked_version, None);
}
