//! The server's limits, each hit by a client that breaks it: the client gets
//! RESOURCE_EXHAUSTED (or its idle connection is closed), the limit's metric counts it,
//! and the other clients carry on.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::*;
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic::Streaming;

const CLUSTERS: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
const ENDPOINTS: &str = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";

/// The server on one Service's manifests, with these limit flags.
async fn serve(limits: &[&str]) -> (ServeProcess, tempfile::TempDir) {
    let config = tempfile::tempdir().unwrap();
    let objects = [
        manifests::service("shop", "web").port("http", 80),
        manifests::slice("shop", "web-v4", "web", "IPv4")
            .port("http", 8080)
            .endpoint("10.0.0.1"),
    ];
    std::fs::write(config.path().join("web.yaml"), manifests::yaml(&objects)).unwrap();
    let mut args = vec![
        "--manifests".to_string(),
        config.path().display().to_string(),
    ];
    args.extend(limits.iter().map(|s| s.to_string()));
    let serve = ServeProcess::start(tempfile::tempdir().unwrap(), &args);
    serve.wait_ready().await;
    (serve, config)
}

async fn channel(xds: SocketAddr) -> Channel {
    eventually("the xDS port", Duration::from_secs(20), || async {
        Channel::from_shared(format!("http://{xds}"))
            .unwrap()
            .connect()
            .await
            .ok()
    })
    .await
}

/// An ADS stream on `channel`: its request sender and its responses.
struct Ads {
    tx: mpsc::Sender<DiscoveryRequest>,
    rx: Result<Streaming<DiscoveryResponse>, tonic::Status>,
}

impl Ads {
    async fn open(channel: Channel, id: &str) -> Ads {
        let (tx, rx) = mpsc::channel(1024);
        tx.send(DiscoveryRequest {
            node: Some(Node {
                id: id.into(),
                ..Default::default()
            }),
            type_url: CLUSTERS.into(),
            ..Default::default()
        })
        .await
        .unwrap();
        let rx = AggregatedDiscoveryServiceClient::new(channel)
            .stream_aggregated_resources(ReceiverStream::new(rx))
            .await
            .map(tonic::Response::into_inner);
        Ads { tx, rx }
    }

    /// The next response, or the status that ended the stream.
    async fn next(&mut self) -> Result<DiscoveryResponse, tonic::Status> {
        let rx = self.rx.as_mut().map_err(|s| s.clone())?;
        match tokio::time::timeout(Duration::from_secs(10), rx.message()).await {
            Ok(Ok(Some(response))) => Ok(response),
            Ok(Ok(None)) => Err(tonic::Status::unknown("the stream ended")),
            Ok(Err(status)) => Err(status),
            Err(_) => Err(tonic::Status::deadline_exceeded("no response in 10 s")),
        }
    }

    async fn send(&self, request: DiscoveryRequest) {
        let _ = self.tx.send(request).await;
    }
}

fn exhausted(result: Result<DiscoveryResponse, tonic::Status>, what: &str) -> tonic::Status {
    let status = result.expect_err(what);
    assert_eq!(
        status.code(),
        tonic::Code::ResourceExhausted,
        "{what}: {status:?}"
    );
    status
}

