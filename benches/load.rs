//! Benchmarks a user would trust, part two (part one, `benches/xds.rs`, measures the
//! connection storm, memory per client and fan-out to N streams):
//!
//! 3. bytes per change, SotW vs Delta: one endpoint changed in a 10,000-endpoint
//!    cluster; one cluster changed among 1,000 and 10,000;
//! 4. churn: 10, 100 and 1,000 EndpointSlice events per second over 100 Services through
//!    the real pipeline (model store, debouncing, translation, publication): publishes
//!    per second, CPU, coalescing ratio, worst staleness;
//! 5. convergence into real Envoy: an EndpointSlice edited in the manifest directory
//!    until Envoy has applied it, for 10, 1,000 and 10,000 endpoints; until traffic
//!    reaches a new backend; a family flip for 100 Services until every listener
//!    forwards to the new family.
//!
//! Prints a table and writes the figures to `target/bench/load.json`.
//! Run: `scripts/bench.sh` (both parts), or `cargo bench --bench load [-- --churn-secs 30]`.

/// The test rig (real Envoy, echo servers), shared with the integration tests.
#[path = "../tests/common/mod.rs"]
mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{echo_server_on, free_port, tcp_roundtrip, Envoy};
use dualstack_xds::model::Family;
use dualstack_xds::server::protocol::delta::DeltaStream;
use dualstack_xds::server::protocol::sotw::SotwStream;
use dualstack_xds::server::protocol::Scope;
use dualstack_xds::server::{single_group, ClientRegistry, XdsServer};
use dualstack_xds::snapshot::fixtures::{eds_cluster, load_assignment};
use dualstack_xds::snapshot::{ResourceType, Snapshot, SnapshotCache, SnapshotSet};
use dualstack_xds::sources::debounce::{Debounce, Debouncer, Instant as DebounceInstant};
use dualstack_xds::sources::manifest_watch::{self, ManifestDir};
use dualstack_xds::sources::manifests::Filter;
use dualstack_xds::sources::objects::{Changed, ModelStore};
use dualstack_xds::translate::{self, Translator};
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::{DeltaDiscoveryRequest, DiscoveryRequest};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use prost::Message;
use serde_json::json;
use tokio::sync::mpsc;

/// Named figures, printed as a table and written as JSON.
#[derive(Default)]
struct Report {
    rows: Vec<(String, String, String)>,
    json: BTreeMap<String, f64>,
}

