//! xDS engine benchmark (prints figures; not a timed test).
//!
//! With 10,000 clusters and 10,000 ClusterLoadAssignments of 10 endpoints each:
//! 1. publish: cost of publishing a snapshot in which one ClusterLoadAssignment changed;
//! 2. per protocol (SotW, then Delta), N streams connect and sync CDS, then subscribe to
//!    and sync EDS: per-stream p50/p99 and the worst stream, and the server's memory per
//!    stream (live heap, RSS growth, and peak RSS growth during the sync);
//! 3. fan-out: time until every stream has one change, with clients that ACK at once
//!    (the server also digests the ACK storm: a SotW ACK repeats all 10,000 names) and
//!    with clients that hold their ACKs (the push alone);
//! 4. cold start: N streams connect at once, as a fleet does when the control plane
//!    restarts, each subscribing to EDS as soon as it has CDS (as Envoy does): per-stream
//!    p50/p99 and the worst, and how long `/healthz` on the admin port takes meanwhile.
//!
//! The clients run in a child process (this binary re-executed), one connection per
//! stream like a fleet of Envoys, so the server's memory is measured alone. On the wire
//! they behave as Envoy does (its 256 MiB HTTP/2 windows, SotW ACKs that repeat every
//! subscribed name), but they do their own work cheaply, as a fleet on machines of its
//! own would: requests go out pre-encoded, and responses are read as their bytes arrive,
//! without being buffered whole, for their type, version, nonce and number of resources.
//! Clients and server still share the cores.
//! Run: `cargo bench --bench xds [-- --streams 1000 --clusters 10000] [--only PHASES]`,
//! PHASES a comma-separated list of `sotw`, `delta` (connect, sync, fan-out),
//! `cold-sotw`, `cold-delta` (cold start).

#[allow(dead_code)]
#[path = "../tests/common/fixtures.rs"]
mod fixtures;
mod report;

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::{BufMut, Bytes, BytesMut};
use dualstack_xds::admin::Admin;
use dualstack_xds::server::{single_group, ClientRegistry, XdsServer};
use dualstack_xds::snapshot::{ResourceType, Snapshot, SnapshotCache, SnapshotSet};
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::service::discovery::v3::{DeltaDiscoveryRequest, DiscoveryRequest};
use futures::StreamExt;
use http_body::Body as _;
use prost::Message;
use tokio::io::AsyncBufReadExt;
use tokio::sync::{mpsc, Semaphore};
use tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::Status;

use fixtures::{eds_cluster, load_assignment};
use report::percentile;

/// Counts live heap bytes, so per-stream memory is measured without the allocator's
/// retention of transient buffers.
#[global_allocator]
static GLOBAL: &stats_alloc::StatsAlloc<std::alloc::System> = &stats_alloc::INSTRUMENTED_SYSTEM;

const ENDPOINTS: usize = 10;
const ROUNDS: usize = 3;
/// Envoy's default HTTP/2 stream and connection windows (`Http2ProtocolOptions`).
const ENVOY_WINDOW: u32 = 256 * 1024 * 1024;

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

fn status_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn rss_kib() -> u64 {
    status_kib("VmRSS:")
}

/// The peak RSS since the last [`reset_peak_rss`].
fn peak_rss_kib() -> u64 {
    status_kib("VmHWM:")
}

