//! Many Services behind one public port, through a real Envoy across single-family hosts
//! (`common::netns`): Host routing on a shared HTTP port, TLS passthrough by SNI and TLS
//! termination with certificates over SDS on a shared TLS port, NAT64 then NAT46 through
//! each, with `curl --resolve` and `openssl s_client` as the clients. Needs root.

mod common;

use std::path::Path;
use std::process::Output;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::manifests::{self, Object};
use common::netns::*;
use common::tls::{serve_https, Issued, KeepAliveClient, TestCa};
use common::*;
use dualstack_xds::model::Family;
use dualstack_xds::server::{ClientRegistry, XdsServer};
use dualstack_xds::snapshot::SnapshotCache;
use dualstack_xds::translate::node_group;

/// The shared listener ports on the ingress.
const HTTP: u16 = 11080;
const TLS: u16 = 11443;
/// Backend ports, one per Service (every backend host runs all of them).
const BACKENDS: [(&str, u16); 7] = [
    ("shop", 7101),
    ("blog", 7102),
    ("wild", 7103),
    ("twin", 7104),
    ("vault", 7201),
    ("mail", 7202),
    ("pay", 7301),
];
const API_PORT: u16 = 7302;

fn port_of(name: &str) -> u16 {
    match name {
        "api" => API_PORT,
        _ => BACKENDS.iter().find(|(n, _)| *n == name).unwrap().1,
    }
}

fn leak(s: String) -> &'static str {
    Box::leak(s.into_boxed_str())
}

/// Certificates: the passthrough backends' own, and the ingress's for terminated hosts.
struct Certs {
    ca: TestCa,
    vault: Issued,
    mail: Issued,
    pay: Issued,
    api: Issued,
}

fn start_backends(hosts: &Hosts, certs: &Certs) {
    for (role, any) in [("b4", "0.0.0.0"), ("b6", "::")] {
        let ns = hosts.ns(role);
        for name in ["shop", "blog", "wild", "twin", "pay", "api"] {
            serve_http_headers(
                bind_tcp(&ns, sa(any, port_of(name))),
                leak(format!("{name}-{role}")),
            );
        }
        for (name, issued) in [("vault", &certs.vault), ("mail", &certs.mail)] {
            serve_https(
                bind_tcp(&ns, sa(any, port_of(name))),
                issued,
                leak(format!("{name}-{role} (its own TLS)")),
            );
        }
    }
}

/// Every Service of the test: three routed by Host on HTTP (one a wildcard), one
/// claiming a host another holds, two passed through by SNI, two terminated, one naming
/// a Secret that does not exist.
fn write_manifests(dir: &Path, primary: &str, certs: &Certs, pay_cert: &Issued, mail_hosts: &str) {
    let http = |name: &str, hosts: &str| {
        manifests::service("t", name)
            .annotate("dualstack-xds.io/listener-ports", &format!("80={HTTP}"))
            .annotate("dualstack-xds.io/hosts", hosts)
            .app_port("web", 80, "http")
    };
    let tls = |name: &str, hosts: &str, mode: &str| {
        manifests::service("t", name)
            .annotate("dualstack-xds.io/listener-ports", &format!("443={TLS}"))
            .annotate("dualstack-xds.io/hosts", hosts)
            .annotate("dualstack-xds.io/tls", mode)
            .port("https", 443)
    };
    let terminate = |name: &str, hosts: &str, secret: &str| {
        tls(name, hosts, "terminate").annotate("dualstack-xds.io/tls-secret", secret)
    };
    let mut objects: Vec<Object> = vec![
        manifests::config_map(primary),
        http("shop", "shop.example.com"),
        http("blog", "blog.example.com,www.blog.example.com"),
        http("wild", "*.example.com"),
        // "shop" comes first by name and keeps shop.example.com; twin keeps its other host.
        http("twin", "shop.example.com,twin.example.org"),
        tls("vault", "vault.example.com", "passthrough"),
        tls("mail", mail_hosts, "passthrough"),
        terminate("pay", "pay.example.com", "pay-tls"),
        terminate("api", "api.example.com", "api-tls"),
        terminate("orphan", "orphan.example.com", "no-such-secret"),
        manifests::tls_secret("t", "pay-tls", &pay_cert.cert, &pay_cert.key),
        manifests::tls_secret("t", "api-tls", &certs.api.cert, &certs.api.key),
    ];
    for (name, port) in BACKENDS.iter().copied().chain([("api", API_PORT)]) {
        for (family, addr) in [("IPv4", B4), ("IPv6", B6)] {
            objects.push(
                manifests::slice("t", &format!("{name}-{family}"), name, family)
                    .port(if port > 7200 { "https" } else { "web" }, port)
                    .endpoint(addr),
            );
        }
    }
    std::fs::write(dir.join("all.yaml"), manifests::yaml(&objects)).unwrap();
}

