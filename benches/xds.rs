//! xDS engine benchmark (prints figures; not a timed test).
//!
//! With 10,000 clusters and 10,000 ClusterLoadAssignments of 10 endpoints each:
//! 1. publish: cost of publishing a snapshot in which one ClusterLoadAssignment changed;
//! 2. memory per connected stream (server live heap, and RSS growth);
//! 3. fan-out: time until N concurrent ADS streams on loopback all have one change, with
//!    clients that ACK at once (the server also digests the ACK storm) and with clients
//!    that hold their ACKs (the push alone).
//!
//! The clients run in a child process (this binary re-executed), one connection per
//! stream like a fleet of Envoys, so the server's memory is measured alone.
//! Run: `cargo bench --bench xds [-- --streams 1000 --clusters 10000]`.

#[allow(dead_code)]
#[path = "../tests/common/fixtures.rs"]
mod fixtures;
mod report;

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use dualstack_xds::server::{single_group, ClientRegistry, XdsServer};
use dualstack_xds::snapshot::{ResourceType, Snapshot, SnapshotCache, SnapshotSet};
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{DeltaDiscoveryRequest, DiscoveryRequest};
use tokio::io::AsyncBufReadExt;
use tokio::sync::{mpsc, Semaphore};
use tokio_stream::wrappers::UnboundedReceiverStream;

use fixtures::{eds_cluster, load_assignment};
use report::percentile;

/// Counts live heap bytes, so per-stream memory is measured without the allocator's
/// retention of transient buffers.
#[global_allocator]
static GLOBAL: &stats_alloc::StatsAlloc<std::alloc::System> = &stats_alloc::INSTRUMENTED_SYSTEM;

const ENDPOINTS: usize = 10;
const ROUNDS: usize = 3;

/// Named figures, written to `target/bench/xds-STREAMSxCLUSTERS.json` at the end.
static FIGURES: std::sync::Mutex<Option<report::Report>> = std::sync::Mutex::new(None);

fn figure(key: &str, value: f64) {
    if let Some(report) = FIGURES.lock().unwrap().as_mut() {
        report.record(key, value);
    }
}

