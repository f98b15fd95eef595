//! Sources benchmark (prints figures; not a timed test): the memory the Kubernetes
//! source keeps for 1,500 EndpointSlices x 100 endpoints (a 150k-pod cluster), and the
//! time from a watch event to the published snapshot.
//!
//! Run: `cargo bench --bench sources`.

use std::time::Instant;

use dualstack_xds::model::Family;
use dualstack_xds::snapshot::SnapshotCache;
use dualstack_xds::sources::kube::{prune_service, prune_slice, KindEvent, KubeState};
use dualstack_xds::translate::Translator;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::watcher::Event;
use serde_json::json;

#[global_allocator]
static GLOBAL: &stats_alloc::StatsAlloc<std::alloc::System> = &stats_alloc::INSTRUMENTED_SYSTEM;

const SERVICES: usize = 150;
/// Per Service and family.
const SLICES: usize = 5;
const ENDPOINTS: usize = 100;

fn live_heap() -> i64 {
    let s = GLOBAL.stats();
    s.bytes_allocated as i64 - s.bytes_deallocated as i64
}

fn mib(bytes: i64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// A Service as the API server sends it (with the fields a real one carries).
fn service_json(s: usize) -> String {
    json!({
        "metadata": {
            "name": format!("svc-{s}"), "namespace": "shop",
            "uid": format!("5c1b6a0e-0000-4000-8000-{s:012}"),
            "resourceVersion": "12345", "creationTimestamp": "2026-01-01T00:00:00Z",
            "labels": {"app": format!("svc-{s}"), "dualstack-xds.io/expose": "true"},
            "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{\"apiVersion\":\"v1\",\"kind\":\"Service\"}"},
            "managedFields": [{"manager": "kubectl", "operation": "Update", "apiVersion": "v1", "time": "2026-01-01T00:00:00Z", "fieldsType": "FieldsV1", "fieldsV1": {"f:spec": {"f:ports": {}}}}],
        },
        "spec": {
            "ports": [{"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP", "appProtocol": "http"}],
            "selector": {"app": format!("svc-{s}")},
            "clusterIP": "10.0.0.1", "clusterIPs": ["10.0.0.1", "fd00::1"],
            "ipFamilies": ["IPv4", "IPv6"], "ipFamilyPolicy": "PreferDualStack", "type": "ClusterIP",
        },
        "status": {"loadBalancer": {}},
    })
    .to_string()
}

/// An EndpointSlice as the EndpointSlice controller writes it.
fn slice_json(s: usize, family: Family, n: usize, version: usize) -> String {
    let endpoints: Vec<_> = (0..ENDPOINTS)
        .map(|i| {
            let pod = (s * SLICES + n) * ENDPOINTS + i;
            let address = match family {
                Family::IPv4 => format!("10.{}.{}.{}", pod >> 16, (pod >> 8) & 255, pod & 255),
                Family::IPv6 => format!("fd00:10::{:x}:{:x}", pod >> 16, (pod & 0xffff) + version),
            };
            json!({
                "addresses": [address],
                "conditions": {"ready": true, "serving": true, "terminating": false},
                "nodeName": format!("aks-nodepool1-{}-vmss00000{}", 12345678, pod % 10),
                "zone": format!("eastus-{}", pod % 3 + 1),
                "targetRef": {"kind": "Pod", "namespace": "shop", "name": format!("svc-{s}-7d9f8b6c5d-{pod:05x}"), "uid": format!("0f6e2a1c-0000-4000-8000-{pod:012}")},
            })
        })
        .collect();
    let family_name = family.as_str();
    json!({
        "metadata": {
            "name": format!("svc-{s}-{}-{n}", family_name.to_lowercase()), "namespace": "shop",
            "uid": format!("7a0c9e2d-0000-4000-8000-{s:06}{n:06}"),
            "resourceVersion": format!("{}", 20000 + version), "generation": 3,
            "creationTimestamp": "2026-01-01T00:00:00Z",
            "generateName": format!("svc-{s}-"),
            "labels": {"kubernetes.io/service-name": format!("svc-{s}"), "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io"},
            "annotations": {"endpoints.kubernetes.io/last-change-trigger-time": "2026-01-01T00:00:00Z"},
            "ownerReferences": [{"apiVersion": "v1", "kind": "Service", "name": format!("svc-{s}"), "uid": "5c1b6a0e-0000-4000-8000-000000000000", "controller": true, "blockOwnerDeletion": true}],
            "managedFields": [{"manager": "kube-controller-manager", "operation": "Update", "apiVersion": "discovery.k8s.io/v1", "time": "2026-01-01T00:00:00Z", "fieldsType": "FieldsV1", "fieldsV1": {"f:endpoints": {}}}],
        },
        "addressType": family_name,
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP", "appProtocol": "http"}],
        "endpoints": endpoints,
    })
    .to_string()
}

