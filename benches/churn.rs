//! Churn (prints figures; not a timed test): 10, 100 and 1,000 EndpointSlice events per
//! second over 100 Services, through what `serve` runs after its Kubernetes watches
//! (`sources::kube::follow`: the watch state, debouncing; then the pipeline: model store,
//! translation, publication). Publishes per second, CPU, coalescing ratio, worst
//! staleness (first event of a burst to its publication).
//!
//! Run: `cargo bench --bench churn [-- --churn-secs 30]` (or `scripts/bench.sh`).

#[allow(dead_code)]
#[path = "../tests/common/manifests.rs"]
mod manifests;
mod report;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dualstack_xds::model::{Family, ObjectKind};
use dualstack_xds::pipeline::Pipeline;
use dualstack_xds::snapshot::SnapshotCache;
use dualstack_xds::sources::convert::Convert;
use dualstack_xds::sources::debounce::Debounce;
use dualstack_xds::sources::kube::{follow, Converted};
use dualstack_xds::sources::{Sink, SourceEvent};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::watcher::Event;
use report::Report;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;

const SERVICES: usize = 100;

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    println!(
        "churn over {SERVICES} Services (debounce 20 ms, max 250 ms; {} cores)",
        report::cores()
    );
    let mut report = Report::new("load");
    let secs = report::arg("--churn-secs", 30);
    for rate in [10, 100, 1000] {
        runtime.block_on(churn(&mut report, rate, secs));
    }
    report.write();
}

fn converted<K: Convert>(object: K) -> Converted {
    Converted {
        key: object.key(),
        change: object.change(),
    }
}

fn service(s: usize) -> Converted {
    let object: Service = serde_json::from_value(
        manifests::service("churn", &format!("svc-{s}"))
            .app_port("http", 80, "http")
            .json(),
    )
    .unwrap();
    converted(object)
}

/// Service `s`'s slice of 10 endpoints, the first one's address set by `generation`.
fn slice(s: usize, generation: u64) -> Converted {
    let mut slice = manifests::slice("churn", &format!("svc-{s}-v4"), &format!("svc-{s}"), "IPv4")
        .port("http", 8080);
    for i in 0..10u64 {
        let last = if i == 0 { generation % 250 } else { i };
        slice = slice.endpoint(&format!("10.1.{s}.{last}"));
    }
    let object: EndpointSlice = serde_json::from_value(slice.json()).unwrap();
    converted(object)
}

/// The pipeline, recording how long after its burst's first event each publication
/// finished.
struct Timed {
    pipeline: Pipeline,
    staleness: Arc<Mutex<Vec<Duration>>>,
}

impl Sink for Timed {
    fn send(&mut self, event: SourceEvent) {
        let since = match &event {
            SourceEvent::Changes { since, .. } => Some(*since),
            SourceEvent::Synced => None,
        };
        self.pipeline.send(event);
        if let Some(since) = since {
            self.staleness.lock().unwrap().push(since.elapsed());
        }
    }
}

async fn churn(report: &mut Report, rate: u64, secs: u64) {
    let (tx, rx) = mpsc::channel(4096);
    // The initial lists: watcher 0 watches Services, watcher 1 EndpointSlices.
    for (id, objects) in [
        (0, (0..SERVICES).map(service).collect::<Vec<_>>()),
        (1, (0..SERVICES).map(|s| slice(s, 0)).collect()),
    ] {
        tx.send((id, Event::Init)).await.unwrap();
        for object in objects {
            tx.send((id, Event::InitApply(object))).await.unwrap();
        }
        tx.send((id, Event::InitDone)).await.unwrap();
    }
    let staleness = Arc::new(Mutex::new(Vec::new()));
    let sink = Timed {
        pipeline: Pipeline::new(Family::IPv4, SnapshotCache::new(), Default::default()),
        staleness: staleness.clone(),
    };
    let debounce = Debounce {
        quiet: Duration::from_millis(20),
        max_delay: Duration::from_millis(250),
    };
    let source = tokio::spawn(follow(
        ReceiverStream::new(rx).map(|(id, event)| (id, Some(event))),
        vec![ObjectKind::Service, ObjectKind::EndpointSlice],
        None,
        debounce,
        sink,
    ));
    // Let the initial sync be published before the clock starts.
    tokio::time::sleep(Duration::from_millis(500)).await;
    staleness.lock().unwrap().clear();
    let cpu0 = report::cpu_seconds();
    let start = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / rate));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let end = start + Duration::from_secs(secs);
    let mut events = 0u64;
    while Instant::now() < end {
        tick.tick().await;
        events += 1;
        let s = (events * 37 % SERVICES as u64) as usize;
        tx.send((1, Event::Apply(slice(s, events)))).await.unwrap();
    }
    drop(tx);
    source.await.unwrap();
    let wall = start.elapsed().as_secs_f64();
    let cpu = report::cpu_seconds() - cpu0;
    let staleness = staleness.lock().unwrap().clone();
    let publishes = staleness.len() as u64;
    let worst = staleness.iter().max().copied().unwrap_or_default();
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