fn reset_peak_rss() {
    // "5" resets the peak resident set size (proc(5), /proc/pid/clear_refs).
    let _ = std::fs::write("/proc/self/clear_refs", "5");
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
        let config = ClientConfig {
            addr: args[1].parse().unwrap(),
            admin: args[2].parse().unwrap(),
            streams: args[3].parse().unwrap(),
            clusters: args[4].parse().unwrap(),
            delta: args[5] == "delta",
            cold: args[6] == "cold",
        };
        return runtime.block_on(client_main(config));
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

    let (sotw_bytes, delta_bytes) = sync_bytes(&snapshot);
    figure("sotw_sync_bytes_per_stream", sotw_bytes as f64);
    figure("delta_sync_bytes_per_stream", delta_bytes as f64);
    println!(
        "what one stream's CDS + EDS sync carries: {:.2} MB SotW, {:.2} MB Delta (each resource with its name and version)",
        sotw_bytes as f64 / 1e6,
        delta_bytes as f64 / 1e6
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
    let admin_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin_addr = admin_listener.local_addr().unwrap();
    let admin = Admin {
        pipeline: Default::default(),
        registry: Arc::new(Default::default()),
        cache: cache.clone(),
        clients: registry.clone(),
    };
    admin.serve_on_own_thread(admin_listener, None).unwrap();
    let bench = Bench {
        addr,
        admin: admin_addr,
        streams,
        clusters,
    };
    // `--only sotw,cold-delta`: the phases named (`sotw`, `delta`: connect, sync and
    // fan-out; `cold-sotw`, `cold-delta`: cold start); none named: all of them.
    let args: Vec<String> = std::env::args().collect();
    let only: Vec<String> = args
        .iter()
        .position(|a| a == "--only")
        .and_then(|i| args.get(i + 1))
        .map(|list| list.split(',').map(str::to_owned).collect())
        .unwrap_or_default();
    let wanted = |phase: &str| only.is_empty() || only.iter().any(|o| o == phase);
    for mode in ["sotw", "delta"] {
        if wanted(mode) {
            snapshot = bench.fan_out(mode, &cache, &registry, snapshot).await;
        }
    }
    for mode in ["sotw", "delta"] {
        if wanted(&format!("cold-{mode}")) {
            bench.cold_start(mode).await;
        }
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

/// The encoded size of every cluster and ClusterLoadAssignment of `snapshot` in SotW and
/// in Delta responses (the resources field of each; Delta's also carries the name and the
/// 11-character version).
fn sync_bytes(snapshot: &Snapshot) -> (usize, usize) {
    use prost::encoding::encoded_len_varint;
    let field = |len: usize| 1 + encoded_len_varint(len as u64) + len;
    let (mut sotw, mut delta) = (0, 0);
    for ty in [ResourceType::Cluster, ResourceType::Endpoint] {
        for r in snapshot.resources(ty).iter() {
            let any = r.encoded_any().len();
            sotw += field(any);
            delta +=
                field(field(r.version().to_string().len()) + field(any) + field(r.name().len()));
        }
    }
    (sotw, delta)
}

/// The server's side of the benchmark.
struct Bench {
    addr: SocketAddr,
    admin: SocketAddr,
    streams: usize,
    clusters: usize,
}

/// The client process, and its lines.
struct Clients {
    child: std::process::Child,
    to: std::process::ChildStdin,
    from: std::io::Lines<BufReader<std::process::ChildStdout>>,
}

impl Clients {
    /// The next line, which must start with `what`; the numbers after it.
    fn expect(&mut self, what: &str) -> Vec<f64> {
        let line = self.from.next().expect("client output").unwrap();
        assert!(line.starts_with(what), "expected {what}, got {line}");
        line.split_whitespace()
            .skip(1)
            .map(|v| v.parse().unwrap())
            .collect()
    }

    fn say(&mut self, line: &str) {
        writeln!(self.to, "{line}").unwrap();
    }

    fn end(mut self) {
        drop(self.to);
        let _ = self.child.wait();
    }
}

impl Bench {
    fn clients(&self, mode: &str, cold: bool) -> Clients {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .env("XDS_BENCH_CLIENT", "1")
            .args([
                self.addr.to_string(),
                self.admin.to_string(),
                self.streams.to_string(),
                self.clusters.to_string(),
                mode.to_string(),
                if cold { "cold" } else { "phased" }.to_string(),
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        Clients {
            to: child.stdin.take().unwrap(),
            from: BufReader::new(child.stdout.take().unwrap()).lines(),
            child,
        }
    }

    async fn fan_out(
        &self,
        mode: &str,
        cache: &SnapshotCache,
        registry: &ClientRegistry,
        mut snapshot: Snapshot,
    ) -> Snapshot {
        let (streams, clusters) = (self.streams, self.clusters);
        println!("-- {streams} {mode} ADS streams, one connection each");
        tokio::time::sleep(Duration::from_millis(300)).await;
        let (heap_before, rss_before) = (live_heap_kib(), rss_kib());
        let per_stream = |stage: &str| {
            let heap = (live_heap_kib() - heap_before) / streams as f64;
            let rss = rss_kib().saturating_sub(rss_before) as f64 / streams as f64;
            let peak = peak_rss_kib().saturating_sub(rss_before) as f64 / streams as f64;
            figure(&format!("{mode}_{stage}_heap_kib_per_stream"), heap);
            figure(&format!("{mode}_{stage}_rss_kib_per_stream"), rss);
            figure(&format!("{mode}_{stage}_peak_rss_kib_per_stream"), peak);
            format!("server live heap {heap:.1} KiB per stream, RSS growth {rss:.1} KiB per stream (peak during the sync {peak:.1} KiB)")
        };
        let spread = |key: &str, v: &[f64]| {
            figure(&format!("{mode}_{key}_p50_s"), v[0]);
            figure(&format!("{mode}_{key}_p99_s"), v[1]);
            format!(
                "p50 {:.2} s, p99 {:.2} s, every stream {:.2} s",
                v[0], v[1], v[2]
            )
        };

        reset_peak_rss();
        let mut clients = self.clients(mode, false);
        let phases = [
            (
                None,
                "cds-synced",
                "storm_connect_and_cds_sync",
                "cds_synced",
                format!("connect + CDS wildcard ({clusters} clusters) synced"),
                "(target < 64 KiB)",
            ),
            (
                Some("subscribe-eds"),
                "eds-synced",
                "eds_subscribe_and_sync",
                "eds_synced",
                format!("EDS for all {clusters} clusters subscribed + synced"),
                "(target: RSS < 200 KiB)",
            ),
        ];
        for (command, reply, key, stage, what, target) in phases {
            if let Some(command) = command {
                reset_peak_rss();
                clients.say(command);
            }
            let times = clients.expect(reply);
            figure(&format!("{mode}_{key}_s"), times[2]);
            tokio::time::sleep(Duration::from_millis(500)).await;
            println!(
                "{what}: {}; then idle: {} {target}",
                spread(key, &times),
                per_stream(stage)
            );
        }

        let mut generation = if mode == "delta" { 20_000 } else { 10_000 };
        for hold_acks in [false, true] {
            clients.say(&format!("hold-acks {hold_acks}"));
            let mut totals = Vec::new();
            for _ in 0..ROUNDS {
                generation += 1;
                let mut edit = snapshot.edit();
                edit.upsert(&cla(generation % clusters, generation));
                snapshot = edit.build().unwrap();
                let published_at = unix_nanos();
                cache.publish(SnapshotSet::single(snapshot.clone()));
                clients.say(&format!("expect {published_at}"));
                let v = clients.expect("fanout");
                let (p50, p99, max) = (v[0], v[1], v[2]);
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
                figure(&format!("{mode}_fanout_{how}_all_acked_ms"), acked);
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            totals.sort_by(f64::total_cmp);
            // The target is for 1,000 streams; five times as many get twice as long.
            let target = if streams <= 1000 { 100 } else { 200 };
            println!(
                "fan-out to all {streams} {mode} streams, {}: median of the worst stream {:.1} ms over {ROUNDS} rounds (target < {target} ms)",
                if hold_acks {
                    "push only (clients hold their ACKs)"
                } else {
                    "clients ACK at once"
                },
                percentile(&totals, 0.5)
            );
        }
        clients.end();
        snapshot
    }

    /// A fleet restart: every stream connects and syncs CDS, then EDS, at once.
    async fn cold_start(&self, mode: &str) {
        let (streams, clusters) = (self.streams, self.clusters);
        tokio::time::sleep(Duration::from_millis(500)).await;
        let rss_before = rss_kib();
        reset_peak_rss();
        let cpu_before = report::cpu_seconds();
        let mut clients = self.clients(mode, true);
        let v = clients.expect("cold-synced");
        let cpu = report::cpu_seconds() - cpu_before;
        figure(&format!("{mode}_cold_start_server_cpu_s"), cpu);
        let peak = peak_rss_kib().saturating_sub(rss_before) as f64 / streams as f64;
        let (p50, p99, max, health_p99, health_max) = (v[0], v[1], v[2], v[3], v[4]);
        figure(&format!("{mode}_cold_start_p50_s"), p50);
        figure(&format!("{mode}_cold_start_p99_s"), p99);
        figure(&format!("{mode}_cold_start_max_s"), max);
        figure(&format!("{mode}_cold_start_healthz_p99_ms"), health_p99);
        figure(&format!("{mode}_cold_start_healthz_max_ms"), health_max);
        figure(&format!("{mode}_cold_start_peak_rss_kib_per_stream"), peak);
        println!(
            "-- cold start, {streams} {mode} streams connect and sync CDS + EDS of {clusters} clusters at once: p50 {p50:.2} s, p99 {p99:.2} s, every stream {max:.2} s (target < 5 s), server CPU {cpu:.2} s; /healthz meanwhile p99 {health_p99:.1} ms, worst {health_max:.1} ms; peak RSS growth {peak:.1} KiB per stream"
        );
        clients.end();
    }
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

/// What the client process is told on its command line.
#[derive(Clone, Copy)]
struct ClientConfig {
    addr: SocketAddr,
    admin: SocketAddr,
    streams: usize,
    clusters: usize,
    delta: bool,
    /// Subscribe to EDS as soon as CDS arrives (a cold start), instead of on command.
    cold: bool,
}

#[derive(Debug)]
enum Event {
    CdsSynced(u128),
    EdsSynced(u128),
    Got(u128),
}

/// Commands from the client main to every stream.
#[derive(Clone, Debug)]
enum Control {
    SubscribeEds,
    HoldAcks(bool),
    ReleaseAcks,
}

/// Requests every stream sends, encoded once.
struct Encoded {
    /// The `resource_names` fields of a SotW request naming every cluster.
    sotw_names: Bytes,
    /// A Delta request subscribing to every cluster's endpoints.
    delta_subscribe: Bytes,
}

async fn client_main(config: ClientConfig) {
    let started = unix_nanos();
    let names: Vec<String> = (0..config.clusters).map(cluster_name).collect();
    let eds = ResourceType::Endpoint.type_url().to_owned();
    let mut sotw_names = BytesMut::new();
    for name in &names {
        prost::encoding::string::encode(3, name, &mut sotw_names);
    }
    let encoded = Arc::new(Encoded {
        sotw_names: sotw_names.freeze(),
        delta_subscribe: DeltaDiscoveryRequest {
            type_url: eds,
            resource_names_subscribe: names,
            ..Default::default()
        }
        .encode_to_vec()
        .into(),
    });
    let (events_tx, mut events) = mpsc::unbounded_channel::<Event>();
    let mut controls = Vec::new();
    let connect_limit = Arc::new(Semaphore::new(64));
    for id in 0..config.streams {
        let (ctl_tx, ctl_rx) = mpsc::unbounded_channel();
        controls.push(ctl_tx);
        let stream = ClientStream {
            id,
            config,
            encoded: encoded.clone(),
            control: ctl_rx,
            events: events_tx.clone(),
        };
        tokio::spawn(stream.run(connect_limit.clone()));
    }
    let broadcast = |c: Control| {
        for tx in &controls {
            let _ = tx.send(c.clone());
        }
    };
    let mut out = std::io::stdout();
    if config.cold {
        // The probe has a thread of its own, so that what it measures is the server.
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let probe = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap()
                    .block_on(probe_healthz(config.admin, &stop))
            })
        };
        let times = wait_for(&mut events, config.streams, |e| {
            matches!(e, Event::EdsSynced(_))
        })
        .await;
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let mut latencies = probe.join().unwrap();
        latencies.sort_by(f64::total_cmp);
        writeln!(
            out,
            "cold-synced {} {:.3} {:.3}",
            spread_since(started, &times, 1e9),
            percentile(&latencies, 0.99),
            latencies.last().copied().unwrap_or(f64::NAN)
        )
        .unwrap();
        return;
    }
    let mut stdin = tokio::io::BufReader::new(tokio::io::stdin());
    let mut line = String::new();
    let times = wait_for(&mut events, config.streams, |e| {
        matches!(e, Event::CdsSynced(_))
    })
    .await;
    writeln!(out, "cds-synced {}", spread_since(started, &times, 1e9)).unwrap();
    if stdin.read_line(&mut line).await.unwrap() == 0 {
        return;
    }
    let subscribed = unix_nanos();
    broadcast(Control::SubscribeEds);
    let times = wait_for(&mut events, config.streams, |e| {
        matches!(e, Event::EdsSynced(_))
    })
    .await;
    writeln!(out, "eds-synced {}", spread_since(subscribed, &times, 1e9)).unwrap();
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
                let times =
                    wait_for(&mut events, config.streams, |e| matches!(e, Event::Got(_))).await;
                broadcast(Control::ReleaseAcks);
                writeln!(out, "fanout {}", spread_since(published, &times, 1e6)).unwrap();
            }
            _ => {}
        }
    }
}

/// p50, p99 and the largest of `times` since `since` (nanoseconds), divided by `scale`.
fn spread_since(since: u128, times: &[u128], scale: f64) -> String {
    let mut v: Vec<f64> = times
        .iter()
        .map(|t| t.saturating_sub(since) as f64 / scale)
        .collect();
    v.sort_by(f64::total_cmp);
    format!(
        "{:.4} {:.4} {:.4}",
        percentile(&v, 0.5),
        percentile(&v, 0.99),
        v.last().copied().unwrap_or(f64::NAN)
    )
}

/// Asks the admin port for `/healthz` every 20 ms until `stop`; how long each answer
/// took, in ms (a failed one counts as forever).
async fn probe_healthz(admin: SocketAddr, stop: &std::sync::atomic::AtomicBool) -> Vec<f64> {
    let client = reqwest::Client::new();
    let url = format!("http://{admin}/healthz");
    let mut latencies = Vec::new();
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        let t = Instant::now();
        let ok = client
            .get(&url)
            .send()
            .await
            .is_ok_and(|r| r.status().is_success());
        let ms = if ok {
            t.elapsed().as_secs_f64() * 1e3
        } else {
            f64::INFINITY
        };
        latencies.push(ms);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    latencies
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
            let (Event::CdsSynced(t) | Event::EdsSynced(t) | Event::Got(t)) = event;
            times.push(t);
            seen += 1;
        }
    }
    times
}