const MAIL: &str = "mail.example.com";

/// The ingress address a client namespace reaches, as `--resolve` takes it.
fn ingress_for(client: &str) -> &'static str {
    if client.ends_with("c6") {
        "[fd64:6::1]"
    } else {
        ING_C4
    }
}

/// `curl` from `client` to `https?://host:port/` resolved to the ingress; extra args
/// first. Prints the body, then a line with the status and the HTTP version.
fn curl(client: &str, scheme: &str, host: &str, port: u16, extra: &[&str]) -> Output {
    let resolve = format!("{host}:{port}:{}", ingress_for(client));
    let url = format!("{scheme}://{host}:{port}/");
    let mut args = vec![
        "-sS",
        "--max-time",
        "5",
        "--resolve",
        &resolve,
        "-w",
        "\n%{http_code} %{http_version}",
    ];
    args.extend_from_slice(extra);
    args.push(&url);
    run_in(client, "curl", &args)
}

/// The body and "STATUS VERSION" of a curl that must succeed.
fn fetch(client: &str, scheme: &str, host: &str, port: u16, extra: &[&str]) -> (String, String) {
    let out = curl(client, scheme, host, port, extra);
    assert!(
        out.status.success(),
        "curl {host}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let (body, status) = text.rsplit_once('\n').unwrap();
    (body.to_owned(), status.to_owned())
}

/// The certificate a TLS client sees for SNI `host` (`openssl s_client`), PEM, or the
/// error when the handshake fails.
fn s_client(client: &str, host: &str) -> Result<String, String> {
    let connect = match ingress_for(client) {
        "[fd64:6::1]" => format!("[{ING_C6}]:{TLS}"),
        v4 => format!("{v4}:{TLS}"),
    };
    let out = run_in(
        client,
        "sh",
        &[
            "-c",
            &format!("openssl s_client -connect '{connect}' -servername '{host}' </dev/null"),
        ],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    match (
        stdout.find("-----BEGIN CERTIFICATE-----"),
        stdout.find("-----END CERTIFICATE-----"),
    ) {
        (Some(a), Some(b)) if out.status.success() => Ok(stdout[a..b + 25].to_owned()),
        _ => Err(format!("{stdout}{}", String::from_utf8_lossy(&out.stderr))),
    }
}

fn same_cert(pem: &str, issued: &Issued) -> bool {
    let normalize = |s: &str| s.split_whitespace().collect::<String>();
    normalize(pem) == normalize(&issued.cert)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_services_share_one_http_port_and_one_tls_port_across_families() {
    let hosts = Hosts::create();
    let (ing, c4, c6) = (hosts.ns("ing"), hosts.ns("c4"), hosts.ns("c6"));
    let ca = TestCa::new();
    let certs = Certs {
        vault: ca.issue(&["vault.example.com"]),
        mail: ca.issue(&["mail.example.com"]),
        pay: ca.issue(&["pay.example.com"]),
        api: ca.issue(&["api.example.com"]),
        ca,
    };
    start_backends(&hosts, &certs);
    let work = tempfile::tempdir().unwrap();
    let ca_file = work.path().join("ca.pem");
    std::fs::write(&ca_file, certs.ca.pem()).unwrap();
    let ca_file = ca_file.display().to_string();

    let xds = bind_tcp(&ing, sa("127.0.0.1", 0));
    let xds_addr = xds.local_addr().unwrap();
    let cache = SnapshotCache::new();
    let server = XdsServer::new(cache.clone(), Arc::new(node_group), ClientRegistry::new());
    tokio::spawn(server.serve(xds, std::future::pending()));
    let dir = tempfile::tempdir().unwrap();
    write_manifests(dir.path(), "IPv4", &certs, &certs.pay, MAIL);
    let mut manifests = ManifestPublisher::reporting(dir.path(), Family::IPv4, &cache);
    // Reported, and everything else served.
    let skipped = manifests.skipped();
    assert_eq!(skipped.len(), 2, "{skipped:?}");
    assert!(skipped
        .iter()
        .any(|s| s.starts_with("twin:") && s.contains("shop.example.com")));
    assert!(skipped
        .iter()
        .any(|s| s.starts_with("orphan:") && s.contains("no-such-secret")));

    let envoy = Envoy::start_in_netns(&ing, "envoy/ads-sotw.yaml", xds_addr, "ingress").await;
    envoy
        .wait_stat("listener_manager.lds.update_success", 1)
        .await;
    eventually(
        "the shared listeners up",
        Duration::from_secs(30),
        || async {
            let out = curl(&c6, "http", "shop.example.com", HTTP, &[]);
            out.status.success().then_some(())
        },
    )
    .await;

    // NAT64, then (after the flip) NAT46: every mode reaches the primary family's pods.
    for (client, backend) in [(&c6, "b4"), (&c4, "b4")] {
        // Host routing: exact hosts, a wildcard, exact beats wildcard, unknown is 404.
        for (host, service) in [
            ("shop.example.com", "shop"),
            ("blog.example.com", "blog"),
            ("www.blog.example.com", "blog"),
            ("other.example.com", "wild"),
            ("twin.example.org", "twin"),
        ] {
            let (body, status) = fetch(client, "http", host, HTTP, &[]);
            assert!(
                body.starts_with(&format!("{service}-{backend} xff=")),
                "{host} from {client}: {body}"
            );
            assert_eq!(status, "200 1.1");
        }
        let (_, status) = fetch(client, "http", "unknown.org", HTTP, &[]);
        assert_eq!(status, "404 1.1", "an unknown host");
        // SNI passthrough: the backend's own certificate, end to end.
        for service in ["vault", "mail"] {
            let host = format!("{service}.example.com");
            let (body, _) = fetch(client, "https", &host, TLS, &["--cacert", &ca_file]);
            assert_eq!(body, format!("{service}-{backend} (its own TLS)"));
        }
        // Termination: HTTP/2 and HTTP/1.1 by ALPN, the client's address and the scheme.
        let client_addr = if client.ends_with("c6") { C6 } else { C4 };
        for service in ["pay", "api"] {
            let host = format!("{service}.example.com");
            for (flag, version) in [("--http2", "2"), ("--http1.1", "1.1")] {
                let (body, status) =
                    fetch(client, "https", &host, TLS, &["--cacert", &ca_file, flag]);
                assert_eq!(
                    body,
                    format!("{service}-{backend} xff={client_addr} proto=https")
                );
                assert_eq!(status, format!("200 {version}"));
            }
        }
        // A request for another host on a terminated connection (HTTP/2 connection
        // coalescing): 421, never another Service's backend.
        let (_, status) = fetch(
            client,
            "https",
            "pay.example.com",
            TLS,
            &["--cacert", &ca_file, "-H", "host: api.example.com"],
        );
        assert_eq!(status, "421 2", "misdirected");
        // Unknown SNI, and the orphan whose Secret is missing: the connection is closed.
        for host in ["nobody.example.com", "orphan.example.com"] {
            let result = s_client(client, host);
            assert!(result.is_err(), "{host}: {result:?}");
        }
        assert!(same_cert(
            &s_client(client, "pay.example.com").unwrap(),
            &certs.pay
        ));
    }

    // Secret rotation: an SDS push, no listener drain, no failed request in flight.
    let listener_stats = [
        "listener_manager.lds.update_success",
        "listener_manager.listener_modified",
        "listener_manager.listener_removed",
        "listener_manager.total_filter_chains_draining",
        "listener_manager.total_listeners_draining",
    ];
    let mut before = Vec::new();
    for stat in listener_stats {
        before.push(envoy.stat(stat).await);
    }
    let mut kept =
        KeepAliveClient::connect(&c6, sa(ING_C6, TLS), "pay.example.com", certs.ca.pem()).await;
    assert_eq!(kept.peer_certificate(), certs.pay.der());
    assert_eq!(
        kept.get("pay.example.com").await.unwrap(),
        format!("pay-b4 xff={C6} proto=https")
    );
    let failures = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let load = {
        let (c6, ca_file, failures, stop) =
            (c6.clone(), ca_file.clone(), failures.clone(), stop.clone());
        tokio::task::spawn_blocking(move || {
            let mut sent = 0;
            while !stop.load(Ordering::Relaxed) {
                sent += 1;
                let out = curl(
                    &c6,
                    "https",
                    "pay.example.com",
                    TLS,
                    &["--cacert", &ca_file],
                );
                if !out.status.success() {
                    failures.fetch_add(1, Ordering::Relaxed);
                }
            }
            sent
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let rotated = certs.ca.issue(&["pay.example.com"]);
    write_manifests(dir.path(), "IPv4", &certs, &rotated, MAIL);
    manifests.publish();
    eventually(
        "the rotated certificate served",
        Duration::from_secs(20),
        || async {
            let pem = s_client(&c6, "pay.example.com").ok()?;
            same_cert(&pem, &rotated).then_some(())
        },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    let sent = load.await.unwrap();
    assert_eq!(
        failures.load(Ordering::Relaxed),
        0,
        "requests failed during the rotation (of {sent})"
    );
    assert!(sent >= 3, "the load ran across the rotation ({sent})");
    for (stat, before) in listener_stats.iter().zip(&before) {
        assert_eq!(
            envoy.stat(stat).await,
            *before,
            "{stat}: the rotation touched a listener"
        );
    }
    // The connection made before the rotation still works (with the old certificate).
    assert_eq!(
        kept.get("pay.example.com").await.unwrap(),
        format!("pay-b4 xff={C6} proto=https")
    );

    // Another Service's hosts change: the listener is updated in place, only that
    // Service's filter chain drains, and the kept connection goes on.
    let in_place = envoy
        .stat("listener_manager.listener_in_place_updated")
        .await;
    write_manifests(
        dir.path(),
        "IPv4",
        &certs,
        &rotated,
        "mail.example.com,smtp.example.com",
    );
    manifests.publish();
    let (body, _) = eventually("the new host served", Duration::from_secs(20), || async {
        let out = curl(
            &c6,
            "https",
            "smtp.example.com",
            TLS,
            &["--cacert", &ca_file, "-k"],
        );
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
            .map(|b| (b, ()))
    })
    .await;
    assert!(body.starts_with("mail-b4 (its own TLS)"), "{body}");
    assert_eq!(
        envoy
            .stat("listener_manager.listener_in_place_updated")
            .await,
        in_place + 2,
        "both families' listeners updated in place"
    );
    assert_eq!(
        kept.get("pay.example.com").await.unwrap(),
        format!("pay-b4 xff={C6} proto=https")
    );

    // The flip: EDS only, for every mode.
    let cds = envoy.stat("cluster_manager.cds.update_success").await;
    let lds = envoy.stat("listener_manager.lds.update_success").await;
    let rds: u64 = envoy.stat_sum(r"\.rds\..*\.update_success$").await;
    assert!(rds > 0, "RDS counters are read");
    write_manifests(
        dir.path(),
        "IPv6",
        &certs,
        &rotated,
        "mail.example.com,smtp.example.com",
    );
    manifests.publish();
    eventually("NAT46 after the flip", Duration::from_secs(30), || async {
        let (body, _) = fetch(&c4, "http", "shop.example.com", HTTP, &[]);
        body.starts_with("shop-b6").then_some(())
    })
    .await;
    let (body, _) = fetch(&c4, "http", "other.example.com", HTTP, &[]);
    assert!(body.starts_with("wild-b6 xff="), "{body}");
    let (body, _) = fetch(
        &c4,
        "https",
        "vault.example.com",
        TLS,
        &["--cacert", &ca_file],
    );
    assert_eq!(body, "vault-b6 (its own TLS)");
    let (body, status) = fetch(
        &c4,
        "https",
        "pay.example.com",
        TLS,
        &["--cacert", &ca_file, "--http2"],
    );
    assert_eq!(
        (body.as_str(), status.as_str()),
        (format!("pay-b6 xff={C4} proto=https").as_str(), "200 2")
    );
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
        envoy.stat_sum(r"\.rds\..*\.update_success$").await,
        rds,
        "no RDS push"
    );
    // The kept connection still works after the flip.
    let _ = kept.get("pay.example.com").await.unwrap();
    assert_eq!(
        envoy.stat("listener_manager.lds.update_rejected").await,
        0,
        "{}",
        envoy.log()
    );
    drop(envoy);
    drop(hosts);
}