impl Report {
    fn add(&mut self, key: &str, what: &str, value: f64, unit: &str, target: &str) {
        let shown = if value >= 100.0 || value.fract() == 0.0 {
            format!("{value:.0} {unit}")
        } else {
            format!("{value:.2} {unit}")
        };
        println!("  {what:<72} {shown:>14}  {target}");
        self.rows.push((what.into(), shown, target.into()));
        self.json.insert(key.into(), value);
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn arg(name: &str, default: u64) -> u64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut report = Report::default();
    println!(
        "load benchmark ({} cores)",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!("-- bytes per change (encoded responses)");
    bytes_per_change(&mut report);
    println!("-- churn over 100 Services (debounce 20 ms, max 250 ms)");
    let secs = arg("--churn-secs", 30);
    for rate in [10, 100, 1000] {
        runtime.block_on(churn(&mut report, rate, secs));
    }
    println!("-- convergence into real Envoy (debounce 20 ms)");
    runtime.block_on(convergence(&mut report));
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("load.json"),
        serde_json::to_string_pretty(&report.json).unwrap(),
    )
    .unwrap();
    println!("figures written to target/bench/load.json");
}

// ---------------------------------------------------------------------------------
// 3. Bytes per change.

fn node() -> Option<Node> {
    Some(Node {
        id: "bench".into(),
        ..Default::default()
    })
}

/// A snapshot of `clusters` EDS clusters, the first with `big` endpoints; `bump` changes
/// cluster `bump.0` (its connect timeout) or one endpoint of the first cluster.
fn snapshot(
    clusters: usize,
    big: usize,
    cluster_bump: Option<usize>,
    endpoint_bump: u16,
) -> SnapshotSet {
    let mut b = Snapshot::builder();
    for i in 0..clusters {
        let name = format!("svc-{i}");
        let mut cluster = eds_cluster(&name);
        if cluster_bump == Some(i) {
            cluster.connect_timeout = Some(envoy_types::pb::google::protobuf::Duration {
                seconds: 9,
                nanos: 0,
            });
        }
        let count = if i == 0 { big } else { 1 };
        let ips: Vec<String> = (0..count)
            .map(|j| format!("10.{}.{}.{}", j >> 16, (j >> 8) & 255, j & 255))
            .collect();
        let endpoints: Vec<(&str, u16)> = ips
            .iter()
            .enumerate()
            .map(|(j, ip)| {
                (
                    ip.as_str(),
                    if j == 0 { 8080 + endpoint_bump } else { 8080 },
                )
            })
            .collect();
        b.upsert(&cluster)
            .upsert(&load_assignment(&name, &endpoints));
    }
    SnapshotSet::single(b.build().unwrap())
}

/// Bytes a SotW and a Delta ADS client (subscribed to every cluster and its endpoints,
/// fully synced and ACKed) receive for the change from `before` to `after`.
fn change_bytes(before: &SnapshotSet, after: &SnapshotSet) -> (usize, usize) {
    let grouping = single_group();
    // SotW, as Envoy subscribes: CDS wildcard, then EDS by name; every response ACKed.
    let mut sotw = SotwStream::new(Scope::Aggregated, grouping.clone());
    let mut pending = sotw
        .on_request(
            DiscoveryRequest {
                node: node(),
                type_url: ResourceType::Cluster.type_url().into(),
                ..Default::default()
            },
            Some(before),
        )
        .unwrap()
        .responses;
    let names: Vec<String> = before
        .get(dualstack_xds::snapshot::DEFAULT_GROUP)
        .unwrap()
        .resources(ResourceType::Cluster)
        .iter()
        .map(|r| r.name().to_string())
        .collect();
    pending.extend(
        sotw.on_request(
            DiscoveryRequest {
                type_url: ResourceType::Endpoint.type_url().into(),
                resource_names: names.clone(),
                ..Default::default()
            },
            Some(before),
        )
        .unwrap()
        .responses,
    );
    while let Some(r) = pending.pop() {
        let ack = DiscoveryRequest {
            type_url: r.ty.type_url().into(),
            version_info: r.version_info.clone(),
            response_nonce: r.nonce.clone(),
            resource_names: if r.ty == ResourceType::Endpoint {
                names.clone()
            } else {
                vec![]
            },
            ..Default::default()
        };
        pending.extend(sotw.on_request(ack, Some(before)).unwrap().responses);
    }
    let sotw_bytes: usize = sotw
        .on_snapshot(after)
        .responses
        .iter()
        .map(|r| r.to_proto().encoded_len())
        .sum();

    let mut delta = DeltaStream::new(Scope::Aggregated, grouping);
    let mut pending = Vec::new();
    for (ty, names) in [
        (ResourceType::Cluster, vec!["*".to_string()]),
        (ResourceType::Endpoint, names),
    ] {
        pending.extend(
            delta
                .on_request(
                    DeltaDiscoveryRequest {
                        node: node(),
                        type_url: ty.type_url().into(),
                        resource_names_subscribe: names,
                        ..Default::default()
                    },
                    Some(before),
                )
                .unwrap()
                .responses,
        );
    }
    while let Some(r) = pending.pop() {
        let ack = DeltaDiscoveryRequest {
            type_url: r.ty.type_url().into(),
            response_nonce: r.nonce.clone(),
            ..Default::default()
        };
        pending.extend(delta.on_request(ack, Some(before)).unwrap().responses);
    }
    let delta_bytes: usize = delta
        .on_snapshot(after)
        .responses
        .iter()
        .map(|r| r.to_proto().encoded_len())
        .sum();
    (sotw_bytes, delta_bytes)
}

fn bytes_per_change(report: &mut Report) {
    let (sotw, delta) = change_bytes(&snapshot(1, 10_000, None, 0), &snapshot(1, 10_000, None, 1));
    report.add(
        "bytes_one_endpoint_in_10000_sotw",
        "one endpoint changed in a 10,000-endpoint cluster, SotW",
        sotw as f64,
        "B",
        "",
    );
    report.add(
        "bytes_one_endpoint_in_10000_delta",
        "same, Delta",
        delta as f64,
        "B",
        "",
    );
    for clusters in [1_000, 10_000] {
        let (sotw, delta) = change_bytes(
            &snapshot(clusters, 1, None, 0),
            &snapshot(clusters, 1, Some(clusters / 2), 0),
        );
        report.add(
            &format!("bytes_one_cluster_in_{clusters}_sotw"),
            &format!("one cluster changed among {clusters}, SotW"),
            sotw as f64,
            "B",
            "",
        );
        report.add(
            &format!("bytes_one_cluster_in_{clusters}_delta"),
            &format!("one cluster changed among {clusters}, Delta"),
            delta as f64,
            "B",
            "independent of the number of clusters",
        );
    }
}

// ---------------------------------------------------------------------------------
// 4. Churn through the real pipeline.

fn slice_object(service: usize, generation: u64) -> EndpointSlice {
    let endpoints: Vec<_> = (0..10)
        .map(|i| {
            let last = if i == 0 { generation % 250 } else { i as u64 };
            json!({"addresses": [format!("10.1.{service}.{last}")], "conditions": {"ready": true}})
        })
        .collect();
    serde_json::from_value(json!({
        "metadata": {"name": format!("svc-{service}-v4"), "namespace": "churn",
                     "labels": {"kubernetes.io/service-name": format!("svc-{service}")}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 8080}],
        "endpoints": endpoints,
    }))
    .unwrap()
}