/// A response reduced to what the client acts on.
struct Received {
    ty: Option<ResourceType>,
    nonce: String,
    version: String,
    resources: usize,
}

/// Reads responses (SotW or Delta: the fields read have the same numbers in both) as
/// their bytes arrive, for their version, resource count, type URL and nonce, without
/// buffering whole responses.
#[derive(Default)]
struct Skimmer {
    state: Skim,
    /// Bytes left in the current message.
    left: usize,
    received: Option<Received>,
}

#[derive(Default)]
enum Skim {
    /// The gRPC message prefix, as far as it has arrived.
    #[default]
    Prefix,
    /// A field's key, or a length, as far as it has arrived (a varint).
    Key(u64, u32),
    Len(u32, u64, u32),
    /// A varint value to skip.
    Varint,
    /// Bytes to keep for a field (version, type URL, nonce).
    Keep(u32, usize, Vec<u8>),
    Skip(usize),
}

impl Skimmer {
    fn push(&mut self, mut data: &[u8], prefix: &mut Vec<u8>, out: &mut Vec<Received>) {
        while !data.is_empty() {
            match &mut self.state {
                Skim::Prefix => {
                    let take = (5 - prefix.len()).min(data.len());
                    prefix.extend_from_slice(&data[..take]);
                    data = &data[take..];
                    if prefix.len() == 5 {
                        self.left = u32::from_be_bytes(prefix[1..5].try_into().unwrap()) as usize;
                        prefix.clear();
                        self.received = Some(Received {
                            ty: None,
                            nonce: String::new(),
                            version: String::new(),
                            resources: 0,
                        });
                        self.state = Skim::Key(0, 0);
                        self.finish_if_done(out);
                    }
                    continue;
                }
                Skim::Key(value, shift) | Skim::Len(_, value, shift) => {
                    let byte = data[0];
                    data = &data[1..];
                    self.left -= 1;
                    *value |= u64::from(byte & 0x7f) << *shift;
                    *shift += 7;
                    if byte & 0x80 != 0 {
                        continue;
                    }
                    self.state = match std::mem::take(&mut self.state) {
                        Skim::Key(key, _) => match key & 7 {
                            0 => Skim::Varint,
                            1 => Skim::Skip(8),
                            2 => Skim::Len((key >> 3) as u32, 0, 0),
                            5 => Skim::Skip(4),
                            other => panic!("unexpected wire type {other}"),
                        },
                        Skim::Len(tag, len, _) => {
                            let len = len as usize;
                            if tag == 2 {
                                self.received.as_mut().unwrap().resources += 1;
                            }
                            if matches!(tag, 1 | 4 | 5) {
                                Skim::Keep(tag, len, Vec::with_capacity(len))
                            } else {
                                Skim::Skip(len)
                            }
                        }
                        _ => unreachable!(),
                    };
                }
                Skim::Varint => {
                    let byte = data[0];
                    data = &data[1..];
                    self.left -= 1;
                    if byte & 0x80 == 0 {
                        self.state = Skim::Key(0, 0);
                    }
                }
                Skim::Skip(n) => {
                    let take = (*n).min(data.len());
                    data = &data[take..];
                    self.left -= take;
                    *n -= take;
                    if *n == 0 {
                        self.state = Skim::Key(0, 0);
                    }
                }
                Skim::Keep(tag, n, kept) => {
                    let take = (*n - kept.len()).min(data.len());
                    kept.extend_from_slice(&data[..take]);
                    data = &data[take..];
                    self.left -= take;
                    if kept.len() == *n {
                        let text = String::from_utf8_lossy(kept).into_owned();
                        let received = self.received.as_mut().unwrap();
                        match tag {
                            1 => received.version = text,
                            4 => received.ty = ResourceType::from_type_url(&text),
                            _ => received.nonce = text,
                        }
                        self.state = Skim::Key(0, 0);
                    }
                }
            }
            if matches!(self.state, Skim::Key(0, 0)) {
                self.finish_if_done(out);
            }
        }
    }

