//! Proxyless gRPC clients, with grpcio's own xDS client (Python, from the test rig):
//! `xds:///SERVICE.NAMESPACE:PORT` and the `.svc.cluster.local` form resolve through the
//! server, calls follow the primary family (a flip moves them with no failed RPC), an
//! endpoint change reaches the client, and a resource the client rejects is reported.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use common::python::{greeter, Py};
use common::*;
use dualstack_xds::snapshot::{ResourceType, Snapshot, SnapshotSet};
use dualstack_xds::translate::{self, PROXYLESS_GROUP};
use envoy_types::pb::envoy::config::core::v3::{
    config_source, AggregatedConfigSource, ConfigSource,
};
use envoy_types::pb::envoy::config::listener::v3::{ApiListener, Listener};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    http_connection_manager, HttpConnectionManager, Rds,
};
use envoy_types::pb::google::protobuf::Any;
use prost::{Message, Name};

const WAIT: Duration = Duration::from_secs(30);

fn write_manifests(dir: &std::path::Path, family: &str, v4_port: u16, v6_port: u16) {
    std::fs::write(
        dir.join("config.yaml"),
        manifests::yaml(&[manifests::config_map(family)]),
    )
    .unwrap();
    let pod = serde_json::json!({"kind": "Pod", "name": "greeter-0", "namespace": "shop"});
    let objects = [
        manifests::service("shop", "greeter")
            .annotate("dualstack-xds.io/ingress", "false")
            .app_port("grpc", 50051, "grpc"),
        manifests::slice("shop", "greeter-v4", "greeter", "IPv4")
            .port("grpc", v4_port)
            .endpoint_with(serde_json::json!({"addresses": ["127.0.0.1"], "targetRef": pod})),
        manifests::slice("shop", "greeter-v6", "greeter", "IPv6")
            .port("grpc", v6_port)
            .endpoint_with(serde_json::json!({"addresses": ["::1"], "targetRef": pod})),
    ];
    std::fs::write(dir.join("greeter.yaml"), manifests::yaml(&objects)).unwrap();
}

/// A gRPC xDS bootstrap file written by `bootstrap --grpc`, with `extra` arguments.
fn grpc_bootstrap_with(dir: &std::path::Path, node: &str, xds: &str, extra: &[&str]) -> String {
    let mut args = vec![
        "bootstrap",
        "--grpc",
        "--node-id",
        node,
        "--xds-address",
        xds,
    ];
    args.extend(extra);
    let path = dir.join(format!("{node}.json"));
    std::fs::write(&path, run_binary(&args)).unwrap();
    path.display().to_string()
}

fn grpc_bootstrap(dir: &std::path::Path, node: &str, xds: SocketAddr) -> String {
    grpc_bootstrap_with(dir, node, &xds.to_string(), &[])
}

const TARGETS: [&str; 2] = [
    "xds:///greeter.shop:50051",
    "xds:///greeter.shop.svc.cluster.local:50051",
];

/// Waits until every target's latest answers (the last `n` per target) are `tag`.
async fn answering(client: &Py, tag: &str, from: usize) {
    eventually(&format!("every target answered by {tag}"), WAIT, || async {
        let lines = client.lines();
        let recent: Vec<&String> = lines[from.min(lines.len())..].iter().collect();
        TARGETS
            .iter()
            .all(|t| {
                let mine: Vec<&&String> = recent
                    .iter()
                    .filter(|l| l.contains(&format!(" {t} ")))
                    .collect();
                mine.len() >= 3
                    && mine[mine.len() - 3..]
                        .iter()
                        .all(|l| l.ends_with(&format!(" {tag}")))
            })
            .then_some(())
    })
    .await;
}