fn live_heap_kib() -> f64 {
    let s = GLOBAL.stats();
    // stats_alloc already folds reallocations into the allocated and deallocated totals.
    (s.bytes_allocated as f64 - s.bytes_deallocated as f64) / 1024.0
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn unix_nanos() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

fn cluster_name(i: usize) -> String {
    format!("svc-{i}")
}

fn cla(i: usize, generation: usize) -> ClusterLoadAssignment {
    let ips: Vec<String> = (0..ENDPOINTS)
        .map(|e| format!("10.{}.{}.{}", (i >> 8) & 255, i & 255, e + 1))
        .collect();
    let endpoints: Vec<(&str, u16)> = ips
        .iter()
        .map(|ip| (ip.as_str(), 8000 + (generation % 50_000) as u16))
        .collect();
    load_assignment(&cluster_name(i), &endpoints)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    if std::env::var_os("XDS_BENCH_CLIENT").is_some() {
        let (addr, streams, clusters, delta) = (
            args[1].parse().unwrap(),
            args[2].parse().unwrap(),
            args[3].parse().unwrap(),
            args[4] == "delta",
        );
        return runtime.block_on(client_main(addr, streams, clusters, delta));
    }
    let streams = report::arg("--streams", 1000) as usize;
    let clusters = report::arg("--clusters", 10_000) as usize;
    *FIGURES.lock().unwrap() = Some(report::Report::new(&format!("xds-{streams}x{clusters}")));
    runtime.block_on(server_main(streams, clusters));
}

async fn server_main(streams: usize, clusters: usize) {
    println!(
        "xDS engine benchmark: {clusters} clusters, {clusters} ClusterLoadAssignments x {ENDPOINTS} endpoints, {streams} streams, {} cores",
        report::cores()
    );
    let heap_start = live_heap_kib();
    let t = Instant::now();
    let mut b = Snapshot::builder();
    for i in 0..clusters {
        b.upsert(&eds_cluster(&cluster_name(i))).upsert(&cla(i, 0));
    }
    let mut snapshot = b.build().unwrap();
    figure("full_snapshot_build_ms", t.elapsed().as_secs_f64() * 1e3);
    println!(
        "full snapshot build (encode, hash, check {} resources): {:.1} ms; snapshot heap {:.1} MiB",
        2 * clusters,
        t.elapsed().as_secs_f64() * 1e3,
        (live_heap_kib() - heap_start) / 1024.0
    );

    let cache = SnapshotCache::new();
    cache.publish(SnapshotSet::single(snapshot.clone()));
    let mut samples = Vec::new();
    for round in 1..=2000usize {
        let message = cla((round * 7919) % clusters, round);
        let t = Instant::now();
        let mut edit = snapshot.edit();
        edit.upsert(&message);
        snapshot = edit.build().unwrap();
        cache.publish(SnapshotSet::single(snapshot.clone()));
        samples.push(t.elapsed().as_secs_f64() * 1e6);
    }
    samples.sort_by(f64::total_cmp);
    figure("publish_one_cla_p50_us", percentile(&samples, 0.5));
    figure("publish_one_cla_p99_us", percentile(&samples, 0.99));
    println!(
        "publish a snapshot with one ClusterLoadAssignment changed (encode, diff-free insert, consistency check, publish): p50 {:.1} us, p99 {:.1} us, max {:.1} us (target < 1000 us)",
        percentile(&samples, 0.5),
        percentile(&samples, 0.99),
        samples.last().unwrap()
    );

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let registry = ClientRegistry::new();
    let server = XdsServer::new(cache.clone(), single_group(), registry.clone());
    tokio::spawn(server.serve(listener, std::future::pending()));
    for mode in ["sotw", "delta"] {
        snapshot = fan_out(mode, addr, streams, clusters, &cache, &registry, snapshot).await;
    }
    println!(
        "NACKs: {}, EDS responses sent: {}",
        registry.metrics.nacks(ResourceType::Endpoint),
        registry.metrics.responses(ResourceType::Endpoint)
    );
    if let Some(report) = FIGURES.lock().unwrap().as_ref() {
        report.write();
    }
}

async fn fan_out(
    mode: &str,
    addr: SocketAddr,
    streams: usize,
    clusters: usize,
    cache: &SnapshotCache,
    registry: &ClientRegistry,
    mut snapshot: Snapshot,
) -> Snapshot {
    println!("-- {streams} {mode} ADS streams, one connection each");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (heap_before, rss_before) = (live_heap_kib(), rss_kib());
    let mut child = Command::new(std::env::current_exe().unwrap())
        .env("XDS_BENCH_CLIENT", "1")
        .args([
            addr.to_string(),
            streams.to_string(),
            clusters.to_string(),
            mode.to_string(),
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut to_child = child.stdin.take().unwrap();
    let mut from_child = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut expect = |what: &str| -> String {
        let line = from_child.next().expect("client output").unwrap();
        assert!(line.starts_with(what), "expected {what}, got {line}");
        line
    };
    let per_stream = |stage: &str| {
        let heap = (live_heap_kib() - heap_before) / streams as f64;
        let rss = rss_kib().saturating_sub(rss_before) as f64 / streams as f64;
        figure(&format!("{mode}_{stage}_heap_kib_per_stream"), heap);
        figure(&format!("{mode}_{stage}_rss_kib_per_stream"), rss);
        format!("server live heap {heap:.1} KiB per stream (RSS growth {rss:.1} KiB per stream)")
    };

    let t = Instant::now();
    expect("cds-synced");
    let cds_sync = t.elapsed();
    figure(
        &format!("{mode}_storm_connect_and_cds_sync_s"),
        cds_sync.as_secs_f64(),
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    println!(
        "connect + CDS wildcard ({clusters} clusters) synced: {:.2} s; then idle: {} (target < 64 KiB)",
        cds_sync.as_secs_f64(),
        per_stream("cds_synced")
    );
    writeln!(to_child, "subscribe-eds").unwrap();
    let t = Instant::now();
    expect("eds-synced");
    let eds_sync = t.elapsed();
    figure(
        &format!("{mode}_eds_subscribe_and_sync_s"),
        eds_sync.as_secs_f64(),
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    println!(
        "EDS for all {clusters} clusters subscribed + synced: {:.2} s; then idle: {}",
        eds_sync.as_secs_f64(),
        per_stream("eds_synced")
    );

    let mut generation = if mode == "delta" { 20_000 } else { 10_000 };
    for hold_acks in [false, true] {
        writeln!(to_child, "hold-acks {hold_acks}").unwrap();
        let mut totals = Vec::new();
        for _ in 0..ROUNDS {
            generation += 1;
            let mut edit = snapshot.edit();
            edit.upsert(&cla(generation % clusters, generation));
            snapshot = edit.build().unwrap();
            let published_at = unix_nanos();
            cache.publish(SnapshotSet::single(snapshot.clone()));
            writeln!(to_child, "expect {published_at}").unwrap();
            let line = expect("fanout");
            let mut parts = line
                .split_whitespace()
                .skip(1)
                .map(|v| v.parse::<f64>().unwrap());
            let (p50, p99, max) = (
                parts.next().unwrap(),
                parts.next().unwrap(),
                parts.next().unwrap(),
            );
            // The next round starts once the server has taken every ACK, so each round
            // measures one change.
            let acked = all_acked(registry, published_at).await;
            println!(
                "  one EDS change, {}: p50 {p50:.1} ms, p99 {p99:.1} ms, every stream {max:.1} ms; every ACK processed after {acked:.0} ms",
                if hold_acks {
                    "ACKs held until all streams have it"
                } else {
                    "ACKs at once"
                }
            );
            totals.push(max);
            let how = if hold_acks { "push" } else { "acking" };
            figure(&format!("{mode}_fanout_{how}_p50_ms"), p50);
            figure(&format!("{mode}_fanout_{how}_p99_ms"), p99);
            figure(&format!("{mode}_fanout_{how}_max_ms"), max);
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        totals.sort_by(f64::total_cmp);
        println!(
            "fan-out to all {streams} {mode} streams, {}: median {:.1} ms over {ROUNDS} rounds (target < 200 ms)",
            if hold_acks {
                "push only (clients hold their ACKs)"
            } else {
                "clients ACK at once"
            },
            percentile(&totals, 0.5)
        );
    }
    drop(to_child);
    let _ = child.wait();
    snapshot
}

/// Waits until no stream has an EDS response awaiting its ACK; ms since `since`.
async fn all_acked(registry: &ClientRegistry, since: u128) -> f64 {
    loop {
        let pending = registry.clients().iter().any(|c| {
            c.types.iter().any(|t| {
                t.type_url == ResourceType::Endpoint.type_url() && t.pending_nonce.is_some()
            })
        });
        if !pending {
            return unix_nanos().saturating_sub(since) as f64 / 1e6;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[derive(Debug)]
enum Event {
    CdsSynced,
    EdsSynced,
    Got(u128),
}

/// Commands from the client main to every stream.
#[derive(Clone, Debug)]
enum Control {
    SubscribeEds,
    HoldAcks(bool),
    ReleaseAcks,
}

async fn client_main(addr: SocketAddr, streams: usize, clusters: usize, delta: bool) {
    let (events_tx, mut events) = mpsc::unbounded_channel::<Event>();
    let mut controls = Vec::new();
    let connect_limit = Arc::new(Semaphore::new(64));
    for id in 0..streams {
        let (ctl_tx, ctl_rx) = mpsc::unbounded_channel();
        controls.push(ctl_tx);
        let stream = ClientStream {
            id,
            clusters,
            delta,
            control: ctl_rx,
            events: events_tx.clone(),
        };
        tokio::spawn(stream.run(addr, connect_limit.clone()));
    }
    let broadcast = |c: Control| {
        for tx in &controls {
            let _ = tx.send(c.clone());
        }
    };
    let mut out = std::io::stdout();
    let mut stdin = tokio::io::BufReader::new(tokio::io::stdin());
    let mut line = String::new();
    wait_for(&mut events, streams, |e| matches!(e, Event::CdsSynced)).await;
    writeln!(out, "cds-synced").unwrap();
    if stdin.read_line(&mut line).await.unwrap() == 0 {
        return;
    }
    broadcast(Control::SubscribeEds);
    wait_for(&mut events, streams, |e| matches!(e, Event::EdsSynced)).await;
    writeln!(out, "eds-synced").unwrap();
    loop {
        line.clear();
        if stdin.read_line(&mut line).await.unwrap() == 0 {
            return;
        }
        let mut words = line.split_whitespace();
        match words.next() {
            Some("hold-acks") => broadcast(Control::HoldAcks(words.next() == Some("true"))),
            Some("expect") => {
                let published: u128 = words.next().unwrap().parse().unwrap();
                // Each stream answers the change with one response; those that arrived
                // before this line are already queued as events.
                let times = wait_for(&mut events, streams, |e| matches!(e, Event::Got(_))).await;
                broadcast(Control::ReleaseAcks);
                let mut ms: Vec<f64> = times
                    .iter()
                    .map(|t| t.saturating_sub(published) as f64 / 1e6)
                    .collect();
                ms.sort_by(f64::total_cmp);
                writeln!(
                    out,
                    "fanout {:.3} {:.3} {:.3}",
                    percentile(&ms, 0.5),
                    percentile(&ms, 0.99),
                    ms.last().unwrap()
                )
                .unwrap();
            }
            _ => {}
        }
    }
}

async fn wait_for(
    events: &mut mpsc::UnboundedReceiver<Event>,
    streams: usize,
    want: impl Fn(&Event) -> bool,
) -> Vec<u128> {
    let mut seen = 0;
    let mut times = Vec::new();
    while seen < streams {
        let event = events.recv().await.unwrap();
        if want(&event) {
            if let Event::Got(t) = event {
                times.push(t);
            }
            seen += 1;
        }
    }
    times
}

/// One simulated Envoy: ADS over its own connection, ACKing like Envoy does (SotW ACKs
/// repeat every subscribed name).
struct ClientStream {
    id: usize,
    clusters: usize,
    delta: bool,
    control: mpsc::UnboundedReceiver<Control>,
    events: mpsc::UnboundedSender<Event>,
}

/// A response reduced to what the client acts on.
struct Received {
    ty: ResourceType,
    nonce: String,
    version: String,
    resources: usize,
}

impl ClientStream {
    async fn run(mut self, addr: SocketAddr, connect_limit: Arc<Semaphore>) {
        let permit = connect_limit.acquire().await.unwrap();
        let channel = tonic::transport::Channel::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
            .unwrap();
        let mut client =
            AggregatedDiscoveryServiceClient::new(channel).max_decoding_message_size(usize::MAX);
        let node = Some(Node {
            id: format!("bench-{}", self.id),
            ..Default::default()
        });
        let cds = ResourceType::Cluster.type_url().to_owned();
        let eds = ResourceType::Endpoint.type_url().to_owned();
        let names: Vec<String> = (0..self.clusters).map(cluster_name).collect();
        let (sotw_tx, sotw_rx) = mpsc::unbounded_channel();
        let (delta_tx, delta_rx) = mpsc::unbounded_channel();
        let mut responses: std::pin::Pin<Box<dyn futures::Stream<Item = Received> + Send>> =
            if self.delta {
                delta_tx
                    .send(DeltaDiscoveryRequest {
                        node,
                        type_url: cds.clone(),
                        ..Default::default()
                    })
                    .unwrap();
                let stream = client
                    .delta_aggregated_resources(UnboundedReceiverStream::new(delta_rx))
                    .await
                    .unwrap()
                    .into_inner();
                Box::pin(futures::stream::unfold(stream, |mut s| async move {
                    let r = s.message().await.ok().flatten()?;
                    let received = Received {
                        ty: ResourceType::from_type_url(&r.type_url)?,
                        nonce: r.nonce,
                        version: r.system_version_info,
                        resources: r.resources.len(),
                    };
                    Some((received, s))
                }))
            } else {
                sotw_tx
                    .send(DiscoveryRequest {
                        node,
                        type_url: cds.clone(),
                        ..Default::default()
                    })
                    .unwrap();
                let stream = client
                    .stream_aggregated_resources(UnboundedReceiverStream::new(sotw_rx))
                    .await
                    .unwrap()
                    .into_inner();
                Box::pin(futures::stream::unfold(stream, |mut s| async move {
                    let r = s.message().await.ok().flatten()?;
                    let received = Received {
                        ty: ResourceType::from_type_url(&r.type_url)?,
                        nonce: r.nonce,
                        version: r.version_info,
                        resources: r.resources.len(),
                    };
                    Some((received, s))
                }))
            };
        drop(permit);
        let mut eds_subscribed = false;
        let ack = |r: &Received, eds_subscribed: bool| {
            if self.delta {
                let _ = delta_tx.send(DeltaDiscoveryRequest {
                    response_nonce: r.nonce.clone(),
                    type_url: r.ty.type_url().to_owned(),
                    ..Default::default()
                });
            } else {
                let resource_names = if r.ty == ResourceType::Endpoint && eds_subscribed {
                    names.clone()
                } else {
                    Vec::new()
                };
                let _ = sotw_tx.send(DiscoveryRequest {
                    version_info: r.version.clone(),
                    response_nonce: r.nonce.clone(),
                    type_url: r.ty.type_url().to_owned(),
                    resource_names,
                    ..Default::default()
                });
            }
        };
        let mut eds_received = 0usize;
        let mut hold_acks = false;
        let mut held = Vec::new();
        use futures::StreamExt;
        loop {
            tokio::select! {
                received = responses.next() => {
                    let Some(r) = received else { return };
                    let now = unix_nanos();
                    let synced = eds_received >= self.clusters;
                    match r.ty {
                        ResourceType::Cluster => { let _ = self.events.send(Event::CdsSynced); }
                        ResourceType::Endpoint if !synced => {
                            eds_received += r.resources;
                            if eds_received >= self.clusters {
                                let _ = self.events.send(Event::EdsSynced);
                            }
                        }
                        ResourceType::Endpoint => { let _ = self.events.send(Event::Got(now)); }
                        _ => {}
                    }
                    if hold_acks && synced {
                        held.push(r);
                    } else {
                        ack(&r, eds_subscribed);
                    }
                }
                command = self.control.recv() => match command {
                    None => return,
                    Some(Control::SubscribeEds) => {
                        eds_subscribed = true;
                        if self.delta {
                            let _ = delta_tx.send(DeltaDiscoveryRequest {
                                type_url: eds.clone(),
                                resource_names_subscribe: names.clone(),
                                ..Default::default()
                            });
                        } else {
                            let _ = sotw_tx.send(DiscoveryRequest {
                                type_url: eds.clone(),
                                resource_names: names.clone(),
                                ..Default::default()
                            });
                        }
                    }
                    Some(Control::HoldAcks(hold)) => hold_acks = hold,
                    Some(Control::ReleaseAcks) => {
                        for r in held.drain(..) {
                            ack(&r, eds_subscribed);
                        }
                    }
                },
            }
        }
    }
}