fn cpu_seconds() -> f64 {
    let usage = nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_SELF).unwrap();
    let t = |tv: nix::sys::time::TimeVal| tv.tv_sec() as f64 + tv.tv_usec() as f64 / 1e6;
    t(usage.user_time()) + t(usage.system_time())
}

async fn churn(report: &mut Report, rate: u64, secs: u64) {
    let mut store = ModelStore::default();
    for s in 0..100 {
        store.upsert_service(
            serde_json::from_value(json!({
                "metadata": {"name": format!("svc-{s}"), "namespace": "churn"},
                "spec": {"ports": [{"name": "http", "port": 80, "appProtocol": "http"}]},
            }))
            .unwrap(),
        );
        store.upsert_slice(slice_object(s, 0));
    }
    let mut translator = Translator::new(Family::IPv4);
    let cache = SnapshotCache::new();
    cache.publish(translator.update(store.model(), None).unwrap());
    let debounce = Debounce {
        quiet: Duration::from_millis(20),
        max_delay: Duration::from_millis(250),
    };
    let (tx, mut rx) = mpsc::channel::<(DebounceInstant, (Instant, EndpointSlice))>(4096);
    let producer = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / rate));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        let end = Instant::now() + Duration::from_secs(secs);
        let mut n = 0u64;
        while Instant::now() < end {
            tick.tick().await;
            n += 1;
            let service = (n * 37 % 100) as usize;
            let now = Instant::now();
            if tx
                .send((now.into(), (now, slice_object(service, n))))
                .await
                .is_err()
            {
                return;
            }
        }
    });
    let mut debouncer = Debouncer::new(debounce);
    let cpu0 = cpu_seconds();
    let start = Instant::now();
    let (mut events, mut publishes, mut worst) = (0u64, 0u64, Duration::ZERO);
    loop {
        let mut changed = Changed::Nothing;
        let mut sent: Vec<Instant> = Vec::new();
        let got = debouncer
            .burst(&mut rx, |(at, object)| {
                sent.push(at);
                changed.merge(store.upsert_slice(object));
            })
            .await;
        if got.is_none() {
            break;
        }
        events += sent.len() as u64;
        let publishing = Instant::now();
        if !changed.is_nothing() {
            let set = translator
                .update(store.model(), changed.services().as_ref())
                .unwrap();
            cache.publish(set);
            publishes += 1;
        }
        debouncer.published(publishing.elapsed());
        let now = Instant::now();
        worst = sent.iter().map(|t| now - *t).fold(worst, Duration::max);
    }
    let wall = start.elapsed().as_secs_f64();
    let cpu = cpu_seconds() - cpu0;
    producer.await.unwrap();
    report.add(
        &format!("churn_{rate}_publishes_per_second"),
        &format!("{rate} events/s: publishes per second"),
        publishes as f64 / wall,
        "/s",
        "",
    );
    report.add(
        &format!("churn_{rate}_coalescing"),
        &format!("{rate} events/s: events per publish (coalescing ratio)"),
        events as f64 / publishes.max(1) as f64,
        "",
        "",
    );
    report.add(
        &format!("churn_{rate}_cpu_cores"),
        &format!("{rate} events/s: CPU (cores; producer included)"),
        cpu / wall,
        "",
        if rate == 1000 { "< 1 core" } else { "" },
    );
    report.add(
        &format!("churn_{rate}_worst_staleness_ms"),
        &format!("{rate} events/s: worst staleness (event to publish)"),
        worst.as_secs_f64() * 1e3,
        "ms",
        if rate == 1000 {
            "< 250 ms (max debounce)"
        } else {
            ""
        },
    );
}