fn errors(client: &Py) -> Vec<String> {
    client
        .lines()
        .into_iter()
        .filter(|l| l.starts_with("ERR"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpcio_resolves_xds_targets_and_follows_the_primary_family() {
    let (_v4, v4_port) = greeter("127.0.0.1", "v4").await;
    let (_v6, v6_port) = greeter("[::1]", "v6").await;
    let (_v6b, v6b_port) = greeter("[::1]", "v6b").await;
    let config = tempfile::tempdir().unwrap();
    write_manifests(config.path(), "IPv4", v4_port, v6_port);
    let serve = ServeProcess::start(
        tempfile::tempdir().unwrap(),
        &["--manifests".into(), config.path().display().to_string()],
    );
    serve.wait_ready().await;
    let bootstrap = grpc_bootstrap(config.path(), "py-client", serve.xds);
    let client = Py::start(
        "client.py",
        &TARGETS,
        &[("GRPC_XDS_BOOTSTRAP", bootstrap.as_str())],
    );

    // Both target forms resolve; IPv4-primary calls reach the IPv4 server.
    answering(&client, "v4", 0).await;
    assert!(errors(&client).is_empty(), "{:?}", errors(&client));

    // Flip to IPv6-primary: calls move to the IPv6 server, none fails.
    let mark = client.lines().len();
    write_manifests(config.path(), "IPv6", v4_port, v6_port);
    answering(&client, "v6", mark).await;
    assert!(
        errors(&client).is_empty(),
        "a failed RPC during the flip: {:?}",
        errors(&client)
    );

    // An endpoint change reaches the client.
    let mark = client.lines().len();
    write_manifests(config.path(), "IPv6", v4_port, v6b_port);
    answering(&client, "v6b", mark).await;
    assert!(errors(&client).is_empty(), "{:?}", errors(&client));

    // The client is a gRPC client to the server, subscribed by name (grpcio keeps one
    // xDS client per target, so one stream each).
    let (_, body) = serve.get("/debug/clients").await.unwrap();
    let clients: serde_json::Value = serde_json::from_str(&body).unwrap();
    let mine: Vec<&serde_json::Value> = clients
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["node_id"] == "py-client")
        .collect();
    assert!(!mine.is_empty(), "{clients}");
    let mut listener_names = 0;
    for stream in mine {
        assert_eq!(stream["group"], PROXYLESS_GROUP);
        let lds = stream["types"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["type_url"].as_str().unwrap().ends_with("Listener"))
            .unwrap();
        assert_eq!(lds["wildcard"], false, "gRPC subscribes by name");
        listener_names += lds["subscribed_names"].as_u64().unwrap();
    }
    assert_eq!(listener_names, 2, "one listener per target form");
}

fn any<M: Message + Name>(m: &M) -> Any {
    Any {
        type_url: M::type_url(),
        value: m.encode_to_vec(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resource_grpc_rejects_is_reported_as_a_nack() {
    let server = start_server_with(std::sync::Arc::new(translate::node_group)).await;
    // An api_listener without the router filter: gRFC A39 makes the client reject it.
    let hcm = HttpConnectionManager {
        route_specifier: Some(http_connection_manager::RouteSpecifier::Rds(Rds {
            config_source: Some(ConfigSource {
                resource_api_version: 2,
                config_source_specifier: Some(config_source::ConfigSourceSpecifier::Ads(
                    AggregatedConfigSource {},
                )),
                ..Default::default()
            }),
            route_config_name: "bad-route".into(),
        })),
        http_filters: vec![],
        ..Default::default()
    };
    let listener = Listener {
        name: "bad.shop:1".into(),
        api_listener: Some(ApiListener {
            api_listener: Some(any(&hcm)),
        }),
        ..Default::default()
    };
    let mut b = Snapshot::builder();
    b.upsert(&listener)
        .upsert(&common::fixtures::route_to("bad-route", "nowhere"));
    let mut set = SnapshotSet::default();
    set.insert(PROXYLESS_GROUP, b.build().unwrap());
    server.cache.publish(set);
    let dir = tempfile::tempdir().unwrap();
    let bootstrap = grpc_bootstrap(dir.path(), "py-nack", server.addr);
    let client = Py::start(
        "client.py",
        &["xds:///bad.shop:1"],
        &[("GRPC_XDS_BOOTSTRAP", bootstrap.as_str())],
    );
    // Served as operators read it: /debug/clients on the admin API.
    let admin = dualstack_xds::admin::Admin {
        pipeline: Default::default(),
        registry: Arc::new(prometheus_client::registry::Registry::default()),
        cache: server.cache.clone(),
        clients: server.registry.clone(),
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin_addr = listener.local_addr().unwrap();
    tokio::spawn(admin.serve(listener));
    let message = eventually("the client's NACK in /debug/clients", WAIT, || async {
        let body = reqwest::get(format!("http://{admin_addr}/debug/clients"))
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        let clients: serde_json::Value = serde_json::from_str(&body).ok()?;
        clients
            .as_array()?
            .iter()
            .filter(|c| c["node_id"] == "py-nack")
            .flat_map(|c| c["types"].as_array().cloned().unwrap_or_default())
            .find(|t| t["type_url"] == ResourceType::Listener.type_url())?["last_nack"]["message"]
            .as_str()
            .map(str::to_owned)
    })
    .await;
    assert!(
        message.to_lowercase().contains("router") || message.contains("filter"),
        "the NACK carries the client's reason: {}",
        message
    );
    assert_eq!(server.registry.metrics.nacks(ResourceType::Listener), 1);
    drop(client);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpcio_over_mtls_with_its_fleet_certificate() {
    let (_v4, v4_port) = greeter("127.0.0.1", "v4").await;
    let (_v6, v6_port) = greeter("[::1]", "v6").await;
    let config = tempfile::tempdir().unwrap();
    write_manifests(config.path(), "IPv4", v4_port, v6_port);
    let certs = tempfile::tempdir().unwrap();
    let dir = certs.path().display().to_string();
    run_binary(&[
        "certs",
        "--out",
        &dir,
        "--fleet",
        "grpc-clients",
        "--fleet",
        "batch-jobs",
    ]);
    let server = |file: &str| format!("{dir}/server/{file}");
    let serve = ServeProcess::start(
        tempfile::tempdir().unwrap(),
        &[
            "--manifests".into(),
            config.path().display().to_string(),
            "--tls-cert".into(),
            server("tls.crt"),
            "--tls-key".into(),
            server("tls.key"),
            "--tls-client-ca".into(),
            server("ca.crt"),
        ],
    );
    serve.wait_ready().await;
    let xds = serve.xds.to_string();
    // The grpc-clients fleet's certificate, and a node of that fleet: served.
    let bootstrap = grpc_bootstrap_with(
        config.path(),
        "py-tls",
        &xds,
        &[
            "--cluster",
            "grpc-clients",
            "--tls-dir",
            &format!("{dir}/grpc-clients"),
        ],
    );
    let client = Py::start(
        "client.py",
        &TARGETS,
        &[("GRPC_XDS_BOOTSTRAP", bootstrap.as_str())],
    );
    answering(&client, "v4", 0).await;
    assert!(errors(&client).is_empty(), "{:?}", errors(&client));

    // Another fleet's certificate claiming grpc-clients: refused, no RPC resolves.
    let impostor = grpc_bootstrap_with(
        config.path(),
        "py-impostor",
        &xds,
        &[
            "--cluster",
            "grpc-clients",
            "--tls-dir",
            &format!("{dir}/batch-jobs"),
        ],
    );
    let refused = Py::start(
        "client.py",
        &TARGETS,
        &[("GRPC_XDS_BOOTSTRAP", impostor.as_str())],
    );
    eventually("the impostor's refusal is counted", WAIT, || async {
        (serve
            .metric("dualstack_xds_authorization_denied_total{reason=\"mismatch\"}")
            .await
            >= 1)
            .then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        !refused.lines().iter().any(|l| l.starts_with("OK")),
        "{:?}",
        refused.lines()
    );
}
