//! Convergence into real Envoy (prints figures; not a timed test), through what
//! `serve --manifests` runs (the live directory source, the pipeline, the xDS server): an
//! EndpointSlice edited in the manifest directory until Envoy has applied it, for 10,
//! 1,000 and 10,000 endpoints; until traffic reaches a new backend; a family flip for 100
//! Services until every listener forwards to the new family.
//!
//! Run: `cargo bench --bench convergence` (or `scripts/bench.sh`, which installs Envoy).

/// The test rig (real Envoy, echo servers, manifests), shared with the integration tests.
#[path = "../tests/common/mod.rs"]
mod common;
mod report;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::manifests::{config_map, service, slice, yaml, Object};
use common::{echo_server_on, free_port, tcp_roundtrip, Envoy};
use dualstack_xds::model::Family;
use dualstack_xds::pipeline::Pipeline;
use dualstack_xds::server::{ClientRegistry, XdsServer};
use dualstack_xds::snapshot::SnapshotCache;
use dualstack_xds::sources::debounce::Debounce;
use dualstack_xds::sources::manifest_watch::{self, ManifestDir};
use dualstack_xds::sources::{Sink, SourceEvent};
use dualstack_xds::translate;
use report::{percentile, Report};

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    println!(
        "convergence into real Envoy (debounce 20 ms; {} cores)",
        report::cores()
    );
    let mut report = Report::new("load");
    runtime.block_on(convergence(&mut report));
    report.write();
}

/// Sum of every Envoy stat matching `filter`.
async fn stat_sum(envoy: &Envoy, filter: &str) -> u64 {
    envoy
        .admin_get(&format!("/stats?filter={filter}"))
        .await
        .lines()
        .filter_map(|l| l.rsplit(": ").next()?.trim().parse::<u64>().ok())
        .sum()
}

/// The tag of the echo server behind `addr`, if it answers.
async fn answer(addr: SocketAddr) -> Option<String> {
    let reply = tcp_roundtrip(addr, "x").await?;
    Some(reply.strip_suffix(":x")?.to_owned())
}

async fn tagged_server(bind: &str, tag: &'static str) -> SocketAddr {
    echo_server_on(&format!("{bind}:0"), tag).await
}

fn service_yaml(name: &str, listener_port: u16) -> String {
    yaml(&[service("bench", name).port("tcp", 80).annotate(
        "dualstack-xds.io/listener-ports",
        &format!("80={listener_port}"),
    )])
}

fn slice_object(
    name: &str,
    service: &str,
    family: &str,
    port: u16,
    addresses: &[String],
) -> Object {
    addresses.iter().fold(
        slice("bench", name, service, family).port("tcp", port),
        |s, a| s.endpoint(a),
    )
}

fn slice_yaml(name: &str, service: &str, family: &str, port: u16, addresses: &[String]) -> String {
    yaml(&[slice_object(name, service, family, port, addresses)])
}

/// The pipeline, recording each publication's time.
struct Recorded {
    pipeline: Pipeline,
    published: Arc<Mutex<Vec<Instant>>>,
}

impl Sink for Recorded {
    fn send(&mut self, event: SourceEvent) {
        self.pipeline.send(event);
        self.published.lock().unwrap().push(Instant::now());
    }
}

/// The server on a live manifest directory, as `serve --manifests` runs it, recording
/// each publication's time.
async fn serve_dir(dir: &Path) -> (SocketAddr, Arc<Mutex<Vec<Instant>>>) {
    let source = ManifestDir::load(dir, common::default_filter()).unwrap();
    let cache = SnapshotCache::new();
    let published = Arc::new(Mutex::new(Vec::new()));
    let sink = Recorded {
        pipeline: Pipeline::new(Family::IPv4, cache.clone(), Default::default()),
        published: published.clone(),
    };
    let debounce = Debounce {
        quiet: Duration::from_millis(20),
        max_delay: Duration::from_millis(250),
    };
    tokio::spawn(manifest_watch::run(source, debounce, sink));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = XdsServer::new(
        cache,
        Arc::new(translate::node_group),
        ClientRegistry::new(),
    );
    tokio::spawn(server.serve(listener, std::future::pending()));
    // The initial Changes and Synced.
    while published.lock().unwrap().len() < 2 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    (addr, published)
}

