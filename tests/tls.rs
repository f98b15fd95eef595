//! mTLS on the xDS port, as the deploy runs it: certificates from `dualstack-xds certs`,
//! `serve --tls-cert/--tls-key/--tls-client-ca`, Envoy bootstraps from `bootstrap
//! --tls-dir`. A fleet's certificate gets its nodes served and nothing else: a node of
//! another fleet is refused with PermissionDenied (counted, logged with the peer), as is
//! a client without a certificate or in plaintext; CSDS shows a client only its own
//! nodes; a rotated certificate is served to new connections while established streams
//! go on.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::DiscoveryRequest;
use envoy_types::pb::envoy::service::status::v3::client_status_discovery_service_client::ClientStatusDiscoveryServiceClient;
use envoy_types::pb::envoy::service::status::v3::ClientStatusRequest;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

const WAIT: Duration = Duration::from_secs(30);

/// `certs --out DIR` with these fleets.
fn certs(dir: &Path, fleets: &[&str]) {
    let mut args = vec!["certs", "--out", dir.to_str().unwrap()];
    for fleet in fleets {
        args.extend(["--fleet", fleet]);
    }
    run_binary(&args);
}

/// The TLS flags of `serve`, from a server certificate directory.
fn tls_args(server: &Path) -> Vec<String> {
    let file = |name: &str| server.join(name).display().to_string();
    vec![
        "--tls-cert".into(),
        file("tls.crt"),
        "--tls-key".into(),
        file("tls.key"),
        "--tls-client-ca".into(),
        file("ca.crt"),
    ]
}

/// One TCP Service whose endpoint is `backend`, its listener on `port`.
fn write_manifests(dir: &Path, port: u16, backend: SocketAddr) {
    let objects = [
        manifests::service("shop", "echo")
            .annotate("dualstack-xds.io/listener-ports", &format!("80={port}"))
            .port("tcp", 80),
        manifests::slice("shop", "echo-v4", "echo", "IPv4")
            .port("tcp", backend.port())
            .endpoint(&backend.ip().to_string()),
    ];
    std::fs::write(dir.join("echo.yaml"), manifests::yaml(&objects)).unwrap();
}

/// An Envoy bootstrap of `bootstrap --tls-dir CERTS --write-sds` for node `id` of
/// `cluster`, written into `dir`.
fn envoy_bootstrap(dir: &Path, certs: &Path, id: &str, cluster: &str, xds: SocketAddr) -> PathBuf {
    let text = run_binary(&[
        "bootstrap",
        "--node-id",
        id,
        "--cluster",
        cluster,
        "--families",
        "IPv4",
        "--xds-address",
        &xds.to_string(),
        "--admin-address",
        "127.0.0.1:0",
        "--tls-dir",
        certs.to_str().unwrap(),
        "--sds-dir",
        dir.to_str().unwrap(),
        "--write-sds",
    ]);
    let path = dir.join(format!("{id}.yaml"));
    std::fs::write(&path, text).unwrap();
    path
}

/// A tonic channel to the server over TLS, with a client certificate if given.
async fn tls_channel(
    xds: SocketAddr,
    ca: &Path,
    identity: Option<&Path>,
) -> Result<Channel, tonic::transport::Error> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(std::fs::read(ca).unwrap()))
        .domain_name("localhost");
    if let Some(dir) = identity {
        tls = tls.identity(Identity::from_pem(
            std::fs::read(dir.join("tls.crt")).unwrap(),
            std::fs::read(dir.join("tls.key")).unwrap(),
        ));
    }
    Channel::from_shared(format!("https://{xds}"))
        .unwrap()
        .tls_config(tls)?
        .connect()
        .await
}

