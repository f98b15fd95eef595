//! Operating it: the admin endpoints, metrics, the `status` and `bootstrap` commands, and
//! every Envoy bootstrap checked by `envoy --mode validate`, with the real binary and a
//! real Envoy.

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;
use serde_json::Value;

fn binary() -> Command {
    Command::new(env!("CARGO_BIN_EXE_dualstack-xds"))
}

fn validate(path: &std::path::Path) {
    let out = Command::new(envoy_binary())
        .args(["--mode", "validate", "--disable-hot-restart", "-c"])
        .arg(path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "envoy rejects {}: {}{}",
        path.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn bootstrap(args: &[&str]) -> String {
    let out = binary().arg("bootstrap").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn every_envoy_bootstrap_passes_envoy_validate() {
    let dir = tempfile::tempdir().unwrap();
    // The fleet bootstraps in envoy/ are `bootstrap`'s output, with mTLS from the
    // mounted Secret through the SDS files beside them.
    let certs = dir.path().join("certs");
    common::run_binary(&[
        "certs",
        "--out",
        certs.to_str().unwrap(),
        "--fleet",
        "ingress-ipv4",
    ]);
    let sds = dir.path().join("sds");
    std::fs::create_dir(&sds).unwrap();
    bootstrap(&[
        "--tls-dir",
        "/etc/dualstack-xds/tls",
        "--sds-dir",
        sds.to_str().unwrap(),
        "--write-sds",
    ]);
    for name in ["xds-client-certificate.yaml", "xds-server-ca.yaml"] {
        let text = std::fs::read_to_string(sds.join(name)).unwrap();
        assert_eq!(
            std::fs::read_to_string(repo_path("envoy").join(name)).unwrap(),
            text,
            "envoy/{name} is not what `bootstrap --write-sds` writes"
        );
        // As the pod sees it, in this sandbox.
        let local = text.replace(
            "/etc/dualstack-xds/tls",
            certs.join("ingress-ipv4").to_str().unwrap(),
        );
        std::fs::write(sds.join(name), local).unwrap();
    }
    for (name, families) in [("ipv4", "IPv4"), ("ipv6", "IPv6"), ("dual", "IPv4,IPv6")] {
        let node = format!("ingress-{name}");
        let generated = bootstrap(&[
            "--node-id",
            &node,
            "--cluster",
            &node,
            "--families",
            families,
            "--delta",
            "--admin-address",
            "0.0.0.0:9901",
            "--tls-dir",
            "/etc/dualstack-xds/tls",
            "--sds-dir",
            "/etc/envoy",
        ]);
        let file = repo_path(&format!("envoy/ingress-{name}.yaml"));
        assert_eq!(
            std::fs::read_to_string(&file).unwrap(),
            generated,
            "envoy/ingress-{name}.yaml is not what `bootstrap` prints"
        );
        let local = generated
            .replace("/etc/envoy", sds.to_str().unwrap())
            .replace(
                "/etc/dualstack-xds/tls",
                certs.join("ingress-ipv4").to_str().unwrap(),
            );
        let path = dir.path().join(format!("ingress-{name}.yaml"));
        std::fs::write(&path, local).unwrap();
        validate(&path);
    }
    for file in ["envoy/ads-sotw.yaml", "envoy/ads-delta.yaml"] {
        validate(&repo_path(file));
    }
    for (i, args) in [
        vec![],
        vec!["--delta"],
        vec![
            "--families",
            "IPv6",
            "--xds-address",
            "[::1]:18000",
            "--admin-address",
            "[::1]:9901",
        ],
    ]
    .into_iter()
    .enumerate()
    {
        let path = dir.path().join(format!("bootstrap-{i}.yaml"));
        std::fs::write(&path, bootstrap(&args)).unwrap();
        validate(&path);
    }
    let grpc: Value = serde_json::from_str(&bootstrap(&[
        "--grpc",
        "--node-id",
        "app-1",
        "--xds-address",
        "127.0.0.1:18000",
    ]))
    .unwrap();
    assert_eq!(grpc["xds_servers"][0]["server_uri"], "127.0.0.1:18000");
    assert_eq!(grpc["node"]["id"], "app-1");
}

#[test]
fn bad_flags_and_addresses_exit_2_with_a_message() {
    for args in [
        vec!["serve", "--debounce", "soon"],
        vec!["serve", "--manifests", "examples", "--kubeconfig", "k"],
        vec!["bootstrap", "--families", "IPv5"],
        vec!["bootstrap", "--grpc", "--delta"],
        vec!["status", "--admin-addr", "nowhere"],
    ] {
        let out = binary().args(&args).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(!out.stderr.is_empty(), "{args:?}: a message");
    }
    let out = binary()
        .args(["bootstrap", "--xds-address", "fd00::1:18000"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("brackets"));
}

/// The echo Service and its slice; with `broken`, a second slice whose IPv4 address in an
/// IPv6 slice gets it skipped with a reason (without, that slice is empty).
fn write_manifests(
    dir: &std::path::Path,
    listener_port: u16,
    backend: std::net::SocketAddr,
    broken: bool,
) {
    let broken_slice = manifests::slice("shop", "echo-broken", "echo", "IPv6").port("tcp", 80);
    let objects = [
        manifests::service("shop", "echo")
            .annotate(
                "dualstack-xds.io/listener-ports",
                &format!("80={listener_port}"),
            )
            .port("tcp", 80),
        manifests::slice("shop", "echo-v4", "echo", "IPv4")
            .port("tcp", backend.port())
            .endpoint(&backend.ip().to_string()),
        if broken {
            broken_slice.endpoint("10.9.9.9")
        } else {
            broken_slice
        },
    ];
    std::fs::write(dir.join("app.yaml"), manifests::yaml(&objects)).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_endpoints_status_and_metrics_describe_a_live_envoy() {
    let backend = echo_server("echo:").await;
    let listener_port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let config = tempfile::tempdir().unwrap();
    write_manifests(config.path(), listener_port, backend, true);
    let serve = ServeProcess::start(
        dir,
        &["--manifests".into(), config.path().display().to_string()],
    );
    serve.wait_ready().await;
    let envoy = Envoy::start("envoy/ads-sotw.yaml", serve.xds, "edge-1").await;
    envoy
        .wait_stat("listener_manager.lds.update_success", 1)
        .await;
    let ingress: std::net::SocketAddr = format!("127.0.0.1:{listener_port}").parse().unwrap();
    eventually("traffic through Envoy", Duration::from_secs(20), || {
        tcp_roundtrip(ingress, "hi")
    })
    .await;

    // /debug/clients: who is connected, what it acked.
    let clients: Value = eventually("an acked client", Duration::from_secs(10), || async {
        let (_, body) = serve.get("/debug/clients").await?;
        let clients: Value = serde_json::from_str(&body).ok()?;
        let lds = clients[0]["types"]
            .as_array()?
            .iter()
            .find(|t| {
                t["type_url"]
                    .as_str()
                    .is_some_and(|u| u.ends_with("Listener"))
            })?
            .clone();
        (!lds["acked_version"].is_null()).then_some(clients)
    })
    .await;
    let client = &clients[0];
    assert_eq!(client["node_id"], "edge-1");
    assert_eq!(client["cluster"], "dualstack-ingress");
    assert_eq!(client["group"], "IPv4,IPv6");
    assert_eq!(client["kind"], "sotw");
    assert_eq!(client["aggregated"], true);

    // /debug/resources: what is served, with versions, and what was left out and why.
    let (_, body) = serve.get("/debug/resources").await.unwrap();
    let resources: Value = serde_json::from_str(&body).unwrap();
    let group = &resources["groups"]["IPv4,IPv6"];
    let cluster = &group["clusters"]["resources"][0];
    assert_eq!(cluster["name"], "shop/echo:80");
    assert_eq!(cluster["version"].as_str().unwrap().len(), 11);
    assert_eq!(
        cluster["resource"]["@type"],
        "type.googleapis.com/envoy.config.cluster.v3.Cluster"
    );
    assert_eq!(group["listeners"]["resources"].as_array().unwrap().len(), 2);
    let skipped = resources["skipped"].as_array().unwrap();
    assert_eq!(skipped.len(), 1, "{skipped:?}");
    assert_eq!(skipped[0]["name"], "echo-broken");
    assert!(skipped[0]["reason"].as_str().unwrap().contains("10.9.9.9"));

    // `status`: one row per client.
    let out = binary()
        .args(["status", "--admin-addr", &serve.admin.to_string()])
        .output()
        .unwrap();
    let table = String::from_utf8(out.stdout).unwrap();
    assert!(out.status.success());
    let row = table
        .lines()
        .find(|l| l.starts_with("edge-1"))
        .unwrap_or_else(|| panic!("{table}"));
    assert!(
        row.contains("IPv4,IPv6") && row.contains("sotw ads"),
        "{table}"
    );
    let lds_acked = clients[0]["types"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["type_url"].as_str().unwrap().ends_with("Listener"))
        .unwrap()["acked_version"]
        .as_str()
        .unwrap()[..8]
        .to_string();
    assert!(row.contains(&lds_acked), "{table}");

    // A change: the change-to-push histogram and the publish counter move.
    let publishes = serve.metric("dualstack_xds_snapshot_publishes_total").await;
    write_manifests(config.path(), listener_port, backend, false);
    eventually(
        "a publication after the edit",
        Duration::from_secs(10),
        || async {
            (serve.metric("dualstack_xds_snapshot_publishes_total").await > publishes).then_some(())
        },
    )
    .await;
    let (_, metrics) = serve.get("/metrics").await.unwrap();
    for expected in [
        "dualstack_xds_connected_clients{kind=\"sotw\"} 1",
        "dualstack_xds_endpoints{family=\"IPv4\"} 1",
        "dualstack_xds_skipped_objects 0",
        "dualstack_xds_watch_errors_total{kind=\"EndpointSlice\"} 0",
    ] {
        assert!(metrics.contains(expected), "{expected} missing:\n{metrics}");
    }
    assert!(
        serve.metric("dualstack_xds_responses_total").await >= 3,
        "cds, eds, lds"
    );
    assert!(
        serve
            .metric("dualstack_xds_translation_seconds_count")
            .await
            >= 2
    );
    assert!(
        serve
            .metric("dualstack_xds_change_to_push_seconds_count")
            .await
            >= 1
    );
    assert!(
        serve.log().contains("\"node_id\":\"edge-1\""),
        "the stream span carries the node id"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_debug_views_stay_on_loopback_unless_a_flag_opens_them() {
    let config = tempfile::tempdir().unwrap();
    write_manifests(
        config.path(),
        free_port(),
        "127.0.0.1:7".parse().unwrap(),
        false,
    );
    let port = free_port();
    let debug = free_port();
    // The admin address on every interface, as the deploy has it (probes, metrics).
    let serve = ServeProcess::start_on(
        tempfile::tempdir().unwrap(),
        &[
            "--manifests".into(),
            config.path().display().to_string(),
            "--debug-addr".into(),
            format!("127.0.0.1:{debug}"),
        ],
        format!("127.0.0.1:{}", free_port()).parse().unwrap(),
        format!("0.0.0.0:{port}").parse().unwrap(),
    );
    serve.wait_ready().await;
    for path in ["/healthz", "/readyz", "/metrics"] {
        assert_eq!(serve.get(path).await.unwrap().0, 200, "{path}");
    }
    for path in ["/debug/clients", "/debug/resources"] {
        assert_eq!(
            serve.get(path).await.unwrap().0,
            404,
            "{path} is not served on a non-loopback admin address"
        );
        let url = format!("http://127.0.0.1:{debug}{path}");
        let status = reqwest::get(url).await.unwrap().status().as_u16();
        assert_eq!(status, 200, "{path} on --debug-addr");
    }
}