// ---------------------------------------------------------------------------------
// 5. Convergence into real Envoy.

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
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: bench, labels: {{dualstack-xds.io/expose: \"true\"}}, annotations: {{dualstack-xds.io/listener-ports: \"80={listener_port}\"}}}}\nspec: {{ports: [{{name: tcp, port: 80}}]}}\n"
    )
}

fn slice_yaml(name: &str, service: &str, family: &str, port: u16, addresses: &[String]) -> String {
    let endpoints: Vec<String> = addresses
        .iter()
        .map(|a| format!("- addresses: [\"{a}\"]\n"))
        .collect();
    format!(
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: {name}, namespace: bench, labels: {{kubernetes.io/service-name: {service}}}}}\naddressType: {family}\nports: [{{name: tcp, port: {port}}}]\nendpoints:\n{}",
        endpoints.concat()
    )
}

fn config_yaml(family: &str) -> String {
    format!("apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: dualstack-xds, namespace: dualstack-xds}}\ndata: {{primaryFamily: {family}}}\n")
}

/// The server on a live manifest directory, as `serve --manifests` runs it, recording
/// each publication's time.
async fn serve_dir(dir: &Path) -> (SocketAddr, Arc<Mutex<Vec<Instant>>>) {
    let filter = Filter {
        service_selector: "dualstack-xds.io/expose=true".parse().unwrap(),
        namespaces: vec![],
        config_map: dualstack_xds::model::ServiceKey {
            namespace: "dualstack-xds".into(),
            name: "dualstack-xds".into(),
        },
    };
    let source = ManifestDir::load(dir, filter).unwrap();
    let cache = SnapshotCache::new();
    let published = Arc::new(Mutex::new(Vec::new()));
    let mut store = ModelStore::default();
    let mut translator = Translator::new(Family::IPv4);
    let mut on_change = {
        let (cache, published) = (cache.clone(), published.clone());
        move |source: &ManifestDir| {
            let changed = store.sync(source.objects());
            if changed.is_nothing() && cache.current().is_some() {
                return;
            }
            cache.publish(
                translator
                    .update(store.model(), changed.services().as_ref())
                    .unwrap(),
            );
            published.lock().unwrap().push(Instant::now());
        }
    };
    on_change(&source);
    let debounce = Debounce {
        quiet: Duration::from_millis(20),
        max_delay: Duration::from_millis(250),
    };
    tokio::spawn(manifest_watch::watch(source, debounce, move |s, _| {
        on_change(s)
    }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = XdsServer::new(
        cache,
        Arc::new(translate::node_group),
        ClientRegistry::new(),
    );
    tokio::spawn(server.serve(listener, std::future::pending()));
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
    std::fs::write(dir.path().join("config.yaml"), config_yaml("IPv4")).unwrap();
    let mut ports = Vec::new();
    for s in 0..100 {
        let port = free_port();
        ports.push(port);
        let name = format!("svc-{s}");
        std::fs::write(
            dir.path().join(format!("{name}.yaml")),
            format!(
                "{}---\n{}---\n{}",
                service_yaml(&name, port),
                slice_yaml(
                    &format!("{name}-v4"),
                    &name,
                    "IPv4",
                    v4.port(),
                    &["127.0.0.1".into()]
                ),
                slice_yaml(
                    &format!("{name}-v6"),
                    &name,
                    "IPv6",
                    v6.port(),
                    &["::1".into()]
                ),
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
        write(&dir.path().join("config.yaml"), &config_yaml(family));
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