/// The first response of an ADS stream for `node`, or the status that refused it.
async fn first_ads_answer(channel: Channel, node: Node) -> Result<(), tonic::Status> {
    let request = DiscoveryRequest {
        node: Some(node),
        type_url: "type.googleapis.com/envoy.config.cluster.v3.Cluster".into(),
        ..Default::default()
    };
    let mut client = AggregatedDiscoveryServiceClient::new(channel);
    let mut responses = client
        .stream_aggregated_resources(tokio_stream::iter([request]).chain(tokio_stream::pending()))
        .await?
        .into_inner();
    match tokio::time::timeout(Duration::from_secs(10), responses.message()).await {
        Ok(Ok(Some(_))) => Ok(()),
        Ok(Ok(None)) => Err(tonic::Status::unknown("the stream ended")),
        Ok(Err(status)) => Err(status),
        Err(_) => Err(tonic::Status::deadline_exceeded("no answer")),
    }
}

fn node(id: &str, cluster: &str) -> Node {
    Node {
        id: id.into(),
        cluster: cluster.into(),
        ..Default::default()
    }
}

use tokio_stream::StreamExt;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_certificate_gets_its_nodes_served_and_nothing_else() {
    let work = tempfile::tempdir().unwrap();
    let dir = work.path();
    certs(&dir.join("certs"), &["ingress-ipv4", "ingress-ipv6"]);
    let certs = dir.join("certs");
    let backend = echo_server("echo:").await;
    let port = free_port();
    std::fs::create_dir(dir.join("manifests")).unwrap();
    write_manifests(&dir.join("manifests"), port, backend);
    let mut args = vec![
        "--manifests".into(),
        dir.join("manifests").display().to_string(),
    ];
    args.extend(tls_args(&certs.join("server")));
    let serve = ServeProcess::start(tempfile::tempdir().unwrap(), &args);
    serve.wait_ready().await;

    // The IPv4 fleet's Envoy, with its own certificate: served, traffic flows.
    let good = envoy_bootstrap(
        dir,
        &certs.join("ingress-ipv4"),
        "edge-1",
        "ingress-ipv4",
        serve.xds,
    );
    let envoy = Envoy::start_file(&good, "edge-1").await;
    envoy
        .wait_stat("listener_manager.lds.update_success", 1)
        .await;
    let ingress: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let reply = eventually("traffic through the mTLS-configured Envoy", WAIT, || {
        tcp_roundtrip(ingress, "hi")
    })
    .await;
    assert_eq!(reply, "echo:hi");

    // A node claiming the IPv6 fleet with the IPv4 fleet's certificate: refused, never
    // served.
    let sds = dir.join("wrong");
    std::fs::create_dir(&sds).unwrap();
    let wrong = envoy_bootstrap(
        &sds,
        &certs.join("ingress-ipv4"),
        "edge-9",
        "ingress-ipv6",
        serve.xds,
    );
    let impostor = Envoy::start_file(&wrong, "edge-9").await;
    eventually("the refusal is counted", WAIT, || async {
        (serve
            .metric("dualstack_xds_authorization_denied_total{reason=\"mismatch\"}")
            .await
            >= 1)
            .then_some(())
    })
    .await;
    assert!(
        impostor.log().contains("closed: 7,"),
        "Envoy sees PERMISSION_DENIED (7):\n{}",
        impostor.log()
    );
    assert_eq!(
        impostor.stat("listener_manager.lds.update_success").await,
        0
    );
    assert_eq!(impostor.stat("control_plane.connected_state").await, 0);
    let log = serve.log();
    let refusal = log
        .lines()
        .find(|l| l.contains("refusing a client"))
        .unwrap_or_else(|| panic!("no refusal in the log:\n{log}"));
    assert!(
        refusal.contains("127.0.0.1") && refusal.contains("edge-9"),
        "{refusal}"
    );
    let (_, clients) = serve.get("/debug/clients").await.unwrap();
    assert!(
        !clients.contains("edge-9"),
        "the impostor has no stream: {clients}"
    );

    // No client certificate, and plaintext: the handshake fails, counted.
    let ca = certs.join("ca.crt");
    let no_cert = match tls_channel(serve.xds, &ca, None).await {
        Ok(channel) => first_ads_answer(channel, node("x", "ingress-ipv4"))
            .await
            .err(),
        Err(error) => Some(tonic::Status::unavailable(error.to_string())),
    };
    assert!(
        no_cert.is_some(),
        "a client without a certificate is refused"
    );
    let plaintext = Channel::from_shared(format!("http://{}", serve.xds))
        .unwrap()
        .connect()
        .await;
    if let Ok(channel) = plaintext {
        assert!(first_ads_answer(channel, node("x", "ingress-ipv4"))
            .await
            .is_err());
    }
    eventually("failed handshakes are counted", WAIT, || async {
        (serve
            .metric("dualstack_xds_tls_handshake_failures_total")
            .await
            >= 2)
            .then_some(())
    })
    .await;

    // The good Envoy was never disturbed.
    assert_eq!(
        tcp_roundtrip(ingress, "still").await.as_deref(),
        Some("echo:still")
    );
    assert_eq!(envoy.stat("control_plane.connected_state").await, 1);

    // CSDS: a fleet's certificate sees its own nodes, and may not ask for others.
    let v4 = tls_channel(serve.xds, &ca, Some(&certs.join("ingress-ipv4")))
        .await
        .unwrap();
    let mut csds = ClientStatusDiscoveryServiceClient::new(v4);
    let all = csds
        .fetch_client_status(ClientStatusRequest::default())
        .await
        .unwrap()
        .into_inner();
    let nodes: Vec<String> = all
        .config
        .iter()
        .filter_map(|c| c.node.as_ref().map(|n| n.id.clone()))
        .collect();
    assert_eq!(nodes, ["edge-1"]);
    let v6 = tls_channel(serve.xds, &ca, Some(&certs.join("ingress-ipv6")))
        .await
        .unwrap();
    let mut csds = ClientStatusDiscoveryServiceClient::new(v6);
    let theirs = csds
        .fetch_client_status(ClientStatusRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(theirs.config.is_empty(), "the IPv6 fleet sees no IPv4 node");
    let denied = csds
        .fetch_client_status(ClientStatusRequest {
            node: Some(node("edge-1", "ingress-ipv4")),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(denied.code(), tonic::Code::PermissionDenied);
    drop(impostor);
}

/// The server's certificate directory as a Secret volume mounts it: the files are links
/// into `..data`, which is swapped to rotate them.
fn mount(volume: &Path, generation: usize, from: &Path) {
    let stamp = format!("..2026_12_01_{generation:04}");
    std::fs::create_dir_all(volume.join(&stamp)).unwrap();
    for file in ["tls.crt", "tls.key", "ca.crt"] {
        std::fs::copy(from.join(file), volume.join(&stamp).join(file)).unwrap();
    }
    let _ = std::fs::remove_file(volume.join("..data_tmp"));
    std::os::unix::fs::symlink(&stamp, volume.join("..data_tmp")).unwrap();
    std::fs::rename(volume.join("..data_tmp"), volume.join("..data")).unwrap();
    for file in ["tls.crt", "tls.key", "ca.crt"] {
        let link = volume.join(file);
        if link.symlink_metadata().is_err() {
            std::os::unix::fs::symlink(format!("..data/{file}"), link).unwrap();
        }
    }
}

/// The certificate a new TLS connection is served.
async fn served_certificate(xds: SocketAddr, certs: &Path) -> Vec<u8> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(rustls::pki_types::CertificateDer::from_pem_file(certs.join("ca.crt")).unwrap())
        .unwrap();
    let client_certs: Vec<_> =
        rustls::pki_types::CertificateDer::pem_file_iter(certs.join("ingress-ipv4/tls.crt"))
            .unwrap()
            .map(Result::unwrap)
            .collect();
    let key = rustls::pki_types::PrivateKeyDer::from_pem_file(certs.join("ingress-ipv4/tls.key"))
        .unwrap();
    let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_client_auth_cert(client_certs, key)
    .unwrap();
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(xds).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let tls = connector.connect(name, tcp).await.unwrap();
    tls.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_certificate_is_served_to_new_connections_and_streams_go_on() {
    let work = tempfile::tempdir().unwrap();
    let dir = work.path();
    let certs = dir.join("certs");
    self::certs(&certs, &["ingress-ipv4"]);
    let first = dir.join("first");
    copy_dir(&certs.join("server"), &first);
    let volume = dir.join("volume");
    mount(&volume, 1, &first);
    let backend = echo_server("echo:").await;
    let port = free_port();
    std::fs::create_dir(dir.join("manifests")).unwrap();
    write_manifests(&dir.join("manifests"), port, backend);
    let mut args = vec![
        "--manifests".into(),
        dir.join("manifests").display().to_string(),
    ];
    args.extend(tls_args(&volume));
    let serve = ServeProcess::start(tempfile::tempdir().unwrap(), &args);
    serve.wait_ready().await;
    let bootstrap = envoy_bootstrap(
        dir,
        &certs.join("ingress-ipv4"),
        "edge-1",
        "ingress-ipv4",
        serve.xds,
    );
    let envoy = Envoy::start_file(&bootstrap, "edge-1").await;
    envoy
        .wait_stat("listener_manager.lds.update_success", 1)
        .await;
    let connections = envoy.stat("cluster.dualstack-xds.upstream_cx_total").await;
    let served = served_certificate(serve.xds, &certs).await;
    assert_eq!(served, pem_der(&first.join("tls.crt")));

    // cert-manager renews: new leaf certificates from the same CA, swapped in.
    self::certs(&certs, &["ingress-ipv4"]);
    mount(&volume, 2, &certs.join("server"));
    eventually("the reload", WAIT, || async {
        (serve
            .metric("dualstack_xds_tls_reloads_total{result=\"ok\"}")
            .await
            >= 1)
            .then_some(())
    })
    .await;
    assert_eq!(
        served_certificate(serve.xds, &certs).await,
        pem_der(&certs.join("server/tls.crt")),
        "new connections get the new certificate"
    );
    assert_ne!(pem_der(&certs.join("server/tls.crt")), served);

    // A broken rotation (a key that does not match): reported, the last good one stays.
    let broken = dir.join("broken");
    copy_dir(&certs.join("server"), &broken);
    std::fs::copy(first.join("tls.key"), broken.join("tls.key")).unwrap();
    mount(&volume, 3, &broken);
    eventually("the failed reload is counted", WAIT, || async {
        (serve
            .metric("dualstack_xds_tls_reloads_total{result=\"error\"}")
            .await
            >= 1)
            .then_some(())
    })
    .await;
    assert_eq!(
        served_certificate(serve.xds, &certs).await,
        pem_der(&certs.join("server/tls.crt"))
    );

    // Envoy's stream lived through all of it: same connection, still served.
    assert_eq!(
        envoy.stat("cluster.dualstack-xds.upstream_cx_total").await,
        connections,
        "Envoy did not reconnect"
    );
    assert_eq!(envoy.stat("control_plane.connected_state").await, 1);
    let ingress: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    assert_eq!(
        tcp_roundtrip(ingress, "hi").await.as_deref(),
        Some("echo:hi")
    );
}

fn pem_der(path: &Path) -> Vec<u8> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::from_pem_file(path)
        .unwrap()
        .to_vec()
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
}

/// `dualstack-xds nginx` with a fleet's certificate (`--tls-dir`), beside an nginx that
/// is not running (the agent validates with `nginx -t`, writes the files, ACKs); its
/// output directory and the process.
fn nginx_agent(
    work: &Path,
    name: &str,
    certs: &Path,
    cluster: &str,
    xds: SocketAddr,
) -> (PathBuf, std::process::Child) {
    let dir = work.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    let conf = std::fs::read_to_string(repo_path("nginx/nginx.conf"))
        .unwrap()
        .replace(" run/", &format!(" {}/run/", dir.display()));
    std::fs::write(dir.join("nginx.conf"), conf).unwrap();
    let log = std::fs::File::create(dir.join("agent.log")).unwrap();
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_dualstack-xds"))
        .args(["nginx", "--xds-address", &xds.to_string()])
        .args(["--tls-dir", certs.to_str().unwrap()])
        .args(["--tls-server-name", "localhost"])
        .args([
            "--node-id",
            name,
            "--cluster",
            cluster,
            "--families",
            "IPv4",
        ])
        .arg("--config-dir")
        .arg(dir.join("run"))
        .arg("--nginx")
        .arg(nginx_binary())
        .arg("--nginx-conf")
        .arg(dir.join("nginx.conf"))
        .arg("--pid-file")
        .arg(dir.join("run/nginx.pid"))
        .stdout(std::process::Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    (dir, child)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_nginx_agent_is_a_fleet_member_like_an_envoy() {
    let work = tempfile::tempdir().unwrap();
    let dir = work.path();
    certs(&dir.join("certs"), &["ingress-ipv4", "ingress-ipv6"]);
    let certs = dir.join("certs");
    let port = free_port();
    std::fs::create_dir(dir.join("manifests")).unwrap();
    write_manifests(&dir.join("manifests"), port, "127.0.0.1:7".parse().unwrap());
    let mut args = vec![
        "--manifests".into(),
        dir.join("manifests").display().to_string(),
    ];
    args.extend(tls_args(&certs.join("server")));
    let serve = ServeProcess::start(tempfile::tempdir().unwrap(), &args);
    serve.wait_ready().await;

    // Its fleet's certificate: served, and its configuration written.
    let (good, mut agent) = nginx_agent(
        dir,
        "nginx-1",
        &certs.join("ingress-ipv4"),
        "ingress-ipv4",
        serve.xds,
    );
    let stream_conf = good.join("run/stream.conf");
    let text = eventually("the agent wrote its configuration", WAIT, || async {
        std::fs::read_to_string(&stream_conf)
            .ok()
            .filter(|t| t.contains("server 127.0.0.1:7;"))
    })
    .await;
    assert!(text.contains(&format!("listen 0.0.0.0:{port};")), "{text}");
    assert!(!text.contains("listen [::]"), "an IPv4 node: {text}");
    let clients = eventually("the agent's stream, acked", WAIT, || async {
        let (_, body) = serve.get("/debug/clients").await?;
        let clients: serde_json::Value = serde_json::from_str(&body).ok()?;
        let nginx = clients
            .as_array()?
            .iter()
            .find(|c| c["node_id"] == "nginx-1")?
            .clone();
        nginx["types"]
            .as_array()?
            .iter()
            .all(|t| t["acked_version"].is_string())
            .then_some(nginx)
    })
    .await;
    assert_eq!(clients["user_agent"], "dualstack-xds-nginx");
    assert_eq!(clients["kind"], "delta");
    // CSDS shows it to its fleet as an nginx node, with what it holds.
    let fleet = tls_channel(
        serve.xds,
        &certs.join("ca.crt"),
        Some(&certs.join("ingress-ipv4")),
    )
    .await
    .unwrap();
    let status = ClientStatusDiscoveryServiceClient::new(fleet)
        .fetch_client_status(ClientStatusRequest::default())
        .await
        .unwrap()
        .into_inner();
    let node = status.config[0].node.clone().unwrap();
    assert_eq!(
        (node.id.as_str(), node.user_agent_name.as_str()),
        ("nginx-1", "dualstack-xds-nginx")
    );
    assert!(status.config[0]
        .generic_xds_configs
        .iter()
        .any(|c| c.name == "shop/echo:80:ipv4"));

    // Claiming the IPv6 fleet with the IPv4 fleet's certificate: refused, nothing
    // written.
    let (wrong, mut impostor) = nginx_agent(
        dir,
        "nginx-9",
        &certs.join("ingress-ipv4"),
        "ingress-ipv6",
        serve.xds,
    );
    eventually("the refusal is counted", WAIT, || async {
        (serve
            .metric("dualstack_xds_authorization_denied_total{reason=\"mismatch\"}")
            .await
            >= 1)
            .then_some(())
    })
    .await;
    let log = eventually("the agent reports it", WAIT, || async {
        std::fs::read_to_string(wrong.join("agent.log"))
            .ok()
            .filter(|l| l.contains("xDS stream failed"))
    })
    .await;
    assert!(log.contains("nginx-9"), "{log}");
    assert!(
        !std::fs::read_to_string(wrong.join("run/stream.conf"))
            .unwrap_or_default()
            .contains("listen"),
        "nothing served to the impostor"
    );
    for child in [&mut agent, &mut impostor] {
        let _ = child.kill();
        let _ = child.wait();
    }
}