fn slices() -> Vec<String> {
    let mut out = Vec::new();
    for s in 0..SERVICES {
        for family in Family::BOTH {
            for n in 0..SLICES {
                out.push(slice_json(s, family, n, 0));
            }
        }
    }
    out
}

fn main() {
    println!(
        "sources benchmark ({} cores): {SERVICES} Services, {} EndpointSlices x {ENDPOINTS} endpoints",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        SERVICES * SLICES * 2
    );
    let texts = slices();
    let wire: usize = texts.iter().map(String::len).sum();

    // As received from the API server.
    let before = live_heap();
    let received: Vec<EndpointSlice> = texts
        .iter()
        .map(|t| serde_json::from_str(t).unwrap())
        .collect();
    let received_size = live_heap() - before;
    drop(received);

    // As the source handles them: pruned as they arrive, then converted into the model.
    let before = live_heap();
    let pruned: Vec<EndpointSlice> = texts
        .iter()
        .map(|t| prune_slice(serde_json::from_str(t).unwrap()))
        .collect();
    let pruned_size = live_heap() - before;
    let mut state = KubeState::new(2);
    let services: Vec<Service> = (0..SERVICES)
        .map(|s| prune_service(serde_json::from_str(&service_json(s)).unwrap()))
        .collect();
    let t = Instant::now();
    state.apply(0, KindEvent::Service(Event::Init));
    for o in services {
        state.apply(0, KindEvent::Service(Event::InitApply(o)));
    }
    state.apply(0, KindEvent::Service(Event::InitDone));
    state.apply(1, KindEvent::Slice(Event::Init));
    for o in pruned {
        state.apply(1, KindEvent::Slice(Event::InitApply(o)));
    }
    state.apply(1, KindEvent::Slice(Event::InitDone));
    let load = t.elapsed();
    let store_size = live_heap() - before;
    println!(
        "objects as received: {:.1} MiB in memory ({:.1} MiB of JSON); pruned before storing: {:.1} MiB",
        mib(received_size),
        mib(wire as i64),
        mib(pruned_size)
    );
    println!(
        "store (the model; objects are converted, not kept): {:.1} MiB = {:.2}x the pruned objects (target < 2x), {:.2}x the objects as received; initial load {:.0} ms",
        mib(store_size),
        store_size as f64 / pruned_size as f64,
        store_size as f64 / received_size as f64,
        load.as_secs_f64() * 1e3
    );

    // Event -> published snapshot (debouncing adds its quiet period on top).
    let mut translator = Translator::new(Family::IPv4);
    let cache = SnapshotCache::new();
    let before = live_heap();
    let t = Instant::now();
    cache.publish(translator.update(state.model(), None).unwrap());
    println!(
        "first translation of 150k endpoints: {:.0} ms, translator + snapshot {:.1} MiB",
        t.elapsed().as_secs_f64() * 1e3,
        mib(live_heap() - before)
    );
    let mut samples = Vec::new();
    for round in 1..=50 {
        let s = round % SERVICES;
        let object: EndpointSlice =
            serde_json::from_str(&slice_json(s, Family::IPv4, 0, round)).unwrap();
        let object = {
            let mut o = prune_slice(object);
            // One endpoint changes address.
            o.endpoints[0].addresses = vec![format!("10.200.{}.{}", round >> 8, round & 255)];
            o
        };
        let t = Instant::now();
        let changed = state.apply(1, KindEvent::Slice(Event::Apply(object)));
        let set = translator
            .update(state.model(), changed.services().as_ref())
            .unwrap();
        cache.publish(set);
        samples.push(t.elapsed().as_secs_f64() * 1e3);
    }
    samples.sort_by(f64::total_cmp);
    let figures = std::collections::BTreeMap::from([
        ("objects_received_mib".to_string(), mib(received_size)),
        ("objects_pruned_mib".to_string(), mib(pruned_size)),
        ("store_mib".to_string(), mib(store_size)),
        (
            "store_to_pruned_ratio".to_string(),
            store_size as f64 / pruned_size as f64,
        ),
        (
            "event_to_snapshot_p50_ms".to_string(),
            samples[samples.len() / 2],
        ),
        (
            "event_to_snapshot_p99_ms".to_string(),
            samples[samples.len() * 99 / 100],
        ),
    ]);
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("sources.json"),
        serde_json::to_string_pretty(&figures).unwrap(),
    )
    .unwrap();
    println!(
        "watch event -> published snapshot (one slice of a 1,000-endpoint Service changed): p50 {:.3} ms, p99 {:.3} ms (plus the --debounce quiet period, 20 ms by default)",
        samples[samples.len() / 2],
        samples[samples.len() * 99 / 100]
    );
}