    fn finish_if_done(&mut self, out: &mut Vec<Received>) {
        if self.left == 0 {
            out.extend(self.received.take());
            self.state = Skim::Prefix;
        }
    }
}

/// One simulated Envoy: ADS over its own connection, ACKing like Envoy does (SotW ACKs
/// repeat every subscribed name).
struct ClientStream {
    id: usize,
    config: ClientConfig,
    encoded: Arc<Encoded>,
    control: mpsc::UnboundedReceiver<Control>,
    events: mpsc::UnboundedSender<Event>,
}

impl ClientStream {
    /// A SotW request for `ty` naming every cluster when `all_names`.
    fn sotw(&self, ty: ResourceType, version: &str, nonce: &str, all_names: bool) -> Bytes {
        let mut request = BytesMut::from(
            &DiscoveryRequest {
                version_info: version.to_owned(),
                response_nonce: nonce.to_owned(),
                type_url: ty.type_url().to_owned(),
                ..Default::default()
            }
            .encode_to_vec()[..],
        );
        if all_names {
            request.extend_from_slice(&self.encoded.sotw_names);
        }
        request.freeze()
    }

    fn delta_ack(ty: ResourceType, nonce: &str) -> Bytes {
        DeltaDiscoveryRequest {
            response_nonce: nonce.to_owned(),
            type_url: ty.type_url().to_owned(),
            ..Default::default()
        }
        .encode_to_vec()
        .into()
    }

