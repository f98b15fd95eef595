//! Sources benchmark (prints figures; not a timed test): the memory the Kubernetes
//! source and the model keep for 1,500 EndpointSlices x 100 endpoints (a 150k-pod
//! cluster), and the time from a watch event to the published snapshot, through the
//! watch state and the pipeline `serve` runs.
//!
//! Run: `cargo bench --bench sources`.

mod report;

use std::time::Instant;

use dualstack_xds::model::{Family, ObjectKind};
use dualstack_xds::pipeline::Pipeline;
use dualstack_xds::snapshot::SnapshotCache;
use dualstack_xds::sources::convert::Convert;
use dualstack_xds::sources::debounce::Instant as SourceInstant;
use dualstack_xds::sources::kube::{Converted, KubeState};
use dualstack_xds::sources::{Sink, SourceEvent};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::watcher::Event;
use report::Report;
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

/// An object as the watch hands it on: converted as it arrives.
fn convert<K: Convert>(object: K) -> Converted {
    Converted {
        key: object.key(),
        change: object.change(),
    }
}

/// An object received as JSON, converted.
fn converted<K: Convert + serde::de::DeserializeOwned>(text: &str) -> Converted {
    convert(serde_json::from_str::<K>(text).unwrap())
}

fn main() {
    println!(
        "sources benchmark ({} cores): {SERVICES} Services, {} EndpointSlices x {ENDPOINTS} endpoints",
        report::cores(),
        SERVICES * SLICES * 2
    );
    let mut report = Report::new("sources");
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

    // As the source handles them: each object converted as it arrives (nothing else of
    // it is kept), a list applied as a whole, into the pipeline's model.
    let before = live_heap();
    let mut state = KubeState::new([ObjectKind::Service, ObjectKind::EndpointSlice]);
    let cache = SnapshotCache::new();
    let mut pipeline = Pipeline::new(Family::IPv4, cache.clone(), Default::default());
    let t = Instant::now();
    let mut changes = Vec::new();
    state.apply(0, Event::Init);
    for s in 0..SERVICES {
        state.apply(0, Event::InitApply(converted::<Service>(&service_json(s))));
    }
    changes.extend(state.apply(0, Event::InitDone));
    state.apply(1, Event::Init);
    for text in &texts {
        state.apply(1, Event::InitApply(converted::<EndpointSlice>(text)));
    }
    changes.extend(state.apply(1, Event::InitDone));
    pipeline.send(SourceEvent::Changes {
        changes,
        since: SourceInstant::now(),
    });
    let load = t.elapsed();
    let store_size = live_heap() - before;
    report.add(
        "objects_received_mib",
        &format!(
            "EndpointSlices as received ({:.1} MiB of JSON), in memory",
            mib(wire as i64)
        ),
        mib(received_size),
        "MiB",
        "",
    );
    report.add(
        "store_mib",
        "kept by the source and the model (objects converted, not kept)",
        mib(store_size),
        "MiB",
        "",
    );
    report.add(
        "store_to_received_ratio",
        "  as a share of the objects as received",
        store_size as f64 / received_size as f64,
        "x",
        "< 2x",
    );
    report.add(
        "initial_load_ms",
        "initial list of every object into the model",
        load.as_secs_f64() * 1e3,
        "ms",
        "",
    );

    // The first publication, then watch event -> published snapshot (debouncing adds its
    // quiet period on top).
    let before = live_heap();
    let t = Instant::now();
    pipeline.send(SourceEvent::Synced);
    assert!(cache.current().is_some());
    report.add(
        "first_translation_ms",
        "first translation of the 150,000 endpoints",
        t.elapsed().as_secs_f64() * 1e3,
        "ms",
        "",
    );
    report.add(
        "translation_mib",
        "  translator and snapshots",
        mib(live_heap() - before),
        "MiB",
        "",
    );
    let mut samples = Vec::new();
    for round in 1..=50 {
        let s = round % SERVICES;
        let mut object: serde_json::Value =
            serde_json::from_str(&slice_json(s, Family::IPv4, 0, round)).unwrap();
        // One endpoint changes address.
        object["endpoints"][0]["addresses"] =
            json!([format!("10.200.{}.{}", round >> 8, round & 255)]);
        let object: EndpointSlice = serde_json::from_value(object).unwrap();
        let t = Instant::now();
        let changes = state.apply(1, Event::Apply(convert(object)));
        pipeline.send(SourceEvent::Changes {
            changes,
            since: SourceInstant::now(),
        });
        samples.push(t.elapsed().as_secs_f64() * 1e3);
    }
    samples.sort_by(f64::total_cmp);
    report.add(
        "event_to_snapshot_p50_ms",
        "watch event -> published snapshot (one slice of a 1,000-endpoint Service): p50",
        report::percentile(&samples, 0.5),
        "ms",
        "plus the --debounce quiet period",
    );
    report.add(
        "event_to_snapshot_p99_ms",
        "same, p99",
        report::percentile(&samples, 0.99),
        "ms",
        "",
    );
    report.write();
}