/// Writes a file atomically (rename), as `kubectl cp` or a ConfigMap volume would.
fn write(path: &PathBuf, text: &str) {
    let tmp = path.with_extension("tmp~");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

async fn poll_until<F, Fut>(timeout: Duration, mut check: F) -> Option<Duration>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while start.elapsed() < timeout {
        if check().await {
            return Some(start.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    None
}

async fn convergence(report: &mut Report) {
    // (a) Envoy applies an EndpointSlice edit, by cluster size.
    for size in [10usize, 1_000, 10_000] {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("service.yaml"),
            service_yaml("web", free_port()),
        )
        .unwrap();
        let addresses: Vec<String> = (0..size)
            .map(|j| format!("10.{}.{}.{}", j >> 16, (j >> 8) & 255, j & 255))
            .collect();
        for (n, chunk) in addresses.chunks(100).enumerate() {
            std::fs::write(
                dir.path().join(format!("slice-{n}.yaml")),
                slice_yaml(&format!("web-{n}"), "web", "IPv4", 8080, chunk),
            )
            .unwrap();
        }
        let (xds, published) = serve_dir(dir.path()).await;
        let envoy = Envoy::start("envoy/ads-sotw.yaml", xds, "bench").await;
        poll_until(Duration::from_secs(30), || async {
            stat_sum(&envoy, "membership_total").await >= size as u64
        })
        .await
        .expect("Envoy has every endpoint");
        let (mut applied, mut server_part) = (Vec::new(), Vec::new());
        for round in 0..10 {
            let changes = stat_sum(&envoy, "membership_change").await;
            let mut chunk = addresses[..size.min(100)].to_vec();
            chunk[0] = format!("10.250.{}.{}", round / 250, round % 250 + 1);
            let publishes = published.lock().unwrap().len();
            let start = Instant::now();
            write(
                &dir.path().join("slice-0.yaml"),
                &slice_yaml("web-0", "web", "IPv4", 8080, &chunk),
            );
            let took = poll_until(Duration::from_secs(10), || async {
                stat_sum(&envoy, "membership_change").await > changes
            })
            .await
            .expect("Envoy applied the edit");
            applied.push(took.as_secs_f64() * 1e3);
            if let Some(at) = published.lock().unwrap().get(publishes) {
                server_part.push((*at - start).as_secs_f64() * 1e3);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        applied.sort_by(f64::total_cmp);
        server_part.sort_by(f64::total_cmp);
        report.add(
            &format!("convergence_{size}_endpoints_p50_ms"),
            &format!("slice edited -> Envoy applied, {size} endpoints: p50"),
            percentile(&applied, 0.5),
            "ms",
            "<= debounce + Envoy apply + 10 ms",
        );
        report.add(
            &format!("convergence_{size}_endpoints_max_ms"),
            "same, max (of 10)",
            percentile(&applied, 1.0),
            "ms",
            "",
        );
        report.add(
            &format!("convergence_{size}_endpoints_server_p50_ms"),
            "  of which file event -> snapshot published (debounce included): p50",
            percentile(&server_part, 0.5),
            "ms",
            "",
        );
    }

    // (b) Until traffic reaches a new backend.
    let a = tagged_server("127.0.0.1", "A:").await;
    let b = tagged_server("127.0.0.1", "B:").await;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    std::fs::write(dir.path().join("service.yaml"), service_yaml("move", port)).unwrap();
    let slice =
        |to: SocketAddr| slice_yaml("move-0", "move", "IPv4", to.port(), &[to.ip().to_string()]);
    std::fs::write(dir.path().join("slice.yaml"), slice(a)).unwrap();
    let (xds, _) = serve_dir(dir.path()).await;
    let envoy = Envoy::start("envoy/ads-sotw.yaml", xds, "bench").await;
    let ingress: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    poll_until(Duration::from_secs(30), || async {
        answer(ingress).await.as_deref() == Some("A")
    })
    .await
    .expect("traffic through Envoy");
    let mut traffic = Vec::new();
    for round in 0..10 {
        let (to, tag) = if round % 2 == 0 { (b, "B") } else { (a, "A") };
        let start = Instant::now();
        write(&dir.path().join("slice.yaml"), &slice(to));
        poll_until(Duration::from_secs(10), || async {
            answer(ingress).await.as_deref() == Some(tag)
        })
        .await
        .expect("traffic moved");
        traffic.push(start.elapsed().as_secs_f64() * 1e3);
    }
    drop(envoy);
    traffic.sort_by(f64::total_cmp);
    report.add(
        "convergence_traffic_new_backend_p50_ms",
        "slice edited -> traffic reaches the new backend: p50",
        percentile(&traffic, 0.5),
        "ms",
        "",
    );
    report.add(
        "convergence_traffic_new_backend_max_ms",
        "same, max (of 10)",
        percentile(&traffic, 1.0),
        "ms",
        "",
    );

    // (c) A family flip for 100 Services until every listener forwards to the new family.
    let v4 = tagged_server("127.0.0.1", "v4:").await;
    let v6 = tagged_server("[::1]", "v6:").await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("config.yaml"), yaml(&[config_map("IPv4")])).unwrap();
    let mut ports = Vec::new();
    for s in 0..100 {
        let port = free_port();
        ports.push(port);
        let name = format!("svc-{s}");
        std::fs::write(
            dir.path().join(format!("{name}.yaml")),
            format!(
                "{}---\n{}",
                service_yaml(&name, port),
                yaml(&[
                    slice_object(
                        &format!("{name}-v4"),
                        &name,
                        "IPv4",
                        v4.port(),
                        &["127.0.0.1".into()]
                    ),
                    slice_object(
                        &format!("{name}-v6"),
                        &name,
                        "IPv6",
                        v6.port(),
                        &["::1".into()]
                    ),
                ]),
            ),
        )
        .unwrap();
    }
    let (xds, _) = serve_dir(dir.path()).await;
    let envoy = Envoy::start("envoy/ads-sotw.yaml", xds, "bench").await;
    let all_answer = |tag: &'static str| {
        let ports = ports.clone();
        async move {
            for port in &ports {
                let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
                if answer(addr).await.as_deref() != Some(tag) {
                    return false;
                }
            }
            true
        }
    };
    poll_until(Duration::from_secs(60), || all_answer("v4"))
        .await
        .expect("100 listeners up");
    let mut flips = Vec::new();
    for round in 0..4 {
        let (family, tag) = if round % 2 == 0 {
            ("IPv6", "v6")
        } else {
            ("IPv4", "v4")
        };
        let start = Instant::now();
        write(
            &dir.path().join("config.yaml"),
            &yaml(&[config_map(family)]),
        );
        poll_until(Duration::from_secs(30), || all_answer(tag))
            .await
            .expect("every listener flipped");
        flips.push(start.elapsed().as_secs_f64() * 1e3);
    }
    drop(envoy);
    flips.sort_by(f64::total_cmp);
    report.add(
        "flip_100_services_p50_ms",
        "family flip, 100 Services -> every listener forwards to the new family: p50",
        percentile(&flips, 0.5),
        "ms",
        "",
    );
    report.add(
        "flip_100_services_max_ms",
        "same, max (of 4)",
        percentile(&flips, 1.0),
        "ms",
        "",
    );
}