    async fn run(mut self, connect_limit: Arc<Semaphore>) {
        let permit = connect_limit.acquire().await.unwrap();
        let channel =
            tonic::transport::Endpoint::from_shared(format!("http://{}", self.config.addr))
                .unwrap()
                .initial_stream_window_size(ENVOY_WINDOW)
                .initial_connection_window_size(ENVOY_WINDOW)
                .connect()
                .await
                .unwrap();
        let mut channel = channel;
        let node = Some(Node {
            id: format!("bench-{}", self.id),
            ..Default::default()
        });
        let cds = ResourceType::Cluster.type_url().to_owned();
        let delta = self.config.delta;
        let (tx, rx) = mpsc::unbounded_channel::<Bytes>();
        let first: Bytes = if delta {
            DeltaDiscoveryRequest {
                node,
                type_url: cds,
                ..Default::default()
            }
            .encode_to_vec()
            .into()
        } else {
            DiscoveryRequest {
                node,
                type_url: cds,
                ..Default::default()
            }
            .encode_to_vec()
            .into()
        };
        tx.send(first).unwrap();
        let method = if delta {
            "/envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources"
        } else {
            "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources"
        };
        // Each message as its gRPC prefix and its bytes, not copied.
        let frames = UnboundedReceiverStream::new(rx).flat_map(|message: Bytes| {
            let mut prefix = BytesMut::with_capacity(5);
            prefix.put_u8(0);
            prefix.put_u32(message.len() as u32);
            futures::stream::iter([prefix.freeze(), message])
                .map(|bytes| Ok::<_, Status>(http_body::Frame::data(bytes)))
        });
        let request = http::Request::post(format!("http://{}{method}", self.config.addr))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(tonic::body::Body::new(http_body_util::StreamBody::new(
                frames,
            )))
            .unwrap();
        std::future::poll_fn(|cx| tower_service::Service::poll_ready(&mut channel, cx))
            .await
            .unwrap();
        let mut body = tower_service::Service::call(&mut channel, request)
            .await
            .unwrap()
            .into_body();
        drop(permit);
        let mut eds_subscribed = false;
        let subscribe_eds = |stream: &Self| {
            let request = if delta {
                stream.encoded.delta_subscribe.clone()
            } else {
                stream.sotw(ResourceType::Endpoint, "", "", true)
            };
            let _ = tx.send(request);
        };
        let ack = |stream: &Self, r: &Received, eds_subscribed: bool| {
            let ty = r.ty.expect("a known type");
            let request = if delta {
                Self::delta_ack(ty, &r.nonce)
            } else {
                let all_names = ty == ResourceType::Endpoint && eds_subscribed;
                stream.sotw(ty, &r.version, &r.nonce, all_names)
            };
            let _ = tx.send(request);
        };
        let clusters = self.config.clusters;
        let mut eds_received = 0usize;
        let mut hold_acks = false;
        let mut held = Vec::new();
        let mut skimmer = Skimmer::default();
        let (mut prefix, mut arrived) = (Vec::new(), Vec::new());
        loop {
            tokio::select! {
                frame = std::future::poll_fn(|cx| std::pin::Pin::new(&mut body).poll_frame(cx)) => {
                    let Some(Ok(frame)) = frame else { return };
                    let Ok(data) = frame.into_data() else { continue };
                    skimmer.push(&data, &mut prefix, &mut arrived);
                    for r in arrived.drain(..) {
                        let now = unix_nanos();
                        let synced = eds_received >= clusters;
                        match r.ty {
                            Some(ResourceType::Cluster) => {
                                let _ = self.events.send(Event::CdsSynced(now));
                                if self.config.cold && !eds_subscribed {
                                    ack(&self, &r, eds_subscribed);
                                    eds_subscribed = true;
                                    subscribe_eds(&self);
                                    continue;
                                }
                            }
                            Some(ResourceType::Endpoint) if !synced => {
                                eds_received += r.resources;
                                if eds_received >= clusters {
                                    let _ = self.events.send(Event::EdsSynced(now));
                                }
                            }
                            Some(ResourceType::Endpoint) => { let _ = self.events.send(Event::Got(now)); }
                            _ => {}
                        }
                        if hold_acks && synced {
                            held.push(r);
                        } else {
                            ack(&self, &r, eds_subscribed);
                        }
                    }
                }
                command = self.control.recv() => match command {
                    None => return,
                    Some(Control::SubscribeEds) => {
                        eds_subscribed = true;
                        subscribe_eds(&self);
                    }
                    Some(Control::HoldAcks(hold)) => hold_acks = hold,
                    Some(Control::ReleaseAcks) => {
                        for r in held.drain(..) {
                            ack(&self, &r, eds_subscribed);
                        }
                    }
                },
            }
        }
    }
}