async fn limit_count(serve: &ServeProcess, limit: &str) -> u64 {
    serve
        .metric(&format!(
            "dualstack_xds_limit_exceeded_total{{limit=\"{limit}\"}}"
        ))
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_per_connection_and_in_total() {
    let (serve, _config) =
        serve(&["--max-streams-per-connection", "2", "--max-streams", "3"]).await;
    let one = channel(serve.xds).await;
    let mut a = Ads::open(one.clone(), "a").await;
    let mut b = Ads::open(one.clone(), "b").await;
    a.next().await.unwrap();
    b.next().await.unwrap();
    let mut c = Ads::open(one.clone(), "c").await;
    let status = exhausted(c.next().await, "a third stream on one connection");
    assert!(status.message().contains("at most 2"), "{status:?}");
    assert_eq!(limit_count(&serve, "streams_per_connection").await, 1);
    // Another connection: one more stream fits in the total, the next does not.
    let two = channel(serve.xds).await;
    let mut d = Ads::open(two.clone(), "d").await;
    d.next().await.unwrap();
    let mut e = Ads::open(two.clone(), "e").await;
    exhausted(e.next().await, "a fourth stream on the server");
    assert_eq!(limit_count(&serve, "streams").await, 1);
    // The first streams were not disturbed: an ACK-less re-request is still answered
    // with nothing new, and the stream is open (no status).
    let (_, clients) = serve.get("/debug/clients").await.unwrap();
    for id in ["\"a\"", "\"b\"", "\"d\""] {
        assert!(clients.contains(id), "{id} is still connected: {clients}");
    }
    // A stream closed frees its place.
    drop(a);
    eventually("a freed stream", Duration::from_secs(10), || async {
        let mut f = Ads::open(two.clone(), "f").await;
        f.next().await.ok()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_size_names_and_rate() {
    let (serve, _config) = serve(&[
        "--max-request-bytes",
        "4KiB",
        "--max-names-per-request",
        "10",
        "--max-requests-per-second",
        "5",
    ])
    .await;
    let conn = channel(serve.xds).await;
    let mut bystander = Ads::open(conn.clone(), "bystander").await;
    bystander.next().await.unwrap();

    // A request larger than 4 KiB.
    let mut big = Ads::open(conn.clone(), "big").await;
    big.next().await.unwrap();
    big.send(DiscoveryRequest {
        type_url: ENDPOINTS.into(),
        resource_names: vec!["x".repeat(5000)],
        ..Default::default()
    })
    .await;
    exhausted(big.next().await, "a request over the size limit");
    assert_eq!(limit_count(&serve, "request_bytes").await, 1);

    // Eleven names in one request.
    let mut many = Ads::open(conn.clone(), "many").await;
    many.next().await.unwrap();
    many.send(DiscoveryRequest {
        type_url: ENDPOINTS.into(),
        resource_names: (0..11).map(|i| format!("shop/web-{i}:80")).collect(),
        ..Default::default()
    })
    .await;
    let status = exhausted(many.next().await, "a request over the names limit");
    assert!(status.message().contains("at most 10"), "{status:?}");
    assert_eq!(limit_count(&serve, "names_per_request").await, 1);

    // Fifty requests at once on a stream allowed five a second (bursts of ten).
    let mut chatty = Ads::open(conn.clone(), "chatty").await;
    chatty.next().await.unwrap();
    for i in 0..50 {
        chatty
            .send(DiscoveryRequest {
                type_url: ENDPOINTS.into(),
                resource_names: vec![format!("shop/web-{}:80", i % 3)],
                ..Default::default()
            })
            .await;
    }
    let status = loop {
        match chatty.next().await {
            Ok(_) => continue,
            Err(status) => break status,
        }
    };
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
    assert_eq!(limit_count(&serve, "requests_per_second").await, 1);

    // The bystander on the same connection is still served.
    bystander
        .send(DiscoveryRequest {
            type_url: ENDPOINTS.into(),
            resource_names: vec!["shop/web:80".into()],
            ..Default::default()
        })
        .await;
    let response = bystander.next().await.unwrap();
    assert_eq!(response.type_url, ENDPOINTS);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_connection_is_closed_and_a_busy_one_is_not() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (serve, _config) = serve(&["--idle-timeout", "1s"]).await;
    // A connection that says HTTP/2 and opens no stream.
    let mut idle = tokio::net::TcpStream::connect(serve.xds).await.unwrap();
    idle.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .await
        .unwrap();
    let opened = Instant::now();
    let mut buf = [0u8; 1024];
    let closed = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match idle.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => continue,
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "the idle connection was not closed");
    assert!(
        opened.elapsed() >= Duration::from_millis(900),
        "{:?}",
        opened.elapsed()
    );
    assert!(limit_count(&serve, "idle_timeout").await >= 1);
    // A connection with a stream stays, long past the idle timeout.
    let mut busy = Ads::open(channel(serve.xds).await, "busy").await;
    busy.next().await.unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    busy.send(DiscoveryRequest {
        type_url: ENDPOINTS.into(),
        resource_names: vec!["shop/web:80".into()],
        ..Default::default()
    })
    .await;
    assert!(busy.next().await.is_ok(), "the busy connection is served");
}

/// Whether node `frozen` has a stream, by `/debug/clients`.
async fn connected(serve: &ServeProcess) -> Option<bool> {
    let (_, clients) = serve.get("/debug/clients").await?;
    Some(clients.contains("\"frozen\""))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_envoy_is_dropped_by_the_keepalive() {
    let (serve, _config) =
        serve(&["--keepalive-interval", "1s", "--keepalive-timeout", "1s"]).await;
    let envoy = Envoy::start("envoy/ads-sotw.yaml", serve.xds, "frozen").await;
    envoy
        .wait_stat("listener_manager.lds.update_success", 1)
        .await;
    assert_eq!(connected(&serve).await, Some(true));
    // SIGSTOP: the process is alive, its socket open, and it answers nothing.
    let pid = nix::unistd::Pid::from_raw(envoy.pid() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGSTOP).unwrap();
    let stopped = Instant::now();
    eventually(
        "the frozen Envoy's stream is dropped",
        Duration::from_secs(20),
        || async { (connected(&serve).await == Some(false)).then_some(()) },
    )
    .await;
    let took = stopped.elapsed();
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGCONT).unwrap();
    println!("keepalive dropped a frozen client after {took:?}");
    assert!(took < Duration::from_secs(10), "{took:?}");
    assert!(
        limit_count(&serve, "keepalive").await >= 1,
        "{}",
        serve.log()
    );
    // Thawed, it reconnects.
    let deadline = Instant::now() + Duration::from_secs(30);
    while connected(&serve).await != Some(true) {
        assert!(
            Instant::now() < deadline,
            "the thawed Envoy did not reconnect: {:?}",
            serve.get("/debug/clients").await
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
